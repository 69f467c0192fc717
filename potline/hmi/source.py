"""What the HMI shows, and where it comes from: ``Snapshot`` and the ``HmiSource`` Protocol.

The web app never reaches into the daemon: it asks an ``HmiSource`` for the latest
``Snapshot`` (one scan: every cell's voltage and state, every line's current, voltage and
setpoint, the mode), the ``AlarmManager``, history and journal queries, and mode
requests. The daemon, ``potline demo`` and a HIL rig each provide one; ``LocalSource``
is a complete one built from the real parts (an ``AlarmManager``, a ``History`` file, a
``Journal`` file and a mode handler) that any of them can use as is.

Times: ``Snapshot.t`` is the *timeline* [Unix s] the history is written on (the daemon:
its start's wall time + plant time); ``t_plant_s`` the plant time the alarm manager and
the journal use. ``t - t_plant_s`` converts one into the other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from potctl.plant import Measurements
    from potline.alarms import AlarmManager, AlarmRecord
    from potline.history import GroupSeries, History, Series
    from potline.journal import Event, Journal
    from twin.layout import PlantLayout

__all__ = [
    "FLAG_AE",
    "FLAG_ANODE_CHANGE",
    "FLAG_BAD_DATA",
    "FLAG_CUT_OUT",
    "FLAG_LOCAL",
    "FLAG_TAPPING",
    "HmiSource",
    "JournalQuery",
    "LocalSource",
    "Snapshot",
    "plant_info",
    "snapshot_from_scan",
]

#: per-cell state bits of ``Snapshot.flags`` (the overview map's colours)
FLAG_AE, FLAG_TAPPING, FLAG_ANODE_CHANGE, FLAG_LOCAL, FLAG_BAD_DATA, FLAG_CUT_OUT = 1, 2, 4, 8, 16, 32
#: feeding phases (``potctl.feeding``): 0 unknown
FEED_NAMES = {0: "", 1: "underfeed", 2: "overfeed", 3: "nominal"}


@dataclass(slots=True)
class Snapshot:
    """One scan as the HMI shows it.

    Attributes:
        seq: increases with every scan published.
        t: timeline time [Unix s]; t_plant_s: plant time [s].
        mode: observe | shadow | control.
        cell_voltage_v: [n_cells] (NaN: no good value).
        flags: [n_cells] FLAG_* bits (AE, tapping, anode change, local, bad data, cut out).
        feed_phase: [n_cells] 0 unknown, 1 underfeed, 2 overfeed, 3 nominal.
        line_current_ka, line_voltage_v, line_setpoint_ka: [n_lines]; line_ok: [n_lines].
    """

    seq: int
    t: float
    t_plant_s: float
    mode: str
    cell_voltage_v: np.ndarray
    flags: np.ndarray
    feed_phase: np.ndarray
    line_current_ka: np.ndarray
    line_voltage_v: np.ndarray
    line_setpoint_ka: np.ndarray
    line_ok: np.ndarray

    def as_dict(self) -> dict[str, Any]:
        """Columnar JSON (compact for 660 cells): NaN -> None, voltages to mV."""
        return {
            "seq": self.seq, "t": self.t, "t_plant_s": self.t_plant_s, "mode": self.mode,
            "cells": {"u": _round(self.cell_voltage_v, 3), "flags": self.flags.astype(int).tolist(),
                      "feed": self.feed_phase.astype(int).tolist()},
            "lines": {"i_ka": _round(self.line_current_ka, 2), "u_v": _round(self.line_voltage_v, 1),
                      "sp_ka": _round(self.line_setpoint_ka, 2), "ok": self.line_ok.astype(bool).tolist()},
        }  # fmt: skip


def _round(a: np.ndarray, nd: int) -> list[float | None]:
    a = np.asarray(a, dtype=float)
    r = np.round(a, nd)
    return [None if not np.isfinite(x) else x for x in r.tolist()]


def snapshot_from_scan(
    meas: Measurements,
    *,
    seq: int,
    t: float,
    mode: str,
    ae_active: np.ndarray | None = None,
    feed_phase: np.ndarray | None = None,
) -> Snapshot:
    """A ``Snapshot`` of one scan (``potctl.plant.Measurements``), the AE detector's ``active``
    flags and the feed controller's ``phase``; ``t`` is the timeline time [Unix s]."""
    n = int(np.shape(meas.cell_ok)[0])

    def b(x: Any) -> np.ndarray:
        return np.asarray(x, dtype=bool).reshape(n)

    flags = np.zeros(n, dtype=np.int64)
    if ae_active is not None:
        flags |= b(ae_active) * FLAG_AE
    flags |= b(meas.tapping) * FLAG_TAPPING
    flags |= b(meas.anode_change) * FLAG_ANODE_CHANGE
    flags |= (~meas.remote_mask()) * FLAG_LOCAL
    flags |= (~b(meas.cell_ok)) * FLAG_BAD_DATA
    flags |= b(meas.cut_out) * FLAG_CUT_OUT
    u = np.asarray(meas.cell_voltage_v, dtype=float).copy()
    u[~b(meas.cell_ok)] = np.nan
    line_ok = np.asarray(meas.line_ok, dtype=bool)
    phase = np.zeros(n, dtype=np.int64) if feed_phase is None else np.asarray(feed_phase, dtype=np.int64)
    return Snapshot(
        seq=seq, t=float(t), t_plant_s=float(meas.t_s), mode=mode, cell_voltage_v=u, flags=flags, feed_phase=phase,
        line_current_ka=np.where(line_ok, np.asarray(meas.line_current_ka, dtype=float), np.nan),
        line_voltage_v=np.where(line_ok, np.asarray(meas.line_voltage_v, dtype=float), np.nan),
        line_setpoint_ka=np.where(line_ok, np.asarray(meas.line_setpoint_ka, dtype=float), np.nan),
        line_ok=line_ok.copy(),
    )  # fmt: skip


def plant_info(layout: PlantLayout) -> dict[str, Any]:
    """The plant's shape for the HMI: lines, rooms and their cells (index, floor number, line)."""
    rooms = []
    for r, name in enumerate(layout.room_names):
        idx = layout.room_cells(r)
        rooms.append({"name": name, "cells": [{"index": int(k), "number": int(layout.cell_number[k]),
                                               "line": int(layout.cell_line[k])} for k in idx]})  # fmt: skip
    return {"plant": layout.plant, "lines": list(layout.line_names), "rooms": rooms, "n_cells": layout.n_cells}


@dataclass(frozen=True, slots=True)
class JournalQuery:
    """A journal browser request (every filter optional; newest first, ``limit`` rows)."""

    categories: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    room: str | None = None
    cell: int | None = None
    since: datetime | str | None = None
    until: datetime | str | None = None
    limit: int = 200


@runtime_checkable
class HmiSource(Protocol):
    """What the HMI needs from whoever runs it (the daemon, the demo, a rig, a test)."""

    @property
    def layout(self) -> PlantLayout:
        """The plant shown."""
        ...

    @property
    def alarms(self) -> AlarmManager:
        """The plant's alarms (read, acknowledged and shelved by the HMI)."""
        ...

    def snapshot(self) -> Snapshot | None:
        """The latest scan (None before the first)."""
        ...

    def now(self) -> float:
        """Plant time now [s] (the alarm manager's time base)."""
        ...

    def record_alarms(self, records: Sequence[AlarmRecord]) -> None:
        """Journal alarm changes made by operators (committed before this returns)."""
        ...

    async def history(self, tag: str, t0: float, t1: float, max_points: int | None = None) -> Series:
        """One tag over [t0, t1] [Unix s] (``History.query``)."""
        ...

    async def history_group(self, group: str, t0: float, t1: float, max_points: int | None = None) -> GroupSeries:
        """A whole group (a room's cells) over [t0, t1] (``History.query_group``)."""
        ...

    async def journal(self, query: JournalQuery) -> list[Event]:
        """Journal entries matching ``query``, newest first."""
        ...

    async def request_mode(self, mode: str, user: str, reason: str) -> str:
        """Switch the mode for ``user``; returns the previous mode. ``ValueError``: refused (journalled)."""
        ...

    def enter_sample(self, data: dict[str, Any], user: str) -> dict[str, Any]:
        """A bath sample entered by ``user`` (``potline.operator_inputs.sample_from_form``
        fields): journalled and given to the observer; returns what was taken.
        ``OperatorInputError``: bad fields (nothing taken); ``ValueError``: not available here."""
        ...


ModeHandler = Callable[[str, str, str], Awaitable[str]]
#: ``writer(data, user)`` -> the sample taken (``potline.operator_inputs.SampleIntake.enter``)
SampleWriter = Callable[[dict[str, Any], str], Any]


@dataclass
class LocalSource:
    """An ``HmiSource`` from real parts (the daemon's, the demo's, a rig's or a test's).

    Args:
        layout: the plant.
        alarms: the alarm manager (used from the event loop's thread only).
        clock: plant time now [s].
        history_path: the history file (read through its own read-only connection, in a thread).
        journal_path: the journal file (read through its own read-only connection, in a thread).
        alarm_writer: journals operator alarm changes (the daemon: ``JournalRecorder.append`` + commit).
        mode_handler: ``await handler(mode, user, reason)`` -> previous mode; None: mode changes refused.
        sample_writer: takes an operator's bath sample (the daemon: ``SampleIntake.enter`` at
            timeline now); None: sample entry refused.
        plan_status: the plan in force, its step and constraints and each line's grid shed
            (the daemon: ``PlanExecution.status``); None: no plans here.
    """

    layout: PlantLayout
    alarms: AlarmManager
    clock: Callable[[], float]
    history_path: Path | None = None
    journal_path: Path | None = None
    alarm_writer: Callable[[Sequence[AlarmRecord]], None] | None = None
    mode_handler: ModeHandler | None = None
    sample_writer: SampleWriter | None = None
    plan_status: Callable[[], dict[str, Any]] | None = None
    _snapshot: Snapshot | None = field(default=None, init=False)
    _history: History | None = field(default=None, init=False)
    _journal: Journal | None = field(default=None, init=False)

    def publish(self, snap: Snapshot) -> None:
        """The producer's latest scan."""
        self._snapshot = snap

    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    def now(self) -> float:
        return float(self.clock())

    def record_alarms(self, records: Sequence[AlarmRecord]) -> None:
        if records and self.alarm_writer is not None:
            self.alarm_writer(records)

    def _reader(self) -> History:
        from potline.history import History, HistoryError

        if self.history_path is None:
            raise HistoryError("no history configured")
        if self._history is None:
            self._history = History(self.history_path, readonly=True)
        return self._history

    async def history(self, tag: str, t0: float, t1: float, max_points: int | None = None) -> Series:
        def run() -> Series:
            h = self._reader()
            if not h.has(tag):
                h.refresh()
            return h.query(tag, t0, t1, max_points=max_points)

        return await asyncio.to_thread(run)

    async def history_group(self, group: str, t0: float, t1: float, max_points: int | None = None) -> GroupSeries:
        def run() -> GroupSeries:
            h = self._reader()
            if not h.has(group):
                h.refresh()
            return h.query_group(group, t0, t1, max_points=max_points)

        return await asyncio.to_thread(run)

    async def journal(self, query: JournalQuery) -> list[Event]:
        from potline.journal import Journal, JournalError

        if self.journal_path is None:
            raise JournalError("no journal configured")

        def run() -> list[Event]:
            if self._journal is None:
                self._journal = Journal(self.journal_path, readonly=True)  # type: ignore[arg-type]
            return self._journal.query(
                categories=list(query.categories) or None, kinds=list(query.kinds) or None, room=query.room,
                cell=query.cell, since=query.since, until=query.until, limit=query.limit, newest_first=True,
            )  # fmt: skip

        return await asyncio.to_thread(run)

    async def request_mode(self, mode: str, user: str, reason: str) -> str:
        if self.mode_handler is None:
            raise ValueError("mode changes are not available here")
        return await self.mode_handler(mode, user, reason)

    def enter_sample(self, data: dict[str, Any], user: str) -> dict[str, Any]:
        if self.sample_writer is None:
            raise ValueError("bath samples cannot be entered here")
        s = self.sample_writer(data, user)
        return {"room": s.room, "cell": s.cell, "values": dict(s.values), "sampled": s.t, "by": s.by}

    def close(self) -> None:
        """Close the readers."""
        if self._history is not None:
            self._history.close()
            self._history = None
        if self._journal is not None:
            self._journal.close()
            self._journal = None
