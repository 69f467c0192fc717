"""HistoryRead on the mirror, backed by a real history file, read by a plain asyncua client.

The daemon's history writer stores an hour of scans (``potline.history``, plant groups, one
row per room and quantity); the mirror serves it with ``enable_history(*mirror_history(...))``.
A plain client sees which variables are historized (AccessLevel HistoryRead, Historizing)
and reads an hour of one cell's voltage with ``read_raw_history``: every sample, at its
time, with its value; a line's scalar answers scalars, a room's array answers arrays.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from asyncua import Client, ua

from plc_bridge.opcua_server import NAMESPACE_URI, MirrorServer
from potline.history import History, plant_groups, split_values
from potline.mirror import mirror_history, mirror_quantities
from tests.plc_bridge.mirror_support import make_layout

T0 = 1_800_000_000.0  # Unix time of plant time 0 [s]
PERIOD_S = 10.0


def voltages(t: float, n: int) -> np.ndarray:
    """Cell voltages at plant time ``t`` [V]: a slow wave, different per cell."""
    return 4.2 + 0.2 * np.sin(t / 600.0 + np.arange(n))


async def test_a_plain_client_reads_an_hour_of_a_cell_voltage(tmp_path) -> None:
    layout = make_layout((3, 2))
    path = tmp_path / "history.db"
    times = np.arange(0.0, 3600.0 + PERIOD_S, PERIOD_S)  # one hour of scans, both ends
    writer = History(path)
    writer.declare(plant_groups(layout))
    for t in times:
        values = {"CellVoltage": voltages(t, layout.n_cells), "LineCurrent": np.array([120.0, 121.0]) + t / 3600.0}
        writer.write(T0 + t, split_values(layout, values))
    try:
        mirror = MirrorServer(layout, mirror_quantities(), port=0, epoch_s=T0)
        mirror.enable_history(*mirror_history(path, layout))
        async with mirror, Client(mirror.endpoint_url, timeout=30) as client:
            idx = await client.get_namespace_index(NAMESPACE_URI)
            cell = await client.nodes.objects.get_child([f"{idx}:Alro", f"{idx}:Room1", f"{idx}:Cell102",
                                                         f"{idx}:CellVoltage"])  # fmt: skip
            access = await cell.read_attribute(ua.AttributeIds.AccessLevel)
            assert access.Value.Value & ua.AccessLevel.HistoryRead.mask
            assert (await cell.read_attribute(ua.AttributeIds.Historizing)).Value.Value is True
            flag = client.get_node(ua.NodeId("Alro.Room1.Cell102.AnodeEffect", idx))  # not in the history
            assert not (await flag.read_attribute(ua.AttributeIds.AccessLevel)).Value.Value & 4

            start, end = datetime.fromtimestamp(T0, UTC), datetime.fromtimestamp(T0 + 3600.0, UTC)
            got = await cell.read_raw_history(start, end)
            assert [dv.SourceTimestamp.timestamp() for dv in got] == (T0 + times).tolist()
            want = [voltages(t, layout.n_cells)[1] for t in times]
            assert all(dv.StatusCode.is_good() for dv in got)
            assert [dv.Value.Value for dv in got] == pytest.approx(want, abs=1e-6)  # float32 storage

            line = client.get_node(ua.NodeId("Alro.Line2.LineCurrent", idx))
            assert (await line.read_attribute(ua.AttributeIds.Historizing)).Value.Value is True
            last = await line.read_raw_history(end, start, numvalues=2)  # newest first
            assert [dv.Value.Value for dv in last] == pytest.approx([122.0, 121.0 + 3590.0 / 3600.0])
            room = client.get_node(ua.NodeId("Alro.Room2.CellVoltage", idx))
            rows = await room.read_raw_history(start, datetime.fromtimestamp(T0 + 20.0, UTC))
            assert [r.Value.Value for r in rows] == [pytest.approx(voltages(t, 5)[3:].tolist()) for t in (0, 10, 20)]
    finally:
        writer.close()
