"""The rig's OPC UA PLC offers the security a real PLC would, and the bridge logs in to it
(issue 14 items 6 and 7), all over real sockets on loopback.

One rectifier PLC (the rig's ``OpcUaEdge`` over a ``PlcImage`` and ``RectifierLogic``)
with Basic256Sha256 Sign and SignAndEncrypt endpoints, a NoSecurity endpoint for
anonymous readers, an operator user (scrypt hash) and a trusted-client-certificate
directory holding the bridge's certificate:

* a stock asyncua client without security reads but its heartbeat writes are refused
  (``BadUserAccessDenied``): three anonymous heartbeat writes leave the PLC in local;
* only the SignAndEncrypt endpoint offers a user-name token; a user name on the None
  endpoint never gets a session;
* the bridge's own client (``PlcSecurity``: SignAndEncrypt, certificate, user, password
  file) keeps the PLC in remote with its heartbeat;
* a client certificate not in the trust directory, or a wrong password, gets no session
  (the refusal reaches the PLC's security events);
* a PLC configured with certificates but neither a trust directory nor the lab opt-in
  does not start, naming the key.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pytest
from asyncua import Client, ua

from hil_rigs.edges import OpcUaEdge
from hil_rigs.plc_image import PlcImage
from hil_rigs.plc_logic import RectifierLogic
from plc_bridge.opcua_client import NodeRef, OpcUaClient, PlcSecurity
from plc_bridge.opcua_security import OpcUaSecurityConfig, UserEntry, ensure_certificate, hash_password
from plc_bridge.plant import rectifier_tagmap

NS = "urn:potline-twin:plc:Line1"
HB = NodeRef("heartbeat_out", node_id=f"nsu={NS};s=Line1.HeartbeatOut")


def _secured(tmp_path: Path, trusted: Path | None, users: bool = True, **kw: object) -> OpcUaSecurityConfig:
    return OpcUaSecurityConfig(
        state_dir=tmp_path / "plc_pki", sign=True, sign_and_encrypt=True, allow_no_security=True,
        anonymous="read_only", trusted_client_certs_dir=trusted,
        users={"bridge": UserEntry(role="operator", password_hash=hash_password("s3cret"))} if users else {}, **kw,
    )  # fmt: skip


def _scan(logic: RectifierLogic, edge: OpcUaEdge, now: float) -> None:
    logic.scan(now, 1.0)
    logic.publish(logic.active_ka, 400.0, 5, False, 1.0)
    edge.publish()


async def test_rig_opcua_plc_security_like_a_real_plc(tmp_path: Path) -> None:
    # the bridge's client certificate, made where PlcSecurity(certificate_dir=...) makes it,
    # then trusted by the PLC's administrator (copied into the trust directory)
    pki, trusted = tmp_path / "bridge_pki", tmp_path / "trusted"
    await ensure_certificate(pki / "client_cert.der", pki / "client_key.pem", "urn:potline-twin:bridge",
                             server=False, common_name="potline-twin bridge")  # fmt: skip
    trusted.mkdir()
    shutil.copy(pki / "client_cert.der", trusted / "bridge.der")
    rogue = tmp_path / "rogue"
    await ensure_certificate(rogue / "cert.der", rogue / "key.pem", "urn:potline-twin:bridge", server=False)
    (tmp_path / "pw").write_text("s3cret\n")

    image = PlcImage(rectifier_tagmap("Line1"))
    logic = RectifierLogic(image, nominal_ka=120.0, min_ka=0.0, max_ka=132.0, watchdog_s=4.0)
    edge = OpcUaEdge(image, security=_secured(tmp_path, trusted))
    await edge.start()
    now = 0.0
    try:
        _scan(logic, edge, now)
        # the endpoints: None, Sign, SignAndEncrypt; a user-name token only on SignAndEncrypt
        probe = Client(edge.endpoint_url, timeout=10)
        endpoints = await probe.connect_and_get_server_endpoints()
        modes = {e.SecurityMode: e for e in endpoints}
        assert set(modes) == {ua.MessageSecurityMode.None_, ua.MessageSecurityMode.Sign,
                              ua.MessageSecurityMode.SignAndEncrypt}  # fmt: skip
        for mode, e in modes.items():
            user_token = any(t.TokenType == ua.UserTokenType.UserName for t in e.UserIdentityTokens)
            assert user_token == (mode == ua.MessageSecurityMode.SignAndEncrypt), mode

        # anonymous over None: reads, but three heartbeat writes are refused and the PLC stays local
        async with Client(edge.endpoint_url, timeout=10) as anon:
            hb = anon.get_node(ua.NodeId("Line1.HeartbeatOut", await anon.get_namespace_index(NS)))
            assert await hb.read_value() == 0
            for k in (1, 2, 3):
                with pytest.raises(ua.uaerrors.BadUserAccessDenied):
                    await hb.write_value(ua.DataValue(ua.Variant(k, ua.VariantType.UInt16)))
                now += 1.0
                _scan(logic, edge, now)
        assert not logic.remote and image.get("heartbeat_out") == 0
        assert any(ev.kind == "write_denied" for ev in edge.security_events)

        # a user name over the None endpoint never gets a session
        plain = Client(edge.endpoint_url, timeout=5)
        plain.set_user("bridge")
        plain.set_password("s3cret")
        with pytest.raises(ua.uaerrors.BadIdentityTokenRejected):
            await plain.connect()
        with contextlib.suppress(Exception):
            await plain.disconnect()

        # the bridge: SignAndEncrypt, its trusted certificate, the operator's password from a file
        sec = PlcSecurity(mode="SignAndEncrypt", certificate_dir=pki, username="bridge", password_file=tmp_path / "pw")
        async with OpcUaClient(edge.endpoint_url, [HB], security=sec, timeout_s=10.0) as bridge:
            assert bridge.connected, bridge.last_error
            assert bridge._client is not None
            assert bridge._client.security_policy.Mode == ua.MessageSecurityMode.SignAndEncrypt
            for k in (1, 2, 3):
                await bridge.write("heartbeat_out", k)
                now += 1.0
                _scan(logic, edge, now)
            assert logic.remote and image.get("heartbeat_out") == 3

        # a certificate the PLC does not trust, or a wrong password: no session
        untrusted = PlcSecurity(mode="SignAndEncrypt", certificate=rogue / "cert.der", private_key=rogue / "key.pem",
                                username="bridge", password_file=tmp_path / "pw")  # fmt: skip
        wrong = PlcSecurity(mode="SignAndEncrypt", certificate_dir=pki, username="bridge", password="guess")
        for bad in (untrusted, wrong):
            async with OpcUaClient(edge.endpoint_url, [HB], security=bad, timeout_s=5.0, retry_delay_s=0.5) as c:
                assert not await c.wait_connected(3.0), bad
        assert any(ev.kind == "login_failed" and ev.user == "bridge" for ev in edge.security_events)
    finally:
        await edge.stop()

    # secure default: certificates on, nothing to vouch for clients, no lab opt-in -> refused
    naked = OpcUaEdge(PlcImage(rectifier_tagmap("Line1")), security=_secured(tmp_path / "b", None))
    with pytest.raises(ValueError, match="trusted_client_certs_dir"):
        await naked.start()
    # the lab opt-in starts (and says so in the log); with no users no endpoint offers a user name
    lab = OpcUaEdge(PlcImage(rectifier_tagmap("Line1")),
                    security=_secured(tmp_path / "c", None, users=False, trust_any_client_certificate=True))  # fmt: skip
    await lab.start()
    try:
        probe = Client(lab.endpoint_url, timeout=10)
        endpoints = await probe.connect_and_get_server_endpoints()
        assert len(endpoints) == 3
        assert all(t.TokenType == ua.UserTokenType.Anonymous for e in endpoints for t in e.UserIdentityTokens)
    finally:
        await lab.stop()
