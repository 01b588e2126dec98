"""Turn a dataset folder into the BreakHis index: a DataFrame, one row per image.

One loader serves every source: the official tree
(``BreaKHis_v1/histology_slides/breast/<class>/SOB/<type>/<slide>/<mag>X/<file>.png``), the Kaggle
copy (one more ``BreaKHis_v1/`` on top), a flat folder of BreakHis-named files, and the generated
synthetic default (same layout, plus lesion masks under ``masks/`` and a ``SYNTHETIC`` marker).

Nothing is dropped silently: files that break the naming convention, are not images, cannot be
read, or sit in folders that contradict their name are collected in ``problems`` with the reason.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dala.data.breakhis import CLASSES, IMAGE_EXTENSIONS, MAGNIFICATIONS, SUBTYPES, parse_name
from dala.errors import DataError

INDEX_COLUMNS = [
    "image_id", "path", "label", "target", "subtype", "subtype_name", "magnification",
    "patient", "slide", "slide_id", "seq", "source", "mask_path",
]
PROBLEM_COLUMNS = ["path", "reason"]
SYNTHETIC_MARKER = "SYNTHETIC"
# the PNG text chunk every generated image carries (read from the header): an image copied out of
# its folder, away from the SYNTHETIC file, is still labelled synthetic
PNG_MARKER_KEY = "dala-synthetic"
MASKS_DIR = "masks"
# bookkeeping files that are not data and not problems
_IGNORED_FILES = {SYNTHETIC_MARKER, "DONE", "README.md", "README.txt", ".DS_Store", "Thumbs.db", "desktop.ini"}
_MAG_DIR_RE = re.compile(r"^(\d+)X$", re.IGNORECASE)


@dataclass
class ScanResult:
    root: Path
    index: pd.DataFrame
    problems: pd.DataFrame

    @property
    def source(self) -> str:
        """"synthetic" when the folder carries the SYNTHETIC marker or any image carries the PNG
        marker chunk (a mix of real and generated images is labelled synthetic: never passed off
        as real); else "real". Each row's ``source`` says which its image is."""
        if is_synthetic(self.root) or (len(self.index) and bool((self.index["source"] == "synthetic").any())):
            return "synthetic"
        return "real"


def is_synthetic(root: str | os.PathLike) -> bool:
    """A generated dataset carries a ``SYNTHETIC`` marker at its top (``root`` or an ancestor
    within three levels, so pointing at ``.../BreaKHis_v1`` still counts)."""
    root = Path(root).resolve()
    for folder in [root, *list(root.parents)[:3]]:
        if (folder / SYNTHETIC_MARKER).is_file():
            return True
    return False


def optional(value: Any) -> Any:
    """An optional index cell (``mask_path``, ...) as its value, or None when it is missing.

    Missing is None, NaN, ``pd.NA`` or an empty string: pandas 3 stores a missing string as NaN,
    and NaN is truthy, so ``if row.mask_path:`` is wrong; ``if optional(row.mask_path):`` is right.
    """
    if value is None:
        return None
    if isinstance(value, str):
        return value if value.strip() else None
    if np.ndim(value) == 0:
        try:
            if pd.isna(value):
                return None
        except (TypeError, ValueError):
            pass
    return value


def _marker_root(root: Path) -> Path | None:
    for folder in [root, *list(root.parents)[:3]]:
        if (folder / SYNTHETIC_MARKER).is_file():
            return folder
    return None


def scan(root: str | os.PathLike, *, check_images: bool = True) -> ScanResult:
    """Scan ``root`` for BreakHis images.

    ``check_images`` opens each file's header (cheap, no decode) so that non-images with an image
    extension and empty files land in ``problems`` rather than failing later in training.
    Raises :class:`DataError` if ``root`` is missing or is not a folder.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(
            f"dataset folder {str(root)!r} does not exist. Pass the folder that holds BreaKHis_v1 "
            "(official or Kaggle layout) or a flat folder of BreakHis-named images; "
            "`python -m dala data synth --out DIR` generates a synthetic one."
        )
    if not root.is_dir():
        raise DataError(f"{str(root)!r} is a file, not a folder: pass the dataset folder that holds the images.")
    root = root.resolve()
    source = "synthetic" if is_synthetic(root) else "real"
    marker_root = _marker_root(root) if source == "synthetic" else None
    masks_root = marker_root / MASKS_DIR if marker_root is not None else None

    rows: list[dict] = []
    problems: list[dict] = []
    seen: dict[str, str] = {}
    def unreadable(exc: OSError) -> None:  # os.walk skips a folder it cannot list: say so
        where = Path(exc.filename) if exc.filename else root
        rel = where.relative_to(root).as_posix() if where != root and root in where.parents else str(where)
        problems.append({"path": rel + "/", "reason": f"folder cannot be read ({exc.strerror or exc}): its images are "
                         "not indexed; fix its permissions (chmod u+rx) and scan again"})

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        dirnames.sort()
        here = Path(dirpath)
        if masks_root is not None and (here == masks_root or masks_root in here.parents):
            dirnames[:] = []  # masks are attached to their images, not indexed as images
            continue
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for fname in sorted(filenames):
            if fname in _IGNORED_FILES or fname.startswith("."):
                continue
            path = here / fname
            rel = path.relative_to(root).as_posix()
            if not fname.lower().endswith(IMAGE_EXTENSIONS):
                problems.append({"path": rel, "reason": "not an image file (extension not in " + ", ".join(IMAGE_EXTENSIONS) + ")"})
                continue
            try:
                name = parse_name(fname)
            except DataError as exc:
                problems.append({"path": rel, "reason": str(exc)})
                continue
            folder_issue = _folder_disagreement(path.relative_to(root), name)
            if folder_issue:
                problems.append({"path": rel, "reason": folder_issue})
                continue
            marked = False
            if check_images:
                issue, marked = _image_header(path)
                if issue:
                    problems.append({"path": rel, "reason": issue})
                    continue
            if name.image_id in seen:
                problems.append({"path": rel, "reason": f"duplicate of {seen[name.image_id]} (same file name twice)"})
                continue
            seen[name.image_id] = rel
            mask_path = None
            if masks_root is not None and name.label == "malignant":
                candidate = masks_root / path.relative_to(marker_root)
                mask_path = str(candidate) if candidate.is_file() else None
            rows.append({
                "image_id": name.image_id,
                "path": str(path),
                "label": name.label,
                "target": CLASSES.index(name.label),
                "subtype": name.subtype,
                "subtype_name": name.subtype_name,
                "magnification": name.magnification,
                "patient": name.patient,
                "slide": name.slide,
                "slide_id": name.slide_id,
                "seq": name.seq,
                "source": "synthetic" if marked else source,
                "mask_path": mask_path,
            })
    index = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    if len(index):
        index = index.sort_values(["label", "subtype", "slide", "magnification", "seq"], kind="stable").reset_index(drop=True)
        index["magnification"] = index["magnification"].astype(int)
        index["target"] = index["target"].astype(int)
        index["seq"] = index["seq"].astype(int)
    return ScanResult(root=root, index=index, problems=pd.DataFrame(problems, columns=PROBLEM_COLUMNS))


def load_index(root: str | os.PathLike, *, check_images: bool = True) -> pd.DataFrame:
    """Scan ``root`` and return the index; problems ride along in ``index.attrs["problems"]``
    (a list of {path, reason}). Raises :class:`DataError` if no usable image was found."""
    result = scan(root, check_images=check_images)
    if result.index.empty:
        hint = ""
        if len(result.problems):
            first = result.problems.iloc[0]
            hint = f" {len(result.problems)} file(s) were rejected, e.g. {first['path']}: {first['reason']}."
        raise DataError(
            f"no BreakHis images found under {str(result.root)!r}.{hint} Expected files named like "
            "SOB_B_A-14-22549AB-40-001.png (official tree, Kaggle copy or a flat folder)."
        )
    index = result.index
    index.attrs["root"] = str(result.root)
    index.attrs["source"] = result.source
    index.attrs["problems"] = result.problems.to_dict("records")
    return index


def _folder_disagreement(rel: Path, name) -> str | None:
    """Check the folders above a file against what its name says (only the folders that look
    like BreakHis folders are checked, so flat folders and Kaggle's extra level pass)."""
    parts = rel.parts[:-1]
    if not parts:
        return None
    mag_dir = parts[-1]
    m = _MAG_DIR_RE.match(mag_dir)
    if m and int(m.group(1)) != name.magnification:
        return f"folder {mag_dir!r} disagrees with the file name's magnification {name.magnification}X"
    if m and len(parts) >= 2:
        slide_dir = parts[-2]
        if slide_dir.startswith(name.procedure + "_") and slide_dir != name.slide:
            return f"slide folder {slide_dir!r} disagrees with the file name (expected {name.slide!r})"
    lowered = [p.lower() for p in parts]
    other = CLASSES[1 - CLASSES.index(name.label)]
    if other in lowered:
        return f"file name says {name.label} but it sits in a {other!r} folder"
    subtype_folders = {v[1]: k for k, v in SUBTYPES.items()}
    for p in lowered:
        if p in subtype_folders and subtype_folders[p] != name.subtype:
            return f"file name says subtype {name.subtype} but it sits in a {p!r} folder"
    return None


def _image_header(path: Path) -> tuple[str | None, bool]:
    """(problem or None, whether the PNG carries the synthetic marker chunk), from the header
    alone: the decompression-bomb and pixel-limit checks of :mod:`dala.data.images` run here too,
    so a 74-byte file declaring 100000x100000 pixels becomes a problem row, not a crash."""
    from PIL import UnidentifiedImageError

    from dala.data.images import _handle, open_header
    from dala.errors import ImageInputError

    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)", False
        with _handle(path, path.name) as fh, open_header(fh, path.name) as im:
            return None, PNG_MARKER_KEY in im.info
    except ImageInputError as exc:
        if isinstance(exc.__cause__, UnidentifiedImageError):
            return "not a readable image (unknown or corrupt format)", False
        return _reason(str(exc), path.name), False
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}", False


def _reason(message: str, name: str) -> str:
    """An image error as a problem reason: the path is in its own column, so drop the name."""
    text = message[len(name):].lstrip(" :") if message.startswith(name) else message
    return text[:1].lower() + text[1:] if text else message


def summary(index: pd.DataFrame) -> dict:
    """Counts by class, subtype, magnification and patient (JSON-ready, what ``data scan --json``
    prints and the app's Explore page draws)."""
    by_class = {c: int((index["label"] == c).sum()) for c in CLASSES}
    n = int(len(index))
    return {
        "images": n,
        "source": index.attrs.get("source", index["source"].iloc[0] if n else "unknown"),
        "by_class": by_class,
        "benign_fraction": round(by_class["benign"] / n, 4) if n else None,
        "imbalance_ratio": round(by_class["malignant"] / by_class["benign"], 3) if by_class["benign"] else None,
        "by_subtype": {k: int(v) for k, v in index["subtype"].value_counts().reindex(list(SUBTYPES), fill_value=0).items()},
        "by_magnification": {
            str(k): {c: int(((index["magnification"] == k) & (index["label"] == c)).sum()) for c in CLASSES}
            for k in MAGNIFICATIONS
        },
        "slides": int(index["slide"].nunique()),
        "patients": int(index["patient"].nunique()),
        "slides_by_subtype": {k: int(index.loc[index["subtype"] == k, "slide"].nunique()) for k in SUBTYPES},
        "problems": len(index.attrs.get("problems", [])),
    }
