"""How dala.hub contacts the Hub: the offline gate, the deadline on every call, and the one
translation of huggingface_hub's exceptions into a :class:`~dala.errors.HubError` that names the
repo, the endpoint and the fix.

Offline-first everywhere: callers read the local cache first (``local_files_only=True``) and only
then ask :func:`offline_reason` whether the network may be used (``DALA_OFFLINE=1``: no network at
all; ``HF_HUB_OFFLINE=1``: not the Hub; else one cached TCP probe, see :mod:`dala.net`). Every
network call runs inside :func:`bounded` (``dala.net.bound_hf_http`` + ``socket_timeout``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from dala import net
from dala.errors import DalaError, HubError
from dala.hub.repos import where

UNSET_FLAGS = "unset DALA_OFFLINE and HF_HUB_OFFLINE"


def offline_reason() -> str | None:
    """Why the Hub cannot be used now (a flag, or an unreachable endpoint), or None."""
    return net.hub_offline_reason()


def etag_timeout() -> float:
    """Seconds huggingface_hub may wait for a file's metadata (its own default is 10 s, then a 60 s retry)."""
    return net.network_timeout()


@contextlib.contextmanager
def bounded() -> Iterator[None]:
    """Every request inside is bounded and not retried after a network failure."""
    net.bound_hf_http()
    with net.socket_timeout(net.read_timeout()):
        yield


def root_reason(exc: BaseException) -> str:
    """The first line of the deepest cause (huggingface_hub wraps a timeout in a generic message)."""
    seen, cur = [], exc
    while cur is not None and cur not in seen:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    deepest = seen[-1]
    text = (str(deepest).strip().splitlines() or [""])[0][:240]
    if type(deepest).__name__ == "HubUnreachable":  # dala.net's own, already worded for people
        return text
    return f"{type(deepest).__name__}: {text}" if text else type(deepest).__name__


def not_cached_error(repo_id: str, revision: str | None, subfolder: str | None, cache: Path, reason: str,
                     *, repo_type: str = "model") -> HubError:
    if net.offline_flag_name(hub=True):
        online_fix = f"connect to the internet ({UNSET_FLAGS}) to download it once"
    else:
        online_fix = (f"check the connection to {net.hub_endpoint()} (HF_ENDPOINT, HTTPS_PROXY) and try again "
                      "to download it once")
    fix = f"{online_fix} - later loads work offline - or copy a Hub cache that holds it into {cache}"
    if repo_type == "model":
        fix += ", or load a local checkpoint folder instead"
    return HubError(f"Hub {where(repo_id, revision, subfolder, repo_type)} is not in the local cache and the Hub "
                    f"({net.hub_endpoint()}) cannot be reached ({reason}). Fix: {fix}.")


def is_network_failure(exc: BaseException) -> bool:
    """A connection that failed, timed out, or was refused by offline mode (not an answer from the Hub)."""
    from huggingface_hub import errors as E

    if isinstance(exc, (E.LocalEntryNotFoundError, E.OfflineModeIsEnabled, ConnectionError, TimeoutError)):
        return True
    name = type(exc).__name__
    return "Connect" in name or "Timeout" in name or "Network" in name or "Protocol" in name


def hub_error(exc: BaseException, repo_id: str, revision: str | None, subfolder: str | None, cache: Path,
              *, repo_type: str = "model", filename: str | None = None) -> DalaError:
    """Turn a huggingface_hub exception into one clear HubError."""
    from huggingface_hub import errors as E

    if isinstance(exc, DalaError):
        return exc
    at = where(repo_id, revision, subfolder, repo_type)
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    endpoint = net.hub_endpoint()
    if isinstance(exc, E.GatedRepoError):
        return HubError(f"Hub repo {repo_id} is gated: accept its terms on {endpoint}/{repo_id} and log in "
                        "(`hf auth login` or HF_TOKEN)")
    if isinstance(exc, E.RepositoryNotFoundError):
        kind = "dataset " if repo_type == "dataset" else ""
        return HubError(f"Hub {kind}repo {repo_id!r} does not exist or is private; check the id, or log in "
                        "(`hf auth login` or HF_TOKEN) if it is yours and private")
    if isinstance(exc, E.RevisionNotFoundError):
        return HubError(f"revision {revision!r} does not exist in Hub repo {repo_id}; use a branch, tag or commit "
                        "hash that exists (e.g. 'main')")
    if isinstance(exc, E.RemoteEntryNotFoundError) or (isinstance(exc, E.EntryNotFoundError)
                                                       and not isinstance(exc, E.LocalEntryNotFoundError)):
        name = f"{subfolder}/{filename}" if subfolder and filename else (filename or "that file")
        return HubError(f"Hub {at} has no {name}; `python -m dala hub ls {repo_id}` lists the checkpoint "
                        "folders it offers (pass one as --subfolder)")
    if is_network_failure(exc):
        return not_cached_error(repo_id, revision, subfolder, cache, root_reason(exc), repo_type=repo_type)
    if isinstance(exc, E.HfHubHTTPError):
        code = getattr(getattr(exc, "response", None), "status_code", None)
        if code in (401, 403):
            return HubError(f"the Hub refused access to {at} (HTTP {code}); log in with a token that may "
                            "read/write it (`hf auth login` or HF_TOKEN)")
        return HubError(f"the Hub ({endpoint}) answered an error for {at}: {first}")
    return HubError(f"could not get {at} from the Hub at {endpoint} ({type(exc).__name__}: {first}); check "
                    "HF_ENDPOINT and your network, or set DALA_OFFLINE=1 to work from the local cache")
