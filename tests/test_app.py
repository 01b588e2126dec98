"""The Streamlit app, page by page, with ``streamlit.testing.v1.AppTest`` (no browser, no server).

Every page runs against a tiny generated dataset (``DALA_DATA_ROOT``) and a runs folder
(``DALA_RUNS``) holding run folders written here by hand to the run-folder contract
(docs/ARCHITECTURE.md): two finished runs that differ only by split mode (the leakage lesson),
with real tiny_cnn checkpoints, and a "running" run whose pid is this test process.
The browser tests (tests/test_browser.py) start real training runs.
"""

from __future__ import annotations

import io
import json
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
APP = str(REPO_ROOT / "app.py")
TIMEOUT = 120


# ----------------------------------------------------------------------------- run folders by hand
def write_run(runs_root: Path, name: str, index, *, split: str = "patient", state: str = "finished",
              pid: int | None = None, epochs: int = 3, checkpoint: bool = True, created: float | None = None,
              config: dict | None = None, quality: float = 0.6) -> Path:
    """A run folder as dala.train writes it: config, status, metrics.jsonl, val_tiles, report (with
    per-image test predictions), checkpoints/best (a real tiny_cnn checkpoint). ``config``: fields
    that differ from the default tiny_cnn run; ``quality``: how far the malignant probability
    follows the truth (0: chance-like, 1: perfect)."""
    from dala.io import atomic_write_json
    from dala.metrics import calibration_bins, classification_report, curve_points

    run = runs_root / name
    run.mkdir(parents=True)
    config = {"data_root": index.attrs["root"], "magnification": None, "split_mode": split, "imbalance": "none",
              "target_ratio": None, "model": "tiny_cnn", "model_options": {}, "pretrained": False, "mode": "full",
              "epochs": epochs, "batch_size": 16, "lr": 0.001, "seed": 0, "name": "", **(config or {})}
    atomic_write_json(run / "config.json", config)
    rng = np.random.default_rng(0 if split == "patient" else 1)
    lines = []
    for e in range(1, epochs + 1):
        for s in range(1, 5):
            lines.append({"kind": "step", "epoch": e, "step": (e - 1) * 4 + s, "loss": 0.7 - 0.05 * e})
        lines.append({"kind": "epoch", "epoch": e, "train_loss": 0.7 - 0.1 * e, "val_loss": 0.72 - 0.08 * e,
                      "train_accuracy": 0.5 + 0.1 * e, "val_accuracy": 0.5 + 0.08 * e, "val_gmean": 0.3 + 0.1 * e,
                      "val_balanced_accuracy": 0.5 + 0.07 * e, "images_per_s": 50.0, "best_epoch": e})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    tiles = index.groupby("label").head(2)
    atomic_write_json(run / "val_tiles.json", {
        "tiles": [{"image_id": r.image_id, "path": r.path, "label": r.label} for r in tiles.itertuples()],
        "epochs": [{"epoch": e, "probs": [[0.4, 0.6]] * len(tiles), "pred": [1] * len(tiles)} for e in range(1, epochs + 1)]})
    status = {"state": state, "phase": state, "epoch": epochs if state == "finished" else 1, "epochs": epochs,
              "step": 4, "pid": pid, "created": created or time.time(), "progress": 0.4, "eta_s": 12.0,
              "steps_per_epoch": 4, "error": None,
              "meta": {"model": "tiny_cnn", "weight_source": "random (pretrained=False)", "device": "cpu",
                       "data_source": "synthetic"}}
    atomic_write_json(run / "status.json", status)
    if state == "finished":
        test = index.sample(40, random_state=0) if len(index) > 40 else index
        y = test["target"].to_numpy()
        p1 = np.clip(y * quality + rng.uniform(0, 0.5, len(y)), 0, 1)
        probs = np.stack([1 - p1, p1], 1)
        rep = classification_report(y, probs, patients=test["patient"].to_numpy(),
                                    magnifications=test["magnification"].to_numpy())
        atomic_write_json(run / "report.json", {
            "config": config, "model": "tiny_cnn", "num_params": 415954, "trainable_params": 415954,
            "weight_source": "random (pretrained=False)", "device": "cpu", "data_source": "synthetic",
            "best_epoch": epochs, "train_images_per_s": 55.5, "total_time_s": 12.0, "test": rep,
            "curves": curve_points(y, probs), "calibration": calibration_bins(y, probs),
            "test_predictions": {"image_id": test["image_id"].tolist(), "probs": probs.round(5).tolist()}})
    if checkpoint:
        from dala.models import create_model, save_checkpoint

        save_checkpoint(create_model("tiny_cnn", pretrained=False), run / "checkpoints" / "best",
                        class_names=["benign", "malignant"], extra={"epoch": epochs})
    return run


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory, tiny_index) -> Path:
    root = tmp_path_factory.mktemp("runs")
    write_run(root, "20260101-000000-tiny_cnn-allX-patient", tiny_index, split="patient", created=1.0)
    write_run(root, "20260101-000100-tiny_cnn-allX-image", tiny_index, split="image", created=2.0)
    return root


@pytest.fixture
def env(monkeypatch, tiny_synth_root, runs_root):
    monkeypatch.setenv("DALA_DATA_ROOT", str(tiny_synth_root))
    monkeypatch.setenv("DALA_RUNS", str(runs_root))
    monkeypatch.setenv("DALA_OFFLINE", "1")
    return {"data": tiny_synth_root, "runs": runs_root}


def app(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    if page:
        at.switch_page(f"pages/{page}.py")
        at.run()
    return at


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [w.value for w in at.warning]
    parts += [i.value for i in at.info] + [e.value for e in at.error] + [m.value for m in at.title]
    parts += [s.value for s in at.subheader]
    for im in at.image:
        parts += [str(c) for c in (im.captions or []) if c]
    return "\n".join(str(p) for p in parts)


def metric(at: AppTest, label: str):
    for m in at.metric:
        if m.label == label:
            return m.value
    raise AssertionError(f"no metric {label!r}: {[m.label for m in at.metric]}")


# ----------------------------------------------------------------------------- app shell
def test_home_shows_the_dataset_summary_labelled_synthetic(env, tiny_index):
    at = ok(app())
    assert metric(at, "Images") == f"{len(tiny_index):,}"
    assert metric(at, "Patients") == str(tiny_index["patient"].nunique())
    assert "SYNTHETIC" in texts(at)
    side = "\n".join(c.value for c in at.sidebar.caption)
    assert "Compute device" in side and "cpu" in side
    # offline: the sidebar says models start from random weights
    assert any("random weights" in w.value for w in at.sidebar.warning)


def test_first_start_generates_the_synthetic_default(monkeypatch, tmp_path):
    """No dataset anywhere: the default is generated on first use (tiny parameters here)."""
    from dala.data import synth

    monkeypatch.delenv("DALA_DATA_ROOT", raising=False)
    monkeypatch.setenv("DALA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DALA_RUNS", str(tmp_path / "runs"))
    monkeypatch.setattr(synth, "DEFAULT_PARAMS", {**synth.DEFAULT_PARAMS, "n_patients": 10, "images_per_mag": 1,
                                                   "size": (64, 48)})
    calls = []
    real = synth.ensure_default_dataset

    def spy(*, progress=True, **kw):
        assert callable(progress)  # the app feeds st.progress, not tqdm
        calls.append(1)
        return real(progress=progress, **kw)

    monkeypatch.setattr(synth, "ensure_default_dataset", spy)
    at = ok(app())
    assert calls
    assert (tmp_path / "home" / "synthetic_breakhis" / "DONE").is_file()
    assert metric(at, "Images") == "40"
    assert at.sidebar.radio(key="data_source").value.startswith("Synthetic")


def test_a_missing_folder_is_an_error_not_a_crash(env, tmp_path):
    at = app()
    at.sidebar.text_input(key="data_folder").set_value(str(tmp_path / "nope")).run()
    ok(at)
    assert any("does not exist" in e.value for e in at.error)
    at.switch_page("pages/explore.py").run()
    ok(at)
    assert at.error


# ----------------------------------------------------------------------------- Explore
def test_explore_counts_browser_colour_splits_augmentation(env, tiny_index):
    at = ok(app("explore"))
    assert "SYNTHETIC" in texts(at)
    assert metric(at, "Leaking patients, patient-level split") == "0"
    leak = metric(at, "Leaking patients, image-level split")
    assert int(leak.split()[0]) > 0
    assert len(at.image) >= 8  # browser grid + augmentation views
    assert "SYNTHETIC · " in texts(at)  # every browsed image is labelled
    # filter the browser to one patient at one magnification
    pat = tiny_index["patient"].iloc[0]
    at.multiselect(key="f_pat").set_value([pat])
    at.multiselect(key="f_mag").set_value([40])
    at.run()
    ok(at)
    expected = int(((tiny_index["patient"] == pat) & (tiny_index["magnification"] == 40)).sum())
    assert f"**{expected}** images match" in texts(at)
    # another split
    at.slider(key="sp_test").set_value(0.4)
    at.selectbox(key="sp_mag").set_value(100)
    at.run()
    ok(at)
    assert metric(at, "Leaking patients, patient-level split") == "0"


# ----------------------------------------------------------------------------- Explain
def _png(mode="RGB", size=(80, 60), value=None) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    if mode == "I;16":
        im = Image.fromarray((np.arange(size[0] * size[1]).reshape(size[1], size[0]) * 7 % 65535).astype(np.uint16))
    else:
        im = Image.new(mode, size, value if value is not None else (180, 90, 160, 128)[:len(mode)] if mode in ("RGB", "RGBA") else 128)
    im.save(buf, format="PNG")
    return buf.getvalue()


def _png_header(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h pixels (a decompression-bomb shape, tiny on disk)."""
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def test_explain_a_trained_run_on_a_dataset_image(env):
    at = ok(app("explain"))
    assert at.radio(key="ex_src").value == "Trained run"
    at.radio(key="ex_imgsrc").set_value("From the dataset").run()
    ok(at)
    assert metric(at, "Prediction") in ("benign", "malignant")
    labels = [d.proto.label for d in at.get("download_button")]
    assert labels.count("Download PNG") == 2  # gradcam + dt-gradcam side by side
    t = texts(at)
    assert "random weights (not pretrained)" in t  # the checkpoint started from random weights: said so
    assert "threshold" in t  # DT Grad-CAM's per-image threshold is shown
    # opacity, target class, another DT rule, a third method
    at.slider(key="ex_alpha").set_value(0.8)
    at.selectbox(key="ex_target").set_value("benign")
    at.selectbox(key="ex_rule").set_value("percentile")
    at.multiselect(key="ex_methods").set_value(["gradcam", "eigencam", "dt-gradcam"])
    at.run()
    ok(at)
    assert [d.proto.label for d in at.get("download_button")].count("Download PNG") == 3
    assert "target benign" in t or "target benign" in texts(at)


def test_explain_uploads_good_and_bad(env, real_samples):
    at = ok(app("explain"))
    good = real_samples[0].read_bytes()
    uploads = [
        ("notes.png", b"this is not an image", "image/png"),
        ("truncated.png", good[: len(good) // 3], "image/png"),
        ("huge.png", _png_header(30000, 30000), "image/png"),
        ("rgba.png", _png("RGBA"), "image/png"),
        ("grey16.png", _png("I;16"), "image/png"),
        (real_samples[0].name, good, "image/png"),
    ]
    at.file_uploader(key="ex_upload").set_value(uploads)
    at.run(timeout=TIMEOUT)
    ok(at)
    errors = "\n".join(e.value for e in at.error)
    assert "notes.png is not an image" in errors
    assert "truncated.png is truncated" in errors
    assert "huge.png" in errors
    # four images per page; the page pages through all of them
    assert "Images 1-4 of 6" in texts(at)
    at.number_input(key="ex_page").set_value(2).run()
    ok(at)
    assert "Images 5-6 of 6" in texts(at)
    assert len([m for m in at.metric if m.label == "Prediction"]) == 2  # grey16.png and the real sample


def test_explain_upload_real_image_gives_prediction(env, real_samples):
    at = ok(app("explain"))
    at.file_uploader(key="ex_upload").set_value([(p.name, p.read_bytes(), "image/png") for p in real_samples[:2]])
    at.run(timeout=TIMEOUT)
    ok(at)
    preds = [m.value for m in at.metric if m.label == "Prediction"]
    assert len(preds) == 2 and set(preds) <= {"benign", "malignant"}


def test_explain_without_checkpoints_points_to_train_and_offers_untrained(monkeypatch, env, tmp_path):
    monkeypatch.setenv("DALA_RUNS", str(tmp_path / "empty_runs"))
    at = ok(app("explain"))
    assert at.radio(key="ex_src").value == "Trained run"  # first view: offer to train, not random maps
    assert any("No trained model yet" in i.value for i in at.info)
    assert at.button(key="ex_train_here")
    at.radio(key="ex_src").set_value("Untrained model").run()
    ok(at)
    assert any("explanation is meaningless" in w.value for w in at.warning)
    at.radio(key="ex_src").set_value("Checkpoint folder").run()
    at.text_input(key="ex_path").set_value(str(tmp_path / "missing")).run()
    ok(at)
    assert any("Cannot load that model" in e.value for e in at.error)


# ----------------------------------------------------------------------------- Train
def test_train_form_estimate_start_and_reattach(monkeypatch, env, tmp_path, tiny_index):
    runs = tmp_path / "runs"
    monkeypatch.setenv("DALA_RUNS", str(runs))
    at = ok(app("train"))
    assert any("No runs yet" in i.value for i in at.info)
    assert "Estimated time" in texts(at)
    started = []

    def fake_start(config, *, runs_root=None, **kw):  # the real one spawns a process: browser test
        config.validate()
        started.append(config)
        return write_run(Path(runs_root), "20260102-000000-tiny_cnn-40X-image", tiny_index, split=config.split_mode,
                         state="running", pid=os.getpid(), checkpoint=False)

    import dala.train

    monkeypatch.setattr(dala.train, "start_run", fake_start)
    at.selectbox(key="tr_mag").set_value(40)
    at.radio(key="tr_split").set_value("image")
    at.selectbox(key="tr_imb").set_value("class_weight")
    at.toggle(key="tr_use_ratio").set_value(True).run()  # the ratio slider is enabled by the toggle
    at.slider(key="tr_ratio").set_value(1.0)
    at.slider(key="tr_epochs").set_value(2)
    at.run()
    ok(at)
    at.button(key="tr_start").click().run()
    ok(at)
    assert not at.error, [e.value for e in at.error]
    (cfg,) = started
    assert (cfg.magnification, cfg.split_mode, cfg.imbalance, cfg.target_ratio, cfg.epochs) == (40, "image", "class_weight", 1.0, 2)
    assert cfg.model == "tiny_cnn" and cfg.pretrained is False
    assert "**running**" in texts(at)
    # Stop writes the control file the training process polls
    at.button(key="tr_stop").click().run()
    ok(at)
    control = json.loads((runs / "20260102-000000-tiny_cnn-40X-image" / "control.json").read_text())
    assert control["command"] == "stop"
    # a fresh session (page refresh) finds the running run again
    at2 = ok(app("train"))
    assert at2.selectbox(key="tr_watch").value.endswith("20260102-000000-tiny_cnn-40X-image")
    assert "**running**" in texts(at2)


def test_train_shows_a_finished_run_with_metrics_card(env):
    at = ok(app("train"))
    at.selectbox(key="tr_watch").set_value(str(env["runs"].resolve() / "20260101-000000-tiny_cnn-allX-patient")).run()
    ok(at)
    t = texts(at)
    assert "**finished**" in t and "Test metrics (measured, patient-level split" in t
    assert metric(at, "Accuracy") != "n/a"
    # readable names on the cards, whole (no "balanced a..." and no snake_case)
    labels = [m.label for m in at.metric]
    assert "Balanced accuracy" in labels and "F1 (macro)" in labels
    assert not any("_" in lab for lab in labels), labels
    assert "random weights (not pretrained)" in t
    assert "random (pretrained=False)" not in t  # said once, not twice
    assert "Validation tiles" in t


def test_train_shows_queue_position(monkeypatch, env, tmp_path, tiny_index):
    runs = tmp_path / "runs"
    monkeypatch.setenv("DALA_RUNS", str(runs))
    write_run(runs, "20260103-000000-a", tiny_index, state="queued", pid=os.getpid(), checkpoint=False, created=1.0)
    write_run(runs, "20260103-000100-b", tiny_index, state="queued", pid=os.getpid(), checkpoint=False, created=2.0)
    at = ok(app("train"))
    at.selectbox(key="tr_watch").set_value(str(runs.resolve() / "20260103-000100-b")).run()
    ok(at)
    assert any("position **2**" in i.value for i in at.info)


# ----------------------------------------------------------------------------- Compare
def test_compare_table_charts_leakage_and_csv(env):
    at = ok(app("compare"))
    assert len(at.multiselect(key="cmp_runs").value) == 2
    assert any("Leakage lesson" in w.value for w in at.warning)
    assert at.dataframe  # the metric table
    csv = [d for d in at.get("download_button") if d.proto.label == "Export CSV"]
    assert csv
    t = texts(at)
    assert "reported" in t and "measured" in t
    at.selectbox(key="cmp_curve").set_value("val_gmean").run()
    ok(at)


def test_compare_without_runs_points_to_train(monkeypatch, env, tmp_path):
    monkeypatch.setenv("DALA_RUNS", str(tmp_path / "none"))
    at = ok(app("compare"))
    assert any("No finished runs" in i.value for i in at.info)


# ----------------------------------------------------------------------------- dala.plots
def test_plot_helpers_are_pure_and_honest(tiny_index, runs_root):
    from dala import plots
    from dala.data.splits import make_split
    from dala.train import list_runs

    assert plots.synthetic_tag(tiny_index) == " (SYNTHETIC)"
    for fig in (plots.class_counts_figure(tiny_index), plots.subtype_counts_figure(tiny_index),
                plots.magnification_counts_figure(tiny_index), plots.patient_counts_figure(tiny_index)):
        assert "SYNTHETIC" in fig.layout.title.text
    split = make_split(tiny_index, by="image", seed=0)
    table = plots.split_table(split, tiny_index)
    assert table["images"].sum() == len(tiny_index)
    assert str(len(split.leaking_patients())) in plots.split_patients_figure(split, tiny_index).layout.title.text
    import torch

    x = (torch.rand(3, 8, 8) - 0.45) / 0.22
    img = plots.denormalize(x, (0.45,) * 3, (0.22,) * 3)
    assert img.shape == (8, 8, 3) and img.dtype == np.uint8
    runs = [{"name": r.name, "config": r.config, "report": r.report, "epochs": r.epochs} for r in list_runs(runs_root)]
    pairs = plots.leakage_pairs(runs)
    assert len(pairs) == 1 and pairs[0][0].endswith("patient") and pairs[0][1].endswith("image")
    fig = plots.reported_vs_measured_figure(runs)
    names = [t.name for t in fig.data]
    assert any("reported" in n for n in names) and sum("measured, " in n for n in names) == 2
    assert list(fig.data[0].y) == [plots.REPORTED_DALA_ACCURACY[m] for m in (40, 100, 200, 400)]


def test_hub_sources_fail_clearly_offline(monkeypatch, env):
    """Offline with nothing cached, the Hub dataset and Hub checkpoint fields give a clear error."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    at = app()
    at.sidebar.radio(key="data_source").set_value("Hugging Face Hub dataset").run()
    ok(at)
    at.sidebar.text_input(key="hub_dataset").set_value("someone/breakhis").run()
    ok(at)
    assert any("someone/breakhis" in e.value for e in at.sidebar.error)
    at.sidebar.radio(key="data_source").set_value("Local folder").run()
    at.switch_page("pages/explain.py").run()
    at.radio(key="ex_src").set_value("Hugging Face Hub").run()
    at.text_input(key="ex_hub").set_value("someone/dala-model").run()
    ok(at)
    assert any("someone/dala-model" in e.value for e in at.error)


def test_hosted_mode_refuses_server_folders_and_keeps_runs_per_visitor(monkeypatch, env):
    """DALA_HOSTED=1 (the Space): no server folders as data; each visitor sees only their runs."""
    monkeypatch.setenv("DALA_HOSTED", "1")
    at = app()
    assert any("does not read server folders" in e.value for e in at.sidebar.error)
    assert not at.query_params.get("visitor")  # the visitor's secret never rides in the URL (issue 15)
    from dala.identity import owner_id

    visitor = owner_id(at.session_state["_dala_token"])  # hosted folders are named by its hash
    at.switch_page("pages/compare.py").run()
    ok(at)
    assert any("No finished runs" in i.value for i in at.info)  # the shared runs are not this visitor's
    assert (env["runs"] / visitor).is_dir()


def test_compare_class_leaderboard_submit_and_hub_row_offline(monkeypatch, env):
    """The shared leaderboard takes a finished run; a Hub repo id offline gives a clear error."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    at = ok(app("compare"))
    assert any("No entries yet" in c.value for c in at.caption)
    at.text_input(key="lb_nick").set_value("team-a")
    at.button[[b.proto.label for b in at.button].index("Submit")].click().run()
    ok(at)
    from dala.hosting import read_leaderboard

    board = read_leaderboard()
    assert len(board) == 1 and board[0]["nickname"] == "team-a"
    assert len(at.dataframe) >= 2  # the metric table and the leaderboard
    at.text_input(key="cmp_hub").set_value("someone/dala-model").run()
    ok(at)
    assert any("someone/dala-model" in e.value for e in at.error)
