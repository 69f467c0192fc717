"""The rig and the controller in lockstep (``rig.start(..., lockstep=True)``, see
``hil_rigs.pytest_plugin.LockstepClock``): plant time moves only when the controller
sleeps, and the PLCs scan every step, so a test process that stalls — a busy machine —
costs no heartbeat and no anode effect. The sockets, the bridge and the controller are
the real ones."""

from __future__ import annotations

import time

import pytest

from hil_rigs.pytest_plugin import HilRig
from plc_bridge.runtime import CycleInfo

pytestmark = pytest.mark.hil


async def test_a_stalled_controller_loses_no_heartbeat_and_no_ae_in_lockstep(rig: HilRig) -> None:
    await rig.start("ae_storm", lockstep=True, **{"plant.cells": 16, "controller.scan_s": 2.0,
                    "scenario.duration_s": 300.0, "ae_storm.start_s": 60.0, "ae_storm.every_s": 40.0,
                    "expect.min_aes": 4})  # fmt: skip
    session = await rig.start_controller()
    stalls: list[float] = []

    def stall(info: CycleInfo) -> None:
        if info.n % 30 == 15:  # every minute of plant time
            # fault injection, not a wait: the process stalls for a wall second, as on a busy
            # machine (in real time at 50x that is 50 plant s, past the PLCs' 37.5 s watchdog)
            time.sleep(1.0)
            stalls.append(info.t_s)

    session.on_cycle_user = stall
    await rig.run()
    rep = await rig.finish()
    rig.assert_no_errors()
    assert len(stalls) >= 4
    for dev in ("potroom:Potroom1", "rectifier:Line1"):
        changes = rep.mode_changes(dev)
        assert changes and changes[0][1], f"{dev} never went remote: {changes}"
        assert all(remote for _, remote in changes), f"{dev} fell back to local: {changes}"
    rig.assert_all_aes_detected()
    rig.assert_all_aes_quenched(max_duration_s=240.0)
