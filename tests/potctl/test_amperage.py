"""Amperage control against a synthetic series line (docs/domain.md §4).

Line: N cells, each U = E0 + R·I with E0 = 1.65 V and R = 21.7 µΩ (4.25 V at 120 kA),
busbar 300 µΩ; ``U_line = Σ U_k + I·R_bus``. The rectifier follows its setpoint with a
first-order lag (reactor loop ≈ 1 s) and cannot exceed its DC voltage limit; an AE adds
a constant ≈ 26 V on its cell.
"""

from __future__ import annotations

import numpy as np
import pytest

from potctl.amperage import AmperageController, LineMode, current_for_power_ka
from potctl.config import AmperageConfig

E0 = 1.65
R_CELL = 21.7e-6
R_BUS = 300e-6


class SyntheticLine:
    def __init__(self, n_cells: int, u_max: float = 1250.0, i0: float = 120.0) -> None:
        self.n = n_cells
        self.u_max = u_max
        self.i = i0
        self.sp = i0
        self.ae_v = 0.0
        self.tripped = False
        self.cut = np.zeros(n_cells, dtype=bool)

    def u_line(self, i_ka: float) -> float:
        n_in = int((~self.cut).sum())
        return n_in * E0 + self.ae_v + i_ka * 1e3 * (n_in * R_CELL + R_BUS)

    def step(self, dt: float, sp: float) -> None:
        if np.isfinite(sp):
            self.sp = sp
        if self.tripped:
            self.i = 0.0
            return
        n_in = int((~self.cut).sum())
        i_lim = (self.u_max - n_in * E0 - self.ae_v) / (n_in * R_CELL + R_BUS) / 1e3
        self.i += (min(self.sp, i_lim) - self.i) * (1 - np.exp(-dt / 1.0))

    def meas(self):
        a = lambda x: np.array([x])  # noqa: E731
        return dict(
            i_meas_ka=a(self.i),
            u_line_v=a(self.u_line(self.i) if not self.tripped else 0.0),
            sp_readback_ka=a(self.sp),
            remote=a(True),
            tripped=a(self.tripped),
            line_ok=a(True),
            cut_out=self.cut,
        )


def run(ctl: AmperageController, line: SyntheticLine, t0: float, t1: float, dt: float = 1.0, ae_v: float = 0.0):
    hist = []
    evs = []
    t = t0
    while t < t1:
        sp, ev = ctl.step(t, ae_excess_v=np.array([line.ae_v]), **line.meas())
        evs += [(t, *e) for e in ev]
        for kind, cell, _ in ev:
            if kind == "cut_out_permit":
                line.cut[cell] = True
            elif kind == "cut_in_permit":
                line.cut[cell] = False
        line.step(dt, sp[0])
        hist.append((t, sp[0], line.i, line.u_line(line.i)))
        t += dt
    return np.array(hist), evs


def make(n: int = 264, **kw) -> tuple[AmperageController, SyntheticLine]:
    cfg = AmperageConfig(**kw)
    return AmperageController(np.array([120.0]), np.zeros(n, dtype=np.int64), cfg), SyntheticLine(n)


def test_current_for_power_inverts_the_line_characteristic():
    n = 264
    u0 = n * E0
    r = n * R_CELL + R_BUS
    p_mw = (u0 + r * 120e3) * 120e3 / 1e6  # ≈ 139 MW
    assert current_for_power_ka(p_mw, u0, r) == pytest.approx(120.0)
    i90 = current_for_power_ka(0.9 * p_mw, u0, r)
    assert (u0 + r * i90 * 1e3) * i90 * 1e3 / 1e6 == pytest.approx(0.9 * p_mw)
    # P = U0·I + R·I²: a 10 % power cut needs less than a 10 % current cut
    assert 0.9 * 120.0 < i90 < 0.95 * 120.0


def test_steady_state_current_within_half_a_percent():
    ctl, line = make()
    hist, _ = run(ctl, line, 0.0, 1800.0)
    steady = hist[600:]
    assert np.all(np.abs(steady[:, 2] - 120.0) <= 0.005 * 120.0)


def test_target_change_is_ramp_limited():
    ctl, line = make(ramp_ka_per_min=3.0)
    run(ctl, line, 0.0, 60.0)
    ctl.set_target(0, 108.0)
    hist, _ = run(ctl, line, 60.0, 600.0)
    d = np.diff(hist[:, 1])
    assert np.all(np.abs(d) <= 3.0 / 60.0 + 1e-9)
    reach = hist[np.argmax(hist[:, 1] <= 108.0 + 1e-9), 0]
    assert reach == pytest.approx(60.0 + 12.0 / 3.0 * 60.0, abs=2.0)  # 12 kA at 3 kA/min = 4 min


def test_power_modulation_step_of_ten_percent():
    """Demand response: −10 % power at t = 600 s, followed within the ramp limit, the drawn
    power settles on the target and the current stays within ±0.5 % of its setpoint."""
    ctl, line = make(ramp_ka_per_min=3.0)
    hist0, _ = run(ctl, line, 0.0, 600.0)
    p0 = hist0[-1, 2] * hist0[-1, 3] / 1e3  # MW
    ctl.set_power_schedule(0, [(600.0, 0.9 * p0), (4200.0, None)])
    hist, _ = run(ctl, line, 600.0, 4200.0)
    assert np.all(np.abs(np.diff(hist[:, 1])) <= 3.0 / 60.0 + 1e-9)
    late = hist[hist[:, 0] > 1800.0]
    p = late[:, 2] * late[:, 3] / 1e3
    assert np.all(np.abs(p / (0.9 * p0) - 1.0) < 0.005)
    assert np.all(np.abs(late[:, 2] / late[:, 1] - 1.0) < 0.005)
    # schedule ends: back to the current target
    hist2, _ = run(ctl, line, 4200.0, 6000.0)
    assert hist2[-1, 2] == pytest.approx(120.0, rel=0.005)


def test_headroom_lowers_current_when_cells_are_in_ae():
    """A line that needs 1159 V at 120 kA under a 1250 V limit: with three cells in AE
    (+78 V) the controller lowers the current so one more AE still fits."""
    ctl, line = make()
    run(ctl, line, 0.0, 300.0)
    line.ae_v = 3 * 26.0
    hist, _ = run(ctl, line, 300.0, 600.0)
    u_avail = 1250.0 * (1 - 0.01) - 35.0
    assert hist[-1, 1] < 120.0
    assert hist[-1, 3] <= u_avail + 0.5
    assert hist[-1, 3] + 26.0 <= 1250.0  # one more AE would still be regulated
    line.ae_v = 0.0
    hist, _ = run(ctl, line, 600.0, 1800.0)
    assert hist[-1, 2] == pytest.approx(120.0, rel=0.005)


def test_trip_parks_setpoint_and_restart_ramps_slowly():
    ctl, line = make(restart_start_ka=60.0, restart_ramp_ka_per_min=1.0)
    run(ctl, line, 0.0, 60.0)
    line.tripped = True
    hist, evs = run(ctl, line, 60.0, 120.0)
    assert hist[-1, 1] == 60.0
    assert any(e[1] == "rectifier_trip" for e in evs)
    line.tripped = False
    hist, evs = run(ctl, line, 120.0, 120.0 + 3900.0)
    d = np.diff(hist[:, 1])
    assert np.all(d <= 1.0 / 60.0 + 1e-9)
    t_done = next(e[0] for e in evs if e[1] == "ramp_done")
    assert t_done == pytest.approx(120.0 + 60.0 * 60.0, abs=5.0)  # 60 kA at 1 kA/min


def test_cut_out_lowers_current_issues_permit_and_restores():
    ctl, line = make(cutout_current_ka=60.0, ramp_down_fast_ka_per_min=30.0, restart_ramp_ka_per_min=2.0)
    run(ctl, line, 0.0, 60.0)
    ctl.request_cut(17, "out", 60.0)
    hist, evs = run(ctl, line, 60.0, 3000.0)
    kinds = [e[1] for e in evs]
    assert kinds[:3] == ["cut_out_start", "cut_out_permit", "cut_out_done"]
    t_permit = next(e[0] for e in evs if e[1] == "cut_out_permit")
    at_permit = hist[hist[:, 0] == t_permit][0]
    assert at_permit[2] <= 60.0 + 1.5  # current really lowered before shorting
    assert line.cut[17]
    assert hist[-1, 2] == pytest.approx(120.0, rel=0.005)  # restored
    assert ctl.lines[0].mode == LineMode.NORMAL
    # and back in
    ctl.request_cut(17, "in", 3000.0)
    run(ctl, line, 3000.0, 6000.0)
    assert not line.cut[17]
    assert ctl.cutouts_done == 2


def test_bad_power_schedule_is_rejected():
    ctl, _ = make()
    with pytest.raises(ValueError, match="power must be > 0"):
        ctl.set_power_schedule(0, [(0.0, -5.0)])
