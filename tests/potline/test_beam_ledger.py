"""The beam ledger on real files (``potline.beam_ledger``): an owed beam restore survives a
daemon restart through the file; the file is never left damaged by a writer killed with
SIGKILL mid-write; an unusable ledger (damaged, edited, another plant, refused by the
controller) starts the daemon with an empty ledger and an alarm naming the file, never a
crash; a write that fails is reported once and recovers.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from potline.beam_ledger import FORMAT, BeamLedger
from tests.potctl.test_beam_intent import N, SimPLC, controller, run
from tests.waits import readline


def owed_restore() -> tuple[Any, SimPLC, int]:
    """A controller that lowered cell 2's beam for an AE now over: a restore is owed."""
    ctl = controller()
    plc = SimPLC(float(ctl.resistance.target_uohm[0]))
    run(ctl, plc, 60)
    k = 2
    plc.ae[k] = True
    run(ctl, plc, 40)
    plc.ae[k] = False
    run(ctl, plc, 20)
    assert plc.pos[k] <= -10.0 and ctl.beam_intent()["cells"]
    return ctl, plc, k


def ledger(tmp_path: Path) -> BeamLedger:
    return BeamLedger(tmp_path / "state" / "beam_ledger.json", plant="Sim", n_cells=N)


def test_owed_restore_survives_a_restart_through_the_file(tmp_path):
    ctl, plc, k = owed_restore()
    led = ledger(tmp_path)
    res = led.save(ctl.beam_intent())
    assert res.written and res.error is None
    doc = json.loads(led.path.read_text())
    assert doc["format"] == FORMAT and doc["plant"] == "Sim" and doc["n_cells"] == N
    body = json.dumps(doc["intent"], sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    assert doc["sha256"] == hashlib.sha256(body.encode()).hexdigest()
    assert [c["cell"] for c in doc["intent"]["cells"]] == [k]
    # kill -9: a new process, a new bridge counting from 0, a new controller
    plc.t += 12.0
    plc.new_bridge()
    new = controller()
    loaded = ledger(tmp_path).restore_into(new)
    assert loaded.alarm is None and loaded.cells == 1
    assert loaded.gap_wall_s is not None and 0.0 <= loaded.gap_wall_s < 600.0
    ev: list = []
    run(new, plc, 120, ev)
    assert plc.pos[k] == pytest.approx(0.0, abs=0.5), "the restore was made by the new controller"
    assert [e[1] for e in ev if e[2] == k][:1] == ["beam_intent_restored"]
    assert new.beam_intent()["cells"] == []


def test_unchanged_intent_is_not_rewritten_and_a_change_replaces_the_file_atomically(tmp_path):
    ctl, plc, _ = owed_restore()
    led = ledger(tmp_path)
    assert led.save(ctl.beam_intent()).written
    st0 = led.path.stat()
    run(ctl, plc, 3)  # nothing owed changes in these scans (the restore is due later)
    assert not led.save(ctl.beam_intent()).written
    assert led.path.stat().st_ino == st0.st_ino and led.path.stat().st_mtime_ns == st0.st_mtime_ns
    run(ctl, plc, 60)  # the restore is made: the intent empties
    assert led.save(ctl.beam_intent()).written
    assert led.path.stat().st_ino != st0.st_ino, "replaced, not rewritten in place"
    assert json.loads(led.path.read_text())["intent"]["cells"] == []
    assert sorted(p.name for p in led.path.parent.iterdir()) == ["beam_ledger.json"], "no temporary files left"


def _edit(path: Path, fn) -> None:
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


def _rehash(doc: dict) -> None:
    body = json.dumps(doc["intent"], sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    doc["sha256"] = hashlib.sha256(body.encode()).hexdigest()


def _bad_intent_key(doc: dict) -> None:
    doc["intent"]["cells"][0]["quench"]["state"] = "melting"
    _rehash(doc)


CASES = {
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:120]), "is not JSON"),
    "not_json": (lambda p: p.write_text("beam: up\n"), "is not JSON"),
    "other_format": (lambda p: _edit(p, lambda d: d.update(format="csv")), "key 'format': expected 'potline-beam-ledger'"),
    "other_plant": (lambda p: _edit(p, lambda d: d.update(plant="Elsewhere")), "key 'plant': expected 'Sim' (this plant)"),
    "other_size": (lambda p: _edit(p, lambda d: d.update(n_cells=660)), "key 'n_cells': expected 4 (this plant), got 660"),
    "edited_value": (lambda p: _edit(p, lambda d: d["intent"]["cells"][0].update(ack_mm=123.0)),
                     "key 'sha256': does not match the intent"),
    "refused_by_controller": (lambda p: _edit(p, _bad_intent_key), "key intent.cells[0].quench.state: expected one of"),
    "too_big": (lambda p: p.write_bytes(b" " * (9 * 1024 * 1024)), "more than a beam ledger"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_unusable_ledger_starts_empty_with_an_alarm_naming_the_file(tmp_path, case):
    damage, why = CASES[case]
    ctl, plc, _ = owed_restore()
    led = ledger(tmp_path)
    led.save(ctl.beam_intent())
    damage(led.path)
    new = controller()
    res = ledger(tmp_path).restore_into(new)
    assert res.intent is None or case == "refused_by_controller"
    assert res.alarm is not None and str(led.path) in res.alarm and why in res.alarm, res.alarm
    assert "starting with an empty ledger" in res.alarm
    aside = led.path.with_name("beam_ledger.json.corrupt")
    assert aside.exists() and not led.path.exists() and str(aside) in res.alarm
    run(new, plc, 5)
    assert new.beam_intent()["cells"] == [], "nothing half-restored"
    # the daemon runs on and writes a fresh ledger
    assert ledger(tmp_path).save(new.beam_intent()).written
    assert ledger(tmp_path).load().alarm is None


def test_a_failing_write_is_reported_once_and_recovers(tmp_path):
    ctl, _, _ = owed_restore()
    blocker = tmp_path / "state"
    blocker.write_text("not a directory")
    led = ledger(tmp_path)
    first = led.save(ctl.beam_intent())
    assert not first.written and first.new_error and first.error is not None
    assert str(led.path) in first.error and "cannot be written" in first.error
    again = led.save(ctl.beam_intent())
    assert not again.written and not again.new_error and again.error == first.error
    blocker.unlink()
    ok = led.save(ctl.beam_intent())
    assert ok.written and ok.recovered and ok.error is None and led.error is None
    assert ledger(tmp_path).load().cells == 1


WRITER = textwrap.dedent(
    """
    import sys
    from potline.beam_ledger import BeamLedger
    led = BeamLedger(sys.argv[1], plant="Sim", n_cells=4)
    i = 0
    while True:
        i += 1
        why = "v%d " % i + "x" * (i % 500)  # sizes differ from write to write
        intent = {"version": 1, "t_s": float(i), "n_cells": 4, "cells": [
            {"cell": i % 4, "ack_mm": float(i), "inflight_mm": 0.0, "inflight_t_s": None,
             "handed": {"owed_mm": 20.0, "t_s": float(i), "why": why}}]}
        assert led.save(intent).written
        if i % 25 == 0:
            print(i, flush=True)
    """
)


def test_a_writer_killed_mid_write_leaves_the_old_or_the_new_ledger_never_a_damaged_one(tmp_path):
    """A real process saving as fast as it can, SIGKILLed at seeded random moments: every
    time the ledger loads cleanly (checksum and all) and is one the writer saved."""
    rnd = random.Random(15)
    path = tmp_path / "beam_ledger.json"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, env=env)
        assert proc.stdout is not None
        try:
            for _ in range(rnd.randint(1, 6)):
                line = readline(proc.stdout, 60.0, "the writer's progress line")
                assert line.strip(), "the writer died"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        res = BeamLedger(path, plant="Sim", n_cells=4).load()
        assert res.alarm is None and res.intent is not None
        (cell,) = res.intent["cells"]
        i = int(cell["ack_mm"])
        assert cell["handed"]["why"].startswith(f"v{i} ") and cell["cell"] == i % 4
        assert not list(tmp_path.glob(".beam_ledger.json.*.tmp")), "the killed writer's temporary file is cleaned up"
    assert np.isfinite(res.gap_wall_s or 0.0)


def test_with_the_plcs_own_counters_a_move_made_while_no_daemon_ran_is_read_off_them(tmp_path):
    """The bridge reports the PLCs' own counters (``ack_base`` ``plc_counters``): what the
    beam moved while no daemon ran is in the count, so the restarted controller restores
    the beam exactly to its pre-AE place."""
    ctl, plc, k = owed_restore()
    led = ledger(tmp_path)
    assert led.save(ctl.beam_intent(), acks_are_plc_counters=True).written
    assert json.loads(led.path.read_text())["ack_base"] == "plc_counters"
    # kill -9; meanwhile the PLC moves the beam 6 mm up and counts it; the new bridge reads its counters
    plc.pos[k] += 6.0
    plc.total[k] += 6.0
    plc.t += 12.0
    new = controller()
    loaded = ledger(tmp_path).restore_into(new, same_ack_base=True)
    assert loaded.alarm is None and loaded.plc_counters
    ev: list = []
    run(new, plc, 120, ev)
    assert plc.pos[k] == pytest.approx(0.0, abs=0.5), "back at its pre-AE place, the 6 mm counted"
    assert not [e for e in ev if e[1] == "beam_restore_handed_over"]


def test_the_ack_base_is_written_and_a_change_of_it_rewrites_the_ledger(tmp_path):
    ctl, _plc, _k = owed_restore()
    led = ledger(tmp_path)
    assert led.save(ctl.beam_intent(), acks_are_plc_counters=True).written
    assert not led.save(ctl.beam_intent(), acks_are_plc_counters=True).written
    # a PLC restart seen: the totals continue past its reset, no longer its counters
    assert led.save(ctl.beam_intent(), acks_are_plc_counters=False).written
    assert json.loads(led.path.read_text())["ack_base"] == "bridge"
    loaded = ledger(tmp_path).load()
    assert loaded.intent is not None and not loaded.plc_counters


def test_an_unknown_ack_base_is_an_unusable_ledger_naming_the_key(tmp_path):
    ctl, _plc, _k = owed_restore()
    led = ledger(tmp_path)
    led.save(ctl.beam_intent(), acks_are_plc_counters=True)
    doc = json.loads(led.path.read_text())
    doc["ack_base"] = "guess"
    led.path.write_text(json.dumps(doc))
    res = ledger(tmp_path).restore_into(controller(), same_ack_base=True)
    assert res.intent is None and res.alarm is not None
    assert "'ack_base'" in res.alarm and str(led.path) in res.alarm
