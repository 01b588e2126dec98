"""Data: the BreakHis index, patient-safe splits, the synthetic default, and the torch Dataset.

Imports here stay light (no torch): ``from dala.data.dataset import BreakHisDataset`` for that.
"""

from dala.data.breakhis import CLASSES, MAGNIFICATIONS, SUBTYPES, ImageName, parse_name, patient_key
from dala.data.index import ScanResult, load_index, scan, summary
from dala.data.splits import Split, kfold, make_split, official_trials

__all__ = [
    "CLASSES", "MAGNIFICATIONS", "SUBTYPES", "ImageName", "parse_name", "patient_key",
    "ScanResult", "load_index", "scan", "summary", "Split", "kfold", "make_split", "official_trials",
    "resolve_dataset",
]


def resolve_dataset(root=None, *, progress=True):
    """The dataset folder to use: ``root`` if given, else the embedded synthetic default
    (generated once on first use into ``dala.paths.synthetic_default_dir()``)."""
    from pathlib import Path

    if root:
        return Path(root).expanduser()
    from dala.data.synth import ensure_default_dataset

    return ensure_default_dataset(progress=progress)
