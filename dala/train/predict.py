"""Inference from a checkpoint or a run folder: shared by ``python -m dala predict/evaluate``,
the notebooks and the app."""

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
