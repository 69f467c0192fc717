"""Calibration out: a recording made with known parameters gives them back within the stated
uncertainty, the fit says what the recording cannot tell apart, and the calibrated config it
writes is what the next shadow run uses.

Recording: the twin playing a 3 kA pot whose electrolyte conductivity is ×0.92, heat loss
×1.2, heat capacity ×1.1 and Fe in the scrap ×1.1 of the config (truth: 0.92 S/cm,
14.4 W/K, 1.32 MJ/K, 0.792 % Fe), nominal policy, written like a historian export
(ISO times, rounded values) with a 2-day outage and blank cells.
"""

from __future__ import annotations

import json
import tomllib

import pytest

from potline import cli
from refining.calibration import fit
from refining.config import CONFIG_3KA, load_refining_config
from refining.recording import load_recording
from refining.shadow import run_shadow
from tests.refining.refining_support import factory, historian_csv, policy, recorded_columns

HIDDEN = {"kappa": 0.92, "ua": 1.2, "heat_cap": 1.1, "scrap_fe": 1.1}
TRUTH = {"kappa": 0.92, "ua": 12.0 * 1.2, "heat_cap": 1.2 * 1.1, "scrap_fe": 0.72 * 1.1}


@pytest.fixture(scope="module")
def cfg():
    return load_refining_config(CONFIG_3KA)


@pytest.fixture(scope="module")
def export(cfg, tmp_path_factory):
    cols = recorded_columns(cfg, HIDDEN, seed=7)
    return historian_csv(cols, tmp_path_factory.mktemp("cal") / "pot.csv", gap=(20, 2), blanks=10, seed=3)


@pytest.fixture(scope="module")
def rec(cfg, export):
    return load_recording(export, heater_sp_default=cfg.operation.heater_setpoint_c)


@pytest.fixture(scope="module")
def result(cfg, rec):
    return fit(cfg, rec)


def test_known_parameters_are_recovered_within_the_stated_uncertainty(result):
    """Each estimate within 3 of its stated standard deviations of the truth, and the stated
    deviations small enough to matter (< 2 % of the value)."""
    assert result.success
    for name, truth in TRUTH.items():
        p = result.estimate(name)
        assert p.identifiable, p.note
        assert abs(p.estimate - truth) <= 3.0 * p.std, (name, p.estimate, p.std, truth)
        assert p.std / p.estimate < 0.02
    # the fit sits at the recording's noise: 5 mV + 1 % interface waves on ~2.5 V of ohmic
    # drop (interval means), 0.5 K thermocouple noise on two readings, 2 % lab assays
    ch = result.channels
    assert ch["voltage"]["rms_pct"] < 1.0
    assert 0.5 < ch["temperature"]["rms"] < 1.0
    assert ch["assay"]["rms"] < 0.05 and ch["assay"]["n"] >= 30
    # well conditioned: the four parameters act on different residuals
    assert result.condition_number < 1e3
    assert all(abs(result.correlation[i, j]) < 0.5 for i in range(4) for j in range(4) if i != j)


def test_what_one_current_density_cannot_separate_is_reported(cfg, rec):
    """At one current density the voltage sees only I·(d/κA + R_contact): conductivity and
    contact resistance are nearly collinear; a charge's temperature dip sees m·h/C, so the
    heat capacity and the scrap's melting heat are tied too. Neither pair is written."""
    res = fit(cfg, rec, ["kappa", "r_contact", "ua", "heat_cap", "scrap_heat"])
    names = [p.name for p in res.params]
    corr = res.correlation
    assert abs(corr[names.index("kappa"), names.index("r_contact")]) > 0.95
    assert abs(corr[names.index("heat_cap"), names.index("scrap_heat")]) > 0.9
    ident = {p.name: p.identifiable for p in res.params}
    assert ident == {"kappa": False, "r_contact": False, "ua": True, "heat_cap": False, "scrap_heat": False}
    assert set(res.config_updates()) == {"thermal.loss_w_k"}
    assert res.estimate("ua").estimate == pytest.approx(TRUTH["ua"], rel=0.01)
    assert any("r_contact" in n and "not identifiable" in n for n in res.notes)
    assert res.condition_number > 1e3


def test_calibrated_config_is_written_and_used_by_the_next_shadow_run(cfg, export, rec, tmp_path, capsys):
    out = tmp_path / "pot_calibrated.toml"
    rc = cli.main(["calibrate", "--config", str(CONFIG_3KA), "--data", str(export), "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "identifiable" in printed and "correlations:" in printed and "condition number" in printed
    text = out.read_text()
    assert text.startswith("# Calibrated by potline calibrate") and "SYNTHETIC" in text.splitlines()[0]
    assert "# calibrated: " in text and "(1σ)" in text
    data = tomllib.loads(text)
    report = json.loads((tmp_path / "report.json").read_text())
    std = {p["name"]: p["std"] for p in report["params"]}
    got = {
        "kappa": data["electrolyte"]["conductivity_s_cm"],
        "ua": data["thermal"]["loss_w_k"],
        "heat_cap": data["thermal"]["heat_capacity_mj_k"],
        "scrap_fe": data["scrap"]["grades"]["offgrade_fe_cu"]["fe_pct"],
    }
    for k, v in got.items():
        assert abs(v - TRUTH[k]) <= 3 * std[k], (k, v, std[k])
    # everything else is the shipped config, comments kept
    cal = load_refining_config(out)
    assert cal.safety == cfg.safety and cal.operation == cfg.operation
    assert "# 0.5 A/cm2 at 3 kA" in text
    # the next shadow run: the observer no longer finds the pot off the config
    before = {m.parameter: m for m in run_shadow(cfg, rec, factory(cfg, policy(cfg)), n_members=1).mismatches}
    after = {m.parameter: m for m in run_shadow(cal, rec, factory(cal, policy(cal)), n_members=1).mismatches}
    assert before["ohmic_resistance"].flagged and before["heat_loss"].flagged
    assert not after["ohmic_resistance"].flagged and not after["heat_loss"].flagged
    assert abs(after["ohmic_resistance"].deviation_pct) < 1.0 and abs(after["heat_loss"].deviation_pct) < 1.5


def test_bad_input_exit_code_names_the_problem(export, tmp_path, capsys):
    rc = cli.main(["calibrate", "--data", str(export), "--params", "kappa,turbo", "--out", str(tmp_path / "x.toml")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "turbo" in err and "known: kappa" in err
    assert not (tmp_path / "x.toml").exists()
    rc = cli.main(["calibrate", "--data", str(tmp_path / "none.csv")])
    assert rc == 2 and "none.csv: no such file" in capsys.readouterr().err
