"""The twin as mirror: an observer following every cell, published over OPC UA.

* ``MirrorModel``: an ``AluminaObserver`` (EKF) updated from each scan's measurements
  and acknowledged feed/beam actions, the snapshot the mirror publishes (measurements
  next to the estimates: alumina, ACD, time to AE; AE flags) and each value's status
  (``MirrorModel.status``): measured values carry the bridge's quality and scan time;
  pseudo-resistance the worse of its voltage and current; the estimates are
  ``UncertainInitialValue`` until the observer's first update, then Good where the
  observer was corrected by good inputs this scan and ``UncertainSubNormal`` where not
  (an input not Good, cell cut out or without current: the estimate runs open loop).
  Nothing estimates the bath superheat, so the daemon's mirror has no Superheat node
  (``mirror_quantities``);
* ``MirrorThread``: the ``MirrorServer`` on its own event loop in its own thread, so
  building the address space (seconds for 660 cells) and serving clients never stall
  the control loop; snapshots are handed over at most one in flight (a newer one
  replaces a waiting one), AE events and alarm conditions in order; an operator's
  OPC UA Acknowledge runs the daemon's callback in the daemon's loop.

The daemon's calls (all from its event loop)::

    # factory, run in the mirror thread:
    m = MirrorServer(layout, quantities=mirror_quantities(), epoch_s=timeline0,
                     stale_after_s=max(10.0, 5 * scan_period_s), ...)
    m.enable_history(*mirror_history(history_path, layout))   # optional, before start
    mirror = MirrorThread(factory, plant)
    mirror.on_acknowledge(ack)            # ack(key, user, comment) runs in the daemon loop;
                                          # raise ValueError (AlarmActionError) to refuse
    await mirror.start()
    # each cycle:
    publish_cycle(mirror, model, meas, cmds, detector, quality=bridge.quality,
                  links=bridge.links(), snapshot=snap)
    # every batch of alarm records (raised, cleared, acknowledged from the HMI or OPC UA...):
    mirror.show_alarms(records, alarms)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
import structlog

from potline.event_routing import ae_record
from potline.history import OpcUaHistoryStorage

if TYPE_CHECKING:
    from plc_bridge.opcua_server import ConditionState, MirrorServer, QuantitySpec, ValueStatus
    from plc_bridge.quality import LinkStatus, ValueQuality
    from potctl.ae_detection import AEDetector
    from potctl.plant import Commands, Measurements
    from potline.alarms import AlarmManager, AlarmRecord
    from twin.layout import PlantLayout
    from twin.observer import AluminaObserver

__all__ = [
    "ALARM_SEVERITY",
    "MirrorModel",
    "MirrorThread",
    "alarm_condition",
    "mirror_history",
    "mirror_quantities",
    "publish_cycle",
]

log = structlog.get_logger("potline.daemon")

T = TypeVar("T")

#: cell voltage back-EMF used for the published pseudo-resistance [V]
PSEUDO_RESISTANCE_E0_V = 1.65
#: the feed-rate estimate's time constant [plant s]
FEED_RATE_TAU_S = 1800.0
#: below this line current a cell is not judged by the observer [kA]
OBSERVER_MIN_KA = 5.0
#: OPC UA severity (1..1000) of each alarm priority
ALARM_SEVERITY = {"critical": 900, "high": 700, "medium": 500, "low": 300}
#: quantities nothing in the daemon estimates (their nodes are left out)
NOT_ESTIMATED = ("Superheat",)
#: longest an operator's Acknowledge waits for the daemon's loop [wall s]
ACK_TIMEOUT_S = 10.0

_GOOD, _BAD = 0, 0x80000000  # StatusCodes Good / Bad (a value not judged good, reason unknown)


def mirror_quantities() -> tuple[QuantitySpec, ...]:
    """What the daemon's mirror publishes: ``DEFAULT_QUANTITIES`` but what nothing estimates
    (``NOT_ESTIMATED``: no Superheat node that would read a constant as if measured)."""
    from plc_bridge.opcua_server import DEFAULT_QUANTITIES

    return tuple(q for q in DEFAULT_QUANTITIES if q.name not in NOT_ESTIMATED)


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
        #: cells the observer's last update corrected from good measurements
        self.valid = np.zeros(layout.n_cells, dtype=bool)
        #: plant time of the observer's last update [s] (None: not updated yet)
        self.t_update: float | None = None

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
        self.valid = valid
        self.t_update = t
        return time.perf_counter() - t0

    def snapshot(self, meas: Measurements, ae_active: np.ndarray | None) -> dict[str, np.ndarray]:
        """What the mirror publishes for this scan (per cell or per line arrays)."""
        i_ka = np.asarray(meas.line_current_ka, dtype=float)
        i_cell = i_ka[self._cell_line]
        u = np.asarray(meas.cell_voltage_v, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(i_cell > 1.0, (u - PSEUDO_RESISTANCE_E0_V) / i_cell * 1e3, np.nan)
        snap: dict[str, np.ndarray] = {"CellVoltage": u, "PseudoResistance": r, "LineCurrent": i_ka,
                                       "LineVoltage": np.asarray(meas.line_voltage_v, dtype=float)}  # fmt: skip
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

    def status(
        self, meas: Measurements, quality: Mapping[str, ValueQuality] | None = None, *, ae: bool = True
    ) -> dict[str, ValueStatus]:
        """Each published value's OPC UA status and source plant time (see the module docstring).

        Args:
            meas: the scan the snapshot was made from.
            quality: the bridge's per-array quality (``BridgePlant.quality``); None: measured
                values are Good where ``cell_ok``/``line_ok`` and Bad (reason unknown) elsewhere.
            ae: include the AnodeEffect flags (the voltage's status).
        """
        from plc_bridge.opcua_server import ValueStatus, quality_status, status_code

        lay = self.layout
        t = float(meas.t_s)

        def measured(key: str, ok: Any, n: int) -> ValueStatus:
            if quality is not None and key in quality:
                return quality_status(quality[key])
            good = np.asarray(ok, dtype=bool)
            return ValueStatus(np.where(good, _GOOD, _BAD).astype(np.uint32), np.full(n, t))

        u = measured("cell_voltage_v", meas.cell_ok, lay.n_cells)
        i = measured("line_current_ka", meas.line_ok, lay.n_lines)
        lv = measured("line_voltage_v", meas.line_ok, lay.n_lines)
        out: dict[str, ValueStatus] = {"CellVoltage": u, "LineCurrent": i, "LineVoltage": lv,
                                       "PseudoResistance": _derived(u, i.code[self._cell_line],
                                                                    i.t_s[self._cell_line])}  # fmt: skip
        if ae:
            out["AnodeEffect"] = ValueStatus(u.code.copy(), u.t_s.copy())
        if self.observer is not None:
            if self.t_update is None:
                est = ValueStatus.uniform(lay.n_cells, "UncertainInitialValue", t)
            else:
                sub = status_code("UncertainSubNormal")
                est = ValueStatus(np.where(self.valid, _GOOD, sub).astype(np.uint32), np.full(lay.n_cells,
                                                                                             self.t_update))  # fmt: skip
            for name in ("AluminaEstimate", "AcdEstimate", "TimeToAnodeEffect"):
                out[name] = est
        return out


def _derived(a: ValueStatus, b_code: np.ndarray, b_t: np.ndarray) -> ValueStatus:
    """Status of a value computed from two others: the more severe status (``a``'s on a tie),
    the older source time."""
    from plc_bridge.opcua_server import ValueStatus

    worse = (b_code >> 30) > (a.code >> 30)
    return ValueStatus(np.where(worse, b_code, a.code).astype(np.uint32), np.fmin(a.t_s, b_t))


def alarm_condition(record: AlarmRecord, acked: bool | None = None) -> ConditionState:
    """The OPC UA condition state after ``record`` (``acked``: the alarm's acknowledgement
    when the record's state does not tell it, i.e. shelved or suppressed; default True)."""
    from plc_bridge.opcua_server import ConditionState

    state = record.new_state
    if state in ("normal", "acked"):
        is_acked = True
    elif state in ("unack", "rtn_unack"):
        is_acked = False
    else:
        is_acked = True if acked is None else bool(acked)
    operator_action = record.event in ("acknowledged", "shelved", "unshelved")
    return ConditionState(
        key=record.key, name=record.kind, message=record.message or record.key,
        severity=ALARM_SEVERITY.get(record.priority, 500), active=bool(record.active), acked=is_acked,
        t_s=float(record.t), area=record.area, cell=record.cell, suppressed=state == "suppressed",
        shelved=state == "shelved", user=record.user, comment=record.reason if operator_action else "",
    )  # fmt: skip


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
        self._alarm_lock = threading.Lock()
        self._retained: dict[str, ConditionState] = {}  # conditions a client must see (replayed at start)
        self._last_acked: dict[str, bool] = {}
        self._alarm_version = 0
        self._ack_cb: Callable[[str, str, str], Any] | None = None
        self._ack_loop: asyncio.AbstractEventLoop | None = None

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
        server.on_acknowledge(self._acknowledge)
        await server.start()
        while True:  # alarms shown before the server was up: replay until no newer ones came
            with self._alarm_lock:
                batch, version = list(self._retained.values()), self._alarm_version
            if batch:
                await server.publish_alarms(batch)
            with self._alarm_lock:
                if version == self._alarm_version:
                    self.server = server
                    return

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

    def publish(
        self,
        snapshot: Mapping[str, Any],
        t: float,
        status: Mapping[str, ValueStatus] | None = None,
        links: Iterable[LinkStatus] | None = None,
    ) -> None:
        """Publish a snapshot (with its statuses and the PLC links) unless the previous one is
        still being written (then skip this one)."""
        if self.server is None:
            return
        if self._busy is not None and not self._busy.done():
            self.skipped += 1
            return
        link_list = list(links) if links is not None else None
        self._busy = self.submit(lambda srv: srv.publish(snapshot, t, status=status, links=link_list))

    # ------------------------------------------------------------------ alarms & conditions

    def show_alarms(self, records: Iterable[AlarmRecord], manager: AlarmManager | None = None) -> None:
        """Show alarm changes as OPC UA condition events, in order (from the daemon's loop).

        ``manager`` (optional) gives the acknowledgement of shelved/suppressed alarms; the
        records alone do otherwise. Before the server is up the latest state of each
        retained condition is kept and shown at start.
        """
        states = []
        for rec in records:
            acked: bool | None = self._last_acked.get(rec.key)
            if manager is not None and rec.key in manager:
                acked = manager.get(rec.key).acked
            st = alarm_condition(rec, acked)
            self._last_acked[rec.key] = st.acked
            states.append(st)
        if not states:
            return
        with self._alarm_lock:
            for st in states:
                if st.retain:
                    self._retained[st.key] = st
                else:
                    self._retained.pop(st.key, None)
            self._alarm_version += 1
            up = self.server is not None
        if up:
            self.submit(lambda srv: srv.publish_alarms(states))

    def on_acknowledge(
        self, callback: Callable[[str, str, str], Any], loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        """Run ``callback(key, user, comment)`` (sync or async) in ``loop`` (default: the calling
        thread's running loop, i.e. the daemon's) when an operator acknowledges a condition
        over OPC UA. Raise ``ValueError`` in it to refuse (the client gets BadInvalidState);
        show the records the acknowledgement made with ``show_alarms``."""
        self._ack_loop = loop or asyncio.get_running_loop()
        self._ack_cb = callback

    async def _acknowledge(self, key: str, user: str, comment: str) -> None:
        """In the mirror thread: the daemon's callback in the daemon's loop, awaited (bounded)."""
        cb, loop = self._ack_cb, self._ack_loop
        if cb is None or loop is None:
            raise ValueError("acknowledgement over OPC UA is not wired to the alarm manager")

        async def call() -> None:
            res = cb(key, user, comment)
            if inspect.isawaitable(res):
                await res

        fut = asyncio.run_coroutine_threadsafe(call(), loop)
        try:
            await asyncio.wait_for(asyncio.wrap_future(fut), ACK_TIMEOUT_S)
        except TimeoutError:
            fut.cancel()
            raise RuntimeError(f"the daemon did not take the acknowledgement within {ACK_TIMEOUT_S:g} s") from None

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


def publish_cycle(
    mirror: MirrorThread,
    model: MirrorModel,
    meas: Measurements | None,
    cmds: Commands,
    detector: AEDetector | None,
    *,
    quality: Mapping[str, ValueQuality] | None = None,
    links: Iterable[LinkStatus] | None = None,
    snapshot: Mapping[str, Any] | None = None,
) -> None:
    """One cycle to the mirror: its AE start/end events (in order), then one snapshot with each
    value's status (``MirrorModel.status`` on the bridge's ``quality``) and the PLC ``links``.
    ``snapshot``: ``model.snapshot(...)`` when the caller made it already (history)."""
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
    if mirror.server is None:
        return
    snap = snapshot if snapshot is not None else model.snapshot(meas, detector.active if detector is not None else None)
    status = model.status(meas, quality, ae="AnodeEffect" in snap)
    mirror.publish(snap, float(meas.t_s), status, links)


def _ae_event(kind: Literal["start", "end"], cell: int, peak_v: float,
              duration_s: float) -> Callable[[MirrorServer], Awaitable[None]]:  # fmt: skip
    def send(srv: MirrorServer) -> Awaitable[None]:
        return srv.publish_event(kind, cell, peak_v, duration_s)

    return send


# ---------------------------------------------------------------------------- history


def mirror_history(path: str | Path, layout: PlantLayout) -> tuple[OpcUaHistoryStorage, tuple[str, ...]]:
    """The mirror's HistoryRead backend on the daemon's history file (opened read-only; closed
    when the server stops) and the quantities it holds: ``MirrorServer.enable_history(*...)``.

    Raises:
        potline.history.HistoryError: no history file at ``path`` (open the writer first).
    """
    from potline.history import CELL_QUANTITIES, LINE_QUANTITIES, History, mirror_node_tag

    storage = _MirrorHistoryStorage(History(path, readonly=True), mirror_node_tag(layout.plant),
                                    frozenset(f"{ln}.{q}" for ln in layout.line_names for q in LINE_QUANTITIES))  # fmt: skip
    return storage, (*CELL_QUANTITIES, *LINE_QUANTITIES)


class _MirrorHistoryStorage(OpcUaHistoryStorage):
    """``OpcUaHistoryStorage`` that closes its reader at server stop and answers a line's
    scalar node with scalars (its group holds that one tag: ``History.raw`` returns rows)."""

    def __init__(self, history: Any, node_tag: Callable[[Any], str | None], line_tags: frozenset[str]) -> None:
        super().__init__(history, node_tag)
        self._line_tags = line_tags

    async def read_node_history(self, node_id: Any, start: Any, end: Any, nb_values: int) -> tuple[list[Any], Any]:
        values, cont = await super().read_node_history(node_id, start, end, nb_values)
        if self.node_tag(node_id) in self._line_tags:
            from asyncua import ua

            for dv in values:
                v = dv.Value
                if v is not None and isinstance(v.Value, list) and len(v.Value) == 1:
                    dv.Value = ua.Variant(v.Value[0], ua.VariantType.Double)
        return values, cont

    async def stop(self) -> None:
        await asyncio.to_thread(self.history.close)
