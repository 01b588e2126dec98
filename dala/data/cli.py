"""``python -m dala data synth | scan | split`` and ``python -m dala stain``."""

from __future__ import annotations

import argparse
import json

from dala.data.breakhis import MAGNIFICATIONS, SPLIT_BY
from dala.data.stain import METHODS as STAIN_METHODS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="generate, scan and split BreakHis-style datasets")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    s = dsub.add_parser("synth", help="generate the synthetic BreakHis-like dataset (labelled synthetic)")
    s.add_argument("--out", required=True, help="folder to write (created; the BreakHis layout goes inside)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--patients", type=int, default=None, help="number of patient folders (default: the app's default)")
    s.add_argument("--images-per-mag", type=int, default=None, help="images per patient and magnification")
    s.add_argument("--size", type=_size, default=None, help="image size WxH, e.g. 350x230 (BreakHis is 700x460)")
    s.add_argument("--difficulty", type=float, default=None, help="0 (easy) .. 1 (hard): how close malignant morphology is to benign")
    s.set_defaults(func=_synth)

    c = dsub.add_parser("scan", help="index a dataset folder and report counts and problems")
    c.add_argument("root", help="dataset folder: official or Kaggle BreakHis layout, or a flat folder of BreakHis-named files")
    c.add_argument("--json", action="store_true", help="print the counts as JSON")
    c.set_defaults(func=_scan)

    t = dsub.add_parser("split", help="make a patient-level (or leaky image-level) split and save it as JSON")
    t.add_argument("root")
    t.add_argument("--by", choices=SPLIT_BY, default="patient")
    t.add_argument("--test", type=float, default=0.3)
    t.add_argument("--val", type=float, default=0.15)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--magnification", type=int, choices=MAGNIFICATIONS, default=None)
    t.add_argument("--out", required=True, help="split file to write (.json)")
    t.set_defaults(func=_split)

    n = sub.add_parser("stain", help="stain-normalise H&E images to a reference (Reinhard or Macenko)")
    n.add_argument("images", nargs="+", metavar="IMAGE", help="images to normalise (PNG, JPEG, TIFF)")
    n.add_argument("--method", choices=STAIN_METHODS, default="macenko")
    n.add_argument("--reference", required=True, metavar="IMAGE", help="a typical, well-stained H&E field")
    n.add_argument("--out", required=True, metavar="DIR", help="folder for the normalised PNGs (same names)")
    n.set_defaults(func=_stain)


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
        if w < 16 or h < 16:
            raise ValueError
        return w, h
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} must look like 350x230 (width x height, each >= 16)") from None


def _synth(args) -> int:
    from dala.data.synth import DEFAULT_PARAMS, generate

    params = dict(DEFAULT_PARAMS)
    for key, val in (("n_patients", args.patients), ("images_per_mag", args.images_per_mag),
                     ("size", args.size), ("difficulty", args.difficulty)):
        if val is not None:
            params[key] = val
    params["seed"] = args.seed
    root = generate(args.out, progress=True, **params)
    from dala.data.index import load_index, summary

    s = summary(load_index(root))
    print(f"wrote a SYNTHETIC BreakHis-like dataset to {root}: {s['images']} images, "
          f"{s['slides']} patient folders, benign fraction {s['benign_fraction']:.2f}")
    return 0


def _scan(args) -> int:
    from dala.data.index import scan, summary

    result = scan(args.root)
    if result.index.empty and result.problems.empty:
        from dala.errors import DataError

        raise DataError(f"no BreakHis images found under {args.root!r}.")
    index = result.index
    index.attrs["source"] = result.source
    index.attrs["problems"] = result.problems.to_dict("records")
    s = summary(index) if len(index) else {"images": 0}
    if args.json:
        s["problem_list"] = index.attrs["problems"]
        print(json.dumps(s, indent=2))
        return 0
    print(format_summary(s, result))
    return 0


def format_summary(s: dict, result) -> str:
    lines = [f"{result.root}  ({result.source})", f"images: {s['images']}"]
    if s["images"]:
        lines.append(f"slide folders: {s['slides']}   patients (grouping key): {s['patients']}")
        lines.append(f"benign: {s['by_class']['benign']}   malignant: {s['by_class']['malignant']}   "
                     f"benign fraction: {s['benign_fraction']:.3f}")
        lines.append("")
        lines.append(f"{'mag':>5} {'benign':>8} {'malignant':>10} {'total':>7}")
        for mag, c in s["by_magnification"].items():
            lines.append(f"{mag + 'X':>5} {c['benign']:>8} {c['malignant']:>10} {c['benign'] + c['malignant']:>7}")
        lines.append("")
        lines.append("subtype  images  slides")
        for code, n in s["by_subtype"].items():
            lines.append(f"{code:<7} {n:>7} {s['slides_by_subtype'][code]:>7}")
    probs = result.problems
    lines.append("")
    lines.append(f"problems: {len(probs)}")
    for _, row in probs.head(50).iterrows():
        lines.append(f"  {row['path']}: {row['reason']}")
    if len(probs) > 50:
        lines.append(f"  ... and {len(probs) - 50} more (use --json for all)")
    return "\n".join(lines)


def _split(args) -> int:
    from dala.data.index import load_index
    from dala.data.splits import make_split

    index = load_index(args.root)
    split = make_split(index, by=args.by, test=args.test, val=args.val, seed=args.seed, magnification=args.magnification)
    path = split.save(args.out)
    counts = split.counts()
    print(f"wrote {args.by}-level split to {path} (sha256 {split.content_hash()[:12]})")
    for part, c in counts.items():
        print(f"  {part:<5} {c['images']:>6} images  {c['patients']:>4} patients")
    leaks = split.leaking_patients()
    if leaks:
        print(f"  WARNING: {len(leaks)} patients appear in more than one part (image-level split: this is the leak)")
    return 0


def _stain(args) -> int:
    from pathlib import Path

    import numpy as np
    import torch
    from PIL import Image
    from tqdm.auto import tqdm

    from dala.data.images import load_rgb
    from dala.data.stain import StainNormalizer
    from dala.errors import CLIError, DalaError
    from dala.io import atomic_path

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {str(out)!r} is a file: give a folder for the normalised images.")
    stems = [Path(p).stem for p in args.images]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise CLIError(f"two inputs would both be written as {dupes[0]}.png: give images with distinct names.")
    normalizer = StainNormalizer(args.method, reference=args.reference)
    out.mkdir(parents=True, exist_ok=True)
    failed = passed = 0
    for path in tqdm(args.images, desc=f"{args.method} normalisation", unit="img"):
        try:
            rgb = load_rgb(path)
        except DalaError as exc:
            print(f"skipped {path}: {exc}")
            failed += 1
            continue
        batch = normalizer(torch.from_numpy(np.array(rgb)).permute(2, 0, 1).unsqueeze(0))  # (1, 3, H, W)
        if not batch.normalised[0]:
            print(f"{path}: left as it is ({batch.notes[0]})")
            passed += 1
        with atomic_path(out / f"{Path(path).stem}.png", suffix=".png") as tmp:
            Image.fromarray(batch.images[0].permute(1, 2, 0).numpy()).save(tmp, format="PNG")
    done = len(args.images) - failed
    print(f"wrote {done} image(s) to {out} ({args.method}, reference {args.reference})"
          + (f"; {passed} left un-normalised" if passed else "") + (f"; {failed} skipped" if failed else ""))
    return 0 if not failed else 1
