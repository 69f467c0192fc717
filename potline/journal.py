"""The event journal: an append-only SQLite file in WAL mode that survives a crash.

What goes in: anode-effect starts/ends and quench actions, setpoint and command
writes (with what the safety layer did), mode changes (who, from, to, how), alarms
raised and cleared, PLC comms faults and recoveries, and the daemon's own start/stop.
One row per event (``Event``), identified by a monotonically increasing ``id``.

Durability (why ``synchronous=FULL`` is the default):

* The file is in WAL mode: a commit appends to ``<file>-wal``; readers (``potline
  events``) never block the daemon and see every committed row.
* A ``kill -9`` of the daemon loses nothing that was committed, with FULL *or*
  NORMAL: a commit returns only after its WAL frames are written to the OS, and the
  OS keeps them when the process dies. The next open replays the WAL.
* Power loss or a kernel crash is different: with NORMAL, WAL frames are fsynced
  only at checkpoints, so the last transactions before the failure can be rolled
  back (the file stays consistent). FULL fsyncs the WAL at every commit, so a
  committed entry also survives a power cut. The daemon commits once per control
  cycle (a batch of entries) and at once for mode changes, i.e. about one fsync per
  second: a few milliseconds, well worth an audit trail of setpoint writes that
  holds after a power failure. NORMAL is available for SD-card class storage.

Append-only is enforced by the schema: triggers abort any UPDATE or DELETE on the
events table. The schema is versioned with ``PRAGMA user_version``; opening a file
with a newer version than this code knows is refused, older versions are migrated.

No clock calls in the query logic: timestamps are supplied by the caller
(``ts_utc`` wall-clock ISO-8601 and ``t_plant_s`` plant time) or taken at append.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "CATEGORIES",
    "SCHEMA_VERSION",
    "Event",
    "Journal",
    "JournalError",
    "category_of",
]

#: version of the on-disk schema (PRAGMA user_version)
SCHEMA_VERSION = 1

#: event categories (``potline events --category``)
CATEGORIES = ("ae", "setpoint", "mode", "alarm", "comms", "control", "daemon")

#: event kind -> category for the kinds the daemon writes (others: "control")
_KIND_CATEGORY = {
    "ae_start": "ae",
    "ae_end": "ae",
    "lvae_start": "ae",
    "lvae_end": "ae",
    "ae_predicted": "ae",
    "ae_unconfirmed": "ae",
    "quench": "ae",
    "quench_escalated": "ae",
    "ae_escalation": "alarm",
    "ae_repeating": "alarm",
    "rectifier_trip": "alarm",
    "rectifier_restart": "control",
    "daemon_error": "alarm",
    "setpoint_write": "setpoint",
    "command_write": "setpoint",
    "mode_change": "mode",
    "mode_refused": "mode",
    "alarm": "alarm",
    "alarm_cleared": "alarm",
    "feeder_fault": "alarm",
    "sensor_frozen": "alarm",
    "sensor_recovered": "alarm",
    "comms_lost": "comms",
    "comms_restored": "comms",
    "daemon_start": "daemon",
    "daemon_stop": "daemon",
    "unclean_shutdown": "daemon",
    "journal_rotated": "daemon",
    "handback": "daemon",
}

Synchronous = Literal["FULL", "NORMAL"]


def category_of(kind: str) -> str:
    """Category of an event kind (``quench_*`` -> ae; unknown kinds -> control)."""
    if kind in _KIND_CATEGORY:
        return _KIND_CATEGORY[kind]
    if kind.startswith("quench"):
        return "ae"
    return "control"


class JournalError(RuntimeError):
    """The journal file cannot be used (newer schema, not a journal, unwritable)."""


@dataclass(slots=True)
class Event:
    """One journal entry.

    Attributes:
        kind: what happened (``ae_start``, ``setpoint_write``, ``mode_change``, ...).
        category: ae | setpoint | mode | alarm | comms | control | daemon (from ``kind``).
        ts_utc: wall-clock time, ISO-8601 UTC with microseconds.
        t_plant_s: plant time [s] (the daemon's clock), None when not applicable.
        plant, line, room: ISA-95 location; cell: floor number in its room (1-based).
        source: PLC or subsystem name (``rectifier1``, ``opcua``, ``signal``, ...).
        tag: PLC tag for writes; value: numeric value (written setpoint, AE peak V, ...).
        mode: daemon mode when the event happened; user: who asked (mode changes).
        detail: one human line; data: extra structured fields (JSON object).
        id: row id, assigned at append (increasing, no gaps within one file).
    """

    kind: str
    category: str = ""
    ts_utc: str = ""
    t_plant_s: float | None = None
    plant: str | None = None
    line: str | None = None
    room: str | None = None
    cell: int | None = None
    source: str | None = None
    tag: str | None = None
    value: float | None = None
    mode: str | None = None
    user: str | None = None
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready), ``None`` fields dropped."""
        d = {k: getattr(self, k) for k in self.__slots__}
        return {k: v for k, v in d.items() if v is not None and v != {} and v != ""}


_COLUMNS = ("kind", "category", "ts_utc", "t_plant_s", "plant", "line", "room", "cell", "source", "tag",
            "value", "mode", "user", "detail", "data")  # fmt: skip

_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT NOT NULL,
    category   TEXT NOT NULL,
    ts_utc     TEXT NOT NULL,
    t_plant_s  REAL,
    plant      TEXT,
    line       TEXT,
    room       TEXT,
    cell       INTEGER,
    source     TEXT,
    tag        TEXT,
    value      REAL,
    mode       TEXT,
    user       TEXT,
    detail     TEXT NOT NULL DEFAULT '',
    data       TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts_utc);
CREATE INDEX IF NOT EXISTS events_kind ON events (kind, id);
CREATE INDEX IF NOT EXISTS events_category ON events (category, id);
CREATE INDEX IF NOT EXISTS events_cell ON events (room, cell, id);
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'journal is append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'journal is append-only: DELETE refused'); END;
"""


def utc_now_iso() -> str:
    """Wall-clock time now, ISO-8601 UTC with microseconds (sorts as text)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _to_iso(t: datetime | str) -> str:
    """UTC ISO 8601 with microseconds and "Z" (naive datetimes are taken as UTC); str as given."""
    if isinstance(t, str):
        return t
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Journal:
    """Append-only event journal in one SQLite file.

    Args:
        path: the database file (created with its directory; mode 0640).
        synchronous: "FULL" (default; survives power loss) or "NORMAL" (survives a
            process crash; see the module docstring).
        readonly: open for queries only (``potline events``); never creates the file.
        max_bytes: cap on the database file [bytes] (SQLite ``max_page_count``); a commit
            that would pass it fails like on a full disk (``set_max_bytes`` changes it).

    Writers ``append`` events (kept in memory) and ``commit`` them in one transaction;
    ``record`` does both. Thread-safe (one lock around the connection).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Synchronous = "FULL",
        readonly: bool = False,
        max_bytes: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, got {synchronous!r}")
        self.synchronous = synchronous
        self._lock = threading.Lock()
        self._pending: list[Event] = []
        self.committed = 0  # rows committed by this instance
        self.last_id: int | None = None
        self._lockfile: Any = None
        if readonly:
            if not self.path.is_file():
                raise JournalError(f"{self.path}: no journal file")
            # mode=ro still lets SQLite read the WAL; the daemon may be writing meanwhile
            uri = f"file:{self.path.resolve()}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, timeout=10.0, check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lockfile = _lock_writer(self.path)
            self._db = self._connect_writer()
        self._max_bytes = max_bytes
        try:
            self._setup()
            if max_bytes is not None and not readonly:
                self.set_max_bytes(max_bytes)
        except sqlite3.DatabaseError as exc:
            self._db.close()
            self._unlock()
            raise JournalError(f"{self.path}: not a usable journal ({exc})") from None

    # ------------------------------------------------------------------ setup

    def _connect_writer(self) -> sqlite3.Connection:
        """The writer's connection (autocommit: transactions are explicit); a file it
        creates is readable by owner and group only (0640)."""
        fresh = not self.path.exists()
        db = sqlite3.connect(str(self.path), timeout=10.0, check_same_thread=False, isolation_level=None)
        if fresh:
            with _suppress_os():
                os.chmod(self.path, 0o640)
        return db

    def _setup(self) -> None:
        db = self._db
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"{self.path}: journal schema version {version} is newer than this program's "
                f"({SCHEMA_VERSION}); upgrade potline-twin"
            )
        if self.readonly:
            if version == 0:
                raise JournalError(f"{self.path}: not a potline journal (schema version 0)")
            return
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise JournalError(f"{self.path}: cannot switch to WAL mode (got {mode!r})")
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        db.execute("PRAGMA foreign_keys=ON")
        if version == 0:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if tables - {"sqlite_sequence"}:
                raise JournalError(
                    f"{self.path}: an SQLite file that is not a potline journal (tables {sorted(tables)})"
                )
            # one transaction: a crash while creating leaves either nothing or the whole schema
            db.executescript(f"BEGIN IMMEDIATE;\n{_SCHEMA_V1}\nPRAGMA user_version={SCHEMA_VERSION};\nCOMMIT;")
        row = db.execute("SELECT MAX(id) FROM events").fetchone()
        self.last_id = int(row[0]) if row and row[0] is not None else None

    # ------------------------------------------------------------------ writing

    def append(self, event: Event | None = None, /, **fields: Any) -> Event:
        """Queue one event for the next ``commit`` (an ``Event`` or its fields)."""
        if self.readonly:
            raise JournalError(f"{self.path}: opened read-only")
        ev = event if event is not None else Event(**fields)
        if not ev.category:
            ev.category = category_of(ev.kind)
        if not ev.ts_utc:
            ev.ts_utc = utc_now_iso()
        with self._lock:
            self._pending.append(ev)
        return ev

    def set_max_bytes(self, max_bytes: int | None) -> None:
        """Cap the database file at ``max_bytes`` [bytes] (None: no cap but the disk's).

        Never below what the file holds already: SQLite keeps the larger of the two.
        """
        page = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        pages = 1_073_741_823 if max_bytes is None else max(int(max_bytes) // page, 1)
        with self._lock:
            self._db.execute(f"PRAGMA max_page_count = {pages}")
        self._max_bytes = max_bytes

    def size_bytes(self) -> int:
        """Bytes on disk: the database file plus its write-ahead log."""
        return sum(p.stat().st_size for p in (self.path, self.path.with_name(self.path.name + "-wal")) if p.exists())

    def rotate(self) -> Path:
        """Close the current file as an archive and go on in a fresh one at the same path.

        Pending events are committed first (on an SQLite error nothing is rotated and the
        error is raised). The archive is renamed to ``<stem>-<first id>-<last id>-<UTC
        time><suffix>`` beside the journal, complete and checkpointed; ids in the new file
        continue after the archive's last one, so the files together have no gap and no
        duplicate. Readers that hold the old file open keep reading it. Returns the
        archive's path.
        """
        if self.readonly:
            raise JournalError(f"{self.path}: opened read-only")
        self.commit()
        with self._lock:
            db = self._db
            row = db.execute("SELECT MIN(id), MAX(id) FROM events").fetchone()
            first, last = (int(row[0]), int(row[1])) if row and row[0] is not None else (0, 0)
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            db.close()
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            archive = self.path.with_name(f"{self.path.stem}-{first}-{last}-{stamp}{self.path.suffix}")
            os.replace(self.path, archive)
            with _suppress_os():
                os.chmod(archive, 0o440)
            self._db = self._connect_writer()
            self._setup()
            if last:
                self._db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('events', ?)", (last,))
            self.last_id = last or None
        if self._max_bytes is not None:
            self.set_max_bytes(self._max_bytes)
        return archive

    @property
    def pending(self) -> int:
        """Events appended but not committed yet."""
        return len(self._pending)

    def pending_events(self) -> list[Event]:
        """The events appended but not committed yet, oldest first (a copy)."""
        with self._lock:
            return list(self._pending)

    def commit(self) -> list[Event]:
        """Write every pending event in one transaction; returns them with their ids.

        When this returns, the events are durable (module docstring). On an SQLite
        error the events stay pending and the error is raised (retry later).
        """
        with self._lock:
            if not self._pending:
                return []
            batch = self._pending
            rows = [
                (e.kind, e.category, e.ts_utc, _num(e.t_plant_s), e.plant, e.line, e.room,
                 None if e.cell is None else int(e.cell), e.source, e.tag, _num(e.value), e.mode, e.user,
                 e.detail or "", _dump(e.data) if e.data else "{}")
                for e in batch
            ]  # fmt: skip
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                last: int | None = None
                for r in rows:
                    last = db.execute(
                        f"INSERT INTO events ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})", r
                    ).lastrowid
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            assert last is not None  # sqlite3 sets lastrowid on every INSERT; the batch is not empty
            for i, e in enumerate(batch):
                e.id = last - len(batch) + 1 + i
            self._pending = []
            self.committed += len(batch)
            self.last_id = last
            return batch

    def record(self, event: Event | None = None, /, **fields: Any) -> Event:
        """Append one event and commit at once (with any other pending ones)."""
        ev = self.append(event, **fields)
        self.commit()
        return ev

    # ------------------------------------------------------------------ queries

    def query(
        self,
        *,
        kinds: Sequence[str] | None = None,
        categories: Sequence[str] | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        room: str | None = None,
        cell: int | None = None,
        after_id: int | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[Event]:
        """Events matching every given filter, in id order (or newest first).

        ``since``/``until`` compare wall-clock UTC times (inclusive / exclusive).
        """
        where: list[str] = []
        args: list[str | int] = []
        if kinds:
            where.append(f"kind IN ({','.join('?' * len(kinds))})")
            args += list(kinds)
        if categories:
            where.append(f"category IN ({','.join('?' * len(categories))})")
            args += list(categories)
        if since is not None:
            where.append("ts_utc >= ?")
            args.append(_to_iso(since))
        if until is not None:
            where.append("ts_utc < ?")
            args.append(_to_iso(until))
        if room is not None:
            where.append("room = ?")
            args.append(room)
        if cell is not None:
            where.append("cell = ?")
            args.append(int(cell))
        if after_id is not None:
            where.append("id > ?")
            args.append(int(after_id))
        sql = f"SELECT id, {', '.join(_COLUMNS)} FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC" if newest_first else " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [_row_event(r) for r in rows]

    def iter_all(self, batch: int = 5000) -> Iterator[Event]:
        """Every event in id order, fetched in batches."""
        after = 0
        while True:
            chunk = self.query(after_id=after, limit=batch)
            if not chunk:
                return
            yield from chunk
            last_id = chunk[-1].id
            assert last_id is not None  # events read from the file carry their ids
            after = last_id

    def count(self, *, kinds: Sequence[str] | None = None, categories: Sequence[str] | None = None) -> int:
        """Number of committed events (optionally of some kinds / categories)."""
        where, args = [], []
        if kinds:
            where.append(f"kind IN ({','.join('?' * len(kinds))})")
            args += list(kinds)
        if categories:
            where.append(f"category IN ({','.join('?' * len(categories))})")
            args += list(categories)
        sql = "SELECT COUNT(*) FROM events" + (" WHERE " + " AND ".join(where) if where else "")
        with self._lock:
            return int(self._db.execute(sql, args).fetchone()[0])

    def ids(self) -> list[int]:
        """All row ids in order (integrity checks: no gaps, nothing lost)."""
        with self._lock:
            return [int(r[0]) for r in self._db.execute("SELECT id FROM events ORDER BY id")]

    def last(self, kinds: Iterable[str] | None = None) -> Event | None:
        """The newest event (of ``kinds``), or None."""
        got = self.query(kinds=list(kinds) if kinds else None, limit=1, newest_first=True)
        return got[0] if got else None

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` result ("ok" when sound)."""
        with self._lock:
            return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])

    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    # ------------------------------------------------------------------ lifecycle

    def checkpoint(self) -> None:
        """Fold the WAL into the main file (done at clean shutdown; optional)."""
        if self.readonly:
            return
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        """Commit what is pending, checkpoint and close."""
        try:
            if not self.readonly and self._pending:
                self.commit()
            self.checkpoint()
        finally:
            with self._lock:
                self._db.close()
            self._unlock()

    def _unlock(self) -> None:
        f, self._lockfile = self._lockfile, None
        if f is not None:
            f.close()  # releases the flock

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _lock_writer(path: Path) -> Any:
    """Hold an exclusive flock on ``<journal>.lock`` (one writer per journal; the kernel
    drops it when the process dies, so a ``kill -9`` never leaves a stale lock)."""
    import fcntl

    lock_path = path.with_name(path.name + ".lock")
    f = open(lock_path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the journal's life
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "?"
        f.close()
        raise JournalError(f"{path}: journal is in use by another writer (pid {holder})") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def _row_event(r: Sequence[Any]) -> Event:
    (rid, kind, category, ts, t_plant, plant, line, room, cell, source, tag, value, mode, user, detail, data) = r
    try:
        d = json.loads(data) if data else {}
    except ValueError:
        d = {"raw": data}
    return Event(kind=kind, category=category, ts_utc=ts, t_plant_s=t_plant, plant=plant, line=line, room=room,
                 cell=cell, source=source, tag=tag, value=value, mode=mode, user=user, detail=detail or "",
                 data=d, id=int(rid))  # fmt: skip


def _num(x: Any) -> float | None:
    """A finite float or None (SQLite REAL has no NaN; inf is kept as text in data)."""
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if v == v and v not in (float("inf"), float("-inf")) else None


def _dump(data: dict[str, Any]) -> str:
    """JSON text of ``data``; NaN/inf become strings (never a failed commit over a value)."""
    try:
        return json.dumps(data, default=_json_default, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(data), default=_json_default, allow_nan=False)


def _finite(o: Any) -> Any:
    if isinstance(o, float) and not (o == o and abs(o) != float("inf")):
        return str(o)
    if isinstance(o, dict):
        return {str(k): _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if hasattr(o, "item") and hasattr(o, "dtype"):
        return _finite(o.item()) if getattr(o, "ndim", 0) == 0 else _finite(o.tolist())
    return o


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, datetime):
        return _to_iso(o)
    if isinstance(o, Path):
        return str(o)
    return str(o)


class _suppress_os:
    def __enter__(self) -> None:
        return None

    def __exit__(self, et: Any, ev: Any, tb: Any) -> bool:
        return et is not None and issubclass(et, OSError)
