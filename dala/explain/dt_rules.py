"""Which DT Grad-CAM threshold rule finds the lesion? The rules scored against lesion masks.

This module owns the rule names (:data:`RULES`) and the default (:data:`DEFAULT_RULE`, chosen by
the measurement below), torch-free so the import-light CLI reads them;
:mod:`dala.explain.dt_gradcam` applies the rules and re-exports both names.

DT Grad-CAM (:mod:`dala.explain.dt_gradcam`) keeps the part of a Grad-CAM map above a per-image
threshold, and the rule that picks the threshold is our choice (the paper's is not at hand). On
the synthetic data the malignant images carry lesion masks, so the choice can be measured:

* :func:`compare_rules` computes the Grad-CAM map **once** per image and applies every rule to
  it -- exactly what ``explain(..., method="dt-gradcam", rule=r)`` would keep (the threshold on
  the map at the model's input resolution, the region resized onto the original frame,
  nearest-neighbour) -- then scores each rule's region against the mask: IoU, Dice, precision
  (share of the region inside the lesion) and recall (share of the lesion covered), the
  region's area share, and ``iou_chance``: the IoU a region of the same area placed at random
  would get on average (``r m / (r + m - r m)`` for area shares ``r``, ``m``), with
  ``iou_lift = iou - iou_chance``. IoU alone rewards large regions on large lesions (a region
  covering the whole frame scores the lesion's area share), so the lift says how much of the
  overlap comes from *where* the region is rather than how big it is. The pointing game and the
  energy inside the mask are scored on the map itself, so they are the **same for every rule**
  (a threshold does not move the map's peak); they are reported beside the rules as what the map
  offers before any threshold.
* :func:`summarize_rules` gives, per rule, the mean of each score with a 95 % percentile
  bootstrap interval that resamples **patients** (a patient's images move together: they are not
  independent evidence; see :mod:`dala.stats`), and the paired difference of mean IoU to the
  best rule with its interval (the same resamples for every rule).
* :func:`recommend_rule` names the rule with the highest mean IoU and the simplest rule whose IoU
  is statistically tied with it (its paired-difference interval contains 0), in
  :data:`SIMPLICITY` order: the parameter-free rule first, the static baseline last.

Handled without NaN crashes: an image whose mask has no lesion pixels (or no mask) gets a row with
``scored=False``, NaN scores and a note, and is left out of the summary (counted in
``n_skipped``); a flat (e.g. all-zero) map has an empty region for every rule, scored IoU, Dice,
recall and precision 0 (scikit-learn's ``zero_division=0``: an empty prediction has precision 0)
and a pointing-game miss, flagged ``empty_region``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["RULES", "DEFAULT_RULE", "DEFAULT_RULE_PARAMS", "RULE_LABELS", "SIMPLICITY", "SCORES", "compare_rules",
           "rule_specs", "score_rules_on_map", "summarize_rules", "recommend_rule"]

# The rule names and the default live here, torch-free, so the import-light CLI reads them (and
# dala.explain.dt_gradcam, which applies the rules, re-exports them).
RULES = ("otsu", "mean_std", "percentile", "fixed")
# the rule used when none is named (CLI, app, score_explanation): the one that measured best
# against the synthetic lesion masks (docs/explain.md, "Choosing DT Grad-CAM's threshold rule";
# bench/bench_dt_rules.py re-measures it)
DEFAULT_RULE = "otsu"
DEFAULT_RULE_PARAMS = {"k": 1.0, "q": 80.0, "value": 0.5}  # mean_std's k, percentile's q, fixed's value
RULE_LABELS = {"otsu": "Otsu", "mean_std": "mean+k*std", "percentile": "percentile", "fixed": "fixed"}
# tie-break order when rules measure alike: parameter-free and per image first (what "dynamic"
# asks for), then the per-image rules with one parameter, the static baseline last
SIMPLICITY = ("otsu", "mean_std", "percentile", "fixed")
SCORES = ("iou", "iou_chance", "iou_lift", "dice", "precision", "recall", "region_fraction", "pointing",
          "energy_inside")
MALIGNANT = 1  # the binary task's positive class: the lesion is the evidence for it


def _mask_array(mask: Any) -> np.ndarray | None:
    """A lesion mask as bool (H, W): arrays through the scores' rule, paths through the one reader."""
    if mask is None:
        return None
    if isinstance(mask, np.ndarray):
        from dala.explain.faithfulness import _as_mask

        return _as_mask(mask)
    from dala.data.masks import read_lesion_mask

    return read_lesion_mask(mask)


def _region_scores(region: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    inter = float(np.logical_and(region, mask).sum())
    r, m = float(region.sum()), float(mask.sum())  # m > 0: checked by the caller
    union = r + m - inter
    # chance: a region of the same area placed at random overlaps the lesion by r * m / N on
    # average (a large region scores a high IoU on a large lesion without finding it)
    n = float(region.size)
    chance_inter = r * m / n
    chance = chance_inter / (r + m - chance_inter)
    return {"iou": inter / union, "iou_chance": chance, "iou_lift": inter / union - chance,
            "dice": 2 * inter / (r + m), "precision": inter / r if r > 0 else 0.0,
            "recall": inter / m, "region_fraction": r / n}


def rule_specs(rules: Sequence[Any], params: Mapping[str, Any] | None = None) -> list[tuple[str, str, dict]]:
    """``[(label, rule, parameters), ...]``: a rule name is scored with ``params`` over the
    defaults and labelled by its name; a ``(rule, {param: value})`` variant by e.g. ``percentile(q=60)``."""
    from dala.explain.base import ExplainError

    base = {**DEFAULT_RULE_PARAMS, **(params or {})}
    out = []
    for r in rules:
        rule, own = (r, {}) if isinstance(r, str) else (r[0], dict(r[1]))
        if rule not in RULES or set(own) - set(DEFAULT_RULE_PARAMS):
            raise ExplainError(f"unknown DT Grad-CAM rule {r!r}: choose from {', '.join(RULES)} "
                               f"(variants: (rule, {{param: value}}) with params {', '.join(DEFAULT_RULE_PARAMS)}).")
        label = rule if not own else f"{rule}({','.join(f'{k}={v:g}' for k, v in own.items())})"
        out.append((label, rule, {**base, **own}))
    if not out:
        raise ExplainError(f"no DT Grad-CAM rule given: choose from {', '.join(RULES)}.")
    if len({lbl for lbl, _, _ in out}) != len(out):
        raise ExplainError("a rule is listed twice: give each rule or variant once.")
    return out


def score_rules_on_map(heatmap: np.ndarray, mask: np.ndarray, *, rules: Sequence[Any] = RULES,
                       params: Mapping[str, Any] | None = None, heatmap_frame: np.ndarray | None = None,
                       tolerance: float = 0.0) -> list[dict[str, Any]]:
    """One row per rule for one normalised map ``heatmap`` and its lesion ``mask``.

    The threshold is taken on ``heatmap`` (the model-resolution map, as DT Grad-CAM does) and the
    region resized onto the mask's frame. ``heatmap_frame`` is the map already on that frame
    (``Explanation.heatmap_original``) for the pointing game and energy; by default ``heatmap``
    resized. ``params``: the rules' parameters (``k``, ``q``, ``value``; defaults
    :data:`DEFAULT_RULE_PARAMS`). ``rules`` may also hold ``(rule, {param: value})`` variants
    (e.g. ``("percentile", {"q": 60})``, labelled ``percentile(q=60)``: see :func:`rule_specs`).
    A mask without lesion pixels gives rows with ``scored=False`` and NaN scores.
    """
    from dala.explain.api import resize_mask
    from dala.explain.dt_gradcam import apply_threshold, dynamic_threshold
    from dala.explain.faithfulness import _as_mask, _on_frame, energy_inside, pointing_game

    specs = rule_specs(rules, params)
    m = _as_mask(mask)
    h = np.nan_to_num(np.asarray(heatmap, dtype=np.float32))
    nan = float("nan")
    if not m.any():
        return [{"rule": label, "scored": False, "note": "no lesion pixels in the mask", "threshold": nan,
                 "empty_region": False, "mask_fraction": 0.0, **{k: nan for k in SCORES}} for label, _, _ in specs]
    frame = _on_frame(h if heatmap_frame is None else heatmap_frame, m.shape)
    shared = {"pointing": float(pointing_game(frame, m, tolerance=tolerance)), "energy_inside": energy_inside(frame, m)}
    if not np.isfinite(shared["energy_inside"]):
        shared["energy_inside"] = 0.0  # an all-zero map puts no mass inside the lesion
    rows = []
    for label, rule, p in specs:
        t = dynamic_threshold(h, rule, k=p["k"], q=p["q"], value=p["value"])
        region = resize_mask(apply_threshold(h, t)[1], m.shape[1], m.shape[0])
        empty = not region.any()
        rows.append({"rule": label, "scored": True, "note": "flat map: empty region" if empty else "",
                     "threshold": float(t), "empty_region": bool(empty), "mask_fraction": float(m.mean()),
                     **_region_scores(region, m), **shared})
    return rows


def compare_rules(model, items: Sequence[tuple[Any, Any]], *, rules: Sequence[Any] = RULES,
                  params: Mapping[str, Any] | None = None, target: Any = MALIGNANT, ids: Sequence[str] | None = None,
                  patients: Sequence[str] | None = None, batch_size: int = 8, tolerance: float = 0.0,
                  progress=None, **explain_kwargs) -> pd.DataFrame:
    """Score every DT Grad-CAM rule on ``items`` = ``[(image, lesion mask), ...]``: one row per image x rule.

    ``image``: anything :func:`dala.explain.explain` accepts; ``mask``: a bool/uint8 array of the
    image's size, a mask file (read by :func:`dala.data.masks.read_lesion_mask`) or None. The
    Grad-CAM map of ``target`` (default the malignant class, 1: the lesion is the evidence for
    it; None explains the predicted class) is computed once per image. ``ids`` / ``patients``
    label the rows (patients make :func:`summarize_rules` resample patients). ``progress``: a
    callable given the number of images done. ``rules`` may hold ``(rule, {param: value})``
    variants (:func:`rule_specs`): a parameter sweep costs no extra map. Columns: ``image_id,
    patient, rule, scored, note, threshold, empty_region, mask_fraction``, the :data:`SCORES`,
    ``pred, p_malignant``.
    """
    import pandas as pd

    from dala.explain.api import explain
    from dala.explain.base import ExplainError

    specs = rule_specs(rules, params)  # a bad rule is refused before any map is computed
    n = len(items)
    ids = [str(i) for i in (ids if ids is not None else range(n))]
    pats = [str(p) for p in (patients if patients is not None else ids)]
    if len(ids) != n or len(pats) != n:
        raise ExplainError(f"got {n} items but {len(ids)} ids and {len(pats)} patients: give one per item.")
    rows: list[dict[str, Any]] = []
    step = max(1, int(batch_size))
    for start in range(0, n, step):
        chunk = items[start:start + step]
        masks = [_mask_array(mk) for _, mk in chunk]
        expls = explain(model, [im for im, _ in chunk], method="gradcam", target=target, max_batch=step,
                        **explain_kwargs)
        for j, (e, mk) in enumerate(zip(expls, masks)):
            i = start + j
            if mk is not None and mk.shape != e.heatmap_original.shape:
                raise ExplainError(f"the mask of {ids[i]} is {mk.shape[1]}x{mk.shape[0]} but its image is "
                                   f"{e.size[0]}x{e.size[1]}: masks must match their images.")
            meta = {"image_id": ids[i], "patient": pats[i], "pred": int(e.pred),
                    "p_malignant": float(e.probs[MALIGNANT]) if len(e.probs) > MALIGNANT else float("nan")}
            if mk is None:
                nan = float("nan")
                rule_rows = [{"rule": label, "scored": False, "note": "no mask", "threshold": nan,
                              "empty_region": False, "mask_fraction": nan, **{k: nan for k in SCORES}}
                             for label, _, _ in specs]
            else:
                rule_rows = score_rules_on_map(e.heatmap, mk, rules=rules, params=params,
                                               heatmap_frame=e.heatmap_original, tolerance=tolerance)
            rows.extend({**meta, **r} for r in rule_rows)
        if progress is not None:
            progress(min(start + step, n))
    cols = ["image_id", "patient", "rule", "scored", "note", "threshold", "empty_region", "mask_fraction",
            *SCORES, "pred", "p_malignant"]
    return pd.DataFrame(rows, columns=cols)


def _cluster_means(values: np.ndarray, clusters: np.ndarray, n_boot: int, rng) -> tuple[float, np.ndarray]:
    """(mean over images, ``n_boot`` bootstrap means resampling clusters) for each column of ``values`` (N, K)."""
    keys, inv = np.unique(clusters, return_inverse=True)
    sums = np.zeros((len(keys), values.shape[1]))
    np.add.at(sums, inv, values)
    counts = np.bincount(inv, minlength=len(keys)).astype(np.float64)
    from dala.stats import resample_weights

    w = resample_weights(len(keys), n_boot, rng)  # (B, P)
    return values.mean(axis=0), (w @ sums) / (w @ counts)[:, None]


def summarize_rules(table: pd.DataFrame, *, by: str = "patient", level: float = 0.95, n_boot: int = 2000,
                    seed: int = 0) -> pd.DataFrame:
    """Per rule: each score's mean over the scored images with a ``level`` percentile bootstrap
    interval (resampling ``by``: ``"patient"`` or ``"image"``), and the paired differences of mean
    IoU and IoU lift to the rule with the best mean IoU (``iou_vs_best``, ``iou_lift_vs_best``,
    each with ``_lo``, ``_hi``; 0 for the best). One row per rule, best IoU first, with
    ``n_images``, ``n_patients``, ``n_skipped`` (unscored images) and ``empty_regions``."""
    import pandas as pd

    from dala.explain.base import ExplainError
    from dala.stats import interval

    if by not in ("patient", "image"):
        raise ExplainError(f"by must be 'patient' or 'image', got {by!r}.")
    rules = list(dict.fromkeys(table["rule"]))
    scored = table[table["scored"].astype(bool)]
    if scored.empty:
        raise ExplainError("no image was scored: none has a mask with lesion pixels (benign images have none).")
    if scored.duplicated(["image_id", "rule"]).any():
        raise ExplainError("image ids repeat in the table: give compare_rules one id per image (ids=...).")
    wide = {s: scored.pivot(index="image_id", columns="rule", values=s)[rules] for s in SCORES}
    keys = wide["iou"].index
    first = scored.drop_duplicates("image_id").set_index("image_id")
    clusters = first.loc[keys, "patient"].to_numpy() if by == "patient" else np.arange(len(keys))
    stats, reps = {}, {}
    for s in SCORES:  # the same resamples (seeded alike) for every score and rule: paired differences
        stats[s], reps[s] = _cluster_means(wide[s].to_numpy(dtype=np.float64), clusters, int(n_boot),
                                           np.random.default_rng(seed))
    best = int(np.argmax(stats["iou"]))
    out = []
    for j, r in enumerate(rules):
        row: dict[str, Any] = {"rule": r}
        for s in SCORES:
            lo, hi = interval(reps[s][:, j], level)
            row.update({s: float(stats[s][j]), f"{s}_lo": lo, f"{s}_hi": hi})
        for s in ("iou", "iou_lift"):  # paired: each resample's difference, the same patients for both rules
            lo, hi = interval(reps[s][:, j] - reps[s][:, best], level) if j != best else (0.0, 0.0)
            row.update({f"{s}_vs_best": float(stats[s][j] - stats[s][best]), f"{s}_vs_best_lo": lo,
                        f"{s}_vs_best_hi": hi})
        row.update({"best": j == best,
                    "n_images": int(len(keys)),
                    "n_patients": int(len(np.unique(clusters))) if by == "patient" else None,
                    "n_skipped": int(table.loc[~table["scored"].astype(bool), "image_id"].nunique()),
                    "empty_regions": int(scored.loc[scored["rule"] == r, "empty_region"].sum()),
                    "resampled": by, "level": level, "n_boot": int(n_boot)})
        out.append(row)
    return pd.DataFrame(out).sort_values("iou", ascending=False, kind="stable").reset_index(drop=True)


def recommend_rule(summary: pd.DataFrame, *, margin: float = 0.0) -> dict[str, Any]:
    """``{"best", "recommended", "tied", "reason"}`` from :func:`summarize_rules`' table.

    ``best``: the highest mean IoU. ``tied``: the rules whose paired IoU difference to it has an
    interval reaching ``-margin`` or above (0 by default: the data cannot tell them apart;
    a ``margin`` also counts differences smaller than it as no difference), ``best`` included.
    ``recommended``: the first of ``tied`` in :data:`SIMPLICITY` order."""
    best = str(summary.loc[summary["iou"].idxmax(), "rule"])
    tied = [str(r.rule) for r in summary.itertuples() if r.rule == best or r.iou_vs_best_hi >= -float(margin)]
    order = {r: i for i, r in enumerate(SIMPLICITY)}
    rec = min(tied, key=lambda r: order.get(r, len(order)))
    b = summary.set_index("rule").loc[best]
    if (summary["empty_regions"] >= summary["n_images"]).all():
        return {"best": best, "recommended": rec, "tied": tied,
                "reason": "every map is flat: no rule keeps a region, so these images cannot rank the rules."}
    if rec == best and len(tied) == 1:
        reason = (f"{best} has the highest mean IoU ({b['iou']:.3f}) and every other rule's paired difference "
                  "interval lies below 0.")
    elif rec == best:
        reason = (f"{best} has the highest mean IoU ({b['iou']:.3f}); {', '.join(t for t in tied if t != best)} "
                  "cannot be told apart from it (paired difference interval contains 0), and it is also the simplest.")
    else:
        reason = (f"{best} has the highest mean IoU ({b['iou']:.3f}) but {rec} is within its interval "
                  "(paired difference interval contains 0) and is simpler, so it is kept.")
    return {"best": best, "recommended": rec, "tied": tied, "reason": reason}
