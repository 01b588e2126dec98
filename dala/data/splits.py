"""Train/val/test splits that keep each patient on one side, and the leaky image-level split
kept only to show why that matters.

The grouping key is the patient key from :mod:`dala.data.breakhis` (``<year>-<numeric stem of the
slide id>``), which keeps BreakHis's traps together: slide 13412 labelled both DC and LC, and ids
sharing a numeric stem (22549AB/22549CD, 15570/15570C, ...). The official protocol (Spanhol et al.
2016) is 70/30 by patient, five random trials, each magnification separately:
:func:`official_trials`.

A protocol is code: :meth:`Split.save` writes a JSON file with a content hash, and both making
and loading a patient split assert that no patient appears in two parts
(:class:`~dala.errors.SplitLeakError` names the patients).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from dala.data.breakhis import CLASSES, MAGNIFICATIONS, SPLIT_BY, parse_name
from dala.errors import DataError, SplitLeakError
from dala.io import atomic_write_json

FORMAT = "dala-split/1"
PARTS = ("train", "val", "test")
GROUP_KEY = "patient = <year>-<numeric stem of slide id> (keeps 13412 DC/LC and 22549AB/CD-style ids together)"


@dataclass
class Split:
    by: str  # "patient" | "image"
    parts: dict[str, list[str]]  # part -> sorted image ids
    seed: int = 0
    test_fraction: float = 0.3
    val_fraction: float = 0.0
    magnification: int | None = None
    name: str = ""
    meta: dict = field(default_factory=dict)

    # -- content -------------------------------------------------------------------------
    def patients(self) -> dict[str, list[str]]:
        """Patients in each part, derived from the image ids (the names carry the key)."""
        return {p: sorted({parse_name(i + ".png").patient for i in ids}) for p, ids in self.parts.items()}

    def leaking_patients(self) -> list[str]:
        """Patients whose images sit in more than one part (empty for a patient split)."""
        seen: dict[str, set[str]] = {}
        for part, pats in self.patients().items():
            for pat in pats:
                seen.setdefault(pat, set()).add(part)
        return sorted(p for p, parts in seen.items() if len(parts) > 1)

    def assert_patient_disjoint(self) -> None:
        leaks = self.leaking_patients()
        if leaks:
            shown = ", ".join(leaks[:10]) + (f" and {len(leaks) - 10} more" if len(leaks) > 10 else "")
            raise SplitLeakError(
                f"patient-level split leaks {len(leaks)} patient(s) across train/val/test: {shown}. "
                "Remake it with make_split(..., by='patient')."
            )

    def content_hash(self) -> str:
        payload = json.dumps({"by": self.by, "magnification": self.magnification, "parts": self.parts}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def counts(self) -> dict[str, dict[str, int]]:
        pats = self.patients()
        return {p: {"images": len(self.parts[p]), "patients": len(pats[p])} for p in self.parts}

    def frames(self, index: pd.DataFrame) -> dict[str, pd.DataFrame]:
        """The index rows of each part. Raises if the split names images the index lacks."""
        by_id = index.set_index("image_id", drop=False)
        out = {}
        for part, ids in self.parts.items():
            missing = [i for i in ids if i not in by_id.index]
            if missing:
                raise DataError(
                    f"split part {part!r} names {len(missing)} image(s) not in this dataset (e.g. {missing[0]}): "
                    "the split was made for another dataset; make a new one for this folder."
                )
            out[part] = by_id.loc[ids].reset_index(drop=True)
        return out

    # -- files ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "name": self.name,
            "by": self.by,
            "group_key": GROUP_KEY if self.by == "patient" else "none (images split at random: patients leak)",
            "seed": self.seed,
            "test_fraction": self.test_fraction,
            "val_fraction": self.val_fraction,
            "magnification": self.magnification,
            "counts": self.counts(),
            "leaking_patients": self.leaking_patients(),
            "meta": self.meta,
            "parts": self.parts,
            "sha256": self.content_hash(),
        }

    def save(self, path: str | os.PathLike) -> Path:
        if self.by == "patient":
            self.assert_patient_disjoint()
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "split") -> "Split":
        """A split from its JSON form; anything malformed (wrong shape, wrong types, ids that are
        not BreakHis names, a hash that does not match) is one :class:`DataError` naming ``source``."""
        fix = "make a new one with `python -m dala data split DATA_ROOT --out split.json`"
        if not isinstance(d, dict):
            raise DataError(f"{source} is not a DALA split file (it holds a JSON {type(d).__name__}, not an object); {fix}.")
        if d.get("format") != FORMAT or "parts" not in d:
            raise DataError(f"{source} is not a DALA split file (format {d.get('format')!r}); {fix}.")
        parts = d["parts"]
        if not isinstance(parts, dict) or not parts or not set(parts) <= set(PARTS):
            raise DataError(f"{source} is malformed: 'parts' must map {', '.join(PARTS)} to lists of image ids; {fix}.")
        for part, ids in parts.items():
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise DataError(f"{source} is malformed: part {part!r} must be a list of image ids (strings); {fix}.")
        if d.get("by") not in SPLIT_BY:
            raise DataError(f"{source} is malformed: 'by' is {d.get('by')!r}, not one of {', '.join(SPLIT_BY)}; {fix}.")
        fields = {"seed": (int,), "test_fraction": (int, float), "val_fraction": (int, float), "name": (str,),
                  "meta": (dict,), "magnification": (int, type(None))}
        for key, types in fields.items():
            if key in d and (not isinstance(d[key], types) or isinstance(d[key], bool)):
                raise DataError(f"{source} is malformed: {key!r} is {d[key]!r} ({type(d[key]).__name__}); {fix}.")
        if d.get("magnification") is not None and d["magnification"] not in MAGNIFICATIONS:
            raise DataError(f"{source} is malformed: magnification {d['magnification']!r} is not one of "
                            f"{', '.join(map(str, MAGNIFICATIONS))}; {fix}.")
        split = cls(
            by=d["by"], parts={p: list(v) for p, v in parts.items()}, seed=d.get("seed", 0),
            test_fraction=d.get("test_fraction", 0.3), val_fraction=d.get("val_fraction", 0.0),
            magnification=d.get("magnification"), name=d.get("name", ""), meta=d.get("meta", {}),
        )
        try:
            split.patients()  # every id must be a BreakHis name (the patient key comes from it)
        except DataError as exc:
            raise DataError(f"{source} is malformed: {exc}; {fix}.") from None
        if d.get("sha256") and d["sha256"] != split.content_hash():
            raise DataError(f"{source} was modified after it was made (content hash mismatch); remake the split rather than editing it.")
        if split.by == "patient":
            split.assert_patient_disjoint()
        return split

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Split":
        """Read a split file; every way it can be wrong is a :class:`DataError` naming it."""
        path = Path(path)
        label = f"split file {str(path)!r}"
        if path.is_dir():
            raise DataError(f"{label} is a folder: pass the split's .json file.")
        if not path.is_file():
            raise DataError(f"{label} does not exist.")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{label} is not valid JSON ({exc}); make a new one with `python -m dala data split DATA_ROOT --out split.json`.") from exc
        except OSError as exc:
            raise DataError(f"{label} cannot be read ({exc.strerror or exc}).") from exc
        except RecursionError:
            raise DataError(f"{label} is nested too deeply to be a split file.") from None
        return cls.from_dict(d, source=label)


# -- making splits -----------------------------------------------------------------------

def _select(index: pd.DataFrame, magnification: int | None) -> pd.DataFrame:
    if index.empty:
        raise DataError("cannot split an empty index.")
    if magnification is None:
        return index
    sub = index[index["magnification"] == int(magnification)]
    if sub.empty:
        raise DataError(f"no images at {magnification}X in this dataset (available: {sorted(index['magnification'].unique().tolist())}).")
    return sub


def _require_both_classes(frame: pd.DataFrame, magnification: int | None) -> None:
    """A classifier needs both classes: say which one the data lacks and what to add (no seed
    can fix this)."""
    present = sorted(set(frame["label"].tolist()), key=CLASSES.index)
    if len(present) >= 2:
        return
    missing = [c for c in CLASSES if c not in present]
    at = f" at {magnification}X" if magnification is not None else ""
    raise DataError(
        f"the dataset{at} has only one class ({', '.join(present)}: {len(frame)} images of "
        f"{frame['patient'].nunique()} patients): add {' and '.join(missing)} images (BreakHis names "
        f"like SOB_{missing[0][0].upper()}_...) to the folder, or choose a dataset with both classes."
    )


def _patient_labels(frame: pd.DataFrame) -> pd.Series:
    """One class per patient (majority of its images)."""
    return frame.groupby("patient")["target"].agg(lambda t: int(round(t.mean())))


def _patient_subtypes(frame: pd.DataFrame) -> pd.Series:
    """One subtype per patient (its most frequent; slide 13412 is both DC and LC)."""
    return frame.groupby("patient")["subtype"].agg(lambda s: s.value_counts().sort_index().idxmax())


def _deal(pats: list[str], test: float, val: float, assignment: dict[str, str]) -> None:
    """Deal one stratum's (shuffled) patients to test, val and train by the given fractions,
    at least one to test and val where the stratum has three or more, at least one to train."""
    n = len(pats)
    n_test, n_val = int(round(test * n)), int(round(val * n))
    if n >= 3:
        n_test = max(n_test, 1)
        n_val = max(n_val, 1) if val > 0 else 0
    while n_test + n_val >= n and n > 0:  # keep at least one training patient
        if n_val > 0:
            n_val -= 1
        elif n_test > 0:
            n_test -= 1
    for i, pat in enumerate(pats):
        assignment[pat] = "test" if i < n_test else "val" if i < n_test + n_val else "train"


def _ensure_both_classes(assignment: dict[str, str], labels: pd.Series, rng, *, parts) -> None:
    """Subtype strata of one or two patients all go to training; if that leaves a part without a
    class, move a random training patient of that class there (never the last one)."""
    for part in parts:
        for cls in sorted(labels.unique()):
            if any(assignment[p] == part and labels[p] == cls for p in assignment):
                continue
            pool = sorted(p for p in assignment if assignment[p] == "train" and labels[p] == cls)
            if len(pool) > 1:  # never empty training of a class
                assignment[pool[int(rng.integers(len(pool)))]] = part


def make_split(index: pd.DataFrame, *, by: str = "patient", test: float = 0.3, val: float = 0.15,
               seed: int = 0, magnification: int | None = None, name: str = "") -> Split:
    """Stratified train/val/test split.

    ``by="patient"``: the patients of each subtype are shuffled with ``seed`` and dealt to test and
    val by the given fractions of *patients* (the official protocol counts patients), at least one
    where the subtype has three or more; the rest train. Every part then holds both classes.
    ``by="image"``: images are split at random, stratified by class; patients leak (see
    :meth:`Split.leaking_patients`).
    ``test``/``val`` are fractions of the whole. ``magnification`` restricts to one.
    """
    if by not in SPLIT_BY:
        raise DataError(f"split mode {by!r} is unknown: use 'patient' or 'image'.")
    if not (0 < test < 1) or not (0 <= val < 1) or test + val >= 1:
        raise DataError(f"fractions test={test}, val={val} must be in (0, 1) and leave room for training.")
    frame = _select(index, magnification)
    _require_both_classes(frame, magnification)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[str]] = {p: [] for p in PARTS}
    if by == "patient":
        # Stratify by subtype, not only by class: with a few patients per subtype (BreakHis has 3
        # phyllodes and 4 adenosis folders) a class-only split can leave a subtype out of training
        # entirely and test on tissue the model has never seen.
        labels, subtypes = _patient_labels(frame), _patient_subtypes(frame)
        assignment: dict[str, str] = {}
        for sub in sorted(subtypes.unique()):
            pats = sorted(subtypes[subtypes == sub].index)
            rng.shuffle(pats)
            _deal(pats, test, val, assignment)
        _ensure_both_classes(assignment, labels, rng, parts=("test", "val") if val > 0 else ("test",))
        for image_id, pat in zip(frame["image_id"], frame["patient"]):
            parts[assignment[pat]].append(image_id)
    else:
        for cls in sorted(frame["target"].unique()):
            ids = sorted(frame.loc[frame["target"] == cls, "image_id"])
            rng.shuffle(ids)
            n = len(ids)
            n_test, n_val = int(round(test * n)), int(round(val * n))
            parts["test"] += ids[:n_test]
            parts["val"] += ids[n_test:n_test + n_val]
            parts["train"] += ids[n_test + n_val:]
    parts = {p: sorted(v) for p, v in parts.items()}
    split = Split(by=by, parts=parts, seed=seed, test_fraction=test, val_fraction=val,
                  magnification=magnification, name=name or f"{by}-seed{seed}" + (f"-{magnification}X" if magnification else ""))
    if by == "patient":
        split.assert_patient_disjoint()
    return split


def official_trials(index: pd.DataFrame, *, n_trials: int = 5, test: float = 0.3, val: float = 0.0,
                    seed: int = 0, magnification: int | None = None) -> list[Split]:
    """The BreakHis protocol: ``n_trials`` random 70/30 patient-wise splits (seeds seed..seed+n-1)."""
    return [make_split(index, by="patient", test=test, val=val, seed=seed + t, magnification=magnification,
                       name=f"official-trial{t + 1}" + (f"-{magnification}X" if magnification else ""))
            for t in range(n_trials)]


def kfold(index: pd.DataFrame, *, k: int = 5, seed: int = 0, magnification: int | None = None,
          by: str = "patient") -> list[Split]:
    """k folds, stratified by class; patient folds use scikit-learn's StratifiedGroupKFold."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    frame = _select(index, magnification).reset_index(drop=True)
    _require_both_classes(frame, magnification)
    if by == "patient":
        n_pat = frame["patient"].nunique()
        if n_pat < k:
            raise DataError(f"{k}-fold by patient needs at least {k} patients; this data has {n_pat}.")
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        folds = splitter.split(frame, frame["target"], groups=frame["patient"])
    else:
        folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(frame, frame["target"])
    out = []
    for f, (tr, te) in enumerate(folds):
        parts = {"train": sorted(frame.loc[tr, "image_id"]), "val": [], "test": sorted(frame.loc[te, "image_id"])}
        split = Split(by=by, parts=parts, seed=seed, test_fraction=round(1 / k, 4), magnification=magnification,
                      name=f"{by}-fold{f + 1}of{k}", meta={"fold": f, "k": k})
        if by == "patient":
            split.assert_patient_disjoint()
        out.append(split)
    return out
