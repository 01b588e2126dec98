"""Owns the colour of a field: the Ruifrok-Johnston H&E optical-density vectors, each patient's
stain signature, the haematoxylin / eosin concentration maps of a field, the Beer-Lambert
conversion to RGB and the colour-moment matching."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from dala.data.synth.texture import _fibres, _smooth_noise, _warp
from dala.data.synth.tissue import _EPI, _LUMEN, _MUCIN, _STROMA, _Field

# Ruifrok & Johnston (2001) optical-density vectors (R, G, B) for haematoxylin and eosin.
_RJ_H = np.array([0.650, 0.704, 0.286])
_RJ_E = np.array([0.072, 0.990, 0.105])


@dataclass(frozen=True)
class Signature:
    """How one patient's slides look, independent of the diagnosis."""

    v_h: np.ndarray  # (3,) unit OD vector of haematoxylin
    v_e: np.ndarray  # (3,) unit OD vector of eosin
    s_h: float  # haematoxylin strength
    s_e: float  # eosin strength
    i0: np.ndarray  # (3,) background (illumination) brightness
    blur: float  # focus blur, in pixels at 350 px width
    fibre_len: float  # collagen fibre length (um)
    fibre_contrast: float
    stroma_e: float  # eosin density of stroma
    holes: float  # fraction of the field that is empty (tears, fat)
    waviness: float
    lumen_tint: float  # pink secretion in lumens
    noise: float  # camera noise amplitude (grey levels)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def patient_signature(seed: int, patient: int) -> Signature:
    rng = np.random.default_rng(np.random.SeedSequence([seed, patient, 9_999]))
    v_h = _unit(np.abs(_RJ_H + rng.normal(0, 0.06, 3)))
    v_e = _unit(np.abs(_RJ_E + rng.normal(0, 0.05, 3) * np.array([1.0, 0.3, 1.0]) + [0, 0, 0.04 * rng.random()]))
    base = rng.uniform(222, 248)
    return Signature(
        v_h=v_h, v_e=v_e,
        s_h=float(rng.uniform(0.75, 1.3)),
        s_e=float(np.clip(np.exp(rng.normal(0, 0.22)), 0.65, 1.45)),
        i0=np.clip(base + rng.normal(0, 4, 3), 200, 254),
        blur=float(rng.uniform(0.0, 1.1)),
        fibre_len=float(rng.uniform(12, 40)),
        fibre_contrast=float(rng.uniform(0.25, 0.55)),
        stroma_e=float(rng.uniform(0.4, 0.7)),
        holes=float(rng.uniform(0.02, 0.12)),
        waviness=float(rng.uniform(0.5, 2.5)),
        lumen_tint=float(rng.uniform(0.0, 0.25)),
        noise=float(rng.uniform(1.0, 4.0)),
    )


def _render_stains(f: _Field, sig: Signature, rng: np.random.Generator, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Concentration maps (cH, cE) from the labels and nuclei of a field."""
    h, w = f.h, f.w
    lab = f.labels
    fw = min(f.px(2.0), 2.5)  # collagen fibres stay fine at high magnification
    fib1 = _fibres(rng, h, w, f.px(sig.fibre_len), fw, theta)
    fib2 = _fibres(rng, h, w, f.px(sig.fibre_len), fw, theta + rng.uniform(0.6, 1.2))
    mix = 1 / (1 + np.exp(-2 * _smooth_noise(rng, h, w, f.px(80))))
    fib = fib1 * mix + fib2 * (1 - mix)
    fib = _warp(fib, rng, f.px(sig.waviness * 3), f.px(15))
    coarse = _smooth_noise(rng, h, w, f.px(40))
    fine = _smooth_noise(rng, h, w, max(0.6, f.px(1.2)))
    mod = _smooth_noise(rng, h, w, f.px(6))
    stroma_e = sig.stroma_e * np.clip(1 + sig.fibre_contrast * fib * (1 + 0.4 * mod) + 0.15 * coarse
                                      + 0.08 * fine, 0.05, None)
    # loose (pale) stroma gaps between collagen bundles
    stroma_e *= np.clip(1.0 + 0.6 * np.minimum(fib + 1.2, 0), 0.15, 1)
    cE = np.zeros((h, w), np.float32)
    cH = np.zeros((h, w), np.float32)
    s = lab == _STROMA
    cE[s] = stroma_e[s]
    cH[s] = 0.05
    s = lab == _EPI
    cE[s] = (0.28 + 0.05 * fine[s]) * (0.8 + 0.4 * sig.stroma_e)
    cH[s] = 0.16 + 0.03 * fine[s]
    s = lab == _LUMEN
    cE[s] = sig.lumen_tint * np.clip(0.5 + 0.5 * coarse[s], 0, 1)
    cH[s] = 0.01
    s = lab == _MUCIN
    wisps = np.clip(0.6 + 0.5 * fib[s] + 0.2 * fine[s], 0.05, 1.5)
    cH[s] = 0.22 * wisps
    cE[s] = 0.06 * wisps
    # soften tissue boundaries a little (sections are not cut with a ruler)
    cE = cv2.GaussianBlur(cE, (0, 0), 0.7)
    cH = cv2.GaussianBlur(cH, (0, 0), 0.7)
    # nuclei on top: chromatin texture (coarser clumps in carcinoma), cytoplasm displaced
    hmap, cover, chrom = f.render_nuclei()
    clumps = _smooth_noise(rng, h, w, max(0.5, f.px(0.7)))
    hmap = hmap * np.clip(1 + chrom * clumps, 0.3, None)
    edge = max(0.35, f.px(0.3))
    hmap = cv2.GaussianBlur(hmap, (0, 0), edge)
    cover = cv2.GaussianBlur(cover, (0, 0), edge)
    cH = cH * (1 - cover) + 1.45 * hmap
    cE = cE * (1 - 0.7 * cover) + 0.12 * cover
    return np.clip(cH, 0, None), np.clip(cE, 0, None)


def _to_rgb(cH: np.ndarray, cE: np.ndarray, sig: Signature, rng: np.random.Generator,
            width: int) -> np.ndarray:
    """Beer-Lambert: I = I0 * exp(-(cH * sH * vH + cE * sE * vE)), then focus blur and noise."""
    od = (cH[..., None] * (sig.s_h * sig.v_h)[None, None, :].astype(np.float32)
          + cE[..., None] * (sig.s_e * sig.v_e)[None, None, :].astype(np.float32))
    rgb = sig.i0.astype(np.float32)[None, None, :] * np.exp(-od)
    blur = sig.blur * width / 350.0
    if blur > 0.25:
        rgb = cv2.GaussianBlur(rgb, (0, 0), blur)
    rgb += rng.standard_normal(rgb.shape, dtype=np.float32) * np.float32(sig.noise)
    return rgb


def _match_moments(rgb: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    m = rgb.reshape(-1, 3).mean(0)
    s = rgb.reshape(-1, 3).std(0) + 1e-3
    return (rgb - m) * (std / s) + mean
