"""Checkpoints: a folder with ``model.safetensors`` and ``config.json`` - the same folder the Hub holds.

``config.json`` is enough to rebuild the exact model (registry name, options, num_classes) and
to use it (class_names, input_size, mean, std); it also records where the starting weights came
from (weight_source), the dala version that wrote it, a format version and an ``extra`` dict
(metrics, the run that produced it, ...).

Loading is strict and safe: weights are only ever read as safetensors (a pickle - ``.pt``,
``.pth``, ``.bin``, or one renamed ``.safetensors`` - is detected from its first bytes and
refused, never unpickled), and every way a folder can be wrong raises
:class:`dala.errors.CheckpointError` with a message naming the problem and the fix.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any, Sequence

from dala.errors import CheckpointError
from dala.io import atomic_path, atomic_write_text, json_default

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "dala-checkpoint"
FORMAT_VERSION = 1
_PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")
_REQUIRED = ("name", "options", "num_classes", "class_names")


def _dala_version() -> str:
    import dala

    return getattr(dala, "__version__", "unknown")


def save_checkpoint(model: Any, folder: str | os.PathLike, *, class_names: Sequence[str],
                    extra: dict | None = None) -> Path:
    """Write ``model`` (built by :func:`dala.models.create_model`) to checkpoint ``folder``.

    A new folder appears complete or not at all (both files are written into a temporary
    sibling folder that is then renamed). An existing folder is updated file by file, each file
    atomically, leaving any other files in it (a trainer's optimizer state) alone. Returns the
    folder's path.
    """
    from safetensors.torch import save_model

    for wrapper in ("module", "_orig_mod"):  # DistributedDataParallel, torch.compile
        if not hasattr(model, "dala_config") and hasattr(model, wrapper):
            model = getattr(model, wrapper)
    cfg = getattr(model, "dala_config", None)
    if not isinstance(cfg, dict) or "name" not in cfg:
        raise CheckpointError(
            "this model has no dala_config (it was not built by dala.models.create_model); "
            "build it with create_model(name, ...) so the checkpoint can be rebuilt"
        )
    class_names = [str(c) for c in class_names]
    if len(class_names) != cfg["num_classes"]:
        raise CheckpointError(
            f"{len(class_names)} class_names given for a model with {cfg['num_classes']} outputs; "
            "pass one name per output, in output order"
        )
    from dala.models.registry import get_spec

    spec = get_spec(cfg["name"])
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": cfg["name"],
        "options": cfg.get("options", {}),
        "num_classes": cfg["num_classes"],
        "class_names": class_names,
        "input_size": cfg.get("input_size", spec.input_size),
        "mean": list(cfg.get("mean", spec.mean)),
        "std": list(cfg.get("std", spec.std)),
        "weight_source": cfg.get("weight_source", "unknown"),
        "dala_version": _dala_version(),
        "extra": dict(extra or {}),
    }
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"{folder} is a file; save_checkpoint writes a folder - pass a folder path")
    folder.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(config, indent=2, default=json_default) + "\n"
    meta = {"format": "pt", "dala_name": cfg["name"]}
    if folder.exists():
        # update in place, file by file (each atomic), so other files there (optimizer state) stay
        with atomic_path(folder / WEIGHTS_FILE) as tmp_w:
            save_model(model, str(tmp_w), metadata=meta)
        atomic_write_text(folder / CONFIG_FILE, text)
        return folder
    # a new folder appears complete or not at all: fill a temporary sibling, then rename it
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        # save_model drops aliases of shared tensors and makes everything contiguous
        save_model(model, str(tmp / WEIGHTS_FILE), metadata=meta)
        (tmp / CONFIG_FILE).write_text(text, encoding="utf-8")
        for name in (WEIGHTS_FILE, CONFIG_FILE):
            with open(tmp / name, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _resolve_folder(folder: str | os.PathLike) -> Path:
    path = Path(folder)
    if path.is_file():
        if path.suffix.lower() in _PICKLE_SUFFIXES or _looks_like_pickle(path):
            raise CheckpointError(
                f"{path} is a PyTorch pickle, which dala never loads (unpickling runs arbitrary code); "
                "convert it to a checkpoint folder with save_checkpoint (model.safetensors + config.json)"
            )
        if path.name in (WEIGHTS_FILE, CONFIG_FILE):
            return path.parent  # the user pointed at a file inside the folder
        raise CheckpointError(
            f"{path} is a file; a checkpoint is a folder holding {WEIGHTS_FILE} and {CONFIG_FILE} - pass that folder"
        )
    if not path.exists():
        raise CheckpointError(
            f"no checkpoint folder at {path}; pass a folder written by save_checkpoint "
            f"(it holds {WEIGHTS_FILE} and {CONFIG_FILE})"
        )
    return path


def read_checkpoint_config(folder: str | os.PathLike) -> dict:
    """The validated ``config.json`` of checkpoint ``folder`` (no weights are read)."""
    folder = _resolve_folder(folder)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{folder} has no {CONFIG_FILE}, so the model cannot be rebuilt; "
            "re-save the model with save_checkpoint, which writes both files"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); the file is damaged - re-save the checkpoint") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} does not hold a JSON object; re-save the checkpoint with save_checkpoint")
    missing = [k for k in _REQUIRED if k not in config]
    if missing:
        raise CheckpointError(
            f"{path} lacks {', '.join(missing)}; it was not written by save_checkpoint - re-save the model with it"
        )
    version = config.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {version!r} (written by dala {config.get('dala_version', '?')}); "
            f"this dala {_dala_version()} reads format {FORMAT_VERSION} - upgrade dala"
        )
    from dala.models.registry import list_models

    if config["name"] not in list_models():
        raise CheckpointError(
            f"{path} is for architecture {config['name']!r}, which this dala does not know; "
            f"known: {', '.join(list_models())} (a newer dala may have it)"
        )
    if not isinstance(config["options"], dict):
        raise CheckpointError(f"{path}: 'options' must be an object; re-save the checkpoint")
    n = config["num_classes"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 1 or len(config["class_names"]) != n:
        raise CheckpointError(
            f"{path}: num_classes {n!r} and class_names {config['class_names']!r} disagree; re-save the checkpoint"
        )
    return config


def _looks_like_pickle(path: Path) -> bool:
    """A torch.save file: a zip (``PK``) or a raw pickle (``\\x80`` + protocol byte)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    return head[:2] == b"PK" or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def _check_safetensors(path: Path) -> None:
    """Refuse pickles and truncated/corrupted files before the loader sees them."""
    size = path.stat().st_size
    if _looks_like_pickle(path):
        raise CheckpointError(
            f"{path} is a PyTorch pickle renamed .safetensors; dala never unpickles (it can run arbitrary code). "
            "Load it yourself only if you trust it and re-save with save_checkpoint"
        )
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is truncated ({size} bytes); copy or download the checkpoint again")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise CheckpointError(
                f"{path} is truncated or not safetensors (header says {n} bytes, file has {size}); "
                "copy or download the checkpoint again"
            )
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path} is corrupted or not safetensors (unreadable header); copy or download it again") from None
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    data = size - 8 - n
    if ends and max(ends) > data:
        raise CheckpointError(
            f"{path} is truncated ({data} data bytes, tensors need {max(ends)}); copy or download the checkpoint again"
        )


def load_checkpoint(folder: str | os.PathLike, *, map_location: str = "cpu") -> tuple[Any, dict]:
    """Rebuild the model of checkpoint ``folder`` and load its weights strictly.

    Returns ``(model, config)``; the model is in eval mode on ``map_location`` and its
    ``dala_config`` is the checkpoint's (``weight_source`` kept, ``checkpoint`` = the folder).
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = _resolve_folder(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in _PICKLE_SUFFIXES)
        if pickles:
            raise CheckpointError(
                f"{folder} holds {', '.join(pickles)} but no {WEIGHTS_FILE}; dala loads safetensors only and "
                "never unpickles - re-save the model with save_checkpoint"
            )
        raise CheckpointError(f"{folder} has no {WEIGHTS_FILE}; the checkpoint is incomplete - copy or save it again")
    config = read_checkpoint_config(folder)
    _check_safetensors(weights)

    from dala.models.registry import create_model

    def build(on_meta: bool) -> Any:
        # on the meta device no memory is allocated and no random init runs: the weights come next
        with torch.device("meta") if on_meta else contextlib.nullcontext():
            return create_model(config["name"], num_classes=config["num_classes"], pretrained=False, **config["options"])

    try:
        model = build(on_meta=True)
    except Exception as exc:
        raise CheckpointError(
            f"cannot rebuild {config['name']} from {folder / CONFIG_FILE} (options {config['options']}): {exc}"
        ) from exc
    try:
        state = load_file(str(weights), device=str(map_location))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{weights} is corrupted ({exc}); copy or download the checkpoint again") from None

    own = model.state_dict()
    # safetensors' save_model keeps one name per shared tensor; restore aliases before comparing
    tied = _restore_shared(model, state)
    unexpected = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state))
    mismatched = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in own if k in state and state[k].shape != own[k].shape]
    if unexpected or missing or mismatched:
        parts = []
        if mismatched:
            k, a, b = mismatched[0]
            parts.append(f"{len(mismatched)} shape mismatches (first: {k} is {a} in the file, {b} in the model)")
        if missing:
            parts.append(f"{len(missing)} weights missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected weights (e.g. {', '.join(unexpected[:3])})")
        meta_name = _metadata_name(weights)
        origin = f" (the file says it holds {meta_name!r})" if meta_name and meta_name != config["name"] else ""
        raise CheckpointError(
            f"{weights} does not fit {config['name']} with {config['num_classes']} classes{origin}: "
            + "; ".join(parts)
            + ". The weights come from another architecture or configuration - pair them with their own config.json"
        )
    for k, t in own.items():  # keep the model's dtypes (assign would adopt the file's)
        if state[k].dtype != t.dtype and state[k].is_floating_point() and t.is_floating_point():
            state[k] = state[k].to(t.dtype)
    if not tied:
        model.load_state_dict(state, strict=True, assign=True)
    if tied or any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
        # tied weights (assign would untie them) or a buffer outside the state dict (left on the
        # meta device): build the model for real and copy the weights in
        model = build(on_meta=False)
        model.load_state_dict(state, strict=True)
    model.to(torch.device(map_location)).eval()
    model.dala_config = {
        "name": config["name"],
        "options": config["options"],
        "num_classes": config["num_classes"],
        "weight_source": config.get("weight_source", "unknown"),
        "input_size": config.get("input_size"),
        "mean": config.get("mean"),
        "std": config.get("std"),
        "class_names": config["class_names"],
        "checkpoint": str(folder),
    }
    return model, config


def _aliases(model: Any) -> list[list[str]]:
    """Groups of state-dict names that are one tensor (tied weights), found by object identity
    (works on the meta device too)."""
    groups: dict[int, list[str]] = {}
    for name, t in itertools.chain(model.named_parameters(remove_duplicate=False),
                                   model.named_buffers(remove_duplicate=False)):
        groups.setdefault(id(t), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def _restore_shared(model: Any, state: dict) -> bool:
    """Fill in names safetensors dropped as aliases of a tensor it kept; True if the model ties any."""
    tied = _aliases(model)
    for names in tied:
        kept = [n for n in names if n in state]
        for n in names:
            if n not in state and kept:
                state[n] = state[kept[0]]
    return bool(tied)


def _metadata_name(path: Path) -> str | None:
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            return (fh.metadata() or {}).get("dala_name")
    except Exception:
        return None


def resolve_checkpoint_folder(path: str | os.PathLike) -> Path:
    """A checkpoint folder, or a training run folder (its ``checkpoints/best``, else
    ``checkpoints/last``): what ``--checkpoint``, ``--run`` and the pages accept."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"{str(p)!r} does not exist: pass a checkpoint folder (model.safetensors + config.json) "
                              "or a training run folder.")
    if (p / "model.safetensors").is_file():
        return p
    for cand in (p / "checkpoints" / "best", p / "checkpoints" / "last"):
        if (cand / "model.safetensors").is_file():
            return cand
    raise CheckpointError(f"{str(p)!r} holds no checkpoint yet (no model.safetensors, no checkpoints/best or /last): "
                          "train first, or wait for the run's first epoch to finish.")
