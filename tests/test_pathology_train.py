"""Issue 18 on the training side: calibration and the locked threshold written by a real run into
its best checkpoint and report, used by predict and explain; stain normalisation as a training
option, recorded with its fit and applied identically wherever the checkpoint is used."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dala.cli import main as cli
from dala.train import TrainConfig, run_training

OLD_CHECKPOINT = Path(__file__).parent / "data" / "tiny_cnn_checkpoint_v1"


def tiny(root, **kw) -> TrainConfig:
    base = dict(data_root=str(root), model="tiny_cnn", pretrained=False, image_size=64, epochs=2, batch_size=16,
                lr=3e-3, quick_views=2, log_every=1, n_tiles=2, mode="full")
    base.update(kw)
    return TrainConfig(**base)


def _images(root, n=3) -> list[str]:
    return sorted(str(p) for p in Path(root).rglob("SOB_*.png") if "masks" not in p.parts)[:n]


@pytest.fixture(scope="module")
def calibrated_run(tiny_synth_root, tmp_path_factory):
    run = tmp_path_factory.mktemp("cal") / "run"
    report = run_training(tiny(tiny_synth_root, select_metric="balanced_accuracy"), run, progress=False)
    return run, report


def test_a_run_writes_its_calibration_into_the_best_checkpoint_and_the_report(calibrated_run):
    run, report = calibrated_run
    ck = json.loads((run / "checkpoints" / "best" / "config.json").read_text())
    cal = ck["calibration"]
    assert cal["fitted"] is True and cal["selection_metric"] == "balanced_accuracy"
    assert 0.05 <= cal["temperature"] <= 20 and 0 <= cal["threshold"] <= 1 and cal["fitted_on"].startswith("val:")
    on_disk = json.loads((run / "report.json").read_text())
    assert on_disk["calibration"] == cal == report["calibration"]
    # the 0.5 metrics stay where they were; the locked-threshold ones sit beside them
    assert on_disk["test"]["threshold"] == 0.5
    at = on_disk["test_at_threshold"]
    assert at["threshold"] == pytest.approx(cal["threshold"]) and at["n"] == on_disk["test"]["n"]
    assert {"accuracy", "gmean", "balanced_accuracy", "confusion_matrix"} <= set(at)
    assert all(isinstance(on_disk[k], float) for k in ("ece_test_before", "ece_test_after"))
    vp, tp = on_disk["val_predictions"], on_disk["test_predictions"]
    assert set(vp) == set(tp) == {"image_id", "probs"} and len(vp["image_id"]) == len(vp["probs"]) > 0
    assert len(vp["probs"][0]) == 2
    assert on_disk["stain_norm"] == {"method": "none"}


def test_predict_applies_the_temperature_and_the_threshold(calibrated_run, tiny_synth_root, tmp_path, capsys):
    from dala.train.predict import calibrated_labels, load_for_inference, predict_images

    run, _ = calibrated_run
    best = run / "checkpoints" / "best"
    # a known temperature, so the change is certain: T = 2 flattens, the arg-max stays
    cfg = json.loads((best / "config.json").read_text())
    cfg["calibration"].update(temperature=2.0, threshold=0.5)
    (best / "config.json").write_text(json.dumps(cfg))
    model, loaded = load_for_inference(best)
    images = _images(tiny_synth_root, 4)
    raw = predict_images(model, loaded, images)
    shown, pred, cal = calibrated_labels(raw, loaded)
    assert cal.fitted and cal.temperature == 2.0
    assert not np.allclose(shown, raw) and (shown.argmax(1) == raw.argmax(1)).all()
    assert (np.abs(shown - 0.5) <= np.abs(raw - 0.5) + 1e-9).all()  # T > 1: less confident
    assert cli(["predict", "--checkpoint", str(best), *images]) == 0
    captured = capsys.readouterr()
    assert "temperature-scaled (T = 2.00" in captured.err
    rows = captured.out.strip().splitlines()
    assert rows[0] == "image,prediction,p_benign,p_malignant,calibration"
    first = rows[1].split(",")
    assert float(first[3]) == pytest.approx(shown[0, 1], abs=1e-4) and "temperature 2.000" in first[4]
    # explanation shows the same calibrated probabilities and label
    from dala.explain.api import explain_checkpoint

    expl = explain_checkpoint(best, images[:1])[0]
    assert expl.probs == pytest.approx(shown[0].tolist(), abs=1e-5) and expl.pred == int(pred[0])
    assert expl.raw_probs == pytest.approx(raw[0].tolist(), abs=1e-5) and "temperature-scaled" in expl.calibration


def test_a_locked_threshold_decides_the_label(calibrated_run):
    from dala.train.predict import calibrated_labels

    run, _ = calibrated_run
    cfg = {"calibration": {"temperature": 1.0, "threshold": 0.9, "fitted": True}}
    raw = np.array([[0.2, 0.8], [0.05, 0.95]])
    _, pred, _ = calibrated_labels(raw, cfg)
    assert pred.tolist() == [0, 1]  # 0.8 is malignant by arg-max, benign under the locked 0.9


def test_an_old_checkpoint_predicts_and_explains_uncalibrated(tiny_synth_root, capsys):
    from dala.explain.api import explain_checkpoint

    images = _images(tiny_synth_root, 2)
    assert cli(["predict", "--checkpoint", str(OLD_CHECKPOINT), *images]) == 0
    captured = capsys.readouterr()
    assert "uncalibrated" in captured.err
    assert all(line.endswith(",uncalibrated") for line in captured.out.strip().splitlines()[1:])
    expl = explain_checkpoint(OLD_CHECKPOINT, images[:1])[0]
    assert expl.calibration.startswith("uncalibrated") and expl.probs == expl.raw_probs


def test_a_run_without_a_usable_validation_part_records_why(tiny_synth_root, tmp_path):
    report = run_training(tiny(tiny_synth_root, val_fraction=0.0, epochs=1), tmp_path / "noval", progress=False)
    cal = report["calibration"]
    assert cal["fitted"] is False and "no validation part" in cal["reason"]
    ck = json.loads((tmp_path / "noval" / "checkpoints" / "best" / "config.json").read_text())
    assert ck["calibration"] == cal
    assert report["test_at_threshold"]["accuracy"] == report["test"]["accuracy"]  # identity: the same numbers
    assert report["val_predictions"] == {"image_id": [], "probs": []}


def test_one_class_validation_is_uncalibrated_with_the_reason():
    import pandas as pd

    from dala.train.evaluation import calibrate_on_validation

    frame = pd.DataFrame({"target": [1, 1, 1], "patient": ["a", "a", "b"]})
    cal = calibrate_on_validation(frame, np.array([[0.2, 0.8]] * 3), select_metric="mcc")
    assert not cal.fitted and "only one class" in cal.reason and "one class" in cal.label


# ----------------------------------------------------------------------------- stain normalisation
@pytest.fixture(scope="module")
def stain_run(tiny_synth_root, tmp_path_factory):
    run = tmp_path_factory.mktemp("stain") / "run"
    assert cli(["train", "--data", str(tiny_synth_root), "--model", "tiny_cnn", "--no-pretrained", "--image-size", "64",
                "--epochs", "1", "--mode", "quick", "--quick-views", "1", "--run-dir", str(run), "--no-progress",
                "--stain-norm", "reinhard"]) == 0
    return run


def test_stain_norm_is_recorded_in_run_config_checkpoint_and_report(stain_run):
    config = json.loads((stain_run / "config.json").read_text())
    assert config["stain_norm"] == "reinhard" and config["stain_reference"] is None
    for which in ("best", "last"):
        ck = json.loads((stain_run / "checkpoints" / which / "config.json").read_text())
        sn = ck["stain_norm"]
        assert sn["method"] == "reinhard" and Path(sn["reference"]).is_file()
        assert len(sn["fit"]["means"]) == 3 and len(sn["fit"]["stds"]) == 3
    report = json.loads((stain_run / "report.json").read_text())
    assert report["stain_norm"]["method"] == "reinhard" and report["stain_norm"]["default_reference"] is True
    assert report["stain_norm"]["images"] > 0 and report["stain_norm"]["fell_back"] >= 0


def test_a_stain_normalised_checkpoint_normalises_its_inputs_even_without_its_reference(stain_run, tiny_synth_root,
                                                                                        tmp_path):
    from dala.explain.api import explain_checkpoint
    from dala.train.predict import model_inputs

    copy = tmp_path / "ck"
    shutil.copytree(stain_run / "checkpoints" / "best", copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["stain_norm"]["reference"] = str(tmp_path / "gone.png")  # the reference file is not needed
    (copy / "config.json").write_text(json.dumps(cfg))
    image = _images(tiny_synth_root, 1)
    with_stain = model_inputs(cfg, image)
    without = model_inputs({k: v for k, v in cfg.items() if k != "stain_norm"}, image)
    assert not torch.allclose(with_stain, without, atol=1e-3)
    expl = explain_checkpoint(copy, image)[0]
    assert np.allclose(expl.model_input, with_stain[0].numpy(), atol=1e-5)  # explain gives the model the same input
    assert not np.allclose(expl.model_input, without[0].numpy(), atol=1e-3)


def test_stain_fit_round_trips_without_the_reference(tiny_synth_root):
    from dala.data.stain import StainNormalizer

    ref = _images(tiny_synth_root, 1)[0]
    rgb = np.asarray(Image.open(_images(tiny_synth_root, 3)[2]).convert("RGB"))
    for method in ("reinhard", "macenko"):
        fitted = StainNormalizer(method, reference=ref)
        again = StainNormalizer.from_config(json.loads(json.dumps(fitted.to_config())))
        a, note_a = fitted.normalize_rgb(rgb)
        b, note_b = again.normalize_rgb(rgb)
        assert note_a == note_b and np.array_equal(a, b)


def test_a_blank_stain_reference_is_one_line_on_the_cli(tiny_synth_root, tmp_path, capsys):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (128, 128), (245, 245, 245)).save(blank)
    code = cli(["train", "--data", str(tiny_synth_root), "--model", "tiny_cnn", "--no-pretrained", "--epochs", "1",
                "--run-dir", str(tmp_path / "r"), "--no-progress", "--stain-norm", "macenko",
                "--stain-reference", str(blank)])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "blank" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_resume_keeps_the_stain_setting(stain_run):
    from dala.errors import RunError
    from dala.train.config import RESUME_MAY_CHANGE, resume_config

    assert "stain_norm" not in RESUME_MAY_CHANGE and "stain_reference" not in RESUME_MAY_CHANGE
    existing = json.loads((stain_run / "config.json").read_text())
    assert resume_config(existing, {"epochs": 2}).stain_norm == "reinhard"
    with pytest.raises(RunError, match="stain_norm"):
        resume_config(existing, {"stain_norm": "macenko"})


def test_unknown_stain_norm_and_a_lone_reference_are_refused(tiny_synth_root):
    from dala.errors import RunError

    with pytest.raises(RunError, match="stain normalisation 'vahadane' is unknown"):
        tiny(tiny_synth_root, stain_norm="vahadane").validate()
    with pytest.raises(RunError, match="--stain-norm"):
        tiny(tiny_synth_root, stain_reference="x.png").validate()
