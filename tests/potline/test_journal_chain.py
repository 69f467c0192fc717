"""Tamper evidence of the journal (issue 15): the hash chain, the head records, the
append-only triggers, the links between rotated files, schema-1 migration, the HMAC key.

The attacker here has the file and ``sqlite3``: drops the triggers, edits a row, deletes
the last rows, rewrites head records. ``potline events --verify`` (a real CLI process)
must name the first broken link and exit 1; the writer must re-create the triggers and
journal what it found. What the scheme cannot see is pinned down too (a consistent
rewrite of an unkeyed chain and every head record), so nobody relies on more than it gives.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from potline.journal import Journal, JournalError, _canonical, _link, load_key, verify_files

PY = sys.executable

#: the schema-1 file layout as releases before the hash chain wrote it
SCHEMA_V1 = """
CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, category TEXT NOT NULL,
    ts_utc TEXT NOT NULL, t_plant_s REAL, plant TEXT, line TEXT, room TEXT, cell INTEGER, source TEXT, tag TEXT,
    value REAL, mode TEXT, user TEXT, detail TEXT NOT NULL DEFAULT '', data TEXT NOT NULL DEFAULT '{}');
CREATE INDEX events_ts ON events (ts_utc);
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'journal is append-only: UPDATE refused'); END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'journal is append-only: DELETE refused'); END;
PRAGMA user_version=1;
"""


def events_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "potline.cli", "events", *map(str, args)], capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def setpoints(path: Path, n: int = 20, **kw: object) -> None:
    with Journal(path, **kw) as j:  # type: ignore[arg-type]
        for k in range(n):
            j.append(kind="setpoint_write", line="Line1", tag="line_current_sp", value=100.0 + k, detail=f"k={k}")
        j.commit()


def attacker(path: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection with the append-only triggers dropped."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("DROP TRIGGER events_no_update")
    db.execute("DROP TRIGGER events_no_delete")
    return db


def restore_triggers(db: sqlite3.Connection) -> None:
    """A careful attacker puts the triggers back as they were."""
    db.execute("CREATE TRIGGER events_no_update BEFORE UPDATE ON events "
               "BEGIN SELECT RAISE(ABORT, 'journal is append-only: UPDATE refused'); END")  # fmt: skip
    db.execute("CREATE TRIGGER events_no_delete BEFORE DELETE ON events "
               "BEGIN SELECT RAISE(ABORT, 'journal is append-only: DELETE refused'); END")  # fmt: skip


def test_dropped_triggers_an_edited_setpoint_and_deleted_last_rows_are_found_by_verify(tmp_path) -> None:
    """The red-team sequence (triggers dropped, one setpoint value changed, the last two
    rows deleted): ``--summary`` no longer says all is well, ``--verify`` names the edited
    row as the first broken link, the deleted tail (from three independent head records)
    and the missing triggers, and exits 1. An untouched journal verifies with exit 0."""
    path = tmp_path / "journal.db"
    setpoints(path)
    ok = events_cli("--journal", path, "--verify")
    assert ok.returncode == 0 and "intact" in ok.stdout, ok.stdout + ok.stderr
    db = attacker(path)
    db.execute("UPDATE events SET value = 135.0 WHERE id = 7")
    db.execute("DELETE FROM events WHERE id > 18")
    db.close()
    out = events_cli("--journal", path, "--verify")
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert "NOT INTACT" in lines[0]
    assert lines[1].startswith("  first broken link at id 7: id 7 (setpoint_write): content does not match its hash")
    assert "the head record says id 20 but the file ends at id 18: rows 19..20 deleted at the end" in out.stdout
    assert "ids up to 20 were issued but the file ends at id 18" in out.stdout
    assert "the head file says id 20 but the file ends at id 18" in out.stdout
    assert "append-only trigger events_no_update is missing" in out.stdout
    summary = events_cli("--journal", path, "--summary")
    assert summary.returncode == 1 and "chain NOT intact" in summary.stdout
    js = json.loads(events_cli("--journal", path, "--verify", "--json").stdout)
    assert js["ok"] is False and js["files"][0]["findings"][0]["id"] == 7


def test_deleting_the_last_rows_is_seen_unless_every_head_record_is_rewritten(tmp_path) -> None:
    """Rows deleted at the end with the in-file heads (``journal_meta`` head, the id
    sequence) rewritten to match: the head file beside the journal still says more rows
    existed. Rewriting that too defeats an unkeyed chain (the documented limit) unless a
    head hash was kept elsewhere (``--anchor``, from the daemon's log); a keyed chain's
    head records carry a MAC the attacker cannot make."""
    for keyed in (False, True):
        d = tmp_path / ("keyed" if keyed else "plain")
        d.mkdir()
        key = os.urandom(32) if keyed else None
        path = d / "journal.db"
        setpoints(path, hmac_key=key)
        with Journal(path, readonly=True) as r:
            anchor = f"20:{r.hash_of(20)}"  # what the daemon's log kept of the head
        db = attacker(path)
        h18 = db.execute("SELECT hash FROM events WHERE id = 18").fetchone()[0]
        db.execute("DELETE FROM events WHERE id > 18")
        db.execute("UPDATE sqlite_sequence SET seq = 18 WHERE name = 'events'")
        db.execute("UPDATE journal_meta SET value = ? WHERE key = 'head'", (json.dumps({"id": 18, "hash": h18}),))
        restore_triggers(db)
        db.close()
        (rep,) = verify_files([path], key)
        whats = [f.what for f in rep.findings if f.fatal]
        assert any("the head file says id 20 but the file ends at id 18" in w for w in whats), whats
        Path(f"{path}.head").write_text(json.dumps({"id": 18, "hash": h18}).ljust(255) + "\n")
        (rep,) = verify_files([path], key)
        if keyed:
            assert not rep.ok and any("MAC is wrong" in f.what for f in rep.findings), rep.findings
        else:
            assert rep.ok, "an unkeyed chain with every head rewritten consistently is not detectable"
            out = events_cli("--journal", path, "--verify", "--anchor", anchor)
            assert out.returncode == 1 and "anchor id 20 (kept elsewhere) is beyond the end" in out.stdout
            bad = events_cli("--journal", path, "--verify", "--anchor", "20:xyz")
            assert bad.returncode == 2 and "--anchor expects ID:HASH" in bad.stderr


def test_the_writer_recreates_dropped_triggers_and_journals_what_it_found(tmp_path) -> None:
    """A writer opening a tampered file re-creates the triggers (UPDATE refused again) and
    records what it found as a ``journal_tampered`` alarm entry, so the evidence outlives
    the next commit; ``--verify`` keeps reporting it."""
    path = tmp_path / "journal.db"
    setpoints(path)
    db = attacker(path)
    db.execute("DELETE FROM events WHERE id > 18")
    db.close()
    with Journal(path) as j:
        (ev,) = j.query(kinds=["journal_tampered"])
        assert ev.category == "alarm" and ev.id == 21
        assert "append-only trigger events_no_update was missing: re-created" in ev.detail
        assert "rows 19..20 deleted" in ev.detail
        assert j._db is not None
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            j._db.execute("UPDATE events SET value = 1 WHERE id = 3")
        j.record(kind="daemon_start")
    out = events_cli("--journal", path, "--verify")
    assert out.returncode == 1 and "ids 19..20 missing before id 21: rows deleted" in out.stdout
    assert "tampering found by the writer, journalled at id 21" in out.stdout


def test_a_foreign_trigger_that_would_swallow_entries_is_reported_and_dropped(tmp_path) -> None:
    """``BEFORE INSERT ... RAISE(IGNORE)`` would make commits succeed while writing
    nothing: ``--verify`` reports the foreign trigger, the writer drops it at open and
    refuses a commit whose insert was suppressed anyway."""
    path = tmp_path / "journal.db"
    setpoints(path, 3)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TRIGGER hide BEFORE INSERT ON events WHEN NEW.kind = 'setpoint_write' "
               "BEGIN SELECT RAISE(IGNORE); END")  # fmt: skip
    db.close()
    (rep,) = verify_files([path])
    assert any("foreign trigger hide" in f.what for f in rep.findings if f.fatal)
    with Journal(path) as j:
        assert j.record(kind="setpoint_write", value=1.0).id == 5  # 4 is the journal_tampered entry
        assert "foreign trigger hide on events dropped" in j.query(kinds=["journal_tampered"])[0].detail


def test_rotated_files_form_one_chain_and_a_rewritten_archive_breaks_the_link(tmp_path) -> None:
    """Each rotated file's chain starts at the previous file's last hash: ``--verify
    --with-archives`` checks the whole history. An archive whose rows were edited and its
    chain recomputed end to end (consistent in itself) no longer links to the next file."""
    path = tmp_path / "journal.db"
    j = Journal(path)
    archives = []
    for _ in range(2):
        for k in range(10):
            j.append(kind="setpoint_write", value=float(k))
        j.commit()
        archives.append(j.rotate())
    j.record(kind="daemon_stop")
    j.close()
    out = events_cli("--journal", path, "--with-archives", "--verify")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("intact") == 4  # three files and the verdict
    one = events_cli("--journal", path, "--verify")  # the live file alone: the link is a note
    assert one.returncode == 0 and "rotated: previous entries in" in one.stdout
    first = archives[0]
    os.chmod(first, 0o640)
    db = attacker(first)
    db.execute("UPDATE events SET value = 42.0 WHERE id = 5")
    h = "0" * 64
    rows = db.execute("SELECT id, kind, category, ts_utc, t_plant_s, plant, line, room, cell, source, tag, value, "
                      "mode, user, detail, data, t_mono_s, ts_order FROM events ORDER BY id").fetchall()  # fmt: skip
    for r in rows:  # the attacker knows the scheme and recomputes the archive's chain
        h = _link(h, _canonical(r), None)
        db.execute("UPDATE events SET hash = ? WHERE id = ?", (h, r[0]))
    db.execute("UPDATE journal_meta SET value = ? WHERE key = 'head'", (json.dumps({"id": rows[-1][0], "hash": h}),))
    restore_triggers(db)
    db.close()
    (alone,) = verify_files([first])
    assert alone.ok, "consistent in itself"
    out = events_cli("--journal", path, "--with-archives", "--verify")
    assert out.returncode == 1
    assert f"does not link to {first.name}" in out.stdout, out.stdout


def test_a_schema_1_journal_is_migrated_and_its_old_rows_sealed(tmp_path) -> None:
    """A journal written before the hash chain: readable as before, migrated by the next
    writer (columns added, old rows sealed as one digest in the genesis), verification
    starts at the first hashed row and says so; editing an old row afterwards is found."""
    path = tmp_path / "journal.db"
    db = sqlite3.connect(path)
    db.executescript(SCHEMA_V1)
    db.executemany("INSERT INTO events (kind, category, ts_utc, value) VALUES (?, ?, ?, ?)",
                   [("setpoint_write", "setpoint", f"2026-01-01T00:00:{k:02d}.000000Z", 100.0 + k)
                    for k in range(12)])  # fmt: skip
    db.commit()
    db.close()
    with Journal(path, readonly=True) as r:
        assert r.schema_version == 1 and len(r.query(since="2026-01-01T00:00:05Z")) == 7
        (rep,) = [r.verify()]
        assert rep.ok and "written before the hash chain" in rep.findings[0].what
    with Journal(path) as j:
        assert j.schema_version == 2
        assert j.record(kind="daemon_start").id == 13
    out = events_cli("--journal", path, "--verify")
    assert out.returncode == 0, out.stdout
    assert "ids 1..12 predate the hash chain" in out.stdout and "from id 13" in out.stdout
    db = attacker(path)
    db.execute("UPDATE events SET value = 1.0 WHERE id = 4")
    db.close()
    out = events_cli("--journal", path, "--verify")
    assert out.returncode == 1 and "a row among ids 1..12 (sealed at the migration) was changed" in out.stdout


def test_keyed_chain_needs_its_key(tmp_path) -> None:
    """HMAC key from a file: refused when others may read it or when short; a keyed file is
    verified only with its key (CLI ``--key-file``), a writer without it or with another
    key is refused; an unkeyed journal given a key is archived and goes on keyed, the two
    files still one chain."""
    key_file = tmp_path / "journal.key"
    key_file.write_text(os.urandom(32).hex() + "\n")
    os.chmod(key_file, 0o644)
    with pytest.raises(JournalError, match="must not be readable or writable by others"):
        load_key(key_file)
    os.chmod(key_file, 0o600)
    key = load_key(key_file)
    short = tmp_path / "short.key"
    short.write_text("abc")
    os.chmod(short, 0o600)
    with pytest.raises(JournalError, match="expected at least 16"):
        load_key(short)
    path = tmp_path / "journal.db"
    setpoints(path, 5)
    with Journal(path, hmac_key=key) as j:  # unkeyed file + key: archived, continued keyed
        assert j.query()[0].kind == "journal_rotated" and j.query()[0].data["keyed"]
        j.record(kind="daemon_start")
    archives = sorted(tmp_path.glob("journal-*.db"))
    assert len(archives) == 1
    with pytest.raises(JournalError, match="is keyed"):
        Journal(path)
    with pytest.raises(JournalError, match="key does not match"):
        Journal(path, hmac_key=os.urandom(32))
    assert events_cli("--journal", path, "--with-archives", "--verify", "--key-file", key_file).returncode == 0
    nokey = events_cli("--journal", path, "--verify")
    assert nokey.returncode == 1 and "give the key (--key-file)" in nokey.stdout
    (rep,) = verify_files([path], os.urandom(32))
    assert not rep.ok and any("is not this file's" in f.what for f in rep.findings)


_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)) | st.sampled_from(["\ud800", "\x00"]),
                max_size=20)  # fmt: skip
_float = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([-0.0, 2.0**62, 1e308, 5e-324])


@given(rows=st.lists(st.fixed_dictionaries({
    "kind": _text.filter(bool), "detail": _text, "room": st.none() | _text, "value": st.none() | _float,
    "t_plant_s": st.none() | _float, "cell": st.none() | st.integers(-(2**70), 2**70),
    "data": st.dictionaries(_text, _float | _text | st.integers(-(2**70), 2**70), max_size=3),
}), min_size=1, max_size=8))  # fmt: skip
@settings(max_examples=40)
def test_any_values_commit_and_verify(rows) -> None:
    """Whatever the daemon hands over (NaN, -0.0, huge ints, lone surrogates, NULs): the
    commit succeeds and the chain recomputed from what SQLite gives back matches."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "j.db"
        with Journal(path, synchronous="NORMAL") as j:  # values, not durability: no fsync per example
            for r in rows:
                j.append(**r)
            assert len(j.commit()) == len(rows)
            rep = j.verify()
        assert rep.ok, rep.findings
