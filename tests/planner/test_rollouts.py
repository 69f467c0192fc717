"""Rollouts on the twin: the energy and metal the planner counts are the physics' own —
MWh = sum of U·I·t over the cells, metal by Faraday's law at the reference plant's
published current efficiency — and the reduced model (a few cells per line, dt 2 s)
agrees with the 1-s run within the error docs/planning.md states."""

from __future__ import annotations

import numpy as np
import pytest

from planner.rollouts import TwinModel, flat_schedule, line_sizes, reduced_config
from tests.planner.planner_support import hx_plant, make_twin

#: Faraday: 1 kA·h makes 0.3356 kg of aluminium at 100 % CE (M/(3F))
KG_PER_KAH = 26.98 / (3 * 96485.0) * 3.6e6 / 1e3
#: the reference plant: CE ~0.955, 13.28 MWh/t (ALRO public figures, config/plant_reference.toml)
CE_REF, MWH_PER_T_REF = 0.955, 13.28


def test_energy_is_sum_of_u_i_t_and_metal_follows_faraday() -> None:
    plant = hx_plant()
    red = reduced_config(plant, 2, dt_s=1.0)
    model = TwinModel(red, make_twin, weights=line_sizes(plant) / 2.0)
    out = model.rollout(flat_schedule(red, 2), np.full(2, 100.0))
    # independently: the same start, stepped 10 s at a time, U·I·t from the measurements
    model.restore()
    t = model.twin
    e_j = np.zeros(len(red.lines))
    for _ in range(720):
        t.advance(10.0)
        m = t.measurements()
        u_i = m["cell_voltage_v"] * m["line_current_ka"][t.cell_line] * 1e3 * 10.0
        e_j += np.bincount(t.cell_line, weights=u_i * model.weights[t.cell_line], minlength=len(red.lines))
    assert out.energy_mwh.sum(axis=0) == pytest.approx(e_j / 3.6e9, rel=0.01)
    assert out.cost_eur == pytest.approx(100.0 * out.energy_total_mwh)
    hours, cells = 2.0, plant.operating_cells
    faraday_t = cells * 120.0 * hours * KG_PER_KAH * CE_REF / 1e3
    assert out.metal_total_t == pytest.approx(faraday_t, rel=0.02)
    assert out.kwh_per_kg == pytest.approx(MWH_PER_T_REF, rel=0.03)


def test_reduced_model_dt2_against_dt1() -> None:
    """The error accepted for the optimiser's inner loop: 12 h flat, dt 2 s against 1 s on
    the same cells: energy and metal within 0.5 %, every cell's superheat within 1 K."""
    plant = hx_plant()
    outs = []
    for dt in (1.0, 2.0):
        red = reduced_config(plant, 2, dt_s=dt)
        outs.append(TwinModel(red, make_twin, weights=line_sizes(plant) / 2.0).rollout(flat_schedule(red, 12)))
    fine, coarse = outs
    assert coarse.energy_total_mwh == pytest.approx(fine.energy_total_mwh, rel=0.005)
    assert coarse.metal_total_t == pytest.approx(fine.metal_total_t, rel=0.005)
    assert np.abs(coarse.superheat_mean_k - fine.superheat_mean_k).max() < 1.0
