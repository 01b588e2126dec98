"""Stain jitter as a per-image colour matrix: each change matches its torchvision definition,
every image of a batch gets its own draw, and the batch path equals the per-image preset."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from dala.data.augment import GRAY, StainJitter, TrainBatchTransform
from dala.data.dataset import IMAGENET_MEAN, IMAGENET_STD, build_transform


def _mid_range(n=4, size=24, seed=0):
    """Images in [0.25, 0.75]: mild changes never clamp, so the comparisons are exact."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 0.5 + 0.25  # (B, 3, H, W)


def _same_factors(n, b=1.0, c=1.0, s=1.0, h=0.0):
    return torch.tensor([[b, c, s, h]] * n, dtype=torch.float64)


@pytest.mark.parametrize("change, factors, reference", [
    ("identity", dict(), lambda x: x),
    ("brightness", dict(b=1.1), lambda x: TF.adjust_brightness(x, 1.1)),
    ("brightness", dict(b=0.9), lambda x: TF.adjust_brightness(x, 0.9)),
    ("contrast", dict(c=0.9), lambda x: torch.stack([TF.adjust_contrast(i, 0.9) for i in x])),
    ("contrast", dict(c=1.1), lambda x: torch.stack([TF.adjust_contrast(i, 1.1) for i in x])),
    ("saturation", dict(s=0.9), lambda x: TF.adjust_saturation(x, 0.9)),
    ("saturation", dict(s=1.1), lambda x: TF.adjust_saturation(x, 1.1)),
])
def test_each_change_matches_torchvision(change, factors, reference):
    x = _mid_range()
    out = StainJitter()(x, factors=_same_factors(len(x), **factors))
    torch.testing.assert_close(out, reference(x), atol=2e-5, rtol=0)


def test_hue_keeps_luminance_and_turns_like_hsv():
    x = _mid_range(n=2)
    jitter = StainJitter()
    out = jitter(x, factors=_same_factors(2, h=0.02))
    luma = torch.tensor(GRAY)[None, :, None, None]
    torch.testing.assert_close((out * luma).sum(1), (x * luma).sum(1), atol=2e-5, rtol=0)
    assert (out - x).abs().mean() > 0.005  # it does change the colours
    ours, hsv = (out - x).flatten(), (TF.adjust_hue(x, 0.02) - x).flatten()
    assert torch.corrcoef(torch.stack([ours, hsv]))[0, 1] > 0.5  # same direction as HSV's hue shift
    red = torch.tensor([0.8, 0.3, 0.3])[None, :, None, None]
    turned = jitter(red, factors=_same_factors(1, h=0.05))[0, :, 0, 0]
    assert turned[1] > 0.3 and turned[2] < 0.3 + 1e-6  # h > 0: red turns towards yellow, as in HSV


def test_every_image_gets_its_own_draw_and_a_seed_repeats_it():
    x = _mid_range(n=1).expand(8, -1, -1, -1)  # one image, eight times
    jitter = StainJitter()
    out = jitter(x, generator=torch.Generator().manual_seed(3))
    assert len({tuple(o.flatten()[:20].tolist()) for o in out}) == 8  # batch-wide jitter would be useless
    torch.testing.assert_close(out, jitter(x, generator=torch.Generator().manual_seed(3)))
    factors = jitter.sample(8, torch.Generator().manual_seed(3))
    assert ((factors[:, :3] - 1).abs() <= 0.1).all() and (factors[:, 3].abs() <= 0.025).all()
    # a batch equals its images one at a time, each with its own factors
    for i in (0, 5):
        torch.testing.assert_close(out[i], jitter(x[i], factors=factors[i:i + 1]), atol=1e-6, rtol=0)


def test_output_stays_in_range_and_bad_settings_are_refused():
    x = torch.rand(2, 3, 16, 16)
    out = StainJitter(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.3)(x)
    assert out.min() >= 0 and out.max() <= 1
    with pytest.raises(ValueError, match="hue"):
        StainJitter(hue=0.7)
    with pytest.raises(ValueError, match="brightness"):
        StainJitter(brightness=1.5)
    with pytest.raises(ValueError, match="RGB"):
        StainJitter()(torch.rand(2, 1, 8, 8))


def test_batch_transform_is_the_per_image_preset_on_uint8_batches():
    x8 = (_mid_range(n=3) * 255).round().to(torch.uint8)  # (B, 3, H, W) uint8
    batch = TrainBatchTransform(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    out = batch(x8, generator=torch.Generator().manual_seed(1))
    assert out.dtype == torch.float32 and out.shape == x8.shape
    factors = batch.jitter.sample(3, torch.Generator().manual_seed(1))
    by_hand = TF.normalize(StainJitter.from_strength(0.05)(x8.float() / 255, factors=factors), list(IMAGENET_MEAN), list(IMAGENET_STD))
    torch.testing.assert_close(out, by_hand, atol=1e-5, rtol=0)
    no_jitter = TrainBatchTransform(mean=IMAGENET_MEAN, std=IMAGENET_STD, jitter=0)(x8)
    torch.testing.assert_close(no_jitter, TF.normalize(x8.float() / 255, list(IMAGENET_MEAN), list(IMAGENET_STD)))
    with pytest.raises(TypeError, match="uint8"):
        batch(x8.float())


def test_dihedral_preset_is_the_geometric_half_of_train():
    im = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8))
    dihedral = build_transform("dihedral", size=32)
    no_colour = build_transform("train", size=32, jitter=0)
    for seed in range(6):
        torch.manual_seed(seed)
        d = dihedral(im)
        assert d.dtype == torch.uint8 and d.shape == (3, 32, 32)
        torch.manual_seed(seed)
        torch.testing.assert_close(TrainBatchTransform(mean=IMAGENET_MEAN, std=IMAGENET_STD, jitter=0)(d[None])[0],
                                   no_colour(im), atol=1e-6, rtol=0)
    torch.manual_seed(0)
    coloured = build_transform("train", size=32)(im)  # the per-image preset (Explore's preview) jitters too
    torch.manual_seed(0)
    assert not torch.allclose(coloured, no_colour(im))
