"""Temperature scaling, the locked threshold, conformal sets, TTA and selective prediction."""

from __future__ import annotations

import numpy as np
import pytest

from dala.calibration import (Calibration, CalibrationError, apply_temperature, calibrate, choose_threshold,
                              fit_temperature, metric_at_threshold, nll)
from dala.metrics import calibration_bins
from dala.uncertainty import (ConformalSets, CoverageError, check_coverage, selective_curve, set_coverage,
                              tta_probs, tta_summary)


def _overconfident(n: int, seed: int, scale: float = 4.0):
    """Labels and a model whose logits are ``scale`` times the calibrated ones (too sure)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    logit = (2 * y - 1) * 0.8 + rng.normal(0, 1, n)  # calibrated: p = sigmoid(2 * 0.8 * ...) roughly
    z = np.stack([-logit, logit], 1) * scale / 2
    p = np.exp(z - z.max(1, keepdims=True))
    return y, p / p.sum(1, keepdims=True)


def test_temperature_scaling_lowers_ece_on_an_overconfident_model():
    y_val, p_val = _overconfident(600, 0)
    y_test, p_test = _overconfident(600, 1)
    t = fit_temperature(p_val, y_val)
    assert t > 1.5  # over-confident: the fitted temperature softens
    before = calibration_bins(y_test, p_test)["ece"]
    after = calibration_bins(y_test, apply_temperature(p_test, t))["ece"]
    assert after < 0.6 * before, (before, after)
    assert nll(apply_temperature(p_test, t), y_test) < nll(p_test, y_test)
    # never changes the arg-max
    assert np.array_equal(apply_temperature(p_test, t).argmax(1), p_test.argmax(1))


def test_fitted_temperature_is_the_nll_minimum():
    y, p = _overconfident(400, 2)
    t = fit_temperature(p, y)
    grid = np.exp(np.linspace(np.log(0.2), np.log(10), 400))
    best = grid[np.argmin([nll(apply_temperature(p, g), y) for g in grid])]
    assert abs(np.log(t) - np.log(best)) < 0.02


def test_locked_threshold_is_the_validation_optimum():
    y, p = _overconfident(300, 3)
    p = p.copy()
    p[:, 1] = p[:, 1] ** 3  # shift the operating point away from 0.5
    p[:, 0] = 1 - p[:, 1]
    thr = choose_threshold(y, p[:, 1], metric="gmean")
    grid = np.linspace(0.001, 0.999, 999)
    best = max(metric_at_threshold(y, p[:, 1], t, "gmean") for t in grid)
    assert metric_at_threshold(y, p[:, 1], thr, "gmean") >= best - 1e-9
    assert metric_at_threshold(y, p[:, 1], thr, "gmean") > metric_at_threshold(y, p[:, 1], 0.5, "gmean")


def test_calibrate_records_ece_before_and_after_and_round_trips():
    y, p = _overconfident(500, 4)
    cal = calibrate(p, y, fitted_on="val: 10 patients")
    assert cal.fitted and cal.ece_after < cal.ece_before
    again = Calibration.from_config({"calibration": cal.to_dict()})
    assert again == cal
    assert "temperature-scaled" in again.label


@pytest.mark.parametrize("config", [None, {}, {"calibration": "garbage"}, {"calibration": {"temperature": "hot"}},
                                    {"calibration": {"temperature": float("nan")}},
                                    {"calibration": {"temperature": 1e9}}, {"calibration": {"threshold": 7}}])
def test_older_or_damaged_checkpoint_config_is_uncalibrated(config):
    cal = Calibration.from_config(config)
    assert not cal.fitted and cal.temperature == 1.0 and cal.threshold == 0.5
    assert "uncalibrated" in cal.label


@pytest.mark.parametrize("bad", [[[np.nan, 1.0]], [[0.5, np.inf]], [0.2, 0.8], np.zeros((0, 2))])
def test_nan_or_misshapen_probabilities_are_refused(bad):
    with pytest.raises(CalibrationError):
        fit_temperature(bad, [0] * max(1, len(np.atleast_1d(bad))))


def test_conformal_sets_reach_their_coverage_on_held_out_data():
    covs = []
    for seed in range(20):
        y_cal, p_cal = _overconfident(300, 100 + seed)
        y_new, p_new = _overconfident(300, 200 + seed)
        cs = ConformalSets.fit(p_cal, y_cal)
        covs.append(set_coverage(cs.predict_sets(p_new, coverage=0.9), y_new))
    assert np.mean(covs) >= 0.88, covs  # guaranteed >= 0.9 in expectation; 20 trials of 300 images
    assert min(covs) >= 0.83


def test_conformal_sets_grow_with_coverage_and_read_as_labels():
    y, p = _overconfident(300, 7)
    cs = ConformalSets.fit(p, y)
    small, big = cs.predict_sets(p, coverage=0.6), cs.predict_sets(p, coverage=0.99)
    assert small.sum() <= big.sum()
    words = cs.describe(big)
    assert all(w.startswith("{") for w in words) and any("benign, malignant" in w for w in words)


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, "high", None])
def test_coverage_outside_the_open_interval_is_refused(bad):
    with pytest.raises(CoverageError):
        check_coverage(bad)


def test_selective_prediction_gains_accuracy_by_referring_the_uncertain():
    y, p = _overconfident(1000, 8, scale=1.0)
    curve = selective_curve(y, p)
    full = curve.iloc[0]
    assert full["coverage"] == 1.0
    half = curve.iloc[(curve["coverage"] - 0.5).abs().argmin()]
    assert half["accuracy"] > full["accuracy"] + 0.05
    assert curve["referred"].between(0, 1).all()


def test_tta_over_dihedral_views_averages_eight_predictions():
    import torch

    from dala.data.augment import dihedral

    x = torch.rand(3, 3, 16, 16)
    weights = torch.rand(16 * 16)

    def predict(batch):  # a model that is not rotation-invariant: reads a fixed pixel pattern
        s = torch.sigmoid((batch.mean(1).flatten(1) * weights).sum(1) - weights.sum() / 2)
        return torch.stack([1 - s, s], 1).numpy()

    views = tta_probs(predict, x)
    assert views.shape == (8, 3, 2)
    assert np.allclose(views[5], predict(dihedral(x, 5)))
    summary = tta_summary(views)
    assert np.allclose(summary["probs"], views.mean(0)) and (summary["std_malignant"] > 0).all()
    # a constant image looks the same from every side: no spread
    const = tta_summary(tta_probs(predict, torch.full((1, 3, 16, 16), 0.3)))
    assert np.allclose(const["std_malignant"], 0, atol=1e-6)
