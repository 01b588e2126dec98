"""One lab question, answered: fit a head for a setting and score it on the test patients.

:class:`Lab` joins a feature bank to its dataset index. ``lab.score(strategy=..., ratio=...,
threshold=..., test_prevalence=..., split="patient"|"image")`` returns a :class:`SettingResult`
(plain data: the setting, what produced the numbers, the sizes, every metric from
:func:`dala.metrics.classification_report`, the baselines, the curves). Fits are cached per
setting (threshold and test prevalence only re-score), so a slider move costs metrics only, and
whole answers are cached per question too: one Lab serves a class (``st.cache_resource``), and a
class asks the same few discrete questions, so the second student asking one gets it for free.
Both caches are single-flight: students asking the same new question at once wait for the one
computing it instead of each fitting it again (on a 2-core server they would share one GIL).

- **ratio**: benign training images per malignant one, by subsampling the training patients'
  images (:func:`dala.train.imbalance.subsample_to_ratio`); the validation and test parts are
  never subsampled.
- **test prevalence**: the share of malignant images the deployed model meets. The test
  patients' images are resampled by whole copies (every malignant image ``a`` times, every benign
  one ``b`` times, the smallest ``a``, ``b`` <= 40 that reach the share), so sensitivity,
  specificity, balanced accuracy and patient accuracy stay exactly what they were, and accuracy,
  precision, F1 and the PR curve move: the lesson, without sampling noise.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from typing import Any

import numpy as np
import pandas as pd

from dala.lab.common import (
    SPLITS,
    LabError,
    check_prevalence,
    check_ratio,
    check_strategy,
    check_threshold,
    lru_get,
    lru_put,
    ratio_label,
)
from dala.lab.heads import FittedHead, fit_head

MIN_IMAGES_PER_CLASS = 2
MIN_PATIENTS_PER_CLASS = 1
MAX_COPIES = 40
FIT_CACHE = 256
RESULT_CACHE = 1024  # answers (a few KB each: rows, sizes, curves of the test images)
CLASSES = ("benign", "malignant")


@dataclass
class SettingResult:
    setting: dict  # strategy, ratio, threshold, test_prevalence, split, seed, magnification, head
    provenance: dict  # dataset, source, encoder, weights, split description
    sizes: dict  # train / fitted / val / test / test_resampled counts
    threshold: float  # the decision threshold used
    strategy_threshold: float  # the strategy's own (0.5, or the validation-chosen one)
    row: dict  # flat headline metrics
    report: dict  # the whole classification_report of the test part
    baselines: dict  # "always malignant" / "always benign": flat rows on the same test images
    curves: dict | None = None  # dala.metrics.curve_points + the operating point
    timing_ms: dict = field(default_factory=dict)

    def to_dict(self, *, curves: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not curves:
            d.pop("curves", None)
        return d


def flat_row(report: dict) -> dict:
    """The numbers the page and the CLI show: :func:`dala.metrics.flat_metrics` (the one metric
    row), plus the precision of the malignant class (what a positive call is worth)."""
    from dala.metrics import flat_metrics

    row = flat_metrics(report)
    row["precision"] = ((report.get("per_class") or {}).get("malignant") or {}).get("precision")
    return row


def prevalence_copies(n_malignant: int, n_benign: int, prevalence: float, *, max_copies: int = MAX_COPIES) -> tuple[int, int]:
    """(a, b): copies of each malignant and benign image so that a*M / (a*M + b*B) is as near
    ``prevalence`` as whole copies up to ``max_copies`` allow."""
    if n_malignant == 0 or n_benign == 0:
        raise LabError("the test part needs images of both classes to change its prevalence.")
    target = Fraction(prevalence / (1 - prevalence) * n_benign / n_malignant).limit_denominator(10 ** 6)
    best, best_err = (1, 1), float("inf")
    for b in range(1, max_copies + 1):
        for a in {max(1, min(max_copies, int(target * b))), max(1, min(max_copies, int(target * b) + 1))}:
            share = a * n_malignant / (a * n_malignant + b * n_benign)
            err = abs(share - prevalence)
            if err < best_err - 1e-12:
                best, best_err = (a, b), err
    return best


class Lab:
    """A bank with its dataset: splits, fits and scores, cached and safe to share across threads."""

    def __init__(self, bank, index: pd.DataFrame, *, fixed_split=None):
        by_id = index.set_index("image_id", drop=False)
        missing = [i for i in bank.image_ids if i not in by_id.index]
        if missing:
            raise LabError(f"the feature bank names {len(missing)} image(s) this dataset lacks (e.g. {missing[0]}): it "
                           "was built for another dataset; rebuild it with `python -m dala lab bank`.")
        self.bank = bank
        self.frame = by_id.loc[bank.image_ids].reset_index(drop=True)  # row i = bank row i
        self.frame.attrs = dict(index.attrs)
        self.X = bank.features  # (N, D) memory-mapped
        self.y = self.frame["target"].to_numpy(np.int64)
        self.patients = self.frame["patient"].astype(str).to_numpy()
        self.mags = self.frame["magnification"].to_numpy()
        self.pos = {image_id: i for i, image_id in enumerate(bank.image_ids)}
        self.fixed_split = fixed_split  # a run's own split (checkpoint encoders): its test patients are new to it
        self._lock = threading.RLock()
        self._splits: dict = {}
        self._fits: OrderedDict = OrderedDict()
        self._baselines: OrderedDict = OrderedDict()
        self._results: OrderedDict = OrderedDict()
        self._inflight: dict = {}  # key -> threading.Event of the thread computing it

    def _cached(self, cache: OrderedDict, limit: int, key, compute):
        """``(value, hit)``: ``cache[key]``, or ``compute()`` stored under it. Single-flight: a
        second thread asking for a key being computed waits for that result (or, if it failed,
        computes it itself and meets the same error)."""
        while True:
            with self._lock:
                hit = lru_get(cache, key)
                if hit is not None:
                    return hit, True
                event = self._inflight.get((id(cache), key))
                if event is None:
                    event = self._inflight[(id(cache), key)] = threading.Event()
                    break
            event.wait()
            with self._lock:
                hit = lru_get(cache, key)
            if hit is not None:
                return hit, True
            # the computing thread failed: try ourselves (and raise its error, if it is one)
            with self._lock:
                if self._inflight.get((id(cache), key)) is event:
                    del self._inflight[(id(cache), key)]
        try:
            value = compute()
            with self._lock:
                lru_put(cache, key, value, limit)
            return value, False
        finally:
            with self._lock:
                if self._inflight.get((id(cache), key)) is event:
                    del self._inflight[(id(cache), key)]
            event.set()

    # -- provenance ---------------------------------------------------------------------
    @property
    def source(self) -> str:
        return self.bank.source

    @property
    def dataset_label(self) -> str:
        tag = "SYNTHETIC" if self.source == "synthetic" else "real"
        return f"{tag} dataset, {len(self.frame)} images, {self.frame['patient'].nunique()} patients"

    def split_label(self, split: str, seed: int, magnification: int | None) -> str:
        mag = f", {magnification}X only" if magnification else ", all magnifications"
        if split == "image":
            return f"image-level split (seed {seed}{mag}): patients LEAK into test"
        if self.fixed_split is not None:
            return f"the run's own patient-level split ({self.fixed_split.name or 'split.json'}{mag})"
        return f"patient-level split (seed {seed}{mag}): test patients are new"

    # -- splits -------------------------------------------------------------------------
    def parts(self, split: str = "patient", seed: int = 0, magnification: int | None = None) -> dict[str, np.ndarray]:
        """Bank row positions of the train / val / test parts."""
        if split not in SPLITS:
            raise LabError(f"split {split!r} is unknown: use 'patient' or 'image'.")
        key = (split, int(seed), magnification)
        with self._lock:
            if key in self._splits:
                return self._splits[key]
        from dala.data.splits import make_split
        from dala.errors import DataError

        try:
            if split == "patient" and self.fixed_split is not None:
                sp = self.fixed_split
                ids = {p: [i for i in v if magnification is None or self.mags[self.pos[i]] == magnification]
                       for p, v in sp.parts.items()}
            else:
                sp = make_split(self.frame, by=split, seed=int(seed), magnification=magnification)
                ids = sp.parts
        except DataError as exc:
            raise LabError(f"cannot split this dataset: {exc}") from None
        try:
            out = {p: np.array(sorted(self.pos[i] for i in ids.get(p, [])), dtype=np.int64) for p in ("train", "val", "test")}
        except KeyError as exc:
            raise LabError(f"the split names image {exc} that the feature bank lacks; rebuild the bank.") from None
        with self._lock:
            self._splits[key] = out
        return out

    def _counts(self, rows: np.ndarray) -> dict[str, int]:
        y = self.y[rows]
        pats = pd.Series(self.patients[rows])
        return {"benign": int((y == 0).sum()), "malignant": int((y == 1).sum()),
                "benign_patients": int(pats[y == 0].nunique()), "malignant_patients": int(pats[y == 1].nunique())}

    def training_rows(self, train: np.ndarray, ratio: float | None, seed: int) -> np.ndarray:
        """The training rows after subsampling to ``ratio``, or a LabError saying why it cannot be."""
        from dala.train.imbalance import subsample_to_ratio

        c = self._counts(train)
        for cls in CLASSES:
            if c[f"{cls}_patients"] < MIN_PATIENTS_PER_CLASS:
                raise LabError(f"too few {cls} patients for training: the training part holds {c[f'{cls}_patients']} "
                               f"{cls} patient(s). Use a dataset (or magnification) with more {cls} patients, or "
                               "another split seed.")
        if ratio is None:
            return train
        nb, nm = c["benign"], c["malignant"]
        keep_b, keep_m = (int(round(ratio * nm)), nm) if nb / nm > ratio else (nb, int(round(nb / ratio)))
        if keep_b < 1:
            raise LabError(f"ratio {ratio:g} ({ratio_label(ratio)}) leaves no benign training image: the training "
                           f"part has {nm} malignant images, so the smallest ratio here is about "
                           f"{MIN_IMAGES_PER_CLASS / nm:.3g}. Use a larger ratio or a larger dataset.")
        if keep_m < 1:
            raise LabError(f"ratio {ratio:g} ({ratio_label(ratio)}) leaves no malignant training image: the training "
                           f"part has {nb} benign images, so the largest ratio here is about "
                           f"{nb / MIN_IMAGES_PER_CLASS:.3g}. Use a smaller ratio or a larger dataset.")
        if min(keep_b, keep_m) < MIN_IMAGES_PER_CLASS:
            cls = "benign" if keep_b < keep_m else "malignant"
            bound = (f"at least {MIN_IMAGES_PER_CLASS / nm:.3g}" if cls == "benign"
                     else f"at most {nb / MIN_IMAGES_PER_CLASS:.3g}")
            raise LabError(f"ratio {ratio:g} ({ratio_label(ratio)}) leaves {min(keep_b, keep_m)} {cls} training "
                           f"image(s), too few to fit on (at least {MIN_IMAGES_PER_CLASS}): use a ratio {bound} "
                           "here, or a dataset with more patients.")
        frame = pd.DataFrame({"target": self.y[train]}, index=train)
        return subsample_to_ratio(frame, ratio, seed=seed).index.to_numpy(np.int64)

    # -- fits ---------------------------------------------------------------------------
    def fit(self, strategy: str, ratio: float | None, *, split: str = "patient", seed: int = 0,
            magnification: int | None = None, head: str = "linear") -> dict:
        """The fitted head of a setting and its probabilities on val and test (cached)."""
        check_strategy(strategy)
        ratio = check_ratio(ratio)
        key = (strategy, ratio, split, int(seed), magnification, head)
        return self._cached(self._fits, FIT_CACHE, key,
                            lambda: self._fit(strategy, ratio, split, int(seed), magnification, head))[0]

    def _fit(self, strategy: str, ratio: float | None, split: str, seed: int, magnification: int | None,
             head: str) -> dict:
        t0 = time.perf_counter()
        parts = self.parts(split, seed, magnification)
        if len(parts["test"]) == 0:
            raise LabError("this split has no test images; use a dataset with more patients.")
        tc = self._counts(parts["test"])
        for cls in CLASSES:
            if tc[cls] == 0:
                have = int(pd.Series(self.patients[self.y == CLASSES.index(cls)]).nunique())
                raise LabError(f"too few {cls} patients: the test part holds no {cls} image (the data has {have} "
                               f"{cls} patient(s){'' if magnification is None else f' at {magnification}X'}; a "
                               "patient-level split needs about 3 of each class). Use a dataset with more "
                               f"{cls} patients, all magnifications, or another split seed.")
        rows = self.training_rows(parts["train"], ratio, seed)
        base = None
        if strategy in ("logit_adjust", "threshold"):
            base = self.fit("none", ratio, split=split, seed=seed, magnification=magnification, head=head)["head"]
        Xtr = np.asarray(self.X[rows], dtype=np.float32)
        Xval = np.asarray(self.X[parts["val"]], dtype=np.float32) if len(parts["val"]) else None
        fitted: FittedHead = fit_head(Xtr, self.y[rows], strategy, head=head, seed=seed, X_val=Xval,
                                      y_val=self.y[parts["val"]] if len(parts["val"]) else None, base=base)
        out = {"head": fitted, "rows": rows, "parts": parts,
               "p_test": fitted.prob_malignant(np.asarray(self.X[parts["test"]], dtype=np.float32)),
               "fit_ms": (time.perf_counter() - t0) * 1000}
        return out

    # -- scores -------------------------------------------------------------------------
    def _test_arrays(self, test: np.ndarray, prevalence: float | None) -> tuple[np.ndarray, dict]:
        """Row positions of the (resampled) test set and its sizes."""
        y = self.y[test]
        nm, nb = int((y == 1).sum()), int((y == 0).sum())
        sizes = {"benign": nb, "malignant": nm, "patients": int(pd.Series(self.patients[test]).nunique()),
                 "prevalence": nm / max(1, nm + nb)}
        if prevalence is None:
            return np.arange(len(test)), {**sizes, "copies_benign": 1, "copies_malignant": 1}
        a, b = prevalence_copies(nm, nb, prevalence)
        local = np.concatenate([np.repeat(np.flatnonzero(y == 1), a), np.repeat(np.flatnonzero(y == 0), b)])
        return np.sort(local), {"benign": nb * b, "malignant": nm * a, "patients": sizes["patients"],
                                "prevalence": nm * a / (nm * a + nb * b), "copies_benign": b, "copies_malignant": a,
                                "asked_prevalence": prevalence}

    def score(self, strategy: str = "none", ratio: float | None = 1.0, *, threshold: float | None = None,
              test_prevalence: float | None = None, split: str = "patient", seed: int = 0,
              magnification: int | None = None, head: str = "linear", curves: bool = True) -> SettingResult:
        """Fit (or reuse) the head of a setting and score it on the test patients. The same
        question asked again (by anyone sharing this Lab) is answered from the cache:
        ``timing_ms["answer_cached"]`` says so, and the answer must be treated as read-only."""
        t0 = time.perf_counter()
        check_strategy(strategy)
        ratio = check_ratio(ratio)
        threshold = check_threshold(threshold)
        prevalence = check_prevalence(test_prevalence)
        key = (strategy, ratio, threshold, prevalence, split, int(seed), magnification, head, bool(curves))
        res, hit = self._cached(self._results, RESULT_CACHE, key, lambda: self._score(
            strategy, ratio, threshold, prevalence, split, int(seed), magnification, head, bool(curves)))
        if not hit:
            return res
        return replace(res, timing_ms={**res.timing_ms, "answer_cached": True, "fit_cached": True,
                                       "total": round((time.perf_counter() - t0) * 1000, 2)})

    def _score(self, strategy: str, ratio: float | None, threshold: float | None, prevalence: float | None,
               split: str, seed: int, magnification: int | None, head: str, curves: bool) -> SettingResult:
        from dala.metrics import classification_report, curve_points

        t0 = time.perf_counter()
        fit = self.fit(strategy, ratio, split=split, seed=seed, magnification=magnification, head=head)
        t_fit = time.perf_counter()
        head_: FittedHead = fit["head"]
        used = head_.threshold if threshold is None else threshold
        test = fit["parts"]["test"]
        local, test_sizes = self._test_arrays(test, prevalence)
        rows = test[local]
        y, p = self.y[rows], fit["p_test"][local]
        report = classification_report(y, p, patients=self.patients[rows], threshold=used)
        out_curves = None
        if curves:
            out_curves = curve_points(y, p)
            pred = p >= used
            tp, fp = int((pred & (y == 1)).sum()), int((pred & (y == 0)).sum())
            out_curves["operating_point"] = {
                "threshold": used, "fpr": fp / max(1, int((y == 0).sum())), "tpr": tp / max(1, int((y == 1).sum())),
                "precision": tp / (tp + fp) if tp + fp else None}
        sizes = {"train_available": self._counts(fit["parts"]["train"]), "train": self._counts(fit["rows"]),
                 "fitted": head_.fitted_counts, "val": self._counts(fit["parts"]["val"]), "test": test_sizes}
        setting = {"strategy": strategy, "ratio": None if ratio is None else float(ratio), "threshold": used,
                   "test_prevalence": prevalence, "split": split, "seed": int(seed), "magnification": magnification,
                   "head": head}
        enc = self.bank.encoder
        provenance = {"dataset": self.dataset_label, "source": self.source, "encoder": enc["label"],
                      "weights": enc["weights"], "split": self.split_label(split, seed, magnification),
                      "bank": str(self.bank.folder)}
        res = SettingResult(setting=setting, provenance=provenance, sizes=sizes, threshold=used,
                            strategy_threshold=head_.threshold, row=flat_row(report), report=report,
                            baselines=self.baselines(rows), curves=out_curves)
        res.timing_ms = {"fit": round((t_fit - t0) * 1000, 2), "fit_cached": bool(t_fit - t0 < fit["fit_ms"] / 1000),
                         "total": round((time.perf_counter() - t0) * 1000, 2)}
        return res

    def baselines(self, rows: np.ndarray) -> dict[str, dict]:
        """"always malignant" and "always benign" on the same test images (cached)."""
        from dala.metrics import classification_report

        y, pats = self.y[rows], self.patients[rows]

        def compute():
            return {name: flat_row(classification_report(y, np.full(len(y), value), patients=pats))
                    for name, value in (("always malignant", 1.0), ("always benign", 0.0))}

        return self._cached(self._baselines, FIT_CACHE, hash(rows.tobytes()), compute)[0]


def prevalence_table(lab: Lab, strategy: str, ratio: float | None, *, prevalences=(0.1, 0.2, 0.3, 0.5, 0.7, 0.9),
                     threshold: float | None = None, **question) -> pd.DataFrame:
    """The same head scored at several test prevalences: which metrics move with it."""
    rows = []
    for prev in prevalences:
        res = lab.score(strategy, ratio, threshold=threshold, test_prevalence=prev, curves=False, **question)
        rows.append({"prevalence": res.sizes["test"]["prevalence"], "asked": prev,
                     "test_benign": res.sizes["test"]["benign"], "test_malignant": res.sizes["test"]["malignant"],
                     **{k: res.row[k] for k in ("accuracy", "precision", "f1_macro", "sensitivity", "specificity",
                                                "balanced_accuracy", "gmean", "patient_accuracy")}})
    return pd.DataFrame(rows)
