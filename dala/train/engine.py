"""One training loop for the CLI, the notebooks and the app.

Reading order: :func:`run_training` sets up (device, precision, data, model), then runs
``epochs`` of :func:`_train_one_epoch` + validation, saving ``best`` and ``last`` checkpoints,
and finally scores the best model on the test part into ``report.json``.

Two modes:

- **quick** (CPU demos): the registry's ``split(model)`` cuts the network into a frozen ``stem``
  and a trainable ``top``. The stem runs once per training image and per dihedral view (up to the
  8 flips and rotations) and its outputs are cached; epochs then train only the top from the
  cache, which is an order of magnitude faster than fine-tuning. Without pretrained weights
  (offline) the stem is random, and a random ResNet stem as initialised for training scrambles
  the morphology on its way to layer 3; quick mode then prepares it as a shallow random-feature
  extractor (residual branches zeroed, :mod:`dala.models.init`; BatchNorm calibrated on the
  training images, :func:`calibrate_batchnorm`), and the top learns the synthetic classes from
  it (README, "Measured figures"). The run records ``weight_source`` so nobody mistakes it for
  ImageNet features. The top's BatchNorm statistics are recomputed over the cached features
  before every validation and checkpoint.
- **full** (GPUs): everything trains, images are decoded once and kept in memory
  (``BreakHisDataset(cache=True)``), with the dihedral + mild colour jitter augmentation: the
  dihedral views per image (cheap uint8 copies), the stain jitter and normalisation per batch on
  the device (:class:`dala.data.augment.TrainBatchTransform`; each image still gets its own jitter).

Control from outside: ``control.json`` is read every step (pause / resume / stop; stop takes
effect within one step and leaves a resumable ``last`` checkpoint). A run killed outright resumes
from ``checkpoints/last`` with ``resume=True``. Under ``torchrun`` the same loop runs DDP: each
rank trains on its shard of every epoch's index list, rank 0 evaluates and writes.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from dala.data import CLASSES, load_index, make_split, resolve_dataset
from dala.data.augment import TrainBatchTransform
from dala.data.dataset import BreakHisDataset, build_transform
from dala.data.splits import Split
from dala.errors import RunError
from dala.train.config import TrainConfig
from dala.train.folder import RunFolder
from dala.train.imbalance import balanced_sampler, make_loss, oversample_indices, subsample_to_ratio


class StopRequested(Exception):
    """Raised inside the loop when ``stop`` arrives (or Ctrl-C): the run saves and exits."""


# ----------------------------------------------------------------------------- machinery

def select_device(name: str = "auto") -> torch.device:
    if name != "auto":
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise RunError("device 'cuda' was asked for but no CUDA GPU is visible; use --device auto or cpu.")
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_supports_bf16() -> bool:
    """bf16 autocast only pays on CPUs with native bf16 (AVX512-BF16 or AMX); elsewhere it is
    emulated and slower than fp32."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def select_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32."""
    if name == "fp32":
        return None
    if name == "bf16":
        return torch.bfloat16
    if name == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None or device.type == "mps":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device_name: str) -> Dist:
    """Join the process group when launched by ``torchrun`` (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if (torch.cuda.is_available() and device_name in ("auto", "cuda")) else "gloo"
        dist.init_process_group(backend=backend)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available() and device_name in ("auto", "cuda"):
        torch.cuda.set_device(local)
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local)


def dihedral(x: torch.Tensor, view: int) -> torch.Tensor:
    """View 0..7 of the dihedral group D4: ``view // 4`` horizontal flip, ``view % 4`` quarter turns."""
    if view >= 4:
        x = torch.flip(x, dims=(-1,))
    k = view % 4
    return torch.rot90(x, k, dims=(-2, -1)) if k else x


# ----------------------------------------------------------------------------- data

class EpochOrder(torch.utils.data.Sampler):
    """The DataLoader's sampler: yields whatever order the loop set for this epoch (see
    :func:`epoch_indices`), so persistent workers survive across epochs."""

    def __init__(self):
        self.order: list[int] = []

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


@dataclass
class RunData:
    root: Path
    split: Split
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    source: str


def prepare_data(config: TrainConfig, *, progress: bool = True) -> RunData:
    root = resolve_dataset(config.data_root, progress=progress)
    index = load_index(root)
    if config.split_file:
        split = Split.load(config.split_file)
    else:
        split = make_split(index, by=config.split_mode, test=config.test_fraction, val=config.val_fraction,
                           seed=config.seed, magnification=config.magnification)
    frames = split.frames(index)
    train = subsample_to_ratio(frames["train"], config.target_ratio, seed=config.seed)
    if config.max_train_images and len(train) > config.max_train_images:
        train = train.sample(n=config.max_train_images, random_state=config.seed).sort_index()
    if train["target"].nunique() < 2:
        raise RunError("the training part holds only one class; use more patients or another seed.")
    return RunData(root=Path(root), split=split, train=train.reset_index(drop=True), val=frames["val"],
                   test=frames["test"], source=index.attrs.get("source", "real"))


def epoch_indices(targets: np.ndarray, strategy: str, *, seed: int, epoch: int, dist: Dist) -> np.ndarray:
    """The training order of one epoch: the same on every rank (seeded by seed and epoch), then
    each rank takes its shard, cut to equal length so DDP ranks step in lockstep."""
    gen = torch.Generator().manual_seed(seed * 1000 + epoch)
    if strategy == "oversample":
        base = oversample_indices(targets, seed=seed)
        order = base[torch.randperm(len(base), generator=gen).numpy()]
    elif strategy == "sampler":
        sampler = balanced_sampler(targets, seed=seed * 1000 + epoch)
        order = np.fromiter(iter(sampler), dtype=np.int64)
    else:
        order = torch.randperm(len(targets), generator=gen).numpy()
    if dist.enabled:
        per_rank = len(order) // dist.world
        order = order[dist.rank::dist.world][:per_rank]
    return order


# ----------------------------------------------------------------------------- quick mode cache

def batchnorm_layers(module: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def calibrate_batchnorm(module: torch.nn.Module, batches, *, device: torch.device, dtype: torch.dtype | None,
                        channels_last: bool = False) -> int:
    """Recompute ``module``'s BatchNorm statistics as an exact average over ``batches``
    (like ``torch.optim.swa_utils.update_bn``); returns the number of layers recalibrated.

    Why, in quick mode: (1) the top -- a classroom run has a handful of steps per epoch, far too
    few for BatchNorm's running averages (momentum 0.1) to settle, so evaluation would normalise
    with stale statistics and predict one class. The top trains with batch statistics as usual,
    and its running statistics are recomputed exactly on the cached training features before
    every validation and checkpoint (cheap: one forward pass of the top), so what is evaluated
    and saved normalises with statistics of the weights it has. (Freezing statistics calibrated
    once, an earlier choice, broke a *random* top: as its weights moved, the frozen statistics
    stopped normalising, activations and the loss blew up, and quick mode stayed at chance.)
    (2) a *random* stem (offline, no pretrained weights) has BatchNorm statistics of mean 0 and
    variance 1 that match nothing, so activations blow up through 40 layers; calibrating them
    on the training images is a data-dependent initialisation that makes random features well
    scaled.
    """
    bns = batchnorm_layers(module)
    if not bns:
        return 0
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    was_training = module.training
    module.train()
    for x in batches:
        x = x.to(device)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, dtype):
            module(x)
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    module.train(was_training)
    return len(bns)


def image_batches(frame: pd.DataFrame, *, size: int, mean, std, batch_size: int):
    """(B, 3, S, S) eval-transformed image batches over a frame."""
    ds = BreakHisDataset(frame, transform=build_transform("eval", size=size, mean=mean, std=std))
    for start in range(0, len(ds), batch_size):
        yield torch.stack([ds[i][0] for i in range(start, min(len(ds), start + batch_size))])


@torch.no_grad()
def extract_features(stem: torch.nn.Module, frame: pd.DataFrame, *, size: int, mean, std, views: list[int],
                     device: torch.device, dtype: torch.dtype | None, batch_size: int, channels_last: bool,
                     on_progress=None) -> torch.Tensor:
    """Stem outputs for every image and view: a (N, V, ...) tensor stored in half precision
    (bf16/fp16 halves the memory; the top trains in autocast anyway)."""
    store_dtype = torch.bfloat16 if dtype == torch.bfloat16 else torch.float16
    out: torch.Tensor | None = None
    n, start = len(frame), 0
    for x in image_batches(frame, size=size, mean=mean, std=std, batch_size=batch_size):  # (B, 3, S, S)
        feats = []
        for v in views:
            xv = dihedral(x, v).to(device)
            if channels_last and xv.dim() == 4:
                xv = xv.contiguous(memory_format=torch.channels_last)
            with autocast(device, dtype):
                f = stem(xv)
            feats.append(f.to(store_dtype).contiguous())
        f = torch.stack(feats, dim=1).cpu()  # (B, V, ...)
        if out is None:
            out = torch.empty((n, *f.shape[1:]), dtype=store_dtype)
        out[start:start + len(f)] = f
        start += len(f)
        if on_progress:
            on_progress(start, n)
    assert out is not None
    return out


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def predict_probs(model: torch.nn.Module, frame: pd.DataFrame | None = None, *, features: torch.Tensor | None = None,
                  size: int = 224, mean=None, std=None, device: torch.device, dtype: torch.dtype | None,
                  batch_size: int = 32, channels_last: bool = False) -> np.ndarray:
    """Class probabilities (N, C) for a frame (decoded through the eval transform) or for cached
    stem features (quick mode, view 0)."""
    was_training = model.training
    model.eval()
    chunks = []
    try:
        if features is not None:
            for start in range(0, len(features), batch_size):
                f = features[start:start + batch_size, 0].to(device)
                with autocast(device, dtype):
                    logits = model(f)
                chunks.append(torch.softmax(logits.float(), dim=1).cpu())
        else:
            ds = BreakHisDataset(frame, transform=build_transform("eval", size=size, mean=mean, std=std))
            for start in range(0, len(ds), batch_size):
                x = torch.stack([ds[i][0] for i in range(start, min(len(ds), start + batch_size))]).to(device)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast(device, dtype):
                    logits = model(x)
                chunks.append(torch.softmax(logits.float(), dim=1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, len(CLASSES)))


def nll(probs: np.ndarray, targets: np.ndarray) -> float:
    if len(targets) == 0:
        return float("nan")
    p = np.clip(probs[np.arange(len(targets)), targets], 1e-7, 1.0)
    return float(-np.log(p).mean())


def score(frame: pd.DataFrame, probs: np.ndarray) -> dict:
    from dala.metrics import classification_report

    return classification_report(frame["target"].to_numpy(), probs, class_names=CLASSES,
                                 patients=frame["patient"].to_numpy(), magnifications=frame["magnification"].to_numpy())


def choose_tiles(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """A fixed strip of validation images, half of each class where possible."""
    if n <= 0 or frame.empty:
        return frame.iloc[:0]
    parts = []
    for t in (0, 1):
        sub = frame[frame["target"] == t]
        parts.append(sub.sample(n=min(len(sub), (n + 1 - t) // 2), random_state=seed))
    return pd.concat(parts)


# ----------------------------------------------------------------------------- checkpoints and state

def save_training_state(folder: Path, optimizer, scheduler, state: dict) -> None:
    """Optimizer tensors as safetensors, the rest as JSON: nothing pickled."""
    from safetensors.torch import save_file

    from dala.io import atomic_path, atomic_write_json

    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, pstate in sd["state"].items():
        for k, v in pstate.items():
            key = f"state.{pid}.{k}"
            if torch.is_tensor(v):
                tensors[key] = v.detach().cpu().contiguous()
            else:
                scalars[key] = v
    tensors["rng.torch"] = torch.get_rng_state()
    with atomic_path(folder / "optimizer.safetensors") as tmp:
        save_file(tensors, str(tmp))
    atomic_write_json(folder / "trainer_state.json", {
        **state, "optimizer_param_groups": sd["param_groups"], "optimizer_scalars": scalars,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
    })


def load_training_state(folder: Path, optimizer, scheduler) -> dict:
    from safetensors.torch import load_file

    from dala.io import read_json

    state = read_json(folder / "trainer_state.json")
    if state is None or not (folder / "optimizer.safetensors").exists():
        raise RunError(f"{folder} holds no training state to resume from; start a new run instead.")
    tensors = load_file(str(folder / "optimizer.safetensors"))
    opt_state: dict = {}
    for key, v in tensors.items():
        if key.startswith("state."):
            _, pid, name = key.split(".", 2)
            opt_state.setdefault(int(pid), {})[name] = v
    for key, v in state.pop("optimizer_scalars", {}).items():
        _, pid, name = key.split(".", 2)
        opt_state.setdefault(int(pid), {})[name] = v
    optimizer.load_state_dict({"state": opt_state, "param_groups": state.pop("optimizer_param_groups")})
    # safetensors stores contiguous tensors; a channels_last parameter needs its moments in its own
    # memory layout, or CUDA's fused AdamW refuses the step ("same dtype, device, and layout")
    for param, pstate in optimizer.state.items():
        for name, value in pstate.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                pstate[name] = torch.empty_like(param, dtype=value.dtype).copy_(value)
    if scheduler is not None and state.get("scheduler"):
        scheduler.load_state_dict(state["scheduler"])
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    return state


# ----------------------------------------------------------------------------- the loop

def run_training(config: TrainConfig, run_dir: str | os.PathLike, *, progress: bool = True,
                 resume: bool = False) -> dict:
    """Train, validate every epoch, test the best model. Returns the report (also ``report.json``)."""
    from dala.io import atomic_write_json
    from dala.models import create_model, get_spec
    from dala.models.checkpoint import load_checkpoint, save_checkpoint
    from dala.models.init import zero_init_residual

    config.validate()
    dist = init_distributed(config.device)
    folder = RunFolder(run_dir, writer=dist.main)
    folder.path.mkdir(parents=True, exist_ok=True)
    folder.write_json(folder.config_path, config.to_dict())
    folder.clear_control()
    t_start = time.time()
    stopped = False
    folder.update_status(state="running", phase="loading data", pid=os.getpid(), started=t_start, error=None,
                         epoch=0, epochs=config.epochs, step=0)
    try:
        torch.manual_seed(config.seed)
        np.random.seed(config.seed)
        device = select_device(config.device)
        dtype = select_precision(config.precision, device)
        data = prepare_data(config, progress=progress and dist.main)
        folder.write_json(folder.split_path, data.split.to_dict())

        model = create_model(config.model, num_classes=len(CLASSES), pretrained=config.pretrained, **config.model_options)
        resuming = resume and (folder.last_dir / "trainer_state.json").exists()
        if resuming:  # before anything is cached: quick mode's features must come from the saved stem
            loaded, _ = load_checkpoint(folder.last_dir)
            model.load_state_dict(loaded.state_dict())
            del loaded
        spec = get_spec(config.model)
        size = config.image_size or spec.input_size_for(config.model_options)
        mean, std = spec.mean, spec.std
        conv_net = config.channels_last and device.type != "mps"
        # checkpoints must say the size the model was trained at (explain and predict resize to it)
        if hasattr(model, "dala_config"):
            model.dala_config["input_size"] = size
        model.to(device)
        if conv_net:
            model.to(memory_format=torch.channels_last)

        # -- what trains: the top over cached stem features, or the whole network
        if config.mode == "quick":
            stem, trainable = spec.split(model)
            stem.eval()
            for p in stem.parameters():
                p.requires_grad_(False)
            views = list(range(config.quick_views))

            def feats(frame, vs, label):
                folder.update_status(phase=f"caching stem features ({label})")
                return extract_features(stem, frame, size=size, mean=mean, std=std, views=vs, device=device,
                                        dtype=dtype, batch_size=config.batch_size, channels_last=conv_net,
                                        on_progress=lambda d, n: folder.update_status(phase=f"caching stem features ({label}) {d}/{n}"))

            t_feat = time.time()
            random_weights = getattr(model, "dala_config", {}).get("weight_source", "random").startswith("random")
            if random_weights and not resuming:  # offline: make random features worth learning from
                zero_init_residual(stem)  # see dala.models.init: the stem passes shallow features through
                zero_init_residual(trainable)  # the top starts as its shortcuts and grows its branches
                folder.update_status(phase="preparing the random stem: residual branches zeroed, BatchNorm calibrated on training images")
                calibrate_batchnorm(stem, image_batches(data.train, size=size, mean=mean, std=std, batch_size=config.batch_size),
                                    device=device, dtype=dtype, channels_last=conv_net)
                stem.eval()
            train_feats = feats(data.train, views, "train")
            val_feats = feats(data.val, [0], "val") if len(data.val) else None
            feature_time = time.time() - t_feat

            def calibrate_top() -> None:  # see calibrate_batchnorm (1); views cycle so all eight are seen
                calibrate_batchnorm(trainable, (train_feats[i:i + config.batch_size, (i // config.batch_size) % len(views)]
                                                for i in range(0, len(train_feats), config.batch_size)),
                                    device=device, dtype=dtype)

            if not resuming:
                calibrate_top()  # also a data-dependent initialisation of the top
        else:
            trainable = model
            feature_time = 0.0
            # per image only the dihedral view (uint8); colour jitter + normalisation run per batch below
            train_ds = BreakHisDataset(data.train, transform=build_transform("dihedral", size=size), cache=True, cache_size=size)
            batch_transform = TrainBatchTransform(mean=mean, std=std).to(device)
            folder.update_status(phase="decoding training images")
            train_ds.preload(threads=min(8, os.cpu_count() or 1),
                             on_progress=lambda d, n: folder.update_status(phase=f"decoding training images {d}/{n}"))
            epoch_order = EpochOrder()
            workers = config.num_workers if config.num_workers is not None else (min(8, os.cpu_count() or 1) if device.type == "cuda" else 0)
            loader = torch.utils.data.DataLoader(train_ds, batch_size=config.batch_size, sampler=epoch_order,
                                                 num_workers=workers, pin_memory=device.type == "cuda",
                                                 persistent_workers=workers > 0, drop_last=False)
        targets = data.train["target"].to_numpy()
        params = [p for p in trainable.parameters() if p.requires_grad]
        n_trainable = sum(p.numel() for p in params)
        criterion = make_loss(config.imbalance, targets, num_classes=len(CLASSES), gamma=config.focal_gamma).to(device)
        # fused: one kernel over all parameters instead of a loop per tensor (~3 % of a CPU step)
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay,
                                      fused=device.type in ("cpu", "cuda"))
        per_rank = len(targets) if config.imbalance != "oversample" else len(oversample_indices(targets, seed=config.seed))
        steps_per_epoch = max(1, math.ceil((per_rank // dist.world) / config.batch_size))
        scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)
                     if config.scheduler == "cosine" else None)
        scaler = torch.amp.GradScaler(device.type) if (dtype == torch.float16 and device.type == "cuda") else None

        ddp_module = trainable
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ddp_module = DDP(trainable, device_ids=[device.index] if device.type == "cuda" else None)

        start_epoch, best_value, best_epoch, stale = 1, -math.inf, 0, 0
        if resuming:  # the weights were loaded above
            state = load_training_state(folder.last_dir, optimizer, scheduler)
            start_epoch = state["epoch"] + 1
            best_value, best_epoch, stale = state["best_value"], state["best_epoch"], state.get("stale", 0)
            folder.truncate_metrics(after_epoch=state["epoch"])
            folder.log_metric({"kind": "resume", "epoch": state["epoch"]})

        tiles = choose_tiles(data.val, config.n_tiles, config.seed)
        tiles_record = {"tiles": [{"image_id": r.image_id, "path": r.path, "label": r.label} for r in tiles.itertuples()],
                        "epochs": []}
        if resuming and folder.tiles_path.exists():
            from dala.io import read_json

            old = read_json(folder.tiles_path) or {}
            tiles_record["epochs"] = [e for e in old.get("epochs", []) if e["epoch"] < start_epoch]
        tile_pos = [data.val.index.get_loc(i) for i in tiles.index] if len(tiles) else []

        meta = {
            "model": config.model, "num_params": sum(p.numel() for p in model.parameters()),
            "trainable_params": n_trainable, "weight_source": getattr(model, "dala_config", {}).get("weight_source", "unknown"),
            "device": str(device), "precision": str(dtype).replace("torch.", "") if dtype else "fp32",
            "image_size": size, "world_size": dist.world, "data_root": str(data.root), "data_source": data.source,
            "split": {"by": data.split.by, "sha256": data.split.content_hash(), "counts": data.split.counts(),
                      "leaking_patients": len(data.split.leaking_patients())},
            "train_class_counts": {c: int((targets == i).sum()) for i, c in enumerate(CLASSES)},
            "feature_cache_s": round(feature_time, 2),
        }
        folder.update_status(phase="training", meta=meta, steps_per_epoch=steps_per_epoch)

        def validate() -> tuple[dict | None, np.ndarray | None]:
            if data.val.empty:
                return None, None
            net = model if config.mode == "full" else trainable
            probs = predict_probs(net, data.val, features=val_feats if config.mode == "quick" else None, size=size,
                                     mean=mean, std=std, device=device, dtype=dtype, batch_size=config.batch_size,
                                     channels_last=conv_net)
            rep = score(data.val, probs)
            rep["loss"] = nll(probs, data.val["target"].to_numpy())
            return rep, probs

        from tqdm.auto import tqdm

        bar = tqdm(total=config.epochs * steps_per_epoch, initial=(start_epoch - 1) * steps_per_epoch, unit="step",
                   desc=f"train {config.model} ({config.mode})", disable=not (progress and dist.main), dynamic_ncols=True)
        global_step = (start_epoch - 1) * steps_per_epoch
        train_time = 0.0
        images_seen = 0
        for epoch in range(start_epoch, config.epochs + 1):
            t_epoch = time.time()
            ddp_module.train()
            if config.mode == "quick":
                stem.eval()
            order = epoch_indices(targets, config.imbalance, seed=config.seed, epoch=epoch, dist=dist)
            gen = torch.Generator().manual_seed(config.seed * 7919 + epoch * 31 + dist.rank)
            run_loss = run_correct = run_n = 0.0
            step_in_epoch = 0
            if config.mode == "full":
                epoch_order.order = order.tolist()
                batches = iter(loader)
            for start in range(0, len(order), config.batch_size):
                _check_control(folder, dist)
                idx = order[start:start + config.batch_size]
                if config.mode == "quick":
                    y = torch.as_tensor(targets[idx], device=device)
                    view = torch.randint(0, train_feats.shape[1], (len(idx),), generator=gen)
                    x = train_feats[torch.as_tensor(idx), view].to(device, non_blocking=True)  # (B, ...) stem features
                else:
                    x, y = next(batches)  # (B, 3, S, S) uint8 dihedral views, (B,): the loader follows epoch_order
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    x = batch_transform(x, generator=gen)  # (B, 3, S, S) float: each image's stain jitter, normalised
                    if conv_net:
                        x = x.contiguous(memory_format=torch.channels_last)
                with autocast(device, dtype):
                    logits = ddp_module(x)
                    loss = criterion(logits.float(), y)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                global_step += 1
                step_in_epoch += 1
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{float(loss.detach()):.3f}", refresh=False)
                b = len(idx)
                run_loss += float(loss.detach()) * b
                run_correct += float((logits.argmax(1) == y).sum())
                run_n += b
                images_seen += b
                if global_step % config.log_every == 0 or step_in_epoch == 1:
                    elapsed = train_time + (time.time() - t_epoch)
                    rate = images_seen / max(elapsed, 1e-6)
                    remaining = (config.epochs - epoch) * per_rank + max(0, len(order) - start - b)
                    folder.log_metric({"kind": "step", "epoch": epoch, "step": global_step, "loss": float(loss.detach()),
                                       "lr": optimizer.param_groups[0]["lr"], "images_per_s": rate * dist.world})
                    folder.update_status(epoch=epoch, step=global_step, eta_s=remaining / max(rate, 1e-6),
                                         progress=(global_step / (config.epochs * steps_per_epoch)))
            epoch_train_s = time.time() - t_epoch
            train_time += epoch_train_s

            # -- validation, selection, checkpoints (rank 0)
            record = {"kind": "epoch", "epoch": epoch, "train_loss": run_loss / max(run_n, 1),
                      "train_accuracy": run_correct / max(run_n, 1), "lr": optimizer.param_groups[0]["lr"],
                      "epoch_time_s": epoch_train_s, "images_per_s": run_n * dist.world / max(epoch_train_s, 1e-6)}
            improved = False
            if dist.main:
                if config.mode == "quick":
                    folder.update_status(phase="recalibrating BatchNorm on the cached training features")
                    t_cal = time.time()
                    calibrate_top()
                    record["bn_recalibration_s"] = time.time() - t_cal
                folder.update_status(phase="validating")
                rep, probs = validate()
                if rep is not None:
                    record.update({"val_loss": rep["loss"], "val_accuracy": rep["accuracy"],
                                   "val_balanced_accuracy": rep["balanced_accuracy"], "val_gmean": rep["gmean"],
                                   "val_iba": rep["iba"], "val_f1_macro": rep["macro"]["f1"], "val_mcc": rep["mcc"],
                                   "val_roc_auc": rep["roc_auc"], "val_patient_accuracy": rep["patient_accuracy"]})
                    value = _selection_value(rep, config.select_metric)
                    if len(tile_pos):
                        tiles_record["epochs"].append({"epoch": epoch, "probs": probs[tile_pos].round(4).tolist(),
                                                       "pred": probs[tile_pos].argmax(1).tolist()})
                        folder.write_json(folder.tiles_path, tiles_record)
                else:
                    value = float(epoch)  # no validation part: the last epoch is the best
                improved = value > best_value
                if improved:
                    best_value, best_epoch, stale = value, epoch, 0
                    save_checkpoint(model, folder.best_dir, class_names=list(CLASSES),
                                    extra={"epoch": epoch, "val": {k: v for k, v in record.items() if k.startswith("val_")},
                                           "run_config": config.to_dict()})
                else:
                    stale += 1
                record["best_epoch"] = best_epoch
                folder.log_metric(record)
                save_checkpoint(model, folder.last_dir, class_names=list(CLASSES),
                                extra={"epoch": epoch, "run_config": config.to_dict()})
                save_training_state(folder.last_dir, optimizer, scheduler,
                                    {"epoch": epoch, "best_value": best_value, "best_epoch": best_epoch, "stale": stale})
                folder.update_status(phase="training", epoch=epoch, last_epoch=record)
                if rep is not None and progress:
                    bar.write(f"epoch {epoch}: train loss {record['train_loss']:.3f}  val loss {record['val_loss']:.3f}  "
                              f"val acc {record['val_accuracy']:.3f}  val GMean {record['val_gmean'] or 0:.3f}"
                              + ("  *best*" if improved else ""))
            if dist.enabled:
                import torch.distributed as tdist

                flag = torch.tensor([stale], dtype=torch.int64)
                tdist.broadcast(flag, 0)
                stale = int(flag.item())
            if config.early_stopping and stale >= config.early_stopping:
                folder.log_metric({"kind": "early_stop", "epoch": epoch, "best_epoch": best_epoch})
                break
    except (StopRequested, KeyboardInterrupt):  # Ctrl-C in the CLI stops cleanly, like "stop"
        stopped = True
    except BaseException as exc:
        folder.update_status(state="failed", phase="failed", error=f"{type(exc).__name__}: {exc}")
        _teardown(dist)
        raise
    finally:
        if "bar" in locals():
            bar.close()

    if stopped:
        folder.update_status(state="stopped", phase="stopped",
                             note="stopped on request; resume with `python -m dala train --resume RUN_DIR`")
        _teardown(dist)
        return {}

    # -- test the best model
    report: dict = {}
    if dist.main:
        folder.update_status(phase="testing")
        best_model, _ = load_checkpoint(folder.best_dir)
        best_model.to(device)
        if config.mode == "quick":
            stem_best, best_top = spec.split(best_model)
            test_feats = extract_features(stem_best, data.test, size=size, mean=mean, std=std, views=[0], device=device,
                                          dtype=dtype, batch_size=config.batch_size, channels_last=conv_net)
            probs = predict_probs(best_top, features=test_feats, device=device, dtype=dtype, batch_size=config.batch_size)
        else:
            probs = predict_probs(best_model, data.test, size=size, mean=mean, std=std, device=device, dtype=dtype,
                                     batch_size=config.batch_size, channels_last=conv_net)
        from dala.metrics import calibration_bins, curve_points

        y = data.test["target"].to_numpy()
        test_rep = score(data.test, probs)
        test_rep["loss"] = nll(probs, y)
        report = {
            "config": config.to_dict(), **meta, "best_epoch": best_epoch, "select_metric": config.select_metric,
            "best_value": best_value, "train_time_s": round(train_time, 2), "total_time_s": round(time.time() - t_start, 2),
            "train_images_per_s": round(images_seen * dist.world / max(train_time, 1e-6), 2),
            "test": test_rep, "curves": curve_points(y, probs) if len(set(y)) > 1 else None,
            "calibration": calibration_bins(y, probs),
            "test_predictions": {"image_id": data.test["image_id"].tolist(), "probs": probs.round(5).tolist()},
        }
        atomic_write_json(folder.report_path, report)
        folder.log_metric({"kind": "test", "epoch": best_epoch, "accuracy": test_rep["accuracy"],
                           "gmean": test_rep["gmean"], "balanced_accuracy": test_rep["balanced_accuracy"]})
        folder.update_status(state="finished", phase="finished", progress=1.0, eta_s=0)
    _teardown(dist)
    return report


def _selection_value(rep: dict, metric: str) -> float:
    if metric == "val_loss":
        return -rep["loss"]
    if metric == "f1_macro":
        v = rep["macro"]["f1"]
    else:
        v = rep.get(metric)
    return -math.inf if v is None else float(v)


def _check_control(folder: RunFolder, dist: Dist) -> None:
    """Pause (sleeping, status 'paused') or stop, as ``control.json`` says. Under DDP rank 0
    decides and broadcasts, so every rank stops at the same step."""
    code = {"pause": 1, "stop": 2}.get(folder.read_control() or "", 0) if dist.main else 0
    if dist.enabled:
        import torch.distributed as tdist

        t = torch.tensor([code], dtype=torch.int64)
        tdist.broadcast(t, 0)
        code = int(t.item())
    if code == 1:
        folder.update_status(state="paused", phase="paused")
        while True:
            time.sleep(0.2)
            cmd = folder.read_control() if dist.main else None
            c = {"pause": 1, "stop": 2}.get(cmd or "", 0)
            if dist.enabled:
                import torch.distributed as tdist

                t = torch.tensor([c], dtype=torch.int64)
                tdist.broadcast(t, 0)
                c = int(t.item())
            if c != 1:
                code = c
                break
        folder.update_status(state="running", phase="training")
    if code == 2:
        folder.update_status(state="stopping", phase="stopping")
        raise StopRequested()


def _teardown(dist: Dist) -> None:
    if dist.enabled:
        import torch.distributed as tdist

        if tdist.is_initialized():
            tdist.destroy_process_group()
