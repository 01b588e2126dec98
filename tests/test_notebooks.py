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
            assert cell.outputs == [], f"{name} cell {i} has outputs: strip them (python notebooks/_build.py)"
            assert cell.execution_count is None, f"{name} cell {i} has an execution count"
    assert nb.metadata["kernelspec"]["name"] == "python3"


def test_notebooks_match_their_source():
    """notebooks/_build.py is the reviewable source; the .ipynb files are its output."""
    proc = subprocess.run([sys.executable, str(NB_DIR / "_build.py"), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_first_cell_has_the_one_data_switch(name):
    nb = nbformat.read(NB_DIR / name, as_version=4)
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert 'DATA_ROOT = None  # None = the synthetic default; or "/path/to/BreaKHis_v1"' in first_code.source
    assert 'os.environ.get("DALA_TINY") == "1"' in first_code.source


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
