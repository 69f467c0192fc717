"""Modbus TCP client that reads and writes a tag map (pymodbus 3.16 async).

``ModbusTagClient`` talks to one PLC (one host:port, any device ids in its map):

* ``scan()`` reads every tag in planned contiguous blocks (<= 125 registers,
  small gaps merged) and decodes them in bulk with NumPy into a ``Scan``
  (values, quality and reason per tag; ``Scan.array(field)`` for per-cell
  arrays); ``read_all()`` gives the same as ``dict[tag, Sample]``;
* ``read(names)`` reads a few tags (read-back after a write);
* ``write(tag, value)`` encodes an engineering value per the map and writes it
  (one attempt, no queue: the safety layer decides about retries).

Failures never raise out of these calls: Modbus exception replies, timeouts and
lost connections come back as tag quality BAD with a reason
(``"modbus exception 2 illegal address"``, ``"timeout"``, ``"not connected"``).
Requests time out after ``timeout_s`` and are retried ``retries`` times with
exponential backoff; after a timeout the connection is dropped (a late answer
must not be taken for the next request) and re-opened. While the PLC is
unreachable, reconnects are attempted at most every ``reconnect_min_s`` ..
``reconnect_max_s`` (doubling), at the next call, so a client scanned at least
once a second is back within ~``reconnect_max_s`` + one scan of the server's
return. A block a device refuses with exception 2 because it spans unused
addresses is split into gap-free requests for good.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog

from plc_bridge import codec
from plc_bridge.codec import DataType, ReadBlock, Table, plan_blocks
from plc_bridge.quality import Quality, Sample, WriteResult, modbus_exception_reason
from plc_bridge.tagmap import Tag, TagMap

__all__ = ["ClientStats", "ModbusTagClient", "Scan", "WriteResult", "reason_text"]

log = structlog.get_logger(__name__)

# reason codes stored per tag in a Scan (positive = Modbus exception code)
GOOD = 0
TIMEOUT = -1
NOT_CONNECTED = -2
CONNECTION_LOST = -3
PROTOCOL_ERROR = -4
NON_FINITE = -5
RANGE_EXCEEDED = -6
NOT_READ = -7
IMPLAUSIBLE = -8

_REASONS = {
    TIMEOUT: "timeout",
    NOT_CONNECTED: "not connected",
    CONNECTION_LOST: "connection lost",
    PROTOCOL_ERROR: "protocol error",
    NON_FINITE: "non-finite",
    RANGE_EXCEEDED: "engineering range exceeded",
    NOT_READ: "not read",
    IMPLAUSIBLE: "implausible",
}


def reason_text(code: int) -> str:
    """Human reason for a scan reason code."""
    if code > 0:
        return modbus_exception_reason(code)
    return _REASONS.get(code, "")


class _NoClock:
    """Fallback clock: the event loop's monotonic time [s]."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()


@dataclass(slots=True)
class ClientStats:
    """Counters of one client (for metrics: comms errors per device etc.)."""

    requests: int = 0
    exceptions: int = 0
    timeouts: int = 0
    connection_errors: int = 0
    connects: int = 0
    failed_connects: int = 0
    scans: int = 0
    writes: int = 0
    write_failures: int = 0
    last_scan_s: float = 0.0
    split_blocks: int = 0


class _Result:
    __slots__ = ("code", "data", "ok")

    def __init__(self, ok: bool, code: int = 0, data: Any = None) -> None:
        self.ok, self.code, self.data = ok, code, data


@dataclass(slots=True)
class _WordGroup:
    """Register-valued tags decoded together (same space, type and word order)."""

    key: tuple[int, Table]
    dtype: DataType
    word_order: codec.WordOrder
    tag_idx: np.ndarray
    addr: np.ndarray  # [n, words]
    scale: np.ndarray
    offset: np.ndarray
    lo: np.ndarray  # engineering range; -inf/+inf where the tag has none
    hi: np.ndarray
    plo: np.ndarray  # plausibility range; -inf/+inf where the tag has none
    phi: np.ndarray
    special: list[tuple[int, Tag]]  # (position in the group, tag) of enumerated tags


@dataclass(slots=True)
class _BitGroup:
    """Bool tags decoded together: a bit table (``bit`` None) or bits of registers."""

    key: tuple[int, Table]
    tag_idx: np.ndarray
    addr: np.ndarray  # [n]
    bit: np.ndarray | None  # [n] bit index in the register; None for coils / discrete inputs
    invert: np.ndarray  # [n] bool: read negated
    byte_swap: bool = False  # registers byte-swapped (BADC/DCBA): bits count on the swapped value


class Scan:
    """All tags of one read sweep, decoded.

    Attributes:
        t: time of the scan on the client's clock [s].
        values: [n_tags] engineering values (float64; NaN where nothing usable).
        quality: [n_tags] ``Quality`` codes (uint8).
        codes: [n_tags] reason codes (0 = good; see ``reason_text``).
        duration_s: wall time the sweep took [s].
    """

    __slots__ = ("_names", "codes", "detail", "duration_s", "quality", "t", "tagmap", "values")

    def __init__(self, tagmap: TagMap, names: Sequence[str], t: float, values: np.ndarray,
                 quality: np.ndarray, codes: np.ndarray, duration_s: float,
                 detail: dict[int, str] | None = None) -> None:  # fmt: skip
        self.tagmap = tagmap
        self._names = {n: i for i, n in enumerate(names)}
        self.t = t
        self.values = values
        self.quality = quality
        self.codes = codes
        self.duration_s = duration_s
        #: tag index -> reason of an IMPLAUSIBLE value (which value, which range)
        self.detail: dict[int, str] = detail or {}

    @property
    def names(self) -> list[str]:
        return list(self._names)

    @property
    def all_good(self) -> bool:
        return bool((self.quality == Quality.GOOD).all())

    def sample(self, name: str) -> Sample:
        """The ``Sample`` of tag ``name``."""
        try:
            i = self._names[name]
        except KeyError:
            raise KeyError(f"tag {name!r} was not part of this scan") from None
        return self._sample(self.tagmap.tags[name], i)

    def _sample(self, tag: Tag, i: int) -> Sample:
        code = int(self.codes[i])
        q = Quality(int(self.quality[i]))
        v = float(self.values[i])
        value: float | int | bool | None
        if code not in (GOOD, RANGE_EXCEEDED):
            return Sample.bad(self.detail.get(i) or reason_text(code), self.t)
        if tag.reads_bool:
            value = bool(v)
        elif tag.type.is_int and tag.scale == 1.0 and tag.offset == 0.0:
            value = int(v)
        else:
            value = v
        if code == RANGE_EXCEEDED:
            side = f"> max {tag.max:g}" if tag.max is not None and v > tag.max else f"< min {tag.min:g}"
            return Sample(value, q, self.t, f"engineering range exceeded: {v:g} {side}")
        return Sample(value, q, self.t, "")

    def samples(self, names: Iterable[str] | None = None) -> dict[str, Sample]:
        """``{name: Sample}`` for ``names`` (default: all tags of the scan)."""
        tags = self.tagmap.tags
        if names is not None:
            return {n: self.sample(n) for n in names}
        vals, codes, t = self.values.tolist(), self.codes.tolist(), self.t
        good = Quality.GOOD
        out: dict[str, Sample] = {}
        for (n, i), v, c in zip(self._names.items(), vals, codes, strict=False):
            if c:
                out[n] = self._sample(tags[n], i)
                continue
            tag = tags[n]
            if tag.reads_bool:
                out[n] = Sample(v != 0.0, good, t, "")
            elif tag.type.is_int and tag.scale == 1.0 and tag.offset == 0.0:
                out[n] = Sample(int(v), good, t, "")
            else:
                out[n] = Sample(v, good, t, "")
        return out

    def value(self, name: str) -> float:
        return float(self.values[self._names[name]])

    def good(self, name: str) -> bool:
        return int(self.quality[self._names[name]]) == Quality.GOOD

    def array(self, field_name: str) -> tuple[np.ndarray, np.ndarray]:
        """(values, good) of per-cell tag ``field_name`` in cell order (float64, bool)."""
        idx = np.fromiter((self._names[n] for n in self.tagmap.cell_tags(field_name)), dtype=np.int64)
        return self.values[idx], self.quality[idx] == Quality.GOOD


def _raw_of(g: _WordGroup, words: np.ndarray) -> float:
    return float(codec.words_to_raw_array(np.asarray(words).reshape(1, -1), g.dtype, g.word_order)[0])


class ModbusTagClient:
    """Reads and writes one PLC's tags over Modbus TCP.

    Args:
        tagmap: the PLC's tag map.
        host, port: where the PLC listens.
        clock: clock for sample timestamps (``twin.clock``); default: loop time.
        timeout_s: per-request timeout [s].
        retries: extra attempts per read request after a timeout/connection error.
        backoff_s: wait before the first retry [s], doubling per retry.
        reconnect_min_s, reconnect_max_s: reconnect attempt spacing while the PLC
            is unreachable [s] (doubles from min to max; reset on success).
        max_gap: largest run of unused addresses merged into one read request.
        tags: restrict ``scan()`` to these tag names (default: all Modbus tags).
        name: label for logs.
        on_link_change: called with True/False when the connection comes up/goes down.
    """

    def __init__(
        self,
        tagmap: TagMap,
        host: str = "127.0.0.1",
        port: int = 502,
        *,
        clock: Any = None,
        timeout_s: float = 0.5,
        retries: int = 1,
        backoff_s: float = 0.05,
        reconnect_min_s: float = 0.1,
        reconnect_max_s: float = 1.0,
        max_gap: int = 8,
        tags: Iterable[str] | None = None,
        name: str | None = None,
        on_link_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.tagmap = tagmap
        self.host = host
        self.port = int(port)
        self.clock = clock if clock is not None else _NoClock()
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self.reconnect_min_s = float(reconnect_min_s)
        self.reconnect_max_s = float(reconnect_max_s)
        self.max_gap = int(max_gap)
        self.name = name or f"{tagmap.instance}@{host}:{port}"
        self.on_link_change = on_link_change
        self.stats = ClientStats()
        self._client: Any = None
        self._up = False
        self._next_connect = 0.0
        self._reconnect_delay = self.reconnect_min_s
        self._connect_lock = asyncio.Lock()
        self._closed = False
        names = [t.name for t in tagmap.modbus_tags()] if tags is None else list(tags)
        for n in names:
            if not tagmap[n].has_modbus:
                raise ValueError(f"{tagmap.source}: tag {n!r} has no Modbus location")
        self._scan_names = names
        self._plan = plan_blocks([tagmap[n] for n in names], max_gap=self.max_gap)
        self._images: dict[tuple[int, Table], tuple[np.ndarray, np.ndarray]] = {}
        self._groups = self._build_groups(names)

    # ------------------------------------------------------------------ connection

    @property
    def connected(self) -> bool:
        """True while a connection to the PLC is open."""
        return self._up and self._client is not None and bool(self._client.connected)

    @property
    def plan(self) -> list[ReadBlock]:
        """The read requests of one ``scan()``."""
        return list(self._plan)

    async def connect(self) -> bool:
        """Try to connect now (ignores the reconnect schedule). Never raises."""
        async with self._connect_lock:
            if self.connected:
                return True
            return await self._open()

    async def _open(self) -> bool:
        from pymodbus.client import AsyncModbusTcpClient

        self._drop(notify=False)
        client = AsyncModbusTcpClient(
            self.host, port=self.port, timeout=self.timeout_s, retries=0, reconnect_delay=0, name=self.name
        )
        loop = asyncio.get_running_loop()
        try:
            ok = await asyncio.wait_for(client.connect(), timeout=self.timeout_s + 0.5)
        except (TimeoutError, OSError, Exception):
            ok = False
        if ok and client.connected:
            self._client = client
            self._reconnect_delay = self.reconnect_min_s
            self.stats.connects += 1
            if not self._up:
                self._up = True
                log.info("modbus_connected", plc=self.name)
                self._notify(True)
            return True
        client.close()
        self.stats.failed_connects += 1
        self._next_connect = loop.time() + self._reconnect_delay
        self._reconnect_delay = min(self.reconnect_max_s, self._reconnect_delay * 2)
        if self._up:
            self._up = False
            self._notify(False)
        return False

    def _drop(self, *, notify: bool = True) -> None:
        """Close the current connection (the next call reconnects)."""
        c, self._client = self._client, None
        if c is not None:
            with contextlib.suppress(Exception):
                c.close()
        if notify and self._up:
            self._up = False
            log.warning("modbus_link_down", plc=self.name)
            self._notify(False)

    def _notify(self, up: bool) -> None:
        if self.on_link_change is not None:
            try:
                self.on_link_change(up)
            except Exception:
                log.exception("on_link_change_failed", plc=self.name)

    async def _ensure(self) -> bool:
        if self._closed:
            return False
        if self.connected:
            return True
        if self._client is not None:
            self._drop()
        if asyncio.get_running_loop().time() < self._next_connect:
            return False
        async with self._connect_lock:
            if self.connected:
                return True
            if asyncio.get_running_loop().time() < self._next_connect:
                return False
            return await self._open()

    async def close(self) -> None:
        """Close the connection; further calls return "not connected"."""
        self._closed = True
        self._drop()
        await asyncio.sleep(0)  # let the transport actually close the socket

    async def __aenter__(self) -> ModbusTagClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ requests

    async def _call(self, fn_name: str, *args: Any, retries: int | None = None, **kw: Any) -> _Result:
        """One request with timeout handling, retries and reconnects. Never raises."""
        from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

        n_retries = self.retries if retries is None else retries
        code = NOT_CONNECTED
        for attempt in range(n_retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff_s * (2 ** (attempt - 1)))
            if not await self._ensure():
                # the reconnect schedule, not request retries, paces a dead link
                return _Result(False, NOT_CONNECTED if attempt == 0 else code)
            client = self._client
            self.stats.requests += 1
            try:
                rr = await asyncio.wait_for(getattr(client, fn_name)(*args, **kw), timeout=self.timeout_s * 2 + 0.1)
            except (TimeoutError, ModbusIOException):
                self.stats.timeouts += 1
                code = TIMEOUT
                self._drop()
                self._next_connect = 0.0  # reconnect at once: the PLC answered before
                continue
            except (ConnectionException, OSError):
                self.stats.connection_errors += 1
                code = CONNECTION_LOST
                self._drop()
                continue
            except ModbusException as exc:
                self.stats.connection_errors += 1
                log.warning("modbus_protocol_error", plc=self.name, error=str(exc))
                self._drop()
                code = PROTOCOL_ERROR
                continue
            if rr is None:
                return _Result(False, PROTOCOL_ERROR)
            if rr.isError():
                self.stats.exceptions += 1
                return _Result(False, int(getattr(rr, "exception_code", 4) or 4), rr)
            return _Result(True, GOOD, rr)
        return _Result(False, code)

    def _image(self, key: tuple[int, Table]) -> tuple[np.ndarray, np.ndarray]:
        img = self._images.get(key)
        if img is None:
            img = (np.zeros(65536 + 4, dtype=np.uint16), np.full(65536 + 4, NOT_READ, dtype=np.int16))
            self._images[key] = img
        return img

    async def _read_block(self, b: ReadBlock) -> int:
        """Read one block into the image; returns the reason code (0 ok)."""
        words, status = self._image((b.device_id, b.table))
        fn = {
            Table.HOLDING: "read_holding_registers",
            Table.INPUT: "read_input_registers",
            Table.COIL: "read_coils",
            Table.DISCRETE: "read_discrete_inputs",
        }[b.table]
        res = await self._call(fn, b.start, count=b.count, device_id=b.device_id)
        if res.ok:
            data = res.data.bits if b.table.is_bits else res.data.registers
            if len(data) < b.count:
                status[b.start : b.end] = PROTOCOL_ERROR
                return PROTOCOL_ERROR
            words[b.start : b.end] = np.asarray(data[: b.count], dtype=np.uint16)
            status[b.start : b.end] = GOOD
            return GOOD
        status[b.start : b.end] = res.code
        return res.code

    async def _read_blocks(self, blocks: list[ReadBlock], *, split_plan: bool) -> None:
        i = 0
        while i < len(blocks):
            b = blocks[i]
            code = await self._read_block(b)
            if code == 2 and b.has_gaps:
                # the device refuses unused addresses: read this block's tags without gaps
                parts = plan_blocks([self.tagmap[n] for n in b.tag_names], max_gap=0)
                log.info("modbus_block_split", plc=self.name, table=b.table.value, start=b.start, parts=len(parts))
                self.stats.split_blocks += 1
                blocks[i : i + 1] = parts
                if split_plan:
                    self._plan = list(blocks)
                continue
            if code < 0:
                # link trouble (timeout, lost, not connected): do not wait on every block
                for rest in blocks[i + 1 :]:
                    self._image((rest.device_id, rest.table))[1][rest.start : rest.end] = code
                return
            i += 1

    # ------------------------------------------------------------------ decode

    def _build_groups(self, names: list[str]) -> list[_WordGroup | _BitGroup]:
        buckets: dict[tuple, list[tuple[int, Tag]]] = {}
        for i, n in enumerate(names):
            t = self.tagmap[n]
            if t.table.is_bits:
                kind = "bit"
            elif t.type is DataType.BOOL:
                kind = "regbit"
            else:
                kind = "words"
            buckets.setdefault((t.device_id, t.table, kind, t.type, t.word_order), []).append((i, t))
        groups: list[_WordGroup | _BitGroup] = []
        inf = np.inf

        def arr(tags: list[Tag], attr: str, none: float) -> np.ndarray:
            return np.array([getattr(t, attr) if getattr(t, attr) is not None else none for t in tags], dtype=float)

        for (dev, table, kind, dtype, wo), items in buckets.items():
            idx = np.array([i for i, _ in items], dtype=np.int64)
            tags = [t for _, t in items]
            if kind == "words":
                nw = codec.REGISTER_COUNT[dtype]
                addr = np.array([[t.address + k for k in range(nw)] for t in tags], dtype=np.int64)
                special = [(k, t) for k, t in enumerate(tags) if t.enum or t.true_when is not None]
                groups.append(
                    _WordGroup((dev, table), dtype, wo, idx, addr,
                               scale=np.array([t.scale for t in tags]), offset=np.array([t.offset for t in tags]),
                               lo=arr(tags, "min", -inf), hi=arr(tags, "max", inf),
                               plo=arr(tags, "plausible_min", -inf), phi=arr(tags, "plausible_max", inf),
                               special=special)
                )  # fmt: skip
            else:
                addr = np.array([t.address for t in tags], dtype=np.int64)
                bit = np.array([t.bit or 0 for t in tags], dtype=np.uint16) if kind == "regbit" else None
                inv = np.array([t.invert for t in tags], dtype=bool)
                groups.append(_BitGroup((dev, table), idx, addr, bit, inv, kind == "regbit" and wo.byte_swap))
        return groups

    def _decode(self, t: float, duration: float) -> Scan:
        n = len(self._scan_names)
        values = np.full(n, np.nan)
        quality = np.full(n, Quality.BAD, dtype=np.uint8)
        codes = np.full(n, NOT_READ, dtype=np.int16)
        detail: dict[int, str] = {}
        for g in self._groups:
            words, status = self._image(g.key)
            if isinstance(g, _WordGroup):
                w = words[g.addr]
                st = status[g.addr]
                err = st != GOOD
                any_err = err.any(axis=1)
                code = np.where(any_err, st[np.arange(len(st)), err.argmax(axis=1)], GOOD).astype(np.int16)
                eng, finite = codec.decode_array(w, g.dtype, g.word_order, g.scale, g.offset)
                code = np.where((code == GOOD) & ~finite, NON_FINITE, code)
                with np.errstate(invalid="ignore"):
                    implausible = (eng < g.plo) | (eng > g.phi)
                    if g.dtype.is_float:
                        raw = codec.words_to_raw_array(w, g.dtype, g.word_order).astype(np.float64)
                        implausible |= (raw != 0.0) & (np.abs(raw) < codec.TINY[g.dtype])
                    out = (eng < g.lo) | (eng > g.hi)
                bad_p = (code == GOOD) & implausible
                code = np.where(bad_p, IMPLAUSIBLE, code)
                for k in np.flatnonzero(bad_p).tolist():
                    tag = self.tagmap.tags[self._scan_names[int(g.tag_idx[k])]]
                    detail[int(g.tag_idx[k])] = codec.judge(tag, float(eng[k]), t, raw=_raw_of(g, w[k])).reason
                code = np.where((code == GOOD) & out, RANGE_EXCEEDED, code)
                for k, tag in g.special:
                    if code[k] not in (GOOD, RANGE_EXCEEDED):
                        continue
                    s = codec.judge(tag, float(eng[k]), t)
                    if s.quality is Quality.BAD:
                        code[k] = IMPLAUSIBLE
                        detail[int(g.tag_idx[k])] = s.reason
                    else:
                        code[k] = GOOD if s.quality is Quality.GOOD else RANGE_EXCEEDED
                        eng[k] = float(s.value)  # type: ignore[arg-type]
                q = np.where(
                    code == GOOD, Quality.GOOD, np.where(code == RANGE_EXCEEDED, Quality.UNCERTAIN, Quality.BAD)
                )
                values[g.tag_idx] = np.where(np.isin(code, (GOOD, RANGE_EXCEEDED)), eng, np.nan)
            else:
                code = status[g.addr].astype(np.int16)
                raw = words[g.addr]
                if g.bit is not None:
                    reg = codec._swap16_array(raw) if g.byte_swap else raw
                    v = ((reg >> g.bit) & 1) != 0
                else:
                    v = raw != 0
                v = v ^ g.invert
                q = np.where(code == GOOD, Quality.GOOD, Quality.BAD)
                values[g.tag_idx] = np.where(code == GOOD, v.astype(np.float64), np.nan)
            quality[g.tag_idx] = q
            codes[g.tag_idx] = code
        return Scan(self.tagmap, self._scan_names, t, values, quality, codes, duration, detail)

    # ------------------------------------------------------------------ public API

    async def scan(self) -> Scan:
        """Read every tag of the client once. Never raises on comms problems."""
        loop = asyncio.get_running_loop()
        t = self.clock.now()
        w0 = loop.time()
        await self._read_blocks(self._plan, split_plan=True)
        self.stats.scans += 1
        self.stats.last_scan_s = loop.time() - w0
        return self._decode(t, self.stats.last_scan_s)

    async def read_all(self) -> dict[str, Sample]:
        """``{tag: Sample}`` for every tag of the client (one ``scan()``)."""
        return (await self.scan()).samples()

    async def read(self, names: Iterable[str]) -> dict[str, Sample]:
        """Read some tags now (e.g. to verify a write or re-read state after a reconnect)."""
        tags = [self.tagmap[n] for n in names]
        t = self.clock.now()
        blocks = plan_blocks(tags, max_gap=self.max_gap)
        await self._read_blocks(blocks, split_plan=False)
        out: dict[str, Sample] = {}
        for tag in tags:
            words, status = self._image((tag.device_id, tag.table))
            st = status[tag.address : tag.address + tag.n_registers]
            bad = st[st != GOOD]
            if bad.size:
                out[tag.name] = Sample.bad(reason_text(int(bad[0])), t)
                continue
            out[tag.name] = codec.decode(tag, words[tag.address : tag.address + tag.n_registers].tolist(), t)
        return out

    async def write(self, name: str, value: float | int | bool, *, recovery: bool = False) -> WriteResult:
        """Write engineering ``value`` to tag ``name`` (one attempt, never queued).

        The value must lie within the tag's bounds (the safety layer clamps; this
        is a second line of defence) -- unless ``recovery``: the safety layer is
        bringing a PLC that holds a value outside the bounds back toward them (the value
        lies between the two). An inverted bool is sent negated. Raises ValueError for
        an unknown or read-only tag (a programming error, not a plant condition).
        """
        tag = self.tagmap[name]
        if not tag.writable or tag.table not in (Table.HOLDING, Table.COIL) or tag.bit is not None:
            raise ValueError(f"{self.tagmap.source}: tag {name!r} is not writable")
        if tag.type is DataType.BOOL:
            written: float | int | bool = bool(value)
        else:
            try:
                x = float(value)
            except (TypeError, ValueError):
                return WriteResult(name, value, None, False, f"not a number: {value!r}", PROTOCOL_ERROR)
            if not (tag.lo <= x <= tag.hi) and not recovery:
                return WriteResult(name, value, None, False, f"outside bounds [{tag.lo:g}, {tag.hi:g}]", RANGE_EXCEEDED)
            try:
                words = codec.encode(tag, x)
            except codec.CodecError as exc:
                return WriteResult(name, value, None, False, str(exc), RANGE_EXCEEDED)
            written = codec.quantize(tag, x)
            if tag.type.is_int and tag.scale == 1.0 and tag.offset == 0.0:
                written = int(written)
        if tag.table is Table.COIL:
            on = bool(value) != tag.invert
            res = await self._call("write_coil", tag.address, on, device_id=tag.device_id, retries=0)
        elif tag.n_registers == 1:
            res = await self._call("write_register", tag.address, words[0], device_id=tag.device_id, retries=0)
        else:
            res = await self._call("write_registers", tag.address, words, device_id=tag.device_id, retries=0)
        self.stats.writes += 1
        if not res.ok:
            self.stats.write_failures += 1
            return WriteResult(name, value, None, False, reason_text(res.code), res.code)
        return WriteResult(name, value, written, True)
