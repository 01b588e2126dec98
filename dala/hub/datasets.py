"""BreakHis from a Hub dataset repo: downloaded offline-first (like a pull), archives extracted
safely (:mod:`dala.hub.archives`) into ``$DALA_HOME/hub_datasets``, the folder handed to
:func:`dala.data.index.load_index`.
"""

from __future__ import annotations

import os
from pathlib import Path

import dala.hub.online as online
from dala.hub.archives import archive_kind, extract_archives
from dala.hub.repos import commit_of, normalize_repo_id, snapshot_files
from dala.net import hf_hub_cache_dir


def hub_datasets_dir() -> Path:
    """Where extracted Hub datasets go by default: ``$DALA_HOME/hub_datasets``."""
    from dala.paths import dala_home

    return dala_home() / "hub_datasets"


def fetch_dataset(repo_id: str, *, revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                  dest: str | os.PathLike | None = None, token: str | bool | None = None) -> Path:
    """Download Hub dataset repo ``repo_id`` (offline-first, like :func:`dala.hub.pull`) and return
    the folder to pass to :func:`dala.data.index.load_index`.

    A repo holding the image tree itself is returned as its cached snapshot. A repo holding
    archives (.zip, .tar, .tar.gz, ...) has them extracted safely (:func:`dala.hub.safe_extract`)
    and atomically into ``dest`` (default ``$DALA_HOME/hub_datasets/<owner>--<name>/<commit>``); a
    second call finds them extracted and does no work.
    """
    from huggingface_hub import snapshot_download

    repo_id = normalize_repo_id(repo_id, repo_type="dataset")
    rev = (revision or "main").strip()
    cache = hf_hub_cache_dir(cache_dir)
    try:
        snap = snapshot_download(repo_id, repo_type="dataset", revision=rev, cache_dir=str(cache), local_files_only=True)
    except Exception:  # not (completely) cached
        snap = None
    if snap is None:
        reason = online.offline_reason()
        if reason:
            raise online.not_cached_error(repo_id, rev, None, cache, reason, repo_type="dataset")
        try:
            with online.bounded():
                snap = snapshot_download(repo_id, repo_type="dataset", revision=rev, cache_dir=str(cache),
                                         token=token, etag_timeout=online.etag_timeout())
        except Exception as exc:
            raise online.hub_error(exc, repo_id, rev, None, cache, repo_type="dataset") from None
    snap = Path(snap)
    commit = commit_of(snap) or rev
    archives = sorted(snap / f for f in snapshot_files(snap) if archive_kind(f))
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
