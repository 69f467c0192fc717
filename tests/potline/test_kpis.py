"""Process KPIs: the numbers a real /metrics scrape publishes, and the shipped Grafana
dashboard and Prometheus alert rules loaded and checked against the series the daemon
exports (with ``promtool`` when it is installed: PROMTOOL=<path> or on PATH)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from potctl.feeding import OVERFEED, UNDERFEED
from potctl.pfc import AL_KG_PER_KAH, tier2_emissions_per_t
from potctl.plant import Measurements
from potline.kpis import CELL_STATES, ProcessKpis
from potline.metrics import DaemonMetrics, HealthState, MetricsServer
from tests.plc_bridge.mirror_support import make_layout

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "potline.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
#: series Prometheus itself provides
PROMETHEUS_OWN = {"up"}


def promtool() -> str | None:
    return os.environ.get("PROMTOOL") or shutil.which("promtool")


def scan(lay, t: float, u: float | np.ndarray = 4.3, **over) -> Measurements:
    n, nl = lay.n_cells, lay.n_lines
    fields = dict(
        t_s=t, line_current_ka=np.full(nl, 120.0), line_voltage_v=np.full(nl, 600.0),
        line_setpoint_ka=np.full(nl, 121.0), rectifier_remote=np.ones(nl, bool), rectifier_tripped=np.zeros(nl, bool),
        tap_position=np.ones(nl), cell_voltage_v=np.broadcast_to(np.asarray(u, float), (n,)).copy(),
        feeder_ack=np.zeros(n), beam_ack_mm=np.zeros(n), tapping=np.zeros(n, bool), anode_change=np.zeros(n, bool),
        cut_out=np.zeros(n, bool), cell_ok=np.ones(n, bool), line_ok=np.ones(nl, bool), cell_remote=np.ones(n, bool),
    )  # fmt: skip
    fields.update(over)
    return Measurements(**fields)  # type: ignore[arg-type]


def test_line_and_room_figures_energy_and_metal() -> None:
    lay = make_layout((2, 3))  # Room1: cells 0,1 (lines 0,1); Room2: cells 2,3,4 (lines 0,1,0)
    k = ProcessKpis(lay, "Bench")
    u = np.array([4.0, 4.4, 4.2, 9.9, 4.6])
    cut = np.array([False, False, False, False, True])
    ok = np.array([True, True, True, False, True])  # cell 3: bad data, counted at its room's mean
    for i in range(11):
        k.update(scan(lay, 100.0 + 10 * i, u, cut_out=cut, cell_ok=ok))
    assert k.line_current_ka.tolist() == [120.0, 120.0]
    assert k.room_mean_v.tolist() == pytest.approx([4.2, 4.2])  # Room2: only cell 2 is good and in circuit
    power = np.array([(4.0 + 4.4) * 120e3, (4.2 + 4.2) * 120e3])
    np.testing.assert_allclose(k.room_power_w, power)
    np.testing.assert_allclose(k.energy_j, power * 100.0)  # 10 intervals of 10 s
    metal = np.array([2, 2]) * 120.0 * AL_KG_PER_KAH * 0.95 * 100.0 / 3600.0
    np.testing.assert_allclose(k.metal_kg, metal)
    w = k.window()
    np.testing.assert_allclose(w["kwh_per_kg"], power * 100.0 / 3.6e6 / metal)
    assert k.room_quality.tolist() == pytest.approx([1.0, 2 / 3])
    assert k.cells["cut_out"].tolist() == [0, 1] and k.cells["in_circuit"].tolist() == [2, 2]
    assert k.cells["bad_data"].tolist() == [0, 1]


def test_cells_by_state() -> None:
    lay = make_layout((2, 3))
    k = ProcessKpis(lay, "Bench")
    remote = np.array([True, True, False, False, False])
    phase = np.array([UNDERFEED, OVERFEED, UNDERFEED, UNDERFEED, OVERFEED])
    k.update(scan(lay, 0.0, tapping=np.array([0, 1, 0, 0, 1], bool), anode_change=np.array([0, 0, 1, 0, 0], bool),
                  cell_remote=remote), ae_active=np.array([0, 0, 0, 1, 1], bool), feed_phase=phase)  # fmt: skip
    got = {s: k.cells[s].tolist() for s in CELL_STATES}
    assert got["ae"] == [0, 2] and got["tapping"] == [1, 1] and got["anode_change"] == [0, 1]
    assert got["local"] == [0, 3] and got["remote"] == [2, 0]
    assert got["underfeed"] == [1, 2] and got["overfeed"] == [1, 1] and got["nominal_feed"] == [0, 0]


def test_anode_effect_frequency_aem_and_pfc_over_a_rolling_day() -> None:
    lay = make_layout((2, 3))
    k = ProcessKpis(lay, "Bench")
    t = 0.0
    for _ in range(24 * 6 + 1):  # one day of 10-min scans
        k.update(scan(lay, t))
        t += 600.0
    k.ae_started(2, 3600.0)
    k.ae_ended(2, 120.0, 3720.0)
    k.ae_started(3, 7200.0)
    k.ae_ended(3, 60.0, 7260.0)
    w = k.window()
    # Room2: 3 cells x 1 day (the first hour's bucket fell out of the 24-bucket window: 23 h + the open hour)
    cell_days = w["cell_days"][1]
    assert cell_days == pytest.approx(3.0, rel=0.05)
    assert w["ae_count"].tolist() == [0, 2]
    assert w["ae_frequency"][1] == pytest.approx(2 / cell_days)
    assert w["aem"][1] == pytest.approx(3.0 / cell_days)
    assert w["co2e_kg_per_t"][1] == pytest.approx(tier2_emissions_per_t(3.0 / cell_days)[2])
    assert w["aem"][0] == 0.0 and k.ae_minutes.tolist() == [0.0, 3.0]
    # a day later the AEs have left the window; the counter stays
    for _ in range(24 * 6):
        k.update(scan(lay, t))
        t += 600.0
    assert k.window()["ae_count"].tolist() == [0, 0]
    assert k.ae_minutes.tolist() == [0.0, 3.0]


def test_metrics_endpoint_publishes_the_kpis_beside_the_daemon_series() -> None:
    from plc_bridge.ports import free_port

    lay = make_layout((2, 3))
    metrics = DaemonMetrics("Bench")
    kpis = ProcessKpis(lay, "Bench")
    kpis.register(metrics.registry)
    kpis.update(scan(lay, 0.0))
    kpis.update(scan(lay, 60.0, 4.5), ae_active=np.array([0, 0, 1, 0, 0], bool))
    kpis.ae_started(2, 60.0)
    metrics.cycles.labels("Bench").inc()
    srv = MetricsServer(metrics, HealthState(), port=free_port())
    srv.start()
    try:
        with urllib.request.urlopen(f"{srv.url}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    finally:
        srv.stop()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    assert samples[("potline_line_current_amperes", (("line", "Line1"), ("plant", "Bench")))] == 120000.0
    assert samples[("potline_room_cell_voltage_mean_volts", (("plant", "Bench"), ("room", "Room2")))] == 4.5
    assert samples[("potline_cells", (("plant", "Bench"), ("room", "Room2"), ("state", "ae")))] == 1.0
    assert samples[("potline_room_anode_effects_window", (("plant", "Bench"), ("room", "Room2")))] == 1.0
    energy = samples[("potline_room_energy_joules_total", (("plant", "Bench"), ("room", "Room1")))]
    assert energy == pytest.approx(2 * 4.5 * 120e3 * 60.0)
    assert samples[("potline_cycles_total", (("plant", "Bench"),))] == 1.0  # the daemon's own series on the same page


# ---------------------------------------------------------------------------- shipped dashboard and rules


def exported_names() -> set[str]:
    """Every series name the daemon's /metrics can carry: DaemonMetrics + ProcessKpis."""
    metrics = DaemonMetrics("Bench")
    ProcessKpis(make_layout(), "Bench").register(metrics.registry)
    names: set[str] = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}
    reg: CollectorRegistry = metrics.registry
    for fam in reg.collect():
        names.add(fam.name)
        names.update(fam.name + s for s in suffixes.get(fam.type, ()))
    return names


_FUNCS = {"sum", "rate", "increase", "histogram_quantile", "by", "on", "and", "or", "unless", "max", "min", "avg"}


def metric_names(expr: str) -> set[str]:
    found = set(re.findall(r"\b(potline_[a-z0-9_]+)", expr))
    found |= {m for m in re.findall(r"\b([a-zA-Z_:][\w:]*)\s*\{", expr) if m not in _FUNCS}
    return found


def dashboard_targets() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for p in dash["panels"]:
        for tgt in p.get("targets", []):
            out.append((p["title"], tgt["expr"]))
    return out


def test_dashboard_json_is_a_valid_grafana_dashboard() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "potline-process" and dash["title"] and isinstance(dash["schemaVersion"], int)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"DS_PROMETHEUS", "plant", "room"} <= variables
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        assert p["type"] in {"row", "timeseries", "stat", "bargauge", "gauge", "table"}, p["type"]
        if p["type"] != "row":
            assert p["targets"], f"panel {p['title']!r} has no query"
            assert p["datasource"]["uid"] == "${DS_PROMETHEUS}"
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs))
    # no two panels overlap
    cells = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['title']!r} overlaps another at {(x, y)}"
                cells.add((x, y))


def test_every_dashboard_query_names_series_the_daemon_exports() -> None:
    exported = exported_names()
    dash = json.loads(DASHBOARD.read_text())
    exprs = dashboard_targets() + [("variable " + v["name"], v["definition"]) for v in dash["templating"]["list"]
                                   if v["type"] == "query"]  # fmt: skip
    assert len(exprs) >= 20
    for title, expr in exprs:
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr!r}"
        missing = names - exported - PROMETHEUS_OWN
        assert not missing, f"{title}: {sorted(missing)} not exported by the daemon"


def test_alert_rules_parse_and_name_exported_series() -> None:
    doc = yaml.safe_load(ALERTS.read_text())
    exported = exported_names()
    rules = [r for g in doc["groups"] for r in g["rules"]]
    assert len(rules) >= 8
    for r in rules:
        assert r["alert"] and r["expr"] and r["labels"]["severity"] in {"critical", "warning"}
        assert r["annotations"]["summary"]
        missing = metric_names(r["expr"]) - exported - PROMETHEUS_OWN
        assert not missing, f"{r['alert']}: {sorted(missing)} not exported"


@pytest.mark.skipif(promtool() is None, reason="promtool not installed (Debian package prometheus; PROMTOOL=<path>)")
def test_promtool_checks_the_rules_runs_their_unit_tests_and_parses_the_dashboard_queries(tmp_path) -> None:
    tool = promtool()
    assert tool is not None
    check = subprocess.run([tool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run([tool, "test", "rules", ALERTS_TEST.name], cwd=ALERTS_TEST.parent, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert unit.returncode == 0, unit.stdout + unit.stderr
    # the dashboard's PromQL, with Grafana's variables filled in, as recording rules promtool parses
    subst = {"$plant": "Bench", "$room": "Potroom1", "$__rate_interval": "1m"}
    records = []
    for i, (_title, expr) in enumerate(dashboard_targets()):
        for k, v in subst.items():
            expr = expr.replace(k, v)
        records.append({"record": f"dashboard:panel_{i}", "expr": expr})
    f = tmp_path / "dashboard_rules.yml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    parsed = subprocess.run([tool, "check", "rules", str(f)], capture_output=True, text=True, timeout=60)
    assert parsed.returncode == 0, parsed.stdout + parsed.stderr
