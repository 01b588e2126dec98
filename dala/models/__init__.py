"""Model zoo and checkpoints: ``list_models``, ``get_spec``, ``create_model``, ``save_checkpoint``,
``load_checkpoint``, ``read_checkpoint_config``.

Names are resolved lazily (PEP 562) so ``import dala.models.cli`` - and ``python -m dala --help`` -
does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "list_models": "dala.models.registry",
    "get_spec": "dala.models.registry",
    "create_model": "dala.models.registry",
    "ModelSpec": "dala.models.registry",
    "ModelError": "dala.models.registry",
    "save_checkpoint": "dala.models.checkpoint",
    "load_checkpoint": "dala.models.checkpoint",
    "read_checkpoint_config": "dala.models.checkpoint",
    "DALAResNet50": "dala.models.dala_resnet",
    "VGG16Inception": "dala.models.vgg_inception",
    "TinyDALA": "dala.models.tiny",
    "make_attention": "dala.models.attention",
    "SEGate": "dala.models.attention",
    "ECAGate": "dala.models.attention",
    "SpatialGate": "dala.models.attention",
    "zero_init_residual": "dala.models.init",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from dala.models.attention import ECAGate, SEGate, SpatialGate, make_attention
    from dala.models.checkpoint import load_checkpoint, read_checkpoint_config, save_checkpoint
    from dala.models.dala_resnet import DALAResNet50
    from dala.models.init import zero_init_residual
    from dala.models.registry import ModelError, ModelSpec, create_model, get_spec, list_models
    from dala.models.tiny import TinyDALA
    from dala.models.vgg_inception import VGG16Inception


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dala.models' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
