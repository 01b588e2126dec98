"""Stain normalisation: make H&E images look as if stained like one reference image.

Two methods, both from torchstain (pinned; its torch back end):

* ``reinhard`` (Reinhard et al. 2001): match each image's per-channel mean and standard deviation
  in LAB colour space to the reference's. Fast, global, no stain model.
* ``macenko`` (Macenko et al., ISBI 2009): estimate the haematoxylin and eosin optical-density
  vectors of each image, express its pixels as stain concentrations, and rebuild them with the
  reference's stain vectors and concentration range.

:class:`StainNormalizer` takes batches ``(B, 3, H, W)`` uint8 and returns a :class:`StainBatch`
of the same shape. An image the method cannot handle is **never** returned black or NaN: it is
passed through un-normalised with ``normalised[i] = False`` and a note saying why (mostly
background, greyscale, or a stain estimate that is not H&E-like). A reference that cannot anchor a
normalisation (blank, tiny, not RGB, not H&E tissue) raises :class:`StainReferenceError`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from dala.errors import DataError

if TYPE_CHECKING:  # torch loads on first use, so `python -m dala --help` stays instant
    import torch

METHODS = ("reinhard", "macenko")
IO = 240  # transmitted light intensity of a background pixel (torchstain's default)
BETA = 0.15  # optical density below which a pixel counts as background (torchstain's default)
MIN_REFERENCE_SIDE = 32  # px: fewer pixels than this cannot give stable statistics
MIN_REFERENCE_TISSUE = 0.10  # share of the reference that must be tissue (a BreakHis 40X LC field: 0.16)
MIN_IMAGE_TISSUE = 0.05  # below this share of tissue an image is left as it is
MIN_STAIN_COSINE = 0.5  # estimated stain vectors this close to Ruifrok-Johnston H&E count as H&E
# (the 14 BreakHis samples: 0.62-0.99; a noise image's eosin vector: 0.11)
MIN_HE_BALANCE = -5.0  # H&E absorbs green most: mean R-G and B-G over tissue pixels (0..255) at least this
GREY_SPREAD = 4.0  # mean |R-G| + |G-B| (0..255) under which an image has no colour to normalise
# Ruifrok & Johnston (2001) H&E optical-density directions (unit vectors, RGB)
RUIFROK_H = (0.650, 0.704, 0.286)
RUIFROK_E = (0.072, 0.990, 0.105)


class StainReferenceError(DataError):
    """A reference image that cannot anchor a stain normalisation."""


@dataclass
class StainBatch:
    images: torch.Tensor  # (B, 3, H, W) uint8
    normalised: list[bool] = field(default_factory=list)  # False: passed through unchanged
    notes: list[str | None] = field(default_factory=list)  # why an image was not normalised


def as_chw_uint8(image: Any, *, name: str = "the image") -> torch.Tensor:
    """An image (path, bytes, PIL, HxWx3 array, (3, H, W) tensor) as a ``(3, H, W)`` uint8 tensor;
    :class:`StainReferenceError` when it is not an RGB image."""
    import numpy as np
    import torch

    from PIL import Image

    if isinstance(image, (str, os.PathLike, bytes, bytearray, Image.Image)):
        from dala.data.images import load_rgb
        from dala.errors import ImageInputError

        if isinstance(image, Image.Image) and image.mode not in ("RGB", "RGBA", "P", "CMYK", "YCbCr"):
            raise StainReferenceError(f"{name} is a {image.mode} image, not RGB: stain normalisation needs colour (H&E).")
        try:
            pil = load_rgb(image, name=name)
        except ImageInputError as exc:
            raise StainReferenceError(str(exc)) from exc
        return torch.from_numpy(np.array(pil, dtype=np.uint8)).permute(2, 0, 1).contiguous()
    t = torch.as_tensor(np.array(image)) if not isinstance(image, torch.Tensor) else image
    if t.ndim == 3 and t.shape[0] != 3 and t.shape[-1] == 3:
        t = t.permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)
    if t.ndim != 3 or t.shape[0] != 3:
        raise StainReferenceError(f"{name} has shape {tuple(t.shape)}: expected an RGB image, (3, H, W) or (H, W, 3).")
    if t.dtype != torch.uint8:
        if t.is_floating_point() and float(t.max()) <= 1.0:
            t = t * 255.0
        t = t.round().clamp(0, 255).to(torch.uint8)
    return t.contiguous()


def tissue_fraction(image: torch.Tensor) -> float:
    """Share of pixels of a ``(3, H, W)`` uint8 image that are tissue: optical density at least
    :data:`BETA` in every channel (the pixels Macenko's estimate uses)."""
    import torch

    od = -torch.log((image.float() + 1.0) / IO)  # (3, H, W)
    return float((od >= BETA).all(dim=0).float().mean())


def _grey_spread(image: torch.Tensor) -> float:
    x = image.float()
    return float(((x[0] - x[1]).abs() + (x[1] - x[2]).abs()).mean())


def _he_balance(image: torch.Tensor) -> tuple[float, float]:
    """Mean red-minus-green and blue-minus-green over the tissue pixels of a (3, H, W) uint8 image."""
    import torch

    od = -torch.log((image.float() + 1.0) / IO)
    tissue = image.float()[:, (od >= BETA).all(dim=0)]  # (3, N)
    if tissue.shape[1] == 0:
        return 0.0, 0.0
    return float((tissue[0] - tissue[1]).mean()), float((tissue[2] - tissue[1]).mean())


def _stain_cosines(he: torch.Tensor) -> tuple[float, float]:
    """Cosine of the estimated H and E optical-density vectors ((3, 2), H first) with Ruifrok-Johnston's."""
    import torch

    ref = torch.tensor([RUIFROK_H, RUIFROK_E], dtype=torch.float32).T  # (3, 2)
    est = torch.nn.functional.normalize(he.float(), dim=0)
    ref = torch.nn.functional.normalize(ref, dim=0)
    return float((est[:, 0] * ref[:, 0]).sum()), float((est[:, 1] * ref[:, 1]).sum())


def estimate_stains(image: torch.Tensor):
    """(H&E optical-density matrix (3, 2), 99th-percentile concentrations (2,)) of a ``(3, H, W)``
    uint8 image by torchstain's Macenko estimate, or None when the estimate fails."""
    import torch

    from torchstain.torch.normalizers import TorchMacenkoNormalizer

    probe = TorchMacenkoNormalizer()
    try:
        probe.fit(image, Io=IO, beta=BETA)
    except (RuntimeError, IndexError, ValueError):  # too few tissue pixels for the percentiles
        return None
    he, max_c = probe.HERef, probe.maxCRef
    if not (torch.isfinite(he).all() and torch.isfinite(max_c).all()) or float(max_c.min()) <= 1e-6:
        return None
    return he, max_c


def macenko_matrices(image: torch.Tensor):
    """Macenko's estimate for a ``(3, H, W)`` uint8 image, step for step as torchstain's
    ``TorchMacenkoNormalizer`` (alpha 1, :data:`IO`, :data:`BETA`; its ``cov`` and ``percentile``):
    (H&E optical-density matrix (3, 2), concentrations (2, H*W), 99th-percentile concentrations (2,))."""
    import torch

    from torchstain.torch.utils import cov, percentile

    od = -torch.log((image.permute(1, 2, 0).reshape(-1, 3).float() + 1) / IO)  # (N, 3)
    od_hat = od[~torch.any(od < BETA, dim=1)]  # tissue pixels
    _, eigvecs = torch.linalg.eigh(cov(od_hat.T))
    eigvecs = eigvecs[:, [1, 2]]  # (3, 2): the plane of the two largest eigenvalues
    proj = od_hat @ eigvecs
    phi = torch.atan2(proj[:, 1], proj[:, 0])
    lo, hi = percentile(phi, 1), percentile(phi, 99)
    v_min = (eigvecs @ torch.stack((torch.cos(lo), torch.sin(lo)))).unsqueeze(1)
    v_max = (eigvecs @ torch.stack((torch.cos(hi), torch.sin(hi)))).unsqueeze(1)
    he = torch.where(v_min[0] > v_max[0], torch.cat((v_min, v_max), dim=1), torch.cat((v_max, v_min), dim=1))
    conc = torch.linalg.pinv(he) @ od.T  # (2, N)
    max_c = torch.stack([percentile(conc[0], 99), percentile(conc[1], 99)])
    return he, conc, max_c


def reinhard(image: torch.Tensor, means: torch.Tensor, stds: torch.Tensor) -> torch.Tensor:
    """torchstain's Reinhard normalisation of a ``(3, H, W)`` uint8 image to the LAB channel
    ``means`` / ``stds`` (its colour conversions and constants, formula for formula), with
    ``torch.where`` in place of its masked select/scatter pairs (most of its time on a CPU).
    Returns ``(H, W, 3)`` uint8."""
    import torch

    from torchstain.torch.utils.lab2rgb import _xyz2rgb
    from torchstain.torch.utils.rgb2lab import _rgb2xyz, _white

    white = _white.view(3, 1, 1)
    levels = torch.arange(256, dtype=torch.float32) / 255  # sRGB -> linear for the 256 uint8 levels: a lookup
    linear = torch.where(levels > 0.04045, ((levels + 0.055) / 1.055) ** 2.4, levels / 12.92)
    rgb = linear[image.long()]  # (3, H, W)
    xyz = torch.tensordot(_rgb2xyz.T, rgb, dims=([0], [0])) / white  # (3, H, W)
    f = torch.where(xyz > 0.008856, xyz.clamp(min=0) ** (1 / 3), 7.787 * xyz + 16 / 116)
    lab = (116.0 * f[1] - 16.0, 500.0 * (f[0] - f[1]), 200.0 * (f[1] - f[2]))  # L in 0..100, a, b around 0
    lab = [(c - c.mean()) / c.std() * t_std + t_mean for c, t_mean, t_std in zip(lab, means, stds)]
    y = (lab[0] + 16.0) / 116.0
    out = torch.stack([lab[1] / 500.0 + y, y, y - lab[2] / 200.0])  # (3, H, W) XYZ, before the white point
    out = torch.where(out > 0.2068966, out ** 3, (out - 16 / 116) / 7.787) * white
    rgb = torch.tensordot(out, _xyz2rgb.T, dims=([0], [0]))  # (H, W, 3)
    rgb = torch.where(rgb > 0.0031308, 1.055 * rgb.clamp(min=0) ** (1 / 2.4) - 0.055, rgb * 12.92)
    return (rgb.clamp(0, 1) * 255).to(torch.uint8)


def stain_problem(image: torch.Tensor, *, min_tissue: float = MIN_IMAGE_TISSUE, stains: bool = True) -> str | None:
    """Why ``image`` ((3, H, W) uint8) cannot be stain-normalised, or None when it can."""
    frac = tissue_fraction(image)
    if frac < min_tissue:
        return f"mostly background ({frac:.0%} tissue, under {min_tissue:.0%})"
    if _grey_spread(image) < GREY_SPREAD:
        return "greyscale or colourless (no H&E colour to normalise)"
    if not stains:
        return None
    est = estimate_stains(image)
    if est is None:
        return "the stain estimate failed (too few tissue pixels or a degenerate colour distribution)"
    cos_h, cos_e = _stain_cosines(est[0])
    if min(cos_h, cos_e) < MIN_STAIN_COSINE:
        return (f"the estimated stains are not H&E-like (cosine with haematoxylin {cos_h:.2f}, eosin {cos_e:.2f}, "
                f"under {MIN_STAIN_COSINE})")
    return None


class StainNormalizer:
    """Reinhard or Macenko stain normalisation fitted to one reference image.

    ``normalize(batch)`` takes ``(B, 3, H, W)`` (or ``(3, H, W)``, or a list of images) uint8 and
    returns a :class:`StainBatch`; failures pass through unchanged with a note (see the module
    docstring). Not thread-safe (the torchstain normaliser holds state); one per worker.
    """

    def __init__(self, method: str = "macenko", *, reference: Any, reference_name: str | None = None):
        if method not in METHODS:
            raise DataError(f"stain method {method!r} is unknown: use one of {', '.join(METHODS)}.")
        self.method = method
        name = reference_name or (f"reference {str(reference)!r}" if isinstance(reference, (str, os.PathLike)) else "the reference")
        ref = as_chw_uint8(reference, name=name)
        check_reference(ref, name=name)
        from torchstain.torch.normalizers import TorchMacenkoNormalizer, TorchReinhardNormalizer

        if method == "macenko":
            self._normalizer = TorchMacenkoNormalizer()
            self._normalizer.fit(ref, Io=IO, beta=BETA)
        else:
            self._normalizer = TorchReinhardNormalizer()
            self._normalizer.fit(ref)
        self.reference_size = (int(ref.shape[2]), int(ref.shape[1]))  # (W, H)
        self.reference = str(reference) if isinstance(reference, (str, os.PathLike)) else None

    @classmethod
    def from_fit(cls, method: str, fit: dict, *, reference: str | None = None) -> "StainNormalizer":
        """A normaliser rebuilt from :meth:`fit_params` (a checkpoint's ``stain_norm.fit``), without
        the reference image: a checkpoint normalises identically when the reference file is gone."""
        import torch

        from torchstain.torch.normalizers import TorchMacenkoNormalizer, TorchReinhardNormalizer

        if method not in METHODS:
            raise DataError(f"stain method {method!r} is unknown: use one of {', '.join(METHODS)}.")
        keys = ("stain_matrix", "max_concentrations") if method == "macenko" else ("means", "stds")
        try:
            a, b = (torch.tensor(fit[k], dtype=torch.float32) for k in keys)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"the stored {method} stain fit is damaged or incomplete ({exc}); it needs "
                            f"{' and '.join(keys)}: retrain, or re-save the checkpoint.") from None
        shapes = ((3, 2), (2,)) if method == "macenko" else ((3,), (3,))
        if (tuple(a.shape), tuple(b.shape)) != shapes or not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise DataError(f"the stored {method} stain fit has shapes {tuple(a.shape)}, {tuple(b.shape)} (expected "
                            f"{shapes[0]}, {shapes[1]}) or non-finite values: retrain, or re-save the checkpoint.")
        self = cls.__new__(cls)
        self.method = method
        if method == "macenko":
            self._normalizer = TorchMacenkoNormalizer()
            self._normalizer.HERef, self._normalizer.maxCRef = a, b
        else:
            self._normalizer = TorchReinhardNormalizer()
            self._normalizer.target_means, self._normalizer.target_stds = a, b
        self.reference_size = None
        self.reference = reference
        return self

    def fit_params(self) -> dict:
        """The fitted parameters as plain lists (Macenko: the H&E optical-density matrix (3, 2) and
        the 99th-percentile concentrations (2,); Reinhard: the LAB channel means and stds (3,))."""
        n = self._normalizer
        if self.method == "macenko":
            return {"stain_matrix": n.HERef.tolist(), "max_concentrations": n.maxCRef.tolist()}
        return {"means": n.target_means.tolist(), "stds": n.target_stds.tolist()}

    def to_config(self) -> dict:
        """``{"method", "reference", "fit"}``: what a run config and a checkpoint record."""
        ref = getattr(self, "reference", None)
        return {"method": self.method, "reference": None if ref is None else str(ref), "fit": self.fit_params()}

    @classmethod
    def from_config(cls, config: dict | None) -> "StainNormalizer | None":
        """From a checkpoint's ``stain_norm`` entry; None (no normalisation) when absent or ``none``."""
        if not isinstance(config, dict) or config.get("method") in (None, "none"):
            return None
        return cls.from_fit(str(config["method"]), config.get("fit") or {}, reference=config.get("reference"))

    def normalize_rgb(self, rgb: Any) -> tuple[Any, str | None]:
        """One HxWx3 uint8 array (or PIL image): ``(normalised array, None)``, or the input as an
        array and the note saying why it was left as it is."""
        import numpy as np

        arr = np.asarray(rgb, dtype=np.uint8)
        out, note = self._one(as_chw_uint8(arr))
        return (arr if note else out.permute(1, 2, 0).numpy()), note

    def _one(self, image: torch.Tensor) -> tuple[torch.Tensor, str | None]:
        import torch

        problem = stain_problem(image, stains=False)
        if problem:
            return image, problem
        try:
            with torch.no_grad():
                if self.method == "macenko":
                    out, problem = self._macenko(image)  # (H, W, 3)
                    if problem:
                        return image, problem
                else:
                    out = reinhard(image, self._normalizer.target_means, self._normalizer.target_stds)  # (H, W, 3)
        except (RuntimeError, IndexError, ValueError) as exc:
            return image, f"normalisation failed ({exc})"
        if self.method == "macenko":  # finite by construction (checked estimate), in [0, 255]: truncated as torchstain
            out = out.to(torch.uint8).permute(2, 0, 1).contiguous()
        else:
            out = out.float()
            if not torch.isfinite(out).all():
                return image, "normalisation gave non-finite values"
            out = out.clamp(0, 255).round().to(torch.uint8).permute(2, 0, 1).contiguous()
        if float(out.mean(dtype=torch.float32)) < 0.25 * float(image.mean(dtype=torch.float32)):
            return image, "normalisation gave a near-black image"
        return out, None

    def _macenko(self, image: torch.Tensor) -> tuple[torch.Tensor | None, str | None]:
        """Macenko as torchstain computes it, with the stain estimate made once (checked for
        H&E-likeness and used to rebuild the image; torchstain's ``normalize`` would estimate a
        second time) and the concentrations by the pseudo-inverse (the same least-squares
        solution as its ``lstsq``, a (2, 3) x (3, N) product instead of N solves)."""
        import torch

        n = self._normalizer
        he, conc, max_c = macenko_matrices(image)  # (3, 2), (2, N), (2,)
        if not (torch.isfinite(he).all() and torch.isfinite(max_c).all()) or float(max_c.min()) <= 1e-6:
            return None, "the stain estimate failed (too few tissue pixels or a degenerate colour distribution)"
        cos_h, cos_e = _stain_cosines(he)
        if min(cos_h, cos_e) < MIN_STAIN_COSINE:
            return None, (f"the estimated stains are not H&E-like (cosine with haematoxylin {cos_h:.2f}, eosin "
                          f"{cos_e:.2f}, under {MIN_STAIN_COSINE})")
        conc = conc * (n.maxCRef / max_c).unsqueeze(-1)
        out = (IO * torch.exp(-(n.HERef @ conc))).clamp_(max=255)  # (3, N), as torchstain rebuilds it
        if not torch.isfinite(out).all():
            return None, "normalisation gave non-finite values"
        c, h, w = image.shape
        return out.T.reshape(h, w, c), None  # (H, W, 3) float in [0, 255]

    def normalize(self, images: Any) -> StainBatch:
        import torch

        if isinstance(images, torch.Tensor) and images.ndim == 3:
            images = images.unsqueeze(0)
        if isinstance(images, torch.Tensor):
            if images.ndim != 4 or images.shape[1] != 3:
                raise DataError(f"stain normalisation takes (B, 3, H, W) images; got shape {tuple(images.shape)}.")
            items: Sequence = list(images)
        else:
            items = [as_chw_uint8(im, name=f"image {i}") for i, im in enumerate(images)]
        outs, flags, notes = [], [], []
        for im in items:
            im = as_chw_uint8(im)
            out, note = self._one(im)
            outs.append(out)
            flags.append(note is None)
            notes.append(note)
        same = len({tuple(o.shape) for o in outs}) <= 1
        stacked = torch.stack(outs) if outs and same else (outs if outs else torch.zeros(0, 3, 0, 0, dtype=torch.uint8))
        return StainBatch(images=stacked, normalised=flags, notes=notes)

    __call__ = normalize


class StainStep:
    """The per-image stain step applied where an image is decoded (training cache, evaluation,
    prediction, explanation): PIL RGB (or HxWx3 uint8) in, PIL RGB out. With ``size`` the image is
    first resized to ``size x size`` (bilinear, as the training cache stores it), so the cost is
    that of a model-sized image and every path gives the model the same pixels. Counts the images
    left un-normalised (thread-safe: preload decodes in threads)."""

    def __init__(self, normalizer: StainNormalizer, *, size: int | None = None):
        import threading

        self.normalizer = normalizer
        self.size = int(size) if size else None
        self.seen = 0
        self.failed = 0
        self.notes: list[str] = []
        self._lock = threading.Lock()

    def apply(self, image):
        """``(PIL image, note)``: the note says why it was left un-normalised (None: normalised)."""
        import numpy as np
        from PIL import Image

        if isinstance(image, np.ndarray):
            image = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
        if self.size and image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.BILINEAR)
        out, note = self.normalizer.normalize_rgb(image)
        with self._lock:
            self.seen += 1
            if note:
                self.failed += 1
                if len(self.notes) < 5:
                    self.notes.append(note)
        return (image if note else Image.fromarray(out)), note

    def __call__(self, image):
        return self.apply(image)[0]

    def summary(self) -> dict:
        return {"images": self.seen, "fell_back": self.failed, "notes": list(self.notes)}


def default_reference(paths: Sequence[str], *, max_candidates: int = 64) -> str:
    """The per-dataset default reference: among (up to ``max_candidates``, evenly spaced over the
    sorted) ``paths``, the image that can anchor a normalisation whose mean and spread of RGB are
    closest to the candidates' median. Deterministic for the same training images."""
    import numpy as np

    from dala.data.images import load_rgb

    ordered = sorted(str(p) for p in paths)
    if not ordered:
        raise StainReferenceError("no training images to choose a stain reference from: pass --stain-reference IMAGE.")
    step = max(1, len(ordered) // max_candidates)
    stats, usable = [], []
    for path in ordered[::step][:max_candidates]:
        try:
            img = load_rgb(path)
            img.thumbnail((128, 128))
            t = as_chw_uint8(img)
            check_reference(t)
        except (StainReferenceError, DataError, OSError):
            continue
        x = t.float().flatten(1)  # (3, N)
        stats.append(np.concatenate([x.mean(1).numpy(), x.std(1).numpy()]))
        usable.append(path)
    if not usable:
        raise StainReferenceError("none of the training images can anchor a stain normalisation (blank, grey or "
                                  "not H&E-like): pass --stain-reference IMAGE.")
    stats_arr = np.stack(stats)  # (K, 6)
    dist = np.abs(stats_arr - np.median(stats_arr, axis=0)).sum(1)
    return usable[int(np.argmin(dist))]


def check_reference(ref: torch.Tensor, *, name: str = "the reference") -> None:
    """Refuse a reference that cannot anchor a normalisation, saying what to choose instead."""
    h, w = int(ref.shape[1]), int(ref.shape[2])
    fix = "choose a typical, well-stained H&E field (e.g. a BreakHis image) as the reference"
    if min(h, w) < MIN_REFERENCE_SIDE:
        raise StainReferenceError(f"{name} is {w}x{h} px, too small (at least {MIN_REFERENCE_SIDE} px a side): {fix}.")
    frac = tissue_fraction(ref)
    if frac < MIN_REFERENCE_TISSUE:
        raise StainReferenceError(f"{name} is mostly blank background ({frac:.0%} tissue, under "
                                  f"{MIN_REFERENCE_TISSUE:.0%}): {fix}.")
    if _grey_spread(ref) < GREY_SPREAD:
        raise StainReferenceError(f"{name} is greyscale (no colour): {fix}.")
    red_green, blue_green = _he_balance(ref)
    if min(red_green, blue_green) < MIN_HE_BALANCE:
        raise StainReferenceError(f"{name} does not look like H&E tissue (its tissue is greener than H&E: mean red-green "
                                  f"{red_green:.0f}, blue-green {blue_green:.0f}): {fix}.")
    est = estimate_stains(ref)
    if est is None:
        raise StainReferenceError(f"{name}: its stains cannot be estimated: {fix}.")
    cos_h, cos_e = _stain_cosines(est[0])
    if min(cos_h, cos_e) < MIN_STAIN_COSINE:
        raise StainReferenceError(f"{name} does not look like H&E tissue (its stain vectors are {cos_h:.2f} / "
                                  f"{cos_e:.2f} from haematoxylin / eosin, under {MIN_STAIN_COSINE}): {fix}.")


__all__ = ["METHODS", "StainBatch", "StainNormalizer", "StainReferenceError", "StainStep", "default_reference", "as_chw_uint8", "check_reference",
           "estimate_stains", "stain_problem", "tissue_fraction"]
