"""The BreakHis index: names, layouts, problems, counts."""

from __future__ import annotations

import json
import shutil

import pytest

from breakhis_tree import COUNTS, FOLDERS, MERGED_AWAY, png_bytes, write_full_tree
from dala.cli import main as cli
from dala.data import load_index, parse_name, scan, summary
from dala.data.breakhis import SUBTYPES, patient_key
from dala.errors import DataError


def test_parser_on_every_real_sample(real_samples):
    for path in real_samples:
        name = parse_name(path.name)
        assert name.filename == path.name
        assert name.label == ("benign" if "_B_" in path.name else "malignant")
        assert name.magnification in (40, 100, 200, 400)
        assert path.name.startswith(name.slide.replace(f"_{name.year}-", f"-{name.year}-"))


def test_parser_fields():
    n = parse_name("SOB_B_A-14-22549AB-40-001.png")
    assert (n.label, n.subtype, n.year, n.slide_id, n.magnification, n.seq) == ("benign", "A", "14", "22549AB", 40, 1)
    assert n.slide == "SOB_B_A_14-22549AB"
    assert n.subtype_folder == "adenosis"
    assert n.patient == "14-22549"


@pytest.mark.parametrize("a,b", [
    ("SOB_M_DC-14-13412-100-001.png", "SOB_M_LC-14-13412-100-001.png"),  # one slide, two labels
    ("SOB_B_A-14-22549AB-40-001.png", "SOB_B_F-14-22549CD-40-001.png"),
    ("SOB_B_A-14-29960AB-40-001.png", "SOB_B_A-14-29960CD-40-001.png"),
    ("SOB_B_PT-14-21998AB-40-001.png", "SOB_B_PT-14-21998CD-40-001.png"),
    ("SOB_M_DC-14-15570-40-001.png", "SOB_M_DC-14-15570C-40-001.png"),
])
def test_trap_cases_share_a_patient_key(a, b):
    assert parse_name(a).patient == parse_name(b).patient
    assert parse_name(a).slide != parse_name(b).slide


@pytest.mark.parametrize("bad,why", [
    ("SOB_X_A-14-22549AB-40-001.png", "naming convention"),
    ("SOB_B_DC-14-22549AB-40-001.png", "contradicts"),
    ("SOB_B_ZZ-14-22549AB-40-001.png", "unknown subtype"),
    ("SOB_B_A-14-22549AB-50-001.png", "magnification"),
    ("SOB_B_A-14-22549AB-40-1.png", "naming convention"),
    ("holiday.png", "naming convention"),
    ("SOB_B_A-14-22549AB-40-001.txt", "not an image"),
])
def test_malformed_names_raise_with_reason(bad, why):
    with pytest.raises(DataError, match=why):
        parse_name(bad)


def test_patient_key_numeric_stem():
    assert patient_key("14", "15570C") == "14-15570"
    assert patient_key("13", "ABC") == "13-ABC"


@pytest.fixture(scope="module")
def full_tree(tmp_path_factory):
    return write_full_tree(tmp_path_factory.mktemp("breakhis_full"))


def test_full_tree_counts_reproduce_breakhis(full_tree):
    index = load_index(full_tree)
    s = summary(index)
    assert s["images"] == 7909
    assert s["by_class"] == {"benign": 2480, "malignant": 5429}
    assert s["by_magnification"] == {
        "40": {"benign": 625, "malignant": 1370}, "100": {"benign": 644, "malignant": 1437},
        "200": {"benign": 623, "malignant": 1390}, "400": {"benign": 588, "malignant": 1232},
    }
    assert s["by_subtype"] == {k: sum(v) for k, v in COUNTS.items()}
    assert s["slides"] == 82
    assert s["slides_by_subtype"] == FOLDERS
    assert s["patients"] == 82 - MERGED_AWAY
    assert s["problems"] == 0
    assert s["source"] == "real"


def test_kaggle_layout_and_flat_folder(tmp_path):
    data = png_bytes()
    kaggle = tmp_path / "kaggle" / "BreaKHis_v1" / "BreaKHis_v1" / "histology_slides" / "breast" / "benign" / "SOB" / "adenosis" / "SOB_B_A_14-22549AB" / "40X"
    kaggle.mkdir(parents=True)
    (kaggle / "SOB_B_A-14-22549AB-40-001.png").write_bytes(data)
    flat = tmp_path / "flat"
    flat.mkdir()
    for n in ("SOB_B_A-14-22549AB-40-001.png", "SOB_M_DC-14-2523-40-010.png"):
        (flat / n).write_bytes(data)
    assert len(load_index(tmp_path / "kaggle")) == 1
    idx = load_index(flat)
    assert sorted(idx["label"]) == ["benign", "malignant"]
    assert set(idx.columns) >= {"image_id", "path", "label", "target", "subtype", "subtype_name", "magnification",
                                "patient", "slide", "seq", "source", "mask_path"}


def test_problems_are_reported_not_dropped(tmp_path):
    data = png_bytes()
    good = tmp_path / "benign" / "SOB" / "adenosis" / "SOB_B_A_14-22549AB" / "40X"
    good.mkdir(parents=True)
    (good / "SOB_B_A-14-22549AB-40-001.png").write_bytes(data)
    (good / "SOB_B_A-14-22549AB-100-002.png").write_bytes(data)  # in the 40X folder
    (good / "notes.txt").write_text("hello")
    (good / "SOB_B_A-14-22549AB-40-003.png").write_bytes(b"not a png at all")
    (good / "SOB_B_A-14-22549AB-40-004.png").write_bytes(b"")
    (good / "vacation.png").write_bytes(data)
    wrong_class = tmp_path / "malignant" / "x"
    wrong_class.mkdir(parents=True)
    (wrong_class / "SOB_B_F-14-9133-40-001.png").write_bytes(data)
    wrong_slide = tmp_path / "benign" / "SOB" / "adenosis" / "SOB_B_A_14-99999" / "40X"
    wrong_slide.mkdir(parents=True)
    (wrong_slide / "SOB_B_A-14-22549AB-40-005.png").write_bytes(data)

    result = scan(tmp_path)
    assert list(result.index["image_id"]) == ["SOB_B_A-14-22549AB-40-001"]
    reasons = dict(zip(result.problems["path"].map(lambda p: p.rsplit("/", 1)[-1]), result.problems["reason"]))
    assert "magnification" in reasons["SOB_B_A-14-22549AB-100-002.png"]
    assert "not an image file" in reasons["notes.txt"]
    assert "not a readable image" in reasons["SOB_B_A-14-22549AB-40-003.png"]
    assert "empty" in reasons["SOB_B_A-14-22549AB-40-004.png"]
    assert "naming convention" in reasons["vacation.png"]
    assert "malignant" in reasons["SOB_B_F-14-9133-40-001.png"]
    assert "slide folder" in reasons["SOB_B_A-14-22549AB-40-005.png"]
    assert len(load_index(tmp_path).attrs["problems"]) == 7


def test_missing_and_empty_roots(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_index(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no BreakHis images"):
        load_index(tmp_path / "empty")
    f = tmp_path / "file.png"
    f.write_bytes(b"x")
    with pytest.raises(DataError, match="not a folder"):
        load_index(f)


def test_real_samples_index(real_samples):
    idx = load_index(real_samples[0].parent)
    assert len(idx) == 14
    assert set(idx["subtype"]) == set(SUBTYPES)
    assert set(idx["magnification"]) == {40, 100, 200, 400}
    assert (idx["source"] == "real").all()


def test_cli_scan_table_and_json(full_tree, capsys):
    assert cli(["data", "scan", str(full_tree), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["images"] == 7909 and s["slides"] == 82 and s["problems"] == 0
    assert s["by_class"]["benign"] == 2480
    assert cli(["data", "scan", str(full_tree)]) == 0
    out = capsys.readouterr().out
    assert "7909" in out and "1370" in out and "problems: 0" in out


def test_cli_scan_missing_root_is_one_clear_line(tmp_path, capsys):
    assert cli(["data", "scan", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "does not exist" in err and "Traceback" not in err
