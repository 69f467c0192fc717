"""The grid limit register over the wire: the grid operator's RTU (an independent pymodbus
client) writes the rectifier PLC's ``grid_limit_mw`` (holding register 8, float32) on a HIL
rig; the bridge (``BridgePlant.rectifier_reading``) reads what the PLC holds, does not take a
value outside the tag's range (the shed state stays as it is), and never writes it itself."""

from __future__ import annotations

import numpy as np
import pytest
from pymodbus.client import AsyncModbusTcpClient

from hil_rigs.rig import Rig
from plc_bridge.plant import BridgePlant
from potctl.plant import Commands
from tests.potline.daemon_support import rig_scenario
from tests.waits import step_rig
from twin.clock import VirtualClock

pytestmark = pytest.mark.hil


async def test_the_rtu_writes_the_grid_limit_and_the_bridge_reads_only_good_values() -> None:
    clock = VirtualClock()
    rig = await Rig(rig_scenario(cells=8), clock=clock).start()
    bridge = BridgePlant.from_endpoints(rig.endpoints(), clock)
    ep = rig.plc("rectifier:Line1").endpoint()
    rtu = AsyncModbusTcpClient(ep["host"], port=ep["port"])
    try:
        await bridge.start()
        assert await rtu.connect()

        async def write(mw: float) -> None:
            regs = rtu.convert_to_registers(mw, rtu.DATATYPE.FLOAT32, word_order="big")
            rr = await rtu.write_registers(8, regs, device_id=1)
            assert not rr.isError(), rr

        async def seen() -> float | None:
            await step_rig(rig, clock, 1.0)
            await bridge.read()
            return bridge.rectifier_reading(0, "grid_limit_mw")

        assert await seen() == 0.0  # no request
        await write(142.5)
        assert await seen() == 142.5
        # the controller's writes (a setpoint, the heartbeat) leave the RTU's register alone
        cmds = Commands.idle(8, 1)
        cmds.line_setpoint_ka = np.array([119.0])
        await bridge.write(cmds)
        assert await seen() == 142.5
        rr = await rtu.read_holding_registers(8, count=2, device_id=1)
        assert rtu.convert_from_registers(rr.registers, rtu.DATATYPE.FLOAT32, word_order="big") == 142.5
        # outside the tag's 0-2000 MW the rig's PLC refuses the RTU's write (exception response)
        regs = rtu.convert_to_registers(-50.0, rtu.DATATYPE.FLOAT32, word_order="big")
        assert (await rtu.write_registers(8, regs, device_id=1)).isError()
        assert await seen() == 142.5
        # a PLC that takes anything: the bridge does not (None: a shed in force is kept, none is started)
        img = rig.plc("rectifier:Line1").image
        for bad in (-50.0, 1e6, float("nan")):
            img.set("grid_limit_mw", bad)  # as if the PLC had taken it
            assert await seen() is None, bad
        await write(0.0)
        assert await seen() == 0.0
    finally:
        rtu.close()
        await bridge.stop()
        await rig.stop()


async def test_over_opc_ua_the_rtu_writes_the_grid_limit_node_and_the_bridge_reads_it() -> None:
    from asyncua import Client, ua

    clock = VirtualClock()
    rig = await Rig(rig_scenario(cells=8, rectifier="opcua"), clock=clock).start()
    bridge = BridgePlant.from_endpoints(rig.endpoints(), clock)
    e = rig.plc("rectifier:Line1").endpoint()
    try:
        await bridge.start()
        async with Client(f"opc.tcp://{e['host']}:{e['port']}{e['path']}", timeout=10) as rtu:
            ns = await rtu.get_namespace_index(e["namespace"])
            node = await rtu.nodes.objects.get_child([f"{ns}:Line1", f"{ns}:GridLimit"])
            await node.write_value(ua.DataValue(ua.Variant(98.25, ua.VariantType.Float)))
            await step_rig(rig, clock, 1.0)
            await bridge.read()
            assert bridge.rectifier_reading(0, "grid_limit_mw") == 98.25
    finally:
        await bridge.stop()
        await rig.stop()
