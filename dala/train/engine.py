"""One training loop for the CLI, the notebooks and the app.

Reading order, top to bottom as in torchvision's ``references/classification/train.py``:
:func:`run_training` claims the run folder (one writer), :func:`set_up` builds device, precision,
data, model and the mode (:mod:`dala.train.modes`: quick trains a top over cached stem
features, full fine-tunes everything), then every epoch is :func:`train_one_epoch` and
:func:`validate_and_select` (``best`` and ``last`` checkpoints), and :func:`test_best` scores the
best model on the test part into ``report.json``.

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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dala.data import CLASSES
from dala.errors import RunError
from dala.train.config import TrainConfig, check_resume
from dala.train.eta import LiveEta, estimate_parts
from dala.train.evaluation import (batchnorm_layers, calibrate_batchnorm, extract_features,  # noqa: F401 (re-exported)
                                   image_batches, nll, predict_probs, score, selection_value,
                                   calibrate_on_validation)
from dala.train.folder import RunFolder, read_config
from dala.train.imbalance import make_loss, oversample_indices
from dala.train.inputs import (EpochOrder, RunData, choose_tiles, epoch_indices, make_stain_step,  # noqa: F401
                               prepare_data)
from dala.train.machinery import (Dist, autocast, broadcast_int, cpu_supports_bf16, dihedral,  # noqa: F401
                                  init_distributed, select_device, select_precision, teardown)
from dala.train.modes import Setup, make_mode
from dala.train.state import load_training_state, save_training_state  # noqa: F401

STOP_NOTE = "stopped on request; resume with `python -m dala train --resume --run-dir {run_dir}`"
MIN_STEP_RECORD_S = 0.25  # off the CPU: at most ~4 step records a second, however fast the steps


class StopRequested(Exception):
    """Raised inside the loop when ``stop`` arrives (or Ctrl-C): the run saves and exits."""


def run_training(config: TrainConfig, run_dir: str | os.PathLike, *, progress: bool = True,
                 resume: bool = False) -> dict:
    """Train, validate every epoch, test the best model. Returns the report (also ``report.json``);
    ``{}`` when stopped. ``resume``: continue from ``checkpoints/last`` (the run's own config;
    only ``epochs`` and machinery may differ)."""
    config.validate()
    dist = init_distributed(config.device)
    folder = RunFolder(run_dir, writer=dist.main)
    try:
        with folder.writer_lock() if dist.main else contextlib.nullcontext():
            resuming = open_run(folder, config, resume=resume)
            run, bar = None, None
            try:
                run = set_up(config, folder, dist, resuming=resuming, progress=progress)
                bar = run.progress_bar(enabled=progress and dist.main)
                for epoch in range(run.start_epoch, config.epochs + 1):
                    record = train_one_epoch(run, epoch, bar)
                    if dist.main:
                        validate_and_select(run, epoch, record, bar=bar if progress else None)
                    run.stale = broadcast_int(run.stale, dist)
                    if config.early_stopping and run.stale >= config.early_stopping:
                        folder.log_metric({"kind": "early_stop", "epoch": epoch, "best_epoch": run.best_epoch})
                        break
                if bar is not None:
                    bar.close()
                return test_best(run) if dist.main else {}
            except (StopRequested, KeyboardInterrupt):  # Ctrl-C in the CLI stops cleanly, like "stop"
                folder.update_status(state="stopped", phase="stopped", note=STOP_NOTE.format(run_dir=folder.path))
                return {}
            except BaseException as exc:  # whatever it was, the run says failed and why
                folder.update_status(state="failed", phase="failed", error=f"{type(exc).__name__}: {exc}")
                raise
            finally:
                if bar is not None:
                    bar.close()
    finally:
        teardown(dist)


def open_run(folder: RunFolder, config: TrainConfig, *, resume: bool) -> bool:
    """Check what may be written, then claim the folder (the caller holds its writer lock).
    Returns whether training resumes from a checkpoint. A resume whose config contradicts the
    run's own is refused before anything is written."""
    if resume and folder.is_run():
        done = None
        if folder.has_training_state():
            from dala.io import read_json

            done = (read_json(folder.trainer_state_path, {}, expect=dict) or {}).get("epoch")
        check_resume(read_config(folder), config, done_epochs=done)
    if folder.writer:
        folder.path.mkdir(parents=True, exist_ok=True)
        folder.clean_orphans()  # a kill during a checkpoint write leaves temporary files
    folder.write_json(folder.config_path, config.to_dict())
    folder.clear_control()
    resuming = resume and folder.has_training_state()
    if not resuming:  # a fresh start (or a resume before the first checkpoint) redoes everything
        folder.truncate_metrics(after_epoch=0)
    folder.update_status(state="running", phase="loading data", pid=os.getpid(), started=time.time(), error=None,
                         epoch=0, epochs=config.epochs, step=0)
    return resuming


@dataclass
class Run:
    """Everything the loop needs, built by :func:`set_up`."""

    config: TrainConfig
    folder: RunFolder
    dist: Dist
    setup: Setup
    mode: Any
    module: torch.nn.Module  # what the step calls: the trainable part, DDP-wrapped under torchrun
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    targets: np.ndarray
    per_rank: int
    steps_per_epoch: int
    meta: dict
    eta: LiveEta
    tiles: dict
    tile_pos: list
    t_start: float = field(default_factory=time.time)
    start_epoch: int = 1
    best_value: float = -math.inf
    best_epoch: int = 0
    stale: int = 0
    global_step: int = 0
    train_time: float = 0.0
    images_seen: int = 0

    def progress_bar(self, *, enabled: bool):
        from tqdm.auto import tqdm

        c = self.config
        return tqdm(total=c.epochs * self.steps_per_epoch, initial=(self.start_epoch - 1) * self.steps_per_epoch,
                    unit="step", desc=f"train {c.model} ({c.mode})", disable=not enabled, dynamic_ncols=True)


def set_up(config: TrainConfig, folder: RunFolder, dist: Dist, *, resuming: bool, progress: bool) -> Run:
    """Seeds, device, data, model, mode, optimiser; the saved state when resuming."""
    from dala.models import create_model, get_spec
    from dala.models.checkpoint import load_checkpoint

    t_start = time.time()  # the run's clock starts here: decoding and quick mode's feature cache count
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    device = select_device(config.device)
    dtype = select_precision(config.precision, device)
    data = prepare_data(config, progress=progress and dist.main)
    folder.write_json(folder.split_path, data.split.to_dict())
    model = create_model(config.model, num_classes=len(CLASSES), pretrained=config.pretrained, **config.model_options)
    if resuming:  # before anything is cached: quick mode's features must come from the saved stem
        loaded, _ = load_checkpoint(folder.last_dir)
        model.load_state_dict(loaded.state_dict())
        del loaded
    spec = get_spec(config.model)
    size = config.image_size or spec.input_size_for(config.model_options)
    conv_net = config.channels_last and device.type != "mps"
    stain = make_stain_step(config, data, size=size)
    if hasattr(model, "dala_config"):  # checkpoints say the size the model was trained at, and the stain fit
        model.dala_config["input_size"] = size
        model.dala_config["stain_norm"] = stain.normalizer.to_config() if stain is not None else None
    model.to(device)
    if conv_net:
        model.to(memory_format=torch.channels_last)
    setup = Setup(config=config, data=data, model=model, spec=spec, size=size, device=device, dtype=dtype,
                  conv_net=conv_net, status=folder.update_status, stain=stain)
    mode = make_mode(setup)
    mode.prepare(resuming=resuming)

    targets = data.train["target"].to_numpy()
    params = [p for p in mode.trainable.parameters() if p.requires_grad]
    criterion = make_loss(config.imbalance, targets, num_classes=len(CLASSES), gamma=config.focal_gamma).to(device)
    # fused: one kernel over all parameters instead of a loop per tensor (~3 % of a CPU step)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay,
                                  fused=device.type in ("cpu", "cuda"))
    per_rank = len(targets) if config.imbalance != "oversample" else len(oversample_indices(targets, seed=config.seed))
    steps_per_epoch = max(1, math.ceil((per_rank // dist.world) / config.batch_size))
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)
                 if config.scheduler == "cosine" else None)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16 and device.type == "cuda")
    module = mode.trainable
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        module = DDP(mode.trainable, device_ids=[device.index] if device.type == "cuda" else None)

    tiles = choose_tiles(data.val, config.n_tiles, config.seed)
    meta = {
        "model": config.model, "num_params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in params),
        "weight_source": getattr(model, "dala_config", {}).get("weight_source", "unknown"),
        "device": str(device), "precision": str(dtype).replace("torch.", "") if dtype else "fp32",
        "image_size": size, "world_size": dist.world, "data_root": str(data.root), "data_source": data.source,
        "split": {"by": data.split.by, "sha256": data.split.content_hash(), "counts": data.split.counts(),
                  "leaking_patients": len(data.split.leaking_patients())},
        "train_class_counts": {c: int((targets == i).sum()) for i, c in enumerate(CLASSES)},
        "feature_cache_s": round(mode.feature_time, 2),
        "stain_norm": ({**stain.normalizer.to_config(), "default_reference": config.stain_reference is None}
                       if stain is not None else {"method": "none"}),
    }
    meta["setup_time_s"] = round(time.time() - t_start, 2)
    parts = estimate_parts(config, len(targets), len(data.val) + len(data.test))
    run = Run(config=config, folder=folder, dist=dist, setup=setup, mode=mode, module=module, criterion=criterion,
              optimizer=optimizer, scheduler=scheduler, scaler=scaler, targets=targets, per_rank=per_rank,
              steps_per_epoch=steps_per_epoch, meta=meta, t_start=t_start,
              eta=LiveEta(parts, epochs=config.epochs, steps_per_epoch=steps_per_epoch),
              tiles={"tiles": [{"image_id": r.image_id, "path": r.path, "label": r.label} for r in tiles.itertuples()],
                     "epochs": []},
              tile_pos=[data.val.index.get_loc(i) for i in tiles.index] if len(tiles) else [])
    if resuming:
        resume_state(run)
    folder.update_status(phase="training", meta=meta, steps_per_epoch=steps_per_epoch,
                         eta_s=run.eta.remaining_s(epoch=run.start_epoch, step_in_epoch=0))
    return run


def resume_state(run: Run) -> None:
    """Optimizer, scheduler, RNG and selection state of ``checkpoints/last``; the records of any
    epoch after it are dropped (it is redone), so metrics.jsonl never holds an epoch twice."""
    from dala.train.folder import read_tiles

    folder, config = run.folder, run.config
    state = load_training_state(folder.last_dir, run.optimizer, run.scheduler)
    if run.scheduler is not None:  # extended epochs: the cosine runs over the new length
        run.scheduler.T_max = config.epochs * run.steps_per_epoch
    run.start_epoch = state["epoch"] + 1
    run.best_value, run.best_epoch, run.stale = state["best_value"], state["best_epoch"], state.get("stale", 0)
    run.global_step = (run.start_epoch - 1) * run.steps_per_epoch
    folder.truncate_metrics(after_epoch=state["epoch"])
    folder.log_metric({"kind": "resume", "epoch": state["epoch"]})
    try:
        old = read_tiles(folder) or {}
    except ValueError:  # a damaged tiles file is rebuilt from here on
        old = {}
    run.tiles["epochs"] = [e for e in old.get("epochs", []) if e.get("epoch", 0) < run.start_epoch]


def train_one_epoch(run: Run, epoch: int, bar) -> dict:
    """One pass over this rank's shard of the epoch's order; returns the epoch record so far."""
    c, folder, dist = run.config, run.folder, run.dist
    t_epoch = t_step = time.time()
    run.mode.train(run.module)
    order = epoch_indices(run.targets, c.imbalance, seed=c.seed, epoch=epoch, dist=dist)
    gen = torch.Generator().manual_seed(c.seed * 7919 + epoch * 31 + dist.rank)
    acc_dtype = torch.float32 if run.setup.device.type == "mps" else torch.float64
    loss_sum = torch.zeros((), dtype=acc_dtype, device=run.setup.device)  # read once per epoch: no sync per step
    correct = torch.zeros((), dtype=torch.int64, device=run.setup.device)
    n, last_record = 0, -math.inf
    min_gap = MIN_STEP_RECORD_S if run.setup.device.type != "cpu" else 0.0
    batches = run.mode.batches(order, gen)
    for step_in_epoch, start in enumerate(range(0, len(order), c.batch_size), 1):
        check_control(folder, dist)
        x, y = next(batches)
        with autocast(run.setup.device, run.setup.dtype):
            logits = run.module(x)
            loss = run.criterion(logits.float(), y)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()  # a no-op scale unless fp16 on CUDA
        run.scaler.step(run.optimizer)
        run.scaler.update()
        if run.scheduler is not None:
            run.scheduler.step()
        run.global_step += 1
        b = len(y)
        loss_sum += loss.detach().to(acc_dtype) * b
        correct += (logits.argmax(1) == y).sum()
        n += b
        run.images_seen += b
        now = time.time()
        run.eta.add_steps(1, now - t_step)
        t_step = now
        bar.update(1)
        if (run.global_step % c.log_every == 0 or step_in_epoch == 1) and (step_in_epoch == 1 or now - last_record >= min_gap):
            last_record = now
            step_loss = float(loss.detach())
            bar.set_postfix(epoch=epoch, loss=f"{step_loss:.3f}", refresh=False)
            rate = run.images_seen / max(run.train_time + (now - t_epoch), 1e-6)
            folder.log_metric({"kind": "step", "epoch": epoch, "step": run.global_step, "loss": step_loss,
                               "lr": run.optimizer.param_groups[0]["lr"], "images_per_s": rate * dist.world})
            folder.update_status(epoch=epoch, step=run.global_step,
                                 eta_s=run.eta.remaining_s(epoch=epoch, step_in_epoch=step_in_epoch),
                                 progress=(run.global_step / (c.epochs * run.steps_per_epoch)))
    epoch_train_s = time.time() - t_epoch
    run.train_time += epoch_train_s
    return {"kind": "epoch", "epoch": epoch, "train_loss": float(loss_sum) / max(n, 1),
            "train_accuracy": float(correct) / max(n, 1), "lr": run.optimizer.param_groups[0]["lr"],
            "epoch_time_s": epoch_train_s, "images_per_s": n * dist.world / max(epoch_train_s, 1e-6)}


def validate(run: Run) -> tuple[dict | None, np.ndarray | None]:
    val = run.setup.data.val
    if val.empty:
        return None, None
    probs = run.mode.val_probs()
    rep = score(val, probs)
    rep["loss"] = nll(probs, val["target"].to_numpy())
    return rep, probs


def validate_and_select(run: Run, epoch: int, record: dict, *, bar=None) -> bool:
    """Rank 0: validate, keep ``best`` when the selection metric improved, always save ``last``
    with the training state, log the epoch. Returns whether it improved."""
    from dala.metrics import summary_row
    from dala.models.checkpoint import save_checkpoint

    folder, config, model = run.folder, run.config, run.setup.model
    t_val = time.time()
    record.update(run.mode.after_epoch())
    folder.update_status(phase="validating")
    rep, probs = validate(run)
    if rep is not None:
        record.update({"val_loss": rep["loss"], **{f"val_{k}": v for k, v in summary_row(rep).items()}})
        value = selection_value(rep, config.select_metric)
        if len(run.tile_pos):
            run.tiles["epochs"].append({"epoch": epoch, "probs": probs[run.tile_pos].round(4).tolist(),
                                        "pred": probs[run.tile_pos].argmax(1).tolist()})
            folder.write_json(folder.tiles_path, run.tiles)
    else:
        value = float(epoch)  # no validation part: the last epoch is the best
    improved = value > run.best_value
    if improved:
        run.best_value, run.best_epoch, run.stale = value, epoch, 0
        save_checkpoint(model, folder.best_dir, class_names=list(CLASSES),
                        extra={"epoch": epoch, "val": {k: v for k, v in record.items() if k.startswith("val_")},
                               "run_config": config.to_dict()})
    else:
        run.stale += 1
    record["best_epoch"] = run.best_epoch
    folder.log_metric(record)
    save_checkpoint(model, folder.last_dir, class_names=list(CLASSES), extra={"epoch": epoch, "run_config": config.to_dict()})
    save_training_state(folder.last_dir, run.optimizer, run.scheduler,
                        {"epoch": epoch, "best_value": run.best_value, "best_epoch": run.best_epoch, "stale": run.stale})
    run.eta.add_overhead(time.time() - t_val)
    folder.update_status(phase="training", epoch=epoch, last_epoch=record,
                         eta_s=run.eta.remaining_s(epoch=epoch, step_in_epoch=run.steps_per_epoch, validated=True))
    if rep is not None and bar is not None:
        bar.write(f"epoch {epoch}: train loss {record['train_loss']:.3f}  val loss {record['val_loss']:.3f}  "
                  f"val acc {record['val_accuracy']:.3f}  val GMean {record['val_gmean'] or 0:.3f}"
                  + ("  *best*" if improved else ""))
    return improved


def test_best(run: Run) -> dict:
    """Score the best checkpoint on the test part; write report.json; the run is finished."""
    from dala.io import atomic_write_json
    from dala.metrics import calibration_bins, curve_points
    from dala.models.checkpoint import load_checkpoint, update_checkpoint_config

    folder, config, test = run.folder, run.config, run.setup.data.test
    folder.update_status(phase="testing")
    best_model, _ = load_checkpoint(folder.best_dir)
    best_model.to(run.setup.device)
    probs = run.mode.test_probs(best_model)
    y = test["target"].to_numpy()
    test_rep = score(test, probs)
    test_rep["loss"] = nll(probs, y)
    # calibration: fitted on the best model's validation probabilities, locked before the test is scored
    val = run.setup.data.val
    val_probs = run.mode.test_probs(best_model, part="val") if len(val) else np.zeros((0, len(CLASSES)))
    cal = calibrate_on_validation(val, val_probs, select_metric=config.select_metric)
    update_checkpoint_config(folder.best_dir, {"calibration": cal.to_dict()})
    cal_probs = cal.apply(probs)
    test_at = score(test, cal_probs, threshold=cal.threshold)
    test_at["loss"] = nll(cal_probs, y)
    stain = run.setup.stain
    report = {
        "config": config.to_dict(), **run.meta,
        "stain_norm": {**run.meta["stain_norm"], **(stain.summary() if stain is not None else {})}, "best_epoch": run.best_epoch, "select_metric": config.select_metric,
        "best_value": run.best_value, "train_time_s": round(run.train_time, 2),
        "total_time_s": round(time.time() - run.t_start, 2),  # set-up included, as a person waits for it
        "train_images_per_s": round(run.images_seen * run.dist.world / max(run.train_time, 1e-6), 2),
        "test": test_rep, "curves": curve_points(y, probs) if len(set(y)) > 1 else None,
        "calibration": cal.to_dict(), "calibration_label": cal.label, "test_at_threshold": test_at,
        "ece_test_before": calibration_bins(y, probs)["ece"], "ece_test_after": calibration_bins(y, cal_probs)["ece"],
        "reliability": {"before": calibration_bins(y, probs), "after": calibration_bins(y, cal_probs)},
        "test_predictions": {"image_id": test["image_id"].tolist(), "probs": probs.round(5).tolist()},
        "val_predictions": {"image_id": val["image_id"].tolist(), "probs": val_probs.round(5).tolist()},
    }
    atomic_write_json(folder.report_path, report)
    folder.log_metric({"kind": "test", "epoch": run.best_epoch, "accuracy": test_rep["accuracy"],
                       "gmean": test_rep["gmean"], "balanced_accuracy": test_rep["balanced_accuracy"]})
    folder.update_status(state="finished", phase="finished", progress=1.0, eta_s=0)
    return report


def check_control(folder: RunFolder, dist: Dist) -> None:
    """Pause (sleeping, status 'paused') or stop, as ``control.json`` says. Under DDP rank 0
    decides and broadcasts, so every rank stops at the same step."""
    def command() -> int:
        return broadcast_int({"pause": 1, "stop": 2}.get(folder.read_control() or "", 0) if dist.main else 0, dist)

    code = command()
    if code == 1:
        folder.update_status(state="paused", phase="paused")
        while code == 1:
            time.sleep(0.2)
            code = command()
        folder.update_status(state="running", phase="training")
    if code == 2:
        folder.update_status(state="stopping", phase="stopping")
        raise StopRequested()


_check_control = check_control  # the name before the split into modules
_teardown = teardown
_selection_value = selection_value
