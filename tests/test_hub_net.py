"""dala.hub and the network, through the CLI in fresh processes (huggingface_hub reads its offline
flag and endpoint at import): the two offline flags (``DALA_OFFLINE=1``: no network call at all;
``HF_HUB_OFFLINE=1``: the Hub is not contacted), and a deadline on every Hub call against local
fake Hubs on 127.0.0.1 that accept and never answer, or answer garbage instead of TLS/HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from test_hub import REPO, checkpoint_files, make_hub_cache

REPO_ROOT = Path(__file__).resolve().parents[1]

# Runs dala.cli.main for each argv in one fresh process and reports rc, stdout, stderr and wall time
# of each call (the interpreter start and torch's import - a run's checkpoint is read before a push -
# are not counted: the walls measure waiting on the network). The network caches are emptied before
# each call, so that each call meets the server by itself.
_RUNNER = r"""
import contextlib, io, json, sys, time
import dala.models.checkpoint, dala.models.registry
from dala import net
from dala.cli import main
out = []
for argv in json.loads(sys.argv[1]):
    net.clear_probe_cache(), net.clear_http_failures()  # each call meets the server on its own
    o, e = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        rc = main(argv)
    out.append({"rc": rc, "out": o.getvalue(), "err": e.getvalue(), "wall": time.perf_counter() - t0})
print("RESULT" + json.dumps(out))
"""


class FakeHub:
    """A TCP server on 127.0.0.1 that counts connections and either holds them open without a
    word (``"silent"``) or writes bytes that are neither TLS nor HTTP and hangs up (``"garbage"``)."""

    def __init__(self, mode: str = "silent"):
        self.mode, self.accepted, self._held = mode, 0, []
        self._stop = threading.Event()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.1)
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            self.accepted += 1
            if self.mode == "garbage":
                with contextlib.suppress(OSError):
                    conn.sendall(b"\x00\xffthis is neither TLS nor HTTP\r\n\r\n" * 8)
                conn.close()
            else:
                self._held.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()
        for conn in self._held:
            conn.close()


@pytest.fixture
def fake_hub(request):
    hub = FakeHub(getattr(request, "param", "silent"))
    yield hub
    hub.close()


def cli_calls(argvs: list[list[str]], env: dict, *, drop: tuple[str, ...] = (), timeout: float = 120) -> list[dict]:
    full = {k: v for k, v in os.environ.items() if k not in drop}
    full.update(env)
    full["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + full.get("PYTHONPATH", "")
    full.update({"NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"})
    proc = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps(argvs)], capture_output=True, text=True,
                          env=full, cwd=REPO_ROOT, timeout=timeout)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert line, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(line[0][len("RESULT"):])


@pytest.fixture(scope="module")
def tiny_ckpt_and_run(tmp_path_factory):
    """A tiny checkpoint, and a finished-looking run folder holding it (enough for `hub push`)."""
    import torch

    from dala.io import atomic_write_json
    from dala.models import create_model
    from dala.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("net")
    ckpt = save_checkpoint(create_model("tiny_cnn", pretrained=False).eval(), root / "ckpt",
                           class_names=["benign", "malignant"])
    run = root / "run"
    save_checkpoint(create_model("tiny_cnn", pretrained=False).eval(), run / "checkpoints" / "best",
                    class_names=["benign", "malignant"])
    atomic_write_json(run / "report.json", {"test": {"n": 4, "accuracy": 0.5}, "model": "tiny_cnn"})
    return ckpt, run


def _hub_argvs(run: Path, cache: Path, dest: Path) -> list[list[str]]:
    return [["hub", "pull", "nobody/missing", "--cache-dir", str(cache)],
            ["hub", "ls", "nobody/missing", "--cache-dir", str(cache)],
            ["hub", "fetch-dataset", "nobody/missing", "--cache-dir", str(cache), "--dest", str(dest)],
            ["hub", "push", str(run), "--repo", "me/dala-tiny", "--token", "hf_fake"]]


# ---------------------------------------------------------------------------------------------
# the offline flags: both paths
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag,other", [("DALA_OFFLINE", "HF_HUB_OFFLINE"), ("HF_HUB_OFFLINE", "DALA_OFFLINE")])
def test_offline_flag_stops_every_hub_call_and_contacts_nothing(tmp_path, fake_hub, tiny_ckpt_and_run, flag, other):
    """Before the fix DALA_OFFLINE=1 (with HF_HUB_OFFLINE unset) still let `hub pull` probe and ask the Hub."""
    ckpt, run = tiny_ckpt_and_run
    cache = tmp_path / "hub"
    commit = make_hub_cache(cache, REPO, checkpoint_files(ckpt))
    env = {flag: "1", "HF_ENDPOINT": fake_hub.url(), "HF_HUB_CACHE": str(cache)}
    cached = [["hub", "pull", REPO, "--json"], ["hub", "ls", REPO], ["hub", "pull", REPO]]
    results = cli_calls(cached + _hub_argvs(run, cache, tmp_path / "d"), env, drop=(other,))
    # what is cached still loads
    assert results[0]["rc"] == 0, results[0]
    assert json.loads(results[0]["out"])["commit"] == commit
    assert results[1]["rc"] == 0 and results[1]["out"].split() == ["."]
    # the printed pin command is one the CLI accepts
    pin = re.search(r"pin with (--revision \S+)", results[2]["out"]).group(1)
    from dala.cli import build_parser

    args = build_parser().parse_args(["hub", "pull", REPO, *shlex.split(pin)])
    assert args.revision == commit
    # what is not cached fails at once, naming the flag and the fix
    for argv, res in zip(_hub_argvs(run, cache, tmp_path / "d"), results[3:]):
        assert res["rc"] == 2, (argv, res)
        lines = res["err"].strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and f"{flag}=1" in lines[0], (argv, res)
        assert "Fix:" in lines[0] and res["wall"] < 5, (argv, res)
    assert fake_hub.accepted == 0  # not even a TCP probe
    assert not (tmp_path / "d").exists()


# ---------------------------------------------------------------------------------------------
# deadlines: a Hub that never answers, a Hub that answers garbage
# ---------------------------------------------------------------------------------------------

def test_hub_that_accepts_and_never_answers_fails_within_seconds(tmp_path, fake_hub):
    """Before the fix `hub pull` against such a server waited minutes (a 60 s metadata retry, five
    times) and `hub ls` / `fetch-dataset` had no timeout at all. Default timeouts here."""
    env = {"HF_HUB_OFFLINE": "0", "DALA_OFFLINE": "0", "HF_ENDPOINT": fake_hub.url(), "HF_HUB_CACHE": str(tmp_path)}
    t0 = time.perf_counter()
    [res] = cli_calls([["hub", "pull", "nobody/missing"]], env, timeout=60)
    assert time.perf_counter() - t0 < 15 and res["wall"] < 12, res
    assert res["rc"] == 2, res
    msg = res["err"].strip()
    assert len(msg.splitlines()) == 1 and "nobody/missing" in msg
    assert f"127.0.0.1:{fake_hub.port}" in msg and "no answer" in msg and "Fix:" in msg
    assert "check the connection" in msg and "HF_ENDPOINT" in msg


def test_every_hub_call_is_bounded_against_a_silent_hub(tmp_path, fake_hub, tiny_ckpt_and_run):
    _, run = tiny_ckpt_and_run
    env = {"HF_HUB_OFFLINE": "0", "DALA_OFFLINE": "0", "HF_ENDPOINT": fake_hub.url(), "DALA_NET_TIMEOUT": "1"}
    argvs = _hub_argvs(run, tmp_path / "hub", tmp_path / "d")
    t0 = time.perf_counter()
    results = cli_calls(argvs, env, timeout=90)
    assert time.perf_counter() - t0 < 40
    for argv, res in zip(argvs, results):
        assert res["rc"] == 2 and res["wall"] < 8, (argv, res)
        assert f"127.0.0.1:{fake_hub.port}" in res["err"] and "Fix:" in res["err"], (argv, res)
    assert "did not answer" in results[3]["err"] and "--dry-run DIR" in results[3]["err"]
    assert fake_hub.accepted >= 4  # each call did go to the server (a probe at least)


@pytest.mark.parametrize("fake_hub,scheme", [("garbage", "https"), ("garbage", "http")], indirect=["fake_hub"])
def test_hub_that_speaks_garbage_fails_fast_without_retries(tmp_path, fake_hub, scheme):
    """Before the fix a TLS failure cost ~25 s of retries (1+2+4+8+8 s of back-off)."""
    env = {"HF_HUB_OFFLINE": "0", "DALA_OFFLINE": "0", "HF_ENDPOINT": fake_hub.url(scheme),
           "HF_HUB_CACHE": str(tmp_path)}
    results = cli_calls([["hub", "pull", "nobody/missing"], ["hub", "ls", "nobody/missing"]], env, timeout=60)
    for res in results:
        assert res["rc"] == 2 and res["wall"] < 5, res
        assert f"127.0.0.1:{fake_hub.port}" in res["err"] and "Fix:" in res["err"], res
    assert fake_hub.accepted < 8  # a probe and one try per call, not five retries


# ---------------------------------------------------------------------------------------------
# every command printed for the user to run is one the CLI accepts
# ---------------------------------------------------------------------------------------------

def _sample(expr: str) -> str:
    return "owner/name" if "repo" in expr else "/tmp/some-run"


def test_every_printed_hub_command_parses():
    from dala.cli import build_parser
    from dala.hub import model_card

    commands = set()
    for path in (REPO_ROOT / "dala").rglob("*.py"):
        # every `python -m dala hub ...` hint anywhere, and every `python -m dala ...` one in dala/hub;
        # single backticks: a hint in a message (``double`` ones are docstring markup)
        area = "" if path.parent.name == "hub" else "hub "
        for cmd in re.findall(rf"(?<!`)`(python -m dala {area}[^`]+)`(?!`)", path.read_text(encoding="utf-8")):
            commands.add(re.sub(r"\{([^{}]+)\}", lambda m: _sample(m.group(1)), cmd))
    card = model_card(repo_id="owner/name", ckpt={"name": "tiny_cnn"}, report={"test": {}}, config={}, split=None,
                      has_curves=False)
    commands |= {ln.strip() for ln in card.splitlines() if ln.strip().startswith("python -m dala hub")}
    assert len(commands) >= 4, commands  # hub ls / push --dry-run / push (error hints), hub pull (card), train
    parser = build_parser()
    for cmd in sorted(commands):
        words = shlex.split(cmd)
        assert words[:3] == ["python", "-m", "dala"], cmd
        try:
            args = parser.parse_args(words[3:])
        except SystemExit as exc:  # argparse refuses: the hint is wrong
            pytest.fail(f"printed command {cmd!r} is refused by the CLI (exit {exc.code})")
        assert getattr(args, "func", None) is not None, cmd
        assert args.command != "hub" or args.hub_command, cmd


# ---------------------------------------------------------------------------------------------
# the package's shape: light to import, small modules, no import circle
# ---------------------------------------------------------------------------------------------

def test_hub_package_is_light_small_and_has_no_import_circle():
    import ast

    code = "import sys, dala.hub, dala.hub.cli; print(sorted(m for m in ('torch', 'huggingface_hub') if m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr

    graph = {}
    for path in sorted((REPO_ROOT / "dala" / "hub").glob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert len(text.splitlines()) <= 250, f"{path.name} has {len(text.splitlines())} lines"
        mod = "dala.hub" if path.stem == "__init__" else f"dala.hub.{path.stem}"
        deps = set()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dala.hub"):
                deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("dala.hub")}
        graph[mod] = deps - {mod}
    assert set(graph) >= {f"dala.hub.{m}" for m in ("repos", "online", "pull", "card", "push", "archives",
                                                    "datasets", "cli")}
    for mod, deps in graph.items():  # the work modules never import the package face
        assert mod in ("dala.hub", "dala.hub.cli") or "dala.hub" not in deps, (mod, deps)

    def visit(mod, stack):
        assert mod not in stack, f"import circle: {' -> '.join(stack + [mod])}"
        for dep in graph.get(mod, ()):
            if dep != "dala.hub" or mod == "dala.hub.cli":
                visit(dep, stack + [mod])

    for mod in graph:
        visit(mod, [])
