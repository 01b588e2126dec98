"""Image loading (uploads and files) and the torch Dataset / transforms."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from dala.data.dataset import BreakHisDataset, build_transform
from dala.data.images import load_rgb
from dala.errors import ImageInputError


def _bytes(im: Image.Image, fmt="PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "I;16", "I", "F", "CMYK", "1"])
def test_unusual_modes_become_rgb8(mode):
    arr = (np.arange(32 * 24) % 256).reshape(24, 32)
    if mode in ("I;16", "I"):
        im = Image.fromarray((arr * 200).astype("<u2" if mode == "I;16" else np.int32))
        assert im.mode == mode
    elif mode == "F":
        im = Image.fromarray(arr.astype(np.float32) / 255.0)
    else:
        im = Image.fromarray(arr.astype(np.uint8), "L").convert(mode)
    fmt = "TIFF" if mode in ("F", "I", "CMYK") else "PNG"
    out = load_rgb(_bytes(im, fmt))
    assert out.mode == "RGB" and out.size == (32, 24)
    if mode in ("I;16", "I", "F"):  # rescaled by range, not clipped to white
        assert np.asarray(out).max() == 255 and np.asarray(out).min() == 0


def test_rgba_composited_on_white():
    im = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert np.asarray(load_rgb(_bytes(im))).tolist()[0][0] == [255, 255, 255]


def test_jpeg_and_tiff(tmp_path):
    im = Image.new("RGB", (40, 30), (120, 60, 200))
    for fmt, ext in (("JPEG", "jpg"), ("TIFF", "tif")):
        p = tmp_path / f"x.{ext}"
        im.save(p, format=fmt)
        assert load_rgb(p).size == (40, 30)


def test_bad_inputs_have_clear_messages(tmp_path):
    with pytest.raises(ImageInputError, match="not an image"):
        load_rgb(b"%PDF-1.4 definitely not an image")
    with pytest.raises(ImageInputError, match="empty"):
        load_rgb(b"")
    full = _bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)))
    with pytest.raises(ImageInputError, match="truncated"):
        load_rgb(full[: len(full) // 2])
    with pytest.raises(ImageInputError, match="pixel limit"):
        load_rgb(_bytes(Image.new("L", (5000, 5000))), max_pixels=10_000_000)
    with pytest.raises(ImageInputError, match="not found"):
        load_rgb(tmp_path / "missing.png")


def test_real_samples_load(real_samples):
    for p in real_samples:
        im = load_rgb(p)
        assert im.size == (700, 460) and im.mode == "RGB"


def test_transforms_shapes_and_dihedral():
    im = Image.fromarray(np.random.default_rng(0).integers(0, 255, (46, 70, 3), dtype=np.uint8))
    ev = build_transform("eval", size=32)
    x = ev(im)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(ev(im), x)  # eval is deterministic
    tr = build_transform("train", size=32, jitter=0.0)
    torch.manual_seed(0)
    views = {tuple(tr(im).flatten()[:50].tolist()) for _ in range(40)}
    assert 2 < len(views) <= 8  # flips x rotations: at most the 8 dihedral views
    with pytest.raises(ValueError):
        build_transform("test")


def test_dataset_with_cache(real_samples):
    import pandas as pd
    from dala.data import load_index

    idx = load_index(real_samples[0].parent)
    ds = BreakHisDataset(idx, transform=build_transform("eval", size=48), cache=True, cache_size=64)
    x, y = ds[0]
    assert x.shape == (3, 48, 48) and y in (0, 1)
    assert 0 in ds._cache and ds._cache[0].shape == (64, 64, 3)
    x2, _ = ds[0]
    assert torch.equal(x, x2)
    assert len(ds) == 14 and sorted(set(ds.targets)) == [0, 1]
    assert isinstance(idx, pd.DataFrame)


def test_decompression_bomb_header_is_refused_cleanly():
    import struct
    import zlib

    png = bytearray(_bytes(Image.new("L", (1, 1))))
    # rewrite the IHDR chunk to claim 30000 x 30000 pixels (and fix its CRC): a header-only bomb
    ihdr = png.index(b"IHDR")
    png[ihdr + 4:ihdr + 12] = struct.pack(">II", 30000, 30000)
    png[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(png[ihdr:ihdr + 17])))
    with pytest.raises(ImageInputError, match="dimensions|pixel limit"):
        load_rgb(bytes(png))

