"""Alarm management as ANSI/ISA-18.2 describes it: pure, synchronous, clock-free (``now`` is passed in).

An alarm (``Alarm``, defined by an ``AlarmDef``) follows a *process condition* (active or
not) and an *acknowledgement*; together they give the ISA-18.2 base states::

    active  acked   state        ISA-18.2
    no      yes     normal       A  Normal
    yes     no      unack        B  Unacknowledged alarm
    yes     yes     acked        C  Acknowledged alarm
    no      no      rtn_unack    D  Returned to normal, unacknowledged

Two overlays hide an alarm from the operator while the condition keeps being tracked:

* ``shelved`` (F): an operator shelved it, with user, reason and an expiry (at most
  ``AlarmConfig.max_shelve_s``); it unshelves on expiry (``tick``) or by hand;
* ``suppressed`` (G, suppressed by design): logic decided the alarm does not matter now:
  its cell is cut out, its room is in local control (``set_design_suppression``), or its
  area is in an alarm flood (below).

When the last overlay goes, the alarm comes back as ``unack`` if its condition is active
(the operator must see it) and ``normal`` otherwise, as ISA-18.2 has it.

Flood suppression: more than ``flood_count`` annunciations in one area (a potroom, a
line, a PLC) within ``flood_window_s`` start a flood: one summary alarm
``<area>/Flood`` is raised and further alarms of that area (but the ``flood_exempt``
priorities) are suppressed while it lasts; it ends (``tick``) when the window holds at
most ``flood_clear_count`` annunciation attempts, and the alarms still active then are
annunciated.

Every change of an alarm's state, condition or overlay is returned as an
``AlarmRecord`` (``journal_kind`` / ``journal_fields`` for ``potline.journal``). The
manager does no I/O and takes no locks: use it from one thread (the daemon's loop).

Times are plant seconds [s] on the caller's timeline; durations are seconds.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
from pydantic import Field, model_validator

from twin.configcore import StrictModel

if TYPE_CHECKING:
    from potline.journal import Event
    from twin.layout import PlantLayout

__all__ = [
    "EVENT_ALARMS",
    "PRIORITIES",
    "STATES",
    "STATE_LABELS",
    "Alarm",
    "AlarmActionError",
    "AlarmConfig",
    "AlarmDef",
    "AlarmManager",
    "AlarmRecord",
    "EventAlarm",
    "alarm_key",
    "design_suppression",
]

Priority = Literal["critical", "high", "medium", "low"]
State = Literal["normal", "unack", "acked", "rtn_unack", "shelved", "suppressed"]
AlarmEvent = Literal[
    "raised", "cleared", "acknowledged", "shelved", "unshelved", "shelve_expired", "suppressed", "unsuppressed"
]

#: priorities, most urgent first
PRIORITIES: tuple[Priority, ...] = get_args(Priority)
PRIORITY_RANK = {p: i for i, p in enumerate(PRIORITIES)}
STATES: tuple[State, ...] = get_args(State)
#: what the operator reads for each state
STATE_LABELS: dict[State, str] = {
    "normal": "Normal",
    "unack": "Unacknowledged",
    "acked": "Acknowledged",
    "rtn_unack": "Returned to normal, unacknowledged",
    "shelved": "Shelved",
    "suppressed": "Suppressed by design",
}
#: suppression scopes (the keys of ``Alarm.suppressed``)
CELL_SCOPE, AREA_SCOPE, FLOOD_SCOPE = "cell", "area", "flood"


class AlarmActionError(ValueError):
    """An operator action that is not allowed (unknown alarm, nothing to acknowledge, no reason...)."""


class AlarmConfig(StrictModel):
    """Alarm management settings (an ``[alarms]`` TOML table)."""

    flood_count: int = Field(10, ge=1, le=10_000, description="annunciations per area and window that start a flood")
    flood_window_s: float = Field(600.0, gt=0.0, le=86_400.0, description="flood window [s]",
                                  json_schema_extra={"unit": "s"})  # fmt: skip
    flood_clear_count: int = Field(5, ge=0, le=10_000, description="a flood ends at or below this many in the window")
    flood_exempt: tuple[Priority, ...] = Field(("critical",), description="priorities never flood-suppressed")
    max_shelve_s: float = Field(8 * 3600.0, gt=0.0, le=7 * 86_400.0, description="longest shelving [s]",
                                json_schema_extra={"unit": "s"})  # fmt: skip
    default_shelve_s: float = Field(3600.0, gt=0.0, le=7 * 86_400.0, description="shelving without a duration [s]",
                                    json_schema_extra={"unit": "s"})  # fmt: skip
    shelve_critical: bool = Field(False, description="may critical alarms be shelved")

    @model_validator(mode="after")
    def _consistent(self) -> AlarmConfig:
        if self.flood_clear_count > self.flood_count:
            raise ValueError(f"flood_clear_count {self.flood_clear_count} exceeds flood_count {self.flood_count}")
        if self.default_shelve_s > self.max_shelve_s:
            raise ValueError(f"default_shelve_s {self.default_shelve_s} exceeds max_shelve_s {self.max_shelve_s}")
        return self


@dataclass(frozen=True, slots=True)
class AlarmDef:
    """What an alarm is (fixed for its life).

    Attributes:
        key: unique name, e.g. ``Potroom1/Cell017/AE`` (``alarm_key``).
        kind: what it is about (``ae``, ``comms_lost``, ``flood``, ...).
        priority: critical | high | medium | low.
        message: one line for the operator.
        area: potroom, line or PLC name: the flood and design-suppression scope.
        cell: floor number of the cell in its room (1-based), None for area alarms.
        cell_index: the cell's layout index (the HMI's map), None for area alarms.
        suppressible: may logic suppress it (cut-out cell, room in local, flood)?
    """

    key: str
    kind: str
    priority: Priority
    message: str
    area: str | None = None
    cell: int | None = None
    cell_index: int | None = None
    suppressible: bool = True

    def __post_init__(self) -> None:
        if not self.key:
            raise ValueError("alarm key must not be empty")
        if self.priority not in PRIORITY_RANK:
            raise ValueError(
                f"alarm {self.key}: priority must be one of {', '.join(PRIORITIES)}, got {self.priority!r}"
            )


@dataclass(slots=True)
class Alarm:
    """One alarm's live state (see the module docstring for the states)."""

    definition: AlarmDef
    active: bool = False
    acked: bool = True
    since: float | None = None  # time of the last state change [s]
    raised_at: float | None = None  # last activation [s]
    value: float | None = None
    detail: str = ""
    activations: int = 0
    acked_by: str | None = None
    acked_at: float | None = None
    shelved_by: str | None = None
    shelve_reason: str = ""
    shelved_until: float | None = None
    suppressed: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.definition.key

    @property
    def shelved(self) -> bool:
        return self.shelved_until is not None

    @property
    def base_state(self) -> State:
        """The state from condition and acknowledgement alone (A-D)."""
        if self.active:
            return "acked" if self.acked else "unack"
        return "normal" if self.acked else "rtn_unack"

    @property
    def state(self) -> State:
        """What the operator sees: suppressed, shelved, or the base state."""
        if self.suppressed:
            return "suppressed"
        if self.shelved:
            return "shelved"
        return self.base_state

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view (the HMI's alarm list)."""
        d = self.definition
        return {
            "key": d.key, "kind": d.kind, "priority": d.priority, "message": d.message, "area": d.area,
            "cell": d.cell, "cell_index": d.cell_index, "state": self.state, "state_label": STATE_LABELS[self.state],
            "active": self.active, "acked": self.acked, "since": self.since, "raised_at": self.raised_at,
            "value": self.value, "detail": self.detail, "activations": self.activations, "acked_by": self.acked_by,
            "shelved_by": self.shelved_by, "shelve_reason": self.shelve_reason, "shelved_until": self.shelved_until,
            "suppressed": dict(self.suppressed),
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class AlarmRecord:
    """One change of an alarm, for the journal.

    Attributes:
        t: when [s]; event: what happened; old_state/new_state: what the operator saw
        before and after; active: the condition after; user/reason: who and why
        (operator actions, suppression reasons); value: the alarm's value (AE peak V,
        flood count...).
    """

    t: float
    key: str
    kind: str
    priority: Priority
    event: AlarmEvent
    old_state: State
    new_state: State
    active: bool
    area: str | None = None
    cell: int | None = None
    user: str | None = None
    reason: str = ""
    value: float | None = None
    message: str = ""

    @property
    def journal_kind(self) -> str:
        """Journal event kind: ``alarm_<event>`` (category ``alarm``); a clear is ``alarm_returned``
        (``alarm_cleared`` is the safety layer's own kind)."""
        return "alarm_returned" if self.event == "cleared" else f"alarm_{self.event}"

    def journal_fields(self) -> dict[str, Any]:
        """Fields for ``Journal.append(kind=..., **fields)`` / ``JournalRecorder.append(kind, **fields)``
        (without ``kind``; the category is set to ``alarm``)."""
        who = f" by {self.user}" if self.user else ""
        why = f": {self.reason}" if self.reason else ""
        detail = f"{self.key} {self.event}{who}{why} ({self.old_state} -> {self.new_state}) {self.message}".rstrip()
        fields: dict[str, Any] = {
            "category": "alarm", "t_plant_s": self.t, "room": self.area, "cell": self.cell, "source": "alarms",
            "tag": self.key, "value": self.value, "user": self.user, "detail": detail,
            "data": {"key": self.key, "event": self.event, "from": self.old_state, "to": self.new_state,
                     "priority": self.priority, "active": self.active, "alarm_kind": self.kind,
                     "reason": self.reason},
        }  # fmt: skip
        return {k: v for k, v in fields.items() if v is not None}

    def to_event(self) -> Event:
        """A ``potline.journal.Event`` of this record."""
        from potline.journal import Event

        return Event(kind=self.journal_kind, **self.journal_fields())


@dataclass(frozen=True, slots=True)
class EventAlarm:
    """How a journal/controller event kind drives an alarm (``EVENT_ALARMS``).

    ``active`` None: a pulse (raised and cleared at once: it waits for an acknowledgement
    as ``rtn_unack``).
    """

    suffix: str
    kind: str
    active: bool | None
    priority: Priority
    message: str
    suppressible: bool = True


#: event kinds the daemon already journals (``potline.journal``) -> the alarm they drive
EVENT_ALARMS: dict[str, EventAlarm] = {
    "ae_start": EventAlarm("AE", "ae", True, "high", "Anode effect"),
    "ae_end": EventAlarm("AE", "ae", False, "high", "Anode effect"),
    "lvae_start": EventAlarm("LVAE", "lvae", True, "medium", "Low-voltage anode effect"),
    "lvae_end": EventAlarm("LVAE", "lvae", False, "medium", "Low-voltage anode effect"),
    "ae_predicted": EventAlarm("AEPredicted", "ae_predicted", None, "low", "Anode effect predicted"),
    "ae_repeating": EventAlarm("AERepeating", "ae_repeating", None, "medium", "Repeated anode effects"),
    "ae_escalation": EventAlarm("AEEscalation", "ae_escalation", None, "critical", "Anode effect not quenched"),
    "quench_escalated": EventAlarm("AEEscalation", "ae_escalation", None, "critical", "Anode effect not quenched"),
    "feeder_fault": EventAlarm("FeederFault", "feeder_fault", None, "medium", "Feeder fault"),
    "sensor_frozen": EventAlarm("SensorFrozen", "sensor_frozen", True, "medium", "Voltage signal frozen"),
    "sensor_recovered": EventAlarm("SensorFrozen", "sensor_frozen", False, "medium", "Voltage signal frozen"),
    "comms_lost": EventAlarm("CommsLost", "comms_lost", True, "high", "PLC link lost", suppressible=False),
    "comms_restored": EventAlarm("CommsLost", "comms_lost", False, "high", "PLC link lost", suppressible=False),
    "rectifier_trip": EventAlarm("RectifierTrip", "rectifier_trip", True, "critical", "Rectifier tripped",
                                 suppressible=False),
    "rectifier_restart": EventAlarm("RectifierTrip", "rectifier_trip", False, "critical", "Rectifier tripped",
                                    suppressible=False),
    "daemon_error": EventAlarm("DaemonError", "daemon_error", None, "high", "Daemon error", suppressible=False),
}  # fmt: skip


def alarm_key(suffix: str, area: str | None = None, cell: int | None = None) -> str:
    """``<area>/Cell<nnn>/<suffix>``, ``<area>/<suffix>`` or ``<suffix>``."""
    parts = [p for p in (area, None if cell is None else f"Cell{int(cell):03d}") if p]
    return "/".join([*parts, suffix])


def design_suppression(
    layout: PlantLayout, cut_out: np.ndarray, cell_remote: np.ndarray | None
) -> tuple[dict[int, str], dict[str, str]]:
    """The design suppressions of one scan: (cell index -> reason, area -> reason).

    A cut-out cell suppresses its alarms; a room whose cells are all in local control
    (its PLC's automation in charge) suppresses the suppressible alarms of that room.
    """
    cells = {int(k): "cell cut out" for k in np.flatnonzero(np.asarray(cut_out, dtype=bool))}
    areas: dict[str, str] = {}
    if cell_remote is not None:
        remote = np.asarray(cell_remote, dtype=bool)
        for r, name in enumerate(layout.room_names):
            idx = layout.room_cells(r)
            if len(idx) and not remote[idx].any():
                areas[name] = "room in local control"
    return cells, areas


class AlarmManager:
    """Every alarm of a plant and the rules that move them (see the module docstring).

    Args:
        config: flood and shelving settings.

    Every method that changes something takes ``now`` [s] and returns the
    ``AlarmRecord`` list of what changed (journal them). ``revision`` counts changes
    (the HMI pushes the list when it moved).
    """

    def __init__(self, config: AlarmConfig | None = None) -> None:
        self.config = config or AlarmConfig()
        self._alarms: dict[str, Alarm] = {}
        self._window: dict[str, deque[float]] = {}
        self._flooding: dict[str, int] = {}  # area -> alarms suppressed by this flood
        self._design_cells: dict[int, str] = {}
        self._design_areas: dict[str, str] = {}
        self.revision = 0

    # ------------------------------------------------------------------ definitions and lookups

    def define(self, definition: AlarmDef, now: float | None = None) -> Alarm:
        """Register an alarm (idempotent for the same definition); design suppression in force applies.

        Raises:
            ValueError: the key is defined with a different definition.
        """
        have = self._alarms.get(definition.key)
        if have is not None:
            if have.definition != definition:
                raise ValueError(f"alarm {definition.key}: already defined differently ({have.definition})")
            return have
        alarm = Alarm(definition, since=now)
        self._alarms[definition.key] = alarm
        if definition.suppressible:
            alarm.suppressed.update(self._design_reasons(definition))
        self.revision += 1
        return alarm

    def get(self, key: str) -> Alarm:
        """The alarm ``key``; ``AlarmActionError`` when there is none."""
        try:
            return self._alarms[key]
        except KeyError:
            raise AlarmActionError(f"no alarm {key!r}") from None

    def __contains__(self, key: object) -> bool:
        return key in self._alarms

    def __len__(self) -> int:
        return len(self._alarms)

    def all(self) -> list[Alarm]:
        """Every defined alarm."""
        return list(self._alarms.values())

    def listing(self, *, include_normal: bool = False) -> list[Alarm]:
        """The alarm list an operator reads: not normal (or all), most urgent first, newest first."""
        order = {"unack": 0, "rtn_unack": 1, "acked": 2, "shelved": 3, "suppressed": 4, "normal": 5}
        got = [a for a in self._alarms.values() if include_normal or a.state != "normal"]
        got.sort(key=lambda a: (order[a.state], PRIORITY_RANK[a.definition.priority], -(a.since or 0.0), a.key))
        return got

    def counts(self) -> dict[State, int]:
        """Alarms in each state."""
        out: dict[State, int] = dict.fromkeys(STATES, 0)
        for a in self._alarms.values():
            out[a.state] += 1
        return out

    def flooding(self) -> dict[str, int]:
        """Areas in flood -> alarms suppressed by that flood so far."""
        return dict(self._flooding)

    # ------------------------------------------------------------------ the process condition

    def set_condition(
        self, key: str, active: bool, now: float, *, value: float | None = None, detail: str = ""
    ) -> list[AlarmRecord]:
        """The process condition of alarm ``key`` is (still) ``active`` or not."""
        alarm = self.get(key)
        if value is not None:
            alarm.value = value
        if detail:
            alarm.detail = detail
        if bool(active) == alarm.active:
            return []
        return self._raise(alarm, now) if active else self._clear(alarm, now)

    def pulse(self, key: str, now: float, *, value: float | None = None, detail: str = "") -> list[AlarmRecord]:
        """A one-shot condition: raised and cleared at once (it waits for an acknowledgement)."""
        recs = self.set_condition(key, True, now, value=value, detail=detail)
        return recs + self.set_condition(key, False, now)

    def on_event(
        self,
        kind: str,
        now: float,
        *,
        area: str | None = None,
        cell: int | None = None,
        cell_index: int | None = None,
        value: float | None = None,
        detail: str = "",
    ) -> list[AlarmRecord]:
        """Drive the alarm of a journal/controller event kind (``EVENT_ALARMS``); other kinds: nothing."""
        spec = EVENT_ALARMS.get(kind)
        if spec is None:
            return []
        where = f" {area}/Cell{int(cell):03d}" if area and cell is not None else (f" {area}" if area else "")
        d = AlarmDef(alarm_key(spec.suffix, area, cell), spec.kind, spec.priority, spec.message + where,
                     area=area, cell=cell, cell_index=cell_index, suppressible=spec.suppressible)  # fmt: skip
        self.define(d, now)
        if spec.active is None:
            return self.pulse(d.key, now, value=value, detail=detail)
        return self.set_condition(d.key, spec.active, now, value=value, detail=detail)

    def _raise(self, alarm: Alarm, now: float) -> list[AlarmRecord]:
        recs: list[AlarmRecord] = []
        old = alarm.state
        d = alarm.definition
        alarm.active = True
        alarm.raised_at = now
        alarm.activations += 1
        if not alarm.suppressed and not alarm.shelved and d.kind != "flood" and d.area is not None:
            recs += self._count_annunciation(d.area, now)
            if d.area in self._flooding and d.suppressible and d.priority not in self.config.flood_exempt:
                alarm.suppressed[FLOOD_SCOPE] = f"alarm flood in {d.area}"
                self._flooding[d.area] += 1
                recs += self._update_flood_summary(d.area, now)
        if not alarm.suppressed and not alarm.shelved:
            alarm.acked = False
            alarm.acked_by = alarm.acked_at = None
        reason = alarm.suppressed.get(FLOOD_SCOPE, "")
        recs.insert(0, self._record(alarm, now, "raised", old, reason=reason))
        return recs

    def _clear(self, alarm: Alarm, now: float) -> list[AlarmRecord]:
        old = alarm.state
        alarm.active = False
        return [self._record(alarm, now, "cleared", old)]

    # ------------------------------------------------------------------ operator actions

    def acknowledge(self, key: str, user: str, now: float, comment: str = "") -> list[AlarmRecord]:
        """An operator acknowledges ``key``: unack -> acked, rtn_unack -> normal.

        Raises:
            AlarmActionError: no user, unknown alarm, nothing to acknowledge, or shelved/suppressed.
        """
        _need(user, "user")
        alarm = self.get(key)
        old = alarm.state
        if old in ("shelved", "suppressed"):
            raise AlarmActionError(f"alarm {key} is {STATE_LABELS[old].lower()}: nothing to acknowledge")
        if alarm.acked:
            raise AlarmActionError(f"alarm {key} is {STATE_LABELS[old].lower()}: nothing to acknowledge")
        alarm.acked = True
        alarm.acked_by, alarm.acked_at = user, now
        return [self._record(alarm, now, "acknowledged", old, user=user, reason=comment)]

    def acknowledge_many(self, keys: Iterable[str], user: str, now: float, comment: str = "") -> list[AlarmRecord]:
        """Acknowledge each of ``keys`` that can be (the others are skipped)."""
        recs: list[AlarmRecord] = []
        for k in keys:
            a = self._alarms.get(k)
            if a is not None and not a.acked and a.state not in ("shelved", "suppressed"):
                recs += self.acknowledge(k, user, now, comment)
        return recs

    def shelve(
        self, key: str, user: str, reason: str, now: float, duration_s: float | None = None
    ) -> list[AlarmRecord]:
        """An operator shelves ``key`` for ``duration_s`` [s] (default ``default_shelve_s``).

        Raises:
            AlarmActionError: no user or reason, a duration out of (0, max_shelve_s], a
                critical alarm (unless ``shelve_critical``), already shelved, unknown alarm.
        """
        _need(user, "user")
        _need(reason, "reason")
        cfg = self.config
        dur = cfg.default_shelve_s if duration_s is None else float(duration_s)
        if not 0.0 < dur <= cfg.max_shelve_s:
            raise AlarmActionError(f"shelving duration must be in (0, {cfg.max_shelve_s:g}] s, got {dur:g} s")
        alarm = self.get(key)
        if alarm.definition.priority == "critical" and not cfg.shelve_critical:
            raise AlarmActionError(f"alarm {key} is critical: critical alarms cannot be shelved")
        if alarm.shelved:
            raise AlarmActionError(f"alarm {key} is already shelved until {alarm.shelved_until:g} s (unshelve first)")
        old = alarm.state
        alarm.shelved_by, alarm.shelve_reason, alarm.shelved_until = user, reason, now + dur
        return [self._record(alarm, now, "shelved", old, user=user, reason=reason, value=dur)]

    def unshelve(self, key: str, user: str, now: float) -> list[AlarmRecord]:
        """An operator returns a shelved alarm to service (unack if still active, else normal)."""
        _need(user, "user")
        alarm = self.get(key)
        if not alarm.shelved:
            raise AlarmActionError(f"alarm {key} is not shelved")
        return [self._unshelve(alarm, now, "unshelved", user)]

    def _unshelve(self, alarm: Alarm, now: float, event: AlarmEvent, user: str | None) -> AlarmRecord:
        old = alarm.state
        alarm.shelved_by, alarm.shelve_reason, alarm.shelved_until = None, "", None
        if not alarm.suppressed:
            self._back_in_service(alarm)
        return self._record(alarm, now, event, old, user=user)

    @staticmethod
    def _back_in_service(alarm: Alarm) -> None:
        """Leaving the last overlay: an active condition must be acknowledged again."""
        alarm.acked = not alarm.active
        if not alarm.acked:
            alarm.acked_by = alarm.acked_at = None

    # ------------------------------------------------------------------ suppression by design

    def set_design_suppression(
        self, now: float, cells: Mapping[int, str] | None = None, areas: Mapping[str, str] | None = None
    ) -> list[AlarmRecord]:
        """The design suppressions in force now (cell index -> reason, area -> reason); see
        ``design_suppression``. Cheap when nothing changed (call it every scan)."""
        cells, areas = dict(cells or {}), dict(areas or {})
        if cells == self._design_cells and areas == self._design_areas:
            return []
        self._design_cells, self._design_areas = cells, areas
        recs: list[AlarmRecord] = []
        for alarm in self._alarms.values():
            if not alarm.definition.suppressible:
                continue
            want = self._design_reasons(alarm.definition)
            have = {s: r for s, r in alarm.suppressed.items() if s != FLOOD_SCOPE}
            if want != have:
                recs += self._set_suppression(alarm, now, want, keep_flood=True)
        return recs

    def _design_reasons(self, d: AlarmDef) -> dict[str, str]:
        out: dict[str, str] = {}
        if d.cell_index is not None and d.cell_index in self._design_cells:
            out[CELL_SCOPE] = self._design_cells[d.cell_index]
        if d.area is not None and d.area in self._design_areas:
            out[AREA_SCOPE] = self._design_areas[d.area]
        return out

    def _set_suppression(
        self, alarm: Alarm, now: float, reasons: dict[str, str], *, keep_flood: bool
    ) -> list[AlarmRecord]:
        old = alarm.state
        was = bool(alarm.suppressed)
        new = dict(reasons)
        if keep_flood and FLOOD_SCOPE in alarm.suppressed:
            new[FLOOD_SCOPE] = alarm.suppressed[FLOOD_SCOPE]
        alarm.suppressed = new
        if was and not new:
            if not alarm.shelved:
                self._back_in_service(alarm)
            return [self._record(alarm, now, "unsuppressed", old)]
        if new:
            return [self._record(alarm, now, "suppressed", old, reason="; ".join(new.values()))]
        return []

    # ------------------------------------------------------------------ floods and expiry

    def _count_annunciation(self, area: str, now: float) -> list[AlarmRecord]:
        win = self._window.setdefault(area, deque())
        win.append(now)
        self._prune(win, now)
        if area not in self._flooding and len(win) > self.config.flood_count:
            self._flooding[area] = 0
            return self._update_flood_summary(area, now, start=True)
        return []

    def _prune(self, win: deque[float], now: float) -> None:
        edge = now - self.config.flood_window_s
        while win and win[0] <= edge:
            win.popleft()

    def _flood_key(self, area: str) -> str:
        return alarm_key("Flood", area)

    def _update_flood_summary(self, area: str, now: float, start: bool = False) -> list[AlarmRecord]:
        d = AlarmDef(self._flood_key(area), "flood", "high", f"Alarm flood in {area}", area=area, suppressible=False)
        alarm = self.define(d, now)
        n = self._flooding[area]
        alarm.value = float(n)
        alarm.detail = f"{n} alarms suppressed by the flood"
        self.revision += 1
        if start:
            return self._raise(alarm, now)
        return []

    def tick(self, now: float) -> list[AlarmRecord]:
        """Time-driven changes: shelving expiry, flood end. Call every scan."""
        recs: list[AlarmRecord] = []
        for alarm in self._alarms.values():
            if alarm.shelved_until is not None and now >= alarm.shelved_until:
                recs.append(self._unshelve(alarm, now, "shelve_expired", None))
        for area in list(self._flooding):
            win = self._window.get(area, deque())
            self._prune(win, now)
            if len(win) <= self.config.flood_clear_count:
                recs += self._end_flood(area, now)
        return recs

    def _end_flood(self, area: str, now: float) -> list[AlarmRecord]:
        del self._flooding[area]
        recs: list[AlarmRecord] = []
        summary = self._alarms[self._flood_key(area)]
        recs += self._clear(summary, now)
        for alarm in self._alarms.values():
            if FLOOD_SCOPE in alarm.suppressed and alarm.definition.area == area:
                rest = {s: r for s, r in alarm.suppressed.items() if s != FLOOD_SCOPE}
                recs += self._set_suppression(alarm, now, rest, keep_flood=False)
        return recs

    # ------------------------------------------------------------------ records

    def _record(
        self,
        alarm: Alarm,
        now: float,
        event: AlarmEvent,
        old: State,
        *,
        user: str | None = None,
        reason: str = "",
        value: float | None = None,
    ) -> AlarmRecord:
        new = alarm.state
        if new != old:
            alarm.since = now
        self.revision += 1
        d = alarm.definition
        return AlarmRecord(
            t=now, key=d.key, kind=d.kind, priority=d.priority, event=event, old_state=old, new_state=new,
            active=alarm.active, area=d.area, cell=d.cell, user=user, reason=reason,
            value=alarm.value if value is None else value, message=d.message,
        )  # fmt: skip


def _need(text: str | None, what: str) -> None:
    if not text or not str(text).strip():
        raise AlarmActionError(f"{what} must not be empty")


def records_as_dicts(records: Sequence[AlarmRecord]) -> list[dict[str, Any]]:
    """Plain dicts of records (JSON answers of the HMI)."""
    return [
        {"t": r.t, "key": r.key, "event": r.event, "from": r.old_state, "to": r.new_state, "user": r.user,
         "reason": r.reason}
        for r in records
    ]  # fmt: skip
