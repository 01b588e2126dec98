"""Uncertainty for BreakHis results: the patient-clustered bootstrap and paired comparisons.

Why clustered: the images of one patient are strongly correlated (same tissue, same stain, same
slide), so resampling *images* pretends to have far more independent evidence than the test set
holds and gives intervals that are too narrow. Here the unit resampled is the **test patient**:
a resample draws patients with replacement and each drawn patient brings all their images.

How it stays fast: a binary evaluation only needs, per patient, the four confusion counts
(tn, fp, fn, tp) and the scores; a resample is a vector of patient multiplicities ``w`` (drawn as
one multinomial), so the resampled confusion counts of all ``n_boot`` resamples are one matrix
product ``W @ counts`` and every confusion-based metric follows for all resamples at once. The
*definitions* are the libraries' (``dala.metrics``: scikit-learn / imbalanced-learn): the point
estimate is the library call :func:`dala.metrics.classification_report` makes (tests check both
agree), and the tests check that the vectorised replicates equal the library called with
``sample_weight`` = the multiplicities.

Binary task only (0 benign, 1 malignant = positive), as in the paper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from dala.metrics import IBA_ALPHA, MetricsInputError

__all__ = [
    "METRICS",
    "Predictions",
    "difference_ci",
    "holm",
    "resample_weights",
    "interval",
    "metric_ci",
    "metric_value",
    "patient_bootstrap",
    "trials_difference",
    "wilcoxon_p",
]


@dataclass(frozen=True)
class Predictions:
    """One evaluation: per-image truth, malignant probability and patient key."""

    y_true: np.ndarray
    y_prob: np.ndarray  # (N,) probability of malignant
    patients: np.ndarray
    threshold: float = 0.5

    @classmethod
    def of(cls, obj: Any, *, threshold: float | None = None) -> "Predictions":
        """Accept a :class:`Predictions`, a mapping with ``y_true, y_prob, patients``
        (optional ``threshold``) or a tuple ``(y_true, y_prob, patients)``."""
        if isinstance(obj, Predictions):
            p = obj
        elif isinstance(obj, Mapping):
            missing = [k for k in ("y_true", "y_prob", "patients") if k not in obj]
            if missing:
                raise MetricsInputError(f"predictions lack {missing}; give y_true, y_prob, patients.")
            p = _make(obj["y_true"], obj["y_prob"], obj["patients"],
                      float(obj.get("threshold", 0.5)))
        elif isinstance(obj, (tuple, list)) and len(obj) in (3, 4):
            p = _make(*obj[:3], float(obj[3]) if len(obj) == 4 else 0.5)
        else:
            raise MetricsInputError(
                "predictions must be a Predictions, a dict with y_true/y_prob/patients or a "
                f"(y_true, y_prob, patients) tuple; got {type(obj).__name__}.")
        if threshold is not None:
            p = Predictions(p.y_true, p.y_prob, p.patients, float(threshold))
        return p


def _make(y_true: Any, y_prob: Any, patients: Any, threshold: float) -> Predictions:
    y = np.asarray(y_true)
    if y.ndim != 1 or y.size == 0:
        raise MetricsInputError(f"y_true must be a non-empty 1-D label array; got shape {y.shape}.")
    if not np.isin(y, (0, 1)).all():
        raise MetricsInputError("the bootstrap is for the binary task: y_true must hold 0/1.")
    p = np.asarray(y_prob, dtype=np.float64)
    if p.ndim == 2 and p.shape[1] == 2:
        p = p[:, 1]
    if p.ndim != 1 or p.shape[0] != y.shape[0]:
        raise MetricsInputError(
            f"y_prob must give one malignant probability per image ({y.shape[0]}); "
            f"got shape {np.asarray(y_prob).shape}.")
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise MetricsInputError("y_prob must hold probabilities in [0, 1] (no NaN).")
    pats = np.asarray([str(v) for v in np.asarray(patients, dtype=object).ravel()])
    if pats.shape[0] != y.shape[0]:
        raise MetricsInputError(
            f"patients has {pats.shape[0]} entries but there are {y.shape[0]} images; "
            "give one patient key per image.")
    if not 0.0 <= threshold <= 1.0:
        raise MetricsInputError(f"threshold must be in [0, 1]; got {threshold!r}.")
    return Predictions(y.astype(np.int64), p, pats, float(threshold))


# ---------------------------------------------------------------------------------------------
# per-patient sufficient statistics and vectorised metrics


@dataclass
class _Table:
    """Per-patient counts of one evaluation (P patients)."""

    keys: np.ndarray  # (P,) patient keys, sorted
    counts: np.ndarray  # (P, 4) tn, fp, fn, tp
    acc: np.ndarray  # (P,) per-patient image accuracy (for patient_accuracy)
    pos_at: np.ndarray  # (P, U) positive images of patient p with the u-th distinct score
    neg_at: np.ndarray  # (P, U) negative images ...


def _table(pred: Predictions) -> _Table:
    keys, code = np.unique(pred.patients, return_inverse=True)
    n_pat = keys.shape[0]
    y_hat = (pred.y_prob >= pred.threshold).astype(np.int64)
    cell = 2 * pred.y_true + y_hat  # 0 tn, 1 fp, 2 fn, 3 tp
    counts = np.zeros((n_pat, 4), dtype=np.float64)
    np.add.at(counts, (code, cell), 1.0)
    acc = (counts[:, 0] + counts[:, 3]) / counts.sum(axis=1)
    _, score_code = np.unique(pred.y_prob, return_inverse=True)
    n_u = int(score_code.max()) + 1
    pos_at = np.zeros((n_pat, n_u))
    neg_at = np.zeros((n_pat, n_u))
    is_pos = pred.y_true == 1
    np.add.at(pos_at, (code[is_pos], score_code[is_pos]), 1.0)
    np.add.at(neg_at, (code[~is_pos], score_code[~is_pos]), 1.0)
    return _Table(keys, counts, acc, pos_at, neg_at)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1.0), np.nan)


def _zero_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """scikit-learn's ``zero_division=0``: a class never predicted has precision 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1.0), 0.0)


def _confusion_metric(name: str) -> Callable[[np.ndarray], np.ndarray]:
    def f(c: np.ndarray) -> np.ndarray:  # c: (B, 4)
        tn, fp, fn, tp = c[:, 0], c[:, 1], c[:, 2], c[:, 3]
        n = tn + fp + fn + tp
        sens = _div(tp, tp + fn)
        spec = _div(tn, tn + fp)
        prec1 = _zero_div(tp, tp + fp)
        prec0 = _zero_div(tn, tn + fn)
        rec1 = _zero_div(tp, tp + fn)
        rec0 = _zero_div(tn, tn + fp)
        f1_1 = _zero_div(2 * tp, 2 * tp + fp + fn)
        f1_0 = _zero_div(2 * tn, 2 * tn + fn + fp)
        if name == "accuracy":
            return _div(tn + tp, n)
        if name == "balanced_accuracy":
            # scikit-learn averages the recalls of the classes present
            return np.nanmean(np.stack([sens, spec]), axis=0)
        if name == "sensitivity" or name == "recall":
            return sens
        if name == "specificity":
            return spec
        if name == "gmean":
            return np.sqrt(sens * spec)
        if name == "iba":
            return (1.0 + IBA_ALPHA * (sens - spec)) * sens * spec
        if name == "precision":
            return prec1
        if name == "f1":
            return f1_1
        if name == "precision_macro":
            return (prec0 + prec1) / 2
        if name == "recall_macro":
            return (rec0 + rec1) / 2
        if name == "f1_macro":
            return (f1_0 + f1_1) / 2
        if name == "mcc":
            num = tp * tn - fp * fn
            den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
            return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
        raise KeyError(name)

    return f


# metric name -> how classification_report holds it (the reference the tests compare with)
_REPORT_KEY: dict[str, Callable[[dict], Any]] = {
    "accuracy": lambda r: r["accuracy"],
    "balanced_accuracy": lambda r: r["balanced_accuracy"],
    "sensitivity": lambda r: r["sensitivity"],
    "recall": lambda r: r["sensitivity"],
    "specificity": lambda r: r["specificity"],
    "gmean": lambda r: r["gmean"],
    "iba": lambda r: r["iba"],
    "precision": lambda r: r["per_class"]["malignant"]["precision"],
    "f1": lambda r: r["per_class"]["malignant"]["f1"],
    "precision_macro": lambda r: r["macro"]["precision"],
    "recall_macro": lambda r: r["macro"]["recall"],
    "f1_macro": lambda r: r["macro"]["f1"],
    "mcc": lambda r: r["mcc"],
    "roc_auc": lambda r: r["roc_auc"],
    "patient_accuracy": lambda r: r["patient_accuracy"],
}


def _library_value(metric: str, y: np.ndarray, p: np.ndarray, y_hat: np.ndarray,
                   pats: np.ndarray) -> float:
    """The one metric asked for, with the same library call and conventions as
    :func:`dala.metrics.classification_report` (which computes all of them and is ~100x slower)."""
    from imblearn.metrics import (geometric_mean_score, make_index_balanced_accuracy,
                                  specificity_score)
    from sklearn import metrics as skm

    from dala.metrics import patient_accuracy

    both = len(np.unique(y)) == 2
    if metric == "accuracy":
        return skm.accuracy_score(y, y_hat)
    if metric == "balanced_accuracy":
        return skm.balanced_accuracy_score(y, y_hat)
    if metric in ("sensitivity", "recall"):
        return skm.recall_score(y, y_hat, zero_division=0.0) if (y == 1).any() else math.nan
    if metric == "specificity":
        return specificity_score(y, y_hat, pos_label=1, average="binary") if (y == 0).any() \
            else math.nan
    if metric == "gmean":
        return geometric_mean_score(y, y_hat, average="binary", pos_label=1) if both else math.nan
    if metric == "iba":
        iba = make_index_balanced_accuracy(alpha=IBA_ALPHA, squared=True)(geometric_mean_score)
        return iba(y, y_hat, average="binary", pos_label=1) if both else math.nan
    if metric == "precision":
        return skm.precision_score(y, y_hat, zero_division=0.0)
    if metric == "f1":
        return skm.f1_score(y, y_hat, zero_division=0.0)
    if metric.endswith("_macro"):
        prf = skm.precision_recall_fscore_support(y, y_hat, labels=[0, 1], average="macro",
                                                  zero_division=0.0)
        return prf[("precision_macro", "recall_macro", "f1_macro").index(metric)]
    if metric == "mcc":
        return skm.matthews_corrcoef(y, y_hat)
    if metric == "roc_auc":
        return skm.roc_auc_score(y, p) if both else math.nan
    if metric == "patient_accuracy":
        return patient_accuracy(y, y_hat, pats)
    raise KeyError(metric)


METRICS: tuple[str, ...] = tuple(_REPORT_KEY)


def _check_metric(metric: str) -> str:
    if metric not in _REPORT_KEY:
        raise MetricsInputError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}.")
    return metric


def _replicates(table: _Table, metric: str, weights: np.ndarray) -> np.ndarray:
    """Metric of every resample; ``weights`` (B, P) patient multiplicities."""
    if metric == "patient_accuracy":
        # mean over the drawn patients (with repetition) of each one's image accuracy
        return (weights @ table.acc) / weights.sum(axis=1)
    if metric == "roc_auc":
        pos = weights @ table.pos_at  # (B, U) weighted positives per distinct score
        neg = weights @ table.neg_at
        neg_below = np.cumsum(neg, axis=1) - neg
        # Mann-Whitney: a positive beats every lower negative and ties count half
        wins = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
        return _div(wins, pos.sum(axis=1) * neg.sum(axis=1))
    return _confusion_metric(metric)(weights @ table.counts)


def resample_weights(n_pat: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n_pat) multiplicities of each patient in each bootstrap resample: drawing n_pat
    patients with replacement is one multinomial draw, so every resample is one row of weights."""
    return rng.multinomial(n_pat, np.full(n_pat, 1.0 / n_pat), size=n_boot).astype(np.float64)


def _check_boot(n_boot: int) -> int:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise MetricsInputError(f"n_boot must be a positive integer; got {n_boot!r}.")
    return int(n_boot)


# ---------------------------------------------------------------------------------------------
# public API


def metric_value(y_true: Any, y_prob: Any, patients: Any, metric: str, *,
                 threshold: float = 0.5) -> float:
    """The metric of the whole test set, as :func:`dala.metrics.classification_report` computes
    it (``nan`` where the data cannot tell, e.g. GMean with one class)."""
    pred = _make(y_true, y_prob, patients, float(threshold))
    return _value(pred, _check_metric(metric))


def _value(pred: Predictions, metric: str) -> float:
    import warnings

    y_hat = (pred.y_prob >= pred.threshold).astype(np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 0/0 cases follow dala.metrics' documented conventions
        return float(_library_value(metric, pred.y_true, pred.y_prob, y_hat, pred.patients))


def patient_bootstrap(y_true: Any, y_prob: Any, patients: Any, metric: str, *,
                      n_boot: int = 1000, seed: int = 0, threshold: float = 0.5) -> np.ndarray:
    """``n_boot`` bootstrap replicates of ``metric``, resampling test **patients** with
    replacement (a patient's images move together). ``nan`` marks resamples where the metric
    is undefined (e.g. no benign image drawn for specificity)."""
    pred = _make(y_true, y_prob, patients, float(threshold))
    table = _table(pred)
    w = resample_weights(table.keys.shape[0], _check_boot(n_boot), np.random.default_rng(seed))
    return _replicates(table, _check_metric(metric), w)


def interval(values: Any, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates (``nan`` replicates ignored)."""
    v = np.asarray(values, dtype=np.float64)
    if not 0.0 < level < 1.0:
        raise MetricsInputError(f"level must be in (0, 1); got {level!r}.")
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(v, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def metric_ci(y_true: Any, y_prob: Any, patients: Any, metric: str, *, n_boot: int = 1000,
              seed: int = 0, threshold: float = 0.5, level: float = 0.95) -> dict:
    """``{metric, value, lo, hi, level, n_patients, n_images, n_boot, n_undefined, method}``."""
    pred = _make(y_true, y_prob, patients, float(threshold))
    metric = _check_metric(metric)
    table = _table(pred)
    reps = _replicates(table, metric,
                       resample_weights(table.keys.shape[0], _check_boot(n_boot),
                                np.random.default_rng(seed)))
    lo, hi = interval(reps, level)
    return {
        "metric": metric, "value": _value(pred, metric), "lo": lo, "hi": hi, "level": level,
        "n_patients": int(table.keys.shape[0]), "n_images": int(pred.y_true.shape[0]),
        "n_boot": int(n_boot), "n_undefined": int(np.sum(~np.isfinite(reps))),
        "threshold": pred.threshold, "method": "patient-clustered percentile bootstrap",
    }


def _p_from_replicates(diff: np.ndarray) -> float:
    """Two-sided bootstrap p-value of "difference = 0": twice the smaller tail mass."""
    d = diff[np.isfinite(diff)]
    if d.size == 0:
        return float("nan")
    tail = min(np.mean(d <= 0.0), np.mean(d >= 0.0))
    return float(min(1.0, 2.0 * tail))


def difference_ci(a: Any, b: Any, *, paired: bool, metric: str = "accuracy",
                  n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Difference ``a - b`` of ``metric`` between two evaluations, with its interval.

    ``paired=True``: the same test patients (e.g. two models on one trial); each resample draws
    one set of patients used for both, so patient difficulty cancels. ``paired=False``:
    independent test sets (e.g. the leakage pair: image-level vs patient-level split); each is
    resampled on its own. ``a``/``b``: :class:`Predictions`, dicts or tuples (see
    :meth:`Predictions.of`). Returns ``{metric, a, b, difference, lo, hi, level, significant,
    p_value, paired, n_patients_a, n_patients_b, n_boot}``; ``significant`` means the interval
    excludes 0.
    """
    pa, pb = Predictions.of(a), Predictions.of(b)
    metric = _check_metric(metric)
    n_boot = _check_boot(n_boot)
    ta, tb = _table(pa), _table(pb)
    rng = np.random.default_rng(seed)
    if paired:
        if not np.array_equal(ta.keys, tb.keys):
            only_a = sorted(set(ta.keys) - set(tb.keys))[:5]
            only_b = sorted(set(tb.keys) - set(ta.keys))[:5]
            raise MetricsInputError(
                "a paired comparison needs the same test patients; "
                f"only in a: {only_a}, only in b: {only_b}. Use paired=False for different "
                "test sets.")
        w = resample_weights(ta.keys.shape[0], n_boot, rng)
        wa = wb = w
    else:
        wa = resample_weights(ta.keys.shape[0], n_boot, rng)
        wb = resample_weights(tb.keys.shape[0], n_boot, rng)
    diff = _replicates(ta, metric, wa) - _replicates(tb, metric, wb)
    lo, hi = interval(diff, level)
    va, vb = _value(pa, metric), _value(pb, metric)
    return {
        "metric": metric, "a": va, "b": vb, "difference": va - vb, "lo": lo, "hi": hi,
        "level": level, "significant": bool(np.isfinite(lo) and (lo > 0 or hi < 0)),
        "p_value": _p_from_replicates(diff), "paired": bool(paired),
        "n_patients_a": int(ta.keys.shape[0]), "n_patients_b": int(tb.keys.shape[0]),
        "n_boot": n_boot,
    }


def trials_difference(pairs: Sequence[tuple[Any, Any]], *, metric: str = "accuracy",
                      n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean over trials of the paired difference ``a - b`` (the same test patients within each
    trial), with a stratified bootstrap: patients are resampled within each trial, the same draw
    for both models, and the resampled per-trial differences are averaged.

    Returns ``{metric, difference, lo, hi, level, significant, p_value, per_trial, n_trials,
    wilcoxon_p, wilcoxon_min_p}``: ``wilcoxon_p`` is scipy's exact Wilcoxon signed-rank test on
    the per-trial differences and ``wilcoxon_min_p`` the smallest p-value it can give with this
    many trials (0.0625 for 5: such a test can never reach 0.05)."""
    if not pairs:
        raise MetricsInputError("trials_difference needs at least one (a, b) trial pair.")
    metric = _check_metric(metric)
    n_boot = _check_boot(n_boot)
    rng = np.random.default_rng(seed)
    per_trial, reps = [], np.zeros(n_boot)
    for a, b in pairs:
        pa, pb = Predictions.of(a), Predictions.of(b)
        ta, tb = _table(pa), _table(pb)
        if not np.array_equal(ta.keys, tb.keys):
            raise MetricsInputError(
                "each trial's two runs must share their test patients (a paired comparison); "
                "were they run on the study's fixed splits?")
        w = resample_weights(ta.keys.shape[0], n_boot, rng)
        reps += _replicates(ta, metric, w) - _replicates(tb, metric, w)
        per_trial.append(_value(pa, metric) - _value(pb, metric))
    reps /= len(pairs)
    lo, hi = interval(reps, level)
    d = float(np.mean(per_trial))
    return {
        "metric": metric, "difference": d, "lo": lo, "hi": hi, "level": level,
        "significant": bool(np.isfinite(lo) and (lo > 0 or hi < 0)),
        "p_value": _p_from_replicates(reps), "per_trial": [float(x) for x in per_trial],
        "n_trials": len(pairs), "wilcoxon_p": wilcoxon_p(per_trial),
        "wilcoxon_min_p": wilcoxon_min_p(len(pairs)),
    }


def wilcoxon_p(differences: Sequence[float]) -> float | None:
    """scipy's two-sided Wilcoxon signed-rank p-value; ``None`` when every difference is 0 or
    there are none (the test is undefined)."""
    from scipy.stats import wilcoxon

    d = np.asarray([x for x in differences if x is not None and math.isfinite(x)], dtype=float)
    if d.size == 0 or np.all(d == 0):
        return None
    return float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def wilcoxon_min_p(n: int) -> float:
    """Smallest two-sided exact Wilcoxon p-value with ``n`` non-zero differences: ``2 / 2**n``
    (all of one sign)."""
    return float(min(1.0, 2.0 / 2 ** n)) if n > 0 else 1.0


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1), in input order;
    ``None``/``nan`` entries stay ``None`` and do not count as tests."""
    idx = [i for i, p in enumerate(p_values) if p is not None and math.isfinite(p)]
    m = len(idx)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda j: p_values[j])):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        out[i] = running
    return out
