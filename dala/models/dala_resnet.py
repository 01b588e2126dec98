"""DALAResNet50: Dual-Activated Lightweight Attention ResNet50 (arXiv 2308.13150).

**What the paper states** (abstract and summary; the full text is not at hand):
- the backbone is an ImageNet-pretrained ResNet50;
- one *lightweight attention module* is embedded in layer 4;
- the classifier is replaced by two fully connected layers, one activated with LeakyReLU and one
  with ReLU (hence "dual-activated");
- the task is binary (benign vs malignant), trained per magnification on BreakHis.

**What is our reading** (kept configurable so it can be ablated, and written down here):
- the attention is a Squeeze-and-Excitation channel gate (global pool -> 1x1 bottleneck with
  reduction 16 -> ReLU -> expand -> sigmoid -> rescale) applied to the *output* of layer 4
  (``placement="output"``). ``placement="per_block"`` instead puts one gate inside each of the
  three layer-4 bottlenecks, after ``bn3`` and before the residual add, as in SE-ResNet.
  ``attention="eca"`` (ECA-Net) and ``"spatial"`` (CBAM's spatial gate) are the alternatives;
  ``"none"`` removes the gate;
- the head is ``Linear(2048, 512) -> LeakyReLU(0.01) -> Linear(512, 256) -> ReLU ->
  Linear(256, C)``, after global average pooling; optional dropout after each activation;
- the Grad-CAM target is the attention output (``model.attention``), not ``layer4[-1]``, so an
  explanation sees the gated features the head actually reads. With ``per_block`` the gates are
  inside the blocks and the target is ``layer4[-1]`` (see :attr:`DALAResNet50.cam_target`).
- "pretrained" means the ResNet50 part loads torchvision's ImageNet weights; the attention and
  head start from random initialisation.

The module keeps torchvision's ResNet50 attribute names (``conv1 ... layer4``) so torchvision's
ImageNet state dict loads into it directly; the new parts are ``attention``, ``pool``, ``head``
(and ``layer4.<i>.attention`` with ``per_block``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torchvision.models import resnet50
from torchvision.models.resnet import Bottleneck

from dala.models.attention import ATTENTION_KINDS, make_attention

PLACEMENTS = ("output", "per_block")



def dual_activated_head(in_features: int, num_classes: int, *, head_dims: Sequence[int] = (512, 256),
                        leaky_slope: float = 0.01, dropout: float = 0.0) -> nn.Sequential:
    """The paper's "dual-activated" classifier: FC -> LeakyReLU, then FC -> ReLU for each further
    hidden layer, then the output FC. Default: Linear(in,512) -> LeakyReLU -> Linear(512,256) ->
    ReLU -> Linear(256,C)."""
    layers: list[nn.Module] = []
    width = in_features
    for i, hidden in enumerate(head_dims):
        layers += [nn.Linear(width, int(hidden)), nn.LeakyReLU(leaky_slope) if i == 0 else nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = int(hidden)
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)

class AttentionBottleneck(Bottleneck):
    """torchvision's ResNet Bottleneck with an attention gate after ``bn3``, before the residual
    add (the SE-ResNet placement). Parameter names of the original block are unchanged, so
    ImageNet weights still load; the gate adds ``attention.*``."""

    def __init__(self, block: Bottleneck, attention: nn.Module) -> None:
        nn.Module.__init__(self)
        # adopt the original block's modules (and so its pretrained weights) as they are
        for name in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "relu", "downsample"):
            setattr(self, name, getattr(block, name))
        self.stride = block.stride
        self.attention = attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x  # (B, Cin, H, W)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))  # (B, 2048, h, w) residual branch
        out = self.attention(out)  # gate the branch before it joins the identity
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class DALAResNet50(nn.Module):
    """ResNet50 + one lightweight attention module in layer 4 + a dual-activated two-layer head.

    Args:
        num_classes: output logits (2 for benign/malignant).
        attention: "se" (default), "eca", "spatial" or "none".
        placement: "output" (one gate on layer 4's output, default) or "per_block" (one gate in
            each layer-4 bottleneck).
        reduction: SE bottleneck ratio (2048 -> 2048 // reduction -> 2048).
        head_dims: hidden widths of the head; the first is followed by LeakyReLU, the rest by ReLU.
        leaky_slope: negative slope of the LeakyReLU.
        dropout: dropout probability after each head activation (0 disables it).
    """

    feature_dim = 2048

    def __init__(
        self,
        num_classes: int = 2,
        *,
        attention: str = "se",
        placement: str = "output",
        reduction: int = 16,
        head_dims: Sequence[int] = (512, 256),
        leaky_slope: float = 0.01,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {attention!r}")
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
        if not head_dims:
            raise ValueError("head_dims needs at least one hidden width (the LeakyReLU layer)")
        self.attention_kind = attention
        self.placement = placement

        base = resnet50(weights=None)  # ImageNet weights are loaded later by the registry
        self.conv1, self.bn1, self.relu, self.maxpool = base.conv1, base.bn1, base.relu, base.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = base.layer1, base.layer2, base.layer3, base.layer4

        if placement == "per_block":
            for i, block in enumerate(self.layer4):
                gate = make_attention(attention, self.feature_dim, reduction=reduction)
                self.layer4[i] = AttentionBottleneck(block, gate)
            self.attention = nn.Identity()  # the gates live in layer4[i].attention
        else:
            self.attention = make_attention(attention, self.feature_dim, reduction=reduction)

        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = dual_activated_head(self.feature_dim, num_classes, head_dims=head_dims, leaky_slope=leaky_slope,
                                        dropout=dropout)
        self.num_classes = num_classes
        self._init_new_parts()

    def _init_new_parts(self) -> None:
        for m in self.head.modules():
            if isinstance(m, nn.Linear):
                # He init matched to the (leaky) ReLUs that follow
                nn.init.kaiming_normal_(m.weight, nonlinearity="leaky_relu", a=0.01)
                nn.init.zeros_(m.bias)

    # the parts, named so that split() and explanations can reuse them
    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """conv1 ... layer3: (B, 3, H, W) -> (B, 1024, H/16, W/16)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        x = self.layer1(x)  # (B, 256, H/4, W/4)
        x = self.layer2(x)  # (B, 512, H/8, W/8)
        return self.layer3(x)  # (B, 1024, H/16, W/16)

    def forward_top(self, x: torch.Tensor) -> torch.Tensor:
        """layer4, attention, pool, head: (B, 1024, h, w) -> (B, num_classes)."""
        x = self.layer4(x)  # (B, 2048, H/32, W/32)
        x = self.attention(x)  # (B, 2048, H/32, W/32) gated
        x = self.pool(x).flatten(1)  # (B, 2048)
        return self.head(x)  # (B, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_top(self.forward_stem(x))

    @property
    def cam_target(self) -> nn.Module:
        """The layer Grad-CAM should hook: the attention output, or the last gated block."""
        return self.layer4[-1] if self.placement == "per_block" else self.attention
