"""A plan against flat operation: the plan file and the report's figures.

``to_plan`` turns the optimiser's schedule into the file the daemon executes
(``planner.plan.Plan``); ``compare`` gives the figures an operator and the grid
operator care about, plan against flat on the same twin: MWh shifted, energy cost,
metal, kWh/kg, AEs, PFC (CF4 + C2F6 as CO2e: IPCC 2006 Tier 2 ratio, AR5 GWP-100),
every cell's minimum ledge and superheat range (min/max over cells and the worst cells).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np

from planner.optimise import Bands, PlanResult
from planner.plan import Plan, PlanStep
from planner.rollouts import Outcome

__all__ = ["compare", "markdown", "to_plan"]

#: AR5 GWP-100 of CF4 and C2F6; C2F6 = 0.121 x CF4 (the twin's Tier 2 ratio)
GWP_CF4, GWP_C2F6 = 6630.0, 11100.0


def to_plan(
    res: PlanResult, lines: list[str], hx_installed: bool, t0_utc: datetime | None = None, bands: Bands | None = None
) -> Plan:
    """The plan file of a result (a refused request: flat operation, the refusal recorded)."""
    b = bands or Bands()
    sch = res.schedule
    hx = hx_installed
    steps = [
        PlanStep(
            line_current_ka=[float(x) for x in sch.current_ka[k]],
            hx_duty_kw=[float(x) for x in sch.hx_kw[k]] if hx else None,
        )
        for k in range(sch.n_steps)
    ]
    now = datetime.now(UTC).replace(microsecond=0)
    t0 = t0_utc or now.replace(minute=0, second=0)
    cmp_ = compare(res.outcome, res.flat, res.scenario.step_s)
    constraints: dict[str, Any] = {
        "superheat_band_k": [res.scenario.superheat_min_k or b.superheat_min_k, b.superheat_max_k],
        "ledge_min_cm": b.ledge_min_cm,
        "production_within_pct": 2.0 if res.scenario.keep_production else None,
        "ae_not_above_flat": True,
        "requests": res.scenario.requests,
        "feasible": res.feasible,
        "refused": res.refused,
        "binding": res.binding,
    }
    return Plan(
        name=res.scenario.name,
        created_utc=now,
        t0_utc=t0,
        step_s=sch.step_s,
        lines=list(lines),
        steps=steps,
        constraints=constraints,
        objective={
            "model": f"twin, {len(res.outcome.cell_line)} simulated cells",
            "cost_eur": cmp_["plan"]["cost_eur"],
            "flat_cost_eur": cmp_["flat"]["cost_eur"],
            "energy_mwh": cmp_["plan"]["energy_mwh"],
            "metal_t": cmp_["plan"]["metal_t"],
            "mwh_shifted": cmp_["mwh_shifted"],
        },
    )


def _summary(o: Outcome, step_s: float) -> dict[str, Any]:
    cf4 = o.cf4_kg
    return {
        "energy_mwh": o.energy_total_mwh,
        "cost_eur": o.cost_eur,
        "metal_t": o.metal_total_t,
        "kwh_per_kg": o.kwh_per_kg,
        "ae_count": o.ae_count,
        "ae_plant_estimate": o.ae_plant_estimate,
        "cf4_kg": cf4,
        "pfc_co2e_t": (cf4 * GWP_CF4 + 0.121 * cf4 * GWP_C2F6) / 1000.0,
        "power_mw_min": float(o.power_mw(step_s).min()),
        "power_mw_max": float(o.power_mw(step_s).max()),
        "cells": _cells(o),
    }


def _cells(o: Outcome, worst: int = 3) -> dict[str, Any]:
    """Per-cell heat balance over the horizon: min ledge, superheat range (hourly means)."""
    ledge = o.ledge_min_cm.min(axis=0)
    sh_lo = o.superheat_mean_k.min(axis=0)
    sh_hi = o.superheat_mean_k.max(axis=0)
    return {
        "ledge_min_cm": float(ledge.min()),
        "ledge_max_of_min_cm": float(ledge.max()),
        "superheat_min_k": float(sh_lo.min()),
        "superheat_max_k": float(sh_hi.max()),
        "superheat_sample_min_k": float(o.superheat_min_k.min()),
        "superheat_sample_max_k": float(o.superheat_max_k.max()),
        "worst_ledge": [[int(c) + 1, round(float(ledge[c]), 2)] for c in np.argsort(ledge)[:worst]],
        "worst_hot": [[int(c) + 1, round(float(sh_hi[c]), 2)] for c in np.argsort(-sh_hi)[:worst]],
        "worst_cold": [[int(c) + 1, round(float(sh_lo[c]), 2)] for c in np.argsort(sh_lo)[:worst]],
        "cells_with_new_validity_flags": int(np.count_nonzero(o.flags_ever)),
    }


def compare(plan: Outcome, flat: Outcome, step_s: float) -> dict[str, Any]:
    """Plan against flat on the same twin. ``mwh_shifted``: half the sum of |ΔE| per step
    (energy moved from some hours to others, plus any net change) [MWh]."""
    d = plan.energy_mwh.sum(axis=1) - flat.energy_mwh.sum(axis=1)
    p, f = _summary(plan, step_s), _summary(flat, step_s)
    return {
        "plan": p,
        "flat": f,
        "mwh_shifted": float(np.abs(d).sum() / 2.0),
        "mwh_net": float(d.sum()),
        "cost_saving_eur": f["cost_eur"] - p["cost_eur"],
        "cost_saving_pct": 100.0 * (f["cost_eur"] - p["cost_eur"]) / abs(f["cost_eur"]) if f["cost_eur"] else 0.0,
        "metal_change_pct": 100.0 * (p["metal_t"] / f["metal_t"] - 1.0) if f["metal_t"] else 0.0,
    }


def markdown(report: dict[str, Any]) -> str:
    """A short Markdown report of ``report`` (the ``potline plan`` JSON)."""
    c = report["comparison"]
    p, f = c["plan"], c["flat"]
    lines = [
        f"# Plan `{report['scenario']['name']}` against flat operation",
        "",
        report["scenario"]["description"],
        "",
        f"Status: {'feasible' if report['feasible'] else 'REFUSED / not met'}"
        + (f" — {report['refused']}" if report.get("refused") else ""),
        "",
        "| | plan | flat |",
        "|---|---:|---:|",
        f"| energy [MWh] | {p['energy_mwh']:.1f} | {f['energy_mwh']:.1f} |",
        f"| energy cost [EUR] | {p['cost_eur']:.0f} | {f['cost_eur']:.0f} |",
        f"| metal [t] | {p['metal_t']:.1f} | {f['metal_t']:.1f} |",
        f"| kWh/kg | {p['kwh_per_kg']:.3f} | {f['kwh_per_kg']:.3f} |",
        f"| AEs (simulated cells) | {p['ae_count']} | {f['ae_count']} |",
        f"| PFC [t CO2e] | {p['pfc_co2e_t']:.2f} | {f['pfc_co2e_t']:.2f} |",
        f"| power [MW] min..max | {p['power_mw_min']:.1f}..{p['power_mw_max']:.1f} | "
        f"{f['power_mw_min']:.1f}..{f['power_mw_max']:.1f} |",
        f"| min ledge [cm] | {p['cells']['ledge_min_cm']:.1f} | {f['cells']['ledge_min_cm']:.1f} |",
        f"| superheat [K] (hourly) | {p['cells']['superheat_min_k']:.1f}..{p['cells']['superheat_max_k']:.1f} | "
        f"{f['cells']['superheat_min_k']:.1f}..{f['cells']['superheat_max_k']:.1f} |",
        "",
        f"MWh shifted: {c['mwh_shifted']:.1f}; cost saving {c['cost_saving_eur']:.0f} EUR "
        f"({c['cost_saving_pct']:.2f} %); metal {c['metal_change_pct']:+.2f} %.",
        "",
        f"Worst cells (plan): thinnest ledge {p['cells']['worst_ledge']}, hottest {p['cells']['worst_hot']}, "
        f"coldest {p['cells']['worst_cold']} ([cell, value]).",
    ]
    if report.get("check"):
        ch = report["check"]
        lines += ["", f"Twin check ({ch['model']}): {ch['verdict']}"]
    return "\n".join(lines) + "\n"
