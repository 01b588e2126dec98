"""dala.net, the one owner of the offline flags, the reachability probe, the Hugging Face cache
location and the deadlines: everything read at call time, the probe cached, huggingface_hub's
requests bounded and not retried after a network failure."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from dala import net

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_env_flag_and_float_are_read_at_call_time(monkeypatch):
    monkeypatch.delenv("DALA_X", raising=False)
    assert net.env_flag("DALA_X") is False and net.env_flag("DALA_X", default=True) is True
    for word, value in (("1", True), ("TRUE", True), (" yes ", True), ("on", True), ("0", False), ("off", False),
                        ("nonsense", False)):
        monkeypatch.setenv("DALA_X", word)
        assert net.env_flag("DALA_X") is value, word
    monkeypatch.setenv("DALA_X", "2.5")
    assert net.env_float("DALA_X", 1.0) == 2.5
    monkeypatch.setenv("DALA_X", "not a number")
    assert net.env_float("DALA_X", 1.0) == 1.0
    monkeypatch.setenv("DALA_X", "0.01")
    assert net.env_float("DALA_X", 1.0, minimum=0.2) == 0.2


def test_one_offline_meaning(monkeypatch):
    import huggingface_hub.constants as C

    monkeypatch.setattr(C, "HF_HUB_OFFLINE", False)  # the library read HF_HUB_OFFLINE=1 at import (conftest)
    for name in ("DALA_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    assert not net.offline() and not net.hub_offline() and net.offline_flag_name(hub=True) is None
    monkeypatch.setenv("DALA_OFFLINE", "1")  # no network at all: the Hub included
    assert net.offline() and net.hub_offline()
    assert net.offline_flag_name(hub=False) == "DALA_OFFLINE=1" == net.offline_flag_name(hub=True)
    assert net.hub_offline_reason() == "offline mode is on (DALA_OFFLINE=1)"
    monkeypatch.delenv("DALA_OFFLINE")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the Hub only
    assert not net.offline() and net.hub_offline()
    assert net.offline_flag_name(hub=False) is None and net.offline_flag_name(hub=True) == "HF_HUB_OFFLINE=1"
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(C, "HF_HUB_OFFLINE", True)  # set when the library was imported: it refuses anyway
    assert net.hub_offline()


def test_hf_cache_dir_resolves_as_huggingface_hub_does(tmp_path, monkeypatch):
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    assert net.hf_hub_cache_dir() == Path.home() / ".cache" / "huggingface" / "hub"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert net.hf_hub_cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert net.hf_hub_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(tmp_path / "old"))
    assert net.hf_hub_cache_dir() == tmp_path / "old"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "new"))
    assert net.hf_hub_cache_dir() == tmp_path / "new"
    assert net.hf_hub_cache_dir(tmp_path / "given") == tmp_path / "given"


def test_the_probe_is_one_cached_tcp_connect(monkeypatch):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    accepted = []

    def serve():
        listener.settimeout(3)
        try:
            while True:
                conn, _ = listener.accept()
                accepted.append(conn)
        except OSError:
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        net.clear_probe_cache()
        assert net.probe("127.0.0.1", port) == (True, "")
        assert net.can_reach("127.0.0.1", port)  # answered from the cache
        time.sleep(0.3)
        assert len(accepted) == 1
        net.clear_probe_cache()
        assert net.can_reach("127.0.0.1", port)
        time.sleep(0.3)
        assert len(accepted) == 2
    finally:
        listener.close()
        thread.join(timeout=5)
        for conn in accepted:
            conn.close()
    with socket.socket() as s:  # a port nobody listens on: refused at once, with a reason
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    net.clear_probe_cache()
    t0 = time.perf_counter()
    ok, reason = net.probe("127.0.0.1", dead)
    assert not ok and "cannot connect to 127.0.0.1" in reason and time.perf_counter() - t0 < 2
    net.clear_probe_cache()


def test_timeouts_are_read_at_call_time_and_bounded(monkeypatch):
    monkeypatch.delenv("DALA_NET_TIMEOUT", raising=False)
    monkeypatch.delenv("DALA_HUB_TIMEOUT", raising=False)
    monkeypatch.delenv("DALA_NET_READ_TIMEOUT", raising=False)
    assert net.network_timeout() == 5.0 and net.read_timeout() == net.DOWNLOAD_SOCKET_TIMEOUT_S
    monkeypatch.setenv("DALA_HUB_TIMEOUT", "3")
    assert net.network_timeout() == 3.0
    monkeypatch.setenv("DALA_NET_TIMEOUT", "2")
    assert net.network_timeout() == 2.0
    # what huggingface_hub asks for, capped: connects by network_timeout, reads never unbounded
    assert net._bounded_timeouts({"connect": None, "read": None, "write": None, "pool": None}) == \
        {"connect": 2.0, "pool": 2.0, "read": 4.0, "write": 4.0}
    assert net._bounded_timeouts({"connect": 60, "read": 60, "write": 10, "pool": 60}) == \
        {"connect": 2.0, "pool": 2.0, "read": 30.0, "write": 10}
    monkeypatch.setenv("DALA_NET_READ_TIMEOUT", "7")
    assert net._bounded_timeouts({"read": 60})["read"] == 7.0


_MECHANISM = r"""
import json, socket, sys, time
import httpx2
from dala import net
from huggingface_hub import get_session
from huggingface_hub.errors import OfflineModeIsEnabled
assert net.bound_hf_http() and net.bound_hf_http()  # installed once
out = []
for _ in range(2):
    t0 = time.perf_counter()
    try:
        get_session().get(sys.argv[1], timeout=None)  # no timeout asked: bounded anyway
        out.append(["answered", 0, ""])
    except Exception as exc:
        out.append([type(exc).__name__, time.perf_counter() - t0, str(exc), isinstance(exc, OfflineModeIsEnabled)])
print("RESULT" + json.dumps(out))
"""


def test_hf_requests_are_bounded_and_not_retried_after_a_failure():
    """A server that accepts and never answers: the first request gives up after its bounded wait,
    the next one (a retry of huggingface_hub's) fails at once as offline, so the library falls back
    to its cache instead of retrying for minutes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "DALA_OFFLINE": "0", "DALA_NET_TIMEOUT": "0.5",
           "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1",
           "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        proc = subprocess.run([sys.executable, "-c", _MECHANISM, f"http://127.0.0.1:{port}/api/models/x"],
                              capture_output=True, text=True, env=env, timeout=60)
    finally:
        listener.close()
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert line, proc.stderr[-2000:]
    (first, t1, msg1, *_), (second, t2, msg2, offline_like) = json.loads(line[0][len("RESULT"):])
    assert first == "ReadTimeout" and 0.5 <= t1 < 3, (first, t1, msg1)
    assert second == "HubUnreachable" and offline_like and t2 < 0.5, (second, t2, msg2)
    assert f"127.0.0.1:{port} gave no answer within 1 s" in msg2 and "not retried" in msg2
