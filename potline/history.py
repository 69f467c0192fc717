"""History: an embedded time-series store (one SQLite file, WAL) behind the HMI's trends and
OPC UA HistoryRead.

Layout on disk. Values come in *groups*: one group is one quantity of one potroom (every
cell, in floor order) or of one line, named like the mirror's array node without the
plant (``Potroom1.CellVoltage``, ``Line1.LineCurrent``); its member *tags* are named like
the mirror's per-cell scalars (``Potroom1.Cell017.CellVoltage``). One scan of a group is
one row: a float32 array (NaN = no good value). So a 660-cell line with a handful of
quantities writes a few tens of rows per scan, in one transaction.

Three resolutions, each with its own retention (``HistoryConfig``):

* raw: every sample written, kept ``raw_days``;
* 1 min and 1 h aggregates (count of good samples, min, mean, max per element), kept
  ``minute_days`` and ``hour_days``. A bucket is aggregated from the finer level once a
  sample of a later bucket arrives (so it is done on the write path, from the file, and a
  restart loses nothing); a late sample re-aggregates its bucket. Queries past the last
  aggregated bucket aggregate the tail on the fly.

Quality. A raw row may carry each element's OPC UA StatusCode (the mirror's: the bridge's
quality, ``MirrorModel.status``), so a value that was there but not Good is kept with its
Bad or Uncertain code; without codes a value is Good where finite and ``BadNoDataAvailable`` (NaN: no value,
as the mirror says) elsewhere.
Aggregates count and average Good samples only (``n``); their points are Good where a
bucket has one and ``BAD_NO_DATA`` where none. ``Series.q``/``GroupSeries.q`` carry the
codes; a Bad raw sample reads as NaN in ``mean`` (a gap in a trend), an Uncertain one keeps
its value. HistoryRead answers each raw sample with its stored code.

``prune(now)`` deletes what is past retention and gives the pages back to the file system
(incremental vacuum): the file stays bounded by retention x rate (``estimate_bytes``).

No clock calls: the caller gives the sample time ``t`` and ``now`` for pruning, as Unix
seconds on the plant timeline (the daemon uses its start's wall time + plant time).

``query(tag, t0, t1)`` picks the finest resolution that fits ``max_points`` and still
holds data at ``t0``. ``OpcUaHistoryStorage`` serves the same store to asyncua's
``HistoryManager`` (the mirror's HistoryRead).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from potline.shift_report import ReportSchedule
from twin.configcore import StrictModel

if TYPE_CHECKING:
    from potctl.plant import Measurements
    from twin.layout import PlantLayout

__all__ = [
    "BAD",
    "BAD_NO_DATA",
    "CELL_QUANTITIES",
    "GOOD",
    "LINE_QUANTITIES",
    "RESOLUTIONS",
    "GroupSeries",
    "History",
    "HistoryConfig",
    "HistoryError",
    "OpcUaHistoryStorage",
    "Series",
    "SeriesGroup",
    "estimate_bytes",
    "history_values",
    "plant_groups",
    "split_values",
]

SCHEMA_VERSION = 2  # 2: raw.q, per-element status codes
#: OPC UA StatusCodes used here: Good, Bad (reason unknown), BadNoData (an aggregate without a good sample)
GOOD, BAD, BAD_NO_DATA = 0, 0x80000000, 0x809B0000
#: a sample with no value (NaN) that was not said to be Bad: the mirror's code for it
BAD_NO_DATA_AVAILABLE = 0x80B10000
#: resolutions [s]: 0 = raw samples
RESOLUTIONS = (0, 60, 3600)
Resolution = Literal["auto", "raw", "1m", "1h"]
_RES_NAMES = {"raw": 0, "1m": 60, "1h": 3600}

#: per-cell quantities the daemon historizes: name -> (unit, description)
CELL_QUANTITIES: dict[str, tuple[str, str]] = {
    "CellVoltage": ("V", "Cell voltage (measured)"),
    "PseudoResistance": ("µΩ", "Pseudo-resistance (U - 1.65 V) / I"),
    "AluminaEstimate": ("wt%", "Estimated dissolved alumina"),
    "AcdEstimate": ("cm", "Estimated anode-cathode distance"),
    "TimeToAnodeEffect": ("s", "Predicted time to the next anode effect"),
    "FeedShots": ("shots", "Cumulative feeder shots acknowledged"),
    "BeamPosition": ("mm", "Cumulative anode-beam movement acknowledged"),
}
#: per-line quantities: name -> (unit, description)
LINE_QUANTITIES: dict[str, tuple[str, str]] = {
    "LineCurrent": ("kA", "Line current (DCCT)"),
    "LineVoltage": ("V", "Rectifier DC output voltage"),
    "LineSetpoint": ("kA", "Line current setpoint (read back)"),
}


class HistoryError(RuntimeError):
    """The history file or a request cannot be served (unknown tag, other schema, not a history file)."""


class HistoryConfig(StrictModel):
    """History retention and storage (a ``[history]`` TOML table)."""

    raw_days: float = Field(3.0, gt=0.0, le=366.0, description="keep raw samples [days]",
                            json_schema_extra={"unit": "days"})  # fmt: skip
    minute_days: float = Field(31.0, gt=0.0, le=3660.0, description="keep 1-min aggregates [days]",
                               json_schema_extra={"unit": "days"})  # fmt: skip
    hour_days: float = Field(730.0, gt=0.0, le=36600.0, description="keep 1-h aggregates [days]",
                             json_schema_extra={"unit": "days"})  # fmt: skip
    synchronous: Literal["NORMAL", "FULL", "OFF"] = Field(
        "NORMAL", description="SQLite synchronous: history may lose the last seconds on power loss"
    )
    max_points: int = Field(2000, ge=10, le=1_000_000, description="default point budget of a query")
    reports: ReportSchedule = Field(
        default_factory=ReportSchedule, description="shift and daily reports from the journal and this history"
    )

    def retention_s(self, res: int) -> float:
        """Retention of resolution ``res`` [s]."""
        days = {0: self.raw_days, 60: self.minute_days, 3600: self.hour_days}[res]
        return days * 86400.0


@dataclass(frozen=True, slots=True)
class SeriesGroup:
    """One group of tags stored together (one quantity of one room or line).

    Attributes:
        name: group name (``Potroom1.CellVoltage``).
        tags: member tag names, in array order.
        unit: engineering unit; description: one line.
    """

    name: str
    tags: tuple[str, ...]
    unit: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name or not self.tags:
            raise ValueError(f"series group {self.name!r}: needs a name and at least one tag")
        if len(set(self.tags)) != len(self.tags):
            raise ValueError(f"series group {self.name}: duplicate tags")


@dataclass(slots=True)
class Series:
    """One tag over time. ``t`` [Unix s] is the sample time (raw) or bucket start; ``n``
    the good samples per point (1/0 for raw); min/mean/max equal for raw."""

    tag: str
    unit: str
    resolution_s: int
    t: np.ndarray
    mean: np.ndarray
    min: np.ndarray
    max: np.ndarray
    n: np.ndarray
    #: OPC UA StatusCode of each point (uint32: 0 Good, 0x40.. Uncertain, 0x80.. Bad)
    q: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.uint32))

    def __len__(self) -> int:
        return int(self.t.shape[0])

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN -> None), for the HMI and uPlot; ``q`` the status codes, ``uncertain``
        and ``bad`` how many points are so."""
        sev = self.q.astype(np.int64) >> 30
        return {
            "tag": self.tag, "unit": self.unit, "resolution_s": self.resolution_s, "t": self.t.tolist(),
            "mean": _nan_none(self.mean), "min": _nan_none(self.min), "max": _nan_none(self.max),
            "q": self.q.astype(np.int64).tolist(), "uncertain": int((sev == 1).sum()), "bad": int((sev >= 2).sum()),
        }  # fmt: skip


@dataclass(slots=True)
class GroupSeries:
    """A whole group over time: ``mean``/``min``/``max``/``n`` are [points, members]."""

    group: str
    tags: tuple[str, ...]
    unit: str
    resolution_s: int
    t: np.ndarray
    mean: np.ndarray
    min: np.ndarray
    max: np.ndarray
    n: np.ndarray
    #: [points, members] OPC UA StatusCodes (see ``Series.q``)
    q: np.ndarray = field(default_factory=lambda: np.empty((0, 0), dtype=np.uint32))


_SCHEMA = """
CREATE TABLE groups (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, unit TEXT NOT NULL, description TEXT NOT NULL,
    size INTEGER NOT NULL
);
CREATE TABLE tags (name TEXT PRIMARY KEY, grp INTEGER NOT NULL, idx INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE raw (grp INTEGER NOT NULL, t REAL NOT NULL, v BLOB NOT NULL, q BLOB);
CREATE UNIQUE INDEX raw_gt ON raw (grp, t);
CREATE TABLE agg (
    res INTEGER NOT NULL, grp INTEGER NOT NULL, t REAL NOT NULL,
    n BLOB NOT NULL, vmin BLOB NOT NULL, vmean BLOB NOT NULL, vmax BLOB NOT NULL
);
CREATE UNIQUE INDEX agg_rgt ON agg (res, grp, t);
CREATE TABLE progress (grp INTEGER NOT NULL, res INTEGER NOT NULL, done REAL NOT NULL, PRIMARY KEY (grp, res));
"""


@dataclass(slots=True)
class _Group:
    id: int
    spec: SeriesGroup


@dataclass(slots=True)
class _Buckets:
    """Rows of one resolution: t [k], n/min/mean/max [k, m]."""

    t: np.ndarray
    n: np.ndarray
    vmin: np.ndarray
    vmean: np.ndarray
    vmax: np.ndarray
    #: raw rows only: [k, m] status codes (None: aggregates)
    q: np.ndarray | None = None

    @classmethod
    def empty(cls, m: int) -> _Buckets:
        z = np.empty((0, m), dtype=np.float32)
        return cls(np.empty(0), np.empty((0, m), dtype=np.uint16), z, z.copy(), z.copy())

    def __len__(self) -> int:
        return int(self.t.shape[0])

    def concat(self, other: _Buckets) -> _Buckets:
        if not len(other):
            return self
        if not len(self):
            return other
        return _Buckets(*(np.concatenate([a, b]) for a, b in
                          zip(self._parts(), other._parts(), strict=True)))  # fmt: skip

    def _parts(self) -> tuple[np.ndarray, ...]:
        return self.t, self.n, self.vmin, self.vmean, self.vmax


class History:
    """The time-series file (see the module docstring).

    Args:
        path: the SQLite file (created with its directory unless ``readonly``).
        config: retention and defaults.
        readonly: open for queries only (the HMI's and the OPC UA server's reader).

    Thread-safe (one lock around the connection); use one writer and any readers.
    """

    def __init__(self, path: str | Path, config: HistoryConfig | None = None, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.config = config or HistoryConfig()
        self.readonly = readonly
        self._lock = threading.Lock()
        self._groups: dict[str, _Group] = {}
        self._tags: dict[str, tuple[str, int]] = {}
        self._done: dict[tuple[int, int], float] = {}
        if readonly:
            if not self.path.is_file():
                raise HistoryError(f"{self.path}: no history file")
            uri = f"file:{self.path.resolve()}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, timeout=10.0, check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), timeout=10.0, check_same_thread=False, isolation_level=None)
        try:
            self._setup()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise HistoryError(f"{self.path}: not a usable history file ({exc})") from None

    def _setup(self) -> None:
        db = self._db
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise HistoryError(f"{self.path}: history schema {version} is newer than this program's ({SCHEMA_VERSION})")
        if not self.readonly:
            if version == 0:
                tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                if tables:
                    raise HistoryError(f"{self.path}: an SQLite file that is not a potline history ({sorted(tables)})")
                # auto_vacuum must be chosen before the first table: pruned pages go back to the disk
                db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise HistoryError(f"{self.path}: cannot switch to WAL mode (got {mode!r})")
            db.execute(f"PRAGMA synchronous={self.config.synchronous}")
            if version == 0:
                db.executescript(f"BEGIN IMMEDIATE;\n{_SCHEMA}\nPRAGMA user_version={SCHEMA_VERSION};\nCOMMIT;")
            elif version == 1:  # a file from before quality: its rows read as before (Good where finite)
                db.executescript(f"BEGIN IMMEDIATE;\nALTER TABLE raw ADD COLUMN q BLOB;\n"
                                 f"PRAGMA user_version={SCHEMA_VERSION};\nCOMMIT;")  # fmt: skip
        elif version == 0:
            raise HistoryError(f"{self.path}: not a potline history file")
        cols = {str(r[1]) for r in db.execute("PRAGMA table_info(raw)")}
        self._has_q = "q" in cols
        self._load_catalogue()

    def _load_catalogue(self) -> None:
        db = self._db
        groups: dict[int, SeriesGroup] = {}
        members: dict[int, list[tuple[int, str]]] = {}
        for gid, tag, idx in db.execute("SELECT grp, name, idx FROM tags"):
            members.setdefault(int(gid), []).append((int(idx), str(tag)))
        for gid, name, unit, desc, _size in db.execute("SELECT id, name, unit, description, size FROM groups"):
            tags = tuple(t for _i, t in sorted(members.get(int(gid), [])))
            groups[int(gid)] = SeriesGroup(str(name), tags, str(unit), str(desc))
        self._groups = {g.name: _Group(gid, g) for gid, g in groups.items()}
        self._tags = {t: (g.name, i) for g in groups.values() for i, t in enumerate(g.tags)}
        self._done = {(int(g), int(r)): float(d) for g, r, d in db.execute("SELECT grp, res, done FROM progress")}

    def refresh(self) -> None:
        """Re-read the catalogue (a reader, after the writer declared new groups)."""
        with self._lock:
            self._load_catalogue()

    # ------------------------------------------------------------------ catalogue

    def declare(self, groups: Iterable[SeriesGroup]) -> None:
        """Register groups (idempotent). A known group must keep its tags.

        Raises:
            HistoryError: a group's tags differ from the file's, or a tag is in another group.
        """
        self._writable()
        new = []
        for g in groups:
            have = self._groups.get(g.name)
            if have is not None:
                if have.spec.tags != g.tags:
                    raise HistoryError(
                        f"{self.path}: group {g.name} has {len(have.spec.tags)} tags in the file, {len(g.tags)} "
                        "declared (the plant layout changed: use a new history file)"
                    )
                continue
            clash = [t for t in g.tags if t in self._tags]
            if clash:
                raise HistoryError(f"{self.path}: tag {clash[0]} already belongs to group {self._tags[clash[0]][0]}")
            new.append(g)
        if not new:
            return
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                for g in new:
                    cur = db.execute("INSERT INTO groups (name, unit, description, size) VALUES (?, ?, ?, ?)",
                                     (g.name, g.unit, g.description, len(g.tags)))  # fmt: skip
                    gid = int(cur.lastrowid or 0)
                    db.executemany("INSERT INTO tags (name, grp, idx) VALUES (?, ?, ?)",
                                   [(t, gid, i) for i, t in enumerate(g.tags)])  # fmt: skip
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            self._load_catalogue()

    def groups(self) -> list[SeriesGroup]:
        """Every declared group."""
        return [g.spec for g in self._groups.values()]

    def tags(self) -> list[str]:
        """Every tag name."""
        return list(self._tags)

    def has(self, name: str) -> bool:
        """Is ``name`` a known tag or group?"""
        return name in self._tags or name in self._groups

    def group_of(self, tag: str) -> tuple[SeriesGroup, int]:
        """(group, index in the group) of ``tag``; ``HistoryError`` for an unknown tag."""
        try:
            name, idx = self._tags[tag]
        except KeyError:
            raise HistoryError(f"no history for tag {tag!r}") from None
        return self._groups[name].spec, idx

    # ------------------------------------------------------------------ writing

    def write(self, t: float, values: Mapping[str, Any], quality: Mapping[str, Any] | None = None) -> None:
        """Store one scan: group name -> array of its members' values (NaN: no value), and
        ``quality``: group name -> their OPC UA StatusCodes (a group without: Good where finite).

        One transaction; buckets a later sample closes are aggregated in it. Unknown groups
        and wrong sizes raise ``HistoryError`` before anything is written.
        """
        self._writable()
        t = float(t)
        if not math.isfinite(t):
            raise HistoryError(f"sample time must be finite, got {t}")
        rows = []
        for name, arr in values.items():
            g = self._groups.get(name)
            if g is None:
                raise HistoryError(f"no history group {name!r} (declare it first)")
            a = np.asarray(arr, dtype=np.float32).reshape(-1)
            if a.shape[0] != len(g.spec.tags):
                raise HistoryError(f"group {name}: {a.shape[0]} values, expected {len(g.spec.tags)}")
            qb: bytes | None = None
            if quality is not None and name in quality:
                q = np.asarray(quality[name]).reshape(-1)
                if q.shape[0] != a.shape[0]:
                    raise HistoryError(f"group {name}: {q.shape[0]} status codes, expected {a.shape[0]}")
                q = q.astype(np.uint32)
                qb = q.astype("<u4").tobytes() if q.any() else None
            rows.append((g, np.where(np.isfinite(a), a, np.float32(np.nan)).astype("<f4"), qb))
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                for g, a, qb in rows:
                    db.execute("INSERT OR REPLACE INTO raw (grp, t, v, q) VALUES (?, ?, ?, ?)",
                               (g.id, t, a.tobytes(), qb))  # fmt: skip
                    self._roll(g, t)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                self._load_catalogue()  # the progress marks were rolled back too
                raise

    def _roll(self, g: _Group, t: float) -> None:
        """Aggregate the buckets a sample at ``t`` closes (or re-aggregate the one it is late for)."""
        for res in (60, 3600):
            bucket = math.floor(t / res) * res
            key = (g.id, res)
            done = self._done.get(key)
            if done is None:
                self._set_done(key, bucket)
            elif bucket > done:
                self._store(g, res, self._aggregate_level(g, res, done, bucket))
                self._set_done(key, bucket)
            elif bucket < done:  # a late sample: its bucket is redone
                self._store(g, res, self._aggregate_level(g, res, bucket, bucket + res))

    def _set_done(self, key: tuple[int, int], done: float) -> None:
        self._db.execute("INSERT OR REPLACE INTO progress (grp, res, done) VALUES (?, ?, ?)", (*key, done))
        self._done[key] = done

    def _aggregate_level(self, g: _Group, res: int, t0: float, t1: float) -> _Buckets:
        """Buckets of ``res`` in [t0, t1) from the stored level below."""
        finer = self._read(g, 60 if res == 3600 else 0, t0, t1)
        return _combine(finer, res)

    def _store(self, g: _Group, res: int, b: _Buckets) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO agg (res, grp, t, n, vmin, vmean, vmax) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(res, g.id, float(b.t[i]), b.n[i].astype("<u2").tobytes(), b.vmin[i].astype("<f4").tobytes(),
              b.vmean[i].astype("<f4").tobytes(), b.vmax[i].astype("<f4").tobytes()) for i in range(len(b))],
        )  # fmt: skip

    # ------------------------------------------------------------------ reading

    def _read(
        self, g: _Group, res: int, t0: float, t1: float, limit: int | None = None, desc: bool = False
    ) -> _Buckets:
        """Stored rows of ``res`` with t in [t0, t1) (caller holds the lock or is the writer)."""
        m = len(g.spec.tags)
        sql_lim = (" DESC" if desc else "") + ("" if limit is None else f" LIMIT {int(limit)}")
        if res == 0:
            qcol = "q" if self._has_q else "NULL"
            rows = self._db.execute(
                f"SELECT t, v, {qcol} FROM raw WHERE grp = ? AND t >= ? AND t < ? ORDER BY t{sql_lim}", (g.id, t0, t1)
            ).fetchall()
            if not rows:
                b = _Buckets.empty(m)
                b.q = np.empty((0, m), dtype=np.uint32)
                return b
            v = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), m)
            q = np.zeros((len(rows), m), dtype=np.uint32)
            for i, r in enumerate(rows):
                if r[2] is not None:
                    q[i] = np.frombuffer(r[2], dtype="<u4")
            q[((q >> 30) < 2) & ~np.isfinite(v)] = BAD_NO_DATA_AVAILABLE  # no value: Bad, as on the mirror
            good = np.isfinite(v) & ((q >> 30) == 0)
            return _Buckets(np.array([r[0] for r in rows], dtype=float), good.astype(np.uint16), v, v, v, q)
        rows = self._db.execute(
            f"SELECT t, n, vmin, vmean, vmax FROM agg WHERE res = ? AND grp = ? AND t >= ? AND t < ? ORDER BY t{sql_lim}",
            (res, g.id, t0, t1),
        ).fetchall()
        if not rows:
            return _Buckets.empty(m)

        def col(i: int, dt: str) -> np.ndarray:
            return np.frombuffer(b"".join(r[i] for r in rows), dtype=dt).reshape(len(rows), m)

        return _Buckets(np.array([r[0] for r in rows], dtype=float), col(1, "<u2"), col(2, "<f4"), col(3, "<f4"),
                        col(4, "<f4"))  # fmt: skip

    def _buckets(self, g: _Group, res: int, t0: float, t1: float) -> _Buckets:
        """Every point of ``res`` with t in [t0, t1]: stored ones, then the tail not aggregated yet."""
        hi = math.nextafter(t1, math.inf)
        if res == 0:
            return self._read(g, 0, t0, hi)
        start = math.floor(t0 / res) * res
        done = self._done.get((g.id, res), start)
        stored = self._read(g, res, start, min(done, hi))
        tail_from = max(done, start)
        if tail_from > t1:
            return stored
        finer = 60 if res == 3600 else 0
        return stored.concat(_combine(self._buckets(g, finer, tail_from, t1), res))

    def _oldest(self, g: _Group, res: int) -> float | None:
        if res == 0:
            row = self._db.execute("SELECT MIN(t) FROM raw WHERE grp = ?", (g.id,)).fetchone()
        else:
            row = self._db.execute("SELECT MIN(t) FROM agg WHERE res = ? AND grp = ?", (res, g.id)).fetchone()
            if row[0] is None:  # nothing aggregated yet: the tail comes from raw
                row = self._db.execute("SELECT MIN(t) FROM raw WHERE grp = ?", (g.id,)).fetchone()
        return None if row[0] is None else float(row[0])

    def choose_resolution(self, group: str, t0: float, t1: float, max_points: int | None = None) -> int:
        """The finest resolution [s] whose points in [t0, t1] fit ``max_points`` and that
        still holds data from ``t0`` (or from the oldest data there is)."""
        g = self._group(group)
        budget = max_points or self.config.max_points
        with self._lock:
            oldest = {r: self._oldest(g, r) for r in RESOLUTIONS}
            known = [o for o in oldest.values() if o is not None]
            if not known:
                return 0
            first = max(t0, min(known))
            for res in RESOLUTIONS:
                if oldest[res] is None or oldest[res] > first + max(res, 60):  # type: ignore[operator]
                    continue
                if res == 0:
                    n = self._db.execute("SELECT COUNT(*) FROM raw WHERE grp = ? AND t >= ? AND t <= ?",
                                         (g.id, t0, t1)).fetchone()[0]  # fmt: skip
                else:
                    n = (t1 - t0) / res
                if n <= budget:
                    return res
        return RESOLUTIONS[-1]

    def query(
        self, tag: str, t0: float, t1: float, *, resolution: Resolution = "auto", max_points: int | None = None
    ) -> Series:
        """``tag`` over [t0, t1] [Unix s] at ``resolution`` (auto: ``choose_resolution``)."""
        spec, idx = self.group_of(tag)
        gs = self.query_group(spec.name, t0, t1, resolution=resolution, max_points=max_points, members=[idx])
        return Series(tag, spec.unit, gs.resolution_s, gs.t, gs.mean[:, 0], gs.min[:, 0], gs.max[:, 0], gs.n[:, 0],
                      gs.q[:, 0])  # fmt: skip

    def query_group(
        self,
        group: str,
        t0: float,
        t1: float,
        *,
        resolution: Resolution = "auto",
        max_points: int | None = None,
        members: Sequence[int] | None = None,
    ) -> GroupSeries:
        """A group (or some ``members`` of it) over [t0, t1] (a room's cells on one chart)."""
        if not t1 >= t0:
            raise HistoryError(f"empty time range [{t0}, {t1}]")
        g = self._group(group)
        if resolution == "auto":
            res = self.choose_resolution(group, t0, t1, max_points)
        elif resolution in _RES_NAMES:
            res = _RES_NAMES[resolution]
        else:
            raise HistoryError(f"resolution must be auto, raw, 1m or 1h, got {resolution!r}")
        with self._lock:
            if self.readonly:  # the writer moves on: take its aggregation marks
                self._done = {
                    (int(a), int(r)): float(d) for a, r, d in self._db.execute("SELECT grp, res, done FROM progress")
                }
            b = self._buckets(g, res, t0, t1)
        cols = slice(None) if members is None else list(members)
        tags = g.spec.tags if members is None else tuple(g.spec.tags[i] for i in members)
        mean = b.vmean[:, cols].astype(float)
        n = b.n[:, cols].astype(np.int64)
        if b.q is not None:  # raw: the value where it was, unless Bad
            q = b.q[:, cols].astype(np.uint32)
            mean[(q >> 30) >= 2] = np.nan
        else:
            q = np.where(n > 0, GOOD, BAD_NO_DATA).astype(np.uint32)
            mean[n == 0] = np.nan
        return GroupSeries(group, tags, g.spec.unit, res, b.t, mean, b.vmin[:, cols].astype(float),
                           b.vmax[:, cols].astype(float), n, q)  # fmt: skip

    def raw(
        self, tag: str, t0: float, t1: float, limit: int | None = None, *, newest_first: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw samples of ``tag`` (or of a whole group: values [k, m]) with t in [t0, t1]: (t, values),
        oldest first (or newest first), at most ``limit``; values as stored, whatever their
        quality (``raw_quality`` gives the codes). A line's tag (a group of one member of
        the same name) is a tag: one value per sample."""
        t, v, _q = self.raw_quality(tag, t0, t1, limit, newest_first=newest_first)
        return t, v

    def raw_quality(
        self, tag: str, t0: float, t1: float, limit: int | None = None, *, newest_first: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``raw`` with each value's OPC UA StatusCode (uint32, same shape as the values)."""
        if tag in self._tags:
            spec, idx = self.group_of(tag)
            g, cols, one = self._groups[spec.name], slice(idx, idx + 1), True
        elif tag in self._groups:
            g, cols, one = self._groups[tag], slice(None), False
        else:
            raise HistoryError(f"no history tag or group {tag!r}")
        with self._lock:
            b = self._read(g, 0, t0, math.nextafter(t1, math.inf), limit, desc=newest_first)
        v = b.vmean[:, cols].astype(float)
        assert b.q is not None
        q = b.q[:, cols]
        return (b.t, v[:, 0], q[:, 0]) if one else (b.t, v, q)

    def _group(self, name: str) -> _Group:
        try:
            return self._groups[name]
        except KeyError:
            raise HistoryError(f"no history group {name!r}") from None

    # ------------------------------------------------------------------ retention and housekeeping

    def prune(self, now: float, *, max_rows: int | None = None) -> dict[str, int]:
        """Delete what is past retention at ``now`` [Unix s]; returns rows deleted per level.

        ``max_rows`` bounds one call's work per level (call again until it returns zeros).
        Freed pages go back to the file system.
        """
        self._writable()
        out = {"raw": 0, "1m": 0, "1h": 0}
        lim = "" if max_rows is None else f" LIMIT {int(max_rows)}"
        with self._lock:
            db = self._db
            for g in self._groups.values():  # per group: the (grp, t) indexes find the old rows
                for res, name in ((0, "raw"), (60, "1m"), (3600, "1h")):
                    edge = now - self.config.retention_s(res)
                    if res == 0:
                        sql = f"DELETE FROM raw WHERE rowid IN (SELECT rowid FROM raw WHERE grp = ? AND t < ?{lim})"
                        cur = db.execute(sql, (g.id, edge))
                    else:
                        sql = (f"DELETE FROM agg WHERE rowid IN "
                               f"(SELECT rowid FROM agg WHERE res = ? AND grp = ? AND t < ?{lim})")  # fmt: skip
                        cur = db.execute(sql, (res, g.id, edge))
                    out[name] += int(cur.rowcount)
            if any(out.values()):
                db.execute("PRAGMA incremental_vacuum")
        return out

    def counts(self) -> dict[str, int]:
        """Rows stored per level (raw, 1m, 1h)."""
        with self._lock:
            raw = int(self._db.execute("SELECT COUNT(*) FROM raw").fetchone()[0])
            agg = dict(self._db.execute("SELECT res, COUNT(*) FROM agg GROUP BY res").fetchall())
        return {"raw": raw, "1m": int(agg.get(60, 0)), "1h": int(agg.get(3600, 0))}

    def size_bytes(self) -> int:
        """Bytes on disk: the file and its WAL."""
        return sum(p.stat().st_size for p in (self.path, self.path.with_name(self.path.name + "-wal")) if p.exists())

    def checkpoint(self) -> None:
        """Fold the WAL into the file (keeps the WAL small; done at close)."""
        if not self.readonly:
            with self._lock:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.checkpoint()
        with self._lock:
            self._db.close()

    def _writable(self) -> None:
        if self.readonly:
            raise HistoryError(f"{self.path}: opened read-only")

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _combine(b: _Buckets, res: int) -> _Buckets:
    """Aggregate rows (sorted by t) into buckets of ``res`` seconds (NaN-aware, weighted means)."""
    if not len(b):
        return b
    keys = np.floor(b.t / res) * res
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    n = b.n.astype(np.int64)
    with np.errstate(invalid="ignore"):
        weighted = np.where(n > 0, b.vmean.astype(np.float64) * n, 0.0)
    n_sum = np.add.reduceat(n, starts, axis=0)
    s = np.add.reduceat(weighted, starts, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n_sum > 0, s / np.maximum(n_sum, 1), np.nan)
    vmin = np.fmin.reduceat(np.where(n > 0, b.vmin, np.nan), starts, axis=0)
    vmax = np.fmax.reduceat(np.where(n > 0, b.vmax, np.nan), starts, axis=0)
    return _Buckets(keys[starts], np.minimum(n_sum, 65535).astype(np.uint16), vmin.astype(np.float32),
                    mean.astype(np.float32), vmax.astype(np.float32))  # fmt: skip


def _nan_none(a: np.ndarray) -> list[float | None]:
    return [None if not math.isfinite(x) else round(float(x), 6) for x in a.tolist()]


# ---------------------------------------------------------------------------- the plant's series


def plant_groups(
    layout: PlantLayout,
    cell_quantities: Mapping[str, tuple[str, str]] = CELL_QUANTITIES,
    line_quantities: Mapping[str, tuple[str, str]] = LINE_QUANTITIES,
) -> list[SeriesGroup]:
    """The groups of a plant: one per (room, cell quantity) and (line, line quantity),
    named like the mirror's nodes without the plant (``Potroom1.CellVoltage``)."""
    out = []
    for r, room in enumerate(layout.room_names):
        cells = [f"{room}.Cell{int(layout.cell_number[k]):03d}" for k in layout.room_cells(r)]
        for q, (unit, desc) in cell_quantities.items():
            out.append(SeriesGroup(f"{room}.{q}", tuple(f"{c}.{q}" for c in cells), unit, desc))
    for line in layout.line_names:
        for q, (unit, desc) in line_quantities.items():
            out.append(SeriesGroup(f"{line}.{q}", (f"{line}.{q}",), unit, desc))
    return out


def split_values(layout: PlantLayout, values: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Per-plant arrays (quantity -> [n_cells] or [n_lines]) as ``History.write`` groups.

    An array of ``n_cells`` values is split per room (floor order); one of ``n_lines``
    per line; other sizes are an error naming the quantity.
    """
    out: dict[str, np.ndarray] = {}
    rooms = [layout.room_cells(r) for r in range(layout.n_rooms)]
    for q, arr in values.items():
        a = np.asarray(arr, dtype=float).reshape(-1)
        if a.shape[0] == layout.n_cells and q not in LINE_QUANTITIES:
            for r, idx in enumerate(rooms):
                out[f"{layout.room_names[r]}.{q}"] = a[idx]
        elif a.shape[0] == layout.n_lines:
            for li, line in enumerate(layout.line_names):
                out[f"{line}.{q}"] = a[li : li + 1]
        else:
            raise HistoryError(
                f"{q}: {a.shape[0]} values, expected {layout.n_cells} (cells) or {layout.n_lines} (lines)"
            )
    return out


def history_values(snapshot: Mapping[str, Any], meas: Measurements) -> dict[str, Any]:
    """What the daemon historizes each scan: the mirror's snapshot (``MirrorModel.snapshot``)
    with the acknowledged feed and beam counters and the line setpoint read back."""
    out = {k: v for k, v in snapshot.items() if k in CELL_QUANTITIES or k in LINE_QUANTITIES}
    out["FeedShots"] = meas.feeder_ack
    out["BeamPosition"] = meas.beam_ack_mm
    out["LineSetpoint"] = meas.line_setpoint_ka
    return out


def estimate_bytes(groups: Sequence[SeriesGroup], scan_period_s: float, config: HistoryConfig) -> int:
    """Rough file size at steady state [bytes]: retention x rate x row size (+ ~30 % SQLite overhead)."""
    per_scan = sum(4 * len(g.tags) + 24 for g in groups)
    per_bucket = sum(14 * len(g.tags) + 32 for g in groups)
    raw = per_scan * config.raw_days * 86400.0 / scan_period_s
    minute = per_bucket * config.minute_days * 1440.0
    hour = per_bucket * config.hour_days * 24.0
    return int(1.3 * (raw + minute + hour))


# ---------------------------------------------------------------------------- OPC UA HistoryRead


def _unix(dt: datetime | None) -> float | None:
    """A request time as Unix seconds; None or the OPC UA null time (1601) = open end."""
    if dt is None or dt.year <= 1601:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


class OpcUaHistoryStorage:
    """asyncua history backend (``HistoryStorageInterface``, duck-typed) reading a ``History``.

    Install on the mirror with ``server.iserver.history_manager.set_storage(storage)``.
    asyncua's ``HistoryManager`` then answers every HistoryRead (ReadRawModifiedDetails)
    with ``read_node_history``: the NodeId is mapped to a tag (per-cell scalar) or a group
    (per-room array) by ``node_tag``; samples come from raw history, oldest first (newest
    first when start > end, as the spec says), at most ``max_values`` per call with a
    continuation point. Values are written by the daemon, not by asyncua's subscription,
    so ``new_historized_node``/``save_node_value`` store nothing. Events are not kept here
    (the journal has them): event reads answer empty.

    Args:
        history: a reader (``History(path, readonly=True)``); queried in a worker thread.
        node_tag: NodeId -> tag or group name, None when the node has no history
            (``mirror_node_tag`` for the mirror's string NodeIds).
        max_values: largest answer of one read (the rest via continuation points).
    """

    def __init__(self, history: History, node_tag: Callable[[Any], str | None], max_values: int = 10_000) -> None:
        self.history = history
        self.node_tag = node_tag
        self.max_history_data_response_size = int(max_values)

    async def init(self) -> None:
        return None

    async def new_historized_node(self, node_id: Any, period: Any, count: int = 0) -> None:
        return None

    async def save_node_value(self, node_id: Any, datavalue: Any) -> None:
        return None

    async def read_node_history(
        self, node_id: Any, start: datetime | None, end: datetime | None, nb_values: int
    ) -> tuple[list[Any], datetime | None]:
        from asyncua import ua

        from plc_bridge.opcua_server import MirrorServer, ua_datetime

        tag = self.node_tag(node_id)
        if tag is None or not self.history.has(tag):
            return [], None
        lo, hi = _unix(start), _unix(end)
        backwards = lo is not None and hi is not None and lo > hi
        if backwards:
            lo, hi = hi, lo
        cap = self.max_history_data_response_size
        want = cap + 1 if not nb_values else min(int(nb_values), cap + 1)
        t0 = -math.inf if lo is None else lo
        t1 = math.inf if hi is None else hi
        times, vals, codes = await asyncio.to_thread(self.history.raw_quality, tag, t0, t1, want,
                                                     newest_first=backwards)  # fmt: skip
        cont = None
        if len(times) > cap:
            cont = datetime.fromtimestamp(float(times[cap]), UTC)
            times, vals, codes = times[:cap], vals[:cap], codes[:cap]
        out = []
        for t, v, c in zip(times.tolist(), vals, codes, strict=True):
            stamp = datetime.fromtimestamp(t, UTC)
            if np.ndim(v):  # an array node: its worst element's code (as the mirror's array status)
                variant = ua.Variant([float(x) if math.isfinite(x) else 0.0 for x in v], ua.VariantType.Double)
                code = MirrorServer._worst(np.asarray(c, dtype=np.uint32)) if len(c) else GOOD
            else:
                ok = math.isfinite(float(v))
                variant = ua.Variant(float(v) if ok else 0.0, ua.VariantType.Double)
                code = int(c)
            ts = ua_datetime(stamp)
            out.append(ua.DataValue(variant, StatusCode=ua.StatusCode(ua.UInt32(code)), SourceTimestamp=ts,
                                    ServerTimestamp=ts))  # fmt: skip
        return out, cont

    async def new_historized_event(self, source_id: Any, evtypes: Any, period: Any, count: int = 0) -> None:
        return None

    async def save_event(self, event: Any) -> None:
        return None

    async def read_event_history(
        self, source_id: Any, start: Any, end: Any, nb_values: int, evfilter: Any
    ) -> tuple[list[Any], datetime | None]:
        return [], None

    async def stop(self) -> None:
        return None


def mirror_node_tag(plant: str) -> Callable[[Any], str | None]:
    """NodeId -> history name for the mirror's string NodeIds (``<Plant>.<Room>.Cell017.CellVoltage``
    -> ``<Room>.Cell017.CellVoltage``; a room's array node -> its group)."""
    prefix = f"{plant}."

    def tag(node_id: Any) -> str | None:
        ident = getattr(node_id, "Identifier", None)
        if not isinstance(ident, str) or not ident.startswith(prefix):
            return None
        return ident[len(prefix) :]

    return tag
