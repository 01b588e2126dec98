"""Owns the synthetic dataset's patients: the BreakHis subtype table, how many patients of each
subtype a dataset gets, their slide ids, and the BreakHis folder and file names of their images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

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
