"""The pieces of the training engine the lab reuses (quick mode's stem preparation and feature
extraction), imported from wherever :mod:`dala.train` keeps them, so the lab does not copy them."""

from __future__ import annotations

try:  # the engine's helpers may move into smaller modules under dala.train
    from dala.train.engine import (  # noqa: F401
        autocast,
        calibrate_batchnorm,
        dihedral,
        extract_features,
        image_batches,
        select_precision,
    )
except ImportError:  # pragma: no cover - adapted when the refactor lands
    from dala.train.features import calibrate_batchnorm, dihedral, extract_features, image_batches  # type: ignore # noqa: F401
    from dala.train.machinery import autocast, select_precision  # type: ignore # noqa: F401
