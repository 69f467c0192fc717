"""Data quality in the daemon's history, as a SCADA and an operator see it: a real
``potline run`` on a HIL rig, its potroom PLC link dropped for a while and restored.

While the link is down the mirror shows the cell voltage not Good; afterwards the history
has those scans with the same kind of status: OPC UA HistoryRead answers each sample of
the drop with a non-Good code the live mirror also showed during it (never Good), the
samples before and after are Good, and the HMI's trend of the same tag carries the same
codes at the same times (Bad ones as gaps).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import aiohttp
import pytest
from asyncua import Client, ua

from plc_bridge.opcua_server import NAMESPACE_URI
from tests.potline.daemon_support import (
    DaemonProcess,
    daemon_config,
    plant_seconds,
    rig_scenario,
    start_rig,
    until,
)

pytestmark = [pytest.mark.hil, pytest.mark.timeout(420)]

ROOM = "potroom:Potroom1"
TAG = "Potroom1.Cell003.CellVoltage"


async def test_a_link_drop_is_in_the_history_with_the_mirrors_status(tmp_path) -> None:
    rig = await start_rig(rig_scenario(speed=20.0, watchdog_s=20.0))
    dp = None
    try:
        cfg, data = daemon_config(tmp_path, rig, mode="observe")
        url = f"opc.tcp://127.0.0.1:{data['_ports']['opcua']}/potline-twin/"
        hmi = f"http://127.0.0.1:{data['_ports']['hmi']}"
        dp = await DaemonProcess(cfg).start()
        await dp.wait_ready()
        live_codes: set[int] = set()
        async with Client(url, timeout=30) as scada:
            idx = await scada.get_namespace_index(NAMESPACE_URI)
            u = scada.get_node(ua.NodeId(f"Bench.{TAG}", idx))

            async def status() -> int:
                dv = await u.read_data_value(raise_on_bad_status=False)
                return int(dv.StatusCode.value)

            await until(lambda: _is(status, lambda c: c == 0), "the voltage Good")
            await plant_seconds(rig, 30.0)  # some good history first
            rig.plc(ROOM).proxy.drop("refuse")

            async def not_good() -> bool:
                c = await status()
                if c != 0:
                    live_codes.add(c)
                return c != 0

            await until(not_good, "the voltage not Good on the mirror")
            t_drop = rig.now()
            while rig.now() < t_drop + 40.0:  # 40 plant s of the drop, watched live
                await not_good()
                await plant_seconds(rig, 2.0)
            rig.plc(ROOM).proxy.restore()
            await until(lambda: _is(status, lambda c: c == 0), "Good again")
            await plant_seconds(rig, 30.0)

            start = datetime.fromtimestamp(0, UTC)
            end = datetime.fromtimestamp(time.time() + 10 * 86400.0, UTC)  # the plant timeline runs 20x
            got = await u.read_raw_history(start, end)
        codes = [int(dv.StatusCode.value) for dv in got]
        assert codes[0] == 0 and codes[-1] == 0, codes
        bad = [c for c in codes if c != 0]
        # the scans the daemon made during the drop (reads wait for their timeouts: fewer than one per 2 s)
        assert len(bad) >= 3, codes
        assert set(bad) <= live_codes, (set(bad), live_codes)
        # the HMI's trend of the same tag: the same codes at the same times
        t0, t1 = got[0].SourceTimestamp.timestamp(), got[-1].SourceTimestamp.timestamp()
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{hmi}/api/history", params={"tag": TAG, "start": str(t0 - 1e-3), "end": str(t1 + 1e-3),
                                                              "points": "100000"}) as resp:  # fmt: skip
                assert resp.status == 200
                trend = json.loads(await resp.text())
        assert trend["resolution_s"] == 0
        stamps = [dv.SourceTimestamp.timestamp() for dv in got]  # to the microsecond (OPC UA DateTime)
        assert (
            len(trend["t"]) == len(stamps) and max(abs(a - b) for a, b in zip(trend["t"], stamps, strict=True)) < 1e-5
        )
        assert trend["q"] == codes and trend["bad"] + trend["uncertain"] == len(bad)
        for c, v in zip(trend["q"], trend["mean"], strict=True):
            assert (v is None) == (c >> 30 >= 2), (c, v)  # Bad: a gap; Uncertain: drawn
        assert await dp.stop() == 0
    finally:
        if dp is not None and dp.returncode is None:
            await dp.kill()
        await rig.stop()


async def _is(fn, pred) -> bool:
    return pred(await fn())
