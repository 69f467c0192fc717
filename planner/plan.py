"""The plan file: what the planner hands the daemon to execute.

A plan is a piecewise-constant schedule per line over a horizon: from ``t0_utc`` on,
step ``i`` holds for ``[i·step_s, (i+1)·step_s)``. Each step gives each line's current
setpoint [kA] and, where the line has shell heat exchangers, the duty every operating
cell of the line should hold [kW] (None: leave the exchangers as they are). The daemon
ramps between steps within the rectifier's limits; ``constraints`` records what the
planner held the plan to (shown to operators), ``objective`` what it achieved on its
model (for the journal and the report).

JSON on disk, validated with pydantic: a bad file is refused with the key and what was
expected (``PlanError``), never half-executed.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = ["PLAN_KIND", "Plan", "PlanError", "PlanStep", "load_plan"]

PLAN_KIND = "potline-plan"


class PlanError(ValueError):
    """A plan file that cannot be executed: names the file and key and what was expected."""


class PlanStep(BaseModel):
    """One step of the schedule.

    Attributes:
        line_current_ka: [n_lines] current setpoint per line [kA], in ``Plan.lines`` order.
        hx_duty_kw: [n_lines] shell heat-exchanger duty per cell of each line [kW] (+ takes
            heat out), or None to leave the exchangers as they are.
    """

    model_config = ConfigDict(extra="forbid")

    line_current_ka: list[float]
    hx_duty_kw: list[float] | None = None

    @model_validator(mode="after")
    def _finite(self) -> PlanStep:
        for name in ("line_current_ka", "hx_duty_kw"):
            vals = getattr(self, name)
            if vals is not None and not all(math.isfinite(v) for v in vals):
                raise ValueError(f"{name}: expected finite numbers, got {vals}")
        if any(v < 0.0 for v in self.line_current_ka):
            raise ValueError(f"line_current_ka: expected >= 0 kA, got {self.line_current_ka}")
        return self


class Plan(BaseModel):
    """A schedule of line currents (and heat-exchanger duty) the daemon executes.

    Attributes:
        kind: always ``potline-plan``.
        version: file format version (1).
        name: what the plan is for (a scenario or request name).
        created_utc: when the planner made it.
        t0_utc: when step 0 starts (timezone-aware ISO 8601).
        step_s: length of each step [s].
        lines: line names in the order of every per-line list.
        steps: the schedule, one entry per step.
        constraints: what the plan was held to (bands, limits, the production target),
            free-form numbers for display and the journal.
        objective: what the planner predicted on its model (energy cost, MWh, metal...).
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["potline-plan"] = "potline-plan"
    version: Literal[1] = 1
    name: str = ""
    created_utc: datetime | None = None
    t0_utc: datetime
    step_s: float = Field(gt=0.0, le=86400.0)
    lines: list[str] = Field(min_length=1)
    steps: list[PlanStep] = Field(min_length=1)
    constraints: dict[str, Any] = Field(default_factory=dict)
    objective: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _shape(self) -> Plan:
        if self.t0_utc.tzinfo is None:
            raise ValueError("t0_utc: expected a timezone-aware time (e.g. 2026-12-05T00:00:00+00:00)")
        n = len(self.lines)
        for i, st in enumerate(self.steps):
            if len(st.line_current_ka) != n:
                raise ValueError(
                    f"steps.{i}.line_current_ka: expected {n} values (one per line), got {len(st.line_current_ka)}"
                )
            if st.hx_duty_kw is not None and len(st.hx_duty_kw) != n:
                raise ValueError(f"steps.{i}.hx_duty_kw: expected {n} values (one per line), got {len(st.hx_duty_kw)}")
        return self

    @property
    def horizon_s(self) -> float:
        """Length of the plan [s]."""
        return self.step_s * len(self.steps)

    def step_at(self, elapsed_s: float) -> PlanStep | None:
        """The step in force ``elapsed_s`` [s] after ``t0_utc`` (None before it or after the end)."""
        if elapsed_s < 0.0 or elapsed_s >= self.horizon_s:
            return None
        return self.steps[int(elapsed_s // self.step_s)]

    def save(self, path: str | Path) -> Path:
        """Write the plan as JSON to ``path``."""
        p = Path(path)
        p.write_text(self.model_dump_json(indent=1) + "\n")
        return p


def load_plan(path: str | Path) -> Plan:
    """Read and validate a plan file.

    Raises:
        PlanError: unreadable, not JSON, or not a valid plan (each bad key named).
    """
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except OSError as e:
        raise PlanError(f"{p}: cannot read the plan: {e.strerror or e}") from e
    except json.JSONDecodeError as e:
        raise PlanError(f"{p}: line {e.lineno} column {e.colno}: not JSON ({e.msg})") from e
    try:
        return Plan.model_validate(doc)
    except ValidationError as e:
        where = "; ".join(f"{'.'.join(str(x) for x in err['loc']) or '(top)'}: {err['msg']}" for err in e.errors())
        raise PlanError(f"{p}: not a valid potline plan: {where}") from e
