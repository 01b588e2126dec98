"""What every part of the lab shares: the strategy names, the sweep's ratios, the error type,
the LRU helpers of its caches.

The strategy names and the ratio's meaning are a contract (CLI flags, JSON keys, notebooks):
``ratio`` is the number of benign training images per malignant one (0.05 = 1:20, 1.0 balanced,
20 = 20:1), reached by subsampling the training patients' images.
"""

from __future__ import annotations

from collections import OrderedDict

from dala.errors import DalaError


def lru_get(cache: OrderedDict, key):
    """``cache[key]`` marked most recently used, or None (callers hold their own lock)."""
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    return None


def lru_put(cache: OrderedDict, key, value, limit: int) -> None:
    """Store ``value`` as most recently used and drop the least recently used beyond ``limit``."""
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > limit:
        cache.popitem(last=False)

# in the order the page and the CLI list them
STRATEGIES: tuple[str, ...] = ("none", "class_weight", "oversample", "smote", "undersample", "focal",
                               "logit_adjust", "threshold")
STRATEGY_HELP: dict[str, str] = {
    "none": "plain cross-entropy on the training images as they are",
    "class_weight": "cross-entropy weighted by inverse class frequency (scikit-learn 'balanced')",
    "oversample": "minority images repeated until the classes are equal (imbalanced-learn RandomOverSampler)",
    "smote": "synthetic minority points interpolated in feature space (imbalanced-learn SMOTE)",
    "undersample": "majority images dropped until the classes are equal (imbalanced-learn RandomUnderSampler)",
    "focal": "focal loss, gamma 2 (Lin et al. 2017): easy images count less",
    "logit_adjust": "post-hoc logit adjustment (Menon et al. 2021): subtract log of the training prior",
    "threshold": "threshold moving (Buda et al. 2018): the cut that maximises GMean on validation patients",
}
RATIOS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0)  # the sweep's ratios
RATIO_MIN, RATIO_MAX = 0.05, 20.0
HEADS: tuple[str, ...] = ("linear", "mlp")
SPLITS: tuple[str, ...] = ("patient", "image")
SWEEP_KEYS: tuple[str, ...] = ("strategy", "ratio", "accuracy", "balanced_accuracy", "gmean", "iba", "f1_macro")
# TrainConfig.imbalance names for the lab strategies a real run can do; the others have no
# counterpart in dala.train and are said so on the page, never silently mapped
TRAIN_IMBALANCE: dict[str, str] = {"none": "none", "class_weight": "class_weight", "oversample": "oversample",
                                   "focal": "focal"}


class LabError(DalaError):
    """A lab question cannot be answered as asked (ratio, threshold, data, encoder)."""


class BankError(LabError):
    """A feature bank is missing, truncated, damaged, or was built for another dataset/encoder."""


def ratio_label(ratio: float | None) -> str:
    """0.05 -> '1:20', 1 -> '1:1', 20 -> '20:1' (benign:malignant)."""
    if ratio is None:
        return "as is"
    if ratio >= 1:
        return f"{ratio:g}:1"
    return f"1:{1 / ratio:.3g}"


def check_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise LabError(f"strategy {strategy!r} is unknown: use one of {', '.join(STRATEGIES)}.")
    return strategy


def check_ratio(ratio: float | None) -> float | None:
    if ratio is None:
        return None
    try:
        ratio = float(ratio)
    except (TypeError, ValueError):
        raise LabError(f"ratio {ratio!r} is not a number: give benign training images per malignant one, "
                       f"e.g. 0.1 for 1:10.") from None
    if not (RATIO_MIN <= ratio <= RATIO_MAX):
        raise LabError(f"ratio {ratio:g} is outside [{RATIO_MIN:g}, {RATIO_MAX:g}]: give benign training images "
                       "per malignant one between 0.05 (1:20) and 20 (20:1).")
    return ratio


def check_threshold(threshold: float | None) -> float | None:
    if threshold is None:
        return None
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise LabError(f"threshold {threshold!r} is not a number: give a probability of malignant in [0, 1].") from None
    if not (0.0 <= t <= 1.0):
        raise LabError(f"threshold {t:g} is outside [0, 1]: it is the probability of malignant above which an "
                       "image is called malignant; give a value between 0 and 1 (0.5 is the usual cut).")
    return t


def check_prevalence(prevalence: float | None) -> float | None:
    if prevalence is None:
        return None
    try:
        p = float(prevalence)
    except (TypeError, ValueError):
        raise LabError(f"test prevalence {prevalence!r} is not a number: give the share of malignant test "
                       "images, e.g. 0.3.") from None
    if not (0.01 <= p <= 0.99):
        raise LabError(f"test prevalence {p:g} is outside [0.01, 0.99]: give the share of malignant images the "
                       "deployed model meets (both classes must remain).")
    return p
