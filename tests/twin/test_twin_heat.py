"""The cell's heat balance answers amperage steps as pots do (issue 13).

Published plant experience the tests hold the twin to (tolerances in each test):

- Amperage steps of ±5 % and ±10 % held for 48 h under the potroom PLC's own resistance
  control: the pot rides them with a few kelvin and a thicker or thinner side ledge that
  keeps moving over a day or more (Taylor & Welch on ledge dynamics: time constants of many
  hours to days; power-modulation practice at Alumar/Valesul, Brant Filho et al. LM 1992,
  Nunes et al. LM 1998: amperage swings of this size without freezing or melting out).
  Here: |ΔT| ≤ 8 K (±5 %) and ≤ 15 K (±10 %) after 48 h, ledge thicker at lower and thinner
  at higher current by 0.5–6 cm, with at least 10 % of its 48-h change still to come after
  12 h, and two days after the return the ledge back within 1.5 cm and the bath within the
  same kelvin (the refrozen ledge leaves the bath acid for a few days: AlF3 control is daily).
- ±25 % for 48 h (TRIMET's published window, "±25 % for up to 48 h" with controllable shell
  heat exchangers; Lavoie et al. LM 2011: the window of a pot without them is a few %):
  without exchangers the run stays finite and is flagged by the validity envelope, and the
  cell recovers after the return; with exchangers (a retrofitted pot, the duty following the
  heat input as an energy-management system would set it) ledge and superheat stay in bounds
  (ledge 2–20 cm, superheat 2–20 K) and the bath within ±30 K.
"""

from __future__ import annotations

import numpy as np
import pytest

from twin.config import PlantConfig
from twin.potline import Potline

CALM = {"enabled": False}


def _bench(seed: int = 2, max_ka: float = 132.0, **sections) -> Potline:
    data = PlantConfig.single_room(16, seed=seed, disturbances=CALM, **sections).model_dump()
    data["lines"][0]["rectifier"]["max_ka"] = max_ka
    pl = Potline(PlantConfig.model_validate(data), parallel=False)
    pl.advance(24 * 3600)  # settle
    return pl


def _means(pl: Potline) -> dict[str, float]:
    t = pl.truth()
    return {k: float(np.mean(t[k])) for k in ("bath_temp_c", "ledge_cm", "superheat_k", "alf3_wt_pct", "bath_kg")}


def _step(frac: float) -> list[dict[str, float]]:
    """Snapshots at 0, 12, 24, 48 h of a step to (1 + frac)·120 kA, and 48 h after the return."""
    pl = _bench()
    snaps = [_means(pl)]
    pl.set_line_setpoint(0, 120.0 * (1.0 + frac))
    for hours in (12, 12, 24):
        pl.advance(hours * 3600)
        snaps.append(_means(pl))
    assert pl.measurements()["line_current_ka"][0] == pytest.approx(120.0 * (1.0 + frac), rel=0.005)
    assert pl.validity()["cells_invalid_now"] <= 1
    pl.set_line_setpoint(0, 120.0)
    pl.advance(48 * 3600)
    snaps.append(_means(pl))
    return snaps


@pytest.mark.timeout(900)
@pytest.mark.parametrize("frac, dt_max", [(-0.05, 8.0), (0.05, 8.0), (-0.10, 15.0), (0.10, 15.0)])
def test_amperage_step_moves_bath_a_few_kelvin_and_the_ledge_over_a_day(frac: float, dt_max: float) -> None:
    start, h12, _h24, h48, back = _step(frac)
    d_t = h48["bath_temp_c"] - start["bath_temp_c"]
    d_ledge = h48["ledge_cm"] - start["ledge_cm"]
    assert abs(d_t) <= dt_max, d_t
    assert np.sign(d_ledge) == -np.sign(frac) and 0.5 <= abs(d_ledge) <= 6.0, d_ledge
    still_to_come = (h48["ledge_cm"] - h12["ledge_cm"]) / d_ledge
    assert still_to_come >= 0.10, still_to_come  # not a step of hours: the ledge moves over a day
    assert 2.0 <= h48["superheat_k"] <= 15.0
    assert abs(back["ledge_cm"] - start["ledge_cm"]) <= 1.5
    assert abs(back["bath_temp_c"] - start["bath_temp_c"]) <= dt_max  # no worse than the step itself


def _modulate(frac: float, exchangers: bool) -> tuple[dict, dict, Potline]:
    """48 h at (1 + frac)·120 kA; with ``exchangers`` a retrofitted pot (more heat through the
    side wall, exchangers extracting 50 kW at nominal) whose duty follows the change of its
    heat input every 10 min. Returns the extremes over the 48 h, the state 4 days after the
    return, and the plant."""
    cell = {}
    if exchangers:
        cell = {"heat_exchanger_max_kw": 120.0, "heat_exchanger_base_kw": 50.0, "k_top_w_per_k": 85.0,
                "h_bath_ledge_w_per_m2k": 1300.0}  # fmt: skip
    pl = _bench(max_ka=160.0, cell=cell)
    c = pl.config.cell
    base = c.heat_exchanger_base_kw * 1e3
    r_top = (c.r_external_uohm + c.anode_heat_to_top * c.r_anode_uohm) * 1e-6  # leaves the pot at once
    m = pl.measurements()
    u0, i0 = m["cell_voltage_v"].copy(), m["line_current_ka"][0] * 1e3
    pl.set_line_setpoint(0, 120.0 * (1.0 + frac))
    ext = {"ledge_min": np.inf, "ledge_max": 0.0, "sh_min": np.inf, "sh_max": 0.0, "t_min": np.inf, "t_max": 0.0}
    t0 = _means(pl)["bath_temp_c"]
    for _ in range(48 * 6):
        pl.advance(600)
        if exchangers:
            m = pl.measurements()
            i = m["line_current_ka"][0] * 1e3
            d_heat = m["cell_voltage_v"] * i - u0 * i0 - 2.03 * (i - i0) - r_top * (i * i - i0 * i0)
            pl.set_heat_exchanger(slice(None), base + d_heat)
        t = pl.truth()
        ext["ledge_min"] = min(ext["ledge_min"], float(t["ledge_cm"].min()))
        ext["ledge_max"] = max(ext["ledge_max"], float(t["ledge_cm"].max()))
        ext["sh_min"] = min(ext["sh_min"], float(t["superheat_k"].mean()))
        ext["sh_max"] = max(ext["sh_max"], float(t["superheat_k"].mean()))
        ext["t_min"] = min(ext["t_min"], float(t["bath_temp_c"].mean()) - t0)
        ext["t_max"] = max(ext["t_max"], float(t["bath_temp_c"].mean()) - t0)
    assert np.isfinite(pl.state).all() and np.isfinite(pl.out).all()
    assert pl.measurements()["line_current_ka"][0] == pytest.approx(120.0 * (1.0 + frac), rel=0.005)
    ext["invalid_ever"] = pl.validity()["cells_invalid_ever"]
    pl.set_line_setpoint(0, 120.0)
    pl.set_heat_exchanger(slice(None), base)
    pl.advance(96 * 3600)
    return ext, _means(pl), pl


@pytest.mark.timeout(900)
@pytest.mark.parametrize("frac", [-0.25, 0.25])
def test_25_percent_without_exchangers_stays_finite_is_flagged_and_recovers(frac: float) -> None:
    ext, after, pl = _modulate(frac, exchangers=False)
    assert ext["t_min"] >= -120.0 and ext["t_max"] <= 30.0  # never the 1,951 °C of issue 13
    if frac < 0:  # the pot freezes up: the envelope says so
        assert ext["invalid_ever"] == pl.layout.n_cells
        assert ext["ledge_max"] > 15.0
    else:  # the ledge thins but does not melt out
        assert ext["ledge_min"] >= 1.0
    assert pl.validity()["cells_invalid_now"] == 0  # back inside after 4 days
    assert 955.0 <= after["bath_temp_c"] <= 975.0 and 6.0 <= after["ledge_cm"] <= 14.0


@pytest.mark.timeout(900)
@pytest.mark.parametrize("frac", [-0.25, 0.25])
def test_25_percent_for_48_h_with_shell_heat_exchangers_keeps_ledge_and_superheat_in_bounds(frac: float) -> None:
    ext, after, _ = _modulate(frac, exchangers=True)
    assert ext["ledge_min"] >= 2.0 and ext["ledge_max"] <= 20.0
    assert ext["sh_min"] >= 2.0 and ext["sh_max"] <= 20.0
    assert ext["t_min"] >= -30.0 and ext["t_max"] <= 30.0
    assert 955.0 <= after["bath_temp_c"] <= 975.0


def test_exchanger_delivers_within_its_limits_and_none_installed_does_nothing() -> None:
    """The duty command is bounded by the device: extraction up to its rating, insulation up to
    the share of the shell's own loss it can hold back; a pot without one ignores the command."""
    pl = Potline(PlantConfig.single_room(4, disturbances=CALM, cell={"heat_exchanger_max_kw": 60.0}), parallel=False)
    pl.set_heat_exchanger(slice(None), 1e6)
    pl.advance(60)
    assert np.allclose(pl.truth()["heat_exchanger_kw"], 60.0)
    pl.set_heat_exchanger(slice(None), -1e6)
    pl.advance(60)
    natural = (pl.truth()["shell_temp_c"] - pl.config.cell.ambient_c) / pl.config.cell.r_shell_k_per_w / 1e3
    assert np.allclose(-pl.truth()["heat_exchanger_kw"], 0.6 * natural, rtol=0.01)
    plain = Potline(PlantConfig.single_room(4, disturbances=CALM), parallel=False)
    plain.set_heat_exchanger(slice(None), 50e3)
    plain.advance(60)
    assert np.all(plain.truth()["heat_exchanger_kw"] == 0.0)
    with pytest.raises(ValueError):
        plain.set_heat_exchanger(0, float("nan"))
