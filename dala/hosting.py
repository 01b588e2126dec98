"""Hosted mode (``DALA_HOSTED=1``, set by the Dockerfile for Hugging Face Spaces): the policies a
public, shared, 2-vCPU server needs and a laptop does not. UI-free: the pages call these.

- Visitors may not read arbitrary server folders: data come from the built-in synthetic set or a
  Hub dataset (:func:`allowed_data_root`).
- One heavy training run at a time on a free CPU Space (:func:`max_concurrent_runs`,
  :func:`can_start_run`); ``DALA_MAX_RUNS`` overrides.
- Every path a visitor types obeys one policy (:func:`check_user_path`): only the allowed roots,
  one refusal message that says nothing about the path.
- Each visitor's runs live in their own folder (:func:`visitor_runs_root`, named by the hash of
  the browser's secret, :mod:`dala.identity`), so nobody stops or reads another's run.
- Work per request is bounded (:func:`max_upload_pixels`, :func:`max_uploads`).
- A shared class leaderboard (:func:`submit_to_leaderboard`, :func:`load_leaderboard`,
  :func:`leaderboard_groups`: only patient-level results ranked, real and synthetic apart): one JSON
  file under ``DALA_HOME``, written atomically under a file lock (several visitors may submit at
  the same moment). A Space's disk is wiped on restart, and the leaderboard with it.

Outside hosted mode every policy is permissive (a local user owns the machine).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from dala.errors import DalaError, RunError
from dala.io import DamagedFileError, FileLock, atomic_write_json, read_json, set_aside
from dala.net import env_flag

log = logging.getLogger(__name__)

LEADERBOARD_FILE = "leaderboard.json"
LEADERBOARD_MAX_ENTRIES = 500
LEADERBOARD_METRICS = ("accuracy", "balanced_accuracy", "gmean", "iba", "f1_macro", "mcc", "roc_auc",
                       "patient_accuracy")
_VISITOR_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


class HostedModeError(DalaError):
    """Something the hosted (public Space) policy does not allow, with what to do instead."""


def hosted() -> bool:
    """True when running as a public hosted app (``DALA_HOSTED=1``)."""
    return env_flag("DALA_HOSTED")


# ----------------------------------------------------------------------------------------------
# data sources
# ----------------------------------------------------------------------------------------------

PATH_PURPOSES = ("data", "checkpoint")
_ALTERNATIVES = {
    "data": "use the built-in synthetic dataset or a Hugging Face Hub dataset (enter its repo id, e.g. owner/breakhis)",
    "checkpoint": "pick one of your own runs, or a checkpoint on the Hugging Face Hub (enter its repo id)",
}


def path_refusal(purpose: str) -> str:
    """The one message for a refused path: the same whether the path exists or not, and it never
    repeats the path (nothing a visitor can probe the server's folders with)."""
    return (f"this hosted app does not read server folders: {_ALTERNATIVES.get(purpose, _ALTERNATIVES['data'])}. "
            "To use your own folders, run DALA Lab on your machine (`streamlit run app.py`).")


def allowed_data_roots() -> list[Path]:
    """Folders a hosted visitor's data may come from: the synthetic default, extracted Hub datasets
    and the Hub cache's dataset snapshots."""
    from dala.hub import hub_datasets_dir
    from dala.net import hf_hub_cache_dir
    from dala.paths import synthetic_default_dir

    return [synthetic_default_dir(), hub_datasets_dir(), hf_hub_cache_dir()]


def _allowed_roots(purpose: str, own: list[Path]) -> list[tuple[Path, str | None]]:
    """(root, required first part of the path below it: a Hub cache repo kind) for ``purpose``."""
    from dala.net import hf_hub_cache_dir

    hub_cache = hf_hub_cache_dir()
    if purpose == "data":
        from dala.hub import hub_datasets_dir
        from dala.paths import synthetic_default_dir

        return [(synthetic_default_dir(), None), (hub_datasets_dir(), None), (hub_cache, "datasets--")]
    return [*((p, None) for p in own), (hub_cache, "models--")]


def check_user_path(path: str | os.PathLike | None, *, purpose: str,
                    own_roots: "list[str | os.PathLike] | tuple" = ()) -> Path:
    """The path a visitor typed, resolved, or :class:`HostedModeError` with :func:`path_refusal`.

    Every widget that takes a server path calls this. Locally any path is allowed (returned
    expanded). Hosted, only paths under the roots allowed for ``purpose`` are: ``"data"`` (the
    synthetic default, extracted Hub datasets, dataset snapshots in the Hub cache) or
    ``"checkpoint"`` (``own_roots``, the visitor's own runs folder(s), and model snapshots in the
    Hub cache). Symlinks and ``..`` are resolved first; the answer never depends on whether the
    path exists.
    """
    if purpose not in PATH_PURPOSES:
        raise ValueError(f"purpose must be one of {PATH_PURPOSES}, not {purpose!r}")
    text = str(path or "").strip()
    if not hosted():
        return Path(text).expanduser()
    try:
        real = Path(text).expanduser().resolve() if text else None
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte: refused like any other
        real = None
    if real is not None:
        for root, prefix in _allowed_roots(purpose, [Path(p) for p in own_roots]):
            try:
                base = Path(root).expanduser().resolve()
            except (OSError, RuntimeError):
                continue
            if real == base or base in real.parents:
                rel = real.relative_to(base).parts
                if prefix and not (rel and rel[0].startswith(prefix)):
                    continue  # in the Hub cache only that kind of repo
                return real
    raise HostedModeError(path_refusal(purpose))


def allowed_data_root(path: str | os.PathLike | None) -> Path | None:
    """The data root to use, or :class:`HostedModeError` if hosted mode forbids it.

    ``None`` (the synthetic default) is always allowed and returned as ``None``. Otherwise
    :func:`check_user_path` with ``purpose="data"``.
    """
    if path is None or str(path).strip() == "":
        return None
    return check_user_path(path, purpose="data")


# ----------------------------------------------------------------------------------------------
# work per request
# ----------------------------------------------------------------------------------------------

HOSTED_MAX_UPLOAD_PIXELS = 12_000_000  # 4000x3000: 25x a BreakHis image, a few hundred MB to decode at most
HOSTED_MAX_UPLOADS = 24                # images one visitor may have explained in one go
LOCAL_MAX_UPLOADS = 200


def max_upload_pixels() -> int | None:
    """Pixels an uploaded image may declare before it is refused (before decoding): hosted
    ``$DALA_MAX_UPLOAD_PIXELS`` or :data:`HOSTED_MAX_UPLOAD_PIXELS`; locally None (the image
    reader's own limit, ``dala.data.images.max_image_pixels``). Pass it as ``max_pixels=``."""
    from dala.net import env_float

    if not hosted():
        return None
    return int(env_float("DALA_MAX_UPLOAD_PIXELS", HOSTED_MAX_UPLOAD_PIXELS, minimum=1))


def max_uploads() -> int:
    """How many uploaded images one request explains at most (the page pages through them)."""
    return HOSTED_MAX_UPLOADS if hosted() else LOCAL_MAX_UPLOADS


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
    from dala.train.folder import STATUS_FILE
    from dala.train.runs import pid_alive

    root = Path(runs_root)
    if not root.is_dir():
        return []
    candidates = []
    for child in root.iterdir():
        if not child.is_dir():
            continue
        if (child / STATUS_FILE).is_file():
            candidates.append(child)
        else:
            candidates.extend(g for g in child.iterdir() if g.is_dir() and (g / STATUS_FILE).is_file())
    out = []
    now = time.time()
    for run in candidates:
        try:
            st = read_json(run / STATUS_FILE, {}, expect=dict) or {}
        except ValueError:  # a damaged status counts as not active (dala.train lists it as damaged)
            continue
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
    """A fresh random folder-safe id (tests; the app names visitor folders by
    :func:`dala.identity.owner_id`, the hash of the browser's secret, never shown in the URL)."""
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


def _locked(path: Path, *, timeout: float = 10.0) -> FileLock:
    """The leaderboard's writer lock (readers need none: the file is replaced atomically)."""
    return FileLock(path.with_name(path.name + ".lock"), timeout=timeout,
                    busy_message="the leaderboard is busy (another submission is being saved); try again in a moment")


def clean_nickname(nickname: str) -> str:
    """1-32 visible characters: letters, digits, space, ``. _ -`` (nothing a page could render as markup)."""
    nick = re.sub(r"[^\w .-]", "", str(nickname or ""), flags=re.UNICODE)
    nick = re.sub(r"\s+", " ", nick).strip()[:32].strip()
    if not nick:
        raise HostedModeError("choose a nickname (letters, digits, spaces, '.', '_' or '-') for the leaderboard")
    return nick


def leaderboard_entry(run_dir: str | os.PathLike, *, nickname: str) -> dict:
    """The leaderboard row for a finished run: headline test metrics, model, split mode, data source."""
    from dala.train.folder import read_config, read_report

    run = Path(run_dir)
    report = read_report(run)
    if not isinstance(report, dict) or not isinstance(report.get("test"), dict):
        raise RunError(f"run {run.name} has no test report yet: let it finish before submitting it")
    config = read_config(run)
    test = report["test"]
    from dala.metric_row import flat_metrics

    metrics = flat_metrics(test, keys=LEADERBOARD_METRICS)
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


@dataclass(frozen=True)
class Leaderboard:
    """The shared leaderboard as read now: its entries, and a sentence when the file was damaged
    (the damaged file is kept aside, never overwritten; :func:`damaged_copies` lists them)."""

    entries: tuple[dict, ...]
    problem: str | None = None


def _read_board(path: Path) -> tuple[list[dict], str | None]:
    try:
        data = read_json(path, {"entries": []}, expect=dict)
    except DamagedFileError as exc:
        return [], str(exc)
    raw = data.get("entries", [])
    if not isinstance(raw, list):
        return [], f"{path} is damaged: its entries are a {type(raw).__name__}, not a list"
    return [e for e in raw if isinstance(e, dict)], None


def damaged_copies() -> list[Path]:
    """Damaged leaderboard files kept aside (``leaderboard.json.damaged-<time>``), oldest first."""
    path = leaderboard_path()
    return sorted(path.parent.glob(f"{path.name}.damaged-*")) if path.parent.is_dir() else []


def _sort_key(sort_by: str):
    def key(e: dict):
        v = (e.get("metrics") or {}).get(sort_by)
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v == v  # not NaN
        return (not ok, -(v if ok else 0.0), e.get("submitted", 0))

    return key


def load_leaderboard(*, sort_by: str = "gmean") -> Leaderboard:
    """Every entry, best ``sort_by`` first, and the problem when the file cannot be read (the page
    says so; the next submission keeps the damaged file aside before writing)."""
    path = leaderboard_path()
    entries, problem = _read_board(path)
    if problem:
        problem = (f"The class leaderboard file is damaged ({problem}); it is shown empty. The next submission "
                   "keeps the damaged file aside (nothing is overwritten) and starts a new one.")
    elif damaged_copies():
        problem = (f"{len(damaged_copies())} damaged leaderboard file(s) were kept aside in {path.parent} "
                   "(named leaderboard.json.damaged-...): their entries are not shown.")
    return Leaderboard(tuple(sorted(entries, key=_sort_key(sort_by))), problem)


def read_leaderboard(*, sort_by: str = "gmean") -> list[dict]:
    """All entries, best ``sort_by`` (a test metric) first; a damaged file reads as empty here
    (:func:`load_leaderboard` also says why)."""
    return list(load_leaderboard(sort_by=sort_by).entries)


@dataclass(frozen=True)
class LeaderboardGroup:
    """One table of the leaderboard: ranked (patient-level split, one data source) or shown apart."""

    title: str
    ranked: bool
    entries: tuple[dict, ...]
    note: str = ""


def leaderboard_groups(entries, *, sort_by: str = "gmean") -> list[LeaderboardGroup]:
    """The leaderboard as a class should read it. Only patient-level results are ranked, real and
    SYNTHETIC data in separate rankings (a synthetic score says nothing about BreakHis); runs with
    an image-level split (the same patients in training and test: their scores are inflated) or an
    unknown split are listed apart, unranked. Each ranked entry gains a ``rank`` (1 = best)."""
    ranked: dict[str, list[dict]] = {"real": [], "synthetic": [], "other": []}
    leaking, unknown = [], []
    for e in sorted((e for e in entries if isinstance(e, dict)), key=_sort_key(sort_by)):
        split = str(e.get("split_mode") or "").lower()
        if split == "patient":
            src = e.get("data_source")
            ranked["real" if src == "real" else "synthetic" if src == "synthetic" else "other"].append(e)
        elif split == "image":
            leaking.append(e)
        else:
            unknown.append(e)
    titles = {"real": ("Ranking: BreakHis (real data), patient-level split", ""),
              "synthetic": ("Ranking: SYNTHETIC data, patient-level split",
                            "Generated teaching data, not real tissue: these scores say nothing about BreakHis."),
              "other": ("Ranking: other data sources, patient-level split", "Data source not recorded as real or synthetic.")}
    out = []
    for key, group in ranked.items():
        if group:
            title, note = titles[key]
            out.append(LeaderboardGroup(title, True, tuple({**e, "rank": i} for i, e in enumerate(group, 1)), note))
    if leaking:
        out.append(LeaderboardGroup(
            "Not ranked: image-level split (leaks patients)", False, tuple(leaking),
            "The same patients' images sit in training and test, so these scores are inflated (the leakage lesson)."))
    if unknown:
        out.append(LeaderboardGroup("Not ranked: split not recorded", False, tuple(unknown),
                                    "These runs do not say how they were split, so they cannot be ranked."))
    return out


def submit_to_leaderboard(run_dir: str | os.PathLike, *, nickname: str) -> dict:
    """Add (or replace: one row per run) ``run_dir``'s result on the shared leaderboard; returns the
    row. Safe against concurrent submitters (file lock + atomic replace). A damaged leaderboard
    file is kept aside (``dala.io.set_aside``), never overwritten; the new file starts with this row."""
    entry = leaderboard_entry(run_dir, nickname=nickname)
    path = leaderboard_path()
    with _locked(path):
        entries, problem = _read_board(path)
        if problem:
            aside = set_aside(path)
            log.warning("%s; kept aside as %s", problem, aside.name)
        entries = [e for e in entries if e.get("id") != entry["id"]]
        entries.append(entry)
        if len(entries) > LEADERBOARD_MAX_ENTRIES:  # keep the best, drop the oldest weak ones
            entries = sorted(entries, key=_sort_key("gmean"))[:LEADERBOARD_MAX_ENTRIES]
        atomic_write_json(path, {"format": "dala-leaderboard/1", "entries": entries})
    return entry
