"""The GPU benchmark (issue 19): the engine against what the card can do, side by side in one run.

    python bench/bench_gpu.py --out gpu.json              # a BreakHis-sized workload (7,909 images, 700x460)
    python bench/bench_gpu.py --tiny --out gpu-tiny.json  # the same sections on a CPU in about two minutes

Workload: a synthetic BreakHis tree of ``--images`` files at the real 700x460 px. Rendering 7,909
distinct images would cost longer than the measurement, so ``--unique`` images are generated and
the rest of the tree holds byte copies of them under their own BreakHis names (throughput does
not care what the pixels show; every file is decoded on its own).

Sections (each reports on its own; a failure does not stop the rest), all DALAResNet50 at
``--size`` px, random weights (the GPU machine has no network either):
  plain     a plain fp32 PyTorch loop, PNG decoded every step (the baseline)
  ceiling   bare training steps on device-resident random batches: same model, bf16 autocast,
            channels_last, fused AdamW, same batch size (what the card can do)
  pipeline  the engine's own input pipeline alone (full mode: decoded cache, dihedral views,
            per-batch stain jitter on the device), batches delivered per second, no model
  engine    the engine's full fine-tune (``run_training``), ``--epochs`` epochs; epoch 1 (start-up,
            decoding) is reported apart from the steady epochs
  quick     quick mode's 8-view stem cache for the whole workload, and its epochs
  ddp       the engine under torchrun on every visible GPU, with scaling efficiency vs one GPU
Prints each as img/s, the engine as a fraction of the ceiling, the pipeline as a multiple of the
engine; writes everything to ``--out`` with the card's name and the torch version.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
                RESULTS[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                                 "trace": traceback.format_exc()[-2000:]}
            RESULTS[name]["seconds"] = round(time.time() - t, 1)
            print(name, json.dumps(RESULTS[name], default=str)[:1500], flush=True)
        return run
    return wrap


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@section("workload")
def workload(root: Path, *, images: int, unique: int, size: tuple[int, int]) -> dict:
    """``unique`` rendered images, copied under fresh BreakHis names until ``images`` files exist."""
    from dala.data.synth import generate

    n_patients = 82
    per_mag = max(1, round(unique / (n_patients * 4)))
    generate(root, seed=0, n_patients=n_patients, images_per_mag=per_mag, size=size, progress=False)
    files = sorted(root.rglob("SOB_*.png"))
    n, seq = len(files), 900
    while n < images:  # copies keep the folder layout and the name grammar, with a new sequence number
        for f in files:
            if n >= images:
                break
            stem = f.name.rsplit("-", 1)[0]  # SOB_B_A-14-22549AB-40
            shutil.copyfile(f, f.parent / f"{stem}-{seq:03d}.png")
            n += 1
        seq += 1
    return {"images": n, "unique": len(files), "size": list(size)}


@section("plain")
def plain(root: Path, *, device: torch.device, batch: int, size: int, steps: int) -> dict:
    from PIL import Image
    from torchvision.transforms import v2

    from dala.data import load_index
    from dala.models import create_model

    idx = load_index(root)
    tf = v2.Compose([v2.ToImage(), v2.Resize((size, size)), v2.RandomHorizontalFlip(),
                     v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    model = create_model("dala_resnet50", pretrained=False).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    paths, targets = idx["path"].tolist(), idx["target"].tolist()
    n, t0 = 0, time.time()
    for s in range(steps + 1):  # step 0 is warm-up
        ids = [(s * batch + i) % len(paths) for i in range(batch)]
        x = torch.stack([tf(Image.open(paths[i]).convert("RGB")) for i in ids]).to(device)  # (B, 3, S, S)
        y = torch.tensor([targets[i] for i in ids], device=device)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync(device)
        if s == 0:
            t0 = time.time()
        else:
            n += batch
    return {"images_per_s": round(n / (time.time() - t0), 1)}


@section("ceiling")
def ceiling(*, device: torch.device, batch: int, size: int, steps: int, compile_: bool) -> dict:
    from dala.models import create_model
    from dala.train.machinery import select_precision

    torch.manual_seed(0)
    dtype = select_precision("auto", device)
    model = create_model("dala_resnet50", pretrained=False).to(device).train().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,), device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type in ("cpu", "cuda"))
    step_model = torch.compile(model) if compile_ and device.type == "cuda" else model
    t0 = time.time()
    for s in range(steps + 3):  # three warm-up steps (compilation, cuDNN autotuning)
        if s == 3:
            sync(device)
            t0 = time.time()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(step_model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return {"images_per_s": round(steps * batch / (time.time() - t0), 1), "precision": str(dtype),
            "compiled": bool(compile_ and device.type == "cuda")}


def _config(root: Path, *, mode: str, epochs: int, batch: int, size: int, **kw):
    from dala.train import TrainConfig

    return TrainConfig(data_root=str(root), model="dala_resnet50", pretrained=False, mode=mode, epochs=epochs,
                       batch_size=batch, lr=3e-4, image_size=size, imbalance="class_weight", **kw)


@section("pipeline")
def pipeline(root: Path, *, device: torch.device, batch: int, size: int, epochs: int) -> dict:
    """The engine's input pipeline alone: ``set_up`` as a run does, then only ``mode.batches``."""
    import numpy as np

    from dala.train.engine import set_up
    from dala.train.folder import RunFolder
    from dala.train.machinery import init_distributed

    config = _config(root, mode="full", epochs=epochs, batch=batch, size=size)
    with tempfile.TemporaryDirectory() as run:
        t_setup = time.time()
        run_state = set_up(config, RunFolder(run), init_distributed(config.device), resuming=False, progress=False)
        t_setup = time.time() - t_setup
        mode, n_train = run_state.mode, len(run_state.targets)
        gen = torch.Generator(device=device).manual_seed(0)
        rates = []
        for epoch in range(epochs):
            order = np.random.default_rng(epoch).permutation(n_train)
            sync(device)
            t0, n = time.time(), 0
            for x, _y in mode.batches(order, gen):  # (B, 3, S, S) on the device, jittered and normalised
                n += len(x)
            sync(device)
            rates.append(round(n / (time.time() - t0), 1))
    return {"set_up_s": round(t_setup, 1), "epoch_images_per_s": rates, "images_per_s": max(rates)}


def _engine(root: Path, mode: str, *, batch: int, size: int, epochs: int, **kw) -> dict:
    from dala.io import read_jsonl
    from dala.train import run_training

    config = _config(root, mode=mode, epochs=epochs, batch=batch, size=size, **kw)
    with tempfile.TemporaryDirectory() as run:
        rep = run_training(config, run, progress=False)
        ep = [r for r in read_jsonl(f"{run}/metrics.jsonl") if r["kind"] == "epoch"]
    steady = [e["images_per_s"] for e in ep[1:]] or [ep[-1]["images_per_s"]]
    return {"epoch_images_per_s": [round(e["images_per_s"], 1) for e in ep],
            "epoch_s": [round(e["epoch_time_s"], 2) for e in ep],
            "first_epoch_s": round(ep[0]["epoch_time_s"], 2), "steady_images_per_s": round(max(steady), 1),
            "precision": rep.get("precision"), "device": rep.get("device"),
            "feature_cache_s": rep.get("feature_cache_s"), "total_s": rep.get("total_time_s")}


@section("engine")
def engine(root: Path, **kw) -> dict:
    return _engine(root, "full", **kw)


@section("quick")
def quick(root: Path, **kw) -> dict:
    return _engine(root, "quick", quick_views=8, **kw)


@section("ddp")
def ddp(root: Path, *, batch: int, size: int, epochs: int) -> dict:
    n_gpu = torch.cuda.device_count()
    if n_gpu < 1:
        return {"skipped": "no CUDA device"}
    out = {}
    for procs in sorted({1, n_gpu}):
        with tempfile.TemporaryDirectory() as run:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
                   "-m", "dala", "train", "--data", str(root), "--model", "dala_resnet50", "--no-pretrained",
                   "--mode", "full", "--epochs", str(epochs), "--batch-size", str(batch), "--image-size", str(size),
                   "--run-dir", run, "--no-progress"]
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            if p.returncode != 0:
                raise RuntimeError(p.stderr[-1500:])
            ep = [json.loads(line) for line in Path(run, "metrics.jsonl").read_text().splitlines()
                  if '"kind": "epoch"' in line]
            out[f"gpus_{procs}"] = max(e["images_per_s"] for e in ep[1:] or ep)
    if n_gpu > 1:
        out["scaling_efficiency"] = round(out[f"gpus_{n_gpu}"] / (n_gpu * out["gpus_1"]), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu.json")
    ap.add_argument("--tiny", action="store_true", help="a few hundred small images: check the script on a CPU")
    ap.add_argument("--images", type=int, default=7909)
    ap.add_argument("--unique", type=int, default=656, help="about this many images rendered (82 patients x 4 magnifications x n); the rest are byte copies")
    ap.add_argument("--size", type=int, default=224, help="model input size")
    ap.add_argument("--batch", type=int, default=256, help="batch size for the card (the memory allows far more than 32)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20, help="steps timed in plain and ceiling")
    ap.add_argument("--no-compile", action="store_true", help="ceiling without torch.compile")
    ap.add_argument("--skip", default="", help="comma-separated sections to skip")
    args = ap.parse_args()
    if args.tiny:
        args.images, args.unique, args.size, args.batch, args.epochs, args.steps = 400, 96, 64, 16, 2, 3
    image_size = (700, 460) if not args.tiny else (140, 92)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    skip = set(filter(None, args.skip.split(",")))
    RESULTS.update(device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu (no CUDA)",
                   torch=torch.__version__, args=vars(args))
    print(RESULTS["device"], RESULTS["torch"], flush=True)
    common = dict(batch=args.batch, size=args.size)
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "breakhis"
        workload(root, images=args.images, unique=args.unique, size=image_size)
        for name, call in [
            ("plain", lambda: plain(root, device=device, steps=args.steps, **common)),
            ("ceiling", lambda: ceiling(device=device, steps=args.steps, compile_=not args.no_compile, **common)),
            ("pipeline", lambda: pipeline(root, device=device, epochs=2, **common)),
            ("engine", lambda: engine(root, epochs=args.epochs, **common)),
            ("quick", lambda: quick(root, epochs=args.epochs, **common)),
            ("ddp", lambda: ddp(root, epochs=2, **common)),
        ]:
            if name not in skip:
                call()
    ceil = RESULTS.get("ceiling", {}).get("images_per_s")
    eng = RESULTS.get("engine", {}).get("steady_images_per_s")
    pipe = RESULTS.get("pipeline", {}).get("images_per_s")
    plain_rate = RESULTS.get("plain", {}).get("images_per_s")
    RESULTS["summary"] = {
        "engine_img_s": eng, "ceiling_img_s": ceil, "engine_of_ceiling": round(eng / ceil, 3) if eng and ceil else None,
        "pipeline_x_engine": round(pipe / eng, 2) if eng and pipe else None,
        "engine_x_plain": round(eng / plain_rate, 1) if eng and plain_rate else None,
        "targets": "engine >= 4000 img/s and >= 0.9 of the ceiling; pipeline >= 3x engine; epoch <= 2.5 s; "
                   "quick 8-view cache <= 20 s",
    }
    Path(args.out).write_text(json.dumps(RESULTS, indent=2, default=str))
    print(json.dumps(RESULTS["summary"], default=str))


if __name__ == "__main__":
    os.environ.setdefault("DALA_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
