"""The two ways a run trains, behind one small interface the loop calls:

``prepare(resuming=)`` (what trains, caches), ``train()`` (train/eval states for an epoch),
``batches(order, gen)`` (one epoch's ``(x, y)`` on the device), ``after_epoch()`` (work before
validation; returns fields for the epoch record), ``val_probs()`` and ``test_probs(best_model)``.

- :class:`QuickMode` (CPU demos): the registry's ``split(model)`` cuts the network into a frozen
  ``stem`` and a trainable ``top``. The stem runs once per training image and per dihedral view
  (up to the 8 flips and rotations) and its outputs are cached; epochs then train only the top
  from the cache, an order of magnitude faster than fine-tuning. Without pretrained weights
  (offline) the stem is random, and a random ResNet stem as initialised for training scrambles
  the morphology on its way to layer 3; quick mode then prepares it as a shallow random-feature
  extractor (residual branches zeroed, :mod:`dala.models.init`; BatchNorm calibrated on the
  training images, :func:`calibrate_batchnorm`), and the top learns the synthetic classes from
  it (README, "Measured figures"). The run records ``weight_source`` so nobody mistakes it for
  ImageNet features. The top's BatchNorm statistics are recomputed over the cached features
  before every validation and checkpoint.
- :class:`FullMode` (GPUs): everything trains, images are decoded once and kept in memory
  (``BreakHisDataset(cache=True)``), with the dihedral + mild colour jitter augmentation: the
  dihedral views per image (cheap uint8 copies), the stain jitter and normalisation per batch on
  the device (:class:`dala.data.augment.TrainBatchTransform`; each image still gets its own jitter).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from dala.train.config import TrainConfig
from dala.train.evaluation import calibrate_batchnorm, extract_features, image_batches, predict_probs
from dala.train.inputs import EpochOrder, RunData


@dataclass
class Setup:
    """What both modes share: the run's config, data, model and machinery."""

    config: TrainConfig
    data: RunData
    model: torch.nn.Module
    spec: object
    size: int
    device: torch.device
    dtype: torch.dtype | None
    conv_net: bool  # channels_last inputs
    status: Callable[..., object]  # RunFolder.update_status
    stain: object = None  # dala.data.stain.StainStep, applied where images are decoded; None: no normalisation

    @property
    def mean(self):
        return self.spec.mean

    @property
    def std(self):
        return self.spec.std


class QuickMode:
    def __init__(self, s: Setup):
        self.s = s
        self.stem, self.trainable = s.spec.split(s.model)
        self.feature_time = 0.0

    def _features(self, stem, frame, views, label):
        s = self.s
        s.status(phase=f"caching stem features ({label})")
        return extract_features(stem, frame, size=s.size, mean=s.mean, std=s.std, views=views, device=s.device,
                                dtype=s.dtype, batch_size=s.config.batch_size, channels_last=s.conv_net, stain=s.stain,
                                on_progress=lambda d, n: s.status(phase=f"caching stem features ({label}) {d}/{n}"))

    def prepare(self, *, resuming: bool) -> None:
        from dala.models.init import zero_init_residual

        s, stem = self.s, self.stem
        stem.eval()
        for p in stem.parameters():
            p.requires_grad_(False)
        views = list(range(s.config.quick_views))
        t_feat = time.time()
        random_weights = getattr(s.model, "dala_config", {}).get("weight_source", "random").startswith("random")
        if random_weights and not resuming:  # offline: make random features worth learning from
            zero_init_residual(stem)  # see dala.models.init: the stem passes shallow features through
            zero_init_residual(self.trainable)  # the top starts as its shortcuts and grows its branches
            s.status(phase="preparing the random stem: residual branches zeroed, BatchNorm calibrated on training images")
            calibrate_batchnorm(stem, image_batches(s.data.train, size=s.size, mean=s.mean, std=s.std,
                                                    batch_size=s.config.batch_size, stain=s.stain),
                                device=s.device, dtype=s.dtype, channels_last=s.conv_net)
            stem.eval()
        self.train_feats = self._features(stem, s.data.train, views, "train")  # (N, V, ...)
        self.val_feats = self._features(stem, s.data.val, [0], "val") if len(s.data.val) else None
        self.feature_time = time.time() - t_feat
        if not resuming:
            self.calibrate_top()  # also a data-dependent initialisation of the top

    def calibrate_top(self) -> None:
        """See :func:`calibrate_batchnorm` (1); the views cycle so all of them are seen."""
        s, feats, bs = self.s, self.train_feats, self.s.config.batch_size
        calibrate_batchnorm(self.trainable, (feats[i:i + bs, (i // bs) % feats.shape[1]] for i in range(0, len(feats), bs)),
                            device=s.device, dtype=s.dtype)

    def train(self, module: torch.nn.Module) -> None:
        module.train()
        self.stem.eval()

    def batches(self, order: np.ndarray, gen: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        s, targets = self.s, self.s.data.train["target"].to_numpy()
        for start in range(0, len(order), s.config.batch_size):
            idx = order[start:start + s.config.batch_size]
            y = torch.as_tensor(targets[idx], device=s.device)
            view = torch.randint(0, self.train_feats.shape[1], (len(idx),), generator=gen)
            yield self.train_feats[torch.as_tensor(idx), view].to(s.device, non_blocking=True), y  # (B, ...) features

    def after_epoch(self) -> dict:
        self.s.status(phase="recalibrating BatchNorm on the cached training features")
        t_cal = time.time()
        self.calibrate_top()
        return {"bn_recalibration_s": time.time() - t_cal}

    def val_probs(self) -> np.ndarray:
        s = self.s
        return predict_probs(self.trainable, s.data.val, features=self.val_feats, size=s.size, mean=s.mean, std=s.std,
                             device=s.device, dtype=s.dtype, batch_size=s.config.batch_size, channels_last=s.conv_net,
                             stain=s.stain)

    def test_probs(self, best_model: torch.nn.Module, *, part: str = "test") -> np.ndarray:
        """``best_model``'s probabilities on a split part (``"test"``, or ``"val"`` for calibration)."""
        s = self.s
        stem_best, best_top = s.spec.split(best_model)
        feats = extract_features(stem_best, getattr(s.data, part), size=s.size, mean=s.mean, std=s.std, views=[0], device=s.device,
                                 dtype=s.dtype, batch_size=s.config.batch_size, channels_last=s.conv_net,
                                 stain=s.stain)
        return predict_probs(best_top, features=feats, device=s.device, dtype=s.dtype, batch_size=s.config.batch_size)


class FullMode:
    def __init__(self, s: Setup):
        self.s = s
        self.trainable = s.model
        self.feature_time = 0.0

    def prepare(self, *, resuming: bool) -> None:
        from dala.data.augment import TrainBatchTransform
        from dala.data.dataset import BreakHisDataset, build_transform

        s = self.s
        # per image only the dihedral view (uint8); colour jitter + normalisation run per batch
        train_ds = BreakHisDataset(s.data.train, transform=build_transform("dihedral", size=s.size), cache=True,
                                   cache_size=s.size, stain=s.stain)
        self.batch_transform = TrainBatchTransform(mean=s.mean, std=s.std).to(s.device)
        s.status(phase="decoding training images")
        train_ds.preload(threads=min(8, os.cpu_count() or 1),
                         on_progress=lambda d, n: s.status(phase=f"decoding training images {d}/{n}"))
        self.epoch_order = EpochOrder()
        workers = s.config.num_workers
        if workers is None:
            workers = min(8, os.cpu_count() or 1) if s.device.type == "cuda" else 0
        self.loader = torch.utils.data.DataLoader(train_ds, batch_size=s.config.batch_size, sampler=self.epoch_order,
                                                  num_workers=workers, pin_memory=s.device.type == "cuda",
                                                  persistent_workers=workers > 0, drop_last=False)

    def train(self, module: torch.nn.Module) -> None:
        module.train()

    def batches(self, order: np.ndarray, gen: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        s = self.s
        self.epoch_order.order = order.tolist()
        for x, y in self.loader:  # (B, 3, S, S) uint8 dihedral views, (B,): the loader follows epoch_order
            x, y = x.to(s.device, non_blocking=True), y.to(s.device, non_blocking=True)
            x = self.batch_transform(x, generator=gen)  # (B, 3, S, S) float: each image's stain jitter, normalised
            if s.conv_net:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y

    def after_epoch(self) -> dict:
        return {}

    def val_probs(self) -> np.ndarray:
        s = self.s
        return predict_probs(s.model, s.data.val, size=s.size, mean=s.mean, std=s.std, device=s.device, dtype=s.dtype,
                             batch_size=s.config.batch_size, channels_last=s.conv_net, stain=s.stain)

    def test_probs(self, best_model: torch.nn.Module, *, part: str = "test") -> np.ndarray:
        s = self.s
        return predict_probs(best_model, getattr(s.data, part), size=s.size, mean=s.mean, std=s.std, device=s.device,
                             dtype=s.dtype, batch_size=s.config.batch_size, channels_last=s.conv_net, stain=s.stain)


def make_mode(s: Setup) -> QuickMode | FullMode:
    return QuickMode(s) if s.config.mode == "quick" else FullMode(s)
