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
  while a tag is bad its last good total is held.

``write(commands)`` passes everything through ``plc_bridge.safe_write.SafeWriter``
(one per PLC; nothing is written any other way):

* the two-way heartbeat ticks once per cycle (the PLC drops to local control when it
  stops; a stale PLC counter refuses writes);
* line-current setpoints: clamped, ramp-limited (``setpoint_rate_ka_per_s``), interlocked
  on *remote* and *not tripped*, read back;
* feeder shots / beam moves use the command handshake (``write_command``: fields, then
  the counter). Cells in AE go first. A cell's next command waits for the PLC's
  acknowledgement of the previous one (requests meanwhile are added up, and dropped if
  the ack does not come within ``ack_timeout_s`` or the room leaves remote: queued
  commands are never replayed after a comms loss). Interlocks: room remote, cell in
  circuit, no beam move during tapping/anode change;
* on comms loss the writer stops writing and raises an alarm; the PLC falls back to
  local on its watchdog; when the link returns the PLC state is re-read (resync).

``Commands.alf3_kg`` is not sent: the potroom tag map has no AlF3 command (the PLC's own
AlF3 schedule keeps running).

Bridge events (ack timeouts, PLC restarts seen, comms alarms) are collected for the
journal: ``drain_events()``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import structlog

from plc_bridge.codec import DataType
from plc_bridge.quality import Quality, Sample, WriteResult
from plc_bridge.safe_write import Alarm, HeartbeatConfig, SafeWriter, WritePolicy, WriteRecord
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
    "rectifier_tagmap",
]

log = structlog.get_logger(__name__)

RECTIFIER_MAP = CONFIG_DIR / "tagmaps" / "rectifier.toml"
POTROOM_MAP = CONFIG_DIR / "tagmaps" / "potroom.toml"

Protocol_ = Literal["modbus", "opcua"]


# ====================================================================== tag maps


def rectifier_tagmap(instance: str, path: str | Path | None = None) -> TagMap:
    """The rectifier tag map for the PLC of line ``instance`` (e.g. ``"Line1"``)."""
    return load_tagmap(path or RECTIFIER_MAP, instance=instance)


def potroom_tagmap(instance: str, n_cells: int, path: str | Path | None = None) -> TagMap:
    """The potroom tag map for room ``instance`` with its cell block resized to ``n_cells``."""
    p = Path(path or POTROOM_MAP)
    data = load_toml(p)  # missing file, bad TOML or a non-finite number: the one ConfigError
    cells = data.get("cells")
    if not isinstance(cells, dict):
        raise ConfigError(str(p), [("cells", "expected a [cells] table (the potroom's cell block), got none")])
    cells["count"] = int(n_cells)
    return parse_tagmap(data, source=str(p), instance=instance)


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
            server's last namespace).
    """

    protocol: Protocol_
    host: str
    port: int
    path: str = "/plc/"
    namespace: str | None = None

    @property
    def url(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}{self.path}"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DeviceEndpoint:
        return cls(d["protocol"], d.get("host", "127.0.0.1"), int(d["port"]), d.get("path", "/plc/"),
                   d.get("namespace"))  # fmt: skip


@dataclass(frozen=True)
class BridgeSettings:
    """Timing and safety settings of the bridge (times on the plant clock, seconds).

    Attributes:
        stale_after_s: data older than this is not acted on (interlocks refuse).
        plc_heartbeat_timeout_s: PLC counter unchanged this long => writes refused.
        setpoint_rate_ka_per_s: ramp limit of the line-current setpoint in the safety layer.
        setpoint_max_interval_s: elapsed time a ramp step may be credited with at most.
        setpoint_min_ka, setpoint_max_ka: tighter setpoint bounds than the tag map (None: map).
        ack_timeout_s: a command not acknowledged within this is given up (alarm event).
        verify_commands: read back command fields (the ack counter verifies them anyway).
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
    ack_timeout_s: float = 30.0
    verify_commands: bool = False
    frozen_after_s: float | None = 120.0
    modbus_timeout_s: float = 0.5
    opcua_timeout_s: float = 2.0
    rectifier_map: str | None = None
    potroom_map: str | None = None


# ====================================================================== OPC UA as a TagIO


class OpcUaTagIO:
    """``plc_bridge.safe_write.TagIO`` over an ``OpcUaClient`` (tag names = node names).

    Reads give ``Sample``s (engineering range checked against the tag map: UNCERTAIN
    outside); writes give ``WriteResult`` with Modbus-like codes: link failures -3
    ("connection lost") / -2 ("not connected"), server refusals 3 (BadOutOfRange,
    BadTypeMismatch) or 4 (any other Bad status), unresolved nodes 2.
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
            tag = self.tagmap[n]
            if tag.type is not DataType.BOOL and v is not None:
                fv = float(v)
                if not math.isfinite(fv):
                    out[n] = Sample.bad("non-finite", s.t)
                    continue
                if (tag.min is not None and fv < tag.min) or (tag.max is not None and fv > tag.max):
                    out[n] = Sample.uncertain(v, f"engineering range exceeded: {fv:g}", s.t)
                    continue
            out[n] = Sample(v, s.quality, s.t, s.reason)
        return out

    async def write(self, name: str, value: float | int | bool) -> WriteResult:
        from plc_bridge.opcua_client import OpcUaWriteError

        try:
            await self.client.write(name, value)
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
    """One device's scan: scalar samples and per-cell arrays with GOOD masks."""

    t: float
    link_ok: bool
    scalars: dict[str, Sample] = field(default_factory=dict)
    fields: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

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
    """One PLC: a reader for scans, a TagIO + SafeWriter for writes."""

    def __init__(self, kind: str, name: str, index: int, tagmap: TagMap, endpoint: DeviceEndpoint,
                 clock: Any, settings: BridgeSettings, read_scalars: Sequence[str],
                 read_fields: Sequence[str]) -> None:  # fmt: skip
        self.kind, self.name, self.index = kind, name, index
        self.tagmap = tagmap
        self.endpoint = endpoint
        self.clock = clock
        self.settings = settings
        self.read_scalars = [n for n in read_scalars if n in tagmap]
        self.read_fields = list(read_fields)
        self.bit_fields: dict[str, tuple[str, int]] = {}
        self.scan_client: Any = None
        self.io: Any = None
        self._write_client: Any = None
        self._opcua: Any = None
        self.writer: SafeWriter | None = None
        self.last: _Scan | None = None
        self._scan_names: list[str] = []
        self._field_idx: dict[str, np.ndarray] = {}
        self._plan_reads()

    @property
    def device(self) -> str:
        return f"{self.kind}:{self.name}"

    def _plan_reads(self) -> None:
        tm = self.tagmap
        names = list(self.read_scalars)
        self.optional: dict[str, tuple[str, ...]] = {}
        if tm.cells is not None:
            words = {}
            for f in tm.cells.fields:
                t0 = tm[tm.cell_tags(f)[0]]
                if t0.has_modbus and t0.bit is None and t0.type is not DataType.BOOL:
                    words[(t0.table, t0.address)] = f
            read = []
            for f in self.read_fields:
                t0 = tm[tm.cell_tags(f)[0]]
                src = words.get((t0.table, t0.address)) if t0.bit is not None else None
                if self.endpoint.protocol == "opcua" and src is not None and t0.bit is not None:
                    # read the status word once and take the bits from it
                    self.bit_fields[f] = (src, int(t0.bit))
                    if src not in read:
                        read.append(src)
                elif self.endpoint.protocol == "opcua" and f in _ON_DEMAND:
                    # command acks: read only for cells awaiting one (OPC UA reads cost per node)
                    self.optional[f] = tm.cell_tags(f)
                elif f not in read:
                    read.append(f)
            for f in read:
                start = len(names)
                names += list(tm.cell_tags(f))
                self._field_idx[f] = np.arange(start, len(names))
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
            self._opcua = OpcUaClient(ep.url, refs.values(), namespace=ep.namespace, timeout_s=st.opcua_timeout_s,
                                      retry_delay_s=0.25, clock=self.clock, name=self.device)  # fmt: skip
            await self._opcua.start(wait_s=5.0)
            self.io = OpcUaTagIO(self._opcua, self.tagmap)
        else:  # pragma: no cover - validated by DeviceEndpoint users
            raise ValueError(f"{self.device}: unknown protocol {ep.protocol!r}")
        hb = HeartbeatConfig("heartbeat_out", "heartbeat_in", period_s=1.0, in_timeout_s=st.plc_heartbeat_timeout_s)
        self.writer = SafeWriter(self.io, self.tagmap, self.clock, policies=policies, heartbeat=hb,
                                 on_alarm=on_alarm, on_record=on_record, verify_retries=1)  # fmt: skip

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
            for f, all_names in self.optional.items():
                idx = np.asarray((wanted or {}).get(f, ()), dtype=np.int64)
                extra.append((f, idx, tuple(all_names[i] for i in idx.tolist())))
        if self.endpoint.protocol == "modbus":
            sc = await self.scan_client.scan()
            t = sc.t
            values, good = sc.values, sc.quality == Quality.GOOD
            link = not bool(np.isin(sc.codes, (-1, -2, -3, -4)).all())
            scalars = {n: sc.sample(n) for n in self.read_scalars}
        else:
            req = names + [n for _, _, ns in extra for n in ns]
            got = await self.io.read(req)
            t = self.clock.now()
            values = np.array([_as_float(got[n].value) for n in req], dtype=float)
            good = np.array([got[n].quality is Quality.GOOD for n in req], dtype=bool)
            link = bool(self._opcua.connected) and bool(good.any())
            scalars = {n: got[n] for n in self.read_scalars}
        out = _Scan(t, link, scalars)
        for f, idx in self._field_idx.items():
            out.fields[f] = (values[idx], good[idx])
        pos = len(names)
        n_cells = self.tagmap.cells.count if self.tagmap.cells is not None else 0
        for f, idx, ns in extra:
            v = np.full(n_cells, math.nan)
            g = np.zeros(n_cells, dtype=bool)
            v[idx] = values[pos : pos + len(ns)]
            g[idx] = good[pos : pos + len(ns)]
            pos += len(ns)
            out.fields[f] = (v, g)
        for f, (src, bit) in self.bit_fields.items():
            w, g = out.fields[src]
            out.fields[f] = (((np.nan_to_num(w).astype(np.int64) >> bit) & 1).astype(float), g)
        self.last = out
        return out


_ON_DEMAND = frozenset({"feed_cmd_ack", "beam_cmd_ack"})


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
    return t.field in ("beam_move", "beam_cmd")


def _cell_signal(name_template: str, field: str) -> Callable[[Tag], str]:
    """Interlock source: tag ``field`` of the target tag's own cell."""

    def signal(t: Tag) -> str:
        return f"{name_template.format(cell=t.cell)}.{field}"

    return signal


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
        self.feed_raw = np.full(n, math.nan)
        self.beam_raw = np.full(n, math.nan)
        self.feed_total = np.zeros(n, dtype=np.int64)
        self.beam_total = np.zeros(n)
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
        for li, (name, ep) in enumerate(zip(layout.line_names, rectifiers, strict=False)):
            tm = rectifier_tagmap(name, st.rectifier_map)
            scal = ["line_current", "line_voltage", "setpoint_active", "tap_position", "tripped", "remote",
                    "heartbeat_in"]  # fmt: skip
            self.rects.append(_Device("rectifier", name, li, tm, ep, clock, st, scal, []))
        self.rooms: list[_Room] = []
        for ri, (name, ep) in enumerate(zip(layout.room_names, potrooms, strict=False)):
            cells = layout.room_cells(ri)
            tm = potroom_tagmap(name, cells.size, st.potroom_map)
            fields = ["voltage", "ae", "tapping", "anode_change", "cut_out", "feed_ack", "beam_ack",
                      "feed_cmd_ack", "beam_cmd_ack"]  # fmt: skip
            dev = _Device("potroom", name, ri, tm, ep, clock, st, ["heartbeat_in", "remote"], fields)
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
        self.started = False

    @classmethod
    def from_endpoints(cls, info: Mapping[str, Any], clock: Any, settings: BridgeSettings | None = None,
                       **kw: Any) -> BridgePlant:  # fmt: skip
        """From a rig's ``endpoints()`` dict (layout + one endpoint per PLC)."""
        layout = layout_from_dict(info["layout"])
        rects = [DeviceEndpoint.from_dict(d) for d in info["rectifiers"]]
        rooms = [DeviceEndpoint.from_dict(d) for d in info["potrooms"]]
        return cls(layout, rects, rooms, clock, settings, **kw)

    @property
    def devices(self) -> list[_Device]:
        return self.rects + [r.dev for r in self.rooms]

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect to every PLC and set up the safety layer."""
        st = self.settings
        rect_pol = {"line_current_sp": WritePolicy(max_rate_per_s=st.setpoint_rate_ka_per_s, min=st.setpoint_min_ka,
                                                   max=st.setpoint_max_ka, max_interval_s=st.setpoint_max_interval_s)}  # fmt: skip
        cmd_pol = {
            f: WritePolicy(verify=st.verify_commands) for f in ("feed_shots", "feed_cmd", "beam_move", "beam_cmd")
        }
        tasks = []
        for d in self.rects:
            tasks.append(d.start(self._on_alarm(d), self._on_record, rect_pol))
        for r in self.rooms:
            pol = {
                t.name: cmd_pol[t.field] for t in r.dev.tagmap.writable() if t.field is not None and t.field in cmd_pol
            }
            tasks.append(r.dev.start(self._on_alarm(r.dev), self._on_record, pol))
        await asyncio.gather(*tasks)
        for d in self.rects:
            w = d.writer
            assert w is not None
            w.enabled = not self.shadow
            sp = ("line_current_sp", "ramp_rate_sp", "voltage_limit_sp")
            w.require("remote", "remote", bool, describe="rectifier in local control", max_age_s=st.stale_after_s,
                      applies=sp)  # fmt: skip
            w.require("not_tripped", "tripped", lambda v: not v, describe="rectifier tripped",
                      max_age_s=st.stale_after_s, applies=sp)  # fmt: skip
        for r in self.rooms:
            w = r.dev.writer
            assert w is not None
            w.enabled = not self.shadow
            cells = r.dev.tagmap.cells
            if cells is None:
                raise ValueError(f"{r.dev.tagmap.source}: a potroom tag map needs a [cells] table")
            tmpl = cells.name_template
            w.require("room_remote", "remote", bool, describe="potroom in local control",
                      max_age_s=st.stale_after_s, applies=_is_cell_tag)  # fmt: skip
            w.require("in_circuit", _cell_signal(tmpl, "cut_out"), lambda v: not v,
                      describe="cell cut out", max_age_s=st.stale_after_s, applies=_is_cell_tag)  # fmt: skip
            w.require("not_tapping", _cell_signal(tmpl, "tapping"), lambda v: not v,
                      describe="tapping in progress", max_age_s=st.stale_after_s, applies=_is_beam_tag)  # fmt: skip
            w.require("no_anode_change", _cell_signal(tmpl, "anode_change"), lambda v: not v,
                      describe="anode change in progress", max_age_s=st.stale_after_s, applies=_is_beam_tag)  # fmt: skip
        self.started = True
        log.info("bridge_started", lines=len(self.rects), rooms=len(self.rooms), shadow=self.shadow)

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

    def drain_events(self) -> list[tuple[str, int, str]]:
        """Bridge events since the last call (kind, line/room/cell index, detail)."""
        ev, self.events = self.events, []
        return ev

    # ------------------------------------------------------------------ read

    async def read(self) -> Measurements:
        """One scan of every PLC (concurrently) as ``Measurements``."""
        loop = asyncio.get_running_loop()
        w0 = loop.time()
        now = self.clock.now()
        wanted: list[dict[str, np.ndarray]] = [{} for _ in self.rects] + [
            {"feed_cmd_ack": np.flatnonzero(~np.isnan(r.wait_feed_since)),
             "beam_cmd_ack": np.flatnonzero(~np.isnan(r.wait_beam_since))} for r in self.rooms
        ]  # fmt: skip
        scans = await asyncio.gather(*(d.scan(w) for d, w in zip(self.devices, wanted, strict=False)))
        n_l = len(self.rects)
        lay = self.layout
        line_ok = np.zeros(lay.n_lines, dtype=bool)
        for d, sc in zip(self.rects, scans[:n_l], strict=False):
            li = d.index
            # the current, trip and mode must be GOOD; voltage and setpoint may be UNCERTAIN
            # (beyond their tag's engineering range: still a measurement)
            names = ("line_current", "tripped", "remote")
            ok = (
                sc.link_ok
                and all(sc.good(n) for n in names)
                and all(sc.usable(n) for n in ("line_voltage", "setpoint_active"))
                and now - sc.t <= self.settings.stale_after_s
            )
            if ok:
                self._line_i[li] = sc.value("line_current")
                self._line_u[li] = sc.number("line_voltage")
                self._line_sp[li] = sc.number("setpoint_active")
                self._line_tripped[li] = bool(sc.value("tripped"))
                self._line_remote[li] = bool(sc.value("remote"))
                if sc.usable("tap_position"):
                    self._tap[li] = int(sc.number("tap_position"))
            else:
                self._line_remote[li] = False
            line_ok[li] = ok
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
        )

    def _feed_writer(self, d: _Device, sc: _Scan, cell_samples: dict[str, Sample] | None = None) -> None:
        """Interlock and heartbeat signals into the device's safety layer."""
        if d.writer is None:
            return
        samples = {n: s for n, s in sc.scalars.items()}
        if cell_samples:
            samples.update(cell_samples)
        d.writer.update(samples)

    def _room_scan(self, room: _Room, sc: _Scan, now: float) -> np.ndarray:
        """Unpack one potroom scan into the plant arrays; sets ``room.remote`` and returns
        the cells' data quality (``cell_ok``: GOOD tags, link up, fresh; remote or not)."""
        c = room.cells
        f = sc.fields
        fresh = now - sc.t <= self.settings.stale_after_s
        hb = sc.value("heartbeat_in")
        restarted = False
        if sc.link_ok and math.isfinite(hb):
            if room.hb_prev is not None and ((hb - room.hb_prev) % 65536) > 32768:
                restarted = True
            room.hb_prev = hb
        if restarted:
            self.stats["restarts_seen"] += 1
            self.events.append(("plc_restart_seen", room.dev.index, f"{room.dev.device}: heartbeat jumped back"))
            room.pending_shots[:] = 0
            room.pending_mm[:] = 0.0
            room.wait_feed_since[:] = math.nan
            room.wait_beam_since[:] = math.nan
        room.remote = bool(sc.link_ok and sc.good("remote") and sc.value("remote") and fresh)
        if not room.remote:
            # local control or no link: nothing is in flight, nothing is replayed later
            room.pending_shots[:] = 0
            room.pending_mm[:] = 0.0
        u, u_ok = f["voltage"]
        self._u[c] = np.where(u_ok, u, math.nan)
        frozen = self._frozen_voltages(room, u, u_ok, sc.t)
        status_ok = np.ones(c.size, dtype=bool)
        for name, target in (("tapping", self._tapping), ("anode_change", self._ac), ("cut_out", self._cut)):
            v, g = f[name]
            target[c] = np.where(g, v > 0.5, target[c])
            status_ok &= g
        ae_v, ae_g = f["ae"]
        room.ae = (ae_v > 0.5) & ae_g
        # unwrapped cumulative acknowledgements
        fa, fa_ok = f["feed_ack"]
        ba, ba_ok = f["beam_ack"]
        first = np.isnan(room.feed_raw)
        d_feed = np.where(first | ~fa_ok, 0, np.mod(np.nan_to_num(fa) - np.nan_to_num(room.feed_raw), 65536))
        d_feed = np.where(d_feed > 32768, 0, d_feed)  # counter went back: a PLC restart
        if restarted:
            d_feed = np.where(fa_ok, np.nan_to_num(fa), 0)
        room.feed_total += d_feed.astype(np.int64)
        room.feed_raw = np.where(fa_ok, fa, room.feed_raw)
        firstb = np.isnan(room.beam_raw)
        d_beam = np.where(firstb | ~ba_ok, 0.0, np.nan_to_num(ba) - np.nan_to_num(room.beam_raw))
        if restarted:
            d_beam = np.where(ba_ok, np.nan_to_num(ba), 0.0)
        room.beam_total += d_beam
        room.beam_raw = np.where(ba_ok, ba, room.beam_raw)
        ok = u_ok & ~frozen & status_ok & fa_ok & ba_ok & sc.link_ok & fresh
        # per-cell interlock signals for the safety layer
        cell_samples: dict[str, Sample] = {}
        t = sc.t
        for name in ("cut_out", "tapping", "anode_change"):
            v, g = f[name]
            for i, p in enumerate(room.prefix):
                cell_samples[f"{p}.{name}"] = Sample(bool(v[i] > 0.5), Quality.GOOD if g[i] else Quality.BAD, t,
                                                     "" if g[i] else "bad quality")  # fmt: skip
        self._feed_writer(room.dev, sc, cell_samples)
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
        last = w.last_value("line_current_sp")
        if last is not None and abs(sp - last) < 5e-4:
            return
        await w.write("line_current_sp", sp)

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
        if todo.size == 0 or not room.remote:
            return
        # cells in AE first, then the biggest requests
        order = todo[np.lexsort((-room.pending_shots[todo], ~room.ae[todo]))]
        sh_max = int(room.dev.tagmap[f"{room.prefix[0]}.feed_shots"].hi)
        mm_max = float(room.dev.tagmap[f"{room.prefix[0]}.beam_move"].hi)
        for i in order.tolist():
            p = room.prefix[i]
            if room.pending_shots[i] > 0 and math.isnan(room.wait_feed_since[i]):
                n = int(min(room.pending_shots[i], sh_max))
                recs = await w.write_command({f"{p}.feed_shots": n}, f"{p}.feed_cmd")
                if recs and not recs[-1].rejected:
                    room.pending_shots[i] -= n
                    room.wait_feed_since[i] = now
                    self.stats["commands"] += 1
                else:
                    room.pending_shots[i] = 0  # refused: not queued for later
            if abs(room.pending_mm[i]) >= 0.05 and math.isnan(room.wait_beam_since[i]):
                mm = float(np.clip(room.pending_mm[i], -mm_max, mm_max))
                recs = await w.write_command({f"{p}.beam_move": mm}, f"{p}.beam_cmd")
                if recs and not recs[-1].rejected:
                    sent = float(recs[0].written) if recs[0].written is not None else mm
                    room.pending_mm[i] -= sent
                    if abs(room.pending_mm[i]) < 0.05:
                        room.pending_mm[i] = 0.0
                    room.wait_beam_since[i] = now
                    self.stats["commands"] += 1
                else:
                    room.pending_mm[i] = 0.0

    def _check_acks(self, room: _Room, now: float) -> None:
        """Clear the wait of cells whose last command the PLC acknowledged; time out the rest."""
        sc = room.dev.last
        w = room.dev.writer
        if sc is None or w is None:
            return
        for fld, wait, cmd_field in (("feed_cmd_ack", room.wait_feed_since, "feed_cmd"),
                                     ("beam_cmd_ack", room.wait_beam_since, "beam_cmd")):  # fmt: skip
            waiting = np.flatnonzero(~np.isnan(wait))
            if waiting.size == 0:
                continue
            ack, good = sc.fields[fld]
            for i in waiting.tolist():
                sent = w.last_value(f"{room.prefix[i]}.{cmd_field}")
                if sent is not None and good[i] and int(ack[i]) == int(sent):
                    wait[i] = math.nan
                elif now - wait[i] > self.settings.ack_timeout_s or sent is None:
                    wait[i] = math.nan
                    if cmd_field == "feed_cmd":
                        room.pending_shots[i] = 0
                    else:
                        room.pending_mm[i] = 0.0
                    self.stats["ack_timeouts"] += 1
                    cell = int(room.cells[i])
                    self.events.append(("command_not_acknowledged", cell,
                                        f"{room.dev.device} {room.prefix[i]}.{cmd_field} not acknowledged"))  # fmt: skip
