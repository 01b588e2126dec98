"""dala.explain: methods x models on tiny inputs, hook/memory hygiene, grad modes, inputs, targets."""

from __future__ import annotations

import gc
import io
import warnings
from functools import lru_cache

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from dala.errors import ImageInputError
from dala.explain import METHODS, Explanation, ExplainError, explain, list_methods
from dala.explain.base import Explainer
from dala.explain.cams import GradCAMExplainer, get_method

FAST = list_methods(include_slow=False)
SLOW = [m for m in list_methods() if METHODS[m].slow]
SLOW_PARAMS = {"scorecam": {"batch_size": 32}, "ablationcam": {"batch_size": 32}}


class SmallCNN(nn.Module):
    """A few-hundred-parameter CNN with BatchNorm (for mode checks) and an inplace ReLU."""

    def __init__(self, classes: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True))
        self.body = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, stride=2), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        return self.fc(self.pool(self.body(self.stem(x))).flatten(1))


def small(seed: int = 3) -> SmallCNN:
    """Seed 3: Grad-CAM maps of both classes are non-flat on the test images (some random nets
    give an all-zero map: every channel weighted negatively)."""
    torch.manual_seed(seed)
    return SmallCNN().eval()


def rgb(h=46, w=70, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def check_map(m: np.ndarray, shape) -> None:
    assert m.shape == shape and m.dtype == np.float32
    assert np.isfinite(m).all() and m.min() >= 0.0 and m.max() <= 1.0


# ----------------------------------------------------------------------------- registry
def test_method_registry():
    assert list_methods()[:1] == ["gradcam"]
    assert {"gradcam", "gradcam++", "xgradcam", "eigencam", "layercam", "scorecam", "ablationcam",
            "dt-gradcam"} == set(METHODS)
    assert set(SLOW) == {"scorecam", "ablationcam"}
    for name, cls in METHODS.items():
        assert issubclass(cls, Explainer) and cls.name == name and cls.description
    assert get_method("Grad-CAM") is GradCAMExplainer
    with pytest.raises(ExplainError, match="unknown explanation method"):
        get_method("saliency")


@pytest.mark.parametrize("method", list_methods())
def test_every_method_on_small_cnn(method):
    model = small()
    out = explain(model, [rgb(), rgb(seed=1)], method=method, target_layers=[model.body[0]], input_size=16,
                  **SLOW_PARAMS.get(method, {}))
    assert len(out) == 2
    for e in out:
        assert isinstance(e, Explanation) and e.method == method
        check_map(e.heatmap, (16, 16))
        check_map(e.heatmap_original, (46, 70))
        assert e.overlay.shape == (46, 70, 3) and e.overlay.dtype == np.uint8
        assert abs(sum(e.probs) - 1) < 1e-5 and e.pred == int(np.argmax(e.probs)) and e.target == e.pred
        assert (e.dt_region is not None) == (method == "dt-gradcam")


def test_explainer_call_contract():
    model = small()
    x = torch.randn(3, 3, 20, 24)
    maps = GradCAMExplainer(model, [model.body[0]])(x, targets=[0, 1, 1])
    check_map(maps, (3, 20, 24))
    with pytest.raises(ExplainError, match="batch_size"):
        GradCAMExplainer(model, [model.body[0]], batch_size=4)
    with pytest.raises(ExplainError, match="target_layers"):
        GradCAMExplainer(model, [])


# ----------------------------------------------------------------------------- registry models
HEAVY = {"vgg16", "vit_b_16", "swin_t", "dinov2_vitb14", "densenet121"}
SIZES = {"vit_b_16": 224, "dinov2_vitb14": 56}  # torchvision ViT is fixed at 224; DINOv2 built at 56


def _registry_cases():
    try:
        from dala.models import list_models
        names = list_models()
    except Exception:  # the models area not built yet
        return []
    cases = []
    for name in names:
        if name == "tiny_cnn":
            methods = list_methods()
        elif name in HEAVY:
            methods = ["gradcam"]
        else:
            methods = FAST
        cases += [pytest.param(name, m, id=f"{name}-{m}",
                               marks=[pytest.mark.slow] if name == "vit_b_16" else []) for m in methods]
    return cases


@lru_cache(maxsize=1)  # cases are ordered by model: one model alive at a time
def _registry_model(name):
    from dala.models import create_model

    options = {"img_size": 56} if name == "dinov2_vitb14" else {}
    torch.manual_seed(0)
    return create_model(name, pretrained=False, **options)


@pytest.mark.parametrize("name,method", _registry_cases())
def test_registry_models(name, method):
    from dala.models import get_spec

    model = _registry_model(name)
    size = SIZES.get(name, 32 if name == "tiny_cnn" else 64)
    params = {"batch_size": 64} if METHODS[method].slow else {}
    hooks_before = [len(t._forward_hooks) for t in get_spec(name).target_layers(model)]
    (e,) = explain(model, rgb(), method=method, input_size=size, **params)  # spec from model.dala_config
    check_map(e.heatmap, (size, size))
    check_map(e.heatmap_original, (46, 70))
    assert e.overlay.shape == (46, 70, 3)
    assert [len(t._forward_hooks) for t in get_spec(name).target_layers(model)] == hooks_before


def test_dala_resnet50_target_is_attention_output():
    from dala.models import get_spec

    model = _registry_model("dala_resnet50")
    targets = get_spec("dala_resnet50").target_layers(model)
    assert targets and all("attention" in type(t).__module__ or "Gate" in type(t).__name__ for t in targets)
    seen = []
    h = targets[0].register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    try:
        explain(model, rgb(), input_size=64)
    finally:
        h.remove()
    assert seen and seen[0][1] == 2048  # the gate's output: layer 4's 2048 channels


# ----------------------------------------------------------------------------- hygiene
def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


def _live_tensors():
    gc.collect()
    with warnings.catch_warnings():  # isinstance() on some torch.distributed objects warns
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def test_no_hook_or_memory_leak_after_100_calls():
    model = small()
    x = torch.randn(1, 3, 12, 12)
    explainer = GradCAMExplainer(model, [model.body[0]])
    explainer(x)  # warm up
    hooks, tensors = _hook_count(model), _live_tensors()
    for _ in range(100):
        explainer(x)
    assert _hook_count(model) == hooks == 0
    assert _live_tensors() <= tensors + 5
    for method in ("eigencam", "dt-gradcam", "ablationcam"):
        for _ in range(3):
            explain(model, rgb(8, 8), method=method, target_layers=[model.body[0]], input_size=8)
        assert _hook_count(model) == 0
    assert model.body[0] in list(model.modules())  # AblationCAM swapped its layer back


def test_modes_grads_and_requires_grad_restored():
    model = small()
    model.train()
    model.stem[1].eval()                       # a frozen-stem BatchNorm in eval inside a training model
    model.stem[0].weight.requires_grad_(False)
    model.fc.weight.grad = torch.ones_like(model.fc.weight)  # a training step's gradient
    explain(model, rgb(), target_layers=[model.body[0]], input_size=16)
    assert model.training and model.body.training and not model.stem[1].training
    assert not model.stem[0].weight.requires_grad and model.fc.weight.requires_grad
    assert torch.equal(model.fc.weight.grad, torch.ones_like(model.fc.weight))
    assert model.body[0].weight.grad is None


@pytest.mark.parametrize("ctx", ["inference_mode", "no_grad"])
def test_works_under_inference_mode_and_no_grad(ctx):
    model = small()
    reference = explain(model, rgb(), target_layers=[model.body[0]], input_size=16)[0].heatmap
    with getattr(torch, ctx)():
        got = explain(model, rgb(), target_layers=[model.body[0]], input_size=16)[0].heatmap
        maps = GradCAMExplainer(model, [model.body[0]])(torch.randn(1, 3, 16, 16))
    assert reference.max() == 1.0 and np.allclose(got, reference, atol=1e-6)
    check_map(maps, (1, 16, 16))


def test_works_with_every_layer_frozen():
    model = small()
    reference = explain(model, rgb(), target_layers=[model.body[0]], input_size=16)[0].heatmap
    for p in model.parameters():
        p.requires_grad_(False)
    got = explain(model, rgb(), method="layercam", target_layers=[model.body[0]], input_size=16)[0].heatmap
    frozen_gradcam = explain(model, rgb(), target_layers=[model.body[0]], input_size=16)[0].heatmap
    assert got.max() == 1.0 and np.allclose(frozen_gradcam, reference, atol=1e-6)
    assert not any(p.requires_grad for p in model.parameters())


# ----------------------------------------------------------------------------- inputs and targets
def test_overlay_at_original_size_700x460():
    model = small()
    (e,) = explain(model, rgb(460, 700), target_layers=[model.body[0]], input_size=32)
    assert e.heatmap.shape == (32, 32)
    assert e.heatmap_original.shape == (460, 700) and e.overlay.shape == (460, 700, 3)
    assert e.size == (700, 460)


def test_accepts_pil_arrays_paths_bytes_and_odd_modes(tmp_path):
    model = small()
    base = rgb(30, 40)
    path = tmp_path / "x.png"
    Image.fromarray(base).save(path)
    buf = io.BytesIO()
    Image.fromarray(base).convert("RGBA").save(buf, format="PNG")
    inputs = [Image.fromarray(base), base, str(path), path, buf.getvalue(), base[..., 0],
              base.astype(np.float32) / 255.0, Image.fromarray(base).convert("P"),
              np.concatenate([base, np.full((30, 40, 1), 255, np.uint8)], axis=-1)]
    out = explain(model, inputs, target_layers=[model.body[0]], input_size=16, max_batch=4)
    assert len(out) == len(inputs)
    assert all(e.overlay.shape == (30, 40, 3) for e in out)
    assert np.allclose(out[0].heatmap, out[2].heatmap) and np.allclose(out[0].heatmap, out[4].heatmap)
    (single,) = explain(model, base, target_layers=[model.body[0]], input_size=16)  # one image, no list
    assert np.allclose(single.heatmap, out[1].heatmap)


def test_bad_images_raise_image_input_error(tmp_path):
    model = small()
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    for bad in (text, b"garbage", tmp_path / "missing.png", np.zeros((4, 4, 5), np.uint8), 3.5):
        with pytest.raises(ImageInputError):
            explain(model, [bad], target_layers=[model.body[0]], input_size=16)


def test_targets_by_index_and_name():
    model = small()
    model.dala_config = {"num_classes": 2, "class_names": ["benign", "malignant"]}
    images = [rgb(), rgb(seed=2)]
    kw = dict(target_layers=[model.body[0]], input_size=16)
    pred = explain(model, images, **kw)
    assert [e.target for e in pred] == [e.pred for e in pred] and pred[0].pred_label in ("benign", "malignant")
    for target, want in ((0, 0), (1, 1), ("malignant", 1), ("Benign", 0), ("1", 1)):
        out = explain(model, images, target=target, **kw)
        assert [e.target for e in out] == [want, want] and out[0].target_label == ["benign", "malignant"][want]
    assert [e.target for e in explain(model, images, target=[None, 0], **kw)] == [pred[0].pred, 0]
    t0 = explain(model, images[:1], target=0, **kw)[0].heatmap
    t1 = explain(model, images[:1], target=1, **kw)[0].heatmap
    assert not np.allclose(t0, t1)  # a 2-class linear head: the two classes' maps differ
    for bad in (2, -1, "normal"):
        with pytest.raises(ExplainError):
            explain(model, images, target=bad, **kw)


def test_bad_requests_raise_explain_error():
    model = small()
    kw = dict(target_layers=[model.body[0]], input_size=16)
    with pytest.raises(ExplainError, match="unknown explanation method"):
        explain(model, rgb(), method="nope", **kw)
    with pytest.raises(ExplainError, match="does not take"):
        explain(model, rgb(), method="gradcam", rule="otsu", **kw)
    with pytest.raises(ExplainError, match="alpha"):
        explain(model, rgb(), alpha=1.5, **kw)
    with pytest.raises(ExplainError, match="rule"):
        explain(model, rgb(), method="dt-gradcam", rule="magic", **kw)


def test_default_target_layer_is_last_conv_without_spec():
    model = small()
    a = explain(model, rgb(), input_size=16)[0].heatmap
    b = explain(model, rgb(), target_layers=[model.body[0]], input_size=16)[0].heatmap
    assert np.allclose(a, b)


# ----------------------------------------------------------------------------- real images
def test_real_breakhis_images(real_samples):
    from dala.models import create_model

    torch.manual_seed(0)
    model = create_model("tiny_cnn", pretrained=False)
    for method in ("gradcam", "dt-gradcam"):
        out = explain(model, [str(p) for p in real_samples], method=method, input_size=64)
        assert len(out) == len(real_samples)
        for e in out:
            check_map(e.heatmap, (64, 64))
            assert e.overlay.shape == (460, 700, 3) and e.heatmap_original.shape == (460, 700)


def test_graph_cut_at_target_gives_the_same_maps(monkeypatch):
    """The backward starts at the target layer (fast path); maps equal the full-backward ones,
    also with an in-place ReLU right after the target (stem[1] -> ReLU(inplace=True))."""
    model = small()
    for layer in (model.body[0], model.stem[1]):
        for method in ("gradcam", "gradcam++", "layercam"):
            cls = METHODS[method]
            fast = explain(model, rgb(), method=method, target_layers=[layer], input_size=16)[0].heatmap
            monkeypatch.setattr(cls, "cut_below_target", False)
            full = explain(model, rgb(), method=method, target_layers=[layer], input_size=16)[0].heatmap
            monkeypatch.undo()
            assert fast.max() == 1.0 and np.allclose(fast, full, atol=1e-6)
    two = explain(model, rgb(), target_layers=[model.stem[1], model.body[0]], input_size=16)[0].heatmap
    check_map(two, (16, 16))  # several target layers: the input requires grad instead


# ----------------------------------------------------------------------------- one eval preprocessing
def test_explain_feeds_the_model_exactly_the_eval_transform_output():
    # prediction, evaluation and explanation see one input: dala.data.dataset.build_transform("eval")
    from dala.data.dataset import build_transform

    model = small()
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    image = rgb(h=61, w=93, seed=4)  # odd sizes: any resize difference would show
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    explain(model, [image], method="gradcam", target_layers=[model.body[0]], input_size=40, mean=mean, std=std)
    expected = build_transform("eval", size=40, mean=mean, std=std)(Image.fromarray(image))  # (3, 40, 40)
    assert seen and seen[0].shape == (1, 3, 40, 40)
    assert torch.equal(seen[0][0], expected)


def test_non_finite_logits_are_an_error_not_a_benign_prediction():
    model = small()
    with torch.no_grad():
        model.fc.bias[0] = float("nan")
    with pytest.raises(ExplainError, match="NaN or infinite scores for 1 of 1 image"):
        explain(model, [rgb()], method="gradcam", target_layers=[model.body[0]])


def test_explanation_names_the_dt_region_not_a_mask():
    model = small()
    (e,) = explain(model, [rgb()], method="dt-gradcam", target_layers=[model.body[0]])
    assert e.dt_region is not None and e.dt_region_original.shape == (46, 70)
    assert not hasattr(e, "mask") and not hasattr(e, "mask_original")
