"""The plan file the planner writes and the daemon executes: round trip, and bad files
refused with the key named (nothing half-executed)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from planner.plan import Plan, PlanError, PlanStep, load_plan


def _plan() -> Plan:
    return Plan(
        name="test",
        t0_utc=datetime(2026, 12, 5, tzinfo=UTC),
        step_s=3600.0,
        lines=["Line1", "Line2"],
        steps=[
            PlanStep(line_current_ka=[120.0, 120.0]),
            PlanStep(line_current_ka=[108.0, 126.0], hx_duty_kw=[40.0, 0.0]),
        ],
    )


def test_round_trip_and_step_lookup(tmp_path):
    p = _plan().save(tmp_path / "plan.json")
    back = load_plan(p)
    assert back == _plan()
    assert back.horizon_s == 7200.0
    assert back.step_at(-1.0) is None
    assert back.step_at(0.0).line_current_ka == [120.0, 120.0]
    assert back.step_at(3599.9).line_current_ka == [120.0, 120.0]
    assert back.step_at(3600.0).hx_duty_kw == [40.0, 0.0]
    assert back.step_at(7200.0) is None


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda d: d["steps"][1].update(line_current_ka=[108.0]), "steps.1"),
        (lambda d: d["steps"][0].update(line_current_ka=[float("nan"), 1.0]), "steps.0"),
        (lambda d: d.update(step_s=0), "step_s"),
        (lambda d: d.update(t0_utc="2026-12-05T00:00:00"), "t0_utc"),
        (lambda d: d.update(kind="something-else"), "kind"),
        (lambda d: d.update(lines=[]), "lines"),
    ],
)
def test_bad_plan_names_the_key(tmp_path, edit, key):
    doc = json.loads(_plan().model_dump_json())
    edit(doc)
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(doc))
    with pytest.raises(PlanError) as ei:
        load_plan(f)
    assert str(f) in str(ei.value)
    assert key in str(ei.value)


def test_not_json_names_line(tmp_path):
    f = tmp_path / "plan.json"
    f.write_text('{"kind": "potline-plan",\n  oops')
    with pytest.raises(PlanError, match=r"line 2"):
        load_plan(f)
