"""Plotly figures of the Imbalance Lab (the page and the notebooks draw the same ones), and
:class:`ViewCache`: one answer's figures built once per question for every session."""

from __future__ import annotations

import math
import threading
from collections import OrderedDict

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
    """ROC and precision-recall curves side by side, with the operating point of the current
    threshold. Built in one constructor (the layout make_subplots would make: two x domains,
    the panel titles as annotations): ~2 ms instead of ~13 ms, on every new slider setting."""
    traces = []
    if curves and curves.get("roc", {}).get("fpr"):
        roc, pr, op = curves["roc"], curves["pr"], curves.get("operating_point") or {}
        auc, ap = roc.get("auc"), pr.get("ap")
        traces += [go.Scatter(x=roc["fpr"], y=roc["tpr"], mode="lines", name=f"ROC (AUC {auc:.3f})" if auc else "ROC"),
                   go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="grey"), name="chance",
                              showlegend=False),
                   go.Scatter(x=pr["recall"], y=pr["precision"], mode="lines", name=f"PR (AP {ap:.3f})" if ap else "PR",
                              xaxis="x2", yaxis="y2")]
        if op:
            t = op.get("threshold")
            traces.append(go.Scatter(x=[op["fpr"]], y=[op["tpr"]], mode="markers", marker=dict(size=12, color="red"),
                                     name=f"threshold {t:.2f}"))
            if op.get("precision") is not None:
                traces.append(go.Scatter(x=[op["tpr"]], y=[op["precision"]], mode="markers", showlegend=False,
                                         marker=dict(size=12, color="red"), xaxis="x2", yaxis="y2"))
    domains = ((0.0, 0.45), (0.55, 1.0))
    titles = [dict(text=text, x=(a + b) / 2, y=1.0, xref="paper", yref="paper", xanchor="center", yanchor="bottom",
                   showarrow=False, font=dict(size=16)) for text, (a, b) in zip(("ROC", "precision-recall"), domains)]
    layout = dict(
        xaxis=dict(domain=domains[0], anchor="y", range=[0, 1], title=dict(text="false positive rate")),
        yaxis=dict(domain=[0, 1], anchor="x", range=[0, 1.02], title=dict(text="true positive rate (sensitivity)")),
        xaxis2=dict(domain=domains[1], anchor="y2", range=[0, 1], title=dict(text="recall (sensitivity)")),
        yaxis2=dict(domain=[0, 1], anchor="x2", range=[0, 1.02], title=dict(text="precision")),
        annotations=titles, height=height, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.25))
    return go.Figure(data=traces, layout=layout)


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


class ViewCache:
    """The page's drawings of an answer (confusion matrix, ROC/PR, the bars and the table beside
    the two baselines), built once per question and shared: a class asks the same few questions,
    and building the figures costs more than a cached answer (~35 ms, mostly plotly's property
    validation). Everything returned is read-only (``st.plotly_chart`` sends a copy of a figure).
    The lab's warmer fills it too (:class:`dala.lab.warm.Warmer`, ``then=``)."""

    def __init__(self, shown: tuple[str, ...], *, limit: int = 512):
        self.shown = tuple(shown)
        self.limit = limit
        self._lock = threading.Lock()
        self._views: OrderedDict = OrderedDict()

    @staticmethod
    def key(res) -> tuple:
        return tuple(sorted(res.setting.items(), key=lambda kv: kv[0])) + (res.curves is not None,)

    def views(self, res) -> dict:
        """``{"cm", "curves", "bars": plotly figures, "table": DataFrame}`` of ``res`` (a
        :class:`dala.lab.scoring.SettingResult`)."""
        from dala.lab.common import lru_get, lru_put

        key = self.key(res)
        with self._lock:
            hit = lru_get(self._views, key)
        if hit is not None:
            return hit
        out = self._build(res)
        with self._lock:
            lru_put(self._views, key, out, self.limit)
        return out

    def _build(self, res) -> dict:
        from dala.lab.common import ratio_label
        from dala.metric_row import metric_label

        table = {f"{res.setting['strategy']} @ {ratio_label(res.setting['ratio'])}": res.row, **res.baselines}
        frame = pd.DataFrame({name: {metric_label(k): row.get(k) for k in self.shown}
                              for name, row in table.items()}).T
        return {"cm": confusion_figure(res.report["confusion_matrix"]), "curves": roc_pr_figure(res.curves),
                "bars": metric_bars(table), "table": frame}
