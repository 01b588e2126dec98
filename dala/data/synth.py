"""The embedded default dataset: a BreakHis-like synthetic histopathology set.

The real BreakHis images cannot ship with the app and the lab machines cannot download them, so
the app starts on images generated here, written in the exact BreakHis folder layout and file
naming so one loader (:mod:`dala.data.index`) serves both. It is a teaching stand-in, labelled
synthetic everywhere (the ``SYNTHETIC`` marker file at the dataset root), never real tissue.

How an image is made (see ``docs/synthetic.md``):

* **Stain physics, not RGB painting.** Each field is rendered as two concentration maps, for
  haematoxylin (nuclei, mucin) and eosin (stroma, cytoplasm), and turned into colour with the
  Beer-Lambert law ``RGB = I0 * exp(-(cH * vH + cE * vE))`` using the Ruifrok-Johnston H&E
  optical-density vectors.
* **A per-patient signature** (stain vectors rotated a little, stain strengths, background
  brightness and tint, focus blur, fibre texture, amount of empty space) drawn from one
  distribution for both classes. An image-level split lets a model recognise patients by it.
* **The class signal is morphology only**: malignant fields hold a lesion region (25-60 % of the
  field, its mask written beside the image) of large, pleomorphic, hyperchromatic, crowded
  nuclei in a subtype-specific architecture; benign fields hold no atypical cells. Each image's
  per-channel mean and standard deviation are then matched to targets that depend on the patient
  and magnification only, so global colour statistics carry no class information.
* ``difficulty`` in [0, 1] shrinks the nuclear size / pleomorphism / darkness / crowding gap.
* Magnification scales everything: at 40X many small structures, at 400X a few large nuclei.

Every image has its own seed derived from ``(seed, patient, magnification, seq)``, and PNGs are
written with fixed settings, so a seed gives the same bytes on every run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

import cv2
import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

#: Bump when the rendering changes, so cached default datasets are regenerated.
GENERATOR_VERSION = 1

#: The app's embedded default: 82 patients (BreakHis's count, in its subtype proportions) x 4
#: magnifications x 2 images = 656 images. The patient is the unit of every split, so patients,
#: not images per patient, decide how well a score on new patients can be measured: with 40
#: patients x 4 images (an earlier default, same image count) validation held 8 patients and
#: picked epochs by noise (validation GMean 0.78 at an epoch that scored 0.27 on the 13 test
#: patients); with 82, validation holds 14 patients and test 25.
DEFAULT_PARAMS: dict = {
    "seed": 0,
    "n_patients": 82,
    "images_per_mag": 2,
    "size": (350, 230),
    "difficulty": 0.5,
    "magnifications": (40, 100, 200, 400),
    "benign_fraction": 0.31,
}

# code -> (class, BreakHis folder name, patients among BreakHis's 82)
_SUBTYPES: dict[str, tuple[str, str, int]] = {
    "A": ("benign", "adenosis", 4),
    "F": ("benign", "fibroadenoma", 10),
    "PT": ("benign", "phyllodes_tumor", 3),
    "TA": ("benign", "tubular_adenoma", 7),
    "DC": ("malignant", "ductal_carcinoma", 38),
    "LC": ("malignant", "lobular_carcinoma", 5),
    "MC": ("malignant", "mucinous_carcinoma", 9),
    "PC": ("malignant", "papillary_carcinoma", 6),
}
_BENIGN = ("A", "F", "PT", "TA")
_MALIGNANT = ("DC", "LC", "MC", "PC")

# Ruifrok & Johnston (2001) optical-density vectors (R, G, B) for haematoxylin and eosin.
_RJ_H = np.array([0.650, 0.704, 0.286])
_RJ_E = np.array([0.072, 0.990, 0.105])

# tissue labels of a field
_BG, _STROMA, _EPI, _LUMEN, _MUCIN = 0, 1, 2, 3, 4

ProgressArg = Union[bool, Callable[[int, int], None]]


# --------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class Patient:
    """One synthetic patient = one BreakHis slide folder."""

    index: int
    subtype: str  # A F PT TA DC LC MC PC
    year: int  # 13, 14 or 15 as in BreakHis's slide names
    slide_id: str  # e.g. "22549AB"

    @property
    def label(self) -> str:
        return _SUBTYPES[self.subtype][0]

    @property
    def letter(self) -> str:
        return "B" if self.label == "benign" else "M"

    @property
    def slide_dir(self) -> str:
        return f"SOB_{self.letter}_{self.subtype}_{self.year}-{self.slide_id}"

    def rel_dir(self, mag: int) -> Path:
        return (Path("BreaKHis_v1", "histology_slides", "breast", self.label, "SOB",
                     _SUBTYPES[self.subtype][1], self.slide_dir, f"{mag}X"))

    def file_name(self, mag: int, seq: int) -> str:
        return f"SOB_{self.letter}_{self.subtype}-{self.year}-{self.slide_id}-{mag}-{seq:03d}.png"


def _apportion(n: int, codes: tuple[str, ...], *, at_least_one: bool) -> dict[str, int]:
    """Split ``n`` patients over ``codes`` in BreakHis proportions (largest remainder), then give
    every empty subtype one patient taken from the largest, when there are enough patients."""
    weights = np.array([_SUBTYPES[c][2] for c in codes], float)
    share = weights / weights.sum() * n
    counts = np.floor(share).astype(int)
    order = np.argsort(-(share - np.floor(share)), kind="stable")
    for i in order[: n - counts.sum()]:
        counts[i] += 1
    if at_least_one and n >= len(codes):
        for i in np.flatnonzero(counts == 0):
            counts[int(np.argmax(counts))] -= 1
            counts[i] += 1
    return dict(zip(codes, counts.tolist()))


def plan_patients(n_patients: int, *, seed: int = 0, benign_fraction: float = 0.31) -> list[Patient]:
    """Patients with subtypes in BreakHis proportions and BreakHis-looking unique slide ids.

    Every subtype gets a patient when ``n_patients >= 8``; there are at least two benign and two
    malignant patients when ``n_patients >= 4``. Every patient has the same number of images, so
    the benign image fraction equals the benign patient fraction (about ``benign_fraction``).
    """
    if n_patients < 2:
        raise ValueError("n_patients must be at least 2 (one benign, one malignant)")
    n_b = int(round(benign_fraction * n_patients))
    lo = 4 if n_patients >= 8 else (2 if n_patients >= 4 else 1)
    n_b = min(max(n_b, lo), n_patients - lo)
    counts = {**_apportion(n_b, _BENIGN, at_least_one=True),
              **_apportion(n_patients - n_b, _MALIGNANT, at_least_one=True)}
    codes = [c for c in (*_BENIGN, *_MALIGNANT) for _ in range(counts[c])]
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7_000_001]))
    order = rng.permutation(len(codes))  # interleave classes in patient numbering
    used: set[str] = set()
    patients = []
    for i, j in enumerate(order):
        while True:
            num = int(rng.integers(1000, 30000))
            u = rng.random()
            suffix = "" if u < 0.6 else (chr(65 + int(rng.integers(0, 8))) if u < 0.78 else
                                         ["AB", "CD", "EF", "GH"][int(rng.integers(0, 4))])
            sid = f"{num}{suffix}"
            if sid not in used:
                used.add(sid)
                break
        year = int(rng.choice([13, 14, 14, 14, 14, 14, 15]))
        patients.append(Patient(index=i, subtype=codes[j], year=year, slide_id=sid))
    return patients


# --------------------------------------------------------------------------- patient signature
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


# --------------------------------------------------------------------------- noise helpers
def _smooth_noise(rng: np.random.Generator, h: int, w: int, sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise, zero mean, unit std; cost independent of ``sigma``."""
    f = max(1.0, sigma / 2.0)
    lh, lw = int(np.ceil(h / f)) + 3, int(np.ceil(w / f)) + 3
    n = rng.standard_normal((lh, lw)).astype(np.float32)
    s = sigma / f
    if s > 0.3:
        n = cv2.GaussianBlur(n, (0, 0), s, borderType=cv2.BORDER_REFLECT)
    if f > 1.0:
        n = cv2.resize(n, (int(round(lw * f)), int(round(lh * f))), interpolation=cv2.INTER_CUBIC)
    n = n[:h, :w]
    return (n - n.mean()) / (n.std() + 1e-6)


def _fibres(rng: np.random.Generator, h: int, w: int, length: float, width: float,
            theta: float) -> np.ndarray:
    """Oriented fibrous texture: noise smeared along ``theta`` (pixels), zero mean unit std."""
    ds = max(1.0, width / 1.2)
    lh, lw = int(np.ceil(h / ds)) + 2, int(np.ceil(w / ds)) + 2
    n = rng.standard_normal((lh, lw)).astype(np.float32)
    L = int(np.clip(length / ds, 3, 41)) | 1
    k = np.zeros((L, L), np.float32)
    c = L // 2
    dx, dy = np.cos(theta) * c, np.sin(theta) * c
    cv2.line(k, (int(round(c - dx)), int(round(c - dy))), (int(round(c + dx)), int(round(c + dy))), 1.0, 1)
    k /= k.sum()
    t = cv2.filter2D(n, -1, k, borderType=cv2.BORDER_REFLECT)
    if ds > 1.0:
        t = cv2.resize(t, (int(round(lw * ds)), int(round(lh * ds))), interpolation=cv2.INTER_CUBIC)
    t = t[:h, :w]
    return (t - t.mean()) / (t.std() + 1e-6)


def _warp(img: np.ndarray, rng: np.random.Generator, amp: float, scale: float,
          interp: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Smooth random displacement (waviness of fibres, irregular outlines)."""
    h, w = img.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    dx = _smooth_noise(rng, h, w, scale) * amp
    dy = _smooth_noise(rng, h, w, scale) * amp
    return cv2.remap(img, gx + dx, gy + dy, interp, borderMode=cv2.BORDER_REFLECT)


def _blob_mask(rng: np.random.Generator, h: int, w: int, sigma: float, fraction: float,
               within: np.ndarray | None = None) -> np.ndarray:
    """Irregular blobs covering about ``fraction`` of the field (or of ``within``)."""
    n = _smooth_noise(rng, h, w, sigma)
    vals = n[within] if within is not None and within.any() else n.ravel()
    thr = np.quantile(vals, 1.0 - fraction) if fraction < 1 else -np.inf
    m = n > thr
    return m & within if within is not None else m


def _jittered_grid(rng: np.random.Generator, h: int, w: int, spacing: float, jitter: float,
                   offset: bool = True) -> np.ndarray:
    """Roughly evenly spaced points (x, y): a hexagonal grid with random jitter."""
    spacing = max(spacing, 0.8)
    dy = spacing * 0.866
    ys = np.arange(-1, h / dy + 1) * dy
    xs = np.arange(-1, w / spacing + 1) * spacing
    X, Y = np.meshgrid(xs, ys)
    if offset:
        X = X + (np.arange(len(ys))[:, None] % 2) * spacing / 2
    pts = np.stack([X.ravel(), Y.ravel()], 1) + rng.uniform(0, spacing, 2)
    pts = pts + rng.normal(0, jitter * spacing, pts.shape)
    keep = (pts[:, 0] >= 0) & (pts[:, 0] < w) & (pts[:, 1] >= 0) & (pts[:, 1] < h)
    return pts[keep]


def _inside(pts: np.ndarray, mask: np.ndarray) -> np.ndarray:
    if len(pts) == 0:
        return pts
    xi = np.clip(pts[:, 0].astype(int), 0, mask.shape[1] - 1)
    yi = np.clip(pts[:, 1].astype(int), 0, mask.shape[0] - 1)
    return pts[mask[yi, xi]]


# --------------------------------------------------------------------------- drawing
class _Field:
    """Tissue labels plus a list of nuclei for one field; turned into stain maps at the end."""

    def __init__(self, h: int, w: int, p: float, rng: np.random.Generator):
        self.h, self.w, self.p, self.rng = h, w, p, rng  # p: pixels per micrometre
        self.labels = np.full((h, w), _STROMA, np.uint8)
        # nuclei: x, y, a (px), b (px), angle (deg), darkness, irregularity
        self.nuc: list[np.ndarray] = []

    def px(self, um: float) -> float:
        return um * self.p

    def add_nuclei(self, pts: np.ndarray, r_um: float, *, cv: float = 0.08, elong: tuple = (0.8, 1.0),
                   dark: float = 1.0, dark_cv: float = 0.08, irregular: float = 0.05,
                   angle: np.ndarray | float | None = None, chromatin: float = 0.15,
                   nucleoli: float = 0.0) -> None:
        n = len(pts)
        if n == 0:
            return
        rng = self.rng
        r = self.px(r_um) * np.exp(rng.normal(0, cv, n))
        e = rng.uniform(*elong, n)
        a = r / np.sqrt(e)
        b = r * np.sqrt(e)
        ang = rng.uniform(0, 180, n) if angle is None else np.broadcast_to(np.asarray(angle, float), (n,))
        d = dark * np.exp(rng.normal(0, dark_cv, n))
        irr = np.full(n, irregular)
        chrom = np.full(n, chromatin)
        nucl = (rng.random(n) < nucleoli).astype(float)
        self.nuc.append(np.stack([pts[:, 0], pts[:, 1], a, b, ang, d, irr, chrom, nucl], 1))

    def drop_nuclei(self, region: np.ndarray) -> None:
        """Remove nuclei whose centres fall in ``region`` (bool map)."""
        out = []
        for arr in self.nuc:
            xi = np.clip(arr[:, 0].astype(int), 0, self.w - 1)
            yi = np.clip(arr[:, 1].astype(int), 0, self.h - 1)
            out.append(arr[~region[yi, xi]])
        self.nuc = out

    def render_nuclei(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Haematoxylin map of the nuclei, their coverage (0..1) and chromatin clumping map."""
        h, w = self.h, self.w
        hmap = np.zeros((h, w), np.float32)
        cover = np.zeros((h, w), np.float32)
        chrom = np.zeros((h, w), np.float32)
        if not self.nuc or sum(len(a) for a in self.nuc) == 0:
            return hmap, cover, chrom
        allnuc = np.concatenate(self.nuc)
        rng = self.rng
        k = 14
        t = np.linspace(0, 2 * np.pi, k, endpoint=False)
        n = len(allnuc)
        # irregular outlines: radial perturbation with a few random harmonics
        ph = rng.uniform(0, 2 * np.pi, (n, 3))
        amp = allnuc[:, 6:7] * rng.uniform(0.3, 1.0, (n, 3))
        rad = 1 + amp[:, 0:1] * np.sin(2 * t + ph[:, 0:1]) + amp[:, 1:2] * np.sin(3 * t + ph[:, 1:2]) \
            + amp[:, 2:3] * 0.6 * np.sin(5 * t + ph[:, 2:3])
        th = np.deg2rad(allnuc[:, 4:5])
        ex = allnuc[:, 2:3] * rad * np.cos(t)
        ey = allnuc[:, 3:4] * rad * np.sin(t)
        X = allnuc[:, 0:1] + ex * np.cos(th) - ey * np.sin(th)
        Y = allnuc[:, 1:2] + ex * np.sin(th) + ey * np.cos(th)
        polys = (np.stack([X, Y], 2) * 4).astype(np.int32)  # shift=2 -> quarter-pixel precision
        dark = allnuc[:, 5]
        # the chromatin amplitude rides on the darkness value (one fill per nucleus, not two):
        # value = 8 * round(32 * chromatin) + darkness, decoded below (darkness < 8 always)
        code = 8.0 * np.round(allnuc[:, 7] * 32) + np.minimum(dark, 7.9)
        for i in range(n):
            cv2.fillPoly(hmap, [polys[i]], float(code[i]), cv2.LINE_8, 2)
        k = np.floor(hmap / 8)
        hmap = hmap - 8 * k
        chrom = (k / 32).astype(np.float32)
        # prominent nucleoli (carcinoma cells), visible once a nucleus spans several pixels
        sel = (allnuc[:, 8] > 0) & (allnuc[:, 3] > 3.5)
        for x, y, a, b, dk in allnuc[sel][:, [0, 1, 2, 3, 5]]:
            off = rng.uniform(-0.3, 0.3, 2) * b
            rr = max(1.0, 0.22 * b)
            cv2.circle(hmap, (int((x + off[0]) * 4), int((y + off[1]) * 4)), int(rr * 4), float(dk * 1.6), -1,
                       cv2.LINE_8, 2)
        cover = (hmap > 0).astype(np.float32)
        return hmap, cover, chrom


def _draw_glands(f: _Field, centres: np.ndarray, r_um: np.ndarray, *, lumen_ratio: np.ndarray,
                 aspect: np.ndarray, wobble: float = 0.08) -> tuple[np.ndarray, np.ndarray]:
    """Round or oval glands: an epithelial wall around a lumen. Returns (wall, lumen) masks."""
    rng = f.rng
    k = 28
    t = np.linspace(0, 2 * np.pi, k, endpoint=False)
    outer = np.zeros((f.h, f.w), np.uint8)
    lumen = np.zeros((f.h, f.w), np.uint8)
    for (cx, cy), r, lr, asp in zip(centres, r_um, lumen_ratio, aspect):
        R = f.px(r)
        ph = rng.uniform(0, 2 * np.pi, 2)
        rad = 1 + wobble * (np.sin(2 * t + ph[0]) + 0.6 * np.sin(3 * t + ph[1]))
        th = rng.uniform(0, np.pi)
        for arr, scale in ((outer, 1.0), (lumen, lr)):
            ex = R * scale * rad * np.cos(t) * np.sqrt(asp)
            ey = R * scale * rad * np.sin(t) / np.sqrt(asp)
            X = cx + ex * np.cos(th) - ey * np.sin(th)
            Y = cy + ex * np.sin(th) + ey * np.cos(th)
            cv2.fillPoly(arr, [(np.stack([X, Y], 1) * 4).astype(np.int32)], 1, cv2.LINE_8, 2)
    wall = (outer > 0) & (lumen == 0)
    return wall, lumen > 0


def _line_nuclei(f: _Field, wall: np.ndarray, r_um: float, *, layers: float = 1.0, **kw) -> None:
    """Evenly spaced small nuclei lining an epithelial wall (one or two layers)."""
    pts = _jittered_grid(f.rng, f.h, f.w, f.px(r_um) * 2.4 / layers ** 0.5, 0.12)
    kw.setdefault("elong", (0.55, 0.9))
    kw.setdefault("dark", 0.92)
    f.add_nuclei(_inside(pts, wall), r_um, **kw)


def _scatter_centres(rng: np.random.Generator, n: int, h: int, w: int, min_d: float,
                     within: np.ndarray | None = None) -> np.ndarray:
    """Up to ``n`` points roughly ``min_d`` apart: a jittered hexagonal grid, randomly thinned."""
    pts = _jittered_grid(rng, h, w, min_d, 0.1)
    if within is not None:
        pts = _inside(pts, within)
    return pts[rng.permutation(len(pts))[:n]]


# ----- ordinary and benign architecture
def _stroma_cells(f: _Field, region: np.ndarray, theta: float, *, density: float = 1.0) -> None:
    """Spindle fibroblasts along the fibres and a few lymphocytes (both classes)."""
    pts = _inside(_jittered_grid(f.rng, f.h, f.w, f.px(22) / np.sqrt(density), 0.5), region)
    f.add_nuclei(pts, 2.0, elong=(0.15, 0.3), dark=0.9, angle=np.rad2deg(theta) + f.rng.normal(0, 12, len(pts)))
    pts = _inside(f.rng.uniform(0, 1, (int(f.h * f.w / f.px(45) ** 2) + 1, 2)) * [f.w, f.h], region)
    f.add_nuclei(pts, 2.4, elong=(0.85, 1.0), dark=1.25)


def _benign_glands(f: _Field, region: np.ndarray, *, n_per_mm2: float, r_um: tuple, lumen: tuple,
                   aspect: tuple, gap: float, r_nuc: float, layers: float, clustered: bool) -> None:
    rng = f.rng
    area_mm2 = region.sum() / f.p ** 2 / 1e6
    n = int(rng.poisson(max(n_per_mm2 * area_mm2, 0.5))) + 1
    within = region
    if clustered:  # lobules: glands gathered in a few rounded clusters
        within = _blob_mask(rng, f.h, f.w, f.px(90), 0.55, within=region)
    rmean = f.px(np.mean(r_um))
    centres = _scatter_centres(rng, n, f.h, f.w, rmean * gap, within=within if within.any() else region)
    if len(centres) == 0:
        return
    k = len(centres)
    r = rng.uniform(*r_um, k)
    wall, lum = _draw_glands(f, centres, r, lumen_ratio=rng.uniform(*lumen, k), aspect=rng.uniform(*aspect, k))
    wall &= region
    lum &= region
    f.labels[wall] = _EPI
    f.labels[lum] = _LUMEN
    _line_nuclei(f, wall, r_nuc, layers=layers)


def _curve(rng: np.random.Generator, start: np.ndarray, heading: float, n: int, step: float,
           turn: float) -> np.ndarray:
    ang = heading + np.cumsum(rng.normal(0, turn, n))
    d = np.stack([np.cos(ang), np.sin(ang)], 1) * step
    return start + np.cumsum(d, 0)


def _bands(f: _Field, region: np.ndarray, n: int, *, length_um: float, core_um: float,
           wall_um: float, turn: float = 0.25, theta: float = 0.0, spread: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """Curved elongated structures: a core (drawn thick) and a wall around it."""
    rng = f.rng
    core = np.zeros((f.h, f.w), np.uint8)
    outer = np.zeros((f.h, f.w), np.uint8)
    for _ in range(n):
        start = rng.uniform(-0.1, 1.1, 2) * [f.w, f.h]
        steps = max(4, int(length_um / 10))
        pts = _curve(rng, start, theta + rng.normal(0, spread), steps, f.px(10), turn)
        pts = (pts * 4).astype(np.int32)
        cw = max(1, int(round(f.px(core_um * rng.uniform(0.7, 1.3)))))
        cv2.polylines(outer, [pts], False, 1, cw + 2 * max(1, int(round(f.px(wall_um)))), cv2.LINE_8, 2)
        cv2.polylines(core, [pts], False, 1, cw, cv2.LINE_8, 2)
    return (core > 0) & region, (outer > 0) & (core == 0) & region


def _benign_layout(f: _Field, kind: str, region: np.ndarray, theta: float) -> None:
    """Draw benign architecture of subtype ``kind`` (or 'N' ordinary breast tissue) in ``region``."""
    rng = f.rng
    if kind == "A":  # adenosis: many small glands in lobular clusters
        _benign_glands(f, region, n_per_mm2=900, r_um=(14, 24), lumen=(0.3, 0.55), aspect=(0.8, 1.6),
                       gap=2.1, r_nuc=2.5, layers=1.3, clustered=True)
    elif kind == "TA":  # tubular adenoma: tightly packed uniform small tubules, little stroma
        _benign_glands(f, region, n_per_mm2=1400, r_um=(15, 19), lumen=(0.25, 0.4), aspect=(0.9, 1.3),
                       gap=1.9, r_nuc=2.5, layers=1.2, clustered=False)
    elif kind == "F":  # fibroadenoma: abundant stroma, compressed elongated ducts
        n = int(rng.integers(1, 3) + region.mean() * (f.h * f.w) / f.px(180) ** 2 * 0.5)
        lum, wall = _bands(f, region, n, length_um=rng.uniform(80, 220), core_um=3, wall_um=6.5,
                           turn=0.35, theta=theta, spread=0.5)
        f.labels[wall] = _EPI
        f.labels[lum] = _LUMEN
        _line_nuclei(f, wall, 2.5, layers=1.5, elong=(0.5, 0.9))
    elif kind == "PT":  # phyllodes: cellular stroma, leaf-like fronds split by clefts
        n = int(rng.integers(1, 3) + (f.h * f.w) / f.px(260) ** 2 * 0.6)
        lum, wall = _bands(f, region, n, length_um=rng.uniform(150, 320), core_um=14, wall_um=6,
                           turn=0.3, theta=theta, spread=0.9)
        f.labels[wall] = _EPI
        f.labels[lum] = _LUMEN
        _line_nuclei(f, wall, 2.5, layers=1.5)
    else:  # 'N' ordinary tissue: collagen with a few ducts/acini
        _benign_glands(f, region, n_per_mm2=150, r_um=(14, 30), lumen=(0.3, 0.5), aspect=(0.8, 1.8),
                       gap=2.5, r_nuc=2.5, layers=1.3, clustered=True)
    density = {"PT": 3.0, "F": 1.6}.get(kind, 1.0)
    _stroma_cells(f, region & (f.labels == _STROMA), theta, density=density)


# ----- malignant architecture
def _malignant_nuclei(difficulty: float) -> dict:
    """Nuclear features of carcinoma cells; ``difficulty`` pulls them toward benign ones."""
    g = 1.0 - float(np.clip(difficulty, 0.0, 1.0))  # the gap
    return {
        "r": 2.5 * (1.2 + 0.9 * g),  # benign 2.5 um
        "cv": 0.1 + 0.22 * g,  # size variation (pleomorphism)
        "elong": (0.55 - 0.15 * g, 1.0),
        "dark": 1.0 + 0.1 + 0.45 * g,  # hyperchromasia (benign 1.0)
        "dark_cv": 0.08 + 0.12 * g,
        "irregular": 0.05 + 0.12 * g,
        "spacing": 2.45 - 0.1 - 0.2 * g,  # crowding, in radii (benign 2.4 along a wall)
        "chromatin": 0.15 + 0.35 * g,  # coarse clumped chromatin (benign 0.15)
        "nucleoli": 0.2 + 0.6 * g,  # fraction with a prominent nucleolus (benign 0)
    }


def _malignant_layout(f: _Field, kind: str, region: np.ndarray, theta: float, difficulty: float) -> None:
    rng = f.rng
    m = _malignant_nuclei(difficulty)
    nk = dict(cv=m["cv"], elong=m["elong"], dark=m["dark"], dark_cv=m["dark_cv"], irregular=m["irregular"],
              chromatin=m["chromatin"], nucleoli=m["nucleoli"])
    r = m["r"]
    if kind == "DC":  # irregular solid nests infiltrating stroma, a few cribriform spaces
        nests = _blob_mask(rng, f.h, f.w, f.px(rng.uniform(18, 35)), rng.uniform(0.6, 0.8), within=region)
        nests = _warp(nests.astype(np.uint8), rng, f.px(6), f.px(12), cv2.INTER_NEAREST) > 0
        nests &= region
        f.labels[nests] = _EPI
        holes = _blob_mask(rng, f.h, f.w, f.px(4), 0.06, within=nests)
        f.labels[holes] = _LUMEN
        pts = _jittered_grid(rng, f.h, f.w, f.px(r) * m["spacing"], 0.3)
        f.add_nuclei(_inside(pts, nests & ~holes), r, **nk)
        _stroma_cells(f, region & ~nests, theta, density=1.5)
    elif kind == "LC":  # small discohesive cells in single files through the stroma
        lr = r * 0.85
        n = int(2 + region.sum() / f.px(28) ** 2)
        pts = []
        for _ in range(n):
            start = rng.uniform(0, 1, 2) * [f.w, f.h]
            steps = int(rng.integers(4, 14))
            c = _curve(rng, start, theta + rng.normal(0, 0.25), steps, f.px(lr) * 2.3, 0.12)
            pts.append(c)
        pts = np.concatenate(pts) + rng.normal(0, f.px(0.6), (sum(len(c) for c in pts), 2))
        pts = np.concatenate([pts, rng.uniform(0, 1, (n * 2, 2)) * [f.w, f.h]])
        pts = _inside(pts, region)
        halo = np.zeros((f.h, f.w), np.uint8)
        for x, y in pts:
            cv2.circle(halo, (int(x * 4), int(y * 4)), int(f.px(lr) * 1.7 * 4), 1, -1, cv2.LINE_8, 2)
        f.labels[(halo > 0) & region] = _EPI
        f.add_nuclei(pts, lr, **{**nk, "cv": nk["cv"] * 0.6, "elong": (0.75, 1.0)})
        _stroma_cells(f, region & (halo == 0), theta, density=0.8)
    elif kind == "MC":  # clusters of tumour cells floating in pale blue-grey mucin
        f.labels[region] = _MUCIN
        septa = _fibres(rng, f.h, f.w, f.px(60), f.px(2), theta + 0.5) > 2.0
        f.labels[septa & region] = _STROMA
        cl = _blob_mask(rng, f.h, f.w, f.px(rng.uniform(7, 14)), rng.uniform(0.25, 0.4), within=region)
        f.labels[cl] = _EPI
        pts = _jittered_grid(rng, f.h, f.w, f.px(r) * m["spacing"], 0.3)
        f.add_nuclei(_inside(pts, cl), r, **nk)
    else:  # PC: finger-like fronds, fibrovascular cores lined by stratified atypical cells
        f.labels[region] = _LUMEN
        n = int(2 + region.sum() / f.px(70) ** 2)
        core, wall = _bands(f, region, n, length_um=rng.uniform(80, 160), core_um=rng.uniform(8, 16),
                            wall_um=r * 4.2, turn=0.45, theta=rng.uniform(0, np.pi), spread=2.0)
        f.labels[wall] = _EPI
        f.labels[core] = _STROMA
        pts = _jittered_grid(rng, f.h, f.w, f.px(r) * m["spacing"], 0.25)
        f.add_nuclei(_inside(pts, wall), r, **nk)
        _stroma_cells(f, core, theta, density=1.5)


# --------------------------------------------------------------------------- one image
def _pixels_per_um(width: int, mag: int) -> float:
    # BreakHis: 700 px wide; ~0.75 px/um at 40X in that frame, linear in magnification
    return (width / 700.0) * 0.75 * (mag / 40.0)


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


# --------------------------------------------------------------------------- dataset writer
def _save_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG", compress_level=1, optimize=False)


def _params_dict(**kw) -> dict:
    d = dict(kw)
    d["size"] = list(d["size"])
    d["magnifications"] = list(d["magnifications"])
    d["generator_version"] = GENERATOR_VERSION
    return d


def generate(out, *, seed: int = 0, n_patients: int = 82, images_per_mag: int = 2,
             size: tuple[int, int] = (350, 230), difficulty: float = 0.5,
             magnifications: tuple[int, ...] = (40, 100, 200, 400), benign_fraction: float = 0.31,
             progress: ProgressArg = True) -> Path:
    """Write a BreakHis-like synthetic dataset under ``out`` and return ``out``.

    ``out/BreaKHis_v1/histology_slides/breast/<class>/SOB/<tumor_type>/<slide>/<mag>X/<file>.png``,
    lesion masks for malignant images at the same relative path under ``out/masks/``, a
    ``SYNTHETIC`` marker (JSON: note, generator params, seed) and, last, a ``DONE`` marker.
    ``size`` is (width, height). ``progress``: True for a tqdm bar, False for silence, or a
    callable ``progress(done, total)``.
    """
    out = Path(out)
    w, h = int(size[0]), int(size[1])
    if w < 16 or h < 16:
        raise ValueError("size must be at least 16x16 pixels")
    if images_per_mag < 1:
        raise ValueError("images_per_mag must be at least 1")
    params = _params_dict(seed=seed, n_patients=n_patients, images_per_mag=images_per_mag, size=(w, h),
                          difficulty=float(difficulty), magnifications=tuple(int(m) for m in magnifications),
                          benign_fraction=float(benign_fraction))
    out.mkdir(parents=True, exist_ok=True)
    (out / "DONE").unlink(missing_ok=True)
    patients = plan_patients(n_patients, seed=seed, benign_fraction=benign_fraction)
    marker = {
        "synthetic": True,
        "note": ("SYNTHETIC BreakHis-like images generated by dala.data.synth for teaching. "
                 "Not real tissue, not BreakHis data."),
        "generator": "dala.data.synth",
        "params": params,
        "seed": seed,
    }
    (out / "SYNTHETIC").write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")

    total = len(patients) * len(magnifications) * images_per_mag
    bar = None
    callback = progress if callable(progress) else None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="Generating synthetic BreakHis", unit="img")
    done = 0
    n_mal = 0
    try:
        for pat in patients:
            sig = patient_signature(seed, pat.index)
            # one colour target per patient (a 100X reference field): the patient's signature
            ref = _reference_stats(seed, pat, 100, (w, h), sig)
            for mag in magnifications:
                rel = pat.rel_dir(mag)
                for seq in range(1, images_per_mag + 1):
                    rgb, mask, _ = render_image(seed=seed, patient=pat, mag=mag, seq=seq, size=(w, h),
                                                difficulty=difficulty, sig=sig)
                    img = _finish(rgb, ref, seed, pat.index, mag, seq)
                    name = pat.file_name(mag, seq)
                    _save_png(out / rel / name, img)
                    if mask is not None:
                        _save_png(out / "masks" / rel / name, (mask.astype(np.uint8) * 255))
                        n_mal += 1
                    done += 1
                    if bar is not None:
                        bar.update(1)
                    if callback is not None:
                        callback(done, total)
    finally:
        if bar is not None:
            bar.close()
    summary = {**params, "images": total, "malignant_images": n_mal, "patients": len(patients)}
    (out / "DONE").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return out


def _read_done(root: Path) -> dict | None:
    try:
        return json.loads((root / "DONE").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _matches(done: dict | None, params: dict) -> bool:
    if not done:
        return False
    return all(done.get(k) == v for k, v in params.items())


def ensure_default_dataset(*, progress: ProgressArg = True, root=None, params: dict | None = None) -> Path:
    """Return the embedded default dataset, generating it once if needed.

    It lives in :func:`dala.paths.synthetic_default_dir` (or ``root``). A complete dataset is one
    whose ``DONE`` marker records the same parameters and generator version; anything else there
    is replaced. Generation happens in a temporary sibling folder renamed into place at the end,
    so an interrupted run never leaves a half dataset behind. ``params`` overrides
    :data:`DEFAULT_PARAMS` (tests use tiny ones).
    """
    from dala.paths import synthetic_default_dir

    root = Path(root) if root is not None else synthetic_default_dir()
    kw = {**DEFAULT_PARAMS, **(params or {})}
    want = _params_dict(**kw)
    if _matches(_read_done(root), want):
        log.info("synthetic default dataset at %s", root)
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    msg = f"Generating the synthetic default dataset (first use) into {root}"
    log.info(msg)
    if progress is True:
        print(msg, file=sys.stderr)
    t0 = time.perf_counter()
    try:
        generate(tmp, progress=progress, **kw)
        if root.exists():  # stale, incomplete or other parameters: set aside, then delete
            if _matches(_read_done(root), want):  # another process finished first
                shutil.rmtree(tmp, ignore_errors=True)
                return root
            old = root.parent / f".{root.name}.old-{os.getpid()}-{int(time.time())}"
            os.replace(root, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("synthetic default dataset written to %s in %.1f s", root, time.perf_counter() - t0)
    if progress is True:
        print(f"Synthetic default dataset ready at {root}", file=sys.stderr)
    return root


__all__ = ["DEFAULT_PARAMS", "GENERATOR_VERSION", "Patient", "Signature", "ensure_default_dataset",
           "generate", "patient_signature", "plan_patients", "render_image"]
