"""Overview: what the lab is, the dataset in one glance, where to go next."""

from __future__ import annotations

import streamlit as st

from dala import plots
from dala.data.index import summary
from pages import _common as ui

ui.require_entrypoint()

st.title("DALA Lab")
st.markdown(
    "A teaching lab for deep learning on breast-cancer histopathology: **DALAResNet50** "
    "(arXiv 2308.13150) and the models it was compared with, on **BreakHis**-style data "
    "(benign vs malignant, four magnifications)."
)

index = ui.get_index()
s = summary(index)
st.subheader("Dataset" + ui.data_title(index))
ui.synthetic_warning(index)
c = st.columns(5)
c[0].metric("Images", f"{s['images']:,}")
c[1].metric("Patients", s["patients"], help="Grouping key: patient = <year>-<numeric stem of slide id>.")
c[2].metric("Benign", s["by_class"]["benign"])
c[3].metric("Malignant", s["by_class"]["malignant"])
c[4].metric("Malignant : benign", f"{s['imbalance_ratio']:.2f}:1" if s["imbalance_ratio"] else "n/a",
            help="BreakHis itself is about 2.2:1 (31% benign).")
left, right = st.columns(2)
left.plotly_chart(plots.class_counts_figure(index), key="home_class")
right.plotly_chart(plots.magnification_counts_figure(index), key="home_mag")

st.subheader("The pages")
st.markdown(
    "- **Explore**: counts and imbalance, an image browser, colour statistics, patient-level vs "
    "image-level splits (and the patients that leak), augmentation.\n"
    "- **Train**: start a run (it trains in its own process), watch the curves and validation tiles "
    "grow live, pause or stop it; one heavy run at a time, others queue.\n"
    "- **Compare**: every metric of finished runs side by side, ROC/PR, confusion matrices, the "
    "paper's *reported* numbers beside our *measured* ones, and the leakage lesson.\n"
    "- **Explain**: upload an image or pick one, choose a checkpoint and see where the network looks "
    "(Grad-CAM family and DT Grad-CAM)."
)
st.page_link("pages/explore.py", label="Start exploring the data", icon=":material/arrow_forward:")
