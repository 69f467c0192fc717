"""The journal file vanishing under its writer (issue 15): deleted, replaced, moved, its
``-wal`` deleted, its directory removed. Real SQLite files in tmp_path, a real writer
process stepped cycle by cycle like the daemon's loop.

What a user cares about: the next cycle notices (the commit fails with ``JournalLost``, so
the daemon drops control), every entry the writer had acknowledged as committed is in the
file at the path afterwards, the loss itself is journalled as an alarm with the id range,
the entries held meanwhile follow with contiguous ids, and ``potline events --verify``
finds the chain intact.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from potline.journal import Journal, JournalError, JournalLost, verify_files
from tests.waits import readline

PY = sys.executable

#: a writer stepped by the test: one line on stdin = one daemon cycle (3 entries, then
#: ``if pending: commit`` as ``JournalRecorder.commit`` does); it answers one line per cycle
STEPPED_WRITER = r"""
import signal, sys
import structlog
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout is the protocol
from potline.journal import Journal, JournalLost
j = Journal(sys.argv[1])
stop = False
def on_term(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
n = 0
for line in sys.stdin:
    if stop or line.strip() == "stop":
        break
    for _ in range(3):
        n += 1
        j.append(kind="setpoint_write", line="Line1", tag="line_current_sp", value=100.0 + n % 20, detail=f"n={n}")
    try:
        if j.pending:
            batch = j.commit()
            print(f"acked {batch[-1].id if batch else j.last_id}", flush=True)
        else:
            print("idle", flush=True)
    except JournalLost as exc:
        print(f"lost {exc.loss.what} {exc.loss.first_id} {exc.loss.last_id} {exc.loss.recovered} {exc.loss.entry_id}",
              flush=True)
    except Exception as exc:
        print(f"failed {type(exc).__name__}: {exc}", flush=True)
ok = j.close()
print(f"closed {ok}", flush=True)
sys.exit(0 if ok else 3)
"""


def _cycle(proc: subprocess.Popen[str]) -> str:
    assert proc.stdin is not None
    proc.stdin.write("cycle\n")
    proc.stdin.flush()
    line = readline(proc.stdout, 60.0, "the writer to answer a cycle")
    assert line, "the writer died"
    return line.strip()


def _rows(path: Path) -> list[tuple[int, str, str]]:
    with Journal(path, readonly=True) as r:
        return [(e.id or 0, e.kind, e.detail) for e in r.query()]


def test_deleting_the_journal_under_a_running_writer_is_noticed_in_one_cycle_and_loses_nothing(tmp_path) -> None:
    """The red-team case: ``journal.db``, ``-wal`` and ``-shm`` removed while the writer runs.
    The very next cycle reports the loss (the daemon's cue to leave control); the file is
    back at its path with every acknowledged id, then ``journal_lost`` (alarm) naming the
    ids that were in the deleted file and that they were all recovered, then the cycle's
    entries; the writer closes cleanly (exit 0) and the chain verifies."""
    path = tmp_path / "state" / "journal.db"
    proc = subprocess.Popen([PY, "-c", STEPPED_WRITER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        acked = [int(_cycle(proc).split()[1]) for _ in range(34)]
        assert acked[-1] == 34 * 3
        for suffix in ("", "-wal", "-shm"):
            os.remove(f"{path}{suffix}")
        assert not path.exists()
        answer = _cycle(proc)
        assert answer.startswith("lost deleted"), answer  # the first cycle after the deletion
        first, last, recovered, entry = answer.split()[2:]
        assert (int(first), int(last), recovered, int(entry)) == (1, acked[-1], "True", acked[-1] + 1)
        assert path.exists()
        after = _cycle(proc)  # the held entries of the failed cycle and this one's
        assert after == f"acked {acked[-1] + 1 + 6}"
        assert proc.stdin is not None
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        assert readline(proc.stdout, 60.0, "the writer to close").strip() == "closed True"
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rows = _rows(path)
    assert [r[0] for r in rows] == list(range(1, acked[-1] + 8))  # contiguous: nothing lost, nothing twice
    lost = rows[acked[-1]]
    assert lost[1] == "journal_lost" and f"ids 1..{acked[-1]} all recovered" in lost[2]
    with Journal(path, readonly=True) as r:
        assert r.query(kinds=["journal_lost"])[0].category == "alarm"
    assert [r[2] for r in rows[acked[-1] + 1 :]] == [f"n={n}" for n in range(acked[-1] + 1, acked[-1] + 7)]
    out = subprocess.run([PY, "-m", "potline.cli", "events", "--journal", str(path), "--verify"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "intact" in out.stdout and "journal_lost" in out.stdout and "nothing missing" in out.stdout


def test_a_file_put_in_its_place_is_moved_aside_and_the_journal_rebuilt_from_the_open_handle(tmp_path) -> None:
    """Another (valid) journal renamed over the path: detected as replaced at the next
    commit, the foreign file kept aside untouched for whoever investigates, the journal at
    the path holds our ids (none of the foreign rows), the held entries come next."""
    path = tmp_path / "journal.db"
    j = Journal(path)
    for n in range(50):
        j.append(kind="setpoint_write", tag="line_current_sp", value=float(n))
    j.commit()
    other = tmp_path / "forged.db"
    with Journal(other) as f:
        f.record(kind="setpoint_write", tag="line_current_sp", value=999.0, detail="forged")
    os.replace(other, path)
    j.append(kind="ae_start", room="Potroom1", cell=3)
    assert j.pending == 2  # the held entry, and the loss to journal
    with pytest.raises(JournalLost) as err:
        j.commit()
    loss = err.value.loss
    assert loss.what == "replaced" and loss.recovered and (loss.first_id, loss.last_id) == (1, 50)
    assert j.pending == 1, "the entry of the failed commit is still held"
    assert [e.id for e in j.commit()] == [52]
    assert j.close()
    aside = [tmp_path / n for n in loss.moved_aside]
    assert len(aside) == 1 and aside[0].name.startswith("journal.db.foreign-")
    with Journal(aside[0], readonly=True) as f:
        assert [e.detail for e in f.query()] == ["forged"]
    rows = _rows(path)
    assert [r[0] for r in rows] == list(range(1, 53)) and "forged" not in [r[2] for r in rows]
    assert [r[1] for r in rows[-2:]] == ["journal_lost", "ae_start"]
    (rep,) = verify_files([path])
    assert rep.ok, rep.findings


def test_deleting_only_the_wal_is_a_loss_too_and_readers_work_again(tmp_path) -> None:
    """``-wal`` removed: the committed entries not yet checkpointed lived only there.
    SQLite would go on writing into the deleted file (and other readers get I/O errors);
    the next commit rebuilds the file from the open handle instead: every id is readable
    by a separate reader afterwards."""
    path = tmp_path / "journal.db"
    j = Journal(path)
    for n in range(30):
        j.append(kind="comms_lost", source=f"plc{n}")
    j.commit()
    os.remove(f"{path}-wal")
    assert j.pending == 1  # nothing appended: the loss alone makes the caller commit
    with pytest.raises(JournalLost) as err:
        j.commit()
    assert err.value.loss.what == "wal_deleted" and err.value.loss.recovered
    assert _rows(path)[-1][1] == "journal_lost" and [r[0] for r in _rows(path)] == list(range(1, 32))
    assert j.pending == 0
    j.close()


def test_moved_away_and_directory_removed(tmp_path) -> None:
    """Renamed elsewhere (the path is empty, the file still exists) and the whole state
    directory removed (lock file included): both rebuilt at the path; the lock is taken
    again, so a second writer is still refused."""
    state = tmp_path / "state"
    path = state / "journal.db"
    j = Journal(path)
    j.record(kind="daemon_start")
    os.replace(path, tmp_path / "elsewhere.db")
    with pytest.raises(JournalLost, match="moved"):
        j.record(kind="mode_change", mode="shadow")
    j.commit()
    assert [r[1] for r in _rows(path)] == ["daemon_start", "journal_lost", "mode_change"]
    shutil.rmtree(state)
    with pytest.raises(JournalLost, match="deleted"):
        j.record(kind="ae_start", cell=1)
    j.commit()
    assert [r[1] for r in _rows(path)] == ["daemon_start", "journal_lost", "mode_change", "journal_lost", "ae_start"]
    with pytest.raises(JournalError, match="in use by another writer"):
        Journal(path)
    assert j.close()
    (rep,) = verify_files([path])
    assert rep.ok, rep.findings


def test_a_loss_found_at_close_is_rebuilt_before_closing_and_reported_once(tmp_path) -> None:
    """Deleted just before the stop: ``close`` rebuilds and commits what was held (returns
    True: everything committed); ``take_lost`` tells the daemon once per loss."""
    path = tmp_path / "journal.db"
    j = Journal(path)
    j.record(kind="daemon_start")
    for s in ("", "-wal", "-shm"):
        os.remove(f"{path}{s}")
    j.append(kind="daemon_stop", detail="clean stop")
    assert j.close() is True
    assert [r[1] for r in _rows(path)] == ["daemon_start", "journal_lost", "daemon_stop"]
    assert j.lost is not None and j.take_lost() is j.lost and j.take_lost() is None


def test_when_the_lost_file_cannot_be_read_back_the_loss_is_said_and_verify_fails(tmp_path) -> None:
    """The open handle itself unusable (forced here by closing it: the case a damaged file
    or an I/O error would produce): the rebuilt file continues the chain from the head the
    writer knew, ``journal_lost`` says the ids are LOST, ids never restart, and
    ``--verify`` reports the gap as a broken trail."""
    path = tmp_path / "journal.db"
    j = Journal(path)
    for n in range(10):
        j.append(kind="setpoint_write", value=float(n))
    j.commit()
    assert j._db is not None
    j._db.close()  # the handle can no longer read the old file (closing it checkpointed the -wal away)
    for s in ("", "-wal", "-shm"):
        Path(f"{path}{s}").unlink(missing_ok=True)
    with pytest.raises(JournalLost) as err:
        j.record(kind="ae_start", cell=2)
    assert not err.value.loss.recovered and (err.value.loss.first_id, err.value.loss.last_id) == (1, 10)
    assert [e.id for e in j.commit()] == [12]
    j.close()
    rows = _rows(path)
    assert [r[0] for r in rows] == [11, 12] and "ids 1..10 LOST" in rows[0][2]
    out = subprocess.run([PY, "-m", "potline.cli", "events", "--journal", str(path), "--verify"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 1 and "LOST" in out.stdout, out.stdout


def test_sigterm_while_the_file_is_gone_still_exits_clean_with_everything(tmp_path) -> None:
    """The stop comes before any cycle noticed the deletion: the close rebuilds the file and
    commits; the process exits 0 and nothing acknowledged is missing."""
    path = tmp_path / "journal.db"
    proc = subprocess.Popen([PY, "-c", STEPPED_WRITER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        last = 0
        for _ in range(5):
            last = int(_cycle(proc).split()[1])
        for s in ("", "-wal", "-shm"):
            os.remove(f"{path}{s}")
        proc.send_signal(signal.SIGTERM)
        assert proc.stdin is not None
        proc.stdin.write("cycle\n")  # wakes the loop, which sees the stop flag
        proc.stdin.flush()
        assert readline(proc.stdout, 60.0, "the writer to close").strip() == "closed True"
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    ids = [r[0] for r in _rows(path)]
    assert ids == list(range(1, last + 2)) and _rows(path)[-1][1] == "journal_lost"
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
