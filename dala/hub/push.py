"""Pushing a run to a Hub model repo: the upload folder (checkpoint, model card, curves, records)
and the one commit that sends it.

The upload folder is a format (the Hub repo a pull reads back): ``model.safetensors`` and
``config.json`` from ``checkpoints/best``, ``README.md`` (:mod:`dala.hub.card`), ``curves.png``,
``report.json``, ``split.json``, ``metrics.jsonl``. ``--dry-run DIR`` writes exactly that folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import dala.hub.online as online
from dala.errors import DalaError, HubError, RunError
from dala.hub.card import model_card, render_curves
from dala.hub.repos import (CARD_FILE, CONFIG_FILE, CURVES_FILE, DEFAULT_LICENSE, WEIGHTS_FILE, check_subfolder,
                            normalize_repo_id)
from dala.io import atomic_dir, atomic_write_json, atomic_write_text, read_json, read_jsonl
from dala.net import hf_hub_cache_dir, hub_endpoint
from dala.train.folder import METRICS_FILE, REPORT_FILE, SPLIT_FILE, RunFolder, read_config, read_report


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
    best = RunFolder(run).best_dir
    if not (best / WEIGHTS_FILE).is_file():
        raise RunError(f"{run} has no checkpoints/best/{WEIGHTS_FILE}: the run saved no checkpoint yet; "
                       "let it finish at least one epoch")
    ckpt = read_checkpoint_config(best)
    report = read_report(run)
    if not isinstance(report, dict) or not isinstance(report.get("test"), dict):
        raise RunError(f"{run} has no report.json with test metrics: the run has not finished; "
                       "wait for it to finish (or resume it) before pushing")
    config = read_config(run)
    return run, ckpt, report, config


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
    with atomic_dir(out) as tmp:
        folder = RunFolder(run, writer=False)
        best = folder.best_dir
        shutil.copyfile(best / WEIGHTS_FILE, tmp / WEIGHTS_FILE)
        ckpt_json = json.loads((best / CONFIG_FILE).read_text(encoding="utf-8"))
        atomic_write_json(tmp / CONFIG_FILE, _redact_paths(ckpt_json))
        atomic_write_json(tmp / REPORT_FILE, _redact_paths(report))
        split = None
        split_hash = (report.get("split") or {}).get("sha256")
        if folder.split_path.exists():  # a directory or non-object there is damage: told, not skipped
            split = read_json(folder.split_path, expect=dict)
            shutil.copyfile(folder.split_path, tmp / SPLIT_FILE)
            split_hash = split_hash or hashlib.sha256(folder.split_path.read_bytes()).hexdigest()
        records = []
        if folder.metrics_path.exists():
            records = read_jsonl(folder.metrics_path)
            shutil.copyfile(folder.metrics_path, tmp / METRICS_FILE)
        try:
            try:
                has_curves = render_curves(records, tmp / CURVES_FILE, best_epoch=report.get("best_epoch")) is not None
            except ImportError:  # matplotlib absent: the card says so instead of showing the curves
                has_curves = False
            card = model_card(repo_id=repo_id, ckpt=ckpt, report=report, config=config, split=split,
                              has_curves=has_curves, license=license, dataset_id=dataset_id, split_hash=split_hash)
        except DalaError:
            raise
        except (TypeError, ValueError, AttributeError, KeyError) as exc:  # valid JSON, wrong shapes or types
            raise HubError(f"run {run.name}'s records are malformed ({type(exc).__name__}: {exc}): its config.json, "
                           "report.json or metrics.jsonl hold values of the wrong type; nothing was written") from None
        atomic_write_text(tmp / CARD_FILE, card)
    return out


def _dry_run_hint(run: Path, repo_id: str) -> str:
    return f"`python -m dala hub push {shlex.quote(str(run))} --repo {repo_id} --dry-run DIR`"


def push_run(run_dir: str | os.PathLike, repo_id: str, *, token: str | None = None, revision: str | None = None,
             private: bool = False, subfolder: str | None = None, dry_run_dir: str | os.PathLike | None = None,
             commit_message: str | None = None, license: str = DEFAULT_LICENSE,
             dataset_id: str | None = None) -> str | Path:
    """Publish run ``run_dir``'s best checkpoint, model card and records to Hub repo ``repo_id``.

    ``dry_run_dir``: only write the upload folder there (:func:`prepare_upload`) and return its
    path; nothing is sent. Otherwise the repo is created if needed (``private``), the branch
    ``revision`` too, and the folder is uploaded in one commit (into ``subfolder`` when given, e.g.
    ``"40X"`` for one checkpoint per magnification); returns the commit URL. Offline
    (``DALA_OFFLINE``/``HF_HUB_OFFLINE``) or with the Hub unreachable it fails at once with
    :class:`HubError`; every request is bounded (:func:`dala.hub.online.bounded`).
    """
    repo_id = normalize_repo_id(repo_id)
    sub = check_subfolder(subfolder)
    if dry_run_dir is not None:
        return prepare_upload(run_dir, dry_run_dir, repo_id=repo_id, license=license, dataset_id=dataset_id)
    run, *_ = _check_run(run_dir)
    hint = f"{_dry_run_hint(run, repo_id)} writes the upload folder without sending it"
    return upload_prepared(lambda out: prepare_upload(run, out, repo_id=repo_id, license=license, dataset_id=dataset_id),
                           repo_id, what=run.name, hint=hint, token=token, revision=revision, private=private,
                           subfolder=sub, commit_message=commit_message or f"DALA Lab: {run.name}"
                           + (f" -> {sub}" if sub else ""))


def upload_prepared(prepare: Callable[[Path], Path], repo_id: str, *, what: str, hint: str, token: str | None = None,
                    revision: str | None = None, private: bool = False, subfolder: str | None = None,
                    commit_message: str) -> str:
    """The one upload sequence (a run's ``push``, a study's ``push-study``): fail at once offline;
    create the repo (and branch) first, so a Hub that does not answer fails before any local work;
    ``prepare(out)`` writes the upload folder; one commit; every request bounded; errors as
    :class:`HubError` naming ``what``, the endpoint and ``hint`` (the dry-run command)."""
    reason = online.offline_reason()
    if reason:
        raise HubError(f"cannot push {what} to {repo_id}: the Hub ({hub_endpoint()}) cannot be reached "
                       f"({reason}). Fix: connect to the internet ({online.UNSET_FLAGS}); {hint}")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="dala-push-") as tmp:
        try:
            with online.bounded():
                api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
                if revision and revision != "main":
                    api.create_branch(repo_id, branch=revision, exist_ok=True)
                folder = prepare(Path(tmp) / "upload")
                info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), path_in_repo=subfolder,
                                         revision=revision, repo_type="model", commit_message=commit_message)
        except DalaError:
            raise
        except Exception as exc:
            if online.is_network_failure(exc):
                raise HubError(f"cannot push {what} to {repo_id}: the Hub ({hub_endpoint()}) did not answer "
                               f"({online.root_reason(exc)}). Fix: check your connection and HF_ENDPOINT and push "
                               f"again; {hint}") from None
            raise online.hub_error(exc, repo_id, revision, subfolder, hf_hub_cache_dir()) from None
    return str(getattr(info, "commit_url", None) or info)
