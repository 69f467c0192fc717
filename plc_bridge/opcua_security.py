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

The permission check runs before every service request (``RolePermissions``); it also
records the requesting user in a context variable, so method handlers can tell who
called them (``current_user()``).
"""

from __future__ import annotations

import base64
import contextvars
import hashlib
import hmac
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import structlog
from pydantic import Field, field_validator

from twin.configcore import StrictModel

if TYPE_CHECKING:  # asyncua is imported lazily: the CLI imports this module cheaply
    from asyncua import Client, Server
    from asyncua.server.user_managers import UserManager

__all__ = [
    "ClientSecurity",
    "OpcUaSecurityConfig",
    "RolePermissions",
    "UserEntry",
    "configure_server_security",
    "current_user",
    "ensure_certificate",
    "hash_password",
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


class HashedPasswordUserManager:
    """asyncua user manager: checks scrypt hashes, maps roles to ``UserRole``."""

    def __init__(self, users: dict[str, UserEntry], anonymous_read_only: bool) -> None:
        self._users = dict(users)
        self._anonymous = anonymous_read_only

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None, certificate: Any = None):
        from asyncua.crypto.permission_rules import User, UserRole

        if username is None:
            if self._anonymous:
                return User(role=UserRole.Anonymous, name="anonymous")
            log.warning("opcua.login_refused", user="anonymous", reason="anonymous access disabled")
            return None
        entry = self._users.get(username)
        if entry is None or password is None or not verify_password(password, entry.password_hash):
            log.warning("opcua.login_refused", user=username, reason="unknown user or wrong password")
            return None
        role = UserRole.User if entry.role == "operator" else UserRole.Anonymous
        log.info("opcua.login", user=username, role=entry.role)
        return User(role=role, name=username)


class RolePermissions:
    """Service-level permission check (an asyncua ``PermissionRuleset``).

    Viewers and anonymous clients (``UserRole.Anonymous``) may open sessions, browse,
    read, subscribe and read history; ``Call`` is allowed for them except on the
    protected methods. Operators (``UserRole.User``) may also write and call protected
    methods. Node management (Admin) is not open to any remote client.
    """

    def __init__(self, protected_methods: set[Any] | None = None) -> None:
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

    def check_validity(self, user: Any, action_type_id: Any, body: Any) -> bool:
        from asyncua import ua
        from asyncua.crypto.permission_rules import UserRole
        from asyncua.ua.ua_binary import struct_from_binary

        _current_user.set(getattr(user, "name", None))
        role = getattr(user, "role", UserRole.Anonymous)
        if role in (UserRole.User, UserRole.Admin):
            return action_type_id in self._read or action_type_id == self._write
        if action_type_id == self._call and self.protected_methods:
            try:
                params = struct_from_binary(ua.CallParameters, body.copy())
            except Exception:  # undecodable request: refuse rather than guess
                return False
            if any(m.MethodId in self.protected_methods for m in params.MethodsToCall or []):
                log.warning("opcua.access_denied", user=getattr(user, "name", None), action="call")
                return False
            return True
        if action_type_id == self._write:
            log.warning("opcua.access_denied", user=getattr(user, "name", None), action="write")
        return action_type_id in self._read


async def configure_server_security(server: Server, cfg: OpcUaSecurityConfig) -> RolePermissions:
    """Apply ``cfg`` to an initialised (``await server.init()``) asyncua server.

    Generates or reuses the certificate, loads it, selects endpoints, identity tokens,
    the user manager and the role ruleset, and (optionally) a client-certificate
    trust store. Call before ``server.start()``. Returns the ruleset so callers can
    register protected methods (``ruleset.protected_methods.add(nodeid)``).
    """
    from asyncua import ua

    needs_cert = cfg.sign or cfg.sign_and_encrypt
    if needs_cert:
        await ensure_certificate(cfg.cert_path, cfg.key_path, cfg.application_uri, cfg.hostname)
        await server.load_certificate(str(cfg.cert_path))
        await server.load_private_key(str(cfg.key_path))
    await server.set_application_uri(cfg.application_uri)
    ruleset = RolePermissions()
    server.set_security_policy(cfg.policy_types(), permission_ruleset=ruleset)  # type: ignore[arg-type]
    tokens: list[type] = [ua.UserNameIdentityToken]
    if cfg.anonymous == "read_only":
        tokens.insert(0, ua.AnonymousIdentityToken)
    server.set_identity_tokens(tokens)
    users = HashedPasswordUserManager(cfg.users, cfg.anonymous == "read_only")
    server.iserver.set_user_manager(cast("UserManager", users))  # duck-typed: asyncua stays a lazy import
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


def _main() -> int:
    """``python -m plc_bridge.opcua_security``: print a password hash for the config."""
    import getpass

    pw = getpass.getpass("password: ")
    if pw != getpass.getpass("again: "):
        print("passwords differ")
        return 1
    print(hash_password(pw))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
