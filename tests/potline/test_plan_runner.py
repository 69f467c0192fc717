"""Plan execution's step logic (``potline.plan_runner``) on real plan files, and the grid
shed's setpoint cap (``potline.grid_shed``) against a series line U(I) = U0 + R·I.

The line: 264 cells in series, back-EMF E0 = 1.65 V each (potctl.config.E0_V) = 435.6 V, and
1145 V at 120 kA (the HIL bench's 264-cell line: ~4.3 V per cell plus the busbar), so the
ohmic part R = (1145 - 435.6) V / 120 kA. The rectifier follows the capped setpoint at most at
its ramp; the scan period is 2 s as in the daemon's example config.
"""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from planner.plan import Plan, PlanStep
from potline.grid_shed import LineShed, ShedSettings
from potline.plan_runner import Bounds, PlanRunner, settled_plan_files

T0 = datetime(2026, 12, 5, 6, 0, tzinfo=UTC)
LINES = ["Line1", "Line2"]
BOUNDS = Bounds((60.0, 60.0), (130.0, 130.0))


class Journal:
    """The entries a runner journals, in order."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str, dict[str, Any]]] = []

    def __call__(self, kind: str, detail: str, data: dict[str, Any]) -> None:
        self.entries.append((kind, detail, data))

    def kinds(self) -> list[str]:
        return [k for k, _, _ in self.entries]


def _plan_file(tmp_path: Path, name: str = "plan.json", **over: Any) -> Path:
    plan = Plan(name="day-ahead", t0_utc=T0, step_s=900.0, lines=["Line2"],
                steps=[PlanStep(line_current_ka=[118.0], hx_duty_kw=[5.0]), PlanStep(line_current_ka=[110.0]),
                       PlanStep(line_current_ka=[124.0], hx_duty_kw=[0.0])],
                constraints={"line_current_ka": [100.0, 125.0]})  # fmt: skip
    plan = plan.model_copy(update=over)
    return plan.save(tmp_path / name)


def test_steps_follow_the_plan_file_and_the_plan_holds_its_last_step(tmp_path) -> None:
    j = Journal()
    r = PlanRunner(LINES, BOUNDS, j)
    t0 = T0.timestamp()
    assert r.offer(_plan_file(tmp_path), t0 - 60.0)
    assert j.kinds() == ["plan_loaded"]
    assert r.tick(t0 - 1.0) == []  # before t0: nothing
    assert r.status(t0 - 1.0)["plan"]["state"] == "waiting"
    # step 0 at t0: Line2 is the plant's second line; its duty goes with it
    assert r.tick(t0) == [(1, 118.0, 5.0)]
    assert r.tick(t0 + 899.0) == []  # same step: nothing new
    assert r.tick(t0 + 900.0) == [(1, 110.0, None)]
    assert r.tick(t0 + 1800.0) == [(1, 124.0, 0.0)]
    st = r.status(t0 + 1801.0)["plan"]
    assert st["step"] == 2 and st["constraints"] == {"line_current_ka": [100.0, 125.0]}
    assert st["next_step_t"] == pytest.approx(t0 + 2700.0)
    assert r.tick(t0 + 2700.0) == []  # the end: nothing more is set, the line holds 124 kA
    assert j.kinds() == ["plan_loaded", "plan_step", "plan_step", "plan_step", "plan_finished"]
    assert [d["step"] for k, _, d in j.entries if k == "plan_step"] == [0, 1, 2]
    assert j.entries[-1][2]["hold_ka"] == {"Line2": 124.0}
    assert r.status(t0 + 3000.0)["plan"]["state"] == "finished"


def test_a_plan_loaded_mid_horizon_starts_at_the_step_in_force(tmp_path) -> None:
    j = Journal()
    r = PlanRunner(LINES, BOUNDS, j)
    t = T0.timestamp() + 1000.0
    assert r.offer(_plan_file(tmp_path), t)
    assert r.tick(t) == [(1, 110.0, None)]


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("{not json", "line 1 column 2: not JSON"),
        (
            json.dumps(
                {
                    "kind": "potline-plan",
                    "t0_utc": T0.isoformat(),
                    "step_s": 60.0,
                    "lines": ["Line1"],
                    "steps": [{"line_current_ka": [110.0, 1.0]}],
                }
            ),
            "steps.0.line_current_ka: expected 1 values",
        ),
        (
            json.dumps(
                {
                    "kind": "potline-plan",
                    "t0_utc": T0.isoformat(),
                    "step_s": 60.0,
                    "lines": ["Line7"],
                    "steps": [{"line_current_ka": [110.0]}],
                }
            ),
            "lines ['Line7']: not lines of this plant",
        ),
        (
            json.dumps(
                {
                    "kind": "potline-plan",
                    "t0_utc": T0.isoformat(),
                    "step_s": 60.0,
                    "lines": ["Line1"],
                    "steps": [{"line_current_ka": [110.0]}, {"line_current_ka": [140.0]}],
                }
            ),
            "steps.1.line_current_ka[0] (Line1): 140 kA outside the line's bounds [60, 130] kA",
        ),
        (
            json.dumps(
                {
                    "kind": "potline-plan",
                    "t0_utc": (T0 - timedelta(days=1)).isoformat(),
                    "step_s": 60.0,
                    "lines": ["Line1"],
                    "steps": [{"line_current_ka": [110.0]}],
                }
            ),
            "the plan ended at",
        ),
    ],
)
def test_a_bad_plan_is_refused_naming_the_key_and_the_running_plan_stays(tmp_path, text: str, expect: str) -> None:
    j = Journal()
    r = PlanRunner(LINES, BOUNDS, j)
    t = T0.timestamp()
    assert r.offer(_plan_file(tmp_path, "good.json"), t)
    r.tick(t)
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    assert not r.offer(bad, t + 10.0)
    kind, detail, data = j.entries[-1]
    assert kind == "plan_rejected" and expect in detail and str(bad) in detail, detail
    assert data["running"] == "day-ahead"
    assert r.plan is not None and r.plan.name == "day-ahead"
    assert r.tick(t + 900.0) == [(1, 110.0, None)]  # the running plan goes on


def test_only_settled_plan_files_are_taken_oldest_first(tmp_path) -> None:
    a = _plan_file(tmp_path, "a.json")
    b = _plan_file(tmp_path, "b.json")
    (tmp_path / "notes.txt").write_text("not a plan")
    now = max(a.stat().st_mtime, b.stat().st_mtime)
    assert settled_plan_files(tmp_path, settle_s=5.0, wall=lambda: now) == []  # still being written
    got = settled_plan_files(tmp_path, settle_s=5.0, wall=lambda: now + 6.0)
    assert {p.name for p in got} == {"a.json", "b.json"}


# ---------------------------------------------------------------------- grid shed

E0_V, N_CELLS = 1.65, 264
U0_V = E0_V * N_CELLS
R_OHM = (1145.0 - U0_V) / 120e3
RAMP_KA_PER_S = 6.0 / 60.0  # the rectifier's (twin.config.RectifierParams.ramp_ka_per_min)
NORMAL_KA_PER_S = 3.0 / 60.0  # the controller's normal ramp
FLOOR_KA, MAX_KA = 60.0, 130.0
SCAN_S = 2.0


def u_of(i_ka: float) -> float:
    return U0_V + R_OHM * i_ka * 1e3


def _settings() -> ShedSettings:
    return ShedSettings(fast_ka_per_s=RAMP_KA_PER_S, normal_ka_per_s=NORMAL_KA_PER_S, floor_ka=FLOOR_KA,
                        max_ka=MAX_KA, u0_v=U0_V)  # fmt: skip


class Line:
    """The rectifier: the current follows the written setpoint at most at its ramp."""

    def __init__(self, i_ka: float) -> None:
        self.i = i_ka

    def follow(self, sp: float) -> None:
        step = RAMP_KA_PER_S * SCAN_S
        self.i += max(-step, min(step, sp - self.i))


def _run(shed: LineShed, line: Line, t: float, t_end: float, limit: float | None, plan_sp: float,
         log: list[tuple[float, float, str]]) -> float:  # fmt: skip
    while t < t_end:
        cap, events = shed.step(t, limit, u_of(line.i), line.i, plan_sp)
        sp = min(plan_sp, cap) if math.isfinite(cap) else plan_sp
        assert FLOOR_KA <= sp <= MAX_KA
        line.follow(sp)
        log += [(t, sp, e.kind) for e in events]
        log.append((t, sp, ""))
        t += SCAN_S
    return t


def test_a_shed_meets_the_limit_at_the_rectifier_ramp_and_recovers_at_the_normal_one() -> None:
    shed, line, log = LineShed(_settings()), Line(120.0), []
    p0 = 120.0 * u_of(120.0) / 1e3
    limit = 0.85 * p0
    t = _run(shed, line, 0.0, 20.0, 0.0, 120.0, log)  # no request: nothing capped
    assert all(sp == 120.0 for _, sp, _ in log)
    t_req = t
    t = _run(shed, line, t, t + 400.0, limit, 120.0, log)
    p = line.i * u_of(line.i) / 1e3
    assert p == pytest.approx(limit, rel=1e-3)  # the model is the line's: exactly at the limit
    i_lim = line.i
    reached = next(tt for tt, _, k in log if k == "grid_shed_reached")
    # "reached" = within the tolerance (1.5 kA) of the shed current, at the rectifier's ramp
    ramp_s = (120.0 - i_lim) / RAMP_KA_PER_S
    assert ramp_s - 1.5 / RAMP_KA_PER_S <= reached - t_req <= ramp_s + 2 * SCAN_S
    t_clear = t
    t = _run(shed, line, t, t + 600.0, 0.0, 120.0, log)
    kinds = [k for _, _, k in log if k]
    assert kinds == ["grid_shed_start", "grid_shed_reached", "grid_shed_end", "grid_shed_recovered"]
    back = next(tt for tt, _, k in log if k == "grid_shed_recovered")
    # back up at the normal ramp (3 kA/min), not the fast one
    assert back - t_clear == pytest.approx((120.0 - i_lim) / NORMAL_KA_PER_S, abs=2 * SCAN_S)
    assert line.i == pytest.approx(120.0) and shed.state == "idle"


def test_a_limit_below_the_lowest_safe_current_holds_the_line_there() -> None:
    shed, line, log = LineShed(_settings()), Line(120.0), []
    _run(shed, line, 0.0, 800.0, 5.0, 120.0, log)  # 5 MW: far below what 60 kA draws
    assert min(sp for _, sp, _ in log) == FLOOR_KA
    assert line.i == pytest.approx(FLOOR_KA)
    assert shed.full and shed.status()["full_shed"] is True
    start = shed.status()
    assert start["target_ka"] == FLOOR_KA


def test_an_unusable_register_keeps_the_shed_and_an_ae_lowers_it() -> None:
    shed, line, log = LineShed(_settings()), Line(120.0), []
    limit = 0.9 * 120.0 * u_of(120.0) / 1e3
    t = _run(shed, line, 0.0, 300.0, limit, 120.0, log)
    i_lim = line.i
    t = _run(shed, line, t, t + 100.0, None, 120.0, log)  # the link to the register drops: held
    assert line.i == pytest.approx(i_lim) and shed.state == "shedding"
    # an AE adds 30 V to the line: at the same current it draws more than allowed -> lower
    for _ in range(60):
        cap, _ = shed.step(t, limit, u_of(line.i) + 30.0, line.i, 120.0)
        line.follow(cap)
        t += SCAN_S
    assert line.i < i_lim - 1.0
    assert line.i * (u_of(line.i) + 30.0) / 1e3 <= limit * 1.005


def test_no_cap_ever_outside_the_bounds_for_random_requests() -> None:
    rng = random.Random(20261205)
    shed, line = LineShed(_settings()), Line(120.0)
    t = 0.0
    for _ in range(3000):
        r = rng.random()
        limit = None if r < 0.05 else 0.0 if r < 0.3 else rng.uniform(-20.0, 200.0)
        plan_sp = rng.uniform(FLOOR_KA, MAX_KA)
        u = u_of(line.i) + rng.gauss(0.0, 5.0)
        cap, _ = shed.step(t, limit, u, line.i, plan_sp)
        if math.isfinite(cap):
            assert FLOOR_KA <= cap <= MAX_KA
            line.follow(min(cap, plan_sp))
        else:
            line.follow(plan_sp)
        t += SCAN_S


def test_a_changed_limit_is_reached_anew_deeper_fast_and_higher_at_the_normal_ramp() -> None:
    shed, line, log = LineShed(_settings()), Line(120.0), []
    p0 = 120.0 * u_of(120.0) / 1e3
    t = _run(shed, line, 0.0, 300.0, 0.9 * p0, 120.0, log)
    i_a = line.i
    t_b = t
    t = _run(shed, line, t, t + 300.0, 0.8 * p0, 120.0, log)  # deeper: at the rectifier's ramp
    i_b = line.i
    assert line.i * u_of(line.i) / 1e3 == pytest.approx(0.8 * p0, rel=1e-3)
    kinds = [k for _, _, k in log if k]
    assert kinds == ["grid_shed_start", "grid_shed_reached", "grid_shed_changed", "grid_shed_reached"]
    reached_b = [tt for tt, _, k in log if k == "grid_shed_reached"][-1]
    assert reached_b - t_b <= (i_a - i_b) / RAMP_KA_PER_S + 2 * SCAN_S
    t_c = t
    _run(shed, line, t, t + 60.0, 0.9 * p0, 120.0, log)  # higher again: up at the normal ramp only
    assert line.i - i_b == pytest.approx(60.0 * NORMAL_KA_PER_S, abs=NORMAL_KA_PER_S * SCAN_S)
    assert t_c > t_b
