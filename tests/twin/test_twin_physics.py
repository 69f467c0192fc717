"""The cell model against published numbers (docs/domain.md "Physics reference").

Every assertion names its source and tolerance. Nothing here compares the model with
values it produced itself.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.twin.twin_support import unequal_lines
from twin.cell import LOCAL_AE_STROKE_END_S
from twin.cell_layout import A_CHARGE, A_E_ELEC, P_SHOT_KG, S_AL2O3, S_ALF3, S_BEAM_TIMER, S_CRYO, S_KILL_T, S_SLUDGE
from twin.config import PlantConfig
from twin.potline import Potline

#: Faraday yield, docs/domain.md: 0.3356 kg Al per kA·h at 100 % CE
FARADAY_KG_PER_KAH = 0.3356
#: docs/domain.md §0: alumina consumption 1.673e-7·I kg/s at CE 0.95
ALUMINA_KG_PER_AS_CE95 = 1.673e-7
#: the mechanisms tested here, without the plant's random feed disturbances
CALM = {"enabled": False}


@pytest.fixture(scope="module")
def settled() -> Potline:
    """Eight 120 kA cells in a 264-cell line, settled for 2 h under local control."""
    pl = Potline(PlantConfig.single_room(8, disturbances=CALM), parallel=False)
    pl.set_operations(slice(None), False)  # no tapping/anode change: the nominal state
    pl.advance(2 * 3600)
    return pl


def test_voltage_breakdown_haupin_bands(settled: Potline) -> None:
    """Haupin, "Interpreting the components of cell voltage" (docs/domain.md): total 4.0–4.6 V,
    E_rev ≈ 1.2 V, anode reaction 0.4–0.6 V, cathode 0.05–0.1 V, bath 1.4–1.8 V,
    bubbles 0.15–0.35 V. Conductors: anode 0.25–0.35 V, cathode 0.2–0.35 V, external
    0.1–0.2 V (Haupin's and Grjotheim & Welch's ranges for prebake cells) give 0.55–0.9 V;
    ALRO's 13.28 kWh/kg at CE 0.955 (4.25 V) leaves 0.55–0.75 V for them once bath and
    bubbles are as Haupin's and Lundby et al.'s relations give (issue 13: the old 0.80 V
    made up for a bubble term 25 % low)."""
    b = settled.voltage_breakdown()
    total = sum(b[k] for k in b)
    assert np.all((total > 4.0) & (total < 4.6)), total
    assert np.all(np.abs(b["reversible"] - 1.2) < 0.06)
    assert np.all((b["anode_reaction_overvoltage"] >= 0.4) & (b["anode_reaction_overvoltage"] <= 0.6))
    assert np.all((b["cathode_overvoltage"] >= 0.05) & (b["cathode_overvoltage"] <= 0.1))
    assert np.all((b["bath_ohmic"] >= 1.4) & (b["bath_ohmic"] <= 1.8))
    assert np.all((b["bubble_layer"] >= 0.15) & (b["bubble_layer"] <= 0.35))
    assert np.all((b["conductors"] >= 0.55) & (b["conductors"] <= 0.75))
    assert np.all(b["anode_effect"] == 0.0)


def test_operating_window(settled: Potline) -> None:
    """docs/domain.md: κ 2.0–2.4 S/cm, ACD 4–5 cm (±0.3 cm for the resistance deadband),
    anode current density 0.7–0.9 A/cm², bath 950–970 °C with 5–12 K superheat,
    alumina 2–4 wt %, pseudo-resistance ≈ 20 µΩ at 4.3 V (±15 %)."""
    t = settled.truth()
    m = settled.measurements()
    assert np.all((t["conductivity_s_cm"] >= 2.0) & (t["conductivity_s_cm"] <= 2.4))
    assert np.all((t["acd_cm"] >= 3.7) & (t["acd_cm"] <= 5.3))
    assert np.all((t["current_density_a_cm2"] >= 0.7) & (t["current_density_a_cm2"] <= 0.9))
    assert np.all((t["bath_temp_c"] >= 950) & (t["bath_temp_c"] <= 970))
    assert np.all((t["superheat_k"] >= 5) & (t["superheat_k"] <= 12))
    assert np.all((t["alumina_wt_pct"] >= 2.0) & (t["alumina_wt_pct"] <= 4.0))
    r_uohm = (m["cell_voltage_v"] - 1.65) / (m["line_current_ka"][0] * 1e3) * 1e6
    assert np.all(np.abs(r_uohm - 21.7) / 21.7 < 0.15)  # docs/domain.md §0: 21.7 µΩ at 4.25 V


@pytest.fixture(scope="module")
def one_day() -> Potline:
    """Eight cells, one day, with the operations schedule (tapping, anode changes)."""
    pl = Potline(PlantConfig.single_room(8, seed=3, disturbances=CALM), parallel=False)
    pl.advance(86400)
    return pl


def test_specific_energy_and_ce(one_day: Potline) -> None:
    """docs/domain.md: 12.5–14.5 kWh/kg (conventional pots 12–14 MWh/t; Alro 13.28 MWh/t),
    CE 0.90–0.96, and the identity kWh/kg = 2.98·U/CE within 1 %."""
    tot = one_day.totals()
    assert 12.5 <= tot["specific_energy_kwh_per_kg"] <= 14.5
    assert 0.90 <= tot["current_efficiency"] <= 0.96
    s = one_day.state
    u_mean = s[:, A_E_ELEC].sum() / s[:, A_CHARGE].sum()  # charge-weighted mean voltage
    assert tot["specific_energy_kwh_per_kg"] == pytest.approx(2.98 * u_mean / tot["current_efficiency"], rel=0.01)


def test_production_follows_faraday(one_day: Potline) -> None:
    """docs/domain.md: 0.3356 kg Al per kA·h at 100 % CE. Metal made over a day divided by the
    charge passed and by the time-averaged CE is Faraday's yield within 1 %."""
    pl = Potline(PlantConfig.single_room(4, seed=5, disturbances=CALM), parallel=False)
    ce_samples, metal0 = [], pl.totals()["metal_kg"]
    kah = 0.0
    for _ in range(24 * 6):
        pl.advance(600)
        ce_samples.append(pl.truth()["current_efficiency"].mean())
        kah += pl.measurements()["line_current_ka"][0] * 4 * 600 / 3600
    metal = pl.totals()["metal_kg"] - metal0
    assert metal / kah / np.mean(ce_samples) == pytest.approx(FARADAY_KG_PER_KAH, rel=0.01)


def test_reference_plant_capacity() -> None:
    """ALRO Slatina seed (docs/domain.md): 265,000 t/a from 6 rooms → 5 operating rooms of 132 cells
    make 5/6 of it, ≈ 221,000 t/a, ± 5 %. Simulated over 6 h and annualised."""
    pl = Potline(PlantConfig.model_validate(_reference()), parallel=True)
    assert pl.layout.n_cells == 660
    pl.advance(6 * 3600)
    tonnes_per_year = pl.totals()["metal_kg"] / 1000.0 * (8760.0 / 6.0)
    assert tonnes_per_year == pytest.approx(265_000 * 5 / 6, rel=0.05)


def _reference() -> dict:
    from twin.config import REFERENCE_PLANT, load_toml

    return load_toml(REFERENCE_PLANT)


@pytest.mark.parametrize("how", ["plc_stops", "feeder_crusted"])
def test_feed_stop_leads_to_anode_effect(how: str) -> None:
    """docs/domain.md §2: with the feed stopped the cell reaches the AE when the
    alumina inventory above the critical level is consumed at the Faraday rate
    (1.673e-7·I kg/s at CE 0.95): onset time within 20 % of inventory/consumption; AE
    voltage 20–50 V. Two ways to lose the feed: the PLC stops feeding, or its feeder hole
    crusts over (it keeps stroking at its fixed rate and acknowledging, nothing reaches the bath)."""
    lc = {"ae_quench": False, "feed_mode": "fixed"}
    pl = Potline(PlantConfig.single_room(8, seed=7, local_control=lc, disturbances=CALM), parallel=False)
    pl.set_operations(slice(None), False)
    pl.advance(3600)
    k = 3
    acks0 = pl.measurements()["feeder_ack"][k]
    if how == "plc_stops":
        pl.set_local_control(k, False)
    else:
        pl.set_feeder_efficiency(k, 0.0)
    s = pl.state
    bath = s[k, S_AL2O3] + s[k, S_ALF3] + s[k, S_CRYO]
    c_crit = pl.truth()["critical_alumina_wt_pct"][k]
    current = pl.measurements()["line_current_ka"][0] * 1e3
    inventory = s[k, S_AL2O3] + s[k, S_SLUDGE] - c_crit / 100.0 * bath
    expected_s = inventory / (ALUMINA_KG_PER_AS_CE95 * current)
    t0 = pl.t_s
    onset, volts = None, []
    for _ in range(int(2 * expected_s)):
        pl.advance(1)
        if onset is None and pl.truth()["ae_active"][k]:
            onset = pl.t_s - t0
        if onset is not None:
            if not pl.truth()["ae_active"][k]:
                break
            volts.append(pl.measurements()["cell_voltage_v"][k])
    assert onset is not None, "no anode effect after twice the expected time"
    assert onset == pytest.approx(expected_s, rel=0.20)
    if how == "feeder_crusted":  # the PLC fed on at its fixed rate and saw nothing wrong
        nominal_shots = ALUMINA_KG_PER_AS_CE95 * current * onset / pl.params[k, P_SHOT_KG]
        assert pl.measurements()["feeder_ack"][k] - acks0 >= 0.8 * nominal_shots
        assert np.abs(pl.balances()["alumina_kg"]).max() < 1e-6 * pl.balances()["alumina_scale"].max()
    during = np.array(volts[3:])  # once the gas film has formed (seconds)
    assert len(during) >= 5
    assert 20.0 <= np.median(during) <= 50.0
    assert during.max() <= 60.0


def test_local_ae_kill_leaves_the_beam_where_it_was() -> None:
    """The potroom PLC's own AE kill (local control): AE feed plus a 15 mm pumping stroke,
    driven at beam speed, back up from 20 s after the dose — also when the AE is already over
    by then (a stroke that quenches it early is the usual case). Once the AEs are over, the
    strokes have left every beam where it was (the resistance band's next check is a day
    away)."""
    lc = {"beam_check_interval_s": 86400.0, "operations": False}
    pl = Potline(PlantConfig.single_room(64, seed=13, local_control=lc, disturbances=CALM), parallel=False)
    pl.state[:, S_BEAM_TIMER] = 86400.0  # no resistance-band check during the test
    pl.advance(600)
    beam0 = pl.measurements()["beam_ack_mm"].copy()
    forced = np.arange(0, 64, 4)
    ended_early = 0
    for t in range(4000):
        if t % 120 == 0 and t // 120 < forced.size:  # one cell at a time: the line keeps its current
            pl.force_alumina(forced[t // 120], 1.7)  # just below the critical ≈ 1.76 wt %: an AE
        was = pl.truth()["ae_active"].copy()
        pl.advance(1)
        ended_early += int(np.count_nonzero(was & ~pl.truth()["ae_active"] & (pl.state[:, S_KILL_T] < 20.0)))
        done = (pl.state[:, S_KILL_T] >= LOCAL_AE_STROKE_END_S).all()
        if t > 120 * forced.size and not pl.truth()["ae_active"].any() and done:
            break
    assert (pl.truth()["ae_count"][forced] >= 1).all() and not pl.truth()["ae_active"].any()
    assert ended_early > 0, "no AE ended before its stroke was raised: the case is not exercised"
    np.testing.assert_allclose(pl.measurements()["beam_ack_mm"], beam0, atol=1e-9)


def test_anode_effect_dips_line_current_and_rectifier_restores() -> None:
    """docs/domain.md §4: an AE adds 25–45 V to the line; open loop that is a dip of
    ≈ ΔU/(N·R + R_bus) (several kA on a 264-cell line); the regulator restores the
    setpoint within seconds if it has headroom. Checked: a dip of > 1 kA right after
    onset, and the mean current 60–120 s into the AE within ±0.5 % of 120 kA."""
    cfg = PlantConfig.single_room(264, seed=11, disturbances=CALM)
    pl = Potline(cfg, parallel=True)
    pl.set_operations(slice(None), False)
    pl.advance(600)
    k = 10
    pl.set_local_control(k, False)  # no PLC AE kill: the AE lasts
    pl.force_alumina(k, 1.0)  # below the critical level: the AE starts at once
    currents = []
    for _ in range(150):
        pl.advance(1)
        currents.append(pl.measurements()["line_current_ka"][0])
    currents = np.array(currents)
    assert pl.truth()["ae_active"][k]
    assert currents[:10].min() < 119.0
    assert np.mean(currents[60:120]) == pytest.approx(120.0, rel=0.005)


def test_voltage_limit_caps_current_when_many_cells_are_in_ae() -> None:
    """docs/domain.md §4: model the rectifier headroom: with more AE voltage than the
    rectifier's DC limit can cover, the line current stays below setpoint."""
    pl = Potline(PlantConfig.single_room(100, seed=13, disturbances=CALM), parallel=False)
    pl.set_operations(slice(None), False)
    pl.advance(300)
    headroom = pl.rpar[0, 0] - pl.measurements()["line_voltage_v"][0]
    n_ae = int(headroom // 26.0) + 2  # beyond what the rectifier can cover
    pl.set_local_control(np.arange(n_ae), False)
    pl.force_alumina(np.arange(n_ae), 1.0)
    pl.advance(60)
    m = pl.measurements()
    assert pl.truth()["ae_active"][:n_ae].sum() >= n_ae - 1
    assert m["rectifier_at_limit"][0]
    assert m["line_current_ka"][0] < 0.97 * 120.0


def test_cut_out_and_cut_in_keep_line_current() -> None:
    """A shorted cell drops out of the series: its voltage is zero, the rectifier lowers the
    line voltage by about one cell voltage (≈ 4.2 V) and holds the current."""
    pl = Potline(PlantConfig.single_room(20, seed=17, disturbances=CALM), parallel=False)
    pl.set_operations(slice(None), False)
    pl.advance(600)
    u_before = pl.measurements()["line_voltage_v"][0]
    pl.cut_out(4)
    pl.advance(120)
    m = pl.measurements()
    assert m["cut_out"][4] and m["cell_voltage_v"][4] == 0.0
    assert m["line_current_ka"][0] == pytest.approx(120.0, rel=0.005)
    assert u_before - m["line_voltage_v"][0] == pytest.approx(4.25, abs=0.4)
    pl.cut_in(4)
    pl.advance(120)
    m = pl.measurements()
    assert not m["cut_out"][4] and 3.8 < m["cell_voltage_v"][4] < 4.8
    assert m["line_current_ka"][0] == pytest.approx(120.0, rel=0.005)


def _busy_unequal_lines(seed: int) -> PlantConfig:
    """``unequal_lines`` (24/24/12 cells, each the bench of a longer line) with busy feed
    disturbances and shell heat exchangers."""
    cfg = unequal_lines(seed)
    dist = cfg.disturbances.model_copy(
        update={"feeder_blocks_per_day": 20.0, "empty_hoppers_per_day": 5.0, "feeder_block_mean_h": 0.2}
    )
    cell = cfg.cell.model_copy(update={"heat_exchanger_max_kw": 60.0, "heat_exchanger_base_kw": 20.0})
    return cfg.model_copy(update={"disturbances": dist, "cell": cell})


@pytest.mark.parametrize("kernel", ["cells", "lines"])
def test_parallel_and_serial_kernels_agree(kernel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-cell random streams make both parallel kernels (cells shared out per sub-step, or
    whole lines per thread) reproduce the serial one exactly, with AEs, feeding, feed
    disturbances, heat exchanger duties and a cut-out cell on lines of unequal size; also
    after commands between ``advance`` calls."""
    import twin.potline as tp

    monkeypatch.setattr(tp, "LINES_BALANCE_MIN", 0.0 if kernel == "lines" else 2.0)
    plants = [Potline(_busy_unequal_lines(seed=19), parallel=par) for par in (False, True)]
    for pl in plants:
        pl.force_alumina(np.array([3, 30, 55]), 1.6)
        pl.cut_out(40)
        pl.advance(900)
        pl.apply(feed_shots=np.full(60, 2), beam_move_mm=np.linspace(-5.0, 5.0, 60))
        pl.set_heat_exchanger(np.arange(0, 60, 3), np.linspace(-40e3, 80e3, 20))
        pl.advance(900)
    a, b = plants
    assert a.truth()["ae_count"].sum() >= 3
    assert (a.truth()["feeder_blocked"] | a.truth()["hopper_empty"]).any()
    np.testing.assert_array_equal(a.state, b.state)
    np.testing.assert_array_equal(a.rect, b.rect)
    np.testing.assert_array_equal(a.out, b.out)


def test_lines_balance_picks_the_parallel_kernel() -> None:
    """Whole lines per thread only when they keep the cores busy (>= LINES_BALANCE_MIN)."""
    from twin.potline import LINES_BALANCE_MIN

    pl = Potline(unequal_lines(seed=1), parallel=True)
    assert pl.lines_balance(2) == pytest.approx(60 / (2 * 36))  # 24+12 on one thread, 24 on the other
    assert pl.lines_balance(2) < LINES_BALANCE_MIN
    assert pl.lines_balance(1) == 1.0
    assert pl.lines_balance(3) == pytest.approx(60 / (3 * 24))


def test_stepping_kernels_run_without_reference_counting() -> None:
    """The stepping kernels are compiled without Numba's refcounting, and every per-cell
    function that takes arrays is inlined into them: otherwise each call increfs/decrefs
    its arrays (atomics that cost ~40 % of a cell-step, see PERFORMANCE.md)."""
    import twin.cell as tc
    import twin.disturbances as td
    import twin.envelope as te
    import twin.heat as th
    import twin.potline as tp
    import twin.rectifier as tr
    import twin.rng as trng

    for kernel in (tp.advance_line, tp._advance_serial, tp._advance_lines_parallel, tp._advance_cells_parallel):
        assert kernel.targetoptions.get("_nrt") is False, kernel
    for fn in (tc.composition, tc.cell_emf, tc.cell_integrate, tc.dump_shot, tc.move_beam, tc.start_tapping,
               tc.start_anode_change, tc.remove_bath, tc.local_automation, tc.plc_target_ohm, tc.plc_move_beam,
               tc.plc_alf3_update, th.heat_step, th.heat_exchanger_duty, td.feed_share, td.sludge_share,
               td._event, td.disturb_step, td.crew_called, td.new_alumina_day, te.validity_flags,
               tp._solve_line, tr.rectifier_step, tr.tap_voltage, trng.uniform, trng.normal,
               trng.normal_pair):  # fmt: skip
        assert fn.targetoptions.get("inline") == "always", fn
