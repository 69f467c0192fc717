"""A Modbus TCP server (simulated PLC) built from a tag map.

``ModbusTagServer`` serves the registers a ``TagMap`` describes with pymodbus
3.16 (``ModbusTcpServer`` + ``SimDevice``, one ``SimDevice`` per device id with the
four classic tables). The model side writes engineering values with ``set`` /
``set_many`` / ``set_array`` (bulk fast path for per-cell arrays) and reads what
clients wrote with ``get`` / ``get_array``; an ``invert`` bool is the meaning on the model
side and the PLC's own bit in the registers (``remote`` True = a ``LOCAL`` bit clear).
Clients may write only the
allow-listed command tags (default: the map's read-write tags); a write
anywhere else is answered with Modbus exception 2 (ILLEGAL ADDRESS), a write of
a value outside the tag's engineering bounds with exception 3 (ILLEGAL VALUE)
— the PLC re-validates ranges, the controller is never the only safety layer.

Hooks (both may be plain or async functions):

* ``on_write(ClientWrite)`` after a client write is accepted and applied (the
  new values are already visible to ``get``);
* ``on_request(RequestInfo)`` before every request is served; it may await (to
  delay the answer, e.g. past a client's timeout) and may return a Modbus
  exception code to refuse the request (fault injection).

Binds to 127.0.0.1 by default; ``port=0`` picks a free port (see ``port``).

Connections (like a PLC's Modbus TCP stack): at most ``max_connections`` at once (a new
one beyond that closes the connection that has been quiet longest, logged as
``modbus_server.connection_closed`` with the reason), none idle longer than
``idle_timeout_s`` [wall s]; requests pipelined in one TCP write (or split across writes)
are answered one after another in order, up to ``max_pipelined`` waiting per
connection (more, a protocol id other than 0 or an MBAP length out of range close the
connection with a logged reason). A write that covers only part of a multi-register
value (one register of a float32) is refused with exception 2 and changes nothing.

The model side reaches the server's register lists directly (the pymodbus
``SimRuntime`` blocks) so that ``set``/``get`` are synchronous and a 132-cell
array costs a few strided slice assignments; this relies on pymodbus 3.16's
internal layout, checked at ``start()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import structlog

from plc_bridge import codec
from plc_bridge.codec import RAW_RANGE, DataType, Table
from plc_bridge.tagmap import Tag, TagMap

__all__ = [
    "DEFAULT_IDLE_TIMEOUT_S",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_PIPELINED",
    "ClientWrite",
    "ExceptionCode",
    "ModbusTagServer",
    "RequestInfo",
]

log = structlog.get_logger(__name__)

#: connections served at once (PLC Modbus TCP stacks keep a table of 4-16)
DEFAULT_MAX_CONNECTIONS = 16
#: a connection that sends nothing for this long [wall s] is closed
DEFAULT_IDLE_TIMEOUT_S = 120.0
#: requests of one connection waiting to be answered (pipelined) at most
DEFAULT_MAX_PIPELINED = 16


class ExceptionCode:
    """Modbus exception codes a hook may return."""

    ILLEGAL_FUNCTION = 1
    ILLEGAL_ADDRESS = 2
    ILLEGAL_VALUE = 3
    DEVICE_FAILURE = 4
    DEVICE_BUSY = 6
    GATEWAY_NO_RESPONSE = 11


_FC_TABLE: dict[int, Table] = {
    1: Table.COIL, 5: Table.COIL, 15: Table.COIL,
    2: Table.DISCRETE,
    3: Table.HOLDING, 6: Table.HOLDING, 16: Table.HOLDING, 22: Table.HOLDING, 23: Table.HOLDING,
    4: Table.INPUT,
}  # fmt: skip
_TABLE_KEY = {Table.COIL: "c", Table.DISCRETE: "d", Table.HOLDING: "h", Table.INPUT: "i"}


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """A request as the server sees it (before serving it).

    ``count`` is the number of registers, or of bits for a coil write; for coil and
    discrete-input *reads* pymodbus reports the number of 16-bit words spanned.
    """

    device_id: int
    table: Table
    function_code: int
    address: int
    count: int
    write: bool


@dataclass(frozen=True, slots=True)
class ClientWrite:
    """A client write that was accepted.

    Attributes:
        device_id, table, address, count: what was written (count in registers or bits).
        values: engineering values of the tags the write touched, after the write.
    """

    device_id: int
    table: Table
    address: int
    count: int
    values: dict[str, float | int | bool]


Hook = Callable[[Any], "Awaitable[int | None] | int | None"]


@dataclass(slots=True)
class _Space:
    """One (device id, table) register space of the server."""

    device_id: int
    table: Table
    readable: bytearray = field(default_factory=lambda: bytearray(65536))
    writable: bytearray = field(default_factory=lambda: bytearray(65536))
    tags_at: dict[int, list[Tag]] = field(default_factory=dict)
    start: int = 0  # address (registers) / register index (bits) of regs[0]
    regs: list[int] | None = None


def _memory(sp: _Space) -> list[int]:
    """The registers of ``sp`` (they exist while the server runs)."""
    if sp.regs is None:
        raise RuntimeError("ModbusTagServer: call `await start()` before reading or writing values")
    return sp.regs


class ModbusTagServer:
    """Simulated PLC serving a tag map over Modbus TCP.

    Args:
        tagmap: the device's tag map (all its device ids are served).
        host: interface to bind (default loopback only).
        port: TCP port; 0 picks a free one.
        writable: names of tags clients may write (default: every read-write tag).
        fill_gaps: serve every address between a table's first and last tag
            (unused ones read as 0, like PLC memory), so block reads that merge
            gaps succeed; False = only tag addresses exist.
        reject_out_of_bounds: answer client writes outside [min, max] (or
            non-finite) with exception 3.
        on_write: hook called after each accepted client write.
        on_request: hook called before each request (may delay or refuse).
        initial: engineering values set at ``start()``.
        max_connections: connections at once (the quietest is closed for a new one).
        idle_timeout_s: close a connection that sent nothing for this long [wall s]; None: never.
        max_pipelined: requests of one connection waiting for their answer at most.
    """

    def __init__(
        self,
        tagmap: TagMap,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        writable: Iterable[str] | None = None,
        fill_gaps: bool = True,
        reject_out_of_bounds: bool = True,
        on_write: Hook | None = None,
        on_request: Hook | None = None,
        initial: Mapping[str, float | int | bool] | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_timeout_s: float | None = DEFAULT_IDLE_TIMEOUT_S,
        max_pipelined: int = DEFAULT_MAX_PIPELINED,
    ) -> None:
        if max_connections < 1 or max_pipelined < 1:
            raise ValueError(f"max_connections and max_pipelined must be >= 1, got {max_connections}, {max_pipelined}")
        if idle_timeout_s is not None and not idle_timeout_s > 0.0:
            raise ValueError(f"idle_timeout_s must be > 0 s or None, got {idle_timeout_s}")
        self.max_connections = int(max_connections)
        self.idle_timeout_s = idle_timeout_s
        self.max_pipelined = int(max_pipelined)
        self.closed_connections: dict[str, int] = {}  # reason -> count (idle, evicted, protocol errors)
        self._sweeper: asyncio.Task[None] | None = None
        self.tagmap = tagmap
        self.host = host
        self._port = port
        self.fill_gaps = fill_gaps
        self.reject_out_of_bounds = reject_out_of_bounds
        self.on_write = on_write
        self.on_request = on_request
        self._initial = dict(initial or {})
        self._server: Any = None
        self._snapshot: dict[tuple[int, Table], list[int]] | None = None
        self.requests = 0
        self.client_writes = 0
        self.rejected_writes = 0
        names = [t.name for t in tagmap.writable()] if writable is None else list(writable)
        self._writable_names = frozenset(names)
        for n in names:
            t = tagmap[n]
            if not t.has_modbus or t.table not in (Table.HOLDING, Table.COIL):
                raise ValueError(f"{tagmap.source}: tag {n!r} cannot be client-writable (table {t.table.value})")
        self._spaces: dict[tuple[int, Table], _Space] = {}
        for t in tagmap.modbus_tags():
            sp = self._spaces.get((t.device_id, t.table))
            if sp is None:
                sp = self._spaces[(t.device_id, t.table)] = _Space(t.device_id, t.table)
            for a in range(t.address, t.address + t.n_registers):
                sp.tags_at.setdefault(a, []).append(t)
                sp.readable[a] = 1
                if t.name in self._writable_names:
                    sp.writable[a] = 1
        if fill_gaps:
            for sp in self._spaces.values():
                lo, hi = min(sp.tags_at), max(sp.tags_at)
                sp.readable[lo : hi + 1] = b"\x01" * (hi + 1 - lo)
        self._field_cache: dict[str, tuple[Tag, _Space, list[tuple[int, int, int]]]] = {}
        self._bit_cache: dict[str, list[tuple[int, int]]] = {}

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        """The bound TCP port (after ``start()`` when created with port 0)."""
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self._port)

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> ModbusTagServer:
        """Build the datastore and listen. After a ``stop()``, register contents are restored."""
        if self._server is not None:
            return self
        devices = self._build_devices()
        server = _server_class()(devices, address=(self.host, self._port))
        server.owner = self
        await server.serve_forever(background=True)
        self._server = server
        sockets = getattr(server.transport, "sockets", None)
        if sockets:
            self._port = int(sockets[0].getsockname()[1])
        self._attach_memory(server)
        if self._snapshot is not None:
            for key, regs in self._snapshot.items():
                _memory(self._spaces[key])[:] = regs
        else:
            self.set_many(self._initial)
        if self.idle_timeout_s is not None:
            self._sweeper = asyncio.create_task(self._sweep_idle(self.idle_timeout_s), name="modbus-idle-sweep")
        log.info("modbus_server_started", device=self.tagmap.device, host=self.host, port=self._port)
        return self

    async def stop(self) -> None:
        """Stop listening and drop client connections (register contents are kept for a restart)."""
        if self._server is None:
            return
        self._snapshot = {k: list(sp.regs) for k, sp in self._spaces.items() if sp.regs is not None}
        server, self._server = self._server, None
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
        await server.shutdown()
        for sp in self._spaces.values():
            sp.regs = None
        log.info("modbus_server_stopped", device=self.tagmap.device, port=self._port)

    @property
    def connections(self) -> int:
        """Client connections open right now."""
        return len(self._server.active_connections) if self._server is not None else 0

    def _closed(self, handler: Any, reason: str, detail: str) -> None:
        """Close a client connection and say why (log, ``closed_connections``)."""
        self.closed_connections[reason] = self.closed_connections.get(reason, 0) + 1
        transport = getattr(handler, "transport", None)
        peer = transport.get_extra_info("peername") if transport is not None else None
        log.warning("modbus_server.connection_closed", device=self.tagmap.device, port=self._port, peer=str(peer),
                    reason=reason, detail=detail)  # fmt: skip
        handler.close()

    async def _sweep_idle(self, idle_s: float) -> None:
        """Close connections that sent nothing for ``idle_s`` (checked 4 times per period)."""
        import time

        while True:
            await asyncio.sleep(min(idle_s / 4.0, 5.0))
            server = self._server
            if server is None:
                return
            now = time.monotonic()
            for h in list(server.active_connections.values()):
                quiet = now - getattr(h, "last_activity", now)
                if quiet > idle_s:
                    self._closed(h, "idle", f"nothing received for {quiet:.1f} s (idle_timeout_s = {idle_s:g})")

    async def __aenter__(self) -> ModbusTagServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _build_devices(self) -> list[Any]:
        from pymodbus.simulator import DataType as SimType
        from pymodbus.simulator import SimData, SimDevice

        dev_ids = sorted({d for d, _ in self._spaces})
        devices = []
        for dev in dev_ids:
            tables: list[list[Any]] = []
            for table in (Table.COIL, Table.DISCRETE, Table.HOLDING, Table.INPUT):
                sp = self._spaces.get((dev, table))
                entries: list[Any] = []
                if sp is not None:
                    spans = _spans(sp.readable)
                    for lo, hi in spans:
                        if table.is_bits:
                            lo16, hi16 = (lo // 16) * 16, ((hi // 16) + 1) * 16
                            entries.append(SimData(lo16, values=[False] * (hi16 - lo16), datatype=SimType.BITS))
                        else:
                            entries.append(SimData(lo, count=hi + 1 - lo, values=0, datatype=SimType.REGISTERS))
                    if table.is_bits and len(entries) > 1:
                        # one packed bit block per table; the readable mask guards the gaps
                        first, last = entries[0].address, entries[-1].address + len(entries[-1].values)
                        entries = [SimData(first, values=[False] * (last - first), datatype=SimType.BITS)]
                if not entries:
                    if table.is_bits:
                        entries.append(SimData(0, values=[False] * 16, datatype=SimType.BITS))
                    else:
                        entries.append(SimData(0, count=1, datatype=SimType.INVALID))
                tables.append(entries)
            action = functools.partial(self._action, dev)
            devices.append(SimDevice(dev, simdata=(tables[0], tables[1], tables[2], tables[3]), action=action))
        return devices

    def _attach_memory(self, server: Any) -> None:
        try:
            runtimes = server.context.devices
            for (dev, table), sp in self._spaces.items():
                start, _count, regs, _flags = runtimes[dev].block[_TABLE_KEY[table]]
                if not isinstance(regs, list):
                    raise TypeError("register block is not a list")
                sp.start, sp.regs = int(start), regs
        except (AttributeError, KeyError, TypeError, ValueError) as exc:  # pragma: no cover - pymodbus layout changed
            raise RuntimeError(f"pymodbus datastore layout not as expected (pymodbus 3.16.x needed): {exc}") from exc

    # ------------------------------------------------------------------ request path

    async def _action(
        self,
        device_id: int,
        function_code: int,
        _start_address: int,
        address: int,
        count: int,
        _registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> Any:
        from pymodbus.constants import ExcCodes

        self.requests += 1
        table = _FC_TABLE.get(function_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        is_write = set_values is not None
        if self.on_request is not None:
            n = len(set_values) if set_values is not None else count
            try:
                res = self.on_request(RequestInfo(device_id, table, function_code, address, n, is_write))
                if inspect.isawaitable(res):
                    res = await res
            except Exception:  # a hook must never take the server down
                log.exception("modbus_server_on_request_failed")
                return ExcCodes.DEVICE_FAILURE
            if res:
                return ExcCodes(int(res))
        sp = self._spaces.get((device_id, table))
        if sp is None or sp.regs is None:
            return ExcCodes.ILLEGAL_ADDRESS
        if set_values is None:  # a read
            n = 1 if table.is_bits else count
            if address + n > 65536 or 0 in sp.readable[address : address + n]:
                return ExcCodes.ILLEGAL_ADDRESS
            return None
        values = list(set_values)
        n = len(values)
        if address + n > 65536 or 0 in sp.writable[address : address + n]:
            self.rejected_writes += 1
            return ExcCodes.ILLEGAL_ADDRESS
        touched = self._touched(sp, address, n)
        if not table.is_bits:
            for t in touched:
                if t.n_registers > 1 and (address > t.address or address + n < t.address + t.n_registers):
                    self.rejected_writes += 1
                    log.warning("modbus_server_partial_write_rejected", tag=t.name, type=t.type.value,
                                registers=f"{t.address}..{t.address + t.n_registers - 1}",
                                written=f"{address}..{address + n - 1}")  # fmt: skip
                    return ExcCodes.ILLEGAL_ADDRESS
        old = self._read_span(sp, address, n)
        self._write_span(sp, address, [int(v) for v in values])
        decoded = {t.name: self._value(t) for t in touched}
        if self.reject_out_of_bounds:
            for t in touched:
                v = decoded[t.name]
                if t.type is DataType.BOOL:
                    continue
                if (
                    not math.isfinite(float(v))
                    or (t.min is not None and v < t.min)
                    or (t.max is not None and v > t.max)
                ):
                    self._write_span(sp, address, old)
                    self.rejected_writes += 1
                    log.warning("modbus_server_write_rejected", tag=t.name, value=v, min=t.min, max=t.max)
                    return ExcCodes.ILLEGAL_VALUE
        self.client_writes += 1
        if self.on_write is not None:
            try:
                res = self.on_write(ClientWrite(device_id, table, address, n, decoded))
                if inspect.isawaitable(res):
                    await res
            except Exception:
                log.exception("modbus_server_on_write_failed")
            # pymodbus stores set_values after this returns: hand it what the registers hold
            # now, so that a hook's own changes (a PLC clamping a setpoint) stick
            cur = self._read_span(sp, address, n)
            # (pymodbus hands bit tables a list[bool], register tables a list[int])
            if table.is_bits:
                cast("list[bool]", set_values)[:] = [bool(v) for v in cur]
            else:
                cast("list[int]", set_values)[:] = cur
        return None

    @staticmethod
    def _touched(sp: _Space, address: int, n: int) -> list[Tag]:
        seen: dict[str, Tag] = {}
        for a in range(address, address + n):
            for t in sp.tags_at.get(a, ()):
                seen.setdefault(t.name, t)
        return list(seen.values())

    # ------------------------------------------------------------------ raw memory

    def _space(self, tag: Tag) -> _Space:
        if not tag.has_modbus:
            raise ValueError(f"{self.tagmap.source}: tag {tag.name!r} has no Modbus location")
        sp = self._spaces[(tag.device_id, tag.table)]
        _memory(sp)  # raises before start()
        return sp

    def _read_span(self, sp: _Space, address: int, n: int) -> list[int]:
        regs = sp.regs
        assert regs is not None
        if sp.table.is_bits:
            out = []
            for a in range(address, address + n):
                out.append((regs[a // 16 - sp.start] >> (a % 16)) & 1)
            return out
        o = address - sp.start
        return regs[o : o + n]

    def _write_span(self, sp: _Space, address: int, words: Sequence[int]) -> None:
        regs = sp.regs
        assert regs is not None
        if sp.table.is_bits:
            for k, v in enumerate(words):
                a = address + k
                i = a // 16 - sp.start
                regs[i] = codec.set_bit(regs[i], a % 16, bool(v))
            return
        o = address - sp.start
        regs[o : o + len(words)] = [int(w) & 0xFFFF for w in words]

    def set_registers(
        self, table: Table | str, address: int, words: Sequence[int], device_id: int | None = None
    ) -> None:
        """Write raw registers (or bits) from the model side, e.g. to inject garbage."""
        tb = Table(table)
        dev = device_id if device_id is not None else next(iter(self._spaces))[0]
        sp = self._spaces.get((dev, tb))
        if sp is None or sp.regs is None:
            raise KeyError(f"no {tb.value} table for device {dev} (or server not started)")
        if 0 in sp.readable[address : address + len(words)]:
            raise ValueError(f"{tb.value} addresses {address}..{address + len(words) - 1} are not all served")
        self._write_span(sp, address, words)

    def get_registers(self, table: Table | str, address: int, count: int, device_id: int | None = None) -> list[int]:
        """Raw registers (or bits as 0/1) as clients would read them."""
        tb = Table(table)
        dev = device_id if device_id is not None else next(iter(self._spaces))[0]
        sp = self._spaces[(dev, tb)]
        if sp.regs is None:
            raise RuntimeError("server not started")
        return list(self._read_span(sp, address, count))

    # ------------------------------------------------------------------ model side: engineering values

    def set(self, name: str, value: float | int | bool) -> None:
        """Set tag ``name`` to engineering ``value`` (model side; no access or bounds check).

        Floats may be non-finite (to simulate a faulty transmitter); integers must
        fit the raw type, except ``wraps`` counters, which wrap around.
        """
        tag = self.tagmap[name]
        sp = self._space(tag)
        if tag.type is DataType.BOOL:
            bit = bool(value) != tag.invert  # an inverted bool: memory holds the PLC's own bit
            if tag.bit is not None:
                o = tag.address - sp.start
                regs = _memory(sp)
                regs[o] = codec.set_bit(regs[o], tag.bit, bit)
            else:
                self._write_span(sp, tag.address, [1 if bit else 0])
            return
        self._write_span(sp, tag.address, self._encode(tag, value))

    def set_many(self, values: Mapping[str, float | int | bool]) -> None:
        """``set`` for several tags at once."""
        for k, v in values.items():
            self.set(k, v)

    def get(self, name: str) -> float | int | bool:
        """Current engineering value of tag ``name`` (what clients read or wrote)."""
        tag = self.tagmap[name]
        self._space(tag)
        return self._value(tag)

    def get_many(self, names: Iterable[str]) -> dict[str, float | int | bool]:
        return {n: self.get(n) for n in names}

    def _encode(self, tag: Tag, value: float | int | bool) -> list[int]:
        x = float(value)
        if tag.type.is_float:
            raw = (x - tag.offset) / tag.scale if math.isfinite(x) else x
            return codec.raw_to_registers(raw, tag.type, tag.word_order)
        if tag.wraps and math.isfinite(x):
            lo, hi = RAW_RANGE[tag.type]
            r = int(round((x - tag.offset) / tag.scale))
            r = (r - lo) % (hi - lo + 1) + lo
            return codec.raw_to_registers(r, tag.type, tag.word_order)
        return codec.encode(tag, value)

    def _value(self, tag: Tag) -> float | int | bool:
        sp = self._spaces[(tag.device_id, tag.table)]
        words = self._read_span(sp, tag.address, tag.n_registers)
        if tag.type is DataType.BOOL:
            bit = bool((words[0] >> tag.bit) & 1) if tag.bit is not None else bool(words[0])
            return bit != tag.invert
        raw = codec.registers_to_raw(words, tag.type, tag.word_order)
        if tag.type.is_int and tag.scale == 1.0 and tag.offset == 0.0:
            return int(raw)
        return codec.raw_to_eng(raw, tag.scale, tag.offset)

    # ------------------------------------------------------------------ model side: per-cell arrays

    def _field(self, field_name: str) -> tuple[Tag, _Space, list[tuple[int, int, int]]]:
        """First tag of a per-cell field, its space and (start, stop, step) list slices per word."""
        hit = self._field_cache.get(field_name)
        if hit is not None and hit[1].regs is not None:
            return hit
        names = self.tagmap.cell_tags(field_name)
        tags = [self.tagmap[n] for n in names]
        t0 = tags[0]
        if not t0.has_modbus:
            raise ValueError(f"{self.tagmap.source}: per-cell tag {field_name!r} has no Modbus location")
        sp = self._space(t0)
        addrs = np.array([t.address for t in tags])
        steps = np.diff(addrs)
        if len(tags) > 1 and not (steps == steps[0]).all():
            raise ValueError(f"per-cell tag {field_name!r} addresses are not evenly spaced")
        step = int(steps[0]) if len(tags) > 1 else 1
        slices = []
        if not t0.table.is_bits:
            for w in range(t0.n_registers):
                o = t0.address + w - sp.start
                slices.append((o, o + step * (len(tags) - 1) + 1, step))
        hit = (t0, sp, slices)
        self._field_cache[field_name] = hit
        return hit

    def set_array(self, field_name: str, values: np.ndarray | Sequence[float]) -> None:
        """Set per-cell tag ``field_name`` for all cells from an array in cell order (fast path)."""
        t0, sp, slices = self._field(field_name)
        regs = sp.regs
        assert regs is not None
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        names = self.tagmap.cell_tags(field_name)
        if v.shape[0] != len(names):
            raise ValueError(f"{field_name}: expected {len(names)} values (one per cell), got {v.shape[0]}")
        if t0.type is DataType.BOOL:
            inv = t0.invert
            for (i, mask), x in zip(self._bit_slots(field_name, names), v.tolist(), strict=False):
                regs[i] = (regs[i] | mask) if bool(x) != inv else (regs[i] & ~mask & 0xFFFF)
            return
        if t0.wraps:
            lo, hi = RAW_RANGE[t0.type]
            raw = np.rint((v - t0.offset) / t0.scale)
            raw = (raw - lo) % (hi - lo + 1) + lo
            words = codec.raw_array_to_words(raw.astype(np.int64), t0.type, t0.word_order)
        else:
            words = codec.encode_array(v, t0.type, t0.word_order, t0.scale, t0.offset, allow_nonfinite=True)
        for w, (a, b, s) in enumerate(slices):
            regs[a:b:s] = words[:, w].tolist()

    def _bit_slots(self, field_name: str, names: Sequence[str]) -> list[tuple[int, int]]:
        """(register list index, bit mask) of every cell's bit for a bool per-cell tag."""
        key = "bits:" + field_name
        hit = self._bit_cache.get(key)
        if hit is None:
            hit = []
            for n in names:
                t = self.tagmap[n]
                sp = self._space(t)
                if t.bit is not None:
                    hit.append((t.address - sp.start, 1 << t.bit))
                else:
                    hit.append((t.address // 16 - sp.start, 1 << (t.address % 16)))
            self._bit_cache[key] = hit
        return hit

    def get_array(self, field_name: str) -> np.ndarray:
        """Engineering values of per-cell tag ``field_name`` for all cells (float64, cell order)."""
        t0, sp, slices = self._field(field_name)
        regs = sp.regs
        assert regs is not None
        if t0.type is DataType.BOOL:
            slots = self._bit_slots(field_name, self.tagmap.cell_tags(field_name))
            inv = t0.invert
            return np.array([1.0 if bool(regs[i] & mask) != inv else 0.0 for i, mask in slots])
        words = np.stack([np.asarray(regs[a:b:s], dtype=np.uint16) for (a, b, s) in slices], axis=1)
        eng, _finite = codec.decode_array(words, t0.type, t0.word_order, t0.scale, t0.offset)
        return eng


def _spans(mask: bytearray) -> list[tuple[int, int]]:
    """Inclusive (lo, hi) runs of non-zero bytes in ``mask``."""
    arr = np.frombuffer(bytes(mask), dtype=np.uint8) != 0
    if not arr.any():
        return []
    d = np.diff(np.concatenate(([0], arr.astype(np.int8), [0])))
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1) - 1
    return list(zip(starts.tolist(), ends.tolist(), strict=False))


# ---------------------------------------------------------------------- the listener


_MBAP = 7  # transaction id, protocol id, length, unit id
_MAX_LENGTH = 254  # MBAP length field: unit id + function code + at most 252 data bytes


@functools.cache
def _server_class() -> type[Any]:
    """pymodbus's ``ModbusTcpServer`` with our connection handling (imported lazily).

    pymodbus 3.16 answers one request per TCP read and drops the rest of a pipelined
    write (its ``send`` clears the receive buffer); it keeps every connection forever.
    The handler here frames every complete request of the buffer itself, answers them
    in order from one task per connection, and keeps partial frames across its answers.
    """
    import time

    from pymodbus.constants import ExcCodes
    from pymodbus.exceptions import NoSuchIdException
    from pymodbus.pdu import ExceptionResponse
    from pymodbus.server import ModbusTcpServer
    from pymodbus.server.requesthandler import ServerRequestHandler

    class Handler(ServerRequestHandler):
        def __init__(self, owner: Any, *args: Any) -> None:
            super().__init__(owner, *args)
            self.last_activity = time.monotonic()
            self._queue: asyncio.Queue[Any] = asyncio.Queue()
            self._worker: asyncio.Task[None] | None = None

        @property
        def tag_server(self) -> ModbusTagServer:
            return cast("ModbusTagServer", self.server.owner)

        def datagram_received(self, data: bytes, addr: tuple[Any, ...] | None) -> None:
            self.last_activity = time.monotonic()
            self.recv_buffer += data
            used = self._frames(self.recv_buffer)
            self.recv_buffer = self.recv_buffer[used:]

        def _frames(self, buf: bytes) -> int:
            """Queue every complete request of ``buf``; the bytes used."""
            owner = self.tag_server
            used = 0
            while len(buf) - used >= 6:
                head = buf[used : used + 6]
                tid, pid, length = int.from_bytes(head[0:2], "big"), int.from_bytes(head[2:4], "big"), int.from_bytes(head[4:6], "big")  # fmt: skip
                if pid != 0:
                    owner._closed(self, "protocol", f"MBAP protocol id {pid}, expected 0 (Modbus)")
                    return len(buf)
                if not 2 <= length <= _MAX_LENGTH:
                    owner._closed(self, "protocol", f"MBAP length {length}, expected 2..{_MAX_LENGTH}")
                    return len(buf)
                end = used + 6 + length
                if len(buf) < end:
                    break
                dev_id, pdu_bytes = buf[used + 6], buf[used + _MBAP : end]
                used = end
                if self._queue.qsize() >= owner.max_pipelined:
                    owner._closed(self, "pipelined",
                                  f"more than {owner.max_pipelined} requests waiting for their answers")  # fmt: skip
                    return len(buf)
                fc = pdu_bytes[0]
                pdu = self.framer.decoder.decode(pdu_bytes) if fc < 0x80 else None
                if pdu is None:
                    self._queue.put_nowait(ExceptionResponse(fc & 0x7F, ExcCodes.ILLEGAL_FUNCTION, dev_id, tid))
                else:
                    pdu.dev_id, pdu.transaction_id = dev_id, tid
                    self._queue.put_nowait(pdu)
                if self._worker is None:
                    self._worker = asyncio.get_running_loop().create_task(self._serve(), name="modbus-connection")
            return used

        async def _serve(self) -> None:
            while True:
                item = await self._queue.get()
                if isinstance(item, ExceptionResponse):
                    self.pdu_send(item)
                    continue
                try:
                    response = await item.datastore_update(self.server.context, item.dev_id)
                except NoSuchIdException:
                    response = ExceptionResponse(item.function_code, ExcCodes.GATEWAY_NO_RESPONSE)
                except Exception:  # a datastore failure answers this request, the connection stays
                    log.exception("modbus_server_request_failed", function_code=item.function_code)
                    response = ExceptionResponse(item.function_code, ExcCodes.DEVICE_FAILURE)
                response.transaction_id, response.dev_id = item.transaction_id, item.dev_id
                if self.transport is None:
                    return
                self.pdu_send(response)

        def send(self, data: bytes, addr: tuple[Any, ...] | None = None) -> None:
            """Write an answer; unlike pymodbus's ``send`` the receive buffer (the next,
            partly received request) is kept."""
            if self.transport is not None:
                cast("asyncio.Transport", self.transport).write(data)

        def callback_disconnected(self, exc: Exception | None) -> None:
            super().callback_disconnected(exc)
            if self._worker is not None:
                self._worker.cancel()

    class Server(ModbusTcpServer):
        owner: ModbusTagServer

        def callback_new_connection(self) -> Any:
            owner = self.owner
            if len(self.active_connections) >= owner.max_connections:
                quiet = min(self.active_connections.values(), key=lambda h: getattr(h, "last_activity", 0.0))
                owner._closed(quiet, "evicted",
                              f"{owner.max_connections} connections open (max_connections): the quietest closed "
                              "for a new one")  # fmt: skip
            return Handler(self, self.trace_packet, self.trace_pdu, self.trace_connect)

    return Server
