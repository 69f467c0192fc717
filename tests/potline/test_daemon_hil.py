"""The daemon as a real process against a HIL rig on loopback.

Mode switching (operator OPC UA call, mode file, signals) with every switch journalled,
the PLCs going remote only in ``control``, SIGTERM handing control back to local before
the process exits, ``kill -9`` at a random moment and a restart with the journal intact,
a PLC that is down at start and one that drops and comes back, an AE in a potroom an
operator switched to local still journalled in ``control``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import threading
import time

import numpy as np
import pytest
from asyncua import ua

from hil_rigs.faults import Fault
from plc_bridge.opcua_security import hash_password
from tests.potline.daemon_support import (
    DaemonProcess,
    aget,
    call_set_mode,
    daemon_config,
    journal_events,
    listener,
    metric,
    read_mirror,
    rig_scenario,
    start_rig,
    wait_status,
)

pytestmark = [pytest.mark.hil, pytest.mark.timeout(180)]


def _security(tmp_path) -> dict:
    return {"state_dir": str(tmp_path / "opcua"), "sign": False, "sign_and_encrypt": False,
            "allow_no_security": True, "anonymous": "read_only",
            "users": {"op": {"role": "operator", "password_hash": hash_password("op-pass")},
                      "view": {"role": "viewer", "password_hash": hash_password("view-pass")}}}  # fmt: skip


def _remote(rig, device: str) -> bool:
    """Is the rig's PLC in remote (the controller in charge)? Read from the PLC's own memory."""
    return bool(rig.plc(device).image.get("remote"))


async def _until(pred, timeout: float, what: str, step: float = 0.05) -> None:
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out ({timeout} s) waiting for {what}")
        await asyncio.sleep(step)


async def test_modes_switch_at_runtime_and_sigterm_hands_back_to_local(tmp_path) -> None:
    rig = await start_rig(rig_scenario(speed=20.0, watchdog_s=20.0))
    sock, addr = listener(tmp_path)  # systemd's NOTIFY_SOCKET, watchdog 2 s
    notes: list[tuple[float, str]] = []

    def collect() -> None:  # a thread: receipt times do not depend on this test's event loop
        sock.setblocking(True)
        sock.settimeout(0.2)
        while not stop_collect.is_set():
            try:
                notes.append((time.monotonic(), sock.recv(4096).decode()))
            except (TimeoutError, OSError):
                continue

    stop_collect = threading.Event()
    collector = threading.Thread(target=collect, daemon=True)
    collector.start()
    dp = None
    try:
        cfg, data = daemon_config(tmp_path, rig, mode="observe", opcua={"security": _security(tmp_path)})
        ports = data["_ports"]
        journal = tmp_path / "state" / "journal.db"
        dp = await DaemonProcess(cfg, env={"NOTIFY_SOCKET": addr, "WATCHDOG_USEC": "2000000"}).start()
        first = await dp.wait_ready()
        assert first["startup_s"] < 10.0
        await wait_status(f"http://127.0.0.1:{ports['metrics']}/readyz", 200)
        # observe: nothing written, the PLCs stay in local
        await asyncio.sleep(1.0)
        assert not _remote(rig, "potroom:Potroom1") and not _remote(rig, "rectifier:Line1")

        # an anonymous or viewer client may not switch modes; an operator may
        with pytest.raises(ua.UaStatusCodeError) as err:
            await call_set_mode(ports["opcua"], "shadow")
        assert err.value.code == ua.StatusCodes.BadUserAccessDenied
        with pytest.raises(ua.UaStatusCodeError) as err:
            await call_set_mode(ports["opcua"], "control", "view", "view-pass")
        assert err.value.code == ua.StatusCodes.BadUserAccessDenied
        assert await call_set_mode(ports["opcua"], "shadow", "op", "op-pass") == "observe"
        assert (await read_mirror(ports["opcua"], "Twin.Mode"))[0] == "shadow"
        await dp.wait_event("shadow.would_write", timeout=30)
        assert not _remote(rig, "potroom:Potroom1")  # shadow sends nothing, not even the heartbeat

        # the mode file (written by the service user) -> control: heartbeat runs, PLCs go remote
        mode_file = tmp_path / "state" / "mode"
        mode_file.write_text("control\n")
        os.chmod(mode_file, 0o600)
        await dp.wait_event("mode.changed", timeout=10, pred=lambda e: e["mode"] == "control")
        await _until(lambda: _remote(rig, "potroom:Potroom1") and _remote(rig, "rectifier:Line1"), 20,
                     "PLCs in remote under control")  # fmt: skip
        _status, text = await aget(f"http://127.0.0.1:{ports['metrics']}/metrics")
        assert metric(text, "potline_mode", mode="control") == 1.0

        # SIGUSR2: hands off (observe) at once; the PLCs fall back to local on their watchdog
        n = len(dp.events)
        dp.signal(signal.SIGUSR2)
        await dp.wait_event("mode.changed", timeout=10, pred=lambda e: e["mode"] == "observe", after=n)
        await _until(lambda: not _remote(rig, "potroom:Potroom1"), 20 / 20 * 3 + 5, "potroom back in local")
        # SIGUSR1 re-applies the mode file ("control") on demand
        n = len(dp.events)
        dp.signal(signal.SIGUSR1)
        await dp.wait_event("mode.changed", timeout=10, pred=lambda e: e["mode"] == "control", after=n)
        await _until(lambda: _remote(rig, "potroom:Potroom1"), 20, "potroom remote again")

        # SIGTERM: stop commanding, wait until the PLCs report local, then exit 0
        dp.signal(signal.SIGTERM)
        rc = await dp.wait(60)
        assert rc == 0, dp.tail()
        assert not _remote(rig, "potroom:Potroom1") and not _remote(rig, "rectifier:Line1")
        done = dp.find("daemon.handback_done")
        assert done, dp.tail()
        stopped = dp.find("daemon.stopped")[0]
        assert done[0]["_mono"] <= stopped["_mono"]

        ev = journal_events(journal)
        changes = [(e.data["from"], e.data["to"], e.source, e.user) for e in ev if e.kind == "mode_change"]
        assert changes == [
            ("observe", "shadow", "opcua", "op"),
            ("shadow", "control", "mode_file", changes[1][3]),
            ("control", "observe", "SIGUSR2", None),
            ("observe", "control", "SIGUSR1", changes[3][3]),
        ]
        refused = [e for e in ev if e.kind == "mode_refused"]
        assert refused == []  # access-denied calls never reach the daemon's handler
        kinds = [e.kind for e in ev]
        assert kinds[0] == "daemon_start" and kinds[-1] == "daemon_stop"
        hb = [e for e in ev if e.kind == "handback" and e.data.get("ok") is not None]
        assert hb and hb[-1].data["ok"] is True
        assert [e.id for e in ev] == list(range(1, len(ev) + 1))

        # systemd: READY=1 once, after the first cycle; WATCHDOG=1 every ~1 s from the loop; STOPPING=1
        texts = [m for _, m in notes]
        ready = [i for i, m in enumerate(texts) if "READY=1" in m]
        assert len(ready) == 1 and f"MAINPID={dp.pid}" in texts[ready[0]]
        assert notes[ready[0]][0] >= first["_mono"] - 0.5
        pets = [t for t, m in notes if m == "WATCHDOG=1"]
        gaps = [b - a for a, b in itertools.pairwise(pets)]
        # never later than half of WatchdogSec (2 s), never a flood (scheduling jitter under load allowed)
        assert len(pets) >= 3 and all(0.4 <= g <= 2.0 for g in gaps), gaps
        stopping = [i for i, m in enumerate(texts) if m.startswith("STOPPING=1")]
        assert stopping and stopping[0] > ready[0]
        assert any(m.startswith("STATUS=mode control") for m in texts)
    finally:
        stop_collect.set()
        collector.join(2)
        sock.close()
        if dp is not None and dp.returncode is None:
            await dp.kill()
        await rig.stop()


async def test_kill_9_loses_no_committed_entry_and_restarts_cleanly(tmp_path) -> None:
    rig = await start_rig(rig_scenario(speed=40.0, storm_every_s=120.0, storm_start_s=30.0))
    try:
        cfg, _data = daemon_config(tmp_path, rig, mode="control")
        journal = tmp_path / "state" / "journal.db"
        dp = await DaemonProcess(cfg).start()
        await dp.wait_event("daemon.first_cycle", timeout=30)
        # let it journal (AEs, setpoint and beam writes), then SIGKILL at a random moment
        await asyncio.sleep(random.uniform(3.0, 6.0))
        seen = journal_events(journal)  # committed entries, read by another process meanwhile
        await asyncio.sleep(random.uniform(0.0, 1.0))
        assert await dp.kill() == -signal.SIGKILL
        after_kill = journal_events(journal)
        ids = [e.id for e in after_kill]
        assert ids == list(range(1, len(ids) + 1)), "journal ids must have no gaps"
        by_id = {e.id: e for e in after_kill}
        for e in seen:  # every entry committed before the kill is still there, unchanged
            assert by_id[e.id].kind == e.kind and by_id[e.id].ts_utc == e.ts_utc and by_id[e.id].detail == e.detail
        assert len(after_kill) >= len(seen) > 2
        assert any(e.kind == "ae_start" for e in after_kill), "the storm's AEs are journalled"
        assert not any(e.kind == "daemon_stop" for e in after_kill)
        # its log: one JSON object per line; AE events carry plant, line, room and cell
        assert len(dp.events) == len(dp.raw), [x for x in dp.raw if not x.startswith("{")][:3]
        ae_logs = dp.find("event.ae_start")
        assert ae_logs and all({"plant", "line", "room", "cell"} <= set(e) for e in ae_logs)

        # restart: same journal, clean start, the crash is recorded, numbering continues
        dp2 = await DaemonProcess(cfg).start()
        await dp2.wait_event("daemon.first_cycle", timeout=30)
        assert await dp2.stop() == 0
        final = journal_events(journal)
        ids = [e.id for e in final]
        assert ids == list(range(1, len(ids) + 1))
        new = final[len(after_kill) :]
        assert [e.kind for e in new][:2] == ["unclean_shutdown", "daemon_start"]
        assert new[0].data["last_id"] == after_kill[-1].id
        assert new[-1].kind == "daemon_stop"
        from potline.journal import Journal

        j = Journal(journal, readonly=True)
        assert j.integrity_check() == "ok"
        j.close()
    finally:
        await rig.stop()


async def test_plc_down_at_start_daemon_waits_then_connects_and_survives_a_drop(tmp_path) -> None:
    from plc_bridge.ports import free_port

    ports = {"rectifier": free_port(), "potroom": free_port()}
    cfg0, data = daemon_config(tmp_path, None, mode="observe", ports=ports)
    journal = tmp_path / "state" / "journal.db"
    dp = await DaemonProcess(cfg0).start()
    rig = None
    try:
        # nobody listens: the daemon starts anyway, runs cycles, and says it is not ready
        first = await dp.wait_event("daemon.first_cycle", timeout=30)
        assert first["plc_up"] == {"rectifier1": False, "potroom1": False}
        m = data["_ports"]["metrics"]
        status, body = await aget(f"http://127.0.0.1:{m}/readyz")
        assert status == 503 and "PLC links down" in body
        assert (await aget(f"http://127.0.0.1:{m}/healthz"))[0] == 200
        await asyncio.sleep(2.0)
        assert dp.returncode is None
        await dp.stop()

        # the rig comes up on the configured... ports are the rig's own: restart the daemon at them
        rig = await start_rig(rig_scenario(speed=20.0))
        cfg, data = daemon_config(tmp_path, rig, mode="observe")
        h = rig.plc("potroom:Potroom1")
        h.proxy.drop("refuse")  # the potroom PLC is unreachable when the daemon starts
        dp = await DaemonProcess(cfg).start()
        first = await dp.wait_event("daemon.first_cycle", timeout=30)
        assert first["plc_up"] == {"rectifier1": True, "potroom1": False}
        await asyncio.sleep(1.0)
        h.proxy.restore()
        await dp.wait_event("plc.comms_restored", timeout=20, pred=lambda e: e["plc"] == "potroom1")
        m = data["_ports"]["metrics"]
        await wait_status(f"http://127.0.0.1:{m}/readyz", 200)
        # it drops again mid-run and comes back: journalled both ways, the process never exits
        n = len(dp.events)
        h.proxy.drop("blackhole")
        await dp.wait_event("plc.comms_lost", timeout=20, pred=lambda e: e["plc"] == "potroom1", after=n)
        status, body = await aget(f"http://127.0.0.1:{m}/readyz")
        assert status == 503 and "potroom1" in body
        h.proxy.restore()
        await dp.wait_event("plc.comms_restored", timeout=20, pred=lambda e: e["plc"] == "potroom1", after=n)
        _, text = await aget(f"http://127.0.0.1:{m}/metrics")
        assert metric(text, "potline_plc_up", plc="potroom1") == 1.0
        assert metric(text, "potline_plc_comms_faults_total", plc="potroom1") >= 2
        assert await dp.stop() == 0
        ev = journal_events(journal, categories=["comms"])
        kinds = [e.kind for e in ev if e.source == "potroom1"]
        # first run: down from the start; second run: down at start, up, down, up
        assert kinds == ["comms_lost", "comms_lost", "comms_restored", "comms_lost", "comms_restored"]
    finally:
        if dp.returncode is None:
            await dp.kill()
        if rig is not None:
            await rig.stop()


async def test_ae_in_a_potroom_switched_to_local_is_journalled_in_control_mode(tmp_path) -> None:
    """control mode; the operator turns the potroom's selector to local (its PLC's own
    automation and AE kill take over): an AE on one of its cells is still detected and
    journalled with start, end and duration, and nothing is written to that room meanwhile."""
    rig = await start_rig(rig_scenario(speed=20.0, watchdog_s=20.0))
    dp = None
    try:
        cfg, _ = daemon_config(tmp_path, rig, mode="control")
        journal = tmp_path / "state" / "journal.db"
        dp = await DaemonProcess(cfg).start()
        await dp.wait_event("daemon.first_cycle", timeout=30)
        await _until(lambda: _remote(rig, "potroom:Potroom1"), 20, "potroom remote under control")
        await rig.inject(Fault(kind="local_switch", target="potroom"))
        await _until(lambda: not _remote(rig, "potroom:Potroom1"), 10, "potroom in local")
        t_local = rig.now()
        k = 2  # cell index; floor number 3 of the one room
        crit = float(rig.potline.truth()["critical_alumina_wt_pct"][k])
        rig.potline.force_alumina(np.array([k]), crit - 0.05)  # the rig's AE induction
        start = await dp.wait_event("event.ae_start", timeout=20, pred=lambda e: e.get("cell") == k + 1)
        assert "local control" in start["detail"]
        await dp.wait_event("event.ae_end", timeout=30, pred=lambda e: e.get("cell") == k + 1)
        t_end = rig.now()
        assert _remote(rig, "rectifier:Line1") and not _remote(rig, "potroom:Potroom1")
        assert await dp.stop() == 0

        ev = journal_events(journal)
        starts = [e for e in ev if e.kind == "ae_start" and e.cell == k + 1]
        ends = [e for e in ev if e.kind == "ae_end" and e.cell == k + 1]
        assert len(starts) == 1 and len(ends) == 1
        assert starts[0].mode == ends[0].mode == "control"
        assert starts[0].room == "Potroom1" and t_local <= starts[0].t_plant_s <= t_end
        d = ends[0].data
        assert d["end_s"] > d["start_s"] >= t_local - 5.0 and d["duration_s"] == d["end_s"] - d["start_s"] > 0.0
        # the controller commanded nothing there: no command written, none refused
        assert not [e for e in ev if e.kind == "command_write" and t_local <= e.t_plant_s <= t_end]
        assert rig.refusals == {} or not any("Potroom1" in key for key in rig.refusals)
        # the rig's truth: an AE on that cell, in a room under local control, killed by its PLC
        aes = [a for a in rig.report().aes if a["cell"] == k]
        assert aes and not aes[0]["room_remote"] and aes[0]["commands"] == 0
    finally:
        if dp is not None and dp.returncode is None:
            await dp.kill()
        await rig.stop()
