"""The daemon as a real process against a HIL rig on loopback.

Mode switching (operator OPC UA call, mode file, signals) with every switch journalled,
the PLCs going remote only in ``control``, SIGTERM handing control back to local before
the process exits, ``kill -9`` at a (seeded) random moment and a restart with the
journal intact, re-arming (after ``kill -9`` the daemon comes back in ``observe`` until
an operator asks for ``control``; a config asking for ``control`` with the PLCs down
starts in ``shadow`` and enters ``control`` once they are up), a PLC that is down at
start and one that drops and comes back, an AE in a potroom an operator switched to
local still journalled in ``control``.

Every wait is on a condition (a log line, a journal entry, a metric, ``/readyz``, the
rig's PLC memory or plant time) with a generous deadline, so the tests hold on a busy
machine; "nothing happens for a while" is judged over plant time, not wall time.
"""

from __future__ import annotations

import itertools
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
    plant_seconds,
    plc_remote,
    read_metric,
    read_mirror,
    rig_scenario,
    start_rig,
    until,
    wait_cycles,
    wait_journal,
    wait_status,
    write_mode_file,
)

pytestmark = [pytest.mark.hil, pytest.mark.timeout(420)]

ROOM, RECT = "potroom:Potroom1", "rectifier:Line1"
#: the seed of every random choice in this file
SEED = 20_241_204


def _security(tmp_path) -> dict:
    # user names only over SignAndEncrypt; anonymous (read-only) over NoSecurity
    return {"state_dir": str(tmp_path / "opcua"), "sign": False, "sign_and_encrypt": True, "trust_any_client_certificate": True,
            "allow_no_security": True, "anonymous": "read_only",
            "users": {"op": {"role": "operator", "password_hash": hash_password("op-pass")},
                      "view": {"role": "viewer", "password_hash": hash_password("view-pass")}}}  # fmt: skip


async def test_modes_switch_at_runtime_and_sigterm_hands_back_to_local(tmp_path) -> None:
    rig = await start_rig(rig_scenario(speed=20.0, watchdog_s=20.0))
    sock, addr = listener(tmp_path)  # systemd's NOTIFY_SOCKET, watchdog 4 s
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
        # the mode file is applied on SIGUSR1 only here (its poll is slower than this test)
        cfg, data = daemon_config(tmp_path, rig, mode="observe", opcua={"security": _security(tmp_path)},
                                  daemon={"mode_file_poll_s": 60.0})  # fmt: skip
        ports = data["_ports"]
        certs = tmp_path / "client"  # the OPC UA client's certificate
        journal = tmp_path / "state" / "journal.db"
        mode_file = tmp_path / "state" / "mode"
        dp = await DaemonProcess(cfg, env={"NOTIFY_SOCKET": addr, "WATCHDOG_USEC": "4000000"}).start()
        first = await dp.wait_ready()
        assert 0.0 < first["startup_s"] < 60.0  # its speed is a benchmark's business (PERFORMANCE.md)
        await wait_status(f"http://127.0.0.1:{ports['metrics']}/readyz", 200)
        assert mode_file.read_text() == "observe\n"  # the file shows the running mode
        # observe: nothing written, the PLCs stay in local (3 of their watchdog periods)
        await plant_seconds(rig, 60.0)
        assert not plc_remote(rig, ROOM) and not plc_remote(rig, RECT)

        # an anonymous or viewer client may not switch modes; an operator may
        with pytest.raises(ua.UaStatusCodeError) as err:
            await call_set_mode(ports["opcua"], "shadow")
        assert err.value.code == ua.StatusCodes.BadUserAccessDenied
        with pytest.raises(ua.UaStatusCodeError) as err:
            await call_set_mode(ports["opcua"], "control", "view", "view-pass", certs=certs)
        assert err.value.code == ua.StatusCodes.BadUserAccessDenied
        assert await call_set_mode(ports["opcua"], "shadow", "op", "op-pass", certs=certs) == "observe"
        assert (await read_mirror(ports["opcua"], "Twin.Mode"))[0] == "shadow"
        await dp.wait_event("shadow.would_write")
        assert not plc_remote(rig, ROOM)  # shadow sends nothing, not even the heartbeat
        await until(lambda: mode_file.read_text() == "shadow\n", "the mode file to show shadow")

        # the mode file (written by the service user) + SIGUSR1 -> control: heartbeat runs, PLCs go remote
        n = len(dp.events)
        write_mode_file(mode_file, "control")
        dp.signal(signal.SIGUSR1)
        await dp.wait_event("mode.changed", pred=lambda e: e["mode"] == "control", after=n)
        await until(lambda: plc_remote(rig, ROOM) and plc_remote(rig, RECT), "PLCs in remote under control")
        assert await read_metric(ports["metrics"], "potline_mode", mode="control") == 1.0

        # SIGUSR2: hands off (observe) at once; the PLCs fall back to local on their watchdog
        n = len(dp.events)
        dp.signal(signal.SIGUSR2)
        await dp.wait_event("mode.changed", pred=lambda e: e["mode"] == "observe", after=n)
        await until(lambda: not plc_remote(rig, ROOM), "potroom back in local")
        # the mode file never disagrees with the running mode: it says observe now, and
        # asking for control again (file + SIGUSR1) is acted upon
        assert mode_file.read_text() == "observe\n"
        n = len(dp.events)
        write_mode_file(mode_file, "control")
        dp.signal(signal.SIGUSR1)
        await dp.wait_event("mode.changed", pred=lambda e: e["mode"] == "control", after=n)
        await until(lambda: plc_remote(rig, ROOM), "potroom remote again")

        # SIGTERM: stop commanding, wait until the PLCs report local, then exit 0
        dp.signal(signal.SIGTERM)
        rc = await dp.wait()
        assert rc == 0, dp.tail()
        assert not plc_remote(rig, ROOM) and not plc_remote(rig, RECT)
        done = dp.find("daemon.handback_done")
        assert done, dp.tail()
        stopped = dp.find("daemon.stopped")[0]
        assert done[0]["_mono"] <= stopped["_mono"]

        ev = journal_events(journal)
        changes = [(e.data["from"], e.data["to"], e.source, e.user) for e in ev if e.kind == "mode_change"]
        assert changes == [
            ("observe", "shadow", "opcua", "op"),
            ("shadow", "control", "SIGUSR1", changes[1][3]),
            ("control", "observe", "SIGUSR2", None),
            ("observe", "control", "SIGUSR1", changes[3][3]),
        ]
        assert changes[1][3] is not None  # the mode file's owner
        refused = [e for e in ev if e.kind == "mode_refused"]
        assert refused == []  # access-denied calls never reach the daemon's handler
        kinds = [e.kind for e in ev]
        assert kinds[0] == "daemon_start" and kinds[-1] == "daemon_stop"
        hb = [e for e in ev if e.kind == "handback" and e.data.get("ok") is not None]
        assert hb and hb[-1].data["ok"] is True
        assert [e.id for e in ev] == list(range(1, len(ev) + 1))

        # systemd: READY=1 once, after the first cycle; WATCHDOG=1 every ~2 s from the loop; STOPPING=1
        texts = [m for _, m in notes]
        ready = [i for i, m in enumerate(texts) if "READY=1" in m]
        assert len(ready) == 1 and f"MAINPID={dp.pid}" in texts[ready[0]]
        assert notes[ready[0]][0] >= first["_mono"] - 0.5
        pets = [t for t, m in notes if m == "WATCHDOG=1"]
        gaps = [b - a for a, b in itertools.pairwise(pets)]
        # never later than WatchdogSec (4 s), never a flood (about half of it; receipt jitter allowed)
        assert len(pets) >= 3 and all(1.0 <= g <= 4.0 for g in gaps), gaps
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
    rng = random.Random(SEED)
    rig = await start_rig(rig_scenario(speed=40.0, storm_every_s=120.0, storm_start_s=30.0))
    try:
        cfg, _data = daemon_config(tmp_path, rig, mode="control")
        journal = tmp_path / "state" / "journal.db"
        dp = await DaemonProcess(cfg).start()
        await dp.wait_event("daemon.first_cycle")
        # let it journal (AEs, setpoint and beam writes) ...
        seen = await wait_journal(journal, lambda ev: any(e.kind == "ae_start" for e in ev) and len(ev) > 10,
                                  "an AE and more than 10 entries")  # fmt: skip
        # ... then SIGKILL at a random moment: after a (seeded) random number of further commits
        more = rng.randint(1, 30)
        await wait_journal(journal, lambda ev: len(ev) >= len(seen) + more, f"{more} more entries")
        assert await dp.kill() == -signal.SIGKILL
        after_kill = journal_events(journal)
        ids = [e.id for e in after_kill]
        assert ids == list(range(1, len(ids) + 1)), "journal ids must have no gaps"
        by_id = {e.id: e for e in after_kill}
        for e in seen:  # every entry committed before the kill is still there, unchanged
            assert by_id[e.id].kind == e.kind and by_id[e.id].ts_utc == e.ts_utc and by_id[e.id].detail == e.detail
        assert len(after_kill) >= len(seen) + more
        assert any(e.kind == "ae_start" for e in after_kill), "the storm's AEs are journalled"
        assert not any(e.kind == "daemon_stop" for e in after_kill)
        # its log: one JSON object per line; AE events carry plant, line, room and cell
        assert len(dp.events) == len(dp.raw), [x for x in dp.raw if not x.startswith("{")][:3]
        ae_logs = dp.find("event.ae_start")
        assert ae_logs and all({"plant", "line", "room", "cell"} <= set(e) for e in ae_logs)

        # restart: same journal, clean start (in observe: see the re-arming test), the crash
        # is recorded, numbering continues
        dp2 = await DaemonProcess(cfg).start()
        first = await dp2.wait_event("daemon.first_cycle")
        assert first["mode"] == "observe"
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


async def test_restart_after_kill_9_is_in_observe_until_an_operator_re_arms(tmp_path) -> None:
    """Issue 15 ("re-arming"): a daemon that ran in control and was killed comes back in
    observe and stays there (the PLCs stay in local) until an operator asks for control;
    the mode file shows the running mode, a refused request is written over with it, and
    writing ``control`` again is acted upon."""
    rig = await start_rig(rig_scenario(speed=20.0, watchdog_s=20.0))
    dp = None
    try:
        cfg, data = daemon_config(tmp_path, rig, mode="control")
        mport = data["_ports"]["metrics"]
        journal = tmp_path / "state" / "journal.db"
        mode_file = tmp_path / "state" / "mode"
        dp = await DaemonProcess(cfg).start()
        went = await dp.wait_event("mode.changed", pred=lambda e: e["mode"] == "control")
        assert went["source"] == "config"  # the configured start mode, once the interlock was clear
        await until(lambda: plc_remote(rig, ROOM) and plc_remote(rig, RECT), "PLCs in remote under control")
        assert mode_file.read_text() == "control\n"
        assert await dp.kill() == -signal.SIGKILL
        # the PLCs fall back to local on their own watchdogs
        await until(lambda: not plc_remote(rig, ROOM) and not plc_remote(rig, RECT), "PLCs back in local")

        dp = await DaemonProcess(cfg).start()
        first = await dp.wait_ready()
        assert first["mode"] == "observe"
        body = await wait_status(f"http://127.0.0.1:{mport}/readyz", 200)  # every link up: ready, yet observe
        assert "re-arming" in body
        assert mode_file.read_text() == "observe\n"  # the file no longer says control
        await plant_seconds(rig, 60.0)  # 3 PLC watchdog periods with every link up: nothing goes remote
        assert not plc_remote(rig, ROOM) and not plc_remote(rig, RECT)
        assert await read_metric(mport, "potline_mode", mode="observe") == 1.0

        # an operator asks for control while a PLC link is down: refused, and the file says observe again
        h = rig.plc(ROOM)
        n = len(dp.events)
        h.proxy.drop("refuse")
        await dp.wait_event("plc.comms_lost", after=n, pred=lambda e: e["plc"] == "potroom1")
        write_mode_file(mode_file, "control")
        await dp.wait_event("mode.refused", after=n, pred=lambda e: "PLC link(s) down" in e["reason"])
        assert mode_file.read_text() == "observe\n"
        h.proxy.restore()
        await dp.wait_event("plc.comms_restored", after=n, pred=lambda e: e["plc"] == "potroom1")
        # writing the same word again is a new request: re-armed, control
        n = len(dp.events)
        write_mode_file(mode_file, "control")
        ch = await dp.wait_event("mode.changed", after=n, pred=lambda e: e["mode"] == "control")
        assert ch["source"] == "mode_file" and ch["rearmed"] is True
        await until(lambda: plc_remote(rig, ROOM) and plc_remote(rig, RECT), "PLCs in remote after re-arming")
        assert (await aget(f"http://127.0.0.1:{mport}/readyz"))[1].count("re-arming") == 0
        assert await dp.stop() == 0
    finally:
        if dp is not None and dp.returncode is None:
            await dp.kill()
        await rig.stop()

    ev = journal_events(journal)
    k = next(i for i, e in enumerate(ev) if e.kind == "unclean_shutdown")
    run1, run2 = ev[:k], ev[k:]
    assert [(e.data["to"], e.source) for e in run1 if e.kind == "mode_change"] == [("control", "config")]
    assert [e.kind for e in run2[:3]] == ["unclean_shutdown", "daemon_start", "mode_refused"]
    assert run2[1].mode == "observe"
    start = run2[2]
    assert start.data["start"] is True and start.data["requested"] == "control"
    assert "without a clean stop" in start.detail and start.mode == "observe"
    changes = [(e.data["from"], e.data["to"], e.source, e.data.get("rearmed")) for e in run2 if e.kind == "mode_change"]
    assert changes == [("observe", "control", "mode_file", True)]
    refused = [e for e in run2 if e.kind == "mode_refused" and e.source == "mode_file"]
    assert len(refused) == 1 and "PLC link(s) down: potroom1" in refused[0].detail
    # nothing was written to a PLC from the restart until the re-arming
    t_rearm = next(e.t_plant_s for e in run2 if e.kind == "mode_change")
    assert not [e for e in run2 if e.kind in ("setpoint_write", "command_write") and e.t_plant_s < t_rearm]


async def test_config_control_with_plcs_down_starts_in_shadow_and_enters_control_once_they_are_up(tmp_path) -> None:
    """The control interlock applies at start: ``mode = "control"`` with both PLC links
    down starts in shadow (journalled, with the reason), and enters control (journalled,
    from the config) only once every link is up, because the previous stop was clean."""
    rig = await start_rig(rig_scenario(speed=20.0, watchdog_s=20.0))
    dp = None
    try:
        for dev in (ROOM, RECT):
            rig.plc(dev).proxy.drop("refuse")
        cfg, data = daemon_config(tmp_path, rig, mode="control")
        mport = data["_ports"]["metrics"]
        journal = tmp_path / "state" / "journal.db"
        dp = await DaemonProcess(cfg).start()
        first = await dp.wait_event("daemon.first_cycle")
        assert first["mode"] == "shadow" and first["plc_up"] == {"rectifier1": False, "potroom1": False}
        await dp.wait_event("mode.pending", pred=lambda e: e["reason"] == "PLC link(s) down: potroom1, rectifier1")
        assert await read_metric(mport, "potline_mode", mode="control") == 0.0
        assert await read_metric(mport, "potline_mode", mode="shadow") == 1.0
        status, body = await aget(f"http://127.0.0.1:{mport}/readyz")
        assert status == 503 and "control pending" in body
        assert (tmp_path / "state" / "mode").read_text() == "shadow\n"
        # one link up: still held, the new reason journalled
        rig.plc(RECT).proxy.restore()
        await dp.wait_event("mode.pending", pred=lambda e: e["reason"] == "PLC link(s) down: potroom1")
        assert not plc_remote(rig, RECT)
        # every link up: control
        rig.plc(ROOM).proxy.restore()
        went = await dp.wait_event("mode.changed", pred=lambda e: e["mode"] == "control")
        assert went["source"] == "config" and went["previous"] == "shadow"
        await until(lambda: plc_remote(rig, ROOM) and plc_remote(rig, RECT), "PLCs in remote under control")
        assert await dp.stop() == 0
    finally:
        if dp is not None and dp.returncode is None:
            await dp.kill()
        await rig.stop()

    ev = journal_events(journal)
    assert ev[0].kind == "daemon_start" and ev[0].mode == "shadow"
    modes = [(e.kind, e.source, e.data.get("reason"), e.data.get("pending")) for e in ev if e.category == "mode"]
    assert modes == [
        ("mode_refused", "config", "PLC link(s) down: potroom1, rectifier1", True),
        ("mode_refused", "config", "PLC link(s) down: potroom1", True),
        ("mode_change", "config", "the configured start mode; control interlock clear", None),
    ]
    t_control = next(e.t_plant_s for e in ev if e.kind == "mode_change")
    assert not [e for e in ev if e.kind in ("setpoint_write", "command_write") and e.t_plant_s < t_control]


async def test_plc_down_at_start_daemon_waits_then_connects_and_survives_a_drop(tmp_path) -> None:
    from plc_bridge.ports import free_port

    ports = {"rectifier": free_port(), "potroom": free_port()}
    cfg0, data = daemon_config(tmp_path, None, mode="observe", ports=ports)
    journal = tmp_path / "state" / "journal.db"
    dp = await DaemonProcess(cfg0).start()
    rig = None
    try:
        # nobody listens: the daemon starts anyway, runs cycles, and says it is not ready
        first = await dp.wait_event("daemon.first_cycle")
        assert first["plc_up"] == {"rectifier1": False, "potroom1": False}
        m = data["_ports"]["metrics"]
        status, body = await aget(f"http://127.0.0.1:{m}/readyz")
        assert status == 503 and "PLC links down" in body
        assert (await aget(f"http://127.0.0.1:{m}/healthz"))[0] == 200
        await wait_cycles(m, 5)  # it keeps cycling
        assert dp.returncode is None
        await dp.stop()

        # the rig comes up on the configured... ports are the rig's own: restart the daemon at them
        rig = await start_rig(rig_scenario(speed=20.0))
        cfg, data = daemon_config(tmp_path, rig, mode="observe")
        m = data["_ports"]["metrics"]
        h = rig.plc(ROOM)
        h.proxy.drop("refuse")  # the potroom PLC is unreachable when the daemon starts
        dp = await DaemonProcess(cfg).start()
        first = await dp.wait_event("daemon.first_cycle")
        assert first["plc_up"]["potroom1"] is False
        await wait_cycles(m, 3)
        h.proxy.restore()
        await dp.wait_event("plc.comms_restored", pred=lambda e: e["plc"] == "potroom1")
        await wait_status(f"http://127.0.0.1:{m}/readyz", 200)
        # it drops again mid-run and comes back: journalled both ways, the process never exits
        n = len(dp.events)
        h.proxy.drop("blackhole")
        await dp.wait_event("plc.comms_lost", pred=lambda e: e["plc"] == "potroom1", after=n)
        status, body = await aget(f"http://127.0.0.1:{m}/readyz")
        assert status == 503 and "potroom1" in body
        h.proxy.restore()
        await dp.wait_event("plc.comms_restored", pred=lambda e: e["plc"] == "potroom1", after=n)
        await until(lambda: read_metric(m, "potline_plc_up", plc="potroom1"), "potroom1 up in the metrics")
        assert (await read_metric(m, "potline_plc_comms_faults_total", plc="potroom1") or 0) >= 2
        assert await dp.stop() == 0
        ev = journal_events(journal)
        starts = [e.id for e in ev if e.kind == "daemon_start"]
        assert len(starts) == 2
        runs = [[e.kind for e in ev if e.category == "comms" and e.source == "potroom1" and lo <= e.id < hi]
                for lo, hi in ((starts[0], starts[1]), (starts[1], ev[-1].id + 1))]  # fmt: skip
        # first run: down from the start; second run: down at start, up, down, up (a busy machine may
        # add a lost/restored pair when a scan times out: they alternate, and it ends up)
        assert runs[0] == ["comms_lost"]
        second = runs[1]
        assert second[0] == "comms_lost" and second[-1] == "comms_restored" and len(second) >= 4
        assert all(a != b for a, b in itertools.pairwise(second)), second
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
        await dp.wait_event("daemon.first_cycle")
        await until(lambda: plc_remote(rig, ROOM), "potroom remote under control")
        await rig.inject(Fault(kind="local_switch", target="potroom"))
        await until(lambda: not plc_remote(rig, ROOM), "potroom in local")
        t_local = rig.now()
        k = 2  # cell index; floor number 3 of the one room
        crit = float(rig.potline.truth()["critical_alumina_wt_pct"][k])
        rig.potline.force_alumina(np.array([k]), crit - 0.05)  # the rig's AE induction
        start = await dp.wait_event("event.ae_start", pred=lambda e: e.get("cell") == k + 1)
        assert "local control" in start["detail"]
        await dp.wait_event("event.ae_end", pred=lambda e: e.get("cell") == k + 1)
        t_end = rig.now()
        assert plc_remote(rig, RECT) and not plc_remote(rig, ROOM)
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
