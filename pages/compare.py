"""Compare: finished runs side by side, our measured numbers beside the paper's reported ones."""

from __future__ import annotations

import streamlit as st

from dala import plots
from dala.errors import DalaError
from dala.metrics import HEADLINE_METRICS, METRIC_HELP
from dala.train import list_runs
from pages import _common as ui

ui.require_entrypoint()

st.title("Compare runs")
runs_root = ui.runs_root()
finished = [r for r in list_runs(runs_root) if r.report and r.report.get("test")]
labels = {r.name: plots.run_label(r.config, r.name) for r in finished}
by_name = {r.name: r for r in finished}
picked = st.multiselect("Runs", list(labels), default=list(labels)[:6], format_func=labels.get, key="cmp_runs") if finished else []
runs = [{"name": n, "config": by_name[n].config, "report": by_name[n].report, "epochs": by_name[n].epochs}
        for n in picked]


@st.cache_data(ttl=600, show_spinner="Fetching the published report (local cache first)...")
def _hub_record(repo: str, revision: str, subfolder: str | None) -> dict:
    from dala.hub import hub_run_record

    return hub_run_record(repo, revision=revision, subfolder=subfolder)


with st.expander("Add a published checkpoint from the Hugging Face Hub"):
    from dala.hub import default_repo_id

    c = st.columns([3, 1, 1])
    hub_repo = c[0].text_input("Hub repo id", value=default_repo_id() or "", key="cmp_hub",
                               placeholder="user/dala-resnet50-breakhis")
    hub_sub = c[1].text_input("Subfolder", key="cmp_hub_sub", placeholder="40X")
    hub_rev = c[2].text_input("Revision", value="main", key="cmp_hub_rev")
    if hub_repo.strip():
        try:
            runs.append(_hub_record(hub_repo.strip(), hub_rev.strip() or "main", hub_sub.strip() or None))
        except DalaError as exc:
            ui.show_error(exc, what="Cannot add that Hub checkpoint")


def leaderboard() -> None:
    """The shared class leaderboard (one JSON file under DALA_HOME, written atomically under a lock)."""
    from dala.hosting import read_leaderboard, submit_to_leaderboard

    st.subheader("Class leaderboard")
    if finished:
        with st.form("lb_form"):
            c = st.columns([2, 3, 1])
            nick = c[0].text_input("Nickname", max_chars=32, key="lb_nick")
            run_name = c[1].selectbox("Run", list(by_name), format_func=labels.get, key="lb_run")
            if c[2].form_submit_button("Submit"):
                try:
                    submit_to_leaderboard(by_name[run_name].path, nickname=nick)
                    st.toast("Submitted to the class leaderboard")
                except DalaError as exc:
                    ui.show_error(exc)
    board = read_leaderboard()
    if board:
        import pandas as pd

        st.dataframe(pd.DataFrame([{"nickname": e["nickname"], "model": e["model"], "split": e["split_mode"],
                                    "data": e["data_label"], **e["metrics"]} for e in board]),
                     hide_index=True, key="lb_table")
        st.caption("Test metrics as measured by each run, best GMean first; synthetic-data rows teach the method only.")
    else:
        st.caption("No entries yet: submit a finished run.")


if not runs:
    st.info(f"No finished runs in `{runs_root}` yet. Train at least one on the Train page; two runs that differ "
            "only by split mode (patient vs image) show the leakage lesson here.")
    st.page_link("pages/train.py", label="Go to Train", icon=":material/model_training:")
    leaderboard()
    st.stop()

table = plots.compare_table(runs)
if (table.get("data") == "synthetic").any():
    st.caption(f"{ui.SYNTHETIC_BADGE} Runs marked *synthetic* were measured on generated data: "
               "they teach the method, they are not comparable with published BreakHis numbers.")

# ----------------------------------------------------------------------------- leakage lesson
for pat, img, acc in plots.leakage_pairs(runs):
    pa, ia = acc.get("patient"), acc.get("image")
    gap = f" ({ia:.1%} vs {pa:.1%}: {ia - pa:+.1%})" if pa is not None and ia is not None else ""
    st.warning(f"**Leakage lesson**: `{img}` and `{pat}` differ only by the split. The image-level split puts the "
               f"same patients in training and test{gap}; only the patient-level number says how the model does "
               "on a new patient.", icon=":material/warning:")

# ----------------------------------------------------------------------------- table
st.subheader("Every metric (test set, measured)")
metrics = [m for m in HEADLINE_METRICS if m in table]
best = plots.best_in_columns(table, metrics)


def _mark(col):
    rows = best.get(col.name, [])
    return ["background-color: #d4edda; font-weight: bold" if i in rows else "" for i in range(len(col))]


styled = table.style.apply(_mark, subset=metrics).format({m: "{:.3f}" for m in metrics}, na_rep="n/a")
st.dataframe(styled, hide_index=True, key="cmp_table",
             column_config={m: st.column_config.NumberColumn(m, help=METRIC_HELP.get(m)) for m in metrics})
st.caption("Green: the best value in each column. Hover a column header for what the metric means.")
st.download_button("Export CSV", table.to_csv(index=False).encode(), file_name="dala_compare.csv", mime="text/csv",
                   icon=":material/download:", key="cmp_csv")

# ----------------------------------------------------------------------------- charts
left, right = st.columns(2)
left.plotly_chart(plots.metrics_bar_figure(table, metrics), key="cmp_bar")
right.plotly_chart(plots.radar_figure(table, metrics), key="cmp_radar")

st.subheader("Reported vs measured")
st.plotly_chart(plots.reported_vs_measured_figure(runs), key="cmp_reported")
st.caption(f"Black diamonds: DALAResNet50 accuracies {plots.REPORTED_NOTE}; peers with patient-level splits report "
           "85-91%. Dots: our measured test accuracy, labelled with the split it was measured on.")

st.subheader("Convergence")
metric = st.selectbox("Validation curve", ["val_loss", "val_accuracy", "val_gmean", "val_balanced_accuracy", "train_loss"],
                      key="cmp_curve")
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
                                      title=r["name"][-40:]), key=f"cmp_cm_{i}")

leaderboard()
