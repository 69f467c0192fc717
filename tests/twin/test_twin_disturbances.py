"""Anode effects that arise as in plants, and the reference plant's energy figure (issue 13).

Targets, from published plant data:

- IAI anode-effect surveys (point-fed prebake, PFPB, 2000s–2010s results as summarised by
  Marks, LM 2009, and the IAI survey reports): frequencies of order 0.1 AE per pot-day
  with durations of tens of seconds to a couple of minutes under automatic kill; we accept
  0.03–0.3 AE/pot-day, a mean duration of 20–120 s and 0.01–0.3 AE-minutes per cell-day
  for a line under plain PLC automation, with the AEs spread over many cells.
- ALRO Slatina (the reference plant's seed): 13.28 MWh/t DC at CE > 95.5 %
  (docs/domain.md §5a), ± 1.5 %.

The AEs come from the feed disturbances (``twin.disturbances``): crusted feeder holes and
empty hoppers that the PLC, feeding by tracking, does not see until the resistance rises.
"""

from __future__ import annotations

import numpy as np
import pytest

from twin.cell_layout import A_AE_N, A_AE_S, A_CHARGE, A_E_ELEC, A_METAL
from twin.config import PlantConfig, load_plant_config
from twin.potline import Potline


def _reference_room(days: float, seed: int | None = None) -> tuple[Potline, np.ndarray]:
    """The reference plant's first potroom (132 cells, its line's other room as aggregate
    load) for ``days`` after one day of settling; returns the plant and the state after settling."""
    ref = load_plant_config()
    line = ref.lines[0].model_copy(update={"rooms": ref.lines[0].rooms[:1], "rest_of_line_cells": 132})
    cfg = ref.model_copy(update={"lines": [line]})
    pl = Potline(cfg, seed=seed, parallel=True)
    pl.advance(86400)
    s0 = pl.state.copy()
    pl.advance(days * 86400)
    return pl, s0


@pytest.fixture(scope="module")
def room() -> tuple[Potline, np.ndarray]:
    return _reference_room(2.0)


@pytest.mark.timeout(900)
def test_ae_frequency_and_duration_in_the_iai_range(room) -> None:
    pl, s0 = room
    s = pl.state
    n, days = pl.layout.n_cells, 2.0
    aes = s[:, A_AE_N] - s0[:, A_AE_N]
    ae_s = s[:, A_AE_S] - s0[:, A_AE_S]
    freq = aes.sum() / (n * days)
    mean_s = ae_s.sum() / max(aes.sum(), 1.0)
    aem = ae_s.sum() / 60.0 / (n * days)
    assert 0.03 <= freq <= 0.3, freq
    assert 20.0 <= mean_s <= 120.0, mean_s
    assert 0.01 <= aem <= 0.3, aem
    with_ae = np.count_nonzero(aes)
    assert with_ae >= 0.5 * aes.sum() and with_ae >= 10  # spread over the line, not a few cells
    assert pl.validity()["invalid_share"] < 0.01


@pytest.mark.timeout(900)
def test_reference_plant_specific_energy_is_alro(room) -> None:
    """ALRO 13.28 MWh/t (docs/domain.md §5a) within 1.5 %, at CE 0.95–0.965, with the AEs
    and operations included, and the identity kWh/kg = 2.98·U/CE."""
    pl, s0 = room
    d = pl.state - s0
    energy_kwh = d[:, A_E_ELEC].sum() / 3.6e6
    metal = d[:, A_METAL].sum()
    ce = metal / (d[:, A_CHARGE].sum() * 9.3206e-8)
    assert energy_kwh / metal == pytest.approx(13.28, rel=0.015)
    assert 0.95 <= ce <= 0.965
    u_mean = d[:, A_E_ELEC].sum() / d[:, A_CHARGE].sum()
    assert energy_kwh / metal == pytest.approx(2.98 * u_mean / ce, rel=0.01)


def test_disturbances_are_seeded_and_spread_per_cell() -> None:
    """Same seed, same disturbances; another seed, others. Cells differ in their feed (shot
    mass), sludge share and blockage proneness (a per-cell spread the controller does not know)."""
    cfg = PlantConfig.single_room(32, seed=5, disturbances={"feeder_blocks_per_day": 6.0})
    a, b, c = (Potline(cfg, seed=s, parallel=False) for s in (5, 5, 6))
    for pl in (a, b, c):
        pl.advance(6 * 3600)
    np.testing.assert_array_equal(a.state, b.state)
    assert not np.array_equal(a.state, c.state)
    from twin.cell_layout import P_BLOCK_RATE, P_SHOT_BIAS, P_SLUDGE_R

    for col in (P_SHOT_BIAS, P_SLUDGE_R, P_BLOCK_RATE):
        assert np.std(a.params[:, col]) > 0.0
    assert 0.97 <= a.params[:, P_SHOT_BIAS].mean() <= 1.03


def test_crusted_feeder_hole_ends_in_an_ae_the_plc_cannot_prevent() -> None:
    """One of three feeder holes crusted for hours: the PLC's overfeed (1.4 × 2/3 of nominal)
    cannot keep up, the resistance keeps rising and the cell goes on AE; the AE brings the
    crew, who clear the hole (docs/domain.md §2: most AEs of point-fed lines come from feed
    that does not arrive)."""
    from twin.cell_layout import S_BLOCK_LEFT

    pl = Potline(PlantConfig.single_room(8, seed=3, disturbances={"enabled": False}), parallel=False)
    pl.set_operations(slice(None), False)
    pl.advance(3 * 3600)
    k = 2
    pl.state[k, S_BLOCK_LEFT] = 12 * 3600.0  # one of its three feeder holes (cell.n_feeders)
    for _ in range(8 * 6):
        pl.advance(600)
        if pl.truth()["ae_count"][k] > 0:
            break
    assert pl.truth()["ae_count"][k] >= 1
    assert pl.truth()["ae_count"].sum() == pl.truth()["ae_count"][k]  # the healthy cells: none
    assert pl.state[k, S_BLOCK_LEFT] <= pl.config.disturbances.crew_response_min * 60.0


@pytest.mark.timeout(900)
def test_return_to_full_current_after_a_day_at_minus_10_percent_brings_no_ae_storm() -> None:
    """A line brought back to 120 kA after a day at −10 % (a power-modulation day) takes its
    current back within the rectifier's ramp and sees AEs at the plant's usual rate, not a
    storm. Target (IAI surveys as above): under plain PLC automation a disturbed period may
    run above the line's usual 0.03–0.3 AE/pot-day, but not beyond three times its upper end
    (0.9 AE/pot-day) over the two hours after the return, and every line is back within
    0.5 % of its setpoint (the rectifier's regulation, docs/domain.md §4).

    Before the PLC's tracking ended its underfeed on a line-current disturbance, the two
    264-cell lines sat at their rectifiers' 1,250 V limit after the return, every AE dipped
    their current and re-armed every cell's underfeed, and 660 cells made ≈ 500 AEs in 2 h
    (≈ 9 AE/pot-day)."""
    cfg = load_plant_config()
    pl = Potline(cfg, seed=0, parallel=True)
    n = pl.layout.n_lines
    pl.advance(4 * 3600)
    i0 = pl.measurements()["line_setpoint_ka"].copy()
    for li in range(n):
        pl.set_line_setpoint(li, float(i0[li]) * 0.9)
    pl.advance(24 * 3600)
    for li in range(n):
        pl.set_line_setpoint(li, float(i0[li]))
    ae0 = pl.totals()["ae_count"]
    worst = []
    for _ in range(12):  # 2 h in 10 min steps
        pl.advance(600)
        m = pl.measurements()
        worst.append(float(np.max(np.abs(m["line_current_ka"] / i0 - 1.0))))
    aes = pl.totals()["ae_count"] - ae0
    cells = cfg.operating_cells  # room 6 is idle (cut out)
    per_pot_day = aes / (cells * 2.0 / 24.0)
    assert per_pot_day <= 0.9, f"{aes} AEs on {cells} cells in the 2 h after the return: {per_pot_day:.2f} AE/pot-day"
    assert worst[-1] <= 0.005, f"line current {worst[-1]:.1%} off its setpoint 2 h after the return"
