"""The HMI end to end in a real headless Chromium (Debian package ``chromium``), driven over the
DevTools protocol with real mouse clicks and key input: the map shows every cell of the
served snapshot, a raised alarm appears within two pushes, an operator logs in and
acknowledges it and the journal has it, a viewer cannot change the mode, a cell's trend
shows the last hour from history, a room trend draws every cell of a day.

Skipped, saying why, only when no Chromium is installed (``apt-get install chromium``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from potline.history import History
from potline.hmi.browser import Chromium, Page, find_chromium
from potline.hmi.source import FLAG_AE, FLAG_BAD_DATA, FLAG_CUT_OUT, FLAG_LOCAL
from potline.journal import Journal
from tests.potline.test_hmi_support import USERS, Rig, start_rig

pytestmark = pytest.mark.skipif(
    find_chromium() is None, reason="no Chromium: `apt-get install chromium` (Debian) or set POTLINE_CHROMIUM"
)

WAIT_S = 30.0  # deadline of one browser wait [wall s] (a bound, not the expected time)


@pytest.fixture
async def rig(tmp_path):
    r = await start_rig(tmp_path, backfill_s=2 * 3600.0)
    yield r
    await r.close()


@pytest.fixture
async def browser():
    async with Chromium() as b:
        yield b


async def open_page(browser: Chromium, url: str) -> Page:
    page = await browser.new_page()
    await page.goto(url)
    return page


async def log_in(page: Page, rig: Rig, user: str) -> None:
    await page.goto(f"{rig.url}/#/login")
    await page.wait_for("!!document.querySelector('#login-form')", WAIT_S, "the login form")
    await page.type("#login-user", user)
    await page.type("#login-password", USERS[user][1])
    await page.click("#login-submit")
    await page.wait_for(f"document.getElementById('who').textContent === {json.dumps(f'{user} ({USERS[user][0]})')}",
                        WAIT_S, f"{user} logged in")  # fmt: skip


def journal(rig: Rig) -> Journal:
    return Journal(rig.feed.tmp / "journal.db", readonly=True)


async def test_overview_shows_every_cell_of_the_served_snapshot(rig, browser) -> None:
    rig.feed.cut_out[40] = True
    rig.feed.local_rooms = {2}
    rig.feed.raise_ae(9)
    rig.scan()
    snap = rig.source.snapshot()
    assert snap is not None
    page = await open_page(browser, rig.url + "/")
    await page.wait_for(f"document.querySelectorAll('.cell[data-seq=\"{snap.seq}\"]').length === {rig.feed.layout.n_cells}",
                        WAIT_S, "every tile at the served scan")  # fmt: skip
    tiles = await page.evaluate(
        "[...document.querySelectorAll('.cells .cell')].map(t => ({i: +t.dataset.cell, text: t.querySelector('.v').textContent,"
        " cls: t.className, room: t.parentElement.dataset.room, num: t.querySelector('.num').textContent}))"
    )
    lay = rig.feed.layout
    assert sorted(t["i"] for t in tiles) == list(range(lay.n_cells))
    for t in tiles:
        k = t["i"]
        assert t["room"] == lay.room_names[int(lay.cell_room[k])]
        assert t["num"] == f"{int(lay.cell_number[k]):03d}"
        f = int(snap.flags[k])
        if f & FLAG_BAD_DATA:
            assert t["text"] == "–" and "bad" in t["cls"]
        else:
            # shown to 10 mV (served to 1 mV, then rounded to two decimals by the page)
            assert abs(float(t["text"]) - snap.cell_voltage_v[k]) <= 0.0055, (k, t["text"])
        assert ("ae" in t["cls"].split()) == bool(f & FLAG_AE)
        assert ("cut" in t["cls"].split()) == bool(f & FLAG_CUT_OUT)
        assert ("local" in t["cls"].split()) == bool(f & FLAG_LOCAL)
    assert "ae" in next(t for t in tiles if t["i"] == 9)["cls"].split()
    assert "cut" in next(t for t in tiles if t["i"] == 40)["cls"].split()
    lines = await page.evaluate("[...document.querySelectorAll('.line-card .i')].map(e => e.textContent)")
    assert lines == ["180.0", "180.0"]
    assert page.errors == []


async def test_a_raised_alarm_appears_within_two_pushes(rig, browser) -> None:
    page = await open_page(browser, rig.url + "/#/alarms")
    await page.wait_for("!!document.querySelector('#alarm-rows') && window.HMI.pushes >= 1", WAIT_S, "the alarm list")
    await page.evaluate("window.__p0 = window.HMI.pushes")
    rig.feed.raise_ae(14)
    rig.scan()
    key = "Potroom1/Cell015/AE"
    pushes = await page.wait_for(
        f"document.querySelector('tr[data-key=\"{key}\"]') ? window.HMI.pushes - window.__p0 : 0",
        WAIT_S,
        "the AE alarm in the list",
    )
    assert 1 <= pushes <= 2
    row = await page.evaluate(f"document.querySelector('tr[data-key=\"{key}\"]').innerText")
    assert "Unacknowledged" in row and "Anode effect Potroom1/Cell015" in row
    badge = await page.evaluate("document.getElementById('alarm-count').textContent")
    assert badge == "1"
    assert page.errors == []


async def test_operator_logs_in_acknowledges_and_shelves_and_the_journal_has_it(rig, browser) -> None:
    rig.feed.raise_ae(20)
    rig.scan()
    key = "Potroom1/Cell021/AE"
    page = await browser.new_page()
    await log_in(page, rig, "olga")
    await page.goto(f"{rig.url}/#/alarms")
    await page.wait_for(
        f"!!document.querySelector('tr[data-key=\"{key}\"] button.ack')", WAIT_S, "the Acknowledge button"
    )
    await page.click(f'tr[data-key="{key}"] button.ack')
    await page.wait_for(f"document.querySelector('tr[data-key=\"{key}\"]')?.dataset.state === 'acked'", WAIT_S,
                        "the alarm acknowledged")  # fmt: skip
    assert rig.feed.alarms.get(key).acked_by == "olga"
    await page.click(f'tr[data-key="{key}"] button.shelve')
    await page.type(f'tr[data-key="{key}"] input.reason', "anode beam work")
    await page.click(f'tr[data-key="{key}"] button.shelve-ok')
    await page.wait_for(f"document.querySelector('tr[data-key=\"{key}\"]')?.dataset.state === 'shelved'", WAIT_S,
                        "the alarm shelved")  # fmt: skip
    with journal(rig) as j:
        got = [(e.kind, e.user, e.tag, e.data.get("reason")) for e in j.query(categories=["alarm"])]
    assert got == [("alarm_raised", None, key, ""), ("alarm_acknowledged", "olga", key, ""),
                   ("alarm_shelved", "olga", key, "anode beam work")]  # fmt: skip
    # the journal browser shows the acknowledgement
    await page.goto(f"{rig.url}/#/journal")
    await page.wait_for("document.querySelectorAll('#journal-rows tr').length > 0", WAIT_S, "journal rows")
    await page.evaluate("document.getElementById('j-category').value = 'alarm'")
    await page.click("#journal-form button[type=submit]")
    await page.wait_for("[...document.querySelectorAll('#journal-rows tr')].every(r => r.children[2].textContent === 'alarm')"
                        " && document.querySelectorAll('#journal-rows tr').length === 3", WAIT_S, "the alarm entries")  # fmt: skip
    kinds = await page.evaluate("[...document.querySelectorAll('#journal-rows tr')].map(r => r.dataset.kind)")
    assert kinds == ["alarm_shelved", "alarm_acknowledged", "alarm_raised"]
    assert page.errors == []


async def test_a_viewer_cannot_change_the_mode_and_an_operator_can(rig, browser) -> None:
    page = await browser.new_page()
    await log_in(page, rig, "victor")
    await page.goto(f"{rig.url}/#/")
    await page.wait_for("!!document.getElementById('mode-apply')", WAIT_S, "the mode panel")
    assert await page.evaluate("document.getElementById('mode-apply').disabled") is True
    # even a request made by hand from the viewer's page is refused
    status = await page.evaluate(
        "fetch('/api/mode', {method: 'POST', credentials: 'same-origin', headers: {'Content-Type': 'application/json',"
        " 'X-CSRF-Token': window.HMI.session.csrf}, body: JSON.stringify({mode: 'control'})}).then(r => r.status)"
    )
    assert status == 403
    assert rig.feed.mode == "observe"
    with journal(rig) as j:
        assert j.count(kinds=["mode_change"]) == 0
    # an operator's click goes through, journalled with the name
    await page.click("#logout")
    await page.wait_for("document.getElementById('who').textContent === ''", WAIT_S, "logged out")
    await log_in(page, rig, "olga")
    await page.goto(f"{rig.url}/#/")
    await page.wait_for("document.getElementById('mode-apply')?.disabled === false", WAIT_S, "an enabled mode button")
    await page.evaluate("document.getElementById('mode-select').value = 'shadow'")
    await page.type("#mode-reason", "shift handover trial")
    await page.click("#mode-apply")
    await page.wait_for("document.getElementById('banner').textContent.includes('Mode shadow')", WAIT_S, "the answer")
    assert rig.feed.mode == "shadow"
    with journal(rig) as j:
        ev = j.last(["mode_change"])
    assert ev is not None and ev.user == "olga" and ev.data["reason"] == "shift handover trial"
    assert page.errors == [] or all("403" in e for e in page.errors)  # the refused request above logs a 403


async def test_cell_trend_shows_the_last_hour_from_history(rig, browser) -> None:
    k = 7  # Potroom1/Cell008, good data
    page = await open_page(browser, f"{rig.url}/#/cell/{k}")
    await page.wait_for("document.querySelector('#trend-CellVoltage')?.dataset.loaded === '1'", WAIT_S, "the trend")
    box = await page.evaluate("Object.assign({}, document.querySelector('#trend-CellVoltage').dataset)")
    end = rig.feed.t
    assert float(box["end"]) == end and float(box["start"]) == end - 3600
    assert box["resolution"] == "0" and int(box["points"]) == 360  # a scan every 10 s
    assert float(box["first"]) >= end - 3600 and float(box["last"]) == end
    drawn = await page.evaluate("(() => { const u = window.HMI.charts.find(c => c.root.closest('#trend-CellVoltage'));"
                                " return {t: u.data[0], y: u.data[1], canvas: !!u.root.querySelector('canvas')}; })()")  # fmt: skip
    with History(rig.feed.tmp / "history.db", readonly=True) as h:
        s = h.query("Potroom1.Cell008.CellVoltage", end - 3600, end, resolution="raw")
    assert drawn["canvas"] and drawn["t"] == s.t.tolist()
    np.testing.assert_allclose(np.array(drawn["y"], dtype=float), s.mean, rtol=1e-5)
    # every cell trend of the page came from history
    counts = await page.wait_for(
        "(() => { const b = [...document.querySelectorAll('.chart')]; return b.every(x => x.dataset.loaded === '1')"
        " ? b.map(x => +x.dataset.points) : null; })()",
        WAIT_S,
        "all trends",
    )
    assert counts[0] == 360 and len(counts) == 6
    assert page.errors == []


async def test_room_trend_draws_every_cell_of_a_day(tmp_path, browser) -> None:
    rig = await start_rig(tmp_path, rooms=(132,), backfill_s=86400.0, scan_s=60.0)
    try:
        page = await open_page(browser, f"{rig.url}/#/room/0")
        await page.wait_for("document.querySelector('#trend-room')?.dataset.points > 0", WAIT_S, "the room trend")
        await page.evaluate("document.querySelector('.ranges button:nth-of-type(3)').click()")  # 24 h
        got = await page.wait_for(
            "(() => { const u = window.HMI.charts[0]; return u && u.data[0].length > 1000 ? [u.series.length - 1,"
            " u.data[0].length] : null; })()", WAIT_S, "132 cells x 24 h drawn")  # fmt: skip
        assert got[0] == 132 and got[1] == 1440
        assert page.errors == []
    finally:
        await rig.close()


async def test_an_operator_enters_a_bath_sample_on_the_cell_page_and_a_viewer_has_no_form(rig, browser) -> None:
    k = 7  # Potroom1/Cell008
    page = await browser.new_page()
    await log_in(page, rig, "victor")
    await page.goto(f"{rig.url}/#/cell/{k}")
    await page.wait_for("!!document.getElementById('cell-now')", WAIT_S, "the cell page")
    assert await page.evaluate("document.getElementById('sample-form') === null")
    await page.click("#logout")
    await page.wait_for("document.getElementById('who').textContent === ''", WAIT_S, "logged out")
    await log_in(page, rig, "olga")
    await page.goto(f"{rig.url}/#/cell/{k}")
    await page.wait_for("!!document.getElementById('sample-form')", WAIT_S, "the sample form")
    await page.type("#sample-alf3_excess_wt_pct", "11.2")
    await page.type("#sample-bath_temp_c", "961")
    await page.type("#sample-alumina_wt_pct", "2.1")
    await page.type("#sample-comment", "morning round")
    await page.click("#sample-submit")
    await page.wait_for("document.getElementById('sample-form').dataset.taken === '1'", WAIT_S, "the sample taken")
    status = await page.evaluate("document.getElementById('sample-status').textContent")
    assert "alumina_wt_pct 2.1" in status and "by olga" in status
    with journal(rig) as j:
        ev = j.query(kinds=["bath_sample"])
    assert [(e.room, e.cell, e.user, e.value) for e in ev] == [("Potroom1", 8, "olga", 2.1)]
    assert ev[0].data["values"] == {"alf3_excess_wt_pct": 11.2, "bath_temp_c": 961.0, "alumina_wt_pct": 2.1}
    assert 2.1 < rig.feed.observer.alumina_wt_pct[k] < 2.3  # the observer took it (prior 3.0)
    assert page.errors == []


async def test_a_cell_trend_says_how_many_points_were_bad(rig, browser) -> None:
    k = 5  # Potroom1/Cell006: its transmitter gives no good value (the feed's bad-data cells)
    page = await open_page(browser, f"{rig.url}/#/cell/{k}")
    await page.wait_for("document.querySelector('#trend-CellVoltage')?.dataset.loaded === '1'", WAIT_S, "the trend")
    box = await page.evaluate("Object.assign({}, document.querySelector('#trend-CellVoltage').dataset)")
    assert box["points"] == "360" and box["bad"] == "360" and box["uncertain"] == "0"
    meta = await page.evaluate("document.querySelector('#trend-CellVoltage .meta').textContent")
    assert "360 points · raw · 360 bad" in meta
    assert page.errors == []
