"""The daemon executes a plan against a HIL rig and honours the grid operator's shed request.

The rig (the twin behind Modbus PLCs on loopback, in this process) and the daemon (``potline
run`` in its own process) share plant time through the rig's clock epoch (``EpochClock``:
a daemon in its own process cannot share the in-process lockstep clock; every judgement here
is made on plant time read from the rig, so a busy machine stretches wall time, not the
result). The grid operator's RTU is a separate pymodbus client: it writes the grid limit
register of the rectifier PLC and reads the line current and voltage from the PLC's input
registers, decoded by pymodbus itself.

Checked: a bad plan named by ``[plan] file`` is refused and journalled while the daemon runs
on; a plan dropped into ``<state_dir>/plans`` is executed step by step (the line current
follows each step's setpoint); a plan dropped later with a current beyond the line's bounds is
refused and the running plan stays; a grid limit below the line's draw brings the line under
the limit within the time the rectifier's ramp (the plant config's ``ramp_ka_per_min``) allows;
the journal has the shed with the requested MW, the reached current and the time to reach it;
after the limit clears the line is back at the plan's setpoint; no setpoint written is outside
the line's bounds; the HMI's ``/api/plan`` shows the plan, its step and its constraints.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime

import pytest
from pymodbus.client import AsyncModbusTcpClient

from planner.plan import Plan, PlanStep
from tests.potline.daemon_support import (
    DaemonProcess,
    aget,
    daemon_config,
    journal_events,
    plc_remote,
    rig_scenario,
    start_rig,
    until,
    wait_journal,
)

pytestmark = [pytest.mark.hil, pytest.mark.timeout(300)]

RECT = "rectifier:Line1"
#: plant s per wall s (the daemon scans every 2 plant s = 67 ms wall)
SPEED = 30.0
#: the rectifier's ramp in the plant config (twin.config.RectifierParams default: the rig's
#: rectifier and the daemon's [plant] both use it) [kA/min]: the fastest safe shed
RECT_RAMP_KA_PER_MIN = 6.0
#: the controller's normal setpoint ramp (potctl.config.AmperageConfig default) [kA/min]
NORMAL_RAMP_KA_PER_MIN = 3.0
#: the line's setpoint bounds: the controller's amperage min/max (60/130 kA) inside the rectifier's 0-132 kA
LO_KA, HI_KA = 60.0, 130.0
#: the plan: three steps of 300 plant s
STEP_S = 300.0
PLAN_KA = (116.0, 112.0, 116.0)
#: the grid operator asks for this share of what the line draws (a ~7 kA shed)
SHED_SHARE = 0.93
#: time to reach the shed beyond the ramp's own: two daemon scans (2 s each) to see the request and
#: write, the PLC scan, the rectifier's current loop settling and the RTU's polling [plant s]
REACH_SLACK_S = 20.0
#: "at the setpoint": the DCCT within this of it [kA] (the controller's trim is ±1 %)
AT_SP_KA = 1.2


async def _rtu(port: int) -> AsyncModbusTcpClient:
    mb = AsyncModbusTcpClient("127.0.0.1", port=port)
    assert await mb.connect()
    return mb


async def _line(mb: AsyncModbusTcpClient) -> tuple[float, float]:
    """(line current [kA], line voltage [V]) from the rectifier PLC's input registers 0-3."""
    rr = await mb.read_input_registers(0, count=4, device_id=1)
    assert not rr.isError(), rr
    i_ka = mb.convert_from_registers(rr.registers[0:2], mb.DATATYPE.FLOAT32, word_order="big")
    u_v = mb.convert_from_registers(rr.registers[2:4], mb.DATATYPE.FLOAT32, word_order="big")
    return float(i_ka), float(u_v)  # type: ignore[arg-type]


async def _write_limit(mb: AsyncModbusTcpClient, mw: float) -> None:
    """The RTU writes the grid limit (holding register 8, float32, most significant word first)."""
    regs = mb.convert_to_registers(mw, mb.DATATYPE.FLOAT32, word_order="big")
    rr = await mb.write_registers(8, regs, device_id=1)
    assert not rr.isError(), rr


def _drop(folder, name: str, text: str) -> None:
    """A plan file appears whole in the folder (written beside it, then renamed)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{name}.tmp"
    tmp.write_text(text)
    os.replace(tmp, folder / name)


async def test_daemon_runs_a_plan_sheds_for_the_grid_and_recovers(tmp_path) -> None:
    rig = await start_rig(rig_scenario(speed=SPEED, cells=8, watchdog_s=20.0))
    dp = None
    mb = None
    try:
        bad = tmp_path / "bad_plan.json"
        bad.write_text(json.dumps({"kind": "potline-plan", "t0_utc": "2026-12-05T00:00:00+00:00", "step_s": 60.0,
                                   "lines": ["Line9"], "steps": [{"line_current_ka": [110.0]}]}))  # fmt: skip
        # the daemon's plant: the rig's 8-cell bench in its 264-cell line (the rest an aggregate load)
        plant = {"name": "Bench", "seed": 1, "lines": [{"name": "Line1", "rest_of_line_cells": 256,
                 "rectifier": {"setpoint_ka": 120.0, "max_ka": 132.0}, "rooms": [{"name": "Potroom1", "cells": 8}]}]}  # fmt: skip
        cfg, data = daemon_config(tmp_path, rig, mode="control", plant=plant, plan={"file": str(bad)})
        state = tmp_path / "state"
        journal = state / "journal.db"
        dp = await DaemonProcess(cfg).start()
        await dp.wait_event("daemon.first_cycle")

        # the bad plan of [plan] file: refused, journalled with the reason, the daemon runs on
        ev = await wait_journal(journal, lambda ev: any(e.kind == "plan_rejected" for e in ev), "plan_rejected")
        rej = next(e for e in ev if e.kind == "plan_rejected")
        assert "Line9" in rej.detail and "not lines of this plant" in rej.detail
        await until(lambda: plc_remote(rig, RECT), "the rectifier in remote (control)")

        # a plan from now on, on the daemon's timeline (its start's wall time + plant time)
        timeline0 = next(e for e in ev if e.kind == "daemon_start").data["timeline_t0"]
        p0 = rig.now() + 6.0
        plan = Plan(name="hil-flex", t0_utc=datetime.fromtimestamp(timeline0 + p0, UTC), step_s=STEP_S,
                    lines=["Line1"], steps=[PlanStep(line_current_ka=[v]) for v in PLAN_KA],
                    constraints={"line_current_ka": [LO_KA, HI_KA], "energy_mwh_max": 40.0},
                    objective={"cost_eur": 1234.5})  # fmt: skip
        _drop(state / "plans", "flex.json", plan.model_dump_json())

        def plan_sp(t: float) -> float:
            k = min(max(int((t - p0) // STEP_S), 0), len(PLAN_KA) - 1)
            return PLAN_KA[k]

        mb = await _rtu(int(rig.endpoints()["rectifiers"][0]["port"]))

        async def at_plan() -> bool:
            i_ka, _u = await _line(mb)
            return abs(i_ka - plan_sp(rig.now())) < AT_SP_KA

        # step 1: the line follows the plan (120 -> 116 kA at the normal ramp)
        await until(at_plan, "the line at the plan's first step", timeout=90.0, step=0.1)
        assert rig.now() < p0 + STEP_S, "reached step 1's setpoint only after the step"
        await wait_journal(journal, lambda ev: any(e.kind == "plan_loaded" for e in ev), "plan_loaded")

        # the HMI shows the plan, its step and its constraints
        code, body = await aget(f"http://127.0.0.1:{data['_ports']['hmi']}/api/plan")
        assert code == 200, body
        st = json.loads(body)
        assert st["plan"]["name"] == "hil-flex" and st["plan"]["state"] == "running" and st["plan"]["step"] == 0
        assert st["plan"]["constraints"] == {"line_current_ka": [LO_KA, HI_KA], "energy_mwh_max": 40.0}
        assert st["grid"][0]["state"] == "idle"

        # a second plan asking for more than the line may carry: refused, the running plan stays
        over = plan.model_copy(update={"name": "too-much", "steps": [PlanStep(line_current_ka=[150.0])]})
        _drop(state / "plans", "over.json", over.model_dump_json())
        await wait_journal(journal, lambda ev: sum(e.kind == "plan_rejected" for e in ev) >= 2, "the 2nd plan_rejected")
        await until(lambda: (state / "plans" / "rejected" / "over.json").exists(), "over.json moved to rejected/")

        # the grid operator's RTU asks for 93 % of what the line draws
        i0, u0 = await _line(mb)
        limit_mw = round(SHED_SHARE * i0 * u0 / 1e3, 1)
        t_req = rig.now()
        await _write_limit(mb, limit_mw)
        t_under = None
        samples: list[tuple[float, float, float]] = []

        async def under() -> bool:
            nonlocal t_under
            i_ka, u_v = await _line(mb)
            samples.append((rig.now(), i_ka, u_v))
            if i_ka * u_v / 1e3 <= limit_mw * 1.005:
                t_under = rig.now()
                return True
            return False

        await until(under, f"the line under the grid limit {limit_mw} MW", timeout=60.0, step=0.05)
        assert t_under is not None
        # hold the limit a while: the line settles at the shed current (the rig's voltage settling)
        await rig.wait_until(rig.now() + 40.0, timeout_wall_s=30.0)
        i_shed, u_shed = await _line(mb)
        d_ka = i0 - i_shed
        ramp_s = d_ka / (RECT_RAMP_KA_PER_MIN / 60.0)
        took = t_under - t_req
        # within the rectifier's ramp (+ slack), clearly faster than the normal ramp would take
        assert took <= ramp_s + REACH_SLACK_S, (took, ramp_s, d_ka)
        assert took < d_ka / (NORMAL_RAMP_KA_PER_MIN / 60.0), (took, d_ka)
        # under the limit, and not shed deeper than it asks (within 3 %: the line model's error)
        p_shed = i_shed * u_shed / 1e3
        assert limit_mw * 0.97 <= p_shed <= limit_mw * 1.005, (p_shed, limit_mw)
        assert i_shed >= LO_KA

        # the limit clears: the line goes back to the plan's setpoint
        await _write_limit(mb, 0.0)
        await until(at_plan, "the line back at the plan's setpoint", timeout=60.0, step=0.1)

        # the plan runs to its end, the line holds its last step
        await wait_journal(
            journal, lambda ev: any(e.kind == "plan_finished" for e in ev), "plan_finished", timeout=90.0
        )
        await until(at_plan, "the line at the plan's last step", timeout=30.0, step=0.1)

        ev = journal_events(journal)
        kinds = [e.kind for e in ev]
        steps = [e.data["step"] for e in ev if e.kind == "plan_step"]
        assert steps == [0, 1, 2]
        start = next(e for e in ev if e.kind == "grid_shed_start")
        assert start.data["requested_mw"] == pytest.approx(limit_mw, abs=0.05)  # float32 register
        assert start.line == "Line1"
        end = next(e for e in ev if e.kind == "grid_shed_end")
        assert end.data["requested_mw"] == pytest.approx(limit_mw, abs=0.05)
        assert end.data["reached_ka"] == pytest.approx(i_shed, abs=2.0)
        assert 0.0 < end.data["time_to_reach_s"] <= ramp_s + REACH_SLACK_S
        assert kinds.index("grid_shed_start") < kinds.index("grid_shed_reached") < kinds.index("grid_shed_end") \
            < kinds.index("grid_shed_recovered") < kinds.index("plan_finished")  # fmt: skip
        # no setpoint outside the line's bounds was ever written
        sps = [e.value for e in ev if e.kind == "setpoint_write" and e.value is not None]
        assert sps and all(LO_KA - 1e-6 <= v <= HI_KA * 1.01 for v in sps), (min(sps), max(sps))
        assert (state / "plans" / "loaded" / "flex.json").exists()
        assert dp.returncode is None
        print(f"shed {i0:.1f} -> {i_shed:.1f} kA ({d_ka:.1f} kA) for {limit_mw} MW: under the limit after"
              f" {took:.0f} plant s (ramp allows {ramp_s:.0f} + {REACH_SLACK_S:.0f} s); at the limit"
              f" {p_shed:.1f} MW; wall {time.monotonic() - dp.t_start:.0f} s")  # fmt: skip
    finally:
        if mb is not None:
            mb.close()
        if dp is not None and dp.returncode is None:
            await dp.stop()
        await rig.stop()
