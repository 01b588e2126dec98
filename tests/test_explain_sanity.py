"""The model-randomisation sanity check (Adebayo et al. 2018) on every registry model's CAM target:
with the top re-initialised (from the target layer to the logits), Grad-CAM's map must change.

Random weights suffice: a target whose map does not depend on the weights above it fails here
whatever the weights (torchvision Swin-T's final ``norm`` did: see its registry entry). Each model
at the smallest input its CAM grid allows (ViT-B/16 only takes 224 px).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dala.models import create_model, get_spec, list_models

# px per model: the smallest where the CAM grid is at least 2x2 (Swin-T and the /32 CNNs: 64 px)
SIZES = {"vit_b_16": 224, "dinov2_vitb14": 56, "tiny_cnn": 32}
OPTIONS = {"dinov2_vitb14": {"img_size": 56}}


@pytest.mark.slow  # ten models, VGG16's 134 M parameters among them: ~60-100 s on 2 cores
@pytest.mark.parametrize("name", list_models())
def test_top_randomisation_changes_every_registry_models_map(name):
    from dala.explain.faithfulness import sanity_randomization

    torch.manual_seed(0)
    model = create_model(name, pretrained=False, **OPTIONS.get(name, {})).eval()
    with torch.no_grad():  # torchvision's ViT zero-initialises its head: no gradient, a flat map until trained
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and not module.weight.any():
                module.weight.normal_(0.0, 0.02)
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    res = sanity_randomization(model, image, method="gradcam", input_size=SIZES.get(name, 64), seed=0)
    assert float(res["map"].std()) > 1e-3, f"{name}: the map before randomisation is flat: the check says nothing"
    assert res["passed"], (f"{name}: the map ignores the weights above its CAM target "
                           f"({get_spec(name).cam_layer}): Spearman {res['spearman']:.2f}, SSIM {res['ssim']:.2f}")
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    target = {id(m): n for n, m in model.named_modules()}[id(get_spec(name).target_layers(model)[0])]
    assert res["layers"] and all(order[n] >= order[target] for n in res["layers"])  # the top only
