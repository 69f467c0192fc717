"""The rig's potroom PLC takes shell heat-exchanger duties and AlF3 additions as a real
one would (issue 13 item 2, issue 18 item 1): independent peers -- pymodbus writing raw
registers (encoded here with ``struct``), a stock asyncua client writing nodes by browse
path -- set a cell's exchanger duty and run the AlF3 handshake, and the twin behind the
PLC delivers that duty and receives that AlF3 (its own AlF3 schedule stopped for that
cell only); the PLC acknowledges the AlF3 command, and in local it takes neither.

The plant has exchangers installed (``cell.heat_exchanger_max_kw`` = 200 kW). The rigs
run on a ``VirtualClock`` the test moves (``tests.waits.step_rig``); the sockets are real.
Register addresses come from the shipped map, never typed in.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from asyncua import Client, ua
from pymodbus.client import AsyncModbusTcpClient

from hil_rigs.faults import Fault
from hil_rigs.plc_image import PlcImage
from hil_rigs.plc_logic import PotroomLogic
from hil_rigs.rig import Rig
from plc_bridge.plant import POTROOM_MAP, potroom_tagmap
from plc_bridge.tagmap import parse_tagmap
from tests.hil_rigs.test_hil_rig import N_CELLS, Heartbeat, bench, ep
from twin.cell_layout import A_ALF3_ADD, P_HE_CMD
from twin.clock import VirtualClock
from twin.configcore import load_toml

pytestmark = pytest.mark.hil

HX_MAX_KW = 200.0
K = 2  # cell003: commanded
OTHER = 5  # cell006: left alone


def hx_rig(potroom: str) -> Rig:
    """A rig whose cells have a 200 kW shell heat exchanger (none in the reference cell)."""
    sc = bench(potroom)
    cfg = sc.plant_config()
    cfg = cfg.model_copy(update={"cell": cfg.cell.model_copy(update={"heat_exchanger_max_kw": HX_MAX_KW})})
    return Rig(sc, clock=VirtualClock(), plant_config=cfg)


def f32_words(x: float) -> list[int]:
    """A float32 as two registers, most significant word first (the map's ABCD), by ``struct``."""
    hi, lo = struct.unpack(">HH", struct.pack(">f", x))
    return [hi, lo]


def words_f32(regs: list[int]) -> float:
    return float(struct.unpack(">f", struct.pack(">HH", *regs))[0])


def alf3_added(rig: Rig, k: int) -> float:
    """AlF3 the twin's cell ``k`` received since start [kg] (commands and the PLC's schedule)."""
    return float(rig.potline.state[k, A_ALF3_ADD])


async def test_modbus_peer_sets_the_exchanger_duty_and_runs_the_alf3_handshake() -> None:
    rig = await hx_rig("modbus").start()
    tm = potroom_tagmap("Potroom1", N_CELLS)
    e = ep(rig, "potroom:Potroom1")
    mb = AsyncModbusTcpClient(e["host"], port=e["port"])
    try:
        assert await mb.connect()

        async def write(name: str, regs: list[int]) -> None:
            rr = await mb.write_registers(tm[name].address, regs, device_id=1)
            assert not rr.isError(), (name, rr)

        async def read_input(name: str, n: int = 1) -> list[int]:
            rr = await mb.read_input_registers(tm[name].address, count=n, device_id=1)
            assert not rr.isError(), (name, rr)
            return list(rr.registers)

        beat = Heartbeat(rig, lambda k: write("heartbeat_out", [k]))
        await beat(2)
        assert (await mb.read_discrete_inputs(tm["remote"].address, count=1, device_id=1)).bits[0]
        truth = rig.potline.measurements()
        assert truth["heat_exchanger_kw"][K] == pytest.approx(0.0)  # base duty 0

        # the exchanger duty: 150 kW on cell 3 only; the twin delivers it (within its 200 kW)
        await write("cell003.hx_duty_sp", f32_words(150.0))
        await beat(2)
        truth = rig.potline.measurements()
        assert truth["heat_exchanger_kw"][K] == pytest.approx(150.0, rel=1e-6)
        assert truth["heat_exchanger_kw"][OTHER] == pytest.approx(0.0)
        # ... and the PLC reports what is delivered and the shell thermocouple (int16, 0.1 °C)
        served = words_f32(await read_input("cell003.hx_duty", 2))
        assert served == pytest.approx(float(truth["heat_exchanger_kw"][K]), rel=1e-6)
        (raw_t,) = await read_input("cell003.shell_temp")
        shell_c = struct.unpack(">h", struct.pack(">H", raw_t))[0] / 10.0
        assert shell_c == pytest.approx(float(truth["shell_temp_c"][K]), abs=0.1)
        assert 100.0 < shell_c < 600.0  # a running cell's side wall

        # the AlF3 handshake: 12.5 kg (raw 125 at 0.1 kg), then the counter
        rate0 = rig.potline.truth()["alf3_addition_kg_per_day"]
        assert rate0[K] > 0 and rate0[OTHER] > 0  # the PLC's own schedule feeds both
        before, before_other = alf3_added(rig, K), alf3_added(rig, OTHER)
        await write("cell003.alf3_kg", [125])
        await write("cell003.alf3_cmd", [41])
        await beat(1)
        assert (await read_input("cell003.alf3_cmd_ack")) == [41]
        # 12.5 kg, plus at most 0.5 s of the 47 kg/day schedule before the PLC scanned it
        assert alf3_added(rig, K) - before == pytest.approx(12.5, abs=1e-3)
        rate = rig.potline.truth()["alf3_addition_kg_per_day"]
        assert rate[K] == 0.0 and rate[OTHER] == pytest.approx(rate0[OTHER])  # only cell 3's schedule stopped
        assert alf3_added(rig, OTHER) - before_other < 1e-3  # no command there: the schedule only

        # the PLC re-validates: 900 kW and 60 kg are outside the map's bounds (exception 3)
        rr = await mb.write_registers(tm["cell003.hx_duty_sp"].address, f32_words(900.0), device_id=1)
        assert rr.isError() and rr.exception_code == 3
        rr = await mb.write_registers(tm["cell003.alf3_kg"].address, [600], device_id=1)
        assert rr.isError() and rr.exception_code == 3

        # the operator turns the room to local: the PLC takes neither a duty nor AlF3
        await rig.inject(Fault(kind="local_switch", target="potroom"))
        await beat(1)
        assert not (await mb.read_discrete_inputs(tm["remote"].address, count=1, device_id=1)).bits[0]
        added = alf3_added(rig, K)
        await write("cell003.hx_duty_sp", f32_words(40.0))
        await write("cell003.alf3_kg", [50])
        await write("cell003.alf3_cmd", [42])
        await beat(2)
        assert (await read_input("cell003.alf3_cmd_ack")) == [41]  # not acknowledged
        assert alf3_added(rig, K) == pytest.approx(added)  # its schedule is stopped, nothing came
        assert rig.potline.params[K, P_HE_CMD] == pytest.approx(150e3)  # still the remote duty
        assert any("alf3: local control" in r for r in rig.refusals)
        # back in remote: the duty the register now holds is taken; the AlF3 command seen in
        # local is consumed, never replayed
        await rig.clear(Fault(kind="local_switch", target="potroom"))
        await beat(2)
        assert rig.potline.measurements()["heat_exchanger_kw"][K] == pytest.approx(40.0, rel=1e-6)
        assert alf3_added(rig, K) == pytest.approx(added)
        assert rig.commands["alf3"] == 1 and rig.commands["hx"] == 2
    finally:
        mb.close()
        await rig.stop()


async def test_opcua_peer_sets_the_exchanger_duty_and_runs_the_alf3_handshake() -> None:
    rig = await hx_rig("opcua").start()
    e = ep(rig, "potroom:Potroom1")
    try:
        async with Client(f"opc.tcp://{e['host']}:{e['port']}{e['path']}", timeout=5) as c:
            ns = await c.get_namespace_index(e["namespace"])

            async def node(*path: str):
                return await c.nodes.objects.get_child([f"{ns}:{p}" for p in ("Potroom1", *path)])

            hb = await node("HeartbeatOut")
            beat = Heartbeat(rig, lambda k: hb.write_value(k, ua.VariantType.UInt16))
            await beat(2)
            assert await (await node("Remote")).read_value() is True
            sp = await node("Cell003", "HeatExchangerDutySetpoint")
            assert await sp.read_data_type_as_variant_type() == ua.VariantType.Float
            await sp.write_value(-30.0, ua.VariantType.Float)  # insulate: hold 30 kW of shell loss back
            kg = await node("Cell003", "AlF3Kg")
            assert await kg.read_data_type_as_variant_type() == ua.VariantType.Double  # scaled int: engineering
            before = alf3_added(rig, K)
            await kg.write_value(7.5, ua.VariantType.Double)
            await (await node("Cell003", "AlF3Command")).write_value(9, ua.VariantType.UInt16)
            await beat(2)
            assert await (await node("Cell003", "AlF3CommandAck")).read_value() == 9
            assert alf3_added(rig, K) - before == pytest.approx(7.5, abs=1e-3)
            truth = rig.potline.measurements()
            assert rig.potline.params[K, P_HE_CMD] == pytest.approx(-30e3)
            # the twin delivers what its insulation allows (at most 30 kW held back), the PLC serves it
            delivered = float(truth["heat_exchanger_kw"][K])
            assert -30.0 - 1e-6 <= delivered < 0.0
            served = await (await node("Cell003", "HeatExchangerDuty")).read_value()
            assert served == pytest.approx(delivered, rel=1e-5)
            shell = await (await node("Cell003", "ShellTemperature")).read_value()
            assert shell == pytest.approx(float(truth["shell_temp_c"][K]), abs=0.1)
            # beyond the map's 0..50 kg: the server refuses the write
            with pytest.raises(ua.UaStatusCodeError) as exc:
                await kg.write_value(80.0, ua.VariantType.Double)
            assert exc.value.code == ua.StatusCodes.BadOutOfRange
    finally:
        await rig.stop()


def test_a_potroom_plc_without_the_roles_scans_and_takes_nothing() -> None:
    """A foreign potroom map without exchanger and AlF3 tags: the PLC logic runs as before,
    its scan orders no AlF3 and no duty, and nothing of them is served."""
    data = load_toml(POTROOM_MAP)
    drop = {"hx_duty_sp", "hx_duty", "shell_temp", "alf3_kg", "alf3_cmd", "alf3_cmd_ack"}
    data["cells"]["tags"] = [t for t in data["cells"]["tags"] if t["name"] not in drop]
    data["cells"]["count"] = 4
    tm = parse_tagmap(data, source="old_potroom.toml")
    assert not any(t.field in drop for t in tm)
    img = PlcImage(tm)
    logic = PotroomLogic(img, watchdog_s=5.0)
    zeros = np.zeros(4, dtype=bool)
    for k, now in enumerate((0.0, 1.0, 2.0)):
        img.set("heartbeat_out", k + 1, by_plc=False)
        res = logic.scan(now, zeros, zeros, zeros)
        logic.publish(np.full(4, 4.2), zeros, zeros, zeros, zeros, np.zeros(4), np.zeros(4), np.full(4, 80.0),
                      np.full(4, 300.0))  # fmt: skip
    assert logic.remote
    assert not res.alf3_kg.any() and np.isnan(res.hx_kw).all() and not res.refused
    # a feed command still works
    img.set("cell002.feed_shots", 2, by_plc=False)
    img.set("cell002.feed_cmd", 1, by_plc=False)
    img.set("heartbeat_out", 9, by_plc=False)
    res = logic.scan(3.0, zeros, zeros, zeros)
    assert res.shots.tolist() == [0, 2, 0, 0] and img.get("cell002.feed_cmd_ack") == 1
