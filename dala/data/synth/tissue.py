"""Owns the tissue of one field: the label map (stroma, epithelium, lumen, mucin, background), the
nuclei list and its rasterisation, glands and bands, and the benign and malignant architecture
of each BreakHis subtype (where the lesion's atypical nuclei go, and how atypical they are)."""

from __future__ import annotations

import cv2
import numpy as np

from dala.data.synth.texture import _blob_mask, _fibres, _inside, _jittered_grid, _warp

# tissue labels of a field
_BG, _STROMA, _EPI, _LUMEN, _MUCIN = 0, 1, 2, 3, 4


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
