"""Calibrated probabilities and a decision threshold locked on validation.

- **Temperature scaling** (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017):
  one scalar ``T`` divides the logits, fitted on validation by minimising the negative
  log-likelihood; it changes confidence, never the arg-max. Our runs store probabilities, and a
  softmax's log-probabilities are its logits up to a per-row constant, so ``T`` is fitted and
  applied on ``log p`` (the same thing). One bounded scalar search (scipy's
  ``minimize_scalar`` on ``log T``) does the job: a calibration library (netcal) would bring
  pyro-ppl, gpytorch and tensorboard along for this one parameter.
- **Locked threshold**: the malignant-probability cut chosen on validation by the selection
  metric, fixed before the test set is seen; reports give metrics at 0.5 beside it.

A checkpoint carries both under ``config["calibration"]``; an older checkpoint without them still
loads and is reported as *uncalibrated* (``Calibration.identity()``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from dala.errors import DalaError

T_BOUNDS = (0.05, 20.0)
EPS = 1e-12


class CalibrationError(DalaError):
    """Probabilities or labels that cannot be calibrated (NaN, one row, wrong shape)."""


@dataclass(frozen=True)
class Calibration:
    """What a checkpoint knows about its own probabilities."""

    temperature: float = 1.0
    threshold: float = 0.5
    fitted: bool = False          # False: an older checkpoint, or never fitted
    fitted_on: str = ""           # e.g. "val: 14 patients, 120 images"
    selection_metric: str = ""    # the metric the threshold maximises on validation
    ece_before: float | None = None
    ece_after: float | None = None
    reason: str = ""              # why not fitted (e.g. "the validation part holds one class")

    @classmethod
    def identity(cls) -> "Calibration":
        return cls()

    @classmethod
    def not_fitted(cls, reason: str) -> "Calibration":
        return cls(reason=str(reason))

    @classmethod
    def from_config(cls, config: dict | None) -> "Calibration":
        """From a checkpoint/run config; anything missing or malformed -> uncalibrated."""
        raw = (config or {}).get("calibration") if isinstance(config, dict) else None
        if not isinstance(raw, dict):
            return cls.identity()
        try:
            t = float(raw.get("temperature", 1.0))
            thr = float(raw.get("threshold", 0.5))
        except (TypeError, ValueError):
            return cls.identity()
        if not (np.isfinite(t) and T_BOUNDS[0] <= t <= T_BOUNDS[1] and 0.0 <= thr <= 1.0):
            return cls.identity()
        return cls(temperature=t, threshold=thr, fitted=bool(raw.get("fitted", True)),
                   fitted_on=str(raw.get("fitted_on", "")), selection_metric=str(raw.get("selection_metric", "")),
                   ece_before=_opt_float(raw.get("ece_before")), ece_after=_opt_float(raw.get("ece_after")),
                   reason=str(raw.get("reason", "")))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def label(self) -> str:
        if not self.fitted:
            why = f"; {self.reason}" if self.reason else ""
            return f"uncalibrated (no temperature fitted: probabilities as the network gives them{why})"
        return f"temperature-scaled (T = {self.temperature:.2f}, fitted on {self.fitted_on or 'validation'})"

    def apply(self, probs: Any) -> np.ndarray:
        return apply_temperature(probs, self.temperature)


def _opt_float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def check_probs(probs: Any, *, what: str = "probabilities") -> np.ndarray:
    """(N, C) finite probabilities, or CalibrationError naming the problem."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] < 1 or p.shape[1] < 2:
        raise CalibrationError(f"{what} must be an (N, C) array with C >= 2; got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise CalibrationError(f"{what} hold NaN or Inf (the model's outputs are broken: check its weights "
                               "for NaN, or retrain with a lower learning rate)")
    return p


def apply_temperature(probs: Any, temperature: float) -> np.ndarray:
    """``softmax(log p / T)`` row by row; ``T = 1`` returns the input unchanged."""
    p = check_probs(probs)
    if temperature == 1.0:
        return p
    z = np.log(np.clip(p, EPS, 1.0)) / float(temperature)  # (N, C) logits up to a row constant
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], EPS, 1.0))))


def fit_temperature(probs: Any, y_true: Any) -> float:
    """The ``T`` in ``T_BOUNDS`` minimising validation NLL of ``apply_temperature(probs, T)``."""
    from scipy.optimize import minimize_scalar

    p = check_probs(probs, what="validation probabilities")
    y = np.asarray(y_true).astype(int)
    if len(y) != len(p):
        raise CalibrationError(f"{len(p)} probability rows but {len(y)} labels")
    if len(p) < 2:
        raise CalibrationError("a temperature needs at least 2 validation images")
    res = minimize_scalar(lambda log_t: nll(apply_temperature(p, float(np.exp(log_t))), y),
                          bounds=tuple(np.log(T_BOUNDS)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x))


THRESHOLD_METRICS = ("gmean", "balanced_accuracy", "accuracy", "f1_macro")


def metric_at_threshold(y: np.ndarray, p_malignant: np.ndarray, threshold: float, metric: str) -> float:
    """One selection metric of the prediction ``p_malignant >= threshold`` (scikit-learn /
    imbalanced-learn, as dala.metrics computes them)."""
    from imblearn.metrics import geometric_mean_score
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    pred = (np.asarray(p_malignant) >= threshold).astype(int)
    if metric == "gmean":  # as dala.metrics: sqrt(sensitivity * specificity)
        return float(geometric_mean_score(y, pred, average="binary", pos_label=1))
    if metric == "balanced_accuracy":
        return float(balanced_accuracy_score(y, pred)) if len(np.unique(y)) > 1 else float(accuracy_score(y, pred))
    if metric == "accuracy":
        return float(accuracy_score(y, pred))
    if metric == "f1_macro":
        return float(f1_score(y, pred, average="macro", labels=[0, 1], zero_division=0))
    raise CalibrationError(f"unknown threshold metric {metric!r}: use one of {', '.join(THRESHOLD_METRICS)}")


def choose_threshold(y_true: Any, p_malignant: Any, *, metric: str = "gmean",
                     default: float | None = None) -> float:
    """The cut on P(malignant) that maximises ``metric`` on (validation) data, predictions being
    ``p >= threshold``; ties go to the cut nearest 0.5. The one threshold rule of dala: runs,
    studies and the Imbalance Lab all lock their threshold here.

    GMean and balanced accuracy (Youden's J) are read off scikit-learn's ROC curve, exact and
    O(n log n); other metrics try every distinct probability. Data with one class cannot choose:
    ``default`` is returned when given, else ``CalibrationError``.
    """
    from sklearn.metrics import roc_curve

    y = np.asarray(y_true).astype(int)
    p = np.asarray(p_malignant, dtype=np.float64)
    if len(y) != len(p) or len(y) == 0:
        raise CalibrationError("threshold choice needs as many labels as probabilities, and at least one")
    if not np.all(np.isfinite(p)):
        raise CalibrationError("probabilities hold NaN or Inf: cannot choose a threshold")
    if len(np.unique(y)) < 2:
        if default is not None:
            return float(default)
        raise CalibrationError("choosing a threshold needs validation images of both classes; this validation "
                               "part has one. Use a split with more validation patients.")
    if metric in ("gmean", "balanced_accuracy"):
        fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
        keep = np.isfinite(thr)  # the first cut is +inf ("nothing malignant")
        fpr, tpr, thr = fpr[keep], tpr[keep], np.clip(thr[keep], 0.0, 1.0)
        scores = np.sqrt(tpr * (1.0 - fpr)) if metric == "gmean" else (tpr + 1.0 - fpr) / 2.0
    else:
        thr = np.unique(np.concatenate([p, [0.5]]))
        scores = np.array([metric_at_threshold(y, p, float(t), metric) for t in thr])
    best = np.flatnonzero(np.isclose(scores, scores.max()))
    return float(thr[best[np.argmin(np.abs(thr[best] - 0.5))]])


def calibrate(val_probs: Any, val_y: Any, *, metric: str = "gmean", fitted_on: str = "validation") -> Calibration:
    """Fit the temperature, then lock the threshold on the *calibrated* validation probabilities."""
    from dala.metrics import calibration_bins

    p = check_probs(val_probs, what="validation probabilities")
    y = np.asarray(val_y).astype(int)
    t = fit_temperature(p, y)
    cal = apply_temperature(p, t)
    thr = choose_threshold(y, cal[:, 1], metric=metric)
    return Calibration(temperature=t, threshold=thr, fitted=True, fitted_on=fitted_on, selection_metric=metric,
                       ece_before=calibration_bins(y, p)["ece"], ece_after=calibration_bins(y, cal)["ece"])
