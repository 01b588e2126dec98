"""The Imbalance Lab's API: strategies do what they claim, the bank is whole or rebuilt, bad
input gets a clear message. Strategy claims are checked on controlled Gaussian features (the
lesson's effects without a network); the bank and the Lab on a tiny generated dataset with a
tiny encoder (tiny_cnn's random stem at 64 px)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from dala.lab.common import RATIOS, STRATEGIES, BankError, LabError

TINY_ENCODER = "random_stem:tiny_cnn@64"


# ----------------------------------------------------------------------------- controlled features
def gaussians(n_benign: int, n_malignant: int, *, seed: int, dim: int = 8, shift: float = 1.0):
    """Two overlapping Gaussian classes: benign centred at 0, malignant at +shift on every axis."""
    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.normal(0, 1, (n_benign, dim)), rng.normal(shift, 1, (n_malignant, dim))]).astype(np.float32)
    y = np.array([0] * n_benign + [1] * n_malignant)
    return X, y


def recall_of(y, pred, cls):
    return float((pred[y == cls] == cls).mean())


def test_class_weighting_raises_minority_recall_at_an_extreme_ratio():
    from dala.lab.heads import fit_head

    X, y = gaussians(10, 200, seed=0, shift=0.5)  # benign 1:20
    Xt, yt = gaussians(500, 500, seed=1, shift=0.5)
    plain = fit_head(X, y, "none")
    weighted = fit_head(X, y, "class_weight")
    r_plain = recall_of(yt, (plain.prob_malignant(Xt) >= 0.5).astype(int), 0)
    r_weighted = recall_of(yt, (weighted.prob_malignant(Xt) >= 0.5).astype(int), 0)
    assert r_plain < 0.3, r_plain  # the rare benign class is mostly called malignant
    assert r_weighted > r_plain + 0.3, (r_plain, r_weighted)


@pytest.mark.parametrize("strategy", ["oversample", "smote", "undersample"])
def test_resampling_strategies_fit_on_balanced_points(strategy):
    from dala.lab.heads import fit_head

    X, y = gaussians(12, 120, seed=2)
    head = fit_head(X, y, strategy)
    counts = head.fitted_counts
    assert counts["benign"] == counts["malignant"]
    assert counts["benign"] == (12 if strategy == "undersample" else 120)
    Xt, yt = gaussians(300, 300, seed=3)
    assert recall_of(yt, (head.prob_malignant(Xt) >= 0.5).astype(int), 0) > 0.5


def test_focal_loss_head_uses_the_training_loops_focal_loss_and_learns():
    from dala.lab.heads import fit_head

    X, y = gaussians(100, 100, seed=4, shift=1.5)
    head = fit_head(X, y, "focal")
    assert head.info["solver"] == "torch L-BFGS"
    Xt, yt = gaussians(200, 200, seed=5, shift=1.5)
    acc = float(((head.prob_malignant(Xt) >= 0.5).astype(int) == yt).mean())
    assert acc > 0.85


def test_logit_adjustment_equals_its_closed_form():
    from dala.lab.heads import fit_head

    X, y = gaussians(20, 180, seed=6)
    plain = fit_head(X, y, "none")
    adjusted = fit_head(X, y, "logit_adjust", base=plain)
    pi0, pi1 = 20 / 200, 180 / 200
    Xt, _ = gaussians(50, 50, seed=7)
    z = plain.margin(Xt)  # z1 - z0
    expected = 1.0 / (1.0 + np.exp(-(z - math.log(pi1 / pi0))))  # softmax(z - log prior), malignant column
    np.testing.assert_allclose(adjusted.prob_malignant(Xt), expected, rtol=1e-9, atol=1e-12)
    # equivalently: the adjusted 0.5 cut is the plain posterior cut at the malignant prior
    np.testing.assert_array_equal(adjusted.prob_malignant(Xt) >= 0.5, plain.prob_malignant(Xt) >= pi1)


def test_threshold_moving_reaches_the_validation_chosen_operating_point():
    from imblearn.metrics import geometric_mean_score

    from dala.lab.heads import choose_threshold, fit_head

    X, y = gaussians(15, 150, seed=8)
    Xv, yv = gaussians(40, 80, seed=9)
    head = fit_head(X, y, "threshold", X_val=Xv, y_val=yv)
    pv = fit_head(X, y, "none").prob_malignant(Xv)
    t, g = choose_threshold(yv, pv)
    assert head.threshold == pytest.approx(t)
    assert head.info["val_gmean"] == pytest.approx(geometric_mean_score(yv, (pv >= t).astype(int)))
    grid = np.unique(np.concatenate([pv, np.linspace(0, 1, 201)]))
    best = max(geometric_mean_score(yv, (pv >= c).astype(int)) for c in grid)
    assert g == pytest.approx(best)  # no cut does better on validation
    assert head.threshold != pytest.approx(0.5)


def test_prevalence_copies_reach_the_share_with_whole_copies():
    from dala.lab.scoring import prevalence_copies

    for m, b, p in [(124, 62, 0.1), (124, 62, 0.5), (124, 62, 0.9), (30, 70, 0.3)]:
        a, c = prevalence_copies(m, b, p)
        assert 1 <= a <= 40 and 1 <= c <= 40
        assert abs(a * m / (a * m + c * b) - p) < 0.02


# ----------------------------------------------------------------------------- the bank and the Lab
def replace_file(path, data: bytes) -> None:
    """A damaged copy put in place (a new file): writing into the mapped file itself would pull
    the pages from under the open memory maps (SIGBUS), which no dala code ever does."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    tmp.replace(path)


@pytest.fixture(scope="module")
def lab_home(tmp_path_factory):
    return tmp_path_factory.mktemp("lab_home")


@pytest.fixture
def home(lab_home, monkeypatch):
    monkeypatch.setenv("DALA_HOME", str(lab_home))
    return lab_home


@pytest.fixture
def tiny_lab(home, tiny_index):
    from dala.lab.api import open_lab

    return open_lab(index=tiny_index, encoder=TINY_ENCODER, progress=False)


def test_bank_round_trip_is_memory_mapped_and_reused(tiny_lab, tiny_index):
    from dala.lab.bank import get_bank, load_bank

    bank = tiny_lab.bank
    assert isinstance(bank.features, np.memmap) and not bank.features.flags.writeable
    assert bank.features.shape[0] == len(tiny_index) == len(bank.image_ids)
    again = load_bank(bank.folder, fingerprint=bank.fingerprint)
    np.testing.assert_array_equal(np.asarray(again.features), np.asarray(bank.features))
    reused = get_bank(tiny_index, TINY_ENCODER, progress=False)
    assert not reused.built_now and reused.rebuilt is None and reused.folder == bank.folder
    header = json.loads((bank.folder / "bank.json").read_text())
    assert header["dataset"]["source"] == "synthetic" and header["encoder"]["kind"] == "random_stem"
    assert "features.npy" in {p.name for p in bank.folder.iterdir()}


def test_truncated_bank_is_detected_and_rebuilt(tiny_lab, tiny_index):
    from dala.lab.bank import get_bank, load_bank

    path = tiny_lab.bank.folder / "features.npy"
    data = path.read_bytes()
    replace_file(path, data[: len(data) // 2])
    with pytest.raises(BankError, match="truncated"):
        load_bank(tiny_lab.bank.folder)
    bank = get_bank(tiny_index, TINY_ENCODER, progress=False)
    assert bank.built_now and "truncated" in bank.rebuilt
    np.testing.assert_allclose(np.asarray(bank.features), np.asarray(tiny_lab.X), rtol=1e-5, atol=1e-5)


def test_altered_bank_fails_its_checksum(tiny_lab, tiny_index):
    from dala.lab.bank import get_bank, load_bank

    folder = get_bank(tiny_index, TINY_ENCODER, progress=False).folder
    path = folder / "features.npy"
    data = bytearray(path.read_bytes())
    data[-4:] = b"\x00\x00\x80\x7f"  # same size, last value changed
    replace_file(path, bytes(data))
    with pytest.raises(BankError, match="checksum"):
        load_bank(folder)
    assert get_bank(tiny_index, TINY_ENCODER, progress=False).built_now


def test_bank_from_another_dataset_is_refused(tiny_lab, tiny_index, home):
    from dala.lab.bank import bank_folder, get_bank, load_bank
    from dala.lab.encoders import resolve_encoder

    other = tiny_index.iloc[: len(tiny_index) - 8].copy()
    other.attrs = dict(tiny_index.attrs)
    bank = get_bank(tiny_index, TINY_ENCODER, progress=False)
    with pytest.raises(BankError, match="another dataset"):
        load_bank(bank.folder, fingerprint="0" * 64)
    # a foreign bank copied where this dataset's bank belongs is rebuilt, never used
    from dala.lab.bank import dataset_fingerprint

    target = bank_folder(dataset_fingerprint(other), resolve_encoder(TINY_ENCODER))
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(bank.folder, target)
    rebuilt = get_bank(other, TINY_ENCODER, progress=False)
    assert rebuilt.built_now and "another dataset" in rebuilt.rebuilt
    assert len(rebuilt.image_ids) == len(other)


def test_every_strategy_scores_with_sizes_and_provenance(tiny_lab):
    for strategy in STRATEGIES:
        res = tiny_lab.score(strategy, 1.0)
        assert set(["accuracy", "balanced_accuracy", "gmean", "iba", "f1_macro", "sensitivity", "specificity",
                    "precision", "patient_accuracy"]) <= set(res.row)
        assert res.provenance["source"] == "synthetic" and "SYNTHETIC" in res.provenance["dataset"]
        assert "tiny_cnn" in res.provenance["encoder"] and "random" in res.provenance["encoder"]
        assert "patient-level" in res.provenance["split"]
        tr = res.sizes["train"]
        assert tr["benign"] == tr["malignant"]  # ratio 1.0 by subsampling
        assert res.curves and res.curves["operating_point"]["threshold"] == res.threshold
    assert set(res.baselines) == {"always malignant", "always benign"}
    assert res.baselines["always malignant"]["sensitivity"] == 1.0
    assert res.baselines["always benign"]["specificity"] == 1.0


def test_ratio_subsamples_the_training_images(tiny_lab):
    res = tiny_lab.score("none", 0.25)
    tr, av = res.sizes["train"], res.sizes["train_available"]
    assert tr["malignant"] == av["malignant"] and tr["benign"] == round(0.25 * av["malignant"])
    assert res.sizes["test"]["benign"] == tiny_lab.score("none", 1.0).sizes["test"]["benign"]  # test untouched


def test_prevalence_shift_leaves_sensitivity_unchanged(tiny_lab):
    base = tiny_lab.score("class_weight", 1.0)
    for prev in (0.1, 0.5, 0.9):
        shifted = tiny_lab.score("class_weight", 1.0, test_prevalence=prev)
        for key in ("sensitivity", "specificity", "balanced_accuracy", "gmean", "patient_accuracy"):
            assert shifted.row[key] == pytest.approx(base.row[key], abs=1e-12), key
        te = shifted.sizes["test"]
        assert abs(te["prevalence"] - prev) < 0.03
        assert te["malignant"] == base.sizes["test"]["malignant"] * te["copies_malignant"]
    low = tiny_lab.score("class_weight", 1.0, test_prevalence=0.1).row
    high = tiny_lab.score("class_weight", 1.0, test_prevalence=0.9).row
    assert low["accuracy"] != pytest.approx(high["accuracy"]) or low["precision"] != pytest.approx(high["precision"])


def test_threshold_changes_only_the_cut_and_reuses_the_fit(tiny_lab):
    a = tiny_lab.score("none", 1.0, threshold=0.05)
    b = tiny_lab.score("none", 1.0, threshold=0.95)
    assert a.row["sensitivity"] >= b.row["sensitivity"] and a.row["specificity"] <= b.row["specificity"]
    assert b.timing_ms["fit_cached"]
    assert a.row["roc_auc"] == pytest.approx(b.row["roc_auc"])


def test_image_split_is_offered_for_the_leakage_lesson(tiny_lab):
    res = tiny_lab.score("none", 1.0, split="image")
    assert "LEAK" in res.provenance["split"]


def test_sweep_has_one_row_per_strategy_and_ratio(tiny_lab):
    from dala.lab.sweeps import sweep

    df = sweep(tiny_lab)
    assert len(df) == len(STRATEGIES) * len(RATIOS)
    assert {"strategy", "ratio", "accuracy", "balanced_accuracy", "gmean", "iba", "f1_macro"} <= set(df.columns)
    assert set(df["strategy"]) == set(STRATEGIES)



def test_a_question_asked_again_is_answered_from_the_cache_and_once_for_many_at_once(tiny_lab, monkeypatch):
    import threading

    from dala.lab import scoring

    fits = []
    real_fit = scoring.fit_head

    def counting_fit(*a, **k):
        fits.append(k.get("head"))
        threading.Event().wait(0.2)  # slow enough that the other threads ask while it runs
        return real_fit(*a, **k)

    monkeypatch.setattr(scoring, "fit_head", counting_fit)
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(tiny_lab.score("class_weight", 0.5)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(answers) == 4 and len(fits) == 1, fits  # single-flight: one fit for four students
    assert sum(bool(a.timing_ms.get("answer_cached")) for a in answers) == 3
    assert len({a.row["gmean"] for a in answers}) == 1
    again = tiny_lab.score("class_weight", 0.5)
    assert again.timing_ms["answer_cached"] and again.row == answers[0].row and len(fits) == 1
    assert not tiny_lab.score("class_weight", 0.5, threshold=0.3).timing_ms.get("answer_cached")  # another question


def test_warmer_answers_the_nearest_questions_first_and_skips_unanswerable_ones(tiny_lab):
    from dala.lab.warm import Warmer, nearest_first

    order = nearest_first(("none", "focal"), (0.05, 0.5, 1.0, 2.0, 20.0), 1.0)
    assert order[:2] == [("none", 1.0), ("focal", 1.0)] and order[2:6] == [
        ("none", 0.5), ("focal", 0.5), ("none", 2.0), ("focal", 2.0)]
    question = dict(threshold=None, test_prevalence=None, split="patient", seed=0, magnification=40, head="linear")
    warmer = Warmer(tiny_lab, order, **question).start()
    assert warmer.finished.wait(120)
    assert warmer.done == len(order) and warmer.skipped >= 1  # 1:20 leaves no benign image at 40X here
    assert tiny_lab.score("focal", 2.0, **question).timing_ms["answer_cached"]


# ----------------------------------------------------------------------------- bad input
def test_ratio_leaving_no_benign_image_names_problem_and_fix(tiny_lab):
    with pytest.raises(LabError, match="leaves no benign training image.*smallest ratio"):
        tiny_lab.score("none", 0.05, magnification=40)


def test_bad_threshold_ratio_and_strategy_are_refused(tiny_lab):
    with pytest.raises(LabError, match=r"outside \[0, 1\]"):
        tiny_lab.score("none", 1.0, threshold=1.5)
    with pytest.raises(LabError, match="outside"):
        tiny_lab.score("none", 50.0)
    with pytest.raises(LabError, match="unknown"):
        tiny_lab.score("sampler", 1.0)


def test_too_few_patients_of_one_class(home, tiny_index):
    from dala.lab.api import open_lab

    benign = tiny_index[tiny_index["target"] == 0]
    keep = tiny_index[(tiny_index["target"] == 1) | (tiny_index["patient"] == benign["patient"].iloc[0])].copy()
    keep.attrs = dict(tiny_index.attrs)
    lab = open_lab(index=keep, encoder=TINY_ENCODER, progress=False)
    with pytest.raises(LabError, match="benign"):
        lab.score("none", 1.0)


def test_unreadable_encoder_checkpoint_is_a_clear_error(tmp_path):
    from dala.lab.encoders import resolve_encoder
    from dala.models import create_model, save_checkpoint

    folder = save_checkpoint(create_model("tiny_cnn", pretrained=False), tmp_path / "ckpt", class_names=["b", "m"])
    (folder / "model.safetensors").write_bytes(b"\x80\x04garbage-pickle")
    with pytest.raises(LabError, match="encoder checkpoint"):
        spec = resolve_encoder(f"checkpoint:{folder}")
        from dala.lab.encoders import build_feature_net

        build_feature_net(spec)
    with pytest.raises(LabError, match="unknown"):
        resolve_encoder("nonsense-encoder")


def test_checkpoint_encoder_reads_the_layer_before_the_head(home, tiny_index, tmp_path):
    import torch

    from dala.lab.api import open_lab
    from dala.lab.encoders import PenultimateFeatures
    from dala.models import create_model, save_checkpoint

    model = create_model("tiny_cnn", pretrained=False)
    folder = save_checkpoint(model, tmp_path / "ck", class_names=["benign", "malignant"])
    net = PenultimateFeatures(model.eval())
    with torch.no_grad():
        assert net(torch.zeros(2, 3, 64, 64)).shape == (2, 32)  # tiny_cnn's head: 256 -> 64 -> 32 -> 2
    lab = open_lab(index=tiny_index, encoder=f"checkpoint:{folder}@64", progress=False)
    assert lab.bank.dim == 32 and "layer before the head" in lab.bank.encoder["label"]
    assert lab.score("none", 1.0).row["accuracy"] is not None


# ----------------------------------------------------------------------------- the CLI
def run_cli(capsys, *argv):
    from dala.cli import main

    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_bank_sweep_and_score(capsys, home, tiny_synth_root):
    root = str(tiny_synth_root)
    code, out, _ = run_cli(capsys, "lab", "bank", "--data", root, "--encoder", TINY_ENCODER)
    assert code == 0 and ("built" in out or "reused" in out) and str(home) in out
    code, out, _ = run_cli(capsys, "lab", "sweep", "--data", root, "--encoder", TINY_ENCODER,
                           "--strategies", "none", "class_weight,threshold", "--ratios", "0.5", "1:1", "--json")
    assert code == 0
    rows = json.loads(out)
    assert len(rows) == 6
    for row in rows:
        assert {"strategy", "ratio", "accuracy", "balanced_accuracy", "gmean", "iba", "f1_macro"} <= set(row)
        assert isinstance(row["ratio"], float)
    assert {r["strategy"] for r in rows} == {"none", "class_weight", "threshold"}
    assert {r["ratio"] for r in rows} == {0.5, 1.0}
    code, out, _ = run_cli(capsys, "lab", "score", "--data", root, "--encoder", TINY_ENCODER, "--strategy",
                           "logit_adjust", "--ratio", "0.25", "--threshold", "0.4", "--test-prevalence", "0.5", "--json")
    assert code == 0
    res = json.loads(out)
    assert res["strategy"] == "logit_adjust" and res["ratio"] == 0.25 and res["threshold"] == 0.4
    assert {"accuracy", "balanced_accuracy", "gmean", "iba", "f1_macro", "sensitivity", "specificity"} <= set(res)
    assert abs(res["sizes"]["test"]["prevalence"] - 0.5) < 0.05
    assert res["provenance"]["source"] == "synthetic"
    code, out, _ = run_cli(capsys, "lab", "score", "--data", root, "--encoder", TINY_ENCODER, "--strategy", "none",
                           "--ratio", "1")
    assert code == 0 and "always malignant" in out and "SYNTHETIC" in out


def test_cli_bad_input_is_one_line_with_the_fix(capsys, home, tiny_synth_root):
    root = str(tiny_synth_root)
    code, _, err = run_cli(capsys, "lab", "score", "--data", root, "--encoder", TINY_ENCODER, "--strategy", "none",
                           "--ratio", "1", "--threshold", "1.5")
    assert code == 2 and "threshold 1.5 is outside [0, 1]" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "lab", "score", "--data", root, "--encoder", TINY_ENCODER, "--strategy", "smoke",
                           "--ratio", "1")
    assert code == 2 and "unknown" in err and "smote" in err
    code, _, err = run_cli(capsys, "lab", "sweep", "--data", root, "--encoder", "checkpoint:/nonexistent/run")
    assert code == 2 and "encoder" in err
