"""The frozen encoders a feature bank can come from, named by one string.

- ``random_stem[:MODEL][@SIZE]`` (the offline default, ``dala_resnet50`` at its 224 px): quick mode's prepared random
  stem -- ``spec.split(model)``'s stem with every residual branch zeroed
  (:func:`dala.models.init.zero_init_residual`) and its BatchNorm statistics calibrated on the
  training images of the lab's default patient split (:func:`dala.train.engine.calibrate_batchnorm`);
  its output is pooled to per-channel mean and standard deviation (the features the README's
  linear probe used).
- ``pretrained:MODEL``: the registry model's stem with its pretrained weights, only when they are
  cached (or downloadable): the same pooling.
- ``checkpoint:PATH`` / ``run:PATH`` / a bare path: a finished run's (or a checkpoint folder's)
  model, its layer before the head -- the input of its last ``nn.Linear``.

``resolve_encoder(text)`` checks what it can without running anything; ``EncoderSpec.build``
loads the network.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dala.lab.common import LabError
from dala.train.folder import RunFolder, is_run_folder

DEFAULT_ENCODER = "random_stem"
DEFAULT_MODEL = "dala_resnet50"
KINDS = ("random_stem", "pretrained", "checkpoint")


@dataclass
class EncoderSpec:
    kind: str  # random_stem | pretrained | checkpoint
    model: str  # registry name
    input_size: int
    weights: str  # plain words: where the weights come from
    identity: str  # what the bank key hashes (changes whenever the features would)
    path: str | None = None  # checkpoint folder
    run_dir: str | None = None  # the run the checkpoint belongs to, if any
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The string that names this encoder again (CLI ``--encoder``, page choice)."""
        if self.kind == "checkpoint":
            return f"checkpoint:{self.run_dir or self.path}"
        return f"{self.kind}:{self.model}@{self.input_size}"

    @property
    def label(self) -> str:
        """One line for captions: what the numbers come from."""
        if self.kind == "random_stem":
            zeroed = "residual branches zeroed, " if self.meta.get("residual", True) else ""
            return (f"{self.model} prepared random stem, {self.input_size} px - random weights (not pretrained), "
                    f"{zeroed}BatchNorm calibrated")
        if self.kind == "pretrained":
            return f"{self.model} stem, {self.input_size} px - pretrained weights: {self.weights}"
        where = Path(self.run_dir).name if self.run_dir else Path(self.path or "").name
        return f"run {where}: {self.model}, layer before the head, {self.input_size} px - {self.weights}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model, "input_size": self.input_size, "weights": self.weights,
                "identity": self.identity, "path": self.path, "run_dir": self.run_dir, "label": self.label,
                "text": self.text, **({"meta": self.meta} if self.meta else {})}


def default_encoder_text() -> str:
    """``DALA_LAB_ENCODER`` when set (a teacher picks the class's encoder; tests pick a tiny one),
    else the prepared random stem of DALAResNet50."""
    import os

    return os.environ.get("DALA_LAB_ENCODER", "").strip() or f"{DEFAULT_ENCODER}:{DEFAULT_MODEL}"


def _registry_model(name: str) -> str:
    from dala.models import list_models

    if name not in list_models():
        raise LabError(f"encoder model {name!r} is not in the registry: use one of {', '.join(list_models())}.")
    return name


def _torch_tag() -> str:
    return torch.__version__.split("+")[0]


def resolve_encoder(text: str | None = None, *, input_size: int | None = None) -> EncoderSpec:
    """The encoder ``text`` names (see the module docstring); ``None`` is the offline default."""
    text = (text or default_encoder_text()).strip()
    if "@" in text and not Path(text).expanduser().exists():  # "random_stem:tiny_cnn@64": the input size
        text, _, size_text = text.rpartition("@")
        try:
            input_size = input_size or int(size_text)
        except ValueError:
            raise LabError(f"encoder input size {size_text!r} is not a whole number of pixels (e.g. "
                           "'random_stem:tiny_cnn@64').") from None
    kind, _, rest = text.partition(":")
    if kind not in ("random_stem", "pretrained", "checkpoint", "run"):
        if Path(text).expanduser().exists():
            kind, rest = "checkpoint", text
        else:
            raise LabError(f"encoder {text!r} is unknown: use 'random_stem[:MODEL]', 'pretrained:MODEL', "
                           "'checkpoint:FOLDER' or a run folder.")
    if kind in ("random_stem", "pretrained"):
        from dala.models import get_spec

        model = _registry_model(rest or DEFAULT_MODEL)
        size = int(input_size or get_spec(model).input_size)
        if not (16 <= size <= 1024):
            raise LabError(f"encoder input size {size} px is out of range: use 16..1024 (the model's default is "
                           f"{get_spec(model).input_size}).")
        if kind == "random_stem":
            seed = 0
            from dala.models.init import has_residual_stem

            return EncoderSpec(kind=kind, model=model, input_size=size, meta={"residual": has_residual_stem(model)},
                               weights="random (not pretrained): quick mode's prepared stem",
                               identity=f"random_stem/{model}/seed{seed}/zero_init_residual/bn-calibrated-160/"
                                        f"torch{_torch_tag()}/mean+std-pool")
        from dala.models.availability import pretrained_ready

        if not pretrained_ready(model):
            raise LabError(f"pretrained weights for {model} are not cached and cannot be downloaded here "
                           "(offline): use encoder 'random_stem', a finished run's checkpoint, or fetch the "
                           "weights once online.")
        return EncoderSpec(kind=kind, model=model, input_size=size, weights=get_spec(model).weights,
                           identity=f"pretrained/{model}/{get_spec(model).weights}/mean+std-pool")
    return _checkpoint_encoder(rest, input_size=input_size)


def _checkpoint_encoder(path_text: str, *, input_size: int | None) -> EncoderSpec:
    from dala.errors import CheckpointError
    from dala.models.checkpoint import WEIGHTS_FILE, read_checkpoint_config, resolve_checkpoint_folder

    if not path_text.strip():
        raise LabError("encoder 'checkpoint:' needs a folder: 'checkpoint:runs/<run>' or a checkpoint folder.")
    given = Path(path_text).expanduser()
    try:
        folder = resolve_checkpoint_folder(given)
        config = read_checkpoint_config(folder)
        weights = folder / WEIGHTS_FILE
        if not weights.is_file():
            raise CheckpointError(f"{folder} has no {WEIGHTS_FILE}; re-save the checkpoint")
        digest = _file_sha256(weights)
    except CheckpointError as exc:
        raise LabError(f"the encoder checkpoint cannot be used: {exc}. Pick another run, or the 'random_stem' "
                       "encoder.") from None
    run_dir = None
    for cand in (given, *given.parents[:3]):
        if is_run_folder(cand) and RunFolder(cand, writer=False).checkpoints_dir.is_dir():
            run_dir = str(cand.resolve())
            break
    size = int(input_size or config.get("input_size") or 224)
    ws = str(config.get("weight_source", "unknown"))
    return EncoderSpec(kind="checkpoint", model=str(config["name"]), input_size=size,
                       weights=f"trained in the run (started from {ws})", identity=f"checkpoint/sha256:{digest}",
                       path=str(folder.resolve()), run_dir=run_dir,
                       meta={"weight_source": ws, "epoch": (config.get("extra") or {}).get("epoch")})


def _file_sha256(path: Path, *, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def build_feature_net(spec: EncoderSpec, calibration_frame=None, *, device=None, dtype=None):
    """The network that maps a (B, 3, S, S) batch to (B, D) features, in eval mode, plus
    (mean, std) for the input transform. ``calibration_frame``: images whose BatchNorm statistics
    a random stem takes (index rows)."""
    import torch

    from dala.lab._engine import calibrate_batchnorm, image_batches
    from dala.models import create_model, get_spec

    device = device or torch.device("cpu")
    if spec.kind == "checkpoint":
        from dala.errors import CheckpointError
        from dala.models.checkpoint import load_checkpoint

        try:
            model, config = load_checkpoint(spec.path)
        except CheckpointError as exc:
            raise LabError(f"the encoder checkpoint cannot be loaded: {exc}. Pick another run, or the "
                           "'random_stem' encoder.") from None
        mean, std = config.get("mean"), config.get("std")
        net = PenultimateFeatures(model)
    else:
        gs = get_spec(spec.model)
        torch.manual_seed(0)  # the random stem is part of the bank's identity: the same every time
        model = create_model(spec.model, pretrained=spec.kind == "pretrained")
        if spec.kind == "pretrained" and str(model.dala_config.get("weight_source", "")).startswith("random"):
            raise LabError(f"pretrained weights for {spec.model} did not load ({model.dala_config['weight_source']}); "
                           "use the 'random_stem' encoder or fetch the weights once online.")
        stem, _top = gs.split(model)
        mean, std = gs.mean, gs.std
        if spec.kind == "random_stem":
            from dala.models.init import zero_init_residual

            zero_init_residual(stem)
            if calibration_frame is not None and len(calibration_frame):
                stem.to(device)
                calibrate_batchnorm(stem, image_batches(calibration_frame, size=spec.input_size, mean=mean, std=std,
                                                        batch_size=32), device=device, dtype=dtype)
        net = PooledStem(stem)
    net.eval().to(device)
    for p in net.parameters():
        p.requires_grad_(False)
    return net, (list(mean), list(std))


class PooledStem(nn.Module):
    """A stem's (B, C, H, W) output pooled to (B, 2C): per-channel mean, then standard deviation."""

    def __init__(self, stem):
        super().__init__()
        self.stem = stem

    def forward(self, x):  # (B, 3, S, S)
        f = self.stem(x).float()  # (B, C, h, w)
        return torch.cat([f.mean((2, 3)), f.std((2, 3))], 1)  # (B, 2C)


class PenultimateFeatures(nn.Module):
    """A whole model, returning the input of its last ``nn.Linear`` (the layer before the head's
    output): (B, D)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise LabError(f"model {model.dala_config.get('name', '?')} has no linear output layer to read the "
                           "features before; use the 'random_stem' encoder.")
        self._captured = None
        linears[-1].register_forward_hook(self._hook)

    def _hook(self, _module, inputs, _output):
        self._captured = inputs[0]

    def forward(self, x):  # (B, 3, S, S)
        self._captured = None
        self.model(x)
        return self._captured.float().flatten(1)  # (B, D)
