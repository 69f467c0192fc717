"""A loopback TCP proxy in front of each simulated PLC: the rig's network.

Controllers connect to the proxy, the proxy forwards to the PLC's server. That gives
protocol-independent network faults (Modbus TCP and OPC UA alike):

* ``drop("refuse")``: every connection is closed and new ones are closed at once
  (a switch port down / PLC unreachable: clients see resets and reconnect failures);
* ``drop("blackhole")``: connections stay open but nothing is forwarded (a cable pulled
  behind a switch: clients see timeouts);
* ``restore()``: forwarding again; connections that lived through a black hole are
  closed (their byte streams lost data), clients reconnect;
* ``latency_s``: every chunk is delivered that much later, in each direction, in order
  (wall seconds: the network does not run in accelerated time).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Literal

import structlog

__all__ = ["LinkProxy"]

log = structlog.get_logger(__name__)

Mode = Literal["up", "refuse", "blackhole"]


class LinkProxy:
    """TCP proxy ``host:port`` -> ``target_host:target_port`` with fault switches.

    Args:
        target_host, target_port: the PLC's server.
        host, port: where to listen (port 0 = a free port, see ``port``).
        name: label for logs.
    """

    def __init__(self, target_host: str, target_port: int, host: str = "127.0.0.1", port: int = 0,
                 name: str = "") -> None:  # fmt: skip
        self.target_host = target_host
        self.target_port = int(target_port)
        self.host = host
        self._port = int(port)
        self.name = name or f"{target_host}:{target_port}"
        self.mode: Mode = "up"
        self.latency_s = 0.0
        self.connections = 0
        self.bytes_forwarded = 0
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        return self._port

    async def start(self) -> LinkProxy:
        self._server = await asyncio.start_server(self._handle, self.host, self._port)
        self._port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._close_all()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def drop(self, mode: Literal["refuse", "blackhole"] = "refuse") -> None:
        """Take the link down (see module docstring)."""
        if mode not in ("refuse", "blackhole"):
            raise ValueError(f"link drop mode must be 'refuse' or 'blackhole', got {mode!r}")
        self.mode = mode
        if mode == "refuse":
            self._close_all()
        log.warning("link_down", link=self.name, mode=mode)

    def restore(self) -> None:
        """Bring the link back up."""
        was = self.mode
        self.mode = "up"
        if was == "blackhole":
            self._close_all()
        if was != "up":
            log.info("link_up", link=self.name)

    def retarget(self, host: str, port: int) -> None:
        """Forward new connections to another address (a PLC that restarted on a new port)."""
        self.target_host, self.target_port = host, int(port)

    def _close_all(self) -> None:
        for a, b in list(self._conns):
            for w in (a, b):
                with contextlib.suppress(Exception):
                    w.close()
        self._conns.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "refuse":
            writer.close()
            return
        try:
            t_reader, t_writer = await asyncio.wait_for(
                asyncio.open_connection(self.target_host, self.target_port), 2.0
            )
        except (TimeoutError, OSError):
            writer.close()
            return
        self.connections += 1
        pair = (writer, t_writer)
        self._conns.add(pair)
        up = asyncio.create_task(self._pump(reader, t_writer))
        down = asyncio.create_task(self._pump(t_reader, writer))
        for t in (up, down):
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)
        with contextlib.suppress(Exception):
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        for t in (up, down):
            t.cancel()
        self._conns.discard(pair)
        for w in (writer, t_writer):
            with contextlib.suppress(Exception):
                w.close()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                dst.write(data)
                await dst.drain()
                self.bytes_forwarded += len(data)

        sender = asyncio.create_task(deliver())
        try:
            while True:
                data = await src.read(65536)
                if not data:
                    break
                if self.mode == "blackhole":
                    continue
                if self.latency_s > 0 or not queue.empty():
                    queue.put_nowait((time.monotonic() + self.latency_s, data))
                else:
                    dst.write(data)
                    await dst.drain()
                    self.bytes_forwarded += len(data)
            while not queue.empty() and not sender.done():
                await asyncio.sleep(0.001)
        except (ConnectionError, OSError):
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
