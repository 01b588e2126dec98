"""The run folder: the one interface between a training process and whoever watches it, and the
only code that knows its file names.

A run writes ``config.json``, ``split.json``, ``metrics.jsonl``, ``status.json``,
``val_tiles.json``, ``checkpoints/{best,last}/`` and finally ``report.json``; outsiders write
only ``control.json`` (pause / resume / stop). Every write is atomic, so the app can poll the
folder on a timer while the run is going and never read half a file. One process trains a run
folder at a time: it holds ``.run.lock`` (:meth:`RunFolder.writer_lock`) for the whole run.

Readers for everyone else: :func:`checkpoint_dir` (best, else last), :func:`read_config`,
:func:`read_report`, :func:`read_split`, :func:`read_tiles`, :func:`read_status`, and
:func:`compare_row` (a run's headline test metrics as one flat dict).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from dala.errors import RunError
from dala.io import (DamagedFileError, FileLock, append_jsonl, atomic_write_json, atomic_write_text, read_json,
                     read_jsonl, set_aside)

TERMINAL_STATES = ("finished", "stopped", "failed")
ACTIVE_STATES = ("queued", "starting", "running", "paused", "stopping")
CONTROL_COMMANDS = ("pause", "resume", "stop")

CONFIG_FILE = "config.json"
SPLIT_FILE = "split.json"
METRICS_FILE = "metrics.jsonl"
STATUS_FILE = "status.json"
CONTROL_FILE = "control.json"
REPORT_FILE = "report.json"
TILES_FILE = "val_tiles.json"
LOG_FILE = "train.log"
LOCK_FILE = ".run.lock"
CHECKPOINTS_DIR = "checkpoints"
BEST, LAST = "best", "last"
TRAINER_STATE_FILE = "trainer_state.json"
OPTIMIZER_STATE_FILE = "optimizer.safetensors"
WEIGHTS_FILE = "model.safetensors"

log = logging.getLogger("dala.train")


class RunFolder:
    def __init__(self, path: str | os.PathLike, *, writer: bool = True):
        self.path = Path(path)
        self.writer = writer  # under DDP only rank 0 writes
        self._control_problem: str | None = None

    # paths
    config_path = property(lambda self: self.path / CONFIG_FILE)
    status_path = property(lambda self: self.path / STATUS_FILE)
    metrics_path = property(lambda self: self.path / METRICS_FILE)
    control_path = property(lambda self: self.path / CONTROL_FILE)
    report_path = property(lambda self: self.path / REPORT_FILE)
    tiles_path = property(lambda self: self.path / TILES_FILE)
    split_path = property(lambda self: self.path / SPLIT_FILE)
    log_path = property(lambda self: self.path / LOG_FILE)
    lock_path = property(lambda self: self.path / LOCK_FILE)
    checkpoints_dir = property(lambda self: self.path / CHECKPOINTS_DIR)
    best_dir = property(lambda self: self.path / CHECKPOINTS_DIR / BEST)
    last_dir = property(lambda self: self.path / CHECKPOINTS_DIR / LAST)
    trainer_state_path = property(lambda self: self.path / CHECKPOINTS_DIR / LAST / TRAINER_STATE_FILE)

    def is_run(self) -> bool:
        return self.config_path.exists()

    def has_training_state(self) -> bool:
        """A ``last`` checkpoint a run can resume from."""
        return self.trainer_state_path.is_file() and (self.last_dir / OPTIMIZER_STATE_FILE).is_file()

    def checkpoint_dir(self) -> Path | None:
        return checkpoint_dir(self.path)

    # one writer
    def writer_lock(self) -> FileLock:
        """Held by the process that trains this folder, for the whole run (a second trainer, or a
        ``--resume`` of a run still going, is refused at once)."""
        st = self.status_or_empty()
        pid = st.get("pid")
        # a short grace: a trainer killed a moment ago releases its lock when the kernel reaps it
        return FileLock(self.lock_path, timeout=3.0, busy_message=(
            f"run {self.path.name} is being trained by another process{f' (pid {pid})' if pid else ''}: "
            "wait for it to finish, or stop it (Train page, or send_control(run, 'stop')) before resuming it."))

    def is_locked(self) -> bool:
        """Whether a live process holds the writer lock (without taking it for long)."""
        from dala.io import LockBusyError

        if not self.lock_path.exists():
            return False
        try:
            with FileLock(self.lock_path, timeout=0):
                return False
        except LockBusyError:
            return True

    def clean_orphans(self) -> list[Path]:
        """Temporary files a killed writer left (an interrupted checkpoint write): only called while
        holding the writer lock, so none of them can belong to a live writer."""
        from dala.io import clean_orphans

        removed = []
        for folder in (self.path, self.checkpoints_dir, self.best_dir, self.last_dir):
            removed += clean_orphans(folder, older_than_s=0)
        return removed

    # writing (no-ops on non-writer ranks)
    def write_json(self, path: Path, obj: Any) -> None:
        if self.writer:
            atomic_write_json(path, obj)

    def status(self) -> dict:
        """The status; raises :class:`DamagedFileError` when status.json is damaged."""
        return read_json(self.status_path, default={}, expect=dict) or {}

    def status_or_empty(self) -> dict:
        try:
            return self.status()
        except DamagedFileError:
            return {}

    def update_status(self, **fields: Any) -> dict:
        if not self.writer:
            return {}
        try:
            st = self.status()
        except DamagedFileError as exc:  # the writer owns status.json: keep the damaged one aside, start afresh
            log.warning("%s; set aside as %s", exc, set_aside(self.status_path).name)
            st = {}
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
        """Keep only records of epochs up to ``after_epoch`` (a resumed run redoes the later ones;
        ``after_epoch=0``: a fresh start keeps nothing), so no epoch or step is ever recorded twice."""
        if not self.writer or not self.metrics_path.exists():
            return
        try:
            records = self.metrics()
        except DamagedFileError as exc:
            log.warning("%s; set aside as %s", exc, set_aside(self.metrics_path).name)
            return
        keep = [r for r in records if _epoch_of(r) <= after_epoch and r.get("kind") not in ("test", "early_stop")
                and not (r.get("kind") == "resume" and _epoch_of(r) >= after_epoch)]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in keep))

    # control (written by outsiders, read every step)
    def read_control(self) -> str | None:
        """The pending command; a damaged control.json is ignored (and logged once): whatever an
        outsider writes there must never kill a live run."""
        try:
            ctl = read_json(self.control_path, default=None)
        except DamagedFileError as exc:
            if str(exc) != self._control_problem:
                self._control_problem = str(exc)
                log.warning("ignoring control file: %s", exc)
            return None
        cmd = ctl.get("command") if isinstance(ctl, dict) else None
        return cmd if cmd in CONTROL_COMMANDS else None

    def send_control(self, command: str) -> None:
        if command not in CONTROL_COMMANDS:
            raise RunError(f"control command {command!r} is unknown: use {', '.join(CONTROL_COMMANDS)}.")
        if self.control_path.is_dir():
            set_aside(self.control_path)
        atomic_write_json(self.control_path, {"command": command, "time": time.time()})

    def clear_control(self) -> None:
        if not self.writer:
            return
        if self.control_path.is_dir():
            set_aside(self.control_path)
        elif self.control_path.exists():
            self.control_path.unlink()


def _epoch_of(record: dict) -> float:
    e = record.get("epoch", 0)
    return e if isinstance(e, (int, float)) else 0


# ----------------------------------------------------------------------------- naming

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_run_name(name: str) -> str:
    """A run name fit for one path component: letters, digits, ``. _ -`` (anything else becomes
    ``-``), no leading dots (``..``, hidden files), at most 60 characters."""
    cleaned = _UNSAFE.sub("-", str(name or "")).strip("-.")
    return cleaned[:60].strip("-.")


# ----------------------------------------------------------------------------- readers

def _folder(run: str | os.PathLike | RunFolder) -> RunFolder:
    return run if isinstance(run, RunFolder) else RunFolder(run, writer=False)


def is_run_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / CONFIG_FILE).exists()


def checkpoint_dir(run: str | os.PathLike | RunFolder) -> Path | None:
    """The run's ``best`` checkpoint folder, else its ``last``, else None (through the one
    resolver, :func:`dala.models.checkpoint.resolve_checkpoint_folder`)."""
    from dala.errors import CheckpointError
    from dala.models.checkpoint import resolve_checkpoint_folder

    f = _folder(run)
    if not (f.best_dir / WEIGHTS_FILE).is_file() and not (f.last_dir / WEIGHTS_FILE).is_file():
        return None
    try:
        return resolve_checkpoint_folder(f.path)
    except CheckpointError:
        return None


def has_best_checkpoint(run: str | os.PathLike | RunFolder) -> bool:
    return (_folder(run).best_dir / WEIGHTS_FILE).is_file()


def read_config(run: str | os.PathLike | RunFolder) -> dict:
    """The run's config.json as a dict ({} when absent); DamagedFileError when damaged."""
    return read_json(_folder(run).config_path, {}, expect=dict) or {}


def read_status(run: str | os.PathLike | RunFolder) -> dict:
    return _folder(run).status()


def read_report(run: str | os.PathLike | RunFolder) -> dict | None:
    """The run's report.json (None until the run finished); DamagedFileError when damaged."""
    return read_json(_folder(run).report_path, None, expect=dict)


def read_tiles(run: str | os.PathLike | RunFolder) -> dict | None:
    """The validation-tile strip, checked for shape: a damaged file raises DamagedFileError."""
    f = _folder(run)
    tiles = read_json(f.tiles_path, None, expect=dict)
    if tiles is None:
        return None
    if not isinstance(tiles.get("tiles", []), list) or not isinstance(tiles.get("epochs", []), list) or not all(
            isinstance(t, dict) for t in [*tiles.get("tiles", []), *tiles.get("epochs", [])]):
        raise DamagedFileError(f.tiles_path, "its 'tiles' and 'epochs' are not lists of objects")
    return tiles


def split_path(run: str | os.PathLike | RunFolder) -> Path:
    return _folder(run).split_path


def read_split(run: str | os.PathLike | RunFolder):
    """The run's :class:`dala.data.splits.Split`, or None when it has none yet."""
    p = _folder(run).split_path
    return load_split(p) if p.exists() else None


def load_split(path: str | os.PathLike):
    """:meth:`Split.load`, with a malformed file (valid JSON of the wrong shape or types) told as
    one clear :class:`dala.errors.DataError` rather than a traceback."""
    from dala.data.splits import Split
    from dala.errors import DataError

    try:
        return Split.load(path)
    except DataError:
        raise
    except (AttributeError, TypeError, KeyError, ValueError, OSError, UnicodeDecodeError) as exc:
        raise DataError(f"split file {str(path)!r} is malformed ({type(exc).__name__}: {exc}); make a new one with "
                        "`python -m dala data split DATA_ROOT --out split.json` or leave --split-file out.") from None


def log_path(run: str | os.PathLike | RunFolder) -> Path:
    return _folder(run).log_path


def compare_row(name: str, config: dict, report: dict | None) -> dict | None:
    """A run's row for comparison tables: its headline test metrics flattened
    (:func:`dala.metrics.summary_row`), then what it was trained on. None without a test report."""
    from dala.metrics import summary_row

    report = report or {}
    test = report.get("test")
    if not test:
        return None
    cfg = config or {}
    return {"run": name, "split": cfg.get("split_mode"), **summary_row(test), "model": cfg.get("model"),
            "magnification": f"{cfg['magnification']}X" if cfg.get("magnification") else "all",
            "imbalance": cfg.get("imbalance", "none"),
            "weights": report.get("weight_source") or cfg.get("weight_source") or
            ("pretrained" if cfg.get("pretrained") else "random"),
            "data": report.get("data_source", "?"), "params": report.get("num_params"),
            "trainable_params": report.get("trainable_params"),
            "images_per_s": report.get("train_images_per_s"),
            "epochs": report.get("best_epoch")}
