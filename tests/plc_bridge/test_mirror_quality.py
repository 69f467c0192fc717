"""Quality end to end on the OPC UA mirror, as a plain asyncua client sees it.

* Every value carries the StatusCode and SourceTimestamp (epoch + plant time of its scan)
  it was published with; nothing reads 0.0 Good before its first publish; NaN is never Good.
* A room's array carries the worst status of its elements (a Bad one among usable ones makes
  it UncertainSubNormal, an all-Bad room is Bad with no value), each element's own status
  is in ``<Quantity>Status``; its SourceTimestamp is its oldest usable value's.
* A status change reaches the per-cell scalar (and its subscribers) at once, inside the
  scalar period and the deadband.
* A mirror nobody feeds turns its Good values UncertainLastUsableValue.
* End to end over a HIL rig: a bad transmitter and a potroom link loss, through the real
  bridge, the mirror's model and server, to a plain client: no cell voltage shown Good, the
  estimates Uncertain, the link's node down, the line untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import Any

import numpy as np
import pytest
from asyncua import Client, ua
from asyncua.common.subscription import DataChangeEvent

from plc_bridge.opcua_server import NAMESPACE_URI, MirrorServer, ValueStatus, status_code
from plc_bridge.plant import BridgePlant
from plc_bridge.quality import LinkStatus
from tests.plc_bridge.mirror_support import make_layout
from tests.waits import wait_until

EPOCH = 1_800_000_000.0  # Unix time of plant time 0 [s]
DEADLINE_S = 30.0  # bounds a failure; a quiet machine needs well under a second
SC = ua.StatusCodes


async def read(client: Client, ident: str) -> ua.DataValue:
    idx = await client.get_namespace_index(NAMESPACE_URI)
    return await client.get_node(ua.NodeId(ident, idx)).read_data_value(raise_on_bad_status=False)


def code(dv: ua.DataValue) -> int:
    return int(dv.StatusCode.value)


def stamp(dv: ua.DataValue) -> float:
    return dv.SourceTimestamp.timestamp()


async def test_a_plain_client_sees_each_values_status_and_scan_time() -> None:
    layout = make_layout((5, 7))  # Room1: Cell101..105 (cells 0-4), Room2: Cell101..107 (cells 5-11)
    n = layout.n_cells
    u = np.full(n, 4.2)
    u[1] = np.nan  # the bad transmitter's cell has no value
    u_status = ValueStatus.uniform(n, "Good", 100.0)
    u_status.code[1] = status_code("BadSensorFailure")
    u_status.code[2], u_status.t_s[2] = status_code("UncertainLastUsableValue"), 96.0  # held from an older scan
    acd_status = ValueStatus.uniform(n, "Good", 100.0)
    acd_status.code[5:] = status_code("BadNoCommunication")  # Room2's link is down
    line_status = ValueStatus(np.array([0, status_code("BadNoCommunication")], dtype=np.uint32), np.full(2, 99.0))
    r = np.full(n, 20.0)
    r[0] = np.nan  # no line current: no pseudo-resistance
    async with MirrorServer(layout, port=0, epoch_s=EPOCH) as mirror, Client(mirror.endpoint_url, timeout=10) as c:
        before = await read(c, "Alro.Room1.Cell101.CellVoltage")
        assert code(before) == SC.BadWaitingForInitialData and before.Value.Value is None  # no 0.0 Good
        report = await mirror.publish(
            {"CellVoltage": u, "AcdEstimate": np.full(n, 4.5), "PseudoResistance": r,
             "LineCurrent": np.array([120.0, 0.0])},
            t=100.0,
            status={"CellVoltage": u_status, "AcdEstimate": acd_status, "LineCurrent": line_status},
        )  # fmt: skip
        assert report.errors == []

        good = await read(c, "Alro.Room1.Cell101.CellVoltage")
        assert code(good) == SC.Good and good.Value.Value == pytest.approx(4.2)
        assert stamp(good) == EPOCH + 100.0  # the scan's time, not the publish's
        bad = await read(c, "Alro.Room1.Cell102.CellVoltage")
        assert code(bad) == SC.BadSensorFailure and bad.Value.Value is None
        held = await read(c, "Alro.Room1.Cell103.CellVoltage")
        assert code(held) == SC.UncertainLastUsableValue and held.Value.Value == pytest.approx(4.2)
        assert stamp(held) == EPOCH + 96.0

        # the room's array: a Bad element among usable ones -> UncertainSubNormal, the values stay
        arr = await read(c, "Alro.Room1.CellVoltage")
        assert code(arr) == SC.UncertainSubNormal
        assert math.isnan(arr.Value.Value[1]) and arr.Value.Value[0] == pytest.approx(4.2)
        assert stamp(arr) == EPOCH + 96.0  # its oldest usable value
        each = await read(c, "Alro.Room1.CellVoltageStatus")
        assert [s.value for s in each.Value.Value] == [SC.Good, SC.BadSensorFailure, SC.UncertainLastUsableValue,
                                                       SC.Good, SC.Good]  # fmt: skip
        room2 = await read(c, "Alro.Room2.CellVoltage")
        assert code(room2) == SC.Good and stamp(room2) == EPOCH + 100.0
        # a room whose every value is Bad: Bad, no value
        acd2 = await read(c, "Alro.Room2.AcdEstimate")
        assert code(acd2) == SC.BadNoCommunication and acd2.Value.Value is None
        assert code(await read(c, "Alro.Room1.AcdEstimate")) == SC.Good

        # published without a status: Good at the snapshot's time, but NaN is no value
        r_ok = await read(c, "Alro.Room1.Cell102.PseudoResistance")
        assert code(r_ok) == SC.Good and stamp(r_ok) == EPOCH + 100.0
        assert code(await read(c, "Alro.Room1.Cell101.PseudoResistance")) == SC.BadNoDataAvailable
        # lines carry their own
        assert code(await read(c, "Alro.Line1.LineCurrent")) == SC.Good
        assert code(await read(c, "Alro.Line2.LineCurrent")) == SC.BadNoCommunication
        # never published: still waiting, not 0.0 Good
        assert code(await read(c, "Alro.Room2.Cell104.AluminaEstimate")) == SC.BadWaitingForInitialData
        assert code(await read(c, "Alro.Room2.AluminaEstimate")) == SC.BadWaitingForInitialData


async def test_a_status_change_reaches_the_scalar_and_its_subscriber_at_once() -> None:
    layout = make_layout((3,))
    good = ValueStatus.uniform(3, "Good", 0.0)
    async with MirrorServer(layout, port=0, epoch_s=EPOCH, scalar_period_s=60.0,
                            deadbands={"CellVoltage": 0.01}) as mirror:  # fmt: skip
        await mirror.publish({"CellVoltage": np.full(3, 4.2)}, t=0.0, status={"CellVoltage": good})
        async with Client(mirror.endpoint_url, timeout=10) as c:
            idx = await c.get_namespace_index(NAMESPACE_URI)
            node = c.get_node(ua.NodeId("Alro.Room1.Cell102.CellVoltage", idx))
            sub = await c.create_subscription(20, None, queue_maxsize=0)
            await sub.subscribe_data_change(node)
            seen: list[ua.DataValue] = []

            async def latest() -> ua.DataValue | None:
                ev = await sub.next_event(timeout=0.2)
                if isinstance(ev, DataChangeEvent):
                    seen.append(ev.data.monitored_item.Value)
                return seen[-1] if seen else None

            first = await wait_until(latest, DEADLINE_S, "the initial value")
            assert code(first) == SC.Good
            # same value, inside the scalar period and the deadband: only the status changed
            held = ValueStatus.uniform(3, "Good", 1.0)
            held.code[1], held.t_s[1] = status_code("UncertainLastUsableValue"), 0.0
            await mirror.publish({"CellVoltage": np.full(3, 4.2001)}, t=1.0, status={"CellVoltage": held})
            got = await wait_until(lambda: _with_code(latest, SC.UncertainLastUsableValue), DEADLINE_S,
                                   "the scalar's new status", detail=lambda: [code(v) for v in seen])  # fmt: skip
            assert stamp(got) == EPOCH + 0.0  # the held value's scan
            # and back to Good: rewritten at once too
            await mirror.publish({"CellVoltage": np.full(3, 4.2002)}, t=2.0,
                                 status={"CellVoltage": ValueStatus.uniform(3, "Good", 2.0)})  # fmt: skip
            back = await wait_until(lambda: _with_code(latest, SC.Good), DEADLINE_S, "Good again")
            assert stamp(back) == EPOCH + 2.0
            await sub.delete()


async def _with_code(latest: Any, want: int) -> ua.DataValue | None:
    dv = await latest()
    return dv if dv is not None and code(dv) == want else None


async def test_a_mirror_nobody_feeds_shows_no_value_good() -> None:
    layout = make_layout((2,))
    async with MirrorServer(layout, port=0, epoch_s=EPOCH, stale_after_s=0.3) as mirror:
        async with Client(mirror.endpoint_url, timeout=10) as c:
            links = [LinkStatus("potroom:Room1", True, "", 5.0, 5.0)]
            await mirror.publish({"CellVoltage": np.full(2, 4.2), "LineCurrent": np.array([120.0, 121.0])}, t=5.0,
                                 links=links)  # fmt: skip
            # (a loaded machine may already have gone past 0.3 s: Good or stale, never anything else)
            assert code(await read(c, "Alro.Room1.Cell101.CellVoltage")) in (SC.Good, SC.UncertainLastUsableValue)

            async def stale() -> bool:
                names = ("Alro.Room1.Cell101.CellVoltage", "Alro.Room1.CellVoltage", "Alro.Line2.LineCurrent",
                         "Alro.Links.potroom_Room1.Up")  # fmt: skip
                return all([code(await read(c, n)) == SC.UncertainLastUsableValue for n in names])

            await wait_until(stale, DEADLINE_S, "values turning UncertainLastUsableValue")
            kept = await read(c, "Alro.Room1.Cell102.CellVoltage")
            assert kept.Value.Value == pytest.approx(4.2) and stamp(kept) == EPOCH + 5.0  # the last value, its time
            # fed again: Good (the next stale mark is 0.3 s away: read it at once, or see it stale again)
            await mirror.publish({"CellVoltage": np.full(2, 4.3)}, t=6.0)
            dv = await read(c, "Alro.Room1.Cell101.CellVoltage")
            assert (code(dv), dv.Value.Value) in ((SC.Good, pytest.approx(4.3)), (SC.UncertainLastUsableValue,
                                                                                   pytest.approx(4.3)))  # fmt: skip


async def test_link_objects_show_each_plc_link() -> None:
    layout = make_layout((2,))
    links = [LinkStatus("rectifier:Line1", True, "", 10.0, 10.0),
             LinkStatus("potroom:Room1", False, "connection refused", 10.0, 4.0)]  # fmt: skip
    async with MirrorServer(layout, port=0, epoch_s=EPOCH) as mirror, Client(mirror.endpoint_url, timeout=10) as c:
        await mirror.publish({"CellVoltage": np.full(2, 4.2)}, t=10.0, links=links)
        idx = await c.get_namespace_index(NAMESPACE_URI)
        folder = await c.nodes.objects.get_child([f"{idx}:Alro", f"{idx}:Links"])
        names = sorted([(await ch.read_browse_name()).Name for ch in await folder.get_children()])
        assert names == ["potroom_Room1", "rectifier_Line1"]
        pot = await folder.get_child([f"{idx}:potroom_Room1"])

        async def val(name: str) -> Any:
            return await (await pot.get_child([f"{idx}:{name}"])).read_data_value(raise_on_bad_status=False)

        assert (await val("Device")).Value.Value == "potroom:Room1"
        assert (await val("Up")).Value.Value is False and (await val("State")).Value.Value == "down"
        assert (await val("Reason")).Value.Value == "connection refused"
        assert (await val("LastGood")).Value.Value.timestamp() == EPOCH + 4.0
        assert (await val("Since")).Value.Value.timestamp() == EPOCH + 10.0
        # the link comes back: up, since the scan that saw it, no reason
        back = [LinkStatus("rectifier:Line1", True, "", 12.0, 12.0), LinkStatus("potroom:Room1", True, "", 12.0, 12.0)]
        await mirror.publish({"CellVoltage": np.full(2, 4.2)}, t=12.0, links=back)
        assert (await val("State")).Value.Value == "up" and (await val("Reason")).Value.Value == ""
        assert (await val("Since")).Value.Value.timestamp() == EPOCH + 12.0
        rect_up = await (await folder.get_child([f"{idx}:rectifier_Line1", f"{idx}:Since"])).read_value()
        assert rect_up.timestamp() == EPOCH + 10.0  # up all along: since it was first seen


@pytest.mark.hil
async def test_hil_bad_transmitter_and_link_loss_reach_a_plain_client() -> None:
    """Rig -> BridgePlant -> MirrorModel (real observer) -> MirrorServer -> plain client."""
    from hil_rigs.faults import Fault
    from potline.mirror import MirrorModel, mirror_quantities
    from tests.plc_bridge.test_hil_bridge import N, bench, cycle, settings, start_rig
    from twin.observer import AluminaObserver

    rig = await start_rig(bench("opcua")).start()
    plant = BridgePlant.from_endpoints(rig.endpoints(), rig.clock, settings())
    await plant.start()
    lay = plant.layout
    model = MirrorModel(lay, AluminaObserver(lay.n_cells))
    mirror = MirrorServer(lay, mirror_quantities(), port=0, epoch_s=EPOCH)
    try:
        async with mirror, Client(mirror.endpoint_url, timeout=30) as c:

            async def scan() -> Any:
                """One controller scan, the mirror fed as the daemon feeds it."""
                meas = await cycle(plant, rig)
                model.update(meas)
                report = await mirror.publish(model.snapshot(meas, None), meas.t_s,
                                              status=model.status(meas, plant.quality, ae=False),
                                              links=plant.links())  # fmt: skip
                assert report.errors == []
                return meas

            async def dv(quantity: str, cell: int | None = None) -> ua.DataValue:
                nid = mirror.array_node_id(quantity, 0) if cell is None else mirror.cell_node_id(quantity, cell)
                return await c.get_node(nid).read_data_value(raise_on_bad_status=False)

            async def link(device: str, name: str) -> Any:
                return await c.get_node(mirror.link_node_id(device, name)).read_value()

            for _ in range(40):  # until the PLCs are remote and the observer has been corrected
                meas = await scan()
                if meas.cell_ok.all() and meas.cell_remote.all() and model.valid.all():
                    break
            assert model.valid.all(), "the observer never saw good inputs"
            u = await dv("CellVoltage")
            assert code(u) == SC.Good and stamp(u) == EPOCH + meas.t_s
            assert u.Value.Value == pytest.approx(meas.cell_voltage_v.tolist(), abs=1e-5)
            assert code(await dv("AluminaEstimate", 3)) == SC.Good
            room = c.get_node(ua.NodeId(ua.String(f"{lay.plant}.{lay.room_names[0]}"), ua.Int16(mirror.idx)))
            names = {(await ch.read_browse_name()).Name for ch in await room.get_children()}
            assert "CellVoltage" in names and "Superheat" not in names  # nothing estimates it: no node
            assert await link(f"potroom:{lay.room_names[0]}", "Up") is True

            # a broken transmitter: that cell's voltage, resistance and estimates stop being Good
            await rig.inject(Fault(kind="bad_sensor", cells=[3]))
            await scan()
            meas = await scan()
            assert code(await dv("CellVoltage", 3)) == SC.BadSensorFailure
            assert code(await dv("PseudoResistance", 3)) == SC.BadSensorFailure
            assert code(await dv("AluminaEstimate", 3)) == SC.UncertainSubNormal
            assert code(await dv("CellVoltage", 2)) == SC.Good
            u = await dv("CellVoltage")
            assert code(u) == SC.UncertainSubNormal and len(u.Value.Value) == N  # the room's other values stay

            # the potroom link goes dark: no cell value Good anywhere, the line untouched
            await rig.inject(Fault(kind="link_drop", target="potroom", mode="refuse"))
            meas = await scan()
            assert not meas.cell_ok.any()
            for k in range(N):
                assert code(await dv("CellVoltage", k)) == SC.BadNoCommunication
                assert code(await dv("AcdEstimate", k)) == SC.UncertainSubNormal  # open loop, not Good
            u = await dv("CellVoltage")
            assert code(u) == SC.BadNoCommunication and u.Value.Value is None
            assert code(await c.get_node(mirror.line_node_id("LineCurrent", 0)).read_data_value()) == SC.Good
            dev = f"potroom:{lay.room_names[0]}"
            assert await link(dev, "Up") is False and await link(dev, "State") == "down"
            assert await link(dev, "Reason") != ""
            assert (await link(dev, "Since")).timestamp() == EPOCH + meas.t_s
    finally:
        await plant.stop()
        await rig.stop()


def _measurements(layout: Any, t: float, cell_ok: np.ndarray) -> Any:
    from potctl.plant import Measurements

    n, nl = layout.n_cells, layout.n_lines
    return Measurements(
        t_s=t, line_current_ka=np.full(nl, 120.0), line_voltage_v=np.full(nl, 600.0),
        line_setpoint_ka=np.full(nl, 120.0), rectifier_remote=np.ones(nl, bool),
        rectifier_tripped=np.zeros(nl, bool), tap_position=np.ones(nl, np.int64),
        cell_voltage_v=np.where(cell_ok, 4.25, np.nan), feeder_ack=np.zeros(n, np.int64), beam_ack_mm=np.zeros(n),
        tapping=np.zeros(n, bool), anode_change=np.zeros(n, bool), cut_out=np.zeros(n, bool), cell_ok=cell_ok,
        line_ok=np.ones(nl, bool),
    )  # fmt: skip


async def test_the_daemons_cycle_call_publishes_values_with_their_status_and_links() -> None:
    """``publish_cycle`` through ``MirrorThread`` (the mirror in its own thread), as the daemon calls it."""
    from plc_bridge.quality import Quality, ValueQuality
    from potctl.plant import Commands
    from potline.mirror import MirrorModel, MirrorThread, mirror_quantities, publish_cycle

    layout = make_layout((3,))
    model = MirrorModel(layout, None)
    mirror = MirrorThread(lambda: MirrorServer(layout, mirror_quantities(), port=0, epoch_s=EPOCH), "Alro")
    await mirror.start()
    try:
        assert mirror.server is not None
        async with Client(mirror.server.endpoint_url, timeout=10) as c:
            # without the bridge's quality: a cell the scan did not judge ok is not Good
            ok = np.array([True, False, True])
            publish_cycle(mirror, model, _measurements(layout, 30.0, ok), Commands.idle(3, 2), None)

            async def cell(k: int) -> ua.DataValue:
                return await read(c, f"Alro.Room1.Cell{101 + k}.CellVoltage")

            first = await wait_until(lambda: _published(cell, 0, 4.25), DEADLINE_S, "the first cycle's values")
            assert stamp(first) == EPOCH + 30.0
            assert code(await cell(1)) != SC.Good and (await cell(1)).Value.Value is None
            # with the bridge's quality and links: the bridge's own reasons and scan times
            quality = {"cell_voltage_v": ValueQuality(np.zeros(3, np.uint8), np.array([31.0, 31.0, 27.0]),
                                                      np.array(["", "", ""], dtype=object))}  # fmt: skip
            quality["cell_voltage_v"].set(2, Quality.UNCERTAIN, 27.0, "last usable value (link down)")
            links = [LinkStatus("potroom:Room1", True, "", 31.0, 31.0)]
            second = _measurements(layout, 31.0, np.ones(3, bool))

            async def held_shown() -> ua.DataValue | None:
                # the daemon's next cycles (a publish still being written makes the mirror skip one)
                publish_cycle(mirror, model, second, Commands.idle(3, 2), None, quality=quality, links=links)
                return await _with_code(lambda: cell(2), SC.UncertainLastUsableValue)

            held = await wait_until(held_shown, DEADLINE_S, "the held value's status")
            assert stamp(held) == EPOCH + 27.0
            assert code(await cell(1)) == SC.Good and stamp(await cell(1)) == EPOCH + 31.0

            async def link_up() -> bool:
                with contextlib.suppress(ua.UaStatusCodeError):  # the link's object comes with that publish
                    return (await read(c, "Alro.Links.potroom_Room1.Up")).Value.Value is True
                return False

            await wait_until(link_up, DEADLINE_S, "the potroom link's object, up")
    finally:
        await asyncio.to_thread(mirror.stop)


async def _published(cell: Any, k: int, value: float) -> ua.DataValue | None:
    dv = await cell(k)
    return dv if dv.Value.Value is not None and dv.Value.Value == pytest.approx(value) else None
