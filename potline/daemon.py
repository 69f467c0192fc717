"""The headless daemon behind ``potline run``: composition of everything the plant server runs.

config -> ``BridgePlant`` (PLCs over Modbus/OPC UA, writes through the safety layer)
-> ``ControlRuntime`` (read -> step -> write on a clock) with ``PotController``, plus:

* **the twin as mirror**: an ``AluminaObserver`` (EKF, Numba) follows every cell from
  the measurements and acknowledged feed/beam actions; ``MirrorServer`` publishes its
  estimates (alumina, ACD, time to AE) next to the measurements over OPC UA, and AE
  start/end events;
* **modes** (``observe`` | ``shadow`` | ``control``), switchable at runtime by an
  operator's OPC UA ``Twin/SetMode`` call, by signals (``SIGUSR1``: apply the mode file
  now, ``SIGUSR2``: observe now) or by writing the mode file; every switch (and every
  refusal) is journalled with who/what asked. ``observe``: mirror and detection only,
  nothing written, no heartbeat (the PLCs stay in local). ``shadow``: the controller
  computes; what it would write is logged and journalled, nothing is sent. ``control``:
  commands go through ``plc_bridge.safe_write`` (heartbeat running, the PLCs go remote);
  entering it needs every PLC link up;
* **journal** (SQLite WAL, ``potline.journal``): AE events, setpoint and beam
  writes, shadow decisions, mode changes, alarms, comms faults, start/stop (an unclean
  previous stop is detected and journalled); committed once per cycle;
* **metrics and health** (``potline.metrics``), **systemd** notify/watchdog
  (``READY=1`` after the first cycle, ``WATCHDOG=1`` from the loop only);
* **graceful stop** on SIGTERM/SIGINT: stop commanding, stop the heartbeat and wait
  (bounded) until the PLCs report local control, then close everything.

A PLC that is down at start or drops later never stops the daemon: the bridge keeps
reconnecting, measurements carry bad quality (the controller does not act on them),
``/readyz`` says which link is down and the journal has the fault and the recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from potline.daemon_config import MODES, LoadedConfig
from potline.journal import Event, Journal, JournalError
from potline.metrics import DaemonMetrics, HealthState, MetricsServer
from potline.sd_notify import Notifier

__all__ = ["Daemon", "EpochClock", "process_age_s"]

log = structlog.get_logger("potline.daemon")

#: controller events indexed by line (all others are indexed by cell)
LINE_EVENTS = frozenset({"rectifier_trip", "rectifier_restart", "ramp_done"})
#: controller events about feeders: meaningless while the controller's commands are not sent
COMMAND_DEPENDENT_EVENTS = frozenset({"feeder_fault"})
#: how often a refused-writes summary may repeat per device with an unchanged reason [wall s]
REFUSAL_JOURNAL_EVERY_S = 60.0
#: keep at most this many entries in the controller's in-memory event list (the journal has them all)
CONTROLLER_LOG_KEEP = 10_000
VERSION = "0.1.0"


# ====================================================================== clocks and timing


class EpochClock:
    """Plant time shared with another process on this machine (a HIL rig).

    ``now() = speed x (CLOCK_MONOTONIC - epoch)``; CLOCK_MONOTONIC is system-wide on
    Linux, so a daemon and a rig started separately agree on plant time.
    """

    def __init__(self, speed: float, epoch_monotonic: float) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.factor = float(speed)
        self.epoch = float(epoch_monotonic)

    def now(self) -> float:
        return self.factor * (time.monotonic() - self.epoch)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.factor)


def make_clock(loaded: LoadedConfig) -> Any:
    """The daemon's plant clock: real time, accelerated (HIL) or epoch-shared (HIL)."""
    from twin.clock import AcceleratedClock, RealClock

    d = loaded.config.daemon
    if d.clock_epoch_monotonic is not None:
        return EpochClock(d.clock_speed, d.clock_epoch_monotonic)
    if d.clock_speed != 1.0:
        return AcceleratedClock(d.clock_speed)
    return RealClock()


def process_age_s() -> float | None:
    """Seconds since this process was created (Linux ``/proc``), None when unknown."""
    try:
        with open("/proc/self/stat", "rb") as f:
            raw = f.read().decode()
        fields = raw[raw.rindex(")") + 2 :].split()
        start_ticks = int(fields[19])  # field 22 of stat(5), counted after "comm"
        hz = os.sysconf("SC_CLK_TCK")
        return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / hz
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


# ====================================================================== per-PLC state


@dataclass(slots=True)
class _Link:
    """What the daemon knows about one PLC link."""

    name: str  # config name, e.g. rectifier1
    device: str  # bridge device, e.g. rectifier:Line1
    kind: str
    up: bool | None = None  # None: not scanned yet
    reason: str = ""
    last_good_mono: float | None = None
    faults: int = 0
    refused_reason: str = ""
    refused_journal_mono: float = -math.inf
    refused_count: int = 0


# ====================================================================== the plant the runtime sees


class _ModePlant:
    """The ``Plant`` handed to ``ControlRuntime``: the bridge, seen through the mode.

    ``read`` scans the PLCs and feeds the mirror; ``write`` sends (control), records
    what would be sent (shadow) or does nothing (observe), then publishes the mirror.
    """

    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
        self.layout = daemon.layout

    async def read(self) -> Any:
        meas = await self.d.bridge.read()
        if self.d.mode != "control":
            meas = self.d._as_if_remote(meas)
        self.d._after_read(meas)
        return meas

    async def write(self, commands: Any) -> None:
        await self.d._write(commands)

    def drain_events(self) -> list[tuple[str, int, str]]:
        return self.d.bridge.drain_events()


# ====================================================================== the mirror's own thread


class _MirrorThread:
    """The OPC UA mirror on its own event loop in its own thread.

    Building the address space (seconds for 660 cells) and serving clients never stall
    the control loop: the daemon hands snapshots over (``publish``: at most one in
    flight, a newer one replaces a waiting one) and events (``submit``, in order).
    """

    def __init__(self, factory: Any, plant: str) -> None:
        import threading

        self._factory = factory
        self._plant = plant
        self.loop = asyncio.new_event_loop()
        self.server: Any = None
        self._thread = threading.Thread(target=self._run, name="potline-mirror", daemon=True)
        self._busy: Any = None
        self.skipped = 0

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        structlog.contextvars.bind_contextvars(plant=self._plant, thread="mirror")
        self.loop.run_forever()

    def start(self) -> Any:
        """Start the thread and the server; returns an awaitable for the server being up."""
        self._thread.start()
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._start(), self.loop))

    async def _start(self) -> None:
        server = self._factory()
        await server.start()
        self.server = server

    def submit(self, coro_fn: Any, *args: Any) -> Any:
        """Run ``coro_fn(server, *args)`` in the mirror thread; returns a concurrent future."""

        async def run() -> Any:
            if self.server is None:
                return None
            return await coro_fn(self.server, *args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop)

    def publish(self, snapshot: dict[str, Any], t: float) -> None:
        """Publish a snapshot unless the previous one is still being written (then skip this one)."""
        if self.server is None:
            return
        if self._busy is not None and not self._busy.done():
            self.skipped += 1
            return
        self._busy = self.submit(lambda srv, snap, tt: srv.publish(snap, tt), snapshot, t)

    def stop(self, timeout_s: float = 10.0) -> None:
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


# ====================================================================== the daemon


class Daemon:
    """``potline run`` (see the module docstring).

    Args:
        loaded: a validated config (``potline.daemon_config.load_daemon_config``).
        started_mono: ``time.monotonic()`` when the process started (startup metric);
            default: from ``/proc`` or now.
        env: environment for systemd notifications (default ``os.environ``).
    """

    def __init__(self, loaded: LoadedConfig, *, started_mono: float | None = None,
                 env: dict[str, str] | None = None) -> None:  # fmt: skip
        self.loaded = loaded
        self.cfg = loaded.config
        self.layout = loaded.layout
        self.name = loaded.name
        age = process_age_s()
        self.started_mono = started_mono if started_mono is not None else time.monotonic() - (age or 0.0)
        self.clock = make_clock(loaded)
        self.mode = self.cfg.daemon.mode
        self.notifier = Notifier(env)
        self.metrics = DaemonMetrics(self.name)
        self.health = HealthState(stall_s=self.cfg.daemon.stall_s, started_mono=self.started_mono, mode=self.mode)
        self.journal: Journal | None = None
        self.metrics_server: MetricsServer | None = None
        self.mirror: Any = None
        self.bridge: Any = None
        self.controller: Any = None
        self.observer: Any = None
        self.runtime: Any = None
        self.stop_event: asyncio.Event | None = None
        self.stop_reason = ""
        self.exit_code = 0
        self.links: dict[str, _Link] = {}
        for pc in self.cfg.plc:
            self.links[pc.device] = _Link(pc.name, pc.device, pc.kind)
        self._mode_lock: asyncio.Lock | None = None
        self._mode_file_seen: str | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._last_meas: Any = None
        self._prev_feed: np.ndarray | None = None
        self._prev_beam: np.ndarray | None = None
        self._prev_t: float | None = None
        self._feed_rate = np.full(self.layout.n_cells, np.nan)
        self._last_cycle_mono: float | None = None
        self._first_cycle_done = False
        self._startup_s: float | None = None
        self._error_journal_mono = -math.inf
        self._errors_in_a_row = 0
        self._journal_failing = False
        self._late_log_mono = -math.inf
        self._cell_line = np.asarray(self.layout.cell_line, dtype=np.int64)
        self._cell_room = np.asarray(self.layout.cell_room, dtype=np.int64)
        self._shot_kg = np.asarray(self.layout.shot_mass_kg, dtype=float)
        self._shadow_sp: dict[int, tuple[float, float]] = {}

    # ------------------------------------------------------------------ locations

    def _where(self, kind: str, idx: int) -> dict[str, Any]:
        """Journal/log location fields of a controller event index."""
        lay = self.layout
        if kind in LINE_EVENTS:
            if 0 <= idx < lay.n_lines:
                return {"line": lay.line_names[idx]}
            return {}
        if 0 <= idx < lay.n_cells:
            return {"line": lay.line_names[int(self._cell_line[idx])], "room": lay.room_names[int(self._cell_room[idx])],
                    "cell": int(lay.cell_number[idx])}  # fmt: skip
        return {}

    # ------------------------------------------------------------------ journal helpers

    def _journal(self, kind: str, *, commit: bool = False, **fields: Any) -> Event | None:
        """Append (and maybe commit) one event; never raises (a journal error is logged + counted)."""
        j = self.journal
        if j is None:
            return None
        fields.setdefault("plant", self.layout.plant)
        fields.setdefault("mode", self.mode)
        if "t_plant_s" not in fields:
            with contextlib.suppress(Exception):
                fields["t_plant_s"] = float(self.clock.now())
        try:
            ev = j.append(kind=kind, **fields)
        except Exception:
            log.exception("journal.append_failed", kind=kind)
            return None
        if commit:
            self._commit()
        return ev

    def _commit(self) -> bool:
        j = self.journal
        if j is None or not j.pending:
            return True
        t0 = time.perf_counter()
        try:
            batch = j.commit()
        except Exception as exc:
            self.metrics.journal_errors.labels(self.name).inc()
            if not self._journal_failing:
                log.error("journal.commit_failed", error=f"{type(exc).__name__}: {exc}", pending=j.pending,
                          path=str(j.path))  # fmt: skip
            self._journal_failing = True
            self.health.detail["journal"] = f"not writable ({type(exc).__name__}: {exc}); {j.pending} entries held"
            if self.mode == "control" and self.stop_event is not None:
                # writes without an audit trail are not allowed: stop commanding
                asyncio.get_running_loop().create_task(
                    self.set_mode("shadow", "daemon", reason="journal not writable: writes stopped")
                )
            return False
        if self._journal_failing:
            log.info("journal.commit_recovered", committed=len(batch))
            self._journal_failing = False
            self.health.detail.pop("journal", None)
        self.metrics.journal_commit.labels(self.name).observe(time.perf_counter() - t0)
        for e in batch:
            self.metrics.journal_entries.labels(self.name, e.category).inc()
        rotate_mb = self.cfg.journal.rotate_mb
        if rotate_mb is not None and j.size_bytes() > rotate_mb * 1e6:
            self._rotate_journal()
        return True

    def _rotate_journal(self) -> None:
        """Archive the journal file and go on in a fresh one (``journal.rotate_mb``)."""
        j = self.journal
        assert j is not None
        try:
            archive = j.rotate()
        except Exception as exc:
            log.error("journal.rotate_failed", error=f"{type(exc).__name__}: {exc}", path=str(j.path))
            return
        log.info("journal.rotated", archive=str(archive), last_id=j.last_id)
        self._journal("journal_rotated", source="daemon", detail=f"entries up to id {j.last_id} are in {archive.name}",
                      data={"archive": archive.name, "last_id": j.last_id})  # fmt: skip

    # ------------------------------------------------------------------ modes

    async def set_mode(self, new: str, source: str, user: str | None = None, reason: str = "") -> str:
        """Switch the mode; returns the previous one.

        Raises:
            ValueError: refused (unknown mode, an interlock, the journal cannot record it);
                the refusal is journalled and logged.
        """
        assert self._mode_lock is not None
        async with self._mode_lock:
            old = self.mode
            if new not in MODES:
                self._refuse(new, source, user, f"unknown mode {new!r}: expected one of {', '.join(MODES)}")
            if new == old:
                log.info("mode.unchanged", mode=new, source=source, user=user)
                return old
            if new == "control":
                why = self._control_interlock()
                if why:
                    self._refuse(new, source, user, why)
            self._apply_mode(new)
            ev = self._journal("mode_change", source=source, user=user, mode=new,
                               detail=f"{old} -> {new}" + (f" ({reason})" if reason else ""),
                               data={"from": old, "to": new, "reason": reason})  # fmt: skip
            if not self._commit() and new == "control":
                # an unjournalled switch into control is not allowed: undo it
                self._apply_mode(old)
                self._refuse(new, source, user, "journal not writable: a switch to control must be journalled")
            if ev is None and new == "control":
                self._apply_mode(old)
                self._refuse(new, source, user, "journal not available")
            self.metrics.mode_changes.labels(self.name, source).inc()
            log.info("mode.changed", mode=new, previous=old, source=source, user=user, reason=reason)
            if old == "control":
                self._journal("handback", source=source, commit=True,
                              detail="controller stopped commanding: heartbeat stopped, PLCs return to local "
                                     "control on their watchdog")  # fmt: skip
            if self.mirror is not None and source != "opcua":
                self.mirror.submit(lambda srv, m: srv.set_mode(m), new)
            self.notifier.status(self._status_text())
            return old

    def _refuse(self, new: str, source: str, user: str | None, why: str) -> None:
        log.warning("mode.refused", mode=new, source=source, user=user, reason=why)
        self._journal("mode_refused", source=source, user=user, detail=f"{self.mode} -> {new} refused: {why}",
                      data={"requested": str(new)[:64], "reason": why}, commit=True)  # fmt: skip
        raise ValueError(why)

    def _control_interlock(self) -> str:
        """Why 'control' may not be entered now ('' = allowed)."""
        if self.bridge is None or not getattr(self.bridge, "started", False):
            return "PLC bridge not started"
        if self._journal_failing:
            return "journal not writable"
        down = [lk.name for lk in self.links.values() if not lk.up]
        if down and self.cfg.safety.control_needs_all_links:
            return f"PLC link(s) down: {', '.join(sorted(down))}"
        if not self._first_cycle_done:
            return "no control cycle yet"
        return ""

    def _apply_mode(self, mode: str) -> None:
        self.mode = mode
        self._shadow_sp.clear()
        self.health.mode = mode
        self.metrics.set_mode(mode)
        if self.bridge is not None:
            self.bridge.shadow = mode != "control"
            for d in self.bridge.devices:
                if d.writer is not None:
                    d.writer.enabled = mode == "control"
        if self.controller is not None:
            want = mode == "observe"
            if self.controller.cfg.observe_only != want:
                self.controller.cfg = self.controller.cfg.model_copy(update={"observe_only": want})

    def _status_text(self) -> str:
        down = sorted(lk.name for lk in self.links.values() if not lk.up)
        s = f"mode {self.mode}"
        if down:
            s += f"; PLC link(s) down: {', '.join(down)}"
        return s

    # ------------------------------------------------------------------ mode file and signals

    def _read_mode_file(self) -> tuple[str | None, str]:
        """(content, problem): the mode file's mode, or why it cannot be used."""
        p = self.loaded.mode_file
        if p is None:
            return None, "no mode file configured"
        try:
            st = p.lstat()
        except FileNotFoundError:
            return None, ""
        except OSError as exc:
            return None, f"mode file {p}: {exc.strerror or exc}"
        if not stat.S_ISREG(st.st_mode):
            return None, f"mode file {p}: expected a regular file"
        if st.st_mode & 0o022:
            return (
                None,
                f"mode file {p}: writable by group/others (mode {stat.S_IMODE(st.st_mode):o}); expected 0600 or 0644",
            )
        if st.st_uid not in (os.geteuid(), 0):
            return None, f"mode file {p}: owned by uid {st.st_uid}, expected the service user or root"
        if st.st_size > 64:
            return None, f"mode file {p}: {st.st_size} bytes, expected one word (observe|shadow|control)"
        try:
            text = p.read_bytes()[:64].decode("ascii").strip().lower()
        except (OSError, UnicodeDecodeError) as exc:
            return None, f"mode file {p}: unreadable ({exc})"
        return text, ""

    async def apply_mode_file(self, source: str = "mode_file", force: bool = False) -> None:
        """Apply the mode file when its content changed (or ``force``: SIGUSR1)."""
        text, problem = self._read_mode_file()
        key = text if text is not None else f"!{problem}"
        if not force and key == self._mode_file_seen:
            return
        self._mode_file_seen = key
        if problem:
            log.warning("mode_file.refused", reason=problem)
            self._journal("mode_refused", source=source, detail=problem, data={"reason": problem}, commit=True)
            return
        if text is None:
            if force:
                log.warning("mode_file.missing", path=str(self.loaded.mode_file))
            return
        if text not in MODES:
            why = f"mode file {self.loaded.mode_file}: expected observe|shadow|control, got {text[:32]!r}"
            log.warning("mode_file.refused", reason=why)
            self._journal("mode_refused", source=source, detail=why, data={"reason": why}, commit=True)
            return
        with contextlib.suppress(ValueError):
            await self.set_mode(text, source, user=_file_owner(self.loaded.mode_file))

    async def _watch_mode_file(self) -> None:
        period = self.cfg.daemon.mode_file_poll_s
        while True:
            await asyncio.sleep(period)
            try:
                await self.apply_mode_file()
            except Exception:
                log.exception("mode_file.watch_failed")

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self.request_stop, "SIGINT")
        loop.add_signal_handler(signal.SIGHUP, lambda: log.warning(
            "signal.ignored", signal="SIGHUP", hint="configuration is read at start: restart to reload"))  # fmt: skip
        if self.cfg.daemon.signal_modes:
            loop.add_signal_handler(signal.SIGUSR1, self._spawn, lambda: self.apply_mode_file("SIGUSR1", True))
            loop.add_signal_handler(signal.SIGUSR2, self._spawn, self._signal_observe)

    def _spawn(self, factory: Any) -> None:
        """Run ``factory()`` (a coroutine) as a task: signal handlers must not block."""
        t = asyncio.get_running_loop().create_task(factory())
        self._tasks.append(t)
        t.add_done_callback(lambda tt: self._tasks.remove(tt) if tt in self._tasks else None)

    async def _signal_observe(self) -> None:
        with contextlib.suppress(ValueError):
            await self.set_mode("observe", "SIGUSR2", user=None, reason="hands off by signal")

    def request_stop(self, why: str = "stop requested") -> None:
        if self.stop_event is not None and not self.stop_event.is_set():
            log.info("daemon.stopping", reason=why)
            self.stop_reason = why
            self.notifier.stopping(f"stopping ({why})")
            self.health.stopping = True
            self.stop_event.set()

    # ------------------------------------------------------------------ cycle hooks

    def _after_read(self, meas: Any) -> None:
        """Per-PLC link state, then the mirror's observer update."""
        now_mono = time.monotonic()
        for d in self.bridge.devices:
            lk = self.links.get(d.device)
            if lk is None:
                continue
            sc = d.last
            up, reason, n_bad = _scan_health(sc)
            self.metrics.bad_tags.labels(self.name, lk.name).set(n_bad)
            if up:
                lk.last_good_mono = now_mono
            if up != lk.up:
                prev = lk.up
                lk.up = up
                lk.reason = reason
                self.metrics.plc_up.labels(self.name, lk.name).set(1.0 if up else 0.0)
                self.health.plc_up[lk.name] = up
                where = {"line": d.name} if d.kind == "rectifier" else {"room": d.name}
                if not up:
                    lk.faults += 1
                    self.metrics.comms_faults.labels(self.name, lk.name).inc()
                    log.warning("plc.comms_lost", plc=lk.name, device=d.device, reason=reason, **where)
                    self._journal("comms_lost", source=lk.name, detail=f"{d.device}: {reason}",
                                  data={"device": d.device, "first_scan": prev is None}, **where)  # fmt: skip
                elif prev is not None:
                    log.info("plc.comms_restored", plc=lk.name, device=d.device, **where)
                    self._journal("comms_restored", source=lk.name, detail=f"{d.device}: link up, state re-read",
                                  data={"device": d.device}, **where)  # fmt: skip
                else:
                    log.info("plc.connected", plc=lk.name, device=d.device, **where)
                self.notifier.status(self._status_text())
            if not up:
                self.metrics.comms_errors.labels(self.name, lk.name).inc()
        self._last_meas = meas
        try:
            self._update_observer(meas)
        except Exception:
            log.exception("mirror.observer_failed")

    def _as_if_remote(self, meas: Any) -> Any:
        """Measurements as if every PLC were in remote (observe and shadow modes).

        In observe and shadow nothing is sent, so the PLCs stay in local; the controller
        must still compute what it would do. ``cell_ok`` is data quality alone already
        (the bridge judges it regardless of local/remote), so only the authority flags
        change: every cell counts as ``cell_remote`` and a rectifier as remote whenever
        its data is good (its setpoint decisions are then computed, and shown in shadow).
        """
        meas.cell_remote = np.ones(np.shape(meas.cell_ok), dtype=bool)
        meas.rectifier_remote = np.asarray(meas.line_ok, dtype=bool).copy()
        return meas

    def _update_observer(self, meas: Any) -> None:
        obs = self.observer
        if obs is None:
            return
        t = float(meas.t_s)
        feed = np.asarray(meas.feeder_ack, dtype=float)
        beam = np.asarray(meas.beam_ack_mm, dtype=float)
        if self._prev_t is None:
            self._prev_t, self._prev_feed, self._prev_beam = t, feed.copy(), beam.copy()
            return
        dt = t - self._prev_t
        if dt <= 0:
            return
        d_feed = np.maximum(feed - self._prev_feed, 0.0) * self._shot_kg
        d_beam = beam - self._prev_beam
        self._prev_t, self._prev_feed, self._prev_beam = t, feed.copy(), beam.copy()
        i_ka = np.asarray(meas.line_current_ka, dtype=float)[self._cell_line]
        line_ok = np.asarray(meas.line_ok, dtype=bool)[self._cell_line]
        u = np.asarray(meas.cell_voltage_v, dtype=float)
        valid = (np.asarray(meas.cell_ok, dtype=bool) & line_ok & ~np.asarray(meas.cut_out, dtype=bool)
                 & (i_ka > 5.0) & np.isfinite(u))  # fmt: skip
        disturbed = np.asarray(meas.tapping, dtype=bool) | np.asarray(meas.anode_change, dtype=bool)
        a = min(dt / 1800.0, 1.0)
        rate = d_feed / dt
        self._feed_rate = np.where(np.isnan(self._feed_rate), rate, self._feed_rate + a * (rate - self._feed_rate))
        t0 = time.perf_counter()
        obs.update(np.nan_to_num(i_ka) * 1e3, np.nan_to_num(u), d_feed, d_beam, dt, valid, disturbed)
        self.metrics.model_step.labels(self.name).observe(time.perf_counter() - t0)

    def _mirror_snapshot(self, meas: Any) -> dict[str, np.ndarray]:
        i_ka = np.asarray(meas.line_current_ka, dtype=float)
        i_cell = i_ka[self._cell_line]
        u = np.asarray(meas.cell_voltage_v, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(i_cell > 1.0, (u - 1.65) / i_cell * 1e3, np.nan)
        snap: dict[str, np.ndarray] = {"CellVoltage": u, "PseudoResistance": r, "LineCurrent": i_ka,
                                       "LineVoltage": np.asarray(meas.line_voltage_v, dtype=float),
                                       "Superheat": np.full(u.shape, np.nan)}  # fmt: skip
        if self.observer is not None:
            obs = self.observer
            snap["AluminaEstimate"] = obs.alumina_wt_pct.copy()
            snap["AcdEstimate"] = obs.acd_cm.copy()
            rate = np.nan_to_num(self._feed_rate, nan=0.0)
            with np.errstate(divide="ignore", invalid="ignore"):
                snap["TimeToAnodeEffect"] = obs.time_to_ae_s(np.nan_to_num(i_cell) * 1e3, rate)
        if self.controller is not None:
            snap["AnodeEffect"] = self.controller.detector.active.copy()
        return snap

    async def _write(self, cmds: Any) -> None:
        """The mode's write, then the mirror (AE events + one snapshot)."""
        mode = self.mode
        if mode == "control":
            await self.bridge.write(cmds)
        elif mode == "shadow":
            self._shadow_summary(cmds)  # nothing is sent: no heartbeat, the PLCs stay in local
        if self.mirror is not None:
            try:
                self._publish_mirror(cmds)
            except Exception:
                log.exception("mirror.publish_failed")

    def _shadow_summary(self, cmds: Any) -> None:
        shots = np.asarray(cmds.feed_shots)
        moves = np.asarray(cmds.beam_move_mm, dtype=float)
        sp = np.asarray(cmds.line_setpoint_ka, dtype=float)
        fed = np.flatnonzero(shots > 0)
        moved = np.flatnonzero(np.abs(moves) >= 0.05)
        sps = np.flatnonzero(np.isfinite(sp))
        if not (fed.size or moved.size or sps.size):
            return
        lay = self.layout
        decided = {lay.line_names[i]: self._shadow_setpoint(int(i), float(sp[i])) for i in sps}
        beam = [{"room": lay.room_names[int(self._cell_room[k])], "cell": int(lay.cell_number[k]),
                 "mm": round(float(moves[k]), 2)} for k in moved[:50]]  # fmt: skip
        data = {"feed_cells": int(fed.size), "feed_shots": int(shots[fed].sum()), "beam_moves": beam,
                "setpoints_ka": {k: v["value"] for k, v in decided.items()}, "setpoint_decisions": decided}  # fmt: skip
        detail = f"would feed {data['feed_shots']} shot(s) on {fed.size} cell(s), move {moved.size} beam(s)"
        if sps.size:
            detail += ", setpoints " + ", ".join(
                f"{k} {v['value']:g} kA" + (f" ({v['reason']})" if v["reason"] else "")
                for k, v in decided.items()
                if v["value"] is not None
            )
        log.info("shadow.would_write", feed_cells=int(fed.size), feed_shots=data["feed_shots"],
                 beam_moves=int(moved.size), setpoints=data["setpoints_ka"])  # fmt: skip
        self._journal("shadow_commands", source="controller", detail=detail, data=data)

    def _shadow_setpoint(self, line: int, requested: float) -> dict[str, Any]:
        """What the safety layer would make of a setpoint (clamp, ramp from the last decision)."""
        from plc_bridge.safe_write import decide

        meas = self._last_meas
        now = float(meas.t_s) if meas is not None else self.clock.now()
        dev = self.bridge.rects[line] if self.bridge is not None and line < len(self.bridge.rects) else None
        if dev is None or dev.writer is None:
            return {"requested": requested, "value": None, "reason": "no rectifier writer"}
        last = self._shadow_sp.get(line)
        if last is None and meas is not None and bool(meas.line_ok[line]):
            last = (float(meas.line_setpoint_ka[line]), now - self.cfg.daemon.scan_period_s)
        d = decide(dev.writer.limits("line_current_sp"), requested, last[0] if last else None,
                   last[1] if last else None, now)  # fmt: skip
        if d.value is not None:
            self._shadow_sp[line] = (float(d.value), now)
        return {
            "requested": round(requested, 4),
            "value": None if d.value is None else round(float(d.value), 4),
            "clamped": d.clamped,
            "ramped": d.ramped,
            "rejected": d.rejected,
            "reason": d.reason,
        }

    def _publish_mirror(self, cmds: Any) -> None:
        meas = self._last_meas
        if meas is None:
            return
        for kind, idx, _detail in cmds.events:
            if kind in ("ae_start", "ae_end") and 0 <= idx < self.layout.n_cells:
                rec = self._ae_record(idx)
                peak = rec.peak_v if rec is not None else float(np.nan_to_num(meas.cell_voltage_v[idx]))
                dur = 0.0 if kind == "ae_start" or rec is None else float(rec.duration_s)
                self.mirror.submit(lambda srv, *a: srv.publish_event(*a), "start" if kind == "ae_start" else "end",
                                   idx, float(peak), dur)  # fmt: skip
        self.mirror.publish(self._mirror_snapshot(meas), float(meas.t_s))

    def _ae_record(self, cell: int) -> Any:
        det = self.controller.detector
        rec = det._open.get(int(cell)) if hasattr(det, "_open") else None
        if rec is not None:
            return rec
        for r in reversed(det.records):
            if r.cell == int(cell) and r.kind == "HV":
                return r
        return None

    def _on_events(self, events: list[tuple[str, int, str]], now: float) -> None:
        """Controller and bridge events -> journal, metrics, log."""
        meas = self._last_meas
        for kind, idx, detail in events:
            if kind in COMMAND_DEPENDENT_EVENTS and self.mode != "control":
                continue  # its commands are not sent: a missing acknowledgement means nothing
            if kind.startswith("alarm_"):
                self._bridge_alarm(kind, idx, detail, now)
                continue
            where = self._where(kind, idx) if kind != "plc_restart_seen" else {"room": self._room_name(idx)}
            fields: dict[str, Any] = {"t_plant_s": now, "detail": detail, "source": "controller", **where}
            if kind in ("ae_start", "ae_end") and 0 <= idx < self.layout.n_cells:
                rec = self._ae_record(idx)
                if kind == "ae_start":
                    u = float(meas.cell_voltage_v[idx]) if meas is not None else float("nan")
                    fields["value"] = u
                    fields["data"] = {
                        "start_s": getattr(rec, "start_s", None),
                        "detect_s": getattr(rec, "detect_s", None),
                    }
                    self.metrics.anode_effects.labels(self.name, where.get("room", "")).inc()
                else:
                    fields["value"] = getattr(rec, "peak_v", None)
                    fields["data"] = {"start_s": getattr(rec, "start_s", None), "end_s": getattr(rec, "end_s", None),
                                      "duration_s": getattr(rec, "duration_s", None),
                                      "forced_end": getattr(rec, "forced_end", None)}  # fmt: skip
            if kind == "ae_predicted":
                self.metrics.ae_predicted.labels(self.name).inc()
            if kind in ("plc_restart_seen", "command_not_acknowledged"):
                fields["source"] = "bridge"
            level = "warning" if kind in ("ae_start", "ae_escalation", "feeder_fault", "rectifier_trip",
                                          "plc_restart_seen") else "info"  # fmt: skip
            getattr(log, level)(f"event.{kind}", detail=detail, t_plant_s=round(now, 3), **where)
            self._journal(kind, **fields)

    def _room_name(self, idx: int) -> str | None:
        return self.layout.room_names[idx] if 0 <= idx < self.layout.n_rooms else None

    def _bridge_alarm(self, kind: str, idx: int, detail: str, now: float) -> None:
        cleared = kind.endswith("_cleared")
        akind = kind[len("alarm_") :]
        if cleared:
            akind = akind[: -len("_cleared")]
        device, _, msg = detail.partition(": ")
        lk = self.links.get(device)
        where = {}
        if device.startswith("rectifier:"):
            where = {"line": device.split(":", 1)[1]}
        elif device.startswith("potroom:"):
            where = {"room": device.split(":", 1)[1]}
        (log.info if cleared else log.warning)("alarm.cleared" if cleared else "alarm.raised", alarm=akind,
                                               device=device, message=msg, **where)  # fmt: skip
        self._journal("alarm_cleared" if cleared else "alarm", t_plant_s=now, source=lk.name if lk else device,
                      detail=f"{akind}: {msg}", data={"alarm": akind, "device": device}, **where)  # fmt: skip

    def _on_record(self, device: Any) -> Any:
        """A per-device WriteRecord callback (records carry no device of their own)."""
        lk = self.links.get(device.device)
        plc = lk.name if lk else device.device
        where = {"line": device.name} if device.kind == "rectifier" else {"room": device.name}

        def cb(rec: Any) -> None:
            self.metrics.setpoint_writes.labels(self.name, plc, rec.action).inc()
            tag = rec.tag
            fld = tag.split(".", 1)[1] if "." in tag else tag
            if rec.rejected:
                self._refused(lk, plc, rec, where)
                return
            if fld == "line_current_sp":
                self._journal("setpoint_write", t_plant_s=rec.t, source=plc, tag=tag, value=rec.written,
                              detail=(rec.reason or rec.action), data=rec.as_dict(), **where)  # fmt: skip
            elif fld == "beam_move":
                cell = _cell_number(tag)
                self._journal("command_write", t_plant_s=rec.t, source=plc, tag=tag, value=rec.written,
                              cell=cell, detail=f"beam {rec.written:+.1f} mm ({rec.action})",
                              data=rec.as_dict(), **where)  # fmt: skip

        return cb

    def _refused(self, lk: _Link | None, plc: str, rec: Any, where: dict[str, Any]) -> None:
        """Refused writes: journal the first of a kind, then at most one summary a minute."""
        now = time.monotonic()
        reason = rec.reason or "refused"
        key = reason.split(":", 1)[0]
        if lk is None:
            return
        lk.refused_count += 1
        if key != lk.refused_reason or now - lk.refused_journal_mono >= REFUSAL_JOURNAL_EVERY_S:
            n = lk.refused_count
            lk.refused_reason, lk.refused_journal_mono, lk.refused_count = key, now, 0
            fld = rec.tag.split(".", 1)[-1]
            self._journal("write_refused", t_plant_s=rec.t, source=plc, tag=rec.tag, value=rec.requested,
                          cell=_cell_number(rec.tag) if "." in rec.tag else None,
                          detail=f"{fld}: {reason}" + (f" ({n} refused since the last entry)" if n > 1 else ""),
                          data={"refused": n, **rec.as_dict()}, **where)  # fmt: skip

    def _on_cycle(self, info: Any) -> None:
        """After every cycle: commit the journal, metrics, health, systemd watchdog."""
        now_mono = time.monotonic()
        m, nm = self.metrics, self.name
        if self._last_cycle_mono is not None:
            m.loop_period.labels(nm).set(now_mono - self._last_cycle_mono)
        self._last_cycle_mono = now_mono
        m.loop_duration.labels(nm).observe(info.total_s)
        m.loop_lag.labels(nm).set(info.lag_s)
        m.cycles.labels(nm).inc()
        if info.overrun:
            m.overruns.labels(nm).inc()
        period = self.cfg.daemon.scan_period_s
        if info.lag_s > 2 * period and now_mono - self._late_log_mono >= 60.0:
            self._late_log_mono = now_mono
            log.warning("loop.late", lag_s=round(info.lag_s, 3), scan_period_s=period, t_plant_s=round(info.t_s, 3),
                        read_s=round(info.read_s, 4), step_s=round(info.step_s, 4), write_s=round(info.write_s, 4))  # fmt: skip
        m.plant_time.labels(nm).set(info.t_s)
        if self.controller is not None:
            m.anode_effects_active.labels(nm).set(float(self.controller.detector.active.sum()))
            if len(self.controller.event_log) > 2 * CONTROLLER_LOG_KEEP:
                del self.controller.event_log[:-CONTROLLER_LOG_KEEP]
            if len(self.controller.alarm_log) > 2 * CONTROLLER_LOG_KEEP:
                del self.controller.alarm_log[:-CONTROLLER_LOG_KEEP]
        if self.bridge is not None:
            m.alarms_active.labels(nm).set(float(sum(len(d.writer.active_alarms) for d in self.bridge.devices
                                                     if d.writer is not None)))  # fmt: skip
        self._commit()
        self._errors_in_a_row = 0
        self.health.last_cycle_mono = now_mono
        self.notifier.watchdog(now_mono)
        if not self._first_cycle_done:
            self._first_cycle_done = True
            self.health.first_cycle_done = True
            self._startup_s = now_mono - self.started_mono
            m.startup_seconds.labels(nm).set(self._startup_s)
            log.info("daemon.first_cycle", startup_s=round(self._startup_s, 3), mode=self.mode,
                     plc_up={lk.name: bool(lk.up) for lk in self.links.values()}, t_plant_s=round(info.t_s, 3))  # fmt: skip
            self.notifier.ready(self._status_text())
            if self.cfg.opcua.enabled and self.mirror is None:
                # the mirror's address space takes seconds to build for a whole potline: it
                # comes up in its own thread beside the running loop, never before the first cycle
                self._tasks.append(asyncio.get_running_loop().create_task(self._await_mirror(self._start_mirror())))

    def _on_error(self, exc: BaseException) -> None:
        self._errors_in_a_row += 1
        now = time.monotonic()
        if now - self._error_journal_mono >= REFUSAL_JOURNAL_EVERY_S:
            self._error_journal_mono = now
            self._journal("daemon_error", source="daemon", detail=f"control cycle failed: {type(exc).__name__}: {exc}")
        self._commit()
        if self._errors_in_a_row >= 3 and self.mode == "control":
            asyncio.get_running_loop().create_task(
                self.set_mode("observe", "daemon", reason=f"{self._errors_in_a_row} failed cycles in a row")
            )

    def _before_scrape(self) -> None:
        now = time.monotonic()
        for lk in self.links.values():
            age = now - lk.last_good_mono if lk.last_good_mono is not None else now - self.started_mono
            self.metrics.scan_age.labels(self.name, lk.name).set(age)
        self.metrics.rss.labels(self.name).set(_rss_bytes())

    # ------------------------------------------------------------------ start / run / stop

    def _previous_run(self) -> None:
        """Journal how the previous run ended; choose the start mode (``resume_mode``)."""
        j = self.journal
        assert j is not None
        last = j.last(["daemon_start", "daemon_stop"])
        if last is not None and last.kind == "daemon_start":
            log.warning(
                "daemon.unclean_shutdown_detected", previous_start=last.ts_utc, previous_pid=last.data.get("pid")
            )
            self._journal("unclean_shutdown", source="daemon", mode=last.mode,
                          detail=f"previous run (pid {last.data.get('pid')}, started {last.ts_utc}) ended without a "
                                 f"clean stop; last journal id {j.last_id}",
                          data={"previous_pid": last.data.get("pid"), "last_id": j.last_id})  # fmt: skip
        if self.cfg.daemon.resume_mode:
            prev = j.last(["mode_change"])
            if prev is not None and prev.mode in MODES:
                resumed = "shadow" if prev.mode == "control" else prev.mode
                if resumed != self.mode:
                    log.info("mode.resumed", mode=resumed, journalled=prev.mode)
                    self.mode = resumed

    async def _start_bridge(self) -> None:
        """Connect to the PLCs (never fails for a PLC that is down: it keeps retrying)."""
        from plc_bridge.plant import BridgePlant, BridgeSettings, DeviceEndpoint

        cfg, lay = self.cfg, self.layout
        by_dev = {pc.device: pc for pc in cfg.plc}

        def ep(dev: str) -> Any:
            pc = by_dev[dev]
            return DeviceEndpoint(pc.protocol, pc.host, pc.port, pc.path, pc.namespace)

        s = cfg.safety
        settings = BridgeSettings(
            stale_after_s=s.stale_after_s, plc_heartbeat_timeout_s=s.plc_heartbeat_timeout_s,
            setpoint_rate_ka_per_s=s.line_current_ramp_ka_per_s, setpoint_max_interval_s=s.setpoint_max_interval_s,
            setpoint_min_ka=s.line_current_min_ka, setpoint_max_ka=s.line_current_max_ka,
            ack_timeout_s=s.ack_timeout_s, verify_commands=s.verify_commands, modbus_timeout_s=s.modbus_timeout_s,
            opcua_timeout_s=s.opcua_timeout_s, frozen_after_s=s.frozen_voltage_after_s,
            rectifier_map=str(self.loaded.tagmap_paths["rectifier"]),
            potroom_map=str(self.loaded.tagmap_paths["potroom"]),
        )  # fmt: skip
        bridge = BridgePlant(lay, [ep(f"rectifier:{n}") for n in lay.line_names],
                             [ep(f"potroom:{n}") for n in lay.room_names], self.clock, settings,
                             shadow=self.mode != "control")  # fmt: skip
        self.bridge = bridge
        await bridge.start()
        for d in bridge.devices:
            if d.writer is not None:
                d.writer.on_record = self._on_record(d)
        self._apply_mode(self.mode)

    def _start_mirror(self) -> Any:
        """Start the mirror in its thread; returns an awaitable for it being up."""
        from plc_bridge.opcua_server import MirrorServer

        oc = self.cfg.opcua
        main_loop = asyncio.get_running_loop()
        initial = self.mode

        async def opcua_mode(mode: str, user: str | None) -> None:  # runs in the mirror thread
            fut = asyncio.run_coroutine_threadsafe(self.set_mode(mode, "opcua", user=user), main_loop)
            await asyncio.wrap_future(fut)

        def factory() -> Any:
            m = MirrorServer(self.layout, security=self.loaded.security, host=oc.host, port=oc.port, path=oc.path,
                             scalar_period_s=oc.scalar_period_s, initial_mode=initial,
                             server_name=f"potline-twin mirror {self.name}")  # fmt: skip
            m.set_mode_handler(opcua_mode)
            return m

        self.mirror = _MirrorThread(factory, self.layout.plant)
        return self.mirror.start()

    async def _await_mirror(self, started: Any) -> None:
        """The mirror comes up beside the control loop; failing to listen stops the daemon (exit 1)."""
        try:
            await started
        except Exception as exc:
            log.error("daemon.listen_failed", what="opcua mirror", error=str(exc))
            self._journal("daemon_error", source="opcua", detail=f"OPC UA mirror cannot start: {exc}", commit=True)
            self.exit_code = 1
            self.request_stop("OPC UA mirror cannot start")
            return
        self.health.mirror_up = True
        if self.mirror.server is not None and self.mirror.server.mode != self.mode:
            self.mirror.submit(lambda srv, m: srv.set_mode(m), self.mode)

    def _warm_model(self) -> float:
        """Load (or compile) the observer's Numba kernel before the first cycle [s]."""
        from twin.observer import AluminaObserver

        t0 = time.perf_counter()
        probe = AluminaObserver(1)
        probe.update(np.array([1.2e5]), np.array([4.3]), np.zeros(1), np.zeros(1), 1.0)
        dt = time.perf_counter() - t0
        self.health.model_warm = True
        return dt

    async def run(self) -> int:
        """Start, run until stopped, stop gracefully. Returns the exit status."""
        from plc_bridge.runtime import ControlRuntime
        from potctl.controller import PotController
        from twin.observer import AluminaObserver

        structlog.contextvars.bind_contextvars(plant=self.layout.plant)
        # the mirror thread (OPC UA, pure Python) shares the GIL with the control loop: hand it
        # back every 1 ms instead of 5 ms, so an I/O wake-up of the loop is never kept waiting long
        sys.setswitchinterval(0.001)
        self.stop_event = asyncio.Event()
        self._mode_lock = asyncio.Lock()
        cfg = self.cfg
        try:
            max_mb = cfg.journal.max_mb
            self.journal = Journal(self.loaded.journal_path, synchronous=cfg.journal.synchronous,
                                   max_bytes=None if max_mb is None else int(max_mb * 1e6))  # fmt: skip
        except (JournalError, OSError, Exception) as exc:
            log.error("daemon.journal_unavailable", path=str(self.loaded.journal_path), error=str(exc))
            return 1
        self._previous_run()
        self._apply_mode(self.mode)
        self._journal("daemon_start", source="daemon",
                      detail=f"potline-twin {VERSION} pid {os.getpid()}, config {self.loaded.source}",
                      data={"pid": os.getpid(), "version": VERSION, "config": str(self.loaded.source),
                            "cells": self.layout.n_cells, "plcs": [pc.name for pc in cfg.plc]}, commit=True)  # fmt: skip
        self._install_signals()
        self.metrics.info.labels(self.name, VERSION).set(1)
        for lk in self.links.values():
            self.metrics.plc_up.labels(self.name, lk.name).set(0)
            self.health.plc_up[lk.name] = False
        try:
            if cfg.metrics.enabled:
                self.metrics_server = MetricsServer(self.metrics, self.health, cfg.metrics.host, cfg.metrics.port,
                                                    before_scrape=self._before_scrape)  # fmt: skip
                self.metrics_server.start()
                log.info("metrics.listening", url=self.metrics_server.url)
        except OSError as exc:
            log.error("daemon.listen_failed", error=str(exc))
            self._journal("daemon_stop", source="daemon", detail=f"cannot listen: {exc}", commit=True)
            await self._close()
            return 1
        if cfg.opcua.enabled:
            self.health.mirror_up = False  # started after the first cycle (see _on_cycle)
        warm_s = self._warm_model()
        log.info("daemon.model_warm", seconds=round(warm_s, 3))
        self.observer = AluminaObserver(self.layout.n_cells, cell=self.loaded.plant.cell,
                                        nominal_ce=self.loaded.control.feeding.ce_assumed)  # fmt: skip
        self.controller = PotController(self.layout, self.loaded.control)
        while not self.stop_event.is_set():
            try:
                await self._start_bridge()
                break
            except Exception as exc:
                log.exception("bridge.start_failed", error=str(exc))
                self._journal("daemon_error", source="bridge", detail=f"PLC bridge failed to start: {exc}", commit=True)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stop_event.wait(), 5.0)
        if self.loaded.mode_file is not None:
            text, _problem = self._read_mode_file()
            self._mode_file_seen = text if text is not None else (f"!{_problem}" if _problem else None)
            self._tasks.append(asyncio.get_running_loop().create_task(self._watch_mode_file()))
        if not self.stop_event.is_set():
            self.runtime = ControlRuntime(_ModePlant(self), self.controller, self.clock, cfg.daemon.scan_period_s,
                                          on_events=self._on_events, on_cycle=self._on_cycle, on_error=self._on_error)  # fmt: skip
            log.info("daemon.running", mode=self.mode, scan_period_s=cfg.daemon.scan_period_s,
                     cells=self.layout.n_cells, clock_speed=cfg.daemon.clock_speed)  # fmt: skip
            self.notifier.status(self._status_text())
            try:
                await self.runtime.run(stop=self.stop_event)
            except Exception as exc:
                log.exception("daemon.loop_failed")
                self._journal("daemon_error", source="daemon", detail=f"control loop ended: {exc}", commit=True)
                self.exit_code = 1
        await self._shutdown()
        return self.exit_code

    async def _handback(self) -> None:
        """Stop commanding and wait (bounded) until every PLC reports local control."""
        timeout = self.cfg.daemon.handback_timeout_s
        self.bridge.shadow = True
        for d in self.bridge.devices:  # writers disabled: no heartbeat, no command
            if d.writer is not None:
                d.writer.enabled = False
        self.notifier.extend_timeout(timeout + 10.0)
        t0 = time.monotonic()
        remote: list[str] = []
        while True:
            try:
                meas = await asyncio.wait_for(self.bridge.read(), timeout=max(2.0, timeout))
            except Exception:
                meas = None
            remote = []
            if meas is not None:
                for li, name in enumerate(self.layout.line_names):
                    if bool(meas.rectifier_remote[li]) and bool(meas.line_ok[li]):
                        remote.append(f"rectifier:{name}")
            for r in self.bridge.rooms:
                if r.remote:
                    remote.append(r.dev.device)
            if not remote or time.monotonic() - t0 >= timeout:
                break
            await asyncio.sleep(min(0.5, max(0.05, self.cfg.daemon.scan_period_s / self.clock_speed())))
        took = time.monotonic() - t0
        if remote:
            log.error("daemon.handback_timeout", still_remote=remote, waited_s=round(took, 2))
            self._journal("handback", source="daemon", detail=f"PLCs still in remote after {took:.1f} s: "
                          f"{', '.join(remote)} (their watchdogs will drop them to local)",
                          data={"ok": False, "still_remote": remote, "waited_s": took}, commit=True)  # fmt: skip
        else:
            log.info("daemon.handback_done", waited_s=round(took, 2))
            self._journal("handback", source="daemon", detail=f"every PLC reports local control ({took:.1f} s)",
                          data={"ok": True, "waited_s": took}, commit=True)  # fmt: skip
        self._apply_mode("observe")

    def clock_speed(self) -> float:
        return float(getattr(self.clock, "factor", 1.0))

    async def _shutdown(self) -> None:
        log.info("daemon.shutdown", reason=self.stop_reason or "loop ended", mode=self.mode)
        self.notifier.stopping(f"stopping ({self.stop_reason or 'loop ended'})")
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        was = self.mode
        if self.bridge is not None and getattr(self.bridge, "started", False) and was == "control":
            await self._handback()
        self._commit()
        await self._close()

    async def _close(self) -> None:
        if self.mirror is not None:
            await asyncio.to_thread(self.mirror.stop)
        if self.bridge is not None:
            with contextlib.suppress(Exception):
                await self.bridge.stop()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        if self.journal is not None:
            self._journal("daemon_stop", source="daemon", detail=f"clean stop ({self.stop_reason or 'loop ended'})",
                          data={"pid": os.getpid(), "reason": self.stop_reason, "exit_code": self.exit_code})  # fmt: skip
            self._commit()
            j = self.journal
            if j.pending:  # the journal cannot take them (disk full, size cap): the log keeps them
                for ev in j.pending_events():
                    log.error("journal.unwritten", **{k: v for k, v in ev.as_dict().items() if k != "id"})
            log.info("journal.closed", committed=j.committed, last_id=j.last_id, pending=j.pending, path=str(j.path))
            with contextlib.suppress(Exception):
                j.close()
        log.info("daemon.stopped", exit_code=self.exit_code)


# ====================================================================== helpers


def _scan_health(sc: Any) -> tuple[bool, str, int]:
    """(up, reason, bad tag count) of a device's last scan."""
    if sc is None:
        return False, "not scanned yet", 0
    n_bad = sum(1 for s in sc.scalars.values() if not s.good)
    n_good = len(sc.scalars) - n_bad
    for _f, (_v, g) in sc.fields.items():
        gb = int(np.count_nonzero(g))
        n_good += gb
        n_bad += int(g.size) - gb
    if not sc.link_ok:
        reasons = [s.reason for s in sc.scalars.values() if s.reason]
        return False, reasons[0] if reasons else "no link", n_bad
    if n_good == 0:
        reasons = [s.reason for s in sc.scalars.values() if s.reason]
        return False, "every tag bad" + (f": {reasons[0]}" if reasons else ""), n_bad
    return True, "", n_bad


def _cell_number(tag: str) -> int | None:
    """Floor number from a per-cell tag name like ``cell007.beam_move``."""
    head = tag.split(".", 1)[0]
    digits = "".join(ch for ch in head if ch.isdigit())
    return int(digits) if digits else None


def _file_owner(p: Path | None) -> str | None:
    if p is None:
        return None
    try:
        import pwd

        return pwd.getpwuid(p.stat().st_uid).pw_name
    except (KeyError, OSError, ImportError):
        return None
