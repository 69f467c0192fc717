"""The OPC UA mirror's quality, link objects, Alarms & Conditions and HistoryRead wired
into the daemon: a real ``potline run`` process against a HIL rig on loopback, looked at
with plain asyncua clients as a SCADA would.

* A cell voltage is Good with a source time on the plant timeline; the potroom PLC's link
  object says Up. The potroom link dropped: the voltage is no longer Good and the link
  object says down; restored: Good again.
* An AE the rig induces reaches an A&C subscription as an unacknowledged condition; an
  operator acknowledges it over OPC UA (SignAndEncrypt login): the alarm manager takes it,
  the journal has it with the operator's name, the subscriber sees the condition acked.
* HistoryRead gives the cell's voltage from the daemon's history file.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import numpy as np
import pytest
from asyncua import Client, ua

from plc_bridge.opcua_security import ClientSecurity, hash_password
from plc_bridge.opcua_server import NAMESPACE_URI
from tests.potline.daemon_support import (
    DEADLINE_S,
    DaemonProcess,
    daemon_config,
    rig_scenario,
    start_rig,
    until,
    wait_journal,
)

pytestmark = [pytest.mark.hil, pytest.mark.timeout(420)]

ROOM = "potroom:Potroom1"
K = 2  # cell index: floor number 3
KEY = "Potroom1/Cell003/AE"
ACK = ua.NodeId(ua.ObjectIds.AcknowledgeableConditionType_Acknowledge)


async def _next_condition(sub_handler: asyncio.Queue, key_node: ua.NodeId, pred) -> object:
    async with asyncio.timeout(DEADLINE_S):
        while True:
            ev = await sub_handler.get()
            if getattr(ev, "NodeId", None) == key_node and pred(ev):
                return ev


async def test_mirror_quality_links_conditions_and_history_on_a_running_daemon(tmp_path) -> None:
    rig = await start_rig(rig_scenario(speed=20.0, watchdog_s=20.0))
    sec = {"state_dir": str(tmp_path / "opcua"), "sign": False, "sign_and_encrypt": True, "trust_any_client_certificate": True,
           "allow_no_security": True, "anonymous": "read_only",
           "users": {"op": {"role": "operator", "password_hash": hash_password("op-pass")}}}  # fmt: skip
    dp = None
    try:
        cfg, data = daemon_config(tmp_path, rig, mode="observe", opcua={"security": sec})
        url = f"opc.tcp://127.0.0.1:{data['_ports']['opcua']}/potline-twin/"
        journal = tmp_path / "state" / "journal.db"
        dp = await DaemonProcess(cfg).start()
        await dp.wait_ready()
        t_start = time.time()
        async with Client(url, timeout=30) as anon:
            idx = await anon.get_namespace_index(NAMESPACE_URI)
            u = anon.get_node(ua.NodeId("Bench.Potroom1.Cell003.CellVoltage", idx))
            up = anon.get_node(ua.NodeId("Bench.Links.potroom_Potroom1.Up", idx))

            async def good() -> bool:
                dv = await u.read_data_value(raise_on_bad_status=False)
                return dv.StatusCode.is_good() and bool(await up.read_value())

            await until(good, "the cell voltage Good and the potroom link up")
            dv = await u.read_data_value(raise_on_bad_status=False)
            assert 3.0 < dv.Value.Value < 6.0
            # the source time is on the daemon's plant timeline (its start's wall time + plant time)
            assert dv.SourceTimestamp.timestamp() > t_start - 3600.0

            h = rig.plc(ROOM)
            h.proxy.drop("refuse")

            async def bad() -> bool:
                dv = await u.read_data_value(raise_on_bad_status=False)
                return not dv.StatusCode.is_good() and not bool(await up.read_value())

            await until(bad, "the cell voltage not Good and the link down")
            h.proxy.restore()
            await until(good, "Good again after the link came back")

        # ---- Alarms & Conditions: an AE, acknowledged by an operator over OPC UA
        op = Client(url, timeout=30)
        await ClientSecurity(mode="SignAndEncrypt", state_dir=tmp_path / "client", username="op",
                             password="op-pass").apply(op)  # fmt: skip
        async with op:
            idx = await op.get_namespace_index(NAMESPACE_URI)
            events: asyncio.Queue = asyncio.Queue()

            class Handler:
                def event_notification(self, ev: object) -> None:
                    events.put_nowait(ev)

            sub = await op.create_subscription(20, Handler())
            await sub.subscribe_alarms_and_conditions(evtypes=ua.ObjectIds.AlarmConditionType)
            key_node = ua.NodeId(f"Bench.Alarms.{KEY}", idx)
            crit = float(rig.potline.truth()["critical_alumina_wt_pct"][K])
            rig.potline.force_alumina(np.array([K]), crit - 0.05)
            ev = await _next_condition(events, key_node, lambda e: e.Retain is True)
            assert ev.AckedState.Text == "Unacknowledged" and ev.Severity >= 600, ev
            await op.get_node(ev.NodeId).call_method(
                ACK, ua.Variant(ev.EventId, ua.VariantType.ByteString),
                ua.Variant(ua.LocalizedText("seen on SCADA"), ua.VariantType.LocalizedText),
            )  # fmt: skip
            await _next_condition(events, key_node, lambda e: e.AckedState.Text == "Acknowledged")
            await wait_journal(journal, lambda ev: any(e.kind == "alarm_acknowledged" and e.user == "op"
                                                       and e.tag == KEY for e in ev), "the OPC UA acknowledgement")  # fmt: skip

            # ---- HistoryRead of the cell's voltage from the daemon's history
            cell = op.get_node(ua.NodeId("Bench.Potroom1.Cell003.CellVoltage", idx))
            start = datetime.fromtimestamp(0, UTC)
            end = datetime.fromtimestamp(time.time() + 10 * 86400.0, UTC)  # the plant timeline runs 20x
            got = await cell.read_raw_history(start, end)
            values = [dv.Value.Value for dv in got if dv.StatusCode.is_good()]
            assert len(values) >= 3 and all(0.0 < v < 80.0 for v in values)
            await sub.delete()
        assert await dp.stop() == 0
    finally:
        if dp is not None and dp.returncode is None:
            await dp.kill()
        await rig.stop()
