"""Fault injection for every image entry point: the dataset scan (index), dataset loading in
training, and the upload path of predict/explain, each given a decompression bomb, a
huge-but-small file, a 1x1 image, a folder, an unreadable file and a non-image. Each case ends in
a clear ``ImageInputError``/problem row or a bounded, correct result; none in a traceback, a hang
or gigabytes of memory.
"""

from __future__ import annotations

import io
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dala.data.images import ORIGINAL_SIZE, image_size, load_for_model, load_rgb, max_image_pixels
from dala.data.index import load_index, scan
from dala.errors import ImageInputError

NAME = "SOB_B_A-14-22549AB-40-{:03d}.png"  # BreakHis-named, so the index considers them


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid-looking PNG of a few dozen bytes whose header declares ``width`` x ``height``."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00\x00")
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def huge_small_png() -> bytes:
    """7900x5000 (39.5 megapixels, under the pixel limit) compressed to about 100 KB."""
    return png_bytes(Image.new("L", (7900, 5000), 200))


def deny_open(monkeypatch, target: Path) -> None:
    """chmod 000 does not stop root (tests may run as root): make opening ``target`` fail the way
    it does for an ordinary user."""
    import builtins

    real_open = builtins.open

    def fake_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file).resolve() == target.resolve():
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)


# -------------------------------------------------------------------------------- the loader
def test_bomb_is_74_bytes_and_refused_before_decoding():
    data = bomb_png()
    assert len(data) < 80
    t0 = time.perf_counter()
    for load in (load_rgb, load_for_model):
        with pytest.raises(ImageInputError, match="decompression bomb|pixel limit"):
            load(data, name="bomb.png")
    assert time.perf_counter() - t0 < 1.0


def test_bomb_between_limit_and_pil_guard_is_refused_by_header():
    # 12000x8000 = 96 Mpx: above PIL's warning threshold (89 Mpx) and our limit, below its error
    with pytest.raises(ImageInputError, match="bomb|pixel limit"):
        load_rgb(bomb_png(12_000, 8_000))


def test_pixel_limit_is_read_at_call_time(monkeypatch, tmp_path):
    data = png_bytes(Image.new("RGB", (100, 100)))
    assert load_rgb(data).size == (100, 100)
    monkeypatch.setenv("DALA_MAX_IMAGE_PIXELS", "5000")
    assert max_image_pixels() == 5000
    with pytest.raises(ImageInputError, match="5,000-pixel limit"):
        load_rgb(data)
    with pytest.raises(ImageInputError, match="pixel limit"):
        image_size(_write(tmp_path / "px.png", data))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_huge_but_small_upload_is_shrunk_for_the_model(huge_small_png):
    assert len(huge_small_png) < 200_000
    im = load_for_model(huge_small_png, name="big.png")
    assert max(im.size) == 1024 and im.mode == "RGB"
    assert im.info[ORIGINAL_SIZE] == (7900, 5000)  # the overlay can be drawn at the original size
    assert abs(im.size[0] / im.size[1] - 7900 / 5000) < 0.01
    assert np.asarray(im).mean() == pytest.approx(200, abs=1)
    small = load_for_model(huge_small_png, max_side=256)
    assert max(small.size) == 256


def test_large_jpeg_is_decoded_at_reduced_scale():
    buf = io.BytesIO()
    Image.new("RGB", (4000, 3000), (180, 90, 160)).save(buf, format="JPEG", quality=80)
    im = load_for_model(buf.getvalue(), max_side=500)
    assert max(im.size) == 500 and im.info[ORIGINAL_SIZE] == (4000, 3000)


def test_max_side_never_changes_a_callers_image():
    src = Image.new("RGB", (2000, 1000))
    out = load_for_model(src, max_side=100)
    assert src.size == (2000, 1000) and ORIGINAL_SIZE not in src.info and out.size == (100, 50)


def test_one_pixel_image_is_a_correct_result():
    one = png_bytes(Image.new("RGB", (1, 1), (10, 20, 30)))
    for load in (load_rgb, load_for_model):
        im = load(one)
        assert im.size == (1, 1) and np.asarray(im).tolist() == [[[10, 20, 30]]]


def test_folder_and_unreadable_file_and_non_image(tmp_path, monkeypatch):
    folder = tmp_path / "looks_like.png"
    folder.mkdir()
    for load in (load_rgb, load_for_model):
        with pytest.raises(ImageInputError, match="is a folder"):
            load(folder)
    locked = _write(tmp_path / "locked.png", png_bytes(Image.new("RGB", (4, 4))))
    deny_open(monkeypatch, locked)
    for load in (load_rgb, load_for_model):
        with pytest.raises(ImageInputError, match="permission denied"):
            load(locked)
    monkeypatch.undo()
    with pytest.raises(ImageInputError, match="not an image"):
        load_for_model(b"GIF89a? no, just text")
    with pytest.raises(ImageInputError, match="cannot read a int"):
        load_rgb(12)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads chmod-000 files")
def test_chmod_000_file_for_real(tmp_path):
    p = _write(tmp_path / "x.png", png_bytes(Image.new("RGB", (4, 4))))
    p.chmod(0)
    try:
        with pytest.raises(ImageInputError, match="permission denied"):
            load_rgb(p)
    finally:
        p.chmod(0o644)


# -------------------------------------------------------------------------------- the index
@pytest.fixture()
def hostile_folder(tmp_path, huge_small_png) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    ok = png_bytes(Image.new("RGB", (70, 46), (200, 120, 180)))
    _write(root / NAME.format(1), ok)
    _write(root / NAME.format(2), bomb_png())
    _write(root / NAME.format(3), png_bytes(Image.new("RGB", (1, 1))))
    _write(root / NAME.format(4), huge_small_png)
    (root / NAME.format(5)).mkdir()  # a folder with an image's name
    _write(root / NAME.format(6), ok)  # made unreadable by the test
    _write(root / "SOB_M_DC-14-2523-40-001.png", ok)
    locked = root / "locked"
    locked.mkdir()
    _write(locked / "SOB_M_DC-14-2524-40-001.png", ok)
    return root


def test_scan_turns_every_hostile_file_into_a_row_or_a_problem(hostile_folder, monkeypatch):
    import os as os_module

    deny_open(monkeypatch, hostile_folder / NAME.format(6))
    real_scandir = os_module.scandir

    def scandir(path="."):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os_module, "scandir", scandir)
    monkeypatch.setenv("DALA_MAX_IMAGE_PIXELS", "10000000")  # the 7900x5000 file is over this limit
    t0 = time.perf_counter()
    result = scan(hostile_folder)
    assert time.perf_counter() - t0 < 5
    reasons = dict(zip(result.problems["path"], result.problems["reason"]))
    assert "bomb" in reasons[NAME.format(2)] or "pixel limit" in reasons[NAME.format(2)]
    assert "pixel limit" in reasons[NAME.format(4)]
    assert "permission denied" in reasons[NAME.format(6)].lower()
    assert "locked/" in reasons and "cannot be read" in reasons["locked/"] and "chmod" in reasons["locked/"]
    ids = set(result.index["image_id"])
    assert {NAME.format(1)[:-4], NAME.format(3)[:-4], "SOB_M_DC-14-2523-40-001"} <= ids  # 1x1 is an image
    assert NAME.format(5)[:-4] not in ids  # a folder is not an image (os.walk lists it as a folder)
    assert len(ids) == 3


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root lists chmod-000 folders")
def test_chmod_000_subfolder_for_real(hostile_folder):
    locked = hostile_folder / "locked"
    locked.chmod(0)
    try:
        result = scan(hostile_folder)
    finally:
        locked.chmod(0o755)
    assert "locked/" in set(result.problems["path"])


def test_load_index_of_only_bombs_says_why(tmp_path):
    _write(tmp_path / NAME.format(1), bomb_png())
    from dala.errors import DataError

    with pytest.raises(DataError, match="no BreakHis images.*(bomb|pixel limit)"):
        load_index(tmp_path)


# -------------------------------------------------------------------------------- training data
def test_training_dataset_refuses_a_bomb_with_a_clear_error(tmp_path, huge_small_png):
    from dala.data.dataset import BreakHisDataset, build_transform

    paths = [_write(tmp_path / "bomb.png", bomb_png()), tmp_path / "dir.png",
             _write(tmp_path / "one.png", png_bytes(Image.new("RGB", (1, 1)))),
             _write(tmp_path / "big.png", huge_small_png)]
    paths[1].mkdir()
    frame = pd.DataFrame({"path": [str(p) for p in paths], "target": [0, 1, 0, 1]})
    ds = BreakHisDataset(frame, transform=build_transform("eval", size=32), cache_size=48)
    with pytest.raises(ImageInputError, match="bomb|pixel limit"):
        ds[0]
    with pytest.raises(ImageInputError, match="folder"):
        ds[1]
    x, y = ds[2]
    assert tuple(x.shape) == (3, 32, 32) and y == 0
    x, _ = ds[3]  # decoded within the pixel limit, then resized: bounded and correct
    assert tuple(x.shape) == (3, 32, 32)
    with pytest.raises(ImageInputError):
        BreakHisDataset(frame.iloc[:1], cache_size=16).preload(threads=1)


# -------------------------------------------------------------------------------- predict upload path
def test_predict_images_is_bounded_and_clear(huge_small_png, tmp_path):
    import torch

    from dala.train.predict import predict_images

    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):  # (B, 3, S, S)
            seen.append(tuple(x.shape))
            return torch.zeros(x.shape[0], 2)

    cfg = {"input_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}
    probs = predict_images(Probe(), cfg, [huge_small_png, png_bytes(Image.new("RGB", (1, 1)))])
    assert probs.shape == (2, 2) and seen == [(2, 3, 32, 32)]
    for bad, why in ((bomb_png(), "bomb|pixel limit"), (tmp_path, "folder"), (b"", "empty")):
        with pytest.raises(ImageInputError, match=why):
            predict_images(Probe(), cfg, [bad])
