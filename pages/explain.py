"""Explain: where does the network look? Grad-CAM family and DT Grad-CAM on uploads or dataset images."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import streamlit as st

from dala import plots
from dala.errors import DalaError
from pages import _common as ui

ui.require_entrypoint()

st.title("Explain a prediction")
st.markdown("Pick a trained model and an image; class-activation maps show which regions pushed the "
            "network towards a class. A map is a hint about the model, not a diagnosis.")

MAX_IMAGES = 4  # images explained per page (the page pages through the rest)
TRAIN_HERE_TIMEOUT_S = 900
UPLOAD_MB = 20  # .streamlit/config.toml server.maxUploadSize
RUN, PATH, HUB, UNTRAINED = ("Trained run", "Checkpoint folder", "Hugging Face Hub", "Untrained model")


def _checkpoint_folder(path: str) -> str:
    """A run folder holds its own config.json (the training config), so point at its
    checkpoints/best (else last) explicitly; a checkpoint folder passes through."""
    from dala.train.folder import checkpoint_dir

    p = Path(path).expanduser()
    return str(checkpoint_dir(p) or p)


@st.cache_resource(max_entries=4, show_spinner="Loading the checkpoint...")
def _load_checkpoint(folder: str, stamp: float):
    from dala.explain.api import load_for_explain
    from dala.models.checkpoint import read_checkpoint_config, resolve_checkpoint_folder

    model, kwargs = load_for_explain(folder)
    config = read_checkpoint_config(resolve_checkpoint_folder(folder))
    return model, kwargs, config


@st.cache_resource(max_entries=2, show_spinner="Building an untrained model...")
def _untrained(name: str):
    from dala.models import create_model

    model = create_model(name, pretrained=False)
    return model, {"spec": name, "class_names": ["benign", "malignant"]}, dict(model.dala_config)


@st.cache_data(max_entries=64, show_spinner=False)
def _explain(_model, model_key: str, rgb: np.ndarray, method: str, target, alpha: float, params: tuple, _kwargs: dict):
    from dala.explain import explain

    return explain(_model, [rgb], method=method, target=target, alpha=alpha, **_kwargs, **dict(params))[0]


@st.cache_data(max_entries=64, show_spinner=False)
def _faithfulness(_model, model_key: str, image_name: str, method: str, _explanation) -> dict:
    """H2's deletion / insertion / ROAD scores of one shown map (cached per model, image, method)."""
    from dala.explain import faithfulness_scores

    out = faithfulness_scores(_model, _explanation, method=method)
    return {k: float(out[k]) for k in ("deletion_auc", "insertion_auc", "road")}


@st.cache_data(max_entries=64, show_spinner=False)
def _tta(_model, model_key: str, model_input: np.ndarray) -> np.ndarray:
    """(8, 1, C) softmax probabilities of the model on the eight dihedral views of one image's model
    input (the eval transform's output, as explained), cached per model and image."""
    import torch

    from dala.uncertainty import tta_probs

    param = next(_model.parameters(), None)
    x = torch.from_numpy(np.asarray(model_input, dtype=np.float32))[None]  # (1, 3, S, S)
    if param is not None:
        x = x.to(param.device)

    def predict(batch):
        with torch.no_grad():
            return torch.softmax(_model(batch).float(), dim=1).cpu().numpy()  # (1, C)

    _model.eval()
    return tta_probs(predict, x)


@st.cache_resource(max_entries=8, show_spinner=False)
def _conformal(report_path: str, stamp: float, temperature: float):
    """Conformal sets fitted on a run's validation predictions (temperature-scaled as the shown
    probabilities are); None when the run kept no validation predictions."""
    from dala.calibration import apply_temperature
    from dala.compare import report_predictions
    from dala.io import read_json
    from dala.uncertainty import ConformalSets

    val = report_predictions(read_json(report_path, None, expect=dict), part="val")
    if val is None:
        return None
    return ConformalSets.fit(apply_temperature(val["probs"], temperature), val["y_true"]), len(val["y_true"])


def _report_path(folder: str | None) -> Path | None:
    """The report.json of the run a checkpoint folder belongs to (``<run>/checkpoints/<best|last>``,
    or the run folder itself), or None."""
    if not folder:
        return None
    p = Path(folder)
    for cand in (p / "report.json", p.parent.parent / "report.json"):
        if cand.is_file():
            return cand
    return None


def _stamp(folder: str) -> float:
    try:
        from dala.models.checkpoint import resolve_checkpoint_folder

        ck = resolve_checkpoint_folder(folder)
        return max(p.stat().st_mtime for p in ck.iterdir())
    except Exception:
        return 0.0


def _png(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------- 1. model
def _run_score(r) -> float:
    """Best first: a finished run's test GMean (then balanced accuracy); unfinished runs last."""
    test = (r.report or {}).get("test") or {}
    for key in ("gmean", "balanced_accuracy", "accuracy"):
        v = test.get(key)
        if isinstance(v, (int, float)) and v == v:
            return float(v)
    return -1.0


def _train_here() -> None:
    """No trained model yet: train the recommended small model in place, with a progress bar, so
    the first explanation a class sees comes from a trained model."""
    from dala.models import list_models
    from dala.models.availability import pretrained_ready
    from dala.train import TrainConfig, read_run, start_run
    from dala.train.config import recommended_settings

    model_name = "tiny_cnn" if "tiny_cnn" in list_models() else list_models()[0]  # the recommended small model
    st.info(f"No trained model yet, so a map would explain random weights. Train the recommended small model "
            f"(**{model_name}**, about a minute on a CPU) here, then explain its predictions.",
            icon=":material/model_training:")
    if not st.button(f"Train {model_name} now", key="ex_train_here", type="primary", icon=":material/play_arrow:"):
        return
    rec = recommended_settings(model_name, pretrained=pretrained_ready(model_name))
    from dala.models import get_spec

    config = TrainConfig(data_root=st.session_state.get(ui.ROOT_KEY), model=model_name,
                         pretrained=bool(get_spec(model_name).has_pretrained and pretrained_ready(model_name)),
                         mode=rec["mode"],
                         epochs=int(rec["epochs"]), lr=float(rec["lr"]), image_size=rec["image_size"])
    path = start_run(config, runs_root=ui.runs_root(), owner=ui.identity().owner_id, shared_root=ui.shared_runs_root())
    bar = st.progress(0.0, text="Starting the training process...")
    deadline = time.time() + TRAIN_HERE_TIMEOUT_S
    view = read_run(path)
    while view.active and time.time() < deadline:
        time.sleep(1.0)
        view = read_run(path)
        frac = view.status.get("progress")
        bar.progress(min(max(float(frac), 0.0), 1.0) if isinstance(frac, (int, float)) else 0.0,
                     text=f"{view.state}: epoch {view.status.get('epoch', 0)}/{config.epochs}")
    if view.state != "finished":
        st.warning(f"The run is {view.state}: follow it on the Train page ({path.name}).")
        return
    st.rerun()


runs = sorted((r for r in ui.list_visible_runs() if r.has_checkpoint), key=lambda r: -_run_score(r))
st.subheader("1. Model")
source = st.radio("Model source", [RUN, PATH, HUB, UNTRAINED], index=0, horizontal=True, key="ex_src")
model = kwargs = config = None
model_key = ""
model_folder: str | None = None  # the checkpoint folder (its run's report gives the validation predictions)
try:
    if source == RUN:
        if not runs:
            _train_here()
            st.caption("Or train one on the Train page, or pick **Untrained model** to see what a map of random "
                       "weights looks like.")
            st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
        else:
            labels = {str(r.path): f"{plots.run_label(r.config, r.name)}  [{r.state}]" + (" · best" if i == 0 and
                      _run_score(r) >= 0 else "") for i, r in enumerate(runs)}
            chosen = _checkpoint_folder(st.selectbox("Run (checkpoints/best)", list(labels), format_func=labels.get,
                                                     key="ex_run"))
            model, kwargs, config = _load_checkpoint(chosen, _stamp(chosen))
            model_key = f"{chosen}@{_stamp(chosen)}"
            model_folder = chosen
    elif source == PATH:
        folder = st.text_input("Checkpoint or run folder", key="ex_path",
                               placeholder="runs/2026...-dala_resnet50-40X-patient or a folder with model.safetensors")
        if folder.strip():
            from dala.hosting import check_user_path

            # hosted: only the visitor's own runs (and Hub snapshots); one message, whatever the path
            checked = check_user_path(folder.strip(), purpose="checkpoint", own_roots=ui.visible_run_roots())
            ck = _checkpoint_folder(str(checked))
            model, kwargs, config = _load_checkpoint(ck, _stamp(ck))
            model_key = f"{ck}@{_stamp(ck)}"
            model_folder = ck
    elif source == HUB:
        h = st.columns([3, 1, 1])
        from dala.hub import default_repo_id

        repo = h[0].text_input("Hub repo id", value=default_repo_id() or "", placeholder="user/dala-resnet50-breakhis",
                               key="ex_hub",
                               help="A Hugging Face Hub model repo holding a DALA checkpoint (model.safetensors + "
                                    "config.json). Loaded from the local cache first; offline, only a cached one.")
        rev = h[1].text_input("Revision", value="main", key="ex_hub_rev", help="Branch, tag or commit (pins the weights).")
        sub = h[2].text_input("Subfolder", key="ex_hub_sub", placeholder="40X", help="e.g. one checkpoint per magnification")
        if repo.strip():
            from dala.hub import pull

            pulled = pull(repo.strip(), revision=rev.strip() or "main", subfolder=sub.strip() or None)
            folder = str(pulled.folder)
            model, kwargs, config = _load_checkpoint(folder, _stamp(folder))
            model_key = f"hub:{repo.strip()}@{pulled.commit or rev}/{sub.strip()}"
            model_folder = folder  # a published report.json beside it gives the sets
            st.caption(f"Hub `{pulled.repo_id}` at commit `{(pulled.commit or '?')[:12]}`"
                       + (" (from the local cache)" if pulled.from_cache else ""))
    else:
        from dala.models import list_models

        names = list_models()
        name = st.selectbox("Architecture", names, index=names.index("tiny_cnn") if "tiny_cnn" in names else 0, key="ex_arch")
        st.warning("**Random weights - explanation is meaningless.** This model was never trained: its maps "
                   "show what a CAM looks like, not what a network learnt.")
        model, kwargs, config = _untrained(name)
        model_key = f"untrained:{name}"
except DalaError as exc:
    ui.show_error(exc, what="Cannot load that model")
    model = None

def _trained_on(config: dict | None, run_view=None) -> tuple[str, str | None]:
    """(what the model was trained on, in words; the training data folder or None) from the run
    (report, status) or the checkpoint's own config (its run_config)."""
    if source == UNTRAINED:
        return "nothing (never trained)", None
    extra = (config or {}).get("extra") or {}
    run_cfg = extra.get("run_config") or (run_view.config if run_view is not None else {}) or {}
    data_source = None
    if run_view is not None:
        data_source = (run_view.report or {}).get("data_source") or ((run_view.status or {}).get("meta") or {}).get(
            "data_source")
    root = run_cfg.get("data_root") if run_cfg else None
    if root is None and run_cfg:
        from dala.paths import synthetic_default_dir

        root = str(synthetic_default_dir())
        data_source = data_source or "synthetic"
    if data_source is None and root and (Path(root) / "SYNTHETIC").exists():
        data_source = "synthetic"
    split = run_cfg.get("split_mode")
    if data_source == "synthetic":
        text = "SYNTHETIC data (generated teaching images, not real tissue)"
    elif data_source == "real":
        text = f"real BreakHis images ({Path(root).name if root else 'a local copy'})"
    else:
        text = "data not recorded in this checkpoint"
    if split:
        text += f", {split}-level split"
    return text, root


@st.cache_data(max_entries=8, show_spinner="Measuring the training images' colours...")
def _colour_reference(root: str, stamp: float):
    from dala.ood import reference_from_index

    return reference_from_index(ui.load_index_for(root))


run_view = None
if source == RUN and runs and model is not None:
    run_view = next((r for r in runs if str(r.path) == st.session_state.get("ex_run")), runs[0])
trained_on, train_root = _trained_on(config, run_view) if model is not None else ("", None)
reference = None
if train_root and Path(train_root).is_dir():
    try:
        reference = _colour_reference(str(train_root), ui.dataset_stamp(str(train_root)))
    except (DalaError, ValueError, OSError):
        reference = None  # the training data cannot be read here: no check, and the page says so

if model is not None:
    ws = (config or {}).get("weight_source") or getattr(model, "dala_config", {}).get("weight_source")
    trained = source != UNTRAINED
    extra = (config or {}).get("extra") or {}
    line = f"**{config.get('name')}** · input {kwargs.get('input_size') or config.get('input_size', '?')} px · "
    line += ("trained; started from " if trained else "") + ui.weight_label(ws)
    if extra.get("epoch"):
        line += f" · best epoch {extra['epoch']}"
    st.caption(line + f"  \nTrained on: **{trained_on}**")

# ----------------------------------------------------------------------------- 2. images
st.subheader("2. Images")
index = ui.get_index(required=False)
img_source = st.radio("Image source", ["Upload", "From the dataset"], horizontal=True, key="ex_imgsrc",
                      label_visibility="collapsed")
images: list[dict] = []  # {"name", "bytes" | "path", "mask_path", "synthetic"}
if img_source == "Upload":
    files = st.file_uploader(f"PNG, JPEG or TIFF (up to {UPLOAD_MB} MB each)", type=["png", "jpg", "jpeg", "tif", "tiff"],
                             accept_multiple_files=True, key="ex_upload")
    st.caption(f"A file over {UPLOAD_MB} MB is refused before it reaches the app (a red mark beside its name): "
               "save it smaller (a BreakHis image is about 0.5 MB) or crop it.")
    from dala.hosting import max_uploads

    files = list(files or [])
    if len(files) > max_uploads():
        st.warning(f"{len(files)} files uploaded: this server explains at most {max_uploads()} per visit; "
                   f"the first {max_uploads()} are used.")
        files = files[:max_uploads()]
    for f in files:
        images.append({"name": f.name, "bytes": f.getvalue(), "mask_path": None, "synthetic": False})
else:
    if index is None:
        st.info("No dataset is loaded: pick one in the sidebar, or upload images.")
    else:
        ids = index["image_id"].tolist()
        default = index.loc[index["label"] == "malignant", "image_id"].head(1).tolist() or ids[:1]
        from dala.hosting import max_uploads

        picked = st.multiselect("Dataset images", ids, default=default, max_selections=max_uploads(), key="ex_ids")
        rows = index.set_index("image_id").loc[picked]
        for iid, r in rows.iterrows():
            images.append({"name": iid, "path": r["path"], "mask_path": r["mask_path"],
                           "synthetic": r["source"] == "synthetic", "label": r["label"]})
n_images = len(images)
if n_images > MAX_IMAGES:
    n_pages = -(-n_images // MAX_IMAGES)
    page = st.number_input(f"Page (of {n_pages})", 1, n_pages, step=1, key="ex_page")
    first_i = (int(page) - 1) * MAX_IMAGES
    images = images[first_i:first_i + MAX_IMAGES]
    st.caption(f"Images {first_i + 1}-{first_i + len(images)} of {n_images} ({MAX_IMAGES} per page).")

# ----------------------------------------------------------------------------- 3. method
st.subheader("3. Method")
from dala.explain.cams import DEFAULT_METHOD, describe_methods  # noqa: E402

methods = describe_methods()
by_name = {m["name"]: m for m in methods}
c = st.columns([3, 2, 2])
chosen_methods = c[0].multiselect(
    "Methods (side by side)", list(by_name), default=[DEFAULT_METHOD, "dt-gradcam"] if "dt-gradcam" in by_name else [DEFAULT_METHOD],
    format_func=lambda n: n + ("  (slow)" if by_name[n]["slow"] else ""), key="ex_methods",
    help="\n".join(f"- **{m['name']}**{' (slow)' if m['slow'] else ''}: {m['description']}" for m in methods))
class_names = (kwargs or {}).get("class_names") or ["benign", "malignant"]
target_choice = c[1].selectbox("Target class", ["predicted class", *class_names], key="ex_target",
                               help="Explain the class the model predicts, or ask 'why not benign?' by picking one.")
alpha = c[2].slider("Overlay opacity", 0.0, 1.0, 0.45, 0.05, key="ex_alpha")
show_faith = st.toggle("Faithfulness scores (deletion / insertion AUC, ROAD)", key="ex_faith",
                       help="Does the model's answer depend on the pixels the map marks? Deletion AUC (lower is "
                            "better), insertion AUC and ROAD (higher is better); a few seconds per map on a CPU.")
u = st.columns([2, 3])
coverage_in = u[0].number_input("Prediction-set coverage", value=0.9, step=0.05, format="%.2f", key="ex_coverage",
                                help="Conformal prediction: the set of labels holds the true one for this share of "
                                     "images (on data like the validation patients). A level in (0, 1), e.g. 0.9.")
coverage = None
try:
    from dala.uncertainty import check_coverage

    coverage = check_coverage(coverage_in)
except DalaError as exc:
    u[0].error(str(exc))
u[1].caption("Each image also shows its uncertainty: the spread of the malignant probability over the eight "
             "flips and quarter turns of the image (test-time augmentation; tissue has no up).")
dt_params: dict = {}
if "dt-gradcam" in chosen_methods:
    from dala.explain.dt_rules import DEFAULT_RULE, RULES  # noqa: E402

    d = st.columns(3)
    rule = d[0].selectbox("DT Grad-CAM threshold rule", list(RULES), index=list(RULES).index(DEFAULT_RULE), key="ex_rule",
                          help=f"Our reading of the paper's dynamic threshold: {DEFAULT_RULE} per image by default "
                               "(the rule that matched the synthetic lesion masks best: docs/explain.md); "
                               "mean+k*std, a percentile, or a fixed value to compare with.")
    dt_params["rule"] = rule
    if rule == "mean_std":
        dt_params["k"] = d[1].slider("k (threshold = mean + k*std)", 0.0, 3.0, 1.0, 0.1, key="ex_k")
    elif rule == "percentile":
        dt_params["q"] = d[1].slider("Percentile q", 50.0, 99.0, 80.0, 1.0, key="ex_q")
    elif rule == "fixed":
        dt_params["value"] = d[1].slider("Fixed threshold", 0.05, 0.95, 0.5, 0.05, key="ex_value")
if any(by_name[m]["slow"] for m in chosen_methods):
    st.caption("ScoreCAM and AblationCAM run the network hundreds of times per image: expect seconds to "
               "minutes on a CPU.")

# ----------------------------------------------------------------------------- 4. results
st.subheader("4. Explanations")
if model is None:
    st.info("Choose a model above.")
elif not images:
    st.info("Upload an image or pick one from the dataset."
            + (f" (Files over {UPLOAD_MB} MB are refused before they reach the app: see the red mark.)"
               if img_source == "Upload" else ""))
elif not chosen_methods:
    st.info("Choose at least one method.")
else:
    from dala.data.images import ORIGINAL_SIZE, load_for_model, max_image_side
    from dala.data.masks import read_lesion_mask
    from dala.explain.faithfulness import score_explanation

    from dala.data.breakhis import parse_name

    from dala.calibration import Calibration

    target = None if target_choice == "predicted class" else target_choice
    calibration = Calibration.from_config(config) if source != UNTRAINED else Calibration.identity()
    cal_label = calibration.label if calibration.fitted else (
        "uncalibrated (older run: no temperature fitted; probabilities as the network gives them)"
        if source != UNTRAINED else "uncalibrated (random weights)")
    conformal = None
    report_file = _report_path(model_folder)
    if coverage is not None and report_file is not None:
        try:
            conformal = _conformal(str(report_file), report_file.stat().st_mtime, calibration.temperature)
        except (DalaError, OSError) as exc:
            st.error(f"Prediction sets: {exc}")
    if coverage is not None and conformal is None:
        st.caption("Prediction sets need a run with validation predictions (a run trained with this version keeps "
                   "them in its report); this model has none, so no set is shown.")
    st.plotly_chart(plots.heatmap_scale_figure(title="Map colour scale (each map normalised to its image)"),
                    key="ex_scale")
    for n, item in enumerate(images):
        st.markdown(f"#### {item['name']}" + (" " + ui.SYNTHETIC_BADGE if item.get("synthetic") else ""))
        try:
            pil = load_for_model(item["bytes"] if "bytes" in item else item["path"], name=item["name"])  # large uploads shrunk
        except DalaError as exc:
            st.error(str(exc))
            continue
        except Exception as exc:  # e.g. PIL's DecompressionBombError for absurd header sizes
            st.error(f"{item['name']} cannot be used as an image ({type(exc).__name__}: {exc}). "
                     "Upload a PNG, JPEG or TIFF of sensible size (BreakHis images are 700x460).")
            continue
        rgb = np.asarray(pil)
        original = pil.info.get(ORIGINAL_SIZE)
        if original and tuple(original) != pil.size:  # maps and overlays are drawn on the bounded frame
            st.caption(f"shown and explained at {pil.size[0]}x{pil.size[1]} px, shrunk from {original[0]}x{original[1]} "
                       f"(the longest side is capped at {max_image_side()} px; the model sees its own input size)")
        results = {}
        with st.spinner(f"Explaining {item['name']}..."):
            for method in chosen_methods:
                params = tuple(sorted(dt_params.items())) if method == "dt-gradcam" else ()
                try:
                    results[method] = _explain(model, model_key, rgb, method, target, float(alpha), params, kwargs or {})
                except DalaError as exc:
                    st.error(f"{method}: {exc}")
                except Exception as exc:  # a method failing on an odd model must not take the page down
                    ui.show_error(exc, what=method)
        if not results:
            continue
        first = next(iter(results.values()))
        names = first.class_names or class_names
        head = st.columns([1, 2])
        probs = np.asarray(first.probs, dtype=np.float64)
        if not np.all(np.isfinite(probs)):
            head[0].metric("Prediction", "none (invalid output)")
            head[0].error("The model's output is not a number (NaN or infinite probabilities): its weights are "
                          "damaged or it diverged in training. No class is shown; retrain or load another checkpoint.")
            continue
        # dala.explain gives the probabilities temperature-scaled and the class decided at the locked
        # threshold when the checkpoint is calibrated (its Explanation.calibration says which)
        verdict = names[first.pred] if first.pred < len(names) else str(first.pred)
        head[0].metric("Prediction", verdict, f"{probs[first.pred]:.1%} confidence", delta_color="off",
                       delta_arrow="off")
        head[0].caption(f"probabilities: {first.calibration if calibration.fitted else cal_label}")
        if calibration.fitted and len(probs) == 2:
            head[0].caption(f"decided at the locked threshold {calibration.threshold:.2f} (chosen on validation, "
                            "before test)")
        if getattr(first, "stain_note", None):
            head[0].caption(f"stain normalisation skipped for this image: {first.stain_note} (the model sees it "
                            "un-normalised)")
        head[0].caption(f"model trained on {trained_on}")
        if first.model_input is not None:
            try:
                from dala.uncertainty import tta_summary

                views = _tta(model, model_key, first.model_input)  # (8, 1, C)
                if calibration.fitted:
                    views = np.stack([calibration.apply(v) for v in views])
                tta = tta_summary(views)
                head[0].metric("Uncertainty (TTA spread)", f"± {float(tta['std_malignant'][0]):.3f}",
                               help="Standard deviation of the malignant probability over the 8 dihedral views.")
                head[0].caption(f"malignant probability over the 8 views: mean {float(tta['probs'][0][-1]):.3f}")
            except DalaError as exc:
                head[0].caption(f"no uncertainty: {exc}")
        if conformal is not None and coverage is not None:
            sets, n_cal = conformal
            (label_set,) = sets.describe(sets.predict_sets(probs[None], coverage=coverage), class_names=names)
            head[0].metric(f"Prediction set ({coverage:.0%} coverage)", label_set)
            advice = ("one label: a confident answer" if label_set.count(",") == 0 and label_set != "{}" else
                      "both labels: refer to a pathologist" if "," in label_set else
                      "empty: this image is unlike the calibration images")
            head[0].caption(f"{advice} (split conformal, calibrated on {n_cal} validation images)")
        truth, how = item.get("label"), "from the dataset"
        if not truth:
            try:
                truth, how = parse_name(item["name"]).label, "from the BreakHis file name"
            except DalaError:
                truth = None
        if truth:
            mark = ":green[right]" if truth == verdict else ":red[wrong]"
            head[0].caption(f"true label: **{truth}** ({how}) · {mark}")
        if reference is not None and source != UNTRAINED:
            from dala.ood import ood_score

            ood = ood_score(rgb, reference)
            if ood.flagged:
                head[0].warning(f"Out of distribution: {ood.describe()}. The model was trained on {trained_on}; "
                                "its answer on this image means little.", icon=":material/report:")
        elif source != UNTRAINED:
            head[0].caption("(the training images are not available here: no check that this image resembles them)")
        if source == UNTRAINED:
            head[0].caption(":red[random weights - meaningless]")
        head[1].plotly_chart(plots.probability_figure(probs, names), key=f"probs_{n}")
        mask = read_lesion_mask(item.get("mask_path"), size=pil.size)  # None without a mask (NaN in the index)
        cols = st.columns(len(results) + 1)
        shown = plots.outline_mask(rgb, mask) if mask is not None else rgb
        cols[0].image(shown, caption="image" + (" · yellow: true lesion (synthetic mask)" if mask is not None else ""),
                      width="stretch")
        scores = []
        for col, (method, ex) in zip(cols[1:], results.items()):
            overlay = ex.overlay
            cap = f"{method} · target {ex.target_label or ex.target}"
            if ex.threshold is not None:
                cap += f" · threshold {ex.threshold:.2f} ({ex.params.get('rule', '')})"
                if ex.dt_region_original is not None:
                    overlay = plots.outline_mask(overlay, ex.dt_region_original, colour=(255, 255, 255), thickness=1)
            col.image(overlay, caption=cap, width="stretch")
            col.download_button("Download PNG", _png(ex.overlay), file_name=f"{Path(item['name']).stem}_{method}.png",
                                mime="image/png", key=f"dl_{n}_{method}", icon=":material/download:")
            if mask is not None:
                s = score_explanation(ex, mask)
                scores.append({"method": method, "pointing game hit": bool(s["pointing"]),
                               "energy inside lesion": round(s["energy_inside"], 3), "IoU (DT region)": round(s["iou"], 3),
                               "lesion share (chance)": round(s["mask_fraction"], 3)})
        if scores:
            st.caption("Scored against the synthetic lesion mask: does the map point at the lesion? "
                       "Energy inside above the lesion share beats chance.")
            st.dataframe(scores, hide_index=True)
        if show_faith:
            faith = []
            with st.spinner("Perturbing the image along each map..."):
                for method, ex in results.items():
                    try:
                        f = _faithfulness(model, model_key, item["name"], method, ex)
                    except DalaError as exc:
                        st.error(f"{method}: {exc}")
                        continue
                    faith.append({"method": method, "deletion AUC (lower better)": round(f["deletion_auc"], 3),
                                  "insertion AUC (higher better)": round(f["insertion_auc"], 3),
                                  "ROAD (higher better)": round(f["road"], 3)})
            if faith:
                st.caption("Faithfulness to the model (dala.explain.faithfulness_scores): not whether the map "
                           "finds the lesion, but whether the model's answer depends on what it marks.")
                st.dataframe(faith, hide_index=True)
