"""The event journal: an append-only, hash-chained SQLite file in WAL mode that survives a
crash, notices when it is deleted or edited, and never loses what it acknowledged.

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

**Append-only**: triggers abort any UPDATE or DELETE on the events table; the writer
re-creates them at every open (dropped, altered or foreign triggers are replaced and the
finding journalled as ``journal_tampered``). The schema is versioned with ``PRAGMA
user_version``; a newer version is refused, schema 1 is migrated (below).

**Tamper evidence (hash chain)**: every row stores ``hash = H(previous hash, canonical
content)`` with H = SHA-256, or HMAC-SHA-256 when a key is given (``hmac_key``,
``load_key``). The canonical content is the row's columns as SQLite gives them back
(``_canonical``). A file's chain starts at its *genesis* (``journal_meta``): zeros for a
new journal, the last hash of the archive for a rotated file, the digest of every
schema-1 row for a migrated one (those rows carry no hash of their own, but editing any
of them breaks the digest). The head (last id and hash) is kept three times, updated with
every commit: in ``journal_meta`` (same transaction), in ``sqlite_sequence`` (ids are never
reused) and in the sidecar ``<journal>.head`` beside the file; so deleting the last rows
is seen unless all three are rewritten consistently. ``verify`` (``potline events
--verify``) reports the first broken link. What it cannot see: someone who rewrites the
whole chain and both head records consistently (without the HMAC key they cannot forge
a keyed chain, but they can still truncate it to an earlier row and replay an earlier
head record they saved: only a head hash kept elsewhere, e.g. the daemon's log of
``head_id``/``head_hash``, closes that), nor edits made before a schema-1 file was migrated.

**The file vanishing under the writer**: SQLite keeps writing into a deleted inode, so
every commit (and ``pending``, which a daemon checks every cycle) compares the path's
``os.stat`` with the open file's (own descriptors on the database and its ``-wal``; size
shrinking counts too). When the path no longer names the open file (deleted, moved,
replaced, truncated), the commit fails with ``JournalLost`` after recovering: foreign
files at the path are moved aside (``<name>.foreign-<time>``), every row is read back
through the still-open handle into a fresh file at the path (ids and hashes kept), a
``journal_lost`` entry (category alarm) says what happened and which ids were in the lost
file (and whether they were all recovered), the held entries stay pending and go into
the new file at the next commit. ``take_lost`` tells the daemon once per loss (it keeps
control disarmed until an operator re-arms).

**Time**: each entry has its wall-clock time ``ts_utc`` as read, its monotonic time
``t_mono_s`` and ``ts_order``: wall time made non-decreasing over the file (a backwards
jump of the wall clock advances ``ts_order`` by the monotonic time instead). ``since``/
``until`` compare ``ts_order``, so a time window is a contiguous id range and no entry
becomes invisible when the wall clock jumps back.

**Held entries** (a commit failed: disk full, ``max_bytes``): kept in memory up to
``max_held``; more are spilled in order to ``<journal>.held`` (JSON lines, chained
hashes), folded into the journal at the next commit (``max_held`` per commit, ids
contiguous, progress recorded in the same transaction so nothing goes in twice) or at
the next open. Only when the spill file cannot be written either (the disk itself is
full) and ``2 * max_held`` are in memory are new entries dropped; they are counted and a
``journal_entries_dropped`` alarm entry says how many of which kind once the journal
takes entries again. ``all_committed`` says whether everything appended was committed
(the daemon's exit status at stop).

No clock calls in the query logic: timestamps are supplied by the caller (``ts_utc``,
``t_plant_s``) or taken at append from the injected ``wall``/``mono`` clocks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import structlog

__all__ = [
    "CATEGORIES",
    "SCHEMA_VERSION",
    "Event",
    "Finding",
    "Journal",
    "JournalError",
    "JournalLoss",
    "JournalLost",
    "VerifyReport",
    "category_of",
    "load_key",
    "verify_files",
]

log = structlog.get_logger("potline.journal")

#: version of the on-disk schema (PRAGMA user_version); 1: no hash chain
SCHEMA_VERSION = 2

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
    "journal_lost": "alarm",
    "journal_tampered": "alarm",
    "journal_entries_dropped": "alarm",
    "opcua_login_failed": "alarm",
    "opcua_login_refused": "alarm",
    "opcua_write_denied": "alarm",
    "opcua_call_denied": "alarm",
    "handback": "daemon",
}

Synchronous = Literal["FULL", "NORMAL"]

#: genesis hash of a new journal (no predecessor)
ZERO_HASH = "0" * 64
#: in-memory held entries before spilling to ``<journal>.held`` (``Journal(max_held=...)``)
DEFAULT_MAX_HELD = 10_000
#: a backwards step of the wall clock larger than this [s] makes ``ts_order`` follow the
#: monotonic clock instead
CLOCK_STEP_TOLERANCE_S = 1.0
#: at most this many findings are kept by ``verify``
MAX_FINDINGS = 50

_INT64 = (-(2**63), 2**63 - 1)


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
class JournalLoss:
    """The journal's path stopped naming the file the writer had open.

    Attributes:
        what: deleted | moved | replaced | truncated | wal_deleted | wal_replaced | wal_truncated.
        detail: one human line (what was seen at the path).
        first_id, last_id: the ids the lost file held (as far as the writer knew).
        recovered: every one of them was read back through the open handle into the new file.
        entry_id: id of the ``journal_lost`` entry in the new file.
        moved_aside: foreign files found at the path, renamed beside it.
        ts_utc: when it was detected (wall clock).
    """

    what: str
    detail: str
    first_id: int | None = None
    last_id: int | None = None
    recovered: bool = False
    entry_id: int | None = None
    moved_aside: list[str] = field(default_factory=list)
    ts_utc: str = ""


class JournalLost(JournalError):
    """The commit found the journal file gone or replaced (``JournalLoss`` in ``loss``).

    The journal has already been re-created at its path with a ``journal_lost`` entry; the
    entries of the failed commit are still pending and go into the new file next time.
    """

    def __init__(self, loss: JournalLoss) -> None:
        super().__init__(f"journal file {loss.what}: {loss.detail}")
        self.loss = loss


@dataclass(slots=True)
class Event:
    """One journal entry.

    Attributes:
        kind: what happened (``ae_start``, ``setpoint_write``, ``mode_change``, ...).
        category: ae | setpoint | mode | alarm | comms | control | daemon (from ``kind``).
        ts_utc: wall-clock time as read, ISO-8601 UTC with microseconds.
        t_plant_s: plant time [s] (the daemon's clock), None when not applicable.
        plant, line, room: ISA-95 location; cell: floor number in its room (1-based).
        source: PLC or subsystem name (``rectifier1``, ``opcua``, ``signal``, ...).
        tag: PLC tag for writes; value: numeric value (written setpoint, AE peak V, ...).
        mode: daemon mode when the event happened; user: who asked (mode changes).
        detail: one human line; data: extra structured fields (JSON object).
        id: row id, assigned at commit (increasing, no gaps within one file).
        t_mono_s: the writer's monotonic clock at append [s] (comparable within one boot).
        ts_order: wall time made non-decreasing over the journal (what ``since``/``until`` use).
        hash: the row's link in the hash chain (hex), set at commit.
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
    t_mono_s: float | None = None
    ts_order: str = ""
    hash: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready), ``None`` fields dropped."""
        d = {k: getattr(self, k) for k in self.__slots__}
        return {k: v for k, v in d.items() if v is not None and v != {} and v != ""}


@dataclass(slots=True)
class Finding:
    """One thing ``verify`` found.

    Attributes:
        id: the row it concerns (None: the file as a whole).
        what: one human line (what differs from what was expected).
        fatal: the journal is not intact (``verify`` exits non-zero); False: a note.
    """

    id: int | None
    what: str
    fatal: bool = True


@dataclass(slots=True)
class VerifyReport:
    """What ``Journal.verify`` found in one file.

    Attributes:
        path: the file.
        rows: rows read; first_id, last_id: their id range (None when empty).
        hashed_from: first id that carries a hash (schema 1 rows before it are sealed in the genesis).
        genesis_id, genesis_hash, genesis_from: where the file's chain starts.
        head_hash: hash of the last row (what a following archive must link to).
        keyed: the chain is an HMAC (verified only with the key).
        findings: first broken link first, then the rest, notes included.
    """

    path: Path
    rows: int = 0
    first_id: int | None = None
    last_id: int | None = None
    hashed_from: int | None = None
    genesis_id: int = 0
    genesis_hash: str = ZERO_HASH
    genesis_from: str = ""
    head_hash: str | None = None
    keyed: bool = False
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No fatal finding."""
        return not any(f.fatal for f in self.findings)

    def add(self, id_: int | None, what: str, fatal: bool = True) -> None:
        if len(self.findings) < MAX_FINDINGS:
            self.findings.append(Finding(id_, what, fatal))
        elif len(self.findings) == MAX_FINDINGS:
            self.findings.append(Finding(None, "more findings not listed", fatal))

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": str(self.path), "ok": self.ok, "rows": self.rows, "first_id": self.first_id,
            "last_id": self.last_id, "hashed_from": self.hashed_from, "genesis_id": self.genesis_id,
            "genesis_from": self.genesis_from, "head_hash": self.head_hash, "keyed": self.keyed,
            "findings": [{"id": f.id, "what": f.what, "fatal": f.fatal} for f in self.findings],
        }  # fmt: skip


_COLUMNS = ("kind", "category", "ts_utc", "t_plant_s", "plant", "line", "room", "cell", "source", "tag",
            "value", "mode", "user", "detail", "data")  # fmt: skip
#: columns added by schema 2
_V2_COLUMNS = ("t_mono_s", "ts_order", "hash")
#: what the chain hashes, in this order: the id, the event columns, the two clocks
_HASHED = ("id", *_COLUMNS, "t_mono_s", "ts_order")

_TABLE_V1 = """
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
CREATE INDEX IF NOT EXISTS events_kind ON events (kind, id);
CREATE INDEX IF NOT EXISTS events_category ON events (category, id);
CREATE INDEX IF NOT EXISTS events_cell ON events (room, cell, id);
"""

#: schema-1 files also have ``events_ts ON events (ts_utc)``; schema 2 queries time by
#: ``events_order`` (one time index per row, not two)
_V2_ADDITIONS = """
CREATE TABLE IF NOT EXISTS journal_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_order ON events (COALESCE(ts_order, ts_utc));
"""

#: the triggers every writer open re-creates when missing or altered (name -> SQL as stored)
_TRIGGERS = {
    "events_no_update": "CREATE TRIGGER events_no_update BEFORE UPDATE ON events "
    "BEGIN SELECT RAISE(ABORT, 'journal is append-only: UPDATE refused'); END",
    "events_no_delete": "CREATE TRIGGER events_no_delete BEFORE DELETE ON events "
    "BEGIN SELECT RAISE(ABORT, 'journal is append-only: DELETE refused'); END",
    "meta_no_delete": "CREATE TRIGGER meta_no_delete BEFORE DELETE ON journal_meta "
    "BEGIN SELECT RAISE(ABORT, 'journal meta is append-only: DELETE refused'); END",
    "meta_fixed": "CREATE TRIGGER meta_fixed BEFORE UPDATE ON journal_meta WHEN OLD.key NOT IN ('head', 'spill') "
    "BEGIN SELECT RAISE(ABORT, 'journal meta is append-only: UPDATE refused'); END",
}


def utc_now_iso() -> str:
    """Wall-clock time now, ISO-8601 UTC with microseconds (sorts as text)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _epoch_iso(t: float) -> str:
    """Epoch seconds -> ISO-8601 UTC with microseconds and "Z"."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _iso_epoch(text: str) -> float | None:
    """ISO-8601 (naive = UTC) -> epoch seconds; None when not a time."""
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def _to_iso(t: datetime | str) -> str:
    """UTC ISO 8601 with microseconds and "Z" (naive = UTC), as stored: a string is parsed and
    written the same way (``...05Z`` would sort after ``...05.000000Z`` as text); kept as
    given when it is not a time."""
    if isinstance(t, str):
        e = _iso_epoch(t)
        return t if e is None else _epoch_iso(e)
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _norm_sql(sql: str | None) -> str:
    return " ".join((sql or "").split())


def _canonical(values: Sequence[Any]) -> bytes:
    """The bytes a row's hash covers: its ``_HASHED`` values, as SQLite gives them back, as JSON."""
    return json.dumps(list(values), ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _link(prev: str, canonical: bytes, key: bytes | None) -> str:
    """One link of the chain: H(previous hash, canonical content), hex."""
    msg = prev.encode("ascii", "replace") + b"\n" + canonical
    if key is not None:
        return hmac.new(key, msg, hashlib.sha256).hexdigest()
    return hashlib.sha256(msg).hexdigest()


def _head_mac(key: bytes | None, id_: int, h: str) -> str:
    """MAC of a head record (keyed chains only; '' without a key)."""
    if key is None:
        return ""
    return hmac.new(key, f"head\n{id_}\n{h}".encode(), hashlib.sha256).hexdigest()


def _key_id(key: bytes | None) -> str:
    """Public fingerprint of an HMAC key ('' for none): which key a keyed file needs."""
    if key is None:
        return ""
    return hashlib.sha256(b"potline-journal-key-id\n" + key).hexdigest()[:16]


def load_key(path: str | Path, *, strict: bool = True) -> bytes:
    """The HMAC key in ``path``: hex (64+ hex digits) or raw bytes, at least 16 bytes.

    Raises:
        JournalError: missing, too short, or (``strict``) readable or writable by others.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
        mode = p.stat().st_mode
    except OSError as exc:
        raise JournalError(f"{p}: cannot read the journal key ({exc.strerror or exc})") from None
    if strict and mode & 0o007:
        raise JournalError(f"{p}: the journal key must not be readable or writable by others "
                           f"(mode {mode & 0o777:o}; expected e.g. 0400, 0440 or 0600)")  # fmt: skip
    text = raw.strip()
    try:
        key = bytes.fromhex(text.decode("ascii")) if len(text) >= 64 else text
    except (UnicodeDecodeError, ValueError):
        key = text
    if len(key) < 16:
        raise JournalError(f"{p}: the journal key is {len(key)} bytes; expected at least 16 (e.g. 64 hex digits)")
    return key


def sidecar_path(path: Path) -> Path:
    """``<journal>.head``: the last committed id and hash, beside the journal."""
    return path.with_name(path.name + ".head")


def spill_path(path: Path) -> Path:
    """``<journal>.held``: entries held while the journal could not take them."""
    return path.with_name(path.name + ".held")


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


# ---------------------------------------------------------------------------------- the journal


def open_configured(loaded: Any) -> Journal | None:
    """The journal a daemon's loaded config names (``loaded.journal_path``, its ``[journal]``
    table, ``loaded.journal_key_file``), opened; None, logged as ``daemon.journal_unavailable``,
    when it cannot be (the daemon then exits 1)."""
    jc = loaded.config.journal
    try:
        key = load_key(loaded.journal_key_file) if loaded.journal_key_file is not None else None
        return Journal(loaded.journal_path, synchronous=jc.synchronous,
                       max_bytes=None if jc.max_mb is None else int(jc.max_mb * 1e6), hmac_key=key,
                       max_held=jc.max_held)  # fmt: skip
    except Exception as exc:
        log.error("daemon.journal_unavailable", path=str(loaded.journal_path), error=str(exc))
        return None


class Journal:
    """Append-only, hash-chained event journal in one SQLite file (module docstring).

    Args:
        path: the database file (created with its directory; mode 0640).
        synchronous: "FULL" (default; survives power loss) or "NORMAL" (survives a
            process crash; see the module docstring).
        readonly: open for queries only (``potline events``); never creates the file.
        max_bytes: cap on the database file [bytes] (SQLite ``max_page_count``); a commit
            that would pass it fails like on a full disk (``set_max_bytes`` changes it).
        hmac_key: key of a keyed chain (``load_key``); a file keyed with another key is
            refused, an unkeyed one is archived (``rotate``) and continued keyed.
        max_held: held entries kept in memory before they are spilled to ``<journal>.held``.
        wall, mono: clocks [s] (epoch wall time, monotonic); injectable for tests.

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
        hmac_key: bytes | None = None,
        max_held: int = DEFAULT_MAX_HELD,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, got {synchronous!r}")
        if max_held < 1:
            raise ValueError(f"max_held must be >= 1, got {max_held}")
        self.synchronous = synchronous
        self.max_held = int(max_held)
        self._key = hmac_key
        self._wall = wall
        self._mono = mono
        self._lock = threading.RLock()
        self._pending: list[Event] = []
        self._spill: _Spill | None = None
        self.committed = 0  # rows committed by this instance
        self.last_id: int | None = None
        self._head_hash = ZERO_HASH
        self._last_order = ""  # ts_order of the last committed row
        self._prev_append: tuple[float, float, float] | None = None  # (wall, mono, order) of the last append
        self._dropped: dict[str, int] = {}
        self._dropped_span: list[str] = []
        self._spill_retry_mono = -1e300  # no spill attempts before this (monotonic s) after a refusal
        self.dropped = 0  # entries given up since open (disk full and the spill refused them)
        self._lost: JournalLoss | None = None
        self._lost_unseen = False
        self._suspect: str | None = None  # why the path no longer names the open file (seen by ``pending``)
        self._ids: _FileIds | None = None
        self._db: sqlite3.Connection | None = None
        self._cols: set[str] = set()
        self._meta: dict[str, str] = {}
        self._lockfile: Any = None
        self._sidecar_fd: int | None = None
        #: what the writer found at open (dropped triggers, a truncated tail...), journalled
        self.open_findings: list[str] = []
        self._max_bytes = max_bytes
        if readonly:
            if not self.path.is_file():
                raise JournalError(f"{self.path}: no journal file")
            # mode=ro still lets SQLite read the WAL; the daemon may be writing meanwhile
            uri = f"file:{self.path.resolve()}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, timeout=10.0, check_same_thread=False)
            try:
                self._setup_readonly()
            except sqlite3.DatabaseError as exc:
                self._db.close()
                raise JournalError(f"{self.path}: not a usable journal ({exc})") from None
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lockfile = _lock_writer(self.path)
        try:
            self._open_writer(fresh_genesis=(0, ZERO_HASH, "new"))
            if self._key is not None and self._meta.get("chain") != "hmac-sha256":
                self._start_keyed_chain()
            self._open_sidecar()
            self._open_spill()
            self._journal_open_findings()
            with contextlib.suppress(sqlite3.Error, OSError, JournalError):
                while self._held_count() and self._commit_locked():
                    pass
        except sqlite3.DatabaseError as exc:
            self._close_files()
            self._unlock()
            raise JournalError(f"{self.path}: not a usable journal ({exc})") from None
        except BaseException:
            self._close_files()
            self._unlock()
            raise

    # ------------------------------------------------------------------ setup

    @property
    def db(self) -> sqlite3.Connection:
        """The open connection (raises when the writer lost its file and could not reopen)."""
        if self._db is None:
            raise JournalError(f"{self.path}: journal not open")
        return self._db

    def _setup_readonly(self) -> None:
        db = self.db
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"{self.path}: journal schema version {version} is newer than this program's "
                f"({SCHEMA_VERSION}); upgrade potline-twin"
            )
        if version == 0:
            raise JournalError(f"{self.path}: not a potline journal (schema version 0)")
        self._cols = {r[1] for r in db.execute("PRAGMA table_info(events)")}
        self._meta = self._read_meta(db)

    def _open_writer(self, *, fresh_genesis: tuple[int, str, str], seq: int | None = None) -> None:
        """Connect to the file at the path (creating or migrating it), triggers, identity, tail check."""
        fresh = not self.path.exists()
        db = sqlite3.connect(str(self.path), timeout=10.0, check_same_thread=False, isolation_level=None)
        self._db = db
        if fresh:
            with _suppress_os():
                os.chmod(self.path, 0o640)
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"{self.path}: journal schema version {version} is newer than this program's "
                f"({SCHEMA_VERSION}); upgrade potline-twin"
            )
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
            self._create(db, *fresh_genesis, seq=seq)
        elif version == 1:
            self._migrate_v1(db)
        self._cols = {r[1] for r in db.execute("PRAGMA table_info(events)")}
        self._meta = self._read_meta(db)
        self._check_key()
        self._recreate_triggers(db)
        self._load_head(db)
        self._ids = _FileIds.take(self.path)
        if self._max_bytes is not None:
            self._apply_max_bytes(self._max_bytes)

    def _create(self, db: sqlite3.Connection, genesis_id: int, genesis_hash: str, genesis_from: str, *,
                seq: int | None = None, extra_meta: dict[str, str] | None = None) -> None:  # fmt: skip
        """A new schema-2 file in one transaction (a crash leaves nothing or all of it)."""
        meta = {
            "chain": "hmac-sha256" if self._key is not None else "sha256",
            "key_id": _key_id(self._key),
            "genesis_id": str(genesis_id),
            "genesis_hash": genesis_hash,
            "genesis_from": genesis_from,
            "hashed_from": str(genesis_id + 1),
            "created_utc": _epoch_iso(self._wall()),
            "head": json.dumps(
                {"id": genesis_id, "hash": genesis_hash, "mac": _head_mac(self._key, genesis_id, genesis_hash)}
            ),
        }
        meta.update(extra_meta or {})
        db.execute("BEGIN IMMEDIATE")
        try:
            _execute_script(db, _TABLE_V1)
            for c in ("t_mono_s REAL", "ts_order TEXT", "hash TEXT"):
                db.execute(f"ALTER TABLE events ADD COLUMN {c}")
            _execute_script(db, _V2_ADDITIONS)
            db.executemany("INSERT INTO journal_meta (key, value) VALUES (?, ?)", sorted(meta.items()))
            start = seq if seq is not None else genesis_id
            if start:
                db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('events', ?)", (start,))
            for sql in _TRIGGERS.values():
                db.execute(sql)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _migrate_v1(self, db: sqlite3.Connection) -> None:
        """Schema 1 -> 2: add the columns and the meta table, seal the old rows in the genesis.

        The old rows keep no per-row hash (they cannot be updated); the digest of all of
        them (the chain they would have had) becomes the genesis of the new rows, so an
        edit to any of them after the migration breaks verification.
        """
        db.execute("BEGIN IMMEDIATE")
        try:
            for c in ("t_mono_s REAL", "ts_order TEXT", "hash TEXT"):
                db.execute(f"ALTER TABLE events ADD COLUMN {c}")
            _execute_script(db, _V2_ADDITIONS)
            h, last, n = ZERO_HASH, 0, 0
            cur = db.execute(f"SELECT {', '.join(_HASHED)} FROM events ORDER BY id")
            for row in cur:
                h = _link(h, _canonical(row), self._key)
                last, n = int(row[0]), n + 1
            now = _epoch_iso(self._wall())
            meta = {
                "chain": "hmac-sha256" if self._key is not None else "sha256",
                "key_id": _key_id(self._key),
                "genesis_id": str(last),
                "genesis_hash": h,
                "genesis_from": f"migrated from schema 1 at {now}: ids up to {last} ({n} rows) sealed",
                "hashed_from": str(last + 1),
                "legacy_rows": str(n),
                "created_utc": now,
                "head": json.dumps({"id": last, "hash": h, "mac": _head_mac(self._key, last, h)}),
            }
            db.executemany("INSERT INTO journal_meta (key, value) VALUES (?, ?)", sorted(meta.items()))
            for name in ("meta_no_delete", "meta_fixed"):  # new with the meta table (the events' are checked at open)
                db.execute(_TRIGGERS[name])
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        log.info("journal.migrated", path=str(self.path), sealed_rows=n, last_id=last)

    @staticmethod
    def _read_meta(db: sqlite3.Connection) -> dict[str, str]:
        try:
            return {str(k): str(v) for k, v in db.execute("SELECT key, value FROM journal_meta")}
        except sqlite3.OperationalError:  # schema 1
            return {}

    def _check_key(self) -> None:
        want = self._meta.get("key_id", "")
        if self._meta.get("chain") == "hmac-sha256":
            if self._key is None:
                raise JournalError(f"{self.path}: the journal's hash chain is keyed (HMAC, key id {want}); "
                                   "give its key (journal.hmac_key_file) to append")  # fmt: skip
            if _key_id(self._key) != want:
                raise JournalError(f"{self.path}: the journal key does not match (key id {_key_id(self._key)}, "
                                   f"the file was written with key id {want})")  # fmt: skip

    def _recreate_triggers(self, db: sqlite3.Connection) -> None:
        """Every expected trigger as it should be; foreign ones on the journal's tables dropped."""
        have = {str(n): (str(t), s) for n, t, s in db.execute(
            "SELECT name, tbl_name, sql FROM sqlite_master WHERE type='trigger'")}  # fmt: skip
        for name, sql in _TRIGGERS.items():
            got = have.pop(name, None)
            if got is not None and _norm_sql(got[1]) == _norm_sql(sql):
                continue
            db.execute(f'DROP TRIGGER IF EXISTS "{name}"')
            db.execute(sql)
            self.open_findings.append(f"append-only trigger {name} was {'altered' if got else 'missing'}: re-created")
        for name, (table, _sql) in have.items():
            if table in ("events", "journal_meta", "sqlite_sequence"):
                db.execute(f'DROP TRIGGER IF EXISTS "{name}"')
                self.open_findings.append(f"foreign trigger {name} on {table} dropped")

    def _load_head(self, db: sqlite3.Connection) -> None:
        """The chain's head, the next id, and the tail check (an O(1) look at the file's end)."""
        row = db.execute(f"SELECT {', '.join(_HASHED)}, hash FROM events ORDER BY id DESC LIMIT 1").fetchone()
        g_id, g_hash = int(self._meta.get("genesis_id", "0")), self._meta.get("genesis_hash", ZERO_HASH)
        hashed_from = int(self._meta.get("hashed_from", "1"))
        seq_row = db.execute("SELECT seq FROM sqlite_sequence WHERE name='events'").fetchone()
        seq = int(seq_row[0]) if seq_row else 0
        if row is None:
            self.last_id, self._head_hash, self._last_order = (g_id or None), g_hash, ""
        else:
            self.last_id = int(row[0])
            self._last_order = str(row[-2] or row[3] or "")
            self._head_hash = str(row[-1]) if row[-1] else g_hash
            if row[-1] and self.last_id >= hashed_from:
                if self.last_id == hashed_from:
                    prev_hash: str | None = g_hash
                else:
                    prev = db.execute("SELECT hash FROM events WHERE id = ?", (self.last_id - 1,)).fetchone()
                    prev_hash = str(prev[0]) if prev and prev[0] else None  # a gap: verify says more
                key = self._key if self._meta.get("chain") == "hmac-sha256" else None  # this file's chain
                if prev_hash is not None and _link(prev_hash, _canonical(row[:-1]), key) != self._head_hash:
                    self.open_findings.append(f"the last row (id {self.last_id}) does not match its hash")
        last = self.last_id or 0
        try:
            head = json.loads(self._meta.get("head", "{}"))
            head_id = int(head.get("id", last))
        except (ValueError, TypeError, AttributeError):
            head, head_id = {}, last
            self.open_findings.append("the head record in journal_meta is not readable")
        if head_id > last:
            self.open_findings.append(f"head record says id {head_id} but the last row is {last}: "
                                      f"rows {last + 1}..{head_id} deleted")  # fmt: skip
        if seq > last:
            self.open_findings.append(f"ids up to {seq} were issued but the last row is {last}: "
                                      f"rows {last + 1}..{seq} deleted")  # fmt: skip
        side = _read_sidecar(sidecar_path(self.path))
        if side is not None:
            s_id, s_hash = side.get("id"), side.get("hash")
            if isinstance(s_id, int) and s_id > last:
                self.open_findings.append(f"head file {sidecar_path(self.path).name} says id {s_id} but the "
                                          f"last row is {last}: rows deleted or an older copy of the file")  # fmt: skip
            elif isinstance(s_id, int) and s_id == last and s_hash not in (None, self._head_hash):
                self.open_findings.append(f"head file {sidecar_path(self.path).name}: hash of id {s_id} differs")
        self.last_id = max(last, seq) or None

    def _start_keyed_chain(self) -> None:
        """A key is given for an unkeyed file: archive it (when it has rows) and go on keyed."""
        assert self._db is not None
        has_rows = self._db.execute("SELECT 1 FROM events LIMIT 1").fetchone() is not None
        if not has_rows:
            # nothing to keep: start the file over keyed (same genesis)
            self._db.close()
            self._close_ids()
            for p in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):
                with _suppress_os():
                    p.unlink()
            self._open_writer(fresh_genesis=(0, ZERO_HASH, "new"))
            return
        archive = self._rotate_locked()
        self._pending.append(self._stamped(Event(kind="journal_rotated", source="journal",
                                                 detail=f"hash chain keyed (HMAC) from here on; entries up to id "
                                                        f"{self.last_id} are in {archive.name}",
                                                 data={"archive": archive.name, "last_id": self.last_id,
                                                       "keyed": True})))  # fmt: skip

    def _journal_open_findings(self) -> None:
        if self.open_findings:
            log.error("journal.tampered", path=str(self.path), findings=self.open_findings)
            self._pending.append(self._stamped(Event(
                kind="journal_tampered", source="journal",
                detail="found at open: " + "; ".join(self.open_findings),
                data={"findings": list(self.open_findings)})))  # fmt: skip

    # ------------------------------------------------------------------ writing

    def append(self, event: Event | None = None, /, **fields: Any) -> Event:
        """Queue one event for the next ``commit`` (an ``Event`` or its fields).

        Past ``max_held`` held entries they are spilled to ``<journal>.held``; past twice
        that, when the spill cannot be written either, the entry is dropped and counted.
        """
        if self.readonly:
            raise JournalError(f"{self.path}: opened read-only")
        ev = event if event is not None else Event(**fields)
        if not ev.category:
            ev.category = category_of(ev.kind)
        with self._lock:
            self._stamped(ev)
            self._pending.append(ev)
            if len(self._pending) > self.max_held:
                self._spill_out()
                if len(self._pending) > 2 * self.max_held:
                    self._pending.pop()
                    self._count_dropped(ev)
        return ev

    def _stamped(self, ev: Event) -> Event:
        """Category (from the kind, unless given), wall time (unless given), monotonic time and
        the order time of an appended entry."""
        if not ev.category:
            ev.category = category_of(ev.kind)
        mono = float(self._mono())
        if ev.ts_utc:
            w = _iso_epoch(ev.ts_utc)
            wall = w if w is not None else float(self._wall())
        else:
            wall = float(self._wall())
            ev.ts_utc = _epoch_iso(wall)
        if ev.t_mono_s is None:
            ev.t_mono_s = mono
        prev = self._prev_append
        if prev is None:
            floor = _iso_epoch(self._last_order) if self._last_order else None
            order = wall if floor is None else max(wall, floor)
        else:
            _p_wall, p_mono, p_order = prev
            expected = p_order + max(0.0, mono - p_mono)
            # the wall clock stepped back: advance by the monotonic clock instead
            order = max(wall, p_order) if wall >= expected - CLOCK_STEP_TOLERANCE_S else expected
        self._prev_append = (wall, mono, order)
        if not ev.ts_order:
            ev.ts_order = _epoch_iso(order)
        return ev

    def _count_dropped(self, ev: Event) -> None:
        self.dropped += 1
        self._dropped[ev.kind] = self._dropped.get(ev.kind, 0) + 1
        if not self._dropped_span:
            self._dropped_span = [ev.ts_utc, ev.ts_utc]
            log.error("journal.dropping", path=str(self.path), held=len(self._pending),
                      reason="the journal and its spill file both refuse entries")  # fmt: skip
        self._dropped_span[1] = ev.ts_utc

    def _spill_out(self, *, force: bool = False) -> None:
        """Move the in-memory held entries to the spill file, oldest first, as far as it takes
        them (after a refusal, tried again a second later, or when ``force``d)."""
        now = float(self._mono())
        if not force and now < self._spill_retry_mono:
            return
        try:
            if self._spill is None:
                self._spill = _Spill.create(spill_path(self.path))
        except OSError as exc:
            log.warning("journal.spill_unavailable", path=str(spill_path(self.path)), error=str(exc))
            self._spill_retry_mono = now + 1.0
            return
        n = 0
        for ev in self._pending:
            if not self._spill.write(ev):
                self._spill_retry_mono = now + 1.0
                break
            n += 1
        if n:
            del self._pending[:n]

    def set_max_bytes(self, max_bytes: int | None) -> None:
        """Cap the database file at ``max_bytes`` [bytes] (None: no cap but the disk's).

        Never below what the file holds already: SQLite keeps the larger of the two.
        """
        with self._lock:
            self._apply_max_bytes(max_bytes)

    def _apply_max_bytes(self, max_bytes: int | None) -> None:
        db = self.db
        page = int(db.execute("PRAGMA page_size").fetchone()[0])
        pages = 1_073_741_823 if max_bytes is None else max(int(max_bytes) // page, 1)
        db.execute(f"PRAGMA max_page_count = {pages}")
        self._max_bytes = max_bytes

    def size_bytes(self) -> int:
        """Bytes on disk: the database file plus its write-ahead log."""
        total = 0
        for p in (self.path, Path(f"{self.path}-wal")):
            with _suppress_os():
                total += p.stat().st_size
        return total

    def rotate(self) -> Path:
        """Close the current file as an archive and go on in a fresh one at the same path.

        Pending events are committed first (on an SQLite error nothing is rotated and the
        error is raised). The archive is renamed to ``<stem>-<first id>-<last id>-<UTC
        time><suffix>`` beside the journal, complete and checkpointed; ids in the new file
        continue after the archive's last one and its chain starts at the archive's last
        hash, so the files together have no gap, no duplicate and one chain. Readers that
        hold the old file open keep reading it. Returns the archive's path.
        """
        if self.readonly:
            raise JournalError(f"{self.path}: opened read-only")
        with self._lock:
            while self._held_count():
                if not self._commit_locked():
                    break
            if self._held_count():
                raise JournalError(f"{self.path}: {self._held_count()} entries held; not rotated")
            return self._rotate_locked()

    def _rotate_locked(self) -> Path:
        db = self.db
        row = db.execute("SELECT MIN(id), MAX(id) FROM events").fetchone()
        first, last = (int(row[0]), int(row[1])) if row and row[0] is not None else (0, 0)
        last_hash = self._head_hash
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
        self._close_ids()
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        archive = self.path.with_name(f"{self.path.stem}-{first}-{last}-{stamp}{self.path.suffix}")
        os.replace(self.path, archive)
        with _suppress_os():
            os.chmod(archive, 0o440)
        with _suppress_os():
            Path(f"{self.path}-wal").unlink()
        with _suppress_os():
            Path(f"{self.path}-shm").unlink()
        seq = max(last, self.last_id or 0)
        self._open_writer(fresh_genesis=(last, last_hash, f"rotated: previous entries in {archive.name}"), seq=seq)
        self.last_id = seq or None
        self._write_sidecar()
        return archive

    @property
    def pending(self) -> int:
        """Entries held for the next commit (in memory and spilled), plus one when the file at
        the path is no longer the open one (the ``journal_lost`` entry the next commit writes;
        checked here with two ``stat`` calls, so a caller that commits only when something is
        pending still notices within a cycle)."""
        with self._lock:
            n = self._held_count()
            if self.readonly:
                return n
            if self._db is not None and self._suspect is None:
                self._suspect = self._moved()
            return n + (1 if self._suspect is not None or self._db is None else 0)

    def _held_count(self) -> int:
        return len(self._pending) + (self._spill.count if self._spill is not None else 0)

    @property
    def unwritten(self) -> int:
        """Entries appended but not (yet) in the journal: held in memory or in the spill file."""
        return self._held_count()

    @property
    def all_committed(self) -> bool:
        """Everything appended since open is in the journal: nothing held, nothing dropped."""
        return self._held_count() == 0 and self.dropped == 0

    def pending_events(self) -> list[Event]:
        """The events appended but not committed yet, oldest first (a copy; spilled ones included)."""
        with self._lock:
            spilled = [ev for _s, ev in self._spill.read(None)] if self._spill is not None else []
            return spilled + list(self._pending)

    @property
    def lost(self) -> JournalLoss | None:
        """The last time the path stopped naming the open file (None: never since open)."""
        return self._lost

    def take_lost(self) -> JournalLoss | None:
        """A loss not reported yet (once per loss; then None): the daemon disarms control on it."""
        with self._lock:
            if not self._lost_unseen:
                return None
            self._lost_unseen = False
            return self._lost

    @property
    def head(self) -> tuple[int, str]:
        """(id, hash) of the chain's head: log it elsewhere to anchor the chain."""
        return (self.last_id or 0, self._head_hash)

    def commit(self) -> list[Event]:
        """Write held events in one transaction; returns them with their ids and hashes.

        Order: spilled entries first (at most ``max_held`` per commit), then the ones in
        memory. When this returns, the events are durable (module docstring). On an SQLite
        error the events stay held and the error is raised (retry later).

        Raises:
            JournalLost: the path no longer names the open file; the journal was re-created
                there with a ``journal_lost`` entry, the events are still held.
            sqlite3.Error, JournalError: the journal cannot take them (disk full, cap).
        """
        with self._lock:
            got: list[Event] = []
            self._commit_locked(got)
            return got

    def _commit_locked(self, out: list[Event] | None = None) -> bool:
        """One commit (see ``commit``); appends the committed events to ``out``; False when nothing was held."""
        if self.readonly:
            raise JournalError(f"{self.path}: opened read-only")
        if self._db is None:
            self._reopen_after_loss()
        why, self._suspect = self._moved(), None
        if why is not None:
            self._recover(why)  # raises JournalLost
        self._check_aux_files()
        spill = self._spill
        from_spill: list[tuple[int, Event]] = []
        if spill is not None:
            spill.sync()
            from_spill = spill.read(self.max_held)
        spill_done = spill is None or len(from_spill) >= spill.count
        batch = [ev for _s, ev in from_spill]
        extra: list[Event] = []
        if spill_done:
            if spill is not None and spill.problems:
                extra.append(self._spill_problem_event(spill))
            batch += self._pending
            if self.dropped and self._dropped:
                extra.append(self._dropped_event())
            batch += extra
        if not batch:
            return False
        spill_mark = (spill.uuid, from_spill[-1][0]) if spill is not None and from_spill else None
        self._insert(batch, spill_mark)
        # committed: forget what was held
        if spill is not None:
            spill.advance(len(from_spill))
            if spill_done:
                spill.remove()
                self._spill = None
        if spill_done:
            self._pending = []
            if self._dropped and any(e.kind == "journal_entries_dropped" for e in extra):
                self._dropped, self._dropped_span = {}, []
        self.committed += len(batch)
        if out is not None:
            out += batch
        return True

    def _insert(self, batch: list[Event], spill_mark: tuple[str, int] | None) -> None:
        """Insert ``batch`` with ids and chained hashes in one transaction; update the heads."""
        db = self.db
        key = self._key
        db.execute("BEGIN IMMEDIATE")
        try:
            seq_row = db.execute("SELECT seq FROM sqlite_sequence WHERE name='events'").fetchone()
            max_row = db.execute("SELECT MAX(id) FROM events").fetchone()
            next_id = max(int(seq_row[0]) if seq_row else 0, int(max_row[0] or 0), self.last_id or 0) + 1
            prev, order_floor = self._head_hash, self._last_order
            done: list[tuple[int, str, str]] = []
            cols = ", ".join((*_HASHED, "hash"))
            sql = f"INSERT INTO events ({cols}) VALUES ({', '.join('?' * (len(_HASHED) + 1))})"
            for i, e in enumerate(batch):
                order = max(e.ts_order or e.ts_utc, order_floor)
                vals = _row_values(next_id + i, e, order)
                h = _link(prev, _canonical(vals), key)
                cur = db.execute(sql, (*vals, h))
                if cur.rowcount != 1:
                    raise JournalError(f"{self.path}: the insert of id {next_id + i} was suppressed "
                                       "(a foreign trigger?); nothing committed")  # fmt: skip
                done.append((next_id + i, h, order))
                prev, order_floor = h, order
            last_id = next_id + len(batch) - 1
            head = json.dumps({"id": last_id, "hash": prev, "mac": _head_mac(key, last_id, prev)})
            db.execute("INSERT INTO journal_meta (key, value) VALUES ('head', ?) "
                       "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (head,))  # fmt: skip
            if spill_mark is not None:
                mark = json.dumps({"uuid": spill_mark[0], "seq": spill_mark[1]})
                db.execute("INSERT INTO journal_meta (key, value) VALUES ('spill', ?) "
                           "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (mark,))  # fmt: skip
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        for e, (id_, h, order) in zip(batch, done, strict=True):
            e.id, e.hash, e.ts_order = id_, h, order
        self.last_id, self._head_hash, self._last_order = last_id, prev, order_floor
        self._write_sidecar()

    def _dropped_event(self) -> Event:
        first, last = [*self._dropped_span, "", ""][:2]
        kinds = ", ".join(f"{k} x{n}" for k, n in sorted(self._dropped.items()))
        return self._stamped(Event(
            kind="journal_entries_dropped", source="journal",
            detail=f"{sum(self._dropped.values())} entries dropped while the disk was full "
                   f"(journal and spill file refused them), {first} .. {last}: {kinds}",
            data={"dropped": dict(self._dropped), "first_ts": first, "last_ts": last}))  # fmt: skip

    def _spill_problem_event(self, spill: _Spill) -> Event:
        return self._stamped(Event(
            kind="journal_tampered", source="journal",
            detail=f"held-entries file {spill.path.name}: " + "; ".join(spill.problems),
            data={"file": spill.path.name, "findings": list(spill.problems)}))  # fmt: skip

    def record(self, event: Event | None = None, /, **fields: Any) -> Event:
        """Append one event and commit at once (with any other pending ones)."""
        ev = self.append(event, **fields)
        self.commit()
        return ev

    # ------------------------------------------------------------------ the file under the writer

    def _moved(self) -> str | None:
        """Why the path no longer names the open file (None: it does)."""
        ids = self._ids
        return None if ids is None else ids.check(self.path)

    def _recover(self, why: str) -> None:
        """The path lost the open file: rebuild it there from the open handle, journal the loss, raise."""
        what, _, seen = why.partition(": ")
        loss = JournalLoss(what=what, detail=seen or why, ts_utc=_epoch_iso(self._wall()))
        old = self.db
        loss.first_id, loss.last_id = int(self._meta.get("genesis_id", "0")) + 1, self.last_id
        log.error("journal.lost", path=str(self.path), what=what, detail=loss.detail, last_id=self.last_id)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._relock_if_needed()
        self._clear_path(loss)  # the old handle keeps reading through its open descriptors
        tmp = self.path.with_name(self.path.name + ".recover")
        try:
            copied = self._build_recovered(tmp, old, loss)
        except BaseException:
            _unlink_db(tmp)
            raise
        # the new file takes the path before the old connection closes: SQLite then sees its
        # file moved and neither checkpoints nor deletes anything at the path
        os.replace(tmp, self.path)
        _fsync_path(self.path.parent)
        with contextlib.suppress(sqlite3.Error):
            old.close()
        self._db = None
        self._close_ids()
        self._lost, self._lost_unseen = loss, True
        self._prev_append = None
        log.error("journal.recreated", path=str(self.path), recovered=loss.recovered, copied=copied,
                  entry_id=loss.entry_id, moved_aside=loss.moved_aside)  # fmt: skip
        self._reopen_after_loss()
        raise JournalLost(loss)

    def _clear_path(self, loss: JournalLoss) -> None:
        """Make room at the path for the rebuilt file: a foreign database or ``-wal`` is moved
        aside (``<name>.foreign-<time>``, kept for whoever investigates); the old file's own
        ``-wal`` (its content is in the rebuilt file) and any ``-shm`` are removed. No old
        ``-wal`` may stay: SQLite would replay its frames onto the new file."""
        stamp = _stamp()
        ours = self._ids
        for p in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):
            if not p.exists():
                continue
            mine = ours is not None and ours.is_ours(p)
            if p.name.endswith("-shm") or (mine and p.name.endswith("-wal")):
                with _suppress_os():
                    p.unlink()
            elif not mine:
                aside = p.with_name(f"{p.name}.foreign-{stamp}")
                with _suppress_os():
                    os.replace(p, aside)
                    loss.moved_aside.append(aside.name)

    def _build_recovered(self, tmp: Path, old: sqlite3.Connection, loss: JournalLoss) -> int:
        """The replacement file at ``tmp``: the lost file's rows read back through the open
        handle ``old`` (ids and hashes kept) or, when they cannot be read, a file whose chain
        continues from the head the writer knew; then the ``journal_lost`` entry. Returns the
        number of rows copied. Raises when ``tmp`` cannot be written (disk full: retried)."""
        copied = 0
        for attempt in ("salvage", "fresh"):
            _unlink_db(tmp)
            new = sqlite3.connect(str(tmp), timeout=10.0, check_same_thread=False, isolation_level=None)
            try:
                new.execute("PRAGMA journal_mode=WAL")
                new.execute(f"PRAGMA synchronous={self.synchronous}")
                if attempt == "salvage":
                    try:
                        copied = self._salvage_into(old, new, loss)
                    except sqlite3.Error as exc:
                        if _readable(old):
                            raise  # the new file failed (disk full?): try again at the next commit
                        log.error("journal.salvage_failed", path=str(self.path), error=str(exc))
                        continue
                else:
                    lost = {"first_id": loss.first_id, "last_id": loss.last_id, "what": loss.what}
                    self._create(new, self.last_id or 0, self._head_hash,
                                 f"lost: ids {loss.first_id}..{loss.last_id} were in a journal file {loss.what} "
                                 "under the writer and could not be read back", seq=self.last_id,
                                 extra_meta={"lost": json.dumps(lost)})  # fmt: skip
                ev = self._stamped(Event(kind="journal_lost", source="journal", detail=self._loss_detail(loss),
                                         data={"what": loss.what, "seen": loss.detail, "first_id": loss.first_id,
                                               "last_id": loss.last_id, "recovered": loss.recovered,
                                               "copied": copied, "moved_aside": loss.moved_aside}))  # fmt: skip
                self._write_in(new, ev)
                loss.entry_id = ev.id
                new.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                new.close()
            break
        with _suppress_os():
            os.chmod(tmp, 0o640)
        _fsync_path(tmp)
        return copied

    def _loss_detail(self, loss: JournalLoss) -> str:
        ids = f"ids {loss.first_id}..{loss.last_id}" if loss.last_id else "no entries"
        kept = "all recovered from the open file handle" if loss.recovered else "LOST: they could not be read back"
        aside = f"; found at the path and moved aside: {', '.join(loss.moved_aside)}" if loss.moved_aside else ""
        return f"journal file {loss.what} under the writer ({loss.detail}): {ids} {kept}{aside}"

    def _salvage_into(self, old: sqlite3.Connection, new: sqlite3.Connection, loss: JournalLoss) -> int:
        """Copy the lost file's meta and rows (ids and hashes kept) through the open handle
        ``old`` into ``new``; returns the number of rows."""
        g_id = int(self._meta.get("genesis_id", "0"))
        meta = self._read_meta(old)
        keep = {k: v for k, v in meta.items() if k not in ("chain", "key_id", "created_utc")}
        keep[f"recovered:{loss.ts_utc}"] = json.dumps({"what": loss.what, "seen": loss.detail})
        self._create(new, int(meta.get("genesis_id", g_id)), meta.get("genesis_hash", ZERO_HASH),
                     meta.get("genesis_from", "new"), seq=self.last_id, extra_meta=keep)  # fmt: skip
        cols = ", ".join(("id", *_COLUMNS, *_V2_COLUMNS))
        rows = old.execute(f"SELECT {cols} FROM events ORDER BY id")
        new.execute("BEGIN IMMEDIATE")
        n = 0
        try:
            ins = f"INSERT INTO events ({cols}) VALUES ({', '.join('?' * (1 + len(_COLUMNS) + len(_V2_COLUMNS)))})"
            for r in rows:
                new.execute(ins, r)
                n += 1
            new.execute("COMMIT")
        except BaseException:
            if new.in_transaction:
                new.execute("ROLLBACK")
            raise
        got = new.execute("SELECT MAX(id) FROM events").fetchone()[0]
        loss.recovered = int(got or g_id) >= (self.last_id or 0)
        return n

    def _write_in(self, db: sqlite3.Connection, ev: Event) -> None:
        """Append one event to ``db`` (a file being built), chained to its head."""
        row = db.execute("SELECT hash, ts_order, id FROM events ORDER BY id DESC LIMIT 1").fetchone()
        meta = self._read_meta(db)
        prev = str(row[0]) if row and row[0] else meta.get("genesis_hash", ZERO_HASH)
        seq_row = db.execute("SELECT seq FROM sqlite_sequence WHERE name='events'").fetchone()
        next_id = max(int(seq_row[0]) if seq_row else 0, int(row[2]) if row else 0, self.last_id or 0) + 1
        order = max(ev.ts_order, str(row[1] or "") if row else "")
        vals = _row_values(next_id, ev, order)
        h = _link(prev, _canonical(vals), self._key)
        head = json.dumps({"id": next_id, "hash": h, "mac": _head_mac(self._key, next_id, h)})
        db.execute("BEGIN IMMEDIATE")
        db.execute(f"INSERT INTO events ({', '.join((*_HASHED, 'hash'))}) VALUES ({', '.join('?' * 19)})", (*vals, h))
        db.execute("INSERT INTO journal_meta (key, value) VALUES ('head', ?) "
                   "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (head,))  # fmt: skip
        db.execute("COMMIT")
        ev.id, ev.hash, ev.ts_order = next_id, h, order

    def _reopen_after_loss(self) -> None:
        """Open the (re-created) file at the path; the head continues from what it holds."""
        self.open_findings = []
        if not self.path.exists():  # the rebuilt file went too before it could be reopened
            self.open_findings.append(f"the rebuilt journal file vanished before it was reopened: entries up to "
                                      f"id {self.last_id} are not in this file")  # fmt: skip
        self._open_writer(fresh_genesis=(self.last_id or 0, self._head_hash, "lost: see journal_lost"),
                          seq=self.last_id)  # fmt: skip
        self._journal_open_findings()
        self._close_sidecar()
        self._open_sidecar()
        self._write_sidecar()

    def _relock_if_needed(self) -> None:
        f = self._lockfile
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            same = f is not None and os.path.samestat(os.fstat(f.fileno()), os.stat(lock_path))
        except OSError:
            same = False
        if not same:
            self._unlock()
            self._lockfile = _lock_writer(self.path)

    def _check_aux_files(self) -> None:
        """The head file and the lock file still at their paths (re-created when not)."""
        fd = self._sidecar_fd
        p = sidecar_path(self.path)
        try:
            ok = fd is not None and os.path.samestat(os.fstat(fd), os.stat(p))
        except OSError:
            ok = False
        if not ok:
            log.warning("journal.head_file_recreated", path=str(p))
            self._close_sidecar()
            with _suppress_os():
                self._open_sidecar()
            self._write_sidecar()
        self._relock_if_needed()

    # ------------------------------------------------------------------ head sidecar and spill

    def _open_sidecar(self) -> None:
        p = sidecar_path(self.path)
        self._sidecar_fd = os.open(p, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o640)

    def _close_sidecar(self) -> None:
        fd, self._sidecar_fd = self._sidecar_fd, None
        if fd is not None:
            with _suppress_os():
                os.close(fd)

    def _write_sidecar(self) -> None:
        """Overwrite the head file in place (fixed length: no new disk blocks needed)."""
        fd = self._sidecar_fd
        if fd is None:
            return
        id_, h = self.last_id or 0, self._head_hash
        doc = {"id": id_, "hash": h, "mac": _head_mac(self._key, id_, h), "sync": self.synchronous}
        line = json.dumps(doc, separators=(",", ":")).ljust(_SIDECAR_LEN - 1) + "\n"
        try:
            os.pwrite(fd, line.encode(), 0)
        except OSError as exc:
            log.warning("journal.head_file_unwritten", path=str(sidecar_path(self.path)), error=str(exc))

    def _open_spill(self) -> None:
        p = spill_path(self.path)
        if not p.exists():
            return
        try:
            mark = json.loads(self._meta.get("spill", "{}"))
        except ValueError:
            mark = {}
        try:
            self._spill = _Spill.open_existing(p, str(mark.get("uuid", "")), int(mark.get("seq", 0)))
        except OSError as exc:
            log.error("journal.spill_unreadable", path=str(p), error=str(exc))
            return
        if self._spill is not None and self._spill.count == 0:
            if self._spill.problems:  # nothing left to fold in: say what was wrong with it now
                self._pending.append(self._spill_problem_event(self._spill))
            self._spill.remove()
            self._spill = None
        elif self._spill is not None:
            log.warning("journal.folding_held_entries", path=str(p), count=self._spill.count)

    # ------------------------------------------------------------------ queries

    def _select(self) -> str:
        cols = [c if c in self._cols else f"NULL AS {c}" for c in _V2_COLUMNS]
        return f"SELECT id, {', '.join(_COLUMNS)}, {', '.join(cols)} FROM events"

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

        ``since``/``until`` (inclusive / exclusive) compare ``ts_order``, the wall time
        made non-decreasing (schema-1 rows: ``ts_utc``): a window is an id range, and an
        entry written after the wall clock jumped back is never outside ``since``.
        """
        where: list[str] = []
        args: list[str | int] = []
        t = "COALESCE(ts_order, ts_utc)" if "ts_order" in self._cols else "ts_utc"
        if kinds:
            where.append(f"kind IN ({','.join('?' * len(kinds))})")
            args += list(kinds)
        if categories:
            where.append(f"category IN ({','.join('?' * len(categories))})")
            args += list(categories)
        if since is not None:
            where.append(f"{t} >= ?")
            args.append(_to_iso(since))
        if until is not None:
            where.append(f"{t} < ?")
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
        sql = self._select()
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC" if newest_first else " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        with self._lock:
            rows = self.db.execute(sql, args).fetchall()
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
            return int(self.db.execute(sql, args).fetchone()[0])

    def kind_stats(self) -> list[tuple[str, str, int, str, str]]:
        """(category, kind, count, first ts_utc, last ts_utc) per kind."""
        with self._lock:
            return [(str(c), str(k), int(n), str(a), str(b)) for c, k, n, a, b in self.db.execute(
                "SELECT category, kind, COUNT(*), MIN(ts_utc), MAX(ts_utc) FROM events GROUP BY category, kind")]  # fmt: skip

    def ids(self) -> list[int]:
        """All row ids in order (integrity checks: no gaps, nothing lost)."""
        with self._lock:
            return [int(r[0]) for r in self.db.execute("SELECT id FROM events ORDER BY id")]

    def last(self, kinds: Iterable[str] | None = None) -> Event | None:
        """The newest event (of ``kinds``), or None."""
        got = self.query(kinds=list(kinds) if kinds else None, limit=1, newest_first=True)
        return got[0] if got else None

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` result ("ok" when sound)."""
        with self._lock:
            return str(self.db.execute("PRAGMA integrity_check").fetchone()[0])

    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def hash_of(self, id_: int) -> str | None:
        """The stored hash of row ``id_`` (the genesis hash for the genesis id; None: no such row)."""
        with self._lock:
            meta = self._read_meta(self.db)
            g_id = int(meta.get("genesis_id", "-1")) if meta else -1
            if id_ == g_id:
                return meta.get("genesis_hash")
            row = self.db.execute("SELECT hash FROM events WHERE id = ?", (int(id_),)).fetchone()
        return str(row[0]) if row and row[0] else None

    @property
    def meta(self) -> dict[str, str]:
        """The file's ``journal_meta`` (chain, genesis, head; empty for schema 1)."""
        with self._lock:
            return self._read_meta(self.db)

    # ------------------------------------------------------------------ verification

    def verify(self, key: bytes | None = None, *, head_file: bool = True) -> VerifyReport:
        """Check the file's hash chain, heads and triggers (module docstring); never raises
        for what it finds. ``key``: the HMAC key of a keyed chain (default: the writer's).
        ``head_file``: also check ``<journal>.head`` (the live file; not for archives)."""
        key = key if key is not None else self._key
        rep = VerifyReport(self.path)
        with self._lock:
            db = self.db
            # the head file first: it is written after each commit, so it never runs ahead of the snapshot
            side = _read_sidecar(sidecar_path(self.path)) if head_file else None
            side_missing = head_file and not sidecar_path(self.path).exists()
            db.execute("BEGIN")
            try:
                _verify_snapshot(db, rep, key, side, side_missing)
            finally:
                db.execute("ROLLBACK")
        return rep

    # ------------------------------------------------------------------ lifecycle

    def checkpoint(self) -> None:
        """Fold the WAL into the main file (done at clean shutdown; optional)."""
        if self.readonly or self._db is None:
            return
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            if self._ids is not None:
                self._ids.reset_sizes()

    def close(self) -> bool:
        """Commit what is held (a lost file is re-created first), checkpoint and close.

        What the journal cannot take is left in ``<journal>.held`` for the next open to fold
        in. Returns ``all_committed`` (False: the stop was unclean as far as the journal
        goes; the daemon exits non-zero).
        """
        try:
            if not self.readonly:
                with self._lock:
                    for _ in range(2):  # a second time after a JournalLost (entries still held)
                        try:
                            while self._held_count() or self._suspect or self._moved():
                                if not self._commit_locked():
                                    break
                            break
                        except JournalLost:
                            continue
                        except (sqlite3.Error, OSError, JournalError) as exc:
                            log.error("journal.close_uncommitted", path=str(self.path), held=self._held_count(),
                                      error=f"{type(exc).__name__}: {exc}")  # fmt: skip
                            break
                    if self._pending:
                        self._spill_out(force=True)
                    if self._spill is not None:
                        self._spill.sync()
            with contextlib.suppress(sqlite3.Error, JournalError):
                self.checkpoint()
        finally:
            with self._lock:
                ok = self.all_committed if not self.readonly else True
                self._close_files()
            self._unlock()
        return ok

    def _close_files(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
        self._close_ids()  # only after SQLite closed: closing a descriptor drops its POSIX locks
        self._close_sidecar()
        if self._spill is not None:
            self._spill.close()

    def _close_ids(self) -> None:
        ids, self._ids = self._ids, None
        if ids is not None:
            ids.close()

    def _unlock(self) -> None:
        f, self._lockfile = self._lockfile, None
        if f is not None:
            f.close()  # releases the flock

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------- verification


def _verify_snapshot(db: sqlite3.Connection, rep: VerifyReport, key: bytes | None,
                     side: dict[str, Any] | None, side_missing: bool) -> None:  # fmt: skip
    """``Journal.verify`` inside one read transaction."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    stats = db.execute("SELECT COUNT(*), MIN(id), MAX(id) FROM events").fetchone()
    rep.rows, rep.first_id, rep.last_id = int(stats[0]), stats[1], stats[2]
    if version < 2:
        rep.genesis_from = "schema 1 (no hash chain)"
        if side is not None:
            rep.add(None, f"schema 1 file (no hash chain) but a head file beside it says id {side.get('id')}: "
                          "the file was replaced by an older or downgraded one")  # fmt: skip
        else:
            rep.add(None, "schema 1 file: written before the hash chain; its rows cannot be verified", fatal=False)
        return
    meta = Journal._read_meta(db)
    rep.keyed = meta.get("chain") == "hmac-sha256"
    if rep.keyed and key is None:
        rep.add(None, f"the chain is keyed (HMAC, key id {meta.get('key_id')}): give the key (--key-file) "
                      "to check the hashes")  # fmt: skip
    elif rep.keyed and _key_id(key) != meta.get("key_id"):
        rep.add(None, f"the key given (id {_key_id(key)}) is not this file's (id {meta.get('key_id')})")
        key = None
    check_hashes = not rep.keyed or (key is not None and _key_id(key) == meta.get("key_id"))
    if not rep.keyed:
        key = None
    try:
        g_id = int(meta["genesis_id"])
        g_hash = meta["genesis_hash"]
        hashed_from = int(meta["hashed_from"])
    except (KeyError, ValueError):
        rep.add(None, "journal_meta lacks the chain's genesis (genesis_id, genesis_hash, hashed_from)")
        return
    rep.genesis_id, rep.genesis_hash, rep.genesis_from, rep.hashed_from = g_id, g_hash, meta.get("genesis_from", ""), hashed_from  # fmt: skip
    # schema-1 rows sealed at migration
    legacy = db.execute("SELECT COUNT(*), MIN(id), MAX(id) FROM events WHERE id < ?", (hashed_from,)).fetchone()
    if legacy[0]:
        rep.add(None, f"ids {legacy[1]}..{legacy[2]} predate the hash chain ({rep.genesis_from}); verification "
                      f"starts at id {hashed_from}: edits made to them before the migration cannot be seen",
                fatal=False)  # fmt: skip
        if check_hashes and rep.genesis_from.startswith("migrated"):
            h = ZERO_HASH
            for row in db.execute(f"SELECT {', '.join(_HASHED)} FROM events WHERE id < ? ORDER BY id",
                                  (hashed_from,)):  # fmt: skip
                h = _link(h, _canonical(row), key)
            if h != g_hash:
                rep.add(None, f"a row among ids {legacy[1]}..{legacy[2]} (sealed at the migration) was changed, "
                              "added or removed since")  # fmt: skip
        n_hashed = db.execute("SELECT COUNT(*) FROM events WHERE id < ? AND hash IS NOT NULL",
                              (hashed_from,)).fetchone()[0]  # fmt: skip
        if n_hashed:
            rep.add(None, f"{n_hashed} row(s) before id {hashed_from} carry hashes: the start of the chain was moved")
    # the chain
    prev_id, prev_hash = g_id, g_hash
    last_hash = g_hash
    cur = db.execute(f"SELECT {', '.join(_HASHED)}, hash FROM events WHERE id >= ? ORDER BY id", (hashed_from,))
    first = True
    for row in cur:
        rid = int(row[0])
        stored = row[-1]
        if rid != prev_id + 1:
            if first and prev_id == g_id and rid > prev_id:
                rep.add(rid, f"ids {prev_id + 1}..{rid - 1} missing before id {rid}: the first rows were deleted")
            else:
                rep.add(rid, f"ids {prev_id + 1}..{rid - 1} missing before id {rid}: rows deleted")
        if stored is None:
            rep.add(rid, f"id {rid} has no hash (inserted outside the writer)")
        elif check_hashes:
            want = _link(prev_hash, _canonical(row[:-1]), key)
            if want != stored:
                rep.add(rid, f"id {rid} ({row[1]}): content does not match its hash (stored {str(stored)[:16]}…, "
                             f"recomputed {want[:16]}…): the row, or the link before it, was edited")  # fmt: skip
        kind = row[1]
        if kind in ("journal_tampered", "journal_entries_dropped") or kind == "journal_lost":
            _note_journal_event(rep, rid, kind, row[14], row[15])
        prev_id, prev_hash = rid, str(stored) if stored else prev_hash
        last_hash = prev_hash
        first = False
    rep.head_hash = last_hash
    last = prev_id
    # the heads
    try:
        head = json.loads(meta.get("head", "{}"))
    except ValueError:
        head = {}
    h_id = head.get("id")
    if not isinstance(h_id, int):
        rep.add(None, "journal_meta has no readable head record")
    elif h_id > last:
        rep.add(last + 1, f"the head record says id {h_id} but the file ends at id {last}: "
                          f"rows {last + 1}..{h_id} deleted at the end")  # fmt: skip
    elif h_id < last:
        rep.add(h_id + 1, f"the head record says id {h_id} but the file goes on to id {last}: "
                          "rows added outside the writer, or the head record rewound")  # fmt: skip
    elif check_hashes and head.get("hash") != last_hash:
        rep.add(last, f"the head record's hash for id {last} differs from the row's: the chain was rewritten")
    elif check_hashes and key is not None and head.get("mac") != _head_mac(key, h_id, str(head.get("hash"))):
        rep.add(last, "the head record's MAC is wrong: it was written without the key")
    # triggers (after the rows: the first broken link comes first)
    have = {str(n): s for n, s in db.execute("SELECT name, sql FROM sqlite_master WHERE type='trigger'")}
    for name, sql in _TRIGGERS.items():
        if name not in have:
            rep.add(None, f"append-only trigger {name} is missing (dropped: rows may have been changed)")
        elif _norm_sql(have[name]) != _norm_sql(sql):
            rep.add(None, f"append-only trigger {name} was altered: {_norm_sql(have[name])[:120]}")
    for name in sorted(set(have) - set(_TRIGGERS)):
        rep.add(None, f"foreign trigger {name} in the file")
    seq_row = db.execute("SELECT seq FROM sqlite_sequence WHERE name='events'").fetchone()
    seq = int(seq_row[0]) if seq_row else 0
    if seq > last:
        rep.add(last + 1, f"ids up to {seq} were issued but the file ends at id {last}: "
                          f"rows {last + 1}..{seq} deleted at the end")  # fmt: skip
    if side is not None:
        s_id, s_hash = side.get("id"), side.get("hash")
        power = " (or lost to a power cut: synchronous=NORMAL)" if side.get("sync") == "NORMAL" else ""
        if not isinstance(s_id, int):
            rep.add(None, "the head file is not readable")
        elif s_id > last:
            rep.add(last + 1, f"the head file says id {s_id} but the file ends at id {last}: rows {last + 1}..{s_id} "
                              f"deleted at the end, or an older copy of the file{power}")  # fmt: skip
        elif check_hashes:
            got = last_hash if s_id == last else _hash_of(db, s_id, g_id, g_hash)
            if got != s_hash:
                rep.add(s_id, f"the head file's hash for id {s_id} differs from the file's: the chain was rewritten")
            elif key is not None and side.get("mac") != _head_mac(key, s_id, str(s_hash)):
                rep.add(s_id, "the head file's MAC is wrong: it was written without the key")
    elif side_missing:
        rep.add(None, "no head file beside the journal: deleting the last rows is seen only by the head "
                      "record inside the file and its id sequence", fatal=False)  # fmt: skip


def _hash_of(db: sqlite3.Connection, id_: int, g_id: int, g_hash: str) -> str | None:
    if id_ == g_id:
        return g_hash
    row = db.execute("SELECT hash FROM events WHERE id = ?", (id_,)).fetchone()
    return str(row[0]) if row and row[0] else None


def _note_journal_event(rep: VerifyReport, rid: int, kind: str, detail: Any, data: Any) -> None:
    """Journal entries about the journal itself: what they mean for the trail's completeness."""
    try:
        d = json.loads(data) if data else {}
    except ValueError:
        d = {}
    if kind == "journal_lost":
        if d.get("recovered"):
            rep.add(rid, f"journal_lost at id {rid}: {detail} (nothing missing)", fatal=False)
        else:
            rep.add(rid, f"journal_lost at id {rid}: {detail}")
    elif kind == "journal_entries_dropped":
        rep.add(rid, f"entries dropped (journalled at id {rid}): {detail}")
    else:
        rep.add(rid, f"tampering found by the writer, journalled at id {rid}: {detail}")


def verify_files(paths: Sequence[Path], key: bytes | None = None,
                 anchors: Sequence[tuple[int, str]] = ()) -> list[VerifyReport]:  # fmt: skip
    """Verify a journal's files in id order (archives then the live one) as one chain: each
    file's genesis must be the previous file's last id and hash. The last is the live file
    (its head file is checked too). ``anchors``: (id, hash) pairs kept elsewhere (the
    daemon's log of ``Journal.head``): the row must exist with that hash, which also
    catches a consistent rewrite of an unkeyed chain and its head records.

    Raises:
        JournalError: a file cannot be opened as a journal.
    """
    reports: list[VerifyReport] = []
    for i, p in enumerate(paths):
        with Journal(p, readonly=True) as j:
            rep = j.verify(key, head_file=i == len(paths) - 1)
        if reports:
            prev = reports[-1]
            if prev.last_id is not None and rep.genesis_from and not rep.genesis_from.startswith("schema 1"):
                if rep.genesis_id != prev.last_id:
                    rep.add(None, f"starts after id {rep.genesis_id} but {prev.path.name} ends at id {prev.last_id}")
                elif prev.head_hash is not None and rep.genesis_hash != prev.head_hash:
                    rep.add(None, f"does not link to {prev.path.name}: its genesis hash is not that file's last hash "
                                  "(that file's end was changed)")  # fmt: skip
        elif rep.genesis_from.startswith("rotated"):
            rep.add(None, f"the chain starts after id {rep.genesis_id} ({rep.genesis_from}); that archive is not "
                          "here, so the link to it is not checked", fatal=False)  # fmt: skip
        reports.append(rep)
    for a_id, a_hash in anchors:
        _check_anchor(paths, reports, int(a_id), str(a_hash).strip().lower())
    return reports


def _check_anchor(paths: Sequence[Path], reports: list[VerifyReport], a_id: int, a_hash: str) -> None:
    """One anchor (id, hash kept elsewhere) against the files that hold that id."""
    last = reports[-1]
    end = max((r.last_id or r.genesis_id) for r in reports)
    if a_id > end:
        last.add(end + 1, f"anchor id {a_id} (kept elsewhere) is beyond the end of the journal (id {end}): "
                          f"rows {end + 1}..{a_id} deleted at the end")  # fmt: skip
        return
    for p, r in zip(paths, reports, strict=True):
        if r.genesis_id <= a_id <= (r.last_id or r.genesis_id):
            with Journal(p, readonly=True) as j:
                got = j.hash_of(a_id)
            if got is None:
                continue
            if got != a_hash:
                r.add(a_id, f"anchor: id {a_id} has hash {got[:16]}… in the file, {a_hash[:16]}… was kept "
                            "elsewhere: the chain was rewritten")  # fmt: skip
            else:
                r.add(a_id, f"anchor id {a_id} matches", fatal=False)
            return
    reports[0].add(a_id, f"anchor id {a_id}: no file here holds it (an archive not present?)", fatal=False)


# ---------------------------------------------------------------------------------- helpers


@dataclass(slots=True)
class _FileIds:
    """Own descriptors on the open database file and its ``-wal`` (for ``os.fstat``).

    Closed only after SQLite's connection: closing any descriptor of a file drops the
    process's POSIX locks on it.
    """

    db_fd: int
    wal_fd: int | None
    db_size: int
    wal_size: int

    @classmethod
    def take(cls, path: Path) -> _FileIds:
        flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
        db_fd = os.open(path, flags)
        try:
            wal_fd: int | None = os.open(f"{path}-wal", flags)
        except OSError:
            wal_fd = None
        ids = cls(db_fd, wal_fd, 0, 0)
        ids.reset_sizes()
        return ids

    def reset_sizes(self) -> None:
        with _suppress_os():
            self.db_size = os.fstat(self.db_fd).st_size
        if self.wal_fd is not None:
            with _suppress_os():
                self.wal_size = os.fstat(self.wal_fd).st_size

    def check(self, path: Path) -> str | None:
        """Why ``path`` no longer names these files (None: it does)."""
        try:
            mine = os.fstat(self.db_fd)
        except OSError as exc:  # pragma: no cover - our own descriptor
            return f"unreadable: {exc}"
        try:
            there = os.stat(path)
        except FileNotFoundError:
            gone = "deleted" if mine.st_nlink == 0 else "moved"
            return f"{gone}: nothing at {path} (the open file has {mine.st_nlink} link(s), inode {mine.st_ino})"
        except OSError as exc:
            return f"deleted: cannot stat {path} ({exc.strerror})"
        if not os.path.samestat(mine, there):
            return f"replaced: {path} is inode {there.st_ino}, the open file inode {mine.st_ino}"
        if mine.st_size < self.db_size:
            return f"truncated: {path} shrank from {self.db_size} to {mine.st_size} bytes"
        self.db_size = mine.st_size
        if self.wal_fd is not None:
            wal = Path(f"{path}-wal")
            wmine = os.fstat(self.wal_fd)
            try:
                wthere = os.stat(wal)
            except FileNotFoundError:
                return f"wal_deleted: nothing at {wal} (committed entries not yet checkpointed were in it)"
            except OSError as exc:
                return f"wal_deleted: cannot stat {wal} ({exc.strerror})"
            if not os.path.samestat(wmine, wthere):
                return f"wal_replaced: {wal} is inode {wthere.st_ino}, the open one inode {wmine.st_ino}"
            if wmine.st_size < self.wal_size:
                return f"wal_truncated: {wal} shrank from {self.wal_size} to {wmine.st_size} bytes"
            self.wal_size = wmine.st_size
        return None

    def is_ours(self, p: Path) -> bool:
        try:
            st = os.stat(p)
        except OSError:
            return False
        for fd in (self.db_fd, self.wal_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    if os.path.samestat(os.fstat(fd), st):
                        return True
        return False

    def close(self) -> None:
        for fd in (self.db_fd, self.wal_fd):
            if fd is not None:
                with _suppress_os():
                    os.close(fd)


#: fixed length of the head file [bytes] (rewritten in place)
_SIDECAR_LEN = 256


def _read_sidecar(p: Path) -> dict[str, Any] | None:
    try:
        text = p.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not text:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return {"id": None}
    return doc if isinstance(doc, dict) else {"id": None}


class _Spill:
    """Held entries on disk, in order, in ``<journal>.held``: a header line, then one JSON
    line per entry ``{"s": seq, "e": fields, "h": chained hash}``. ``count`` entries after
    the folded ones (from byte ``read_pos``) are still to go into the journal. Read in
    bounded chunks: memory does not grow with the file."""

    #: bytes read at a time
    CHUNK = 1 << 20

    def __init__(self, path: Path, fd: int, uuid_: str, size: int) -> None:
        self.path = path
        self.fd = fd
        self.uuid = uuid_
        self.next_seq = 1
        self.size = size
        self.head = hashlib.sha256(uuid_.encode()).hexdigest()[:32]
        self.count = 0
        self.read_pos = size  # byte offset of the first entry not folded yet
        self.problems: list[str] = []
        self._dirty = False
        self._ends: list[int] = []

    @classmethod
    def create(cls, path: Path) -> _Spill:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o640)
        u = uuid.uuid4().hex
        header = (json.dumps({"spill": u, "v": 1, "journal": path.name.removesuffix(".held")}) + "\n").encode()
        try:
            if os.pwrite(fd, header, 0) != len(header):
                raise OSError("short write")
            os.fsync(fd)
        except OSError:
            os.close(fd)
            with _suppress_os():
                path.unlink()
            raise
        return cls(path, fd, u, len(header))

    @classmethod
    def open_existing(cls, path: Path, folded_uuid: str, folded_seq: int) -> _Spill | None:
        """The spill file a previous run left (None: unreadable, moved aside). Entries up to
        ``folded_seq`` of spill ``folded_uuid`` are in the journal already."""
        fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        size = os.fstat(fd).st_size
        first = os.pread(fd, min(size, 1 << 16), 0)
        nl = first.find(b"\n")
        try:
            header = json.loads(first[:nl]) if nl > 0 else None
            u = str(header["spill"]) if isinstance(header, dict) else ""
        except (ValueError, KeyError, TypeError):
            u = ""
        if not u:
            os.close(fd)
            log.error("journal.spill_unreadable", path=str(path), reason="no header line")
            with _suppress_os():
                os.replace(path, path.with_name(f"{path.name}.unreadable-{_stamp()}"))
            return None
        sp = cls(path, fd, u, size)
        sp.read_pos = nl + 1
        if size and os.pread(fd, 1, size - 1) != b"\n":  # a line without its newline: a crash while writing it
            back = max(0, size - cls.CHUNK)
            cut = os.pread(fd, size - back, back).rfind(b"\n")
            tail = back + cut + 1 if cut >= 0 else nl + 1
            sp.problems.append("the last line is incomplete (a crash while writing it): not folded in")
            os.ftruncate(fd, tail)
            sp.size = size = tail
        skip = folded_seq if folded_uuid == u else 0
        for s, _ev, end in sp._scan(nl + 1, size, check=True):
            if s <= skip:
                sp.read_pos = end
            else:
                sp.count += 1
            sp.next_seq = s + 1
        return sp

    def _lines(self, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
        """(line, its offset, offset after it) for each complete line in [start, end)."""
        pos, buf = start, b""
        while pos < end or buf:
            if pos < end:
                chunk = os.pread(self.fd, min(self.CHUNK, end - pos), pos)
                if not chunk:
                    return
                pos += len(chunk)
                buf += chunk
            at = pos - len(buf)
            cut = 0
            while (nl := buf.find(b"\n", cut)) >= 0:
                yield buf[cut:nl], at + cut, at + nl + 1
                cut = nl + 1
            buf = buf[cut:]
            if pos >= end:
                return

    def _scan(self, start: int, end: int, *, check: bool) -> Iterator[tuple[int, Event, int]]:
        """(seq, event, offset after it) per entry; ``check``: verify the chain (``problems``)."""
        h = self.head
        expect = None
        for line, at, after in self._lines(start, end):
            try:
                doc = json.loads(line)
                s, fields, got_h = int(doc["s"]), dict(doc["e"]), str(doc["h"])
                ev = Event(**{k: v for k, v in fields.items() if k in _EVENT_FIELDS})
            except (ValueError, KeyError, TypeError) as exc:
                if check:
                    self.problems.append(f"unreadable line at byte {at} ({type(exc).__name__}): skipped")
                continue
            if check:
                if got_h != _spill_link(h, s, fields):
                    self.problems.append(f"entry {s} does not match its hash (edited)")
                if expect is not None and s != expect:
                    self.problems.append(f"entries {expect}..{s - 1} missing (removed)")
                h, expect = got_h, s + 1
            yield s, ev, after
        if check:
            self.head = h

    def write(self, ev: Event) -> bool:
        """Append one entry; False (and nothing written) when the disk refuses it."""
        fields = {k: getattr(ev, k) for k in _EVENT_FIELDS}
        try:
            fields["data"] = json.loads(_dump(ev.data)) if ev.data else {}
            fields["t_plant_s"], fields["value"] = _num(ev.t_plant_s), _num(ev.value)
            h = _spill_link(self.head, self.next_seq, fields)
            line = (json.dumps({"s": self.next_seq, "e": fields, "h": h}, ensure_ascii=False,
                               default=_json_default) + "\n").encode("utf-8", "replace")  # fmt: skip
        except (TypeError, ValueError):
            return False
        try:
            n = os.pwrite(self.fd, line, self.size)
        except OSError:
            n = -1
        if n != len(line):
            with _suppress_os():
                os.ftruncate(self.fd, self.size)
            return False
        self.size += n
        self.head = h
        self.next_seq += 1
        self.count += 1
        self._dirty = True
        return True

    def read(self, limit: int | None) -> list[tuple[int, Event]]:
        """The next ``limit`` entries not folded yet (all when None), with their sequence numbers."""
        out: list[tuple[int, Event]] = []
        self._ends = []
        if self.count == 0:
            return out
        for s, ev, end in self._scan(self.read_pos, self.size, check=False):
            out.append((s, ev))
            self._ends.append(end)
            if limit is not None and len(out) >= limit:
                break
        return out

    def advance(self, n: int) -> None:
        """``n`` entries from ``read`` are in the journal."""
        if n:
            self.read_pos = self._ends[n - 1]
            self.count -= n

    def sync(self) -> None:
        if self._dirty:
            with _suppress_os():
                os.fsync(self.fd)
            self._dirty = False

    def remove(self) -> None:
        self.close()
        with _suppress_os():
            self.path.unlink()

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            with _suppress_os():
                os.close(fd)


_EVENT_FIELDS = tuple(f.name for f in dataclasses.fields(Event) if f.name not in ("id", "hash"))


def _spill_link(prev: str, seq: int, fields: dict[str, Any]) -> str:
    body = json.dumps([seq, fields], sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(f"{prev}\n{body}".encode("utf-8", "replace")).hexdigest()[:32]


def _execute_script(db: sqlite3.Connection, script: str) -> None:
    """Each statement of ``script`` (no ``executescript``: it would commit the open transaction)."""
    for stmt in script.split(";"):
        if stmt.strip():
            db.execute(stmt)


def _unlink_db(p: Path) -> None:
    """Remove an SQLite file and its ``-wal``/``-shm``."""
    for q in (p, Path(f"{p}-wal"), Path(f"{p}-shm")):
        with _suppress_os():
            q.unlink()


def _readable(db: sqlite3.Connection) -> bool:
    """Can ``db`` still read its events table?"""
    try:
        db.execute("SELECT MAX(id) FROM events").fetchone()
    except sqlite3.Error:
        return False
    return True


def _fsync_path(p: Path) -> None:
    with _suppress_os():
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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


def _row_values(id_: int, e: Event, order: str) -> tuple[Any, ...]:
    """An event's ``_HASHED`` values exactly as SQLite will give them back."""
    cell = None
    if e.cell is not None:
        with contextlib.suppress(TypeError, ValueError, OverflowError):
            c = int(e.cell)
            cell = c if _INT64[0] <= c <= _INT64[1] else None
    return (id_, _text(e.kind), _text(e.category), _text(e.ts_utc), _num(e.t_plant_s), _opt_text(e.plant),
            _opt_text(e.line), _opt_text(e.room), cell, _opt_text(e.source), _opt_text(e.tag), _num(e.value),
            _opt_text(e.mode), _opt_text(e.user), _text(e.detail or ""), _dump(e.data) if e.data else "{}",
            _num(e.t_mono_s), _text(order))  # fmt: skip


def _text(s: Any) -> str:
    """A string SQLite stores as given (lone surrogates replaced)."""
    t = s if isinstance(s, str) else str(s)
    try:
        t.encode("utf-8")
    except UnicodeEncodeError:
        t = t.encode("utf-8", "replace").decode("utf-8")
    return t


def _opt_text(s: Any) -> str | None:
    return None if s is None else _text(s)


def _row_event(r: Sequence[Any]) -> Event:
    (rid, kind, category, ts, t_plant, plant, line, room, cell, source, tag, value, mode, user, detail, data,
     t_mono, ts_order, h) = r  # fmt: skip
    try:
        d = json.loads(data) if data else {}
    except ValueError:
        d = {"raw": data}
    if not isinstance(d, dict):
        d = {"raw": d}
    return Event(kind=kind, category=category, ts_utc=ts, t_plant_s=t_plant, plant=plant, line=line, room=room,
                 cell=cell, source=source, tag=tag, value=value, mode=mode, user=user, detail=detail or "",
                 data=d, id=int(rid), t_mono_s=t_mono, ts_order=ts_order or "", hash=h)  # fmt: skip


def _num(x: Any) -> float | None:
    """A finite float or None (SQLite REAL has no NaN; inf is kept as text in data); -0.0 -> 0.0
    (SQLite gives -0.0 back as 0.0, and the hash covers what it gives back)."""
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError, OverflowError):
        return None
    return v + 0.0 if v == v and v not in (float("inf"), float("-inf")) else None


def _dump(data: dict[str, Any]) -> str:
    """JSON text of ``data``; NaN/inf become strings (never a failed commit over a value)."""
    try:
        return _text(json.dumps(data, default=_json_default, allow_nan=False))
    except ValueError:
        return _text(json.dumps(_finite(data), default=_json_default, allow_nan=False))


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
