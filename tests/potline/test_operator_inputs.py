"""Operator inputs from CSV: real files, a real journal file, the real alumina observer."""

from __future__ import annotations

import sqlite3
import time

import numpy as np
import pytest

from potline.journal import Journal
from potline.operator_inputs import (
    OperatorInputError,
    SampleBook,
    SampleIntake,
    apply_to_observer,
    import_csv,
    read_csv,
)
from tests.potline.test_hmi_support import make_plant

GOOD = """time,room,cell,alf3_excess_wt_pct,bath_temp_c,alumina_wt_pct,metal_height_cm,by,comment
2026-12-04T07:15,Potroom1,17,11.2,962,2.4,,olga,morning round
2026-12-04T07:20Z,Potroom2,3,,958,,21.5,olga,
"""


def test_samples_are_validated_journalled_and_kept(tmp_path) -> None:
    lay = make_plant()
    f = tmp_path / "samples.csv"
    f.write_text(GOOD, encoding="utf-8")
    j = Journal(tmp_path / "journal.db", synchronous="NORMAL")
    res = import_csv(f, lay, j)
    j.close()
    assert res.rows == 2 and not res.issues
    db = sqlite3.connect(tmp_path / "journal.db")
    rows = db.execute("SELECT room, cell, user, value, json_extract(data, '$.values.bath_temp_c') FROM events "
                      "WHERE kind = 'bath_sample' ORDER BY id").fetchall()  # fmt: skip
    db.close()
    assert rows == [("Potroom1", 17, "olga", 2.4, 962.0), ("Potroom2", 3, "olga", None, 958.0)]
    book = SampleBook(lay.n_cells)
    book.add(res.samples)
    m = book.measurements()
    k = res.samples[0].index
    assert m["alf3_excess_wt_pct"][k] == 11.2 and np.isnan(m["alf3_excess_wt_pct"]).sum() == lay.n_cells - 1
    assert m["metal_height_cm"][res.samples[1].index] == 21.5


def test_bad_rows_are_named_by_line_and_column_and_nothing_is_imported(tmp_path) -> None:
    lay = make_plant()
    f = tmp_path / "bad.csv"
    f.write_text(GOOD + "2026-12-04T08:00,Potroom1,99,11,962,2.5,,,\n"
                 "2026-12-04T08:05,Potroom1,4,11,9620,2.5,,,\nyesterday,Potroom9,4,,,,,,\n", encoding="utf-8")  # fmt: skip
    j = Journal(tmp_path / "journal.db", synchronous="NORMAL")
    with pytest.raises(OperatorInputError) as ei:
        import_csv(f, lay, j)
    issues = ei.value.issues
    assert f"{f} line 4, column cell: Potroom1 has cells 1 .. 24, got 99" in issues
    assert any(
        i.startswith(f"{f} line 5, column bath_temp_c:") and "900 .. 1050" in i and "'9620'" in i for i in issues
    )
    assert any(i.startswith(f"{f} line 6, column time:") for i in issues)
    assert any(i.startswith(f"{f} line 6, column room:") for i in issues)
    assert j.query(kinds=["bath_sample"]) == []
    res = import_csv(f, lay, j, skip_bad=True)  # the good rows only
    assert len(res.samples) == 2 and len(j.query(kinds=["bath_sample"])) == 2
    j.close()
    g = tmp_path / "cols.csv"
    g.write_text("time,room,cel,alumina\n", encoding="utf-8")
    with pytest.raises(OperatorInputError, match=r"unknown column 'cel'.*missing column 'cell'"):
        read_csv(g, lay)


def test_a_sampled_alumina_corrects_the_observer(tmp_path) -> None:
    from twin.observer import AluminaObserver

    lay = make_plant()
    obs = AluminaObserver(lay.n_cells, alumina_wt_pct=3.0, alumina_std=0.5)
    f = tmp_path / "s.csv"
    f.write_text("time,room,cell,alumina_wt_pct\n2026-12-04T07:15,Potroom1,5,2.0\n", encoding="utf-8")
    res = read_csv(f, lay)
    k = res.samples[0].index
    assert apply_to_observer(obs, res.samples) == 1
    # the Kalman gain 0.5^2 / (0.5^2 + 0.15^2): the estimate moves most of the way to the sample
    assert obs.alumina_wt_pct[k] == pytest.approx(3.0 - 1.0 * 0.25 / (0.25 + 0.0225))
    assert obs.alumina_std_wt_pct[k] < 0.15 and obs.alumina_wt_pct[k + 1] == 3.0


def _intake(tmp_path):
    from twin.observer import AluminaObserver

    lay = make_plant()
    obs = AluminaObserver(lay.n_cells, alumina_wt_pct=3.0, alumina_std=0.5)
    j = Journal(tmp_path / "journal.db", synchronous="NORMAL")
    return lay, obs, j, SampleIntake(lay, journal=lambda: j, observers=lambda: [obs, None])


def test_a_dropped_csv_is_imported_once_settled_and_a_bad_one_is_refused_whole(tmp_path) -> None:
    lay, obs, j, intake = _intake(tmp_path)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "lab.csv").write_text(GOOD, encoding="utf-8")
    (inputs / "bad.csv").write_text("time,room,cell,alumina_wt_pct\n2026-12-04T07:15,Potroom9,1,2.0\n"
                                    "2026-12-04T07:15,Potroom1,2,20\n", encoding="utf-8")  # fmt: skip
    (inputs / "notes.txt").write_text("not a CSV", encoding="utf-8")
    now = time.time()
    # still being written (changed within the settle time): left alone
    assert intake.import_folder(inputs, settle_s=60.0, wall=lambda: now) == []
    got = intake.import_folder(inputs, settle_s=1.0, wall=lambda: now + 5.0)
    assert sorted(name for name, _, _ in got) == ["bad.csv", "lab.csv"]
    assert sorted(p.name for p in inputs.iterdir()) == ["imported", "notes.txt", "rejected"]
    assert (inputs / "imported" / "lab.csv").read_text(encoding="utf-8") == GOOD
    errors = (inputs / "rejected" / "bad.csv.errors.txt").read_text(encoding="utf-8").splitlines()
    assert [e.split("inputs/", 1)[1] for e in errors] == [
        "bad.csv line 2, column room: expected one of Potroom1, Potroom2, Potroom3, got 'Potroom9'",
        "bad.csv line 3, column alumina_wt_pct: expected dissolved alumina in wt %, 0.5 .. 10, got '20'",
    ]
    # the same name again later: kept beside the first, never overwritten
    (inputs / "lab.csv").write_text(GOOD, encoding="utf-8")
    intake.import_folder(inputs, settle_s=0.0)
    assert sorted(p.name for p in (inputs / "imported").iterdir()) == ["lab.1.csv", "lab.csv"]
    j.close()
    with Journal(tmp_path / "journal.db", readonly=True) as r:
        kinds = [(e.kind, e.source, e.user) for e in r.query(newest_first=False)]
    assert kinds == [("bath_sample", "csv:lab.csv", "olga")] * 2 + [("operator_input_rejected", "csv:bad.csv", None)] \
        + [("bath_sample", "csv:lab.csv", "olga")] * 2  # fmt: skip
    # the first file's alumina (2.4 wt% in Potroom1/17) reached the observer
    k = lay.room_names.index("Potroom1")
    k = int(np.flatnonzero((lay.cell_room == k) & (lay.cell_number == 17))[0])
    assert obs.alumina_wt_pct[k] < 2.6 and intake.book.measurements()["bath_temp_c"][k] == 962.0


def test_the_hmi_form_names_every_bad_field_and_takes_a_good_sample(tmp_path) -> None:
    _lay, obs, j, intake = _intake(tmp_path)
    with pytest.raises(OperatorInputError) as e:
        intake.enter({"room": "Potroom1", "cell": 99, "bath_temp_c": 1200, "alumina_wt_pct": "x"}, "olga", 0.0)
    assert e.value.issues == [
        "cell: Potroom1 has cells 1 .. 24, got 99",
        "bath_temp_c: expected bath temperature in °C, 900 .. 1050, got 1200",
        "alumina_wt_pct: expected dissolved alumina in wt %, 0.5 .. 10, got 'x'",
    ]
    with pytest.raises(OperatorInputError, match="no value: give at least one of"):
        intake.enter({"room": "Potroom2", "cell": 3}, "olga", 0.0)
    t = 1_780_000_000.0
    s = intake.enter({"room": "Potroom2", "cell": 3, "alf3_excess_wt_pct": 10.5, "alumina_wt_pct": 4.0,
                      "comment": "after tapping"}, "olga", t)  # fmt: skip
    assert (s.room, s.cell, s.by, s.t) == ("Potroom2", 3, "olga", t)
    assert obs.alumina_wt_pct[s.index] > 3.8  # most of the way from 3.0 (the observer's prior) to 4.0
    j.close()
    with Journal(tmp_path / "journal.db", readonly=True) as r:
        ev = r.query(kinds=["bath_sample"])
    assert [(e.room, e.cell, e.user, e.value, e.source) for e in ev] == [("Potroom2", 3, "olga", 4.0, "hmi")]
    assert ev[0].data["comment"] == "after tapping"
