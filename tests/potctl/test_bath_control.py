"""Bath-chemistry and heat-balance control on the offline twin (issue 18 item 1).

What a user cares about:

- a cell whose bath has drifted to 8 wt % excess AlF3 is brought to the 11 wt % target and
  held there with one lab sample a day. Band: ±1 wt % around the target, the band plants
  hold in normal operation (10–12 wt %: Kvande & Haupin, JOM 2000; Taylor et al. on
  bath-ratio control). The samples are the twin's truth with the error of a plant lab,
  seeded: excess AlF3 ±0.4 wt % (1σ, the order reported for XRD bath analysis, Feret,
  Light Metals 2008) and bath temperature ±2 K (1σ, a thermocouple dip);
- a ±10 % step of the line current holds the superheat in its band, 5–15 K (Haupin;
  Taylor et al.: normal cells run 5–15 K above the liquidus), over 48 h with shell heat
  exchangers installed, and the same step without bath/heat control does worse;
- the default configuration commands no AlF3 and no exchanger duty (opt-in), an
  observing controller commands nothing, bad input is refused naming what was expected.

The superheat and AlF3 judged are the twin's truth; the controller never sees it.
"""

from __future__ import annotations

import numpy as np
import pytest

from potctl.bath_chemistry import alf3_to_raise_kg
from potctl.config import ConfigError, control_config_for_plant, control_config_from_dict
from potctl.controller import PotController
from potctl.offline import TwinPlant, run_closed_loop, scaled_plant_config
from twin.potline import Potline

#: lab errors of the samples (1σ): excess AlF3 [wt %] and bath temperature [K] (module docstring)
LAB_ALF3_STD, LAB_TEMP_STD = 0.4, 2.0
#: plants' band of excess AlF3 around the target [wt %] and of superheat [K] (module docstring)
ALF3_TARGET, ALF3_BAND = 11.0, 1.0
SH_MIN, SH_MAX, SH_TARGET = 5.0, 15.0, 8.0


def _plant(cells: int, seed: int, *, alf3_wt_pct: float | None = None, hx_kw: float = 0.0):
    """A room of ``cells`` cells in a 264-cell line; rectifier able to run +10 %."""
    pcfg = scaled_plant_config(cells, seed=seed)
    cell_upd: dict[str, float] = {}
    if alf3_wt_pct is not None:
        cell_upd["alf3_wt_pct"] = alf3_wt_pct
    if hx_kw > 0:
        cell_upd.update(heat_exchanger_max_kw=hx_kw, heat_exchanger_base_kw=hx_kw / 3.0)
    rect = pcfg.lines[0].rectifier.model_copy(update={"max_ka": 140.0, "voltage_limit_v": 1400.0})
    lines = [ln.model_copy(update={"rectifier": rect}) for ln in pcfg.lines]
    pcfg = pcfg.model_copy(update={"cell": pcfg.cell.model_copy(update=cell_upd), "lines": lines})
    return pcfg, Potline(pcfg, seed=seed, parallel=False)


def _controller(pcfg, pl, *, bath: bool, heat: bool) -> PotController:
    ccfg = control_config_for_plant(pcfg)
    ccfg = ccfg.model_copy(
        update={
            "amperage": ccfg.amperage.model_copy(update={"max_ka": 140.0}),
            "bath": ccfg.bath.model_copy(update={"enabled": bath, "target_wt_pct": ALF3_TARGET}),
            "heat": ccfg.heat.model_copy(update={"enabled": heat, "superheat_target_k": SH_TARGET}),
        }
    )
    return PotController(pl.layout, ccfg)


def _sample(pl, ctl: PotController, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One lab round: every cell's bath sampled and dipped (the twin's truth + lab error)."""
    tr = pl.truth()
    n = pl.layout.n_cells
    x = tr["alf3_wt_pct"] + rng.normal(0.0, LAB_ALF3_STD, n)
    t = tr["bath_temp_c"] + rng.normal(0.0, LAB_TEMP_STD, n)
    ctl.bath_measurements(pl.t_s, alf3_wt_pct=x, bath_temp_c=t)
    return tr


def _alf3_run(days: int, cells: int, seed: int):
    """8 → 11 wt %: one sample a day at 08:00; returns the truth's AlF3 at each sample [day, cell],
    the AlF3 the controller added per plant day [day, cell] and the controller."""
    pcfg, pl = _plant(cells, seed, alf3_wt_pct=8.0)
    ctl = _controller(pcfg, pl, bath=True, heat=False)
    plant = TwinPlant(pl)
    rng = np.random.default_rng(seed + 100)
    added = np.zeros((days + 1, cells))

    def book(meas, cmds) -> None:
        added[int(meas.t_s // 86400.0)] += cmds.alf3_kg

    truth = []
    run_closed_loop(pl, ctl, 8.0, scan_s=60.0, plant=plant, on_scan=book)
    for _ in range(days):
        truth.append(_sample(pl, ctl, rng)["alf3_wt_pct"].copy())
        run_closed_loop(pl, ctl, 24.0, scan_s=60.0, plant=plant, on_scan=book)
    return np.array(truth), added, ctl, pl


def _check_alf3(
    truth: np.ndarray, added: np.ndarray, ctl: PotController, pl, hold_from: int, worst_wt_pct: float
) -> None:
    assert truth[0].max() < 8.5, "the cells started lean (8 wt % set in the twin)"
    hold = truth[hold_from:]
    dev = np.abs(hold - ALF3_TARGET)
    # held within the plants' band: at least 90 % of the daily samples of all cells, none
    # beyond ``worst_wt_pct`` (the twin's ledge melts and freezes, tapping takes bath)
    assert (dev <= ALF3_BAND).mean() >= 0.9, np.round(hold, 2)
    day, cell = np.unravel_index(int(np.argmax(dev)), dev.shape)
    assert dev.max() <= worst_wt_pct, f"day {hold_from + day} cell {cell}: {hold[day, cell]:.2f} wt %"
    # ... centred on the target (each cell's mean over the held days within 0.4 wt %)
    assert np.all(np.abs(hold.mean(axis=0) - ALF3_TARGET) <= 0.4), np.round(hold.mean(axis=0), 2)
    # within the daily limit, in additions of a few kg
    cfg = ctl.cfg.bath
    assert added.max() <= cfg.max_kg_per_day + 1e-9
    kinds = [e for e in ctl.event_log if e[1] == "alf3_addition"]
    assert kinds and all(float(e[3].split()[0]) <= cfg.shot_kg + 1e-9 for e in kinds)
    assert any(e[1] == "bath_sample_used" for e in ctl.event_log)
    # the controller took the AlF3 feeding over: the potroom PLC's own schedule stopped
    assert np.all(pl.truth()["alf3_addition_kg_per_day"] == 0.0)


def test_alf3_brought_from_8_to_11_wt_pct_and_held_with_daily_samples():
    """14 days, 4 cells: on target ±1 wt % from day 7 on (≥ 90 % of the cell-days, none
    beyond ±1.5 wt %)."""
    truth, added, ctl, pl = _alf3_run(days=14, cells=4, seed=5)
    _check_alf3(truth, added, ctl, pl, hold_from=7, worst_wt_pct=1.5)


@pytest.mark.slow
def test_alf3_held_over_a_month_on_eight_cells():
    """30 days, 8 cells: the same band from day 8 on (≥ 90 % of 176 cell-days); a month
    brings a rare larger excursion (measured: one cell-day at 1.85 wt % off), none beyond 2."""
    truth, added, ctl, pl = _alf3_run(days=30, cells=8, seed=9)
    _check_alf3(truth, added, ctl, pl, hold_from=8, worst_wt_pct=2.0)


def _amperage_run(factor: float, control: bool, seed: int = 7, cells: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Warm 30 h (samples at 6 h and 30 h), step the line target to ``factor`` × 120 kA, run
    48 h with a sample a day; returns the truth's superheat [K] and ledge [cm] every 10 min
    after the step [sample, cell]."""
    pcfg, pl = _plant(cells, seed, hx_kw=60.0)
    ctl = _controller(pcfg, pl, bath=control, heat=control)
    plant = TwinPlant(pl)
    rng = np.random.default_rng(seed + 200)
    sh: list[np.ndarray] = []
    ledge: list[np.ndarray] = []
    hx_cmds: list[np.ndarray] = []

    def rec(meas, cmds) -> None:
        if cmds.hx_duty_kw is not None and np.isfinite(cmds.hx_duty_kw).any():
            hx_cmds.append(cmds.hx_duty_kw[np.isfinite(cmds.hx_duty_kw)])
        if int(meas.t_s) % 600 == 0:
            tr = pl.truth()
            sh.append(tr["superheat_k"].copy())
            ledge.append(tr["ledge_cm"].copy())

    run_closed_loop(pl, ctl, 6.0, scan_s=60.0, plant=plant)
    _sample(pl, ctl, rng)
    run_closed_loop(pl, ctl, 24.0, scan_s=60.0, plant=plant)
    _sample(pl, ctl, rng)
    ctl.set_line_target(0, 120.0 * factor)
    for _ in range(2):
        run_closed_loop(pl, ctl, 24.0, scan_s=60.0, plant=plant, on_scan=rec)
        _sample(pl, ctl, rng)
    i_end = pl.measurements()["line_current_ka"][0]
    assert abs(i_end - 120.0 * factor) < 1.0, f"the line reached its new current ({i_end:.1f} kA)"
    if control:
        assert any(e[1] == "heat_balance" for e in ctl.event_log)
        # never a setpoint outside its bounds: exchanger within its installed ±60 kW, the
        # resistance target within its configured offset of the base target
        assert hx_cmds and max(float(np.abs(h).max()) for h in hx_cmds) <= 60.0
        off = ctl.resistance.target_uohm - ctl.r_target_base_uohm
        assert np.abs(off).max() <= ctl.cfg.heat.r_offset_max_uohm + 1e-9
    return np.array(sh), np.array(ledge)


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_superheat_held_in_band_through_a_10_pct_amperage_step(factor: float):
    """±10 % line current for 48 h: with bath/heat control the superheat stays in 5–15 K
    (≥ 95 % of the time, every cell ≥ 90 %) and near its target; without it, it drifts."""
    sh_on, ledge_on = _amperage_run(factor, control=True)
    sh_off, ledge_off = _amperage_run(factor, control=False)
    in_on = ((sh_on >= SH_MIN) & (sh_on <= SH_MAX)).mean()
    in_off = ((sh_off >= SH_MIN) & (sh_off <= SH_MAX)).mean()
    dev_on = np.abs(sh_on - SH_TARGET).mean()
    dev_off = np.abs(sh_off - SH_TARGET).mean()
    assert in_on >= 0.95, f"superheat in band {in_on:.0%} of the time with control"
    assert ((sh_on >= SH_MIN) & (sh_on <= SH_MAX)).mean(axis=0).min() >= 0.90
    assert dev_on <= 2.0, f"mean |superheat - target| {dev_on:.2f} K with control"
    # the same step without the control does worse
    assert dev_off >= dev_on + 1.0, f"{dev_off:.2f} K without vs {dev_on:.2f} K with control"
    if factor < 1.0:  # a cold cell leaves the band; a hot one drifts up but stays in it
        assert in_off <= in_on - 0.1, f"in band {in_off:.0%} without vs {in_on:.0%} with"
    # the ledge moves less under control (exchanger + heat input)
    assert np.ptp(ledge_on, axis=0).mean() < np.ptp(ledge_off, axis=0).mean()


# ---------------------------------------------------------------------------- small checks
def test_alf3_to_raise_mass_balance():
    """Adding the computed AlF3 to a bath gives the target concentration (mass balance)."""
    bath, x0, target = 4200.0, 8.0, 11.0
    m = float(alf3_to_raise_kg(bath, x0, target))
    assert (bath * x0 / 100.0 + m) / (bath + m) * 100.0 == pytest.approx(target, abs=1e-9)


def test_default_config_commands_no_alf3_nor_exchanger_duty():
    """Off by default: existing plants keep their PLC's AlF3 schedule; the daemon's sample
    hook is harmless without bath control."""
    pcfg, pl = _plant(4, 1, hx_kw=60.0)
    ctl = PotController(pl.layout, control_config_for_plant(pcfg))
    assert ctl.cfg.heat.hx_max_kw == 60.0, "the exchanger limit comes from the plant's cell design"
    ctl.bath_measurements(0.0, alf3_wt_pct=np.full(4, 9.0), bath_temp_c=np.full(4, 970.0))
    plant = TwinPlant(pl)
    seen = []
    run_closed_loop(pl, ctl, 2.0, scan_s=60.0, plant=plant, on_scan=lambda m, c: seen.append(c))
    assert all(not c.alf3_kg.any() for c in seen)
    assert all(c.hx_duty_kw is None or np.isnan(c.hx_duty_kw).all() for c in seen)


def test_observe_only_commands_nothing():
    pcfg, pl = _plant(4, 2, alf3_wt_pct=8.0, hx_kw=60.0)
    ccfg = control_config_for_plant(pcfg)
    ccfg = ccfg.model_copy(
        update={
            "observe_only": True,
            "bath": ccfg.bath.model_copy(update={"enabled": True}),
            "heat": ccfg.heat.model_copy(update={"enabled": True}),
        }
    )
    ctl = PotController(pl.layout, ccfg)
    plant = TwinPlant(pl, take_control=False)
    run_closed_loop(pl, ctl, 0.5, scan_s=60.0, plant=plant)
    ctl.bath_measurements(pl.t_s, alf3_wt_pct=np.full(4, 8.0), bath_temp_c=np.full(4, 980.0))
    seen = []
    run_closed_loop(pl, ctl, 3.0, scan_s=60.0, plant=plant, on_scan=lambda m, c: seen.append(c))
    assert all(not c.alf3_kg.any() for c in seen)
    assert all(np.isnan(c.hx_duty_kw).all() for c in seen if c.hx_duty_kw is not None)
    assert any(e[1] == "bath_sample_used" for e in ctl.event_log), "samples still judged"


def test_bad_input_refused_naming_what_was_expected():
    pcfg, pl = _plant(4, 1)
    ctl = PotController(pl.layout, control_config_for_plant(pcfg))
    with pytest.raises(ValueError, match=r"alf3_wt_pct has shape \(3,\), expected \(4,\)"):
        ctl.bath_measurements(0.0, alf3_wt_pct=np.full(3, 11.0))
    with pytest.raises(ConfigError, match=r"control\.heat"):
        control_config_from_dict({"heat": {"superheat_min_k": 9.0, "superheat_target_k": 8.0}}, "plant.toml")
    with pytest.raises(ConfigError, match=r"control\.bath\.max_kg_per_day"):
        control_config_from_dict({"bath": {"max_kg_per_day": -1.0}}, "plant.toml")


def test_daemon_sample_path_reaches_the_controller():
    """An operator's sample taken by the daemon's intake (``potline.operator_inputs``) gets to
    the controller's bath chemistry: used at the next scan, for that cell only."""
    from potline.operator_inputs import Sample, SampleIntake

    pcfg, pl = _plant(4, 3)
    ccfg = control_config_for_plant(pcfg)
    ccfg = ccfg.model_copy(update={"bath": ccfg.bath.model_copy(update={"enabled": True})})
    ctl = PotController(pl.layout, ccfg)
    plant = TwinPlant(pl)
    run_closed_loop(pl, ctl, 0.1, scan_s=60.0, plant=plant)
    intake = SampleIntake(pl.layout, journal=lambda: None, observers=lambda: [ctl], t_plant_of=lambda t: t - 1e9)
    room = pl.layout.room_names[0]
    intake.take([Sample(1e9 + pl.t_s, room, 3, 2, {"alf3_excess_wt_pct": 9.5, "bath_temp_c": 975.0})], source="hmi")
    run_closed_loop(pl, ctl, 0.1, scan_s=60.0, plant=plant)
    used = [e for e in ctl.event_log if e[1] == "bath_sample_used"]
    assert [e[2] for e in used] == [2]
    assert "AlF3 9.5 wt %" in used[0][3] and "T 975 °C" in used[0][3]
    assert (
        ctl.alf3 is not None and ctl.alf3.rate_kg_per_day[2] > 0.0 and ctl.alf3.rate_kg_per_day[[0, 1, 3]].max() == 0.0
    )
