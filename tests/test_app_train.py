"""The Train page, clicked as a class clicks it (AppTest): Start shows the run it started, a model's
recommended settings, the queue / starting / ETA lines, damaged run files, others' runs, and
settings handed over from the Imbalance Lab. Run folders are written by hand (tests/test_app.py)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

pytest.importorskip("streamlit")

from test_app import app, env, ok, runs_root, texts, write_run  # noqa: E402,F401 - fixtures


def _fake_start(tiny_index, started: list):
    """The real start_run spawns a training process (browser test); this one writes a running run."""

    def fake_start(config, *, runs_root=None, **kw):
        config.validate()
        started.append(config)
        return write_run(Path(runs_root), f"20260109-00000{len(started)}-{config.model}-new", tiny_index,
                         split=config.split_mode, state="running", pid=os.getpid(), checkpoint=False)

    return fake_start


def _own_runs(monkeypatch, tmp_path) -> Path:
    runs = tmp_path / "runs"
    runs.mkdir()
    monkeypatch.setenv("DALA_RUNS", str(runs))
    return runs


def test_start_shows_the_run_it_started_after_a_finished_one(monkeypatch, env, tmp_path, tiny_index):
    runs = _own_runs(monkeypatch, tmp_path)
    old = write_run(runs, "20260101-000000-tiny_cnn-allX-patient", tiny_index)
    import dala.train

    started: list = []
    monkeypatch.setattr(dala.train, "start_run", _fake_start(tiny_index, started))
    at = ok(app("train"))
    at.selectbox(key="tr_watch").set_value(str(old.resolve())).run()  # the student looks at the old run
    ok(at)
    assert "**finished**" in texts(at)
    at.button(key="tr_start").click().run()
    ok(at)
    assert len(started) == 1
    assert at.selectbox(key="tr_watch").value.endswith("-new")
    assert "**running**" in texts(at)


def _form(at) -> dict:
    return {"mode": at.radio(key="tr_mode").value, "epochs": at.slider(key="tr_epochs").value,
            "lr": at.select_slider(key="tr_lr").value, "size": at.selectbox(key="tr_size").value,
            "pretrained": at.checkbox(key="tr_pre").value}


def _recommended(model: str) -> dict:
    from dala.models import get_spec
    from dala.models.availability import pretrained_ready
    from dala.train.config import recommended_settings

    spec = get_spec(model)
    rec = recommended_settings(model, pretrained=pretrained_ready(model))
    return {"mode": rec["mode"], "epochs": rec["epochs"], "lr": rec["lr"],
            "size": rec["image_size"] or spec.input_size, "pretrained": spec.has_pretrained}


def test_choosing_a_model_applies_its_recommended_settings_and_reset_restores_them(env):
    at = ok(app("train"))
    assert at.selectbox(key="tr_model").value == "tiny_cnn"
    assert _form(at) == _recommended("tiny_cnn")
    assert "recommended settings for tiny_cnn" in texts(at)
    at.selectbox(key="tr_model").set_value("dala_resnet50").run()
    ok(at)
    assert _form(at) == _recommended("dala_resnet50")  # not tiny_cnn's full mode, 128 px, lr 1e-3, 10 epochs
    assert at.checkbox(key="tr_pre").value is True
    assert "recommended settings for dala_resnet50" in texts(at)
    at.slider(key="tr_epochs").set_value(3)
    at.radio(key="tr_mode").set_value("full").run()
    ok(at)
    assert "changed from the recommended" in texts(at)
    at.button(key="tr_reset").click().run()
    ok(at)
    assert _form(at) == _recommended("dala_resnet50")
    assert "changed from the recommended" not in texts(at)


def test_no_page_reads_weight_refs_or_compares_model_names():
    root = Path(__file__).resolve().parents[1] / "pages"
    for page in root.glob("*.py"):
        src = page.read_text()
        assert "weight_ref" not in src, page.name
        assert not re.search(r"model\s*==\s*['\"]", src), page.name


def test_a_first_queued_run_with_nothing_ahead_says_starting(monkeypatch, env, tmp_path, tiny_index):
    runs = _own_runs(monkeypatch, tmp_path)
    write_run(runs, "20260103-000000-a", tiny_index, state="queued", pid=os.getpid(), checkpoint=False, created=1.0)
    at = ok(app("train"))
    t = texts(at)
    assert "Queued" not in t and "run ahead" not in t
    assert "Starting" in t


def test_a_queued_run_behind_a_running_one_shows_its_position(monkeypatch, env, tmp_path, tiny_index):
    runs = _own_runs(monkeypatch, tmp_path)
    write_run(runs, "20260103-000000-a", tiny_index, state="running", pid=os.getpid(), checkpoint=False, created=1.0)
    q = write_run(runs, "20260103-000100-b", tiny_index, state="queued", pid=os.getpid(), checkpoint=False, created=2.0)
    at = ok(app("train"))
    at.selectbox(key="tr_watch").set_value(str(q.resolve())).run()
    ok(at)
    assert any("position **1**" in i.value for i in at.info)


def test_the_live_eta_from_status_json_is_shown_while_training(monkeypatch, env, tmp_path, tiny_index):
    runs = _own_runs(monkeypatch, tmp_path)
    run = write_run(runs, "20260104-000000-a", tiny_index, state="running", pid=os.getpid(), checkpoint=False)
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "eta_s": 125.0}))
    at = ok(app("train"))
    assert "about 2 min 5 s left" in texts(at)


@pytest.mark.parametrize("garbage", [b"\x00\xffnot json{", b"[1, 2, 3]",
                                     json.dumps({"tiles": [{"path": 3}], "epochs": [{"pred": "x"}]}).encode()])
def test_a_damaged_tiles_file_shows_the_run_with_a_note(monkeypatch, env, tmp_path, tiny_index, garbage):
    runs = _own_runs(monkeypatch, tmp_path)
    run = write_run(runs, "20260105-000000-tiny_cnn-allX-patient", tiny_index)
    (run / "val_tiles.json").write_bytes(garbage)
    for _ in range(2):  # every visit, not only the first
        at = ok(app("train"))
        assert at.selectbox(key="tr_watch").value.endswith("20260105-000000-tiny_cnn-allX-patient")
        t = texts(at)
        assert "val_tiles.json" in t and "damaged" in t
        assert "**finished**" in t and "Test metrics" in t  # the rest of the run is still shown


def test_settings_sent_from_the_imbalance_lab_prefill_the_form(env):
    at = app()
    lab = {"model": "tiny_cnn", "imbalance": "focal", "target_ratio": 0.25, "split_mode": "image",
           "magnification": 100, "epochs": 4}
    at.session_state["dala_lab_to_train"] = lab
    at.switch_page("pages/train.py").run()
    ok(at)
    assert "settings from the Imbalance Lab" in texts(at)
    assert at.selectbox(key="tr_imb").value == "focal"
    assert at.toggle(key="tr_use_ratio").value is True and at.slider(key="tr_ratio").value == 0.25
    assert at.radio(key="tr_split").value == "image"
    assert at.selectbox(key="tr_mag").value == 100
    assert at.slider(key="tr_epochs").value == 4
    assert "dala_lab_to_train" not in at.session_state
    at.run()  # the hand-over is applied once: the student's later edits stay
    ok(at)
    at.slider(key="tr_epochs").set_value(6).run()
    ok(at)
    assert at.slider(key="tr_epochs").value == 6


def test_others_runs_are_listed_read_only_unless_teacher_mode(monkeypatch, env, tmp_path, tiny_index):
    from dala.identity import owner_id, write_owner

    runs = _own_runs(monkeypatch, tmp_path)
    monkeypatch.setenv("DALA_TEACHER_KEY", "let-me-in-please")
    run = write_run(runs, "20260107-000000-tiny_cnn-allX-patient", tiny_index, state="running", pid=os.getpid(),
                    checkpoint=False)
    write_owner(run, owner_id("another student's browser secret"))
    at = ok(app("train"))
    assert at.selectbox(key="tr_watch").value.endswith("20260107-000000-tiny_cnn-allX-patient")
    keys = {b.key for b in at.button}
    assert "tr_stop" not in keys and "tr_pause" not in keys
    assert "read-only" in texts(at) and "another student's" in at.selectbox(key="tr_watch").options[0]
    at.sidebar.text_input(key="teacher_key").set_value("let-me-in-please").run()
    ok(at)
    keys = {b.key for b in at.button}
    assert "tr_stop" in keys and "tr_pause" in keys
    at.button(key="tr_stop").click().run()
    ok(at)
    assert json.loads((run / "control.json").read_text())["command"] == "stop"


def test_a_started_run_is_recorded_as_the_starters_and_keeps_its_controls(monkeypatch, env, tmp_path, tiny_index):
    from dala.identity import read_owner

    runs = _own_runs(monkeypatch, tmp_path)
    import dala.train

    started: list = []
    fake = _fake_start(tiny_index, started)

    def start_with_owner(config, *, runs_root=None, owner=None, **kw):
        path = fake(config, runs_root=runs_root)
        if owner:
            from dala.identity import write_owner

            write_owner(path, owner)
        return path

    monkeypatch.setattr(dala.train, "start_run", start_with_owner)
    at = ok(app("train"))
    at.button(key="tr_start").click().run()
    ok(at)
    (path,) = [p for p in runs.iterdir() if p.name.endswith("-new")]
    assert read_owner(path) is not None
    assert "tr_stop" in {b.key for b in at.button}
    assert "yours" in at.selectbox(key="tr_watch").options[0]
