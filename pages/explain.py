"""Explain: where does the network look? Grad-CAM family and DT Grad-CAM on uploads or dataset images."""

from __future__ import annotations

import hashlib
import io
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

MAX_IMAGES = 4
RUN, PATH, HUB, UNTRAINED = ("Trained run", "Checkpoint folder", "Hugging Face Hub", "Untrained model")


def _checkpoint_folder(path: str) -> str:
    """A run folder holds its own config.json (the training config), so point at its
    checkpoints/best (else last) explicitly; a checkpoint folder passes through."""
    p = Path(path).expanduser()
    for sub in (("checkpoints", "best"), ("checkpoints", "last")):
        if (p.joinpath(*sub) / "model.safetensors").is_file():
            return str(p.joinpath(*sub))
    return str(p)


@st.cache_resource(max_entries=4, show_spinner="Loading the checkpoint...")
def _load_checkpoint(folder: str, stamp: float):
    from dala.explain.api import load_for_explain, resolve_checkpoint_dir
    from dala.models.checkpoint import read_checkpoint_config

    model, kwargs = load_for_explain(folder)
    config = read_checkpoint_config(resolve_checkpoint_dir(folder))
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


def _stamp(folder: str) -> float:
    try:
        from dala.explain.api import resolve_checkpoint_dir

        ck = resolve_checkpoint_dir(folder)
        return max(p.stat().st_mtime for p in ck.iterdir())
    except Exception:
        return 0.0


def _png(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------- 1. model
from dala.train.runs import list_runs  # noqa: E402

runs = [r for r in list_runs(ui.runs_root()) if r.has_checkpoint]
st.subheader("1. Model")
source = st.radio("Model source", [RUN, PATH, HUB, UNTRAINED], index=0 if runs else 3, horizontal=True, key="ex_src")
model = kwargs = config = None
model_key = ""
try:
    if source == RUN:
        if not runs:
            st.info("No trained checkpoint yet: train one on the Train page (a tiny_cnn run takes about a minute), "
                    "or pick **Untrained model** to see what a map of random weights looks like.")
            st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
        else:
            labels = {str(r.path): f"{r.name}  [{r.state}]" for r in runs}
            chosen = _checkpoint_folder(st.selectbox("Run (checkpoints/best)", list(labels), format_func=labels.get,
                                                     key="ex_run"))
            model, kwargs, config = _load_checkpoint(chosen, _stamp(chosen))
            model_key = f"{chosen}@{_stamp(chosen)}"
    elif source == PATH:
        folder = st.text_input("Checkpoint or run folder", key="ex_path",
                               placeholder="runs/2026...-dala_resnet50-40X-patient or a folder with model.safetensors")
        if folder.strip():
            ck = _checkpoint_folder(folder.strip())
            model, kwargs, config = _load_checkpoint(ck, _stamp(ck))
            model_key = f"{ck}@{_stamp(ck)}"
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

if model is not None:
    ws = (config or {}).get("weight_source") or getattr(model, "dala_config", {}).get("weight_source")
    trained = source != UNTRAINED
    extra = (config or {}).get("extra") or {}
    line = f"**{config.get('name')}** · input {kwargs.get('input_size') or config.get('input_size', '?')} px · "
    line += ("trained; started from " if trained else "") + ui.weight_label(ws)
    if extra.get("epoch"):
        line += f" · best epoch {extra['epoch']}"
    st.caption(line)

# ----------------------------------------------------------------------------- 2. images
st.subheader("2. Images")
index = ui.get_index(required=False)
img_source = st.radio("Image source", ["Upload", "From the dataset"], horizontal=True, key="ex_imgsrc",
                      label_visibility="collapsed")
images: list[dict] = []  # {"name", "bytes" | "path", "mask_path", "synthetic"}
if img_source == "Upload":
    files = st.file_uploader("PNG, JPEG or TIFF (up to 20 MB each)", type=["png", "jpg", "jpeg", "tif", "tiff"],
                             accept_multiple_files=True, key="ex_upload")
    for f in files or []:
        images.append({"name": f.name, "bytes": f.getvalue(), "mask_path": None, "synthetic": False})
else:
    if index is None:
        st.info("No dataset is loaded: pick one in the sidebar, or upload images.")
    else:
        ids = index["image_id"].tolist()
        default = index.loc[index["label"] == "malignant", "image_id"].head(1).tolist() or ids[:1]
        picked = st.multiselect("Dataset images", ids, default=default, max_selections=MAX_IMAGES, key="ex_ids")
        rows = index.set_index("image_id").loc[picked]
        for iid, r in rows.iterrows():
            images.append({"name": iid, "path": r["path"], "mask_path": r["mask_path"] or None,
                           "synthetic": r["source"] == "synthetic", "label": r["label"]})
if len(images) > MAX_IMAGES:
    st.warning(f"Showing the first {MAX_IMAGES} of {len(images)} images.")
    images = images[:MAX_IMAGES]

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
dt_params: dict = {}
if "dt-gradcam" in chosen_methods:
    from dala.explain.dt_gradcam import RULES  # noqa: E402

    d = st.columns(3)
    rule = d[0].selectbox("DT Grad-CAM threshold rule", list(RULES), key="ex_rule",
                          help="Our reading of the paper's dynamic threshold: Otsu per image by default; "
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
    st.info("Upload an image or pick one from the dataset.")
elif not chosen_methods:
    st.info("Choose at least one method.")
else:
    from dala.data.images import load_rgb
    from dala.explain.faithfulness import score_explanation

    target = None if target_choice == "predicted class" else target_choice
    for n, item in enumerate(images):
        st.markdown(f"#### {item['name']}" + (" " + ui.SYNTHETIC_BADGE if item.get("synthetic") else ""))
        try:
            pil = load_rgb(item["bytes"] if "bytes" in item else item["path"], name=item["name"])
        except DalaError as exc:
            st.error(str(exc))
            continue
        except Exception as exc:  # e.g. PIL's DecompressionBombError for absurd header sizes
            st.error(f"{item['name']} cannot be used as an image ({type(exc).__name__}: {exc}). "
                     "Upload a PNG, JPEG or TIFF of sensible size (BreakHis images are 700x460).")
            continue
        rgb = np.asarray(pil)
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
        verdict = names[first.pred] if first.pred < len(names) else str(first.pred)
        head[0].metric("Prediction", verdict, f"{first.probs[first.pred]:.1%} confidence", delta_color="off",
                       delta_arrow="off")
        if item.get("label"):
            head[0].caption(f"true label: **{item['label']}**")
        if source == UNTRAINED:
            head[0].caption(":red[random weights - meaningless]")
        head[1].plotly_chart(plots.probability_figure(first.probs, names), key=f"probs_{n}")
        mask = None
        if item.get("mask_path"):
            mask = np.asarray(load_rgb(item["mask_path"]))[..., 0] > 0
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
                if ex.mask_original is not None:
                    overlay = plots.outline_mask(overlay, ex.mask_original, colour=(255, 255, 255), thickness=1)
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
