"""UI glue shared by the page scripts: the cached dataset index, error boxes, honest labels.

Not a page (``st.navigation`` in ``app.py`` lists the pages explicitly). Only Streamlit plumbing
lives here - caching, session state, widgets that several pages show; anything a notebook or the
CLI would also need is in ``dala`` (``dala.plots`` for figures).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
from pathlib import Path

import streamlit as st

from dala.errors import DalaError

ROOT_KEY = "dala_data_root"        # resolved dataset folder (str) chosen in the sidebar
ROOT_ERROR_KEY = "dala_data_error"  # message when the chosen folder cannot be used
SYNTHETIC_BADGE = ":orange-badge[SYNTHETIC]"
SYNTHETIC_NOTE = ("SYNTHETIC data: generated BreakHis-like images for teaching (dala.data.synth), "
                  "not real tissue. Numbers measured on it say nothing about real BreakHis.")


_frame = threading.local()  # per script-run thread: is app.py's frame around this page right now?
log = logging.getLogger("dala.app")

UNEXPECTED_MESSAGE = ("Something went wrong on this page (an unexpected {kind}, reference `{ref}`). Your runs and "
                      "data are safe. Reload the page or pick another page; if it happens again, tell the teacher "
                      "the reference (the details are in the server log).")


def require_entrypoint() -> None:
    """Make sure ``app.py`` (sidebar, dataset, navigation) runs around this page.

    Streamlit keeps a pre-``st.navigation`` mode for apps with a ``pages/`` folder (MPA v1): until
    the entry point has called ``st.navigation`` once in this server process, a visit straight to
    ``/train`` runs ``pages/train.py`` alone (no sidebar, no dataset); AppTest resets to that mode
    before every run. Streamlit offers no option to turn that mode off other than renaming the
    folder (its own advice; the product keeps ``pages/``). So each page asks whether app.py's
    frame is around it *in this script run* (a thread-local set by :func:`run_page`, nothing
    process-wide: ten first visitors at once each get the frame) and, if not, runs ``app.py`` in
    its place in this same run (a rerun would drop the click that caused it), then stops.
    """
    if getattr(_frame, "depth", 0) > 0:
        return
    main = Path(__file__).resolve().parents[1] / "app.py"
    exec(compile(main.read_text(encoding="utf-8"), str(main), "exec"),  # noqa: S102 - our own entry point
         {"__name__": "__main__", "__file__": str(main)})
    st.stop()


@contextlib.contextmanager
def _in_frame():
    _frame.depth = getattr(_frame, "depth", 0) + 1
    try:
        yield
    finally:
        _frame.depth -= 1


def run_page(nav) -> None:
    """Run the page ``st.navigation`` chose, inside app.py's frame. An unexpected error becomes a
    short message with what to do (and a reference); the traceback goes to the server log. Streamlit's
    own stop/rerun signals are not errors (BaseException, not caught)."""
    with _in_frame():
        try:
            nav.run()
        except Exception as exc:  # noqa: BLE001 - the last line of defence: no traceback on a page
            show_unexpected(exc, where=getattr(nav, "title", "") or "page")


def guarded(fn):
    """Decorator for a fragment body (``@st.fragment(run_every=...)`` reruns run outside
    :func:`run_page`): an unexpected error shows the same short message instead of a traceback.
    Use as ``@st.fragment(run_every=2)`` over ``@ui.guarded``."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - StopException/RerunException are BaseException: they pass
            show_unexpected(exc, where=getattr(fn, "__name__", "fragment"))
            return None

    return wrapper


def show_unexpected(exc: BaseException, *, where: str = "page") -> str:
    """Log ``exc`` with its traceback and show the short message; returns the reference."""
    ref = secrets.token_hex(4)
    log.error("unexpected error on %s (reference %s)", where, ref, exc_info=exc)
    st.error(UNEXPECTED_MESSAGE.format(kind=type(exc).__name__, ref=ref), icon=":material/error:")
    return ref


def set_dataset(root: str | os.PathLike | None, *, error: str | None = None) -> None:
    """The sidebar's answer for the pages: a dataset root, or the message why there is none."""
    st.session_state[ROOT_KEY] = str(root) if root and not error else None
    st.session_state[ROOT_ERROR_KEY] = error or None


def clear_index_cache() -> None:
    """Forget every cached dataset index (the sidebar's "Rescan folder")."""
    _load_index.clear()


def dataset_stamp(root: str) -> float:
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
    return _load_index(str(root), dataset_stamp(str(root)))


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
        show_unexpected(exc, where=what or "page")


def shared_runs_root() -> Path:
    """The server's runs folder (``$DALA_RUNS``): where the one-heavy-run limit is counted."""
    from dala.paths import runs_dir

    return Path(runs_dir()).resolve()


TOKEN_KEY = "_dala_token"      # this session's browser secret (never shown, never in the URL)
TEACHER_KEY = "_dala_teacher"  # teacher mode unlocked in this tab
_COOKIE_SET_KEY = "_dala_cookie_set"


def _login_subject() -> tuple[str, str] | None:
    """(subject, e-mail) of a real login where Streamlit OIDC (``st.login``) is configured and the
    visitor signed in; None otherwise."""
    try:
        user = st.user
        if not user.get("is_logged_in"):
            return None
        subject = str(user.get("sub") or user.get("email") or "")
        return (subject, str(user.get("email") or "")) if subject else None
    except Exception:  # no auth configured, or an older client: no login
        return None


def _browser_token() -> str:
    """This browser's secret: kept in session state for the session, and in a cookie (set here by
    a few lines of JavaScript, read back by ``st.context.cookies`` on the next visit) so a refresh
    or a new tab is the same person. Never in the URL."""
    from dala.identity import TOKEN_COOKIE, TOKEN_MAX_AGE_S, new_token, valid_token

    token = st.session_state.get(TOKEN_KEY)
    if not valid_token(token):
        try:
            cookie = (st.context.cookies or {}).get(TOKEN_COOKIE)
        except Exception:  # no browser context (bare mode)
            cookie = None
        token = cookie if valid_token(cookie) else new_token()
        st.session_state[TOKEN_KEY] = token
        try:
            known = (st.context.cookies or {}).get(TOKEN_COOKIE) == token
        except Exception:
            known = False
        st.session_state[_COOKIE_SET_KEY] = known
    if not st.session_state.get(_COOKIE_SET_KEY):
        # Secure + Partitioned over https (a Space runs inside huggingface.co's page: a third-party
        # frame); Lax over plain http (a laptop, a class server).
        st.sidebar.html(f"""<script>
(function() {{
  var https = window.location.protocol === "https:";
  document.cookie = "{TOKEN_COOKIE}={token}; Path=/; Max-Age={TOKEN_MAX_AGE_S}; " +
    (https ? "SameSite=None; Secure; Partitioned" : "SameSite=Lax");
}})();
</script>""", unsafe_allow_javascript=True, width="content")
        st.session_state[_COOKIE_SET_KEY] = True
    return token


def identity():
    """Who this browser (or login) is: a :class:`dala.identity.Identity` with ``owner_id``,
    ``is_teacher``, ``can_control(run)``, ``can_see(run)``, ``owner_of(run)``."""
    from dala.hosting import hosted
    from dala.identity import Identity, owner_id, teacher_emails

    login = _login_subject()
    if login:
        subject, email = login
        return Identity(owner_id(subject, kind="login"), is_teacher=email.lower() in teacher_emails(),
                        via_login=True, display_name=email or subject, hosted=hosted())
    return Identity(owner_id(_browser_token()), is_teacher=bool(st.session_state.get(TEACHER_KEY)),
                    hosted=hosted())


def set_teacher(on: bool, *, key: str | None = None) -> bool:
    """Turn teacher mode on for this tab (``key`` must be ``DALA_TEACHER_KEY``) or off."""
    from dala.identity import check_teacher_key

    ok = (not on) or check_teacher_key(key)
    if ok:
        st.session_state[TEACHER_KEY] = bool(on)
    return ok


def runs_root() -> Path:
    """Where this visitor's new runs go. Locally the shared runs folder (each run records its
    owner); hosted (``DALA_HOSTED=1``) a folder per visitor, named by the hash of its secret."""
    from dala.hosting import hosted, visitor_runs_root

    if not hosted():
        return shared_runs_root()
    return visitor_runs_root(identity().owner_id, runs_root=shared_runs_root()).resolve()


def visible_run_roots() -> list[Path]:
    """The folders whose runs this visitor may list: their own; hosted in teacher mode, every
    visitor's folder too."""
    from dala.hosting import hosted

    mine = runs_root()
    if hosted() and identity().is_teacher:
        shared = shared_runs_root()
        others = sorted(p for p in shared.iterdir() if p.is_dir() and p != mine) if shared.is_dir() else []
        return [mine, *others]
    return [mine]


def list_visible_runs() -> list:
    """Every run this visitor may see (``dala.train.list_runs`` over :func:`visible_run_roots`),
    newest first. Use ``identity().can_control(run)`` before showing Pause/Stop."""
    from dala.train import list_runs

    runs = [r for root in visible_run_roots() for r in list_runs(root)]
    return sorted(runs, key=lambda r: r.path.name, reverse=True)


def record_owner(run_dir: str | os.PathLike) -> None:
    """Mark a run this visitor just started as theirs (``owner.json``)."""
    from dala.identity import write_owner

    write_owner(run_dir, identity().owner_id)


def weight_label(weight_source: str | None) -> str:
    """Plain words for a checkpoint's ``weight_source`` (one wording: :func:`dala.plots.weight_label`)."""
    from dala.plots import weight_label as label

    return label(weight_source)


@st.cache_data(show_spinner=False, max_entries=512)
def thumbnail(path: str, size: int = 256):
    """A small RGB array of a dataset image (the page grid and the tiles strip)."""
    import numpy as np
    from PIL import Image

    from dala.data.images import load_rgb

    im = load_rgb(path)
    im.thumbnail((size, size), Image.BILINEAR)
    return np.asarray(im)
