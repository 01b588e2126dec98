"""Does an image look like the data a model was trained on? A small, tested out-of-distribution check.

A model trained on the SYNTHETIC default and shown a real BreakHis field still answers with
high confidence: its answer means nothing there. The check compares the colour statistics of the
image (per-channel mean and spread, saturation, hue and edge strength, on a thumbnail) with those
of a sample of the training images: the score is the Mahalanobis distance of the image's
statistics from the sample's (their covariance shrunk by Ledoit-Wolf, scikit-learn), flagged above
:data:`THRESHOLD`. Stain colour and its spread are exactly where generated and real
H&E fields differ most, and where a scanner or stain change shows first on real data, so this
cheap check catches the mismatch a class meets (an upload that is not the training data); it is
not a guarantee that an image which passes is "in distribution" for the model's features.

UI-free: the Explain page and notebooks call :func:`reference_from_index` once per training set
and :func:`ood_score` per image.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

FEATURES = ("mean red", "mean green", "mean blue", "spread of red", "spread of green", "spread of blue",
            "saturation", "spread of saturation", "hue (cos)", "hue (sin)", "edge strength")
THRESHOLD = 6.0   # Mahalanobis distance above which an image is flagged: held-out images of the
#                   training distribution stay below it although the covariance is estimated from
#                   a few dozen images (a chi(11) variable exceeds 6.0 with probability ~1e-6)
THUMB_WIDTH = 64  # statistics, not detail: every image is resized to this width first


@dataclass(frozen=True)
class ColourReference:
    """The colour statistics of a sample of training images: their mean and the inverse of their
    (Ledoit-Wolf shrunk) covariance."""

    mean: tuple[float, ...]                  # (F,)
    precision: tuple[tuple[float, ...], ...]  # (F, F)
    n_images: int
    source: str = "unknown"  # the training data's source: "synthetic" | "real" | ...

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "precision": [list(r) for r in self.precision], "n_images": self.n_images,
                "source": self.source}

    @classmethod
    def from_dict(cls, d: dict) -> "ColourReference":
        return cls(tuple(float(v) for v in d["mean"]), tuple(tuple(float(v) for v in r) for r in d["precision"]),
                   int(d["n_images"]), str(d.get("source", "unknown")))


@dataclass(frozen=True)
class OodResult:
    score: float      # Mahalanobis distance of the image's features from the training sample's
    flagged: bool     # score > threshold
    threshold: float
    worst: str        # the feature that differs most (in units of the training spread)

    def describe(self) -> str:
        what = "does not look like" if self.flagged else "looks like"
        return (f"this image {what} the training images (colour distance {self.score:.1f}; flagged above "
                f"{self.threshold:g}; most different: {self.worst})")


def colour_features(image: Any, *, width: int = THUMB_WIDTH) -> np.ndarray:
    """``(F,)`` statistics of one image (a path, bytes, PIL image or ``(H, W, 3)`` uint8 array)
    resized to ``width`` px: R, G, B means and spreads, saturation mean and spread, the circular
    mean hue (saturation-weighted, as cos and sin) and the mean edge strength over the contrast."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        im = Image.fromarray(np.ascontiguousarray(image[..., :3]).astype(np.uint8))
    elif isinstance(image, Image.Image):
        im = image.convert("RGB")
    else:
        from dala.data.images import load_for_model

        im = load_for_model(image)
    im = im.resize((width, max(1, round(width * im.size[1] / max(im.size[0], 1)))), Image.BILINEAR)
    rgb = np.asarray(im, dtype=np.float32) / 255.0  # (H, W, 3)
    flat = rgb.reshape(-1, 3)
    hsv = np.asarray(im.convert("HSV"), dtype=np.float32).reshape(-1, 3) / 255.0
    sat, angle = hsv[:, 1], 2 * np.pi * hsv[:, 0]
    weight = sat / max(float(sat.sum()), 1e-6)
    grey = rgb.mean(2)
    edges = np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean()
    return np.concatenate([flat.mean(0), flat.std(0),
                           [sat.mean(), sat.std(), float((weight * np.cos(angle)).sum()),
                            float((weight * np.sin(angle)).sum()), edges / max(float(grey.std()), 1e-3)]]
                          ).astype(np.float64)


def reference_from_images(images: Sequence[Any], *, source: str = "unknown") -> ColourReference:
    """The reference statistics of ``images`` (at least four): scikit-learn's Ledoit-Wolf
    covariance, which stays invertible with fewer images than a full estimate needs."""
    from sklearn.covariance import LedoitWolf

    if len(images) < 4:
        from dala.errors import DataError

        raise DataError("a colour reference needs at least four training images.")
    feats = np.stack([colour_features(im) for im in images])  # (N, F)
    lw = LedoitWolf().fit(feats)
    return ColourReference(tuple(float(v) for v in lw.location_),
                           tuple(tuple(float(v) for v in row) for row in lw.precision_), len(images), source)


def reference_from_index(index, *, n: int = 64, seed: int = 0, source: str | None = None) -> ColourReference:
    """The reference of a dataset index (``dala.data.index``): up to ``n`` images, half of each
    class where possible, drawn with ``seed``."""
    import pandas as pd

    per_class = max(1, n // max(index["label"].nunique(), 1))
    parts = [g.sample(min(len(g), per_class), random_state=seed) for _, g in index.groupby("label")]
    sample = pd.concat(parts) if parts else index.iloc[:0]
    src = source or index.attrs.get("source") or (str(index["source"].iloc[0]) if len(index) else "unknown")
    return reference_from_images([str(p) for p in sample["path"]], source=src)


def ood_score(image_or_features: Any, reference: ColourReference, *,
              threshold: float | None = None) -> OodResult:
    """How far an image's statistics are from the reference (see the module docstring)."""
    thr = float(os.environ.get("DALA_OOD_THRESHOLD", THRESHOLD)) if threshold is None else float(threshold)
    f = image_or_features
    if not (isinstance(f, np.ndarray) and f.ndim == 1 and f.shape[0] == len(FEATURES)):
        f = colour_features(image_or_features)  # an image, not its features
    diff = np.asarray(f, dtype=np.float64) - np.asarray(reference.mean)  # (F,)
    prec = np.asarray(reference.precision)  # (F, F)
    score = float(np.sqrt(max(float(diff @ prec @ diff), 0.0)))
    spread = 1.0 / np.sqrt(np.maximum(np.diag(prec), 1e-12))  # conditional spread of each feature
    worst = FEATURES[int(np.argmax(np.abs(diff) / spread))]
    return OodResult(score, bool(score > thr), thr, worst)
