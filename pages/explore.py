"""Explore: what is in the data, how imbalanced it is, and how a split can leak patients."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from dala import plots
from dala.data.breakhis import CLASSES, MAGNIFICATIONS, SUBTYPES
from dala.data.index import summary
from dala.data.masks import read_lesion_mask
from dala.data.stain_lesson import QUICK_PER_PATIENT, colour_leak_figure, colour_leak_reading, measure_colour_leak
from dala.data.stain_lesson import table as colour_leak_table
from dala.errors import DalaError
from dala.hosting import hosted
from pages import _common as ui

ui.require_entrypoint()

index = ui.get_index()
s = summary(index)
st.title("Explore the data")
st.markdown(f"**{s['images']:,} images** from **{s['patients']} patients**" + ui.data_title(index))
ui.synthetic_warning(index)
problems = index.attrs.get("problems") or []
if problems:
    with st.expander(f"{len(problems)} file(s) were skipped while indexing"):
        st.dataframe(pd.DataFrame(problems), hide_index=True)

t_counts, t_images, t_colour, t_split, t_aug, t_stain = st.tabs(
    ["Counts & imbalance", "Image browser", "Colour statistics", "Splits & leakage", "Augmentation",
     "Stain normalisation"])
STAIN_THUMB = 128  # px: a handful of small thumbnails keeps the tab fast


@st.cache_data(show_spinner="Measuring colours...", max_entries=8)
def _colour_stats(root: str, stamp: float, per_class: int):
    return plots.colour_statistics(ui.load_index_for(root), per_class=per_class)


@st.cache_data(show_spinner=False, max_entries=16)
def _splits(root: str, stamp: float, test: float, val: float, seed: int, mag):
    from dala.data.splits import make_split

    idx = ui.load_index_for(root)
    return (make_split(idx, by="patient", test=test, val=val, seed=seed, magnification=mag),
            make_split(idx, by="image", test=test, val=val, seed=seed, magnification=mag))


@st.cache_resource(max_entries=8, show_spinner="Fitting the stain normaliser to the reference...")
def _stain_normalizer(method: str, reference_path: str, stamp: float):
    """One fitted normaliser per method and reference (``stamp``: the dataset's, so a changed
    reference file refits). Not thread-safe: the lock below serialises its use across sessions."""
    import threading

    from dala.data.stain import StainNormalizer

    return StainNormalizer(method, reference=reference_path, reference_name=f"reference {Path(reference_path).name}"), \
        threading.Lock()


@st.cache_data(show_spinner=False, max_entries=16)
def _fingerprint(root: str, stamp: float) -> str:
    from dala.lab.bank import dataset_fingerprint  # every image's id, label, size and mtime

    return dataset_fingerprint(ui.load_index_for(root))


@st.cache_data(show_spinner=False, max_entries=8)
def _colour_leak(root: str, fingerprint: str, per_patient: int | None):
    """The colour-only 1-NN lesson (dala.data.stain_lesson), once per dataset and image cap for
    every session. The bar is made here, not outside: a cache hit replays this function's elements
    (a bar, a few updates, gone), and an element from outside would not be there to replay onto."""
    bar = st.progress(0.0, text="Reading and normalising the images...")
    shown = [-1]

    def progress(done: int, total: int) -> None:
        pct = int(100 * done / max(total, 1))
        if pct // 5 > shown[0]:  # at most ~20 updates: each one is replayed on a cache hit
            shown[0] = pct // 5
            bar.progress(min(pct, 100) / 100, text=f"Reading and normalising the images: {done}/{total} image steps")

    try:
        return measure_colour_leak(ui.load_index_for(root), per_patient=per_patient, progress=progress)
    finally:  # a DataError is shown by the caller: the bar must not stay behind it
        bar.empty()


def stain_failure_cases(image):
    """The failure cases the normaliser must detect, made from one (H, W, 3) uint8 thumbnail: a
    nearly white crop (mostly background) and a grey (colourless) copy."""
    import numpy as np

    a = np.asarray(image, dtype=np.float32)
    white = (0.06 * a + 0.94 * 255).round().astype(np.uint8)  # (H, W, 3): a field that is almost all glass
    grey = np.repeat(a.mean(axis=2, keepdims=True), 3, axis=2).round().astype(np.uint8)
    return [(white, "nearly white crop (generated)"), (grey, "grey copy (generated)")]


def patient_balance_caption(idx) -> str:
    """What the per-patient chart shows, measured on this dataset (not a claim about BreakHis)."""
    per = idx.groupby("patient").size()
    lo, hi = int(per.min()), int(per.max())
    if hi <= 1.25 * lo:
        return (f"Here every patient contributes about the same number of images ({lo}-{hi} each)"
                + (": the synthetic generator makes them equal. " if ui.is_synthetic(idx) else ". ")
                + "In real BreakHis some patients contribute many more images than others, "
                  "and a model can learn *patients* rather than disease. See the Splits tab.")
    return (f"Patients contribute between {lo} and {hi} images each ({hi / max(lo, 1):.0f}x): a model can learn "
            "*patients* rather than disease. See the Splits tab.")


root = index.attrs["root"]
stamp = ui.dataset_stamp(root)

# ----------------------------------------------------------------------------- counts
with t_counts:
    c = st.columns(4)
    c[0].metric("Benign fraction", f"{s['benign_fraction']:.1%}", help="BreakHis: 31.4% benign.")
    c[1].metric("Imbalance ratio", f"{s['imbalance_ratio']:.2f} : 1" if s["imbalance_ratio"] else "n/a",
                help="Malignant images per benign image. Always answering 'malignant' already scores "
                     "malignant/(all) accuracy - which is why the Train page reports GMean and balanced accuracy.")
    c[2].metric("Patients", s["patients"])
    c[3].metric("Slide folders", s["slides"])
    left, right = st.columns(2)
    left.plotly_chart(plots.class_counts_figure(index), key="cls")
    right.plotly_chart(plots.magnification_counts_figure(index), key="mag")
    left, right = st.columns(2)
    left.plotly_chart(plots.subtype_counts_figure(index), key="sub")
    right.plotly_chart(plots.patient_counts_figure(index), key="pat")
    st.caption(patient_balance_caption(index))

# ----------------------------------------------------------------------------- browser
with t_images:
    f = st.columns(4)
    classes = f[0].multiselect("Class", list(CLASSES), key="f_class")
    subtypes = f[1].multiselect("Subtype", list(SUBTYPES), key="f_sub",
                                format_func=lambda k: f"{k} ({SUBTYPES[k][1].replace('_', ' ')})")
    mags = f[2].multiselect("Magnification", list(MAGNIFICATIONS), key="f_mag", format_func=lambda m: f"{m}X")
    patients = f[3].multiselect("Patient", sorted(index["patient"].unique()), key="f_pat")
    view = index
    if classes:
        view = view[view["label"].isin(classes)]
    if subtypes:
        view = view[view["subtype"].isin(subtypes)]
    if mags:
        view = view[view["magnification"].isin(mags)]
    if patients:
        view = view[view["patient"].isin(patients)]
    per_page = 12
    n_pages = max(1, -(-len(view) // per_page))
    cols = st.columns([3, 1])
    cols[0].write(f"**{len(view)}** images match" + (" - all SYNTHETIC (generated, not real tissue)" if ui.is_synthetic(index) else ""))
    page = cols[1].number_input("Page", 1, n_pages, 1, key="f_page") if n_pages > 1 else 1
    show_mask = ui.is_synthetic(index) and st.toggle("Outline the lesion mask (synthetic malignant images)", key="f_mask")
    rows = view.iloc[(page - 1) * per_page: page * per_page]
    grid = []
    for i, r in enumerate(rows.itertuples()):
        if i % 4 == 0:
            grid = st.columns(4)
        try:
            img = ui.thumbnail(r.path)
            mask = read_lesion_mask(r.mask_path, size=(img.shape[1], img.shape[0])) if show_mask else None
            if mask is not None:  # benign rows have no mask: NaN in the index, not a path
                img = plots.outline_mask(img, mask)
        except DalaError as exc:
            grid[i % 4].error(str(exc))
            continue
        tag = "SYNTHETIC · " if r.source == "synthetic" else ""
        grid[i % 4].image(img, caption=f"{tag}{r.label} · {r.subtype} · {r.magnification}X · {r.patient}", width="stretch")

# ----------------------------------------------------------------------------- colour
with t_colour:
    st.markdown("Mean colour of each image by class. If the classes differed here, a network could score "
                "well by colour alone - a shortcut, not pathology.")
    per_class = st.slider("Images per class", 10, 200, 40, step=10, key="col_n")
    stats = _colour_stats(root, stamp, per_class)
    if len(stats):
        st.plotly_chart(plots.colour_figure(stats, title_suffix=plots.synthetic_tag(index)), key="colfig")
        st.dataframe(plots.colour_table(stats))
        if ui.is_synthetic(index):
            st.caption("The synthetic generator matches each image's colour statistics to per-patient targets, "
                       "so colour carries patient identity but no class signal; the class is in the morphology.")

# ----------------------------------------------------------------------------- splits
with t_split:
    st.markdown("A **patient-level** split keeps every patient's images on one side. An **image-level** split "
                "deals images at random: the same patient appears in training and test, and a model that "
                "recognises patients scores higher than it should.")
    c = st.columns(4)
    test = c[0].slider("Test fraction", 0.1, 0.5, 0.3, 0.05, key="sp_test")
    val = c[1].slider("Validation fraction", 0.0, 0.3, 0.15, 0.05, key="sp_val")
    seed = c[2].number_input("Seed", 0, 10_000, 0, key="sp_seed")
    mag = c[3].selectbox("Magnification", [None, *MAGNIFICATIONS], key="sp_mag",
                         format_func=lambda m: "all" if m is None else f"{m}X")
    try:
        by_patient, by_image = _splits(root, stamp, test, val, int(seed), mag)
    except DalaError as exc:
        ui.show_error(exc)
    else:
        n_pat = index["patient"].nunique() if mag is None else index.loc[index["magnification"] == mag, "patient"].nunique()
        m1, m2 = st.columns(2)
        m1.metric("Leaking patients, patient-level split", len(by_patient.leaking_patients()))
        m2.metric("Leaking patients, image-level split", f"{len(by_image.leaking_patients())} of {n_pat}",
                  help="Split.leaking_patients(): patients whose images sit in more than one part.")
        left, right = st.columns(2)
        with left:
            st.markdown("**Patient-level split**")
            st.dataframe(plots.split_table(by_patient, index))
            st.plotly_chart(plots.split_patients_figure(by_patient, index), key="sp_p")
        with right:
            st.markdown("**Image-level split** (leaks)")
            st.dataframe(plots.split_table(by_image, index))
            st.plotly_chart(plots.split_patients_figure(by_image, index), key="sp_i")
        st.caption(f"Grouping key: {by_patient.to_dict()['group_key']}")

# ----------------------------------------------------------------------------- augmentation
with t_aug:
    st.markdown("Training sees each image flipped and rotated (tissue has no up or down) with mild colour "
                "jitter standing in for stain variation. These are draws of the real training transform, "
                "de-normalised for display.")
    c = st.columns(3)
    pick = c[0].selectbox("Image", index["image_id"].tolist(), key="aug_img")
    size = c[1].select_slider("Input size", [64, 128, 224], value=224, key="aug_size")
    aug_seed = c[2].number_input("Seed", 0, 10_000, 0, key="aug_seed")
    row = index.loc[index["image_id"] == pick].iloc[0]
    from dala.data.images import load_rgb

    try:
        original = load_rgb(row["path"])
        views = plots.augmentation_views(original, n=7, size=int(size), seed=int(aug_seed))
        tiles = [(ui.thumbnail(row["path"]), "original" + (" (SYNTHETIC)" if row["source"] == "synthetic" else ""))]
        tiles += [(v, f"training view {i}") for i, v in enumerate(views, start=1)]
        for start in range(0, len(tiles), 4):  # one row of columns per four, so rows line up
            for col, (img, cap) in zip(st.columns(4), tiles[start:start + 4]):
                col.image(img, caption=cap, width="stretch")
    except DalaError as exc:
        ui.show_error(exc)


# ----------------------------------------------------------------------------- stain normalisation
with t_stain:
    st.markdown("Labs stain differently, so the same tissue comes out pinker or bluer. **Stain normalisation** makes "
                "every image look as if stained like one reference image: *Reinhard* matches the colour mean and "
                "spread (LAB), *Macenko* estimates the haematoxylin and eosin stains and re-stains with the "
                "reference's (torchstain, via `dala.data.stain`). An image it cannot handle is shown as it was, "
                "with the reason, never black.")
    c = st.columns([1, 3])
    stain_method = c[0].radio("Method", ["reinhard", "macenko"], key="stain_method",
                              format_func=lambda m: m.capitalize())
    ids = index["image_id"].tolist()
    benign = index.loc[index["label"] == "benign", "image_id"].tolist()
    ref_id = c[1].selectbox("Reference image", ids, index=ids.index(benign[0]) if benign else 0, key="stain_ref",
                            help="The default is the dataset's first benign image; pick a typical, well-stained field.")
    by_id = index.set_index("image_id")
    demo_ids = index.groupby("label").head(2)["image_id"].tolist()[:4]
    try:
        normalizer, lock = _stain_normalizer(stain_method, str(by_id.loc[ref_id, "path"]), stamp)
        tiles = [(ui.thumbnail(by_id.loc[i, "path"], size=STAIN_THUMB), f"{by_id.loc[i, 'label']}, {i}")
                 for i in demo_ids]
        tiles += stain_failure_cases(tiles[0][0])
        with lock:
            batch = normalizer([t for t, _ in tiles])  # each image on its own stain estimate
    except DalaError as exc:
        ui.show_error(exc, what="Stain normalisation")
    else:
        after = [img.permute(1, 2, 0).numpy() for img in batch.images]  # (H, W, 3) uint8 each
        r = st.columns(4)  # (captions here avoid " · ": the image browser's tiles are told apart by it)
        r[0].image(ui.thumbnail(by_id.loc[ref_id, "path"], size=STAIN_THUMB), width="stretch",
                   caption=f"reference: {ref_id}" + (" (SYNTHETIC)" if ui.is_synthetic(index) else ""))
        for start in range(0, len(tiles), 3):
            row = st.columns([1, 1, 1, 1, 1, 1])
            for k, ((img, cap), out, ok_, note) in enumerate(zip(tiles[start:start + 3], after[start:start + 3],
                                                                  batch.normalised[start:start + 3],
                                                                  batch.notes[start:start + 3])):
                row[2 * k].image(img, caption=f"before: {cap}", width="stretch")
                row[2 * k + 1].image(out, width="stretch",
                                     caption=f"after ({stain_method})" if ok_ else
                                     f"not normalised: {note} - shown un-normalised")
        failed = [f"{cap}: {note}" for (_, cap), note in zip(tiles, batch.notes) if note]
        if failed:
            st.warning("Detected and left as they were: " + "; ".join(failed), icon=":material/report:")
        st.caption(f"{sum(batch.normalised)} of {len(tiles)} images normalised to the reference; the last two are "
                   "generated failure cases (mostly background, no colour), which the normaliser must detect.")

    # ------------------------------------------------------------------------- the leak in colour alone
    st.subheader("The leak in colour alone")
    st.markdown("A **1-nearest-neighbour** classifier on six numbers per image (mean and spread of R, G, B; no "
                "morphology), with an image-level and a patient-level split, before and after each normalisation. "
                "Under the image-level split it can find another image of the test image's own patient by its "
                "colour and take that patient's label: the gap between the two bars is what colour alone leaks.")
    caps = [QUICK_PER_PATIENT] if hosted() else [QUICK_PER_PATIENT, None]  # hosted: bounded work for a shared CPU
    c = st.columns([3, 1])
    per_patient = c[0].radio("Images", caps, key="stain_leak_n", horizontal=True,
                             format_func=lambda n: f"up to {n} per patient (quick)" if n else
                             "every image (slower on a large dataset)")
    leak_key = (root, stamp, per_patient)
    if c[1].button("Measure the colour leak", key="stain_leak_go", type="primary"):
        st.session_state["stain_leak_for"] = leak_key
    if st.session_state.get("stain_leak_for") == leak_key:  # measured in this session: keep it on screen
        try:
            leak = _colour_leak(root, _fingerprint(root, stamp), per_patient)
        except DalaError as exc:
            ui.show_error(exc, what="The colour-leak lesson")
        else:
            st.plotly_chart(colour_leak_figure(leak), key="stain_leak_fig")
            st.markdown(colour_leak_reading(leak))
            st.caption(f"Measured on {leak.describe()}. Bars: balanced accuracy on each split's test part, with 95 % "
                       "bootstrap intervals over test patients (dala.data.stain_lesson).")
            with st.expander("The numbers"):
                st.dataframe(colour_leak_table(leak).round(3))
