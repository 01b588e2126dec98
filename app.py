"""DALA Lab: the Streamlit entry point (``streamlit run app.py``).

Draws the sidebar every page shares (dataset source, compute device, pretrained-weight status),
makes sure a dataset exists (the SYNTHETIC default is generated on first use, with a progress bar),
then runs the page chosen in the navigation. The pages are thin; the work is in the ``dala`` package.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `dala` and `pages._common` from any cwd

from dala.errors import DalaError  # noqa: E402
from pages import _common as ui  # noqa: E402

st.set_page_config(page_title="DALA Lab", page_icon=":material/biotech:", layout="wide")

SYNTH = "Synthetic default (SYNTHETIC)"
LOCAL = "Local folder"
HUB = "Hugging Face Hub dataset"


@st.cache_resource(show_spinner=False)
def device_info() -> tuple[str, str]:
    """(short name, description) of the best device torch sees here."""
    import torch

    if torch.cuda.is_available():
        return "cuda", f"cuda: {torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} GPU)"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps", "mps: Apple GPU"
    return "cpu", f"cpu: {torch.get_num_threads()} threads (no GPU: training is slow, use tiny_cnn or quick mode)"


@st.cache_data(ttl=120, show_spinner=False)
def weights_status() -> tuple[bool, str]:
    """Whether models start from pretrained ImageNet weights here (cached file, or online)."""
    try:
        import torchvision.models as tvm

        from dala.models.weights import availability, can_reach, offline

        if availability("torchvision", tvm.ResNet50_Weights.IMAGENET1K_V2) == "cached":
            return True, "ImageNet weights cached: ResNet-based models start pretrained."
        if not offline() and can_reach("download.pytorch.org"):
            return True, "ImageNet weights download on first use (online)."
        return False, ("Offline and not cached: models start from **random weights (not pretrained)**; "
                       "accuracy will be far below the paper's. tiny_cnn never uses pretrained weights.")
    except Exception as exc:  # the sidebar must never break a page
        return False, f"Could not tell ({type(exc).__name__}): assume random weights."


@st.cache_data(show_spinner="Fetching the dataset from the Hub...", ttl=3600)
def _fetch_hub_dataset(repo_id: str, revision: str) -> str:
    from dala.hub import fetch_dataset

    return str(fetch_dataset(repo_id, revision=revision))


def sidebar_dataset() -> None:
    """Dataset source widgets; resolves the folder into session state for the pages."""
    env_root = os.environ.get("DALA_DATA_ROOT", "").strip()
    st.sidebar.header("Dataset")
    source = st.sidebar.radio("Source", [SYNTH, LOCAL, HUB], index=1 if env_root else 0, key="data_source",
                              help="The app starts on a generated BreakHis-like dataset (clearly SYNTHETIC). "
                                   "Point it at a real BreakHis copy (official or Kaggle layout) to use real data.")
    st.session_state[ui.ROOT_ERROR_KEY] = None
    if source == SYNTH:
        st.sidebar.caption("Generated images in the BreakHis layout: a teaching stand-in, **not real tissue**.")
        bar = None

        def progress(done: int, total: int) -> None:
            nonlocal bar
            text = f"Generating the SYNTHETIC default dataset (first use only): {done}/{total} images"
            if bar is None:
                bar = st.progress(0.0, text=text)
            bar.progress(done / max(total, 1), text=text)

        try:
            from dala.data.synth import ensure_default_dataset

            root = ensure_default_dataset(progress=progress)
            st.session_state[ui.ROOT_KEY] = str(root)
        except Exception as exc:
            st.session_state[ui.ROOT_KEY] = None
            st.session_state[ui.ROOT_ERROR_KEY] = f"Could not generate the synthetic dataset: {exc}"
        if bar is not None:
            bar.empty()
    elif source == LOCAL:
        folder = st.sidebar.text_input("Dataset folder", value=env_root, key="data_folder",
                                       placeholder="/data/BreaKHis_v1",
                                       help="Folder holding BreaKHis_v1 (official or Kaggle layout) or a flat "
                                            "folder of BreakHis-named images.")
        if not folder.strip():
            st.session_state[ui.ROOT_KEY] = None
            st.session_state[ui.ROOT_ERROR_KEY] = "Type a dataset folder in the sidebar (or pick the synthetic default)."
        else:
            p = Path(folder.strip()).expanduser()
            st.session_state[ui.ROOT_KEY] = str(p)
            try:
                from dala.hosting import allowed_data_root

                allowed_data_root(p)  # a public hosted app does not read server folders
            except DalaError as exc:
                st.session_state[ui.ROOT_KEY] = None
                st.session_state[ui.ROOT_ERROR_KEY] = str(exc)
            if not st.session_state[ui.ROOT_ERROR_KEY] and not p.is_dir():
                st.session_state[ui.ROOT_ERROR_KEY] = (f"Dataset folder {str(p)!r} does not exist: type the folder "
                                                       "that holds BreaKHis_v1, or pick the synthetic default.")
    else:
        c1, c2 = st.sidebar.columns([3, 2])
        from dala.hub import default_dataset_id

        repo = c1.text_input("Hub dataset repo id", value=default_dataset_id() or "", placeholder="user/breakhis",
                             key="hub_dataset",
                             help="A Hugging Face Hub dataset repo holding a BreakHis tree or archives of one "
                                  "(extracted safely). Offline, only a cached copy can be used.")
        rev = c2.text_input("Revision", value="main", key="hub_dataset_rev")
        st.session_state[ui.ROOT_KEY] = None
        if not repo.strip():
            st.session_state[ui.ROOT_ERROR_KEY] = "Type a Hub dataset repo id in the sidebar (or pick another source)."
        else:
            try:
                root = _fetch_hub_dataset(repo.strip(), rev.strip() or "main")
                st.session_state[ui.ROOT_KEY] = str(root)
            except DalaError as exc:
                st.session_state[ui.ROOT_ERROR_KEY] = str(exc)

    root, err = st.session_state.get(ui.ROOT_KEY), st.session_state.get(ui.ROOT_ERROR_KEY)
    if err:
        st.sidebar.error(err)
    elif root:
        try:
            index = ui.load_index_for(root)
            tag = "SYNTHETIC" if ui.is_synthetic(index) else "real"
            st.sidebar.caption(f"**{len(index)} images**, {index['patient'].nunique()} patients ({tag})  \n`{root}`")
            problems = index.attrs.get("problems") or []
            if problems:
                st.sidebar.warning(f"{len(problems)} file(s) skipped (see Explore).")
        except DalaError as exc:
            st.session_state[ui.ROOT_ERROR_KEY] = str(exc)
            st.sidebar.error(str(exc))
        if st.sidebar.button("Rescan folder", help="Re-read the folder (after adding or removing images)."):
            ui._load_index.clear()
            st.rerun()


def sidebar_machine() -> None:
    st.sidebar.header("Machine")
    _, desc = device_info()
    st.sidebar.caption(f"Compute device: **{desc}**")
    ok, text = weights_status()
    (st.sidebar.caption if ok else st.sidebar.warning)(text)
    st.sidebar.caption(f"Runs folder: `{ui.runs_root()}`")


pages = [
    st.Page("pages/home.py", title="Overview", icon=":material/home:", default=True),
    st.Page("pages/explore.py", title="Explore", icon=":material/query_stats:"),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("pages/explain.py", title="Explain", icon=":material/visibility:"),
]
nav = st.navigation(pages)
sidebar_dataset()
sidebar_machine()
nav.run()
