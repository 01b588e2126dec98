"""The one lesion-mask reader and the missing-value helper (a missing mask path is NaN under
pandas 3, and NaN is truthy), down to the two pages that crashed on it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dala.data.index import optional
from dala.data.masks import has_mask, read_lesion_mask
from dala.errors import DataError


@pytest.mark.parametrize("missing", [None, float("nan"), np.nan, pd.NA, "", "  ", np.float64("nan")])
def test_optional_treats_every_missing_value_as_none(missing):
    assert optional(missing) is None
    assert read_lesion_mask(missing) is None
    assert not has_mask(missing)


def test_optional_keeps_values():
    assert optional("a/b.png") == "a/b.png"
    assert optional(0) == 0 and optional(Path("x")) == Path("x")


def test_pandas_stores_a_missing_mask_path_as_a_truthy_nan(tiny_index):
    """The bug's cause, pinned: if pandas stops doing this the helper is still right."""
    benign = tiny_index[tiny_index["label"] == "benign"].iloc[0]
    assert optional(benign["mask_path"]) is None
    value = benign["mask_path"]
    if isinstance(value, float):
        assert math.isnan(value) and bool(value)  # truthy: `if row.mask_path:` was wrong


def test_read_lesion_mask_thresholds_and_resizes(tmp_path):
    grey = np.zeros((20, 30), np.uint8)
    grey[5:10, 10:20] = 255
    grey[0, 0] = 100  # below the threshold: not lesion (a `> 0` reader said it was)
    grey[0, 1] = 128
    p = tmp_path / "m.png"
    Image.fromarray(grey).save(p)
    m = read_lesion_mask(p)
    assert m.dtype == bool and m.shape == (20, 30)
    assert m.sum() == 5 * 10 + 1 and not m[0, 0] and m[0, 1]
    half = read_lesion_mask(str(p), size=(15, 10))  # (W, H), nearest-neighbour
    assert half.shape == (10, 15) and half.dtype == bool and set(np.unique(half)) <= {False, True}
    assert half[3:5, 5:10].all()


def test_zero_one_and_rgb_masks(tmp_path):
    a = np.zeros((8, 8), np.uint8)
    a[2:4, 2:4] = 1
    Image.fromarray(a).save(tmp_path / "01.png")
    assert read_lesion_mask(tmp_path / "01.png").sum() == 4
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[1, 1] = (255, 255, 0)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert read_lesion_mask(tmp_path / "rgb.png").sum() == 1


def test_a_named_but_absent_or_broken_mask_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_lesion_mask(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="not an image"):
        read_lesion_mask(tmp_path / "bad.png")
    with pytest.raises(DataError, match="size"):
        read_lesion_mask(_one(tmp_path), size=(0, 3))


def _one(tmp_path) -> Path:
    p = tmp_path / "one.png"
    Image.new("L", (4, 4), 255).save(p)
    return p


def test_synthetic_masks_match_their_images(tiny_index):
    rows = tiny_index[tiny_index["mask_path"].notna()]
    assert len(rows)
    for r in rows.head(3).itertuples():
        m = read_lesion_mask(r.mask_path)
        with Image.open(r.path) as im:
            assert m.shape == (im.size[1], im.size[0])
        assert 0 < m.mean() < 1


# ------------------------------------------------------------------ the two pages (issue 14)
pytest.importorskip("streamlit")


@pytest.fixture
def app_env(monkeypatch, tiny_synth_root, tmp_path):
    monkeypatch.setenv("DALA_DATA_ROOT", str(tiny_synth_root))
    monkeypatch.setenv("DALA_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("DALA_OFFLINE", "1")


def _app(page: str):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=120)
    at.run()
    at.switch_page(f"pages/{page}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_explore_outline_toggle_with_benign_images_on_the_page(app_env, tiny_index):
    at = _app("explore")
    at.toggle(key="f_mask").set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not [e.value for e in at.error if "float" in e.value]


def test_explain_a_benign_dataset_image(app_env, tiny_index):
    at = _app("explain")
    at.radio(key="ex_imgsrc").set_value("From the dataset").run()
    benign = tiny_index.loc[tiny_index["label"] == "benign", "image_id"].iloc[0]
    at.multiselect(key="ex_ids").set_value([benign]).run()
    assert not at.exception, [e.value for e in at.exception]
