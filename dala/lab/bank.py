"""The feature bank: one frozen encoder's features for every image of a dataset, computed once.

On disk a bank is a folder under ``dala_home()/lab/`` named by what it depends on (dataset
fingerprint, encoder identity, input size, views)::

    <dataset fp[:12]>-<encoder key[:12]>-<size>px-v<views>/
        features.npy   (N, D) float32, numpy's format without pickle
        bank.json      header: format, dataset fingerprint, encoder, input size, views, the image
                       ids in row order, shape, dtype, byte size and sha256 of features.npy

It is loaded memory-mapped (``np.load(mmap_mode="r", allow_pickle=False)``), so every session
and process shares the same pages. A bank whose file is truncated, whose checksum or shape
disagrees with its header, or whose header names another dataset or encoder, is never used:
:func:`load_bank` raises :class:`BankError` naming the problem, :func:`get_bank` rebuilds it
(and says why in ``Bank.rebuilt``). Builders are serialised by one :class:`dala.io.FileLock`
per bank, and a bank appears complete or not at all (:func:`dala.io.atomic_dir`).

The dataset fingerprint hashes every image's id, label, byte size and modification time, so a
regenerated or edited dataset gets a new bank.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from dala.io import FileLock, atomic_dir, atomic_write_json, read_json
from dala.lab.common import BankError, LabError
from dala.lab.encoders import EncoderSpec, resolve_encoder

FORMAT = "dala-lab-bank/1"
FEATURES_FILE = "features.npy"
HEADER_FILE = "bank.json"
CALIBRATION_IMAGES = 160  # a random stem's BatchNorm statistics come from this many training images
DEFAULT_VIEWS = 1  # dihedral views averaged per image (1..8); more views cost build time linearly

Progress = bool | Callable[[int, int], None]


def lab_home() -> Path:
    from dala.paths import dala_home

    return dala_home() / "lab"


def dataset_fingerprint(index: pd.DataFrame) -> str:
    """sha256 over every image's id, target, byte size and mtime (sorted by id)."""
    h = hashlib.sha256()
    for image_id, path, target in sorted(zip(index["image_id"], index["path"], index["target"])):
        try:
            st = os.stat(path)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = -1, -1
        h.update(f"{image_id}\t{int(target)}\t{size}\t{mtime}\n".encode())
    return h.hexdigest()


def _source(index: pd.DataFrame) -> str:
    return "synthetic" if index.attrs.get("source") == "synthetic" or (
        "source" in index and (index["source"] == "synthetic").all()) else "real"


def bank_folder(fingerprint: str, encoder: EncoderSpec, *, views: int = DEFAULT_VIEWS, home: Path | None = None) -> Path:
    key = hashlib.sha256(encoder.identity.encode()).hexdigest()
    return (home or lab_home()) / f"{fingerprint[:12]}-{key[:12]}-{encoder.input_size}px-v{views}"


@dataclass
class Bank:
    folder: Path
    header: dict
    features: np.ndarray  # (N, D) float32, memory-mapped read-only
    rebuilt: str | None = None  # why an existing bank was rebuilt (None: reused or new)
    built_now: bool = False

    @property
    def image_ids(self) -> list[str]:
        return self.header["image_ids"]

    @property
    def fingerprint(self) -> str:
        return self.header["dataset"]["fingerprint"]

    @property
    def encoder(self) -> dict:
        return self.header["encoder"]

    @property
    def source(self) -> str:
        return self.header["dataset"]["source"]

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def describe(self) -> str:
        d = self.header["dataset"]
        tag = "SYNTHETIC" if d["source"] == "synthetic" else "real"
        return (f"{len(self.image_ids)} images ({tag}) x {self.dim} features from {self.encoder['label']}; "
                f"{self.header['views']} view(s) averaged; built in {self.header.get('build_s', 0):.1f} s")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_bank(folder: str | os.PathLike, *, fingerprint: str | None = None, encoder: EncoderSpec | None = None,
              verify: bool = True) -> Bank:
    """Open the bank in ``folder`` memory-mapped, after checking it is whole and, when given,
    that it was built for this dataset ``fingerprint`` and this ``encoder``. ``verify`` also
    recomputes the file's sha256 (one read of the file)."""
    folder = Path(folder)
    fix = "it will be rebuilt by `python -m dala lab bank` (or the lab page) - delete the folder to force it"
    try:
        header = read_json(folder / HEADER_FILE, None, expect=dict)
    except LabError:
        raise
    except Exception as exc:  # DamagedFileError names the file
        raise BankError(f"feature bank header is damaged ({exc}); {fix}.") from None
    if header is None:
        raise BankError(f"no feature bank at {folder} (no {HEADER_FILE}); build it with `python -m dala lab bank`.")
    if header.get("format") != FORMAT:
        raise BankError(f"{folder / HEADER_FILE} is not a DALA lab bank (format {header.get('format')!r}); {fix}.")
    if fingerprint is not None and header.get("dataset", {}).get("fingerprint") != fingerprint:
        raise BankError(f"the feature bank at {folder} was built for another dataset (fingerprint "
                        f"{str(header.get('dataset', {}).get('fingerprint'))[:12]}, this one {fingerprint[:12]}): "
                        f"its features do not belong to these images; {fix}.")
    if encoder is not None and header.get("encoder", {}).get("identity") != encoder.identity:
        raise BankError(f"the feature bank at {folder} was built by another encoder "
                        f"({header.get('encoder', {}).get('label')!r}); {fix}.")
    path = folder / FEATURES_FILE
    if not path.is_file():
        raise BankError(f"the feature bank at {folder} has no {FEATURES_FILE}; {fix}.")
    size = path.stat().st_size
    if size != header.get("bytes"):
        raise BankError(f"{path} is truncated or altered: {size} bytes on disk, {header.get('bytes')} written; {fix}.")
    if verify and _sha256(path) != header.get("sha256"):
        raise BankError(f"{path} does not match its checksum (damaged on disk); {fix}.")
    try:
        feats = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise BankError(f"{path} cannot be read as a numpy array ({exc}); {fix}.") from None
    if list(feats.shape) != header.get("shape") or str(feats.dtype) != header.get("dtype") or \
            len(header.get("image_ids", [])) != feats.shape[0]:
        raise BankError(f"{path} holds {feats.shape} {feats.dtype}, its header says {header.get('shape')} "
                        f"{header.get('dtype')}; {fix}.")
    return Bank(folder=folder, header=header, features=feats)


def bank_problem(folder: str | os.PathLike) -> str | None:
    """A cheap check (no checksum) for pages that re-check on every rerun: None when the bank in
    ``folder`` looks whole (header readable, file of the written size), else what is wrong."""
    folder = Path(folder)
    try:
        header = json.loads((folder / HEADER_FILE).read_text(encoding="utf-8"))
        size = (folder / FEATURES_FILE).stat().st_size
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError) as exc:
        return f"unreadable header or features ({exc})"
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        return "not a DALA lab bank"
    if size != header.get("bytes"):
        return f"{folder / FEATURES_FILE} is truncated or altered: {size} bytes on disk, {header.get('bytes')} written"
    return None


def _calibration_frame(index: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The images a random stem takes its BatchNorm statistics from: the training patients of the
    lab's default split (patient-level, seed 0), so test patients' images do not set them."""
    from dala.data.splits import make_split

    try:
        train = make_split(index, by="patient", seed=0).frames(index)["train"]
        if len(train) > CALIBRATION_IMAGES:  # BatchNorm means and variances settle long before this
            train = train.sample(n=CALIBRATION_IMAGES, random_state=0)
        return train, f"{len(train)} images of the training patients of make_split(by='patient', seed=0)"
    except Exception:  # a dataset too small to split: every image (labels are never used)
        return index, f"all {len(index)} images (too few patients for a split)"


def build_bank(index: pd.DataFrame, encoder: EncoderSpec | str | None = None, *, views: int = DEFAULT_VIEWS,
               folder: str | os.PathLike | None = None, progress: Progress = True, batch_size: int = 32,
               fingerprint: str | None = None) -> Bank:
    """Compute the bank for ``index`` now (no reuse; see :func:`get_bank`) and write it atomically."""
    import torch

    from dala.lab._engine import extract_features, select_precision
    from dala.lab.encoders import build_feature_net

    spec = encoder if isinstance(encoder, EncoderSpec) else resolve_encoder(encoder)
    if not (1 <= int(views) <= 8):
        raise LabError(f"views {views} is out of range: 1..8 dihedral views per image.")
    if index is None or len(index) == 0:
        raise LabError("the dataset has no images: pick a folder with BreakHis images, or the synthetic default.")
    fingerprint = fingerprint or dataset_fingerprint(index)
    folder = Path(folder) if folder else bank_folder(fingerprint, spec, views=views)
    frame = index.sort_values("image_id").reset_index(drop=True)
    t0 = time.perf_counter()
    device = torch.device("cpu")
    dtype = select_precision("auto", device)
    calib, calib_note = _calibration_frame(frame) if spec.kind == "random_stem" else (None, "none (trained weights)")
    net, (mean, std) = build_feature_net(spec, calib, device=device, dtype=dtype)
    bar, callback = None, progress if callable(progress) else None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(frame), desc=f"feature bank ({spec.model}, {spec.kind})", unit="img")

    def on_progress(done: int, total: int) -> None:
        if bar is not None:
            bar.n = done
            bar.refresh()
        if callback is not None:
            callback(done, total)

    try:
        feats = extract_features(net, frame, size=spec.input_size, mean=mean, std=std, views=list(range(int(views))),
                                 device=device, dtype=dtype, batch_size=batch_size, channels_last=False,
                                 on_progress=on_progress)  # (N, V, D) half precision
    finally:
        if bar is not None:
            bar.close()
    arr = feats.float().mean(1).numpy().astype(np.float32)  # (N, D): the views averaged
    if not np.isfinite(arr).all():
        raise LabError(f"the encoder produced non-finite features ({spec.label}); use another encoder.")
    build_s = time.perf_counter() - t0
    with atomic_dir(folder, replace=True) as tmp:
        np.save(tmp / FEATURES_FILE, arr, allow_pickle=False)
        header = {
            "format": FORMAT,
            "dataset": {"fingerprint": fingerprint, "root": str(index.attrs.get("root", "")), "source": _source(index),
                        "n_images": int(len(frame)), "n_patients": int(frame["patient"].nunique())},
            "encoder": spec.to_dict(), "input_size": spec.input_size, "views": int(views),
            "features": "mean and std over space of the stem output" if spec.kind != "checkpoint"
                        else "input of the model's last linear layer",
            "calibration": calib_note if spec.kind == "random_stem" else "none (trained or pretrained weights)",
            "image_ids": frame["image_id"].tolist(), "shape": list(arr.shape), "dtype": str(arr.dtype),
            "bytes": (tmp / FEATURES_FILE).stat().st_size, "sha256": _sha256(tmp / FEATURES_FILE),
            "build_s": round(build_s, 2), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "torch": torch.__version__,
        }
        atomic_write_json(tmp / HEADER_FILE, header)
    bank = load_bank(folder, fingerprint=fingerprint, encoder=spec, verify=False)
    bank.built_now = True
    return bank


def get_bank(index: pd.DataFrame, encoder: EncoderSpec | str | None = None, *, views: int = DEFAULT_VIEWS,
             progress: Progress = True, rebuild: bool = False, verify: bool = True) -> Bank:
    """The bank for ``index`` and ``encoder``: reused when a whole one exists, else built (one
    builder at a time across processes; the others wait and then reuse it). A bank that is
    truncated, damaged or from another dataset is rebuilt, never used; ``Bank.rebuilt`` says why."""
    spec = encoder if isinstance(encoder, EncoderSpec) else resolve_encoder(encoder)
    fingerprint = dataset_fingerprint(index)
    folder = bank_folder(fingerprint, spec, views=views)
    reason = None
    if not rebuild:
        try:
            return load_bank(folder, fingerprint=fingerprint, encoder=spec, verify=verify)
        except BankError as exc:
            if (folder / HEADER_FILE).exists() or folder.exists():
                reason = str(exc)
    with FileLock(folder.parent / ".locks" / f"{folder.name}.lock", timeout=None):
        if not rebuild:  # another process may have finished it while we waited
            try:
                return load_bank(folder, fingerprint=fingerprint, encoder=spec, verify=verify)
            except BankError as exc:
                if folder.exists():
                    reason = str(exc)
        bank = build_bank(index, spec, views=views, folder=folder, progress=progress, fingerprint=fingerprint)
    bank.rebuilt = reason or ("rebuilt on request" if rebuild else None)
    return bank


def list_banks(home: Path | None = None) -> list[dict[str, Any]]:
    """Headers of the banks on disk (damaged ones skipped), newest first."""
    home = home or lab_home()
    out = []
    if not home.is_dir():
        return out
    for p in home.iterdir():
        if p.is_dir() and not p.name.startswith("."):
            if bank_problem(p) is not None:  # the same check the page makes: damaged banks are not listed
                continue
            try:
                h = json.loads((p / HEADER_FILE).read_text(encoding="utf-8"))
                row = {"folder": str(p), **{k: h[k] for k in ("dataset", "encoder", "views", "created")}}
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if isinstance(row["created"], (str, int, float)) and isinstance(row["views"], int):
                out.append(row)
    return sorted(out, key=lambda h: h.get("created", ""), reverse=True)
