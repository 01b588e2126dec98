"""The registry on CUDA (skipped without a GPU): a bf16-autocast training step at each model's
default input size, split(model) on the GPU, and a checkpoint loaded straight onto the GPU."""

from __future__ import annotations

import time

import pytest
import torch

from dala.models import create_model, get_spec, list_models
from dala.models.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("name", list_models())
def test_cuda_train_step_split_and_checkpoint(name, tmp_path):
    torch.manual_seed(0)
    spec = get_spec(name)
    dev = torch.device("cuda")
    model = create_model(name, pretrained=False).to(dev)
    side = model.dala_config["input_size"]
    x = torch.randn(8, 3, side, side, device=dev)
    y = torch.randint(0, 2, (8,), device=dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    model.train()
    for step in range(3):  # the last step is timed (the first ones warm up cuDNN)
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    print(f"\n{name}: bf16 train step, batch 8 at {side}px: {elapsed * 1000:.1f} ms")

    model.eval()
    stem, top = spec.split(model)
    with torch.no_grad():
        torch.testing.assert_close(top(stem(x)), model(x), rtol=1e-4, atol=1e-4)

    folder = save_checkpoint(model, tmp_path / "ckpt", class_names=["benign", "malignant"])
    loaded, _ = load_checkpoint(folder, map_location="cuda")
    assert next(loaded.parameters()).device.type == "cuda"
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-5)


def test_train_batch_transform_on_cuda_equals_the_cpu_one():
    """The engine's per-batch stain jitter runs on the device; a seed gives the same images there."""
    from dala.data.augment import TrainBatchTransform
    from dala.data.dataset import IMAGENET_MEAN, IMAGENET_STD

    x8 = torch.randint(0, 256, (6, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    batch = TrainBatchTransform(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    on_cpu = batch(x8, generator=torch.Generator().manual_seed(4))
    on_cuda = batch.to("cuda")(x8.cuda(), generator=torch.Generator().manual_seed(4))
    assert on_cuda.device.type == "cuda" and on_cuda.dtype == torch.float32
    torch.testing.assert_close(on_cuda.cpu(), on_cpu, atol=1e-4, rtol=0)
