"""The event journal on real SQLite files: crash safety, append-only, schema, queries, CLI.

The crash test runs a writer in a child process, reads the ids it reports as committed
and SIGKILLs it mid-stream: every reported id must be in the file afterwards.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from potline.journal import SCHEMA_VERSION, Event, Journal, JournalError
from tests.waits import readline

PY = sys.executable

WRITER = r"""
import sys
from potline.journal import Journal
j = Journal(sys.argv[1], synchronous=sys.argv[2])
n = 0
while True:
    for _ in range(7):
        n += 1
        j.append(kind="setpoint_write", line="Line1", tag="line_current_sp", value=100.0 + n % 20, detail=f"n={n}")
    batch = j.commit()
    print(batch[-1].id, flush=True)
"""


@pytest.mark.parametrize("sync", ["FULL", "NORMAL"])
def test_kill_9_mid_stream_loses_no_committed_entry(tmp_path, sync) -> None:
    path = tmp_path / "j.db"
    proc = subprocess.Popen([PY, "-c", WRITER, str(path), sync], stdout=subprocess.PIPE, text=True)
    acked = []
    try:
        while len(acked) < 50:  # mid-stream: the writer keeps committing while it is killed
            line = readline(proc.stdout, 60.0, "the writer to report a commit")
            assert line, "writer died"
            acked.append(int(line))
    finally:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    j = Journal(path)  # a new writer opens it: the lock died with the process, the WAL is replayed
    ids = j.ids()
    assert j.integrity_check() == "ok"
    assert ids == list(range(1, len(ids) + 1))
    assert acked[-1] <= ids[-1], "an acknowledged commit is missing"
    assert len(ids) % 7 == 0, "a batch is all-or-nothing"
    assert [e.detail for e in j.query(after_id=ids[-1] - 2)] == [f"n={ids[-1] - 1}", f"n={ids[-1]}"]
    j.close()


def test_wal_mode_sync_setting_and_one_writer_at_a_time(tmp_path) -> None:
    path = tmp_path / "j.db"
    j = Journal(path, synchronous="FULL")
    assert j._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert j._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert j.schema_version == SCHEMA_VERSION
    with pytest.raises(JournalError, match="in use by another writer"):
        Journal(path)
    # readers are never blocked and see what is committed, not what is pending
    j.record(kind="ae_start", room="Potroom1", cell=17, value=31.5)
    j.append(kind="ae_end", room="Potroom1", cell=17)
    r = Journal(path, readonly=True)
    assert [e.kind for e in r.query()] == ["ae_start"]
    j.commit()
    assert [e.kind for e in r.query()] == ["ae_start", "ae_end"]
    r.close()
    j.close()
    Journal(path, synchronous="NORMAL").close()  # released at close


def test_append_only_and_refuses_foreign_or_newer_files(tmp_path) -> None:
    path = tmp_path / "j.db"
    with Journal(path) as j:
        j.record(kind="mode_change", mode="shadow", user="op", source="opcua")
    db = sqlite3.connect(path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE events SET mode='control'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM events")
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(JournalError, match="newer than this program"):
        Journal(path)
    other = tmp_path / "other.db"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    with pytest.raises(JournalError, match="not a potline journal"):
        Journal(other)
    (tmp_path / "junk.db").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(JournalError, match="not a usable journal"):
        Journal(tmp_path / "junk.db")
    with pytest.raises(JournalError, match="no journal file"):
        Journal(tmp_path / "missing.db", readonly=True)


def test_values_round_trip_and_filters(tmp_path) -> None:
    with Journal(tmp_path / "j.db") as j:
        j.append(kind="ae_start", room="Potroom2", cell=5, value=29.0, t_plant_s=12.5,
                 data={"start_s": 10.0, "nan": float("nan"), "inf": float("inf")})  # fmt: skip
        j.append(kind="setpoint_write", line="Line1", tag="line_current_sp", value=float("nan"))
        j.append(Event(kind="alarm", detail="comms_lost: x", data={"alarm": "comms_lost"}))
        j.commit()
        evs = j.query()
        assert [e.category for e in evs] == ["ae", "setpoint", "alarm"]
        assert evs[0].data == {"start_s": 10.0, "nan": "nan", "inf": "inf"} and evs[0].t_plant_s == 12.5
        assert evs[1].value is None  # NaN is not a number SQLite keeps
        assert [e.kind for e in j.query(room="Potroom2", cell=5)] == ["ae_start"]
        assert [e.kind for e in j.query(categories=["alarm", "ae"])] == ["ae_start", "alarm"]
        assert j.query(kinds=["alarm"], newest_first=True, limit=1)[0].id == 3
        future = datetime.now(UTC) + timedelta(hours=1)
        assert j.query(since=future) == [] and len(j.query(until=future)) == 3
        assert j.count(categories=["ae"]) == 1 and j.last(["setpoint_write"]).id == 2


def test_events_cli_reads_a_live_journal(tmp_path) -> None:
    path = tmp_path / "j.db"
    j = Journal(path)
    for k in range(1, 4):
        j.append(kind="ae_start", room="Potroom1", cell=k, value=30.0 + k, detail=f"U={30 + k} V")
    j.append(kind="mode_change", mode="control", user="op", source="opcua", detail="shadow -> control")
    j.commit()
    j.append(kind="ae_end", room="Potroom1", cell=1)  # pending: not visible to readers
    run = lambda *a: subprocess.run([PY, "-m", "potline.cli", "events", "--journal", str(path), *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=60)  # fmt: skip
    out = run("--category", "ae", "--json", "--since", "10m")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(x) for x in out.stdout.splitlines()]
    assert [(r["kind"], r["cell"], r["value"]) for r in rows] == [("ae_start", 1, 31.0), ("ae_start", 2, 32.0),
                                                                 ("ae_start", 3, 33.0)]  # fmt: skip
    out = run("--kind", "mode_change")
    assert "shadow -> control" in out.stdout and "user=op" in out.stdout
    out = run("--summary", "--json")
    s = json.loads(out.stdout)
    assert s["events"] == 4 and s["id_gaps"] == 0 and s["integrity"] == "ok"
    out = run("--category", "bogus")
    assert out.returncode == 2 and "--category expects one of" in out.stderr
    out = run("--since", "yesterday-ish")
    assert out.returncode == 2 and "expected an ISO-8601 time" in out.stderr
    j.close()
    missing = subprocess.run([PY, "-m", "potline.cli", "events", "--journal", str(tmp_path / "none.db")],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert missing.returncode == 1 and "no journal file" in missing.stderr


def test_full_disk_keeps_the_batch_pending_and_commits_it_when_space_returns(tmp_path) -> None:
    """SQLITE_FULL (a full disk; provoked for real by capping the file with
    ``PRAGMA max_page_count``): the commit raises, the whole batch stays pending and nothing
    of it is in the file; once there is room again, one commit writes all of it, ids
    contiguous after the entries already there. (The daemon keeps running meanwhile and
    stops commanding: ``Daemon._commit``.)"""
    j = Journal(tmp_path / "j.db")
    j.record(kind="daemon_start", detail="before the disk filled up")
    pages = j._db.execute("PRAGMA page_count").fetchone()[0]
    j._db.execute(f"PRAGMA max_page_count = {pages}")
    for n in range(500):
        j.append(kind="setpoint_write", line="Line1", tag="line_current_sp", value=100.0 + n, detail="x" * 200)
    with pytest.raises(sqlite3.OperationalError, match="full"):
        j.commit()
    assert j.pending == 500 and j.count() == 1
    with pytest.raises(sqlite3.OperationalError, match="full"):  # still full: still nothing lost
        j.commit()
    assert j.pending == 500
    j._db.execute("PRAGMA max_page_count = 1073741823")
    batch = j.commit()
    assert len(batch) == 500 and j.pending == 0
    assert j.ids() == list(range(1, 502))
    assert [e.value for e in j.query(kinds=["setpoint_write"])] == [100.0 + n for n in range(500)]
    assert j.integrity_check() == "ok"


def test_rotation_archives_the_file_and_ids_continue_without_gap(tmp_path) -> None:
    """``rotate``: the current file becomes a read-only archive named after its id range,
    complete and intact; the journal goes on at the same path with the next id, so the
    archive and the new file together hold every entry exactly once; a size cap carries
    over to the new file."""
    path = tmp_path / "journal.db"
    j = Journal(path, max_bytes=50_000_000)
    for n in range(120):
        j.append(kind="setpoint_write", line="Line1", tag="line_current_sp", value=float(n), detail=f"n={n}")
    j.commit()
    j.append(kind="setpoint_write", line="Line1", tag="line_current_sp", value=120.0, detail="n=120")  # pending
    archive = j.rotate()
    assert archive.parent == tmp_path and archive.name.startswith("journal-1-121-") and archive.suffix == ".db"
    j.record(kind="journal_rotated", detail=f"previous entries in {archive.name}")
    for n in range(121, 130):
        j.append(kind="setpoint_write", line="Line1", tag="line_current_sp", value=float(n))
    j.commit()
    new_ids = j.ids()
    assert new_ids == list(range(122, 132))
    assert j.integrity_check() == "ok" and j.query(limit=1)[0].kind == "journal_rotated"
    assert int(j._db.execute("PRAGMA max_page_count").fetchone()[0]) < 1_073_741_823
    j.close()
    old = Journal(archive, readonly=True)
    assert old.ids() == list(range(1, 122)) and old.integrity_check() == "ok"
    assert [e.value for e in old.query(kinds=["setpoint_write"])] == [float(n) for n in range(121)]
    old.close()
    reopened = Journal(path)  # the writer side opens the new file as usual
    assert reopened.last_id == 131
    reopened.close()
    # `potline events --with-archives` reads the archive and the live file as one journal
    run = lambda *a: subprocess.run([PY, "-m", "potline.cli", "events", "--journal", str(path), *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=60)  # fmt: skip
    out = run("--with-archives", "--summary", "--json")
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    assert (s["events"], s["first_id"], s["last_id"], s["id_gaps"], s["integrity"]) == (131, 1, 131, 0, "ok")
    assert s["files"] == [str(archive), str(path)]
    out = run("--with-archives", "--kind", "setpoint_write", "--json", "--newest", "--limit", "12")
    rows = [json.loads(x) for x in out.stdout.splitlines()]
    assert [r["id"] for r in rows] == [131, 130, 129, 128, 127, 126, 125, 124, 123, 121, 120, 119]
    assert json.loads(run("--summary", "--json").stdout)["events"] == 10  # the live file alone
