"""TinyDALA: a DALA-shaped CNN small enough to train in seconds on a laptop CPU.

Not from any paper: the teaching stand-in for DALAResNet50 on 2 CPU cores. It keeps the same
ideas at toy scale - conv stages, one SE gate on the last stage's output (the Grad-CAM target),
global pooling and a dual-activated head (LeakyReLU then ReLU) - at about 0.4M parameters and a
default input of 64 px. Always random-initialised (there are no pretrained weights).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from dala.models.attention import make_attention
from dala.models.dala_resnet import dual_activated_head


def _stage(cin: int, cout: int) -> nn.Sequential:
    """conv3x3 -> BN -> ReLU -> 2x2 max-pool: halves H and W."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class TinyDALA(nn.Module):
    """Four conv stages (widths 32-64-128-256) -> SE gate -> pool -> 64 (LeakyReLU) -> 32 (ReLU) -> C.

    Args:
        num_classes: output logits.
        widths: output channels of the conv stages (each stage halves the resolution).
        attention: gate kind on the last stage ("se", "eca", "spatial", "none").
        head_dims: hidden widths of the head (first LeakyReLU, then ReLU).
        dropout: dropout after each head activation.
    """

    def __init__(
        self,
        num_classes: int = 2,
        *,
        widths: Sequence[int] = (32, 64, 128, 256),
        attention: str = "se",
        head_dims: Sequence[int] = (64, 32),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) < 2:
            raise ValueError("widths needs at least two stages (one for the stem, one for the top)")
        chans = [3, *widths]
        self.stages = nn.Sequential(*[_stage(a, b) for a, b in zip(chans[:-1], chans[1:])])
        self.attention = make_attention(attention, widths[-1], reduction=16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = dual_activated_head(widths[-1], num_classes, head_dims=head_dims, dropout=dropout)
        self.num_classes = num_classes
        self.stem_stages = len(widths) // 2  # split(): the first half of the stages is the stem

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages[: self.stem_stages](x)  # (B, 64, H/4, W/4) with the default widths

    def forward_top(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages[self.stem_stages :](x)  # (B, 256, H/16, W/16)
        x = self.attention(x)  # (B, 256, H/16, W/16) gated
        x = self.pool(x).flatten(1)  # (B, 256)
        return self.head(x)  # (B, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_top(self.forward_stem(x))
