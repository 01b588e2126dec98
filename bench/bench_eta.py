"""The Train form's estimate against the wall clock, one run per setting (README, "Training").

    python bench/bench_eta.py [--data ROOT] [--only tiny_cnn,dala_resnet50,vgg16]

Each setting is the form's recommended offline one for its model (``recommended_settings``), on
the synthetic default unless ``--data`` says otherwise; each run prints the estimate, the measured
``total_time_s`` of its report.json, their ratio and the load average, so a shared CPU shows.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=None, help="dataset root (default: the synthetic default)")
    ap.add_argument("--only", default="tiny_cnn,dala_resnet50,vgg16")
    ap.add_argument("--keep-runs", default=None, help="keep the run folders under this folder (e.g. a DALA_RUNS)")
    args = ap.parse_args()

    from dala.train import TrainConfig, estimate_seconds, recommended_settings, run_training

    root = args.data  # None: the embedded synthetic default, as the form's default
    print(f"# bench_eta on {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f}, data {root or 'synthetic default'}")
    for model in args.only.split(","):
        cfg = TrainConfig(model=model, pretrained=False, data_root=root, seed=0,
                          **recommended_settings(model, pretrained=False))
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(args.keep_runs) / f"eta-{model}" if args.keep_runs else Path(tmp) / "run"
            t0 = time.perf_counter()
            report = run_training(cfg, run_dir, progress=False)
            wall = time.perf_counter() - t0
        counts = report["split"]["counts"]
        n_train = counts["train"]["images"]
        n_eval = counts["val"]["images"] + counts["test"]["images"]
        est = estimate_seconds(cfg, n_train, n_eval)
        took = report["total_time_s"]
        print(f"{model:14s} {cfg.mode:5s} {cfg.image_size or 'own'} px {cfg.epochs:2d} epochs: estimate {est:6.1f} s, "
              f"measured {took:6.1f} s (process {wall:6.1f} s), measured/estimate {took / est:4.2f}, "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
