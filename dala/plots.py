"""Plotly figure builders and the small table helpers behind them, for the app and notebooks.

Every function here is pure: it takes plain data (the index DataFrame, a :class:`~dala.data.Split`,
the records of a run folder, a metrics report) and returns a Plotly figure or a DataFrame. The
Streamlit pages only call these and draw the result, so a notebook gets the very same pictures
with ``fig.show()``. Nothing here imports Streamlit.

Colours are fixed per class (benign green, malignant magenta) everywhere, so a student who learns
them on the Explore page reads every later chart without a legend.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dala.compare import (  # noqa: F401  (re-exported: the comparison logic lives in dala.compare)
    REPORTED_DALA_ACCURACY,
    REPORTED_NOTE,
    best_in_columns,
    compare_table,
    leakage_pairs,
    measured_accuracy_by_magnification,
    run_label,
    run_labels,
    weight_label,
)
from dala.data.breakhis import CLASSES, MAGNIFICATIONS, SUBTYPES
from dala.plots_calibration import reliability_figure, selective_figure  # noqa: F401  (re-exported)

CLASS_COLOURS = {"benign": "#2a9d8f", "malignant": "#c2185b"}
SERIES_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                  "#bcbd22", "#17becf"]

_LAYOUT = dict(margin=dict(l=40, r=20, t=80, b=40), legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))


def _fig(title: str, **layout: Any) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(title=dict(text=title, x=0, xanchor="left"), **{**_LAYOUT, **layout})
    return fig


def synthetic_tag(index_or_source: Any) -> str:
    """" (SYNTHETIC)" for a generated dataset, "" for real data: appended to every data title."""
    source = index_or_source
    if isinstance(index_or_source, pd.DataFrame):
        source = index_or_source.attrs.get("source") or (
            index_or_source["source"].iloc[0] if len(index_or_source) else "unknown")
    return " (SYNTHETIC)" if source == "synthetic" else ""


# ----------------------------------------------------------------------------------- Explore
def class_counts_figure(index: pd.DataFrame) -> go.Figure:
    """Images per class with the imbalance ratio in the title."""
    counts = index["label"].value_counts().reindex(list(CLASSES), fill_value=0)
    ratio = counts["malignant"] / counts["benign"] if counts["benign"] else float("nan")
    fig = _fig(f"Images per class{synthetic_tag(index)}: malignant:benign = {ratio:.2f}:1")
    fig.add_bar(x=list(counts.index), y=counts.values.tolist(), marker_color=[CLASS_COLOURS[c] for c in counts.index],
                text=[f"{v} ({v / max(counts.sum(), 1):.0%})" for v in counts.values], textposition="auto")
    fig.update_layout(yaxis_title="images", showlegend=False)
    return fig


def _stacked(index: pd.DataFrame, by: str, order: Sequence, title: str, xlabel: str) -> go.Figure:
    fig = _fig(title + synthetic_tag(index), barmode="stack")
    table = index.groupby([by, "label"]).size().unstack(fill_value=0).reindex(order, fill_value=0)
    for cls in CLASSES:
        vals = table[cls] if cls in table else pd.Series(0, index=table.index)
        fig.add_bar(x=[str(v) for v in table.index], y=vals.tolist(), name=cls, marker_color=CLASS_COLOURS[cls])
    fig.update_layout(xaxis_title=xlabel, yaxis_title="images", xaxis_type="category")
    return fig


def subtype_counts_figure(index: pd.DataFrame) -> go.Figure:
    """Images per tumour subtype (A F PT TA benign; DC LC MC PC malignant)."""
    fig = _stacked(index, "subtype", list(SUBTYPES), "Images per subtype", "subtype")
    names = {k: v[1].replace("_", " ") for k, v in SUBTYPES.items()}
    fig.update_xaxes(ticktext=[f"{k}<br><sub>{names[k]}</sub>" for k in SUBTYPES], tickvals=list(SUBTYPES))
    return fig


def magnification_counts_figure(index: pd.DataFrame) -> go.Figure:
    """Images per magnification, stacked by class."""
    return _stacked(index, "magnification", list(MAGNIFICATIONS), "Images per magnification", "magnification (X)")


def patient_counts_figure(index: pd.DataFrame) -> go.Figure:
    """Images per patient (the grouping key), sorted, coloured by class: who dominates the data."""
    per = index.groupby("patient").agg(images=("image_id", "size"), label=("label", "first"),
                                       subtype=("subtype", "first")).sort_values("images", ascending=False)
    fig = _fig(f"Images per patient{synthetic_tag(index)} ({len(per)} patients)")
    for cls in CLASSES:
        sub = per[per["label"] == cls]
        fig.add_bar(x=sub.index.tolist(), y=sub["images"].tolist(), name=cls, marker_color=CLASS_COLOURS[cls],
                    customdata=sub["subtype"].tolist(), hovertemplate="%{x} (%{customdata}): %{y} images<extra></extra>")
    fig.update_layout(xaxis_title="patient", yaxis_title="images", xaxis=dict(categoryorder="total descending",
                                                                               showticklabels=len(per) <= 45))
    return fig


def colour_statistics(frame: pd.DataFrame, *, per_class: int = 40, seed: int = 0, size: int = 128) -> pd.DataFrame:
    """Mean and standard deviation of R, G, B per image, for up to ``per_class`` images of each class
    (images are shrunk to ``size`` px first: statistics, not detail). A class signal here would be
    a shortcut a network could learn instead of morphology."""
    from PIL import Image

    from dala.data.images import load_rgb

    parts = []
    for cls in CLASSES:
        sub = frame[frame["label"] == cls]
        if len(sub) > per_class:
            sub = sub.sample(per_class, random_state=seed)
        parts.append(sub)
    sample = pd.concat(parts) if parts else frame.iloc[:0]
    rows = []
    for r in sample.itertuples():
        im = load_rgb(r.path)
        im.thumbnail((size, size), Image.BILINEAR)
        a = np.asarray(im, dtype=np.float32).reshape(-1, 3)
        m, s = a.mean(0), a.std(0)
        rows.append({"image_id": r.image_id, "label": r.label, "patient": r.patient, "magnification": r.magnification,
                     "mean_R": m[0], "mean_G": m[1], "mean_B": m[2], "std_R": s[0], "std_G": s[1], "std_B": s[2]})
    return pd.DataFrame(rows)


def colour_figure(stats: pd.DataFrame, *, title_suffix: str = "") -> go.Figure:
    """Box plots of per-image channel means by class."""
    fig = _fig("Per-image mean colour by class" + title_suffix, boxmode="group")
    for cls in CLASSES:
        sub = stats[stats["label"] == cls]
        y, x = [], []
        for ch in "RGB":
            y += sub[f"mean_{ch}"].tolist()
            x += [ch] * len(sub)
        fig.add_box(x=x, y=y, name=cls, marker_color=CLASS_COLOURS[cls], boxpoints="outliers")
    fig.update_layout(xaxis_title="channel", yaxis_title="mean intensity (0-255)")
    return fig


def colour_table(stats: pd.DataFrame) -> pd.DataFrame:
    """Class means of the per-image statistics (rows: class; columns: mean_R ... std_B)."""
    cols = [c for c in stats.columns if c.startswith(("mean_", "std_"))]
    return stats.groupby("label")[cols].mean().round(1).reindex([c for c in CLASSES if c in set(stats["label"])])


def outline_mask(image: np.ndarray, mask: np.ndarray, *, colour=(255, 255, 0), thickness: int = 2) -> np.ndarray:
    """Draw the outline of a (ground-truth lesion) mask over an RGB image; the mask is resized to
    the image if needed (any non-zero pixel is inside)."""
    import cv2

    img = np.ascontiguousarray(np.asarray(image, dtype=np.uint8)[..., :3]).copy()
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m.max(axis=2)
    m = (m > 0).astype(np.uint8)
    if m.shape != img.shape[:2]:
        m = cv2.resize(m, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(img, contours, -1, colour, thickness)
    return img


# ----------------------------------------------------------------------------------- splits
def split_table(split: Any, index: pd.DataFrame) -> pd.DataFrame:
    """Images, patients and class counts per part of a split."""
    frames = split.frames(index)
    rows = []
    for part, fr in frames.items():
        rows.append({"part": part, "images": len(fr), "patients": fr["patient"].nunique(),
                     "benign": int((fr["label"] == "benign").sum()), "malignant": int((fr["label"] == "malignant").sum())})
    return pd.DataFrame(rows).set_index("part")


def split_patients_figure(split: Any, index: pd.DataFrame, *, title: str = "") -> go.Figure:
    """For each patient, how many of its images sit in train / val / test. In a patient split every
    bar has one colour; in an image split most bars have three: the same patient, seen in training,
    is tested - that is the leak."""
    frames = split.frames(index)
    long = pd.concat([fr.assign(part=p) for p, fr in frames.items()]) if frames else index.iloc[:0].assign(part=[])
    table = long.groupby(["patient", "part"]).size().unstack(fill_value=0)
    table = table.reindex(columns=[p for p in ("train", "val", "test") if p in table.columns])
    order = long.groupby("patient")["label"].first().sort_values().index
    table = table.reindex(order)
    leaks = set(split.leaking_patients())
    fig = _fig(title or f"{split.by}-level split: {len(leaks)} of {len(table)} patients leak across parts", barmode="stack")
    colours = {"train": "#4c78a8", "val": "#f2cf5b", "test": "#e45756"}
    for part in table.columns:
        fig.add_bar(x=table.index.tolist(), y=table[part].tolist(), name=part, marker_color=colours.get(part))
    fig.update_layout(xaxis_title="patient (benign first)", yaxis_title="images",
                      xaxis=dict(showticklabels=len(table) <= 45))
    return fig


# ----------------------------------------------------------------------------------- augmentation
def denormalize(x: Any, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A normalised ``(3, H, W)`` tensor or array back to an ``(H, W, 3)`` uint8 image for display."""
    a = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    a = a.astype(np.float32) * np.asarray(std, np.float32)[:, None, None] + np.asarray(mean, np.float32)[:, None, None]
    return (np.clip(a, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)


def augmentation_views(image: Any, *, n: int = 8, size: int = 224, seed: int = 0) -> list[np.ndarray]:
    """``n`` draws of the training transform on one image, de-normalised for display."""
    import torch

    from dala.data.dataset import IMAGENET_MEAN, IMAGENET_STD, build_transform

    tf = build_transform("train", size=size)
    torch.manual_seed(seed)
    return [denormalize(tf(image), IMAGENET_MEAN, IMAGENET_STD) for _ in range(n)]


# ----------------------------------------------------------------------------------- training
def _col(records: Sequence[Mapping], key: str) -> list:
    return [r.get(key) for r in records]


def training_curves_figure(epochs: Sequence[Mapping], steps: Sequence[Mapping] = (), *, steps_per_epoch: int | None = None,
                           title: str = "Training curves") -> go.Figure:
    """Loss (left axis) and accuracy / GMean (right axis, 0-1) against epochs on one chart, as they
    grow. Step losses, if given, are drawn faintly at fractional epochs (``step / steps_per_epoch``)."""
    fig = _fig(title)
    if steps:
        if steps_per_epoch:
            xs = [s["step"] / steps_per_epoch for s in steps]
        else:  # spread each epoch's steps over (epoch-1, epoch]
            by_epoch: dict[int, list] = {}
            for s in steps:
                by_epoch.setdefault(int(s.get("epoch", 1)), []).append(s)
            xs = []
            for e, ss in sorted(by_epoch.items()):
                xs += [e - 1 + (i + 1) / len(ss) for i in range(len(ss))]
        fig.add_scatter(x=xs, y=_col(steps, "loss"), name="train loss (steps)", mode="lines",
                        line=dict(color="#9ecae1", width=1))
    ep = [r["epoch"] for r in epochs]
    if epochs:
        fig.add_scatter(x=ep, y=_col(epochs, "train_loss"), name="train loss", mode="lines+markers",
                        line=dict(color="#1f77b4"))
        fig.add_scatter(x=ep, y=_col(epochs, "val_loss"), name="val loss", mode="lines+markers",
                        line=dict(color="#ff7f0e"))
        for key, name, colour, dash in (("train_accuracy", "train acc", "#1f77b4", "dot"),
                                        ("val_accuracy", "val acc", "#ff7f0e", "dot"),
                                        ("val_gmean", "val GMean", "#2ca02c", "dash"),
                                        ("val_balanced_accuracy", "val balanced acc", "#9467bd", "dashdot")):
            ys = _col(epochs, key)
            if any(v is not None for v in ys):
                fig.add_scatter(x=ep, y=ys, name=name, mode="lines+markers", yaxis="y2", line=dict(color=colour, dash=dash))
    n_ep = max(ep) if ep else 1
    fig.update_layout(xaxis=dict(title="epoch", range=[0, max(n_ep, 1) + 0.2]),
                      yaxis=dict(title="loss", rangemode="tozero"),
                      yaxis2=dict(title="accuracy / GMean", overlaying="y", side="right", range=[0, 1.02],
                                  tickmode="linear", tick0=0, dtick=0.2, showgrid=False),
                      height=420)
    return fig


def confusion_matrix_figure(cm: Sequence[Sequence[int]], class_names: Sequence[str] = CLASSES, *,
                            title: str = "Confusion matrix (test)") -> go.Figure:
    """Counts with row-normalised shading (rows: true class, columns: predicted)."""
    a = np.asarray(cm, dtype=float)
    rows = a.sum(1, keepdims=True)
    frac = np.divide(a, rows, out=np.zeros_like(a), where=rows > 0)
    text = [[f"{int(a[i, j])}<br>({frac[i, j]:.0%})" for j in range(a.shape[1])] for i in range(a.shape[0])]
    wrapped = _wrap(title, 32)  # a run label in a quarter-width column: wrapped, never cut
    n_lines = wrapped.count("<br>") + 1
    fig = _fig(wrapped)
    fig.add_heatmap(z=frac, x=[f"pred {c}" for c in class_names], y=[f"true {c}" for c in class_names], text=text,
                    texttemplate="%{text}", colorscale="Blues", zmin=0, zmax=1, showscale=False)
    fig.update_layout(yaxis=dict(autorange="reversed"), height=280 + 18 * n_lines, title_font_size=13,
                      margin=dict(l=90, r=10, t=30 + 18 * n_lines, b=40))
    return fig


def heatmap_scale_figure(*, title: str = "Map colour scale") -> go.Figure:
    """The colour key of the explanation overlays (the Jet colormap of pytorch-grad-cam's
    ``show_cam_on_image``, the map normalised to 0-1 per image): blue = little evidence for the
    target class, red = most."""
    fig = _fig(title)
    fig.add_heatmap(z=[list(np.linspace(0, 1, 101))], x=list(np.linspace(0, 1, 101)), colorscale="Jet", zmin=0,
                    zmax=1, showscale=False, hovertemplate="map value %{x:.2f}<extra></extra>")
    fig.update_layout(height=110, margin=dict(l=10, r=10, t=30, b=30), yaxis=dict(visible=False),
                      xaxis=dict(tickvals=[0, 0.5, 1], ticktext=["0 (low)", "0.5", "1 (highest in this image)"]))
    return fig


def probability_figure(probs: Sequence[float], class_names: Sequence[str] = CLASSES, *, title: str = "Class probabilities") -> go.Figure:
    fig = _fig(title)
    colours = [CLASS_COLOURS.get(str(c), SERIES_COLOURS[i % 10]) for i, c in enumerate(class_names)]
    fig.add_bar(x=[float(p) for p in probs], y=list(class_names), orientation="h", marker_color=colours,
                text=[f"{p:.1%}" for p in probs], textposition="auto")
    fig.update_layout(xaxis=dict(range=[0, 1], title="probability"), height=160, showlegend=False,
                      margin=dict(l=80, r=10, t=40, b=30))
    return fig


# ----------------------------------------------------------------------------------- compare
def _label(r: Mapping) -> str:
    return str(r.get("label") or r["name"])


def _wrap(text: str, width: int = 34) -> str:
    """Break a long " · "-separated title into lines of about ``width`` characters (<br>), so a
    narrow chart never cuts it."""
    lines: list[str] = []
    for part in str(text).split(" · "):
        if lines and len(lines[-1]) + len(part) + 3 <= width:
            lines[-1] += " · " + part
        else:
            lines.append(part)
    return "<br>".join(lines)


def _series_name(row: Mapping) -> str:
    lab = row.get("label")
    return str(lab if isinstance(lab, str) and lab else row["run"])


def metrics_bar_figure(table: pd.DataFrame, metrics: Sequence[str]) -> go.Figure:
    """Grouped bars: one group per metric (readable names), one bar per run."""
    from dala.metric_row import metric_label

    fig = _fig("Test metrics by run (measured)", barmode="group")
    for i, row in table.reset_index(drop=True).iterrows():
        fig.add_bar(x=[metric_label(m) for m in metrics], y=[row.get(m) for m in metrics], name=_series_name(row),
                    marker_color=SERIES_COLOURS[i % len(SERIES_COLOURS)])
    fig.update_layout(yaxis=dict(range=[0, 1.02], title="score"), legend=dict(orientation="v", y=-0.25, yanchor="top"))
    return fig


def radar_figure(table: pd.DataFrame, metrics: Sequence[str]) -> go.Figure:
    from dala.metric_row import metric_label

    fig = _fig("Metric profile (measured)")
    names = [metric_label(m) for m in metrics]
    for i, row in table.reset_index(drop=True).iterrows():
        vals = [row.get(m) if row.get(m) is not None and not pd.isna(row.get(m)) else 0 for m in metrics]
        fig.add_scatterpolar(r=vals + vals[:1], theta=names + names[:1], name=_series_name(row),
                             line=dict(color=SERIES_COLOURS[i % len(SERIES_COLOURS)]))
    fig.update_layout(polar=dict(radialaxis=dict(range=[0, 1])), legend=dict(orientation="v", y=-0.1, yanchor="top"))
    return fig


def convergence_figure(runs: Sequence[Mapping], *, metric: str = "val_loss") -> go.Figure:
    """One line per run of an epoch-record metric (``val_loss``, ``val_accuracy``, ``val_gmean``...)."""
    from dala.metric_row import metric_label

    fig = _fig(f"Convergence: {metric_label(metric)}")
    for i, r in enumerate(runs):
        eps = r.get("epochs") or []
        fig.add_scatter(x=[e["epoch"] for e in eps], y=[e.get(metric) for e in eps], name=_label(r),
                        mode="lines+markers", line=dict(color=SERIES_COLOURS[i % len(SERIES_COLOURS)]))
    fig.update_layout(xaxis_title="epoch", yaxis_title=metric_label(metric),
                      legend=dict(orientation="v", y=-0.25, yanchor="top"))
    return fig


# kind -> (title, curve key in report["curves"], x key, y key, area key, area name, x title, y title)
_CURVES = {
    "roc": ("ROC (test, malignant positive)", "roc", "fpr", "tpr", "auc", "AUC", "false positive rate",
            "true positive rate"),
    "pr": ("Precision-recall (test, malignant positive)", "pr", "recall", "precision", "ap", "AP", "recall",
           "precision"),
}


def _curve_figure(runs: Sequence[Mapping], kind: str) -> go.Figure:
    """The one builder behind :func:`roc_figure` and :func:`pr_figure`."""
    title, key, xk, yk, ak, aname, xt, yt = _CURVES[kind]
    fig = _fig(title)
    if kind == "roc":
        fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#bbb", dash="dash"), name="chance")
    for i, r in enumerate(runs):
        curve = ((r.get("report") or {}).get("curves") or {}).get(key) or {}
        if curve.get(xk) and curve.get(yk):
            area = curve.get(ak)
            fig.add_scatter(x=curve[xk], y=curve[yk], mode="lines",
                            name=f"{_label(r)} ({aname} {area:.3f})" if area is not None else _label(r),
                            line=dict(color=SERIES_COLOURS[i % len(SERIES_COLOURS)]))
    fig.update_layout(xaxis=dict(title=xt, range=[0, 1]), yaxis=dict(title=yt, range=[0, 1.02]),
                      legend=dict(orientation="v", y=-0.2, yanchor="top"))
    return fig


def roc_figure(runs: Sequence[Mapping]) -> go.Figure:
    return _curve_figure(runs, "roc")


def pr_figure(runs: Sequence[Mapping]) -> go.Figure:
    return _curve_figure(runs, "pr")


def reported_vs_measured_figure(runs: Sequence[Mapping]) -> go.Figure:
    """The paper's reported DALAResNet50 accuracies as open diamonds ("reported", split protocol not
    stated) beside our measured test accuracies per magnification (labelled with their split)."""
    fig = _fig("Accuracy by magnification: reported (paper) vs measured (ours)")
    mags = [f"{m}X" for m in MAGNIFICATIONS]
    fig.add_scatter(x=mags, y=[REPORTED_DALA_ACCURACY[m] for m in MAGNIFICATIONS], mode="markers+text",
                    name="DALAResNet50, reported (paper; split not stated; real BreakHis)",
                    marker=dict(symbol="diamond-open", size=16, color="black", line=dict(width=2)),
                    text=[f"{REPORTED_DALA_ACCURACY[m]:.1%}" for m in MAGNIFICATIONS], textposition="top center")
    for i, r in enumerate(runs):
        meas = measured_accuracy_by_magnification(r)
        if not meas:
            continue
        split = (r.get("config") or {}).get("split_mode", "?")
        fig.add_scatter(x=[f"{m}X" for m in sorted(meas)], y=[meas[m] for m in sorted(meas)], mode="markers",
                        name=f"{r['name']}: measured, {split}-level split",
                        marker=dict(size=12, color=SERIES_COLOURS[i % len(SERIES_COLOURS)]))
    fig.update_layout(xaxis=dict(title="magnification", type="category", categoryorder="array", categoryarray=mags),
                      yaxis=dict(title="test accuracy", range=[0, 1.12]), legend=dict(orientation="v", y=-0.2, yanchor="top"))
    return fig


# ----------------------------------------------------------------------------------- notebooks
def _png_data_uri(image: Any, max_side: int) -> tuple[str, int, int]:
    """A uint8 RGB image as a PNG data URI, shrunk to ``max_side`` (a picture, not a pixel array:
    a 350x230 field as a JSON array would weigh a megabyte in a notebook)."""
    import base64
    import io

    from PIL import Image

    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = (np.clip(a.astype(np.float32), 0, 1) * 255).round().astype(np.uint8) if a.max() <= 1 else a.astype(np.uint8)
    im = Image.fromarray(a[..., :3] if a.ndim == 3 else a).convert("RGB")
    im.thumbnail((max_side, max_side), Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), im.width, im.height


def image_grid_figure(images: Sequence[Any], titles: Sequence[str] | None = None, *, cols: int = 4, title: str = "",
                      max_side: int = 256, tile_height: int = 190) -> go.Figure:
    """RGB images (H x W x 3 uint8 arrays or PIL images) in a grid, a caption over each. Images are
    embedded as PNG thumbnails (``max_side`` px), so a notebook of fields stays small."""
    from plotly.subplots import make_subplots

    n = len(images)
    cols = max(1, min(cols, n or 1))
    rows = max(1, math.ceil(n / cols))
    caps = [str(t) for t in titles] if titles is not None else [""] * n
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=caps + [""] * (rows * cols - n),
                        horizontal_spacing=0.01, vertical_spacing=min(0.3 / rows, 0.08))
    for i, im in enumerate(images):
        uri, w, h = _png_data_uri(im, max_side)
        r, c = i // cols + 1, i % cols + 1
        fig.add_trace(go.Image(source=uri, hoverinfo="skip"), row=r, col=c)
        fig.update_xaxes(range=[0, w], row=r, col=c)
        fig.update_yaxes(range=[h, 0], scaleanchor=f"x{i + 1 if i else ''}", row=r, col=c)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_annotations(font_size=11)
    fig.update_layout(title=dict(text=title, x=0, xanchor="left"), height=rows * tile_height + (70 if title else 30),
                      margin=dict(l=5, r=5, t=70 if title else 30, b=5), showlegend=False)
    return fig


def metric_sweep_figure(table: pd.DataFrame, *, x: str, metrics: Sequence[str] = ("accuracy", "gmean", "iba"),
                        title: str = "", x_title: str | None = None, reverse_x: bool = False) -> go.Figure:
    """One line per metric against a swept setting (``table``: one row per run, a column ``x`` and
    one column per metric). The imbalance lab: accuracy against GMean and IBA as the training
    set's benign:malignant ratio falls (``reverse_x=True`` draws the ratio falling to the right)."""
    fig = _fig(title or f"Test metrics against {x}")
    t = table.sort_values(x) if pd.api.types.is_numeric_dtype(table[x]) else table
    styles = {"accuracy": ("#1f77b4", "solid"), "gmean": ("#2ca02c", "dash"), "iba": ("#d62728", "dot"),
              "balanced_accuracy": ("#9467bd", "dashdot")}
    for i, m in enumerate(metrics):
        colour, dash = styles.get(m, (SERIES_COLOURS[i % len(SERIES_COLOURS)], "solid"))
        fig.add_scatter(x=t[x].tolist(), y=pd.to_numeric(t[m], errors="coerce").tolist(), name=m, mode="lines+markers",
                        line=dict(color=colour, dash=dash))
    fig.update_layout(xaxis=dict(title=x_title or x, autorange="reversed" if reverse_x else True, type="category"
                                 if not pd.api.types.is_numeric_dtype(t[x]) else "linear"),
                      yaxis=dict(title="score (test)", range=[0, 1.02]))
    return fig


def faithfulness_figure(scores: pd.DataFrame, *, title: str = "Does the map point at the lesion? (mean over malignant test images)") -> go.Figure:
    """Grouped bars per explanation method of the mean ``pointing``, ``energy_inside`` and ``iou``
    (rows of ``dala.explain.faithfulness.score_explanation`` with a ``method`` column), with the
    chance level of energy-inside (the lesions' mean area share, ``mask_fraction``) as a line."""
    fig = _fig(title, barmode="group")
    means = scores.groupby("method", sort=False)[["pointing", "energy_inside", "iou", "mask_fraction"]].mean()
    for i, (key, name) in enumerate((("pointing", "pointing game (hit rate)"), ("energy_inside", "energy inside mask"),
                                     ("iou", "IoU of the DT region"))):
        fig.add_bar(x=means.index.tolist(), y=means[key].tolist(), name=name, marker_color=SERIES_COLOURS[i],
                    text=[f"{v:.2f}" for v in means[key]], textposition="auto")
    chance = float(scores["mask_fraction"].mean()) if len(scores) else float("nan")
    if np.isfinite(chance):
        fig.add_hline(y=chance, line=dict(color="#555", dash="dash"),
                      annotation_text=f"chance (lesion area share {chance:.2f})", annotation_position="top left")
    fig.update_layout(xaxis_title="method", yaxis=dict(title="score", range=[0, 1.05]))
    return fig
