"""Which DT Grad-CAM threshold rule finds the lesion? Every rule scored on the synthetic lesion masks.

Trains (or reuses, ``--run-dir``) the recommended offline model on the synthetic default --
DALAResNet50 from random weights in quick mode with :func:`dala.train.config.recommended_settings`,
class-weighted loss, split seed 0, as ``bench/bench_quick_offline.py`` -- then takes the run's
**test** images that have a lesion mask (the malignant ones: the index's ``mask_path``), computes
each image's Grad-CAM map of the malignant class once, and scores every rule's region against the
mask (:func:`dala.explain.dt_rules.compare_rules`). Prints one row per rule: mean IoU with a 95 %
bootstrap interval over test *patients*, the paired IoU difference to the best rule, Dice,
precision, recall, region size, and the pointing game (the same for every rule: a threshold does
not move the map's peak), then which rule wins and which is recommended. The same architecture
with untrained weights is scored as a contrast (``--no-untrained`` skips it).

    python bench/bench_dt_rules.py --run-dir /tmp/dt_run --json dt_rules.json   # ~2-4 min to train, once
    python bench/bench_dt_rules.py --model tiny_cnn --epochs 2                  # a faster check
    python bench/bench_dt_rules.py --tiny                                        # seconds: the script works
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

TINY_PARAMS = {"n_patients": 12, "images_per_mag": 1, "size": (96, 64)}
# --sweep: each rule's parameter around its default (is a rule losing only because of its parameter?)
SWEEP = [("mean_std", {"k": k}) for k in (-0.5, 0.0, 0.5)] + [("percentile", {"q": q}) for q in (40, 50, 60, 70)] + \
        [("fixed", {"value": v}) for v in (0.2, 0.3, 0.4)]


def train_or_reuse(run_dir: Path, *, data_root: str, model: str, epochs: int | None, image_size: int | None,
                   seed: int) -> tuple[dict, bool]:
    """(report, reused) of the run in ``run_dir``: reused when it finished with the same model and data."""
    from dala.train import TrainConfig, read_config, read_report, run_training
    from dala.train.config import recommended_settings

    report = read_report(run_dir) if (run_dir / "report.json").exists() else None
    if report:
        cfg = read_config(run_dir)
        same = cfg.get("model") == model and Path(str(cfg.get("data_root"))).resolve() == Path(data_root).resolve()
        if not same:
            raise SystemExit(f"{run_dir} holds a {cfg.get('model')} run on {cfg.get('data_root')}: "
                             f"pass another --run-dir for {model} on {data_root}.")
        return report, True
    rec = recommended_settings(model, pretrained=False)
    cfg = TrainConfig(data_root=data_root, model=model, pretrained=False, mode=rec["mode"],
                      image_size=image_size or rec["image_size"], lr=rec["lr"], epochs=epochs or rec["epochs"],
                      imbalance="class_weight", seed=seed)
    return run_training(cfg, run_dir, progress=False), False


def test_items(run_dir: Path, data_root: str, limit: int | None):
    """The run's test images that have a lesion mask: (items, ids, patients, number of test images)."""
    from dala.data import load_index
    from dala.data.masks import has_mask
    from dala.train import read_split

    index = load_index(data_root).set_index("image_id")
    test_ids = read_split(run_dir).parts["test"]
    rows = index.loc[[i for i in test_ids if i in index.index]]
    rows = rows[[has_mask(p) for p in rows["mask_path"]]]
    if limit:
        rows = rows.iloc[:limit]
    return ([(p, m) for p, m in zip(rows["path"], rows["mask_path"])], list(rows.index), list(rows["patient"]),
            len(test_ids))


def measure(model, setup: dict, items, ids, patients, *, label: str, seed: int, target=1, params=None,
            sweep: bool = False) -> dict:
    from dala.explain.dt_rules import RULES, compare_rules, recommend_rule, summarize_rules

    t0 = time.perf_counter()
    rules = list(RULES) + (SWEEP if sweep else [])
    table = compare_rules(model, items, ids=ids, patients=patients, target=target, params=params, rules=rules,
                          **setup)
    seconds = time.perf_counter() - t0
    summary = summarize_rules(table[table["rule"].isin(RULES)], seed=seed)  # the four rules at their parameters
    return {"model": label, "summary": summary, "verdict": recommend_rule(summary), "table": table,
            "seconds": seconds, "sweep": summarize_rules(table, seed=seed) if sweep else None}


def _ci(v, lo, hi, sign="") -> str:
    return f"{v:{sign}.3f} [{lo:{sign}.3f}, {hi:{sign}.3f}]"


def print_result(res: dict, *, split: str) -> None:
    s = res["summary"]
    first = s.iloc[0]
    print(f"\n{res['model']} -- {split}: {int(first['n_images'])} images with a lesion mask from "
          f"{int(first['n_patients'])} patients; {res['seconds']:.0f} s for the maps and scores")
    print(f"{'rule':<11} {'mean IoU [95% CI]':>22} {'IoU vs best [95% CI]':>24} {'chance':>6} "
          f"{'IoU lift [95% CI]':>22} {'Dice':>6} {'prec':>6} {'recall':>6} {'region':>6} {'empty':>5}")
    for r in s.itertuples():
        diff = "best" if r.best else _ci(r.iou_vs_best, r.iou_vs_best_lo, r.iou_vs_best_hi, "+")
        print(f"{r.rule:<11} {_ci(r.iou, r.iou_lo, r.iou_hi):>22} {diff:>24} {r.iou_chance:>6.3f} "
              f"{_ci(r.iou_lift, r.iou_lift_lo, r.iou_lift_hi, '+'):>22} {r.dice:>6.3f} {r.precision:>6.3f} "
              f"{r.recall:>6.3f} {r.region_fraction:>6.3f} {r.empty_regions:>5d}")
    scored = res["table"].loc[res["table"]["scored"].astype(bool)]
    mf = scored.drop_duplicates("image_id")["mask_fraction"].mean()
    print(f"the same for every rule (the map's, not the region's): pointing game "
          f"{_ci(first['pointing'], first['pointing_lo'], first['pointing_hi'])}, energy inside "
          f"{first['energy_inside']:.3f}; the lesion's mean area share {mf:.3f} (= the energy-inside chance level "
          f"and the IoU of a region covering the whole frame)")
    print("chance: the IoU of a random region of the rule's area; lift = IoU - chance; intervals resample "
          f"test patients ({int(first['n_boot'])} draws); differences are paired (same resamples)")
    flat = int(scored.loc[scored["rule"] == s.iloc[0]["rule"], "empty_region"].sum())
    if flat:
        print(f"{flat} of {int(first['n_images'])} maps are flat (all zero: the class score's gradient is negative "
              "everywhere at the target layer), so no rule keeps a region there: IoU 0 for every rule")
    others = [r for r in s.itertuples() if not r.best]
    if others:
        print(f"IoU lift vs {s.loc[s['best'], 'rule'].iloc[0]} (paired): " + ", ".join(
            f"{r.rule} {_ci(r.iou_lift_vs_best, r.iou_lift_vs_best_lo, r.iou_lift_vs_best_hi, '+')}" for r in others))
    v = res["verdict"]
    print(f"best: {v['best']}; recommended: {v['recommended']} -- {v['reason']}")
    if res.get("sweep") is not None:
        print(f"\nparameter sweep, same maps ({res['model']}): IoU vs the best of all")
        for r in res["sweep"].itertuples():
            diff = "best" if r.best else _ci(r.iou_vs_best, r.iou_vs_best_lo, r.iou_vs_best_hi, "+")
            print(f"{r.rule:<20} IoU {_ci(r.iou, r.iou_lo, r.iou_hi)}  vs best {diff:>24}  lift "
                  f"{_ci(r.iou_lift, r.iou_lift_lo, r.iou_lift_hi, '+')}  region {r.region_fraction:.3f}")


def jsonable(res: dict, *, split: str) -> dict:
    out = {"model": res["model"], "split": split, "seconds": round(res["seconds"], 1), "verdict": res["verdict"],
           "rules": json.loads(res["summary"].to_json(orient="records"))}
    if res.get("sweep") is not None:
        out["sweep"] = json.loads(res["sweep"].to_json(orient="records"))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help="dataset folder (default: the synthetic default; --tiny: a tiny one)")
    ap.add_argument("--model", default="dala_resnet50", help="registry model (default dala_resnet50; tiny_cnn is fast)")
    ap.add_argument("--epochs", type=int, default=None, help="default: the recommended offline setting")
    ap.add_argument("--image-size", type=int, default=None, help="training size (default: the recommended setting)")
    ap.add_argument("--run-dir", default=None, help="train here, or reuse the finished run already here")
    ap.add_argument("--seed", type=int, default=0, help="split, training and bootstrap seed")
    ap.add_argument("--limit", type=int, default=None, help="score at most this many test images")
    ap.add_argument("--no-untrained", action="store_true", help="skip the untrained-weights contrast")
    ap.add_argument("--sweep", action="store_true",
                    help="also score each rule's parameter around its default (same maps; the trained model only)")
    ap.add_argument("--params", default="", metavar="k=1,q=80,value=0.5",
                    help="rule parameters (mean_std's k, percentile's q, fixed's value; default the explainer's)")
    ap.add_argument("--tiny", action="store_true",
                    help="check the script in seconds: a tiny dataset, tiny_cnn, 1 epoch at 32 px")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the summaries here")
    args = ap.parse_args(argv)

    import torch

    from dala.data.synth import ensure_default_dataset, generate
    from dala.explain.api import load_for_explain
    from dala.explain.dt_rules import DEFAULT_RULE, DEFAULT_RULE_PARAMS
    from dala.io import atomic_write_text
    from dala.models import create_model

    try:
        params = {k.strip(): float(v) for k, v in (kv.split("=") for kv in args.params.split(",") if kv.strip())}
    except ValueError:
        raise SystemExit(f"--params {args.params!r}: write k=1.0,q=80,value=0.5") from None
    if set(params) - {"k", "q", "value"}:
        raise SystemExit(f"--params knows k, q and value, not {', '.join(sorted(set(params) - {'k', 'q', 'value'}))}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            args.model, args.epochs, args.image_size = "tiny_cnn", 1, args.image_size or 32
            data_root = args.data or str(generate(Path(tmp) / "data", seed=0, progress=False, **TINY_PARAMS))
        else:
            data_root = args.data or str(ensure_default_dataset(progress=True))
        run_dir = Path(args.run_dir or Path(tmp) / "run")
        t0 = time.perf_counter()
        report, reused = train_or_reuse(run_dir, data_root=data_root, model=args.model, epochs=args.epochs,
                                        image_size=args.image_size, seed=args.seed)
        if not report:
            raise SystemExit(f"training in {run_dir} stopped before it finished: nothing to score.")
        trained_s = time.perf_counter() - t0
        items, ids, patients, n_test = test_items(run_dir, data_root, args.limit)
        if not items:
            raise SystemExit(f"the test split of {run_dir} has no image with a lesion mask: nothing to score.")
        load = os.getloadavg()
        split = f"the run's patient-level test split (seed {args.seed}, {n_test} images)"
        print(f"{args.model}: {'reused' if reused else f'trained in {trained_s:.0f} s'} ({run_dir}); test GMean "
              f"{report['test']['gmean']:.3f}; data {data_root}; {torch.get_num_threads()} torch threads; "
              f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; current default rule {DEFAULT_RULE}")
        model, setup = load_for_explain(run_dir)
        rule_params = {**DEFAULT_RULE_PARAMS, **params}
        print(f"rule parameters: {rule_params}; the map explained: the malignant class")
        trained = f"{args.model} (trained, {report['test']['gmean']:.2f} test GMean)"
        results = [measure(model, setup, items, ids, patients, label=trained, seed=args.seed, params=rule_params,
                           sweep=args.sweep)]
        if not args.no_untrained:
            torch.manual_seed(args.seed)
            untrained = create_model(args.model, pretrained=False)
            # the trained run's input size and normalisation, so only the weights differ. Measured:
            # an untrained DALAResNet50 is saturated (p(benign) ~ 1) and its malignant-class
            # Grad-CAM is negative everywhere, flat after the ReLU: no region, every rule scores 0
            results.append(measure(untrained, setup, items, ids, patients, seed=args.seed, params=rule_params,
                                   label=f"{args.model} (untrained weights)"))
        for res in results:
            print_result(res, split=split)
        if args.json:
            out = {"date": time.strftime("%Y-%m-%d"), "data": data_root, "run_dir": str(run_dir),
                   "load_average": [round(v, 2) for v in load], "torch_threads": torch.get_num_threads(),
                   "test_gmean": report["test"]["gmean"], "default_rule": DEFAULT_RULE, "rule_params": rule_params,
                   "results": [jsonable(r, split=split) for r in results]}
            atomic_write_text(args.json, json.dumps(out, indent=2))
            print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
