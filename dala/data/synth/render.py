"""Owns one image: the scale (pixels per micrometre at a magnification), the lesion region of a
malignant field, the per-image seed, and the patient-level colour matching that leaves global
colour statistics without class information."""

from __future__ import annotations

import cv2
import numpy as np

from dala.data.synth.patients import _SUBTYPES, Patient
from dala.data.synth.stain_physics import Signature, _match_moments, _render_stains, _to_rgb, patient_signature
from dala.data.synth.texture import _blob_mask, _smooth_noise, _warp
from dala.data.synth.tissue import _BG, _STROMA, _benign_layout, _Field, _malignant_layout

def _pixels_per_um(width: int, mag: int) -> float:
    # BreakHis: 700 px wide; ~0.75 px/um at 40X in that frame, linear in magnification
    return (width / 700.0) * 0.75 * (mag / 40.0)


def render_image(*, seed: int, patient: Patient, mag: int, seq: int, size: tuple[int, int],
                 difficulty: float, sig: Signature | None = None,
                 kind_override: str | None = None, lesion: bool | None = None,
                 px_width: int | None = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Render one field before colour matching: (rgb float (H, W, 3), mask or None, raw stats).

    ``kind_override='N'`` with ``lesion=False`` renders the class-agnostic reference field;
    ``px_width`` sets the scale (pixels per micrometre) as if the field were that wide, so a
    smaller crop of the same tissue can be rendered.
    """
    w, h = size
    pw = px_width or w
    sig = sig or patient_signature(seed, patient.index)
    rng = np.random.default_rng(np.random.SeedSequence([seed, patient.index, mag, seq]))
    f = _Field(h, w, _pixels_per_um(pw, mag), rng)
    theta = float(rng.uniform(0, np.pi))
    kind = kind_override or patient.subtype
    malignant = (patient.label == "malignant") if lesion is None else lesion
    everywhere = np.ones((h, w), bool)
    mask = None
    if malignant:
        frac = rng.uniform(0.25, 0.6)
        ang = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        ramp = ((xx - w / 2) * np.cos(ang) + (yy - h / 2) * np.sin(ang)) / (0.25 * max(h, w))
        field = ramp + 0.7 * _smooth_noise(rng, h, w, 0.12 * max(h, w))
        lesion_m = field > np.quantile(field, 1 - frac)
        _benign_layout(f, "N", ~lesion_m, theta)
        f.drop_nuclei(lesion_m)
        f.labels[lesion_m] = _STROMA
        _malignant_layout(f, kind, lesion_m, theta, difficulty)
        mask = lesion_m
    else:
        _benign_layout(f, kind if kind in _SUBTYPES else "N", everywhere, theta)
    # empty space: tears and fat, the same amount for both classes
    holes = _blob_mask(rng, h, w, f.px(25) + 2, sig.holes * rng.uniform(0.5, 1.5))
    holes = _warp(holes.astype(np.uint8), rng, f.px(4), f.px(8), cv2.INTER_NEAREST) > 0
    f.labels[holes] = _BG
    f.drop_nuclei(holes)
    if mask is not None:
        mask = mask & ~holes
    cH, cE = _render_stains(f, sig, rng, theta)
    rgb = _to_rgb(cH, cE, sig, rng, pw)
    return rgb, mask, np.concatenate([rgb.reshape(-1, 3).mean(0), rgb.reshape(-1, 3).std(0)])


def _reference_stats(seed: int, patient: Patient, mag: int, size: tuple[int, int], sig: Signature) -> np.ndarray:
    """Colour statistics of a class-agnostic field of this patient at this magnification."""
    w, h = size  # a half-size crop at full scale: same statistics, a quarter of the work
    _, _, stats = render_image(seed=seed, patient=patient, mag=mag, seq=100_000,
                               size=(max(16, w // 2), max(16, h // 2)), difficulty=0.5, sig=sig,
                               kind_override="N", lesion=False, px_width=w)
    return stats


def _finish(rgb: np.ndarray, ref: np.ndarray, seed: int, patient: int, mag: int, seq: int) -> np.ndarray:
    """Match per-channel mean/std to the patient's reference (+ a little per-image jitter)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, patient, mag, seq, 31_337]))
    mean = ref[:3] + rng.normal(0, 2.0) + rng.normal(0, 1.0, 3)
    std = ref[3:] * np.exp(rng.normal(0, 0.04))
    out = rgb
    for _ in range(4):  # clip and re-match: the statistics stay exact despite the 0..255 range
        out = np.clip(_match_moments(out, mean, std), 0.0, 255.0)
    return np.rint(out).astype(np.uint8)
