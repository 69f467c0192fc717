"""Recording files: a refining pot's log read from and written to CSV or Parquet.

The columns and their units are ``refining.shadow.COLUMN_UNITS``; validation (rows,
units, ranges) is ``Recording.from_columns``, so that the shadow test itself stays pure
computation on arrays. CSV needs only the standard library; Parquet and DataFrames need
the ``[campaign]`` extra (pandas, pyarrow), imported only when used.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from refining.shadow import Recording, RecordingError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["load_recording", "read_columns", "write_table"]

_PARQUET = (".parquet", ".pq")
_CSV = (".csv", ".txt")


def _read_csv(path: Path) -> dict[str, list[str]]:
    """Columns of a CSV file with a header row (standard library only); blank cells read "nan"."""
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise RecordingError(f"{path}: empty file") from None
        cols: dict[str, list[str]] = {h: [] for h in header}
        for i, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise RecordingError(f"{path}: row {i} has {len(row)} fields, the header has {len(header)}")
            for h, v in zip(header, row, strict=False):
                v = v.strip()
                cols[h].append("nan" if v == "" else v)
    return cols


def _read_parquet(path: Path) -> dict[str, np.ndarray]:
    """Columns of a Parquet file (needs pyarrow)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise RecordingError(f"{path}: reading Parquet needs pyarrow (pip install 'potline-twin[campaign]')") from None
    table = pq.read_table(path)
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def read_columns(path: str | Path) -> Mapping[str, Sequence[str] | np.ndarray]:
    """Columns (name → values) of a CSV or Parquet file, unvalidated.

    Raises:
        RecordingError: unknown suffix, no such file, or the file cannot be parsed
            (the message names the file).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _PARQUET + _CSV:
        raise RecordingError(f"{path}: unknown recording format {suffix!r} (use .csv or .parquet)")
    if not path.is_file():
        raise RecordingError(f"{path}: no such file")
    try:
        return _read_parquet(path) if suffix in _PARQUET else _read_csv(path)
    except RecordingError:
        raise
    except Exception as exc:  # parse errors of either format
        raise RecordingError(f"{path}: cannot read: {exc}") from None


def load_recording(path: str | Path, heater_sp_default: float = 800.0) -> Recording:
    """Read and validate a CSV (standard library) or Parquet (needs pyarrow) recording.

    Args:
        path: the file (.csv or .parquet).
        heater_sp_default: heater setpoint [°C] assumed where the file has none.
    """
    cols = read_columns(path)
    return Recording.from_columns(cols, source=str(path), heater_sp_default=heater_sp_default)


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


def _csv_cell(v: Any) -> Any:
    """One CSV cell: NaN blank, floats round-trippable, anything else as the csv module writes it."""
    if isinstance(v, float) and v != v:
        return ""
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    return v
