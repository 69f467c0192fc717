"""The HMI, alarms, history and process KPIs wired into the daemon: a real ``potline run``
process against a HIL rig on loopback, looked at over HTTP as a browser and Prometheus do.

In observe (the PLCs in local, their own automation in charge) the HMI served by the
daemon shows the plant (its rooms and cells, the scan's voltages and line current, every
cell flagged local as its PLC says); an AE the rig induces on one cell shows up in the HMI's
alarm list as an unacknowledged high-priority alarm and in the journal (``alarm_raised``),
an operator acknowledges it over the HMI (journalled with the user); the cell's voltage
trend comes back from the history; ``/metrics`` carries the process KPIs (line current,
cells per state, room power, AE minutes once the AE ended).
"""

from __future__ import annotations

import json

import aiohttp
import numpy as np
import pytest

from plc_bridge.opcua_security import hash_password
from tests.potline.daemon_support import (
    DaemonProcess,
    daemon_config,
    journal_events,
    read_metric,
    rig_scenario,
    start_rig,
    until,
    wait_journal,
)

pytestmark = [pytest.mark.hil, pytest.mark.timeout(420)]

K = 2  # cell index; floor number 3 of the one room
KEY = "Potroom1/Cell003/AE"


def _client() -> aiohttp.ClientSession:
    """Keeps the session cookie of a numeric host (127.0.0.1), as a browser does."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def _get(http: aiohttp.ClientSession, url: str) -> dict:
    async with http.get(url) as resp:
        assert resp.status == 200, (url, resp.status, await resp.text())
        return json.loads(await resp.text())


async def test_hmi_shows_the_plant_and_an_ae_alarm_with_kpis_and_history(tmp_path) -> None:
    rig = await start_rig(rig_scenario(speed=20.0, watchdog_s=20.0))
    sec = {"state_dir": str(tmp_path / "opcua"), "sign": False, "sign_and_encrypt": True, "trust_any_client_certificate": True,
           "allow_no_security": True, "anonymous": "read_only",
           "users": {"op": {"role": "operator", "password_hash": hash_password("op-pass")}}}  # fmt: skip
    dp = None
    try:
        cfg, data = daemon_config(tmp_path, rig, mode="observe", opcua={"security": sec})
        ports = data["_ports"]
        url = f"http://127.0.0.1:{ports['hmi']}"
        mport = ports["metrics"]
        journal = tmp_path / "state" / "journal.db"
        dp = await DaemonProcess(cfg).start()
        await dp.wait_event("hmi.listening")
        await dp.wait_event("daemon.first_cycle")
        async with _client() as http:
            # the plant: one room of 8 cells, the scan's voltages, the line current, every cell local
            plant = await _get(http, f"{url}/api/plant")
            assert plant["plant"] == "Bench" and [len(r["cells"]) for r in plant["rooms"]] == [8]

            async def scanned() -> bool:
                snap = await _get(http, f"{url}/api/snapshot")
                return all(u is not None for u in snap["cells"]["u"])

            await until(scanned, "a snapshot with every cell voltage")
            snap = await _get(http, f"{url}/api/snapshot")
            assert snap["mode"] == "observe" and min(snap["cells"]["u"]) > 3.0 and max(snap["cells"]["u"]) < 6.0
            assert 100.0 < snap["lines"]["i_ka"][0] < 135.0
            assert all(f & 8 for f in snap["cells"]["flags"])  # FLAG_LOCAL: the PLC's own remote bit
            assert (await read_metric(mport, "potline_cells", room="Potroom1", state="local")) == 8.0
            assert (await read_metric(mport, "potline_cells", room="Potroom1", state="in_circuit")) == 8.0
            i_a = await read_metric(mport, "potline_line_current_amperes", line="Line1")
            assert i_a is not None and abs(i_a / 1e3 - snap["lines"]["i_ka"][0]) < 5.0
            assert (await read_metric(mport, "potline_room_power_watts", room="Potroom1") or 0.0) > 1e5

            # an AE on cell 3: in the alarm list, unacknowledged, and journalled
            crit = float(rig.potline.truth()["critical_alumina_wt_pct"][K])
            rig.potline.force_alumina(np.array([K]), crit - 0.05)

            async def listed() -> bool:
                got = await _get(http, f"{url}/api/alarms")
                return any(a["key"] == KEY and a["active"] for a in got["alarms"])

            await until(listed, f"{KEY} in the HMI's alarm list")
            alarm = next(a for a in (await _get(http, f"{url}/api/alarms"))["alarms"] if a["key"] == KEY)
            assert alarm["state"] == "unack" and alarm["priority"] == "high" and alarm["cell_index"] == K
            await wait_journal(journal, lambda ev: any(e.kind == "alarm_raised" and e.tag == KEY for e in ev),
                               "alarm_raised in the journal")  # fmt: skip

            # an operator acknowledges it on the HMI
            async with http.post(f"{url}/api/login", json={"user": "op", "password": "op-pass"}) as resp:
                csrf = (await resp.json())["csrf"]
            hdr = {"X-CSRF-Token": csrf, "Origin": url}
            async with http.post(f"{url}/api/alarms/ack", json={"key": KEY, "comment": "seen"}, headers=hdr) as resp:
                assert resp.status == 200, await resp.text()
            await wait_journal(journal, lambda ev: any(e.kind == "alarm_acknowledged" and e.user == "op" for e in ev),
                               "the acknowledgement in the journal")  # fmt: skip

            # the AE ends: its minutes reach the KPIs
            await dp.wait_event("event.ae_end", pred=lambda e: e.get("cell") == K + 1)
            await until(lambda: read_metric(mport, "potline_room_ae_minutes_total", room="Potroom1"),
                        "AE minutes in /metrics")  # fmt: skip

            # the voltage trend of cell 3 from the history
            # up to the latest scan: the span decides the resolution (a far-future end would ask
            # for hour buckets, two of them on a loaded machine)
            t1 = (await _get(http, f"{url}/api/snapshot"))["t"] + 1.0
            trend = await _get(http, f"{url}/api/history?tag=Potroom1.Cell003.CellVoltage&start={snap['t'] - 600}"
                                     f"&end={t1}")  # fmt: skip
            values = [v for v in trend["mean"] if v is not None]
            assert trend["unit"] == "V" and len(values) >= 3 and all(0.0 < v < 80.0 for v in values), trend
        assert await dp.stop() == 0
    finally:
        if dp is not None and dp.returncode is None:
            await dp.kill()
        await rig.stop()

    ev = journal_events(journal)
    raised = [e for e in ev if e.kind == "alarm_raised" and e.tag == KEY]
    starts = [e for e in ev if e.kind == "ae_start" and e.cell == K + 1]
    assert raised and starts and raised[0].category == "alarm" and raised[0].id > starts[0].id
    kinds = [e.kind for e in ev if e.tag == KEY]
    assert kinds[0] == "alarm_raised" and {"alarm_acknowledged", "alarm_returned"} <= set(kinds[1:]), kinds
