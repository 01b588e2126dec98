"""Files on disk: atomic writes, atomic folders, one file lock, and readers that refuse garbage.

Every writer in ``dala`` goes through here: write to a temporary file in the same folder, flush
and fsync, then ``os.replace`` onto the final name (atomic on POSIX and Windows). A new folder
(checkpoint, Hub upload, extracted dataset, generated dataset) is filled as a hidden temporary
sibling and renamed into place (``atomic_dir``). Finished files are ``0644`` and folders
``0755`` whatever ``mkstemp``/``mkdtemp`` gave them (owner-only), so every file dala writes has
the same mode. ``FileLock`` is the one inter-process lock (``flock`` on a ``.lock`` file).
Readers (``read_json``/``read_jsonl``) raise ``DamagedFileError`` naming the file, never a bare
``JSONDecodeError``; ``set_aside`` keeps a damaged shared file for a person to look at instead of
letting the next writer overwrite it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from dala.errors import DalaError

FILE_MODE = 0o644
DIR_MODE = 0o755
TMP_MARK = ".tmp"  # every temporary name written here contains it (see clean_orphans)


class DamagedFileError(DalaError, ValueError):
    """A file dala reads is not what it should be (bad JSON, wrong shape, unreadable). A ValueError
    too, so code that caught json.JSONDecodeError keeps working."""

    def __init__(self, path: str | os.PathLike, problem: str, fix: str = ""):
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path} is damaged ({problem})" + (f": {fix}" if fix else ""))


class LockBusyError(DalaError):
    """Another process holds the lock."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or ".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:  # flush the bytes to disk before the rename
            os.fsync(fh.fileno())
        os.chmod(tmp_path, FILE_MODE)  # mkstemp makes 0600; every file we finish is 0644
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=json_default) + "\n")


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line. A single ``write`` of a complete line keeps readers safe: they
    only parse lines that end in a newline (see :func:`read_jsonl`)."""
    line = json.dumps(record, default=json_default) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read complete lines only: a line still being appended (no trailing newline) is skipped.
    A line that is not a JSON object raises ``DamagedFileError`` (line number in the message)."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    try:
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.endswith("\n"):
                    break
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except ValueError as exc:
                    raise DamagedFileError(path, f"line {n} is not JSON: {exc}") from None
                if not isinstance(rec, dict):
                    raise DamagedFileError(path, f"line {n} is a {type(rec).__name__}, not a JSON object")
                out.append(rec)
    except (OSError, UnicodeDecodeError) as exc:
        raise DamagedFileError(path, f"cannot be read: {exc}") from None
    return out


def read_json(path: str | os.PathLike, default: Any = None, *, expect: type | tuple[type, ...] | None = None) -> Any:
    """The JSON value in ``path``; ``default`` when it does not exist. Anything unreadable
    (a folder, bad bytes, bad JSON, or not of type ``expect``) raises ``DamagedFileError``."""
    path = Path(path)
    if not path.exists():
        return default
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise DamagedFileError(path, f"cannot be read: {exc}") from None
    except ValueError as exc:
        raise DamagedFileError(path, f"not valid JSON: {exc}") from None
    if expect is not None and not isinstance(value, expect):
        names = "/".join(t.__name__ for t in (expect if isinstance(expect, tuple) else (expect,)))
        raise DamagedFileError(path, f"holds a {type(value).__name__}, expected a {names}")
    return value


def set_aside(path: str | os.PathLike) -> Path:
    """Rename a damaged file to ``<name>.damaged-<time>`` beside it (kept, never overwritten) and
    return the new path, so the next writer starts fresh without destroying anything."""
    path = Path(path)
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    os.replace(path, aside)
    return aside


def finish_modes(folder: str | os.PathLike) -> None:
    """``0755`` folders and ``0644`` files below ``folder`` (mkdtemp/mkstemp make owner-only)."""
    for dirpath, _dirs, files in os.walk(folder):
        os.chmod(dirpath, DIR_MODE)
        for name in files:
            p = Path(dirpath) / name
            if not p.is_symlink():
                os.chmod(p, FILE_MODE)


@contextlib.contextmanager
def atomic_dir(folder: str | os.PathLike, *, replace: bool = False,
               done: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a hidden temporary sibling of ``folder`` to fill; on success it is renamed onto
    ``folder`` in one step, so the folder appears complete or not at all.

    ``folder`` must not exist or be empty, unless ``replace`` (an existing folder is then set
    aside and deleted after the rename). ``done(folder)`` says whether another process finished
    the same folder first (then ours is dropped, theirs kept). On an exception nothing is left.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}{TMP_MARK}-"))
    try:
        yield tmp
        for dirpath, _dirs, files in os.walk(tmp):  # the bytes reach the disk before the rename
            for name in files:
                p = Path(dirpath) / name
                if p.is_file() and not p.is_symlink():
                    with open(p, "rb+") as fh:
                        os.fsync(fh.fileno())
        finish_modes(tmp)
        if done is not None and done(folder):
            return
        old = None
        if folder.exists():
            if replace:
                old = folder.parent / f".{folder.name}.old-{os.getpid()}-{time.time_ns()}"
                os.replace(folder, old)
            elif folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        try:
            os.replace(tmp, folder)
        except OSError:
            if done is not None and done(folder):
                return
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def clean_orphans(folder: str | os.PathLike, *, older_than_s: float = 60.0) -> list[Path]:
    """Delete temporary files and folders (``.<name>.tmp*``) a killed writer left in ``folder``
    (not recursive); only those older than ``older_than_s`` (a live writer's are younger)."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for p in folder.iterdir():
        if not (p.name.startswith(".") and TMP_MARK in p.name):
            continue
        try:
            if now - p.lstat().st_mtime < older_than_s:
                continue
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


class FileLock:
    """An exclusive inter-process lock: ``flock`` on ``path`` (created if missing).

    ``with FileLock(p, timeout=0):`` fails at once with ``LockBusyError`` when taken (one writer);
    ``timeout=None`` waits for ever; ``poll`` is called while waiting (e.g. to honour a stop).
    The kernel drops the lock when the holder dies, so a killed process never leaves it stuck.
    """

    def __init__(self, path: str | os.PathLike, *, timeout: float | None = 0.0, busy_message: str | None = None,
                 poll: Callable[[], None] | None = None, poll_s: float = 0.05):
        self.path = Path(path)
        self.timeout, self.busy_message, self.poll, self.poll_s = timeout, busy_message, poll, poll_s
        self._fh = None

    def acquire(self) -> "FileLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    fh.close()
                    raise LockBusyError(self.busy_message or f"{self.path} is locked by another process; "
                                                             "wait for it to finish") from None
                if self.poll is not None:
                    try:
                        self.poll()
                    except BaseException:
                        fh.close()
                        raise
                time.sleep(self.poll_s)
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            try:
                fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            finally:
                self._fh.close()
                self._fh = None

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def json_default(obj: Any) -> Any:
    # numpy scalars/arrays and Paths show up in configs and metrics
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
