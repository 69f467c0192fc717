"""``potline run`` for scrap-refining pots: a READY candidate on the pot's PLC.

A daemon config with a ``[refining]`` section and ``[[plc]]`` entries of kind
``refining_pot`` (no plant, no potroom or rectifier PLCs) runs ``RefiningDaemon``
instead of the potline's ``Daemon``::

    [daemon]
    mode = "observe"                      # observe | shadow | control, as for a potline
    state_dir = "state"

    [[plc]]
    name = "pot1"
    kind = "refining_pot"
    pot = "Pot1"                          # the tag map's {instance}
    protocol = "modbus"                   # or opcua
    host = "10.1.2.9"
    port = 502

    [refining]
    config = "refining_3ka.toml"          # the pot's config (a calibrated one: potline calibrate --write)
    candidate = "nominal"                 # the READY candidate: a preset or module:attr

Per pot: ``plc_bridge.refining_plant.RefiningPlant`` (the tag map read into the
candidate's ``PotReadings``; writes only through ``plc_bridge.safe_write.SafeWriter``,
bounded by the pot config's ``[safety]``, ramp-limited, interlocked, read back, the
heartbeat in control) and ``RefiningController`` (the candidate behind the
``SafeCommandFilter``) under ``plc_bridge.runtime.ControlRuntime`` with the pot config's
``[operation] control_period_s`` as the cycle. What it shares with the potline daemon:
the mode machine and its switches (``potline.modes``, ``potline.mode_switch``: the mode
file, ``SIGUSR1``/``SIGUSR2``, the control interlock, re-arming after an unclean stop),
the journal (``potline.recorder``), link tracking (``potline.links``), metrics and health
(``potline.metrics``: ``/metrics``, ``/healthz``, ``/readyz``), systemd notify and the
graceful stop (``potline.lifecycle``: the heartbeat stops, the PLC is waited on until it
reports local).

Modes: ``observe`` reads and journals link changes, the candidate is not stepped and
nothing is written; ``shadow`` steps the candidate and journals, once per cycle, what
the safe-write layer would have sent (``shadow_commands``; nothing is sent and no
heartbeat goes out, so the PLC stays in local); ``control`` sends through the safe-write
layer and journals each write (``setpoint_write`` for current and heater setpoints,
``command_write`` for charges, taps and a stop; ``write_refused`` when the layer refuses).

Not served for refining pots (yet): the OPC UA mirror, the HMI, the history and the
ISA-18.2 alarm list; a ``[refining]`` config that sets them is refused
(``potline.refining_config`` checks and loads the section).
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import structlog

from potline.clocks import clock_speed, make_clock, process_age_s, rss_bytes
from potline.journal import Journal, open_configured
from potline.lifecycle import Lifecycle
from potline.links import LinkTracker
from potline.metrics import DaemonMetrics, HealthState, MetricsServer
from potline.mode_file import ModeFile
from potline.mode_switch import ModeSwitch, carried_disarm
from potline.modes import Interlock, Mode, ModeMachine, PreviousRun
from potline.recorder import JournalRecorder
from potline.refining_config import LoadedRefining, describe
from potline.sd_notify import Notifier

if TYPE_CHECKING:
    from plc_bridge.quality import Sample
    from plc_bridge.refining_plant import RefiningCommands, RefiningController, RefiningMeasurements, RefiningPlant
    from plc_bridge.runtime import ControlRuntime, CycleInfo
    from plc_bridge.safe_write import Alarm, SafeWriter, WriteRecord
    from plc_bridge.tagmap import TagMap
    from potline.daemon_config import LoadedConfig, PlcSection

__all__ = ["RefiningDaemon", "report_check"]

log = structlog.get_logger("potline.daemon")

VERSION = "0.1.0"
#: a refused write is journalled again at most this often per tag and reason [wall s]
REFUSAL_JOURNAL_EVERY_S = 60.0
#: failed cycles in a row that take the daemon out of control
ERRORS_LEAVE_CONTROL = 3
#: /healthz calls the loop stalled only after this many control periods without a cycle
STALL_PERIODS = 3.0
#: engineering units of the written tags (journal lines)
_UNITS = {"current_sp": "A", "heater_sp": "°C", "charge_kg": "kg", "tap_kg": "kg"}


# ---------------------------------------------------------------------- one pot


@dataclass(slots=True)
class _Scan:
    """A pot's last scan as ``potline.links`` judges it."""

    scalars: dict[str, Sample]
    link_ok: bool
    fields: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


class _Pot:
    """One refining pot: its PLC connection, plant, controller and journal bookkeeping.

    Also the ``potline.links.DeviceView`` of its PLC.
    """

    kind = "refining_pot"

    def __init__(self, pc: PlcSection, tagmap: TagMap) -> None:
        self.pc = pc
        self.tagmap = tagmap
        self.name = str(pc.pot)
        self.device = pc.device
        self.io: Any = None
        self.closer: Any = None
        self.plant: RefiningPlant | None = None
        self.controller: RefiningController | None = None
        self.runtime: ControlRuntime | None = None
        self.last: _Scan | None = None
        self.shadow: list[WriteRecord] = []
        self.hold_text = ""
        self.refused: dict[tuple[str, str], float] = {}
        self.cycles = 0

    @property
    def writer(self) -> SafeWriter | None:
        return self.plant.writer if self.plant is not None else None


class _ModePot:
    """The ``Plant`` handed to ``ControlRuntime`` for one pot: reads feed the link state and the
    metrics; writes go through ``RefiningPlant`` (which applies the mode)."""

    def __init__(self, daemon: RefiningDaemon, pot: _Pot) -> None:
        self.d = daemon
        self.pot = pot

    async def read(self) -> RefiningMeasurements:
        assert self.pot.plant is not None
        meas = await self.pot.plant.read()
        self.d.after_read(self.pot, meas)
        return meas

    async def write(self, cmds: RefiningCommands) -> None:
        assert self.pot.plant is not None
        await self.pot.plant.write(cmds)

    def drain_events(self) -> list[tuple[str, int, str]]:
        assert self.pot.plant is not None
        return self.pot.plant.drain_events()


class _ModeController:
    """The candidate, stepped in shadow and control only (observe decides nothing)."""

    def __init__(self, daemon: RefiningDaemon, inner: RefiningController, heater_c: float) -> None:
        self.d = daemon
        self.inner = inner
        self.heater_c = heater_c

    def step(self, meas: RefiningMeasurements, now: float) -> RefiningCommands:
        from plc_bridge.refining_plant import RefiningCommands
        from refining.model import PotInputs

        if self.d.mode == "observe":
            return RefiningCommands(PotInputs.hold(1, 0.0, self.heater_c))
        return self.inner.step(meas, now)


# ---------------------------------------------------------------------- the daemon


class RefiningDaemon:
    """``potline run`` for a ``[refining]`` config (see the module docstring).

    Args:
        loaded: a validated config with ``loaded.refining`` set.
        env: environment for systemd notifications (default ``os.environ``).
    """

    def __init__(self, loaded: LoadedConfig, *, env: dict[str, str] | None = None) -> None:
        assert loaded.refining is not None, "RefiningDaemon needs a [refining] config"
        self.loaded = loaded
        self.cfg = cfg = loaded.config
        self.r: LoadedRefining = loaded.refining
        self.name = loaded.name
        age = process_age_s()
        self.started_mono = time.monotonic() - (age or 0.0)
        self.clock = make_clock(loaded)
        self.modes = ModeMachine(cfg.daemon.mode, resume_mode=cfg.daemon.resume_mode)
        self.notifier = Notifier(env)
        self.metrics = DaemonMetrics(self.name)
        period_wall = self.r.period_s / clock_speed(self.clock)
        self.health = HealthState(stall_s=max(cfg.daemon.stall_s, STALL_PERIODS * period_wall),
                                  started_mono=self.started_mono, mode=self.mode)  # fmt: skip
        self.recorder = JournalRecorder(self.name, self.name, self.metrics, self.health, mode=lambda: self.mode,
                                        now=self.clock.now, rotate_mb=cfg.journal.rotate_mb)  # fmt: skip
        self.recorder.on_failure = self._journal_failed
        self.links = LinkTracker(cfg.plc, self.name, self.metrics, self.health, self.recorder,
                                 on_change=self._status_changed)  # fmt: skip
        self.lifecycle = Lifecycle(self.notifier, self.health)
        self.switch = ModeSwitch(self.modes, self.name, self.recorder, self.metrics, self.health, self.notifier,
                                 ModeFile(loaded.mode_file) if loaded.mode_file is not None else None,
                                 facts=self.interlock, now=self._now, status=self._status_text,
                                 on_apply=self._apply)  # fmt: skip
        self.pots = [_Pot(pc, self.r.tagmaps[pc.name]) for pc in cfg.plc]
        self.metrics_server: MetricsServer | None = None
        self.exit_code = 0
        self._started = False
        self._first_cycle_done = False
        self._errors_in_a_row = 0
        self._gauges = self._make_gauges()

    # ------------------------------------------------------------------ state

    @property
    def mode(self) -> Mode:
        return self.modes.mode

    def _now(self) -> float | None:
        try:
            return float(self.clock.now())
        except Exception:
            return None

    def interlock(self) -> Interlock:
        """The control interlock's facts now (every pot connected and scanned, the journal writable)."""
        return Interlock(
            bridge_started=self._started,
            journal_writable=self.recorder.journal is not None and not self.recorder.failing,
            links_down=self.links.down(),
            first_cycle_done=self._first_cycle_done,
            needs_all_links=self.cfg.safety.control_needs_all_links,
        )

    def _status_text(self) -> str:
        down = self.links.down()
        return f"mode {self.mode}" + (f"; PLC link(s) down: {', '.join(down)}" if down else "")

    def _status_changed(self) -> None:
        self.notifier.status(self._status_text())

    def _journal_failed(self) -> None:
        if self.mode == "control" and self.lifecycle.stop_event is not None:
            self.switch.leave_control_soon("shadow", "daemon", "journal not writable: writes stopped")

    def _apply(self, mode: Mode) -> None:
        """The mode on every pot's plant (writer on/off, heartbeat, resync on entering control)."""
        for pot in self.pots:
            pot.shadow.clear()
            if pot.plant is not None and pot.plant.mode != mode:
                pot.plant.set_mode(mode)

    def _make_gauges(self) -> dict[str, Any]:
        from prometheus_client import Gauge

        r, lbl = self.metrics.registry, ("plant", "pot")
        return {
            "current_a": Gauge("potline_refining_current_amperes", "Pot current (PLC interval mean)", lbl, registry=r),
            "temperature_c": Gauge("potline_refining_temperature_celsius", "Pot temperature", lbl, registry=r),
            "tapped_kg": Gauge("potline_refining_tapped_kilograms", "Metal tapped this cycle", lbl, registry=r),
            "remote": Gauge("potline_refining_remote", "1 while the pot's PLC accepts remote commands", lbl,
                            registry=r),
        }  # fmt: skip

    # ------------------------------------------------------------------ cycle hooks

    def after_read(self, pot: _Pot, meas: RefiningMeasurements) -> None:
        """The pot's link state and its gauges."""
        from plc_bridge.quality import Quality

        pot.last = _Scan(dict(meas.samples), any(s.quality is not Quality.BAD for s in meas.samples.values()))
        self.links.update([pot], time.monotonic())
        r = meas.readings
        for key, v in (("current_a", r.current_a[0]), ("temperature_c", r.temperature_c[0]),
                       ("tapped_kg", r.tapped_total_kg[0]), ("remote", float(meas.remote))):  # fmt: skip
            if math.isfinite(float(v)):
                self._gauges[key].labels(self.name, pot.name).set(float(v))

    def _on_record(self, pot: _Pot, rec: WriteRecord) -> None:
        """One decision of the safe-write layer: journalled per write in control, per cycle in shadow."""
        plc = pot.pc.name
        self.metrics.setpoint_writes.labels(self.name, plc, rec.action).inc()
        if rec.unchanged:
            return
        if rec.shadow:
            pot.shadow.append(rec)
            return
        if rec.rejected:
            key = (rec.tag, (rec.reason or "refused").split(":", 1)[0])
            now = time.monotonic()
            if now - pot.refused.get(key, -math.inf) >= REFUSAL_JOURNAL_EVERY_S:
                pot.refused[key] = now
                self.recorder.append("write_refused", t_plant_s=rec.t, source=plc, tag=rec.tag, value=rec.requested,
                                     detail=f"{pot.name}: {rec.tag}: {rec.reason or 'refused'}",
                                     data={"pot": pot.name, **rec.as_dict()})  # fmt: skip
            return
        kind = "setpoint_write" if rec.tag in ("current_sp", "heater_sp") else "command_write"
        self.recorder.append(kind, t_plant_s=rec.t, source=plc, tag=rec.tag, value=rec.written,
                             detail=f"{pot.name}: {_what(rec)}", data={"pot": pot.name, **rec.as_dict()})  # fmt: skip

    def _on_alarm(self, pot: _Pot, alarm: Alarm) -> None:
        """A safety-layer alarm (comms, read-back, refusal, stale PLC counter): logged and journalled."""
        kind = "alarm_raised" if alarm.active else "alarm_cleared"
        log.warning("refining.safety_alarm", pot=pot.name, alarm=alarm.kind, active=alarm.active, tag=alarm.tag,
                    message=alarm.message)  # fmt: skip
        self.recorder.append(kind, t_plant_s=alarm.t, source=pot.pc.name, tag=alarm.tag,
                             detail=f"{pot.name}: {alarm.kind}: {alarm.message}",
                             data={"pot": pot.name, "alarm": alarm.kind, "active": alarm.active})  # fmt: skip

    def _on_events(self, pot: _Pot, events: list[tuple[str, int, str]], now: float) -> None:
        """The candidate's and the plant's events: a hold journalled when it starts or changes
        (and when it ends), each filter action journalled; mode changes are the switch's."""
        holding = ""
        for kind, _idx, text in events:
            if kind == "refining_hold":
                holding = text
            elif kind == "refining_filter":
                self.recorder.append("controller_action", t_plant_s=now, source=pot.pc.name,
                                     detail=f"{pot.name}: safety filter: {text}", data={"pot": pot.name})  # fmt: skip
        if self.mode != "observe" and holding != pot.hold_text:
            detail = f"{pot.name}: {holding}" if holding else f"{pot.name}: commands resumed"
            log.info("refining.hold", pot=pot.name, detail=detail)
            self.recorder.append("controller_hold", t_plant_s=now, source=pot.pc.name, detail=detail,
                                 data={"pot": pot.name, "holding": bool(holding)})  # fmt: skip
            pot.hold_text = holding

    def _flush_shadow(self, pot: _Pot, t: float) -> None:
        """Shadow: one ``shadow_commands`` entry per cycle with what would have been sent."""
        recs, pot.shadow = pot.shadow, []
        if not recs or self.mode != "shadow":
            return
        decided = [r for r in recs if r.tag not in ("charge_cmd", "tap_cmd")]
        detail = f"{pot.name} would set " + ", ".join(_what(r) for r in decided) if decided else pot.name
        values = {r.tag: r.written if r.written is not None else r.requested for r in recs}
        log.info("shadow.would_write", pot=pot.name, **{k: v for k, v in values.items() if v is not None})
        self.recorder.append("shadow_commands", t_plant_s=t, source="controller", detail=detail,
                             data={"pot": pot.name, "candidate": self.r.candidate, "values": values,
                                   "decisions": [r.as_dict() for r in recs]})  # fmt: skip

    def _on_cycle(self, pot: _Pot, info: CycleInfo) -> None:
        """After every cycle of a pot: the shadow record, commit, metrics, health, systemd, a pending mode."""
        now_mono = time.monotonic()
        m, nm = self.metrics, self.name
        self._flush_shadow(pot, info.t_s)
        pot.cycles += 1
        m.loop_duration.labels(nm).observe(info.total_s)
        m.loop_lag.labels(nm).set(info.lag_s)
        m.cycles.labels(nm).inc()
        if info.overrun:
            m.overruns.labels(nm).inc()
        m.plant_time.labels(nm).set(info.t_s)
        w = pot.writer
        m.alarms_active.labels(nm).set(float(len(w.active_alarms)) if w is not None else 0.0)
        self.recorder.commit()
        self._errors_in_a_row = 0
        self.health.last_cycle_mono = now_mono
        self.notifier.watchdog(now_mono)
        if not self._first_cycle_done and all(p.cycles > 0 for p in self.pots):
            self._first_cycle_done = True
            self.health.first_cycle_done = True
            startup_s = now_mono - self.started_mono
            m.startup_seconds.labels(nm).set(startup_s)
            log.info("daemon.first_cycle", startup_s=round(startup_s, 3), mode=self.mode, t_plant_s=round(info.t_s, 3),
                     plc_up={lk.name: bool(lk.up) for lk in self.links.links.values()})  # fmt: skip
            self.notifier.ready(self._status_text())
        self.switch.tick(info.t_s)

    def _on_error(self, exc: BaseException) -> None:
        self._errors_in_a_row += 1
        self.recorder.append(
            "daemon_error", source="daemon", detail=f"control cycle failed: {type(exc).__name__}: {exc}"
        )
        self.recorder.commit()
        if self._errors_in_a_row >= ERRORS_LEAVE_CONTROL and self.mode == "control":
            self.switch.leave_control_soon("observe", "daemon", f"{self._errors_in_a_row} failed cycles in a row")

    def _before_scrape(self) -> None:
        self.links.scan_ages(time.monotonic(), self.started_mono)
        self.metrics.rss.labels(self.name).set(rss_bytes())

    # ------------------------------------------------------------------ start

    def _previous_run(self, j: Journal) -> PreviousRun:
        """How the previous run ended (an unclean stop is journalled), its last mode and a
        disarming no operator re-armed since (as the potline daemon reads them)."""
        last = j.last(["daemon_start", "daemon_stop"])
        clean = not (last is not None and last.kind == "daemon_start")
        pid = last.data.get("pid") if last is not None else None
        if not clean and last is not None:
            log.warning("daemon.unclean_shutdown_detected", previous_start=last.ts_utc, previous_pid=pid)
            self.recorder.append("unclean_shutdown", source="daemon", mode=last.mode,
                                 detail=f"previous run (pid {pid}, started {last.ts_utc}) ended without a clean stop",
                                 data={"previous_pid": pid, "last_id": j.last_id})  # fmt: skip
        last_mode = None
        if self.cfg.daemon.resume_mode:
            prev = j.last(["mode_change"])
            last_mode = prev.mode if prev is not None else None
        disarmed, not_ready = carried_disarm(j)  # a disarming not re-armed holds across a clean restart
        return PreviousRun(clean=clean, last_mode=last_mode, pid=pid if isinstance(pid, int) else None,
                           started_utc=last.ts_utc if last is not None else None, disarmed=disarmed,
                           disarmed_not_ready=not_ready)  # fmt: skip

    def _journal_start(self) -> None:
        r = self.r
        self.recorder.append("daemon_start", source="daemon",
                             detail=f"potline-twin {VERSION} pid {os.getpid()}, config {self.loaded.source}: refining "
                                    f"pot(s) {', '.join(p.name for p in self.pots)}, candidate {r.candidate}",
                             data={"pid": os.getpid(), "version": VERSION, "config": str(self.loaded.source),
                                   "refining_config": str(r.config_path), "candidate": r.candidate,
                                   "verdict": r.verdict,
                                   "pots": [p.name for p in self.pots], "plcs": [p.pc.name for p in self.pots]})  # fmt: skip

    async def _connect(self, pot: _Pot) -> None:
        """The pot's PLC client (never fails for a PLC that is down: the client keeps reconnecting)."""
        from plc_bridge.plant import DeviceEndpoint, OpcUaTagIO
        from plc_bridge.refining_plant import RefiningController, RefiningPlant

        pc, s = pot.pc, self.cfg.safety
        if pc.protocol == "modbus":
            from plc_bridge.modbus_client import ModbusTagClient

            client = ModbusTagClient(pot.tagmap, pc.host, pc.port, clock=self.clock, timeout_s=s.modbus_timeout_s,
                                     retries=1, name=pc.name)  # fmt: skip
            await client.connect()
            pot.io, pot.closer = client, client.close
        else:
            from plc_bridge.opcua_client import NodeRef, OpcUaClient

            ep = DeviceEndpoint(pc.protocol, pc.host, pc.port, pc.path, pc.namespace,
                                security=self.loaded.plc_security.get(pc.name))  # fmt: skip
            refs = [NodeRef(t.name, t.browse_path, t.node_id) for t in pot.tagmap if t.browse_path or t.node_id]
            opc = OpcUaClient(ep.url, refs, namespace=ep.namespace or pot.tagmap.namespace, security=ep.security,
                              timeout_s=s.opcua_timeout_s, retry_delay_s=0.25, clock=self.clock, name=pc.name)  # fmt: skip
            await opc.start(wait_s=5.0)
            pot.io, pot.closer = OpcUaTagIO(opc, pot.tagmap), opc.stop
        r = self.r
        pot.plant = RefiningPlant(pot.io, pot.tagmap, self.clock, r.cfg, mode=self.mode,
                                  heartbeat_timeout_s=r.heartbeat_timeout_s, name=pot.name,
                                  on_record=lambda rec: self._on_record(pot, rec),
                                  on_alarm=lambda a: self._on_alarm(pot, a))  # fmt: skip
        pot.controller = RefiningController(r.factory(1), r.cfg)

    # ------------------------------------------------------------------ run / stop

    async def run(self) -> int:
        """Start, run until stopped, hand the pots back, stop. Returns the exit status."""
        from plc_bridge.runtime import ControlRuntime

        structlog.contextvars.bind_contextvars(plant=self.name)
        stop = self.lifecycle.bind()
        cfg = self.cfg
        j = open_configured(self.loaded)
        if j is None:
            return 1
        self.recorder.journal = j
        self.switch.start(self._previous_run(j), self._journal_start)
        self.lifecycle.install_signals(
            on_usr1=(lambda: self.switch.apply_mode_file("SIGUSR1", True)) if cfg.daemon.signal_modes else None,
            on_usr2=self.switch.observe_now if cfg.daemon.signal_modes else None,
        )
        self.metrics.info.labels(self.name, VERSION).set(1)
        self.links.reset_metrics()
        if cfg.metrics.enabled:
            try:
                self.metrics_server = MetricsServer(self.metrics, self.health, cfg.metrics.host, cfg.metrics.port,
                                                    before_scrape=self._before_scrape)  # fmt: skip
                self.metrics_server.start()
            except OSError as exc:
                log.error("daemon.listen_failed", error=str(exc))
                self.lifecycle.stop_reason = f"cannot listen: {exc}"
                self.exit_code = 1
                await self._close()
                return 1
            log.info("metrics.listening", url=self.metrics_server.url)
        await asyncio.gather(*(self._connect(p) for p in self.pots))
        self._apply(self.mode)
        self._started = True
        self.health.model_warm = True  # no observer model to load: the candidate is plain NumPy
        if self.switch.mode_file is not None:
            self.lifecycle.spawn(self.switch.watch_mode_file(cfg.daemon.mode_file_poll_s))
        for pot in self.pots:
            assert pot.controller is not None
            ctl = _ModeController(self, pot.controller, self.r.cfg.operation.heater_setpoint_c)
            # ControlRuntime is typed for the potline's Plant and controller; it only calls
            # read/step/write/drain_events, which the refining pot's wrappers give
            pot.runtime = ControlRuntime(cast(Any, _ModePot(self, pot)), cast(Any, ctl), self.clock, self.r.period_s,
                                         on_events=functools.partial(self._on_events, pot),
                                         on_cycle=functools.partial(self._on_cycle, pot),
                                         on_error=self._on_error)  # fmt: skip
        log.info("daemon.running", mode=self.mode, pots=[p.name for p in self.pots], candidate=self.r.candidate,
                 period_s=self.r.period_s, clock_speed=cfg.daemon.clock_speed)  # fmt: skip
        self.notifier.status(self._status_text())
        try:
            await asyncio.gather(*(p.runtime.run(stop=stop) for p in self.pots if p.runtime is not None))
        except Exception as exc:
            log.exception("daemon.loop_failed")
            self.recorder.append("daemon_error", source="daemon", detail=f"control loop ended: {exc}", commit=True)
            self.exit_code = 1
        await self._shutdown()
        return self.exit_code

    async def _handback(self) -> None:
        """Stop commanding (no heartbeat from here on) and wait, bounded, until every pot's PLC
        reports local control; then observe (journalled)."""
        t0 = time.monotonic()
        timeout = self.cfg.daemon.handback_timeout_s
        poll = min(0.5, max(0.05, self.r.period_s / clock_speed(self.clock) / 4))
        for pot in self.pots:
            if pot.plant is not None:
                pot.plant.writer.enabled = False
        still: list[str] = [p.name for p in self.pots]
        while still and time.monotonic() - t0 < timeout:
            for pot in list(self.pots):
                if pot.name in still and pot.plant is not None:
                    try:
                        meas = await pot.plant.read()
                    except Exception:
                        continue
                    if meas.samples.get("remote") is not None and meas.samples["remote"].good and not meas.remote:
                        still.remove(pot.name)
            if still:
                await asyncio.sleep(poll)
        took = time.monotonic() - t0
        if not still:
            log.info("daemon.handback_done", waited_s=round(took, 2))
            self.switch.stop(f"every refining pot reports local control ({took:.1f} s)", {"ok": True, "waited_s": took})
        else:
            log.error("daemon.handback_timeout", still_remote=still, waited_s=round(took, 2))
            self.switch.stop(f"pots still in remote after {took:.1f} s: {', '.join(still)} (their watchdogs will drop "
                             "them to local)", {"ok": False, "still_remote": still, "waited_s": took})  # fmt: skip

    async def _shutdown(self) -> None:
        why = self.lifecycle.stop_reason or "loop ended"
        log.info("daemon.shutdown", reason=why, mode=self.mode)
        self.notifier.stopping(f"stopping ({why})")
        await self.lifecycle.cancel_tasks()
        if self._started and self.mode == "control":
            await self._handback()
        self.recorder.commit()
        await self._close()

    async def _close(self) -> None:
        for pot in self.pots:
            if pot.closer is not None:
                try:
                    await pot.closer()
                except Exception:
                    log.debug("plc.close_failed", plc=pot.pc.name, exc_info=True)
        if self.metrics_server is not None:
            self.metrics_server.stop()
        reason = self.lifecycle.stop_reason
        data = {"pid": os.getpid(), "reason": reason, "exit_code": self.exit_code}
        if not self.recorder.close(reason or "loop ended", data):
            self.exit_code = self.exit_code or 1
        log.info("daemon.stopped", exit_code=self.exit_code)


def _what(rec: WriteRecord) -> str:
    """``current_sp 300 A (ramped)`` for a journal line."""
    v = rec.written if rec.written is not None else rec.requested
    unit = _UNITS.get(rec.tag, "")
    val = f"{v:g}{' ' + unit if unit else ''}" if isinstance(v, (int, float)) else str(v)
    return f"{rec.tag} {val} ({rec.action})"


def report_check(config: Path, loaded: LoadedConfig, as_json: bool) -> int:
    """``potline check-config`` for a valid ``[refining]`` config: the summary (text or JSON); 0."""
    import json

    s = describe(loaded)
    if as_json:
        print(json.dumps({"valid": True, **s}, indent=1))
        return 0
    print(f"{config}: ok — refining pot(s) {', '.join(p['pot'] for p in s['plcs'])} ({s['pot']}, {s['config']}), "
          f"candidate {s['candidate']}, cycle {s['period_s']:g} s, mode {s['mode']}")  # fmt: skip
    print(f"  write bounds ([safety] of the pot config): {s['bounds']}")
    print(f"  shadow verdict: {s['verdict']}")
    for p in s["plcs"]:
        print(f"  {p['name']}: refining_pot {p['pot']} {p['endpoint']} ({p['tags']} tags from {p['tagmap']})")
        for loss in p["losses"]:
            print(f"    capability loss: {loss}")
    print(f"  journal {s['journal']}")
    return 0
