"""The teaching notebooks: each runs top to bottom in tiny mode, and is committed without outputs.

Tiny mode (``DALA_TINY=1``, read by each notebook's first cell) generates a 12-patient dataset at
96x64 px, trains for an epoch at 48-64 px and explains with the fast methods, so each notebook
runs in well under a minute on a CPU. The kernel is the ``python3`` kernelspec that the venv's own
ipykernel installs under ``sys.prefix/share/jupyter/kernels`` (``python`` in its argv is replaced
by ``sys.executable`` by jupyter_client), so a fresh ``pip install -r requirements-test.txt``
is enough: no ``ipykernel install`` step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = Path(__file__).resolve().parents[1]
NB_DIR = REPO / "notebooks"
NOTEBOOKS = ["01_explore.ipynb", "02_train_imbalance.ipynb", "03_compare_leakage.ipynb", "04_explain.ipynb"]
TINY_BUDGET_S = 120  # each runs in well under a minute on 2 idle cores; margin for a loaded CI box


def test_all_four_notebooks_exist():
    assert sorted(p.name for p in NB_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_without_outputs(name):
    nb = nbformat.read(NB_DIR / name, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name} cell {i} has outputs: strip them (python notebooks/sync.py)"
            assert cell.execution_count is None, f"{name} cell {i} has an execution count"
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebooks_match_their_source(name):
    """The jupytext percent script beside each notebook is its source: jupytext's reading of the
    .py gives exactly the committed notebook's cells (python notebooks/sync.py writes them)."""
    jupytext = pytest.importorskip("jupytext")
    src = NB_DIR / name.replace(".ipynb", ".py")
    assert src.is_file(), f"{name} has no source {src.name}"
    parsed = jupytext.read(src, fmt="py:percent")
    committed = nbformat.read(NB_DIR / name, as_version=4)
    assert [(c.cell_type, c.source) for c in parsed.cells] == [(c.cell_type, c.source) for c in committed.cells], (
        f"{name} differs from {src.name}: edit the .py, then run python notebooks/sync.py")


def test_sync_check_passes_and_is_reproducible():
    proc = subprocess.run([sys.executable, str(NB_DIR / "sync.py"), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_sources_are_plain_python(name):
    """The sources lint as Python: they compile, and every name a cell uses outside Jupyter's
    builtins is imported (``display`` included)."""
    import ast

    src = NB_DIR / name.replace(".ipynb", ".py")
    tree = ast.parse(src.read_text(encoding="utf-8"), filename=str(src))
    uses_display = any(isinstance(n, ast.Name) and n.id == "display" for n in ast.walk(tree))
    imported = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    assert not uses_display or "display" in imported, f"{src.name} calls display() without importing it"


def test_jupytext_is_pinned():
    req = (REPO / "requirements-test.txt").read_text() + (REPO / "requirements.txt").read_text()
    assert "jupytext==" in req


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_first_cell_has_the_one_data_switch(name):
    nb = nbformat.read(NB_DIR / name, as_version=4)
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert 'DATA_ROOT = None  # None = the synthetic default; or "/path/to/BreaKHis_v1"' in first_code.source
    stem = name.replace(".ipynb", "")
    assert f'nb = setup("{stem}", DATA_ROOT)' in first_code.source  # tiny mode, renderer, data line: dala.notebook


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebooks_keep_no_copy_of_the_shared_preamble(name):
    """The preamble lives in dala.notebook: a notebook keeps only the sys.path fallback (what must
    run before ``import dala``) and its settings, not its own train()/as_dict() or dataset code."""
    src = (NB_DIR / name.replace(".ipynb", ".py")).read_text(encoding="utf-8")
    for copy in ("def train(", "def as_dict(", "ensure_default_dataset", "pio.renderers.default", "TemporaryDirectory",
                 "IProgress not found"):
        assert copy not in src, f"{name} repeats {copy!r}: use dala.notebook"


def test_setup_in_tiny_mode_gives_the_tiny_dataset_and_a_temporary_runs_folder(monkeypatch, tmp_path, capsys):
    import plotly.io as pio

    from dala.notebook import as_dict, setup, train

    monkeypatch.setenv("DALA_TINY", "1")
    monkeypatch.setattr(pio.renderers, "default", "browser")
    nb = setup("99_test", None)
    out = capsys.readouterr().out
    assert nb.tiny and nb.synthetic and nb.index["patient"].nunique() == 12
    # the session's DALA_HOME (conftest): the same tiny dataset the notebook executions reuse
    assert nb.root.is_relative_to(os.environ["DALA_HOME"]) and "SYNTHETIC" in out and "tiny mode" in out
    assert pio.renderers.default == "plotly_mimetype+notebook"
    assert nb.runs.is_dir() and not nb.runs.is_relative_to(REPO)  # a temporary folder, removed with the context
    view = train(nb, "smoke", model="tiny_cnn", pretrained=False, mode="quick", image_size=32, quick_views=1, epochs=1,
                 n_tiles=0, magnification=40)
    d = as_dict(view)
    assert d["name"] == "smoke" and d["report"]["test"]["n"] > 0 and d["epochs"]
    assert (nb.runs / "smoke" / "config.json").is_file()
    runs = nb.runs
    del nb, view, d
    import gc

    gc.collect()
    assert not runs.exists()


def test_setup_in_full_mode_writes_runs_under_the_repository(monkeypatch, tiny_synth_root):
    from dala.notebook import setup

    monkeypatch.delenv("DALA_TINY", raising=False)
    nb = setup("02_train_imbalance", tiny_synth_root, quiet=True)
    assert not nb.tiny and nb.runs == REPO / "runs" / "notebooks" / "02_train_imbalance"
    assert nb.root == Path(tiny_synth_root) and len(nb.index) > 0


def test_python3_kernel_comes_from_this_environment():
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    assert spec.argv[0] in ("python", "python3", sys.executable), spec.argv


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_tiny_mode(name, tmp_path, monkeypatch):
    monkeypatch.setenv("DALA_TINY", "1")
    monkeypatch.setenv("DALA_OFFLINE", "1")  # no 2-second weight-server probes, never the network
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    monkeypatch.setenv("DALA_RUNS", str(tmp_path / "runs"))
    nb = nbformat.read(NB_DIR / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(REPO)}})
    t0 = time.time()
    client.execute()  # raises CellExecutionError on the first failing cell
    elapsed = time.time() - t0
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    figures = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
               if o.output_type == "display_data" and "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert figures, "every notebook shows plotly figures"
    text = json.dumps([c.outputs for c in nb.cells if c.cell_type == "code"])
    assert "SYNTHETIC" in text  # the synthetic default is labelled as such
    assert elapsed < TINY_BUDGET_S, f"{name} took {elapsed:.0f} s in tiny mode"
