"""Protocol edges of a simulated PLC: its ``PlcImage`` served over Modbus TCP or OPC UA.

The PLC logic never sees a socket; an edge serves the image and reports client writes:

* ``ModbusEdge`` wraps ``plc_bridge.modbus_server.ModbusTagServer`` (allow-listed writes,
  bounds re-validated by the server, exception 3 for out-of-range values, exception 2 for
  a write to part of a multi-register value; pipelined requests answered in order; at
  most 16 connections, none idle beyond 120 s). ``publish()``
  copies the image's measurements into the registers after every PLC scan; client
  writes land in the image at once through the server's write hook. Fault hooks:
  ``refuse_with`` (answer every request with a Modbus exception code, optionally with a
  probability) for the "exception responses" fault.
* ``OpcUaEdge`` builds an asyncua server from the tag map's browse paths (string
  NodeIds from the path, in the map's ``[device] namespace``, by default
  ``urn:potline-twin:plc:<instance>``; a tag's own ``node_id``, ``nsu=<uri>;s=...`` in that
  namespace, is served as given, under ``Objects/<instance>/<name>`` without a browse path). Variables are *data sources*: a Read returns
  the image's current value (no per-scan publishing cost, like open62541's DataSource
  variables); subscriptions are served too: after every PLC scan ``publish()`` pushes
  the changed values of the nodes someone monitors (only those: an unmonitored node
  costs nothing). Numeric variables with a unit or bounds are AnalogItemType with
  ``EngineeringUnits`` (UN/CEFACT codes where there is one) and ``EURange`` (the map's
  min/max). Writable tags validate type and
  bounds (``BadTypeMismatch`` / ``BadOutOfRange``) and store into the image. Typing:
  bool -> Boolean, unscaled integers -> their integer type, floats -> Float/Double,
  *scaled* integers (``beam_move``, 0.1 mm raw) -> Double in engineering units, as PLC
  OPC UA servers publish engineering values. ``bad_status`` makes every read return a
  Bad StatusCode (the OPC UA analogue of a Modbus exception). Security like a real PLC's
  (``security=``, an ``OpcUaSecurityConfig`` as the mirror's): Basic256Sha256 ``Sign`` /
  ``SignAndEncrypt`` endpoints and ``NoSecurity`` only when allowed; user names (scrypt
  hashes) only over SignAndEncrypt; operators write, anonymous clients are refused or
  read-only (a write is ``BadUserAccessDenied``: no anonymous heartbeat puts the PLC in
  remote); client certificates only from ``trusted_client_certs_dir`` unless
  ``trust_any_client_certificate`` is set (a lab opt-in, logged at every start).

Both serve a tag map as the PLC it describes would: an ``invert`` bool as the PLC's own bit
(a ``LOCAL`` bit set in local), an ``alias_of`` tag as its target's register or node
(``hil_rigs.plc_image``).

Both bind to 127.0.0.1 on a free port unless told otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog

from hil_rigs.plc_image import PlcImage
from plc_bridge.codec import DataType
from plc_bridge.opcua_security import OpcUaSecurityConfig, SecurityEvent
from plc_bridge.tagmap import Tag

__all__ = ["CommandHook", "ModbusEdge", "OpcUaEdge", "make_edge", "opcua_namespace"]

log = structlog.get_logger(__name__)

#: how often an OPC UA edge looks up which nodes are monitored [wall s]
MONITORED_REFRESH_S = 1.0

#: called with (tag name, value) after a client wrote a tag into the image
CommandHook = Callable[[str, Any], None]


def opcua_namespace(instance: str) -> str:
    """Namespace URI a simulated PLC serves its tags in."""
    return f"urn:potline-twin:plc:{instance}"


class ModbusEdge:
    """A ``PlcImage`` served over Modbus TCP (see module docstring)."""

    protocol = "modbus"

    def __init__(self, image: PlcImage, host: str = "127.0.0.1", port: int = 0,
                 on_command: CommandHook | None = None, **limits: Any) -> None:  # fmt: skip
        """``limits``: the listener's ``max_connections``, ``idle_timeout_s`` [wall s] and
        ``max_pipelined`` (``ModbusTagServer``; defaults: 16 connections, 120 s, 16 requests)."""
        from plc_bridge.modbus_server import ModbusTagServer

        self.image = image
        self.on_command = on_command
        self.refuse_with: int | None = None
        self.refuse_probability = 1.0
        self._rng = random.Random(7)
        self.server = ModbusTagServer(image.tagmap, host, port, on_write=self._on_write, on_request=self._on_request,
                                      **limits)  # fmt: skip
        tm = image.tagmap
        # what the image holds (not bit views of a served word, not aliases: their register
        # is another tag's), by (tag name, role)
        served = [(t.name, t.role) for t in tm if t.cell is None and t.has_modbus and t.alias_of is None
                  and t.role not in image.scalars.views]  # fmt: skip
        self._plain_out = [(n, r) for n, r in served if not tm[n].writable]
        self._plain_rw = [n for n, _r in served if tm[n].writable]
        fields = []
        if tm.cells is not None:
            for f in tm.cells.fields:
                t0 = tm[tm.cell_tags(f)[0]]
                if t0.has_modbus and not t0.writable and t0.alias_of is None and t0.role not in image.cell_bit_of:
                    fields.append((f, t0.role))
        self._fields_out = fields

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def running(self) -> bool:
        return self.server.running

    def endpoint(self) -> dict[str, Any]:
        return {"protocol": "modbus", "host": self.host, "port": self.port}

    async def start(self) -> None:
        await self.server.start()
        for n in self._plain_rw:
            self.server.set(n, self.image.get(n))
        for n in self.image.take_dirty():
            self.server.set(n, self.image.get(n))
        self.publish()

    async def stop(self) -> None:
        await self.server.stop()

    def publish(self) -> None:
        """Copy measurements (read-only tags) and PLC-changed command tags into the registers."""
        if not self.server.running:
            return
        self.image.sync()
        srv, img = self.server, self.image
        for n, r in self._plain_out:
            srv.set(n, img.scalars[r])
        for f, r in self._fields_out:
            srv.set_array(f, img.cells[r])
        for n in img.take_dirty():
            srv.set(n, img.get(n))

    def _on_write(self, w: Any) -> None:
        for name, value in w.values.items():
            tag = self.image.tagmap[name]
            if not tag.writable:
                continue
            self.image.set(name, value, by_plc=False)
            if self.on_command is not None:
                self.on_command(name, value)

    def _on_request(self, info: Any) -> int | None:
        code = self.refuse_with
        if code and (self.refuse_probability >= 1.0 or self._rng.random() < self.refuse_probability):
            return int(code)
        return None


class OpcUaEdge:
    """A ``PlcImage`` served over OPC UA (see module docstring)."""

    protocol = "opcua"
    #: listener limits (set on the instance before ``start`` to change them)
    max_connections = 16
    activation_timeout_s = 10.0  # [wall s] a connection without an activated session is closed
    session_timeout_max_s = 120.0  # [wall s] a session idle this long is closed with its connection

    def __init__(self, image: PlcImage, host: str = "127.0.0.1", port: int = 0, path: str = "/plc/",
                 on_command: CommandHook | None = None, security: OpcUaSecurityConfig | None = None) -> None:  # fmt: skip
        """``security``: the PLC's OPC UA security (endpoints, users, anonymous access, trusted
        client certificates; see the module docstring); None: NoSecurity, anonymous writes."""
        self.image = image
        self.security = security
        #: refused logins and denied writes (rate-limited summaries, ``SecurityAudit``)
        self.security_events: list[SecurityEvent] = []
        self.host = host
        self._port = int(port)
        self.path = path if path.startswith("/") else "/" + path
        self.on_command = on_command
        self.namespace_uri = image.tagmap.namespace or opcua_namespace(image.tagmap.instance)
        #: when set (a ``ua.StatusCodes`` value), every Read of a tag returns this Bad status
        self.bad_status: int | None = None
        self._server: Any = None
        self._stamp = datetime.now(UTC)
        #: (node id, reader) of every tag variable, for pushing monitored values
        self._sources: list[tuple[Any, Callable[[Any, Any], Any]]] = []
        self._sent: dict[Any, tuple[Any, Any]] = {}
        self._push_task: asyncio.Task[None] | None = None
        self._monitored: list[tuple[Any, Callable[[Any, Any], Any], dict[int, Any]]] = []
        self._monitored_at = -math.inf
        #: values pushed to subscriptions (monitored nodes whose value or status changed)
        self.pushed = 0

    @property
    def port(self) -> int:
        return self._port

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def endpoint_url(self) -> str:
        return f"opc.tcp://{self.host}:{self._port}{self.path}"

    def endpoint(self) -> dict[str, Any]:
        return {"protocol": "opcua", "host": self.host, "port": self._port, "path": self.path,
                "namespace": self.namespace_uri}  # fmt: skip

    def publish(self) -> None:
        """Stamps the source time (reads are served from the image) and pushes the changed
        values of monitored nodes to their subscriptions (in a task of the running loop)."""
        self._stamp = datetime.now(UTC)
        self.image.sync()
        self.image.take_dirty()
        if self._server is not None and (self._push_task is None or self._push_task.done()):
            with contextlib.suppress(RuntimeError):  # no running loop: nothing to push to
                self._push_task = asyncio.get_running_loop().create_task(self._push(), name="opcua-plc-push")

    async def _push(self) -> None:
        from asyncua import ua

        server = self._server
        if server is None:
            return
        aspace = server.iserver.aspace
        now = time.monotonic()
        if now - self._monitored_at >= MONITORED_REFRESH_S:
            # which nodes someone monitors: looked up at most once a second (a new monitored
            # item gets its initial value from the server at once, its changes from then on)
            self._monitored_at = now
            self._monitored = []
            for nid, reader in self._sources:
                node = aspace.get(nid)
                if node is not None and node.attributes[ua.AttributeIds.Value].datachange_callbacks:
                    self._monitored.append((nid, reader, node.attributes[ua.AttributeIds.Value].datachange_callbacks))
        for nid, reader, callbacks in self._monitored:
            if not callbacks:
                continue
            dv = reader(nid, ua.AttributeIds.Value)
            key = (dv.Value.Value if dv.Value is not None else None, dv.StatusCode)
            if self._sent.get(nid) == key:
                continue
            self._sent[nid] = key
            self.pushed += 1
            for handle, cb in list(callbacks.items()):
                try:
                    await cb(handle, dv)
                except Exception:
                    log.exception("opcua_plc_push_failed", plc=self.image.tagmap.instance, node=nid.to_string())

    async def start(self) -> None:
        from asyncua import Server

        if self._server is not None:
            return
        if self._port == 0:
            from plc_bridge.ports import free_port

            self._port = free_port(self.host)
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint_url)
        server.set_server_name(f"simulated PLC {self.image.tagmap.instance}")
        from asyncua import ua

        if self.security is None:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        else:
            from plc_bridge.opcua_security import SecurityAudit, configure_server_security, trust_problems

            problems = trust_problems(self.security, require=True)
            if problems:
                raise ValueError("; ".join(f"PLC {self.image.tagmap.instance} opcua security {k}: {m}"
                                           for k, m in problems))  # fmt: skip
            await configure_server_security(server, self.security, SecurityAudit(self._security_event))
        iserver = server.iserver  # listener limits: a PLC's OPC UA stack serves a handful of clients
        iserver.max_connections = self.max_connections  # more are closed at connect
        iserver.max_pending_activation_seconds = self.activation_timeout_s  # no session by then: closed
        iserver.max_session_timeout_ms = self.session_timeout_max_s * 1000.0  # an idle session and its link close
        idx = await server.register_namespace(self.namespace_uri)
        await self._build(server, idx)
        await server.start()
        self._server = server
        log.info(
            "opcua_plc_started", plc=self.image.tagmap.instance, url=self.endpoint_url, tags=len(self.image.tagmap)
        )

    def _security_event(self, ev: SecurityEvent) -> None:
        self.security_events.append(ev)
        log.warning("opcua_plc_security_event", plc=self.image.tagmap.instance, **ev.journal_fields())

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        task, self._push_task = self._push_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        task = getattr(server.iserver, "time_task", None)
        if task is not None:  # asyncua's 1 s clock task would delay stop()
            server.iserver._time_task_stop = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            server.iserver.time_task = None
        with contextlib.suppress(Exception):
            await server.stop()
        log.info("opcua_plc_stopped", plc=self.image.tagmap.instance)

    # ------------------------------------------------------------------ address space

    async def _build(self, server: Any, idx: int) -> None:
        from asyncua import ua

        from plc_bridge.opcua_server import object_node_item

        items: list[Any] = []
        objects: dict[str, ua.NodeId] = {}
        leaves: list[tuple[Tag, ua.NodeId, ua.VariantType]] = []
        root = ua.NodeId(ua.Int32(ua.ObjectIds.ObjectsFolder))
        for tag in self.image.tagmap:
            if not (tag.browse_path or tag.node_id) or tag.alias_of is not None:  # an alias: its target's node
                continue
            # a tag known by NodeId only is put under Objects/<instance>/<tag name>
            path = tag.browse_path or f"Objects/{self.image.tagmap.instance}/{tag.name}"
            parts = [p for p in path.strip("/").split("/") if p]
            if parts and parts[0] == "Objects":
                parts = parts[1:]
            if not parts:
                continue
            parent = root
            for depth in range(len(parts) - 1):
                key = ".".join(parts[: depth + 1])
                nid = objects.get(key)
                if nid is None:
                    nid = ua.NodeId(ua.String(key), ua.Int16(idx))
                    objects[key] = nid
                    items.append(
                        object_node_item(
                            nid,
                            ua.QualifiedName(parts[depth], idx),
                            parent,
                            ua.ObjectIds.Organizes if depth == 0 else ua.ObjectIds.HasComponent,
                        )
                    )
                parent = nid
            vt = variant_type(tag)
            if tag.node_id:
                nid = ua.NodeId.from_string(tag.node_id)
                uri = getattr(nid, "NamespaceUri", None)  # an ExpandedNodeId from "nsu=<uri>;s=..."
                if uri:  # served in that namespace, by its index
                    ns = await server.register_namespace(uri)
                    nid = ua.NodeId(nid.Identifier, ua.Int16(ns), nid.NodeIdType)
            else:
                nid = ua.NodeId(ua.String(".".join(parts)), ua.Int16(idx))
            value = ua.Variant(_coerce(vt, _wire(tag, self.image.get(tag.name))), vt)
            items.append(_variable_item(ua, nid, ua.QualifiedName(parts[-1], idx), parent, value, tag))
            items += _eu_items(ua, nid, tag)
            leaves.append((tag, nid, vt))
        results = await server.iserver.isession.add_nodes(items)
        for item, res in zip(items, results, strict=False):
            if not res.StatusCode.is_good():
                raise RuntimeError(f"OPC UA node {item.RequestedNewNodeId.to_string()}: {res.StatusCode.name}")
        aspace = server.iserver.aspace
        self._sources, self._monitored, self._monitored_at, self._sent = [], [], -math.inf, {}
        for tag, nid, vt in leaves:
            reader = self._reader(tag, vt)
            self._sources.append((nid, reader))
            aspace.set_attribute_value_callback(nid, ua.AttributeIds.Value, reader)
            if tag.writable:
                aspace.set_attribute_value_setter(nid, ua.AttributeIds.Value, self._writer(tag, vt))

    def _reader(self, tag: Tag, vt: Any) -> Callable[[Any, Any], Any]:
        from asyncua import ua

        from plc_bridge.opcua_server import ua_datetime

        name, image = tag.name, self.image

        def read(_nid: Any, _attr: Any) -> Any:
            stamp = ua_datetime(self._stamp)
            if self.bad_status is not None:
                return ua.DataValue(StatusCode=ua.StatusCode(ua.UInt32(self.bad_status)), ServerTimestamp=stamp)
            return ua.DataValue(ua.Variant(_coerce(vt, _wire(tag, image.get(name))), vt), SourceTimestamp=stamp,
                                ServerTimestamp=stamp)  # fmt: skip

        return read

    def _writer(self, tag: Tag, vt: Any) -> Callable[[Any, Any, Any], None]:
        from asyncua import ua

        name = tag.name

        def write(_nodedata: Any, _attr: Any, dv: Any) -> None:
            v = dv.Value
            if v is None or v.VariantType != vt:
                raise ua.UaStatusCodeError(ua.StatusCodes.BadTypeMismatch)
            x = v.Value
            if tag.type is not DataType.BOOL:
                fx = float(x)
                if not math.isfinite(fx) or fx < tag.lo or fx > tag.hi:
                    log.warning("opcua_plc_write_rejected", tag=name, value=x, min=tag.min, max=tag.max)
                    raise ua.UaStatusCodeError(ua.StatusCodes.BadOutOfRange)
            value = _wire(tag, x)  # an inverted bit: the node holds the PLC's bit, the image the meaning
            self.image.set(name, value, by_plc=False)
            if self.on_command is not None:
                self.on_command(name, value)

        return write


def _wire(tag: Tag, value: Any) -> Any:
    """The value of ``tag`` as the PLC holds it (an ``invert`` bool negated); its own inverse."""
    return (not bool(value)) if tag.invert and tag.type is DataType.BOOL else value


def variant_type(tag: Tag) -> Any:
    """OPC UA VariantType a simulated PLC serves ``tag`` as (see module docstring)."""
    from asyncua import ua

    if tag.type is DataType.BOOL:
        return ua.VariantType.Boolean
    if tag.type.is_int and (tag.scale != 1.0 or tag.offset != 0.0):
        return ua.VariantType.Double
    return {
        DataType.INT16: ua.VariantType.Int16,
        DataType.UINT16: ua.VariantType.UInt16,
        DataType.INT32: ua.VariantType.Int32,
        DataType.UINT32: ua.VariantType.UInt32,
        DataType.FLOAT32: ua.VariantType.Float,
        DataType.FLOAT64: ua.VariantType.Double,
    }[tag.type]


def _coerce(vt: Any, value: Any) -> Any:
    from asyncua import ua

    if vt == ua.VariantType.Boolean:
        return bool(value)
    if vt in (ua.VariantType.Float, ua.VariantType.Double):
        return float(value)
    v = float(value)
    return int(v) if math.isfinite(v) else 0


#: UN/CEFACT Rec. 20 common codes of the units the tag maps use (EUInformation.UnitId)
UNECE_BY_UNIT = {"kA": "B22", "A": "AMP", "V": "VLT", "mm": "MMT", "MWh": "MWH", "s": "SEC", "K": "KEL"}


def _is_analog(tag: Tag) -> bool:
    return tag.type is not DataType.BOOL and tag.true_when is None and bool(tag.unit or tag.min is not None)


def _eu_items(ua: Any, nid: Any, tag: Tag) -> list[Any]:
    """``EngineeringUnits`` and ``EURange`` properties of an analog variable (OPC 10000-8)."""
    from plc_bridge.opcua_server import UNECE_NAMESPACE, unece_unit_id

    if not _is_analog(tag) or not isinstance(nid.Identifier, str):
        return []
    out = []
    if tag.unit:
        code = UNECE_BY_UNIT.get(tag.unit)
        eu = ua.EUInformation(NamespaceUri=UNECE_NAMESPACE, UnitId=unece_unit_id(code) if code else -1,
                              DisplayName=ua.LocalizedText(tag.unit, ""), Description=ua.LocalizedText(tag.unit, ""))  # fmt: skip
        out.append(_property_item(ua, nid, "EngineeringUnits", ua.Variant(eu, ua.VariantType.ExtensionObject),
                                  ua.ObjectIds.EUInformation))  # fmt: skip
    if tag.min is not None and tag.max is not None:
        rng = ua.Range(Low=float(tag.min), High=float(tag.max))
        out.append(
            _property_item(ua, nid, "EURange", ua.Variant(rng, ua.VariantType.ExtensionObject), ua.ObjectIds.Range)
        )
    return out


def _property_item(ua: Any, parent: Any, name: str, value: Any, datatype: int) -> Any:
    item = ua.AddNodesItem()
    item.RequestedNewNodeId = ua.NodeId(ua.String(f"{parent.Identifier}.{name}"), parent.NamespaceIndex)
    item.BrowseName = ua.QualifiedName(name, 0)
    item.NodeClass = ua.NodeClass.Variable
    item.ParentNodeId = parent
    item.ReferenceTypeId = ua.NodeId(ua.Int32(ua.ObjectIds.HasProperty))
    item.TypeDefinition = ua.NodeId(ua.Int32(ua.ObjectIds.PropertyType))
    attrs = ua.VariableAttributes()
    attrs.DisplayName = ua.LocalizedText(name)
    attrs.Description = ua.LocalizedText(name)
    attrs.DataType = ua.NodeId(ua.Int32(datatype))
    attrs.Value = value
    attrs.ValueRank = ua.ValueRank.Scalar
    attrs.AccessLevel = ua.AccessLevel.CurrentRead.mask
    attrs.UserAccessLevel = ua.AccessLevel.CurrentRead.mask
    item.NodeAttributes = attrs
    return item


def _variable_item(ua: Any, nid: Any, qname: Any, parent: Any, value: Any, tag: Tag) -> Any:
    item = ua.AddNodesItem()
    item.RequestedNewNodeId = nid
    item.BrowseName = qname
    item.NodeClass = ua.NodeClass.Variable
    item.ParentNodeId = parent
    item.ReferenceTypeId = ua.NodeId(ua.ObjectIds.HasComponent)
    item.TypeDefinition = ua.NodeId(
        ua.ObjectIds.AnalogItemType if _is_analog(tag) else ua.ObjectIds.BaseDataVariableType
    )
    attrs = ua.VariableAttributes()
    attrs.DisplayName = ua.LocalizedText(qname.Name)
    desc = f"{tag.description} [{tag.unit}]" if tag.unit else tag.description
    attrs.Description = ua.LocalizedText(desc)
    attrs.DataType = ua.NodeId(value.VariantType.value)
    attrs.Value = value
    attrs.ValueRank = ua.ValueRank.Scalar
    access = ua.AccessLevel.CurrentRead.mask | (ua.AccessLevel.CurrentWrite.mask if tag.writable else 0)
    attrs.AccessLevel = access
    attrs.UserAccessLevel = access
    attrs.MinimumSamplingInterval = 0.0
    item.NodeAttributes = attrs
    return item


def make_edge(protocol: str, image: PlcImage, host: str = "127.0.0.1", port: int = 0,
              on_command: CommandHook | None = None,
              security: OpcUaSecurityConfig | None = None) -> ModbusEdge | OpcUaEdge:  # fmt: skip
    """An edge for ``protocol`` ("modbus" | "opcua"; ``security`` only for OPC UA)."""
    if protocol == "modbus":
        if security is not None:
            raise ValueError("OPC UA security given for a Modbus PLC (Modbus TCP has none)")
        return ModbusEdge(image, host, port, on_command)
    if protocol == "opcua":
        return OpcUaEdge(image, host, port, on_command=on_command, security=security)
    raise ValueError(f"unknown PLC protocol {protocol!r}; expected 'modbus' or 'opcua'")
