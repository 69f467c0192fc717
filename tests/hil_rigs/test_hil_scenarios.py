"""End to end: the controller, connected to a HIL rig *only* over Modbus TCP / OPC UA.

CI runs short versions of the shipped scenarios (fewer cells, shorter) with the rig in this
process on a lockstep clock (``rig.start(..., lockstep=True)``): plant time moves only when the
controller sleeps, so what the tests check in plant time (watchdogs, detection windows,
resume times) does not depend on how busy the machine is; the sockets, the PLCs, the bridge and
the controller are the real ones. The full ones run with the rig in its own process
(``python -m hil_rigs serve``) in real time, with ``POTLINE_HIL_FULL=1`` (marked ``slow``).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from hil_rigs.pytest_plugin import HilRig
from hil_rigs.session import bridge_settings_for

pytestmark = pytest.mark.hil

FULL = pytest.mark.skipif(not os.environ.get("POTLINE_HIL_FULL"), reason="full-length scenario: set POTLINE_HIL_FULL=1")

#: CI versions: a 32-cell potroom behind the same PLCs and protocols
SHORT = {"plant.cells": 32, "controller.scan_s": 2.0}
#: the 32-cell bench sits in a 264-cell line (``PlantConfig.single_room``: the cells beyond the
#: bench are an aggregate load on the rectifier), so the rectifier feeds 264 cells: ~4.45 V each
#: with the busbar at 120 kA, ~141 MW (17.1 MW per 32 cells)
LINE_CELLS = 264


async def test_ae_storm_every_ae_detected_and_quenched(rig: HilRig) -> None:
    await rig.start("ae_storm", lockstep=True, **SHORT, **{"scenario.duration_s": 600.0, "ae_storm.start_s": 60.0,
                                            "ae_storm.every_s": 40.0, "expect.min_aes": 8})  # fmt: skip
    await rig.start_controller()
    await rig.run()
    rep = await rig.finish()
    rig.assert_no_errors()
    rig.assert_all_aes_detected()
    rig.assert_all_aes_quenched(max_duration_s=240.0)
    # the quench came from the controller, over the wire, seconds after the AE showed
    lat = rep.quench_latencies_s()
    assert lat.size >= 8 and np.median(lat) < 3 * rig.session.scan_s + 10.0
    assert rep.commands["beam"] > 0


async def test_power_modulation_amperage_held(rig: HilRig) -> None:
    # the line draws ~17.1 MW per 32 cells at 120 kA: shed 6 %, then add 3 % over nominal
    p_low, p_high = 16.0 * LINE_CELLS / 32, 17.6 * LINE_CELLS / 32
    await rig.start("power_modulation", lockstep=True, **SHORT, **{"scenario.duration_s": 900.0,
                    "scenario.speed": 100.0, "controller.power_schedule_mw": [[120.0, p_low], [480.0, p_high]]})  # fmt: skip
    await rig.start_controller()
    await rig.run()
    rep = await rig.finish()
    rig.assert_no_errors()
    worst = rig.assert_amperage_held(1.0, after_s=60.0)
    assert worst < 1.0
    tr = rep.trend
    t = np.asarray(tr["t_s"])
    p = np.asarray(tr["power_mw"])[:, 0]
    i = np.asarray(tr["line_current_ka"])[:, 0]
    settled_low = (t > 400.0) & (t < 480.0)
    settled_high = t > 820.0
    assert abs(np.median(p[settled_low]) - p_low) / p_low < 0.02
    assert abs(np.median(p[settled_high]) - p_high) / p_high < 0.02
    assert np.median(i[settled_low]) < 117.0 < 121.0 < np.median(i[settled_high])


async def test_comms_loss_during_ae_local_fallback_and_bumpless_resume(rig: HilRig) -> None:
    await rig.start("comms_loss_ae", lockstep=True, **SHORT, **{"scenario.duration_s": 840.0, "scenario.speed": 100.0, "events": [
        {"at_s": 300.0, "action": "ae", "cells": [20]}], "faults": [
        {"at_s": 306.0, "kind": "link_drop", "target": "all", "mode": "blackhole", "duration_s": 150.0}]})  # fmt: skip
    # lockstep: plant time moves only when the controller sleeps, so a busy machine cannot turn a
    # wall-second stall into 100 plant seconds of watchdog. While the link is blackholed every scan
    # waits out its requests' wall timeouts; shorter ones (still 10x a loopback round trip) keep
    # the 150 s outage from costing minutes of wall time
    await rig.start_controller(settings=bridge_settings_for(2.0, 100.0, modbus_timeout_s=0.25, opcua_timeout_s=0.5))
    await rig.run()
    rep = await rig.finish()
    rig.assert_no_errors()
    t_drop, t_back = 306.0, 456.0
    # both PLCs fell back to local on their watchdogs ...
    for dev in ("potroom:Potroom1", "rectifier:Line1"):
        rig.assert_fell_back_to_local(dev, t_drop, 100.0)  # watchdog: max(20 s, 0.75 wall s x speed)
    # ... the AE did not outlive the comms loss (the controller or the PLC's own AE kill quenched it)
    ae = [a for a in rep.aes if a["cell"] == 20 and 299.0 <= a["start_s"] <= 310.0]
    assert ae and ae[0]["end_s"] - ae[0]["start_s"] < 240.0
    assert ae[0]["end_s"] < t_back
    # ... the controller saw the loss, and took over again once the link was back
    kinds = {k for _, k, _, _ in rig.controller_events()}
    assert {"alarm_comms_lost", "alarm_comms_lost_cleared"} <= kinds
    t_remote = max(rig.assert_back_to_remote(d, t_back, 100.0) for d in ("potroom:Potroom1", "rectifier:Line1"))
    # bumpless: setpoint tracking + ramp limit, and the rectifier never stepped the current
    rig.assert_bumpless(t_remote, 0.5)
    tr = rep.trend
    t = np.asarray(tr["t_s"])
    i = np.asarray(tr["line_current_ka"])[:, 0]
    ae_t = t[np.asarray(tr["cells_in_ae"]) > 0]
    # around the resume, away from AEs (an AE ending on a 32-cell line swings the current)
    near = (t > t_remote - 20.0) & (t < t_remote + 40.0)
    calm = near & np.array([not np.any((ae_t <= x) & (ae_t > x - 30.0)) for x in t])
    assert calm.any() and np.abs(i[calm] - 120.0).max() < 1.5
    # and in the controller's hands again: either it wrote the setpoint after the resume, or the
    # PLC already held what it wants (the safety layer's 10 A deadband around a trimmed target sends nothing)
    after = [a for a in rep.setpoint_log if a[0] > t_remote]
    held = np.asarray(tr["setpoint_active_ka"])[:, 0][t > t_remote]
    assert after or (held.size and np.abs(held - 120.0).max() <= 0.05), "setpoint neither written nor held"
    assert rig.session.plant.stats["commands"] > 0


@pytest.mark.slow
@FULL
@pytest.mark.parametrize("name", ["ae_storm", "power_modulation", "comms_loss_ae"])
async def test_full_scenarios(rig: HilRig, name: str) -> None:
    await rig.start(name)
    await rig.start_controller()
    await rig.run()
    rep = await rig.finish()
    rig.assert_no_errors()
    exp = rep.expect
    if exp.get("all_aes_quenched"):
        rig.assert_all_aes_detected()
        rig.assert_all_aes_quenched()
    if exp.get("amperage_band_ka"):
        rig.assert_amperage_held(float(exp["amperage_band_ka"]), after_s=120.0)


@pytest.mark.slow
@FULL
@pytest.mark.parametrize("name", ["cell_cutout", "potroom_restart", "rectifier_trip"])
async def test_full_line_current_scenarios(rig: HilRig, name: str) -> None:
    await rig.start(name)
    await rig.start_controller()
    await rig.run()
    rep = await rig.finish()
    rig.assert_no_errors()
    tr = rep.trend
    i = np.asarray(tr["line_current_ka"])[:, 0]
    assert i[-1] > 110.0, f"{name}: line current did not come back ({i[-1]:.1f} kA)"
    if name == "cell_cutout":
        kinds = [k for _, k, _, _ in rig.controller_events()]
        assert "cut_out_done" in kinds and "cut_in_done" in kinds
