"""The mirror: an OPC UA server that publishes the twin's view of the plant.

Address space (one namespace, ``urn:potline-twin:mirror``; string NodeIds built from
the browse path, so they survive restarts; PascalCase browse names)::

    Objects/
      <Plant>/                                    s=<Plant>
        Twin/                                     s=<Plant>.Twin
          Mode            String  observe|shadow|control (read-only; change with SetMode)
          ModelTime       Double  plant time of the last publish [s]
          PublishCount    UInt64
          SetMode(Mode: String) -> PreviousMode: String      operators only
        <Line>/                                   s=<Plant>.<Line>
          LineCurrent     Double  [kA]   (line-level quantities, one scalar per line)
          LineVoltage     Double  [V]
        <Room>/                                   s=<Plant>.<Room>
          CellNumbers     UInt16[n]  floor number of each array element
          CellVoltage     Float[n]   bulk array, one element per cell of the room
          ...                        (one array per cell quantity)
          Cell001/                                s=<Plant>.<Room>.Cell001
            CellVoltage   Float  AnalogItemType with EngineeringUnits + EURange
            ...

Bulk clients read or subscribe to the per-room arrays (tens of nodes for a whole
potline); browsing and single-cell clients use the per-cell scalars. ``publish``
writes arrays on every call through the internal address space (typed, StatusCodes
checked) and refreshes the scalars at ``scalar_period_s`` of plant time, only where a
value moved by more than its deadband, since writes to subscribed nodes are ~10x
dearer (docs/architecture.md, "Library facts").

Anode-effect starts and ends are OPC UA events of type ``AnodeEffectEventType``
(fields Cell, PeakVoltage [V], Duration [s], Active) emitted by the Server object.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import structlog
from asyncua import Server, ua
from asyncua.common.callback import CallbackType

from plc_bridge.opcua_security import (
    OpcUaSecurityConfig,
    SecurityAudit,
    SecurityEvent,
    configure_server_security,
    current_user,
)
from plc_bridge.ports import free_port
from twin.layout import PlantLayout

__all__ = [
    "DEFAULT_QUANTITIES",
    "MODES",
    "NAMESPACE_URI",
    "MirrorServer",
    "PublishReport",
    "QuantitySpec",
    "free_port",
    "ua_datetime",
    "unece_unit_id",
]

log = structlog.get_logger(__name__)

NAMESPACE_URI = "urn:potline-twin:mirror"
UNECE_NAMESPACE = "http://www.opcfoundation.org/UA/units/un/cefact"
MODES = ("observe", "shadow", "control")

_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_NP_DTYPES = {
    ua.VariantType.Float: np.float32,
    ua.VariantType.Double: np.float64,
    ua.VariantType.Boolean: np.bool_,
    ua.VariantType.Int32: np.int32,
    ua.VariantType.UInt32: np.uint32,
    ua.VariantType.Int64: np.int64,
    ua.VariantType.UInt16: np.uint16,
}
_YIELD_EVERY = 1000  # scalar writes between yields to the event loop
#: UN/CEFACT Rec. 20 names of the codes used here (EUInformation.Description)
UNECE_NAMES = {
    "VLT": "volt", "B94": "micro-ohm", "P1": "percent", "CMT": "centimetre", "KEL": "kelvin",
    "SEC": "second", "B22": "kiloampere", "AMP": "ampere", "MMT": "millimetre", "CEL": "degree Celsius",
    "KGM": "kilogram",
}  # fmt: skip


def unece_unit_id(common_code: str) -> int:
    """OPC UA ``EUInformation.UnitId`` of a UN/CEFACT Rec. 20 common code (OPC 10000-8)."""
    unit_id = 0
    for ch in common_code[:4]:
        unit_id = (unit_id << 8) | ord(ch)
    return unit_id


@dataclass(frozen=True, slots=True)
class QuantitySpec:
    """One published quantity.

    Attributes:
        name: PascalCase browse name; also the key in the ``publish`` snapshot.
        unit: unit symbol shown to people ("V", "µΩ", ...); "" for dimensionless/bool.
        description: one line for the node's Description.
        eu_range: (low, high) engineering range in ``unit``; None for booleans.
        vtype: OPC UA data type (Float, Double, Boolean, ...).
        unece: UN/CEFACT common code of the unit (e.g. "VLT"), None when there is none.
        level: "cell" (array per room + scalar per cell) or "line" (scalar per line).
        deadband: per-cell scalars are rewritten only when the value moved more than
            this (absolute, in ``unit``); 0 = on any change.
        writable: operators may write the per-cell scalars (forwarded to ``on_write``).
    """

    name: str
    unit: str
    description: str
    eu_range: tuple[float, float] | None
    vtype: ua.VariantType = ua.VariantType.Float
    unece: str | None = None
    level: Literal["cell", "line"] = "cell"
    deadband: float = 0.0
    writable: bool = False

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(_NP_DTYPES[self.vtype])


#: What the mirror publishes by default (units: UN/CEFACT Rec. 20 common codes).
DEFAULT_QUANTITIES: tuple[QuantitySpec, ...] = (
    QuantitySpec("CellVoltage", "V", "Cell voltage (measured)", (0.0, 60.0), ua.VariantType.Float, "VLT",
                 deadband=0.001),
    QuantitySpec("PseudoResistance", "µΩ", "Pseudo-resistance (U - 1.65 V) / I", (0.0, 100.0),
                 ua.VariantType.Float, "B94", deadband=0.005),
    QuantitySpec("AluminaEstimate", "wt%", "Estimated dissolved alumina (percent by mass)", (0.0, 10.0),
                 ua.VariantType.Float, "P1", deadband=0.005),
    QuantitySpec("AcdEstimate", "cm", "Estimated anode-cathode distance", (0.0, 10.0), ua.VariantType.Float,
                 "CMT", deadband=0.005),
    QuantitySpec("Superheat", "K", "Estimated bath superheat", (-20.0, 60.0), ua.VariantType.Float, "KEL",
                 deadband=0.05),
    QuantitySpec("TimeToAnodeEffect", "s", "Predicted time to the next anode effect (inf: none expected)",
                 (0.0, 86400.0), ua.VariantType.Float, "SEC", deadband=1.0),
    QuantitySpec("AnodeEffect", "", "Anode effect in progress", None, ua.VariantType.Boolean),
    QuantitySpec("LineCurrent", "kA", "Line current (DCCT)", (0.0, 600.0), ua.VariantType.Double, "B22",
                 level="line"),
    QuantitySpec("LineVoltage", "V", "Rectifier DC output voltage", (0.0, 2000.0), ua.VariantType.Double, "VLT",
                 level="line"),
)  # fmt: skip


@dataclass(slots=True)
class PublishReport:
    """What one ``publish`` call did."""

    arrays_written: int = 0
    scalars_written: int = 0
    errors: list[str] = field(default_factory=list)


ModeHandler = Callable[[str, "str | None"], Awaitable[None]]
WriteHandler = Callable[[str, int, Any, "str | None"], Awaitable[None]]


class MirrorServer:
    """OPC UA server exposing the twin of a ``PlantLayout`` (see the module docstring).

    Usage::

        async with MirrorServer(layout, security=cfg, port=4840) as mirror:
            mirror.set_mode_handler(daemon.change_mode)
            await mirror.publish({"CellVoltage": u, "LineCurrent": i_ka, ...}, t)
            await mirror.publish_event("start", cell=17, peak_voltage_v=31.0, duration_s=0.0)
    """

    def __init__(
        self,
        layout: PlantLayout,
        quantities: Sequence[QuantitySpec] = DEFAULT_QUANTITIES,
        *,
        security: OpcUaSecurityConfig | None = None,
        host: str | None = None,
        port: int = 4840,
        path: str = "/potline-twin/",
        namespace_uri: str = NAMESPACE_URI,
        scalar_period_s: float | None = 0.0,
        deadbands: Mapping[str, float] | None = None,
        initial_mode: str = "observe",
        server_name: str = "potline-twin mirror",
        security_summary_s: float = 60.0,
    ) -> None:
        """
        Args:
            layout: lines, rooms and cells to expose.
            quantities: what to publish (``DEFAULT_QUANTITIES`` by default).
            security: endpoints, users and certificates; None = NoSecurity endpoint with
                anonymous read-only access and no logins (loopback labs and HIL rigs).
            host: interface to bind (default ``security.host``, i.e. 127.0.0.1).
            port: TCP port; 0 picks a free one.
            path: endpoint path.
            scalar_period_s: minimum plant time between per-cell scalar refreshes [s];
                0 = every publish, None = never (arrays only).
            deadbands: per-quantity overrides of ``QuantitySpec.deadband``.
            initial_mode: value of Twin/Mode at start.
            security_summary_s: refused logins and denied requests of one kind, user and
                source reach ``on_security_event`` at once, then summed per this window [s].
        """
        self.layout = layout
        self.quantities = tuple(quantities)
        self._check_names()
        if initial_mode not in MODES:
            raise ValueError(f"initial_mode must be one of {MODES}, got {initial_mode!r}")
        self.security = security
        self.host = host or (security.host if security else "127.0.0.1")
        self.port = port or free_port(self.host)
        self.path = path if path.startswith("/") else "/" + path
        self.namespace_uri = namespace_uri
        self.scalar_period_s = scalar_period_s
        self.server_name = server_name
        self._deadband = {q.name: float((deadbands or {}).get(q.name, q.deadband)) for q in self.quantities}
        unknown = set(deadbands or {}) - {q.name for q in self.quantities}
        if unknown:
            raise ValueError(f"deadbands: unknown quantities {sorted(unknown)}")
        self.cell_quantities = tuple(q for q in self.quantities if q.level == "cell")
        self.line_quantities = tuple(q for q in self.quantities if q.level == "line")
        self._mode = initial_mode
        self._mode_handler: ModeHandler | None = None
        self._write_handler: WriteHandler | None = None
        self._server: Server | None = None
        self.idx = 0
        self._rooms_cells = [layout.room_cells(r) for r in range(layout.n_rooms)]
        # state: last values written (for deadbands and writable quantities)
        self._cell_values = {q.name: np.zeros(layout.n_cells, dtype=q.dtype) for q in self.cell_quantities}
        self._scalar_last = {q.name: np.full(layout.n_cells, np.nan) for q in self.cell_quantities}
        self._last_scalar_t: float | None = None
        self._publish_count = 0
        self._warned_keys: set[str] = set()
        self._scalar_index: dict[ua.NodeId, tuple[QuantitySpec, int]] = {}
        self._ae_event: Any = None
        self._lock = asyncio.Lock()
        self.security_summary_s = float(security_summary_s)
        self._security_sink: Callable[[SecurityEvent], None] | None = None
        #: the refused logins and denied requests (``SecurityAudit``; after ``start``)
        self.audit: SecurityAudit | None = None
        self._audit_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ naming

    def _check_names(self) -> None:
        lay = self.layout
        names = [("plant", lay.plant)] + [("line", n) for n in lay.line_names] + [("room", n) for n in lay.room_names]
        names += [("quantity", q.name) for q in self.quantities]
        for kind, name in names:
            if not _NAME_RE.match(name):
                raise ValueError(f"{kind} name {name!r}: expected letters, digits and '_' starting with a letter")
        top = list(lay.line_names) + list(lay.room_names) + ["Twin"]
        dupes = {n for n in top if top.count(n) > 1}
        if dupes:
            raise ValueError(f"line/room names must be unique and not 'Twin': {sorted(dupes)}")
        qnames = [q.name for q in self.quantities]
        if len(set(qnames)) != len(qnames) or "CellNumbers" in qnames:
            raise ValueError(f"quantity names must be unique and not 'CellNumbers': {qnames}")
        for r in range(lay.n_rooms):
            nums = lay.cell_number[lay.room_cells(r)]
            if len(np.unique(nums)) != len(nums):
                raise ValueError(f"room {lay.room_names[r]}: duplicate cell numbers")

    def _path(self, *parts: str) -> str:
        """String identifier ``<Plant>.<part>...`` of a node (see the module docstring)."""
        return ".".join((self.layout.plant, *parts))

    def _nid(self, *parts: str) -> ua.NodeId:
        return ua.NodeId(ua.String(self._path(*parts)), ua.Int16(self.idx))

    def cell_object_name(self, k: int) -> str:
        """Browse name of cell ``k``'s object, e.g. ``Cell017``."""
        return f"Cell{int(self.layout.cell_number[k]):03d}"

    def array_node_id(self, quantity: str, room: int) -> ua.NodeId:
        """NodeId of the per-room array of ``quantity``."""
        return self._nid(self.layout.room_names[room], quantity)

    def cell_node_id(self, quantity: str, cell: int) -> ua.NodeId:
        """NodeId of cell ``cell``'s scalar ``quantity`` (layout cell index)."""
        room = self.layout.room_names[int(self.layout.cell_room[cell])]
        return self._nid(room, self.cell_object_name(cell), quantity)

    def line_node_id(self, quantity: str, line: int) -> ua.NodeId:
        """NodeId of line ``line``'s scalar ``quantity``."""
        return self._nid(self.layout.line_names[line], quantity)

    @property
    def endpoint_url(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}{self.path}"

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def server(self) -> Server:
        """The underlying asyncua server (after ``start``)."""
        if self._server is None:
            raise RuntimeError("MirrorServer is not started")
        return self._server

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> MirrorServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Build the address space and listen (a few seconds for 660 cells)."""
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint_url)
        server.set_server_name(self.server_name)
        cfg = self.security or OpcUaSecurityConfig(
            state_dir=Path("."), sign=False, sign_and_encrypt=False, allow_no_security=True, anonymous="read_only"
        )
        self.audit = SecurityAudit(self._security_event, window_s=self.security_summary_s)
        ruleset = await configure_server_security(server, cfg, self.audit)
        self.idx = await server.register_namespace(self.namespace_uri)
        self._server = server
        await self._build_address_space()
        method_id = self._nid("Twin", "SetMode")
        ruleset.protected_methods.add(method_id)
        server.subscribe_server_callback(CallbackType.PostWrite, self._on_post_write)
        await server.start()
        self._audit_task = asyncio.create_task(self._flush_audit(), name="opcua-security-audit")
        log.info(
            "opcua.mirror_started",
            endpoint=self.endpoint_url,
            cells=self.layout.n_cells,
            rooms=self.layout.n_rooms,
            security=[str(p.name) for p in cfg.policy_types()],
        )

    async def stop(self) -> None:
        """Close client connections and the listener."""
        task, self._audit_task = self._audit_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.audit is not None:
            self.audit.flush(force=True)
        if self._server is not None:
            server, self._server = self._server, None
            # asyncua's clock task sleeps 1 s between ticks and stop() waits for it: cancel it
            task = getattr(server.iserver, "time_task", None)
            if task is not None:
                server.iserver._time_task_stop = True
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                server.iserver.time_task = None
            await server.stop()
            log.info("opcua.mirror_stopped", endpoint=self.endpoint_url)

    # ------------------------------------------------------------------ address space

    async def _build_address_space(self) -> None:
        lay, idx = self.layout, self.idx
        server = self.server
        items: list[ua.AddNodesItem] = []
        objects = ua.NodeId(ua.Int32(ua.ObjectIds.ObjectsFolder))
        plant = self._nid()
        items.append(object_node_item(plant, ua.QualifiedName(lay.plant, idx), objects, ua.ObjectIds.Organizes))
        twin = self._nid("Twin")
        items.append(object_node_item(twin, ua.QualifiedName("Twin", idx), plant))
        items.append(_variable_item(self._nid("Twin", "Mode"), "Mode", idx, twin,
                                    ua.Variant(self._mode, ua.VariantType.String),
                                    "Operating mode: observe, shadow or control"))  # fmt: skip
        items.append(
            _variable_item(
                self._nid("Twin", "ModelTime"),
                "ModelTime",
                idx,
                twin,
                ua.Variant(0.0, ua.VariantType.Double),
                "Plant time of the last publish [s]",
            )
        )
        items.append(
            _variable_item(
                self._nid("Twin", "PublishCount"),
                "PublishCount",
                idx,
                twin,
                ua.Variant(0, ua.VariantType.UInt64),
                "Number of publishes since start",
            )
        )
        for _li, line in enumerate(lay.line_names):
            lnode = self._nid(line)
            items.append(object_node_item(lnode, ua.QualifiedName(line, idx), plant))
            for q in self.line_quantities:
                items += _analog_items(self._nid(line, q.name), q, idx, lnode, ua.Variant(0.0, q.vtype))
        for r, room in enumerate(lay.room_names):
            rnode = self._nid(room)
            cells = self._rooms_cells[r]
            items.append(object_node_item(rnode, ua.QualifiedName(room, idx), plant))
            numbers = ua.Variant(lay.cell_number[cells].astype(np.uint16).tolist(), ua.VariantType.UInt16)
            items.append(
                _variable_item(
                    self._nid(room, "CellNumbers"),
                    "CellNumbers",
                    idx,
                    rnode,
                    numbers,
                    "Floor number of the cell at each array index",
                    array_len=len(cells),
                )
            )
            for q in self.cell_quantities:
                zeros = ua.Variant(self._cell_values[q.name][cells].tolist(), q.vtype)
                items += _analog_items(self._nid(room, q.name), q, idx, rnode, zeros, array_len=len(cells))
            for k in cells:
                cname = self.cell_object_name(k)
                cnode = self._nid(room, cname)
                items.append(object_node_item(cnode, ua.QualifiedName(cname, idx), rnode))
                for q in self.cell_quantities:
                    nid = self._nid(room, cname, q.name)
                    init = ua.Variant(self._cell_values[q.name][k].item(), q.vtype)
                    items += _analog_items(nid, q, idx, cnode, init)
                    self._scalar_index[nid] = (q, int(k))
        results = await server.iserver.isession.add_nodes(items)
        for item, res in zip(items, results, strict=False):
            if not res.StatusCode.is_good():
                raise RuntimeError(f"OPC UA node {item.RequestedNewNodeId.to_string()}: {res.StatusCode.name}")
        await self._build_methods_and_events(twin)

    async def _build_methods_and_events(self, twin_nid: ua.NodeId) -> None:
        server, idx = self.server, self.idx
        twin = server.get_node(twin_nid)
        await twin.add_method(
            self._nid("Twin", "SetMode"),
            ua.QualifiedName("SetMode", idx),
            self._set_mode_method,
            [ua.Argument(Name="Mode", DataType=ua.NodeId(ua.Int32(ua.ObjectIds.String)), ValueRank=-1,
                         Description=ua.LocalizedText("observe, shadow or control"))],
            [ua.Argument(Name="PreviousMode", DataType=ua.NodeId(ua.Int32(ua.ObjectIds.String)), ValueRank=-1)],
        )  # fmt: skip
        base = server.get_node(ua.NodeId(ua.Int32(ua.ObjectIds.BaseEventType)))
        etype = await base.add_object_type(
            ua.NodeId(ua.String("AnodeEffectEventType"), ua.Int16(idx)),
            ua.QualifiedName("AnodeEffectEventType", idx),
        )
        for name, default, vt in (
            ("Cell", "", ua.VariantType.String),
            ("PeakVoltage", 0.0, ua.VariantType.Double),
            ("Duration", 0.0, ua.VariantType.Double),
            ("Active", False, ua.VariantType.Boolean),
        ):
            await etype.add_property(
                ua.NodeId(ua.String(f"AnodeEffectEventType.{name}"), ua.Int16(idx)),
                ua.QualifiedName(name, idx),
                default,
                varianttype=vt,
            )
        self.anode_effect_event_type = etype.nodeid
        self._ae_event = await server.get_event_generator(etype, ua.ObjectIds.Server)

    # ------------------------------------------------------------------ handlers

    def set_mode_handler(self, handler: ModeHandler) -> None:
        """Register ``async handler(mode, user)`` run when an operator calls SetMode.

        Raise ``ValueError`` in the handler to refuse the change (client gets
        BadInvalidState); Twin/Mode changes only when the handler returns.
        """
        self._mode_handler = handler

    def on_security_event(self, callback: Callable[[SecurityEvent], None]) -> None:
        """Register ``callback(event)`` for refused logins and denied writes/calls (rate-limited
        summaries, see ``security_summary_s``); it runs in the server's event loop (its thread)."""
        self._security_sink = callback

    def _security_event(self, event: SecurityEvent) -> None:
        if self._security_sink is not None:
            self._security_sink(event)

    async def _flush_audit(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.security_summary_s / 4.0))
            if self.audit is not None:
                self.audit.flush()

    def on_write(self, handler: WriteHandler) -> None:
        """Register ``async handler(quantity, cell, value, user)`` for operator writes
        to writable per-cell quantities (after the value is stored)."""
        self._write_handler = handler

    async def set_mode(self, mode: str) -> None:
        """Show ``mode`` in Twin/Mode (the daemon's own mode changes; no handler call)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self._mode = mode
        await self._write_internal(self._nid("Twin", "Mode"), ua.Variant(mode, ua.VariantType.String))

    async def set_service_level(self, level: int) -> None:
        """Write Server/ServiceLevel (0-255; OPC UA Part 4: 0 = no data, 1 = service
        failure, 2-199 degraded, 200-255 healthy) for redundancy-aware clients."""
        if not 0 <= level <= 255:
            raise ValueError(f"service level must be 0..255, got {level}")
        await self._write_internal(
            ua.NodeId(ua.Int32(ua.ObjectIds.Server_ServiceLevel)), ua.Variant(int(level), ua.VariantType.Byte)
        )

    async def _set_mode_method(self, parent: ua.NodeId, mode_var: ua.Variant) -> Any:
        mode = mode_var.Value if isinstance(mode_var, ua.Variant) else mode_var
        user = current_user()
        if mode not in MODES:
            return ua.StatusCode(ua.UInt32(ua.StatusCodes.BadInvalidArgument))
        previous = self._mode
        if self._mode_handler is not None:
            try:
                await self._mode_handler(mode, user)
            except ValueError as exc:
                log.warning("opcua.mode_refused", mode=mode, user=user, reason=str(exc))
                return ua.StatusCode(ua.UInt32(ua.StatusCodes.BadInvalidState))
            except Exception:
                log.exception("opcua.mode_handler_failed", mode=mode, user=user)
                return ua.StatusCode(ua.UInt32(ua.StatusCodes.BadInternalError))
        await self.set_mode(mode)
        log.info("opcua.mode_changed", mode=mode, previous=previous, user=user)
        return [ua.Variant(previous, ua.VariantType.String)]

    async def _on_post_write(self, event: Any, dispatcher: Any) -> None:
        if not event.is_external:
            return
        user = getattr(event.user, "name", None)
        for wv, status in zip(event.request_params.NodesToWrite, event.response_params, strict=False):
            hit = self._scalar_index.get(wv.NodeId)
            if hit is None or not status.is_good() or wv.AttributeId != ua.AttributeIds.Value:
                continue
            q, k = hit
            if not q.writable:
                continue
            value = wv.Value.Value.Value if wv.Value.Value is not None else None
            try:
                self._cell_values[q.name][k] = value
                self._scalar_last[q.name][k] = value
                room = int(self.layout.cell_room[k])
                await self._write_room_array(q, room, ua.DateTime.now(UTC), None)
            except Exception:
                log.exception("opcua.write_mirror_failed", quantity=q.name, cell=k)
            log.info("opcua.client_write", quantity=q.name, cell=self.layout.cell_name(k), value=value, user=user)
            if self._write_handler is not None:
                try:
                    await self._write_handler(q.name, k, value, user)
                except Exception:
                    log.exception("opcua.write_handler_failed", quantity=q.name, cell=k)

    # ------------------------------------------------------------------ publishing

    async def _write_internal(
        self, nid: ua.NodeId, variant: ua.Variant, now: ua.DateTime | None = None
    ) -> ua.StatusCode:
        now = now or ua.DateTime.now(UTC)
        dv = ua.DataValue(variant, SourceTimestamp=now, ServerTimestamp=now)
        return await self.server.iserver.aspace.write_attribute_value(nid, ua.AttributeIds.Value, dv)

    async def _write_room_array(
        self,
        q: QuantitySpec,
        room: int,
        now: ua.DateTime,
        source: ua.DateTime | None,
        report: PublishReport | None = None,
    ) -> None:
        cells = self._rooms_cells[room]
        variant = ua.Variant(self._cell_values[q.name][cells].tolist(), q.vtype)
        dv = ua.DataValue(variant, SourceTimestamp=source or now, ServerTimestamp=now)
        parts = (self.layout.room_names[room], q.name)
        status = await self.server.iserver.aspace.write_attribute_value(self._nid(*parts), ua.AttributeIds.Value, dv)
        if report is not None:
            if status.is_good():
                report.arrays_written += 1
            else:
                report.errors.append(f"{self._path(*parts)}: {status.name}")

    def _take(self, snapshot: Mapping[str, Any], q: QuantitySpec, n: int, report: PublishReport) -> np.ndarray | None:
        if q.name not in snapshot:
            return None
        arr = np.asarray(snapshot[q.name])
        if arr.shape != (n,):
            report.errors.append(f"snapshot[{q.name!r}]: expected shape ({n},), got {arr.shape}")
            return None
        try:
            return arr.astype(q.dtype, copy=False)
        except (TypeError, ValueError) as exc:
            report.errors.append(f"snapshot[{q.name!r}]: cannot convert to {q.vtype.name}: {exc}")
            return None

    async def publish(
        self, snapshot: Mapping[str, Any], t: float, *, source_time: datetime | None = None
    ) -> PublishReport:
        """Publish one twin snapshot.

        Args:
            snapshot: quantity name -> array; cell quantities shape (n_cells,) in layout
                order, line quantities shape (n_lines,). Missing names keep their
                last value; unknown names are ignored (logged once).
            t: plant time of the snapshot [s] (Twin/ModelTime; scalar refresh period).
            source_time: wall-clock time of the measurement (SourceTimestamp);
                default now.

        Never raises on bad input: shape/type problems and refused writes are
        logged and returned in ``PublishReport.errors``.
        """
        report = PublishReport()
        source = ua_datetime(source_time) if source_time is not None else None
        async with self._lock:
            now = ua.DateTime.now(UTC)
            lay = self.layout
            for key in snapshot:
                if key not in self._deadband and key not in self._warned_keys:
                    self._warned_keys.add(key)
                    log.warning("opcua.unknown_quantity", key=key)
            fresh: list[QuantitySpec] = []
            for q in self.cell_quantities:
                arr = self._take(snapshot, q, lay.n_cells, report)
                if arr is None:
                    continue
                self._cell_values[q.name][:] = arr
                fresh.append(q)
                for r in range(lay.n_rooms):
                    await self._write_room_array(q, r, now, source, report)
            for q in self.line_quantities:
                arr = self._take(snapshot, q, lay.n_lines, report)
                if arr is None:
                    continue
                for li in range(lay.n_lines):
                    dv = ua.DataValue(ua.Variant(arr[li].item(), q.vtype), SourceTimestamp=source or now,
                                      ServerTimestamp=now)  # fmt: skip
                    status = await self.server.iserver.aspace.write_attribute_value(
                        self.line_node_id(q.name, li), ua.AttributeIds.Value, dv
                    )
                    if status.is_good():
                        report.scalars_written += 1
                    else:
                        report.errors.append(f"{q.name}[{lay.line_names[li]}]: {status.name}")
            if self._scalars_due(t):
                self._last_scalar_t = t
                await self._write_scalars(fresh, now, source, report)
            self._publish_count += 1
            await self._write_internal(self._nid("Twin", "ModelTime"), ua.Variant(float(t), ua.VariantType.Double), now)
            await self._write_internal(
                self._nid("Twin", "PublishCount"), ua.Variant(self._publish_count, ua.VariantType.UInt64), now
            )
        if report.errors:
            log.error("opcua.publish_errors", count=len(report.errors), first=report.errors[:5])
        return report

    def _scalars_due(self, t: float) -> bool:
        if self.scalar_period_s is None:
            return False
        if self._last_scalar_t is None or t < self._last_scalar_t:
            return True
        return t - self._last_scalar_t >= self.scalar_period_s

    async def flush_scalars(self) -> PublishReport:
        """Bring every per-cell scalar up to the last published values now (no deadband)."""
        report = PublishReport()
        async with self._lock:
            for q in self.cell_quantities:
                self._scalar_last[q.name][:] = np.nan
            await self._write_scalars(list(self.cell_quantities), ua.DateTime.now(UTC), None, report)
        return report

    async def _write_scalars(
        self,
        quantities: Sequence[QuantitySpec],
        now: ua.DateTime,
        source: ua.DateTime | None,
        report: PublishReport,
    ) -> None:
        write = self.server.iserver.aspace.write_attribute_value
        value_attr = ua.AttributeIds.Value
        src = source or now
        done = 0
        for q in quantities:
            new = self._cell_values[q.name]
            last = self._scalar_last[q.name]
            newf = new.astype(np.float64)
            with np.errstate(invalid="ignore"):
                moved = np.abs(newf - last) > self._deadband[q.name]
            moved |= np.isnan(last) & ~np.isnan(newf)  # first write, or leaving NaN
            moved |= np.isnan(newf) & ~np.isnan(last)  # entering NaN
            cells = np.flatnonzero(moved)
            if cells.size == 0:
                continue
            values = new[cells].tolist()
            for k, v in zip(cells.tolist(), values, strict=False):
                dv = ua.DataValue(ua.Variant(v, q.vtype), SourceTimestamp=src, ServerTimestamp=now)
                status = await write(self.cell_node_id(q.name, k), value_attr, dv)
                if status.is_good():
                    report.scalars_written += 1
                else:
                    report.errors.append(f"{q.name}[{self.layout.cell_name(k)}]: {status.name}")
                done += 1
                if done % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
            last[cells] = newf[cells]

    async def publish_event(
        self,
        kind: Literal["start", "end"],
        cell: int,
        peak_voltage_v: float,
        duration_s: float = 0.0,
        *,
        time: datetime | None = None,
    ) -> None:
        """Emit an AnodeEffectEventType event for cell index ``cell``.

        Args:
            kind: "start" (Active=True) or "end" (Active=False).
            cell: layout cell index.
            peak_voltage_v: highest cell voltage during the AE so far [V].
            duration_s: AE duration so far [s] (0 at start).
            time: event time (default now).
        """
        if kind not in ("start", "end"):
            raise ValueError(f"kind must be 'start' or 'end', got {kind!r}")
        if self._ae_event is None:
            raise RuntimeError("MirrorServer is not started")
        ev = self._ae_event.event
        name = self.layout.cell_name(cell)
        ev.Cell = name
        ev.PeakVoltage = float(peak_voltage_v)
        ev.Duration = float(duration_s) if math.isfinite(duration_s) else 0.0
        ev.Active = kind == "start"
        ev.Severity = 700 if kind == "start" else 300
        ev.SourceNode = self._nid(self.layout.room_names[int(self.layout.cell_room[cell])], self.cell_object_name(cell))
        ev.SourceName = name
        text = f"Anode effect {'started' if kind == 'start' else 'ended'} on {name}: peak {peak_voltage_v:.1f} V"
        if kind == "end":
            text += f", {duration_s:.0f} s"
        await self._ae_event.trigger(time_attr=time, message=text)


# ---------------------------------------------------------------------- node builders


def ua_datetime(dt: datetime) -> ua.DateTime:
    """``dt`` as asyncua's ``ua.DateTime``, the type its DataValue timestamps are declared
    with: the same instant and tzinfo (``dt`` itself when it already is one)."""
    if isinstance(dt, ua.DateTime):
        return dt
    return ua.DateTime.combine(dt.date(), dt.timetz())


def _child_nid(parent: ua.NodeId, name: str) -> ua.NodeId:
    """String NodeId ``<parent>.<name>`` in the parent's namespace (``parent`` has a string id)."""
    if not isinstance(parent.Identifier, str):
        raise TypeError(f"{parent.to_string()}: expected a string NodeId to derive {name!r} from")
    return ua.NodeId(ua.String(f"{parent.Identifier}.{name}"), parent.NamespaceIndex)


def object_node_item(
    nid: ua.NodeId, qname: ua.QualifiedName, parent: ua.NodeId, ref: int = ua.ObjectIds.HasComponent
) -> ua.AddNodesItem:
    """An AddNodesItem for a plain object (BaseObjectType) under ``parent`` (batched add_nodes)."""
    item = ua.AddNodesItem()
    item.RequestedNewNodeId = nid
    item.BrowseName = qname
    item.NodeClass = ua.NodeClass.Object
    item.ParentNodeId = parent
    item.ReferenceTypeId = ua.NodeId(ua.Int32(ref))
    item.TypeDefinition = ua.NodeId(ua.Int32(ua.ObjectIds.BaseObjectType))
    attrs = ua.ObjectAttributes()
    attrs.DisplayName = ua.LocalizedText(qname.Name)
    attrs.Description = ua.LocalizedText(qname.Name)
    attrs.EventNotifier = 0
    item.NodeAttributes = attrs
    return item


def _variable_item(
    nid: ua.NodeId,
    name: str,
    idx: int,
    parent: ua.NodeId,
    value: ua.Variant,
    description: str,
    *,
    array_len: int | None = None,
    type_def: int = ua.ObjectIds.BaseDataVariableType,
    writable: bool = False,
    is_property: bool = False,
    datatype: ua.NodeId | None = None,
) -> ua.AddNodesItem:
    item = ua.AddNodesItem()
    item.RequestedNewNodeId = nid
    item.BrowseName = ua.QualifiedName(name, 0 if is_property else idx)
    item.NodeClass = ua.NodeClass.Variable
    item.ParentNodeId = parent
    item.ReferenceTypeId = ua.NodeId(ua.Int32(ua.ObjectIds.HasProperty if is_property else ua.ObjectIds.HasComponent))
    item.TypeDefinition = ua.NodeId(ua.Int32(ua.ObjectIds.PropertyType if is_property else type_def))
    attrs = ua.VariableAttributes()
    attrs.DisplayName = ua.LocalizedText(name)
    attrs.Description = ua.LocalizedText(description)
    attrs.DataType = datatype or ua.NodeId(ua.Int32(value.VariantType.value))
    attrs.Value = value
    if array_len is None:
        attrs.ValueRank = ua.ValueRank.Scalar
    else:
        attrs.ValueRank = ua.ValueRank.OneDimension
        attrs.ArrayDimensions = [array_len]
    access = ua.AccessLevel.CurrentRead.mask | (ua.AccessLevel.CurrentWrite.mask if writable else 0)
    attrs.AccessLevel = access
    attrs.UserAccessLevel = access
    attrs.Historizing = False
    attrs.MinimumSamplingInterval = 0.0
    item.NodeAttributes = attrs
    return item


def _analog_items(
    nid: ua.NodeId, q: QuantitySpec, idx: int, parent: ua.NodeId, value: ua.Variant, array_len: int | None = None
) -> list[ua.AddNodesItem]:
    """A variable (AnalogItemType when it has a range) plus EngineeringUnits/EURange properties."""
    analog = q.eu_range is not None
    desc = f"{q.description} [{q.unit}]" if q.unit else q.description
    items = [
        _variable_item(
            nid, q.name, idx, parent, value, desc, array_len=array_len,
            type_def=ua.ObjectIds.AnalogItemType if analog else ua.ObjectIds.BaseDataVariableType,
            writable=q.writable and array_len is None,
        )
    ]  # fmt: skip
    if q.eu_range is not None:
        rng = ua.Range(Low=float(q.eu_range[0]), High=float(q.eu_range[1]))
        items.append(
            _variable_item(
                _child_nid(nid, "EURange"), "EURange", idx, nid,
                ua.Variant(rng, ua.VariantType.ExtensionObject), "Engineering range",
                is_property=True, datatype=ua.NodeId(ua.Int32(ua.ObjectIds.Range)),
            )
        )  # fmt: skip
    if q.unit:
        eu = ua.EUInformation(
            NamespaceUri=UNECE_NAMESPACE,
            UnitId=unece_unit_id(q.unece) if q.unece else -1,
            DisplayName=ua.LocalizedText(q.unit, ""),
            Description=ua.LocalizedText(UNECE_NAMES.get(q.unece or "", q.unit), ""),
        )
        items.append(
            _variable_item(
                _child_nid(nid, "EngineeringUnits"), "EngineeringUnits", idx, nid,
                ua.Variant(eu, ua.VariantType.ExtensionObject), "Engineering units",
                is_property=True, datatype=ua.NodeId(ua.Int32(ua.ObjectIds.EUInformation)),
            )
        )  # fmt: skip
    return items
