"""``python -m dala train | evaluate | predict``."""

from __future__ import annotations

import argparse
import json
import os
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
    t.add_argument("--stain-norm", choices=["none", "reinhard", "macenko"],
                   help="stain-normalise every image where it is decoded (recorded in the checkpoint: prediction "
                        "and explanation normalise the same way)")
    t.add_argument("--stain-reference", metavar="IMAGE",
                   help="the stain reference image (default: the training image nearest the median colour)")
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


TRAIN_FLAGS = ["data_root", "model", "pretrained", "magnification", "split_mode", "split_file", "imbalance", "target_ratio",
               "mode", "quick_views", "epochs", "batch_size", "lr", "image_size", "max_train_images", "stain_norm",
               "stain_reference", "early_stopping", "select_metric", "seed", "device", "precision", "name"]


def _read_config_file(path: str) -> dict:
    from dala.errors import CLIError

    try:
        with open(path, encoding="utf-8") as fh:
            base = json.load(fh)
    except IsADirectoryError:
        raise CLIError(f"--config {path!r} is a folder: pass a config.json file.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CLIError(f"cannot read config {path!r}: {exc}") from exc
    if not isinstance(base, dict):
        raise CLIError(f"config {path!r} holds a {type(base).__name__}, not an object of training options.")
    return base


def flag_changes(args, base_options: dict | None = None) -> dict:
    """The options the command line sets (flags given, ``--model-option`` merged into ``base_options``)."""
    from dala.errors import CLIError

    changes = {f: getattr(args, f) for f in TRAIN_FLAGS if getattr(args, f, None) is not None}
    if args.model_option:
        opts = dict(base_options or {})
        for kv in args.model_option:
            if "=" not in kv:
                raise CLIError(f"--model-option {kv!r} must look like KEY=VALUE (e.g. attention=eca)")
            k, v = kv.split("=", 1)
            opts[k] = _parse_value(v)
        changes["model_options"] = opts
    return changes


def build_config(args):
    from dala.train.config import TrainConfig

    cfg = TrainConfig.from_dict(_read_config_file(args.config) if args.config else {})
    return cfg.replace(**flag_changes(args, cfg.model_options)).validate()


def _train(args) -> int:
    from pathlib import Path

    from dala.errors import CLIError, RunError
    from dala.train.config import TrainConfig, resume_config
    from dala.train.engine import run_training
    from dala.train.folder import ACTIVE_STATES, RunFolder, is_run_folder, read_config
    from dala.train.runs import heavy_slot, new_run_dir

    run_dir = Path(args.run_dir) if args.run_dir else None
    if run_dir is not None and run_dir.exists() and not run_dir.is_dir():
        raise CLIError(f"--run-dir {str(run_dir)!r} is a file: pass a folder (new, or a run to --resume).")
    existing = read_config(run_dir) if run_dir is not None and is_run_folder(run_dir) else None
    if args.resume:
        if existing is None:
            raise RunError(f"--resume needs --run-dir pointing at an existing run folder (with config.json); "
                           f"got {args.run_dir!r}.")
        changes = flag_changes(args, existing.get("model_options"))
        if args.config:
            changes = {**_read_config_file(args.config), **changes}
        config = resume_config(existing, changes)  # the run's own config; contradictions refused
    elif existing is not None and not args.config and not _any_flag(args):
        config = TrainConfig.from_dict(existing).validate()  # a run folder start_run wrote
    else:
        config = build_config(args)
        if existing is not None and existing != config.to_dict():
            raise RunError(f"{run_dir} already holds a run with other settings: pass --resume to continue it, "
                           "or choose a new --run-dir (nothing was overwritten).")
    if config.stain_reference and not args.resume:  # a bad reference is told before any folder is made
        from dala.data.stain import StainNormalizer

        StainNormalizer(config.stain_norm, reference=config.stain_reference,
                        reference_name=f"--stain-reference {config.stain_reference!r}")
    run_dir = run_dir or new_run_dir(config, create=int(os.environ.get("WORLD_SIZE", "1")) <= 1)  # torchrun: ranks agree
    print(f"run folder: {run_dir}", file=sys.stderr)
    folder = RunFolder(run_dir)
    try:
        if args.queue_root:
            with heavy_slot(args.queue_root, folder):
                report = run_training(config, run_dir, progress=args.progress, resume=args.resume)
        else:
            report = run_training(config, run_dir, progress=args.progress, resume=args.resume)
    except Exception as exc:
        # a launched run that fails before training (its status still says queued) says failed and why;
        # a run another process owns (a refused second trainer) is left alone
        st = folder.status_or_empty()
        if st.get("state") in ACTIVE_STATES and st.get("pid") == os.getpid():
            folder.update_status(state="failed", phase="failed", error=f"{type(exc).__name__}: {exc}")
        raise
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
    return any(getattr(args, f, None) is not None for f in TRAIN_FLAGS) or bool(args.model_option)


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _check_output(path: str | None, flag: str) -> None:
    """An output path must name a file in an existing folder (checked before any work is done)."""
    from pathlib import Path

    from dala.errors import CLIError

    if not path:
        return
    p = Path(path)
    if p.is_dir():
        raise CLIError(f"{flag} {path!r} is a folder: give a file name (e.g. {p / 'out.json'}).")
    if p.parent != Path("") and p.parent.exists() and not p.parent.is_dir():
        raise CLIError(f"{flag} {path!r}: {p.parent} is a file, not a folder.")
    if not p.parent.exists():
        raise CLIError(f"{flag} {path!r}: the folder {p.parent} does not exist; create it first.")


def _check_images(paths: list[str]) -> None:
    from pathlib import Path

    from dala.errors import ImageInputError

    for path in paths:
        p = Path(path)
        if p.is_dir():
            raise ImageInputError(f"{path} is a folder: pass image files (e.g. {path}/*.png).")
        if not p.exists():
            raise ImageInputError(f"{path}: file not found.")
        if not os.access(p, os.R_OK):
            raise ImageInputError(f"{path} cannot be read (permission denied): check its permissions.")


def _evaluate(args) -> int:
    from dala.data import load_index, resolve_dataset
    from dala.errors import DataError
    from dala.io import atomic_write_json
    from dala.metrics import classification_report
    from dala.train.folder import load_split, read_config, split_path
    from dala.train.predict import load_for_inference, predict_images

    _check_output(args.out, "--out")
    src = args.run or args.checkpoint
    model, cfg = load_for_inference(src)
    run_cfg = (read_config(args.run) if args.run else None) or cfg.get("extra", {}).get("run_config") or {}
    root = resolve_dataset(args.data_root or run_cfg.get("data_root"))
    index = load_index(root)
    split_file = args.split_file or (str(split_path(args.run)) if args.run else None)
    if args.part == "all" or not split_file:
        frame = index
        if args.part != "all":
            print("no split given: scoring every image (pass --split-file or --run for a held-out part)", file=sys.stderr)
    else:
        frame = load_split(split_file).frames(index)[args.part]
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

    from dala.train.predict import load_for_inference, predict_calibrated

    _check_output(args.csv, "--csv")
    _check_images(args.images)
    model, cfg = load_for_inference(args.run or args.checkpoint)
    names = cfg.get("class_names", ["benign", "malignant"])
    probs, pred, cal = predict_calibrated(model, cfg, args.images)  # the checkpoint's temperature and threshold
    print(f"probabilities: {cal.label}; label: "
          + (f"malignant at p >= {cal.threshold:.3f} (locked on validation)" if cal.fitted else "the arg-max"),
          file=sys.stderr)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["image", "prediction", *[f"p_{n}" for n in names], "calibration"])
    state = (f"temperature {cal.temperature:.3f}, threshold {cal.threshold:.3f}" if cal.fitted else "uncalibrated")
    for path, p, k in zip(args.images, probs, pred):
        w.writerow([path, names[int(k)], *[f"{v:.4f}" for v in p], state])
    sys.stdout.write(buf.getvalue())
    if args.csv:
        from dala.io import atomic_write_text

        atomic_write_text(args.csv, buf.getvalue())
    return 0
