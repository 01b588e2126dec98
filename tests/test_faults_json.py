"""Fault injection across classes of input (issue 15): every JSON/JSONL file the program reads, and
every path a hosted visitor can type.

1. Each file in ``FILES`` is damaged in each way in ``KINDS`` (garbage bytes, truncated JSON, a list
   where an object goes, an object missing its keys, strings where numbers go, nulls, nested
   garbage, a directory in its place) and read through the code path users reach it by: the CLI
   (``dala.cli.main``) where a command reads it, else the public API the pages use. The outcome
   must be a clear message (a ``DalaError`` / a one-line ``error:`` exit 2), or a tolerated read
   (the file reported as damaged, or its defaults used), never a traceback, never the catch-all
   "unexpected" line of the CLI (exit 1: a bug), and the damaged file's bytes are still on disk
   afterwards (at its path or kept aside as ``<name>.damaged-*``). A new file is one ``FILES`` line.
2. The pages that read run files load a runs folder holding one run per (file, kind) without an
   exception.
3. Hosted mode: every path-taking entry point refuses every path outside the allowed roots with
   the same message whether the path exists or not.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from dala.errors import DalaError

# ----------------------------------------------------------------------------- kinds of damage


def _strings(v):  # strings where numbers go
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, (int, float)):
        return str(v) + "x"
    if isinstance(v, dict):
        return {k: _strings(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_strings(x) for x in v]
    return v


def _top(v, fill):
    return {k: fill for k in v} if isinstance(v, dict) else v


KINDS: dict[str, Callable[[object], object]] = {
    # name -> valid JSON value -> damaged bytes (bytes), JSON value (encoded), or None (a directory)
    "garbage": lambda v: b"\x00\xff\xfe\x89PNG garbage \xc3\x28 {[",
    "truncated": lambda v: json.dumps(v).encode()[: max(1, len(json.dumps(v)) // 2)],
    "list": lambda v: [1, "two", None],
    "empty_object": lambda v: {},
    "strings": _strings,
    "nulls": lambda v: _top(v, None),
    "nested": lambda v: _top(v, {"x": [[{"y": None}]]}),
    "directory": lambda v: None,
}
# kinds that are not JSON of the expected type at all: a reader must say so (not use defaults)
UNREADABLE = ("garbage", "truncated", "list", "directory")


def damage(path: Path, kind: str, *, jsonl: bool = False) -> bytes | None:
    """Replace ``path`` by its ``kind`` of damage; return the bytes written (None: a directory)."""
    if jsonl:
        text = path.read_text() if path.is_file() else ""
        records = [json.loads(line) for line in text.splitlines() if line.strip()] or [{}]
    else:
        records = [json.loads(path.read_text())] if path.is_file() else [{}]
    out = KINDS[kind](records[0])
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    if out is None:
        path.mkdir(parents=True)
        (path / "inside.txt").write_text("not a file")
        return None
    if isinstance(out, bytes) and jsonl and kind == "truncated":
        data = out + b"\n"
    elif isinstance(out, bytes):
        data = out
    elif jsonl and kind not in ("list",):
        data = "".join(json.dumps(KINDS[kind](r)) + "\n" for r in records).encode()
    else:
        data = (json.dumps(out) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def assert_kept(path: Path, data: bytes | None) -> None:
    """The damaged content is still on disk: at ``path`` or set aside beside it."""
    if data is None:
        if path.is_dir():
            return
        aside = [p for p in path.parent.glob(path.name + ".damaged-*") if p.is_dir()]
        assert aside, f"the directory at {path} was removed"
        return
    candidates = [path] + sorted(path.parent.glob(path.name + ".damaged-*"))
    assert any(p.is_file() and p.read_bytes() == data for p in candidates), \
        f"{path} was overwritten and not kept aside: now {path.read_bytes()[:80] if path.is_file() else 'gone'}"


# ----------------------------------------------------------------------------- the two ways to read


def cli(*argv: str) -> tuple[int, str, str]:
    from dala.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse
            rc = exc.code if isinstance(exc.code, int) else 2
    return rc, out.getvalue(), err.getvalue()


class Accepted(Exception):
    """The reader took the file as valid and may rewrite it (checked by the reader itself)."""


class Refused(Exception):
    """The reader refused with a clear message (what a test expects for unreadable kinds)."""


def expect_cli(*argv: str) -> str:
    """Run the CLI: exit 0, or exit 2 with one ``error:`` line (raised as Refused). Exit 1 (the
    catch-all 'unexpected' line) is a bug and fails the test."""
    rc, out, err = cli(*argv)
    assert "Traceback" not in err + out, err
    assert rc in (0, 2), f"exit {rc}: {err.strip()[-600:]}"
    if rc == 2:
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        assert lines and lines[-1].startswith("error:") and "unexpected" not in lines[-1], err
        raise Refused(lines[-1])
    return out


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def template_run(tmp_path_factory, tiny_index):
    from test_app import write_run  # tests/ is on sys.path (see tests/test_app_frame.py)

    from dala.data.splits import make_split
    from dala.io import atomic_write_json

    root = tmp_path_factory.mktemp("template")
    run = write_run(root, "20260101-000000-tiny_cnn-allX-patient", tiny_index)
    make_split(tiny_index, by="patient", seed=0).save(run / "split.json")
    atomic_write_json(run / "control.json", {"command": "pause", "time": 1.0})
    import torch

    from dala.models import create_model
    from dala.train.state import save_training_state

    model = create_model("tiny_cnn", pretrained=False)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 3, 32, 32)).sum().backward()
    opt.step()
    save_training_state(run / "checkpoints" / "last", opt, None,
                        {"epoch": 1, "global_step": 4, "best_epoch": 1, "best_value": 0.5})
    return run


@pytest.fixture
def run(tmp_path, template_run) -> Path:
    return Path(shutil.copytree(template_run, tmp_path / "runs" / template_run.name))


@pytest.fixture
def image(tiny_index) -> Path:
    return Path(tiny_index["path"].iloc[0])


# ----------------------------------------------------------------------------- the files


@dataclass(frozen=True)
class Case:
    id: str
    relpath: str                       # the file, relative to the folder the setup gives
    read: Callable                     # (folder, ctx) -> None; raises Refused / DalaError to refuse
    jsonl: bool = False
    must_refuse: tuple[str, ...] = UNREADABLE  # kinds that must be told (not silently defaulted)


def _view(run: Path, name: str) -> None:
    """Everything a page reads of a run through dala.train.runs; a damaged file must be named."""
    from dala.train.runs import list_runs, read_run

    view = read_run(run)
    _ = (view.state, view.active, view.has_checkpoint, view.epochs, view.steps, view.report, view.tiles,
         view.compare_row)
    assert any(v.path == view.path for v in list_runs(run.parent)), "a damaged run vanished from the list"
    if name in view.damaged:
        raise Refused(view.damaged[name])


def _evaluate(run: Path, ctx) -> None:
    # a config without a usable data_root falls back to the synthetic default, whose first
    # generation is too heavy here: give the folder unless the config names one
    cfg = ctx.get("config") or {}
    data = [] if isinstance(cfg, dict) and cfg.get("data_root") else ["--data", ctx["data"]]
    expect_cli("evaluate", "--run", run, *data, "--part", "test", "--out", run.parent / "eval.json")


def _predict(run: Path, ctx) -> None:
    expect_cli("predict", "--run", run, ctx["image"])


def _push(run: Path, ctx) -> None:
    expect_cli("hub", "push", run, "--repo", "someone/model", "--dry-run", run.parent / "upload")


def _resume(run: Path, ctx) -> None:
    # more epochs than done: reads config.json and trainer_state.json, then refuses (no optimizer
    # state here) or would train; a contradicting flag must be refused before anything is written
    expect_cli("train", "--resume", "--run-dir", run, "--model", "resnet18", "--no-progress")


def _control(run: Path, ctx) -> None:
    from dala.train.folder import RunFolder

    assert RunFolder(run).read_control() in (None, "pause")  # a damaged command is ignored, never raised


def _leaderboard_submit(run: Path, ctx) -> None:
    from dala.hosting import submit_to_leaderboard

    submit_to_leaderboard(run, nickname="ada")


def _trainer_state(run: Path, ctx) -> None:
    """What ``train --resume`` reads first (engine.open_run) and then loads (state.load_training_state)."""
    import torch

    from dala.io import read_json
    from dala.models import create_model
    from dala.train.folder import RunFolder
    from dala.train.state import load_training_state

    folder = RunFolder(run, writer=False)
    read_json(folder.trainer_state_path, {}, expect=dict)
    model = create_model("tiny_cnn", pretrained=False)
    load_training_state(folder.last_dir, torch.optim.AdamW(model.parameters()), None)


RUN_CASES = [
    Case("config/view", "config.json", lambda r, c: _view(r, "config.json")),
    Case("config/evaluate", "config.json", _evaluate),
    Case("config/push", "config.json", _push),
    Case("config/resume", "config.json", _resume),
    Case("status/view", "status.json", lambda r, c: _view(r, "status.json")),
    Case("report/view", "report.json", lambda r, c: _view(r, "report.json")),
    Case("report/push", "report.json", _push),
    Case("report/leaderboard", "report.json", _leaderboard_submit),
    Case("tiles/view", "val_tiles.json", lambda r, c: _view(r, "val_tiles.json")),
    Case("metrics/view", "metrics.jsonl", lambda r, c: _view(r, "metrics.jsonl"), jsonl=True),
    Case("metrics/push", "metrics.jsonl", _push, jsonl=True),
    Case("split/evaluate", "split.json", _evaluate),
    Case("split/push", "split.json", _push),
    Case("control/read", "control.json", _control, must_refuse=()),  # ignored by design
    Case("ckpt_config/predict", "checkpoints/best/config.json", _predict),
    Case("ckpt_config/evaluate", "checkpoints/best/config.json", _evaluate),
    Case("ckpt_config/push", "checkpoints/best/config.json", _push),
    Case("ckpt_config/view", "checkpoints/best/config.json", lambda r, c: _view(r, "config.json"), must_refuse=()),
    Case("owner/view", "owner.json", lambda r, c: _owner(r), must_refuse=()),  # damaged: unowned
    Case("trainer_state/resume", "checkpoints/last/trainer_state.json", _trainer_state),
]


def _owner(run: Path) -> None:
    from dala.identity import read_owner

    from dala.identity import valid_owner_id

    owner = read_owner(run)
    assert owner is None or valid_owner_id(owner)


XFAIL: dict[tuple[str, str], str] = {
    # (case id, kind) -> reason (owner + bug); strict, so a fix shows up as XPASS
}


def _params(cases):
    out = []
    for case in cases:
        for kind in KINDS:
            marks = [pytest.mark.xfail(strict=True, reason=XFAIL[(case.id, kind)])] if (case.id, kind) in XFAIL else []
            out.append(pytest.param(case, kind, id=f"{case.id}-{kind}", marks=marks))
    return out


@pytest.mark.parametrize("case,kind", _params(RUN_CASES))
def test_a_damaged_run_file_is_told_and_kept(case, kind, run, image, tiny_synth_root, monkeypatch, tmp_path):
    monkeypatch.setenv("DALA_OFFLINE", "1")
    monkeypatch.setenv("DALA_HOME", str(tmp_path / "home"))
    path = run / case.relpath
    if case.relpath == "owner.json":
        from dala.identity import owner_id, write_owner

        write_owner(run, owner_id("a" * 43))
    data = damage(path, kind, jsonl=case.jsonl)
    others = {p: p.read_bytes() for p in run.rglob("*.json*") if p.is_file() and p != path}
    refused = None
    try:
        config = json.loads((run / "config.json").read_text())
    except (OSError, ValueError):
        config = None
    try:
        case.read(run, {"image": image, "data": tiny_synth_root, "config": config})
    except (Refused, DalaError) as exc:
        refused = str(exc)
        assert refused.strip() and "\n" not in refused.strip(), refused
    if kind in case.must_refuse:
        assert refused, f"{case.relpath} as {kind} was used as if it were fine"
    assert_kept(path, data)
    for p, before in others.items():  # the reader wrote nothing over the run's other files either
        if p.name in ("status.json",) and p.exists():
            continue  # a refused resume may record 'failed' (a writer-owned file)
        assert not p.exists() or p.read_bytes() == before or list(p.parent.glob(p.name + ".damaged-*")), p


# ----------------------------------------------------------------------------- shared and other files


def _leaderboard_files(tmp_path, monkeypatch, ctx):
    from dala.hosting import leaderboard_path, submit_to_leaderboard

    monkeypatch.setenv("DALA_HOME", str(tmp_path / "home"))
    submit_to_leaderboard(ctx["run"], nickname="first")
    return leaderboard_path()


def _leaderboard_read(path, ctx):
    from dala.hosting import leaderboard_groups, load_leaderboard, submit_to_leaderboard

    board = load_leaderboard()
    leaderboard_groups(board.entries)
    submit_to_leaderboard(ctx["run"], nickname="second")  # must keep the damaged file aside
    if board.problem:
        raise Refused(board.problem)
    # read as valid: the submission may rewrite the file, but every entry it held is still there
    now = json.loads(path.read_text())["entries"]
    assert len(now) >= len(board.entries), "leaderboard entries were lost"
    raise Accepted


def _toml_setup(tmp_path, monkeypatch, ctx):
    monkeypatch.setenv("DALA_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DALA_HUB_REPO", raising=False)
    p = tmp_path / "home" / "config.toml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text('[hub]\nrepo_id = "someone/model"\n')
    return p


def _toml_read(path, ctx):
    expect_cli("hub", "ls")


def _hub_marker_setup(tmp_path, monkeypatch, ctx):
    from dala.hub.repos import SOURCE_MARKER

    root = tmp_path / "hubdata"  # a data root fetched from the Hub: the run's config points at it
    shutil.copytree(ctx["data"], root)
    cfg = json.loads((ctx["run"] / "config.json").read_text())
    (ctx["run"] / "config.json").write_text(json.dumps({**cfg, "data_root": str(root)}))
    p = root / SOURCE_MARKER
    p.write_text(json.dumps({"repo_id": "someone/breakhis", "revision": "main", "commit": "0" * 40}))
    return p


def _synth_done_setup(tmp_path, monkeypatch, ctx):
    root = tmp_path / "synth"
    shutil.copytree(ctx["data"], root)
    return root / "DONE"


def _synth_done_read(path, ctx):
    expect_cli("data", "scan", path.parent)


def _study_setup(tmp_path, monkeypatch, ctx, name="manifest.json"):
    study = tmp_path / "study"
    expect_cli("study", "plan", "quick", "--data", ctx["data"], "--out", study, "--trials", "1")
    return study / name


def _study_state_setup(tmp_path, monkeypatch, ctx):
    p = _study_setup(tmp_path, monkeypatch, ctx)
    state = p.parent / "state.json"
    if not state.exists():
        state.write_text(json.dumps({"runs": {}, "updated": 1.0}))
    return state


def _study_read(path, ctx):
    expect_cli("study", "status", path.parent)


def _bank_setup(tmp_path, monkeypatch, ctx):
    import hashlib

    import numpy as np

    from dala.lab.bank import FEATURES_FILE, FORMAT, HEADER_FILE

    folder = tmp_path / "bank"
    folder.mkdir()
    feats = np.zeros((2, 4), dtype="float32")
    np.save(folder / FEATURES_FILE, feats)
    raw = (folder / FEATURES_FILE).read_bytes()
    header = {"format": FORMAT, "dataset": {"fingerprint": "f" * 16}, "encoder": {"identity": "enc", "label": "enc"},
              "views": 1, "created": "2026-01-01", "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest(),
              "shape": [2, 4], "dtype": "float32", "image_ids": ["a", "b"]}
    (folder / HEADER_FILE).write_text(json.dumps(header))
    return folder / HEADER_FILE


def _bank_read(path, ctx):
    from dala.lab.bank import bank_problem, list_banks, load_bank

    problem = bank_problem(path.parent)  # the lab page's cheap check
    listed = list_banks(path.parent.parent)  # damaged banks are skipped, never a crash
    assert problem is None or not any(b["folder"] == str(path.parent) for b in listed), (problem, listed)
    load_bank(path.parent, fingerprint="f" * 16)


def _split_file_setup(tmp_path, monkeypatch, ctx):
    p = tmp_path / "split.json"
    shutil.copy(ctx["run"] / "split.json", p)
    return p


def _split_file_read(path, ctx):
    expect_cli("evaluate", "--run", ctx["run"], "--split-file", path, "--part", "test",
               "--out", path.parent / "eval.json")


def _hub_snapshot(tmp_path, ctx, name):
    """A Hub upload (``hub push --dry-run``) laid out as a cached snapshot of someone/model."""
    cache = tmp_path / "hfcache"
    commit = "c" * 40
    repo = cache / "models--someone--model"
    expect_cli("hub", "push", ctx["run"], "--repo", "someone/model", "--dry-run", repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    ctx["cache"] = cache
    return repo / "snapshots" / commit / name


def _hub_read(path, ctx):
    from dala.hub import hub_run_record

    rec = hub_run_record("someone/model", cache_dir=ctx["cache"])
    assert isinstance(rec["report"], dict) and isinstance(rec["config"], dict), rec


@dataclass(frozen=True)
class FileCase:
    id: str
    setup: Callable          # (tmp_path, monkeypatch, ctx) -> the file's path (valid content written)
    read: Callable           # (path, ctx) -> None; Refused / DalaError to refuse
    jsonl: bool = False
    must_refuse: tuple[str, ...] = UNREADABLE
    raw: bool = False        # not JSON (TOML): only garbage and directory apply


FILE_CASES = [
    FileCase("leaderboard", _leaderboard_files, _leaderboard_read),
    FileCase("split_file", _split_file_setup, _split_file_read),
    FileCase("hub_source_marker", _hub_marker_setup, lambda p, c: _push(c["run"], c), must_refuse=()),
    FileCase("synth_done_marker", _synth_done_setup, _synth_done_read, must_refuse=()),
    FileCase("study_manifest", _study_setup, _study_read),
    FileCase("study_state", _study_state_setup, _study_read, must_refuse=()),  # set aside, rebuilt from runs
    FileCase("lab_bank_header", _bank_setup, _bank_read),
    FileCase("hub_upload_config", lambda t, m, c: _hub_snapshot(t, c, "config.json"), _hub_read),
    FileCase("hub_upload_report", lambda t, m, c: _hub_snapshot(t, c, "report.json"), _hub_read),
    FileCase("hub_upload_metrics", lambda t, m, c: _hub_snapshot(t, c, "metrics.jsonl"), _hub_read, jsonl=True),
    FileCase("config_toml", _toml_setup, _toml_read, raw=True, must_refuse=("garbage",)),
]

FILE_XFAIL: dict[tuple[str, str], str] = {}  # (case, kind) -> the known bug, while one is open


def _file_params():
    out = []
    for case in FILE_CASES:
        for kind in (("garbage", "directory") if case.raw else KINDS):
            marks = ([pytest.mark.xfail(strict=True, reason=FILE_XFAIL[(case.id, kind)])]
                     if (case.id, kind) in FILE_XFAIL else [])
            out.append(pytest.param(case, kind, id=f"{case.id}-{kind}", marks=marks))
    return out


@pytest.mark.parametrize("case,kind", _file_params())
def test_a_damaged_file_is_told_and_kept(case, kind, run, tiny_synth_root, monkeypatch, tmp_path):
    monkeypatch.setenv("DALA_OFFLINE", "1")
    monkeypatch.setenv("DALA_HOME", str(tmp_path / "home"))
    ctx = {"run": run, "data": tiny_synth_root}
    path = case.setup(tmp_path, monkeypatch, ctx)
    if not case.raw:
        data = damage(path, kind, jsonl=case.jsonl)
    elif kind == "directory":
        path.unlink()
        path.mkdir()
        data = None
    else:
        data = KINDS[kind](None)
        path.write_bytes(data)
    refused = None
    try:
        case.read(path, ctx)
    except Accepted:
        assert kind not in case.must_refuse
        return
    except (Refused, DalaError) as exc:
        refused = str(exc)
        assert refused.strip() and "\n" not in refused.strip(), refused
    if kind in case.must_refuse:
        assert refused, f"{path.name} as {kind} was used as if it were fine"
    assert_kept(path, data)


# ----------------------------------------------------------------------------- pages reading damaged runs


def test_pages_show_runs_with_every_kind_of_damage_without_an_exception(tmp_path, monkeypatch, template_run,
                                                                         tiny_synth_root):
    """One runs folder holding a run per (file the pages read, kind of damage): the Train, Compare
    and Explain pages load without an exception (the run listed as damaged, not hidden)."""
    from test_app import app, texts

    runs, kept = tmp_path / "runs", {}
    for rel, jsonl in (("status.json", False), ("report.json", False), ("val_tiles.json", False),
                       ("metrics.jsonl", True), ("config.json", False), ("checkpoints/best/config.json", False)):
        for kind in KINDS:
            name = f"20260102-{len(list(runs.glob('*')) if runs.exists() else []):06d}-" + \
                rel.replace("/", "_").replace(".", "_") + f"-{kind}"
            run = Path(shutil.copytree(template_run, runs / name))
            kept[run / rel] = damage(run / rel, kind, jsonl=jsonl)
    monkeypatch.setenv("DALA_DATA_ROOT", str(tiny_synth_root))
    monkeypatch.setenv("DALA_RUNS", str(runs))
    monkeypatch.setenv("DALA_OFFLINE", "1")
    monkeypatch.setenv("DALA_HOME", str(tmp_path / "home"))
    for page in ("train", "compare", "explain"):
        at = app(page)  # asserts no exception
        assert not at.exception, (page, [e.value for e in at.exception])
        assert "Traceback" not in texts(at)
        if page == "train":
            assert "damaged" in texts(at).lower() or any("damaged" in str(o) for sb in at.selectbox
                                                         for o in sb.options), "no run is shown as damaged"
    for path, data in kept.items():  # pages only read
        assert_kept(path, data)


# ----------------------------------------------------------------------------- hosted paths


def _forbidden_paths(tmp_path: Path, run: Path) -> list[str]:
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    link = tmp_path / "home" / "synthetic_link"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(outside)
    return ["/etc", "/nonexistent/for/sure", str(run), str(run / "checkpoints" / "best"), str(outside),
            str(tmp_path / "missing"), "../../..", "~", "/", str(link), "a\x00b", str(run) + "/../../.."]


def _entry_points():
    from dala import sources
    from dala.hosting import allowed_data_root, check_user_path

    return {
        "check_user_path-data": lambda p, own: check_user_path(p, purpose="data"),
        "check_user_path-checkpoint": lambda p, own: check_user_path(p, purpose="checkpoint", own_roots=own),
        "allowed_data_root": lambda p, own: allowed_data_root(p),
        "resolve_source-local": lambda p, own: sources.resolve_source(sources.LOCAL, p),
    }


@pytest.mark.parametrize("entry", ["check_user_path-data", "check_user_path-checkpoint", "allowed_data_root",
                                   "resolve_source-local"])
def test_hosted_every_typed_path_outside_the_roots_gets_one_message(entry, tmp_path, monkeypatch, template_run):
    from dala.hosting import HostedModeError

    monkeypatch.setenv("DALA_HOSTED", "1")
    monkeypatch.setenv("DALA_HOME", str(tmp_path / "home"))
    other = Path(shutil.copytree(template_run, tmp_path / "runs" / "u-0123456789abcdef01234567" / template_run.name))
    mine = tmp_path / "runs" / "u-aaaaaaaaaaaaaaaaaaaaaaaa"
    mine.mkdir(parents=True)
    messages = set()
    for forbidden in _forbidden_paths(tmp_path, other):
        with pytest.raises(HostedModeError) as info:
            _entry_points()[entry](forbidden, [mine])
        msg = str(info.value)
        assert forbidden.strip("~/.") == "" or forbidden not in msg, msg
        assert str(tmp_path) not in msg, msg
        messages.add(msg)
    assert len(messages) == 1, messages  # the same words whether the path exists or not
