"""``BridgePlant``: the controller's ``potctl.plant.Plant`` over real PLC protocols.

One rectifier PLC per line (Modbus TCP by default) and one potroom PLC per room (OPC UA
by default, Modbus as an option), each described by its tag map
(``config/tagmaps/rectifier.toml`` / ``potroom.toml``; the potroom map's cell block is
resized to the room). Used against HIL rigs and live PLCs alike; the daemon builds on it.

``read()`` scans every PLC concurrently and assembles ``Measurements``:

* quality: a cell is ``cell_ok`` when its voltage, status and acknowledgement tags are
  GOOD, its room's link is up and the data is fresh — data quality only, whoever is in
  charge; ``cell_remote`` says whether the room PLC is in *remote* (its ``remote`` tag
  GOOD and set, link up, fresh): in local the PLC's own automation is in charge, the
  controller still judges the cells (AE detection, PFC accounting) but commands nothing
  there (and the ``room_remote`` interlock would refuse it); a line
  is ``line_ok`` when its current, trip and remote tags are GOOD and its voltage and
  active setpoint are at least UNCERTAIN (a value beyond the tag's engineering range is
  still a measurement: an AE can push a long line past the map's voltage range);
* the cumulative acknowledgements (``feed_ack`` wraps at 65536, ``beam_ack`` in 0.1 mm)
  are unwrapped into monotonic totals that survive link drops and PLC restarts (a
  restart, seen as the PLC heartbeat jumping back, restarts its counters from 0);
  while a tag is bad its last good total is held. Each total starts at the PLC's own
  counter as read at the bridge's first scan, not at 0, so a daemon restart does not
  move the base: while that holds (``acks_are_plc_counters``: every cell read at the
  first scan, no PLC restart seen) the totals are the PLCs' counters, which lets the
  beam ledger reconcile owed restores exactly. A cell first read later counts from
  that reading (never a jump from 0 to the counter's value).

``write(commands)`` passes everything through ``plc_bridge.safe_write.SafeWriter``
(one per PLC; nothing is written any other way):

* the two-way heartbeat ticks once per cycle (the PLC drops to local control when it
  stops; a stale PLC counter refuses writes);
* line-current setpoints: clamped, ramp-limited (``setpoint_rate_ka_per_s``), interlocked
  on *remote*, *not tripped* and plausible readings, deadbanded (``setpoint_deadband_ka``:
  an unchanged setpoint is not rewritten), read back; a PLC holding a setpoint outside the
  bounds is brought back along the ramp (alarm ``out_of_bounds``);
* feeder shots / beam moves use the command handshake (``write_command``: fields, then
  the counter). Cells in AE go first. A cell's next command waits for the PLC's
  acknowledgement of the previous one (requests meanwhile are added up, and dropped if
  the ack does not come within ``ack_timeout_s`` or the room leaves remote: queued
  commands are never replayed after a comms loss). Interlocks: room remote, cell in
  circuit, no beam move during tapping/anode change;
* on comms loss the writer stops writing and raises an alarm; the PLC falls back to
  local on its watchdog; when the link returns the PLC state is re-read (resync).

* AlF3 additions (``Commands.alf3_kg`` > 0, cells in remote) use the same handshake
  (``alf3_kg`` then ``alf3_cmd``, acknowledged on ``alf3_cmd_ack``, one outstanding
  command per cell, requests meanwhile added up); the PLC stops its own AlF3 schedule for
  a cell at the first addition it carries out there. A request beyond the map's ``max``
  is refused, not clamped (a ``WriteRecord`` naming the tag and the bounds, counted in
  ``stats["refused"]``, event ``command_out_of_bounds``);
* the shell heat-exchanger duty (``Commands.hx_duty_kw``, finite entries, cells in
  remote and in circuit) is a setpoint written to ``hx_duty_sp``: refused outside the
  map's bounds (not clamped; the same request is not re-journalled every cycle),
  deadbanded (``hx_duty_deadband_kw``), interlocked like the commands.

A potroom map without the AlF3 or exchanger roles (a PLC that has none) keeps working:
those commands are not sent and the loss is stated (``capability_losses``);
``Measurements.hx_duty_kw`` / ``shell_temp_c`` are None when no room reports them, NaN
for cells whose value is BAD or whose room's map lacks it.

Roles, not names: each device's tag map must give the roles of its kind
(``plc_bridge.roles``; checked when the map is loaded: a missing required role is a
``TagMapError`` naming the role and the device); a missing optional role is a stated
capability loss (``capability_losses``, logged at start). The bridge looks tags up by
role. The rectifier's setpoint bounds are narrowed to the plant's own rectifier limits
(``BridgeSettings.line_limits_ka``, from the plant config: one source for the map, the
safety layer and the rig's PLC).

Quality end to end: ``quality`` holds, per ``Measurements`` array, the quality, source
time (plant time of the scan the value came from) and reason of every value as last
read: a value held from an older scan (link down, bad tag) is UNCERTAIN "last usable
value" until it is ``stale_after_s`` old, then BAD; ``links()`` gives each PLC's link
state. ``quality.opcua_status_name`` turns them into OPC UA StatusCodes for a mirror.

Bridge events (ack timeouts, PLC restarts seen, comms alarms) are collected for the
journal: ``drain_events()``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import structlog

from plc_bridge.codec import DataType, judge
from plc_bridge.opcua_client import PlcSecurity
from plc_bridge.quality import LinkStatus, Quality, Sample, ValueQuality, WriteResult
from plc_bridge.roles import DEVICE_KINDS, read_roles, require_roles
from plc_bridge.safe_write import (
    Alarm,
    HeartbeatConfig,
    Interlock,
    InterlockResult,
    SafeWriter,
    WritePolicy,
    WriteRecord,
)
from plc_bridge.tagmap import Tag, TagMap, load_tagmap, parse_tagmap
from potctl.plant import Commands, Measurements
from twin.config import CONFIG_DIR
from twin.configcore import ConfigError, load_toml
from twin.layout import PlantLayout

__all__ = [
    "POTROOM_MAP",
    "RECTIFIER_MAP",
    "BridgePlant",
    "BridgeSettings",
    "DeviceEndpoint",
    "OpcUaTagIO",
    "layout_from_dict",
    "potroom_tagmap",
    "rectifier_limits",
    "rectifier_tagmap",
]

log = structlog.get_logger(__name__)

RECTIFIER_MAP = CONFIG_DIR / "tagmaps" / "rectifier.toml"
POTROOM_MAP = CONFIG_DIR / "tagmaps" / "potroom.toml"

Protocol_ = Literal["modbus", "opcua"]


# ====================================================================== tag maps


def rectifier_tagmap(instance: str, path: str | Path | None = None, *,
                     limits_ka: tuple[float, float] | None = None) -> TagMap:  # fmt: skip
    """The rectifier tag map for the PLC of line ``instance`` (e.g. ``"Line1"``).

    Its roles are checked (``TagMapError`` naming a missing required role and the
    device); ``limits_ka`` (the plant's rectifier ``min_ka``, ``max_ka``) narrows the
    setpoint's bounds.
    """
    tm = load_tagmap(path or RECTIFIER_MAP, instance=instance)
    require_roles(tm, "rectifier")
    if limits_ka is not None:
        try:
            tm = tm.with_bounds(
                "line_current_sp", limits_ka[0], limits_ka[1], f"the plant's rectifier limits of {instance}"
            )
        except ValueError as exc:
            raise ConfigError(tm.source, [("roles.line_current_sp", str(exc))]) from None
    return tm


def potroom_tagmap(instance: str, n_cells: int, path: str | Path | None = None) -> TagMap:
    """The potroom tag map for room ``instance`` with its cell block resized to ``n_cells``
    (roles checked as for ``rectifier_tagmap``)."""
    p = Path(path or POTROOM_MAP)
    data = load_toml(p)  # missing file, bad TOML or a non-finite number: the one ConfigError
    cells = data.get("cells")
    if not isinstance(cells, dict):
        raise ConfigError(str(p), [("cells", "expected a [cells] table (the potroom's cell block), got none")])
    cells["count"] = int(n_cells)
    tm = parse_tagmap(data, source=str(p), instance=instance)
    require_roles(tm, "potroom")
    return tm


def rectifier_limits(plant: Any) -> dict[str, tuple[float, float]]:
    """``{line name: (min_ka, max_ka)}`` of a ``twin.config.PlantConfig``'s rectifiers (the one
    source of the rectifiers' real limits: ``BridgeSettings.line_limits_ka``)."""
    return {ln.name: (float(ln.rectifier.min_ka), float(ln.rectifier.max_ka)) for ln in plant.lines}


def layout_from_dict(d: Mapping[str, Any]) -> PlantLayout:
    """A ``PlantLayout`` from plain data (as a rig's ``endpoints()["layout"]``)."""
    return PlantLayout(
        plant=str(d["plant"]),
        line_names=tuple(d["line_names"]),
        room_names=tuple(d["room_names"]),
        cell_line=np.asarray(d["cell_line"], dtype=np.int64),
        cell_room=np.asarray(d["cell_room"], dtype=np.int64),
        cell_number=np.asarray(d["cell_number"], dtype=np.int64),
        shot_mass_kg=np.asarray(d["shot_mass_kg"], dtype=float),
        nominal_current_ka=np.asarray(d["nominal_current_ka"], dtype=float),
    )


# ====================================================================== settings


@dataclass(frozen=True)
class DeviceEndpoint:
    """Where one PLC listens.

    Attributes:
        protocol: ``modbus`` or ``opcua``.
        host, port: address.
        path: OPC UA endpoint path (``opc.tcp://host:port<path>``).
        namespace: OPC UA namespace URI for unprefixed browse-path segments (None: the
            tag map's ``[device] namespace``, else the server's last namespace).
        security: OPC UA message security and login (``PlcSecurity``; None: no security,
            anonymous).
    """

    protocol: Protocol_
    host: str
    port: int
    path: str = "/plc/"
    namespace: str | None = None
    security: PlcSecurity | None = None

    @property
    def url(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}{self.path}"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base: Path | None = None) -> DeviceEndpoint:
        """From a rig endpoint or a PLC config section; the security keys are
        ``plc_bridge.opcua_client.PLC_SECURITY_KEYS`` (paths relative to ``base``)."""
        return cls(d["protocol"], d.get("host", "127.0.0.1"), int(d["port"]), d.get("path", "/plc/"),
                   d.get("namespace"), PlcSecurity.from_mapping(d, base))  # fmt: skip


@dataclass(frozen=True)
class BridgeSettings:
    """Timing and safety settings of the bridge (times on the plant clock, seconds).

    Attributes:
        stale_after_s: data older than this is not acted on (interlocks refuse); a held
            value turns from UNCERTAIN to BAD at this age.
        plc_heartbeat_timeout_s: PLC counter unchanged this long => writes refused.
        setpoint_rate_ka_per_s: ramp limit of the line-current setpoint in the safety layer.
        setpoint_max_interval_s: elapsed time a ramp step may be credited with at most.
        setpoint_min_ka, setpoint_max_ka: tighter setpoint bounds than the tag map (None: map).
        setpoint_deadband_ka: a setpoint within this of what the PLC holds is not rewritten
            (nor journalled) [kA].
        line_limits_ka: the rectifiers' own limits ``{line: (min_ka, max_ka)}`` from the
            plant config (``rectifier_limits``); they narrow each map's setpoint bounds.
        ack_timeout_s: a command not acknowledged within this is given up (alarm event).
        verify_commands: read back command fields (the ack counter verifies them anyway).
        hx_duty_deadband_kw: an exchanger duty within this of what the PLC holds is not
            rewritten (nor journalled) [kW].
        frozen_after_s: a cell voltage that has not changed for this long [plant s] while the
            cell carries current (> 2 V) is a frozen transmitter: the cell goes not ok
            (``sensor_frozen`` event) until the value moves again (``sensor_recovered``); a
            live voltage carries tens of mV of MHD noise on every scan. None: not checked.
        modbus_timeout_s, opcua_timeout_s: per-request timeouts [wall s].
        rectifier_map, potroom_map: tag map files.
    """

    stale_after_s: float = 10.0
    plc_heartbeat_timeout_s: float = 10.0
    setpoint_rate_ka_per_s: float = 0.1
    setpoint_max_interval_s: float = 10.0
    setpoint_min_ka: float | None = None
    setpoint_max_ka: float | None = None
    setpoint_deadband_ka: float = 0.01
    line_limits_ka: Mapping[str, tuple[float, float]] | None = None
    ack_timeout_s: float = 30.0
    verify_commands: bool = False
    hx_duty_deadband_kw: float = 1.0
    frozen_after_s: float | None = 120.0
    modbus_timeout_s: float = 0.5
    opcua_timeout_s: float = 2.0
    rectifier_map: str | None = None
    potroom_map: str | None = None


# ====================================================================== OPC UA as a TagIO


class OpcUaTagIO:
    """``plc_bridge.safe_write.TagIO`` over an ``OpcUaClient`` (tag names = node names).

    Reads give ``Sample``s judged like Modbus reads (``codec.judge``: the node value times
    ``opcua.scale`` plus ``opcua.offset``, inverted bools, enumerations, plausibility,
    UNCERTAIN outside the engineering range); writes give ``WriteResult`` with
    Modbus-like codes: link failures -3 ("connection lost") / -2 ("not connected"),
    server refusals 3 (BadOutOfRange, BadTypeMismatch) or 4 (any other Bad status),
    unresolved nodes 2.
    """

    def __init__(self, client: Any, tagmap: TagMap) -> None:
        self.client = client
        self.tagmap = tagmap

    async def read(self, names: Iterable[str]) -> dict[str, Sample]:
        got = await self.client.read(list(names))
        out: dict[str, Sample] = {}
        for n, s in got.items():
            if s.quality is Quality.BAD:
                reason = s.reason
                if reason.startswith("read failed"):
                    reason = "connection lost"
                out[n] = Sample.bad(reason, s.t) if reason != s.reason else s
                continue
            v = s.value
            if isinstance(v, np.generic):
                v = v.item()
            if v is None or isinstance(v, (str, np.ndarray)):
                out[n] = Sample(v, s.quality, s.t, s.reason)
                continue
            tag = self.tagmap[n]
            if tag.type is DataType.BOOL:
                judged = judge(tag, bool(v), s.t)
            else:
                try:
                    fv = float(v)
                except (TypeError, ValueError):
                    out[n] = Sample.bad(f"not a number: {v!r}", s.t)
                    continue
                judged = judge(tag, fv * tag.opcua_scale + tag.opcua_offset, s.t, raw=fv)
            if s.quality is Quality.UNCERTAIN and judged.quality is Quality.GOOD:
                judged = Sample(judged.value, Quality.UNCERTAIN, s.t, s.reason)  # the server's own doubt stays
            out[n] = judged
        return out

    async def write(self, name: str, value: float | int | bool, *, recovery: bool = False) -> WriteResult:
        """Write engineering ``value`` (negated for an inverted bool, unscaled per ``opcua.scale``)."""
        from plc_bridge.opcua_client import OpcUaWriteError

        tag = self.tagmap[name]
        node_value: float | int | bool = value
        if tag.type is DataType.BOOL:
            node_value = bool(value) != tag.invert
        elif tag.opcua_scale != 1.0 or tag.opcua_offset != 0.0:
            x = (float(value) - tag.opcua_offset) / tag.opcua_scale
            node_value = int(round(x)) if tag.type.is_int else x
        try:
            await self.client.write(name, node_value)
        except ConnectionError as exc:
            code = -2 if "not connected" in str(exc) else -3
            return WriteResult(name, value, None, False, "not connected" if code == -2 else "connection lost", code)
        except OpcUaWriteError as exc:
            code = 3 if exc.status.name in ("BadOutOfRange", "BadTypeMismatch") else 4
            return WriteResult(name, value, None, False, exc.status.name, code)
        except KeyError as exc:
            return WriteResult(name, value, None, False, f"unresolved node: {exc}", 2)
        except (TypeError, ValueError) as exc:
            return WriteResult(name, value, None, False, f"protocol error: {exc}", -4)
        return WriteResult(name, value, value, True)


# ====================================================================== one device


@dataclass
class _Scan:
    """One device's scan: samples by role, per-cell arrays by role with GOOD masks.

    ``scalars``: role -> Sample; ``tag_samples``: tag name -> Sample (the safety
    layer's interlock and heartbeat signals); ``fields``: per-cell role -> (values,
    GOOD mask); ``field_quality``: per-cell role -> ``Quality`` codes; ``field_reason``:
    per-cell role -> reasons (object array, "" where GOOD; absent when all are GOOD).
    """

    t: float
    link_ok: bool
    scalars: dict[str, Sample] = field(default_factory=dict)
    fields: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    field_quality: dict[str, np.ndarray] = field(default_factory=dict)
    field_reason: dict[str, np.ndarray] = field(default_factory=dict)
    tag_samples: dict[str, Sample] = field(default_factory=dict)
    reason: str = ""

    def value(self, name: str, default: float = math.nan) -> float:
        s = self.scalars.get(name)
        if s is None or not s.good or s.value is None:
            return default
        return float(s.value)

    def good(self, name: str) -> bool:
        s = self.scalars.get(name)
        return bool(s is not None and s.good)

    def usable(self, name: str) -> bool:
        """GOOD, or UNCERTAIN with a value (e.g. beyond the tag's engineering range)."""
        s = self.scalars.get(name)
        return bool(s is not None and s.value is not None and s.quality is not Quality.BAD)

    def number(self, name: str, default: float = math.nan) -> float:
        """The value if usable (see ``usable``), else ``default``."""
        s = self.scalars.get(name)
        if s is None or s.value is None or s.quality is Quality.BAD:
            return default
        return float(s.value)


class _Device:
    """One PLC: a reader for scans, a TagIO + SafeWriter for writes; tags by role."""

    def __init__(self, kind: str, name: str, index: int, tagmap: TagMap, endpoint: DeviceEndpoint,
                 clock: Any, settings: BridgeSettings) -> None:  # fmt: skip
        self.kind, self.name, self.index = kind, name, index
        self.tagmap = tagmap
        self.endpoint = endpoint
        self.clock = clock
        self.settings = settings
        self.roles = require_roles(tagmap, kind)
        self.spec = DEVICE_KINDS[kind]
        #: role -> tag name (plain roles) / cell field (per-cell roles) the map gives
        self.tag_of = {r.name: self.roles.bound[r.name] for r in self.spec.roles
                       if not r.per_cell and r.name in self.roles.bound}  # fmt: skip
        self.field_of = {r.name: self.roles.bound[r.name] for r in self.spec.roles
                         if r.per_cell and r.name in self.roles.bound}  # fmt: skip
        self.capability_losses = self.roles.loss_lines()
        reads = [r.name for r in read_roles(self.spec, per_cell=False) if r.name in self.tag_of]
        if kind == "rectifier":
            reads.append("line_current_sp")  # the register: what the PLC holds (deadband, bounds)
        self.read_scalars = reads  # roles
        self.read_fields = [r.name for r in read_roles(self.spec, per_cell=True) if r.name in self.field_of]
        self.bit_fields: dict[str, tuple[str, int, bool]] = {}
        self.scan_client: Any = None
        self.io: Any = None
        self._write_client: Any = None
        self._opcua: Any = None
        self.writer: SafeWriter | None = None
        self.last: _Scan | None = None
        self.last_good_t = math.nan
        self._scan_names: list[str] = []
        self._field_idx: dict[str, np.ndarray] = {}
        self._plan_reads()

    @property
    def device(self) -> str:
        return f"{self.kind}:{self.name}"

    def tag(self, role: str) -> str:
        """The tag name giving plain ``role`` (KeyError when the map does not give it)."""
        return self.tag_of[role]

    def cell_tag(self, prefix: str, role: str) -> str:
        """The concrete tag of per-cell ``role`` for the cell with name prefix ``prefix``."""
        return f"{prefix}.{self.field_of[role]}"

    def _plan_reads(self) -> None:
        tm = self.tagmap
        names = [self.tag_of[r] for r in self.read_scalars]
        self.optional: dict[str, tuple[str, ...]] = {}
        if tm.cells is not None:
            words = {}
            for f in tm.cells.fields:
                t0 = tm[tm.cell_tags(f)[0]]
                if t0.has_modbus and t0.bit is None and t0.type is not DataType.BOOL and t0.alias_of is None:
                    words[(t0.table, t0.address)] = f
            read: list[str] = []  # fields
            role_src: dict[str, str] = {}
            for role in self.read_fields:
                f = self.field_of[role]
                t0 = tm[tm.cell_tags(f)[0]]
                src = words.get((t0.table, t0.address)) if t0.bit is not None else None
                if self.endpoint.protocol == "opcua" and src is not None and t0.bit is not None:
                    # read the status word once and take the bits from it
                    self.bit_fields[role] = (src, int(t0.bit), bool(t0.invert))
                    if src not in read:
                        read.append(src)
                elif self.endpoint.protocol == "opcua" and role in _ON_DEMAND:
                    # command acks: read only for cells awaiting one (OPC UA reads cost per node)
                    self.optional[role] = tm.cell_tags(f)
                else:
                    if f not in read:
                        read.append(f)
                    role_src[role] = f
            field_idx: dict[str, np.ndarray] = {}
            for f in read:
                start = len(names)
                names += list(tm.cell_tags(f))
                field_idx[f] = np.arange(start, len(names))
            self._word_idx = field_idx
            self._field_idx = {role: field_idx[f] for role, f in role_src.items()}
        self._scan_names = names

    async def start(self, on_alarm: Callable[[Alarm], None] | None, on_record: Callable[[WriteRecord], None] | None,
                    policies: Mapping[str, WritePolicy]) -> None:  # fmt: skip
        ep, st = self.endpoint, self.settings
        if ep.protocol == "modbus":
            from plc_bridge.modbus_client import ModbusTagClient

            self.scan_client = ModbusTagClient(self.tagmap, ep.host, ep.port, clock=self.clock, timeout_s=st.modbus_timeout_s,
                                               retries=0, tags=self._scan_names, name=f"{self.name}-scan")  # fmt: skip
            self._write_client = ModbusTagClient(self.tagmap, ep.host, ep.port, clock=self.clock,
                                                 timeout_s=st.modbus_timeout_s, retries=0, name=f"{self.name}-write")  # fmt: skip
            await asyncio.gather(self.scan_client.connect(), self._write_client.connect())
            self.io = self._write_client
        elif ep.protocol == "opcua":
            from plc_bridge.opcua_client import NodeRef, OpcUaClient

            refs = {}
            wanted = self._scan_names + [n for names in self.optional.values() for n in names]
            for n in wanted + [t.name for t in self.tagmap.writable()]:
                t = self.tagmap[n]
                if t.browse_path or t.node_id:
                    refs[n] = NodeRef(n, t.browse_path, t.node_id)
            ns = ep.namespace or self.tagmap.namespace
            self._opcua = OpcUaClient(ep.url, refs.values(), namespace=ns, security=ep.security,
                                      timeout_s=st.opcua_timeout_s, retry_delay_s=0.25, clock=self.clock,
                                      name=self.device)  # fmt: skip
            await self._opcua.start(wait_s=5.0)
            self.io = OpcUaTagIO(self._opcua, self.tagmap)
        else:  # pragma: no cover - validated by DeviceEndpoint users
            raise ValueError(f"{self.device}: unknown protocol {ep.protocol!r}")
        hb = HeartbeatConfig(self.tag("heartbeat_out"), self.tag_of.get("heartbeat_in"), period_s=1.0,
                             in_timeout_s=st.plc_heartbeat_timeout_s)  # fmt: skip
        self.writer = SafeWriter(self.io, self.tagmap, self.clock, policies=policies, heartbeat=hb,
                                 on_alarm=on_alarm, on_record=on_record, verify_retries=1)  # fmt: skip
        for loss in self.capability_losses:
            log.warning("plc_capability_lost", device=self.device, tagmap=self.tagmap.source, loss=loss)

    async def stop(self) -> None:
        for c in (self.scan_client, self._write_client):
            if c is not None:
                await c.close()
        if self._opcua is not None:
            await self._opcua.stop()

    async def scan(self, wanted: Mapping[str, np.ndarray] | None = None) -> _Scan:
        """Read the device once (plus on-demand fields for the cells in ``wanted``).

        Never raises on comms problems (BAD samples instead).
        """
        names = self._scan_names
        extra: list[tuple[str, np.ndarray, tuple[str, ...]]] = []
        if self.optional:
            for role, all_names in self.optional.items():
                idx = np.asarray((wanted or {}).get(role, ()), dtype=np.int64)
                extra.append((role, idx, tuple(all_names[i] for i in idx.tolist())))
        why: Callable[[int], str]
        if self.endpoint.protocol == "modbus":
            from plc_bridge.modbus_client import reason_text

            sc = await self.scan_client.scan()
            t = sc.t
            values, quality = sc.values, sc.quality.astype(np.uint8)
            link = not bool(np.isin(sc.codes, (-1, -2, -3, -4)).all())
            tag_samples = {self.tag_of[r]: sc.sample(self.tag_of[r]) for r in self.read_scalars}
            reason = "" if link else reason_of_codes(sc.codes)

            def why(i: int) -> str:
                return sc.detail.get(i) or reason_text(int(sc.codes[i]))

        else:
            req = names + [n for _, _, ns in extra for n in ns]
            got = await self.io.read(req)
            t = self.clock.now()
            values = np.array([_as_float(got[n].value) for n in req], dtype=float)
            quality = np.array([int(got[n].quality) for n in req], dtype=np.uint8)
            link = bool(self._opcua.connected) and bool((quality == Quality.GOOD).any())
            tag_samples = {self.tag_of[r]: got[self.tag_of[r]] for r in self.read_scalars}
            reason = "" if link else next((s.reason for s in got.values() if s.reason), "no link")

            def why(i: int) -> str:
                return got[req[i]].reason

        def reasons(idx: np.ndarray, q: np.ndarray) -> np.ndarray | None:
            """Per-cell reasons of the values of ``idx`` that are not GOOD (None: all GOOD)."""
            bad = np.flatnonzero(q != Quality.GOOD)
            if bad.size == 0 or not link:
                return None
            r = np.full(idx.size, "", dtype=object)
            for j in bad.tolist():
                r[j] = why(int(idx[j]))
            return r

        good = quality == Quality.GOOD
        out = _Scan(t, link, {r: tag_samples[self.tag_of[r]] for r in self.read_scalars}, tag_samples=tag_samples,
                    reason=reason)  # fmt: skip
        for role, idx in self._field_idx.items():
            out.fields[role] = (values[idx], good[idx])
            out.field_quality[role] = quality[idx]
            rs = reasons(idx, quality[idx])
            if rs is not None:
                out.field_reason[role] = rs
        pos = len(names)
        n_cells = self.tagmap.cells.count if self.tagmap.cells is not None else 0
        for role, idx, ns in extra:
            v = np.full(n_cells, math.nan)
            q = np.full(n_cells, Quality.BAD, dtype=np.uint8)
            v[idx] = values[pos : pos + len(ns)]
            q[idx] = quality[pos : pos + len(ns)]
            pos += len(ns)
            out.fields[role] = (v, q == Quality.GOOD)
            out.field_quality[role] = q
        for role, (src, bit, invert) in self.bit_fields.items():
            idx = self._word_idx[src]
            w, q = values[idx], quality[idx]
            bits = ((np.nan_to_num(w).astype(np.int64) >> bit) & 1).astype(bool) ^ invert
            out.fields[role] = (bits.astype(float), q == Quality.GOOD)
            out.field_quality[role] = q
            rs = reasons(idx, q)
            if rs is not None:
                out.field_reason[role] = rs
        if link:
            self.last_good_t = t
        self.last = out
        return out


_ON_DEMAND = frozenset({"feed_cmd_ack", "beam_cmd_ack", "alf3_cmd_ack"})

#: line ``Measurements`` arrays: (quality key, role, BridgePlant attribute, must be GOOD to be taken)
_LINE_MAP = (
    ("line_current_ka", "line_current", "_line_i", True),
    ("line_voltage_v", "line_voltage", "_line_u", False),
    ("line_setpoint_ka", "setpoint_active", "_line_sp", False),
    ("rectifier_tripped", "tripped", "_line_tripped", True),
    ("rectifier_remote", "remote", "_line_remote", True),
    ("tap_position", "tap_position", "_tap", False),
)
_LINE_SIGNALS = tuple(k for k, *_ in _LINE_MAP)
#: per-cell ``Measurements`` arrays whose quality the bridge keeps
_CELL_SIGNALS = (
    "cell_voltage_v",
    "feeder_ack",
    "beam_ack_mm",
    "tapping",
    "anode_change",
    "cut_out",
    "hx_duty_kw",
    "shell_temp_c",
)
#: optional per-cell readings: (role, ``Measurements`` field / quality key)
_CELL_OPTIONAL = (("hx_duty", "hx_duty_kw"), ("shell_temp", "shell_temp_c"))
#: the AlF3 command needs all three roles
_ALF3_ROLES = ("alf3_kg", "alf3_cmd", "alf3_cmd_ack")


def reason_of_codes(codes: np.ndarray) -> str:
    """The first link reason of a Modbus scan's codes (``modbus_client.reason_text``)."""
    from plc_bridge.modbus_client import reason_text

    bad = codes[codes != 0]
    return reason_text(int(bad[0])) if bad.size else "no link"


def _as_float(v: Any) -> float:
    if v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


# ====================================================================== the plant


def _is_cell_tag(t: Tag) -> bool:
    """Interlock scope: per-cell tags."""
    return t.cell is not None


def _is_beam_tag(t: Tag) -> bool:
    """Interlock scope: anode-beam commands."""
    return t.role in ("beam_move", "beam_cmd")


def _cell_signal(name_template: str, field: str) -> Callable[[Tag], str]:
    """Interlock source: tag ``field`` of the target tag's own cell."""

    def signal(t: Tag) -> str:
        return f"{name_template.format(cell=t.cell)}.{field}"

    return signal


def _readings_plausible(dev: _Device, roles: Sequence[str], max_age_s: float) -> Interlock:
    """Interlock: the PLC's readings of ``roles`` are not BAD (implausible, non-finite) and
    fresh -- a setpoint is never ramped from readings a wrong word order produced."""
    names = [dev.tag_of[r] for r in roles if r in dev.tag_of]

    def check(now: float, _target: Tag) -> InterlockResult:
        w = dev.writer
        for n in names:
            smp = w.samples.get(n) if w is not None else None
            if smp is None:
                return InterlockResult("plausible_readings", False, f"{n}: no data")
            if smp.quality is Quality.BAD:
                return InterlockResult("plausible_readings", False, f"{n} {smp.reason}")
            if now - smp.t > max_age_s:
                return InterlockResult("plausible_readings", False, f"{n}: stale data (age {now - smp.t:.1f} s)")
        return InterlockResult("plausible_readings", True)

    return Interlock("plausible_readings", check, lambda t: t.role == "line_current_sp")


class _Room:
    """Per-room command bookkeeping (acks, pending requests, unwrapped totals)."""

    def __init__(self, device: _Device, cells: np.ndarray) -> None:
        self.dev = device
        self.cells = cells
        n = cells.size
        tm = device.tagmap
        assert tm.cells is not None
        self.prefix = [tm.cells.name_template.format(cell=int(c)) for c in tm.cells.numbers]
        self.pending_shots = np.zeros(n, dtype=np.int64)
        self.pending_mm = np.zeros(n)
        self.wait_feed_since = np.full(n, math.nan)
        self.wait_beam_since = np.full(n, math.nan)
        #: AlF3 requested, not yet sent [kg]; time the outstanding AlF3 command was sent
        self.pending_alf3 = np.zeros(n)
        self.wait_alf3_since = np.full(n, math.nan)
        #: the map gives the AlF3 command / the exchanger setpoint
        self.has_alf3 = all(r in device.field_of for r in _ALF3_ROLES)
        self.has_hx = "hx_duty_sp" in device.field_of
        #: the last out-of-bounds duty request refused per cell (not re-journalled while it lasts)
        self.hx_refused = np.full(n, math.nan)
        self.feed_raw = np.full(n, math.nan)
        self.beam_raw = np.full(n, math.nan)
        self.feed_total = np.zeros(n, dtype=np.int64)
        self.beam_total = np.zeros(n)
        #: the totals are not the PLC's own counters (a PLC restart seen: they continue past it;
        #: or cells first read after the room's first scan: they count from then)
        self.own_base = False
        self.scanned = False  # the room's first scan is done
        self.hb_prev: float | None = None
        self.link_was_down = False
        self.remote = False
        self.ae = np.zeros(n, dtype=bool)
        self.u_last = np.full(n, math.nan)  # last voltage read [V]
        self.u_since = np.full(n, math.nan)  # plant time it took that value [s]
        self.frozen = np.zeros(n, dtype=bool)


class BridgePlant:
    """The ``Plant`` over PLC protocols (see module docstring).

    Args:
        layout: plant topology (rooms and lines in order).
        rectifiers: one endpoint per line (``layout.line_names`` order).
        potrooms: one endpoint per room (``layout.room_names`` order).
        clock: plant clock (``twin.clock``); sample times and the safety layer use it.
        settings: timing and safety settings.
        on_alarm, on_record: safety-layer callbacks (journal).
        shadow: decide and record writes but send none.
    """

    def __init__(self, layout: PlantLayout, rectifiers: Sequence[DeviceEndpoint], potrooms: Sequence[DeviceEndpoint],
                 clock: Any, settings: BridgeSettings | None = None, *,
                 on_alarm: Callable[[Alarm], None] | None = None,
                 on_record: Callable[[WriteRecord], None] | None = None, shadow: bool = False) -> None:  # fmt: skip
        if len(rectifiers) != layout.n_lines:
            raise ValueError(
                f"{layout.n_lines} line(s) need {layout.n_lines} rectifier endpoint(s), got {len(rectifiers)}"
            )
        if len(potrooms) != layout.n_rooms:
            raise ValueError(f"{layout.n_rooms} room(s) need {layout.n_rooms} potroom endpoint(s), got {len(potrooms)}")
        self.layout = layout
        self.clock = clock
        self.settings = st = settings or BridgeSettings()
        self.shadow = shadow
        self._on_alarm_user = on_alarm
        self._on_record_user = on_record
        self.events: list[tuple[str, int, str]] = []
        self.alarms: list[Alarm] = []
        self.stats = {"scans": 0, "writes": 0, "commands": 0, "refused": 0, "ack_timeouts": 0, "restarts_seen": 0,
                      "scan_s": 0.0, "write_s": 0.0}  # fmt: skip
        self.rects: list[_Device] = []
        limits = dict(st.line_limits_ka or {})
        for li, (name, ep) in enumerate(zip(layout.line_names, rectifiers, strict=False)):
            tm = rectifier_tagmap(name, st.rectifier_map, limits_ka=limits.get(name))
            self.rects.append(_Device("rectifier", name, li, tm, ep, clock, st))
        self.rooms: list[_Room] = []
        for ri, (name, ep) in enumerate(zip(layout.room_names, potrooms, strict=False)):
            cells = layout.room_cells(ri)
            tm = potroom_tagmap(name, cells.size, st.potroom_map)
            dev = _Device("potroom", name, ri, tm, ep, clock, st)
            self.rooms.append(_Room(dev, cells))
        n, nl = layout.n_cells, layout.n_lines
        self._u = np.full(n, math.nan)
        self._line_i = np.zeros(nl)
        self._line_u = np.zeros(nl)
        self._line_sp = np.full(nl, math.nan)
        self._line_remote = np.zeros(nl, dtype=bool)
        self._line_tripped = np.zeros(nl, dtype=bool)
        self._tap = np.zeros(nl, dtype=np.int64)
        self._tapping = np.zeros(n, dtype=bool)
        self._ac = np.zeros(n, dtype=bool)
        self._cut = np.zeros(n, dtype=bool)
        self._opt = {key: np.full(n, math.nan) for _, key in _CELL_OPTIONAL}
        #: per ``Measurements`` array: quality, source time and reason of each value
        self.quality: dict[str, ValueQuality] = {k: ValueQuality.never(nl) for k in _LINE_SIGNALS}
        self.quality.update({k: ValueQuality.never(n) for k in _CELL_SIGNALS})
        self.started = False

    @property
    def capability_losses(self) -> dict[str, list[str]]:
        """Per device (``rectifier:Line1``): what its map does not give and what that costs."""
        return {d.device: list(d.capability_losses) for d in self.devices}

    def links(self) -> list[LinkStatus]:
        """Each PLC's link as of its last scan (a mirror's link-state node, /readyz)."""
        out = []
        for d in self.devices:
            sc = d.last
            out.append(LinkStatus(d.device, bool(sc is not None and sc.link_ok),
                                  "not scanned yet" if sc is None else sc.reason, sc.t if sc is not None else math.nan,
                                  d.last_good_t, list(d.capability_losses)))  # fmt: skip
        return out

    @classmethod
    def from_endpoints(cls, info: Mapping[str, Any], clock: Any, settings: BridgeSettings | None = None,
                       **kw: Any) -> BridgePlant:  # fmt: skip
        """From a rig's ``endpoints()`` dict (layout + one endpoint per PLC)."""
        layout = layout_from_dict(info["layout"])
        rects = [DeviceEndpoint.from_dict(d) for d in info["rectifiers"]]
        rooms = [DeviceEndpoint.from_dict(d) for d in info["potrooms"]]
        lim = info.get("rectifier_limits_ka")
        if lim and (settings is None or settings.line_limits_ka is None):
            settings = dataclasses.replace(settings or BridgeSettings(),
                                           line_limits_ka={k: (float(a), float(b)) for k, (a, b) in lim.items()})  # fmt: skip
        return cls(layout, rects, rooms, clock, settings, **kw)

    @property
    def devices(self) -> list[_Device]:
        return self.rects + [r.dev for r in self.rooms]

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect to every PLC and set up the safety layer."""
        st = self.settings
        sp_pol = WritePolicy(max_rate_per_s=st.setpoint_rate_ka_per_s, min=st.setpoint_min_ka, max=st.setpoint_max_ka,
                             max_interval_s=st.setpoint_max_interval_s)  # fmt: skip
        cmd_pol = WritePolicy(verify=st.verify_commands)
        refuse_pol = WritePolicy(verify=st.verify_commands, refuse_outside=True)
        tasks = []
        for d in self.rects:
            tasks.append(d.start(self._on_alarm(d), self._on_record, {d.tag("line_current_sp"): sp_pol}))
        for r in self.rooms:
            pol = {t.name: cmd_pol for t in r.dev.tagmap.writable()
                   if t.cell is not None and t.role in ("feed_shots", "feed_cmd", "beam_move", "beam_cmd")}  # fmt: skip
            # an AlF3 mass or an exchanger duty beyond the map's bounds is refused, never clamped
            if r.has_alf3:
                pol.update({t.name: refuse_pol for t in r.dev.tagmap.writable() if t.cell is not None
                            and t.role == "alf3_kg"})  # fmt: skip
                pol.update({t.name: cmd_pol for t in r.dev.tagmap.writable() if t.cell is not None
                            and t.role == "alf3_cmd"})  # fmt: skip
            if r.has_hx:
                pol.update({t.name: refuse_pol for t in r.dev.tagmap.writable() if t.cell is not None
                            and t.role == "hx_duty_sp"})  # fmt: skip
            tasks.append(r.dev.start(self._on_alarm(r.dev), self._on_record, pol))
        await asyncio.gather(*tasks)
        for d in self.rects:
            w = d.writer
            assert w is not None
            w.enabled = not self.shadow
            sp = (d.tag("line_current_sp"),)
            w.require("remote", d.tag("remote"), bool, describe="rectifier in local control", max_age_s=st.stale_after_s,
                      applies=sp)  # fmt: skip
            w.require("not_tripped", d.tag("tripped"), lambda v: not v, describe="rectifier tripped",
                      max_age_s=st.stale_after_s, applies=sp)  # fmt: skip
            w.add_interlock(_readings_plausible(d, ("line_current", "setpoint_active"), st.stale_after_s))
        for r in self.rooms:
            w = r.dev.writer
            assert w is not None
            w.enabled = not self.shadow
            cells = r.dev.tagmap.cells
            if cells is None:
                raise ValueError(f"{r.dev.tagmap.source}: a potroom tag map needs a [cells] table")
            tmpl = cells.name_template
            fo = r.dev.field_of
            w.require("room_remote", r.dev.tag("remote"), bool, describe="potroom in local control",
                      max_age_s=st.stale_after_s, applies=_is_cell_tag)  # fmt: skip
            w.require("in_circuit", _cell_signal(tmpl, fo["cut_out"]), lambda v: not v,
                      describe="cell cut out", max_age_s=st.stale_after_s, applies=_is_cell_tag)  # fmt: skip
            w.require("not_tapping", _cell_signal(tmpl, fo["tapping"]), lambda v: not v,
                      describe="tapping in progress", max_age_s=st.stale_after_s, applies=_is_beam_tag)  # fmt: skip
            w.require("no_anode_change", _cell_signal(tmpl, fo["anode_change"]), lambda v: not v,
                      describe="anode change in progress", max_age_s=st.stale_after_s, applies=_is_beam_tag)  # fmt: skip
        self.started = True
        losses = {k: v for k, v in self.capability_losses.items() if v}
        log.info("bridge_started", lines=len(self.rects), rooms=len(self.rooms), shadow=self.shadow,
                 capability_losses=losses or None)  # fmt: skip

    async def stop(self) -> None:
        """Close every connection (the PLCs fall back to local on their watchdogs)."""
        await asyncio.gather(*(d.stop() for d in self.devices), return_exceptions=True)
        self.started = False

    async def __aenter__(self) -> BridgePlant:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _on_alarm(self, dev: _Device) -> Callable[[Alarm], None]:
        def cb(a: Alarm) -> None:
            self.alarms.append(a)
            idx = dev.index
            self.events.append((f"alarm_{a.kind}" if a.active else f"alarm_{a.kind}_cleared", idx,
                                f"{dev.device}: {a.message}"))  # fmt: skip
            if self._on_alarm_user is not None:
                self._on_alarm_user(a)

        return cb

    def _on_record(self, rec: WriteRecord) -> None:
        if rec.rejected:
            self.stats["refused"] += 1
        else:
            self.stats["writes"] += 1
        if self._on_record_user is not None:
            self._on_record_user(rec)

    @property
    def acks_are_plc_counters(self) -> bool:
        """The cumulative feed/beam acknowledgement totals are the PLCs' own counters
        (each started at its PLC's reading at the bridge's first scan of the room, no PLC
        restart seen since): a bridge in a restarted daemon reports the same numbers for
        the same movement. False as soon as a room's first scan could not read every
        cell's counters (those count from their first reading) or a PLC restart was seen."""
        return not any(r.own_base for r in self.rooms)

    def drain_events(self) -> list[tuple[str, int, str]]:
        """Bridge events since the last call (kind, line/room/cell index, detail)."""
        ev, self.events = self.events, []
        return ev

    # ------------------------------------------------------------------ read

    async def read(self) -> Measurements:
        """One scan of every PLC (concurrently) as ``Measurements`` (``quality`` updated too)."""
        loop = asyncio.get_running_loop()
        w0 = loop.time()
        now = self.clock.now()
        wanted: list[dict[str, np.ndarray]] = [{} for _ in self.rects] + [
            {"feed_cmd_ack": np.flatnonzero(~np.isnan(r.wait_feed_since)),
             "beam_cmd_ack": np.flatnonzero(~np.isnan(r.wait_beam_since)),
             "alf3_cmd_ack": np.flatnonzero(~np.isnan(r.wait_alf3_since))} for r in self.rooms
        ]  # fmt: skip
        scans = await asyncio.gather(*(d.scan(w) for d, w in zip(self.devices, wanted, strict=False)))
        n_l = len(self.rects)
        lay = self.layout
        line_ok = np.zeros(lay.n_lines, dtype=bool)
        for d, sc in zip(self.rects, scans[:n_l], strict=False):
            line_ok[d.index] = self._rect_scan(d, sc, now)
            self._feed_writer(d, sc)
        cell_ok = np.zeros(lay.n_cells, dtype=bool)
        cell_remote = np.zeros(lay.n_cells, dtype=bool)
        for room, sc in zip(self.rooms, scans[n_l:], strict=False):
            cell_ok[room.cells] = self._room_scan(room, sc, now)
            cell_remote[room.cells] = room.remote
        self.stats["scans"] += 1
        self.stats["scan_s"] += loop.time() - w0
        feed = np.zeros(lay.n_cells, dtype=np.int64)
        beam = np.zeros(lay.n_cells)
        for room in self.rooms:
            feed[room.cells] = room.feed_total
            beam[room.cells] = room.beam_total
        return Measurements(
            t_s=now,
            line_current_ka=self._line_i.copy(),
            line_voltage_v=self._line_u.copy(),
            line_setpoint_ka=self._line_sp.copy(),
            rectifier_remote=self._line_remote.copy(),
            rectifier_tripped=self._line_tripped.copy(),
            tap_position=self._tap.copy(),
            cell_voltage_v=self._u.copy(),
            feeder_ack=feed,
            beam_ack_mm=beam,
            tapping=self._tapping.copy(),
            anode_change=self._ac.copy(),
            cut_out=self._cut.copy(),
            cell_ok=cell_ok,
            line_ok=line_ok,
            cell_remote=cell_remote,
            **{
                key: (self._opt[key].copy() if any(role in r.dev.field_of for r in self.rooms) else None)
                for role, key in _CELL_OPTIONAL
            },
        )

    def rectifier_reading(self, line: int, role: str) -> float | None:
        """The last scan's value of a plain read ``role`` of line ``line``'s rectifier PLC
        (e.g. ``grid_limit_mw``): None when its map does not give the role, the link is
        down, the scan is older than ``stale_after_s`` or the value is not GOOD (outside the
        tag's engineering range, implausible, unreadable)."""
        d = self.rects[line]
        sc = d.last
        if role not in d.tag_of or sc is None or not sc.link_ok:
            return None
        if self.clock.now() - sc.t > self.settings.stale_after_s or not sc.good(role):
            return None
        v = sc.value(role)
        return v if math.isfinite(v) else None

    def _rect_scan(self, d: _Device, sc: _Scan, now: float) -> bool:
        """One rectifier scan into the line arrays and their quality; returns ``line_ok``."""
        li = d.index
        fresh = now - sc.t <= self.settings.stale_after_s
        # the current, trip and mode must be GOOD; voltage and setpoint may be UNCERTAIN
        # (beyond their tag's engineering range: still a measurement)
        ok = (
            sc.link_ok
            and all(sc.good(n) for n in ("line_current", "tripped", "remote"))
            and all(sc.usable(n) for n in ("line_voltage", "setpoint_active"))
            and fresh
        )
        for key, role, target, need_good in _LINE_MAP:
            smp = sc.scalars.get(role)
            usable = sc.good(role) if need_good else sc.usable(role)
            if smp is not None and usable and sc.link_ok and fresh:
                v = smp.value
                target_arr = getattr(self, target)
                target_arr[li] = int(float(v)) if target == "_tap" else float(v)  # type: ignore[arg-type]
            self._mark(key, li, smp, sc, fresh, now, usable)
        if not ok:
            self._line_remote[li] = False
        return ok

    def _mark(self, key: str, i: int, smp: Sample | None, sc: _Scan, fresh: bool, now: float, usable: bool) -> None:
        """Quality of value ``i`` of ``quality[key]`` after a scan: the sample's own, or for a
        value held from an older scan UNCERTAIN "last usable value" until stale, then BAD."""
        q = self.quality[key]
        if smp is not None and usable and sc.link_ok and fresh:
            q.set(i, smp.quality, smp.t, smp.reason)
            return
        why = (
            ("link down: " + sc.reason if sc.reason else "link down")
            if not sc.link_ok
            else ("stale" if not fresh else (smp.reason or "bad quality") if smp is not None else "not in the tag map")
        )
        held = float(q.t_s[i])
        if math.isfinite(held) and now - held <= self.settings.stale_after_s:
            q.set(i, Quality.UNCERTAIN, held, f"last usable value ({why})")
        else:
            q.set(i, Quality.BAD, held, why)

    def _mark_cells(self, key: str, c: np.ndarray, good: np.ndarray, role: str, sc: _Scan, fresh: bool, now: float,
                    held: bool) -> None:  # fmt: skip
        """``_mark`` for the cells ``c`` of one room (``held``: the value is kept when not good;
        ``role``: the per-cell role whose scan reasons explain a bad value)."""
        q = self.quality[key]
        ok = good & sc.link_ok & fresh
        q.quality[c[ok]] = Quality.GOOD
        q.t_s[c[ok]] = sc.t
        q.reason[c[ok]] = ""
        nok = c[~ok]
        if nok.size == 0:
            return
        if not sc.link_ok:
            why: str | np.ndarray = "link down: " + sc.reason if sc.reason else "link down"
        elif not fresh:
            why = "stale"
        else:
            scan_reasons = sc.field_reason.get(role)
            why = scan_reasons[~ok] if scan_reasons is not None else "bad quality"
            why = np.where(np.asarray(why, dtype=object) == "", "bad quality", why)
        t_held = q.t_s[nok]
        if held:
            recent = np.isfinite(t_held) & (now - np.nan_to_num(t_held, nan=-np.inf) <= self.settings.stale_after_s)
        else:
            recent = np.zeros(nok.size, dtype=bool)
        q.quality[nok] = np.where(recent, Quality.UNCERTAIN, Quality.BAD)
        whys = np.broadcast_to(np.asarray(why, dtype=object), nok.shape)
        q.reason[nok] = [f"last usable value ({w})" if r else w for w, r in zip(whys, recent, strict=True)]

    def _feed_writer(self, d: _Device, sc: _Scan, cell_samples: dict[str, Sample] | None = None) -> None:
        """Interlock and heartbeat signals into the device's safety layer (by tag name)."""
        if d.writer is None:
            return
        samples = dict(sc.tag_samples)
        if cell_samples:
            samples.update(cell_samples)
        d.writer.update(samples)

    def _room_scan(self, room: _Room, sc: _Scan, now: float) -> np.ndarray:
        """Unpack one potroom scan into the plant arrays; sets ``room.remote`` and returns
        the cells' data quality (``cell_ok``: GOOD tags, link up, fresh; remote or not)."""
        c = room.cells
        f = sc.fields
        dev = room.dev
        fresh = now - sc.t <= self.settings.stale_after_s
        hb = sc.value("heartbeat_in")
        restarted = False
        if sc.link_ok and math.isfinite(hb):
            if room.hb_prev is not None and ((hb - room.hb_prev) % 65536) > 32768:
                restarted = True
            room.hb_prev = hb
        if restarted:
            self.stats["restarts_seen"] += 1
            self.events.append(("plc_restart_seen", dev.index, f"{dev.device}: heartbeat jumped back"))
            room.pending_shots[:] = 0
            room.pending_mm[:] = 0.0
            room.wait_feed_since[:] = math.nan
            room.wait_beam_since[:] = math.nan
            room.pending_alf3[:] = 0.0
            room.wait_alf3_since[:] = math.nan
        room.remote = bool(sc.link_ok and sc.good("remote") and sc.value("remote") and fresh)
        if not room.remote:
            # local control or no link: nothing is in flight, nothing is replayed later
            room.pending_shots[:] = 0
            room.pending_mm[:] = 0.0
            room.pending_alf3[:] = 0.0
        for role, key in _CELL_OPTIONAL:
            if role not in f:
                continue
            v, g = f[role]
            fq = sc.field_quality.get(role)
            # GOOD, or UNCERTAIN (beyond the tag's engineering range): still a measurement
            usable = (fq != Quality.BAD) if fq is not None else g
            usable = usable & np.isfinite(v) & sc.link_ok & fresh
            self._opt[key][c] = np.where(usable, v, math.nan)
            self._mark_cells(key, c, g, role, sc, fresh, now, held=False)
            unsure = c[usable & ~g]
            if unsure.size:
                self.quality[key].quality[unsure] = Quality.UNCERTAIN
        u, u_ok = f["voltage"]
        self._u[c] = np.where(u_ok, u, math.nan)
        frozen = self._frozen_voltages(room, u, u_ok, sc.t)
        self._mark_cells("cell_voltage_v", c, u_ok & ~frozen, "voltage", sc, fresh, now, held=False)
        if frozen.any():
            self.quality["cell_voltage_v"].reason[c[frozen & u_ok]] = "frozen: unchanged while carrying current"
        status_ok = np.ones(c.size, dtype=bool)
        for role, target, key in (("tapping", self._tapping, "tapping"), ("anode_change", self._ac, "anode_change"),
                                  ("cut_out", self._cut, "cut_out")):  # fmt: skip
            v, g = f[role]
            target[c] = np.where(g, v > 0.5, target[c])
            status_ok &= g
            self._mark_cells(key, c, g, role, sc, fresh, now, held=True)
        if "ae" in f:
            ae_v, ae_g = f["ae"]
            room.ae = (ae_v > 0.5) & ae_g
        # unwrapped cumulative acknowledgements, starting at the PLC's own counters when read
        # at the room's first scan; a cell first read later counts from then (its consumers saw
        # 0 until then: no jump to the counter's value), and the room's totals are then not the
        # PLC's counters
        fa, fa_ok = f["feed_ack"]
        ba, ba_ok = f["beam_ack"]
        first_scan = not room.scanned
        room.scanned = True
        if first_scan and not (fa_ok.all() and ba_ok.all()) and not room.own_base:
            room.own_base = True
            log.info("bridge.acks_counted_from_first_reading", device=dev.device,
                     why="acknowledgement tags not readable at the first scan")  # fmt: skip
        first = np.isnan(room.feed_raw)
        d_feed = np.where(~fa_ok, 0, np.mod(np.nan_to_num(fa) - np.nan_to_num(room.feed_raw), 65536))
        d_feed = np.where(d_feed > 32768, 0, d_feed)  # more than half the range: the counter went back
        d_feed = np.where(first & fa_ok, np.nan_to_num(fa) if first_scan else 0, d_feed)
        if restarted:
            d_feed = np.where(fa_ok, np.nan_to_num(fa), 0)
        room.feed_total += d_feed.astype(np.int64)
        room.feed_raw = np.where(fa_ok, fa, room.feed_raw)
        d_beam = np.where(~ba_ok, 0.0, np.nan_to_num(ba) - np.nan_to_num(room.beam_raw))
        if not first_scan:
            d_beam = np.where(np.isnan(room.beam_raw), 0.0, d_beam)
        if restarted:
            d_beam = np.where(ba_ok, np.nan_to_num(ba), 0.0)
        room.beam_total += d_beam
        if restarted and not room.own_base:
            room.own_base = True  # from now on the totals continue across the restart: no longer the PLC's counters
            log.info("bridge.acks_continue_across_plc_restart", device=dev.device)
        room.beam_raw = np.where(ba_ok, ba, room.beam_raw)
        self._mark_cells("feeder_ack", c, fa_ok, "feed_ack", sc, fresh, now, held=True)
        self._mark_cells("beam_ack_mm", c, ba_ok, "beam_ack", sc, fresh, now, held=True)
        ok = u_ok & ~frozen & status_ok & fa_ok & ba_ok & sc.link_ok & fresh
        # per-cell interlock signals for the safety layer
        cell_samples: dict[str, Sample] = {}
        t = sc.t
        for role in ("cut_out", "tapping", "anode_change"):
            v, g = f[role]
            fld = dev.field_of[role]
            for i, p in enumerate(room.prefix):
                cell_samples[f"{p}.{fld}"] = Sample(bool(v[i] > 0.5), Quality.GOOD if g[i] else Quality.BAD, t,
                                                    "" if g[i] else "bad quality")  # fmt: skip
        self._feed_writer(dev, sc, cell_samples)
        return ok

    def _frozen_voltages(self, room: _Room, u: np.ndarray, u_ok: np.ndarray, t: float) -> np.ndarray:
        """Cells of ``room`` whose voltage [V] has stood still for ``frozen_after_s`` at scan
        time ``t`` [plant s] while carrying current; events when that starts and ends."""
        limit = self.settings.frozen_after_s
        if limit is None:
            return np.zeros(u.size, dtype=bool)
        moved = u_ok & (u != room.u_last)
        room.u_since[moved | ~u_ok] = t
        room.u_last = np.where(u_ok, u, math.nan)
        frozen = u_ok & (u > 2.0) & (t - room.u_since >= limit)
        for i in np.flatnonzero(frozen != room.frozen):
            cell = int(room.cells[i])
            if frozen[i]:
                self.events.append(("sensor_frozen", cell, f"{room.prefix[i]}.voltage stuck at {u[i]:.3f} V for "
                                                            f"{t - room.u_since[i]:.0f} s: not acted on"))  # fmt: skip
            else:
                self.events.append(("sensor_recovered", cell, f"{room.prefix[i]}.voltage moves again"))
        room.frozen = frozen
        return frozen

    # ------------------------------------------------------------------ write

    async def write(self, commands: Commands) -> None:
        """Carry out one cycle's commands through the safety layer (see module docstring)."""
        loop = asyncio.get_running_loop()
        w0 = loop.time()
        jobs = [self._write_rect(d, commands) for d in self.rects]
        jobs += [self._write_room(r, commands) for r in self.rooms]
        await asyncio.gather(*jobs)
        self.stats["write_s"] += loop.time() - w0

    async def heartbeat(self) -> None:
        """Tick every PLC's heartbeat once (``write`` does this every cycle)."""
        await asyncio.gather(*(d.writer.heartbeat_tick() for d in self.devices if d.writer is not None))

    async def _write_rect(self, d: _Device, cmds: Commands) -> None:
        w = d.writer
        assert w is not None
        await w.heartbeat_tick()
        sp = float(cmds.line_setpoint_ka[d.index]) if cmds.line_setpoint_ka.size > d.index else math.nan
        if not math.isfinite(sp):
            return
        await w.write(d.tag("line_current_sp"), sp, deadband=self.settings.setpoint_deadband_ka)

    async def _write_room(self, room: _Room, cmds: Commands) -> None:
        w = room.dev.writer
        assert w is not None
        await w.heartbeat_tick()
        c = room.cells
        now = self.clock.now()
        shots = np.asarray(cmds.feed_shots, dtype=np.int64)[c]
        moves = np.asarray(cmds.beam_move_mm, dtype=float)[c]
        if room.remote:
            room.pending_shots += np.maximum(shots, 0)
            room.pending_mm += np.where(np.abs(moves) >= 0.05, moves, 0.0)
        self._check_acks(room, now)
        todo = np.flatnonzero((room.pending_shots > 0) | (np.abs(room.pending_mm) >= 0.05))
        if todo.size and room.remote:
            await self._write_feed_beam(room, todo, now)
        # then the slow ones: AlF3 additions and exchanger duties (an AE's quench goes first)
        if room.remote and room.has_alf3:
            await self._write_alf3(room, np.asarray(cmds.alf3_kg, dtype=float)[c], now)
        if room.remote and room.has_hx and cmds.hx_duty_kw is not None:
            await self._write_hx(room, np.asarray(cmds.hx_duty_kw, dtype=float)[c])

    async def _write_feed_beam(self, room: _Room, todo: np.ndarray, now: float) -> None:
        """Feed and beam commands of the cells ``todo`` (indices in the room) through the handshake."""
        w = room.dev.writer
        assert w is not None
        # cells in AE first, then the biggest requests
        order = todo[np.lexsort((-room.pending_shots[todo], ~room.ae[todo]))]
        dev = room.dev
        sh_max = int(dev.tagmap[dev.cell_tag(room.prefix[0], "feed_shots")].hi)
        mm_max = float(dev.tagmap[dev.cell_tag(room.prefix[0], "beam_move")].hi)
        for i in order.tolist():
            p = room.prefix[i]
            if room.pending_shots[i] > 0 and math.isnan(room.wait_feed_since[i]):
                n = int(min(room.pending_shots[i], sh_max))
                recs = await w.write_command({dev.cell_tag(p, "feed_shots"): n}, dev.cell_tag(p, "feed_cmd"))
                if recs and not recs[-1].rejected:
                    room.pending_shots[i] -= n
                    room.wait_feed_since[i] = now
                    self.stats["commands"] += 1
                else:
                    room.pending_shots[i] = 0  # refused: not queued for later
            if abs(room.pending_mm[i]) >= 0.05 and math.isnan(room.wait_beam_since[i]):
                mm = float(np.clip(room.pending_mm[i], -mm_max, mm_max))
                recs = await w.write_command({dev.cell_tag(p, "beam_move"): mm}, dev.cell_tag(p, "beam_cmd"))
                if recs and not recs[-1].rejected:
                    sent = float(recs[0].written) if recs[0].written is not None else mm
                    room.pending_mm[i] -= sent
                    if abs(room.pending_mm[i]) < 0.05:
                        room.pending_mm[i] = 0.0
                    room.wait_beam_since[i] = now
                    self.stats["commands"] += 1
                else:
                    room.pending_mm[i] = 0.0

    def _refused_out_of_bounds(self, room: _Room, i: int, rec: WriteRecord) -> None:
        """A command beyond the map's bounds was refused: logged and an event for the journal."""
        cell = int(room.cells[i])
        self.events.append(("command_out_of_bounds", cell, f"{room.dev.device} {rec.reason}"))
        log.warning("bridge.command_out_of_bounds", device=room.dev.device, tag=rec.tag, requested=rec.requested,
                    reason=rec.reason)  # fmt: skip

    async def _write_hx(self, room: _Room, duty_kw: np.ndarray) -> None:
        """Exchanger duty setpoints [kW] of the room's cells (NaN: leave) through the safety layer."""
        w = room.dev.writer
        assert w is not None
        cells = np.flatnonzero(np.isfinite(duty_kw) & ~self._cut[room.cells])
        for i in cells.tolist():
            kw = float(duty_kw[i])
            if kw == room.hx_refused[i]:
                continue  # refused already: not re-journalled while the request lasts
            rec = await w.write(room.dev.cell_tag(room.prefix[i], "hx_duty_sp"), kw,
                                deadband=self.settings.hx_duty_deadband_kw)  # fmt: skip
            if rec.rejected and "outside the bounds" in rec.reason:
                room.hx_refused[i] = kw
                self._refused_out_of_bounds(room, i, rec)
            else:
                room.hx_refused[i] = math.nan

    async def _write_alf3(self, room: _Room, kg: np.ndarray, now: float) -> None:
        """AlF3 additions [kg] of the room's cells: the handshake, one outstanding per cell."""
        w = room.dev.writer
        dev = room.dev
        assert w is not None
        hi = float(dev.tagmap[dev.cell_tag(room.prefix[0], "alf3_kg")].hi)
        asked = np.flatnonzero(np.nan_to_num(kg, nan=0.0) > 0.0)
        for i in asked.tolist():
            x = float(kg[i])
            if x > hi:
                # beyond what one command may carry: refused by the safety layer (never split or clamped)
                recs = await w.write_command({dev.cell_tag(room.prefix[i], "alf3_kg"): x},
                                             dev.cell_tag(room.prefix[i], "alf3_cmd"))  # fmt: skip
                if recs and recs[0].rejected:
                    self._refused_out_of_bounds(room, i, recs[0])
                continue
            room.pending_alf3[i] += x
        todo = np.flatnonzero((room.pending_alf3 >= 0.05) & np.isnan(room.wait_alf3_since))
        for i in todo.tolist():
            p = room.prefix[i]
            x = float(min(room.pending_alf3[i], hi))
            recs = await w.write_command({dev.cell_tag(p, "alf3_kg"): x}, dev.cell_tag(p, "alf3_cmd"))
            if recs and not recs[-1].rejected:
                sent = float(recs[0].written) if recs[0].written is not None else x
                room.pending_alf3[i] = max(room.pending_alf3[i] - sent, 0.0)
                if room.pending_alf3[i] < 0.05:
                    room.pending_alf3[i] = 0.0
                room.wait_alf3_since[i] = now
                self.stats["commands"] += 1
            else:
                room.pending_alf3[i] = 0.0  # refused: not queued for later

    def _check_acks(self, room: _Room, now: float) -> None:
        """Clear the wait of cells whose last command the PLC acknowledged; time out the rest."""
        sc = room.dev.last
        w = room.dev.writer
        if sc is None or w is None:
            return
        for fld, wait, cmd_field in (("feed_cmd_ack", room.wait_feed_since, "feed_cmd"),
                                     ("beam_cmd_ack", room.wait_beam_since, "beam_cmd"),
                                     ("alf3_cmd_ack", room.wait_alf3_since, "alf3_cmd")):  # fmt: skip
            waiting = np.flatnonzero(~np.isnan(wait))
            if waiting.size == 0 or fld not in sc.fields:
                continue
            ack, good = sc.fields[fld]
            for i in waiting.tolist():
                sent = w.last_value(room.dev.cell_tag(room.prefix[i], cmd_field))
                if sent is not None and good[i] and int(ack[i]) == int(sent):
                    wait[i] = math.nan
                elif now - wait[i] > self.settings.ack_timeout_s or sent is None:
                    wait[i] = math.nan
                    if cmd_field == "feed_cmd":
                        room.pending_shots[i] = 0
                    elif cmd_field == "alf3_cmd":
                        room.pending_alf3[i] = 0.0
                    else:
                        room.pending_mm[i] = 0.0
                    self.stats["ack_timeouts"] += 1
                    cell = int(room.cells[i])
                    self.events.append(("command_not_acknowledged", cell, f"{room.dev.device}"
                                        f" {room.dev.cell_tag(room.prefix[i], cmd_field)} not acknowledged"))  # fmt: skip
