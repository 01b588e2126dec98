"""The stain lesson measured (dala.data.stain_lesson): the colour-only 1-NN classifier under an
image-level and a patient-level split, with and without stain normalisation, on the tiny
synthetic set (12 patients, every one with its own stain signature: colour identifies a patient).
Bad input is a DataError that says what to change."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from dala.data.stain_lesson import (METHODS, SPLITS, colour_features, colour_leak_figure, colour_leak_reading,
                                    measure_colour_leak, pick_images, table)
from dala.errors import DataError

N_BOOT = 200  # intervals are not what these tests check: keep the bootstrap small


@pytest.fixture(scope="module")
def leak(tiny_index):
    import torch

    seen, threads = [], torch.get_num_threads()
    result = measure_colour_leak(tiny_index, n_boot=N_BOOT, progress=lambda d, n: seen.append((d, n)))
    assert torch.get_num_threads() == threads  # one torch thread while it normalised, restored after
    return result, seen


def test_every_method_and_split_is_one_row_with_counts_and_an_interval(leak, tiny_index):
    result, _ = leak
    s = result.scores
    assert list(zip(s["method"], s["split"])) == [(m, by) for m in METHODS for by in SPLITS]
    assert {"balanced_accuracy", "lo", "hi", "n_train", "n_test", "n_test_patients"} <= set(s.columns)
    assert ((s["lo"] <= s["balanced_accuracy"]) & (s["balanced_accuracy"] <= s["hi"])).all()
    # the classifier trains on the train part and is scored on the test part (validation is left out)
    assert (s["n_train"] + s["n_test"] < len(tiny_index)).all() and (s["n_test"] > 0).all()
    patient = s[s["split"] == "patient"]
    assert (patient["n_test_patients"] < tiny_index["patient"].nunique()).all()
    g = result.gaps.set_index("method")
    for m in METHODS:
        assert g.loc[m, "gap"] == pytest.approx(result.score(m, "image") - result.score(m, "patient"))
        assert g.loc[m, "gap_lo"] <= g.loc[m, "gap"] <= g.loc[m, "gap_hi"]
    assert result.n_images == result.n_images_total == len(tiny_index) and result.per_patient is None
    assert result.synthetic and result.reference and result.fell_back == {"reinhard": 0, "macenko": 0}
    assert list(table(result).index) == list(METHODS)


def test_colour_alone_scores_higher_when_the_split_leaks_patients(leak):
    """Each synthetic patient has its own stain signature: 1-NN on colour finds the test image's
    own patient among the training images under the image-level split, and cannot under the
    patient-level split."""
    result, _ = leak
    assert result.score("none", "image") >= 0.9
    assert result.score("none", "patient") <= 0.6
    assert result.gap("none") > 0.3
    reading = colour_leak_reading(result)
    assert reading.startswith("SYNTHETIC data, where every patient has its own stain signature")
    few = int(result.scores["n_test_patients"].min())  # 3 on the tiny set: the reading says so
    assert f"Only {few} test patients in the patient-level split: the intervals are wide" in reading


def test_progress_runs_to_the_total_without_going_back(leak, tiny_index):
    _, seen = leak
    total = 3 * len(tiny_index)  # read once, then normalised by each of the two methods
    assert seen and all(n == total for _, n in seen)
    done = [d for d, _ in seen]
    assert done == sorted(done) and done[-1] == total


def test_the_batched_normaliser_gives_the_features_of_one_image_at_a_time(tiny_index):
    """What the notebook computed before, image by image (normalize_rgb), is what the batched
    path measures."""
    from dala.data.stain import StainNormalizer
    from dala.data.stain_lesson import load_thumbnails, normalised_features

    paths = tiny_index["path"].tolist()[::6]  # 16 images, every subtype and magnification
    thumbs, bad = load_thumbnails(paths)
    assert not bad and len(thumbs) == len(paths) > 10
    norm = StainNormalizer("macenko", reference=paths[0])
    batched, fell = normalised_features(thumbs, norm)
    one_by_one = colour_features([norm.normalize_rgb(t)[0] for t in thumbs])
    assert fell == 0 and np.array_equal(batched, one_by_one)


def test_a_cap_per_patient_bounds_the_work_and_keeps_every_magnification(tiny_index):
    rows = pick_images(tiny_index, 4)
    assert len(rows) == 4 * tiny_index["patient"].nunique()
    assert (rows.groupby("patient")["magnification"].nunique() == 4).all()  # one per magnification, in turn
    assert pick_images(tiny_index, 4)["image_id"].tolist() == rows["image_id"].tolist()  # deterministic
    result = measure_colour_leak(tiny_index, per_patient=4, methods=("none",), n_boot=N_BOOT)
    assert result.n_images == len(rows) and result.n_images_total == len(tiny_index)
    assert "up to 4 per patient" in result.describe() and f"{len(rows)} of {len(tiny_index)} images" in result.describe()
    assert set(result.scores["method"]) == {"none"} and not result.reference  # no normalisation: no reference needed


def test_one_patient_of_a_class_is_a_clear_data_error(tiny_index):
    one_benign = tiny_index[tiny_index["label"] == "benign"]["patient"].iloc[0]
    rows = tiny_index[(tiny_index["label"] == "malignant") | (tiny_index["patient"] == one_benign)]
    with pytest.raises(DataError, match=r"at least 2 patients of each class.*1 benign patient"):
        measure_colour_leak(rows, n_boot=N_BOOT)


@pytest.mark.parametrize("kwargs, match", [
    ({"methods": ("vahadane",)}, "unknown: use some of none, reinhard, macenko"),
    ({"per_patient": 1}, "at least 2 images per patient"),
    ({"thumb_side": 8}, "at least 32 px"),
])
def test_bad_options_are_data_errors_naming_the_fix(tiny_index, kwargs, match):
    with pytest.raises(DataError, match=match):
        measure_colour_leak(tiny_index, **kwargs)


def test_not_an_index_or_an_empty_one_is_a_data_error(tiny_index):
    with pytest.raises(DataError, match="dataset index"):
        measure_colour_leak(pd.DataFrame({"path": ["a.png"]}))
    with pytest.raises(DataError, match="empty"):
        measure_colour_leak(tiny_index.iloc[:0])


def test_an_unreadable_image_is_left_out_and_counted(tiny_index, tmp_path):
    rows = tiny_index.copy()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a PNG at all")
    rows.loc[rows.index[0], "path"] = str(broken)
    result = measure_colour_leak(rows, methods=("none",), n_boot=N_BOOT)
    assert result.unreadable == 1 and result.n_images == len(rows) - 1
    assert "1 unreadable image(s) left out" in result.describe()


def test_the_figure_and_the_reading_say_what_the_data_is(leak):
    result, _ = leak
    fig = colour_leak_figure(result)
    assert "(SYNTHETIC)" in fig.layout.title.text
    bars = [d for d in fig.data if d.type == "bar"]
    assert [b.name for b in bars] == ["image-level split (leaks patients)", "patient-level split"]
    assert list(bars[0].y) == pytest.approx(result.scores.query("split == 'image'")["balanced_accuracy"].tolist())
    real = dataclasses.replace(result, synthetic=False)
    assert "(SYNTHETIC)" not in colour_leak_figure(real).layout.title.text
    reading = colour_leak_reading(real)
    assert reading.startswith("Real data: the gap measures how much colour alone")
    assert f"no normalisation {result.score('none', 'image'):.2f} (image-level)" in reading
