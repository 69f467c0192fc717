"""The HMI's HTTP side over real loopback sockets (aiohttp client): logins with the mirror's
users, roles, CSRF and origin checks, alarm actions reaching the journal, mode requests,
server-sent events, history, journal and AE queries, the static assets, bad input."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from plc_bridge.opcua_security import LoginPolicy
from potline.hmi.auth import LOCKOUT_FAILURES
from potline.journal import Journal
from tests.potline.test_hmi_support import USERS, Rig, start_rig


@pytest.fixture
async def rig(tmp_path):
    r = await start_rig(tmp_path, backfill_s=3600.0)
    yield r
    await r.close()


async def login(http: aiohttp.ClientSession, url: str, user: str) -> str:
    async with http.post(f"{url}/api/login", json={"user": user, "password": USERS[user][1]}) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return str(body["csrf"])


def client() -> aiohttp.ClientSession:
    """An HTTP client that keeps the session cookie of a numeric host (127.0.0.1), as a browser does."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


def journal(rig: Rig) -> Journal:
    return Journal(rig.feed.tmp / "journal.db", readonly=True)


async def test_anonymous_viewers_read_but_cannot_change_anything(rig) -> None:
    async with client() as http:
        async with http.get(f"{rig.url}/api/plant") as resp:
            plant = await resp.json()
        assert [len(r["cells"]) for r in plant["rooms"]] == [24, 20, 16]
        async with http.get(f"{rig.url}/api/snapshot") as resp:
            snap = await resp.json()
        assert len(snap["cells"]["u"]) == 60 and snap["mode"] == "observe"
        async with http.post(f"{rig.url}/api/mode", json={"mode": "control"}) as resp:
            assert resp.status == 401
            assert "log in" in (await resp.json())["error"]
    assert rig.feed.mode == "observe"


async def test_a_viewer_is_refused_mode_changes_and_alarm_actions(rig) -> None:
    rig.feed.raise_ae(3)
    async with client() as http:
        csrf = await login(http, rig.url, "victor")
        hdr = {"X-CSRF-Token": csrf}
        async with http.post(f"{rig.url}/api/mode", json={"mode": "control"}, headers=hdr) as resp:
            assert resp.status == 403
            assert (await resp.json())["error"] == "victor is a viewer: operators only"
        async with http.post(f"{rig.url}/api/alarms/ack", json={"key": "Potroom1/Cell004/AE"}, headers=hdr) as resp:
            assert resp.status == 403
    assert rig.feed.mode == "observe"
    assert rig.feed.alarms.get("Potroom1/Cell004/AE").state == "unack"
    with journal(rig) as j:
        assert j.count(kinds=["mode_change"]) == 0


async def test_operator_changes_need_the_csrf_token_and_the_same_origin(rig) -> None:
    async with client() as http:
        csrf = await login(http, rig.url, "olga")
        async with http.post(f"{rig.url}/api/mode", json={"mode": "shadow"}) as resp:
            assert resp.status == 403 and "CSRF" in (await resp.json())["error"]
        bad = {"X-CSRF-Token": csrf, "Origin": "http://evil.example"}
        async with http.post(f"{rig.url}/api/mode", json={"mode": "shadow"}, headers=bad) as resp:
            assert resp.status == 403 and "cross-origin" in (await resp.json())["error"]
        good = {"X-CSRF-Token": csrf, "Origin": rig.url}
        async with http.post(f"{rig.url}/api/mode", json={"mode": "shadow", "reason": "trial"}, headers=good) as resp:
            assert resp.status == 200
            assert await resp.json() == {"mode": "shadow", "previous": "observe"}
        async with http.post(f"{rig.url}/api/mode", json={"mode": "turbo"}, headers=good) as resp:
            assert resp.status == 409 and "got 'turbo'" in (await resp.json())["error"]
    with journal(rig) as j:
        change = j.last(["mode_change"])
        refused = j.last(["mode_refused"])
    assert change is not None and change.user == "olga" and change.data["reason"] == "trial"
    assert refused is not None and refused.user == "olga"


async def test_login_cookie_flags_wrong_passwords_lockout_and_logout(rig) -> None:
    async with client() as http:
        async with http.post(f"{rig.url}/api/login", json={"user": "olga", "password": USERS["olga"][1]}) as resp:
            cookie = resp.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        async with http.get(f"{rig.url}/api/session") as resp:
            s = await resp.json()
        assert (s["user"], s["role"]) == ("olga", "operator")
        async with http.post(f"{rig.url}/api/logout", headers={"X-CSRF-Token": s["csrf"]}) as resp:
            assert resp.status == 200
        async with http.get(f"{rig.url}/api/session") as resp:
            assert (await resp.json())["user"] is None
        async with http.post(f"{rig.url}/api/login", data={"user": "olga", "password": "x"}) as resp:
            assert resp.status == 415  # a form post (cross-site forms can send those) is refused
        for _ in range(LOCKOUT_FAILURES):
            async with http.post(f"{rig.url}/api/login", json={"user": "olga", "password": "nope"}) as resp:
                assert resp.status == 401
                assert (await resp.json())["error"] == "wrong user name or password"
        async with http.post(f"{rig.url}/api/login", json={"user": "olga", "password": USERS["olga"][1]}) as resp:
            assert resp.status == 429  # locked for a minute, even with the right password
        # the source failed five times: it must wait before its next attempt (whatever the name)
        async with http.post(f"{rig.url}/api/login", json={"user": "nobody", "password": "x"}) as resp:
            assert resp.status == 429 and "backing off" in (await resp.json())["error"]
    # another source is not slowed down by it: a wrong password is just wrong there
    async with other_source() as http:
        async with http.post(f"{rig.url}/api/login", json={"user": "nobody", "password": "x"}) as resp:
            assert resp.status == 401


def other_source() -> aiohttp.ClientSession:
    """A client connecting from another loopback address (another source for the login guard)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                 connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0)))  # fmt: skip


async def test_a_guessing_source_is_locked_out_and_others_still_log_in(tmp_path) -> None:
    policy = LoginPolicy(backoff_after=10, lockout_after=4, lockout_s=600.0)
    rig = await start_rig(tmp_path, rooms=(4,), backfill_s=60.0, login_policy=policy)
    try:
        async with client() as http:
            for i in range(4):  # a different name each time: no name is locked, the source is
                async with http.post(f"{rig.url}/api/login", json={"user": f"guess{i}", "password": "x"}) as resp:
                    assert resp.status == 401
            async with http.post(f"{rig.url}/api/login", json={"user": "olga", "password": USERS["olga"][1]}) as resp:
                body = await resp.json()
                assert resp.status == 429 and "locked out" in body["error"], body  # not even a right password
            async with http.get(f"{rig.url}/api/session") as resp:
                assert (await resp.json())["user"] is None
        async with other_source() as http:
            async with http.post(f"{rig.url}/api/login", json={"user": "olga", "password": USERS["olga"][1]}) as resp:
                assert resp.status == 200
            async with http.get(f"{rig.url}/api/session") as resp:
                assert (await resp.json())["user"] == "olga"
    finally:
        await rig.close()


async def test_refuse_mode_needs_a_login_to_see_anything(tmp_path) -> None:
    rig = await start_rig(tmp_path, rooms=(4,), backfill_s=60.0, anonymous="refuse")
    try:
        async with client() as http:
            async with http.get(f"{rig.url}/api/plant") as resp:
                assert resp.status == 401
            async with http.get(f"{rig.url}/api/session") as resp:
                assert (await resp.json())["anonymous"] == "refuse"
            async with http.get(f"{rig.url}/") as resp:
                assert resp.status == 200  # the page itself (it shows the login form)
            await login(http, rig.url, "victor")
            async with http.get(f"{rig.url}/api/plant") as resp:
                assert resp.status == 200
    finally:
        await rig.close()


async def test_acknowledge_and_shelve_reach_the_alarm_manager_and_the_journal(rig) -> None:
    rig.feed.raise_ae(7)
    key = "Potroom1/Cell008/AE"
    async with client() as http:
        hdr = {"X-CSRF-Token": await login(http, rig.url, "olga")}
        async with http.post(f"{rig.url}/api/alarms/ack", json={"key": key, "comment": "on it"}, headers=hdr) as resp:
            body = await resp.json()
        assert resp.status == 200 and body["records"] == [{"key": key, "event": "acknowledged", "from": "unack",
                                                           "to": "acked"}]  # fmt: skip
        async with http.post(f"{rig.url}/api/alarms/ack", json={"key": key}, headers=hdr) as resp:
            assert resp.status == 409 and "nothing to acknowledge" in (await resp.json())["error"]
        async with http.post(f"{rig.url}/api/alarms/shelve", json={"key": key}, headers=hdr) as resp:
            assert resp.status == 409 and (await resp.json())["error"] == "reason must not be empty"
        async with http.post(f"{rig.url}/api/alarms/shelve", json={"key": key, "reason": "beam work", "duration_s": "x"},
                             headers=hdr) as resp:  # fmt: skip
            assert resp.status == 400 and "duration_s: expected a number" in (await resp.json())["error"]
        async with http.post(f"{rig.url}/api/alarms/shelve", json={"key": key, "reason": "beam work",
                                                                   "duration_s": 600}, headers=hdr) as resp:  # fmt: skip
            assert resp.status == 200 and (await resp.json())["alarm"]["state"] == "shelved"
        async with http.post(f"{rig.url}/api/alarms/explode", json={"key": key}, headers=hdr) as resp:
            assert resp.status == 404
        async with http.get(f"{rig.url}/api/alarms") as resp:
            listing = await resp.json()
    assert [a["state"] for a in listing["alarms"] if a["key"] == key] == ["shelved"]
    with journal(rig) as j:
        got = [(e.kind, e.user, e.data.get("reason")) for e in j.query(categories=["alarm"])]
    assert got == [("alarm_raised", None, ""), ("alarm_acknowledged", "olga", "on it"),
                   ("alarm_shelved", "olga", "beam work")]  # fmt: skip


async def read_events(resp: aiohttp.ClientResponse, want: int, timeout_s: float) -> list[tuple[str, dict]]:
    """Server-sent events from a response until ``want`` have come (deadline ``timeout_s``)."""
    out: list[tuple[str, dict]] = []
    name = ""

    async def loop() -> None:
        nonlocal name
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                out.append((name, json.loads(line[6:])))
                if len(out) >= want:
                    return

    await asyncio.wait_for(loop(), timeout_s)
    return out


async def test_server_sent_events_push_snapshots_and_alarm_changes(rig) -> None:
    async with client() as http, http.get(f"{rig.url}/api/stream") as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        first = await read_events(resp, 2, 10)
        assert {n for n, _ in first} == {"snapshot", "alarms"}  # the current state at once
        seq = next(d["seq"] for n, d in first if n == "snapshot")
        rig.feed.raise_ae(12)
        rig.scan()
        got = await read_events(resp, 2, 10)
        snaps = [d for n, d in got if n == "snapshot"]
        alarms = [d for n, d in got if n == "alarms"]
        assert snaps and snaps[0]["seq"] == seq + 1 and snaps[0]["cells"]["flags"][12] & 1
        assert alarms and [a["key"] for a in alarms[0]["alarms"]] == ["Potroom1/Cell013/AE"]
        assert rig.server.clients == 1


async def test_history_journal_and_anode_effect_queries(rig) -> None:
    rig.feed.raise_ae(2)
    rig.feed.end_ae(2, 75.0)
    rig.feed.raise_ae(30)
    end = rig.feed.t
    async with client() as http:
        async with http.get(f"{rig.url}/api/history", params={"tag": "Potroom1.Cell001.CellVoltage",
                                                              "start": str(end - 3600), "end": str(end)}) as resp:  # fmt: skip
            h = await resp.json()
        assert h["resolution_s"] == 0 and len(h["t"]) == 360 and h["unit"] == "V"
        async with http.get(f"{rig.url}/api/history", params={"tag": "nope"}) as resp:
            assert resp.status == 404 and "no history for tag 'nope'" in (await resp.json())["error"]
        async with http.get(f"{rig.url}/api/history", params={"tag": "x", "start": "yesterday"}) as resp:
            assert resp.status == 400 and "start: expected a number" in (await resp.json())["error"]
        async with http.get(f"{rig.url}/api/history/group", params={"group": "Potroom2.CellVoltage"}) as resp:
            g = await resp.json()
        assert len(g["tags"]) == 20 and len(g["mean"]) == 20 and len(g["mean"][0]) == len(g["t"]) == 360
        async with http.get(
            f"{rig.url}/api/journal", params={"category": "ae", "room": "Potroom1", "cell": "3"}
        ) as resp:
            j = await resp.json()
        assert [e["kind"] for e in j["events"]] == ["ae_end", "ae_start"]  # newest first
        async with http.get(f"{rig.url}/api/journal", params={"since": "not a time"}) as resp:
            assert resp.status == 400 and "since: expected an ISO-8601 time" in (await resp.json())["error"]
        async with http.get(f"{rig.url}/api/ae") as resp:
            ae = (await resp.json())["anode_effects"]
    assert [(a["room"], a["cell"], a["end"] is None) for a in ae] == [("Potroom2", 7, True), ("Potroom1", 3, False)]
    assert ae[1]["duration_s"] == 75.0 and ae[1]["peak_v"] == 35.0


async def test_page_assets_and_security_headers(rig) -> None:
    async with client() as http:
        async with http.get(f"{rig.url}/") as resp:
            page = await resp.text()
            csp = resp.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "http" not in page.replace(rig.url, "")  # nothing from another host
        for asset in ("/static/app.js", "/static/app.css", "/static/vendor/uplot/uPlot.iife.min.js",
                      "/static/vendor/uplot/uPlot.min.css", "/static/vendor/uplot/LICENSE"):  # fmt: skip
            async with http.get(rig.url + asset) as resp:
                assert resp.status == 200, asset
                assert resp.headers["X-Content-Type-Options"] == "nosniff"
        async with http.get(f"{rig.url}/static/../app.py") as resp:
            assert resp.status in (403, 404)
        async with http.get(f"{rig.url}/api/alarms") as resp:
            assert resp.headers["Cache-Control"] == "no-store"


async def test_bath_samples_from_operators_only_bad_fields_named_good_ones_journalled(rig) -> None:
    k = 30  # Potroom2/Cell007
    body = {"room": "Potroom2", "cell": 7, "alf3_excess_wt_pct": 11.5, "bath_temp_c": 958, "alumina_wt_pct": 4.4,
            "comment": "after feeding"}  # fmt: skip
    async with client() as http:
        async with http.post(f"{rig.url}/api/samples", json=body, headers={"Origin": rig.url}) as resp:
            assert resp.status == 401  # anonymous
        hdr = {"X-CSRF-Token": await login(http, rig.url, "victor"), "Origin": rig.url}
        async with http.post(f"{rig.url}/api/samples", json=body, headers=hdr) as resp:
            assert resp.status == 403 and "viewer" in (await resp.json())["error"]
    async with client() as http:
        hdr = {"X-CSRF-Token": await login(http, rig.url, "olga"), "Origin": rig.url}
        bad = {**body, "cell": 21, "bath_temp_c": 1958}
        async with http.post(f"{rig.url}/api/samples", json=bad, headers=hdr) as resp:
            assert resp.status == 422
            assert (await resp.json())["error"] == ("cell: Potroom2 has cells 1 .. 20, got 21; bath_temp_c: expected "
                                                    "bath temperature in °C, 900 .. 1050, got 1958")  # fmt: skip
        assert rig.feed.observer.alumina_wt_pct[k] == 3.0
        async with http.post(f"{rig.url}/api/samples", json=body, headers=hdr) as resp:
            took = await resp.json()
            assert resp.status == 200, took
    assert took["by"] == "olga" and took["values"]["alumina_wt_pct"] == 4.4
    # the observer's estimate of that cell moved most of the way to the sample (prior 3.0 +- 0.5, sample +- 0.15)
    assert 4.2 < rig.feed.observer.alumina_wt_pct[k] < 4.4
    with journal(rig) as j:
        ev = j.query(kinds=["bath_sample"])
    assert [(e.room, e.cell, e.user, e.value, e.source) for e in ev] == [("Potroom2", 7, "olga", 4.4, "hmi")]
    assert ev[0].data["values"]["bath_temp_c"] == 958.0 and ev[0].data["comment"] == "after feeding"
