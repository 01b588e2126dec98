"""Would pretrained weights load now? Answered from the caches, without loading or downloading.

Separate from :mod:`dala.models.weights` (which loads them) so that the registry can build
models with ``weights`` and this module can read the registry, with no import running back.
"""

from __future__ import annotations

import os
from typing import Any

from dala.models.weights import timm_hub_id, torchvision_cache_path
from dala.net import can_reach, hf_hub_cache_dir, hub_offline, offline

TORCHVISION_HOST = "download.pytorch.org"
HUB_HOST = "huggingface.co"


def availability(source: str, ref: Any) -> str:
    """``"cached"``, ``"not cached"``, ``"unknown"`` or ``"n/a"``, without touching the network.

    ``source`` is "torchvision" (``ref`` a weights enum member), "timm" (``ref`` a timm name) or
    "none".
    """
    if source == "torchvision":
        return "cached" if torchvision_cache_path(ref).is_file() else "not cached"
    if source == "timm":
        try:
            repo_id, revision = timm_hub_id(ref)
            from huggingface_hub import try_to_load_from_cache

            hit = try_to_load_from_cache(repo_id, "model.safetensors", cache_dir=str(hf_hub_cache_dir()),
                                         revision=revision)
        except Exception:
            return "unknown"
        return "cached" if isinstance(hit, str) and os.path.isfile(hit) else "not cached"
    return "n/a"


def spec_availability(spec: Any) -> str:
    """:func:`availability` for a registry entry (``"none"`` for a model without pretrained weights)."""
    kind, ref = spec.weight_ref
    if kind == "none":
        return "none"
    if kind == "torchvision":
        import torchvision.models as tvm

        enum_name, member = ref.split(".")
        ref = getattr(getattr(tvm, enum_name), member)
    return availability(kind, ref)


def source_offline(spec: Any) -> bool:
    """Are we told not to download this entry's weights (``DALA_OFFLINE``, or the Hub's flag for timm)?"""
    return offline() if spec.weight_ref[0] == "torchvision" else hub_offline()


def pretrained_ready(name: str) -> bool:
    """Would ``create_model(name, pretrained=True)`` get real pretrained weights now (cached, or
    online)? Offline this answers from the caches alone; online it costs one short TCP probe."""
    from dala.models.registry import get_spec

    spec = get_spec(name)
    avail = spec_availability(spec)
    if avail in ("cached", "none"):
        return avail == "cached"
    if source_offline(spec):
        return False
    return can_reach(TORCHVISION_HOST if spec.weight_ref[0] == "torchvision" else HUB_HOST)


def torchvision_ready(weights: Any) -> bool:
    """Would torchvision ``weights`` (an enum member) load now: cached, or downloadable?"""
    if availability("torchvision", weights) == "cached":
        return True
    return not offline() and can_reach(TORCHVISION_HOST)
