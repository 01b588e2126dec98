"""Runs side by side, UI-free: readable unique labels, the comparison table, the leakage pairs and
the difference between the two runs of a pair with its interval (a bootstrap over test patients,
:func:`dala.stats.difference_ci`). The Compare page and notebook 03 call these; the figures are in
:mod:`dala.plots`, which re-exports these names.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import pandas as pd

#: DALAResNet50's accuracies as the paper reports them (arXiv 2308.13150), per magnification.
#: The split protocol behind them is not stated; patient-level peers report 85-91 %.
REPORTED_DALA_ACCURACY: dict[int, float] = {40: 0.985, 100: 0.987, 200: 0.979, 400: 0.943}
REPORTED_NOTE = ("reported by the DALAResNet50 paper (arXiv 2308.13150) on real BreakHis; "
                 "its split protocol is not stated")



def weight_label(weight_source: str | None) -> str:
    """Plain words for a run's or checkpoint's ``weight_source``, each fact said once:
    "random weights (not pretrained)", "random weights (not pretrained: offline ...)",
    "pretrained start: imagenet:torchvision/IMAGENET1K_V2"."""
    ws = str(weight_source or "unknown").strip()
    if ws.startswith("random"):
        reason = ws[len("random"):].strip().strip("()").strip()
        return "random weights (not pretrained)" + (f": {reason}" if reason and reason != "pretrained=False" else "")
    return f"pretrained start: {ws}"


def _run_time(name: str, created: float | None = None) -> str:
    """"Jan 01 00:01" from a run folder's ``YYYYmmdd-HHMMSS`` prefix (else its creation time)."""
    import time as _time

    try:
        return _time.strftime("%b %d %H:%M:%S", _time.strptime(str(name)[:15], "%Y%m%d-%H%M%S"))
    except ValueError:
        return _time.strftime("%b %d %H:%M:%S", _time.localtime(created)) if created else ""


def run_label(config: Mapping, name: str = "", *, created: float | None = None) -> str:
    """A readable label: ``model · split · magnification [· imbalance] · time``."""
    mag = f"{config.get('magnification')}X" if config.get("magnification") else "all mags"
    imb = config.get("imbalance") or "none"
    parts = [str(config.get("model", "?")), f"{config.get('split_mode', '?')}-level", mag]
    if imb != "none":
        parts.append(imb)
    if config.get("target_ratio"):
        parts.append(f"ratio {config['target_ratio']:g}")
    when = _run_time(name, created)
    return " · ".join(parts + ([when] if when else []))


def run_labels(runs: Sequence[Mapping]) -> dict[str, str]:
    """``{run name: label}``, the labels unique (a clash gets the folder name's tail)."""
    labels = {r["name"]: run_label(r.get("config") or {}, r["name"], created=r.get("created")) for r in runs}
    seen: dict[str, int] = {}
    for lab in labels.values():
        seen[lab] = seen.get(lab, 0) + 1
    for name, lab in labels.items():
        if seen[lab] > 1:
            labels[name] = f"{lab} · {name[-24:]}"
    return labels


def _label(r: Mapping) -> str:
    return str(r.get("label") or r["name"])


def compare_table(runs: Sequence[Mapping]) -> pd.DataFrame:
    """One row per finished run (:func:`dala.train.folder.compare_row`: headline test metrics, then
    the split, parameter count and throughput), with its readable ``label``. ``runs``: dicts with
    ``name``, ``config``, ``report`` (and optionally ``label``)."""
    from dala.train.folder import compare_row

    rows = []
    for r in runs:
        row = compare_row(r["name"], r.get("config") or {}, r.get("report"))
        if row is not None:
            rows.append({"run": row.pop("run"), "label": _label(r), **row})
    return pd.DataFrame(rows)


def best_in_columns(table: pd.DataFrame, metrics: Iterable[str]) -> dict[str, list[int]]:
    """Row positions holding the best (highest) value of each metric column (ties all marked)."""
    out = {}
    for m in metrics:
        if m not in table or table[m].isna().all():
            continue
        col = pd.to_numeric(table[m], errors="coerce")
        best = col.max()
        out[m] = [i for i, v in enumerate(col) if v is not None and not pd.isna(v) and math.isclose(v, best, abs_tol=1e-12)]
    return out


def measured_accuracy_by_magnification(run: Mapping) -> dict[int, float]:
    """Test accuracy per magnification of one run (from ``per_magnification``, else the run's own
    magnification)."""
    test = (run.get("report") or {}).get("test") or {}
    per = test.get("per_magnification") or {}
    out = {}
    for k, v in per.items():
        try:
            mag = int(str(k).rstrip("Xx"))
        except ValueError:
            continue
        if v and v.get("accuracy") is not None:
            out[mag] = float(v["accuracy"])
    if not out and test.get("accuracy") is not None and (run.get("config") or {}).get("magnification"):
        out[int(run["config"]["magnification"])] = float(test["accuracy"])
    return out


_IGNORED_FOR_PAIRING = {"split_mode", "name", "seed", "device", "num_workers", "split_file", "data_root", "precision"}


def leakage_pairs(runs: Sequence[Mapping]) -> list[tuple[str, str, dict]]:
    """Pairs of runs whose configs differ only by split mode (patient vs image): the leakage lesson.
    Returns ``(patient_run, image_run, {"patient": acc, "image": acc})`` for each pair."""
    out = []
    for i, a in enumerate(runs):
        for b in runs[i + 1:]:
            ca, cb = dict(a.get("config") or {}), dict(b.get("config") or {})
            if {ca.get("split_mode"), cb.get("split_mode")} != {"patient", "image"}:
                continue
            keys = (set(ca) | set(cb)) - _IGNORED_FOR_PAIRING
            if all(ca.get(k) == cb.get(k) for k in keys) and ca.get("data_root") == cb.get("data_root"):
                pat, img = (a, b) if ca["split_mode"] == "patient" else (b, a)

                def acc(r):
                    return ((r.get("report") or {}).get("test") or {}).get("accuracy")

                out.append((pat["name"], img["name"], {"patient": acc(pat), "image": acc(img)}))
    return out


def report_predictions(report: Mapping | None, *, part: str = "test") -> dict | None:
    """A finished run's per-image predictions on ``part`` (``"test"`` or ``"val"``) as
    ``{y_true, y_prob, patients, probs}`` (the input of :mod:`dala.stats`; ``probs`` the full
    (N, C) rows), from ``report["<part>_predictions"]``; truth and patient come from the BreakHis
    file name of each image id. None when the report has no predictions or a name does not follow
    the convention."""
    import numpy as np

    from dala.data.breakhis import parse_name
    from dala.errors import DataError

    preds = (report or {}).get(f"{part}_predictions") or {}
    ids, probs = preds.get("image_id"), preds.get("probs")
    if not isinstance(ids, list) or not isinstance(probs, list) or not ids or len(ids) != len(probs):
        return None
    try:
        names = [parse_name(f"{i}.png") for i in ids]
        p = np.asarray(probs, dtype=np.float64)
    except (DataError, TypeError, ValueError):
        return None
    y_prob = p[:, -1] if p.ndim == 2 else p  # (N,) probability of malignant
    if not np.all(np.isfinite(y_prob)):
        return None
    full = p if p.ndim == 2 and p.shape[1] >= 2 else np.stack([1 - y_prob, y_prob], axis=1)  # (N, C)
    return {"y_true": np.array([int(n.label == "malignant") for n in names]), "y_prob": y_prob,
            "patients": np.array([n.patient for n in names]), "probs": full}


def leakage_difference(patient_run: Mapping, image_run: Mapping, *, metric: str = "accuracy",
                       n_boot: int = 1000, seed: int = 0) -> dict | None:
    """Image-level minus patient-level ``metric`` of a leakage pair with its 95 % interval, each
    run's test patients resampled on their own (two different test sets: unpaired). The dict of
    :func:`dala.stats.difference_ci` (``a`` image-level, ``b`` patient-level, ``difference``,
    ``lo``, ``hi``, ``significant``, ``p_value``, ``n_patients_a/b``); None when either run lacks
    per-image predictions."""
    from dala.stats import difference_ci

    a, b = report_predictions(image_run.get("report")), report_predictions(patient_run.get("report"))
    if a is None or b is None:
        return None
    return difference_ci(a, b, paired=False, metric=metric, n_boot=n_boot, seed=seed)


def describe_difference(diff: Mapping, *, what: str = "image-level minus patient-level") -> str:
    """One honest sentence for a difference dict: the two values, the gap in points with its
    interval, and whether the interval excludes 0."""
    def pct(v: float) -> str:
        return f"{100 * v:.1f} %"

    gap, lo, hi = 100 * diff["difference"], 100 * diff["lo"], 100 * diff["hi"]
    n = min(diff.get("n_patients_a", 0), diff.get("n_patients_b", 0))
    text = (f"{pct(diff['a'])} vs {pct(diff['b'])}: {what} {gap:+.1f} points "
            f"(95 % interval {lo:+.1f} to {hi:+.1f}, bootstrap over test patients)")
    if not diff.get("significant"):
        text += f"; not significant: with {n} test patients a gap this size can be noise"
    return text


# ----------------------------------------------------------------------------- calibration, referral
CALIBRATION_METRICS = ("accuracy", "balanced_accuracy", "gmean", "sensitivity", "specificity", "f1_macro")
OLDER_RUN = "uncalibrated (older run: no temperature or locked threshold was fitted on validation)"


def run_calibration(report: Mapping | None, config: Mapping | None = None):
    """The :class:`dala.calibration.Calibration` a run fitted on validation: ``report["calibration"]``
    when it holds one (older reports keep reliability *bins* under that key: not a calibration),
    else the run/checkpoint ``config["calibration"]``; None when the run fitted none."""
    from dala.calibration import Calibration

    for source in ((report or {}).get("calibration"), (config or {}).get("calibration")):
        if isinstance(source, Mapping) and "temperature" in source:
            cal = Calibration.from_config({"calibration": dict(source)})
            if cal.fitted:
                return cal
    return None


def _flat(rep: Mapping | None) -> dict:
    from dala.metric_row import flat_metrics

    out = flat_metrics(dict(rep or {}), keys=CALIBRATION_METRICS)
    return {k: (float(v) if isinstance(v, (int, float)) else None) for k, v in out.items()}


def calibration_summary(report: Mapping | None, config: Mapping | None = None) -> dict | None:
    """What Compare shows of one run's probabilities, measured on its test split.

    ``{"fitted", "label", "temperature", "threshold", "bins_before", "bins_after", "ece_before",
    "ece_after", "at_half", "at_threshold", "threshold_source", "n"}``: reliability bins and ECE of
    the test probabilities as the network gives them and (when the run fitted a temperature on
    validation) temperature-scaled; the metrics at 0.5 and at the locked threshold (None for an
    older run: no threshold is invented). None when the report kept no per-image test predictions.
    """
    from dala.metrics import calibration_bins, classification_report

    preds = report_predictions(report)
    if preds is None:
        return None
    y, probs = preds["y_true"], preds["probs"]
    cal = run_calibration(report, config)
    before = calibration_bins(y, probs)
    out = {"fitted": cal is not None, "label": cal.label if cal else OLDER_RUN, "n": int(len(y)),
           "temperature": cal.temperature if cal else None, "threshold": cal.threshold if cal else None,
           "bins_before": before, "ece_before": before["ece"], "bins_after": None, "ece_after": None,
           "ece_change": None, "at_half": _flat((report or {}).get("test") or classification_report(y, probs)),
           "at_threshold": None, "threshold_source": None}
    if cal is None:
        return out
    scaled = cal.apply(probs)  # (N, C) temperature-scaled
    after = calibration_bins(y, scaled)
    out.update(bins_after=after, ece_after=after["ece"],
               ece_change=ece_change_ci(y, probs, scaled, preds["patients"], n_bins=before["n_bins"]))
    stored = (report or {}).get("test_at_threshold")
    if isinstance(stored, Mapping) and stored:
        out.update(at_threshold=_flat(stored), threshold_source="report (test_at_threshold)")
    else:
        out.update(at_threshold=_flat(classification_report(y, scaled, threshold=cal.threshold)),
                   threshold_source="recomputed from the test predictions")
    return out


def _ece(y: "np.ndarray", probs: "np.ndarray", weights: "np.ndarray", n_bins: int) -> "np.ndarray":
    """ECE of ``probs`` ((N, C)) for each row of image ``weights`` ((R, N) bootstrap counts), with
    dala.metrics.calibration_bins' equal-width, right-closed bins on the top-class confidence."""
    import numpy as np

    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    bins = np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], conf)  # (N,)
    onehot = np.eye(n_bins)[bins]  # (N, K)
    n = weights @ onehot  # (R, K) images per bin
    gap = np.abs(weights @ (onehot * correct[:, None]) - weights @ (onehot * conf[:, None]))  # (R, K) |acc - conf| * n
    return gap.sum(axis=1) / np.maximum(n.sum(axis=1), 1)


def ece_change_ci(y_true, before, after, patients, *, n_bins: int = 10, n_boot: int = 1000, seed: int = 0,
                  level: float = 0.95) -> dict:
    """ECE after minus before temperature scaling on the same test images, with its interval: a
    paired bootstrap over test patients (each draw resamples patients, their images move together).
    ``{"difference", "lo", "hi", "n_patients", "level"}``."""
    import numpy as np

    y = np.asarray(y_true).astype(int)
    pats = np.asarray(patients)
    keys, inv = np.unique(pats, return_inverse=True)
    rng = np.random.default_rng(seed)
    from dala.stats import resample_weights

    weights = resample_weights(len(keys), n_boot, rng)[:, inv]  # (R, N): each image weighted by its patient's count
    one = np.ones((1, len(y)))
    b, a = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    diff = _ece(y, a, weights, n_bins) - _ece(y, b, weights, n_bins)
    lo, hi = np.quantile(diff, [(1 - level) / 2, (1 + level) / 2])
    point = float(_ece(y, a, one, n_bins)[0] - _ece(y, b, one, n_bins)[0])
    return {"difference": point, "lo": float(lo), "hi": float(hi), "n_patients": int(len(keys)), "level": level}


def referral_curve(report: Mapping | None, config: Mapping | None = None, *, points: int = 21):
    """Selective prediction on the run's test split (:func:`dala.uncertainty.selective_curve`): the
    least certain images (1 - max probability) referred first, the kept ones decided at the locked
    threshold on temperature-scaled probabilities when the run has them, else at 0.5. None without
    per-image test predictions."""
    from dala.uncertainty import selective_curve

    preds = report_predictions(report)
    if preds is None:
        return None
    cal = run_calibration(report, config)
    probs = cal.apply(preds["probs"]) if cal else preds["probs"]
    return selective_curve(preds["y_true"], probs, threshold=cal.threshold if cal else 0.5, points=points)


def accuracy_when_referring(curve, referred: float) -> dict:
    """The row of a :func:`referral_curve` nearest to referring the share ``referred`` (0..1)."""
    i = int((curve["referred"] - float(referred)).abs().idxmin())
    row = curve.loc[i]
    return {"referred": float(row["referred"]), "coverage": float(row["coverage"]), "n_kept": int(row["n_kept"]),
            "accuracy": float(row["accuracy"])}
