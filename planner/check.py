"""The final check of a plan in words and figures: a plan and flat operation run on the
same twin (the full plant at its own sub-step when ``optimise`` was given ``verify=``),
judged against the bands the optimiser held it to (``planner.optimise.violations``)."""

from __future__ import annotations

from typing import Any

from planner.rollouts import Outcome

__all__ = ["check_dict", "verdict"]


def verdict(msgs: list[str]) -> str:
    """One line for the report: the plan holds, or what it broke."""
    return "every cell inside its bands, production and AEs held" if not msgs else "; ".join(msgs)


def check_dict(model_name: str, out: Outcome, flat: Outcome, msgs: list[str], step_s: float) -> dict[str, Any]:
    """The report's ``check`` section: which twin, the verdict, the violations, the figures."""
    from planner.report import compare

    return {"model": model_name, "verdict": verdict(msgs), "violations": msgs, "comparison": compare(out, flat, step_s)}
