"""The stain lesson, measured: how much of the patient leak lives in colour alone, and how much
of it stain normalisation takes away.

Each image becomes six numbers, the mean and spread of its R, G and B channels (no morphology),
computed as it is and after each stain normalisation (``dala.data.stain``: Reinhard, Macenko, fitted
to the dataset's default reference). A **1-nearest-neighbour** classifier on those numbers is scored
by balanced accuracy (0.5 = chance) twice: with an **image-level** split, where it can find another
image of the test image's own patient among the training images and take that patient's label,
and with a **patient-level** split (:func:`dala.data.splits.make_split`), where it cannot. The gap
between the two is what colour alone adds through a leaky protocol.

On the synthetic default every patient has its own stain signature by construction, so the gap is
large before normalisation; on real data it measures how much a patient's stain, slide and scanner
identify them. Intervals are 95 % percentile bootstraps over the test **patients**
(:mod:`dala.stats`: a patient's images are resampled together).

    from dala.data.stain_lesson import measure_colour_leak, colour_leak_figure
    leak = measure_colour_leak(index, per_patient=4, progress=lambda done, total: ...)
    leak.scores   # method, split, balanced_accuracy, lo, hi, n_train, n_test, n_test_patients
    leak.gaps     # method, image-level, patient-level, gap, gap_lo, gap_hi
    colour_leak_figure(leak).show()

UI-free (the Explore page's Stain tab and notebook 03 call the same function); nothing here
imports Streamlit.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import pandas as pd

from dala.errors import DalaError, DataError

if TYPE_CHECKING:
    import plotly.graph_objects as go

METHODS = ("none", "reinhard", "macenko")  # "none": the colours as they are
SPLITS = ("image", "patient")
THUMB_SIDE = 128  # px: colour statistics of a 128 px thumbnail are those of the field, at a fraction of the cost
QUICK_PER_PATIENT = 4  # images per patient in the quick (and hosted) measurement: a few seconds on the default
BATCH = 32  # images per call of the batched normaliser (and per progress step)
N_BOOT = 1000
METHOD_LABELS = {"none": "no normalisation", "reinhard": "Reinhard", "macenko": "Macenko"}
SPLIT_LABELS = {"image": "image-level split (leaks patients)", "patient": "patient-level split"}
SPLIT_COLOURS = {"image": "#d62728", "patient": "#1f77b4"}

Progress = Callable[[int, int], None]

_threads_lock = threading.Lock()
_threads_depth = 0
_threads_saved = 0


@contextlib.contextmanager
def _one_torch_thread():
    """torch on one thread while thumbnails are normalised: a 128 px image is just over torch's
    grain for splitting an operation over threads, and on a busy 2-core machine the threads' hand-off
    costs ~100x the work (torch.log of one thumbnail: 5.5 ms on 2 threads, 0.04 ms on 1, load
    average 3.8). Process-wide, so nested or concurrent callers share one count and the last one
    out restores the setting."""
    import torch

    global _threads_depth, _threads_saved
    with _threads_lock:
        if _threads_depth == 0:
            _threads_saved = torch.get_num_threads()
            torch.set_num_threads(1)
        _threads_depth += 1
    try:
        yield
    finally:
        with _threads_lock:
            _threads_depth -= 1
            if _threads_depth == 0:
                torch.set_num_threads(_threads_saved)


@dataclass(frozen=True)
class ColourLeak:
    """What :func:`measure_colour_leak` measured, and on what."""

    scores: pd.DataFrame  # one row per (method, split): balanced_accuracy, lo, hi, n_train, n_test, n_test_patients
    gaps: pd.DataFrame  # one row per method: image-level, patient-level, gap (image - patient), gap_lo, gap_hi
    n_images: int  # images used
    n_images_total: int  # images in the dataset
    n_patients: int
    per_patient: int | None  # the cap on images per patient (None: every image)
    reference: str  # the stain reference (path)
    synthetic: bool
    seed: int
    thumb_side: int
    fell_back: dict[str, int] = field(default_factory=dict)  # per method: images left un-normalised
    unreadable: int = 0  # images that could not be decoded (left out)

    def gap(self, method: str) -> float:
        return float(self.gaps.set_index("method").loc[method, "gap"])

    def score(self, method: str, split: str) -> float:
        s = self.scores.set_index(["method", "split"])
        return float(s.loc[(method, split), "balanced_accuracy"])

    def describe(self) -> str:
        """What produced the numbers, in one line."""
        cap = "every image" if self.per_patient is None else f"up to {self.per_patient} per patient"
        fell = ", ".join(f"{METHOD_LABELS[m]} {n}" for m, n in self.fell_back.items() if n)
        return (f"{self.n_images} of {self.n_images_total} images ({cap}, {self.n_patients} patients, all magnifications"
                f"{', SYNTHETIC' if self.synthetic else ''}), {self.thumb_side} px thumbnails, split seed {self.seed}, "
                f"reference {_name(self.reference)}"
                + (f"; left un-normalised (failure cases): {fell}" if fell else "")
                + (f"; {self.unreadable} unreadable image(s) left out" if self.unreadable else ""))


def _name(path: str) -> str:
    from pathlib import Path

    return Path(path).name


# ----------------------------------------------------------------------------- choosing the images
def pick_images(index: pd.DataFrame, per_patient: int | None = None) -> pd.DataFrame:
    """The rows to measure: every image, or at most ``per_patient`` of each patient, dealt in turn
    over its magnifications (one 40X, one 100X, ...) so every magnification stays represented.
    Deterministic (sorted by image id within a magnification)."""
    _check_index(index)
    if per_patient is None:
        return index.sort_values("image_id").reset_index(drop=True)
    if isinstance(per_patient, bool) or not isinstance(per_patient, (int, np.integer)) or per_patient < 2:
        raise DataError(f"per_patient={per_patient!r}: give at least 2 images per patient (the image-level split needs "
                        "a second image of a patient to leak it), or None for every image.")
    rows = index.sort_values(["patient", "magnification", "image_id"]).copy()
    rows["_turn"] = rows.groupby(["patient", "magnification"]).cumcount()  # 0 for each magnification's first image...
    rows = rows.sort_values(["patient", "_turn", "magnification", "image_id"])
    out = rows.groupby("patient", sort=False).head(int(per_patient)).drop(columns="_turn")
    return out.sort_values("image_id").reset_index(drop=True)


def _check_index(index: Any) -> None:
    need = {"image_id", "path", "patient", "target", "label", "magnification"}
    if not isinstance(index, pd.DataFrame) or not need <= set(index.columns):
        got = sorted(index.columns) if isinstance(index, pd.DataFrame) else type(index).__name__
        raise DataError(f"the stain lesson takes a dataset index (dala.data.load_index): columns {sorted(need)}; got {got}.")
    if index.empty:
        raise DataError("the dataset index is empty: choose a dataset folder with BreakHis images.")
    per_class = index.groupby("label")["patient"].nunique()
    short = {c: int(per_class.get(c, 0)) for c in ("benign", "malignant") if per_class.get(c, 0) < 2}
    if short:
        have = ", ".join(f"{n} {c}" for c, n in short.items())
        raise DataError(f"the colour-leak lesson needs at least 2 patients of each class (one to train on, one to test "
                        f"with a patient-level split); this dataset has {have} patient(s): add patients, or choose a "
                        "larger dataset (the synthetic default has 82).")


# ----------------------------------------------------------------------------- colour features
def colour_features(images: Sequence[Any]) -> np.ndarray:
    """(N, 6) float32: the mean and standard deviation of R, G, B of each image (HxWx3 uint8
    arrays or (3, H, W) uint8 tensors)."""
    out = []
    for im in images:
        arr = np.asarray(im.permute(1, 2, 0) if hasattr(im, "permute") else im, dtype=np.float32)
        x = arr.reshape(-1, 3)
        out.append(np.concatenate([x.mean(0), x.std(0)]))
    return np.stack(out) if out else np.zeros((0, 6), dtype=np.float32)


def load_thumbnails(paths: Sequence[str], *, side: int = THUMB_SIDE,
                    progress: Progress | None = None, start: int = 0, total: int | None = None):
    """``(thumbnails, unreadable)``: each image as an HxWx3 uint8 array at most ``side`` px a side
    (PIL's thumbnail), and the indices of those that could not be decoded."""
    from dala.data.images import load_rgb

    thumbs, bad = [], []
    for i, path in enumerate(paths):
        try:
            img = load_rgb(path)
            img.thumbnail((side, side))
            thumbs.append(np.asarray(img))
        except (DalaError, OSError):
            bad.append(i)
        if progress and (i + 1) % BATCH == 0:
            progress(start + i + 1, total or len(paths))
    return thumbs, bad


def normalised_features(thumbs: Sequence[np.ndarray], normalizer, *, progress: Progress | None = None,
                        start: int = 0, total: int | None = None) -> tuple[np.ndarray, int]:
    """``(features (N, 6), images left un-normalised)`` after ``normalizer`` (a
    :class:`dala.data.stain.StainNormalizer`; None: as they are), in batches of :data:`BATCH`. An
    image the method cannot handle is measured as it was (what the normaliser hands back)."""
    if normalizer is None:
        return colour_features(thumbs), 0
    feats, fell_back = [], 0
    with _one_torch_thread():
        for lo in range(0, len(thumbs), BATCH):
            batch = normalizer(list(thumbs[lo:lo + BATCH]))  # StainBatch: images (B, 3, H, W), or a list if sizes differ
            feats.append(colour_features(list(batch.images)))
            fell_back += sum(not ok for ok in batch.normalised)
            if progress:
                progress(start + min(lo + BATCH, len(thumbs)), total or len(thumbs))
    return (np.concatenate(feats) if feats else np.zeros((0, 6), dtype=np.float32)), fell_back


# ----------------------------------------------------------------------------- scoring
def _split_parts(rows: pd.DataFrame, by: str, *, seed: int, test: float, val: float) -> dict[str, pd.DataFrame]:
    from dala.data.splits import make_split

    parts = make_split(rows, by=by, seed=seed, test=test, val=val, magnification=None).frames(rows)
    for part in ("train", "test"):
        classes = set(parts[part]["label"])
        if len(classes) < 2:
            raise DataError(f"the {by}-level split's {part} part holds only {', '.join(sorted(classes)) or 'no'} images "
                            f"({len(parts[part])} images, {parts[part]['patient'].nunique()} patients): the 1-NN lesson "
                            "needs both classes on both sides; use more patients per class (or another seed).")
    return parts


def _score(feats: dict[str, np.ndarray], parts: dict[str, pd.DataFrame], *, n_boot: int, seed: int) -> dict:
    from sklearn.neighbors import KNeighborsClassifier

    from dala.stats import metric_ci

    train, test = parts["train"], parts["test"]
    x_train = np.stack([feats[i] for i in train["image_id"]])
    x_test = np.stack([feats[i] for i in test["image_id"]])
    pred = KNeighborsClassifier(n_neighbors=1).fit(x_train, train["target"].to_numpy()).predict(x_test)
    y, pats = test["target"].to_numpy(), test["patient"].to_numpy()
    ci = metric_ci(y, pred.astype(np.float64), pats, "balanced_accuracy", n_boot=n_boot, seed=seed)
    return {"balanced_accuracy": ci["value"], "lo": ci["lo"], "hi": ci["hi"], "n_train": len(train), "n_test": len(test),
            "n_test_patients": ci["n_patients"], "_pred": (y, pred.astype(np.float64), pats)}


def measure_colour_leak(index: pd.DataFrame, *, methods: Sequence[str] = METHODS, per_patient: int | None = None,
                        seed: int = 0, test: float = 0.3, val: float = 0.15, reference: str | None = None,
                        thumb_side: int = THUMB_SIDE, n_boot: int = N_BOOT,
                        progress: Progress | None = None) -> ColourLeak:
    """The colour-only 1-NN balanced accuracy under an image-level and a patient-level split
    (``make_split(..., seed, test, val)``, all magnifications; the classifier trains on the train
    part), for each stain ``method`` (``none``, ``reinhard``, ``macenko``), on ``per_patient``
    images of each patient (:func:`pick_images`; None: every image).

    ``reference``: the stain reference (default: :func:`dala.data.stain.default_reference` of the
    patient-level split's training images, what a training run would pick). ``progress(done,
    total)`` is called as images are read and normalised (the slow part). Bad input (no index, a
    single patient of a class, a split without both classes) is a :class:`DataError` saying what
    to change; a reference that cannot anchor a normalisation is a ``StainReferenceError``."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise DataError(f"stain method(s) {unknown or list(methods)} unknown: use some of {', '.join(METHODS)}.")
    if isinstance(thumb_side, bool) or not isinstance(thumb_side, (int, np.integer)) or thumb_side < 32:
        raise DataError(f"thumb_side={thumb_side!r}: give at least 32 px (colour statistics need some pixels).")
    with _one_torch_thread():
        return _measure(index, tuple(methods), per_patient=per_patient, seed=int(seed), test=test, val=val,
                        reference=reference, thumb_side=int(thumb_side), n_boot=n_boot, progress=progress)


def _measure(index, methods, *, per_patient, seed, test, val, reference, thumb_side, n_boot, progress) -> ColourLeak:
    rows = pick_images(index, per_patient)
    _check_index(rows)
    n_norm = sum(m != "none" for m in methods)
    total = len(rows) * (1 + n_norm)
    thumbs, bad = load_thumbnails(rows["path"].tolist(), side=int(thumb_side), progress=progress, total=total)
    if bad:  # an image that cannot be decoded is left out, and counted
        rows = rows.drop(index=rows.index[bad]).reset_index(drop=True)
        _check_index(rows)
    if progress:
        progress(len(rows) + len(bad), total)
    parts = {by: _split_parts(rows, by, seed=seed, test=test, val=val) for by in SPLITS}
    ref = reference
    if ref is None and n_norm:
        from dala.data.stain import default_reference

        ref = default_reference(parts["patient"]["train"]["path"].tolist())
    records, gaps, fell_back = [], [], {}
    done = len(rows) + len(bad)
    for method in methods:
        normalizer = None
        if method != "none":
            from dala.data.stain import StainNormalizer

            normalizer = StainNormalizer(method, reference=ref, reference_name=f"reference {_name(str(ref))}")
        x, fell = normalised_features(thumbs, normalizer, progress=progress, start=done, total=total)
        if normalizer is not None:
            done += len(thumbs)
            fell_back[method] = fell
        feats = dict(zip(rows["image_id"], x))
        scored = {by: _score(feats, parts[by], n_boot=n_boot, seed=seed) for by in SPLITS}
        for by in SPLITS:
            records.append({"method": method, "split": by, **{k: v for k, v in scored[by].items() if k != "_pred"}})
        gaps.append(_gap(method, scored, n_boot=n_boot, seed=seed))
    if progress:
        progress(total, total)
    return ColourLeak(scores=pd.DataFrame(records), gaps=pd.DataFrame(gaps), n_images=len(rows),
                      n_images_total=len(index), n_patients=int(rows["patient"].nunique()), per_patient=per_patient,
                      reference=str(ref or ""), synthetic=_is_synthetic(index), seed=int(seed),
                      thumb_side=int(thumb_side), fell_back=fell_back, unreadable=len(bad))


def _gap(method: str, scored: dict, *, n_boot: int, seed: int) -> dict:
    """Image-level minus patient-level score, with a bootstrap interval (the two test sets are
    different patients' images: resampled independently, ``dala.stats.difference_ci``)."""
    from dala.stats import difference_ci

    d = difference_ci(scored["image"]["_pred"], scored["patient"]["_pred"], paired=False, metric="balanced_accuracy",
                      n_boot=n_boot, seed=seed)
    return {"method": method, "image-level": d["a"], "patient-level": d["b"], "gap": d["difference"],
            "gap_lo": d["lo"], "gap_hi": d["hi"]}


def _is_synthetic(index: pd.DataFrame) -> bool:
    return index.attrs.get("source") == "synthetic" or ("source" in index and (index["source"] == "synthetic").any())


# ----------------------------------------------------------------------------- what it shows
def colour_leak_reading(leak: ColourLeak) -> str:
    """One line saying what the numbers on screen show, for this data (synthetic or real)."""
    g = {m: leak.gap(m) for m in leak.gaps["method"]}
    lead = ("SYNTHETIC data, where every patient has its own stain signature by construction: "
            if leak.synthetic else
            "Real data: the gap measures how much colour alone (stain, slide, scanner) identifies a patient here: ")
    parts = [f"{METHOD_LABELS[m]} {leak.score(m, 'image'):.2f} (image-level) vs {leak.score(m, 'patient'):.2f} "
             f"(patient-level), gap {g[m]:+.2f}" for m in g]
    text = lead + "colour-only 1-NN balanced accuracy " + "; ".join(parts) + "."
    if "none" in g and len(g) > 1:
        after = {m: v for m, v in g.items() if m != "none"}
        best = min(after, key=after.get)
        if g["none"] < 0.05:
            text += " Colour alone hardly leaks the patient here, with or without normalisation."
        elif after[best] <= 0.05:
            text += f" {METHOD_LABELS[best]} takes the colour leak away."
        elif after[best] < g["none"] - 0.05:
            text += (f" Normalisation shrinks the gap ({METHOD_LABELS[best]} most) but does not remove it: colour "
                     "still carries some of the patient.")
        else:
            text += " Normalisation does not shrink the gap here: the leak is not in what it equalises."
    few = int(leak.scores["n_test_patients"].min())
    if few < 10:  # a handful of patients: the point estimates above can move a lot
        text += f" Only {few} test patients in the patient-level split: the intervals are wide, read the whiskers."
    return text


def colour_leak_figure(leak: ColourLeak, *, title: str | None = None) -> "go.Figure":
    """Grouped bars: one group per stain method, image-level vs patient-level split, with the
    95 % patient-bootstrap interval of each score; a dashed line at chance (0.5)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    s = leak.scores
    for by in SPLITS:
        sub = s[s["split"] == by]
        if sub.empty:
            continue
        y = sub["balanced_accuracy"].to_numpy(dtype=float)
        fig.add_bar(x=[METHOD_LABELS[m] for m in sub["method"]], y=y.tolist(), name=SPLIT_LABELS[by],
                    marker_color=SPLIT_COLOURS[by], text=[f"{v:.2f}" for v in y], textposition="inside",
                    insidetextanchor="start",  # at the foot of the bar, clear of the interval whisker
                    error_y=dict(type="data", symmetric=False, array=(sub["hi"].to_numpy(dtype=float) - y).tolist(),
                                 arrayminus=(y - sub["lo"].to_numpy(dtype=float)).tolist(), color="#555"),
                    customdata=np.stack([sub["n_train"], sub["n_test"], sub["n_test_patients"]], 1).tolist(),
                    hovertemplate="%{x}: %{y:.3f}<br>train %{customdata[0]} images, test %{customdata[1]} images "
                                  "of %{customdata[2]} patients<extra>" + by + "-level split</extra>")
    fig.add_hline(y=0.5, line=dict(color="#999", dash="dash"), annotation_text="chance", annotation_position="bottom right")
    tag = " (SYNTHETIC)" if leak.synthetic else ""
    fig.update_layout(
        title=dict(text=title or f"Colour-only 1-NN, balanced accuracy on the test part (measured){tag}", x=0,
                   xanchor="left"),
        barmode="group", yaxis=dict(range=[0, 1.1], title="balanced accuracy (0.5 = chance)"),
        xaxis=dict(title="stain normalisation"), margin=dict(l=40, r=20, t=80, b=40),
        legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    return fig


def table(leak: ColourLeak) -> pd.DataFrame:
    """The wide table a notebook prints: one row per method, both scores and the gap."""
    t = leak.gaps.rename(columns={"method": "stain normalisation", "image-level": "image-level split",
                                  "patient-level": "patient-level split", "gap": "gap (image - patient)",
                                  "gap_lo": "gap 95% lo", "gap_hi": "gap 95% hi"})
    return t.set_index("stain normalisation")


__all__ = ["METHODS", "QUICK_PER_PATIENT", "SPLITS", "THUMB_SIDE", "ColourLeak", "colour_features", "colour_leak_figure",
           "colour_leak_reading", "load_thumbnails", "measure_colour_leak", "normalised_features", "pick_images", "table"]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dala.data.stain_lesson [DATA_ROOT] [--per-patient N] [--seed S]``: the lesson's
    table, printed (DATA_ROOT: default the synthetic default)."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m dala.data.stain_lesson", description=__doc__.split("\n")[0])
    ap.add_argument("data_root", nargs="?", default=None, help="dataset folder (default: the synthetic default)")
    ap.add_argument("--per-patient", type=int, default=None, help="at most N images per patient (default: every image)")
    ap.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    args = ap.parse_args(argv)
    from dala.data import load_index, resolve_dataset

    try:
        leak = measure_colour_leak(load_index(resolve_dataset(args.data_root)), per_patient=args.per_patient,
                                   seed=args.seed)
    except DalaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table(leak).round(3))
        print(leak.scores.round(3).to_string(index=False))
    print(leak.describe())
    print(colour_leak_reading(leak))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
