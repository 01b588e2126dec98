"""``python -m dala``: one command line over the package.

Each area registers its own subcommands from a small ``cli`` module that imports nothing heavy at
module level (``--help`` must stay instant); the work itself is imported inside the handler.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from dala.errors import DalaError
from dala.net import env_flag

# (module, what it adds) in the order --help lists them
_AREAS = [
    "dala.data.cli",      # data synth | scan | split
    "dala.models.cli",    # models ls
    "dala.train.cli",     # train | evaluate | predict
    "dala.explain.cli",   # explain
    "dala.lab.cli",       # lab bank | sweep | score
    "dala.hub.cli",       # hub push | pull | ls | fetch-dataset
    "dala.study.cli",     # study plan | run | status | report
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dala",
        description="DALA Lab: DALAResNet50 and its peers on BreakHis (data, training, explanations, Hub).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for modname in _AREAS:
        importlib.import_module(modname).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.func(args) or 0)
    except DalaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # ours, not the user's: one line, the traceback only on request
        if env_flag("DALA_DEBUG"):
            raise
        logging.getLogger("dala").debug("unexpected error", exc_info=True)
        print(f"error: unexpected {type(exc).__name__}: {exc} (this is a bug in DALA Lab; "
              "rerun with DALA_DEBUG=1 for the traceback and report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
