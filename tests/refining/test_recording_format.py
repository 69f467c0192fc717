"""Plant data in: the documented recording format (docs/operations.md, "Refining pots").

The same 6-hour log written every way a historian or PLC logger might write it — ISO-8601
with Z, with an offset, without a zone (zone in the sidecar), Unix epoch seconds and
milliseconds, units in the header, historian tag names mapped by a sidecar, a long
tag/time/value export, Parquet with a timestamp column — must read back as the same
recording. Bad files are refused naming the file, the column and the row (or the sidecar
and its key); the shipped example is small, labelled synthetic and readable.
"""

from __future__ import annotations

import csv
import fnmatch
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from refining.recording import load_recording, sidecar_path, write_recording
from refining.shadow import RecordingError
from twin.configcore import ConfigError
from twin.resources import config_dir

T0 = datetime(2025, 10, 1, tzinfo=UTC).timestamp()
N = 37  # 6 h every 10 min


def _r(x: float) -> str:
    return repr(float(x))


def _cols() -> dict[str, np.ndarray]:
    t = np.arange(N) * 600.0
    cols = {
        "t_s": t,
        "current_a": np.full(N, 3000.0),
        "voltage_v": 2.9 + 0.001 * np.arange(N),
        "temperature_c": 800.0 + 0.1 * np.arange(N),
        "heater_kw": np.full(N, 0.6),
        "charge_kg": np.zeros(N),
        "tap_kg": np.zeros(N),
        "assay_fe_pct": np.full(N, np.nan),
    }
    cols["charge_kg"][12] = 11.8
    cols["tap_kg"][30] = 45.9
    cols["assay_fe_pct"][30] = 0.0123
    return cols


def _write_csv(path: Path, header: list[str], rows: list[list[str]], comments: list[str] = ()) -> Path:
    with path.open("w", newline="") as fh:
        for c in comments:
            fh.write(f"# {c}\n")
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def _rows(
    times: list[str], cols: dict[str, np.ndarray], names=("current_a", "voltage_v", "temperature_c", "heater_kw")
):
    return [[times[i], *(_r(float(cols[n][i])) for n in names)] for i in range(N)]


def _same(rec, cols):
    np.testing.assert_allclose(rec.t_s, cols["t_s"], atol=1e-6)
    for n in ("current_a", "voltage_v", "temperature_c", "heater_kw"):
        np.testing.assert_allclose(getattr(rec, n), cols[n], rtol=1e-9, err_msg=n)


@pytest.mark.parametrize(
    "fmt",
    ["iso_z", "iso_offset", "iso_space_naive", "epoch_s", "epoch_ms", "t_s"],
)
def test_time_formats_read_the_same(tmp_path, fmt):
    cols = _cols()
    header = "timestamp"
    comments = []
    if fmt == "iso_z":
        times = [datetime.fromtimestamp(T0 + t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") for t in cols["t_s"]]
    elif fmt == "iso_offset":  # the same instants written in Moscow time
        times = [
            (datetime.fromtimestamp(T0 + t + 3 * 3600, UTC).replace(tzinfo=None)).isoformat() + "+03:00"
            for t in cols["t_s"]
        ]
    elif fmt == "iso_space_naive":  # no zone in the file: the sidecar says Europe/Moscow
        times = [datetime.fromtimestamp(T0 + t + 3 * 3600, UTC).strftime("%Y-%m-%d %H:%M:%S") for t in cols["t_s"]]
    elif fmt == "epoch_s":
        times = [_r(T0 + t) for t in cols["t_s"]]
    elif fmt == "epoch_ms":
        header = "epoch_ms"
        times = [str(int((T0 + t) * 1000)) for t in cols["t_s"]]
    else:
        header = "t_s"
        times = [_r(t) for t in cols["t_s"]]
        comments = ["cycle_start: 2025-10-01T00:00:00Z"]
    p = _write_csv(
        tmp_path / "rec.csv",
        [header, "current_a", "voltage_v", "temperature_c", "heater_kw"],
        _rows(times, cols),
        comments,
    )
    if fmt == "iso_space_naive":
        sidecar_path(p).write_text('[time]\ncolumn = "timestamp"\ntime_zone = "Europe/Moscow"\n')
    rec = load_recording(p)
    _same(rec, cols)
    if fmt != "t_s":
        assert rec.t0_utc == "2025-10-01T00:00:00Z"


def test_units_in_the_header_are_converted(tmp_path):
    cols = _cols()
    rows = [
        [_r(cols["t_s"][i] / 60.0), _r(cols["current_a"][i] / 1000.0), _r(cols["voltage_v"][i] * 1000.0),
         _r(cols["temperature_c"][i] + 273.15), _r(cols["heater_kw"][i] * 1000.0),
         _r(cols["tap_kg"][i] / 1000.0), _r(cols["assay_fe_pct"][i] * 1e4) if i == 30 else ""]
        for i in range(N)
    ]  # fmt: skip
    p = _write_csv(
        tmp_path / "units.csv",
        ["t [min]", "current [kA]", "voltage [mV]", "temperature [K]", "heater [W]", "tap [t]", "assay_fe [ppm]"],
        rows,
    )
    rec = load_recording(p)
    _same(rec, cols)
    assert rec.tap_kg[30] == pytest.approx(45.9) and rec.assay[30, 0] == pytest.approx(0.0123e-2)


def test_historian_export_mapped_by_a_sidecar(tmp_path):
    """A wide historian export with its own tag names and units, the cycle start given."""
    cols = _cols()
    rows = [
        [datetime.fromtimestamp(T0 + 3600 + t, UTC).strftime("%d.%m.%Y %H:%M:%S"),
         _r(cols["current_a"][i] / 1000.0), _r(cols["voltage_v"][i]), _r(cols["temperature_c"][i]),
         _r(cols["heater_kw"][i]), _r(cols["charge_kg"][i]) if cols["charge_kg"][i] else "", "spare"]
        for i, t in enumerate(cols["t_s"])
    ]  # fmt: skip
    p = _write_csv(tmp_path / "pi_export.csv", ["Time", "P07.I", "P07.U", "P07.T", "P07.HTR", "P07.CHG", "note"], rows)
    sidecar_path(p).write_text(
        '[recording]\nsource = "PI export, pot 7"\nsynthetic = false\n\n'
        '[time]\ncolumn = "Time"\nformat = "%d.%m.%Y %H:%M:%S"\ntime_zone = "UTC"\n'
        'cycle_start = "2025-10-01T01:00:00Z"\n\n'
        "[columns]\n"
        'current_a = { column = "P07.I", unit = "kA" }\n'
        'voltage_v = { column = "P07.U" }\n'
        'temperature_c = { column = "P07.T", unit = "°C" }\n'
        'heater_kw = { column = "P07.HTR", unit = "kW" }\n'
        'charge_kg = { column = "P07.CHG", unit = "kg" }\n'
    )
    rec = load_recording(p)
    _same(rec, cols)
    assert rec.charge_kg[12] == pytest.approx(11.8) and rec.charge_kg.sum() == pytest.approx(11.8)
    assert rec.meta["source"] == "PI export, pot 7" and not rec.synthetic
    assert rec.t0_utc == "2025-10-01T01:00:00Z"


def test_long_tag_time_value_export(tmp_path):
    """A historian's long export (one row per tag and time; values stored on change) pivots to
    the same recording: measurements held, events only where logged."""
    cols = _cols()
    rows = []
    for i, t in enumerate(cols["t_s"]):
        ts = datetime.fromtimestamp(T0 + t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        for tag, name in (("I", "current_a"), ("U", "voltage_v"), ("T", "temperature_c"), ("Q", "heater_kw")):
            if tag == "I" and i > 0 and cols[name][i] == cols[name][i - 1]:
                continue  # stored on change only
            rows.append([tag, ts, _r(float(cols[name][i]))])
        if cols["tap_kg"][i]:
            rows.append(["TAP", ts, _r(float(cols["tap_kg"][i]))])
    p = _write_csv(tmp_path / "long.csv", ["tag", "timestamp", "value"], rows)
    side = tmp_path / "map.toml"
    side.write_text(
        'layout = "long"\n[columns]\ncurrent_a = { column = "I" }\nvoltage_v = { column = "U" }\n'
        'temperature_c = { column = "T" }\nheater_kw = { column = "Q" }\ntap_kg = { column = "TAP" }\n'
    )
    rec = load_recording(p, sidecar=side)
    _same(rec, cols)
    assert rec.tap_kg[30] == pytest.approx(45.9) and np.count_nonzero(rec.tap_kg) == 1


def test_parquet_with_timestamps_and_metadata_round_trip(tmp_path):
    cols = _cols()
    p = write_recording(cols, tmp_path / "rec.parquet", meta={"synthetic": True, "source": "twin"},
                        t0_utc="2025-10-01T00:00:00Z")  # fmt: skip
    import pyarrow.parquet as pq

    assert str(pq.read_schema(p).field("timestamp").type).startswith("timestamp")
    rec = load_recording(p)
    _same(rec, cols)
    assert rec.synthetic and rec.t0_utc == "2025-10-01T00:00:00Z"
    assert rec.assay[30, 0] == pytest.approx(0.0123e-2) and rec.charge_kg[12] == pytest.approx(11.8)


def test_blank_cells_are_counted_not_refused(tmp_path):
    cols = _cols()
    cols["voltage_v"][[5, 6, 20]] = np.nan
    cols["current_a"][0] = np.nan
    p = write_recording(cols, tmp_path / "blank.csv")
    rec = load_recording(p)
    blanks = {i.column: i.count for i in rec.issues if i.kind == "blank"}
    assert blanks == {"voltage_v": 3, "current_a": 1}
    assert np.isnan(rec.voltage_v[[5, 6, 20]]).all()  # the observer skips those corrections
    assert rec.held("voltage_v")[6] == rec.voltage_v[4] and rec.current_a[0] == 3000.0  # held where needed
    assert "row 7" in next(i.message for i in rec.issues if i.column == "voltage_v")


@pytest.mark.parametrize(
    "case, match",
    [
        ("bad_iso", r"rec\.csv: column timestamp, row 5: expected an ISO-8601 time such as .*, got 'yesterday'"),
        ("bad_unit", r"rec\.csv: column 'current \[furlong\]': unknown unit 'furlong' for current_a"),
        ("all_blank", r"rec\.csv: column temperature_c: no value in any row"),
        ("no_time", r"rec\.csv: no time column: expected t_s"),
        ("backwards", r"rec\.csv: column t_s, row 4: time must increase"),
    ],
)
def test_bad_files_name_file_column_and_row(tmp_path, case, match):
    cols = _cols()
    times = [datetime.fromtimestamp(T0 + t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") for t in cols["t_s"]]
    header = ["timestamp", "current_a", "voltage_v", "temperature_c", "heater_kw"]
    rows = _rows(times, cols)
    if case == "bad_iso":
        rows[3][0] = "yesterday"
    elif case == "bad_unit":
        header[1] = "current [furlong]"
    elif case == "all_blank":
        for r in rows:
            r[3] = ""
    elif case == "no_time":
        header[0] = "when"
    elif case == "backwards":
        header[0] = "t_s"
        for i, r in enumerate(rows):
            r[0] = _r(600.0 * i)
        rows[2][0] = "0.0"
    p = _write_csv(tmp_path / "rec.csv", header, rows)
    with pytest.raises(RecordingError, match=match):
        load_recording(p)


def test_bad_sidecar_names_the_sidecar_and_the_key(tmp_path):
    cols = _cols()
    p = write_recording(cols, tmp_path / "rec.csv")
    sidecar_path(p).write_text('[columns]\ncurrent = { column = "I" }\n[time]\ntime_zone = "Mars/Olympus"\n')
    with pytest.raises(ConfigError) as ei:
        load_recording(p)
    text = str(ei.value)
    assert "rec.csv.meta.toml" in text and "columns.current: expected one of the recording columns" in text
    sidecar_path(p).write_text('[columns]\ncurrent_a = { column = "nope" }\n')
    with pytest.raises(RecordingError, match=r"sidecar names column 'nope' for current_a"):
        load_recording(p)


def test_shipped_example_recording_is_small_labelled_and_readable():
    path = config_dir() / "recordings" / "refining_3ka_synthetic.csv"
    assert path.is_file() and path.stat().st_size < 1_000_000
    head = path.read_text(encoding="utf-8").splitlines()[:12]
    assert head[0] == "# synthetic: true"
    assert any(line.startswith("# made_by: potline shadow") for line in head)
    # shipped in the wheel: a package-data glob of potline_config matches it
    pp = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    globs = pp["tool"]["setuptools"]["package-data"]["potline_config"]
    assert any(fnmatch.fnmatch("recordings/refining_3ka_synthetic.csv", g) for g in globs)
    rec = load_recording(path)
    assert rec.synthetic and rec.t0_utc == "2025-10-01T00:00:00Z"
    assert 40.0 < rec.t_s[-1] / 86400 < 45.0 and rec.period_s == 600.0
    kinds = {i.kind for i in rec.issues}
    assert kinds == {"gap", "blank"}
    assert np.isfinite(rec.assay[:, 0]).sum() >= 15
