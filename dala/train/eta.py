"""How long a run takes: the form's estimate before it starts (:func:`estimate_seconds`), and the
live ETA in ``status.json`` while it trains (:class:`LiveEta`), which corrects the same model by
the step time measured in this run. The constants were fitted to runs on a 2-core CPU (README,
"Training": the measured figures and the command that measures them); a GPU is much faster, and
there the live ETA corrects itself within the first steps."""

from __future__ import annotations

import time
from dataclasses import dataclass

# fitted constants (README, "Training"); a ResNet50 at 224 px costs 1 unit per image and pass
DECODE_S = 0.002  # per PNG, decoded once (a 350x230 synthetic PNG; a 700x460 BreakHis one ~4x)
QUICK_STEM_IMAGES_PER_S = 52.0  # stem forward passes (feature cache)
QUICK_TOP_IMAGES_PER_S = 95.0  # training the top from cached features
QUICK_VAL_IMAGES_PER_S = 1000.0
FULL_TRAIN_IMAGES_PER_S = 15.3  # forward + backward of the whole network
FULL_AUGMENT_S = 0.001  # per training image
FULL_EVAL_IMAGES_PER_S = 30.0
EPOCH_FIXED_S = 0.15  # an epoch's own bookkeeping (status, metrics line)
VAL_BOOKKEEPING_S = 0.007  # per validation image, whatever the model: batching, metrics, tiles
CHECKPOINT_S_PER_25M = 0.8  # two checkpoint writes per epoch, per 25 M parameters
SLOWDOWN = 1.0  # overall factor between the components above and the wall clock of a run


@dataclass
class EstimateParts:
    """Seconds of each part of a run; ``train_step_s`` is one training step of ``batch_size``."""

    setup_s: float  # decoding, feature cache
    train_step_s: float
    steps_per_epoch: int
    epoch_overhead_s: float  # validation, checkpoints
    test_s: float
    epochs: int

    @property
    def total_s(self) -> float:
        return self.setup_s + self.epochs * (self.steps_per_epoch * self.train_step_s + self.epoch_overhead_s) + self.test_s


def estimate_parts(config, n_train: int, n_eval: int) -> EstimateParts:
    """The estimate by part. ``n_eval``: validation and test images together (about a third of
    them validate every epoch, the rest are tested once)."""
    from dala.models import get_spec

    spec = get_spec(config.model)
    size = config.image_size or spec.input_size_for(config.model_options)
    params = spec.param_count()
    cost = (params / 25e6) ** 0.5 * (size / 224) ** 2  # ResNet50 at 224 px = 1
    decode = (n_train + n_eval) * DECODE_S
    n_val = n_eval / 3
    per_epoch = EPOCH_FIXED_S + n_val * VAL_BOOKKEEPING_S + CHECKPOINT_S_PER_25M * params / 25e6
    bs = max(1, config.batch_size)
    steps = max(1, -(-n_train // bs))
    per_image = n_train / steps  # images in an average step
    if config.mode == "quick":
        # stem passes: every training image per view (+ one to calibrate a random stem), eval once
        passes = n_train * (config.quick_views + (0 if config.pretrained else 1)) + n_eval
        setup, test = decode + passes * cost / QUICK_STEM_IMAGES_PER_S, 0.0
        step = per_image * cost / QUICK_TOP_IMAGES_PER_S
        overhead = n_val * cost / QUICK_VAL_IMAGES_PER_S + per_epoch
    else:
        setup = decode
        step = per_image * (cost / FULL_TRAIN_IMAGES_PER_S + FULL_AUGMENT_S)
        overhead = n_val * cost / FULL_EVAL_IMAGES_PER_S + per_epoch
        test = (n_eval - n_val) * cost / FULL_EVAL_IMAGES_PER_S
    k = SLOWDOWN
    return EstimateParts(setup_s=setup * k, train_step_s=step * k, steps_per_epoch=steps, epoch_overhead_s=overhead * k,
                         test_s=test * k, epochs=config.epochs)


def estimate_seconds(config, n_train: int, n_eval: int) -> float:
    """A wall-clock estimate for the form (training process only: add its start-up)."""
    return estimate_parts(config, n_train, n_eval).total_s


class LiveEta:
    """The ETA written to ``status.json`` (``eta_s``): the remaining steps at the step time measured
    in this run, the remaining validations at their measured time (estimated, scaled by how much
    slower or faster the steps are than estimated, until the first one is measured), and the
    test pass likewise."""

    def __init__(self, parts: EstimateParts, *, epochs: int, steps_per_epoch: int):
        self.parts, self.epochs, self.steps_per_epoch = parts, epochs, steps_per_epoch
        self.train_s = 0.0
        self.steps = 0
        self.overhead_s: float | None = None

    def add_steps(self, n: int, seconds: float) -> None:
        self.steps += n
        self.train_s += seconds

    def add_overhead(self, seconds: float) -> None:
        self.overhead_s = seconds if self.overhead_s is None else 0.5 * (self.overhead_s + seconds)

    @property
    def factor(self) -> float:
        """Measured step time over estimated (1 until a step was measured)."""
        if not self.steps or self.parts.train_step_s <= 0:
            return 1.0
        return min(max((self.train_s / self.steps) / self.parts.train_step_s, 0.05), 20.0)

    def remaining_s(self, *, epoch: int, step_in_epoch: int, validated: bool = False) -> float:
        """Seconds left when ``step_in_epoch`` steps of ``epoch`` are done (``validated``: and its
        validation too)."""
        f = self.factor
        step_s = self.train_s / self.steps if self.steps else self.parts.train_step_s
        rem_steps = max(0, self.steps_per_epoch - step_in_epoch) + (self.epochs - epoch) * self.steps_per_epoch
        rem_val = (self.epochs - epoch) + (0 if validated else 1)
        overhead = self.overhead_s if self.overhead_s is not None else self.parts.epoch_overhead_s * f
        return rem_steps * step_s + rem_val * overhead + self.parts.test_s * f


class Stopwatch:
    def __init__(self):
        self.t0 = time.perf_counter()

    def lap(self) -> float:
        t, self.t0 = self.t0, time.perf_counter()
        return self.t0 - t
