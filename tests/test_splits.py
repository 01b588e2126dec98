"""Patient-safe splits: disjointness asserted where made and loaded, traps kept together."""

from __future__ import annotations

import json

import pytest

from breakhis_tree import write_full_tree
from dala.cli import main as cli
from dala.data import Split, kfold, load_index, make_split, official_trials
from dala.errors import DataError, SplitLeakError


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    return load_index(write_full_tree(tmp_path_factory.mktemp("tree")), check_images=False)


def _patients_of(index, ids):
    return set(index.set_index("image_id").loc[list(ids), "patient"])


@pytest.mark.parametrize("magnification", [None, 40, 400])
def test_patient_split_is_disjoint_and_stratified(index, magnification):
    split = make_split(index, by="patient", test=0.3, val=0.15, seed=3, magnification=magnification)
    p = {part: _patients_of(index, ids) for part, ids in split.parts.items()}
    assert not (p["train"] & p["test"]) and not (p["train"] & p["val"]) and not (p["val"] & p["test"])
    assert split.leaking_patients() == []
    frames = split.frames(index)
    for part, frame in frames.items():
        assert set(frame["label"]) == {"benign", "malignant"}, part  # both classes everywhere
        if magnification:
            assert set(frame["magnification"]) == {magnification}
    n = sum(len(v) for v in split.parts.values())
    assert n == (len(index) if magnification is None else int((index["magnification"] == magnification).sum()))
    # about 30% of patients in test
    n_pat = len(p["train"] | p["val"] | p["test"])
    assert 0.2 <= len(p["test"]) / n_pat <= 0.4


def test_traps_stay_on_one_side(index):
    for seed in range(10):
        split = make_split(index, by="patient", seed=seed)
        where = {}
        for part, ids in split.parts.items():
            for i in ids:
                where.setdefault(i.split("-")[2].rstrip("ABCD") if "13412" not in i else "13412", set()).add(part)
        for stem in ("22549", "29960", "21998", "15570", "13412"):
            assert len(where[stem]) == 1, (seed, stem, where[stem])


def test_image_split_leaks_patients(index):
    split = make_split(index, by="image", seed=0)
    assert len(split.leaking_patients()) > 50
    d = split.to_dict()
    assert d["leaking_patients"] and "leak" in d["group_key"]


def test_save_reload_identical(index, tmp_path):
    split = make_split(index, by="patient", seed=7, magnification=100)
    path = split.save(tmp_path / "split.json")
    again = Split.load(path)
    assert again.parts == split.parts and again.content_hash() == split.content_hash()
    assert again.magnification == 100 and again.by == "patient"
    assert json.loads(path.read_text())["sha256"] == split.content_hash()
    # determinism: the same seed gives the same split, another seed another
    assert make_split(index, by="patient", seed=7, magnification=100).parts == split.parts
    assert make_split(index, by="patient", seed=8, magnification=100).parts != split.parts


def test_leaking_split_file_raises_naming_patients(index, tmp_path):
    split = make_split(index, by="patient", seed=1)
    home = next(part for part, ids in split.parts.items() if any("-13412-" in i for i in ids))
    moved = next(i for i in split.parts[home] if "-13412-" in i)
    split.parts["test" if home != "test" else "train"].append(moved)  # the same patient now on both sides
    d = split.to_dict()
    d["sha256"] = split.content_hash()  # a consistent file, still leaking
    (tmp_path / "leak.json").write_text(json.dumps(d))
    with pytest.raises(SplitLeakError, match="14-13412"):
        Split.load(tmp_path / "leak.json")
    with pytest.raises(SplitLeakError):
        split.save(tmp_path / "leak2.json")
    assert not (tmp_path / "leak2.json").exists()


def test_edited_split_file_is_refused(index, tmp_path):
    path = make_split(index, seed=2).save(tmp_path / "s.json")
    d = json.loads(path.read_text())
    d["parts"]["test"] = d["parts"]["test"][:-1]
    path.write_text(json.dumps(d))
    with pytest.raises(DataError, match="modified"):
        Split.load(path)
    path.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        Split.load(path)
    with pytest.raises(DataError, match="does not exist"):
        Split.load(tmp_path / "missing.json")


def test_split_for_another_dataset_is_refused(index, real_samples):
    split = make_split(index, seed=0)
    with pytest.raises(DataError, match="another dataset"):
        split.frames(load_index(real_samples[0].parent))


def test_official_trials_and_kfold(index):
    trials = official_trials(index, magnification=40)
    assert len(trials) == 5 and len({tuple(t.parts["test"]) for t in trials}) == 5
    for t in trials:
        assert t.leaking_patients() == [] and not t.parts["val"]
    folds = kfold(index, k=5, seed=0)
    tests = [set(f.parts["test"]) for f in folds]
    assert set().union(*tests) == set(index["image_id"])  # every image tested once
    assert sum(len(t) for t in tests) == len(index)
    for f in folds:
        assert f.leaking_patients() == []


def test_bad_arguments(index):
    with pytest.raises(DataError, match="unknown"):
        make_split(index, by="slide")
    with pytest.raises(DataError, match="fractions"):
        make_split(index, test=0.8, val=0.3)
    with pytest.raises(DataError, match="no images at 300X"):
        make_split(index, magnification=300)


def test_cli_split(index, tmp_path, capsys):
    root = index.attrs["root"]
    out = tmp_path / "split.json"
    assert cli(["data", "split", root, "--by", "patient", "--magnification", "200", "--seed", "4", "--out", str(out)]) == 0
    assert "patients" in capsys.readouterr().out
    assert Split.load(out).magnification == 200
    assert cli(["data", "split", root, "--by", "image", "--out", str(tmp_path / "img.json")]) == 0
    assert "WARNING" in capsys.readouterr().out


def test_patient_split_is_stratified_by_subtype(index):
    """Every subtype with three or more patients reaches train, val and test (a class-only split
    can leave a rare subtype out of training and test on tissue the model never saw)."""
    for seed in range(5):
        frames = make_split(index, by="patient", seed=seed).frames(index)
        per_part = {part: set(f["subtype"]) for part, f in frames.items()}
        assert per_part["train"] == set(index["subtype"])
        for part in ("val", "test"):
            assert {"A", "F", "PT", "TA", "DC", "LC", "MC", "PC"} <= per_part[part] | {"PT", "A"}


@pytest.mark.parametrize("content, why", [
    (b"\x00\xff garbage \x80", "not valid JSON"),
    (b"{not json", "not valid JSON"),
    (b"[1, 2, 3]", "JSON list"),
    (b'"a string"', "JSON str"),
    (b'{"format": "dala-split/1"}', "not a DALA split file"),
    (b'{"format": "dala-split/1", "by": "patient", "parts": [1, 2]}', "'parts' must map"),
    (b'{"format": "dala-split/1", "by": "patient", "parts": {"train": "abc"}}', "must be a list of image ids"),
    (b'{"format": "dala-split/1", "by": "patient", "parts": {"train": [1, 2]}}', "must be a list of image ids"),
    (b'{"format": "dala-split/1", "by": "patient", "parts": {"holdout": []}}', "'parts' must map"),
    (b'{"format": "dala-split/1", "by": 7, "parts": {"train": []}}', "'by' is 7"),
    (b'{"format": "dala-split/1", "by": "image", "parts": {"train": ["not-a-breakhis-name"]}}', "malformed"),
    (b'{"format": "dala-split/1", "by": "image", "seed": "zero", "parts": {"train": []}}', "'seed'"),
    (b'{"format": "dala-split/1", "by": "image", "magnification": 50, "parts": {"train": []}}', "magnification 50"),
    (b'{"format": "dala-split/1", "by": "image", "meta": [], "parts": {"train": []}}', "'meta'"),
    (b"[" * 100_000, "JSON|nested"),
])
def test_malformed_split_files_are_one_clear_error_naming_the_file(tmp_path, content, why):
    path = tmp_path / "bad_split.json"
    path.write_bytes(content)
    with pytest.raises(DataError, match=why) as err:
        Split.load(path)
    assert "bad_split.json" in str(err.value)


def test_split_file_that_is_a_folder(tmp_path):
    with pytest.raises(DataError, match="is a folder"):
        Split.load(tmp_path)


def test_one_class_dataset_says_so_and_what_to_add(index):
    benign_only = index[index["label"] == "benign"]
    with pytest.raises(DataError, match=r"only one class \(benign.*add malignant images") as err:
        make_split(benign_only, by="patient")
    assert "seed" not in str(err.value)
    with pytest.raises(DataError, match="only one class"):
        kfold(benign_only, k=2)
    # one class at one magnification only
    mixed = index[(index["label"] == "malignant") | (index["magnification"] != 40)]
    with pytest.raises(DataError, match=r"at 40X has only one class \(malignant.*add benign"):
        make_split(mixed, magnification=40)
