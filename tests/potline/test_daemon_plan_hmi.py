"""The HMI's plan panel (Lines page) and its JSON endpoint ``/api/plan``.

A real HMI server on loopback (``tests.potline.test_hmi_support``) whose source reports a
real ``PlanRunner`` (a plan file in ``tmp_path``, at its second step) and a line in a grid
shed (``LineShed`` fed a limit below the line's draw); a headless Chromium shows the page.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from planner.plan import Plan, PlanStep
from potline.grid_shed import LineShed, ShedSettings
from potline.hmi.browser import Chromium, find_chromium
from potline.plan_runner import Bounds, PlanRunner
from tests.potline.test_hmi_support import start_rig

WAIT_S = 30.0


def _status_source(tmp_path) -> tuple[Any, PlanRunner, list[LineShed]]:
    t0 = datetime(2026, 12, 5, 6, 0, tzinfo=UTC)
    plan = Plan(name="evening-peak", t0_utc=t0, step_s=1800.0, lines=["Line1", "Line2"],
                steps=[PlanStep(line_current_ka=[178.0, 176.0]), PlanStep(line_current_ka=[165.0, 170.0], hx_duty_kw=[4.0, 0.0]),
                       PlanStep(line_current_ka=[180.0, 180.0])],
                constraints={"line_current_ka_min": 150.0, "production_t_min": 812.5})  # fmt: skip
    runner = PlanRunner(["Line1", "Line2"], Bounds((150.0, 150.0), (185.0, 185.0)), lambda *a: None)
    now = t0.timestamp() + 2000.0  # in the second step
    assert runner.offer(plan.save(tmp_path / "plan.json"), now)
    runner.tick(now)
    sheds = [LineShed(ShedSettings(0.1, 0.05, 150.0, 185.0, 480.0)) for _ in range(2)]
    sheds[1].step(0.0, 150.0, 1300.0, 170.0, 170.0)  # Line2: 150 MW asked, 221 MW drawn

    def status() -> dict[str, Any]:
        out = runner.status(now)
        out["grid"] = [{"line": n, **s.status()} for n, s in zip(["Line1", "Line2"], sheds, strict=True)]
        return out

    return status, runner, sheds


async def test_api_plan_reports_the_step_constraints_and_shed_and_404_without_plans(tmp_path) -> None:
    rig = await start_rig(tmp_path)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(rig.url + "/api/plan") as r:
                assert r.status == 404  # this source executes no plans
            status, _runner, sheds = _status_source(tmp_path)
            rig.source.plan_status = status
            async with http.get(rig.url + "/api/plan") as r:
                assert r.status == 200
                got = await r.json()
        p = got["plan"]
        assert p["name"] == "evening-peak" and p["state"] == "running" and p["step"] == 1 and p["n_steps"] == 3
        assert p["steps"][1] == {"line_current_ka": [165.0, 170.0], "hx_duty_kw": [4.0, 0.0]}
        assert p["constraints"] == {"line_current_ka_min": 150.0, "production_t_min": 812.5}
        g = {x["line"]: x for x in got["grid"]}
        assert g["Line1"]["state"] == "idle" and g["Line2"]["state"] == "shedding"
        assert g["Line2"]["limit_mw"] == 150.0 and g["Line2"]["target_ka"] == pytest.approx(
            sheds[1].target_ka, abs=1e-3
        )
    finally:
        await rig.close()


@pytest.mark.skipif(find_chromium() is None, reason="no Chromium: `apt-get install chromium` or set POTLINE_CHROMIUM")
async def test_the_lines_page_shows_the_plan_its_step_constraints_and_the_shed(tmp_path) -> None:
    rig = await start_rig(tmp_path)
    try:
        status, _runner, _sheds = _status_source(tmp_path)
        rig.source.plan_status = status
        async with Chromium() as browser:
            page = await browser.new_page()
            await page.goto(rig.url + "/#/lines")
            await page.wait_for("document.querySelectorAll('#plan table.plan-steps tbody tr').length === 3", WAIT_S,
                                "the plan's three steps")  # fmt: skip
            rows = await page.evaluate("[...document.querySelectorAll('#plan tbody tr')].map(r => ({cur: r.className,"
                                       " cells: [...r.children].map(c => c.textContent)}))")  # fmt: skip
            assert [r["cur"] for r in rows] == ["", "current", ""]
            assert rows[1]["cells"][2:] == ["165.0 (HX 4.0 kW)", "170.0 (HX 0.0 kW)"]
            text = await page.evaluate("document.getElementById('plan').textContent")
            assert "Plan evening-peak" in text and "step 2 of 3" in text
            assert "production_t_min" in text and "812.5" in text
            grid = await page.evaluate("[...document.querySelectorAll('#plan .grid-state')].map(e =>"
                                       " [e.dataset.line, e.dataset.state, e.textContent])")  # fmt: skip
            assert [g[:2] for g in grid] == [["Line1", "idle"], ["Line2", "shedding"]]
            assert "grid limit 150.0 MW" in grid[1][2]
            assert page.errors == []
    finally:
        await rig.close()


def test_status_is_json() -> None:
    """What ``/api/plan`` serves for an idle daemon (no plan yet) is plain JSON."""
    runner = PlanRunner(["Line1"], Bounds((60.0,), (130.0,)), lambda *a: None)
    assert json.loads(json.dumps(runner.status(0.0))) == {"plan": None, "last_rejected": None}
