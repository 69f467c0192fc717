"""Executing a plan (``planner.plan``): which step is in force, and taking new plan files.

**Time.** A plan's ``t0_utc`` is read on the daemon's *timeline*: its start's wall time
plus the plant time since (``Daemon.timeline0 + clock.now()``, the time the history,
the HMI and the mirror show). On a real plant that is UTC; on a HIL rig running faster
than real time the timeline runs as fast as the plant, so a plan's steps last
``step_s`` *plant* seconds.

**Taking a plan.** ``[plan] file`` at start and every settled ``*.json`` dropped into
``<state_dir>/plans/`` (moved to ``plans/loaded/`` or ``plans/rejected/`` beside an
``.errors.txt``; the one taken last is kept as ``<state_dir>/plan_in_force.json`` for a
restart) go through ``PlanRunner.offer``: ``load_plan`` validates the file, then
the plan must fit this plant: every line it names is a line of the plant, every current
lies within the line's bounds (``Bounds``: the controller's ``amperage`` min/max, the
rectifier's own limits and ``[safety]``), its end lies in the future. A plan that does
not is refused (``plan_rejected`` with the reason) and the running one stays; one that
does replaces it (``plan_loaded``).

**Steps.** ``tick(t)`` returns the line currents [kA] to set when the step in force
changed (``plan_step``); the daemon hands them to the controller as its line targets
(``PotController.set_line_target``), the same path an operator's target takes, so the
controller's ramp, headroom cap and cut-out sequences and the safety layer's bounds,
ramp and interlocks all apply. After the last step ``plan_finished`` is journalled and
the lines hold the last step's currents (nothing jumps when a plan ends). Lines the
plan does not name are left as they are.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from planner.plan import Plan, PlanError, PlanStep, load_plan

__all__ = ["PLAN_POLL_S", "PLAN_SETTLE_S", "Bounds", "PlanRunner"]

log = structlog.get_logger("potline.plan")

#: how often ``<state_dir>/plans`` is looked at [wall s], and how long a file must be unchanged
PLAN_POLL_S, PLAN_SETTLE_S = 1.0, 0.5

#: journal(kind, detail, data) -> None
Append = Callable[[str, str, dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class Bounds:
    """The line currents a plan may ask for [kA], per line of the plant."""

    min_ka: tuple[float, ...]
    max_ka: tuple[float, ...]


class PlanRunner:
    """The plan in force and its step (see the module docstring).

    Args:
        line_names: the plant's lines, in layout order.
        bounds: what a plan may ask for per line.
        append: journals one entry (kind, detail, data).
    """

    def __init__(self, line_names: list[str], bounds: Bounds, append: Append) -> None:
        self.line_names = list(line_names)
        self.bounds = bounds
        self.append = append
        self.plan: Plan | None = None
        self.source = ""
        #: index of the step in force (-1: before t0, None: none/finished)
        self.step_index: int | None = None
        self.finished = False
        self.last_rejected: dict[str, Any] | None = None
        self._line_idx: list[int] = []

    # ------------------------------------------------------------------ taking a plan

    def check(self, plan: Plan, t_now: float) -> str:
        """Why ``plan`` cannot run on this plant at timeline time ``t_now`` [Unix s] ("" = it can)."""
        unknown = [n for n in plan.lines if n not in self.line_names]
        if unknown:
            return f"lines {unknown}: not lines of this plant (expected some of {self.line_names})"
        if len(set(plan.lines)) != len(plan.lines):
            return f"lines: a line named twice ({plan.lines})"
        for k, st in enumerate(plan.steps):
            for j, name in enumerate(plan.lines):
                li = self.line_names.index(name)
                v, lo, hi = st.line_current_ka[j], self.bounds.min_ka[li], self.bounds.max_ka[li]
                if not lo <= v <= hi:
                    return (f"steps.{k}.line_current_ka[{j}] ({name}): {v:g} kA outside the line's bounds"
                            f" [{lo:g}, {hi:g}] kA")  # fmt: skip
        end = plan.t0_utc.timestamp() + plan.horizon_s
        if end <= t_now:
            return f"t0_utc + {len(plan.steps)} x step_s: the plan ended at {_iso(end)}, before now ({_iso(t_now)})"
        return ""

    def offer(self, path: str | Path, t_now: float, source: str = "") -> bool:
        """Validate the plan file ``path`` and, when it can run, make it the plan in force.

        Returns True when taken. A refusal is journalled (``plan_rejected``) and logged; the
        plan in force stays. Never raises for a bad file.
        """
        p = Path(path)
        src = source or f"file:{p.name}"
        try:
            plan = load_plan(p)
        except PlanError as exc:
            self._reject(p, src, str(exc))
            return False
        why = self.check(plan, t_now)
        if why:
            self._reject(p, src, f"{p}: {why}")
            return False
        prev = self.plan
        self.plan, self.source, self.step_index, self.finished = plan, src, None, False
        self._line_idx = [self.line_names.index(n) for n in plan.lines]
        data = {"file": str(p), "name": plan.name, "t0_utc": plan.t0_utc.isoformat(), "step_s": plan.step_s,
                "steps": len(plan.steps), "lines": plan.lines, "constraints": plan.constraints,
                "objective": plan.objective, "replaces": prev.name if prev is not None else None}  # fmt: skip
        self.append("plan_loaded", f"plan {plan.name!r} from {p.name}: {len(plan.steps)} steps of {plan.step_s:g} s"
                                   f" from {plan.t0_utc.isoformat()}"
                                   + (f" (replaces {prev.name!r})" if prev is not None else ""), data)  # fmt: skip
        log.info("plan.loaded", file=str(p), name=plan.name, steps=len(plan.steps), step_s=plan.step_s)
        return True

    def _reject(self, p: Path, source: str, why: str) -> None:
        self.last_rejected = {"file": p.name, "reason": why, "at": _iso(time.time())}
        self.append("plan_rejected", f"plan {p.name} refused, the running plan stays: {why}",
                    {"file": str(p), "reason": why, "source": source,
                     "running": self.plan.name if self.plan is not None else None})  # fmt: skip
        log.error("plan.rejected", file=str(p), reason=why)

    # ------------------------------------------------------------------ steps

    def tick(self, t_now: float) -> list[tuple[int, float, float | None]]:
        """The step in force at timeline time ``t_now`` [Unix s]; on a change, the
        (line index, current [kA], heat-exchanger duty per cell [kW] or None) to set."""
        plan = self.plan
        if plan is None or self.finished:
            return []
        elapsed = t_now - plan.t0_utc.timestamp()
        if elapsed < 0.0:
            self.step_index = -1
            return []
        k = int(elapsed // plan.step_s)
        if k >= len(plan.steps):
            self.finished, self.step_index = True, None
            last = plan.steps[-1].line_current_ka
            self.append("plan_finished", f"plan {plan.name!r} finished; lines hold the last step's currents",
                        {"name": plan.name, "steps": len(plan.steps), "hold_ka": dict(zip(plan.lines, last, strict=True))})  # fmt: skip
            log.info("plan.finished", name=plan.name)
            return []
        if k == self.step_index:
            return []
        self.step_index = k
        st = plan.steps[k]
        out = self._targets(st)
        self.append("plan_step", f"plan {plan.name!r} step {k + 1}/{len(plan.steps)}: "
                                 + ", ".join(f"{n} {v:.1f} kA" for n, v in zip(plan.lines, st.line_current_ka, strict=True)),
                    {"name": plan.name, "step": k, "line_current_ka": st.line_current_ka, "hx_duty_kw": st.hx_duty_kw,
                     "step_start_utc": _iso(plan.t0_utc.timestamp() + k * plan.step_s)})  # fmt: skip
        return out

    def _targets(self, st: PlanStep) -> list[tuple[int, float, float | None]]:
        duty = st.hx_duty_kw
        return [(li, float(st.line_current_ka[j]), None if duty is None else float(duty[j]))
                for j, li in enumerate(self._line_idx)]  # fmt: skip

    def current_step(self) -> PlanStep | None:
        """The step in force (None before t0, after the end or without a plan)."""
        if self.plan is None or self.step_index is None or self.step_index < 0:
            return None
        return self.plan.steps[self.step_index]

    def status(self, t_now: float) -> dict[str, Any]:
        """For the HMI: the plan, its step, its constraints and the next step's start."""
        plan = self.plan
        out: dict[str, Any] = {"plan": None, "last_rejected": self.last_rejected}
        if plan is None:
            return out
        k = self.step_index
        state = "finished" if self.finished else "waiting" if k is None or k < 0 else "running"
        nxt = None
        if state != "finished":
            nxt = plan.t0_utc.timestamp() + ((k if k is not None and k >= 0 else -1) + 1) * plan.step_s
        out["plan"] = {
            "name": plan.name, "source": self.source, "state": state, "lines": plan.lines,
            "t0_utc": plan.t0_utc.isoformat(), "step_s": plan.step_s, "n_steps": len(plan.steps),
            "step": k if state == "running" else None, "next_step_t": nxt, "now_t": t_now,
            "steps": [s.model_dump() for s in plan.steps],
            "constraints": plan.constraints, "objective": plan.objective,
        }  # fmt: skip
        return out


def _iso(t: float) -> str:
    if not math.isfinite(t):
        return ""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def settled_plan_files(
    folder: Path, settle_s: float = PLAN_SETTLE_S, wall: Callable[[], float] = time.time
) -> list[Path]:
    """``*.json`` files in ``folder`` unchanged for ``settle_s`` [wall s], oldest first."""
    try:
        files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".json"]
        files.sort(key=lambda p: p.stat().st_mtime)
        return [p for p in files if wall() - p.stat().st_mtime >= settle_s]
    except OSError as exc:
        log.error("plan.folder_unreadable", folder=str(folder), error=str(exc))
        return []
