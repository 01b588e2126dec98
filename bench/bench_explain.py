"""Benchmark: prediction + Grad-CAM for one 224 px image with DALAResNet50 on CPU (target <= 1.0 s).

    python bench/bench_explain.py [--runs 7] [--method gradcam] [--scorecam]

Times ``dala.explain.explain`` end to end (preprocess a 700x460 image, one forward + backward,
overlay at 700x460) after a warm-up call, and prints the median. Weights are random
(``pretrained=False``): the cost does not depend on them. ``--scorecam`` also times ScoreCAM
once on TinyDALA at 64 px (ScoreCAM on DALAResNet50 = 2,048 forward passes per image: slow).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--method", default="gradcam")
    ap.add_argument("--model", default="dala_resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--scorecam", action="store_true", help="also time ScoreCAM on TinyDALA at 64 px")
    args = ap.parse_args(argv)

    from dala.explain import explain
    from dala.models import create_model

    torch.manual_seed(0)
    model = create_model(args.model, pretrained=False)
    image = np.random.default_rng(0).integers(0, 256, (460, 700, 3), dtype=np.uint8)  # BreakHis frame
    explain(model, image, method=args.method, input_size=args.size)  # warm-up
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        (e,) = explain(model, image, method=args.method, input_size=args.size)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    x = torch.randn(1, 3, args.size, args.size)
    fwd = []
    for _ in range(args.runs):  # the bare forward pass, to show how loaded the CPU is
        t0 = time.perf_counter()
        with torch.inference_mode():
            model.eval()(x)
        fwd.append(time.perf_counter() - t0)
    print(f"{args.model} {args.method} predict+explain, 1 image {args.size} px, overlay 700x460, "
          f"torch threads {torch.get_num_threads()}: median {med:.3f} s over {args.runs} runs "
          f"(min {min(times):.3f}, max {max(times):.3f}); target <= 1.0 s: {'OK' if med <= 1.0 else 'OVER'}; "
          f"bare forward median {statistics.median(fwd):.3f} s")
    assert e.overlay.shape == (460, 700, 3)

    if args.scorecam:
        tiny = create_model("tiny_cnn", pretrained=False)
        explain(tiny, image, method="scorecam", input_size=64, batch_size=64)
        t0 = time.perf_counter()
        explain(tiny, image, method="scorecam", input_size=64, batch_size=64)
        print(f"tiny_cnn scorecam 64 px (256 masked passes): {time.perf_counter() - t0:.3f} s")
    else:
        print("scorecam: not timed (slow by design: one forward pass per target-layer channel, "
              "2,048 for DALAResNet50; pass --scorecam for a TinyDALA timing)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
