"""The small base class every explanation method is a subclass of.

An :class:`Explainer` holds a model, its CAM target layers and a ``reshape_transform`` (ViT/Swin
token maps back to ``(B, C, h, w)``) and turns a preprocessed batch into maps in ``[0, 1]``::

    maps = GradCAMExplainer(model, [model.layer4[-1]])(x)            # x (B, 3, H, W) -> (B, H, W)

A method is one subclass that names its ``pytorch_grad_cam`` class (``cam_class``) and, where it
needs one, a ``postprocess`` step (DT Grad-CAM thresholds the map there).

Why the call does more than ``GradCAM(...)(x)``:

* **No leaks.** The ``pytorch_grad_cam`` object registers forward hooks on the target layers and
  keeps activations, gradients and (``retain_graph=True``) the autograd graph. It lives only
  inside one call and is released in ``finally``, so a hundred calls in a row leave the model with
  the hooks it had before. (We release explicitly rather than using ``with``: the library's
  ``__exit__`` swallows ``IndexError`` -- e.g. a target class out of range -- and prints it.)
* **Gradients whatever the caller's mode.** The app and notebooks often call under
  ``torch.inference_mode()`` or ``torch.no_grad()``, and quick-mode models have frozen
  (``requires_grad=False``) stems. The call leaves inference mode, enables grad, clones the input
  into a normal tensor that requires grad, and freezes every parameter for its duration: the
  target activations then require grad through the input (frozen or not), the backward computes
  no weight gradients (about half the cost), and the caller's ``requires_grad`` flags and
  ``.grad`` tensors are put back afterwards (``model.zero_grad()`` inside the library would
  otherwise wipe a training step's gradients).
* **Modes restored.** The library puts the model in ``eval()``; each module's own ``training``
  flag is restored afterwards (``model.train(flag)`` would flip a frozen stem's BatchNorm).
* **One at a time.** Hooks live on the model, so two threads explaining one shared model (the app
  caches models across sessions) would see each other's hooks: calls take a process-wide lock.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from dala.errors import DalaError

# Hooks live on the (possibly shared) model: one explanation at a time per process.
_CAM_LOCK = threading.RLock()


class ExplainError(DalaError, ValueError):
    """A bad explanation request: unknown method, target class out of range, bad parameter."""


@dataclass
class CamResult:
    """What one explainer pass gives: maps plus what the forward pass saw."""

    maps: np.ndarray                      # (B, H, W) float32 in [0, 1] at the input tensor's size
    logits: np.ndarray                    # (B, C) float32
    targets: list[int]                    # class explained per image (-1 for a custom target object)
    regions: np.ndarray | None = None     # (B, H, W) bool: thresholded region (DT Grad-CAM)
    thresholds: list[float] | None = None  # per-image threshold on the normalised map (DT Grad-CAM)
    extras: dict[str, Any] = field(default_factory=dict)


def normalise_maps(maps: np.ndarray) -> np.ndarray:
    """Each map min-max scaled to ``[0, 1]``; NaN/inf become 0; a flat map becomes all zeros."""
    maps = np.nan_to_num(np.asarray(maps, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    out = np.zeros_like(maps, dtype=np.float32)
    for i, m in enumerate(maps):
        lo, hi = float(m.min()), float(m.max())
        if hi - lo > 1e-12:
            out[i] = (m - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0)


class Explainer:
    """Base of every method: ``__call__(x (B, 3, H, W), targets) -> maps (B, H, W) float32 [0, 1]``.

    ``targets``: ``None`` (each image's predicted class), an int (one class for all), a sequence
    of ints (one per image), or a sequence of ``pytorch_grad_cam`` target objects.
    Method parameters (``batch_size`` of ScoreCAM, ``rule`` of DT Grad-CAM, ...) are keyword
    arguments listed in the subclass's ``params`` with their defaults.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""          # one line for the UI
    slow: ClassVar[bool] = False             # many forward passes per image: never a default
    uses_gradients: ClassVar[bool] = True
    cam_class: ClassVar[type | None] = None  # a pytorch_grad_cam.base_cam.BaseCAM subclass
    # accepted keyword parameters and their defaults (aug_smooth/eigen_smooth go to the CAM call)
    params: ClassVar[dict[str, Any]] = {"aug_smooth": False, "eigen_smooth": False}
    # gradient methods with one target layer: start the autograd graph at the target's output
    cut_below_target: ClassVar[bool] = True
    # pytorch_grad_cam modules whose per-batch tqdm bars are silenced during the call
    quiet_modules: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: nn.Module, target_layers: Sequence[nn.Module],
                 reshape_transform: Callable | None = None, **params: Any) -> None:
        if isinstance(target_layers, nn.Module):
            target_layers = [target_layers]
        target_layers = list(target_layers or [])
        if not target_layers or not all(isinstance(t, nn.Module) for t in target_layers):
            raise ExplainError("target_layers must be a non-empty list of modules of the model "
                               "(e.g. [model.layer4[-1]]), or pass spec= so the registry names them.")
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            raise ExplainError(f"{self.name or type(self).__name__} does not take {', '.join(unknown)}; "
                               f"its parameters are: {', '.join(sorted(self.params)) or 'none'}.")
        self.model = model
        self.target_layers = target_layers
        self.reshape_transform = reshape_transform
        self.options: dict[str, Any] = {**self.params, **params}

    # ----------------------------------------------------------------- what a subclass changes
    def make_cam(self):
        """Build the ``pytorch_grad_cam`` object for one call (released by :meth:`run`)."""
        assert self.cam_class is not None, f"{type(self).__name__} sets no cam_class"
        return self.cam_class(model=self.model, target_layers=self.target_layers,
                              reshape_transform=self.reshape_transform)

    def postprocess(self, maps: np.ndarray, result: CamResult) -> np.ndarray:
        """Change the normalised maps (B, H, W) after the CAM; may fill ``result.regions`` etc."""
        return maps

    def cleanup(self, cam) -> None:
        """Undo anything the CAM object may have left on the model (hooks are always released)."""

    # ----------------------------------------------------------------- the call
    def __call__(self, input_tensor: torch.Tensor, targets: Any = None) -> np.ndarray:
        return self.run(input_tensor, targets).maps

    def run(self, input_tensor: torch.Tensor, targets: Any = None) -> CamResult:
        """Maps, logits and explained classes for ``input_tensor`` (B, 3, H, W)."""
        if not isinstance(input_tensor, torch.Tensor) or input_tensor.dim() != 4:
            raise ExplainError("input_tensor must be a (B, 3, H, W) tensor")
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        batch = input_tensor.shape[0]
        cam_targets, target_ids = _cam_targets(targets, batch, ClassifierOutputTarget)
        model = self.model
        with _CAM_LOCK:
            modes = [(m, m.training) for m in model.modules()]
            saved = [(p, p.requires_grad, p.grad) for p in model.parameters()]
            cam = cut = None
            silenced = _silence_tqdm(self.quiet_modules)
            try:
                with torch.inference_mode(False):
                    grad_ctx = torch.enable_grad() if self.uses_gradients else torch.no_grad()
                    with grad_ctx:
                        for p, _, _ in saved:
                            p.requires_grad_(False)
                        device = next(iter(model.parameters())).device if saved else input_tensor.device
                        # clone: an inference-mode tensor cannot enter autograd; a normal one can
                        x = input_tensor.detach().to(device).clone()
                        if self.uses_gradients and self.cut_below_target and len(self.target_layers) == 1:
                            # registered first (prepend): pytorch_grad_cam's hooks see the new output
                            cut = self.target_layers[0].register_forward_hook(_cut_graph_here, prepend=True)
                        elif self.uses_gradients:
                            x.requires_grad_(True)  # activations require grad even with every layer frozen
                        cam = self.make_cam()
                        maps = cam(x, targets=cam_targets, aug_smooth=bool(self.options.get("aug_smooth")),
                                   eigen_smooth=bool(self.options.get("eigen_smooth")))
                        logits = cam.outputs.detach().float().cpu().numpy()
            finally:
                if cut is not None:
                    cut.remove()
                if cam is not None:
                    cam.activations_and_grads.release()
                    self.cleanup(cam)
                    cam.outputs = None
                    del cam
                for p, req, grad in saved:
                    p.requires_grad_(req)
                    p.grad = grad
                for m, training in modes:
                    m.training = training
                for mod, original in silenced:
                    mod.tqdm = original
        if logits.ndim != 2:
            raise ExplainError(f"the model must return (B, classes) logits, got shape {tuple(logits.shape)}")
        if target_ids is None:  # pytorch_grad_cam explained each image's argmax
            target_ids = [int(i) for i in logits.argmax(axis=1)]
        result = CamResult(maps=np.zeros(0, np.float32), logits=logits.astype(np.float32), targets=target_ids)
        maps = normalise_maps(maps)
        result.maps = np.clip(self.postprocess(maps, result), 0.0, 1.0).astype(np.float32)
        return result


def _cut_graph_here(module, inputs, output):
    """Forward hook: the target layer's output becomes the start of the autograd graph.

    Gradient methods need d(score)/d(activation) at the target layer only. With every parameter
    frozen for the call and this fresh leaf (cloned, so a downstream in-place ReLU stays legal),
    autograd records and back-propagates only the layers above the target; nothing below it (most
    of the network) is traversed, and it works with frozen layers and under inference mode alike.
    The gradient at the target is unchanged: it is a derivative with respect to that tensor.
    """
    if isinstance(output, torch.Tensor) and output.is_floating_point():
        return output.detach().requires_grad_(True).clone()
    return None


class _NoTqdm:
    """Stands in for the ``tqdm`` module inside a pytorch_grad_cam module: no progress bars."""

    @staticmethod
    def tqdm(iterable, *args, **kwargs):
        return iterable


def _silence_tqdm(module_names: tuple[str, ...]) -> list:
    import importlib

    saved = []
    for name in module_names:
        mod = importlib.import_module(name)
        saved.append((mod, mod.tqdm))
        mod.tqdm = _NoTqdm
    return saved


def _cam_targets(targets: Any, batch: int, target_cls) -> tuple[list | None, list[int] | None]:
    """Normalise ``targets`` into pytorch_grad_cam target objects and the class ids reported."""
    if targets is None:
        return None, None
    if isinstance(targets, (int, np.integer)):
        targets = [int(targets)] * batch
    targets = list(targets)
    if len(targets) != batch:
        raise ExplainError(f"got {len(targets)} targets for a batch of {batch} images")
    objs, ids = [], []
    for t in targets:
        if isinstance(t, (int, np.integer)):
            objs.append(target_cls(int(t)))
            ids.append(int(t))
        elif callable(t):
            objs.append(t)
            ids.append(int(getattr(t, "category", -1)))
        else:
            raise ExplainError(f"a target must be a class index or a pytorch_grad_cam target, not {t!r}")
    return objs, ids
