"""The metric row: which metrics a table shows, their readable names and help, and the one
flattener from a :func:`dala.metrics.classification_report` to a flat row.

Every table, leaderboard, model card, log line and page reads metrics through here, so
``f1_macro`` (``report["macro"]["f1"]``) is derived once. This module is light (no scikit-learn)
so pages and the hub can import it cheaply; :mod:`dala.metrics` re-exports all of it.
"""

from __future__ import annotations

from typing import Any, Sequence

from dala.errors import DalaError

__all__ = [
    "FLAT_METRICS", "HEADLINE_METRICS", "METRIC_HELP", "METRIC_LABELS", "MetricsInputError",
    "flat_metrics", "metric_label", "metric_value", "summary_row",
]


class MetricsInputError(DalaError):
    """Labels, probabilities, patients or magnifications given to ``dala.metrics`` are unusable."""


HEADLINE_METRICS: list[str] = [
    "accuracy",
    "balanced_accuracy",
    "gmean",
    "iba",
    "f1_macro",
    "mcc",
    "roc_auc",
    "patient_accuracy",
]

# the flat row (flat_metrics): the headline metrics, then the rest of the scalar metrics
FLAT_METRICS: list[str] = HEADLINE_METRICS + [
    "sensitivity", "specificity", "pr_auc", "ece", "n", "n_patients",
]

# readable names for tables, cards and plots (keys stay snake_case in JSON)
METRIC_LABELS: dict[str, str] = {
    "n": "Images",
    "n_patients": "Patients",
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "gmean": "GMean",
    "iba": "IBA",
    "f1_macro": "F1 (macro)",
    "f1_weighted": "F1 (weighted)",
    "mcc": "MCC",
    "roc_auc": "ROC-AUC",
    "pr_auc": "PR-AUC",
    "patient_accuracy": "Patient accuracy",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "precision": "Precision",
    "recall": "Recall",
    "f1": "F1",
    "support": "Support",
    "ece": "ECE",
    "confusion_matrix": "Confusion matrix",
    "loss": "Loss",
    "val_loss": "Validation loss",
}

METRIC_HELP: dict[str, str] = {
    "n": "Number of images evaluated.",
    "accuracy": (
        "Fraction of images classified right; on imbalanced data it misleads, because always "
        "answering the majority class (malignant is about 69% of BreakHis) already scores ~0.69."
    ),
    "balanced_accuracy": (
        "Mean of the per-class recalls, so each class counts equally however many images it has; "
        "a majority-class guesser scores 0.5 in the binary task."
    ),
    "precision": (
        "Of the images the model called this class, the fraction that really are; 0 when the model "
        "never predicts the class."
    ),
    "recall": "Of the images that really are this class, the fraction the model found.",
    "f1": "Harmonic mean of precision and recall: high only when both are high.",
    "f1_macro": (
        "F1 averaged over classes with equal weight, so a neglected minority class pulls it down."
    ),
    "sensitivity": (
        "Recall of the malignant class: the fraction of cancers the model catches (a miss is a "
        "false negative)."
    ),
    "specificity": (
        "Recall of the benign class: the fraction of benign tissue the model correctly clears "
        "(a miss is a false alarm)."
    ),
    "support": "Number of images that truly belong to the class.",
    "gmean": (
        "Geometric mean of sensitivity and specificity (of all class recalls when there are more "
        "classes): it is 0 if any class is never recognised, so unlike accuracy it cannot be "
        "fooled by always predicting the majority class."
    ),
    "iba": (
        "Index balanced accuracy (alpha 0.1): GMean squared, nudged up or down by how much "
        "sensitivity exceeds specificity, so it rewards balanced performance and says which class "
        "dominates."
    ),
    "mcc": (
        "Matthews correlation between predictions and truth, from -1 (always wrong) through 0 "
        "(no better than chance) to 1 (perfect); it uses all four confusion-matrix cells and stays "
        "honest under imbalance."
    ),
    "roc_auc": (
        "Probability that a random malignant image gets a higher malignant score than a random "
        "benign one (0.5 = chance, 1 = perfect ranking); it ignores the decision threshold."
    ),
    "pr_auc": (
        "Average precision over the precision-recall curve for the malignant class; unlike ROC-AUC "
        "its chance level is the share of positives, so it is harsher when positives are rare."
    ),
    "confusion_matrix": (
        "Counts of images by true class (rows) and predicted class (columns); the diagonal "
        "holds the right answers."
    ),
    "ece": (
        "Expected calibration error: the average gap between how confident the model is and how "
        "often it is right, over confidence bins (0 = perfectly calibrated)."
    ),
    "patient_accuracy": (
        "BreakHis patient-level accuracy: for each patient the fraction of their images classified "
        "right, averaged over patients, so a patient with many images does not outweigh others."
    ),
    "n_patients": "Number of distinct patients evaluated.",
}


def metric_value(report: dict, key: str) -> Any:
    """One metric of a :func:`classification_report` (or of a row :func:`flat_metrics` made) by
    its flat key: ``f1_macro`` / ``f1_weighted`` and ``precision_macro`` ... are read from the
    ``macro`` / ``weighted`` blocks, every other key as it is; None when absent."""
    if not isinstance(report, dict):
        raise MetricsInputError(f"a metrics report must be a dict; got {type(report).__name__}.")
    if key in report:
        return report[key]
    stem, _, avg = key.rpartition("_")
    if avg in ("macro", "weighted") and stem in ("precision", "recall", "f1"):
        block = report.get(avg)
        return block.get(stem) if isinstance(block, dict) else None
    return None


def flat_metrics(report: dict, *, keys: Sequence[str] | None = None) -> dict:
    """The metric row every table, leaderboard, card and log uses: ``{key: value}`` for ``keys``
    (default :data:`FLAT_METRICS`: the headline metrics, then sensitivity, specificity, PR-AUC,
    ECE and the counts) from a :func:`classification_report`. ``f1_macro`` is
    ``report["macro"]["f1"]``; a row that is already flat passes through."""
    if not isinstance(report, dict):
        raise MetricsInputError("flat_metrics needs a dict returned by classification_report.")
    return {key: metric_value(report, key) for key in (FLAT_METRICS if keys is None else keys)}


def summary_row(report: dict) -> dict:
    """The headline metrics of a :func:`classification_report` as one flat dict for tables:
    ``accuracy, balanced_accuracy, gmean, iba, f1_macro, mcc, roc_auc, patient_accuracy``
    (:func:`flat_metrics` with :data:`HEADLINE_METRICS`)."""
    if not isinstance(report, dict) or "accuracy" not in report:
        raise MetricsInputError("summary_row needs a dict returned by classification_report.")
    return flat_metrics(report, keys=HEADLINE_METRICS)


def metric_label(key: str) -> str:
    """A readable name for a metric key (``balanced_accuracy`` -> "Balanced accuracy";
    ``val_gmean`` -> "Validation GMean"); unknown keys are de-snake-cased."""
    if key in METRIC_LABELS:
        return METRIC_LABELS[key]
    for prefix, word in (("val_", "Validation"), ("test_", "Test"), ("train_", "Training")):
        if key.startswith(prefix):
            inner = metric_label(key[len(prefix):])
            return f"{word} {inner if inner[:2].isupper() else inner[0].lower() + inner[1:]}"
    return key.replace("_", " ").capitalize()
