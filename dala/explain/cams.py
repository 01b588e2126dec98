"""The Grad-CAM family from ``pytorch-grad-cam``, one small subclass each, and the method registry.

``METHODS`` maps a method name (what the CLI, the app and :func:`dala.explain.explain` take) to
its :class:`~dala.explain.base.Explainer` subclass; each carries ``slow`` and a one-line
``description`` for the UI. ScoreCAM and AblationCAM run one forward pass per channel of the
target layer (2,048 for ResNet50): they are labelled slow and are never a default.
"""

from __future__ import annotations

from typing import Any

from pytorch_grad_cam import (AblationCAM, AblationLayer, AblationLayerVit, EigenCAM, GradCAM,
                              GradCAMPlusPlus, LayerCAM, ScoreCAM, XGradCAM)
from pytorch_grad_cam.utils.find_layers import replace_layer_recursive

from dala.explain.base import Explainer, ExplainError
from dala.explain.dt_gradcam import DTGradCAMExplainer

_COMMON = dict(Explainer.params)


class GradCAMExplainer(Explainer):
    name = "gradcam"
    description = "Grad-CAM: target-layer channels weighted by their mean gradient (Selvaraju et al. 2017)."
    cam_class = GradCAM


class GradCAMPlusPlusExplainer(Explainer):
    name = "gradcam++"
    description = "Grad-CAM++: higher-order gradient weights, better for several instances of a class."
    cam_class = GradCAMPlusPlus


class XGradCAMExplainer(Explainer):
    name = "xgradcam"
    description = "XGrad-CAM: gradients scaled by the normalised activations (axiom-based weights)."
    cam_class = XGradCAM


class EigenCAMExplainer(Explainer):
    name = "eigencam"
    description = "EigenCAM: first principal component of the activations; class-agnostic, no gradients."
    cam_class = EigenCAM
    uses_gradients = False


class LayerCAMExplainer(Explainer):
    name = "layercam"
    description = "LayerCAM: element-wise positive gradients times activations; finer detail."
    cam_class = LayerCAM


class ScoreCAMExplainer(Explainer):
    name = "scorecam"
    description = "Score-CAM: each channel masks the input and its class score is the weight (slow)."
    cam_class = ScoreCAM
    uses_gradients = False
    slow = True
    params = {**_COMMON, "batch_size": 16}  # masked images per forward pass
    quiet_modules = ("pytorch_grad_cam.score_cam",)

    def make_cam(self):
        cam = ScoreCAM(model=self.model, target_layers=self.target_layers,
                       reshape_transform=self.reshape_transform)
        cam.batch_size = int(self.options["batch_size"])  # read by ScoreCAM.get_cam_weights
        return cam


class AblationCAMExplainer(Explainer):
    name = "ablationcam"
    description = "Ablation-CAM: drop in class score when each channel is zeroed out (slow)."
    cam_class = AblationCAM
    uses_gradients = False
    slow = True
    params = {**_COMMON, "batch_size": 32, "ratio_channels_to_ablate": 1.0}
    quiet_modules = ("pytorch_grad_cam.ablation_cam",)

    def make_cam(self):
        # a fresh ablation layer each call: the library's default argument is one shared instance
        layer = AblationLayerVit() if self.reshape_transform is not None else AblationLayer()
        self._ablation_layer = layer
        return AblationCAM(model=self.model, target_layers=self.target_layers,
                           reshape_transform=self.reshape_transform, ablation_layer=layer,
                           batch_size=int(self.options["batch_size"]),
                           ratio_channels_to_ablate=float(self.options["ratio_channels_to_ablate"]))

    def cleanup(self, cam) -> None:
        # AblationCAM swaps the target layer for its ablation layer and swaps it back at the end;
        # after an exception in between, the model would keep the ablation layer.
        layer = getattr(self, "_ablation_layer", None)
        if layer is not None and any(m is layer for m in self.model.modules()):
            for target in self.target_layers:
                replace_layer_recursive(self.model, layer, target)
        self._ablation_layer = None


METHODS: dict[str, type[Explainer]] = {
    cls.name: cls
    for cls in (GradCAMExplainer, GradCAMPlusPlusExplainer, XGradCAMExplainer, EigenCAMExplainer,
                LayerCAMExplainer, ScoreCAMExplainer, AblationCAMExplainer, DTGradCAMExplainer)
}
DEFAULT_METHOD = "gradcam"
_ALIASES = {"grad-cam": "gradcam", "gradcampp": "gradcam++", "gradcamplusplus": "gradcam++",
            "grad-cam++": "gradcam++", "dt_gradcam": "dt-gradcam", "dtgradcam": "dt-gradcam",
            "score-cam": "scorecam", "ablation-cam": "ablationcam", "eigen-cam": "eigencam",
            "layer-cam": "layercam", "xgrad-cam": "xgradcam"}


def list_methods(*, include_slow: bool = True) -> list[str]:
    """Method names in display order (fast ones first when ``include_slow``)."""
    names = [n for n, c in METHODS.items() if not c.slow] + [n for n, c in METHODS.items() if c.slow]
    return names if include_slow else [n for n in names if not METHODS[n].slow]


def get_method(name: str) -> type[Explainer]:
    """The explainer class for ``name`` (case-insensitive; a few spellings accepted)."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in METHODS:
        raise ExplainError(f"unknown explanation method {name!r}: choose one of {', '.join(list_methods())}.")
    return METHODS[key]


def describe_methods() -> list[dict[str, Any]]:
    """One row per method for a UI table or select box."""
    return [{"name": n, "description": METHODS[n].description, "slow": METHODS[n].slow,
             "params": {k: v for k, v in METHODS[n].params.items() if k not in _COMMON}}
            for n in list_methods()]
