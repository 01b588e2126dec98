"""dala.metrics against confusion matrices worked out by hand (arithmetic in the comments)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dala.errors import DalaError
from dala.metrics import (
    HEADLINE_METRICS,
    METRIC_HELP,
    MetricsInputError,
    calibration_bins,
    classification_report,
    curve_points,
    patient_accuracy,
    summary_row,
)

approx = pytest.approx


def _hand_case():
    """TP=40, FN=10 (50 malignant), TN=30, FP=20 (50 benign).

    Malignant images: 40 scored 0.9 (caught), 10 scored 0.1 (missed).
    Benign images:    30 scored 0.2 (cleared), 20 scored 0.8 (false alarms).
    """
    y = np.array([1] * 50 + [0] * 50)
    p1 = np.array([0.9] * 40 + [0.1] * 10 + [0.2] * 30 + [0.8] * 20)
    return y, p1


def test_hand_confusion_matrix():
    y, p1 = _hand_case()
    r = classification_report(y, p1)
    # rows true (benign, malignant), cols predicted
    assert r["confusion_matrix"] == [[30, 20], [10, 40]]
    assert r["n"] == 100
    # accuracy = (TP+TN)/N = 70/100
    assert r["accuracy"] == approx(0.7)
    # sensitivity = TP/(TP+FN) = 40/50 = .8 ; specificity = TN/(TN+FP) = 30/50 = .6
    assert r["sensitivity"] == approx(0.8)
    assert r["specificity"] == approx(0.6)
    # balanced accuracy = (.8 + .6)/2 = .7
    assert r["balanced_accuracy"] == approx(0.7)
    # gmean = sqrt(.8 * .6) = sqrt(.48) = .69282
    assert r["gmean"] == approx(math.sqrt(0.48))
    assert r["gmean"] == approx(0.6928203, abs=1e-6)
    # IBA (alpha .1, squared gmean) = (1 + .1*(sens - spec)) * gmean^2 = (1 + .1*.2) * .48 = .4896
    assert r["iba"] == approx(0.4896)
    # MCC = (TP*TN - FP*FN)/sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN))
    #     = (1200 - 200)/sqrt(60*50*50*40) = 1000/sqrt(6e6) = .408248
    assert r["mcc"] == approx(1000 / math.sqrt(6e6))
    # precision malignant = TP/(TP+FP) = 40/60 ; benign = TN/(TN+FN) = 30/40
    mal, ben = r["per_class"]["malignant"], r["per_class"]["benign"]
    assert mal["precision"] == approx(40 / 60)
    assert ben["precision"] == approx(0.75)
    assert mal["recall"] == approx(0.8) and ben["recall"] == approx(0.6)
    # per-class specificity: malignant's is benign recall and vice versa
    assert mal["specificity"] == approx(0.6) and ben["specificity"] == approx(0.8)
    # F1 malignant = 2*(2/3)*.8/(2/3+.8) = 8/11 ; benign = 2*.75*.6/1.35 = 2/3
    assert mal["f1"] == approx(8 / 11) and ben["f1"] == approx(2 / 3)
    assert mal["support"] == 50 and ben["support"] == 50
    # macro = plain mean over classes; weighted = support-weighted (equal supports here)
    assert r["macro"]["precision"] == approx((40 / 60 + 0.75) / 2)
    assert r["macro"]["recall"] == approx(0.7)
    assert r["macro"]["f1"] == approx((8 / 11 + 2 / 3) / 2)
    assert r["weighted"]["f1"] == approx((8 / 11 + 2 / 3) / 2)
    # ROC-AUC = P(malignant score > benign score): the 40 at .9 beat all 50 benign, the 10 at .1
    # beat none -> 40*50/(50*50) = .8
    assert r["roc_auc"] == approx(0.8)
    # AP: threshold .9 -> P=1, R=.8 ; .8 -> R unchanged ; .2 -> R unchanged ; .1 -> P=50/100, R=1
    # AP = .8*1 + .2*.5 = .9
    assert r["pr_auc"] == approx(0.9)
    assert r["patient_accuracy"] is None and r["n_patients"] is None
    assert r["per_magnification"] is None
    assert r["threshold"] == 0.5


def test_iba_matches_imblearn_report_row():
    from imblearn.metrics import classification_report_imbalanced

    y, p1 = _hand_case()
    r = classification_report(y, p1)
    rep = classification_report_imbalanced(y, (p1 >= 0.5).astype(int), output_dict=True)
    assert r["iba"] == approx(rep["1"]["iba"])  # the malignant (positive) row
    assert r["gmean"] == approx(rep["1"]["geo"])
    # benign as positive would flip the dominance: (1 - .02) * .48 = .4704
    assert rep["0"]["iba"] == approx(0.4704)


def test_one_d_and_two_column_probabilities_agree():
    y, p1 = _hand_case()
    a = classification_report(y, p1)
    b = classification_report(y, np.column_stack([1 - p1, p1]))
    assert a == b


def test_perfect_predictor():
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    p1 = np.array([0.1, 0.2, 0.0, 0.9, 1.0, 0.7, 0.6])
    r = classification_report(y, p1)
    for key in ("accuracy", "balanced_accuracy", "gmean", "mcc", "roc_auc", "pr_auc",
                "sensitivity", "specificity"):
        assert r[key] == approx(1.0), key
    # IBA = (1 + .1*(1-1)) * 1^2 = 1
    assert r["iba"] == approx(1.0)
    assert r["macro"]["f1"] == approx(1.0)
    assert r["confusion_matrix"] == [[3, 0], [0, 4]]


def test_always_malignant_accuracy_vs_gmean_lesson():
    # 31 benign, 69 malignant (BreakHis-like ratio); the "model" always says malignant.
    y = np.array([0] * 31 + [1] * 69)
    p1 = np.full(100, 0.9)
    r = classification_report(y, p1)
    assert r["accuracy"] == approx(0.69)  # 69/100 looks decent...
    assert r["sensitivity"] == approx(1.0)  # 69/69
    assert r["specificity"] == approx(0.0)  # 0/31
    assert r["gmean"] == approx(0.0)  # sqrt(1 * 0) = 0: ...but the balanced view says useless
    assert r["iba"] == approx(0.0)  # (1 + .1*1) * 0 = 0
    assert r["balanced_accuracy"] == approx(0.5)  # (1 + 0)/2
    assert r["mcc"] == approx(0.0)  # undefined denominator -> sklearn returns 0
    assert r["roc_auc"] == approx(0.5)  # constant score: every pair is a tie
    # benign never predicted: precision 0/0 -> 0 (zero_division=0), so the macro average drops
    assert r["per_class"]["benign"]["precision"] == 0.0
    assert r["per_class"]["malignant"]["precision"] == approx(0.69)
    assert r["macro"]["precision"] == approx(0.345)
    assert r["macro"]["recall"] == approx(0.5)
    # F1 malignant = 2*.69*1/1.69 ; benign 0
    assert r["macro"]["f1"] == approx((2 * 0.69 / 1.69) / 2)
    assert r["confusion_matrix"] == [[0, 31], [0, 69]]


def test_threshold_moves_predictions():
    y, p1 = _hand_case()
    # threshold .85: the 20 false alarms at .8 become benign -> TN=50, FP=0; TP=40, FN=10
    r = classification_report(y, p1, threshold=0.85)
    assert r["confusion_matrix"] == [[50, 0], [10, 40]]
    assert r["specificity"] == approx(1.0) and r["sensitivity"] == approx(0.8)
    assert r["threshold"] == 0.85
    # ranking metrics do not depend on the threshold
    assert r["roc_auc"] == approx(0.8)
    # prediction rule is p >= threshold
    assert classification_report([1, 0], [0.5, 0.2])["confusion_matrix"] == [[1, 0], [0, 1]]


def test_patient_accuracy_unequal_images():
    # patient A: 4 images, 3 right ; patient B: 2 images, 1 right
    y_true = [1, 1, 1, 1, 0, 0]
    y_pred = [1, 1, 1, 0, 0, 1]
    pats = ["A", "A", "A", "A", "B", "B"]
    # mean over patients (3/4 + 1/2)/2 = .625, not the image-level 4/6 = .667
    assert patient_accuracy(y_true, y_pred, pats) == approx(0.625)
    p1 = np.array([0.9, 0.8, 0.7, 0.2, 0.3, 0.6])  # the same predictions as probabilities
    r = classification_report(y_true, p1, patients=pats)
    assert r["patient_accuracy"] == approx(0.625)
    assert r["accuracy"] == approx(4 / 6)
    assert r["n_patients"] == 2


def test_patient_accuracy_validates():
    with pytest.raises(DalaError, match="patients"):
        patient_accuracy([0, 1], [0, 1], ["A"])
    with pytest.raises(DalaError, match="y_pred"):
        patient_accuracy([0, 1], [0], ["A", "B"])


def test_per_magnification_breakdown():
    # 40X: 4 images, all right. 100X: 4 images, 2 right (one FN, one FP).
    y = [1, 1, 0, 0, 1, 1, 0, 0]
    p1 = [0.9, 0.8, 0.1, 0.2, 0.9, 0.3, 0.1, 0.7]
    mags = ["40X", 40, "40", 40.0, "100X", 100, "100", "100x"]  # spellings normalise to "40"/"100"
    pats = ["A", "A", "B", "B", "A", "A", "B", "B"]
    r = classification_report(y, p1, magnifications=mags, patients=pats)
    pm = r["per_magnification"]
    assert list(pm) == ["40", "100"]  # numeric order
    assert pm["40"]["n"] == 4 and pm["100"]["n"] == 4
    assert pm["40"]["accuracy"] == approx(1.0) and pm["40"]["gmean"] == approx(1.0)
    # 100X: TP=1, FN=1, TN=1, FP=1 -> sens .5, spec .5, gmean .5, iba (1+0)*.25 = .25, MCC 0
    assert pm["100"]["confusion_matrix"] == [[1, 1], [1, 1]]
    assert pm["100"]["gmean"] == approx(0.5)
    assert pm["100"]["iba"] == approx(0.25)
    assert pm["100"]["mcc"] == approx(0.0)
    # patient accuracy within 100X: A 1/2, B 1/2 -> .5 ; overall: A 3/4, B 3/4 -> .75
    assert pm["100"]["patient_accuracy"] == approx(0.5)
    assert r["patient_accuracy"] == approx(0.75)
    assert "per_magnification" not in pm["40"]
    # the overall figures are over all 8 images
    assert r["accuracy"] == approx(6 / 8)


def test_ece_hand_example():
    # conf = max prob. 10 equal-width bins, right-closed.
    #  img1 p1=.95 y=1: conf .95, right   -> bin (.9, 1]
    #  img2 p1=.95 y=0: conf .95, wrong   -> bin (.9, 1]
    #  img3 p1=.35 y=0: conf .65, right   -> bin (.6, .7]
    #  img4 p1=.65 y=1: conf .65, right   -> bin (.6, .7]
    # bin (.9,1]: acc .5, conf .95, gap .45 ; bin (.6,.7]: acc 1, conf .65, gap .35
    # ECE = 2/4*.45 + 2/4*.35 = .4
    y = [1, 0, 0, 1]
    p1 = [0.95, 0.95, 0.35, 0.65]
    assert classification_report(y, p1)["ece"] == approx(0.4)
    cb = calibration_bins(y, p1, n_bins=10)
    assert cb["ece"] == approx(0.4)
    assert cb["counts"] == [0, 0, 0, 0, 0, 0, 2, 0, 0, 2]
    assert cb["accuracy"][9] == approx(0.5) and cb["confidence"][9] == approx(0.95)
    assert cb["accuracy"][6] == approx(1.0) and cb["confidence"][6] == approx(0.65)
    assert cb["accuracy"][0] is None and cb["confidence"][0] is None
    assert cb["centers"][0] == approx(0.05) and len(cb["centers"]) == 10
    assert len(cb["edges"]) == 11
    # a perfectly confident, always-right model is perfectly calibrated
    assert calibration_bins([0, 1], [0.0, 1.0])["ece"] == approx(0.0)
    # n_bins=1: ECE = |overall accuracy - mean confidence| = |.75 - .8| = .05
    assert calibration_bins(y, p1, n_bins=1)["ece"] == approx(0.05)


def test_curve_points_shapes_and_monotonicity():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 3000)
    p1 = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    c = curve_points(y, p1, max_points=50)
    roc, pr = c["roc"], c["pr"]
    assert 2 <= len(roc["fpr"]) <= 50
    assert len(roc["fpr"]) == len(roc["tpr"]) == len(roc["thresholds"]) == c["n_points_roc"]
    assert len(pr["precision"]) == len(pr["recall"]) == c["n_points_pr"] <= 50
    assert np.all(np.diff(roc["fpr"]) >= 0) and np.all(np.diff(roc["tpr"]) >= 0)
    assert roc["fpr"][0] == 0 and roc["tpr"][0] == 0 and roc["fpr"][-1] == 1 and roc["tpr"][-1] == 1
    assert roc["thresholds"][0] is None  # roc_curve's +inf
    assert np.all(np.diff(pr["recall"]) <= 0)  # sklearn order: recall falls to 0
    assert pr["recall"][0] == 1 and pr["recall"][-1] == 0
    rep = classification_report(y, p1)
    assert roc["auc"] == approx(rep["roc_auc"]) and pr["ap"] == approx(rep["pr_auc"])
    json.dumps(c, allow_nan=False)
    # a small case is not thinned
    small = curve_points([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert small["roc"]["auc"] == approx(0.75)
    assert small["roc"]["fpr"][-1] == 1.0


def test_curve_points_single_class():
    c = curve_points([1, 1, 1], [0.2, 0.5, 0.9])
    assert c["roc"]["auc"] is None and c["pr"]["ap"] is None
    assert c["roc"]["fpr"] == [] and c["n_points_roc"] == 0


def test_json_serialisable_output():
    y, p1 = _hand_case()
    r = classification_report(
        y, p1, patients=[f"P{i % 7}" for i in range(100)], magnifications=[40, 100, 200, 400] * 25
    )
    text = json.dumps(r, allow_nan=False)
    assert json.loads(text) == r

    def walk(o):
        if isinstance(o, dict):
            for k, v in o.items():
                assert type(k) is str
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)
        else:
            assert o is None or type(o) in (int, float, str, bool), type(o)

    walk(r)
    json.dumps(calibration_bins(y, p1), allow_nan=False)


def test_single_class_y_true_gives_none_not_crash():
    r = classification_report([1, 1, 1, 1], [0.9, 0.8, 0.3, 0.6])
    assert r["roc_auc"] is None
    assert r["specificity"] is None  # no benign images: TN/(TN+FP) = 0/0
    assert r["gmean"] is None and r["iba"] is None
    assert r["sensitivity"] == approx(0.75)
    assert r["pr_auc"] == approx(1.0)  # positives exist, every one ranks at the top
    assert r["per_class"]["benign"]["recall"] is None  # no benign images
    assert r["per_class"]["malignant"]["specificity"] is None  # no negatives for malignant
    json.dumps(r, allow_nan=False)
    r0 = classification_report([0, 0], [0.1, 0.7])
    assert r0["roc_auc"] is None and r0["pr_auc"] is None and r0["sensitivity"] is None
    assert r0["specificity"] == approx(0.5)
    assert summary_row(r0)["roc_auc"] is None


def test_multiclass_subtypes():
    # 3 classes, perfect argmax
    y = [0, 0, 1, 1, 2, 2]
    p = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.1, 0.7, 0.2],
                  [0.2, 0.5, 0.3], [0.1, 0.1, 0.8], [0.3, 0.2, 0.5]])
    r = classification_report(y, p, class_names=("A", "B", "C"))
    assert r["n_classes"] == 3 and r["threshold"] is None
    assert r["confusion_matrix"] == [[2, 0, 0], [0, 2, 0], [0, 0, 2]]
    for key in ("accuracy", "balanced_accuracy", "gmean", "iba", "mcc", "roc_auc", "pr_auc"):
        assert r[key] == approx(1.0), key
    assert set(r["per_class"]) == {"A", "B", "C"}
    # one C image called A: recalls 1, 1, .5 -> gmean = (1*1*.5)^(1/3)
    p2 = p.copy()
    p2[5] = [0.6, 0.2, 0.2]
    r2 = classification_report(y, p2, class_names=("A", "B", "C"))
    assert r2["gmean"] == approx(0.5 ** (1 / 3))
    assert r2["balanced_accuracy"] == approx(2.5 / 3)
    # macro sensitivity = 2.5/3 ; macro specificity = mean(3/4, 1, 1) ; dominance = -1/12
    # IBA = (1 + .1*(2.5/3 - 11/12)) * gmean^2
    assert r2["iba"] == approx((1 + 0.1 * (2.5 / 3 - 11 / 12)) * 0.5 ** (2 / 3))
    # a class missing from y_true: one-vs-rest AUC undefined -> None
    r3 = classification_report([0, 1, 0, 1], p[:4], class_names=("A", "B", "C"))
    assert r3["roc_auc"] is None and r3["gmean"] is None
    assert r3["accuracy"] == approx(0.5)  # rows 0,1 -> A,A ; rows 2,3 -> B,B
    json.dumps(r3, allow_nan=False)


def test_summary_row_and_help():
    y, p1 = _hand_case()
    r = classification_report(y, p1, patients=["A"] * 50 + ["B"] * 50)
    row = summary_row(r)
    assert list(row) == HEADLINE_METRICS
    assert row["f1_macro"] == r["macro"]["f1"]
    assert row["gmean"] == r["gmean"] and row["patient_accuracy"] == r["patient_accuracy"]
    for key in HEADLINE_METRICS + ["pr_auc", "ece", "specificity", "sensitivity", "precision",
                                   "recall", "f1", "confusion_matrix"]:
        assert isinstance(METRIC_HELP[key], str) and METRIC_HELP[key].strip(), key
    with pytest.raises(DalaError):
        summary_row({"nope": 1})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(y_true=[0, 1, 1], y_prob=[0.2, 0.8]), "3 labels but y_prob has 2"),
        (dict(y_true=[], y_prob=[]), "empty"),
        (dict(y_true=[0, 1], y_prob=[0.2, 1.3]), r"\[0, 1\]"),
        (dict(y_true=[0, 1], y_prob=[-0.1, 0.5]), r"\[0, 1\]"),
        (dict(y_true=[0, 1], y_prob=[[0.5, 0.6], [0.2, 0.8]]), "sum to 1"),
        (dict(y_true=[0, 1], y_prob=[0.2, float("nan")]), "NaN"),
        (dict(y_true=[0, 2], y_prob=[0.2, 0.8]), "label 2"),
        (dict(y_true=[0, -1], y_prob=[0.2, 0.8]), "negative"),
        (dict(y_true=[0, 0.5], y_prob=[0.2, 0.8]), "whole-number"),
        (dict(y_true=[[0, 1]], y_prob=[0.2, 0.8]), "1-D"),
        (dict(y_true=[0, 1], y_prob=[0.2, 0.8], class_names=("a", "b", "c")), "class_names"),
        (dict(y_true=[0, 1], y_prob=[0.2, 0.8], patients=["A"]), "patients"),
        (dict(y_true=[0, 1], y_prob=[0.2, 0.8], magnifications=[40, 100, 200]), "magnifications"),
        (dict(y_true=[0, 1], y_prob=[0.2, 0.8], threshold=1.5), "threshold"),
        (dict(y_true=[0, 1], y_prob=[0.2, 0.8], n_bins=0), "n_bins"),
    ],
)
def test_input_validation(kwargs, match):
    with pytest.raises(MetricsInputError, match=match) as info:
        classification_report(**kwargs)
    assert isinstance(info.value, DalaError)


def test_validation_in_helpers():
    with pytest.raises(DalaError, match="sum to 1"):
        calibration_bins([0, 1], [[0.9, 0.9], [0.1, 0.9]])
    with pytest.raises(DalaError, match="max_points"):
        curve_points([0, 1], [0.1, 0.9], max_points=1)
    with pytest.raises(DalaError, match="pos_label"):
        curve_points([0, 1], [0.1, 0.9], pos_label=2)
    with pytest.raises(DalaError, match="n_bins"):
        calibration_bins([0, 1], [0.1, 0.9], n_bins=0)


def test_flat_metrics_is_the_one_metric_row():
    from dala.metrics import FLAT_METRICS, METRIC_LABELS, flat_metrics, metric_label, metric_value

    y, p1 = _hand_case()
    r = classification_report(y, p1, patients=["A"] * 50 + ["B"] * 50)
    row = flat_metrics(r)
    assert list(row) == FLAT_METRICS and FLAT_METRICS[:len(HEADLINE_METRICS)] == HEADLINE_METRICS
    assert row["f1_macro"] == r["macro"]["f1"] and row["sensitivity"] == r["sensitivity"] and row["n"] == 100
    assert flat_metrics(row) == row  # an already-flat row passes through
    assert metric_value(r, "f1_weighted") == r["weighted"]["f1"]
    assert metric_value(r, "precision_macro") == r["macro"]["precision"]
    assert metric_value(r, "no_such_metric") is None
    assert flat_metrics(r, keys=["gmean", "f1_macro"]) == {"gmean": r["gmean"], "f1_macro": r["macro"]["f1"]}
    with pytest.raises(DalaError):
        flat_metrics([1, 2])
    # readable labels: none truncated to snake_case, every headline metric named
    assert metric_label("balanced_accuracy") == "Balanced accuracy"
    assert metric_label("gmean") == "GMean" and metric_label("iba") == "IBA"
    assert metric_label("val_balanced_accuracy") == "Validation balanced accuracy"
    assert metric_label("val_roc_auc") == "Validation ROC-AUC"
    assert metric_label("some_new_thing") == "Some new thing"
    for key in FLAT_METRICS:
        assert key in METRIC_LABELS and "_" not in METRIC_LABELS[key], key


def test_metric_row_is_light():
    """Pages and the hub import the metric row without scikit-learn."""
    import subprocess
    import sys

    code = "import sys, dala.metric_row; print('sklearn' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
