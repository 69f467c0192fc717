"""The final check of a plan: the schedule and flat operation on a twin of the plant
(the full plant at its own sub-step, 1 s for the reference plant), judged against the
bands the optimiser held it to."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from planner.optimise import Bands, violations
from planner.rollouts import MakeTwin, Outcome, Schedule, TwinModel, flat_schedule
from planner.scenarios import Scenario
from twin.config import PlantConfig

__all__ = ["check_plan"]


def check_plan(
    plant: PlantConfig,
    make_twin: MakeTwin,
    sched: Schedule,
    sc: Scenario,
    bands: Bands | None = None,
    parallel: bool = True,
    flat: Outcome | None = None,
) -> tuple[Outcome, Outcome, list[str]]:
    """Run ``sched`` and flat operation on a fresh twin of ``plant`` (same seed, same start;
    ``flat``: flat operation's outcome over the same steps from an earlier check, reused).

    Returns:
        (plan outcome, flat outcome, violations in words; empty: the plan holds).
    """
    b = bands or Bands()
    if sc.superheat_min_k is not None:
        b = Bands(**{**b.__dict__, "superheat_min_k": sc.superheat_min_k})
    model = TwinModel(plant, make_twin, parallel=parallel)
    if flat is None or flat.energy_mwh.shape[0] != sched.n_steps:
        flat = model.rollout(flat_schedule(plant, sched.n_steps, sched.step_s), sc.price_eur_per_mwh)
    else:
        flat = replace(flat, price_eur_per_mwh=sc.price_eur_per_mwh[: sched.n_steps].copy())
    out = model.rollout(sched, sc.price_eur_per_mwh)
    msgs, _ = violations(out, flat, sc, b, plant)
    return out, flat, msgs


def verdict(msgs: list[str]) -> str:
    return "every cell inside its bands, production and AEs held" if not msgs else "; ".join(msgs)


def check_dict(model_name: str, out: Outcome, flat: Outcome, msgs: list[str], step_s: float) -> dict[str, Any]:
    from planner.report import compare

    return {"model": model_name, "verdict": verdict(msgs), "violations": msgs, "comparison": compare(out, flat, step_s)}
