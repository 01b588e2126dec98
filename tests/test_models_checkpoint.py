"""Checkpoint folders: what is written, and every bad input raising CheckpointError with a fix."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

import dala
from dala.errors import CheckpointError
from dala.models import create_model
from dala.models.checkpoint import load_checkpoint, read_checkpoint_config, save_checkpoint

CLASSES = ["benign", "malignant"]


@pytest.fixture()
def ckpt(tmp_path):
    torch.manual_seed(0)
    model = create_model("tiny_cnn", pretrained=False)
    return model, save_checkpoint(model, tmp_path / "ckpt", class_names=CLASSES, extra={"val_acc": 0.75})


@pytest.fixture()
def no_unpickling(monkeypatch):
    """Fail the test if anything tries to unpickle."""

    def boom(*a, **k):
        raise AssertionError("a pickle was loaded")

    monkeypatch.setattr(torch, "load", boom)
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)


def test_config_holds_everything_needed_to_rebuild(ckpt):
    model, folder = ckpt
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["name"] == "tiny_cnn"
    assert cfg["options"] == model.dala_config["options"]
    assert cfg["num_classes"] == 2 and cfg["class_names"] == CLASSES
    assert cfg["input_size"] == 64 and len(cfg["mean"]) == 3 and len(cfg["std"]) == 3
    assert cfg["weight_source"] == "random (pretrained=False)"
    assert cfg["dala_version"] == dala.__version__
    assert cfg["format_version"] == 1 and cfg["extra"] == {"val_acc": 0.75}
    assert read_checkpoint_config(folder) == cfg
    assert not list(folder.parent.glob(".ckpt.*")), "temporary folders left behind"


def test_load_rebuilds_the_exact_model(ckpt):
    model, folder = ckpt
    loaded, cfg = load_checkpoint(folder)
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    assert loaded.dala_config["checkpoint"] == str(folder)
    assert loaded.dala_config["class_names"] == CLASSES
    # a path to a file inside the folder is accepted too
    assert load_checkpoint(folder / "model.safetensors")[1]["name"] == "tiny_cnn"


def test_options_survive_the_round_trip(tmp_path):
    model = create_model("dala_resnet50", pretrained=False, attention="eca", placement="per_block", head_dims=(64, 32))
    folder = save_checkpoint(model, tmp_path / "d", class_names=CLASSES)
    loaded, cfg = load_checkpoint(folder)
    assert cfg["options"]["attention"] == "eca" and cfg["options"]["head_dims"] == [64, 32]
    assert loaded.placement == "per_block"


def test_save_into_an_existing_folder_keeps_other_files(ckpt):
    model, folder = ckpt
    (folder / "optimizer.safetensors").write_bytes(b"x")
    save_checkpoint(model, folder, class_names=["b", "m"])
    assert (folder / "optimizer.safetensors").exists()
    assert read_checkpoint_config(folder)["class_names"] == ["b", "m"]


def test_save_refuses_bad_class_names_and_foreign_models(tmp_path):
    model = create_model("tiny_cnn", pretrained=False)
    with pytest.raises(CheckpointError, match="3 class_names .* 2 outputs"):
        save_checkpoint(model, tmp_path / "a", class_names=["a", "b", "c"])
    with pytest.raises(CheckpointError, match="no dala_config.*create_model"):
        save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "b", class_names=CLASSES)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint folder at .*save_checkpoint"):
        load_checkpoint(tmp_path / "nope")


def test_missing_config(ckpt):
    _, folder = ckpt
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="has no config.json.*re-save"):
        load_checkpoint(folder)


def test_missing_weights(ckpt):
    _, folder = ckpt
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="has no model.safetensors"):
        load_checkpoint(folder)


def test_config_not_json(ckpt):
    _, folder = ckpt
    (folder / "config.json").write_text("{name: tiny")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(folder)


def test_unknown_architecture(ckpt):
    _, folder = ckpt
    cfg = json.loads((folder / "config.json").read_text())
    cfg["name"] = "efficientnet_b9"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="architecture 'efficientnet_b9'.*known: dala_resnet50"):
        load_checkpoint(folder)


def test_newer_format(ckpt):
    _, folder = ckpt
    cfg = json.loads((folder / "config.json").read_text())
    cfg["format_version"] = 99
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="format 99.*upgrade dala"):
        load_checkpoint(folder)


def test_weights_for_another_configuration_name_the_mismatch(ckpt, tmp_path):
    _, folder = ckpt
    other = save_checkpoint(create_model("tiny_cnn", pretrained=False, widths=(16, 32, 64, 128)), tmp_path / "o",
                            class_names=CLASSES)
    shutil.copy(other / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"does not fit tiny_cnn.*shape mismatches \(first: stages\.0\.0\.weight"):
        load_checkpoint(folder)


def test_weights_for_another_architecture_name_the_keys(ckpt, tmp_path):
    _, folder = ckpt
    other = save_checkpoint(create_model("tiny_cnn", pretrained=False, attention="eca"), tmp_path / "o",
                            class_names=CLASSES)
    shutil.copy(other / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"weights missing \(e\.g\. attention\.fc1.*unexpected weights \(e\.g\. attention\.conv"):
        load_checkpoint(folder)


def test_truncated_weights(ckpt):
    _, folder = ckpt
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.*again"):
        load_checkpoint(folder)
    path.write_bytes(data[:5])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(folder)


def test_corrupted_header(ckpt):
    _, folder = ckpt
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:16] = b"\xff\xfe garbage"[:8]
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted or not safetensors"):
        load_checkpoint(folder)


def test_pickle_renamed_safetensors_is_refused_unread(ckpt, no_unpickling):
    model, folder = ckpt
    path = folder / "model.safetensors"
    with open(path, "wb") as fh:
        torch.serialization.save(model.state_dict(), fh)  # torch.save's zip format
    with pytest.raises(CheckpointError, match="pickle renamed .safetensors.*never unpickles"):
        load_checkpoint(folder)
    path.write_bytes(pickle.dumps({"w": [1, 2, 3]}, protocol=4))  # a raw pickle
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(folder)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
def test_pickle_file_is_refused(tmp_path, suffix, no_unpickling):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"PK\x03\x04 pretend torch.save output")
    with pytest.raises(CheckpointError, match="PyTorch pickle.*never loads.*save_checkpoint"):
        load_checkpoint(path)


def test_folder_with_only_a_pickle(tmp_path, no_unpickling):
    (tmp_path / "model.pt").write_bytes(b"PK\x03\x04")
    with pytest.raises(CheckpointError, match="holds model.pt but no model.safetensors.*safetensors only"):
        load_checkpoint(tmp_path)


def test_any_other_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(CheckpointError, match="is a file; a checkpoint is a folder"):
        load_checkpoint(path)


def test_tied_weights_are_restored_by_identity():
    from dala.models.checkpoint import _restore_shared

    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(3, 3)
            self.b = torch.nn.Linear(3, 3)
            self.b.weight = self.a.weight

    with torch.device("meta"):
        model = Tied()
    state = {"a.weight": torch.ones(3, 3), "a.bias": torch.zeros(3), "b.bias": torch.zeros(3)}
    assert _restore_shared(model, state) is True
    assert state["b.weight"] is state["a.weight"]
    # same shapes but not tied: nothing is filled in
    plain = {"a.weight": torch.ones(3, 3)}
    with torch.device("meta"):
        assert _restore_shared(torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)), plain) is False
    assert list(plain) == ["a.weight"]


def test_half_precision_weights_load_into_a_float_model(ckpt, tmp_path):
    model, _ = ckpt
    from safetensors.torch import save_file

    folder = save_checkpoint(model, tmp_path / "half", class_names=CLASSES)
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    save_file(half, str(folder / "model.safetensors"))
    loaded, _ = load_checkpoint(folder)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())


def test_round_trip_keeps_trained_batchnorm_statistics(tmp_path):
    """An untrained model's BatchNorm statistics are the defaults (0, 1), so a round trip of it
    cannot tell whether running statistics are saved: train them first."""
    import torch

    from dala.models import create_model
    from dala.models.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = create_model("tiny_cnn", pretrained=False).train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 3, 64, 64) * 3 + 1)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    save_checkpoint(model, tmp_path / "ck", class_names=["benign", "malignant"])
    loaded, _ = load_checkpoint(tmp_path / "ck")
    assert torch.equal(model(x), loaded(x))


# ----------------------------------------------------------------------------- old checkpoints
OLD_CHECKPOINT = Path(__file__).parent / "data" / "tiny_cnn_checkpoint_v1"


def test_checkpoint_written_before_the_redesign_still_loads():
    # tests/data/tiny_cnn_checkpoint_v1 was written by save_checkpoint at commit c4b7d64 (before
    # issue 13's moves); the format is a contract: it must load, and predict exactly as the loader
    # of that commit made it predict (these eval-mode logits)
    model, config = load_checkpoint(OLD_CHECKPOINT)
    assert config["format_version"] == 1 and config["name"] == "tiny_cnn"
    assert config["options"]["widths"] == [8, 16, 16, 32] and config["class_names"] == CLASSES
    x = torch.linspace(-1, 1, 3 * 64 * 64).reshape(1, 3, 64, 64)
    with torch.no_grad():
        logits = model(x)
    assert torch.allclose(logits, torch.tensor([[-0.11629956215620041, -0.09063660353422165]]), atol=1e-6)


def test_a_new_checkpoint_has_the_old_format(tmp_path):
    model, _ = load_checkpoint(OLD_CHECKPOINT)
    folder = save_checkpoint(model, tmp_path / "again", class_names=CLASSES)
    old = json.loads((OLD_CHECKPOINT / "config.json").read_text())
    new = json.loads((folder / "config.json").read_text())
    assert sorted(new) == sorted(old)
    assert {k: new[k] for k in new if k not in ("extra", "dala_version")} == \
        {k: old[k] for k in old if k not in ("extra", "dala_version")}
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert oct(folder.stat().st_mode & 0o777) == "0o755"  # dala.io.atomic_dir's modes
    assert oct((folder / "model.safetensors").stat().st_mode & 0o777) == "0o644"


# ----------------------------------------------------------------------------- one resolver
def test_one_resolver_for_checkpoint_and_run_folders(ckpt, tmp_path):
    from dala.models import checkpoint as C

    _, folder = ckpt
    assert C.resolve_checkpoint_folder(folder) == folder
    assert C.resolve_checkpoint_folder(folder / "config.json") == folder
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text('{"model": "tiny_cnn"}')  # a run's training config, not a checkpoint's
    with pytest.raises(CheckpointError, match="holds no checkpoint yet.*train first"):
        C.resolve_checkpoint_folder(run)
    shutil.copytree(folder, run / "checkpoints" / "last")
    assert C.resolve_checkpoint_folder(run) == run / "checkpoints" / "last"
    shutil.copytree(folder, run / "checkpoints" / "best")
    assert C.resolve_checkpoint_folder(run) == run / "checkpoints" / "best"
    assert read_checkpoint_config(run)["name"] == "tiny_cnn"  # the config reader takes a run folder too
    assert not hasattr(C, "_resolve_folder")
    import dala.explain.api as api

    assert not hasattr(api, "resolve_checkpoint_dir")


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
def test_a_pickle_in_a_folder_is_named_not_told_to_train(tmp_path, suffix, no_unpickling):
    from dala.models.checkpoint import resolve_checkpoint_folder

    for folder in (tmp_path / "ck", tmp_path / "run" / "checkpoints" / "best"):
        folder.mkdir(parents=True)
        (folder / f"model{suffix}").write_bytes(b"PK\x03\x04")
    for path in (tmp_path / "ck", tmp_path / "run"):
        with pytest.raises(CheckpointError) as err:
            resolve_checkpoint_folder(path)
        msg = str(err.value)
        assert "holds a PyTorch pickle, which DALA Lab never loads (unsafe)" in msg
        assert "convert it to safetensors" in msg and "train first" not in msg


# ----------------------------------------------------------------------------- bounded work (issue 15)
def _edit_config(folder, **changes):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("size", [60000, 8, "224", True])
def test_an_input_size_out_of_bounds_is_refused(ckpt, size):
    from dala.models.limits import MAX_INPUT_SIZE

    _, folder = ckpt
    _edit_config(folder, input_size=size)
    with pytest.raises(CheckpointError, match="input_size") as err:
        load_checkpoint(folder)
    if size == 60000:
        assert f"16..{MAX_INPUT_SIZE}" in str(err.value)
    with pytest.raises(CheckpointError, match="input_size"):
        read_checkpoint_config(folder)


def test_bad_normalisation_is_refused(ckpt):
    _, folder = ckpt
    _edit_config(folder, std=[0.2, 0.0, 0.2])
    with pytest.raises(CheckpointError, match="std must be three finite numbers above 0"):
        load_checkpoint(folder)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, value):
    model = create_model("tiny_cnn", pretrained=False)
    with torch.no_grad():
        model.head[0].weight[0, 0] = value
    folder = save_checkpoint(model, tmp_path / "nan", class_names=CLASSES)
    with pytest.raises(CheckpointError, match=r"NaN or infinite values in 1 tensor\(s\) \(first: head\.0\.weight\)"):
        load_checkpoint(folder)


def _write_raw_safetensors(path, header: bytes, *, declared: int | None = None, data: bytes = b"") -> None:
    import struct

    path.write_bytes(struct.pack("<Q", len(header) if declared is None else declared) + header + data)


@pytest.mark.parametrize("header, declared, data", [
    (b'{"a": 1}', 2 ** 63, b""),                                         # a huge header length
    (b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]', None, b"\0" * 8),  # bad JSON
    (b'[1, 2, 3]', None, b""),                                           # JSON, not an object
    (b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4000000]}}', None, b"\0" * 8),  # past the end
    (b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}', None, b"\0" * 8),  # reversed
    (b'{"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}', None, b"\0" * 8),  # negative shape
    (b'{"a": {"dtype": "F32", "shape": [2]}}', None, b"\0" * 8),          # no offsets
    (b'{"a": "x"}', None, b""),                                          # an entry that is not an object
    (b'{"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}', None, b"\0" * 8),  # shape vs bytes
    (b'{"a": {"dtype": "Q99", "shape": [2], "data_offsets": [0, 8]}}', None, b"\0" * 8),  # unknown dtype
])
def test_crafted_safetensors_headers_give_a_checkpoint_error(ckpt, header, declared, data):
    _, folder = ckpt
    _write_raw_safetensors(folder / "model.safetensors", header, declared=declared, data=data)
    with pytest.raises(CheckpointError):
        load_checkpoint(folder)
