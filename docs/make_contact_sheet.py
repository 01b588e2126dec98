"""Make docs/img/contact_sheet.png: synthetic fields (all 8 subtypes, 40X/100X/400X, the lesion
mask outlined in green on malignant ones) beside the 14 real BreakHis samples in
../shared/breakhis_sample (labelled; the real images are only read, never copied into the repo).

    python docs/make_contact_sheet.py [--real DIR] [--out PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dala.data import synth  # noqa: E402

TILE = (234, 154)  # half of 350x230 -> a third of BreakHis's 700x460, keeps the file small
PAD, HEAD = 6, 34


def _label(img: Image.Image, text: str) -> None:
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    x0, y0, x1, y1 = d.textbbox((4, 3), text, font=font)
    d.rectangle((x0 - 2, y0 - 2, x1 + 2, y1 + 2), fill=(255, 255, 255))
    d.text((4, 3), text, fill=(0, 0, 0), font=font)


def synthetic_tiles(seed: int = 0, mags=(40, 100, 400)) -> list[list[Image.Image]]:
    rows = []
    codes = ("A", "F", "PT", "TA", "DC", "LC", "MC", "PC")
    for i, code in enumerate(codes):
        pat = synth.Patient(index=100 + i, subtype=code, year=14, slide_id=f"{20000 + i}")
        sig = synth.patient_signature(seed, pat.index)
        row = []
        for mag in mags:
            ref = synth._reference_stats(seed, pat, 100, (350, 230), sig)
            rgb, mask, _ = synth.render_image(seed=seed, patient=pat, mag=mag, seq=1, size=(350, 230),
                                              difficulty=0.5, sig=sig)
            arr = synth._finish(rgb, ref, seed, pat.index, mag, 1)
            if mask is not None:
                cs, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
                arr = arr.copy()
                cv2.drawContours(arr, cs, -1, (0, 200, 0), 2)
            im = Image.fromarray(arr).resize(TILE, Image.LANCZOS)
            _label(im, f"{code} {mag}X" + (" (mask)" if mask is not None else ""))
            row.append(im)
        rows.append(row)
    return rows


def real_tiles(real_dir: Path) -> list[Image.Image]:
    tiles = []
    for p in sorted(real_dir.glob("*.png")):
        im = Image.open(p).convert("RGB").resize(TILE, Image.LANCZOS)
        parts = p.stem.split("-")  # SOB_B_A-14-22549AB-40-001
        _label(im, f"{parts[0].split('_')[-1]} {parts[3]}X")
        tiles.append(im)
    return tiles


def make_contact_sheet(out: Path, real_dir: Path) -> Path:
    syn = synthetic_tiles()
    real = real_tiles(real_dir) if real_dir.is_dir() else []
    tw, th = TILE
    n_rows = len(syn)
    syn_w = 3 * tw + 2 * PAD
    real_cols = 2
    real_w = real_cols * tw + (real_cols - 1) * PAD if real else 0
    W = syn_w + (3 * PAD + real_w if real else 0) + 2 * PAD
    H = HEAD + n_rows * (th + PAD) + PAD
    sheet = Image.new("RGB", (W, H), (255, 255, 255))
    d = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    d.text((PAD, 8), "SYNTHETIC (dala.data.synth, seed 0) - not real tissue; green = lesion mask", fill=(160, 0, 0), font=font)
    for r, row in enumerate(syn):
        for c, im in enumerate(row):
            sheet.paste(im, (PAD + c * (tw + PAD), HEAD + r * (th + PAD)))
    if real:
        x0 = PAD + syn_w + 3 * PAD
        d.line((x0 - 2 * PAD, 0, x0 - 2 * PAD, H), fill=(0, 0, 0), width=2)
        d.text((x0, 8), "real BreakHis (Spanhol et al. 2016), 14 samples", fill=(0, 0, 160), font=font)
        for k, im in enumerate(real):
            sheet.paste(im, (x0 + (k % real_cols) * (tw + PAD), HEAD + (k // real_cols) * (th + PAD)))
    out.parent.mkdir(parents=True, exist_ok=True)
    # 256 colours keep the sheet small enough for the docs (< 1.5 MB)
    sheet = sheet.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    sheet.save(out, format="PNG", optimize=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--real", type=Path, default=REPO.parent / "shared" / "breakhis_sample")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "contact_sheet.png")
    a = ap.parse_args()
    p = make_contact_sheet(a.out, a.real)
    print(f"{p} ({p.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
