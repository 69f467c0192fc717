"""Amperage control: the line-current setpoint written to each rectifier.

Per line (series circuit, one rectifier; docs/domain.md §4):

* the target is the configured current, or the current that draws a scheduled power
  (demand response): with the line seen as U(I) = U0 + R_s·I, U0 = N·E0 + Σ AE
  excess voltage and R_s fitted from the measured U and I, the power target P gives
  I = (−U0 + √(U0² + 4·R_s·P)) / (2·R_s), clamped to [min_ka, max_ka];
* a headroom cap keeps U(I) ≤ U_max·(1 − margin) − headroom_v, so that with several
  cells in AE (each ≈ +25–40 V) the rectifier still has voltage to hold the current;
* the setpoint moves towards the target at ``ramp_ka_per_min`` (down at the fast rate
  when the headroom cap or a cut-out needs it);
* while the rectifier is tripped the setpoint is parked at ``restart_start_ka``; after
  the reset, and after a potroom restart request, it ramps up at
  ``restart_ramp_ka_per_min``;
* cutting a cell out of (or into) the circuit: ramp down to ``cutout_current_ka``,
  issue a permit event (``cut_out_permit`` / ``cut_in_permit``) for the floor crew (the
  offline loop carries it out), wait until the PLC reports the new state, ramp back;
* a slow integral trim (± ``trim_limit``) removes a steady DCCT offset.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from potctl.config import E0_V, AmperageConfig

__all__ = ["AmperageController", "LineMode", "current_for_power_ka"]


class LineMode:
    NORMAL = "normal"
    CUT_DOWN = "cut_down"  # ramping down for a cut-out/in
    CUT_WAIT = "cut_wait"  # permit issued, waiting for the switch
    RESTART = "restart"  # slow ramp up after a trip / restart / cut-out
    TRIPPED = "tripped"


def _clip(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x


def current_for_power_ka(p_mw: float, u0_v: float, r_ohm: float) -> float:
    """Line current [kA] that draws ``p_mw`` [MW] from a line U(I) = U0 + R·I."""
    p = p_mw * 1e6
    if r_ohm <= 0:
        return p / max(u0_v, 1e-9) / 1e3
    return (-u0_v + np.sqrt(u0_v * u0_v + 4.0 * r_ohm * p)) / (2.0 * r_ohm) / 1e3


@dataclass(slots=True)
class _CutRequest:
    cell: int
    action: str  # "out" | "in"
    t_request: float
    t_permit: float = float("nan")
    restore_ka: float = float("nan")


@dataclass
class _Line:
    target_ka: float
    sp_ka: float = float("nan")
    mode: str = LineMode.NORMAL
    schedule: list[tuple[float, float | None]] = field(default_factory=list)
    trim_ka: float = 0.0
    sp_ref_ka: float = float("nan")
    last_change_t: float = -np.inf
    queue: list[_CutRequest] = field(default_factory=list)
    power_mw: float | None = None


class AmperageController:
    """Setpoint logic for every line.

    Args:
        line_nominal_ka: [n_lines] nominal current of each line [kA] (``PlantLayout``).
        cell_line: [n_cells] line index of each cell.
        cfg: amperage settings.
        e0_v: back-EMF per cell [V].
    """

    def __init__(
        self,
        line_nominal_ka: np.ndarray,
        cell_line: np.ndarray,
        cfg: AmperageConfig | None = None,
        e0_v: float = E0_V,
    ) -> None:
        self.cfg = cfg or AmperageConfig()
        self.e0 = float(e0_v)
        self.cell_line = np.asarray(cell_line, dtype=np.int64)
        nom = np.asarray(line_nominal_ka, dtype=np.float64)
        self.n_lines = nom.size
        tgt = self.cfg.target_ka
        self.lines = [_Line(target_ka=float(tgt if tgt is not None else nom[i])) for i in range(self.n_lines)]
        self.cap_ka = np.full(self.n_lines, np.inf)
        vl = self.cfg.voltage_limit_v
        vl = list(vl) if isinstance(vl, list) else [vl] * self.n_lines
        if len(vl) != self.n_lines:
            raise ValueError(f"amperage.voltage_limit_v has {len(vl)} values for {self.n_lines} lines")
        self.voltage_limit_v = np.asarray(vl, dtype=np.float64)
        self.cutouts_done = 0
        self._t_last: float | None = None

    # ------------------------------------------------------------------ requests
    def set_target(self, line: int, ka: float) -> None:
        """New steady current target for ``line`` [kA] (clamped to min/max)."""
        self.lines[line].target_ka = _clip(float(ka), self.cfg.min_ka, self.cfg.max_ka)

    def set_power_schedule(self, line: int, schedule: list[tuple[float, float | None]]) -> None:
        """Demand-response schedule of ``line``: (start time [s], power [MW] or None = current target)."""
        for t_s, mw in schedule:
            if mw is not None and not (mw > 0):
                raise ValueError(f"power schedule of line {line}: power must be > 0 MW, got {mw} at t={t_s}")
        self.lines[line].schedule = sorted((float(t), None if m is None else float(m)) for t, m in schedule)

    def request_cut(self, cell: int, action: str, t: float) -> None:
        """Queue a cut-out (``"out"``) or cut-in (``"in"``) of ``cell``."""
        if action not in ("out", "in"):
            raise ValueError(f"cut action must be 'out' or 'in', got {action!r}")
        ln = self.lines[int(self.cell_line[cell])]
        ln.queue.append(_CutRequest(cell=int(cell), action=action, t_request=t))

    def request_restart(self, line: int) -> None:
        """Ramp ``line`` up to its target at the restart rate (potroom restart)."""
        self.lines[line].mode = LineMode.RESTART

    def setpoint_changed_since(self, line: int) -> float:
        """Time [s] of the last setpoint move by more than 0.5 % on ``line``."""
        return self.lines[line].last_change_t

    def power_target_mw(self, line: int, t: float) -> float | None:
        """Scheduled power of ``line`` at ``t`` (None: no power target)."""
        mw = None
        for t_s, m in self.lines[line].schedule:
            if t_s <= t:
                mw = m
            else:
                break
        return mw

    # ------------------------------------------------------------------ step
    def step(
        self,
        t: float,
        i_meas_ka: np.ndarray,
        u_line_v: np.ndarray,
        sp_readback_ka: np.ndarray,
        remote: np.ndarray,
        tripped: np.ndarray,
        line_ok: np.ndarray,
        cut_out: np.ndarray,
        ae_excess_v: np.ndarray,
    ) -> tuple[np.ndarray, list[tuple[str, int, str]]]:
        """Setpoints [kA] per line (NaN: do not write) and events of this scan.

        Args:
            t: time [s].
            i_meas_ka, u_line_v, sp_readback_ka, remote, tripped, line_ok: [n_lines] rectifier tags.
            cut_out: [n_cells] cells shorted out of the circuit.
            ae_excess_v: [n_lines] summed voltage of cells in AE above their normal voltage [V].
        """
        cfg = self.cfg
        dt = 1.0 if self._t_last is None else max(t - self._t_last, 0.0)
        self._t_last = t
        out = np.full(self.n_lines, np.nan)
        events: list[tuple[str, int, str]] = []
        n_in = np.bincount(self.cell_line, weights=~cut_out, minlength=self.n_lines)
        for li, ln in enumerate(self.lines):
            if np.isnan(ln.sp_ka):
                rb = float(sp_readback_ka[li])
                ln.sp_ka = rb if np.isfinite(rb) else ln.target_ka
                ln.sp_ref_ka = ln.sp_ka
            if not line_ok[li]:
                continue
            i_m = float(i_meas_ka[li])
            if tripped[li]:
                if ln.mode != LineMode.TRIPPED:
                    events.append(("rectifier_trip", li, f"line {li} tripped at {i_m:.1f} kA"))
                ln.mode = LineMode.TRIPPED
                ln.sp_ka = min(cfg.restart_start_ka, ln.target_ka)
                ln.trim_ka = 0.0
                out[li] = ln.sp_ka if remote[li] else np.nan
                continue
            if ln.mode == LineMode.TRIPPED:
                ln.mode = LineMode.RESTART
                ln.sp_ka = max(min(cfg.restart_start_ka, ln.target_ka), min(i_m, ln.sp_ka))
                events.append(("rectifier_restart", li, f"ramp from {ln.sp_ka:.1f} kA"))

            # steady target: fixed current or power schedule
            u0 = n_in[li] * self.e0 + float(ae_excess_v[li])
            u_m = float(u_line_v[li])
            r_s = (u_m - u0) / (i_m * 1e3) if i_m > 1.0 and u_m > u0 else np.nan
            target = ln.target_ka
            mw = self.power_target_mw(li, t)
            ln.power_mw = mw
            if mw is not None and np.isfinite(r_s):
                target = current_for_power_ka(mw, u0, r_s)
            target = _clip(float(target), cfg.min_ka, cfg.max_ka)
            # headroom against the rectifier voltage limit
            cap = np.inf
            if np.isfinite(r_s) and r_s > 0:
                u_avail = self.voltage_limit_v[li] * (1.0 - cfg.regulation_margin) - cfg.headroom_v
                cap = (u_avail - u0) / r_s / 1e3
            self.cap_ka[li] = cap
            fast_down = False
            if target > cap:
                target = max(cap, 0.0)
                fast_down = True

            # cut-out / cut-in sequence
            target, fast, ev = self._cut_sequence(li, ln, t, i_m, target, cut_out)
            fast_down |= fast
            events += ev

            up_rate = cfg.restart_ramp_ka_per_min if ln.mode == LineMode.RESTART else cfg.ramp_ka_per_min
            down_rate = cfg.ramp_down_fast_ka_per_min if fast_down else cfg.ramp_ka_per_min
            d = _clip(target - ln.sp_ka, -down_rate * dt / 60.0, up_rate * dt / 60.0)
            ln.sp_ka += d
            if ln.mode == LineMode.RESTART and abs(ln.sp_ka - target) < 1e-6:
                ln.mode = LineMode.NORMAL
                events.append(("ramp_done", li, f"line {li} at {ln.sp_ka:.1f} kA"))

            # integral trim only in steady state
            if abs(d) < 1e-9 and ln.mode == LineMode.NORMAL and cfg.trim_gain_per_s > 0 and i_m > 1.0:
                err = ln.sp_ka - i_m
                if abs(err) < 0.02 * ln.sp_ka:
                    lim = cfg.trim_limit * ln.sp_ka
                    ln.trim_ka = _clip(ln.trim_ka + cfg.trim_gain_per_s * err * dt, -lim, lim)
            elif ln.mode != LineMode.NORMAL:
                ln.trim_ka = 0.0

            if abs(ln.sp_ka - ln.sp_ref_ka) > 0.005 * max(ln.sp_ref_ka, 1.0):
                ln.sp_ref_ka = ln.sp_ka
                ln.last_change_t = t
            sp_out = _clip(ln.sp_ka + ln.trim_ka, 0.0, cfg.max_ka * (1 + cfg.trim_limit))
            out[li] = sp_out if remote[li] else np.nan
        return out, events

    def _cut_sequence(
        self, li: int, ln: _Line, t: float, i_m: float, target: float, cut_out: np.ndarray
    ) -> tuple[float, bool, list[tuple[str, int, str]]]:
        cfg = self.cfg
        events: list[tuple[str, int, str]] = []
        if not ln.queue:
            return target, False, events
        req = ln.queue[0]
        want_out = req.action == "out"
        if ln.mode not in (LineMode.CUT_DOWN, LineMode.CUT_WAIT):
            if bool(cut_out[req.cell]) == want_out:  # nothing to do
                ln.queue.pop(0)
                events.append((f"cut_{req.action}_skipped", req.cell, "cell already in requested state"))
                return target, False, events
            ln.mode = LineMode.CUT_DOWN
            req.restore_ka = ln.sp_ka
            events.append((f"cut_{req.action}_start", req.cell, f"ramp to {cfg.cutout_current_ka:.1f} kA"))
        low = min(cfg.cutout_current_ka, target)
        if ln.mode == LineMode.CUT_DOWN:
            if abs(ln.sp_ka - low) < 1e-6 and abs(i_m - low) <= cfg.cutout_tolerance_ka:
                ln.mode = LineMode.CUT_WAIT
                req.t_permit = t
                events.append((f"cut_{req.action}_permit", req.cell, f"line at {i_m:.1f} kA"))
            elif t - req.t_request > cfg.cutout_timeout_s:
                return self._cut_finish(ln, req, t, ok=False, events=events)
            return low, True, events
        # CUT_WAIT
        if bool(cut_out[req.cell]) == want_out:
            self.cutouts_done += 1
            return self._cut_finish(ln, req, t, ok=True, events=events)
        if t - req.t_permit > cfg.cutout_timeout_s:
            return self._cut_finish(ln, req, t, ok=False, events=events)
        return low, True, events

    def _cut_finish(
        self, ln: _Line, req: _CutRequest, t: float, ok: bool, events: list[tuple[str, int, str]]
    ) -> tuple[float, bool, list[tuple[str, int, str]]]:
        ln.queue.pop(0)
        ln.mode = LineMode.RESTART if not ln.queue else LineMode.NORMAL
        if ok:
            events.append((f"cut_{req.action}_done", req.cell, f"after {t - req.t_request:.0f} s, ramping back"))
        else:
            events.append((f"cut_{req.action}_timeout", req.cell, "no switch confirmation: ramping back"))
        return self.cfg.cutout_current_ka, False, events
