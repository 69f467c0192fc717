"""The HMI end to end as an operator meets it: a real ``potline run`` daemon on a HIL rig,
its web HMI opened in a real headless Chromium (Debian package ``chromium``, driven over
the DevTools protocol with real mouse clicks and key input), a SCADA's OPC UA client
subscribed to the mirror's Alarms & Conditions beside it.

* the overview shows every cell of the plant config (floor numbers, a voltage, local as
  the PLCs say in observe);
* an AE induced on the rig (the cell's alumina forced below its critical content) is on
  the map and in the alarm list by the second scan whose data shows it (the detector
  confirms over two scans), and that data came within two scans of the AE's start on the
  rig (scans counted on the plant timeline, so a loaded machine slows both alike);
* an operator logs in and acknowledges it with a click: the journal has the
  acknowledgement with the operator's name and the OPC UA A&C subscriber sees the
  condition acknowledged by that user;
* a viewer's mode button is disabled and even a hand-made request is refused: the
  daemon's mode and journal are unchanged;
* once an hour of plant time has passed, the cell's voltage trend is the last hour of the
  daemon's history file, point for point, and an OPC UA HistoryRead of that hour gives
  the same samples.

Skipped, saying why, only when no Chromium is installed (``apt-get install chromium``)."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime

import numpy as np
import pytest
from asyncua import Client, ua

from plc_bridge.opcua_security import hash_password
from plc_bridge.opcua_server import NAMESPACE_URI
from potline.history import History
from potline.hmi.browser import BrowserError, Chromium, Page, find_chromium
from tests.potline.daemon_support import (
    DEADLINE_S,
    DaemonProcess,
    daemon_config,
    journal_events,
    plc_remote,
    rig_scenario,
    start_rig,
    wait_journal,
)

pytestmark = [
    pytest.mark.hil,
    pytest.mark.timeout(900),
    pytest.mark.skipif(
        find_chromium() is None, reason="no Chromium: `apt-get install chromium` (Debian) or set POTLINE_CHROMIUM"
    ),
]

CELLS = 8
SCAN_S = 4.0  # the daemon's scan period [plant s]: at 20x a scan every 0.2 s wall, an hour in 3 min
K = 4  # cell index: floor number 5
KEY = "Potroom1/Cell005/AE"
TAG = "Potroom1.Cell005.CellVoltage"
USERS = {"olga": ("operator", "olga-secret"), "victor": ("viewer", "victor-secret")}

#: records, as each push is rendered (the page's own hooks: a background tab gets no animation
#: frames), the plant time of the scan the page shows when cell K's tile first shows the AE
#: (and its alarm marker) and when the alarm list first has the AE's row
PROBE = """
(() => { window.__seen = {}; const S = window.HMI;
  const check = () => { const s = S.snap; if (!s) return;
    if (s.cells.u[%d] > 8 && !('high' in window.__seen)) window.__seen.high = s.t_plant_s;
    const tile = document.querySelector('.cell[data-cell="%d"]');
    if (tile && tile.classList.contains('ae') && !('tile' in window.__seen)) window.__seen.tile = s.t_plant_s;
    if (tile && tile.classList.contains('alarm') && !('marked' in window.__seen)) window.__seen.marked = s.t_plant_s;
    if (document.querySelector('tr[data-key="%s"]') && !('row' in window.__seen)) window.__seen.row = s.t_plant_s; };
  const onSnap = S.onSnap, onAlarms = S.onAlarms;
  S.onSnap = () => { if (onSnap) onSnap(); check(); };
  S.onAlarms = async () => { if (onAlarms) await onAlarms(); check(); };
  return true; })()
""" % (K, K, KEY)  # noqa: UP031


async def log_in(page: Page, url: str, user: str) -> None:
    await page.goto(f"{url}/#/login")
    await page.wait_for("!!document.querySelector('#login-form')", DEADLINE_S, "the login form")
    await page.type("#login-user", user)
    await page.type("#login-password", USERS[user][1])
    await page.click("#login-submit")
    await page.wait_for(f"document.getElementById('who').textContent === {json.dumps(f'{user} ({USERS[user][0]})')}",
                        DEADLINE_S, f"{user} logged in")  # fmt: skip


async def test_operator_surface_in_a_browser_on_a_daemon_on_a_hil_rig(tmp_path) -> None:
    rig = await start_rig(rig_scenario(cells=CELLS, speed=20.0, watchdog_s=60.0))
    users = {name: {"role": role, "password_hash": hash_password(pw)} for name, (role, pw) in USERS.items()}
    sec = {"state_dir": str(tmp_path / "opcua"), "sign": False, "sign_and_encrypt": True, "trust_any_client_certificate": True,
           "allow_no_security": True, "anonymous": "read_only", "users": users}  # fmt: skip
    dp = None
    try:
        cfg, data = daemon_config(tmp_path, rig, mode="observe", cells=CELLS, opcua={"security": sec},
                                  hmi={"push_interval_s": 0.05},  # every scan (0.2 s wall) pushed
                                  daemon={"scan_period_s": SCAN_S},
                                  safety={"stale_after_s": 3 * SCAN_S, "plc_heartbeat_timeout_s": 3 * SCAN_S})  # fmt: skip
        url = f"http://127.0.0.1:{data['_ports']['hmi']}"
        ua_url = f"opc.tcp://127.0.0.1:{data['_ports']['opcua']}/potline-twin/"
        journal = tmp_path / "state" / "journal.db"
        dp = await DaemonProcess(cfg).start()
        await dp.wait_ready()
        await dp.wait_event("hmi.listening")
        async with Chromium() as browser, Client(ua_url, timeout=30) as scada:
            # ---- the overview: every cell of the plant config, as the PLCs report it
            overview = await browser.new_page()
            await overview.goto(url + "/")
            await overview.wait_for(f"document.querySelectorAll('.cells .cell[data-seq]').length === {CELLS}",
                                    DEADLINE_S, "every tile showing a scan")  # fmt: skip
            tiles = await overview.evaluate(
                "[...document.querySelectorAll('.cells .cell')].map(t => ({i: +t.dataset.cell, cls: t.className,"
                " num: t.querySelector('.num').textContent, v: t.querySelector('.v').textContent,"
                " room: t.parentElement.dataset.room}))"
            )
            assert [t["num"] for t in tiles] == [f"{n:03d}" for n in range(1, CELLS + 1)]
            assert {t["room"] for t in tiles} == {"Potroom1"}
            assert all(3.0 < float(t["v"]) < 6.0 for t in tiles), tiles
            assert not plc_remote(rig, "potroom:Potroom1")  # observe: the PLC runs the cells itself
            assert all("local" in t["cls"].split() and "ae" not in t["cls"].split() for t in tiles), tiles
            assert await overview.evaluate("document.querySelector('.line-card .i').textContent") != "–"
            # the history starts at the daemon's first scan, at the latest this one
            first_scan = float(await overview.evaluate("window.HMI.snap.t_plant_s"))

            # ---- an AE on the rig: on the map and in the alarm list within two scans
            alarms = await browser.new_page()
            await alarms.goto(url + "/#/alarms")
            await alarms.wait_for("!!document.querySelector('#alarm-rows') && window.HMI.pushes >= 1", DEADLINE_S,
                                  "the alarm list")  # fmt: skip
            for page in (overview, alarms):
                await page.evaluate(PROBE)
            idx = await scada.get_namespace_index(NAMESPACE_URI)
            events: asyncio.Queue = asyncio.Queue()

            class Handler:
                def event_notification(self, ev: object) -> None:
                    events.put_nowait(ev)

            sub = await scada.create_subscription(20, Handler())
            await sub.subscribe_alarms_and_conditions(evtypes=ua.ObjectIds.AlarmConditionType)
            key_node = ua.NodeId(f"Bench.Alarms.{KEY}", idx)

            crit = float(rig.potline.truth()["critical_alumina_wt_pct"][K])
            rig.potline.force_alumina(np.array([K]), crit - 0.05)
            before = rig.now()
            deadline = time.monotonic() + DEADLINE_S
            while not rig.potline.truth()["ae_active"][K]:  # the AE's start on the rig: after `before`
                assert time.monotonic() < deadline, "no AE on the rig"
                before = rig.now()
                await asyncio.sleep(0.005)
            onset = before
            # on the map: the tile marked in alarm (it stays until acknowledged) and, while a scan
            # shows the AE going on, in the AE colour (an AE the PLC kills within a scan shows no such scan)
            try:
                marked = await overview.wait_for("window.__seen.marked", DEADLINE_S, "the tile marked in alarm")
            except BrowserError:
                state = await overview.evaluate(
                    "JSON.stringify({pushes: HMI.pushes, seq: HMI.snap && HMI.snap.seq, seen: window.__seen,"
                    f" tile: document.querySelector('.cell[data-cell=\"{K}\"]').className,"
                    " alarms: HMI.alarms && HMI.alarms.alarms.map(a => [a.key, a.state, a.cell_index]),"
                    " cellAlarm: [...HMI.cellAlarm], hook: String(HMI.onSnap).slice(0, 60)})"
                )
                raise AssertionError(f"overview state: {state}") from None
            seen_list = await alarms.wait_for("window.__seen.row", DEADLINE_S, "the AE in the alarm list")
            # two scans: the first scan whose data shows the AE voltage and the next (the detector
            # confirms an AE over two scans); that first scan came within two scans of the onset
            high = await overview.evaluate("window.__seen.high")
            assert high is not None and high - onset <= 2 * SCAN_S, (onset, high)
            slack = 0.5 * SCAN_S  # scans are SCAN_S apart on the plant timeline, give or take load
            assert marked - high <= SCAN_S + slack and seen_list - high <= SCAN_S + slack, (high, marked, seen_list)
            seen_ae = await overview.evaluate("window.__seen.tile")
            assert seen_ae is None or seen_ae - high <= SCAN_S + slack, (high, seen_ae)
            row = await alarms.evaluate(f"document.querySelector('tr[data-key=\"{KEY}\"]').innerText")
            assert "Unacknowledged" in row and "high" in row.lower(), row

            async def condition(pred) -> object:
                async with asyncio.timeout(DEADLINE_S):
                    while True:
                        ev = await events.get()
                        if getattr(ev, "NodeId", None) == key_node and pred(ev):
                            return ev

            ev = await condition(lambda e: e.AckedState.Text == "Unacknowledged" and e.Retain is True)
            assert ev.Severity >= 600

            # ---- an operator acknowledges it with a click: journal and the A&C event
            op = await browser.new_page()
            await log_in(op, url, "olga")
            await op.goto(url + "/#/alarms")
            await op.wait_for(f"!!document.querySelector('tr[data-key=\"{KEY}\"] button.ack')", DEADLINE_S,
                              "the Acknowledge button")  # fmt: skip
            await op.click(f'tr[data-key="{KEY}"] button.ack')
            await op.wait_for(f"['acked', 'normal'].includes(document.querySelector('tr[data-key=\"{KEY}\"]')"
                              "?.dataset.state) || !document.querySelector('tr[data-key=\"" + KEY + "\"]')",
                              DEADLINE_S, "the alarm acknowledged on the page")  # fmt: skip
            await wait_journal(journal, lambda evs: any(e.kind == "alarm_acknowledged" and e.user == "olga"
                                                        and e.tag == KEY for e in evs), "the acknowledgement")  # fmt: skip
            acked = await condition(lambda e: e.AckedState.Text == "Acknowledged")
            assert acked.ClientUserId == "olga", acked
            await sub.delete()
            assert op.errors == [] and overview.errors == [] and alarms.errors == []

            # ---- a viewer cannot change the mode
            viewer = await browser.new_page()
            await log_in(viewer, url, "victor")
            await viewer.goto(url + "/#/")
            await viewer.wait_for("!!document.getElementById('mode-apply')", DEADLINE_S, "the mode panel")
            assert await viewer.evaluate("document.getElementById('mode-apply').disabled") is True
            status = await viewer.evaluate(
                "fetch('/api/mode', {method: 'POST', credentials: 'same-origin', headers: {'Content-Type':"
                " 'application/json', 'X-CSRF-Token': window.HMI.session.csrf}, body: JSON.stringify({mode:"
                " 'control', reason: 'viewer try'})}).then(r => r.status)"
            )
            assert status == 403
            seq = await viewer.evaluate("window.HMI.snap.seq")
            await viewer.wait_for(f"window.HMI.snap.seq > {seq}", DEADLINE_S, "a later scan")
            assert await viewer.evaluate("window.HMI.snap.mode") == "observe"
            assert not any(e.kind == "mode_change" for e in journal_events(journal))
            assert not plc_remote(rig, "potroom:Potroom1")

            # ---- an hour of plant time later: the cell's trend is the last hour of history
            await rig.wait_until(first_scan + 3600.0 + 2 * SCAN_S, timeout_wall_s=600.0)
            cell = await browser.new_page()
            await cell.goto(f"{url}/#/cell/{K}")
            await cell.wait_for("document.querySelector('#trend-CellVoltage')?.dataset.loaded === '1'", DEADLINE_S,
                                "the voltage trend")  # fmt: skip
            box = await cell.evaluate("Object.assign({}, document.querySelector('#trend-CellVoltage').dataset)")
            start, end = float(box["start"]), float(box["end"])
            assert end - start == 3600.0 and box["resolution"] == "0"
            drawn = await cell.evaluate("(() => { const u = window.HMI.charts.find(c => c.root.closest("
                                        "'#trend-CellVoltage')); return {t: u.data[0], y: u.data[1],"
                                        " canvas: !!u.root.querySelector('canvas')}; })()")  # fmt: skip
            with History(tmp_path / "state" / "history.db", readonly=True) as h:
                s = h.query(TAG, start, end, resolution="raw")
            n = len(drawn["t"])
            assert drawn["canvas"] and n >= 0.9 * 3600.0 / SCAN_S, n  # every scan of the hour (a few may be skipped)
            assert drawn["t"][0] - start <= 2 * SCAN_S and end - drawn["t"][-1] <= 2 * SCAN_S
            # the history the page asked for; the scan being written as it asked may have landed since
            assert drawn["t"] == s.t.tolist()[:n] and len(s.t) - n <= 1
            np.testing.assert_allclose(np.array(drawn["y"], dtype=float), s.mean[:n], rtol=1e-5)
            assert cell.errors == []

            # ---- a SCADA backfills the same hour with HistoryRead
            node = scada.get_node(ua.NodeId(f"Bench.{TAG}", idx))
            # the request's times are OPC UA DateTimes (100 ns): a millisecond either side keeps both ends in
            got = await node.read_raw_history(datetime.fromtimestamp(start - 1e-3, UTC),
                                              datetime.fromtimestamp(end + 1e-3, UTC))  # fmt: skip
            stamps = [dv.SourceTimestamp.timestamp() for dv in got]
            assert len(got) >= n and max(abs(a - b) for a, b in zip(stamps, drawn["t"], strict=False)) < 1e-5
            good = [dv.Value.Value for dv in got[:n] if dv.StatusCode.is_good()]
            assert len(good) == int(np.isfinite(s.mean[:n]).sum()) and min(good) > 3.0 and max(good) < 40.0
        assert await dp.stop() == 0
    finally:
        if dp is not None and dp.returncode is None:
            await dp.kill()
        await rig.stop()
