"""Studies: the plan and its split invariants, the CLI contract, bad input, the report and its
statistics, and the Compare page's Study view (AppTest). Kill/resume and Ray: test_study_run.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dala.cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("DALA_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def study_data(tmp_path_factory) -> Path:
    """16 patients, 2 images per magnification at 40X and 100X, 96x64 px."""
    from dala.data.synth import generate

    out = tmp_path_factory.mktemp("study_data")
    return generate(out, seed=0, n_patients=16, images_per_mag=2, size=(96, 64), magnifications=(40, 100),
                    progress=False)


@pytest.fixture(scope="module")
def other_data(tmp_path_factory) -> Path:
    from dala.data.synth import generate

    out = tmp_path_factory.mktemp("other_data")
    return generate(out, seed=5, n_patients=14, images_per_mag=2, size=(96, 64), magnifications=(40,),
                    progress=False)


def _plan(out: Path, data: Path, *extra: str, capsys=None) -> dict:
    rc = main(["study", "plan", "quick", "--data", str(data), "--out", str(out), "--json", *extra])
    assert rc == 0
    if capsys is not None:
        return json.loads(capsys.readouterr().out)
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory, study_data) -> Path:
    """The quick preset (dala_resnet50 + tiny_cnn, 40X, 2 trials, 1 epoch, 64 px), run locally."""
    import os

    os.environ["DALA_OFFLINE"] = "1"
    from dala.study import run_study

    out = tmp_path_factory.mktemp("finished") / "study"
    _plan(out, study_data)
    st = run_study(out, progress=False)
    assert st["done"] == 4, st
    assert main(["study", "report", str(out), "--n-boot", "300"]) == 0
    return out


# ------------------------------------------------------------------------------------------------ plan


def test_plan_cli_contract(tmp_path, study_data, capsys):
    m = _plan(tmp_path / "s", study_data, "--magnifications", "40", "100", "--trials", "3",
              "--models", "tiny_cnn", "dala_resnet50", capsys=capsys)
    assert {"preset", "data", "runs"} <= set(m) and m["preset"] == "quick"
    assert m["data"] == str(study_data.resolve())
    assert len(m["runs"]) == 2 * 2 * 3
    for r in m["runs"]:
        assert r["model"] in ("tiny_cnn", "dala_resnet50") and r["magnification"] in (40, 100)
        assert r["trial"] in (0, 1, 2)
        assert set(r["split"]) == {"train", "val", "test"}
        for part in r["split"].values():
            assert part["slides"] and part["patients"]
            assert all(s.startswith("SOB_") and s.count("_") == 3 for s in part["slides"])
    assert (tmp_path / "s" / "splits" / "100X-trial2.json").is_file()


def test_split_invariants_on_every_trial(tmp_path, study_data):
    from dala.data.index import load_index
    from dala.data.splits import Split

    index = load_index(study_data)
    m = _plan(tmp_path / "s", study_data, "--magnifications", "40", "100", "--trials", "3")
    by_trial: dict = {}
    for r in m["runs"]:
        sub = index[index["magnification"] == r["magnification"]]
        slide_patient = dict(zip(sub["slide"], sub["patient"]))
        parts = {p: {slide_patient[s] for s in r["split"][p]["slides"]} for p in ("train", "val", "test")}
        # patient-disjoint under the project's patient key, and the listed patients are the slides' patients
        assert not (parts["train"] & parts["test"]) and not (parts["train"] & parts["val"])
        assert not (parts["val"] & parts["test"])
        for p in parts:
            assert parts[p] == set(r["split"][p]["patients"])
        assert set().union(*parts.values()) == set(sub["patient"])  # every patient used once
        split = Split.load(tmp_path / "s" / r["split_file"])
        assert split.by == "patient" and split.magnification == r["magnification"]
        assert split.content_hash() == r["split_sha256"]
        # the same trial gives every model the same split
        by_trial.setdefault((r["magnification"], r["trial"]), []).append(r)
    for runs in by_trial.values():
        assert len({json.dumps(r["split"], sort_keys=True) for r in runs}) == 1
        assert len({r["split_file"] for r in runs}) == 1
        assert {r["model"] for r in runs} == {"dala_resnet50", "tiny_cnn"}
    # different trials are different splits
    tests = {k: tuple(v[0]["split"]["test"]["patients"]) for k, v in by_trial.items() if k[0] == 40}
    assert len(set(tests.values())) == 3


def test_paper_preset_is_the_protocol(tmp_path, study_data):
    from dala.study.plan import PAPER_MODELS, make_plan

    m, splits = make_plan("paper", data=str(study_data), magnifications=[40, 100])
    assert m["models"] == list(PAPER_MODELS) and "tiny_cnn" not in m["models"] and len(PAPER_MODELS) == 9
    assert m["trials"] == 5 and len(m["runs"]) == 9 * 2 * 5 and len(splits) == 2 * 5
    assert m["protocol"]["test_fraction"] == 0.3
    r = m["runs"][0]["config"]
    assert r["pretrained"] is True and r["mode"] == "full" and r["epochs"] >= 10


def test_overrides_reach_every_run(tmp_path, study_data, capsys):
    m = _plan(tmp_path / "s", study_data, "--epochs", "2", "--set", "lr=0.003", "--set", "batch_size=8",
              "--set", "imbalance=class_weight", capsys=capsys)
    for r in m["runs"]:
        assert (r["config"]["epochs"], r["config"]["lr"], r["config"]["batch_size"]) == (2, 0.003, 8)
        assert r["config"]["imbalance"] == "class_weight"


def test_plan_bad_input(tmp_path, study_data, capsys):
    assert main(["study", "plan", "quick", "--data", str(study_data), "--out", str(tmp_path / "a"),
                 "--models", "resnet5O"]) == 2
    assert "not in the registry" in capsys.readouterr().err
    assert main(["study", "plan", "quick", "--data", str(study_data), "--out", str(tmp_path / "b"),
                 "--set", "learning_rate=1"]) == 2
    assert "learning_rate" in capsys.readouterr().err
    assert main(["study", "plan", "quick", "--data", str(study_data), "--out", str(tmp_path / "c"),
                 "--set", "magnification=40"]) == 2
    assert "cannot be overridden" in capsys.readouterr().err
    _plan(tmp_path / "d", study_data)
    assert main(["study", "plan", "quick", "--data", str(study_data), "--out", str(tmp_path / "d")]) == 2
    assert "already holds a study" in capsys.readouterr().err
    assert main(["study", "status", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- bad input


def test_a_leaking_manifest_is_refused_naming_the_patients(tmp_path, study_data, capsys):
    out = tmp_path / "s"
    m = _plan(out, study_data)
    r = m["runs"][0]
    moved = r["split"]["test"]["slides"][0]
    r["split"]["train"]["slides"].append(moved)  # one test slide also in training: a leak
    (out / "manifest.json").write_text(json.dumps(m))
    assert main(["study", "run", str(out)]) == 2
    err = capsys.readouterr().err
    from dala.data.breakhis import parse_name
    from dala.study.plan import _slide_file

    patient = parse_name(_slide_file(moved)).patient
    assert "more than one" in err and patient in err and r["id"] in err
    assert not (out / "runs").exists()  # nothing trained


def test_a_study_from_another_dataset_is_refused(tmp_path, study_data, other_data, capsys):
    out = tmp_path / "s"
    m = _plan(out, study_data)
    m["data"] = m["data_arg"] = str(other_data)  # the folder now points at a different dataset
    (out / "manifest.json").write_text(json.dumps(m))
    assert main(["study", "run", str(out)]) == 2
    assert "planned on another dataset" in capsys.readouterr().err


def test_an_executor_that_cannot_start_fails_fast(tmp_path, study_data, capsys, monkeypatch):
    out = tmp_path / "s"
    _plan(out, study_data)
    t0 = time.time()
    assert main(["study", "run", str(out), "--executor", "ray", "--address", "127.0.0.1:9"]) == 2
    assert "no Ray cluster answers at 127.0.0.1:9" in capsys.readouterr().err and time.time() - t0 < 20
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed
    assert main(["study", "run", str(out), "--executor", "ray"]) == 2
    assert "pip install 'ray==2.60.0'" in capsys.readouterr().err
    assert not (out / "runs").exists()


def test_importing_dala_does_not_import_ray():
    code = ("import sys, dala, dala.cli, dala.study, dala.study.run, dala.study.report, dala.stats; "
            "dala.cli.build_parser(); assert 'ray' not in sys.modules, 'ray imported'; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


def test_a_crashed_run_is_recorded_retried_and_kept_apart(tmp_path, study_data, monkeypatch, capsys):
    import dala.train
    from dala.study import run_study, study_status

    out = tmp_path / "s"
    _plan(out, study_data, "--models", "tiny_cnn", "--trials", "2")
    real = dala.train.run_training

    def flaky(config, run_dir, **kw):
        if config.name.endswith("t1"):
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(config, run_dir, **kw)

    monkeypatch.setattr(dala.train, "run_training", flaky)
    st = run_study(out, progress=False)
    assert (st["done"], st["failed"]) == (1, 1)
    state = json.loads((out / "state.json").read_text())["runs"]["tiny_cnn-40X-t1"]
    assert state["attempts"] == 2 and len(state["errors"]) == 2 and "out of memory" in state["error"]
    finished = out / "runs" / "tiny_cnn-40X-t0" / "report.json"
    before = finished.stat().st_mtime_ns
    # a plain rerun does not retry a run that used up its attempts; --retry-failed does
    monkeypatch.setattr(dala.train, "run_training", real)
    assert run_study(out, progress=False)["failed"] == 1
    assert main(["study", "run", str(out), "--retry-failed"]) == 0
    assert study_status(out)["done"] == 2 and finished.stat().st_mtime_ns == before


# ---------------------------------------------------------------------------------- finished study


def test_status_and_rerun_skip_finished(finished_study, capsys):
    from dala.study import run_study

    assert main(["study", "status", str(finished_study), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert (st["done"], st["running"], st["failed"], st["left"], st["total"]) == (4, 0, 0, 0, 4)
    stamps = {p: p.stat().st_mtime_ns for p in finished_study.glob("runs/*/metrics.jsonl")}
    assert run_study(finished_study, progress=False)["done"] == 4
    assert stamps == {p: p.stat().st_mtime_ns for p in finished_study.glob("runs/*/metrics.jsonl")}


def test_a_run_folder_deleted_mid_study_is_told_and_rerun(finished_study, tmp_path, capsys):
    study = tmp_path / "copy"
    shutil.copytree(finished_study, study)
    shutil.rmtree(study / "runs" / "tiny_cnn-40X-t1")
    assert main(["study", "status", str(study)]) == 0
    out = capsys.readouterr().out
    assert "1 left" in out and "deleted" in out
    keep = (study / "runs" / "tiny_cnn-40X-t0" / "report.json").read_bytes()
    assert main(["study", "run", str(study)]) == 0
    assert "running it again" in capsys.readouterr().err
    assert (study / "runs" / "tiny_cnn-40X-t1" / "report.json").is_file()
    assert (study / "runs" / "tiny_cnn-40X-t0" / "report.json").read_bytes() == keep


def test_report_files_and_contents(finished_study, capsys):
    for name in ("report.json", "report.md", "results.csv", "runs.csv", "comparisons.csv",
                 "figures/metrics.html", "figures/convergence.html", "figures/plotly.min.js"):
        assert (finished_study / name).is_file(), name
    rep = json.loads((finished_study / "report.json").read_text())
    assert rep["synthetic"] and rep["n_finished"] == 4 and rep["baseline"] == "dala_resnet50"
    assert {(s["model"], s["magnification"]) for s in rep["summary"]} == {("dala_resnet50", 40), ("tiny_cnn", 40)}
    for s in rep["summary"]:
        assert s["n_trials"] == 2 and s["num_params"] > 0
        for m in ("accuracy", "patient_accuracy", "balanced_accuracy", "gmean", "iba", "f1", "precision",
                  "recall", "roc_auc"):
            b = s["metrics"][m]
            assert {"mean", "std", "lo", "hi", "pooled"} <= set(b)
        a = s["metrics"]["accuracy"]
        assert a["lo"] <= a["pooled"] <= a["hi"]
    for r in rep["runs"]:
        ev = json.loads((finished_study / "eval" / f"{r['id']}.json").read_text())
        assert ev["chosen_on"] == "validation" and ev["threshold"] == r["threshold"]
        assert r["accuracy_at_0_5"] is not None and r["epochs_to_95"] == 1
    comp = [c for c in rep["comparisons"] if c["metric"] == "accuracy"]
    assert len(comp) == 1 and comp[0]["model"] == "tiny_cnn" and comp[0]["n_trials"] == 2
    assert comp[0]["wilcoxon_min_p"] == 0.5  # two trials can never be significant by Wilcoxon
    verdicts = {c["claim"]: c["verdict"] for c in rep["claims"]}
    assert set(verdicts.values()) <= {"supported", "not supported", "cannot tell"}
    # one peer of eight: "outperforms the eight models" cannot be supported by this study
    assert all(v != "supported" for k, v in verdicts.items() if "outperforms" in k)
    assert any("lightweight" in k for k in verdicts)
    rep40 = next(r for r in rep["reported"] if r["magnification"] == 40)
    assert rep40["reported_accuracy"] == 0.985 and "reported" in rep40["reported_note"]
    assert rep40["measured"]["mean"] is not None
    md = (finished_study / "report.md").read_text()
    assert "(reported)" in md and "SYNTHETIC" in md and "| claim | verdict |" in md
    assert main(["study", "report", str(finished_study), "--json", "--n-boot", "200"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "dala-study-report/1"
    assert main(["study", "report", str(finished_study), "--md", "--n-boot", "200"]) == 0
    assert capsys.readouterr().out.startswith("# Study report")


def test_threshold_is_chosen_on_validation_hand_worked():
    from dala.calibration import choose_threshold
    from dala.study.report import _calibrated

    # benign at 0.1, 0.3, 0.35; malignant at 0.4, 0.8: every cut in (0.35, 0.4] is perfect
    pick = lambda y, p: choose_threshold(y, p, metric="balanced_accuracy", default=0.5)  # as dala.study.run locks it
    assert pick([0, 0, 0, 1, 1], [0.1, 0.3, 0.35, 0.4, 0.8]) == pytest.approx(0.4)
    assert pick([1, 1], [0.2, 0.9]) == 0.5  # one class: the default
    p = np.array([0.0, 0.2, 0.4, 0.7, 1.0])
    q = _calibrated(p, 0.4)
    assert np.all(np.diff(q) > 0) and q[2] == 0.5 and ((q >= 0.5) == (p >= 0.4)).all()


def test_push_study_dry_run_writes_one_folder_per_magnification(finished_study, tmp_path, capsys):
    out = tmp_path / "upload"
    assert main(["hub", "push-study", str(finished_study), "--repo", "lab/dala-study", "--dry-run", str(out)]) == 0
    assert (out / "40X" / "model.safetensors").is_file() and (out / "40X" / "config.json").is_file()
    card = (out / "README.md").read_text()
    assert "95 %" in card and "40X" in card and "SYNTHETIC" in card
    assert main(["hub", "push-study", str(finished_study), "--repo", "lab/dala-study"]) == 2
    assert "cannot" in capsys.readouterr().err.lower()


# ------------------------------------------------------------------------------------- Study view


VIEW_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
sys.path.insert(0, {pages!r})
from _study_view import render_study_view
render_study_view()
"""


def test_study_view_draws_a_finished_study(finished_study):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_string(VIEW_SCRIPT.format(root=str(REPO_ROOT), pages=str(REPO_ROOT / "pages")),
                             default_timeout=120)
    at.run()
    assert not at.exception
    assert "Enter a study folder" in " ".join(i.value for i in at.info)
    at.text_input(key="study_dir").set_value(str(finished_study / "nope")).run()
    assert not at.exception and "does not exist" in at.error[0].value
    at.text_input(key="study_dir").set_value(str(finished_study)).run()
    assert not at.exception, at.exception
    assert any("SYNTHETIC" in w.value for w in at.warning)
    assert [m.value for m in at.metric][:4] == ["4 / 4", "0 / 4", "0 / 4", "0 / 4"]
    assert len(at.dataframe) >= 4
    ci_metric = at.metric[-1]
    assert "locked on validation" in ci_metric.label
    assert any("95 % CI [" in m.value for m in at.markdown)
    at.selectbox(key="study_metric").set_value("gmean").run()
    assert not at.exception
    at.selectbox(key="study_run").set_value("tiny_cnn-40X-t1").run()
    assert not at.exception and any("95 % CI [" in m.value for m in at.markdown)


def test_study_view_refuses_paths_in_hosted_mode(finished_study, monkeypatch):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("DALA_HOSTED", "1")
    at = AppTest.from_string(VIEW_SCRIPT.format(root=str(REPO_ROOT), pages=str(REPO_ROOT / "pages")),
                             default_timeout=60)
    at.run()
    at.text_input(key="study_dir").set_value(str(finished_study)).run()
    assert not at.exception
    assert "does not read server folders" in at.error[0].value
    assert str(finished_study) not in at.error[0].value
