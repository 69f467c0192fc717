"""A disarmed control holds across a clean restart (issue 15, "re-arming"): once the
journal was lost under a running daemon (or a crash disarmed it), control comes back
only on an operator's explicit, journalled request, even after a clean stop and start;
the mode file always says the running mode.

* ``ModeMachine`` and ``carried_disarm`` on a real journal file;
* a real ``potline run`` against a HIL rig on loopback: in control, its journal deleted,
  stopped cleanly (SIGTERM), started again with ``daemon.mode = "control"`` and every link
  up: it stays out of control (``/readyz`` 503, the mode file says ``shadow``) until an
  operator writes ``control``; after that a clean restart enters control as configured.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from potline.journal import Journal
from potline.mode_switch import carried_disarm
from potline.modes import Interlock, ModeMachine, PreviousRun
from tests.potline.daemon_support import (
    DaemonProcess,
    aget,
    daemon_config,
    journal_events,
    plant_seconds,
    plc_remote,
    rig_scenario,
    start_rig,
    until,
    wait_status,
    write_mode_file,
)

ROOM, RECT = "potroom:Potroom1", "rectifier:Line1"
CLEAR = Interlock()


def _journal(tmp_path: Path, *entries: tuple[str, dict]) -> Path:
    p = tmp_path / "journal.db"
    with Journal(p) as j:
        for kind, data in entries:
            j.append(kind=kind, source="test", detail=f"a {kind}", data=data)
        j.commit()
    return p


def _carried(p: Path) -> tuple[str, bool]:
    with Journal(p, readonly=True) as j:
        return carried_disarm(j)


def test_a_lost_journal_not_re_armed_since_disarms_the_next_clean_start(tmp_path) -> None:
    p = _journal(tmp_path, ("daemon_start", {}), ("mode_change", {"from": "shadow", "to": "control"}),
                 ("journal_lost", {}), ("mode_change", {"from": "control", "to": "shadow"}),
                 ("handback", {}), ("daemon_stop", {}))  # fmt: skip
    why, not_ready = _carried(p)
    assert "journal file lost" in why and "journal id 3" in why and not_ready


def test_an_operators_re_arming_after_the_loss_clears_it(tmp_path) -> None:
    p = _journal(tmp_path, ("journal_lost", {}), ("mode_change", {"from": "shadow", "to": "control", "rearmed": True}),
                 ("daemon_stop", {}))  # fmt: skip
    assert _carried(p) == ("", False)


def test_a_crash_restart_stopped_before_re_arming_stays_disarmed(tmp_path) -> None:
    p = _journal(tmp_path, ("unclean_shutdown", {}), ("daemon_start", {}), ("daemon_stop", {}))
    why, not_ready = _carried(p)
    assert "unclean stop" in why and not not_ready
    assert _carried(_journal(tmp_path / "fresh")) == ("", False)


def test_a_disarming_in_a_rotated_archive_still_holds(tmp_path) -> None:
    """The journal rotated (``journal.rotate_mb``) after the loss: the archive the new file's
    ``journal_rotated`` entry names is looked at; a re-arming in the new file clears it."""
    p = tmp_path / "journal.db"
    with Journal(p) as j:
        j.append(kind="daemon_start", source="test", detail="start")
        j.append(kind="journal_lost", source="journal", detail="journal file deleted")
        j.commit()
        archive = j.rotate()
        j.append(kind="journal_rotated", source="daemon", detail=f"entries up to id {j.last_id} are in {archive.name}",
                 data={"archive": archive.name, "last_id": j.last_id})  # fmt: skip
        j.append(kind="daemon_stop", source="daemon", detail="clean stop")
        j.commit()
    why, not_ready = _carried(p)
    assert "journal file lost" in why and archive.name in why and not_ready
    with Journal(p) as j:
        j.append(kind="mode_change", source="mode_file", detail="re-armed", data={"to": "control", "rearmed": True})
        j.commit()
    assert _carried(p) == ("", False)


def test_a_carried_disarm_starts_out_of_control_and_only_an_operator_re_arms() -> None:
    m = ModeMachine("control")
    d = m.start(PreviousRun(clean=True, disarmed="disarmed by the journal file lost"), 0.0)
    assert m.mode == "shadow" and m.pending is None and m.disarmed
    (rec,) = d.records
    assert rec.kind == "mode_refused" and rec.data["start"] is True and "re-arming" in rec.detail
    assert m.tick(CLEAR, 1.0) is None  # no start request waits for the interlock: it is not carried out
    refused = m.request("control", "daemon", CLEAR, 2.0)
    assert not refused.accepted and m.mode == "shadow"
    ok = m.request("control", "mode_file", CLEAR, 3.0, user="op")
    assert ok.accepted and m.mode == "control" and ok.records[-1].data["rearmed"] is True
    # observe or shadow as configured start as asked, still disarmed
    m2 = ModeMachine("observe")
    m2.start(PreviousRun(clean=True, disarmed="x"), 0.0)
    assert m2.mode == "observe" and m2.disarmed == "x"


@pytest.mark.hil
@pytest.mark.timeout(480)
async def test_after_a_journal_loss_a_clean_restart_still_needs_an_operator(tmp_path) -> None:
    rig = await start_rig(rig_scenario(speed=20.0, watchdog_s=20.0))
    dp = None
    try:
        cfg, data = daemon_config(tmp_path, rig, mode="control")
        readyz = f"http://127.0.0.1:{data['_ports']['metrics']}/readyz"
        state = tmp_path / "state"
        journal, mode_file = state / "journal.db", state / "mode"
        dp = await DaemonProcess(cfg).start()
        await dp.wait_event("mode.changed", pred=lambda e: e["mode"] == "control")
        await until(lambda: plc_remote(rig, ROOM) and plc_remote(rig, RECT), "PLCs in remote under control")
        n = len(dp.events)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{journal}{suffix}").unlink(missing_ok=True)
        await dp.wait_event("mode.changed", after=n, pred=lambda e: e["mode"] == "shadow")
        assert await dp.stop() == 0  # a clean stop, without anyone re-arming

        # ---- a clean restart, control configured, every link up: not in control
        dp = await DaemonProcess(cfg).start()
        first = await dp.wait_ready()
        assert first["mode"] == "shadow"

        async def only_disarmed() -> bool:
            """/readyz 503 for one reason only: every link up, the loop running, control disarmed."""
            code, body = await aget(readyz)
            reasons = json.loads(body)["reasons"]
            return code == 503 and len(reasons) == 1 and "re-arm" in reasons[0] and "journal file lost" in reasons[0]

        await until(only_disarmed, "/readyz 503 for the disarming alone (every link up)")
        assert mode_file.read_text() == "shadow\n"  # the file says the running mode, not the config's
        await plant_seconds(rig, 60.0)  # 3 PLC watchdog periods with the interlock clear: nothing goes remote
        assert not plc_remote(rig, ROOM) and not plc_remote(rig, RECT)
        assert not dp.find("mode.changed")
        assert await only_disarmed()

        # ---- an operator re-arms: control; then a clean restart enters control as configured
        n = len(dp.events)
        write_mode_file(mode_file, "control")
        ch = await dp.wait_event("mode.changed", after=n, pred=lambda e: e["mode"] == "control")
        assert ch["source"] == "mode_file" and ch["rearmed"] is True
        await wait_status(readyz, 200)
        assert await dp.stop() == 0
        dp = await DaemonProcess(cfg).start()
        went = await dp.wait_event("mode.changed", pred=lambda e: e["mode"] == "control")
        assert went["source"] == "config"
        assert await dp.stop() == 0
    finally:
        if dp is not None and dp.returncode is None:
            await dp.kill()
        await rig.stop()

    ev = journal_events(journal)
    starts = [i for i, e in enumerate(ev) if e.kind == "daemon_start"]
    run2 = ev[starts[-2] :]
    assert run2[0].mode == "shadow"
    refusal = run2[1]
    assert refusal.kind == "mode_refused" and refusal.data["start"] is True and "journal file lost" in refusal.detail
    rearm = next(e for e in run2 if e.kind == "mode_change")
    assert rearm.data.get("rearmed") is True and rearm.source == "mode_file"
    # nothing was written to a PLC in the second run before the operator re-armed
    assert not [e for e in run2 if e.kind in ("setpoint_write", "command_write") and e.id < rearm.id]
