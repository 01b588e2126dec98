"""The study report: per model x magnification mean +- std over trials with patient-bootstrap CIs,
paired comparisons of the baseline (DALAResNet50) against each model with Holm correction, the
convergence measures, and the paper's claims each marked supported / not supported / cannot tell.

Thresholds: every run's decision threshold was chosen on its validation part and locked in
``eval/<id>.json`` before this report reads its test predictions; accuracy at 0.5 is shown beside.
Written by :func:`build_report` as ``report.json``, ``report.md``, ``results.csv``, ``runs.csv``,
``comparisons.csv`` and ``figures/*.html`` (see :mod:`dala.study.render`).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from dala.study.plan import BASELINE, EVAL_DIR, StudyError, check_manifest, load_manifest

FORMAT = "dala-study-report/1"
TABLE_METRICS = ("accuracy", "patient_accuracy", "balanced_accuracy", "gmean", "iba", "f1", "precision",
                 "recall", "roc_auc")
REPORTED_ACCURACY = {40: 0.985, 100: 0.987, 200: 0.979, 400: 0.943}  # the paper, DALAResNet50
CONVERGENCE_FRACTION = 0.95
ALPHA = 0.05


def _f(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)


def _calibrated(prob: np.ndarray, t: float) -> np.ndarray:
    """Map P(malignant) monotonically so that the run's locked threshold ``t`` lands on 0.5: runs
    with different thresholds can then be pooled and scored at 0.5 (rankings within a run kept)."""
    t = min(max(t, 1e-6), 1 - 1e-6)
    return np.where(prob < t, 0.5 * prob / t, 0.5 + 0.5 * (prob - t) / (1 - t))


# ---------------------------------------------------------------------------------------------
# reading runs


def _convergence(epochs: list[dict], metric: str) -> dict:
    """Epochs and training seconds until validation ``metric`` first reached 95 % of the run's
    best; the curve itself for the plots."""
    key = f"val_{metric}"
    vals = [(e.get("epoch"), e.get(key), e.get("epoch_time_s") or 0.0) for e in epochs if e.get(key) is not None]
    if not vals:
        return {"epochs_to_95": None, "time_to_95_s": None, "curve": []}
    best = max(v for _, v, _ in vals)
    elapsed, out = 0.0, {"epochs_to_95": None, "time_to_95_s": None}
    for ep, v, dt in vals:
        elapsed += dt
        if v >= CONVERGENCE_FRACTION * best:
            out = {"epochs_to_95": int(ep), "time_to_95_s": round(elapsed, 3)}
            break
    out["curve"] = [[int(ep), float(v)] for ep, v, _ in vals]
    return out


def _load_run(study: Path, entry: dict) -> dict | None:
    from dala.data.breakhis import parse_name
    from dala.io import read_json
    from dala.metrics import classification_report
    from dala.train.folder import RunFolder, read_report

    folder = RunFolder(study / entry["run_dir"])
    ev_path = study / EVAL_DIR / f"{entry['id']}.json"
    try:
        rep = read_report(folder) if folder.report_path.is_file() else None
        ev = read_json(ev_path, None, expect=dict) if ev_path.is_file() else None
    except ValueError:
        return None
    if not rep or not ev or "test_predictions" not in rep:
        return None
    ids = rep["test_predictions"]["image_id"]
    probs = np.asarray(rep["test_predictions"]["probs"], dtype=float)[:, 1]  # P(malignant)
    names = [parse_name(i + ".png") for i in ids]
    y = np.array([1 if n.label == "malignant" else 0 for n in names])
    pats = np.array([n.patient for n in names])
    want = set(entry["split"]["test"]["patients"])
    if set(pats.tolist()) != want:
        raise StudyError(f"run {entry['id']} was tested on other patients than its manifest split says "
                         f"({len(set(pats) ^ want)} differ): its folder belongs to another plan; move it away and "
                         "run the study again.")
    thr = float(ev["threshold"])
    locked = classification_report(y, probs, patients=pats, threshold=thr)
    at_half = classification_report(y, probs, patients=pats, threshold=0.5)
    conv = _convergence([r for r in folder.metrics() if r.get("kind") == "epoch"],
                        entry["config"].get("select_metric", "gmean"))
    from dala.stats import _REPORT_KEY

    return {
        "id": entry["id"], "model": entry["model"], "magnification": entry["magnification"],
        "trial": entry["trial"], "threshold": thr, "n_test_images": int(len(y)), "n_test_patients": len(want),
        "metrics": {m: _f(_REPORT_KEY[m](locked)) for m in TABLE_METRICS},
        "accuracy_at_0_5": _f(at_half["accuracy"]), "num_params": rep.get("num_params"),
        "weight_source": rep.get("weight_source"), "best_epoch": rep.get("best_epoch"),
        "train_time_s": rep.get("train_time_s"), "epochs_to_95": conv["epochs_to_95"],
        "time_to_95_s": conv["time_to_95_s"], "curve": conv["curve"], "device": rep.get("device"),
        "_y": y, "_p": probs, "_pats": pats,
    }


# ---------------------------------------------------------------------------------------------
# statistics


def _summary(runs: list[dict], *, n_boot: int, seed: int) -> list[dict]:
    from dala import stats

    groups: dict[tuple[str, int], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["model"], r["magnification"]), []).append(r)
    rows = []
    for (model, mag), rs in groups.items():
        y = np.concatenate([r["_y"] for r in rs])
        p = np.concatenate([_calibrated(r["_p"], r["threshold"]) for r in rs])
        keys = np.concatenate([np.char.add(f"t{r['trial']}:", r["_pats"].astype(str)) for r in rs])
        block = {}
        for m in TABLE_METRICS:
            vals = [r["metrics"][m] for r in rs if r["metrics"][m] is not None]
            ci = stats.metric_ci(y, p, keys, m, n_boot=n_boot, seed=seed, threshold=0.5)
            block[m] = {"mean": _f(np.mean(vals)) if vals else None,
                        "std": _f(np.std(vals, ddof=1)) if len(vals) > 1 else None,
                        "pooled": _f(ci["value"]), "lo": _f(ci["lo"]), "hi": _f(ci["hi"])}
        acc05 = [r["accuracy_at_0_5"] for r in rs]
        rows.append({"model": model, "magnification": mag, "n_trials": len(rs),
                     "n_test_patients": int(len(set(keys.tolist()))), "num_params": rs[0]["num_params"],
                     "metrics": block, "accuracy_at_0_5": {"mean": _f(np.mean(acc05)),
                                                           "std": _f(np.std(acc05, ddof=1)) if len(rs) > 1 else None},
                     "threshold_mean": _f(np.mean([r["threshold"] for r in rs]))})
    return sorted(rows, key=lambda r: (r["magnification"], r["model"]))


def _comparisons(runs: list[dict], baseline: str, *, n_boot: int, seed: int) -> list[dict]:
    from dala import stats

    by = {(r["model"], r["magnification"], r["trial"]): r for r in runs}
    peers = sorted({r["model"] for r in runs} - {baseline})
    out = []
    for mag in sorted({r["magnification"] for r in runs}):
        for m in TABLE_METRICS:
            block = []
            for peer in peers:
                trials = sorted(t for (mo, mg, t) in by if mo == baseline and mg == mag and (peer, mag, t) in by)
                if not trials:
                    continue
                pairs = []
                for t in trials:
                    a, b = by[(baseline, mag, t)], by[(peer, mag, t)]
                    pairs.append((stats.Predictions(a["_y"], a["_p"], a["_pats"], a["threshold"]),
                                  stats.Predictions(b["_y"], b["_p"], b["_pats"], b["threshold"])))
                res = stats.trials_difference(pairs, metric=m, n_boot=n_boot, seed=seed)
                block.append({"magnification": mag, "metric": m, "baseline": baseline, "model": peer,
                              "n_trials": res["n_trials"], "difference": _f(res["difference"]),
                              "lo": _f(res["lo"]), "hi": _f(res["hi"]), "p_boot": _f(res["p_value"]),
                              "wilcoxon_p": res["wilcoxon_p"], "wilcoxon_min_p": res["wilcoxon_min_p"],
                              "per_trial": res["per_trial"]})
            adj = stats.holm([b["p_boot"] for b in block])
            for b, p in zip(block, adj):
                b["p_holm"] = p
                b["significant"] = p is not None and p < ALPHA
            out += block
    return out


def _convergence_summary(runs: list[dict], baseline: str) -> dict:
    from dala import stats

    models = sorted({r["model"] for r in runs})
    rows = []
    for mo in models:
        rs = [r for r in runs if r["model"] == mo and r["epochs_to_95"] is not None]
        rows.append({"model": mo, "n_runs": len(rs),
                     "epochs_to_95": _f(np.mean([r["epochs_to_95"] for r in rs])) if rs else None,
                     "time_to_95_s": _f(np.mean([r["time_to_95_s"] for r in rs])) if rs else None})
    by = {(r["model"], r["magnification"], r["trial"]): r for r in runs}
    tests = []
    for peer in [m for m in models if m != baseline]:
        units = [k[1:] for k in by if k[0] == baseline and (peer, *k[1:]) in by]
        d_ep = [by[(peer, *u)]["epochs_to_95"] - by[(baseline, *u)]["epochs_to_95"] for u in units
                if by[(peer, *u)]["epochs_to_95"] is not None and by[(baseline, *u)]["epochs_to_95"] is not None]
        d_t = [by[(peer, *u)]["time_to_95_s"] - by[(baseline, *u)]["time_to_95_s"] for u in units
               if by[(peer, *u)]["time_to_95_s"] is not None and by[(baseline, *u)]["time_to_95_s"] is not None]
        tests.append({"model": peer, "n_pairs": len(d_ep), "mean_extra_epochs": _f(np.mean(d_ep)) if d_ep else None,
                      "mean_extra_time_s": _f(np.mean(d_t)) if d_t else None,
                      "wilcoxon_p_epochs": stats.wilcoxon_p(d_ep), "wilcoxon_p_time": stats.wilcoxon_p(d_t),
                      "wilcoxon_min_p": stats.wilcoxon_min_p(len(d_ep))})
    for key in ("wilcoxon_p_epochs", "wilcoxon_p_time"):
        for t, p in zip(tests, stats.holm([t[key] for t in tests])):
            t[key.replace("wilcoxon_p", "p_holm")] = p
    curves = []
    for (mo, mag) in sorted({(r["model"], r["magnification"]) for r in runs}):
        rs = [r for r in runs if r["model"] == mo and r["magnification"] == mag and r["curve"]]
        n = min((len(r["curve"]) for r in rs), default=0)
        if n:
            curves.append({"model": mo, "magnification": mag, "epoch": [c[0] for c in rs[0]["curve"][:n]],
                           "value": [float(np.mean([r["curve"][i][1] for r in rs])) for i in range(n)]})
    return {"fraction": CONVERGENCE_FRACTION, "summary": rows, "tests": tests, "curves": curves}


# ---------------------------------------------------------------------------------------------
# claims


def _claims(summary: list[dict], comparisons: list[dict], conv: dict, runs: list[dict], baseline: str,
            n_trials: int) -> list[dict]:
    from dala import stats

    claims = []
    peers = sorted({r["model"] for r in runs} - {baseline})
    few = stats.wilcoxon_min_p(n_trials) >= ALPHA
    limit = (f" With {n_trials} trials the exact Wilcoxon test cannot reach p < {ALPHA} "
             f"(its smallest p is {stats.wilcoxon_min_p(n_trials):.4f}); significance here rests on the "
             "patient bootstrap within trials.") if few else ""
    if baseline not in {r["model"] for r in runs} or not peers:
        return [{"claim": "DALAResNet50 outperforms the eight models", "verdict": "cannot tell",
                 "evidence": "the study has no finished runs of DALAResNet50 and a peer to compare."}]
    for m in TABLE_METRICS:
        rows = [c for c in comparisons if c["metric"] == m]
        worse = [c for c in rows if c["significant"] and c["difference"] < 0]
        better = [c for c in rows if c["significant"] and c["difference"] > 0]
        if worse:
            verdict = "not supported"
            ev = "significantly worse than " + ", ".join(f"{c['model']} at {c['magnification']}X "
                                                        f"({c['difference']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}])"
                                                        for c in worse[:6])
        elif rows and len(better) == len(rows) and len(peers) >= 8:
            verdict, ev = "supported", f"better than every peer at every magnification (Holm-adjusted p < {ALPHA})"
        else:
            verdict = "cannot tell"
            ev = (f"significantly better in {len(better)} of {len(rows)} comparisons, worse in none"
                  + ("" if len(peers) >= 8 else f"; only {len(peers)} of the paper's 8 peers are in this study"))
        claims.append({"claim": f"DALAResNet50 outperforms the eight models on {m}", "metric": m,
                       "verdict": verdict, "evidence": ev + "." + limit})
    tests = conv["tests"]
    ep = {r["model"]: r["epochs_to_95"] for r in conv["summary"]}
    faster = [t for t in tests if (t["p_holm_epochs"] is not None and t["p_holm_epochs"] < ALPHA
                                   and (t["mean_extra_epochs"] or 0) < 0)]
    slower_all = tests and all(t["p_holm_epochs"] is not None and t["p_holm_epochs"] < ALPHA
                               and (t["mean_extra_epochs"] or 0) > 0 for t in tests)
    if faster:
        v, ev = "not supported", "converged in fewer epochs: " + ", ".join(t["model"] for t in faster)
    elif slower_all and len(peers) >= 8:
        v, ev = "supported", "every peer needed significantly more epochs (Holm-adjusted Wilcoxon)"
    else:
        v = "cannot tell"
        ev = ("mean epochs to 95 % of the best validation value: "
              + ", ".join(f"{k} {val:.2f}" for k, val in ep.items() if val is not None)
              + "; no difference is significant after Holm" + ("" if len(peers) >= 8 else
                                                                f"; {len(peers)} of 8 peers present"))
    claims.append({"claim": "DALAResNet50 converges fastest (epochs and wall time to 95 % of its best "
                            "validation value)", "verdict": v, "evidence": ev + "."})
    from dala.models import get_spec, list_models

    def count(name: str) -> int | None:
        got = next((r["num_params"] for r in runs if r["model"] == name and r["num_params"]), None)
        if got is None and name in list_models():
            try:
                return int(get_spec(name).param_count(2))
            except Exception:
                return None
        return got

    base_n, res_n = count(baseline), count("resnet50")
    if base_n and res_n:
        extra = (base_n - res_n) / res_n
        claims.append({"claim": "DALAResNet50's attention module is lightweight (our reading: under 10 % more "
                                "parameters than ResNet50)", "verdict": "supported" if extra < 0.10 else "not supported",
                       "evidence": f"{base_n:,} vs {res_n:,} parameters ({extra:+.1%}; attention and the "
                                   "two-layer head together)."})
    return claims


# ---------------------------------------------------------------------------------------------
# the report


def build_report(study: str | os.PathLike, *, n_boot: int = 1000, seed: int = 0, write: bool = True) -> dict:
    """Read every finished run of the study and write the report files; returns report.json's dict."""
    study = Path(study).expanduser().resolve()
    manifest = load_manifest(study)
    check_manifest(study, manifest)
    baseline = manifest.get("baseline", BASELINE)
    runs, missing = [], []
    for e in manifest["runs"]:
        r = _load_run(study, e)
        (runs.append(r) if r else missing.append(e["id"]))
    if not runs:
        raise StudyError(f"no run of {study} has finished yet: run `python -m dala study run {study}` first "
                         "(`study status` shows where it stands).")
    summary = _summary(runs, n_boot=n_boot, seed=seed)
    comparisons = _comparisons(runs, baseline, n_boot=n_boot, seed=seed)
    conv = _convergence_summary(runs, baseline)
    n_trials = min((s["n_trials"] for s in summary), default=0)
    claims = _claims(summary, comparisons, conv, runs, baseline, n_trials)
    synthetic = (manifest.get("fingerprint") or {}).get("source") == "synthetic"
    reported = []
    for mag, acc in REPORTED_ACCURACY.items():
        row = next((s for s in summary if s["model"] == baseline and s["magnification"] == mag), None)
        reported.append({"magnification": mag, "model": baseline, "reported_accuracy": acc,
                         "reported_note": "reported by the paper (split protocol not stated)",
                         "measured": None if row is None else {
                             "mean": row["metrics"]["accuracy"]["mean"], "std": row["metrics"]["accuracy"]["std"],
                             "lo": row["metrics"]["accuracy"]["lo"], "hi": row["metrics"]["accuracy"]["hi"],
                             "split": "patient-wise 70/30 official trials", "n_trials": row["n_trials"]}})
    notes = [
        "Thresholds: chosen per run on its validation patients (maximum balanced accuracy) and locked before "
        "test; accuracy at 0.5 is given beside.",
        "Intervals: 95 % percentile bootstrap over test patients (clustered: a patient's images move together), "
        f"pooled over trials with (trial, patient) as the unit; {n_boot} resamples.",
        "Comparisons: the baseline minus each model on the same trials (identical test patients), the mean of "
        "per-trial differences with a stratified paired bootstrap; Holm correction over the models, per "
        "magnification and metric; Wilcoxon signed-rank on the per-trial differences beside it.",
    ]
    if synthetic:
        notes.insert(0, "SYNTHETIC data: these numbers say nothing about BreakHis; they show the pipeline works.")
    if missing:
        notes.append(f"{len(missing)} planned run(s) have not finished and are left out: {', '.join(missing[:8])}"
                     + (" ..." if len(missing) > 8 else ""))
    if n_trials and n_trials < 5:
        notes.append(f"Only {n_trials} trial(s) per model and magnification: mean +- std over trials is fragile.")
    report = {
        "format": FORMAT, "study": str(study), "preset": manifest.get("preset"), "data": manifest.get("data"),
        "data_source": (manifest.get("fingerprint") or {}).get("source"), "synthetic": synthetic,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "n_planned": len(manifest["runs"]),
        "n_finished": len(runs), "missing": missing, "baseline": baseline, "models": manifest.get("models"),
        "magnifications": manifest.get("magnifications"), "trials": manifest.get("trials"),
        "metrics": list(TABLE_METRICS), "alpha": ALPHA, "n_boot": n_boot,
        "runs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in runs],
        "summary": summary, "comparisons": comparisons, "convergence": conv, "claims": claims,
        "reported": reported, "notes": notes,
    }
    if write:
        from dala.study.render import write_outputs

        write_outputs(study, report)
    return report


def summary_lines(report: dict) -> list[str]:
    """A few lines for the terminal: the table's accuracy and GMean, the claims, where the files are."""
    out = [f"study {report['study']} ({report['preset']}, {report['n_finished']}/{report['n_planned']} runs"
           + (", SYNTHETIC data" if report["synthetic"] else "") + ")"]
    for s in report["summary"]:
        a, g = s["metrics"]["accuracy"], s["metrics"]["gmean"]
        out.append(f"  {s['model']:<16} {s['magnification']:>3}X  accuracy {a['mean']:.3f} +- {a['std'] or 0:.3f} "
                   f"[{a['lo']:.3f}, {a['hi']:.3f}]  GMean {g['mean'] if g['mean'] is not None else float('nan'):.3f}"
                   f"  acc@0.5 {s['accuracy_at_0_5']['mean']:.3f}  ({s['n_trials']} trials)")
    out.append("claims:")
    out += [f"  [{c['verdict']}] {c['claim']}" for c in report["claims"]]
    out.append(f"wrote report.json, report.md, results.csv, runs.csv, comparisons.csv, figures/ in {report['study']}")
    return out


def run_ci(study: str | os.PathLike, run_id: str, metric: str = "accuracy", *, n_boot: int = 1000,
           seed: int = 0) -> dict:
    """One run's test ``metric`` at its locked threshold with the 95 % patient-bootstrap CI
    (:func:`dala.stats.metric_ci`); raises :class:`StudyError` when the run has not finished."""
    from dala import stats

    study = Path(study).expanduser()
    manifest = load_manifest(study)
    entry = next((e for e in manifest["runs"] if e["id"] == run_id), None)
    if entry is None:
        raise StudyError(f"run {run_id!r} is not in the study {study}.")
    r = _load_run(study, entry)
    if r is None:
        raise StudyError(f"run {run_id} has not finished (no report.json and locked threshold yet).")
    ci = stats.metric_ci(r["_y"], r["_p"], r["_pats"], metric, n_boot=n_boot, seed=seed, threshold=r["threshold"])
    return {**ci, "id": run_id, "model": r["model"], "magnification": r["magnification"], "trial": r["trial"]}
