"""Classification metrics for BreakHis, computed with scikit-learn and imbalanced-learn.

Everything a library defines is taken from the library (see ``docs/metrics.md`` for the table of
metric -> function); this module only validates input, picks the conventions below, and turns
the results into a JSON-ready dict (plain ``int``/``float``/``list``/``dict``/``None``).

Conventions
-----------
* Labels are ints ``0..C-1``; in the binary task ``0`` = benign, ``1`` = malignant, and the
  **positive class is malignant** (sensitivity = recall of malignant, specificity = recall of
  benign).
* ``y_prob`` is ``(N, C)`` class probabilities (rows sum to 1) or, for binary only, ``(N,)`` the
  probability of malignant. Binary predictions are ``prob_malignant >= threshold``; with ``C > 2``
  the prediction is the arg-max and ``threshold`` is ignored.
* ``None`` means "the data cannot tell": ROC-AUC / PR-AUC when ``y_true`` lacks a class;
  sensitivity, specificity, GMean and IBA when ``y_true`` lacks a class they divide by; per-class
  recall of a class with no samples; per-class specificity of a class with no negatives;
  ``patient_accuracy`` when no patients are given.
  A ``0`` from a 0/0 means "the model never predicted it": precision of a class the model never
  predicts is 0 (scikit-learn's ``zero_division=0``), which pulls the macro average down.
* GMean is imblearn's ``geometric_mean_score`` (binary: sqrt(sensitivity * specificity);
  multi-class: geometric mean of the per-class recalls). IBA is imblearn's
  ``make_index_balanced_accuracy(alpha=0.1, squared=True)(geometric_mean_score)``:
  ``(1 + 0.1 * (sensitivity - specificity)) * GMean**2`` with malignant as positive, i.e. the
  malignant row's ``iba`` of ``classification_report_imbalanced``. With ``C > 2`` the dominance
  uses imblearn's macro sensitivity and specificity.
* ECE uses equal-width bins on the confidence ``max_c p(c)`` and the correctness of the
  predicted class (per-bin values from ``sklearn.calibration.calibration_curve``):
  ``ECE = sum_b (n_b / N) * |accuracy_b - confidence_b|``.
* Patient accuracy is BreakHis' patient-level recognition rate: for each patient the fraction of
  their images classified right, then the plain mean over patients.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np
from imblearn.metrics import (
    geometric_mean_score,
    make_index_balanced_accuracy,
    sensitivity_specificity_support,
    specificity_score,
)
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    matthews_corrcoef,
    precision_recall_curve,
    precision_recall_fscore_support,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from dala.data.breakhis import CLASSES
from dala.metric_row import (  # noqa: F401  (re-exported: the metric row lives in dala.metric_row)
    FLAT_METRICS, HEADLINE_METRICS, METRIC_HELP, METRIC_LABELS, MetricsInputError, flat_metrics, metric_label,
    metric_value, summary_row,
)

__all__ = [
    "FLAT_METRICS", "HEADLINE_METRICS", "IBA_ALPHA", "METRIC_HELP", "METRIC_LABELS", "MetricsInputError",
    "calibration_bins", "classification_report", "curve_points", "flat_metrics", "metric_label",
    "metric_value", "patient_accuracy", "summary_row",
]

IBA_ALPHA = 0.1
PROB_SUM_ATOL = 1e-3  # softmax rows in float16/float32 sum to 1 well within this


# ---------------------------------------------------------------------------------------------
# input checking


def _check_labels(y_true: Any, n_classes: int | None = None) -> np.ndarray:
    try:
        y = np.asarray(y_true)
    except Exception as exc:  # ragged lists and the like
        raise MetricsInputError(f"y_true cannot be read as an array of labels ({exc}).") from exc
    if y.ndim != 1:
        raise MetricsInputError(
            f"y_true must be a 1-D sequence of integer labels; got shape {y.shape}."
        )
    if y.size == 0:
        raise MetricsInputError("y_true is empty: there is nothing to evaluate.")
    if y.dtype == bool:
        y = y.astype(int)
    if not np.issubdtype(y.dtype, np.number):
        raise MetricsInputError(
            f"y_true must hold integer class indices (0 = benign, 1 = malignant); got {y.dtype}."
        )
    if not np.all(np.isfinite(y)) or not np.all(np.equal(np.mod(y, 1), 0)):
        raise MetricsInputError("y_true must hold whole-number class indices, not fractions/NaN.")
    y = y.astype(np.int64)
    if y.min() < 0:
        raise MetricsInputError(f"y_true has a negative label ({int(y.min())}); labels start at 0.")
    if n_classes is not None and y.max() >= n_classes:
        raise MetricsInputError(
            f"y_true has label {int(y.max())} but only {n_classes} classes are given "
            f"(labels must be 0..{n_classes - 1})."
        )
    return y


def _check_probs(y_prob: Any, n: int) -> np.ndarray:
    """Return an ``(N, C)`` float array of class probabilities, ``C >= 2``."""
    try:
        p = np.asarray(y_prob, dtype=np.float64)
    except Exception as exc:
        raise MetricsInputError(f"y_prob cannot be read as an array of numbers ({exc}).") from exc
    if p.ndim == 2 and p.shape[1] == 1:
        p = p[:, 0]
    if p.ndim == 1:
        p = np.column_stack([1.0 - p, p]) if p.size else p.reshape(0, 2)
        one_d = True
    elif p.ndim == 2:
        one_d = False
    else:
        raise MetricsInputError(
            f"y_prob must be (N,) malignant probabilities or (N, C) class probabilities; "
            f"got shape {p.shape}."
        )
    if p.shape[0] != n:
        raise MetricsInputError(
            f"y_true has {n} labels but y_prob has {p.shape[0]} rows; give one row per image."
        )
    if p.shape[1] < 2:
        raise MetricsInputError(f"y_prob needs at least 2 classes; got {p.shape[1]}.")
    if not np.all(np.isfinite(p)):
        raise MetricsInputError("y_prob contains NaN or infinite values.")
    if p.min() < 0.0 or p.max() > 1.0:
        raise MetricsInputError(
            f"y_prob must be probabilities in [0, 1]; found values in [{p.min():.4g}, "
            f"{p.max():.4g}]. Apply softmax (or sigmoid) to the logits first."
        )
    if not one_d:
        sums = p.sum(axis=1)
        bad = np.abs(sums - 1.0) > PROB_SUM_ATOL
        if bad.any():
            i = int(np.argmax(bad))
            raise MetricsInputError(
                f"each row of y_prob must sum to 1 (softmax output); row {i} sums to "
                f"{sums[i]:.4g}."
            )
    return p


def _check_groups(values: Any, n: int, name: str) -> np.ndarray:
    try:
        g = np.asarray(values, dtype=object)
    except Exception as exc:
        raise MetricsInputError(f"{name} cannot be read as a sequence ({exc}).") from exc
    if g.ndim != 1:
        raise MetricsInputError(f"{name} must be a 1-D sequence, one entry per image.")
    if g.shape[0] != n:
        raise MetricsInputError(
            f"y_true has {n} labels but {name} has {g.shape[0]} entries; give one per image."
        )
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in g):
        raise MetricsInputError(f"{name} contains missing values (None/NaN).")
    return g


def _check_inputs(y_true: Any, y_prob: Any) -> tuple[np.ndarray, np.ndarray]:
    y0 = _check_labels(y_true)
    p = _check_probs(y_prob, y0.shape[0])
    y = _check_labels(y0, p.shape[1])
    return y, p


def _predict(p: np.ndarray, threshold: float) -> np.ndarray:
    if p.shape[1] == 2:
        return (p[:, 1] >= threshold).astype(np.int64)
    return np.argmax(p, axis=1).astype(np.int64)


def _mag_key(m: Any) -> str:
    """40 / 40.0 / "40" / "40X" / "40x" -> "40"; anything else -> str(m)."""
    if isinstance(m, (bool, np.bool_)):
        return str(m)
    if isinstance(m, (int, np.integer)):
        return str(int(m))
    if isinstance(m, (float, np.floating)) and float(m).is_integer():
        return str(int(m))
    s = str(m).strip()
    if s[-1:] in ("x", "X") and s[:-1].strip().isdigit():
        return s[:-1].strip()
    return s


def _mag_sort(k: str) -> tuple:
    return (0, int(k), "") if k.isdigit() else (1, 0, k)


# ---------------------------------------------------------------------------------------------
# JSON helpers


def _f(x: Any) -> float | None:
    """A plain float, or None for NaN/inf/None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _f(obj)
    return obj


# ---------------------------------------------------------------------------------------------
# public API


def patient_accuracy(y_true: Any, y_pred: Any, patients: Any) -> float:
    """BreakHis patient-level accuracy: mean over patients of ``accuracy_score`` on that
    patient's images (so patient A 3/4 right and patient B 1/2 right gives 0.625, not 4/6)."""
    yt = _check_labels(y_true)
    yp = _check_labels(y_pred)
    if yp.shape[0] != yt.shape[0]:
        raise MetricsInputError(
            f"y_true has {yt.shape[0]} labels but y_pred has {yp.shape[0]}; give one per image."
        )
    pats = _check_groups(patients, yt.shape[0], "patients")
    return _patient_accuracy(yt, yp, pats)[0]


def _patient_accuracy(yt: np.ndarray, yp: np.ndarray, pats: np.ndarray) -> tuple[float, int]:
    # one pass with bincount: a mask per patient cost ~8 ms of every Imbalance Lab answer
    keys, inverse = np.unique(np.array([str(v) for v in pats]), return_inverse=True)
    right = np.bincount(inverse, weights=(yt == yp).astype(float), minlength=len(keys))
    images = np.bincount(inverse, minlength=len(keys))
    return float(np.mean(right / images)), len(keys)


def calibration_bins(y_true: Any, y_prob: Any, *, n_bins: int = 10) -> dict:
    """Reliability-diagram data on the confidence ``max_c p(c)`` of the arg-max class.

    Returns ``{"n_bins", "edges" (n_bins+1), "centers", "accuracy", "confidence", "counts",
    "ece"}``; per-bin lists have ``n_bins`` entries, with ``None`` accuracy/confidence for empty
    bins. Bins are equal-width on [0, 1], right-closed (the first includes 0), as in
    ``sklearn.calibration.calibration_curve(strategy="uniform")`` which computes them.
    (With ``C = 2`` the arg-max is used here, whatever ``threshold`` a report uses.)
    """
    y, p = _check_inputs(y_true, y_prob)
    return _calibration(y, p, n_bins)


def _calibration(y: np.ndarray, p: np.ndarray, n_bins: int) -> dict:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise MetricsInputError(f"n_bins must be a positive integer; got {n_bins!r}.")
    n_bins = int(n_bins)
    conf = p.max(axis=1)
    correct = (np.argmax(p, axis=1) == y).astype(np.int64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # the same bin assignment calibration_curve uses, to know which bins its values belong to
    counts = np.bincount(np.searchsorted(edges[1:-1], conf), minlength=n_bins)
    acc_nz, conf_nz = calibration_curve(
        correct, conf, n_bins=n_bins, strategy="uniform", pos_label=1
    )
    nonzero = counts > 0
    if int(nonzero.sum()) != len(acc_nz):  # pragma: no cover - would mean sklearn changed binning
        raise RuntimeError("calibration bins disagree with sklearn.calibration.calibration_curve")
    accuracy: list[float | None] = [None] * n_bins
    confidence: list[float | None] = [None] * n_bins
    for i, a, c in zip(np.flatnonzero(nonzero), acc_nz, conf_nz):
        accuracy[i], confidence[i] = float(a), float(c)
    weights = counts[nonzero] / counts.sum()
    ece = float(np.sum(weights * np.abs(acc_nz - conf_nz)))
    return {
        "n_bins": n_bins,
        "edges": [float(e) for e in edges],
        "centers": [float(c) for c in (edges[:-1] + edges[1:]) / 2],
        "accuracy": accuracy,
        "confidence": confidence,
        "counts": [int(c) for c in counts],
        "ece": ece,
    }


def _downsample(n: int, max_points: int) -> np.ndarray:
    """Indices keeping at most ``max_points`` points, always the first and the last."""
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, max_points)).astype(np.int64))


def curve_points(
    y_true: Any, y_prob: Any, *, max_points: int = 200, pos_label: int | None = None
) -> dict:
    """ROC and precision-recall curve points for plotting, ``pos_label`` vs rest (default: the
    last class, i.e. malignant in the binary task).

    Returns ``{"roc": {"fpr", "tpr", "thresholds", "auc"}, "pr": {"precision", "recall", "ap"},
    "pos_label", "n_points_roc", "n_points_pr"}``, each list at most ``max_points`` long (evenly
    thinned, first and last kept). ``roc_curve``'s first threshold is ``inf``; it is reported as
    ``None``. If ``y_true`` has only one class the lists are empty and ``auc``/``ap`` are ``None``.
    """
    if (isinstance(max_points, bool) or not isinstance(max_points, (int, np.integer))
            or max_points < 2):
        raise MetricsInputError(f"max_points must be an integer >= 2; got {max_points!r}.")
    y, p = _check_inputs(y_true, y_prob)
    pos = p.shape[1] - 1 if pos_label is None else pos_label
    if isinstance(pos, bool) or not isinstance(pos, (int, np.integer)) or not 0 <= pos < p.shape[1]:
        raise MetricsInputError(
            f"pos_label must be a class index 0..{p.shape[1] - 1}; got {pos_label!r}."
        )
    yb = (y == pos).astype(np.int64)
    score = p[:, pos]
    out: dict[str, Any] = {
        "roc": {"fpr": [], "tpr": [], "thresholds": [], "auc": None},
        "pr": {"precision": [], "recall": [], "ap": None},
    }
    if yb.min() != yb.max():
        fpr, tpr, thr = roc_curve(yb, score, pos_label=1)
        i = _downsample(len(fpr), max_points)
        out["roc"] = {
            "fpr": [float(v) for v in fpr[i]],
            "tpr": [float(v) for v in tpr[i]],
            "thresholds": [_f(v) for v in thr[i]],
            "auc": _f(roc_auc_score(yb, score)),
        }
        prec, rec, _ = precision_recall_curve(yb, score, pos_label=1)
        j = _downsample(len(prec), max_points)
        out["pr"] = {
            "precision": [float(v) for v in prec[j]],
            "recall": [float(v) for v in rec[j]],
            "ap": _f(average_precision_score(yb, score, pos_label=1)),
        }
    out["pos_label"] = int(pos)
    out["n_points_roc"] = len(out["roc"]["fpr"])
    out["n_points_pr"] = len(out["pr"]["precision"])
    return out


def _core(y: np.ndarray, p: np.ndarray, yp: np.ndarray, names: Sequence[str], n_bins: int,
          pats: np.ndarray | None) -> dict:
    C = p.shape[1]
    labels = list(range(C))
    present = set(np.unique(y).tolist())
    all_present = len(present) == C
    binary = C == 2

    prec, rec, f1, sup = precision_recall_fscore_support(
        y, yp, labels=labels, average=None, zero_division=0.0
    )
    _, spec_c, _ = sensitivity_specificity_support(y, yp, labels=labels, average=None)
    per_class = {}
    for c, name in enumerate(names):
        has_neg = bool(np.any(y != c))
        per_class[name] = {
            "precision": _f(prec[c]),
            "recall": _f(rec[c]) if sup[c] > 0 else None,
            "f1": _f(f1[c]),
            "specificity": _f(spec_c[c]) if has_neg else None,
            "support": int(sup[c]),
        }

    def _avg(kind: str) -> dict:
        pr, rc, f, _ = precision_recall_fscore_support(
            y, yp, labels=labels, average=kind, zero_division=0.0
        )
        return {"precision": _f(pr), "recall": _f(rc), "f1": _f(f)}

    if binary:
        sens = _f(recall_score(y, yp, pos_label=1, average="binary", zero_division=0.0)) \
            if 1 in present else None
        spec = _f(specificity_score(y, yp, pos_label=1, average="binary")) if 0 in present else None
        if all_present:
            gmean = _f(geometric_mean_score(y, yp, average="binary", pos_label=1))
            iba = _f(make_index_balanced_accuracy(alpha=IBA_ALPHA, squared=True)(
                geometric_mean_score)(y, yp, average="binary", pos_label=1))
        else:
            gmean = iba = None
        roc_auc = _f(roc_auc_score(y, p[:, 1])) if all_present else None
        pr_auc = _f(average_precision_score(y, p[:, 1], pos_label=1)) if 1 in present else None
    else:
        sens = _f(recall_score(y, yp, labels=labels, average="macro", zero_division=0.0)) \
            if all_present else None
        spec = _f(specificity_score(y, yp, labels=labels, average="macro")) if all_present else None
        if all_present:
            gmean = _f(geometric_mean_score(y, yp, labels=labels, average="multiclass"))
            iba = _f(make_index_balanced_accuracy(alpha=IBA_ALPHA, squared=True)(
                geometric_mean_score)(y, yp, labels=labels, average="multiclass"))
            roc_auc = _f(roc_auc_score(y, p, multi_class="ovr", average="macro", labels=labels))
            pr_auc = _f(average_precision_score(np.eye(C, dtype=np.int64)[y], p, average="macro"))
        else:
            gmean = iba = roc_auc = pr_auc = None

    report: dict[str, Any] = {
        "n": int(y.shape[0]),
        "n_classes": C,
        "class_names": list(names),
        "accuracy": _f(accuracy_score(y, yp)),
        "balanced_accuracy": _f(balanced_accuracy_score(y, yp)),
        "per_class": per_class,
        "macro": _avg("macro"),
        "weighted": _avg("weighted"),
        "sensitivity": sens,
        "specificity": spec,
        "gmean": gmean,
        "iba": iba,
        "mcc": _f(matthews_corrcoef(y, yp)),
        "roc_auc": roc_auc,
        "pr_auc": pr_auc,
        "confusion_matrix": confusion_matrix(y, yp, labels=labels).tolist(),
        "ece": _calibration(y, p, n_bins)["ece"],
        "patient_accuracy": None,
        "n_patients": None,
    }
    if pats is not None:
        report["patient_accuracy"], report["n_patients"] = _patient_accuracy(y, yp, pats)
    return report


def classification_report(
    y_true: Any,
    y_prob: Any,
    *,
    class_names: Sequence[str] = CLASSES,
    patients: Any = None,
    magnifications: Any = None,
    threshold: float = 0.5,
    n_bins: int = 10,
) -> dict:
    """All metrics of one evaluation as a JSON-ready dict (see the module docstring for
    conventions and ``docs/metrics.md`` for each metric).

    Keys: ``n, n_classes, class_names, threshold, accuracy, balanced_accuracy,
    per_class{name: {precision, recall, f1, specificity, support}}, macro{precision, recall, f1},
    weighted{...}, sensitivity, specificity, gmean, iba, mcc, roc_auc, pr_auc,
    confusion_matrix (rows true, cols predicted), ece, patient_accuracy, n_patients,
    per_magnification`` (``{"40": {...}, "100": {...}}`` with the same keys bar
    ``per_magnification``; ``None`` when magnifications are not given).

    Raises :class:`MetricsInputError` (a :class:`dala.errors.DalaError`) for unusable input.
    """
    y, p = _check_inputs(y_true, y_prob)
    names = [str(c) for c in class_names]
    if len(names) != p.shape[1]:
        raise MetricsInputError(
            f"class_names has {len(names)} names but y_prob has {p.shape[1]} classes; "
            f"give one name per column."
        )
    if len(set(names)) != len(names):
        raise MetricsInputError(f"class_names must be distinct; got {names}.")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.number)) \
            or not 0.0 <= float(threshold) <= 1.0:
        raise MetricsInputError(f"threshold must be a number in [0, 1]; got {threshold!r}.")
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise MetricsInputError(f"n_bins must be a positive integer; got {n_bins!r}.")
    pats = None if patients is None else _check_groups(patients, y.shape[0], "patients")
    mags = (None if magnifications is None
            else _check_groups(magnifications, y.shape[0], "magnifications"))
    yp = _predict(p, float(threshold))

    with warnings.catch_warnings():
        # 0/0 cases are handled by the documented conventions; the library warnings are noise here
        warnings.simplefilter("ignore")
        report = _core(y, p, yp, names, n_bins, pats)
        report["threshold"] = float(threshold) if p.shape[1] == 2 else None
        report["per_magnification"] = None
        if mags is not None:
            keys = np.array([_mag_key(m) for m in mags])
            per_mag = {}
            for k in sorted(set(keys.tolist()), key=_mag_sort):
                m = keys == k
                sub = _core(y[m], p[m], yp[m], names, n_bins, None if pats is None else pats[m])
                sub["threshold"] = report["threshold"]
                per_mag[k] = sub
            report["per_magnification"] = per_mag
    return _jsonable(report)
