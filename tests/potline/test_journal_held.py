"""Held entries while the journal cannot take them (issue 15: unbounded in memory; a stop
while the disk was full left no ``daemon_stop`` and exited 0).

Real refusals only: SQLITE_FULL from ``max_page_count`` (what ``journal.max_mb`` does),
and a real kernel refusal of every file write past a size (``RLIMIT_FSIZE``: EFBIG) for a
disk so full that the spill file cannot be written either.

What a user cares about: memory stays bounded, entries past the bound are on disk in
``<journal>.held`` in order, they go into the journal (ids contiguous, order kept) as soon
as it takes entries again or at the next start, a stop that could not commit everything
says so (``close`` False: the daemon exits non-zero), and when even the spill is refused
the dropped entries are counted and journalled, never silently gone.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from potline.journal import Journal, _Spill, spill_path, verify_files
from tests.waits import readline

PY = sys.executable


def fill_up(j: Journal) -> None:
    """Cap the file at its current size: the next commit fails like on a full disk."""
    j.set_max_bytes(1)  # SQLite keeps the larger of the cap and what the file holds


def spilled_lines(path: Path) -> int:
    sp = spill_path(path)
    return len(sp.read_text().splitlines()) - 1 if sp.exists() else 0


def test_held_entries_past_the_bound_spill_to_disk_and_fold_in_order(tmp_path, monkeypatch) -> None:
    """``max_held`` 50, the journal full for 400 entries (a commit attempt every cycle of
    20): at most 100 stay in memory, the rest are in the spill file; once there is room,
    commits fold them in (50 per commit from the file, then memory), ids contiguous, values
    in the order appended, the spill file gone, the chain intact. (The spill file is read in
    97-byte chunks here, so lines straddle every chunk boundary.)"""
    monkeypatch.setattr(_Spill, "CHUNK", 97)
    path = tmp_path / "journal.db"
    j = Journal(path, max_held=50)
    j.record(kind="daemon_start")
    fill_up(j)
    for n in range(400):
        j.append(kind="setpoint_write", tag="line_current_sp", value=float(n), detail="x" * 300)
        if n % 20 == 19:
            with pytest.raises(Exception, match="full"):
                j.commit()
            assert len(j.pending_events()) == j.unwritten == n + 1
            assert j.unwritten - spilled_lines(path) <= 100, "memory bounded"
    assert spilled_lines(path) >= 300
    assert not j.all_committed
    j.set_max_bytes(None)
    sizes = []
    while j.pending:
        sizes.append(len(j.commit()))
    assert sizes[0] == 50 and sum(sizes) == 400
    assert j.ids() == list(range(1, 402))
    assert [e.value for e in j.query(kinds=["setpoint_write"])] == [float(n) for n in range(400)]
    assert not spill_path(path).exists() and j.all_committed
    assert j.close() is True
    (rep,) = verify_files([path])
    assert rep.ok, rep.findings


def test_a_stop_while_full_is_unclean_and_the_next_start_folds_the_rest_in(tmp_path) -> None:
    """Stopping with the journal still full: ``close`` returns False (not everything is in
    the journal), leaves every held entry in the spill file (``daemon_stop`` last); the next
    open folds them in before anything else, so ``daemon_stop`` is the last entry and the
    previous run reads as a clean stop."""
    path = tmp_path / "journal.db"
    j = Journal(path, max_held=50)
    j.record(kind="daemon_start", data={"pid": 1})
    fill_up(j)
    for n in range(120):
        j.append(kind="ae_start", room="Potroom1", cell=n % 8 + 1, value=30.0 + n, detail="x" * 300)
    j.append(kind="daemon_stop", detail="clean stop (SIGTERM)")
    assert j.close() is False
    assert spilled_lines(path) == 121
    with Journal(path) as k:
        assert k.ids() == list(range(1, 123))
        last = k.last(["daemon_start", "daemon_stop"])
        assert last is not None and last.kind == "daemon_stop"
        assert [e.value for e in k.query(kinds=["ae_start"])] == [30.0 + n for n in range(120)]
        assert not spill_path(path).exists() and k.all_committed


SPILLING_WRITER = r"""
import sys
import structlog
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
from potline.journal import Journal
j = Journal(sys.argv[1], max_held=20)
j.record(kind="daemon_start")
j.set_max_bytes(1)
n = 0
while True:
    for _ in range(10):
        n += 1
        j.append(kind="setpoint_write", value=float(n), detail=f"n={n}" + " " * 300)
    try:
        j.commit()
    except Exception:
        pass
    print(j.unwritten, flush=True)
"""


def test_kill_9_while_full_keeps_what_was_spilled(tmp_path) -> None:
    """A crash while the disk is full: the entries already in the spill file are folded in
    at the next open, in order, ids contiguous; only the last few held in memory (never
    acknowledged as committed) are gone."""
    path = tmp_path / "journal.db"
    proc = subprocess.Popen([PY, "-c", SPILLING_WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        held = 0
        while held < 300:
            line = readline(proc.stdout, 60.0, "the writer to report held entries")
            assert line, "the writer died"
            held = int(line)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    on_disk = spilled_lines(path)
    assert on_disk >= held - 2 * 20
    with Journal(path) as j:
        got = [e.detail.strip() for e in j.query(kinds=["setpoint_write"])]
        assert got == [f"n={n}" for n in range(1, len(got) + 1)] and len(got) == on_disk
        assert j.ids() == list(range(1, len(got) + 2))


DISK_FULL_WRITER = r"""
import json, os, resource, signal, sys
import structlog
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
from potline.journal import Journal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
p = sys.argv[1]
j = Journal(p, max_held=20)
j.record(kind="daemon_start")
j.checkpoint()
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
limit = max(os.path.getsize(p), os.path.getsize(p + "-wal")) + 4096
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))  # every file: the journal, its -wal, the spill
failed = 0
for n in range(300):
    j.append(kind="setpoint_write", value=float(n), detail="y" * 100)
    if n % 10 == 9:
        try:
            j.commit()
        except Exception:
            failed += 1
held, dropped = j.unwritten, j.dropped
sp = p + ".held"
spilled = len(open(sp).read().splitlines()) - 1 if os.path.exists(sp) else 0
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
while j.unwritten:
    j.commit()
print(json.dumps({"failed": failed, "held": held, "spilled": spilled, "dropped": dropped,
                  "closed_clean": j.close()}))
"""


def test_when_even_the_spill_is_refused_entries_are_dropped_counted_and_journalled(tmp_path) -> None:
    """Every file write refused by the kernel past a size (the journal, its -wal and the
    spill file alike): memory stays at ``2 x max_held``, newer entries are dropped and
    counted; once writes work again everything held goes in, followed by a
    ``journal_entries_dropped`` alarm with the count per kind; ``close`` reports the unclean
    run and ``--verify`` calls the trail incomplete."""
    path = tmp_path / "journal.db"
    out = subprocess.run([PY, "-c", DISK_FULL_WRITER, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["failed"] > 20 and res["dropped"] > 0 and res["closed_clean"] is False
    assert res["held"] - res["spilled"] <= 2 * 20, "in memory: at most 2 x max_held"
    with Journal(path, readonly=True) as r:
        ids = r.ids()
        assert ids == list(range(1, len(ids) + 1))
        kept = r.count(kinds=["setpoint_write"])
        assert kept + res["dropped"] == 300
        (marker,) = r.query(kinds=["journal_entries_dropped"])
        assert marker.id == ids[-1] and marker.category == "alarm"
        assert marker.data["dropped"] == {"setpoint_write": res["dropped"]}
        got = [e.value for e in r.query(kinds=["setpoint_write"])]
        assert got == [float(n) for n in range(kept)], "the oldest are kept, in order"
    verify = subprocess.run([PY, "-m", "potline.cli", "events", "--journal", str(path), "--verify"],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert verify.returncode == 1 and "entries dropped" in verify.stdout


def test_an_edited_spill_file_is_folded_in_and_reported(tmp_path) -> None:
    """The spill file is plain text between two runs: an entry edited there is still folded
    in, and a ``journal_tampered`` alarm names it; a last line cut short (a crash while
    writing it) is left out and said."""
    path = tmp_path / "journal.db"
    j = Journal(path, max_held=5)
    j.record(kind="daemon_start")
    fill_up(j)
    for n in range(12):
        j.append(kind="setpoint_write", value=float(n), detail="x" * 1000)
    assert j.close() is False
    sp = spill_path(path)
    lines = sp.read_text().splitlines()
    doc = json.loads(lines[4])
    doc["e"]["value"] = 135.0
    lines[4] = json.dumps(doc)
    sp.write_text("\n".join(lines) + "\n" + '{"s": 13, "e": {"kind": "setp')
    with Journal(path) as k:
        (ev,) = k.query(kinds=["journal_tampered"])
        assert f"entry {doc['s']} does not match its hash (edited)" in ev.detail
        assert "the last line is incomplete (a crash while writing it)" in ev.detail
        assert k.count(kinds=["setpoint_write"]) == 12
