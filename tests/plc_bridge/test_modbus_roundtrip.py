"""Protocol round trips over real loopback sockets.

Every data type x word order goes through our client against our server, and
against an independent Modbus implementation (uModbus: a synchronous
socketserver-based server in a thread, and its client), with the stdlib
``struct`` module as the reference encoding.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path

import numpy as np
import pytest
from umodbus import exceptions as uexc
from umodbus.client import tcp as utcp

from plc_bridge.codec import Table
from plc_bridge.modbus_client import ModbusTagClient
from plc_bridge.modbus_server import ClientWrite, ModbusTagServer
from plc_bridge.tagmap import load_tagmap, parse_tagmap
from tests.plc_bridge.foreign_support import Registers, umodbus_plc

ROOT = Path(__file__).resolve().parents[2]
STRUCT = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "float32": "f", "float64": "d"}

# one value per type that the type holds exactly, and a second one
VALUES = {
    "int16": (-12345, 321),
    "uint16": (54321, 7),
    "int32": (-123456789, 2_000_000_001),
    "uint32": (3_000_000_000, 65536),
    "float32": (-1234.5, 0.15625),
    "float64": (314159.26535897932, -2.5e-7),
}
BOUNDS = {
    "int16": (-32768, 32767), "uint16": (0, 65535), "int32": (-2**31, 2**31 - 1), "uint32": (0, 2**32 - 1),
    "float32": (-1e6, 1e6), "float64": (-1e6, 1e6),
}  # fmt: skip


def all_types_map():
    """Holding (read-write) and input tags for every type x word order, plus bits."""
    tags, addr = [], 0
    for dtype in STRUCT:
        for wo in ("big", "little"):
            n = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2, "float64": 4}[dtype]
            lo, hi = BOUNDS[dtype]
            tags.append({"name": f"hr_{dtype}_{wo}", "type": dtype, "word_order": wo, "access": "read-write",
                         "min": lo, "max": hi, "modbus": {"table": "holding", "address": addr}})  # fmt: skip
            tags.append({"name": f"ir_{dtype}_{wo}", "type": dtype, "word_order": wo,
                         "modbus": {"table": "input", "address": addr}})  # fmt: skip
            addr += n + 1  # leave one unused register between tags
    tags.append({"name": "hr_scaled", "type": "int16", "scale": 0.1, "offset": -10.0, "access": "read-write",
                 "min": -100.0, "max": 100.0, "modbus": {"table": "holding", "address": 60}})  # fmt: skip
    tags.append({"name": "coil_a", "type": "bool", "access": "read-write", "modbus": {"table": "coil", "address": 3}})
    tags.append({"name": "coil_b", "type": "bool", "access": "read-write", "modbus": {"table": "coil", "address": 4}})
    tags.append({"name": "di_a", "type": "bool", "modbus": {"table": "discrete", "address": 1}})
    tags.append({"name": "ir_word", "type": "uint16", "modbus": {"table": "input", "address": 70}})
    tags.append({"name": "ir_bit5", "type": "bool", "modbus": {"table": "input", "address": 70, "bit": 5}})
    return parse_tagmap({"device": {"name": "alltypes", "device_id": 1}, "tags": tags}, source="alltypes")


def ref_words(value, dtype: str, wo: str) -> list[int]:
    b = struct.pack(">" + STRUCT[dtype], value)
    w = [int.from_bytes(b[i : i + 2], "big") for i in range(0, len(b), 2)]
    return w if wo == "big" else w[::-1]


def ref_value(words: list[int], dtype: str, wo: str):
    ws = words if wo == "big" else words[::-1]
    return struct.unpack(">" + STRUCT[dtype], b"".join(w.to_bytes(2, "big") for w in ws))[0]


TYPE_CASES = [(d, w) for d in STRUCT for w in ("big", "little")]


# ---------------------------------------------------------------- our client <-> our server


async def test_every_type_and_word_order_through_our_client_and_server():
    m = all_types_map()
    seen: list[ClientWrite] = []
    async with ModbusTagServer(m, on_write=seen.append) as srv:
        async with ModbusTagClient(m, port=srv.port, timeout_s=1.0) as cli:
            for dtype, wo in TYPE_CASES:
                a, b = VALUES[dtype]
                name = f"hr_{dtype}_{wo}"
                res = await cli.write(name, a)
                assert res.ok, res
                assert srv.get(name) == a
                # the registers hold exactly what an independent encoder produces
                tag = m[name]
                assert srv.get_registers("holding", tag.address, tag.n_registers) == ref_words(a, dtype, wo)
                srv.set(f"ir_{dtype}_{wo}", b)
            assert (await cli.write("hr_scaled", -2.3)).ok
            assert srv.get_registers("holding", 60, 1) == [77]  # (-2.3 + 10) / 0.1
            assert (await cli.write("coil_b", True)).ok
            srv.set("di_a", True)
            srv.set("ir_word", 0b100000)
            samples = await cli.read_all()
    for dtype, wo in TYPE_CASES:
        a, b = VALUES[dtype]
        assert samples[f"hr_{dtype}_{wo}"].value == a and samples[f"hr_{dtype}_{wo}"].good
        assert samples[f"ir_{dtype}_{wo}"].value == b
    assert samples["hr_scaled"].value == pytest.approx(-2.3)
    assert samples["coil_b"].value is True and samples["coil_a"].value is False
    assert samples["di_a"].value is True and samples["ir_bit5"].value is True
    assert all(s.good for s in samples.values())
    # the write hook saw decoded engineering values
    assert any(w.values.get("hr_float64_little") == VALUES["float64"][0] for w in seen)
    assert any(w.table is Table.COIL and w.values == {"coil_b": True} for w in seen)


# ---------------------------------------------------------------- independent server: uModbus


async def test_every_type_and_word_order_against_umodbus_server():
    m = all_types_map()
    regs = Registers()
    for dtype, wo in TYPE_CASES:
        a, b = VALUES[dtype]
        for k, w in enumerate(ref_words(b, dtype, wo)):
            regs.put(1, "i", m[f"ir_{dtype}_{wo}"].address + k, [w])
    regs.put(1, "d", 1, [1])
    regs.put(1, "i", 70, [0b100000])
    with umodbus_plc(regs, unit=1, n_addresses=128) as port:
        cli = ModbusTagClient(m, port=port, timeout_s=2.0)
        try:
            for dtype, wo in TYPE_CASES:
                a, _ = VALUES[dtype]
                assert (await cli.write(f"hr_{dtype}_{wo}", a)).ok
            assert (await cli.write("hr_scaled", 12.5)).ok
            assert (await cli.write("coil_a", True)).ok
            samples = await cli.read_all()
        finally:
            await cli.close()
    for dtype, wo in TYPE_CASES:
        a, b = VALUES[dtype]
        tag = m[f"hr_{dtype}_{wo}"]
        assert regs.get(1, "h", tag.address, tag.n_registers) == ref_words(a, dtype, wo)
        assert samples[f"ir_{dtype}_{wo}"].value == b, (dtype, wo)
        assert samples[f"hr_{dtype}_{wo}"].value == a
    assert regs.get(1, "h", 60) == [225]  # (12.5 + 10) / 0.1
    assert regs.get(1, "c", 3) == [1]
    assert samples["di_a"].value is True and samples["ir_bit5"].value is True and samples["ir_word"].value == 32


# ---------------------------------------------------------------- independent client: uModbus against our server


def _uread(port: int, fn, start: int, count: int) -> list[int]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:  # a deadline
        return utcp.send_message(fn(slave_id=1, starting_address=start, quantity=count), sock)


def _uwrite(port: int, start: int, values: list[int]):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:  # a deadline
        return utcp.send_message(utcp.write_multiple_registers(slave_id=1, starting_address=start, values=values), sock)


@pytest.mark.parametrize("dtype,wo", TYPE_CASES)
async def test_umodbus_client_reads_and_writes_our_server(dtype, wo):
    m = all_types_map()
    a, b = VALUES[dtype]
    async with ModbusTagServer(m) as srv:
        srv.set(f"ir_{dtype}_{wo}", b)
        t_in, t_hr = m[f"ir_{dtype}_{wo}"], m[f"hr_{dtype}_{wo}"]
        words = await asyncio.to_thread(_uread, srv.port, utcp.read_input_registers, t_in.address, t_in.n_registers)
        assert ref_value(words, dtype, wo) == b
        await asyncio.to_thread(_uwrite, srv.port, t_hr.address, ref_words(a, dtype, wo))
        assert srv.get(t_hr.name) == a


async def test_server_refuses_writes_outside_allow_list_and_bounds():
    m = load_tagmap(ROOT / "config" / "tagmaps" / "rectifier.toml")
    async with ModbusTagServer(m) as srv:
        srv.set("line_current_sp", 100.0)
        # holding 8 is not a tag; holding 0..1 is the setpoint (allowed)
        with pytest.raises(uexc.IllegalDataAddressError):
            await asyncio.to_thread(_uwrite, srv.port, 8, [1])
        # a float32 of 500 kA is outside the setpoint's [0, 135]: the PLC re-validates
        with pytest.raises(uexc.IllegalDataValueError):
            await asyncio.to_thread(_uwrite, srv.port, 0, ref_words(500.0, "float32", "big"))
        assert srv.get("line_current_sp") == 100.0
        await asyncio.to_thread(_uwrite, srv.port, 0, ref_words(110.5, "float32", "big"))
        assert srv.get("line_current_sp") == 110.5
        # reading past the served range is an illegal address too
        with pytest.raises(uexc.IllegalDataAddressError):
            await asyncio.to_thread(_uread, srv.port, utcp.read_input_registers, 500, 2)
        assert srv.client_writes == 1
    pm = load_tagmap(ROOT / "config" / "tagmaps" / "potroom.toml")
    assert pm.cells is not None
    base, stride = pm.cells.base_address, pm.cells.stride
    held = sorted(pm[n].address + k for f in pm.cells.fields for n in pm.cell_tags(f)[:1]
                  if pm[n].table.value == "holding" for k in range(pm[n].n_registers))  # fmt: skip
    last_cmd = held[-1]  # the last command register of cell 1's block
    spare = list(range(last_cmd + 1, base + stride))  # the rest of cell 1's block
    assert spare, "the shipped potroom map keeps spare holding registers in each cell's block"
    last_tag = next(n for f in pm.cells.fields for n in pm.cell_tags(f)[:1]
                    if pm[n].table.value == "holding" and pm[n].address == last_cmd)  # fmt: skip
    async with ModbusTagServer(pm) as srv:
        # spare registers inside cell 1's block: readable, not writable
        got = await asyncio.to_thread(_uread, srv.port, utcp.read_holding_registers, base, stride)
        assert got == [0] * stride
        with pytest.raises(uexc.IllegalDataAddressError):
            await asyncio.to_thread(_uwrite, srv.port, spare[0], [1])
        # a write spanning a command and a spare register is refused as a whole
        with pytest.raises(uexc.IllegalDataAddressError):
            await asyncio.to_thread(_uwrite, srv.port, last_cmd, [1, 1])
        assert srv.get(last_tag) == 0 and srv.rejected_writes == 2


async def test_server_restrictable_allow_list():
    m = load_tagmap(ROOT / "config" / "tagmaps" / "rectifier.toml")
    async with ModbusTagServer(m, writable=["heartbeat_out"]) as srv, ModbusTagClient(m, port=srv.port) as cli:
        r = await cli.write("line_current_sp", 100.0)
        assert not r.ok and r.code == 2 and "illegal address" in r.reason
        assert (await cli.write("heartbeat_out", 5)).ok


# ---------------------------------------------------------------- potroom: per-cell arrays both ways


async def test_potroom_cell_arrays_roundtrip():
    m = load_tagmap(ROOT / "config" / "tagmaps" / "potroom.toml")
    rng = np.random.default_rng(3)
    volts = rng.uniform(4.0, 4.6, 132).astype(np.float32).astype(np.float64)
    volts[16] = 32.0  # an anode effect
    beam = np.round(rng.uniform(-50, 50, 132), 1)
    ae = np.zeros(132, dtype=bool)
    ae[16] = True
    async with ModbusTagServer(m) as srv:
        srv.set_array("voltage", volts)
        srv.set_array("beam_ack", beam)
        srv.set_array("ae", ae)
        srv.set_array("feed_ack", np.arange(132) + 65530)  # wraps past 65535
        srv.set("remote", True)
        async with ModbusTagClient(m, port=srv.port) as cli:
            scan = await cli.scan()
            assert scan.all_good
            v, _ok = scan.array("voltage")
            np.testing.assert_array_equal(v, volts)
            b, _ = scan.array("beam_ack")
            np.testing.assert_allclose(b, beam, atol=1e-9)
            a, _ = scan.array("ae")
            np.testing.assert_array_equal(a.astype(bool), ae)
            f, _ = scan.array("feed_ack")
            assert f[0] == 65530 and f[6] == 0 and f[131] == (65530 + 131) % 65536
            assert scan.sample("cell017.ae").value is True and scan.sample("cell017.tapping").value is False
            # commands from the controller side appear in the PLC's arrays
            for k in (0, 64, 131):
                assert (await cli.write(f"cell{k + 1:03d}.beam_move", -2.5)).ok
                assert (await cli.write(f"cell{k + 1:03d}.feed_shots", 3)).ok
        moves = srv.get_array("beam_move")
        shots = srv.get_array("feed_shots")
        assert moves[[0, 64, 131]].tolist() == [-2.5, -2.5, -2.5] and np.count_nonzero(moves) == 3
        assert shots[[0, 64, 131]].tolist() == [3, 3, 3] and np.count_nonzero(shots) == 3
