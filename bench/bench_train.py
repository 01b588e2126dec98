"""Training throughput, measured side by side in one run on this machine (DALAResNet50, 224 px).

(a) a plain PyTorch fine-tuning loop as peers write it: fp32, contiguous tensors, every image
    decoded from PNG every epoch;
(b) this engine, full fine-tune: bf16 autocast where the CPU has native bf16, channels_last,
    images decoded once and cached;
(c) this engine, quick mode: frozen stem cached once, only the top trains.

Beside (b) it prints the ceiling: bare training steps on one random batch in fp32 and in bf16 +
channels_last, i.e. what this CPU's bf16 can give at all.

Prints images/s and the ratios against (a). Targets (2 cores): (b) >= 2.5x, (c) >= 15x, and one
quick-mode epoch over 500 images at 224 px <= 15 s from the cache.

    python bench/bench_train.py            # the synthetic default dataset
    python bench/bench_train.py --data DIR # another BreakHis folder
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def plain_loop(frame, *, steps: int, batch: int, size: int) -> float:
    from dala.models import create_model

    tf = v2.Compose([v2.ToImage(), v2.Resize((size, size)), v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True),
                     v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    model = create_model("dala_resnet50", pretrained=False).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    paths, targets = frame["path"].tolist(), frame["target"].tolist()
    n_done, t0 = 0, None
    for s in range(steps + 1):  # step 0 is warm-up
        idx = [(s * batch + i) % len(paths) for i in range(batch)]
        x = torch.stack([tf(Image.open(paths[i]).convert("RGB")) for i in idx])  # decode every time
        y = torch.tensor([targets[i] for i in idx])
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if s == 0:
            t0 = time.time()
        else:
            n_done += batch
    return n_done / (time.time() - t0)


def bare_steps(*, bf16: bool, steps: int, batch: int, size: int) -> float:
    """Images/s of bare training steps on one random batch (no data, no bookkeeping): the most
    the precision and memory format can give on this CPU, the ceiling for (b) over (a)."""
    from dala.models import create_model

    torch.manual_seed(0)
    model = create_model("dala_resnet50", pretrained=False).train()
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 2, (batch,))
    if bf16:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=bf16)
    t0 = time.time()
    for s in range(steps + 1):  # step 0 is warm-up
        if s == 1:
            t0 = time.time()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * batch / (time.time() - t0)


def engine_run(data_root, *, mode: str, n_train: int, epochs: int, batch: int, size: int, views: int = 1) -> dict:
    from dala.io import read_jsonl
    from dala.train import TrainConfig, run_training

    cfg = TrainConfig(data_root=data_root, model="dala_resnet50", pretrained=False, mode=mode, epochs=epochs,
                      batch_size=batch, image_size=size, max_train_images=n_train, quick_views=views, val_fraction=0.05,
                      test_fraction=0.1, n_tiles=0, scheduler="none")
    with tempfile.TemporaryDirectory() as run:
        report = run_training(cfg, run, progress=False)
        epochs_rec = [r for r in read_jsonl(f"{run}/metrics.jsonl") if r["kind"] == "epoch"]
    return {"epochs": epochs_rec, "report": report}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--plain-steps", type=int, default=12)  # 6 was noisy (+-15 %)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--full-images", type=int, default=96)
    ap.add_argument("--quick-images", type=int, default=500)
    args = ap.parse_args()

    from dala.data import load_index, resolve_dataset
    from dala.train.engine import cpu_supports_bf16, select_device

    root = str(resolve_dataset(args.data))
    index = load_index(root)
    print(f"device {select_device()}, threads {torch.get_num_threads()}, native bf16: {cpu_supports_bf16()}, "
          f"data {root} ({len(index)} images)")

    plain = plain_loop(index.sample(n=min(len(index), 200), random_state=0), steps=args.plain_steps, batch=args.batch, size=args.size)
    print(f"(a) plain fp32 loop, PNG decoded every step:  {plain:6.2f} img/s")

    full = engine_run(root, mode="full", n_train=args.full_images, epochs=2, batch=args.batch, size=args.size)
    full_rate = full["epochs"][-1]["images_per_s"]  # epoch 2: images come from the decode cache
    print(f"(b) engine full fine-tune ({full['report']['precision']}, channels_last, cached decode): {full_rate:6.2f} img/s"
          f"   = {full_rate / plain:5.2f}x plain (target >= 2.5x)")

    if cpu_supports_bf16():
        fp32, bf16 = (bare_steps(bf16=b, steps=args.plain_steps // 2, batch=args.batch, size=args.size) for b in (False, True))
        print(f"    ceiling, bare steps on one random batch: fp32 {fp32:.2f} img/s, bf16 + channels_last + fused AdamW "
              f"{bf16:.2f} img/s = {bf16 / fp32:.2f}x; the engine keeps {full_rate / bf16:.0%} of the latter")

    quick = engine_run(root, mode="quick", n_train=args.quick_images, epochs=2, batch=32, size=args.size, views=1)
    q = quick["epochs"][-1]
    print(f"(c) engine quick mode (cached stem, top trains): {q['images_per_s']:6.2f} img/s"
          f"   = {q['images_per_s'] / plain:5.2f}x plain (target >= 15x)")
    n_q = quick["report"]["train_class_counts"]
    n_q = sum(n_q.values())
    epoch_s = q["epoch_time_s"] + q.get("bn_recalibration_s", 0.0)
    print(f"    one quick epoch over {n_q} images from the cache: {epoch_s:.1f} s, of which "
          f"{q.get('bn_recalibration_s', 0.0):.1f} s recomputing the top's BatchNorm statistics "
          f"(target <= 15 s for 500); one-time stem feature cache (1 view + val): {quick['report']['feature_cache_s']:.1f} s "
          f"= {n_q / max(quick['report']['feature_cache_s'], 1e-6):.1f} img/s per view")


if __name__ == "__main__":
    main()
