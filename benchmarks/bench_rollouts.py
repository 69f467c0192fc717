"""Rollouts for the planner (issue 18 item 5): coarse sub-step error, and speed beside today's kernel.

Two parts, both in one run:

* **step error**: K scenarios of 48 h on the reference plant (660 cells, exchangers of 80 kW
  installed) — nominal current; ±10 % for 24 h; ±25 % for 12 h; 80 kW exchanger duty for 24 h;
  −25 % with the exchangers insulating; +25 % with them extracting — run with
  ``twin.rollouts.RolloutBatch`` at ``dt_s`` = 1 s and at coarser sub-steps. Each coarse run is
  compared with the 1 s run of the same scenario: plant energy and metal, the scenario's energy
  and metal change against the nominal scenario, AE count, and per cell the bath temperature,
  superheat, ledge and alumina at the end and the superheat extremes over the horizon. The
  same comparison of a 1 s run with other random streams (``noise_seed``) gives the noise
  floor: per-cell figures that differ that much between two noise histories at 1 s cannot be
  asked of a coarse step;
* **speed**: 64 rollouts × 48 h × 660 cells with ``RolloutBatch`` at 1 s (a shorter horizon,
  extrapolated linearly: said so in the result) and at the chosen coarse step (the full 48 h),
  beside today's kernel (``Potline.advance`` at 1 s, the measured kernel choice) timed in the
  same run, round-robin; cell-steps/s, wall time, ratios; load average before and after.

``--quick``: a 48-cell plant, 2 h, a few rollouts (CI: proves it runs; figures not meaningful).

    python -m benchmarks.bench_rollouts [--quick] [--out benchmarks/results/bench_rollouts.json]
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from benchmarks.common import base_parser, fmt_rate, header, md_table, summarize, write_result

#: the issue's target: this many rollouts of this horizon of the reference plant within the wall time
TARGET_ROLLOUTS = 64
TARGET_HOURS = 48.0
TARGET_WALL_S = 60.0
STEP_S = 3600.0
STEP_S_QUICK = 600.0
#: a scenario's energy change against nominal is judged when it exceeds this share of the energy
DELTA_MIN_SHARE = 0.01
COARSE_DTS = (5.0, 10.0, 20.0, 30.0, 60.0)
HX_MAX_KW = 80.0
#: tolerances a coarse step must keep against 1 s for planning (the per-cell ones: or the
#: noise floor, whichever is larger: see the module docstring)
TOL = {
    "energy_rel": 0.005,  # plant energy over the horizon
    "metal_rel": 0.005,  # plant metal over the horizon
    "delta_energy_rel": 0.05,  # a scenario's energy change against nominal, share of the change
    "superheat_mean_k": 1.0,  # per cell at the end, mean |Δ|
    "superheat_extreme_mean_k": 1.0,  # per-cell min/max over the horizon, mean |Δ|
    "bath_temp_mean_k": 1.0,
    "ledge_mean_rel": 0.03,  # per cell at the end, mean |Δ|/ledge
    "alumina_mean_wt": 0.3,  # per cell at the end, mean |Δ| [wt %]
}


def plant_config(quick: bool) -> Any:
    """The reference plant (quick: 2 lines of 24 cells) with exchangers of ``HX_MAX_KW`` installed."""
    from potctl.offline import scaled_plant_config
    from twin.config import load_plant_config

    cfg = scaled_plant_config(24, n_lines=2, seed=0) if quick else load_plant_config()
    return cfg.model_copy(update={"cell": cfg.cell.model_copy(update={"heat_exchanger_max_kw": HX_MAX_KW})})


def scenarios(
    n_steps: int, n_lines: int, n_cells: int, nominal_ka: np.ndarray
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Names, current schedules [kA] ``[K, n_steps, n_lines]`` and exchanger duties [kW]
    ``[K, n_steps, n_cells]`` (NaN: leave) of the step-error scenarios; hours scale with the
    horizon (48 h: changes at 6–30 h and 12–24 h)."""
    h = np.arange(n_steps) / n_steps * 48.0
    long_ = (h >= 6.0) & (h < 30.0)
    short = (h >= 12.0) & (h < 24.0)
    defs = [
        ("nominal", 1.0, None, None),
        ("+10 % 6-30 h", 1.10, long_, None),
        ("-10 % 6-30 h", 0.90, long_, None),
        ("+25 % 12-24 h", 1.25, short, None),
        ("-25 % 12-24 h", 0.75, short, None),
        ("exchangers 80 kW 6-30 h", 1.0, None, ("x", long_)),
        ("-25 % 12-24 h, exchangers insulating", 0.75, short, ("i", short)),
        ("+25 % 12-24 h, exchangers 80 kW", 1.25, short, ("x", short)),
    ]
    k = len(defs)
    ka = np.repeat(np.repeat(nominal_ka[None, None, :], n_steps, axis=1), k, axis=0).astype(float)
    hx = np.zeros((k, n_steps, n_cells))
    names = []
    for r, (name, f, when, ex) in enumerate(defs):
        names.append(name)
        if when is not None:
            ka[r, when, :] *= f
        if ex is not None:
            mode, on = ex
            hx[r, on, :] = HX_MAX_KW if mode == "x" else -HX_MAX_KW
    return names, ka, hx


def _cell_stats(a: np.ndarray, b: np.ndarray, rel: bool = False) -> dict[str, float]:
    """Mean, 95th percentile and max of |a − b| (rel: / |b|) over cells and scenarios."""
    d = np.abs(a - b)
    if rel:
        d = d / np.maximum(np.abs(b), 1e-9)
    return {"mean": float(d.mean()), "p95": float(np.percentile(d, 95)), "max": float(d.max())}


def compare(coarse: Any, fine: Any) -> dict[str, Any]:
    """Errors of one set of rollouts against the 1 s set (same scenarios)."""
    de_c = coarse.energy_kwh[1:] - coarse.energy_kwh[0]
    de_f = fine.energy_kwh[1:] - fine.energy_kwh[0]
    judged = np.abs(de_f) > DELTA_MIN_SHARE * fine.energy_kwh[0]
    dm_c = coarse.metal_kg[1:] - coarse.metal_kg[0]
    dm_f = fine.metal_kg[1:] - fine.metal_kg[0]
    sh_ext = np.concatenate([coarse.superheat_min_k, coarse.superheat_max_k])
    sh_ext_f = np.concatenate([fine.superheat_min_k, fine.superheat_max_k])
    return {
        "energy_rel": [float(x) for x in (coarse.energy_kwh / fine.energy_kwh - 1.0)],
        "metal_rel": [float(x) for x in (coarse.metal_kg / fine.metal_kg - 1.0)],
        "delta_energy_rel": [float(x) for x in (de_c - de_f) / np.maximum(np.abs(de_f), 1e-9)],
        "delta_energy_judged": [bool(x) for x in judged],
        "delta_energy_kwh": [float(x) for x in de_c],
        "delta_metal_kg": [float(x) for x in dm_c],
        "delta_metal_rel": [float(x) for x in (dm_c - dm_f) / np.maximum(np.abs(dm_f), 1e-9)],
        "ae_count": [int(x) for x in coarse.ae_count],
        "cf4_kg": [float(x) for x in coarse.cf4_kg],
        "cells_invalid": [int(x) for x in np.count_nonzero(coarse.validity_flags, axis=1)],
        "superheat_k": _cell_stats(coarse.superheat_k, fine.superheat_k),
        "superheat_extreme_k": _cell_stats(sh_ext, sh_ext_f),
        "bath_temp_k": _cell_stats(coarse.bath_temp_c, fine.bath_temp_c),
        "ledge_rel": _cell_stats(coarse.ledge_cm, fine.ledge_cm, rel=True),
        "ledge_min_rel": _cell_stats(coarse.ledge_min_cm, fine.ledge_min_cm, rel=True),
        "alumina_wt": _cell_stats(coarse.alumina_wt_pct, fine.alumina_wt_pct),
    }


def verdict(err: dict[str, Any], floor: dict[str, Any]) -> dict[str, bool]:
    """Which tolerances ``err`` keeps (per-cell ones: against max(tolerance, noise floor))."""

    def cell(key: str, tol: float) -> bool:
        return err[key]["mean"] <= max(tol, floor[key]["mean"])

    big = [i for i, x in enumerate(err["delta_energy_judged"]) if x]
    return {
        "energy": max(abs(x) for x in err["energy_rel"]) <= TOL["energy_rel"],
        "metal": max(abs(x) for x in err["metal_rel"]) <= TOL["metal_rel"],
        "delta_energy": all(
            abs(err["delta_energy_rel"][i]) <= max(TOL["delta_energy_rel"], abs(floor["delta_energy_rel"][i]))
            for i in big
        ),
        "superheat": cell("superheat_k", TOL["superheat_mean_k"]),
        "superheat_extreme": cell("superheat_extreme_k", TOL["superheat_extreme_mean_k"]),
        "bath_temp": cell("bath_temp_k", TOL["bath_temp_mean_k"]),
        "ledge": cell("ledge_rel", TOL["ledge_mean_rel"]),
        "alumina": cell("alumina_wt", TOL["alumina_mean_wt"]),
    }


def step_error(quick: bool) -> dict[str, Any]:
    """The coarse sub-steps against 1 s on the step-error scenarios (module docstring)."""
    from twin.potline import Potline
    from twin.rollouts import RolloutBatch

    cfg = plant_config(quick)
    plant = Potline(cfg, seed=0, kernel="serial")
    step_s = STEP_S_QUICK if quick else STEP_S
    n_steps = int((2.0 if quick else TARGET_HOURS) * 3600.0 / step_s)
    names, ka, hx = scenarios(n_steps, plant.layout.n_lines, plant.layout.n_cells, plant.layout.nominal_current_ka)
    dts = (10.0, 30.0) if quick else COARSE_DTS
    runs: dict[str, Any] = {}
    wall: dict[str, float] = {}
    t0 = time.perf_counter()
    fine = RolloutBatch(plant, step_s=step_s, dt_s=1.0).run(ka, hx)
    wall["1"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    other = RolloutBatch(plant, step_s=step_s, dt_s=1.0, noise_seed=12345).run(ka, hx)
    wall["1_other_noise"] = time.perf_counter() - t0
    floor = compare(other, fine)
    for dt in dts:
        t0 = time.perf_counter()
        res = RolloutBatch(plant, step_s=step_s, dt_s=dt).run(ka, hx)
        wall[f"{dt:g}"] = time.perf_counter() - t0
        runs[f"{dt:g}"] = compare(res, fine)
        runs[f"{dt:g}"]["keeps"] = verdict(runs[f"{dt:g}"], floor)
    ok = [dt for dt in dts if all(runs[f"{dt:g}"]["keeps"].values())]
    return {
        "cells": plant.layout.n_cells,
        "hours": n_steps * step_s / 3600.0,
        "step_s": step_s,
        "scenarios": names,
        "fine_1s": {
            "energy_kwh": [float(x) for x in fine.energy_kwh],
            "metal_kg": [float(x) for x in fine.metal_kg],
            "ae_count": [int(x) for x in fine.ae_count],
            "cells_invalid": [int(x) for x in np.count_nonzero(fine.validity_flags, axis=1)],
        },
        "noise_floor_1s": floor,
        "coarse": runs,
        "tolerances": TOL,
        "coarsest_within_tolerance_s": max(ok) if ok else None,
        "wall_s": wall,
    }


def speed(quick: bool, coarse_dt: float, repeats: int) -> dict[str, Any]:
    """64 rollouts × 48 h (quick: 4 × 2 h) at 1 s (extrapolated) and at ``coarse_dt``, beside
    ``Potline.advance`` at 1 s, round-robin."""
    import numba

    from twin.potline import Potline
    from twin.rollouts import RolloutBatch

    cfg = plant_config(quick)
    plant = Potline(cfg, seed=0)
    n, nl = plant.layout.n_cells, plant.layout.n_lines
    k_roll = 4 if quick else TARGET_ROLLOUTS
    hours = 2.0 if quick else TARGET_HOURS
    n_steps = int(hours * 3600.0 / STEP_S)
    rng = np.random.default_rng(0)
    nominal = plant.layout.nominal_current_ka
    # random piecewise-constant schedules within ±25 % of nominal, as a planner would try
    ka = nominal[None, None, :] * rng.uniform(0.75, 1.25, size=(k_roll, n_steps, nl))
    short_s = 120.0 if quick else 600.0  # the 1 s horizon actually run (extrapolated to `hours`)
    fine = RolloutBatch(plant, step_s=short_s, dt_s=1.0)
    coarse = RolloutBatch(plant, step_s=STEP_S, dt_s=coarse_dt)
    ka_short = ka[:, :1, :]
    today_s = 600.0 if quick else 3600.0
    plant.advance(60.0)  # warm up (kernel choice, compile)
    fine.run(ka_short)
    coarse.run(ka[:, :1, :])
    times: dict[str, list[float]] = {"today": [], "rollouts_1s": [], "rollouts_coarse": []}
    load_before = os.getloadavg()
    for rep in range(repeats):
        order = ["today", "rollouts_1s", "rollouts_coarse"]
        order = order[rep % 3 :] + order[: rep % 3]
        for what in order:
            t0 = time.perf_counter()
            if what == "today":
                plant.advance(today_s)
            elif what == "rollouts_1s":
                fine.run(ka_short)
            else:
                coarse.run(ka)
            times[what].append(time.perf_counter() - t0)
    load_after = os.getloadavg()
    cs_today = n * today_s
    cs_fine = k_roll * n * short_s
    cs_coarse = k_roll * n * hours * 3600.0 / coarse_dt
    full = k_roll * n * hours * 3600.0  # cell-steps of the whole task at 1 s
    rate = {
        "today": [cs_today / t for t in times["today"]],
        "rollouts_1s": [cs_fine / t for t in times["rollouts_1s"]],
        "rollouts_coarse": [cs_coarse / t for t in times["rollouts_coarse"]],
    }
    wall_fine_extrap = [t * full / cs_fine for t in times["rollouts_1s"]]
    wall_today_extrap = [t * full / cs_today for t in times["today"]]
    ratios_1s = [a / b for a, b in zip(rate["rollouts_1s"], rate["today"], strict=True)]
    speedup_task = [a / b for a, b in zip(wall_today_extrap, times["rollouts_coarse"], strict=True)]
    return {
        "threads": numba.get_num_threads(),
        "cells": n,
        "rollouts": k_roll,
        "hours": hours,
        "coarse_dt_s": coarse_dt,
        "cell_steps_task_at_1s": full,
        "today_kernel": plant.kernel_stats().get("current"),
        "cell_steps_per_s": {k: summarize(v) for k, v in rate.items()},
        "wall_s": {
            "rollouts_1s_extrapolated": summarize(wall_fine_extrap),
            "rollouts_1s_extrapolated_from_s": short_s,
            "today_kernel_extrapolated": summarize(wall_today_extrap),
            "rollouts_coarse": summarize(times["rollouts_coarse"]),
        },
        "ratio_rollouts_1s_vs_today_rate": summarize(ratios_1s),
        "ratio_task_today_1s_vs_rollouts_coarse_wall": summarize(speedup_task),
        "target": {
            "wall_s": TARGET_WALL_S,
            "met": bool(np.median(times["rollouts_coarse"]) <= TARGET_WALL_S) if not quick else None,
        },
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
    }


def markdown(doc: dict[str, Any]) -> str:
    """Short summary next to the JSON."""
    se, sp = doc["step_error"], doc["speed"]
    lines = [
        f"# Rollouts for the planner ({'quick' if doc['quick'] else 'full'}, {doc['when']})",
        "",
        f"Step error: {len(se['scenarios'])} scenarios × {se['hours']:g} h × {se['cells']} cells, against dt_s = 1 s "
        f"(noise floor: 1 s with other random streams). Coarsest step within tolerance: "
        + (
            f"{se['coarsest_within_tolerance_s']:g} s."
            if se["coarsest_within_tolerance_s"]
            else "none of the steps tried "
            "(`twin.rollouts.PLANNING_DT_S` = 5 s is for screening only; a plan is checked at 1 s)."
        ),
        "",
    ]
    rows = []
    for key, e in [("1 s, other noise", se["noise_floor_1s"])] + [(f"{k} s", v) for k, v in se["coarse"].items()]:
        rows.append(
            [
                key,
                f"{max(abs(x) for x in e['energy_rel']) * 100:.3f}",
                f"{max(abs(x) for x in e['metal_rel']) * 100:.3f}",
                _judged_max(e),
                f"{e['superheat_k']['mean']:.2f} / {e['superheat_k']['p95']:.2f}",
                f"{e['superheat_extreme_k']['mean']:.2f}",
                f"{e['ledge_rel']['mean'] * 100:.2f} / {e['ledge_rel']['p95'] * 100:.2f}",
                f"{e['alumina_wt']['mean']:.3f} / {e['alumina_wt']['p95']:.3f}",
                f"{sum(e['ae_count'])}",
                "yes" if all(e.get("keeps", {"": True}).values()) else "no",
            ]
        )
    lines += md_table(
        [
            "dt",
            "energy max abs. error %",
            "metal max abs. error %",
            "Δenergy vs nominal, max abs. error % (changes > 1 %)",
            "superheat end, abs. Δ mean / p95 K",
            "superheat min/max, abs. Δ mean K",
            "ledge, abs. Δ mean / p95 %",
            "alumina, abs. Δ mean / p95 wt %",
            "AEs (all scenarios)",
            "within tolerance",
        ],
        rows,
    ).splitlines()
    lines += [
        "",
        f"1 s AEs (all scenarios): {sum(se['fine_1s']['ae_count'])}.",
        "",
        f"Speed ({sp['threads']} threads, load {sp['loadavg_before']} → {sp['loadavg_after']}): "
        f"{sp['rollouts']} rollouts × {sp['hours']:g} h × {sp['cells']} cells.",
        "",
    ]
    cs, w = sp["cell_steps_per_s"], sp["wall_s"]
    lines += md_table(
        ["run", "cell-steps/s (median)", "wall for the task [s] (median)"],
        [
            [
                "today: Potline.advance, 1 s (extrapolated)",
                fmt_rate(cs["today"]["median"]),
                f"{w['today_kernel_extrapolated']['median']:.0f}",
            ],
            [
                f"RolloutBatch, 1 s (extrapolated from {w['rollouts_1s_extrapolated_from_s']:g} s)",
                fmt_rate(cs["rollouts_1s"]["median"]),
                f"{w['rollouts_1s_extrapolated']['median']:.0f}",
            ],
            [
                f"RolloutBatch, {sp['coarse_dt_s']:g} s (run in full)",
                fmt_rate(cs["rollouts_coarse"]["median"]),
                f"{w['rollouts_coarse']['median']:.1f}",
            ],
        ],
    ).splitlines()
    lines += [
        "",
        f"Rate ratio RolloutBatch 1 s / today: {sp['ratio_rollouts_1s_vs_today_rate']['median']:.2f}; "
        f"task wall today (1 s) / RolloutBatch ({sp['coarse_dt_s']:g} s): "
        f"{sp['ratio_task_today_1s_vs_rollouts_coarse_wall']['median']:.0f}×.",
    ]
    return "\n".join(lines)


def _judged_max(e: dict[str, Any]) -> str:
    """Largest |error| [%] of the judged energy changes against nominal (n/a: none judged)."""
    xs = [abs(x) for x, j in zip(e["delta_energy_rel"], e["delta_energy_judged"], strict=True) if j]
    return f"{max(xs) * 100:.2f}" if xs else "n/a"


def run(quick: bool, coarse_dt: float | None = None, repeats: int = 3) -> dict[str, Any]:
    """Both parts; the speed part at ``coarse_dt`` or else the coarsest step within tolerance."""
    t0 = time.perf_counter()
    doc = header("bench_rollouts", quick)
    doc["step_error"] = step_error(quick)
    dt = coarse_dt or doc["step_error"]["coarsest_within_tolerance_s"] or 10.0  # none: 10 s
    doc["speed"] = speed(quick, dt, repeats=1 if quick else repeats)
    doc["elapsed_s"] = round(time.perf_counter() - t0, 1)
    return doc


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0], "bench_rollouts")
    p.add_argument("--coarse-dt", type=float, default=None, help="sub-step of the speed part [s] (default: chosen)")
    p.add_argument("--repeats", type=int, default=3, help="round-robin repeats of the speed part")
    args = p.parse_args(argv)
    doc = run(args.quick, args.coarse_dt, args.repeats)
    write_result(doc, args.out, markdown(doc))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
