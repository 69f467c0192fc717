"""Foreign PLCs for the bridge: register layouts unlike ours, served by implementations that
are not ours, each with the tag map a plant engineer would write for it from the docs.

* **Layout A** -- a rectifier PLC on Modbus TCP (uModbus server, unit 3): 1-based
  addresses (40001 ...), 32-bit values word-swapped (CDAB), the setpoint an int32 in
  amperes, the mode as a *LOCAL* bit (inverted remote) packed with the trip bit in one
  status word, no PLC heartbeat to read, no separate active setpoint (a read-only alias
  of the setpoint register).
* **Layout B** -- a potroom PLC on Modbus TCP (uModbus server, unit 2): everything
  byte-swapped (BADC: 32-bit values and 16-bit registers), the mode an enumeration
  (0 LOCAL, 1 REMOTE, 2 MAINT), the cell status bits in the high byte (8..11), its own
  stride and base.
* **Layout C** -- a rectifier PLC on OPC UA (plain asyncua server): its own namespace
  (``urn:charlie:rectifiers``) that is not the server's last one, its own tree
  (``Objects/Plant/Rectifiers/RA/...``) and string NodeIds, the current in amperes as a
  Double, a ``Local`` Boolean, a trip *state* enumeration (Int32), an Int16 watchdog
  wrapping at 9999, no PLC heartbeat and no tap position.

The PLC logic here is written from the PLC's side with ``struct`` (no project codec): a
watchdog on the controller's counter puts the PLC in remote, the rectifier ramps its
current to the setpoint and silently clamps at its own limit, the potroom carries out
each new command counter once and acknowledges it. The tests step it (``scan``) on a
``VirtualClock`` they share with the bridge, like the HIL rigs.
"""

from __future__ import annotations

import math
import socketserver
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from twin.layout import PlantLayout

# ---------------------------------------------------------------------------- tag maps a user writes

MAP_A = """
# ACME rectifier PLC, register list rev. C (addresses as in the manual: 1-based)
[device]
name = "rectifier"
instance = "RA"
device_id = 3
address_base = 1
word_order = "CDAB"          # the manual: "32-bit values low word first"

[[tags]]
name = "SP_AMPS"
role = "line_current_sp"
type = "int32"
unit = "kA"
scale = 0.001                # the register holds amperes
access = "read-write"
min = 0.0
max = 135.0
plausible_min = -1.0
plausible_max = 250.0
modbus = { table = "holding", address = 1 }     # 40001-40002

[[tags]]
name = "SP_ACTIVE"
role = "setpoint_active"
type = "int32"
alias_of = "SP_AMPS"         # this PLC has no separate active setpoint

[[tags]]
name = "WD_COUNTER"
role = "heartbeat_out"
type = "uint16"
access = "read-write"
min = 0
max = 65535
wraps = true
modbus = { table = "holding", address = 3 }     # 40003

[[tags]]
name = "I_DC"
role = "line_current"
type = "float32"
unit = "kA"
min = -5.0
max = 200.0
plausible_min = -10.0
plausible_max = 250.0
modbus = { table = "input", address = 1 }       # 30001-30002

[[tags]]
name = "U_DC"
role = "line_voltage"
type = "float32"
unit = "V"
min = -50.0
max = 2000.0
modbus = { table = "input", address = 3 }       # 30003-30004

[[tags]]
name = "STATUS"
type = "uint16"
modbus = { table = "input", address = 5 }       # 30005: bit 0 running, 1 trip, 3 LOCAL

[[tags]]
name = "TRIP"
role = "tripped"
type = "bool"
modbus = { table = "input", address = 5, bit = 1 }

[[tags]]
name = "LOCAL"
role = "remote"
type = "bool"
invert = true                # the bit says LOCAL; the role is "remote"
modbus = { table = "input", address = 5, bit = 3 }

[[tags]]
name = "TAP"
role = "tap_position"
type = "int16"
modbus = { table = "input", address = 6 }       # 30006
"""

N_CELLS = 4
STRIDE_B = 10
BASE_B = 200

MAP_B = f"""
# BRAVO potroom controller: all registers byte-swapped (the vendor's "BADC")
[device]
name = "potroom"
instance = "Bravo"
device_id = 2
word_order = "BADC"

[[tags]]
name = "hb_plc"
role = "heartbeat_in"
type = "uint16"
wraps = true
modbus = {{ table = "input", address = 0 }}

[[tags]]
name = "mode"
role = "remote"
type = "uint16"
enum = {{ 0 = "LOCAL", 1 = "REMOTE", 2 = "MAINT" }}
true_when = ["REMOTE"]
modbus = {{ table = "input", address = 1 }}

[[tags]]
name = "hb_host"
role = "heartbeat_out"
type = "uint16"
access = "read-write"
min = 0
max = 65535
wraps = true
modbus = {{ table = "holding", address = 0 }}

[cells]
count = {N_CELLS}
stride = {STRIDE_B}
base_address = {BASE_B}
name = "pot{{cell:02d}}"

[[cells.tags]]
name = "u"
role = "voltage"
type = "float32"
unit = "V"
min = 0.0
max = 80.0
plausible_min = -5.0
plausible_max = 150.0
modbus = {{ table = "input", offset = 0 }}

[[cells.tags]]
name = "flags"
type = "uint16"
modbus = {{ table = "input", offset = 2 }}

[[cells.tags]]
name = "ae_bit"
role = "ae"
type = "bool"
modbus = {{ table = "input", offset = 2, bit = 8 }}

[[cells.tags]]
name = "tap_bit"
role = "tapping"
type = "bool"
modbus = {{ table = "input", offset = 2, bit = 9 }}

[[cells.tags]]
name = "ac_bit"
role = "anode_change"
type = "bool"
modbus = {{ table = "input", offset = 2, bit = 10 }}

[[cells.tags]]
name = "co_bit"
role = "cut_out"
type = "bool"
modbus = {{ table = "input", offset = 2, bit = 11 }}

[[cells.tags]]
name = "shots_done"
role = "feed_ack"
type = "uint16"
wraps = true
modbus = {{ table = "input", offset = 3 }}

[[cells.tags]]
name = "beam_done"
role = "beam_ack"
type = "int32"
unit = "mm"
scale = 0.1
modbus = {{ table = "input", offset = 4 }}

[[cells.tags]]
name = "feed_ack_no"
role = "feed_cmd_ack"
type = "uint16"
wraps = true
modbus = {{ table = "input", offset = 6 }}

[[cells.tags]]
name = "beam_ack_no"
role = "beam_cmd_ack"
type = "uint16"
wraps = true
modbus = {{ table = "input", offset = 7 }}

[[cells.tags]]
name = "shots"
role = "feed_shots"
type = "uint16"
access = "read-write"
min = 0
max = 8
modbus = {{ table = "holding", offset = 0 }}

[[cells.tags]]
name = "feed_no"
role = "feed_cmd"
type = "uint16"
access = "read-write"
min = 0
max = 65535
wraps = true
modbus = {{ table = "holding", offset = 1 }}

[[cells.tags]]
name = "move"
role = "beam_move"
type = "int16"
unit = "mm"
scale = 0.1
access = "read-write"
min = -20.0
max = 20.0
modbus = {{ table = "holding", offset = 2 }}

[[cells.tags]]
name = "beam_no"
role = "beam_cmd"
type = "uint16"
access = "read-write"
min = 0
max = 65535
wraps = true
modbus = {{ table = "holding", offset = 3 }}
"""

NS_C = "urn:charlie:rectifiers"

MAP_C = f"""
# CHARLIE rectifier, OPC UA server: string NodeIds in {NS_C}
[device]
name = "rectifier"
instance = "RA"
namespace = "{NS_C}"

[[tags]]
name = "I"
role = "line_current"
type = "float64"
unit = "kA"
min = -5.0
max = 200.0
plausible_min = -10.0
plausible_max = 250.0
opcua = {{ node_id = "nsu={NS_C};s=RA.Meas.I", scale = 0.001 }}   # the node is in amperes

[[tags]]
name = "U"
role = "line_voltage"
type = "float32"
unit = "V"
min = -50.0
max = 2000.0
opcua = {{ browse_path = "Objects/Plant/Rectifiers/RA/Measurements/Voltage" }}

[[tags]]
name = "SP"
role = "line_current_sp"
type = "float64"
unit = "kA"
access = "read-write"
min = 0.0
max = 135.0
opcua = {{ node_id = "nsu={NS_C};s=RA.Ctl.SP" }}

[[tags]]
name = "SP_ACT"
role = "setpoint_active"
type = "float64"
unit = "kA"
min = 0.0
max = 200.0
opcua = {{ node_id = "nsu={NS_C};s=RA.Ctl.SPact" }}

[[tags]]
name = "Local"
role = "remote"
type = "bool"
invert = true
opcua = {{ browse_path = "Objects/Plant/Rectifiers/RA/Status/Local" }}

[[tags]]
name = "TripState"
role = "tripped"
type = "int32"
enum = {{ 0 = "NORMAL", 1 = "ALARM", 2 = "TRIPPED" }}
true_when = ["TRIPPED"]
opcua = {{ browse_path = "Objects/Plant/Rectifiers/RA/Status/TripState" }}

[[tags]]
name = "WD"
role = "heartbeat_out"
type = "int16"
access = "read-write"
min = 0
max = 9999
wraps = true
opcua = {{ node_id = "nsu={NS_C};s=RA.Ctl.WD" }}
"""


def layout(n_cells: int = N_CELLS) -> PlantLayout:
    """One line ("Line1") feeding one room ("Potroom1") of ``n_cells`` cells."""
    return PlantLayout(
        plant="Foreign",
        line_names=("Line1",),
        room_names=("Potroom1",),
        cell_line=np.zeros(n_cells, dtype=np.int64),
        cell_room=np.zeros(n_cells, dtype=np.int64),
        cell_number=np.arange(1, n_cells + 1, dtype=np.int64),
        shot_mass_kg=np.full(n_cells, 1.8),
        nominal_current_ka=np.array([120.0]),
    )


# ---------------------------------------------------------------------------- registers, the PLC's way


def words(value: float | int, fmt: str, order: str) -> list[int]:
    """Registers (as on the wire) holding ``value`` packed with ``struct`` format ``fmt``,
    bytes laid out as ``order`` says (``ABCD`` big-endian, ``CDAB``, ``BADC``; ``AB``/``BA``)."""
    b = struct.pack(">" + fmt, value)
    letters = "ABCDEFGH"[: len(b)]
    out = bytes(b[letters.index(ch)] for ch in order)
    return [int.from_bytes(out[i : i + 2], "big") for i in range(0, len(out), 2)]


def value(regs: list[int], fmt: str, order: str) -> Any:
    """The inverse of ``words``."""
    raw = b"".join(int(w).to_bytes(2, "big") for w in regs)
    letters = "ABCDEFGH"[: len(raw)]
    b = bytearray(len(raw))
    for pos, ch in enumerate(order):
        b[letters.index(ch)] = raw[pos]
    return struct.unpack(">" + fmt, bytes(b))[0]


class Registers:
    """A Modbus device's memory: (unit, table, address) -> 16-bit word; table h/i/c/d.
    ``writes`` logs every client write (table, address, word) in order."""

    def __init__(self) -> None:
        self.mem: dict[tuple[int, str, int], int] = {}
        self.lock = threading.Lock()
        self.writes: list[tuple[str, int, int]] = []

    def get(self, unit: int, table: str, address: int, n: int = 1) -> list[int]:
        with self.lock:
            return [self.mem.get((unit, table, address + k), 0) for k in range(n)]

    def put(self, unit: int, table: str, address: int, regs: list[int]) -> None:
        with self.lock:
            for k, w in enumerate(regs):
                self.mem[(unit, table, address + k)] = int(w) & 0xFFFF


class _UServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    allow_reuse_address = True
    daemon_threads = True
    block_on_close = False


@contextmanager
def umodbus_plc(regs: Registers, unit: int, n_addresses: int = 400) -> Iterator[int]:
    """uModbus TCP server on a free loopback port answering unit ``unit`` from ``regs``; yields
    the port. Addresses outside [0, n_addresses) answer exception 2 (illegal address)."""
    from umodbus.server.tcp import RequestHandler, get_server

    app = get_server(_UServer, ("127.0.0.1", 0), RequestHandler)
    addrs = list(range(n_addresses))
    table_of = {1: "c", 2: "d", 3: "h", 4: "i"}

    @app.route(slave_ids=[unit], function_codes=[1, 2, 3, 4], addresses=addrs)
    def read(slave_id: int, function_code: int, address: int) -> int:
        return regs.get(unit, table_of[function_code], address)[0]

    @app.route(slave_ids=[unit], function_codes=[5, 15], addresses=addrs)
    def write_coil(slave_id: int, function_code: int, address: int, value: int) -> None:
        regs.put(unit, "c", address, [int(value)])
        regs.writes.append(("c", address, int(value)))

    @app.route(slave_ids=[unit], function_codes=[6, 16], addresses=addrs)
    def write_reg(slave_id: int, function_code: int, address: int, value: int) -> None:
        regs.put(unit, "h", address, [int(value)])
        regs.writes.append(("h", address, int(value)))

    th = threading.Thread(target=app.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    th.start()
    try:
        yield app.server_address[1]
    finally:
        app.shutdown()
        app.server_close()
        th.join(timeout=5)


@dataclass
class Watchdog:
    """The PLC's watchdog on the controller's counter [plant s]."""

    timeout_s: float
    last: int | None = None
    changed_t: float = -math.inf

    def alive(self, counter: int, now: float) -> bool:
        if self.last is not None and counter != self.last:
            self.changed_t = now
        self.last = counter
        return now - self.changed_t <= self.timeout_s


# ---------------------------------------------------------------------------- layout A: Modbus rectifier


@dataclass
class RectifierA:
    """The ACME rectifier PLC behind ``MAP_A`` (unit 3, protocol addresses 0-based here)."""

    regs: Registers
    watchdog_s: float = 4.0
    limit_ka: float = 132.0  # the rectifier's own limit: it clamps silently
    ramp_ka_per_s: float = 2.0
    current_ka: float = 120.0
    local_ka: float = 120.0
    selector_remote: bool = True
    tripped: bool = False
    swap_current_words: bool = False  # a fault: the current published ABCD instead of CDAB
    remote: bool = False
    wd: Watchdog = field(default_factory=lambda: Watchdog(4.0))
    unit: int = 3

    def __post_init__(self) -> None:
        self.wd = Watchdog(self.watchdog_s)
        self.regs.put(self.unit, "h", 0, words(round(self.current_ka * 1000), "i", "CDAB"))
        self.publish()

    @property
    def setpoint_ka(self) -> float:
        return value(self.regs.get(self.unit, "h", 0, 2), "i", "CDAB") / 1000.0

    def scan(self, now: float, dt: float) -> None:
        alive = self.wd.alive(self.regs.get(self.unit, "h", 2)[0], now)
        remote = alive and self.selector_remote
        if remote and not self.remote:  # bumpless: the setpoint register tracks the current
            self.regs.put(self.unit, "h", 0, words(round(self.current_ka * 1000), "i", "CDAB"))
        if self.remote and not remote:
            self.local_ka = self.current_ka
        self.remote = remote
        target = self.setpoint_ka if remote else self.local_ka
        target = min(max(target, 0.0), self.limit_ka)
        if not self.tripped:
            step = self.ramp_ka_per_s * dt
            self.current_ka += min(max(target - self.current_ka, -step), step)
        self.publish()

    def publish(self) -> None:
        u = self.current_ka * 7.0
        order = "ABCD" if self.swap_current_words else "CDAB"
        self.regs.put(self.unit, "i", 0, words(self.current_ka, "f", order))
        self.regs.put(self.unit, "i", 2, words(u, "f", "CDAB"))
        status = (1 << 0) | (int(self.tripped) << 1) | (int(not self.remote) << 3)
        self.regs.put(self.unit, "i", 4, [status])
        self.regs.put(self.unit, "i", 5, words(17, "h", "AB"))

    def setpoint_writes_ka(self) -> list[float]:
        """Every setpoint the controller wrote (a write of both registers), in kA."""
        out, pending = [], {}
        for table, a, w in self.regs.writes:
            if table == "h" and a in (0, 1):
                pending[a] = w
                if len(pending) == 2:
                    out.append(value([pending[0], pending[1]], "i", "CDAB") / 1000.0)
                    pending = {}
        return out


# ---------------------------------------------------------------------------- layout B: Modbus potroom


@dataclass
class PotroomB:
    """The BRAVO potroom PLC behind ``MAP_B`` (unit 2; every register byte-swapped)."""

    regs: Registers
    n: int = N_CELLS
    watchdog_s: float = 4.0
    unit: int = 2
    selector_remote: bool = True
    remote: bool = False
    hb: int = 0
    voltage: np.ndarray = field(default_factory=lambda: np.array([4.21, 4.35, 4.48, 4.12]))
    cut_out: np.ndarray = field(default_factory=lambda: np.zeros(N_CELLS, dtype=bool))
    shots_done: np.ndarray = field(default_factory=lambda: np.zeros(N_CELLS, dtype=np.int64))
    beam_done_mm: np.ndarray = field(default_factory=lambda: np.zeros(N_CELLS))
    wd: Watchdog = field(default_factory=lambda: Watchdog(4.0))
    _seen: dict[tuple[int, int], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.wd = Watchdog(self.watchdog_s)
        self.publish()

    def u16(self, table: str, address: int) -> int:
        return value(self.regs.get(self.unit, table, address), "H", "BA")

    def scan(self, now: float) -> None:
        alive = self.wd.alive(self.u16("h", 0), now)
        self.remote = alive and self.selector_remote
        self.hb = (self.hb + 1) % 65536
        for k in range(self.n):
            base = BASE_B + k * STRIDE_B
            for off, ack_off in ((1, 6), (3, 7)):
                cmd = self.u16("h", base + off)
                seen = self._seen.get((k, off))
                self._seen[(k, off)] = cmd
                if seen is None or cmd == seen or not self.remote or self.cut_out[k]:
                    continue  # commands from before start-up, refused ones: never carried out later
                if off == 1:
                    self.shots_done[k] += self.u16("h", base)
                else:
                    self.beam_done_mm[k] += value(self.regs.get(self.unit, "h", base + 2), "h", "BA") / 10.0
                self.regs.put(self.unit, "i", base + ack_off, words(cmd, "H", "BA"))
        self.publish()

    def publish(self) -> None:
        self.regs.put(self.unit, "i", 0, words(self.hb, "H", "BA"))
        self.regs.put(self.unit, "i", 1, words(1 if self.remote else 0, "H", "BA"))
        for k in range(self.n):
            base = BASE_B + k * STRIDE_B
            self.regs.put(self.unit, "i", base, words(float(self.voltage[k]), "f", "BADC"))
            flags = (int(self.voltage[k] > 8.0) << 8) | (int(self.cut_out[k]) << 11)
            self.regs.put(self.unit, "i", base + 2, words(flags, "H", "BA"))
            self.regs.put(self.unit, "i", base + 3, words(int(self.shots_done[k]) % 65536, "H", "BA"))
            self.regs.put(self.unit, "i", base + 4, words(round(self.beam_done_mm[k] * 10), "i", "BADC"))


# ---------------------------------------------------------------------------- layout C: OPC UA rectifier


class RectifierC:
    """The CHARLIE rectifier behind ``MAP_C``: a plain asyncua server and its logic."""

    def __init__(self, watchdog_s: float = 4.0, limit_ka: float = 140.0, ramp_ka_per_s: float = 2.0) -> None:
        self.watchdog_s = watchdog_s
        self.limit_ka = limit_ka
        self.ramp = ramp_ka_per_s
        self.current_ka = 120.0
        self.local_ka = 120.0
        self.remote = False
        self.trip_state = 0
        self.selector_remote = True
        self.wd = Watchdog(watchdog_s)
        self.server: Any = None
        self.nodes: dict[str, Any] = {}
        self.port = 0

    async def start(self) -> RectifierC:
        from asyncua import Server, ua

        from plc_bridge.ports import free_port

        self.port = free_port()
        s = Server()
        await s.init()
        s.set_endpoint(f"opc.tcp://127.0.0.1:{self.port}/charlie/")
        s.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        idx = await s.register_namespace(NS_C)
        await s.register_namespace("urn:charlie:diagnostics")  # the server's last namespace is not the tags'
        plant = await s.nodes.objects.add_object(ua.NodeId("Plant", idx), f"{idx}:Plant")
        rects = await plant.add_object(ua.NodeId("Plant.Rectifiers", idx), f"{idx}:Rectifiers")
        ra = await rects.add_object(ua.NodeId("RA", idx), f"{idx}:RA")
        meas = await ra.add_object(ua.NodeId("RA.Meas", idx), f"{idx}:Measurements")
        ctl = await ra.add_object(ua.NodeId("RA.Ctl", idx), f"{idx}:Control")
        st = await ra.add_object(ua.NodeId("RA.St", idx), f"{idx}:Status")
        V = ua.VariantType
        spec = {
            "I": (meas, "RA.Meas.I", "Current", 120000.0, V.Double),
            "U": (meas, "RA.Meas.U", "Voltage", 840.0, V.Float),
            "SP": (ctl, "RA.Ctl.SP", "Setpoint", 120.0, V.Double),
            "SPact": (ctl, "RA.Ctl.SPact", "ActiveSetpoint", 120.0, V.Double),
            "WD": (ctl, "RA.Ctl.WD", "Watchdog", 0, V.Int16),
            "Local": (st, "RA.St.Local", "Local", True, V.Boolean),
            "Trip": (st, "RA.St.Trip", "TripState", 0, V.Int32),
        }
        for key, (parent, nid, name, v, vt) in spec.items():
            node = await parent.add_variable(ua.NodeId(nid, idx), f"{idx}:{name}", ua.Variant(v, vt))
            if key in ("SP", "WD"):
                await node.set_writable()
            self.nodes[key] = (node, vt)
        await s.start()
        self.server = s
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None

    async def get(self, key: str) -> Any:
        return await self.nodes[key][0].read_value()

    async def put(self, key: str, v: Any) -> None:
        from asyncua import ua

        node, vt = self.nodes[key]
        await node.write_value(ua.Variant(v, vt))

    async def scan(self, now: float, dt: float) -> None:
        alive = self.wd.alive(int(await self.get("WD")), now)
        remote = alive and self.selector_remote
        if remote and not self.remote:
            await self.put("SP", round(self.current_ka, 3))  # bumpless
        if self.remote and not remote:
            self.local_ka = self.current_ka
        self.remote = remote
        target = float(await self.get("SP")) if remote else self.local_ka
        target = min(max(target, 0.0), self.limit_ka)
        if self.trip_state != 2:
            step = self.ramp * dt
            self.current_ka += min(max(target - self.current_ka, -step), step)
        await self.put("I", self.current_ka * 1000.0)
        await self.put("U", float(np.float32(self.current_ka * 7.0)))
        await self.put("SPact", target)
        await self.put("Local", not remote)
        await self.put("Trip", self.trip_state)
