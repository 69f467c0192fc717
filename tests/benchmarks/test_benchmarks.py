"""The benchmark suite still works (CI smoke run, no timing assertions), and the NumPy
baseline it compares against computes the same plant as the Numba kernels.

- The NumPy version of the sub-step equations (``benchmarks/numpy_reference.py``) is an
  independent implementation: run on the twin's own random streams it must reproduce the
  Numba kernel's cell voltages, line currents and states, with local control, tapping,
  anode changes, a cut-out cell and anode effects (tolerance: 1e-6 relative; in practice
  it agrees to ~1e-13, rounding differences of vectorised exp/log/pow).
- ``python -m benchmarks --quick`` runs benchmarks in their own processes and writes JSON with
  min/median/max figures, machine and versions, the growth table/plot and PERFORMANCE.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.numpy_reference import NumpyPotline
from twin.cell_layout import A_AE_N, A_FED, O_U, S_AL2O3, S_BEAM_ACK, S_FEED_ACK, S_TBATH
from twin.config import PlantConfig
from twin.potline import KERNELS, Potline
from twin.rectifier import R_I

REPO = Path(__file__).resolve().parents[2]
REL_TOL = 1e-6


def two_line_plant(**sections) -> PlantConfig:
    """Two series lines (24 + 20 cells) on their own rectifiers."""
    data = PlantConfig.single_room(24, **sections).model_dump()
    line2 = dict(data["lines"][0], name="Line2", rooms=[{"name": "Potroom2", "cells": 20}])
    data["lines"].append(line2)
    return PlantConfig.model_validate(data)


def rel_err(a: np.ndarray, b: np.ndarray, floor: float) -> float:
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(a), floor)))


def assert_same_plant(twin: Potline, ref: NumpyPotline) -> None:
    u_twin, u_ref = twin.out[:, O_U], ref.out[:, O_U]
    assert rel_err(u_twin, u_ref, 1e-3) < REL_TOL, "cell voltages differ"
    assert rel_err(twin.rect[:, R_I], ref.rect[:, R_I], 1.0) < REL_TOL, "line currents differ"
    for col, floor in ((S_AL2O3, 1.0), (S_TBATH, 1.0), (A_FED, 1.0), (S_BEAM_ACK, 1.0)):
        assert rel_err(twin.state[:, col], ref.state[:, col], floor) < REL_TOL
    assert np.array_equal(twin.state[:, S_FEED_ACK], ref.state[:, S_FEED_ACK]), "feeder shot counts differ"
    assert np.array_equal(twin.state[:, A_AE_N], ref.state[:, A_AE_N]), "AE counts differ"
    assert rel_err(twin.state, ref.state, 1e-3) < REL_TOL, "some state differs"


def test_numpy_reference_matches_numba_without_noise_or_aes():
    """Deterministic case: MHD noise off, no AEs, no disturbances; 600 s of PLC local control
    on two lines."""
    twin = Potline(two_line_plant(cell={"noise_mv": 0.0}, disturbances={"enabled": False}), parallel=False)
    ref = NumpyPotline.from_potline(twin, rng="twin")
    twin.advance(600.0)
    ref.advance(600.0)
    assert twin.truth()["ae_count"].sum() == 0
    assert twin.state[:, S_FEED_ACK].sum() > 0 and np.abs(twin.state[:, S_BEAM_ACK]).sum() > 0  # local control acted
    assert 4.0 < twin.out[:, O_U].mean() < 4.7
    assert_same_plant(twin, ref)


def test_numpy_reference_matches_numba_with_events():
    """Noise on, AEs with the PLC's AE kill, tapping, an anode change, a cut-out cell; parallel kernel."""
    from twin.cell_layout import S_AC_TIMER, S_TAP_TIMER

    twin = Potline(two_line_plant(), parallel=True)
    twin.state[:3, S_TAP_TIMER] = [60.0, 120.0, 240.0]
    twin.state[30:32, S_AC_TIMER] = [90.0, 300.0]
    twin.force_alumina(np.array([5, 6, 40, 41]), 1.55)
    twin.cut_out(10)
    ref = NumpyPotline.from_potline(twin, rng="twin")
    for _ in range(6):
        twin.advance(100.0)
        ref.advance(100.0)
    assert twin.truth()["ae_count"].sum() >= 4
    assert twin.measurements()["cut_out"][10] and ref.out[10, O_U] == 0.0
    assert_same_plant(twin, ref)


def test_numpy_reference_matches_numba_with_disturbances_and_exchangers():
    """Issue 13's physics: busy feed disturbances (crusted feeder holes, empty hoppers and the
    crew's manual feed), shell heat exchanger duties within and beyond their limits, benches
    in longer lines (aggregate load), tracking feed and resistance control, operations with
    bath-level correction and butt bath; serial kernel, 40 min."""
    from twin.cell_layout import S_AC_TIMER, S_HOPPER_LEFT, S_TAP_TIMER

    dist = {"feeder_blocks_per_day": 20.0, "empty_hoppers_per_day": 5.0, "feeder_block_mean_h": 0.1}
    cell = {"heat_exchanger_max_kw": 60.0, "heat_exchanger_base_kw": 20.0}
    twin = Potline(two_line_plant(disturbances=dist, cell=cell), parallel=False)
    twin.state[:4, S_TAP_TIMER] = [60.0, 200.0, 900.0, 1500.0]
    twin.state[20:24, S_AC_TIMER] = [100.0, 400.0, 800.0, 1800.0]
    twin.state[30:34, S_HOPPER_LEFT] = [30.0, 60.0, 600.0, 1200.0]
    twin.set_heat_exchanger(np.arange(0, 44, 2), np.linspace(-80e3, 90e3, 22))
    twin.force_alumina(np.array([31, 33]), 1.6)
    ref = NumpyPotline.from_potline(twin, rng="twin")
    for _ in range(8):
        twin.advance(300.0)
        ref.advance(300.0)
    t = twin.truth()
    assert t["ae_count"].sum() >= 2 and (t["feeder_blocked"].any() or t["hopper_empty"].any())
    assert np.abs(t["heat_exchanger_kw"]).max() > 1.0
    assert_same_plant(twin, ref)


def test_numpy_reference_with_generator_draws_stays_close():
    """The benchmarked mode (NumPy Generator draws): other noise, same plant within noise."""
    twin = Potline(PlantConfig.single_room(40), parallel=False)
    ref = NumpyPotline.from_potline(twin, rng="numpy", seed=3)
    twin.advance(600.0)
    ref.advance(600.0)
    assert abs(twin.out[:, O_U].mean() - ref.out[:, O_U].mean()) < 0.02  # V; noise std ~12 mV per cell
    assert abs(twin.rect[0, R_I] - ref.rect[0, R_I]) < 500.0  # A of 120 kA


# ------------------------------------------------------------------------------ the suite


#: ``python -m benchmarks`` with each benchmark's kill timeout 5x longer: the suite's quick
#: timeouts (two minutes for the model) are a quiet machine's time, and the model's cold
#: Numba compile alone takes ~2.5 min on a busy 2-core machine. Here they are deadlines only:
#: the test checks what the suite writes, not how fast.
SUITE_WITH_DEADLINES = """
import dataclasses, sys
from benchmarks import suite
suite.BENCHES = tuple(dataclasses.replace(b, quick_timeout_s=5 * b.quick_timeout_s) for b in suite.BENCHES)
sys.exit(suite.main(sys.argv[1:]))
"""
#: the quick model + Modbus run: ~75 s quiet, ~4 min with the cores busy
SUITE_DEADLINE_S = 1200


@pytest.fixture(scope="module")
def quick_suite(tmp_path_factory):
    """``python -m benchmarks --quick`` for the model and Modbus benchmarks into a temporary directory."""
    results = tmp_path_factory.mktemp("bench")
    report = results / "PERFORMANCE.md"
    proc = subprocess.run(
        [sys.executable, "-c", SUITE_WITH_DEADLINES, "--quick", "--only", "model", "--only", "modbus_scan",
         "--results", str(results), "--report", str(report)],
        cwd=REPO, capture_output=True, text=True, timeout=SUITE_DEADLINE_S,
    )  # fmt: skip
    return results, report, proc


def _check_stats(s: dict) -> None:
    assert set(s) >= {"min", "median", "max", "n"}
    assert s["n"] >= 1 and s["min"] <= s["median"] <= s["max"]


def _check_header(doc: dict, name: str) -> None:
    assert doc["benchmark"] == name and doc["quick"] is True and doc["when"]
    assert doc["machine"]["cpus"] >= 1
    assert doc["versions"]["numba"] and doc["versions"]["numpy"]


@pytest.mark.timeout(SUITE_DEADLINE_S + 60)  # the module fixture runs in the first user's setup
def test_quick_suite_writes_model_json(quick_suite):
    results, _, proc = quick_suite
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads((results / "model.json").read_text())
    _check_header(doc, "model")
    sizes = [t["cells"] for t in doc["throughput"]]
    assert sizes == [132, 660]
    for t in doc["throughput"]:
        for engine in ("numba_serial", "numba_parallel", "numpy"):
            _check_stats(t["cell_steps_per_s"][engine])
            assert t["cell_steps_per_s"][engine]["min"] > 0
        for ratio in ("numba_serial_over_numpy", "numba_parallel_over_numpy", "parallel_over_serial"):
            _check_stats(t["ratio"][ratio])
    ref = doc["throughput"][1]
    assert ref["lines"] == 3 and 0.0 < ref["lines_balance"] <= 1.0
    # the default kernel is chosen by measurement as the plant runs: the JSON names the one that ran
    assert ref["parallel_kernel"] in (*KERNELS, "auto") and ref["kernel_stats"]["mode"] == "auto"
    _check_stats(doc["pure_python"]["cell_steps_per_s"])
    for phase in ("cold", "warm"):
        _check_stats(doc["compile"][phase]["compile_total_s"])
        _check_stats(doc["compile"][phase]["to_first_step_s"])
    assert doc["compile"]["cache_index_files"] > 0  # the cold run left a cache behind
    _check_stats(doc["real_time_factor_660"]["parallel"])
    names = " ".join(t["target"] for t in doc["targets"])
    for words in ("5 M cell-steps/s", "NumPy", "real time", "compile"):
        assert words in names
    assert {"model: Numba serial", "model: Numba parallel", "model: NumPy"} <= set(doc["growth"])
    assert (results / "model.md").read_text().startswith("# Model benchmark")


@pytest.mark.timeout(SUITE_DEADLINE_S + 60)
def test_quick_suite_writes_modbus_json_and_report(quick_suite):
    results, report, proc = quick_suite
    assert proc.returncode == 0, proc.stdout + proc.stderr
    mb = json.loads((results / "modbus_scan.json").read_text())
    assert mb["scan"]["cells"] == 660 and mb["scan"]["all_good"]
    text = report.read_text()
    assert "Quick smoke run" in text
    for section in (
        "## Targets",
        "## Model",
        "## I/O",
        "## Loop",
        "## Growth with plant size",
        "## The run behind these figures",
    ):
        assert section in text
    assert ">= 3x the NumPy version (660 cells" in text and "full Modbus scan of 660 cells" in text
    assert (results / "growth.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    growth = json.loads((results / "growth.json").read_text())
    assert [c for c, _ in growth["model: Numba parallel"]["points"]] == [132, 660]
    assert (results / "logs" / "model.log").exists()
    run = json.loads((results / "run.json").read_text())
    assert {r["name"]: r["status"] for r in run["records"]}["model"] == "ok"


def test_bench_rejects_unknown_benchmark(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "nosuch", "--results", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and "nosuch" in proc.stderr and "model" in proc.stderr


@pytest.mark.slow
@pytest.mark.timeout(2460)
def test_whole_quick_suite(tmp_path):
    """Every benchmark of the suite in its quick form (a few minutes quiet)."""
    proc = subprocess.run(
        [sys.executable, "-c", SUITE_WITH_DEADLINES, "--quick", "--results", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=2400,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    from benchmarks.suite import BENCHES

    for b in BENCHES:
        if b.path.exists():
            doc = json.loads((tmp_path / f"{b.name}.json").read_text())
            assert doc.get("quick") is True
    text = (tmp_path / "PERFORMANCE.md").read_text()
    assert "| failed |" not in text and "| timeout |" not in text
