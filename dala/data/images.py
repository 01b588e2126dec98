"""Reading images safely: files from a dataset and bytes from an upload go through one module.

Uploads can be anything: not an image, truncated, a decompression bomb (a tiny file whose header
declares 100000x100000 pixels), RGBA, 16-bit, greyscale, palette or CMYK, a folder, an unreadable
file. :func:`load_rgb` turns what can be used into 8-bit RGB and rejects the rest with an
:class:`~dala.errors.ImageInputError` naming the problem and the fix.

The work per image is bounded by the pixels decoded: the header's size is checked against
:func:`max_image_pixels` (``DALA_MAX_IMAGE_PIXELS``, read at call time) *before* any decode, and
PIL's own bomb guard (``DecompressionBombError`` / ``DecompressionBombWarning``) is turned into the
same message. :func:`load_for_model` is the reader for the model's inputs (predict, explain): it
also shrinks a large image to ``max_side`` (JPEG is decoded at reduced scale with ``draft``), so a
128 KB PNG of 7900x5000 costs the model what a 1024-pixel image costs; the original size rides
along in ``image.info["original_size"]`` for drawing overlays at full size.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dala.errors import ImageInputError

MAX_PIXELS = 40_000_000  # default limit: far above BreakHis's 700x460, far below a memory problem
MAX_PIXELS_ENV = "DALA_MAX_IMAGE_PIXELS"
MAX_SIDE = 1024  # load_for_model's default: the longest side the model and its heatmaps work at
MAX_SIDE_ENV = "DALA_MAX_IMAGE_SIDE"
ORIGINAL_SIZE = "original_size"  # key in Image.info: (width, height) before load_for_model shrank it


def max_image_pixels() -> int:
    """The pixel limit in force now (``DALA_MAX_IMAGE_PIXELS``, default :data:`MAX_PIXELS`)."""
    from dala.net import env_float

    return int(env_float(MAX_PIXELS_ENV, MAX_PIXELS, minimum=1))


def max_image_side() -> int:
    """The longest side :func:`load_for_model` keeps (``DALA_MAX_IMAGE_SIDE``, default :data:`MAX_SIDE`)."""
    from dala.net import env_float

    return int(env_float(MAX_SIDE_ENV, MAX_SIDE, minimum=16))


def _label(source, name: str | None) -> str:
    return name or (str(source) if isinstance(source, (str, os.PathLike)) else "the image")


def _handle(source, label: str):
    """A binary file object for a path or bytes, with every way a path can fail said plainly."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(source))
    path = Path(source)
    try:
        if path.is_dir():
            raise ImageInputError(f"{label} is a folder, not an image file: choose a PNG, JPEG or TIFF file.")
        return open(path, "rb")
    except FileNotFoundError as exc:
        raise ImageInputError(f"{label}: file not found.") from exc
    except IsADirectoryError as exc:
        raise ImageInputError(f"{label} is a folder, not an image file: choose a PNG, JPEG or TIFF file.") from exc
    except PermissionError as exc:
        raise ImageInputError(f"{label} cannot be read (permission denied): fix its permissions or copy it.") from exc
    except OSError as exc:
        raise ImageInputError(f"{label} cannot be read ({exc.strerror or exc}).") from exc


def _too_large(label: str, size, limit: int) -> ImageInputError:
    w, h = size
    return ImageInputError(
        f"{label} is {w}x{h} pixels, more than the {limit:,}-pixel limit: "
        f"downscale it (BreakHis images are 700x460) and try again."
    )


def open_header(fh, label: str, *, max_pixels: int | None = None) -> Image.Image:
    """``Image.open`` (header only, nothing decoded) with the pixel limit checked and every bomb,
    non-image and unreadable file raised as :class:`ImageInputError`."""
    limit = max_image_pixels() if max_pixels is None else int(max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(fh)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageInputError(
            f"{label} declares absurd dimensions (a decompression bomb, more than the {limit:,}-pixel "
            "limit): downscale it (BreakHis images are 700x460)."
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageInputError(f"{label} is not an image PIL can read: upload a PNG, JPEG or TIFF file.") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageInputError(f"{label} cannot be read as an image ({exc}).") from exc
    w, h = im.size
    if w < 1 or h < 1:
        raise ImageInputError(f"{label} declares an empty size ({w}x{h}): re-export it.")
    if w * h > limit:
        raise _too_large(label, im.size, limit)
    return im


def _decode(im: Image.Image, label: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im.load()
            return ImageOps.exif_transpose(im)  # phone photos: honour the orientation tag
    except Image.DecompressionBombWarning as exc:  # pragma: no cover - the header check comes first
        raise ImageInputError(f"{label} is too large to decode ({exc}).") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageInputError(f"{label} is truncated or corrupt ({exc}): re-export or re-download it.") from exc


def load_rgb(source: str | os.PathLike | bytes | Image.Image, *, max_pixels: int | None = None,
             name: str | None = None, max_side: int | None = None) -> Image.Image:
    """Open ``source`` (path, bytes or PIL image) as an 8-bit RGB PIL image, fully decoded.

    ``max_pixels`` (default :func:`max_image_pixels`) bounds the decode; ``max_side`` also
    shrinks the result so that its longest side is at most that (JPEG decodes at reduced scale).
    """
    label = _label(source, name)
    if isinstance(source, Image.Image):
        im = source
        declared = im.size
        limit = max_image_pixels() if max_pixels is None else int(max_pixels)
        if im.size[0] * im.size[1] > limit:
            raise _too_large(label, im.size, limit)
    else:
        if not isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)):
            raise ImageInputError(f"cannot read a {type(source).__name__} as an image: pass a path, bytes or a PIL image.")
        with _handle(source, label) as fh:
            try:
                empty = fh.seek(0, os.SEEK_END) == 0
                fh.seek(0)
            except OSError as exc:
                raise ImageInputError(f"{label} cannot be read ({exc}).") from exc
            if empty:
                raise ImageInputError(f"{label} is empty (0 bytes): choose a PNG, JPEG or TIFF image.")
            im = open_header(fh, label, max_pixels=max_pixels)
            declared = im.size
            if max_side and max(im.size) > max_side and im.format == "JPEG":
                scale = max_side / max(im.size)
                im.draft("RGB", (max(1, int(im.size[0] * scale)), max(1, int(im.size[1] * scale))))
            im = _decode(im, label)
    # exif_transpose may have turned the image a quarter: the original size turns with it
    turned = (im.size[0] > im.size[1]) != (declared[0] > declared[1]) and im.size != declared
    original = (declared[1], declared[0]) if turned else declared
    rgb = to_rgb8(im)
    if max_side:
        if rgb is source:  # never resize or tag the caller's own image in place
            rgb = rgb.copy()
        if max(rgb.size) > max_side:
            rgb.thumbnail((max_side, max_side), Image.BILINEAR, reducing_gap=2.0)
        rgb.info[ORIGINAL_SIZE] = original
    return rgb


def load_for_model(source: str | os.PathLike | bytes | Image.Image, *, max_side: int | None = None,
                   name: str | None = None) -> Image.Image:
    """The bounded reader for what a model sees (predict, explain, uploads): :func:`load_rgb`
    shrunk so that its longest side is at most ``max_side`` (default :func:`max_image_side`).
    ``image.info["original_size"]`` holds (width, height) before shrinking."""
    return load_rgb(source, name=name, max_side=max_side or max_image_side())


def image_size(path: str | os.PathLike, *, max_pixels: int | None = None) -> tuple[int, int]:
    """(width, height) from the header alone; :class:`ImageInputError` for anything unusable
    (bomb, over the pixel limit, not an image, empty, a folder, unreadable)."""
    label = str(path)
    with _handle(path, label) as fh:
        if fh.seek(0, os.SEEK_END) == 0:
            raise ImageInputError(f"{label} is empty (0 bytes).")
        fh.seek(0)
        with open_header(fh, label, max_pixels=max_pixels) as im:
            return im.size


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
        arr = np.asarray(im, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) * (255.0 / (hi - lo))
        return Image.fromarray(scaled.round().astype(np.uint8)).convert("RGB")
    return im.convert("RGB")
