"""The optimiser on a bench (the reference plant with exchangers, 2 cells per line in
lines of true size, dt 2 s; the check at dt 1 s): a price plan costs less than flat at
the same metal within 2 % and keeps every cell in its heat-balance bands; the grid
requests are met or refused with the binding constraint named, and each refusal is
confirmed by running the request plainly on the twin; the plan file validates; a plant
that departs from the plan is noticed and re-planned from its own state."""

from __future__ import annotations

import numpy as np
import pytest

from planner.optimise import Bands, optimise, violations
from planner.plan import load_plan
from planner.receding import departed, replan
from planner.report import to_plan
from planner.rollouts import Schedule, TwinModel, flat_schedule, line_sizes, reduced_config
from planner.scenarios import load_scenario
from tests.planner.planner_support import hx_plant, make_twin

BANDS = Bands()  # superheat 5-20 K, ledge >= 3 cm (sources in planner.optimise)


def _model(cpl: int = 2) -> TwinModel:
    return TwinModel.reduced(hx_plant(), make_twin, cpl)


def _check(sched: Schedule, sc, cpl: int = 2):
    """The plan and flat on the same cells at dt 1 s (a finer run than the planner's)."""
    plant = hx_plant()
    red = reduced_config(plant, cpl, dt_s=1.0)
    m = TwinModel(red, make_twin, weights=line_sizes(plant) / cpl)
    flat = m.rollout(flat_schedule(red, sched.n_steps), sc.price_eur_per_mwh)
    out = m.rollout(sched, sc.price_eur_per_mwh)
    return out, flat, violations(out, flat, sc, BANDS, red)[0]


def test_price_day_plan_cheaper_same_metal_in_band(tmp_path) -> None:
    sc = load_scenario("price_day_ahead_48h").truncated(24)
    res = optimise(_model(), sc)
    assert res.feasible, res.log
    out, flat, msgs = _check(res.schedule, sc)
    assert not msgs, msgs
    assert out.cost_eur < flat.cost_eur
    assert out.metal_total_t == pytest.approx(flat.metal_total_t, rel=0.02)
    assert out.ae_count <= flat.ae_count + BANDS.ae_allowance
    # every cell, every hour: superheat 5-20 K, ledge >= 3 cm;
    # an hour with an AE on a cell is the AE criterion's (an AE heats its cell past 20 K)
    no_ae = ~out.ae_in_step
    assert out.superheat_mean_k.min() >= 5.0 and out.superheat_mean_k[no_ae].max() <= 20.0
    assert out.ledge_min_cm.min() >= 3.0
    # energy moved out of the evening peak (17-21 h) into the cheap night
    e = out.energy_mwh.sum(axis=1) - flat.energy_mwh.sum(axis=1)
    assert e[17:21].sum() < 0 < e[0:6].sum()
    # the plan file the daemon executes
    plant = hx_plant()
    plan = to_plan(res, [ln.name for ln in plant.lines], True)
    back = load_plan(plan.save(tmp_path / "plan.json"))
    assert len(back.steps) == 24 and back.lines == ["Line1", "Line2", "Line3"]
    cur = np.array([s.line_current_ka for s in back.steps])
    hx = np.array([s.hx_duty_kw for s in back.steps])
    r = plant.lines[0].rectifier
    assert cur.min() >= r.min_ka and cur.max() <= r.max_ka
    assert hx.max() <= plant.cell.heat_exchanger_max_kw


def test_plus25_refused_by_the_rectifier() -> None:
    """+25 % needs ~150 kA with the cell voltage held; the rectifiers stop at 130 kA."""
    sc = load_scenario("request_plus25_48h").truncated(12)
    res = optimise(_model(), sc)
    assert not res.feasible and res.refused
    assert "max_ka 130" in res.binding
    cap = (hx_plant().lines[0].rectifier.max_ka / 120.0 - 1.0) * 100.0  # +8.3 % more current
    assert 0.0 < res.most_pct <= cap + 1.0


def test_minus25_refused_by_superheat_and_the_twin_agrees() -> None:
    sc = load_scenario("request_minus25_48h").truncated(12)
    res = optimise(_model(), sc)
    if res.feasible:  # met: then the twin check must hold it
        _out, _flat, msgs = _check(res.schedule, sc)
        assert not msgs
        return
    assert "superheat" in res.binding and -25.0 < res.most_pct < 0.0
    # plainly on the twin: 90 kA with the exchangers insulating as much as they can
    n = 12
    sched = Schedule(3600.0, np.full((n, 3), 90.0), np.full((n, 3), -80.0))
    out, _flat, msgs = _check(sched, sc)
    assert out.superheat_mean_k.min() < BANDS.superheat_min_k, "the refusal is right: the bath runs too cold"


def test_full_shed_refused_or_met_and_the_plant_recovers() -> None:
    sc = load_scenario("request_shed_1h")  # 24 h: the shed at h 2, a day to make up the metal
    res = optimise(_model(), sc)
    if res.feasible:
        _out, _flat, msgs = _check(res.schedule, sc)
        assert not msgs
        return
    assert "superheat" in res.binding and -100.0 < res.most_pct < 0.0
    # plainly on the twin: zero current at h 2, back to 120 kA after one hour
    cur = np.full((24, 3), 120.0)
    cur[2] = 0.0
    out, _flat, msgs = _check(Schedule(3600.0, cur, np.zeros((24, 3))), sc)
    assert out.superheat_min_k[2].min() < 1.0, "the refusal is right: the bath reaches its liquidus"
    # and recovers: every cell back in the 5-20 K band within 8 h of the shed, ledge kept
    assert out.superheat_mean_k[11].min() >= 5.0 and out.superheat_mean_k[11].max() <= 20.0
    assert out.ledge_min_cm.min() >= 3.0


def test_departure_noticed_and_replanned() -> None:
    """A plant whose Line1 rectifier stays 10 kA under the plan from h 3 on departs from the
    prediction at h 3 (not before) and is re-planned from its own state."""
    sc = load_scenario("price_day_ahead_48h").truncated(8)
    res = optimise(_model(), sc)
    plant_cfg = reduced_config(hx_plant(), 2, dt_s=1.0)
    plant = make_twin(plant_cfg, False)
    w = line_sizes(hx_plant()) / 2.0
    from twin.cell_layout import A_E_ELEC

    first = None
    for k in range(sc.n_steps):
        e0 = plant.state[:, A_E_ELEC].copy()
        for ln in range(3):
            sp = res.schedule.current_ka[k, ln] - (10.0 if (ln == 0 and k >= 3) else 0.0)
            plant.set_line_setpoint(ln, sp)
            plant.set_heat_exchanger(plant.cell_line == ln, res.schedule.hx_kw[k, ln] * 1e3)
        plant.advance(3600.0)
        de = (plant.state[:, A_E_ELEC] - e0) * w[plant.cell_line] / 3.6e9
        e = np.bincount(plant.cell_line, weights=de, minlength=3)
        sh = np.array([plant.truth()["superheat_k"][plant.cell_line == ln].mean() for ln in range(3)])
        d = departed(res.outcome, k, e, sh)
        if d is not None:
            first = d
            break
    assert first is not None and first.step == 3 and first.line == 0 and "energy" in first.what
    again = replan(plant, make_twin, sc, first.step + 1, cells_per_line=2)
    assert again.schedule.n_steps == sc.n_steps - first.step - 1
    assert again.feasible, again.log
