"""Every strategy x ratio in one go: the headline picture of the lesson."""

from __future__ import annotations

import time
from typing import Callable, Iterable

import pandas as pd

from dala.lab.common import RATIOS, STRATEGIES, SWEEP_KEYS, LabError, check_ratio, check_strategy

EXTRA_KEYS = ("sensitivity", "specificity", "precision", "patient_accuracy", "roc_auc")


def sweep(lab, *, strategies: Iterable[str] = STRATEGIES, ratios: Iterable[float] = RATIOS, split: str = "patient",
          seed: int = 0, magnification: int | None = None, head: str = "linear",
          test_prevalence: float | None = None, on_progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """One row per strategy x ratio (each at its strategy's own threshold): the contract keys
    ``strategy, ratio, accuracy, balanced_accuracy, gmean, iba, f1_macro``, then sensitivity,
    specificity, precision, patient_accuracy, roc_auc, threshold, the training sizes and
    ``error`` (a setting this data cannot answer, e.g. a ratio leaving no benign image, gets a row
    with its reason and no metrics instead of stopping the sweep)."""
    strategies = [check_strategy(s) for s in strategies]
    ratios = [check_ratio(r) for r in ratios]
    if not strategies or not ratios:
        raise LabError("the sweep needs at least one strategy and one ratio.")
    rows, total, done = [], len(strategies) * len(ratios), 0
    t0 = time.perf_counter()
    for ratio in ratios:
        for strategy in strategies:
            row = {"strategy": strategy, "ratio": float(ratio)}
            try:
                res = lab.score(strategy, ratio, split=split, seed=seed, magnification=magnification, head=head,
                                test_prevalence=test_prevalence, curves=False)
                row.update({k: res.row[k] for k in SWEEP_KEYS[2:] + EXTRA_KEYS})
                row.update({"threshold": res.threshold, "train_benign": res.sizes["train"]["benign"],
                            "train_malignant": res.sizes["train"]["malignant"], "error": None})
            except LabError as exc:
                row.update({k: None for k in SWEEP_KEYS[2:] + EXTRA_KEYS})
                row.update({"threshold": None, "train_benign": None, "train_malignant": None, "error": str(exc)})
            rows.append(row)
            done += 1
            if on_progress:
                on_progress(done, total)
    df = pd.DataFrame(rows)
    df.attrs["elapsed_s"] = time.perf_counter() - t0
    df.attrs["split"] = split
    return df
