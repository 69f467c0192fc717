"""Controllers for scrap-refining pots, their safety limits and a deployment verdict.

A policy is pure and synchronous (sans-I/O): ``step(readings, now_s) -> PotInputs``,
vectorised over pots (one array element per pot, elementwise arithmetic only, so a
pot's commands do not depend on which other pots run beside it). It sees only what a
refining pot's PLC and lab expose (``refining.model.PotReadings``): current, voltage,
temperature, heater power, weighed taps and charges, assays of tapped metal.

``RefiningPolicy`` is one parametrised family (``PolicyParams``) covering the setpoint
policies used in campaigns and as shadow candidates: current target and ramp, heater
setpoint with an optional Fe-assay temperature trim (hotter alloy dissolves more Fe and
delays saturation), tap and charge schedules sized from Faraday's law, optional stop
on an assay, and — for testing the safety net — a deliberate current step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from refining.model import FARADAY_KG_PER_KAH, PotInputs, PotReadings

if TYPE_CHECKING:
    from refining.config import RefiningConfig

__all__ = [
    "Criterion",
    "PolicyParams",
    "RefiningPolicy",
    "SafeCommandFilter",
    "SafetyLimits",
    "Verdict",
    "VerdictCriteria",
    "Violation",
    "check_commands",
    "judge",
    "policy_presets",
]


@dataclass(frozen=True, slots=True)
class PolicyParams:
    """Setpoints and schedule of one refining policy (units in the names).

    Attributes:
        name: preset name (reports, campaign results).
        current_a: target current.
        ramp_a_per_h: how fast the current setpoint moves toward the target.
        heater_c: auxiliary-heater setpoint.
        tap_every_h / charge_every_h: schedule of taps and scrap charges.
        ce_guess: current efficiency assumed when sizing taps and charges from ∫I dt.
        impurity_guess: impurity share of the scrap assumed when sizing charges.
        fe_trim_k_per_0p01pct: heater trim per 0.01 % of Fe in the last assay above
            ``fe_trim_from_pct`` (0: no trim), capped at ``heater_trim_max_k``.
        stop_fe_pct / stop_si_pct: end the cycle when an assay reaches this (inf: never).
        step_at_h / step_current_a: jump the current setpoint to ``step_current_a`` at
            ``step_at_h`` with no ramp (NaN: never) — an unsafe policy for testing.
    """

    name: str = "nominal"
    current_a: float = 3000.0
    ramp_a_per_h: float = 250.0
    heater_c: float = 800.0
    tap_every_h: float = 48.0
    charge_every_h: float = 12.0
    ce_guess: float = 0.95
    impurity_guess: float = 0.03
    fe_trim_k_per_0p01pct: float = 0.0
    fe_trim_from_pct: float = 0.02
    heater_trim_max_k: float = 40.0
    stop_fe_pct: float = math.inf
    stop_si_pct: float = math.inf
    step_at_h: float = math.nan
    step_current_a: float = math.nan

    def with_(self, **changes: Any) -> PolicyParams:
        """A copy with some fields changed."""
        return replace(self, **changes)


_NUMERIC = [f.name for f in fields(PolicyParams) if f.name != "name"]


def policy_presets(cfg: RefiningConfig) -> dict[str, PolicyParams]:
    """Named policies for a refining config (``refining.config.RefiningConfig``).

    nominal (the config's operation section), high_current (+10 %), low_current
    (−15 %), hot_trim (heater +2 K per 0.01 % Fe above 0.02 % in the assays, ≤ +40 K),
    cautious_stop (ends the cycle when an assay reaches 80 % of the Fe/Si limits),
    unsafe_step (current jumps to +30 % after one day) and unsafe_ramp (start-up ramp
    ten times the safety limit) — the last two exist to test the safety verdict.
    """
    op = cfg.operation
    g = cfg.grade()
    base = PolicyParams(
        name="nominal",
        current_a=op.current_a,
        ramp_a_per_h=op.startup_ramp_a_per_h,
        heater_c=op.heater_setpoint_c,
        tap_every_h=op.tap_every_h,
        charge_every_h=op.charge_every_h,
        impurity_guess=(g.fe_pct + g.cu_pct + g.si_pct) / 100.0,
    )
    return {
        "nominal": base,
        "high_current": base.with_(name="high_current", current_a=op.current_a * 1.10),
        "low_current": base.with_(name="low_current", current_a=op.current_a * 0.85),
        "hot_trim": base.with_(
            name="hot_trim", fe_trim_k_per_0p01pct=2.0, fe_trim_from_pct=0.02, heater_trim_max_k=40.0
        ),
        "cautious_stop": base.with_(
            name="cautious_stop",
            stop_fe_pct=0.8 * cfg.limits.cathode_fe_pct,
            stop_si_pct=0.8 * cfg.limits.cathode_si_pct,
        ),
        "unsafe_step": base.with_(name="unsafe_step", step_at_h=24.0, step_current_a=op.current_a * 1.3),
        "unsafe_ramp": base.with_(name="unsafe_ramp", ramp_a_per_h=cfg.safety.ramp_a_per_h * 10.0),
    }


class RefiningPolicy:
    """The parametrised refining controller, vectorised over pots.

    Args:
        params: one ``PolicyParams`` for all pots, or one per pot.
        n: number of pots (required with a single ``params``).
        period_s: the scan period it is stepped at [s] (sets the ramp per scan).
    """

    def __init__(
        self, params: PolicyParams | Sequence[PolicyParams], n: int | None = None, period_s: float = 600.0
    ) -> None:
        plist = [params] * int(n if n is not None else 1) if isinstance(params, PolicyParams) else list(params)
        if n is not None and len(plist) != n:
            raise ValueError(f"{len(plist)} policy params for {n} pots")
        if not plist:
            raise ValueError("no pots")
        if period_s <= 0:
            raise ValueError(f"period_s must be > 0, got {period_s}")
        self.params = plist
        self.names = [p.name for p in plist]
        self.period_s = float(period_s)
        self.n = len(plist)
        # one array per numeric ``PolicyParams`` field, one element per pot
        col = {name: np.array([getattr(p, name) for p in plist], dtype=float) for name in _NUMERIC}
        self._current_a = col["current_a"]
        self._ramp_a_per_h = col["ramp_a_per_h"]
        self._heater_c = col["heater_c"]
        self._tap_every_h = col["tap_every_h"]
        self._charge_every_h = col["charge_every_h"]
        self._ce_guess = col["ce_guess"]
        self._impurity_guess = col["impurity_guess"]
        self._fe_trim_k_per_0p01pct = col["fe_trim_k_per_0p01pct"]
        self._fe_trim_from_pct = col["fe_trim_from_pct"]
        self._heater_trim_max_k = col["heater_trim_max_k"]
        self._stop_fe_pct = col["stop_fe_pct"]
        self._stop_si_pct = col["stop_si_pct"]
        self._step_at_h = col["step_at_h"]
        # derived constants (hot loop)
        self._has_step = bool(np.isfinite(self._step_at_h).any())
        self._step_s = np.where(np.isfinite(self._step_at_h), self._step_at_h * 3600.0, np.inf)
        step_a = col["step_current_a"]
        self._step_current_a = np.where(np.isfinite(step_a), step_a, 0.0)
        self._has_trim = bool((self._fe_trim_k_per_0p01pct != 0).any())
        self._has_stop = bool(np.isfinite(self._stop_fe_pct).any() or np.isfinite(self._stop_si_pct).any())
        self._no_stop = np.zeros(self.n, dtype=bool)
        self._tap_s = self._tap_every_h * 3600.0 - 1e-6
        self._charge_s = self._charge_every_h * 3600.0 - 1e-6
        self._kg_per_ah = FARADAY_KG_PER_KAH / 1000.0 * self._ce_guess
        self._kg_per_ah_scrap = self._kg_per_ah / (1.0 - self._impurity_guess)
        self.reset()

    def reset(self) -> None:
        """Back to the start of a cycle (current setpoint 0, schedules restarted)."""
        n = self.n
        self.sp = np.zeros(n)
        self._ah_tap = np.zeros(n)
        self._ah_charge = np.zeros(n)
        self._last_tap = np.zeros(n)
        self._last_charge = np.zeros(n)
        self._t_prev = math.nan

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__

    def __setstate__(self, d: dict[str, Any]) -> None:
        self.__dict__.update(d)

    def step(self, readings: PotReadings, now_s: float) -> PotInputs:
        """Commands for this scan (see the class and ``PolicyParams`` docs)."""
        dt = now_s - self._t_prev if self._t_prev == self._t_prev else 0.0
        self._t_prev = now_s
        cur = readings.current_a
        ah = np.where(cur == cur, cur, 0.0) * (dt / 3600.0)
        self._ah_tap += ah
        self._ah_charge += ah
        # current: ramp toward the target; an optional unlimited step
        dmax = self._ramp_a_per_h * (self.period_s / 3600.0)
        sp = np.minimum(np.maximum(self._current_a, self.sp - dmax), self.sp + dmax)
        if self._has_step:
            step_now = self._step_s <= now_s
            sp = np.where(step_now, self._step_current_a, sp)
        self.sp = sp
        # heater with Fe-assay trim (assays are NaN before the first tap)
        fe = readings.assay_fe
        fe_pct = np.where(fe == fe, fe, 0.0) * 100.0
        heater = self._heater_c
        if self._has_trim:
            trim = self._fe_trim_k_per_0p01pct * (fe_pct - self._fe_trim_from_pct) * 100.0
            heater = heater + np.minimum(np.maximum(trim, 0.0), self._heater_trim_max_k)
        # taps and charges sized from Faraday's law on the measured current
        due_tap = now_s - self._last_tap >= self._tap_s
        tap = np.where(due_tap, self._kg_per_ah * self._ah_tap, 0.0)
        due_ch = now_s - self._last_charge >= self._charge_s
        charge = np.where(due_ch, self._kg_per_ah_scrap * self._ah_charge, 0.0)
        if due_tap.any():
            self._ah_tap[due_tap] = 0.0
            self._last_tap[due_tap] = now_s
        if due_ch.any():
            self._ah_charge[due_ch] = 0.0
            self._last_charge[due_ch] = now_s
        if self._has_stop:
            si = readings.assay_si
            si_pct = np.where(si == si, si, 0.0) * 100.0
            stop = (fe_pct >= self._stop_fe_pct) | (si_pct >= self._stop_si_pct)
        else:
            stop = self._no_stop
        return PotInputs(current_sp_a=sp, heater_sp_c=heater, charge_kg=charge, tap_kg=tap, stop=stop)


# --------------------------------------------------------------------------- safety


@dataclass(frozen=True, slots=True)
class SafetyLimits:
    """Bounds every command to a refining pot must respect (config ``[safety]``)."""

    current_min_a: float
    current_max_a: float
    ramp_a_per_h: float
    heater_setpoint_min_c: float
    heater_setpoint_max_c: float
    charge_max_kg: float
    tap_max_kg: float
    temperature_min_c: float
    temperature_max_c: float

    @classmethod
    def from_config(cls, cfg: RefiningConfig) -> SafetyLimits:
        return cls(**cfg.safety.model_dump())


@dataclass(frozen=True, slots=True)
class Violation:
    """A command that breaks a safety limit.

    Attributes:
        t_s: scan time [s]; pot: pot index; kind: ``current_ramp``, ``current_max``,
        ``current_min``, ``heater_setpoint``, ``charge_size``, ``tap_size``;
        value / limit: in the limit's unit; message: one line for an operator.
    """

    t_s: float
    pot: int
    kind: str
    value: float
    limit: float
    message: str


def check_commands(
    cmd: PotInputs, prev_sp_a: np.ndarray, limits: SafetyLimits, period_s: float, t_s: float
) -> list[Violation]:
    """Violations in one scan's commands.

    Args:
        cmd: the commands.
        prev_sp_a: the current setpoint in force before this scan [A] (the previous
            command, or the measured current at the first scan).
        limits: safety limits.
        period_s: time since the previous command [s].
        t_s: scan time [s].
    """
    out: list[Violation] = []
    sp = np.asarray(cmd.current_sp_a, dtype=float)
    tol = 1e-6
    ramp = np.abs(sp - prev_sp_a) / max(period_s, 1e-9) * 3600.0
    day = t_s / 86400.0
    for k in np.flatnonzero(ramp > limits.ramp_a_per_h * (1 + tol) + tol):
        out.append(
            Violation(
                t_s,
                int(k),
                "current_ramp",
                float(ramp[k]),
                limits.ramp_a_per_h,
                f"day {day:.2f}: current setpoint moves {prev_sp_a[k]:.0f} -> {sp[k]:.0f} A "
                f"in {period_s:.0f} s = {ramp[k]:.0f} A/h > ramp limit {limits.ramp_a_per_h:.0f} A/h",
            )
        )
    for k in np.flatnonzero(sp > limits.current_max_a + tol):
        out.append(
            Violation(
                t_s,
                int(k),
                "current_max",
                float(sp[k]),
                limits.current_max_a,
                f"day {day:.2f}: current setpoint {sp[k]:.0f} A > max {limits.current_max_a:.0f} A",
            )
        )
    for k in np.flatnonzero(sp < limits.current_min_a - tol):
        out.append(
            Violation(
                t_s,
                int(k),
                "current_min",
                float(sp[k]),
                limits.current_min_a,
                f"day {day:.2f}: current setpoint {sp[k]:.0f} A < min {limits.current_min_a:.0f} A",
            )
        )
    h = np.asarray(cmd.heater_sp_c, dtype=float)
    for k in np.flatnonzero((h < limits.heater_setpoint_min_c - tol) | (h > limits.heater_setpoint_max_c + tol)):
        out.append(
            Violation(
                t_s,
                int(k),
                "heater_setpoint",
                float(h[k]),
                limits.heater_setpoint_max_c if h[k] > limits.heater_setpoint_max_c else limits.heater_setpoint_min_c,
                f"day {day:.2f}: heater setpoint {h[k]:.1f} °C outside "
                f"{limits.heater_setpoint_min_c:.0f}…{limits.heater_setpoint_max_c:.0f} °C",
            )
        )
    c = np.asarray(cmd.charge_kg, dtype=float)
    for k in np.flatnonzero(c > limits.charge_max_kg + tol):
        out.append(
            Violation(
                t_s,
                int(k),
                "charge_size",
                float(c[k]),
                limits.charge_max_kg,
                f"day {day:.2f}: scrap charge {c[k]:.1f} kg > {limits.charge_max_kg:.1f} kg per charge",
            )
        )
    tp = np.asarray(cmd.tap_kg, dtype=float)
    for k in np.flatnonzero(tp > limits.tap_max_kg + tol):
        out.append(
            Violation(
                t_s,
                int(k),
                "tap_size",
                float(tp[k]),
                limits.tap_max_kg,
                f"day {day:.2f}: tap {tp[k]:.1f} kg > {limits.tap_max_kg:.1f} kg per tap",
            )
        )
    return out


class SafeCommandFilter:
    """What the wire applies: clamp and ramp-limit commands before they reach a pot.

    Shadow mode judges the *raw* commands (``check_commands``); a live deployment sends
    them through this filter as well, so a bad candidate is contained either way.
    """

    def __init__(self, limits: SafetyLimits, period_s: float, n: int = 1) -> None:
        self.limits = limits
        self.period_s = float(period_s)
        self.last_sp = np.full(n, np.nan)

    def apply(self, cmd: PotInputs, measured_current_a: np.ndarray) -> PotInputs:
        """A limited copy of ``cmd``; the previous limited setpoint (or the measured
        current at the first call) is the ramp's starting point."""
        lim = self.limits
        prev = np.where(np.isnan(self.last_sp), measured_current_a, self.last_sp)
        d = lim.ramp_a_per_h * self.period_s / 3600.0
        sp = np.clip(np.clip(cmd.current_sp_a, prev - d, prev + d), lim.current_min_a, lim.current_max_a)
        self.last_sp = sp
        return PotInputs(
            current_sp_a=sp,
            heater_sp_c=np.clip(cmd.heater_sp_c, lim.heater_setpoint_min_c, lim.heater_setpoint_max_c),
            charge_kg=np.clip(cmd.charge_kg, 0.0, lim.charge_max_kg),
            tap_kg=np.clip(cmd.tap_kg, 0.0, lim.tap_max_kg),
            stop=np.asarray(cmd.stop, dtype=bool).copy(),
        )


# --------------------------------------------------------------------------- verdict


@dataclass(frozen=True, slots=True)
class VerdictCriteria:
    """Deployment criteria (config ``[verdict]``)."""

    purity_min_pct: float = 99.7
    energy_max_kwh_kg: float = 10.0
    cycle_min_days: float = 40.0
    voltage_rms_max_pct: float = 2.0
    mismatch_flag_pct: float = 5.0

    @classmethod
    def from_config(cls, cfg: RefiningConfig) -> VerdictCriteria:
        return cls(**cfg.verdict.model_dump())


@dataclass(frozen=True, slots=True)
class Criterion:
    """One checked criterion."""

    name: str
    value: float
    limit: float
    passed: bool
    text: str


@dataclass(slots=True)
class Verdict:
    """``ready`` only when every criterion passes; ``reasons`` say why not."""

    ready: bool
    label: str
    reasons: list[str] = field(default_factory=list)
    criteria: list[Criterion] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "ready": self.ready,
            "label": self.label,
            "reasons": list(self.reasons),
            "criteria": [asdict(c) for c in self.criteria],
        }


def judge(
    criteria: VerdictCriteria,
    *,
    purity_min_pct: float,
    dc_kwh_per_kg: float,
    cycle_days: float,
    breakthrough_end: bool,
    violations: Sequence[Violation],
    voltage_rms_pct: float,
) -> Verdict:
    """Deployment verdict for a candidate from its predicted cycle and its commands.

    Args:
        criteria: the stated criteria.
        purity_min_pct: predicted worst batch purity under the candidate [%].
        dc_kwh_per_kg: predicted DC specific energy [kWh/kg].
        cycle_days: predicted cycle length [d].
        breakthrough_end: the predicted cycle ended by impurity breakthrough/saturation
            (or a controlled stop) — not by a thermal trip, density loss or the timer.
        violations: safety violations among the candidate's commands.
        voltage_rms_pct: the observer's voltage residual (is the twin credible?) [%].
    """
    cs: list[Criterion] = []
    n_v = len(violations)
    kinds = sorted({v.kind for v in violations})
    first = violations[0].message if violations else ""
    cs.append(
        Criterion(
            "no_unsafe_command",
            float(n_v),
            0.0,
            n_v == 0,
            "no command beyond the safety limits"
            if n_v == 0
            else f"unsafe command: {n_v} violation(s) ({', '.join(kinds)}); first: {first}",
        )
    )
    cs.append(
        Criterion(
            "purity",
            purity_min_pct,
            criteria.purity_min_pct,
            purity_min_pct >= criteria.purity_min_pct,
            f"worst batch purity {purity_min_pct:.3f} % (≥ {criteria.purity_min_pct} %)",
        )
    )
    cs.append(
        Criterion(
            "energy",
            dc_kwh_per_kg,
            criteria.energy_max_kwh_kg,
            dc_kwh_per_kg <= criteria.energy_max_kwh_kg,
            f"DC energy {dc_kwh_per_kg:.2f} MWh/t (≤ {criteria.energy_max_kwh_kg} MWh/t)",
        )
    )
    cs.append(
        Criterion(
            "cycle_length",
            cycle_days,
            criteria.cycle_min_days,
            cycle_days >= criteria.cycle_min_days and breakthrough_end,
            f"cycle {cycle_days:.1f} d (≥ {criteria.cycle_min_days} d, ended by "
            f"{'impurity breakthrough' if breakthrough_end else 'something other than impurity breakthrough'})",
        )
    )
    cs.append(
        Criterion(
            "twin_credible",
            voltage_rms_pct,
            criteria.voltage_rms_max_pct,
            voltage_rms_pct <= criteria.voltage_rms_max_pct,
            f"observer voltage residual {voltage_rms_pct:.2f} % RMS (≤ {criteria.voltage_rms_max_pct} %)",
        )
    )
    failed = [c for c in cs if not c.passed]
    reasons = [c.text for c in failed]
    return Verdict(ready=not failed, label="ready" if not failed else "not ready", reasons=reasons, criteria=cs)
