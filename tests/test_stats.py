"""dala.stats: the patient-clustered bootstrap, paired comparisons and Holm, against the libraries
and hand-worked cases."""

from __future__ import annotations

import time

import numpy as np
import pytest
from imblearn.metrics import geometric_mean_score
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    matthews_corrcoef,
    precision_score,
    recall_score,
    roc_auc_score,
)

from dala import stats
from dala.metrics import MetricsInputError, patient_accuracy


def _simulate(rng, *, n_patients=60, per_patient=5, mean_acc=0.8, spread=8.0):
    """Patients with their own difficulty (Beta around ``mean_acc``): images within a patient are
    correlated, which is exactly what the clustered bootstrap must respect."""
    pats = np.repeat(np.arange(n_patients), per_patient)
    y = np.repeat(rng.integers(0, 2, n_patients), per_patient)
    p_right = np.repeat(rng.beta(mean_acc * spread, (1 - mean_acc) * spread, n_patients),
                        per_patient)
    right = rng.random(pats.shape[0]) < p_right
    conf = 0.5 + 0.5 * rng.random(pats.shape[0])  # in (0.5, 1]: a decided prediction
    prob = np.where(right == (y == 1), conf, 1 - conf)
    return y, prob, pats.astype(str)


def test_replicates_equal_the_libraries_with_sample_weights():
    rng = np.random.default_rng(3)
    y, prob, pats = _simulate(rng, n_patients=30)
    table = stats._table(stats._make(y, prob, pats, 0.5))
    w = stats.resample_weights(30, 20, np.random.default_rng(0))
    code = np.unique(pats, return_inverse=True)[1]
    y_hat = (prob >= 0.5).astype(int)
    lib = {
        "accuracy": lambda sw: accuracy_score(y, y_hat, sample_weight=sw),
        "balanced_accuracy": lambda sw: balanced_accuracy_score(y, y_hat, sample_weight=sw),
        "sensitivity": lambda sw: recall_score(y, y_hat, sample_weight=sw),
        "precision": lambda sw: precision_score(y, y_hat, sample_weight=sw, zero_division=0),
        "f1": lambda sw: f1_score(y, y_hat, sample_weight=sw),
        "f1_macro": lambda sw: f1_score(y, y_hat, average="macro", sample_weight=sw),
        "gmean": lambda sw: geometric_mean_score(y, y_hat, sample_weight=sw),
        "mcc": lambda sw: matthews_corrcoef(y, y_hat, sample_weight=sw),
        "roc_auc": lambda sw: roc_auc_score(y, prob, sample_weight=sw),
    }
    for metric, fn in lib.items():
        ours = stats._replicates(table, metric, w)
        for b in range(w.shape[0]):
            sw = w[b, code]  # a drawn patient's images count once per draw
            mask = sw > 0
            if len(np.unique(y[mask])) < 2:
                continue
            assert ours[b] == pytest.approx(fn(sw), abs=1e-12), metric


def test_patient_accuracy_replicate_equals_expanded_resample():
    rng = np.random.default_rng(4)
    y, prob, pats = _simulate(rng, n_patients=12, per_patient=3)
    table = stats._table(stats._make(y, prob, pats, 0.5))
    w = stats.resample_weights(12, 5, np.random.default_rng(1))
    ours = stats._replicates(table, "patient_accuracy", w)
    y_hat = (prob >= 0.5).astype(int)
    for b in range(5):
        # build the resample literally: patient k drawn twice appears as two distinct patients
        yt, yp, keys = [], [], []
        for k, key in enumerate(table.keys):
            for copy in range(int(w[b, k])):
                m = pats == key
                yt += list(y[m]); yp += list(y_hat[m]); keys += [f"{key}#{copy}"] * int(m.sum())
        assert ours[b] == pytest.approx(patient_accuracy(yt, yp, keys))


def test_hand_worked_patient_accuracy_and_value():
    # patient A: 3 of 4 right, patient B: 1 of 2 right -> patient accuracy 0.625, image 4/6
    y = [1, 1, 1, 1, 0, 0]
    prob = [0.9, 0.8, 0.7, 0.2, 0.1, 0.6]
    pats = ["A"] * 4 + ["B"] * 2
    assert stats.metric_value(y, prob, pats, "patient_accuracy") == pytest.approx(0.625)
    assert stats.metric_value(y, prob, pats, "accuracy") == pytest.approx(4 / 6)
    reps = stats.patient_bootstrap(y, prob, pats, "patient_accuracy", n_boot=2000, seed=0)
    # every resample is AA, AB/BA or BB: 0.75, 0.625, 0.5 with probabilities 1/4, 1/2, 1/4
    assert set(np.round(reps, 6)) <= {0.75, 0.625, 0.5}
    assert np.mean(np.isclose(reps, 0.625)) == pytest.approx(0.5, abs=0.04)
    ci = stats.metric_ci(y, prob, pats, "patient_accuracy", n_boot=2000)
    assert (ci["lo"], ci["hi"]) == (0.5, 0.75) and ci["n_patients"] == 2 and ci["n_images"] == 6


def test_interval_hand_worked():
    assert stats.interval(np.arange(101), 0.9) == pytest.approx((5.0, 95.0))
    assert stats.interval([1.0, np.nan, 3.0], 0.5) == pytest.approx((1.5, 2.5))
    assert all(np.isnan(stats.interval([np.nan])))


def test_ci_covers_the_known_value_near_95_percent():
    # the population accuracy is the Beta mean 0.8; over many simulated test sets the 95 %
    # interval must contain it about 95 % of the time (binomial sd over 200 repeats ~ 1.5 %)
    hits_patient, hits_image = 0, 0
    n_rep = 200
    for seed in range(n_rep):
        rng = np.random.default_rng(1000 + seed)
        y, prob, pats = _simulate(rng, n_patients=50, per_patient=6, spread=3.0)
        reps = stats.patient_bootstrap(y, prob, pats, "accuracy", n_boot=500, seed=seed)
        lo, hi = stats.interval(reps)
        hits_patient += lo <= 0.8 <= hi
        # the naive image bootstrap (every image its own patient) ignores the clustering
        naive = stats.patient_bootstrap(y, prob, np.arange(len(y)), "accuracy", n_boot=500,
                                        seed=seed)
        lo, hi = stats.interval(naive)
        hits_image += lo <= 0.8 <= hi
    assert 0.89 <= hits_patient / n_rep <= 0.99
    assert hits_image / n_rep < hits_patient / n_rep - 0.05  # too narrow: under-covers


def test_paired_difference_detects_a_planted_difference():
    rng = np.random.default_rng(7)
    y, prob, pats = _simulate(rng, n_patients=60, mean_acc=0.75)
    better = prob.copy()
    # model a fixes every mistake of 20 of the 60 patients
    fixed = np.isin(pats, np.unique(pats)[:20])
    better[fixed] = np.where(y[fixed] == 1, 0.9, 0.1)
    res = stats.difference_ci((y, better, pats), (y, prob, pats), paired=True, metric="accuracy")
    assert res["significant"] and res["lo"] > 0 and res["difference"] > 0
    assert res["p_value"] < 0.05 and res["paired"] and res["n_patients_a"] == 60


def _predict_like(rng, y, pats, *, mean_acc=0.8, spread=8.0):
    """Another model's predictions on the same images, with its own per-patient skill."""
    keys, code = np.unique(pats, return_inverse=True)
    p_right = rng.beta(mean_acc * spread, (1 - mean_acc) * spread, keys.shape[0])[code]
    right = rng.random(y.shape[0]) < p_right
    return np.where(right == (y == 1), 0.8, 0.2)


def test_equal_models_are_not_flagged():
    # two models with the same skill, independent mistakes, on the same patients: the 95 %
    # paired interval should exclude 0 in about 5 % of test sets, not more
    flagged = 0
    n_rep = 100
    for seed in range(n_rep):
        rng = np.random.default_rng(seed)
        y, prob_a, pats = _simulate(rng, n_patients=40)
        prob_b = _predict_like(rng, y, pats)
        res = stats.difference_ci((y, prob_a, pats), (y, prob_b, pats), paired=True,
                                  n_boot=400, seed=seed)
        flagged += res["significant"]
    assert flagged / n_rep <= 0.12


def test_values_equal_classification_report():
    from dala.metrics import classification_report

    rng = np.random.default_rng(9)
    y, prob, pats = _simulate(rng, n_patients=20)
    rep = classification_report(y, prob, patients=pats, threshold=0.6)
    for metric in stats.METRICS:
        assert stats.metric_value(y, prob, pats, metric, threshold=0.6) == \
            pytest.approx(stats._REPORT_KEY[metric](rep)), metric
        table = stats._table(stats._make(y, prob, pats, 0.6))
        assert stats._replicates(table, metric, np.ones((1, 20)))[0] == \
            pytest.approx(stats._REPORT_KEY[metric](rep)), metric


def test_identical_runs_give_zero_difference():
    rng = np.random.default_rng(2)
    y, prob, pats = _simulate(rng)
    res = stats.difference_ci({"y_true": y, "y_prob": prob, "patients": pats},
                              stats.Predictions.of((y, prob, pats)), paired=True, metric="gmean")
    assert res["difference"] == 0 and res["lo"] == 0 and res["hi"] == 0
    assert not res["significant"]


def test_unpaired_difference_for_the_leakage_pair():
    # image-level split (leaky: optimistic ~0.95) vs patient-level (honest ~0.75): different test
    # patients, so the two test sets are resampled independently
    rng = np.random.default_rng(11)
    y1, p1, pats1 = _simulate(rng, n_patients=40, mean_acc=0.95, spread=30)
    y2, p2, pats2 = _simulate(rng, n_patients=30, mean_acc=0.75)
    res = stats.difference_ci((y1, p1, pats1), (y2, p2, np.char.add("q", pats2)), paired=False)
    assert res["significant"] and res["lo"] > 0 and not res["paired"]
    assert (res["n_patients_a"], res["n_patients_b"]) == (40, 30)
    with pytest.raises(MetricsInputError, match="same test patients"):
        stats.difference_ci((y1, p1, pats1), (y2, p2, np.char.add("q", pats2)), paired=True)


def test_trials_difference_and_the_limits_of_five_trials():
    rng = np.random.default_rng(5)
    pairs = []
    for _ in range(5):
        y, prob, pats = _simulate(rng, n_patients=30, mean_acc=0.7)
        better = np.where(y == 1, np.maximum(prob, 0.8), np.minimum(prob, 0.2))  # always right
        pairs.append(((y, better, pats), (y, prob, pats)))
    res = stats.trials_difference(pairs, metric="balanced_accuracy", n_boot=500)
    assert res["n_trials"] == 5 and len(res["per_trial"]) == 5
    assert res["significant"] and res["difference"] > 0.1
    # all five trials favour a, yet the exact Wilcoxon test cannot go below 2/2**5
    assert res["wilcoxon_p"] == pytest.approx(0.0625) == res["wilcoxon_min_p"]
    assert stats.wilcoxon_p([0, 0, 0]) is None


def test_holm_hand_worked():
    # sorted p: 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> monotone 0.06)
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    # m = 2: 0.5 x 2 = 1.0, then 0.9 x 1 = 0.9 raised to 1.0 by monotonicity
    assert stats.holm([0.5, None, 0.9]) == [1.0, None, 1.0]
    assert stats.holm([0.2, None, 0.01]) == pytest.approx([0.2, None, 0.02])
    assert stats.holm([]) == []


def test_fast_enough():
    rng = np.random.default_rng(0)
    y, prob, pats = _simulate(rng, n_patients=60, per_patient=5)  # 300 images
    t0 = time.perf_counter()
    for metric in ("accuracy", "gmean", "roc_auc", "patient_accuracy"):
        stats.patient_bootstrap(y, prob, pats, metric, n_boot=1000)
    assert (time.perf_counter() - t0) / 4 < 0.5


def test_bad_input_is_named():
    with pytest.raises(MetricsInputError, match="unknown metric"):
        stats.metric_ci([0, 1], [0.2, 0.8], ["a", "b"], "acuracy")
    with pytest.raises(MetricsInputError, match="one patient key per image"):
        stats.patient_bootstrap([0, 1], [0.2, 0.8], ["a"], "accuracy")
    with pytest.raises(MetricsInputError, match="binary"):
        stats.patient_bootstrap([0, 2], [0.2, 0.8], ["a", "b"], "accuracy")
    with pytest.raises(MetricsInputError, match="n_boot"):
        stats.patient_bootstrap([0, 1], [0.2, 0.8], ["a", "b"], "accuracy", n_boot=0)
