"""The daemon's plan execution (``potline.plan_exec``) on a real daemon config, a real journal
file and a real controller: ``[plan] file`` at start, plan files dropped into
``<state_dir>/plans`` (taken or refused and moved), the step's currents becoming the
controller's line targets, the heat-exchanger duty in the commands, and the warning when the
safety layer's ramp would slow a grid shed below the rectifier's."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from planner.plan import Plan, PlanStep
from plc_bridge.ports import free_port
from potctl.controller import PotController
from potctl.plant import Commands, Measurements
from potline.daemon_config import load_daemon_config
from potline.journal import Journal
from potline.metrics import DaemonMetrics, HealthState
from potline.plan_exec import PlanExecution
from potline.recorder import JournalRecorder
from tests.potline.daemon_support import daemon_config

T0 = datetime(2026, 12, 5, 6, 0, tzinfo=UTC)


def _plan(**over) -> Plan:
    plan = Plan(name="day-ahead", t0_utc=T0, step_s=600.0, lines=["Line1"],
                steps=[PlanStep(line_current_ka=[114.0], hx_duty_kw=[3.5]), PlanStep(line_current_ka=[110.0])],
                constraints={"energy_mwh_max": 30.0})  # fmt: skip
    return plan.model_copy(update=over)


def _setup(tmp_path: Path, **sections):
    ports = {"rectifier": free_port(), "potroom": free_port()}
    cfg, _ = daemon_config(tmp_path, None, ports=ports, **sections)
    loaded = load_daemon_config(cfg)
    rec = JournalRecorder("test", loaded.layout.plant, DaemonMetrics("test"), HealthState(), mode=lambda: "control",
                          now=lambda: 0.0)  # fmt: skip
    rec.journal = Journal(tmp_path / "journal.db")
    now = [T0.timestamp() - 10.0]
    ex = PlanExecution(loaded, rec, lambda: now[0])
    return loaded, rec, ex, now


def _events(tmp_path: Path) -> list:
    j = Journal(tmp_path / "journal.db", readonly=True)
    try:
        return j.query()
    finally:
        j.close()


def _meas(n_cells: int) -> Measurements:
    z = np.zeros(n_cells)
    return Measurements(t_s=0.0, line_current_ka=np.array([120.0]), line_voltage_v=np.array([1145.0]),
                        line_setpoint_ka=np.array([120.0]), rectifier_remote=np.array([True]),
                        rectifier_tripped=np.array([False]), tap_position=np.array([17]), cell_voltage_v=z + 4.3,
                        feeder_ack=np.zeros(n_cells, dtype=np.int64), beam_ack_mm=z, tapping=z.astype(bool),
                        anode_change=z.astype(bool), cut_out=z.astype(bool), cell_ok=np.ones(n_cells, dtype=bool),
                        line_ok=np.array([True]))  # fmt: skip


def test_the_config_plan_runs_its_steps_into_the_controller_and_the_duty_into_the_commands(tmp_path) -> None:
    (tmp_path / "plans").mkdir()
    _plan().save(tmp_path / "plans" / "start.json")
    loaded, rec, ex, now = _setup(tmp_path, plan={"file": "plans/start.json"})
    ex.start()
    rec.commit()
    ctl = PotController(loaded.layout, loaded.control)
    ex.before_step(ctl)  # before t0: the controller keeps its own target
    assert ctl.amperage.lines[0].target_ka == 120.0
    now[0] = T0.timestamp() + 1.0
    ex.before_step(ctl)
    assert ctl.amperage.lines[0].target_ka == 114.0
    n = loaded.layout.n_cells
    cmds = Commands.idle(n, 1)
    cmds.line_setpoint_ka = np.array([119.5])
    ex.shape(cmds, _meas(n), None, 0.0)
    assert cmds.line_setpoint_ka[0] == 119.5  # no grid request: the controller's setpoint as it is
    assert cmds.hx_duty_kw is not None and np.all(cmds.hx_duty_kw == 3.5)
    now[0] = T0.timestamp() + 600.0
    ex.before_step(ctl)
    assert ctl.amperage.lines[0].target_ka == 110.0
    now[0] = T0.timestamp() + 1200.0
    ex.before_step(ctl)
    rec.commit()
    kinds = [e.kind for e in _events(tmp_path)]
    assert kinds == ["plan_loaded", "plan_step", "plan_step", "plan_finished"]
    loaded_ev = _events(tmp_path)[0]
    assert loaded_ev.data["constraints"] == {"energy_mwh_max": 30.0} and loaded_ev.source == "plan"
    st = ex.status()
    assert st["plan"]["state"] == "finished" and st["grid"] == [
        {"line": "Line1", "state": "idle", "limit_mw": None, "target_ka": None, "cap_ka": None, "full_shed": False,
         "t_start_s": None, "reached_ka": None, "time_to_reach_s": None}]  # fmt: skip


def test_dropped_plans_are_taken_or_refused_and_moved(tmp_path) -> None:
    _loaded, rec, ex, _now = _setup(tmp_path)
    ex.folder.mkdir(parents=True)
    _plan().save(ex.folder / "a.json")
    (ex.folder / "b.json").write_text('{"kind": "potline-plan", "step_s": 60}')
    old = time.time() - 60.0  # written a minute ago (wall clock): settled
    for f in ("a.json", "b.json"):
        os.utime(ex.folder / f, (old, old))
    ex.take_folder()
    assert (ex.folder / "loaded" / "a.json").exists()
    assert (ex.folder / "rejected" / "b.json").exists()
    why = (ex.folder / "rejected" / "b.json.errors.txt").read_text()
    assert "t0_utc" in why and "Field required" in why
    ev = _events(tmp_path)
    rej = [e for e in ev if e.kind == "plan_rejected"]
    assert len(rej) == 1 and "b.json" in rej[0].detail
    assert ex.runner.plan is not None and ex.runner.plan.name == "day-ahead"
    # a restart (a new execution on the same state_dir) takes the plan that was in force again
    assert rec.journal is not None
    rec.journal.close()
    _loaded2, rec2, ex2, _now2 = _setup(tmp_path)
    ex2.start()
    rec2.commit()
    again = [e for e in _events(tmp_path) if e.kind == "plan_loaded"]
    assert len(again) == 2 and again[-1].data["name"] == "day-ahead"
    assert ex2.runner.plan is not None and ex2.runner.source == "restart"


def test_a_safety_ramp_slower_than_the_rectifier_is_journalled_at_start(tmp_path) -> None:
    _loaded, rec, ex, _now = _setup(tmp_path, safety={"line_current_ramp_ka_per_s": 0.05})
    ex.start()
    rec.commit()
    ev = [e for e in _events(tmp_path) if e.kind == "daemon_error"]
    assert len(ev) == 1 and "slower than Line1's rectifier ramp (6 kA/min)" in ev[0].detail
    # the shed then runs at the safety layer's ramp (3 kA/min), not faster than it would pass
    assert ex.sheds[0].settings.fast_ka_per_s == 0.05
