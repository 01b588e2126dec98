"""The model card a pushed run carries (``README.md``): YAML metadata huggingface_hub parses, the
test metrics table, the training curves, the data and split, and the limits of the model.

The card and its metadata are a format others read (the Hub, ``ModelCard``): keep them stable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dala.metric_row import metric_label, metric_value
from dala.hub.repos import CURVES_FILE, DEFAULT_LICENSE, SOURCE_MARKER

CARD_TAGS = ["image-classification", "histopathology", "breakhis", "pytorch", "dala"]
CARD_METRICS = ["accuracy", "balanced_accuracy", "f1", "precision", "recall", "roc_auc",
                "matthews_correlation", "gmean", "iba"]


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


_TABLE_KEYS = ("n", "accuracy", "balanced_accuracy", "gmean", "iba", "f1_macro", "mcc", "roc_auc",
               "patient_accuracy")
_TABLE_COLUMNS = [(k, metric_label(k)) for k in _TABLE_KEYS]
_metric = metric_value  # the one flattener (dala.metric_row): f1_macro is report["macro"]["f1"]


def metrics_table(report: dict) -> str:
    """The test metrics (all magnifications, then each) as a Markdown table."""
    test = report.get("test") or {}
    header = "| Test set | " + " | ".join(t for _, t in _TABLE_COLUMNS) + " |"
    rule = "|---|" + "---:|" * len(_TABLE_COLUMNS)
    rows = ["| all magnifications | " + " | ".join(_fmt(_metric(test, k)) for k, _ in _TABLE_COLUMNS) + " |"]
    per = test.get("per_magnification") or {}
    for mag in sorted(per, key=lambda m: int(m) if str(m).isdigit() else 10**6):
        rows.append(f"| {mag}X | " + " | ".join(_fmt(_metric(per[mag], k)) for k, _ in _TABLE_COLUMNS) + " |")
    return "\n".join([header, rule, *rows])


def render_curves(records: list[dict], path: str | os.PathLike, *, best_epoch: int | None = None) -> Path | None:
    """Train/val loss and val GMean per epoch as a PNG (matplotlib's Agg canvas, no display, no
    global pyplot state). None when there are no epoch records."""
    epochs = [r for r in records if r.get("kind") == "epoch"]
    if not epochs:
        return None
    from matplotlib.figure import Figure

    x = [r.get("epoch") for r in epochs]
    fig = Figure(figsize=(9, 3.4), dpi=110)
    ax1, ax2 = fig.subplots(1, 2)
    for key, label in (("train_loss", "train loss"), ("val_loss", "val loss")):
        ys = [r.get(key) for r in epochs]
        if any(y is not None for y in ys):
            ax1.plot(x, ys, marker="o", label=label)
    ax1.set_xlabel("epoch"), ax1.set_ylabel("loss"), ax1.set_title("Loss"), ax1.legend()
    ax2.plot(x, [r.get("val_gmean") for r in epochs], marker="o", color="tab:green", label="val GMean")
    if any(r.get("val_balanced_accuracy") is not None for r in epochs):
        ax2.plot(x, [r.get("val_balanced_accuracy") for r in epochs], marker=".", linestyle="--",
                 color="tab:gray", label="val balanced acc.")
    ax2.set_ylim(-0.02, 1.02), ax2.set_xlabel("epoch"), ax2.set_title("Validation"), ax2.legend()
    if best_epoch:
        for ax in (ax1, ax2):
            ax.axvline(best_epoch, color="tab:red", alpha=0.4, linestyle=":", label="best epoch" if ax is ax1 else None)
        ax1.legend()
    from matplotlib.ticker import MaxNLocator

    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    return path


def _hub_dataset_of(data_root: str | None) -> dict | None:
    """The Hub dataset a data folder was fetched from (the marker :func:`fetch_dataset` writes)."""
    if not data_root or not isinstance(data_root, str):  # a damaged config may hold anything here
        return None
    root = Path(data_root).expanduser()
    for folder in [root, *list(root.parents)[:3]]:
        marker = folder / SOURCE_MARKER
        if marker.is_file():
            try:
                found = json.loads(marker.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
            return found if isinstance(found, dict) else None
    return None


def _weight_source_label(ws: str) -> str:
    low = (ws or "unknown").lower()
    if low.startswith("imagenet") or "imagenet" in low and "random" not in low:
        return f"ImageNet-pretrained ({ws})"
    if "random" in low:
        return f"random initialisation ({ws})"
    return ws or "unknown"


def model_card(*, repo_id: str, ckpt: dict, report: dict, config: dict, split: dict | None,
               has_curves: bool, license: str = DEFAULT_LICENSE, dataset_id: str | None = None,
               split_hash: str | None = None) -> str:
    """The model card (README.md): YAML metadata + what was trained on what, how well, and its limits."""
    from huggingface_hub import ModelCardData

    source = report.get("data_source") or ("synthetic" if "synthetic" in str(config.get("data_root", "")) else "real")
    synthetic = source == "synthetic"
    hub_ds = _hub_dataset_of(config.get("data_root"))
    dataset_id = dataset_id or (hub_ds or {}).get("repo_id")
    tags = list(CARD_TAGS) + (["synthetic-data"] if synthetic else [])
    data = ModelCardData(license=license, library_name="dala", pipeline_tag="image-classification", tags=tags,
                         datasets=[dataset_id] if dataset_id else None, metrics=list(CARD_METRICS),
                         model_name=repo_id.split("/")[-1])
    test = report.get("test") or {}
    model = ckpt.get("name", report.get("model", "?"))
    ws = report.get("weight_source") or ckpt.get("weight_source", "unknown")
    sp = report.get("split") or {}
    counts = sp.get("counts") or (split or {}).get("counts") or {}
    split_mode = sp.get("by") or (split or {}).get("by") or config.get("split_mode", "?")
    mag = config.get("magnification")
    title = f"{model} on {'synthetic BreakHis-like data' if synthetic else 'BreakHis'}" + (f", {mag}X" if mag else "")

    lines = [f"# {title}", ""]
    lines += ["> **Teaching and research only - not for diagnosis.** This model was trained in "
              "DALA Lab, a teaching lab, to show how deep learning on breast-cancer "
              "histopathology behaves. It has not been validated clinically and must never inform a "
              "decision about a patient.", ""]
    if synthetic:
        lines += ["> **Trained on synthetic images.** The data are generated BreakHis-like H&E tiles (a teaching "
                  "stand-in written by `dala.data.synth`), not real tissue: the scores below say nothing about "
                  "performance on real slides.", ""]
    lines += ["## Use it", "", "```bash", f"python -m dala hub pull {repo_id}", "```", "", "```python",
              "from dala.hub import pull_checkpoint", "from dala.models.checkpoint import load_checkpoint", "",
              f'model, config = load_checkpoint(pull_checkpoint("{repo_id}"))', "```", "",
              "The repo holds a DALA checkpoint folder: `model.safetensors` (weights, safetensors only) and "
              "`config.json` (architecture, options, classes, input size and normalisation - enough to rebuild "
              "the model and its Grad-CAM target). Pass a commit hash as `revision` to pin these exact weights.", ""]
    lines += ["## Test metrics", "",
              f"Held-out test set of the split below ({_fmt(test.get('n'))} images, "
              f"{_fmt(test.get('n_patients'))} patients). Patient accuracy is the BreakHis patient-level accuracy; "
              "GMean and IBA (alpha 0.1) are the imbalance-aware scores.", "", metrics_table(report), ""]
    if has_curves:
        lines += ["## Training curves", "", f"![Training curves: train/val loss and validation GMean]({CURVES_FILE})", "",
                  f"Best epoch (selected on validation {report.get('select_metric', config.get('select_metric', '?'))}): "
                  f"{_fmt(report.get('best_epoch'))}.", ""]
    lines += ["## Data and split", ""]
    if synthetic:
        lines.append("- **Data:** synthetic BreakHis-like images (DALA Lab generator), labelled synthetic - "
                     "not real tissue.")
    else:
        lines.append("- **Data:** BreakHis v1 (Spanhol et al., IEEE TBME 2016), real H&E histopathology"
                     + (f", from Hub dataset `{dataset_id}`" if dataset_id else "") + ".")
    if hub_ds:
        lines.append(f"- **Hub dataset:** `{hub_ds.get('repo_id')}` at commit `{hub_ds.get('commit')}`.")
    lines.append(f"- **Magnification:** {str(mag) + 'X' if mag else 'all four (40X, 100X, 200X, 400X) together'}.")
    lines.append(f"- **Split mode:** {split_mode}"
                 + (" (patient-disjoint: no patient is on two sides)." if split_mode == "patient" else
                    " (image-level: the same patient can be in train and test, which inflates scores)."))
    if split_hash:
        lines.append(f"- **Split hash (sha256):** `{split_hash}` (`split.json` in this repo holds the image ids).")
    if counts:
        lines += ["", "| Part | Images | Patients |", "|---|---:|---:|"]
        for part in ("train", "val", "test"):
            c = counts.get(part) or {}
            lines.append(f"| {part} | {_fmt(c.get('images'))} | {_fmt(c.get('patients'))} |")
    tcc = report.get("train_class_counts")
    if tcc:
        lines += ["", "Training images per class: " + ", ".join(f"{k} {v}" for k, v in tcc.items()) + "."]
    lines += ["", "## Training", "",
              f"- **Architecture:** `{model}` (options `{json.dumps(ckpt.get('options', {}), sort_keys=True)}`), "
              f"{int(report.get('num_params') or 0):,} parameters, {len(ckpt.get('class_names', []))} classes "
              f"({', '.join(ckpt.get('class_names', []))}).",
              f"- **Starting weights:** {_weight_source_label(ws)}.",
              f"- **Mode:** {config.get('mode', '?')}; epochs {config.get('epochs', '?')}; batch size "
              f"{config.get('batch_size', '?')}; lr {config.get('lr', '?')}; image size "
              f"{report.get('image_size', config.get('image_size', '?'))} px; imbalance strategy "
              f"{config.get('imbalance', '?')}; seed {config.get('seed', '?')}.",
              f"- **Hardware:** {report.get('device', '?')}, precision {report.get('precision', '?')}, "
              f"training time {_fmt(report.get('train_time_s'))} s.",
              f"- **Software:** dala {ckpt.get('dala_version', '?')}.", ""]
    lines += ["## Intended use and limits", "",
              "- Intended for teaching and research: comparing architectures, imbalance strategies, split "
              "protocols and explanations (Grad-CAM) on BreakHis-style data.",
              "- **Not a medical device; not for diagnosis, screening or any clinical decision.**",
              "- BreakHis comes from one laboratory (82 patients); scores do not transfer to other scanners, "
              "stains or institutions. Image-level splits leak patients and overstate accuracy.",
              "- Binary benign/malignant at the image level; subtypes are not predicted.", ""]
    lines += ["## Files", "",
              "- `model.safetensors`, `config.json` - the checkpoint (`dala.models.checkpoint`).",
              "- `report.json` - every test metric, per magnification, with ROC/PR/calibration data.",
              "- `split.json` - the exact train/val/test image ids.",
              "- `metrics.jsonl` - per-step and per-epoch training records."
              + ("\n- `curves.png` - the training curves above." if has_curves else ""), ""]
    lines += ["## References", "",
              "- DALAResNet50: Dual-Activated Lightweight Attention ResNet50 for breast-cancer histopathology, "
              "arXiv:2308.13150.",
              "- Spanhol, Oliveira, Petitjean, Heutte. A Dataset for Breast Cancer Histopathological Image "
              "Classification. IEEE TBME 63(7), 2016 (BreakHis).", ""]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)
