"""OPC UA security of the mirror, checked with real clients over loopback.

Encrypted sessions with generated certificates, logins against scrypt hashes,
anonymous access per config, role-based writes, certificates reused on restart.
"""

from __future__ import annotations

import stat

import numpy as np
import pytest
from asyncua import Client, ua
from pydantic import ValidationError

from plc_bridge.opcua_client import NodeRef, OpcUaClient
from plc_bridge.opcua_security import (
    ClientSecurity,
    OpcUaSecurityConfig,
    UserEntry,
    hash_password,
    verify_password,
)
from plc_bridge.opcua_server import DEFAULT_QUANTITIES, NAMESPACE_URI, MirrorServer, QuantitySpec
from tests.plc_bridge.mirror_support import make_layout

TARGET = QuantitySpec(
    "ResistanceTarget", "µΩ", "Operator's pseudo-resistance target", (10.0, 40.0), ua.VariantType.Float, "B94",
    writable=True,
)  # fmt: skip
QUANTITIES = (*DEFAULT_QUANTITIES, TARGET)
USERS = {
    "op": UserEntry(role="operator", password_hash=hash_password("op-pass")),
    "view": UserEntry(role="viewer", password_hash=hash_password("view-pass")),
}


def secure_cfg(state_dir, **kw) -> OpcUaSecurityConfig:
    return OpcUaSecurityConfig(state_dir=state_dir, users=USERS, **kw)


def test_password_hashes_are_salted_and_verify() -> None:
    h1, h2 = hash_password("s3cret"), hash_password("s3cret")
    assert h1 != h2 and "s3cret" not in h1
    assert verify_password("s3cret", h1) and verify_password("s3cret", h2)
    assert not verify_password("s3cret ", h1)
    assert not verify_password("s3cret", "not-a-hash")


def test_plaintext_password_in_config_is_rejected_with_a_clear_error(tmp_path) -> None:
    with pytest.raises(ValidationError, match="scrypt"):
        OpcUaSecurityConfig(state_dir=tmp_path, users={"op": {"role": "operator", "password_hash": "hunter2"}})
    with pytest.raises(ValidationError):
        OpcUaSecurityConfig(state_dir=tmp_path, users={"op": {"role": "admin", "password_hash": hash_password("x")}})


async def test_sign_and_encrypt_with_generated_certs_and_no_plain_endpoint(tmp_path) -> None:
    cfg = secure_cfg(tmp_path / "server")
    async with MirrorServer(make_layout((3,)), port=0, security=cfg) as mirror:
        await mirror.publish({"CellVoltage": np.array([4.1, 4.2, 4.3])}, t=1.0)
        assert mirror.host == "127.0.0.1"
        endpoints = await Client(mirror.endpoint_url, timeout=5).connect_and_get_server_endpoints()
        modes = {(e.SecurityPolicyUri.rsplit("#", 1)[-1], e.SecurityMode) for e in endpoints}
        assert modes == {
            ("Basic256Sha256", ua.MessageSecurityMode.SignAndEncrypt),
            ("Basic256Sha256", ua.MessageSecurityMode.Sign),
        }
        client = Client(mirror.endpoint_url, timeout=5)
        sec = ClientSecurity(
            mode="SignAndEncrypt", state_dir=tmp_path / "client", username="view", password="view-pass"
        )
        await sec.apply(client)
        async with client:
            assert client.security_policy.Mode == ua.MessageSecurityMode.SignAndEncrypt
            idx = await client.get_namespace_index(NAMESPACE_URI)
            values = await client.get_node(ua.NodeId("Alro.Room1.CellVoltage", idx)).read_value()
            assert values == np.array([4.1, 4.2, 4.3], dtype=np.float32).tolist()
        assert (tmp_path / "client" / "client_cert.der").is_file()
        # the bridge's own client over SignAndEncrypt
        sec = ClientSecurity(mode="SignAndEncrypt", state_dir=tmp_path / "client", username="op", password="op-pass")
        refs = [NodeRef("u", "Objects/Alro/Room1/Cell102/CellVoltage")]
        async with OpcUaClient(mirror.endpoint_url, refs, namespace=NAMESPACE_URI, security=sec) as bridge:
            sample = (await bridge.read())["u"]
            assert sample.good and sample.value == pytest.approx(4.2, abs=1e-6), sample
        # user names travel only over SignAndEncrypt: the Sign endpoint offers none and refuses one sent anyway
        tokens = {e.SecurityMode: {t.TokenType for t in e.UserIdentityTokens} for e in endpoints}
        assert ua.UserTokenType.UserName in tokens[ua.MessageSecurityMode.SignAndEncrypt]
        assert ua.UserTokenType.UserName not in tokens[ua.MessageSecurityMode.Sign]
        signed = Client(mirror.endpoint_url, timeout=5)
        await ClientSecurity(mode="Sign", state_dir=tmp_path / "client", username="op", password="op-pass").apply(
            signed
        )
        with pytest.raises(ua.UaStatusCodeError) as err:
            await signed.connect()
        assert err.value.code == ua.StatusCodes.BadIdentityTokenRejected
        await signed.disconnect()
        assert stat.S_IMODE(cfg.key_path.stat().st_mode) == 0o600


async def test_wrong_password_and_unknown_user_are_refused(tmp_path) -> None:
    async with MirrorServer(make_layout((2,)), port=0, security=secure_cfg(tmp_path / "s")) as mirror:
        for user, pw in (("op", "wrong"), ("nobody", "op-pass")):
            client = Client(mirror.endpoint_url, timeout=5)
            await ClientSecurity(state_dir=tmp_path / "c", username=user, password=pw).apply(client)
            with pytest.raises(ua.UaStatusCodeError) as err:
                await client.connect()
            assert err.value.code == ua.StatusCodes.BadUserAccessDenied
            await client.disconnect()


async def test_anonymous_refused_by_default(tmp_path) -> None:
    async with MirrorServer(make_layout((2,)), port=0, security=secure_cfg(tmp_path / "s")) as mirror:
        client = Client(mirror.endpoint_url, timeout=5)
        await ClientSecurity(state_dir=tmp_path / "c").apply(client)
        with pytest.raises(ua.UaStatusCodeError) as err:
            await client.connect()
        assert err.value.code in (ua.StatusCodes.BadIdentityTokenRejected, ua.StatusCodes.BadUserAccessDenied)
        await client.disconnect()


async def test_roles_anonymous_and_viewer_read_only_operator_writes(tmp_path) -> None:
    cfg = secure_cfg(tmp_path / "s", anonymous="read_only", allow_no_security=True)
    written: list[tuple] = []

    async def on_write(quantity: str, cell: int, value, user) -> None:
        written.append((quantity, cell, value, user))

    layout = make_layout((3, 2))
    async with MirrorServer(layout, QUANTITIES, port=0, security=cfg) as mirror:
        mirror.on_write(on_write)
        await mirror.publish({"CellVoltage": np.full(5, 4.25), "ResistanceTarget": np.full(5, 20.0)}, t=1.0)
        url = mirror.endpoint_url
        target_path = ["Alro", "Room2", "Cell102", "ResistanceTarget"]

        async def attempt_write(client: Client, value: float) -> None:
            idx = await client.get_namespace_index(NAMESPACE_URI)
            node = await client.nodes.objects.get_child([f"{idx}:{p}" for p in target_path])
            await node.write_value(ua.Variant(value, ua.VariantType.Float))

        # anonymous (NoSecurity endpoint): reads, cannot write
        async with Client(url, timeout=5) as anon:
            idx = await anon.get_namespace_index(NAMESPACE_URI)
            assert await anon.get_node(ua.NodeId("Alro.Room1.Cell101.CellVoltage", idx)).read_value() == 4.25
            with pytest.raises(ua.UaStatusCodeError) as err:
                await attempt_write(anon, 25.0)
            assert err.value.code == ua.StatusCodes.BadUserAccessDenied

        # viewer over an encrypted channel: cannot write
        viewer = Client(url, timeout=5)
        await ClientSecurity(state_dir=tmp_path / "c", username="view", password="view-pass").apply(viewer)
        async with viewer:
            with pytest.raises(ua.UaStatusCodeError) as err:
                await attempt_write(viewer, 25.0)
            assert err.value.code == ua.StatusCodes.BadUserAccessDenied

        # operator: write accepted, seen by an independent reader in the scalar and the room array
        operator = Client(url, timeout=5)
        await ClientSecurity(state_dir=tmp_path / "c", username="op", password="op-pass").apply(operator)
        async with operator:
            await attempt_write(operator, 25.5)
            # and the measured values stay read-only even for operators
            idx = await operator.get_namespace_index(NAMESPACE_URI)
            with pytest.raises(ua.UaStatusCodeError) as err:
                await operator.get_node(ua.NodeId("Alro.Room1.Cell101.CellVoltage", idx)).write_value(
                    ua.Variant(1.0, ua.VariantType.Float)
                )
            assert err.value.code == ua.StatusCodes.BadUserAccessDenied
        async with Client(url, timeout=5) as reader:
            idx = await reader.get_namespace_index(NAMESPACE_URI)
            node = await reader.nodes.objects.get_child([f"{idx}:{p}" for p in target_path])
            assert await node.read_value() == 25.5
            room_array = reader.get_node(ua.NodeId("Alro.Room2.ResistanceTarget", idx))
            assert await room_array.read_value() == [20.0, 25.5]  # Cell101, Cell102
        k = int(np.flatnonzero((layout.cell_room == 1) & (layout.cell_number == 102))[0])
        assert written == [("ResistanceTarget", k, 25.5, "op")]


async def test_certificate_generated_once_and_reused_on_restart(tmp_path) -> None:
    cfg = secure_cfg(tmp_path / "state")
    served = []
    for _ in range(2):
        async with MirrorServer(make_layout((2,)), port=0, security=cfg) as mirror:
            endpoints = await Client(mirror.endpoint_url, timeout=5).connect_and_get_server_endpoints()
            served.append({bytes(e.ServerCertificate) for e in endpoints})
            on_disk = cfg.cert_path.read_bytes(), cfg.key_path.read_bytes()
            if len(served) == 1:
                first_disk = on_disk
    assert served[0] == served[1] and len(served[0]) == 1
    assert on_disk == first_disk
    assert served[0] == {first_disk[0]}
