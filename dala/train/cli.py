"""``python -m dala train | evaluate | predict``."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train a model (quick: frozen cached stem; full: fine-tune)",
                       description="Train on the synthetic default or a BreakHis folder. Writes a run folder "
                                   "(config, metrics.jsonl, status, checkpoints, report). Ctrl-C stops cleanly; "
                                   "--resume continues a stopped or killed run.")
    t.add_argument("--run-dir", help="run folder (default: runs/<time>-<model>-...). With --resume: the run to continue")
    t.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    t.add_argument("--config", help="a config.json to start from (flags override it)")
    t.add_argument("--data", dest="data_root", help="dataset folder (default: the generated synthetic dataset)")
    t.add_argument("--model")
    t.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                   help="model constructor option, e.g. attention=eca (repeatable)")
    t.add_argument("--no-pretrained", dest="pretrained", action="store_false", default=None)
    t.add_argument("--magnification", type=int, choices=[40, 100, 200, 400])
    t.add_argument("--split", dest="split_mode", choices=["patient", "image"])
    t.add_argument("--split-file")
    t.add_argument("--imbalance", choices=["none", "class_weight", "sampler", "focal", "oversample"])
    t.add_argument("--target-ratio", type=float, help="subsample training data to this benign:malignant ratio")
    t.add_argument("--mode", choices=["quick", "full"])
    t.add_argument("--quick-views", type=int)
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--image-size", type=int)
    t.add_argument("--max-train-images", type=int)
    t.add_argument("--early-stopping", type=int)
    t.add_argument("--select-metric")
    t.add_argument("--seed", type=int)
    t.add_argument("--device")
    t.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    t.add_argument("--name")
    t.add_argument("--queue-root", help=argparse.SUPPRESS)  # the app's runs root: wait for the heavy slot
    t.add_argument("--no-progress", dest="progress", action="store_false")
    t.set_defaults(func=_train)

    e = sub.add_parser("evaluate", help="score a checkpoint on a split part with every metric")
    _checkpoint_args(e)
    e.add_argument("--data", dest="data_root", help="dataset folder (default: the run's, or the synthetic default)")
    e.add_argument("--split-file", help="split JSON (default: the run's split.json)")
    e.add_argument("--part", choices=["train", "val", "test", "all"], default="test")
    e.add_argument("--out", help="write the full report as JSON here")
    e.set_defaults(func=_evaluate)

    p = sub.add_parser("predict", help="classify images with a checkpoint")
    _checkpoint_args(p)
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, TIFF)")
    p.add_argument("--csv", help="also write the predictions here")
    p.set_defaults(func=_predict)


def _checkpoint_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--checkpoint", help="checkpoint folder (model.safetensors + config.json)")
    g.add_argument("--run", help="run folder (uses checkpoints/best)")


def _parse_value(v: str):
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def build_config(args):
    from dala.errors import CLIError
    from dala.train.config import TrainConfig

    base = {}
    if args.config:
        try:
            with open(args.config) as fh:
                base = json.load(fh)
        except (OSError, json.JSONDecodeError) as exc:
            raise CLIError(f"cannot read config {args.config!r}: {exc}") from exc
    cfg = TrainConfig.from_dict(base)
    fields = ["data_root", "model", "pretrained", "magnification", "split_mode", "split_file", "imbalance", "target_ratio",
              "mode", "quick_views", "epochs", "batch_size", "lr", "image_size", "max_train_images", "early_stopping",
              "select_metric", "seed", "device", "precision", "name"]
    changes = {f: getattr(args, f) for f in fields if getattr(args, f, None) is not None}
    if args.model_option:
        opts = dict(cfg.model_options)
        for kv in args.model_option:
            if "=" not in kv:
                raise CLIError(f"--model-option {kv!r} must look like KEY=VALUE (e.g. attention=eca)")
            k, v = kv.split("=", 1)
            opts[k] = _parse_value(v)
        changes["model_options"] = opts
    return cfg.replace(**changes).validate()


def _train(args) -> int:
    from pathlib import Path

    from dala.errors import RunError
    from dala.io import read_json
    from dala.train.config import TrainConfig
    from dala.train.engine import run_training
    from dala.train.folder import RunFolder
    from dala.train.runs import heavy_slot, new_run_dir

    run_dir = Path(args.run_dir) if args.run_dir else None
    existing = read_json(run_dir / "config.json") if run_dir else None
    if args.resume and not existing:
        raise RunError(f"--resume needs --run-dir pointing at an existing run folder (with config.json); got {args.run_dir!r}.")
    if existing and not args.config and not _any_flag(args):
        config = TrainConfig.from_dict(existing).validate()
    else:
        config = build_config(args)
    run_dir = run_dir or new_run_dir(config)
    print(f"run folder: {run_dir}", file=sys.stderr)
    folder = RunFolder(run_dir)
    if args.queue_root:
        with heavy_slot(args.queue_root, folder):
            report = run_training(config, run_dir, progress=args.progress, resume=args.resume)
    else:
        report = run_training(config, run_dir, progress=args.progress, resume=args.resume)
    if not report:
        print(f"stopped. Resume with: python -m dala train --resume --run-dir {run_dir}", file=sys.stderr)
        return 0
    t = report["test"]
    print(f"test ({report['split']['by']}-level split, {t['n']} images, {t['n_patients']} patients): "
          f"accuracy {t['accuracy']:.3f}  balanced acc {t['balanced_accuracy']:.3f}  GMean {_f(t['gmean'])}  "
          f"IBA {_f(t['iba'])}  patient acc {_f(t['patient_accuracy'])}  ({report['weight_source']})")
    print(f"best epoch {report['best_epoch']}, train {report['train_time_s']:.1f} s "
          f"({report['train_images_per_s']:.1f} img/s), total {report['total_time_s']:.1f} s")
    return 0


def _any_flag(args) -> bool:
    skip = {"run_dir", "resume", "config", "queue_root", "progress", "func", "command", "model_option"}
    return any(v is not None for k, v in vars(args).items() if k not in skip) or bool(args.model_option)


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _evaluate(args) -> int:
    from pathlib import Path

    from dala.data import load_index, resolve_dataset
    from dala.data.splits import Split
    from dala.errors import DataError
    from dala.io import atomic_write_json, read_json
    from dala.metrics import classification_report
    from dala.train.predict import load_for_inference, predict_images

    src = args.run or args.checkpoint
    model, cfg = load_for_inference(src)
    run_cfg = (read_json(Path(args.run) / "config.json") if args.run else None) or cfg.get("extra", {}).get("run_config") or {}
    root = resolve_dataset(args.data_root or run_cfg.get("data_root"))
    index = load_index(root)
    split_file = args.split_file or (str(Path(args.run) / "split.json") if args.run else None)
    if args.part == "all" or not split_file:
        frame = index
        if args.part != "all":
            print("no split given: scoring every image (pass --split-file or --run for a held-out part)", file=sys.stderr)
    else:
        frame = Split.load(split_file).frames(index)[args.part]
    if frame.empty:
        raise DataError(f"the {args.part} part is empty.")
    from tqdm.auto import tqdm

    probs = []
    paths = frame["path"].tolist()
    for start in tqdm(range(0, len(paths), 32), desc="evaluate", unit="batch"):
        probs.append(predict_images(model, cfg, paths[start:start + 32]))
    import numpy as np

    probs = np.concatenate(probs)
    rep = classification_report(frame["target"].to_numpy(), probs, patients=frame["patient"].to_numpy(),
                                magnifications=frame["magnification"].to_numpy())
    print(f"{args.part}: {rep['n']} images  accuracy {rep['accuracy']:.3f}  balanced acc {rep['balanced_accuracy']:.3f}  "
          f"GMean {_f(rep['gmean'])}  IBA {_f(rep['iba'])}  MCC {rep['mcc']:.3f}  ROC-AUC {_f(rep['roc_auc'])}  "
          f"patient acc {_f(rep['patient_accuracy'])}")
    if args.out:
        atomic_write_json(args.out, rep)
        print(f"wrote {args.out}")
    return 0


def _predict(args) -> int:
    import csv
    import io

    from dala.train.predict import load_for_inference, predict_images

    model, cfg = load_for_inference(args.run or args.checkpoint)
    names = cfg.get("class_names", ["benign", "malignant"])
    probs = predict_images(model, cfg, args.images)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["image", "prediction", *[f"p_{n}" for n in names]])
    for path, p in zip(args.images, probs):
        w.writerow([path, names[int(p.argmax())], *[f"{v:.4f}" for v in p]])
    sys.stdout.write(buf.getvalue())
    if args.csv:
        from dala.io import atomic_write_text

        atomic_write_text(args.csv, buf.getvalue())
    return 0
