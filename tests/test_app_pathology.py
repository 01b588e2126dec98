"""Pathology's own tools on the pages (issue 18), as a class uses them (AppTest): Compare's
reliability diagram, ECE before/after temperature scaling, metrics at 0.5 and at the locked
threshold, and selective prediction; Explain's per-image uncertainty (TTA) and conformal set at a
chosen coverage; Explore's stain normalisation before/after with its failure case."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("streamlit")

from test_app import TIMEOUT, app, env, ok, runs_root, texts, write_run  # noqa: E402,F401 - fixtures


def _own_runs(monkeypatch, tmp_path) -> Path:
    runs = tmp_path / "runs"
    runs.mkdir()
    monkeypatch.setenv("DALA_RUNS", str(runs))
    return runs


def _calibrate_run(run: Path, tiny_index, *, with_val: bool = True) -> dict:
    """Give a hand-written run what a calibrated run carries: validation predictions, a
    temperature and threshold fitted on them (dala.calibration), in report.json and the
    checkpoint's config.json. The network is deliberately over-confident (probabilities pushed
    towards 0/1), so temperature scaling has something to fix."""
    from dala.calibration import calibrate
    from dala.io import atomic_write_json

    report = json.loads((run / "report.json").read_text())
    val = tiny_index.sample(min(len(tiny_index), 60), random_state=1)
    y = val["target"].to_numpy()
    rng = np.random.default_rng(3)
    p1 = np.where(rng.uniform(size=len(y)) < 0.7, y, 1 - y) * 0.96 + 0.02  # 70 % right, 98 % sure
    probs = np.stack([1 - p1, p1], 1)
    cal = calibrate(probs, y, fitted_on=f"val: {val['patient'].nunique()} patients, {len(y)} images")
    if with_val:
        report["val_predictions"] = {"image_id": val["image_id"].tolist(), "probs": probs.round(5).tolist()}
    report["calibration"] = cal.to_dict()
    atomic_write_json(run / "report.json", report)
    ck = run / "checkpoints" / "best" / "config.json"
    if ck.is_file():
        cfg = json.loads(ck.read_text())
        cfg["calibration"] = cal.to_dict()
        atomic_write_json(ck, cfg)
    return cal.to_dict()


# ----------------------------------------------------------------------------- Compare
def _calibration_tab(at):
    return next(t for t in at.tabs if t.label == "Calibration & referral")


def test_compare_shows_reliability_ece_and_the_locked_threshold_for_a_calibrated_run(monkeypatch, env, tmp_path,
                                                                                      tiny_index):
    runs = _own_runs(monkeypatch, tmp_path)
    calibrated = write_run(runs, "20260201-000000-tiny_cnn-allX-patient", tiny_index, checkpoint=False, quality=0.4)
    cal = _calibrate_run(calibrated, tiny_index)
    write_run(runs, "20260201-000100-tiny_cnn-40X-patient", tiny_index, checkpoint=False,
              config={"magnification": 40})  # an older run: bins under "calibration", no temperature
    at = ok(app("compare"))
    tab = _calibration_tab(at)
    t = "\n".join(m.value for m in tab.markdown) + "\n".join(c.value for c in tab.caption)
    assert f"temperature-scaled (T = {cal['temperature']:.2f}" in t
    assert "uncalibrated (older run" in t
    assert "test split, measured" in t.lower()
    ece = {m.label: m.value for m in tab.metric}
    assert "ECE before temperature scaling" in ece and "ECE after temperature scaling" in ece
    afters = [m.value for m in tab.metric if m.label == "ECE after temperature scaling"]
    assert any(v.startswith("n/a (uncalibrated") for v in afters) and any(v[0] == "0" for v in afters)
    assert "ECE after minus before: " in t and "paired bootstrap over" in t and "test patients" in t
    tables = [d.value for d in tab.dataframe if "at 0.5" in d.value.columns]
    assert len(tables) == 2
    locked = [c for tb in tables for c in tb.columns if c.startswith("at the locked threshold")]
    assert locked == [f"at the locked threshold {cal['threshold']:.2f}"]
    older = next(tb for tb in tables if "at a locked threshold" in tb.columns)
    assert set(older["at a locked threshold"]) == {"n/a (older run)"}  # never an invented threshold
    specs = [json.loads(c.proto.spec) for c in tab.get("plotly_chart")]
    rel = [s for s in specs if "Reliability" in s["layout"]["title"]["text"]]
    assert len(rel) == 2 and any(any("temperature-scaled" in (d.get("name") or "") for d in s["data"]) for s in rel)


def test_the_referral_slider_reports_the_accuracy_kept(monkeypatch, env, tmp_path, tiny_index):
    from dala.compare import accuracy_when_referring, referral_curve

    runs = _own_runs(monkeypatch, tmp_path)
    run = write_run(runs, "20260202-000000-tiny_cnn-allX-patient", tiny_index, checkpoint=False, quality=0.5)
    at = ok(app("compare"))
    report = json.loads((run / "report.json").read_text())
    curve = referral_curve(report, points=101)
    for pct in (0, 30):
        at.slider(key="cmp_refer").set_value(pct).run()
        ok(at)
        (table,) = [d.value for d in at.dataframe if "accuracy kept" in d.value.columns]
        want = accuracy_when_referring(curve, pct / 100)
        assert table.iloc[0]["images kept"] == want["n_kept"]
        assert table.iloc[0]["accuracy kept"] == pytest.approx(want["accuracy"], abs=1e-3)
        assert f"Referring {pct} % of the test images" in texts(at)
    assert want["n_kept"] < len(report["test_predictions"]["image_id"])
    # referring the least certain keeps the more certain: accuracy does not fall on this run
    assert table.iloc[0]["accuracy kept"] >= table.iloc[0]["accuracy, nothing referred"]


# ----------------------------------------------------------------------------- Explain
def _explain_dataset_image(at):
    at.multiselect(key="ex_methods").set_value(["gradcam"])
    at.radio(key="ex_imgsrc").set_value("From the dataset").run(timeout=TIMEOUT)
    return ok(at)


def _metrics(at) -> dict:
    return {m.label: m.value for m in at.metric}


def test_explain_shows_calibrated_probabilities_uncertainty_and_a_prediction_set(monkeypatch, env, tmp_path,
                                                                                 tiny_index):
    runs = _own_runs(monkeypatch, tmp_path)
    run = write_run(runs, "20260203-000000-tiny_cnn-allX-patient", tiny_index)
    cal = _calibrate_run(run, tiny_index)
    at = _explain_dataset_image(ok(app("explain")))
    t = texts(at)
    assert f"temperature-scaled (T = {cal['temperature']:.2f}" in t
    assert f"decided at the locked threshold {cal['threshold']:.2f}" in t
    shown = _metrics(at)
    assert shown["Uncertainty (TTA spread)"].startswith("± ")
    assert 0 <= float(shown["Uncertainty (TTA spread)"][2:]) <= 0.5
    assert shown["Prediction set (90% coverage)"] in {"{benign}", "{malignant}", "{benign, malignant}", "{}"}
    assert "calibrated on 60 validation images" in t
    # the confidence shown is the temperature-scaled probability, scaled once (not twice)
    from dala.calibration import Calibration, apply_temperature
    from dala.data.images import load_for_model
    from dala.explain import explain
    from dala.explain.api import load_for_explain

    model, kw = load_for_explain(run / "checkpoints" / "best")
    path = tiny_index.loc[tiny_index["label"] == "malignant", "path"].iloc[0]
    (ex,) = explain(model, [np.asarray(load_for_model(path))], method="gradcam", **kw)
    scaled = apply_temperature(np.asarray([ex.raw_probs]), Calibration.from_config({"calibration": cal}).temperature)[0]
    (pred,) = [m for m in at.metric if m.label == "Prediction"]
    assert pred.proto.delta == f"{scaled[ex.pred]:.1%} confidence"
    # a lower coverage level: the set can only shrink
    at.number_input(key="ex_coverage").set_value(0.5).run(timeout=TIMEOUT)
    ok(at)
    small = _metrics(at)["Prediction set (50% coverage)"]
    assert set(small.strip("{}").split(", ")) - {""} <= set(shown["Prediction set (90% coverage)"].strip("{}").split(", "))


@pytest.mark.parametrize("level", [1.5, 0.0])
def test_a_coverage_level_outside_0_1_shows_the_coverage_error(monkeypatch, env, tmp_path, tiny_index, level):
    runs = _own_runs(monkeypatch, tmp_path)
    _calibrate_run(write_run(runs, "20260204-000000-tiny_cnn-allX-patient", tiny_index), tiny_index)
    at = _explain_dataset_image(ok(app("explain")))
    at.number_input(key="ex_coverage").set_value(level).run(timeout=TIMEOUT)
    ok(at)
    errors = [e.value for e in at.error]
    assert any("outside (0, 1)" in e and "0.9" in e for e in errors), errors
    assert not any(k.startswith("Prediction set") for k in _metrics(at))
    assert _metrics(at)["Prediction"]  # the rest of the page still works


def test_an_older_run_says_uncalibrated_and_that_sets_need_validation_predictions(env):
    at = _explain_dataset_image(ok(app("explain")))
    t = texts(at)
    assert "uncalibrated (older run" in t
    assert "Prediction sets need a run with validation predictions" in t
    assert "Uncertainty (TTA spread)" in _metrics(at)
    assert not any(k.startswith("Prediction set") for k in _metrics(at))


# ----------------------------------------------------------------------------- Explore
def _stain_tab(at):
    return next(t for t in at.tabs if t.label == "Stain normalisation")


@pytest.mark.parametrize("method", ["reinhard", "macenko"])
def test_explore_stain_normalisation_before_after_with_the_failure_cases_detected(env, tiny_index, method):
    at = ok(app("explore"))
    at.radio(key="stain_method").set_value(method).run(timeout=TIMEOUT)
    ok(at)
    first_benign = tiny_index.loc[tiny_index["label"] == "benign", "image_id"].iloc[0]
    assert at.selectbox(key="stain_ref").value == first_benign  # the default reference
    tab = _stain_tab(at)
    captions = [str(c) for im in tab.image for c in (im.captions or []) if c]
    assert f"reference: {first_benign} (SYNTHETIC)" in captions
    assert sum(c == f"after ({method})" for c in captions) == 4
    failed = [c for c in captions if c.startswith("not normalised")]
    assert len(failed) == 2 and any("mostly background" in c for c in failed) and any("greyscale" in c for c in failed)
    assert all("shown un-normalised" in c for c in failed)
    (warn,) = [w.value for w in tab.warning]
    assert "nearly white crop (generated): mostly background" in warn
    assert "4 of 6 images normalised" in "\n".join(c.value for c in tab.caption)


def test_the_failure_cases_are_kept_as_they_were_never_black(tiny_index):
    """What the tab shows for a failure: the input itself, not a black or NaN image (the same
    nearly white crop the page generates)."""
    import torch

    from dala.data.images import load_rgb
    from dala.data.stain import StainNormalizer

    ref = tiny_index.loc[tiny_index["label"] == "benign", "path"].iloc[0]
    a = np.asarray(load_rgb(ref), dtype=np.float32)
    white = (0.06 * a + 0.94 * 255).round().astype(np.uint8)
    batch = StainNormalizer("macenko", reference=ref)([white])
    assert batch.normalised == [False]
    out = batch.images[0].permute(1, 2, 0).numpy()
    assert np.array_equal(out, white) and out.mean() > 200
    assert torch.isfinite(batch.images.float()).all()


def test_calibration_summary_of_an_over_confident_run_and_of_an_older_one(tiny_index):
    """dala.compare behind the Compare tab: temperature scaling fitted on validation lowers the test
    ECE of an over-confident network, the change carries its interval; an older report (reliability
    bins under "calibration", no temperature) is uncalibrated, with no locked threshold invented."""
    from dala.calibration import calibrate
    from dala.compare import calibration_summary, run_calibration
    from dala.metrics import calibration_bins

    rng = np.random.default_rng(0)

    def preds(frame):
        y = frame["target"].to_numpy()
        p1 = np.where(rng.uniform(size=len(y)) < 0.75, y, 1 - y) * 0.98 + 0.01  # 75 % right, 99 % sure
        return {"image_id": frame["image_id"].tolist(), "probs": np.stack([1 - p1, p1], 1).tolist()}, y

    val, test = tiny_index.iloc[::2], tiny_index.iloc[1::2]
    vp, vy = preds(val)
    tp, ty = preds(test)
    cal = calibrate(np.asarray(vp["probs"]), vy)
    report = {"test_predictions": tp, "val_predictions": vp, "calibration": cal.to_dict()}
    sm = calibration_summary(report)
    assert sm["fitted"] and sm["ece_after"] < sm["ece_before"]
    ch = sm["ece_change"]
    assert ch["difference"] == pytest.approx(sm["ece_after"] - sm["ece_before"], abs=1e-9)
    assert ch["lo"] <= ch["difference"] <= ch["hi"] and ch["n_patients"] == test["patient"].nunique()
    assert sm["at_threshold"]["accuracy"] is not None and sm["threshold"] == cal.threshold
    older = {"test_predictions": tp, "calibration": calibration_bins(ty, np.asarray(tp["probs"]))}
    assert run_calibration(older) is None
    old = calibration_summary(older)
    assert not old["fitted"] and old["label"].startswith("uncalibrated (older run")
    assert old["at_threshold"] is None and old["bins_after"] is None and old["ece_change"] is None
    assert calibration_summary({"test": {"accuracy": 0.5}}) is None  # no per-image predictions: nothing measured


def test_a_blank_reference_image_gets_a_clear_message_not_a_crash(monkeypatch, env, tmp_path):
    """The reference a class picks can be a useless field (here the default, the first benign
    image, overwritten blank): the tab says why and what to choose, and the page keeps working."""
    from PIL import Image

    from dala.data.index import load_index
    from dala.data.synth import generate

    root = generate(tmp_path / "data", seed=1, n_patients=4, images_per_mag=1, size=(96, 64), progress=False)
    first_benign = load_index(root).query("label == 'benign'").iloc[0]
    Image.new("RGB", (96, 64), (250, 250, 250)).save(first_benign["path"])
    monkeypatch.setenv("DALA_DATA_ROOT", str(root))
    at = ok(app("explore"))
    tab = _stain_tab(at)
    errors = " ".join(e.value for e in tab.error)
    assert "blank background" in errors and "choose a typical, well-stained H&E field" in errors, errors
    at.radio(key="stain_method").set_value("macenko").run(timeout=TIMEOUT)
    ok(at)
    assert at.selectbox(key="stain_ref").value == first_benign["image_id"]


def test_explore_measures_the_colour_leak_with_and_without_normalisation(env, tiny_index):
    """The Stain tab's "leak in colour alone": the button runs dala.data.stain_lesson (bounded: up
    to 4 images per patient by default), draws the grouped bars (image-level vs patient-level per
    method) and says what it measured; the result stays on screen across reruns (a cache hit
    replays, no exception)."""
    at = ok(app("explore"))
    tab = _stain_tab(at)
    assert not [c for c in tab.get("plotly_chart") if "Colour-only 1-NN" in c.proto.spec]  # nothing until asked
    assert at.radio(key="stain_leak_n").value == 4
    at.button(key="stain_leak_go").click().run(timeout=TIMEOUT)
    ok(at)

    def leak_chart(at):
        tab = _stain_tab(at)
        specs = [json.loads(c.proto.spec) for c in tab.get("plotly_chart")]
        (spec,) = [s for s in specs if "Colour-only 1-NN" in s["layout"]["title"]["text"]]
        return tab, spec

    tab, spec = leak_chart(at)
    assert "(SYNTHETIC)" in spec["layout"]["title"]["text"]
    bars = {d["name"]: d for d in spec["data"] if d.get("type") == "bar"}
    assert set(bars) == {"image-level split (leaks patients)", "patient-level split"}
    for d in bars.values():
        assert list(d["x"]) == ["no normalisation", "Reinhard", "Macenko"]
        assert all(0 <= v <= 1 for v in d["y"])
    t = "\n".join(m.value for m in tab.markdown) + "\n".join(c.value for c in tab.caption)
    n = len(tiny_index.groupby("patient").head(4))
    assert "SYNTHETIC data, where every patient has its own stain signature" in t
    assert f"Measured on {n} of {len(tiny_index)} images (up to 4 per patient, {tiny_index['patient'].nunique()} patients" in t
    assert "bootstrap intervals over test patients" in t
    # another widget elsewhere in the tab: the measurement stays, replayed from the cache
    at.radio(key="stain_method").set_value("macenko").run(timeout=TIMEOUT)
    ok(at)
    leak_chart(at)
    assert not [e.value for e in _stain_tab(at).error]


def test_the_colour_leak_on_a_dataset_with_one_benign_patient_says_what_to_add(monkeypatch, env, tmp_path):
    """A patient-level split needs a patient of each class on each side: the button gives the
    DataError's message (how many patients, what to add), not a crash, and no chart."""
    import shutil

    from dala.data.index import load_index
    from dala.data.synth import generate

    root = generate(tmp_path / "data", seed=1, n_patients=4, images_per_mag=1, size=(96, 64), progress=False)
    benign = load_index(root).query("label == 'benign'")
    shutil.rmtree(Path(benign["path"].iloc[-1]).parents[1])  # the last benign patient's slide folder
    monkeypatch.setenv("DALA_DATA_ROOT", str(root))
    at = ok(app("explore"))
    at.button(key="stain_leak_go").click().run(timeout=TIMEOUT)
    ok(at)
    tab = _stain_tab(at)
    errors = " ".join(e.value for e in tab.error)
    assert "The colour-leak lesson: " in errors and "at least 2 patients of each class" in errors
    assert "1 benign patient(s)" in errors, errors
    assert not [c for c in tab.get("plotly_chart") if "Colour-only 1-NN" in c.proto.spec]
