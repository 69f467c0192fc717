"""The rig's Modbus TCP listener under misuse, over real loopback sockets (issue 15, item 6).

A simulated PLC (``ModbusEdge`` over the rectifier map, as ``hil_rigs.rig`` builds it)
must answer requests pipelined in one TCP write in order, or close the connection with a
logged reason; refuse a write that covers only one register of a 32-bit float (exception
2, value unchanged); hold at most ``max_connections`` connections, closing the quietest
for a new one; and close connections that stay idle. The client side is plain sockets
speaking Modbus TCP bytes (MBAP + PDU), so nothing of pymodbus is trusted on that side.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator

import pytest
import structlog

from hil_rigs.edges import ModbusEdge
from hil_rigs.plc_image import PlcImage
from plc_bridge.plant import rectifier_tagmap
from tests.waits import wait_until

READ_HOLDING, READ_INPUT, WRITE_ONE, WRITE_MANY = 3, 4, 6, 16


def _adu(tid: int, pdu: bytes, unit: int = 1) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


def read_req(tid: int, address: int, count: int, fc: int = READ_HOLDING) -> bytes:
    return _adu(tid, struct.pack(">BHH", fc, address, count))


def write_one(tid: int, address: int, word: int) -> bytes:
    return _adu(tid, struct.pack(">BHH", WRITE_ONE, address, word))


def write_many(tid: int, address: int, words: list[int]) -> bytes:
    return _adu(tid, struct.pack(f">BHHB{len(words)}H", WRITE_MANY, address, len(words), 2 * len(words), *words))


def f32_words(x: float) -> list[int]:
    return list(struct.unpack(">HH", struct.pack(">f", x)))


def _recv_frames(sock: socket.socket, n: int, timeout_s: float = 10.0) -> list[tuple[int, bytes]]:
    """``n`` response frames (transaction id, PDU) in arrival order; fewer if the peer closes."""
    sock.settimeout(timeout_s)
    buf, out = b"", []
    while len(out) < n:
        while len(buf) >= 6 and len(buf) >= 6 + struct.unpack(">H", buf[4:6])[0]:
            ln = struct.unpack(">H", buf[4:6])[0]
            out.append((struct.unpack(">H", buf[0:2])[0], buf[7 : 6 + ln]))
            buf = buf[6 + ln :]
            if len(out) == n:
                return out
        chunk = sock.recv(4096)
        if not chunk:
            break
        buf += chunk
    return out


def _closed_by_peer(sock: socket.socket, timeout_s: float = 10.0) -> bool:
    sock.settimeout(timeout_s)
    try:
        while chunk := sock.recv(4096):
            del chunk
    except ConnectionResetError:
        return True
    return True


@pytest.fixture
async def plc() -> AsyncIterator[ModbusEdge]:
    image = PlcImage(rectifier_tagmap("Line1"))
    edge = ModbusEdge(image, max_connections=8, idle_timeout_s=1.0, max_pipelined=16)
    await edge.start()
    image.set("line_current_sp", 120.0)  # the PLC holds 120 kA (a PLC-side change goes out with the scan)
    edge.publish()
    try:
        yield edge
    finally:
        await edge.stop()


async def test_pipelined_requests_are_answered_in_order_even_split_across_writes(plc: ModbusEdge) -> None:
    sp = plc.server.tagmap["line_current_sp"].address

    def client() -> list[tuple[int, bytes]]:
        with socket.create_connection(("127.0.0.1", plc.port), timeout=10) as s:
            # three requests in one TCP write: a read, a full float write (2 registers), a read back
            burst = read_req(1, sp, 2) + write_many(2, sp, f32_words(118.5)) + read_req(3, sp, 2)
            # ... then a fourth split in the middle of its MBAP header, the rest with a fifth
            fourth, fifth = read_req(4, sp, 2), read_req(5, 0, 1, READ_INPUT)
            s.sendall(burst + fourth[:3])
            first = _recv_frames(s, 3)
            s.sendall(fourth[3:] + fifth)
            return first + _recv_frames(s, 2)

    frames = await asyncio.to_thread(client)
    assert [tid for tid, _ in frames] == [1, 2, 3, 4, 5]
    fc, n, hi, lo = struct.unpack(">BBHH", frames[0][1])
    assert (fc, n) == (READ_HOLDING, 4) and struct.unpack(">f", struct.pack(">HH", hi, lo))[0] == 120.0
    assert frames[1][1][0] == WRITE_MANY  # no exception
    for k in (2, 3):
        _fc, _n, hi, lo = struct.unpack(">BBHH", frames[k][1])
        assert struct.unpack(">f", struct.pack(">HH", hi, lo))[0] == 118.5
    assert frames[4][1][0] == READ_INPUT
    assert plc.image.get("line_current_sp") == pytest.approx(118.5)  # the write reached the PLC's memory


async def test_too_many_pipelined_requests_close_the_connection_with_a_logged_reason(plc: ModbusEdge) -> None:
    def client() -> tuple[list[tuple[int, bytes]], bool]:
        with socket.create_connection(("127.0.0.1", plc.port), timeout=10) as s:
            s.sendall(b"".join(read_req(t, 0, 2) for t in range(1, 41)))  # 40 at once, 16 may wait
            frames = _recv_frames(s, 40)
            return frames, _closed_by_peer(s)

    with structlog.testing.capture_logs() as logs:
        frames, closed = await asyncio.to_thread(client)
    assert closed and len(frames) < 40
    assert [tid for tid, _ in frames] == list(range(1, len(frames) + 1))  # what was answered, in order
    reasons = [e for e in logs if e["event"] == "modbus_server.connection_closed"]
    assert reasons and reasons[0]["reason"] == "pipelined" and "16 requests" in reasons[0]["detail"]
    # a protocol id other than Modbus's: closed, said why
    with structlog.testing.capture_logs() as logs:
        await asyncio.to_thread(_raw_closes, plc.port, struct.pack(">HHHB", 9, 7, 6, 1) + b"\x03\x00\x00\x00\x01")
    assert any(e.get("reason") == "protocol" and "protocol id 7" in e["detail"] for e in logs)


def _raw_closes(port: int, payload: bytes) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(payload)
        return _closed_by_peer(s)


async def test_a_write_to_half_a_float_is_refused_and_changes_nothing(plc: ModbusEdge) -> None:
    sp = plc.server.tagmap["line_current_sp"].address
    assert plc.server.tagmap["line_current_sp"].n_registers == 2

    def client() -> list[tuple[int, bytes]]:
        with socket.create_connection(("127.0.0.1", plc.port), timeout=10) as s:
            s.sendall(write_one(1, sp, 0x4100))  # high word of 8.0: would make 120 kA read 8.0 kA
            s.sendall(write_one(2, sp + 1, 0x0000))  # the low word alone
            s.sendall(write_many(3, sp + 1, [0x0000, 0x3F80]))  # low word of one float + high word of the next
            s.sendall(read_req(4, sp, 2))
            return _recv_frames(s, 4)

    frames = await asyncio.to_thread(client)
    assert [tid for tid, _ in frames] == [1, 2, 3, 4]
    for _tid, pdu in frames[:3]:
        assert pdu[0] & 0x80 and pdu[1] == 2, pdu.hex()  # exception 2: illegal data address
    _fc, _n, hi, lo = struct.unpack(">BBHH", frames[3][1])
    assert struct.unpack(">f", struct.pack(">HH", hi, lo))[0] == 120.0
    assert plc.image.get("line_current_sp") == 120.0  # nothing reached the PLC's memory


async def test_connections_are_capped_and_idle_ones_closed(plc: ModbusEdge) -> None:
    socks = [await asyncio.to_thread(socket.create_connection, ("127.0.0.1", plc.port), 10) for _ in range(30)]
    try:
        await wait_until(lambda: plc.server.closed_connections.get("evicted", 0) >= 30 - 8, 30.0,
                         "the quietest connections closed beyond max_connections",
                         detail=lambda: plc.server.closed_connections)  # fmt: skip
        assert plc.server.connections <= 8

        # a client arriving now is served (it takes the place of the quietest)
        def fresh() -> list[tuple[int, bytes]]:
            with socket.create_connection(("127.0.0.1", plc.port), timeout=10) as s:
                s.sendall(read_req(77, 0, 2))
                return _recv_frames(s, 1)

        assert [tid for tid, _ in await asyncio.to_thread(fresh)] == [77]
        # nobody talks: every connection is closed after idle_timeout_s (1 s here)
        await wait_until(lambda: plc.server.connections == 0, 30.0, "idle connections closed",
                         detail=lambda: plc.server.connections)  # fmt: skip
        assert plc.server.closed_connections.get("idle", 0) >= 1
    finally:
        for s in socks:
            s.close()
