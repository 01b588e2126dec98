"""Stain normalisation (dala.data.stain, torchstain underneath): a stain-shifted copy of an image
is mapped back near the reference; images the method cannot handle pass through with a note,
never black or NaN; bad references are refused; the CLI writes one PNG per input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dala.data.stain import METHODS, RUIFROK_E, RUIFROK_H, StainNormalizer, StainReferenceError, stain_problem

SIZE = (160, 104)  # (W, H): small, fast, still real tissue


def _load(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB").resize(SIZE, Image.BILINEAR)).copy()  # (H, W, 3)


def _stain_shift(rgb: np.ndarray, amounts=(1.3, 0.7)) -> np.ndarray:
    """The same field as another lab would stain it: colour-deconvolved into Ruifrok-Johnston H&E
    concentrations, haematoxylin x1.3 and eosin x0.7, rebuilt with slightly different stain
    vectors (another haematoxylin, another eosin)."""
    def basis(h, e):
        h, e = np.asarray(h, float), np.asarray(e, float)
        rows = [h, e, np.cross(h, e)]
        return np.stack([r / np.linalg.norm(r) for r in rows])  # (3 stains, 3 channels)

    ours, theirs = basis(RUIFROK_H, RUIFROK_E), basis((0.60, 0.74, 0.30), (0.10, 0.97, 0.20))
    od = -np.log((rgb.astype(np.float64) + 1) / 256).reshape(-1, 3)  # (N, 3)
    conc = od @ np.linalg.inv(ours) * np.array([*amounts, 1.0])
    return np.clip(256 * np.exp(-(conc @ theirs)) - 1, 0, 255).round().astype(np.uint8).reshape(rgb.shape)


def _chw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(2, 0, 1).contiguous()


@pytest.fixture(scope="module")
def fields(real_samples):
    picks = ("SOB_M_DC-14-2523-40", "SOB_M_PC-14-9146-40", "SOB_B_F-14-25197-100")
    return [_load(next(p for p in sorted(real_samples) if p.name.startswith(k))) for k in picks]


# Reinhard matches colour statistics by construction; Macenko matches stain vectors and the 99th
# percentile of concentrations, so its channel means come back less exactly
@pytest.mark.parametrize("method, max_ratio, mean_tol", [("reinhard", 0.4, 10), ("macenko", 0.6, 15)])
def test_a_stain_shifted_copy_is_mapped_back_near_the_reference(fields, method, max_ratio, mean_tol):
    torch.set_num_threads(1)
    before, after = [], []
    for ref in fields:
        shifted = _stain_shift(ref)
        batch = StainNormalizer(method, reference=ref)(_chw(shifted))
        assert batch.normalised == [True] and batch.notes == [None]
        out = batch.images[0].permute(1, 2, 0).numpy().astype(float)
        before.append(np.abs(shifted.astype(float) - ref).mean())
        after.append(np.abs(out - ref).mean())
        assert after[-1] < before[-1], (method, before, after)  # every field comes closer
        # colour statistics come back: channel means within mean_tol levels of the reference
        assert np.abs(out.reshape(-1, 3).mean(0) - ref.reshape(-1, 3).mean(0)).max() < mean_tol
    assert np.mean(after) < max_ratio * np.mean(before), (method, before, after)


def test_batched_in_and_out(fields):
    norm = StainNormalizer("macenko", reference=fields[0])
    batch = torch.stack([_chw(_stain_shift(f)) for f in fields])  # (3, 3, H, W)
    out = norm(batch)
    assert out.images.shape == batch.shape and out.images.dtype == torch.uint8 and out.normalised == [True] * 3
    listed = norm([f for f in fields])  # HxWx3 arrays work too
    assert listed.images.shape == batch.shape


@pytest.mark.parametrize("method", METHODS)
def test_background_and_greyscale_images_pass_through_with_a_note(fields, method):
    norm = StainNormalizer(method, reference=fields[0])
    white = np.full((SIZE[1], SIZE[0], 3), 245, np.uint8)
    mostly_white = white.copy()
    mostly_white[:6, :6] = fields[0][:6, :6]  # a speck of tissue
    grey = np.repeat(fields[0].mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)
    batch = norm(torch.stack([_chw(mostly_white), _chw(grey), _chw(white)]))
    assert batch.normalised == [False, False, False]
    assert "background" in batch.notes[0] and "greyscale" in batch.notes[1] and "background" in batch.notes[2]
    assert torch.equal(batch.images[0], _chw(mostly_white)) and torch.equal(batch.images[1], _chw(grey))


def test_macenko_estimate_gone_wrong_falls_back_never_black_or_nan(fields):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (SIZE[1], SIZE[0], 3), dtype=np.uint8)
    green = np.zeros_like(noise)
    green[..., 1] = rng.integers(60, 200, green.shape[:2])
    green[..., 0] = green[..., 2] = 30
    norm = StainNormalizer("macenko", reference=fields[0])
    batch = norm(torch.stack([_chw(noise), _chw(green)]))
    assert batch.normalised == [False, False]
    assert all("not H&E-like" in n for n in batch.notes)
    assert torch.equal(batch.images[0], _chw(noise))
    assert stain_problem(_chw(fields[1])) is None


@pytest.mark.parametrize("make, why", [
    (lambda f: np.full((104, 160, 3), 250, np.uint8), "mostly blank"),
    (lambda f: f[:20, :20], "too small"),
    (lambda f: f.mean(axis=2).astype(np.uint8), "expected an RGB image"),
    (lambda f: np.repeat(f.mean(axis=2, keepdims=True), 3, axis=2).astype(np.uint8), "greyscale"),
    (lambda f: np.random.default_rng(0).integers(0, 255, f.shape, dtype=np.uint8), "does not look like H&E"),
    (lambda f: np.dstack([np.full(f.shape[:2], 30), np.random.default_rng(1).integers(60, 200, f.shape[:2]),
                          np.full(f.shape[:2], 30)]).astype(np.uint8), "does not look like H&E"),
    (lambda f: Image.fromarray(f).convert("L"), "not RGB"),
])
def test_bad_references_are_refused_clearly(fields, make, why):
    with pytest.raises(StainReferenceError, match=why):
        StainNormalizer("reinhard", reference=make(fields[0]))


def test_unknown_method_and_bad_batch_shape(fields):
    from dala.errors import DataError

    with pytest.raises(DataError, match="unknown"):
        StainNormalizer("vahadane", reference=fields[0])
    with pytest.raises(DataError, match=r"\(B, 3, H, W\)"):
        StainNormalizer("reinhard", reference=fields[0])(torch.zeros(2, 4, 8, 8, dtype=torch.uint8))


def test_cli_writes_each_input_normalised_as_a_png_of_the_same_name(fields, tmp_path, capsys):
    from dala.cli import main

    ref = tmp_path / "ref.png"
    Image.fromarray(fields[0]).save(ref)
    a, b = tmp_path / "a.jpg", tmp_path / "b.png"
    Image.fromarray(_stain_shift(fields[1])).save(a, quality=95)
    Image.fromarray(np.full((64, 64, 3), 245, np.uint8)).save(b)  # background: passed through, said so
    out = tmp_path / "out"
    assert main(["stain", "--method", "reinhard", "--reference", str(ref), "--out", str(out), str(a), str(b)]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    assert "left as it is" in printed and "mostly background" in printed
    with Image.open(out / "a.png") as im:
        assert im.size == SIZE
    # a bad reference is one line, exit 2
    assert main(["stain", "--method", "macenko", "--reference", str(b), "--out", str(out), str(a)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "mostly blank" in err and "Traceback" not in err
