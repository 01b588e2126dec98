"""Inference from a checkpoint or a run folder: shared by ``python -m dala predict/evaluate``,
the notebooks and the app."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from dala.errors import CheckpointError


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder, or a run folder (its ``checkpoints/best``, else ``last``)."""
    p = Path(path).expanduser()
    if (p / "model.safetensors").exists() or ((p / "config.json").exists() and not (p / "checkpoints").exists()):
        return p
    for sub in ("best", "last"):
        if (p / "checkpoints" / sub / "model.safetensors").exists():
            return p / "checkpoints" / sub
    if not p.exists():
        raise CheckpointError(f"{str(p)!r} does not exist: pass a checkpoint folder (model.safetensors + config.json) or a run folder.")
    raise CheckpointError(f"{str(p)!r} holds no checkpoint yet (no model.safetensors, no checkpoints/best): "
                          "train first, or wait for the run's first epoch to finish.")


def load_for_inference(path: str | os.PathLike, *, device: str | torch.device = "cpu"):
    """(model in eval mode, checkpoint config)"""
    from dala.models.checkpoint import load_checkpoint

    model, cfg = load_checkpoint(resolve_checkpoint(path), map_location="cpu")
    model.to(device).eval()
    return model, cfg


@torch.no_grad()
def predict_images(model, cfg: dict, images, *, batch_size: int = 16, device: str | torch.device = "cpu") -> np.ndarray:
    """Class probabilities (N, C) for paths, bytes or PIL images, through the checkpoint's own
    input size and normalisation."""
    from dala.data.dataset import build_transform
    from dala.data.images import load_rgb

    tf = build_transform("eval", size=int(cfg["input_size"]), mean=cfg["mean"], std=cfg["std"])
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.stack([tf(load_rgb(im)) for im in images[start:start + batch_size]]).to(device)  # (B, 3, S, S)
        out.append(torch.softmax(model(x).float(), dim=1).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, int(cfg.get("num_classes", 2))))
