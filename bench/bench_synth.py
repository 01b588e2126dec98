"""Time the generation of the embedded default synthetic dataset (DEFAULT_PARAMS).

    python bench/bench_synth.py [--out DIR] [--n-patients N]

Prints wall time and images per second. Writes into a temporary folder unless --out is given.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dala.data.synth import DEFAULT_PARAMS, generate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--n-patients", type=int, default=DEFAULT_PARAMS["n_patients"])
    args = ap.parse_args()
    params = {**DEFAULT_PARAMS, "n_patients": args.n_patients}
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "synth"
        t0, c0 = time.perf_counter(), time.process_time()
        generate(out, progress=True, **params)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        n = len(list((out / "BreaKHis_v1").rglob("*.png")))
        size_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    print(f"{n} images ({params['size'][0]}x{params['size'][1]}) in {dt:.1f} s = {n / dt:.1f} images/s, "
          f"{size_mb:.0f} MB on disk; CPU time {cpu:.1f} s (wall = CPU when the machine is not shared)")


if __name__ == "__main__":
    main()
