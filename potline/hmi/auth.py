"""HMI logins: the OPC UA mirror's users, roles and scrypt hashes; sessions; CSRF tokens.

* Users are ``plc_bridge.opcua_security.UserEntry`` (role ``operator`` | ``viewer``, a
  salted scrypt hash); passwords are checked with ``verify_password`` in a worker thread
  (~50 ms of scrypt must not stall the event loop). An unknown user costs the same check
  against a dummy hash, so timing does not tell which names exist.
* Five failed logins of a name within ``LOCKOUT_WINDOW_S`` lock it for ``LOCKOUT_S``.
* Per source (the client's IP address) and per name over all sources, the OPC UA
  mirror's back-off and lockout apply (``plc_bridge.opcua_security.LoginGuard`` with the
  mirror's ``[opcua.security.login]`` policy): after ``backoff_after`` failures a source
  must wait (doubling), after ``lockout_after`` it is locked until quiet for ``lockout_s``;
  a refused attempt is not checked and counts as another failure of its source.
* A session is a random 256-bit id (the cookie: HttpOnly, SameSite=Strict) with its own
  CSRF token; it expires after ``idle_s`` without a request. Sessions live in memory: a
  daemon restart logs everyone out.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from plc_bridge.opcua_security import LoginGuard, LoginPolicy, hash_password, verify_password

if TYPE_CHECKING:
    from plc_bridge.opcua_security import UserEntry

__all__ = ["Auth", "Session"]

Role = Literal["operator", "viewer"]
#: failed logins of one name that lock it, within this window [wall s], and for how long [wall s]
LOCKOUT_FAILURES, LOCKOUT_WINDOW_S, LOCKOUT_S = 5, 300.0, 60.0
#: a bound on live sessions (the oldest idle one goes first)
MAX_SESSIONS = 1000


@dataclass(slots=True)
class Session:
    """A logged-in user."""

    id: str
    user: str
    role: Role
    csrf: str
    created: float
    last_seen: float

    @property
    def operator(self) -> bool:
        return self.role == "operator"


@dataclass
class Auth:
    """Logins and sessions (see the module docstring).

    Args:
        users: user name -> ``UserEntry`` (the mirror's ``[opcua.security.users]``).
        anonymous: "read_only" (no login needed to look) or "refuse" (log in to see anything).
        idle_s: a session ends after this long without a request [wall s].
        clock: monotonic wall clock [s] (tests pass their own).
        policy: back-off and lockout per source and name (the mirror's ``LoginPolicy``).
    """

    users: Mapping[str, UserEntry]
    anonymous: Literal["read_only", "refuse"] = "read_only"
    idle_s: float = 8 * 3600.0
    clock: Callable[[], float] = time.monotonic
    policy: LoginPolicy | None = None
    _guard: LoginGuard = field(init=False)
    _sessions: dict[str, Session] = field(default_factory=dict, init=False)
    _failures: dict[str, deque[float]] = field(default_factory=dict, init=False)
    _locked_until: dict[str, float] = field(default_factory=dict, init=False)
    _dummy_hash: str = field(default="", init=False)

    def __post_init__(self) -> None:
        self._guard = LoginGuard(self.policy, clock=self.clock)

    def refused(self, user: str, source: str) -> str | None:
        """Why a login of ``user`` from ``source`` is refused unchecked (None: check it)."""
        if self.locked(user):
            return "too many failed logins of this name: try again in a minute"
        return self._guard.admit(user, source)

    def source_locked(self, source: str) -> bool:
        """Is ``source`` locked out (the per-source lockout)?"""
        return self._guard.locked(source=source)

    async def login(self, user: str, password: str, source: str = "local") -> Session | None:
        """A new session when ``password`` is ``user``'s; None otherwise (or while the name or
        ``source``, the client's address, is locked or backing off: see ``refused``)."""
        now = self.clock()
        if self.refused(user, source) is not None:
            return None
        entry = self.users.get(user)
        if entry is None:
            if not self._dummy_hash:
                self._dummy_hash = await asyncio.to_thread(hash_password, secrets.token_hex(8))
            stored = self._dummy_hash
        else:
            stored = entry.password_hash
        ok = await asyncio.to_thread(verify_password, password, stored)
        now = self.clock()
        if not ok or entry is None:
            self._guard.failed(user, source)
            fails = self._failures.setdefault(user, deque())
            fails.append(now)
            while fails and fails[0] < now - LOCKOUT_WINDOW_S:
                fails.popleft()
            if len(fails) >= LOCKOUT_FAILURES:
                self._locked_until[user] = now + LOCKOUT_S
                fails.clear()
            return None
        self._failures.pop(user, None)
        self._guard.succeeded(user, source)
        if len(self._sessions) >= MAX_SESSIONS:
            oldest = min(self._sessions.values(), key=lambda s: s.last_seen)
            del self._sessions[oldest.id]
        s = Session(secrets.token_urlsafe(32), user, entry.role, secrets.token_urlsafe(32), now, now)
        self._sessions[s.id] = s
        return s

    def locked(self, user: str) -> bool:
        """Is ``user`` locked out after failed logins?"""
        return self._locked_until.get(user, 0.0) > self.clock()

    def session(self, sid: str | None) -> Session | None:
        """The live session ``sid`` (touched), or None."""
        if not sid:
            return None
        s = self._sessions.get(sid)
        if s is None:
            return None
        now = self.clock()
        if now - s.last_seen > self.idle_s:
            del self._sessions[sid]
            return None
        s.last_seen = now
        return s

    def logout(self, sid: str | None) -> None:
        if sid:
            self._sessions.pop(sid, None)

    @staticmethod
    def csrf_ok(session: Session, token: str | None) -> bool:
        """Does ``token`` match the session's CSRF token (constant time)?"""
        return bool(token) and hmac.compare_digest(session.csrf.encode(), str(token).encode())
