"""``potline sim``: run a plant offline on the twin (PLC local automation: fixed-rate
feeding, resistance band, AE kill, tapping and anode changes) and write a summary
(JSON + Markdown + HTML) and PNG plots of a few cells."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

#: IPCC 2006 Tier 2 slope method for CWPB and AR5 GWP-100 (docs/domain.md)
GWP_CF4, GWP_C2F6 = 6630.0, 11100.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None, help="plant TOML (default: the embedded reference plant)")
    p.add_argument("--hours", type=float, default=24.0, help="simulated hours (default 24)")
    p.add_argument("--seed", type=int, default=None, help="override the config's seed")
    p.add_argument("--out", type=Path, default=Path("out/sim"), help="output directory")
    p.add_argument("--plot-cells", type=int, default=4, help="cells to plot (spread over the plant)")
    p.add_argument("--serial", action="store_true", help="one core (the serial kernel; same as --kernel serial)")
    p.add_argument(
        "--kernel",
        choices=("auto", "serial", "lines", "cells"),
        default="auto",
        help="stepping kernel: auto (default) measures them as it runs and uses the fastest; serial; "
        "lines (whole lines per thread); cells (each sub-step's cells over the threads). Same results.",
    )
    p.add_argument("--no-ae-kill", action="store_true", help="PLC local control without AE quench (open loop)")


def summarise(potline, hours: float) -> dict:
    """Production, energy, CE, AEs and PFC (IPCC Tier 2, AR5) of a finished run, and the
    twin's validity envelope (cells that left the range where its equations hold)."""
    tot = potline.totals()
    val = potline.validity()
    n = potline.layout.n_cells
    days = hours / 24.0
    metal_t = tot["metal_kg"] / 1000.0
    ae_min_per_cell_day = tot["ae_minutes"] / (n * days) if days > 0 else 0.0
    co2e_t = (tot["cf4_kg"] * GWP_CF4 + tot["c2f6_kg"] * GWP_C2F6) / 1000.0
    return {
        "plant": potline.layout.plant,
        "cells": n,
        "hours": hours,
        "production_t_per_day": metal_t / days if days > 0 else 0.0,
        "production_t_per_year": metal_t / days * 365.0 if days > 0 else 0.0,
        "specific_energy_kwh_per_kg": tot["specific_energy_kwh_per_kg"],
        "current_efficiency": tot["current_efficiency"],
        "mean_cell_voltage_v": float(potline.measurements()["cell_voltage_v"].mean()),
        "line_current_ka": [float(x) for x in potline.measurements()["line_current_ka"]],
        "anode_effects": tot["ae_count"],
        "ae_per_pot_day": tot["ae_count"] / (n * days) if days > 0 else 0.0,
        "ae_minutes_per_cell_day": ae_min_per_cell_day,
        "ae_mean_duration_s": tot["ae_minutes"] * 60.0 / tot["ae_count"] if tot["ae_count"] else 0.0,
        "cf4_kg": tot["cf4_kg"],
        "c2f6_kg": tot["c2f6_kg"],
        "pfc_co2e_t": co2e_t,
        "pfc_co2e_kg_per_t_al": co2e_t * 1000.0 / metal_t if metal_t > 0 else 0.0,
        "cells_outside_validity_now": val["cells_invalid_now"],
        "cells_outside_validity_ever": val["cells_invalid_ever"],
        "cell_time_outside_validity": val["invalid_share"],
        "validity_flags_raised": ", ".join(f"{k}: {v} cells" for k, v in val["cells_by_flag"].items()) or "none",
        "rectifier_overcurrent_s": tot["overcurrent_s"],
    }


def _plots(arrays, names):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = arrays["t_h"]
    fig, axes = plt.subplots(4, 1, figsize=(10, 11), sharex=True)
    panels = [
        ("cell_voltage_v", "cell voltage [V]"),
        ("alumina_wt_pct", "dissolved Al2O3 [wt %]"),
        ("bath_temp_c", "bath temperature [°C]"),
        ("acd_cm", "ACD [cm]"),
    ]
    for ax, (key, label) in zip(axes, panels, strict=False):
        for j, name in enumerate(names):
            ax.plot(t, arrays[key][:, j], lw=0.8, label=name)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, ncol=4)
    axes[-1].set_xlabel("time [h]")
    fig.tight_layout()
    fig2, ax = plt.subplots(figsize=(10, 3.5))
    for j in range(arrays["line_current_ka"].shape[1]):
        ax.plot(t, arrays["line_current_ka"][:, j], lw=0.8, label=f"line {j + 1}")
    ax.set_ylabel("line current [kA]")
    ax.set_xlabel("time [h]")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig2.tight_layout()
    return fig, fig2


def _kernel_message(cached: bool | None) -> str:
    """What the wait before the first step is for (``twin.potline.kernels_cached``)."""
    if cached is False:
        return "compiling kernels (first run after an install or an edit of twin/: ~20–70 s; cached afterwards)…"
    return "loading kernels…"


def main(args: argparse.Namespace) -> int:
    import time
    from contextlib import nullcontext

    import numpy as np
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from potline.report import Report, write_json
    from twin.config import ConfigError, load_plant_config
    from twin.potline import Potline, kernels_cached
    from twin.recorder import Recorder

    console = Console(stderr=True)
    try:
        cfg = load_plant_config(args.config)
    except ConfigError as exc:
        print(f"potline sim: config error\n{exc}", file=sys.stderr)  # unwrapped: one greppable line per problem
        return 2
    if args.no_ae_kill:
        cfg = cfg.model_copy(update={"local_control": cfg.local_control.model_copy(update={"ae_quench": False})})
    cached = kernels_cached()
    message = _kernel_message(cached)
    if not console.is_terminal:  # a log or a pipe: no spinner, say it once
        console.print(message)
    t0 = time.perf_counter()
    with console.status(message) if console.is_terminal else nullcontext():
        pl = Potline(cfg, seed=args.seed, kernel="serial" if args.serial else args.kernel)
        pl.warm_up()
    if cached is False:
        console.print(f"kernels compiled in {time.perf_counter() - t0:.0f} s (cached for the next runs)")
    n = pl.layout.n_cells
    cells = np.unique(np.linspace(0, n - 1, max(1, min(args.plot_cells, n))).astype(int))
    rec = Recorder(pl, cells, every_s=60.0)
    chunk = 600.0
    total = args.hours * 3600.0
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[sim_h]:.1f} h"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(f"{cfg.name}: {n} cells", total=total, sim_h=0.0)
        rec.sample()
        while pl.t_s < total - 1e-9:
            step = min(chunk, total - pl.t_s)
            for _ in range(int(round(step / 60.0)) or 1):
                pl.advance(min(60.0, step))
                rec.sample()
            progress.update(task, completed=pl.t_s, sim_h=pl.t_s / 3600.0)
    summary = summarise(pl, pl.t_s / 3600.0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "summary.json", summary)
    names = [pl.layout.cell_name(int(k)) for k in cells]
    fig_cells, fig_lines = _plots(rec.arrays(), names)
    rep = Report(f"Offline run: {cfg.name}", subtitle=f"{n} cells, {summary['hours']:.1f} h, seed {pl.seed}")
    sec = rep.section("Summary")
    sec.kv({k: v for k, v in summary.items() if not isinstance(v, list)})
    rep.section("Cells").figure(fig_cells, name="cells", caption="voltage, alumina, temperature and ACD")
    rep.section("Lines").figure(fig_lines, name="lines", caption="line current per rectifier")
    html = rep.write(out)
    md = ["| quantity | value |", "|---|---|"] + [
        f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
        for k, v in summary.items()
        if isinstance(v, (int, float, str)) and k not in ("plant", "cells")
    ]
    (out / "summary.md").write_text("\n".join(md) + "\n")
    console.print(
        f"{summary['production_t_per_day']:.1f} t/day ({summary['production_t_per_year'] / 1000:.1f} kt/a), "
        f"{summary['specific_energy_kwh_per_kg']:.2f} kWh/kg, CE {summary['current_efficiency']:.3f}, "
        f"{summary['anode_effects']} AEs ({summary['ae_per_pot_day']:.3f}/pot-day, "
        f"{summary['ae_mean_duration_s']:.0f} s mean), PFC {summary['pfc_co2e_t']:.2f} t CO2e; validity: "
        f"{summary['cells_outside_validity_ever']} cells left the model's range "
        f"({100 * summary['cell_time_outside_validity']:.2f} % of cell-time; {summary['validity_flags_raised']})"
    )
    console.print(f"report: {html}")
    return 0


if __name__ == "__main__":
    sys.exit(main(argparse.ArgumentParser().parse_args()))
