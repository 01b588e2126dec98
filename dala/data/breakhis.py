"""BreakHis v1 naming: the facts a file name encodes, and the patient key used for splits.

``SOB_B_A-14-22549AB-40-001.png`` = procedure SOB, class B|M, subtype code, year (2 digits), slide
id, magnification, 3-digit sequence. Its slide folder is the prefix with an underscore before the
year: ``SOB_B_A_14-22549AB``. (Spanhol et al., IEEE TBME 2016.)

**Patient key** (what splits group by): ``<year>-<leading digits of the slide id>``, e.g.
``14-22549`` for ``22549AB`` and ``22549CD``. Why not the slide folder: BreakHis has traps that a
folder-level split leaks through -- slide ``13412`` is both a ductal (DC) and a lobular (LC)
folder (the same fields labelled twice), and several ids share a numeric stem across folders
(``22549AB``/``22549CD``, ``29960AB``/``29960CD``, ``21998AB``/``21998CD``, ``15570``/``15570C``).
Grouping by the numeric stem keeps every one of these together. The key is deliberately
conservative: merging two truly different patients only makes a split slightly coarser, while
splitting one patient in two leaks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dala.errors import DataError

CLASSES: tuple[str, str] = ("benign", "malignant")
MAGNIFICATIONS: tuple[int, ...] = (40, 100, 200, 400)
# how a split groups images: "patient" keeps each patient on one side (the protocol); "image"
# splits images at random and leaks patients (kept for the lesson)
SPLIT_BY: tuple[str, ...] = ("patient", "image")

# subtype code -> (class, folder name in the official tree, readable name)
SUBTYPES: dict[str, tuple[str, str, str]] = {
    "A": ("benign", "adenosis", "adenosis"),
    "F": ("benign", "fibroadenoma", "fibroadenoma"),
    "PT": ("benign", "phyllodes_tumor", "phyllodes tumor"),
    "TA": ("benign", "tubular_adenoma", "tubular adenoma"),
    "DC": ("malignant", "ductal_carcinoma", "ductal carcinoma"),
    "LC": ("malignant", "lobular_carcinoma", "lobular carcinoma"),
    "MC": ("malignant", "mucinous_carcinoma", "mucinous carcinoma"),
    "PC": ("malignant", "papillary_carcinoma", "papillary carcinoma"),
}
CLASS_LETTER = {"B": "benign", "M": "malignant"}

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")

_NAME_RE = re.compile(
    r"^(?P<procedure>[A-Z]+)_(?P<letter>[BM])_(?P<subtype>[A-Z]+)-(?P<year>\d{2})-(?P<slide_id>[0-9A-Za-z]+)"
    r"-(?P<magnification>\d+)-(?P<seq>\d{3})(?P<ext>\.[A-Za-z]+)$"
)
_STEM_RE = re.compile(r"^(\d+)")


@dataclass(frozen=True)
class ImageName:
    """The fields of one BreakHis file name."""

    filename: str
    procedure: str
    label: str  # 'benign' | 'malignant'
    subtype: str  # code: A F PT TA DC LC MC PC
    year: str
    slide_id: str
    magnification: int
    seq: int

    @property
    def image_id(self) -> str:
        return self.filename.rsplit(".", 1)[0]

    @property
    def slide(self) -> str:
        """The slide (patient) folder name in the official tree."""
        letter = self.label[0].upper()
        return f"{self.procedure}_{letter}_{self.subtype}_{self.year}-{self.slide_id}"

    @property
    def patient(self) -> str:
        return patient_key(self.year, self.slide_id)

    @property
    def subtype_folder(self) -> str:
        return SUBTYPES[self.subtype][1]

    @property
    def subtype_name(self) -> str:
        return SUBTYPES[self.subtype][2]


def patient_key(year: str, slide_id: str) -> str:
    """``<year>-<numeric stem of slide id>``: see the module docstring for why."""
    m = _STEM_RE.match(slide_id)
    stem = m.group(1) if m else slide_id
    return f"{year}-{stem}"


def parse_name(filename: str) -> ImageName:
    """Parse a BreakHis file name (a bare name or a path). Raises :class:`DataError` naming the
    field that breaks the convention."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    m = _NAME_RE.match(name)
    if not m:
        raise DataError(
            f"{name!r} does not follow the BreakHis naming convention "
            "SOB_<B|M>_<subtype>-<yy>-<slide>-<magnification>-<nnn>.png (e.g. SOB_B_A-14-22549AB-40-001.png)"
        )
    g = m.groupdict()
    if g["ext"].lower() not in IMAGE_EXTENSIONS:
        raise DataError(f"{name!r}: extension {g['ext']!r} is not an image type ({', '.join(IMAGE_EXTENSIONS)})")
    if g["subtype"] not in SUBTYPES:
        raise DataError(f"{name!r}: unknown subtype code {g['subtype']!r} (expected one of {', '.join(SUBTYPES)})")
    label = CLASS_LETTER[g["letter"]]
    if SUBTYPES[g["subtype"]][0] != label:
        raise DataError(
            f"{name!r}: class letter {g['letter']!r} ({label}) contradicts subtype {g['subtype']!r} "
            f"({SUBTYPES[g['subtype']][0]})"
        )
    mag = int(g["magnification"])
    if mag not in MAGNIFICATIONS:
        raise DataError(f"{name!r}: magnification {mag} is not one of {MAGNIFICATIONS}")
    return ImageName(
        filename=name,
        procedure=g["procedure"],
        label=label,
        subtype=g["subtype"],
        year=g["year"],
        slide_id=g["slide_id"],
        magnification=mag,
        seq=int(g["seq"]),
    )


def file_name(*, label: str, subtype: str, year: str, slide_id: str, magnification: int, seq: int,
              procedure: str = "SOB", ext: str = ".png") -> str:
    """The inverse of :func:`parse_name` (used by the generator and test trees)."""
    letter = "B" if label == "benign" else "M"
    return f"{procedure}_{letter}_{subtype}-{year}-{slide_id}-{magnification}-{seq:03d}{ext}"


def official_relpath(name: ImageName) -> str:
    """Where a file lives in the official tree, relative to the dataset root."""
    return (
        f"BreaKHis_v1/histology_slides/breast/{name.label}/{name.procedure}/{name.subtype_folder}/"
        f"{name.slide}/{name.magnification}X/{name.filename}"
    )
