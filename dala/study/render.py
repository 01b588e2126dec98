"""The study report as files: ``report.json``, ``report.md`` (tables a paper could print), CSVs and
plotly figures; the figure builders are shared with the Compare page's Study view."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

LABELS = {"accuracy": "Accuracy", "patient_accuracy": "Patient acc.", "balanced_accuracy": "Balanced acc.",
          "gmean": "GMean", "iba": "IBA", "f1": "F1", "precision": "Precision", "recall": "Recall",
          "roc_auc": "ROC-AUC"}


def _num(x: Any, fmt: str = ".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _cell(block: dict) -> str:
    if block.get("mean") is None:
        return "n/a"
    sd = f" ± {block['std']:.3f}" if block.get("std") is not None else ""
    ci = f" [{block['lo']:.3f}, {block['hi']:.3f}]" if block.get("lo") is not None else ""
    return f"{block['mean']:.3f}{sd}{ci}"


# ---------------------------------------------------------------------------------------------
# figures (plotly)


def metric_figure(report: dict, metric: str = "accuracy"):
    """Mean over trials per model and magnification with the pooled 95 % patient-bootstrap CI; for
    accuracy the paper's reported DALAResNet50 values are drawn as hollow markers, labelled."""
    import plotly.graph_objects as go

    fig = go.Figure()
    mags = sorted({s["magnification"] for s in report["summary"]})
    for model in sorted({s["model"] for s in report["summary"]}):
        rows = [s for s in report["summary"] if s["model"] == model]
        rows.sort(key=lambda s: s["magnification"])
        blocks = [s["metrics"][metric] for s in rows]
        fig.add_trace(go.Scatter(
            x=[f"{s['magnification']}X" for s in rows], y=[b["mean"] for b in blocks], mode="markers+lines",
            name=f"{model} (measured)",
            error_y={"type": "data", "symmetric": False,
                     "array": [None if b["hi"] is None or b["mean"] is None else b["hi"] - b["mean"] for b in blocks],
                     "arrayminus": [None if b["lo"] is None or b["mean"] is None else b["mean"] - b["lo"]
                                    for b in blocks]},
            hovertemplate="%{x}: %{y:.3f}<extra>" + model + "</extra>"))
    if metric == "accuracy":
        rep = [r for r in report.get("reported", []) if r["magnification"] in mags]
        if rep:
            fig.add_trace(go.Scatter(x=[f"{r['magnification']}X" for r in rep], y=[r["reported_accuracy"] for r in rep],
                                     mode="markers", marker={"symbol": "circle-open", "size": 12},
                                     name=f"{report['baseline']} (reported by the paper)"))
    title = f"{LABELS.get(metric, metric)}: mean over trials, 95 % patient-bootstrap CI"
    if report.get("synthetic"):
        title += " (SYNTHETIC data)"
    fig.update_layout(title=title, xaxis_title="magnification", yaxis_title=LABELS.get(metric, metric),
                      legend_title="model", template="plotly_white")
    return fig


def convergence_figure(report: dict):
    """Validation selection metric per epoch, mean over trials, per model and magnification."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for c in report["convergence"]["curves"]:
        fig.add_trace(go.Scatter(x=c["epoch"], y=c["value"], mode="lines+markers",
                                 name=f"{c['model']} {c['magnification']}X"))
    fig.update_layout(title="Convergence: validation metric per epoch (mean over trials)"
                      + (" (SYNTHETIC data)" if report.get("synthetic") else ""),
                      xaxis_title="epoch", yaxis_title="validation value", template="plotly_white")
    return fig


# ---------------------------------------------------------------------------------------------
# tables


def results_rows(report: dict) -> list[dict]:
    rows = []
    for s in report["summary"]:
        row = {"model": s["model"], "magnification": s["magnification"], "n_trials": s["n_trials"],
               "num_params": s["num_params"], "threshold_mean": s["threshold_mean"],
               "accuracy_at_0_5_mean": s["accuracy_at_0_5"]["mean"]}
        for m, b in s["metrics"].items():
            for k in ("mean", "std", "lo", "hi"):
                row[f"{m}_{k}"] = b[k]
        rows.append(row)
    return rows


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return buf.getvalue()


def markdown(report: dict) -> str:
    metrics = report["metrics"]
    out = [f"# Study report: {report['preset']} preset", ""]
    out.append(f"Data: `{report['data']}` ({report['data_source']}); {report['n_finished']} of "
               f"{report['n_planned']} planned runs finished; baseline `{report['baseline']}`; generated "
               f"{report['generated']}.")
    out += [""] + [f"- {n}" for n in report["notes"]] + ["", "## Results (measured)", ""]
    out.append("Mean ± std over trials [pooled 95 % patient-bootstrap CI], at the threshold locked on validation.")
    out.append("")
    out.append("| model | mag | trials | " + " | ".join(LABELS.get(m, m) for m in metrics) + " | acc. @0.5 |")
    out.append("|---|---|---|" + "---|" * (len(metrics) + 1))
    for s in report["summary"]:
        out.append(f"| {s['model']} | {s['magnification']}X | {s['n_trials']} | "
                   + " | ".join(_cell(s["metrics"][m]) for m in metrics)
                   + f" | {_num(s['accuracy_at_0_5']['mean'])} |")
    out += ["", "## Reported vs measured accuracy (DALAResNet50)", "",
            "| magnification | reported (paper) | measured (mean ± std [95 % CI]) |", "|---|---|---|"]
    for r in report["reported"]:
        m = r["measured"]
        out.append(f"| {r['magnification']}X | {r['reported_accuracy']:.3f} (reported) | "
                   + ("not in this study" if m is None else _cell(m) + f" (measured, {m['split']})") + " |")
    out += ["", f"## Paired comparisons: {report['baseline']} minus each model", "",
            "Same trials, same test patients. Difference of means over trials [95 % CI]; bootstrap p with Holm "
            "correction over the models; Wilcoxon signed-rank on per-trial differences.", "",
            "| mag | metric | model | trials | difference [95 % CI] | p (boot) | p (Holm) | Wilcoxon p | significant |",
            "|---|---|---|---|---|---|---|---|---|"]
    for c in report["comparisons"]:
        out.append(f"| {c['magnification']}X | {c['metric']} | {c['model']} | {c['n_trials']} | "
                   f"{_num(c['difference'], '+.3f')} [{_num(c['lo'], '+.3f')}, {_num(c['hi'], '+.3f')}] | "
                   f"{_num(c['p_boot'], '.4f')} | {_num(c['p_holm'], '.4f')} | {_num(c['wilcoxon_p'], '.4f')} | "
                   f"{'yes' if c['significant'] else 'no'} |")
    conv = report["convergence"]
    out += ["", "## Convergence", "", f"Epochs and training seconds until validation first reached "
            f"{conv['fraction']:.0%} of the run's best (mean over runs).", "",
            "| model | runs | epochs to 95 % | seconds to 95 % | parameters |", "|---|---|---|---|---|"]
    params = {s["model"]: s["num_params"] for s in report["summary"]}
    for r in conv["summary"]:
        out.append(f"| {r['model']} | {r['n_runs']} | {_num(r['epochs_to_95'], '.2f')} | "
                   f"{_num(r['time_to_95_s'], '.1f')} | {params.get(r['model']) or 'n/a':,} |"
                   if params.get(r["model"]) else
                   f"| {r['model']} | {r['n_runs']} | {_num(r['epochs_to_95'], '.2f')} | "
                   f"{_num(r['time_to_95_s'], '.1f')} | n/a |")
    out += ["", "## The paper's claims", "", "| claim | verdict | evidence |", "|---|---|---|"]
    for c in report["claims"]:
        out.append(f"| {c['claim']} | **{c['verdict']}** | {c['evidence']} |")
    out += ["", "Figures: `figures/metrics.html`, `figures/convergence.html`.", ""]
    return "\n".join(out)


def write_outputs(study: Path, report: dict) -> None:
    """Every file atomically (a reader never sees half a report); plotly.js once, beside the figures."""
    from plotly.offline import get_plotlyjs

    from dala.io import atomic_write_json, atomic_write_text

    figs = study / "figures"
    figs.mkdir(exist_ok=True)
    if not (figs / "plotly.min.js").is_file():
        atomic_write_text(figs / "plotly.min.js", get_plotlyjs())
    parts = [metric_figure(report, m).to_html(full_html=False, include_plotlyjs=False)
             for m in ("accuracy", "patient_accuracy", "gmean", "balanced_accuracy")]
    page = ("<html><head><meta charset='utf-8'><script src='plotly.min.js'></script></head><body>"
            + "".join(parts) + "</body></html>")
    atomic_write_text(figs / "metrics.html", page)
    conv = convergence_figure(report).to_html(full_html=False, include_plotlyjs=False)
    atomic_write_text(figs / "convergence.html", "<html><head><meta charset='utf-8'><script src='plotly.min.js'>"
                      "</script></head><body>" + conv + "</body></html>")
    atomic_write_text(study / "results.csv", _csv(results_rows(report)))
    run_rows = [{"id": r["id"], "model": r["model"], "magnification": r["magnification"], "trial": r["trial"],
                 "threshold": r["threshold"], **r["metrics"], "accuracy_at_0_5": r["accuracy_at_0_5"],
                 "num_params": r["num_params"], "best_epoch": r["best_epoch"], "train_time_s": r["train_time_s"],
                 "epochs_to_95": r["epochs_to_95"], "time_to_95_s": r["time_to_95_s"]} for r in report["runs"]]
    atomic_write_text(study / "runs.csv", _csv(run_rows))
    comp_rows = [{k: v for k, v in c.items() if k != "per_trial"} for c in report["comparisons"]]
    atomic_write_text(study / "comparisons.csv", _csv(comp_rows))
    atomic_write_text(study / "report.md", markdown(report))
    atomic_write_json(study / "report.json", report)  # last: its presence means the rest is there
