"""Shift and daily reports per potroom (HTML and CSV) from a journal file and, when present,
a history file.

Per room over a period: metal estimate [kg], DC energy [kWh] and kWh/kg, AE count,
AE frequency [AE/cell-day], AE-minutes and AEM [AE-min/cell-day], PFC by the IPCC 2006
Tier 2 slope (``potctl.pfc.tier2_emissions_per_t``: CF4, C2F6, CO2e), alarms raised by
priority, line setpoint changes, and the cells whose median voltage over the period lies
outside the band.

Where each figure comes from:

* journal: ``ae_start`` rows (AE count), ``ae_end`` rows (``data.duration_s``: AE-minutes
  of the AEs that *ended* in the period), ``alarm_raised`` rows (``data.priority``),
  ``setpoint_write`` rows of the room's line whose value differs from the line's
  previous one by ``SETPOINT_STEP_KA`` or more (rewrites of the same value are no change);
* history (``potline.history``): ``<Line>.LineCurrent`` and ``<Room>.CellVoltage``.
  Energy = sum over scans of I x sum of the room's cell voltages x dt; metal =
  0.33557 kg/(kA h) x CE (``PfcConfig.ce_assumed``) x I x cells in circuit (a good
  voltage above ``IN_CIRCUIT_V``) x dt. Each sample holds until the next (at most
  ``MAX_HOLD_SCANS`` median scan intervals; longer gaps count as no data: ``coverage``).
  Without history: no energy, metal, PFC mass nor band check (the report says so).

Time: a period is [start, end) on the *timeline*: the journal's wall time (``ts_order``)
for a daemon; when the ``daemon_start`` entry of a session carries ``data.timeline_t0``
(the demo: accelerated plant time), an entry with ``t_plant_s`` is placed at
``timeline_t0 + t_plant_s``, the same timeline the history is written on.

The daemon calls ``write_due_reports`` on schedule (see its docstring): once a minute is
plenty, in a thread (``await asyncio.to_thread(write_due_reports, journal_path,
history_path, out_dir, time.time())``); it writes the reports of the shifts and days that
ended and are not yet on disk, and never raises on bad data (it returns what it skipped).
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog
from pydantic import Field, field_validator

from potctl.pfc import AL_KG_PER_KAH, tier2_emissions_per_t
from twin.configcore import StrictModel

if TYPE_CHECKING:
    from potctl.config import PfcConfig
    from potline.journal import Event

__all__ = [
    "CSV_COLUMNS",
    "Period",
    "ReportSchedule",
    "RoomFigures",
    "ShiftReport",
    "ShiftReportError",
    "build_shift_report",
    "journal_start",
    "parse_period",
    "run_schedule",
    "write_due_reports",
    "write_shift_report",
]

log = structlog.get_logger("potline.shift_report")

#: a commanded line setpoint differing from the previous one by at least this is a change [kA]
SETPOINT_STEP_KA = 0.05
#: a cell with a good voltage above this is in circuit (cut-out cells read ~0 V) [V]
IN_CIRCUIT_V = 1.0
#: a sample holds for at most this many median scan intervals
MAX_HOLD_SCANS = 5.0
#: default band of the median cell voltage [V]
DEFAULT_BAND_V = (3.9, 4.8)
#: the CSV's columns (one row per room), units in the names
CSV_COLUMNS = (
    "period_start_utc", "period_end_utc", "room", "line", "cells", "coverage", "metal_kg", "energy_kwh",
    "kwh_per_kg", "ae_count", "ae_per_cell_day", "ae_minutes", "aem_min_per_cell_day", "cf4_kg", "c2f6_kg",
    "co2e_t", "alarms_critical", "alarms_high", "alarms_medium", "alarms_low", "setpoint_changes",
    "cells_out_of_band", "cells_out_of_band_list",
)  # fmt: skip


class ShiftReportError(ValueError):
    """A period, journal or history that cannot make a report (the message says which and why)."""


@dataclass(frozen=True, slots=True)
class Period:
    """[start, end) in UTC."""

    start: datetime
    end: datetime

    @property
    def t0(self) -> float:
        return self.start.timestamp()

    @property
    def t1(self) -> float:
        return self.end.timestamp()

    @property
    def days(self) -> float:
        return (self.t1 - self.t0) / 86400.0

    @property
    def label(self) -> str:
        """``20261204T0600Z-8h`` (file names)."""
        h = (self.t1 - self.t0) / 3600.0
        return f"{self.start.strftime('%Y%m%dT%H%MZ')}-{h:g}h"


_DUR = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")


def _dt(text: str, what: str) -> datetime:
    try:
        d = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ShiftReportError(f"{what}: expected an ISO date/time like 2026-12-04T06:00, got {text!r}") from None
    return d.replace(tzinfo=UTC) if d.tzinfo is None else d.astimezone(UTC)


def parse_period(text: str) -> Period:
    """``START/DURATION`` (``2026-12-04T06:00/8h``; units s, m, h, d) or ``START/END``
    (ISO); a time without zone is UTC."""
    if "/" not in text:
        raise ShiftReportError(f"period: expected START/DURATION (2026-12-04T06:00/8h) or START/END, got {text!r}")
    a, b = text.split("/", 1)
    start = _dt(a, "period start")
    m = _DUR.match(b)
    if m:
        n = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        end = start + timedelta(seconds=n)
    else:
        end = _dt(b, "period end")
    if not end > start:
        raise ShiftReportError(f"period {text!r}: the end must come after the start")
    return Period(start, end)


@dataclass
class RoomFigures:
    """One room over one period (units in the names; None: not known, see ``notes``)."""

    room: str
    line: str | None = None
    cells: int | None = None
    coverage: float | None = None
    metal_kg: float | None = None
    energy_kwh: float | None = None
    kwh_per_kg: float | None = None
    ae_count: int = 0
    ae_per_cell_day: float | None = None
    ae_minutes: float = 0.0
    aem_min_per_cell_day: float | None = None
    cf4_kg: float | None = None
    c2f6_kg: float | None = None
    co2e_t: float | None = None
    alarms: dict[str, int] = field(default_factory=lambda: {"critical": 0, "high": 0, "medium": 0, "low": 0})
    setpoint_changes: int = 0
    cells_out_of_band: list[tuple[int, float]] = field(default_factory=list)
    aes: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def csv_row(self, period: Period) -> dict[str, Any]:
        row: dict[str, Any] = {
            "period_start_utc": period.start.isoformat(), "period_end_utc": period.end.isoformat(),
            "room": self.room, "line": self.line, "cells": self.cells, "coverage": self.coverage,
            "metal_kg": self.metal_kg, "energy_kwh": self.energy_kwh, "kwh_per_kg": self.kwh_per_kg,
            "ae_count": self.ae_count, "ae_per_cell_day": self.ae_per_cell_day, "ae_minutes": self.ae_minutes,
            "aem_min_per_cell_day": self.aem_min_per_cell_day, "cf4_kg": self.cf4_kg, "c2f6_kg": self.c2f6_kg,
            "co2e_t": self.co2e_t, "setpoint_changes": self.setpoint_changes,
            "cells_out_of_band": len(self.cells_out_of_band),
            "cells_out_of_band_list": " ".join(f"{c}:{u:.3f}" for c, u in self.cells_out_of_band),
        }  # fmt: skip
        for p, n in self.alarms.items():
            row[f"alarms_{p}"] = n
        return row


@dataclass
class ShiftReport:
    """Every room of the plant over one period."""

    period: Period
    journal: Path
    history: Path | None
    band_v: tuple[float, float]
    rooms: dict[str, RoomFigures]
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- the journal


def _timeline(events: Sequence[Event]) -> list[tuple[float, Event]]:
    """(timeline time [Unix s], event) for each event (module docstring, Time)."""
    out = []
    t0: float | None = None
    for ev in events:
        if ev.kind == "daemon_start":
            v = (ev.data or {}).get("timeline_t0")
            t0 = float(v) if isinstance(v, (int, float)) else None
        if t0 is not None and ev.t_plant_s is not None:
            out.append((t0 + float(ev.t_plant_s), ev))
        else:
            stamp = ev.ts_order or ev.ts_utc
            out.append((datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp(), ev))
    return out


def _read_journal(path: Path, period: Period) -> list[tuple[float, Event]]:
    from potline.journal import Journal, JournalError

    if not path.exists():
        raise ShiftReportError(f"journal {path}: no such file")
    try:
        j = Journal(path, readonly=True)
    except JournalError as exc:
        raise ShiftReportError(f"journal {path}: {exc}") from None
    try:
        # wall-time margin: an accelerated session's timeline runs ahead of its wall time
        since = (period.start - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        until = (period.end + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        events = j.query(since=since, until=until)
    finally:
        j.close()
    return _timeline(events)


# ---------------------------------------------------------------------------- the history


def _hold_dt(t: np.ndarray, t0: float, t1: float) -> np.ndarray:
    """How long each sample holds within [t0, t1) [s] (to the next sample, capped)."""
    if t.size == 0:
        return np.zeros(0)
    d = np.diff(t)
    med = float(np.median(d)) if d.size else 0.0
    nxt = np.append(t[1:], t[-1] + med)
    hold = np.minimum(nxt - t, MAX_HOLD_SCANS * med) if med > 0 else np.zeros_like(t)
    return np.clip(np.minimum(t + hold, t1) - np.maximum(t, t0), 0.0, None)


def _history_figures(path: Path, period: Period, fig: dict[str, RoomFigures], band: tuple[float, float],
                     ce: float, notes: list[str]) -> None:  # fmt: skip
    from potline.history import History, HistoryError

    if not path.exists():
        raise ShiftReportError(f"history {path}: no such file")
    try:
        h = History(path, readonly=True)
    except (HistoryError, Exception) as exc:  # sqlite errors of a file that is no history
        raise ShiftReportError(f"history {path}: {exc}") from None
    try:
        groups = {g.name: g for g in h.groups()}
        lines = sorted(n[: -len(".LineCurrent")] for n in groups if n.endswith(".LineCurrent"))
        rooms = sorted(n[: -len(".CellVoltage")] for n in groups if n.endswith(".CellVoltage"))
        for room in rooms:
            rf = fig.setdefault(room, RoomFigures(room))
            rf.cells = len(groups[f"{room}.CellVoltage"].tags)
            if rf.line is None and len(lines) == 1:
                rf.line = lines[0]
            if rf.line is None or f"{rf.line}.LineCurrent" not in groups:
                rf.notes.append("no line known for this room: no energy or metal")
                continue
            span = (period.t0, math.nextafter(period.t1, -math.inf))
            cur = h.query_group(f"{rf.line}.LineCurrent", *span, max_points=1_000_000)
            vol = h.query_group(f"{room}.CellVoltage", *span, max_points=1_000_000)
            t, ia, ib = np.intersect1d(cur.t, vol.t, return_indices=True)
            if t.size == 0:
                rf.coverage = 0.0
                rf.notes.append("no history samples in the period")
                continue
            i_ka = cur.mean[ia, 0]
            u = vol.mean[ib, :]
            res = max(cur.resolution_s, vol.resolution_s)
            dt = np.full(t.size, float(res)) if res > 0 else _hold_dt(t, period.t0, period.t1)
            ok = np.isfinite(i_ka)
            good = np.isfinite(u)
            in_circ = good & (np.where(good, u, 0.0) > IN_CIRCUIT_V)
            u_sum = np.where(in_circ, u, 0.0).sum(axis=1)
            rf.coverage = float(dt[ok].sum() / (period.t1 - period.t0))
            rf.energy_kwh = float(np.sum(np.where(ok, i_ka * u_sum * dt, 0.0)) / 3600.0)
            kah = float(np.sum(np.where(ok, i_ka * in_circ.sum(axis=1) * dt, 0.0)) / 3600.0)
            rf.metal_kg = AL_KG_PER_KAH * ce * kah
            rf.kwh_per_kg = rf.energy_kwh / rf.metal_kg if rf.metal_kg > 0 else None
            if rf.coverage < 0.95:
                rf.notes.append(f"history covers {100 * rf.coverage:.0f} % of the period: energy and metal are low")
            with np.errstate(all="ignore"):
                med = (
                    np.nanmedian(np.where(in_circ, u, np.nan), axis=0) if in_circ.any() else np.full(u.shape[1], np.nan)
                )
            numbers = [int(tag.split(".")[1][4:]) for tag in vol.tags]
            rf.cells_out_of_band = [(numbers[k], float(med[k])) for k in range(len(numbers))
                                    if np.isfinite(med[k]) and not band[0] <= med[k] <= band[1]]  # fmt: skip
    finally:
        h.close()


# ---------------------------------------------------------------------------- the report


def build_shift_report(
    journal: str | Path,
    period: Period,
    history: str | Path | None = None,
    *,
    pfc: PfcConfig | None = None,
    band_v: tuple[float, float] = DEFAULT_BAND_V,
    cells_per_room: Mapping[str, int] | int | None = None,
) -> ShiftReport:
    """The figures of every room over ``period`` (module docstring).

    Args:
        journal: the daemon's (or the demo's) journal file.
        period: [start, end) on the timeline.
        history: the history file (energy, metal, PFC mass, band check); None: journal only.
        pfc: Tier 2 factors and the CE of the metal estimate (default ``PfcConfig()``).
        band_v: (low, high) of a cell's median voltage [V].
        cells_per_room: cells of each room (or of every room) when there is no history.

    Raises:
        ShiftReportError: the journal or history cannot be read (names the file).
    """
    from potctl.config import PfcConfig

    cfg = pfc or PfcConfig()
    jpath = Path(journal)
    events = _read_journal(jpath, period)
    fig: dict[str, RoomFigures] = {}
    notes: list[str] = []
    room_line: dict[str, str] = {}
    for _, ev in events:
        if ev.room and ev.line:
            room_line.setdefault(ev.room, ev.line)
    for room, line in room_line.items():
        fig.setdefault(room, RoomFigures(room, line=line))
    # setpoint changes per line (the previous value may come from before the period)
    last_sp: dict[str, float] = {}
    sp_changes: dict[str, int] = {}
    for t, ev in events:
        if t >= period.t1:
            break
        if ev.room and ev.room not in fig:
            fig[ev.room] = RoomFigures(ev.room, line=room_line.get(ev.room))
        if ev.kind == "setpoint_write" and ev.line and ev.value is not None:
            prev = last_sp.get(ev.line)
            last_sp[ev.line] = float(ev.value)
            changed = prev is None or abs(float(ev.value) - prev) >= SETPOINT_STEP_KA
            if t >= period.t0 and changed:
                sp_changes[ev.line] = sp_changes.get(ev.line, 0) + 1
        if t < period.t0 or not ev.room:
            continue
        rf = fig[ev.room]
        if ev.kind == "ae_start":
            rf.ae_count += 1
            rf.aes.append({"cell": ev.cell, "start": _iso(t), "voltage [V]": ev.value, "duration [s]": None})
        elif ev.kind == "ae_end":
            d = (ev.data or {}).get("duration_s")
            if isinstance(d, (int, float)) and math.isfinite(d):
                rf.ae_minutes += float(d) / 60.0
                for a in reversed(rf.aes):
                    if a["cell"] == ev.cell and a["duration [s]"] is None:
                        a["duration [s]"] = float(d)
                        break
        elif ev.kind == "alarm_raised":
            p = str((ev.data or {}).get("priority", ""))
            if p in rf.alarms:
                rf.alarms[p] += 1
    hpath = Path(history) if history is not None else None
    if hpath is not None:
        _history_figures(hpath, period, fig, band_v, cfg.ce_assumed, notes)
    else:
        notes.append("no history given: metal, energy, kWh/kg, PFC mass and the voltage band are not known")
    for rf in fig.values():
        if rf.line is not None:
            rf.setpoint_changes = sp_changes.get(rf.line, 0)
        if rf.cells is None and cells_per_room is not None:
            rf.cells = cells_per_room if isinstance(cells_per_room, int) else cells_per_room.get(rf.room)
        if rf.cells:
            cell_days = rf.cells * period.days
            rf.ae_per_cell_day = rf.ae_count / cell_days
            rf.aem_min_per_cell_day = rf.ae_minutes / cell_days
            if rf.metal_kg is not None:
                cf4, c2f6, co2e = tier2_emissions_per_t(rf.aem_min_per_cell_day, cfg)
                t_al = rf.metal_kg / 1000.0
                rf.cf4_kg, rf.c2f6_kg, rf.co2e_t = cf4 * t_al, c2f6 * t_al, co2e * t_al / 1000.0
        else:
            rf.notes.append("cells of the room unknown (no history, no --cells-per-room): no AE frequency or AEM")
    return ShiftReport(period, jpath, hpath, band_v, dict(sorted(fig.items())), notes)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


def write_shift_report(rep: ShiftReport, out: str | Path, title: str = "Shift report") -> tuple[Path, Path]:
    """Write ``<out>/shift-<label>.html`` and ``.csv`` (one row per room); returns (html, csv)."""
    from potline.report import Report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = out / f"shift-{rep.period.label}"
    csv_path = base.with_suffix(".csv")
    tmp = csv_path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS))
        w.writeheader()
        for rf in rep.rooms.values():
            w.writerow({k: ("" if v is None else v) for k, v in rf.csv_row(rep.period).items()})
    tmp.replace(csv_path)
    p = rep.period
    r = Report(f"{title}: {p.start.strftime('%Y-%m-%d %H:%M')} to {p.end.strftime('%Y-%m-%d %H:%M')} UTC",
               subtitle=f"journal {rep.journal}" + (f", history {rep.history}" if rep.history else ", no history"))  # fmt: skip
    s = r.section("Rooms")
    s.table([{
        "room": rf.room, "line": rf.line, "cells": rf.cells, "metal [kg]": rf.metal_kg, "energy [kWh]": rf.energy_kwh,
        "kWh/kg": rf.kwh_per_kg, "AEs": rf.ae_count, "AE/cell-day": rf.ae_per_cell_day, "AE-min": rf.ae_minutes,
        "AEM [min/cell-day]": rf.aem_min_per_cell_day, "CF4 [kg]": rf.cf4_kg, "C2F6 [kg]": rf.c2f6_kg,
        "CO2e [t]": rf.co2e_t, "setpoint changes": rf.setpoint_changes,
        "cells out of band": len(rf.cells_out_of_band), "history coverage": rf.coverage,
    } for rf in rep.rooms.values()], caption=(
        "Metal: 0.33557 kg/(kA h) x assumed CE x line current x cells in circuit; energy: line current x the room's "
        "cell voltages (DC); PFC: IPCC 2006 Tier 2 slope on the AE-minutes of AEs that ended in the period."))  # fmt: skip
    s = r.section("Alarms raised by priority")
    s.table([{"room": rf.room, **rf.alarms} for rf in rep.rooms.values()])
    s = r.section("Cells out of band")
    s.text(f"Median cell voltage over the period outside {rep.band_v[0]:g}–{rep.band_v[1]:g} V.")
    s.table(
        [{"room": rf.room, "cell": c, "median [V]": u} for rf in rep.rooms.values() for c, u in rf.cells_out_of_band]
    )
    s = r.section("Anode effects")
    s.table([{"room": rf.room, **a} for rf in rep.rooms.values() for a in rf.aes][:500])
    all_notes = rep.notes + [f"{rf.room}: {n}" for rf in rep.rooms.values() for n in rf.notes]
    if all_notes:
        r.section("Notes").bullets(all_notes)
    html = r.write(base.with_suffix(".html"), png_files=False)
    return html, csv_path


# ---------------------------------------------------------------------------- on schedule


class ReportSchedule(StrictModel):
    """The shift and daily reports a daemon writes on schedule (a ``[history.reports]`` table).

    Times are UTC hours of the timeline (fractions allowed: 6.5 = 06:30)."""

    enabled: bool = Field(True, description="write shift and daily reports on schedule")
    dir: Path = Field(Path("reports"), description="where (relative to the daemon's state_dir); days in daily/")
    shift_starts_h: list[float] = Field([6.0, 14.0, 22.0], min_length=1, description="shift starts [UTC h]")
    shift_hours: float = Field(8.0, gt=0.0, le=24.0, description="shift length [h]", json_schema_extra={"unit": "h"})
    daily: bool = Field(True, description="also one report per day")
    day_start_h: float = Field(6.0, ge=0.0, lt=24.0, description="start of the reporting day [UTC h]")
    back_days: int = Field(1, ge=0, le=31, description="catch up on periods that ended this many days back")
    check_every_s: float = Field(60.0, ge=1.0, le=3600.0, description="how often to look for due reports [wall s]",
                                 json_schema_extra={"unit": "s"})  # fmt: skip

    @field_validator("shift_starts_h")
    @classmethod
    def _hours(cls, v: list[float]) -> list[float]:
        bad = [h for h in v if not 0.0 <= h < 24.0]
        if bad:
            raise ValueError(f"expected UTC hours in 0 .. 24, got {bad}")
        return sorted(set(v))


def journal_start(journal: str | Path) -> float | None:
    """Wall time of the journal's first entry [Unix s] (None: empty or unreadable)."""
    import sqlite3

    try:
        db = sqlite3.connect(f"file:{Path(journal)}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT MIN(COALESCE(ts_order, ts_utc)) FROM events").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return None
    if not row or not row[0]:
        return None
    try:
        return _dt(str(row[0]), "journal start").timestamp()
    except ShiftReportError:
        return None


async def run_schedule(schedule: ReportSchedule, journal: str | Path, history: str | Path | None, out: str | Path,
                       now: Callable[[], float], *, pfc: PfcConfig | None = None) -> None:  # fmt: skip
    """The daemon's report task: every ``check_every_s`` [wall s], the due reports written
    in a worker thread (never on the control loop); periods that ended before the
    journal's first entry are not reported (there was no daemon). Runs until cancelled;
    never raises for a report that cannot be made (logged, and tried again next time)."""
    import asyncio

    first: float | None = None
    while True:
        await asyncio.sleep(schedule.check_every_s)
        try:
            if first is None:
                first = await asyncio.to_thread(journal_start, journal)
                if first is None:
                    continue
            await asyncio.to_thread(
                write_due_reports, journal, history, out, now(), shift_starts_h=schedule.shift_starts_h,
                shift_hours=schedule.shift_hours, day_start_h=schedule.day_start_h if schedule.daily else None,
                back_days=schedule.back_days, pfc=pfc, not_before=first,
            )  # fmt: skip
        except Exception:
            log.exception("shift_report.schedule_failed")


def _ends(now: float, hours: Sequence[float], length_h: float, back_days: int) -> Iterable[Period]:
    day0 = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    for d in range(back_days, -1, -1):
        for h in hours:
            start = day0 - timedelta(days=d) + timedelta(hours=h)
            end = start + timedelta(hours=length_h)
            if end.timestamp() <= now:
                yield Period(start, end)


def write_due_reports(
    journal: str | Path,
    history: str | Path | None,
    out: str | Path,
    now: float,
    *,
    shift_starts_h: Sequence[float] = (6, 14, 22),
    shift_hours: float = 8.0,
    day_start_h: float | None = 6,
    back_days: int = 1,
    pfc: PfcConfig | None = None,
    not_before: float | None = None,
) -> dict[str, list[str]]:
    """The daemon's scheduled reports: every shift (``shift_starts_h``, UTC hours, ``shift_hours``
    long) and day (from ``day_start_h``) that ended in the last ``back_days`` days and has no
    report in ``out`` yet is written (``shift-<label>.html/.csv``; days go to ``out/daily``).

    Call it from the daemon every minute or so, off the event loop::

        await asyncio.to_thread(write_due_reports, journal_path, history_path, report_dir, time.time())

    ``now`` is the timeline time [Unix s]; ``day_start_h`` None: no daily reports;
    periods that ended at or before ``not_before`` [Unix s] are left alone. Never raises for bad data: returns
    ``{"written": [...], "skipped": ["<label>: why", ...]}``.
    """
    done: dict[str, list[str]] = {"written": [], "skipped": []}
    out = Path(out)
    plans = [(p, out, "Shift report") for p in _ends(now, shift_starts_h, shift_hours, back_days)]
    if day_start_h is not None:
        plans += [(p, out / "daily", "Daily report") for p in _ends(now, [day_start_h], 24.0, back_days)]
    for period, where, title in plans:
        if not_before is not None and period.t1 <= not_before:
            continue
        if (where / f"shift-{period.label}.csv").exists():
            continue
        try:
            rep = build_shift_report(journal, period, history, pfc=pfc)
            html, _ = write_shift_report(rep, where, title=title)
            done["written"].append(str(html))
            log.info("shift_report.written", period=period.label, path=str(html))
        except (ShiftReportError, OSError) as exc:
            done["skipped"].append(f"{period.label}: {exc}")
            log.warning("shift_report.skipped", period=period.label, error=str(exc))
    return done


def as_dict(rep: ShiftReport) -> dict[str, Any]:
    """JSON-ready view of a report."""
    return {"period": [rep.period.start.isoformat(), rep.period.end.isoformat()], "journal": str(rep.journal),
            "history": str(rep.history) if rep.history else None, "band_v": list(rep.band_v),
            "rooms": {k: asdict(v) for k, v in rep.rooms.items()}, "notes": rep.notes}  # fmt: skip
