"""OPC UA security for our servers and clients: endpoints, certificates, users, roles.

What this module enforces (see ``OpcUaSecurityConfig``):

* Endpoints: Basic256Sha256 ``Sign`` and ``SignAndEncrypt``; ``NoSecurity`` only when
  ``allow_no_security`` is set. The listener binds to 127.0.0.1 unless configured.
* Server certificate + private key are generated on first start into ``state_dir``
  (``asyncua.crypto.cert_gen.setup_self_signed_certificate``) and reused afterwards
  (regenerated only when missing, expired, or issued for another host/URI).
* Username/password login against salted scrypt hashes kept in the config (never
  plaintext). Create a hash with ``python -m plc_bridge.opcua_security``.
* Roles: ``operator`` (asyncua ``UserRole.User``: may write writable variables and call
  protected methods such as ``SetMode``) and ``viewer`` (asyncua ``UserRole.Anonymous``:
  browse, read, subscribe, history). Anonymous clients are refused or get the viewer
  rights (``anonymous = "refuse" | "read_only"``). No remote client ever gets
  ``UserRole.Admin`` (address-space changes). A non-operator write is answered with
  ``BadUserAccessDenied``.
* User names and passwords only over SignAndEncrypt: the Sign and None endpoints offer
  the anonymous token only, and a user-name token arriving on another channel is refused
  (``BadIdentityTokenRejected``) before any password is looked at. So a config with users
  needs ``sign_and_encrypt = true`` (``login_problems``; the daemon's check-config and the
  server start refuse it otherwise).
* Guessing is slowed and stopped (``LoginGuard``, ``LoginPolicy``): per source (the
  client's IP address) a back-off after ``backoff_after`` failures (attempts inside the
  wait are refused unchecked and count as failures) and a lockout after
  ``lockout_after`` for ``lockout_s`` of quiet; per user name (across sources) a back-off
  after ``user_backoff_after`` and a lockout after ``user_lockout_after`` failed checks,
  neither applied to a source this user has logged in from before. An unknown user
  costs the same scrypt work as a wrong password (checked against a dummy hash).
* Refused logins and denied writes/calls go to a callback as rate-limited summaries
  (``SecurityAudit``: the first of a kind per user and source at once, the rest counted
  per window), for the daemon's journal.
* Listener limits: ``max_connections``, ``activation_timeout_s`` (a connection without a
  session closes), ``session_timeout_max_s`` (an idle session and its connection close).

The permission check runs before every service request (``RolePermissions``); it also
records the requesting user in a context variable, so method handlers can tell who
called them (``current_user()``).
"""

from __future__ import annotations

import base64
import contextvars
import functools
import hashlib
import hmac
import os
import secrets
import socket
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO, cast

import structlog
from pydantic import Field, field_validator

from twin.configcore import StrictModel

if TYPE_CHECKING:  # asyncua is imported lazily: the CLI imports this module cheaply
    from asyncua import Client, Server
    from asyncua.server.user_managers import UserManager

__all__ = [
    "ClientSecurity",
    "LoginGuard",
    "LoginPolicy",
    "OpcUaSecurityConfig",
    "RolePermissions",
    "SecurityAudit",
    "SecurityEvent",
    "UserEntry",
    "certificate_problems",
    "configure_server_security",
    "current_user",
    "ensure_certificate",
    "hash_password",
    "log_client_trust",
    "read_new_password",
    "trust_problems",
    "verify_password",
]

log = structlog.get_logger(__name__)

Role = Literal["operator", "viewer"]

#: scrypt cost parameters for new hashes (n=2**14, r=8, p=1: ~16 MiB, ~50 ms per check)
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
_SCRYPT_MAXMEM = 64 * 1024 * 1024


# --------------------------------------------------------------------------- passwords


def hash_password(password: str, *, n: int = _SCRYPT_N, r: int = _SCRYPT_R, p: int = _SCRYPT_P) -> str:
    """Salted scrypt hash of ``password`` as ``scrypt$n$r$p$<salt b64>$<hash b64>``."""
    if not password:
        raise ValueError("password must not be empty")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32, maxmem=_SCRYPT_MAXMEM)
    b64 = base64.b64encode
    return f"scrypt${n}${r}${p}${b64(salt).decode()}${b64(digest).decode()}"


def _parse_hash(stored: str) -> tuple[int, int, int, bytes, bytes]:
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("expected 'scrypt$n$r$p$salt$hash' (make one with `python -m plc_bridge.opcua_security`)")
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, digest = base64.b64decode(parts[4], validate=True), base64.b64decode(parts[5], validate=True)
    except ValueError as exc:
        raise ValueError(f"malformed scrypt hash: {exc}") from None
    if n < 2 or n & (n - 1) or r < 1 or p < 1 or len(salt) < 8 or not digest:
        raise ValueError("scrypt hash has invalid parameters")
    return n, r, p, salt, digest


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches the scrypt hash ``stored`` (constant-time compare)."""
    try:
        n, r, p, salt, digest = _parse_hash(stored)
    except ValueError:
        return False
    candidate = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=len(digest), maxmem=_SCRYPT_MAXMEM)
    return hmac.compare_digest(candidate, digest)


# --------------------------------------------------------------------------- config


class UserEntry(StrictModel):
    """One OPC UA login: a role and the scrypt hash of the password (never plaintext)."""

    role: Role = "viewer"
    password_hash: str

    @field_validator("password_hash")
    @classmethod
    def _check_hash(cls, value: str) -> str:
        _parse_hash(value)
        return value


class LoginPolicy(StrictModel):
    """How password guessing is slowed and stopped (a ``[opcua.security.login]`` table).

    A *source* is the client's IP address. Failures of a source are counted whatever the
    user name; failures of a user name are counted over every source (checked passwords
    only). A count is forgotten after ``lockout_s`` without a failure.
    """

    backoff_after: int = Field(5, ge=1, le=1000, description="failures of a source before its attempts must wait")
    backoff_base_s: float = Field(1.0, gt=0.0, le=600.0, description="first wait [s]; doubles with every failure")
    backoff_max_s: float = Field(60.0, gt=0.0, le=3600.0, description="longest wait [s]")
    lockout_after: int = Field(20, ge=1, le=10000, description="failures that lock a source out")
    lockout_s: float = Field(
        900.0, gt=0.0, le=86400.0, description="a locked source stays locked until quiet this long"
    )
    user_backoff_after: int = Field(
        20, ge=1, le=10000, description="failed checks of one user name (all sources) before its logins must wait"
    )
    user_lockout_after: int = Field(
        100, ge=1, le=100000, description="failed checks that lock a user name out (except where it logged in before)"
    )
    max_tracked: int = Field(10000, ge=10, le=1_000_000, description="sources and user names remembered at most")


class OpcUaSecurityConfig(StrictModel):
    """Security settings of one OPC UA server (a ``[opcua.security]`` TOML table).

    Attributes:
        state_dir: directory for the generated server certificate and key (created 0700).
        host: interface to bind; 127.0.0.1 unless the plant network needs another.
        hostname: name put into the certificate (defaults to this machine's hostname).
        application_uri: OPC UA ApplicationUri, also written into the certificate.
        sign: offer the Basic256Sha256 Sign endpoint.
        sign_and_encrypt: offer the Basic256Sha256 SignAndEncrypt endpoint.
        allow_no_security: also offer the NoSecurity endpoint (lab / loopback only).
        anonymous: "refuse" (default) or "read_only" for clients without a login.
        users: user name -> role and password hash.
        trusted_client_certs_dir: when set, only client certificates found there are accepted.
        trust_any_client_certificate: accept any client certificate (a lab opt-in, logged
            loudly at every start); with certificate endpoints and neither this nor
            ``trusted_client_certs_dir`` nothing vouches for a client: ``trust_problems(
            require=True)`` says so, and the daemon's config refuses it.
        login: back-off and lockout of password logins (``LoginPolicy``).
        max_connections: client connections at once (more are refused at connect).
        activation_timeout_s: a connection without an activated session is closed after this [s].
        session_timeout_max_s: longest session timeout granted [s]: a session (and its
            connection) idle this long is closed.
    """

    state_dir: Path
    host: str = "127.0.0.1"
    hostname: str | None = None
    application_uri: str = "urn:potline-twin:mirror:server"
    sign: bool = True
    sign_and_encrypt: bool = True
    allow_no_security: bool = False
    anonymous: Literal["refuse", "read_only"] = "refuse"
    users: dict[str, UserEntry] = Field(default_factory=dict)
    trusted_client_certs_dir: Path | None = None
    trust_any_client_certificate: bool = False
    login: LoginPolicy = LoginPolicy()
    max_connections: int = Field(64, ge=1, le=10000)
    activation_timeout_s: float = Field(10.0, gt=0.0, le=600.0)
    session_timeout_max_s: float = Field(600.0, ge=10.0, le=86400.0)

    def login_problems(self) -> list[tuple[str, str]]:
        """(key, message) of every way this config contradicts the login rule: user names and
        passwords only over SignAndEncrypt; the NoSecurity endpoint serves anonymous clients only."""
        out: list[tuple[str, str]] = []
        if self.users and not self.sign_and_encrypt:
            names = ", ".join(sorted(self.users)[:5]) + (", ..." if len(self.users) > 5 else "")
            out.append(("sign_and_encrypt", f"expected true while users are configured ({names}): user names and "
                        "passwords are accepted only over SignAndEncrypt (rule: no login over an unencrypted "
                        "channel; the Sign and None endpoints offer anonymous access only), got false"))  # fmt: skip
        if self.allow_no_security and self.anonymous == "refuse":
            out.append(("allow_no_security", 'expected false with anonymous = "refuse": the NoSecurity endpoint '
                        "offers anonymous access only (no user name over an unencrypted channel), so nobody could "
                        "use it, got true"))  # fmt: skip
        return out

    @property
    def cert_path(self) -> Path:
        """Server certificate (DER)."""
        return self.state_dir / "server_cert.der"

    @property
    def key_path(self) -> Path:
        """Server private key (PEM, mode 0600)."""
        return self.state_dir / "server_key.pem"

    def policy_types(self) -> list[Any]:
        """The asyncua ``SecurityPolicyType`` list this config asks for (strongest first)."""
        from asyncua import ua

        policies = []
        if self.sign_and_encrypt:
            policies.append(ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt)
        if self.sign:
            policies.append(ua.SecurityPolicyType.Basic256Sha256_Sign)
        if self.allow_no_security:
            policies.append(ua.SecurityPolicyType.NoSecurity)
        if not policies:
            raise ValueError("opcua security: no endpoint left (enable sign, sign_and_encrypt or allow_no_security)")
        return policies


# --------------------------------------------------------------------------- certificates


def certificate_problems(cert: Path, key: Path | None = None, *, now: datetime | None = None) -> list[str]:
    """What is wrong with certificate file ``cert`` (DER or PEM) and, given, its private key
    ``key`` (PEM or DER): unreadable, not a certificate or key, expired or not yet valid,
    a key that does not belong to the certificate. Each message names the file."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    out: list[str] = []
    try:
        data = cert.read_bytes()
    except FileNotFoundError:
        return [f"{cert}: not found"]
    except OSError as exc:
        return [f"{cert}: unreadable ({exc.strerror or exc})"]
    try:
        c = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    except ValueError:
        return [f"{cert}: expected an X.509 certificate (DER or PEM), not one"]
    now = now or datetime.now(UTC)
    if c.not_valid_after_utc < now:
        out.append(f"{cert}: expired on {c.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    elif c.not_valid_before_utc > now:
        out.append(f"{cert}: not valid before {c.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    if key is not None:
        try:
            kdata = key.read_bytes()
        except FileNotFoundError:
            return [*out, f"{key}: not found"]
        except OSError as exc:
            return [*out, f"{key}: unreadable ({exc.strerror or exc})"]
        try:
            k = (serialization.load_pem_private_key(kdata, None) if b"-----BEGIN" in kdata
                 else serialization.load_der_private_key(kdata, None))  # fmt: skip
        except (ValueError, TypeError):
            return [*out, f"{key}: expected an unencrypted private key (PEM or DER), not one"]
        fmt = serialization.PublicFormat.SubjectPublicKeyInfo
        if k.public_key().public_bytes(serialization.Encoding.DER, fmt) != c.public_key().public_bytes(
            serialization.Encoding.DER, fmt
        ):
            out.append(f"{key}: the private key does not belong to {cert}")
    return out


def trust_problems(cfg: OpcUaSecurityConfig, *, require: bool = False) -> list[tuple[str, str]]:
    """(key, message) of every trust-store problem of a server's security config.

    ``trusted_client_certs_dir``: missing, not a directory, empty (no client could connect),
    or holding an unreadable, malformed, expired or not-yet-valid certificate. The server's
    own certificate and key in ``state_dir`` when present: expired, malformed, or a key that
    does not belong to the certificate. ``trust_any_client_certificate`` together with a
    trust directory is a contradiction. ``require``: a server with certificate endpoints
    and neither a trust directory nor the lab opt-in is a problem too (the secure default
    of servers that have no earlier configs to honour, e.g. a rig's PLC).
    """
    out: list[tuple[str, str]] = []
    d = cfg.trusted_client_certs_dir
    certs = cfg.sign or cfg.sign_and_encrypt
    if d is not None and cfg.trust_any_client_certificate:
        out.append(("trust_any_client_certificate", f"expected false with trusted_client_certs_dir = {str(d)!r} "
                    "(trust the certificates there, or any: not both), got true"))  # fmt: skip
    if d is not None:
        if not d.exists():
            out.append(("trusted_client_certs_dir", f"{d}: expected a directory of trusted client certificates "
                        "(DER or PEM), not found"))  # fmt: skip
        elif not d.is_dir():
            out.append(("trusted_client_certs_dir", f"{d}: expected a directory, found a file"))
        else:
            try:
                files = sorted(f for f in d.iterdir() if f.is_file())
            except OSError as exc:
                files = []
                out.append(("trusted_client_certs_dir", f"{d}: unreadable ({exc.strerror or exc})"))
            else:
                if not files:
                    out.append(("trusted_client_certs_dir", f"{d}: expected at least one trusted client "
                                "certificate (DER or PEM), the directory is empty: no client could connect"))  # fmt: skip
            for f in files:
                out += [("trusted_client_certs_dir", m) for m in certificate_problems(f)]
    elif require and certs and not cfg.trust_any_client_certificate:
        out.append(("trusted_client_certs_dir", "expected a directory of trusted client certificates: without it "
                    "any client certificate would be accepted (set trust_any_client_certificate = true only "
                    "in a lab)"))  # fmt: skip
    if certs and cfg.cert_path.exists():
        key = cfg.key_path if cfg.key_path.exists() else None
        probs = certificate_problems(cfg.cert_path, key)
        # an expired server certificate is regenerated at start; anything else is not
        out += [("state_dir", m) for m in probs if " expired on " not in m]
    return out


def log_client_trust(cfg: OpcUaSecurityConfig, server: str) -> None:
    """Say loudly, at every start, when client certificates are not checked against a trust list."""
    if not (cfg.sign or cfg.sign_and_encrypt) or cfg.trusted_client_certs_dir is not None:
        return
    if cfg.trust_any_client_certificate:
        log.warning("opcua.client_certificates_trusted_blindly", server=server,
                    detail="trust_any_client_certificate = true: ANY client certificate is accepted "
                    "(lab opt-in; set trusted_client_certs_dir on a plant network)")  # fmt: skip
    else:
        log.warning("opcua.client_certificates_not_verified", server=server,
                    detail="no trusted_client_certs_dir: any client certificate is accepted; set it (or "
                    "trust_any_client_certificate = true to say this is a lab)")  # fmt: skip


async def ensure_certificate(
    cert_path: Path,
    key_path: Path,
    application_uri: str,
    hostname: str | None = None,
    *,
    server: bool = True,
    common_name: str = "potline-twin",
) -> bool:
    """Create a self-signed application certificate + key unless valid ones exist.

    Returns True when new files were written. The key file is made readable by the
    owner only. Existing files are reused as long as they are valid for
    ``application_uri`` and ``hostname`` (asyncua regenerates expired ones).
    """
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID

    hostname = hostname or socket.gethostname()
    cert_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    before = _fingerprint(cert_path), _fingerprint(key_path)
    usage = [ExtendedKeyUsageOID.SERVER_AUTH] if server else [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        usage.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    await setup_self_signed_certificate(
        key_path,
        cert_path,
        application_uri,
        hostname,
        usage,
        {"commonName": common_name, "organizationName": "potline-twin"},
    )
    os.chmod(key_path, 0o600)
    created = (_fingerprint(cert_path), _fingerprint(key_path)) != before
    if created:
        log.info("opcua.certificate_created", cert=str(cert_path), application_uri=application_uri)
    return created


def _fingerprint(path: Path) -> bytes | None:
    try:
        return hashlib.sha256(path.read_bytes()).digest()
    except FileNotFoundError:
        return None


# --------------------------------------------------------------------------- users and roles

_current_user: contextvars.ContextVar[str | None] = contextvars.ContextVar("opcua_current_user", default=None)


def current_user() -> str | None:
    """Name of the OPC UA user whose request is being served (inside method handlers)."""
    return _current_user.get()


# --------------------------------------------------------------------------- who is logging in, and how

#: (source, channel encrypted) of the ActivateSession being served (set around asyncua's call)
_login_channel: contextvars.ContextVar[tuple[str, bool] | None] = contextvars.ContextVar(
    "opcua_login_channel", default=None
)


def _printable(text: str | None, limit: int = 64) -> str | None:
    """A client-supplied name fit for a log line or a journal row (bounded, no control characters)."""
    if text is None:
        return None
    clean = "".join(ch if ch.isprintable() else "?" for ch in text[:limit])
    return clean + ("..." if len(text) > limit else "")


@dataclass(frozen=True, slots=True)
class SecurityEvent:
    """A summary of refused logins or denied requests, for the journal.

    Attributes:
        kind: ``login_failed`` (wrong password or unknown user), ``login_refused`` (not
            checked: back-off, lockout, a user name over an unencrypted channel, anonymous
            refused), ``write_denied``, ``call_denied`` (e.g. SetMode by a viewer).
        user: the user name given (bounded, printable), None for anonymous.
        source: the client's IP address.
        count: how many of this kind, user and source this summary stands for.
        first_mono, last_mono: monotonic times of the first and last of them [s].
        detail: the reason of the last one.
    """

    kind: str
    user: str | None
    source: str | None
    count: int
    first_mono: float
    last_mono: float
    detail: str

    def journal_fields(self) -> dict[str, Any]:
        """Keyword arguments of a journal entry (``potline.journal.Journal.append``): kind
        ``opcua_<kind>``, source ``opcua``, the user, a one-line detail and ``data`` with the
        client address, the count and the span [monotonic s]."""
        span = self.last_mono - self.first_mono
        many = f"{self.count} x " if self.count > 1 else ""
        return {
            "kind": f"opcua_{self.kind}",
            "source": "opcua",
            "user": self.user,
            "detail": f"{many}{self.detail} (from {self.source}" + (f", over {span:.0f} s)" if self.count > 1 else ")"),
            "data": {"client": self.source, "count": self.count, "span_s": round(span, 3)},
        }


class SecurityAudit:
    """Rate-limited summaries of security events, handed to ``sink``.

    The first event of a (kind, user, source) in a window goes to ``sink`` at once
    (count 1); the ones after it within ``window_s`` are counted and handed over as one
    summary when the window has passed (``flush``, called periodically and at stop). At
    most ``max_keys`` keys are kept per window; more are summed under user and source ``*``.
    ``sink`` errors are logged, never raised.
    """

    def __init__(self, sink: Callable[[SecurityEvent], None] | None = None, *, window_s: float = 60.0,
                 max_keys: int = 1000, clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.sink = sink
        self.window_s = float(window_s)
        self.max_keys = int(max_keys)
        self.clock = clock
        #: every event recorded, by kind (whatever was summarised)
        self.totals: Counter[str] = Counter()
        self._open: dict[tuple[str, str | None, str | None], list[Any]] = {}  # key -> [start, n, first, last, detail]

    def record(self, kind: str, user: str | None, source: str | None, detail: str) -> None:
        now = self.clock()
        self.totals[kind] += 1
        user = _printable(user)
        key = (kind, user, source)
        if key not in self._open and len(self._open) >= self.max_keys:
            key = (kind, "*", "*")
        slot = self._open.get(key)
        if slot is None:
            self._open[key] = [now, 0, now, now, detail]
            self._emit(SecurityEvent(kind, key[1], key[2], 1, now, now, detail))
            return
        slot[1] += 1
        if slot[1] == 1:
            slot[2] = now
        slot[3], slot[4] = now, detail

    def flush(self, *, force: bool = False) -> None:
        """Hand over the summaries of the windows that have passed (all of them with ``force``)."""
        now = self.clock()
        for key, (start, n, first, last, detail) in list(self._open.items()):
            if force or now - start >= self.window_s:
                del self._open[key]
                if n:
                    self._emit(SecurityEvent(key[0], key[1], key[2], n, first, last, detail))

    def _emit(self, ev: SecurityEvent) -> None:
        log.warning(f"opcua.{ev.kind}", user=ev.user, source=ev.source, count=ev.count, detail=ev.detail)
        if self.sink is not None:
            try:
                self.sink(ev)
            except Exception:
                log.exception("opcua.security_sink_failed", kind=ev.kind)


@dataclass(slots=True)
class _Count:
    failures: int = 0
    last: float = 0.0
    locked_until: float = 0.0


class LoginGuard:
    """Back-off and lockout of password logins per source and per user name (``LoginPolicy``).

    ``admit(user, source)`` before a password is checked: None to go ahead, else why the
    attempt is refused unchecked (it then counts as a failure of the source); ``failed``
    and ``succeeded`` after the check. Times are monotonic seconds (``clock``).
    """

    def __init__(self, policy: LoginPolicy | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy or LoginPolicy()
        self.clock = clock
        self._sources: OrderedDict[str, _Count] = OrderedDict()
        self._users: OrderedDict[str, _Count] = OrderedDict()
        self._known: OrderedDict[tuple[str, str], None] = OrderedDict()  # (user, source) that logged in

    def _get(self, table: OrderedDict[Any, _Count], key: Any, now: float) -> _Count:
        c = table.get(key)
        if c is None or (now - c.last > self.policy.lockout_s and now >= c.locked_until):
            c = _Count()
        table[key] = c
        table.move_to_end(key)
        while len(table) > self.policy.max_tracked:
            table.popitem(last=False)
        return c

    def _wait(self, c: _Count, after: int, now: float) -> float:
        """Seconds still to wait for counter ``c`` (back-off from ``after`` failures)."""
        if c.failures < after:
            return 0.0
        p = self.policy
        delay = min(p.backoff_base_s * 2.0 ** (c.failures - after), p.backoff_max_s)
        return max(0.0, c.last + delay - now)

    def _source_failed(self, c: _Count, now: float) -> None:
        c.failures += 1
        c.last = now
        if c.failures >= self.policy.lockout_after:
            c.locked_until = now + self.policy.lockout_s

    def admit(self, user: str, source: str) -> str | None:
        p, now = self.policy, self.clock()
        s = self._get(self._sources, source, now)
        if s.locked_until > now:
            self._source_failed(s, now)  # hammering a locked source keeps it locked
            return f"source {source} locked out ({s.failures} failures): quiet for {p.lockout_s:g} s to unlock"
        wait = self._wait(s, p.backoff_after, now)
        if wait > 0.0:
            self._source_failed(s, now)
            return f"source {source} backing off ({s.failures} failures): retry in {wait:.1f} s"
        if (user, source) in self._known:
            return None
        u = self._get(self._users, user, now)
        if u.locked_until > now:
            self._source_failed(s, now)
            return f"user locked out ({u.failures} failed checks) except from where it logged in before"
        wait = self._wait(u, p.user_backoff_after, now)
        if wait > 0.0:
            self._source_failed(s, now)
            return f"user backing off ({u.failures} failed checks): retry in {wait:.1f} s"
        return None

    def failed(self, user: str, source: str) -> None:
        now = self.clock()
        self._source_failed(self._get(self._sources, source, now), now)
        u = self._get(self._users, user, now)
        u.failures += 1
        u.last = now
        if u.failures >= self.policy.user_lockout_after:
            u.locked_until = now + self.policy.lockout_s

    def succeeded(self, user: str, source: str) -> None:
        self._known[(user, source)] = None
        self._known.move_to_end((user, source))
        while len(self._known) > self.policy.max_tracked:
            self._known.popitem(last=False)

    def locked(self, *, source: str | None = None, user: str | None = None) -> bool:
        """Whether ``source`` (or the user name ``user``) is locked out right now."""
        now = self.clock()
        c = self._sources.get(source) if source is not None else self._users.get(user or "")
        return c is not None and c.locked_until > now


def _dummy_hash(users: dict[str, UserEntry]) -> str:
    """A hash of a random password with the cost parameters most users have (unknown users
    are checked against it: the same scrypt work as a wrong password)."""
    params = Counter(_parse_hash(e.password_hash)[:3] for e in users.values())
    n, r, p = params.most_common(1)[0][0] if params else (_SCRYPT_N, _SCRYPT_R, _SCRYPT_P)
    return hash_password(secrets.token_urlsafe(24), n=n, r=r, p=p)


class HashedPasswordUserManager:
    """asyncua user manager: checks scrypt hashes, maps roles to ``UserRole`` (see the module
    docstring for the channel rule, the guard and the audit)."""

    def __init__(self, users: dict[str, UserEntry], anonymous_read_only: bool, *, guard: LoginGuard | None = None,
                 audit: SecurityAudit | None = None) -> None:  # fmt: skip
        self._users = dict(users)
        self._anonymous = anonymous_read_only
        self._dummy = _dummy_hash(self._users)
        self.guard = guard or LoginGuard()
        self.audit = audit or SecurityAudit()

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None, certificate: Any = None):
        from asyncua.common.utils import ServiceError
        from asyncua.crypto.permission_rules import UserRole

        source, encrypted = _login_channel.get() or ("unknown", False)
        if username is None:
            if self._anonymous:
                return _sourced_user(role=UserRole.Anonymous, name="anonymous", source=source)
            self.audit.record("login_refused", None, source, "anonymous access disabled")
            return None
        if not encrypted:
            self.audit.record("login_refused", username, source,
                              "user name over an unencrypted channel: only SignAndEncrypt takes one")  # fmt: skip
            raise ServiceError(ua_status("BadIdentityTokenRejected"))
        why = self.guard.admit(username, source)
        if why is not None:
            self.audit.record("login_refused", username, source, why)
            return None
        entry = self._users.get(username)
        # the same scrypt work whether the user exists or not: no user enumeration by timing
        ok = verify_password(password or "", entry.password_hash if entry is not None else self._dummy)
        if entry is None or not ok:
            self.guard.failed(username, source)
            self.audit.record("login_failed", username, source, "unknown user or wrong password")
            return None
        self.guard.succeeded(username, source)
        role = UserRole.User if entry.role == "operator" else UserRole.Anonymous
        log.info("opcua.login", user=username, role=entry.role, source=source)
        return _sourced_user(role=role, name=username, source=source)


def ua_status(name: str) -> int:
    """The numeric OPC UA StatusCode called ``name``."""
    from asyncua import ua

    return int(getattr(ua.StatusCodes, name))


@functools.cache
def _sourced_user_class() -> type[Any]:
    from asyncua.crypto.permission_rules import User

    @dataclass
    class SourcedUser(User):
        """asyncua's ``User`` with the address it logged in from."""

        source: str | None = None

    return SourcedUser


def _sourced_user(**kw: Any) -> Any:
    """asyncua's ``User(role, name)`` that also knows its ``source`` (asyncua stays a lazy import)."""
    return _sourced_user_class()(**kw)


class RolePermissions:
    """Service-level permission check (an asyncua ``PermissionRuleset``).

    Viewers and anonymous clients (``UserRole.Anonymous``) may open sessions, browse,
    read, subscribe and read history; ``Call`` is allowed for them except on the
    protected methods. Operators (``UserRole.User``) may also write and call protected
    methods. Node management (Admin) is not open to any remote client. Denied writes
    and calls go to ``audit`` (``write_denied``, ``call_denied`` with the method's name).
    """

    def __init__(self, protected_methods: set[Any] | None = None, audit: SecurityAudit | None = None) -> None:
        from asyncua import ua

        ids = ua.ObjectIds
        names = [
            "CreateSessionRequest", "ActivateSessionRequest", "CloseSessionRequest", "GetEndpointsRequest",
            "FindServersRequest", "CloseSecureChannelRequest", "ReadRequest", "BrowseRequest",
            "TranslateBrowsePathsToNodeIdsRequest", "RegisterNodesRequest", "UnregisterNodesRequest",
            "CreateSubscriptionRequest", "ModifySubscriptionRequest", "DeleteSubscriptionsRequest",
            "TransferSubscriptionsRequest", "SetPublishingModeRequest", "PublishRequest", "RepublishRequest",
            "CreateMonitoredItemsRequest", "ModifyMonitoredItemsRequest", "DeleteMonitoredItemsRequest",
            "SetMonitoringModeRequest", "HistoryReadRequest", "CallRequest",
        ]  # fmt: skip
        self._read = {ua.NodeId(ua.Int32(getattr(ids, f"{n}_Encoding_DefaultBinary"))) for n in names}
        self._write = ua.NodeId(ua.Int32(ids.WriteRequest_Encoding_DefaultBinary))
        self._call = ua.NodeId(ua.Int32(ids.CallRequest_Encoding_DefaultBinary))
        self.protected_methods: set[Any] = set(protected_methods or ())
        self.audit = audit or SecurityAudit()

    def check_validity(self, user: Any, action_type_id: Any, body: Any) -> bool:
        from asyncua import ua
        from asyncua.crypto.permission_rules import UserRole
        from asyncua.ua.ua_binary import struct_from_binary

        name = getattr(user, "name", None)
        _current_user.set(name)
        role = getattr(user, "role", UserRole.Anonymous)
        if role in (UserRole.User, UserRole.Admin):
            return action_type_id in self._read or action_type_id == self._write
        source = getattr(user, "source", None)
        if action_type_id == self._call and self.protected_methods:
            try:
                params = struct_from_binary(ua.CallParameters, body.copy())
            except Exception:  # undecodable request: refuse rather than guess
                return False
            hit = [m.MethodId for m in params.MethodsToCall or [] if m.MethodId in self.protected_methods]
            if hit:
                method = hit[0].Identifier if isinstance(hit[0].Identifier, str) else hit[0].to_string()
                self.audit.record("call_denied", name, source, f"{method} needs the operator role")
                return False
            return True
        if action_type_id == self._write:
            self.audit.record("write_denied", name, source, "writes need the operator role")
        return action_type_id in self._read


def _channel_of(server: Any, session: Any) -> tuple[str, bool]:
    """(client IP address, channel is SignAndEncrypt) of the connection serving ``session``.

    asyncua hands its user manager no connection; the listener's protocols know theirs
    (``bserver.clients[i].processor``: the session it serves, its channel's security
    policy, its peer). Not found (asyncua changed): the session's peer, not encrypted --
    a user name is then refused, never let through.
    """
    from asyncua import ua

    for proto in list(getattr(getattr(server, "bserver", None), "clients", ()) or ()):
        proc = getattr(proto, "processor", None)
        if proc is not None and getattr(proc, "session", None) is session:
            policy = getattr(getattr(proc, "_connection", None), "security_policy", None)
            mode = getattr(policy, "Mode", None)
            peer = getattr(proto, "peer_name", None)
            return (str(peer[0]) if peer else "unknown"), mode == ua.MessageSecurityMode.SignAndEncrypt
    peer = getattr(session, "name", None)
    return (str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"), False


def _install_login_channel(server: Any) -> None:
    """Make every external session's ActivateSession run with ``_login_channel`` set."""
    iserver = server.iserver
    create = iserver.create_session

    def create_session(name: Any, *args: Any, **kw: Any) -> Any:
        session = create(name, *args, **kw)
        activate = session.activate_session

        def activate_session(params: Any, peer_certificate: Any) -> Any:
            token = _login_channel.set(_channel_of(server, session))
            try:
                return activate(params, peer_certificate)
            finally:
                _login_channel.reset(token)

        session.activate_session = activate_session
        return session

    iserver.create_session = create_session


def _install_token_rule(server: Any) -> None:
    """Endpoints other than SignAndEncrypt offer no user-name token (only anonymous, if any)."""
    from asyncua import ua

    iserver = server.iserver
    add = iserver.add_endpoint

    def add_endpoint(edp: Any) -> Any:
        if edp.SecurityMode != ua.MessageSecurityMode.SignAndEncrypt:
            edp.UserIdentityTokens = [t for t in edp.UserIdentityTokens if t.TokenType != ua.UserTokenType.UserName]
        return add(edp)

    iserver.add_endpoint = add_endpoint


async def configure_server_security(
    server: Server, cfg: OpcUaSecurityConfig, audit: SecurityAudit | None = None
) -> RolePermissions:
    """Apply ``cfg`` to an initialised (``await server.init()``) asyncua server.

    Generates or reuses the certificate, loads it, selects endpoints, identity tokens
    (user names on SignAndEncrypt only), the user manager (with its ``LoginGuard``) and
    the role ruleset, the listener limits, and (optionally) a client-certificate trust
    store. Refused logins and denied requests go to ``audit``. Call before
    ``server.start()``. Returns the ruleset so callers can register protected methods
    (``ruleset.protected_methods.add(nodeid)``).

    Raises:
        ValueError: ``cfg`` breaks the login rule (``login_problems``) or offers no endpoint.
    """
    from asyncua import ua

    problems = cfg.login_problems()
    if problems:
        raise ValueError("; ".join(f"opcua security {key}: {msg}" for key, msg in problems))
    audit = audit or SecurityAudit()
    needs_cert = cfg.sign or cfg.sign_and_encrypt
    if needs_cert:
        await ensure_certificate(cfg.cert_path, cfg.key_path, cfg.application_uri, cfg.hostname)
        await server.load_certificate(str(cfg.cert_path))
        await server.load_private_key(str(cfg.key_path))
    await server.set_application_uri(cfg.application_uri)
    ruleset = RolePermissions(audit=audit)
    server.set_security_policy(cfg.policy_types(), permission_ruleset=ruleset)  # type: ignore[arg-type]
    # a user-name token only where a user could log in with one (no users: anonymous only)
    tokens: list[type] = [ua.UserNameIdentityToken] if cfg.users or cfg.anonymous != "read_only" else []
    if cfg.anonymous == "read_only":
        tokens.insert(0, ua.AnonymousIdentityToken)
    server.set_identity_tokens(tokens)
    users = HashedPasswordUserManager(cfg.users, cfg.anonymous == "read_only", guard=LoginGuard(cfg.login),
                                      audit=audit)  # fmt: skip
    server.iserver.set_user_manager(cast("UserManager", users))  # duck-typed: asyncua stays a lazy import
    _install_login_channel(server)
    _install_token_rule(server)
    iserver = server.iserver
    iserver.max_connections = cfg.max_connections
    iserver.max_pending_activation_seconds = cfg.activation_timeout_s
    iserver.max_session_timeout_ms = cfg.session_timeout_max_s * 1000.0
    iserver.min_session_timeout_ms = min(iserver.min_session_timeout_ms, iserver.max_session_timeout_ms)
    trust = [(k, m) for k, m in trust_problems(cfg) if k == "trusted_client_certs_dir" and "expired" not in m]
    if trust:  # asyncua would fail later with "can't create an empty store" or trust nobody silently
        raise ValueError("; ".join(f"opcua security {key}: {msg}" for key, msg in trust))
    log_client_trust(cfg, cfg.application_uri)
    if cfg.trusted_client_certs_dir is not None:
        from asyncua.crypto.truststore import TrustStore
        from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions

        store = TrustStore([cfg.trusted_client_certs_dir], [])
        await store.load()
        opts = CertificateValidatorOptions.TRUSTED_VALIDATION | CertificateValidatorOptions.PEER_CLIENT
        server.set_certificate_validator(CertificateValidator(options=opts, trust_store=store))
    return ruleset


# --------------------------------------------------------------------------- client side


@dataclass(frozen=True, slots=True)
class ClientSecurity:
    """How a client connects: policy, mode, credentials and its own certificate.

    Attributes:
        mode: "SignAndEncrypt", "Sign" or "None".
        state_dir: where the client certificate/key live (generated on first use).
        username / password: login (None = anonymous).
        application_uri: client ApplicationUri (written into its certificate).
        server_cert: optional pinned server certificate (DER).
    """

    mode: Literal["SignAndEncrypt", "Sign", "None"] = "SignAndEncrypt"
    state_dir: Path | None = None
    username: str | None = None
    password: str | None = None
    application_uri: str = "urn:potline-twin:client"
    server_cert: Path | None = None

    async def apply(self, client: Client) -> None:
        """Configure an asyncua ``Client`` (before ``connect()``)."""
        if self.username is not None:
            client.set_user(self.username)
        if self.password is not None:
            client.set_password(self.password)
        if self.mode == "None":
            return
        if self.state_dir is None:
            raise ValueError("ClientSecurity: state_dir is required for Sign/SignAndEncrypt")
        cert, key = self.state_dir / "client_cert.der", self.state_dir / "client_key.pem"
        await ensure_certificate(cert, key, self.application_uri, server=False, common_name="potline-twin client")
        client.application_uri = self.application_uri
        parts = ["Basic256Sha256", self.mode, str(cert), str(key)]
        if self.server_cert is not None:
            parts.append(str(self.server_cert))
        await client.set_security_string(",".join(parts))


def read_new_password(stdin: TextIO, *, interactive: bool | None = None, err: TextIO | None = None) -> str:
    """The password to hash: asked twice on a terminal, else the first line of ``stdin``
    (``printf '%s\n' "$PW" | potline hash-password``). Raises ValueError when the two
    entries differ, the input is empty or it ends before a line."""
    import getpass

    tty = stdin.isatty() if interactive is None else interactive
    if tty:
        pw = getpass.getpass("password: ")
        if pw != getpass.getpass("again: "):
            raise ValueError("the two passwords differ")
    else:
        line = stdin.readline()
        if not line:
            raise ValueError("expected the password on the first line of standard input, got end of input")
        pw = line.rstrip("\r\n")
    if not pw:
        raise ValueError("expected a password, got an empty one")
    return pw


def _main(argv: list[str] | None = None) -> int:
    """``python -m plc_bridge.opcua_security``: print a password hash for the config
    (asks twice on a terminal; reads the first line of standard input otherwise)."""
    import sys

    try:
        pw = read_new_password(sys.stdin)
    except (ValueError, EOFError, KeyboardInterrupt) as exc:
        print(f"hash-password: {exc or 'cancelled'}", file=sys.stderr)
        return 1
    print(hash_password(pw))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
