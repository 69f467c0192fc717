"""OPC UA login hardening of the mirror (issue 15, item 5), with real asyncua clients over loopback.

* 100 wrong passwords from one source lock that source out (only the first few are even
  checked), while the right user from another source still logs in; the refusals reach
  the security callback as rate-limited summaries and land in a real journal file.
* An unknown user costs the same scrypt work as a wrong password (no enumeration by timing).
* User names travel only over SignAndEncrypt; a config that would need otherwise is refused.
* Viewers' denied writes and SetMode calls are reported with user and source.

Sources: the server keys its counters on the client's IP address. On loopback every
client is 127.0.0.1, so the attacker here talks through a small TCP relay whose outgoing
connections are bound to 127.0.0.2 (Linux routes all of 127.0.0.0/8 to lo): the server
sees a second, real peer address, the legitimate client connects directly from 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from asyncua import Client, ua

from plc_bridge.opcua_security import (
    ClientSecurity,
    LoginGuard,
    LoginPolicy,
    OpcUaSecurityConfig,
    SecurityEvent,
    UserEntry,
    hash_password,
)
from plc_bridge.opcua_server import NAMESPACE_URI, MirrorServer
from potline.journal import Journal
from tests.plc_bridge.mirror_support import make_layout
from tests.waits import wait_until

USERS = {
    "op": UserEntry(role="operator", password_hash=hash_password("op-pass")),
    "view": UserEntry(role="viewer", password_hash=hash_password("view-pass")),
}
ATTACKER = "127.0.0.2"


class Relay:
    """A TCP relay on 127.0.0.1 whose connections to ``target`` leave from ``source_ip``."""

    def __init__(self, target_port: int, source_ip: str) -> None:
        self.target_port, self.source_ip = target_port, source_ip
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port, local_addr=(self.source_ip, 0))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        tasks = {asyncio.create_task(pipe(reader, up_w)), asyncio.create_task(pipe(up_r, writer))}
        self._tasks |= tasks
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks -= tasks


@pytest.fixture
async def mirror(tmp_path: Path) -> AsyncIterator[MirrorServer]:
    cfg = OpcUaSecurityConfig(state_dir=tmp_path / "server", users=USERS, anonymous="read_only",
                              allow_no_security=True)  # fmt: skip
    async with MirrorServer(make_layout((2,)), port=0, security=cfg, security_summary_s=1.0) as m:
        await m.publish({"CellVoltage": np.array([4.1, 4.2])}, t=1.0)
        yield m


async def _session(url: str, state: Path) -> Client:
    """An encrypted channel and a created session, not yet activated (an attacker re-tries on it)."""
    client = Client(url, timeout=30)
    await ClientSecurity(mode="SignAndEncrypt", state_dir=state, username="x", password="x").apply(client)
    await client.connect_socket()
    await client.send_hello()
    await client.open_secure_channel()
    await client.create_session()
    return client


async def _activate(client: Client, user: str, password: str) -> int:
    try:
        await client.activate_session(username=user, password=password, certificate=client.user_certificate)
    except ua.UaStatusCodeError as exc:
        return int(exc.code)
    return 0


async def _login(url: str, state: Path, user: str, password: str) -> str:
    """Log in over SignAndEncrypt as a whole client does and read the mode: 'ok' or the status name."""
    client = Client(url, timeout=30)
    await ClientSecurity(mode="SignAndEncrypt", state_dir=state, username=user, password=password).apply(client)
    try:
        async with client:
            idx = await client.get_namespace_index(NAMESPACE_URI)
            assert await client.get_node(ua.NodeId("Alro.Twin.Mode", idx)).read_value() == "observe"
            return "ok"
    except ua.UaStatusCodeError as exc:
        return _status_name(exc.code)


def _status_name(code: int) -> str:
    return next((n for n, v in vars(ua.StatusCodes).items() if v == code), hex(code))


async def test_100_wrong_passwords_lock_the_source_out_the_right_user_elsewhere_logs_in_all_journalled(
    mirror: MirrorServer, tmp_path: Path
) -> None:
    journal = Journal(tmp_path / "journal.db")
    seen: list[SecurityEvent] = []

    def to_journal(ev: SecurityEvent) -> None:  # what the daemon's wiring does (in the mirror's thread)
        seen.append(ev)
        journal.append(**ev.journal_fields())
        journal.commit()

    mirror.on_security_event(to_journal)
    try:
        async with Relay(mirror.port, ATTACKER) as relay:
            url = mirror.endpoint_url.replace(f":{mirror.port}/", f":{relay.port}/")
            attacker = await _session(url, tmp_path / "attacker")
            try:
                codes = [await _activate(attacker, "op", f"guess-{i:03d}") for i in range(100)]
                assert set(codes) == {ua.StatusCodes.BadUserAccessDenied}
                # locked: the right password from that source is refused too
                assert await _activate(attacker, "op", "op-pass") == ua.StatusCodes.BadUserAccessDenied
            finally:
                with contextlib.suppress(Exception):
                    await attacker.close_secure_channel()
                attacker.disconnect_socket()
        audit = mirror.audit
        assert audit is not None
        # only the first few guesses were ever checked against the hash; the rest refused unchecked
        assert audit.totals["login_failed"] <= 6 and audit.totals["login_refused"] >= 95
        # the right user from another source (127.0.0.1) logs in at once, and so does a viewer
        assert await _login(mirror.endpoint_url, tmp_path / "operator", "op", "op-pass") == "ok"
        assert await _login(mirror.endpoint_url, tmp_path / "viewer", "view", "view-pass") == "ok"

        # every refusal is accounted for, per user and source, in the journal (summaries after 1 s here)
        def attacker_count() -> int:
            rows = journal.query(kinds=["opcua_login_failed", "opcua_login_refused"])
            return sum(int(e.data["count"]) for e in rows if e.user == "op" and e.data["client"] == ATTACKER)

        await wait_until(lambda: attacker_count() == 101, 30.0, "101 refusals journalled for op@127.0.0.2",
                         detail=attacker_count)  # fmt: skip
        rows = journal.query(kinds=["opcua_login_failed", "opcua_login_refused"])
        assert len(rows) <= 4  # summaries, not one row per attempt
        assert any("locked out" in e.detail for e in rows)
        assert not any(e.data["client"] == "127.0.0.1" for e in rows)  # the legitimate logins: nothing refused
        assert all(ev.source == ATTACKER for ev in seen)
    finally:
        journal.close()


async def test_an_unknown_user_costs_the_same_scrypt_work_as_a_wrong_password(
    mirror: MirrorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counted where the work is done: every scrypt call the server makes (with its cost
    parameters) while a wrong password and an unknown user are refused."""
    calls: list[tuple[int, int, int]] = []
    real = hashlib.scrypt

    def counting(password: bytes, *, salt: bytes, n: int, r: int, p: int, **kw: Any) -> bytes:
        calls.append((n, r, p))
        return real(password, salt=salt, n=n, r=r, p=p, **kw)

    monkeypatch.setattr(hashlib, "scrypt", counting)
    client = await _session(mirror.endpoint_url, tmp_path / "c")
    try:
        work = {}
        for user in ("op", "nobody", "view", "root"):
            calls.clear()
            assert await _activate(client, user, "not-the-password") == ua.StatusCodes.BadUserAccessDenied
            work[user] = list(calls)
    finally:
        with contextlib.suppress(Exception):
            await client.close_secure_channel()
        client.disconnect_socket()
    assert work["op"] == work["nobody"] == work["view"] == work["root"] == [(2**14, 8, 1)]


async def test_user_names_only_over_sign_and_encrypt(mirror: MirrorServer, tmp_path: Path) -> None:
    seen: list[SecurityEvent] = []
    mirror.on_security_event(seen.append)
    endpoints = await Client(mirror.endpoint_url, timeout=30).connect_and_get_server_endpoints()
    tokens = {e.SecurityMode: {t.TokenType for t in e.UserIdentityTokens} for e in endpoints}
    assert tokens[ua.MessageSecurityMode.None_] == {ua.UserTokenType.Anonymous}
    assert tokens[ua.MessageSecurityMode.Sign] == {ua.UserTokenType.Anonymous}
    assert ua.UserTokenType.UserName in tokens[ua.MessageSecurityMode.SignAndEncrypt]
    # an operator's name and password sent over the None channel anyway: refused before any check
    plain = Client(mirror.endpoint_url.replace("opc.tcp://", "opc.tcp://op:op-pass@"), timeout=30)
    with pytest.raises(ua.UaStatusCodeError) as err:
        await plain.connect()
    assert err.value.code == ua.StatusCodes.BadIdentityTokenRejected
    await plain.disconnect()
    await wait_until(lambda: any(e.kind == "login_refused" and "unencrypted" in e.detail for e in seen), 30.0,
                     "the refusal reported")  # fmt: skip
    # anonymous over None still reads
    async with Client(mirror.endpoint_url, timeout=30) as anon:
        idx = await anon.get_namespace_index(NAMESPACE_URI)
        assert await anon.get_node(ua.NodeId("Alro.Room1.CellVoltage", idx)).read_value() == pytest.approx([4.1, 4.2])
    # a config whose users could only log in without encryption does not start
    bad = OpcUaSecurityConfig(state_dir=tmp_path / "s2", users=USERS, sign_and_encrypt=False, allow_no_security=True,
                              anonymous="read_only")  # fmt: skip
    with pytest.raises(ValueError, match="sign_and_encrypt: expected true while users are configured"):
        async with MirrorServer(make_layout((2,)), port=0, security=bad):
            pass


async def test_denied_writes_and_set_mode_are_reported_with_user_and_source(
    mirror: MirrorServer, tmp_path: Path
) -> None:
    seen: list[SecurityEvent] = []
    mirror.on_security_event(seen.append)
    viewer = Client(mirror.endpoint_url, timeout=30)
    await ClientSecurity(state_dir=tmp_path / "c", username="view", password="view-pass").apply(viewer)
    async with viewer:
        idx = await viewer.get_namespace_index(NAMESPACE_URI)
        twin = viewer.get_node(ua.NodeId("Alro.Twin", idx))
        for _ in range(3):
            with pytest.raises(ua.UaStatusCodeError) as err:
                await twin.call_method(
                    ua.NodeId("Alro.Twin.SetMode", idx), ua.Variant("control", ua.VariantType.String)
                )
            assert err.value.code == ua.StatusCodes.BadUserAccessDenied
        with pytest.raises(ua.UaStatusCodeError):
            await viewer.get_node(ua.NodeId("Alro.Room1.Cell101.CellVoltage", idx)).write_value(
                ua.Variant(1.0, ua.VariantType.Float)
            )
    await wait_until(lambda: sum(e.count for e in seen if e.kind == "call_denied") == 3, 30.0,
                     "three denied SetMode calls reported", detail=lambda: seen)  # fmt: skip
    calls = [e for e in seen if e.kind == "call_denied"]
    assert {(e.user, e.source) for e in calls} == {("view", "127.0.0.1")} and "SetMode" in calls[0].detail
    assert [(e.kind, e.user, e.source) for e in seen if e.kind == "write_denied"] == [
        ("write_denied", "view", "127.0.0.1")
    ]


# ---------------------------------------------------------------------- the guard's rules, on a clock the test moves


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_guard_backs_off_then_locks_and_forgets_after_quiet() -> None:
    clock = FakeClock()
    g = LoginGuard(LoginPolicy(backoff_after=5, backoff_base_s=1.0, backoff_max_s=8.0, lockout_after=20,
                               lockout_s=900.0), clock)  # fmt: skip
    for _ in range(5):  # five checked failures: no waiting yet
        assert g.admit("op", "10.0.0.9") is None
        g.failed("op", "10.0.0.9")
    why = g.admit("op", "10.0.0.9")  # at once: inside the 1 s back-off, refused unchecked (a 6th failure)
    assert why is not None and "backing off" in why
    clock.t += 2.0  # 2 s later: the back-off after 6 failures (2 s) has passed
    assert g.admit("op", "10.0.0.9") is None
    g.failed("op", "10.0.0.9")  # 7 failures: the next one waits 4 s
    clock.t += 3.9
    assert "backing off" in (g.admit("op", "10.0.0.9") or "")
    for _ in range(20):
        g.admit("op", "10.0.0.9")
    assert g.locked(source="10.0.0.9")
    clock.t += 899.0
    assert "locked out" in (g.admit("op", "10.0.0.9") or "")  # hammering keeps it locked: quiet from here
    assert g.admit("op", "10.0.0.10") is None  # another source is not concerned
    clock.t += 901.0
    assert not g.locked(source="10.0.0.9") and g.admit("op", "10.0.0.9") is None  # forgotten after the quiet


def test_guard_locks_a_user_across_sources_except_where_it_logged_in_before() -> None:
    clock = FakeClock()
    g = LoginGuard(LoginPolicy(user_backoff_after=50, user_lockout_after=60, lockout_after=1000, backoff_after=1000,
                               backoff_max_s=8.0), clock)  # fmt: skip
    g.succeeded("op", "10.0.0.1")  # the control room's HMI
    for i in range(50):  # a guesser spread over addresses, one guess each
        clock.t += 1.0
        assert g.admit("op", f"10.9.0.{i}") is None
        g.failed("op", f"10.9.0.{i}")
    assert "user backing off" in (g.admit("op", "10.9.0.200") or "")  # from a fresh address too: the user waits
    assert g.admit("op", "10.0.0.1") is None  # ... except where it logged in before
    for i in range(50, 60):  # the guesser waits out each back-off (8 s at most here)
        clock.t += 8.0
        assert g.admit("op", f"10.9.0.{i}") is None
        g.failed("op", f"10.9.0.{i}")
    assert g.locked(user="op")
    assert "user locked out" in (g.admit("op", "10.9.1.1") or "")  # a new address: locked
    assert g.admit("op", "10.0.0.1") is None  # the HMI that logged in before: still admitted
    assert g.admit("view", "10.9.1.1") is None  # other users: not concerned


def test_guard_memory_is_bounded() -> None:
    g = LoginGuard(LoginPolicy(max_tracked=100))
    for i in range(5000):
        g.failed(f"user{i}", f"10.{i // 250}.{i % 250}.1")
    assert len(g._sources) <= 100 and len(g._users) <= 100
