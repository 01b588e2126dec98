"""Pulling checkpoints from a Hub model repo, offline-first, and listing the ones a repo offers.

The local Hub cache is read first (``local_files_only=True``): a classroom laptop or a CI machine
with no internet loads a checkpoint it pulled once, at once. Only when the cache lacks it is the
Hub contacted (:mod:`dala.hub.online`: the offline flags, one probe, bounded requests). A pull
resolves ``revision`` (branch, tag or commit) to the commit it got (:class:`PulledCheckpoint`);
pass that commit back as ``revision`` to get byte-identical weights later.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import dala.hub.online as online
from dala.errors import HubError
from dala.hub.repos import (CONFIG_FILE, WEIGHTS_FILE, cached_snapshot, check_subfolder, checkpoint_folders,
                            commit_of, normalize_repo_id, snapshot_files, where)
from dala.io import read_json, read_jsonl
from dala.net import hf_hub_cache_dir


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


def _download(repo_id: str, name: str, *, sub: str | None, rev: str, cache: Path,
              token: str | bool | None = None, local: bool) -> Path:
    """One file of the repo: from the cache only (``local``), or from the Hub under a deadline."""
    from huggingface_hub import hf_hub_download

    if local:
        return Path(hf_hub_download(repo_id, name, subfolder=sub, revision=rev, cache_dir=str(cache),
                                    local_files_only=True))
    with online.bounded():
        return Path(hf_hub_download(repo_id, name, subfolder=sub, revision=rev, cache_dir=str(cache), token=token,
                                    etag_timeout=online.etag_timeout()))


def pull(repo_id: str, *, revision: str | None = "main", subfolder: str | None = None,
         cache_dir: str | os.PathLike | None = None, token: str | bool | None = None,
         refresh: bool = False) -> PulledCheckpoint:
    """Get a checkpoint folder from a Hub model repo, offline-first (see :func:`pull_checkpoint`).

    ``refresh=True`` asks the Hub first (a moved branch gets its new commit), falling back to the
    cache when the Hub cannot be reached.
    """
    repo_id = normalize_repo_id(repo_id)
    sub = check_subfolder(subfolder)
    rev = (revision or "main").strip()
    cache = hf_hub_cache_dir(cache_dir)
    names = (CONFIG_FILE, WEIGHTS_FILE)

    def cached() -> PulledCheckpoint | None:
        try:
            paths = [_download(repo_id, n, sub=sub, rev=rev, cache=cache, local=True) for n in names]
        except Exception:  # LocalEntryNotFoundError and friends: not (completely) cached
            return None
        folder = paths[1].parent
        return PulledCheckpoint(repo_id, rev, sub, commit_of(folder), folder, True)

    result = None if refresh else cached()
    if result is None:
        reason = online.offline_reason()
        if reason:
            result = cached() if refresh else None
            if result is None:
                raise online.not_cached_error(repo_id, rev, sub, cache, reason)
        else:
            paths = []
            for name in names:
                try:
                    paths.append(_download(repo_id, name, sub=sub, rev=rev, cache=cache, token=token, local=False))
                except Exception as exc:
                    result = cached() if refresh and online.is_network_failure(exc) else None
                    if result is None:
                        raise online.hub_error(exc, repo_id, rev, sub, cache, filename=name) from None
                    break
            else:
                result = PulledCheckpoint(repo_id, rev, sub, commit_of(paths[1].parent), paths[1].parent, False)

    from dala.errors import CheckpointError
    from dala.models.checkpoint import read_checkpoint_config

    try:
        read_checkpoint_config(result.folder)  # a repo of another kind fails here, clearly
    except CheckpointError as exc:
        raise HubError(f"Hub {where(repo_id, rev, sub)} does not hold a DALA checkpoint: {exc}") from None
    return result


def pull_checkpoint(repo_id: str, *, revision: str | None = "main", subfolder: str | None = None,
                    cache_dir: str | os.PathLike | None = None, token: str | bool | None = None,
                    refresh: bool = False) -> Path:
    """The checkpoint folder (``model.safetensors`` + ``config.json``) of Hub repo ``repo_id``.

    Offline-first: the local Hub cache is tried first for both files; only if it lacks them is the
    Hub contacted. Offline (``DALA_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``) or unreachable with nothing
    cached raises :class:`HubError` within seconds, naming the repo and the fix. The folder is
    inside the cache's ``snapshots/<commit>/``; :func:`pull` returns the commit too.
    """
    return pull(repo_id, revision=revision, subfolder=subfolder, cache_dir=cache_dir, token=token,
                refresh=refresh).folder


def _fetch_optional(repo_id: str, filename: str, *, revision: str, subfolder: str | None, cache: Path,
                    token: str | bool | None = None) -> Path | None:
    """A file of the repo, offline-first; None when it is not there (or not cached while offline)."""
    try:
        return _download(repo_id, filename, sub=subfolder, rev=revision, cache=cache, local=True)
    except Exception:
        pass
    if online.offline_reason():
        return None
    try:
        return _download(repo_id, filename, sub=subfolder, rev=revision, cache=cache, token=token, local=False)
    except Exception:
        return None


def hub_run_record(repo_id: str, *, revision: str | None = "main", subfolder: str | None = None,
                   cache_dir: str | os.PathLike | None = None, token: str | bool | None = None) -> dict:
    """A pushed run as the Compare page holds runs: ``{"name", "config", "report", "epochs"}`` plus
    ``repo_id``, ``commit``, ``folder``. ``config`` is the training config recorded in the
    checkpoint; ``report`` and ``epochs`` come from the repo's ``report.json`` / ``metrics.jsonl``
    (offline-first, like :func:`pull`)."""
    res = pull(repo_id, revision=revision, subfolder=subfolder, cache_dir=cache_dir, token=token)
    cache = hf_hub_cache_dir(cache_dir)
    report_path = _fetch_optional(res.repo_id, "report.json", revision=res.commit or res.revision,
                                  subfolder=res.subfolder, cache=cache, token=token)
    if report_path is None:
        raise HubError(f"Hub {where(res.repo_id, res.revision, res.subfolder)} has no report.json (it was not "
                       f"pushed with `python -m dala hub push RUN --repo {res.repo_id}`, or is not cached offline): "
                       "its test metrics are unknown")
    metrics_path = _fetch_optional(res.repo_id, "metrics.jsonl", revision=res.commit or res.revision,
                                   subfolder=res.subfolder, cache=cache, token=token)
    ckpt = read_json(res.folder / CONFIG_FILE, {}, expect=dict) or {}
    records = read_jsonl(metrics_path) if metrics_path else []
    label = res.repo_id + (f"/{res.subfolder}" if res.subfolder else "") + f"@{(res.commit or res.revision)[:7]}"
    return {"name": f"hub:{label}", "config": (ckpt.get("extra") or {}).get("run_config") or {"model": ckpt.get("name")},
            "report": read_json(report_path, expect=dict), "epochs": [r for r in records if r.get("kind") == "epoch"],
            "repo_id": res.repo_id, "commit": res.commit, "folder": str(res.folder)}


def list_checkpoints(repo_id: str, *, revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                     token: str | bool | None = None) -> list[str]:
    """The checkpoint folders Hub repo ``repo_id`` offers (e.g. ``["", "40X", "100X"]``; the repo root
    is ``""``): every folder holding ``model.safetensors`` and ``config.json``.

    Online it asks the Hub; offline (or unreachable) it lists the cached snapshot of ``revision``
    (which holds only what was pulled before). Nothing known either way raises :class:`HubError`.
    """
    repo_id = normalize_repo_id(repo_id)
    rev = (revision or "main").strip()
    cache = hf_hub_cache_dir(cache_dir)
    reason = online.offline_reason()
    if reason is None:
        from huggingface_hub import HfApi

        try:
            with online.bounded():
                return checkpoint_folders(HfApi(token=token).list_repo_files(repo_id, revision=rev))
        except Exception as exc:
            if not online.is_network_failure(exc):
                raise online.hub_error(exc, repo_id, rev, None, cache) from None
            reason = online.root_reason(exc)
    snap = cached_snapshot(repo_id, revision=rev, cache_dir=cache)
    if snap is None:
        raise online.not_cached_error(repo_id, rev, None, cache, reason)
    return checkpoint_folders(snapshot_files(snap))
