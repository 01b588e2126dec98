"""How sure is the model about one image, and when should it refer the image to a pathologist?

- **Test-time augmentation** over the eight dihedral views (flips and quarter turns: tissue has
  no up): the spread of the malignant probability across views is a per-image uncertainty, and
  the mean over views a slightly better prediction. Our heads have no dropout, so MC dropout has
  nothing to sample; TTA is the uncertainty every registry model can give.
- **Conformal prediction sets** (split conformal, Vovk et al.; crepes' ``ConformalClassifier``
  with the hinge score ``1 - p(true class)``): calibrated on validation patients, a set of
  labels that holds the true one with probability >= the chosen coverage on exchangeable data.
  ``{benign}`` or ``{malignant}`` is a confident answer, ``{benign, malignant}`` says "refer".
- **Selective prediction**: accuracy against coverage when the least certain images are referred.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd

from dala.calibration import CalibrationError, check_probs


class CoverageError(CalibrationError):
    """A coverage level outside (0, 1)."""


def check_coverage(coverage: Any) -> float:
    try:
        c = float(coverage)
    except (TypeError, ValueError):
        raise CoverageError(f"coverage {coverage!r} is not a number: give a level in (0, 1), e.g. 0.9") from None
    if not (0.0 < c < 1.0):
        raise CoverageError(f"coverage {c} is outside (0, 1): give a level such as 0.9 (90 % of sets hold the "
                            "true label)")
    return c


@dataclass
class ConformalSets:
    """Split-conformal label sets fitted on calibration (validation) probabilities."""

    n_calibration: int
    classes: tuple[int, ...]
    _cc: Any

    @classmethod
    def fit(cls, probs: Any, y_true: Any) -> "ConformalSets":
        from crepes import ConformalClassifier
        from crepes.extras import hinge

        p = check_probs(probs, what="calibration probabilities")
        y = np.asarray(y_true).astype(int)
        if len(y) != len(p):
            raise CalibrationError(f"{len(p)} probability rows but {len(y)} labels")
        if len(y) < 10:
            raise CalibrationError(f"conformal sets need at least 10 calibration images (got {len(y)}): use a "
                                   "larger validation part")
        classes = np.arange(p.shape[1])
        cc = ConformalClassifier()
        cc.fit(hinge(p, classes, y))
        return cls(n_calibration=len(y), classes=tuple(int(c) for c in classes), _cc=cc)

    def predict_sets(self, probs: Any, *, coverage: float = 0.9) -> np.ndarray:
        """(N, C) 0/1 membership: column c is 1 when class c is in the image's set."""
        from crepes.extras import hinge

        c = check_coverage(coverage)
        p = check_probs(probs)
        return np.asarray(self._cc.predict_set(hinge(p), confidence=c, smoothing=False), dtype=int)

    def describe(self, sets: np.ndarray, class_names=("benign", "malignant")) -> list[str]:
        return ["{" + ", ".join(n for n, m in zip(class_names, row) if m) + "}" for row in sets]


def set_coverage(sets: np.ndarray, y_true: Any) -> float:
    """Share of images whose set holds their true label."""
    y = np.asarray(y_true).astype(int)
    return float(np.mean(sets[np.arange(len(y)), y] == 1))


def tta_probs(predict: Callable[[Any], np.ndarray], batch: Any, *, views: int = 8) -> np.ndarray:
    """(V, B, C) probabilities of ``predict`` on each dihedral view of ``batch`` ((B, C, H, W))."""
    from dala.data.augment import dihedral

    if not 1 <= views <= 8:
        raise CalibrationError(f"views must be 1..8 (the dihedral group has 8); got {views}")
    return np.stack([np.asarray(predict(dihedral(batch, v))) for v in range(views)])


def tta_summary(view_probs: np.ndarray) -> dict[str, np.ndarray]:
    """Mean probabilities over views and the per-image spread of the malignant probability."""
    vp = np.asarray(view_probs, dtype=np.float64)  # (V, B, C)
    if vp.ndim != 3:
        raise CalibrationError(f"view probabilities must be (V, B, C); got shape {vp.shape}")
    mean = vp.mean(axis=0)  # (B, C)
    return {"probs": mean, "std_malignant": vp[..., 1].std(axis=0),
            "entropy": -(np.clip(mean, 1e-12, 1) * np.log(np.clip(mean, 1e-12, 1))).sum(axis=1)}


def uncertainty_from_probs(probs: Any) -> np.ndarray:
    """1 - max probability: the simplest certainty score (for runs that stored no TTA)."""
    return 1.0 - check_probs(probs).max(axis=1)


def selective_curve(y_true: Any, probs: Any, uncertainty: Any | None = None, *, threshold: float = 0.5,
                    points: int = 21) -> pd.DataFrame:
    """Accuracy of the kept images when the most uncertain are referred, for coverage 1 -> 1/N.

    Columns: ``coverage`` (share kept), ``referred`` (share referred), ``n_kept``, ``accuracy``.
    """
    p = check_probs(probs)
    y = np.asarray(y_true).astype(int)
    u = uncertainty_from_probs(p) if uncertainty is None else np.asarray(uncertainty, dtype=np.float64)
    if len(u) != len(y) or len(y) != len(p):
        raise CalibrationError("labels, probabilities and uncertainties must have the same length")
    order = np.argsort(u, kind="stable")  # most certain first
    correct = ((p[:, 1] >= threshold).astype(int) == y)[order]
    n = len(y)
    rows = []
    for cov in np.linspace(1.0, 0.0, points):
        k = max(1, int(round(cov * n)))
        rows.append({"coverage": k / n, "referred": 1 - k / n, "n_kept": k, "accuracy": float(correct[:k].mean())})
    return pd.DataFrame(rows).drop_duplicates("n_kept").reset_index(drop=True)
