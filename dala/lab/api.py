"""The lab in three calls: :func:`open_lab` (bank + dataset), ``lab.score(...)``, :func:`sweep`.

    from dala.lab import open_lab, sweep
    lab = open_lab()                       # the synthetic default, the prepared random stem
    res = lab.score("class_weight", 0.1)   # benign 1:10 in training
    res.row["gmean"], res.sizes["train"]
    sweep(lab)                             # DataFrame: 8 strategies x 9 ratios
"""

from __future__ import annotations

from pathlib import Path

from dala.lab.bank import DEFAULT_VIEWS, Progress, get_bank
from dala.lab.common import LabError
from dala.lab.encoders import EncoderSpec, resolve_encoder
from dala.lab.scoring import Lab


def load_dataset_index(data_root=None, *, progress: Progress = False):
    """The index of ``data_root`` (None: the synthetic default, generated once)."""
    from dala.data import load_index, resolve_dataset

    root = resolve_dataset(data_root, progress=progress is True)
    return load_index(root)


def run_split_for(spec: EncoderSpec):
    """A run checkpoint's own split (its test patients are new to the encoder), or None."""
    if spec.kind != "checkpoint" or not spec.run_dir:
        return None
    from dala.train.folder import read_split

    try:
        return read_split(spec.run_dir)
    except Exception:
        return None


def open_lab(data_root=None, *, encoder: str | EncoderSpec | None = None, index=None, views: int = DEFAULT_VIEWS,
             progress: Progress = True, rebuild: bool = False) -> Lab:
    """The lab over ``data_root``'s bank for ``encoder`` (built once, then reused)."""
    if index is None:
        index = load_dataset_index(data_root, progress=progress)
    spec = encoder if isinstance(encoder, EncoderSpec) else resolve_encoder(encoder)
    bank = get_bank(index, spec, views=views, progress=progress, rebuild=rebuild)
    split = run_split_for(spec)
    if split is not None:
        try:
            split.frames(index)
        except Exception:
            split = None  # the run was trained on another dataset: its split does not apply
    return Lab(bank, index, fixed_split=split)


def describe_root(data_root) -> str:
    return "the synthetic default" if data_root is None else str(Path(data_root))


__all__ = ["Lab", "LabError", "open_lab", "load_dataset_index", "resolve_encoder"]
