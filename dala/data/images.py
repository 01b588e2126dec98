"""Reading images safely: files from a dataset and bytes from an upload go through one function.

Uploads can be anything: not an image, truncated, a decompression bomb, RGBA, 16-bit, greyscale,
palette or CMYK. :func:`load_rgb` turns what can be used into 8-bit RGB and rejects the rest with
an :class:`~dala.errors.ImageInputError` naming the problem and the fix.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dala.errors import ImageInputError

MAX_PIXELS = 40_000_000  # ~ 7,700 x 5,200: far above BreakHis's 700x460, far below a memory problem


def load_rgb(source: str | os.PathLike | bytes | Image.Image, *, max_pixels: int = MAX_PIXELS,
             name: str | None = None) -> Image.Image:
    """Open ``source`` (path, bytes or PIL image) as an 8-bit RGB PIL image, fully decoded."""
    label = name or (str(source) if isinstance(source, (str, os.PathLike)) else "the image")
    if isinstance(source, Image.Image):
        im = source
    else:
        try:
            fh = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(Path(source), "rb")
        except FileNotFoundError as exc:
            raise ImageInputError(f"{label}: file not found.") from exc
        with fh:
            data = fh.read()
        if not data:
            raise ImageInputError(f"{label} is empty (0 bytes): choose a PNG, JPEG or TIFF image.")
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            raise ImageInputError(f"{label} claims absurd dimensions ({exc}): downscale it (BreakHis images are 700x460).") from exc
        except UnidentifiedImageError as exc:
            raise ImageInputError(f"{label} is not an image PIL can read: upload a PNG, JPEG or TIFF file.") from exc
        w, h = im.size
        if w * h > max_pixels:
            raise ImageInputError(
                f"{label} is {w}x{h} pixels, more than the {max_pixels:,}-pixel limit: "
                "downscale it (BreakHis images are 700x460) and try again."
            )
        try:
            im.load()
            im = ImageOps.exif_transpose(im)  # phone photos: honour the orientation tag
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageInputError(f"{label} is truncated or corrupt ({exc}): re-export or re-download it.") from exc
    return to_rgb8(im)


def to_rgb8(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB. Alpha is composited on white (slide background);
    16-bit and float greyscale are rescaled by their actual range rather than clipped."""
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        return Image.fromarray(scaled.round().astype(np.uint8)).convert("RGB")
    return im.convert("RGB")
