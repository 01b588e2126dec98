# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · Where does the network look? Grad-CAM, DT Grad-CAM and the lesion masks
#
# Class activation maps (the Grad-CAM family) show which part of the image drove a prediction.
# DALAResNet50's paper uses **DT Grad-CAM** ("Dynamic Threshold Grad-CAM"); its exact rule is not
# published, so `dala.explain` implements our reading: Grad-CAM plus a per-image threshold (Otsu by
# default) that keeps the salient region.
#
# The synthetic data gives something real BreakHis cannot: a **ground-truth lesion mask** for every
# malignant image, so we can *score* a map: does its peak fall in the lesion (pointing game), how
# much of its energy lies inside, how well its region overlaps (IoU)? And a sanity check: if the map
# barely changes when the model's weights are randomised, it shows the image, not the model.

# %%
# --- the one setting to change ----------------------------------------------------------------
DATA_ROOT = None  # None = the synthetic default; or "/path/to/BreaKHis_v1"
CHECKPOINT = None  # None = train a small model here; or a run / checkpoint folder
# ------------------------------------------------------------------------------------------------
import pathlib
import sys

try:
    import dala
except ImportError:  # started from notebooks/: the package sits one folder up
    sys.path.insert(0, str(pathlib.Path.cwd().parent))
from IPython.display import display  # a Jupyter builtin: imported so this file is plain Python

from dala import plots
from dala.notebook import setup, train

nb = setup("04_explain", DATA_ROOT)  # tiny mode (DALA_TINY=1): a 12-patient dataset, runs in a temporary folder
index, SYNTHETIC, TINY = nb.index, nb.synthetic, nb.tiny

# %% [markdown]
# **Weights.** `create_model(..., pretrained=True)` uses ImageNet weights when they are in the local
# cache or can be downloaded. Offline and uncached, the model starts from **random weights** and says
# so in `weight_source`, printed below. Every number in this notebook is **measured** by us on the data
# named above, with the split named beside it; the paper's numbers are **reported** (real BreakHis,
# split protocol not stated) and are never mixed with ours.

# %% [markdown]
# ## 1. A model to explain
#
# With `CHECKPOINT = None` we train a small network here (tiny_cnn, quick mode, all magnifications,
# a patient-level split) so the notebook stands alone; point `CHECKPOINT` at a DALAResNet50 run from
# notebook 02 or the app to explain that instead.

# %%
from dala.data import Split
from dala.train import read_run
from dala.explain import load_for_explain

if CHECKPOINT is None:
    run = train(nb, "explain_model", model="tiny_cnn", pretrained=False, mode="quick", split_mode="patient",
                image_size=48 if TINY else 128, quick_views=1 if TINY else 4, epochs=1 if TINY else 8, lr=3e-3, n_tiles=0)
    CHECKPOINT = run.path
    print("test:", {k: round(v, 3) for k, v in run.report["test"].items() if k in ("accuracy", "gmean", "roc_auc")})
model, setup = load_for_explain(CHECKPOINT)
run_dir = pathlib.Path(CHECKPOINT)
run_config = read_run(run_dir).config if (run_dir / "config.json").exists() and (run_dir / "status.json").exists() else {}
if run_config.get("image_size"):
    setup["input_size"] = run_config["image_size"]  # the size it was trained at
print("model:", model.dala_config["name"], "| weights:", model.dala_config["weight_source"], "| input", setup.get("input_size"), "px")

# malignant test images that carry a lesion mask (test = patients the model never saw)
test = Split.load(run_dir / "split.json").frames(index)["test"] if (run_dir / "split.json").exists() else index
if not test["mask_path"].notna().any():  # e.g. a checkpoint trained elsewhere: any masked image will do
    test = index
cases = test[test["mask_path"].notna()].groupby("subtype").head(1 if TINY else 2).head(4 if TINY else 8)
if cases.empty:
    raise SystemExit("no lesion masks in this dataset: sections 2-4 need the synthetic data (real BreakHis has none)")
print(f"{len(cases)} malignant test images with lesion masks")

# %% [markdown]
# ## 2. The Grad-CAM family on the same images
#
# Each row: the field with its lesion outlined (yellow), then each method's overlay (red = where the
# method says the evidence for *malignant* lies). `list_methods(include_slow=False)` skips ScoreCAM
# and AblationCAM (one forward pass per channel).

# %%
import numpy as np
import pandas as pd

from dala.data.images import load_rgb
from dala.data.masks import read_lesion_mask
from dala.explain import explain, list_methods
from dala.explain.faithfulness import score_explanation

METHODS = ["gradcam", "dt-gradcam"] if TINY else list_methods(include_slow=False)
TARGET = "malignant"  # explain the malignant class on every image (the lesion is its evidence)
images = [np.asarray(load_rgb(p)) for p in cases["path"]]
masks = [read_lesion_mask(p) for p in cases["mask_path"]]
results = {m: explain(model, images, method=m, target=TARGET, **setup) for m in METHODS}

tiles, captions = [], []
for i, (img, mask) in enumerate(zip(images, masks)):
    tiles.append(plots.outline_mask(img, mask))
    captions.append(f"{cases['subtype'].iloc[i]} {cases['magnification'].iloc[i]}X, P(mal)={results[METHODS[0]][i].probs[1]:.2f}")
    for m in METHODS:
        tiles.append(plots.outline_mask(results[m][i].overlay, mask))
        captions.append(m)
TAG = " - SYNTHETIC images" if SYNTHETIC else ""
plots.image_grid_figure(tiles, captions, cols=len(METHODS) + 1, max_side=192, tile_height=150,
                        title=f"Explanations of 'malignant'; lesion outlined in yellow{TAG}").show()

# %% [markdown]
# ## 3. Scored against the lesion masks
#
# * **pointing game**: is the map's maximum inside the lesion (hit rate over images);
# * **energy inside**: the share of the map's mass inside the lesion - chance is the lesion's area
#   share (dashed line);
# * **IoU**: overlap of the DT region (Otsu threshold for every method, so they share one yardstick)
#   with the lesion.

# %%
rows = []
for m in METHODS:
    for i, (e, mask) in enumerate(zip(results[m], masks)):
        rows.append({"method": m, "image": cases["image_id"].iloc[i], **score_explanation(e, mask)})
scores = pd.DataFrame(rows)
display(scores.groupby("method", sort=False)[["pointing", "energy_inside", "iou", "mask_fraction"]].mean().round(3))
plots.faithfulness_figure(scores).show()

# %% [markdown]
# A map can only be as good as the model behind it: a network near chance (look at its test
# ROC-AUC above) has learned little about the lesion, and its maps may score at or below chance.
# Scores well above the dashed line, on a model that classifies well, are the evidence that it looks
# at the carcinoma rather than at the stain or the background.

# %% [markdown]
# ## 3b. Faithful to the model? Deletion, insertion and ROAD
#
# The lesion masks ask whether a map points at the *lesion*. A second question is whether it points
# at what the *model* uses. `dala.explain.faithfulness_scores` asks the model itself:
#
# * **deletion AUC** (Petsiuk et al. 2018): remove the most relevant pixels first (blurred away) and
#   follow P(malignant); the area under that curve, **lower is better** (the probability falls fast);
# * **insertion AUC**: start from the blurred image and put the most relevant pixels back first,
#   **higher is better**;
# * **ROAD** (Rong et al. 2022, pytorch-grad-cam's `ROADCombined`): removed pixels are filled in from
#   their neighbours so the model cannot read the removed region's shape; (least relevant removed -
#   most relevant removed) / 2 of the probability change, **higher is better**.
#
# Every method must beat a **random map** (smooth noise on an 8x8 grid, `random_map`): a map that
# scores like noise tells us nothing about the model, however good it looks.

# %%
from dala.explain import faithfulness_scores, random_map
from dala.explain.perturbation import mean_interval

FAITH_METHODS = [m for m in (["gradcam"] if TINY else ["gradcam", "dt-gradcam", "eigencam"]) if m in results]
N_FAITH = 2 if TINY else 4  # ROAD costs a few sparse solves per map: a few images are enough to teach it
STEPS = 8 if TINY else 16
rows, curves = [], {}
for i in range(min(N_FAITH, len(images))):
    mask_scores = {m: score_explanation(results[m][i], masks[i]) for m in FAITH_METHODS}
    for m in FAITH_METHODS + ["random"]:
        e = results[FAITH_METHODS[0]][i] if m == "random" else results[m][i]
        hm = random_map(e.heatmap.shape, seed=i) if m == "random" else None  # the baseline: same image, a noise map
        f = faithfulness_scores(model, e, heatmap=hm, steps=STEPS, seed=0)
        curves.setdefault(m, []).append(f["deletion_curve"])
        ms = mask_scores.get(m, {})
        rows.append({"method": m, "image": cases["image_id"].iloc[i], "deletion_auc": f["deletion_auc"],
                     "insertion_auc": f["insertion_auc"], "road": f["road"],
                     "pointing": ms.get("pointing"), "energy_inside": ms.get("energy_inside")})
faith = pd.DataFrame(rows)
display(faith.round(3))


def mean_ci(values):
    s = mean_interval(list(values))
    return f"{s['mean']:.3f}" + (f" [{s['low']:.3f}, {s['high']:.3f}]" if np.isfinite(s["low"]) else "")


display(faith.groupby("method", sort=False)[["deletion_auc", "insertion_auc", "road"]].agg(mean_ci)
        .rename(columns={"deletion_auc": "deletion AUC (lower better)", "insertion_auc": "insertion AUC (higher better)",
                         "road": "ROAD (higher better)"}))
fractions = np.linspace(0, 1, STEPS + 1)
deletion = pd.DataFrame({"removed": fractions, **{m: np.mean(c, axis=0) for m, c in curves.items()}})
plots.metric_sweep_figure(deletion, x="removed", metrics=list(curves), x_title="share of pixels removed, most relevant first",
                          title=f"Deletion curves: P(malignant) as each map's pixels are removed (mean of "
                                f"{len(curves['random'])} images; lower = more faithful){TAG}").show()

# %% [markdown]
# Read the two kinds of score together. A map can point at the lesion and still not be what the
# model relies on (good mask scores, deletion no better than random), or be faithful to a model that
# looks at the wrong thing (good deletion, poor mask scores: the model's shortcut). With a handful of
# images the intervals are wide: `python -m dala faithfulness --run RUN --images-dir DIR --methods gradcam,dt-gradcam,random`
# aggregates them over a dataset.

# %% [markdown]
# ## 4. DT Grad-CAM: the dynamic threshold
#
# The threshold is computed per image from its own map. `dala.explain.dt_gradcam.RULES` lists the
# rules: `otsu` (default), `mean_std` (mean + k * std), `percentile` (keep the top 20 %), `fixed` (0.5,
# the static baseline). The white outline is the kept region, yellow the lesion.

# %%
from dala.explain.dt_gradcam import RULES

img, mask = images[0], masks[0]
tiles, captions = [plots.outline_mask(img, mask)], ["lesion (yellow)"]
for rule in RULES:
    (e,) = explain(model, [img], method="dt-gradcam", target=TARGET, rule=rule, **setup)
    s = score_explanation(e, mask)
    tiles.append(plots.outline_mask(plots.outline_mask(e.overlay, mask), e.dt_region_original, colour=(255, 255, 255)))
    captions.append(f"{rule}: t={e.threshold:.2f}, IoU={s['iou']:.2f}")
plots.image_grid_figure(tiles, captions, cols=len(RULES) + 1, max_side=192, tile_height=170,
                        title=f"DT Grad-CAM thresholds on one image{TAG}").show()

# %% [markdown]
# ## 5. Sanity check: randomise the model (Adebayo et al. 2018)
#
# `sanity_randomization` re-initialises the top of a copy of the model (the CAM target layer and
# everything after it) and recomputes the map for the same class. A faithful method's map should
# **change**: low Spearman correlation and SSIM between the two maps (`passed` when both are below
# 0.9).

# %%
from dala.explain.faithfulness import sanity_randomization

rows, tiles, captions = [], [], []
for m in (["gradcam"] if TINY else ["gradcam", "dt-gradcam", "eigencam"]):
    r = sanity_randomization(model, images[0], method=m, target=TARGET, **setup)
    rows.append({"method": m, "spearman": r["spearman"], "ssim": r["ssim"], "passed": r["passed"],
                 "layers re-initialised": len(r["layers"])})
    tiles += [r["map"], r["map_randomised"]]
    captions += [f"{m}: trained", f"{m}: randomised top"]
display(pd.DataFrame(rows).round(3))
plots.image_grid_figure(tiles, captions, cols=2, max_side=160, tile_height=170,
                        title="Maps before and after randomising the top of the model").show()

# %% [markdown]
# **Take-aways.** A heatmap is a claim about the model, and on the synthetic data it can be checked:
# compare the scores with chance, and distrust any method that passes the eye test but fails the
# randomisation check. EigenCAM is class-agnostic (the first principal component of the activations),
# so it may survive randomising the head: that is what the check is for. On real BreakHis there are
# no masks, only the sanity check remains.
