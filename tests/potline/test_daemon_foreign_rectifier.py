"""``potline run`` end to end against a foreign rectifier PLC (issue 14, "Done when").

The rectifier PLC serves layout A (tests/plc_bridge/foreign_support.py) as that PLC would:
1-based addresses, word-swapped int32 amperes, "LOCAL" as bit 3 of its status word, no
PLC heartbeat, the active setpoint a read-only alias of the setpoint register. The daemon
gets the tag map a user writes for it from the docs. Checked from the PLC's side, with an
independent Modbus client where it is about the wire:

* observe: the daemon's line current and setpoint (``/metrics``) are the PLC's values;
* control: the heartbeat keeps the PLC in remote (the LOCAL bit clear on the wire), every
  setpoint the PLC receives is within the plant's bounds and it reaches the target;
* SIGTERM: handed back to local (LOCAL set) within the PLC's watchdog, exit 0.
"""

from __future__ import annotations

import time
import tomllib
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient

from plc_bridge.plant import potroom_tagmap
from plc_bridge.tagmap import parse_tagmap
from tests.plc_bridge.foreign_support import MAP_A, value
from tests.potline.daemon_support import ROOT, DaemonProcess, aget, daemon_config, until, write_mode_file
from tests.potline.plc_bench_support import BenchPlcs

WATCHDOG_S = 10.0
LOCAL_BIT = 3


def _metric(text: str, name: str, line: str = "Line1") -> float:
    for row in text.splitlines():
        if row.startswith(name + "{") and f'line="{line}"' in row:
            return float(row.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} for {line} not in /metrics")


@pytest.mark.hil
@pytest.mark.timeout(300)
async def test_daemon_observes_controls_and_hands_back_a_foreign_rectifier(tmp_path: Path) -> None:
    map_a = tmp_path / "acme_rectifier.toml"
    map_a.write_text(MAP_A)
    plcs = await BenchPlcs(parse_tagmap(tomllib.loads(MAP_A), source=str(map_a)), potroom_tagmap("Potroom1", 8),
                           watchdog_s=WATCHDOG_S, line_current_ka=118.4).start()  # fmt: skip
    mb = AsyncModbusTcpClient("127.0.0.1", port=plcs.rect_edge.port)
    dp = None

    async def local_bit() -> int:
        rr = await mb.read_input_registers(4, count=1, device_id=3)  # 30005
        assert not rr.isError(), rr
        return (int(rr.registers[0]) >> LOCAL_BIT) & 1

    try:
        assert await mb.connect()
        cfg, data = daemon_config(
            tmp_path, None, mode="observe",
            ports={"rectifier": plcs.rect_edge.port, "potroom": plcs.room_edge.port},
            tagmaps={"rectifier": str(map_a), "potroom": str(ROOT / "config/tagmaps/potroom.toml")},
            safety={"plc_watchdog_s": WATCHDOG_S, "stale_after_s": 8.0, "plc_heartbeat_timeout_s": 8.0},
            control={"amperage": {"target_ka": 119.0}},
        )  # fmt: skip
        metrics = f"http://127.0.0.1:{data['_ports']['metrics']}/metrics"
        dp = await DaemonProcess(cfg).start()
        await dp.wait_event("daemon.first_cycle", timeout=120.0)

        # observe: what the daemon shows is what the PLC holds; the PLC stays in local
        async def shows_the_plc() -> bool:
            _s, body = await aget(metrics)
            try:
                i = _metric(body, "potline_line_current_amperes")
                sp = _metric(body, "potline_line_setpoint_amperes")
            except AssertionError:
                return False
            return abs(i - 118_400.0) < 1.0 and abs(sp - 120_000.0) < 1.0

        await until(shows_the_plc, "the PLC's 118.4 kA and its 120 kA setpoint in /metrics", timeout=60.0)
        assert await local_bit() == 1 and not plcs.rect.remote

        # control: remote by the heartbeat, setpoints within the plant's bounds down to the target
        write_mode_file(tmp_path / "state" / "mode", "control")
        await dp.wait_event("mode.changed", pred=lambda e: e["mode"] == "control")
        await until(lambda: plcs.rect.remote, "the foreign rectifier in remote", timeout=60.0)
        assert await local_bit() == 0
        await until(lambda: plcs.setpoints[-1][1] <= 119.0 + 1e-3, "the setpoint register at the 119 kA target",
                    timeout=90.0)  # fmt: skip
        assert all(0.0 <= sp <= 132.0 for _t, sp in plcs.setpoints), plcs.setpoints
        rr = await mb.read_holding_registers(0, count=2, device_id=3)  # 40001-40002: int32 amperes, low word first
        assert not rr.isError(), rr
        assert value(rr.registers, "i", "CDAB") == round(plcs.setpoints[-1][1] * 1000.0) <= 119_000

        # SIGTERM: the heartbeat stops; the PLC's watchdog hands it back to local
        t_stop = time.monotonic()
        assert await dp.stop() == 0
        await until(lambda: not plcs.rect.remote, "the rectifier back in local", timeout=WATCHDOG_S + 10.0)
        assert time.monotonic() - t_stop <= WATCHDOG_S + 5.0
        assert await local_bit() == 1
    finally:
        mb.close()
        if dp is not None and dp.returncode is None:
            await dp.kill()
        await plcs.stop()
