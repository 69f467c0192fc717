"""Mass and energy balances of the cell model close over a simulated week."""

from __future__ import annotations

import numpy as np
import pytest

from twin.cell_layout import A_AE_N, A_CONSUMED, A_METAL, A_TAPPED
from twin.config import PlantConfig
from twin.potline import Potline


@pytest.fixture(scope="module")
def week() -> Potline:
    """Eight cells for 7 days with feeding, beam moves, tapping, anode changes and AlF3,
    plus an AE forced on one cell and a cut-out/cut-in of another."""
    pl = Potline(PlantConfig.single_room(8, seed=23), parallel=False)
    pl.advance(86400)
    pl.force_alumina(2, 1.0)  # an anode effect
    pl.advance(3 * 86400)
    pl.cut_out(5)
    pl.advance(3600)
    pl.cut_in(5)
    pl.advance(3 * 86400 - 3600)
    return pl


@pytest.mark.parametrize("quantity", ["alumina", "alf3", "metal", "energy"])
def test_balance_closes(week: Potline, quantity: str) -> None:
    """In = out + accumulated, per cell, to 1e-6 of the quantity's throughput (issue #2)."""
    b = week.balances()
    key = f"{quantity}_j" if quantity == "energy" else f"{quantity}_kg"
    rel = np.abs(b[key]) / b[f"{quantity}_scale"]
    assert np.all(rel < 1e-6), rel


def test_week_is_a_real_week_of_operation(week: Potline) -> None:
    """The balance run exercised what it claims: 7 days, an AE, tapped metal, and every
    cell fed about 1.89 kg alumina per kg Al (docs/domain.md) within 5 %."""
    assert week.t_s == pytest.approx(7 * 86400)
    assert week.state[2, A_AE_N] >= 1
    s = week.state
    assert np.all(s[:, A_TAPPED] > 5000)
    ratio = s[:, A_CONSUMED] / s[:, A_METAL]
    np.testing.assert_allclose(ratio, 1.8895, rtol=0.05)
