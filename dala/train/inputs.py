"""What a run trains and is scored on: the dataset, its split into train / val / test (checked
before any training: a part the split cannot fill is told with what to change), each epoch's
order, the validation tiles."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dala.data import CLASSES, load_index, make_split, resolve_dataset
from dala.data.splits import Split
from dala.errors import DataError, RunError
from dala.train.config import TrainConfig
from dala.train.imbalance import balanced_sampler, oversample_indices, subsample_to_ratio
from dala.train.machinery import Dist


class EpochOrder(torch.utils.data.Sampler):
    """The DataLoader's sampler: yields whatever order the loop set for this epoch (see
    :func:`epoch_indices`), so persistent workers survive across epochs."""

    def __init__(self):
        self.order: list[int] = []

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


@dataclass
class RunData:
    root: Path
    split: Split
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    source: str


def prepare_data(config: TrainConfig, *, progress: bool = True) -> RunData:
    """Index the dataset, split it (or load ``split_file``) and check every part can be used."""
    from dala.train.folder import load_split

    root = resolve_dataset(config.data_root, progress=progress)
    index = load_index(root)
    present = sorted(set(index["label"].tolist())) if len(index) else []
    if len(present) < 2:
        missing = [c for c in CLASSES if c not in present]
        raise DataError(f"the dataset has only one class ({', '.join(present) or 'no images'}): add images of the other "
                        f"class ({', '.join(missing)}) to {root}.")
    if config.split_file:
        split = load_split(config.split_file)
    else:
        split = make_split(index, by=config.split_mode, test=config.test_fraction, val=config.val_fraction,
                           seed=config.seed, magnification=config.magnification)
    frames = split.frames(index)
    check_parts(frames, config=config, index=index)
    train = subsample_to_ratio(frames["train"], config.target_ratio, seed=config.seed)
    if config.max_train_images and len(train) > config.max_train_images:
        train = train.sample(n=config.max_train_images, random_state=config.seed).sort_index()
    if train["target"].nunique() < 2:
        raise RunError("the training part holds only one class; use more patients, another seed or no --target-ratio.")
    return RunData(root=Path(root), split=split, train=train.reset_index(drop=True), val=frames["val"],
                   test=frames["test"], source=index.attrs.get("source", "real"))


def check_parts(frames: dict[str, pd.DataFrame], *, config: TrainConfig, index: pd.DataFrame) -> None:
    """Refuse, before training, a split whose train or test part is empty (or whose validation
    part is empty although ``val_fraction`` asks for one), saying what the data supports."""
    sub = index if config.magnification is None else index[index["magnification"] == config.magnification]
    n_img, n_pat = len(sub), sub["patient"].nunique() if len(sub) else 0
    counts = ", ".join(f"{p} {len(frames.get(p, ()))}" for p in ("train", "val", "test"))
    where = f"{n_img} images of {n_pat} patients" + (f" at {config.magnification}X" if config.magnification else "")
    wanted = ["train", "test"] + (["val"] if config.val_fraction > 0 and not config.split_file else [])
    empty = [p for p in wanted if frames.get(p) is None or frames[p].empty]
    if not empty:
        return
    if config.split_file:
        fix = f"use a split file made for this dataset (`python -m dala data split DATA_ROOT --out split.json`), or leave --split-file out"
    elif config.split_mode == "patient":
        fix = (f"a patient-level split gives each part whole patients, so with {n_pat} patients test_fraction "
               f"{config.test_fraction} / val_fraction {config.val_fraction} leave none for the {' and '.join(empty)} part: "
               "add patients, raise those fractions, choose all magnifications, or set val_fraction 0")
    else:
        fix = "add images, or raise test_fraction / val_fraction"
    raise DataError(f"the split leaves the {' and '.join(empty)} part empty ({counts} images; the data holds {where}): {fix}.")


def epoch_indices(targets: np.ndarray, strategy: str, *, seed: int, epoch: int, dist: Dist) -> np.ndarray:
    """The training order of one epoch: the same on every rank (seeded by seed and epoch), then
    each rank takes its shard, cut to equal length so DDP ranks step in lockstep."""
    gen = torch.Generator().manual_seed(seed * 1000 + epoch)
    if strategy == "oversample":
        base = oversample_indices(targets, seed=seed)
        order = base[torch.randperm(len(base), generator=gen).numpy()]
    elif strategy == "sampler":
        sampler = balanced_sampler(targets, seed=seed * 1000 + epoch)
        order = np.fromiter(iter(sampler), dtype=np.int64)
    else:
        order = torch.randperm(len(targets), generator=gen).numpy()
    if dist.enabled:
        per_rank = len(order) // dist.world
        order = order[dist.rank::dist.world][:per_rank]
    return order


def choose_tiles(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """A fixed strip of validation images, half of each class where possible."""
    if n <= 0 or frame.empty:
        return frame.iloc[:0]
    parts = []
    for t in (0, 1):
        sub = frame[frame["target"] == t]
        parts.append(sub.sample(n=min(len(sub), (n + 1 - t) // 2), random_state=seed))
    return pd.concat(parts)


def make_stain_step(config: TrainConfig, data: RunData, *, size: int):
    """The run's stain step (:class:`dala.data.stain.StainStep`), or None for ``stain_norm="none"``:
    fitted to ``stain_reference``, else to the per-dataset default reference chosen from the
    training images (deterministic, so a resumed run fits the same). Images are normalised at the
    model's input ``size``."""
    if config.stain_norm == "none":
        return None
    from dala.data.stain import StainNormalizer, StainStep, default_reference

    reference = config.stain_reference or default_reference(data.train["path"].tolist())
    name = f"stain reference {reference!r}" + ("" if config.stain_reference else " (the dataset's default)")
    return StainStep(StainNormalizer(config.stain_norm, reference=reference, reference_name=name), size=size)

