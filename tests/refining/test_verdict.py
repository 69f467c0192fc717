"""The shadow verdict has no holes: unsafe candidates are NOT READY with the named reason (day,
value, limit), the nominal one is READY on a recording with a 2-day outage and blank cells —
with a data warning that is never blamed on the controller.

Recording: the twin playing a 3 kA pot with electrolyte conductivity −5 % and heat loss
+10 % (a pot a little off its config, whose nominal cycle still lasts ≥ 40 d), run by the
nominal policy, written like a historian export (ISO-8601 times, rounded values), with
the rows of days 10–12 removed and 8 blank cells in each measured column. Limits are the
shipped config's: current ≤ 3300 A, ramp ≤ 300 A/h, heater setpoint 740–860 °C, tap
≤ 60 kg, pot temperature 740–860 °C, metal ≤ 150 kg, a tap at least every 72 h.
"""

from __future__ import annotations

import json
import math
import re
import sys

import numpy as np
import pytest

from potline import cli
from refining import model as rf
from refining.config import CONFIG_3KA, load_refining_config
from refining.controller import RefiningPolicy, SafeCommandFilter, SafetyLimits
from refining.recording import load_recording
from refining.shadow import run_shadow
from tests.refining.refining_support import (
    NegativeTap,
    factory,
    historian_csv,
    hot,
    never_tap,
    policy,
    recorded_columns,
)

HIDDEN = {"kappa": 0.95, "ua": 1.1}
DAY = 86400.0


@pytest.fixture(scope="module")
def cfg():
    return load_refining_config(CONFIG_3KA)


@pytest.fixture(scope="module")
def export(cfg, tmp_path_factory):
    cols = recorded_columns(cfg, HIDDEN, seed=7)
    return historian_csv(cols, tmp_path_factory.mktemp("verdict") / "historian.csv", gap=(10, 2), blanks=8, seed=7)


@pytest.fixture(scope="module")
def rec(cfg, export):
    return load_recording(export, heater_sp_default=cfg.operation.heater_setpoint_c)


@pytest.fixture(scope="module")
def nominal(cfg, rec):
    return run_shadow(cfg, rec, factory(cfg, policy(cfg)), "nominal", n_members=3)


def test_export_has_iso_times_an_outage_and_blanks(export, rec):
    lines = [ln for ln in export.read_text().splitlines() if not ln.startswith("#")]
    assert lines[0].startswith("timestamp,")
    assert re.match(r"^2025-10-01T00:10:00Z,", lines[2])
    assert rec.t0_utc == "2025-10-01T00:00:00Z" and rec.t_s[1] == 600.0
    gaps = [i for i in rec.issues if i.kind == "gap"]
    assert len(gaps) == 1 and gaps[0].t_s == pytest.approx(10 * DAY) and gaps[0].length_s == pytest.approx(2 * DAY)
    assert {i.column: i.count for i in rec.issues if i.kind == "blank"} == {
        "current_a": 8,
        "voltage_v": 8,
        "temperature_c": 8,
        "heater_kw": 8,
    }
    assert len(rec.segments()) == 2


def test_nominal_is_ready_on_the_outage_with_a_data_warning(nominal, cfg):
    v = nominal.verdict
    assert v.ready and v.label == "ready", v.reasons
    assert all(c.passed for c in v.criteria)
    assert not nominal.violations
    assert any("1 gap(s), 2.00 d without data" in w for w in v.data_warnings)
    assert any("no data for 2.00 d from day 10.00 to day 12.00" in w for w in v.data_warnings)
    assert any(w.startswith("data: voltage_v: 8 blank cell(s)") for w in v.data_warnings)
    # the process criteria hold with margin on the prediction
    p = nominal.predicted
    assert p["t_high_c_max"] < cfg.safety.temperature_max_c and p["metal_max_kg"] < cfg.safety.metal_inventory_max_kg
    assert p["tap_interval_max_h"] <= cfg.verdict.tap_interval_max_h and p["breakthrough_end"]
    body = nominal.to_dict()
    assert body["verdict"]["data_warnings"] == v.data_warnings and len(body["recording"]["segments"]) == 2


def test_without_gap_detection_the_outage_would_be_blamed_on_the_controller(cfg, export):
    """Read as if contiguous, the 2-day hole makes the nominal controller size a charge and a
    tap from 2 days of current — exactly the false 'unsafe command' the segmentation prevents."""
    blind = load_recording(export, gap_s=1e9)
    assert not blind.gap.any()
    res = run_shadow(cfg, blind, factory(cfg, policy(cfg)), "nominal", n_members=1)
    kinds = {x.kind for x in res.violations if x.where == "replay"}
    assert kinds & {"charge_size", "tap_size"}
    first = min((x for x in res.violations if x.where == "replay"), key=lambda x: x.t_s)
    assert first.t_s == pytest.approx(12 * DAY, abs=600)


@pytest.mark.parametrize("field", ["current_a", "heater_c"])
def test_nan_command_is_not_ready_with_time_value_and_limit(cfg, rec, field):
    pp = policy(cfg, **{field: math.nan}).with_(name=f"nan_{field}")
    res = run_shadow(cfg, rec, factory(cfg, pp), pp.name, n_members=1)
    v = res.verdict
    assert not v.ready
    c = v.criterion("no_unsafe_command")
    assert not c.passed and c.t_s == 0.0
    first = next(x for x in res.violations if x.where == "replay")
    assert first.kind == "not_finite" and first.t_s == 0.0 and math.isnan(first.value)
    label = "current setpoint" if field == "current_a" else "heater setpoint"
    assert f"day 0.00: {label} is nan" in c.text and "finite" in c.text
    assert v.reasons[0] == c.text


def test_negative_tap_is_not_ready_with_time_value_and_limit(cfg, rec):
    res = run_shadow(cfg, rec, lambda n: NegativeTap(cfg, n), "negative_tap", n_members=1)
    v = res.verdict
    assert not v.ready
    neg = [x for x in res.violations if x.kind == "tap_negative" and x.where == "replay"]
    assert len(neg) == 1
    assert neg[0].t_s == pytest.approx(2 * DAY) and neg[0].value == -50.0 and neg[0].limit == 0.0
    c = v.criterion("no_unsafe_command")
    assert "day 2.00: tap -50.0 kg < 0 kg" in c.text
    # the wire never sends it: the filter drops the request (and the skipped tap shows in the schedule)
    assert not v.criterion("tapping").passed


def test_never_tapping_is_not_ready_on_inventory_and_schedule(cfg, rec):
    """Every command is within bounds, but the metal piles up: ≥ 40 d of Faraday production
    (0.3356 kg/kA·h × 3 kA × CE 0.9) on top of the 45 kg start, far over the 150 kg capacity."""
    res = run_shadow(cfg, rec, factory(cfg, never_tap(cfg)), "never_tap", n_members=2)
    v = res.verdict
    assert not v.ready
    assert v.criterion("no_unsafe_command").passed
    inv = v.criterion("metal_inventory")
    assert not inv.passed and inv.limit == 150.0 and inv.unit == "kg"
    assert inv.value > 45.0 + 0.3356 * 3.0 * 24 * 0.9 * 40
    # the pool passes the capacity once (150 - 45) kg have been made: ~4.6 d at ~22.8 kg/d
    assert 3.5 * DAY < inv.t_s < 6.0 * DAY
    assert f"capacity 150 kg, first over at day {inv.t_s / DAY:.2f}" in inv.text
    tap = v.criterion("tapping")
    assert not tap.passed and tap.limit == 72.0 and tap.value > 40 * 24
    assert tap.t_s == pytest.approx(72 * 3600.0)  # overdue 72 h after the cycle start
    assert "0 tap(s)" in tap.text


def test_driving_the_temperature_over_the_limit_is_not_ready(cfg, rec):
    """Current at its maximum and the heater setpoint at its maximum: each command is within
    [safety], but the pot overshoots 860 °C — found on the predicted run, with day and value."""
    res = run_shadow(cfg, rec, factory(cfg, hot(cfg)), "hot", n_members=2)
    v = res.verdict
    assert not v.ready
    assert v.criterion("no_unsafe_command").passed
    c = v.criterion("temperature_max")
    assert not c.passed and c.limit == cfg.safety.temperature_max_c == 860.0
    traj = res.trajectory
    assert traj is not None
    assert c.value == pytest.approx(float(np.nanmax(np.where(traj.alive, traj.temperature_c, np.nan))))
    assert c.value > 860.0
    rows = np.flatnonzero((traj.temperature_c > 860.0).any(axis=1))
    assert c.t_s == traj.t_s[rows[0]]
    assert f"predicted {c.value:.1f} °C > limit 860 °C, first at day {c.t_s / DAY:.2f}" in c.text


def test_safe_command_filter_contains_nan_and_negative_requests(cfg):
    lim = SafetyLimits.from_config(cfg)
    f = SafeCommandFilter(lim, period_s=600.0)
    ok = rf.PotInputs(np.array([3000.0]), np.array([805.0]), np.array([5.0]), np.array([20.0]), np.array([False]))
    f.apply(ok, np.array([3000.0]))
    bad = rf.PotInputs(
        np.array([math.nan]), np.array([math.nan]), np.array([math.nan]), np.array([-50.0]), np.array([math.nan])
    )
    out = f.apply(bad, np.array([3000.0]))
    assert out.current_sp_a[0] == 3000.0 and out.heater_sp_c[0] == 805.0  # held
    assert out.charge_kg[0] == 0.0 and out.tap_kg[0] == 0.0 and not out.stop[0]
    assert any("current setpoint not finite" in a for a in f.last_actions)
    assert any("tap" in a for a in f.last_actions)


def never_tap_factory(cfg, n, period_s):
    """For the CLI test (``--candidate module:attr``)."""
    return RefiningPolicy(never_tap(cfg), n, period_s)


def test_cli_names_the_failure_in_the_report(cfg, export, tmp_path, capsys):
    out = tmp_path / "sh"
    mod = sys.modules[__name__].__name__
    rc = cli.main(
        ["shadow", "--config", str(CONFIG_3KA), "--data", str(export), "--candidate", f"{mod}:never_tap_factory",
         "--out", str(out), "--members", "1"]
    )  # fmt: skip
    assert rc == 1
    printed = capsys.readouterr().out
    assert "NOT READY" in printed and "capacity 150 kg" in printed and "data: 1 gap(s)" in printed
    body = json.loads((out / "report.json").read_text())
    crit = {c["name"]: c for c in body["verdict"]["criteria"]}
    assert crit["metal_inventory"]["passed"] is False and crit["metal_inventory"]["limit"] == 150.0
    assert crit["metal_inventory"]["t_s"] > 0
    assert body["verdict"]["data_warnings"] and body["recording"]["synthetic"] is True
    html = (out / "report.html").read_text()
    assert "first failed (day)" in html and "Data problems of the recording" in html
