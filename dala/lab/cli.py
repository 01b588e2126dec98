"""``python -m dala lab bank | sweep | score``: the Imbalance Lab from the command line.

Import-light: argparse only at module level; torch and the bank load inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import sys

_STRATEGIES = ("none", "class_weight", "oversample", "smote", "undersample", "focal", "logit_adjust", "threshold")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", dest="data_root", help="dataset folder (default: the synthetic default)")
    p.add_argument("--encoder", default=None,
                   help="random_stem[:MODEL] (default, offline), pretrained:MODEL (cached weights), "
                        "checkpoint:FOLDER or a run folder")
    p.add_argument("--views", type=int, default=None, help="dihedral views averaged per image in the bank (1..8)")
    p.add_argument("--size", type=int, default=None, help="encoder input size in px (default: the model's)")


def _question(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", choices=["patient", "image"], default="patient",
                   help="patient-level (default) or the leaky image-level split")
    p.add_argument("--seed", type=int, default=0, help="split and resampling seed")
    p.add_argument("--magnification", type=int, choices=[40, 100, 200, 400], default=None)
    p.add_argument("--head", choices=["linear", "mlp"], default="linear")
    p.add_argument("--test-prevalence", type=float, default=None,
                   help="share of malignant test images (resampled by whole copies); default: as the data has it")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("lab", help="the Imbalance Lab: feature bank, instant heads, sweeps",
                              description="Class imbalance explored in milliseconds: a frozen encoder's features "
                                          "for every image (the bank, built once), heads fitted on them per question.")
    sub = p.add_subparsers(dest="lab_command", metavar="ACTION")
    b = sub.add_parser("bank", help="build (or reuse) the feature bank and print where it is")
    _common(b)
    b.add_argument("--rebuild", action="store_true", help="build it again even if a whole one exists")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=_cmd_bank)

    s = sub.add_parser("sweep", help="every strategy x ratio: one row each")
    _common(s)
    s.add_argument("--strategies", nargs="+", default=None, metavar="S",
                   help=f"strategies (space or comma separated; default all: {', '.join(_STRATEGIES)})")
    s.add_argument("--ratios", nargs="+", default=None, metavar="R",
                   help="benign training images per malignant one (0.05 = 1:20 ... 20; '1:10' also accepted); "
                        "default 0.05 0.1 0.2 0.5 1 2 5 10 20")
    _question(s)
    s.set_defaults(func=_cmd_sweep)

    c = sub.add_parser("score", help="score one setting")
    _common(c)
    c.add_argument("--strategy", required=True, help=", ".join(_STRATEGIES))
    c.add_argument("--ratio", required=True, help="benign training images per malignant one, e.g. 0.1 or 1:10")
    c.add_argument("--threshold", type=float, default=None,
                   help="decision threshold on P(malignant) in [0, 1] (default: 0.5, or the validation-chosen one "
                        "for --strategy threshold)")
    _question(c)
    c.set_defaults(func=_cmd_score)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _ratio(text) -> float:
    from dala.errors import CLIError

    t = str(text).strip()
    try:
        if ":" in t:
            a, b = t.split(":", 1)
            return float(a) / float(b)
        return float(t)
    except (ValueError, ZeroDivisionError):
        raise CLIError(f"ratio {t!r} is not a number: give benign training images per malignant one, "
                       "e.g. 0.1 or 1:10.") from None


def _split_list(values) -> list[str]:
    return [v for item in values for v in str(item).replace(",", " ").split() if v]


def _open(args: argparse.Namespace):
    from dala.lab.api import open_lab
    from dala.lab.bank import DEFAULT_VIEWS
    from dala.lab.encoders import resolve_encoder

    spec = resolve_encoder(args.encoder, input_size=args.size)
    return open_lab(args.data_root, encoder=spec, views=args.views or DEFAULT_VIEWS, progress=True,
                    rebuild=getattr(args, "rebuild", False))


def _cmd_bank(args: argparse.Namespace) -> int:
    lab = _open(args)
    bank = lab.bank
    out = {"folder": str(bank.folder), "status": "built" if bank.built_now else "reused", "rebuilt_because": bank.rebuilt,
           "images": len(bank.image_ids), "dim": bank.dim, "encoder": bank.encoder["label"],
           "dataset": lab.dataset_label, "build_s": bank.header.get("build_s")}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    if bank.rebuilt:
        print(f"note: the old bank was rebuilt because: {bank.rebuilt}", file=sys.stderr)
    print(f"{out['status']}: {bank.folder}")
    print(f"  {bank.describe()}")
    print(f"  dataset: {lab.dataset_label}")
    return 0


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _print_table(rows: list[dict], keys: list[str]) -> None:
    table = [[_fmt(r.get(k)) for k in keys] for r in rows]
    widths = [max(len(k), *(len(t[i]) for t in table)) if table else len(k) for i, k in enumerate(keys)]
    print("  ".join(k.ljust(w) for k, w in zip(keys, widths)))
    for t in table:
        print("  ".join(c.ljust(w) for c, w in zip(t, widths)))


def _cmd_sweep(args: argparse.Namespace) -> int:
    from dala.lab.common import RATIOS, STRATEGIES, check_prevalence
    from dala.lab.sweeps import sweep

    strategies = _split_list(args.strategies) if args.strategies else list(STRATEGIES)
    ratios = [_ratio(r) for r in _split_list(args.ratios)] if args.ratios else list(RATIOS)
    check_prevalence(args.test_prevalence)
    lab = _open(args)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(strategies) * len(ratios), desc="sweep", unit="setting", disable=args.json or None)
    df = sweep(lab, strategies=strategies, ratios=ratios, split=args.split, seed=args.seed,
               magnification=args.magnification, head=args.head, test_prevalence=args.test_prevalence,
               on_progress=lambda d, n: bar.update(d - bar.n))
    bar.close()
    rows = json.loads(df.to_json(orient="records"))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"# {lab.dataset_label}; encoder: {lab.bank.encoder['label']}; "
          f"{lab.split_label(args.split, args.seed, args.magnification)}; measured in {df.attrs['elapsed_s']:.2f} s")
    _print_table(rows, ["strategy", "ratio", "accuracy", "balanced_accuracy", "gmean", "iba", "f1_macro",
                        "sensitivity", "specificity", "train_benign", "train_malignant"])
    for r in rows:
        if r.get("error"):
            print(f"  {r['strategy']} at ratio {r['ratio']:g}: {r['error']}", file=sys.stderr)
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from dala.lab.common import check_prevalence, check_ratio, check_strategy, check_threshold

    strategy = check_strategy(args.strategy)
    ratio = check_ratio(_ratio(args.ratio))
    check_threshold(args.threshold)
    check_prevalence(args.test_prevalence)
    lab = _open(args)
    res = lab.score(strategy, ratio, threshold=args.threshold, test_prevalence=args.test_prevalence, split=args.split,
                    seed=args.seed, magnification=args.magnification, head=args.head, curves=False)
    if args.json:
        out = {"strategy": strategy, "ratio": ratio, **res.row, "threshold": res.threshold,
               "strategy_threshold": res.strategy_threshold, "confusion_matrix": res.report["confusion_matrix"],
               "setting": res.setting, "provenance": res.provenance, "sizes": res.sizes, "baselines": res.baselines,
               "timing_ms": res.timing_ms}
        print(json.dumps(out, indent=2))
        return 0
    p = res.provenance
    print(f"# {p['dataset']}; encoder: {p['encoder']}; {p['split']}")
    tr, te = res.sizes["train"], res.sizes["test"]
    print(f"training: {tr['benign']} benign / {tr['malignant']} malignant images "
          f"({tr['benign_patients']} / {tr['malignant_patients']} patients); fitted on {res.sizes['fitted']}")
    print(f"test: {te['benign']} benign / {te['malignant']} malignant images, {te['patients']} patients, "
          f"prevalence {te['prevalence']:.3f}; threshold {res.threshold:.3f}")
    rows = [{"model": f"{strategy} @ {ratio:g}", **res.row}] + [{"model": k, **v} for k, v in res.baselines.items()]
    _print_table(rows, ["model", "accuracy", "balanced_accuracy", "gmean", "iba", "f1_macro", "sensitivity",
                        "specificity", "precision", "patient_accuracy"])
    cm = res.report["confusion_matrix"]
    print(f"confusion (rows true benign/malignant, cols predicted): {cm}")
    return 0
