"""Build a placeholder tree with the real BreakHis v1 structure and counts (tiny images under
real-style names), including the patient-key traps. Used by the index and split tests."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from dala.data.breakhis import file_name, parse_name, official_relpath

# Images per subtype and magnification in BreakHis v1 (Spanhol et al. 2016, Table I).
COUNTS = {
    "A": (114, 113, 111, 106), "F": (253, 260, 264, 237), "PT": (109, 121, 108, 115), "TA": (149, 150, 140, 130),
    "DC": (864, 903, 896, 788), "LC": (156, 170, 163, 137), "MC": (205, 222, 196, 169), "PC": (145, 142, 135, 138),
}
FOLDERS = {"A": 4, "F": 10, "PT": 3, "TA": 7, "DC": 38, "LC": 5, "MC": 9, "PC": 6}
MAGS = (40, 100, 200, 400)
# The traps DESIGN.md names: one slide id under two subtypes, ids sharing a numeric stem.
TRAP_IDS = {
    "A": ["22549AB", "29960AB"],
    "F": ["22549CD", "29960CD", "21998CD"],
    "PT": ["21998AB"],
    "DC": ["13412", "15570", "15570C"],
    "LC": ["13412"],
}
MERGED_AWAY = 5  # 22549CD, 29960CD, 21998CD, LC 13412, 15570C each join another folder's patient


def slide_ids() -> dict[str, list[str]]:
    out, next_id = {}, 30000
    for code, n in FOLDERS.items():
        ids = list(TRAP_IDS.get(code, []))
        while len(ids) < n:
            ids.append(str(next_id))
            next_id += 17
        out[code] = ids
    return out


def png_bytes(size=(4, 3), color=(200, 120, 180)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def write_full_tree(root: Path, *, kaggle: bool = False) -> Path:
    """Write all 7,909 placeholder images in the official (or Kaggle) layout under ``root``."""
    data = png_bytes()
    base = root / "BreaKHis_v1" if kaggle else root
    for code, ids in slide_ids().items():
        label = "benign" if code in ("A", "F", "PT", "TA") else "malignant"
        for m_i, mag in enumerate(MAGS):
            total, n = COUNTS[code][m_i], len(ids)
            for f_i, sid in enumerate(ids):
                k = total // n + (1 if f_i < total % n else 0)
                for seq in range(1, k + 1):
                    name = parse_name(file_name(label=label, subtype=code, year="14", slide_id=sid, magnification=mag, seq=seq))
                    path = base / official_relpath(name)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(data)
    return root
