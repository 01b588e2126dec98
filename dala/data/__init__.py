"""Data: the BreakHis index, patient-safe splits, the synthetic default, and the torch Dataset.

Imports here stay light (no torch): ``from dala.data.dataset import BreakHisDataset`` for that.
"""

from dala.data.breakhis import CLASSES, MAGNIFICATIONS, SPLIT_BY, SUBTYPES, ImageName, parse_name, patient_key

__all__ = [
    "CLASSES", "MAGNIFICATIONS", "SPLIT_BY", "SUBTYPES", "ImageName", "parse_name", "patient_key",
    "ScanResult", "load_index", "optional", "scan", "summary", "Split", "kfold", "make_split", "official_trials",
    "read_lesion_mask", "resolve_dataset",
]

# pandas-backed names load on first use, so `dala.data.breakhis` (CLI choices) stays instant
_LAZY = {
    "ScanResult": "dala.data.index", "load_index": "dala.data.index", "optional": "dala.data.index",
    "scan": "dala.data.index", "summary": "dala.data.index",
    "Split": "dala.data.splits", "kfold": "dala.data.splits", "make_split": "dala.data.splits",
    "official_trials": "dala.data.splits", "read_lesion_mask": "dala.data.masks",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dala.data' has no attribute {name!r}")


def resolve_dataset(root=None, *, progress=True):
    """The dataset folder to use: ``root`` if given, else the embedded synthetic default
    (generated once on first use into ``dala.paths.synthetic_default_dir()``)."""
    import os
    from pathlib import Path

    if root:
        if not isinstance(root, (str, os.PathLike)):  # e.g. a damaged config.json's data_root
            from dala.errors import DataError

            raise DataError(f"data_root must be a folder path, not a {type(root).__name__} ({str(root)[:60]!r}); "
                            "pass --data DATA_ROOT or fix the run's config.json")
        return Path(root).expanduser()
    from dala.data.synth import ensure_default_dataset

    return ensure_default_dataset(progress=progress)
