"""A rig PLC serving a *foreign* tag map serves it as the real PLC would (issue 14).

The rig's PLC memory (``PlcImage``) and its edges take any map a plant engineer wrote:
the rectifier logic works in roles, and the wire carries what the map describes. Layout
A (tests/plc_bridge/foreign_support.py) says "LOCAL" with an inverted bit 3 of a status
word, has no PLC heartbeat and no separate active setpoint (a read-only alias of the
setpoint register). Layout C says ``Local`` with a Boolean node. Independent peers check
the wire: pymodbus reading raw registers (decoded here with ``struct``), a stock asyncua
client reading nodes; the bridge's own client reads the meaning through the map.
"""

from __future__ import annotations

import numpy as np
import pytest
from asyncua import Client, ua
from pymodbus.client import AsyncModbusTcpClient

from hil_rigs.edges import ModbusEdge, OpcUaEdge
from hil_rigs.plc_image import PlcImage
from hil_rigs.plc_logic import PotroomLogic, RectifierLogic
from plc_bridge.modbus_client import ModbusTagClient
from plc_bridge.tagmap import TagMap, parse_tagmap
from tests.plc_bridge.foreign_support import BASE_B, MAP_A, MAP_B, MAP_C, N_CELLS, NS_C, STRIDE_B, value, words

LOCAL_BIT = 3  # layout A's manual: status word 30005, bit 3 = LOCAL
TRIP_BIT = 1  # ... bit 1 = trip


def _map(text: str) -> TagMap:
    import tomllib

    return parse_tagmap(tomllib.loads(text), source="foreign.toml")


def _step(logic: RectifierLogic, edge: ModbusEdge | OpcUaEdge, now: float) -> None:
    """One PLC scan at plant time ``now`` [s] (1 s scans), its measurements, the edge's publish."""
    logic.scan(now, 1.0)
    logic.publish(logic.active_ka, 400.0, 5, False, 1.0)
    edge.publish()


async def test_modbus_rig_serves_an_inverted_local_bit_and_an_alias_as_the_plc_would() -> None:
    image = PlcImage(_map(MAP_A))
    logic = RectifierLogic(image, nominal_ka=120.0, min_ka=0.0, max_ka=132.0, watchdog_s=4.0)
    edge = ModbusEdge(image)
    await edge.start()
    mb = AsyncModbusTcpClient("127.0.0.1", port=edge.port)
    bridge = ModbusTagClient(image.tagmap, "127.0.0.1", edge.port, timeout_s=2.0)
    try:
        assert await mb.connect()
        _step(logic, edge, 0.0)

        async def status() -> int:
            rr = await mb.read_input_registers(4, count=1, device_id=3)  # 30005 (1-based in the manual)
            assert not rr.isError(), rr
            return int(rr.registers[0])

        async def setpoint_amps() -> int:
            rr = await mb.read_holding_registers(0, count=2, device_id=3)  # 40001-40002, CDAB
            assert not rr.isError(), rr
            return int(value(rr.registers, "i", "CDAB"))

        # powered up in local: the PLC's LOCAL bit is set; its setpoint register holds 120 000 A
        assert not logic.remote and (await status() >> LOCAL_BIT) & 1 == 1
        assert await setpoint_amps() == 120_000
        got = await bridge.read(["LOCAL", "SP_ACTIVE", "SP_AMPS"])
        assert got["LOCAL"].value is False  # the role "remote", read through invert
        assert got["SP_ACTIVE"].value == pytest.approx(120.0)  # the alias reads the setpoint register

        # the controller's watchdog counter (40003) moves: remote, the LOCAL bit clears
        for k, now in enumerate((1.0, 2.0, 3.0)):
            rr = await mb.write_register(2, k + 1, device_id=3)
            assert not rr.isError(), rr
            _step(logic, edge, now)
        assert logic.remote and (await status() >> LOCAL_BIT) & 1 == 0
        assert (await bridge.read(["LOCAL"]))["LOCAL"].value is True

        # a setpoint written as the manual says (int32 amperes, low word first) reaches the logic;
        # the PLC's private active setpoint does not overwrite the register the alias serves
        rr = await mb.write_registers(0, words(118_000, "i", "CDAB"), device_id=3)
        assert not rr.isError(), rr
        for now in (4.0, 5.0, 6.0):
            await mb.write_register(2, int(now), device_id=3)
            _step(logic, edge, now)
        assert logic.remote and logic.active_ka < 120.0  # ramping down toward 118 kA
        assert await setpoint_amps() == 118_000
        assert (await bridge.read(["SP_ACTIVE"]))["SP_ACTIVE"].value == pytest.approx(118.0)

        # the watchdog counter stops: back in local, the LOCAL bit set again
        for now in (10.0, 11.0):
            _step(logic, edge, now)
        assert not logic.remote and (await status() >> LOCAL_BIT) & 1 == 1

        # a protection trip: this PLC's TRIP is bit 1 of its own status word (not ours)
        assert (await status() >> TRIP_BIT) & 1 == 0
        logic.trip()
        _step(logic, edge, 12.0)
        assert (await status() >> TRIP_BIT) & 1 == 1 and (await status() >> LOCAL_BIT) & 1 == 1
        assert (await bridge.read(["TRIP"]))["TRIP"].value is True
        logic.clear_trip()
        _step(logic, edge, 13.0)
        assert (await status() >> TRIP_BIT) & 1 == 0
    finally:
        mb.close()
        await bridge.close()
        await edge.stop()


async def test_opcua_rig_serves_an_inverted_local_node() -> None:
    image = PlcImage(_map(MAP_C))
    logic = RectifierLogic(image, nominal_ka=120.0, min_ka=0.0, max_ka=132.0, watchdog_s=4.0)
    edge = OpcUaEdge(image)
    await edge.start()
    try:
        _step(logic, edge, 0.0)
        async with Client(edge.endpoint_url, timeout=10) as client:
            idx = await client.get_namespace_index(NS_C)
            local = await client.nodes.objects.get_child(
                [f"{idx}:Plant", f"{idx}:Rectifiers", f"{idx}:RA", f"{idx}:Status", f"{idx}:Local"]
            )
            wd = client.get_node(ua.NodeId("RA.Ctl.WD", idx))  # the map's "nsu=...;s=RA.Ctl.WD"
            assert await local.read_value() is True  # powered up in local
            for k, now in enumerate((1.0, 2.0, 3.0)):
                await wd.write_value(ua.DataValue(ua.Variant(k + 1, ua.VariantType.Int16)))
                _step(logic, edge, now)
            assert logic.remote and await local.read_value() is False
            # the node is read-only: a client cannot put the PLC in local by writing it
            with pytest.raises(ua.UaStatusCodeError):
                await local.write_value(ua.DataValue(ua.Variant(True, ua.VariantType.Boolean)))
    finally:
        await edge.stop()


async def test_modbus_rig_serves_a_byte_swapped_potroom_with_status_bits_in_the_high_byte() -> None:
    """Layout B: every register byte-swapped (BADC), the cell's AE bit is bit 8 of its own flags word."""
    image = PlcImage(_map(MAP_B))
    logic = PotroomLogic(image, watchdog_s=4.0)
    edge = ModbusEdge(image)
    await edge.start()
    mb = AsyncModbusTcpClient("127.0.0.1", port=edge.port)
    try:
        assert await mb.connect()
        volts = np.array([4.21, 31.5, 4.18, 4.3])
        ae = volts > 8.0
        z = np.zeros(N_CELLS, dtype=bool)
        logic.scan(0.0, z, z, z)
        logic.publish(volts, ae, z, z, z, np.zeros(N_CELLS), np.zeros(N_CELLS))
        edge.publish()
        for k in range(N_CELLS):
            base = BASE_B + k * STRIDE_B
            rr = await mb.read_input_registers(base, count=3, device_id=2)
            assert not rr.isError(), rr
            assert value(rr.registers[0:2], "f", "BADC") == pytest.approx(volts[k], abs=1e-5)
            flags = int(value(rr.registers[2:3], "H", "BA"))
            assert (flags >> 8) & 1 == int(ae[k]), (k, hex(flags))
        rr = await mb.read_input_registers(1, count=1, device_id=2)  # the mode enumeration: 0 LOCAL
        assert int(value(rr.registers, "H", "BA")) == 0
    finally:
        mb.close()
        await edge.stop()
