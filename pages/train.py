"""Train: configure a run, start it (a separate process), and watch it live from its run folder.

The page never trains: ``dala.train.start_run`` launches a process that writes the run folder,
and a timed fragment redraws from that folder. So the run survives a refresh or a visit to
another page (the page finds it again), and Stop really stops the process.

Form state lives in ``st.session_state`` under the widget keys (no widget is given a default of
its own): choosing a model writes that model's recommended settings there, "Reset to
recommended" writes them again, and a hand-over from the Imbalance Lab writes its values once.
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
ACTIVE_KEY = "train_active_run"     # the run this session watches (survives visits to other pages)
REC_FOR_KEY = "tr_rec_for"          # the model whose recommended settings the form was last given
LAB_KEY = "dala_lab_to_train"       # a TrainConfig-field dict sent by the Imbalance Lab page
FROM_LAB_KEY = "tr_from_lab"        # the form holds the Lab's settings (a note says so)

st.title("Train a model")
index = ui.get_index()
ui.synthetic_warning(index)

from dala.metrics import HEADLINE_METRICS, METRIC_HELP, metric_label  # noqa: E402
from dala.models import get_spec, list_models  # noqa: E402
from dala.train import TrainConfig, read_run, send_control, start_run  # noqa: E402
from dala.train.config import IMBALANCE_STRATEGIES, MODES, SPLIT_MODES, recommended_settings  # noqa: E402
from dala.train.folder import RunFolder  # noqa: E402
from dala.train.runs import estimate_seconds  # noqa: E402

runs_root = ui.runs_root()
who = ui.identity()

MAG_OPTIONS = [None, *MAGNIFICATIONS]
BATCH_OPTIONS = [8, 16, 32, 64, 128]
LR_OPTIONS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, TrainConfig.lr)
SIZE_OPTIONS = (64, 96, 128, 160, 224)
RATIO_RANGE = (0.1, 2.0)
EPOCH_RANGE = (1, 50)
# widget key -> its value before anyone touched the form (model-dependent keys: _recommended_state)
FORM_DEFAULTS = {"tr_mag": None, "tr_split": "patient", "tr_imb": "none", "tr_use_ratio": False,
                 "tr_ratio": 0.45, "tr_batch": TrainConfig.batch_size, "tr_max": 0, "tr_name": ""}
REC_KEYS = ("tr_mode", "tr_epochs", "tr_lr", "tr_size", "tr_pre")


@st.cache_data(ttl=120, show_spinner=False)
def _pretrained_ready(model: str) -> bool:
    from dala.models.availability import pretrained_ready

    return pretrained_ready(model)


def _recommended_state(model: str) -> dict:
    """The widget values of ``recommended_settings`` for ``model`` (what learns on this machine)."""
    spec = get_spec(model)
    rec = recommended_settings(model, pretrained=_pretrained_ready(model))
    return {"tr_mode": rec["mode"], "tr_epochs": int(rec["epochs"]), "tr_lr": float(rec["lr"]),
            "tr_size": int(rec["image_size"] or spec.input_size), "tr_pre": bool(spec.has_pretrained)}


def _apply_recommended() -> None:
    """on_change of the model box and on_click of "Reset to recommended" (callbacks run before the
    script, so the widgets below are drawn with these values)."""
    model = st.session_state.get("tr_model")
    st.session_state.update(_recommended_state(model))
    st.session_state[REC_FOR_KEY] = model
    st.session_state.pop(FROM_LAB_KEY, None)


def _clamp(v, lo, hi):
    return min(max(v, lo), hi)


def _lab_state(values: dict, models: list[str]) -> tuple[dict, list[str]]:
    """Widget values for a dict of TrainConfig fields (the Imbalance Lab's hand-over); returns the
    values and the fields that could not be used (unknown, or out of the form's range)."""
    state, skipped = {}, []
    model = values.get("model")
    if model is not None:
        if model in models:
            state["tr_model"] = model
            state.update(_recommended_state(model))
        else:
            skipped.append("model")
    fields = {  # TrainConfig field -> (widget key, value -> widget value or None when unusable)
        "magnification": ("tr_mag", lambda v: v if v in MAG_OPTIONS else None),
        "split_mode": ("tr_split", lambda v: v if v in SPLIT_MODES else None),
        "imbalance": ("tr_imb", lambda v: v if v in IMBALANCE_STRATEGIES else None),
        "mode": ("tr_mode", lambda v: v if v in MODES else None),
        "epochs": ("tr_epochs", lambda v: int(_clamp(int(v), *EPOCH_RANGE))),
        "lr": ("tr_lr", lambda v: float(v) if 0 < float(v) < 10 else None),
        "batch_size": ("tr_batch", lambda v: int(v) if int(v) in BATCH_OPTIONS else None),
        "image_size": ("tr_size", lambda v: int(v) if int(v) >= 16 else None),
        "pretrained": ("tr_pre", bool),
        "max_train_images": ("tr_max", lambda v: int(v or 0) if int(v or 0) >= 0 else None),
    }
    for field, (key, convert) in fields.items():
        if field not in values:
            continue
        try:
            v = convert(values[field])
        except (TypeError, ValueError):
            v = None
        if v is None and not (field == "magnification" and values[field] is None):
            skipped.append(field)
        else:
            state[key] = v
    if "target_ratio" in values:
        r = values["target_ratio"]
        try:
            state["tr_use_ratio"] = r is not None
            if r is not None:
                state["tr_ratio"] = round(float(_clamp(float(r), *RATIO_RANGE)), 2)
        except (TypeError, ValueError):
            skipped.append("target_ratio")
    known = set(fields) | {"model", "target_ratio"}
    skipped += sorted(set(values) - known)
    return state, skipped


def _init_form(models: list[str]) -> None:
    """Fill in every form key this session does not hold yet, then take a Lab hand-over."""
    default_model = "tiny_cnn" if "tiny_cnn" in models else models[0]  # the recommended small model
    if st.session_state.get("tr_model") not in models:
        st.session_state["tr_model"] = default_model
    for key, value in FORM_DEFAULTS.items():
        st.session_state.setdefault(key, value)
    if st.session_state.get(REC_FOR_KEY) != st.session_state["tr_model"] or any(
            k not in st.session_state for k in REC_KEYS):
        _apply_recommended()
    lab = st.session_state.pop(LAB_KEY, None)
    if isinstance(lab, dict) and lab:
        state, skipped = _lab_state(lab, models)
        st.session_state.update(state)
        st.session_state[REC_FOR_KEY] = st.session_state["tr_model"]
        st.session_state[FROM_LAB_KEY] = {"skipped": skipped}


def _pick_run_to_show(runs) -> str | None:
    """A fresh session (first visit, page refresh) reattaches to its own runs first: the running
    one, else a queued one, else its newest; then anyone's running run, else the newest."""
    mine = [r for r in runs if who.owns(r)]
    for pool in (mine, runs):
        for wanted in (lambda r: r.active and r.state != "queued", lambda r: r.state == "queued", lambda r: True):
            for r in pool:
                if wanted(r):
                    return str(r.path)
    return None


def _duration(seconds: float) -> str:
    s = int(round(max(float(seconds), 0.0)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s" if s % 60 else f"{s // 60} min"
    return f"{s // 3600} h {(s % 3600) // 60} min"


all_runs = ui.list_visible_runs()
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
models = list_models()
_init_form(models)
ss = st.session_state
with st.expander("New run", expanded=not busy or bool(ss.get(FROM_LAB_KEY))):
    if ss.get(FROM_LAB_KEY) is not None:
        skipped = ss[FROM_LAB_KEY].get("skipped") or []
        st.info("The form holds the **settings from the Imbalance Lab**: check them and press **Start**."
                + (f" Not used (unknown or out of range here): {', '.join(skipped)}." if skipped else ""),
                icon=":material/science:")
    c = st.columns(4)
    model = c[0].selectbox("Model", models, key="tr_model", on_change=_apply_recommended,
                           format_func=lambda n: f"{n} ({get_spec(n).param_count() / 1e6:.1f} M params)",
                           help="tiny_cnn trains in seconds on a CPU; the ResNet-size models want a GPU "
                                "(or quick mode). Choosing a model sets its recommended settings.")
    spec = get_spec(model)
    if spec.fixed_input_size:  # the architecture takes only its own size
        ss["tr_size"] = int(spec.input_size)
    if not spec.has_pretrained:
        ss["tr_pre"] = False
    mag = c[1].selectbox("Magnification", MAG_OPTIONS, key="tr_mag",
                         format_func=lambda m: "all four" if m is None else f"{m}X")
    split_mode = c[2].radio("Split", list(SPLIT_MODES), key="tr_split", horizontal=True,
                            format_func=lambda s: "patient-level" if s == "patient" else "image-level (leaks)",
                            help="Image-level splits put the same patient in train and test: the score goes up, "
                                 "and it is not real. Train both and compare them on the Compare page.")
    mode = c[3].radio("Mode", list(MODES), key="tr_mode", horizontal=True,
                      help="quick: freeze the backbone, cache its features once, train the top (minutes on a CPU). "
                           "full: fine-tune every layer.")
    c = st.columns(4)
    imbalance = c[0].selectbox("Imbalance strategy", list(IMBALANCE_STRATEGIES), key="tr_imb",
                               format_func=lambda s: f"{s}: {IMBALANCE_HELP.get(s, '')}")
    use_ratio = c[1].toggle("Resample classes", key="tr_use_ratio",
                            help="Subsample the training set to this ratio, to see what imbalance does.")
    ratio = c[1].slider("benign : malignant", *RATIO_RANGE, step=0.05, key="tr_ratio", disabled=not use_ratio,
                        help="0.45 is BreakHis's own ratio (31% benign); 1.0 is balanced; 0.1 is one benign per ten malignant.")
    epochs = c[2].slider("Epochs", *EPOCH_RANGE, key="tr_epochs")
    lrs = sorted({*LR_OPTIONS, float(ss["tr_lr"])})
    lr = c[3].select_slider("Learning rate", lrs, key="tr_lr", format_func=lambda v: f"{v:g}",
                            help="AdamW. The default suits a fresh head on a frozen or pretrained backbone.")
    c = st.columns(4)
    batches = sorted({*BATCH_OPTIONS, int(ss["tr_batch"])})
    batch = c[0].select_slider("Batch size", batches, key="tr_batch")
    sizes = sorted({spec.input_size, *SIZE_OPTIONS, int(ss["tr_size"])})
    size = c[1].selectbox("Input size (px)", sizes, key="tr_size", disabled=spec.fixed_input_size,
                          help=f"{model} default: {spec.input_size} px"
                               + (" (the only size this architecture accepts)." if spec.fixed_input_size else "."))
    pretrained = c[2].checkbox("Start from pretrained weights", key="tr_pre", disabled=not spec.has_pretrained,
                               help="Offline and uncached, the model starts from random weights and the run says so."
                                    if spec.has_pretrained else f"{model} has no pretrained weights.")
    max_train = c[3].number_input("Max training images (0 = all)", 0, 100_000, step=50, key="tr_max",
                                  help="Subsample for classroom speed.")
    name = st.text_input("Run name (optional)", key="tr_name", max_chars=40)

    rec = _recommended_state(model)
    rec_text = (f"{rec['tr_mode']} mode, {rec['tr_epochs']} epochs, lr {rec['tr_lr']:g}, {rec['tr_size']} px, "
                + ("pretrained start" if rec["tr_pre"] else "random start"))
    if spec.has_pretrained and not _pretrained_ready(model):
        rec_text += " (the pretrained weights are not available here: the run starts from random weights and says so)"
    labels = {"tr_mode": "mode", "tr_epochs": "epochs", "tr_lr": "lr", "tr_size": "size", "tr_pre": "pretrained"}
    changed = [f"{labels[k]} {rec[k]:g} -> {ss[k]:g}" if isinstance(rec[k], float) else f"{labels[k]} {rec[k]} -> {ss[k]}"
               for k in REC_KEYS if ss.get(k) != rec[k]]
    r = st.columns([5, 1])
    r[0].caption(f"Starts from the **recommended settings for {model}** on this machine: {rec_text}."
                 + (f"  \n:orange[You changed from the recommended: {'; '.join(changed)}.]" if changed else ""))
    r[1].button("Reset to recommended", key="tr_reset", on_click=_apply_recommended, icon=":material/restart_alt:",
                help="Put back the settings that learn for this model on this machine.")

    config = TrainConfig(data_root=st.session_state.get(ui.ROOT_KEY), magnification=mag, split_mode=split_mode,
                         imbalance=imbalance, target_ratio=float(ratio) if use_ratio else None, model=model,
                         pretrained=bool(pretrained and spec.has_pretrained),
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
        st.markdown(f"Estimated time: **~{_duration(secs)}** for about {n_train} training and {n_eval} evaluation "
                    "images (2-core CPU figures; a GPU is much faster; the run shows a live ETA)."
                    + ("  \n:orange[Another run is active: this one will queue.]" if busy else ""))
        if st.button("Start", type="primary", icon=":material/play_arrow:", key="tr_start"):
            # hosted: the run cap over the whole server is checked atomically inside start_run
            path = start_run(config, runs_root=runs_root, owner=who.owner_id, shared_root=ui.shared_runs_root())
            # show the run just started (the watcher box below has not been drawn in this run yet)
            st.session_state[ACTIVE_KEY] = st.session_state["tr_watch"] = str(path)
            st.session_state.pop(FROM_LAB_KEY, None)
            st.toast(f"Started {path.name}")
            time.sleep(0.3)
            st.rerun()
    except DalaError as exc:
        ui.show_error(exc)

# ----------------------------------------------------------------------------- the watcher
if not all_runs and not st.session_state.get(ACTIVE_KEY):
    st.info("No runs yet. Configure one above and press **Start**.")
    st.stop()

all_runs = ui.list_visible_runs()
by_path = {str(r.path): r for r in all_runs}
paths = list(by_path)
current = st.session_state.get(ACTIVE_KEY)
if current and current not in paths:
    paths.insert(0, current)
if st.session_state.get("tr_watch") not in paths:
    st.session_state["tr_watch"] = current if current in paths else paths[0]


def _watch_label(p: str) -> str:
    r = by_path.get(p)
    if r is None:
        return Path(p).name
    owner = who.owner_of(r)
    return f"{r.name} · {r.state}" + {"you": " · yours", "another student": " · another student's"}.get(owner, "")


chosen = st.selectbox("Run", paths, key="tr_watch", format_func=_watch_label)
st.session_state[ACTIVE_KEY] = chosen

STATE_ICON = {"queued": ":material/hourglass_top:", "starting": ":material/hourglass_top:",
              "running": ":material/sync:", "paused": ":material/pause:", "stopping": ":material/stop:",
              "stopped": ":material/stop_circle:", "finished": ":material/check_circle:",
              "failed": ":material/error:"}


def _read_view(run_dir: str):
    """The run's view and what in it is damaged ("file: problem"): ``dala.train.read_run`` never
    lets a damaged file hide the rest of the run; its ``damaged`` names them."""
    view = read_run(run_dir)
    damaged = getattr(view, "damaged", None) or {}
    if isinstance(damaged, dict):
        return view, [f"{k}: {v}" for k, v in damaged.items()]
    return view, [str(d) for d in ([damaged] if isinstance(damaged, str) else damaged)]


def _others_ahead(run_dir: str) -> bool:
    """Another run in the same queue root is training (holds the one heavy-run slot)."""
    me = Path(run_dir).resolve()
    return any(r.active and r.state not in ("queued",) and r.path.resolve() != me and r.path.parent == me.parent
               for r in ui.list_visible_runs())


def draw_run(run_dir: str, live: bool = False) -> None:
    try:
        view, damaged = _read_view(run_dir)
    except DalaError as exc:
        ui.show_error(exc)
        return
    if live and not view.active:
        st.rerun(scope="app")  # finished: redraw once without the timer, with the final card
    status, cfg = view.status, view.config
    controls = who.can_control(view.path)
    head = st.columns([4, 1, 1, 1])
    phase = status.get("phase") or view.state
    starting = view.state == "starting" or (view.state == "queued" and (view.queue_position or 1) <= 1
                                            and not _others_ahead(run_dir))
    shown_state = "starting" if starting else view.state
    epoch_txt = f"epoch {status.get('epoch', 0)}/{cfg.get('epochs', '?')}"
    eta = status.get("eta_s")
    eta_txt = (f" · ETA: about {_duration(eta)} left" if view.state == "running" and isinstance(eta, (int, float))
               and eta > 0 else "")
    head[0].markdown(f"{STATE_ICON.get(shown_state, '')} **{shown_state}** · "
                     f"{'starting' if starting else phase} · {epoch_txt}{eta_txt}")
    if controls:
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
    else:
        st.caption(":material/visibility: Another student's run: read-only here (its Pause and Stop are theirs; "
                   "teacher mode unlocks them).")
    for problem in damaged:
        st.warning(f"Part of this run is damaged and not shown: {problem}. The rest of the run is intact.",
                   icon=":material/broken_image:")
    progress = status.get("progress")
    if view.active and isinstance(progress, (int, float)):
        st.progress(min(max(float(progress), 0.0), 1.0))
    if starting:
        st.info("Starting: the training process is loading the data and the model (importing torch, indexing). "
                "Nothing is ahead of this run.", icon=":material/hourglass_top:")
    elif view.state == "queued":
        st.info(f"Queued: position **{view.queue_position or '?'}**. One heavy run trains at a time on this machine; "
                "this one starts when the run ahead of it ends.")
    if view.state == "failed":
        st.error(f"The run failed: {status.get('error') or 'see train.log'}")
        log = RunFolder(run_dir, writer=False).log_path
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
    try:
        draw_tiles(view)
    except (KeyError, IndexError, TypeError, ValueError) as exc:  # valid JSON of the wrong shape
        st.warning(f"Part of this run is damaged and not shown: {Path(run_dir) / 'val_tiles.json'} is damaged "
                   f"({type(exc).__name__}). The rest of the run is intact.", icon=":material/broken_image:")
    if view.report and view.report.get("test"):
        draw_report(view)


def draw_tiles(view) -> None:
    tiles = view.tiles or {}
    if not isinstance(tiles, dict):
        raise TypeError("not an object")
    items, epochs = tiles.get("tiles") or [], tiles.get("epochs") or []
    if not items:
        return
    last = epochs[-1] if epochs else None
    names = ["benign", "malignant"]
    caps = []  # checked for shape before anything is drawn
    for i, t in enumerate(items):
        cap = f"true: {t['label']}"
        if last:
            k = int(last["pred"][i])
            p = float(last["probs"][i][k])
            mark = ":green[right]" if names[k] == t["label"] else ":red[wrong]"
            cap += f"  \npred: {names[k]} {p:.0%} {mark}"
        caps.append((str(t["path"]), cap))
    st.markdown(f"**Validation tiles** - predictions after epoch {last['epoch']}" if last else
                "**Validation tiles** - predictions appear after the first epoch")
    for col, (path, cap) in zip(st.columns(len(caps)), caps):
        try:
            col.image(ui.thumbnail(path, 160), width="stretch")
        except Exception:
            col.caption("(image missing)")
        col.caption(cap)


def draw_report(view) -> None:
    rep = view.report
    test = rep["test"]
    split = view.config.get("split_mode", "?")
    st.markdown(f"#### Test metrics (measured, {split}-level split, best epoch {rep.get('best_epoch')})")
    if rep.get("data_source") == "synthetic":
        st.caption(f"{ui.SYNTHETIC_BADGE} measured on SYNTHETIC data")
    from dala.metrics import flat_metrics

    flat = flat_metrics(test, keys=HEADLINE_METRICS)
    cols = st.columns(4)
    for i, key in enumerate(HEADLINE_METRICS):  # two rows of four: whole names, never "balanced a..."
        val = flat.get(key)
        cols[i % 4].metric(metric_label(key), "n/a" if val is None else f"{val:.3f}", help=METRIC_HELP.get(key))
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
    view0, _ = _read_view(chosen)
except DalaError as exc:
    ui.show_error(exc)
    st.stop()
if view0.active:
    st.fragment(run_every=POLL_S)(draw_run)(chosen, live=True)
else:
    draw_run(chosen)
with st.expander("Run configuration"):
    st.json(view0.config, expanded=False)
