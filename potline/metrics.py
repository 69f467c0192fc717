"""Prometheus metrics and health endpoints of the daemon.

One HTTP listener (a daemon thread; bind 127.0.0.1 unless configured) serves:

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

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["DaemonMetrics", "HealthState", "MetricsServer"]


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

    def set_mode(self, mode: str, modes: tuple[str, ...] = ("observe", "shadow", "control")) -> None:
        for m in modes:
            self.mode.labels(self.plant, m).set(1.0 if m == mode else 0.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Handler(BaseHTTPRequestHandler):
    server_version = "potline-twin"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 5.0  # seconds a client may take to send its request

    def log_message(self, format: str, *args: Any) -> None:
        return  # no stderr noise; the daemon logs what matters

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        assert isinstance(self.server, _Server)  # handlers are only served by _Server
        srv = self.server.owner
        path = self.path.split("?", 1)[0]
        try:
            if path == "/metrics":
                srv.before_scrape()
                self._send(200, srv.metrics.render(), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz"):
                now = srv.clock()
                ok, body = srv.health.live(now) if path == "/healthz" else srv.health.ready(now)
                self._send(200 if ok else 503, json.dumps(body).encode() + b"\n", "application/json")
            elif path == "/":
                self._send(200, b"potline-twin daemon: /metrics /healthz /readyz\n", "text/plain; charset=utf-8")
            else:
                self._send(404, b"not found\n", "text/plain; charset=utf-8")
        except Exception as exc:
            self._send(500, f"error: {type(exc).__name__}\n".encode(), "text/plain; charset=utf-8")

    def do_HEAD(self) -> None:
        self.do_GET()

    def _not_allowed(self) -> None:
        self.send_response(405)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT = do_DELETE = do_PATCH = _not_allowed


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 16

    def __init__(self, address: tuple[str, int], owner: MetricsServer) -> None:
        self.owner = owner  # what the handlers serve
        super().__init__(address, _Handler)


class MetricsServer:
    """HTTP listener for ``/metrics``, ``/healthz`` and ``/readyz`` in a daemon thread.

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
    ) -> None:
        import time

        self.metrics = metrics
        self.health = health
        self.host = host
        self.port = int(port)
        self.clock = clock or time.monotonic
        self._before = before_scrape
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    def before_scrape(self) -> None:
        if self._before is not None:
            self._before()

    def start(self) -> None:
        """Bind and serve (raises OSError when the port is taken)."""
        httpd = _Server((self.host, self.port), self)
        httpd.timeout = 5
        self.port = int(httpd.server_address[1])
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.25},
                                        name="potline-metrics", daemon=True)  # fmt: skip
        self._thread.start()

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"
