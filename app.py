"""DALA Lab: the Streamlit entry point (``streamlit run app.py``).

Only the frame: page config, the page list, the shared sidebar (``pages/_sidebar.py``) and the
chosen page, run so that no unexpected error ever shows a traceback (``pages/_common.run_page``).
The pages are thin; the work is in the ``dala`` package.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))  # `dala` and `pages._common` from any cwd

from pages import _common as ui  # noqa: E402
from pages import _sidebar as sidebar  # noqa: E402

st.set_page_config(page_title="DALA Lab", page_icon=str(ROOT / "static" / "favicon.png"), layout="wide")

pages = [
    st.Page("pages/home.py", title="Overview", icon=":material/home:", default=True),
    st.Page("pages/explore.py", title="Explore", icon=":material/query_stats:"),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("pages/lab.py", title="Imbalance Lab", icon=":material/balance:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("pages/explain.py", title="Explain", icon=":material/visibility:"),
]
nav = st.navigation(pages)
sidebar.draw()
ui.run_page(nav)
