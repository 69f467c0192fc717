"""Prometheus metrics and health endpoints of the daemon.

One HTTP listener (asyncio in one daemon thread, whatever the number of clients; bind
127.0.0.1 unless configured; connection cap, header and idle timeouts: ``MetricsServer``)
serves:

* ``/metrics`` — Prometheus text format from the daemon's own registry
  (``DaemonMetrics``): loop period and lag, scan age and link state per PLC, comms
  errors, anode effects, setpoint writes by outcome, mode, journal entries;
* ``/healthz`` — liveness: 200 while the control loop has ticked within
  ``stall_s``, else 503 (a stalled loop; systemd's watchdog catches the same);
* ``/readyz`` — readiness: 200 once the model is warm, the first cycle ran and every
  PLC link is up; 503 otherwise. Both answer a small JSON document saying why.

Names follow the exporter conventions: ``potline_`` prefix, units in the name,
counters end in ``_total``. Anything else (unknown path, method, garbage request)
gets a 404/405/400 and never reaches the daemon's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["DaemonMetrics", "HealthState", "MetricsServer"]

log = structlog.get_logger(__name__)


#: safety-layer alarms that make ``/readyz`` 503: the PLC holds a setpoint outside the bounds
#: that cannot be brought back, or its value is unusable (nothing can be written to it)
NOT_READY_ALARMS = frozenset({"out_of_bounds_refused", "plc_value_unusable"})


@dataclass(slots=True)
class HealthState:
    """What ``/healthz`` and ``/readyz`` report (updated by the daemon's loop).

    Times are monotonic wall seconds (``time.monotonic``) supplied by the daemon.
    """

    stall_s: float = 10.0
    last_cycle_mono: float | None = None
    started_mono: float | None = None
    model_warm: bool = False
    first_cycle_done: bool = False
    stopping: bool = False
    mode: str = "observe"
    mirror_up: bool | None = None  # None: no mirror configured
    plc_up: dict[str, bool] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)

    def live(self, now: float) -> tuple[bool, dict[str, Any]]:
        """(alive, body) for ``/healthz``."""
        age = None if self.last_cycle_mono is None else now - self.last_cycle_mono
        if age is None:
            # starting: alive while within the start allowance
            since = 0.0 if self.started_mono is None else now - self.started_mono
            ok = since <= max(self.stall_s, 60.0)
            return ok, {"status": "starting" if ok else "stalled", "since_start_s": round(since, 3)}
        ok = age <= self.stall_s
        return ok, {"status": "ok" if ok else "stalled", "last_cycle_age_s": round(age, 3), "mode": self.mode}

    def ready(self, now: float) -> tuple[bool, dict[str, Any]]:
        """(ready, body) for ``/readyz``."""
        live, _body = self.live(now)
        down = sorted(n for n, up in self.plc_up.items() if not up)
        reasons = []
        if not live:
            reasons.append("control loop stalled")
        if not self.model_warm:
            reasons.append("model not warm")
        if not self.first_cycle_done:
            reasons.append("no control cycle yet")
        if down:
            reasons.append("PLC links down: " + ", ".join(down))
        if self.mirror_up is False:
            reasons.append("OPC UA mirror not up")
        if self.stopping:
            reasons.append("stopping")
        if "journal" in self.detail:
            reasons.append("journal " + str(self.detail["journal"]))
        for a in self.detail.get("plc_alarms", ()):
            if a.get("alarm") in NOT_READY_ALARMS:
                reasons.append(f"{a.get('plc')}: {a.get('alarm')}: {a.get('message')}")
        if "disarmed" in self.detail:
            reasons.append("control disarmed until an operator re-arms it: " + str(self.detail["disarmed"]))
        ok = not reasons
        return ok, {"status": "ready" if ok else "not ready", "reasons": reasons, "mode": self.mode,
                    "plc_up": dict(self.plc_up), **self.detail}  # fmt: skip


class DaemonMetrics:
    """The daemon's Prometheus series (own registry, so tests can run several)."""

    def __init__(self, plant: str) -> None:
        self.plant = plant
        r = self.registry = CollectorRegistry(auto_describe=True)
        lbl = ("plant",)
        self.info = Gauge("potline_daemon_info", "Daemon build and plant (value 1)", ("plant", "version"), registry=r)
        self.startup_seconds = Gauge("potline_startup_seconds", "Process start to first control cycle", lbl, registry=r)
        self.loop_period = Gauge(
            "potline_loop_period_seconds", "Wall time between the last two control cycles", lbl, registry=r
        )
        self.loop_duration = Histogram(
            "potline_loop_duration_seconds", "Wall time of one read-step-write cycle", lbl, registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )  # fmt: skip
        self.loop_lag = Gauge(
            "potline_loop_lag_seconds", "How late the last cycle started against its schedule", lbl, registry=r
        )
        self.cycles = Counter("potline_cycles_total", "Control cycles run", lbl, registry=r)
        self.overruns = Counter("potline_cycle_overruns_total", "Cycles that took longer than the scan period",
                                lbl, registry=r)  # fmt: skip
        self.plant_time = Gauge("potline_plant_time_seconds", "Plant (daemon clock) time of the last cycle", lbl,
                                registry=r)  # fmt: skip
        self.scan_age = Gauge(
            "potline_plc_scan_age_seconds", "Age of the newest good scan of a PLC", ("plant", "plc"), registry=r
        )
        self.plc_up = Gauge("potline_plc_up", "PLC link state (1 up, 0 down)", ("plant", "plc"), registry=r)
        self.comms_errors = Counter(
            "potline_plc_comms_errors_total", "Failed reads/writes (timeouts, lost links, exceptions)",
            ("plant", "plc"), registry=r,
        )  # fmt: skip
        self.comms_faults = Counter(
            "potline_plc_comms_faults_total", "Link losses (up -> down transitions)", ("plant", "plc"), registry=r
        )
        self.bad_tags = Gauge("potline_plc_bad_tags", "Tags of the last scan with bad quality", ("plant", "plc"),
                              registry=r)  # fmt: skip
        self.anode_effects = Counter(
            "potline_anode_effects_total", "Anode effects detected", ("plant", "room"), registry=r
        )
        self.anode_effects_active = Gauge("potline_anode_effects_active", "Anode effects in progress", lbl,
                                          registry=r)  # fmt: skip
        self.ae_predicted = Counter("potline_ae_predictions_total", "AE prediction alarms", lbl, registry=r)
        self.setpoint_writes = Counter(
            "potline_setpoint_writes_total",
            "Setpoint/command writes by outcome (written, clamped, ramped, rejected, shadow)",
            ("plant", "plc", "action"), registry=r,
        )  # fmt: skip
        self.mode = Gauge("potline_mode", "Current mode (1 for the active one)", ("plant", "mode"), registry=r)
        self.mode_changes = Counter("potline_mode_changes_total", "Mode changes", ("plant", "source"), registry=r)
        self.alarms_active = Gauge("potline_alarms_active", "Safety-layer alarms active", lbl, registry=r)
        self.journal_entries = Counter("potline_journal_entries_total", "Journal entries committed", ("plant",
                                       "category"), registry=r)  # fmt: skip
        self.journal_errors = Counter("potline_journal_errors_total", "Failed journal commits", lbl, registry=r)
        self.journal_commit = Histogram(
            "potline_journal_commit_seconds", "Journal commit time (fsync included)", lbl, registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )  # fmt: skip
        self.model_step = Histogram(
            "potline_model_step_seconds", "Mirror (observer) update time", lbl, registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
        )  # fmt: skip
        self.rss = Gauge("potline_process_resident_memory_bytes", "Resident memory", lbl, registry=r)
        self.opcua_security = Counter(
            "potline_opcua_security_events_total",
            "Mirror logins refused and requests denied (login_failed, login_refused, write_denied, call_denied)",
            ("plant", "kind"), registry=r,
        )  # fmt: skip

    def set_mode(self, mode: str, modes: tuple[str, ...] = ("observe", "shadow", "control")) -> None:
        for m in modes:
            self.mode.labels(self.plant, m).set(1.0 if m == mode else 0.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)


#: connections served at once (Prometheus, a health probe, a person with curl: a handful)
DEFAULT_MAX_CONNECTIONS = 32
#: a request head must arrive complete within this [wall s] of its first byte (or of the connect)
HEADER_TIMEOUT_S = 5.0
#: a kept-alive connection may wait this long [wall s] for its next request
IDLE_TIMEOUT_S = 30.0
#: a request head longer than this [bytes] is refused (431) and the connection closed
MAX_HEADER_BYTES = 8192
#: an answer the client does not take within this [wall s] closes the connection
WRITE_TIMEOUT_S = 10.0

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
            431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}  # fmt: skip
_TEXT = "text/plain; charset=utf-8"


class _BadRequest(Exception):
    """A request that cannot be served: the status to answer with and why."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


@dataclass(slots=True)
class _Conn:
    writer: asyncio.StreamWriter
    peer: str
    last_activity: float
    busy: bool = False  # answering a request (not evicted meanwhile)


class MetricsServer:
    """HTTP listener for ``/metrics``, ``/healthz`` and ``/readyz``: one thread whatever the clients.

    An asyncio server in one daemon thread: at most ``max_connections`` connections (a new
    one beyond that closes the connection that has been quiet longest), a request head
    complete within ``header_timeout_s`` of its first byte and at most
    ``max_header_bytes``, kept-alive connections closed after ``idle_timeout_s`` without a
    request, answers a client does not take within ``write_timeout_s`` dropped. Closed
    connections are counted by reason (``closed``) and logged at most once a minute per
    reason. GET and HEAD only (405 otherwise), HTTP/1.0 and 1.1 with keep-alive.

    Args:
        metrics: the series to expose.
        health: the health state the loop keeps up to date.
        host, port: where to listen (port 0 picks a free one; see ``port`` after ``start``).
        clock: monotonic wall clock [s] used to age the health state.
        before_scrape: called before each ``/metrics`` render (refresh gauges).
    """

    def __init__(
        self,
        metrics: DaemonMetrics,
        health: HealthState,
        host: str = "127.0.0.1",
        port: int = 9108,
        clock: Callable[[], float] | None = None,
        before_scrape: Callable[[], None] | None = None,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        header_timeout_s: float = HEADER_TIMEOUT_S,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        max_header_bytes: int = MAX_HEADER_BYTES,
        write_timeout_s: float = WRITE_TIMEOUT_S,
    ) -> None:
        import time

        if max_connections < 1 or max_header_bytes < 64:
            raise ValueError(f"max_connections must be >= 1 and max_header_bytes >= 64, got {max_connections}, "
                             f"{max_header_bytes}")  # fmt: skip
        self.metrics = metrics
        self.health = health
        self.host = host
        self.port = int(port)
        self.clock = clock or time.monotonic
        self._before = before_scrape
        self.max_connections = int(max_connections)
        self.header_timeout_s = float(header_timeout_s)
        self.idle_timeout_s = float(idle_timeout_s)
        self.max_header_bytes = int(max_header_bytes)
        self.write_timeout_s = float(write_timeout_s)
        #: connections closed by the listener, by reason (evicted, header_timeout, idle, too_large, bad_request, ...)
        self.closed: dict[str, int] = {}
        #: requests answered, by status code
        self.answered: dict[int, int] = {}
        self._conns: dict[int, _Conn] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._logged: dict[str, tuple[float, int]] = {}  # reason -> (last log time, closed since)

    def before_scrape(self) -> None:
        if self._before is not None:
            self._before()

    @property
    def connections(self) -> int:
        """Client connections open right now."""
        return len(self._conns)

    def start(self) -> None:
        """Bind and serve (raises OSError when the port is taken)."""
        sock = socket.create_server((self.host, self.port), backlog=64)
        self.port = int(sock.getsockname()[1])
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failed: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._client, sock=sock, limit=self.max_header_bytes)
                )
            except BaseException as exc:  # handed to start()
                failed.append(exc)
                ready.set()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="potline-metrics", daemon=True)
        self._thread.start()
        ready.wait(30.0)
        if failed:
            sock.close()
            raise OSError(f"metrics listener: {failed[0]}")

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for c in list(self._conns.values()):
                c.writer.transport.abort()
            self._conns.clear()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            loop.call_soon(loop.stop)

        with contextlib.suppress(RuntimeError, TimeoutError):  # the loop is already gone, or stuck
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=5.0)
        thread.join(timeout=5.0)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ------------------------------------------------------------------ connections

    def _close(self, key: int, reason: str, *, abort: bool = True) -> None:
        c = self._conns.pop(key, None)
        if c is None:
            return
        self.closed[reason] = self.closed.get(reason, 0) + 1
        if abort:
            c.writer.transport.abort()
        else:
            c.writer.close()
        if reason in ("served", "client_closed"):
            return  # the ordinary end of a connection
        now = self.clock()
        last, since = self._logged.get(reason, (-1e18, 0))
        if now - last >= 60.0:  # at most one line per reason and minute, however many clients misbehave
            emit = log.info if reason == "idle" else log.warning
            emit("metrics.connections_closed", reason=reason, count=since + 1, peer=c.peer,
                 max_connections=self.max_connections)  # fmt: skip
            self._logged[reason] = (now, 0)
        else:
            self._logged[reason] = (last, since + 1)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        key = id(writer)
        peer = writer.get_extra_info("peername")
        if len(self._conns) >= self.max_connections:
            idle = [(c.last_activity, k) for k, c in self._conns.items() if not c.busy]
            if idle:
                self._close(min(idle)[1], "evicted")
            else:
                self.closed["refused"] = self.closed.get("refused", 0) + 1
                writer.transport.abort()
                return
        self._conns[key] = _Conn(writer, str(peer), self.clock())
        try:
            wait, why = self.header_timeout_s, "header_timeout"  # a new connection sends its request at once
            while key in self._conns:
                try:
                    first = await asyncio.wait_for(reader.read(1), wait)
                    if not first:
                        self._close(key, "client_closed", abort=False)
                        return
                    self._conns[key].last_activity = self.clock()
                    why = "header_timeout"
                    rest = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.header_timeout_s)
                except TimeoutError:
                    self._close(key, why)
                    return
                except asyncio.LimitOverrunError:
                    await self._answer(key, 431, b"431 - request head too large\n", _TEXT, keep=False)
                    self._close(key, "too_large", abort=False)
                    return
                except (asyncio.IncompleteReadError, ConnectionError):
                    self._close(key, "client_closed")
                    return
                c = self._conns.get(key)
                if c is None:
                    return
                c.busy = True
                keep = await self._serve(key, first + rest)
                c.busy = False
                c.last_activity = self.clock()
                if not keep:
                    self._close(key, "served", abort=False)
                    return
                wait, why = self.idle_timeout_s, "idle"
        except Exception:  # a bug here must never take the listener down
            log.exception("metrics.client_failed", peer=str(peer))
            self._close(key, "error")

    async def _answer(self, key: int, status: int, body: bytes, ctype: str, *, keep: bool, head: bool = False,
                      extra: tuple[tuple[str, str], ...] = ()) -> bool:  # fmt: skip
        c = self._conns.get(key)
        if c is None:
            return False
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}", "Server: potline-twin",
                 f"Content-Type: {ctype}", f"Content-Length: {len(body)}", "Cache-Control: no-store",
                 f"Connection: {'keep-alive' if keep else 'close'}", *(f"{k}: {v}" for k, v in extra)]  # fmt: skip
        c.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head else body))
        self.answered[status] = self.answered.get(status, 0) + 1
        try:
            await asyncio.wait_for(c.writer.drain(), self.write_timeout_s)
        except (TimeoutError, ConnectionError):
            self._close(key, "write_timeout")
            return False
        return keep

    async def _serve(self, key: int, raw: bytes) -> bool:
        """Answer one request head; True when the connection stays open for the next one."""
        try:
            method, path, keep, has_body = _parse_head(raw)
        except _BadRequest as bad:
            body = f"{bad.status} - Bad request: {bad}\n".encode()
            await self._answer(key, bad.status, body, _TEXT, keep=False)
            self.closed["bad_request"] = self.closed.get("bad_request", 0) + 1
            return False
        if method not in ("GET", "HEAD"):
            return await self._answer(key, 405, b"", _TEXT, keep=False, extra=(("Allow", "GET, HEAD"),))
        keep = keep and not has_body  # a body we do not read would be taken for the next request
        status, body, ctype = self._route(path.split("?", 1)[0])
        return await self._answer(key, status, body, ctype, keep=keep, head=method == "HEAD")

    def _route(self, path: str) -> tuple[int, bytes, str]:
        try:
            if path == "/metrics":
                self.before_scrape()
                return 200, self.metrics.render(), CONTENT_TYPE_LATEST
            if path in ("/healthz", "/readyz"):
                now = self.clock()
                ok, body = self.health.live(now) if path == "/healthz" else self.health.ready(now)
                return (200 if ok else 503), json.dumps(body).encode() + b"\n", "application/json"
            if path == "/":
                return 200, b"potline-twin daemon: /metrics /healthz /readyz\n", _TEXT
            return 404, b"not found\n", _TEXT
        except Exception as exc:
            return 500, f"error: {type(exc).__name__}\n".encode(), _TEXT


_TOKEN = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def _parse_head(raw: bytes) -> tuple[str, str, bool, bool]:
    """(method, path, keep-alive, has a body) of an HTTP/1.x request head; ``_BadRequest`` otherwise."""
    lines = raw[:-4].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _TOKEN.match(parts[0]) or not parts[1].startswith(b"/"):
        raise _BadRequest(400, "expected 'METHOD /path HTTP/1.x'")
    version = parts[2]
    if version not in (b"HTTP/1.0", b"HTTP/1.1"):
        raise _BadRequest(400, "expected HTTP/1.0 or HTTP/1.1")
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.match(name):
            raise _BadRequest(400, "malformed header line")
        headers[name.strip().lower()] = value.strip()
    conn = headers.get(b"connection", b"").lower()
    keep = conn != b"close" if version == b"HTTP/1.1" else conn == b"keep-alive"
    has_body = headers.get(b"content-length", b"0") not in (b"", b"0") or b"transfer-encoding" in headers
    try:
        path = parts[1].decode("ascii")
    except UnicodeDecodeError:
        raise _BadRequest(400, "expected an ASCII path") from None
    return parts[0].decode("ascii"), path, keep, has_body
