"""Receding horizon: compare the plant with the plan's prediction every step, and re-plan
from the plant's present state when it has departed.

Departure tolerances (per line, per step): the line's energy more than 3 % off the
prediction (a rectifier that does not follow, cells cut out), or the line's mean
superheat more than 2 K off (a heat exchanger that fails, a bath that drifts) — about
twice the hour-to-hour scatter of a line's mean superheat in flat operation on the
reduced model (tapping, anode changes, AEs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from planner.optimise import PlanResult, optimise
from planner.rollouts import MakeTwin, Outcome, TwinModel
from planner.scenarios import Scenario

__all__ = ["Departure", "departed", "replan"]

ENERGY_TOL = 0.03
SUPERHEAT_TOL_K = 2.0


@dataclass
class Departure:
    """Where the plant left the prediction: step, line and what."""

    step: int
    line: int
    what: str


def departed(
    pred: Outcome,
    step: int,
    energy_mwh: np.ndarray,
    superheat_by_line_k: np.ndarray,
    energy_tol: float = ENERGY_TOL,
    superheat_tol_k: float = SUPERHEAT_TOL_K,
) -> Departure | None:
    """Compare the plant at the end of ``step`` with the prediction.

    Args:
        pred: the plan's outcome on the model.
        step: the step just finished.
        energy_mwh: [n_lines] the plant's energy of that step [MWh].
        superheat_by_line_k: [n_lines] the plant's mean superheat per line at its end [K].
    """
    for ln in range(len(energy_mwh)):
        e_pred = float(pred.energy_mwh[step, ln])
        if e_pred > 0 and abs(energy_mwh[ln] / e_pred - 1.0) > energy_tol:
            return Departure(step, ln, f"energy {energy_mwh[ln]:.1f} MWh against {e_pred:.1f} MWh predicted")
        sh_pred = float(pred.superheat_mean_k[step, pred.cell_line == ln].mean())
        if abs(superheat_by_line_k[ln] - sh_pred) > superheat_tol_k:
            return Departure(step, ln, f"superheat {superheat_by_line_k[ln]:.1f} K against {sh_pred:.1f} K predicted")
    return None


def replan(plant_twin: Any, make_twin: MakeTwin, sc: Scenario, from_step: int, cells_per_line: int = 4) -> PlanResult:
    """Plan the rest of ``sc`` (steps ``from_step`` on) from the plant's present state: the
    reduced model starts from the plant's most exposed cells (``TwinModel.from_plant``)."""
    n = sc.n_steps - from_step
    if n <= 0:
        raise ValueError(f"nothing left to plan: step {from_step} of {sc.n_steps}")
    rest = Scenario(
        sc.name,
        sc.description + f" (re-planned from h {from_step * sc.step_s / 3600.0:g})",
        sc.price_eur_per_mwh[from_step:].copy(),
        sc.band_lo[from_step:].copy(),
        sc.band_hi[from_step:].copy(),
        sc.step_s,
        sc.keep_production,
        sc.source,
        list(sc.requests),
        sc.superheat_min_k,
    )
    model = TwinModel.from_plant(plant_twin, make_twin, cells_per_line)
    return optimise(model, rest)
