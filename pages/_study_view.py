"""The Compare page's Study view: a study folder's report (tables, claims, plots) and one run's
bootstrap CI. Thin: everything it shows is computed by :mod:`dala.study` and :mod:`dala.stats`."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

SINGLE_RUN_METRICS = ("accuracy", "patient_accuracy", "balanced_accuracy", "gmean", "roc_auc")


def render_study_view(*, own_roots: "list | tuple" = (), key: str = "study") -> None:
    """Draw the Study view. ``own_roots``: the visitor's own folders, allowed in hosted mode (every
    typed path passes :func:`dala.hosting.check_user_path`)."""
    import pandas as pd

    from dala.errors import DalaError
    from dala.hosting import check_user_path
    from dala.study.plan import load_manifest
    from dala.study.render import LABELS, convergence_figure, metric_figure

    st.caption("A study: every model on every magnification on the same patient-wise trials "
               "(`python -m dala study plan | run | report`). Differences come with their intervals.")
    typed = st.text_input("Study folder", key=f"{key}_dir", placeholder="/path/to/study (holds manifest.json)")
    if not typed.strip():
        st.info("Enter a study folder made by `python -m dala study plan quick --out DIR` and run with "
                "`python -m dala study run DIR`.")
        return
    try:
        folder = check_user_path(typed, purpose="checkpoint", own_roots=own_roots)
        manifest = load_manifest(folder)
        from dala.study.run import study_status

        status = study_status(folder)
    except DalaError as exc:
        st.error(str(exc))
        return
    cols = st.columns(4)
    for col, name in zip(cols, ("done", "running", "failed", "left")):
        col.metric(name, f"{status[name]} / {status['total']}")
    report_path = Path(folder) / "report.json"
    if st.button("Build / refresh the report", key=f"{key}_build", disabled=status["done"] == 0):
        try:
            from dala.study.report import build_report

            with st.spinner("bootstrapping test patients..."):
                build_report(folder, n_boot=500)
        except DalaError as exc:
            st.error(str(exc))
    if not report_path.is_file():
        st.info("No report yet: build it here or with `python -m dala study report DIR`.")
        return
    try:
        from dala.io import read_json

        report = read_json(report_path, expect=dict)
    except (DalaError, ValueError) as exc:
        st.error(f"report.json cannot be read ({exc}); build it again.")
        return
    if report.get("synthetic"):
        st.warning("SYNTHETIC data: these numbers show the pipeline, not BreakHis performance.")
    st.caption(f"{report['n_finished']} of {report['n_planned']} runs, preset {manifest.get('preset')}, "
               f"generated {report['generated']}. " + " ".join(report.get("notes", [])[1:2]))

    st.subheader("The paper's claims")
    st.dataframe(pd.DataFrame(report["claims"])[["claim", "verdict", "evidence"]], hide_index=True,
                 use_container_width=True)

    metric = st.selectbox("Metric", report["metrics"], format_func=lambda m: LABELS.get(m, m), key=f"{key}_metric")
    st.plotly_chart(metric_figure(report, metric), use_container_width=True, key=f"{key}_fig_{metric}")
    rows = []
    for s in report["summary"]:
        b = s["metrics"][metric]
        rows.append({"model": s["model"], "magnification": f"{s['magnification']}X", "trials": s["n_trials"],
                     "mean (measured)": b["mean"], "std": b["std"], "95% CI low": b["lo"], "95% CI high": b["hi"],
                     "accuracy @0.5": s["accuracy_at_0_5"]["mean"], "parameters": s["num_params"]})
    st.dataframe(pd.DataFrame(rows), hide_index=True, use_container_width=True)
    comp = [c for c in report["comparisons"] if c["metric"] == metric]
    if comp:
        st.subheader(f"{report['baseline']} minus each model (paired, same test patients)")
        st.dataframe(pd.DataFrame([{"magnification": f"{c['magnification']}X", "model": c["model"],
                                    "difference": c["difference"], "95% CI low": c["lo"], "95% CI high": c["hi"],
                                    "p (Holm)": c["p_holm"], "Wilcoxon p": c["wilcoxon_p"],
                                    "significant": c["significant"]} for c in comp]),
                     hide_index=True, use_container_width=True)
    acc = [r for r in report.get("reported", []) if r["measured"] is not None]
    if acc:
        st.subheader("Reported vs measured accuracy")
        st.dataframe(pd.DataFrame([{"magnification": f"{r['magnification']}X",
                                    "reported (paper)": r["reported_accuracy"],
                                    "measured mean": r["measured"]["mean"], "95% CI low": r["measured"]["lo"],
                                    "95% CI high": r["measured"]["hi"]} for r in acc]),
                     hide_index=True, use_container_width=True)
    st.plotly_chart(convergence_figure(report), use_container_width=True, key=f"{key}_conv")

    st.subheader("One run, with its bootstrap CI")
    ids = [r["id"] for r in report["runs"]]
    run_id = st.selectbox("Run", ids, key=f"{key}_run")
    run_metric = st.selectbox("Run metric", SINGLE_RUN_METRICS, format_func=lambda m: LABELS.get(m, m),
                              key=f"{key}_run_metric")
    if run_id:
        try:
            from dala.study.report import run_ci

            ci = run_ci(folder, run_id, run_metric, n_boot=1000)
        except DalaError as exc:
            st.error(str(exc))
            return
        st.metric(f"{LABELS.get(run_metric, run_metric)} (measured, test, threshold {ci['threshold']:.3f} locked "
                  "on validation)", f"{ci['value']:.3f}",
                  help="95 % interval by bootstrapping the run's test patients")
        st.write(f"95 % CI [{ci['lo']:.3f}, {ci['hi']:.3f}] over {ci['n_patients']} test patients "
                 f"({ci['n_images']} images, {ci['n_boot']} patient resamples).")
