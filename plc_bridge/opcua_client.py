"""OPC UA client for PLCs (and for our own mirror): resolve, read, subscribe, write, recover.

``OpcUaClient`` keeps one session to one server:

* At every (re)connect it resolves all configured nodes in one
  TranslateBrowsePathsToNodeIds call (browse paths) or from NodeId strings, and reads
  their DataType in one Read call, so writes are always sent with the node's own
  VariantType (a Python float into a Float node would otherwise be BadTypeMismatch).
* ``read`` is one batched Read service call (chunked above ``max_nodes_per_read``);
  results are ``quality.Sample`` (value, GOOD/UNCERTAIN/BAD + reason, clock time).
  Array nodes (e.g. the mirror's per-room arrays) come back as ``np.ndarray``.
* ``subscribe`` keeps a subscription in iterator mode with an unbounded queue
  (lossless); ``updates()`` yields ``(name, Sample)`` across reconnects.
* A supervisor task reconnects after any loss (fixed short retry delay, so it is back
  within ~1 s of the server returning), re-resolves and re-subscribes. While
  disconnected, reads return BAD samples ("not connected"), writes raise
  ``ConnectionError``, and subscribers get one BAD sample per subscribed tag.

Browse paths look like the tag maps' ``Objects/Rectifier1/LineCurrent``: segments
separated by "/", the first one ``Objects`` (or ``Root``); a segment may carry a
namespace index prefix (``2:LineCurrent``), otherwise it is looked up in the client's
default namespace (``namespace=``: a URI or index; default the server's last one).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import structlog
from asyncua import Client, ua
from asyncua.common.subscription import DataChangeEvent, StatusChangeEvent

from plc_bridge.opcua_security import ClientSecurity
from plc_bridge.quality import Quality, Sample, SampleValue
from twin.clock import Clock, RealClock

__all__ = [
    "PLC_SECURITY_KEYS",
    "VTYPE_BY_DATATYPE",
    "NodeRef",
    "OpcUaClient",
    "OpcUaWriteError",
    "PlcSecurity",
    "parse_browse_path",
]

log = structlog.get_logger(__name__)

#: tag-map data type name -> OPC UA VariantType
VTYPE_BY_DATATYPE: dict[str, ua.VariantType] = {
    "bool": ua.VariantType.Boolean,
    "int16": ua.VariantType.Int16,
    "uint16": ua.VariantType.UInt16,
    "int32": ua.VariantType.Int32,
    "uint32": ua.VariantType.UInt32,
    "float32": ua.VariantType.Float,
    "float64": ua.VariantType.Double,
}

_CONNECTION_ERRORS = (ConnectionError, OSError, asyncio.TimeoutError, TimeoutError)
_SESSION_LOST = {
    ua.StatusCodes.BadSessionIdInvalid,
    ua.StatusCodes.BadSessionClosed,
    ua.StatusCodes.BadSecureChannelIdInvalid,
    ua.StatusCodes.BadSecureChannelClosed,
    ua.StatusCodes.BadConnectionClosed,
    ua.StatusCodes.BadServerHalted,
    ua.StatusCodes.BadShutdown,
    ua.StatusCodes.BadCommunicationError,
    ua.StatusCodes.BadNotConnected,
}


#: keys of a PLC section that configure ``PlcSecurity`` (``PlcSecurity.from_mapping``)
PLC_SECURITY_KEYS = (
    "security_mode", "security_policy", "certificate", "private_key", "certificate_dir", "server_certificate",
    "username", "password", "password_file", "application_uri",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class PlcSecurity:
    """How the bridge's OPC UA client logs in to a PLC's server.

    Attributes:
        mode: ``None`` (no message security), ``Sign`` or ``SignAndEncrypt``.
        policy: the security policy; ``Basic256Sha256`` (the one PLC servers offer today).
        certificate, private_key: the client's application instance certificate (DER or
            PEM) and key issued by the plant's PKI; when not given, a self-signed pair is
            made once in ``certificate_dir`` (the PLC's administrator must then trust it).
        certificate_dir: where a generated certificate and key live (key mode 0600).
        server_certificate: the PLC server's certificate to pin (DER/PEM); None = the one
            the server presents (trust on first use is the PLC's side of the bargain).
        username, password: a user token (None = anonymous). ``password_file``: read the
            password from this file's first line at start (keeps it out of the config).
        application_uri: the client's ApplicationUri (in its certificate).
    """

    mode: Literal["None", "Sign", "SignAndEncrypt"] = "SignAndEncrypt"
    policy: Literal["Basic256Sha256"] = "Basic256Sha256"
    certificate: Path | None = None
    private_key: Path | None = None
    certificate_dir: Path | None = None
    server_certificate: Path | None = None
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None
    application_uri: str = "urn:potline-twin:bridge"

    def __post_init__(self) -> None:
        if self.mode not in ("None", "Sign", "SignAndEncrypt"):
            raise ValueError(f"security_mode: expected None, Sign or SignAndEncrypt, got {self.mode!r}")
        if self.policy != "Basic256Sha256":
            raise ValueError(f"security_policy: expected Basic256Sha256, got {self.policy!r}")
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key go together (or neither: a generated pair)")
        if self.mode != "None" and self.certificate is None and self.certificate_dir is None:
            raise ValueError(f"security_mode {self.mode}: give certificate + private_key, or certificate_dir")
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        if (self.password is not None or self.password_file is not None) and self.username is None:
            raise ValueError("a password needs a username")

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any], base: Path | None = None) -> PlcSecurity | None:
        """From a PLC section's keys (``PLC_SECURITY_KEYS``); None when it sets none of them.

        Relative paths are resolved against ``base``. Raises ValueError naming the key.
        """
        if not any(k in d and d[k] is not None for k in PLC_SECURITY_KEYS):
            return None

        def path(key: str) -> Path | None:
            v = d.get(key)
            if v is None:
                return None
            p = Path(str(v)).expanduser()
            return p if p.is_absolute() or base is None else base / p

        return cls(
            mode=d.get("security_mode") or "SignAndEncrypt",
            policy=d.get("security_policy") or "Basic256Sha256",
            certificate=path("certificate"),
            private_key=path("private_key"),
            certificate_dir=path("certificate_dir"),
            server_certificate=path("server_certificate"),
            username=d.get("username"),
            password=d.get("password"),
            password_file=path("password_file"),
            application_uri=d.get("application_uri") or "urn:potline-twin:bridge",
        )

    def read_password(self) -> str | None:
        if self.password_file is not None:
            lines = self.password_file.read_text(encoding="utf-8").splitlines()
            return lines[0].strip() if lines else ""
        return self.password

    async def apply(self, client: Client) -> None:
        """Configure an asyncua ``Client`` before ``connect()``."""
        if self.username is not None:
            client.set_user(self.username)
            pw = self.read_password()
            if pw is not None:
                client.set_password(pw)
        if self.mode == "None":
            return
        cert, key = self.certificate, self.private_key
        if cert is None or key is None:
            from plc_bridge.opcua_security import ensure_certificate

            assert self.certificate_dir is not None  # checked in __post_init__
            cert, key = self.certificate_dir / "client_cert.der", self.certificate_dir / "client_key.pem"
            await ensure_certificate(cert, key, self.application_uri, server=False, common_name="potline-twin bridge")
        client.application_uri = self.application_uri
        parts = [self.policy, self.mode, str(cert), str(key)]
        if self.server_certificate is not None:
            parts.append(str(self.server_certificate))
        await client.set_security_string(",".join(parts))


class OpcUaWriteError(RuntimeError):
    """A write was refused by the server (``status`` says why)."""

    def __init__(self, name: str, status: ua.StatusCode) -> None:
        super().__init__(f"write {name!r} refused: {status.name}")
        self.name = name
        self.status = status


@dataclass(frozen=True, slots=True)
class NodeRef:
    """One node the client should find on the server.

    Attributes:
        name: the caller's name for it (tag name).
        path: browse path, e.g. ``Objects/Rectifier1/LineCurrent`` (see module doc).
        node_id: NodeId string (``ns=2;s=X`` or ``nsu=urn:...;s=X``); used when no path.
        vtype: VariantType to write with; None = the node's DataType read at resolve.
    """

    name: str
    path: str | None = None
    node_id: str | None = None
    vtype: ua.VariantType | None = None

    def __post_init__(self) -> None:
        if not self.path and not self.node_id:
            raise ValueError(f"node {self.name!r}: needs a browse path or a NodeId")

    @classmethod
    def from_tag(cls, tag: Any) -> NodeRef:
        """From a ``plc_bridge.tagmap.Tag`` (browse_path / node_id / type)."""
        dtype = getattr(tag.type, "value", tag.type)
        return cls(tag.name, tag.browse_path, tag.node_id, VTYPE_BY_DATATYPE.get(str(dtype)))


def parse_browse_path(path: str, default_ns: int) -> tuple[ua.NodeId, ua.RelativePath]:
    """Starting node and RelativePath for ``Objects/A/2:B/C`` (hierarchical references)."""
    parts = [p for p in path.strip().strip("/").split("/") if p]
    if not parts:
        raise ValueError(f"empty browse path {path!r}")
    first = parts[0].split(":", 1)[-1]
    if first == "Objects":
        start, parts = ua.NodeId(ua.Int32(ua.ObjectIds.ObjectsFolder)), parts[1:]
    elif first == "Root":
        start, parts = ua.NodeId(ua.Int32(ua.ObjectIds.RootFolder)), parts[1:]
    else:
        start = ua.NodeId(ua.Int32(ua.ObjectIds.ObjectsFolder))
    elements = []
    for seg in parts:
        ns, sep, name = seg.partition(":")
        if sep and ns.isdigit():
            qn = ua.QualifiedName(name, int(ns))
        else:
            qn = ua.QualifiedName(seg, default_ns)
        el = ua.RelativePathElement()
        el.ReferenceTypeId = ua.NodeId(ua.Int32(ua.ObjectIds.HierarchicalReferences))
        # asyncua declares Boolean fields as its marker class ua.Boolean (no instances);
        # it encodes plain bools, as its own code assigns them
        el.IsInverse = False  # type: ignore[assignment]
        el.IncludeSubtypes = True  # type: ignore[assignment]
        el.TargetName = qn
        elements.append(el)
    rp = ua.RelativePath()
    rp.Elements = elements
    return start, rp


class OpcUaClient:
    """Client for one OPC UA server with self-healing session (see module docstring)."""

    def __init__(
        self,
        url: str,
        nodes: Iterable[NodeRef],
        *,
        namespace: str | int | None = None,
        security: ClientSecurity | PlcSecurity | None = None,
        timeout_s: float = 2.0,
        watchdog_s: float = 1.0,
        retry_delay_s: float = 0.5,
        max_nodes_per_read: int = 5000,
        clock: Clock | None = None,
        name: str = "opcua",
    ) -> None:
        """
        Args:
            url: ``opc.tcp://host:port/path``.
            nodes: what to resolve at each connect (names must be unique).
            namespace: default namespace for unprefixed browse-path segments (URI or index).
            security: policy, login and client certificate (``ClientSecurity`` for our own
                servers, ``PlcSecurity`` for a PLC's); None = NoSecurity, anonymous.
            timeout_s: per-request timeout [s].
            watchdog_s: keep-alive probe interval [s]; a dead link is noticed within ~2x.
            retry_delay_s: wait between reconnect attempts [s].
            max_nodes_per_read: chunk size of batched reads.
            clock: time source for ``Sample.t`` (default real time).
            name: label for logs (device name).
        """
        self.url = url
        self.refs: dict[str, NodeRef] = {}
        for ref in nodes:
            if ref.name in self.refs:
                raise ValueError(f"duplicate node name {ref.name!r}")
            self.refs[ref.name] = ref
        self.namespace = namespace
        self.security = security
        self.timeout_s = timeout_s
        self.watchdog_s = watchdog_s
        self.retry_delay_s = retry_delay_s
        self.max_nodes_per_read = max_nodes_per_read
        self.clock: Clock = clock or RealClock()
        self.log = log.bind(device=name, url=url)
        self._client: Client | None = None
        self._session_open = False
        self._nodeids: dict[str, ua.NodeId] = {}
        self._unresolved: dict[str, str] = {}
        self._vtypes: dict[str, ua.VariantType] = {}
        self._connected = asyncio.Event()
        self._lost = asyncio.Event()
        self._stop = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._sub_names: list[str] = []
        self._sub_period_ms = 100.0
        self._updates: asyncio.Queue[tuple[str, Sample]] = asyncio.Queue()
        self._source_times: dict[str, datetime | None] = {}
        self.connects = 0
        self.last_error = ""

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> OpcUaClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self, wait_s: float | None = 5.0) -> bool:
        """Start the supervisor; wait up to ``wait_s`` for the first session.

        Returns True when connected. When the server is not there yet the client
        keeps trying in the background (``wait_connected``).
        """
        if self._supervisor is None or self._supervisor.done():
            self._stop.clear()
            self._supervisor = asyncio.create_task(self._supervise(), name=f"opcua-supervisor {self.url}")
        if wait_s is None:
            return self.connected
        return await self.wait_connected(wait_s)

    async def stop(self) -> None:
        """Close the session and stop reconnecting."""
        self._stop.set()
        self._lost.set()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._supervisor
            self._supervisor = None
        await self._teardown()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout_s: float) -> bool:
        """Wait until a session is up (True) or ``timeout_s`` passes (False)."""
        try:
            await asyncio.wait_for(self._connected.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    @property
    def node_ids(self) -> dict[str, ua.NodeId]:
        """Resolved NodeIds of the current session (name -> NodeId)."""
        return dict(self._nodeids)

    @property
    def unresolved(self) -> dict[str, str]:
        """Names that could not be resolved at the last connect, with the reason."""
        return dict(self._unresolved)

    async def _supervise(self) -> None:
        while not self._stop.is_set():
            try:
                await self._connect_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: tear down, say so, retry
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.log.warning("opcua.connect_failed", error=self.last_error)
                await self._teardown()
                await self._sleep_or_stop(self.retry_delay_s)
                continue
            self.connects += 1
            self.log.info("opcua.connected", resolved=len(self._nodeids), unresolved=len(self._unresolved))
            self._connected.set()
            await self._lost.wait()
            if self._stop.is_set():
                break
            self.log.warning("opcua.connection_lost", error=self.last_error)
            self._mark_lost("connection lost")
            await self._teardown()
            await self._sleep_or_stop(self.retry_delay_s)

    async def _sleep_or_stop(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _connect_once(self) -> None:
        self._lost.clear()
        client = Client(self.url, timeout=self.timeout_s, watchdog_intervall=self.watchdog_s)
        client.application_uri = self.security.application_uri if self.security else client.application_uri
        self._client = client
        if self.security is not None:
            await self.security.apply(client)

        async def _on_lost(exc: Exception) -> None:
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._lost.set()

        client.connection_lost_callback = _on_lost
        await client.connect()  # cleans up after itself when it fails
        self._session_open = True
        default_ns = await self._default_namespace(client)
        await self._resolve(client, default_ns)
        if self._sub_names:
            await self._start_subscription(client)

    async def _default_namespace(self, client: Client) -> int:
        if isinstance(self.namespace, int):
            return self.namespace
        if isinstance(self.namespace, str):
            return await client.get_namespace_index(self.namespace)
        return len(await client.get_namespace_array()) - 1

    async def _resolve(self, client: Client, default_ns: int) -> None:
        nodeids: dict[str, ua.NodeId] = {}
        unresolved: dict[str, str] = {}
        by_path = [r for r in self.refs.values() if r.path]
        if by_path:
            bpaths = []
            for ref in by_path:
                start, rp = parse_browse_path(ref.path or "", default_ns)
                bp = ua.BrowsePath()
                bp.StartingNode = start
                bp.RelativePath = rp
                bpaths.append(bp)
            results = []
            for i in range(0, len(bpaths), self.max_nodes_per_read):
                chunk = bpaths[i : i + self.max_nodes_per_read]
                results += await client.uaclient.translate_browsepaths_to_nodeids(chunk)
            for ref, res in zip(by_path, results, strict=False):
                if res.StatusCode.is_good() and res.Targets:
                    tid = res.Targets[0].TargetId
                    nodeids[ref.name] = ua.NodeId(tid.Identifier, tid.NamespaceIndex, tid.NodeIdType)
                else:
                    unresolved[ref.name] = f"browse path {ref.path}: {res.StatusCode.name}"
        ns_array: list[str] | None = None
        for ref in self.refs.values():
            if ref.path or not ref.node_id:
                continue
            try:
                text = ref.node_id
                if text.startswith("nsu="):
                    ns_array = ns_array or await client.get_namespace_array()
                    uri, _, rest = text[4:].partition(";")
                    if uri not in ns_array:
                        raise ValueError(f"namespace {uri} not on server")
                    text = f"ns={ns_array.index(uri)};{rest}"
                nodeids[ref.name] = ua.NodeId.from_string(text)
            except Exception as exc:
                unresolved[ref.name] = f"node id {ref.node_id}: {exc}"
        # data types, one batched read; also proves the nodes exist
        names = list(nodeids)
        dts = await self._read_attr(client, [nodeids[n] for n in names], ua.AttributeIds.DataType)
        vtypes: dict[str, ua.VariantType] = {}
        for n, dv in zip(names, dts, strict=False):
            if dv.StatusCode is not None and not dv.StatusCode.is_good():
                unresolved[n] = f"{nodeids.pop(n).to_string()}: {dv.StatusCode.name}"
                continue
            explicit = self.refs[n].vtype
            dt = dv.Value.Value if dv.Value is not None else None
            if explicit is not None:
                vtypes[n] = explicit
            elif (
                isinstance(dt, ua.NodeId)
                and dt.NamespaceIndex == 0
                and isinstance(dt.Identifier, int)
                and (1 <= dt.Identifier <= 25)
            ):
                vtypes[n] = ua.VariantType(dt.Identifier)
        self._nodeids, self._unresolved, self._vtypes = nodeids, unresolved, vtypes
        if unresolved:
            self.log.warning("opcua.unresolved", count=len(unresolved), first=list(unresolved.items())[:3])

    async def _read_attr(
        self, client: Client, nodeids: Sequence[ua.NodeId], attr: ua.AttributeIds
    ) -> list[ua.DataValue]:
        out: list[ua.DataValue] = []
        for i in range(0, len(nodeids), self.max_nodes_per_read):
            out += await client.uaclient.read_attributes(list(nodeids[i : i + self.max_nodes_per_read]), attr)
        return out

    async def _teardown(self) -> None:
        self._connected.clear()
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
        client, self._client = self._client, None
        if client is not None and self._session_open:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), self.timeout_s)
        self._session_open = False

    def _mark_lost(self, reason: str) -> None:
        t = self.clock.now()
        for n in self._sub_names:
            self._updates.put_nowait((n, Sample.bad(reason, t)))

    def _note_failure(self, exc: BaseException) -> None:
        """Flag the session as lost when ``exc`` means the link or session is gone."""
        code = getattr(exc, "code", None)
        if isinstance(exc, _CONNECTION_ERRORS) or code in _SESSION_LOST:
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._lost.set()

    # ------------------------------------------------------------------ reading

    def _sample(self, dv: ua.DataValue, t: float) -> Sample:
        status = dv.StatusCode or ua.StatusCode()
        raw = dv.Value.Value if dv.Value is not None else None
        value: SampleValue = np.asarray(raw) if isinstance(raw, list) else raw
        if status.is_good():
            return Sample(value, Quality.GOOD, t, "")
        if status.is_uncertain():
            return Sample(value, Quality.UNCERTAIN, t, status.name)
        return Sample(None, Quality.BAD, t, status.name)

    async def read(self, names: Iterable[str] | None = None) -> dict[str, Sample]:
        """Read ``names`` (default all) in one batched Read; never raises on comms loss.

        Unknown names raise ``KeyError``; unresolved or unreachable nodes come back BAD.
        """
        wanted = list(self.refs) if names is None else list(names)
        for n in wanted:
            if n not in self.refs:
                raise KeyError(f"no node named {n!r} (known: {len(self.refs)})")
        t = self.clock.now()
        out: dict[str, Sample] = {}
        client = self._client
        if client is None or not self.connected:
            return {n: Sample.bad("not connected", t) for n in wanted}
        ids = [(n, self._nodeids[n]) for n in wanted if n in self._nodeids]
        for n in wanted:
            if n not in self._nodeids:
                out[n] = Sample.bad(self._unresolved.get(n, "unresolved"), t)
        try:
            dvs = await self._read_attr(client, [nid for _, nid in ids], ua.AttributeIds.Value)
        except Exception as exc:
            self._note_failure(exc)
            reason = f"read failed: {type(exc).__name__}"
            return {n: Sample.bad(reason, t) for n in wanted}
        t = self.clock.now()
        for (n, _), dv in zip(ids, dvs, strict=False):
            out[n] = self._sample(dv, t)
            self._source_times[n] = dv.SourceTimestamp or dv.ServerTimestamp
        return {n: out[n] for n in wanted}

    def source_time(self, name: str) -> datetime | None:
        """Server-side timestamp (SourceTimestamp, else ServerTimestamp, UTC) of the
        last value of ``name`` read or received; None before the first one."""
        return self._source_times.get(name)

    # ------------------------------------------------------------------ writing

    def _variant(self, name: str, value: Any, vtype: ua.VariantType | None) -> ua.Variant:
        vt = vtype or self._vtypes.get(name)
        if vt is None:
            raise TypeError(f"node {name!r}: data type unknown; pass vtype=")
        if isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, np.generic):
            value = value.item()
        if vt in (ua.VariantType.Float, ua.VariantType.Double):
            value = [float(v) for v in value] if isinstance(value, list) else float(value)
        elif vt == ua.VariantType.Boolean:
            value = [bool(v) for v in value] if isinstance(value, list) else bool(value)
        elif vt.value <= 9:  # integer types
            value = [int(v) for v in value] if isinstance(value, list) else int(value)
        return ua.Variant(value, vt)

    async def write_many(
        self, values: Mapping[str, Any], vtypes: Mapping[str, ua.VariantType] | None = None
    ) -> dict[str, ua.StatusCode]:
        """Write several nodes in one Write call; returns each node's StatusCode.

        Raises ``ConnectionError`` when not connected or the link drops, ``KeyError``
        for unknown or unresolved names, ``TypeError`` when a value cannot be typed.
        """
        client = self._client
        if client is None or not self.connected:
            raise ConnectionError(f"{self.url}: not connected")
        names = list(values)
        for n in names:
            if n not in self._nodeids:
                raise KeyError(f"node {n!r} is not resolved: {self._unresolved.get(n, 'unknown name')}")
        dvs = [ua.DataValue(self._variant(n, values[n], (vtypes or {}).get(n))) for n in names]
        try:
            results = await client.uaclient.write_attributes(
                [self._nodeids[n] for n in names], dvs, ua.AttributeIds.Value
            )
        except ua.UaStatusCodeError as exc:  # service fault, e.g. BadUserAccessDenied
            self._note_failure(exc)
            if exc.code in _SESSION_LOST:
                raise ConnectionError(f"{self.url}: write failed: {exc}") from exc
            return {n: ua.StatusCode(exc.code) for n in names}
        except Exception as exc:
            self._note_failure(exc)
            if isinstance(exc, _CONNECTION_ERRORS):
                raise ConnectionError(f"{self.url}: write failed: {exc}") from exc
            raise
        return dict(zip(names, results, strict=False))

    async def write(self, name: str, value: Any, vtype: ua.VariantType | None = None) -> None:
        """Typed write of one node; raises ``OpcUaWriteError`` when the server refuses."""
        status = (await self.write_many({name: value}, {name: vtype} if vtype else None))[name]
        if not status.is_good():
            raise OpcUaWriteError(name, status)

    # ------------------------------------------------------------------ subscriptions

    async def subscribe(self, names: Iterable[str], period_ms: float = 100.0) -> None:
        """Monitor ``names`` (replaces the previous set); kept across reconnects.

        Changes arrive through ``updates()``. Nothing is dropped: the subscription
        queue is unbounded, so consume promptly.
        """
        names = list(names)
        for n in names:
            if n not in self.refs:
                raise KeyError(f"no node named {n!r}")
        self._sub_names, self._sub_period_ms = names, float(period_ms)
        client = self._client
        if client is not None and self.connected:
            try:
                await self._start_subscription(client)
            except Exception as exc:
                self._note_failure(exc)
                self.log.warning("opcua.subscribe_failed", error=str(exc))

    async def _start_subscription(self, client: Client) -> None:
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
        sub = await client.create_subscription(self._sub_period_ms, None, queue_maxsize=0)
        names = [n for n in self._sub_names if n in self._nodeids]
        by_id = {self._nodeids[n]: n for n in names}
        t = self.clock.now()
        for n in self._sub_names:
            if n not in self._nodeids:
                self._updates.put_nowait((n, Sample.bad(self._unresolved.get(n, "unresolved"), t)))
        if names:
            handles = await sub.subscribe_data_change([client.get_node(self._nodeids[n]) for n in names])
            for n, h in zip(names, handles, strict=False):
                if isinstance(h, ua.StatusCode):
                    self._updates.put_nowait((n, Sample.bad(f"monitor: {h.name}", t)))
        self._pump = asyncio.create_task(self._pump_events(sub, by_id), name=f"opcua-pump {self.url}")

    async def _pump_events(self, sub: Any, by_id: dict[ua.NodeId, str]) -> None:
        async for ev in sub:
            if isinstance(ev, DataChangeEvent):
                name = by_id.get(ev.node.nodeid)
                if name is not None:
                    dv = ev.data.monitored_item.Value
                    self._source_times[name] = dv.SourceTimestamp or dv.ServerTimestamp
                    self._updates.put_nowait((name, self._sample(dv, self.clock.now())))
            elif isinstance(ev, StatusChangeEvent) and ev.notification.Status.is_bad():
                self.last_error = f"subscription status {ev.notification.Status.name}"
                self._lost.set()
                return

    async def updates(self) -> AsyncIterator[tuple[str, Sample]]:
        """``async for name, sample in client.updates()``: subscribed changes, in order."""
        while True:
            yield await self._updates.get()

    def pending_updates(self) -> int:
        """Updates queued and not yet consumed."""
        return self._updates.qsize()
