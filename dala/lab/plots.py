"""Plotly figures of the Imbalance Lab (the page and the notebooks draw the same ones)."""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

STRATEGY_COLORS = {
    "none": "#444444", "class_weight": "#1f77b4", "oversample": "#2ca02c", "smote": "#17becf",
    "undersample": "#bcbd22", "focal": "#9467bd", "logit_adjust": "#d62728", "threshold": "#ff7f0e",
}
METRIC_NAMES = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "gmean": "GMean", "iba": "IBA",
                "f1_macro": "F1 (macro)", "sensitivity": "sensitivity", "specificity": "specificity",
                "precision": "precision", "patient_accuracy": "patient accuracy"}


def _ratio_ticks(ratios) -> tuple[list[float], list[str]]:
    from dala.lab.common import ratio_label

    vals = sorted({float(r) for r in ratios})
    return vals, [ratio_label(r) for r in vals]


def confusion_figure(cm: list[list[int]], *, title: str = "confusion matrix (test)", height: int = 300) -> go.Figure:
    labels = ["benign", "malignant"]
    total = max(1, sum(sum(r) for r in cm))
    text = [[f"{v}<br>({v / total:.0%})" for v in row] for row in cm]
    fig = go.Figure(go.Heatmap(z=cm, x=[f"pred {c}" for c in labels], y=[f"true {c}" for c in labels], text=text,
                               texttemplate="%{text}", colorscale="Blues", showscale=False))
    fig.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=40, b=10), yaxis=dict(autorange="reversed"))
    return fig


def roc_pr_figure(curves: dict | None, *, height: int = 320) -> go.Figure:
    """ROC and precision-recall curves, with the operating point of the current threshold."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("ROC", "precision-recall"))
    if curves and curves.get("roc", {}).get("fpr"):
        roc, pr, op = curves["roc"], curves["pr"], curves.get("operating_point") or {}
        auc = roc.get("auc")
        fig.add_trace(go.Scatter(x=roc["fpr"], y=roc["tpr"], mode="lines", name=f"ROC (AUC {auc:.3f})" if auc else "ROC"),
                      row=1, col=1)
        fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="grey"),
                                 name="chance", showlegend=False), row=1, col=1)
        ap = pr.get("ap")
        fig.add_trace(go.Scatter(x=pr["recall"], y=pr["precision"], mode="lines",
                                 name=f"PR (AP {ap:.3f})" if ap else "PR"), row=1, col=2)
        if op:
            t = op.get("threshold")
            fig.add_trace(go.Scatter(x=[op["fpr"]], y=[op["tpr"]], mode="markers", marker=dict(size=12, color="red"),
                                     name=f"threshold {t:.2f}"), row=1, col=1)
            if op.get("precision") is not None:
                fig.add_trace(go.Scatter(x=[op["tpr"]], y=[op["precision"]], mode="markers", showlegend=False,
                                         marker=dict(size=12, color="red")), row=1, col=2)
    fig.update_xaxes(title_text="false positive rate", range=[0, 1], row=1, col=1)
    fig.update_yaxes(title_text="true positive rate (sensitivity)", range=[0, 1.02], row=1, col=1)
    fig.update_xaxes(title_text="recall (sensitivity)", range=[0, 1], row=1, col=2)
    fig.update_yaxes(title_text="precision", range=[0, 1.02], row=1, col=2)
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.25))
    return fig


def sweep_figure(df: pd.DataFrame, *, metrics=("accuracy", "gmean"), height: int = 380, title: str = "") -> go.Figure:
    """One panel per metric against the training ratio (log axis), one line per strategy."""
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[METRIC_NAMES.get(m, m) for m in metrics],
                        shared_yaxes=True)
    ok = df[df["error"].isna()] if "error" in df else df
    for j, metric in enumerate(metrics, start=1):
        for strategy, part in ok.groupby("strategy", sort=False):
            part = part.sort_values("ratio")
            fig.add_trace(go.Scatter(x=part["ratio"], y=part[metric], mode="lines+markers", name=strategy,
                                     legendgroup=strategy, showlegend=j == 1,
                                     line=dict(color=STRATEGY_COLORS.get(strategy))), row=1, col=j)
        vals, labels = _ratio_ticks(df["ratio"])
        fig.update_xaxes(type="log", tickvals=vals, ticktext=labels, title_text="benign:malignant in training",
                         row=1, col=j)
    fig.update_yaxes(range=[0, 1.02])
    fig.update_layout(height=height, title=title or None, margin=dict(l=10, r=10, t=60 if title else 40, b=10))
    return fig


def prevalence_figure(df: pd.DataFrame, *, height: int = 340) -> go.Figure:
    """Metrics against the test prevalence: accuracy and precision move, sensitivity does not."""
    fig = go.Figure()
    for metric in ("accuracy", "precision", "f1_macro", "sensitivity", "specificity", "balanced_accuracy"):
        if metric in df:
            dash = "solid" if metric in ("accuracy", "precision", "f1_macro") else "dash"
            fig.add_trace(go.Scatter(x=df["prevalence"], y=df[metric], mode="lines+markers",
                                     name=METRIC_NAMES.get(metric, metric), line=dict(dash=dash)))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=30, b=10),
                      xaxis=dict(title="share of malignant images in the test set", range=[0, 1]),
                      yaxis=dict(range=[0, 1.02]), title="depends on prevalence (solid) or not (dashed)")
    return fig


def metric_bars(rows: dict[str, dict], *, metrics=("accuracy", "balanced_accuracy", "gmean", "sensitivity",
                                                  "specificity", "precision"), height: int = 320) -> go.Figure:
    """Grouped bars: several models (e.g. the head and the two baselines) on the same metrics."""
    fig = go.Figure()
    for name, row in rows.items():
        ys = [row.get(m) if row.get(m) is not None and not (isinstance(row.get(m), float) and math.isnan(row.get(m)))
              else 0 for m in metrics]
        fig.add_trace(go.Bar(x=[METRIC_NAMES.get(m, m) for m in metrics], y=ys, name=name))
    fig.update_layout(barmode="group", height=height, yaxis=dict(range=[0, 1.02]), margin=dict(l=10, r=10, t=30, b=10),
                      legend=dict(orientation="h", y=-0.2))
    return fig
