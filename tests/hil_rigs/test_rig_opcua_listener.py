"""The rig's OPC UA listener: a connection cap and no idle connection held (issue 15, item 6).

Raw TCP connections that never open a session take a slot only until the activation
timeout; beyond ``max_connections`` a connection is closed at once; a real client gets in
once the squatters are gone. Real sockets on loopback.
"""

from __future__ import annotations

import asyncio
import socket
import time

from asyncua import Client

from hil_rigs.edges import OpcUaEdge
from hil_rigs.plc_image import PlcImage
from plc_bridge.plant import rectifier_tagmap
from tests.waits import wait_until


def _closed_within(sock: socket.socket, timeout_s: float) -> float | None:
    """Seconds until the peer closed ``sock`` (None: still open after ``timeout_s``)."""
    t0 = time.monotonic()
    sock.settimeout(timeout_s)
    try:
        if sock.recv(1) == b"":
            return time.monotonic() - t0
    except TimeoutError:
        return None
    except ConnectionResetError:
        return time.monotonic() - t0
    return None


def _open(sock: socket.socket) -> bool:
    """True while the peer has not closed ``sock`` (nothing to read, no EOF)."""
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False
    finally:
        sock.setblocking(True)


async def _edge(**limits: float) -> OpcUaEdge:
    edge = OpcUaEdge(PlcImage(rectifier_tagmap("Line1")))
    for k, v in limits.items():
        setattr(edge, k, v)
    await edge.start()
    return edge


async def test_connections_beyond_the_cap_are_closed_at_once() -> None:
    edge = await _edge(max_connections=4, activation_timeout_s=60.0)
    socks: list[socket.socket] = []
    try:
        for _ in range(8):
            socks.append(await asyncio.to_thread(socket.create_connection, ("127.0.0.1", edge.port), 10))
        extra = [await asyncio.to_thread(_closed_within, s, 30.0) for s in socks[4:]]
        assert all(c is not None for c in extra), extra  # closed long before the 60 s activation timeout
        assert all(_open(s) for s in socks[:4])  # the first four hold their slots
        assert len(edge._server.bserver.clients) == 4
    finally:
        for s in socks:
            s.close()
        await edge.stop()


async def test_connections_without_a_session_are_closed_and_a_client_gets_in() -> None:
    edge = await _edge(max_connections=4, activation_timeout_s=1.0)
    socks: list[socket.socket] = []
    try:
        for _ in range(4):  # squatters: connect, never say hello
            socks.append(await asyncio.to_thread(socket.create_connection, ("127.0.0.1", edge.port), 10))
        closed = [await asyncio.to_thread(_closed_within, s, 30.0) for s in socks]
        assert all(c is not None for c in closed), closed

        async def served() -> bool:
            async with Client(edge.endpoint_url, timeout=10) as client:
                return await client.nodes.server_state.read_value() is not None

        assert await wait_until(served, 30.0, "a real client served once the squatters are gone")
    finally:
        for s in socks:
            s.close()
        await edge.stop()
