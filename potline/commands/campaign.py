"""``potline campaign``: many refining cycles in parallel, locally or on Dask.

Scenarios combine a parameter spread around the config, scrap grades and setpoint
policies; each runs one full cycle to its breakthrough end. Runs on a local process
pool by default, on a Dask distributed cluster with ``--scheduler tcp://host:8786``
(docs/operations.md, "Refining pots": start ``dask scheduler`` and ``dask worker``
processes anywhere the package is installed). Results: one Parquet row per cycle
(``--out``) with the provenance (config hash, seed, code version, scheduler) in the
file's metadata and ``<out>.provenance.json``, plus ``summary.html`` / ``summary.json``
next to it unless ``--no-report``. Trips (cycles stopped on temperature or anode
density) and their causes are printed and reported, as are cycles that reach the timer.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from twin.resources import config_dir

DEFAULT_CONFIG = config_dir() / "refining_3ka.toml"
DEFAULT_POLICIES = "nominal,high_current,low_current,hot_trim"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="refining pot config TOML (default: %(default)s)")
    parser.add_argument("--cycles", type=int, default=1000, help="number of cycles/scenarios (default: %(default)s)")
    parser.add_argument(
        "--policies", default=DEFAULT_POLICIES, help="comma-separated policy presets (default: %(default)s)"
    )
    parser.add_argument("--grades", default="", help="comma-separated scrap grades (default: all in the config)")
    parser.add_argument(
        "--spread", type=float, default=0.05, help="relative std of parameter factors (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=1, help="campaign seed (default: %(default)s)")
    parser.add_argument(
        "--dt", type=float, default=600.0, help="integration step [s] (default: %(default)s, the fast path)"
    )
    parser.add_argument("--batch-size", type=int, default=250, help="cycles per task (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None, help="local worker processes (default: CPU count)")
    parser.add_argument("--scheduler", default=None, help="Dask scheduler address, e.g. tcp://10.0.0.5:8786")
    parser.add_argument(
        "--out", default="out/campaign/results.parquet", help="results file .parquet/.csv (default: %(default)s)"
    )
    parser.add_argument("--no-report", action="store_true", help="skip summary.html/summary.json")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    import importlib.util
    import time

    missing = [m for m in ("pandas", "pyarrow", "distributed") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"potline campaign: needs {', '.join(missing)}: pip install 'potline-twin[campaign]'", file=sys.stderr)
        return 2

    from refining.campaign import CampaignSpec, run_campaign, summarize, trips_table
    from refining.config import RefiningConfigError, load_refining_config
    from refining.controller import RefiningPolicy, policy_presets

    try:
        cfg = load_refining_config(args.config)
    except RefiningConfigError as exc:
        print(f"potline campaign: {exc}", file=sys.stderr)
        return 2
    presets = policy_presets(cfg)
    names = [p.strip() for p in args.policies.split(",") if p.strip()]
    bad = [p for p in names if p not in presets]
    if bad or not names:
        print(
            f"potline campaign: --policies: unknown {', '.join(bad) or '(none given)'}; known: {', '.join(presets)}",
            file=sys.stderr,
        )
        return 2
    grades = tuple(g.strip() for g in args.grades.split(",") if g.strip())
    unknown = [g for g in grades if g not in cfg.scrap.grades]
    if unknown:
        print(
            f"potline campaign: --grades: unknown {', '.join(unknown)}; known: {', '.join(cfg.scrap.grades)}",
            file=sys.stderr,
        )
        return 2
    try:
        spec = CampaignSpec(
            n_cycles=args.cycles,
            policies=tuple(presets[n] for n in names),
            grades=grades,
            spread=args.spread,
            seed=args.seed,
            dt_s=args.dt,
            control_period_s=max(cfg.operation.control_period_s, args.dt),
            batch_size=args.batch_size,
        )
    except ValueError as exc:
        print(f"potline campaign: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        df = run_campaign(
            cfg,
            spec,
            RefiningPolicy,
            scheduler=args.scheduler,
            workers=args.workers,
            progress=not args.no_progress,
            out=args.out,
            config_path=args.config,
        )
    except OSError as exc:
        print(f"potline campaign: cannot reach scheduler or write results: {exc}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - t0
    summ = summarize(df)
    trips = trips_table(df)
    prov = df.attrs["provenance"]
    print(f"{len(df)} cycles in {wall:.1f} s ({len(df) / wall:.0f} cycles/s, {prov['scheduler']}) -> {args.out}")
    print(summ.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    n_trips = int(df["trip"].sum())
    if n_trips:
        print(f"{n_trips} cycle(s) tripped (stopped on a process limit before the end of their cycle):")
        for _, r in trips.iterrows():
            print(f"  {r['cycles']} {r['cause']} within {r['days_min']:.1f}–{r['days_max']:.1f} d"
                  f" (max {r['t_high_c_max']:.0f} °C, min {r['t_low_c_min']:.0f} °C): {r['policies']};"
                  f" scenarios {r['scenarios']}")  # fmt: skip
    else:
        print("no trips: no cycle stopped on temperature or anode density")
    timer = df[df["end_reason"] == "timer"]
    if len(timer):
        by = timer.groupby(["policy", "grade"]).size().sort_values(ascending=False)
        print(f"{len(timer)} cycle(s) reached the {cfg.limits.max_days:g} d timer without breakthrough: "
              + ", ".join(f"{p} × {g}: {n}" for (p, g), n in by.items()))  # fmt: skip
    print(f"provenance: config {prov['config_sha256'][:12]}, seed {prov['seed']}, code {prov['code_version']}")
    if not args.no_report:
        write_summary(df, summ, cfg, Path(args.out).parent, wall, vars(args), trips=trips)
    return 0


def write_summary(df, summ, cfg, out_dir: Path, wall_s: float, argv: dict, trips=None) -> Path:
    """summary.html (tables + plots) and summary.json for a campaign."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from potline.report import Report, write_json

    rep = Report("Refining campaign", subtitle=f"{cfg.pot.name}: {len(df)} cycles in {wall_s:.1f} s")
    s = rep.section("Summary by policy and scrap grade")
    s.table(summ)
    reasons = df["end_reason"].value_counts().rename_axis("end_reason").reset_index(name="cycles")
    s.table(reasons, caption="How cycles ended")
    fig, ax = plt.subplots(figsize=(9, 4))
    for name, g in df.groupby("policy"):
        ax.scatter(g["days"], g["dc_kwh_per_kg"], s=6, alpha=0.6, label=name)
    ax.axvspan(40, 45, color="green", alpha=0.08, label="seed 40–45 d")
    ax.set_xlabel("cycle length [d]")
    ax.set_ylabel("DC energy [MWh/t]")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    s.figure(fig, name="days-energy", caption="Cycle length vs DC specific energy")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(9, 3.5))
    for name, g in df.groupby("grade"):
        ax.hist(g["days"], bins=30, alpha=0.5, label=name)
    ax.set_xlabel("cycle length [d]")
    ax.set_ylabel("cycles")
    ax.legend(fontsize=8)
    s.figure(fig, name="days-hist", caption="Cycle length by scrap grade")
    plt.close(fig)
    from refining.campaign import trips_table

    trips = trips_table(df) if trips is None else trips
    s = rep.section("Trips")
    n_trips = int(df["trip"].sum())
    if n_trips:
        s.badge(f"{n_trips} TRIP(S)", "bad")
        s.text(
            "Cycles that stopped on a process limit before their refining cycle ended: temperature out of the pot's "
            "range, or the anode alloy no longer denser than the electrolyte."
        )
        s.table(trips, caption="Trip causes: cycles, when (days), policy × grade, first scenarios")
        s.table(
            df[df["trip"]][["scenario", "policy", "grade", "days", "trip_cause", "t_high_c", "t_low_c"]].head(100),
            caption="Tripped cycles (first 100)",
        )
    else:
        s.badge("NO TRIPS", "ok")
    prov = df.attrs.get("provenance", {})
    s = rep.section("Provenance")
    s.kv(
        {
            "config sha256 (validated content)": prov.get("config_sha256"),
            "config file": prov.get("config_file"),
            "config file sha256": prov.get("config_file_sha256"),
            "seed": prov.get("seed"),
            "code version": prov.get("code_version"),
            "scheduler": prov.get("scheduler"),
            "created (UTC)": prov.get("created_utc"),
            "throughput": f"{len(df) / wall_s:.1f} cycles/s",
        }
    )
    s = rep.section("Run")
    s.kv({k: str(v) for k, v in argv.items() if not k.startswith("_")})
    path = rep.write(out_dir / "summary.html")
    write_json(
        out_dir / "summary.json",
        {
            "cycles": len(df),
            "wall_s": wall_s,
            "cycles_per_s": len(df) / wall_s if wall_s > 0 else None,
            "summary": summ.to_dict(orient="records"),
            "end_reasons": reasons.to_dict(orient="records"),
            "trips": {"cycles": n_trips, "causes": trips.to_dict(orient="records")},
            "provenance": prov,
        },
    )
    return path
