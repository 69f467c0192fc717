"""``potline demo`` (the README's first command), short: a rig process, the controller over
the protocols, and a report a person can open."""

from __future__ import annotations

import json

import pytest

from potline.cli import main

pytestmark = pytest.mark.hil


def test_potline_demo_short_run_writes_the_report(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    rc = main(["demo", "--hours", "0.1", "--cells", "16", "--scan", "2", "--speed", "50", "--out", str(out),
               "--no-progress"])  # fmt: skip
    printed = capsys.readouterr().out
    assert rc == 0, printed
    html = out / "report.html"
    assert html.exists() and f"Report: {html.resolve()}" in printed.replace("\n", "")
    page = html.read_text(encoding="utf-8")
    for heading in ("Cell voltages", "Anode effects", "Amperage and power", "Energy and PFC"):
        assert heading in page
    assert page.count("data:image/png;base64,") >= 5
    assert {"cell-voltages.png", "anode-effects.png", "amperage.png", "energy.png"} <= {p.name for p in out.iterdir()}
    doc = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert all(c["ok"] for c in doc["checks"].values()), doc["checks"]
    assert doc["rig"]["aes_under_controller"] >= 3  # AE storm: one per minute from minute 2
    assert doc["totals"]["energy_kwh"] > 0 and 10.0 < doc["totals"]["specific_energy_kwh_per_kg"] < 20.0
    assert doc["controller"]["errors"] == 0
