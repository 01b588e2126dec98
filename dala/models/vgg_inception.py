"""VGG16Inception: VGG16's convolutional features followed by one Inception block and a small head.

The DALAResNet50 paper (arXiv 2308.13150) lists "VGG16Inception" among the models it compared
with but its definition is not at hand. Our reading, a common design for histopathology:
- VGG16's 13 conv layers (torchvision ``vgg16().features`` without its last max-pool), ImageNet
  weights when pretrained: ``(B, 3, H, W) -> (B, 512, H/16, W/16)``;
- one Inception block (Szegedy et al., "Going Deeper with Convolutions", CVPR 2015) with four
  parallel branches - 1x1; 1x1 -> 3x3; 1x1 -> 5x5; 3x3 max-pool -> 1x1 - each conv followed by
  BatchNorm and ReLU (the Inception-v2 habit), concatenated to 512 channels; it looks at the
  same features at several receptive fields at once;
- global average pooling, then ``Linear(512, 256) -> ReLU -> Dropout -> Linear(256, C)``.
The Inception block and head start from random weights.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

# index of VGG16's last ReLU in ``features``; the max-pool after it is dropped
_LAST_RELU = 29
# index of VGG16's 4th max-pool: the stem of split() ends there (512 x H/16 x W/16)
_POOL4 = 23


def _conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class InceptionBlock(nn.Module):
    """Four parallel branches concatenated on channels (GoogLeNet's Inception module).

    Output channels: ``b1 + b3 + b5 + pool_proj`` (default 128 + 256 + 64 + 64 = 512).
    """

    def __init__(
        self,
        in_channels: int,
        *,
        b1: int = 128,
        b3_reduce: int = 128,
        b3: int = 256,
        b5_reduce: int = 32,
        b5: int = 64,
        pool_proj: int = 64,
    ) -> None:
        super().__init__()
        self.branch1 = _conv_bn_relu(in_channels, b1, 1)
        self.branch3 = nn.Sequential(_conv_bn_relu(in_channels, b3_reduce, 1), _conv_bn_relu(b3_reduce, b3, 3))
        self.branch5 = nn.Sequential(_conv_bn_relu(in_channels, b5_reduce, 1), _conv_bn_relu(b5_reduce, b5, 5))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), _conv_bn_relu(in_channels, pool_proj, 1))
        self.out_channels = b1 + b3 + b5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # every branch keeps the spatial size: (B, Cin, h, w) -> (B, Cout, h, w)
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], dim=1)


class VGG16Inception(nn.Module):
    """VGG16 conv features -> Inception block -> global pool -> two-layer head.

    Args:
        num_classes: output logits.
        hidden: width of the head's hidden layer.
        dropout: dropout before the last Linear.
    """

    def __init__(self, num_classes: int = 2, *, hidden: int = 256, dropout: float = 0.5) -> None:
        super().__init__()
        # keep torchvision's "features.<i>" names so VGG16's ImageNet weights load directly
        # (built with torchvision's own make_layers, skipping VGG16's 120M-parameter classifier)
        self.features = make_layers(cfgs["D"], batch_norm=False)[: _LAST_RELU + 1]
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):  # torchvision VGG's init
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        self.inception = InceptionBlock(512)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(
            nn.Linear(self.inception.out_channels, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        self.num_classes = num_classes

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.features[: _POOL4 + 1](x)  # (B, 512, H/16, W/16)

    def forward_top(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features[_POOL4 + 1 :](x)  # (B, 512, H/16, W/16) conv5 block
        x = self.inception(x)  # (B, 512, H/16, W/16) multi-scale
        x = self.pool(x).flatten(1)  # (B, 512)
        return self.head(x)  # (B, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_top(self.forward_stem(x))
