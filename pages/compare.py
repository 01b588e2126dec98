"""Compare: finished runs side by side, our measured numbers beside the paper's reported ones.

Tabs: the runs (table, charts, the leakage lesson with its interval), the class leaderboard
(only patient-level results ranked; ``dala.hosting.leaderboard_groups``), and the study view
(``pages/_study_view.py``) where it is installed.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from dala import plots
from dala.errors import DalaError
from dala.metrics import HEADLINE_METRICS, METRIC_HELP, metric_label
from dala.train.folder import RunFolder
from pages import _common as ui

ui.require_entrypoint()

DEFAULT_SHOWN = 6  # runs preselected in the box: every leakage pair's two runs first, then the newest

st.title("Compare runs")
runs_root = ui.runs_root()
who = ui.identity()
finished_views = [r for r in ui.list_visible_runs() if r.report and r.report.get("test")]


def _records(views) -> list[dict]:
    """The runs as the comparison functions take them; ``name`` unique (a clash across visitors'
    folders in teacher mode gets its folder's name in front)."""
    counts: dict[str, int] = {}
    for v in views:
        counts[v.name] = counts.get(v.name, 0) + 1
    out = []
    for v in views:
        name = v.name if counts[v.name] == 1 else f"{v.path.parent.name}/{v.name}"
        out.append({"name": name, "config": v.config, "report": v.report, "epochs": v.epochs,
                    "created": (v.status or {}).get("created"), "path": str(v.path)})
    return out


all_runs = _records(finished_views)
labels = plots.run_labels(all_runs)
for r in all_runs:
    r["label"] = labels[r["name"]]
by_name = {r["name"]: r for r in all_runs}
pairs = plots.leakage_pairs(all_runs)  # among ALL finished runs, not only the ones picked below
default: list[str] = []
for pat, img, _ in pairs:
    default += [n for n in (pat, img) if n not in default]
default += [n for n in by_name if n not in default]
default = default[:max(DEFAULT_SHOWN, 2 if pairs else 0)]


@st.cache_data(ttl=600, show_spinner="Fetching the published report (local cache first)...")
def _hub_record(repo: str, revision: str, subfolder: str | None) -> dict:
    from dala.hub import hub_run_record

    return hub_run_record(repo, revision=revision, subfolder=subfolder)


@st.cache_data(max_entries=64, show_spinner="Bootstrapping over test patients...")
def _leakage_difference(patient_path: str, image_path: str, stamp: tuple) -> dict | None:
    """Image-level minus patient-level accuracy with its interval (``stamp``: the two reports'
    modification times, so a rerun of either recomputes)."""
    from dala.compare import leakage_difference

    pat, img = by_name_path[patient_path], by_name_path[image_path]
    return leakage_difference(pat, img, metric="accuracy", n_boot=1000, seed=0)


def _stamp(*paths: str) -> tuple:
    out = []
    for p in paths:
        try:
            out.append(RunFolder(p, writer=False).report_path.stat().st_mtime)
        except OSError:
            out.append(0.0)
    return tuple(out)


by_name_path = {r["path"]: r for r in all_runs}


def leakage_lesson() -> None:
    from dala.compare import describe_difference

    for pat, img, acc in pairs:
        p, i = by_name[pat], by_name[img]
        try:
            diff = _leakage_difference(p["path"], i["path"], _stamp(p["path"], i["path"]))
        except DalaError as exc:
            diff = None
            ui.show_error(exc, what="The interval could not be computed")
        head = (f"**Leakage lesson**: *{i['label']}* and *{p['label']}* differ only by the split. The image-level "
                "split puts the same patients in training and test; only the patient-level number says how the "
                "model does on a new patient.")
        if diff is None:
            pa, ia = acc.get("patient"), acc.get("image")
            vals = f" Test accuracy {ia:.1%} (image-level) and {pa:.1%} (patient-level)" if None not in (pa, ia) else ""
            st.warning(head + vals + " - these runs kept no per-image test predictions, so no interval can be put "
                       "on the gap: read it as unknown, not as the lesson.", icon=":material/warning:")
            continue
        text = describe_difference(diff)
        if diff["significant"] and diff["difference"] > 0:
            verdict = "Here the leak shows: the image-level split scored higher than the patients it never saw."
        elif diff["significant"]:
            verdict = ("Here the image-level run scored *lower*, beyond noise: something else differs between "
                       "these runs (training luck, stopping); the leak still makes its number untrustworthy.")
        else:
            verdict = ("These two runs cannot tell the splits apart: the gap is within noise. The leak inflates "
                       "scores when a model can memorise patients; train longer or on more patients to see it.")
        st.warning(f"{head}  \nAccuracy {text}.  \n{verdict}", icon=":material/warning:")


def runs_tab(runs: list[dict]) -> None:
    if pairs:
        leakage_lesson()
    if not runs:
        st.info("Pick at least one run above.")
        return
    table = plots.compare_table(runs)
    if (table.get("data") == "synthetic").any():
        st.caption(f"{ui.SYNTHETIC_BADGE} Runs marked *synthetic* were measured on generated data: "
                   "they teach the method, they are not comparable with published BreakHis numbers.")
    st.subheader("Every metric (test set, measured)")
    metrics = [m for m in HEADLINE_METRICS if m in table]
    best = plots.best_in_columns(table, metrics)

    def _mark(col):
        rows = best.get(col.name, [])
        return ["background-color: #d4edda; font-weight: bold" if i in rows else "" for i in range(len(col))]

    shown = table[["label", *[c for c in table.columns if c != "label"]]]
    styled = shown.style.apply(_mark, subset=metrics).format({m: "{:.3f}" for m in metrics}, na_rep="n/a")
    st.dataframe(styled, hide_index=True, key="cmp_table",
                 column_config={"label": st.column_config.TextColumn("Run", width="large"),
                                "run": st.column_config.TextColumn("Folder"),
                                **{m: st.column_config.NumberColumn(metric_label(m), help=METRIC_HELP.get(m))
                                   for m in metrics}})
    st.caption("Green: the best value in each column. Hover a column header for what the metric means. "
               "A gap between two runs is only a difference when its interval excludes 0 (the leakage box "
               "and the Study tab give intervals).")
    st.download_button("Export CSV", table.to_csv(index=False).encode(), file_name="dala_compare.csv", mime="text/csv",
                       icon=":material/download:", key="cmp_csv")

    left, right = st.columns(2)
    left.plotly_chart(plots.metrics_bar_figure(table, metrics), key="cmp_bar")
    right.plotly_chart(plots.radar_figure(table, metrics), key="cmp_radar")

    st.subheader("Reported vs measured")
    st.plotly_chart(plots.reported_vs_measured_figure(runs), key="cmp_reported")
    st.caption(f"Black diamonds: DALAResNet50 accuracies {plots.REPORTED_NOTE}; peers with patient-level splits "
               "report 85-91%. Dots: our measured test accuracy, labelled with the split it was measured on.")

    st.subheader("Convergence")
    curves = ["val_loss", "val_accuracy", "val_gmean", "val_balanced_accuracy", "train_loss"]
    metric = st.selectbox("Validation curve", curves, key="cmp_curve", format_func=metric_label)
    st.plotly_chart(plots.convergence_figure(runs, metric=metric), key="cmp_conv")

    left, right = st.columns(2)
    left.plotly_chart(plots.roc_figure(runs), key="cmp_roc")
    right.plotly_chart(plots.pr_figure(runs), key="cmp_pr")

    st.subheader("Confusion matrices")
    cols = st.columns(min(len(runs), 4))
    for i, r in enumerate(runs):
        test = r["report"]["test"]
        cols[i % len(cols)].plotly_chart(
            plots.confusion_matrix_figure(test["confusion_matrix"], test.get("class_names") or ["benign", "malignant"],
                                          title=r.get("label") or r["name"]), key=f"cmp_cm_{i}")


def _threshold_table(sm: dict):
    """The test metrics at 0.5 beside those at the locked threshold ("n/a" for an older run: no
    threshold is invented)."""
    import pandas as pd

    def col(values: dict) -> list:
        return [None if v is None else round(v, 3) for v in values.values()]

    thr = sm["threshold"]
    locked = col(sm["at_threshold"]) if sm["at_threshold"] else ["n/a (older run)"] * len(sm["at_half"])
    return pd.DataFrame({"metric": [metric_label(m) for m in sm["at_half"]], "at 0.5": col(sm["at_half"]),
                         (f"at the locked threshold {thr:.2f}" if thr is not None else "at a locked threshold"): locked})


def calibration_tab(runs: list[dict]) -> None:
    """Per run: the reliability diagram and ECE before/after temperature scaling, the metrics at 0.5
    and at the locked threshold, and selective prediction (refer the least certain X %)."""
    import pandas as pd

    from dala.compare import accuracy_when_referring, calibration_summary, referral_curve

    if not runs:
        st.info("Pick at least one run above.")
        return
    st.markdown("How far can a run's probabilities be trusted? All numbers here are **measured on each run's "
                "test split** from its stored per-image predictions. A run calibrated on validation (temperature "
                "scaling, threshold locked before test) shows both sides; an older run is shown as it is.")
    summaries, curves = {}, {}
    for r in runs:
        try:
            summaries[r["label"]] = calibration_summary(r.get("report"), r.get("config"))
            curves[r["label"]] = referral_curve(r.get("report"), r.get("config"), points=101)
        except DalaError as exc:
            ui.show_error(exc, what=f"{r['label']}: calibration")
    missing = [lab for lab, sm in summaries.items() if sm is None]
    for i, (lab, sm) in enumerate(summaries.items()):
        if sm is None:
            continue
        with st.container(border=True):
            st.markdown(f"**{lab}**  \n{sm['label']}")
            left, right = st.columns([3, 2])
            series = {"as the network gives them": sm["bins_before"]}
            if sm["bins_after"]:
                series[f"temperature-scaled (T = {sm['temperature']:.2f})"] = sm["bins_after"]
            left.plotly_chart(plots.reliability_figure(series, title=f"Reliability (test split, measured, "
                                                                      f"{sm['n']} images)"), key=f"cmp_rel_{i}")
            after = f"{sm['ece_after']:.3f}" if sm["ece_after"] is not None else "n/a (uncalibrated, older run)"
            right.metric("ECE before temperature scaling", f"{sm['ece_before']:.3f}")
            right.metric("ECE after temperature scaling", after)
            ch = sm.get("ece_change")
            if ch:
                right.caption(f"ECE after minus before: {ch['difference']:+.3f} (95 % interval {ch['lo']:+.3f} to "
                              f"{ch['hi']:+.3f}, paired bootstrap over {ch['n_patients']} test patients)"
                              + ("" if ch["lo"] > 0 or ch["hi"] < 0 else "; not significant: could be noise"))
            thr = sm["threshold"]
            right.dataframe(_threshold_table(sm), hide_index=True, key=f"cmp_thr_{i}")
            right.caption("Test split, measured. " + (f"Threshold chosen on validation; values "
                                                      f"{sm['threshold_source']}." if thr is not None else
                                                      "This run locked no threshold on validation: only 0.5."))
    if missing:
        st.warning("No per-image test predictions kept (older run), so nothing can be measured here: "
                   + "; ".join(missing), icon=":material/warning:")
    shown = {lab: c for lab, c in curves.items() if c is not None}
    if not shown:
        return
    st.subheader("Selective prediction (test split, measured)")
    pct = st.slider("Refer the least certain X % to a pathologist", 0, 95, 10, step=5, key="cmp_refer",
                    help="The images with the lowest top-class probability are referred; accuracy is measured on "
                         "the images the model keeps.")
    st.plotly_chart(plots.selective_figure(shown, referred=pct / 100), key="cmp_selective")
    kept = []
    for lab, curve in shown.items():
        at0, atx = accuracy_when_referring(curve, 0.0), accuracy_when_referring(curve, pct / 100)
        kept.append({"run": lab, "referred": f"{atx['referred']:.0%}", "images kept": atx["n_kept"],
                     "accuracy kept": round(atx["accuracy"], 3), "accuracy, nothing referred": round(at0["accuracy"], 3)})
    st.dataframe(pd.DataFrame(kept), hide_index=True, key="cmp_refer_table")
    st.caption(f"Referring {pct} % of the test images: accuracy on the rest, measured on each run's test split "
               "(the kept ones decided at the locked threshold on calibrated probabilities where the run has them, "
               "else at 0.5). Few test images make these steps coarse.")


def leaderboard_tab() -> None:
    """The shared class leaderboard (one JSON file under DALA_HOME, written atomically under a
    lock): only patient-level results ranked, real and SYNTHETIC apart, leaking runs listed apart."""
    import pandas as pd

    from dala.hosting import leaderboard_groups, load_leaderboard, submit_to_leaderboard

    st.subheader("Class leaderboard")
    mine = [r for r in all_runs if who.can_control(r["path"])]
    if mine:
        with st.form("lb_form"):
            c = st.columns([2, 3, 1])
            nick = c[0].text_input("Nickname", max_chars=32, key="lb_nick")
            run_name = c[1].selectbox("Run", [r["name"] for r in mine], format_func=labels.get, key="lb_run")
            if c[2].form_submit_button("Submit"):
                try:
                    submit_to_leaderboard(by_name[run_name]["path"], nickname=nick)
                    st.toast("Submitted to the class leaderboard")
                except DalaError as exc:
                    ui.show_error(exc)
    board = load_leaderboard()
    if board.problem:
        st.warning(board.problem, icon=":material/broken_image:")
    if not board.entries:
        st.caption("No entries yet: submit a finished run.")
        return
    for n, group in enumerate(leaderboard_groups(list(board.entries))):
        st.markdown(f"**{group.title}**" + ("" if group.ranked else " :orange-badge[not ranked]"))
        if group.note:
            st.caption(group.note)
        rows = [{**({"rank": e.get("rank")} if group.ranked else {}), "nickname": e.get("nickname"),
                 "model": e.get("model"), "split": e.get("split_mode"), "data": e.get("data_label"),
                 **{metric_label(k): v for k, v in (e.get("metrics") or {}).items()}} for e in group.entries]
        st.dataframe(pd.DataFrame(rows), hide_index=True, key=f"lb_table_{n}")
    st.caption("Test metrics as measured by each run, best GMean first within each ranking.")


def study_tab() -> None:
    """H8's study view (``pages/_study_view.py``), when installed."""
    import importlib

    try:
        view = importlib.import_module("pages._study_view")
        view.render_study_view(own_roots=ui.visible_run_roots(), key="cmp_study")
    except DalaError as exc:
        ui.show_error(exc, what="Study")
    except Exception as exc:  # the study view must not take the page down
        ui.show_error(exc, what="Study")


picked = st.multiselect("Runs", list(by_name), default=default, format_func=labels.get, key="cmp_runs",
                        help="Every finished run you can see; the leakage pairs are found among all of them.") \
    if all_runs else []
runs = [by_name[n] for n in picked]

with st.expander("Add a published checkpoint from the Hugging Face Hub"):
    from dala.hub import default_repo_id

    c = st.columns([3, 1, 1])
    hub_repo = c[0].text_input("Hub repo id", value=default_repo_id() or "", key="cmp_hub",
                               placeholder="user/dala-resnet50-breakhis")
    hub_sub = c[1].text_input("Subfolder", key="cmp_hub_sub", placeholder="40X")
    hub_rev = c[2].text_input("Revision", value="main", key="cmp_hub_rev")
    if hub_repo.strip():
        try:
            rec = _hub_record(hub_repo.strip(), hub_rev.strip() or "main", hub_sub.strip() or None)
            runs.append({**rec, "label": rec.get("label") or rec["name"]})
        except DalaError as exc:
            ui.show_error(exc, what="Cannot add that Hub checkpoint")

has_study = (Path(__file__).resolve().parent / "_study_view.py").is_file()
tabs = st.tabs(["Runs", "Calibration & referral", "Class leaderboard", *(["Study"] if has_study else [])])
with tabs[0]:
    if not all_runs and not runs:
        st.info(f"No finished runs in `{runs_root}` yet. Train at least one on the Train page; two runs that differ "
                "only by split mode (patient vs image) show the leakage lesson here.")
        st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
    else:
        runs_tab(runs)
with tabs[1]:
    calibration_tab([r for r in runs if r.get("report")])
with tabs[2]:
    leaderboard_tab()
if has_study:
    with tabs[3]:
        study_tab()
