"""Shadow mode on a recorded cycle from a pot that is NOT the config.

The recording is made by the twin playing a 3 kA pot with hidden parameters — electrolyte
conductivity −8 %, heat loss +20 %, Fe in the scrap +10 % — run by the nominal policy and
logged the way its PLC would log it (CSV round trip). Shadow mode only sees the log and
the config. The hidden values are the independent truth the tests check against.
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest

from potline import cli
from potline.report import Report, write_json
from refining import model as rf
from refining.campaign import record_cycle
from refining.config import CONFIG_3KA, load_refining_config
from refining.controller import RefiningPolicy, SafeCommandFilter, SafetyLimits, policy_presets
from refining.recording import load_recording, write_table
from refining.shadow import Recording, RecordingError, run_shadow

HIDDEN = {"kappa": 0.92, "ua": 1.2, "scrap_fe": 1.1}


@pytest.fixture(scope="module")
def cfg():
    return load_refining_config(CONFIG_3KA)


@pytest.fixture(scope="module")
def recorded(cfg, tmp_path_factory):
    pol = RefiningPolicy(policy_presets(cfg)["nominal"], 1, cfg.operation.control_period_s)
    cols = record_cycle(cfg, pol, factors=HIDDEN, seed=7)
    path = write_table(cols, tmp_path_factory.mktemp("rec") / "recorded.csv")
    return path, cols


@pytest.fixture(scope="module")
def rec(recorded, cfg):
    return load_recording(recorded[0], heater_sp_default=cfg.operation.heater_setpoint_c)


def _factory(cfg, name):
    pp = policy_presets(cfg)[name]
    return lambda n: RefiningPolicy(pp, n, cfg.operation.control_period_s)


@pytest.fixture(scope="module")
def safe(cfg, rec):
    return run_shadow(cfg, rec, _factory(cfg, "hot_trim"), "hot_trim", n_members=4)


@pytest.fixture(scope="module")
def unsafe(cfg, rec):
    return run_shadow(cfg, rec, _factory(cfg, "unsafe_step"), "unsafe_step", n_members=2)


def test_recording_is_a_whole_cycle_ending_in_breakthrough(recorded):
    _path, cols = recorded
    assert rf.END_REASONS[int(cols["end_reason"][-1])] == "cathode_fe_limit"
    assert 30 < cols["t_s"][-1] / 86400 < 45
    assert np.isfinite(cols["assay_fe_pct"]).sum() >= 15


def test_observer_converges_on_the_hidden_pot(safe):
    """The observer's one-step voltage residual falls to the measurement/interface-wave
    noise (< 1 %) while the configured twin is off by ~7 %; its estimates land on the hidden
    truth: ohmic resistance +7.8 % (κ −8 % raises the 2.5 V electrolyte drop by 8.7 %, the
    0.3 V contacts are unchanged: tolerance ±1.5 points), heat loss ×1.20 (±3 %), Fe in
    the scrap 0.72 × 1.1 = 0.79 % (±5 %)."""
    e = safe.prediction_errors
    assert e["voltage_observer_rms_pct"] < 1.0
    assert e["voltage_open_loop_rms_pct"] > 5.0
    assert e["voltage_observer_rms_pct"] < e["voltage_open_loop_rms_pct"] / 5
    assert e["temperature_observer_rms_k"] < 1.0 < e["temperature_open_loop_rms_k"]
    assert abs(e["dc_energy_observer_err_pct"]) < 0.5 < abs(e["dc_energy_open_loop_err_pct"])
    # purity: the observer tracks the assays better than the configured twin
    assert e["fe_observer_mae_pctpt"] < e["fe_open_loop_mae_pctpt"] / 2
    m = {x.parameter: x for x in safe.mismatches}
    ohm_truth = 100 * ((2.5 / 0.92 + 0.3) / 2.8 - 1)  # ≈ +7.8 %
    assert m["ohmic_resistance"].deviation_pct == pytest.approx(ohm_truth, abs=1.5)
    assert m["heat_loss"].estimate / m["heat_loss"].config == pytest.approx(HIDDEN["ua"], rel=0.03)
    assert m["scrap_fe"].estimate == pytest.approx(0.72 * HIDDEN["scrap_fe"], rel=0.05)
    assert abs(m["scrap_si"].deviation_pct) < 3.0


def test_report_flags_the_mismatch(safe):
    flagged = {x.parameter for x in safe.flagged}
    assert flagged == {"ohmic_resistance", "heat_loss", "scrap_fe"}
    body = safe.to_dict()
    assert set(body["flagged"]) == flagged
    assert any("FLAGGED" in x["text"] and x["parameter"] == "heat_loss" for x in body["mismatches"])


def test_unsafe_candidate_is_not_ready_and_named(unsafe):
    """A candidate that steps the current 3.0 → 3.9 kA after a day (ramp limit 300 A/h, max
    3.3 kA) gets 'not ready', and the verdict names the unsafe command."""
    v = unsafe.verdict
    assert not v.ready and v.label == "not ready"
    assert "unsafe command" in v.reasons[0] and "ramp" in v.reasons[0]
    kinds = {x.kind for x in unsafe.violations}
    assert {"current_ramp", "current_max"} <= kinds
    first = min(unsafe.violations, key=lambda x: x.t_s)
    assert first.t_s / 86400 == pytest.approx(1.0, abs=0.01)
    assert first.value > 3000  # A/h, ten times the limit
    crit = {c.name: c for c in v.criteria}
    assert not crit["no_unsafe_command"].passed


def test_fast_startup_ramp_is_caught(cfg, rec):
    """A start-up ramp ten times the limit is unsafe even though the current it reaches is fine."""
    res = run_shadow(cfg, rec, _factory(cfg, "unsafe_ramp"), "unsafe_ramp", n_members=1)
    assert not res.verdict.ready
    assert {x.kind for x in res.violations} == {"current_ramp"}
    assert all(x.t_s < 86400 for x in res.violations)


def test_safe_candidate_is_ready(safe, cfg):
    v = safe.verdict
    assert v.ready and v.label == "ready", v.reasons
    assert all(c.passed for c in v.criteria)
    assert not safe.violations
    assert safe.predicted["purity_min_pct"] >= 99.7
    assert safe.predicted["days_min"] >= cfg.verdict.cycle_min_days
    assert safe.predicted["dc_kwh_per_kg_max"] <= cfg.verdict.energy_max_kwh_kg
    # what it would have done differently: hotter heater setpoints once Fe shows in the assays
    diff = {d["quantity"]: d for d in safe.differences}
    assert diff["mean heater setpoint"]["candidate"] > diff["mean heater setpoint"]["recorded"] + 2


def test_nominal_candidate_prediction_matches_what_the_pot_did(cfg, rec, recorded):
    """Replaying the policy that actually ran the pot, the calibrated twin predicts the cycle
    the hidden pot really had (37.8 d, Fe breakthrough) within a day — and judges it too
    short against the 40 d criterion."""
    res = run_shadow(cfg, rec, _factory(cfg, "nominal"), "nominal", n_members=3)
    actual_days = recorded[1]["t_s"][-1] / 86400
    assert res.predicted["days_min"] == pytest.approx(actual_days, abs=1.0)
    assert res.predicted["end_reasons"] == "cathode_fe_limit"
    assert not res.verdict.ready
    assert any(r.startswith("cycle") for r in res.verdict.reasons)
    assert not res.violations
    assert all(abs(d["difference"]) < 1e-6 for d in res.differences)  # it is the recorded controller


def test_cli_writes_html_with_plots_and_json(recorded, tmp_path):
    out = tmp_path / "sh"
    rc = cli.main(
        [
            "shadow",
            "--config",
            str(CONFIG_3KA),
            "--data",
            str(recorded[0]),
            "--candidate",
            "unsafe_step",
            "--out",
            str(out),
            "--members",
            "1",
            "--quiet",
        ]
    )
    assert rc == 1
    html = (out / "report.html").read_text()
    assert "NOT READY" in html and "unsafe command" in html
    assert html.count("data:image/png;base64,") >= 5
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert {"voltage.png", "purity.png", "commands.png", "estimates.png"} <= set(pngs)
    assert (out / "voltage.png").read_bytes().startswith(b"\x89PNG")
    body = json.loads((out / "report.json").read_text())
    assert body["verdict"]["label"] == "not ready"
    assert "ohmic_resistance" in body["flagged"]
    assert body["n_violations"] > 0


def test_cli_bad_input_exit_code(tmp_path, capsys):
    rc = cli.main(["shadow", "--config", str(CONFIG_3KA), "--data", str(tmp_path / "none.csv"), "--out", str(tmp_path)])
    assert rc == 2
    assert "none.csv: no such file" in capsys.readouterr().err


def test_recording_errors_name_file_column_and_row(tmp_path, recorded):
    cols = {k: v[:10].copy() for k, v in recorded[1].items()}
    bad = dict(cols)
    del bad["voltage_v"]
    with pytest.raises(RecordingError, match=r"x\.csv: missing column\(s\) voltage_v"):
        Recording.from_columns(bad, "x.csv")
    bad = dict(cols)
    bad["t_s"] = cols["t_s"].copy()
    bad["t_s"][5] = bad["t_s"][3]
    with pytest.raises(RecordingError, match=r"x\.csv: column t_s, row 7: time must increase"):
        Recording.from_columns(bad, "x.csv")
    dup = dict(cols)
    dup["t_s"] = cols["t_s"].copy()
    dup["t_s"][5] = dup["t_s"][4]  # a historian repeating a row: dropped and reported, not refused
    r = Recording.from_columns(dup, "x.csv")
    assert r.n == 9 and [i.kind for i in r.issues] == ["duplicate_time"] and "row 7" in r.issues[0].message
    p = tmp_path / "text.csv"
    p.write_text(
        "t_s,current_a,voltage_v,temperature_c,heater_kw\n0,0,0,800,1\n600,100,abc,800,1\n1200,200,2.9,800,1\n"
    )
    with pytest.raises(RecordingError, match=r"text\.csv: column voltage_v, row 3: not a number"):
        load_recording(p)
    with pytest.raises(RecordingError, match=r"unknown recording format"):
        load_recording(tmp_path / "rec.xlsx")


def test_safe_command_filter_contains_a_bad_candidate(cfg):
    """What the wire would do with the unsafe step: ramp-limited to 300 A/h and clamped to
    3.3 kA, heater and charges clamped."""
    lim = SafetyLimits.from_config(cfg)
    f = SafeCommandFilter(lim, period_s=600.0)
    cmd = rf.PotInputs(
        current_sp_a=np.array([3900.0]),
        heater_sp_c=np.array([950.0]),
        charge_kg=np.array([40.0]),
        tap_kg=np.array([10.0]),
        stop=np.array([False]),
    )
    out = f.apply(cmd, measured_current_a=np.array([3000.0]))
    assert out.current_sp_a[0] == pytest.approx(3050.0)  # 300 A/h × 10 min
    assert out.heater_sp_c[0] == lim.heater_setpoint_max_c
    assert out.charge_kg[0] == lim.charge_max_kg
    for _ in range(20):
        out = f.apply(cmd, measured_current_a=out.current_sp_a)
    assert out.current_sp_a[0] == lim.current_max_a


def test_generic_report_writer(tmp_path):
    """potline.report: title, text (escaped), tables, embedded PNG, JSON with NaN → null."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rep = Report("Pot <7> & friends", subtitle="a test")
    s = rep.section("Numbers")
    s.text("a < b\n\nsecond paragraph")
    s.table([{"name": "x", "value": 1.23456}, {"name": "<y>", "value": float("nan"), "extra": True}], caption="t")
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    s.figure(fig, name="line", caption="a line")
    plt.close(fig)
    s2 = rep.section("Numbers")  # same heading: unique figure names
    s2.figure(io.BytesIO(base64.b64decode(_png_b64())).getvalue(), name="line")
    path = rep.write(tmp_path / "r")
    html = path.read_text()
    assert "<title>Pot &lt;7&gt; &amp; friends</title>" in html
    assert "a &lt; b" in html and "&lt;y&gt;" in html
    assert html.count("data:image/png;base64,") == 2
    assert (tmp_path / "r" / "line.png").exists() and (tmp_path / "r" / "line-2.png").exists()
    linked = rep.write(tmp_path / "l.html", embed=False)
    assert 'src="line.png"' in linked.read_text()
    with pytest.raises(TypeError):
        s.figure("not a figure")
    with pytest.raises(ValueError):
        s.figure(b"GIF89a")
    j = write_json(tmp_path / "r.json", {"a": np.float64("nan"), "b": np.arange(3), "c": (1, 2.5)})
    assert json.loads(j.read_text()) == {"a": None, "b": [0, 1, 2], "c": [1, 2.5]}


def _png_b64() -> str:
    # 1×1 transparent PNG
    return "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
