"""PFC accounting against the published IPCC Tier 2 numbers (docs/domain.md §3, docs/domain.md)."""

from __future__ import annotations

import numpy as np
import pytest

from potctl.ae_detection import AERecord
from potctl.config import PfcConfig, load_control_config
from potctl.pfc import PfcAccountant, tier2_emissions_per_t


def test_worked_example_cwpb_aem_0_1_ar5():
    """docs/domain.md §3: AEM 0.1 → 0.0143 kg CF4 + 0.00173 kg C2F6 per t → 114.0 kg CO2e/t (AR5)."""
    cf4, c2f6, co2e = tier2_emissions_per_t(0.1)
    assert cf4 == pytest.approx(0.0143)
    assert c2f6 == pytest.approx(0.00173, abs=5e-6)
    assert co2e == pytest.approx(114.0, abs=0.05)


@pytest.mark.parametrize(("gwp", "expected"), [((7390.0, 12200.0), 126.8), ((7380.0, 12400.0), 127.0)])
def test_worked_example_other_gwp_sets(gwp, expected):
    """Same example with AR4 (126.8) and AR6 (127.0) GWPs, overridden through the config."""
    cfg = PfcConfig(gwp_cf4=gwp[0], gwp_c2f6=gwp[1])
    assert tier2_emissions_per_t(0.1, cfg)[2] == pytest.approx(expected, abs=0.05)


def test_accountant_one_day_of_a_660_cell_line():
    """660 cells at 120 kA for a day make 660 × 918 kg Al at CE 0.95 (docs/domain.md §0:
    8.054·I·CE kg/d); 33 one-minute AEs give AEM = 0.05 min/cell-day."""
    n = 660
    acc = PfcAccountant(n)
    i = np.full(n, 120.0)
    live = np.ones(n, dtype=bool)
    for _ in range(24):
        acc.accumulate(3600.0, i, live)
    for k in range(33):
        acc.add_ae(AERecord(cell=k, kind="HV", start_s=1000.0 * k, detect_s=1000.0 * k + 1, end_s=1000.0 * k + 60))
    acc.add_ae(AERecord(cell=5, kind="LV", start_s=0.0, detect_s=60.0, end_s=600.0))
    rep = acc.report()
    assert rep.cell_days == pytest.approx(660.0)
    assert rep.aluminium_t == pytest.approx(660 * 8.054 * 120 * 0.95 / 1000, rel=1e-3)
    assert rep.ae_per_cell_day == pytest.approx(0.05)
    assert rep.mean_duration_s == pytest.approx(60.0)
    assert rep.aem_min_per_cell_day == pytest.approx(0.05)
    assert rep.cf4_kg_per_t == pytest.approx(0.143 * 0.05)
    assert rep.cf4_kg == pytest.approx(0.143 * 0.05 * rep.aluminium_t)
    assert rep.co2e_t == pytest.approx((6630 * rep.cf4_kg + 11100 * rep.c2f6_kg) / 1000)
    # LVAE minutes are reported apart, not in the Tier 2 slope figure
    assert rep.lvae_count == 1 and rep.lvae_minutes == pytest.approx(10.0)


def test_cut_out_cells_do_not_count_as_cell_days():
    acc = PfcAccountant(4)
    live = np.array([True, True, False, True])
    acc.accumulate(86400.0, np.full(4, 120.0), live)
    assert acc.report().cell_days == pytest.approx(3.0)


def test_ongoing_ae_counted_up_to_now():
    acc = PfcAccountant(1)
    acc.accumulate(86400.0, np.array([120.0]), np.array([True]))
    ongoing = [AERecord(cell=0, kind="HV", start_s=100.0, detect_s=101.0)]
    rep = acc.report(ongoing, now=130.0)
    assert rep.ae_count == 1 and rep.ae_minutes == pytest.approx(0.5)


def test_control_toml_overrides_and_names_bad_keys(tmp_path):
    good = tmp_path / "plant.toml"
    good.write_text('name = "X"\n[control.pfc]\ngwp_cf4 = 7390.0\n[control.detection]\nconfirm_samples = 3\n')
    cfg = load_control_config(good)
    assert cfg.pfc.gwp_cf4 == 7390.0 and cfg.detection.confirm_samples == 3
    assert cfg.pfc.sef_cf4 == 0.143  # untouched defaults stay
    bad = tmp_path / "bad.toml"
    bad.write_text("[control.feeding]\noverfeed_factor = 0.5\nunknown_key = 1\n")
    with pytest.raises(ValueError) as exc:
        load_control_config(bad)
    lines = str(exc.value).splitlines()
    assert lines[0] == f"2 configuration errors in {bad}"
    assert lines[1] == f"  {bad}: control.feeding.overfeed_factor: expected a number in [1, 3], got 0.5"
    assert lines[2].startswith(f"  {bad}: control.feeding.unknown_key: unknown key (expected one of: adapt_gain, ")
