"""``BridgePlant`` against a HIL rig over real sockets: measurements, their quality and the
rooms' local/remote state, writes only through the safety layer, the command handshake,
counters across a PLC restart.

The rig and the bridge share a ``VirtualClock`` that the test moves one controller scan
at a time (``cycle``): plant time — watchdogs, data ages, fault durations — depends on
the test only, not on how busy the machine is. The sockets are real.
"""

from __future__ import annotations

import numpy as np
import pytest

from hil_rigs.faults import Fault
from hil_rigs.rig import Rig
from hil_rigs.scenarios import load_scenario
from hil_rigs.session import bridge_settings_for
from plc_bridge.plant import BridgePlant
from potctl.plant import Commands
from tests.waits import step_rig
from twin.cell_layout import S_FEED_ACK
from twin.clock import VirtualClock

pytestmark = pytest.mark.hil

N = 8
SPEED = 10.0
SCAN = 1.0
#: per-request timeouts [wall s]: generous, a busy machine answers late but answers
IO_TIMEOUTS = {"modbus_timeout_s": 5.0, "opcua_timeout_s": 5.0}


def bench(potroom: str, rectifier: str = "modbus"):
    return load_scenario(
        "ae_storm",
        **{"ae_storm": None, "plant.cells": N, "scenario.speed": SPEED, "protocols.potroom": potroom,
           "protocols.rectifier": rectifier, "rig.watchdog_s": 5.0, "rig.watchdog_min_wall_s": 0.2},
    )  # fmt: skip


def start_rig(scenario) -> Rig:
    return Rig(scenario, clock=VirtualClock())


def settings(**overrides):
    return bridge_settings_for(SCAN, SPEED, **IO_TIMEOUTS, **overrides)


async def cycle(plant: BridgePlant, rig: Rig, cmds: Commands | None = None):
    """One controller scan: read, write, then ``SCAN`` s of plant time (the PLCs scan meanwhile)."""
    meas = await plant.read()
    await plant.write(cmds if cmds is not None else Commands.idle(N, 1))
    await step_rig(rig, rig.clock, SCAN)
    return meas


async def until_remote(plant: BridgePlant, rig: Rig, n: int = 40):
    """Scan until every PLC is remote (at most ``n`` scans of plant time)."""
    for _ in range(n):
        meas = await cycle(plant, rig)
        if meas.cell_ok.all() and meas.cell_remote.all() and meas.rectifier_remote.all():
            return meas
    raise AssertionError(f"PLCs did not go remote: cell_ok={meas.cell_ok}, cell_remote={meas.cell_remote}, "
                         f"remote={meas.rectifier_remote}")  # fmt: skip


@pytest.fixture
async def setup(request):
    """A rig (potroom over ``request.param``, default OPC UA; ``rect-opcua``: the rectifier over
    OPC UA, the potroom over Modbus) and a started BridgePlant."""
    param = getattr(request, "param", "opcua")
    rig = await start_rig(bench("modbus", "opcua") if param == "rect-opcua" else bench(param)).start()
    records = []
    plant = BridgePlant.from_endpoints(rig.endpoints(), rig.clock, settings(), on_record=records.append)
    await plant.start()
    try:
        yield rig, plant, records
    finally:
        await plant.stop()
        await rig.stop()


@pytest.mark.parametrize("setup", ["opcua", "modbus"], indirect=True)
async def test_measurements_match_the_twin_and_carry_quality(setup) -> None:
    rig, plant, _ = setup
    first = await plant.read()
    # the potroom is still in local: its data is good (to be judged), its cells not to be commanded
    assert first.cell_ok.all() and not first.cell_remote.any()
    meas = await until_remote(plant, rig)
    truth = rig.potline.measurements()
    assert meas.line_ok.all()
    assert meas.line_current_ka[0] == pytest.approx(float(truth["line_current_ka"][0]), abs=1.0)
    assert meas.line_setpoint_ka[0] == pytest.approx(120.0, abs=0.01)
    assert np.allclose(meas.cell_voltage_v, truth["cell_voltage_v"], atol=0.25)
    assert (meas.cell_voltage_v > 3.8).all() and (meas.cell_voltage_v < 5.0).all()
    # the operator turns the potroom to local: its automation is in charge, the controller
    # commands nothing there but still sees good data
    await rig.inject(Fault(kind="local_switch", target="potroom", duration_s=3.0))
    meas = await cycle(plant, rig)
    meas = await cycle(plant, rig)
    assert not meas.cell_remote.any() and meas.cell_ok.all() and meas.line_ok.all()
    meas = await until_remote(plant, rig)
    # a broken transmitter: that cell only goes bad
    await rig.inject(Fault(kind="bad_sensor", cells=[3]))
    meas = await cycle(plant, rig)
    meas = await cycle(plant, rig)
    assert meas.cell_ok.tolist() == [True, True, True, False, True, True, True, True]
    assert np.isnan(meas.cell_voltage_v[3])
    # every value says what it is worth, with the time of the scan it came from
    uq = plant.quality["cell_voltage_v"]
    assert uq.status_names()[3] == "BadSensorFailure" and uq.status_names().count("Good") == N - 1
    assert np.all(uq.t_s[uq.good] == meas.t_s)
    # the potroom link goes dark: every cell bad, the line still good
    await rig.inject(Fault(kind="link_drop", target="potroom", mode="refuse"))
    meas = await cycle(plant, rig)
    assert not meas.cell_ok.any() and not meas.cell_remote.any() and meas.line_ok.all()
    assert any(k == "alarm_comms_lost" for k, _, _ in plant.drain_events())
    # no cell voltage shown Good: none at all (NaN, BadNoCommunication); the acknowledged
    # totals are held, UNCERTAIN (last usable value) until they are stale, then BAD
    assert set(plant.quality["cell_voltage_v"].status_names()) == {"BadNoCommunication"}
    assert set(plant.quality["feeder_ack"].status_names()) == {"UncertainLastUsableValue"}
    assert plant.quality["line_current_ka"].status_names() == ["Good"]
    links = {lk.device: lk for lk in plant.links()}
    assert not links["potroom:Potroom1"].up and links["rectifier:Line1"].up
    t_lost = rig.now()
    while rig.now() - t_lost <= plant.settings.stale_after_s + SCAN:
        await cycle(plant, rig)
    assert set(plant.quality["feeder_ack"].status_names()) == {"BadNoCommunication"}


@pytest.mark.parametrize("setup", ["modbus", "rect-opcua"], indirect=True)
async def test_setpoint_writes_are_ramped_and_interlocked(setup) -> None:
    rig, plant, records = setup
    await until_remote(plant, rig)
    img = rig.plc("rectifier:Line1").image
    cmds = Commands.idle(N, 1)
    cmds.line_setpoint_ka[:] = 100.0  # a 20 kA step request
    t0 = rig.now()
    for _ in range(6):
        await cycle(plant, rig, cmds)
    dt = rig.now() - t0
    recs = [r for r in records if r.tag == "line_current_sp" and r.t >= t0]
    assert recs and all(r.ramped and not r.rejected for r in recs)
    # moving down at no more than 0.1 kA/s of clock time
    assert 120.0 - 0.1 * (dt + SCAN) <= img.get("line_current_sp") < 120.0 - 0.1
    # the operator turns the rectifier to local: the safety layer refuses, the PLC holds
    await rig.inject(Fault(kind="local_switch", target="rectifier"))
    for _ in range(3):
        await cycle(plant, rig, cmds)
    held = img.get("line_current_sp")
    cmds.line_setpoint_ka[:] = 110.0
    await cycle(plant, rig, cmds)
    rec = [r for r in records if r.tag == "line_current_sp"][-1]
    assert rec.rejected and "remote" in rec.reason
    assert img.get("line_current_sp") == held


async def test_feed_handshake_and_counters_across_a_plc_restart(setup) -> None:
    rig, plant, _ = setup
    meas = await until_remote(plant, rig)
    cells = rig.plc("potroom:Potroom1").cells
    twin0 = rig.potline.state[cells, S_FEED_ACK].copy()
    ack0 = meas.feeder_ack.copy()
    cmds = Commands.idle(N, 1)
    cmds.feed_shots[2] = 3
    cmds.feed_shots[5] = 1
    await cycle(plant, rig, cmds)
    for _ in range(4):
        meas = await cycle(plant, rig)
    assert (meas.feeder_ack - ack0).tolist() == [0, 0, 3, 0, 0, 1, 0, 0]
    assert (rig.potline.state[cells, S_FEED_ACK] - twin0).tolist() == [0, 0, 3, 0, 0, 1, 0, 0]
    assert plant.stats["ack_timeouts"] == 0
    # PLC reboot: its counters restart at zero, the bridge's totals do not go back
    before = meas.feeder_ack.copy()
    await rig.inject(Fault(kind="plc_restart", target="potroom", downtime_s=3.0))
    for _ in range(60):
        meas = await cycle(plant, rig)
        if meas.cell_ok.all() and meas.cell_remote.all() and plant.stats["restarts_seen"]:
            break
    assert meas.cell_ok.all() and meas.cell_remote.all(), "potroom did not come back to remote after its restart"
    assert (meas.feeder_ack >= before).all()
    mid = meas.feeder_ack.copy()
    cmds = Commands.idle(N, 1)
    cmds.feed_shots[2] = 2
    await cycle(plant, rig, cmds)
    for _ in range(4):
        meas = await cycle(plant, rig)
    assert meas.feeder_ack[2] - mid[2] == 2


async def test_frozen_cell_voltage_is_flagged_and_recovers() -> None:
    """A transmitter that stops updating (the rig's ``frozen_sensor`` fault) shows a
    plausible value, so only its standing still gives it away: a live cell voltage moves
    by tens of mV on every scan (MHD noise). After ``frozen_after_s`` the cell is not ok
    (the controller neither acts on nor judges it) and a ``sensor_frozen`` event names
    it; when the value moves again the cell is ok and ``sensor_recovered`` follows."""
    rig = await start_rig(bench("modbus")).start()
    plant = BridgePlant.from_endpoints(rig.endpoints(), rig.clock, settings(frozen_after_s=8.0))
    await plant.start()
    try:
        meas = await until_remote(plant, rig)
        assert meas.cell_ok.all()
        plant.drain_events()
        await rig.inject(Fault(kind="frozen_sensor", cells=[5], duration_s=25.0))
        t0 = rig.now()
        seen_bad_at = None
        while rig.now() - t0 < 20.0:
            meas = await cycle(plant, rig)
            if not meas.cell_ok[5] and seen_bad_at is None:
                seen_bad_at = rig.now() - t0
            others = np.delete(meas.cell_ok, 5)
            assert others.all(), "only the frozen cell goes bad"
        assert seen_bad_at is not None and 8.0 <= seen_bad_at <= 8.0 + 3 * SCAN + 2.0
        events = plant.drain_events()
        assert [(k, c) for k, c, _ in events if k.startswith("sensor_")] == [("sensor_frozen", 5)]
        while rig.now() - t0 < 35.0:  # the fault ends at 25 s: the value moves again
            meas = await cycle(plant, rig)
        assert meas.cell_ok.all()
        assert [(k, c) for k, c, _ in plant.drain_events() if k.startswith("sensor_")] == [("sensor_recovered", 5)]
    finally:
        await plant.stop()
        await rig.stop()
