"""``python -m dala models ls``: the model zoo as a table.

Import-light: argparse only at module level; the registry (and torch) load inside the handler.
"""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="the model zoo: list models and their pretrained weights")
    sub = p.add_subparsers(dest="models_command", metavar="ACTION")
    ls = sub.add_parser("ls", help="list registry models: parameters, input size, CAM target, weights")
    ls.add_argument("--num-classes", type=int, default=2, help="classes the parameter count assumes (default 2)")
    ls.add_argument("--json", action="store_true", help="print JSON records instead of a table")
    ls.set_defaults(func=_cmd_ls)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def model_rows(num_classes: int = 2) -> list[dict]:
    """One record per registry model (no model is built, nothing is downloaded)."""
    from dala.models.registry import get_spec, list_models
    from dala.models.availability import source_offline, spec_availability

    rows = []
    for name in list_models():
        spec = get_spec(name)
        avail = spec_availability(spec)
        if avail == "not cached":
            avail += " (offline: random init)" if source_offline(spec) else " (downloads on first use)"
        elif avail == "none":
            avail = "none (random init)"
        rows.append({
            "name": name,
            "params": spec.param_count(num_classes),
            "input_size": spec.input_size,
            "cam_target": spec.cam_layer,
            "split": spec.split_point,
            "weights": avail,
            "weights_from": spec.weights,
        })
    return rows


def _cmd_ls(args: argparse.Namespace) -> int:
    rows = model_rows(args.num_classes)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ("name", "params", "input", "CAM target", "pretrained weights")
    table = [(r["name"], f"{r['params'] / 1e6:.2f}M", f"{r['input_size']}px", r["cam_target"], r["weights"]) for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *table)]
    for line in [header, tuple("-" * w for w in widths), *table]:
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())
    return 0
