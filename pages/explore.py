"""Explore: what is in the data, how imbalanced it is, and how a split can leak patients."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dala import plots
from dala.data.breakhis import CLASSES, MAGNIFICATIONS, SUBTYPES
from dala.data.index import summary
from dala.errors import DalaError
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

t_counts, t_images, t_colour, t_split, t_aug = st.tabs(
    ["Counts & imbalance", "Image browser", "Colour statistics", "Splits & leakage", "Augmentation"])


@st.cache_data(show_spinner="Measuring colours...", max_entries=8)
def _colour_stats(root: str, stamp: float, per_class: int):
    return plots.colour_statistics(ui.load_index_for(root), per_class=per_class)


@st.cache_data(show_spinner=False, max_entries=16)
def _splits(root: str, stamp: float, test: float, val: float, seed: int, mag):
    from dala.data.splits import make_split

    idx = ui.load_index_for(root)
    return (make_split(idx, by="patient", test=test, val=val, seed=seed, magnification=mag),
            make_split(idx, by="image", test=test, val=val, seed=seed, magnification=mag))


root = index.attrs["root"]
stamp = ui._stamp(root)

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
    st.caption("In BreakHis some patients contribute many more images than others: a model can learn "
               "*patients* rather than disease. See the Splits tab.")

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
            if show_mask and r.mask_path:
                img = plots.outline_mask(img, ui.thumbnail(r.mask_path))
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
