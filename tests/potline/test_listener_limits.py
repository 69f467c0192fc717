"""Listener limits of the daemon's HTTP endpoint (issue 15, item 6), over real loopback sockets.

The red team held 400 trickling clients on ``/metrics`` and the daemon grew 405 threads
(one per client). The listener now runs in one thread whatever the clients do: at most
``max_connections`` at once (the quietest closed for a newcomer), a request head complete
within ``header_timeout_s``, kept-alive connections closed when idle. Checked on the
listener in this process (thread count, what each client gets back) and on a real
``potline run`` process (its ``Threads:`` in /proc while 400 clients trickle).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from plc_bridge.ports import free_port
from potline.metrics import DaemonMetrics, HealthState, MetricsServer
from tests.potline.daemon_support import DaemonProcess, daemon_config, http_get
from tests.waits import wait_until, wait_until_sync

TRICKLERS = 400


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    health = HealthState(stall_s=10.0, last_cycle_mono=time.monotonic())
    srv = MetricsServer(DaemonMetrics("Bench"), health, port=free_port(), clock=time.monotonic,
                        max_connections=32, header_timeout_s=1.0, idle_timeout_s=1.0)  # fmt: skip
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _trickle(port: int, n: int, seconds: float) -> list[socket.socket]:
    """``n`` clients that each start a request and then send one byte a second, never finishing it."""
    socks: list[socket.socket] = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
        s.setblocking(False)
        socks.append(s)
        if i % 20 == 19:
            time.sleep(0.02)  # let the listener accept them (no backlog overflow: every client gets in)
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        for s in socks:
            with contextlib.suppress(OSError):  # closed by the listener: what it should do
                s.send(b"a")
        time.sleep(0.25)
    return socks


def _raw(port: int, payload: bytes) -> bytes:
    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(payload)
        try:
            while chunk := s.recv(4096):
                out += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return out


def test_400_trickling_clients_cost_no_thread_and_health_still_answers(server: MetricsServer) -> None:
    threads_before = threading.active_count()
    done = threading.Event()
    peak = [threads_before]

    def watch() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], threading.active_count() - 1)  # minus this watcher

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    socks = _trickle(server.port, TRICKLERS, seconds=2.0)
    try:
        assert server.connections <= server.max_connections
        status, body = http_get(f"{server.url}/healthz", timeout=10)  # answered while they trickle
        assert status == 200 and '"status": "ok"' in body
    finally:
        done.set()
        watcher.join()
        for s in socks:
            s.close()
    # not one thread per client (was 400 more): a few threads of earlier tests in this process may come and go
    assert peak[0] < threads_before + 10, (peak[0], threads_before)
    # every trickler was closed: evicted for newcomers or out of time for its request head
    closed = server.closed.get("evicted", 0) + server.closed.get("header_timeout", 0)
    wait_until_sync(lambda: server.closed.get("evicted", 0) + server.closed.get("header_timeout", 0) >= TRICKLERS,
                    30.0, "every trickling client closed", detail=lambda: server.closed)  # fmt: skip
    assert closed <= TRICKLERS + 1


def test_keep_alive_head_and_http_1_0(server: MetricsServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        r = conn.getresponse()
        assert r.status == 200 and b"potline_cycles_total" in r.read()
        conn.request("HEAD", "/healthz")  # the same connection, kept alive
        r = conn.getresponse()
        assert r.status == 200 and int(r.getheader("Content-Length")) > 0 and r.read() == b""
        conn.request("GET", "/nope")
        r = conn.getresponse()
        assert r.status == 404
        r.read()
    finally:
        conn.close()
    reply = _raw(server.port, b"GET /readyz HTTP/1.0\r\n\r\n")  # HTTP/1.0: answered, then closed
    assert reply.startswith(b"HTTP/1.1 503 ") and b"Connection: close" in reply and b"no control cycle yet" in reply


def test_bad_requests_are_answered_and_closed(server: MetricsServer) -> None:
    assert b"400 - Bad request" in _raw(server.port, b"\x16\x03\x01 not http at all\r\n\r\n")
    reply = _raw(server.port, b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
    assert reply.split(b"\r\n", 1)[0] == b"HTTP/1.1 405 Method Not Allowed" and b"Allow: GET, HEAD" in reply
    reply = _raw(server.port, b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"x" * 20000 + b"\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 431 ")
    assert b"400 - Bad request" in _raw(server.port, b"GET /metrics HTTP/2.0\r\n\r\n")
    assert server.closed.get("too_large") == 1 and server.closed.get("bad_request") == 2


def test_idle_connections_are_closed_and_the_cap_holds(server: MetricsServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/healthz")
    assert conn.getresponse().read()
    wait_until_sync(lambda: server.closed.get("idle", 0) >= 1, 30.0, "a kept-alive connection closed when idle",
                    detail=lambda: server.closed)  # fmt: skip
    conn.close()
    # silent connections beyond the cap: the quietest make room, a newcomer is served
    socks = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(server.max_connections + 8)]
    try:
        wait_until_sync(lambda: server.closed.get("evicted", 0) >= 8, 30.0, "the quietest evicted",
                        detail=lambda: server.closed)  # fmt: skip
        assert server.connections <= server.max_connections
        assert http_get(f"{server.url}/healthz", timeout=10)[0] == 200
    finally:
        for s in socks:
            s.close()


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads: line")


@pytest.mark.timeout(300)
async def test_a_running_daemon_keeps_its_thread_count_under_400_trickling_clients(tmp_path: Path) -> None:
    """A real ``potline run`` (its PLCs unreachable: it starts and keeps retrying) while 400
    clients trickle on its metrics port: its thread count stays where it was."""
    cfg, data = daemon_config(tmp_path, None, ports={"rectifier": free_port(), "potroom": free_port()})
    port = data["_ports"]["metrics"]
    dp = await DaemonProcess(cfg).start()
    try:
        await dp.wait_event("daemon.first_cycle", timeout=180.0)
        await wait_until(lambda: http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200, 60.0, "/healthz 200")
        before = _threads(dp.pid)
        task = asyncio.create_task(asyncio.to_thread(_trickle, port, TRICKLERS, 4.0))
        during: list[int] = []
        while not task.done():
            during.append(_threads(dp.pid))
            await asyncio.sleep(0.1)
        for s in await task:
            s.close()
        status, _ = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/healthz", 10.0)
        assert status == 200
        assert max(during) <= before + 4, (before, max(during))  # was before + 400
        assert dp.returncode is None
    finally:
        await dp.stop()
