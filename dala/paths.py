"""Where DALA Lab keeps things on disk.

``DALA_HOME`` (default ``~/.cache/dala``) holds the generated synthetic dataset and downloads;
``DALA_RUNS`` (default ``./runs``) holds training run folders. Both are plain folders a user can
inspect and delete.
"""

from __future__ import annotations

import os
from pathlib import Path


def dala_home() -> Path:
    return Path(os.environ.get("DALA_HOME", Path.home() / ".cache" / "dala")).expanduser()


def runs_dir() -> Path:
    return Path(os.environ.get("DALA_RUNS", "runs")).expanduser()


def synthetic_default_dir() -> Path:
    """Folder the embedded default dataset is generated into on first use."""
    return dala_home() / "synthetic_breakhis"
