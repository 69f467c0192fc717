"""Operator inputs: bath samples and manual measurements, imported from CSV, validated,
journalled as ``bath_sample`` entries and handed to the alumina observer.

CSV format (UTF-8, comma separated, one header row; column names are case-insensitive,
every column but ``time``, ``room``, ``cell`` optional, but each row needs one value)::

    time,room,cell,alf3_excess_wt_pct,bath_temp_c,alumina_wt_pct,metal_height_cm,bath_height_cm,by,comment
    2026-12-04T07:15,Potroom1,17,11.2,962,2.4,,,olga,morning round

=========================== ======= ============================================ ===========
column                      unit    meaning                                      accepted
=========================== ======= ============================================ ===========
time                        ISO8601 when the sample was taken (UTC when no zone) any
room                        -       potroom name as in the config                known rooms
cell                        -       cell floor number in its room (1-based)      known cells
alf3_excess_wt_pct          wt %    excess AlF3 of the bath sample               0 .. 25
bath_temp_c                 °C      bath temperature (thermocouple dip)          900 .. 1050
alumina_wt_pct              wt %    dissolved alumina of the bath sample         0.5 .. 10
metal_height_cm             cm      metal pad height (manual measurement)        5 .. 60
bath_height_cm              cm      bath height (manual measurement)             5 .. 40
acd_cm                      cm      anode-cathode distance (manual measurement)  1 .. 10
by                          -       who took it (journalled as the user)         any
comment                     -       free text                                    any
=========================== ======= ============================================ ===========

Bad input is named: ``samples.csv line 7, column bath_temp_c: expected a number of °C in
900 .. 1050, got '9620'`` (line numbers count the header as line 1). ``read_csv`` collects
every issue; ``import_csv`` imports nothing when any row is bad (``skip_bad=True``: the
good rows, the issues still returned).

The observer: ``SampleBook`` keeps the latest value of every quantity per cell
(``measurements()``: [n_cells] arrays, NaN where none) and ``apply_to_observer`` folds a
sampled alumina into an ``twin.observer.AluminaObserver``-like filter (state ``x[:, 0]``
and covariance ``p``) as a Kalman measurement update with the sample's standard error
(``ALUMINA_SAMPLE_STD_WT_PCT``), correcting the alumina estimate and, through the
covariance, the ACD and consumption factor of that cell. The daemon calls it once per
import (``apply_to_observer(controller.observer, book.take_new())``).

In the daemon (``SampleIntake``): samples entered on the HMI's bath-sample form
(``sample_from_form``, operators only) and CSV files dropped into ``<state_dir>/inputs``
(``SampleIntake.import_folder``, polled off the control cycle every ``INPUT_POLL_S``) are
journalled (``bath_sample``, the user who entered it or the CSV's ``by``), kept in the
intake's ``SampleBook`` and folded into the daemon's observers at once. A file is taken
once it has not changed for ``INPUT_SETTLE_S``; imported it moves to ``inputs/imported``,
refused (any bad row: nothing of it is imported) to ``inputs/rejected`` with
``<name>.errors.txt`` beside it naming every bad line and column, and an
``operator_input_rejected`` journal entry.

The pot controller's bath chemistry and heat balance (``potctl.bath_chemistry``,
``potctl.heat_balance``) take the samples through ``PotController.bath_measurements``:
``SampleIntake.take`` passes each new sample (AlF3 excess, bath temperature, alumina, at
its plant time) to every object of ``observers()`` that has that hook, so the daemon
reaches its controller once it lists it there.

What the observer cannot take today (needs a change in ``twin/observer.py``, not made
here): bath temperature and AlF3 excess enter its voltage model only as one plant-wide
value (``ob[OB_T]``, ``ob[OB_ALF3]``); per-cell arrays in ``ekf_step`` would let a sample
correct that cell's voltage model. Metal and bath
heights and a measured ACD have no place in the filter yet.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog

from potline.drop_folder import move_into

if TYPE_CHECKING:
    from potline.journal import Journal
    from twin.layout import PlantLayout

__all__ = [
    "ALUMINA_SAMPLE_STD_WT_PCT",
    "QUANTITIES",
    "ImportResult",
    "OperatorInputError",
    "Sample",
    "SampleBook",
    "SampleIntake",
    "apply_to_observer",
    "import_csv",
    "journal_samples",
    "read_csv",
    "sample_from_form",
    "watch_folder",
]

log = structlog.get_logger("potline.operator_inputs")

#: quantity column -> (unit, low, high, what)
QUANTITIES: dict[str, tuple[str, float, float, str]] = {
    "alf3_excess_wt_pct": ("wt %", 0.0, 25.0, "excess AlF3"),
    "bath_temp_c": ("°C", 900.0, 1050.0, "bath temperature"),
    "alumina_wt_pct": ("wt %", 0.5, 10.0, "dissolved alumina"),
    "metal_height_cm": ("cm", 5.0, 60.0, "metal pad height"),
    "bath_height_cm": ("cm", 5.0, 40.0, "bath height"),
    "acd_cm": ("cm", 1.0, 10.0, "anode-cathode distance"),
}
REQUIRED = ("time", "room", "cell")
OPTIONAL = ("by", "comment")
#: how often the daemon looks into its inputs folder [wall s]; a file must be this long unchanged
INPUT_POLL_S, INPUT_SETTLE_S = 2.0, 1.0
#: 1-sigma error of a sampled alumina (sampling + XRD/LECO analysis) [wt %]
ALUMINA_SAMPLE_STD_WT_PCT = 0.15


class OperatorInputError(ValueError):
    """Operator input that cannot be used; ``issues`` lists every bad line and column."""

    def __init__(self, issues: Sequence[str]) -> None:
        self.issues = list(issues)
        more = f" (and {len(self.issues) - 10} more)" if len(self.issues) > 10 else ""
        super().__init__("; ".join(self.issues[:10]) + more)


@dataclass(frozen=True, slots=True)
class Sample:
    """One validated row: a bath sample and/or manual measurements of one cell.

    Attributes:
        t: when it was taken [Unix s, UTC]; room, cell: where (floor number, 1-based);
        index: the cell's layout index; values: quantity -> value (``QUANTITIES`` units);
        by, comment: who and why; line: the CSV line it came from.
    """

    t: float
    room: str
    cell: int
    index: int
    values: dict[str, float]
    by: str = ""
    comment: str = ""
    line: int = 0


@dataclass
class ImportResult:
    """``read_csv``'s answer: the good samples and one issue per bad line/column."""

    samples: list[Sample] = field(default_factory=list)
    issues: list[str] = field(default_factory=list)
    rows: int = 0


def _time(text: str) -> float:
    d = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return (d.replace(tzinfo=UTC) if d.tzinfo is None else d).timestamp()


def read_csv(path: str | Path, layout: PlantLayout) -> ImportResult:
    """Validate every row of an operator-input CSV against ``layout`` (module docstring)."""
    path = Path(path)
    res = ImportResult()
    where = {(layout.room_names[int(layout.cell_room[k])], int(layout.cell_number[k])): k
             for k in range(layout.n_cells)}  # fmt: skip
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise OperatorInputError([f"{path}: cannot read: {exc}"]) from None
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if not header:
        raise OperatorInputError([f"{path}: empty file, expected a header row ({', '.join(REQUIRED)}, ...)"])
    cols = [h.strip().lower() for h in header]
    known = set(REQUIRED) | set(OPTIONAL) | set(QUANTITIES)
    issues = [f"{path} line 1: unknown column {c!r} (known: {', '.join(sorted(known))})" for c in cols
              if c and c not in known]  # fmt: skip
    issues += [f"{path} line 1: missing column {c!r}" for c in REQUIRED if c not in cols]
    if not any(q in cols for q in QUANTITIES):
        issues.append(f"{path} line 1: no quantity column (one of {', '.join(QUANTITIES)})")
    if issues:
        raise OperatorInputError(issues)
    for n, raw in enumerate(reader, start=2):
        if not any(x.strip() for x in raw):
            continue
        res.rows += 1
        if len(raw) != len(cols):
            res.issues.append(f"{path} line {n}: {len(raw)} fields, expected {len(cols)} like the header")
            continue
        row = {c: v.strip() for c, v in zip(cols, raw, strict=True)}
        bad: list[str] = []
        t = math.nan
        try:
            t = _time(row["time"])
        except ValueError:
            bad.append(f"column time: expected an ISO-8601 time like 2026-12-04T07:15, got {row['time']!r}")
        room = row["room"]
        if room not in layout.room_names:
            bad.append(f"column room: expected one of {', '.join(layout.room_names)}, got {room!r}")
        cell = -1
        try:
            cell = int(row["cell"])
        except ValueError:
            bad.append(f"column cell: expected a cell number, got {row['cell']!r}")
        if room in layout.room_names and cell != -1 and (room, cell) not in where:
            nums = [c for (r, c) in where if r == room]
            bad.append(f"column cell: {room} has cells {min(nums)} .. {max(nums)}, got {cell}")
        values: dict[str, float] = {}
        for q, (unit, lo, hi, what) in QUANTITIES.items():
            v = row.get(q, "")
            if not v:
                continue
            try:
                x = float(v)
            except ValueError:
                x = math.nan
            if not (math.isfinite(x) and lo <= x <= hi):
                bad.append(f"column {q}: expected {what} in {unit}, {lo:g} .. {hi:g}, got {v!r}")
            else:
                values[q] = x
        if not values and not any(b.startswith("column " + q) for q in QUANTITIES for b in bad):
            bad.append(f"no value: give at least one of {', '.join(q for q in QUANTITIES if q in cols)}")
        if bad:
            res.issues += [f"{path} line {n}, {b}" if b.startswith("column") else f"{path} line {n}: {b}" for b in bad]
            continue
        res.samples.append(Sample(t, room, cell, where[(room, cell)], values, row.get("by", ""),
                                  row.get("comment", ""), n))  # fmt: skip
    return res


def journal_samples(journal: Journal, layout: PlantLayout, samples: Iterable[Sample], *, source: str = "csv",
                    user: str | None = None, t_plant_of: Any = None) -> int:  # fmt: skip
    """Append one ``bath_sample`` entry per sample and commit; returns how many.

    ``data`` holds the values (``QUANTITIES`` names and units), the sample time and the CSV
    line; ``value`` the alumina when sampled; ``t_plant_s`` ``t_plant_of(sample.t)`` when given.
    """
    n = 0
    for s in samples:
        line = layout.line_names[int(layout.cell_line[s.index])]
        txt = ", ".join(f"{QUANTITIES[q][3]} {v:g} {QUANTITIES[q][0]}" for q, v in s.values.items())
        journal.append(kind="bath_sample", category="control", plant=layout.plant, line=line, room=s.room,
                       cell=s.cell, source=source, user=s.by or user, value=s.values.get("alumina_wt_pct"),
                       t_plant_s=None if t_plant_of is None else float(t_plant_of(s.t)),
                       detail=f"sample {datetime.fromtimestamp(s.t, UTC):%Y-%m-%d %H:%M} UTC: {txt}"
                              + (f" ({s.comment})" if s.comment else ""),
                       data={"sampled_utc": datetime.fromtimestamp(s.t, UTC).isoformat(), "values": dict(s.values),
                             "csv_line": s.line, "comment": s.comment})  # fmt: skip
        n += 1
    journal.commit()
    return n


def import_csv(path: str | Path, layout: PlantLayout, journal: Journal | None = None, *, skip_bad: bool = False,
               user: str | None = None) -> ImportResult:  # fmt: skip
    """``read_csv``, then journal the samples. Raises ``OperatorInputError`` (nothing imported)
    when a row is bad, unless ``skip_bad`` (the good rows go in; ``issues`` says which did not)."""
    res = read_csv(path, layout)
    if res.issues and not skip_bad:
        raise OperatorInputError(res.issues)
    if journal is not None and res.samples:
        journal_samples(journal, layout, res.samples, source=f"csv:{Path(path).name}", user=user)
    return res


class SampleBook:
    """The latest value of every quantity per cell, and the samples not yet given to the observer."""

    def __init__(self, n_cells: int) -> None:
        self.n = int(n_cells)
        self._latest: dict[str, np.ndarray] = {q: np.full(self.n, np.nan) for q in QUANTITIES}
        self._when: dict[str, np.ndarray] = {q: np.full(self.n, -np.inf) for q in QUANTITIES}
        self._new: list[Sample] = []

    def add(self, samples: Iterable[Sample]) -> None:
        for s in sorted(samples, key=lambda s: s.t):
            for q, v in s.values.items():
                if s.t >= self._when[q][s.index]:
                    self._latest[q][s.index] = v
                    self._when[q][s.index] = s.t
            self._new.append(s)

    def measurements(self) -> dict[str, np.ndarray]:
        """Quantity -> [n_cells] latest value (NaN: never sampled); ``<q>_t`` the sample times [Unix s]."""
        out = {q: a.copy() for q, a in self._latest.items()}
        out.update({f"{q}_t": np.where(np.isfinite(a), a, np.nan) for q, a in self._when.items()})
        return out

    def take_new(self) -> list[Sample]:
        """The samples added since the last call (for ``apply_to_observer``)."""
        new, self._new = self._new, []
        return new


def apply_to_observer(observer: Any, samples: Iterable[Sample], std_wt_pct: float = ALUMINA_SAMPLE_STD_WT_PCT) -> int:
    """Fold each sampled alumina into the observer as a Kalman measurement update of its
    alumina state (``x[:, 0]``, covariance ``p``); returns the updates made (cells without
    an alumina value, or an observer without ``x``/``p``, are skipped).

    A sample is taken as a measurement *now* (a bath sample is analysed within the hour;
    the filter's alumina moves little in that time at nominal feed).
    """
    x = getattr(observer, "x", None)
    p = getattr(observer, "p", None)
    if x is None or p is None:
        return 0
    r = float(std_wt_pct) ** 2
    n = 0
    for s in samples:
        z = s.values.get("alumina_wt_pct")
        if z is None:
            continue
        k = s.index
        pk = p[k]
        s_var = pk[0, 0] + r
        gain = pk[:, 0] / s_var
        x[k] = x[k] + gain * (z - x[k, 0])
        p[k] = pk - np.outer(gain, pk[0, :])
        n += 1
    return n


def sample_from_form(layout: PlantLayout, data: Any, *, user: str, now: float) -> Sample:
    """One sample entered on the HMI's form: ``{"room", "cell", <quantity>: number | null,
    "time": ISO-8601 (optional: now), "comment"}``, ``user`` the logged-in operator.

    Raises ``OperatorInputError`` naming every bad field, the expected range and what came.
    """
    if not isinstance(data, dict):
        raise OperatorInputError(["expected a JSON object with room, cell and at least one quantity"])
    bad: list[str] = []
    room = str(data.get("room") or "")
    if room not in layout.room_names:
        bad.append(f"room: expected one of {', '.join(layout.room_names)}, got {room!r}")
    cell = -1
    raw_cell = data.get("cell")
    try:
        if isinstance(raw_cell, bool) or raw_cell is None:
            raise ValueError
        cell = int(raw_cell)
        if cell != float(raw_cell):
            raise ValueError
    except (TypeError, ValueError):
        bad.append(f"cell: expected a cell number, got {raw_cell!r}")
    index = -1
    if room in layout.room_names and cell != -1:
        hit = np.flatnonzero((np.asarray(layout.cell_room) == layout.room_names.index(room))
                             & (np.asarray(layout.cell_number) == cell))  # fmt: skip
        if hit.size:
            index = int(hit[0])
        else:
            nums = np.asarray(layout.cell_number)[np.asarray(layout.cell_room) == layout.room_names.index(room)]
            bad.append(f"cell: {room} has cells {int(nums.min())} .. {int(nums.max())}, got {cell}")
    values: dict[str, float] = {}
    for q, (unit, lo, hi, what) in QUANTITIES.items():
        v = data.get(q)
        if v is None or v == "":
            continue
        try:
            x = float(v) if not isinstance(v, bool) else math.nan
        except (TypeError, ValueError):
            x = math.nan
        if not (math.isfinite(x) and lo <= x <= hi):
            bad.append(f"{q}: expected {what} in {unit}, {lo:g} .. {hi:g}, got {v!r}")
        else:
            values[q] = x
    if not values and not bad:
        bad.append(f"no value: give at least one of {', '.join(QUANTITIES)}")
    t = float(now)
    if data.get("time"):
        try:
            t = _time(str(data["time"]))
        except ValueError:
            bad.append(f"time: expected an ISO-8601 time like 2026-12-04T07:15, got {data['time']!r}")
    if bad:
        raise OperatorInputError(bad)
    return Sample(t, room, cell, index, values, user, str(data.get("comment") or "")[:200], 0)


class SampleIntake:
    """The daemon's operator inputs: journalled, kept, folded into the observers (module docstring).

    Args:
        layout: the plant.
        journal: the daemon's journal now (None: not journalled).
        observers: the observers to correct now (``apply_to_observer``).
        t_plant_of: timeline time [Unix s] -> plant time [s] (for the journal's ``t_plant_s``).
    """

    def __init__(self, layout: PlantLayout, journal: Any, observers: Any, t_plant_of: Any = None) -> None:
        self.layout = layout
        self._journal = journal
        self._observers = observers
        self._t_plant_of = t_plant_of
        self.book = SampleBook(layout.n_cells)
        #: observer updates made so far (alumina samples x observers)
        self.updates = 0

    def take(self, samples: Sequence[Sample], *, source: str, user: str | None = None) -> int:
        """Journal ``samples``, keep them and correct the observers; returns the observer updates."""
        j = self._journal()
        if j is not None and samples:
            journal_samples(j, self.layout, samples, source=source, user=user, t_plant_of=self._t_plant_of)
        self.book.add(samples)
        new = self.book.take_new()
        n = 0
        for obs in self._observers():
            if obs is not None:
                n += apply_to_observer(obs, new)
            if obs is not None and hasattr(obs, "bath_measurements"):  # a PotController: bath/heat control
                for smp in new:
                    one = {q: np.where(np.arange(self.layout.n_cells) == smp.index, smp.values.get(k, np.nan), np.nan)
                           for q, k in (("alf3_wt_pct", "alf3_excess_wt_pct"), ("bath_temp_c", "bath_temp_c"),
                                        ("alumina_wt_pct", "alumina_wt_pct"))}  # fmt: skip
                    obs.bath_measurements(self._t_plant_of(smp.t) if self._t_plant_of else smp.t, **one)
        self.updates += n
        log.info("operator_inputs.taken", source=source, samples=len(samples), observer_updates=n)
        return n

    def enter(self, data: Any, user: str, now: float) -> Sample:
        """A sample from the HMI's form (``sample_from_form``), taken; ``OperatorInputError`` if bad."""
        s = sample_from_form(self.layout, data, user=user, now=now)
        self.take([s], source="hmi", user=user)
        return s

    def import_folder(self, folder: str | Path, *, settle_s: float = INPUT_SETTLE_S,
                      wall: Any = time.time) -> list[tuple[str, int, list[str]]]:  # fmt: skip
        """Import every settled ``*.csv`` in ``folder`` (oldest first); returns
        (file name, samples imported, issues) per file. Never raises for a bad file."""
        folder = Path(folder)
        done: list[tuple[str, int, list[str]]] = []
        try:
            files = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".csv"),
                           key=lambda p: p.stat().st_mtime)  # fmt: skip
        except OSError as exc:
            log.error("operator_inputs.folder_unreadable", folder=str(folder), error=str(exc))
            return done
        for f in files:
            try:
                if wall() - f.stat().st_mtime < settle_s:
                    continue  # still being written
                try:
                    res = read_csv(f, self.layout)
                    issues = list(res.issues)
                except OperatorInputError as exc:
                    res, issues = ImportResult(), list(exc.issues)
                if issues:
                    dest = move_into(f, folder / "rejected")
                    dest.with_name(dest.name + ".errors.txt").write_text("\n".join(issues) + "\n", encoding="utf-8")
                    j = self._journal()
                    if j is not None:
                        j.append(kind="operator_input_rejected", category="control", plant=self.layout.plant,
                                 source=f"csv:{f.name}", detail=f"{f.name} refused, nothing imported: {issues[0]}"
                                 + (f" (and {len(issues) - 1} more)" if len(issues) > 1 else ""),
                                 data={"file": f.name, "issues": issues[:50]})  # fmt: skip
                        j.commit()
                    log.error("operator_inputs.rejected", file=f.name, issues=issues[:10])
                    done.append((f.name, 0, issues))
                    continue
                self.take(res.samples, source=f"csv:{f.name}")
                move_into(f, folder / "imported")
                log.info("operator_inputs.imported", file=f.name, samples=len(res.samples))
                done.append((f.name, len(res.samples), []))
            except Exception as exc:  # a daemon never stops for a file
                log.exception("operator_inputs.import_failed", file=f.name)
                done.append((f.name, 0, [f"{f.name}: {type(exc).__name__}: {exc}"]))
        return done


async def watch_folder(intake: SampleIntake, folder: str | Path, every_s: float = INPUT_POLL_S) -> None:
    """The daemon's inputs task: every ``every_s`` [wall s] the settled CSV files in
    ``folder`` are imported (``SampleIntake.import_folder``, on the loop's thread between
    cycles: the observers are only touched there). Runs until cancelled."""
    import asyncio

    while True:
        await asyncio.sleep(every_s)
        try:
            intake.import_folder(folder)
        except Exception:
            log.exception("operator_inputs.watch_failed", folder=str(folder))
