"""Safe extraction of untrusted archives (a Hub dataset's .zip / .tar[.gz|.bz2|.xz]).

No member may land outside the target folder: absolute paths, ``..``, symbolic links, hard links to
anything but an earlier file, device files and zip/tar bombs are refused before anything is
written. The size and member caps are read from the environment at each call
(``DALA_MAX_EXTRACT_GB``, ``DALA_MAX_EXTRACT_MEMBERS``). :func:`extract_archives` fills a hidden
temporary folder and renames it into place (:func:`dala.io.atomic_dir`).
"""

from __future__ import annotations

import os
import re
import stat
import tarfile
import time
import zipfile
from pathlib import Path, PurePosixPath
from typing import Iterable

from dala.errors import DalaError, DataError, HubError
from dala.hub.repos import SOURCE_MARKER
from dala.io import atomic_dir, atomic_write_json
from dala.net import env_float

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
DEFAULT_MAX_EXTRACT_GB = 20.0
DEFAULT_MAX_EXTRACT_MEMBERS = 500_000


class UnsafeArchiveError(DataError):
    """An archive holds a member that would land outside its target folder (or is a link/device)."""


def max_extract_bytes() -> int:
    """The most bytes one extraction may write (``DALA_MAX_EXTRACT_GB``, default 20), read now."""
    return int(env_float("DALA_MAX_EXTRACT_GB", DEFAULT_MAX_EXTRACT_GB, minimum=0.0) * 1024**3)


def max_extract_members() -> int:
    """The most members one extraction may hold (``DALA_MAX_EXTRACT_MEMBERS``, default 500000), read now."""
    return int(env_float("DALA_MAX_EXTRACT_MEMBERS", DEFAULT_MAX_EXTRACT_MEMBERS, minimum=1))


def _too_big(archive: Path, max_members: int, max_bytes: int) -> UnsafeArchiveError:
    return UnsafeArchiveError(f"{archive.name} would unpack to more than {max_members} files or "
                              f"{max_bytes / 1024**3:g} GB (DALA_MAX_EXTRACT_GB / DALA_MAX_EXTRACT_MEMBERS); "
                              "refusing it")


def archive_kind(name: str) -> str | None:
    low = name.lower()
    if low.endswith(".zip"):
        return "zip"
    if low.endswith(ARCHIVE_SUFFIXES):
        return "tar"
    return None


def _safe_relpath(name: str, archive: Path) -> PurePosixPath | None:
    """The member's path relative to the target, or raise; None for the archive's root entry."""
    if "\x00" in name:
        raise UnsafeArchiveError(f"{archive.name}: member {name!r} has a NUL byte in its name; refusing the archive")
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise UnsafeArchiveError(f"{archive.name}: member {name!r} has an absolute path; refusing the archive "
                                 "(nothing was extracted)")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafeArchiveError(f"{archive.name}: member {name!r} climbs out of the target with '..'; refusing "
                                 "the archive (nothing was extracted)")
    return PurePosixPath(*parts) if parts else None


def _inside(target: Path, rel: PurePosixPath) -> Path:
    base = target.resolve()
    final = (base / rel).resolve()
    if final != base and base not in final.parents:
        raise UnsafeArchiveError(f"member {str(rel)!r} would land outside {target}; refusing the archive")
    return final


def _check_tar(tf: tarfile.TarFile, archive: Path, target: Path) -> list[tarfile.TarInfo]:
    members, total, regular = [], 0, set()
    max_bytes, max_members = max_extract_bytes(), max_extract_members()
    for m in tf.getmembers():
        rel = _safe_relpath(m.name, archive)
        if rel is None:
            continue
        _inside(target, rel)
        if m.issym():
            raise UnsafeArchiveError(f"{archive.name}: member {m.name!r} is a symbolic link (to {m.linkname!r}); "
                                     "dataset archives may hold only files and folders - refusing the archive")
        if m.islnk():
            link = _safe_relpath(m.linkname, archive)
            if link is None or str(link) not in regular:
                raise UnsafeArchiveError(f"{archive.name}: member {m.name!r} is a hard link to {m.linkname!r}, which "
                                         "is not a file earlier in the archive; refusing the archive")
            _inside(target, link)
        elif m.isdev() or not (m.isreg() or m.isdir()):
            raise UnsafeArchiveError(f"{archive.name}: member {m.name!r} is a device, FIFO or special file; refusing "
                                     "the archive")
        if m.isreg():
            regular.add(str(rel))
        total += max(m.size, 0)
        members.append(m)
        if len(members) > max_members or total > max_bytes:
            raise _too_big(archive, max_members, max_bytes)
    return members


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Extract a .zip / .tar[.gz|.bz2|.xz] into existing folder ``target``, refusing (before writing
    anything) absolute paths, ``..``, symbolic links, hard links to anything but an earlier file,
    device files and zip/tar bombs. Tar members go through ``tarfile``'s ``"data"`` filter as well.
    Raises :class:`UnsafeArchiveError` (a :class:`DataError`) or :class:`DataError` if damaged.
    """
    archive, target = Path(archive), Path(target)
    if not target.is_dir():
        raise DataError(f"extraction target {target} is not a folder")
    kind = archive_kind(archive.name)
    try:
        if kind == "zip":
            _extract_zip(archive, target)
        elif kind == "tar":
            with tarfile.open(archive, "r:*") as tf:
                members = _check_tar(tf, archive, target)
                if hasattr(tarfile, "data_filter"):
                    tf.extractall(target, members=members, filter="data")
                else:  # pragma: no cover - Python < 3.11.4: our own checks above already ran
                    tf.extractall(target, members=members)
        else:
            raise DataError(f"{archive.name} is not a .zip or .tar(.gz/.bz2/.xz) archive")
    except DalaError:
        raise
    except tarfile.FilterError as exc:  # the data filter found something our checks missed
        raise UnsafeArchiveError(f"{archive.name}: {exc}; refusing the archive") from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, RuntimeError, ValueError) as exc:
        raise DataError(f"{archive.name} is damaged or unreadable ({type(exc).__name__}: {exc}); download it again") from None
    return target


def _extract_zip(archive: Path, target: Path) -> None:
    max_bytes, max_members = max_extract_bytes(), max_extract_members()
    with zipfile.ZipFile(archive) as zf:
        infos, total = [], 0
        for info in zf.infolist():
            rel = _safe_relpath(info.filename, archive)
            if rel is None:
                continue
            _inside(target, rel)
            mode = (info.external_attr >> 16) & 0xFFFF
            if stat.S_ISLNK(mode):
                raise UnsafeArchiveError(f"{archive.name}: member {info.filename!r} is a symbolic link; dataset "
                                         "archives may hold only files and folders - refusing the archive")
            if mode and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
                raise UnsafeArchiveError(f"{archive.name}: member {info.filename!r} is a device or special file; "
                                         "refusing the archive")
            total += info.file_size
            infos.append((info, rel))
            if len(infos) > max_members or total > max_bytes:
                raise _too_big(archive, max_members, max_bytes)
        written = 0
        for info, rel in infos:
            dest = _inside(target, rel)
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            _inside(target, rel)  # re-check after creating parents
            with zf.open(info) as src, open(dest, "wb") as out:
                while chunk := src.read(1 << 20):
                    written += len(chunk)
                    if written > max_bytes:  # headers can lie about sizes (zip bombs)
                        raise UnsafeArchiveError(f"{archive.name} unpacks to more than its headers say; refusing it")
                    out.write(chunk)


def extract_archives(archives: Iterable[str | os.PathLike], dest: str | os.PathLike, *,
                     source: dict | None = None) -> Path:
    """Extract ``archives`` together into ``dest``, atomically: into a temporary sibling folder that
    is renamed to ``dest`` only when every archive extracted cleanly (with a hidden marker recording
    ``source``). An existing ``dest`` with that marker is returned as is (already extracted)."""
    archives = [Path(a) for a in archives]
    dest = Path(dest).expanduser()
    if (dest / SOURCE_MARKER).is_file():
        return dest
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise HubError(f"{dest} already exists and was not extracted by DALA Lab; pass an empty or new folder as dest")
    # another process finishing the same extraction first wins; ours is dropped
    with atomic_dir(dest, done=lambda d: (d / SOURCE_MARKER).is_file()) as tmp:
        for archive in archives:
            safe_extract(archive, tmp)
        atomic_write_json(tmp / SOURCE_MARKER, {**(source or {}), "archives": [a.name for a in archives],
                                               "extracted": time.time()})
    return dest
