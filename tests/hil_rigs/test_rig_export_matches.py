"""What ``potline tags export`` tells an integrator is what a rig's PLC serves (issue 14 item 2).

An integrator configures a SCADA from the exported CSV alone: each row's Modbus table,
0-based address, unit id, register count, word/byte order, bit, scale and offset, and its
OPC UA namespace URI and browse path. Here a stock pymodbus client and a stock asyncua
client read every exported row that way (decoding with ``struct``, not the project's
codec) from rig PLCs serving the shipped rectifier map (``--instance Line1``) and a
foreign 1-based, word-swapped map, and get the values the PLC holds.
"""

from __future__ import annotations

import csv
import math
import tomllib
from pathlib import Path

import pytest
from asyncua import Client
from pymodbus.client import AsyncModbusTcpClient

from hil_rigs.edges import ModbusEdge, OpcUaEdge
from hil_rigs.plc_image import PlcImage
from hil_rigs.plc_logic import RectifierLogic
from plc_bridge.plant import RECTIFIER_MAP, rectifier_tagmap
from plc_bridge.tagmap import TagMap, parse_tagmap
from potline.cli import main as potline
from tests.plc_bridge.foreign_support import MAP_A, value

FMT = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "float32": "f", "float64": "d"}
READ = {"holding": "read_holding_registers", "input": "read_input_registers", "coil": "read_coils",
        "discrete": "read_discrete_inputs"}  # fmt: skip


def _export(map_path: Path, out: Path, instance: str) -> list[dict[str, str]]:
    assert potline(["tags", "export", "--map", str(map_path), "--out", str(out), "--instance", instance]) == 0
    with (out / f"{instance}.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _plc(tm: TagMap) -> tuple[PlcImage, RectifierLogic]:
    image = PlcImage(tm)
    logic = RectifierLogic(image, nominal_ka=118.25, min_ka=0.0, max_ka=132.0, watchdog_s=4.0)
    logic.scan(0.0, 1.0)
    logic.publish(118.4, 612.5, 7, False, 1.0)
    return image, logic


async def _modbus_value(mb: AsyncModbusTcpClient, row: dict[str, str]) -> float | bool:
    """A row's value read and decoded the way the CSV says, with pymodbus and struct only."""
    table, addr, unit = row["table"], int(row["address_0based"]), int(row["device_id"])
    if table in ("coil", "discrete"):
        rr = await getattr(mb, READ[table])(addr, count=1, device_id=unit)
        assert not rr.isError(), (row["name"], rr)
        bit = bool(rr.bits[0])
        return bit != (row["invert"] == "true")
    n = int(row["registers"])
    rr = await getattr(mb, READ[table])(addr, count=n, device_id=unit)
    assert not rr.isError(), (row["name"], rr)
    if row["type"] == "bool":  # a bit of a register, numbered as the CSV says (0 = least significant)
        assert row["bit_numbering"].startswith("bit 0 = least significant bit of the register value"), row[
            "bit_numbering"
        ]
        word = int(value(rr.registers, "H", row["byte_order"]))
        return bool((word >> int(row["bit"])) & 1) != (row["invert"] == "true")
    order = row["word_order"] if n > 1 else row["byte_order"]
    raw = value(rr.registers, FMT[row["type"]], order)
    return raw * float(row["scale"]) + float(row["offset"])


async def _check_modbus(image: PlcImage, rows: list[dict[str, str]]) -> int:
    edge = ModbusEdge(image)
    await edge.start()
    edge.publish()
    mb = AsyncModbusTcpClient("127.0.0.1", port=edge.port)
    checked = 0
    try:
        assert await mb.connect()
        for row in rows:
            if row["table"] == "" or row["address_0based"] == "":
                continue
            got = await _modbus_value(mb, row)
            want = image.get(row["name"])
            if isinstance(want, bool):
                assert got is want, row["name"]
            else:
                assert math.isclose(float(got), float(want), rel_tol=1e-6, abs_tol=1e-3), (row["name"], got, want)
            checked += 1
    finally:
        mb.close()
        await edge.stop()
    return checked


async def test_exported_csv_reads_the_shipped_rectifier_over_modbus_and_opcua(tmp_path: Path) -> None:
    rows = _export(RECTIFIER_MAP, tmp_path / "export", "Line1")
    image, _logic = _plc(rectifier_tagmap("Line1"))
    assert await _check_modbus(image, rows) == len(rows)

    edge = OpcUaEdge(image)
    await edge.start()
    try:
        edge.publish()
        async with Client(edge.endpoint_url, timeout=10) as client:
            checked = 0
            for row in rows:
                path = row["opcua_browse_path"]
                if not path:
                    continue
                idx = await client.get_namespace_index(row["opcua_namespace_uri"])
                parts = path.split("/")
                assert parts[0] == "Objects", path
                node = await client.nodes.objects.get_child([f"{idx}:{p}" for p in parts[1:]])
                got = await node.read_value()
                want = image.get(row["name"])
                if isinstance(want, bool):
                    assert got is want, row["name"]
                else:
                    assert float(got) == pytest.approx(float(want), rel=1e-6, abs=1e-3), row["name"]
                checked += 1
            assert checked == len(rows)
    finally:
        await edge.stop()


async def test_exported_csv_of_a_one_based_word_swapped_map_reads_its_rig(tmp_path: Path) -> None:
    path = tmp_path / "acme.toml"
    path.write_text(MAP_A)
    rows = _export(path, tmp_path / "export", "RA")
    # the CSV says where each value is, in both numberings; the map's own (1-based) too
    sp = next(r for r in rows if r["name"] == "SP_AMPS")
    assert (sp["address_in_map"], sp["address_1based"], sp["address_0based"], sp["word_order"]) == (
        "1",
        "1",
        "0",
        "CDAB",
    )
    image, _logic = _plc(parse_tagmap(tomllib.loads(MAP_A), source=str(path), instance="RA"))
    assert await _check_modbus(image, rows) == len(rows)
    assert image.get("SP_ACTIVE") == pytest.approx(118.25) and image.get("LOCAL") is False
