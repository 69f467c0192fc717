"""RolloutBatch (issue 18 item 5): a rollout is the plant's own run of the same schedule, and a
coarse planning sub-step stays within the stated tolerances of 1 s."""

from __future__ import annotations

import numpy as np
import pytest

from potctl.offline import scaled_plant_config
from twin.potline import Potline
from twin.rollouts import PLANNING_DT_S, RolloutBatch

HX_KW = 80.0


def _config(dt_s: float = 1.0):
    """Two lines of 24 cells with shell heat exchangers of 80 kW installed."""
    cfg = scaled_plant_config(24, n_lines=2, seed=0)
    cell = cfg.cell.model_copy(update={"heat_exchanger_max_kw": HX_KW})
    return cfg.model_copy(update={"cell": cell, "dt_s": dt_s})


def _schedules(plant: Potline, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Three rollouts: nominal; −10 % on line 0 from step 1 with exchangers on 5 cells;
    +25 % then −25 % on both lines."""
    nom = plant.layout.nominal_current_ka
    n = plant.layout.n_cells
    ka = np.repeat(np.repeat(nom[None, None, :], n_steps, axis=1), 3, axis=0).astype(float)
    ka[1, 1:, 0] *= 0.9
    ka[2, : n_steps // 2] *= 1.25
    ka[2, n_steps // 2 :] *= 0.75
    hx = np.full((3, n_steps, n), np.nan)
    hx[1, 1:, :5] = 60.0
    hx[2, :, 10:12] = -40.0
    return ka, hx


def _plain_run(cfg, seed: int, warm_s: float, ka: np.ndarray, hx: np.ndarray, step_s: float, sub_s: float):
    """The same schedule on a plain Potline, stepped ``sub_s`` at a time: totals per planning
    step and the per-cell extremes seen after every sub-step."""
    p = Potline(cfg, seed=seed, kernel="serial")
    if warm_s:
        p.advance(warm_s)
    e0, m0 = p.totals()["energy_kwh"], p.totals()["metal_kg"]
    ae0 = p.totals()["ae_count"]
    n = p.layout.n_cells
    e_step, ledge_min, sh_min, sh_max = [], np.full(n, np.inf), np.full(n, np.inf), np.full(n, -np.inf)
    e_prev = e0
    for i in range(ka.shape[0]):
        for ln in range(ka.shape[1]):
            p.set_line_setpoint(ln, float(ka[i, ln]))
        on = ~np.isnan(hx[i])
        if on.any():
            p.set_heat_exchanger(np.flatnonzero(on), hx[i, on] * 1e3)
        for _ in range(int(round(step_s / sub_s))):
            p.advance(sub_s)
            t = p.truth()
            ledge_min = np.minimum(ledge_min, t["ledge_cm"])
            sh_min = np.minimum(sh_min, t["superheat_k"])
            sh_max = np.maximum(sh_max, t["superheat_k"])
        e_step.append(p.totals()["energy_kwh"] - e_prev)
        e_prev = p.totals()["energy_kwh"]
    tot = p.totals()
    return p, {
        "energy_kwh": tot["energy_kwh"] - e0,
        "metal_kg": tot["metal_kg"] - m0,
        "ae_count": tot["ae_count"] - ae0,
        "energy_kwh_per_step": np.asarray(e_step),
        "ledge_min_cm": ledge_min,
        "superheat_min_k": sh_min,
        "superheat_max_k": sh_max,
    }


def test_a_rollout_is_the_plants_own_run_of_its_schedule() -> None:
    """From a plant 10 min into its run, each of three rollouts (current steps, exchanger duty)
    ends with the cell states a plain Potline reaches on the same schedule, bit for bit, and
    reports the same energy, metal, AEs and per-cell extremes."""
    cfg = _config()
    plant = Potline(cfg, seed=7, kernel="serial")
    plant.advance(600.0)
    step_s, n_steps = 120.0, 4
    ka, hx = _schedules(plant, n_steps)
    res = RolloutBatch(plant, step_s=step_s).run(ka, hx)
    assert res.energy_kwh.shape == (3,) and res.ledge_min_cm.shape == (3, plant.layout.n_cells)
    for r in range(3):
        p, ref = _plain_run(cfg, 7, 600.0, ka[r], hx[r], step_s, 1.0)
        t = p.truth()
        assert np.array_equal(res.bath_temp_c[r], t["bath_temp_c"])
        assert np.array_equal(res.ledge_cm[r], t["ledge_cm"])
        assert np.array_equal(res.superheat_k[r], t["superheat_k"])
        assert np.array_equal(res.alumina_wt_pct[r], t["alumina_wt_pct"])
        assert res.energy_kwh[r] == pytest.approx(ref["energy_kwh"], rel=1e-9)
        assert res.metal_kg[r] == pytest.approx(ref["metal_kg"], rel=1e-9)
        assert res.ae_count[r] == ref["ae_count"]
        np.testing.assert_allclose(res.energy_kwh_per_step[r], ref["energy_kwh_per_step"], rtol=1e-9)
        np.testing.assert_array_equal(res.ledge_min_cm[r], ref["ledge_min_cm"])
        np.testing.assert_array_equal(res.superheat_min_k[r], ref["superheat_min_k"])
        np.testing.assert_array_equal(res.superheat_max_k[r], ref["superheat_max_k"])
    # the schedules matter: less current, less energy and metal than nominal
    assert res.energy_kwh[1] < res.energy_kwh[0] and res.metal_kg[1] < res.metal_kg[0]


def test_validity_flags_are_the_ones_the_plant_raised() -> None:
    """From a fresh plant, each rollout's per-cell flags are the flags the plain run raised
    since its start (``validity_flags_ever``); a 25 % overload for 20 min changes nothing here
    that the plant itself would not report."""
    cfg = _config()
    plant = Potline(cfg, seed=3, kernel="serial")
    ka, hx = _schedules(plant, 2)
    res = RolloutBatch(plant, step_s=600.0).run(ka, hx)
    for r in range(3):
        p, _ = _plain_run(cfg, 3, 0.0, ka[r], hx[r], 600.0, 600.0)
        np.testing.assert_array_equal(res.validity_flags[r], p.truth()["validity_flags_ever"])
    assert res.valid.shape == (3,)


def test_a_coarse_rollout_is_the_run_of_a_plant_configured_at_that_dt() -> None:
    """A plant configured at 1 s, rolled out at 10 s, gives the numbers of the same plant
    configured at 10 s (the per-step factors retimed alike), bit for bit. The rectifiers'
    loop gain is set low enough (0.1/s) that 10 s needs no cap."""

    def cfg_at(dt_s: float):
        cfg = _config(dt_s)
        lines = [
            ln.model_copy(update={"rectifier": ln.rectifier.model_copy(update={"bandwidth_per_s": 0.1})})
            for ln in cfg.lines
        ]
        return cfg.model_copy(update={"lines": lines})

    p10 = Potline(cfg_at(10.0), seed=5, kernel="serial")
    p1 = Potline(cfg_at(1.0), seed=5, kernel="serial")
    for name in ("state", "out", "rng", "rect", "rpar"):  # the same start state
        getattr(p1, name)[:] = getattr(p10, name)
    ka = np.repeat(p10.layout.nominal_current_ka[None, None, :] * 0.95, 2, axis=1)
    hx = np.full((1, 2, p10.layout.n_cells), np.nan)
    hx[0, 1, :4] = 50.0
    a = RolloutBatch(p1, step_s=600.0, dt_s=10.0).run(ka, hx)
    b = RolloutBatch(p10, step_s=600.0).run(ka, hx)
    np.testing.assert_array_equal(a.bath_temp_c, b.bath_temp_c)
    np.testing.assert_array_equal(a.alumina_wt_pct, b.alumina_wt_pct)
    assert a.energy_kwh[0] == b.energy_kwh[0]


def test_planning_step_stays_within_its_stated_tolerances() -> None:
    """Three rollouts of 4 h (current −10 %, ±25 %, exchangers) at ``PLANNING_DT_S`` against 1 s,
    with the tolerances ``twin.rollouts`` states for it (measured on 48 h of the reference plant):
    plant energy within 0.75 % and metal within 1.5 %, per-cell superheat within 1 K and bath
    temperature within 2 K on average, ledge within 6 % on average, no cell running away."""
    cfg = _config()
    plant = Potline(cfg, seed=11, kernel="serial")
    step_s, n_steps = 1800.0, 8
    ka, hx = _schedules(plant, n_steps)
    fine = RolloutBatch(plant, step_s=step_s, dt_s=1.0).run(ka, hx)
    coarse = RolloutBatch(plant, step_s=step_s, dt_s=PLANNING_DT_S).run(ka, hx)
    np.testing.assert_allclose(coarse.energy_kwh, fine.energy_kwh, rtol=0.0075)
    np.testing.assert_allclose(coarse.metal_kg, fine.metal_kg, rtol=0.015)
    assert np.mean(np.abs(coarse.superheat_k - fine.superheat_k)) < 1.0
    assert np.mean(np.abs(coarse.superheat_min_k - fine.superheat_min_k)) < 1.0
    assert np.mean(np.abs(coarse.bath_temp_c - fine.bath_temp_c)) < 2.0
    assert np.max(np.abs(coarse.bath_temp_c - fine.bath_temp_c)) < 30.0
    assert np.mean(np.abs(coarse.ledge_cm / fine.ledge_cm - 1.0)) < 0.06


def test_bad_schedules_are_refused_naming_what_was_expected() -> None:
    plant = Potline(_config(), seed=1, kernel="serial")
    with pytest.raises(ValueError, match="whole number of sub-steps"):
        RolloutBatch(plant, step_s=90.0, dt_s=60.0)
    batch = RolloutBatch(plant, step_s=60.0)
    with pytest.raises(ValueError, match=r"current_ka must have shape \[K, n_steps, 2\]"):
        batch.run(np.full((2, 3), 120.0))
    with pytest.raises(ValueError, match="finite"):
        batch.run(np.full((1, 1, 2), np.nan))
    with pytest.raises(ValueError, match="hx_duty_kw must have shape"):
        batch.run(np.full((1, 1, 2), 120.0), np.zeros((1, 1, 3)))
