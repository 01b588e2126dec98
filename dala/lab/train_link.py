"""From a lab setting to a real training run, and back: what Train is sent, and how a finished
run with the same settings compares with the lab's answer.

Only fields :class:`dala.train.TrainConfig` has are sent. Strategies a training run cannot do
(``smote``, ``undersample``, ``logit_adjust``, ``threshold``) are not mapped to something else:
:func:`train_settings` leaves ``imbalance`` out and says so in its ``notes``, for the page to show.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from dala.lab.common import TRAIN_IMBALANCE

SESSION_KEY = "dala_lab_to_train"  # st.session_state key the Train page prefills its form from


def train_settings(setting: dict, encoder: dict, *, data_root: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """(TrainConfig field values, notes in plain words) for a lab ``setting`` (SettingResult.setting)
    answered by ``encoder`` (the bank's encoder dict)."""
    from dala.train.config import TrainConfig, recommended_settings

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    notes: list[str] = []
    model = encoder.get("model") or "dala_resnet50"
    pretrained = encoder.get("kind") == "pretrained"
    rec = recommended_settings(model, pretrained=pretrained)
    out: dict[str, Any] = {"model": model, "pretrained": pretrained, "target_ratio": setting.get("ratio"),
                           "split_mode": setting.get("split", "patient"), "magnification": setting.get("magnification"),
                           "seed": int(setting.get("seed", 0)), "data_root": data_root,
                           **{k: v for k, v in rec.items() if k in ("mode", "lr", "epochs", "image_size")}}
    strategy = setting.get("strategy", "none")
    if strategy in TRAIN_IMBALANCE:
        out["imbalance"] = TRAIN_IMBALANCE[strategy]
    else:
        notes.append(f"Train has no '{strategy}' strategy: the run is sent without one (Train's default, no "
                     "re-balancing) - pick class_weight, oversample, sampler or focal there if you want one.")
    if setting.get("threshold") not in (None, 0.5) or strategy == "threshold":
        notes.append("Train's runs use the 0.5 threshold: the lab's moved threshold is not sent.")
    if setting.get("test_prevalence") is not None:
        notes.append("The test prevalence is a lab-only view: a run is scored on its test patients as they are.")
    if encoder.get("kind") == "checkpoint":
        notes.append(f"The lab's encoder is a run's trained network; the new run starts {model} afresh "
                     f"({'pretrained' if pretrained else 'random weights'}).")
    if setting.get("head") == "mlp":
        notes.append("The lab's MLP head is not sent: the run trains the model's own top.")
    return {k: v for k, v in out.items() if k in fields}, notes


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
    except (TypeError, ValueError):
        return a == b


def matching_runs(runs: list, settings: dict[str, Any]) -> list:
    """Finished runs (RunViews, :func:`dala.train.runs.list_runs`) whose config has the same
    model, imbalance, target ratio, split mode, magnification and seed as ``settings``."""
    out = []
    for run in runs:
        cfg = run.config or {}
        if run.state != "finished" or not run.report:
            continue
        if cfg.get("model") != settings.get("model"):
            continue
        if cfg.get("imbalance", "none") != settings.get("imbalance", "none"):
            continue
        if not all(_same(cfg.get(k), settings.get(k)) for k in ("target_ratio", "magnification", "seed")):
            continue
        if cfg.get("split_mode", "patient") != settings.get("split_mode", "patient"):
            continue
        out.append(run)
    return out


def patient_bootstrap(y: np.ndarray, pred: np.ndarray, patients: np.ndarray, *, n: int = 500, seed: int = 0) -> dict:
    """95 % intervals of accuracy and GMean by bootstrapping test *patients*."""
    from imblearn.metrics import geometric_mean_score
    from sklearn.metrics import accuracy_score

    rng = np.random.default_rng(seed)
    keys = np.unique(patients)
    groups = [np.flatnonzero(patients == k) for k in keys]
    acc, gm = [], []
    for _ in range(n):
        idx = np.concatenate([groups[i] for i in rng.integers(0, len(groups), len(groups))])
        acc.append(accuracy_score(y[idx], pred[idx]))
        if len(np.unique(y[idx])) == 2:
            gm.append(geometric_mean_score(y[idx], pred[idx]))
    ci = lambda v: [float(x) for x in np.percentile(v, [2.5, 97.5])] if v else [None, None]  # noqa: E731
    return {"accuracy": ci(acc), "gmean": ci(gm), "n": n, "patients": len(keys)}


def compare_with_run(lab, result, run) -> dict:
    """The lab's answer beside a finished run's test report: accuracy and GMean with 95 %
    intervals over test patients for both (the run's from its saved test predictions)."""
    fit = lab.fit(result.setting["strategy"], result.setting["ratio"], split=result.setting["split"],
                  seed=result.setting["seed"], magnification=result.setting["magnification"], head=result.setting["head"])
    test = fit["parts"]["test"]
    y, p = lab.y[test], fit["p_test"]
    pred = (p >= result.threshold).astype(int)
    lab_ci = patient_bootstrap(y, pred, lab.patients[test])
    rep = run.report or {}
    t = rep.get("test") or {}
    out = {"run": run.name, "lab": {"accuracy": result.row["accuracy"], "gmean": result.row["gmean"], "ci": lab_ci,
                                    "test_images": int(len(test))},
           "run_test": {"accuracy": t.get("accuracy"), "gmean": t.get("gmean"), "ci": None,
                        "test_images": t.get("n"), "train_time_s": rep.get("total_time_s")}}
    preds = rep.get("test_predictions") or {}
    ids, probs = preds.get("image_id"), preds.get("probs")
    if ids and probs:
        known = [i for i in ids if i in lab.pos]
        if known:
            rows = np.array([lab.pos[i] for i in known])
            pr = np.asarray(probs, dtype=float)[[ids.index(i) for i in known]]
            out["run_test"]["ci"] = patient_bootstrap(lab.y[rows], pr.argmax(1), lab.patients[rows])
    same_test = set(lab.frame["image_id"].iloc[test]) == set(ids or [])
    out["same_test_images"] = bool(same_test)
    return out
