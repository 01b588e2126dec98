"""Imbalance Lab: class imbalance explored live - a head fitted in milliseconds on a shared,
memory-mapped feature bank, for every slider move of every student. The work is in ``dala.lab``."""

from __future__ import annotations

import streamlit as st

from dala.errors import DalaError
from dala.lab.common import STRATEGIES, STRATEGY_HELP, TRAIN_IMBALANCE, ratio_label
from dala.lab.encoders import default_encoder_text
from dala.metrics import METRIC_HELP, metric_label
from pages import _common as ui

ui.require_entrypoint()

RATIO_OPTIONS = (0.05, 0.1, 0.2, 0.33, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0)
SHOWN = ("accuracy", "balanced_accuracy", "gmean", "iba", "f1_macro", "sensitivity", "specificity", "precision",
         "patient_accuracy")
RANDOM_STEM = "random_stem:dala_resnet50"
PRETRAINED_CANDIDATES = ("dala_resnet50", "resnet50", "seresnet50", "densenet121")

st.title("Imbalance Lab")
index = ui.get_index()
ui.synthetic_warning(index)
root = st.session_state.get(ui.ROOT_KEY)
stamp = ui.dataset_stamp(root)


@st.cache_data(show_spinner=False, max_entries=16)
def _fingerprint(root: str, stamp: float) -> str:
    from dala.lab.bank import dataset_fingerprint

    return dataset_fingerprint(ui.load_index_for(root))


@st.cache_data(show_spinner=False, ttl=60)
def _encoder_options(runs_root: str, runs_stamp: int) -> dict[str, str]:
    """encoder text -> label, in the order the lab offers them: finished runs' checkpoints, cached
    pretrained registry models, the prepared random stem."""
    from dala.models.availability import pretrained_ready
    from dala.train import list_runs

    out = {}
    for run in list_runs(runs_root):
        if run.state == "finished" and run.has_checkpoint:
            out[f"checkpoint:{run.path}"] = f"run {run.name} ({run.config.get('model', '?')}, trained)"
    for name in PRETRAINED_CANDIDATES:
        try:
            if pretrained_ready(name):
                out[f"pretrained:{name}"] = f"{name}, pretrained weights (cached)"
        except Exception:  # a weight cache we cannot read is simply not offered
            continue
    out[RANDOM_STEM] = "dala_resnet50 prepared random stem (random weights, offline)"
    chosen = default_encoder_text()  # DALA_LAB_ENCODER: the class's encoder, offered first
    if chosen not in out:
        out = {chosen: f"{chosen} (this server's default)", **out}
    return out


@st.cache_resource(show_spinner=False, max_entries=8)
def _lab(root: str, stamp: float, encoder: str, fingerprint: str):
    """The lab over the memory-mapped bank: one per dataset and encoder, shared by every session
    (fits are cached inside, so a student repeating another's setting costs metrics only)."""
    from dala.lab.api import open_lab

    return open_lab(root, index=ui.load_index_for(root), encoder=encoder, progress=False)


@st.cache_resource(show_spinner=False, max_entries=8)
def _view_cache(root: str, stamp: float, encoder: str, fingerprint: str):
    """The figures and baselines table of every answer of this Lab, shared by every session."""
    from dala.lab.plots import ViewCache

    return ViewCache(SHOWN)


@st.cache_resource(show_spinner=False, max_entries=8, on_release=lambda warmer: warmer and warmer.stop())
def _warmer(root: str, stamp: float, encoder: str, fingerprint: str):
    """The answers a class asks first (every strategy at the page's ratios, nearest 1:1 first, at
    the default split, seed, magnification and head), computed once in the background into the
    shared Lab's cache (dala.lab.warm; DALA_LAB_WARM=0: off)."""
    from dala.lab.common import STRATEGIES as strategies
    from dala.lab.warm import Warmer, nearest_first, warm_enabled

    if not warm_enabled():
        return None
    return Warmer(_lab(root, stamp, encoder, fingerprint), nearest_first(strategies, RATIO_OPTIONS, 1.0),
                  then=_view_cache(root, stamp, encoder, fingerprint).views,  # the figures too
                  threshold=None, test_prevalence=None, split="patient", seed=0, magnification=None,
                  head="linear").start()


def _bank_problem(encoder: str, fingerprint: str) -> str | None:
    """None when the bank is on disk and whole (cheap check on every rerun), else what is wrong."""
    from dala.lab.bank import bank_folder, bank_problem
    from dala.lab.encoders import resolve_encoder

    return bank_problem(bank_folder(fingerprint, resolve_encoder(encoder)))


def _build_bank(encoder: str) -> str | None:
    """Build (or rebuild) the bank in this session with a progress bar; other sessions wait on its
    lock, then reuse it. Returns why an old one was rebuilt."""
    from dala.lab.bank import get_bank

    bar = st.progress(0.0, text="Building the feature bank (once for this dataset and encoder)...")
    bank = get_bank(index, encoder, progress=lambda d, n: bar.progress(d / max(n, 1), text=f"Feature bank: {d}/{n} images"))
    bar.empty()
    _warmer.clear()  # stops the old Lab's warmer
    _view_cache.clear()
    _lab.clear()  # a Lab over the old bank must not answer any more
    return bank.rebuilt


try:
    fingerprint = _fingerprint(root, stamp)
    runs_root = ui.runs_root()
    options = _encoder_options(str(runs_root), runs_root.stat().st_mtime_ns if runs_root.is_dir() else 0)
except DalaError as exc:
    ui.show_error(exc)
    st.stop()
texts = list(options)
default = next((i for i, t in enumerate(texts) if t == default_encoder_text()), 0)
for i, t in enumerate(texts):  # a bank already on disk answers at once: start there
    try:
        if _bank_problem(t, fingerprint) is None:
            default = i
            break
    except DalaError:
        continue
encoder = st.selectbox("Encoder (the frozen network whose features every answer comes from)", texts, index=default,
                       format_func=options.get, key="lab_encoder",
                       help="Offered in this order: finished runs' checkpoints (their layer before the head), "
                            "registry models with cached pretrained weights, the prepared random stem of quick mode.")
rebuilt = None
try:
    if _bank_problem(encoder, fingerprint) is not None:
        rebuilt = _build_bank(encoder)
    lab = _lab(root, stamp, encoder, fingerprint)
    _warm = _warmer(root, stamp, encoder, fingerprint)
except DalaError as exc:
    ui.show_error(exc, what="This encoder cannot be used")
    st.info("Pick another encoder above (the prepared random stem always works offline).")
    st.stop()
if rebuilt or lab.bank.rebuilt:
    st.warning(f"The feature bank was damaged and has been rebuilt: {rebuilt or lab.bank.rebuilt}")

# ------------------------------------------------------------------------- the question
c1, c2 = st.columns(2)
strategy = c1.selectbox("Strategy", STRATEGIES, key="lab_strategy",
                        format_func=lambda s: f"{s} - {STRATEGY_HELP[s]}")
ratio = c2.select_slider("Training set benign:malignant (by subsampling training patients' images)",
                         options=RATIO_OPTIONS, value=1.0, format_func=ratio_label, key="lab_ratio")
c3, c4 = st.columns(2)
manual_t = c3.toggle("Move the decision threshold by hand", key="lab_manual_t",
                     help="Off: 0.5, or the validation-chosen cut for the threshold strategy.")
threshold = c3.slider("Decision threshold on P(malignant)", 0.0, 1.0, 0.5, 0.01, key="lab_threshold",
                      disabled=not manual_t)
shift = c4.toggle("Change the test prevalence", key="lab_shift",
                  help="Resample the test patients' images (whole copies) to another share of malignant images.")
prevalence = c4.slider("Share of malignant test images", 0.05, 0.95, 0.5, 0.05, key="lab_prev", disabled=not shift)
with st.expander("More: head, split seed, magnification"):
    e1, e2, e3 = st.columns(3)
    head = e1.radio("Head", ("linear", "mlp"), horizontal=True, key="lab_head",
                    help="linear: logistic regression; mlp: one hidden layer of 64")
    seed = int(e2.number_input("Split seed", 0, 99, 0, key="lab_seed"))
    mag = e3.selectbox("Magnification", (None, 40, 100, 200, 400), key="lab_mag",
                       format_func=lambda m: "all" if m is None else f"{m}X")
question = {"split": "patient", "seed": seed, "magnification": mag, "head": head}

try:
    res = lab.score(strategy, ratio, threshold=threshold if manual_t else None,
                    test_prevalence=prevalence if shift else None, **question)
except DalaError as exc:
    ui.show_error(exc, what="This setting cannot be answered")
    st.stop()

p = res.provenance
cached = (", answer cached" if res.timing_ms.get("answer_cached") else
          ", fit cached" if res.timing_ms.get("fit_cached") else "")
st.caption(f"**Measured** on the {p['dataset']} - encoder: {p['encoder']} - {p['split']} - {head} head "
           f"({res.timing_ms['total']:.0f} ms{cached}).")
tr, av, fi, te = res.sizes["train"], res.sizes["train_available"], res.sizes["fitted"], res.sizes["test"]
sizes = (f"Training: **{tr['benign']} benign / {tr['malignant']} malignant** images kept "
         f"(of {av['benign']} / {av['malignant']} from {av['benign_patients']} / {av['malignant_patients']} patients)")
if (fi["benign"], fi["malignant"]) != (tr["benign"], tr["malignant"]):
    sizes += f"; fitted on {fi['benign']} / {fi['malignant']} after {strategy}"
sizes += (f". Test: **{te['benign']} benign / {te['malignant']} malignant** images from {te['patients']} patients "
          f"(prevalence {te['prevalence']:.2f}")
if shift:
    sizes += f"; each malignant image x{te['copies_malignant']}, each benign x{te['copies_benign']}"
sizes += f"). Threshold **{res.threshold:.2f}**"
if strategy == "threshold":
    sizes += f" (chosen on validation: {res.strategy_threshold:.2f})"
st.markdown(sizes + ".")

PER_ROW = 5  # nine metrics in one row cut their labels ("Balanced...") on a laptop screen
for first in range(0, len(SHOWN), PER_ROW):
    for col, key in zip(st.columns(PER_ROW), SHOWN[first:first + PER_ROW]):
        v = res.row.get(key)
        col.metric(metric_label(key), "-" if v is None else f"{v:.3f}", help=METRIC_HELP.get(key))

import pandas as pd  # noqa: E402

views = _view_cache(root, stamp, encoder, fingerprint).views(res)  # built once per question, for everyone
g1, g2 = st.columns([2, 3])
g1.plotly_chart(views["cm"], key="lab_cm")
g2.plotly_chart(views["curves"], key="lab_curves")

tabs = st.tabs(["Baselines", "Sweep", "Leakage", "Prevalence", "Send to Train"])

with tabs[0]:
    st.dataframe(views["table"], key="lab_baselines")
    st.plotly_chart(views["bars"], key="lab_bars")
    st.caption("Always malignant scores the share of malignant images in accuracy, and 0 in GMean and specificity: "
               "a number that does not beat these two says nothing.")


@st.cache_data(show_spinner=False, max_entries=64)
def _sweep(root: str, stamp: float, encoder: str, fingerprint: str, split: str, seed: int, mag, head: str):
    from dala.lab.sweeps import sweep

    return sweep(_lab(root, stamp, encoder, fingerprint), split=split, seed=seed, magnification=mag, head=head)


with tabs[1]:
    st.caption("Every strategy x 9 ratios, each at its own threshold: under plain cross-entropy accuracy stays high "
               "while GMean collapses as benign becomes rare.")
    if st.button("Run the sweep (8 strategies x 9 ratios)", key="lab_sweep_go") or st.session_state.get("lab_swept"):
        st.session_state["lab_swept"] = True
        with st.spinner("Sweeping..."):
            df = _sweep(root, stamp, encoder, fingerprint, "patient", seed, mag, head)
        from dala.lab import plots

        st.plotly_chart(plots.sweep_figure(df, metrics=("accuracy", "gmean", "balanced_accuracy")), key="lab_sweep_fig")
        st.dataframe(df.drop(columns=["error"]) if df["error"].isna().all() else df, hide_index=True, key="lab_sweep_df")
        st.caption(f"{p['dataset']} - {p['encoder']} - {lab.split_label('patient', seed, mag)}.")

with tabs[2]:
    if st.toggle("Show the image-level split beside the patient-level one", key="lab_leak"):
        try:
            leak = lab.score(strategy, ratio, threshold=threshold if manual_t else None, curves=False,
                             **{**question, "split": "image"})
            both = {"patient-level split (honest)": res.row, "image-level split (patients leak)": leak.row}
            st.dataframe(pd.DataFrame({k: {metric_label(m): v.get(m) for m in SHOWN} for k, v in both.items()}).T,
                         key="lab_leak_df")
            st.caption("Same encoder, head, strategy and ratio. The image-level test set shares patients with "
                       "training, so each patient's stain and texture give answers away. " + leak.provenance["split"])
        except DalaError as exc:
            ui.show_error(exc)
    st.caption("Patient-level accuracy (BreakHis): per patient the share of their images classified right, averaged "
               f"over patients: **{res.row['patient_accuracy'] or 0:.3f}** here vs image-level accuracy "
               f"**{res.row['accuracy']:.3f}**.")

with tabs[3]:
    st.caption("Accuracy and precision depend on how common malignant images are where the model is used; "
               "sensitivity, specificity and balanced accuracy do not (the test images are copied whole).")
    if st.toggle("Draw the metrics against the test prevalence", key="lab_prev_curve"):
        from dala.lab import plots
        from dala.lab.scoring import prevalence_table

        tab = prevalence_table(lab, strategy, ratio, threshold=threshold if manual_t else None, **question)
        st.plotly_chart(plots.prevalence_figure(tab), key="lab_prev_fig")
        st.dataframe(tab, hide_index=True, key="lab_prev_df")

with tabs[4]:
    from dala.lab.train_link import SESSION_KEY, compare_with_run, matching_runs, train_settings

    default_data = str(st.session_state.get("data_source", "")).startswith("Synthetic default")
    settings, notes = train_settings(res.setting, lab.bank.encoder, data_root=None if default_data else root)
    st.json(settings, expanded=False)
    for note in notes:  # statements, not a conditional expression: Streamlit's magic would st.write its value
        if strategy not in TRAIN_IMBALANCE and note.startswith("Train has no"):
            st.warning(note)
        else:
            st.caption(note)
    if st.button("Send to Train", key="lab_send", type="primary"):
        st.session_state[SESSION_KEY] = settings
        st.switch_page("pages/train.py")
    from dala.train import list_runs

    runs = matching_runs(list_runs(ui.runs_root()), {**settings, "imbalance": settings.get("imbalance", "none")})
    if runs:
        cmp = compare_with_run(lab, res, runs[0])
        fmt = lambda v, ci: "-" if v is None else (f"{v:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and ci[0] is not None else ""))  # noqa: E731
        lab_ci, run_ci = cmp["lab"]["ci"], (cmp["run_test"]["ci"] or {})
        st.dataframe(pd.DataFrame([
            {"answer": "the lab (frozen encoder + head)", "accuracy": fmt(cmp["lab"]["accuracy"], lab_ci["accuracy"]),
             "GMean": fmt(cmp["lab"]["gmean"], lab_ci["gmean"]), "test images": cmp["lab"]["test_images"]},
            {"answer": f"run {cmp['run']} (trained)", "accuracy": fmt(cmp["run_test"]["accuracy"], run_ci.get("accuracy")),
             "GMean": fmt(cmp["run_test"]["gmean"], run_ci.get("gmean")), "test images": cmp["run_test"]["test_images"]},
        ]), hide_index=True, key="lab_vs_run")
        st.caption("95 % intervals by bootstrapping test patients. "
                   + ("Both on the same test images." if cmp["same_test_images"] else
                      "The run's test images differ from the lab's split: compare with care."))
    else:
        st.caption("No finished run with these settings yet: send them to Train, and this tab compares the two.")


@st.cache_resource(show_spinner=False, max_entries=16)
def _freeze_long_lived_objects(encoder: str, fingerprint: str, warmed: bool) -> int:
    """Streamlit runs a full ``gc.collect(2)`` after every script run (``runner.postScriptGC``);
    with torch, scikit-learn, plotly and pandas loaded that walks ~540,000 objects: ~190 ms of
    GIL per slider move (measured), longer than the answer itself, and 30 students queue behind
    it. Once per process and lab (after the bank, the Lab and the figures' modules are loaded),
    the objects alive now are moved out of the collector's sight (``gc.freeze``): they live as
    long as the server anyway; later garbage is collected as before. Once more when the warmer
    has filled the Lab's cache (``warmed``): those answers live as long."""
    import gc

    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


_freeze_long_lived_objects(encoder, fingerprint, bool(_warm and _warm.finished.is_set()))
