"""Running a study for real: killed in the middle and resumed (no run repeated, none lost), and the
Ray executor on a local 2-CPU cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dala.cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("DALA_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def run_data(tmp_path_factory) -> Path:
    from dala.data.synth import generate

    out = tmp_path_factory.mktemp("run_data")
    return generate(out, seed=1, n_patients=16, images_per_mag=2, size=(96, 64), magnifications=(40,),
                    progress=False)


def _finished(study: Path) -> dict[str, int]:
    state = json.loads((study / "state.json").read_text()) if (study / "state.json").is_file() else {"runs": {}}
    return {k: v["attempts"] for k, v in state["runs"].items() if v.get("state") == "finished"}


def test_resume_after_a_kill_in_the_middle(tmp_path, run_data):
    study = tmp_path / "s"
    assert main(["study", "plan", "quick", "--data", str(run_data), "--out", str(study), "--models", "tiny_cnn",
                 "--trials", "3", "--epochs", "2"]) == 0
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "DALA_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "dala", "study", "run", str(study)], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and not _finished(study):
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole study, mid-way: no clean shutdown
        proc.wait()
    done_before = _finished(study)
    assert 1 <= len(done_before) < 3, done_before
    first = next(iter(done_before))
    first_metrics = (study / "runs" / first / "metrics.jsonl").read_bytes()
    st = json.loads(subprocess.run([sys.executable, "-m", "dala", "study", "status", str(study), "--json"],
                                   cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True).stdout)
    assert st["done"] == len(done_before) and st["done"] + st["left"] == 3
    assert main(["study", "run", str(study)]) == 0
    after = _finished(study)
    assert set(after) == {"tiny_cnn-40X-t0", "tiny_cnn-40X-t1", "tiny_cnn-40X-t2"}  # none lost
    assert all(n == 1 for n in after.values()), after  # none repeated
    assert (study / "runs" / first / "metrics.jsonl").read_bytes() == first_metrics
    for rid in after:  # each run trained each epoch once: a resume drops the epochs it redoes
        epochs = [json.loads(line)["epoch"] for line in (study / "runs" / rid / "metrics.jsonl").read_text().splitlines()
                  if json.loads(line).get("kind") == "epoch"]
        assert epochs == [1, 2], (rid, epochs)
    assert main(["study", "report", str(study), "--n-boot", "200"]) == 0
    assert json.loads((study / "report.json").read_text())["n_finished"] == 3


@pytest.mark.slow
def test_ray_executor_on_a_local_cluster(tmp_path, run_data, capsys):
    pytest.importorskip("ray")
    study = tmp_path / "s"
    assert main(["study", "plan", "quick", "--data", str(run_data), "--out", str(study), "--models", "tiny_cnn",
                 "--trials", "2"]) == 0
    assert main(["study", "run", str(study), "--executor", "ray", "--num-cpus", "2"]) == 0
    st = json.loads((study / "state.json").read_text())["runs"]
    assert set(st) == {"tiny_cnn-40X-t0", "tiny_cnn-40X-t1"}
    assert all(v["state"] == "finished" and v["attempts"] == 1 for v in st.values())
    for rid in st:  # trained by Ray workers, not by this process
        status = json.loads((study / "runs" / rid / "status.json").read_text())
        assert status["state"] == "finished" and status["pid"] != os.getpid()
    assert "ray" in sys.modules
    capsys.readouterr()
    assert main(["study", "status", str(study)]) == 0
    assert "2 done" in capsys.readouterr().out
