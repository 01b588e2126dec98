"""The training engine: one loop, run folders, control, resume, DDP, the imbalance lab."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dala.cli import main as cli
from dala.errors import RunError
from dala.io import read_jsonl
from dala.train import TrainConfig, read_run, run_training, send_control, start_run, wait_for
from dala.train.imbalance import FocalLoss, class_weights, oversample_indices, subsample_to_ratio

REPO = Path(__file__).resolve().parents[1]


def tiny_config(root, **kw) -> TrainConfig:
    base = dict(data_root=str(root), model="tiny_cnn", pretrained=False, image_size=48, epochs=3, batch_size=16,
                lr=3e-3, quick_views=2, log_every=1, n_tiles=4)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("mode", ["quick", "full"])
def test_tiny_run_learns_and_writes_every_file(tiny_synth_root, tmp_path, mode):
    run = tmp_path / "run"
    report = run_training(tiny_config(tiny_synth_root, mode=mode, epochs=4), run, progress=False)
    for name in ("config.json", "split.json", "metrics.jsonl", "status.json", "val_tiles.json", "report.json",
                 "checkpoints/best/model.safetensors", "checkpoints/best/config.json",
                 "checkpoints/last/model.safetensors", "checkpoints/last/optimizer.safetensors",
                 "checkpoints/last/trainer_state.json"):
        assert (run / name).exists(), name
    records = read_jsonl(run / "metrics.jsonl")
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]  # it learns
    assert {"val_loss", "val_accuracy", "val_gmean", "val_balanced_accuracy"} <= set(epochs[0])
    assert any(r["kind"] == "step" for r in records)
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished"
    assert report["test"]["n"] > 0 and "confusion_matrix" in report["test"]
    assert report["split"]["by"] == "patient" and report["split"]["leaking_patients"] == 0
    assert report["weight_source"].startswith("random")
    tiles = json.loads((run / "val_tiles.json").read_text())
    assert len(tiles["tiles"]) == 4 and len(tiles["epochs"]) == 4
    view = read_run(run)
    assert view.state == "finished" and view.has_checkpoint and len(view.epochs) == 4


def test_imbalance_strategies_and_ratio_recorded(tiny_synth_root, tmp_path):
    for strategy in ("class_weight", "sampler", "focal", "oversample"):
        cfg = tiny_config(tiny_synth_root, imbalance=strategy, epochs=1, target_ratio=1.0)
        report = run_training(cfg, tmp_path / strategy, progress=False)
        assert report["config"]["imbalance"] == strategy and report["config"]["target_ratio"] == 1.0
        counts = report["train_class_counts"]
        assert counts["benign"] == counts["malignant"]  # the ratio slider subsampled to 1:1


def test_imbalance_pieces():
    frame = pd.DataFrame({"target": [0] * 10 + [1] * 30})
    assert (subsample_to_ratio(frame, 0.5)["target"].value_counts().to_dict()) == {1: 20, 0: 10}
    assert (subsample_to_ratio(frame, 0.1)["target"].value_counts().to_dict()) == {1: 30, 0: 3}
    w = class_weights(frame["target"])
    assert w[0] == pytest.approx(40 / (2 * 10)) and w[1] == pytest.approx(40 / (2 * 30))
    idx = oversample_indices(frame["target"].to_numpy())
    assert np.bincount(frame["target"].to_numpy()[idx]).tolist() == [30, 30]
    logits = torch.tensor([[4.0, -4.0], [0.0, 0.0]])
    y = torch.tensor([0, 0])
    focal, ce = FocalLoss(gamma=2.0)(logits, y), torch.nn.functional.cross_entropy(logits, y)
    assert focal < ce  # easy examples are down-weighted
    assert FocalLoss(gamma=0.0)(logits, y) == pytest.approx(float(ce))


def test_config_validation_messages(tiny_synth_root):
    with pytest.raises(RunError, match="imbalance strategy"):
        tiny_config(tiny_synth_root, imbalance="magic").validate()
    with pytest.raises(RunError, match="registry"):
        tiny_config(tiny_synth_root, model="resnet9000").validate()
    with pytest.raises(RunError, match="unknown training option"):
        TrainConfig.from_dict({"epochz": 3})
    cfg = tiny_config(tiny_synth_root)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def _wait(pred, timeout=120, poll=0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(poll)
    raise TimeoutError("condition not met in time")


def test_background_run_pause_resume_stop(tiny_synth_root, tmp_path):
    cfg = tiny_config(tiny_synth_root, epochs=200, mode="quick")
    run = start_run(cfg, runs_root=tmp_path / "runs")
    _wait(lambda: read_run(run).status.get("step", 0) >= 3)
    send_control(run, "pause")
    _wait(lambda: read_run(run).state == "paused", timeout=30)
    step = read_run(run).status["step"]
    time.sleep(1.0)
    assert read_run(run).status["step"] == step  # really paused
    send_control(run, "resume")
    _wait(lambda: read_run(run).status.get("step", 0) > step, timeout=30)
    send_control(run, "stop")
    view = wait_for(run, timeout=30)
    assert view.state == "stopped"
    assert view.status["epoch"] < 200


def test_sigkill_then_resume(tiny_synth_root, tmp_path):
    cfg = tiny_config(tiny_synth_root, epochs=60)
    run = start_run(cfg, runs_root=tmp_path / "runs")
    _wait(lambda: (run / "checkpoints" / "last" / "trainer_state.json").exists() and read_run(run).status.get("epoch", 0) >= 2)
    os.killpg(read_run(run).status["pid"], signal.SIGKILL)
    _wait(lambda: read_run(run).state == "failed", timeout=30)
    assert "resume" in read_run(run).status["error"]
    done = json.loads((run / "checkpoints" / "last" / "trainer_state.json").read_text())["epoch"]
    # resume in the foreground through the CLI, for only a few more epochs
    cfg_path = run / "config.json"
    d = json.loads(cfg_path.read_text())
    d["epochs"] = done + 2
    cfg_path.write_text(json.dumps(d))
    assert cli(["train", "--resume", "--run-dir", str(run), "--no-progress"]) == 0
    epochs = [r["epoch"] for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "epoch"]
    assert epochs == list(range(1, done + 3))  # nothing repeated, nothing lost
    assert read_run(run).state == "finished"


def test_queue_runs_one_at_a_time(tiny_synth_root, tmp_path):
    root = tmp_path / "runs"
    first = start_run(tiny_config(tiny_synth_root, epochs=200), runs_root=root)
    _wait(lambda: read_run(first).state == "running")
    second = start_run(tiny_config(tiny_synth_root, epochs=1), runs_root=root)
    _wait(lambda: read_run(second).state == "queued")
    time.sleep(1.0)
    view = read_run(second)
    assert view.state == "queued" and view.queue_position == 1
    send_control(first, "stop")
    assert wait_for(second, timeout=120).state == "finished"


def test_ddp_two_processes_gloo(tiny_synth_root, tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "dala", "train",
           "--data", str(tiny_synth_root), "--model", "tiny_cnn", "--no-pretrained", "--image-size", "48", "--epochs", "2",
           "--batch-size", "8", "--quick-views", "2", "--device", "cpu", "--run-dir", str(run), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((run / "report.json").read_text())
    assert report["world_size"] == 2
    epochs = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2]  # rank 0 alone wrote: no duplicate records
    assert (run / "checkpoints" / "best" / "model.safetensors").exists()


def test_cli_train_evaluate_predict(tiny_synth_root, tmp_path, capsys):
    run = tmp_path / "cli-run"
    assert cli(["train", "--data", str(tiny_synth_root), "--model", "tiny_cnn", "--no-pretrained", "--image-size", "48",
                "--epochs", "1", "--run-dir", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "test (patient-level split" in out and "GMean" in out
    assert cli(["evaluate", "--run", str(run), "--out", str(tmp_path / "eval.json")]) == 0
    assert "balanced acc" in capsys.readouterr().out
    rep = json.loads((tmp_path / "eval.json").read_text())
    assert rep["n"] == json.loads((run / "report.json").read_text())["test"]["n"]
    images = sorted(str(p) for p in Path(tiny_synth_root).rglob("SOB_*.png") if "masks" not in p.parts)[:3]
    assert cli(["predict", "--run", str(run), *images]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("image,prediction,p_benign,p_malignant") and len(lines) == 4
    with pytest.raises(SystemExit) as exit_info:  # argparse names the valid choices
        cli(["train", "--data", str(tiny_synth_root), "--imbalance", "magic"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err
    assert cli(["predict", "--run", str(tmp_path / "nothing"), images[0]]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_run_that_dies_while_queued_is_reported(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "status.json").write_text(json.dumps({"state": "queued", "pid": 2 ** 22 + 12345}))
    view = read_run(run)
    assert view.state == "failed" and "resume" in view.status["error"]


def test_checkpoint_records_the_trained_input_size(tiny_synth_root, tmp_path):
    from dala.models.checkpoint import load_checkpoint

    run_training(tiny_config(tiny_synth_root, image_size=40, epochs=1), tmp_path / "run", progress=False)
    model, cfg = load_checkpoint(tmp_path / "run" / "checkpoints" / "best")
    assert cfg["input_size"] == 40 and model.dala_config["input_size"] == 40


@pytest.mark.parametrize("model_name", ["tiny_cnn", "resnet50"])
def test_quick_mode_saves_a_top_normalised_by_its_own_weights(tiny_synth_root, tmp_path, model_name):
    """The top trains with batch statistics; before each validation and checkpoint its running
    statistics are recomputed exactly over the cached training features. A top whose statistics
    were calibrated once and frozen (an earlier choice) fails this: its weights moved after. The
    run is stopped after one epoch and resumed: a resumed run must cache its features from the
    saved stem (it once cached them from a fresh, uncalibrated one)."""
    from dala.models import get_spec
    from dala.models.checkpoint import load_checkpoint
    from dala.train import engine

    cfg = tiny_config(tiny_synth_root, model=model_name, mode="quick", quick_views=1, epochs=1, lr=1e-2)
    run_training(cfg, tmp_path / "run", progress=False)
    cfg = cfg.replace(epochs=2)
    run_training(cfg, tmp_path / "run", progress=False, resume=True)
    assert [r["epoch"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "epoch"] == [1, 2]
    model, _ = load_checkpoint(tmp_path / "run" / "checkpoints" / "last")
    stem, top = get_spec(cfg.model).split(model)
    spec = get_spec(cfg.model)
    if model_name == "resnet50":  # random weights: the frozen stem was prepared (dala.models.init)
        from dala.models.init import _residual_last_bns

        assert all(not bn.weight.detach().any() for bn in _residual_last_bns(stem))
    device = torch.device("cpu")
    dtype = engine.select_precision(cfg.precision, device)
    train = engine.prepare_data(cfg, progress=False).train
    feats = engine.extract_features(stem.eval(), train, size=cfg.image_size, mean=spec.mean, std=spec.std, views=[0],
                                    device=device, dtype=dtype, batch_size=cfg.batch_size, channels_last=True)
    saved = [(bn.running_mean.clone(), bn.running_var.clone()) for bn in engine.batchnorm_layers(top)]
    # recompute in place (a Stage is a view of the model: a deepcopy would still run the original)
    n = engine.calibrate_batchnorm(top, (feats[i:i + cfg.batch_size, 0] for i in range(0, len(feats), cfg.batch_size)),
                                   device=device, dtype=dtype)
    assert n == len(saved) > 0
    for (mean, var), bn in zip(saved, engine.batchnorm_layers(top)):
        torch.testing.assert_close(mean, bn.running_mean, rtol=0.05, atol=1e-3)  # bf16 rounding; stale statistics differ by ~1
        torch.testing.assert_close(var, bn.running_var, rtol=0.05, atol=1e-3)  # bf16 rounding; stale statistics differ by ~1


def test_resumed_optimizer_state_keeps_the_parameters_memory_layout(tmp_path):
    """Saved moments are contiguous (safetensors); a channels_last parameter gets them back in its
    own layout. Found on an H200: CUDA's fused AdamW refused the first resumed step otherwise."""
    from dala.train.engine import load_training_state, save_training_state

    def fresh():
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
        net(torch.randn(1, 3, 6, 6))
        net.to(memory_format=torch.channels_last)
        return net, torch.optim.AdamW(net.parameters(), lr=1e-3)

    net, opt = fresh()
    net(torch.randn(2, 3, 6, 6).contiguous(memory_format=torch.channels_last)).sum().backward()
    opt.step()
    save_training_state(tmp_path, opt, None, {"epoch": 1})
    net2, opt2 = fresh()
    load_training_state(tmp_path, opt2, None)
    conv = net2[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    for p in net2.parameters():
        for name in ("exp_avg", "exp_avg_sq"):
            moment = opt2.state[p][name]
            assert moment.stride() == p.stride(), name
            torch.testing.assert_close(moment, opt.state[dict(zip(net2.parameters(), net.parameters()))[p]][name])


def test_ctrl_c_in_the_cli_stops_cleanly_and_leaves_a_resumable_run(tiny_synth_root, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "dala", "train", "--data", str(tiny_synth_root), "--model", "tiny_cnn", "--no-pretrained",
           "--image-size", "48", "--epochs", "300", "--quick-views", "1", "--run-dir", str(run), "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait(lambda: (run / "checkpoints" / "last" / "trainer_state.json").exists())
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert "Resume with" in err and "Traceback" not in err
    assert read_run(run).state == "stopped"
    assert json.loads((run / "checkpoints" / "last" / "trainer_state.json").read_text())["epoch"] >= 1


def test_same_seed_same_run_on_cpu(tiny_synth_root, tmp_path):
    a = run_training(tiny_config(tiny_synth_root, epochs=2), tmp_path / "a", progress=False)
    b = run_training(tiny_config(tiny_synth_root, epochs=2), tmp_path / "b", progress=False)
    assert a["test"]["confusion_matrix"] == b["test"]["confusion_matrix"]
    assert a["test_predictions"]["probs"] == b["test_predictions"]["probs"]


def test_early_stopping_stops_and_keeps_the_best(tiny_synth_root, tmp_path):
    run = tmp_path / "run"
    run_training(tiny_config(tiny_synth_root, epochs=40, early_stopping=2, select_metric="accuracy", lr=1e-5), run,
                 progress=False)
    records = read_jsonl(run / "metrics.jsonl")
    stop = [r for r in records if r["kind"] == "early_stop"]
    epochs = [r["epoch"] for r in records if r["kind"] == "epoch"]
    assert stop and max(epochs) < 40 and max(epochs) - stop[0]["best_epoch"] == 2


def test_recommended_settings_without_pretrained_weights():
    from dala.models.availability import pretrained_ready
    from dala.train.config import recommended_settings

    assert recommended_settings("dala_resnet50", pretrained=True)["mode"] == "quick"
    # offline: quick mode for the ResNets (their random stem is prepared, see dala.models.init) ...
    assert recommended_settings("dala_resnet50", pretrained=False) == {"mode": "quick", "lr": 3e-4, "image_size": None,
                                                                       "epochs": 12}
    assert recommended_settings("seresnet50", pretrained=False)["mode"] == "quick"
    # ... end to end at a reduced size for a stem without residual blocks
    assert recommended_settings("vgg16", pretrained=False)["mode"] == "full"
    # the registry's measured step where the shared one failed: VGG16 (no BatchNorm) collapsed at 3e-4
    assert recommended_settings("vgg16", pretrained=False)["lr"] == 1e-4
    assert recommended_settings("densenet121", pretrained=False)["lr"] == 3e-4
    assert recommended_settings("tiny_cnn", pretrained=False) == {"mode": "full", "lr": 1e-3, "image_size": 128, "epochs": 10}
    assert pretrained_ready("tiny_cnn") is False  # it has no pretrained weights at all
    TrainConfig(model="tiny_cnn", **recommended_settings("tiny_cnn", pretrained=False)).validate()


def test_estimate_seconds_orders_settings_sensibly():
    from dala.train.runs import estimate_seconds

    def est(**kw):
        return estimate_seconds(TrainConfig(**{"model": "dala_resnet50", "pretrained": False, **kw}), 344, 312)

    assert est(mode="quick", epochs=12) < est(mode="full", epochs=12)  # the point of quick mode
    assert est(mode="full", epochs=10, image_size=128) < est(mode="full", epochs=10)  # fewer pixels
    assert est(mode="quick", epochs=12) < est(mode="quick", epochs=24)
    assert est(mode="quick", epochs=5, pretrained=True) < est(mode="quick", epochs=5)  # no calibration pass
    assert est(model="tiny_cnn", mode="full", epochs=10, image_size=128) < est(mode="full", epochs=10, image_size=128)
