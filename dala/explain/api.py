"""``explain(model, images)``: preprocess, explain, map back onto the original image, overlay.

Images of any size (BreakHis 700x460, an arbitrary upload) go through the evaluation transform
(:func:`dala.data.dataset.build_transform` ``("eval")``: squashed to the model's square input size,
so nothing at the edge of the field is cropped away, and normalised with the model's mean/std),
exactly the input prediction and evaluation give the model; they are explained in small batches,
and each map is resized back onto the original ``W x H`` frame for the overlay. Where the input size,
mean/std come from, first found wins: the keyword arguments, ``model.dala_config`` (set by the
registry and by checkpoints: a model trained at 128 px says so there), ``spec`` (a registry
``ModelSpec`` or its name; found from ``dala_config["name"]`` when not given), then ImageNet
defaults at 224 px. CAM target layers and ``reshape_transform``: the arguments, then the spec,
then (no spec) the model's last ``Conv2d``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from dala.data.images import load_rgb
from dala.errors import CheckpointError, ImageInputError
from dala.explain.base import ExplainError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_SIZE = 224


@dataclass
class Explanation:
    """One image's explanation. Maps are float32 in ``[0, 1]``; the overlay is uint8 RGB."""

    heatmap: np.ndarray            # (H_in, W_in) at the model's input resolution
    heatmap_original: np.ndarray   # (H, W) resized onto the original image frame
    overlay: np.ndarray            # (H, W, 3) uint8: colormap blended at ``alpha`` over the original
    probs: list[float]             # softmax over the classes, temperature-scaled when the model is calibrated
    pred: int                      # predicted class: the locked threshold when calibrated, else the arg-max
    target: int                    # the class explained (``pred`` unless one was chosen)
    method: str
    class_names: list[str] | None = None
    # the DT Grad-CAM region (``dt-gradcam`` only; a lesion *mask* is ground truth, this is not)
    dt_region: np.ndarray | None = None           # (H_in, W_in) bool
    dt_region_original: np.ndarray | None = None  # (H, W) bool: the region on the original frame
    threshold: float | None = None                # DT Grad-CAM threshold on the normalised map
    # what the model was given (the eval transform's output): perturbation scores start from it
    model_input: np.ndarray | None = None         # (3, H_in, W_in) float32, normalised
    params: dict[str, Any] = field(default_factory=dict)  # method parameters used
    calibration: str = "uncalibrated"              # dala.calibration.Calibration.label of the probabilities shown
    raw_probs: list[float] | None = None           # the softmax before the temperature
    stain_note: str | None = None                  # stain-normalised model: why this image was left as it is

    @property
    def pred_label(self) -> str | None:
        return _label(self.class_names, self.pred)

    @property
    def target_label(self) -> str | None:
        return _label(self.class_names, self.target)

    @property
    def size(self) -> tuple[int, int]:
        """Original ``(W, H)``."""
        return int(self.heatmap_original.shape[1]), int(self.heatmap_original.shape[0])


def _label(names, i):
    return names[i] if names and 0 <= i < len(names) else None


# ----------------------------------------------------------------------------- images
def to_rgb_array(image: Any, *, name: str | None = None) -> np.ndarray:
    """Any accepted image (PIL, numpy HxW / HxWx3 / HxWx4, path, bytes) as HxWx3 uint8 RGB."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        return _array_to_rgb(image, name or "the array")
    if not isinstance(image, (str, os.PathLike, bytes, bytearray, Image.Image)):
        raise ImageInputError(f"cannot explain a {type(image).__name__}: pass a PIL image, an HxWx3 uint8 "
                              "array, a path or the bytes of a PNG/JPEG/TIFF file.")
    return np.asarray(load_rgb(image, name=name), dtype=np.uint8).copy()  # the one loader uploads go through


def _array_to_rgb(a: np.ndarray, label: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or a.shape[0] < 1 or a.shape[1] < 1:
        raise ImageInputError(f"{label} has shape {a.shape}: expected HxWx3 RGB (or HxW grey, HxWx4 RGBA).")
    a = a[..., :3]
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ImageInputError(f"{label} contains NaN or infinite values.")
    if a.dtype.kind == "f" and a.min() >= 0 and a.max() <= 1.0:
        a = a * 255.0                                   # float image in [0, 1]
    elif a.max() > 255 or a.min() < 0:
        lo, hi = a.min(), a.max()                       # 16-bit etc.: rescale by the actual range
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
    return np.clip(np.round(a), 0, 255).astype(np.uint8)


def eval_transform(*, size: int, mean: Sequence[float], std: Sequence[float]):
    """The evaluation transform prediction and evaluation use (one owner: dala.data.dataset)."""
    from dala.data.dataset import build_transform

    return build_transform("eval", size=int(size), mean=tuple(mean), std=tuple(std))


def preprocess(rgb: np.ndarray, *, size: int, mean: Sequence[float], std: Sequence[float], transform=None):
    """HxWx3 uint8 -> (3, size, size) float tensor through the evaluation transform."""
    from PIL import Image

    tf = transform if transform is not None else eval_transform(size=size, mean=mean, std=std)
    return tf(Image.fromarray(rgb))  # (3, S, S), as predict_images feeds the model


def resize_map(m: np.ndarray, width: int, height: int) -> np.ndarray:
    """A [0, 1] map resized (bilinear) to ``width x height``, kept in [0, 1]."""
    import cv2

    if m.shape == (height, width):
        return m.astype(np.float32, copy=True)
    return np.clip(cv2.resize(m.astype(np.float32), (int(width), int(height)), interpolation=cv2.INTER_LINEAR), 0, 1)


def resize_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    import cv2

    if mask.shape == (height, width):
        return mask.astype(bool, copy=True)
    return cv2.resize(mask.astype(np.uint8), (int(width), int(height)), interpolation=cv2.INTER_NEAREST) > 0


def make_overlay(rgb: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.45) -> np.ndarray:
    """Jet colormap of ``heatmap`` (same HxW as ``rgb``) blended over the image at ``alpha``."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    if not 0.0 <= float(alpha) <= 1.0:
        raise ExplainError(f"alpha must be in [0, 1], got {alpha}")
    return show_cam_on_image(rgb.astype(np.float32) / 255.0, heatmap, use_rgb=True, image_weight=1.0 - float(alpha))


# ----------------------------------------------------------------------------- model setup
@dataclass
class ExplainSetup:
    """Everything about a model that explaining it needs (resolved once, reused per batch)."""

    target_layers: list
    reshape_transform: Callable | None
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str] | None
    spec: Any = None
    calibration: Any = None  # dala.calibration.Calibration (identity: uncalibrated)
    stain: Any = None        # dala.data.stain.StainNormalizer from the checkpoint's fit, or None


def _registry_spec(name: str):
    try:
        from dala.models.registry import get_spec
    except ImportError:
        return None
    try:
        return get_spec(name)
    except Exception:  # unknown name: fall back to what the model and arguments say
        return None


def resolve_setup(model, *, spec=None, target_layers=None, reshape_transform=None, input_size=None,
                  mean=None, std=None, class_names=None) -> ExplainSetup:
    cfg = getattr(model, "dala_config", None) or {}
    if isinstance(spec, str):
        name = spec
        spec = _registry_spec(spec)
        if spec is None:
            raise ExplainError(f"no model {name!r} in the registry (dala.models.list_models()).")
    if spec is None and cfg.get("name"):
        spec = _registry_spec(str(cfg["name"]))
    if target_layers is None and spec is not None:
        target_layers = spec.target_layers(model)
    if target_layers is None:
        target_layers = [_last_conv(model)]
    if isinstance(target_layers, (list, tuple)) is False:
        target_layers = [target_layers]
    if reshape_transform is None and spec is not None:
        reshape_transform = getattr(spec, "reshape_transform", None)
    input_size = int(_first(input_size, cfg.get("input_size"), getattr(spec, "input_size", None), DEFAULT_SIZE))
    mean = tuple(float(v) for v in _first(mean, cfg.get("mean"), getattr(spec, "mean", None), IMAGENET_MEAN))
    std = tuple(float(v) for v in _first(std, cfg.get("std"), getattr(spec, "std", None), IMAGENET_STD))
    if class_names is None:
        class_names = cfg.get("class_names")
    from dala.calibration import Calibration
    from dala.data.stain import StainNormalizer

    return ExplainSetup(list(target_layers), reshape_transform, input_size, mean, std,
                        list(class_names) if class_names else None, spec,
                        calibration=Calibration.from_config(cfg), stain=StainNormalizer.from_config(cfg.get("stain_norm")))


def _first(*values):
    return next(v for v in values if v is not None)


def _last_conv(model):
    from torch import nn

    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ExplainError("cannot tell which layer to explain: pass target_layers=[...] or spec=.")
    return convs[-1]


def _resolve_target(target, class_names, num_classes: int) -> int | None:
    if target is None:
        return None
    if isinstance(target, str) and not target.strip().lstrip("-").isdigit():
        names = [str(n).lower() for n in (class_names or [])]
        if target.strip().lower() not in names:
            raise ExplainError(f"unknown class {target!r}: the model's classes are "
                               f"{', '.join(class_names) if class_names else f'0..{num_classes - 1}'}.")
        return names.index(target.strip().lower())
    t = int(target)
    if not 0 <= t < num_classes:
        raise ExplainError(f"target class {t} is out of range: the model has {num_classes} classes (0..{num_classes - 1}).")
    return t


def _num_classes(model, class_names) -> int | None:
    cfg = getattr(model, "dala_config", None) or {}
    n = cfg.get("num_classes")
    if n:
        return int(n)
    return len(class_names) if class_names else None


# ----------------------------------------------------------------------------- the API
def explain(model, images, *, method: str = "gradcam", target=None, spec=None, target_layers=None,
            reshape_transform=None, input_size: int | None = None, mean=None, std=None, alpha: float = 0.45,
            class_names: Sequence[str] | None = None, max_batch: int = 8, **method_params) -> list:
    """Explain ``images`` with ``method`` and return one :class:`Explanation` per image.

    ``images``: one image or a list of PIL images, HxWx3 uint8 arrays, paths or bytes (any size).
    ``target``: ``None`` explains each image's predicted class; an int or a class name (from
    ``class_names`` or ``model.dala_config["class_names"]``) explains that class for every image;
    a list gives one per image. ``method_params`` go to the method (e.g. ``rule="mean_std", k=1.0``
    for ``dt-gradcam``, ``batch_size=8`` for ``scorecam``). ``max_batch`` images go through the
    model at once. The model is explained in eval mode; its modes and gradients are restored.
    """
    from dala.explain.cams import get_method

    cls = get_method(method)
    single = not isinstance(images, (list, tuple))
    items = [images] if single else list(images)
    if not items:
        return []
    setup = resolve_setup(model, spec=spec, target_layers=target_layers, reshape_transform=reshape_transform,
                          input_size=input_size, mean=mean, std=std, class_names=class_names)
    explainer = cls(model, setup.target_layers, setup.reshape_transform, **method_params)
    n_classes = _num_classes(model, setup.class_names)
    if isinstance(target, (list, tuple)):
        if len(target) != len(items):
            raise ExplainError(f"got {len(target)} targets for {len(items)} images")
        targets = list(target)
    else:
        targets = [target] * len(items)
    if n_classes is not None:
        targets = [_resolve_target(t, setup.class_names, n_classes) for t in targets]
    elif any(isinstance(t, str) for t in targets):
        targets = [_resolve_target(t, setup.class_names, len(setup.class_names or []) or 10**9) for t in targets]
    if not 0.0 <= float(alpha) <= 1.0:
        raise ExplainError(f"alpha must be in [0, 1], got {alpha}")
    out: list[Explanation] = []
    step = max(1, int(max_batch))
    for start in range(0, len(items), step):
        chunk = items[start:start + step]
        rgbs = [to_rgb_array(im) for im in chunk]
        out.extend(_explain_arrays(explainer, rgbs, targets[start:start + step], setup, alpha, cls.name))
    return out


def _explain_arrays(explainer, rgbs, targets, setup: ExplainSetup, alpha: float, method: str) -> list:
    import torch

    tf = eval_transform(size=setup.input_size, mean=setup.mean, std=setup.std)
    model_rgbs, stain_notes = list(rgbs), [None] * len(rgbs)
    if setup.stain is not None:  # the checkpoint was trained stain-normalised: its input is too (the overlay is not)
        from dala.data.stain import StainStep

        step = StainStep(setup.stain, size=setup.input_size)  # at the input size, as training and prediction
        done = [step.apply(a) for a in rgbs]
        model_rgbs, stain_notes = [np.asarray(im) for im, _ in done], [note for _, note in done]
    x = torch.stack([preprocess(a, size=setup.input_size, mean=setup.mean, std=setup.std, transform=tf)
                     for a in model_rgbs])  # (B, 3, S, S)
    cal = setup.calibration
    cam_targets = None if all(t is None for t in targets) else targets
    if cam_targets is None and cal is not None and cal.fitted:
        cam_targets = list(targets)  # the label comes from the locked threshold: explain that class
    if cam_targets is not None and any(t is None for t in cam_targets):
        # mixed: explain the predicted class where no target was given (a cheap forward first)
        with torch.no_grad():
            was = explainer.model.training
            explainer.model.eval()
            try:
                first = explainer.model(x.to(next(explainer.model.parameters()).device)).float()
            finally:
                explainer.model.train(was)
            pred = _decide(torch.softmax(first, dim=1).cpu().numpy().astype(np.float64), cal)[1].tolist()
        cam_targets = [p if t is None else t for t, p in zip(cam_targets, pred)]
    try:
        res = explainer.run(x, cam_targets)
    except IndexError as exc:  # ClassifierOutputTarget indexing past the logits
        raise ExplainError(f"target class out of range for this model ({exc}).") from exc
    n_classes = res.logits.shape[1]
    bad = [i for i in range(len(rgbs)) if not np.isfinite(res.logits[i]).all()]
    if bad:
        raise ExplainError(
            f"the model gave NaN or infinite scores for {len(bad)} of {len(rgbs)} image(s): there is no prediction "
            "to explain (its weights are damaged or its training diverged); use another checkpoint or retrain.")
    for t in res.targets:
        if not 0 <= t < n_classes and t != -1:
            raise ExplainError(f"target class {t} is out of range: the model has {n_classes} classes.")
    logits = res.logits.astype(np.float64)
    raw = np.exp(logits - logits.max(axis=1, keepdims=True))
    raw /= raw.sum(axis=1, keepdims=True)
    probs, preds = _decide(raw, cal)
    names = setup.class_names if setup.class_names and len(setup.class_names) == n_classes else None
    out = []
    for i, rgb in enumerate(rgbs):
        h, w = rgb.shape[:2]
        hm_orig = resize_map(res.maps[i], w, h)
        expl = Explanation(
            heatmap=res.maps[i].astype(np.float32), heatmap_original=hm_orig,
            overlay=make_overlay(rgb, hm_orig, alpha=alpha),
            probs=[float(p) for p in probs[i]], pred=int(preds[i]), target=int(res.targets[i]),
            method=method, class_names=list(names) if names else None,
            params={k: v for k, v in explainer.options.items()},
            model_input=x[i].numpy().astype(np.float32, copy=True),
            calibration=cal.label if cal is not None else "uncalibrated",
            raw_probs=[float(p) for p in raw[i]], stain_note=stain_notes[i],
        )
        if res.regions is not None:
            expl.dt_region = res.regions[i]
            expl.dt_region_original = resize_mask(res.regions[i], w, h)
            expl.threshold = float(res.thresholds[i])
        out.append(expl)
    return out


def _decide(raw: np.ndarray, cal) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities shown (N, C), predicted class (N,)): the temperature, then the locked
    threshold on the malignant column for two classes; uncalibrated: the softmax and its arg-max."""
    if cal is None or not cal.fitted or not np.isfinite(raw).all():  # NaN scores are refused by the caller
        return raw, raw.argmax(1)
    scaled = cal.apply(raw)
    pred = (scaled[:, 1] >= cal.threshold).astype(int) if scaled.shape[1] == 2 else scaled.argmax(1)
    return scaled, pred


# ----------------------------------------------------------------------------- checkpoints
def load_for_explain(path: str | os.PathLike, *, map_location: str = "cpu"):
    """``(model, setup kwargs for explain)`` from a checkpoint or run folder."""
    from dala.models.checkpoint import load_checkpoint, resolve_checkpoint_folder

    model, config = load_checkpoint(resolve_checkpoint_folder(path), map_location=map_location)
    config = dict(config or {})
    kwargs: dict[str, Any] = {}
    name = config.get("name") or config.get("model") or config.get("registry_name")
    if name:
        spec = _registry_spec(str(name))
        if spec is not None:
            kwargs["spec"] = spec
    for key in ("input_size", "mean", "std", "class_names"):
        if config.get(key):
            kwargs[key] = config[key]
    return model, kwargs


def explain_checkpoint(folder_or_model, images, **kwargs) -> list:
    """:func:`explain` with the model (and its input size, mean/std, class names, CAM target)
    loaded from a checkpoint folder or a training run folder; a model passes straight through."""
    from torch import nn

    if isinstance(folder_or_model, nn.Module):
        return explain(folder_or_model, images, **kwargs)
    model, loaded = load_for_explain(folder_or_model)
    return explain(model, images, **{**loaded, **kwargs})
