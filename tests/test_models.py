"""Contract tests over the whole model registry, plus DALAResNet50 options and attention blocks.

Every registry entry is built once (pretrained=False, a module-scoped fixture) and checked at the
smallest input it allows on a CPU: forward shape, gradients to every parameter, the CAM target as
a (B, C, h, w) map (forward hook and a real pytorch-grad-cam run), split(model) composing to the
model, a checkpoint round trip and the parameter count the registry states.
"""

from __future__ import annotations

import sys
import subprocess

import pytest
import torch
from torch import nn

from dala.models import create_model, get_spec, list_models
from dala.models.attention import ECAGate, SEGate, SpatialGate, eca_kernel_size, make_attention
from dala.models.checkpoint import load_checkpoint, save_checkpoint
from dala.models.dala_resnet import AttentionBottleneck, DALAResNet50
from dala.models.registry import ModelError

# smallest CPU-friendly input per model (ViT-B/16 is fixed at 224; DINOv2 is built at 112 here)
_SIZE = {"vit_b_16": 224, "vgg16": 32, "tiny_cnn": 32, "dinov2_vitb14": 112}
_OPTIONS = {"dinov2_vitb14": {"img_size": 112}}
_HEAVY = {"vgg16", "vit_b_16", "dinov2_vitb14", "swin_t"}  # batch 1 for these


def _input(name: str) -> torch.Tensor:
    side = _SIZE.get(name, 64)
    batch = 1 if name in _HEAVY else 2
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module", params=list_models())
def built(request):
    name = request.param
    torch.manual_seed(0)
    model = create_model(name, num_classes=2, pretrained=False, **_OPTIONS.get(name, {}))
    yield name, model
    del model


def test_registry_lists_the_paper_models():
    names = list_models()
    assert names[0] == "dala_resnet50"
    for n in ("resnet50", "seresnet50", "densenet121", "vgg16", "vgg16_inception", "vit_b_16", "swin_t",
              "dinov2_vitb14", "tiny_cnn"):
        assert n in names
    for n in names:
        spec = get_spec(n)
        assert spec.name == n and spec.description and spec.weights and spec.input_size > 0
        assert len(spec.mean) == 3 and len(spec.std) == 3


def test_forward_shape_config_and_param_count(built):
    name, model = built
    spec = get_spec(name)
    model.eval()
    x = _input(name)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (x.shape[0], 2)
    assert torch.isfinite(y).all()
    cfg = model.dala_config
    assert cfg["name"] == name and cfg["num_classes"] == 2
    assert cfg["weight_source"] == "random (pretrained=False)"
    assert all(cfg["options"][k] == v for k, v in _OPTIONS.get(name, {}).items())
    n_params = sum(p.numel() for p in model.parameters())
    assert spec.param_count(2, **_OPTIONS.get(name, {})) == n_params


def test_every_parameter_gets_a_gradient(built):
    name, model = built
    model.train()
    model.zero_grad(set_to_none=True)
    model(_input(name)).logsumexp(dim=1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{name}: no gradient for {missing[:5]}"
    model.zero_grad(set_to_none=True)  # free the memory before the next test


def test_cam_target_gives_a_spatial_map(built):
    name, model = built
    spec = get_spec(name)
    model.eval()
    x = _input(name)
    layers = spec.target_layers(model)
    assert layers and all(isinstance(m, nn.Module) for m in layers)
    seen = []
    handle = layers[0].register_forward_hook(lambda mod, inp, out: seen.append(out.detach().clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    act = seen[0]
    if spec.reshape_transform is not None:
        act = spec.reshape_transform(act)
    assert act.ndim == 4 and act.shape[0] == x.shape[0], f"{name}: CAM target gives {tuple(act.shape)}"
    assert act.shape[1] > 1 and act.shape[2] >= 1 and act.shape[3] >= 1

    if name == "vit_b_16":  # 224 px only: dinov2_vitb14 runs the same token reshape through Grad-CAM cheaper
        return
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with GradCAM(model=model, target_layers=layers, reshape_transform=spec.reshape_transform) as cam:
        heat = cam(input_tensor=x, targets=[ClassifierOutputTarget(1)] * x.shape[0])
    assert heat.shape == (x.shape[0], x.shape[2], x.shape[3])
    model.zero_grad(set_to_none=True)


def test_split_composes_to_the_model(built):
    name, model = built
    spec = get_spec(name)
    model.eval()
    x = _input(name)
    stem, top = spec.split(model)
    with torch.no_grad():
        expected = model(x)
        feats = stem(x)
        got = top(feats)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # the two halves own the model's parameters exactly once between them
    ps, pt = {id(p) for p in stem.parameters()}, {id(p) for p in top.parameters()}
    assert not ps & pt
    assert ps | pt == {id(p) for p in model.parameters()}
    assert ps and pt
    # the stem's output is smaller than its input once flattened per image (worth caching)
    assert feats[0].numel() <= 2 * x[0].numel() or name in ("vit_b_16", "dinov2_vitb14", "swin_t")


def test_checkpoint_round_trip(built, tmp_path):
    name, model = built
    model.eval()
    x = _input(name)
    folder = save_checkpoint(model, tmp_path / "ckpt", class_names=["benign", "malignant"], extra={"acc": 0.5})
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    loaded, cfg = load_checkpoint(folder)
    assert cfg["name"] == name and cfg["class_names"] == ["benign", "malignant"] and cfg["extra"] == {"acc": 0.5}
    assert cfg["input_size"] == model.dala_config["input_size"]
    assert not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=1e-6)
    del loaded


def test_param_count_of_defaults_matches_the_architecture():
    """The counts the registry states (and docs/models.md prints) are those of the real models."""
    for name in list_models():
        spec = get_spec(name)
        for n_cls in (2, 5):
            with torch.device("meta"):
                model, _ = spec.builder(num_classes=n_cls, pretrained=False, **spec.options)
            assert spec.param_count(n_cls) == sum(p.numel() for p in model.parameters()), (name, n_cls)


def test_unknown_model_and_option_raise_clear_errors():
    with pytest.raises(ModelError, match="unknown model 'resnet51'.*dala_resnet50"):
        create_model("resnet51", pretrained=False)
    with pytest.raises(ModelError, match="no option colour.*attention"):
        create_model("dala_resnet50", pretrained=False, colour="red")
    with pytest.raises(ModelError, match="divisible by 14"):
        create_model("dinov2_vitb14", pretrained=False, img_size=100)
    with pytest.raises(ModelError, match="num_classes"):
        create_model("tiny_cnn", num_classes=0)


# ---------------------------------------------------------------- DALAResNet50 options


@pytest.mark.parametrize("placement", ["output", "per_block"])
@pytest.mark.parametrize("attention", ["se", "eca", "spatial"])
def test_dala_resnet50_options(attention, placement):
    torch.manual_seed(0)
    model = create_model("dala_resnet50", pretrained=False, attention=attention, placement=placement, dropout=0.1)
    assert model.dala_config["options"]["attention"] == attention
    kinds = {"se": SEGate, "eca": ECAGate, "spatial": SpatialGate}
    if placement == "output":
        assert isinstance(model.attention, kinds[attention])
        assert model.cam_target is model.attention
        assert not any(isinstance(b, AttentionBottleneck) for b in model.layer4)
    else:
        assert isinstance(model.attention, nn.Identity)
        assert all(isinstance(b, AttentionBottleneck) and isinstance(b.attention, kinds[attention]) for b in model.layer4)
        assert model.cam_target is model.layer4[-1]
    assert get_spec("dala_resnet50").target_layers(model) == [model.cam_target]
    model.eval()
    with torch.no_grad():
        y = model(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 2)
    assert get_spec("dala_resnet50").param_count(2, attention=attention, placement=placement, dropout=0.1) == sum(
        p.numel() for p in model.parameters()
    )


def test_dala_resnet50_head_is_dual_activated_and_layer4_gate_is_se16():
    model = DALAResNet50(num_classes=3)
    linears = [m for m in model.head if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2048, 512), (512, 256), (256, 3)]
    acts = [m for m in model.head if not isinstance(m, nn.Linear)]
    assert isinstance(acts[0], nn.LeakyReLU) and acts[0].negative_slope == 0.01
    assert isinstance(acts[1], nn.ReLU)
    assert isinstance(model.attention, SEGate) and model.attention.hidden == 2048 // 16
    # with the gate on the output, the per-block variant adds three gates' worth of parameters
    per_block = DALAResNet50(placement="per_block")
    gate = sum(p.numel() for p in model.attention.parameters())
    assert sum(p.numel() for p in per_block.parameters()) - sum(p.numel() for p in DALAResNet50().parameters()) == 2 * gate


def test_dala_resnet50_without_attention_and_custom_head():
    model = DALAResNet50(attention="none", head_dims=(128,), leaky_slope=0.2)
    assert isinstance(model.attention, nn.Identity)
    assert [type(m) for m in model.head] == [nn.Linear, nn.LeakyReLU, nn.Linear]
    with pytest.raises(ValueError, match="placement"):
        DALAResNet50(placement="inside")
    with pytest.raises(ValueError, match="attention"):
        DALAResNet50(attention="cbam")


# ---------------------------------------------------------------- attention blocks


def test_se_gate_shapes_and_gate_values():
    torch.manual_seed(0)
    gate = SEGate(64, reduction=16)
    assert gate.hidden == 8  # floor of min_channels
    assert SEGate(2048).hidden == 128
    x = torch.randn(2, 64, 5, 7)
    assert gate(x).shape == x.shape
    nn.init.zeros_(gate.fc2.weight)
    nn.init.zeros_(gate.fc2.bias)  # sigmoid(0) = 0.5 everywhere
    torch.testing.assert_close(gate(x), x * 0.5)


def test_eca_gate_kernel_size_and_params():
    assert eca_kernel_size(2048) == 7 and eca_kernel_size(256) == 5 and eca_kernel_size(64) == 3
    gate = ECAGate(2048)
    assert sum(p.numel() for p in gate.parameters()) == 7
    x = torch.randn(2, 2048, 2, 2)
    out = gate(x)
    ratio = out / x  # one gate per (image, channel), the same at every position
    torch.testing.assert_close(ratio, ratio[..., :1, :1].expand_as(ratio))
    with pytest.raises(ValueError, match="odd"):
        ECAGate(16, kernel_size=4)


def test_spatial_gate_is_shared_across_channels():
    torch.manual_seed(0)
    gate = SpatialGate(32).eval()
    x = torch.rand(2, 32, 6, 6) + 0.1
    out = gate(x)
    assert out.shape == x.shape
    ratio = out / x  # one gate per (image, position), the same for every channel
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))
    assert (ratio > 0).all() and (ratio < 1).all()


def test_make_attention():
    assert isinstance(make_attention("se", 32, reduction=4), SEGate)
    assert make_attention("se", 32, reduction=4).hidden == 8
    assert isinstance(make_attention("eca", 32, reduction=16), ECAGate)  # reduction ignored
    assert isinstance(make_attention("spatial", 32), SpatialGate)
    assert isinstance(make_attention("none", 32), nn.Identity)
    assert isinstance(make_attention(None, 32), nn.Identity)
    with pytest.raises(ValueError, match="unknown attention kind 'cbam'"):
        make_attention("cbam", 32)


# ---------------------------------------------------------------- CLI


def test_models_ls_prints_the_registry(capsys):
    from dala.cli import main

    assert main(["models", "ls"]) == 0
    out = capsys.readouterr().out
    for name in list_models():
        assert name in out
    assert "25.22M" in out  # dala_resnet50 at 2 classes


def test_models_cli_is_import_light():
    code = "import sys, dala.models.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ------------------------------------------------------------------ random-weight initialisation
def test_zero_init_residual_turns_blocks_into_their_shortcuts():
    from dala.models.init import zero_init_residual

    model = create_model("dala_resnet50", pretrained=False, placement="per_block").eval()
    stem, top = get_spec("dala_resnet50").split(model)
    assert zero_init_residual(stem) == 3 + 4 + 6  # layer1..layer3 bottlenecks
    assert zero_init_residual(top) == 3  # layer4, attention bottlenecks included
    block = model.layer1[1]  # an identity block: now relu(x)
    x = torch.randn(2, 256, 8, 8)
    torch.testing.assert_close(block(x), torch.relu(x))
    tiny = create_model("tiny_cnn", pretrained=False)
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    assert zero_init_residual(tiny) == 0  # nothing residual: left as it is
    assert all(torch.equal(v, tiny.state_dict()[k]) for k, v in before.items())


def test_has_residual_stem_over_the_registry():
    from dala.models.init import has_residual_stem

    residual = {name for name in list_models() if has_residual_stem(name)}
    assert residual == {"dala_resnet50", "resnet50", "seresnet50"}
