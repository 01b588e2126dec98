"""Runs as separate processes, and reading their folders.

The app never trains in its own process: :func:`start_run` writes the run folder and launches
``python -m dala train --run-dir DIR --queue-root ROOT``, a child that survives page refreshes
and navigation; a crash in training never takes the app down. One heavy run trains at a time per
runs root (a file lock there); later runs wait in a first-come-first-served queue (by creation
time) with their position shown. Hosted, admission against the server's run cap is atomic: the
count and the new run's status are written under one lock.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from dala.errors import RunError
from dala.io import DamagedFileError, FileLock, LockBusyError
from dala.paths import runs_dir
from dala.train.config import TrainConfig
from dala.train.eta import estimate_seconds  # noqa: F401  (public here since the first version)
from dala.train.folder import (ACTIVE_STATES, TERMINAL_STATES, RunFolder, checkpoint_dir, compare_row,  # noqa: F401
                               has_best_checkpoint, is_run_folder, read_config, read_report, read_tiles, safe_run_name)

LOCK_NAME = ".heavy-run.lock"
ADMISSION_LOCK = ".admission.lock"
WAITING_STATES = ("queued", "starting")  # created, not yet training: the queue's order is by creation time
NEW_RUN_GRACE_S = 60.0  # a run with no pid yet, created this recently, is being launched


def new_run_dir(config: TrainConfig, *, runs_root: str | os.PathLike | None = None, create: bool = True) -> Path:
    """A fresh folder under ``runs_root``, created (so two runs started in the same second never
    share one; ``create=False`` only names it). The run name is made path-safe here: ``a/b`` or
    ``../x`` never leave the root."""
    root = Path(runs_root) if runs_root else runs_dir()
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    mag = f"{config.magnification}X" if config.magnification else "allX"
    base = f"{stamp}-{safe_run_name(config.name) or config.model}-{mag}-{config.split_mode}"
    n = 1
    while True:
        path = root / (base if n == 1 else f"{base}-{n}")
        if not create:
            if not path.exists():
                return path
            n += 1
            continue
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1


@contextmanager
def _admission(shared_root: Path | None):
    """Hosted: hold the server-wide admission lock while counting active runs and writing the new
    one's status, so simultaneous Starts cannot all pass a cap of one."""
    if shared_root is None:
        yield
        return
    from dala.hosting import check_can_start_run

    with FileLock(Path(shared_root) / ADMISSION_LOCK, timeout=30,
                  busy_message="the server is busy admitting other runs; try again in a moment"):
        check_can_start_run(shared_root)
        yield


def start_run(config: TrainConfig, *, runs_root: str | os.PathLike | None = None, run_dir: str | os.PathLike | None = None,
              env: dict | None = None, owner: str | None = None, shared_root: str | os.PathLike | None = None) -> Path:
    """Write the run folder and launch its training process (detached: it outlives the caller's
    request). Returns the run folder at once; its status says starting or queued. ``owner``
    (a :func:`dala.identity.owner_id`) is recorded before the process starts. Hosted
    (``DALA_HOSTED=1``), the run cap is checked atomically over ``shared_root`` (default: the
    server's runs folder); a refused run raises :class:`dala.hosting.HostedModeError`."""
    from dala.hosting import hosted

    config.validate()
    root = Path(runs_root) if runs_root else runs_dir()
    if shared_root is None and hosted():
        shared_root = runs_dir()
    with _admission(Path(shared_root) if shared_root is not None else None):
        if run_dir:
            path = Path(run_dir)
            if path.exists() and not path.is_dir():
                raise RunError(f"{path} is a file, not a run folder: choose another run folder.")
            if RunFolder(path).is_locked():
                raise RunError(f"run {path.name} is still training in another process: stop it first.")
        else:
            path = new_run_dir(config, runs_root=root)
        folder = RunFolder(path)
        path.mkdir(parents=True, exist_ok=True)
        folder.write_json(folder.config_path, config.to_dict())
        if owner:
            from dala.identity import write_owner

            write_owner(path, owner)
        waiting = [p for p in _waiting_or_active(root) if p != path]
        state = "queued" if waiting else "starting"
        folder.update_status(state=state, phase=state, created=time.time(), epoch=0, epochs=config.epochs, pid=None)
    cmd = [sys.executable, "-m", "dala", "train", "--run-dir", str(path), "--queue-root", str(root), "--no-progress"]
    with open(folder.log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, **(env or {})}, cwd=os.getcwd())
    folder.update_status(pid=proc.pid)
    return path


def _live(st: dict) -> bool:
    pid = st.get("pid")
    if pid:
        return pid_alive(pid)
    return time.time() - float(st.get("created") or 0) < NEW_RUN_GRACE_S


def _waiting_or_active(root: Path) -> list[Path]:
    out = []
    if not root.is_dir():
        return out
    for p in root.iterdir():
        st = RunFolder(p, writer=False).status_or_empty() if p.is_dir() else {}
        if st.get("state") in ACTIVE_STATES and _live(st):
            out.append(p)
    return out


def queue_ahead(root: str | os.PathLike, path: str | os.PathLike) -> int:
    """How many live runs under ``root`` were created before ``path`` and are still waiting for the
    heavy slot: 0 = this run is next (first come, first served)."""
    path, root = Path(path), Path(root)
    me = RunFolder(path, writer=False).status_or_empty()
    mine = (float(me.get("created") or 0), path.name)
    ahead = 0
    if not root.is_dir():
        return 0
    for other in root.iterdir():
        if other == path or not other.is_dir():
            continue
        st = RunFolder(other, writer=False).status_or_empty()
        if st.get("state") in WAITING_STATES and (float(st.get("created") or 0), other.name) < mine and _live(st):
            ahead += 1
    return ahead


@contextmanager
def heavy_slot(root: str | os.PathLike, folder: RunFolder, *, poll_s: float = 0.5):
    """Hold the machine's one heavy-training slot, first come first served: a run tries for it only
    when no live run created before it is still waiting. While waiting it stays 'queued' and
    honours stop."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(root / LOCK_NAME, timeout=0)
    while True:
        if folder.read_control() == "stop":
            folder.update_status(state="stopped", phase="stopped before it started")
            raise RunError("stopped while queued")
        if queue_ahead(root, folder.path) == 0:
            try:
                lock.acquire()
                break
            except LockBusyError:
                pass
        if folder.status_or_empty().get("state") != "queued":
            folder.update_status(state="queued", phase="queued")
        time.sleep(poll_s)
    try:
        yield
    finally:
        lock.release()


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (TypeError, ValueError, OverflowError):
        return False
    # a zombie (exited, not yet reaped by its parent) is not alive
    try:
        with open(f"/proc/{int(pid)}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


_UNREAD = object()


class RunView:
    """Everything a page needs about one run, read from its folder. Status and config are read
    at once; metrics (``epochs``, ``steps``), ``report`` and ``tiles`` when first asked for, so a
    listing of many runs stays cheap. A damaged file never hides the run: ``damaged`` maps each
    damaged file's name to what is wrong (``state`` is ``"damaged"`` when its status or config
    cannot be read)."""

    def __init__(self, path: str | os.PathLike, config: dict, status: dict, *, epochs=None, steps=None,
                 report=_UNREAD, tiles=_UNREAD, queue_position: int | None = None, damaged: dict | None = None):
        self.path = Path(path)
        self.config, self.status = config, status
        self.queue_position = queue_position
        self._damaged: dict[str, str] = dict(damaged or {})
        self._records = None if epochs is None and steps is None else (list(epochs or []) + list(steps or []))
        self._report, self._tiles = report, tiles

    def __repr__(self) -> str:
        return f"RunView({self.name!r}, state={self.state!r})"

    def _damage(self, exc: DamagedFileError) -> None:
        self._damaged[exc.path.name] = exc.problem

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def state(self) -> str:
        if not self.status and any(k in self._damaged for k in ("status.json", "config.json")):
            return "damaged"
        return self.status.get("state", "unknown")

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def has_checkpoint(self) -> bool:
        return has_best_checkpoint(self.path)

    @property
    def checkpoint_dir(self) -> Path | None:
        """``checkpoints/best``, else ``checkpoints/last``, else None."""
        return checkpoint_dir(self.path)

    def _metrics(self) -> list[dict]:
        if self._records is None:
            try:
                self._records = RunFolder(self.path, writer=False).metrics()
            except DamagedFileError as exc:
                self._damage(exc)
                self._records = []
        return self._records

    @property
    def epochs(self) -> list[dict]:
        return [r for r in self._metrics() if r.get("kind") == "epoch"]

    @property
    def steps(self) -> list[dict]:
        return [r for r in self._metrics() if r.get("kind") == "step"]

    @property
    def report(self) -> dict | None:
        if self._report is _UNREAD:
            try:
                self._report = read_report(self.path)
            except DamagedFileError as exc:
                self._damage(exc)
                self._report = None
        return self._report

    @property
    def tiles(self) -> dict | None:
        if self._tiles is _UNREAD:
            try:
                self._tiles = read_tiles(self.path)
            except DamagedFileError as exc:
                self._damage(exc)
                self._tiles = None
        return self._tiles

    @property
    def damaged(self) -> dict[str, str]:
        """``{file name: problem}`` over every file of the run (reads the lazy ones); {} when sound."""
        self._metrics(), self.report, self.tiles  # noqa: B018  (reading them records their damage)
        return dict(self._damaged)

    @property
    def compare_row(self) -> dict | None:
        """The run's row for comparison tables (None until it has a test report)."""
        return compare_row(self.name, self.config, self.report)


def read_run(run_dir: str | os.PathLike) -> RunView:
    folder = RunFolder(run_dir, writer=False)
    if not folder.config_path.exists():
        raise RunError(f"{run_dir} is not a run folder (no config.json).")
    damaged = {}
    try:
        config = read_config(folder)
    except DamagedFileError as exc:
        config, damaged[exc.path.name] = {}, exc.problem
    try:
        status = folder.status()
    except DamagedFileError as exc:
        status, damaged[exc.path.name] = {}, exc.problem
    # a process that died without saying so (SIGKILL, OOM, reboot) is reported, not shown as running
    if status.get("state") in ACTIVE_STATES and status.get("pid") and not pid_alive(status["pid"]):
        status = {**status, "state": "failed", "phase": "interrupted",
                  "error": "the training process is gone (killed or crashed); resume it from its last checkpoint"}
    view = RunView(folder.path, config, status, damaged=damaged)
    if view.state == "queued":
        view.queue_position = queue_ahead(folder.path.parent, folder.path) + 1
    return view


def _queue_position(path: Path) -> int:
    """1 = next to run."""
    return queue_ahead(path.parent, path) + 1


def list_runs(root: str | os.PathLike | None = None) -> list[RunView]:
    """Every run under ``root`` (newest first): status and config only, metrics and report when a
    page asks for them. Folders that are not runs are skipped; damaged runs are listed as such."""
    root = Path(root) if root else runs_dir()
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.iterdir(), reverse=True):
        try:
            if p.is_dir() and is_run_folder(p):
                out.append(read_run(p))
        except (OSError, RunError):  # a folder deleted while we list it
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


__all__ = ["RunView", "estimate_seconds", "heavy_slot", "list_runs", "new_run_dir", "pid_alive",
           "queue_ahead", "read_run", "send_control", "start_run", "wait_for"]
