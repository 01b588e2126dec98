"""Plotly figures of calibration and referral (re-exported by :mod:`dala.plots`, kept apart so no
module grows past 500 lines): the reliability diagram and the selective-prediction curve.

Pure functions of plain data (``dala.metrics.calibration_bins`` dicts,
``dala.uncertainty.selective_curve`` frames); nothing here imports Streamlit.
"""

from __future__ import annotations

from typing import Any, Mapping

import plotly.graph_objects as go

SERIES_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                  "#bcbd22", "#17becf"]
_LAYOUT = dict(margin=dict(l=40, r=20, t=80, b=40), legend=dict(orientation="v", y=-0.2, yanchor="top"))


def _fig(title: str) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(title=dict(text=title, x=0, xanchor="left"), **_LAYOUT)
    return fig


def reliability_figure(bins: Mapping[str, Mapping[str, Any] | None], *, title: str = "Reliability diagram") -> go.Figure:
    """The reliability diagram of one or more probability sets: ``{series name: calibration_bins
    dict}`` (e.g. ``{"as given": b0, "temperature-scaled": b1}``). Each series plots accuracy
    against mean confidence per non-empty bin, its ECE in the legend; the diagonal is perfect
    calibration (points under it: over-confident)."""
    fig = _fig(title)
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#bbb", dash="dash"),
                    name="perfectly calibrated")
    for i, (name, b) in enumerate(bins.items()):
        if not b:
            continue
        pts = [(c, a, n) for c, a, n in zip(b["confidence"], b["accuracy"], b["counts"]) if c is not None and a is not None]
        if not pts:
            continue
        conf, acc, counts = zip(*pts)
        fig.add_scatter(x=list(conf), y=list(acc), mode="lines+markers", name=f"{name} (ECE {b['ece']:.3f})",
                        line=dict(color=SERIES_COLOURS[i % len(SERIES_COLOURS)]),
                        customdata=list(counts),
                        hovertemplate="confidence %{x:.2f}<br>accuracy %{y:.2f}<br>%{customdata} images<extra></extra>")
    fig.update_layout(xaxis=dict(title="confidence (max class probability)", range=[0, 1]),
                      yaxis=dict(title="accuracy in the bin", range=[0, 1.02]), height=380)
    return fig


def selective_figure(curves: Mapping[str, Any], *, referred: float | None = None,
                     title: str = "Selective prediction: refer the least certain to a pathologist") -> go.Figure:
    """Accuracy of the images the model keeps against the share it refers, one line per run
    (``{run label: dala.uncertainty.selective_curve frame}``); ``referred`` (0..1) draws the
    slider's choice as a vertical line."""
    fig = _fig(title)
    for i, (name, curve) in enumerate(curves.items()):
        if curve is None or not len(curve):
            continue
        fig.add_scatter(x=[100 * v for v in curve["referred"]], y=list(curve["accuracy"]), mode="lines+markers",
                        name=str(name), line=dict(color=SERIES_COLOURS[i % len(SERIES_COLOURS)]),
                        customdata=list(curve["n_kept"]),
                        hovertemplate="referred %{x:.0f} %<br>accuracy kept %{y:.3f}<br>%{customdata} kept"
                                      "<extra></extra>")
    if referred is not None:
        fig.add_vline(x=100 * float(referred), line=dict(color="#555", dash="dot"))
    fig.update_layout(xaxis=dict(title="referred to a pathologist (%)", range=[0, 100]),
                      yaxis=dict(title="accuracy on the images kept"), height=380)
    return fig
