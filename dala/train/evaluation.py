"""Forward passes outside the training step: the stem feature cache of quick mode, BatchNorm
recalibration, class probabilities for validation and test, and their scores."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from dala.data import CLASSES
from dala.data.dataset import BreakHisDataset, build_transform
from dala.train.machinery import autocast, dihedral


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


def image_batches(frame: pd.DataFrame, *, size: int, mean, std, batch_size: int, stain=None):
    """(B, 3, S, S) eval-transformed image batches over a frame (``stain``: the run's stain step)."""
    ds = BreakHisDataset(frame, transform=build_transform("eval", size=size, mean=mean, std=std), stain=stain)
    for start in range(0, len(ds), batch_size):
        yield torch.stack([ds[i][0] for i in range(start, min(len(ds), start + batch_size))])


@torch.no_grad()
def extract_features(stem: torch.nn.Module, frame: pd.DataFrame, *, size: int, mean, std, views: list[int],
                     device: torch.device, dtype: torch.dtype | None, batch_size: int, channels_last: bool,
                     on_progress=None, stain=None) -> torch.Tensor:
    """Stem outputs for every image and view: a (N, V, ...) tensor stored in half precision
    (bf16/fp16 halves the memory; the top trains in autocast anyway)."""
    store_dtype = torch.bfloat16 if dtype == torch.bfloat16 else torch.float16
    out: torch.Tensor | None = None
    n, start = len(frame), 0
    for x in image_batches(frame, size=size, mean=mean, std=std, batch_size=batch_size, stain=stain):  # (B, 3, S, S)
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


@torch.no_grad()
def predict_probs(model: torch.nn.Module, frame: pd.DataFrame | None = None, *, features: torch.Tensor | None = None,
                  size: int = 224, mean=None, std=None, device: torch.device, dtype: torch.dtype | None,
                  batch_size: int = 32, channels_last: bool = False, stain=None) -> np.ndarray:
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
            ds = BreakHisDataset(frame, transform=build_transform("eval", size=size, mean=mean, std=std), stain=stain)
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


def score(frame: pd.DataFrame, probs: np.ndarray, *, threshold: float = 0.5) -> dict:
    from dala.metrics import classification_report

    return classification_report(frame["target"].to_numpy(), probs, class_names=CLASSES,
                                 patients=frame["patient"].to_numpy(), magnifications=frame["magnification"].to_numpy(),
                                 threshold=threshold)


def calibrate_on_validation(frame: pd.DataFrame, probs: np.ndarray, *, select_metric: str):
    """Temperature and locked threshold of the best model, fitted on its validation probabilities
    (:func:`dala.calibration.calibrate`; the threshold maximises the run's selection metric where
    that is a threshold metric, else GMean). A validation part that cannot calibrate (empty, one
    class, broken probabilities) gives an uncalibrated :class:`Calibration` saying why."""
    from dala.calibration import THRESHOLD_METRICS, Calibration, CalibrationError, calibrate

    metric = select_metric if select_metric in THRESHOLD_METRICS else "gmean"
    if frame is None or frame.empty:
        return Calibration.not_fitted("the run has no validation part to fit a temperature on")
    y = frame["target"].to_numpy()
    if len(np.unique(y)) < 2:
        return Calibration.not_fitted(f"the validation part holds only one class ({CLASSES[int(y[0])]}): "
                                      "a threshold cannot be chosen on it")
    try:
        return calibrate(probs, y, metric=metric,
                         fitted_on=f"val: {frame['patient'].nunique()} patients, {len(frame)} images")
    except CalibrationError as exc:
        return Calibration.not_fitted(str(exc))


def selection_value(rep: dict, metric: str) -> float:
    if metric == "val_loss":
        return -rep["loss"]
    from dala.metric_row import metric_value

    v = metric_value(rep, metric)  # f1_macro is report["macro"]["f1"]
    return -math.inf if v is None else float(v)
