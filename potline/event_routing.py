"""Controller and bridge events, write records and shadow decisions -> journal, metrics, log.

* ``EventRouter.on_events``: every cycle's events from the controller (AE start/end,
  predictions, quench, feeder faults, rectifier trips, ...) and the bridge (PLC
  restarts, missing acknowledgements, safety-layer alarms) become journal entries with
  their ISA-95 location (line, room, cell) and a log line; AEs carry voltage, start,
  detection and duration.
* ``EventRouter.record_callback``: the safety layer's write records per device:
  setpoint and beam writes journalled; refused writes journalled the first time per
  reason, then at most one summary a minute per device. What a written tag is comes from
  its **role** in the device's tag map (a foreign map keeps the PLC's own tag names), and
  a per-cell tag's cell from its place in the map's cell block.
* ``ShadowRecorder``: in shadow, what the controller would send (and what the safety
  layer would make of a setpoint: clamp, ramp) is logged and journalled.

With an ``AlarmManager`` the same events drive the ISA-18.2 alarms (``EVENT_ALARMS``: AEs,
escalations, feeder faults, frozen signals, rectifier trips) and the safety layer's
alarms become one alarm per device and kind (``<device>/<kind>``, never suppressed by
design); the alarm records go to ``on_alarms`` (journal, HMI, mirror). With
``ProcessKpis`` AE starts and ends reach the AE KPIs.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog

from potline.links import DeviceView, Link, LinkTracker, where_of

if TYPE_CHECKING:
    from plc_bridge.plant import BridgePlant
    from plc_bridge.safe_write import WriteRecord
    from potctl.ae_detection import AEDetector, AERecord
    from potctl.plant import Commands, Measurements
    from potline.alarms import AlarmManager, AlarmRecord, Priority
    from potline.kpis import ProcessKpis
    from potline.metrics import DaemonMetrics
    from potline.recorder import JournalRecorder
    from twin.layout import PlantLayout

__all__ = ["EventRouter", "ShadowRecorder", "ae_record", "cell_number"]

log = structlog.get_logger("potline.daemon")

#: controller events indexed by line (all others are indexed by cell)
LINE_EVENTS = frozenset({"rectifier_trip", "rectifier_restart", "ramp_done"})
#: controller events about feeders: meaningless while the controller's commands are not sent
COMMAND_DEPENDENT_EVENTS = frozenset({"feeder_fault"})
#: events logged as warnings (the rest at info)
WARNING_EVENTS = frozenset({"ae_start", "ae_escalation", "feeder_fault", "rectifier_trip", "plc_restart_seen"})
#: events the bridge raises (journalled with source "bridge")
BRIDGE_EVENTS = frozenset({"plc_restart_seen", "command_not_acknowledged"})
#: how often a refused-writes summary may repeat per device with an unchanged reason [wall s]
REFUSAL_JOURNAL_EVERY_S = 60.0
#: ISA priority and operator text of the safety layer's alarm kinds (others: medium)
BRIDGE_ALARMS: dict[str, tuple[Priority, str]] = {
    "comms_lost": ("high", "PLC link lost (writes stopped)"),
    "plc_heartbeat_stale": ("high", "PLC heartbeat stale (writes refused)"),
    "out_of_bounds": ("medium", "PLC value outside the write bounds, being brought back"),
    "out_of_bounds_refused": ("high", "PLC value outside the write bounds, not brought back"),
    "plc_value_unusable": ("high", "PLC value unusable (nothing written)"),
    "readback_mismatch": ("medium", "Write not confirmed by read-back"),
    "plc_refused": ("medium", "PLC refused a write"),
}
#: beam moves smaller than this are no move [mm]
BEAM_MOVE_MIN_MM = 0.05
#: beam moves listed in one shadow entry
SHADOW_BEAM_LIST = 50
#: shadow_commands journalled at most this often [plant s] unless a setpoint decision changes by 0.1 kA
#: (every cycle is logged; potline/shadow_compare.py journals the comparison per period)
SHADOW_JOURNAL_EVERY_S = 60.0


def ae_record(detector: AEDetector, cell: int) -> AERecord | None:
    """The HV AE in progress on ``cell``, else its last finished one (None: none)."""
    try:
        return detector.open_record(int(cell))
    except KeyError:
        pass
    for r in reversed(detector.records):
        if r.cell == int(cell) and r.kind == "HV":
            return r
    return None


def cell_number(tag: str) -> int | None:
    """Floor number from a per-cell tag name like ``cell007.beam_move`` (a last resort: a tag
    the device's map does not know)."""
    head = tag.split(".", 1)[0]
    digits = "".join(ch for ch in head if ch.isdigit())
    return int(digits) if digits else None


def _tag_of(device: DeviceView, role: str) -> str:
    """The tag giving plain ``role`` on ``device`` (its own name for a device without roles)."""
    tag = getattr(device, "tag", None)
    return str(tag(role)) if callable(tag) else role


class EventRouter:
    """Events and write records of a running daemon into its journal (see the module docstring).

    Args:
        layout: the plant.
        name: instance name (metric label).
        metrics: the daemon's metrics.
        recorder: the journal.
        links: the PLC links (names for sources, refusal summaries).
        mode: the running mode.
        last_meas: the last measurements read (None before the first).
        detector: the controller's AE detector (None before it exists).
        alarms: the ISA-18.2 alarm manager (None: no alarms driven).
        on_alarms: takes every batch of alarm records (journal, HMI, mirror).
        kpis: the process KPIs (AE counts and minutes).
    """

    def __init__(self, layout: PlantLayout, name: str, metrics: DaemonMetrics, recorder: JournalRecorder,
                 links: LinkTracker, *, mode: Callable[[], str], last_meas: Callable[[], Measurements | None],
                 detector: Callable[[], AEDetector | None], alarms: AlarmManager | None = None,
                 on_alarms: Callable[[list[AlarmRecord]], None] | None = None,
                 kpis: ProcessKpis | None = None) -> None:  # fmt: skip
        self.layout = layout
        self.name = name
        self.metrics = metrics
        self.recorder = recorder
        self.links = links
        self.mode = mode
        self.last_meas = last_meas
        self.detector = detector
        self.alarms = alarms
        self.on_alarms = on_alarms
        self.kpis = kpis
        self._cell_line = np.asarray(layout.cell_line, dtype=np.int64)
        self._cell_room = np.asarray(layout.cell_room, dtype=np.int64)
        #: safety-layer alarm key -> the tags (message heads) it is active for
        self._bridge_active: dict[str, set[str]] = {}

    # ------------------------------------------------------------------ alarms

    def alarm_out(self, records: list[AlarmRecord]) -> None:
        """Hand alarm records on (``on_alarms``); nothing when there are none."""
        if records and self.on_alarms is not None:
            self.on_alarms(records)

    def event_alarm(self, kind: str, now: float, *, area: str | None = None, cell: int | None = None,
                    cell_index: int | None = None, value: float | None = None, detail: str = "") -> None:  # fmt: skip
        """Drive the alarm of an event kind (``potline.alarms.EVENT_ALARMS``; other kinds: nothing)."""
        if self.alarms is None:
            return
        try:
            recs = self.alarms.on_event(kind, now, area=area, cell=cell, cell_index=cell_index, value=value,
                                        detail=detail)  # fmt: skip
        except Exception:
            log.exception("alarms.event_failed", kind=kind)
            return
        self.alarm_out(recs)

    # ------------------------------------------------------------------ locations

    def where(self, kind: str, idx: int) -> dict[str, Any]:
        """Journal/log location fields of a controller event index."""
        lay = self.layout
        if kind == "plc_restart_seen":
            return {"room": lay.room_names[idx] if 0 <= idx < lay.n_rooms else None}
        if kind in LINE_EVENTS:
            return {"line": lay.line_names[idx]} if 0 <= idx < lay.n_lines else {}
        if 0 <= idx < lay.n_cells:
            return {"line": lay.line_names[int(self._cell_line[idx])], "room": lay.room_names[int(self._cell_room[idx])],
                    "cell": int(lay.cell_number[idx])}  # fmt: skip
        return {}

    # ------------------------------------------------------------------ controller and bridge events

    def on_events(self, events: list[tuple[str, int, str]], now: float) -> None:
        """Controller and bridge events -> journal, metrics, log."""
        meas = self.last_meas()
        mode = self.mode()
        for kind, idx, detail in events:
            if kind in COMMAND_DEPENDENT_EVENTS and mode != "control":
                continue  # its commands are not sent: a missing acknowledgement means nothing
            if kind.startswith("alarm_"):
                self.bridge_alarm(kind, detail, now)
                continue
            where = self.where(kind, idx)
            fields: dict[str, Any] = {"t_plant_s": now, "detail": detail, "source": "controller", **where}
            if kind in ("ae_start", "ae_end") and 0 <= idx < self.layout.n_cells:
                fields.update(self._ae_fields(kind, idx, meas))
                if kind == "ae_start":
                    self.metrics.anode_effects.labels(self.name, where.get("room", "")).inc()
            if kind == "ae_predicted":
                self.metrics.ae_predicted.labels(self.name).inc()
            if kind in BRIDGE_EVENTS:
                fields["source"] = "bridge"
            emit = log.warning if kind in WARNING_EVENTS else log.info
            emit(f"event.{kind}", detail=detail, t_plant_s=round(now, 3), **where)
            self.recorder.append(kind, **fields)
            is_cell = "cell" in where
            value = fields.get("value")
            self.event_alarm(kind, now, area=where.get("room") or where.get("line"), cell=where.get("cell"),
                             cell_index=idx if is_cell else None,
                             value=float(value) if isinstance(value, (int, float)) else None, detail=detail)  # fmt: skip
            if self.kpis is not None and is_cell:
                self._ae_kpis(kind, idx, now, fields.get("data") or {})

    def _ae_kpis(self, kind: str, idx: int, now: float, data: dict[str, Any]) -> None:
        kp = self.kpis
        if kp is None:
            return
        try:
            if kind == "ae_start":
                kp.ae_started(idx, now)
            elif kind == "ae_end" and data.get("duration_s") is not None:
                kp.ae_ended(idx, float(data["duration_s"]), now)
        except Exception:
            log.exception("kpis.ae_failed", kind=kind)

    def _ae_fields(self, kind: str, idx: int, meas: Measurements | None) -> dict[str, Any]:
        det = self.detector()
        rec = ae_record(det, idx) if det is not None else None
        if kind == "ae_start":
            u = float(meas.cell_voltage_v[idx]) if meas is not None else float("nan")
            return {"value": u, "data": {"start_s": rec.start_s if rec else None,
                                         "detect_s": rec.detect_s if rec else None}}  # fmt: skip
        if rec is None:
            return {"value": None, "data": {"start_s": None, "end_s": None, "duration_s": None, "forced_end": None}}
        return {"value": rec.peak_v, "data": {"start_s": rec.start_s, "end_s": rec.end_s,
                                              "duration_s": rec.duration_s, "forced_end": rec.forced_end}}  # fmt: skip

    def bridge_alarm(self, kind: str, detail: str, now: float) -> None:
        """A safety-layer alarm (``alarm_<kind>`` / ``alarm_<kind>_cleared``) -> journal, log."""
        cleared = kind.endswith("_cleared")
        akind = kind[len("alarm_") :]
        if cleared:
            akind = akind[: -len("_cleared")]
        device, _, msg = detail.partition(": ")
        lk = self.links.get(device)
        where: dict[str, Any] = {}
        if device.startswith("rectifier:"):
            where = {"line": device.split(":", 1)[1]}
        elif device.startswith("potroom:"):
            where = {"room": device.split(":", 1)[1]}
        (log.info if cleared else log.warning)("alarm.cleared" if cleared else "alarm.raised", alarm=akind,
                                               device=device, message=msg, **where)  # fmt: skip
        self.recorder.append("alarm_cleared" if cleared else "alarm", t_plant_s=now, source=lk.name if lk else device,
                             detail=f"{akind}: {msg}", data={"alarm": akind, "device": device}, **where)  # fmt: skip
        if self.alarms is not None:
            self._bridge_isa(device, lk.name if lk else device, akind, msg, not cleared, now)

    def _bridge_isa(self, device: str, plc: str, akind: str, msg: str, active: bool, now: float) -> None:
        """The safety layer's alarm as an ISA alarm ``<device>/<kind>``: active while any of its
        tags (the message's head) has it active."""
        from potline.alarms import AlarmDef

        am = self.alarms
        if am is None:
            return
        key = f"{device}/{akind}"
        prio, text = BRIDGE_ALARMS.get(akind, ("medium", akind.replace("_", " ")))
        head = msg.split(":", 1)[0] if ":" in msg else ""
        tags = self._bridge_active.setdefault(key, set())
        if active:
            tags.add(head)
        else:
            tags.discard(head)
            if head == "":  # a clear without a tag clears them all
                tags.clear()
        try:
            am.define(AlarmDef(key, akind, prio, f"{text}: {plc}", area=plc, suppressible=False), now)
            recs = am.set_condition(key, bool(tags), now, detail=msg)
        except Exception:
            log.exception("alarms.bridge_failed", key=key)
            return
        self.alarm_out(recs)

    # ------------------------------------------------------------------ write records

    def tag_role(self, device: DeviceView, tag: str) -> tuple[str, int | None]:
        """(role, floor number or None) of a tag of ``device``: the role its map gives it, the
        cell from its place in the map's cell block (the room's k-th cell of the layout)."""
        tm = getattr(device, "tagmap", None)
        t = tm.tags.get(tag) if tm is not None else None
        if t is None:  # not in the map: the name is the role (the shipped maps' convention)
            return (tag.split(".", 1)[1] if "." in tag else tag), (cell_number(tag) if "." in tag else None)
        if t.cell is None or tm is None or tm.cells is None:
            return t.role, None
        k = int(t.cell) - int(tm.cells.first)
        lay = self.layout
        if device.name in lay.room_names:
            cells = np.flatnonzero(self._cell_room == list(lay.room_names).index(device.name))
            if 0 <= k < cells.size:
                return t.role, int(lay.cell_number[cells[k]])
        return t.role, int(t.cell)

    def record_callback(self, device: DeviceView) -> Callable[[WriteRecord], None]:
        """A per-device ``WriteRecord`` callback (records carry no device of their own)."""
        lk = self.links.get(device.device)
        plc = lk.name if lk else device.device
        where = where_of(device)
        roles: dict[str, tuple[str, int | None]] = {}

        def cb(rec: WriteRecord) -> None:
            self.metrics.setpoint_writes.labels(self.name, plc, rec.action).inc()
            tag = rec.tag
            if tag not in roles:
                roles[tag] = self.tag_role(device, tag)
            role, cell = roles[tag]
            if rec.rejected:
                self._refused(lk, plc, rec, where, role, cell)
                return
            if role == "line_current_sp":
                self.recorder.append("setpoint_write", t_plant_s=rec.t, source=plc, tag=tag, value=rec.written,
                                     detail=(rec.reason or rec.action), data=rec.as_dict(), **where)  # fmt: skip
            elif role == "beam_move":
                mm = f"{rec.written:+.1f} mm" if rec.written is not None else "nothing"
                self.recorder.append("command_write", t_plant_s=rec.t, source=plc, tag=tag, value=rec.written,
                                     cell=cell, detail=f"beam {mm} ({rec.action})", data=rec.as_dict(),
                                     **where)  # fmt: skip

        return cb

    def _refused(self, lk: Link | None, plc: str, rec: WriteRecord, where: dict[str, Any], role: str,
                 cell: int | None) -> None:  # fmt: skip
        """Refused writes: journal the first of a kind, then at most one summary a minute."""
        if lk is None:
            return
        now = time.monotonic()
        reason = rec.reason or "refused"
        key = reason.split(":", 1)[0]
        lk.refused_count += 1
        if key != lk.refused_reason or now - lk.refused_journal_mono >= REFUSAL_JOURNAL_EVERY_S:
            n = lk.refused_count
            lk.refused_reason, lk.refused_journal_mono, lk.refused_count = key, now, 0
            self.recorder.append("write_refused", t_plant_s=rec.t, source=plc, tag=rec.tag, value=rec.requested,
                                 cell=cell,
                                 detail=f"{role}: {reason}" + (f" ({n} refused since the last entry)" if n > 1 else ""),
                                 data={"refused": n, "role": role, **rec.as_dict()}, **where)  # fmt: skip


class ShadowRecorder:
    """Shadow mode: what would be written, logged every cycle and journalled
    (``shadow_commands``) when a setpoint decision changes, else once a minute.

    Args:
        layout: the plant.
        recorder: the journal.
        scan_period_s: the control cycle [plant s] (the ramp's first step is credited one).
    """

    def __init__(self, layout: PlantLayout, recorder: JournalRecorder, scan_period_s: float) -> None:
        self.layout = layout
        self.recorder = recorder
        self.scan_period_s = scan_period_s
        self._cell_room = np.asarray(layout.cell_room, dtype=np.int64)
        #: last setpoint decided per line: (value [kA], plant time [s])
        self._last_sp: dict[int, tuple[float, float]] = {}
        #: the setpoint decisions last journalled and when [plant s]
        self._journalled_key: str | None = None
        self._journalled_t = -math.inf

    def reset(self) -> None:
        """Forget the setpoint ramp (at every mode change)."""
        self._last_sp.clear()
        self._journalled_key, self._journalled_t = None, -math.inf

    def record(self, cmds: Commands, bridge: BridgePlant | None, meas: Measurements | None, now: float) -> None:
        """Journal one cycle's would-be writes (nothing when there are none)."""
        shots = np.asarray(cmds.feed_shots)
        moves = np.asarray(cmds.beam_move_mm, dtype=float)
        sp = np.asarray(cmds.line_setpoint_ka, dtype=float)
        fed = np.flatnonzero(shots > 0)
        moved = np.flatnonzero(np.abs(moves) >= BEAM_MOVE_MIN_MM)
        sps = np.flatnonzero(np.isfinite(sp))
        if not (fed.size or moved.size or sps.size):
            return
        lay = self.layout
        decided = {lay.line_names[i]: self.setpoint(int(i), float(sp[i]), bridge, meas, now) for i in sps}
        beam = [{"room": lay.room_names[int(self._cell_room[k])], "cell": int(lay.cell_number[k]),
                 "mm": round(float(moves[k]), 2)} for k in moved[:SHADOW_BEAM_LIST]]  # fmt: skip
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
        t = float(meas.t_s) if meas is not None else float(now)
        key = json.dumps(
            {k: None if v["value"] is None else round(float(v["value"]), 1) for k, v in decided.items()}, sort_keys=True
        )  # a ramp's every step is not a new decision: 0.1 kA
        if key == self._journalled_key and t - self._journalled_t < SHADOW_JOURNAL_EVERY_S:
            return  # not every cycle: the same decision within the minute is only logged
        self._journalled_key, self._journalled_t = key, t
        self.recorder.append("shadow_commands", source="controller", detail=detail, data=data)

    def setpoint(self, line: int, requested: float, bridge: BridgePlant | None, meas: Measurements | None,
                 now: float) -> dict[str, Any]:  # fmt: skip
        """What the safety layer would make of a setpoint (clamp, ramp from the last decision)."""
        from plc_bridge.safe_write import decide

        if meas is not None:
            now = float(meas.t_s)
        dev = bridge.rects[line] if bridge is not None and line < len(bridge.rects) else None
        if dev is None or dev.writer is None:
            return {"requested": requested, "value": None, "reason": "no rectifier writer"}
        last = self._last_sp.get(line)
        if last is None and meas is not None and bool(meas.line_ok[line]):
            last = (float(meas.line_setpoint_ka[line]), now - self.scan_period_s)
        d = decide(dev.writer.limits(_tag_of(dev, "line_current_sp")), requested, last[0] if last else None,
                   last[1] if last else None, now)  # fmt: skip
        if d.value is not None:
            self._last_sp[line] = (float(d.value), now)
        return {
            "requested": round(requested, 4),
            "value": None if d.value is None else round(float(d.value), 4),
            "clamped": d.clamped,
            "ramped": d.ramped,
            "rejected": d.rejected,
            "reason": d.reason,
        }
