"""``potline plan``: plan line amperage and shell heat-exchanger duty for a price day or a
grid request on the twin, write the plan file the daemon executes and a report against
flat operation (docs/planning.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scenario",
        required=True,
        help="a shipped scenario (price_day_ahead_48h, price_negative_noon_48h, request_minus25_48h, "
        "request_plus25_48h, request_shed_1h) or a scenario TOML file",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="plant TOML (default: the shipped reference plant with shell heat exchangers, plant_reference_hx.toml)",
    )
    p.add_argument("--out", type=Path, default=Path("plan.json"), help="plan file to write (default: %(default)s)")
    p.add_argument(
        "--report", type=Path, default=None, help="report to write: .json, or .md for Markdown (default: none)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="first 12 h of the scenario, 2 cells per line in the model, the check on the reduced model at 1 s "
        "instead of checking every iterate on the full plant",
    )
    p.add_argument("--hours", type=float, default=None, help="plan only the first HOURS of the scenario")
    p.add_argument("--cells-per-line", type=int, default=4, help="representative cells per line in the model")
    p.add_argument("--no-check", action="store_true", help="skip the twin check of the plan")


def main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from planner.check import check_dict
    from planner.optimise import optimise
    from planner.report import compare, markdown, to_plan
    from planner.rollouts import TwinModel, reduced_config
    from planner.scenarios import ScenarioError, load_scenario
    from twin.config import ConfigError, load_plant_config
    from twin.potline import Potline
    from twin.resources import config_dir

    console = Console(stderr=True)
    try:
        sc = load_scenario(args.scenario)
    except ScenarioError as e:
        console.print(f"[red]potline plan: {e}[/red]")
        return 2
    try:
        plant = load_plant_config(args.config if args.config else config_dir() / "plant_reference_hx.toml")
    except ConfigError as e:
        console.print(f"[red]potline plan: {e}[/red]")
        return 2
    hours = args.hours if args.hours is not None else (12.0 if args.quick else None)
    if hours is not None:
        sc = sc.truncated(hours)
    cpl = 2 if args.quick else max(1, args.cells_per_line)
    console.print(
        f"planning [bold]{sc.name}[/bold] ({sc.hours:g} h) on {plant.name}, {cpl} cells per line in the model"
    )

    def make_twin(cfg, parallel):
        return Potline(cfg, parallel=parallel)

    model = TwinModel.reduced(plant, make_twin, cpl)
    verify = None
    if not args.quick and not args.no_check:
        console.print(
            f"each plan iterate is checked on the full plant ({plant.operating_cells} cells, dt {plant.dt_s:g} s)"
        )
        verify = TwinModel(plant, make_twin, parallel=True)
    res = optimise(model, sc, verify=verify)
    for line in res.log:
        console.print(f"  {line}")
    lines = [ln.name for ln in plant.lines]
    plan = to_plan(res, lines, plant.cell.heat_exchanger_max_kw > 0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plan.save(args.out)
    report = {
        "scenario": {"name": sc.name, "description": sc.description, "hours": sc.hours, "source": sc.source},
        "plant": plant.name,
        "feasible": res.feasible,
        "refused": res.refused,
        "binding": res.binding,
        "most_pct": res.most_pct,
        "violations": res.violations,
        "planner": {"iterations": res.iterations, "rollouts": res.rollouts, "wall_s": res.wall_s, "log": res.log},
        "comparison": compare(res.outcome, res.flat, sc.step_s),
        "plan_file": str(args.out),
    }
    if not args.no_check and res.feasible:
        if args.quick:
            chk_cfg = reduced_config(plant, cpl, plant.dt_s)
            name = f"reduced model at dt {plant.dt_s:g} s"
            from planner.optimise import violations

            m = TwinModel(chk_cfg, make_twin, weights=model.weights)
            from planner.rollouts import flat_schedule

            flat = m.rollout(flat_schedule(chk_cfg, sc.n_steps, sc.step_s), sc.price_eur_per_mwh)
            out = m.rollout(res.schedule, sc.price_eur_per_mwh)
            msgs, _ = violations(out, flat, sc, _bands(sc), chk_cfg)
        else:  # every iterate ran on the full plant: the last is the check
            name = f"full plant, {plant.operating_cells} cells at dt {plant.dt_s:g} s"
            out, flat, msgs = res.outcome, res.flat, res.violations
        report["check"] = check_dict(name, out, flat, msgs, sc.step_s)
    elif verify is not None and not res.refused:
        name = f"full plant, {plant.operating_cells} cells at dt {plant.dt_s:g} s"
        report["check"] = check_dict(name, res.outcome, res.flat, res.violations, sc.step_s)
    _table(console, Table, report)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        if args.report.suffix == ".md":
            args.report.write_text(markdown(report))
        else:
            args.report.write_text(json.dumps(report, indent=1) + "\n")
    console.print(f"plan written to {args.out}" + (f", report to {args.report}" if args.report else ""))
    return 0


def _bands(sc):
    from planner.optimise import Bands

    b = Bands()
    if sc.superheat_min_k is not None:
        b = Bands(**{**b.__dict__, "superheat_min_k": sc.superheat_min_k})
    return b


def _table(console, table_cls, report: dict) -> None:
    c = report["comparison"]
    src = report.get("check", {}).get("comparison", c)
    title = "plan vs flat" + (f" — twin check: {report['check']['model']}" if "check" in report else " (model)")
    t = table_cls(title=title)
    t.add_column("")
    t.add_column("plan", justify="right")
    t.add_column("flat", justify="right")
    p, f = src["plan"], src["flat"]
    rows = [
        ("energy [MWh]", f"{p['energy_mwh']:.1f}", f"{f['energy_mwh']:.1f}"),
        ("cost [EUR]", f"{p['cost_eur']:.0f}", f"{f['cost_eur']:.0f}"),
        ("metal [t]", f"{p['metal_t']:.1f}", f"{f['metal_t']:.1f}"),
        ("kWh/kg", f"{p['kwh_per_kg']:.3f}", f"{f['kwh_per_kg']:.3f}"),
        ("AEs", str(p["ae_count"]), str(f["ae_count"])),
        ("PFC [t CO2e]", f"{p['pfc_co2e_t']:.2f}", f"{f['pfc_co2e_t']:.2f}"),
        ("min ledge [cm]", f"{p['cells']['ledge_min_cm']:.1f}", f"{f['cells']['ledge_min_cm']:.1f}"),
        (
            "superheat [K]",
            f"{p['cells']['superheat_min_k']:.1f}..{p['cells']['superheat_max_k']:.1f}",
            f"{f['cells']['superheat_min_k']:.1f}..{f['cells']['superheat_max_k']:.1f}",
        ),
    ]
    from rich.markup import escape

    for r in rows:
        t.add_row(escape(r[0]), r[1], r[2])
    console.print(t)
    console.print(
        f"MWh shifted {src['mwh_shifted']:.1f}, saving {src['cost_saving_eur']:.0f} EUR ({src['cost_saving_pct']:.2f} %), "
        f"metal {src['metal_change_pct']:+.2f} %"
    )
    if report.get("refused"):
        console.print(f"[yellow]{report['refused']}[/yellow]")
    if "check" in report:
        console.print(f"twin check: {report['check']['verdict']}")
