"""Stain jitter: per-image colour augmentation as one 3x3 colour matrix and an offset per image.

Histology colour varies with the stain batch, the scanner and the lab; training sees mild random
brightness, contrast, saturation and hue changes so that a model leans on morphology, not on the
exact shade (Tellez et al., "Quantifying the effects of data augmentation and stain color
normalization in convolutional neural networks for computational pathology", MedIA 2019).

Each of the four changes is linear in RGB, so together they are one affine map per image,
``x' = clamp(M @ x + o, 0, 1)``, applied to a whole batch in one batched matrix product:

- brightness ``b``: ``x -> b x``
- contrast ``c``: ``x -> c x + (1 - c) mean(gray(x))`` (the image's mean grey level: an offset)
- saturation ``s``: ``x -> s x + (1 - s) gray(x)`` (a 3x3 matrix)
- hue ``h`` (a fraction of a turn): a rotation by ``2 pi h`` of the chroma plane (I, Q) of YIQ,
  which keeps luminance (Y) -- a linear stand-in for torchvision's HSV hue shift (not linear),
  turning the same way (on BreakHis images at ``h = 0.025`` the two differ by 0.005 on average,
  each moving pixels by about 0.01)

The ranges are torchvision's ``ColorJitter`` ranges (factors in ``[1 - a, 1 + a]``, hue in
``[-h, h]``); unlike it, the changes run in a fixed order and clamp once at the end rather than
after each one. Why not ``ColorJitter`` itself: it works one image at a time (its HSV round trip
costs ~2 ms for a 224 px image on a CPU core, ~4 % of a DALAResNet50 training step on 2 cores),
and the same augmentation on a batch in one product costs a fraction of a millisecond per image,
on the GPU when there is one. Every image still gets its own draw: a single draw for the whole
batch would be useless, because BatchNorm removes a colour shift shared by the batch.
"""

from __future__ import annotations

import math

import torch

GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma: the weights of torchvision's rgb_to_grayscale and of YIQ's Y
RGB_TO_YIQ = ((0.299, 0.587, 0.114),
              (0.596, -0.274, -0.322),
              (0.211, -0.523, 0.312))


def dihedral(x: torch.Tensor, view: int) -> torch.Tensor:
    """View 0..7 of the dihedral group D4 of ``x`` (..., H, W): ``view // 4`` horizontal flip,
    ``view % 4`` quarter turns. Tissue has no up, so all eight are the same image to a
    pathologist (quick mode caches them, test-time augmentation averages them)."""
    if view >= 4:
        x = torch.flip(x, dims=(-1,))
    k = view % 4
    return torch.rot90(x, k, dims=(-2, -1)) if k else x


class StainJitter(torch.nn.Module):
    """Random brightness, contrast, saturation and hue, drawn independently for every image.

    Input and output: float images in ``[0, 1]``, ``(B, 3, H, W)`` or one ``(3, H, W)``. An input
    of another scale (uint8 values, say) is rescaled first with ``scale`` (``1 / 255``), folded
    into the colour matrix at no cost. Defaults: the mild jitter the training presets use.
    """

    def __init__(self, brightness: float = 0.1, contrast: float = 0.1, saturation: float = 0.1, hue: float = 0.025):
        super().__init__()
        if not 0 <= hue <= 0.5:
            raise ValueError(f"hue must lie in [0, 0.5] (a fraction of a turn), not {hue}")
        for name, v in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if not 0 <= v < 1:
                raise ValueError(f"{name} must lie in [0, 1), not {v}")
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        # plain CPU tensors, not buffers: the small per-image matrices are built on the CPU
        self.gray = torch.tensor(GRAY, dtype=torch.float64)  # (3,)
        self.yiq = torch.tensor(RGB_TO_YIQ, dtype=torch.float64)  # (3, 3)
        self.yiq_inv = torch.linalg.inv(self.yiq)  # (3, 3)

    @classmethod
    def from_strength(cls, jitter: float) -> "StainJitter":
        """The presets' one-knob form: brightness, contrast and saturation ``2 * jitter``, hue ``jitter / 2``."""
        return cls(brightness=2 * jitter, contrast=2 * jitter, saturation=2 * jitter, hue=jitter / 2)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(n, 4)`` factors: brightness, contrast, saturation (around 1) and hue (around 0)."""
        u = torch.rand(n, 4, generator=generator, dtype=torch.float64) * 2 - 1  # (n, 4) in [-1, 1)
        spread = torch.tensor([self.brightness, self.contrast, self.saturation, self.hue], dtype=torch.float64)
        return u * spread + torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64)

    def matrices(self, factors: torch.Tensor, mean_gray: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The colour matrix ``(n, 3, 3)`` and offset ``(n, 3)`` of each image, given its factors
        ``(n, 4)`` and the mean grey level ``(n,)`` of the image as it comes in."""
        n = len(factors)
        b, c, s, h = factors.T  # (n,) each
        eye = torch.eye(3, dtype=torch.float64).expand(n, 3, 3)
        sat = s[:, None, None] * eye + (1 - s)[:, None, None] * self.gray.expand(3, 3)  # (n, 3, 3); gray rows: x -> gray(x)
        # angle -2 pi h: the direction of HSV's hue shift (h > 0 turns red towards yellow)
        cos, sin = torch.cos(-2 * math.pi * h), torch.sin(-2 * math.pi * h)
        rot = torch.zeros(n, 3, 3, dtype=torch.float64)
        rot[:, 0, 0] = 1
        rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
        hue = self.yiq_inv @ rot @ self.yiq  # (n, 3, 3)
        hue_sat = hue @ sat  # (n, 3, 3): saturation, then hue
        matrix = hue_sat * (c * b)[:, None, None]  # brightness and contrast scale x ...
        offset = hue_sat @ ((1 - c) * b * mean_gray)[:, None].expand(n, 3)[..., None]  # ... contrast pulls to the mean grey
        return matrix, offset[..., 0]

    def forward(self, x: torch.Tensor, *, generator: torch.Generator | None = None, scale: float = 1.0,
                factors: torch.Tensor | None = None) -> torch.Tensor:
        single = x.dim() == 3
        if single:
            x = x[None]
        n, ch, height, width = x.shape  # (B, 3, H, W)
        if ch != 3:
            raise ValueError(f"stain jitter needs RGB images (B, 3, H, W), got {tuple(x.shape)}")
        if factors is None:  # drawn on the CPU: the same draws on every device for a seeded generator
            factors = self.sample(n, generator)
        flat = x.reshape(n, 3, height * width).float()  # (B, 3, HW)
        mean_gray = (flat.mean(dim=2).double().cpu() @ self.gray) * scale  # (B,) in [0, 1]
        matrix, offset = self.matrices(factors, mean_gray)
        matrix = (matrix * scale).to(flat.device, torch.float32)
        offset = offset.to(flat.device, torch.float32)
        out = torch.baddbmm(offset[:, :, None], matrix, flat).clamp_(0, 1)  # (B, 3, HW): M @ x + o
        out = out.reshape(n, 3, height, width)
        return out[0] if single else out


class TrainBatchTransform(torch.nn.Module):
    """The colour half of the training augmentation, on whole batches: uint8 ``(B, 3, H, W)``
    images (the dihedral views ``build_transform("dihedral")`` gives) -> stain-jittered,
    normalised float32 images, each with its own jitter.

    On a GPU this runs on the device after a uint8 copy (a quarter of a float copy's bytes).
    """

    def __init__(self, *, mean, std, jitter: float = 0.05):
        super().__init__()
        self.jitter = StainJitter.from_strength(jitter) if jitter > 0 else None
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("inv_std", 1 / torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.dtype != torch.uint8:
            raise TypeError(f"TrainBatchTransform takes uint8 images, got {x.dtype}")
        if self.jitter is not None:
            x = self.jitter(x, generator=generator, scale=1 / 255)  # (B, 3, H, W) float in [0, 1]
        else:
            x = x.float().div_(255)
        # x is a fresh tensor in both branches: normalise in place (no extra batch-sized copy per step)
        return x.sub_(self.mean.to(x.device)).mul_(self.inv_std.to(x.device))  # (B, 3, H, W) normalised
