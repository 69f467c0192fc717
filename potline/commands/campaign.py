"""``potline campaign``: many refining cycles in parallel, locally or on Dask.

Scenarios combine a parameter spread around the config, scrap grades and setpoint
policies; each runs one full cycle to its breakthrough end. Runs on a local process
pool by default, on a Dask distributed cluster with ``--scheduler tcp://host:8786``.
Results: one Parquet row per cycle (``--out``), plus ``summary.html`` / ``summary.json``
next to it unless ``--no-report``.
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

    from refining.campaign import CampaignSpec, run_campaign, summarize
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
        )
    except OSError as exc:
        print(f"potline campaign: cannot reach scheduler or write results: {exc}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - t0
    summ = summarize(df)
    print(f"{len(df)} cycles in {wall:.1f} s -> {args.out}")
    print(summ.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    if not args.no_report:
        write_summary(df, summ, cfg, Path(args.out).parent, wall, vars(args))
    return 0


def write_summary(df, summ, cfg, out_dir: Path, wall_s: float, argv: dict) -> Path:
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
    s = rep.section("Run")
    s.kv({k: str(v) for k, v in argv.items() if not k.startswith("_")})
    path = rep.write(out_dir / "summary.html")
    write_json(
        out_dir / "summary.json",
        {
            "cycles": len(df),
            "wall_s": wall_s,
            "summary": summ.to_dict(orient="records"),
            "end_reasons": reasons.to_dict(orient="records"),
        },
    )
    return path
