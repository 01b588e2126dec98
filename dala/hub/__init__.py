"""The Hugging Face Hub: push a run's checkpoint with a model card, pull checkpoints offline-first,
list the checkpoints a repo offers, and fetch BreakHis from a Hub dataset repo with safe extraction.

This package's ``__init__`` is its public face; the work lives in one module per concern:

- :mod:`dala.hub.repos` - repo ids, default repos (env / ``config.toml``), the cache layout;
- :mod:`dala.hub.online` - the offline gate, deadlines, huggingface_hub errors -> ``HubError``;
- :mod:`dala.hub.pull` - :func:`pull`, :func:`pull_checkpoint`, :func:`list_checkpoints`,
  :func:`hub_run_record`;
- :mod:`dala.hub.card` - the model card; :mod:`dala.hub.push` - :func:`prepare_upload`, :func:`push_run`;
- :mod:`dala.hub.archives` - :func:`safe_extract`; :mod:`dala.hub.datasets` - :func:`fetch_dataset`;
- :mod:`dala.hub.cli` - ``python -m dala hub push | pull | ls | fetch-dataset``.

Offline means (see :mod:`dala.net`): ``DALA_OFFLINE=1`` - no network call of any kind;
``HF_HUB_OFFLINE=1`` - the Hub is not contacted. Either way, what is cached still loads, and what is
not fails at once with a :class:`~dala.errors.HubError` naming the repo and the fix. Importing this
package imports neither torch nor huggingface_hub (both are imported inside the functions).
"""

from __future__ import annotations

from dala.hub.archives import (ARCHIVE_SUFFIXES, UnsafeArchiveError, extract_archives, max_extract_bytes,
                               max_extract_members, safe_extract)
from dala.hub.card import CARD_METRICS, CARD_TAGS, metrics_table, model_card, render_curves
from dala.hub.datasets import dataset_root, fetch_dataset, hub_datasets_dir
from dala.hub.pull import PulledCheckpoint, hub_run_record, list_checkpoints, pull, pull_checkpoint
from dala.hub.push import prepare_upload, push_run
from dala.hub.repos import (CARD_FILE, CONFIG_FILE, CURVES_FILE, DEFAULT_LICENSE, RUN_FILES, SOURCE_MARKER,
                            WEIGHTS_FILE, cached_snapshot, checkpoint_folders, config_files, default_dataset_id,
                            default_repo_id, normalize_repo_id, repo_cache_folder)

__all__ = [
    "ARCHIVE_SUFFIXES", "CARD_FILE", "CARD_METRICS", "CARD_TAGS", "CONFIG_FILE", "CURVES_FILE", "DEFAULT_LICENSE",
    "RUN_FILES", "SOURCE_MARKER", "WEIGHTS_FILE", "PulledCheckpoint", "UnsafeArchiveError", "cached_snapshot",
    "checkpoint_folders", "config_files", "dataset_root", "default_dataset_id", "default_repo_id",
    "extract_archives", "fetch_dataset", "hub_datasets_dir", "hub_run_record", "list_checkpoints",
    "max_extract_bytes", "max_extract_members", "metrics_table", "model_card", "normalize_repo_id",
    "prepare_upload", "pull", "pull_checkpoint", "push_run", "render_curves", "repo_cache_folder", "safe_extract",
]
