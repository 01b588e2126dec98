"""Owns the random fields every drawing is made of: smooth noise, oriented fibres, smooth warps,
irregular blobs, jittered point grids (and the point-in-mask test). No tissue meaning here."""

from __future__ import annotations

import cv2
import numpy as np


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
