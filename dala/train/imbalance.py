"""The imbalance lab: ways to keep a classifier from ignoring the benign minority.

- ``target_ratio`` subsamples the training set to a benign:malignant ratio (the classroom slider);
- ``class_weight``: cross-entropy weighted by inverse class frequency (scikit-learn's "balanced");
- ``sampler``: a ``WeightedRandomSampler`` that draws classes equally often;
- ``focal``: focal loss (Lin et al. 2017), down-weighting easy examples;
- ``oversample``: imbalanced-learn's ``RandomOverSampler`` repeats minority images.
Every choice is recorded in the run config and the report.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F


def subsample_to_ratio(frame: pd.DataFrame, ratio: float | None, *, seed: int = 0) -> pd.DataFrame:
    """Drop images of the class in excess so that benign:malignant == ``ratio`` (as near as
    whole images allow). ``None`` keeps the frame as it is."""
    if ratio is None:
        return frame
    benign, malignant = frame[frame["target"] == 0], frame[frame["target"] == 1]
    if len(benign) == 0 or len(malignant) == 0:
        return frame
    if len(benign) / len(malignant) > ratio:  # too many benign: keep ratio * malignant of them
        benign = benign.sample(n=max(1, int(round(ratio * len(malignant)))), random_state=seed)
    else:  # too many malignant
        malignant = malignant.sample(n=max(1, int(round(len(benign) / ratio))), random_state=seed)
    return pd.concat([benign, malignant]).sort_index()


def class_weights(targets, num_classes: int = 2) -> torch.Tensor:
    from sklearn.utils.class_weight import compute_class_weight

    targets = np.asarray(targets)
    present = np.unique(targets)
    w = compute_class_weight("balanced", classes=present, y=targets)
    out = np.ones(num_classes, dtype=np.float32)
    out[present] = w
    return torch.tensor(out, dtype=torch.float32)


def oversample_indices(targets, *, seed: int = 0) -> np.ndarray:
    """Indices into the training set with minority images repeated until classes are equal."""
    from imblearn.over_sampling import RandomOverSampler

    targets = np.asarray(targets)
    idx = np.arange(len(targets)).reshape(-1, 1)
    res, _ = RandomOverSampler(random_state=seed).fit_resample(idx, targets)
    return res.ravel()


def balanced_sampler(targets, *, seed: int = 0) -> torch.utils.data.WeightedRandomSampler:
    targets = np.asarray(targets)
    counts = np.bincount(targets)
    weights = 1.0 / counts[targets]
    gen = torch.Generator().manual_seed(seed)
    return torch.utils.data.WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), len(targets),
                                                  replacement=True, generator=gen)


class FocalLoss(torch.nn.Module):
    """Softmax focal loss: ``-(1 - p_t)^gamma * log p_t`` averaged, optionally class-weighted
    (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017)."""

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None):
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", weight if weight is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # (B, C), (B,)
        logp = F.log_softmax(logits.float(), dim=1)
        logp_t = logp.gather(1, target[:, None]).squeeze(1)  # (B,)
        loss = -((1 - logp_t.exp()) ** self.gamma) * logp_t
        if self.weight is not None:
            loss = loss * self.weight[target]
        return loss.mean()


def make_loss(strategy: str, targets, *, num_classes: int = 2, gamma: float = 2.0) -> torch.nn.Module:
    if strategy == "class_weight":
        return torch.nn.CrossEntropyLoss(weight=class_weights(targets, num_classes))
    if strategy == "focal":
        return FocalLoss(gamma=gamma)
    return torch.nn.CrossEntropyLoss()
