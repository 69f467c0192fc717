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
          CellVoltageStatus  StatusCode[n]  each element's own status (see Quality)
          ...                        (one array pair per cell quantity)
          Cell001/                                s=<Plant>.<Room>.Cell001
            CellVoltage   Float  AnalogItemType with EngineeringUnits + EURange
            ...
        Links/                                    s=<Plant>.Links
          <Device>/        one per PLC link, e.g. rectifier_Line1 (device rectifier:Line1)
            Device String, Up Boolean, State String (up|down|not scanned),
            Since DateTime, Reason String, LastScan DateTime, LastGood DateTime
        Alarms/                                   s=<Plant>.Alarms
          <key>            one object per alarm condition (ConditionId of its events)

Bulk clients read or subscribe to the per-room arrays (tens of nodes for a whole
potline); browsing and single-cell clients use the per-cell scalars. ``publish``
writes arrays on every call through the internal address space (typed, StatusCodes
checked) and refreshes the scalars at ``scalar_period_s`` of plant time, only where a
value moved by more than its deadband, since writes to subscribed nodes are ~10x
dearer (docs/architecture.md, "Library facts"). A scalar whose status changed is
rewritten at once, whatever its period and deadband.

Quality. Every value carries the StatusCode and SourceTimestamp of the PLC scan it came
from (``publish(..., status={name: ValueStatus(code, t_s)})``; ``quality_status`` turns
a ``plc_bridge.quality.ValueQuality`` into one). SourceTimestamp = ``epoch_s`` + the
value's plant time (the daemon passes the Unix time of plant time 0, the same timeline
as its history). Rules:

* before its first publish every value is ``BadWaitingForInitialData`` (no 0.0 Good);
* a NaN published as Good or Uncertain becomes ``BadNoDataAvailable`` (NaN is no value);
  a value published without a status is Good (finite) with the snapshot's time;
* an array node carries one status: the worst of its elements (Bad > Uncertain > Good;
  the most frequent code of that severity) -- except that an array with Bad elements
  *and* usable ones is ``UncertainSubNormal``: OPC UA (and asyncua) drop the value of a
  Bad DataValue, and one bad transmitter must not blank its room for bulk clients (its
  element is NaN). Its SourceTimestamp is the oldest source time among its usable
  elements (it claims nothing fresher than its stalest value). Each element's own status
  is in ``<Quantity>Status`` (StatusCode[n], rewritten only when a status changes) and
  on the per-cell scalars;
* with ``stale_after_s`` set, values that got no publish for that long [wall s] turn
  from Good to ``UncertainLastUsableValue`` (the daemon stopped feeding the mirror), and
  so do the links' Up and State, until the next publish;
* per-cell scalars keep deadband semantics: a value that moves less than its deadband
  keeps the SourceTimestamp of its last rewrite (the arrays always carry the latest scan).

Alarms & Conditions: ``publish_alarm(ConditionState)`` emits an ``AlarmConditionType``
event from the Server object (SourceNode the cell/room/line object, SourceName
``<area>/Cell017``, ConditionId ``s=<Plant>.Alarms.<key>``, Severity, Message,
ActiveState, AckedState, Retain = active or unacknowledged, SuppressedOrShelved).
Retained conditions answer ConditionRefresh. ``Acknowledge`` (operators only, like
SetMode) on a condition is handed to ``on_acknowledge`` as ``(key, user, comment)``; its
new state comes back through ``publish_alarm`` like any other change.

History: ``enable_history(storage)`` before ``start`` installs an asyncua history
backend (``potline.history.OpcUaHistoryStorage``) for HistoryRead and marks the per-cell,
per-room and per-line variables ``Historizing`` with AccessLevel ``HistoryRead``.

Anode-effect starts and ends are OPC UA events of type ``AnodeEffectEventType``
(fields Cell, PeakVoltage [V], Duration [s], Active) emitted by the Server object.

The daemon's calls (``potline.mirror`` wraps them for the mirror thread)::

    m = MirrorServer(layout, quantities=..., epoch_s=timeline0, stale_after_s=..., ...)
    m.enable_history(storage, quantities)                 # before start
    m.on_acknowledge(cb)                                  # cb(key, user, comment)
    await m.start()
    await m.publish(snapshot, t, status=statuses, links=bridge.links())
    await m.publish_alarms(states)
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import re
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import structlog
from asyncua import Server, ua
from asyncua.common import event_objects
from asyncua.common.callback import CallbackType

from plc_bridge.opcua_security import (
    OpcUaSecurityConfig,
    SecurityAudit,
    SecurityEvent,
    configure_server_security,
    current_user,
)
from plc_bridge.ports import free_port
from plc_bridge.quality import Quality, opcua_status_name
from twin.layout import PlantLayout

__all__ = [
    "DEFAULT_QUANTITIES",
    "MODES",
    "NAMESPACE_URI",
    "ConditionState",
    "MirrorServer",
    "PublishReport",
    "QuantitySpec",
    "ValueStatus",
    "free_port",
    "quality_status",
    "status_code",
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

SC = ua.StatusCodes
GOOD = int(SC.Good)
WAITING = int(SC.BadWaitingForInitialData)
NO_VALUE = int(SC.BadNoDataAvailable)
MIXED = int(SC.UncertainSubNormal)
STALE = int(SC.UncertainLastUsableValue)
_BAD_SEVERITY = 2  # code >> 30: 0 Good, 1 Uncertain, 2/3 Bad
_FORCE = np.uint32(0xFFFFFFFF)  # "never written" marker for the last written scalar status
#: the standard Acknowledge method of AcknowledgeableConditionType (called on a condition)
ACKNOWLEDGE_METHOD = ua.NodeId(ua.Int32(ua.ObjectIds.AcknowledgeableConditionType_Acknowledge))
_TIME_FIELDS = ("ActiveState/TransitionTime", "AckedState/TransitionTime", "SuppressedState/TransitionTime",
                "EnabledState/TransitionTime")  # fmt: skip


def unece_unit_id(common_code: str) -> int:
    """OPC UA ``EUInformation.UnitId`` of a UN/CEFACT Rec. 20 common code (OPC 10000-8)."""
    unit_id = 0
    for ch in common_code[:4]:
        unit_id = (unit_id << 8) | ord(ch)
    return unit_id


def status_code(name: str) -> int:
    """The numeric OPC UA StatusCode of ``name`` (``"BadNoCommunication"`` -> 0x80310000).

    Raises:
        ValueError: no StatusCode has that name.
    """
    value = getattr(SC, name, None)
    if not isinstance(value, int):
        raise ValueError(f"no OPC UA StatusCode named {name!r}")
    return int(value)


_QUALITY_CODES: dict[tuple[int, str], int] = {}


def quality_codes(quality: np.ndarray, reason: np.ndarray) -> np.ndarray:
    """StatusCodes (uint32) of per-value qualities and reasons (``plc_bridge.quality``:
    ``opcua_status_name``); the GOOD values cost nothing, the rest one cached lookup each."""
    q = np.asarray(quality)
    codes = np.zeros(q.shape, dtype=np.uint32)
    for i in np.flatnonzero(q != Quality.GOOD).tolist():
        key = (int(q[i]), str(reason[i]))
        code = _QUALITY_CODES.get(key)
        if code is None:
            code = status_code(opcua_status_name(*key))
            if len(_QUALITY_CODES) < 4096:  # reasons carry link texts: bounded
                _QUALITY_CODES[key] = code
        codes[i] = code
    return codes


@dataclass(frozen=True, slots=True)
class ValueStatus:
    """Status of one published array (one value per cell or per line).

    Attributes:
        code: [n] OPC UA StatusCode of each value (uint32; 0 = Good).
        t_s: [n] plant time of the PLC scan each value came from [s] (NaN: unknown, the
            publish time is used).
    """

    code: np.ndarray
    t_s: np.ndarray

    @classmethod
    def uniform(cls, n: int, code: int | str, t_s: float) -> ValueStatus:
        """``n`` values of one status and time."""
        c = status_code(code) if isinstance(code, str) else int(code)
        return cls(np.full(n, c, dtype=np.uint32), np.full(n, float(t_s)))


class QualityLike(Protocol):
    """What ``quality_status`` reads (``plc_bridge.quality.ValueQuality``)."""

    quality: np.ndarray
    t_s: np.ndarray
    reason: np.ndarray


def quality_status(vq: QualityLike) -> ValueStatus:
    """A ``ValueStatus`` of a bridge ``ValueQuality`` (a copy: the bridge keeps writing its own)."""
    return ValueStatus(quality_codes(vq.quality, vq.reason), np.array(vq.t_s, dtype=float))


class LinkLike(Protocol):
    """One PLC link as ``publish`` reads it (``plc_bridge.quality.LinkStatus``)."""

    device: str
    up: bool
    reason: str
    scan_t: float
    last_good_t: float


@dataclass(frozen=True, slots=True)
class ConditionState:
    """One alarm condition's state after a change, as the mirror emits it (plain data: the
    application's alarm records are turned into these, see ``potline.mirror``).

    Attributes:
        key: the alarm's unique key (``Potroom1/Cell017/AE``); Acknowledge hands it back.
        name: ConditionName (what kind of alarm: ``ae``, ``comms_lost``...).
        message: one line for the operator.
        severity: OPC UA severity 1..1000.
        active, acked: the process condition and the acknowledgement.
        t_s: plant time of the change [s].
        area: room, line or PLC name; cell: floor number of the cell in that room.
        suppressed, shelved: hidden from the operator by design / by an operator.
        user, comment: who changed it and why (an acknowledgement's comment).
    """

    key: str
    name: str
    message: str
    severity: int
    active: bool
    acked: bool
    t_s: float
    area: str | None = None
    cell: int | None = None
    suppressed: bool = False
    shelved: bool = False
    user: str | None = None
    comment: str = ""

    @property
    def retain(self) -> bool:
        """Still of interest to a client (active or unacknowledged): ConditionRefresh sends it."""
        return self.active or not self.acked

    @property
    def source_name(self) -> str:
        """``<area>/Cell017``, ``<area>`` or the key when there is no area."""
        if self.area and self.cell is not None:
            return f"{self.area}/Cell{int(self.cell):03d}"
        return self.area or self.key


AckHandler = Callable[[str, str, str], "Awaitable[None] | None"]


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


@dataclass(slots=True)
class _Link:
    """A link-state object and what was last written to it."""

    name: str
    up: bool | None = None
    since_t: float = math.nan
    written: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _Condition:
    """One alarm condition as last emitted."""

    node: ua.NodeId
    state: ConditionState
    event_ids: deque[bytes] = field(default_factory=lambda: deque(maxlen=8))
    active_since: float = math.nan
    acked_since: float = math.nan


class MirrorServer:
    """OPC UA server exposing the twin of a ``PlantLayout`` (see the module docstring).

    Usage::

        async with MirrorServer(layout, security=cfg, port=4840, epoch_s=timeline0) as mirror:
            mirror.set_mode_handler(daemon.change_mode)
            await mirror.publish({"CellVoltage": u, "LineCurrent": i_ka, ...}, t,
                                 status={"CellVoltage": quality_status(bridge.quality["cell_voltage_v"])},
                                 links=bridge.links())
            await mirror.publish_event("start", cell=17, peak_voltage_v=31.0, duration_s=0.0)
            await mirror.publish_alarm(ConditionState("Potroom1/Cell017/AE", "ae", ...))
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
        epoch_s: float | None = None,
        stale_after_s: float | None = None,
        history: Any = None,
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
            epoch_s: Unix time of plant time 0 [s]: SourceTimestamp = epoch_s + plant time.
                None: the wall time of each publish stands for its snapshot time ``t``.
            stale_after_s: Good values turn ``UncertainLastUsableValue`` when no publish
                came for this long [wall s]; None: never.
            history: an asyncua history storage for HistoryRead (``enable_history``).
        """
        self.layout = layout
        self.quantities = tuple(quantities)
        self._check_names()
        if initial_mode not in MODES:
            raise ValueError(f"initial_mode must be one of {MODES}, got {initial_mode!r}")
        if stale_after_s is not None and not stale_after_s > 0:
            raise ValueError(f"stale_after_s must be > 0 s or None, got {stale_after_s}")
        self.security = security
        self.host = host or (security.host if security else "127.0.0.1")
        self.port = port or free_port(self.host)
        self.path = path if path.startswith("/") else "/" + path
        self.namespace_uri = namespace_uri
        self.scalar_period_s = scalar_period_s
        self.server_name = server_name
        self.epoch_s = epoch_s
        self.stale_after_s = stale_after_s
        self._deadband = {q.name: float((deadbands or {}).get(q.name, q.deadband)) for q in self.quantities}
        unknown = set(deadbands or {}) - {q.name for q in self.quantities}
        if unknown:
            raise ValueError(f"deadbands: unknown quantities {sorted(unknown)}")
        self.cell_quantities = tuple(q for q in self.quantities if q.level == "cell")
        self.line_quantities = tuple(q for q in self.quantities if q.level == "line")
        self._mode = initial_mode
        self._mode_handler: ModeHandler | None = None
        self._write_handler: WriteHandler | None = None
        self._ack_handler: AckHandler | None = None
        self._server: Server | None = None
        self.idx = 0
        n, nl = layout.n_cells, layout.n_lines
        self._rooms_cells = [layout.room_cells(r) for r in range(layout.n_rooms)]
        self._cell_of = {(layout.room_names[int(layout.cell_room[k])], int(layout.cell_number[k])): k
                         for k in range(n)}  # fmt: skip
        # state: last values, statuses and source times published (per cell / per line)
        self._cell_values = {q.name: np.zeros(n, dtype=q.dtype) for q in self.cell_quantities}
        self._codes = {q.name: np.full(n, WAITING, dtype=np.uint32) for q in self.cell_quantities}
        self._times = {q.name: np.full(n, math.nan) for q in self.cell_quantities}
        self._line_values = {q.name: np.zeros(nl, dtype=q.dtype) for q in self.line_quantities}
        self._line_codes = {q.name: np.full(nl, WAITING, dtype=np.uint32) for q in self.line_quantities}
        self._line_times = {q.name: np.full(nl, math.nan) for q in self.line_quantities}
        self._scalar_last = {q.name: np.full(n, np.nan) for q in self.cell_quantities}
        self._scalar_code = {q.name: np.full(n, _FORCE, dtype=np.uint32) for q in self.cell_quantities}
        self._status_written: dict[tuple[str, int], np.ndarray] = {}
        self._status_all_good: set[tuple[str, int]] = set()  # status arrays last written all Good
        self._array_nids: dict[tuple[str, int], ua.NodeId] = {}  # (quantity, room) -> array node (after start)
        self._cell_nids: dict[str, list[ua.NodeId]] = {}  # quantity -> per-cell scalar nodes (after start)
        self._published: set[str] = set()
        self._last_scalar_t: float | None = None
        self._last_t = 0.0
        self._base = 0.0  # Unix time of plant time 0 used by the current publish [s]
        self._stamps: dict[float, ua.DateTime] = {}
        self._sc_cache: dict[int, ua.StatusCode] = {}
        self._publish_count = 0
        self._last_publish_mono: float | None = None
        self._stale = False
        self._warned_keys: set[str] = set()
        self._scalar_index: dict[ua.NodeId, tuple[QuantitySpec, int]] = {}
        self._links: dict[str, _Link] = {}
        self._conditions: dict[str, _Condition] = {}
        self._condition_keys: dict[ua.NodeId, str] = {}
        self._condition_names: set[str] = set()
        self._ae_event: Any = None
        self._lock = asyncio.Lock()
        self.security_summary_s = float(security_summary_s)
        self._security_sink: Callable[[SecurityEvent], None] | None = None
        #: the refused logins and denied requests (``SecurityAudit``; after ``start``)
        self.audit: SecurityAudit | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._history: Any = None
        self._historized: frozenset[str] = frozenset()
        if history is not None:
            self.enable_history(history)

    # ------------------------------------------------------------------ naming

    def _check_names(self) -> None:
        lay = self.layout
        names = [("plant", lay.plant)] + [("line", n) for n in lay.line_names] + [("room", n) for n in lay.room_names]
        names += [("quantity", q.name) for q in self.quantities]
        for kind, name in names:
            if not _NAME_RE.match(name):
                raise ValueError(f"{kind} name {name!r}: expected letters, digits and '_' starting with a letter")
        top = list(lay.line_names) + list(lay.room_names) + ["Twin", "Links", "Alarms"]
        dupes = {n for n in top if top.count(n) > 1}
        if dupes:
            raise ValueError(f"line/room names must be unique and not 'Twin', 'Links' or 'Alarms': {sorted(dupes)}")
        qnames = [q.name for q in self.quantities]
        reserved = {"CellNumbers"} | {f"{q}Status" for q in qnames}
        if len(set(qnames)) != len(qnames) or reserved & set(qnames):
            raise ValueError(f"quantity names must be unique, not 'CellNumbers' nor '<quantity>Status': {qnames}")
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

    def status_array_node_id(self, quantity: str, room: int) -> ua.NodeId:
        """NodeId of the per-room StatusCode array of ``quantity`` (each element's status)."""
        return self._nid(self.layout.room_names[room], f"{quantity}Status")

    def cell_node_id(self, quantity: str, cell: int) -> ua.NodeId:
        """NodeId of cell ``cell``'s scalar ``quantity`` (layout cell index)."""
        room = self.layout.room_names[int(self.layout.cell_room[cell])]
        return self._nid(room, self.cell_object_name(cell), quantity)

    def line_node_id(self, quantity: str, line: int) -> ua.NodeId:
        """NodeId of line ``line``'s scalar ``quantity``."""
        return self._nid(self.layout.line_names[line], quantity)

    @staticmethod
    def link_object_name(device: str) -> str:
        """Browse name of a PLC link's object (``rectifier:Line1`` -> ``rectifier_Line1``)."""
        name = re.sub(r"[^A-Za-z0-9_]", "_", device)
        return name if name[:1].isalpha() else f"Plc_{name}"

    def link_node_id(self, device: str, field_name: str | None = None) -> ua.NodeId:
        """NodeId of a PLC link's object, or of one of its variables (``Up``, ``State``, ...)."""
        parts = ("Links", self.link_object_name(device))
        return self._nid(*parts, field_name) if field_name else self._nid(*parts)

    def condition_node_id(self, key: str) -> ua.NodeId:
        """NodeId of alarm ``key``'s condition (the ConditionId of its events)."""
        return self._nid("Alarms", key)

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

    def enable_history(self, storage: Any, quantities: Iterable[str] | None = None) -> None:
        """Serve HistoryRead from ``storage`` (asyncua's ``HistoryStorageInterface``, e.g.
        ``potline.history.OpcUaHistoryStorage``; its ``stop`` runs when the server stops).

        ``quantities``: the names whose nodes (per-cell scalars, per-room arrays, per-line
        scalars) get AccessLevel HistoryRead and Historizing (default: every quantity).
        Call before ``start``.
        """
        if self._server is not None:
            raise RuntimeError("enable_history: call it before start()")
        names = {q.name for q in self.quantities}
        wanted = names if quantities is None else set(quantities)
        self._history = storage
        self._historized = frozenset(wanted & names)

    async def start(self) -> None:
        """Build the address space and listen (a few seconds for 660 cells)."""
        server = Server()
        server.iserver.bind_condition_methods = True  # ConditionRefresh for A&C clients
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
        self._array_nids = {(q.name, r): self.array_node_id(q.name, r) for q in self.cell_quantities
                            for r in range(self.layout.n_rooms)}  # fmt: skip
        self._cell_nids = {q.name: [self.cell_node_id(q.name, k) for k in range(self.layout.n_cells)]
                           for q in self.cell_quantities}  # fmt: skip
        if self._history is not None:
            server.iserver.history_manager.set_storage(self._history)
            init = getattr(self._history, "init", None)
            if init is not None:
                await init()
        await self._build_address_space()
        await self._mark_waiting()
        ruleset.protected_methods.add(self._nid("Twin", "SetMode"))
        ruleset.protected_methods.add(ACKNOWLEDGE_METHOD)
        server.iserver.isession.add_method_callback(ACKNOWLEDGE_METHOD, self._acknowledge_method)
        server.subscribe_server_callback(CallbackType.PostWrite, self._on_post_write)
        await server.start()
        self._tasks.append(asyncio.create_task(self._flush_audit(), name="opcua-security-audit"))
        if self.stale_after_s is not None:
            self._tasks.append(asyncio.create_task(self._watch_staleness(), name="opcua-mirror-staleness"))
        log.info(
            "opcua.mirror_started",
            endpoint=self.endpoint_url,
            cells=self.layout.n_cells,
            rooms=self.layout.n_rooms,
            security=[str(p.name) for p in cfg.policy_types()],
            history=sorted(self._historized) if self._history is not None else None,
        )

    async def stop(self) -> None:
        """Close client connections and the listener (and the history storage)."""
        tasks, self._tasks = self._tasks, []
        for own in tasks:
            own.cancel()
        for own in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await own
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
        hist = self._historized if self._history is not None else frozenset()
        items: list[ua.AddNodesItem] = []
        objects = ua.NodeId(ua.Int32(ua.ObjectIds.ObjectsFolder))
        plant = self._nid()
        items.append(object_node_item(plant, ua.QualifiedName(lay.plant, idx), objects, ua.ObjectIds.Organizes))
        twin = self._nid("Twin")
        items.append(object_node_item(twin, ua.QualifiedName("Twin", idx), plant))
        items.append(_variable_item(self._nid("Twin", "Mode"), "Mode", idx, twin,
                                    ua.Variant(self._mode, ua.VariantType.String),
                                    "Operating mode: observe, shadow or control"))  # fmt: skip
        items.append(_variable_item(self._nid("Twin", "ModelTime"), "ModelTime", idx, twin,
                                    ua.Variant(0.0, ua.VariantType.Double), "Plant time of the last publish [s]"))  # fmt: skip
        items.append(_variable_item(self._nid("Twin", "PublishCount"), "PublishCount", idx, twin,
                                    ua.Variant(0, ua.VariantType.UInt64), "Number of publishes since start"))  # fmt: skip
        items.append(object_node_item(self._nid("Links"), ua.QualifiedName("Links", idx), plant))
        items.append(object_node_item(self._nid("Alarms"), ua.QualifiedName("Alarms", idx), plant))
        for line in lay.line_names:
            lnode = self._nid(line)
            items.append(object_node_item(lnode, ua.QualifiedName(line, idx), plant))
            for q in self.line_quantities:
                items += _analog_items(self._nid(line, q.name), q, idx, lnode, ua.Variant(0.0, q.vtype),
                                       historizing=q.name in hist)  # fmt: skip
        for r, room in enumerate(lay.room_names):
            rnode = self._nid(room)
            cells = self._rooms_cells[r]
            items.append(object_node_item(rnode, ua.QualifiedName(room, idx), plant))
            numbers = ua.Variant(lay.cell_number[cells].astype(np.uint16).tolist(), ua.VariantType.UInt16)
            items.append(_variable_item(self._nid(room, "CellNumbers"), "CellNumbers", idx, rnode, numbers,
                                        "Floor number of the cell at each array index", array_len=len(cells)))  # fmt: skip
            for q in self.cell_quantities:
                zeros = ua.Variant(self._cell_values[q.name][cells].tolist(), q.vtype)
                items += _analog_items(self._nid(room, q.name), q, idx, rnode, zeros, array_len=len(cells),
                                       historizing=q.name in hist)  # fmt: skip
                codes = ua.Variant([ua.StatusCode(ua.UInt32(WAITING))] * len(cells), ua.VariantType.StatusCode)
                items.append(_variable_item(self._nid(room, f"{q.name}Status"), f"{q.name}Status", idx, rnode, codes,
                                            f"Status of each element of {q.name}", array_len=len(cells)))  # fmt: skip
            for k in cells:
                cname = self.cell_object_name(k)
                cnode = self._nid(room, cname)
                items.append(object_node_item(cnode, ua.QualifiedName(cname, idx), rnode))
                for q in self.cell_quantities:
                    nid = self._nid(room, cname, q.name)
                    init = ua.Variant(self._cell_values[q.name][k].item(), q.vtype)
                    items += _analog_items(nid, q, idx, cnode, init, historizing=q.name in hist)
                    self._scalar_index[nid] = (q, int(k))
        results = await server.iserver.isession.add_nodes(items)
        for item, res in zip(items, results, strict=False):
            if not res.StatusCode.is_good():
                raise RuntimeError(f"OPC UA node {item.RequestedNewNodeId.to_string()}: {res.StatusCode.name}")
        await self._build_methods_and_events(twin)

    async def _mark_waiting(self) -> None:
        """Every value node BadWaitingForInitialData until its first publish (no 0.0 Good)."""
        write = self.server.iserver.aspace.write_attribute_value
        dv = ua.DataValue(StatusCode=self._status(WAITING), ServerTimestamp=ua.DateTime.now(UTC))
        nids = [self.line_node_id(q.name, li) for q in self.line_quantities for li in range(self.layout.n_lines)]
        nids += [self.array_node_id(q.name, r) for q in self.cell_quantities for r in range(self.layout.n_rooms)]
        nids += list(self._scalar_index)
        for i, nid in enumerate(nids):
            await write(nid, ua.AttributeIds.Value, dv)
            if i % _YIELD_EVERY == _YIELD_EVERY - 1:
                await asyncio.sleep(0)

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
        # the Server object generates the alarm conditions' events too (GeneratesEvent, for browsing clients)
        await server.iserver.isession.add_references([_generates_event(ua.ObjectIds.AlarmConditionType)])

    # ------------------------------------------------------------------ handlers

    def set_mode_handler(self, handler: ModeHandler) -> None:
        """Register ``async handler(mode, user)`` run when an operator calls SetMode.

        Raise ``ValueError`` in the handler to refuse the change (client gets
        BadInvalidState); Twin/Mode changes only when the handler returns.
        """
        self._mode_handler = handler

    def on_acknowledge(self, handler: AckHandler) -> None:
        """Register ``handler(key, user, comment)`` (sync or async) run in the server's event
        loop when an operator calls Acknowledge on alarm ``key``'s condition.

        Raise ``ValueError`` to refuse (the client gets BadInvalidState); the acknowledged
        state is shown when it comes back through ``publish_alarm``. Without a handler
        Acknowledge answers BadNotSupported.
        """
        self._ack_handler = handler

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

    async def _acknowledge_method(self, parent: ua.NodeId, event_id: Any = None, comment: Any = None) -> Any:
        """AcknowledgeableConditionType.Acknowledge(EventId, Comment) on a condition object."""
        user = current_user()
        key = self._condition_keys.get(parent)
        eid = event_id.Value if isinstance(event_id, ua.Variant) else event_id
        text = comment.Value if isinstance(comment, ua.Variant) else comment
        text = text.Text if isinstance(text, ua.LocalizedText) else text
        text = str(text or "")
        if key is None:
            return ua.StatusCode(ua.UInt32(SC.BadNodeIdUnknown))
        cond = self._conditions[key]
        if not user:  # operators always have a name; the ruleset refuses viewers before this
            return ua.StatusCode(ua.UInt32(SC.BadUserAccessDenied))
        if not isinstance(eid, bytes) or eid not in cond.event_ids:
            return ua.StatusCode(ua.UInt32(SC.BadEventIdUnknown))
        if cond.state.acked:
            return ua.StatusCode(ua.UInt32(SC.BadConditionBranchAlreadyAcked))
        if self._ack_handler is None:
            return ua.StatusCode(ua.UInt32(SC.BadNotSupported))
        try:
            res = self._ack_handler(key, user, text)
            if inspect.isawaitable(res):
                await res
        except ValueError as exc:
            log.warning("opcua.acknowledge_refused", key=key, user=user, reason=str(exc))
            return ua.StatusCode(ua.UInt32(SC.BadInvalidState))
        except Exception:
            log.exception("opcua.acknowledge_failed", key=key, user=user)
            return ua.StatusCode(ua.UInt32(SC.BadInternalError))
        log.info("opcua.alarm_acknowledged", key=key, user=user, comment=text)
        return []

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
                async with self._lock:
                    self._cell_values[q.name][k] = value
                    self._scalar_last[q.name][k] = value
                    self._codes[q.name][k] = self._scalar_code[q.name][k] = GOOD
                    self._times[q.name][k] = math.nan  # an operator's value: stamped when written
                    await self._write_room_array(q, int(self.layout.cell_room[k]), ua.DateTime.now(UTC))
            except Exception:
                log.exception("opcua.write_mirror_failed", quantity=q.name, cell=k)
            log.info("opcua.client_write", quantity=q.name, cell=self.layout.cell_name(k), value=value, user=user)
            if self._write_handler is not None:
                try:
                    await self._write_handler(q.name, k, value, user)
                except Exception:
                    log.exception("opcua.write_handler_failed", quantity=q.name, cell=k)

    # ------------------------------------------------------------------ status helpers

    def _status(self, code: int) -> ua.StatusCode:
        sc = self._sc_cache.get(code)
        if sc is None:
            sc = self._sc_cache[code] = ua.StatusCode(ua.UInt32(code))
        return sc

    def _stamp(self, t_s: float, now: ua.DateTime) -> ua.DateTime:
        """SourceTimestamp of plant time ``t_s`` (NaN: ``now``), cached within one publish."""
        if t_s != t_s:  # NaN
            return now
        got = self._stamps.get(t_s)
        if got is None:
            try:
                got = ua.DateTime.fromtimestamp(self._base + t_s, UTC)
            except (OverflowError, OSError, ValueError):
                got = now
            self._stamps[t_s] = got
        return got

    @staticmethod
    def _worst(codes: np.ndarray) -> int:
        """One status for an array of statuses (see "Quality" in the module docstring)."""
        sev = codes >> 30
        worst = int(sev.max())
        if worst == 0:
            return GOOD
        if worst >= _BAD_SEVERITY and int(sev.min()) < _BAD_SEVERITY:
            return MIXED
        pick = codes[sev == worst].tolist()
        return int(Counter(pick).most_common(1)[0][0])

    # ------------------------------------------------------------------ publishing

    async def _write_internal(
        self, nid: ua.NodeId, variant: ua.Variant, now: ua.DateTime | None = None
    ) -> ua.StatusCode:
        now = now or ua.DateTime.now(UTC)
        dv = ua.DataValue(variant, SourceTimestamp=now, ServerTimestamp=now)
        return await self.server.iserver.aspace.write_attribute_value(nid, ua.AttributeIds.Value, dv)

    async def _write_arrays(self, q: QuantitySpec, now: ua.DateTime, report: PublishReport | None = None) -> None:
        """Every room's array of ``q``; the common case (all Good, one scan time) costs no
        per-room status work."""
        codes, times = self._codes[q.name], self._times[q.name]
        uniform: float | None = None
        if times.size and not codes.any():
            lo, hi = float(times.min()), float(times.max())
            if lo == hi:
                uniform = lo
        for r in range(self.layout.n_rooms):
            await self._write_room_array(q, r, now, report, uniform)

    async def _write_room_array(self, q: QuantitySpec, room: int, now: ua.DateTime,
                                report: PublishReport | None = None, uniform: float | None = None) -> None:  # fmt: skip
        """Write one room's array of ``q`` (worst status, oldest usable source time) and, when
        an element's status changed, its StatusCode array (``uniform``: every element of ``q``
        is Good from the scan at that plant time)."""
        cells = self._rooms_cells[room]
        key = (q.name, room)
        write = self.server.iserver.aspace.write_attribute_value
        variant = ua.Variant(self._cell_values[q.name][cells].tolist(), q.vtype)
        if uniform is not None:
            dv = ua.DataValue(variant, StatusCode=self._status(GOOD), SourceTimestamp=self._stamp(uniform, now),
                              ServerTimestamp=now)  # fmt: skip
            status = await write(self._array_nids[key], ua.AttributeIds.Value, dv)
            if key not in self._status_all_good:
                await self._write_status_array(key, np.zeros(len(cells), dtype=np.uint32), now)
            self._report_array(report, status, q, room)
            return
        codes = self._codes[q.name][cells]
        times = self._times[q.name][cells]
        if not codes.any():
            code = GOOD
            src = float(times.min()) if times.size else math.nan
        else:
            code = self._worst(codes)
            usable = times[(codes >> 30) < _BAD_SEVERITY]
            src = float(usable.min()) if usable.size else (float(np.nanmax(times)) if np.isfinite(times).any()
                                                           else math.nan)  # fmt: skip
        dv = ua.DataValue(variant, StatusCode=self._status(code), SourceTimestamp=self._stamp(src, now),
                          ServerTimestamp=now)  # fmt: skip
        status = await write(self._array_nids[key], ua.AttributeIds.Value, dv)
        last = self._status_written.get(key)
        if last is None or not np.array_equal(last, codes):
            await self._write_status_array(key, codes, now)
        self._report_array(report, status, q, room)

    async def _write_status_array(self, key: tuple[str, int], codes: np.ndarray, now: ua.DateTime) -> None:
        self._status_written[key] = codes.copy()
        if codes.any():
            self._status_all_good.discard(key)
        else:
            self._status_all_good.add(key)
        sv = ua.Variant([self._status(c) for c in codes.tolist()], ua.VariantType.StatusCode)
        await self.server.iserver.aspace.write_attribute_value(
            self.status_array_node_id(*key), ua.AttributeIds.Value, ua.DataValue(sv, SourceTimestamp=now,
                                                                                  ServerTimestamp=now))  # fmt: skip

    def _report_array(self, report: PublishReport | None, status: ua.StatusCode, q: QuantitySpec, room: int) -> None:
        if report is not None:
            if status.is_good():
                report.arrays_written += 1
            else:
                report.errors.append(f"{self._path(self.layout.room_names[room], q.name)}: {status.name}")

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

    @staticmethod
    def _take_status(status: Mapping[str, ValueStatus] | None, q: QuantitySpec, n: int,
                     report: PublishReport) -> ValueStatus | None:  # fmt: skip
        st = status.get(q.name) if status else None
        if st is None:
            return None
        code, t_s = np.asarray(st.code), np.asarray(st.t_s)
        if code.shape != (n,) or t_s.shape != (n,):
            report.errors.append(f"status[{q.name!r}]: expected shapes ({n},), got {code.shape} and {t_s.shape} "
                                 "(published without a status)")  # fmt: skip
            return None
        return ValueStatus(code.astype(np.uint32, copy=False), t_s.astype(float, copy=False))

    def _set_state(self, q: QuantitySpec, values: np.ndarray, codes: np.ndarray, times: np.ndarray,
                   arr: np.ndarray, st: ValueStatus | None, t: float) -> None:  # fmt: skip
        """Store a quantity's new values, statuses and times (NaN is never Good or Uncertain)."""
        values[:] = arr
        if st is None:
            codes[:] = GOOD
            times[:] = t
        else:
            codes[:] = st.code
            times[:] = st.t_s
        if values.dtype.kind == "f":
            nan = np.isnan(values)
            if nan.any():
                codes[nan & ((codes >> 30) < _BAD_SEVERITY)] = NO_VALUE

    async def publish(
        self,
        snapshot: Mapping[str, Any],
        t: float,
        *,
        status: Mapping[str, ValueStatus] | None = None,
        links: Iterable[LinkLike] | None = None,
        source_time: datetime | None = None,
    ) -> PublishReport:
        """Publish one twin snapshot.

        Args:
            snapshot: quantity name -> array; cell quantities shape (n_cells,) in layout
                order, line quantities shape (n_lines,). Missing names keep their
                last value; unknown names are ignored (logged once).
            t: plant time of the snapshot [s] (Twin/ModelTime; scalar refresh period).
            status: quantity name -> ``ValueStatus`` (each value's StatusCode and source
                plant time); a quantity without one is Good at time ``t`` (NaN: no value).
            links: each PLC link's state (``BridgePlant.links()``) for the Links objects.
            source_time: wall time of plant time ``t`` (overrides ``epoch_s`` for this call).

        Never raises on bad input: shape/type problems and refused writes are
        logged and returned in ``PublishReport.errors``.
        """
        report = PublishReport()
        async with self._lock:
            now = ua.DateTime.now(UTC)
            if source_time is not None:
                self._base = source_time.timestamp() - t
            elif self.epoch_s is not None:
                self._base = self.epoch_s
            else:
                self._base = now.timestamp() - t
            self._stamps = {}
            self._last_t = t
            lay = self.layout
            for key in list(snapshot) + list(status or ()):
                if key not in self._deadband and key not in self._warned_keys:
                    self._warned_keys.add(key)
                    log.warning("opcua.unknown_quantity", key=key)
            fresh: list[QuantitySpec] = []
            for q in self.cell_quantities:
                arr = self._take(snapshot, q, lay.n_cells, report)
                if arr is None:
                    continue
                st = self._take_status(status, q, lay.n_cells, report)
                self._set_state(q, self._cell_values[q.name], self._codes[q.name], self._times[q.name], arr, st, t)
                self._published.add(q.name)
                fresh.append(q)
                await self._write_arrays(q, now, report)
            for q in self.line_quantities:
                arr = self._take(snapshot, q, lay.n_lines, report)
                if arr is None:
                    continue
                st = self._take_status(status, q, lay.n_lines, report)
                self._set_state(q, self._line_values[q.name], self._line_codes[q.name], self._line_times[q.name],
                                arr, st, t)  # fmt: skip
                self._published.add(q.name)
                await self._write_lines(q, now, report)
            if self.scalar_period_s is not None:
                due = self._scalars_due(t)
                if due:
                    self._last_scalar_t = t
                await self._write_scalars(fresh, now, report, values_due=due)
            if links is not None:
                await self._publish_links(links, now, report)
            self._publish_count += 1
            await self._write_internal(self._nid("Twin", "ModelTime"), ua.Variant(float(t), ua.VariantType.Double), now)
            await self._write_internal(
                self._nid("Twin", "PublishCount"), ua.Variant(self._publish_count, ua.VariantType.UInt64), now
            )
            self._last_publish_mono = time.monotonic()
            if self._stale:
                self._stale = False
                log.info("opcua.mirror_fresh_again", t_plant_s=t)
        if report.errors:
            log.error("opcua.publish_errors", count=len(report.errors), first=report.errors[:5])
        return report

    async def _write_lines(self, q: QuantitySpec, now: ua.DateTime, report: PublishReport | None) -> None:
        write = self.server.iserver.aspace.write_attribute_value
        values, codes, times = self._line_values[q.name], self._line_codes[q.name], self._line_times[q.name]
        for li in range(self.layout.n_lines):
            dv = ua.DataValue(ua.Variant(values[li].item(), q.vtype), StatusCode=self._status(int(codes[li])),
                              SourceTimestamp=self._stamp(float(times[li]), now), ServerTimestamp=now)  # fmt: skip
            status = await write(self.line_node_id(q.name, li), ua.AttributeIds.Value, dv)
            if report is not None:
                if status.is_good():
                    report.scalars_written += 1
                else:
                    report.errors.append(f"{q.name}[{self.layout.line_names[li]}]: {status.name}")

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
            self._stamps = {}
            for q in self.cell_quantities:
                self._scalar_last[q.name][:] = np.nan
                self._scalar_code[q.name][:] = _FORCE
            published = [q for q in self.cell_quantities if q.name in self._published]
            await self._write_scalars(published, ua.DateTime.now(UTC), report, values_due=True)
        return report

    async def _write_scalars(self, quantities: Sequence[QuantitySpec], now: ua.DateTime, report: PublishReport,
                             *, values_due: bool) -> None:  # fmt: skip
        """Rewrite the per-cell scalars whose status changed, and (``values_due``) those whose
        value moved beyond the deadband."""
        write = self.server.iserver.aspace.write_attribute_value
        value_attr = ua.AttributeIds.Value
        done = 0
        for q in quantities:
            new = self._cell_values[q.name]
            codes, times = self._codes[q.name], self._times[q.name]
            last, last_code = self._scalar_last[q.name], self._scalar_code[q.name]
            todo = codes != last_code
            if values_due:
                newf = new.astype(np.float64)
                with np.errstate(invalid="ignore"):
                    moved = np.abs(newf - last) > self._deadband[q.name]
                moved |= np.isnan(last) & ~np.isnan(newf)  # first write, or leaving NaN
                moved |= np.isnan(newf) & ~np.isnan(last)  # entering NaN
                todo |= moved
            cells = np.flatnonzero(todo)
            if cells.size == 0:
                continue
            nids = self._cell_nids[q.name]
            for k, v, c, ts in zip(cells.tolist(), new[cells].tolist(), codes[cells].tolist(), times[cells].tolist(),
                                   strict=True):  # fmt: skip
                dv = ua.DataValue(ua.Variant(v, q.vtype), StatusCode=self._status(c),
                                  SourceTimestamp=self._stamp(ts, now), ServerTimestamp=now)  # fmt: skip
                status = await write(nids[k], value_attr, dv)
                if status.is_good():
                    report.scalars_written += 1
                else:
                    report.errors.append(f"{q.name}[{self.layout.cell_name(k)}]: {status.name}")
                done += 1
                if done % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
            last[cells] = new[cells].astype(np.float64)
            last_code[cells] = codes[cells]

    # ------------------------------------------------------------------ staleness

    async def _watch_staleness(self) -> None:
        limit = float(self.stale_after_s or 0.0)
        while True:
            await asyncio.sleep(min(1.0, limit / 4.0))
            last = self._last_publish_mono
            if last is not None and not self._stale and time.monotonic() - last > limit:
                try:
                    await self.mark_stale()
                except Exception:
                    log.exception("opcua.mark_stale_failed")

    async def mark_stale(self) -> None:
        """Turn every Good value ``UncertainLastUsableValue`` (nothing fresh came: see
        ``stale_after_s``); the next ``publish`` brings the statuses back."""
        async with self._lock:
            self._stale = True
            now = ua.DateTime.now(UTC)
            self._stamps = {}
            log.warning("opcua.mirror_stale", seconds_without_publish=self.stale_after_s, t_plant_s=self._last_t)
            report = PublishReport()
            for codes in (*self._codes.values(), *self._line_codes.values()):
                codes[codes == GOOD] = STALE
            for q in self.cell_quantities:
                if q.name in self._published:
                    await self._write_arrays(q, now)
            for q in self.line_quantities:
                if q.name in self._published:
                    await self._write_lines(q, now, None)
            if self.scalar_period_s is not None:
                published = [q for q in self.cell_quantities if q.name in self._published]
                await self._write_scalars(published, now, report, values_due=False)
            stale = self._status(STALE)
            for device, link in self._links.items():  # a link state nobody refreshes is no longer known
                for name, vt in (("Up", ua.VariantType.Boolean), ("State", ua.VariantType.String)):
                    if link.written.get(name) is not None:
                        dv = ua.DataValue(ua.Variant(link.written.pop(name), vt), StatusCode=stale,
                                          SourceTimestamp=now, ServerTimestamp=now)  # fmt: skip
                        await self.server.iserver.aspace.write_attribute_value(
                            self.link_node_id(device, name), ua.AttributeIds.Value, dv
                        )

    # ------------------------------------------------------------------ links

    async def _publish_links(self, links: Iterable[LinkLike], now: ua.DateTime, report: PublishReport) -> None:
        write = self.server.iserver.aspace.write_attribute_value
        for ln in links:
            try:
                link = self._links.get(ln.device)
                if link is None:
                    link = await self._add_link(ln.device)
                up, scan_t, good_t = bool(ln.up), float(ln.scan_t), float(ln.last_good_t)
                if link.up is None or up != link.up:
                    link.up = up
                    link.since_t = scan_t if math.isfinite(scan_t) else math.nan
                state = "not scanned" if not math.isfinite(scan_t) else ("up" if up else "down")
                src = self._stamp(scan_t, now)
                fields: dict[str, tuple[Any, ua.VariantType]] = {
                    "Up": (up, ua.VariantType.Boolean),
                    "State": (state, ua.VariantType.String),
                    "Reason": (str(ln.reason or ""), ua.VariantType.String),
                    "Since": (link.since_t, ua.VariantType.DateTime),
                    "LastScan": (scan_t, ua.VariantType.DateTime),
                    "LastGood": (good_t, ua.VariantType.DateTime),
                }
                for name, (value, vt) in fields.items():
                    if vt == ua.VariantType.DateTime:
                        value = self._stamp(value, now) if math.isfinite(value) else None
                    if name in link.written and link.written[name] == value:
                        continue
                    link.written[name] = value
                    if value is None:  # no such time yet
                        dv = ua.DataValue(StatusCode=self._status(WAITING), ServerTimestamp=now)
                    else:
                        dv = ua.DataValue(ua.Variant(value, vt), SourceTimestamp=value if vt == ua.VariantType.DateTime
                                          else src, ServerTimestamp=now)  # fmt: skip
                    await write(self.link_node_id(ln.device, name), ua.AttributeIds.Value, dv)
            except Exception as exc:  # one bad link entry must not stop the publish
                report.errors.append(f"link {getattr(ln, 'device', ln)!r}: {exc}")

    async def _add_link(self, device: str) -> _Link:
        name = self.link_object_name(device)
        if any(link.name == name for link in self._links.values()):
            raise ValueError(f"two links named {name} (devices must differ in more than punctuation)")
        idx, obj = self.idx, self.link_node_id(device)
        items = [object_node_item(obj, ua.QualifiedName(name, idx), self._nid("Links"))]
        items.append(_variable_item(self.link_node_id(device, "Device"), "Device", idx, obj,
                                    ua.Variant(device, ua.VariantType.String), "The PLC (bridge device name)"))  # fmt: skip
        for fname, vt, desc in (
            ("Up", ua.VariantType.Boolean, "The last scan reached the PLC"),
            ("State", ua.VariantType.String, "up, down or not scanned"),
            ("Since", ua.VariantType.DateTime, "Time of the first scan in the present state"),
            ("Reason", ua.VariantType.String, "Why the link is down (empty when up)"),
            ("LastScan", ua.VariantType.DateTime, "Time of the last scan"),
            ("LastGood", ua.VariantType.DateTime, "Time of the last scan with the link up"),
        ):
            init = ua.Variant(False if vt == ua.VariantType.Boolean else "", vt) if vt != ua.VariantType.DateTime \
                else ua.Variant(None, ua.VariantType.Null)  # fmt: skip
            items.append(_variable_item(self.link_node_id(device, fname), fname, idx, obj, init, desc,
                                        datatype=ua.NodeId(ua.Int32(vt.value))))  # fmt: skip
        results = await self.server.iserver.isession.add_nodes(items)
        for item, res in zip(items, results, strict=False):
            if not res.StatusCode.is_good():
                raise RuntimeError(f"OPC UA node {item.RequestedNewNodeId.to_string()}: {res.StatusCode.name}")
        link = self._links[device] = _Link(name)
        log.info("opcua.link_node_added", device=device, node=obj.to_string())
        return link

    # ------------------------------------------------------------------ alarms & conditions

    async def publish_alarms(self, states: Iterable[ConditionState]) -> None:
        """``publish_alarm`` for each state, in order."""
        for st in states:
            await self.publish_alarm(st)

    async def publish_alarm(self, state: ConditionState) -> None:
        """Emit ``state`` as an AlarmConditionType event (see the module docstring)."""
        if self._server is None:
            raise RuntimeError("MirrorServer is not started")
        cond = self._conditions.get(state.key)
        if cond is None:
            cond = await self._add_condition(state)
        prev = cond.state if cond.event_ids else None
        cond.state = state
        if prev is None or prev.active != state.active:
            cond.active_since = state.t_s
        if prev is None or prev.acked != state.acked:
            cond.acked_since = state.t_s
        now = ua.DateTime.now(UTC)

        def at(t_s: float) -> datetime:
            return self._alarm_time(t_s, now)

        ev: Any = event_objects.AlarmCondition()
        ev.add_property("NodeId", cond.node, ua.VariantType.NodeId)  # the ConditionId
        for name in _TIME_FIELDS:
            ev.data_types[name] = ua.VariantType.DateTime
        event_id = uuid.uuid4().bytes
        cond.event_ids.append(event_id)
        source = self._source_node(state)
        ev.EventId = event_id
        ev.SourceNode = source
        ev.SourceName = state.source_name
        ev.Time = at(state.t_s)
        ev.ReceiveTime = now
        ev.LocalTime = ua.TimeZoneDataType(Offset=0, DaylightSavingInOffset=False)
        ev.Message = ua.LocalizedText(state.message)
        ev.Severity = ev.LastSeverity = max(1, min(1000, int(state.severity)))
        ev.ConditionClassId = ua.NodeId(ua.Int32(ua.ObjectIds.ProcessConditionClassType))
        ev.ConditionClassName = ua.LocalizedText("Process")
        ev.ConditionName = state.name
        ev.BranchId = ua.NodeId()
        ev.Retain = state.retain
        ev.EnabledState = ua.LocalizedText("Enabled")
        setattr(ev, "EnabledState/Id", True)
        ev.Quality = ua.StatusCode()
        ev.Comment = ua.LocalizedText(state.comment)
        ev.ClientUserId = state.user or ""
        ev.ActiveState = ua.LocalizedText("Active" if state.active else "Inactive")
        setattr(ev, "ActiveState/Id", state.active)
        setattr(ev, "ActiveState/TransitionTime", at(cond.active_since))
        ev.AckedState = ua.LocalizedText("Acknowledged" if state.acked else "Unacknowledged")
        setattr(ev, "AckedState/Id", state.acked)
        setattr(ev, "AckedState/TransitionTime", at(cond.acked_since))
        ev.SuppressedState = ua.LocalizedText("Suppressed" if state.suppressed else "Unsuppressed")
        setattr(ev, "SuppressedState/Id", state.suppressed)
        ev.SuppressedOrShelved = state.suppressed or state.shelved
        await self.server.iserver.isession.subscription_service.trigger_event(ev)

    def _alarm_time(self, t_s: float, now: datetime) -> datetime:
        """Wall time of plant time ``t_s``: ``epoch_s`` + t, else the last publish's timeline, else now."""
        base = self.epoch_s if self.epoch_s is not None else (self._base if self._publish_count else None)
        if base is None or not math.isfinite(t_s):
            return now
        try:
            return datetime.fromtimestamp(base + t_s, UTC)
        except (OverflowError, OSError, ValueError):
            return now

    def _source_node(self, state: ConditionState) -> ua.NodeId:
        lay = self.layout
        if state.area is not None and state.cell is not None:
            k = self._cell_of.get((state.area, int(state.cell)))
            if k is not None:
                return self._nid(state.area, self.cell_object_name(k))
        if state.area in lay.room_names or state.area in lay.line_names:
            return self._nid(str(state.area))
        if state.area is not None:
            for link in self._links:
                if link == state.area or link.split(":", 1)[-1] == state.area:
                    return self.link_node_id(link)
        return ua.NodeId(ua.Int32(ua.ObjectIds.Server))

    async def _add_condition(self, state: ConditionState) -> _Condition:
        nid = self.condition_node_id(state.key)
        name = re.sub(r"[^A-Za-z0-9_]", "_", state.key)
        base, i = name, 2
        while name in self._condition_names:
            name, i = f"{base}_{i}", i + 1
        self._condition_names.add(name)
        item = object_node_item(nid, ua.QualifiedName(name, self.idx), self._nid("Alarms"))
        item.NodeAttributes.Description = ua.LocalizedText(f"Alarm condition {state.key} (its state is in its events)")
        (res,) = await self.server.iserver.isession.add_nodes([item])
        if not res.StatusCode.is_good():
            raise RuntimeError(f"OPC UA node {nid.to_string()}: {res.StatusCode.name}")
        cond = self._conditions[state.key] = _Condition(nid, state)
        self._condition_keys[nid] = state.key
        return cond

    # ------------------------------------------------------------------ anode-effect events

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


def _generates_event(event_type: int) -> ua.AddReferencesItem:
    ref = ua.AddReferencesItem()
    ref.IsForward = True
    ref.ReferenceTypeId = ua.NodeId(ua.Int32(ua.ObjectIds.GeneratesEvent))
    ref.SourceNodeId = ua.NodeId(ua.Int32(ua.ObjectIds.Server))
    ref.TargetNodeClass = ua.NodeClass.ObjectType
    ref.TargetNodeId = ua.NodeId(ua.Int32(event_type))
    return ref


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
    historizing: bool = False,
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
    access |= ua.AccessLevel.HistoryRead.mask if historizing else 0
    attrs.AccessLevel = access
    attrs.UserAccessLevel = access
    attrs.Historizing = historizing
    attrs.MinimumSamplingInterval = 0.0
    item.NodeAttributes = attrs
    return item


def _analog_items(
    nid: ua.NodeId,
    q: QuantitySpec,
    idx: int,
    parent: ua.NodeId,
    value: ua.Variant,
    array_len: int | None = None,
    *,
    historizing: bool = False,
) -> list[ua.AddNodesItem]:
    """A variable (AnalogItemType when it has a range) plus EngineeringUnits/EURange properties
    (``historizing``: AccessLevel HistoryRead and Historizing set)."""
    analog = q.eu_range is not None
    desc = f"{q.description} [{q.unit}]" if q.unit else q.description
    items = [
        _variable_item(
            nid, q.name, idx, parent, value, desc, array_len=array_len,
            type_def=ua.ObjectIds.AnalogItemType if analog else ua.ObjectIds.BaseDataVariableType,
            writable=q.writable and array_len is None, historizing=historizing,
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
