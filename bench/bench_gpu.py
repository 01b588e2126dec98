"""The GPU checks, as one script: does each CUDA path run, and how fast (one card, one run).

    python bench/bench_gpu.py --out gpu.json

Sections (each reports on its own; a failure does not stop the rest):
  synth    generate a small synthetic dataset (CPU)
  plain    a plain fp32 PyTorch fine-tuning loop, PNG decoded every step (the baseline)
  full     this engine, full fine-tune: bf16 autocast, channels_last, preloaded images, DataLoader workers
  quick    this engine, quick mode: cached stem (8 dihedral views), top trains
  ddp      the same loop under torchrun (1 process, NCCL)
  explain  prediction + Grad-CAM of one 224 px image with DALAResNet50, warm
All models start from random weights (the GPU machine has no network either).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

RESULTS: dict = {}


def section(name):
    def wrap(fn):
        def run(*a, **k):
            t = time.time()
            try:
                RESULTS[name] = {"ok": True, **(fn(*a, **k) or {})}
            except Exception as exc:  # report and carry on
                RESULTS[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-2000:]}
            RESULTS[name]["seconds"] = round(time.time() - t, 1)
            print(name, json.dumps(RESULTS[name], default=str)[:1500], flush=True)
        return run
    return wrap


@section("synth")
def synth(root: Path):
    from dala.data.synth import generate

    generate(root, seed=0, n_patients=40, images_per_mag=3, progress=False)
    return {"images": sum(1 for _ in root.rglob("SOB_*.png")) }


@section("plain")
def plain(root: Path, batch: int = 64, steps: int = 8):
    from PIL import Image
    from torchvision.transforms import v2

    from dala.data import load_index
    from dala.models import create_model

    idx = load_index(root)
    tf = v2.Compose([v2.ToImage(), v2.Resize((224, 224)), v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True),
                     v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    model = create_model("dala_resnet50", pretrained=False).cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    paths, targets = idx["path"].tolist(), idx["target"].tolist()
    n, t0 = 0, None
    for s in range(steps + 1):
        ids = [(s * batch + i) % len(paths) for i in range(batch)]
        x = torch.stack([tf(Image.open(paths[i]).convert("RGB")) for i in ids]).cuda()
        y = torch.tensor([targets[i] for i in ids]).cuda()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
        if s == 0:
            t0 = time.time()
        else:
            n += batch
    return {"images_per_s": round(n / (time.time() - t0), 1)}


def engine(root: Path, mode: str, **kw):
    from dala.io import read_jsonl
    from dala.train import TrainConfig, run_training

    cfg = TrainConfig(data_root=str(root), model="dala_resnet50", pretrained=False, mode=mode, epochs=3, batch_size=64,
                      lr=3e-4, imbalance="class_weight", **kw)
    with tempfile.TemporaryDirectory() as run:
        rep = run_training(cfg, run, progress=False)
        ep = [r for r in read_jsonl(f"{run}/metrics.jsonl") if r["kind"] == "epoch"]
    return {"epoch_images_per_s": [round(e["images_per_s"], 1) for e in ep], "epoch_s": [round(e["epoch_time_s"], 2) for e in ep],
            "precision": rep["precision"], "device": rep["device"], "feature_cache_s": rep["feature_cache_s"],
            "test_accuracy": round(rep["test"]["accuracy"], 3), "test_gmean": rep["test"]["gmean"],
            "total_s": rep["total_time_s"], "weight_source": rep["weight_source"]}


@section("full")
def full(root: Path):
    return engine(root, "full")


@section("quick")
def quick(root: Path):
    return engine(root, "quick", quick_views=8)


@section("ddp")
def ddp(root: Path):
    from dala.train.folder import RunFolder, read_report

    with tempfile.TemporaryDirectory() as run:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m", "dala", "train",
               "--data", str(root), "--model", "dala_resnet50", "--no-pretrained", "--mode", "full", "--epochs", "1",
               "--batch-size", "32", "--run-dir", run, "--no-progress"]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
        ok = p.returncode == 0 and RunFolder(run).report_path.exists()
        rep = (read_report(run) or {}) if ok else {}
    if not ok:
        raise RuntimeError(p.stderr[-1500:])
    return {"world_size": rep["world_size"], "device": rep["device"], "precision": rep["precision"]}


@section("explain")
def explain_speed(root: Path):
    import numpy as np

    from dala.explain import explain
    from dala.models import create_model

    model = create_model("dala_resnet50", pretrained=False).cuda().eval()
    img = sorted(root.rglob("SOB_M_*.png"))[0]
    times = []
    for _ in range(12):
        torch.cuda.synchronize()
        t = time.time()
        e = explain(model, [str(img)], method="gradcam")
        torch.cuda.synchronize()
        times.append(time.time() - t)
    return {"median_s_warm": round(float(np.median(times[2:])), 4), "map_shape": list(e[0].heatmap.shape)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="gpu.json")
    args = ap.parse_args()
    RESULTS["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA"
    RESULTS["torch"] = torch.__version__
    print(RESULTS["device"], RESULTS["torch"], flush=True)
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "synth"
        synth(root)
        plain(root)
        full(root)
        quick(root)
        ddp(root)
        explain_speed(root)
    p = RESULTS.get("plain", {}).get("images_per_s")
    for k in ("full", "quick"):
        if p and RESULTS.get(k, {}).get("ok"):
            RESULTS[k]["x_plain_last_epoch"] = round(RESULTS[k]["epoch_images_per_s"][-1] / p, 1)
    Path(args.out).write_text(json.dumps(RESULTS, indent=2, default=str))
    print(json.dumps({k: v for k, v in RESULTS.items()}, default=str)[:4000])


if __name__ == "__main__":
    os.environ.setdefault("DALA_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
