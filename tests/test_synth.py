"""The synthetic BreakHis-like generator (dala.data.synth): layout, naming, masks, determinism,
the cached default, and the lesson it exists for: colour statistics carry the patient, not the
class, so only an image-level split lets a colour classifier score."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dala.data import synth
from dala.data.synth import DEFAULT_PARAMS, ensure_default_dataset, generate, plan_patients

FILE_RE = re.compile(r"^SOB_(?P<cls>[BM])_(?P<code>A|F|PT|TA|DC|LC|MC|PC)-(?P<yy>1[345])-"
                     r"(?P<slide>\d+[A-Z]*)-(?P<mag>40|100|200|400)-(?P<seq>\d{3})\.png$")
SLIDE_RE = re.compile(r"^SOB_(?P<cls>[BM])_(?P<code>A|F|PT|TA|DC|LC|MC|PC)_(?P<yy>1[345])-(?P<slide>\d+[A-Z]*)$")
FOLDERS = {"A": "adenosis", "F": "fibroadenoma", "PT": "phyllodes_tumor", "TA": "tubular_adenoma",
           "DC": "ductal_carcinoma", "LC": "lobular_carcinoma", "MC": "mucinous_carcinoma",
           "PC": "papillary_carcinoma"}
TINY = dict(n_patients=4, images_per_mag=1, size=(48, 32), magnifications=(40, 400), progress=False)


def _images(root: Path) -> list[Path]:
    return sorted((root / "BreaKHis_v1").rglob("*.png"))


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ layout, naming, markers
def test_layout_and_naming(tiny_synth_root):
    files = _images(tiny_synth_root)
    assert len(files) == 12 * 4 * 2
    patients = set()
    for f in files:
        m = FILE_RE.match(f.name)
        assert m, f.name
        rel = f.relative_to(tiny_synth_root).parts
        assert rel[:4] == ("BreaKHis_v1", "histology_slides", "breast", "benign" if m["cls"] == "B" else "malignant")
        assert rel[4] == "SOB" and rel[5] == FOLDERS[m["code"]]
        s = SLIDE_RE.match(rel[6])
        assert s, rel[6]
        assert (s["cls"], s["code"], s["yy"], s["slide"]) == (m["cls"], m["code"], m["yy"], m["slide"])
        assert rel[7] == f"{m['mag']}X"
        with Image.open(f) as im:
            assert im.size == (96, 64) and im.mode == "RGB"
        patients.add(rel[6])
    assert len(patients) == 12
    marker = json.loads((tiny_synth_root / "SYNTHETIC").read_text())
    assert marker["synthetic"] is True and marker["seed"] == 0
    assert marker["params"]["n_patients"] == 12 and marker["params"]["size"] == [96, 64]
    assert (tiny_synth_root / "DONE").is_file()


def test_names_parse_with_project_parser(tiny_synth_root):
    breakhis = pytest.importorskip("dala.data.breakhis")
    for f in _images(tiny_synth_root)[:20]:
        breakhis.parse_name(f.name)


def test_masks_exactly_for_malignant(tiny_synth_root):
    mask_root = tiny_synth_root / "masks"
    n_mal = 0
    for f in _images(tiny_synth_root):
        rel = f.relative_to(tiny_synth_root)
        mp = mask_root / rel
        if "_M_" in f.name:
            n_mal += 1
            assert mp.is_file(), rel
            m = np.asarray(Image.open(mp))
            assert m.dtype == np.uint8 and m.shape == (64, 96)
            assert set(np.unique(m)) <= {0, 255}
            frac = (m == 255).mean()
            assert 0.0 < frac < 1.0, (rel, frac)
        else:
            assert not mp.exists(), rel
    assert n_mal > 0
    assert len(list(mask_root.rglob("*.png"))) == n_mal


def test_patient_plan_proportions():
    for n in (4, 5, 8, 12, 24, 40, 82):
        pats = plan_patients(n, seed=3)
        benign = [p for p in pats if p.label == "benign"]
        assert len(pats) == n
        assert len({p.slide_id for p in pats}) == n  # unique slide ids
        assert len(benign) >= 2 and n - len(benign) >= 2
        if n >= 8:
            assert {p.subtype for p in pats} == set(FOLDERS)
    pats = plan_patients(82, seed=0, benign_fraction=24 / 82)
    counts = {c: sum(p.subtype == c for p in pats) for c in FOLDERS}
    assert counts == {"A": 4, "F": 10, "PT": 3, "TA": 7, "DC": 38, "LC": 5, "MC": 9, "PC": 6}
    frac = np.mean([p.label == "benign" for p in plan_patients(40)])
    assert abs(frac - 0.31) < 0.03


def test_benign_image_fraction(tiny_synth_root):
    files = _images(tiny_synth_root)
    frac = np.mean(["_B_" in f.name for f in files])
    assert 0.2 <= frac <= 0.45


# ------------------------------------------------------------------ determinism, progress
def test_deterministic_bytes(tmp_path):
    a = generate(tmp_path / "a", seed=5, **TINY)
    b = generate(tmp_path / "b", seed=5, **TINY)
    c = generate(tmp_path / "c", seed=6, **TINY)
    ta, tb, tc = _tree_bytes(a), _tree_bytes(b), _tree_bytes(c)
    assert ta == tb
    assert ta != tc


def test_progress_callable(tmp_path):
    calls = []
    generate(tmp_path / "p", seed=0, **{**TINY, "progress": lambda d, t: calls.append((d, t))})
    total = 4 * 2 * 1
    assert calls[-1] == (total, total)
    assert [d for d, _ in calls] == list(range(1, total + 1))


def test_difficulty_shrinks_gap():
    lo, hi = synth._malignant_nuclei(0.0), synth._malignant_nuclei(1.0)
    assert lo["r"] > hi["r"] > 2.5  # still (a little) larger than benign at difficulty 1
    assert lo["cv"] > hi["cv"] and lo["dark"] > hi["dark"]


# ------------------------------------------------------------------ the cached default
def test_default_params_are_the_signature_defaults():
    assert DEFAULT_PARAMS["n_patients"] == 82  # BreakHis's patient count: the unit of every split
    assert DEFAULT_PARAMS["n_patients"] * DEFAULT_PARAMS["images_per_mag"] * 4 == 656
    assert set(DEFAULT_PARAMS) <= set(generate.__kwdefaults__)


def test_ensure_default_dataset_idempotent(tmp_path, monkeypatch):
    root = tmp_path / "default"
    small = {k: v for k, v in TINY.items() if k != "progress"}
    got = ensure_default_dataset(root=root, progress=False, params=small)
    assert got == root and (root / "DONE").is_file() and (root / "SYNTHETIC").is_file()
    before = _tree_bytes(root)

    def boom(*a, **k):  # a second call must not regenerate
        raise AssertionError("regenerated")

    monkeypatch.setattr(synth, "generate", boom)
    assert ensure_default_dataset(root=root, progress=False, params=small) == root
    assert _tree_bytes(root) == before
    assert [p.name for p in tmp_path.iterdir()] == ["default"]  # no temp folders left


def test_ensure_default_dataset_default_location(tmp_path, monkeypatch):
    monkeypatch.setenv("DALA_HOME", str(tmp_path / "home"))
    small = {k: v for k, v in TINY.items() if k != "progress"}
    got = ensure_default_dataset(progress=False, params=small)
    assert got == tmp_path / "home" / "synthetic_breakhis" and (got / "DONE").is_file()


def test_ensure_default_dataset_atomic(tmp_path, monkeypatch):
    root = tmp_path / "default"
    real = synth.generate

    def half_then_fail(out, **kw):
        real(out, **{**kw, "n_patients": 2})
        (Path(out) / "DONE").unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "generate", half_then_fail)
    small = {k: v for k, v in TINY.items() if k != "progress"}
    with pytest.raises(KeyboardInterrupt):
        ensure_default_dataset(root=root, progress=False, params=small)
    assert list(tmp_path.iterdir()) == []  # neither a half dataset nor a temp folder


def test_ensure_default_dataset_replaces_stale(tmp_path):
    root = tmp_path / "default"
    (root / "junk").mkdir(parents=True)  # an interrupted older attempt without DONE
    small = {k: v for k, v in TINY.items() if k != "progress"}
    ensure_default_dataset(root=root, progress=False, params=small)
    assert not (root / "junk").exists() and (root / "DONE").is_file()
    # other parameters -> regenerated
    ensure_default_dataset(root=root, progress=False, params={**small, "seed": 9})
    assert json.loads((root / "DONE").read_text())["seed"] == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["default"]



def test_another_process_that_finished_first_keeps_its_dataset(tmp_path, monkeypatch):
    root = tmp_path / "default"
    small = {k: v for k, v in TINY.items() if k != "progress"}
    real = synth.generate

    def race(out, **kw):  # while we generate, another process completes the same dataset
        real(out, **kw)
        real(root, **kw)
        (root / "theirs").write_text("kept")

    monkeypatch.setattr(synth, "generate", race)
    assert ensure_default_dataset(root=root, progress=False, params=small) == root
    assert (root / "theirs").read_text() == "kept" and (root / "DONE").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["default"]  # ours dropped, no temp folder


def test_the_default_follows_the_public_default_params(tmp_path, monkeypatch):
    """The app's tests and callers set ``dala.data.synth.DEFAULT_PARAMS``; the writer module
    reads it from the public face, so the setting holds after the split into modules."""
    monkeypatch.setattr(synth, "DEFAULT_PARAMS", {**synth.DEFAULT_PARAMS, **{k: v for k, v in TINY.items()
                                                                             if k != "progress"}})
    root = ensure_default_dataset(root=tmp_path / "default", progress=False)
    done = json.loads((root / "DONE").read_text())
    assert done["n_patients"] == 4 and done["size"] == [48, 32] and done["images"] == 8


def test_every_name_callers_use_stays_importable_from_the_package():
    """Code, tests, notebooks, bench scripts and docs import these from ``dala.data.synth``."""
    import importlib

    used = ["DEFAULT_PARAMS", "GENERATOR_VERSION", "PNG_MARKER_KEY", "PNG_MARKER_TEXT", "Patient", "ProgressArg",
            "Signature", "SynthArgumentError", "check_params", "ensure_default_dataset", "generate",
            "patient_signature", "plan_patients", "render_image", "_finish", "_reference_stats",
            "_malignant_nuclei"]
    missing = [n for n in used + list(synth.__all__) if not hasattr(synth, n)]
    assert not missing, missing
    for mod in ("patients", "texture", "tissue", "stain_physics", "render", "writer"):
        m = importlib.import_module(f"dala.data.synth.{mod}")
        assert m.__doc__ and "Owns" in m.__doc__, f"{mod} must say what it owns"


# ------------------------------------------------------------------ the shortcut lesson
def _colour_features(root: Path):
    X, y, groups = [], [], []
    for f in _images(root):
        a = np.asarray(Image.open(f).convert("RGB"), np.float64).reshape(-1, 3)
        X.append(np.r_[a.mean(0), a.std(0)])
        y.append(int("_M_" in f.name))
        groups.append(f.parent.parent.name)  # the slide folder = the patient
    return np.array(X), np.array(y), np.array(groups)


def _cv_bacc(make, X, y, cv, groups=None):
    from sklearn.metrics import balanced_accuracy_score

    pred = np.zeros_like(y)
    for tr, te in cv.split(X, y, groups):
        pred[te] = make().fit(X[tr], y[tr]).predict(X[te])
    return balanced_accuracy_score(y, pred)


def test_colour_statistics_carry_patient_not_class(tmp_path):
    """Global colour statistics (per-channel mean and std): chance under a patient split, high
    under an image split (a 1-NN memorises each patient's stain signature)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, KFold
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def lr():
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, class_weight="balanced"))

    def knn():
        return make_pipeline(StandardScaler(), KNeighborsClassifier(1))

    # 40 patients x 4 magnifications x 1 image, tiny fields (colour statistics do not need more);
    # averaged over three seeds, because with a few dozen patients one draw is noisy
    scores = {"lr_patient": [], "knn_patient": [], "knn_image": []}
    for seed in (0, 1, 2):
        root = generate(tmp_path / f"s{seed}", seed=seed, n_patients=40, images_per_mag=1, size=(64, 48),
                        progress=False)
        X, y, g = _colour_features(root)
        scores["lr_patient"].append(_cv_bacc(lr, X, y, GroupKFold(5), g))
        scores["knn_patient"].append(_cv_bacc(knn, X, y, GroupKFold(5), g))
        scores["knn_image"].append(_cv_bacc(knn, X, y, KFold(5, shuffle=True, random_state=seed)))
    mean = {k: float(np.mean(v)) for k, v in scores.items()}
    assert mean["lr_patient"] <= 0.6, mean
    assert mean["knn_patient"] <= 0.6, mean
    assert mean["knn_image"] >= 0.8, mean
    assert mean["knn_image"] - mean["knn_patient"] >= 0.25, mean


# ------------------------------------------------------------------ markers and bad arguments
def test_every_image_carries_the_png_marker_and_copies_stay_synthetic(tiny_synth_root, tmp_path):
    import shutil

    from dala.data.index import PNG_MARKER_KEY, scan

    files = _images(tiny_synth_root)
    with Image.open(files[0]) as im:
        assert "SYNTHETIC" in im.info[PNG_MARKER_KEY]
    flat = tmp_path / "copied_out"  # away from the SYNTHETIC file and the DONE marker
    flat.mkdir()
    for f in files[:3]:
        shutil.copy(f, flat / f.name)
    result = scan(flat)
    assert result.source == "synthetic" and (result.index["source"] == "synthetic").all()


def test_a_mix_of_real_and_copied_synthetic_images_is_not_passed_off_as_real(tiny_synth_root, real_samples, tmp_path):
    import shutil

    from dala.data.index import load_index

    mix = tmp_path / "mix"
    mix.mkdir()
    shutil.copy(real_samples[0], mix / real_samples[0].name)
    f = _images(tiny_synth_root)[0]
    shutil.copy(f, mix / f.name)
    idx = load_index(mix)
    assert idx.attrs["source"] == "synthetic"
    assert dict(zip(idx["image_id"], idx["source"])) == {real_samples[0].stem: "real", f.stem: "synthetic"}


@pytest.mark.parametrize("argv, why", [
    (["--patients", "0"], "at least 2 patients"),
    (["--patients", "1"], "at least 2 patients"),
    (["--patients", "-5"], "at least 2 patients"),
    (["--images-per-mag", "0"], "images-per-mag"),
    (["--difficulty", "3"], "difficulty"),
    (["--difficulty", "nan"], "difficulty"),
])
def test_cli_synth_bad_arguments_are_one_line(tmp_path, capsys, argv, why):
    from dala.cli import main

    assert main(["data", "synth", "--out", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and why in err and "Traceback" not in err and "\n" not in err
    assert not (tmp_path / "out").exists()  # nothing written


def test_cli_synth_bad_size_and_out_is_a_file(tmp_path, capsys):
    from dala.cli import main

    with pytest.raises(SystemExit) as exc:  # argparse: usage and one error line, exit 2
        main(["data", "synth", "--out", str(tmp_path / "o"), "--size", "10x10"])
    assert exc.value.code == 2 and "350x230" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["data", "synth", "--out", str(tmp_path / "file"), "--patients", "2", "--images-per-mag", "1",
                 "--size", "16x16"]) == 2
    assert "is a file" in capsys.readouterr().err


def test_generate_refuses_bad_arguments_as_data_errors(tmp_path):
    from dala.errors import DataError

    for kw in (dict(n_patients=0), dict(size=(8, 8)), dict(magnifications=(40, 50)), dict(benign_fraction=1.0),
               dict(images_per_mag=2.5)):
        with pytest.raises(DataError):
            generate(tmp_path / "x", **{**TINY, **kw})
        with pytest.raises(ValueError):  # still a ValueError for code that caught that
            generate(tmp_path / "x", **{**TINY, **kw})
