"""The Compare page as a class uses it (AppTest): the leakage pair among all runs, unique readable
labels, the leakage gap with its interval over test patients, the class leaderboard ranking only
patient-level results, the Study tab; and the figure helpers behind it (dala.plots)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("streamlit")

from test_app import app, env, ok, runs_root, texts, write_run  # noqa: E402,F401 - fixtures

REPO_ROOT = Path(__file__).resolve().parents[1]


def _own_runs(monkeypatch, tmp_path) -> Path:
    runs = tmp_path / "runs"
    runs.mkdir()
    monkeypatch.setenv("DALA_RUNS", str(runs))
    return runs


def _leakage_warnings(at) -> list[str]:
    return [w.value for w in at.warning if "Leakage lesson" in w.value]


def test_the_leakage_pair_is_found_among_all_runs_and_preselected(monkeypatch, env, tmp_path, tiny_index):
    runs = _own_runs(monkeypatch, tmp_path)
    write_run(runs, "20260101-000000-tiny_cnn-allX-patient", tiny_index, split="patient", checkpoint=False)
    write_run(runs, "20260101-000100-tiny_cnn-allX-image", tiny_index, split="image", checkpoint=False)
    for i, imb in enumerate(["class_weight", "sampler", "focal", "oversample", "class_weight", "sampler"]):
        write_run(runs, f"20260102-00{i}000-tiny_cnn-40X-patient", tiny_index, checkpoint=False,
                  config={"imbalance": imb, "magnification": 40, "seed": i})
    at = ok(app("compare"))
    picked = at.multiselect(key="cmp_runs").value
    assert "20260101-000000-tiny_cnn-allX-patient" in picked and "20260101-000100-tiny_cnn-allX-image" in picked
    assert len(_leakage_warnings(at)) == 1
    # the lesson stays when the student unpicks the pair: it is about the runs, not the selection
    at.multiselect(key="cmp_runs").set_value(["20260102-000000-tiny_cnn-40X-patient"]).run()
    ok(at)
    assert len(_leakage_warnings(at)) == 1


def test_labels_are_unique_and_readable(monkeypatch, env, tmp_path, tiny_index):
    runs = _own_runs(monkeypatch, tmp_path)
    names = [f"20260103-00{i}000-tiny_cnn-allX-patient" for i in range(4)]  # four runs of one config
    for n in names:
        write_run(runs, n, tiny_index, checkpoint=False)
    at = ok(app("compare"))
    box = at.multiselect(key="cmp_runs")
    from dala import plots

    recs = [{"name": n, "config": {"model": "tiny_cnn", "split_mode": "patient", "magnification": None}} for n in names]
    labels = plots.run_labels(recs)
    assert len(set(labels.values())) == 4
    for lab in labels.values():
        assert "tiny_cnn" in lab and "patient-level" in lab and "all mags" in lab and "Jan 03" in lab
    # the same config and the same time (no time in the folder name): still told apart
    same = plots.run_labels([{"name": "a", "config": recs[0]["config"], "created": 5.0},
                             {"name": "b", "config": recs[0]["config"], "created": 5.0}])
    assert len(set(same.values())) == 2
    shown = list(box.options)  # what the student reads in the box
    assert len(set(shown)) == 4 and not any(o.startswith("20260103") for o in shown)  # labels, not folder names


def test_the_leakage_gap_carries_its_interval_and_says_when_it_is_noise(monkeypatch, env, tmp_path, tiny_index):
    runs = _own_runs(monkeypatch, tmp_path)
    write_run(runs, "20260104-000000-tiny_cnn-allX-patient", tiny_index, split="patient", checkpoint=False,
              quality=0.6)
    write_run(runs, "20260104-000100-tiny_cnn-allX-image", tiny_index, split="image", checkpoint=False,
              quality=0.55)  # the image-level run scores a little lower: not the lesson
    at = ok(app("compare"))
    (box,) = _leakage_warnings(at)
    assert "95 % interval" in box and "bootstrap over test patients" in box
    assert "not significant" in box
    assert "cannot tell the splits apart" in box


def test_a_real_leak_is_called_significant(monkeypatch, env, tmp_path, tiny_index):
    runs = _own_runs(monkeypatch, tmp_path)
    write_run(runs, "20260105-000000-tiny_cnn-allX-patient", tiny_index, split="patient", checkpoint=False,
              quality=0.0)
    write_run(runs, "20260105-000100-tiny_cnn-allX-image", tiny_index, split="image", checkpoint=False,
              quality=1.0)
    at = ok(app("compare"))
    (box,) = _leakage_warnings(at)
    assert "not significant" not in box and "the leak shows" in box


def test_the_class_leaderboard_ranks_only_patient_level_results(monkeypatch, env, tmp_path, tiny_index):
    runs = _own_runs(monkeypatch, tmp_path)
    monkeypatch.setenv("DALA_HOME", str(tmp_path / "home"))  # a leaderboard of its own
    write_run(runs, "20260106-000000-tiny_cnn-allX-patient", tiny_index, split="patient", checkpoint=False, quality=0.3)
    write_run(runs, "20260106-000100-tiny_cnn-allX-image", tiny_index, split="image", checkpoint=False, quality=1.0)
    at = ok(app("compare"))
    for run, nick in (("20260106-000100-tiny_cnn-allX-image", "leaky"), ("20260106-000000-tiny_cnn-allX-patient", "honest")):
        at.selectbox(key="lb_run").set_value(run)
        at.text_input(key="lb_nick").set_value(nick)
        at.button[[b.proto.label for b in at.button].index("Submit")].click().run()
        ok(at)
    t = texts(at)
    assert "Ranking: SYNTHETIC data, patient-level split" in t
    assert "Not ranked: image-level split (leaks patients)" in t
    ranked, apart = [d.value for d in at.dataframe if "nickname" in d.value.columns]
    assert list(ranked["nickname"]) == ["honest"] and list(ranked["rank"]) == [1]
    assert list(apart["nickname"]) == ["leaky"] and "rank" not in apart.columns
    assert "Balanced accuracy" in ranked.columns  # readable metric names


def test_the_study_tab_draws_the_study_view_when_installed(env):
    if not (REPO_ROOT / "pages" / "_study_view.py").is_file():
        pytest.skip("pages/_study_view.py (the study view) is not installed in this tree")
    at = ok(app("compare"))
    assert "Study" in [t.label for t in at.tabs]
    assert at.text_input(key="cmp_study_dir")  # the study view is drawn in the tab
    assert any("study folder" in i.value.lower() for i in at.info)


def test_figure_helpers_use_readable_labels_and_never_cut_titles(runs_root):
    from dala import plots
    from dala.train import list_runs

    runs = [{"name": r.name, "config": r.config, "report": r.report, "epochs": r.epochs} for r in list_runs(runs_root)]
    labels = plots.run_labels(runs)
    for r in runs:
        r["label"] = labels[r["name"]]
    table = plots.compare_table(runs)
    assert list(table["label"]) == [labels[n] for n in table["run"]]
    bar = plots.metrics_bar_figure(table, ["accuracy", "balanced_accuracy", "f1_macro"])
    assert list(bar.data[0].x) == ["Accuracy", "Balanced accuracy", "F1 (macro)"]
    assert bar.data[0].name == runs[0]["label"]
    roc, pr = plots.roc_figure(runs), plots.pr_figure(runs)
    assert [t.name for t in roc.data][0] == "chance" and all("AUC" in t.name for t in roc.data[1:])
    assert len(pr.data) == len(runs) and all("AP" in t.name and "·" in t.name for t in pr.data)
    long = "dala_resnet50 · patient-level · all mags · class_weight · ratio 0.25 · Jan 01 00:01:00"
    title = plots.confusion_matrix_figure([[3, 1], [2, 4]], title=long).layout.title.text
    assert "<br>" in title and title.replace("<br>", " · ").replace(" ·  · ", " · ") == long
    assert plots.weight_label("random (pretrained=False)") == "random weights (not pretrained)"
    assert "offline" in plots.weight_label("random (offline: not cached)")
