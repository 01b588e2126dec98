"""Pieces the registry hands out with a model: split stages and Grad-CAM reshape rules.

- :class:`Stage` is a slice of a built model as an ``nn.Module``: it runs a function over the
  model's own submodules and *owns* (registers) exactly those, so ``stage.parameters()``,
  ``stage.train()``/``eval()`` and ``requires_grad_`` reach the slice and nothing else. Stages
  share modules with the model (they are views, not copies): training ``top`` trains the model,
  and a checkpoint of the model includes it. Do not ``deepcopy`` or pickle a stage.
- :class:`TokensToMap` and :func:`channels_last_to_map` turn transformer activations into the
  ``(B, C, h, w)`` maps pytorch-grad-cam needs (its ``reshape_transform`` argument).
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

import torch
from torch import nn


class Stage(nn.Module):
    """``forward(x) = fn(x)``, registering ``modules`` (and loose ``params``) as its own.

    Args:
        fn: the computation, usually a closure over the model or one of its bound methods.
        modules: the submodules ``fn`` uses (registered under these names).
        params: parameters held directly by the model (a ViT's class token, position embedding).
        name: a label shown in ``repr``.
    """

    def __init__(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        modules: Mapping[str, nn.Module | None],
        params: Mapping[str, nn.Parameter | None] | None = None,
        *,
        name: str = "stage",
    ) -> None:
        super().__init__()
        self.parts = nn.ModuleDict({k: m for k, m in modules.items() if m is not None})
        for key, p in (params or {}).items():
            if p is not None:
                self.register_parameter(key, p)
        self._fn = fn
        self._label = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fn(x)

    def extra_repr(self) -> str:
        return self._label


class TokensToMap:
    """ViT tokens ``(B, prefix + h*w, C)`` -> ``(B, C, h, w)``, dropping the class/register tokens.

    The patch grid is assumed square (as our ViTs are built); anything else raises.
    """

    def __init__(self, num_prefix_tokens: int = 1) -> None:
        self.num_prefix_tokens = num_prefix_tokens

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n, c = tokens.shape  # (B, N, C)
        grid = tokens[:, self.num_prefix_tokens :, :]  # (B, h*w, C)
        side = math.isqrt(grid.shape[1])
        if side * side != grid.shape[1]:
            raise ValueError(f"{grid.shape[1]} patch tokens do not form a square grid")
        return grid.reshape(b, side, side, c).permute(0, 3, 1, 2).contiguous()  # (B, C, h, w)

    def __repr__(self) -> str:
        return f"TokensToMap(num_prefix_tokens={self.num_prefix_tokens})"


def channels_last_to_map(x: torch.Tensor) -> torch.Tensor:
    """torchvision Swin activations ``(B, H, W, C)`` -> ``(B, C, H, W)``."""
    return x.permute(0, 3, 1, 2).contiguous()
