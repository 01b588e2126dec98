"""The run folder: the one interface between a training process and whoever watches it.

A run writes ``config.json``, ``split.json``, ``metrics.jsonl``, ``status.json``,
``val_tiles.json``, ``checkpoints/{best,last}/`` and finally ``report.json``; outsiders write
only ``control.json`` (pause / resume / stop). Every write is atomic, so the app can poll the
folder on a timer while the run is going and never read half a file.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from dala.io import append_jsonl, atomic_write_json, atomic_write_text, read_json, read_jsonl

TERMINAL_STATES = ("finished", "stopped", "failed")
ACTIVE_STATES = ("queued", "starting", "running", "paused", "stopping")
CONTROL_COMMANDS = ("pause", "resume", "stop")


class RunFolder:
    def __init__(self, path: str | os.PathLike, *, writer: bool = True):
        self.path = Path(path)
        self.writer = writer  # under DDP only rank 0 writes

    # paths
    config_path = property(lambda self: self.path / "config.json")
    status_path = property(lambda self: self.path / "status.json")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    control_path = property(lambda self: self.path / "control.json")
    report_path = property(lambda self: self.path / "report.json")
    tiles_path = property(lambda self: self.path / "val_tiles.json")
    split_path = property(lambda self: self.path / "split.json")
    log_path = property(lambda self: self.path / "train.log")
    best_dir = property(lambda self: self.path / "checkpoints" / "best")
    last_dir = property(lambda self: self.path / "checkpoints" / "last")

    # writing (no-ops on non-writer ranks)
    def write_json(self, path: Path, obj: Any) -> None:
        if self.writer:
            atomic_write_json(path, obj)

    def status(self) -> dict:
        return read_json(self.status_path, default={}) or {}

    def update_status(self, **fields: Any) -> dict:
        if not self.writer:
            return {}
        st = self.status()
        st.update(fields)
        st["updated"] = time.time()
        st.setdefault("pid", os.getpid())
        atomic_write_json(self.status_path, st)
        return st

    def log_metric(self, record: dict) -> None:
        if self.writer:
            append_jsonl(self.metrics_path, {**record, "time": time.time()})

    def metrics(self) -> list[dict]:
        return read_jsonl(self.metrics_path)

    def truncate_metrics(self, *, after_epoch: int) -> None:
        """Drop records of epochs after ``after_epoch`` (a resumed run redoes them)."""
        if not self.writer:
            return
        import json

        keep = [r for r in self.metrics() if r.get("epoch", 0) <= after_epoch and r.get("kind") != "test"]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in keep))

    # control (written by outsiders, read every step)
    def read_control(self) -> str | None:
        ctl = read_json(self.control_path, default=None)
        return ctl.get("command") if isinstance(ctl, dict) else None

    def send_control(self, command: str) -> None:
        if command not in CONTROL_COMMANDS:
            from dala.errors import RunError

            raise RunError(f"control command {command!r} is unknown: use {', '.join(CONTROL_COMMANDS)}.")
        atomic_write_json(self.control_path, {"command": command, "time": time.time()})

    def clear_control(self) -> None:
        if self.writer and self.control_path.exists():
            self.control_path.unlink()
