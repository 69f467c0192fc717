"""Recording files: a refining pot's log read from and written to CSV or Parquet.

The columns and their units are ``refining.shadow.COLUMN_UNITS``; validation (rows,
ranges, blanks, gaps) is ``Recording.from_columns``, so that the shadow test itself stays
pure computation on arrays. This module turns what a historian or a PLC logger writes
into those columns (docs/operations.md, "Refining pots"):

* **Time**: ``t_s`` (seconds since the cycle start), or a ``timestamp``/``time`` column with
  ISO-8601 times (``2025-10-01T00:10:00Z``, ``2025-10-01 03:10:00+03:00``; a time without a
  zone is in the sidecar's ``time_zone``, default UTC) or Unix epoch seconds (numbers),
  or ``epoch_s`` / ``epoch_ms`` columns. ``t_s = 0`` is the sidecar's ``cycle_start``
  (or a ``# cycle_start:`` header line), else the first row.
* **Units**: in the header, ``current_a`` (the canonical name) or ``current [kA]`` (a
  quantity with its unit in brackets; converted), or in a sidecar.
* **Sidecar** ``<file>.meta.toml`` (next to the file, or given): metadata
  (``[recording] synthetic = true``, ``source``, ...), the time column and its format,
  column names and units of a historian export (``[columns] current_a = { column =
  "POT07.I", unit = "kA" }``), and ``layout = "long"`` for a tag/time/value export.
* **Header comments** in a CSV: lines ``# key: value`` before the header row are
  metadata (``# synthetic: true``).

CSV needs only the standard library; Parquet and DataFrames need the ``[campaign]``
extra (pandas, pyarrow), imported only when used.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from refining.shadow import Recording, RecordingError
from twin.configcore import StrictModel, load_toml, validate_config

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "QUANTITIES",
    "SIDECAR_SUFFIX",
    "Sidecar",
    "load_recording",
    "read_columns",
    "recording_columns",
    "sidecar_path",
    "write_recording",
    "write_table",
]

_PARQUET = (".parquet", ".pq")
_CSV = (".csv", ".txt")
#: a recording's sidecar is ``<file name><SIDECAR_SUFFIX>`` (``rec.csv`` -> ``rec.csv.meta.toml``)
SIDECAR_SUFFIX = ".meta.toml"
#: Parquet schema metadata key holding a recording's metadata (JSON)
PARQUET_META_KEY = b"potline.recording"

#: unit tables: quantity -> {unit (lower case): (factor, offset)} to the canonical unit
_UNITS: dict[str, dict[str, tuple[float, float]]] = {
    "time": {"s": (1.0, 0.0), "min": (60.0, 0.0), "h": (3600.0, 0.0), "d": (86400.0, 0.0)},
    "current": {"a": (1.0, 0.0), "ka": (1000.0, 0.0)},
    "voltage": {"v": (1.0, 0.0), "mv": (1e-3, 0.0)},
    "temperature": {"°c": (1.0, 0.0), "degc": (1.0, 0.0), "c": (1.0, 0.0), "k": (1.0, -273.15)},
    "power": {"kw": (1.0, 0.0), "w": (1e-3, 0.0), "mw": (1000.0, 0.0)},
    "mass": {"kg": (1.0, 0.0), "t": (1000.0, 0.0)},
    "assay": {"%": (1.0, 0.0), "pct": (1.0, 0.0), "ppm": (1e-4, 0.0), "fraction": (100.0, 0.0)},
}
#: quantity name in a header (``current [kA]``) -> (canonical column, unit table)
QUANTITIES: dict[str, tuple[str, str]] = {
    "t": ("t_s", "time"),
    "current": ("current_a", "current"),
    "voltage": ("voltage_v", "voltage"),
    "temperature": ("temperature_c", "temperature"),
    "heater": ("heater_kw", "power"),
    "current_sp": ("current_sp_a", "current"),
    "heater_sp": ("heater_sp_c", "temperature"),
    "charge": ("charge_kg", "mass"),
    "tap": ("tap_kg", "mass"),
    "assay_fe": ("assay_fe_pct", "assay"),
    "assay_cu": ("assay_cu_pct", "assay"),
    "assay_si": ("assay_si_pct", "assay"),
}
_CANONICAL = {col: q for col, q in QUANTITIES.values()}
#: columns read as absolute times (ISO-8601 strings, or numbers: epoch seconds)
TIME_COLUMNS = ("timestamp", "time", "epoch_s", "epoch_ms")
#: event columns: a blank cell means "nothing happened" (not held in a long export)
_EVENTS = ("charge_kg", "tap_kg", "assay_fe_pct", "assay_cu_pct", "assay_si_pct")
_HEADER = re.compile(r"^\s*([^\[\(]+?)\s*(?:[\[\(]\s*([^\]\)]*?)\s*[\]\)])?\s*$")


# --------------------------------------------------------------------------- sidecar


class SidecarColumn(StrictModel):
    """Where a canonical column is in the file and its unit."""

    column: str = Field(min_length=1, description="column name (wide) or tag name (long) in the file")
    unit: str = Field("", description="unit in the file (default: the canonical unit)")


class SidecarTime(StrictModel):
    """The time column."""

    column: str = "timestamp"
    format: str = Field(
        "auto",
        description="auto | iso8601 | epoch_s | epoch_ms | seconds (since cycle start) | a strptime pattern",
    )
    time_zone: str = Field("UTC", description="zone of times written without one (IANA name, e.g. Europe/Moscow)")
    cycle_start: str = Field("", description="ISO-8601 time of t_s = 0 (default: the first row)")


class SidecarLong(StrictModel):
    """Column names of a long (tag, time, value) export."""

    tag_column: str = "tag"
    time_column: str = "timestamp"
    value_column: str = "value"


class Sidecar(StrictModel):
    """A recording's sidecar file (``<file>.meta.toml``)."""

    recording: dict[str, str | bool | int | float] = Field(default_factory=dict)
    time: SidecarTime | None = None
    layout: Literal["wide", "long"] = "wide"
    long: SidecarLong = SidecarLong()
    columns: dict[str, SidecarColumn] = Field(default_factory=dict)
    gap_s: float | None = Field(None, gt=0.0, le=1e9, json_schema_extra={"unit": "s"})

    @model_validator(mode="after")
    def _known(self) -> Sidecar:
        for name, col in self.columns.items():
            if name not in _CANONICAL:
                raise ValueError(
                    f"columns.{name}: expected one of the recording columns ({', '.join(_CANONICAL)}), got {name!r}"
                )
            if col.unit and col.unit.strip().lower() not in _UNITS[_CANONICAL[name]]:
                raise ValueError(
                    f"columns.{name}.unit: expected one of {', '.join(_UNITS[_CANONICAL[name]])}, got {col.unit!r}"
                )
        if self.time is not None:
            _zone(self.time.time_zone, "time.time_zone")
        return self


def sidecar_path(path: str | Path) -> Path:
    """Where the sidecar of recording ``path`` lives (``rec.csv`` -> ``rec.csv.meta.toml``)."""
    p = Path(path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def load_sidecar(path: str | Path) -> Sidecar:
    """Read and validate a sidecar (``ConfigError`` naming file and key)."""
    return validate_config(Sidecar, load_toml(path), path)


def _zone(name: str, key: str) -> tzinfo:
    if name.upper() in ("UTC", "Z", ""):
        return UTC
    try:
        from zoneinfo import ZoneInfo

        return ZoneInfo(name)
    except Exception:
        raise ValueError(f"{key}: expected an IANA time zone such as UTC or Europe/Moscow, got {name!r}") from None


# --------------------------------------------------------------------------- reading


def _read_csv(path: Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Columns of a CSV file with a header row (standard library only), and its ``# key: value``
    header comments. Blank cells read "nan"."""
    meta: dict[str, str] = {}
    with path.open(newline="", encoding="utf-8-sig") as fh:
        lines = (line for line in fh)
        body: list[str] = []
        for line in lines:
            s = line.strip()
            if s.startswith("#"):
                k, sep, v = s.lstrip("#").partition(":")
                if sep and k.strip() and " " not in k.strip():
                    meta[k.strip().lower()] = v.strip()
                elif s.lstrip("#").strip():
                    meta["comment"] = (meta.get("comment", "") + " " + s.lstrip("#").strip()).strip()
                continue
            if s:
                body.append(line)
                break
        body.extend(lines)
    reader = csv.reader(body)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise RecordingError(f"{path}: empty file (no header row)") from None
    cols: dict[str, list[str]] = {h: [] for h in header}
    if len(cols) != len(header):
        dup = sorted({h for h in header if header.count(h) > 1})
        raise RecordingError(f"{path}: header names column(s) {', '.join(dup)} more than once")
    for i, row in enumerate(reader, start=2):
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if row[0].lstrip().startswith("#"):
            continue
        if len(row) != len(header):
            raise RecordingError(f"{path}: row {i} has {len(row)} fields, the header has {len(header)}")
        for h, v in zip(header, row, strict=True):
            v = v.strip()
            cols[h].append("nan" if v == "" else v)
    return cols, meta


def _read_parquet(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Columns of a Parquet file (needs pyarrow) and the recording metadata it carries."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise RecordingError(f"{path}: reading Parquet needs pyarrow (pip install 'potline-twin[campaign]')") from None
    table = pq.read_table(path)
    meta: dict[str, str] = {}
    raw = (table.schema.metadata or {}).get(PARQUET_META_KEY)
    if raw:
        try:
            meta = {str(k): str(v) for k, v in json.loads(raw).items()}
        except (ValueError, AttributeError):
            meta = {}
    cols: dict[str, np.ndarray] = {}
    for name in table.column_names:
        col = table.column(name)
        if str(col.type).startswith("timestamp"):
            tz = getattr(col.type, "tz", None)
            ns = col.cast("int64").to_numpy(zero_copy_only=False).astype(np.float64)
            unit = getattr(col.type, "unit", "ns")
            scale = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}[unit]
            nulls = np.asarray(col.is_null().to_numpy(zero_copy_only=False))
            cols[name] = np.where(nulls, np.nan, ns * scale)
            meta.setdefault(f"_epoch:{name}", "utc" if tz is None else str(tz))
        else:
            cols[name] = col.to_numpy(zero_copy_only=False)
    return cols, meta


def read_columns(path: str | Path) -> Mapping[str, Sequence[str] | np.ndarray]:
    """Columns (name → values) of a CSV or Parquet file, unvalidated.

    Raises:
        RecordingError: unknown suffix, no such file, or the file cannot be parsed
            (the message names the file).
    """
    return _read_any(Path(path))[0]


def _read_any(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    suffix = path.suffix.lower()
    if suffix not in _PARQUET + _CSV:
        raise RecordingError(f"{path}: unknown recording format {suffix!r} (use .csv or .parquet)")
    if not path.is_file():
        raise RecordingError(f"{path}: no such file")
    try:
        if suffix in _PARQUET:
            cols, meta = _read_parquet(path)
            return dict(cols), meta
        c, meta = _read_csv(path)
        return dict(c), meta
    except RecordingError:
        raise
    except Exception as exc:  # parse errors of either format
        raise RecordingError(f"{path}: cannot read: {exc}") from None


def _floats(values: Any, source: str, column: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        for i, v in enumerate(values):
            try:
                float(v)
            except (TypeError, ValueError):
                raise RecordingError(f"{source}: column {column}, row {i + 2}: not a number ({v!r})") from None
        raise


def _parse_times(values: Any, source: str, column: str, fmt: str, zone: tzinfo) -> np.ndarray:
    """Absolute times [Unix epoch s] from a column (NaN where blank)."""
    a = np.asarray(values)
    if a.dtype.kind in "fiu":
        x = a.astype(np.float64)
        return x / 1000.0 if fmt == "epoch_ms" else x
    out = np.full(a.shape[0], np.nan)
    for i, v in enumerate(a.tolist()):
        s = str(v).strip()
        if s == "" or s.lower() in ("nan", "none", "null"):
            continue
        if fmt in ("auto", "epoch_s", "epoch_ms"):
            try:
                num = float(s)
            except ValueError:
                num = math.nan
            if math.isfinite(num):
                out[i] = num / 1000.0 if fmt == "epoch_ms" else num
                continue
            if fmt != "auto":
                raise RecordingError(f"{source}: column {column}, row {i + 2}: expected epoch seconds, got {s!r}")
        try:
            if fmt in ("auto", "iso8601"):
                d = datetime.fromisoformat(s)
            else:
                d = datetime.strptime(s, fmt)
        except ValueError:
            want = "an ISO-8601 time such as 2025-10-01T00:10:00Z" if fmt in ("auto", "iso8601") else f"{fmt!r}"
            raise RecordingError(f"{source}: column {column}, row {i + 2}: expected {want}, got {s!r}") from None
        if d.tzinfo is None:
            d = d.replace(tzinfo=zone)
        out[i] = d.timestamp()
    return out


def _iso(epoch_s: float) -> str:
    d = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=float(epoch_s))
    return d.strftime("%Y-%m-%dT%H:%M:%S") + (f".{d.microsecond:06d}".rstrip("0") if d.microsecond else "") + "Z"


def _header_map(names: Sequence[str], side: Sidecar | None, source: str) -> dict[str, tuple[str, str]]:
    """canonical column -> (file column, unit) for a wide file."""
    out: dict[str, tuple[str, str]] = {}
    if side is not None:
        for canon, col in side.columns.items():
            if col.column not in names:
                raise RecordingError(
                    f"{source}: sidecar names column {col.column!r} for {canon}, the file has: {', '.join(names)}"
                )
            out[canon] = (col.column, col.unit)
    for name in names:
        m = _HEADER.match(name)
        if not m:
            continue
        base, unit = m.group(1).strip().lower(), (m.group(2) or "").strip()
        if base in _CANONICAL:
            canon = base
        elif base in QUANTITIES:
            canon = QUANTITIES[base][0]
        else:
            continue
        if canon in out:
            continue
        if unit and unit.lower() not in _UNITS[_CANONICAL[canon]]:
            raise RecordingError(
                f"{source}: column {name!r}: unknown unit {unit!r} for {canon} "
                f"(expected one of {', '.join(_UNITS[_CANONICAL[canon]])})"
            )
        out[canon] = (name, unit)
    return out


def recording_columns(
    cols: Mapping[str, Any], meta: Mapping[str, str], side: Sidecar | None, source: str
) -> tuple[dict[str, np.ndarray], str]:
    """File columns -> canonical columns (``t_s`` relative, canonical units) and the ISO time of t_s = 0."""
    if side is not None and side.layout == "long":
        cols = _pivot_long(cols, side, source)
        tmap = {canon: (canon, side.columns[canon].unit) for canon in cols if canon in side.columns}
    else:
        tmap = _header_map(list(cols), side, source)
    out: dict[str, np.ndarray] = {}
    for canon, (col, unit) in tmap.items():
        if canon == "t_s":
            continue
        x = _floats(cols[col], source, col)
        f, o = _UNITS[_CANONICAL[canon]].get(unit.strip().lower(), (1.0, 0.0)) if unit else (1.0, 0.0)
        out[canon] = x * f + o
    # time
    tcfg = side.time if side is not None and side.time is not None else SidecarTime()
    zone = _zone(tcfg.time_zone, "time.time_zone")
    if "t_s" in tmap and (side is None or side.time is None):
        col, unit = tmap["t_s"]
        f, _ = _UNITS["time"].get(unit.strip().lower(), (1.0, 0.0)) if unit else (1.0, 0.0)
        out["t_s"] = _floats(cols[col], source, col) * f
        return out, meta.get("cycle_start", "")
    if side is not None and side.time is not None:
        tcol = "timestamp" if side.layout == "long" else tcfg.column
        fmt = tcfg.format
    else:
        tcol = next((c for c in TIME_COLUMNS if c in cols), next((c for c in cols if c.lower() in TIME_COLUMNS), ""))
        fmt = {"epoch_s": "epoch_s", "epoch_ms": "epoch_ms"}.get(tcol.lower(), "auto")
    if not tcol or tcol not in cols:
        raise RecordingError(
            f"{source}: no time column: expected t_s (seconds since the cycle start) or one of "
            f"{', '.join(TIME_COLUMNS)} (ISO-8601 times or Unix epoch seconds), or a sidecar [time] column"
            + (f" (the sidecar names {tcol!r})" if tcol else "")
        )
    if fmt == "seconds":
        out["t_s"] = _floats(cols[tcol], source, tcol)
        return out, ""
    epoch = _parse_times(cols[tcol], source, tcol, fmt, zone)
    start = tcfg.cycle_start or meta.get("cycle_start", "")
    if start:
        t0 = _parse_times(np.array([start]), f"{source} (cycle_start)", "cycle_start", "iso8601", zone)[0]
    else:
        ok = np.isfinite(epoch)
        if not ok.any():
            raise RecordingError(f"{source}: column {tcol}: no time in any row")
        t0 = float(epoch[ok][0])
    out["t_s"] = epoch - t0
    return out, _iso(t0)


def _pivot_long(cols: Mapping[str, Any], side: Sidecar, source: str) -> dict[str, Any]:
    """A long (tag, time, value) export as wide canonical columns on the union of its times.

    Measurements are held from their last value (a historian stores on change); events
    (charges, taps, assays) stay at their own times only.
    """
    lc = side.long
    tcfg = side.time or SidecarTime(column=lc.time_column)
    for c in (lc.tag_column, lc.time_column, lc.value_column):
        if c not in cols:
            raise RecordingError(f"{source}: long layout: no column {c!r} (the file has: {', '.join(cols)})")
    tags = np.asarray([str(x).strip() for x in np.asarray(cols[lc.tag_column]).tolist()])
    zone = _zone(tcfg.time_zone, "time.time_zone")
    times = _parse_times(cols[lc.time_column], source, lc.time_column, tcfg.format, zone)
    values = _floats(cols[lc.value_column], source, lc.value_column)
    by_tag = {sc.column: canon for canon, sc in side.columns.items()}
    used = np.isin(tags, list(by_tag)) & np.isfinite(times)
    grid = np.unique(times[used])
    if grid.size == 0:
        raise RecordingError(f"{source}: long layout: none of the tags {sorted(by_tag)} has a timed value")
    out: dict[str, Any] = {"timestamp": grid}
    for tag, canon in by_tag.items():
        sel = (tags == tag) & np.isfinite(times)
        t, v = times[sel], values[sel]
        order = np.argsort(t, kind="stable")
        t, v = t[order], v[order]
        col = np.full(grid.size, np.nan)
        if t.size:
            if canon in _EVENTS:
                col[np.searchsorted(grid, t)] = v
            else:
                idx = np.searchsorted(t, grid, side="right") - 1
                col = np.where(idx >= 0, v[np.clip(idx, 0, None)], np.nan)
        out[canon] = col
    return out


def load_recording(
    path: str | Path,
    heater_sp_default: float = 800.0,
    *,
    sidecar: str | Path | None = None,
    gap_s: float | None = None,
) -> Recording:
    """Read and validate a CSV (standard library) or Parquet (needs pyarrow) recording.

    Args:
        path: the file (.csv or .parquet).
        heater_sp_default: heater setpoint [°C] assumed where the file has none.
        sidecar: the sidecar file (default: ``<path>.meta.toml`` when it exists).
        gap_s: intervals longer than this are gaps (default: the sidecar's, else
            ``refining.shadow.GAP_FACTOR`` × the median period).

    Raises:
        RecordingError: the file cannot be used (names the file, column and row).
        ConfigError: the sidecar is invalid (names the sidecar and the key).
    """
    path = Path(path)
    side_path = Path(sidecar) if sidecar is not None else sidecar_path(path)
    side: Sidecar | None = None
    if sidecar is not None or side_path.is_file():
        side = load_sidecar(side_path)
    cols, meta = _read_any(path)
    if side is not None:
        meta = {**meta, **{k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in side.recording.items()}}
    canon, t0_iso = recording_columns(cols, meta, side, str(path))
    if "t_s" not in canon:
        raise RecordingError(f"{path}: no time column (t_s, {', '.join(TIME_COLUMNS)})")
    meta = {k: v for k, v in meta.items() if not k.startswith("_")}
    return Recording.from_columns(
        canon,
        source=str(path),
        heater_sp_default=heater_sp_default,
        gap_s=gap_s if gap_s is not None else (side.gap_s if side is not None else None),
        meta=meta,
        t0_utc=t0_iso,
    )


# --------------------------------------------------------------------------- writing


def write_recording(
    cols: Mapping[str, np.ndarray],
    path: str | Path,
    *,
    meta: Mapping[str, Any] | None = None,
    t0_utc: str = "",
    decimals: Mapping[str, int] | None = None,
    blank_zero_events: bool = False,
) -> Path:
    """Write a recording (canonical columns) as CSV (``# key: value`` header lines) or Parquet
    (metadata in the schema).

    Args:
        cols: canonical columns (``t_s`` first); other columns are written as given.
        path: .csv or .parquet.
        meta: metadata lines (``synthetic``, ``source``, ...).
        t0_utc: ISO-8601 time of t_s = 0: write a ``timestamp`` column of ISO times instead of ``t_s``.
        decimals: round these columns to this many decimals (smaller files).
        blank_zero_events: write 0 in event columns (charge, tap) as a blank cell.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, np.ndarray] = {}
    if t0_utc:
        t0 = _parse_times(np.array([t0_utc]), "t0_utc", "t0_utc", "iso8601", UTC)[0]
        data["timestamp"] = np.array([_iso(t0 + float(t)) for t in np.asarray(cols["t_s"])], dtype=object)
    for k, v in cols.items():
        if k == "t_s" and t0_utc:
            continue
        a = np.asarray(v, dtype=float)
        if decimals and k in decimals:
            a = np.round(a, decimals[k])
        if blank_zero_events and k in ("charge_kg", "tap_kg"):
            a = np.where(a == 0.0, np.nan, a)
        data[k] = a
    meta_s = {str(k): (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in (meta or {}).items()}
    if path.suffix.lower() in _PARQUET:
        import pyarrow as pa
        import pyarrow.parquet as pq

        arrays = {}
        for k, v in data.items():
            if k == "timestamp":
                arrays[k] = pa.array([datetime.fromisoformat(s) for s in v.tolist()], type=pa.timestamp("ms", tz="UTC"))
            else:
                arrays[k] = pa.array(v, from_pandas=True)
        table = pa.table(arrays)
        table = table.replace_schema_metadata({PARQUET_META_KEY: json.dumps(meta_s).encode()})
        pq.write_table(table, path)
        return path
    if path.suffix.lower() not in _CSV:
        raise ValueError(f"{path}: use a .csv or .parquet file name")
    names = list(data)
    with path.open("w", newline="", encoding="utf-8") as fh:
        for key, text in meta_s.items():
            fh.write(f"# {key}: {text}\n")
        w = csv.writer(fh)
        w.writerow(names)
        for row in zip(*(data[n] for n in names), strict=True):
            w.writerow([_csv_cell(v, decimals is not None) for v in row])
    return path


def write_table(cols: Mapping[str, np.ndarray] | pd.DataFrame, path: str | Path) -> Path:
    """Write columns (or a DataFrame) as CSV or Parquet, by the file suffix.

    Columns given as a mapping go to CSV with the standard library (no pandas needed;
    NaN as a blank cell, floats exactly as ``repr``); Parquet and DataFrames need the
    ``[campaign]`` extra (pandas, pyarrow).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(cols, Mapping) and path.suffix.lower() == ".csv":
        names = list(cols)
        arrays = [np.asarray(cols[n]) for n in names]
        with path.open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(names)
            for row in zip(*arrays, strict=False):
                w.writerow([_csv_cell(v) for v in row])
        return path
    import pandas as pd

    df = cols if isinstance(cols, pd.DataFrame) else pd.DataFrame(dict(cols))
    if path.suffix.lower() in _PARQUET:
        df.to_parquet(path, index=False)
    elif path.suffix.lower() == ".csv":
        df.to_csv(path, index=False)
    else:
        raise ValueError(f"{path}: use a .csv or .parquet file name")
    return path


def _csv_cell(v: Any, short: bool = False) -> Any:
    """One CSV cell: NaN blank, floats round-trippable (or short with ``short``), anything else as is."""
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if f != f:
            return ""
        if short:
            return f"{f:.10g}"
        return repr(f)
    return v
