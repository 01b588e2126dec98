"""DT Grad-CAM threshold rules, faithfulness scores on hand-computable blobs, the sanity check."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dala.explain import ExplainError, explain
from dala.explain.dt_gradcam import apply_threshold, dt_region, dynamic_threshold, otsu_threshold
from dala.explain.faithfulness import (cascading_randomization, energy_inside, iou, iou_at_threshold,
                                       map_similarity, pointing_game, sanity_randomization,
                                       score_explanation, ssim)


def two_level(h=10, w=10, lo=0.2, hi=0.8, cols=3):
    m = np.full((h, w), lo, np.float32)
    m[:, :cols] = hi
    return m


# ----------------------------------------------------------------------------- DT rules
def test_otsu_separates_two_levels():
    m = two_level()
    t = otsu_threshold(m)
    assert 0.2 < t <= 0.8 and abs(t - 0.5) < 0.02  # the middle of the tied run between the levels
    thresholded, mask = apply_threshold(m, t)
    assert mask.sum() == 30 and mask[:, :3].all()
    assert np.all(thresholded[:, 3:] == 0) and np.all(thresholded[:, :3] == np.float32(0.8))


def test_mean_std_percentile_fixed_rules():
    m = np.arange(100, dtype=np.float32).reshape(10, 10) / 99.0
    assert dynamic_threshold(m, "mean_std", k=0.0) == pytest.approx(0.5)
    assert dynamic_threshold(m, "mean_std", k=1.0) == pytest.approx(0.5 + m.std(), rel=1e-6)
    assert dynamic_threshold(m, "percentile", q=90) == pytest.approx(np.percentile(m, 90))
    assert dynamic_threshold(m, "fixed", value=0.3) == 0.3
    region, t = dt_region(m, "percentile", q=75)
    assert region.sum() == 25 and t == pytest.approx(74.25 / 99)
    with pytest.raises(ExplainError):
        dynamic_threshold(m, "magic")
    with pytest.raises(ExplainError):
        dynamic_threshold(m, "percentile", q=120)


def test_flat_map_has_no_region():
    for value in (0.0, 0.7, 1.0):
        for rule in ("otsu", "mean_std", "percentile", "fixed"):
            region, _ = dt_region(np.full((5, 5), value, np.float32), rule)
            assert region.shape == (5, 5) and not region.any()


def test_dt_gradcam_explanation_fields():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 2))
    img = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    kw = dict(target_layers=[model[0]], input_size=16)
    plain = explain(model, img, **kw)[0]
    for rule, params in (("otsu", {}), ("mean_std", {"k": 0.5}), ("percentile", {"q": 70.0})):
        (e,) = explain(model, img, method="dt-gradcam", rule=rule, **kw, **params)
        t = dynamic_threshold(plain.heatmap, rule, **params)
        assert e.threshold == pytest.approx(t, abs=1e-6) and e.params["rule"] == rule
        assert e.dt_region.shape == (16, 16) and e.dt_region.dtype == bool and e.dt_region_original.shape == (40, 60)
        assert np.array_equal(e.dt_region, (plain.heatmap >= t) & (plain.heatmap > 0))
        assert np.allclose(e.heatmap, np.where(e.dt_region, plain.heatmap, 0))
        assert np.all(e.heatmap[~e.dt_region] == 0)
    pct = explain(model, img, method="dt-gradcam", rule="percentile", q=70.0, **kw)[0]
    assert abs(pct.dt_region.mean() - 0.3) < 0.05  # top 30 % of the pixels


# ----------------------------------------------------------------------------- scores
def blob(h=40, w=40, cy=20, cx=20, sigma=3.0):
    yy, xx = np.mgrid[:h, :w]
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2)).astype(np.float32)


def box(h=40, w=40, y0=0, y1=0, x0=0, x1=0):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_pointing_game():
    heat = blob(cy=20, cx=20)
    assert pointing_game(heat, box(y0=15, y1=25, x0=15, x1=25)) is True
    off = box(y0=0, y1=10, x0=0, x1=10)
    assert pointing_game(heat, off) is False
    near = box(y0=23, y1=30, x0=15, x1=25)                   # 3 px below the peak
    assert pointing_game(heat, near) is False
    assert pointing_game(heat, near, tolerance=3) is True
    assert pointing_game(heat, near, tolerance=2.5) is False
    assert pointing_game(heat, np.zeros((40, 40), bool)) is False
    assert pointing_game(np.zeros((40, 40)), box(y0=15, y1=25, x0=15, x1=25)) is False
    # a map at another resolution is resized onto the mask's frame
    assert pointing_game(blob(20, 20, 10, 10, 1.5), box(80, 80, 30, 50, 30, 50)) is True


def test_energy_inside():
    heat = np.zeros((40, 40), np.float32)
    heat[10:20, 10:20] = 1.0                                  # 100 px of mass
    assert energy_inside(heat, box(y0=10, y1=20, x0=10, x1=15)) == pytest.approx(0.5)
    assert energy_inside(heat, box(y0=0, y1=40, x0=0, x1=40)) == pytest.approx(1.0)
    assert energy_inside(heat, box(y0=30, y1=40, x0=30, x1=40)) == 0.0
    heat[30:40, 30:40] = 0.5                                  # +50 of mass outside the first box
    assert energy_inside(heat, box(y0=10, y1=20, x0=10, x1=20)) == pytest.approx(100 / 150)
    assert np.isnan(energy_inside(np.zeros((4, 4)), np.ones((4, 4), bool)))


def test_iou():
    a = box(y0=0, y1=10, x0=0, x1=10)                        # 100 px
    b = box(y0=0, y1=10, x0=5, x1=15)                        # 100 px, 50 shared
    assert iou(a, b) == pytest.approx(50 / 150)
    assert iou(a, a) == 1.0 and iou(a, box(y0=20, y1=30, x0=20, x1=30)) == 0.0
    assert np.isnan(iou(np.zeros((5, 5), bool), np.zeros((5, 5), bool)))
    heat = np.zeros((40, 40), np.float32)
    heat[0:10, 0:10] = 0.9
    heat[0:10, 10:20] = 0.3
    assert iou_at_threshold(heat, b, threshold=0.5) == pytest.approx(50 / 150)
    assert iou_at_threshold(heat, b, threshold=0.2) == pytest.approx(100 / 200)


def test_score_explanation_uses_original_frame_and_dt_region():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 2))
    img = np.random.default_rng(1).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    for method in ("gradcam", "dt-gradcam"):
        (e,) = explain(model, img, method=method, target_layers=[model[0]], input_size=16)
        y, x = np.unravel_index(np.argmax(e.heatmap_original), e.heatmap_original.shape)
        mask = np.zeros((30, 50), bool)
        mask[max(0, y - 2):y + 3, max(0, x - 2):x + 3] = True
        s = score_explanation(e, mask)
        assert s["pointing"] == 1.0 and 0 < s["energy_inside"] <= 1 and 0 <= s["iou"] <= 1
        assert s["mask_fraction"] == pytest.approx(mask.mean())
        if method == "dt-gradcam":
            assert s["threshold"] == pytest.approx(e.threshold)
            assert s["iou"] == pytest.approx(iou(e.dt_region_original, mask))
        else:
            region, t = dt_region(e.heatmap_original)
            assert s["iou"] == pytest.approx(iou(region, mask)) and s["threshold"] == pytest.approx(t)
    empty = score_explanation(e, np.zeros((30, 50), bool))
    assert np.isnan(empty["pointing"]) and np.isnan(empty["iou"])


def test_similarity_measures():
    a = blob()
    assert map_similarity(a, a)["spearman"] == pytest.approx(1.0)
    assert ssim(a, a) == pytest.approx(1.0)
    other = blob(cy=8, cx=32)
    sim = map_similarity(a, other)
    assert sim["pearson"] < 0.2 and sim["ssim"] < 0.9
    assert np.isnan(map_similarity(a, np.zeros_like(a))["spearman"])


# ----------------------------------------------------------------------------- sanity check
def test_sanity_randomization_changes_the_map():
    from dala.models import create_model, get_spec

    torch.manual_seed(0)
    model = create_model("tiny_cnn", pretrained=False)
    img = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = sanity_randomization(model, img, input_size=32)
    assert res["layers"] and res["layers"][0].startswith("attention") and any(n.startswith("head") for n in res["layers"])
    assert res["passed"] and res["spearman"] < 0.9 and res["ssim"] < 0.9
    assert res["map"].shape == res["map_randomised"].shape == (32, 32)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the original is untouched
    head = sanity_randomization(model, img, input_size=32, layers="head")
    assert all(n.startswith("head") for n in head["layers"])
    assert get_spec("tiny_cnn").target_layers(model)[0] is model.attention


def test_cascading_randomization_small_cnn():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    img = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    steps = cascading_randomization(model, img, target_layers=[model[2]], input_size=16)
    assert [s["k"] for s in steps] == [1, 2, 3]
    assert steps[0]["layers"] == ["6"] and steps[-1]["layers"] == ["0", "2", "6"]
    assert min(min(s["spearman"], s["ssim"]) for s in steps) < 0.9
