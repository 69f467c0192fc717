"""Shadow mode as a commissioning tool, on a HIL rig (issue 14 item 8).

``potline run`` in shadow against a rig whose PLCs stay in local: the potroom PLC's own
automation feeds, moves beams and kills AEs, the rectifier PLC holds 120 kA while the
controller would aim at 116 kA. Every period (600 plant s) the daemon journals one
``shadow_summary`` comparing what the controller would have done with what the PLCs did,
and one ``shadow_disagreement`` per disagreeing cell, AE or line -- not one row a cycle.

What the summaries say about the PLCs is checked against the rig's own truth, sampled by
the test from the twin behind the PLCs (not from the daemon): the shots and beam
movement the cells really got in each period, the AEs that really happened, the
setpoint the rectifier PLC really holds.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib

import numpy as np
import pytest

from tests.potline.daemon_support import (
    DaemonProcess,
    daemon_config,
    journal_events,
    plant_seconds,
    rig_scenario,
    start_rig,
    wait_journal,
)

RECT = "rectifier:Line1"


class Truth:
    """The twin's cumulative feeds and beam movement per cell, sampled against plant time."""

    def __init__(self, rig: object) -> None:
        self.rig = rig
        self.t: list[float] = []
        self.feed: list[np.ndarray] = []
        self.beam: list[np.ndarray] = []

    async def run(self) -> None:
        while True:
            m = self.rig.potline.measurements()  # type: ignore[attr-defined]
            self.t.append(float(m["t_s"]))
            self.feed.append(np.asarray(m["feeder_ack"], dtype=float))
            self.beam.append(np.asarray(m["beam_ack_mm"], dtype=float))
            await asyncio.sleep(0.02)  # sampling cadence, not a wait for a condition

    def at(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        i = max(bisect.bisect_right(self.t, t) - 1, 0)
        return self.feed[i], self.beam[i]


@pytest.mark.hil
@pytest.mark.timeout(480)
async def test_shadow_summarises_the_plcs_own_automation_per_period(tmp_path) -> None:
    rig = await start_rig(rig_scenario(speed=20.0, watchdog_s=20.0, storm_every_s=90.0, storm_start_s=30.0))
    truth = Truth(rig)
    sampler = asyncio.get_running_loop().create_task(truth.run())
    dp = None
    try:
        cfg, _data = daemon_config(tmp_path, rig, mode="shadow", control={"amperage": {"target_ka": 116.0}})
        journal = tmp_path / "state" / "journal.db"
        dp = await DaemonProcess(cfg).start()
        await dp.wait_event("daemon.first_cycle")
        await wait_journal(journal, lambda ev: sum(e.kind == "shadow_summary" for e in ev) >= 2,
                           "two shadow summaries (600 plant s each)", timeout=360.0)  # fmt: skip
        rect_sp = float(rig.plc(RECT).logic.active_ka)
        await plant_seconds(rig, 20.0)  # a third period under way at the stop
        assert await dp.stop() == 0
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        if dp is not None and dp.returncode is None:
            await dp.kill()
        await rig.stop()

    ev = journal_events(journal)
    summaries = [e for e in ev if e.kind == "shadow_summary"]
    disagreements = [e for e in ev if e.kind == "shadow_disagreement"]
    cycles = sum(e.data["cycles"] for e in summaries)
    full = [e for e in summaries if e.data["period_s"][1] - e.data["period_s"][0] >= 600.0]
    # a summary per period, not a row per cycle; the periods follow one another; the one under
    # way at the stop is journalled too (shorter)
    assert len(full) >= 2 and sum(e.data["cycles"] for e in full) >= 100 * len(full)
    assert summaries[1].data["period_s"][0] == summaries[0].data["period_s"][1]
    assert summaries[-1] not in full and summaries[-1].data["period_s"][0] == full[-1].data["period_s"][1]
    # the would-be writes themselves: journalled when the setpoint decision moves, else once a
    # minute (53 rows for 575 scans seen; every cycle before)
    assert len([e for e in ev if e.kind == "shadow_commands"]) < cycles / 5
    numbers = [int(n) for n in rig.layout.cell_number]
    for s in summaries[:2]:
        d = s.data
        t0, t1 = d["period_s"]
        # closed by the first scan 600 s or more after its start (under load scans may be seconds apart)
        assert 600.0 <= t1 - t0 < 660.0
        assert d["agree"]["feed"]["compared"] == len(numbers)
        # what the PLCs did, as the summary says, is what the cells really got in the period
        f0, b0 = truth.at(t0)
        f1, b1 = truth.at(t1)
        real_shots = float((f1 - f0).sum())
        assert real_shots > 0  # the PLCs' local feeding ran
        assert d["feed_shots"]["plc"] == pytest.approx(real_shots, abs=2.0 * len(numbers))
        assert d["beam_net_mm"]["plc"] == pytest.approx(float((b1 - b0).sum()), abs=5.0 * len(numbers))
        assert d["feed_shots"]["controller"] > 0  # the controller would feed too
        # the rectifier: the PLC's own 120 kA vs the controller's 116 kA aim
        amp = d["amperage"]["Line1"]
        assert amp["plc_ka"] == pytest.approx(rect_sp, abs=0.05)
        assert amp["controller_ka"] < rect_sp - 0.5
        assert d["agree"]["amperage"] == {"agree": 0, "compared": 1}
        # every AE it compared happened on that cell, at that time
        for ae in d["aes"]:
            k = numbers.index(ae["cell"])
            assert any(a.cell == k and abs(a.start_s - ae["start_s"]) <= 10.0 for a in rig.aes), ae
        assert 0.0 <= d["agreement"] <= 1.0
    # the disagreements are journalled one by one, each naming its cell or line
    line = [e for e in disagreements if e.data["what"] == "amperage"]
    assert len(line) >= 2 and all(e.data["line"] == "Line1" for e in line)
    assert "controller would hold" in line[0].detail and "PLC 120" in line[0].detail
    per_period = {}
    for e in disagreements:
        per_period[e.t_plant_s] = per_period.get(e.t_plant_s, 0) + 1
    for s in summaries:
        assert per_period.get(s.t_plant_s, 0) == min(s.data["disagreements"], 20)
    assert sum(len(s.data["aes"]) for s in summaries) >= 1  # the storm's AEs were compared
