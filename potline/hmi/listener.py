"""Limits of the HMI's HTTP listener (issue 15, item 6): a connection cap and timeouts for
idle and slow clients, so that clients holding connections open cannot exhaust the
daemon's file descriptors or memory (the HMI runs in the daemon's own event loop).

* **connection cap** (``max_connections``): when a new connection would exceed it, the
  oldest *idle* connection (waiting for a request: a kept-alive browser connection, or a
  client still trickling its request head) is closed for it; when every open connection
  is busy (a request in progress, e.g. a live-update stream) the new one is closed at
  once. Either is logged (``hmi.connection_closed``, rate-limited) and counted in
  ``ListenerStats``;
* **request-head and idle timeout** (``idle_timeout_s``): aiohttp's keep-alive timer
  (``keepalive_timeout``) runs from the moment a connection is accepted and again after
  each response, and is not reset by bytes received: a client must complete its request
  head within ``idle_timeout_s`` of connecting (however slowly it trickles), and a
  kept-alive connection without a new request is closed after ``idle_timeout_s``;
* request lines and header fields are bounded by aiohttp's parser (8190 bytes: 400/431),
  bodies by the application's ``client_max_size``.

``CappedAppRunner`` is an ``aiohttp.web.AppRunner`` with these limits; the HMI's
``HmiServer.start`` uses it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

__all__ = ["DEFAULT_IDLE_TIMEOUT_S", "DEFAULT_MAX_CONNECTIONS", "CappedAppRunner", "ListenerStats"]

log = structlog.get_logger("potline.hmi")

#: connections at once (a browser holds a handful: its live-update stream and requests)
DEFAULT_MAX_CONNECTIONS = 128
#: a request head must be complete, and a kept-alive connection used again, within this [wall s]
#: (above the 15 s an aiohttp or browser client keeps an idle connection: it closes first, no race)
DEFAULT_IDLE_TIMEOUT_S = 30.0
#: least wall time between two ``hmi.connection_closed`` log lines [s]
_LOG_EVERY_S = 10.0


@dataclass(slots=True)
class ListenerStats:
    """What the listener did (for tests and logs).

    Attributes:
        accepted: connections accepted.
        closed: connections the cap closed, by reason (``evicted``: an idle one closed for
            a newcomer; ``refused``: the newcomer closed, every connection busy).
    """

    accepted: int = 0
    closed: dict[str, int] = field(default_factory=dict)


def _idle(h: RequestHandler) -> bool:
    """Waiting for a (complete) request, nothing in progress."""
    waiter = getattr(h, "_waiter", None)
    return waiter is not None and not waiter.done() and not getattr(h, "_request_in_progress", False)


class _CappedServer(web.Server):
    """``web.Server`` that enforces the connection cap in ``connection_made``."""

    max_connections: int
    stats: ListenerStats
    _logged_at: float
    #: connections made whose cap decision has not run yet (a burst accepted in one turn of
    #: the loop): not counted against an earlier one's decision, each is judged in its turn
    _pending: set[RequestHandler]

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self.stats.accepted += 1
        self._pending.add(handler)
        # decided on the next turn of the loop: the handler's task has then started (it is
        # idle, waiting for a request) and closing it cannot race its start
        asyncio.get_running_loop().call_soon(self._enforce_cap, handler)

    def _enforce_cap(self, handler: RequestHandler) -> None:
        self._pending.discard(handler)
        if handler.transport is None:
            return  # gone already
        # the connections before this one (a later one of the same burst has not started its
        # task yet: it would look busy, and the cap would refuse this one for it)
        live = [h for h in self._connections
                if h is not handler and h.transport is not None and h not in self._pending]  # fmt: skip
        if len(live) < self.max_connections:
            return
        idle = [h for h in live if _idle(h)]  # in connection order: the oldest first
        if idle:
            idle[0].force_close()
            self._closed("evicted", len(live))
        else:
            handler.force_close()
            self._closed("refused", len(live))

    def _closed(self, reason: str, open_now: int) -> None:
        st = self.stats
        st.closed[reason] = st.closed.get(reason, 0) + 1
        now = time.monotonic()
        if now - self._logged_at >= _LOG_EVERY_S:
            self._logged_at = now
            log.warning("hmi.connection_closed", reason=reason, connections=open_now,
                        max_connections=self.max_connections, closed=dict(st.closed))  # fmt: skip


class CappedAppRunner(web.AppRunner):
    """``web.AppRunner`` with a connection cap and request-head/idle timeouts (module docstring).

    Args:
        app: the application.
        max_connections: connections at once.
        idle_timeout_s: request head complete, or the next request on a kept-alive
            connection, within this [wall s].
        **kwargs: ``web.AppRunner`` arguments.
    """

    def __init__(self, app: web.Application, *, max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S, **kwargs: Any) -> None:  # fmt: skip
        if max_connections < 1 or not idle_timeout_s > 0.0:
            raise ValueError(f"max_connections must be >= 1 and idle_timeout_s > 0 s, got {max_connections}, "
                             f"{idle_timeout_s}")  # fmt: skip
        super().__init__(app, keepalive_timeout=float(idle_timeout_s), **kwargs)
        self.max_connections = int(max_connections)
        self.idle_timeout_s = float(idle_timeout_s)
        self.stats = ListenerStats()

    async def _make_server(self) -> web.Server:
        srv = await super()._make_server()
        if type(srv) is not web.Server:
            raise TypeError(f"CappedAppRunner: aiohttp made a {type(srv).__name__}, expected web.Server")
        srv.__class__ = _CappedServer  # the same object, with the cap in connection_made
        capped: Any = srv
        capped.max_connections = self.max_connections
        capped.stats = self.stats
        capped._logged_at = -_LOG_EVERY_S
        capped._pending = set()
        return srv

    def open_connections(self) -> int:
        """Connections open now."""
        srv = self.server
        return 0 if srv is None else sum(1 for h in srv.connections if h.transport is not None)
