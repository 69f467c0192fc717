"""OPC UA Alarms & Conditions on the mirror, with plain asyncua clients over loopback.

* An alarm condition reaches an A&C subscription (``subscribe_alarms_and_conditions``) with
  its severity, states, source and message; a late client gets the retained ones by
  ConditionRefresh, and no longer gets a condition that returned to normal acknowledged.
* Acknowledge: an operator's reaches the callback with key, user and comment; a viewer's is
  refused (BadUserAccessDenied), as are an unknown EventId, an acknowledged condition and a
  refusal of the callback.
* The daemon's round trip (``potline.mirror.MirrorThread`` in its own thread beside this
  test's loop, a real ``AlarmManager``): an alarm raised before the mirror is up is there
  for a late client; an operator's Acknowledge runs in the daemon's loop, acknowledges the
  alarm in the manager, and the client sees the condition acknowledged by that operator.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua
from asyncua.common.subscription import OpcEvent

from plc_bridge.opcua_security import ClientSecurity, OpcUaSecurityConfig, UserEntry, hash_password
from plc_bridge.opcua_server import NAMESPACE_URI, ConditionState, MirrorServer
from potline.alarms import AlarmManager
from potline.mirror import MirrorThread
from tests.plc_bridge.mirror_support import make_layout

DEADLINE_S = 30.0  # bounds a failure; a quiet machine needs well under a second
SC = ua.StatusCodes
ACK = ua.NodeId(ua.ObjectIds.AcknowledgeableConditionType_Acknowledge)
USERS = {
    "op": UserEntry(role="operator", password_hash=hash_password("op-pass")),
    "view": UserEntry(role="viewer", password_hash=hash_password("view-pass")),
}
AE = ConditionState(key="Room1/Cell102/AE", name="ae", message="Anode effect Room1/Cell102", severity=700,
                    active=True, acked=False, t_s=50.0, area="Room1", cell=102)  # fmt: skip


def field(ev: Any, name: str) -> Any:
    return getattr(ev, name)


async def subscribe(client: Client) -> Any:
    """An A&C subscription on the Server object selecting AlarmConditionType's fields (the
    default, ConditionType, has no Active/Acked states)."""
    sub = await client.create_subscription(20, None, queue_maxsize=0)
    await sub.subscribe_alarms_and_conditions(evtypes=ua.ObjectIds.AlarmConditionType)
    return sub


async def next_alarm(sub: Any, key_node: ua.NodeId | None = None) -> Any:
    """The next condition event (of ``key_node``'s condition), within the deadline."""
    async with asyncio.timeout(DEADLINE_S):
        while True:
            ev = await sub.next_event()
            is_condition = isinstance(ev, OpcEvent) and hasattr(ev.event, "NodeId")
            if is_condition and (key_node is None or ev.event.NodeId == key_node):
                return ev.event


async def refresh(client: Client, sub: Any) -> None:
    """ConditionRefresh: the server sends every retained condition again."""
    await client.get_node(ua.ObjectIds.ConditionType).call_method(
        ua.NodeId(ua.ObjectIds.ConditionType_ConditionRefresh), ua.Variant(sub.subscription_id, ua.VariantType.UInt32)
    )


async def login(url: str, state: Path, user: str, password: str) -> Client:
    client = Client(url, timeout=30)
    await ClientSecurity(mode="SignAndEncrypt", state_dir=state, username=user, password=password).apply(client)
    return client


async def acknowledge(client: Client, ev: Any, comment: str) -> None:
    cond = client.get_node(ev.NodeId)
    await cond.call_method(ACK, ua.Variant(ev.EventId, ua.VariantType.ByteString),
                           ua.Variant(ua.LocalizedText(comment), ua.VariantType.LocalizedText))  # fmt: skip


async def test_an_alarm_reaches_a_plain_ac_subscriber_and_a_late_one_by_refresh() -> None:
    layout = make_layout((3, 3))
    async with MirrorServer(layout, port=0, epoch_s=1_800_000_000.0) as mirror:
        async with Client(mirror.endpoint_url, timeout=10) as client:
            idx = await client.get_namespace_index(NAMESPACE_URI)
            sub = await subscribe(client)
            await mirror.publish_alarm(AE)
            ev = await next_alarm(sub)
            assert ev.EventType == ua.NodeId(ua.ObjectIds.AlarmConditionType)
            assert ev.NodeId == ua.NodeId("Alro.Alarms.Room1/Cell102/AE", idx)  # the ConditionId
            assert (ev.SourceName, ev.Severity, ev.Message.Text) == ("Room1/Cell102", 700, "Anode effect Room1/Cell102")
            assert ev.SourceNode == ua.NodeId("Alro.Room1.Cell102", idx)
            assert ev.ConditionName == "ae" and ev.Retain is True
            assert field(ev, "ActiveState/Id") is True and ev.ActiveState.Text == "Active"
            assert field(ev, "AckedState/Id") is False and ev.AckedState.Text == "Unacknowledged"
            assert ev.Time.timestamp() == 1_800_000_000.0 + 50.0
            # the condition object a client acknowledges on is in the address space
            alarms = await client.nodes.objects.get_child([f"{idx}:Alro", f"{idx}:Alarms"])
            assert [c.nodeid for c in await alarms.get_children()] == [ev.NodeId]
            # a line alarm, retained too; then the AE returns to normal unacknowledged (still retained)
            trip = ConditionState("Line2/RectifierTrip", "rectifier_trip", "Rectifier tripped Line2", 900, True, False,
                                  51.0, area="Line2")  # fmt: skip
            await mirror.publish_alarm(trip)
            ev_trip = await next_alarm(sub)
            assert ev_trip.SourceNode == ua.NodeId("Alro.Line2", idx) and ev_trip.Severity == 900
            await mirror.publish_alarm(ConditionState(**{**_fields(AE), "active": False, "t_s": 60.0}))
            rtn = await next_alarm(sub)
            assert field(rtn, "ActiveState/Id") is False and rtn.Retain is True

        async with Client(mirror.endpoint_url, timeout=10) as late:
            sub = await subscribe(late)
            await refresh(late, sub)
            got = {(await next_alarm(sub)).SourceName, (await next_alarm(sub)).SourceName}
            assert got == {"Room1/Cell102", "Line2"}
            # acknowledged after returning to normal: no longer retained, gone from a refresh
            await mirror.publish_alarm(ConditionState(**{**_fields(AE), "active": False, "acked": True, "t_s": 61.0}))
            done = await next_alarm(sub)
            assert done.Retain is False and field(done, "AckedState/Id") is True
            await refresh(late, sub)
            assert (await next_alarm(sub)).SourceName == "Line2"
            assert await _no_more_alarms(sub)


def _fields(st: ConditionState) -> dict[str, Any]:
    return {name: getattr(st, name) for name in st.__slots__}


async def _no_more_alarms(sub: Any) -> bool:
    while True:  # RefreshEnd and the like may follow; no condition event must
        ev = await sub.next_event(timeout=0.5)
        if ev is None:
            return True
        if isinstance(ev, OpcEvent) and hasattr(ev.event, "NodeId"):
            return False


async def test_acknowledge_operators_only_reaches_the_callback(tmp_path: Path) -> None:
    cfg = OpcUaSecurityConfig(state_dir=tmp_path / "server", sign=False, sign_and_encrypt=True, users=USERS)
    calls: list[tuple[str, str, str]] = []

    def on_ack(key: str, user: str, comment: str) -> None:
        if comment == "refuse me":
            raise ValueError("alarm is shelved: nothing to acknowledge")
        calls.append((key, user, comment))

    async with MirrorServer(make_layout((3,)), port=0, security=cfg) as mirror:
        mirror.on_acknowledge(on_ack)
        await mirror.publish_alarm(AE)
        client_dir = tmp_path / "client"
        async with await login(mirror.endpoint_url, client_dir, "view", "view-pass") as viewer:
            sub = await subscribe(viewer)
            await refresh(viewer, sub)
            ev = await next_alarm(sub)
            with pytest.raises(ua.UaStatusCodeError) as err:
                await acknowledge(viewer, ev, "viewer was here")
            assert err.value.code == SC.BadUserAccessDenied
        assert calls == []
        async with await login(mirror.endpoint_url, client_dir, "op", "op-pass") as op:
            sub = await subscribe(op)
            await refresh(op, sub)
            ev = await next_alarm(sub)
            with pytest.raises(ua.UaStatusCodeError) as err:
                await acknowledge(op, type("Ev", (), {"NodeId": ev.NodeId, "EventId": b"not an event"})(), "x")
            assert err.value.code == SC.BadEventIdUnknown
            with pytest.raises(ua.UaStatusCodeError) as err:
                await acknowledge(op, ev, "refuse me")
            assert err.value.code == SC.BadInvalidState
            await acknowledge(op, ev, "seen, feeding")
            assert calls == [("Room1/Cell102/AE", "op", "seen, feeding")]
            # the application acknowledged it: the mirror shows it, a second one is refused
            await mirror.publish_alarm(ConditionState(**{**_fields(AE), "acked": True, "user": "op"}))
            acked = await next_alarm(sub)
            with pytest.raises(ua.UaStatusCodeError) as err:
                await acknowledge(op, acked, "again")
            assert err.value.code == SC.BadConditionBranchAlreadyAcked
        assert len(calls) == 1


async def test_daemon_round_trip_through_the_alarm_manager(tmp_path: Path) -> None:
    """The mirror in its thread, the alarm manager in this loop (the daemon's arrangement)."""
    layout = make_layout((3,))
    cfg = OpcUaSecurityConfig(state_dir=tmp_path / "server", sign=False, sign_and_encrypt=True, users=USERS)
    alarms = AlarmManager()
    loop_thread = threading.get_ident()
    ack_threads: list[int] = []
    mirror = MirrorThread(lambda: MirrorServer(layout, port=0, security=cfg, epoch_s=1_800_000_000.0), "Alro")

    def on_ack(key: str, user: str, comment: str) -> None:  # the daemon's callback, in its loop
        ack_threads.append(threading.get_ident())
        mirror.show_alarms(alarms.acknowledge(key, user, 70.0, comment), alarms)

    mirror.on_acknowledge(on_ack)
    # an anode effect raised before the mirror is up
    mirror.show_alarms(alarms.on_event("ae_start", 10.0, area="Room1", cell=102, cell_index=1, value=31.0), alarms)
    await mirror.start()
    try:
        assert mirror.server is not None
        async with await login(mirror.server.endpoint_url, tmp_path / "client", "op", "op-pass") as op:
            sub = await subscribe(op)
            await refresh(op, sub)
            ev = await next_alarm(sub)
            assert (ev.SourceName, ev.Severity, ev.Message.Text) == ("Room1/Cell102", 700, "Anode effect Room1/Cell102")
            assert field(ev, "ActiveState/Id") is True and field(ev, "AckedState/Id") is False
            await acknowledge(op, ev, "crust broken")
            acked = await next_alarm(sub, ev.NodeId)
            assert field(acked, "AckedState/Id") is True and field(acked, "ActiveState/Id") is True
            assert acked.ClientUserId == "op" and acked.Comment.Text == "crust broken"
            assert ack_threads == [loop_thread]  # the manager was touched from its own loop only
            assert alarms.get("Room1/Cell102/AE").acked_by == "op"
            # the effect ends: not active, acknowledged -> no longer retained
            mirror.show_alarms(alarms.on_event("ae_end", 80.0, area="Room1", cell=102, cell_index=1), alarms)
            end = await next_alarm(sub, ev.NodeId)
            assert field(end, "ActiveState/Id") is False and end.Retain is False
    finally:
        await asyncio.to_thread(mirror.stop)
