"""Imbalance Lab speed, side by side in one run (README, "Imbalance Lab").

    python bench/bench_lab.py                       # everything on the synthetic default
    python bench/bench_lab.py --skip-train --students 10

1. the feature bank for the dataset, built once (``--rebuild`` times a fresh build);
2. one setting (fit + every metric) on a fresh Lab: median over the 8 strategies x 9 ratios,
   then a threshold-only change (the fit reused);
3. the full sweep (8 strategies x 9 ratios) on a fresh Lab;
4. the same question answered by a quick-mode training run (recommended offline settings), and
   the ratio lab vs run;
5. a class: N browser pages (one Chromium, async Playwright) against one ``streamlit run`` server,
   each moving the ratio slider at once, several rounds: p50 / p95 from key press to updated
   numbers, and the server's memory (RSS of its process tree);
6. one student alone: slider move -> updated numbers, median of several moves.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def bench_api(args) -> dict:
    from dala.lab.api import load_dataset_index
    from dala.lab.bank import get_bank
    from dala.lab.common import RATIOS, STRATEGIES
    from dala.lab.scoring import Lab
    from dala.lab.sweeps import sweep

    index = load_dataset_index(args.data, progress=True)
    t0 = time.perf_counter()
    bank = get_bank(index, args.encoder, progress=True, rebuild=args.rebuild)
    load_s = time.perf_counter() - t0
    out = {"images": len(index), "bank_build_s": bank.header.get("build_s"), "bank_built_now": bank.built_now,
           "bank_open_s": load_s, "bank": str(bank.folder), "encoder": bank.encoder["label"]}
    lab = Lab(bank, index)
    lab.score("none", 1.0)  # imports and first-call costs out of the way
    lab = Lab(bank, index)
    times = []
    for ratio in RATIOS:
        for strategy in STRATEGIES:
            t = time.perf_counter()
            lab.score(strategy, ratio)
            times.append((time.perf_counter() - t) * 1000)
    out["setting_ms_median"] = statistics.median(times)
    out["setting_ms_p95"] = pct(times, 95)
    cached = []
    for i in range(30):
        t = time.perf_counter()
        lab.score("class_weight", 0.1, threshold=0.3 + i / 100)
        cached.append((time.perf_counter() - t) * 1000)
    out["threshold_only_ms_median"] = statistics.median(cached)
    t = time.perf_counter()
    df = sweep(Lab(bank, index))
    out["sweep_s"] = time.perf_counter() - t
    none = df[df.strategy == "none"].set_index("ratio")
    out["sweep_none_at_1_20"] = {k: none.loc[0.05, k] for k in ("accuracy", "gmean")}
    out["sweep_none_at_1_1"] = {k: none.loc[1.0, k] for k in ("accuracy", "gmean")}
    res = Lab(bank, index).score("class_weight", 1.0)
    out["lab_answer"] = {"strategy": "class_weight", "ratio": 1.0, "gmean": res.row["gmean"],
                         "accuracy": res.row["accuracy"], "ms": res.timing_ms["total"]}
    return out


def bench_train(args) -> dict:
    from dala.train import TrainConfig, run_training
    from dala.train.config import recommended_settings

    rec = recommended_settings("dala_resnet50", pretrained=False)
    cfg = TrainConfig(data_root=args.data, model="dala_resnet50", pretrained=False, imbalance="class_weight",
                      target_ratio=1.0, **{k: v for k, v in rec.items() if k in ("mode", "lr", "epochs", "image_size")})
    if args.train_epochs:
        cfg = cfg.replace(epochs=args.train_epochs)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        rep = run_training(cfg, Path(tmp) / "run", progress=False)
        wall = time.perf_counter() - t
    return {"train_s": wall, "epochs": cfg.epochs, "gmean": rep["test"]["gmean"], "accuracy": rep["test"]["accuracy"]}


def _rss_tree_mb(pid: int) -> float:
    import psutil

    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2 ** 20


async def _class(server_url: str, n: int, rounds: int) -> dict:
    from playwright.async_api import async_playwright

    from browser_util import CHROMIUM, CHROMIUM_ARGS

    async def numbers(page) -> str:
        vals = await page.locator("[data-testid='stMetricValue']").all_inner_texts()
        sizes = await page.get_by_text("Training:", exact=False).first.inner_text()
        return " | ".join(vals) + " || " + sizes

    async def idle(page, timeout=300):
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            state = await page.locator("[data-testid='stApp']").first.get_attribute("data-test-script-state")
            if state == "notRunning" and await page.locator("[data-testid='stMetricValue']").count():
                return
            await asyncio.sleep(0.1)

    async def move(page, key: str) -> float:
        before = await numbers(page)
        thumb = page.get_by_role("slider").first
        await thumb.focus()
        t0 = time.perf_counter()
        await thumb.press(key)
        while time.perf_counter() - t0 < 120:
            try:
                if await numbers(page) != before:
                    return time.perf_counter() - t0
            except Exception:
                pass
            await asyncio.sleep(0.02)
        return float("inf")

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        pages = []
        for _ in range(n):
            ctx = await browser.new_context(viewport={"width": 1200, "height": 900})
            page = await ctx.new_page()
            await page.goto(f"{server_url}/lab", wait_until="domcontentloaded")
            pages.append(page)
        await asyncio.gather(*(idle(pg) for pg in pages))
        times = []
        for r in range(rounds):
            key = "ArrowLeft" if r % 2 == 0 else "ArrowRight"
            times += await asyncio.gather(*(move(pg, key) for pg in pages))
            await asyncio.gather(*(idle(pg) for pg in pages))
        await browser.close()
    return {"n": len(times), "p50_s": pct(times, 50), "p95_s": pct(times, 95), "max_s": max(times)}


def bench_class(args) -> dict:
    from browser_util import StreamlitServer

    env = {"DALA_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "DALA_RUNS": tempfile.mkdtemp(prefix="bench_lab_runs")}
    if args.data:
        env["DALA_DATA_ROOT"] = str(args.data)
    if args.encoder:
        env["DALA_LAB_ENCODER"] = args.encoder
    log = Path(tempfile.mkdtemp(prefix="bench_lab")) / "server.log"
    with StreamlitServer(env=env, log_path=log) as srv:
        solo = asyncio.run(_class(srv.url, 1, args.solo_moves))
        rss_before = _rss_tree_mb(srv.proc.pid)
        crowd = asyncio.run(_class(srv.url, args.students, args.rounds))
        rss_after = _rss_tree_mb(srv.proc.pid)
    return {"solo": solo, "class": crowd, "server_rss_mb_1": rss_before, "server_rss_mb_class": rss_after}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help="dataset folder (default: the synthetic default)")
    ap.add_argument("--encoder", default=None, help="default: random_stem:dala_resnet50 (DALA_LAB_ENCODER)")
    ap.add_argument("--rebuild", action="store_true", help="time a fresh bank build")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--train-epochs", type=int, default=None, help="default: the recommended offline setting")
    ap.add_argument("--students", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--solo-moves", type=int, default=6)
    ap.add_argument("--skip-class", action="store_true")
    args = ap.parse_args()
    print(f"# bench_lab on {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f}", flush=True)
    api = bench_api(args)
    print(f"bank: {api['images']} images, built in {api['bank_build_s']} s "
          f"({'now' if api['bank_built_now'] else 'earlier; reused'}); {api['encoder']}", flush=True)
    print(f"one setting (fit + every metric): median {api['setting_ms_median']:.1f} ms, p95 "
          f"{api['setting_ms_p95']:.1f} ms; threshold-only change {api['threshold_only_ms_median']:.1f} ms", flush=True)
    print(f"full sweep 8 x 9: {api['sweep_s']:.2f} s; none at 1:20 {api['sweep_none_at_1_20']}, "
          f"at 1:1 {api['sweep_none_at_1_1']}", flush=True)
    if not args.skip_train:
        tr = bench_train(args)
        lab_s = api["lab_answer"]["ms"] / 1000
        print(f"quick-mode run, same question (class_weight, 1:1, {tr['epochs']} epochs): {tr['train_s']:.1f} s, "
              f"GMean {tr['gmean']:.3f}; lab {lab_s * 1000:.0f} ms, GMean {api['lab_answer']['gmean']:.3f}; "
              f"lab is {tr['train_s'] / max(lab_s, 1e-6):.0f}x faster", flush=True)
    if not args.skip_class:
        cl = bench_class(args)
        s, c = cl["solo"], cl["class"]
        print(f"one student in Chromium: slider -> numbers median {s['p50_s'] * 1000:.0f} ms (n={s['n']})")
        print(f"{args.students} students at once, {args.rounds} rounds: p50 {c['p50_s']:.2f} s, p95 {c['p95_s']:.2f} s, "
              f"max {c['max_s']:.2f} s; server RSS {cl['server_rss_mb_1']:.0f} MB (1) -> "
              f"{cl['server_rss_mb_class']:.0f} MB ({args.students})", flush=True)


if __name__ == "__main__":
    main()
