"""Train: configure a run, start it (a separate process), and watch it live from its run folder.

The page never trains: ``dala.train.start_run`` launches a process that writes the run folder,
and a timed fragment redraws from that folder. So the run survives a refresh or a visit to
another page (the page finds it again), and Stop really stops the process.
"""

from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from dala import plots
from dala.data.breakhis import MAGNIFICATIONS
from dala.errors import DalaError
from pages import _common as ui

ui.require_entrypoint()

POLL_S = 1.5
ACTIVE_KEY = "train_active_run"

st.title("Train a model")
index = ui.get_index()
ui.synthetic_warning(index)

from dala.metrics import HEADLINE_METRICS, METRIC_HELP  # noqa: E402
from dala.models import get_spec, list_models  # noqa: E402
from dala.train import TrainConfig, list_runs, read_run, send_control, start_run  # noqa: E402
from dala.train.config import IMBALANCE_STRATEGIES, recommended_settings  # noqa: E402
from dala.train.runs import estimate_seconds  # noqa: E402

runs_root = ui.runs_root()


@st.cache_data(ttl=120, show_spinner=False)
def _pretrained_ready(model: str) -> bool:
    from dala.models.weights import pretrained_ready

    return pretrained_ready(model)


def _pick_run_to_show(runs) -> str | None:
    """A fresh session (first visit, page refresh) reattaches to what is going on in runs/: the
    running run, else a queued one, else the newest."""
    for wanted in (lambda r: r.active and r.state != "queued", lambda r: r.state == "queued"):
        for r in runs:
            if wanted(r):
                return str(r.path)
    return str(runs[0].path) if runs else None


all_runs = list_runs(runs_root)
if st.session_state.get(ACTIVE_KEY) and not Path(st.session_state[ACTIVE_KEY]).is_dir():
    st.session_state[ACTIVE_KEY] = None
if not st.session_state.get(ACTIVE_KEY):
    st.session_state[ACTIVE_KEY] = _pick_run_to_show(all_runs)
busy = [r for r in all_runs if r.active]

# ----------------------------------------------------------------------------- the form
IMBALANCE_HELP = {
    "none": "plain cross-entropy: the majority class (malignant) dominates",
    "class_weight": "cross-entropy weighted by inverse class frequency",
    "sampler": "a weighted sampler draws both classes equally often",
    "focal": "focal loss: down-weights easy (mostly majority) examples",
    "oversample": "repeat minority (benign) images until the classes match",
}
with st.expander("New run", expanded=not busy):
    models = list_models()
    c = st.columns(4)
    default_model = "tiny_cnn" if "tiny_cnn" in models else models[0]
    model = c[0].selectbox("Model", models, index=models.index(default_model), key="tr_model",
                           format_func=lambda n: f"{n} ({get_spec(n).param_count() / 1e6:.1f} M params)",
                           help="tiny_cnn trains in seconds on a CPU; the ResNet-size models want a GPU "
                                "(or quick mode).")
    spec = get_spec(model)
    rec = recommended_settings(model, pretrained=_pretrained_ready(model))  # settings that learn here
    mag = c[1].selectbox("Magnification", [None, *MAGNIFICATIONS], key="tr_mag",
                         format_func=lambda m: "all four" if m is None else f"{m}X")
    split_mode = c[2].radio("Split", ["patient", "image"], key="tr_split", horizontal=True,
                            format_func=lambda s: "patient-level" if s == "patient" else "image-level (leaks)",
                            help="Image-level splits put the same patient in train and test: the score goes up, "
                                 "and it is not real. Train both and compare them on the Compare page.")
    mode = c[3].radio("Mode", ["quick", "full"], index=["quick", "full"].index(rec["mode"]), key="tr_mode", horizontal=True,
                      help="quick: freeze the backbone, cache its features once, train the top (minutes on a CPU). "
                           "full: fine-tune every layer.")
    c = st.columns(4)
    imbalance = c[0].selectbox("Imbalance strategy", list(IMBALANCE_STRATEGIES), key="tr_imb",
                               format_func=lambda s: f"{s}: {IMBALANCE_HELP.get(s, '')}")
    use_ratio = c[1].toggle("Resample classes", key="tr_use_ratio",
                            help="Subsample the training set to this ratio, to see what imbalance does.")
    ratio = c[1].slider("benign : malignant", 0.1, 2.0, 0.45, 0.05, key="tr_ratio", disabled=not use_ratio,
                        help="0.45 is BreakHis's own ratio (31% benign); 1.0 is balanced; 0.1 is one benign per ten malignant.")
    epochs = c[2].slider("Epochs", 1, 50, rec["epochs"], key="tr_epochs")
    lrs = sorted({1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, TrainConfig.lr, rec["lr"]})
    lr = c[3].select_slider("Learning rate", lrs, value=rec["lr"], key="tr_lr", format_func=lambda v: f"{v:g}",
                            help="AdamW. The default suits a fresh head on a frozen or pretrained backbone.")
    c = st.columns(4)
    batch = c[0].select_slider("Batch size", [8, 16, 32, 64, 128], value=TrainConfig.batch_size, key="tr_batch")
    sizes = sorted({spec.input_size, 64, 96, 128, 160, 224})
    size = c[1].selectbox("Input size (px)", sizes, index=sizes.index(rec["image_size"] or spec.input_size), key="tr_size",
                          disabled=spec.family == "transformer" and model == "vit_b_16",
                          help=f"{model} default: {spec.input_size} px.")
    no_weights = spec.weight_ref[0] == "none"
    pretrained = c[2].checkbox("Start from pretrained weights", value=not no_weights, key="tr_pre", disabled=no_weights,
                               help="Offline and uncached, the model starts from random weights and the run says so.")
    max_train = c[3].number_input("Max training images (0 = all)", 0, 100_000, 0, step=50, key="tr_max",
                                  help="Subsample for classroom speed.")
    name = st.text_input("Run name (optional)", key="tr_name", max_chars=40)

    config = TrainConfig(data_root=st.session_state.get(ui.ROOT_KEY), magnification=mag, split_mode=split_mode,
                         imbalance=imbalance, target_ratio=float(ratio) if use_ratio else None, model=model,
                         pretrained=bool(pretrained and not no_weights),
                         image_size=None if size == spec.input_size else int(size), mode=mode, epochs=int(epochs),
                         batch_size=int(batch), lr=float(lr), max_train_images=int(max_train) or None,
                         name="".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in name.strip()))
    try:
        config.validate()
        sub = index if mag is None else index[index["magnification"] == mag]
        n_eval = int(round(len(sub) * (config.test_fraction + config.val_fraction)))
        n_train = len(sub) - n_eval
        if config.max_train_images:
            n_train = min(n_train, config.max_train_images)
        secs = estimate_seconds(config, n_train, n_eval)
        secs += 15  # starting the process, importing torch, indexing
        est = f"{secs:.0f} s" if secs < 90 else f"{secs / 60:.0f} min" if secs < 5400 else f"{secs / 3600:.1f} h"
        st.markdown(f"Estimated time: **~{est}** for about {n_train} training and {n_eval} evaluation images "
                    "(2-core CPU figures; a GPU is much faster)." + ("  \n:orange[Another run is active: this one "
                                                                   "will queue.]" if busy else ""))
        if st.button("Start", type="primary", icon=":material/play_arrow:", key="tr_start"):
            from dala.hosting import check_can_start_run

            check_can_start_run(ui.shared_runs_root())  # hosted: one run at a time on the whole server
            path = start_run(config, runs_root=runs_root)
            st.session_state[ACTIVE_KEY] = str(path)
            st.toast(f"Started {path.name}")
            time.sleep(0.3)
            st.rerun()
    except DalaError as exc:
        ui.show_error(exc)

# ----------------------------------------------------------------------------- the watcher
if not all_runs and not st.session_state.get(ACTIVE_KEY):
    st.info("No runs yet. Configure one above and press **Start**.")
    st.stop()

all_runs = list_runs(runs_root)
paths = [str(r.path) for r in all_runs]
current = st.session_state.get(ACTIVE_KEY)
if current not in paths and current:
    paths.insert(0, current)
chosen = st.selectbox("Run", paths, index=paths.index(current) if current in paths else 0, key="tr_watch",
                      format_func=lambda p: Path(p).name)
st.session_state[ACTIVE_KEY] = chosen

STATE_ICON = {"queued": ":material/hourglass_top:", "running": ":material/sync:", "paused": ":material/pause:",
              "stopping": ":material/stop:", "stopped": ":material/stop_circle:", "finished": ":material/check_circle:",
              "failed": ":material/error:"}


def draw_run(run_dir: str, live: bool = False) -> None:
    try:
        view = read_run(run_dir)
    except DalaError as exc:
        ui.show_error(exc)
        return
    if live and not view.active:
        st.rerun(scope="app")  # finished: redraw once without the timer, with the final card
    status, cfg = view.status, view.config
    head = st.columns([4, 1, 1, 1])
    phase = status.get("phase") or view.state
    epoch_txt = f"epoch {status.get('epoch', 0)}/{cfg.get('epochs', '?')}"
    head[0].markdown(f"{STATE_ICON.get(view.state, '')} **{view.state}** · {phase} · {epoch_txt}"
                     + (f" · ETA {status['eta_s']:.0f} s" if view.state == "running" and status.get("eta_s") else ""))
    if view.state in ("running", "starting"):
        if head[1].button("Pause", key="tr_pause", icon=":material/pause:"):
            send_control(run_dir, "pause")
            st.toast("Pause requested: the run answers within a step.")
    if view.state == "paused":
        if head[1].button("Resume", key="tr_resume", icon=":material/play_arrow:"):
            send_control(run_dir, "resume")
            st.toast("Resume requested: the run answers within a step.")
    if view.active and view.state != "stopping":
        if head[2].button("Stop", key="tr_stop", icon=":material/stop:"):
            send_control(run_dir, "stop")
            st.toast("Stop requested: the run answers within a step.")
    progress = status.get("progress")
    if view.active and progress is not None:
        st.progress(min(max(float(progress), 0.0), 1.0))
    if view.state == "queued":
        st.info(f"Queued: position **{view.queue_position or '?'}**. One heavy run trains at a time on this machine; "
                "this one starts when the run ahead of it ends.")
    if view.state == "failed":
        st.error(f"The run failed: {status.get('error') or 'see train.log'}")
        log = Path(run_dir) / "train.log"
        if log.exists():
            with st.expander("train.log (last lines)"):
                st.code("\n".join(log.read_text(errors="replace").splitlines()[-30:]))
    meta = status.get("meta") or {}
    if meta.get("weight_source"):
        st.caption(f"{meta.get('model', cfg.get('model'))}: {ui.weight_label(meta['weight_source'])} · "
                   f"{meta.get('device', '')} · data: {meta.get('data_source', '?')}"
                   + (" (SYNTHETIC)" if meta.get("data_source") == "synthetic" else "")
                   + f" · {cfg.get('split_mode')}-level split")
    st.plotly_chart(plots.training_curves_figure(view.epochs, view.steps, steps_per_epoch=status.get("steps_per_epoch"),
                                                 title=f"Training curves: {Path(run_dir).name}"), key="tr_curves")
    draw_tiles(view)
    if view.report and view.report.get("test"):
        draw_report(view)


def draw_tiles(view) -> None:
    tiles = view.tiles or {}
    items, epochs = tiles.get("tiles") or [], tiles.get("epochs") or []
    if not items:
        return
    last = epochs[-1] if epochs else None
    st.markdown(f"**Validation tiles** - predictions after epoch {last['epoch']}" if last else
                "**Validation tiles** - predictions appear after the first epoch")
    cols = st.columns(len(items))
    names = ["benign", "malignant"]
    for i, (col, t) in enumerate(zip(cols, items)):
        try:
            col.image(ui.thumbnail(t["path"], 160), width="stretch")
        except Exception:
            col.caption("(image missing)")
        cap = f"true: {t['label']}"
        if last:
            pred = names[last["pred"][i]]
            p = last["probs"][i][last["pred"][i]]
            mark = ":green[right]" if pred == t["label"] else ":red[wrong]"
            cap += f"  \npred: {pred} {p:.0%} {mark}"
        col.caption(cap)


def draw_report(view) -> None:
    rep = view.report
    test = rep["test"]
    split = view.config.get("split_mode", "?")
    st.markdown(f"#### Test metrics (measured, {split}-level split, best epoch {rep.get('best_epoch')})")
    if rep.get("data_source") == "synthetic":
        st.caption(f"{ui.SYNTHETIC_BADGE} measured on SYNTHETIC data")
    cols = st.columns(len(HEADLINE_METRICS))
    for col, key in zip(cols, HEADLINE_METRICS):
        val = test.get(key) if key != "f1_macro" else (test.get("macro") or {}).get("f1")
        col.metric(key.replace("_", " "), "n/a" if val is None else f"{val:.3f}", help=METRIC_HELP.get(key))
    left, right = st.columns([1, 1])
    left.plotly_chart(plots.confusion_matrix_figure(test["confusion_matrix"], test.get("class_names") or ["benign", "malignant"]),
                      key="tr_cm")
    right.markdown(f"- parameters: **{rep.get('num_params', 0):,}** ({rep.get('trainable_params', 0):,} trained)\n"
                   f"- training speed: **{rep.get('train_images_per_s', '?')} images/s** on {rep.get('device', '?')}\n"
                   f"- weights: {ui.weight_label(rep.get('weight_source'))}\n"
                   f"- total time: {rep.get('total_time_s', '?')} s")
    with st.expander("Full test report (JSON)"):
        st.json({k: v for k, v in test.items() if k != "per_magnification"}, expanded=False)


try:
    view0 = read_run(chosen)
except DalaError as exc:
    ui.show_error(exc)
    st.stop()
if view0.active:
    st.fragment(run_every=POLL_S)(draw_run)(chosen, live=True)
else:
    draw_run(chosen)
with st.expander("Run configuration"):
    st.json(view0.config, expanded=False)
