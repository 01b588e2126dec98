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
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dala.data.breakhis import CLASSES, MAGNIFICATIONS, SUBTYPES

CLASS_COLOURS = {"benign": "#2a9d8f", "malignant": "#c2185b"}
SERIES_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                  "#bcbd22", "#17becf"]

#: DALAResNet50's accuracies as the paper reports them (arXiv 2308.13150), per magnification.
#: The split protocol behind them is not stated; patient-level peers report 85-91 %.
REPORTED_DALA_ACCURACY: dict[int, float] = {40: 0.985, 100: 0.987, 200: 0.979, 400: 0.943}
REPORTED_NOTE = ("reported by the DALAResNet50 paper (arXiv 2308.13150) on real BreakHis; "
                 "its split protocol is not stated")

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
    fig = _fig(title)
    fig.add_heatmap(z=frac, x=[f"pred {c}" for c in class_names], y=[f"true {c}" for c in class_names], text=text,
                    texttemplate="%{text}", colorscale="Blues", zmin=0, zmax=1, showscale=False)
    fig.update_layout(yaxis=dict(autorange="reversed"), height=300, margin=dict(l=90, r=10, t=50, b=40))
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
def run_label(config: Mapping, name: str = "") -> str:
    """A short label: ``model @mag split-split [imbalance] (folder)``."""
    mag = f"{config.get('magnification')}X" if config.get("magnification") else "all mags"
    imb = config.get("imbalance") or "none"
    extra = f" {imb}" if imb != "none" else ""
    return f"{config.get('model', '?')} {mag} {config.get('split_mode', '?')}-split{extra}" + (f" ({name})" if name else "")


def compare_table(runs: Sequence[Mapping]) -> pd.DataFrame:
    """One row per finished run: headline test metrics (``dala.metrics.summary_row``), then the
    split, parameter count and throughput. ``runs``: dicts with ``name``, ``config``, ``report``."""
    from dala.metrics import summary_row

    rows = []
    for r in runs:
        report = r.get("report") or {}
        test = report.get("test")
        if not test:
            continue
        cfg = r.get("config") or {}
        row = {"run": r["name"], "split": cfg.get("split_mode"), **summary_row(test), "model": cfg.get("model"),
               "magnification": f"{cfg['magnification']}X" if cfg.get("magnification") else "all",
               "imbalance": cfg.get("imbalance", "none"),
               "weights": report.get("weight_source") or cfg.get("weight_source") or
               ("pretrained" if cfg.get("pretrained") else "random"),
               "data": report.get("data_source", "?"), "params": report.get("num_params"),
               "trainable_params": report.get("trainable_params"),
               "images_per_s": report.get("train_images_per_s"),
               "epochs": report.get("best_epoch")}
        rows.append(row)
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


def metrics_bar_figure(table: pd.DataFrame, metrics: Sequence[str]) -> go.Figure:
    """Grouped bars: one group per metric, one bar per run."""
    fig = _fig("Test metrics by run (measured)", barmode="group")
    for i, row in table.reset_index(drop=True).iterrows():
        fig.add_bar(x=list(metrics), y=[row.get(m) for m in metrics], name=str(row["run"]),
                    marker_color=SERIES_COLOURS[i % len(SERIES_COLOURS)])
    fig.update_layout(yaxis=dict(range=[0, 1.02], title="score"), legend=dict(orientation="v", y=-0.25, yanchor="top"))
    return fig


def radar_figure(table: pd.DataFrame, metrics: Sequence[str]) -> go.Figure:
    fig = _fig("Metric profile (measured)")
    for i, row in table.reset_index(drop=True).iterrows():
        vals = [row.get(m) if row.get(m) is not None and not pd.isna(row.get(m)) else 0 for m in metrics]
        fig.add_scatterpolar(r=vals + vals[:1], theta=list(metrics) + list(metrics[:1]), name=str(row["run"]),
                             line=dict(color=SERIES_COLOURS[i % len(SERIES_COLOURS)]))
    fig.update_layout(polar=dict(radialaxis=dict(range=[0, 1])), legend=dict(orientation="v", y=-0.1, yanchor="top"))
    return fig


def convergence_figure(runs: Sequence[Mapping], *, metric: str = "val_loss") -> go.Figure:
    """One line per run of an epoch-record metric (``val_loss``, ``val_accuracy``, ``val_gmean``...)."""
    fig = _fig(f"Convergence: {metric}")
    for i, r in enumerate(runs):
        eps = r.get("epochs") or []
        fig.add_scatter(x=[e["epoch"] for e in eps], y=[e.get(metric) for e in eps], name=r["name"],
                        mode="lines+markers", line=dict(color=SERIES_COLOURS[i % len(SERIES_COLOURS)]))
    fig.update_layout(xaxis_title="epoch", yaxis_title=metric, legend=dict(orientation="v", y=-0.25, yanchor="top"))
    return fig


def roc_figure(runs: Sequence[Mapping]) -> go.Figure:
    fig = _fig("ROC (test, malignant positive)")
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#bbb", dash="dash"), name="chance")
    for i, r in enumerate(runs):
        roc = ((r.get("report") or {}).get("curves") or {}).get("roc") or {}
        if roc.get("fpr"):
            auc = roc.get("auc")
            fig.add_scatter(x=roc["fpr"], y=roc["tpr"], mode="lines", name=f"{r['name']} (AUC {auc:.3f})" if auc is not None else r["name"],
                            line=dict(color=SERIES_COLOURS[i % len(SERIES_COLOURS)]))
    fig.update_layout(xaxis=dict(title="false positive rate", range=[0, 1]), yaxis=dict(title="true positive rate", range=[0, 1.02]),
                      legend=dict(orientation="v", y=-0.2, yanchor="top"))
    return fig


def pr_figure(runs: Sequence[Mapping]) -> go.Figure:
    fig = _fig("Precision-recall (test, malignant positive)")
    for i, r in enumerate(runs):
        pr = ((r.get("report") or {}).get("curves") or {}).get("pr") or {}
        if pr.get("precision"):
            ap = pr.get("ap")
            fig.add_scatter(x=pr["recall"], y=pr["precision"], mode="lines", name=f"{r['name']} (AP {ap:.3f})" if ap is not None else r["name"],
                            line=dict(color=SERIES_COLOURS[i % len(SERIES_COLOURS)]))
    fig.update_layout(xaxis=dict(title="recall", range=[0, 1]), yaxis=dict(title="precision", range=[0, 1.02]),
                      legend=dict(orientation="v", y=-0.2, yanchor="top"))
    return fig


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
