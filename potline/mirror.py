"""The twin as mirror: an observer following every cell, published over OPC UA.

* ``MirrorModel``: an ``AluminaObserver`` (EKF) updated from each scan's measurements
  and acknowledged feed/beam actions, and the snapshot the mirror publishes
  (measurements next to the estimates: alumina, ACD, time to AE; AE flags);
* ``MirrorThread``: the ``MirrorServer`` on its own event loop in its own thread, so
  building the address space (seconds for 660 cells) and serving clients never stall
  the control loop; snapshots are handed over at most one in flight (a newer one
  replaces a waiting one), AE events in order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
import structlog

from potline.event_routing import ae_record

if TYPE_CHECKING:
    from plc_bridge.opcua_server import MirrorServer
    from potctl.ae_detection import AEDetector
    from potctl.plant import Commands, Measurements
    from twin.layout import PlantLayout
    from twin.observer import AluminaObserver

__all__ = ["MirrorModel", "MirrorThread", "publish_cycle"]

log = structlog.get_logger("potline.daemon")

T = TypeVar("T")

#: cell voltage back-EMF used for the published pseudo-resistance [V]
PSEUDO_RESISTANCE_E0_V = 1.65
#: the feed-rate estimate's time constant [plant s]
FEED_RATE_TAU_S = 1800.0
#: below this line current a cell is not judged by the observer [kA]
OBSERVER_MIN_KA = 5.0


class MirrorModel:
    """The observer beside the plant and the snapshot of what the mirror shows.

    Args:
        layout: the plant.
        observer: the cells' observer (None: measurements only).
    """

    def __init__(self, layout: PlantLayout, observer: AluminaObserver | None) -> None:
        self.layout = layout
        self.observer = observer
        self._cell_line = np.asarray(layout.cell_line, dtype=np.int64)
        self._shot_kg = np.asarray(layout.shot_mass_kg, dtype=float)
        self._prev: tuple[float, np.ndarray, np.ndarray] | None = None  # (t, feed acks, beam acks)
        #: smoothed acknowledged feed rate per cell [kg/s] (NaN until the second scan)
        self.feed_rate = np.full(layout.n_cells, np.nan)

    def update(self, meas: Measurements) -> float | None:
        """Advance the observer to this scan; returns its update time [wall s] (None: no update)."""
        obs = self.observer
        if obs is None:
            return None
        t = float(meas.t_s)
        feed = np.asarray(meas.feeder_ack, dtype=float)
        beam = np.asarray(meas.beam_ack_mm, dtype=float)
        if self._prev is None:
            self._prev = (t, feed.copy(), beam.copy())
            return None
        t_prev, feed_prev, beam_prev = self._prev
        dt = t - t_prev
        if dt <= 0:
            return None
        d_feed = np.maximum(feed - feed_prev, 0.0) * self._shot_kg
        d_beam = beam - beam_prev
        self._prev = (t, feed.copy(), beam.copy())
        i_ka = np.asarray(meas.line_current_ka, dtype=float)[self._cell_line]
        line_ok = np.asarray(meas.line_ok, dtype=bool)[self._cell_line]
        u = np.asarray(meas.cell_voltage_v, dtype=float)
        valid = (np.asarray(meas.cell_ok, dtype=bool) & line_ok & ~np.asarray(meas.cut_out, dtype=bool)
                 & (i_ka > OBSERVER_MIN_KA) & np.isfinite(u))  # fmt: skip
        disturbed = np.asarray(meas.tapping, dtype=bool) | np.asarray(meas.anode_change, dtype=bool)
        a = min(dt / FEED_RATE_TAU_S, 1.0)
        rate = d_feed / dt
        self.feed_rate = np.where(np.isnan(self.feed_rate), rate, self.feed_rate + a * (rate - self.feed_rate))
        t0 = time.perf_counter()
        obs.update(np.nan_to_num(i_ka) * 1e3, np.nan_to_num(u), d_feed, d_beam, dt, valid, disturbed)
        return time.perf_counter() - t0

    def snapshot(self, meas: Measurements, ae_active: np.ndarray | None) -> dict[str, np.ndarray]:
        """What the mirror publishes for this scan (per cell or per line arrays)."""
        i_ka = np.asarray(meas.line_current_ka, dtype=float)
        i_cell = i_ka[self._cell_line]
        u = np.asarray(meas.cell_voltage_v, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(i_cell > 1.0, (u - PSEUDO_RESISTANCE_E0_V) / i_cell * 1e3, np.nan)
        snap: dict[str, np.ndarray] = {"CellVoltage": u, "PseudoResistance": r, "LineCurrent": i_ka,
                                       "LineVoltage": np.asarray(meas.line_voltage_v, dtype=float),
                                       "Superheat": np.full(u.shape, np.nan)}  # fmt: skip
        obs = self.observer
        if obs is not None:
            snap["AluminaEstimate"] = obs.alumina_wt_pct.copy()
            snap["AcdEstimate"] = obs.acd_cm.copy()
            rate = np.nan_to_num(self.feed_rate, nan=0.0)
            with np.errstate(divide="ignore", invalid="ignore"):
                snap["TimeToAnodeEffect"] = obs.time_to_ae_s(np.nan_to_num(i_cell) * 1e3, rate)
        if ae_active is not None:
            snap["AnodeEffect"] = ae_active.copy()
        return snap


class MirrorThread:
    """The OPC UA mirror on its own event loop in its own thread (see the module docstring).

    Args:
        factory: builds the server (called in the mirror thread).
        plant: plant name bound to the thread's log lines.
    """

    def __init__(self, factory: Callable[[], MirrorServer], plant: str) -> None:
        self._factory = factory
        self._plant = plant
        self.loop = asyncio.new_event_loop()
        self.server: MirrorServer | None = None
        self._thread = threading.Thread(target=self._run, name="potline-mirror", daemon=True)
        self._busy: concurrent.futures.Future[Any] | None = None
        #: snapshots not published because the previous one was still being written
        self.skipped = 0

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        structlog.contextvars.bind_contextvars(plant=self._plant, thread="mirror")
        self.loop.run_forever()

    def start(self) -> asyncio.Future[None]:
        """Start the thread and the server; returns an awaitable for the server being up."""
        self._thread.start()
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._start(), self.loop))

    async def _start(self) -> None:
        server = self._factory()
        await server.start()
        self.server = server

    def submit(self, fn: Callable[[MirrorServer], Awaitable[T]]) -> concurrent.futures.Future[T | None]:
        """Run ``await fn(server)`` in the mirror thread (nothing before the server is up)."""

        async def run() -> T | None:
            if self.server is None:
                return None
            return await fn(self.server)

        return asyncio.run_coroutine_threadsafe(run(), self.loop)

    def show_mode(self, mode: str) -> None:
        """Show the daemon's mode in ``Twin/Mode``."""
        self.submit(lambda srv: srv.set_mode(mode))

    def publish(self, snapshot: Mapping[str, Any], t: float) -> None:
        """Publish a snapshot unless the previous one is still being written (then skip this one)."""
        if self.server is None:
            return
        if self._busy is not None and not self._busy.done():
            self.skipped += 1
            return
        self._busy = self.submit(lambda srv: srv.publish(snapshot, t))

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server and the thread (bounded)."""
        if not self._thread.is_alive():
            return

        async def shut() -> None:
            if self.server is not None:
                await self.server.stop()

        try:
            asyncio.run_coroutine_threadsafe(shut(), self.loop).result(timeout_s)
        except Exception:
            log.exception("mirror.stop_failed")
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout_s)


def publish_cycle(mirror: MirrorThread, model: MirrorModel, meas: Measurements | None, cmds: Commands,
                  detector: AEDetector | None) -> None:  # fmt: skip
    """One cycle to the mirror: its AE start/end events (in order), then one snapshot."""
    if meas is None:
        return
    n = model.layout.n_cells
    for kind, idx, _detail in cmds.events:
        if kind not in ("ae_start", "ae_end") or not 0 <= idx < n:
            continue
        rec = ae_record(detector, idx) if detector is not None else None
        peak = rec.peak_v if rec is not None else float(np.nan_to_num(meas.cell_voltage_v[idx]))
        dur = 0.0 if kind == "ae_start" or rec is None else float(rec.duration_s)
        mirror.submit(_ae_event("start" if kind == "ae_start" else "end", idx, float(peak), dur))
    mirror.publish(model.snapshot(meas, detector.active if detector is not None else None), float(meas.t_s))


def _ae_event(kind: Literal["start", "end"], cell: int, peak_v: float,
              duration_s: float) -> Callable[[MirrorServer], Awaitable[None]]:  # fmt: skip
    def send(srv: MirrorServer) -> Awaitable[None]:
        return srv.publish_event(kind, cell, peak_v, duration_s)

    return send
