"""How many training runs a machine serves at once (README, "Running a class").

    python bench/bench_concurrent_runs.py [--counts 1,2,4] [--model tiny_cnn]

For each count K, K copies of the Train form's recommended offline run for ``--model`` start at
once as separate ``python -m dala train`` processes (the app's heavy-slot queue bypassed, as if
``DALA_MAX_RUNS`` allowed them all); printed: each run's wall time, the batch's wall time and the
runs finished per minute, side by side with K = 1, so the gain (or loss) of running them together
shows. The app itself queues runs for one heavy slot: this says whether that is the right choice.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def train_command(model: str, run_dir: Path, data: str | None) -> list[str]:
    from dala.train.config import recommended_settings

    rec = recommended_settings(model, pretrained=False)
    cmd = [sys.executable, "-m", "dala", "train", "--model", model, "--no-pretrained", "--mode", rec["mode"],
           "--epochs", str(rec["epochs"]), "--lr", str(rec["lr"]), "--run-dir", str(run_dir), "--no-progress"]
    if rec["image_size"]:
        cmd += ["--image-size", str(rec["image_size"])]
    if data:
        cmd += ["--data", data]
    return cmd


def batch(k: int, model: str, data: str | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_concurrent") as tmp:
        t0 = time.perf_counter()
        procs = []
        for i in range(k):
            cmd = train_command(model, Path(tmp) / f"run{i}", data)
            procs.append((time.perf_counter(), subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL,
                                                                stderr=subprocess.PIPE, text=True)))
        walls = []
        for started, p in procs:
            _, err = p.communicate()
            if p.returncode:
                raise SystemExit(f"a run failed ({p.returncode}):\n{err[-2000:]}")
            walls.append(time.perf_counter() - started)
        total = time.perf_counter() - t0
    return {"k": k, "run_s": walls, "total_s": total, "runs_per_min": 60 * k / total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--counts", default="1,2,4")
    ap.add_argument("--model", default="tiny_cnn")
    ap.add_argument("--data", default=None, help="dataset root (default: the synthetic default)")
    args = ap.parse_args()
    print(f"# bench_concurrent_runs on {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f}; "
          f"{args.model}, the Train form's recommended offline settings", flush=True)
    base = None
    for k in (int(c) for c in args.counts.split(",")):
        r = batch(k, args.model, args.data)
        base = base or r
        print(f"{k} at once: each run {statistics.median(r['run_s']):6.1f} s (median; max {max(r['run_s']):.1f}), "
              f"all done in {r['total_s']:6.1f} s, {r['runs_per_min']:.2f} runs/min "
              f"({r['runs_per_min'] / base['runs_per_min']:.2f}x one at a time); load average {os.getloadavg()[0]:.1f}",
              flush=True)


if __name__ == "__main__":
    main()
