"""Listener limits of the web HMI (issue 15, item 6), over real loopback sockets.

The HMI runs in the daemon's own event loop: without limits every client that connects
and never finishes its request holds a socket (a file descriptor) and a task for ever.
Now: at most ``max_connections`` (the oldest idle one closed for a newcomer, a newcomer
closed when every connection is busy), a request head complete within
``idle_timeout_s`` of connecting however slowly it trickles, kept-alive connections
closed when idle. Checked on an HMI in this process with a small cap, and on a real
``potline run`` in control against a HIL rig: more clients than the cap on both its HMI
and metrics ports, and the daemon still serves both and keeps controlling.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from pathlib import Path

import pytest

from plc_bridge.ports import free_port
from potline.hmi import HmiConfig, HmiServer, LocalSource
from tests.potline.daemon_support import (
    DaemonProcess,
    daemon_config,
    http_get,
    plc_remote,
    rig_scenario,
    start_rig,
    until,
    wait_cycles,
)
from tests.potline.test_hmi_support import PlantFeed, make_plant, users
from tests.waits import wait_until

CAP = 16
IDLE_S = 1.5


def _connect(port: int, n: int, head: bytes = b"") -> list[socket.socket]:
    """``n`` clients that connect and send ``head`` (nothing, or the start of a request)."""
    out = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        if head:
            s.sendall(head)
        s.setblocking(False)
        out.append(s)
        if i % 20 == 19:
            time.sleep(0.02)  # let the listener accept them (no backlog overflow)
    return out


def _closed_by_server(s: socket.socket) -> bool:
    """The server closed this connection (EOF or reset), without answering anything."""
    try:
        data = s.recv(4096)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return data == b""


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _get(url: str, timeout: float = 10.0) -> tuple[int, str]:
    return await asyncio.to_thread(http_get, url, timeout)


@pytest.fixture
async def hmi(tmp_path: Path):
    layout = make_plant((8,))
    feed = PlantFeed(layout, tmp_path, t0=float(int(time.time())))
    source = LocalSource(layout, feed.alarms, clock=lambda: feed.t - feed.t0, history_path=tmp_path / "history.db",
                         journal_path=tmp_path / "journal.db")  # fmt: skip
    cfg = HmiConfig(port=free_port(), max_connections=CAP, idle_timeout_s=IDLE_S)
    server = HmiServer(source, cfg, users=users())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
        source.close()
        feed.close()


async def test_more_idle_clients_than_the_cap_the_oldest_closed_and_the_hmi_still_answers(hmi: HmiServer) -> None:
    socks = await asyncio.to_thread(_connect, hmi.port, 3 * CAP)
    try:
        # an operator's request still gets through (an idle connection is closed for it)
        status, body = await _get(f"{hmi.url}/api/plant")
        assert status == 200 and json.loads(body)["rooms"]
        runner = hmi._runner
        assert runner is not None
        assert runner.open_connections() <= CAP
        assert runner.stats.closed.get("evicted", 0) >= 2 * CAP
        # the oldest were closed for the newcomers, the newest are still open
        assert all(_closed_by_server(s) for s in socks[: 2 * CAP - 1])
        assert not any(_closed_by_server(s) for s in socks[-CAP // 2 :])
    finally:
        for s in socks:
            s.close()


async def test_a_client_trickling_its_request_head_is_closed_after_the_idle_timeout(hmi: HmiServer) -> None:
    (slow,) = await asyncio.to_thread(_connect, hmi.port, 1, b"GET /api/plant HTTP/1.1\r\nX-Slow: ")
    t0 = time.monotonic()
    try:

        def trickle() -> bool:
            with contextlib.suppress(OSError):  # closed by the server: what it should do
                slow.send(b"a")
            return _closed_by_server(slow)

        await wait_until(trickle, 30 * IDLE_S, "the trickling client closed", poll_s=0.2)
        took = time.monotonic() - t0
        assert IDLE_S * 0.9 <= took <= IDLE_S + 10.0, took  # bytes kept coming: it is the head's deadline
    finally:
        slow.close()

    def kept_alive() -> tuple[bytes, float]:
        """A request on a kept-alive connection, then nothing: (all it got, seconds until the close)."""
        with socket.create_connection(("127.0.0.1", hmi.port), timeout=30) as s:
            s.sendall(b"GET /api/session HTTP/1.1\r\nHost: x\r\n\r\n")
            got, t1 = b"", time.monotonic()
            while chunk := s.recv(65536):
                got += chunk
            return got, time.monotonic() - t1

    got, after = await asyncio.to_thread(kept_alive)
    assert got.startswith(b"HTTP/1.1 200") and IDLE_S * 0.9 <= after <= IDLE_S + 10.0, (got[:40], after)


async def test_when_every_connection_is_busy_a_newcomer_is_closed_and_the_busy_ones_keep_streaming(
    hmi: HmiServer,
) -> None:
    """Live-update streams are requests in progress: neither the idle timeout nor the cap
    closes one (for a newcomer)."""
    streams = []

    async def open_stream() -> None:
        r, w = await asyncio.open_connection("127.0.0.1", hmi.port)
        w.write(b"GET /api/stream HTTP/1.1\r\nHost: x\r\n\r\n")
        await w.drain()
        line = await asyncio.wait_for(r.readline(), 30.0)
        assert line.startswith(b"HTTP/1.1 200"), line
        streams.append((r, w))

    try:
        for _ in range(CAP - 1):
            await open_stream()
        # a silent connection opened after them: once the idle timeout closed it, the
        # streams have been open longer than that
        (silent,) = await asyncio.to_thread(_connect, hmi.port, 1)
        await wait_until(lambda: _closed_by_server(silent), 30 * IDLE_S, "the silent connection closed", poll_s=0.1)
        silent.close()
        assert all(not w.is_closing() and not r.at_eof() for r, w in streams)
        await open_stream()  # CAP streams now
        r2, w2 = await asyncio.open_connection("127.0.0.1", hmi.port)
        w2.write(b"GET /api/plant HTTP/1.1\r\nHost: x\r\n\r\n")
        await w2.drain()
        try:
            answer = await asyncio.wait_for(r2.read(), 30.0)
        except ConnectionResetError:  # closed with the request unread: a reset
            answer = b""
        assert answer == b"", answer[:40]  # closed without an answer
        w2.close()
        assert hmi._runner is not None and hmi._runner.stats.closed.get("refused", 0) >= 1
        assert all(not w.is_closing() and not r.at_eof() for r, w in streams)
        assert hmi._runner.open_connections() == CAP
    finally:
        for _r, w in streams:
            w.close()


@pytest.mark.hil
@pytest.mark.timeout(420)
async def test_a_daemon_in_control_keeps_serving_and_controlling_with_more_clients_than_its_caps(tmp_path) -> None:
    rig = await start_rig(rig_scenario(speed=20.0, watchdog_s=20.0))
    dp = None
    socks: list[socket.socket] = []
    try:
        cfg, data = daemon_config(tmp_path, rig, mode="control")
        hport, mport = data["_ports"]["hmi"], data["_ports"]["metrics"]
        assert hport, "the example config serves the HMI"
        dp = await DaemonProcess(cfg).start()
        await dp.wait_event("mode.changed", pred=lambda e: e["mode"] == "control")
        await until(lambda: plc_remote(rig, "potroom:Potroom1"), "the potroom in remote under control")
        await until(lambda: http_get(f"http://127.0.0.1:{hport}/api/plant")[0] == 200, "the HMI answering")
        fds0 = _open_fds(dp.pid)
        # 300 clients on the HMI (cap 128) and 300 on the metrics port (cap 32), half of them
        # trickling a request head, half silent
        for port in (hport, mport):
            socks += await asyncio.to_thread(_connect, port, 150)
            socks += await asyncio.to_thread(_connect, port, 150, b"GET / HTTP/1.1\r\nX-Slow: ")
        # bounded by the caps, not by the clients: a burst the daemon has accepted holds its fds
        # until the cap's decision closes them (the next turn of its loop; on a busy machine later)
        await until(lambda: _open_fds(dp.pid) <= fds0 + 128 + 32 + 20,
                    f"the daemon's fds within the caps (started at {fds0})", timeout=15.0, step=0.2)  # fmt: skip
        # still serving: the HMI's snapshot, the metrics' health; still controlling: cycles run,
        # the PLCs stay in remote (their watchdogs would drop them to local if the heartbeat stopped)
        status, body = await _get(f"http://127.0.0.1:{hport}/api/snapshot")
        assert status == 200 and len(json.loads(body)["cells"]["u"]) == 8
        assert (await _get(f"http://127.0.0.1:{mport}/healthz"))[0] == 200
        await wait_cycles(mport, 5)
        assert plc_remote(rig, "potroom:Potroom1") and plc_remote(rig, "rectifier:Line1")
        # the silent and trickling clients are closed by the timeouts (HMI 30 s, metrics 5 s)
        await until(lambda: sum(_closed_by_server(s) for s in socks) >= len(socks) - 5,
                    "the held connections closed by the listeners", timeout=120.0, step=0.5)  # fmt: skip
        assert dp.returncode is None and not dp.find("mode.changed", lambda e: e["mode"] != "control")
        assert await dp.stop() == 0
    finally:
        for s in socks:
            s.close()
        if dp is not None and dp.returncode is None:
            await dp.kill()
        await rig.stop()
