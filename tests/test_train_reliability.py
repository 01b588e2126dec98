"""Run folders under faults (issue 15) and the defects of issue 13: resume keeps the run's own
config, one writer per run folder, no record twice, garbage control files, FIFO queue, atomic
hosted admission, clear one-line errors through the CLI, damaged runs still listed."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from dala.cli import build_parser
from dala.cli import main as cli
from dala.io import FileLock, read_jsonl
from dala.train import TrainConfig, list_runs, read_run, run_training, send_control, start_run, wait_for
from dala.train.folder import LOCK_FILE, RunFolder

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model", "tiny_cnn", "--no-pretrained", "--image-size", "48", "--batch-size", "16", "--lr", "3e-3",
        "--quick-views", "1", "--no-progress"]


def tiny_config(root, **kw) -> TrainConfig:
    base = dict(data_root=str(root), model="tiny_cnn", pretrained=False, image_size=48, epochs=2, batch_size=16,
                lr=3e-3, quick_views=1, log_every=1, n_tiles=2)
    base.update(kw)
    return TrainConfig(**base)


def _wait(pred, timeout=180, poll=0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(poll)
    raise TimeoutError("condition not met in time")


def _no_record_twice(run: Path) -> None:
    records = read_jsonl(run / "metrics.jsonl")
    for kind, key in (("epoch", "epoch"), ("step", "step")):
        seen = Counter(r[key] for r in records if r.get("kind") == kind)
        assert not [k for k, n in seen.items() if n > 1], f"{kind} records repeated: {seen}"


def _files(run: Path) -> dict[str, bytes]:
    return {n: (run / n).read_bytes() for n in ("config.json", "split.json") if (run / n).exists()}


# ----------------------------------------------------------------------------- issue 13 defects

def _printed_commands() -> list[str]:
    """Every `python -m dala ...` the program tells a user to run (backticked in messages, or
    after "Resume with:")."""
    found = set()
    for path in (REPO / "dala").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"(?<!`)`(python -m dala[^`\n]*)`(?!`)", text):
            found.add(m.group(1))
        for m in re.finditer(r"Resume with: (python -m dala[^\"'\n]*)", text):
            found.add(m.group(1))
    return sorted(found)


def test_every_printed_command_is_accepted_by_the_cli():
    commands = _printed_commands()
    assert any("--resume" in c for c in commands)  # the stop note is among them
    parser = build_parser()
    refused = []
    for cmd in commands:
        text = re.sub(r"\{[^}]*\}+", "X", cmd).replace("PRESET", "quick")  # placeholders -> a value
        try:
            parser.parse_args(shlex.split(text)[3:])  # without "python -m dala"
        except SystemExit as exc:
            if exc.code:  # --help exits 0
                refused.append(cmd)
    assert not refused, f"the program prints commands the CLI refuses: {refused}"


def test_stop_note_names_a_command_that_resumes(tiny_synth_root, tmp_path):
    from dala.train import engine

    cmd = engine.STOP_NOTE.format(run_dir=tmp_path / "r")
    args = build_parser().parse_args(shlex.split(cmd.split("`")[1])[3:])
    assert args.resume and args.run_dir == str(tmp_path / "r")


@pytest.mark.parametrize("name", ["a/b", "../x", "..", "/etc/passwd", "ok name!"])
def test_run_names_never_leave_the_runs_root(tmp_path, name):
    from dala.train.runs import new_run_dir

    root = tmp_path / "runs"
    path = new_run_dir(TrainConfig(model="tiny_cnn", name=name), runs_root=root)
    assert path.parent == root and path.is_dir()
    assert ".." not in path.name.split("-") and "/" not in path.name and not path.name.startswith(".")


def test_cli_name_with_a_slash_stays_in_the_runs_root(tiny_synth_root, tmp_path, monkeypatch):
    monkeypatch.setenv("DALA_RUNS", str(tmp_path / "runs"))
    assert cli(["train", "--data", str(tiny_synth_root), *TINY, "--epochs", "1", "--name", "../a/b"]) == 0
    made = [p for p in (tmp_path / "runs").iterdir()]
    assert len(made) == 1 and (made[0] / "report.json").exists()
    assert not (tmp_path / "a").exists()


# ----------------------------------------------------------------------------- resume

def test_resume_extends_epochs_with_the_runs_own_config(tiny_synth_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(["train", "--data", str(tiny_synth_root), *TINY, "--epochs", "1", "--mode", "full",
                "--run-dir", str(run)]) == 0
    before = _files(run)
    assert cli(["train", "--resume", "--run-dir", str(run), "--epochs", "3", "--no-progress"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["epochs"] == 3 and cfg["mode"] == "full" and cfg["data_root"] == str(tiny_synth_root)
    assert (run / "split.json").read_bytes() == before["split.json"]  # the same split, not a new one
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "epoch"] == [1, 2, 3]
    _no_record_twice(run)
    assert read_run(run).state == "finished"


@pytest.mark.parametrize("flag", [["--model", "resnet50"], ["--data", "/elsewhere"], ["--split", "image"],
                                  ["--seed", "7"], ["--epochs", "0"]])
def test_resume_with_a_contradicting_flag_is_refused_and_nothing_overwritten(tiny_synth_root, tmp_path, capsys, flag):
    run = tmp_path / "run"
    run_training(tiny_config(tiny_synth_root, epochs=1), run, progress=False)
    before, status = _files(run), (run / "status.json").read_bytes()
    capsys.readouterr()
    assert cli(["train", "--resume", "--run-dir", str(run), *flag, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert _files(run) == before and (run / "status.json").read_bytes() == status


def test_new_settings_into_an_existing_run_folder_are_refused(tiny_synth_root, tmp_path, capsys):
    run = tmp_path / "run"
    run_training(tiny_config(tiny_synth_root, epochs=1), run, progress=False)
    before = _files(run)
    assert cli(["train", "--data", str(tiny_synth_root), "--model", "resnet50", "--run-dir", str(run)]) == 2
    assert "--resume" in capsys.readouterr().err and _files(run) == before


def test_one_writer_per_run_folder(tiny_synth_root, tmp_path, capsys):
    run = tmp_path / "run"
    run_training(tiny_config(tiny_synth_root, epochs=1), run, progress=False)
    before, metrics = _files(run), (run / "metrics.jsonl").read_bytes()
    with FileLock(run / LOCK_FILE):  # another trainer holds the run
        assert cli(["train", "--resume", "--run-dir", str(run), "--epochs", "2", "--no-progress"]) == 2
        assert "another process" in capsys.readouterr().err
        from dala.errors import DalaError

        with pytest.raises(DalaError, match="another process"):
            run_training(tiny_config(tiny_synth_root, epochs=2), run, progress=False, resume=True)
    assert _files(run) == before and (run / "metrics.jsonl").read_bytes() == metrics
    assert read_run(run).state == "finished"


def test_resume_before_the_first_checkpoint_records_nothing_twice(tiny_synth_root, tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config(tiny_synth_root, epochs=1)
    folder = RunFolder(run)
    run.mkdir()
    folder.write_json(folder.config_path, cfg.to_dict())
    for step in (1, 2, 3):  # a first attempt killed in epoch 1, before any checkpoint
        folder.log_metric({"kind": "step", "epoch": 1, "step": step, "loss": 0.7})
    assert cli(["train", "--resume", "--run-dir", str(run), "--no-progress"]) == 0
    _no_record_twice(run)
    assert read_run(run).state == "finished"


def test_resume_after_a_crash_in_an_epoch_records_nothing_twice(tiny_synth_root, tmp_path):
    run = tmp_path / "run"
    run_training(tiny_config(tiny_synth_root, epochs=2), run, progress=False)
    # as if killed after epoch 2's records but before its checkpoint: the state says epoch 1
    state_path = run / "checkpoints" / "last" / "trainer_state.json"
    state = json.loads(state_path.read_text())
    state["epoch"] = 1
    state_path.write_text(json.dumps(state))
    run_training(tiny_config(tiny_synth_root, epochs=2), run, progress=False, resume=True)
    _no_record_twice(run)
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "epoch"] == [1, 2]
    assert sum(r["kind"] == "test" for r in read_jsonl(run / "metrics.jsonl")) == 1


def test_orphaned_temporary_files_are_cleaned_on_resume(tiny_synth_root, tmp_path):
    run = tmp_path / "run"
    run_training(tiny_config(tiny_synth_root, epochs=1), run, progress=False)
    orphans = [run / "checkpoints" / "last" / ".model.safetensors.k1ll3d.tmp", run / ".status.json.x.tmp"]
    for p in orphans:
        p.write_bytes(b"half a file")
    (run / "checkpoints" / ".best.tmp-abc").mkdir()
    run_training(tiny_config(tiny_synth_root, epochs=2), run, progress=False, resume=True)
    assert not any(p.exists() for p in orphans) and not (run / "checkpoints" / ".best.tmp-abc").exists()


# ----------------------------------------------------------------------------- a live run

def test_garbage_control_files_do_not_kill_a_live_run(tiny_synth_root, tmp_path):
    run = start_run(tiny_config(tiny_synth_root, epochs=300, mode="quick"), runs_root=tmp_path / "runs")
    control = run / "control.json"
    _wait(lambda: read_run(run).status.get("step", 0) >= 2)
    for garbage in (b"{not json", os.urandom(64), b'["stop"]', b'{"command": 3}', None):
        if garbage is None:
            control.unlink()
            control.mkdir()
        else:
            control.write_bytes(garbage)
        step = read_run(run).status.get("step", 0)
        _wait(lambda: read_run(run).status.get("step", 0) > step + 1, timeout=60)
        assert read_run(run).state == "running"
    send_control(run, "stop")  # a control folder is set aside, the command still gets through
    assert wait_for(run, timeout=60).state == "stopped"


def test_queued_runs_start_first_come_first_served(tiny_synth_root, tmp_path):
    root = tmp_path / "runs"
    first = start_run(tiny_config(tiny_synth_root, epochs=300), runs_root=root)
    _wait(lambda: read_run(first).state == "running")
    queued = []
    for _ in range(3):
        queued.append(start_run(tiny_config(tiny_synth_root, epochs=1), runs_root=root))
        time.sleep(0.05)
    _wait(lambda: all(read_run(q).state == "queued" for q in queued), timeout=60)
    time.sleep(1.0)
    assert [read_run(q).queue_position for q in queued] == [1, 2, 3]
    send_control(first, "stop")
    views = [wait_for(q, timeout=300) for q in queued]
    assert [v.state for v in views] == ["finished"] * 3
    started = [v.status["started"] for v in views]
    assert started == sorted(started)


def test_hosted_admission_is_atomic(tmp_path, monkeypatch):
    """Five simultaneous Starts against a cap of one: exactly one is admitted."""
    from dala.hosting import HostedModeError
    from dala.train import runs

    monkeypatch.setenv("DALA_HOSTED", "1")
    monkeypatch.setenv("DALA_MAX_RUNS", "1")
    shared = tmp_path / "shared"
    monkeypatch.setenv("DALA_RUNS", str(shared))

    class FakeProcess:  # a live process that never finishes: this test's own pid
        pid = os.getpid()

    def slow_popen(*a, **k):
        time.sleep(0.2)
        return FakeProcess()

    monkeypatch.setattr(runs.subprocess, "Popen", slow_popen)
    barrier = threading.Barrier(5)
    results: list = []

    def start(i):
        barrier.wait()
        try:
            results.append(start_run(TrainConfig(model="tiny_cnn", pretrained=False), runs_root=shared / f"visitor{i}"))
        except HostedModeError as exc:
            results.append(exc)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    admitted = [r for r in results if isinstance(r, Path)]
    assert len(results) == 5 and len(admitted) == 1, results


# ----------------------------------------------------------------------------- checks before training

def _split_with_empty(tiny_synth_root, tmp_path, part: str) -> Path:
    from dala.data import load_index, make_split

    d = make_split(load_index(tiny_synth_root), by="patient", seed=0).to_dict()
    d["parts"]["train"] += d["parts"][part]
    d["parts"][part] = []
    d.pop("sha256", None)
    path = tmp_path / f"no-{part}.json"
    path.write_text(json.dumps(d))
    return path


def test_an_empty_test_part_is_refused_before_training(tiny_synth_root, tmp_path, capsys):
    run = tmp_path / "run"
    split = _split_with_empty(tiny_synth_root, tmp_path, "test")
    assert cli(["train", "--data", str(tiny_synth_root), *TINY, "--split-file", str(split), "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "test part empty" in err and "split" in err
    st = read_run(run).status
    assert st["state"] == "failed" and "test part empty" in st["error"]  # never 'running' for ever
    assert not (run / "metrics.jsonl").exists() or not read_jsonl(run / "metrics.jsonl")


def test_a_patient_split_too_small_says_what_to_change(tiny_index):
    from dala.errors import DataError
    from dala.train.inputs import check_parts

    frames = {"train": tiny_index, "val": tiny_index.iloc[:0], "test": tiny_index.iloc[:3]}
    with pytest.raises(DataError, match="val part empty.*12 patients.*val_fraction 0.15"):
        check_parts(frames, config=TrainConfig(model="tiny_cnn"), index=tiny_index)
    check_parts(frames, config=TrainConfig(model="tiny_cnn", val_fraction=0.0), index=tiny_index)  # no val asked for


def test_a_one_class_dataset_is_told_to_add_the_other_class(tiny_synth_root, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_synth_root, data)
    for benign in [p for p in data.rglob("benign") if p.is_dir()]:
        shutil.rmtree(benign)
    assert cli(["train", "--data", str(data), *TINY, "--epochs", "1", "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "only one class (malignant)" in err and "add images of the other class" in err and "seed" not in err


# ----------------------------------------------------------------------------- one-line CLI errors

def _one_line_error(capsys, argv, *, code=2, match=None):
    capsys.readouterr()
    assert cli(argv) == code
    lines = capsys.readouterr().err.strip().splitlines()
    err = lines[-1] if lines else ""
    assert err.startswith("error:") and "Traceback" not in "".join(lines), lines
    assert [ln for ln in lines if not ln.startswith("run folder:")] == [err], lines  # one line, besides the folder
    if match:
        assert re.search(match, err), err
    return err


@pytest.mark.parametrize("content,match", [
    ("[1, 2, 3]", "split file"), ('{"format": "dala-split/1", "parts": 3, "by": "patient"}', "split file"),
    ("{oops", "split file"), ('{"format": "dala-split/1", "parts": {"train": 5}, "by": "patient"}', "split file")])
def test_malformed_split_files(tiny_synth_root, tmp_path, capsys, content, match):
    split = tmp_path / "split.json"
    split.write_text(content)
    _one_line_error(capsys, ["train", "--data", str(tiny_synth_root), *TINY, "--split-file", str(split),
                             "--run-dir", str(tmp_path / "run")], match=match)


@pytest.mark.parametrize("options,match", [({"epochs": "ten"}, "epochs = 'ten'"), ({"lr": [1]}, "lr"),
                                           ({"pretrained": "yes"}, "pretrained"), ([1, 2], "not an object"),
                                           ({"image_size": 60000}, "image size 60000")])
def test_config_files_with_wrong_types(tmp_path, capsys, options, match):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(options))
    _one_line_error(capsys, ["train", "--config", str(cfg), "--run-dir", str(tmp_path / "run")], match=match)
    assert not (tmp_path / "run").exists()


def test_image_size_is_bounded(capsys, tmp_path):
    _one_line_error(capsys, ["train", "--model", "tiny_cnn", "--image-size", "100000", "--run-dir", str(tmp_path / "r")],
                    match="outside 16..1024 px")


def test_wrong_kinds_of_paths(tiny_synth_root, tmp_path, capsys):
    run = tmp_path / "run"
    run_training(tiny_config(tiny_synth_root, epochs=1), run, progress=False)
    image = sorted(p for p in Path(tiny_synth_root).rglob("SOB_*.png") if "masks" not in p.parts)[0]
    _one_line_error(capsys, ["predict", "--run", str(run), str(tmp_path)], match="is a folder")
    _one_line_error(capsys, ["predict", "--run", str(run), str(tmp_path / "nope.png")], match="not found")
    _one_line_error(capsys, ["predict", "--run", str(run), str(image), "--csv", str(tmp_path)], match="--csv.*folder")
    _one_line_error(capsys, ["evaluate", "--run", str(run), "--out", str(tmp_path)], match="--out.*folder")
    _one_line_error(capsys, ["evaluate", "--run", str(run), "--out", str(image / "x.json")], match="is a file")
    _one_line_error(capsys, ["train", "--run-dir", str(image)], match="is a file")
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    _one_line_error(capsys, ["predict", "--run", str(run), str(garbage)], match="not an image")
    if os.geteuid() != 0:  # root reads everything
        locked = tmp_path / "locked.png"
        shutil.copy(image, locked)
        locked.chmod(0)
        _one_line_error(capsys, ["predict", "--run", str(run), str(locked)], match="cannot be read")


# ----------------------------------------------------------------------------- listing

def test_damaged_runs_are_listed_as_damaged_not_hidden(tiny_synth_root, tmp_path):
    root = tmp_path / "runs"
    good = root / "20260101-000000-good"
    run_training(tiny_config(tiny_synth_root, epochs=1), good, progress=False)
    for name, bad in (("status.json", b"{half"), ("metrics.jsonl", b'{"kind": "epoch"}\nnot json\n'),
                      ("report.json", b"\xff\xfe garbage"), ("val_tiles.json", b'{"tiles": 3}')):
        run = root / f"20260101-00000{len(name) % 10}-bad-{name.split('.')[0]}"
        shutil.copytree(good, run)
        (run / name).write_bytes(bad)
    views = {v.name: v for v in list_runs(root)}
    assert len(views) == 5
    assert views["20260101-000000-good"].damaged == {}
    for name in ("status.json", "metrics.jsonl", "report.json", "val_tiles.json"):
        view = next(v for n, v in views.items() if n.endswith(name.split(".")[0]))
        assert name in view.damaged, (name, view.damaged)
    assert next(v for n, v in views.items() if n.endswith("bad-status")).state == "damaged"


def test_listing_runs_does_not_read_metrics(tiny_synth_root, tmp_path, monkeypatch):
    root = tmp_path / "runs"
    run_training(tiny_config(tiny_synth_root, epochs=1), root / "r1", progress=False)
    read = []
    real = RunFolder.metrics
    monkeypatch.setattr(RunFolder, "metrics", lambda self: read.append(self.path) or real(self))
    views = list_runs(root)
    assert [v.state for v in views] == ["finished"] and not read
    assert views[0].compare_row["accuracy"] == views[0].report["test"]["accuracy"]
    assert len(views[0].epochs) == 1 and read  # read when asked for


def test_checkpoint_lookup_best_else_last(tiny_synth_root, tmp_path):
    from dala.train.folder import checkpoint_dir

    run = tmp_path / "run"
    assert checkpoint_dir(run) is None
    run_training(tiny_config(tiny_synth_root, epochs=1), run, progress=False)
    assert checkpoint_dir(run) == run / "checkpoints" / "best"
    shutil.rmtree(run / "checkpoints" / "best")
    assert checkpoint_dir(run) == run / "checkpoints" / "last"


# ----------------------------------------------------------------------------- time estimates (issue 14)

def test_live_eta_is_corrected_by_the_measured_step_time():
    from dala.train.eta import EstimateParts, LiveEta

    parts = EstimateParts(setup_s=0, train_step_s=1.0, steps_per_epoch=10, epoch_overhead_s=2.0, test_s=4.0, epochs=3)
    eta = LiveEta(parts, epochs=3, steps_per_epoch=10)
    assert eta.remaining_s(epoch=1, step_in_epoch=0) == pytest.approx(30 * 1.0 + 3 * 2.0 + 4.0)  # the estimate
    eta.add_steps(5, 15.0)  # the steps are 3x slower than estimated: everything not yet measured is too
    assert eta.factor == pytest.approx(3.0)
    assert eta.remaining_s(epoch=1, step_in_epoch=5) == pytest.approx(25 * 3.0 + 3 * 6.0 + 12.0)
    eta.add_overhead(1.0)  # a measured validation replaces its estimate
    assert eta.remaining_s(epoch=1, step_in_epoch=10, validated=True) == pytest.approx(20 * 3.0 + 2 * 1.0 + 12.0)


def test_status_carries_a_live_eta_close_to_the_real_remaining_time(tiny_synth_root, tmp_path, monkeypatch):
    seen: list[tuple[float, float, dict]] = []
    real = RunFolder.update_status

    def spy(self, **fields):
        if "eta_s" in fields:
            seen.append((time.time(), fields["eta_s"], fields))
        return real(self, **fields)

    monkeypatch.setattr(RunFolder, "update_status", spy)
    run_training(tiny_config(tiny_synth_root, epochs=4, mode="full"), tmp_path / "run", progress=False)
    t_end = time.time()
    assert seen[-1][1] == 0 and json.loads((tmp_path / "run" / "status.json").read_text())["eta_s"] == 0
    after_first = next((t, eta) for t, eta, f in seen if f.get("last_epoch", {}).get("epoch") == 1)
    remaining = t_end - after_first[0]
    assert 0.33 < after_first[1] / remaining < 3.0, (after_first[1], remaining)


def test_estimate_is_within_a_factor_of_a_real_tiny_run(tiny_synth_root, tmp_path):
    """The form's estimate is for a machine the run has to itself (the live ETA corrects for load)."""
    from dala.train import estimate_seconds

    if os.getloadavg()[0] > 1.5 * (os.cpu_count() or 1):
        pytest.skip("the CPU is shared with other work: wall time says nothing about the estimate")

    cfg = tiny_config(tiny_synth_root, epochs=3, mode="full")
    report = run_training(cfg, tmp_path / "run", progress=False)
    counts = report["split"]["counts"]
    n_train = counts["train"]["images"]
    n_eval = counts["val"]["images"] + counts["test"]["images"]
    estimate = estimate_seconds(cfg, n_train, n_eval)
    assert 0.33 < report["total_time_s"] / estimate < 3.0, (report["total_time_s"], estimate)
