"""The HIL rig over real sockets: independent Modbus/OPC UA peers read the twin through the
simulated PLCs, and every fault kind shows up on the wire as a client would meet it.

The rigs here run on a ``VirtualClock`` that the test moves (``tests.waits.step_rig``):
plant time, and so the PLCs' watchdogs and the faults' durations, depend on the test
only, not on how fast a busy machine gets to the next scan. The sockets are real.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable

import numpy as np
import pytest
from asyncua import Client, ua
from pymodbus.client import AsyncModbusTcpClient

from hil_rigs.faults import Fault
from hil_rigs.rig import Rig
from hil_rigs.scenarios import load_scenario
from plc_bridge.modbus_client import ModbusTagClient
from plc_bridge.plant import potroom_tagmap, rectifier_tagmap
from tests.waits import rig_scans, step_rig, wait_until
from twin.cell_layout import P_LOCAL, S_FEED_ACK
from twin.clock import VirtualClock
from twin.config import ConfigError

pytestmark = pytest.mark.hil

N_CELLS = 8
SPEED = 10.0


def bench(potroom: str = "opcua", **kw: object):
    return load_scenario(
        "ae_storm",
        **{"ae_storm": None, "plant.cells": N_CELLS, "scenario.speed": SPEED, "protocols.potroom": potroom,
           "rig.watchdog_s": 5.0, "rig.watchdog_min_wall_s": 0.2, "rig.record_every_s": 1.0, **kw},
    )  # fmt: skip


def ep(rig: Rig, device: str) -> dict:
    return rig.plc(device).endpoint()


class Heartbeat:
    """The controller's heartbeat: a new counter value through ``write``, then ``period_s``
    of plant time during which the PLCs scan (and so see it)."""

    def __init__(self, rig: Rig, write: Callable[[int], Awaitable[object]]) -> None:
        self.rig, self.write, self.count = rig, write, 0

    async def __call__(self, n: int = 1, period_s: float = 0.5) -> None:
        for _ in range(n):
            self.count = (self.count + 1) % 65536
            await self.write(self.count)
            await step_rig(self.rig, self.rig.clock, period_s)


def modbus_heartbeat(rig: Rig, client: ModbusTagClient) -> Heartbeat:
    return Heartbeat(rig, lambda k: client.write("heartbeat_out", k))


@pytest.fixture
async def rig_opcua():
    r = await Rig(bench("opcua"), clock=VirtualClock()).start()
    try:
        yield r
    finally:
        await r.stop()


@pytest.fixture
async def rig_modbus():
    """All-Modbus rig (starts faster: no OPC UA address space to build)."""
    r = await Rig(bench("modbus"), clock=VirtualClock()).start()
    try:
        yield r
    finally:
        await r.stop()


async def test_independent_peers_read_the_twin_through_both_protocols(rig_opcua: Rig) -> None:
    rig = rig_opcua
    await step_rig(rig, rig.clock, 1.0)  # a few PLC scans have published the twin
    truth = rig.potline.measurements()
    # rectifier over Modbus, decoded by pymodbus itself (not our codec)
    e = ep(rig, "rectifier:Line1")
    mb = AsyncModbusTcpClient(e["host"], port=e["port"])
    await mb.connect()
    rr = await mb.read_input_registers(0, count=2, device_id=1)
    assert not rr.isError()
    i_ka = mb.convert_from_registers(rr.registers, mb.DATATYPE.FLOAT32, word_order="big")
    mb.close()
    assert i_ka == pytest.approx(float(truth["line_current_ka"][0]), abs=0.5)
    assert 115.0 < i_ka < 125.0
    # potroom over OPC UA, by browse path with a stock asyncua client
    e = ep(rig, "potroom:Potroom1")
    async with Client(f"opc.tcp://{e['host']}:{e['port']}{e['path']}", timeout=5) as c:
        ns = await c.get_namespace_index(e["namespace"])
        node = await c.nodes.objects.get_child([f"{ns}:Potroom1", f"{ns}:Cell003", f"{ns}:Voltage"])
        u = await node.read_value()
        assert await node.read_data_type_as_variant_type() == ua.VariantType.Float
        move = await c.nodes.objects.get_child([f"{ns}:Potroom1", f"{ns}:Cell003", f"{ns}:BeamMove"])
        assert await move.read_data_type_as_variant_type() == ua.VariantType.Double  # scaled int: engineering
    assert u == pytest.approx(float(rig.potline.measurements()["cell_voltage_v"][2]), abs=0.3)
    assert 3.8 < u < 5.0


async def test_watchdog_takes_remote_and_drops_to_local(rig_modbus: Rig) -> None:
    rig = rig_modbus
    e = ep(rig, "rectifier:Line1")
    cl = ModbusTagClient(rectifier_tagmap("Line1"), e["host"], e["port"])
    assert (await cl.read(["remote"]))["remote"].value is False  # powers up in local
    await modbus_heartbeat(rig, cl)(2)
    assert (await cl.read(["remote"]))["remote"].value is True
    # the controller falls silent: remote up to the 5 s watchdog, local at the first scan after it
    t_last_beat = rig.plc("rectifier:Line1").logic.watchdog.last_change_t
    await step_rig(rig, rig.clock, t_last_beat + 4.75 - rig.now(), step_s=0.25)
    assert (await cl.read(["remote"]))["remote"].value is True
    await step_rig(rig, rig.clock, 0.5, step_s=0.25)
    assert (await cl.read(["remote"]))["remote"].value is False
    t_local = next(t for t, d, r in rig.mode_log if d == "rectifier:Line1" and not r)
    assert 5.0 < t_local - t_last_beat <= 5.25  # the first PLC scan (every 0.25 s here) after the timeout
    await cl.close()


async def test_feed_command_handshake_and_acknowledgement_over_opcua(rig_opcua: Rig) -> None:
    rig = rig_opcua
    e = ep(rig, "potroom:Potroom1")
    async with Client(f"opc.tcp://{e['host']}:{e['port']}{e['path']}", timeout=5) as c:
        ns = await c.get_namespace_index(e["namespace"])

        async def node(*path: str):
            return await c.nodes.objects.get_child([f"{ns}:{p}" for p in ("Potroom1", *path)])

        hb = await node("HeartbeatOut")
        beat = Heartbeat(rig, lambda k: hb.write_value(k, ua.VariantType.UInt16))
        await beat(2)
        assert await (await node("Remote")).read_value() is True
        cells = rig.plc("potroom:Potroom1").cells
        assert not rig.potline.params[cells, P_LOCAL].any()  # the controller is in charge now
        before = float(rig.potline.state[cells[4], S_FEED_ACK])
        ack0 = await (await node("Cell005", "FeedAck")).read_value()
        await (await node("Cell005", "FeedShots")).write_value(3, ua.VariantType.UInt16)
        await (await node("Cell005", "FeedCommand")).write_value(77, ua.VariantType.UInt16)
        await beat(1)  # the PLC scans the command while the controller keeps beating
        assert await (await node("Cell005", "FeedCommandAck")).read_value() == 77
        assert await (await node("Cell005", "FeedAck")).read_value() == ack0 + 3
        assert float(rig.potline.state[cells[4], S_FEED_ACK]) - before == pytest.approx(3.0)  # the twin got it
        # the PLC re-validates ranges: 30 shots is refused, nothing changes
        with pytest.raises(ua.UaStatusCodeError) as exc:
            await (await node("Cell005", "FeedShots")).write_value(30, ua.VariantType.UInt16)
        assert exc.value.code == ua.StatusCodes.BadOutOfRange
        with pytest.raises(ua.UaStatusCodeError):
            await (await node("Cell005", "FeedShots")).write_value(3.0, ua.VariantType.Double)  # wrong type


async def test_modbus_potroom_refuses_out_of_range_and_read_only_writes() -> None:
    async with Rig(bench("modbus")) as rig:
        e = ep(rig, "potroom:Potroom1")
        mb = AsyncModbusTcpClient(e["host"], port=e["port"])
        await mb.connect()
        # cell 1 feed_shots is holding 100; 30 shots is outside 0..10 -> exception 3 ILLEGAL VALUE
        rr = await mb.write_register(100, 30, device_id=1)
        assert rr.isError() and rr.exception_code == 3
        # input table is read-only; writing the voltage's holding twin-address of a gap -> exception 2
        rr = await mb.write_register(1, 5, device_id=1)  # holding 1: not a tag
        assert rr.isError() and rr.exception_code == 2
        mb.close()


async def test_link_drop_latency_and_exception_faults_as_a_client_sees_them(rig_modbus: Rig) -> None:
    rig = rig_modbus
    e = ep(rig, "rectifier:Line1")
    cl = ModbusTagClient(rectifier_tagmap("Line1"), e["host"], e["port"], timeout_s=0.3, reconnect_min_s=0.05,
                         reconnect_max_s=0.2)  # fmt: skip
    assert (await cl.scan()).good("line_current")
    # link drop (resets): BAD "connection lost"/"not connected", back once restored
    await rig.inject(Fault(kind="link_drop", target="rectifier:Line1"))
    s = (await cl.read(["line_current"]))["line_current"]
    assert not s.good and s.reason in ("connection lost", "not connected", "timeout")
    await rig.clear(Fault(kind="link_drop", target="rectifier:Line1"))

    async def good() -> bool:
        return (await cl.read(["line_current"]))["line_current"].good

    await wait_until(good, 30.0, "the client to read good data once the link is restored")
    # added latency: a request takes at least the round trip of the delay (a lower bound: a
    # busy machine only makes it longer)
    await rig.inject(Fault(kind="latency", target="rectifier", delay_s=0.1))
    t0 = time.perf_counter()
    assert (await cl.read(["line_current"]))["line_current"].good
    assert time.perf_counter() - t0 >= 0.19
    await rig.clear(Fault(kind="latency", target="rectifier", delay_s=0.1))
    # exception responses: Modbus exception 6 (device busy) on every request
    await rig.inject(Fault(kind="exception", target="rectifier", code=6))
    s = (await cl.read(["line_current"]))["line_current"]
    assert not s.good and s.reason == "modbus exception 6 device busy"
    await rig.clear(Fault(kind="exception", target="rectifier", code=6))
    assert (await cl.read(["line_current"]))["line_current"].good
    await cl.close()


async def test_plc_restart_resets_registers_and_comes_back_local(rig_modbus: Rig) -> None:
    rig = rig_modbus
    e = ep(rig, "rectifier:Line1")
    cl = ModbusTagClient(rectifier_tagmap("Line1"), e["host"], e["port"], timeout_s=0.3, reconnect_min_s=0.05,
                         reconnect_max_s=0.2)  # fmt: skip
    beat = modbus_heartbeat(rig, cl)
    await beat(2)
    assert (await cl.read(["remote"]))["remote"].value is True
    await cl.write("ramp_rate_sp", 2.5)
    await rig_scans(rig, 100)  # the PLC counter runs up meanwhile (one per PLC scan; plant time stands)
    hb_before = (await cl.read(["heartbeat_in"]))["heartbeat_in"].value
    assert hb_before >= 100
    await rig.inject(Fault(kind="plc_restart", target="rectifier:Line1", downtime_s=5.0))
    assert not (await cl.read(["heartbeat_in"]))["heartbeat_in"].good  # server down
    await step_rig(rig, rig.clock, 5.0)

    async def back() -> dict | None:
        got = await cl.read(["heartbeat_in", "remote", "ramp_rate_sp", "line_current"])
        return got if got["heartbeat_in"].good else None

    got = await wait_until(back, 30.0, "the rectifier PLC to serve again after its restart")
    assert got["heartbeat_in"].value < hb_before  # counters restarted
    assert got["remote"].value is False  # local until the heartbeat returns
    assert got["ramp_rate_sp"].value == pytest.approx(6.0)  # power-up default, the written 2.5 is gone
    assert got["line_current"].value == pytest.approx(120.0, abs=1.0)  # the rectifier kept regulating
    await cl.close()


async def test_sensor_faults_frozen_noisy_bad() -> None:
    sc = bench("modbus")
    async with Rig(sc, clock=VirtualClock()) as rig:
        e = ep(rig, "potroom:Potroom1")
        cl = ModbusTagClient(potroom_tagmap("Potroom1", N_CELLS), e["host"], e["port"])
        await rig.inject(Fault(kind="frozen_sensor", cells=[1]))
        await rig.inject(Fault(kind="noisy_sensor", cells=[2], std=0.5))
        await rig.inject(Fault(kind="bad_sensor", cells=[3]))
        frozen, noisy, truth2 = [], [], []
        for _ in range(12):
            sc_ = await cl.scan()
            u, good = sc_.array("voltage")
            assert not good[3] and sc_.sample("cell004.voltage").reason == "non-finite"
            frozen.append(u[1])
            noisy.append(u[2])
            truth2.append(float(rig.potline.measurements()["cell_voltage_v"][2]))
            await step_rig(rig, rig.clock, 0.5)  # new samples published meanwhile
        assert len(set(frozen)) == 1
        assert np.std(np.array(noisy) - np.array(truth2)) > 0.2
        await cl.close()


async def test_rectifier_trip_is_latched_and_cleared_by_the_operator(rig_modbus: Rig) -> None:
    rig = rig_modbus
    e = ep(rig, "rectifier:Line1")
    cl = ModbusTagClient(rectifier_tagmap("Line1"), e["host"], e["port"])
    await rig.inject(Fault(kind="rectifier_trip", line=0, duration_s=8.0))
    await step_rig(rig, rig.clock, 2.0)
    got = await cl.read(["tripped", "running", "line_current"])
    assert got["tripped"].value is True and got["running"].value is False
    assert got["line_current"].value < 5.0
    await step_rig(rig, rig.clock, 6.5)  # the fault clears at 8 s (the operator resets the trip)
    got = await cl.read(["tripped"])
    assert got["tripped"].value is False
    assert any("rectifier_trip" in f and not on for _, f, on in rig.fault_log)
    await cl.close()


def test_scenario_errors_name_the_file_and_key(tmp_path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text('[scenario]\nname = "x"\nspeed = -3\n[plant]\ncels = 4\n', encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_scenario(p)
    msg = str(exc.value)
    assert str(p) in msg and "scenario.speed" in msg and "plant.cels" in msg
    with pytest.raises(ValueError, match="target"):
        Fault(kind="link_drop", target="router")
    with pytest.raises(ValueError, match="delay_s"):
        Fault(kind="latency")


def test_shipped_scenarios_load() -> None:
    from hil_rigs.scenarios import list_scenarios

    names = list_scenarios()
    assert {"ae_storm", "power_modulation", "cell_cutout", "potroom_restart", "rectifier_trip", "comms_loss_ae"} <= set(
        names
    )
    for n in names:
        sc = load_scenario(n)
        assert sc.plant_config().operating_cells > 0
        assert math.isfinite(sc.duration_s)
