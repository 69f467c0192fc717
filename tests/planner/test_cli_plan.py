"""``potline plan`` as a user runs it: a real process on a quick scenario writes the plan
file (valid for the daemon) and the report; a bad scenario file is refused naming the file
and the key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from planner.plan import load_plan

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "potline.cli", "plan", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_plan_command_writes_plan_and_report(tmp_path) -> None:
    sc = tmp_path / "evening.toml"
    sc.write_text(
        '[scenario]\nname = "evening"\ndescription = "cheap afternoon, dear evening"\n'
        "[price]\neur_per_mwh = [40, 40, 40, 60, 150, 160, 150, 60]\n"
    )
    r = _run("--scenario", str(sc), "--quick", "--out", "p.json", "--report", "r.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    plan = load_plan(tmp_path / "p.json")
    assert plan.name == "evening" and len(plan.steps) == 8 and plan.lines == ["Line1", "Line2", "Line3"]
    rep = json.loads((tmp_path / "r.json").read_text())
    c = rep["check"]["comparison"]
    assert rep["feasible"] and not rep["check"]["violations"]
    assert c["plan"]["cost_eur"] < c["flat"]["cost_eur"]
    assert abs(c["metal_change_pct"]) <= 2.0
    for key in ("mwh_shifted", "cost_saving_eur"):
        assert key in c
    for key in ("energy_mwh", "metal_t", "kwh_per_kg", "ae_count", "pfc_co2e_t", "cells"):
        assert key in c["plan"]
    assert "superheat [K]" in r.stderr  # the rich table on the terminal
    md = _run("--scenario", str(sc), "--quick", "--no-check", "--out", "p2.json", "--report", "r.md", cwd=tmp_path)
    assert md.returncode == 0 and "| energy cost [EUR] |" in (tmp_path / "r.md").read_text()


def test_bad_scenario_file_named(tmp_path) -> None:
    sc = tmp_path / "bad.toml"
    sc.write_text("[price]\neur_per_mwh = [40, true]\n")
    r = _run("--scenario", str(sc), "--quick", cwd=tmp_path)
    assert r.returncode == 2
    assert str(sc) in r.stderr and "price.eur_per_mwh[1]" in r.stderr
    assert not (tmp_path / "plan.json").exists()
