"""History on real SQLite files with a fake timeline: raw round trips, 1-min / 1-h aggregates
against numpy, late samples, retention and a bounded file, automatic resolution, a reader
beside the writer, the plant's groups, and OPC UA HistoryRead through a real asyncua
server and client."""

from __future__ import annotations

import math
import sqlite3
from datetime import UTC, datetime

import numpy as np
import pytest

from potline.history import (
    History,
    HistoryConfig,
    HistoryError,
    OpcUaHistoryStorage,
    SeriesGroup,
    estimate_bytes,
    history_values,
    mirror_node_tag,
    plant_groups,
    split_values,
)
from tests.plc_bridge.mirror_support import make_layout

T0 = 1_800_000_000.0  # a Unix time on a minute and hour boundary
assert T0 % 3600 == 0
GROUP = SeriesGroup("Room1.CellVoltage", ("Room1.Cell001.CellVoltage", "Room1.Cell002.CellVoltage"), "V", "U")
TAG1, TAG2 = GROUP.tags


def open_history(path, **cfg) -> History:
    h = History(path, HistoryConfig.model_validate(cfg))
    h.declare([GROUP])
    return h


def signal(t: np.ndarray) -> np.ndarray:
    """Two cells: a slow sine and a ramp, with a bad sample every 7th scan on cell 2."""
    a = 4.2 + 0.3 * np.sin((t - T0) / 900.0)
    b = 4.0 + (t - T0) / 86400.0
    b = np.where(np.arange(t.size) % 7 == 3, np.nan, b)
    return np.stack([a, b], axis=1)


def fill(h: History, t: np.ndarray) -> np.ndarray:
    v = signal(t)
    for ti, vi in zip(t, v, strict=True):
        h.write(float(ti), {GROUP.name: vi})
    return v


def expected_buckets(t: np.ndarray, v: np.ndarray, res: int):
    v32 = v.astype(np.float32).astype(float)
    keys = np.floor(t / res) * res
    out = {}
    for k in np.unique(keys):
        sel = v32[keys == k]
        with np.errstate(all="ignore"):
            out[k] = (np.nanmin(sel, 0), np.nanmean(sel, 0), np.nanmax(sel, 0), np.isfinite(sel).sum(0))
    return out


def test_raw_samples_round_trip_with_gaps(tmp_path) -> None:
    with open_history(tmp_path / "h.db") as h:
        t = T0 + np.arange(0, 50, 2.0)
        v = fill(h, t)
        s = h.query(TAG2, T0, T0 + 48, resolution="raw")
    assert s.resolution_s == 0 and s.unit == "V"
    np.testing.assert_array_equal(s.t, t)
    np.testing.assert_allclose(s.mean, v[:, 1], rtol=1e-6)  # float32 storage, NaN where bad
    assert list(s.n[:5]) == [1, 1, 1, 0, 1]
    d = s.as_dict()
    assert d["mean"][3] is None and d["t"][0] == T0


def test_minute_and_hour_aggregates_match_numpy_and_survive_a_reopen(tmp_path) -> None:
    path = tmp_path / "h.db"
    t = T0 + np.arange(0, 3 * 3600 + 600, 10.0)  # 3 h 10 min of 10-s samples
    with open_history(path) as h:
        v = fill(h, t)
        counts = h.counts()
    # one row per group and closed bucket: 190 minutes begun, 189 closed; 3 of 4 hours closed
    assert counts == {"raw": 1140, "1m": 189, "1h": 3}
    with History(path, readonly=True) as r:
        for res, name in ((60, "1m"), (3600, "1h")):
            want = expected_buckets(t, v, res)
            for tag_i, tag in enumerate(GROUP.tags):
                s = r.query(tag, T0, float(t[-1]), resolution=name)  # type: ignore[arg-type]
                assert s.resolution_s == res
                assert list(s.t) == sorted(want)  # stored buckets + the open tail aggregated on the fly
                for i, k in enumerate(s.t):
                    mn, mean, mx, n = want[k]
                    assert s.n[i] == n[tag_i]
                    assert s.min[i] == pytest.approx(mn[tag_i], rel=1e-6)
                    assert s.max[i] == pytest.approx(mx[tag_i], rel=1e-6)
                    assert s.mean[i] == pytest.approx(mean[tag_i], rel=1e-5)


def test_counts_rows_per_level(tmp_path) -> None:
    with open_history(tmp_path / "h.db") as h:
        fill(h, T0 + np.arange(0, 7200 + 60, 30.0))  # up to 2 h 1 min
        # 121 minute buckets started, 121 closed but the last; 2 hours closed
        assert h.counts() == {"raw": 242, "1m": 120, "1h": 2}


def test_a_late_sample_reaggregates_its_bucket(tmp_path) -> None:
    with open_history(tmp_path / "h.db") as h:
        for k in range(0, 180, 20):
            h.write(T0 + k, {GROUP.name: [1.0, 1.0]})
        before = h.query(TAG1, T0, T0 + 59, resolution="1m")
        assert (before.max[0], before.n[0]) == (1.0, 3)
        h.write(T0 + 30, {GROUP.name: [9.0, 1.0]})  # late, into the first (closed) minute
        after = h.query(TAG1, T0, T0 + 59, resolution="1m")
    assert (after.max[0], after.n[0]) == (9.0, 4)
    assert after.mean[0] == pytest.approx(3.0)


def test_retention_prunes_each_level_and_keeps_the_file_bounded(tmp_path) -> None:
    cfg = {"raw_days": 1.0, "minute_days": 2.0, "hour_days": 3.0}
    step = 120.0
    with open_history(tmp_path / "h.db", **cfg) as h:
        sizes = []
        t_end = T0
        for day in range(8):
            t = T0 + day * 86400.0 + np.arange(0, 86400.0, step)
            fill(h, t)
            t_end = float(t[-1])
            h.prune(t_end)
            h.checkpoint()
            sizes.append(h.size_bytes())
        now = t_end
        raw_t, _ = h.raw(TAG1, 0.0, now)
        m = h.query(TAG1, 0.0, now, resolution="1m")
        hr = h.query(TAG1, 0.0, now, resolution="1h")
    assert raw_t.min() >= now - 86400.0 and raw_t.min() < now - 86400.0 + step + 1
    assert m.t.min() >= now - 2 * 86400.0 and m.t.min() < now - 2 * 86400.0 + 60
    assert hr.t.min() >= now - 3 * 86400.0 and hr.t.min() < now - 3 * 86400.0 + 3600
    # steady state after the longest retention (3 days): the file no longer grows
    assert sizes[-1] <= sizes[4] * 1.1, sizes


def test_prune_in_bounded_steps(tmp_path) -> None:
    with open_history(tmp_path / "h.db", raw_days=0.01) as h:
        fill(h, T0 + np.arange(0, 3600.0, 10.0))
        total = 0
        while True:
            got = h.prune(T0 + 7200.0, max_rows=50)
            if not any(got.values()):
                break
            assert got["raw"] <= 50
            total += got["raw"]
        assert total == 360 and h.counts()["raw"] == 0


def test_automatic_resolution_fits_the_point_budget_and_the_data_that_is_left(tmp_path) -> None:
    with open_history(tmp_path / "h.db", raw_days=1.0, minute_days=2.0, hour_days=30.0, max_points=500) as h:
        t = T0 + np.arange(0, 3 * 86400.0, 60.0)
        fill(h, t)
        now = float(t[-1])
        h.prune(now)
        # the last hour: 60 raw samples
        assert h.query(TAG1, now - 3600, now).resolution_s == 0
        # the last 12 h: 720 raw samples > 500 -> 1-min buckets (720 > 500 too) -> 1 h
        assert h.query(TAG1, now - 12 * 3600, now).resolution_s == 3600
        assert h.query(TAG1, now - 12 * 3600, now, max_points=1000).resolution_s == 0
        # 1.5 days ago, 2 h long: raw is pruned there, 1-min buckets are kept
        s = h.query(TAG1, now - 1.5 * 86400, now - 1.5 * 86400 + 7200)
        assert s.resolution_s == 60 and len(s) == 121  # bucket starts in [t0, t1], both ends
        # 2.5 days ago: only hours are left
        assert h.query(TAG1, now - 2.5 * 86400, now - 2.4 * 86400).resolution_s == 3600


def test_reader_beside_the_writer_sees_new_samples_and_aggregates(tmp_path) -> None:
    path = tmp_path / "h.db"
    with open_history(path) as w:
        fill(w, T0 + np.arange(0, 600, 10.0))
        r = History(path, readonly=True)
        assert len(r.query(TAG1, T0, T0 + 3600, resolution="raw")) == 60
        fill(w, T0 + np.arange(600, 1800, 10.0))
        s = r.query(TAG1, T0, T0 + 1790, resolution="1m")
        assert len(s) == 30 and int(s.n.sum()) == 180
        with pytest.raises(HistoryError, match="read-only"):
            r.write(T0, {GROUP.name: [1, 2]})
        r.close()


def test_bad_requests_name_what_is_wrong(tmp_path) -> None:
    with open_history(tmp_path / "h.db") as h:
        with pytest.raises(HistoryError, match=r"no history group 'Room9\.X'"):
            h.write(T0, {"Room9.X": [1.0]})
        with pytest.raises(HistoryError, match=r"group Room1\.CellVoltage: 3 values, expected 2"):
            h.write(T0, {GROUP.name: [1.0, 2.0, 3.0]})
        with pytest.raises(HistoryError, match="no history for tag 'nope'"):
            h.query("nope", T0, T0 + 1)
        with pytest.raises(HistoryError, match="resolution must be"):
            h.query(TAG1, T0, T0 + 1, resolution="5m")  # type: ignore[arg-type]
        with pytest.raises(HistoryError, match="the plant layout changed"):
            h.declare([SeriesGroup(GROUP.name, (TAG1,), "V")])
        h.declare([GROUP])  # the same again: fine
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE x (a)").connection.commit()
    with pytest.raises(HistoryError, match="not a potline history"):
        History(other)
    with pytest.raises(HistoryError, match="no history file"):
        History(tmp_path / "missing.db", readonly=True)


def test_plant_groups_follow_the_mirror_names_and_split_a_scan() -> None:
    lay = make_layout((2, 3))
    groups = {g.name: g for g in plant_groups(lay)}
    assert groups["Room2.CellVoltage"].tags == ("Room2.Cell101.CellVoltage", "Room2.Cell102.CellVoltage",
                                                "Room2.Cell103.CellVoltage")  # fmt: skip
    assert groups["Line2.LineCurrent"].tags == ("Line2.LineCurrent",)
    u = np.arange(5.0)
    parts = split_values(lay, {"CellVoltage": u, "LineCurrent": [120.0, 121.0]})
    np.testing.assert_array_equal(parts["Room1.CellVoltage"], [0.0, 1.0])
    np.testing.assert_array_equal(parts["Room2.CellVoltage"], [2.0, 3.0, 4.0])
    np.testing.assert_array_equal(parts["Line2.LineCurrent"], [121.0])
    with pytest.raises(HistoryError, match="CellVoltage: 4 values, expected 5"):
        split_values(lay, {"CellVoltage": np.zeros(4)})
    assert estimate_bytes(list(groups.values()), 1.0, HistoryConfig()) > 0


def test_history_values_of_a_scan(tmp_path) -> None:
    from potctl.plant import Measurements

    lay = make_layout((2, 3))
    n = lay.n_cells
    meas = Measurements(
        t_s=1.0, line_current_ka=np.array([120.0, 121.0]), line_voltage_v=np.array([500.0, 501.0]),
        line_setpoint_ka=np.array([119.0, 120.0]), rectifier_remote=np.ones(2, bool),
        rectifier_tripped=np.zeros(2, bool), tap_position=np.ones(2), cell_voltage_v=np.full(n, 4.3),
        feeder_ack=np.arange(n, dtype=float), beam_ack_mm=np.zeros(n), tapping=np.zeros(n, bool),
        anode_change=np.zeros(n, bool), cut_out=np.zeros(n, bool), cell_ok=np.ones(n, bool), line_ok=np.ones(2, bool),
    )  # fmt: skip
    snap = {"CellVoltage": meas.cell_voltage_v, "LineCurrent": meas.line_current_ka, "AnodeEffect": np.zeros(n)}
    vals = history_values(snap, meas)
    assert set(vals) == {"CellVoltage", "LineCurrent", "FeedShots", "BeamPosition", "LineSetpoint"}
    with History(tmp_path / "h.db") as h:
        h.declare(plant_groups(lay))
        h.write(T0, split_values(lay, vals))
        assert h.query("Room2.Cell103.FeedShots", T0, T0).mean[0] == 4.0
        assert h.query("Line1.LineSetpoint", T0, T0).mean[0] == 119.0


# ---------------------------------------------------------------------------- OPC UA HistoryRead


async def test_opcua_history_read_of_a_cell_voltage_through_asyncua(tmp_path) -> None:
    from asyncua import Client, Server, ua

    from plc_bridge.ports import free_port

    path = tmp_path / "h.db"
    t = T0 + np.arange(0, 3600.0, 10.0)  # one hour of 10-s samples
    with open_history(path) as w:
        v = fill(w, t)
    reader = History(path, readonly=True)
    port = free_port()
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/h/")
    idx = await server.register_namespace("urn:potline-twin:mirror")
    room = await server.nodes.objects.add_object(ua.NodeId("Alro.Room1", idx), "Room1")
    cell = await room.add_variable(ua.NodeId("Alro.Room1.Cell002.CellVoltage", idx), "CellVoltage", 0.0)
    arr = await room.add_variable(ua.NodeId("Alro.Room1.CellVoltage", idx), "CellVoltage", [0.0, 0.0])
    node_tag = mirror_node_tag("Alro")

    def tag_of(nid):  # the test's nodes: Cell002 is the group's second tag
        name = node_tag(nid)
        return TAG2 if name == "Room1.Cell002.CellVoltage" else name

    server.iserver.history_manager.set_storage(OpcUaHistoryStorage(reader, tag_of, max_values=100))
    async with server:
        async with Client(f"opc.tcp://127.0.0.1:{port}/h/") as client:
            node = client.get_node(cell.nodeid)
            start = datetime.fromtimestamp(T0, UTC)
            end = datetime.fromtimestamp(T0 + 3600, UTC)
            got = await node.read_raw_history(start, end)  # 360 values: four answers with continuation
            assert len(got) == 360
            assert [dv.SourceTimestamp.timestamp() for dv in got] == list(t)
            for dv, want in zip(got, v[:, 1], strict=True):
                if math.isnan(want):
                    assert dv.StatusCode.value == ua.StatusCodes.BadNoDataAvailable  # as the mirror says of NaN
                else:
                    assert dv.StatusCode.is_good() and dv.Value.Value == pytest.approx(want, rel=1e-6)
            # newest first when start > end, limited to 5 values
            back = await node.read_raw_history(end, start, numvalues=5)
            assert [dv.SourceTimestamp.timestamp() for dv in back] == list(t[::-1][:5])
            # the room's array node: one array per scan
            rows = await client.get_node(arr.nodeid).read_raw_history(start, datetime.fromtimestamp(T0 + 20, UTC))
            assert len(rows) == 3 and len(rows[0].Value.Value) == 2
            # a node without history answers no values
            other = await client.nodes.objects.get_child(["0:Server"])
            assert await other.read_raw_history(start, end) == []
    reader.close()


# ---------------------------------------------------------------------------- quality

UNCERTAIN_LAST_USABLE = 0x40900000  # UncertainLastUsableValue: a stale value the PLC still had
BAD_NO_COMM = 0x80310000  # BadNoCommunication: the link was down, the last value kept


def test_quality_is_kept_with_the_value_and_aggregates_count_good_samples_only(tmp_path) -> None:
    from asyncua import ua

    assert ua.StatusCodes.UncertainLastUsableValue == UNCERTAIN_LAST_USABLE
    assert ua.StatusCodes.BadNoCommunication == BAD_NO_COMM
    t = T0 + np.arange(0, 120.0, 10.0)  # two minutes of 10-s scans
    codes = np.zeros((t.size, 2), dtype=np.uint32)
    codes[2, 0] = UNCERTAIN_LAST_USABLE
    codes[3:5, 1] = BAD_NO_COMM
    with open_history(tmp_path / "h.db") as h:
        for i, ti in enumerate(t):
            h.write(float(ti), {GROUP.name: np.array([4.0 + i, 5.0 + i])}, {GROUP.name: codes[i]})
        h.write(float(t[-1] + 10.0), {GROUP.name: np.array([np.nan, 1.0])})  # closes the 2nd minute; no codes
        a = h.query(TAG1, T0, T0 + 200, resolution="raw")
        b = h.query(TAG2, T0, T0 + 200, resolution="raw")
        # the uncertain value is kept (drawn), the bad one kept on disk but a gap in the trend
        assert a.q[:13].tolist() == [0, 0, UNCERTAIN_LAST_USABLE] + [0] * 9 + [0x80B10000]  # NaN: BadNoDataAvailable
        assert a.mean[2] == 6.0 and math.isnan(a.mean[12])
        assert b.q[3:5].tolist() == [BAD_NO_COMM] * 2 and np.isnan(b.mean[3:5]).all() and b.mean[5] == 10.0
        assert h.raw(TAG2, T0 + 30, T0 + 40)[1].tolist() == [8.0, 9.0]  # the value where it was
        d = b.as_dict()
        assert d["bad"] == 2 and d["uncertain"] == 0 and d["q"][3] == BAD_NO_COMM and d["mean"][3] is None
        # 1-min means of Good samples only: minute 0 of cell 1 leaves out the uncertain 6.0
        m1 = h.query(TAG1, T0, T0 + 119, resolution="1m")
        m2 = h.query(TAG2, T0, T0 + 119, resolution="1m")
        assert m1.n.tolist() == [5, 6] and m1.mean[0] == pytest.approx((4 + 5 + 7 + 8 + 9) / 5)
        assert m2.n.tolist() == [4, 6] and m2.mean[0] == pytest.approx((5 + 6 + 7 + 10) / 4)
        assert m1.q.tolist() == [0, 0]


def test_a_history_file_from_before_quality_is_read_and_upgraded(tmp_path) -> None:
    path = tmp_path / "old.db"
    with open_history(path) as h:
        h.write(T0, {GROUP.name: np.array([4.1, np.nan])})
    db = sqlite3.connect(path)
    db.executescript("ALTER TABLE raw DROP COLUMN q; PRAGMA user_version = 1;")
    db.close()
    with History(path, readonly=True) as r:
        s = r.query(TAG1, T0, T0, resolution="raw")
        assert s.mean.tolist() == [pytest.approx(4.1)] and s.q.tolist() == [0]
        assert r.query(TAG2, T0, T0, resolution="raw").q.tolist() == [0x80B10000]
    with History(path) as w:  # the writer adds the column; old rows read as before
        w.write(T0 + 10, {GROUP.name: np.array([4.2, 4.3])}, {GROUP.name: np.array([0, BAD_NO_COMM])})
        s = w.query(TAG2, T0, T0 + 10, resolution="raw")
        assert s.q.tolist() == [0x80B10000, BAD_NO_COMM]
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    db.close()


async def test_history_read_answers_each_sample_with_its_status_and_line_tags_as_scalars(tmp_path) -> None:
    from asyncua import Client, Server, ua

    from plc_bridge.ports import free_port

    lay = make_layout()
    path = tmp_path / "h.db"
    room, line = lay.room_names[0], lay.line_names[0]
    with History(path) as w:
        w.declare(plant_groups(lay))
        for i in range(4):
            u = np.full(lay.n_cells, 4.0 + 0.1 * i)
            codes = np.zeros(lay.n_cells, dtype=np.uint32)
            codes[0] = [0, UNCERTAIN_LAST_USABLE, BAD_NO_COMM, 0][i]
            vals = split_values(lay, {"CellVoltage": u, "LineCurrent": np.full(lay.n_lines, 120.0 + i)})
            qual = split_values(lay, {"CellVoltage": codes.astype(float)})
            w.write(T0 + 10 * i, vals, {k: v.astype(np.uint32) for k, v in qual.items()})
    reader = History(path, readonly=True)
    port = free_port()
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/h/")
    idx = await server.register_namespace("urn:potline-twin:mirror")
    obj = await server.nodes.objects.add_object(ua.NodeId("P", idx), "P")
    c1 = f"{room}.Cell{int(lay.cell_number[lay.room_cells(0)[0]]):03d}.CellVoltage"
    cell = await obj.add_variable(ua.NodeId(f"{lay.plant}.{c1}", idx), "CellVoltage", 0.0)
    arr = await obj.add_variable(ua.NodeId(f"{lay.plant}.{room}.CellVoltage", idx), "CellVoltage", [0.0])
    cur = await obj.add_variable(ua.NodeId(f"{lay.plant}.{line}.LineCurrent", idx), "LineCurrent", 0.0)
    server.iserver.history_manager.set_storage(OpcUaHistoryStorage(reader, mirror_node_tag(lay.plant)))
    start, end = datetime.fromtimestamp(T0, UTC), datetime.fromtimestamp(T0 + 60, UTC)
    async with server, Client(f"opc.tcp://127.0.0.1:{port}/h/") as client:
        got = await client.get_node(cell.nodeid).read_raw_history(start, end)
        assert [dv.StatusCode.value for dv in got] == [0, UNCERTAIN_LAST_USABLE, BAD_NO_COMM, 0]
        assert got[1].Value.Value == pytest.approx(4.1)  # an uncertain value comes with its value
        rows = await client.get_node(arr.nodeid).read_raw_history(start, end)
        # the room's array: the mirror's rule (one bad element among usable ones: UncertainSubNormal)
        assert [dv.StatusCode.value for dv in rows] == [0, UNCERTAIN_LAST_USABLE, ua.StatusCodes.UncertainSubNormal, 0]
        line_rows = await client.get_node(cur.nodeid).read_raw_history(start, end)
        assert [dv.Value.Value for dv in line_rows] == [120.0, 121.0, 122.0, 123.0]  # scalars, not 1-arrays
        assert all(dv.StatusCode.is_good() for dv in line_rows)
    reader.close()
