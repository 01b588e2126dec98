"""``python -m dala data synth | scan | split``."""

from __future__ import annotations

import argparse
import json


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
    t.add_argument("--by", choices=["patient", "image"], default="patient")
    t.add_argument("--test", type=float, default=0.3)
    t.add_argument("--val", type=float, default=0.15)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--magnification", type=int, choices=[40, 100, 200, 400], default=None)
    t.add_argument("--out", required=True, help="split file to write (.json)")
    t.set_defaults(func=_split)


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
