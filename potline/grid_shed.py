"""Grid shed requests: the line current the grid operator's power limit allows, and how fast.

The grid operator's RTU writes the line power it allows now into the rectifier PLC
(role ``grid_limit_mw``, 0 = no request; ``plc_bridge.roles``). While a request stands
the line setpoint the daemon writes is capped at the current that meets it:

* **the current for the limit**: the line is modelled as U(I) = U0 + R·I, U0 = the
  line's series cells × the cell back-EMF (``e0_v``), R fitted through the measured
  (U, I) point, and I solves I·U(I) = P (``potctl.amperage.current_for_power_ka``);
  without a usable fit (no current, U ≤ U0) I = P / U_measured, which lands below the
  limit (the voltage falls with the current). It is computed when the request appears or
  changes; while the request stands it may only be lowered (the line settled at it and
  still draws more than asked, e.g. an AE adding voltage), never raised;
* **full shed**: a limit below what the line draws at the lowest safe current holds the
  line *at* that current (``floor_ka``: the controller's ``amperage.min_ka``, the
  rectifier's own ``min_ka`` and ``[safety] line_current_min_ka``, the highest). A smelter
  does not switch a potline off for a demand-response call: below the lowest safe current
  the cells lose heat balance and a full outage (pots freezing within hours) is the grid
  operator's breaker, not a setpoint;
* **how fast**: down at the rectifier's fastest safe ramp (the plant config's rectifier
  ``ramp_ka_per_min``; the safety layer's ramp must not be slower: the daemon warns at
  start when it is), back up at the controller's normal ``amperage.ramp_ka_per_min``
  once the request clears, until the cap meets the controller's (the plan's) setpoint;
* **journal**: ``grid_shed_start`` (requested MW, the line's draw, the target current),
  ``grid_shed_reached`` (the current reached and the time it took), ``grid_shed_end``
  (requested MW, the current reached, the time to reach it, the shed's length) and
  ``grid_shed_recovered`` (the plan's setpoint back).

A register that turns unusable (link down, BAD value) during a shed keeps the shed
(the safe side); without a shed it asks for nothing. Everything here is sans-I/O:
``LineShed.step`` takes plant time and the scan's values and returns the cap [kA].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from potctl.amperage import current_for_power_ka

__all__ = ["LineShed", "ShedEvent", "ShedSettings"]

#: a line draws more than the limit when it exceeds it by this share (meter and model noise)
OVER_LIMIT_SHARE = 0.005


@dataclass(frozen=True, slots=True)
class ShedSettings:
    """How one line sheds.

    Attributes:
        fast_ka_per_s: ramp down to the shed current [kA/s] (the rectifier's fastest safe ramp).
        normal_ka_per_s: ramp back up after the request clears [kA/s].
        floor_ka, max_ka: the lowest safe and the highest line current [kA].
        u0_v: the line's back-EMF voltage (series cells × E0) [V].
        reach_tol_ka: the shed current counts as reached within this [kA].
    """

    fast_ka_per_s: float
    normal_ka_per_s: float
    floor_ka: float
    max_ka: float
    u0_v: float
    reach_tol_ka: float = 1.5


@dataclass(frozen=True, slots=True)
class ShedEvent:
    """Something to journal: ``kind`` (``grid_shed_start`` ...), a human line and the numbers."""

    kind: str
    detail: str
    data: dict[str, Any]


def _clip(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x


@dataclass
class LineShed:
    """The shed state of one line (see the module docstring).

    Attributes:
        state: ``idle`` | ``shedding`` | ``recovering``.
        limit_mw: the request in force [MW] (0: none).
        target_ka: the current that meets it [kA] (NaN: none).
        cap_ka: the cap on the written setpoint now [kA] (NaN: no cap).
        full: the limit is below the line's draw at ``floor_ka`` (held at the floor).
    """

    settings: ShedSettings
    state: str = "idle"
    limit_mw: float = 0.0
    target_ka: float = math.nan
    cap_ka: float = math.nan
    full: bool = False
    t_start: float = math.nan
    t_request: float = math.nan
    i_start_ka: float = math.nan
    t_reached: float = math.nan
    reached_ka: float = math.nan
    t_end: float = math.nan
    _t_last: float | None = field(default=None, repr=False)

    def current_for(self, p_mw: float, u_v: float, i_ka: float) -> tuple[float, bool]:
        """The line current [kA] that draws ``p_mw`` from the measured point (``u_v``, ``i_ka``),
        clipped to [floor, max], and whether the floor holds it (a full shed)."""
        st = self.settings
        if i_ka > 1.0 and u_v > st.u0_v:
            r_ohm = (u_v - st.u0_v) / (i_ka * 1e3)
            want = float(current_for_power_ka(p_mw, st.u0_v, r_ohm))
        elif u_v > 1.0:
            want = p_mw * 1e3 / u_v
        else:
            want = st.floor_ka  # no voltage to judge by: the safe side
        return _clip(want, st.floor_ka, st.max_ka), want < st.floor_ka

    def step(
        self, t: float, limit_mw: float | None, u_v: float, i_ka: float, sp_ka: float
    ) -> tuple[float, list[ShedEvent]]:
        """One scan: the cap on the line setpoint [kA] (NaN: none) and what to journal.

        Args:
            t: plant time [s].
            limit_mw: the grid limit register [MW] (0 or less: no request; None: unusable).
            u_v, i_ka: measured line voltage [V] and current [kA] (NaN when not good).
            sp_ka: the setpoint the controller asks for this scan [kA] (NaN: nothing written),
                or what the PLC holds when the controller writes nothing.
        """
        st = self.settings
        dt = 0.0 if self._t_last is None else max(t - self._t_last, 0.0)
        self._t_last = t
        ev: list[ShedEvent] = []
        want = self.limit_mw if limit_mw is None else max(float(limit_mw), 0.0)  # unusable: keep what stands
        ok = math.isfinite(u_v) and math.isfinite(i_ka)
        if want > 0.0 and (want != self.limit_mw or self.state != "shedding"):
            if not ok:
                return self._hold(), ev  # the request waits for a good scan
            target, full = self.current_for(want, u_v, i_ka)
            first = self.state != "shedding"
            self.limit_mw, self.target_ka, self.full = want, target, full
            if first:
                self.state = "shedding"
                start = sp_ka if math.isfinite(sp_ka) else i_ka
                self.cap_ka = _clip(max(start, target), st.floor_ka, st.max_ka) if math.isnan(self.cap_ka) \
                    else self.cap_ka  # fmt: skip
                self.t_start = t
            # the time to reach counts from this request (a changed limit is reached anew)
            self.t_request, self.i_start_ka = t, i_ka
            self.t_reached = self.reached_ka = math.nan
            draw = u_v * i_ka / 1e3
            how = f"full shed: held at the lowest safe current {target:.1f} kA" if full else f"to {target:.1f} kA"
            ev.append(ShedEvent("grid_shed_start" if first else "grid_shed_changed",
                                f"grid limit {want:.1f} MW (line draws {draw:.1f} MW at {i_ka:.1f} kA): {how}"
                                f" at {st.fast_ka_per_s * 60.0:g} kA/min",
                                {"requested_mw": want, "draw_mw": draw, "current_ka": i_ka, "target_ka": target,
                                 "full_shed": full, "ramp_ka_per_min": st.fast_ka_per_s * 60.0}))  # fmt: skip
        elif want <= 0.0 and self.state == "shedding":
            self.state, self.t_end = "recovering", t
            took = self.t_reached - self.t_request
            ev.append(ShedEvent("grid_shed_end",
                                f"grid limit {self.limit_mw:.1f} MW cleared after {t - self.t_start:.0f} s; reached"
                                f" {self.reached_ka:.1f} kA in {took:.0f} s; back to the plan at"
                                f" {st.normal_ka_per_s * 60.0:g} kA/min",
                                {"requested_mw": self.limit_mw, "reached_ka": self.reached_ka,
                                 "time_to_reach_s": took if math.isfinite(took) else None,
                                 "duration_s": t - self.t_start, "target_ka": self.target_ka}))  # fmt: skip
            self.limit_mw = 0.0
        elif self.state == "shedding" and ok and math.isfinite(self.t_reached) and self._still_over(u_v, i_ka):
            # settled at the target and still over the limit (an AE's voltage, a model error): lower it
            lower, full = self.current_for(self.limit_mw, u_v, i_ka)
            if lower < self.target_ka - 0.05:
                self.target_ka, self.full = lower, full
        return self._move(t, dt, i_ka, sp_ka, ev), ev

    def _still_over(self, u_v: float, i_ka: float) -> bool:
        """Settled at the target and drawing more than the limit (beyond ``OVER_LIMIT_SHARE``)."""
        over = u_v * i_ka / 1e3 > self.limit_mw * (1.0 + OVER_LIMIT_SHARE)
        return over and abs(i_ka - self.target_ka) <= self.settings.reach_tol_ka

    def _hold(self) -> float:
        return self.cap_ka if self.state != "idle" else math.nan

    def _move(self, t: float, dt: float, i_ka: float, sp_ka: float, ev: list[ShedEvent]) -> float:
        st = self.settings
        if self.state == "shedding":
            if self.target_ka <= self.cap_ka:  # down at the rectifier's ramp
                self.cap_ka = max(self.target_ka, self.cap_ka - st.fast_ka_per_s * dt)
            else:  # a higher limit: up at the normal ramp
                self.cap_ka = min(self.target_ka, self.cap_ka + st.normal_ka_per_s * dt)
            if math.isnan(self.t_reached) and math.isfinite(i_ka) and i_ka <= self.target_ka + st.reach_tol_ka:
                self.t_reached, self.reached_ka = t, i_ka
                ev.append(ShedEvent("grid_shed_reached",
                                    f"line at {i_ka:.1f} kA {t - self.t_request:.0f} s after the grid limit"
                                    f" {self.limit_mw:.1f} MW (target {self.target_ka:.1f} kA)",
                                    {"requested_mw": self.limit_mw, "reached_ka": i_ka, "target_ka": self.target_ka,
                                     "time_to_reach_s": t - self.t_request, "from_ka": self.i_start_ka}))  # fmt: skip
            return self.cap_ka
        if self.state == "recovering":
            self.cap_ka = min(st.max_ka, self.cap_ka + st.normal_ka_per_s * dt)
            if not math.isfinite(sp_ka) or self.cap_ka >= sp_ka:
                ev.append(ShedEvent("grid_shed_recovered",
                                    f"line setpoint back to the plan ({sp_ka:.1f} kA) {t - self.t_end:.0f} s after"
                                    " the grid limit cleared",
                                    {"setpoint_ka": sp_ka, "recovery_s": t - self.t_end}))  # fmt: skip
                self.state, self.cap_ka, self.target_ka, self.full = "idle", math.nan, math.nan, False
                return math.nan
            return self.cap_ka
        return math.nan

    def status(self) -> dict[str, Any]:
        """For the HMI: the state, the request and the currents (None where not applicable)."""

        def num(x: float) -> float | None:
            return round(x, 3) if math.isfinite(x) else None

        return {"state": self.state, "limit_mw": self.limit_mw or None, "target_ka": num(self.target_ka),
                "cap_ka": num(self.cap_ka), "full_shed": self.full, "t_start_s": num(self.t_start),
                "reached_ka": num(self.reached_ka),
                "time_to_reach_s": num(self.t_reached - self.t_request)}  # fmt: skip
