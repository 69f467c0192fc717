"""Mass and energy balances of the cell model close, and a long run stays in band."""

from __future__ import annotations

import numpy as np
import pytest

from twin.cell_layout import A_AE_N, A_BATH_IN, A_BATH_OUT, A_CONSUMED, A_METAL, A_TAPPED
from twin.config import PlantConfig
from twin.potline import Potline


@pytest.fixture(scope="module")
def week() -> Potline:
    """Eight cells for 7 days with feeding, beam moves, tapping, anode changes, AlF3, feed
    disturbances, a shell heat exchanger at work, plus an AE forced on one cell and a
    cut-out/cut-in of another."""
    cfg = PlantConfig.single_room(
        8, seed=23, cell={"heat_exchanger_max_kw": 60.0}, disturbances={"feeder_blocks_per_day": 2.0}
    )
    pl = Potline(cfg, parallel=False)
    pl.set_heat_exchanger(slice(0, 4), 30e3)
    pl.advance(86400)
    pl.force_alumina(2, 1.0)  # an anode effect
    pl.advance(3 * 86400)
    pl.cut_out(5)
    pl.advance(3600)
    pl.cut_in(5)
    pl.set_heat_exchanger(slice(0, 4), -30e3)
    pl.advance(3 * 86400 - 3600)
    return pl


@pytest.mark.parametrize("quantity", ["alumina", "alf3", "metal", "bath", "energy"])
def test_balance_closes(week: Potline, quantity: str) -> None:
    """In = out + accumulated, per cell, to 1e-6 of the quantity's throughput (issue #2);
    bath: everything that makes up bath and ledge, with the operators' bath tapping and
    additions and the AlF3 lost (issue 13)."""
    b = week.balances()
    key = f"{quantity}_j" if quantity == "energy" else f"{quantity}_kg"
    rel = np.abs(b[key]) / b[f"{quantity}_scale"]
    assert np.all(rel < 1e-6), rel


def test_week_is_a_real_week_of_operation(week: Potline) -> None:
    """The balance run exercised what it claims: 7 days, an AE, tapped metal, bath tapped or
    added, and every cell fed about 1.89 kg alumina per kg Al (docs/domain.md) within 5 %."""
    assert week.t_s == pytest.approx(7 * 86400)
    assert week.state[2, A_AE_N] >= 1
    s = week.state
    assert np.all(s[:, A_TAPPED] > 5000)
    assert np.all(s[:, A_BATH_IN] + s[:, A_BATH_OUT] > 0.0)
    assert np.abs(week.truth()["heat_exchanger_kw"][:4]).min() > 1.0
    ratio = s[:, A_CONSUMED] / s[:, A_METAL]
    np.testing.assert_allclose(ratio, 1.8895, rtol=0.05)


def _long_run(days: int) -> tuple[Potline, dict[str, np.ndarray]]:
    """16 cells of the reference plant's cell and PLC, feed disturbances on, ``days`` days;
    per-cell extremes of the daily samples after the first day."""
    from twin.config import load_plant_config

    ref = load_plant_config()
    cfg = PlantConfig.single_room(
        16, seed=31, cell=ref.cell.model_dump(), local_control=ref.local_control.model_dump(),
        disturbances=ref.disturbances.model_dump(),
    )  # fmt: skip
    pl = Potline(cfg, parallel=False)
    pl.advance(86400)
    keys = ("bath_kg", "alf3_wt_pct", "alumina_wt_pct", "metal_kg", "bath_temp_c", "ledge_cm", "sludge_kg")
    lo = {k: np.full(16, np.inf) for k in keys}
    hi = {k: np.full(16, -np.inf) for k in keys}
    mean_t = []
    for _ in range(days - 1):
        for _ in range(4):
            pl.advance(6 * 3600)
            t = pl.truth()
            mean_t.append(float(t["bath_temp_c"].mean()))
            for k in keys:
                lo[k] = np.minimum(lo[k], t[k])
                hi[k] = np.maximum(hi[k], t[k])
    return pl, {"lo": lo, "hi": hi, "mean_t": np.array(mean_t)}


def _assert_in_band(pl: Potline, ext: dict) -> None:
    """Bands of normal operation (docs/domain.md physics reference): bath 3.4–5.2 t (nominal
    4 t ± the operators' band and a day's drift; a hot cell after an AE melts some ledge
    into its bath until the next tapping), excess AlF3 10–14 wt %, alumina 1.8–4 wt %
    (AE at ≈ 1.75), metal 8.9–10.1 t between daily taps to 9 t (0.92 t/day), the line's mean
    bath temperature 950–970 °C at every sample and no cell above 1000 °C (an AE heats a cell
    by ≈ 9 K per AE-minute, docs/domain.md §2), ledge 4–16 cm, sludge under 100 kg; the
    balances still close."""
    lo, hi = ext["lo"], ext["hi"]
    assert lo["bath_kg"].min() >= 3400 and hi["bath_kg"].max() <= 5200
    assert lo["alf3_wt_pct"].min() >= 10.0 and hi["alf3_wt_pct"].max() <= 14.0
    assert lo["alumina_wt_pct"].min() >= 1.5 and hi["alumina_wt_pct"].max() <= 4.0
    assert lo["metal_kg"].min() >= 8900 and hi["metal_kg"].max() <= 10100
    assert ext["mean_t"].min() >= 950 and ext["mean_t"].max() <= 970
    assert lo["bath_temp_c"].min() >= 945 and hi["bath_temp_c"].max() <= 1000
    assert lo["ledge_cm"].min() >= 4.0 and hi["ledge_cm"].max() <= 16.0
    assert hi["sludge_kg"].max() <= 100.0
    b = pl.balances()
    for q in ("alumina", "alf3", "metal", "bath"):
        assert np.all(np.abs(b[f"{q}_kg"]) < 1e-6 * b[f"{q}_scale"]), q
    assert np.isfinite(pl.state).all()


@pytest.mark.timeout(900)
def test_ten_days_of_plc_operation_stay_in_band() -> None:
    """The short version of the 60-day run (CI)."""
    pl, ext = _long_run(10)
    _assert_in_band(pl, ext)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_sixty_days_of_plc_operation_stay_in_band() -> None:
    """Issue 13: 60 days keep bath mass, AlF3, alumina and metal in band (the old twin grew
    its bath from 3.9 to 7.6 t and its alumina to 6 wt %)."""
    pl, ext = _long_run(60)
    _assert_in_band(pl, ext)
