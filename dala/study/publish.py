"""``python -m dala hub push-study DIR --repo ID``: a study's best checkpoint per magnification, as
the per-magnification subfolders (``40X/``, ``100X/``, ...) the Explain page lists, with one model
card summarising the study with its CIs. Each subfolder is exactly what :func:`dala.hub.prepare_upload`
writes for one run; everything goes up in one commit.

"Best" is chosen on **validation** (each run's best validation value of its selection metric), never
on test: the test numbers in the card stay honest estimates.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dala.study.plan import StudyError, load_manifest


def choose_best(study: str | os.PathLike) -> dict[int, dict]:
    """``{magnification: {"id", "model", "trial", "run_dir", "best_value", "select_metric"}}``."""
    from dala.study.run import read_state, run_state
    from dala.train.folder import read_report

    study = Path(study).expanduser()
    manifest = load_manifest(study)
    state = read_state(study)
    best: dict[int, dict] = {}
    for e in manifest["runs"]:
        if run_state(study, e, state, max_attempts=int(manifest.get("max_attempts", 2))) != "finished":
            continue
        rep = read_report(study / e["run_dir"]) or {}
        value = rep.get("best_value")
        if value is None:
            continue
        cur = best.get(e["magnification"])
        if cur is None or value > cur["best_value"]:
            best[e["magnification"]] = {"id": e["id"], "model": e["model"], "trial": e["trial"],
                                        "run_dir": study / e["run_dir"], "best_value": float(value),
                                        "select_metric": rep.get("select_metric")}
    if not best:
        raise StudyError(f"no run of {study} has finished: nothing to publish yet (`python -m dala study status "
                         f"{study}`).")
    return dict(sorted(best.items()))


def _fmt(block: dict | None) -> str:
    if not block or block.get("mean") is None:
        return "n/a"
    sd = f" ± {block['std']:.3f}" if block.get("std") is not None else ""
    return f"{block['mean']:.3f}{sd} [{block['lo']:.3f}, {block['hi']:.3f}]"


def study_card(*, repo_id: str, report: dict, best: dict[int, dict], cis: dict[int, dict],
               license: str, dataset_id: str | None = None) -> str:
    from huggingface_hub import ModelCardData

    from dala.hub import CARD_TAGS

    synthetic = bool(report.get("synthetic"))
    data = ModelCardData(license=license, library_name="dala", pipeline_tag="image-classification",
                         tags=list(CARD_TAGS) + ["dala-study"] + (["synthetic-data"] if synthetic else []),
                         datasets=[dataset_id] if dataset_id else None, model_name=repo_id.split("/")[-1])
    lines = ["---", data.to_yaml(), "---", "", f"# DALA Lab study ({report.get('preset')} preset): the best "
             "checkpoint per magnification", "",
             "> **Teaching and research only - not for diagnosis.** Trained in DALA Lab; not validated "
             "clinically.", ""]
    if synthetic:
        lines += ["> **SYNTHETIC data.** The study ran on generated BreakHis-like images: the scores say nothing "
                  "about real tissue.", ""]
    lines += [f"{report['n_finished']} runs = models {', '.join(report.get('models') or [])} x magnifications "
              f"{', '.join(f'{m}X' for m in report.get('magnifications') or [])} x {report.get('trials')} "
              "patient-wise trials (the same split for every model within a trial).", "",
              "## Checkpoints", "",
              "Chosen per magnification on **validation** (best validation value of the run's selection metric). "
              "Test accuracy at the threshold locked on validation, with the 95 % interval from bootstrapping that "
              "run's test patients.", "",
              "| subfolder | model | trial | validation | test accuracy [95 % CI] | pull |", "|---|---|---|---|---|---|"]
    for mag, b in best.items():
        ci = cis[mag]
        lines.append(f"| `{mag}X/` | {b['model']} | {b['trial']} | {b['select_metric']} {b['best_value']:.3f} | "
                     f"{ci['value']:.3f} [{ci['lo']:.3f}, {ci['hi']:.3f}] ({ci['n_patients']} patients) | "
                     f"`python -m dala hub pull {repo_id} --subfolder {mag}X` |")
    lines += ["", "## The study (measured, mean ± std over trials [pooled 95 % patient-bootstrap CI])", "",
              "| model | magnification | trials | accuracy | patient accuracy | GMean | ROC-AUC |",
              "|---|---|---|---|---|---|---|"]
    for s in report["summary"]:
        m = s["metrics"]
        lines.append(f"| {s['model']} | {s['magnification']}X | {s['n_trials']} | {_fmt(m['accuracy'])} | "
                     f"{_fmt(m['patient_accuracy'])} | {_fmt(m['gmean'])} | {_fmt(m['roc_auc'])} |")
    lines += ["", "The paper reports DALAResNet50 accuracies of 98.5 % (40X), 98.7 % (100X), 97.9 % (200X) and "
              "94.3 % (400X) (**reported**, split protocol not stated).", "", "## The paper's claims, tested", "",
              "| claim | verdict |", "|---|---|"]
    lines += [f"| {c['claim']} | {c['verdict']} |" for c in report["claims"]]
    lines += ["", "Each subfolder holds its run's own card (`README.md`), `report.json`, `split.json` and "
              "`metrics.jsonl`; `study_report.json` here is the whole study report.", ""]
    return "\n".join(lines)


def _redact(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: (f"<local>/{Path(v).name}" if k in ("study", "data") and isinstance(v, str) and os.path.isabs(v)
                    else _redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_redact(v) for v in obj]
    return obj


def prepare_study_upload(study: str | os.PathLike, out_dir: str | os.PathLike, *, repo_id: str,
                         license: str | None = None, dataset_id: str | None = None, n_boot: int = 1000) -> Path:
    """Write the folder :func:`push_study` uploads (new or empty ``out_dir``): one
    :func:`dala.hub.prepare_upload` folder per magnification, the study card, the study report."""
    from dala.errors import HubError
    from dala.hub import DEFAULT_LICENSE, normalize_repo_id, prepare_upload
    from dala.io import atomic_dir, atomic_write_json, atomic_write_text
    from dala.study.report import build_report, run_ci

    repo_id = normalize_repo_id(repo_id)
    study = Path(study).expanduser()
    best = choose_best(study)
    report = build_report(study, n_boot=n_boot)
    cis = {mag: run_ci(study, b["id"], "accuracy", n_boot=n_boot) for mag, b in best.items()}
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HubError(f"{out} already exists and is not empty; pass a new or empty folder for the upload")
    with atomic_dir(out) as tmp:
        for mag, b in best.items():
            prepare_upload(b["run_dir"], tmp / f"{mag}X", repo_id=repo_id, license=license or DEFAULT_LICENSE,
                           dataset_id=dataset_id)
        atomic_write_json(tmp / "study_report.json", _redact(report))
        atomic_write_text(tmp / "README.md", study_card(repo_id=repo_id, report=report, best=best, cis=cis,
                                                        license=license or DEFAULT_LICENSE, dataset_id=dataset_id))
    return out


def push_study(study: str | os.PathLike, repo_id: str, *, token: str | None = None, revision: str | None = None,
               private: bool = False, dry_run_dir: str | os.PathLike | None = None, license: str | None = None,
               dataset_id: str | None = None) -> str | Path:
    """Publish the study (see the module docstring) in one commit; ``dry_run_dir``: only write the
    folder. Offline or with the Hub unreachable it fails at once with :class:`~dala.errors.HubError`."""
    from dala.hub import normalize_repo_id

    repo_id = normalize_repo_id(repo_id)
    study = Path(study).expanduser()
    if dry_run_dir is not None:
        return prepare_study_upload(study, dry_run_dir, repo_id=repo_id, license=license, dataset_id=dataset_id)
    choose_best(study)  # nothing finished: say so before touching the network
    from dala.hub.push import upload_prepared

    hint = f"`python -m dala hub push-study {study} --repo {repo_id} --dry-run DIR` writes the folder without sending it"
    return upload_prepared(lambda out: prepare_study_upload(study, out, repo_id=repo_id, license=license,
                                                            dataset_id=dataset_id),
                           repo_id, what=f"study {study.name}", hint=hint, token=token, revision=revision,
                           private=private, commit_message=f"DALA Lab study: {study.name}")


def register_push_study(hub_sub) -> None:
    """Add ``push-study`` to the ``hub`` subcommands (called from :mod:`dala.hub.cli`)."""
    p = hub_sub.add_parser("push-study", help="publish a study's best checkpoint per magnification with one card",
                           description="Upload the best run (chosen on validation) of each magnification of study "
                                       "DIR as subfolders 40X/ 100X/ 200X/ 400X/ (each a `hub push` folder) and one "
                                       "model card summarising the study with its CIs, in one commit.")
    p.add_argument("study", metavar="DIR", help="study folder (python -m dala study plan/run)")
    p.add_argument("--repo", required=True, metavar="ID", help="model repo id, owner/name")
    p.add_argument("--dry-run", metavar="OUT", help="only write the upload folder to OUT (new or empty)")
    p.add_argument("--revision", help="branch to commit to (created if missing; default main)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--token", help="Hub token (default: HF_TOKEN or `hf auth login`)")
    p.add_argument("--dataset-id", help="Hub dataset id to name in the card's metadata")
    p.add_argument("--license", default=None, help="card license id (default cc-by-nc-4.0)")
    p.set_defaults(func=_push_study_cli)


def _push_study_cli(args) -> int:
    out = push_study(args.study, args.repo, token=args.token, revision=args.revision, private=args.private,
                     dry_run_dir=args.dry_run, license=args.license, dataset_id=args.dataset_id)
    print(f"upload folder written (nothing sent): {out}" if args.dry_run else f"pushed: {out}")
    return 0
