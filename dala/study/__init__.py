"""Studies: the paper's comparison (models x magnifications x patient-wise trials) planned, run
resumably on one machine or a Ray cluster, and reported with the statistics a reviewer expects.

``python -m dala study plan | run | status | report``; from Python::

    from dala.study import make_plan, write_study, run_study, build_report

Importing this package imports neither torch nor Ray (Ray only inside the Ray executor).
"""

from __future__ import annotations

from dala.study.plan import (BASELINE, PAPER_MODELS, PRESETS, StudyError, check_manifest, load_manifest,
                             make_plan, write_study)

__all__ = ["BASELINE", "PAPER_MODELS", "PRESETS", "StudyError", "build_report", "check_manifest",
           "load_manifest", "make_plan", "run_study", "study_status", "write_study"]


def run_study(*args, **kwargs):
    from dala.study.run import run_study as _run

    return _run(*args, **kwargs)


def study_status(*args, **kwargs):
    from dala.study.run import study_status as _status

    return _status(*args, **kwargs)


def build_report(*args, **kwargs):
    from dala.study.report import build_report as _build

    return _build(*args, **kwargs)
