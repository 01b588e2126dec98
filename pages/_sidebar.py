"""The sidebar every page shares: dataset source, identity (teacher key), compute device and
pretrained-weight status. Not a page (``app.py`` lists the pages); the UI-free half, a source ->
a dataset root or a clear error, is :func:`dala.sources.resolve_source`.
"""

from __future__ import annotations

import streamlit as st

from dala import sources
from dala.errors import DalaError
from pages import _common as ui

SYNTH = "Synthetic default (SYNTHETIC)"
LOCAL = "Local folder"
HUB = "Hugging Face Hub dataset"
KIND_OF = {SYNTH: sources.SYNTHETIC, LOCAL: sources.LOCAL, HUB: sources.HUB}


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

        from dala.models.availability import availability
        from dala.net import can_reach, offline

        if availability("torchvision", tvm.ResNet50_Weights.IMAGENET1K_V2) == "cached":
            return True, "ImageNet weights cached: ResNet-based models start pretrained."
        if not offline() and can_reach("download.pytorch.org"):
            return True, "ImageNet weights download on first use (online)."
        return False, ("Offline and not cached: models start from **random weights (not pretrained)**; "
                       "accuracy will be far below the paper's. tiny_cnn never uses pretrained weights.")
    except Exception as exc:  # the sidebar must never break a page
        return False, f"Could not tell ({type(exc).__name__}): assume random weights."


@st.cache_data(show_spinner="Fetching the dataset from the Hub...", ttl=3600)
def _hub_root(repo_id: str, revision: str) -> str:
    return str(sources.resolve_source(sources.HUB, repo_id, revision=revision))


def _synthetic_root() -> str:
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        text = f"Generating the SYNTHETIC default dataset (first use only): {done}/{total} images"
        if bar is None:
            bar = st.progress(0.0, text=text)
        bar.progress(done / max(total, 1), text=text)

    try:
        return str(sources.resolve_source(sources.SYNTHETIC, progress=progress))
    finally:
        if bar is not None:
            bar.empty()


def dataset() -> None:
    """Dataset source widgets; resolves the folder into session state for the pages."""
    env_root = sources.default_local_root()
    st.sidebar.header("Dataset")
    choice = st.sidebar.radio("Source", [SYNTH, LOCAL, HUB], index=1 if env_root else 0, key="data_source",
                              help="The app starts on a generated BreakHis-like dataset (clearly SYNTHETIC). "
                                   "Point it at a real BreakHis copy (official or Kaggle layout) to use real data.")
    root = err = None
    try:
        if choice == SYNTH:
            st.sidebar.caption("Generated images in the BreakHis layout: a teaching stand-in, **not real tissue**.")
            root = _synthetic_root()
        elif choice == LOCAL:
            folder = st.sidebar.text_input("Dataset folder", value=env_root, key="data_folder",
                                           placeholder="/data/BreaKHis_v1",
                                           help="Folder holding BreaKHis_v1 (official or Kaggle layout) or a flat "
                                                "folder of BreakHis-named images.")
            root = str(sources.resolve_source(sources.LOCAL, folder))
        else:
            from dala.hub import default_dataset_id

            c1, c2 = st.sidebar.columns([3, 2])
            repo = c1.text_input("Hub dataset repo id", value=default_dataset_id() or "", placeholder="user/breakhis",
                                 key="hub_dataset",
                                 help="A Hugging Face Hub dataset repo holding a BreakHis tree or archives of one "
                                      "(extracted safely). Offline, only a cached copy can be used.")
            rev = c2.text_input("Revision", value="main", key="hub_dataset_rev")
            if not repo.strip():
                sources.resolve_source(sources.HUB, "")  # raises the "type a repo id" message
            root = _hub_root(repo.strip(), rev.strip() or "main")
    except DalaError as exc:
        root, err = None, str(exc)
    ui.set_dataset(root, error=err)

    if err:
        st.sidebar.error(err)
        return
    try:
        index = ui.load_index_for(root)
        tag = "SYNTHETIC" if ui.is_synthetic(index) else "real"
        st.sidebar.caption(f"**{len(index)} images**, {index['patient'].nunique()} patients ({tag})  \n`{root}`")
        problems = index.attrs.get("problems") or []
        if problems:
            st.sidebar.warning(f"{len(problems)} file(s) skipped (see Explore).")
    except DalaError as exc:
        ui.set_dataset(None, error=str(exc))
        st.sidebar.error(str(exc))
    if st.sidebar.button("Rescan folder", help="Re-read the folder (after adding or removing images)."):
        ui.clear_index_cache()
        st.rerun()


def identity() -> None:
    """Who this browser is: its own runs, others' read-only; the teacher key unlocks all runs."""
    who = ui.identity()
    st.sidebar.header("You")
    st.sidebar.caption(who.describe())
    if not who.teacher_key_configured or who.via_login:
        return
    with st.sidebar.expander("Teacher mode", expanded=False):
        if who.is_teacher:
            st.caption("Teacher mode is on for this browser tab: every run is listed, with its controls.")
            if st.button("Leave teacher mode", key="teacher_off"):
                ui.set_teacher(False)
                st.rerun()
        else:
            key = st.text_input("Teacher key", type="password", key="teacher_key",
                                help="The key the server was started with (DALA_TEACHER_KEY). Unlocks every "
                                     "student's runs for this tab.")
            if key:
                if ui.set_teacher(True, key=key):
                    st.rerun()
                st.error("That is not the teacher key.")


def machine() -> None:
    st.sidebar.header("Machine")
    _, desc = device_info()
    st.sidebar.caption(f"Compute device: **{desc}**")
    ok, text = weights_status()
    (st.sidebar.caption if ok else st.sidebar.warning)(text)
    st.sidebar.caption(f"Runs folder: `{ui.runs_root()}`")


def draw() -> None:
    """The whole sidebar, in order."""
    dataset()
    identity()
    machine()
