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
import math
import os
import struct
from pathlib import Path
from typing import Any, Sequence

from dala.errors import CheckpointError
from dala.io import atomic_dir, atomic_path, atomic_write_text, json_default
from dala.models.limits import MAX_CLASSES, input_size_problem

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "dala-checkpoint"
FORMAT_VERSION = 1
_PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")
_REQUIRED = ("name", "options", "num_classes", "class_names")
MAX_HEADER_BYTES = 100_000_000  # safetensors' own cap on the JSON header
# optional top-level keys a model's dala_config carries into its checkpoint and back:
# "stain_norm" (dala.data.stain.StainNormalizer.to_config) and "calibration" (dala.calibration)
CARRIED_KEYS = ("stain_norm", "calibration")
RUN_CHECKPOINTS = ("best", "last")  # under <run>/checkpoints/, the first found is used


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
    for key in CARRIED_KEYS:  # what the model knows about its inputs and outputs travels with it
        if cfg.get(key) is not None:
            config[key] = cfg[key]
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
    with atomic_dir(folder) as tmp:  # a new folder appears complete or not at all
        # save_model drops aliases of shared tensors and makes everything contiguous
        save_model(model, str(tmp / WEIGHTS_FILE), metadata=meta)
        (tmp / CONFIG_FILE).write_text(text, encoding="utf-8")
    return folder


def _pickle_message(where: Path, pickles: Sequence[str]) -> str:
    return (f"{where} holds {', '.join(pickles)} but no {WEIGHTS_FILE}: it holds a PyTorch pickle, which "
            "DALA Lab never loads (unsafe): convert it to safetensors (load it yourself only if you trust it, "
            "then re-save the model with dala.models.save_checkpoint: model.safetensors + config.json); "
            "unpickling can run arbitrary code, so DALA Lab reads safetensors only")


def _pickles_in(folder: Path) -> list[str]:
    try:
        return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _PICKLE_SUFFIXES)
    except OSError:
        return []


def _is_checkpoint_config(path: Path) -> bool:
    """A ``config.json`` written by :func:`save_checkpoint` (a run folder's config.json is not)."""
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format") == FORMAT
    except Exception:
        return False


def resolve_checkpoint_folder(path: str | os.PathLike) -> Path:
    """The checkpoint folder ``path`` names: a checkpoint folder itself (or a file inside it), or
    a training run folder (its ``checkpoints/best``, else ``checkpoints/last``).

    The one resolver behind ``--checkpoint``, ``--run``, the pages, :func:`load_checkpoint` and
    :func:`read_checkpoint_config`. Raises :class:`CheckpointError` naming what is wrong: no such
    path, a PyTorch pickle (never loaded), another kind of file, or a run with no checkpoint yet.
    """
    p = Path(path).expanduser()
    if p.is_file():
        if p.suffix.lower() in _PICKLE_SUFFIXES or _looks_like_pickle(p):
            raise CheckpointError(
                f"{p} is a PyTorch pickle, which DALA Lab never loads (unsafe): convert it to safetensors, "
                "a checkpoint folder written by save_checkpoint (model.safetensors + config.json)"
            )
        if p.name in (WEIGHTS_FILE, CONFIG_FILE):
            return p.parent  # the user pointed at a file inside the folder
        raise CheckpointError(
            f"{p} is a file; a checkpoint is a folder holding {WEIGHTS_FILE} and {CONFIG_FILE} - pass that folder"
        )
    if not p.is_dir():
        raise CheckpointError(
            f"no checkpoint folder at {p} (the path does not exist); pass a folder written by save_checkpoint "
            f"(it holds {WEIGHTS_FILE} and {CONFIG_FILE}) or a training run folder"
        )
    if (p / WEIGHTS_FILE).is_file():
        return p
    candidates = [p / "checkpoints" / name for name in RUN_CHECKPOINTS]
    for cand in candidates:
        if (cand / WEIGHTS_FILE).is_file():
            return cand
    for where in (p, *candidates):
        pickles = _pickles_in(where) if where.is_dir() else []
        if pickles:
            raise CheckpointError(_pickle_message(where, pickles))
    if (p / CONFIG_FILE).is_file() and _is_checkpoint_config(p / CONFIG_FILE):
        return p  # a checkpoint folder missing its weights: the loader says so
    raise CheckpointError(
        f"{p} holds no checkpoint yet (no {WEIGHTS_FILE}, no checkpoints/best or checkpoints/last): "
        "train first, or wait for the run's first epoch to finish"
    )


def read_checkpoint_config(folder: str | os.PathLike) -> dict:
    """The validated ``config.json`` of checkpoint ``folder`` (no weights are read)."""
    folder = resolve_checkpoint_folder(folder)
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
    n, names = config["num_classes"], config["class_names"]
    if (not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_CLASSES or not isinstance(names, list)
            or len(names) != n):
        raise CheckpointError(
            f"{path}: num_classes {n!r} (1..{MAX_CLASSES}) and class_names {names!r} disagree; re-save the checkpoint"
        )
    _check_preprocessing(config, path)
    return config


def _check_preprocessing(config: dict, path: Path) -> None:
    """Input size and normalisation within bounds: a config must not make one image cost 10 GB."""
    from dala.models.registry import get_spec

    spec = get_spec(config["name"])
    sizes = {"input_size": config.get("input_size")}
    if spec.size_option:
        sizes[f"options.{spec.size_option}"] = config["options"].get(spec.size_option)
    for field, value in sizes.items():
        problem = None if value is None else input_size_problem(value, field=field)
        if problem:
            raise CheckpointError(f"{path}: {problem}; this checkpoint cannot be used - re-save it with a supported size")
    for field in ("mean", "std"):
        value = config.get(field)
        if value is None:
            continue
        ok = (isinstance(value, list) and len(value) == 3
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
              and (field == "mean" or all(v > 0 for v in value)))
        if not ok:
            raise CheckpointError(f"{path}: {field} must be three finite numbers{' above 0' if field == 'std' else ''}, "
                                  f"got {value!r}; re-save the checkpoint")


def _looks_like_pickle(path: Path) -> bool:
    """A torch.save file: a zip (``PK``) or a raw pickle (``\\x80`` + protocol byte)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    return head[:2] == b"PK" or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def _check_safetensors(path: Path) -> None:
    """Refuse pickles and truncated, corrupted or crafted files before the loader sees them:
    the header's length, its JSON, and every tensor's dtype, shape and offsets are checked."""
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
        if n > size - 8 or n > MAX_HEADER_BYTES:
            raise CheckpointError(
                f"{path} is truncated or not safetensors (header says {n} bytes, file has {size}); "
                "copy or download the checkpoint again"
            )
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{path} is corrupted or not safetensors (unreadable header); copy or download it again") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is corrupted or not safetensors (its header is not an object); copy or download it again")
    data = size - 8 - n
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        problem = _tensor_entry_problem(entry, data)
        if problem:
            raise CheckpointError(f"{path} is truncated or corrupted: tensor {key!r} {problem}; "
                                  "copy or download the checkpoint again")


def _tensor_entry_problem(entry: Any, data_bytes: int) -> str | None:
    if not isinstance(entry, dict):
        return "has no description"
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not isinstance(entry.get("dtype"), str):
        return "has no dtype"
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        return f"has a bad shape {shape!r}"
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
        return f"has bad data_offsets {offsets!r}"
    begin, end = offsets
    if not 0 <= begin <= end:
        return f"has bad data_offsets {offsets!r}"
    if end > data_bytes:
        return f"needs bytes up to {end}, the file has {data_bytes} data bytes"
    return None


def _non_finite(state: dict) -> list[str]:
    """Names of floating tensors holding NaN or an infinity (a diverged run, a damaged file)."""
    import torch

    return [k for k, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def load_checkpoint(folder: str | os.PathLike, *, map_location: str = "cpu") -> tuple[Any, dict]:
    """Rebuild the model of checkpoint ``folder`` and load its weights strictly.

    Returns ``(model, config)``; the model is in eval mode on ``map_location`` and its
    ``dala_config`` is the checkpoint's (``weight_source`` kept, ``checkpoint`` = the folder).
    """
    import torch
    from safetensors.torch import load_file

    folder = resolve_checkpoint_folder(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        pickles = _pickles_in(folder)
        if pickles:
            raise CheckpointError(_pickle_message(folder, pickles))
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
    except Exception as exc:  # SafetensorError, OSError, ValueError, ...: a damaged file, whatever the library says
        raise CheckpointError(f"{weights} is corrupted ({type(exc).__name__}: {exc}); "
                              "copy or download the checkpoint again") from None
    bad = _non_finite(state)
    if bad:
        raise CheckpointError(
            f"{weights} holds NaN or infinite values in {len(bad)} tensor(s) (first: {bad[0]}); the training "
            "that wrote it diverged or the file is damaged - use another checkpoint (e.g. the run's best) or retrain"
        )

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
        **{key: config[key] for key in CARRIED_KEYS if isinstance(config.get(key), dict)},
    }
    return model, config


def update_checkpoint_config(folder: str | os.PathLike, updates: dict) -> dict:
    """Set top-level ``updates`` (e.g. ``{"calibration": {...}}``) in checkpoint ``folder``'s
    config.json, atomically; the weights are not touched. Returns the new config."""
    folder = resolve_checkpoint_folder(folder)
    config = read_checkpoint_config(folder)
    config.update(updates)
    atomic_write_text(folder / CONFIG_FILE, json.dumps(config, indent=2, default=json_default) + "\n")
    return config


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
