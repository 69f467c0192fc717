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


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_sim_on_the_reference_plant_reports_published_ae_frequency_energy_and_validity(tmp_path: Path) -> None:
    """``potline sim`` on the embedded 660-cell reference plant, one day under the PLCs' own
    automation (tracking feed, resistance control, AE kill, operations, feed disturbances).

    Published ranges (docs/domain.md §2 and §5a): the IAI anode-effect surveys for point-fed
    prebake lines, frequencies of order 0.1 AE/pot-day with durations of tens of seconds to a
    couple of minutes under automatic kill (accepted: 0.03–0.3 AE/pot-day, mean 20–120 s,
    0.01–0.3 AE-min per cell-day); ALRO Slatina's 13.28 MWh/t DC (± 1.5 %) at CE > 95.5 %
    (accepted 0.95–0.965); and the twin stays inside its validity envelope (< 1 % of cell-time).
    """
    out = tmp_path / "ref"
    proc = subprocess.run(
        [sys.executable, "-m", "potline.cli", "sim", "--hours", "24", "--out", str(out), "--plot-cells", "2"],
        capture_output=True,
        text=True,
        timeout=1400,
    )
    assert proc.returncode == 0, proc.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["cells"] == 660
    assert 0.03 <= s["ae_per_pot_day"] <= 0.3, s["ae_per_pot_day"]
    assert 20.0 <= s["ae_mean_duration_s"] <= 120.0, s["ae_mean_duration_s"]
    assert 0.01 <= s["ae_minutes_per_cell_day"] <= 0.3, s["ae_minutes_per_cell_day"]
    assert s["specific_energy_kwh_per_kg"] == pytest.approx(13.28, rel=0.015)
    assert 0.95 <= s["current_efficiency"] <= 0.965
    assert s["cell_time_outside_validity"] < 0.01
    # the summary a user reads says the same
    md = (out / "summary.md").read_text()
    for key in ("ae_per_pot_day", "specific_energy_kwh_per_kg", "cells_outside_validity_ever"):
        assert key in md
