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
    "command_criterion",
    "judge",
    "next_ramp_origin",
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
    """Bounds every command to a refining pot must respect (config ``[safety]``).

    ``temperature_*_c`` and ``*_inventory_max_kg`` bound the *process* (checked on the
    predicted cycle), the rest bound the *commands* (checked on every command).
    """

    current_min_a: float
    current_max_a: float
    ramp_a_per_h: float
    heater_setpoint_min_c: float
    heater_setpoint_max_c: float
    charge_max_kg: float
    tap_max_kg: float
    temperature_min_c: float
    temperature_max_c: float
    metal_inventory_max_kg: float = math.inf
    anode_inventory_max_kg: float = math.inf

    @classmethod
    def from_config(cls, cfg: RefiningConfig) -> SafetyLimits:
        return cls(**cfg.safety.model_dump())


@dataclass(frozen=True, slots=True)
class Violation:
    """A command that breaks a safety limit.

    Attributes:
        t_s: scan time [s]; pot: pot index; kind: ``not_finite``, ``current_ramp``,
        ``current_max``, ``current_min``, ``heater_setpoint``, ``charge_negative``,
        ``charge_size``, ``tap_negative``, ``tap_size``; value / limit: in the limit's
        unit (NaN for a non-finite value); message: one line for an operator (day,
        command, value, limit); where: ``replay`` (stepped on the recording) or
        ``prediction`` (stepped on the twin over the predicted cycle).
    """

    t_s: float
    pot: int
    kind: str
    value: float
    limit: float
    message: str
    where: str = "replay"


#: command fields, their names in messages and units
_FIELDS = (
    ("current_sp_a", "current setpoint", "A"),
    ("heater_sp_c", "heater setpoint", "°C"),
    ("charge_kg", "scrap charge", "kg"),
    ("tap_kg", "tap", "kg"),
    ("stop", "stop request", ""),
)


def _as_array(x: Any, n: int) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    return np.broadcast_to(a, (n,)) if a.shape != (n,) else a


def check_commands(
    cmd: PotInputs,
    prev_sp_a: np.ndarray,
    limits: SafetyLimits,
    period_s: float,
    t_s: float,
    where: str = "replay",
) -> list[Violation]:
    """Violations in one scan's commands: finiteness, sign, bounds and ramp of every field.

    Args:
        cmd: the commands (one element per pot).
        prev_sp_a: the current setpoint in force before this scan [A] (the last finite
            command, or the measured current at the first scan).
        limits: safety limits.
        period_s: time since the previous command [s].
        t_s: scan time [s].
        where: ``replay`` or ``prediction`` (reported with each violation).
    """
    out: list[Violation] = []
    prev = np.asarray(prev_sp_a, dtype=float)
    n = prev.shape[0]
    tol = 1e-6
    day = t_s / 86400.0

    def add(k: Any, kind: str, value: float, limit: float, text: str) -> None:
        out.append(Violation(t_s, int(k), kind, float(value), float(limit), f"day {day:.2f}: {text}", where))

    arrays: dict[str, np.ndarray] = {}
    for name, label, unit in _FIELDS:
        try:
            a = _as_array(getattr(cmd, name), n)
        except (TypeError, ValueError):
            a = np.full(n, np.nan)
        arrays[name] = a
        for k in np.flatnonzero(~np.isfinite(a)):
            add(k, "not_finite", a[k], math.nan,
                f"{label} is {a[k]} — every command must be a finite number{(' [' + unit + ']') if unit else ''}")  # fmt: skip
    sp = arrays["current_sp_a"]
    fin = np.isfinite(sp)
    with np.errstate(invalid="ignore"):
        ramp = np.where(fin & np.isfinite(prev), np.abs(sp - prev), 0.0) / max(period_s, 1e-9) * 3600.0
    for k in np.flatnonzero(ramp > limits.ramp_a_per_h * (1 + tol) + tol):
        add(k, "current_ramp", ramp[k], limits.ramp_a_per_h,
            f"current setpoint moves {prev[k]:.0f} -> {sp[k]:.0f} A in {period_s:.0f} s = {ramp[k]:.0f} A/h"
            f" > ramp limit {limits.ramp_a_per_h:.0f} A/h")  # fmt: skip
    for k in np.flatnonzero(fin & (sp > limits.current_max_a + tol)):
        add(k, "current_max", sp[k], limits.current_max_a,
            f"current setpoint {sp[k]:.0f} A > max {limits.current_max_a:.0f} A")  # fmt: skip
    for k in np.flatnonzero(fin & (sp < limits.current_min_a - tol)):
        add(k, "current_min", sp[k], limits.current_min_a,
            f"current setpoint {sp[k]:.0f} A < min {limits.current_min_a:.0f} A")  # fmt: skip
    h = arrays["heater_sp_c"]
    lo, hi = limits.heater_setpoint_min_c, limits.heater_setpoint_max_c
    for k in np.flatnonzero(np.isfinite(h) & ((h < lo - tol) | (h > hi + tol))):
        add(k, "heater_setpoint", h[k], hi if h[k] > hi else lo,
            f"heater setpoint {h[k]:.1f} °C outside {lo:.0f}…{hi:.0f} °C")  # fmt: skip
    for name, label, lim in (("charge_kg", "scrap charge", limits.charge_max_kg), ("tap_kg", "tap", limits.tap_max_kg)):
        a = arrays[name]
        what = name.split("_")[0]
        for k in np.flatnonzero(np.isfinite(a) & (a < -tol)):
            add(k, f"{what}_negative", a[k], 0.0, f"{label} {a[k]:.1f} kg < 0 kg (a {label} is a mass, never negative)")
        for k in np.flatnonzero(np.isfinite(a) & (a > lim + tol)):
            add(k, f"{what}_size", a[k], lim, f"{label} {a[k]:.1f} kg > {lim:.1f} kg per {what}")
    return out


def next_ramp_origin(prev_sp_a: np.ndarray, cmd_sp_a: Any) -> np.ndarray:
    """The ramp origin for the next scan: this scan's setpoint where finite, else the previous one."""
    sp = _as_array(cmd_sp_a, np.asarray(prev_sp_a).shape[0])
    return np.where(np.isfinite(sp), sp, prev_sp_a).astype(float)


class SafeCommandFilter:
    """What the wire applies: contain commands before they reach a pot.

    Non-finite values are replaced by the last value sent (the current setpoint, the
    heater setpoint) or by "nothing" (charge, tap, stop); negative charges and taps
    become 0; everything is clamped to ``[safety]`` and the current setpoint is
    ramp-limited. ``last_actions`` says what the last ``apply`` changed (for the
    journal). Shadow mode judges the *raw* commands (``check_commands``); a live
    deployment sends them through this filter as well (and through
    ``plc_bridge.safe_write`` on the wire), so a bad candidate is contained either way.

    Args:
        limits: the safety limits.
        period_s: the scan period the ramp is applied over [s].
        n: number of pots.
        heater_hold_c: heater setpoint used when a candidate's first one is not finite
            (default: the middle of the allowed range) [°C].
    """

    def __init__(self, limits: SafetyLimits, period_s: float, n: int = 1, heater_hold_c: float | None = None) -> None:
        self.limits = limits
        self.period_s = float(period_s)
        self.last_sp = np.full(n, np.nan)
        mid = 0.5 * (limits.heater_setpoint_min_c + limits.heater_setpoint_max_c)
        self.last_heater = np.full(n, mid if heater_hold_c is None else float(heater_hold_c))
        self.last_actions: list[str] = []

    def apply(self, cmd: PotInputs, measured_current_a: np.ndarray) -> PotInputs:
        """A contained copy of ``cmd``; the previous setpoint sent (or the measured current at
        the first call) is the ramp's starting point."""
        lim = self.limits
        n = self.last_sp.shape[0]
        acts: list[str] = []
        meas = _as_array(measured_current_a, n)
        prev = np.where(np.isnan(self.last_sp), meas, self.last_sp)
        prev = np.where(np.isfinite(prev), prev, lim.current_min_a)
        raw = _as_array(cmd.current_sp_a, n)
        bad = ~np.isfinite(raw)
        if bad.any():
            acts.append(f"current setpoint not finite on pot(s) {np.flatnonzero(bad).tolist()}: held")
        want = np.where(bad, prev, raw)
        d = lim.ramp_a_per_h * self.period_s / 3600.0
        sp = np.clip(np.clip(want, prev - d, prev + d), lim.current_min_a, lim.current_max_a)
        if (np.abs(sp - want) > 1e-9).any():
            acts.append("current setpoint ramp-limited/clamped")
        self.last_sp = sp
        h_raw = _as_array(cmd.heater_sp_c, n)
        h_bad = ~np.isfinite(h_raw)
        if h_bad.any():
            acts.append(f"heater setpoint not finite on pot(s) {np.flatnonzero(h_bad).tolist()}: held")
        heater = np.clip(np.where(h_bad, self.last_heater, h_raw), lim.heater_setpoint_min_c, lim.heater_setpoint_max_c)
        self.last_heater = heater

        def mass(x: Any, hi: float, label: str) -> np.ndarray:
            a = _as_array(x, n)
            ok = np.isfinite(a) & (a > 0.0)
            if (~np.isfinite(a)).any() or (a < 0).any():
                acts.append(f"{label}: non-finite or negative request dropped")
            return np.clip(np.where(ok, a, 0.0), 0.0, hi)

        stop_raw = _as_array(cmd.stop, n)
        self.last_actions = acts
        return PotInputs(
            current_sp_a=sp,
            heater_sp_c=heater,
            charge_kg=mass(cmd.charge_kg, lim.charge_max_kg, "scrap charge"),
            tap_kg=mass(cmd.tap_kg, lim.tap_max_kg, "tap"),
            stop=np.isfinite(stop_raw) & (stop_raw > 0.5),
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
    tap_interval_max_h: float = 72.0

    @classmethod
    def from_config(cls, cfg: RefiningConfig) -> VerdictCriteria:
        return cls(**cfg.verdict.model_dump())


@dataclass(frozen=True, slots=True)
class Criterion:
    """One checked criterion.

    Attributes:
        name: ``no_unsafe_command``, ``temperature_max``, ``temperature_min``,
            ``metal_inventory``, ``anode_inventory``, ``tapping``, ``purity``, ``energy``,
            ``cycle_length``, ``twin_credible``.
        value / limit: the worst value found and the limit, in ``unit``.
        passed: the criterion holds.
        text: one line for an operator; a failure names the time, the value and the limit.
        t_s: when it first failed [s since cycle start] (NaN: passed, or not a time event).
        unit: unit of value and limit.
    """

    name: str
    value: float
    limit: float
    passed: bool
    text: str
    t_s: float = math.nan
    unit: str = ""


@dataclass(slots=True)
class Verdict:
    """``ready`` only when every criterion passes; ``reasons`` say why not.

    ``data_warnings`` are problems of the recording (gaps, blanks, dropped rows): they
    are reported, never counted against the candidate.
    """

    ready: bool
    label: str
    reasons: list[str] = field(default_factory=list)
    criteria: list[Criterion] = field(default_factory=list)
    data_warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "ready": self.ready,
            "label": self.label,
            "reasons": list(self.reasons),
            "criteria": [asdict(c) for c in self.criteria],
            "data_warnings": list(self.data_warnings),
        }

    def criterion(self, name: str) -> Criterion:
        for c in self.criteria:
            if c.name == name:
                return c
        raise KeyError(f"no criterion {name!r}; have {[c.name for c in self.criteria]}")


def command_criterion(violations: Sequence[Violation]) -> Criterion:
    """``no_unsafe_command``: every command finite, of the right sign, within bounds and ramp.

    A failure names the number of violations, their kinds, and the first of each kind
    (time, value, limit; where it was found: replay of the recording or predicted cycle).
    """
    n_v = len(violations)
    if n_v == 0:
        return Criterion("no_unsafe_command", 0.0, 0.0, True, "no command beyond the safety limits")
    first: dict[str, Violation] = {}
    for v in sorted(violations, key=lambda x: (x.t_s, x.where != "replay")):
        first.setdefault(v.kind, v)
    kinds = sorted(first, key=lambda k: first[k].t_s)
    detail = "; ".join(f"{first[k].message} ({first[k].where})" for k in kinds)
    v0 = first[kinds[0]]
    return Criterion(
        "no_unsafe_command",
        float(n_v),
        0.0,
        False,
        f"unsafe command: {n_v} violation(s) ({', '.join(kinds)}); first: {detail}",
        t_s=v0.t_s,
        unit="violations",
    )


def judge(
    criteria: Sequence[Criterion],
    violations: Sequence[Violation] = (),
    data_warnings: Sequence[str] = (),
) -> Verdict:
    """Deployment verdict: READY only when the command check and every process criterion pass.

    Args:
        criteria: the process criteria over the predicted cycle (and the twin's credibility).
        violations: unsafe commands among the candidate's commands (replay and prediction).
        data_warnings: problems of the recording, reported beside the verdict, never
            counted against the candidate.
    """
    cs = [command_criterion(violations), *criteria]
    failed = [c for c in cs if not c.passed]
    return Verdict(
        ready=not failed,
        label="ready" if not failed else "not ready",
        reasons=[c.text for c in failed],
        criteria=cs,
        data_warnings=list(data_warnings),
    )
