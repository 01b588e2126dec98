"""Imbalance Lab speed, side by side in one run (README, "Imbalance Lab").

    python bench/bench_lab.py                       # everything on the synthetic default
    python bench/bench_lab.py --skip-train --students 10

1. the feature bank for the dataset, built once (``--rebuild`` times a fresh build);
2. one setting (fit + every metric) on a fresh Lab: median over the 8 strategies x 9 ratios,
   then a threshold-only change (the fit reused);
3. the full sweep (8 strategies x 9 ratios) on a fresh Lab;
4. the same question answered by a quick-mode training run (recommended offline settings), and
   the ratio lab vs run;
5. one student alone in a real Chromium (async Playwright) against one ``streamlit run`` server:
   slider move -> updated numbers on the page, median of several moves;
6. a class: N students against the same server, all moving the ratio slider at once, several
   rounds: p50 / p95 / max from the move to the updated numbers, and the server's memory (RSS of
   its process tree, peak while the class ran) and CPU. ``--driver ws`` (default): each student
   is one Streamlit websocket session speaking Streamlit's own protocol (``bench/st_ws_client.py``),
   so the client costs almost nothing and the figure is the server's; each student first picks a
   strategy (student i the i-th of the 8), then moves the ratio one step in its own direction per
   round. ``--driver browser``: N browser contexts in one Chromium, every student at the default
   strategy (on the same 2 cores the renderers then dominate: it bounds a machine hosting both).

    python bench/bench_lab.py --skip-api --skip-train --students 30 --rounds 3   # the class only
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
sys.path.insert(0, str(REPO / "bench"))


def pct(values, q):
    """The q-th percentile (nearest rank); None for no values (a class of 0 students)."""
    values = sorted(values)
    if not values:
        return None
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
    return {"n": len(times), "p50_s": pct(times, 50), "p95_s": pct(times, 95), "max_s": max(times, default=None)}


def _cpu_tree_s(pid: int) -> float:
    import psutil

    proc = psutil.Process(pid)
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        t = p.cpu_times()
        total += t.user + t.system
    return total


class _PeakRss:
    """The server tree's RSS, sampled every 0.25 s while a class runs: its peak."""

    def __init__(self, pid: int):
        import threading

        self.pid, self.peak, self._stop = pid, _rss_tree_mb(pid), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.wait(0.25):
            try:
                self.peak = max(self.peak, _rss_tree_mb(self.pid))
            except Exception:  # the process tree changed under us: try again next tick
                continue

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _ws_class(server_url: str, n: int, rounds: int, before_moves=None) -> dict:
    from st_ws_client import run_class

    out = asyncio.run(run_class(server_url, n, rounds, before_moves=before_moves))
    m = out["moves"]
    return {"n": m["n"], "p50_s": m["p50_s"], "p95_s": m["p95_s"], "max_s": m["max_s"],
            "finished_p95_s": out["finished"]["p95_s"], "unchanged": out["unchanged"], "errors": out["errors"][:3]}


def bench_class(args) -> dict:
    from browser_util import StreamlitServer

    env = {"DALA_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "DALA_RUNS": tempfile.mkdtemp(prefix="bench_lab_runs")}
    if args.data:
        env["DALA_DATA_ROOT"] = str(args.data)
    if args.encoder:
        env["DALA_LAB_ENCODER"] = args.encoder
    if args.no_warm:
        env["DALA_LAB_WARM"] = "0"
    log = Path(tempfile.mkdtemp(prefix="bench_lab")) / "server.log"
    out = {"driver": args.driver, "warm": not args.no_warm, "teacher_first_s": args.teacher_first}
    with StreamlitServer(env=env, log_path=log) as srv:
        if args.solo_moves:
            out["solo"] = asyncio.run(_class(srv.url, 1, args.solo_moves))
        if args.teacher_first > 0:  # the teacher opens the lab before the class: its warmer starts then
            from st_ws_client import StreamlitSession

            async def teacher():
                async with StreamlitSession(srv.url) as s:
                    await s.open()

            asyncio.run(teacher())
            time.sleep(args.teacher_first)
        out["server_rss_mb_1"] = _rss_tree_mb(srv.proc.pid)
        if args.students > 0:
            mark = {"cpu": _cpu_tree_s(srv.proc.pid), "t": time.perf_counter()}

            def before_moves():  # the moves alone (not the 30 page opens and strategy picks)
                mark.update(cpu=_cpu_tree_s(srv.proc.pid), t=time.perf_counter())

            load0 = os.getloadavg()[0]
            with _PeakRss(srv.proc.pid) as rss:
                if args.driver == "ws":
                    out["class"] = _ws_class(srv.url, args.students, args.rounds, before_moves)
                else:
                    out["class"] = asyncio.run(_class(srv.url, args.students, args.rounds))
            out["class_wall_s"] = time.perf_counter() - mark["t"]
            out["server_cpu_s"] = _cpu_tree_s(srv.proc.pid) - mark["cpu"]
            out["load"] = (load0, os.getloadavg()[0])
            out["server_rss_mb_class"] = _rss_tree_mb(srv.proc.pid)
            out["server_rss_mb_peak"] = rss.peak
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help="dataset folder (default: the synthetic default)")
    ap.add_argument("--encoder", default=None, help="default: random_stem:dala_resnet50 (DALA_LAB_ENCODER)")
    ap.add_argument("--rebuild", action="store_true", help="time a fresh bank build")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--train-epochs", type=int, default=None, help="default: the recommended offline setting")
    ap.add_argument("--students", type=int, default=30, help="0: no class (the solo browser only)")
    ap.add_argument("--driver", choices=("ws", "browser"), default="ws",
                    help="ws: Streamlit websocket sessions (bench/st_ws_client.py); browser: Chromium contexts")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--solo-moves", type=int, default=6)
    ap.add_argument("--skip-class", action="store_true", help="no server: neither the solo browser nor the class")
    ap.add_argument("--skip-api", action="store_true", help="skip 1-3 (bank, one setting, sweep)")
    ap.add_argument("--no-warm", action="store_true", help="DALA_LAB_WARM=0: the server answers every question afresh")
    ap.add_argument("--teacher-first", type=float, default=0.0, metavar="SECONDS",
                    help="one session opens the lab this long before the class (the warmer runs meanwhile)")
    args = ap.parse_args()
    print(f"# bench_lab on {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f}", flush=True)
    api = None
    if not args.skip_api:
        api = bench_api(args)
        print(f"bank: {api['images']} images, built in {api['bank_build_s']} s "
              f"({'now' if api['bank_built_now'] else 'earlier; reused'}); {api['encoder']}", flush=True)
        print(f"one setting (fit + every metric): median {api['setting_ms_median']:.1f} ms, p95 "
              f"{api['setting_ms_p95']:.1f} ms; threshold-only change {api['threshold_only_ms_median']:.1f} ms",
              flush=True)
        print(f"full sweep 8 x 9: {api['sweep_s']:.2f} s; none at 1:20 {api['sweep_none_at_1_20']}, "
              f"at 1:1 {api['sweep_none_at_1_1']}", flush=True)
    if not args.skip_train:
        tr = bench_train(args)
        line = (f"quick-mode run, same question (class_weight, 1:1, {tr['epochs']} epochs): {tr['train_s']:.1f} s, "
                f"GMean {tr['gmean']:.3f}")
        if api:
            lab_s = api["lab_answer"]["ms"] / 1000
            line += (f"; lab {lab_s * 1000:.0f} ms, GMean {api['lab_answer']['gmean']:.3f}; "
                     f"lab is {tr['train_s'] / max(lab_s, 1e-6):.0f}x faster")
        print(line, flush=True)
    if not args.skip_class:
        cl = bench_class(args)
        if "solo" in cl:
            s = cl["solo"]
            print(f"one student in Chromium: slider -> numbers median {s['p50_s'] * 1000:.0f} ms (n={s['n']})",
                  flush=True)
        if "class" in cl:
            c = cl["class"]
            drove = ("Streamlit websocket sessions (bench/st_ws_client.py; each its own strategy)"
                     if cl["driver"] == "ws" else "browser contexts in one Chromium (default strategy)")
            drove += "; warmer on" if cl["warm"] else "; warmer off"
            drove += (f", the lab opened {cl['teacher_first_s']:g} s before" if cl["teacher_first_s"]
                      else ", opened with the class")
            moves = c["n"]
            print(f"{args.students} students at once ({drove}), {args.rounds} rounds: slider -> numbers "
                  f"p50 {c['p50_s']:.2f} s, p95 {c['p95_s']:.2f} s, max {c['max_s']:.2f} s (n={moves})"
                  + (f"; -> script finished p95 {c['finished_p95_s']:.2f} s; {c['unchanged']} moves left the "
                     f"numbers unchanged" if cl["driver"] == "ws" else ""), flush=True)
            print(f"server: RSS {cl['server_rss_mb_1']:.0f} MB before the class, peak {cl['server_rss_mb_peak']:.0f} "
                  f"MB, {cl['server_rss_mb_class']:.0f} MB after; CPU {cl['server_cpu_s']:.1f} s over "
                  f"{cl['class_wall_s']:.1f} s of moves ({cl['server_cpu_s'] / max(moves, 1) * 1000:.0f} ms per move"
                  + (")" if cl["driver"] == "ws" else ", page loads included)")
                  + f"; load average {cl['load'][0]:.1f} -> {cl['load'][1]:.1f}",
                  flush=True)
            if c.get("errors"):
                print(f"errors shown to students: {c['errors']}", flush=True)

if __name__ == "__main__":
    main()
