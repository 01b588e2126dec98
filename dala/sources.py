"""Where a dataset comes from: one source (the synthetic default, a local folder, a Hub dataset)
resolved to a dataset root folder, or a :class:`~dala.errors.DataError` saying what to do.

The app's sidebar, the CLI and the notebooks all call :func:`resolve_source`, so the hosted-mode
policy (no server folders in a public app) and the messages are the same everywhere::

    from dala.sources import resolve_source
    root = resolve_source("synthetic")                 # generated on first use
    root = resolve_source("local", "/data/BreaKHis_v1")
    root = resolve_source("hub", "owner/breakhis", revision="main")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from dala.errors import DalaError, DataError

SYNTHETIC = "synthetic"
LOCAL = "local"
HUB = "hub"
KINDS = (SYNTHETIC, LOCAL, HUB)

Progress = Callable[[int, int], None]


def default_local_root() -> str:
    """The folder ``$DALA_DATA_ROOT`` names (empty when unset): the app opens on it."""
    return os.environ.get("DALA_DATA_ROOT", "").strip()


def resolve_source(kind: str, value: str | os.PathLike | None = None, *, revision: str | None = "main",
                   progress: Progress | bool | None = None) -> Path:
    """The dataset root for a source.

    ``kind`` is ``"synthetic"`` (``value`` ignored; generated once, ``progress(done, total)`` is
    called while generating), ``"local"`` (``value`` is a folder; hosted mode refuses folders
    outside the allowed roots, :func:`dala.hosting.allowed_data_root`) or ``"hub"`` (``value`` is a
    Hub dataset repo id, fetched or read from the cache by :func:`dala.hub.fetch_dataset`).
    Raises a :class:`DalaError` (``DataError``, ``HostedModeError``, ``HubError``) naming the fix.
    """
    kind = str(kind or "").strip().lower()
    if kind not in KINDS:
        raise DataError(f"unknown dataset source {kind!r}: choose one of {', '.join(KINDS)}")
    if kind == SYNTHETIC:
        return _synthetic(progress)
    text = str(value or "").strip()
    if kind == LOCAL:
        if not text:
            raise DataError("type a dataset folder (the one holding BreaKHis_v1), or pick the synthetic default")
        from dala.hosting import allowed_data_root

        path = allowed_data_root(text) or Path(text)  # hosted: refused unless under an allowed root
        path = Path(path).expanduser()
        if not path.is_dir():
            raise DataError(f"dataset folder {str(path)!r} does not exist: type the folder that holds "
                            "BreaKHis_v1, or pick the synthetic default")
        return path
    if not text:
        raise DataError("type a Hub dataset repo id (e.g. owner/breakhis), or pick another source")
    from dala.hub import fetch_dataset

    return Path(fetch_dataset(text, revision=(str(revision).strip() if revision else "") or "main"))


def _synthetic(progress: Progress | bool | None) -> Path:
    from dala.data.synth import ensure_default_dataset

    try:
        return ensure_default_dataset(progress=progress if progress is not None else False)
    except DalaError:
        raise
    except OSError as exc:  # disk full, read-only home: the fix is the user's
        raise DataError(f"could not generate the synthetic dataset ({exc}); free some disk space or set "
                        "DALA_HOME to a writable folder") from exc
