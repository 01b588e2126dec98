"""UI glue shared by the page scripts: the cached dataset index, error boxes, honest labels.

Not a page (``st.navigation`` in ``app.py`` lists the pages explicitly). Only Streamlit plumbing
lives here - caching, session state, widgets that several pages show; anything a notebook or the
CLI would also need is in ``dala`` (``dala.plots`` for figures).
"""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from dala.errors import DalaError

ROOT_KEY = "dala_data_root"        # resolved dataset folder (str) chosen in the sidebar
ROOT_ERROR_KEY = "dala_data_error"  # message when the chosen folder cannot be used
SYNTHETIC_BADGE = ":orange-badge[SYNTHETIC]"
SYNTHETIC_NOTE = ("SYNTHETIC data: generated BreakHis-like images for teaching (dala.data.synth), "
                  "not real tissue. Numbers measured on it say nothing about real BreakHis.")


def require_entrypoint() -> None:
    """Make sure ``app.py`` (sidebar, dataset, navigation) runs around this page.

    Streamlit keeps a pre-``st.navigation`` mode for apps that have a ``pages/`` folder: until the
    entry point has called ``st.navigation`` once in this server process, a first visit straight
    to ``/train`` runs ``pages/train.py`` alone (no sidebar, no dataset, every file in ``pages/``
    listed as a page); AppTest resets to that mode before every run. The product layout fixes the
    folder name, so a page that finds itself run that way switches the server to
    ``st.navigation`` mode and runs ``app.py`` in its place, in this same script run (a rerun would
    drop the button click that caused it), then stops.
    """
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # a Streamlit without the legacy mode
        return
    if not getattr(PagesManager, "uses_pages_directory", False):
        return
    PagesManager.uses_pages_directory = False
    main = Path(__file__).resolve().parents[1] / "app.py"
    exec(compile(main.read_text(encoding="utf-8"), str(main), "exec"),  # noqa: S102 - our own entry point
         {"__name__": "__main__", "__file__": str(main)})
    st.stop()


def _stamp(root: str) -> float:
    """Changes when the dataset folder is regenerated or files are added at its top."""
    p = Path(root)
    stamps = [p.stat().st_mtime if p.exists() else 0.0]
    for marker in ("DONE", "SYNTHETIC"):
        if (p / marker).exists():
            stamps.append((p / marker).stat().st_mtime)
    return max(stamps)


@st.cache_data(show_spinner="Indexing the dataset...", max_entries=8)
def _load_index(root: str, stamp: float):
    from dala.data.index import load_index

    return load_index(root)


def load_index_for(root: str):
    return _load_index(str(root), _stamp(str(root)))


def get_index(*, required: bool = True):
    """The index of the dataset chosen in the sidebar. Shows the problem and stops the page when
    there is none (``required``), else returns None."""
    root = st.session_state.get(ROOT_KEY)
    err = st.session_state.get(ROOT_ERROR_KEY)
    if root and not err:
        try:
            return load_index_for(root)
        except DalaError as exc:
            err = str(exc)
    if required:
        st.error(err or "No dataset chosen: pick one in the sidebar.")
        st.stop()
    return None


def is_synthetic(index) -> bool:
    return index is not None and index.attrs.get("source") == "synthetic"


def data_title(index) -> str:
    """"SYNTHETIC" badge text for headers."""
    return f" {SYNTHETIC_BADGE}" if is_synthetic(index) else " :green-badge[real data]"


def synthetic_warning(index) -> None:
    if is_synthetic(index):
        st.caption(f"{SYNTHETIC_BADGE} {SYNTHETIC_NOTE}")


def show_error(exc: BaseException, *, what: str = "") -> None:
    """A DalaError is the user's to fix: show its message. Anything else is ours: show it briefly
    with its type, never a crash of the whole page."""
    prefix = f"{what}: " if what else ""
    if isinstance(exc, DalaError):
        st.error(prefix + str(exc))
    else:
        st.error(f"{prefix}unexpected {type(exc).__name__}: {exc}")


def shared_runs_root() -> Path:
    """The server's runs folder (``$DALA_RUNS``): where the one-heavy-run limit is counted."""
    from dala.paths import runs_dir

    return Path(runs_dir()).resolve()


def runs_root() -> Path:
    """This visitor's runs folder. Locally the shared runs folder; hosted (``DALA_HOSTED=1``) a
    folder per visitor, whose id rides in the URL (``?visitor=...``) so a refresh keeps it."""
    from dala.hosting import hosted, new_visitor_id, visitor_runs_root

    if not hosted():
        return shared_runs_root()
    vid = st.query_params.get("visitor")
    if not vid:
        vid = new_visitor_id()
        st.query_params["visitor"] = vid
    return visitor_runs_root(vid, runs_root=shared_runs_root()).resolve()


def weight_label(weight_source: str | None) -> str:
    """Plain words for a checkpoint's ``weight_source``."""
    ws = (weight_source or "unknown").strip()
    if ws.startswith("random"):
        return f"random weights (not pretrained) - {ws}"
    return f"pretrained start: {ws}"


@st.cache_data(show_spinner=False, max_entries=512)
def thumbnail(path: str, size: int = 256):
    """A small RGB array of a dataset image (the page grid and the tiles strip)."""
    import numpy as np
    from PIL import Image

    from dala.data.images import load_rgb

    im = load_rgb(path)
    im.thumbnail((size, size), Image.BILINEAR)
    return np.asarray(im)


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}
