"""The network and the environment: the one place that decides whether dala may go online.

Every module that reads an environment flag, probes a server, or needs the Hugging Face cache
asks here, so each has one meaning:

- ``DALA_OFFLINE=1``: dala makes **no network call at all**: no pretrained-weight download
  (torchvision or timm), no ``hub pull``/``push``/``ls``, no Hub dataset fetch. Only local caches
  are read.
- ``HF_HUB_OFFLINE=1`` (huggingface_hub's own flag, also ``TRANSFORMERS_OFFLINE``): the Hugging
  Face Hub is not contacted (Hub pulls, Hub datasets, timm weights); torchvision's weight server
  may still be used. ``DALA_OFFLINE`` implies it.
- Reachability: one short TCP probe per host (``probe``), remembered for ``PROBE_TTL_S``, so a
  page that reruns every second never waits on the network twice.
- Deadlines: ``network_timeout()`` (``DALA_NET_TIMEOUT``, else ``DALA_HUB_TIMEOUT``, default 5 s)
  bounds a probe and every connect; ``socket_timeout`` bounds every blocking read of a download;
  ``bound_hf_http()`` makes every huggingface_hub request bounded and stops its retries after a
  network failure (its own retry loop costs ~25 s on a TLS failure and minutes on a server that
  accepts and never answers).

Everything is read from the environment at call time, never at import, so tests and the app can
change it after import. Nothing here imports torch, and huggingface_hub only inside
``bound_hf_http``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
PROBE_TTL_S = 30.0
DOWNLOAD_SOCKET_TIMEOUT_S = 30.0

_probe_cache: dict[tuple[str, int], tuple[float, bool, str]] = {}
_http_failures: dict[tuple[str, str, int], tuple[float, str]] = {}  # (scheme, host, port) -> (when, why)
_hf_bounded = False


def env_flag(name: str, default: bool = False) -> bool:
    """``1/true/yes/on`` (any case) is true, ``0/false/no/off`` false; unset or empty: ``default``."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    return value in TRUE_WORDS


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    """A number from the environment, read now; a malformed value falls back to ``default``."""
    try:
        value = float(os.environ.get(name, "").strip() or default)
    except ValueError:
        value = float(default)
    return max(minimum, value) if minimum is not None else value


def offline() -> bool:
    """``DALA_OFFLINE=1``: no network call of any kind from dala."""
    return env_flag("DALA_OFFLINE")


def hub_offline() -> bool:
    """The Hub must not be contacted: ``DALA_OFFLINE``, ``HF_HUB_OFFLINE`` or
    ``TRANSFORMERS_OFFLINE`` set now, or ``HF_HUB_OFFLINE`` set when huggingface_hub was imported
    (the library then refuses every request whatever the environment says later)."""
    if offline() or env_flag("HF_HUB_OFFLINE") or env_flag("TRANSFORMERS_OFFLINE"):
        return True
    constants = sys.modules.get("huggingface_hub.constants")
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def offline_flag_name(*, hub: bool) -> str | None:
    """The flag that keeps us offline (for messages), or None."""
    if offline():
        return "DALA_OFFLINE=1"
    if hub and hub_offline():
        return "HF_HUB_OFFLINE=1"
    return None


def network_timeout() -> float:
    """Seconds a probe or a connection may take (``DALA_NET_TIMEOUT``/``DALA_HUB_TIMEOUT``, 5)."""
    name = "DALA_NET_TIMEOUT" if os.environ.get("DALA_NET_TIMEOUT") else "DALA_HUB_TIMEOUT"
    return env_float(name, 5.0, minimum=0.2)


def probe(host: str, port: int = 443, *, timeout: float | None = None) -> tuple[bool, str]:
    """Can a TCP connection to ``host:port`` be opened within ``timeout`` s? ``(ok, reason)``.
    DNS failure answers at once; the answer is remembered for ``PROBE_TTL_S`` seconds."""
    key = (host, int(port))
    now = time.monotonic()
    hit = _probe_cache.get(key)
    if hit and now - hit[0] < PROBE_TTL_S:
        return hit[1], hit[2]
    try:
        with socket.create_connection(key, timeout=timeout or network_timeout()):
            ok, reason = True, ""
    except OSError as exc:
        ok, reason = False, f"cannot connect to {host}:{port}: {exc.strerror or exc}"
    _probe_cache[key] = (now, ok, reason)
    return ok, reason


def can_reach(host: str, port: int = 443, *, timeout: float | None = None) -> bool:
    return probe(host, port, timeout=timeout)[0]


def clear_probe_cache() -> None:
    _probe_cache.clear()


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def hub_reachable(*, timeout: float | None = None) -> tuple[bool, str]:
    """Probe the Hub endpoint, or the HTTPS proxy in use for it."""
    import urllib.request

    url = urlparse(hub_endpoint())
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(host):
        p = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        host, port = p.hostname or host, p.port or 8080
    return probe(host, port, timeout=timeout)


def hub_offline_reason() -> str | None:
    """Why the Hub cannot be used now (a flag, or an unreachable endpoint), or None."""
    flag = offline_flag_name(hub=True)
    if flag:
        return f"offline mode is on ({flag})"
    ok, reason = hub_reachable()
    return None if ok else reason


def hf_hub_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The Hugging Face Hub cache, resolved as huggingface_hub resolves it, but now (the library
    reads it once at import): ``cache_dir``, else ``$HF_HUB_CACHE``, else the older
    ``$HUGGINGFACE_HUB_CACHE``, else ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``,
    else ``~/.cache/huggingface/hub``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name, "").strip():
            return Path(os.environ[name].strip()).expanduser()
    home = os.environ.get("HF_HOME", "").strip()
    if home:
        return Path(home).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


@contextlib.contextmanager
def socket_timeout(seconds: float = DOWNLOAD_SOCKET_TIMEOUT_S) -> Iterator[None]:
    """Bound every blocking socket operation inside (a server that accepts and never answers)."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def read_timeout() -> float:
    """The longest one wait for bytes may take (``DALA_NET_READ_TIMEOUT``, default 30 s)."""
    return env_float("DALA_NET_READ_TIMEOUT", DOWNLOAD_SOCKET_TIMEOUT_S, minimum=0.2)


def recent_http_failure(url: str) -> str | None:
    """Why a request to ``url``'s origin failed less than ``PROBE_TTL_S`` ago, or None."""
    hit = _http_failures.get(_origin(url))
    if hit and time.monotonic() - hit[0] < PROBE_TTL_S:
        return hit[1]
    return None


def clear_http_failures() -> None:
    _http_failures.clear()


def _origin(url: object) -> tuple[str, str, int]:
    u = urlparse(str(url))
    return u.scheme, (u.hostname or "").lower(), u.port or (443 if u.scheme == "https" else 80)


def _bounded_timeouts(timeout: dict | None) -> dict:
    """Cap httpx's per-request timeouts: connect/pool by ``network_timeout()``; read/write by what
    the caller asked (twice ``network_timeout()`` when it asked for none), at most ``read_timeout()``."""
    t = dict(timeout or {})
    conn, cap = network_timeout(), read_timeout()
    out = {k: min(t.get(k) or conn, conn) for k in ("connect", "pool")}
    out.update({k: min(t.get(k) or 2 * conn, cap) for k in ("read", "write")})
    return out


def bound_hf_http() -> bool:
    """Give huggingface_hub (process-wide, once) an HTTP client whose every request is bounded
    (:func:`_bounded_timeouts`) and whose retries stop after a network failure.

    A request that times out or cannot connect is remembered per origin for ``PROBE_TTL_S``; the
    library's retries of it (and any other request to that origin meanwhile) then fail at once with
    an ``OfflineModeIsEnabled`` subclass, which the library neither retries nor hides: it falls back
    to its cache as for offline mode. False when this huggingface_hub has no client factory."""
    global _hf_bounded
    if _hf_bounded:
        return True
    try:
        import httpx2
        from huggingface_hub import set_client_factory
        from huggingface_hub.errors import OfflineModeIsEnabled
        from huggingface_hub.utils import _http
    except ImportError:  # pragma: no cover - another huggingface_hub generation
        return False
    base_factory = getattr(_http, "default_client_factory", None)
    if base_factory is None:  # pragma: no cover
        return False

    class HubUnreachable(OfflineModeIsEnabled):
        """The origin failed moments ago: not contacted again (no retry storm)."""

    network_errors = (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError)

    def factory():
        client = base_factory()
        send = client.send

        def bounded_send(request, **kwargs):
            why = recent_http_failure(str(request.url))
            if why:
                raise HubUnreachable(f"{why}; not retried")
            timeouts = _bounded_timeouts(request.extensions.get("timeout"))
            request.extensions = {**request.extensions, "timeout": timeouts}
            try:
                response = send(request, **kwargs)
            except network_errors as exc:
                origin = f"{request.url.scheme}://{request.url.netloc.decode()}"
                if isinstance(exc, httpx2.TimeoutException):
                    why = f"{origin} gave no answer within {max(timeouts.values()):g} s ({type(exc).__name__})"
                else:
                    why = f"{origin}: {type(exc).__name__}: {exc}"[:240]
                _http_failures[_origin(request.url)] = (time.monotonic(), why)
                raise
            _http_failures.pop(_origin(request.url), None)
            return response

        client.send = bounded_send  # Client.request/stream call self.send: every request comes here
        return client

    set_client_factory(factory)
    _hf_bounded = True
    return True
