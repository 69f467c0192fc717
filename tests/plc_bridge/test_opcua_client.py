"""OpcUaClient against real servers: resolution, batched reads, typed writes, recovery.

The recovery test runs the server in a separate process and kills it with SIGKILL,
as a PLC power cut would, then starts a new one on the same port. It waits on conditions
with generous deadlines: how fast the client recovers in wall time is a benchmark's
business; here it must recover by itself (reconnect, re-subscribe) and say BAD meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
from asyncua import Client, ua
from asyncua.common.callback import CallbackType

from plc_bridge.opcua_client import NodeRef, OpcUaClient, OpcUaWriteError
from plc_bridge.opcua_security import ClientSecurity, OpcUaSecurityConfig, UserEntry, hash_password
from plc_bridge.opcua_server import DEFAULT_QUANTITIES, NAMESPACE_URI, MirrorServer, QuantitySpec
from plc_bridge.ports import free_port
from plc_bridge.quality import Quality
from tests.plc_bridge.mirror_support import make_layout, make_snapshot
from tests.waits import wait_until

REPO = Path(__file__).resolve().parents[2]
CELL_Q = [q for q in DEFAULT_QUANTITIES if q.level == "cell"]
#: deadline for what takes a second or two on a quiet machine [wall s]
DEADLINE_S = 30.0


async def test_browse_paths_resolve_in_one_batch_and_failures_name_the_path() -> None:
    async with MirrorServer(make_layout((3, 2)), port=0) as mirror:
        refs = [
            NodeRef("u_room1", "Objects/Alro/Room1/CellVoltage"),
            NodeRef("u_102", "Objects/Alro/Room2/Cell102/CellVoltage"),
            NodeRef("i_line2", f"Objects/{mirror.idx}:Alro/{mirror.idx}:Line2/{mirror.idx}:LineCurrent"),
            NodeRef("mode", node_id=f"nsu={NAMESPACE_URI};s=Alro.Twin.Mode"),
            NodeRef("typo", "Objects/Alro/Room3/CellVoltage"),
            NodeRef("gone", node_id="ns=2;s=Alro.Nothing"),
        ]
        async with OpcUaClient(mirror.endpoint_url, refs, namespace=NAMESPACE_URI) as client:
            assert client.connected
            ids = client.node_ids
            assert ids["u_room1"] == ua.NodeId("Alro.Room1.CellVoltage", mirror.idx)
            assert ids["u_102"] == ua.NodeId("Alro.Room2.Cell102.CellVoltage", mirror.idx)
            assert ids["i_line2"] == ua.NodeId("Alro.Line2.LineCurrent", mirror.idx)
            assert ids["mode"] == ua.NodeId("Alro.Twin.Mode", mirror.idx)
            assert set(client.unresolved) == {"typo", "gone"}
            assert "Objects/Alro/Room3/CellVoltage" in client.unresolved["typo"]
            samples = await client.read()
            assert samples["mode"].value == "observe" and samples["mode"].good
            assert samples["typo"].quality is Quality.BAD and "BadNoMatch" in samples["typo"].reason
            assert samples["gone"].quality is Quality.BAD
            with pytest.raises(KeyError):
                await client.read(["no_such_tag"])


async def test_batched_read_is_one_request_and_matches_the_published_snapshot() -> None:
    layout = make_layout((6, 6))
    snap = make_snapshot(layout, np.random.default_rng(7))
    refs, want = [], {}
    for r, room in enumerate(layout.room_names):
        for q in CELL_Q:
            refs.append(NodeRef(f"{room}.{q.name}", f"Objects/Alro/{room}/{q.name}"))
            want[f"{room}.{q.name}"] = snap[q.name][layout.room_cells(r)].astype(q.dtype)
    for k in range(layout.n_cells):
        cell = layout.cell_name(k)
        for q in CELL_Q:
            refs.append(NodeRef(f"{cell}.{q.name}", f"Objects/Alro/{cell}/{q.name}"))
            want[f"{cell}.{q.name}"] = snap[q.name][k].astype(q.dtype)
    async with MirrorServer(layout, port=0, deadbands={q.name: 0.0 for q in CELL_Q}) as mirror:
        await mirror.publish(snap, t=3.0)
        reads: list[int] = []

        async def count_reads(event, _dispatcher) -> None:
            if event.is_external:
                reads.append(len(event.request_params.NodesToRead))

        async with OpcUaClient(mirror.endpoint_url, refs, namespace=NAMESPACE_URI) as client:
            mirror.server.subscribe_server_callback(CallbackType.PreRead, count_reads)
            samples = await client.read()
            mirror.server.unsubscribe_server_callback(CallbackType.PreRead, count_reads)
        assert reads == [len(refs)]  # one Read service call for all 2x7 arrays + 12x7 scalars
        for name, value in want.items():
            s = samples[name]
            assert s.good, (name, s)
            np.testing.assert_array_equal(s.value, value, err_msg=name)


async def test_typed_write_lands_where_an_untyped_one_is_refused(tmp_path) -> None:
    target = QuantitySpec("ResistanceTarget", "µΩ", "target", (10.0, 40.0), ua.VariantType.Float, "B94", writable=True)
    cfg = OpcUaSecurityConfig(
        state_dir=tmp_path / "server", sign=False, users={"op": UserEntry(role="operator", password_hash=hash_password("pw"))},
    )  # fmt: skip
    async with MirrorServer(make_layout((2,)), (*DEFAULT_QUANTITIES, target), port=0, security=cfg) as mirror:
        path = "Objects/Alro/Room1/Cell102/ResistanceTarget"
        refs = [NodeRef("target", path), NodeRef("u", "Objects/Alro/Room1/Cell102/CellVoltage")]
        # a login only over SignAndEncrypt
        sec = ClientSecurity(mode="SignAndEncrypt", state_dir=tmp_path / "client", username="op", password="pw")
        # the trap: a Python float written without a type into a Float node
        raw = Client(mirror.endpoint_url, timeout=5)
        await sec.apply(raw)
        async with raw:
            idx = await raw.get_namespace_index(NAMESPACE_URI)
            with pytest.raises(ua.UaStatusCodeError) as err:
                await raw.get_node(ua.NodeId("Alro.Room1.Cell102.ResistanceTarget", idx)).write_value(22.5)
            assert err.value.code == ua.StatusCodes.BadTypeMismatch
        async with OpcUaClient(mirror.endpoint_url, refs, namespace=NAMESPACE_URI, security=sec) as client:
            await client.write("target", 22.5)  # typed from the node's DataType
            await client.write("target", np.float64(23.25))
            with pytest.raises(OpcUaWriteError) as werr:
                await client.write("u", 1.0)  # measured values are read-only
            assert werr.value.status.value == ua.StatusCodes.BadUserAccessDenied
        reader = Client(mirror.endpoint_url, timeout=5)
        await sec.apply(reader)
        async with reader:
            idx = await reader.get_namespace_index(NAMESPACE_URI)
            assert await reader.get_node(ua.NodeId("Alro.Room1.Cell102.ResistanceTarget", idx)).read_value() == 23.25


SERVER_SCRIPT = """
import asyncio, sys
import numpy as np
from plc_bridge.opcua_server import MirrorServer
from tests.plc_bridge.mirror_support import make_layout

async def main(port):
    layout = make_layout((3, 3))
    async with MirrorServer(layout, port=port) as mirror:
        print("READY", flush=True)
        k = 0
        while True:
            k += 1
            await mirror.publish({"CellVoltage": np.full(6, 4.0 + 0.001 * k)}, t=0.1 * k)
            await asyncio.sleep(0.1)

asyncio.run(main(int(sys.argv[1])))
"""


async def _spawn_server(port: int) -> asyncio.subprocess.Process:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SERVER_SCRIPT, str(port),
        cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None
    while True:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if not line:
            raise RuntimeError("server process exited before READY")
        if line.strip() == b"READY":
            return proc


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()


async def test_server_killed_then_restarted_quality_goes_bad_then_recovers() -> None:
    loop_errors: list[dict] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, ctx: loop_errors.append(ctx))
    port = free_port()
    url = f"opc.tcp://127.0.0.1:{port}/potline-twin/"
    refs = [
        NodeRef("count", "Objects/Alro/Twin/PublishCount"),
        NodeRef("u_room2", "Objects/Alro/Room2/CellVoltage"),
        NodeRef("u_201", "Objects/Alro/Room2/Cell102/CellVoltage"),
    ]
    client = OpcUaClient(url, refs, namespace=NAMESPACE_URI, retry_delay_s=0.5)
    # the client may start before its server exists
    assert await client.start(wait_s=0.3) is False
    assert all(s.quality is Quality.BAD for s in (await client.read()).values())
    updates: list[tuple[str, Quality]] = []

    async def collect() -> None:
        async for name, s in client.updates():
            updates.append((name, s.quality))

    collector = asyncio.create_task(collect())
    procs = []
    try:
        proc = await _spawn_server(port)
        procs.append(proc)
        assert await client.wait_connected(DEADLINE_S)
        await client.subscribe(["count"], period_ms=50)

        async def all_good() -> bool:
            return all(s.good for s in (await client.read()).values())

        await wait_until(all_good, DEADLINE_S, "all tags GOOD")
        await wait_until(lambda: _has_update(updates, Quality.GOOD, 0), DEADLINE_S, "a GOOD subscription update")

        n_kill = len(updates)
        await _kill(proc)

        async def all_bad() -> bool:
            return all(s.quality is Quality.BAD for s in (await client.read()).values())

        await wait_until(all_bad, DEADLINE_S, "all tags BAD after the server was killed")
        await wait_until(lambda: _has_update(updates, Quality.BAD, n_kill), DEADLINE_S,
                         "a BAD subscription update after the kill", detail=lambda: updates[-5:])  # fmt: skip
        assert not client.connected

        proc = await _spawn_server(port)
        procs.append(proc)
        n_ready = len(updates)
        await wait_until(all_good, DEADLINE_S, "all tags GOOD again after the server came back")
        # re-subscribed by itself
        await wait_until(lambda: _has_update(updates, Quality.GOOD, n_ready), DEADLINE_S,
                         "a GOOD subscription update from the new server")  # fmt: skip
        samples = await client.read()
        assert samples["u_room2"].value.shape == (3,)
        assert samples["u_201"].value == pytest.approx(samples["u_room2"].value[1], abs=0.01)
        assert client.connects == 2
    finally:
        collector.cancel()
        await client.stop()
        for p in procs:
            await _kill(p)
    assert loop_errors == [], loop_errors


def _has_update(updates: list[tuple[str, Quality]], quality: Quality, since: int) -> bool:
    """An update of ``quality`` among those that came after the first ``since``."""
    return any(q is quality for _n, q in updates[since:])


# ---------------------------------------------------------------- the rig's OPC UA PLC: subscriptions, units


async def test_rig_opcua_plc_serves_subscriptions_with_engineering_units() -> None:
    """A 20-node subscription to the rig's potroom PLC gets every change after the initial
    values (the rig pushes monitored nodes after each PLC scan), and analog nodes carry
    EngineeringUnits (UN/CEFACT) and EURange, read with plain asyncua."""
    from hil_rigs.rig import Rig
    from hil_rigs.scenarios import load_scenario
    from plc_bridge.opcua_server import UNECE_NAMESPACE, unece_unit_id
    from tests.waits import step_rig
    from twin.clock import VirtualClock

    sc = load_scenario("ae_storm", **{"ae_storm": None, "plant.cells": 20, "protocols.potroom": "opcua",
                                      "protocols.rectifier": "opcua", "scenario.speed": 10.0})  # fmt: skip
    rig = await Rig(sc, clock=VirtualClock()).start()
    try:
        ep = rig.endpoints()["potrooms"][0]
        url = f"opc.tcp://{ep['host']}:{ep['port']}{ep['path']}"
        refs = [NodeRef(f"u{k}", f"Objects/Potroom1/Cell{k:03d}/Voltage") for k in range(1, 21)]
        async with OpcUaClient(url, refs, namespace=ep["namespace"]) as client:
            await client.subscribe([r.name for r in refs], period_ms=50)
            seen: dict[str, list[float]] = {r.name: [] for r in refs}

            async def pump() -> None:
                async for name, sample in client.updates():
                    if sample.good:
                        seen[name].append(float(sample.value))

            task = asyncio.create_task(pump())
            try:
                for _ in range(40):  # plant time moves on: the cell voltages change every PLC scan
                    await step_rig(rig, rig.clock, 2.0)
                    if all(len(v) >= 3 for v in seen.values()):
                        break
                await wait_until(lambda: all(len(v) >= 3 for v in seen.values()), DEADLINE_S,
                                 "3 updates per monitored node", detail=lambda: {k: len(v) for k, v in seen.items()})  # fmt: skip
            finally:
                task.cancel()
            assert all(len(set(v)) >= 2 for v in seen.values()), "changes, not repeats of the initial value"
            assert rig.plc("potroom:Potroom1").edge.pushed >= 40
        async with Client(url, timeout=5) as raw:
            idx = await raw.get_namespace_index(ep["namespace"])
            volt = await raw.nodes.objects.get_child([f"{idx}:Potroom1", f"{idx}:Cell001", f"{idx}:Voltage"])
            eu = await (await volt.get_child("0:EngineeringUnits")).read_value()
            rng = await (await volt.get_child("0:EURange")).read_value()
            assert (
                eu.DisplayName.Text == "V" and eu.UnitId == unece_unit_id("VLT") and eu.NamespaceUri == UNECE_NAMESPACE
            )
            assert (rng.Low, rng.High) == (0.0, 80.0)
            assert (await volt.read_type_definition()) == ua.NodeId(ua.ObjectIds.AnalogItemType)
    finally:
        await rig.stop()


# ---------------------------------------------------------------- the bridge's client to a secured PLC


async def _secured_plc(tmp_path: Path, users: dict[str, str]):
    """A plain asyncua server as a PLC would offer it: Basic256Sha256 SignAndEncrypt only,
    user tokens only, one writable Double in its own namespace."""
    from asyncua import Server
    from asyncua.crypto.permission_rules import User, UserRole

    from plc_bridge.opcua_security import ensure_certificate

    class Users:
        def get_user(self, iserver, username=None, password=None, certificate=None):
            if username is not None and users.get(username) == password:
                return User(role=UserRole.User, name=username)
            return None

    cert, key = tmp_path / "plc_cert.der", tmp_path / "plc_key.pem"
    await ensure_certificate(cert, key, "urn:acme:plc", "localhost")
    port = free_port()
    server = Server(user_manager=Users())
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/acme/")
    await server.load_certificate(str(cert))
    await server.load_private_key(str(key))
    await server.set_application_uri("urn:acme:plc")
    server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
    server.set_identity_tokens([ua.UserNameIdentityToken])
    idx = await server.register_namespace("urn:acme:plc")
    obj = await server.nodes.objects.add_object(ua.NodeId("Rect", idx), f"{idx}:Rect")
    sp = await obj.add_variable(ua.NodeId("Rect.Sp", idx), f"{idx}:Sp", 120.0, ua.VariantType.Double)
    await sp.set_writable()
    await server.start()
    return server, port


async def test_bridge_client_logs_in_to_a_secured_plc_with_certificate_and_user(tmp_path) -> None:
    """The bridge's OPC UA link to a PLC over Basic256Sha256 SignAndEncrypt with a user
    token (password from a file), configured by the PLC section's keys; a wrong password
    never gets a session."""
    from plc_bridge.opcua_client import PlcSecurity
    from plc_bridge.plant import DeviceEndpoint

    server, port = await _secured_plc(tmp_path, {"bridge": "s3cret"})
    try:
        (tmp_path / "pw").write_text("s3cret\n")
        section = {"protocol": "opcua", "host": "127.0.0.1", "port": port, "path": "/acme/",
                   "namespace": "urn:acme:plc", "security_mode": "SignAndEncrypt",
                   "certificate_dir": "pki", "username": "bridge", "password_file": "pw"}  # fmt: skip
        ep = DeviceEndpoint.from_dict(section, base=tmp_path)
        assert ep.security is not None and ep.security.certificate_dir == tmp_path / "pki"
        refs = [NodeRef("sp", node_id="nsu=urn:acme:plc;s=Rect.Sp")]
        async with OpcUaClient(ep.url, refs, security=ep.security, timeout_s=5.0) as client:
            assert client.connected, client.last_error
            assert client._client is not None
            assert client._client.security_policy.Mode == ua.MessageSecurityMode.SignAndEncrypt
            await client.write("sp", 118.5)
            assert (await client.read(["sp"]))["sp"].value == 118.5
        assert (tmp_path / "pki" / "client_cert.der").is_file()
        bad = PlcSecurity(mode="SignAndEncrypt", certificate_dir=tmp_path / "pki", username="bridge", password="nope")
        async with OpcUaClient(ep.url, refs, security=bad, timeout_s=5.0, retry_delay_s=0.2) as client:
            assert not await client.wait_connected(3.0)
            assert "BadUserAccessDenied" in client.last_error or "Denied" in client.last_error, client.last_error
        with pytest.raises(ValueError, match="certificate_dir"):
            PlcSecurity(mode="Sign", username="bridge", password="x")
    finally:
        await server.stop()
