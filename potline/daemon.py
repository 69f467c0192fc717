"""The headless daemon behind ``potline run``: composition of everything the plant server runs.

config -> ``BridgePlant`` (PLCs over Modbus/OPC UA, writes through the safety layer)
-> ``ControlRuntime`` (read -> step -> write on a clock) with ``PotController``, plus:

* **the twin as mirror** (``potline.mirror``): an ``AluminaObserver`` (EKF, Numba)
  follows every cell from the measurements and acknowledged feed/beam actions;
  ``MirrorServer`` publishes its estimates (alumina, ACD, time to AE) next to the
  measurements over OPC UA, each value with the quality and source time of the scan it
  came from, a link-state object per PLC, AE start/end events, the alarms as OPC UA
  Alarms & Conditions (an operator's Acknowledge goes to the alarm manager) and
  HistoryRead from the history file;
* **modes** (``potline.modes``: ``observe`` | ``shadow`` | ``control``), switchable at
  runtime by an operator's OPC UA ``Twin/SetMode`` call, by signals (``SIGUSR1``: apply
  the mode file now, ``SIGUSR2``: observe now) or by writing the mode file
  (``potline.mode_file``, which always shows the running mode); every switch and every
  refusal is journalled with who/what asked. ``observe``: mirror and detection only,
  nothing written, no heartbeat (the PLCs stay in local). ``shadow``: the controller
  computes; what it would write is logged and journalled, nothing is sent. ``control``:
  commands go through ``plc_bridge.safe_write`` (heartbeat running, the PLCs go
  remote); entering it needs the control interlock (every PLC link up, journal
  writable), at start as at run time. After an unclean stop the daemon starts in
  ``observe`` and only an operator's request re-arms control; a clean start asked for
  ``control`` runs ``shadow`` until the interlock is clear;
* **journal** (SQLite WAL, ``potline.journal`` via ``potline.recorder``): AE events,
  setpoint and beam writes, shadow decisions, mode changes, alarms, comms faults
  (``potline.links``, ``potline.event_routing``), start/stop (an unclean previous stop
  is detected and journalled); committed once per cycle;
* **metrics and health** (``potline.metrics``) with the **process KPIs**
  (``potline.kpis``), **systemd** notify/watchdog (``READY=1`` after the first cycle,
  ``WATCHDOG=1`` from the loop only);
* **alarms** (``potline.alarms``, ISA-18.2): AEs, escalations, comms losses, the safety
  layer's and the journal's own alarms, suppressed by design for cut-out cells (and, in
  control, rooms in local); every change journalled;
* **history** (``potline.history``): every scan's cell and line quantities, written on a
  single-thread executor (at most one write in flight: the cycle never waits for it),
  pruned every 10 minutes;
* **web HMI** (``potline.hmi``, ``[hmi]``): the plant map, trends, AE and alarm lists,
  journal browser, mode changes for operators; served from the daemon's loop, pushed
  without blocking (``notify`` sets a flag);
* **beam ledger** (``potline.beam_ledger``): the controller's intended beam offsets
  (restores owed after a quench) saved before each cycle's commands are written and
  restored from ``<state_dir>/beam_ledger.json`` on the first scan after a start, so a
  restart (``kill -9`` included) loses no restore (reconciled exactly with the PLCs' own
  acknowledgement counters, which the bridge reports); a PLC restart the bridge sees is
  told to the controller (``plc_restarted``);
* **plans and grid requests** (``potline.plan_exec``): a plan (``[plan] file``, files
  dropped into ``<state_dir>/plans``; ``potline.plan_runner``) sets the controller's line
  targets step by step on the daemon's timeline; the grid operator's limit (the rectifier
  PLC's ``grid_limit_mw``) caps the line setpoints before the write, down at the
  rectifier's ramp and back at the normal one (``potline.grid_shed``); shown on the HMI;
* **graceful stop** (``potline.lifecycle``) on SIGTERM/SIGINT: stop commanding, stop
  the heartbeat and wait (bounded) until the PLCs report local control, then close.

A PLC that is down at start or drops later never stops the daemon: the bridge keeps
reconnecting, measurements carry bad quality (the controller does not act on them),
``/readyz`` says which link is down and the journal has the fault and the recovery.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import math
import os
import sys
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog

from potline.alarms import AlarmDef, AlarmManager, design_suppression
from potline.clocks import EpochClock, clock_speed, make_clock, process_age_s, rss_bytes
from potline.event_routing import EventRouter, ShadowRecorder
from potline.journal import Journal, JournalLoss, open_configured
from potline.kpis import ProcessKpis
from potline.lifecycle import Lifecycle, hand_back
from potline.links import LinkTracker
from potline.metrics import DaemonMetrics, HealthState, MetricsServer
from potline.mirror import MirrorModel, MirrorThread, mirror_history, mirror_quantities, publish_cycle
from potline.mode_file import ModeFile
from potline.mode_switch import ModeSwitch, carried_disarm
from potline.modes import Interlock, Mode, ModeMachine, PreviousRun
from potline.operator_inputs import SampleIntake
from potline.plan_exec import PlanExecution
from potline.recorder import JournalRecorder
from potline.sd_notify import Notifier
from potline.shadow_compare import ShadowJournal

if TYPE_CHECKING:
    from plc_bridge.opcua_security import SecurityEvent
    from plc_bridge.plant import BridgePlant, DeviceEndpoint
    from plc_bridge.runtime import ControlRuntime, CycleInfo
    from potctl.config import ControlConfig
    from potctl.controller import PotController
    from potctl.plant import Commands, Measurements
    from potline.alarms import AlarmRecord, Priority
    from potline.beam_ledger import BeamLedger
    from potline.daemon_config import LoadedConfig
    from potline.history import History
    from potline.hmi import HmiServer, LocalSource
    from twin.layout import PlantLayout

__all__ = ["Daemon", "EpochClock", "process_age_s"]

log = structlog.get_logger("potline.daemon")

#: keep at most this many entries in the controller's in-memory event list (the journal has them all)
CONTROLLER_LOG_KEEP = 10_000
#: how often a failing cycle may be journalled [wall s]
ERROR_JOURNAL_EVERY_S = 60.0
#: failed cycles in a row that take the daemon out of control
ERRORS_LEAVE_CONTROL = 3
#: safety-layer alarms shown in /readyz (``HealthState.NOT_READY_ALARMS`` of them make it 503)
READYZ_ALARMS = frozenset({"out_of_bounds", "out_of_bounds_refused", "plc_value_unusable"})
#: the mirror's values turn UncertainLastUsableValue without a refresh for this many scans
#: (and at least this many wall seconds)
MIRROR_STALE_SCANS = 5.0
MIRROR_STALE_MIN_S = 10.0
#: how often the history is pruned [wall s] (and how many rows per level and call)
HISTORY_PRUNE_EVERY_S = 600.0
HISTORY_PRUNE_ROWS = 50_000
#: failing history writes are logged at most this often [wall s]
HISTORY_LOG_EVERY_S = 60.0
#: retry period of a bridge that failed to start [wall s]
BRIDGE_RETRY_S = 5.0
VERSION = "0.1.0"


def as_if_remote(meas: Measurements) -> Measurements:
    """Measurements as if every PLC were in remote (observe and shadow modes).

    In observe and shadow nothing is sent, so the PLCs stay in local; the controller
    must still compute what it would do. ``cell_ok`` is data quality alone already (the
    bridge judges it regardless of local/remote), so only the authority flags change:
    every cell counts as ``cell_remote`` and a rectifier as remote whenever its data is
    good (its setpoint decisions are then computed, and shown in shadow).
    """
    meas.cell_remote = np.ones(np.shape(meas.cell_ok), dtype=bool)
    meas.rectifier_remote = np.asarray(meas.line_ok, dtype=bool).copy()
    return meas


class _ModePlant:
    """The ``Plant`` handed to ``ControlRuntime``: the bridge, seen through the mode.

    ``read`` scans the PLCs and feeds the mirror; ``write`` sends (control), records
    what would be sent (shadow) or does nothing (observe), then publishes the mirror.
    """

    def __init__(self, daemon: Daemon, bridge: BridgePlant) -> None:
        self.d = daemon
        self.bridge = bridge
        self.layout = daemon.layout

    async def read(self) -> Measurements:
        meas = await self.bridge.read()
        # what the PLCs say (the map's local/remote): the HMI, the KPIs and the alarms' design suppression
        self.d.real_remote = (None if meas.cell_remote is None else np.asarray(meas.cell_remote, dtype=bool).copy(),
                              np.asarray(meas.rectifier_remote, dtype=bool).copy())  # fmt: skip
        self.d.restore_beam_ledger(meas)  # once: the reconciliation needs the PLCs' real cell_remote
        if self.d.mode != "control":
            meas = as_if_remote(meas)
        self.d.after_read(meas)
        return meas

    async def write(self, commands: Commands) -> None:
        await self.d.write(commands)

    def drain_events(self) -> list[tuple[str, int, str]]:
        return self.bridge.drain_events()


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
        self.cfg = cfg = loaded.config
        self.layout: PlantLayout = loaded.layout
        self.name = loaded.name
        age = process_age_s()
        self.started_mono = started_mono if started_mono is not None else time.monotonic() - (age or 0.0)
        self.clock = make_clock(loaded)
        self.modes = ModeMachine(cfg.daemon.mode, resume_mode=cfg.daemon.resume_mode)
        self.notifier = Notifier(env)
        self.metrics = DaemonMetrics(self.name)
        self.health = HealthState(stall_s=cfg.daemon.stall_s, started_mono=self.started_mono, mode=self.mode)
        self.recorder = JournalRecorder(self.name, self.layout.plant, self.metrics, self.health,
                                        mode=lambda: self.mode, now=self.clock.now, rotate_mb=cfg.journal.rotate_mb)  # fmt: skip
        self.recorder.on_failure = self._journal_failed
        self.recorder.on_loss = self._journal_lost
        self.recorder.on_alarm = self._journal_alarm
        self.alarms = AlarmManager(cfg.alarms)
        self.kpis = ProcessKpis(self.layout, self.name, loaded.control.pfc)
        self.kpis.register(self.metrics.registry)
        #: the plant timeline [Unix s] = this + plant time (history, HMI snapshots, the mirror's timestamps)
        self.timeline0 = time.time() - float(self.clock.now())
        self.links = LinkTracker(cfg.plc, self.name, self.metrics, self.health, self.recorder,
                                 on_change=self._status_changed, on_event=self._link_event)  # fmt: skip
        self.router = EventRouter(self.layout, self.name, self.metrics, self.recorder, self.links,
                                  mode=lambda: self.mode, last_meas=lambda: self._last_meas,
                                  detector=lambda: self.controller.detector if self.controller else None,
                                  alarms=self.alarms, on_alarms=self.alarm_records, kpis=self.kpis)  # fmt: skip
        self.shadow = ShadowRecorder(self.layout, self.recorder, cfg.daemon.scan_period_s)
        #: shadow vs the PLCs' own automation, summarised per period (potline/shadow_compare.py)
        self.shadow_compare = ShadowJournal(self.layout, self.recorder.append,
                                            float(getattr(cfg.daemon, "shadow_summary_s", 600.0)),
                                            max_gap_s=max(60.0, 10.0 * cfg.daemon.scan_period_s))  # fmt: skip
        self.lifecycle = Lifecycle(self.notifier, self.health)
        self.switch = ModeSwitch(self.modes, self.name, self.recorder, self.metrics, self.health, self.notifier,
                                 ModeFile(loaded.mode_file) if loaded.mode_file is not None else None,
                                 facts=self.interlock, now=self._now, status=self._status_text,
                                 on_apply=self._apply_to_plant)  # fmt: skip
        self.metrics_server: MetricsServer | None = None
        self.mirror: MirrorThread | None = None
        self.model: MirrorModel | None = None
        self.bridge: BridgePlant | None = None
        self.controller: PotController | None = None
        self.runtime: ControlRuntime | None = None
        self.history: History | None = None
        self.ledger: BeamLedger | None = None
        self._ledger_restored = False
        self.hmi: HmiServer | None = None
        self.hmi_source: LocalSource | None = None
        #: operator inputs (the HMI's bath-sample form, CSVs dropped into <state_dir>/inputs)
        self.samples = SampleIntake(self.layout, journal=lambda: self.journal, observers=self._observers,
                                    t_plant_of=lambda t: t - self.timeline0)  # fmt: skip
        #: plans (``[plan] file``, ``<state_dir>/plans``) and the grid operator's shed requests
        self.plan_exec = PlanExecution(loaded, self.recorder, self._timeline_now)
        self._hist_exec: concurrent.futures.ThreadPoolExecutor | None = None
        self._hist_busy: concurrent.futures.Future[None] | None = None
        self._hist_log_mono = -math.inf
        #: history writes skipped because the previous one was still running
        self.history_skipped = 0
        self._snap_seq = 0
        #: (cell_remote, rectifier_remote) as the PLCs report them (before observe/shadow's as-if-remote)
        self.real_remote: tuple[np.ndarray | None, np.ndarray] | None = None
        self.exit_code = 0
        self._last_meas: Measurements | None = None
        self._last_cycle_mono: float | None = None
        self._first_cycle_done = False
        self._error_journal_mono = -math.inf
        self._errors_in_a_row = 0
        self._late_log_mono = -math.inf

    @property
    def mode(self) -> Mode:
        """The running mode."""
        return self.modes.mode

    @property
    def journal(self) -> Journal | None:
        return self.recorder.journal

    # ------------------------------------------------------------------ modes

    def interlock(self) -> Interlock:
        """The facts of the control interlock now."""
        return Interlock(
            bridge_started=self.bridge is not None and self.bridge.started,
            journal_writable=self.recorder.journal is not None and not self.recorder.failing,
            links_down=self.links.down(),
            first_cycle_done=self._first_cycle_done,
            needs_all_links=self.cfg.safety.control_needs_all_links,
        )

    async def set_mode(self, new: str, source: str, user: str | None = None, reason: str = "") -> str:
        """Switch the mode; returns the previous one (``ModeSwitch.set_mode``).

        Raises:
            ValueError: refused; the refusal is journalled and logged.
        """
        return await self.switch.set_mode(new, source, user, reason)

    def _apply_to_plant(self, mode: Mode) -> None:
        """The mode's effect on the bridge (writers, heartbeat), the controller and the shadow record."""
        self.shadow.reset()
        self.shadow_compare.flush()  # the shadow period so far, journalled
        if self.bridge is not None:
            self.bridge.shadow = mode != "control"
            for d in self.bridge.devices:
                if d.writer is not None:
                    d.writer.enabled = mode == "control"
        if self.controller is not None:
            want = mode == "observe"
            cfg: ControlConfig = self.controller.cfg
            if cfg.observe_only != want:
                self.controller.cfg = cfg.model_copy(update={"observe_only": want})

    def _status_text(self) -> str:
        down = self.links.down()
        s = f"mode {self.mode}"
        if down:
            s += f"; PLC link(s) down: {', '.join(down)}"
        return s

    def _status_changed(self) -> None:
        self.notifier.status(self._status_text())

    def _journal_failed(self) -> None:
        if self.mode == "control" and self.lifecycle.stop_event is not None:
            # writes without an audit trail are not allowed: stop commanding
            self.switch.leave_control_soon("shadow", "daemon", "journal not writable: writes stopped")

    def _journal_lost(self, loss: JournalLoss) -> None:
        """The journal file was deleted, moved or replaced under the daemon (``Journal.take_lost``):
        the journal re-created it with every entry it could read back; control is disarmed
        (left for shadow) and ``/readyz`` answers 503 until an operator re-arms it."""
        ids = f"ids {loss.first_id}-{loss.last_id}" if loss.last_id is not None else "no entries yet"
        kept = "all recovered" if loss.recovered else "NOT all recovered"
        self.switch.disarm(f"journal file {loss.what} ({ids}: {kept}; journal_lost id {loss.entry_id})",
                           not_ready=True)  # fmt: skip

    def _journal_alarm(self, kind: str, detail: str, data: dict[str, Any]) -> None:
        """An entry the journal wrote about itself (lost, tampered with, entries dropped): a
        critical alarm (a pulse: it waits for an operator's acknowledgement)."""
        log.error("journal.alarm", alarm=kind, detail=detail)
        text = {"journal_lost": "Journal file lost and re-created", "journal_tampered": "Journal tampered with",
                "journal_entries_dropped": "Journal entries dropped"}.get(kind, kind)  # fmt: skip
        key = f"Journal/{kind}"
        try:
            self.alarms.define(AlarmDef(key, kind, "critical", text, area="journal", suppressible=False))
            self.alarm_records(self.alarms.pulse(key, self._plant_now(), detail=detail))
        except Exception:
            log.exception("alarms.journal_failed", kind=kind)

    # ------------------------------------------------------------------ alarms

    def _plant_now(self) -> float:
        now = self._now()
        return 0.0 if now is None else now

    def alarm_records(self, records: list[AlarmRecord]) -> None:
        """Alarm changes (from events, each cycle, or operators): journalled, shown on the HMI."""
        if not records:
            return
        for r in records:
            self.recorder.append(r.journal_kind, **r.journal_fields())
        if self.hmi is not None:
            self.hmi.notify()
        if self.mirror is not None:
            try:
                self.mirror.show_alarms(records, self.alarms)
            except Exception:
                log.exception("mirror.alarms_failed")

    def _record_operator_alarms(self, records: Any) -> None:
        """Alarm changes an operator made on the HMI: journalled and committed before the answer."""
        self.alarm_records(list(records))
        self.recorder.commit()

    def _link_event(self, kind: str, plc: str, detail: str) -> None:
        self.router.event_alarm(kind, self._plant_now(), area=plc, detail=detail)

    def _alarm_cycle(self, t: float) -> None:
        """Each cycle: design suppression (cut-out cells; in control, rooms whose PLC is in
        local), shelving expiry and flood end."""
        meas = self._last_meas
        recs: list[AlarmRecord] = []
        try:
            if meas is not None:
                remote = self.real_remote[0] if self.real_remote is not None and self.mode == "control" else None
                cells, areas = design_suppression(self.layout, np.asarray(meas.cut_out, dtype=bool), remote)
                recs += self.alarms.set_design_suppression(t, cells, areas)
            recs += self.alarms.tick(t)
        except Exception:
            log.exception("alarms.cycle_failed")
        self.alarm_records(recs)

    def _now(self) -> float | None:
        try:
            return float(self.clock.now())
        except Exception:
            return None

    def request_stop(self, why: str = "stop requested") -> None:
        self.lifecycle.request_stop(why)

    # ------------------------------------------------------------------ cycle hooks

    def after_read(self, meas: Measurements) -> None:
        """Per-PLC link state, then the mirror's observer update."""
        if self.bridge is not None:
            self.links.update(self.bridge.devices, time.monotonic())
        self._last_meas = meas
        try:
            self.plan_exec.before_step(self.controller)
        except Exception:
            log.exception("plan.step_failed")
        if self.model is not None:
            try:
                took = self.model.update(meas)
            except Exception:
                log.exception("mirror.observer_failed")
            else:
                if took is not None:
                    self.metrics.model_step.labels(self.name).observe(took)

    async def write(self, cmds: Commands) -> None:
        """The mode's write, then what the scan shows: the mirror (AE events + one snapshot),
        the KPIs, the history (on its executor), the alarms' cycle and the HMI."""
        mode = self.mode
        try:  # the grid operator's limit caps the line setpoints (at the rectifier's ramp)
            self.plan_exec.shape(cmds, self._last_meas, self.bridge, float(self.clock.now()))
        except Exception:
            log.exception("plan.shape_failed")
        self._save_beam_ledger()  # on disk before any move can reach a PLC
        if mode == "control" and self.bridge is not None:
            await self.bridge.write(cmds)
        elif mode == "shadow":  # nothing is sent: no heartbeat, the PLCs stay in local
            self.shadow.record(cmds, self.bridge, self._last_meas, self.clock.now())
            self.shadow_compare.record(cmds, self._last_meas)
        meas = self._last_meas
        if meas is None:
            return
        ctl = self.controller
        det = ctl.detector if ctl is not None else None
        ae = det.active if det is not None else None
        phase = ctl.feeding.phase if ctl is not None else None
        snap: dict[str, np.ndarray] | None = None
        if self.model is not None and (self.mirror is not None or self.history is not None):
            try:
                snap = self.model.snapshot(meas, ae)
            except Exception:
                log.exception("mirror.snapshot_failed")
        if self.mirror is not None and self.model is not None and snap is not None:
            try:
                bridge = self.bridge
                publish_cycle(self.mirror, self.model, meas, cmds, det, snapshot=snap,
                              quality=bridge.quality if bridge is not None else None,
                              links=bridge.links() if bridge is not None else None)  # fmt: skip
            except Exception:
                log.exception("mirror.publish_failed")
        view = self._as_reported(meas)
        try:
            self.kpis.update(view, ae_active=ae, feed_phase=phase)
        except Exception:
            log.exception("kpis.update_failed")
        if self.history is not None and snap is not None:
            self._history_write(float(meas.t_s), snap, meas)
        self._alarm_cycle(float(meas.t_s))
        if self.hmi_source is not None:
            try:
                from potline.hmi.source import snapshot_from_scan

                self._snap_seq += 1
                self.hmi_source.publish(snapshot_from_scan(view, seq=self._snap_seq,
                                                           t=self.timeline0 + float(meas.t_s), mode=mode,
                                                           ae_active=ae, feed_phase=phase))  # fmt: skip
            except Exception:
                log.exception("hmi.publish_failed")
            if self.hmi is not None:
                self.hmi.notify()  # sets a flag: the HMI's pump task builds and sends the messages

    # ------------------------------------------------------------------ beam ledger

    def restore_beam_ledger(self, meas: Measurements) -> None:
        """On the first measurements of this run (the PLCs' real ``cell_remote``): the beam
        intent of the previous run into the controller; an unusable ledger is an alarm."""
        led, ctl = self.ledger, self.controller
        if self._ledger_restored or led is None or ctl is None:
            return
        self._ledger_restored = True
        t = float(meas.t_s)
        try:
            # the bridge reports the PLCs' own acknowledgement counters: reconciled exactly when the ledger's are too
            same = self.bridge is not None and self.bridge.acks_are_plc_counters
            res = led.restore_into(ctl, meas, t, plant_s_per_wall_s=clock_speed(self.clock), same_ack_base=same)
        except Exception as exc:  # restore_into never raises by contract; a bug must not stop the daemon
            log.exception("beam_ledger.restore_failed")
            self.recorder.append("daemon_error", source="beam_ledger", detail=f"beam ledger not restored: {exc}")
            return
        if res.alarm:
            self.recorder.append("beam_ledger_unusable", source="beam_ledger", detail=res.alarm, t_plant_s=t)
            self._ledger_alarm("BeamLedger/unusable", "beam_ledger_unusable", "high",
                               "Beam ledger unusable: owed beam restores may be lost", res.alarm, t, pulse=True)  # fmt: skip
        elif res.intent is not None:
            log.info("beam_ledger.restored", cells=res.cells, gap_wall_s=res.gap_wall_s)

    def _save_beam_ledger(self) -> None:
        """The controller's beam intent to disk (only when it changed); a failing write is an alarm."""
        led, ctl = self.ledger, self.controller
        if led is None or ctl is None:
            return
        try:
            plc_counters = self.bridge is not None and self.bridge.acks_are_plc_counters
            res = led.save(ctl.beam_intent(), acks_are_plc_counters=plc_counters)
        except Exception:
            log.exception("beam_ledger.save_failed")
            return
        t = self._plant_now()
        if res.new_error:
            self.recorder.append("beam_ledger_write_failed", source="beam_ledger", detail=str(res.error))
            self._ledger_alarm("BeamLedger/write", "beam_ledger_write_failed", "high",
                               "Beam ledger not written: a restart would lose owed beam restores", str(res.error), t)  # fmt: skip
        elif res.recovered:
            self.recorder.append("beam_ledger_written", source="beam_ledger", detail="beam ledger written again")
            self._ledger_alarm("BeamLedger/write", "beam_ledger_write_failed", "high",
                               "Beam ledger not written: a restart would lose owed beam restores", "", t, active=False)  # fmt: skip

    def _ledger_alarm(self, key: str, kind: str, priority: Priority, message: str, detail: str, t: float, *,
                      pulse: bool = False, active: bool = True) -> None:  # fmt: skip
        try:
            self.alarms.define(AlarmDef(key, kind, priority, message, area="beam_ledger", suppressible=False))
            recs = (self.alarms.pulse(key, t, detail=detail) if pulse
                    else self.alarms.set_condition(key, active, t, detail=detail))  # fmt: skip
        except Exception:
            log.exception("alarms.beam_ledger_failed", key=key)
            return
        self.alarm_records(recs)

    def _on_events(self, events: list[tuple[str, int, str]], now: float) -> None:
        """The cycle's events: a PLC restart the bridge saw is told to the controller (its
        acknowledgement counters began again: a beam move in flight is in doubt), then the
        journal, alarms and metrics (``EventRouter.on_events``)."""
        ctl = self.controller
        for kind, idx, _detail in events:
            if kind == "plc_restart_seen" and ctl is not None and 0 <= idx < self.layout.n_rooms:
                try:
                    ctl.plc_restarted(self.layout.room_cells(idx), now)
                except Exception:
                    log.exception("controller.plc_restarted_failed", room=self.layout.room_names[idx])
        self.router.on_events(events, now)

    def _as_reported(self, meas: Measurements) -> Measurements:
        """``meas`` with the remote flags the PLCs reported (observe and shadow compute as if remote)."""
        rr = self.real_remote
        if rr is None or self.mode == "control":
            return meas
        return dataclasses.replace(meas, cell_remote=rr[0], rectifier_remote=rr[1])

    def _history_write(self, t: float, snap: dict[str, np.ndarray], meas: Measurements) -> None:
        """One scan into the history on its own thread; skipped while the previous write runs."""
        from potline.history import history_values, split_values

        h, ex = self.history, self._hist_exec
        if h is None or ex is None:
            return
        if self._hist_busy is not None and not self._hist_busy.done():
            self.history_skipped += 1
            return
        try:
            vals = {k: np.array(v, dtype=float, copy=True) for k, v in history_values(snap, meas).items()}
            # each value's status as the mirror publishes it (the bridge's quality): kept beside the value
            codes: dict[str, np.ndarray] = {}
            if self.model is not None:
                bridge = self.bridge
                status = self.model.status(meas, bridge.quality if bridge is not None else None, ae=False)
                codes = {k: st.code for k, st in status.items() if k in vals}
            bad_cell = ~np.asarray(meas.cell_ok, dtype=bool)
            bad_line = ~np.asarray(meas.line_ok, dtype=bool)
            for k, v in vals.items():  # without a status: NaN where not good
                if k in codes:
                    continue
                if v.shape == bad_cell.shape and k in ("CellVoltage", "PseudoResistance"):
                    v[bad_cell] = np.nan
                elif v.shape == bad_line.shape and k in ("LineCurrent", "LineVoltage", "LineSetpoint"):
                    v[bad_line] = np.nan
            groups = split_values(self.layout, vals)
            quality = {name: q.astype(np.uint32) for name, q in
                       split_values(self.layout, {k: c.astype(float) for k, c in codes.items()}).items()}  # fmt: skip
        except Exception:
            log.exception("history.values_failed")
            return
        fut = ex.submit(h.write, self.timeline0 + t, groups, quality)
        fut.add_done_callback(self._history_done)
        self._hist_busy = fut

    def _history_done(self, fut: concurrent.futures.Future[None]) -> None:
        exc = None if fut.cancelled() else fut.exception()
        if exc is not None and time.monotonic() - self._hist_log_mono >= HISTORY_LOG_EVERY_S:
            self._hist_log_mono = time.monotonic()
            log.error("history.write_failed", error=f"{type(exc).__name__}: {exc}")

    async def _prune_history(self) -> None:
        """Every ``HISTORY_PRUNE_EVERY_S``: what is past retention goes (on the history's thread)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(HISTORY_PRUNE_EVERY_S)
            h, ex = self.history, self._hist_exec
            if h is None or ex is None:
                return
            try:
                now = self.timeline0 + float(self.clock.now())
                got = await loop.run_in_executor(ex, functools.partial(h.prune, now, max_rows=HISTORY_PRUNE_ROWS))
                if any(got.values()):
                    log.info("history.pruned", **got)
            except Exception:
                log.exception("history.prune_failed")

    def _on_cycle(self, info: CycleInfo) -> None:
        """After every cycle: commit the journal, metrics, health, systemd watchdog, a pending mode."""
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
        ctl = self.controller
        if ctl is not None:
            m.anode_effects_active.labels(nm).set(float(ctl.detector.active.sum()))
            if len(ctl.event_log) > 2 * CONTROLLER_LOG_KEEP:
                del ctl.event_log[:-CONTROLLER_LOG_KEEP]
            if len(ctl.alarm_log) > 2 * CONTROLLER_LOG_KEEP:
                del ctl.alarm_log[:-CONTROLLER_LOG_KEEP]
        if self.bridge is not None:
            m.alarms_active.labels(nm).set(float(sum(len(d.writer.active_alarms) for d in self.bridge.devices
                                                     if d.writer is not None)))  # fmt: skip
            self._show_plc_alarms(self.bridge)
        self.recorder.commit()
        self._errors_in_a_row = 0
        self.health.last_cycle_mono = now_mono
        self.notifier.watchdog(now_mono)
        if not self._first_cycle_done:
            self._first_cycle_done = True
            self.health.first_cycle_done = True
            startup_s = now_mono - self.started_mono
            m.startup_seconds.labels(nm).set(startup_s)
            log.info("daemon.first_cycle", startup_s=round(startup_s, 3), mode=self.mode,
                     plc_up={lk.name: bool(lk.up) for lk in self.links.links.values()}, t_plant_s=round(info.t_s, 3))  # fmt: skip
            self.notifier.ready(self._status_text())
            if self.cfg.opcua.enabled and self.mirror is None:
                # the mirror's address space takes seconds to build for a whole potline: it
                # comes up in its own thread beside the running loop, never before the first cycle
                self.lifecycle.spawn(self._await_mirror(self._start_mirror()))
        self.switch.tick(info.t_s)

    def _show_plc_alarms(self, bridge: BridgePlant) -> None:
        """The safety layer's setpoint-bound alarms in ``/readyz`` (``plc_alarms``): a PLC value
        outside the bounds being brought back, or refused, or unusable (``READYZ_ALARMS``)."""
        shown = []
        for d in bridge.devices:
            w = d.writer
            if w is None or not w.active_alarms:
                continue
            for a in w.active_alarms.values():
                if a.kind in READYZ_ALARMS:
                    shown.append({"plc": self.links.name_of(d.device), "device": d.device, "alarm": a.kind,
                                  "tag": a.tag, "message": a.message})  # fmt: skip
        if shown:
            self.health.detail["plc_alarms"] = shown
        else:
            self.health.detail.pop("plc_alarms", None)

    def _on_error(self, exc: BaseException) -> None:
        self._errors_in_a_row += 1
        now = time.monotonic()
        if now - self._error_journal_mono >= ERROR_JOURNAL_EVERY_S:
            self._error_journal_mono = now
            self.recorder.append("daemon_error", source="daemon",
                                 detail=f"control cycle failed: {type(exc).__name__}: {exc}")  # fmt: skip
            self.router.event_alarm("daemon_error", self._plant_now(), detail=f"control cycle failed: {exc}")
        self.recorder.commit()
        if self._errors_in_a_row >= ERRORS_LEAVE_CONTROL and self.mode == "control":
            self.switch.leave_control_soon("observe", "daemon", f"{self._errors_in_a_row} failed cycles in a row")

    def _before_scrape(self) -> None:
        self.links.scan_ages(time.monotonic(), self.started_mono)
        self.metrics.rss.labels(self.name).set(rss_bytes())

    # ------------------------------------------------------------------ start

    def _previous_run(self, j: Journal) -> PreviousRun:
        """How the previous run ended (an unclean stop is journalled) and its last mode."""
        last = j.last(["daemon_start", "daemon_stop"])
        clean = not (last is not None and last.kind == "daemon_start")
        pid = last.data.get("pid") if last is not None else None
        if not clean and last is not None:
            log.warning("daemon.unclean_shutdown_detected", previous_start=last.ts_utc, previous_pid=pid)
            self.recorder.append("unclean_shutdown", source="daemon", mode=last.mode,
                                 detail=f"previous run (pid {pid}, started {last.ts_utc}) ended without a "
                                        f"clean stop; last journal id {j.last_id}",
                                 data={"previous_pid": pid, "last_id": j.last_id})  # fmt: skip
        last_mode = None
        if self.cfg.daemon.resume_mode:
            prev = j.last(["mode_change"])
            last_mode = prev.mode if prev is not None else None
        disarmed, not_ready = carried_disarm(j)  # a disarming not re-armed holds across a clean restart
        return PreviousRun(clean=clean, last_mode=last_mode, pid=pid if isinstance(pid, int) else None,
                           started_utc=last.ts_utc if last is not None else None, disarmed=disarmed,
                           disarmed_not_ready=not_ready)  # fmt: skip

    def _start_mode(self, j: Journal) -> None:
        """Choose the start mode (``potline.modes``: config, resume, re-arming) and show it."""
        self.switch.start(self._previous_run(j), self._journal_start)

    def _journal_start(self) -> None:
        cfg = self.cfg
        self.recorder.append("daemon_start", source="daemon",
                             detail=f"potline-twin {VERSION} pid {os.getpid()}, config {self.loaded.source}",
                             data={"pid": os.getpid(), "version": VERSION, "config": str(self.loaded.source),
                                   "cells": self.layout.n_cells, "plcs": [pc.name for pc in cfg.plc],
                                   "timeline_t0": self.timeline0})  # fmt: skip

    async def _start_bridge(self) -> BridgePlant:
        """Connect to the PLCs (never fails for a PLC that is down: it keeps retrying)."""
        from plc_bridge.plant import BridgePlant, BridgeSettings, DeviceEndpoint, rectifier_limits

        cfg, lay = self.cfg, self.layout
        by_dev = {pc.device: pc for pc in cfg.plc}

        def ep(dev: str) -> DeviceEndpoint:
            pc = by_dev[dev]
            return DeviceEndpoint(pc.protocol, pc.host, pc.port, pc.path, pc.namespace,
                                  security=self.loaded.plc_security.get(pc.name))  # fmt: skip

        s = cfg.safety
        settings = BridgeSettings(
            stale_after_s=s.stale_after_s, plc_heartbeat_timeout_s=s.plc_heartbeat_timeout_s,
            setpoint_rate_ka_per_s=s.line_current_ramp_ka_per_s, setpoint_max_interval_s=s.setpoint_max_interval_s,
            setpoint_min_ka=s.line_current_min_ka, setpoint_max_ka=s.line_current_max_ka,
            setpoint_deadband_ka=s.setpoint_deadband_ka, line_limits_ka=rectifier_limits(self.loaded.plant),
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
                d.writer.on_record = self.router.record_callback(d)
        losses = {self.links.name_of(dev): v for dev, v in bridge.capability_losses.items() if v}
        if losses:  # what the maps do not give, in /readyz (the start log says it too: plc_capability_lost)
            self.health.detail["capability_losses"] = losses
        self._apply_to_plant(self.mode)
        return bridge

    def _start_mirror(self) -> asyncio.Future[None]:
        """Start the mirror in its thread; returns an awaitable for it being up."""
        from plc_bridge.opcua_server import MirrorServer

        oc = self.cfg.opcua
        main_loop = asyncio.get_running_loop()
        initial = self.mode

        async def opcua_mode(mode: str, user: str | None) -> None:  # runs in the mirror thread
            fut = asyncio.run_coroutine_threadsafe(self.set_mode(mode, "opcua", user=user), main_loop)
            await asyncio.wrap_future(fut)

        def security_event(ev: SecurityEvent) -> None:  # runs in the mirror thread
            try:
                main_loop.call_soon_threadsafe(self._security_event, ev)
            except RuntimeError:  # the daemon's loop is closed: the log keeps it
                log.warning("opcua.security_event_unjournalled", **ev.journal_fields())

        history = None
        if self.history is not None and self.loaded.history_path is not None:
            try:  # HistoryRead: its own read-only connection on the history file
                history = mirror_history(self.loaded.history_path, self.layout)
            except Exception as exc:
                log.error("mirror.history_unavailable", error=f"{type(exc).__name__}: {exc}")
        # values not refreshed for this long [wall s] turn UncertainLastUsableValue
        stale_wall_s = max(
            MIRROR_STALE_MIN_S, MIRROR_STALE_SCANS * self.cfg.daemon.scan_period_s / clock_speed(self.clock)
        )

        def factory() -> MirrorServer:
            m = MirrorServer(self.layout, mirror_quantities(), security=self.loaded.security, host=oc.host,
                             port=oc.port, path=oc.path, scalar_period_s=oc.scalar_period_s, initial_mode=initial,
                             server_name=f"potline-twin mirror {self.name}", epoch_s=self.timeline0,
                             stale_after_s=stale_wall_s)  # fmt: skip
            if history is not None:
                m.enable_history(*history)
            m.set_mode_handler(opcua_mode)
            m.on_security_event(security_event)
            return m

        self.mirror = MirrorThread(factory, self.layout.plant)
        self.mirror.on_acknowledge(self._opcua_acknowledge)  # runs in this loop
        self.switch.mirror = self.mirror
        self.mirror.show_alarms(self._alarms_now(), self.alarms)  # what a client must see at once
        return self.mirror.start()

    def _alarms_now(self) -> list[AlarmRecord]:
        """The alarms not in normal as records (the mirror's retained conditions at its start)."""
        from potline.alarms import AlarmRecord

        now = self._plant_now()
        out = []
        for a in self.alarms.listing():
            d = a.definition
            out.append(AlarmRecord(t=a.since if a.since is not None else now, key=d.key, kind=d.kind,
                                   priority=d.priority, event="raised", old_state=a.state, new_state=a.state,
                                   active=a.active, area=d.area, cell=d.cell, value=a.value, message=d.message))  # fmt: skip
        return out

    def _opcua_acknowledge(self, key: str, user: str, comment: str) -> None:
        """An operator's OPC UA Acknowledge (in this loop): the alarm manager decides (an
        ``AlarmActionError`` refuses it), the change is journalled and shown everywhere."""
        recs = self.alarms.acknowledge(key, user, self._plant_now(), comment)
        log.info("alarm.acknowledged", key=key, user=user, via="opcua")
        self.alarm_records(recs)
        self.recorder.commit()

    def _security_event(self, ev: SecurityEvent) -> None:
        """A refused login or denied request on the mirror (a rate-limited summary): journal, metric, log."""
        fields = ev.journal_fields()
        self.metrics.opcua_security.labels(self.name, ev.kind).inc(ev.count)
        log.warning("opcua.security_event", **fields)
        self.recorder.append(**fields)

    async def _await_mirror(self, started: asyncio.Future[None]) -> None:
        """The mirror comes up beside the control loop; failing to listen stops the daemon (exit 1)."""
        try:
            await started
        except Exception as exc:
            log.error("daemon.listen_failed", what="opcua mirror", error=str(exc))
            self.recorder.append("daemon_error", source="opcua", detail=f"OPC UA mirror cannot start: {exc}",
                                 commit=True)  # fmt: skip
            self.exit_code = 1
            self.request_stop("OPC UA mirror cannot start")
            return
        self.health.mirror_up = True
        mirror = self.mirror
        if mirror is not None and mirror.server is not None and mirror.server.mode != self.mode:
            mirror.show_mode(self.mode)

    def _open_history(self) -> None:
        """The history file (``[history]``); one that cannot be opened is logged and left out
        (the daemon runs without trends rather than not at all)."""
        path = self.loaded.history_path
        if path is None:
            return
        from potline.history import History, plant_groups

        try:
            h = History(path, self.cfg.history)
            h.declare(plant_groups(self.layout))
        except Exception as exc:
            log.error("history.unavailable", path=str(path), error=f"{type(exc).__name__}: {exc}")
            self.recorder.append("daemon_error", source="history", detail=f"history {path} not usable: {exc}")
            return
        self.history = h
        self._hist_exec = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="potline-history")
        log.info("history.open", path=str(path), raw_days=self.cfg.history.raw_days)

    async def _start_hmi(self) -> None:
        """The web HMI on the daemon's loop (raises OSError when its port is taken)."""
        from potline.hmi import HmiServer, LocalSource

        sec = self.loaded.security

        async def mode_handler(mode: str, user: str, reason: str) -> str:
            return await self.set_mode(mode, "hmi", user=user, reason=reason)

        def sample_writer(data: dict[str, Any], user: str) -> Any:
            return self.samples.enter(data, user, self.timeline0 + float(self.clock.now()))

        self.hmi_source = LocalSource(self.layout, self.alarms, clock=self._plant_now,
                                      history_path=self.loaded.history_path, journal_path=self.loaded.journal_path,
                                      alarm_writer=self._record_operator_alarms, mode_handler=mode_handler,
                                      sample_writer=sample_writer, plan_status=self.plan_exec.status)  # fmt: skip
        self.hmi = HmiServer(self.hmi_source, self.loaded.hmi, users=sec.users if sec is not None else None,
                             anonymous=sec.anonymous if sec is not None else "read_only",
                             login_policy=sec.login if sec is not None else None)  # fmt: skip
        await self.hmi.start()

    def _observers(self) -> list[Any]:
        """What an operator's bath sample corrects: the mirror's and the controller's alumina
        observers, and the controller itself (its AlF3 and heat-balance control take the
        sample's AlF3, temperature and alumina through ``bath_measurements``)."""
        return [self.model.observer if self.model is not None else None,
                self.controller.observer if self.controller is not None else None,
                self.controller]  # fmt: skip

    def _spawn_operator_tasks(self) -> None:
        """Off the control cycle: the operator-input folder and the scheduled shift/daily reports."""
        from potline.operator_inputs import watch_folder
        from potline.shift_report import run_schedule

        try:
            self.plan_exec.folder.mkdir(parents=True, exist_ok=True)
            self.lifecycle.spawn(self.plan_exec.watch_folder())
        except OSError as exc:
            log.error("plan.folder_unusable", folder=str(self.plan_exec.folder), error=str(exc))
        folder = self.loaded.state_dir / "inputs"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self.lifecycle.spawn(watch_folder(self.samples, folder))
        except OSError as exc:
            log.error("operator_inputs.folder_unusable", folder=str(folder), error=str(exc))
        rep = self.cfg.history.reports
        if rep.enabled:
            self.lifecycle.spawn(run_schedule(rep, self.loaded.journal_path, self.loaded.history_path,
                                              self.loaded.state_dir / rep.dir, self._timeline_now,
                                              pfc=self.loaded.control.pfc))  # fmt: skip

    def _timeline_now(self) -> float:
        """The plant timeline now [Unix s]."""
        return self.timeline0 + float(self.clock.now())

    def _warm_model(self) -> float:
        """Load (or compile) the observer's Numba kernel before the first cycle [s]."""
        from twin.observer import AluminaObserver

        t0 = time.perf_counter()
        probe = AluminaObserver(1)
        probe.update(np.array([1.2e5]), np.array([4.3]), np.zeros(1), np.zeros(1), 1.0)
        dt = time.perf_counter() - t0
        self.health.model_warm = True
        return dt

    # ------------------------------------------------------------------ run / stop

    async def run(self) -> int:
        """Start, run until stopped, stop gracefully. Returns the exit status."""
        from plc_bridge.runtime import ControlRuntime
        from potctl.controller import PotController
        from twin.observer import AluminaObserver

        structlog.contextvars.bind_contextvars(plant=self.layout.plant)
        # the mirror thread (OPC UA, pure Python) shares the GIL with the control loop: hand it
        # back every 1 ms instead of 5 ms, so an I/O wake-up of the loop is never kept waiting long
        sys.setswitchinterval(0.001)
        stop = self.lifecycle.bind()
        cfg = self.cfg
        j = open_configured(self.loaded)
        if j is None:
            return 1
        self.recorder.journal = j
        self._start_mode(j)
        try:
            self.plan_exec.start()
        except Exception:
            log.exception("plan.start_failed")
        self.recorder.commit()
        self._open_history()
        self.lifecycle.install_signals(
            on_usr1=(lambda: self.switch.apply_mode_file("SIGUSR1", True)) if cfg.daemon.signal_modes else None,
            on_usr2=self.switch.observe_now if cfg.daemon.signal_modes else None,
        )
        self.metrics.info.labels(self.name, VERSION).set(1)
        self.links.reset_metrics()
        try:
            if cfg.metrics.enabled:
                self.metrics_server = MetricsServer(self.metrics, self.health, cfg.metrics.host, cfg.metrics.port,
                                                    before_scrape=self._before_scrape)  # fmt: skip
                self.metrics_server.start()
                log.info("metrics.listening", url=self.metrics_server.url)
            if self.loaded.hmi is not None:
                await self._start_hmi()
        except OSError as exc:
            log.error("daemon.listen_failed", error=str(exc))
            self.lifecycle.stop_reason = f"cannot listen: {exc}"
            self.exit_code = 1
            await self._close()
            return 1
        if self.history is not None:
            self.lifecycle.spawn(self._prune_history())
        self._spawn_operator_tasks()
        if cfg.opcua.enabled:
            self.health.mirror_up = False  # started after the first cycle (see _on_cycle)
        warm_s = self._warm_model()
        log.info("daemon.model_warm", seconds=round(warm_s, 3))
        self.model = MirrorModel(self.layout, AluminaObserver(self.layout.n_cells, cell=self.loaded.plant.cell,
                                                              nominal_ce=self.loaded.control.feeding.ce_assumed))  # fmt: skip
        from potctl.quench import BeamIntentSettings

        # a beam move not acknowledged is counted as not made only after the bridge gave up on sending it
        beam = BeamIntentSettings(ack_timeout_s=2.0 * cfg.safety.ack_timeout_s)
        self.controller = PotController(self.layout, self.loaded.control, beam=beam)
        from potline.beam_ledger import LEDGER_NAME, BeamLedger

        self.ledger = BeamLedger(self.loaded.state_dir / LEDGER_NAME, plant=self.layout.plant,
                                 n_cells=self.layout.n_cells)  # fmt: skip
        self._apply_to_plant(self.mode)
        bridge: BridgePlant | None = None
        while not stop.is_set():
            try:
                bridge = await self._start_bridge()
                break
            except Exception as exc:
                log.exception("bridge.start_failed", error=str(exc))
                self.recorder.append("daemon_error", source="bridge", detail=f"PLC bridge failed to start: {exc}",
                                     commit=True)  # fmt: skip
                await self.lifecycle.wait_stop(BRIDGE_RETRY_S)
        if self.switch.mode_file is not None:
            self.lifecycle.spawn(self.switch.watch_mode_file(cfg.daemon.mode_file_poll_s))
        if bridge is not None and not stop.is_set():
            self.runtime = ControlRuntime(_ModePlant(self, bridge), self.controller, self.clock,
                                          cfg.daemon.scan_period_s, on_events=self._on_events,
                                          on_cycle=self._on_cycle, on_error=self._on_error)  # fmt: skip
            log.info("daemon.running", mode=self.mode, scan_period_s=cfg.daemon.scan_period_s,
                     cells=self.layout.n_cells, clock_speed=cfg.daemon.clock_speed)  # fmt: skip
            self.notifier.status(self._status_text())
            try:
                await self.runtime.run(stop=stop)
            except Exception as exc:
                log.exception("daemon.loop_failed")
                self.recorder.append("daemon_error", source="daemon", detail=f"control loop ended: {exc}",
                                     commit=True)  # fmt: skip
                self.exit_code = 1
        await self._shutdown()
        return self.exit_code

    async def _handback(self, bridge: BridgePlant) -> None:
        """Stop commanding and wait (bounded) until every PLC reports local control; then observe."""
        poll_s = min(0.5, max(0.05, self.cfg.daemon.scan_period_s / clock_speed(self.clock)))
        hb = await hand_back(bridge, self.notifier, self.cfg.daemon.handback_timeout_s, poll_s)
        took = hb.waited_s
        if hb.ok:
            log.info("daemon.handback_done", waited_s=round(took, 2))
            detail = f"every PLC reports local control ({took:.1f} s)"
            data: dict[str, Any] = {"ok": True, "waited_s": took}
        else:
            log.error("daemon.handback_timeout", still_remote=hb.still_remote, waited_s=round(took, 2))
            detail = (f"PLCs still in remote after {took:.1f} s: {', '.join(hb.still_remote)} "
                      "(their watchdogs will drop them to local)")  # fmt: skip
            data = {"ok": False, "still_remote": hb.still_remote, "waited_s": took}
        self.switch.stop(detail, data)

    async def _shutdown(self) -> None:
        why = self.lifecycle.stop_reason or "loop ended"
        log.info("daemon.shutdown", reason=why, mode=self.mode)
        self.notifier.stopping(f"stopping ({why})")
        await self.lifecycle.cancel_tasks()
        bridge = self.bridge
        if bridge is not None and bridge.started and self.mode == "control":
            await self._handback(bridge)
        self.shadow_compare.flush()  # the shadow period so far, journalled
        self.recorder.commit()
        await self._close()

    async def _close_views(self) -> None:
        """The HMI and the history (after the mirror: its HistoryRead has its own reader)."""
        if self.hmi is not None:
            try:
                await self.hmi.stop()
            except Exception:
                log.exception("hmi.stop_failed")
        if self.hmi_source is not None:
            self.hmi_source.close()
        if self._hist_exec is not None:
            await asyncio.to_thread(self._hist_exec.shutdown, True)
        if self.history is not None:
            try:
                self.history.close()
            except Exception:
                log.exception("history.close_failed")
            self.history = None

    async def _close(self) -> None:
        if self.mirror is not None:
            # the journal stays open until the mirror has stopped: its stop hands over the last
            # security summaries (call_soon_threadsafe), run by the turn of the loop below
            await asyncio.to_thread(self.mirror.stop)
            await asyncio.sleep(0)
        if self.bridge is not None:
            try:
                await self.bridge.stop()
            except Exception:
                log.debug("bridge.stop_failed", exc_info=True)
        if self.metrics_server is not None:
            self.metrics_server.stop()
        await self._close_views()
        reason = self.lifecycle.stop_reason
        data = {"pid": os.getpid(), "reason": reason, "exit_code": self.exit_code}
        if not self.recorder.close(reason or "loop ended", data):
            self.exit_code = self.exit_code or 1  # entries not committed: an unclean stop (journal.unclean_stop)
        log.info("daemon.stopped", exit_code=self.exit_code)
