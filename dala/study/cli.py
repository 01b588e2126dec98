"""``python -m dala study plan | run | status | report``: a study from the command line.

Import-light (``python -m dala --help`` stays instant): the work is imported inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import sys


def _value(text: str):
    """A ``--set key=value`` value as JSON when it parses (numbers, true/false, null), else text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def register(sub: argparse._SubParsersAction) -> None:
    st = sub.add_parser("study", help="plan, run and report a study (models x magnifications x trials)",
                        description="A study reproduces the paper's comparison: every model on every "
                                    "magnification on the same patient-wise trials, run resumably (locally or on "
                                    "Ray) and reported with bootstrap CIs, paired tests and Holm correction.")
    ss = st.add_subparsers(dest="study_command", metavar="STUDY_COMMAND")

    p = ss.add_parser("plan", help="write a study's manifest and splits",
                      description="Presets: paper (the nine models x 40/100/200/400 x five official 70/30 "
                                  "patient-wise trials, paper-style fine-tuning) and quick (two models, 40X, two "
                                  "trials, one epoch at 64 px: about a minute on 2 CPU cores).")
    p.add_argument("preset", choices=["paper", "quick"])
    p.add_argument("--data", metavar="ROOT", help="BreakHis folder (default: the built-in synthetic dataset)")
    p.add_argument("--out", metavar="DIR", required=True, help="the new study folder")
    p.add_argument("--models", nargs="+", metavar="MODEL", help="registry names (default: the preset's)")
    p.add_argument("--magnifications", nargs="+", type=int, metavar="MAG", help="40 100 200 400")
    p.add_argument("--trials", type=int, metavar="N", help="patient-wise trials (the paper's protocol: 5)")
    p.add_argument("--epochs", type=int, help="epochs for every run")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any TrainConfig field for every run, e.g. --set lr=3e-4 --set batch_size=16")
    p.add_argument("--seed", type=int, default=0, help="seed of trial 0 (trial t uses seed+t)")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=_plan)

    r = ss.add_parser("run", help="run every run not yet finished (resumable)",
                      description="Skips finished runs, resumes interrupted ones from their last checkpoint, "
                                  "retries failed ones up to the manifest's max_attempts (errors recorded in "
                                  "state.json).")
    r.add_argument("study", metavar="DIR")
    r.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: one run at a time (one per GPU when several); ray: one Ray task per run")
    r.add_argument("--address", metavar="ADDR", help="Ray cluster address (default: a local cluster)")
    r.add_argument("--retry-failed", action="store_true", help="give failed runs a fresh set of attempts")
    r.add_argument("--num-cpus", type=int, help="CPUs of the local Ray cluster (default 2)")
    r.set_defaults(func=_run)

    s = ss.add_parser("status", help="done / running / failed / left")
    s.add_argument("study", metavar="DIR")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_status)

    rep = ss.add_parser("report", help="tables, CIs, paired tests and the paper's claims",
                        description="Writes report.json, report.md, results.csv, runs.csv and plotly figures "
                                    "into the study folder and prints a summary (--json: report.json; --md: "
                                    "report.md).")
    rep.add_argument("study", metavar="DIR")
    rep.add_argument("--json", action="store_true", help="print report.json")
    rep.add_argument("--md", action="store_true", help="print report.md")
    rep.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    rep.set_defaults(func=_report)

    st.set_defaults(func=lambda args: (st.print_help(), 2)[1])


def _overrides(pairs: list[str]) -> dict:
    from dala.study.plan import StudyError

    out = {}
    for kv in pairs:
        if "=" not in kv:
            raise StudyError(f"--set {kv!r} is not KEY=VALUE (e.g. --set lr=3e-4).")
        k, v = kv.split("=", 1)
        out[k.strip()] = _value(v)
    return out


def _plan(args) -> int:
    from dala.study.plan import make_plan, write_study

    manifest, splits = make_plan(args.preset, data=args.data, models=args.models,
                                 magnifications=args.magnifications, trials=args.trials, epochs=args.epochs,
                                 overrides=_overrides(args.set), seed=args.seed, progress=not args.json)
    out = write_study(args.out, manifest, splits)
    if args.json:
        print(json.dumps(manifest, indent=1))
    else:
        print(f"study planned in {out}: {len(manifest['runs'])} runs = {len(manifest['models'])} models x "
              f"{len(manifest['magnifications'])} magnifications x {manifest['trials']} trials "
              f"(data {manifest['data']}, {manifest['fingerprint']['n_images']} images, "
              f"{manifest['fingerprint']['source']})")
        for (mag, t), e in sorted({(e["magnification"], e["trial"]): e for e in manifest["runs"]}.items()):
            sp = e["split"]
            print(f"  {mag}X trial {t}: train {len(sp['train']['patients'])} / val {len(sp['val']['patients'])} / "
                  f"test {len(sp['test']['patients'])} patients")
        print(f"next: python -m dala study run {out}")
    return 0


def _print_status(st: dict) -> None:
    print(f"{st['study']}: {st['done']} done, {st['running']} running, {st['failed']} failed, "
          f"{st['left']} left (of {st['total']})")
    for r in st["runs"]:
        extra = f"  error: {r['error']}" if r.get("error") and r["state"] != "finished" else ""
        note = f"  ({r['note']})" if r.get("note") else ""
        print(f"  {r['id']:<34} {r['state']:<12} attempts {r['attempts']}{extra}{note}")


def _run(args) -> int:
    from dala.study.run import run_study

    st = run_study(args.study, executor=args.executor, address=args.address, retry_failed=args.retry_failed,
                   num_cpus=args.num_cpus)
    _print_status(st)
    if st["failed"] or st["left"]:
        print(f"some runs did not finish: rerun `python -m dala study run {args.study}` "
              "(finished runs are kept and skipped)", file=sys.stderr)
        return 1
    print(f"next: python -m dala study report {args.study}")
    return 0


def _status(args) -> int:
    from dala.study.run import study_status

    st = study_status(args.study)
    if args.json:
        print(json.dumps(st, indent=1))
    else:
        _print_status(st)
    return 0


def _report(args) -> int:
    from dala.study.report import build_report, summary_lines

    rep = build_report(args.study, n_boot=args.n_boot)
    if args.json:
        print(json.dumps(rep, indent=1))
    elif args.md:
        from pathlib import Path

        print((Path(args.study) / "report.md").read_text(encoding="utf-8"))
    else:
        print("\n".join(summary_lines(rep)))
    return 0
