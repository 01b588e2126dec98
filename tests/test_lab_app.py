"""The Imbalance Lab page, flow by flow, with Streamlit's AppTest (no browser, no server).

A tiny generated dataset (``DALA_DATA_ROOT``), a tiny encoder (``DALA_LAB_ENCODER``: tiny_cnn's
random stem at 64 px) and a runs folder of our own (``DALA_RUNS``)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
APP = str(REPO_ROOT / "app.py")
TIMEOUT = 180
TINY_ENCODER = "random_stem:tiny_cnn@64"


@pytest.fixture
def env(monkeypatch, tiny_synth_root, tmp_path_factory):
    runs = tmp_path_factory.getbasetemp() / "lab_app_runs"
    runs.mkdir(exist_ok=True)
    monkeypatch.setenv("DALA_DATA_ROOT", str(tiny_synth_root))
    monkeypatch.setenv("DALA_RUNS", str(runs))
    monkeypatch.setenv("DALA_OFFLINE", "1")
    monkeypatch.setenv("DALA_LAB_ENCODER", TINY_ENCODER)
    monkeypatch.setenv("DALA_LAB_WARM", "0")  # no background answers competing with these flows (tested in test_lab)
    return {"data": tiny_synth_root, "runs": runs}


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def lab_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    ok(at.run())
    at.switch_page("pages/lab.py")
    return ok(at.run())


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def page_text(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [w.value for w in at.warning]
    parts += [e.value for e in at.error] + [i.value for i in at.info]
    return "\n".join(str(p) for p in parts)


def test_page_answers_with_every_number_labelled(env):
    at = lab_page()
    m = metrics(at)
    for label in ("Accuracy", "Balanced accuracy", "GMean", "IBA", "F1 (macro)", "Sensitivity", "Specificity",
                  "Precision", "Patient accuracy"):
        assert label in m, m
    text = page_text(at)
    assert "SYNTHETIC" in text and "tiny_cnn prepared random stem" in text and "random weights" in text
    assert "patient-level split" in text
    assert "benign" in text and "malignant** images kept" in text  # the sizes
    assert not at.error


def test_strategy_and_ratio_change_the_answer(env):
    at = lab_page()
    before = page_text(at)
    at.select_slider(key="lab_ratio").set_value(0.2)
    ok(at.run())
    after = page_text(at)
    assert "Training: **" in after and after != before
    assert "1:5" not in before
    at.selectbox(key="lab_strategy").set_value("class_weight")
    ok(at.run())
    assert metrics(at)  # still answering


def test_threshold_slider_moves_the_numbers(env):
    at = lab_page()
    base = metrics(at)
    at.toggle(key="lab_manual_t").set_value(True)
    ok(at.run())
    at.slider(key="lab_threshold").set_value(0.02)
    ok(at.run())
    low = metrics(at)
    at.slider(key="lab_threshold").set_value(0.98)
    ok(at.run())
    high = metrics(at)
    assert low["Sensitivity"] != high["Sensitivity"] or low["Specificity"] != high["Specificity"]
    assert float(low["Sensitivity"]) >= float(high["Sensitivity"])
    assert "Threshold **0.98**" in page_text(at)
    assert base  # the strategy's own threshold answered first


def test_test_prevalence_moves_accuracy_not_sensitivity(env):
    at = lab_page()
    at.toggle(key="lab_shift").set_value(True)
    ok(at.run())
    at.slider(key="lab_prev").set_value(0.1)
    ok(at.run())
    low = metrics(at)
    assert "each malignant image x" in page_text(at)
    at.slider(key="lab_prev").set_value(0.9)
    ok(at.run())
    high = metrics(at)
    for key in ("Sensitivity", "Specificity", "Balanced accuracy"):
        assert low[key] == high[key], key
    assert low["Accuracy"] != high["Accuracy"] or low["Precision"] != high["Precision"]


def test_sweep_leakage_and_prevalence_curves(env):
    at = lab_page()
    at.button(key="lab_sweep_go").click()
    ok(at.run())
    sweep_df = [d for d in at.dataframe if len(d.value) == 72]
    assert sweep_df, [len(d.value) for d in at.dataframe]
    assert {"strategy", "ratio", "accuracy", "gmean"} <= set(sweep_df[0].value.columns)
    at.toggle(key="lab_leak").set_value(True)
    ok(at.run())
    leak = [d for d in at.dataframe if "image-level split (patients leak)" in list(d.value.index)]
    assert leak
    at.toggle(key="lab_prev_curve").set_value(True)
    ok(at.run())
    assert any("asked" in d.value.columns for d in at.dataframe)


def test_send_to_train_says_what_train_cannot_do(env):
    from dala.train.config import TrainConfig

    at = lab_page()
    at.selectbox(key="lab_strategy").set_value("smote")
    at.select_slider(key="lab_ratio").set_value(0.5)
    ok(at.run())
    assert any("Train has no 'smote' strategy" in w.value for w in at.warning)
    assert not at.get("help_info"), "a note's value reached st.write (Streamlit magic): a help box on the page"
    at.button(key="lab_send").click()
    ok(at.run())
    assert "Train a model" in [t.value for t in at.title]  # switched to the Train page
    assert at.session_state["tr_split"] == "patient"
    # the Train page may consume the key at once; check what the Lab built instead
    from dala.lab.train_link import train_settings

    settings, notes = train_settings({"strategy": "smote", "ratio": 0.5, "split": "patient", "seed": 0,
                                      "magnification": None, "threshold": 0.5, "head": "linear"},
                                     {"kind": "random_stem", "model": "tiny_cnn"}, data_root=str(env["data"]))
    assert "imbalance" not in settings and settings["target_ratio"] == 0.5
    assert set(settings) <= {f for f in TrainConfig.__dataclass_fields__}
    TrainConfig.from_dict(settings).validate()
    assert any("smote" in n for n in notes)


def test_a_damaged_bank_is_rebuilt_and_the_page_keeps_working(env, tiny_index):
    from dala.lab.bank import get_bank

    bank = get_bank(tiny_index, TINY_ENCODER, progress=False)
    path = bank.folder / "features.npy"
    data = path.read_bytes()
    tmp = path.with_name("features.npy.new")
    tmp.write_bytes(data[:100])
    tmp.replace(path)
    at = lab_page()
    assert metrics(at)
    assert "damaged and has been rebuilt" in page_text(at) and "truncated" in page_text(at)
    assert get_bank(tiny_index, TINY_ENCODER, progress=False).rebuilt is None  # whole again: reused


def test_a_bad_setting_shows_the_problem_and_the_page_keeps_working(env):
    at = lab_page()
    at.selectbox(key="lab_mag").set_value(40)
    at.select_slider(key="lab_ratio").set_value(0.05)
    ok(at.run())
    assert any("leaves no benign training image" in e.value for e in at.error), [e.value for e in at.error]
    at.select_slider(key="lab_ratio").set_value(1.0)
    ok(at.run())
    assert metrics(at) and not at.error


def test_an_unreadable_run_checkpoint_is_refused_with_a_message(env, tiny_index):
    import json
    import time

    from dala.io import atomic_write_json
    from dala.models import create_model, save_checkpoint

    run = env["runs"] / "20260101-000000-tiny_cnn-broken"
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    atomic_write_json(run / "config.json", {"model": "tiny_cnn", "imbalance": "none", "split_mode": "patient"})
    atomic_write_json(run / "status.json", {"state": "finished", "created": time.time()})
    (run / "report.json").write_text(json.dumps({"test": {"accuracy": 0.5}}))
    ck = save_checkpoint(create_model("tiny_cnn", pretrained=False), run / "checkpoints" / "best",
                         class_names=["benign", "malignant"])
    (ck / "model.safetensors").write_bytes(b"not a safetensors file at all")
    at = lab_page()
    value = f"checkpoint:{run}"
    assert any("broken" in o for o in at.selectbox(key="lab_encoder").options)
    at.selectbox(key="lab_encoder").set_value(value)
    ok(at.run())
    assert any("encoder checkpoint" in e.value for e in at.error), [e.value for e in at.error]
    assert any("Pick another encoder" in i.value for i in at.info)
    at.selectbox(key="lab_encoder").set_value(TINY_ENCODER)
    ok(at.run())
    assert metrics(at) and not at.error
