"""Lightweight attention blocks for DALAResNet50 and the tiny demo net.

Shaped like timm's ``layers/squeeze_excite.py``: each block maps ``(B, C, H, W) -> (B, C, H, W)``
by computing a gate in ``[0, 1]`` and rescaling its input with it, so it can sit anywhere a feature
map flows (after a stage, or inside a residual branch) without changing shapes.

- :class:`SEGate` - Squeeze-and-Excitation, Hu, Shen and Sun, "Squeeze-and-Excitation Networks",
  CVPR 2018 (arXiv 1709.01507). Global average pool -> 1x1 conv bottleneck (``C // reduction``)
  -> ReLU -> 1x1 conv expand -> sigmoid -> rescale channels. The default gate of DALAResNet50.
- :class:`ECAGate` - Efficient Channel Attention, Wang et al., "ECA-Net: Efficient Channel
  Attention for Deep Convolutional Neural Networks", CVPR 2020 (arXiv 1910.03151). Global
  average pool -> 1D conv across channels (kernel size adapted to ``C``) -> sigmoid -> rescale.
  No bottleneck, a handful of parameters.
- :class:`SpatialGate` - the spatial half of CBAM, Woo et al., "CBAM: Convolutional Block
  Attention Module", ECCV 2018 (arXiv 1807.06521). Channel-wise mean and max -> 7x7 conv -> BN
  -> sigmoid -> rescale positions. Says *where* to look rather than *which channels*.

``make_attention(kind, channels, **kw)`` builds one by name ("se", "eca", "spatial", "none").
"""

from __future__ import annotations

import math

import torch
from torch import nn

ATTENTION_KINDS = ("se", "eca", "spatial", "none")


class SEGate(nn.Module):
    """Squeeze-and-Excitation channel gate (Hu et al., CVPR 2018).

    Args:
        channels: input (and output) channels ``C``.
        reduction: bottleneck ratio; the hidden width is ``max(min_channels, C // reduction)``.
            16 is the paper's default and DALAResNet50's (2048 -> 128 -> 2048).
        min_channels: floor on the hidden width so tiny nets keep a usable bottleneck.
    """

    def __init__(self, channels: int, *, reduction: int = 16, min_channels: int = 8) -> None:
        super().__init__()
        if reduction < 1:
            raise ValueError(f"reduction must be >= 1, got {reduction}")
        hidden = max(min_channels, channels // reduction)
        self.channels = channels
        self.hidden = hidden
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, bias=True)  # 1x1 conv == per-pixel Linear
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, bias=True)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1) squeeze: global average pool
        s = self.fc2(self.act(self.fc1(s)))  # (B, C, 1, 1) excitation through the bottleneck
        return x * self.gate(s)  # (B, C, H, W) channels rescaled by a gate in [0, 1]


def eca_kernel_size(channels: int, *, gamma: int = 2, beta: int = 1) -> int:
    """ECA-Net's adaptive kernel size: the nearest odd number to ``(log2(C) + beta) / gamma``."""
    k = int(abs((math.log2(channels) + beta) / gamma))
    return max(k if k % 2 else k + 1, 1)


class ECAGate(nn.Module):
    """Efficient Channel Attention gate (Wang et al., CVPR 2020).

    Args:
        channels: input channels ``C`` (only used to pick the kernel size).
        kernel_size: odd 1D kernel across channels; ``None`` picks it from ``C`` as the paper does
            (7 for 2048 channels, 5 for 256).
    """

    def __init__(self, channels: int, *, kernel_size: int | None = None, gamma: int = 2, beta: int = 1) -> None:
        super().__init__()
        k = kernel_size or eca_kernel_size(channels, gamma=gamma, beta=beta)
        if k % 2 == 0:
            raise ValueError(f"ECA kernel_size must be odd, got {k}")
        self.channels = channels
        self.kernel_size = k
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, bias=False)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        s = x.mean(dim=(2, 3)).view(b, 1, c)  # (B, 1, C) pooled channels as a 1D signal
        s = self.conv(s).view(b, c, 1, 1)  # (B, C, 1, 1) local cross-channel interaction
        return x * self.gate(s)  # (B, C, H, W)


class SpatialGate(nn.Module):
    """CBAM spatial attention (Woo et al., ECCV 2018): one gate value per position, shared by all
    channels.

    Args:
        channels: accepted for a uniform constructor; the gate does not depend on it.
        kernel_size: the conv over the ``[mean, max]`` channel summaries (CBAM uses 7).
    """

    def __init__(self, channels: int | None = None, *, kernel_size: int = 7) -> None:
        super().__init__()
        self.channels = channels
        self.kernel_size = kernel_size
        self.conv = nn.Conv2d(2, 1, kernel_size=kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)  # (B, 2, H, W)
        s = self.bn(self.conv(s))  # (B, 1, H, W)
        return x * self.gate(s)  # (B, C, H, W) positions rescaled


def make_attention(kind: str | None, channels: int, **kw) -> nn.Module:
    """Build an attention block by name.

    ``kind``: "se" (:class:`SEGate`), "eca" (:class:`ECAGate`), "spatial" (:class:`SpatialGate`),
    or "none"/``None`` (``nn.Identity``, for ablations). Keyword options go to the block;
    ``reduction`` is accepted for every kind (so callers can pass one option set) and only used
    by "se"; ``kernel_size`` is used by "eca" and "spatial".
    """
    kind = (kind or "none").lower()
    reduction = kw.pop("reduction", 16)
    if kind == "se":
        return SEGate(channels, reduction=reduction, **kw)
    if kind == "eca":
        return ECAGate(channels, **kw)
    if kind == "spatial":
        return SpatialGate(channels, **kw)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown attention kind {kind!r}; choose one of {', '.join(ATTENTION_KINDS)}")
