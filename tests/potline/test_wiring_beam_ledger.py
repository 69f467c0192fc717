"""The beam ledger wired into the daemon (issue 15, item 2): a real ``potline run`` process
in control against a HIL rig on loopback is killed (``kill -9``) while a quench owes a
beam restore; the restarted daemon takes the owed restore from ``<state_dir>/beam_ledger.json``,
waits (in observe, disarmed) for an operator to re-arm control, and then restores the
beam: the cell's beam ends where it was before the AE, as the rig's plant measures it.
(Killed while the lowering is still in flight, the move is in doubt and the controller
judges it from the resistance: ``tests/potctl/test_beam_intent.py``.)
"""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest

from tests.potline.daemon_support import (
    DaemonProcess,
    daemon_config,
    journal_events,
    plc_remote,
    rig_scenario,
    start_rig,
    until,
    wait_journal,
    write_mode_file,
)

pytestmark = [pytest.mark.hil, pytest.mark.timeout(420)]

ROOM = "potroom:Potroom1"
K = 2  # cell index: floor number 3
#: how close the beam must come back to where it was before the AE [mm] (issue 15: +-2 mm)
TOL_MM = 2.0


async def test_a_restore_owed_at_kill_9_is_made_after_the_restart(tmp_path) -> None:
    # a long PLC watchdog (120 wall s at 10x): the potroom stays in remote across the restart,
    # so what moves the beam afterwards is the restarted daemon alone
    rig = await start_rig(rig_scenario(speed=10.0, watchdog_s=1200.0))
    dp = None
    try:
        cfg, _ = daemon_config(tmp_path, rig, mode="control")
        state = tmp_path / "state"
        journal = state / "journal.db"
        ledger = state / "beam_ledger.json"

        def beam() -> float:
            return float(rig.potline.measurements()["beam_ack_mm"][K])

        dp = await DaemonProcess(cfg).start()
        await dp.wait_event("mode.changed", pred=lambda e: e["mode"] == "control")
        await until(lambda: plc_remote(rig, ROOM), "the potroom in remote under control")
        before = beam()
        crit = float(rig.potline.truth()["critical_alumina_wt_pct"][K])
        rig.potline.force_alumina(np.array([K]), crit - 0.05)

        def owed() -> bool:
            """The ledger file owes cell K a restore, its lowering acknowledged by the PLC."""
            try:
                cells = json.loads(ledger.read_text())["intent"]["cells"]
            except (OSError, ValueError, KeyError):
                return False
            return any(c["cell"] == K and "quench" in c and c["inflight_mm"] == 0.0 and c["ack_mm"] <= -10.0
                       for c in cells)  # fmt: skip

        # the quench lowers the beam; the restore it owes is on disk (the move was, before it reached the PLC)
        await until(owed, "the owed restore in the ledger, the lowering acknowledged")
        lowered = beam()
        assert lowered <= before - 10.0
        assert await dp.kill() == -signal.SIGKILL
        assert owed()  # the killed process left the owed restore on disk

        dp = await DaemonProcess(cfg).start()
        first = await dp.wait_event("daemon.first_cycle")
        assert first["mode"] == "observe"  # disarmed after the kill
        await wait_journal(journal, lambda ev: any(e.kind == "beam_intent_restored" for e in ev),
                           "the owed restore taken from the ledger")  # fmt: skip
        assert abs(beam() - lowered) < 0.5  # nothing moved it while disarmed
        write_mode_file(state / "mode", "control")
        await dp.wait_event("mode.changed", pred=lambda e: e["mode"] == "control" and e.get("rearmed"))
        await until(lambda: abs(beam() - before) <= TOL_MM, f"the beam back within {TOL_MM} mm of its pre-AE place",
                    timeout=240.0)  # fmt: skip
        assert await dp.stop() == 0
    finally:
        if dp is not None and dp.returncode is None:
            await dp.kill()
        await rig.stop()

    ev = journal_events(journal)
    k = next(i for i, e in enumerate(ev) if e.kind == "unclean_shutdown")
    run2 = ev[k:]
    assert not [e for e in run2 if e.kind == "beam_restore_handed_over" and e.cell == K + 1]
    ups = [e for e in run2 if e.kind == "command_write" and e.cell == K + 1 and (e.value or 0.0) > 0.0]
    assert ups, "the restore was written by the restarted daemon"
