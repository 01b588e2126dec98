"""The Explain page as a class uses it (AppTest): hosted checkpoint paths, paging through uploads,
the upload cap, NaN outputs, what the model was trained on, the out-of-distribution warning, the
true label from a BreakHis file name, the first view (best run, or train one here), the colour key."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("streamlit")

from test_app import TIMEOUT, app, env, ok, runs_root, texts, write_run  # noqa: E402,F401 - fixtures


def _own_runs(monkeypatch, tmp_path) -> Path:
    runs = tmp_path / "runs"
    runs.mkdir()
    monkeypatch.setenv("DALA_RUNS", str(runs))
    return runs


def _predictions(at) -> list[str]:
    return [m.value for m in at.metric if m.label == "Prediction"]


def test_hosted_checkpoint_folder_is_refused_with_one_message(monkeypatch, env, tmp_path):
    monkeypatch.setenv("DALA_HOSTED", "1")
    other = next(p for p in env["runs"].iterdir() if p.is_dir())  # another visitor's run, which exists
    messages = []
    for path in (str(other), str(tmp_path / "does-not-exist")):
        at = ok(app("explain"))
        at.radio(key="ex_src").set_value("Checkpoint folder").run()
        at.text_input(key="ex_path").set_value(path).run()
        ok(at)
        errs = [e.value for e in at.main.error if "server folders" in e.value]
        assert len(errs) == 1 and path not in errs[0] and Path(path).name not in errs[0]
        messages.append(errs[0])
        assert not _predictions(at)
    assert messages[0] == messages[1]  # nothing tells an existing path from a missing one


def test_all_fourteen_uploads_are_paged_through(env, real_samples):
    at = ok(app("explain"))
    at.multiselect(key="ex_methods").set_value(["gradcam"])
    at.file_uploader(key="ex_upload").set_value([(p.name, p.read_bytes(), "image/png") for p in real_samples])
    at.run(timeout=TIMEOUT)
    ok(at)
    n = len(real_samples)
    assert f"Images 1-4 of {n}" in texts(at) and len(_predictions(at)) == 4
    last = -(-n // 4)
    at.number_input(key="ex_page").set_value(last).run(timeout=TIMEOUT)
    ok(at)
    assert f"of {n}" in texts(at) and len(_predictions(at)) == n - 4 * (last - 1)
    assert "Showing the first" not in texts(at)


def test_the_upload_cap_is_stated_where_a_refused_file_leaves_only_a_red_mark(env):
    at = ok(app("explain"))
    t = texts(at)
    assert "over 20 MB is refused" in t and "red mark" in t
    assert any("Files over 20 MB are refused" in i.value for i in at.info)


def test_real_upload_on_a_synthetic_model_says_trained_on_flags_ood_and_shows_the_true_label(env, real_samples):
    at = ok(app("explain"))
    at.multiselect(key="ex_methods").set_value(["gradcam"])
    sample = real_samples[0]  # SOB_B_A-...: benign
    at.file_uploader(key="ex_upload").set_value([(sample.name, sample.read_bytes(), "image/png")])
    at.run(timeout=TIMEOUT)
    ok(at)
    t = texts(at)
    assert "model trained on SYNTHETIC data" in t
    assert "true label: **benign** (from the BreakHis file name)" in t
    assert ":green[right]" in t or ":red[wrong]" in t
    assert any("Out of distribution" in w.value for w in at.warning)


def test_a_dataset_image_like_the_training_data_is_not_flagged(env):
    at = ok(app("explain"))
    at.multiselect(key="ex_methods").set_value(["gradcam"])
    at.radio(key="ex_imgsrc").set_value("From the dataset").run()
    ok(at)
    assert _predictions(at)
    assert not any("Out of distribution" in w.value for w in at.warning)
    assert "model trained on SYNTHETIC data" in texts(at)


@pytest.mark.parametrize("fill", [float("nan"), 1e30])  # damaged weights; finite weights that overflow
def test_nan_or_inf_outputs_are_flagged_never_shown_as_a_class(monkeypatch, env, tmp_path, tiny_index, real_samples,
                                                               fill):
    import torch

    from dala.models import create_model, save_checkpoint

    runs = _own_runs(monkeypatch, tmp_path)
    run = write_run(runs, "20260108-000000-tiny_cnn-allX-patient", tiny_index, checkpoint=False)
    model = create_model("tiny_cnn", pretrained=False)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(fill)
    save_checkpoint(model, run / "checkpoints" / "best", class_names=["benign", "malignant"], extra={"epoch": 3})
    at = ok(app("explain"))
    at.multiselect(key="ex_methods").set_value(["gradcam"])
    at.file_uploader(key="ex_upload").set_value([(real_samples[0].name, real_samples[0].read_bytes(), "image/png")])
    at.run(timeout=TIMEOUT)
    ok(at)
    assert set(_predictions(at)) <= {"none (invalid output)"}
    errors = " ".join(e.value for e in at.error)
    assert "not a number" in errors or "diverged" in errors, errors


def test_first_view_opens_on_the_best_finished_run(monkeypatch, env, tmp_path, tiny_index):
    runs = _own_runs(monkeypatch, tmp_path)
    best = write_run(runs, "20260109-000000-tiny_cnn-allX-patient", tiny_index, quality=1.0)  # older, better
    write_run(runs, "20260109-000100-tiny_cnn-40X-patient", tiny_index, quality=0.0, config={"magnification": 40})
    at = ok(app("explain"))
    assert at.radio(key="ex_src").value == "Trained run"
    assert at.selectbox(key="ex_run").value == str(best.resolve())


def test_no_run_yet_trains_the_recommended_small_model_here(monkeypatch, env, tmp_path, tiny_index):
    runs = _own_runs(monkeypatch, tmp_path)
    import dala.train

    started = []

    def fake_start(config, *, runs_root=None, **kw):  # the real one spawns a training process
        config.validate()
        started.append(config)
        return write_run(Path(runs_root), "20260110-000000-tiny_cnn-allX-patient", tiny_index)

    monkeypatch.setattr(dala.train, "start_run", fake_start)
    at = ok(app("explain"))
    at.button(key="ex_train_here").click().run(timeout=TIMEOUT)
    ok(at)
    (cfg,) = started
    assert cfg.model == "tiny_cnn"
    assert at.selectbox(key="ex_run").value.endswith("20260110-000000-tiny_cnn-allX-patient")


def test_the_maps_carry_a_colour_scale(env):
    at = ok(app("explain"))
    at.multiselect(key="ex_methods").set_value(["gradcam"])
    at.radio(key="ex_imgsrc").set_value("From the dataset").run()
    ok(at)
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert any("Map colour scale" in (s.get("layout", {}).get("title", {}).get("text") or "") for s in specs)


def test_faithfulness_scores_are_shown_for_the_shown_image(env):
    at = ok(app("explain"))
    at.multiselect(key="ex_methods").set_value(["gradcam"])
    at.radio(key="ex_imgsrc").set_value("From the dataset").run()
    at.toggle(key="ex_faith").set_value(True).run(timeout=TIMEOUT)
    ok(at)
    tables = [d.value for d in at.dataframe if "deletion AUC (lower better)" in d.value.columns]
    assert tables and list(tables[0]["method"]) == ["gradcam"]
    row = tables[0].iloc[0]
    assert 0 <= row["deletion AUC (lower better)"] <= 1 and 0 <= row["insertion AUC (higher better)"] <= 1


def test_an_upload_larger_than_the_side_cap_says_it_was_shrunk(monkeypatch, env, real_samples):
    """Maps are drawn on the bounded frame, not the original: the page says so, with both sizes."""
    monkeypatch.setenv("DALA_MAX_IMAGE_SIDE", "350")
    at = ok(app("explain"))
    at.multiselect(key="ex_methods").set_value(["gradcam"])
    sample = real_samples[0]  # 700x460
    at.file_uploader(key="ex_upload").set_value([(sample.name, sample.read_bytes(), "image/png")])
    at.run(timeout=TIMEOUT)
    ok(at)
    assert "shown and explained at 350x230 px, shrunk from 700x460" in texts(at)
    monkeypatch.setenv("DALA_MAX_IMAGE_SIDE", "1024")
    at.run(timeout=TIMEOUT)
    assert "shrunk from" not in texts(at)
