"""The one lesion-mask reader: every page, notebook, score and CLI reads lesion masks here.

A lesion mask is a greyscale (or RGB) image of the same size as its tissue image; a pixel is
inside the lesion when its value is above 127 (the synthetic generator writes 0/255). Masks saved
as 0/1 (a common export) are read as 0/255, so they are not silently empty. Reading goes through
the bounded image loader (:mod:`dala.data.images`), so a mask is subject to the same pixel limit
as an image.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from dala.errors import DataError, ImageInputError

THRESHOLD = 127  # inside the lesion: value > THRESHOLD (0..255)


def has_mask(path) -> bool:
    """Whether an index's ``mask_path`` value names a mask (None, NaN and "" do not)."""
    from dala.data.index import optional

    return optional(path) is not None


def read_lesion_mask(path: str | os.PathLike | bytes | None, *, size: tuple[int, int] | None = None) -> np.ndarray | None:
    """The lesion mask at ``path`` as a bool array ``(H, W)``; None when ``path`` is missing
    (None, NaN or "": the index's value for benign images and images without a mask).

    ``size`` = (width, height) resizes it first, nearest-neighbour (no new grey values at the
    edge). Raises :class:`~dala.errors.DataError` naming the file when the path is given but the
    file is absent or unreadable.
    """
    from dala.data.images import load_rgb
    from dala.data.index import optional

    path = optional(path)
    if path is None:
        return None
    label = f"lesion mask {str(path)!r}" if not isinstance(path, (bytes, bytearray)) else "the lesion mask"
    if not isinstance(path, (bytes, bytearray)) and not Path(path).is_file():
        raise DataError(f"{label} does not exist: regenerate the dataset's masks or drop the mask_path.")
    try:
        grey = np.asarray(load_rgb(path, name=label), dtype=np.uint8).max(axis=-1)  # (H, W)
    except ImageInputError as exc:
        raise DataError(str(exc)) from exc
    if grey.max() <= 1:  # a 0/1 mask
        grey = grey * np.uint8(255)
    if size is not None:
        w, h = _size(size)
        if grey.shape != (h, w):
            grey = np.asarray(Image.fromarray(grey).resize((w, h), Image.NEAREST))
    return grey > THRESHOLD


def _size(size) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in size)
    except (TypeError, ValueError):
        raise DataError(f"mask size must be (width, height); got {size!r}.") from None
    if w < 1 or h < 1:
        raise DataError(f"mask size must be positive; got {size!r}.")
    return w, h


__all__ = ["THRESHOLD", "has_mask", "read_lesion_mask"]
