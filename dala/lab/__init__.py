"""The Imbalance Lab: class imbalance explored live, by a whole class at once.

The expensive part (a frozen encoder over every image) is done once into a memory-mapped
**feature bank** (:mod:`dala.lab.bank`); every question is a head fitted in milliseconds on it
(:mod:`dala.lab.heads`), scored by patient (:mod:`dala.lab.scoring`), or a whole sweep
(:mod:`dala.lab.sweeps`). The page (``pages/lab.py``), the CLI (``python -m dala lab``) and the
notebooks call the same functions; figures are in :mod:`dala.lab.plots`. A class shares one Lab:
answers and figures are cached per question, and :mod:`dala.lab.warm` answers the first ones in
the background.
"""

from __future__ import annotations

from dala.lab.common import RATIOS, STRATEGIES, BankError, LabError, ratio_label

__all__ = ["RATIOS", "STRATEGIES", "BankError", "LabError", "ratio_label", "open_lab", "sweep", "Lab",
           "get_bank", "build_bank", "load_bank", "resolve_encoder"]


def __getattr__(name: str):  # the heavy parts (torch) load on first use
    if name in ("open_lab", "Lab", "load_dataset_index"):
        from dala.lab import api

        return getattr(api, name)
    if name == "sweep":
        from dala.lab.sweeps import sweep

        return sweep
    if name in ("get_bank", "build_bank", "load_bank", "dataset_fingerprint"):
        from dala.lab import bank

        return getattr(bank, name)
    if name == "resolve_encoder":
        from dala.lab.encoders import resolve_encoder

        return resolve_encoder
    raise AttributeError(name)
