"""Who started a run, and who may control it: one mechanism for the laptop, the class server and
the hosted Space. UI-free: the app keeps the secret in the browser, this module only hashes it.

- Each browser holds a random secret token (a cookie the app sets; never in the address bar).
  The server only ever stores :func:`owner_id` of it, a one-way hash, so reading a run folder
  (or a shared screen) never reveals a token.
- Where a real login is configured (Streamlit's OIDC ``st.login``), the login's subject is hashed
  the same way instead, and ``DALA_TEACHERS`` (comma-separated e-mails) names the teachers.
- A run started from the app records its owner in ``owner.json`` in the run folder
  (:func:`write_owner`). Runs without one (started from the CLI or before owners existed) belong
  to the machine's user: anyone may control them locally, only a teacher when hosted.
- The teacher key (``DALA_TEACHER_KEY``), typed once per browser tab, unlocks every run.
- Hosted, each owner's runs live in their own folder (:func:`dala.hosting.visitor_runs_root`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from dala.io import atomic_write_json, read_json

OWNER_FILE = "owner.json"          # in a run folder: {"owner": <owner id>, "since": <time>}
TOKEN_COOKIE = "dala_token"        # the browser's secret (the app sets it; the server keeps only its hash)
TOKEN_MAX_AGE_S = 180 * 24 * 3600  # a term
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{32,128}$")
_OWNER_RE = re.compile(r"^u-[0-9a-f]{24}$")


def new_token() -> str:
    """A fresh browser secret (256 bits, URL- and cookie-safe)."""
    return secrets.token_urlsafe(32)


def valid_token(token: object) -> bool:
    return isinstance(token, str) and bool(_TOKEN_RE.match(token))


def owner_id(secret: str, *, kind: str = "token") -> str:
    """The one-way id stored in run folders and used as the hosted folder name (``u-`` + 24 hex).
    ``kind`` separates browser tokens from login subjects, so the two can never collide."""
    if not secret:
        raise ValueError("owner_id needs a token or a login subject")
    return "u-" + hashlib.sha256(f"dala-owner/{kind}:{secret}".encode("utf-8")).hexdigest()[:24]


def valid_owner_id(value: object) -> bool:
    return isinstance(value, str) and bool(_OWNER_RE.match(value))


# ----------------------------------------------------------------------------- teachers
def teacher_key_configured() -> bool:
    return bool(os.environ.get("DALA_TEACHER_KEY", "").strip())


def check_teacher_key(key: str | None) -> bool:
    """Whether ``key`` is the server's ``DALA_TEACHER_KEY`` (constant-time; none set: never)."""
    want = os.environ.get("DALA_TEACHER_KEY", "").strip()
    return bool(want) and hmac.compare_digest(str(key or "").strip().encode("utf-8"), want.encode("utf-8"))


def teacher_emails() -> frozenset[str]:
    """``DALA_TEACHERS``: the logins (e-mails, any case) that are teachers when OIDC login is on."""
    raw = os.environ.get("DALA_TEACHERS", "")
    return frozenset(e.strip().lower() for e in raw.split(",") if e.strip())


# ----------------------------------------------------------------------------- run owners
def _run_path(run) -> Path:
    return Path(getattr(run, "path", run))


def write_owner(run_dir, owner: str) -> Path:
    """Record ``owner`` (an :func:`owner_id`, never a token) in the run folder."""
    if not valid_owner_id(owner):
        raise ValueError(f"not an owner id: {owner!r} (use dala.identity.owner_id)")
    return atomic_write_json(_run_path(run_dir) / OWNER_FILE, {"owner": owner, "since": time.time()})


def read_owner(run) -> str | None:
    """The run's owner id, or None (no owner file, or a damaged one: treated as unowned)."""
    try:
        data = read_json(_run_path(run) / OWNER_FILE, None, expect=dict)
    except (ValueError, OSError):
        return None
    owner = (data or {}).get("owner")
    return owner if valid_owner_id(owner) else None


@dataclass(frozen=True)
class Identity:
    """This browser (or login): ``owner_id`` for run folders, ``is_teacher``, and the rules."""

    owner_id: str
    is_teacher: bool = False
    via_login: bool = False
    display_name: str = ""
    hosted: bool = False

    def owns(self, run) -> bool:
        return read_owner(run) == self.owner_id

    def owner_of(self, run) -> str:
        """"you", "unowned" (CLI or older run) or "another student"."""
        owner = read_owner(run)
        if owner is None:
            return "unowned"
        return "you" if owner == self.owner_id else "another student"

    def can_control(self, run) -> bool:
        """Pause / resume / stop / delete: your own runs; every run in teacher mode; runs with no
        owner (CLI, older) locally only."""
        if self.is_teacher:
            return True
        owner = read_owner(run)
        if owner is None:
            return not self.hosted
        return owner == self.owner_id

    def can_see(self, run) -> bool:
        """Listed at all (read-only if not :meth:`can_control`). Hosted, other visitors' runs are
        in other folders and never listed; locally every run is visible."""
        return self.is_teacher or not self.hosted or self.owns(run)

    @property
    def short(self) -> str:
        return self.owner_id[2:8]

    @property
    def teacher_key_configured(self) -> bool:
        return teacher_key_configured()

    def describe(self) -> str:
        """One line for the sidebar."""
        who = f"Signed in as **{self.display_name}**" if self.via_login else f"This browser: student `{self.short}`"
        if self.is_teacher:
            return who + " · **teacher mode**: every run, with its controls."
        return who + " · your runs have controls; others' runs are read-only."
