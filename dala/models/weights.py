"""Pretrained weights from their usual sources, offline-first and fail-fast.

Two sources, each resolved the way its library caches files, so a cache warmed by torchvision or
timm on another day (or copied onto a machine with no internet) is found:

- **torchvision** weights: ``$TORCH_HOME/hub/checkpoints/<file name from the weights URL>``
  (``torch.hub.get_dir()``), exactly where ``weights.get_state_dict()`` puts them. Those files are
  torchvision's own pickles, read with ``torch.load(weights_only=True)`` only.
- **timm** weights on the Hugging Face Hub: ``model.safetensors`` in the HF cache
  (``$HF_HUB_CACHE`` or ``$HF_HOME/hub``; ``models--timm--<name>/snapshots/<hash>/``), found
  with ``huggingface_hub.try_to_load_from_cache``. Only safetensors are used.

When a file is not cached, we only try the network if :mod:`dala.net` says we may
(``DALA_OFFLINE=1`` for everything; ``HF_HUB_OFFLINE=1`` for the Hub) *and* its short TCP probe
of the weight server succeeds; the download itself runs under ``dala.net.socket_timeout``. Otherwise - and
on any failure - the caller gets ``None`` plus a reason and the model starts from random weights,
its ``weight_source`` saying why ("random (offline: weights not cached at ...)"). Never a hang:
timm's own Hub path would retry for ~25 s per file.

The cache folders are read from the environment at call time (not at import), so tests and the
app can point them elsewhere after import. Whether weights *would* load now, without loading
them, is :mod:`dala.models.availability`'s question.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from dala.net import can_reach, hf_hub_cache_dir, hub_offline, offline, offline_flag_name, socket_timeout

# ---------------------------------------------------------------- torchvision


def torch_hub_checkpoints_dir() -> Path:
    """Where torchvision caches weight files: ``$TORCH_HOME/hub/checkpoints``."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def torchvision_cache_path(weights: Any) -> Path:
    """The cache file of a torchvision ``WeightsEnum`` member (file name from its URL)."""
    return torch_hub_checkpoints_dir() / os.path.basename(urlparse(weights.url).path)


def torchvision_weights_name(weights: Any) -> str:
    """``ResNet50_Weights.IMAGENET1K_V2`` for the enum member."""
    return f"{type(weights).__name__}.{weights.name}"


# DenseNet's published file uses old key names ("norm.1"); torchvision remaps them on load
_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _fix_densenet_keys(state_dict: dict) -> dict:
    out = {}
    for key, value in state_dict.items():
        m = _DENSENET_KEY.match(key)
        out[m.group(1) + m.group(2) if m else key] = value
    return out


def torchvision_state_dict(weights: Any) -> tuple[dict | None, str]:
    """State dict of torchvision ``weights`` from the cache (or a guarded download).

    Returns ``(state_dict, "")`` or ``(None, reason)``; never raises for a missing network.
    """
    import torch

    path = torchvision_cache_path(weights)
    if not path.is_file():
        if offline():
            return None, f"offline ({offline_flag_name(hub=False)}): weights not cached at {path}"
        host = urlparse(weights.url).hostname or ""
        if not can_reach(host):
            return None, f"offline ({host} unreachable): weights not cached at {path}"
        try:
            import torch.hub

            path.parent.mkdir(parents=True, exist_ok=True)
            with socket_timeout():
                torch.hub.download_url_to_file(weights.url, str(path), progress=True)
        except Exception as exc:  # network trouble of any kind: fall back, say why
            return None, f"download of {weights.url} failed ({type(exc).__name__}: {exc})"
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        return None, f"cached weights at {path} are unreadable ({type(exc).__name__}); delete the file to re-download"
    if not isinstance(state_dict, dict):
        return None, f"cached weights at {path} are not a state dict; delete the file to re-download"
    if "densenet" in type(weights).__name__.lower():
        state_dict = _fix_densenet_keys(state_dict)
    return state_dict, ""


def load_matching(model: Any, state_dict: dict, *, new_prefixes: tuple[str, ...]) -> None:
    """Load ``state_dict`` into ``model`` leaving out the parts that are new by design.

    Keys under ``new_prefixes`` (a replaced classifier, an added attention block) may be missing
    or shaped differently; any other missing, unexpected or mis-shaped key raises ``ValueError``
    (the file is not for this architecture).
    """
    own = model.state_dict()
    fitted = {}
    for key, value in state_dict.items():
        if key.startswith(new_prefixes):
            if key in own and own[key].shape == value.shape:
                fitted[key] = value
            continue
        if key not in own:
            raise ValueError(f"unexpected key {key!r}")
        if own[key].shape != value.shape:
            raise ValueError(f"shape mismatch at {key!r}: file {tuple(value.shape)} vs model {tuple(own[key].shape)}")
        fitted[key] = value
    missing = [k for k in own if k not in fitted and not k.startswith(new_prefixes)]
    if missing:
        raise ValueError(f"{len(missing)} keys missing, e.g. {missing[:3]}")
    model.load_state_dict(fitted, strict=False)


def apply_torchvision(model: Any, weights: Any, *, new_prefixes: tuple[str, ...], dataset: str = "imagenet",
                      note: str = "") -> str:
    """Load torchvision ``weights`` into ``model`` (all but ``new_prefixes``); return weight_source."""
    state_dict, reason = torchvision_state_dict(weights)
    if state_dict is None:
        return f"random ({reason})"
    try:
        load_matching(model, state_dict, new_prefixes=new_prefixes)
    except ValueError as exc:
        path = torchvision_cache_path(weights)
        warnings.warn(f"cached weights at {path} do not fit: {exc}; using random weights", stacklevel=3)
        return f"random (cached weights at {path} do not fit this model: {exc}; delete the file to re-download)"
    return f"{dataset}:torchvision/{torchvision_weights_name(weights)}{note}"


# ---------------------------------------------------------------- timm / Hugging Face Hub


def timm_hub_id(timm_name: str) -> tuple[str, str | None]:
    """``("timm/seresnet50.a1_in1k", revision)`` for a timm model name (default pretrained tag)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(timm_name)
    if cfg is None or not cfg.hf_hub_id:
        raise ValueError(f"timm has no Hub weights for {timm_name!r}")
    return cfg.hf_hub_id, getattr(cfg, "hf_hub_revision", None)


def timm_cached_file(timm_name: str) -> tuple[Path | None, str]:
    """The cached ``model.safetensors`` for a timm model, downloading only when allowed and online.

    Returns ``(path, "")`` or ``(None, reason)``.
    """
    repo_id, revision = timm_hub_id(timm_name)
    cache_dir = hf_hub_cache_dir()
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(repo_id, "model.safetensors", cache_dir=str(cache_dir), revision=revision)
    if isinstance(hit, str) and os.path.isfile(hit):
        return Path(hit), ""
    where = cache_dir / ("models--" + repo_id.replace("/", "--"))
    if hub_offline():
        flag = offline_flag_name(hub=True)
        return None, f"offline ({flag}): weights not cached at {where}"
    if not can_reach("huggingface.co"):
        return None, f"offline (huggingface.co unreachable): weights not cached at {where}"
    try:
        from huggingface_hub import hf_hub_download

        with socket_timeout():
            got = hf_hub_download(repo_id, "model.safetensors", revision=revision, cache_dir=str(cache_dir))
    except Exception as exc:
        return None, f"download of {repo_id}/model.safetensors failed ({type(exc).__name__}: {exc})"
    return Path(got), ""


def create_timm(timm_name: str, *, num_classes: int, pretrained: bool, dataset: str = "imagenet",
                **kwargs: Any) -> tuple[Any, str]:
    """``timm.create_model`` with weights from the local HF cache; ``(model, weight_source)``.

    timm's own loader does the adapting (drops a classifier of another size, resamples a ViT's
    position embedding for another ``img_size``); we only hand it the cached file.
    """
    import timm

    if not pretrained:
        return timm.create_model(timm_name, pretrained=False, num_classes=num_classes, **kwargs), "random (pretrained=False)"
    path, reason = timm_cached_file(timm_name)
    if path is None:
        return timm.create_model(timm_name, pretrained=False, num_classes=num_classes, **kwargs), f"random ({reason})"
    repo_id, _ = timm_hub_id(timm_name)
    try:
        model = timm.create_model(timm_name, pretrained=True, num_classes=num_classes,
                                  pretrained_cfg_overlay={"file": str(path)}, **kwargs)
    except Exception as exc:
        warnings.warn(f"cached weights at {path} could not be loaded: {exc}; using random weights", stacklevel=2)
        model = timm.create_model(timm_name, pretrained=False, num_classes=num_classes, **kwargs)
        return model, f"random (cached weights at {path} do not load: {type(exc).__name__}; delete them to re-download)"
    return model, f"{dataset}:timm/{repo_id.split('/', 1)[-1]}"
