"""DT Grad-CAM's threshold rules scored against lesion masks (dala.explain.dt_rules) and the bench."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dala.explain import ExplainError
from dala.explain.dt_rules import (DEFAULT_RULE, RULES, SCORES, compare_rules, recommend_rule, score_rules_on_map,
                                   summarize_rules)

ROOT = Path(__file__).resolve().parents[1]


def blob_mask(h=46, w=70):
    m = np.zeros((h, w), bool)
    m[10:30, 20:45] = True
    return m


def test_a_map_that_matches_the_mask_scores_iou_near_one_for_a_sensible_rule():
    mask = blob_mask()
    heat = np.where(mask, 0.9, 0.05).astype(np.float32)
    heat += np.random.default_rng(0).uniform(0, 0.05, heat.shape).astype(np.float32)  # not flat on either side
    rows = score_rules_on_map(heat, mask)
    assert [r["rule"] for r in rows] == list(RULES)
    by = {r["rule"]: r for r in rows}
    for rule in ("otsu", "fixed"):
        assert by[rule]["iou"] > 0.98 and by[rule]["dice"] > 0.99 and by[rule]["recall"] > 0.98
    # the lesion is 16 % of the frame: the top-20 % percentile rule keeps more than the lesion
    assert by["percentile"]["precision"] < 0.85 and by["percentile"]["recall"] > 0.98
    assert all(r["pointing"] == 1.0 for r in rows)  # the map's, not the rule's: the same for every rule
    assert len({r["energy_inside"] for r in rows}) == 1


def test_a_model_resolution_map_is_thresholded_first_then_resized_onto_the_mask():
    mask = np.zeros((92, 140), bool)
    mask[:, :70] = True
    heat = np.zeros((32, 32), np.float32)
    heat[:, :16] = 1.0
    (row,) = score_rules_on_map(heat, mask, rules=["fixed"])
    assert row["iou"] == pytest.approx(1.0, abs=0.02)


def test_a_mask_without_lesion_pixels_and_an_all_zero_map_are_handled_without_nan_crashes():
    mask = blob_mask()
    empty = score_rules_on_map(np.random.default_rng(1).random(mask.shape), np.zeros_like(mask))
    assert all(not r["scored"] and np.isnan(r["iou"]) and "no lesion" in r["note"] for r in empty)
    flat = score_rules_on_map(np.zeros(mask.shape, np.float32), mask)
    for r in flat:
        assert r["scored"] and r["empty_region"] and "flat map" in r["note"]
        assert r["iou"] == r["dice"] == r["recall"] == r["precision"] == r["pointing"] == r["energy_inside"] == 0.0
        assert all(np.isfinite(r[k]) for k in SCORES)


def test_parameter_variants_are_labelled_and_use_their_own_parameter():
    mask = blob_mask()
    heat = np.linspace(0, 1, mask.size, dtype=np.float32).reshape(mask.shape)
    rows = score_rules_on_map(heat, mask, rules=["percentile", ("percentile", {"q": 50})])
    assert [r["rule"] for r in rows] == ["percentile", "percentile(q=50)"]
    assert rows[0]["region_fraction"] == pytest.approx(0.2, abs=0.01)
    assert rows[1]["region_fraction"] == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ExplainError, match="listed twice"):
        score_rules_on_map(heat, mask, rules=["otsu", "otsu"])


def test_chance_iou_is_what_a_random_region_of_the_same_area_scores():
    rng = np.random.default_rng(0)
    mask = blob_mask(200, 300)
    heat = rng.random(mask.shape).astype(np.float32)  # pixel noise: the region lands at random
    (row,) = score_rules_on_map(heat, mask, rules=[("percentile", {"q": 50})])
    assert row["iou"] == pytest.approx(row["iou_chance"], abs=0.01) and abs(row["iou_lift"]) < 0.01


def test_unknown_rules_are_refused_by_name():
    with pytest.raises(ExplainError, match="unknown DT Grad-CAM rule.*'magic'"):
        score_rules_on_map(np.ones((4, 4)), np.ones((4, 4), bool), rules=["otsu", "magic"])


def _table(ious: dict[str, list[float]], patients: list[str]) -> pd.DataFrame:
    rows = []
    for rule, vals in ious.items():
        for i, (v, p) in enumerate(zip(vals, patients)):
            rows.append({"image_id": f"img{i}", "patient": p, "rule": rule, "scored": True, "note": "",
                         "threshold": 0.5, "empty_region": False, "mask_fraction": 0.2,
                         **{k: v for k in SCORES}})
    return pd.DataFrame(rows)


def test_summary_gives_one_row_per_rule_with_patient_intervals_and_paired_differences():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.6, 40)
    patients = [f"p{i // 4}" for i in range(40)]
    noise = 0.02 * rng.standard_normal(40)
    noise -= noise.mean()  # fixed = otsu on average: their paired difference is 0 with some spread
    table = _table({"otsu": list(base), "mean_std": list(base - 0.1), "fixed": list(base + noise)}, patients)
    table.loc[len(table)] = {**table.iloc[0].to_dict(), "image_id": "benign", "scored": False, "iou": np.nan}
    s = summarize_rules(table, n_boot=500)
    assert sorted(s["rule"]) == ["fixed", "mean_std", "otsu"] and s["n_images"].eq(40).all()
    assert s["n_patients"].eq(10).all() and s["n_skipped"].eq(1).all()
    assert ((s["iou_lo"] <= s["iou"]) & (s["iou"] <= s["iou_hi"])).all()
    ms = s.set_index("rule").loc["mean_std"]
    assert ms["iou_vs_best"] == pytest.approx(-0.1, abs=0.002) and ms["iou_vs_best_hi"] < 0  # paired: clearly worse
    v = recommend_rule(s)
    # otsu and fixed are tied within the interval: the simpler (parameter-free) one is recommended
    assert set(v["tied"]) == {"otsu", "fixed"} and v["recommended"] == "otsu" and "mean_std" not in v["tied"]


def test_all_flat_maps_rank_no_rule():
    table = _table({"otsu": [0.0] * 4, "fixed": [0.0] * 4}, ["p0", "p0", "p1", "p1"]).assign(empty_region=True)
    v = recommend_rule(summarize_rules(table, n_boot=100))
    assert "cannot rank the rules" in v["reason"]


def test_summary_refuses_a_table_with_nothing_scored():
    table = _table({"otsu": [0.5]}, ["p0"]).assign(scored=False)
    with pytest.raises(ExplainError, match="no image was scored"):
        summarize_rules(table)


@pytest.fixture(scope="module")
def tiny_model():
    import torch

    from dala.models import create_model

    torch.manual_seed(0)
    return create_model("tiny_cnn", pretrained=False)


def test_compare_rules_keeps_exactly_the_region_dt_gradcam_keeps(tiny_model, tiny_index):
    from dala.explain import explain
    from dala.explain.faithfulness import score_explanation

    rows = tiny_index[tiny_index["mask_path"].notna()].head(3)
    items = list(zip(rows["path"], rows["mask_path"])) + [(rows["path"].iloc[0], None)]
    ids = list(rows["image_id"]) + ["no-mask"]
    table = compare_rules(tiny_model, items, ids=ids, patients=list(rows["patient"]) + ["x"], input_size=64)
    assert len(table) == len(items) * len(RULES)
    assert table.groupby("image_id")["rule"].apply(list).map(lambda r: r == list(RULES)).all()
    assert not table.loc[table["image_id"] == "no-mask", "scored"].any()
    from dala.data.masks import read_lesion_mask

    path, mpath = items[0]
    mask = read_lesion_mask(mpath)
    for rule in RULES:
        (e,) = explain(tiny_model, [path], method="dt-gradcam", rule=rule, target=1, input_size=64)
        mine = table[(table["image_id"] == ids[0]) & (table["rule"] == rule)].iloc[0]
        assert mine["iou"] == pytest.approx(score_explanation(e, mask)["iou"], abs=1e-9)
        assert mine["threshold"] == pytest.approx(e.threshold, abs=1e-6)


def test_compare_rules_refuses_a_mask_of_the_wrong_size(tiny_model):
    image = np.zeros((40, 60, 3), np.uint8)
    with pytest.raises(ExplainError, match="masks must match their images"):
        compare_rules(tiny_model, [(image, np.ones((10, 10), bool))], input_size=32)


def test_bench_tiny_path_runs_and_writes_json(tiny_synth_root, tmp_path, capsys):
    """The bench end to end on the tests' tiny dataset: tiny_cnn, 1 epoch at 32 px (~10 s)."""
    spec = importlib.util.spec_from_file_location("bench_dt_rules", ROOT / "bench" / "bench_dt_rules.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "dt.json"
    assert bench.main(["--tiny", "--data", str(tiny_synth_root), "--run-dir", str(tmp_path / "run"),
                       "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "best:" in text and "recommended:" in text and "load average" in text
    data = json.loads(out.read_text())
    assert [r["model"].split()[0] for r in data["results"]] == ["tiny_cnn", "tiny_cnn"]  # trained + untrained
    assert sorted(r["rule"] for r in data["results"][0]["rules"]) == sorted(RULES)
    # a second call reuses the finished run instead of training again
    assert bench.main(["--tiny", "--data", str(tiny_synth_root), "--run-dir", str(tmp_path / "run"),
                       "--no-untrained"]) == 0
    assert "reused" in capsys.readouterr().out


def test_the_rule_names_are_import_light_and_the_cli_help_names_the_default():
    code = ("import sys, dala.explain.dt_rules, dala.explain.cli; "
            "assert 'torch' not in sys.modules and 'pandas' not in sys.modules, 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    help_text = subprocess.run([sys.executable, "-m", "dala", "explain", "--help"], capture_output=True, text=True,
                               check=True, cwd=ROOT).stdout
    assert f"(default {DEFAULT_RULE}" in " ".join(help_text.split())
    from dala.explain.dt_gradcam import DEFAULT_RULE as reexported, DTGradCAMExplainer

    assert reexported == DEFAULT_RULE and DTGradCAMExplainer.params["rule"] == DEFAULT_RULE
