"""Operator inputs from CSV: real files, a real journal file, the real alumina observer."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from potline.journal import Journal
from potline.operator_inputs import OperatorInputError, SampleBook, apply_to_observer, import_csv, read_csv
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
