"""``potline sim`` as a user runs it: a real process, a plant file, files on disk."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PLANT = """
name = "BenchLine"
seed = 5
[[lines]]
name = "Line1"
[lines.rectifier]
setpoint_ka = 120.0
voltage_limit_v = 200.0
reactor_range_v = 60.0
tap_min_fraction = 0.3
busbar_uohm = 30.0
[[lines.rooms]]
name = "Potroom1"
cells = 24
"""


def test_sim_writes_summary_report_and_plots(tmp_path: Path) -> None:
    cfg = tmp_path / "plant.toml"
    cfg.write_text(PLANT)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "potline.cli", "sim", "--config", str(cfg), "--hours", "2", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    for name in ("report.html", "summary.md", "cells.png", "lines.png"):
        assert (out / name).stat().st_size > 0
    # docs/domain.md §0: P = 8.054·I[kA]·CE kg per cell-day
    expected_t_day = 8.054 * 120.0 * summary["current_efficiency"] * 24 / 1000.0
    assert summary["production_t_per_day"] == pytest.approx(expected_t_day, rel=0.01)
    assert 12.5 <= summary["specific_energy_kwh_per_kg"] <= 14.5


def test_sim_refuses_a_bad_config_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "plant.toml"
    cfg.write_text(PLANT.replace("cells = 24", "cells = 0"))
    proc = subprocess.run(
        [sys.executable, "-m", "potline.cli", "sim", "--config", str(cfg), "--hours", "1", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    line = next(ln for ln in proc.stderr.splitlines() if "cells" in ln)
    assert "plant.toml: lines[0:Line1].rooms[0:Potroom1].cells: expected an integer in [1, 400], got 0" in line
