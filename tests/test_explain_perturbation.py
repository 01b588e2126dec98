"""Faithfulness by perturbation (deletion / insertion AUC, ROAD): on a trained tiny_cnn, Grad-CAM
beats a random map; the API and the CLI columns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dala.errors import DalaError
from dala.explain import explain, faithfulness_scores, random_map
from dala.explain.perturbation import mean_interval, perturbation_curves, relevance_order


@pytest.fixture(scope="module")
def trained(tiny_synth_root):
    """tiny_cnn trained 3 epochs on the tiny synthetic set (96 images, 64 px): ~10 s on 2 cores."""
    from dala.data.dataset import build_transform
    from dala.data.images import load_rgb
    from dala.data.index import load_index
    from dala.models import create_model

    index = load_index(tiny_synth_root)
    tf = build_transform("eval", size=64)
    x = torch.stack([tf(load_rgb(p)) for p in index["path"]])  # (N, 3, 64, 64)
    y = torch.tensor(index["target"].astype(int).to_numpy())
    torch.manual_seed(0)
    model = create_model("tiny_cnn", pretrained=False)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(3):
        model.train()
        for batch in torch.randperm(len(x)).split(16):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            opt.step()
    model.eval()
    malignant = [load_rgb(p) for p in index.loc[index["target"] == 1, "path"].head(6)]
    return model, malignant


@pytest.mark.slow  # the training fixture: 10-30 s on 2 shared cores
def test_gradcam_deletion_auc_beats_a_random_map_on_a_trained_model(trained):
    model, images = trained
    ours, rand = [], []
    for i, image in enumerate(images):
        (e,) = explain(model, [image], method="gradcam", target=1)
        ours.append(faithfulness_scores(model, e, steps=8, road=False)["deletion_auc"])
        noise = random_map(e.heatmap.shape, seed=i)
        rand.append(faithfulness_scores(model, e, heatmap=noise, steps=8, road=False)["deletion_auc"])
    ours, rand = np.array(ours), np.array(rand)
    assert ours.mean() < rand.mean(), (ours, rand)  # lower is better for deletion
    assert (ours < rand).mean() >= 0.5


def test_scores_of_one_image_with_road(trained):
    model, images = trained
    s = faithfulness_scores(model, images[0], method="gradcam", target=1, steps=4, road_percentiles=(50,))
    assert set(s) >= {"deletion_auc", "insertion_auc", "road", "deletion_curve", "insertion_curve", "fractions"}
    assert 0.0 <= s["deletion_auc"] <= 1.0 and 0.0 <= s["insertion_auc"] <= 1.0 and -1.0 <= s["road"] <= 1.0
    assert len(s["deletion_curve"]) == len(s["fractions"]) == 5 and s["method"] == "gradcam"
    # at 0 removed the curve starts at the model's own probability of the class
    with torch.no_grad():
        (e,) = explain(model, [images[0]], method="gradcam", target=1)
    assert s["deletion_curve"][0] == pytest.approx(e.probs[1], abs=1e-5)
    # deterministic: seeded tie-breaking and ROAD noise
    again = faithfulness_scores(model, e, steps=4, road_percentiles=(50,))
    assert again["road"] == pytest.approx(s["road"]) and again["deletion_auc"] == pytest.approx(s["deletion_auc"])


def test_curves_remove_and_insert_in_map_order():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
    heat = np.arange(16, dtype=np.float32).reshape(4, 4)
    order = relevance_order(heat)
    assert order[0] == 15 and order[-1] == 0
    out = perturbation_curves(model, torch.randn(3, 4, 4), heat, 0, steps=4)
    assert out["fractions"].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    # fully removed (deletion) == fully inserted from nothing (insertion start): both the blurred input
    assert out["deletion_curve"][-1] == pytest.approx(out["insertion_curve"][0], abs=1e-6)
    assert out["deletion_curve"][0] == pytest.approx(out["insertion_curve"][-1], abs=1e-6)


def test_non_finite_model_is_an_error():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
    with torch.no_grad():
        model[1].bias[0] = float("inf")
    with pytest.raises(DalaError, match="NaN or infinite"):
        perturbation_curves(model, torch.randn(3, 4, 4), np.ones((4, 4), np.float32), 0, steps=2)


def test_mean_interval():
    st = mean_interval([0.1, 0.2, 0.3, float("nan"), 0.4])
    assert st["n"] == 4 and st["mean"] == pytest.approx(0.25) and st["low"] < 0.25 < st["high"]
    assert mean_interval([])["n"] == 0
