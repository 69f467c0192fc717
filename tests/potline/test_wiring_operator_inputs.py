"""Operator inputs and scheduled reports wired into the daemon: a real ``potline run``
process on a HIL rig, fed as a plant's lab and shift office would feed it.

* A bath-sample CSV dropped into ``<state_dir>/inputs`` is imported: journalled as
  ``bath_sample`` with the sampler's name, moved to ``inputs/imported``, and its alumina
  corrects that cell's observer estimate (read on the OPC UA mirror, as a SCADA sees it).
  A CSV with a bad row is refused whole: moved to ``inputs/rejected`` with an errors file
  naming the line and column, journalled as ``operator_input_rejected``, nothing imported.
* A shift that ends while the daemon runs gets its report on schedule (HTML and CSV in
  ``<state_dir>/reports``), its room energy within 5 % of the rig's own account of the
  cells' electrical energy over that shift.
"""

from __future__ import annotations

import csv
import time

import numpy as np
import pytest
from asyncua import Client, ua

from plc_bridge.opcua_server import NAMESPACE_URI
from potline.history import History
from tests.potline.daemon_support import (
    DEADLINE_S,
    DaemonProcess,
    daemon_config,
    journal_events,
    rig_scenario,
    start_rig,
    until,
)

pytestmark = [pytest.mark.hil, pytest.mark.timeout(600)]

SHIFT_AT_S = 1800.0  # the shift starts this long after the rig's start [plant s] (90 s wall at 20x)
SHIFT_H = 0.1  # and lasts 6 min of plant time
K = 2  # Potroom1/Cell003
SCAN_S = 2.0  # the example config's scan period [plant s]


async def test_csv_samples_reach_journal_and_observer_and_shift_reports_come_on_schedule(tmp_path) -> None:
    rig = await start_rig(rig_scenario(speed=20.0, watchdog_s=60.0))
    dp = None
    try:
        # the daemon's timeline = the rig's start on the wall clock + plant time
        rig_start = time.time() - rig.now()
        shift_t0 = rig_start + SHIFT_AT_S
        start_h = (shift_t0 % 86400.0) / 3600.0
        reports = {"shift_starts_h": [start_h], "shift_hours": SHIFT_H, "daily": False, "check_every_s": 1.0}
        cfg, data = daemon_config(tmp_path, rig, mode="observe", history={"reports": reports})
        state = tmp_path / "state"
        dp = await DaemonProcess(cfg).start()
        await dp.wait_ready()
        assert rig.now() < SHIFT_AT_S - 120.0, f"the daemon took until plant {rig.now():.0f} s to start"
        inputs = state / "inputs"
        ua_url = f"opc.tcp://127.0.0.1:{data['_ports']['opcua']}/potline-twin/"
        async with Client(ua_url, timeout=30) as scada:
            idx = await scada.get_namespace_index(NAMESPACE_URI)
            est = [scada.get_node(ua.NodeId(f"Bench.Potroom1.Cell{n:03d}.AluminaEstimate", idx)) for n in range(1, 9)]

            async def estimated() -> bool:
                dvs = [await n.read_data_value(raise_on_bad_status=False) for n in est]
                return all(dv.StatusCode.is_good() for dv in dvs)

            await until(estimated, "the observer's estimates on the mirror")
            await until(lambda: inputs.is_dir(), "the inputs folder")
            # ---- a bad file: refused whole, said where
            (inputs / "bad.csv").write_text("time,room,cell,bath_temp_c,alumina_wt_pct,by\n"
                                            "2026-12-04T07:15,Potroom1,3,9620,2.5,olga\n"
                                            "2026-12-04T07:20,Potroom1,99,960,2.5,olga\n", encoding="utf-8")  # fmt: skip
            # ---- a good one: the lab's alumina of cell 3, well above the estimate
            sampled = 6.5
            t_before = rig_start + rig.now()
            (inputs / "lab.csv").write_text("time,room,cell,alf3_excess_wt_pct,bath_temp_c,alumina_wt_pct,by,comment\n"
                                            f"2026-12-04T07:15,Potroom1,3,11.2,962,{sampled},olga,round\n",
                                            encoding="utf-8")  # fmt: skip
            await until(lambda: (inputs / "imported" / "lab.csv").exists(), "lab.csv imported")
            t_imported = rig_start + rig.now()
            # the observer's Kalman update pulls cell 3 toward the lab value, no other cell has a
            # sample; its voltage measurements then pull it back scan by scan, so the pull is read
            # where the history (every scan's estimates, timeline-stamped) has it: the largest
            # move within 10 scans of the import against the estimates published before it
            hist_path = state / "history.db"
            window: list = []

            def recorded() -> bool:
                h = History(hist_path, readonly=True)
                try:
                    (grp,) = [g.name for g in h.groups() if g.name.endswith("Potroom1.AluminaEstimate")]
                    t, v = h.raw(grp, t_before - 10 * SCAN_S, t_imported + 10 * SCAN_S)
                finally:
                    h.close()
                window[:] = [t, v]
                return bool(t.size) and float(t[-1]) >= t_imported + 5 * SCAN_S and bool((t <= t_before).any())

            await until(recorded, "the history around the import")
            t, v = window
            base = v[t <= t_before][-1]
            moved = np.nanmax(v[t > t_before] - base, axis=0)
            assert moved[K] > 0.15 * (sampled - base[K]) and moved[K] > 0.1, (base, moved)
            assert moved[K] > 3 * max(abs(m) for i, m in enumerate(moved) if i != K), moved
            await until(lambda: (inputs / "rejected" / "bad.csv").exists(), "bad.csv refused")
            errors = (inputs / "rejected" / "bad.csv.errors.txt").read_text(encoding="utf-8")
            assert "bad.csv line 2, column bath_temp_c" in errors and "got '9620'" in errors, errors
            assert "bad.csv line 3, column cell: Potroom1 has cells 1 .. 8, got 99" in errors, errors
        ev = journal_events(state / "journal.db")
        samples = [e for e in ev if e.kind == "bath_sample"]
        assert [(e.room, e.cell, e.user, e.value, e.source) for e in samples] == [
            ("Potroom1", 3, "olga", sampled, "csv:lab.csv")
        ]
        assert samples[0].data["values"] == {"alf3_excess_wt_pct": 11.2, "bath_temp_c": 962.0,
                                             "alumina_wt_pct": sampled}  # fmt: skip
        rejected = [e for e in ev if e.kind == "operator_input_rejected"]
        assert len(rejected) == 1 and rejected[0].data["file"] == "bad.csv" and len(rejected[0].data["issues"]) == 2

        # ---- the shift: the rig's own energy account at its start and end
        await rig.wait_until(SHIFT_AT_S, timeout_wall_s=600.0)
        e_start = rig.potline.totals()["energy_kwh"]
        await rig.wait_until(SHIFT_AT_S + SHIFT_H * 3600.0, timeout_wall_s=600.0)
        e_end = rig.potline.totals()["energy_kwh"]
        found = []

        def written() -> bool:
            found[:] = sorted((state / "reports").glob("shift-*.csv"))
            return bool(found)

        await until(written, "the shift report", timeout=DEADLINE_S)
        assert len(found) == 1 and found[0].with_suffix(".html").exists()
        with found[0].open(encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        assert [r["room"] for r in rows] == ["Potroom1"] and int(rows[0]["cells"]) == 8
        energy = float(rows[0]["energy_kwh"])
        truth = e_end - e_start
        assert abs(energy - truth) <= 0.05 * truth, (energy, truth, rows[0])
        assert await dp.stop() == 0
    finally:
        if dp is not None and dp.returncode is None:
            await dp.kill()
        await rig.stop()
