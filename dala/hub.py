"""The Hugging Face Hub: push a run's checkpoint with a model card, pull checkpoints offline-first,
list the checkpoints a repo offers, and fetch BreakHis from a Hub dataset repo with safe extraction.

Why it is shaped this way:

- **Offline-first.** Every read looks in the local Hub cache first (``local_files_only=True``), so a
  classroom laptop or a CI machine with no internet loads a checkpoint it pulled once, at once. Only
  when the cache lacks it do we go to the network, and then only after a fast check that the Hub
  can be reached at all: huggingface_hub retries a dead connection for ~25 s, which is a hang to a
  user. Offline (``HF_HUB_OFFLINE=1``) or unreachable with nothing cached fails in well under a
  second with a :class:`~dala.errors.HubError` that names the repo and the fix.
- **huggingface_hub reads HF_HUB_OFFLINE / HF_HOME at import time**, so this module imports it
  lazily and re-reads those variables at call time itself (:func:`hub_offline`, :func:`hub_cache_dir`).
- **Revisions are pinned**: a pull resolves ``revision`` (branch, tag or commit) to the commit it
  got and reports it (:class:`PulledCheckpoint.commit`); pass that commit back as ``revision`` to
  get byte-identical weights later.
- **A checkpoint on the Hub is the same folder as on disk** (``model.safetensors`` + ``config.json``,
  see :mod:`dala.models.checkpoint`), at the repo root or in subfolders (one per magnification).
- **Archives from the Hub are untrusted**: no member may land outside the target folder (absolute
  paths, ``..``, links, device files are refused before anything is written), and extraction is
  atomic (a temporary sibling folder renamed into place).

Nothing here imports Streamlit; the app pages, the CLI (``python -m dala hub``) and notebooks call
these functions.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import stat
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterable
from urllib.parse import urlparse

from dala.errors import DalaError, DataError, HubError, RunError
from dala.io import atomic_write_json, atomic_write_text, read_json, read_jsonl

WEIGHTS_FILE = "model.safetensors"  # same names as dala.models.checkpoint (kept here: no torch import)
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
CURVES_FILE = "curves.png"
RUN_FILES = ("report.json", "split.json", "metrics.jsonl")
SOURCE_MARKER = ".dala_hub_source.json"  # written into an extracted Hub dataset (hidden: the index skips it)
DEFAULT_LICENSE = "cc-by-nc-4.0"  # BreakHis is distributed for research use: non-commercial is the cautious default
CARD_TAGS = ["image-classification", "histopathology", "breakhis", "pytorch", "dala"]
CARD_METRICS = ["accuracy", "balanced_accuracy", "f1", "precision", "recall", "roc_auc",
                "matthews_correlation", "gmean", "iba"]
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
MAX_EXTRACT_BYTES = int(float(os.environ.get("DALA_MAX_EXTRACT_GB", "20")) * 1024**3)
MAX_EXTRACT_MEMBERS = 500_000
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_REPO_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
_REPO_RE = re.compile(rf"^(?:{_REPO_PART}/)?{_REPO_PART}$")


class UnsafeArchiveError(DataError):
    """An archive holds a member that would land outside its target folder (or is a link/device)."""


# ----------------------------------------------------------------------------------------------
# configuration: repo ids, cache location, offline state
# ----------------------------------------------------------------------------------------------

def _truthy(value: str | None) -> bool:
    return str(value or "").strip().lower() in {"1", "true", "yes", "on"}


def config_files() -> list[Path]:
    """Where DALA Lab looks for ``config.toml``, first match wins: ``$DALA_HOME/config.toml``,
    then ``$XDG_CONFIG_HOME/dala/config.toml`` (``~/.config/dala/config.toml``)."""
    from dala.paths import dala_home

    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config").expanduser()
    return [dala_home() / "config.toml", xdg / "dala" / "config.toml"]


def _config_value(section: str, key: str) -> str | None:
    import tomllib

    for path in config_files():
        if not path.is_file():
            continue
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise HubError(f"{path} is not valid TOML ({exc}); fix or delete it") from None
        value = (data.get(section) or {}).get(key) if isinstance(data.get(section), dict) else None
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def default_repo_id() -> str | None:
    """The model repo the app offers by default: ``$DALA_HUB_REPO``, else ``hub.repo_id`` in a
    config file (:func:`config_files`); ``None`` when neither is set (nothing is hard-wired, so the
    app never points at a repo that may not exist)."""
    env = os.environ.get("DALA_HUB_REPO", "").strip()
    return env or _config_value("hub", "repo_id")


def default_dataset_id() -> str | None:
    """The dataset repo the app offers as a data source: ``$DALA_HUB_DATASET``, else
    ``hub.dataset_id`` in a config file; ``None`` when unset."""
    env = os.environ.get("DALA_HUB_DATASET", "").strip()
    return env or _config_value("hub", "dataset_id")


def normalize_repo_id(repo_id: str | None, *, repo_type: str = "model") -> str:
    """Validate a repo id (``owner/name``); a pasted Hub URL is accepted and reduced to its id."""
    rid = (repo_id or "").strip()
    what = "dataset" if repo_type == "dataset" else "model"
    if not rid:
        raise HubError(f"no Hub {what} repo id given; type one like 'your-name/dala-breakhis'"
                       + (" or set DALA_HUB_REPO" if what == "model" else " or set DALA_HUB_DATASET"))
    for prefix in ("https://huggingface.co/", "http://huggingface.co/", "hf://", "huggingface.co/"):
        if rid.startswith(prefix):
            rid = rid[len(prefix):]
            rid = rid.removeprefix("datasets/").removeprefix("models/")
            rid = "/".join(rid.split("/")[:2])
            break
    if not _REPO_RE.match(rid) or "--" in rid or ".." in rid or rid.endswith(".git"):
        raise HubError(f"{repo_id!r} is not a valid Hub repo id: use 'owner/name' (letters, digits, '-', '_', '.'; "
                       "no '--' or '..')")
    return rid


def _check_subfolder(subfolder: str | None) -> str | None:
    if subfolder is None:
        return None
    sub = str(subfolder).strip().replace("\\", "/").strip("/")
    if sub in ("", "."):
        return None
    parts = PurePosixPath(sub).parts
    if any(p in ("..", ".") for p in parts) or sub.startswith("/") or re.match(r"^[A-Za-z]:", sub):
        raise HubError(f"subfolder {subfolder!r} must be a plain relative folder in the repo (like '40X'), without '..'")
    return "/".join(parts)


def hub_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The Hub cache folder to use, re-reading the environment now (the library read it at import):
    ``cache_dir``, else ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def hub_offline() -> bool:
    """True when the Hub must not be contacted: ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is
    set now, or was set when huggingface_hub was imported (it then refuses every request)."""
    if _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE")):
        return True
    constants = sys.modules.get("huggingface_hub.constants")
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _timeout() -> float:
    try:
        return max(0.5, float(os.environ.get("DALA_HUB_TIMEOUT", "5")))
    except ValueError:
        return 5.0


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


_REACH_CACHE: dict[tuple[str, int], tuple[float, bool, str]] = {}


def hub_reachable(*, timeout: float | None = None) -> tuple[bool, str]:
    """Can a TCP connection to the Hub (or to the HTTPS proxy in use) be opened within ``timeout``
    seconds? ``(ok, reason)``. Cached for 30 s: the app calls it on every rerun."""
    import urllib.request

    url = urlparse(hub_endpoint())
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(host):
        p = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        host, port = p.hostname or host, p.port or 8080
    key = (host, port)
    now = time.monotonic()
    hit = _REACH_CACHE.get(key)
    if hit and now - hit[0] < 30:
        return hit[1], hit[2]
    try:
        with socket.create_connection((host, port), timeout=timeout or _timeout()):
            ok, reason = True, ""
    except OSError as exc:
        ok, reason = False, f"cannot connect to {host}:{port}: {exc.strerror or exc}"
    _REACH_CACHE[key] = (now, ok, reason)
    return ok, reason


def _offline_reason() -> str | None:
    """Why the network cannot be used now, or None when it can."""
    if hub_offline():
        return "offline mode is on (HF_HUB_OFFLINE=1)"
    ok, reason = hub_reachable()
    return None if ok else reason


def _where(repo_id: str, revision: str | None, subfolder: str | None, repo_type: str = "model") -> str:
    kind = "dataset " if repo_type == "dataset" else ""
    return f"{kind}{repo_id}@{revision or 'main'}" + (f"/{subfolder}" if subfolder else "")


def _not_cached_error(repo_id: str, revision: str | None, subfolder: str | None, cache: Path, reason: str,
                      *, repo_type: str = "model") -> HubError:
    fix = ("connect to the internet (and unset HF_HUB_OFFLINE) to download it once - later loads work offline - "
           f"or copy a Hub cache that holds it into {cache}")
    if repo_type == "model":
        fix += ", or load a local checkpoint folder instead"
    return HubError(f"Hub {_where(repo_id, revision, subfolder, repo_type)} is not in the local cache and the Hub "
                    f"cannot be reached ({reason}). Fix: {fix}.")


def _hub_error(exc: BaseException, repo_id: str, revision: str | None, subfolder: str | None, cache: Path,
               *, repo_type: str = "model", filename: str | None = None) -> DalaError:
    """Turn a huggingface_hub exception into one clear HubError."""
    from huggingface_hub import errors as E

    where = _where(repo_id, revision, subfolder, repo_type)
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    if isinstance(exc, DalaError):
        return exc
    if isinstance(exc, E.GatedRepoError):
        return HubError(f"Hub repo {repo_id} is gated: accept its terms on {hub_endpoint()}/{repo_id} and log in "
                        "(`hf auth login` or HF_TOKEN)")
    if isinstance(exc, E.RepositoryNotFoundError):
        kind = "dataset " if repo_type == "dataset" else ""
        return HubError(f"Hub {kind}repo {repo_id!r} does not exist or is private; check the id, or log in "
                        "(`hf auth login` or HF_TOKEN) if it is yours and private")
    if isinstance(exc, E.RevisionNotFoundError):
        return HubError(f"revision {revision!r} does not exist in Hub repo {repo_id}; use a branch, tag or commit "
                        "hash that exists (e.g. 'main')")
    if isinstance(exc, E.RemoteEntryNotFoundError) or (isinstance(exc, E.EntryNotFoundError)
                                                       and not isinstance(exc, E.LocalEntryNotFoundError)):
        name = f"{subfolder}/{filename}" if subfolder and filename else (filename or "that file")
        return HubError(f"Hub {where} has no {name}; `python -m dala hub ls {repo_id}` lists the checkpoint "
                        "folders it offers (pass one as subfolder)")
    if isinstance(exc, (E.LocalEntryNotFoundError, E.OfflineModeIsEnabled, ConnectionError, TimeoutError)):
        return _not_cached_error(repo_id, revision, subfolder, cache, first, repo_type=repo_type)
    if isinstance(exc, E.HfHubHTTPError):
        code = getattr(getattr(exc, "response", None), "status_code", None)
        if code in (401, 403):
            return HubError(f"the Hub refused access to {where} (HTTP {code}); log in with a token that may "
                            "read/write it (`hf auth login` or HF_TOKEN)")
        return HubError(f"the Hub answered an error for {where}: {first}")
    name = type(exc).__name__
    if "Connect" in name or "Timeout" in name or "Network" in name:
        return _not_cached_error(repo_id, revision, subfolder, cache, first, repo_type=repo_type)
    return HubError(f"could not get {where} from the Hub ({name}: {first})")


def _commit_of(path: str | os.PathLike) -> str | None:
    """The commit hash in a cache path ``.../snapshots/<commit>/...``."""
    parts = Path(path).parts
    for i, part in enumerate(parts[:-1]):
        if part == "snapshots" and _HEX40.match(parts[i + 1]):
            return parts[i + 1]
    return None


def _snapshot_of(path: str | os.PathLike) -> Path | None:
    parts = Path(path).parts
    for i, part in enumerate(parts[:-1]):
        if part == "snapshots" and _HEX40.match(parts[i + 1]):
            return Path(*parts[: i + 2])
    return None


def repo_cache_folder(repo_id: str, *, repo_type: str = "model", cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache>/models--owner--name`` (or ``datasets--...``), as huggingface_hub lays it out."""
    prefix = {"model": "models", "dataset": "datasets", "space": "spaces"}[repo_type]
    return hub_cache_dir(cache_dir) / "--".join([prefix, *repo_id.split("/")])


def cached_snapshot(repo_id: str, *, revision: str | None = None, repo_type: str = "model",
                    cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The cached snapshot folder for ``revision`` (a commit, or a branch/tag through ``refs/``), or None."""
    storage = repo_cache_folder(repo_id, repo_type=repo_type, cache_dir=cache_dir)
    rev = revision or "main"
    commit = rev if _HEX40.match(rev) else None
    if commit is None:
        ref = storage / "refs" / rev
        if not ref.is_file():
            return None
        commit = ref.read_text(encoding="utf-8").strip()
    snap = storage / "snapshots" / commit
    return snap if snap.is_dir() else None


# ----------------------------------------------------------------------------------------------
# pull and list
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PulledCheckpoint:
    """What :func:`pull` got: ``folder`` is what :func:`dala.models.checkpoint.load_checkpoint` takes;
    ``commit`` pins it (pass it back as ``revision`` to get exactly these weights again)."""

    repo_id: str
    revision: str
    subfolder: str | None
    commit: str | None
    folder: Path
    from_cache: bool

    def as_dict(self) -> dict:
        return {**asdict(self), "folder": str(self.folder)}


def pull(repo_id: str, *, revision: str | None = "main", subfolder: str | None = None,
         cache_dir: str | os.PathLike | None = None, token: str | bool | None = None,
         refresh: bool = False) -> PulledCheckpoint:
    """Get a checkpoint folder from a Hub model repo, offline-first (see :func:`pull_checkpoint`).

    ``refresh=True`` asks the Hub first (a moved branch gets its new commit), falling back to the
    cache when the Hub cannot be reached.
    """
    from huggingface_hub import hf_hub_download

    repo_id = normalize_repo_id(repo_id)
    sub = _check_subfolder(subfolder)
    rev = (revision or "main").strip()
    cache = hub_cache_dir(cache_dir)

    def cached() -> PulledCheckpoint | None:
        paths = []
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            try:
                paths.append(hf_hub_download(repo_id, name, subfolder=sub, revision=rev, cache_dir=str(cache),
                                             local_files_only=True))
            except Exception:  # LocalEntryNotFoundError and friends: not (completely) cached
                return None
        folder = Path(paths[1]).parent
        return PulledCheckpoint(repo_id, rev, sub, _commit_of(folder), folder, True)

    result = None if refresh else cached()
    if result is None:
        reason = _offline_reason()
        if reason:
            result = cached() if refresh else None
            if result is None:
                raise _not_cached_error(repo_id, rev, sub, cache, reason)
        else:
            paths = []
            for name in (CONFIG_FILE, WEIGHTS_FILE):
                try:
                    paths.append(hf_hub_download(repo_id, name, subfolder=sub, revision=rev, cache_dir=str(cache),
                                                 token=token, etag_timeout=_timeout()))
                except Exception as exc:
                    raise _hub_error(exc, repo_id, rev, sub, cache, filename=name) from None
            folder = Path(paths[1]).parent
            result = PulledCheckpoint(repo_id, rev, sub, _commit_of(folder), folder, False)

    from dala.errors import CheckpointError
    from dala.models.checkpoint import read_checkpoint_config

    try:
        read_checkpoint_config(result.folder)  # a repo of another kind fails here, clearly
    except CheckpointError as exc:
        raise HubError(f"Hub {_where(repo_id, rev, sub)} does not hold a DALA checkpoint: {exc}") from None
    return result


def pull_checkpoint(repo_id: str, *, revision: str | None = "main", subfolder: str | None = None,
                    cache_dir: str | os.PathLike | None = None, token: str | bool | None = None,
                    refresh: bool = False) -> Path:
    """The checkpoint folder (``model.safetensors`` + ``config.json``) of Hub repo ``repo_id``.

    Offline-first: the local Hub cache is tried first (``hf_hub_download(local_files_only=True)``
    for both files); only if it lacks them is the Hub contacted. Offline (``HF_HUB_OFFLINE=1``) or
    unreachable with nothing cached raises :class:`HubError` within seconds, naming the repo and
    the fix. The folder is inside the cache's ``snapshots/<commit>/`` (the commit that ``revision``
    resolved to); :func:`pull` returns the commit too.
    """
    return pull(repo_id, revision=revision, subfolder=subfolder, cache_dir=cache_dir, token=token,
                refresh=refresh).folder


def _fetch_optional(repo_id: str, filename: str, *, revision: str, subfolder: str | None, cache: Path,
                    token: str | bool | None = None) -> Path | None:
    """A file of the repo, offline-first; None when it is not there (or not cached while offline)."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename, subfolder=subfolder, revision=revision, cache_dir=str(cache),
                                    local_files_only=True))
    except Exception:
        pass
    if _offline_reason():
        return None
    try:
        return Path(hf_hub_download(repo_id, filename, subfolder=subfolder, revision=revision, cache_dir=str(cache),
                                    token=token, etag_timeout=_timeout()))
    except Exception:
        return None


def hub_run_record(repo_id: str, *, revision: str | None = "main", subfolder: str | None = None,
                   cache_dir: str | os.PathLike | None = None, token: str | bool | None = None) -> dict:
    """A pushed run as the Compare page holds runs: ``{"name", "config", "report", "epochs"}`` plus
    ``repo_id``, ``commit``, ``folder``. ``config`` is the training config recorded in the
    checkpoint; ``report`` and ``epochs`` come from the repo's ``report.json`` / ``metrics.jsonl``
    (offline-first, like :func:`pull`)."""
    res = pull(repo_id, revision=revision, subfolder=subfolder, cache_dir=cache_dir, token=token)
    cache = hub_cache_dir(cache_dir)
    report_path = _fetch_optional(res.repo_id, "report.json", revision=res.commit or res.revision,
                                  subfolder=res.subfolder, cache=cache, token=token)
    if report_path is None:
        raise HubError(f"Hub {_where(res.repo_id, res.revision, res.subfolder)} has no report.json (it was not "
                       "pushed with `python -m dala hub push`, or is not cached offline): its test metrics are unknown")
    metrics_path = _fetch_optional(res.repo_id, "metrics.jsonl", revision=res.commit or res.revision,
                                   subfolder=res.subfolder, cache=cache, token=token)
    ckpt = read_json(res.folder / CONFIG_FILE, {}) or {}
    records = read_jsonl(metrics_path) if metrics_path else []
    label = res.repo_id + (f"/{res.subfolder}" if res.subfolder else "") + f"@{(res.commit or res.revision)[:7]}"
    return {"name": f"hub:{label}", "config": (ckpt.get("extra") or {}).get("run_config") or {"model": ckpt.get("name")},
            "report": read_json(report_path), "epochs": [r for r in records if r.get("kind") == "epoch"],
            "repo_id": res.repo_id, "commit": res.commit, "folder": str(res.folder)}


def checkpoint_folders(files: Iterable[str]) -> list[str]:
    """Folders (posix, repo-relative; the root is ``""``) that hold both checkpoint files."""
    by_dir: dict[str, set[str]] = {}
    for f in files:
        p = PurePosixPath(str(f).replace("\\", "/"))
        parent = "" if str(p.parent) == "." else str(p.parent)
        by_dir.setdefault(parent, set()).add(p.name)
    found = [d for d, names in by_dir.items() if {WEIGHTS_FILE, CONFIG_FILE} <= names]
    return sorted(found, key=lambda d: (d != "", d))


def _snapshot_files(snapshot: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(snapshot):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            out.append((Path(dirpath) / name).relative_to(snapshot).as_posix())
    return out


def list_checkpoints(repo_id: str, *, revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                     token: str | bool | None = None) -> list[str]:
    """The checkpoint folders Hub repo ``repo_id`` offers (e.g. ``["", "40X", "100X"]``; the repo root
    is ``""``): every folder holding ``model.safetensors`` and ``config.json``.

    Online it asks the Hub; offline (or unreachable) it lists the cached snapshot of ``revision``
    (which holds only what was pulled before). Nothing known either way raises :class:`HubError`.
    """
    repo_id = normalize_repo_id(repo_id)
    rev = (revision or "main").strip()
    cache = hub_cache_dir(cache_dir)
    reason = _offline_reason()
    if reason is None:
        from huggingface_hub import HfApi

        try:
            return checkpoint_folders(HfApi(token=token).list_repo_files(repo_id, revision=rev))
        except Exception as exc:
            err = _hub_error(exc, repo_id, rev, None, cache)
            if "cannot be reached" not in str(err):
                raise err from None
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    snap = cached_snapshot(repo_id, revision=rev, cache_dir=cache)
    if snap is None:
        raise _not_cached_error(repo_id, rev, None, cache, reason)
    return checkpoint_folders(_snapshot_files(snap))


# ----------------------------------------------------------------------------------------------
# push: the upload folder and its model card
# ----------------------------------------------------------------------------------------------

def _redact_paths(obj: Any) -> Any:
    """Local absolute paths (data_root, split_file, checkpoint) say nothing to a reader of the Hub
    and leak user names: keep only the last folder name."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k in ("data_root", "split_file", "checkpoint", "queue_root") and isinstance(v, str) and v:
                out[k] = f"<local>/{Path(v).name}" if os.path.isabs(v) or v.startswith("~") else v
            else:
                out[k] = _redact_paths(v)
        return out
    if isinstance(obj, list):
        return [_redact_paths(v) for v in obj]
    return obj


def _check_run(run_dir: str | os.PathLike) -> tuple[Path, dict, dict, dict]:
    """(run folder, checkpoint config, report, run config) or a clear error."""
    from dala.models.checkpoint import read_checkpoint_config

    run = Path(run_dir).expanduser()
    if not run.is_dir():
        raise RunError(f"run folder {str(run)!r} does not exist; pass a folder written by `python -m dala train`")
    best = run / "checkpoints" / "best"
    if not (best / WEIGHTS_FILE).is_file():
        raise RunError(f"{run} has no checkpoints/best/{WEIGHTS_FILE}: the run saved no checkpoint yet; "
                       "let it finish at least one epoch")
    ckpt = read_checkpoint_config(best)
    report = read_json(run / "report.json")
    if not isinstance(report, dict) or not isinstance(report.get("test"), dict):
        raise RunError(f"{run} has no report.json with test metrics: the run has not finished; "
                       "wait for it to finish (or resume it) before pushing")
    config = read_json(run / "config.json", {}) or {}
    return run, ckpt, report, config


def _make_readable(folder: Path) -> None:
    """mkdtemp/mkstemp create owner-only entries; the finished folder is an ordinary one."""
    for dirpath, _dirs, files in os.walk(folder):
        os.chmod(dirpath, 0o755)
        for name in files:
            p = Path(dirpath) / name
            if not p.is_symlink():
                os.chmod(p, 0o644)


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


_TABLE_COLUMNS = [("n", "Images"), ("accuracy", "Accuracy"), ("balanced_accuracy", "Balanced acc."),
                  ("gmean", "GMean"), ("iba", "IBA"), ("f1_macro", "F1 (macro)"), ("mcc", "MCC"),
                  ("roc_auc", "ROC-AUC"), ("patient_accuracy", "Patient acc.")]


def _metric(block: dict, key: str) -> Any:
    if key == "f1_macro":
        return (block.get("macro") or {}).get("f1", block.get("f1_macro"))
    return block.get(key)


def metrics_table(report: dict) -> str:
    """The test metrics (all magnifications, then each) as a Markdown table."""
    test = report.get("test") or {}
    header = "| Test set | " + " | ".join(t for _, t in _TABLE_COLUMNS) + " |"
    rule = "|---|" + "---:|" * len(_TABLE_COLUMNS)
    rows = ["| all magnifications | " + " | ".join(_fmt(_metric(test, k)) for k, _ in _TABLE_COLUMNS) + " |"]
    per = test.get("per_magnification") or {}
    for mag in sorted(per, key=lambda m: int(m) if str(m).isdigit() else 10**6):
        rows.append(f"| {mag}X | " + " | ".join(_fmt(_metric(per[mag], k)) for k, _ in _TABLE_COLUMNS) + " |")
    return "\n".join([header, rule, *rows])


def render_curves(records: list[dict], path: str | os.PathLike, *, best_epoch: int | None = None) -> Path | None:
    """Train/val loss and val GMean per epoch as a PNG (matplotlib's Agg canvas, no display, no
    global pyplot state). None when there are no epoch records."""
    epochs = [r for r in records if r.get("kind") == "epoch"]
    if not epochs:
        return None
    from matplotlib.figure import Figure

    x = [r.get("epoch") for r in epochs]
    fig = Figure(figsize=(9, 3.4), dpi=110)
    ax1, ax2 = fig.subplots(1, 2)
    for key, label in (("train_loss", "train loss"), ("val_loss", "val loss")):
        ys = [r.get(key) for r in epochs]
        if any(y is not None for y in ys):
            ax1.plot(x, ys, marker="o", label=label)
    ax1.set_xlabel("epoch"), ax1.set_ylabel("loss"), ax1.set_title("Loss"), ax1.legend()
    ax2.plot(x, [r.get("val_gmean") for r in epochs], marker="o", color="tab:green", label="val GMean")
    if any(r.get("val_balanced_accuracy") is not None for r in epochs):
        ax2.plot(x, [r.get("val_balanced_accuracy") for r in epochs], marker=".", linestyle="--",
                 color="tab:gray", label="val balanced acc.")
    ax2.set_ylim(-0.02, 1.02), ax2.set_xlabel("epoch"), ax2.set_title("Validation"), ax2.legend()
    if best_epoch:
        for ax in (ax1, ax2):
            ax.axvline(best_epoch, color="tab:red", alpha=0.4, linestyle=":", label="best epoch" if ax is ax1 else None)
        ax1.legend()
    from matplotlib.ticker import MaxNLocator

    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    return path


def _hub_dataset_of(data_root: str | None) -> dict | None:
    """The Hub dataset a data folder was fetched from (the marker :func:`fetch_dataset` writes)."""
    if not data_root:
        return None
    root = Path(data_root).expanduser()
    for folder in [root, *list(root.parents)[:3]]:
        marker = folder / SOURCE_MARKER
        if marker.is_file():
            try:
                return json.loads(marker.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
    return None


def _weight_source_label(ws: str) -> str:
    low = (ws or "unknown").lower()
    if low.startswith("imagenet") or "imagenet" in low and "random" not in low:
        return f"ImageNet-pretrained ({ws})"
    if "random" in low:
        return f"random initialisation ({ws})"
    return ws or "unknown"


def model_card(*, repo_id: str, ckpt: dict, report: dict, config: dict, split: dict | None,
               has_curves: bool, license: str = DEFAULT_LICENSE, dataset_id: str | None = None,
               split_hash: str | None = None) -> str:
    """The model card (README.md): YAML metadata + what was trained on what, how well, and its limits."""
    from huggingface_hub import ModelCardData

    source = report.get("data_source") or ("synthetic" if "synthetic" in str(config.get("data_root", "")) else "real")
    synthetic = source == "synthetic"
    hub_ds = _hub_dataset_of(config.get("data_root"))
    dataset_id = dataset_id or (hub_ds or {}).get("repo_id")
    tags = list(CARD_TAGS) + (["synthetic-data"] if synthetic else [])
    data = ModelCardData(license=license, library_name="dala", pipeline_tag="image-classification", tags=tags,
                         datasets=[dataset_id] if dataset_id else None, metrics=list(CARD_METRICS),
                         model_name=repo_id.split("/")[-1])
    test = report.get("test") or {}
    model = ckpt.get("name", report.get("model", "?"))
    ws = report.get("weight_source") or ckpt.get("weight_source", "unknown")
    sp = report.get("split") or {}
    counts = sp.get("counts") or (split or {}).get("counts") or {}
    split_mode = sp.get("by") or (split or {}).get("by") or config.get("split_mode", "?")
    mag = config.get("magnification")
    title = f"{model} on {'synthetic BreakHis-like data' if synthetic else 'BreakHis'}" + (f", {mag}X" if mag else "")

    lines = [f"# {title}", ""]
    lines += ["> **Teaching and research only - not for diagnosis.** This model was trained in "
              "DALA Lab, a teaching lab, to show how deep learning on breast-cancer "
              "histopathology behaves. It has not been validated clinically and must never inform a "
              "decision about a patient.", ""]
    if synthetic:
        lines += ["> **Trained on synthetic images.** The data are generated BreakHis-like H&E tiles (a teaching "
                  "stand-in written by `dala.data.synth`), not real tissue: the scores below say nothing about "
                  "performance on real slides.", ""]
    lines += ["## Use it", "", "```bash", f"python -m dala hub pull {repo_id}", "```", "", "```python",
              "from dala.hub import pull_checkpoint", "from dala.models.checkpoint import load_checkpoint", "",
              f'model, config = load_checkpoint(pull_checkpoint("{repo_id}"))', "```", "",
              "The repo holds a DALA checkpoint folder: `model.safetensors` (weights, safetensors only) and "
              "`config.json` (architecture, options, classes, input size and normalisation - enough to rebuild "
              "the model and its Grad-CAM target). Pass a commit hash as `revision` to pin these exact weights.", ""]
    lines += ["## Test metrics", "",
              f"Held-out test set of the split below ({_fmt(test.get('n'))} images, "
              f"{_fmt(test.get('n_patients'))} patients). Patient acc. is the BreakHis patient-level accuracy; "
              "GMean and IBA (alpha 0.1) are the imbalance-aware scores.", "", metrics_table(report), ""]
    if has_curves:
        lines += ["## Training curves", "", f"![Training curves: train/val loss and validation GMean]({CURVES_FILE})", "",
                  f"Best epoch (selected on validation {report.get('select_metric', config.get('select_metric', '?'))}): "
                  f"{_fmt(report.get('best_epoch'))}.", ""]
    lines += ["## Data and split", ""]
    if synthetic:
        lines.append("- **Data:** synthetic BreakHis-like images (DALA Lab generator), labelled synthetic - "
                     "not real tissue.")
    else:
        lines.append("- **Data:** BreakHis v1 (Spanhol et al., IEEE TBME 2016), real H&E histopathology"
                     + (f", from Hub dataset `{dataset_id}`" if dataset_id else "") + ".")
    if hub_ds:
        lines.append(f"- **Hub dataset:** `{hub_ds.get('repo_id')}` at commit `{hub_ds.get('commit')}`.")
    lines.append(f"- **Magnification:** {str(mag) + 'X' if mag else 'all four (40X, 100X, 200X, 400X) together'}.")
    lines.append(f"- **Split mode:** {split_mode}"
                 + (" (patient-disjoint: no patient is on two sides)." if split_mode == "patient" else
                    " (image-level: the same patient can be in train and test, which inflates scores)."))
    if split_hash:
        lines.append(f"- **Split hash (sha256):** `{split_hash}` (`split.json` in this repo holds the image ids).")
    if counts:
        lines += ["", "| Part | Images | Patients |", "|---|---:|---:|"]
        for part in ("train", "val", "test"):
            c = counts.get(part) or {}
            lines.append(f"| {part} | {_fmt(c.get('images'))} | {_fmt(c.get('patients'))} |")
    tcc = report.get("train_class_counts")
    if tcc:
        lines += ["", "Training images per class: " + ", ".join(f"{k} {v}" for k, v in tcc.items()) + "."]
    lines += ["", "## Training", "",
              f"- **Architecture:** `{model}` (options `{json.dumps(ckpt.get('options', {}), sort_keys=True)}`), "
              f"{int(report.get('num_params') or 0):,} parameters, {len(ckpt.get('class_names', []))} classes "
              f"({', '.join(ckpt.get('class_names', []))}).",
              f"- **Starting weights:** {_weight_source_label(ws)}.",
              f"- **Mode:** {config.get('mode', '?')}; epochs {config.get('epochs', '?')}; batch size "
              f"{config.get('batch_size', '?')}; lr {config.get('lr', '?')}; image size "
              f"{report.get('image_size', config.get('image_size', '?'))} px; imbalance strategy "
              f"{config.get('imbalance', '?')}; seed {config.get('seed', '?')}.",
              f"- **Hardware:** {report.get('device', '?')}, precision {report.get('precision', '?')}, "
              f"training time {_fmt(report.get('train_time_s'))} s.",
              f"- **Software:** dala {ckpt.get('dala_version', '?')}.", ""]
    lines += ["## Intended use and limits", "",
              "- Intended for teaching and research: comparing architectures, imbalance strategies, split "
              "protocols and explanations (Grad-CAM) on BreakHis-style data.",
              "- **Not a medical device; not for diagnosis, screening or any clinical decision.**",
              "- BreakHis comes from one laboratory (82 patients); scores do not transfer to other scanners, "
              "stains or institutions. Image-level splits leak patients and overstate accuracy.",
              "- Binary benign/malignant at the image level; subtypes are not predicted.", ""]
    lines += ["## Files", "",
              "- `model.safetensors`, `config.json` - the checkpoint (`dala.models.checkpoint`).",
              "- `report.json` - every test metric, per magnification, with ROC/PR/calibration data.",
              "- `split.json` - the exact train/val/test image ids.",
              "- `metrics.jsonl` - per-step and per-epoch training records."
              + ("\n- `curves.png` - the training curves above." if has_curves else ""), ""]
    lines += ["## References", "",
              "- DALAResNet50: Dual-Activated Lightweight Attention ResNet50 for breast-cancer histopathology, "
              "arXiv:2308.13150.",
              "- Spanhol, Oliveira, Petitjean, Heutte. A Dataset for Breast Cancer Histopathological Image "
              "Classification. IEEE TBME 63(7), 2016 (BreakHis).", ""]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)


def prepare_upload(run_dir: str | os.PathLike, out_dir: str | os.PathLike, *, repo_id: str,
                   license: str = DEFAULT_LICENSE, dataset_id: str | None = None) -> Path:
    """Write the exact folder :func:`push_run` uploads into ``out_dir`` (new or empty) and return it:
    ``model.safetensors`` and ``config.json`` (from ``checkpoints/best``), ``README.md`` (the model
    card), ``curves.png``, ``report.json``, ``split.json``, ``metrics.jsonl``. Local absolute paths
    in the JSON files are reduced to their last folder name. The folder appears complete or not at all.
    """
    repo_id = normalize_repo_id(repo_id)
    run, ckpt, report, config = _check_run(run_dir)
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HubError(f"{out} already exists and is not empty; pass a new or empty folder for the upload")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        best = run / "checkpoints" / "best"
        shutil.copyfile(best / WEIGHTS_FILE, tmp / WEIGHTS_FILE)
        ckpt_json = json.loads((best / CONFIG_FILE).read_text(encoding="utf-8"))
        atomic_write_json(tmp / CONFIG_FILE, _redact_paths(ckpt_json))
        atomic_write_json(tmp / "report.json", _redact_paths(report))
        split = None
        split_hash = (report.get("split") or {}).get("sha256")
        if (run / "split.json").is_file():
            shutil.copyfile(run / "split.json", tmp / "split.json")
            split = read_json(run / "split.json")
            split_hash = split_hash or hashlib.sha256((run / "split.json").read_bytes()).hexdigest()
        records = []
        if (run / "metrics.jsonl").is_file():
            shutil.copyfile(run / "metrics.jsonl", tmp / "metrics.jsonl")
            records = read_jsonl(run / "metrics.jsonl")
        try:
            has_curves = render_curves(records, tmp / CURVES_FILE, best_epoch=report.get("best_epoch")) is not None
        except ImportError:  # matplotlib absent: the card says so instead of showing the curves
            has_curves = False
        card = model_card(repo_id=repo_id, ckpt=ckpt, report=report, config=config, split=split,
                          has_curves=has_curves, license=license, dataset_id=dataset_id, split_hash=split_hash)
        atomic_write_text(tmp / CARD_FILE, card)
        _make_readable(tmp)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def push_run(run_dir: str | os.PathLike, repo_id: str, *, token: str | None = None, revision: str | None = None,
             private: bool = False, subfolder: str | None = None, dry_run_dir: str | os.PathLike | None = None,
             commit_message: str | None = None, license: str = DEFAULT_LICENSE,
             dataset_id: str | None = None) -> str | Path:
    """Publish run ``run_dir``'s best checkpoint, model card and records to Hub repo ``repo_id``.

    ``dry_run_dir``: only write the upload folder there (:func:`prepare_upload`) and return its
    path; nothing is sent. Otherwise the repo is created if needed (``private``), the branch
    ``revision`` too, and the folder is uploaded in one commit (into ``subfolder`` when given, e.g.
    ``"40X"`` for one checkpoint per magnification); returns the commit URL. Offline or with the
    Hub unreachable it fails at once with :class:`HubError`.
    """
    repo_id = normalize_repo_id(repo_id)
    sub = _check_subfolder(subfolder)
    if dry_run_dir is not None:
        return prepare_upload(run_dir, dry_run_dir, repo_id=repo_id, license=license, dataset_id=dataset_id)
    run, *_ = _check_run(run_dir)
    reason = _offline_reason()
    if reason:
        raise HubError(f"cannot push {run.name} to {repo_id}: the Hub cannot be reached ({reason}). Fix: connect "
                       "to the internet (and unset HF_HUB_OFFLINE); `--dry-run DIR` writes the upload folder "
                       "without sending it")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    cache = hub_cache_dir()
    with tempfile.TemporaryDirectory(prefix="dala-push-") as tmp:
        folder = prepare_upload(run, Path(tmp) / "upload", repo_id=repo_id, license=license, dataset_id=dataset_id)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            if revision and revision != "main":
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), path_in_repo=sub,
                                     revision=revision, repo_type="model",
                                     commit_message=commit_message or f"DALA Lab: {run.name}"
                                     + (f" -> {sub}" if sub else ""))
        except DalaError:
            raise
        except Exception as exc:
            raise _hub_error(exc, repo_id, revision, sub, cache) from None
    return str(getattr(info, "commit_url", None) or info)


# ----------------------------------------------------------------------------------------------
# Hub dataset source and safe archive extraction
# ----------------------------------------------------------------------------------------------

def _archive_kind(name: str) -> str | None:
    low = name.lower()
    if low.endswith(".zip"):
        return "zip"
    if low.endswith(ARCHIVE_SUFFIXES):
        return "tar"
    return None


def _safe_relpath(name: str, archive: Path) -> PurePosixPath | None:
    """The member's path relative to the target, or raise; None for the archive's root entry."""
    if "\x00" in name:
        raise UnsafeArchiveError(f"{archive.name}: member {name!r} has a NUL byte in its name; refusing the archive")
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise UnsafeArchiveError(f"{archive.name}: member {name!r} has an absolute path; refusing the archive "
                                 "(nothing was extracted)")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafeArchiveError(f"{archive.name}: member {name!r} climbs out of the target with '..'; refusing "
                                 "the archive (nothing was extracted)")
    return PurePosixPath(*parts) if parts else None


def _inside(target: Path, rel: PurePosixPath) -> Path:
    base = target.resolve()
    final = (base / rel).resolve()
    if final != base and base not in final.parents:
        raise UnsafeArchiveError(f"member {str(rel)!r} would land outside {target}; refusing the archive")
    return final


def _check_tar(tf: tarfile.TarFile, archive: Path, target: Path) -> list[tarfile.TarInfo]:
    members, total, regular = [], 0, set()
    for m in tf.getmembers():
        rel = _safe_relpath(m.name, archive)
        if rel is None:
            continue
        _inside(target, rel)
        if m.issym():
            raise UnsafeArchiveError(f"{archive.name}: member {m.name!r} is a symbolic link (to {m.linkname!r}); "
                                     "dataset archives may hold only files and folders - refusing the archive")
        if m.islnk():
            link = _safe_relpath(m.linkname, archive)
            if link is None or str(link) not in regular:
                raise UnsafeArchiveError(f"{archive.name}: member {m.name!r} is a hard link to {m.linkname!r}, which "
                                         "is not a file earlier in the archive; refusing the archive")
            _inside(target, link)
        elif m.isdev() or not (m.isreg() or m.isdir()):
            raise UnsafeArchiveError(f"{archive.name}: member {m.name!r} is a device, FIFO or special file; refusing "
                                     "the archive")
        if m.isreg():
            regular.add(str(rel))
        total += max(m.size, 0)
        members.append(m)
        if len(members) > MAX_EXTRACT_MEMBERS or total > MAX_EXTRACT_BYTES:
            raise UnsafeArchiveError(f"{archive.name} would unpack to more than {MAX_EXTRACT_MEMBERS} files or "
                                     f"{MAX_EXTRACT_BYTES / 1024**3:.0f} GB (DALA_MAX_EXTRACT_GB); refusing it")
    return members


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Extract a .zip / .tar[.gz|.bz2|.xz] into existing folder ``target``, refusing (before writing
    anything) absolute paths, ``..``, symbolic links, hard links to anything but an earlier file,
    device files and zip/tar bombs. Tar members go through ``tarfile``'s ``"data"`` filter as well.
    Raises :class:`UnsafeArchiveError` (a :class:`DataError`) or :class:`DataError` if damaged.
    """
    archive, target = Path(archive), Path(target)
    if not target.is_dir():
        raise DataError(f"extraction target {target} is not a folder")
    kind = _archive_kind(archive.name)
    try:
        if kind == "zip":
            _extract_zip(archive, target)
        elif kind == "tar":
            with tarfile.open(archive, "r:*") as tf:
                members = _check_tar(tf, archive, target)
                if hasattr(tarfile, "data_filter"):
                    tf.extractall(target, members=members, filter="data")
                else:  # pragma: no cover - Python < 3.11.4: our own checks above already ran
                    tf.extractall(target, members=members)
        else:
            raise DataError(f"{archive.name} is not a .zip or .tar(.gz/.bz2/.xz) archive")
    except DalaError:
        raise
    except tarfile.FilterError as exc:  # the data filter found something our checks missed
        raise UnsafeArchiveError(f"{archive.name}: {exc}; refusing the archive") from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, RuntimeError, ValueError) as exc:
        raise DataError(f"{archive.name} is damaged or unreadable ({type(exc).__name__}: {exc}); download it again") from None
    return target


def _extract_zip(archive: Path, target: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos, total = [], 0
        for info in zf.infolist():
            rel = _safe_relpath(info.filename, archive)
            if rel is None:
                continue
            _inside(target, rel)
            mode = (info.external_attr >> 16) & 0xFFFF
            if stat.S_ISLNK(mode):
                raise UnsafeArchiveError(f"{archive.name}: member {info.filename!r} is a symbolic link; dataset "
                                         "archives may hold only files and folders - refusing the archive")
            if mode and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
                raise UnsafeArchiveError(f"{archive.name}: member {info.filename!r} is a device or special file; "
                                         "refusing the archive")
            total += info.file_size
            infos.append((info, rel))
            if len(infos) > MAX_EXTRACT_MEMBERS or total > MAX_EXTRACT_BYTES:
                raise UnsafeArchiveError(f"{archive.name} would unpack to more than {MAX_EXTRACT_MEMBERS} files or "
                                         f"{MAX_EXTRACT_BYTES / 1024**3:.0f} GB (DALA_MAX_EXTRACT_GB); refusing it")
        written = 0
        for info, rel in infos:
            dest = _inside(target, rel)
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            _inside(target, rel)  # re-check after creating parents
            with zf.open(info) as src, open(dest, "wb") as out:
                while chunk := src.read(1 << 20):
                    written += len(chunk)
                    if written > MAX_EXTRACT_BYTES:  # headers can lie about sizes (zip bombs)
                        raise UnsafeArchiveError(f"{archive.name} unpacks to more than its headers say; refusing it")
                    out.write(chunk)


def extract_archives(archives: Iterable[str | os.PathLike], dest: str | os.PathLike, *,
                     source: dict | None = None) -> Path:
    """Extract ``archives`` together into ``dest``, atomically: into a temporary sibling folder that
    is renamed to ``dest`` only when every archive extracted cleanly (with a hidden marker recording
    ``source``). An existing ``dest`` with that marker is returned as is (already extracted)."""
    archives = [Path(a) for a in archives]
    dest = Path(dest).expanduser()
    if (dest / SOURCE_MARKER).is_file():
        return dest
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise HubError(f"{dest} already exists and was not extracted by DALA Lab; pass an empty or new folder as dest")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        for archive in archives:
            safe_extract(archive, tmp)
        atomic_write_json(tmp / SOURCE_MARKER, {**(source or {}), "archives": [a.name for a in archives],
                                               "extracted": time.time()})
        _make_readable(tmp)
        if dest.exists():
            dest.rmdir()
        try:
            os.replace(tmp, dest)
        except OSError:
            if (dest / SOURCE_MARKER).is_file():  # another process finished the same extraction first
                return dest
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def hub_datasets_dir() -> Path:
    """Where extracted Hub datasets go by default: ``$DALA_HOME/hub_datasets``."""
    from dala.paths import dala_home

    return dala_home() / "hub_datasets"


def fetch_dataset(repo_id: str, *, revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                  dest: str | os.PathLike | None = None, token: str | bool | None = None) -> Path:
    """Download Hub dataset repo ``repo_id`` (offline-first, like :func:`pull`) and return the folder
    to pass to :func:`dala.data.index.load_index`.

    A repo holding the image tree itself is returned as its cached snapshot. A repo holding
    archives (.zip, .tar, .tar.gz, ...) has them extracted safely (:func:`safe_extract`) and
    atomically into ``dest`` (default ``$DALA_HOME/hub_datasets/<owner>--<name>/<commit>``); a
    second call finds them extracted and does no work.
    """
    from huggingface_hub import snapshot_download

    repo_id = normalize_repo_id(repo_id, repo_type="dataset")
    rev = (revision or "main").strip()
    cache = hub_cache_dir(cache_dir)
    snap = None
    try:
        snap = snapshot_download(repo_id, repo_type="dataset", revision=rev, cache_dir=str(cache), local_files_only=True)
    except Exception:  # not (completely) cached
        snap = None
    if snap is None:
        reason = _offline_reason()
        if reason:
            raise _not_cached_error(repo_id, rev, None, cache, reason, repo_type="dataset")
        try:
            snap = snapshot_download(repo_id, repo_type="dataset", revision=rev, cache_dir=str(cache), token=token,
                                     etag_timeout=_timeout())
        except Exception as exc:
            raise _hub_error(exc, repo_id, rev, None, cache, repo_type="dataset") from None
    snap = Path(snap)
    commit = _commit_of(snap) or rev
    archives = sorted(snap / f for f in _snapshot_files(snap) if _archive_kind(f))
    if not archives:
        return snap
    target = Path(dest) if dest else hub_datasets_dir() / repo_id.replace("/", "--") / commit
    folder = extract_archives(archives, target, source={"repo_id": repo_id, "repo_type": "dataset", "revision": rev,
                                                        "commit": commit})
    return dataset_root(folder)


def dataset_root(folder: str | os.PathLike) -> Path:
    """Step into a lone wrapper folder (``dest/breakhis/...`` from an archive of one folder) so the
    index sees the dataset's own top, where a ``SYNTHETIC`` marker lives; stop at ``BreaKHis_v1``."""
    folder = Path(folder)
    while True:
        visible = [p for p in folder.iterdir() if not p.name.startswith(".")]
        if len(visible) != 1 or not visible[0].is_dir() or visible[0].name.lower() == "breakhis_v1":
            return folder
        folder = visible[0]
