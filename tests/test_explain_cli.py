"""``python -m dala explain``: overlays, scores.csv with mask scores, run folders, clear errors."""

from __future__ import annotations

import csv
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dala.cli import main
from dala.explain.cli import collect_images, find_mask


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    pytest.importorskip("dala.models.checkpoint")
    import torch

    from dala.models import create_model
    from dala.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = create_model("tiny_cnn", pretrained=False)
    run = tmp_path_factory.mktemp("run")
    save_checkpoint(model, run / "checkpoints" / "last", class_names=["benign", "malignant"])
    return run


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A synthetic-layout tree: two images, a lesion mask for the malignant one."""
    root = tmp_path_factory.mktemp("synth")
    rng = np.random.default_rng(0)
    rel_m = "BreaKHis_v1/histology_slides/breast/malignant/SOB/ductal_carcinoma/SOB_M_DC_14-1/40X/SOB_M_DC-14-1-40-001.png"
    rel_b = "BreaKHis_v1/histology_slides/breast/benign/SOB/adenosis/SOB_B_A_14-2/40X/SOB_B_A-14-2-40-001.png"
    for rel in (rel_m, rel_b):
        (root / rel).parent.mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (46, 70, 3), dtype=np.uint8)).save(root / rel)
    mask = np.zeros((46, 70), np.uint8)
    mask[10:30, 20:50] = 255
    (root / "masks" / rel_m).parent.mkdir(parents=True)
    Image.fromarray(mask).save(root / "masks" / rel_m)
    return root, root / rel_m, root / rel_b


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_collect_images_and_find_mask(dataset, tmp_path):
    root, malignant, benign = dataset
    files = collect_images(images_dir=root)
    assert sorted(files) == sorted([malignant, benign])  # the masks/ subtree is not an input
    assert find_mask(malignant) == root / "masks" / malignant.relative_to(root)
    assert find_mask(benign) is None
    other = tmp_path / "elsewhere"
    (other / malignant.relative_to(root)).parent.mkdir(parents=True)
    (other / malignant.relative_to(root)).write_bytes((root / "masks" / malignant.relative_to(root)).read_bytes())
    assert find_mask(malignant, masks_dir=other) == other / malignant.relative_to(root)


def test_cli_run_folder_writes_overlays_and_scores(checkpoint, dataset, tmp_path, capsys):
    root, malignant, benign = dataset
    out = tmp_path / "out"
    rc = main(["explain", "--run", str(checkpoint), "--images-dir", str(root), "--out", str(out),
               "--method", "dt-gradcam", "--quiet"])
    assert rc == 0
    rows = {r["image"]: r for r in read_csv(out / "scores.csv")}
    assert set(rows) == {str(malignant), str(benign)}
    for r in rows.values():
        overlay = Image.open(out / r["overlay"])
        assert overlay.size == (70, 46) and overlay.mode == "RGB"
        assert r["method"] == "dt-gradcam" and r["target"] == r["pred"] and r["threshold"] != ""
        assert abs(sum(float(p) for p in r["probs"].strip("[]").split(",")) - 1) < 1e-4
        assert r["pred_label"] in ("benign", "malignant")
    m, b = rows[str(malignant)], rows[str(benign)]
    assert float(m["pointing"]) in (0.0, 1.0) and 0 <= float(m["energy_inside"]) <= 1 and 0 <= float(m["iou"]) <= 1
    assert m["mask"].endswith(malignant.name) and b["pointing"] == b["iou"] == b["mask"] == ""
    assert "1 with masks" in capsys.readouterr().out


def test_cli_checkpoint_files_target_and_masks_dir(checkpoint, dataset, tmp_path):
    root, malignant, benign = dataset
    out = tmp_path / "out"
    rc = main(["explain", "--checkpoint", str(checkpoint / "checkpoints" / "last"), "--images", str(malignant),
               str(benign), "--out", str(out), "--target", "malignant", "--masks-dir", str(root / "masks"), "--quiet"])
    assert rc == 0
    rows = read_csv(out / "scores.csv")
    assert [r["target"] for r in rows] == ["1", "1"] and rows[0]["target_label"] == "malignant"
    assert rows[0]["iou"] != "" and rows[1]["iou"] == ""
    assert (out / f"{malignant.stem}_gradcam.png").is_file()


def test_cli_errors_are_one_line(checkpoint, dataset, tmp_path, capsys):
    root, malignant, _ = dataset
    text = tmp_path / "notes.png"
    text.write_text("hello")
    cases = [
        (["--run", str(tmp_path / "nope"), "--images", str(malignant)], "does not exist"),
        (["--run", str(root), "--images", str(malignant)], "holds no checkpoint"),
        (["--run", str(checkpoint), "--images", str(text)], "not an image"),
        (["--run", str(checkpoint), "--images", str(tmp_path / "missing.png")], "no such image"),
        (["--run", str(checkpoint), "--images", str(malignant), "--method", "magic"], "unknown explanation method"),
        (["--run", str(checkpoint), "--images", str(malignant), "--target", "normal"], "unknown class"),
    ]
    for args, message in cases:
        assert main(["explain", *args, "--out", str(tmp_path / "o"), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def test_cli_module_is_import_light():
    code = "import sys, dala.explain.cli, dala.explain; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_on_generated_synthetic_data_finds_every_mask(checkpoint, tiny_synth_root, tmp_path):
    """On the generator's own layout, from a subfolder: each malignant image is scored against
    ``<root>/masks/<same relative path>``."""
    malignant = tiny_synth_root / "BreaKHis_v1" / "histology_slides" / "breast" / "malignant"
    files = collect_images(images_dir=malignant)[:6]
    out = tmp_path / "out"
    assert main(["explain", "--run", str(checkpoint), "--images", *map(str, files), "--out", str(out),
                 "--method", "dt-gradcam", "--quiet"]) == 0
    rows = read_csv(out / "scores.csv")
    assert len(rows) == len(files) and all(r["mask"] and r["iou"] != "" for r in rows)
    assert all(r["mask"] == str(tiny_synth_root / "masks" / Path(r["image"]).relative_to(tiny_synth_root))
               for r in rows)


def test_scores_csv_has_the_faithfulness_columns(checkpoint, dataset, tmp_path):
    root, malignant, benign = dataset
    out = tmp_path / "out"
    assert main(["explain", "--run", str(checkpoint), "--images", str(malignant), str(benign), "--out", str(out),
                 "--steps", "4", "--quiet"]) == 0
    rows = read_csv(out / "scores.csv")
    for r in rows:
        assert 0 <= float(r["deletion_auc"]) <= 1 and 0 <= float(r["insertion_auc"]) <= 1
        assert -1 <= float(r["road"]) <= 1
    assert main(["explain", "--run", str(checkpoint), "--images", str(malignant), "--out", str(out / "b"),
                 "--no-road", "--quiet"]) == 0
    (r,) = read_csv(out / "b" / "scores.csv")
    assert r["road"] == "" and r["deletion_auc"] != ""


def test_faithfulness_command_aggregates_per_method(checkpoint, dataset, tmp_path, capsys):
    root, malignant, benign = dataset
    csv_out = tmp_path / "faith.csv"
    rc = main(["faithfulness", "--run", str(checkpoint), "--images-dir", str(root), "--methods", "gradcam,random",
               "--steps", "4", "--out", str(csv_out), "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "faithfulness over 2 image(s)" in text and "95 %" in text
    lines = {line.split()[0]: line for line in text.splitlines()[2:]}
    assert set(lines) == {"gradcam", "random"} and "[" in lines["gradcam"]
    rows = read_csv(csv_out)
    assert sorted((Path(r["image"]).name, r["method"]) for r in rows) == sorted(
        (f.name, m) for f in (malignant, benign) for m in ("gradcam", "random"))
    assert main(["faithfulness", "--run", str(checkpoint), "--images", str(malignant), "--methods", "magic",
                 "--quiet"]) == 2
    assert "unknown explanation method" in capsys.readouterr().err
