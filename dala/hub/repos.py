"""Hub repo ids, the config files that name the default repos, and the local Hub cache layout.

The cache is where huggingface_hub puts it (:func:`dala.net.hf_hub_cache_dir`, read now, not at
import): ``<cache>/models--owner--name/{blobs,refs,snapshots/<commit>}``. Everything here is
read-only and offline; nothing imports huggingface_hub.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import Iterable

from dala.errors import HubError
from dala.net import hf_hub_cache_dir

WEIGHTS_FILE = "model.safetensors"  # same names as dala.models.checkpoint (kept here: no torch import)
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
CURVES_FILE = "curves.png"
RUN_FILES = ("report.json", "split.json", "metrics.jsonl")
SOURCE_MARKER = ".dala_hub_source.json"  # written into an extracted Hub dataset (hidden: the index skips it)
DEFAULT_LICENSE = "cc-by-nc-4.0"  # BreakHis is distributed for research use: non-commercial is the cautious default
HEX40 = re.compile(r"^[0-9a-f]{40}$")
_REPO_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
_REPO_RE = re.compile(rf"^(?:{_REPO_PART}/)?{_REPO_PART}$")


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


def check_subfolder(subfolder: str | None) -> str | None:
    """A plain relative folder of the repo (``"40X"``, ``"by_mag/400X"``), or None for the root."""
    if subfolder is None:
        return None
    sub = str(subfolder).strip().replace("\\", "/").strip("/")
    if sub in ("", "."):
        return None
    parts = PurePosixPath(sub).parts
    if any(p in ("..", ".") for p in parts) or sub.startswith("/") or re.match(r"^[A-Za-z]:", sub):
        raise HubError(f"subfolder {subfolder!r} must be a plain relative folder in the repo (like '40X'), without '..'")
    return "/".join(parts)


def where(repo_id: str, revision: str | None, subfolder: str | None, repo_type: str = "model") -> str:
    """``[dataset ]owner/name@rev[/sub]`` for messages."""
    kind = "dataset " if repo_type == "dataset" else ""
    return f"{kind}{repo_id}@{revision or 'main'}" + (f"/{subfolder}" if subfolder else "")


def commit_of(path: str | os.PathLike) -> str | None:
    """The commit hash in a cache path ``.../snapshots/<commit>/...``."""
    parts = Path(path).parts
    for i, part in enumerate(parts[:-1]):
        if part == "snapshots" and HEX40.match(parts[i + 1]):
            return parts[i + 1]
    return None


def repo_cache_folder(repo_id: str, *, repo_type: str = "model", cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache>/models--owner--name`` (or ``datasets--...``), as huggingface_hub lays it out."""
    prefix = {"model": "models", "dataset": "datasets", "space": "spaces"}[repo_type]
    return hf_hub_cache_dir(cache_dir) / "--".join([prefix, *repo_id.split("/")])


def cached_snapshot(repo_id: str, *, revision: str | None = None, repo_type: str = "model",
                    cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The cached snapshot folder for ``revision`` (a commit, or a branch/tag through ``refs/``), or None."""
    storage = repo_cache_folder(repo_id, repo_type=repo_type, cache_dir=cache_dir)
    rev = revision or "main"
    commit = rev if HEX40.match(rev) else None
    if commit is None:
        ref = storage / "refs" / rev
        if not ref.is_file():
            return None
        commit = ref.read_text(encoding="utf-8").strip()
    snap = storage / "snapshots" / commit
    return snap if snap.is_dir() else None


def snapshot_files(snapshot: Path) -> list[str]:
    """Every file of a snapshot folder, posix and relative (hidden folders skipped)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(snapshot):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            out.append((Path(dirpath) / name).relative_to(snapshot).as_posix())
    return out


def checkpoint_folders(files: Iterable[str]) -> list[str]:
    """Folders (posix, repo-relative; the root is ``""``) that hold both checkpoint files."""
    by_dir: dict[str, set[str]] = {}
    for f in files:
        p = PurePosixPath(str(f).replace("\\", "/"))
        parent = "" if str(p.parent) == "." else str(p.parent)
        by_dir.setdefault(parent, set()).add(p.name)
    found = [d for d, names in by_dir.items() if {WEIGHTS_FILE, CONFIG_FILE} <= names]
    return sorted(found, key=lambda d: (d != "", d))
