"""Training: one loop (:func:`run_training`) for the CLI, notebooks and app; run folders;
the imbalance lab. ``from dala.train import TrainConfig, run_training, start_run, read_run``."""

from dala.train.config import TrainConfig, recommended_settings
from dala.train.eta import estimate_seconds
from dala.train.folder import RunFolder, checkpoint_dir, compare_row, read_config, read_report, read_split
from dala.train.runs import RunView, list_runs, read_run, send_control, start_run, wait_for


def run_training(*args, **kwargs):
    from dala.train.engine import run_training as _run

    return _run(*args, **kwargs)


__all__ = ["TrainConfig", "RunFolder", "RunView", "run_training", "start_run", "read_run", "list_runs", "send_control",
           "wait_for", "estimate_seconds", "recommended_settings", "checkpoint_dir", "compare_row", "read_config",
           "read_report", "read_split"]
