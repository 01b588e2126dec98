"""What every teaching notebook (``notebooks/0N_*.py``) does first, in one place.

    from dala.notebook import setup, train, as_dict
    nb = setup("02_train_imbalance", DATA_ROOT)   # dataset, runs folder, plotly renderer, one printed line
    view = train(nb, "my_run", model="tiny_cnn", epochs=1)

**Tiny mode** (``DALA_TINY=1``, what the tests and CI set): a 12-patient synthetic dataset at
96x64 px (generated once into ``dala_home()/notebooks_tiny``), runs in a temporary folder removed
when the kernel exits. Otherwise the data is ``data_root`` (None: the synthetic default, generated
once on first use) and runs go to ``<repo>/runs/notebooks/<notebook>/``.

UI-free: plotly and pandas only; no Streamlit, no IPython (each notebook imports ``display``
itself, so its source stays plain Python).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

TINY_ENV = "DALA_TINY"
TINY_PARAMS = dict(n_patients=12, images_per_mag=2, size=(96, 64))  # 12 patients x 4 mags x 2 images
PLOTLY_RENDERER = "plotly_mimetype+notebook"  # offline: plotly.js is embedded, no CDN needed
REPO = Path(__file__).resolve().parents[1]


@dataclass
class NotebookContext:
    """The dataset and the runs folder of one notebook session."""

    name: str  # the notebook, e.g. "02_train_imbalance"
    root: Path  # the dataset folder
    index: pd.DataFrame  # dala.data.load_index(root)
    synthetic: bool  # generated data (labelled SYNTHETIC everywhere), not real tissue
    runs: Path  # where train() writes run folders
    tiny: bool  # DALA_TINY=1: a smoke run (tests, CI)
    _tmp: Any = field(default=None, repr=False)  # tiny mode's TemporaryDirectory (kept alive with the context)

    @property
    def tag(self) -> str:
        """A suffix for figure titles: what the data is."""
        return " - SYNTHETIC (generated, not real tissue)" if self.synthetic else " - real BreakHis"

    @property
    def data_line(self) -> str:
        what = "SYNTHETIC - generated, not real tissue" if self.synthetic else "real BreakHis"
        return f"data: {self.root}  ({len(self.index)} images, {what})"


def tiny_mode() -> bool:
    """``DALA_TINY=1`` in the environment."""
    from dala.net import env_flag

    return env_flag(TINY_ENV)


def tiny_dataset() -> Path:
    """The tiny-mode dataset (generated once, then reused)."""
    from dala.data.synth import ensure_default_dataset
    from dala.paths import dala_home

    return ensure_default_dataset(root=dala_home() / "notebooks_tiny", params=dict(TINY_PARAMS), progress=False)


def setup(name: str, data_root: str | os.PathLike | None = None, *, tiny: bool | None = None,
          quiet: bool = False) -> NotebookContext:
    """Load the notebook's dataset, choose its runs folder, set the plotly renderer and print what
    the data is (one line) and where runs go."""
    import plotly.io as pio

    from dala.data import load_index, resolve_dataset

    tiny = tiny_mode() if tiny is None else bool(tiny)
    # tqdm without ipywidgets warns once per bar; plain text progress is fine in a notebook
    warnings.filterwarnings("ignore", message="IProgress not found")
    pio.renderers.default = PLOTLY_RENDERER
    if tiny and data_root is None:
        root = tiny_dataset()
    else:
        root = resolve_dataset(data_root)  # the synthetic default is generated once on first use (~1 min)
    index = load_index(root)
    tmp = tempfile.TemporaryDirectory(prefix="dala_nb_") if tiny else None  # removed when the kernel exits
    runs = Path(tmp.name) if tmp else REPO / "runs" / "notebooks" / name
    ctx = NotebookContext(name=name, root=Path(root), index=index, synthetic=index.attrs.get("source") == "synthetic",
                          runs=runs, tiny=tiny, _tmp=tmp)
    if not quiet:
        print(ctx.data_line)
        print("tiny mode" if tiny else "full mode", "| runs go to", runs)
    return ctx


def train(ctx: NotebookContext, name: str, **options):
    """Train one configuration into a fresh run folder ``ctx.runs/name`` and return its RunView."""
    from dala.train import TrainConfig, read_run, run_training

    run_dir = ctx.runs / name
    shutil.rmtree(run_dir, ignore_errors=True)  # a rerun starts clean
    run_training(TrainConfig(data_root=str(ctx.root), name=name, **options), run_dir, progress=False)
    return read_run(run_dir)


def as_dict(view) -> dict[str, Any]:
    """What the dala.plots compare figures take: name, config, report, epoch records."""
    return {"name": view.name, "config": view.config, "report": view.report, "epochs": view.epochs}


__all__ = ["NotebookContext", "PLOTLY_RENDERER", "TINY_PARAMS", "as_dict", "setup", "tiny_dataset", "tiny_mode", "train"]
