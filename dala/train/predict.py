"""Inference from a checkpoint or a run folder: shared by ``python -m dala predict/evaluate``,
the notebooks and the app.

A checkpoint's inputs go through what it was trained with: its input size and normalisation and,
when it was trained stain-normalised, its stored stain fit (``config["stain_norm"]``, applied as
each image is decoded). :func:`predict_calibrated` then applies its temperature and locked
threshold (``config["calibration"]``); an older checkpoint has none and says *uncalibrated*.
"""

from __future__ import annotations

import os

import numpy as np
import torch


def load_for_inference(path: str | os.PathLike, *, device: str | torch.device = "cpu"):
    """(model in eval mode, checkpoint config)"""
    from dala.models.checkpoint import load_checkpoint, resolve_checkpoint_folder

    model, cfg = load_checkpoint(resolve_checkpoint_folder(path), map_location="cpu")
    model.to(device).eval()
    return model, cfg


def stain_step_of(cfg: dict):
    """The checkpoint's stain step (from its stored fit; the reference file is not needed; at the
    model's input size, as in training), or None."""
    from dala.data.stain import StainNormalizer, StainStep

    normalizer = StainNormalizer.from_config(cfg.get("stain_norm"))
    return StainStep(normalizer, size=int(cfg["input_size"])) if normalizer is not None else None


def model_inputs(cfg: dict, images) -> torch.Tensor:
    """(N, 3, S, S): what the checkpoint's model is given for ``images`` (paths, bytes, PIL)."""
    from dala.data.dataset import build_transform
    from dala.data.images import load_for_model

    tf = build_transform("eval", size=int(cfg["input_size"]), mean=cfg["mean"], std=cfg["std"])
    stain = stain_step_of(cfg)
    loaded = [load_for_model(im) for im in images]
    return torch.stack([tf(stain(im) if stain is not None else im) for im in loaded])  # (N, 3, S, S)


@torch.no_grad()
def predict_images(model, cfg: dict, images, *, batch_size: int = 16, device: str | torch.device = "cpu") -> np.ndarray:
    """Class probabilities (N, C) as the network gives them (no temperature) for paths, bytes or
    PIL images, through the checkpoint's own input size, normalisation and stain fit."""
    out = []
    for start in range(0, len(images), batch_size):
        x = model_inputs(cfg, images[start:start + batch_size]).to(device)  # (B, 3, S, S)
        out.append(torch.softmax(model(x).float(), dim=1).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, int(cfg.get("num_classes", 2))))


def calibrated_labels(probs: np.ndarray, cfg: dict):
    """``(temperature-scaled probs (N, C), predicted class (N,), Calibration)``: two classes are
    decided by the locked threshold on the malignant (last) column, more by the arg-max."""
    from dala.calibration import Calibration

    cal = Calibration.from_config(cfg)
    if len(probs) == 0:
        return probs, np.zeros(0, dtype=int), cal
    scaled = cal.apply(probs)
    pred = (scaled[:, 1] >= cal.threshold).astype(int) if scaled.shape[1] == 2 else scaled.argmax(1)
    return scaled, pred, cal


def predict_calibrated(model, cfg: dict, images, **kwargs):
    """:func:`predict_images`, then :func:`calibrated_labels`."""
    return calibrated_labels(predict_images(model, cfg, images, **kwargs), cfg)
