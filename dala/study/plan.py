"""Planning a study: presets, the manifest (the plan as JSON) and the checks that keep it honest.

A study folder holds ``manifest.json`` (what to run: one entry per model x magnification x trial),
``splits/<mag>X-trial<t>.json`` (one patient-wise split per magnification and trial, shared by
every model: models are then compared in pairs on identical test patients), ``runs/<id>/`` (one
ordinary run folder per entry, written by one :func:`dala.train.run_training` call),
``eval/<id>.json`` (validation predictions of the best checkpoint and the threshold locked on
them), ``state.json`` (attempts and errors) and the report files.

The manifest is written once by ``plan`` and only read afterwards; everything that changes while
a study runs lives in the run folders and ``state.json``.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any, Sequence

from dala.errors import DalaError, SplitLeakError

FORMAT = "dala-study/1"
MANIFEST = "manifest.json"
STATE = "state.json"
SPLITS_DIR = "splits"
RUNS_DIR = "runs"
EVAL_DIR = "eval"
PRESETS = ("paper", "quick")
PAPER_MODELS = ("dala_resnet50", "resnet50", "seresnet50", "densenet121", "vgg16", "vgg16_inception",
                "vit_b_16", "swin_t", "dinov2_vitb14")
BASELINE = "dala_resnet50"
# The official protocol: 70/30 by patient, five trials; the validation part (model selection and the
# locked threshold) is carved from the 70 % training patients: 0.1 of all, about 1/7 of training.
TEST_FRACTION, VAL_FRACTION = 0.3, 0.1
MAX_ATTEMPTS = 2  # a failed run is retried once, then left failed with its error recorded


class StudyError(DalaError):
    """A study folder, its manifest or its execution is unusable, with what to do instead."""


def _paper_settings(model: str) -> dict[str, Any]:
    """Paper-style training for each model: ImageNet-pretrained, fine-tuned end to end at the
    model's own input size (the paper's setting; our reading of it: AdamW 1e-4 with a cosine
    schedule, 30 epochs, batch 32, selection on validation GMean)."""
    return {"model": model, "pretrained": True, "mode": "full", "image_size": None, "epochs": 30,
            "batch_size": 32, "lr": 1e-4, "scheduler": "cosine", "select_metric": "gmean", "n_tiles": 0}


def _quick_settings(model: str) -> dict[str, Any]:
    """Seconds per run on a 2-core CPU, offline: random weights, 64 px, one epoch (settings from
    :func:`dala.train.config.recommended_settings` for random weights, shrunk)."""
    from dala.train.config import recommended_settings

    rec = recommended_settings(model, pretrained=False)
    return {"model": model, "pretrained": False, "mode": rec["mode"], "lr": rec["lr"], "image_size": 64,
            "epochs": 1, "batch_size": 32, "quick_views": 2, "n_tiles": 0, "select_metric": "gmean"}


PRESET_DEFAULTS: dict[str, dict[str, Any]] = {
    "paper": {"models": list(PAPER_MODELS), "magnifications": [40, 100, 200, 400], "trials": 5,
              "settings": _paper_settings},
    "quick": {"models": ["dala_resnet50", "tiny_cnn"], "magnifications": [40], "trials": 2,
              "settings": _quick_settings},
}


# ---------------------------------------------------------------------------------------------
# the dataset fingerprint


def fingerprint(index) -> dict[str, Any]:
    """What identifies a dataset for a study: a hash of its sorted image ids and their patient keys
    (not of paths: the same BreakHis on another machine is the same dataset)."""
    ids = sorted(zip(index["image_id"].tolist(), index["patient"].tolist()))
    h = hashlib.sha256("\n".join(f"{i}\t{p}" for i, p in ids).encode()).hexdigest()
    return {"sha256": h, "n_images": int(len(index)), "n_patients": int(index["patient"].nunique()),
            "source": str(index.attrs.get("source", "real"))}


def check_fingerprint(manifest: dict, index, root: Path) -> None:
    want, got = manifest.get("fingerprint") or {}, fingerprint(index)
    if want.get("sha256") != got["sha256"]:
        raise StudyError(
            f"this study was planned on another dataset ({want.get('n_images')} images of "
            f"{want.get('n_patients')} patients, {want.get('source')}) than {root} ({got['n_images']} images of "
            f"{got['n_patients']} patients, {got['source']}): its splits name other images. Run it with the "
            f"dataset it was planned on (`data` in its manifest), or plan a new study for this one.")


# ---------------------------------------------------------------------------------------------
# planning


def run_id(model: str, magnification: int, trial: int) -> str:
    return f"{model}-{magnification}X-t{trial}"


def split_name(magnification: int, trial: int) -> str:
    return f"{SPLITS_DIR}/{magnification}X-trial{trial}.json"


def _split_summary(split, index) -> dict[str, dict[str, list[str]]]:
    frames = split.frames(index)
    return {part: {"slides": sorted(set(frames[part]["slide"].tolist())),
                   "patients": sorted(set(frames[part]["patient"].tolist())),
                   "images": int(len(frames[part]))} for part in ("train", "val", "test")}


def make_plan(preset: str, *, data: str | os.PathLike | None, models: Sequence[str] | None = None,
              magnifications: Sequence[int] | None = None, trials: int | None = None,
              epochs: int | None = None, overrides: dict[str, Any] | None = None, seed: int = 0,
              progress: bool = False) -> tuple[dict, dict[str, Any]]:
    """The manifest of a study and its splits (``{relative path: Split}``), not yet written."""
    from dala.data import MAGNIFICATIONS, load_index, official_trials, resolve_dataset
    from dala.models import list_models
    from dala.train.config import TrainConfig

    if preset not in PRESET_DEFAULTS:
        raise StudyError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}.")
    base = PRESET_DEFAULTS[preset]
    models = list(models or base["models"])
    unknown = [m for m in models if m not in list_models()]
    if unknown:
        raise StudyError(f"model(s) {', '.join(unknown)} are not in the registry: choose from "
                         f"{', '.join(list_models())}.")
    if len(set(models)) != len(models):
        raise StudyError(f"--models lists a model twice: {models}.")
    mags = [int(m) for m in (magnifications or base["magnifications"])]
    bad = [m for m in mags if m not in MAGNIFICATIONS]
    if bad or len(set(mags)) != len(mags):
        raise StudyError(f"magnifications must be distinct values of {', '.join(map(str, MAGNIFICATIONS))}; "
                         f"got {mags}.")
    n_trials = int(trials if trials is not None else base["trials"])
    if not 1 <= n_trials <= 50:
        raise StudyError(f"--trials must be between 1 and 50; got {n_trials}.")
    overrides = dict(overrides or {})
    if epochs is not None:
        overrides["epochs"] = int(epochs)
    forbidden = sorted(set(overrides) & {"data_root", "magnification", "split_file", "model", "split_mode"})
    if forbidden:
        raise StudyError(f"{', '.join(forbidden)} cannot be overridden: the study sets them per run "
                         "(use --data, --models and --magnifications).")

    root = Path(resolve_dataset(data, progress=progress)).expanduser().resolve()
    index = load_index(root)
    if index.empty:
        raise StudyError(f"{root} holds no BreakHis images; pass the folder that contains BreaKHis_v1/.")
    splits: dict[str, Any] = {}
    summaries: dict[tuple[int, int], dict] = {}
    for mag in mags:
        try:
            trial_splits = official_trials(index, n_trials=n_trials, test=TEST_FRACTION, val=VAL_FRACTION,
                                           seed=seed, magnification=mag)
        except DalaError as exc:
            raise StudyError(f"cannot split {mag}X into {n_trials} patient-wise trials: {exc}") from None
        for t, sp in enumerate(trial_splits):
            splits[split_name(mag, t)] = sp
            summaries[(mag, t)] = _split_summary(sp, index)

    runs = []
    for mag in mags:
        for t in range(n_trials):
            sp = splits[split_name(mag, t)]
            for model in models:
                cfg = {**base["settings"](model), **overrides, "magnification": mag, "seed": seed + t,
                       "test_fraction": TEST_FRACTION, "val_fraction": VAL_FRACTION, "split_mode": "patient",
                       "name": run_id(model, mag, t)}
                try:
                    TrainConfig.from_dict(cfg).validate()
                except DalaError as exc:
                    raise StudyError(f"settings for {run_id(model, mag, t)} are not valid: {exc}") from None
                runs.append({"id": run_id(model, mag, t), "model": model, "magnification": mag, "trial": t,
                             "seed": seed + t, "split_file": split_name(mag, t), "split_sha256": sp.content_hash(),
                             "split": summaries[(mag, t)], "run_dir": f"{RUNS_DIR}/{run_id(model, mag, t)}",
                             "config": cfg})
    from dala import __version__

    manifest = {
        "format": FORMAT, "preset": preset, "data": str(root), "data_arg": None if data is None else str(data),
        "fingerprint": fingerprint(index), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "dala_version": __version__, "models": models, "magnifications": mags, "trials": n_trials,
        "baseline": BASELINE if BASELINE in models else models[0],
        "protocol": {"test_fraction": TEST_FRACTION, "val_fraction": VAL_FRACTION, "seed": seed,
                     "split": "official_trials: patient-wise, stratified by subtype, per magnification",
                     "same_split_for_every_model": True},
        "overrides": overrides, "max_attempts": MAX_ATTEMPTS, "runs": runs,
    }
    return manifest, splits


def write_study(out: str | os.PathLike, manifest: dict, splits: dict[str, Any]) -> Path:
    """Write a new study folder (refusing to overwrite one that already holds a plan)."""
    from dala.io import atomic_write_json

    out = Path(out).expanduser()
    if (out / MANIFEST).exists():
        raise StudyError(f"{out} already holds a study ({MANIFEST}); its results are kept: choose another "
                         "--out, or continue it with `python -m dala study run DIR`.")
    if out.exists() and not out.is_dir():
        raise StudyError(f"--out {out} is a file; pass a folder.")
    (out / SPLITS_DIR).mkdir(parents=True, exist_ok=True)
    for rel, sp in splits.items():
        sp.save(out / rel)
    atomic_write_json(out / MANIFEST, manifest)  # last: a study exists once its manifest does
    return out


# ---------------------------------------------------------------------------------------------
# reading and checking


def load_manifest(study: str | os.PathLike) -> dict:
    from dala.io import read_json

    study = Path(study).expanduser()
    if not study.is_dir():
        raise StudyError(f"study folder {str(study)!r} does not exist; make one with "
                         "`python -m dala study plan quick --out DIR`.")
    path = study / MANIFEST
    if not path.is_file():
        raise StudyError(f"{study} is not a study folder (no {MANIFEST}); make one with "
                         "`python -m dala study plan PRESET --out DIR`.")
    m = read_json(path, expect=dict)
    if m.get("format") != FORMAT or not isinstance(m.get("runs"), list):
        raise StudyError(f"{path} is not a DALA study manifest (format {m.get('format')!r}).")
    if not isinstance(m.get("max_attempts", 2), int):
        raise StudyError(f"{path} is malformed: max_attempts is {m.get('max_attempts')!r}, not a whole number; "
                         "plan the study again.")
    for r in m["runs"]:
        if not isinstance(r, dict) or not {"id", "model", "magnification", "trial", "split", "config"} <= set(r) or \
                not all(isinstance(r.get(k), int) for k in ("magnification", "trial")) or \
                not all(isinstance(r.get(k, ""), str) for k in ("id", "model", "run_dir")):
            raise StudyError(f"{path} is malformed: every run needs id, model, magnification, trial, split "
                             "and config; plan the study again.")
    return m


def check_manifest(study: str | os.PathLike, manifest: dict) -> None:
    """Refuse a manifest whose splits leak patients (naming them), disagree with the split files,
    or give two models of one trial different splits."""
    from dala.data.breakhis import parse_name
    from dala.data.splits import Split

    study = Path(study)
    by_trial: dict[tuple[int, int], dict] = {}
    for r in manifest["runs"]:
        parts = r["split"]
        owner: dict[str, set[str]] = {}
        for part in ("train", "val", "test"):
            block = parts.get(part) or {}
            pats = set(block.get("patients") or [])
            for slide in block.get("slides") or []:
                try:  # the patient key of a slide: <year>-<numeric stem>, from a file name of that slide
                    pats.add(parse_name(_slide_file(slide)).patient)
                except DalaError:
                    raise StudyError(f"run {r['id']}: {slide!r} in its {part} split is not a BreakHis slide "
                                     "folder name (e.g. SOB_B_A_14-22549AB).") from None
            for p in pats:
                owner.setdefault(p, set()).add(part)
        leaks = sorted(p for p, ps in owner.items() if len(ps) > 1)
        if leaks:
            raise SplitLeakError(
                f"study manifest: run {r['id']}'s split puts patient(s) {', '.join(leaks[:10])} in more than one "
                "of train/val/test (edited by hand?): its test would score patients it trained on. Plan the study "
                "again rather than editing manifest.json.")
        key = (r["magnification"], r["trial"])
        first = by_trial.setdefault(key, parts)
        if first != parts:
            raise StudyError(f"study manifest: run {r['id']} has a different split from the other models of "
                             f"{key[0]}X trial {key[1]}; paired comparisons need one split per trial. Plan again.")
    for (mag, t), parts in by_trial.items():
        rel = split_name(mag, t)
        sp = Split.load(study / rel)
        if sp.by != "patient":
            raise StudyError(f"{rel} is not a patient-wise split.")
        from dala.data.breakhis import parse_name as pn

        slides = {part: sorted({pn(i + ".png").slide for i in ids}) for part, ids in sp.parts.items()}
        mine = {part: sorted((parts.get(part) or {}).get("slides") or []) for part in ("train", "val", "test")}
        if {k: v for k, v in slides.items() if v} != {k: v for k, v in mine.items() if v}:
            raise StudyError(f"study manifest: the split of {mag}X trial {t} no longer matches {rel} (edited by "
                             "hand?). Plan the study again rather than editing it.")


def _slide_file(slide: str) -> str:
    """A file name of slide ``SOB_B_A_14-22549AB`` (``SOB_B_A-14-22549AB-40-001.png``)."""
    head, _, rest = slide.partition("_")  # SOB
    cls, _, rest = rest.partition("_")  # B
    sub, _, rest = rest.partition("_")  # A, rest = 14-22549AB
    return f"{head}_{cls}_{sub}-{rest}-40-001.png"


def manifest_json(manifest: dict) -> dict:
    """What ``study plan --json`` prints: the manifest (runs with model, magnification, trial and
    split {train, val, test: {slides, patients}})."""
    return manifest
