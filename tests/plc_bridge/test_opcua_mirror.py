"""The OPC UA mirror as an independent client sees it.

A plain asyncua client (not our OpcUaClient) browses the mirror from the Objects
folder, reads every node and checks it against the snapshot the test published:
array elements, per-cell scalars and the snapshot agree; units and ranges are there;
deadbands and the scalar period hold; AE events and the SetMode method work.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from asyncua import Client, ua

from plc_bridge.opcua_security import ClientSecurity, OpcUaSecurityConfig, UserEntry, hash_password
from plc_bridge.opcua_server import DEFAULT_QUANTITIES, NAMESPACE_URI, MirrorServer, QuantitySpec, unece_unit_id
from tests.plc_bridge.mirror_support import make_layout, make_snapshot

CELL_Q = [q for q in DEFAULT_QUANTITIES if q.level == "cell"]
LINE_Q = [q for q in DEFAULT_QUANTITIES if q.level == "line"]


def expected(q: QuantitySpec, values: np.ndarray) -> list:
    """What a client must read: the snapshot rounded to the node's data type."""
    return np.asarray(values).astype(q.dtype).tolist()


async def browse_children(client: Client, node) -> dict[str, object]:
    return {(await c.read_browse_name()).Name: c for c in await node.get_children()}


async def test_independent_client_agrees_with_snapshot_on_every_node() -> None:
    layout = make_layout()
    snap = make_snapshot(layout, np.random.default_rng(1))
    async with MirrorServer(layout, port=0, scalar_period_s=0.0, deadbands={q.name: 0.0 for q in CELL_Q}) as mirror:
        report = await mirror.publish(snap, t=12.5)
        assert report.errors == []
        async with Client(mirror.endpoint_url, timeout=5) as client:
            idx = await client.get_namespace_index(NAMESPACE_URI)
            top = await browse_children(client, client.nodes.objects)
            assert "Alro" in top
            plant = top["Alro"]
            assert plant.nodeid == ua.NodeId("Alro", idx)  # restart-stable string NodeId
            children = await browse_children(client, plant)
            assert {"Twin", "Line1", "Line2", "Room1", "Room2"} <= set(children)

            twin = await browse_children(client, children["Twin"])
            assert await twin["ModelTime"].read_value() == 12.5
            assert await twin["Mode"].read_value() == "observe"

            for li, line in enumerate(layout.line_names):
                lvars = await browse_children(client, children[line])
                for q in LINE_Q:
                    assert await lvars[q.name].read_value() == pytest.approx(snap[q.name][li], abs=0)
                    eu = await (await lvars[q.name].get_child(["0:EngineeringUnits"])).read_value()
                    assert eu.UnitId == unece_unit_id(q.unece) and eu.DisplayName.Text == q.unit

            checked = 0
            for r, room in enumerate(layout.room_names):
                rnodes = await browse_children(client, children[room])
                numbers = await rnodes["CellNumbers"].read_value()
                cells = layout.room_cells(r)
                assert numbers == layout.cell_number[cells].tolist()
                for q in CELL_Q:
                    arr_node = rnodes[q.name]
                    arr = await arr_node.read_value()
                    assert len(arr) == len(cells)
                    assert await arr_node.read_value_rank() == ua.ValueRank.OneDimension
                    assert arr == expected(q, snap[q.name][cells]), q.name
                    # per-cell scalar, found by browsing Cell<number> (independent of our NodeId helpers)
                    for i, num in enumerate(numbers):
                        cell_obj = rnodes[f"Cell{num:03d}"]
                        scalar = await (await cell_obj.get_child([f"{idx}:{q.name}"])).read_data_value()
                        assert scalar.Value.VariantType == q.vtype
                        assert scalar.Value.Value == arr[i], (room, num, q.name)
                        checked += 1
                    if q.unit:  # units and range on the array and on a cell scalar
                        eu = await (await arr_node.get_child(["0:EngineeringUnits"])).read_value()
                        assert eu.NamespaceUri == "http://www.opcfoundation.org/UA/units/un/cefact"
                        assert eu.UnitId == unece_unit_id(q.unece) and eu.DisplayName.Text == q.unit
                        first = rnodes[f"Cell{numbers[0]:03d}"]
                        scalar_node = await first.get_child([f"{idx}:{q.name}"])
                        rng = await (await scalar_node.get_child(["0:EURange"])).read_value()
                        assert (rng.Low, rng.High) == q.eu_range
                        assert await scalar_node.read_type_definition() == ua.NodeId(ua.ObjectIds.AnalogItemType)
            assert checked == layout.n_cells * len(CELL_Q)


async def test_deadband_and_scalar_period_arrays_always_fresh() -> None:
    layout = make_layout((4,))
    v0 = np.full(4, 4.20)
    async with MirrorServer(layout, port=0, scalar_period_s=10.0, deadbands={"CellVoltage": 0.01}) as mirror:
        async with Client(mirror.endpoint_url, timeout=5) as client:
            idx = await client.get_namespace_index(NAMESPACE_URI)
            arr = client.get_node(ua.NodeId("Alro.Room1.CellVoltage", idx))
            cell = await client.nodes.objects.get_child(
                [f"{idx}:Alro", f"{idx}:Room1", f"{idx}:Cell101", f"{idx}:CellVoltage"]
            )

            async def scalar() -> float:
                return await cell.read_value()

            await mirror.publish({"CellVoltage": v0}, t=0.0)
            assert await scalar() == pytest.approx(4.20, abs=1e-6)
            # inside the scalar period: array moves, scalar does not
            await mirror.publish({"CellVoltage": v0 + 0.5}, t=5.0)
            assert (await arr.read_value())[0] == pytest.approx(4.70, abs=1e-6)
            assert await scalar() == pytest.approx(4.20, abs=1e-6)
            # period over, but the move since the last scalar write (0.005 V) is inside the deadband
            await mirror.publish({"CellVoltage": v0 + 0.005}, t=10.0)
            assert await scalar() == pytest.approx(4.20, abs=1e-6)
            # period over and outside the deadband
            await mirror.publish({"CellVoltage": v0 + 0.02}, t=20.0)
            assert await scalar() == pytest.approx(4.22, abs=1e-6)
            # flush brings everything to the last published values
            await mirror.publish({"CellVoltage": v0 + 0.001}, t=21.0)
            await mirror.flush_scalars()
            assert await scalar() == pytest.approx(4.201, abs=1e-6)


async def test_bad_snapshot_is_reported_not_raised_and_good_keys_still_publish() -> None:
    layout = make_layout((3,))
    async with MirrorServer(layout, port=0) as mirror:
        report = await mirror.publish(
            {"CellVoltage": np.ones(5), "Superheat": np.array([7.0, 8.0, 9.0]), "Bogus": np.zeros(3)}, t=1.0
        )
        assert any("CellVoltage" in e and "(3,)" in e for e in report.errors)
        async with Client(mirror.endpoint_url, timeout=5) as client:
            idx = await client.get_namespace_index(NAMESPACE_URI)
            assert await client.get_node(ua.NodeId("Alro.Room1.Superheat", idx)).read_value() == [7.0, 8.0, 9.0]


async def test_anode_effect_events_reach_an_event_subscriber() -> None:
    layout = make_layout((3, 3))
    async with MirrorServer(layout, port=0) as mirror, Client(mirror.endpoint_url, timeout=5) as client:
        idx = await client.get_namespace_index(NAMESPACE_URI)
        etype = await client.nodes.base_event_type.get_child([f"{idx}:AnodeEffectEventType"])
        sub = await client.create_subscription(50, None, queue_maxsize=0)
        await sub.subscribe_events(client.nodes.server, etype)
        await mirror.publish_event("start", cell=4, peak_voltage_v=31.5)
        await mirror.publish_event("end", cell=4, peak_voltage_v=33.0, duration_s=42.0)
        got = []
        while len(got) < 2:
            ev = await asyncio.wait_for(sub.next_event(), 30)  # a deadline, not the expected time
            if hasattr(ev, "event"):
                got.append(ev.event)
        start, end = got
        assert (start.Cell, start.Active, start.PeakVoltage) == ("Room2/Cell102", True, 31.5)
        assert (end.Cell, end.Active, end.PeakVoltage, end.Duration) == ("Room2/Cell102", False, 33.0, 42.0)
        assert end.SourceNode == ua.NodeId("Alro.Room2.Cell102", idx)
        await sub.delete()


def _users() -> dict[str, UserEntry]:
    return {
        "op": UserEntry(role="operator", password_hash=hash_password("op-pass")),
        "view": UserEntry(role="viewer", password_hash=hash_password("view-pass")),
    }


async def test_set_mode_method_operator_only_and_handler_decides(tmp_path) -> None:
    # user names only over SignAndEncrypt (the login rule)
    cfg = OpcUaSecurityConfig(state_dir=tmp_path / "server", sign=False, sign_and_encrypt=True, users=_users())
    calls: list[tuple[str, str | None]] = []

    async def handler(mode: str, user: str | None) -> None:
        if mode == "control":
            raise ValueError("interlock: rectifier in local")
        calls.append((mode, user))

    async def login(url: str, user: str, password: str) -> Client:
        client = Client(url, timeout=5)
        sec = ClientSecurity(mode="SignAndEncrypt", state_dir=tmp_path / "client", username=user, password=password)
        await sec.apply(client)
        return client

    async with MirrorServer(make_layout((2,)), port=0, security=cfg) as mirror:
        mirror.set_mode_handler(handler)

        async def call(user: str, password: str, mode: str):
            async with await login(mirror.endpoint_url, user, password) as client:
                idx = await client.get_namespace_index(NAMESPACE_URI)
                twin = client.get_node(ua.NodeId("Alro.Twin", idx))
                mode_arg = ua.Variant(mode, ua.VariantType.String)
                return await twin.call_method(ua.NodeId("Alro.Twin.SetMode", idx), mode_arg)

        assert await call("op", "op-pass", "shadow") == "observe"
        assert calls == [("shadow", "op")]
        with pytest.raises(ua.UaStatusCodeError) as err:
            await call("view", "view-pass", "observe")
        assert err.value.code == ua.StatusCodes.BadUserAccessDenied
        with pytest.raises(ua.UaStatusCodeError) as err:
            await call("op", "op-pass", "turbo")
        assert err.value.code == ua.StatusCodes.BadInvalidArgument
        with pytest.raises(ua.UaStatusCodeError) as err:
            await call("op", "op-pass", "control")
        assert err.value.code == ua.StatusCodes.BadInvalidState
        async with await login(mirror.endpoint_url, "view", "view-pass") as client:
            idx = await client.get_namespace_index(NAMESPACE_URI)
            assert await client.get_node(ua.NodeId("Alro.Twin.Mode", idx)).read_value() == "shadow"
        assert calls == [("shadow", "op")]
