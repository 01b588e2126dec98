"""Faithfulness by perturbation: does removing what the map points at change the prediction?

Beside the lesion-mask scores (:mod:`dala.explain.faithfulness`: does the map point at the
lesion?), these ask the model itself (does the map point at what the *model* uses?):

* **deletion** (Petsiuk et al. 2018, RISE): remove the input's pixels most relevant first (set to
  0 in normalised space: the dataset's mean colour), in ``steps`` equal steps, and follow the
  softmax probability of the explained class; ``deletion_auc`` is the area under that curve over
  the removed fraction 0..1. **Lower is better** (the probability falls fast).
* **insertion**: start from a blurred copy of the input and put the most relevant pixels back
  first; ``insertion_auc``, **higher is better**.
* **ROAD** (Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for Attribution
  Methods"): removed pixels are filled by noisy linear imputation from their neighbours, so the
  model cannot read the *shape* of the removed region (the leak deletion has);
  ``road`` = (LeRF - MoRF) / 2 of the probability change, averaged over ``road_percentiles``:
  pytorch-grad-cam's ``ROADCombined``. **Higher is better** (removing the most relevant pixels
  hurts more than removing the least relevant ones).

Ties in a map (a flat background, the zeroed part of a DT Grad-CAM map) are broken at random with
a fixed seed, so a flat map scores like a random one.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Sequence

import numpy as np

from dala.explain.base import ExplainError

DEFAULT_STEPS = 16
# ROAD's cost grows with the imputed pixels (a sparse solve per percentile); four percentiles
# keep one 224 px image to a few seconds on a CPU
DEFAULT_ROAD_PERCENTILES = (20, 40, 60, 80)
RANDOM_METHOD = "random"  # the baseline map: uniform noise, what a useless explanation scores


def relevance_order(heatmap: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """Pixel indices of ``heatmap`` (flattened), most relevant first; ties in random order."""
    flat = np.nan_to_num(np.asarray(heatmap, dtype=np.float64)).ravel()
    tie_break = np.random.default_rng(seed).permutation(flat.size)
    return np.lexsort((tie_break, -flat))  # primary key: -value; secondary: a random permutation


def random_map(shape: tuple[int, int], *, cells: int = 8, seed: int = 0) -> np.ndarray:
    """The baseline every method must beat: uniform noise on a ``cells x cells`` grid, upsampled
    (bilinear) to ``shape`` = (H, W), so it removes regions as smooth as a CAM's, not scattered
    pixels (scattered deletions push any image off the data and would make every map look good)."""
    import cv2

    h, w = int(shape[0]), int(shape[1])
    grid = np.random.default_rng(seed).random((int(cells), int(cells))).astype(np.float32)
    return np.clip(cv2.resize(grid, (w, h), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)


def _blurred(x):
    """The insertion baseline: a Gaussian blur of the input (RISE's 11 px, sigma 5 at 224 px)."""
    import math

    from torchvision.transforms.functional import gaussian_blur

    size = int(x.shape[-1])
    sigma = max(1.0, 5.0 * size / 224.0)
    kernel = 2 * math.ceil(2 * sigma) + 1
    return gaussian_blur(x, [kernel, kernel], [sigma, sigma])


def _target_probs(model, batch, target: int, chunk: int) -> np.ndarray:
    import torch

    out = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, batch.shape[0], chunk):
            logits = model(batch[start:start + chunk].to(device)).float()
            if not torch.isfinite(logits).all():
                raise ExplainError("the model gave NaN or infinite scores on a perturbed input: faithfulness "
                                   "cannot be measured (its weights are damaged or its training diverged).")
            out.append(torch.softmax(logits, dim=1)[:, target].cpu())
    return torch.cat(out).numpy().astype(np.float64)


def perturbation_curves(model, model_input, heatmap: np.ndarray, target: int, *, steps: int = DEFAULT_STEPS,
                        seed: int = 0, chunk: int = 32) -> dict[str, Any]:
    """Deletion and insertion curves of one map on one model input ``(3, S, S)`` (normalised).

    Returns ``fractions`` (``steps + 1`` values 0..1), ``deletion_curve``, ``insertion_curve``
    (probability of ``target`` at each fraction) and their ``deletion_auc``/``insertion_auc``.
    """
    import torch

    if int(steps) < 1:
        raise ExplainError(f"steps must be at least 1, got {steps}")
    x = torch.as_tensor(model_input, dtype=torch.float32)
    if x.dim() == 4 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 3:
        raise ExplainError(f"model_input must be (3, H, W), got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    hm = np.asarray(heatmap, dtype=np.float32)
    if hm.shape != (h, w):
        import cv2

        hm = cv2.resize(hm, (w, h), interpolation=cv2.INTER_LINEAR)
    n = h * w
    rank = np.empty(n, dtype=np.int64)
    rank[relevance_order(hm, seed=seed)] = np.arange(n)
    fractions = np.linspace(0.0, 1.0, int(steps) + 1)
    counts = np.round(fractions * n).astype(np.int64)
    removed = torch.from_numpy(rank[None, :] < counts[:, None]).reshape(-1, 1, h, w)  # (K, 1, H, W)
    blurred = _blurred(x[None])[0]
    deletion = torch.where(removed, blurred, x)                   # (K, 3, H, W): most relevant gone first
    insertion = torch.where(removed, x, blurred)                  # (K, 3, H, W): most relevant back first
    probs = _target_probs(model, torch.cat([deletion, insertion]), int(target), chunk)
    k = len(fractions)
    del_curve, ins_curve = probs[:k], probs[k:]
    return {"fractions": fractions, "deletion_curve": del_curve, "insertion_curve": ins_curve,
            "deletion_auc": float(np.trapezoid(del_curve, fractions)),
            "insertion_auc": float(np.trapezoid(ins_curve, fractions))}


def road_score(model, model_input, heatmap: np.ndarray, target: int, *,
               percentiles: Sequence[int] = DEFAULT_ROAD_PERCENTILES, seed: int = 0) -> float:
    """pytorch-grad-cam's ``ROADCombined`` on one map: (LeRF - MoRF) / 2 of the target's softmax
    probability change, averaged over ``percentiles`` (higher is better)."""
    import torch
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    x = torch.as_tensor(model_input, dtype=torch.float32)
    if x.dim() == 3:
        x = x[None]
    device = next(model.parameters()).device
    hm = np.asarray(heatmap, dtype=np.float32)[None]  # (1, H, W)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():  # seeded noise; caller's RNG untouched
        torch.manual_seed(int(seed))
        warnings.simplefilter("ignore", DeprecationWarning)  # numpy 2 about the library's np.float32(list)
        score = ROADCombined(percentiles=list(percentiles))(x.to(device), hm, [ClassifierOutputSoftmaxTarget(int(target))],
                                                            model)
    value = float(np.asarray(score).ravel()[0])
    if not np.isfinite(value):
        raise ExplainError("ROAD gave a non-finite score: the model's outputs are not finite on imputed inputs.")
    return value


def _with_eval_mode(model):
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    return modes


def faithfulness_scores(model, explanation_or_image, *, method: str = "gradcam", target=None,
                        heatmap: np.ndarray | None = None, steps: int = DEFAULT_STEPS,
                        road: bool = True, road_percentiles: Sequence[int] = DEFAULT_ROAD_PERCENTILES,
                        seed: int = 0, **explain_kwargs) -> dict[str, Any]:
    """Deletion AUC, insertion AUC and ROAD of one explanation (see the module docstring).

    ``explanation_or_image``: an :class:`~dala.explain.api.Explanation` (its ``model_input``,
    ``heatmap`` and ``target`` are used: no new explanation is computed), or any image
    :func:`dala.explain.explain` takes (explained first with ``method``, ``target`` and
    ``explain_kwargs``). ``heatmap`` replaces the map scored (e.g. :func:`random_map`, the baseline).
    ``road=False`` skips ROAD (the slow part; ``road`` is then NaN).

    Returns ``deletion_auc`` (lower is better), ``insertion_auc`` (higher), ``road`` (higher),
    the curves (``fractions``, ``deletion_curve``, ``insertion_curve``), ``target``, ``method``
    and ``seconds``.
    """
    import torch

    from dala.explain.api import Explanation, explain

    start = time.perf_counter()
    expl = explanation_or_image
    if not isinstance(expl, Explanation):
        expl = explain(model, [expl], method=method, target=target, **explain_kwargs)[0]
    if expl.model_input is None:
        raise ExplainError("this explanation carries no model_input; explain the image again with dala.explain.explain")
    hm = expl.heatmap if heatmap is None else np.asarray(heatmap, dtype=np.float32)
    modes = _with_eval_mode(model)
    try:
        with torch.inference_mode(False):
            curves = perturbation_curves(model, expl.model_input, hm, expl.target, steps=steps, seed=seed)
            road_value = (road_score(model, expl.model_input, hm, expl.target, percentiles=road_percentiles, seed=seed)
                          if road else float("nan"))
    finally:
        for m, training in modes:
            m.training = training
    return {"deletion_auc": curves["deletion_auc"], "insertion_auc": curves["insertion_auc"], "road": road_value,
            "fractions": curves["fractions"], "deletion_curve": curves["deletion_curve"],
            "insertion_curve": curves["insertion_curve"], "target": int(expl.target),
            "method": expl.method if heatmap is None else "given map",
            "seconds": time.perf_counter() - start}


def mean_interval(values: Sequence[float], *, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean and a percentile-bootstrap ``level`` interval of ``values`` (NaNs dropped)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"n": 0, "mean": float("nan"), "low": float("nan"), "high": float("nan")}
    if v.size == 1:
        return {"n": 1, "mean": float(v[0]), "low": float("nan"), "high": float("nan")}
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, (n_boot, v.size))].mean(axis=1)
    a = (1.0 - float(level)) / 2.0
    return {"n": int(v.size), "mean": float(v.mean()), "low": float(np.quantile(means, a)),
            "high": float(np.quantile(means, 1.0 - a))}
