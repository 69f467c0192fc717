"""Shadow testing of a refining-pot controller before it is deployed.

Replays a prototype pot's logged measurements (``Recording``) and, without writing
anything anywhere:

1. runs the twin as a state observer on them (``refining.observer``), which
   calibrates ohmic resistance, heat loss and scrap grade and so converges on the pot;
2. runs the twin open loop with the configured parameters on the same inputs, to show
   where model and pot part (voltage, energy, purity prediction errors) and to flag
   parameters that are off the config;
3. steps the candidate controller on every logged scan, records what it would have
   commanded, compares that with what the pot was actually told, and checks every
   command against the safety limits;
4. predicts the candidate's whole cycle on the calibrated twin (a small ensemble of
   noise seeds) and judges it against the stated criteria: purity, energy, cycle
   length ended by impurity breakthrough, no unsafe command, a credible twin.

Everything here is pure computation on arrays: recording files are read and written
by ``refining.recording``, the report by ``potline.commands.shadow``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypedDict

import numpy as np

from refining import model as rf
from refining import observer as ob
from refining.config import RefiningConfig
from refining.controller import (
    Criterion,
    SafeCommandFilter,
    SafetyLimits,
    Verdict,
    VerdictCriteria,
    Violation,
    check_commands,
    judge,
    next_ramp_origin,
)

REQUIRED_COLUMNS = ("t_s", "current_a", "voltage_v", "temperature_c", "heater_kw")
OPTIONAL_COLUMNS = {
    "current_sp_a": None,  # default: the measured current
    "heater_sp_c": None,  # default: the config's setpoint
    "charge_kg": 0.0,
    "tap_kg": 0.0,
    "assay_fe_pct": math.nan,
    "assay_cu_pct": math.nan,
    "assay_si_pct": math.nan,
}
COLUMN_UNITS = {
    "t_s": "s since cycle start",
    "current_a": "A, mean over the interval ending at t_s",
    "voltage_v": "V, mean over the interval ending at t_s",
    "temperature_c": "°C at t_s",
    "heater_kw": "kW, mean over the interval ending at t_s",
    "current_sp_a": "A, setpoint issued at t_s",
    "heater_sp_c": "°C, setpoint issued at t_s",
    "charge_kg": "kg of scrap charged at t_s",
    "tap_kg": "kg of metal tapped at t_s",
    "assay_fe_pct": "% Fe in the metal tapped at t_s (blank: none)",
    "assay_cu_pct": "% Cu in the metal tapped at t_s",
    "assay_si_pct": "% Si in the metal tapped at t_s",
}
#: measurement columns whose blanks are held (last good value) where a value is needed
HELD_COLUMNS = ("current_a", "voltage_v", "temperature_c", "heater_kw")
#: an interval longer than this many median scan periods is a data gap (the run is segmented there)
GAP_FACTOR = 3.0


class RecordingError(ValueError):
    """A recording is unusable; the message names the file, column and row."""


@dataclass(frozen=True, slots=True)
class DataIssue:
    """A problem of the recording (never of the controller).

    Attributes:
        kind: ``gap`` (no rows for longer than the gap threshold), ``blank`` (empty cells
            of a measurement column), ``dropped_row`` (a row without a time),
            ``duplicate_time`` (a second row with the same time, dropped).
        column: the column concerned ("" for whole rows).
        t_s: where it starts [s since cycle start].
        count: rows or cells concerned (for a gap: 1).
        length_s: for a gap, its length [s]; else 0.
        message: one line for the report.
    """

    kind: str
    column: str
    t_s: float
    count: int
    message: str
    length_s: float = 0.0


@dataclass(slots=True)
class Recording:
    """A refining pot's log, one row per scan (see ``COLUMN_UNITS``).

    ``current_a``, ``heater_kw``, ``current_sp_a`` and ``heater_sp_c`` are finite (blanks
    held at the last good value and counted in ``issues``); ``voltage_v`` and
    ``temperature_c`` keep NaN where the file was blank (the observer skips those
    corrections; ``held`` gives them held). ``gap[j]`` marks the interval
    (t[j-1], t[j]] as a data gap; ``meta`` is what the file's header comments or
    sidecar say (``synthetic``, ``source``, ...); ``t0_utc`` the absolute time of
    t_s = 0 when the file had absolute timestamps.
    """

    t_s: np.ndarray
    current_a: np.ndarray
    voltage_v: np.ndarray
    temperature_c: np.ndarray
    heater_kw: np.ndarray
    current_sp_a: np.ndarray
    heater_sp_c: np.ndarray
    charge_kg: np.ndarray
    tap_kg: np.ndarray
    assay: np.ndarray  # [m, 3] mass fractions Fe, Cu, Si (NaN: none)
    source: str = "<memory>"
    gap: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    issues: list[DataIssue] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    t0_utc: str = ""
    blank_mask: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.gap.shape != self.t_s.shape:
            self.gap = np.zeros(self.t_s.shape, dtype=bool)

    @property
    def n(self) -> int:
        return int(self.t_s.shape[0])

    @property
    def period_s(self) -> float:
        """Median scan period [s]."""
        return float(np.median(np.diff(self.t_s))) if self.n > 1 else 0.0

    @property
    def synthetic(self) -> bool:
        """The file says it was made by a model, not logged on a pot."""
        return str(self.meta.get("synthetic", "")).strip().lower() in ("1", "true", "yes")

    @classmethod
    def from_columns(
        cls,
        cols: Mapping[str, Sequence[Any] | np.ndarray],
        source: str = "<memory>",
        heater_sp_default: float = 800.0,
        *,
        gap_s: float | None = None,
        meta: Mapping[str, str] | None = None,
        t0_utc: str = "",
    ) -> Recording:
        """Validate columns (name → 1-D sequence); errors name source, column and row.

        Tolerant of what historians produce: blank cells in a measurement column are
        counted and held (``issues``), rows without a time are dropped, a row repeating
        the previous time is dropped, intervals longer than ``gap_s`` (default
        ``GAP_FACTOR`` × the median period) are gaps. Refused (``RecordingError``): a
        missing required column, a column with no value at all, text that is not a
        number, time going backwards, values out of physical range. Rows are numbered
        as in a file with one header line (the first data row is row 2).
        """
        missing = [c for c in REQUIRED_COLUMNS if c not in cols]
        if missing:
            raise RecordingError(
                f"{source}: missing column(s) {', '.join(missing)}; required: "
                + ", ".join(f"{c} [{COLUMN_UNITS[c]}]" for c in REQUIRED_COLUMNS)
            )
        n0 = len(cols["t_s"])
        arr: dict[str, np.ndarray] = {}
        for name in list(REQUIRED_COLUMNS) + list(OPTIONAL_COLUMNS):
            if name not in cols:
                continue
            try:
                a = np.asarray(cols[name], dtype=np.float64)
            except (TypeError, ValueError):
                row = _first_non_numeric(cols[name])
                raise RecordingError(
                    f"{source}: column {name}, row {row}: not a number ({COLUMN_UNITS[name]})"
                ) from None
            if a.shape != (n0,):
                raise RecordingError(f"{source}: column {name} has {a.shape[0]} rows, t_s has {n0}")
            arr[name] = a
        issues: list[DataIssue] = []
        file_row = np.arange(n0) + 2
        keep = np.isfinite(arr["t_s"])
        if not keep.all():
            bad = np.flatnonzero(~keep)
            issues.append(
                DataIssue(
                    "dropped_row",
                    "t_s",
                    math.nan,
                    int(bad.size),
                    f"{bad.size} row(s) without a time dropped (first: row {int(file_row[bad[0]])})",
                )
            )
        t = arr["t_s"][keep]
        if t.size >= 2:
            dt = np.diff(t)
            back = np.flatnonzero(dt < 0)
            if back.size:
                i = int(back[0])
                rows = file_row[keep]
                raise RecordingError(
                    f"{source}: column t_s, row {int(rows[i + 1])}: time must increase ({t[i + 1]} after {t[i]})"
                )
            dup = np.flatnonzero(dt == 0)
            if dup.size:
                idx = np.flatnonzero(keep)
                keep[idx[dup + 1]] = False
                issues.append(
                    DataIssue(
                        "duplicate_time",
                        "t_s",
                        float(t[dup[0]]),
                        int(dup.size),
                        f"{dup.size} row(s) repeating the previous time dropped (first at day "
                        f"{t[dup[0]] / 86400:.2f}, row {int(file_row[idx[dup[0] + 1]])})",
                    )
                )
        rows = file_row[keep]
        arr = {k: v[keep] for k, v in arr.items()}
        n = int(keep.sum())
        if n < 3:
            raise RecordingError(f"{source}: needs at least 3 rows with a time, has {n}")
        t = arr["t_s"]
        blank_mask: dict[str, np.ndarray] = {}
        for name in REQUIRED_COLUMNS[1:]:
            a = arr[name]
            if np.isinf(a).any():
                i = int(np.flatnonzero(np.isinf(a))[0])
                raise RecordingError(f"{source}: column {name}, row {int(rows[i])}: not finite ({COLUMN_UNITS[name]})")
            blank = np.isnan(a)
            if blank.all():
                raise RecordingError(f"{source}: column {name}: no value in any row ({COLUMN_UNITS[name]})")
            if blank.any():
                blank_mask[name] = blank
                i = int(np.flatnonzero(blank)[0])
                issues.append(
                    DataIssue(
                        "blank",
                        name,
                        float(t[i]),
                        int(blank.sum()),
                        f"{name}: {int(blank.sum())} blank cell(s), first at day {t[i] / 86400:.2f}"
                        f" (row {int(rows[i])}); held at the last good value where a value is needed",
                    )
                )
        for name, lo in (("current_a", 0.0), ("heater_kw", 0.0)):
            bad = np.flatnonzero(arr[name] < lo - 1e-9)
            if bad.size:
                raise RecordingError(
                    f"{source}: column {name}, row {int(rows[bad[0]])}: must be ≥ {lo} ({arr[name][bad[0]]})"
                )
        bad = np.flatnonzero((arr["voltage_v"] < -1.0) | (arr["voltage_v"] > 60.0))
        if bad.size:
            raise RecordingError(
                f"{source}: column voltage_v, row {int(rows[bad[0]])}: {arr['voltage_v'][bad[0]]} V outside -1…60 V"
            )
        bad = np.flatnonzero((arr["temperature_c"] < 0.0) | (arr["temperature_c"] > 1500.0))
        if bad.size:
            raise RecordingError(
                f"{source}: column temperature_c, row {int(rows[bad[0]])}: "
                f"{arr['temperature_c'][bad[0]]} °C outside 0…1500 °C"
            )
        for name in ("charge_kg", "tap_kg"):
            if name in arr:
                a = np.nan_to_num(arr[name], nan=0.0)  # blank: no event
                bad = np.flatnonzero(a < 0)
                if bad.size:
                    raise RecordingError(f"{source}: column {name}, row {int(rows[bad[0]])}: must be ≥ 0 ({a[bad[0]]})")
                arr[name] = a
        assay = np.full((n, rf.N_EL), np.nan)
        for e, el in enumerate(("fe", "cu", "si")):
            key = f"assay_{el}_pct"
            if key in arr:
                a = arr[key]
                bad = np.flatnonzero(np.isfinite(a) & ((a < 0) | (a > 100)))
                if bad.size:
                    raise RecordingError(
                        f"{source}: column {key}, row {int(rows[bad[0]])}: {a[bad[0]]} outside 0…100 %"
                    )
                assay[:, e] = a / 100.0
        # gaps: intervals much longer than the usual scan period
        dt = np.diff(t)
        period = float(np.median(dt))
        limit = float(gap_s) if gap_s is not None else GAP_FACTOR * period
        gap = np.zeros(n, dtype=bool)
        gap[1:] = dt > limit
        for j in np.flatnonzero(gap):
            length = float(t[j] - t[j - 1])
            issues.append(
                DataIssue(
                    "gap",
                    "",
                    float(t[j - 1]),
                    1,
                    f"no data for {length / 86400:.2f} d from day {t[j - 1] / 86400:.2f} to day "
                    f"{t[j] / 86400:.2f} (rows {int(rows[j - 1])}-{int(rows[j])}; gap threshold {limit:.0f} s):"
                    f" the run is segmented there; the twin assumes the logged charge and tap schedule continued inside it",
                    length,
                )
            )
        cur = _hold(arr["current_a"])
        heater = _hold(arr["heater_kw"])
        sp = _hold(arr["current_sp_a"]) if "current_sp_a" in arr and np.isfinite(arr["current_sp_a"]).any() else cur
        hs = arr.get("heater_sp_c")
        hsp = _hold(hs) if hs is not None and np.isfinite(hs).any() else np.full(n, heater_sp_default)
        return cls(
            t_s=t,
            current_a=cur,
            voltage_v=arr["voltage_v"],
            temperature_c=arr["temperature_c"],
            heater_kw=heater,
            current_sp_a=sp,
            heater_sp_c=hsp,
            charge_kg=arr.get("charge_kg", np.zeros(n)),
            tap_kg=arr.get("tap_kg", np.zeros(n)),
            assay=assay,
            source=source,
            gap=gap,
            issues=issues,
            meta={str(k): str(v) for k, v in (meta or {}).items()},
            t0_utc=t0_utc,
            blank_mask=blank_mask,
        )

    def columns(self) -> dict[str, np.ndarray]:
        """The recording as columns (the file format); blank cells are NaN."""

        def raw(name: str, a: np.ndarray) -> np.ndarray:
            mask = self.blank_mask.get(name)
            return np.where(mask, np.nan, a) if mask is not None else a

        return {
            "t_s": self.t_s,
            "current_a": raw("current_a", self.current_a),
            "voltage_v": self.voltage_v,
            "temperature_c": self.temperature_c,
            "heater_kw": raw("heater_kw", self.heater_kw),
            "current_sp_a": self.current_sp_a,
            "heater_sp_c": self.heater_sp_c,
            "charge_kg": self.charge_kg,
            "tap_kg": self.tap_kg,
            "assay_fe_pct": self.assay[:, rf.FE] * 100.0,
            "assay_cu_pct": self.assay[:, rf.CU] * 100.0,
            "assay_si_pct": self.assay[:, rf.SI] * 100.0,
        }

    # ------------------------------------------------------------------ data problems

    def held(self, name: str) -> np.ndarray:
        """Column ``name`` with blanks held at the last good value (the first good value before it)."""
        return _hold(getattr(self, name))

    def segments(self) -> list[tuple[int, int]]:
        """Row ranges ``[start, stop)`` between data gaps."""
        cuts = [0, *np.flatnonzero(self.gap).tolist(), self.n]
        return [(a, b) for a, b in itertools.pairwise(cuts) if b > a]

    def candidate_time(self) -> np.ndarray:
        """Times a replayed candidate sees [s]: each gap shortened to one median period, so a
        controller is judged on contiguous data, not on a jump of its clock across a gap."""
        excess = np.where(self.gap, np.diff(self.t_s, prepend=self.t_s[0]) - self.period_s, 0.0)
        return self.t_s - np.cumsum(excess)

    def interval_s(self) -> np.ndarray:
        """Length of the interval ending at each row [s] (0 for the first row and for gaps)."""
        dt = np.diff(self.t_s, prepend=self.t_s[0])
        return np.where(self.gap, 0.0, dt)

    def bridged_events(self) -> tuple[np.ndarray, np.ndarray]:
        """Charges and taps [kg] for a model replay (observer, open loop, calibration): the logged
        ones, plus the ones the pot's schedule implies inside each gap, applied at the gap's start.

        A schedule is the median interval and mass of the logged events of a kind: events
        continue from the last one before the gap every interval, up to half an interval
        before the first one after it. With fewer than two logged events of a kind, the gap
        gets that kind's logged mass per A·h instead. The logged columns are not changed.
        """
        charge = self.charge_kg.copy()
        tap = self.tap_kg.copy()
        if not self.gap.any():
            return charge, tap
        ah_total = float(np.sum(self.current_a * self.interval_s())) / 3600.0
        for logged, out in ((self.charge_kg, charge), (self.tap_kg, tap)):
            ev = np.flatnonzero(logged > 0)
            times = self.t_s[ev]
            for j in np.flatnonzero(self.gap):
                ta, tb = float(self.t_s[j - 1]), float(self.t_s[j])
                if ev.size >= 2:
                    period = float(np.median(np.diff(times)))
                    mass = float(np.median(logged[ev]))
                    before = times[times <= ta]
                    after = times[times >= tb]
                    e0 = float(before[-1]) if before.size else ta
                    e1 = float(after[0]) if after.size else math.inf
                    k = np.arange(1, int((tb - e0) / max(period, 1e-9)) + 2)
                    at = e0 + k * period
                    n = int(np.sum((at > ta) & (at < tb) & (at < e1 - 0.5 * period)))
                    out[j - 1] += n * mass
                elif ah_total > 0:
                    gap_ah = float(self.current_a[j - 1]) * (tb - ta) / 3600.0
                    out[j - 1] += float(logged.sum()) / ah_total * gap_ah
        return charge, tap

    def data_warnings(self) -> list[str]:
        """One line per data problem, for the verdict (never counted against a candidate)."""
        out = []
        gaps = [i for i in self.issues if i.kind == "gap"]
        if gaps:
            total = sum(g.length_s for g in gaps) / 86400.0
            out.append(
                f"data: {len(gaps)} gap(s), {total:.2f} d without data; the run is segmented into"
                f" {len(self.segments())} part(s) and the candidate is not judged across a gap"
            )
        out.extend(f"data: {i.message}" for i in self.issues if i.kind != "gap")
        out.extend(f"data: {g.message}" for g in gaps)
        return out

    def meters(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Cumulative (DC kWh, heater kWh, tapped kg before the scan, scrap kg before the scan);
        gap intervals add no energy (unknown), blank voltages are held."""
        dt = self.interval_s()
        e_dc = np.cumsum(self.held("voltage_v") * self.current_a * dt) / 3.6e6
        e_aux = np.cumsum(self.heater_kw * dt) / 3600.0
        tapped = np.concatenate([[0.0], np.cumsum(self.tap_kg)[:-1]])
        charged = np.concatenate([[0.0], np.cumsum(self.charge_kg)[:-1]])
        return e_dc, e_aux, tapped, charged

    def readings_at(
        self,
        j: int,
        last_assay: np.ndarray,
        meters: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
        t_s: float | None = None,
        held: Mapping[str, np.ndarray] | None = None,
    ) -> rf.PotReadings:
        """What the pot's PLC/lab showed at scan ``j`` (one pot); ``meters`` from ``meters()``,
        ``t_s`` the time the candidate sees, ``held`` the held voltage/temperature columns."""
        tap_prev = self.tap_kg[j - 1] if j > 0 else 0.0
        e_dc, e_aux, tapped, charged = meters if meters is not None else self.meters()
        u = held["voltage_v"] if held is not None else self.held("voltage_v")
        tc = held["temperature_c"] if held is not None else self.held("temperature_c")

        def one(x: float) -> np.ndarray:
            return np.array([x], dtype=float)

        return rf.PotReadings(
            t_s=one(self.t_s[j] if t_s is None else t_s),
            current_a=one(self.current_a[j]),
            voltage_v=one(u[j]),
            temperature_c=one(tc[j]),
            heater_kw=one(self.heater_kw[j]),
            tap_kg=one(tap_prev),
            tapped_total_kg=one(tapped[j]),
            scrap_total_kg=one(charged[j]),
            assay_fe=one(last_assay[rf.FE]),
            assay_cu=one(last_assay[rf.CU]),
            assay_si=one(last_assay[rf.SI]),
            e_dc_kwh=one(e_dc[j]),
            e_aux_kwh=one(e_aux[j]),
            done=np.array([False]),
            end_reason=np.array([0]),
        )


def _hold(a: np.ndarray) -> np.ndarray:
    """Blanks (NaN) replaced by the last finite value; leading blanks by the first finite value."""
    a = np.asarray(a, dtype=float)
    ok = np.isfinite(a)
    if ok.all() or not ok.any():
        return a.copy()
    idx = np.where(ok, np.arange(a.size), 0)
    np.maximum.accumulate(idx, out=idx)
    out = a[idx]
    first = int(np.flatnonzero(ok)[0])
    out[:first] = a[first]
    return out


def _first_non_numeric(seq: Iterable[Any]) -> int:
    """File row (header = row 1) of the first value that is not a number."""
    for i, v in enumerate(seq):
        try:
            float(v)
        except (TypeError, ValueError):
            return i + 2
    return 2


# --------------------------------------------------------------------------- results


class PredictedCycle(TypedDict):
    """The candidate's predicted cycle, worst case over the ensemble members."""

    days_min: float
    days_max: float
    purity_min_pct: float
    purity_avg_pct: float  # mean over members
    dc_kwh_per_kg_max: float
    total_kwh_per_kg_max: float
    kg_per_day_mean: float
    ce_avg_mean: float
    u_avg_v_mean: float
    t_high_c_max: float  # [°C] (true temperature, not the noisy reading)
    t_low_c_min: float  # [°C]
    metal_max_kg: float  # largest cathode pool [kg]
    anode_max_kg: float  # largest anode alloy inventory [kg]
    tap_interval_max_h: float  # longest time without a tap [h]
    n_taps_min: int
    end_reasons: str  # comma-separated, sorted
    breakthrough_end: bool  # every member ended by impurity breakthrough (or a stop request)


@dataclass(slots=True)
class Mismatch:
    """A parameter the observer finds off the config."""

    parameter: str
    config: float
    estimate: float
    deviation_pct: float
    flagged: bool
    text: str


@dataclass(slots=True)
class Trajectory:
    """True state of every ensemble member at every control period of the predicted cycle.

    Arrays are ``[rows, n_members]`` (``t_s``: ``[rows]``); ``alive`` is False from the
    period a member's cycle ended.
    """

    t_s: np.ndarray
    temperature_c: np.ndarray
    metal_kg: np.ndarray
    anode_kg: np.ndarray
    min_batch_purity: np.ndarray
    tapped_kg: np.ndarray
    alive: np.ndarray
    end_s: np.ndarray  # [n_members] cycle end [s]


@dataclass(slots=True)
class ShadowResult:
    """Everything a shadow run found (arrays for plots, dicts for the JSON report)."""

    config_name: str
    candidate: str
    recording: Recording
    observer_out: np.ndarray  # [m, N_OUT]
    open_loop: dict[str, np.ndarray]  # u_v, t_c, heater_kw, pool_x [m,3], e_dc_kwh, e_aux_kwh
    prediction_errors: dict[str, float]
    mismatches: list[Mismatch]
    candidate_commands: np.ndarray  # [m, 5] as refining.model.INPUT_COLUMNS
    differences: list[dict[str, Any]]
    violations: list[Violation]  # replay and predicted cycle
    predicted: PredictedCycle  # candidate's predicted cycle (ensemble worst case)
    predicted_members: list[dict[str, float | str]]  # pots.summary() per member, end_reason a name
    predicted_series: dict[str, np.ndarray]  # one ensemble member over time
    recorded: dict[str, float]  # what the pot actually did
    calibrated_params: np.ndarray
    verdict: Verdict
    notes: list[str] = field(default_factory=list)
    trajectory: Trajectory | None = None

    @property
    def flagged(self) -> list[Mismatch]:
        return [m for m in self.mismatches if m.flagged]

    def to_dict(self) -> dict[str, Any]:
        """The JSON report body."""
        rec = self.recording
        return {
            "config": self.config_name,
            "candidate": self.candidate,
            "recording": {
                "source": rec.source,
                "rows": rec.n,
                "days": float(rec.t_s[-1] / 86400.0),
                "period_s": rec.period_s,
                "t0_utc": rec.t0_utc,
                "synthetic": rec.synthetic,
                "meta": dict(rec.meta),
                "segments": [
                    {
                        "start_day": float(rec.t_s[a] / 86400.0),
                        "end_day": float(rec.t_s[b - 1] / 86400.0),
                        "rows": b - a,
                    }
                    for a, b in rec.segments()
                ],
                "issues": [asdict(i) for i in rec.issues],
            },
            "verdict": self.verdict.to_dict(),
            "prediction_errors": self.prediction_errors,
            "mismatches": [asdict(m) for m in self.mismatches],
            "flagged": [m.parameter for m in self.flagged],
            "differences": self.differences,
            "violations": [asdict(v) for v in self.violations[:200]],
            "n_violations": len(self.violations),
            "predicted_cycle": self.predicted,
            "predicted_members": self.predicted_members,
            "recorded_cycle": self.recorded,
            "notes": self.notes,
        }


# --------------------------------------------------------------------------- pieces


def run_observer(
    cfg: RefiningConfig, rec: Recording, grade: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Observer over a recording. Returns (out ``[m, N_OUT]``, obs ``[N_OBS]``, calibrated params ``[N_PARAM]``).

    Blank voltages/temperatures skip their correction; gaps are bridged by the model
    (``refining.observer.observe``).
    """
    params = cfg.params(grade)[None, :]
    obs, p_obs = ob.init_observer(params)
    charge, tap = rec.bridged_events()
    state = cfg.initial_state()[None, :].copy()
    out = np.zeros((1, rec.n, ob.N_OUT))
    ob.observe(
        state,
        p_obs,
        obs,
        rec.t_s[None, :],
        rec.current_a[None, :],
        rec.voltage_v[None, :],
        rec.temperature_c[None, :],
        rec.heater_kw[None, :],
        charge[None, :],
        tap[None, :],
        rec.assay[None, :, :],
        rec.gap.astype(np.float64)[None, :],
        float(cfg.operation.dt_s),
        out,
    )
    cal = ob.calibrated_params(params, obs)[0]
    return out[0], obs[0], cal


def run_open_loop(cfg: RefiningConfig, rec: Recording, grade: str | None = None) -> dict[str, np.ndarray]:
    """The configured twin driven by the recording's current, heater setpoints and events, without
    correction (over a gap: the current before it)."""
    p = cfg.params(grade)
    for idx in (rf.P_NOISE_U, rf.P_NOISE_T, rf.P_NOISE_IF, rf.P_NOISE_SCRAP, rf.P_NOISE_ASSAY):
        p[idx] = 0.0
    # a replay must follow the pot whatever the model thinks of the limits
    p[rf.P_LIM : rf.P_LIM + rf.N_EL] = 1.0
    p[rf.P_PURITY_MIN] = 0.0
    p[rf.P_SLUDGE_MAX] = 1.0
    p[rf.P_T_MIN_C] = -1e9
    p[rf.P_T_MAX_C] = 1e9
    p[rf.P_RHO_MARGIN] = -1e9
    p[rf.P_MAX_S] = 1e12
    pots = rf.RefiningPots(p[None, :], cfg.initial_state()[None, :], rf.seed_streams(0, 1), dt_s=cfg.operation.dt_s)
    m = rec.n
    u = np.full(m, np.nan)
    t = np.full(m, np.nan)
    q = np.full(m, np.nan)
    pool = np.full((m, rf.N_EL), np.nan)
    e_dc = np.zeros(m)
    e_aux = np.zeros(m)
    x = np.empty(rf.N_EL)
    t[0] = pots.state[0, rf.S_T]
    u[0] = rec.voltage_v[0] if rec.current_a[0] <= 0 else np.nan
    rf.cathode_fractions(pots.state[0], x)
    pool[0] = x
    one = np.ones(1)
    charge, tap = rec.bridged_events()
    for j in range(1, m):
        dur = rec.t_s[j] - rec.t_s[j - 1]
        inp = rf.PotInputs(
            current_sp_a=one * (rec.current_a[j - 1] if rec.gap[j] else rec.current_a[j]),
            heater_sp_c=one * rec.heater_sp_c[j - 1],
            charge_kg=one * charge[j - 1],
            tap_kg=one * 0.0,
            stop=np.zeros(1),
        )
        if tap[j - 1] > 0:  # measured tap: remove exactly that mass
            ob._tap_exact(pots.state[0], float(tap[j - 1]))
        r = pots.advance(inp, dur)
        u[j] = r.voltage_v[0]
        t[j] = r.temperature_c[0]
        q[j] = r.heater_kw[0]
        e_dc[j] = r.e_dc_kwh[0]
        e_aux[j] = r.e_aux_kwh[0]
        rf.cathode_fractions(pots.state[0], x)
        pool[j] = x
    return {"u_v": u, "t_c": t, "heater_kw": q, "pool_x": pool, "e_dc_kwh": e_dc, "e_aux_kwh": e_aux}


def step_candidate(rec: Recording, candidate: rf.PotPolicy, limits: SafetyLimits) -> tuple[np.ndarray, list[Violation]]:
    """The candidate's command at every logged scan, and the unsafe ones among them.

    The candidate sees what the pot's PLC showed (never the twin), with blank
    measurements held at their last good value and each data gap shortened to one scan
    period (``Recording.candidate_time``), so it is judged on its own commands, not on
    the data's holes; nothing is written.
    """
    m = rec.n
    cmds = np.zeros((m, len(rf.INPUT_COLUMNS)))
    violations: list[Violation] = []
    last_assay = np.full(rf.N_EL, np.nan)
    prev_sp = np.array([rec.current_a[0]], dtype=float)
    t_c = rec.candidate_time()
    meters = rec.meters()
    held = {name: rec.held(name) for name in ("voltage_v", "temperature_c")}
    period0 = rec.period_s
    for j in range(m):
        if j > 0 and np.isfinite(rec.assay[j - 1]).any():
            last_assay = rec.assay[j - 1].copy()
        r = rec.readings_at(j, last_assay, meters, t_s=float(t_c[j]), held=held)
        c = candidate.step(r, float(t_c[j]))
        for i, name in enumerate(rf.INPUT_COLUMNS):
            try:
                cmds[j, i] = float(np.asarray(getattr(c, name), dtype=float).ravel()[0])
            except (TypeError, ValueError, IndexError):
                cmds[j, i] = np.nan
        period = t_c[j] - t_c[j - 1] if j > 0 else period0
        violations.extend(check_commands(c, prev_sp, limits, float(period), float(rec.t_s[j])))
        prev_sp = next_ramp_origin(prev_sp, c.current_sp_a)
    return cmds, violations


def compare_commands(rec: Recording, cmds: np.ndarray) -> list[dict[str, Any]]:
    """Where the candidate would have acted differently from what the pot was told."""
    days = rec.t_s / 86400.0
    out: list[dict[str, Any]] = []

    def row(what: str, recorded: float, cand: float, unit: str, detail: str = "") -> None:
        out.append(
            {
                "quantity": what,
                "recorded": round(float(recorded), 4),
                "candidate": round(float(cand), 4),
                "difference": round(float(cand - recorded), 4),
                "unit": unit,
                "detail": detail,
            }
        )

    sp_r, sp_c = rec.current_sp_a, cmds[:, 0]
    with np.errstate(invalid="ignore"):
        diff = np.abs(sp_c - sp_r)
        big = ~(diff <= 0.01 * max(1.0, float(np.max(sp_r))))
    first = f"first at day {days[np.argmax(big)]:.2f}" if big.any() else "never"
    n_bad = int((~np.isfinite(cmds[:, :4])).any(axis=1).sum())
    row(
        "mean current setpoint",
        sp_r.mean(),
        np.nanmean(sp_c) if np.isfinite(sp_c).any() else math.nan,
        "A",
        f"max |Δ| {np.nanmax(diff) if np.isfinite(diff).any() else math.nan:.0f} A; differs > 1 % (or not finite) on"
        f" {100 * big.mean():.1f} % of scans ({first})"
        + (f"; {n_bad} scan(s) with a non-finite command" if n_bad else ""),
    )
    row("max current setpoint", sp_r.max(), np.nanmax(sp_c) if np.isfinite(sp_c).any() else math.nan, "A")
    h_r, h_c = rec.heater_sp_c, cmds[:, 1]
    hd = np.abs(h_c - h_r)
    row(
        "mean heater setpoint",
        h_r.mean(),
        np.nanmean(h_c) if np.isfinite(h_c).any() else math.nan,
        "°C",
        f"max |Δ| {np.nanmax(hd) if np.isfinite(hd).any() else math.nan:.1f} K",
    )
    ch = cmds[:, 2]
    row(
        "scrap charged",
        rec.charge_kg.sum(),
        np.nansum(ch),
        "kg",
        f"{int((rec.charge_kg > 0).sum())} charges recorded, {int((ch > 0).sum())} by the candidate",
    )
    tp = cmds[:, 3]
    row(
        "metal tapped (requested)",
        rec.tap_kg.sum(),
        np.nansum(tp),
        "kg",
        f"{int((rec.tap_kg > 0).sum())} taps recorded, {int((tp > 0).sum())} by the candidate"
        + (f"; {int((tp < 0).sum())} negative tap request(s)" if (tp < 0).any() else ""),
    )
    stops = np.flatnonzero(cmds[:, 4] > 0.5)
    row(
        "stop request",
        days[-1],
        days[stops[0]] if stops.size else days[-1],
        "d",
        f"candidate would stop the cycle at day {days[stops[0]]:.2f}"
        if stops.size
        else "candidate never stops the cycle",
    )
    return out


def recorded_cycle(rec: Recording) -> dict[str, float]:
    """What the recorded pot achieved (from its own meters and weighings; gaps add no energy)."""
    e_dc_c, e_aux_c, _tapped, _charged = rec.meters()
    e_dc = float(e_dc_c[-1])
    e_aux = float(e_aux_c[-1])
    tapped = float(rec.tap_kg.sum())
    has = np.isfinite(rec.assay[:, rf.FE]) & (rec.tap_kg > 0)
    purity = 100.0 * (1.0 - np.nansum(rec.assay[has], axis=1))
    days = float(rec.t_s[-1] / 86400.0)
    gap_days = float(np.sum(np.diff(rec.t_s, prepend=rec.t_s[0])[rec.gap]) / 86400.0)
    dt = rec.interval_s()
    return {
        "days": days,
        "days_without_data": gap_days,
        "tapped_kg": tapped,
        "kg_per_day_tapped": tapped / days if days > 0 else math.nan,
        "dc_kwh_per_kg_tapped": e_dc / tapped if tapped > 0 else math.nan,
        "total_kwh_per_kg_tapped": (e_dc + e_aux) / tapped if tapped > 0 else math.nan,
        "purity_min_pct": float(purity.min()) if purity.size else math.nan,
        "purity_avg_pct": float(np.average(purity, weights=rec.tap_kg[has])) if purity.size else math.nan,
        "e_dc_kwh": e_dc,
        "e_aux_kwh": e_aux,
        "u_avg_v": float(np.sum(rec.held("voltage_v") * rec.current_a * dt) / max(np.sum(rec.current_a * dt), 1e-9)),
        "t_high_c": float(np.nanmax(rec.temperature_c)),
        "t_low_c": float(np.nanmin(rec.temperature_c)),
    }


class JudgedPolicy:
    """A candidate as it would run deployed: every raw command checked (``check_commands``,
    ``where="prediction"``) and then contained by the ``SafeCommandFilter`` before it
    reaches the (twin) pot.

    Args:
        inner: the candidate (``step(readings, now_s) -> PotInputs``).
        limits: the safety limits.
        period_s: its scan period [s].
        n: pots.
        heater_hold_c: heater setpoint the filter holds when the first one is not finite.
        max_kept: violations kept (all are counted in ``n_violations``).
    """

    def __init__(
        self, inner: rf.PotPolicy, limits: SafetyLimits, period_s: float, n: int, heater_hold_c: float,
        max_kept: int = 5000,
    ) -> None:  # fmt: skip
        self.inner = inner
        self.limits = limits
        self.period_s = float(period_s)
        self.filter = SafeCommandFilter(limits, period_s, n, heater_hold_c)
        self.violations: list[Violation] = []
        self.n_violations = 0
        self.max_kept = int(max_kept)
        self._prev: np.ndarray | None = None
        self._t_prev: float | None = None

    def step(self, readings: rf.PotReadings, now_s: float) -> rf.PotInputs:
        cmd = self.inner.step(readings, now_s)
        prev = np.array(readings.current_a, dtype=float) if self._prev is None else self._prev
        period = now_s - self._t_prev if self._t_prev is not None else self.period_s
        v = check_commands(cmd, prev, self.limits, period, now_s, where="prediction")
        self.n_violations += len(v)
        if len(self.violations) < self.max_kept:
            self.violations.extend(v[: self.max_kept - len(self.violations)])
        self._prev = next_ramp_origin(prev, cmd.current_sp_a)
        self._t_prev = now_s
        return self.filter.apply(cmd, readings.current_a)


def predict_cycle(
    cfg: RefiningConfig,
    params: np.ndarray,
    candidate_factory: Callable[[int], Any],
    n_members: int = 6,
    seed: int = 12345,
    max_days: float | None = None,
) -> tuple[PredictedCycle, list[dict[str, float | str]], dict[str, np.ndarray], Trajectory, list[Violation]]:
    """The candidate's whole cycle on the calibrated twin (an ensemble of noise seeds).

    The candidate runs as deployed (``JudgedPolicy``): its raw commands are checked and
    then contained by the safe-command filter; the pot's true temperature, metal and
    anode inventories and taps are recorded every control period.

    Returns:
        (worst case over members, each member's summary, member 0's time series, the
        members' trajectory, the unsafe commands found on the way).
    """
    n = int(n_members)
    p = np.tile(params, (n, 1))
    s = np.tile(cfg.initial_state(), (n, 1))
    pots = rf.RefiningPots(p, s, rf.seed_streams(seed, n), dt_s=cfg.operation.dt_s)
    judged = JudgedPolicy(
        candidate_factory(n),
        SafetyLimits.from_config(cfg),
        cfg.operation.control_period_s,
        n,
        cfg.operation.heater_setpoint_c,
    )
    rows: dict[str, list[np.ndarray]] = {k: [] for k in ("t", "T", "metal", "anode", "pur", "tap", "alive")}

    def sample(t: float, pp: rf.RefiningPots) -> None:
        st = pp.state
        rows["t"].append(np.array(t))
        rows["T"].append(st[:, rf.S_T].copy())
        rows["metal"].append(st[:, rf.S_M_C_AL] + st[:, rf.S_M_C : rf.S_M_C + rf.N_EL].sum(axis=1))
        rows["anode"].append(st[:, rf.S_M_A_AL] + st[:, rf.S_M_A : rf.S_M_A + rf.N_EL].sum(axis=1))
        rows["pur"].append(st[:, rf.S_MIN_BATCH_PURITY].copy())
        rows["tap"].append(st[:, rf.S_LAST_TAP_KG].copy())
        rows["alive"].append(~((st[:, rf.S_DONE] > 0.5) & (st[:, rf.S_T_END_S] < t - 1e-6)))

    sample(0.0, pots)
    rec = rf.run_closed_loop(
        pots, judged, cfg.operation.control_period_s, max_days=max_days, record=True, on_period=sample
    )
    summ = pots.summary()
    traj = Trajectory(
        t_s=np.asarray(rows["t"], dtype=float),
        temperature_c=np.asarray(rows["T"]),
        metal_kg=np.asarray(rows["metal"]),
        anode_kg=np.asarray(rows["anode"]),
        min_batch_purity=np.asarray(rows["pur"]),
        tapped_kg=np.asarray(rows["tap"]),
        alive=np.asarray(rows["alive"]),
        end_s=np.where(pots.state[:, rf.S_DONE] > 0.5, pots.state[:, rf.S_T_END_S], pots.state[:, rf.S_T_S]),
    )
    members: list[dict[str, float | str]] = []
    for k in range(n):
        d: dict[str, float | str] = {key: float(v[k]) for key, v in summ.items()}
        d["end_reason"] = rf.END_REASONS[int(summ["end_reason"][k])]
        members.append(d)
    reasons = [int(r) for r in summ["end_reason"]]
    intervals = _tap_intervals_h(traj)
    worst: PredictedCycle = {
        "days_min": float(summ["days"].min()),
        "days_max": float(summ["days"].max()),
        "purity_min_pct": float(summ["purity_min_pct"].min()),
        "purity_avg_pct": float(summ["purity_avg_pct"].mean()),
        "dc_kwh_per_kg_max": float(summ["dc_kwh_per_kg"].max()),
        "total_kwh_per_kg_max": float(summ["total_kwh_per_kg"].max()),
        "kg_per_day_mean": float(summ["kg_per_day"].mean()),
        "ce_avg_mean": float(summ["ce_avg"].mean()),
        "u_avg_v_mean": float(summ["u_avg_v"].mean()),
        "t_high_c_max": float(summ["t_high_c"].max()),
        "t_low_c_min": float(summ["t_low_c"].min()),
        "metal_max_kg": float(np.max(traj.metal_kg)),
        "anode_max_kg": float(np.max(traj.anode_kg)),
        "tap_interval_max_h": float(max(iv.max() for iv, _ in intervals)),
        "n_taps_min": int(summ["n_taps"].min()),
        "end_reasons": ",".join(sorted({rf.END_REASONS[r] for r in reasons})),
        "breakthrough_end": bool(all(r in rf.BREAKTHROUGH_REASONS or r == rf.END_STOP for r in reasons)),
    }
    r0 = rec.readings[0]
    alive = np.concatenate([[True], r0[:-1, rf.R_DONE] < 0.5])
    series = {
        "t_s": r0[alive, rf.R_T_S],
        "current_a": r0[alive, rf.R_I_A],
        "voltage_v": r0[alive, rf.R_U_V],
        "temperature_c": r0[alive, rf.R_T_C],
        "assay_fe": r0[alive, rf.R_ASSAY + rf.FE],
        "assay_si": r0[alive, rf.R_ASSAY + rf.SI],
        "heater_sp_c": rec.inputs[0][alive, 1],
    }
    return worst, members, series, traj, judged.violations


def _tap_intervals_h(traj: Trajectory) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per member: (intervals between taps [h] — cycle start to the first, ..., the last to the
    cycle end — and the time each interval starts [s])."""
    out = []
    for k in range(traj.end_s.shape[0]):
        taps = traj.t_s[(traj.tapped_kg[:, k] > 0) & traj.alive[:, k]]
        # a tap made at the start of an advance is seen at the period that ends it
        marks = np.concatenate([[0.0], taps, [traj.end_s[k]]])
        out.append((np.diff(marks) / 3600.0, marks[:-1]))
    return out


def _first_time(t_s: np.ndarray, mask: np.ndarray) -> float:
    """First time [s] where ``mask`` ([rows, members]) holds for any member (NaN: never)."""
    rows = np.flatnonzero(mask.any(axis=1))
    return float(t_s[rows[0]]) if rows.size else math.nan


def _day(t_s: float) -> str:
    return f"day {t_s / 86400.0:.2f}" if math.isfinite(t_s) else "—"


def process_criteria(
    cfg: RefiningConfig, predicted: PredictedCycle, traj: Trajectory, voltage_rms_pct: float
) -> list[Criterion]:
    """Process criteria over the predicted cycle: temperature against the safety limits, metal
    and anode inventories against the pot's capacity, the tapping schedule, purity against
    the target, energy, cycle length and how it ended, and the twin's credibility.

    Each failure names when it first happened (day of the cycle), the worst value and the limit.
    """
    lim = cfg.safety
    crit = cfg.verdict
    out: list[Criterion] = []
    alive = traj.alive
    T = np.where(alive, traj.temperature_c, np.nan)

    def c(name: str, value: float, limit: float, passed: bool, text: str, t_s: float, unit: str) -> None:
        out.append(
            Criterion(name, float(value), float(limit), bool(passed), text, t_s if not passed else math.nan, unit)
        )

    t_hi = float(np.nanmax(T))
    over = lim.temperature_max_c < T
    ts = _first_time(traj.t_s, over)
    c("temperature_max", t_hi, lim.temperature_max_c, not over.any(),
      f"predicted temperature {t_hi:.1f} °C (≤ {lim.temperature_max_c:g} °C)" if not over.any()
      else f"over-temperature: predicted {t_hi:.1f} °C > limit {lim.temperature_max_c:g} °C, first at {_day(ts)}",
      ts, "°C")  # fmt: skip
    t_lo = float(np.nanmin(T))
    under = lim.temperature_min_c > T
    ts = _first_time(traj.t_s, under)
    c("temperature_min", t_lo, lim.temperature_min_c, not under.any(),
      f"predicted lowest temperature {t_lo:.1f} °C (≥ {lim.temperature_min_c:g} °C)" if not under.any()
      else f"under-temperature: predicted {t_lo:.1f} °C < limit {lim.temperature_min_c:g} °C, first at {_day(ts)}",
      ts, "°C")  # fmt: skip
    for name, arr, limit, what in (
        ("metal_inventory", traj.metal_kg, lim.metal_inventory_max_kg, "cathode metal in the pot"),
        ("anode_inventory", traj.anode_kg, lim.anode_inventory_max_kg, "anode alloy in the pot"),
    ):
        a = np.where(alive, arr, np.nan)
        worst = float(np.nanmax(a))
        bad = a > limit
        ts = _first_time(traj.t_s, bad)
        c(name, worst, limit, not bad.any(),
          f"{what} at most {worst:.0f} kg (≤ {limit:g} kg)" if not bad.any()
          else f"{what}: {worst:.0f} kg > capacity {limit:g} kg, first over at {_day(ts)}", ts, "kg")  # fmt: skip
    intervals = _tap_intervals_h(traj)
    worst_iv, ts = 0.0, math.nan
    for iv, starts in intervals:
        if iv.size and iv.max() > worst_iv:
            worst_iv = float(iv.max())
        late = np.flatnonzero(iv > crit.tap_interval_max_h)
        if late.size:
            t_late = float(starts[late[0]] + crit.tap_interval_max_h * 3600.0)
            ts = t_late if not math.isfinite(ts) else min(ts, t_late)
    n_taps = predicted["n_taps_min"]
    ok = worst_iv <= crit.tap_interval_max_h
    c("tapping", worst_iv, crit.tap_interval_max_h, ok,
      f"longest time without a tap {worst_iv:.0f} h (≤ {crit.tap_interval_max_h:g} h; ≥ {n_taps} taps)" if ok
      else f"tapping: {worst_iv:.0f} h without a tap > {crit.tap_interval_max_h:g} h"
           f" ({n_taps} tap(s) in the worst member), first overdue at {_day(ts)}", ts, "h")  # fmt: skip
    pur = predicted["purity_min_pct"]
    low = traj.min_batch_purity * 100.0 < crit.purity_min_pct
    ts = _first_time(traj.t_s, low & alive) if low.any() else math.nan
    if not math.isfinite(ts) and not pur >= crit.purity_min_pct:
        ts = float(traj.end_s.min())
    c("purity", pur, crit.purity_min_pct, pur >= crit.purity_min_pct,
      f"worst batch purity {pur:.3f} % (≥ {crit.purity_min_pct:g} %)" if pur >= crit.purity_min_pct
      else f"purity: worst batch {pur:.3f} % < {crit.purity_min_pct:g} %, first at {_day(ts)}", ts, "%")  # fmt: skip
    e = predicted["dc_kwh_per_kg_max"]
    ok = e <= crit.energy_max_kwh_kg
    c("energy", e, crit.energy_max_kwh_kg, ok,
      f"DC energy {e:.2f} MWh/t (≤ {crit.energy_max_kwh_kg:g} MWh/t)" if ok
      else f"energy: DC {e:.2f} MWh/t > {crit.energy_max_kwh_kg:g} MWh/t over the cycle ending {_day(float(traj.end_s.max()))}",
      float(traj.end_s.max()), "kWh/kg")  # fmt: skip
    days = predicted["days_min"]
    bt = predicted["breakthrough_end"]
    ok = days >= crit.cycle_min_days and bt
    c("cycle_length", days, crit.cycle_min_days, ok,
      f"cycle {days:.1f} d (≥ {crit.cycle_min_days:g} d, ended by impurity breakthrough)" if ok
      else f"cycle: {days:.1f} d (limit ≥ {crit.cycle_min_days:g} d), ended by {predicted['end_reasons']}"
           + ("" if bt else " — not by impurity breakthrough"), float(traj.end_s.min()), "d")  # fmt: skip
    ok = voltage_rms_pct <= crit.voltage_rms_max_pct
    c("twin_credible", voltage_rms_pct, crit.voltage_rms_max_pct, ok,
      f"observer voltage residual {voltage_rms_pct:.2f} % RMS (≤ {crit.voltage_rms_max_pct:g} %)" if ok
      else f"twin not credible on this recording: observer voltage residual {voltage_rms_pct:.2f} % RMS"
           f" > {crit.voltage_rms_max_pct:g} %", math.nan, "%")  # fmt: skip
    return out


def find_mismatches(cfg: RefiningConfig, obs: np.ndarray, criteria: VerdictCriteria) -> list[Mismatch]:
    """Observer estimates against the config; flagged beyond ``mismatch_flag_pct``."""
    flag = criteria.mismatch_flag_pct
    g = cfg.grade()
    items = [
        (
            "ohmic_resistance",
            "ohmic resistance (electrolyte thickness/conductivity, contacts)",
            1.0,
            float(obs[ob.O_THETA_R]),
            "",
        ),
        (
            "heat_loss",
            "heat-loss coefficient",
            cfg.thermal.loss_w_k,
            cfg.thermal.loss_w_k * float(obs[ob.O_THETA_UA]),
            " W/K",
        ),
        ("scrap_fe", "Fe in the scrap charged", g.fe_pct, g.fe_pct * float(obs[ob.O_THETA_S + rf.FE]), " %"),
        ("scrap_si", "Si in the scrap charged", g.si_pct, g.si_pct * float(obs[ob.O_THETA_S + rf.SI]), " %"),
    ]
    out = []
    for key, label, conf, est, unit in items:
        dev = 100.0 * (est / conf - 1.0) if conf else 0.0
        flagged = abs(dev) > flag
        if key == "ohmic_resistance":
            text = f"{label}: {dev:+.1f} % vs config"
        else:
            text = f"{label}: estimated {est:.3g}{unit} vs config {conf:.3g}{unit} ({dev:+.1f} %)"
        out.append(Mismatch(key, conf, est, dev, flagged, text + (" — FLAGGED" if flagged else "")))
    return out


def prediction_errors(rec: Recording, out: np.ndarray, open_loop: dict[str, np.ndarray]) -> dict[str, float]:
    """Where twin and pot part: voltage, temperature, energy and purity errors (blank
    readings and gap intervals left out of every figure)."""
    m = rec.n
    u_meas = rec.voltage_v
    on = (rec.current_a > 0.05 * max(1.0, float(rec.current_a.max()))) & np.isfinite(u_meas) & ~rec.gap
    half = np.zeros(m, dtype=bool)
    half[m // 2 :] = True
    u_mean = float(np.mean(u_meas[on])) if on.any() else 1.0

    def rms(x: np.ndarray) -> float:
        x = x[np.isfinite(x)]
        return float(np.sqrt(np.mean(x**2))) if x.size else math.nan

    ol_u = open_loop["u_v"]
    res_ol = (ol_u - u_meas)[on & np.isfinite(ol_u)]
    res_ob = (out[:, ob.OUT_U_PRED] - u_meas)[on & half]
    res_ob_first = (out[:, ob.OUT_U_PRED] - u_meas)[on & ~half]
    dt = rec.interval_s()
    u_held = rec.held("voltage_v")
    e_meas = float(np.sum(u_held * rec.current_a * dt) / 3.6e6)
    aux_meas = float(np.sum(rec.heater_kw * dt) / 3600.0)
    no_gap = ~rec.gap
    e_ol = float(np.sum(np.diff(open_loop["e_dc_kwh"], prepend=0.0)[no_gap]))
    aux_ol = float(np.sum(np.diff(open_loop["e_aux_kwh"], prepend=0.0)[no_gap]))
    e_ob = float(out[-1, ob.OUT_E_DC_PRED_KWH])
    has = np.isfinite(rec.assay[:, rf.FE]) & (rec.tap_kg > 0)
    t_ok = np.isfinite(rec.temperature_c) & no_gap
    # open loop: pool composition at the tap instant (row j, before the tap applied in the next interval)
    res = {}
    for e, el in ((rf.FE, "fe"), (rf.SI, "si")):
        a = rec.assay[has, e] * 100.0
        ol = open_loop["pool_x"][has, e] * 100.0
        obp = out[has, ob.OUT_POOL_X + e] * 100.0
        second = np.zeros(a.size, dtype=bool)
        second[a.size // 2 :] = True
        res[f"{el}_open_loop_mae_pctpt"] = float(np.mean(np.abs(ol - a))) if a.size else math.nan
        res[f"{el}_observer_mae_pctpt"] = float(np.mean(np.abs(obp - a))) if a.size else math.nan
        res[f"{el}_observer_mae_2nd_half_pctpt"] = (
            float(np.mean(np.abs(obp[second] - a[second]))) if second.any() else math.nan
        )
    return {
        "voltage_open_loop_rms_pct": 100.0 * rms(res_ol) / u_mean,
        "voltage_open_loop_bias_pct": 100.0 * float(np.mean(res_ol)) / u_mean if res_ol.size else math.nan,
        "voltage_observer_rms_pct": 100.0 * rms(res_ob) / u_mean,
        "voltage_observer_rms_first_half_pct": 100.0 * rms(res_ob_first) / u_mean,
        "temperature_open_loop_rms_k": rms((open_loop["t_c"] - rec.temperature_c)[t_ok]),
        "temperature_observer_rms_k": rms((out[:, ob.OUT_T_PRED] - rec.temperature_c)[half & t_ok]),
        "dc_energy_open_loop_err_pct": 100.0 * (e_ol / e_meas - 1.0) if e_meas > 0 else math.nan,
        "dc_energy_observer_err_pct": 100.0 * (e_ob / e_meas - 1.0) if e_meas > 0 else math.nan,
        "aux_energy_open_loop_err_pct": 100.0 * (aux_ol / aux_meas - 1.0) if aux_meas > 0 else math.nan,
        "n_assays": int(has.sum()),
        **res,
    }


# --------------------------------------------------------------------------- runner


def run_shadow(
    cfg: RefiningConfig,
    rec: Recording,
    candidate_factory: Callable[[int], Any],
    candidate_name: str = "candidate",
    config_name: str = "",
    n_members: int = 6,
    grade: str | None = None,
) -> ShadowResult:
    """Shadow-test a candidate controller on a recorded refining cycle.

    Args:
        cfg: the pot's config (the twin's starting point; its ``[safety]`` and
            ``[verdict]`` sections are the limits and criteria).
        rec: the recording.
        candidate_factory: ``f(n_pots) -> policy`` giving a fresh controller instance
            (``step(PotReadings, now_s) -> PotInputs``).
        candidate_name: for the report.
        config_name: for the report (e.g. the file name).
        n_members: ensemble size of the cycle prediction.
        grade: scrap grade assumed by the twin (default: the config's).
    """
    limits = SafetyLimits.from_config(cfg)
    criteria = VerdictCriteria.from_config(cfg)
    out, obs, cal = run_observer(cfg, rec, grade)
    ol = run_open_loop(cfg, rec, grade)
    errs = prediction_errors(rec, out, ol)
    mism = find_mismatches(cfg, obs, criteria)
    cmds, viol = step_candidate(rec, candidate_factory(1), limits)
    diffs = compare_commands(rec, cmds)
    worst, members, series, traj, pred_viol = predict_cycle(cfg, cal, candidate_factory, n_members=n_members)
    violations = viol + pred_viol
    verdict = judge(
        process_criteria(cfg, worst, traj, errs["voltage_observer_rms_pct"]),
        violations,
        rec.data_warnings(),
    )
    notes = [
        "Shadow mode: nothing was written to any PLC; the candidate saw only the logged measurements.",
        "Every command was checked (finite, sign, bounds, ramp) on the recording and over the predicted cycle;"
        " the predicted cycle runs the candidate behind the safe-command filter, as deployed.",
        "Predicted cycle: the observer-calibrated twin run from the cycle start under the candidate, "
        f"{n_members} noise seeds, worst case reported.",
    ]
    if rec.issues:
        notes.append(
            "Data problems (gaps, blanks, dropped rows) are listed as data warnings; they are never counted"
            " against the candidate: blanks are held at the last good value for the candidate and skipped by"
            " the observer, gaps are bridged by the model and shortened to one scan for the candidate."
        )
    if rec.synthetic:
        notes.append(f"The recording says it is synthetic (made by a model): {rec.meta.get('source', '')}".rstrip(": "))
    if obs[ob.O_N_ASSAY] == 0:
        notes.append("No assays in the recording: purity predictions rest on the configured scrap grade.")
    return ShadowResult(
        config_name=config_name or cfg.pot.name,
        candidate=candidate_name,
        recording=rec,
        observer_out=out,
        open_loop=ol,
        prediction_errors=errs,
        mismatches=mism,
        candidate_commands=cmds,
        differences=diffs,
        violations=violations,
        predicted=worst,
        predicted_members=members,
        predicted_series=series,
        recorded=recorded_cycle(rec),
        calibrated_params=cal,
        verdict=verdict,
        notes=notes,
        trajectory=traj,
    )
