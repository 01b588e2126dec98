"""Runs as separate processes, and reading their folders.

The app never trains in its own process: :func:`start_run` writes the run folder and launches
``python -m dala train --run-dir DIR --resume``-style child that survives page refreshes and
navigation; a crash in training never takes the app down. One heavy run trains at a time per
machine (a file lock in the runs root); later runs wait in the queue with their position shown.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from dala.errors import RunError
from dala.io import read_json
from dala.paths import runs_dir
from dala.train.config import TrainConfig
from dala.train.folder import ACTIVE_STATES, TERMINAL_STATES, RunFolder

LOCK_NAME = ".heavy-run.lock"


def new_run_dir(config: TrainConfig, *, runs_root: str | os.PathLike | None = None) -> Path:
    root = Path(runs_root) if runs_root else runs_dir()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    mag = f"{config.magnification}X" if config.magnification else "allX"
    base = f"{stamp}-{config.name or config.model}-{mag}-{config.split_mode}"
    path, n = root / base, 1
    while path.exists():
        n += 1
        path = root / f"{base}-{n}"
    return path


def start_run(config: TrainConfig, *, runs_root: str | os.PathLike | None = None, run_dir: str | os.PathLike | None = None,
              env: dict | None = None) -> Path:
    """Write the run folder and launch its training process (detached: it outlives the caller's
    request). Returns the run folder at once; its status says queued or running."""
    config.validate()
    root = Path(runs_root) if runs_root else runs_dir()
    path = Path(run_dir) if run_dir else new_run_dir(config, runs_root=root)
    folder = RunFolder(path)
    path.mkdir(parents=True, exist_ok=True)
    folder.write_json(folder.config_path, config.to_dict())
    folder.update_status(state="queued", phase="queued", created=time.time(), epoch=0, epochs=config.epochs, pid=None)
    cmd = [sys.executable, "-m", "dala", "train", "--run-dir", str(path), "--queue-root", str(root), "--no-progress"]
    log = open(folder.log_path, "ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, **(env or {})},
                            cwd=os.getcwd())
    log.close()
    folder.update_status(pid=proc.pid)
    return path


@contextmanager
def heavy_slot(root: str | os.PathLike, folder: RunFolder, *, poll_s: float = 0.5):
    """Hold the machine's one heavy-training slot; while waiting, stay 'queued' and honour stop."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    fh = open(root / LOCK_NAME, "a+")
    try:
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if folder.read_control() == "stop":
                    folder.update_status(state="stopped", phase="stopped before it started")
                    raise RunError("stopped while queued")
                folder.update_status(state="queued", phase="queued")
                time.sleep(poll_s)
        yield
    finally:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        finally:
            fh.close()


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped by its parent) is not alive
    try:
        with open(f"/proc/{int(pid)}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


@dataclass
class RunView:
    """Everything a page needs about one run, read from its folder."""

    path: Path
    config: dict
    status: dict
    epochs: list[dict] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    report: dict | None = None
    tiles: dict | None = None
    queue_position: int | None = None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def state(self) -> str:
        return self.status.get("state", "unknown")

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def has_checkpoint(self) -> bool:
        return (self.path / "checkpoints" / "best" / "model.safetensors").exists()


def read_run(run_dir: str | os.PathLike) -> RunView:
    folder = RunFolder(run_dir, writer=False)
    if not folder.config_path.exists():
        raise RunError(f"{run_dir} is not a run folder (no config.json).")
    status = folder.status()
    # a process that died without saying so (SIGKILL, OOM, reboot) is reported, not shown as running
    if status.get("state") in ACTIVE_STATES and status.get("pid") and not pid_alive(status["pid"]):
        status = {**status, "state": "failed", "phase": "interrupted",
                  "error": "the training process is gone (killed or crashed); resume it from its last checkpoint"}
    records = folder.metrics()
    view = RunView(path=folder.path, config=read_json(folder.config_path, {}), status=status,
                   epochs=[r for r in records if r.get("kind") == "epoch"],
                   steps=[r for r in records if r.get("kind") == "step"],
                   report=read_json(folder.report_path), tiles=read_json(folder.tiles_path))
    if view.state == "queued":
        view.queue_position = _queue_position(folder.path)
    return view


def _queue_position(path: Path) -> int:
    """1 = next to run. Counts queued runs created earlier in the same runs root."""
    me = read_json(path / "status.json", {}) or {}
    mine = me.get("created", 0)
    ahead = 0
    for other in path.parent.iterdir():
        if other == path or not (other / "status.json").exists():
            continue
        st = read_json(other / "status.json", {}) or {}
        if st.get("state") == "queued" and st.get("created", 0) < mine and pid_alive(st.get("pid")):
            ahead += 1
    return ahead + 1


def list_runs(root: str | os.PathLike | None = None) -> list[RunView]:
    """Every run under ``root`` (newest first); folders that are not runs are skipped."""
    root = Path(root) if root else runs_dir()
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.iterdir(), reverse=True):
        if p.is_dir() and (p / "config.json").exists():
            try:
                out.append(read_run(p))
            except Exception:  # a half-deleted folder must not break a listing
                continue
    return out


def send_control(run_dir: str | os.PathLike, command: str) -> None:
    RunFolder(run_dir).send_control(command)


def wait_for(run_dir: str | os.PathLike, states=TERMINAL_STATES, *, timeout: float = 600, poll: float = 0.2) -> RunView:
    """Block until the run reaches one of ``states`` (tests and notebooks)."""
    deadline = time.time() + timeout
    while True:
        view = read_run(run_dir)
        if view.state in states:
            return view
        if time.time() > deadline:
            raise TimeoutError(f"run {run_dir} still {view.state} after {timeout} s")
        time.sleep(poll)


def estimate_seconds(config: TrainConfig, n_train: int, n_eval: int) -> float:
    """A rough wall-clock estimate for the form, from 2-core CPU figures (README, "Measured
    figures"; a GPU is much faster). ``n_eval``: validation and test images together (about a
    third of them validate every epoch, the rest are tested once).

    Checked against runs on the synthetic default (344 training, 312 evaluation images):
    DALAResNet50 quick from random weights, 8 views, 12 epochs: measured 127 s, estimated 138 s;
    DALAResNet50 full at 128 px, 10 epochs: 91 s, 114 s; tiny_cnn full at 128 px, 10 epochs:
    29 s, 30 s.
    """
    from dala.models import get_spec

    spec = get_spec(config.model)
    size = config.image_size or spec.input_size_for(config.model_options)
    params = spec.param_count()
    cost = (params / 25e6) ** 0.5 * (size / 224) ** 2  # ResNet50 at 224 px = 1
    decode = (n_train + n_eval) * 0.008  # each PNG decoded once
    per_epoch = 1.0 + 0.8 * params / 25e6  # validation bookkeeping and two checkpoint writes
    n_val = n_eval / 3
    if config.mode == "quick":
        # stem passes: every training image per view (+ one to calibrate a random stem), eval once
        passes = n_train * (config.quick_views + (0 if config.pretrained else 1)) + n_eval
        extract = passes * cost / 52.0
        train = config.epochs * (n_train * cost / 95.0 + n_val * cost / 1000.0 + per_epoch)
        return decode + extract + train
    train = config.epochs * (n_train * (cost / 15.3 + 0.001) + n_val * cost / 30.0 + per_epoch)  # 1 ms: augmentation
    return decode + train + (n_eval - n_val) * cost / 30.0
