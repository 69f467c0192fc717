"""Alumina feed control on a synthetic cell built from published numbers.

Synthetic cell (independent of the twin): 120 kA, 4 t of bath (docs/domain.md §2: 4–6 t),
Faraday consumption 1.673e-7·I·(CE/0.95) kg/s (§0) at the cell's own CE, two-pool
dissolution with 60 % of a shot to a slow pool at k = 0.002 s⁻¹ (Yao 2017, §1.1), and a
cell voltage that follows the Haupin table of §1.3 (3.696 V at 3 %, 3.813 V at 2 %,
3.907 V at 1.9 %, shifted to a 4.2 V cell) with a steep rise below 1.9 %; AE below
1.8 % (C_AE). Noise: AR(1), 15 mV, 20 s.
"""

from __future__ import annotations

import numpy as np
import pytest

from potctl.ae_prediction import AEPredictor
from potctl.config import FeedingConfig, PredictionConfig
from potctl.feeding import OVERFEED, UNDERFEED, FeedController, faraday_alumina_kg_s

I_KA = 120.0
SHOT_KG = 1.8
BATH_KG = 4000.0
C_AE = 1.8
# Haupin table (docs/domain.md §1.3), wt % -> V, shifted by +0.504 V to a 4.2 V cell at 3 %
TAB_C = np.array([1.80, 1.85, 1.90, 2.00, 3.00, 4.00, 6.00])
TAB_U = np.array([4.65, 4.52, 4.411, 4.317, 4.200, 4.182, 4.182])


def cell_voltage(c: np.ndarray) -> np.ndarray:
    return np.interp(c, TAB_C, TAB_U)


class SyntheticCells:
    def __init__(self, ce: np.ndarray, c0: float = 3.0, seed: int = 0) -> None:
        self.ce = np.asarray(ce, dtype=float)
        n = self.ce.size
        self.c = np.full(n, c0)
        self.slow = np.zeros(n)
        self.noise = np.zeros(n)
        self.rng = np.random.default_rng(seed)
        self.aes = 0

    def step(self, dt: float, shots: np.ndarray) -> np.ndarray:
        m = shots * SHOT_KG
        self.slow += 0.6 * m
        diss = self.slow * (1 - np.exp(-0.002 * dt))
        self.slow -= diss
        cons = faraday_alumina_kg_s(I_KA, 0.95) * (self.ce / 0.95) * dt
        self.c += 100.0 * (0.4 * m + diss - cons) / BATH_KG
        a = np.exp(-dt / 20.0)
        self.noise = a * self.noise + 0.015 * np.sqrt(1 - a * a) * self.rng.standard_normal(self.c.size)
        low = self.c < C_AE
        self.aes += int(low.sum())
        self.c[low] = 2.6  # operators would end it; count and go on
        return cell_voltage(self.c) + self.noise


def test_faraday_nominal_rate_matches_published_figures():
    """docs/domain.md §0: 1.205 kg/min at 120 kA and 3.01 kg/min at 300 kA (CE 0.95)."""
    assert faraday_alumina_kg_s(120.0) * 60 == pytest.approx(1.205, abs=0.001)
    assert faraday_alumina_kg_s(300.0) * 60 == pytest.approx(3.01, abs=0.005)
    # CE scales it linearly
    assert faraday_alumina_kg_s(120.0, 0.90) == pytest.approx(faraday_alumina_kg_s(120.0) * 0.90 / 0.95)


def test_shot_rate_follows_phase_factor_exactly():
    fc = FeedController(2, SHOT_KG, FeedingConfig(min_underfeed_s=86400.0, max_underfeed_s=172800.0))
    fc.phase[1] = OVERFEED
    fc.phase_end[1] = np.inf
    shots = np.zeros(2, dtype=np.int64)
    never = np.zeros(2, dtype=bool)
    for j in range(3600):
        s, _ = fc.step(float(j), 1.0, np.full(2, I_KA), np.ones(2, dtype=bool), never)
        shots += s
    nominal_shots = faraday_alumina_kg_s(I_KA) * 3600 / SHOT_KG  # 40.2 shots/h
    assert shots[0] == pytest.approx(0.70 * nominal_shots, abs=1.0)
    assert shots[1] == pytest.approx(1.45 * nominal_shots, abs=1.0)


def test_force_overfeed_extends_but_never_shortens():
    fc = FeedController(1, SHOT_KG)
    fc.force_overfeed(np.array([True]), 0.0, 3000.0)
    assert fc.phase[0] == OVERFEED and fc.phase_end[0] == 3000.0
    fc.force_overfeed(np.array([True]), 100.0, 600.0)
    assert fc.phase_end[0] == 3000.0
    fc.force_overfeed(np.array([True]), 2900.0, 600.0)
    assert fc.phase_end[0] == 3500.0


def run_tracking(ce: np.ndarray, hours: float, dt: float = 5.0, controlled: bool = True):
    n = ce.size
    cells = SyntheticCells(ce)
    fc = FeedController(n, SHOT_KG)
    pr = AEPredictor(n, PredictionConfig())
    valid = np.ones(n, dtype=bool)
    i = np.full(n, I_KA)
    shots = np.zeros(n, dtype=np.int64)
    cs = []
    acc = np.zeros(n)
    for j in range(int(hours * 3600 / dt)):
        t = j * dt
        u = cells.step(dt, shots)
        cs.append(cells.c.copy())
        if controlled:
            pr.update(t, (u - 1.65) / I_KA * 1e3, valid)
            high = pr.significant(fc.cfg.slope_switch_nohm_per_min)
            shots, changed = fc.step(t, dt, i, valid, high)
            pr.reset_reference(changed & (fc.phase == OVERFEED))
        else:  # fixed-rate feeding at the nominal rate
            acc += faraday_alumina_kg_s(I_KA) * dt / SHOT_KG
            shots = np.floor(acc).astype(np.int64)
            acc -= shots
    return cells, fc, np.array(cs)


def test_tracking_holds_alumina_and_learns_each_cells_demand():
    """Cells at CE 0.92, 0.95 and 0.97 (−3 %, 0, +2 % vs the assumed 0.95) for 2 days:
    no AE, alumina kept in the 2–4 % window, nominal rate adapted towards each cell's demand."""
    ce = np.array([0.92, 0.95, 0.97])
    cells, fc, cs = run_tracking(ce, 48.0)
    assert cells.aes == 0
    late = cs[len(cs) // 4 :]
    assert late.min() > 1.95
    assert late.max() < 4.5
    assert np.all((late.mean(axis=0) > 2.2) & (late.mean(axis=0) < 3.5))
    assert fc.cycles_adapted >= 6
    # adaptation moves the right way for each cell (demand ratio 0.968, 1.0, 1.021)
    assert fc.adapt[0] < fc.adapt[2]
    np.testing.assert_allclose(fc.adapt, ce / 0.95, atol=0.045)
    assert (fc.switch_reason == 1).any()


def test_fixed_rate_feeding_drifts_into_anode_effects():
    """The open-loop baseline: a cell that consumes 2 % more than the fixed rate runs dry."""
    cells, _, _cs = run_tracking(np.array([0.97]), 48.0, controlled=False)
    assert cells.aes >= 1


def test_underfeed_switches_on_time_limit_and_lowers_adaptation():
    cfg = FeedingConfig(max_underfeed_s=3600.0, min_underfeed_s=600.0)
    fc = FeedController(1, SHOT_KG, cfg, t0=0.0)
    fc.phase_since[:] = 0.0
    never = np.zeros(1, dtype=bool)
    for j in range(3601):
        fc.step(float(j), 1.0, np.array([I_KA]), np.ones(1, dtype=bool), never)
    assert fc.phase[0] == OVERFEED and fc.switch_reason[0] == 2
    assert fc.adapt[0] < 1.0
    # back to underfeed after the overfeed time
    for j in range(3601, 3602 + int(cfg.overfeed_s)):
        fc.step(float(j), 1.0, np.array([I_KA]), np.ones(1, dtype=bool), never)
    assert fc.phase[0] == UNDERFEED


def test_prediction_alarm_well_ahead_of_ae_when_feeding_runs_short():
    """A cell left on 70 % of its demand (a stuck feeder, no tracking): the predictor raises
    its alarm at least 10 min before the alumina reaches C_AE; none of the healthy cells
    (fed at their demand, alumina flat) alarms."""
    n = 4
    cells = SyntheticCells(np.full(n, 0.95), c0=3.2, seed=3)
    pr = AEPredictor(n, PredictionConfig())
    valid = np.ones(n, dtype=bool)
    acc = np.zeros(n)
    dt = 5.0
    share = np.array([0.70, 1.0, 1.0, 1.0])  # cell 0 starves
    t_alarm = None
    tta_at_alarm = None
    t_ae = None
    shots = np.zeros(n, dtype=np.int64)
    for j in range(int(8 * 3600 / dt)):
        t = j * dt
        before = cells.aes
        u = cells.step(dt, shots)
        if cells.aes > before and t_ae is None:
            t_ae = t
            break
        new = pr.update(t, (u - 1.65) / I_KA * 1e3, valid)
        if 0 in new and t_alarm is None:
            t_alarm = t
            tta_at_alarm = pr.time_to_ae_s[0]
        acc += share * faraday_alumina_kg_s(I_KA) * dt / SHOT_KG
        shots = np.floor(acc).astype(np.int64)
        acc -= shots
    assert t_ae is not None, "the starved cell reached C_AE"
    assert t_alarm is not None and t_ae - t_alarm >= 600.0
    assert tta_at_alarm < 3 * 3600.0
    assert not pr.alarm[1:].any() and pr.alarms_raised == 1


def test_anode_change_overfeeds_then_holds_nominal_then_tracks():
    from potctl.feeding import NOMINAL

    cfg = FeedingConfig(anode_change_overfeed_s=1800.0, anode_change_nominal_s=18000.0)
    fc = FeedController(1, SHOT_KG, cfg)
    never = np.zeros(1, dtype=bool)
    always = np.ones(1, dtype=bool)
    fc.anode_change(np.array([True]), 0.0)
    phases = {}
    for j in range(0, 21000, 10):
        # a steep slope must not end the nominal hold (tracking is off after an anode change)
        fc.step(float(j), 10.0, np.array([I_KA]), np.ones(1, dtype=bool), always if j > 2000 else never)
        phases[j] = int(fc.phase[0])
    assert phases[100] == OVERFEED and phases[1790] == OVERFEED
    assert phases[1810] == NOMINAL and phases[19790] == NOMINAL
    assert fc.rate_factor()[0] in (cfg.underfeed_factor, cfg.overfeed_factor)
    assert phases[19810] in (UNDERFEED, OVERFEED)


def test_cell_in_local_control_is_parked_then_resumes_with_nominal_feeding():
    """While the potroom PLC feeds a cell (local control) the tracker is parked: no phase
    switch however steep the slope, no adaptation from feeding it did not do, no shots.
    Taken back, the cell feeds at the nominal rate for ``takeover_nominal_s``, then tracks."""
    from potctl.feeding import NOMINAL

    cfg = FeedingConfig(takeover_nominal_s=3600.0, max_underfeed_s=7200.0)
    fc = FeedController(2, SHOT_KG, cfg)
    steep = np.ones(2, dtype=bool)
    local = np.array([True, False])
    shots_local = 0
    for j in range(0, 6 * 3600, 10):  # six hours in local, longer than any underfeed
        fc.hold_local(local, float(j))
        s, _ = fc.step(float(j), 10.0, np.full(2, I_KA), ~local, steep)
        shots_local += int(s[0])
    assert shots_local == 0 and fc.phase[0] == NOMINAL
    assert fc.adapt[0] == 1.0 and fc.switch_reason[0] == 0
    assert fc.switch_reason[1] != 0  # the remote cell tracked meanwhile
    t_last_local = 6 * 3600.0 - 10.0
    fed = 0
    for j in range(10, 3600, 10):  # taken back: nominal, whatever the slope says
        s, _ = fc.step(t_last_local + j, 10.0, np.full(2, I_KA), np.ones(2, dtype=bool), steep)
        fed += int(s[0])
        assert fc.phase[0] == NOMINAL
    assert fed * SHOT_KG == pytest.approx(faraday_alumina_kg_s(I_KA) * 3590.0, abs=2 * SHOT_KG)
    fc.step(t_last_local + 3600.0, 10.0, np.full(2, I_KA), np.ones(2, dtype=bool), steep)
    assert fc.phase[0] == UNDERFEED
