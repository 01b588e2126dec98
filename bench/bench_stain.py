"""ms per 224 px image for dala.data.stain (torchstain underneath), batched, on N CPU threads.

    python bench/bench_stain.py [--threads 2] [--batch 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from dala.data.stain import BETA, IO, METHODS, StainNormalizer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    files = sorted(glob.glob(str(REPO.parent / "shared" / "breakhis_sample" / "*.png")))
    imgs = [np.asarray(Image.open(f).convert("RGB").resize((224, 224))) for f in files]
    batch = torch.from_numpy(np.stack([imgs[i % len(imgs)] for i in range(args.batch)])).permute(0, 3, 1, 2).contiguous()
    for method in METHODS:
        norm = StainNormalizer(method, reference=imgs[0])
        norm(batch[:2])  # warm-up
        ours, theirs = [], []
        for _ in range(args.repeats):  # interleaved, so a busy machine slows both alike
            t0 = time.perf_counter()
            out = norm(batch)
            ours.append((time.perf_counter() - t0) / len(batch) * 1000)
            t0 = time.perf_counter()
            for im in batch:  # torchstain's own normalize alone, without dala's checks
                if method == "macenko":
                    norm._normalizer.normalize(im, Io=IO, beta=BETA, stains=False)
                else:
                    norm._normalizer.normalize(im)
            theirs.append((time.perf_counter() - t0) / len(batch) * 1000)
        print(f"{method:9s} {min(ours):6.1f} ms per 224 px image (best of {args.repeats}, batch {len(batch)}, "
              f"{args.threads} threads, {sum(out.normalised)}/{len(batch)} normalised, checks included); "
              f"torchstain's normalize alone {min(theirs):6.1f} ms; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
