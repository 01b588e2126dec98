"""Pretrained weights offline: found in caches laid out as torchvision and huggingface_hub lay
them, and a fast fall-back to random weights (saying why) when they are not there."""

from __future__ import annotations

import os
import time

import pytest
import torch

from dala.models import create_model
from dala.models import weights as W


@pytest.fixture()
def empty_caches(tmp_path, monkeypatch):
    """Fresh, empty torch hub and HF caches for this test only (nothing leaks to other tests)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DALA_OFFLINE", "1")
    return tmp_path


@pytest.fixture()
def no_downloads(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a download was attempted")

    import huggingface_hub
    import torch.hub

    monkeypatch.setattr(torch.hub, "download_url_to_file", boom)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", boom)


def _lay_out_hf_cache(root, repo_id: str, state_dict: dict) -> None:
    """``models--org--name/refs/main`` (commit hash, no newline) + ``snapshots/<hash>/model.safetensors``."""
    from safetensors.torch import save_file

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(repo / "snapshots" / commit / "model.safetensors"))


@pytest.mark.parametrize("name", ["resnet50", "seresnet50", "dala_resnet50"])
def test_offline_with_empty_cache_is_fast_and_random(name, empty_caches, no_downloads):
    start = time.monotonic()
    model = create_model(name, pretrained=True)
    elapsed = time.monotonic() - start
    src = model.dala_config["weight_source"]
    assert src.startswith("random (offline") and "not cached at" in src, src
    assert elapsed < 10, f"{name} took {elapsed:.1f}s offline"


def test_unreachable_server_falls_back_without_downloading(empty_caches, no_downloads, monkeypatch):
    monkeypatch.delenv("DALA_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    import huggingface_hub.constants  # imported under the tests' HF_HUB_OFFLINE=1, which dala.net honours

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(W, "can_reach", lambda host, *a, **k: False)
    src = create_model("resnet50", pretrained=True).dala_config["weight_source"]
    assert src.startswith("random (offline (download.pytorch.org unreachable)"), src
    src = create_model("seresnet50", pretrained=True).dala_config["weight_source"]
    assert src.startswith("random (offline (huggingface.co unreachable)"), src


def test_probe_of_an_unresolvable_host_answers_quickly():
    from dala import net

    net.clear_probe_cache()
    start = time.monotonic()
    assert net.can_reach("no-such-host.invalid", timeout=1.0) is False
    assert time.monotonic() - start < 5


def test_pretrained_false_says_so():
    assert create_model("resnet50", pretrained=False).dala_config["weight_source"] == "random (pretrained=False)"
    assert "no pretrained weights" in create_model("tiny_cnn").dala_config["weight_source"]


def test_torchvision_weights_from_the_torch_hub_cache(empty_caches, no_downloads):
    from torchvision.models import ResNet50_Weights, resnet50

    torch.manual_seed(0)
    reference = resnet50()  # stands in for ImageNet weights: saved as torchvision caches them
    path = empty_caches / "torch" / "hub" / "checkpoints" / os.path.basename(ResNet50_Weights.IMAGENET1K_V2.url)
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    assert W.torchvision_cache_path(ResNet50_Weights.IMAGENET1K_V2) == path

    model = create_model("resnet50", pretrained=True, num_classes=3)
    assert model.dala_config["weight_source"] == "imagenet:torchvision/ResNet50_Weights.IMAGENET1K_V2"
    ref = reference.state_dict()
    for key, value in model.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(value, ref[key]), key
    assert model.fc.out_features == 3

    dala = create_model("dala_resnet50", pretrained=True)
    assert dala.dala_config["weight_source"].startswith("imagenet:torchvision/ResNet50_Weights.IMAGENET1K_V2")
    assert "attention and head random" in dala.dala_config["weight_source"]
    assert torch.equal(dala.layer4[2].conv3.weight, reference.layer4[2].conv3.weight)
    assert torch.equal(dala.conv1.weight, reference.conv1.weight)

    per_block = create_model("dala_resnet50", pretrained=True, placement="per_block")
    assert torch.equal(per_block.layer4[0].bn3.running_var, reference.layer4[0].bn3.running_var)


def test_unusable_cached_file_falls_back_with_a_reason(empty_caches, no_downloads):
    from torchvision.models import ResNet50_Weights

    path = W.torchvision_cache_path(ResNet50_Weights.IMAGENET1K_V2)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    src = create_model("resnet50", pretrained=True).dala_config["weight_source"]
    assert src.startswith("random (cached weights at") and "delete the file" in src

    torch.save({"conv1.weight": torch.zeros(1)}, path)  # a state dict of something else
    with pytest.warns(UserWarning, match="do not fit"):
        src = create_model("resnet50", pretrained=True).dala_config["weight_source"]
    assert "do not fit this model" in src


def test_densenet_legacy_keys_are_renamed():
    sd = {"features.denseblock1.denselayer1.norm.1.weight": 1, "features.conv0.weight": 2}
    assert W._fix_densenet_keys(sd) == {"features.denseblock1.denselayer1.norm1.weight": 1, "features.conv0.weight": 2}


def test_timm_weights_from_the_hf_cache(empty_caches, no_downloads, monkeypatch):
    import timm

    hub = empty_caches / "hub_cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    torch.manual_seed(0)
    reference = timm.create_model("seresnet50", pretrained=False)
    _lay_out_hf_cache(hub, "timm/seresnet50.a1_in1k", reference.state_dict())

    model = create_model("seresnet50", pretrained=True)
    assert model.dala_config["weight_source"] == "imagenet:timm/seresnet50.a1_in1k"
    ref = reference.state_dict()
    for key, value in model.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(value, ref[key]), key
    assert model.fc.out_features == 2


def test_dinov2_weights_resampled_to_a_smaller_input(empty_caches, no_downloads, monkeypatch):
    import timm

    hub = empty_caches / "hub_cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    torch.manual_seed(0)
    reference = timm.create_model("vit_base_patch14_dinov2", pretrained=False, num_classes=0)  # 518 px
    _lay_out_hf_cache(hub, "timm/vit_base_patch14_dinov2.lvd142m", reference.state_dict())

    model = create_model("dinov2_vitb14", pretrained=True, img_size=112)
    assert model.dala_config["weight_source"] == "lvd142m:timm/vit_base_patch14_dinov2.lvd142m"
    assert model.dala_config["input_size"] == 112
    assert model.pos_embed.shape == (1, 1 + 8 * 8, 768)
    assert torch.equal(model.blocks[3].attn.qkv.weight, reference.blocks[3].attn.qkv.weight)
    assert torch.equal(model.cls_token, reference.cls_token)


def test_weights_module_keeps_no_network_or_env_helpers_of_its_own():
    # one owner for the offline flag, the probe and the HF cache: dala.net
    from dala import net

    for name in ("_env_true", "_probe_cache", "_socket_timeout", "availability", "pretrained_ready"):
        assert not hasattr(W, name), name
    assert W.hf_hub_cache_dir is net.hf_hub_cache_dir and W.can_reach is net.can_reach


def test_weights_module_does_not_import_the_registry():
    # the registry builds models with dala.models.weights; availability reads the registry: no circle
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(W))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {m for m in imported if m and m.startswith("dala.models")}, imported


def test_pretrained_ready_offline(empty_caches, no_downloads):
    from dala.models.availability import pretrained_ready

    assert pretrained_ready("resnet50") is False  # not cached, DALA_OFFLINE=1: no probe
    assert pretrained_ready("tiny_cnn") is False  # no pretrained weights at all


def test_availability_reads_only_the_cache(empty_caches, no_downloads, monkeypatch):
    from torchvision.models import VGG16_Weights

    from dala.models import availability as W  # noqa: N811 (the module that answers now)

    assert W.availability("torchvision", VGG16_Weights.IMAGENET1K_V1) == "not cached"
    assert W.availability("timm", "seresnet50") == "not cached"
    hub = empty_caches / "hub_cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    _lay_out_hf_cache(hub, "timm/seresnet50.a1_in1k", {"x": torch.zeros(1)})
    assert W.availability("timm", "seresnet50") == "cached"
