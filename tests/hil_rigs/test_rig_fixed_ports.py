"""A rig a daemon can be pointed at (issue 12 item 8): fixed PLC ports on request, and a
daemon config written by the rig that ``potline check-config`` accepts.

Everything is real: the rig in its own process (``python -m hil_rigs serve``), an
independent Modbus client (pymodbus, decoding the registers itself) at the fixed port,
``potline check-config`` as a process on the written file, and a second rig refused
because the port is taken. Waits are on the READY line and on process exits, each with
a deadline.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import sys
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient

from hil_rigs.process import RigProcess, fixed_ports
from hil_rigs.scenarios import load_scenario
from plc_bridge.ports import free_port

pytestmark = pytest.mark.hil

#: a small bench: one line, one room of 8 cells, rectifier over Modbus, potroom over OPC UA
OVERRIDES = {"plant.cells": 8, "ae_storm": None}


def _free_range(n: int, attempts: int = 50) -> int:
    """A base port with ``n`` consecutive free ports on loopback (checked by binding)."""
    for _ in range(attempts):
        base = free_port()
        if base + n > 65535:
            continue
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports found")


async def _run(*cmd: str, timeout_s: float = 90.0) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _line_current_ka(port: int) -> float:
    """The rectifier's measured line current as any Modbus client reads it: input registers
    0-1, float32, big-endian words (config/tagmaps/rectifier.toml)."""
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2.0, retries=1)
    try:
        assert await client.connect(), f"nothing listens on port {port}"
        rr = await client.read_input_registers(0, count=2, device_id=1)
        assert not rr.isError(), rr
        return float(struct.unpack(">f", struct.pack(">HH", *rr.registers))[0])
    finally:
        client.close()


def test_ports_follow_the_plant_layout_rectifiers_first() -> None:
    """The reference plant (3 lines, 5 operating rooms) from base 15020: rectifiers 15020-15022
    in line order, then potrooms 15023-15027 in room order; a range past 65535 is refused."""
    sc = load_scenario("ae_storm", **{"plant.config": "plant_reference.toml"})
    ports = fixed_ports(sc, 15020)
    assert ports == {
        "rectifier:Line1": 15020, "rectifier:Line2": 15021, "rectifier:Line3": 15022,
        "potroom:Potroom1": 15023, "potroom:Potroom2": 15024, "potroom:Potroom3": 15025,
        "potroom:Potroom4": 15026, "potroom:Potroom5": 15027,
    }  # fmt: skip
    with pytest.raises(ValueError, match="8 PLC"):
        fixed_ports(sc, 65530)


async def test_rig_on_fixed_ports_writes_a_daemon_config_that_check_config_accepts(tmp_path: Path) -> None:
    base = _free_range(2)
    written = tmp_path / "run" / "daemon.toml"
    scenario = load_scenario("ae_storm", **OVERRIDES)
    rig = RigProcess(scenario, speed=5.0, workdir=tmp_path / "rig", max_wall_s=180.0, base_port=base,
                     daemon_config=written)  # fmt: skip
    try:
        info = await rig.start(timeout_s=120.0)
        # the PLCs listen where asked: rectifier first, then the potroom
        assert [(ep["device"], ep["port"]) for ep in info["rectifiers"] + info["potrooms"]] == [
            ("rectifier:Line1", base),
            ("potroom:Potroom1", base + 1),
        ]
        assert info["daemon_config"] == str(written) and written.is_file()
        # an independent client at the fixed port sees the rectifier carrying the line (120 kA)
        assert await _line_current_ka(base) == pytest.approx(120.0, rel=0.03)

        # the written file is a complete daemon config: check-config accepts it as it is
        rc, out, err = await _run(sys.executable, "-m", "potline.cli", "check-config", "--config", str(written),
                                  "--json")  # fmt: skip
        assert rc == 0, err + out
        doc = json.loads(out)
        assert doc["valid"] and doc["cells"] == 8 and doc["mode"] == "observe"
        assert sorted((p["kind"], p["where"], p["protocol"], p["host"], p["port"]) for p in doc["plcs"]) == [
            ("potroom", "Potroom1", "opcua", "127.0.0.1", base + 1),
            ("rectifier", "Line1", "modbus", "127.0.0.1", base),
        ]
        assert Path(doc["journal"]) == written.parent / "daemon-state" / "journal.db"

        # a second rig on the same ports is refused at once, naming the port and the PLC
        rc, _out, err = await _run(sys.executable, "-m", "hil_rigs", "serve", "--scenario", "ae_storm", "--set",
                                   "plant.cells=8", "--base-port", str(base), "--max-wall-s", "30")  # fmt: skip
        assert rc == 2, err
        assert f"port {base} (rectifier:Line1) on 127.0.0.1 is not free" in err
        assert "Traceback" not in err
    finally:
        if rig.proc is not None and rig.proc.returncode is None:
            report = await rig.stop()
            assert report.process["returncode"] == 0 and not report.process["traceback"], report.process
        await rig.close()
