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

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypedDict

import numpy as np

from refining import model as rf
from refining import observer as ob
from refining.config import RefiningConfig
from refining.controller import (
    SafetyLimits,
    Verdict,
    VerdictCriteria,
    Violation,
    check_commands,
    judge,
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


class RecordingError(ValueError):
    """A recording is unusable; the message names the file, column and row."""


@dataclass(slots=True)
class Recording:
    """A refining pot's log, one row per scan (see ``COLUMN_UNITS``)."""

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

    @property
    def n(self) -> int:
        return int(self.t_s.shape[0])

    @classmethod
    def from_columns(
        cls, cols: Mapping[str, Sequence[Any] | np.ndarray], source: str = "<memory>", heater_sp_default: float = 800.0
    ) -> Recording:
        """Validate columns (name → 1-D sequence); errors name source, column and row.

        Rows are numbered as in a file with a header line (the first data row is row 2).
        """
        missing = [c for c in REQUIRED_COLUMNS if c not in cols]
        if missing:
            raise RecordingError(
                f"{source}: missing column(s) {', '.join(missing)}; required: "
                + ", ".join(f"{c} [{COLUMN_UNITS[c]}]" for c in REQUIRED_COLUMNS)
            )
        n = len(cols["t_s"])
        if n < 3:
            raise RecordingError(f"{source}: needs at least 3 rows, has {n}")
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
            if a.shape != (n,):
                raise RecordingError(f"{source}: column {name} has {a.shape[0]} rows, t_s has {n}")
            arr[name] = a
        for name in REQUIRED_COLUMNS:
            bad = np.flatnonzero(~np.isfinite(arr[name]))
            if bad.size:
                raise RecordingError(
                    f"{source}: column {name}, row {int(bad[0]) + 2}: missing or not finite ({COLUMN_UNITS[name]})"
                )
        dt = np.diff(arr["t_s"])
        bad = np.flatnonzero(dt <= 0)
        if bad.size:
            r = int(bad[0]) + 1
            raise RecordingError(
                f"{source}: column t_s, row {r + 2}: time must increase ({arr['t_s'][r]} after {arr['t_s'][r - 1]})"
            )
        for name, lo in (("current_a", 0.0), ("heater_kw", 0.0)):
            bad = np.flatnonzero(arr[name] < lo - 1e-9)
            if bad.size:
                raise RecordingError(
                    f"{source}: column {name}, row {int(bad[0]) + 2}: must be ≥ {lo} ({arr[name][bad[0]]})"
                )
        bad = np.flatnonzero((arr["voltage_v"] < -1.0) | (arr["voltage_v"] > 60.0))
        if bad.size:
            raise RecordingError(
                f"{source}: column voltage_v, row {int(bad[0]) + 2}: {arr['voltage_v'][bad[0]]} V outside -1…60 V"
            )
        for name in ("charge_kg", "tap_kg"):
            if name in arr:
                a = np.nan_to_num(arr[name], nan=0.0)
                bad = np.flatnonzero(a < 0)
                if bad.size:
                    raise RecordingError(f"{source}: column {name}, row {int(bad[0]) + 2}: must be ≥ 0")
                arr[name] = a
        assay = np.full((n, rf.N_EL), np.nan)
        for e, el in enumerate(("fe", "cu", "si")):
            key = f"assay_{el}_pct"
            if key in arr:
                a = arr[key]
                bad = np.flatnonzero(np.isfinite(a) & ((a < 0) | (a > 100)))
                if bad.size:
                    raise RecordingError(f"{source}: column {key}, row {int(bad[0]) + 2}: {a[bad[0]]} outside 0…100 %")
                assay[:, e] = a / 100.0
        return cls(
            t_s=arr["t_s"],
            current_a=arr["current_a"],
            voltage_v=arr["voltage_v"],
            temperature_c=arr["temperature_c"],
            heater_kw=arr["heater_kw"],
            current_sp_a=np.nan_to_num(arr.get("current_sp_a", arr["current_a"]), nan=0.0),
            heater_sp_c=np.nan_to_num(arr.get("heater_sp_c", np.full(n, heater_sp_default)), nan=heater_sp_default),
            charge_kg=arr.get("charge_kg", np.zeros(n)),
            tap_kg=arr.get("tap_kg", np.zeros(n)),
            assay=assay,
            source=source,
        )

    def columns(self) -> dict[str, np.ndarray]:
        """The recording as columns (the file format)."""
        return {
            "t_s": self.t_s,
            "current_a": self.current_a,
            "voltage_v": self.voltage_v,
            "temperature_c": self.temperature_c,
            "heater_kw": self.heater_kw,
            "current_sp_a": self.current_sp_a,
            "heater_sp_c": self.heater_sp_c,
            "charge_kg": self.charge_kg,
            "tap_kg": self.tap_kg,
            "assay_fe_pct": self.assay[:, rf.FE] * 100.0,
            "assay_cu_pct": self.assay[:, rf.CU] * 100.0,
            "assay_si_pct": self.assay[:, rf.SI] * 100.0,
        }

    def meters(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Cumulative (DC kWh, heater kWh, tapped kg before the scan, scrap kg before the scan)."""
        dt = np.diff(self.t_s, prepend=self.t_s[0])
        e_dc = np.cumsum(self.voltage_v * self.current_a * dt) / 3.6e6
        e_aux = np.cumsum(self.heater_kw * dt) / 3600.0
        tapped = np.concatenate([[0.0], np.cumsum(self.tap_kg)[:-1]])
        charged = np.concatenate([[0.0], np.cumsum(self.charge_kg)[:-1]])
        return e_dc, e_aux, tapped, charged

    def readings_at(
        self,
        j: int,
        last_assay: np.ndarray,
        meters: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> rf.PotReadings:
        """What the pot's PLC/lab showed at scan ``j`` (one pot); ``meters`` from ``meters()``."""
        tap_prev = self.tap_kg[j - 1] if j > 0 else 0.0
        e_dc, e_aux, tapped, charged = meters if meters is not None else self.meters()

        def one(x: float) -> np.ndarray:
            return np.array([x], dtype=float)

        return rf.PotReadings(
            t_s=one(self.t_s[j]),
            current_a=one(self.current_a[j]),
            voltage_v=one(self.voltage_v[j]),
            temperature_c=one(self.temperature_c[j]),
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
    t_high_c_max: float  # [°C]
    t_low_c_min: float  # [°C]
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
    violations: list[Violation]
    predicted: PredictedCycle  # candidate's predicted cycle (ensemble worst case)
    predicted_members: list[dict[str, float | str]]  # pots.summary() per member, end_reason a name
    predicted_series: dict[str, np.ndarray]  # one ensemble member over time
    recorded: dict[str, float]  # what the pot actually did
    calibrated_params: np.ndarray
    verdict: Verdict
    notes: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> list[Mismatch]:
        return [m for m in self.mismatches if m.flagged]

    def to_dict(self) -> dict[str, Any]:
        """The JSON report body."""
        return {
            "config": self.config_name,
            "candidate": self.candidate,
            "recording": {
                "source": self.recording.source,
                "rows": self.recording.n,
                "days": float(self.recording.t_s[-1] / 86400.0),
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
    """Observer over a recording. Returns (out ``[m, N_OUT]``, obs ``[N_OBS]``, calibrated params ``[N_PARAM]``)."""
    params = cfg.params(grade)[None, :]
    obs, p_obs = ob.init_observer(params)
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
        rec.charge_kg[None, :],
        rec.tap_kg[None, :],
        rec.assay[None, :, :],
        float(cfg.operation.dt_s),
        out,
    )
    cal = ob.calibrated_params(params, obs)[0]
    return out[0], obs[0], cal


def run_open_loop(cfg: RefiningConfig, rec: Recording, grade: str | None = None) -> dict[str, np.ndarray]:
    """The configured twin driven by the recording's current, heater setpoints and events, without correction."""
    p = cfg.params(grade)
    for idx in (rf.P_NOISE_U, rf.P_NOISE_T, rf.P_NOISE_IF, rf.P_NOISE_SCRAP, rf.P_NOISE_ASSAY):
        p[idx] = 0.0
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
    for j in range(1, m):
        dur = rec.t_s[j] - rec.t_s[j - 1]
        inp = rf.PotInputs(
            current_sp_a=one * rec.current_a[j],
            heater_sp_c=one * rec.heater_sp_c[j - 1],
            charge_kg=one * rec.charge_kg[j - 1],
            tap_kg=one * 0.0,
            stop=np.zeros(1),
        )
        if rec.tap_kg[j - 1] > 0:  # measured tap: remove exactly that mass
            ob._tap_exact(pots.state[0], float(rec.tap_kg[j - 1]))
        if pots.done[0]:  # the configured twin would have ended its cycle: keep it running
            pots.state[0, rf.S_DONE] = 0.0
            pots.state[0, rf.S_END_REASON] = 0.0
            pots.params[0, rf.P_MAX_S] = 1e12
        # a replay must follow the pot whatever the model thinks of the limits
        pots.params[0, rf.P_LIM : rf.P_LIM + rf.N_EL] = 1.0
        pots.params[0, rf.P_PURITY_MIN] = 0.0
        pots.params[0, rf.P_SLUDGE_MAX] = 1.0
        pots.params[0, rf.P_T_MIN_C] = -1e9
        pots.params[0, rf.P_T_MAX_C] = 1e9
        pots.params[0, rf.P_RHO_MARGIN] = -1e9
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

    The candidate sees what the pot's PLC showed (never the twin); nothing is written.
    """
    m = rec.n
    cmds = np.zeros((m, len(rf.INPUT_COLUMNS)))
    violations: list[Violation] = []
    last_assay = np.full(rf.N_EL, np.nan)
    prev_sp = np.array([rec.current_a[0]])
    prev_t = rec.t_s[0]
    meters = rec.meters()
    for j in range(m):
        if j > 0 and np.isfinite(rec.assay[j - 1]).any():
            last_assay = rec.assay[j - 1].copy()
        r = rec.readings_at(j, last_assay, meters)
        c = candidate.step(r, float(rec.t_s[j]))
        row = [c.current_sp_a[0], c.heater_sp_c[0], c.charge_kg[0], c.tap_kg[0], float(bool(c.stop[0]))]
        cmds[j] = row
        period = rec.t_s[j] - prev_t if j > 0 else (rec.t_s[1] - rec.t_s[0])
        violations.extend(check_commands(c, prev_sp, limits, float(period), float(rec.t_s[j])))
        prev_sp = np.array([c.current_sp_a[0]], dtype=float)
        prev_t = rec.t_s[j]
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
    diff = np.abs(sp_c - sp_r)
    big = diff > 0.01 * max(1.0, float(np.max(sp_r)))
    first = f"first at day {days[np.argmax(big)]:.2f}" if big.any() else "never"
    row(
        "mean current setpoint",
        sp_r.mean(),
        sp_c.mean(),
        "A",
        f"max |Δ| {diff.max():.0f} A; differs > 1 % on {100 * big.mean():.1f} % of scans ({first})",
    )
    row("max current setpoint", sp_r.max(), sp_c.max(), "A")
    h_r, h_c = rec.heater_sp_c, cmds[:, 1]
    hd = np.abs(h_c - h_r)
    row("mean heater setpoint", h_r.mean(), h_c.mean(), "°C", f"max |Δ| {hd.max():.1f} K")
    row(
        "scrap charged",
        rec.charge_kg.sum(),
        cmds[:, 2].sum(),
        "kg",
        f"{int((rec.charge_kg > 0).sum())} charges recorded, {int((cmds[:, 2] > 0).sum())} by the candidate",
    )
    row(
        "metal tapped (requested)",
        rec.tap_kg.sum(),
        cmds[:, 3].sum(),
        "kg",
        f"{int((rec.tap_kg > 0).sum())} taps recorded, {int((cmds[:, 3] > 0).sum())} by the candidate",
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
    """What the recorded pot achieved (from its own meters and weighings)."""
    dt = np.diff(rec.t_s, prepend=rec.t_s[0])
    e_dc = float(np.sum(rec.voltage_v * rec.current_a * dt) / 3.6e6)
    e_aux = float(np.sum(rec.heater_kw * dt) / 3600.0)
    tapped = float(rec.tap_kg.sum())
    has = np.isfinite(rec.assay[:, rf.FE]) & (rec.tap_kg > 0)
    purity = 100.0 * (1.0 - np.nansum(rec.assay[has], axis=1))
    days = float(rec.t_s[-1] / 86400.0)
    return {
        "days": days,
        "tapped_kg": tapped,
        "kg_per_day_tapped": tapped / days if days > 0 else math.nan,
        "dc_kwh_per_kg_tapped": e_dc / tapped if tapped > 0 else math.nan,
        "total_kwh_per_kg_tapped": (e_dc + e_aux) / tapped if tapped > 0 else math.nan,
        "purity_min_pct": float(purity.min()) if purity.size else math.nan,
        "purity_avg_pct": float(np.average(purity, weights=rec.tap_kg[has])) if purity.size else math.nan,
        "e_dc_kwh": e_dc,
        "e_aux_kwh": e_aux,
        "u_avg_v": float(np.sum(rec.voltage_v * rec.current_a * dt) / max(np.sum(rec.current_a * dt), 1e-9)),
    }


def predict_cycle(
    cfg: RefiningConfig,
    params: np.ndarray,
    candidate_factory: Callable[[int], Any],
    n_members: int = 6,
    seed: int = 12345,
    max_days: float | None = None,
) -> tuple[PredictedCycle, list[dict[str, float | str]], dict[str, np.ndarray]]:
    """The candidate's whole cycle on the calibrated twin (an ensemble of noise seeds).

    Returns:
        (worst case over members, each member's summary, member 0's time series).
    """
    n = int(n_members)
    p = np.tile(params, (n, 1))
    s = np.tile(cfg.initial_state(), (n, 1))
    pots = rf.RefiningPots(p, s, rf.seed_streams(seed, n), dt_s=cfg.operation.dt_s)
    rec = rf.run_closed_loop(pots, candidate_factory(n), cfg.operation.control_period_s, max_days=max_days, record=True)
    summ = pots.summary()
    members: list[dict[str, float | str]] = []
    for k in range(n):
        d: dict[str, float | str] = {key: float(v[k]) for key, v in summ.items()}
        d["end_reason"] = rf.END_REASONS[int(summ["end_reason"][k])]
        members.append(d)
    reasons = [int(r) for r in summ["end_reason"]]
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
    return worst, members, series


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
    """Where twin and pot part: voltage, temperature, energy and purity errors."""
    m = rec.n
    on = rec.current_a > 0.05 * max(1.0, float(rec.current_a.max()))
    half = np.zeros(m, dtype=bool)
    half[m // 2 :] = True
    u_mean = float(np.mean(rec.voltage_v[on])) if on.any() else 1.0

    def rms(x: np.ndarray) -> float:
        return float(np.sqrt(np.mean(x**2))) if x.size else math.nan

    ol_u = open_loop["u_v"]
    res_ol = (ol_u - rec.voltage_v)[on & np.isfinite(ol_u)]
    res_ob = (out[:, ob.OUT_U_PRED] - rec.voltage_v)[on & half]
    res_ob_first = (out[:, ob.OUT_U_PRED] - rec.voltage_v)[on & ~half]
    dt = np.diff(rec.t_s, prepend=rec.t_s[0])
    e_meas = float(np.sum(rec.voltage_v * rec.current_a * dt) / 3.6e6)
    aux_meas = float(np.sum(rec.heater_kw * dt) / 3600.0)
    e_ol = float(open_loop["e_dc_kwh"][-1])
    aux_ol = float(open_loop["e_aux_kwh"][-1])
    e_ob = float(out[-1, ob.OUT_E_DC_PRED_KWH])
    has = np.isfinite(rec.assay[:, rf.FE]) & (rec.tap_kg > 0)
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
        "temperature_open_loop_rms_k": rms((open_loop["t_c"] - rec.temperature_c)[np.isfinite(open_loop["t_c"])]),
        "temperature_observer_rms_k": rms((out[:, ob.OUT_T_PRED] - rec.temperature_c)[half]),
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
    worst, members, series = predict_cycle(cfg, cal, candidate_factory, n_members=n_members)
    verdict = judge(
        criteria,
        purity_min_pct=worst["purity_min_pct"],
        dc_kwh_per_kg=worst["dc_kwh_per_kg_max"],
        cycle_days=worst["days_min"],
        breakthrough_end=worst["breakthrough_end"],
        violations=viol,
        voltage_rms_pct=errs["voltage_observer_rms_pct"],
    )
    notes = [
        "Shadow mode: nothing was written to any PLC; the candidate saw only the logged measurements.",
        "Predicted cycle: the observer-calibrated twin run from the cycle start under the candidate, "
        f"{n_members} noise seeds, worst case reported.",
    ]
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
        violations=viol,
        predicted=worst,
        predicted_members=members,
        predicted_series=series,
        recorded=recorded_cycle(rec),
        calibrated_params=cal,
        verdict=verdict,
        notes=notes,
    )
