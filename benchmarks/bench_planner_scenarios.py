"""Planner scenarios on the reference plant with shell heat exchangers: each shipped
scenario planned on the reduced model (4 cells per line, dt 2 s) and the plan checked on
the full 660-cell plant at dt 1 s against flat operation from the same start.

``python -m benchmarks.bench_planner_scenarios [--quick] [--hours H] [--only NAME ...]``
writes ``benchmarks/results/planner_scenarios.json`` (+ ``.md``). ``--quick``: 6 h on
2 cells per line, the check on the reduced model at 1 s (a smoke run; no figures).
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.common import RESULTS_DIR, base_parser, header, write_result


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0], "planner_scenarios")
    p.set_defaults(out=RESULTS_DIR / "planner_scenarios.json")
    p.add_argument("--hours", type=float, default=None, help="plan the first HOURS of each scenario")
    p.add_argument("--only", nargs="*", default=None, help="scenario names")
    p.add_argument("--cells-per-line", type=int, default=4)
    args = p.parse_args(argv)

    from planner.check import check_dict
    from planner.optimise import Bands, optimise, violations
    from planner.report import compare
    from planner.rollouts import TwinModel, flat_schedule, reduced_config
    from planner.scenarios import SCENARIOS, load_scenario
    from twin.config import load_plant_config
    from twin.potline import Potline
    from twin.resources import config_dir

    def make_twin(cfg: Any, parallel: bool) -> Any:
        return Potline(cfg, parallel=parallel)

    plant = load_plant_config(config_dir() / "plant_reference_hx.toml")
    names = args.only or list(SCENARIOS)
    hours = 6.0 if args.quick and args.hours is None else args.hours
    cpl = 2 if args.quick else args.cells_per_line
    doc = header("planner_scenarios", args.quick)
    doc.update({"plant": plant.name, "cells": plant.operating_cells, "cells_per_line_model": cpl, "scenarios": {}})
    md = [
        "# Planner scenarios (reference plant with 80 kW shell heat exchangers)",
        "",
        "Plan on the reduced model, check on the "
        + ("reduced model at 1 s (quick)" if args.quick else f"full {plant.operating_cells}-cell plant at 1 s")
        + "; every figure plan against flat operation from the same start and seed.",
        "",
        "| scenario | h | status | cost saving | metal | MWh shifted | kWh/kg plan/flat | AEs plan/flat "
        "| min ledge [cm] | superheat [K] | plan [s] | check [s] |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    verify = None if args.quick else TwinModel(plant, make_twin, parallel=True)
    for name in names:
        sc = load_scenario(name)
        if hours is not None:
            sc = sc.truncated(hours)
        t0 = time.perf_counter()
        model = TwinModel.reduced(plant, make_twin, cpl)
        res = optimise(model, sc, verify=verify)
        t_plan = time.perf_counter() - t0
        entry: dict[str, Any] = {
            "hours": sc.hours,
            "feasible": res.feasible,
            "refused": res.refused,
            "binding": res.binding,
            "most_pct": res.most_pct,
            "planner_wall_s": t_plan,
            "iterations": res.iterations,
            "rollouts": res.rollouts,
            "log": res.log,
            "model": compare(res.outcome, res.flat, sc.step_s),
            "current_ka": res.schedule.current_ka.tolist(),
            "hx_kw": res.schedule.hx_kw.tolist(),
        }
        t1 = time.perf_counter()
        if not res.feasible and verify is not None and not res.refused:
            entry["check"] = check_dict(
                f"full plant, {plant.operating_cells} cells at dt 1 s", res.outcome, res.flat, res.violations, sc.step_s
            )
        if res.feasible:
            if args.quick:
                cfg1 = reduced_config(plant, cpl, plant.dt_s)
                m1 = TwinModel(cfg1, make_twin, weights=model.weights)
                flat = m1.rollout(flat_schedule(cfg1, sc.n_steps, sc.step_s), sc.price_eur_per_mwh)
                out = m1.rollout(res.schedule, sc.price_eur_per_mwh)
                b = Bands() if sc.superheat_min_k is None else Bands(superheat_min_k=sc.superheat_min_k)
                msgs, _ = violations(out, flat, sc, b, cfg1)
                chk = check_dict("reduced model at dt 1 s", out, flat, msgs, sc.step_s)
            else:  # the SLP checked every iterate on the full plant: its last run is the check
                chk = check_dict(
                    f"full plant, {plant.operating_cells} cells at dt 1 s", res.outcome, res.flat, [], sc.step_s
                )
            entry["check"] = chk
            entry["check_wall_s"] = time.perf_counter() - t1
        doc["scenarios"][name] = entry
        src = entry.get("check", {}).get("comparison", entry["model"])
        pp, ff = src["plan"], src["flat"]
        if res.feasible:
            v = entry["check"]["violations"]
            status = "met, in band" if not v else "met on the model; check: " + "; ".join(v)
        else:
            status = res.refused or ("no plan in band: " + "; ".join(res.violations))
        md.append(
            f"| {name} | {sc.hours:g} | {status} | {src['cost_saving_pct']:.2f} % | {src['metal_change_pct']:+.2f} % "
            f"| {src['mwh_shifted']:.0f} | {pp['kwh_per_kg']:.3f}/{ff['kwh_per_kg']:.3f} "
            f"| {pp['ae_count']}/{ff['ae_count']} | {pp['cells']['ledge_min_cm']:.1f} "
            f"| {pp['cells']['superheat_min_k']:.1f}..{pp['cells']['superheat_max_k']:.1f} "
            f"| {t_plan:.1f} | {entry.get('check_wall_s', 0.0):.0f} |"
        )
        write_result(doc, args.out, "\n".join(md))  # after every scenario: a partial run still reports
        print(md[-1], flush=True)
    write_result(doc, args.out, "\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
