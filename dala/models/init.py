"""Initialisation for models that start from random weights (offline, no pretrained weights).

``zero_init_residual`` sets the last BatchNorm scale of every residual branch to zero, so each
residual block starts as its shortcut: the identity, or a 1x1 projection where the block changes
width or stride. This is torchvision's ``resnet50(zero_init_residual=True)`` and timm's
``zero_init_last`` (Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour",
2017, section 5.1), applied to a model that is already built.

Why quick mode needs it offline (measured on the synthetic default, 2-core CPU; README,
"Measured figures"; ``bench/bench_quick_offline.py --probe``): a *frozen* random ResNet50 stem
with the standard initialisation passes its input through 13 random residual branches on the way
to layer 3, and much of the morphology is lost there -- a linear probe on its layer-3 features
scores test GMean 0.62 on new patients, the same probe on its layer-1 features 0.81. With the
branches zeroed, layer 3 carries random 1x1 projections of the first convolution's features and
the signal survives (probe 0.82); the top learns from that. A *trainable* random top starts the
same way and grows its branches as it learns. With pretrained weights nothing here is used.
"""

from __future__ import annotations

from functools import lru_cache

from torch import nn


def _residual_last_bns(module: nn.Module) -> list[nn.BatchNorm2d]:
    """The last BatchNorm of each residual branch in ``module``: ``bn3`` of a bottleneck, ``bn2``
    of a basic block (torchvision's classes and their subclasses, such as DALAResNet50's
    per-block attention bottleneck; timm's ResNet blocks, which mark themselves with
    ``zero_init_last``)."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    found: list[nn.BatchNorm2d] = []
    for m in module.modules():
        if isinstance(m, Bottleneck):
            bn = m.bn3
        elif isinstance(m, BasicBlock):
            bn = m.bn2
        elif hasattr(m, "zero_init_last"):
            bn = getattr(m, "bn3", getattr(m, "bn2", None))
        else:
            continue
        if isinstance(bn, nn.BatchNorm2d) and bn.weight is not None:
            found.append(bn)
    return found


def zero_init_residual(module: nn.Module) -> int:
    """Zero the last BatchNorm scale of every residual branch in ``module``; returns how many.

    A module without residual blocks (VGG, DenseNet, the transformers, tiny_cnn) is left as it is
    and 0 is returned.
    """
    bns = _residual_last_bns(module)
    for bn in bns:
        nn.init.zeros_(bn.weight)
    return len(bns)


@lru_cache(maxsize=None)
def has_residual_stem(model_name: str) -> bool:
    """Whether the registry model's quick-mode stem holds residual blocks (built on the meta
    device: nothing is allocated)."""
    import torch

    from dala.models.registry import get_spec

    spec = get_spec(model_name)
    with torch.device("meta"):
        model, _ = spec.builder(num_classes=2, pretrained=False, **spec.options)
        stem, _top = spec.split(model)
    return bool(_residual_last_bns(stem))
