"""Explanations: the Grad-CAM family, DT Grad-CAM (our reading), and scores against lesion masks.

``explain(model, images, method="gradcam")`` -> list of :class:`Explanation`; ``METHODS`` /
``list_methods()`` name the methods; ``dala.explain.faithfulness`` scores maps against ground
truth masks and runs the model-randomisation sanity check; ``faithfulness_scores`` (deletion and
insertion AUC, ROAD: ``dala.explain.perturbation``) asks the model whether the map is faithful. Names are imported lazily so that
``import dala.explain.cli`` (for ``python -m dala --help``) does not import torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "explain": "dala.explain.api",
    "explain_checkpoint": "dala.explain.api",
    "load_for_explain": "dala.explain.api",
    "Explanation": "dala.explain.api",
    "make_overlay": "dala.explain.api",
    "Explainer": "dala.explain.base",
    "ExplainError": "dala.explain.base",
    "CamResult": "dala.explain.base",
    "METHODS": "dala.explain.cams",
    "DEFAULT_METHOD": "dala.explain.cams",
    "list_methods": "dala.explain.cams",
    "get_method": "dala.explain.cams",
    "describe_methods": "dala.explain.cams",
    "DTGradCAMExplainer": "dala.explain.dt_gradcam",
    "dynamic_threshold": "dala.explain.dt_gradcam",
    "pointing_game": "dala.explain.faithfulness",
    "energy_inside": "dala.explain.faithfulness",
    "iou": "dala.explain.faithfulness",
    "iou_at_threshold": "dala.explain.faithfulness",
    "score_explanation": "dala.explain.faithfulness",
    "sanity_randomization": "dala.explain.faithfulness",
    "faithfulness_scores": "dala.explain.perturbation",
    "perturbation_curves": "dala.explain.perturbation",
    "road_score": "dala.explain.perturbation",
    "random_map": "dala.explain.perturbation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dala.explain' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
