"""The journal wired into the daemon (issue 15): a real ``potline run`` process against a HIL
rig on loopback, its journal a real SQLite file.

* The journal file deleted (with its ``-wal`` and ``-shm``) under a daemon in control: the
  daemon leaves control within cycles, ``/readyz`` answers 503 saying control is disarmed,
  the PLCs fall back to local, the re-created file holds every entry committed before the
  deletion (same ids, same hashes) and a ``journal_lost`` entry; control comes back only on
  an operator's request (journalled as re-armed), and the keyed hash chain verifies with
  the key, also against the head the daemon logged (an anchor kept outside the file).
* ``journal.hmac_key_file`` readable by others is refused by the config check, naming the file.
* The mode file works where ``daemon.state_dir`` did not exist (the journal lives elsewhere).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from potline.daemon_config import DaemonConfigError, load_daemon_config
from tests.potline.daemon_support import (
    DaemonProcess,
    aget,
    daemon_config,
    journal_events,
    plc_remote,
    rig_scenario,
    start_rig,
    until,
    wait_journal,
    wait_status,
    write_mode_file,
)

pytestmark = [pytest.mark.hil, pytest.mark.timeout(420)]

ROOM, RECT = "potroom:Potroom1", "rectifier:Line1"


def _key_file(tmp_path: Path, mode: int = 0o600) -> Path:
    p = tmp_path / "keys" / "journal.key"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(secrets.token_hex(32) + "\n")
    os.chmod(p, mode)
    return p


def test_a_journal_key_others_may_read_is_refused_naming_the_file(tmp_path) -> None:
    key = _key_file(tmp_path, 0o644)
    cfg, _ = daemon_config(tmp_path, None, ports={"rectifier": 15020, "potroom": 15021},
                           journal={"hmac_key_file": str(key), "max_held": 500})  # fmt: skip
    with pytest.raises(DaemonConfigError) as err:
        load_daemon_config(cfg)
    [issue] = err.value.issues
    assert issue.key == "journal.hmac_key_file" and str(key) in issue.message and "others" in issue.message
    os.chmod(key, 0o600)
    loaded = load_daemon_config(cfg)
    assert loaded.journal_key_file == key and loaded.config.journal.max_held == 500


async def test_journal_deleted_under_a_daemon_in_control_disarms_it_and_loses_nothing(tmp_path) -> None:
    from potline.journal import Journal, load_key

    rig = await start_rig(rig_scenario(speed=20.0, watchdog_s=20.0, storm_every_s=120.0, storm_start_s=30.0))
    key = _key_file(tmp_path)
    journal = tmp_path / "audit" / "journal.db"  # not in state_dir, which does not exist yet
    state = tmp_path / "state"
    dp = None
    try:
        cfg, data = daemon_config(tmp_path, rig, mode="control", journal={"path": str(journal),
                                                                          "hmac_key_file": str(key)})  # fmt: skip
        mport = data["_ports"]["metrics"]
        readyz = f"http://127.0.0.1:{mport}/readyz"
        assert not state.exists()
        dp = await DaemonProcess(cfg).start()
        await dp.wait_event("mode.changed", pred=lambda e: e["mode"] == "control")
        await until(lambda: plc_remote(rig, ROOM) and plc_remote(rig, RECT), "PLCs in remote under control")
        mode_file = state / "mode"
        assert mode_file.read_text() == "control\n"  # the mode file made its own directory
        await wait_status(readyz, 200)
        before = await wait_journal(journal, lambda ev: len(ev) >= 12 and any(e.kind == "setpoint_write" for e in ev),
                                    "a dozen entries with setpoint writes")  # fmt: skip

        # ---- the file, its -wal and -shm deleted while the daemon commits into them
        n = len(dp.events)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{journal}{suffix}").unlink(missing_ok=True)
        left = await dp.wait_event("mode.changed", after=n, pred=lambda e: e["mode"] == "shadow")
        assert left["source"] == "daemon" and "journal" in left["reason"]
        status, body = await aget(readyz)
        assert status == 503 and "disarmed" in body and "journal file deleted" in body, body
        await until(lambda: not plc_remote(rig, ROOM) and not plc_remote(rig, RECT), "PLCs back in local")
        # nothing committed before the deletion is lost: same ids, same content, same hashes
        after = await wait_journal(journal, lambda ev: any(e.kind == "journal_lost" for e in ev), "journal_lost")
        by_id = {e.id: e for e in after}
        for e in before:
            got = by_id[e.id]
            assert (got.kind, got.ts_utc, got.detail, got.hash) == (e.kind, e.ts_utc, e.detail, e.hash)
        lost = next(e for e in after if e.kind == "journal_lost")
        assert lost.category == "alarm" and lost.id > before[-1].id
        # still disarmed: the loss keeps /readyz at 503 while every link is up
        status, body = await aget(readyz)
        assert status == 503 and "re-arm" in body

        # ---- an operator re-arms: control again, ready again
        n = len(dp.events)
        write_mode_file(mode_file, "control")
        back = await dp.wait_event("mode.changed", after=n, pred=lambda e: e["mode"] == "control")
        assert back["source"] == "mode_file" and back["rearmed"] is True
        await wait_status(readyz, 200)
        await until(lambda: plc_remote(rig, ROOM) and plc_remote(rig, RECT), "PLCs in remote after re-arming")
        assert await dp.stop() == 0
    finally:
        if dp is not None and dp.returncode is None:
            await dp.kill()
        await rig.stop()

    ev = journal_events(journal)
    assert [e.id for e in ev] == list(range(1, len(ev) + 1))
    assert ev[-1].kind == "daemon_stop"
    changes = [(e.data["from"], e.data["to"], e.source, bool(e.data.get("rearmed"))) for e in ev
               if e.kind == "mode_change"]  # fmt: skip
    assert changes == [("shadow", "control", "config", False), ("control", "shadow", "daemon", False),
                       ("shadow", "control", "mode_file", True)]  # fmt: skip
    # nothing written to a PLC from leaving control on the loss until the operator re-armed
    _to_control, left_id, rearm_id = (e.id for e in ev if e.kind == "mode_change")
    assert next(e.id for e in ev if e.kind == "journal_lost") < left_id
    assert not [e for e in ev if e.kind in ("setpoint_write", "command_write") and left_id < e.id < rearm_id]
    # the keyed chain verifies with the key, and ends at the head the daemon logged at its stop
    with Journal(journal, readonly=True) as j:
        rep = j.verify(load_key(key))
        assert rep.ok and rep.keyed, rep.as_dict()
        heads = dp.find("journal.head")
        assert heads and (heads[-1]["head_id"], heads[-1]["head_hash"]) == (rep.last_id, rep.head_hash)
