"""The training configuration: one small dataclass shared by the CLI, notebooks and the app.

It round-trips through JSON (``config.json`` in every run folder), so a run can be restarted,
resumed or reproduced from its folder alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from dala.data.breakhis import MAGNIFICATIONS
from dala.errors import RunError

IMBALANCE_STRATEGIES = ("none", "class_weight", "sampler", "focal", "oversample")
MODES = ("quick", "full")
SPLIT_MODES = ("patient", "image")
STAIN_NORMS = ("none", "reinhard", "macenko")
SELECT_METRICS = ("gmean", "balanced_accuracy", "accuracy", "iba", "f1_macro", "mcc", "roc_auc", "val_loss")


@dataclass
class TrainConfig:
    # data
    data_root: str | None = None  # None: the embedded synthetic default
    magnification: int | None = None  # None: all four together
    split_mode: str = "patient"  # "image" leaks patients: kept for the lesson
    split_file: str | None = None  # a saved split (JSON) to use instead of making one
    test_fraction: float = 0.3
    val_fraction: float = 0.15
    max_train_images: int | None = None  # subsample training images (classroom speed)
    stain_norm: str = "none"  # none | reinhard | macenko: applied where images are decoded (dala.data.stain)
    stain_reference: str | None = None  # reference image; None: the per-dataset default (dala.data.stain.default_reference)
    # imbalance lab
    imbalance: str = "none"  # none | class_weight | sampler | focal | oversample
    focal_gamma: float = 2.0
    target_ratio: float | None = None  # benign:malignant in the training set (e.g. 0.25 = 1:4), by subsampling
    # model
    model: str = "dala_resnet50"
    model_options: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = True
    image_size: int | None = None  # None: the model's default input size
    # optimisation
    mode: str = "quick"  # quick: frozen cached stem, train the top; full: fine-tune everything
    quick_views: int = 8  # dihedral views cached per training image in quick mode (1..8)
    epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-4  # AdamW; 1e-3 makes the freshly initialised head jump (all-positive pooled inputs)
    weight_decay: float = 1e-4
    scheduler: str = "cosine"  # cosine | none
    early_stopping: int = 0  # patience in epochs; 0 = off
    select_metric: str = "gmean"  # model selection on validation
    # machinery
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | mps
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    channels_last: bool = True
    num_workers: int | None = None  # None: 0 on CPU, 4 on GPU
    log_every: int = 5  # steps between step records
    n_tiles: int = 8  # validation tiles whose predictions are logged every epoch
    name: str = ""

    def validate(self) -> "TrainConfig":
        def bad(msg: str) -> None:
            raise RunError(msg)

        check_types(self)
        if self.imbalance not in IMBALANCE_STRATEGIES:
            bad(f"imbalance strategy {self.imbalance!r} is unknown: use one of {', '.join(IMBALANCE_STRATEGIES)}.")
        if self.mode not in MODES:
            bad(f"mode {self.mode!r} is unknown: use 'quick' (frozen cached stem) or 'full' (fine-tune).")
        if self.split_mode not in SPLIT_MODES:
            bad(f"split mode {self.split_mode!r} is unknown: use 'patient' or 'image'.")
        if self.select_metric not in SELECT_METRICS:
            bad(f"select_metric {self.select_metric!r} is unknown: use one of {', '.join(SELECT_METRICS)}.")
        if self.magnification is not None and self.magnification not in MAGNIFICATIONS:
            bad(f"magnification {self.magnification} is not one of {', '.join(map(str, MAGNIFICATIONS))} "
                "(or None for all).")
        if self.epochs < 1 or self.batch_size < 1:
            bad("epochs and batch_size must be at least 1.")
        if not (0 < self.lr < 10):
            bad(f"learning rate {self.lr} is out of range (0, 10).")
        if self.target_ratio is not None and not (0 < self.target_ratio <= 20):
            bad(f"target benign:malignant ratio {self.target_ratio} must be in (0, 20].")
        if not (1 <= self.quick_views <= 8):
            bad("quick_views must be between 1 and 8 (the dihedral group has 8 views).")
        if self.image_size is not None:
            from dala.models.limits import MAX_INPUT_SIZE, MIN_INPUT_SIZE

            if not MIN_INPUT_SIZE <= self.image_size <= MAX_INPUT_SIZE:
                bad(f"image size {self.image_size} px is outside {MIN_INPUT_SIZE}..{MAX_INPUT_SIZE} px (bounded so one "
                    "run cannot exhaust memory); leave it out for the model's own size.")
        if not (0 < self.test_fraction < 1) or not (0 <= self.val_fraction < 1) or self.test_fraction + self.val_fraction >= 1:
            bad(f"test_fraction {self.test_fraction} and val_fraction {self.val_fraction} must leave room for training "
                "(0 < test < 1, 0 <= val < 1, test + val < 1).")
        if self.log_every < 1 or self.n_tiles < 0 or (self.num_workers is not None and self.num_workers < 0):
            bad("log_every must be at least 1, n_tiles and num_workers at least 0.")
        if self.stain_norm not in STAIN_NORMS:
            bad(f"stain normalisation {self.stain_norm!r} is unknown: use one of {', '.join(STAIN_NORMS)}.")
        if self.stain_reference is not None and self.stain_norm == "none":
            bad("a stain reference was given without a stain normalisation: add --stain-norm reinhard|macenko.")
        if self.scheduler not in ("cosine", "none"):
            bad(f"scheduler {self.scheduler!r} is unknown: use 'cosine' or 'none'.")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            bad(f"precision {self.precision!r} is unknown: use auto, fp32, bf16 or fp16.")
        from dala.models import list_models

        if self.model not in list_models():
            bad(f"model {self.model!r} is not in the registry: choose one of {', '.join(list_models())}.")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        if not isinstance(d, dict):
            raise RunError(f"a training config must be a JSON object of options; got a {type(d).__name__}.")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise RunError(f"unknown training option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}.")
        return cls(**d).validate_types()

    def validate_types(self) -> "TrainConfig":
        check_types(self)
        return self

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


# the JSON types each option accepts (config files are typed by people: "epochs": "ten" is told, not crashed on)
_NUM = (int, float)
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "data_root": (str,), "magnification": (int,), "split_mode": (str,), "split_file": (str,), "test_fraction": _NUM,
    "val_fraction": _NUM, "max_train_images": (int,), "stain_norm": (str,), "stain_reference": (str,), "imbalance": (str,), "focal_gamma": _NUM, "target_ratio": _NUM,
    "model": (str,), "model_options": (dict,), "pretrained": (bool,), "image_size": (int,), "mode": (str,),
    "quick_views": (int,), "epochs": (int,), "batch_size": (int,), "lr": _NUM, "weight_decay": _NUM, "scheduler": (str,),
    "early_stopping": (int,), "select_metric": (str,), "seed": (int,), "device": (str,), "precision": (str,),
    "channels_last": (bool,), "num_workers": (int,), "log_every": (int,), "n_tiles": (int,), "name": (str,),
}
OPTIONAL = {"data_root", "magnification", "split_file", "max_train_images", "stain_reference", "target_ratio", "image_size", "num_workers"}


def check_types(config: "TrainConfig") -> None:
    """Raise RunError naming every option whose value has the wrong type."""
    wrong = []
    for name, types in FIELD_TYPES.items():
        v = getattr(config, name)
        if v is None and name in OPTIONAL:
            continue
        ok = isinstance(v, types) and not (isinstance(v, bool) and bool not in types)
        if not ok:
            want = " or ".join("number" if t is float else {int: "whole number", str: "text", bool: "true/false",
                                                              dict: "object"}.get(t, t.__name__) for t in types
                               if not (t is int and float in types))
            wrong.append(f"{name} = {v!r} (expected {want}{' or null' if name in OPTIONAL else ''})")
    if wrong:
        raise RunError("training options of the wrong type: " + "; ".join(wrong) + ".")


# what a resume may change: how long it trains and where, not what it trains (never the stain setting)
RESUME_MAY_CHANGE = ("epochs", "device", "precision", "num_workers", "log_every", "early_stopping")


def check_resume(existing: dict, config: "TrainConfig", *, done_epochs: int | None = None) -> None:
    """Refuse a resume whose ``config`` contradicts the run's own (``existing``, its config.json):
    only :data:`RESUME_MAY_CHANGE` may differ, and ``epochs`` may only grow past what is done."""
    base = TrainConfig.from_dict(existing).to_dict()
    new = config.to_dict()
    clash = [f"{k}: the run has {base[k]!r}, asked {new[k]!r}" for k in base if k not in RESUME_MAY_CHANGE and base[k] != new[k]]
    if clash:
        raise RunError("cannot resume with settings that contradict the run (" + "; ".join(clash) + "): resume "
                       "without them (only --epochs, --device and --precision may change), or start a new run.")
    if done_epochs is not None and config.epochs < done_epochs:
        raise RunError(f"the run has already trained {done_epochs} epochs: --epochs must be at least {done_epochs} "
                       "to resume it (a larger number extends it).")


def resume_config(existing: dict, changes: dict) -> "TrainConfig":
    """The run's own config with ``changes`` (flags given with ``--resume``) applied; a change that
    contradicts the run is refused (:func:`check_resume`)."""
    base = TrainConfig.from_dict(existing)
    config = base.replace(**changes).validate()
    check_resume(existing, config)
    return config


def recommended_settings(model: str, *, pretrained: bool) -> dict[str, Any]:
    """Starting settings that learn on a 2-core CPU, for forms and notebooks.

    With pretrained weights the frozen stem holds real features: quick mode at the model's own
    size. Without them (offline), quick mode still learns for the ResNets: their random stem is
    prepared as a shallow random-feature extractor (:mod:`dala.models.init`), and the random top
    wants a larger step than a pretrained one (lr 3e-4, 12 epochs; measured in the README,
    "Measured figures"). A stem without residual blocks stays a deep random network whose
    features carry little, so those models (and tiny_cnn, which has no pretrained weights)
    train end to end at a reduced size instead, at lr 3e-4 unless the registry spec names the
    step measured to work for that model (``ModelSpec.scratch_lr``).
    """
    if pretrained:
        return {"mode": "quick", "lr": 1e-4, "image_size": None, "epochs": 5}
    if model == "tiny_cnn":
        return {"mode": "full", "lr": 1e-3, "image_size": 128, "epochs": 10}
    from dala.models.init import has_residual_stem

    if has_residual_stem(model):
        return {"mode": "quick", "lr": 3e-4, "image_size": None, "epochs": 12}
    from dala.models import get_spec

    return {"mode": "full", "lr": get_spec(model).scratch_lr or 3e-4, "image_size": 128, "epochs": 10}
