"""``python -m dala explain``: overlays and a scores table for a folder or list of images.

    python -m dala explain --run runs/r1 --images-dir data/synth --out out/ --method dt-gradcam

writes ``out/<image stem>_<method>.png`` (overlay at the original size) and ``out/scores.csv``
(image, pred, probs, target, method, threshold, pointing / energy_inside / iou where a lesion
mask is found, and the perturbation scores deletion_auc / insertion_auc / road of every image).

    python -m dala faithfulness --run runs/r1 --images-dir data/synth --methods gradcam,dt-gradcam,random

scores the same perturbation metrics for several methods (and the random-map baseline) over a
dataset and prints each metric's mean with a 95 % bootstrap interval per method. Masks are looked up at ``<root>/masks/<path of the image relative to root>`` for
every folder ``root`` above the image (the synthetic layout), or under ``--masks-dir``.
Import-light: torch is imported inside the handler.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dala.errors import ImageInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
DEFAULT_STEPS = 16  # dala.explain.perturbation.DEFAULT_STEPS (not imported: that module imports torch)
FAITHFULNESS_KEYS = ("deletion_auc", "insertion_auc", "road")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "explain", help="Grad-CAM family / DT Grad-CAM overlays and scores for images",
        description="Explain a checkpoint's predictions on images: overlays (PNG) and scores.csv.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="PATH", help="checkpoint folder (model.safetensors + config.json)")
    src.add_argument("--run", metavar="DIR", help="training run folder (uses checkpoints/best, else last)")
    imgs = p.add_mutually_exclusive_group(required=True)
    imgs.add_argument("--images", nargs="+", metavar="FILE", help="image files")
    imgs.add_argument("--images-dir", metavar="DIR", help="folder searched recursively for images")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for overlays and scores.csv")
    p.add_argument("--method", default="gradcam",
                   help="gradcam (default), gradcam++, xgradcam, eigencam, layercam, dt-gradcam, "
                        "scorecam (slow), ablationcam (slow)")
    p.add_argument("--target", default=None, metavar="CLASS",
                   help="class to explain, index or name (default: the predicted class)")
    p.add_argument("--masks-dir", default=None, metavar="DIR",
                   help="root of the lesion masks (mask = DIR/<image path relative to the dataset root>)")
    from dala.explain.dt_rules import DEFAULT_RULE, RULES  # torch-free: the rule names and the measured default

    p.add_argument("--rule", default=None, choices=list(RULES),
                   help=f"dt-gradcam threshold rule (default {DEFAULT_RULE}: the rule that measured best "
                        "against the synthetic lesion masks, docs/explain.md)")
    p.add_argument("--alpha", type=float, default=0.45, help="heatmap weight in the overlay (0..1)")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    p.add_argument("--limit", type=int, default=None, help="explain at most this many images")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                   help=f"deletion/insertion steps (default {DEFAULT_STEPS})")
    p.add_argument("--no-road", action="store_true", help="skip ROAD (the slow score): its column stays empty")
    p.add_argument("--no-faithfulness", action="store_true",
                   help="skip deletion/insertion/ROAD: their columns stay empty")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)

    f = subparsers.add_parser(
        "faithfulness", help="deletion AUC, insertion AUC and ROAD per explanation method over a dataset",
        description="Score explanation methods for faithfulness over images: mean and 95 % interval per method "
                    "(deletion AUC: lower is better; insertion AUC and ROAD: higher is better).")
    src = f.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="PATH", help="checkpoint folder (model.safetensors + config.json)")
    src.add_argument("--run", metavar="DIR", help="training run folder (uses checkpoints/best, else last)")
    imgs = f.add_mutually_exclusive_group(required=True)
    imgs.add_argument("--images", nargs="+", metavar="FILE", help="image files")
    imgs.add_argument("--images-dir", metavar="DIR", help="folder searched recursively for images")
    f.add_argument("--methods", default="gradcam,dt-gradcam,random",
                   help="comma-separated methods; 'random' is the random-map baseline (default gradcam,dt-gradcam,random)")
    f.add_argument("--target", default=None, metavar="CLASS", help="class to explain (default: the predicted class)")
    f.add_argument("--limit", type=int, default=None, help="score at most this many images")
    f.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"deletion/insertion steps (default {DEFAULT_STEPS})")
    f.add_argument("--no-road", action="store_true", help="skip ROAD (the slow score)")
    f.add_argument("--out", default=None, metavar="CSV", help="also write one row per image and method to this CSV")
    f.add_argument("--seed", type=int, default=0, help="seed of the random baseline, tie-breaking and ROAD's noise")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.set_defaults(func=_run_faithfulness)


def collect_images(images=None, images_dir=None, masks_dir=None) -> list[Path]:
    """The image files to explain, sorted; a folder's ``masks/`` subtree is never an input."""
    if images:
        out = []
        for f in images:
            path = Path(f)
            if not path.is_file():
                raise ImageInputError(f"{path}: no such image file.")
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise ImageInputError(f"{path} is not an image file ({', '.join(IMAGE_SUFFIXES)}).")
            out.append(path)
        return out
    root = Path(images_dir)
    if not root.is_dir():
        raise ImageInputError(f"{root}: no such folder of images.")
    skip = [root / "masks"] + ([Path(masks_dir)] if masks_dir else [])
    skip = [s.resolve() for s in skip]
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(_is_under(p.resolve(), s) for s in skip))
    if not files:
        raise ImageInputError(f"{root} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    return files


def _is_under(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def find_mask(image: Path, masks_dir: str | Path | None = None) -> Path | None:
    """The lesion mask of ``image``: ``<root>/masks/<relative path>`` for a folder ``root`` above
    it, or ``masks_dir/<relative path>``, the longest matching relative path first."""
    image = Path(image).resolve()
    for ancestor in reversed(image.parents):  # root-most ancestor first: longest relative path
        rel = image.relative_to(ancestor)
        bases = [Path(masks_dir)] if masks_dir else []
        bases.append(ancestor / "masks")
        for base in bases:
            cand = base / rel
            if cand.is_file() and cand.resolve() != image:
                return cand
    if masks_dir:  # flat folder of masks named like the images
        cand = Path(masks_dir) / image.name
        if cand.is_file():
            return cand
    return None


def _run(args: argparse.Namespace) -> int:
    import csv
    import io
    import json

    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from dala.data.masks import read_lesion_mask
    from dala.explain.api import explain, load_for_explain, to_rgb_array
    from dala.explain.cams import get_method
    from dala.explain.faithfulness import score_explanation
    from dala.explain.perturbation import faithfulness_scores
    from dala.io import atomic_path, atomic_write_text

    method = get_method(args.method).name  # unknown method: error before loading anything
    files = collect_images(args.images, args.images_dir, args.masks_dir)
    if args.limit:
        files = files[: args.limit]
    model, setup = load_for_explain(args.checkpoint or args.run)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    params = {"rule": args.rule} if args.rule and method == "dt-gradcam" else {}
    target = args.target
    if target is not None and target.strip().lstrip("-").isdigit():
        target = int(target)

    rows, used = [], set()
    bar = tqdm(total=len(files), desc=f"explain ({method})", unit="img", disable=args.quiet)
    step = max(1, int(args.batch_size))
    try:
        for start in range(0, len(files), step):
            chunk = files[start:start + step]
            rgbs = [to_rgb_array(f, name=str(f)) for f in chunk]
            expls = explain(model, rgbs, method=method, target=target, alpha=args.alpha, **setup, **params)
            for f, e in zip(chunk, expls):
                name = f"{f.stem}_{method}"
                while name in used:
                    name += "_"
                used.add(name)
                with atomic_path(out / f"{name}.png", suffix=".png") as tmp:
                    Image.fromarray(e.overlay).save(tmp, format="PNG")
                row = {"image": str(f), "overlay": f"{name}.png", "method": method,
                       "pred": e.pred, "pred_label": e.pred_label or "", "target": e.target,
                       "target_label": e.target_label or "", "probs": json.dumps([round(p, 6) for p in e.probs]),
                       "threshold": "" if e.threshold is None else round(e.threshold, 6),
                       "mask": "", "pointing": "", "energy_inside": "", "iou": "",
                       **{k: "" for k in FAITHFULNESS_KEYS}}
                if not args.no_faithfulness:
                    faith = faithfulness_scores(model, e, steps=args.steps, road=not args.no_road)
                    for k in FAITHFULNESS_KEYS:
                        row[k] = "" if not np.isfinite(faith[k]) else round(float(faith[k]), 6)
                mask_path = find_mask(f, args.masks_dir)
                if mask_path is not None:
                    mask = read_lesion_mask(mask_path)  # (H, W) bool
                    if mask.shape != e.heatmap_original.shape:
                        raise ImageInputError(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image "
                                              f"is {e.size[0]}x{e.size[1]}: masks must match their images.")
                    scores = score_explanation(e, mask)
                    row["mask"] = str(mask_path)
                    for k in ("pointing", "energy_inside", "iou"):
                        v = scores[k]
                        row[k] = "" if not np.isfinite(v) else round(float(v), 6)
                    if row["threshold"] == "" and np.isfinite(scores["threshold"]):
                        row["threshold"] = round(scores["threshold"], 6)
                rows.append(row)
            bar.update(len(chunk))
    finally:
        bar.close()
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "scores.csv", buf.getvalue())
    scored = [r for r in rows if r["pointing"] != ""]
    summary = f"{len(rows)} overlays and scores.csv in {out}"
    if scored:
        mean = {k: float(np.nanmean([float(r[k]) for r in scored if r[k] != ""] or [np.nan]))
                for k in ("pointing", "energy_inside", "iou")}
        summary += (f"; {len(scored)} with masks: pointing {mean['pointing']:.3f}, "
                    f"energy inside {mean['energy_inside']:.3f}, IoU {mean['iou']:.3f}")
    print(summary)
    return 0


def _target_arg(target):
    if target is not None and target.strip().lstrip("-").isdigit():
        return int(target)
    return target


def _run_faithfulness(args: argparse.Namespace) -> int:
    import csv
    import io

    import numpy as np
    from tqdm import tqdm

    from dala.errors import CLIError
    from dala.explain.api import explain, load_for_explain, to_rgb_array
    from dala.explain.cams import get_method
    from dala.explain.perturbation import RANDOM_METHOD, faithfulness_scores, mean_interval, random_map
    from dala.io import atomic_write_text

    names = [m.strip() for m in str(args.methods).split(",") if m.strip()]
    methods = [m if m == RANDOM_METHOD else get_method(m).name for m in names]
    if not methods:
        raise CLIError("--methods names no method; e.g. --methods gradcam,dt-gradcam,random")
    files = collect_images(args.images, args.images_dir)
    if args.limit:
        files = files[: args.limit]
    model, setup = load_for_explain(args.checkpoint or args.run)
    target = _target_arg(args.target)
    rows = []
    bar = tqdm(total=len(files) * len(methods), desc="faithfulness", unit="map", disable=args.quiet)
    try:
        for i, f in enumerate(files):
            rgb = to_rgb_array(f, name=str(f))
            base = None
            for method in methods:
                if method == RANDOM_METHOD:  # the baseline: the prediction's explanation with a random map
                    base = base or explain(model, [rgb], method="gradcam", target=target, **setup)[0]
                    s = faithfulness_scores(model, base, heatmap=random_map(base.heatmap.shape, seed=args.seed + i),
                                            steps=args.steps, road=not args.no_road, seed=args.seed)
                else:
                    e = explain(model, [rgb], method=method, target=target, **setup)[0]
                    base = base or e
                    s = faithfulness_scores(model, e, steps=args.steps, road=not args.no_road, seed=args.seed)
                rows.append({"image": str(f), "method": method, "target": s["target"],
                             **{k: round(float(s[k]), 6) if np.isfinite(s[k]) else "" for k in FAITHFULNESS_KEYS},
                             "seconds": round(float(s["seconds"]), 3)})
                bar.update(1)
    finally:
        bar.close()
    if args.out:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(args.out, buf.getvalue())
    print(f"faithfulness over {len(files)} image(s), mean [95 % bootstrap interval]; "
          "deletion AUC: lower is better, insertion AUC and ROAD: higher is better")
    print(f"{'method':<12} {'deletion_auc':>24} {'insertion_auc':>24} {'road':>24} {'s/map':>6}")
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        cells = []
        for k in FAITHFULNESS_KEYS:
            st = mean_interval([float(r[k]) for r in mine if r[k] != ""], seed=args.seed)
            cells.append("n/a" if st["n"] == 0 else f"{st['mean']:.3f} [{st['low']:.3f}, {st['high']:.3f}]")
        secs = float(np.mean([r["seconds"] for r in mine]))
        print(f"{method:<12} {cells[0]:>24} {cells[1]:>24} {cells[2]:>24} {secs:>6.2f}")
    return 0
