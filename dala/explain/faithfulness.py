"""Scoring explanations against ground truth, and the model-randomisation sanity check.

On the synthetic data every malignant image has a lesion mask, so "does the map point at the
lesion?" has an answer:

* :func:`pointing_game` -- is the map's maximum inside the lesion (Zhang et al. 2016; an optional
  ``tolerance`` radius in pixels counts a near miss as a hit, 15 px in the original);
* :func:`energy_inside` -- the fraction of the map's total mass inside the lesion (the
  "energy-based pointing game" of Score-CAM, Wang et al. 2020); chance level = the mask's area share;
* :func:`iou` -- overlap of a binary explanation region (the DT Grad-CAM region) with the lesion;
  :func:`iou_at_threshold` for a fixed threshold.

A map can look plausible and still not depend on what the model learnt. :func:`sanity_randomization`
is the model-randomisation test of Adebayo et al. 2018 ("Sanity Checks for Saliency Maps"):
re-initialise the top of a copy of the model (cascading from the logits down) and recompute the
map; a faithful method's map must change (low rank correlation / SSIM), an edge detector's won't.

Maps and masks may differ in size (a heatmap at 224 px, a mask at 700x460): the map is resized
onto the mask's frame.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Sequence

import numpy as np

from dala.explain.dt_gradcam import DEFAULT_RULE, dt_region

__all__ = ["pointing_game", "energy_inside", "iou", "iou_at_threshold", "score_explanation",
           "sanity_randomization", "cascading_randomization", "map_similarity", "ssim"]


def _as_mask(mask: np.ndarray) -> np.ndarray:
    """A lesion mask given as an array, thresholded by the rule of the one mask reader
    (:func:`dala.data.masks.read_lesion_mask`: 0..255 values above 127, 0/1 values above 0);
    bool masks pass through, float masks count above 0.5."""
    from dala.data.masks import THRESHOLD

    m = np.asarray(mask)
    if m.ndim == 3:  # an RGB/RGBA mask image: the brightest channel counts
        m = m[..., :3].max(axis=-1)
    if m.ndim != 2:
        raise ValueError(f"a mask must be HxW, got shape {m.shape}")
    if m.dtype == bool:
        return m
    if m.dtype.kind == "f":
        return m > 0.5
    return m > (0 if m.size == 0 or m.max() <= 1 else THRESHOLD)


def _on_frame(heatmap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h = np.nan_to_num(np.asarray(heatmap, dtype=np.float32))
    if h.ndim != 2:
        raise ValueError(f"a heatmap must be HxW, got shape {h.shape}")
    if h.shape != shape:
        import cv2

        h = cv2.resize(h, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return h


def _region_on_frame(region: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    r = np.asarray(region).astype(bool)
    if r.shape != shape:
        import cv2

        r = cv2.resize(r.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0
    return r


def pointing_game(heatmap: np.ndarray, mask: np.ndarray, *, tolerance: float = 0.0) -> bool:
    """True when the map's maximum lies in the mask (or within ``tolerance`` pixels of it).

    Ties (a flat top) count as a hit when any maximal pixel qualifies. An empty mask or an
    all-zero map is a miss.
    """
    m = _as_mask(mask)
    h = _on_frame(heatmap, m.shape)
    if not m.any() or float(h.max()) <= 0:
        return False
    peaks = np.argwhere(h >= h.max() - 1e-6)  # (n, 2) rows, cols
    if tolerance <= 0:
        return bool(m[peaks[:, 0], peaks[:, 1]].any())
    from scipy.ndimage import distance_transform_edt

    dist = distance_transform_edt(~m)  # distance of each pixel to the nearest mask pixel
    return bool((dist[peaks[:, 0], peaks[:, 1]] <= float(tolerance)).any())


def energy_inside(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share of the map's mass inside the mask, in [0, 1] (NaN for an all-zero map)."""
    m = _as_mask(mask)
    h = np.clip(_on_frame(heatmap, m.shape), 0, None)
    total = float(h.sum(dtype=np.float64))
    if total <= 0:
        return float("nan")
    return float(h[m].sum(dtype=np.float64) / total)


def iou(region: np.ndarray, mask: np.ndarray) -> float:
    """Intersection over union of two binary regions (NaN when both are empty)."""
    m = _as_mask(mask)
    r = _region_on_frame(region, m.shape)
    union = int(np.logical_or(r, m).sum())
    if union == 0:
        return float("nan")
    return float(np.logical_and(r, m).sum() / union)


def iou_at_threshold(heatmap: np.ndarray, mask: np.ndarray, *, threshold: float = 0.5) -> float:
    """IoU of the region ``heatmap >= threshold`` (and > 0) with the mask."""
    m = _as_mask(mask)
    h = _on_frame(heatmap, m.shape)
    return iou((h >= threshold) & (h > 0), m)


def score_explanation(expl, mask: np.ndarray, *, tolerance: float = 0.0, rule: str = DEFAULT_RULE,
                      **rule_params: Any) -> dict[str, float]:
    """``{"pointing", "energy_inside", "iou", "threshold", "mask_fraction"}`` of one explanation.

    Scored on the original frame (``expl.heatmap_original``; the mask must be at the original
    image size or is resized to it). ``iou`` uses the explanation's own DT region when it has one
    (``dt-gradcam``), else the DT region of its map under ``rule`` (Otsu by default), so all
    methods are compared by the same yardstick. An empty mask (benign image: no lesion) gives NaN.
    """
    m = _as_mask(mask)
    nan = float("nan")
    if not m.any():
        return {"pointing": nan, "energy_inside": nan, "iou": nan, "threshold": nan, "mask_fraction": 0.0}
    h = _on_frame(getattr(expl, "heatmap_original", expl), m.shape)
    region = getattr(expl, "dt_region_original", None)
    threshold = getattr(expl, "threshold", None)
    if region is None:
        region, threshold = dt_region(h, rule, **rule_params)
    return {
        "pointing": float(pointing_game(h, m, tolerance=tolerance)),
        "energy_inside": energy_inside(h, m),
        "iou": iou(region, m),
        "threshold": float(threshold),
        "mask_fraction": float(m.mean()),
    }


# ----------------------------------------------------------------------------- similarity
def ssim(a: np.ndarray, b: np.ndarray, *, sigma: float = 1.5) -> float:
    """Mean structural similarity of two maps in [0, 1] (Gaussian window, Wang et al. 2004)."""
    import cv2

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    c1, c2 = 0.01 ** 2, 0.03 ** 2  # data range 1

    def blur(x):
        return cv2.GaussianBlur(x, (0, 0), sigma)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def map_similarity(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Spearman rank correlation, Pearson correlation and SSIM of two maps (NaN if one is flat)."""
    from scipy.stats import spearmanr

    a = np.asarray(a, dtype=np.float64)
    b = _on_frame(b, a.shape).astype(np.float64)
    flat = a.std() < 1e-12 or b.std() < 1e-12
    nan = float("nan")
    spearman = nan if flat else float(spearmanr(a.ravel(), b.ravel()).statistic)
    pearson = nan if flat else float(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    return {"spearman": spearman, "pearson": pearson, "ssim": ssim(a, b)}


# ----------------------------------------------------------------------------- sanity check
def _param_leaves(model) -> list[tuple[str, Any]]:
    """Modules that own parameters directly, in registration (≈ forward) order."""
    return [(n, m) for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]


def _reinit(module, generator) -> None:
    import torch

    if hasattr(module, "reset_parameters"):
        module.reset_parameters()
    if hasattr(module, "running_mean") and getattr(module, "running_mean") is not None:
        module.reset_running_stats()
    with torch.no_grad():  # a random draw whatever reset_parameters does (BN resets to 1/0)
        for name, p in module.named_parameters(recurse=False):
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=generator) * math.sqrt(2.0 / fan_in))
            elif name == "weight":
                p.copy_(1.0 + 0.5 * torch.randn(p.shape, generator=generator))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))


def _layers_to_randomise(model, target_layers, layers) -> list[str]:
    names = [n for n, _ in _param_leaves(model)]
    if layers == "all":
        return names
    if isinstance(layers, int):
        return names[-max(1, layers):]
    if isinstance(layers, str) and layers in ("top", "head"):
        order = {n: i for i, (n, _) in enumerate(model.named_modules())}
        targets = [n for n, m in model.named_modules() if any(m is t for t in target_layers)]
        first = min((order[t] for t in targets), default=len(order))

        def inside(n: str) -> bool:
            return any(n == t or n.startswith(t + ".") for t in targets if t)

        if layers == "top":  # the target layer and everything registered after it (the head)
            chosen = [n for n in names if order[n] >= first or inside(n)]
        else:  # only what comes after the target layer
            chosen = [n for n in names if order[n] > first and not inside(n)]
        return chosen or names[-1:]
    chosen = [layers] if isinstance(layers, str) else list(layers)
    known = dict(model.named_modules())
    missing = [n for n in chosen if n not in known]
    if missing:
        raise ValueError(f"no such module(s) in the model: {', '.join(missing)}; or use 'top', 'head', 'all' or an int")
    return chosen


def sanity_randomization(model, image, *, method: str = "gradcam", layers: str | int | Sequence[str] = "top",
                         target=None, seed: int = 0, **explain_kwargs) -> dict[str, Any]:
    """Adebayo et al. 2018 model-randomisation check on one image.

    A deep copy of ``model`` has its top re-initialised with random weights and the map for the
    *same* class is recomputed. ``layers``: ``"top"`` (default: every parameterised module from
    the CAM target layer to the logits), ``"head"`` (only what comes after the target layer),
    an int ``k`` (the last ``k`` parameterised modules: a step of the cascade), ``"all"``, or a
    list of module names. Returns ``spearman``, ``pearson``, ``ssim`` between the two maps (high =
    the map ignores the weights: a failed check), ``passed`` (Spearman and SSIM each below 0.9 or
    undefined because a map went flat), ``layers`` (names re-initialised), and the two maps ``map`` and ``map_randomised``.
    Extra keyword arguments go to :func:`dala.explain.explain` (spec, target_layers, input_size, ...).
    """
    import torch

    from dala.explain.api import explain, resolve_setup

    setup_kw = {k: explain_kwargs[k] for k in ("spec", "target_layers", "reshape_transform") if k in explain_kwargs}
    setup = resolve_setup(model, **setup_kw)
    first = explain(model, [image], method=method, target=target, **explain_kwargs)[0]

    clone = copy.deepcopy(model)
    module_names = {id(m): n for n, m in model.named_modules()}
    if any(id(t) not in module_names for t in setup.target_layers):
        raise ValueError("target_layers must be modules of the model being checked")
    clone_targets = [clone.get_submodule(module_names[id(t)]) for t in setup.target_layers]
    names = _layers_to_randomise(clone, clone_targets, layers)
    gen = torch.Generator().manual_seed(int(seed))
    for n in names:
        _reinit(clone.get_submodule(n), gen)
    kw = dict(explain_kwargs)
    kw["target_layers"] = clone_targets
    if "reshape_transform" not in kw:
        kw["reshape_transform"] = setup.reshape_transform
    second = explain(clone, [image], method=method, target=first.target, **kw)[0]
    del clone
    sim = map_similarity(first.heatmap, second.heatmap)
    passed = all((not np.isfinite(sim[k])) or sim[k] < 0.9 for k in ("spearman", "ssim"))
    return {**sim, "passed": bool(passed), "layers": names, "target": first.target, "method": first.method,
            "map": first.heatmap, "map_randomised": second.heatmap}


def cascading_randomization(model, image, *, steps: Sequence[int] | None = None, **kwargs) -> list[dict[str, Any]]:
    """The cascade: re-initialise the last ``k`` parameterised modules for each ``k`` in ``steps``
    (default: 1, 2, 4, ... up to all), from the logits down; one :func:`sanity_randomization`
    result per step."""
    n = len(_param_leaves(model))
    if steps is None:
        steps, k = [], 1
        while k < n:
            steps.append(k)
            k *= 2
        steps.append(n)
    return [{"k": int(k), **sanity_randomization(model, image, layers=int(k), **kwargs)} for k in steps]
