"""Hosted mode (``DALA_HOSTED=1``, set by the Dockerfile for Hugging Face Spaces): the policies a
public, shared, 2-vCPU server needs and a laptop does not. UI-free: the pages call these.

- Visitors may not read arbitrary server folders: data come from the built-in synthetic set or a
  Hub dataset (:func:`allowed_data_root`).
- One heavy training run at a time on a free CPU Space (:func:`max_concurrent_runs`,
  :func:`can_start_run`); ``DALA_MAX_RUNS`` overrides.
- Each visitor's runs live in their own folder (:func:`visitor_runs_root`), so nobody stops or
  reads another's run.
- A shared class leaderboard (:func:`submit_to_leaderboard`, :func:`read_leaderboard`): one JSON
  file under ``DALA_HOME``, written atomically under a file lock (several visitors may submit at
  the same moment). A Space's disk is wiped on restart, and the leaderboard with it.

Outside hosted mode every policy is permissive (a local user owns the machine).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from dala.errors import DalaError, RunError
from dala.io import atomic_write_json, read_json

LEADERBOARD_FILE = "leaderboard.json"
LEADERBOARD_MAX_ENTRIES = 500
LEADERBOARD_METRICS = ("accuracy", "balanced_accuracy", "gmean", "iba", "f1_macro", "mcc", "roc_auc",
                       "patient_accuracy")
_VISITOR_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


class HostedModeError(DalaError):
    """Something the hosted (public Space) policy does not allow, with what to do instead."""


def _truthy(value: str | None) -> bool:
    return str(value or "").strip().lower() in {"1", "true", "yes", "on"}


def hosted() -> bool:
    """True when running as a public hosted app (``DALA_HOSTED=1``)."""
    return _truthy(os.environ.get("DALA_HOSTED"))


# ----------------------------------------------------------------------------------------------
# data sources
# ----------------------------------------------------------------------------------------------

def allowed_data_roots() -> list[Path]:
    """Folders a hosted visitor's data may come from: the synthetic default, extracted Hub datasets
    and the Hub cache's dataset snapshots."""
    from dala.hub import hub_cache_dir, hub_datasets_dir
    from dala.paths import synthetic_default_dir

    return [synthetic_default_dir(), hub_datasets_dir(), hub_cache_dir()]


def allowed_data_root(path: str | os.PathLike | None) -> Path | None:
    """The data root to use, or :class:`HostedModeError` if hosted mode forbids it.

    ``None`` (the synthetic default) is always allowed and returned as ``None``. Locally any path is
    allowed. Hosted, only folders under :func:`allowed_data_roots` are (symlinks and ``..`` are
    resolved first, so they cannot be used to step outside).
    """
    if path is None or str(path).strip() == "":
        return None
    p = Path(path).expanduser()
    if not hosted():
        return p
    from dala.hub import hub_cache_dir

    real = p.resolve()
    hub_cache = hub_cache_dir().expanduser().resolve()
    for root in allowed_data_roots():
        base = root.expanduser().resolve()
        if real == base or base in real.parents:
            rel = real.relative_to(base).parts
            if base == hub_cache and not (rel and rel[0].startswith("datasets--")):
                continue  # in the Hub cache only dataset repos are data
            return real
    raise HostedModeError(
        f"this hosted app does not read server folders such as {str(path)!r}: use the built-in synthetic "
        "dataset or a Hugging Face Hub dataset (enter its repo id, e.g. owner/breakhis). To train on your own "
        "folder, run DALA Lab on your machine (`streamlit run app.py`)."
    )


# ----------------------------------------------------------------------------------------------
# training capacity
# ----------------------------------------------------------------------------------------------

def max_concurrent_runs() -> int | None:
    """How many training runs may be active at once: ``$DALA_MAX_RUNS`` if set (0 = no cap), else 1
    when hosted (a free CPU Space has 2 vCPU) and no cap (``None``) locally, where runs queue for the
    heavy slot anyway."""
    raw = os.environ.get("DALA_MAX_RUNS", "").strip()
    if raw:
        try:
            n = int(raw)
        except ValueError:
            raise HostedModeError(f"DALA_MAX_RUNS={raw!r} is not a whole number; set it to e.g. 1 (0 = no cap)") from None
        return None if n <= 0 else n
    return 1 if hosted() else None


@dataclass(frozen=True)
class RunAdmission:
    """The answer of :func:`can_start_run`: ``ok``, a sentence for the page, the active runs seen."""

    ok: bool
    reason: str
    active: tuple[str, ...] = ()
    limit: int | None = None

    def __bool__(self) -> bool:
        return self.ok


def active_runs(runs_root: str | os.PathLike) -> list[Path]:
    """Runs under ``runs_root`` (directly, or one level down in visitor folders) that are queued
    or running with a live process. A run whose process died is not counted."""
    from dala.train.folder import ACTIVE_STATES
    from dala.train.runs import pid_alive

    root = Path(runs_root)
    if not root.is_dir():
        return []
    candidates = []
    for child in root.iterdir():
        if not child.is_dir():
            continue
        if (child / "status.json").is_file():
            candidates.append(child)
        else:
            candidates.extend(g for g in child.iterdir() if g.is_dir() and (g / "status.json").is_file())
    out = []
    now = time.time()
    for run in candidates:
        st = read_json(run / "status.json", {}) or {}
        if st.get("state") not in ACTIVE_STATES:
            continue
        pid = st.get("pid")
        if pid_alive(pid) or (not pid and now - float(st.get("created", st.get("updated", 0)) or 0) < 60):
            out.append(run)  # no pid yet: launched a moment ago
    return sorted(out)


def can_start_run(runs_root: str | os.PathLike) -> RunAdmission:
    """May a new training run start now? ``runs_root`` is the shared root (all visitors' folders
    below it), so the cap holds for the whole server."""
    limit = max_concurrent_runs()
    active = active_runs(runs_root) if limit is not None else []
    names = tuple(p.name for p in active)
    if limit is None or len(active) < limit:
        return RunAdmission(True, "", names, limit)
    what = "a training run is" if len(active) == 1 else f"{len(active)} training runs are"
    return RunAdmission(False, f"{what} already using this shared server (limit {limit} at a time); "
                        "wait for it to finish and try again - or explore, compare and explain meanwhile.",
                        names, limit)


def check_can_start_run(runs_root: str | os.PathLike) -> None:
    """:func:`can_start_run`, raising :class:`HostedModeError` with its reason when refused."""
    admission = can_start_run(runs_root)
    if not admission:
        raise HostedModeError(admission.reason)


# ----------------------------------------------------------------------------------------------
# visitors
# ----------------------------------------------------------------------------------------------

def new_visitor_id() -> str:
    """A fresh random visitor id (keep it in the URL, ``st.query_params``, so it survives a refresh)."""
    return secrets.token_urlsafe(12).replace("-", "x").replace("_", "y")


def visitor_id(session_id: str) -> str:
    """A folder-safe id for ``session_id``: kept as is when it already is a safe token (an id from
    :func:`new_visitor_id`), otherwise a hash, so no visitor-chosen string ever becomes a path."""
    sid = str(session_id or "").strip()
    if not sid:
        raise HostedModeError("no visitor id: the page must pass its session or visitor id")
    if _VISITOR_RE.match(sid):
        return sid
    return hashlib.sha256(sid.encode("utf-8")).hexdigest()[:24]


def visitor_runs_root(session_id: str | None, *, runs_root: str | os.PathLike | None = None) -> Path:
    """Where this visitor's runs go: ``<runs_root>/<visitor-id>`` in hosted mode (created), the
    shared ``runs_root`` (``dala.paths.runs_dir()``) locally."""
    from dala.paths import runs_dir

    root = Path(runs_root) if runs_root else runs_dir()
    if not hosted():
        return root
    path = root / visitor_id(session_id or "")
    path.mkdir(parents=True, exist_ok=True)
    return path


# ----------------------------------------------------------------------------------------------
# leaderboard
# ----------------------------------------------------------------------------------------------

def leaderboard_path() -> Path:
    from dala.paths import dala_home

    return dala_home() / LEADERBOARD_FILE


@contextlib.contextmanager
def _locked(path: Path, *, timeout: float = 10.0) -> Iterator[None]:
    """An exclusive ``flock`` on ``<path>.lock`` (readers need none: the file is replaced atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a+") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise HostedModeError("the leaderboard is busy (another submission is being saved); "
                                          "try again in a moment") from None
                time.sleep(0.02)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def clean_nickname(nickname: str) -> str:
    """1-32 visible characters: letters, digits, space, ``. _ -`` (nothing a page could render as markup)."""
    nick = re.sub(r"[^\w .-]", "", str(nickname or ""), flags=re.UNICODE)
    nick = re.sub(r"\s+", " ", nick).strip()[:32].strip()
    if not nick:
        raise HostedModeError("choose a nickname (letters, digits, spaces, '.', '_' or '-') for the leaderboard")
    return nick


def leaderboard_entry(run_dir: str | os.PathLike, *, nickname: str) -> dict:
    """The leaderboard row for a finished run: headline test metrics, model, split mode, data source."""
    run = Path(run_dir)
    report = read_json(run / "report.json")
    if not isinstance(report, dict) or not isinstance(report.get("test"), dict):
        raise RunError(f"run {run.name} has no test report yet: let it finish before submitting it")
    config = read_json(run / "config.json", {}) or {}
    test = report["test"]
    metrics = {k: test.get(k) for k in LEADERBOARD_METRICS if k != "f1_macro"}
    metrics["f1_macro"] = (test.get("macro") or {}).get("f1")
    source = report.get("data_source") or "unknown"
    split = report.get("split") or {}
    run_key = hashlib.sha256(str(run.resolve()).encode("utf-8")).hexdigest()[:16]
    return {
        "id": run_key,
        "nickname": clean_nickname(nickname),
        "submitted": time.time(),
        "run": run.name,
        "model": report.get("model") or config.get("model"),
        "weight_source": report.get("weight_source"),
        "split_mode": split.get("by") or config.get("split_mode"),
        "split_sha256": split.get("sha256"),
        "magnification": config.get("magnification"),
        "imbalance": config.get("imbalance"),
        "mode": config.get("mode"),
        "epochs": config.get("epochs"),
        "data_source": source,
        "data_label": "synthetic (teaching stand-in, not real tissue)" if source == "synthetic" else
                      "BreakHis (real)" if source == "real" else source,
        "n_test": test.get("n"),
        "metrics": metrics,
    }


def read_leaderboard(*, sort_by: str = "gmean") -> list[dict]:
    """All entries, best ``sort_by`` (a test metric) first; an unreadable file reads as empty."""
    try:
        data = read_json(leaderboard_path(), {"entries": []}) or {}
    except (ValueError, OSError):
        return []
    entries = [e for e in data.get("entries", []) if isinstance(e, dict)]

    def key(e: dict):
        v = (e.get("metrics") or {}).get(sort_by)
        return (v is None, -(v if isinstance(v, (int, float)) else 0.0), e.get("submitted", 0))

    return sorted(entries, key=key)


def submit_to_leaderboard(run_dir: str | os.PathLike, *, nickname: str) -> dict:
    """Add (or replace: one row per run) ``run_dir``'s result on the shared leaderboard; returns the
    row. Safe against concurrent submitters (file lock + atomic replace)."""
    entry = leaderboard_entry(run_dir, nickname=nickname)
    path = leaderboard_path()
    with _locked(path):
        try:
            data = read_json(path, {"entries": []}) or {"entries": []}
        except ValueError:  # a damaged file (should not happen: writes are atomic) is started afresh
            data = {"entries": []}
        entries = [e for e in data.get("entries", []) if isinstance(e, dict) and e.get("id") != entry["id"]]
        entries.append(entry)
        if len(entries) > LEADERBOARD_MAX_ENTRIES:  # keep the best, drop the oldest weak ones
            entries = sorted(entries, key=lambda e: -((e.get("metrics") or {}).get("gmean") or 0.0))
            entries = entries[:LEADERBOARD_MAX_ENTRIES]
        atomic_write_json(path, {"format": "dala-leaderboard/1", "entries": entries})
    return entry
