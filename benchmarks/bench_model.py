"""Model benchmark (issue #2): full cell model throughput, against NumPy and pure Python, compile cost.

Figures, all measured in the same run so they can be compared as ratios:

* **throughput** [cell-steps/s, one cell-step = one cell over one 1 s sub-step incl. its
  share of the circuit/rectifier solution] of ``twin.potline.Potline.advance`` with the
  serial kernel and the parallel one (cells, or whole lines, shared out over the threads), and of the plain
  vectorised NumPy version of the same equations (``benchmarks/numpy_reference.py``),
  for plants of 132 … 10,000 cells. Repeats run round-robin (serial, parallel, NumPy
  in turn, start rotated each round) so load from other processes hits all three alike;
  ratios are taken per round and summarised;
* **pure Python**: the same twin source with ``NUMBA_DISABLE_JIT=1`` in a subprocess
  (few cells, few steps; its cost is linear in cells, so the rate per cell-step is
  compared with the compiled rates);
* **compile**: a fresh process importing the twin, building the 660-cell reference plant and
  making the first calls of every kernel, with a fresh temporary Numba cache ("cold"),
  then again with the cache it left ("warm"); compile cost = first call − steady call;
* **real time**: simulated seconds per wall second of the 660-cell reference plant.

Plants: 132 and 264 cells = ``PlantConfig.single_room`` (one line: the parallel kernel has
one line to run, so it is the serial one); 660 = the reference plant (3 lines of 264/264/132
cells); larger = lines of 264 cells (two potrooms of 132, the reference plant's line) with
the reference rectifier, the last line shorter — e.g. 10,000 = 37 × 264 + 232 (38 lines).

    python -m benchmarks.bench_model [--quick] [--out benchmarks/results/model.json]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from benchmarks.common import (
    REPO,
    base_parser,
    child_env,
    fmt_rate,
    header,
    md_table,
    summarize,
    write_result,
)

SIZES_FULL = (132, 264, 660, 1320, 2640, 5280, 10000)
SIZES_QUICK = (132, 660)
LINE_CELLS = 264
REFERENCE_CELLS = 660
#: issue #2 targets
TARGET_RATE = 5e6  # cell-steps/s on 2 cores, full model
TARGET_VS_NUMPY = 3.0
TARGET_REAL_TIME = 1000.0  # 660-cell plant, simulated s per wall s
TARGET_WARM_SHARE = 0.1  # a later start pays at most this share of the cold compile cost


# ---------------------------------------------------------------------------- plants


def plant_config(n_cells: int):
    """(config, description) of the benchmark plant with ``n_cells`` cells (module docstring)."""
    from twin.config import PlantConfig, load_plant_config

    ref = load_plant_config()
    if n_cells == REFERENCE_CELLS:
        return ref, "reference plant (config/plant_reference.toml): 3 lines of 264/264/132 cells"
    if n_cells <= LINE_CELLS:
        return PlantConfig.single_room(n_cells), f"PlantConfig.single_room({n_cells}): one line"
    data = ref.model_dump()
    rect = data["lines"][0]["rectifier"]
    lines, left = [], n_cells
    while left > 0:
        cells = min(LINE_CELLS, left)
        i = len(lines) + 1
        rooms = [{"name": f"L{i}R1", "cells": min(132, cells)}]
        if cells > 132:
            rooms.append({"name": f"L{i}R2", "cells": cells - 132})
        lines.append({"name": f"Line{i}", "rectifier": rect, "rooms": rooms})
        left -= cells
    data["lines"] = lines
    data["name"] = f"Bench{n_cells}"
    sizes = [sum(r["cells"] for r in ln["rooms"]) for ln in lines]
    desc = f"{len(lines)} lines of {LINE_CELLS} cells" + (f" (last {sizes[-1]})" if sizes[-1] != LINE_CELLS else "")
    return PlantConfig.model_validate(data), desc + " with the reference rectifier"


# ---------------------------------------------------------------------------- throughput


def _rate_of(engine, n: int, steps: int, cpu: list[float] | None = None, per_cpu: list[float] | None = None) -> float:
    """Cell-steps/s of one ``advance``; appends the cores it kept busy (process CPU / wall) to
    ``cpu`` and the cell-steps per CPU-second to ``per_cpu``."""
    c0, t0 = time.process_time(), time.perf_counter()
    engine.advance(float(steps))
    wall = time.perf_counter() - t0
    used = time.process_time() - c0
    if cpu is not None:
        cpu.append(used / wall)
    if per_cpu is not None and used > 0:
        per_cpu.append(n * steps / used)
    return n * steps / wall


def throughput(n_cells: int, repeats: int, target_s: float) -> dict[str, Any]:
    """Serial, parallel and NumPy rates [cell-steps/s] for one plant, round-robin repeats."""
    import numba

    from benchmarks.numpy_reference import NumpyPotline
    from twin.potline import LINES_BALANCE_MIN, Potline

    cfg, desc = plant_config(n_cells)
    t0 = time.perf_counter()
    serial = Potline(cfg, parallel=False)
    build_s = time.perf_counter() - t0
    parallel = Potline(cfg, parallel=True)
    numpy_ref = NumpyPotline.from_potline(serial, rng="numpy", seed=cfg.seed)
    n = serial.layout.n_cells
    balance = parallel.lines_balance(numba.get_num_threads())
    engines = {"numba_serial": serial, "numba_parallel": parallel, "numpy": numpy_ref}
    steps = {}
    for name, eng in engines.items():  # warm-up, then size each repeat to about target_s
        eng.advance(2.0)
        probe = 3 if name == "numpy" else 20
        rate = _rate_of(eng, n, probe)
        steps[name] = int(min(max(target_s * rate / n, 3), 20000))
    rates: dict[str, list[float]] = {k: [] for k in engines}
    cores: dict[str, list[float]] = {k: [] for k in engines}
    per_cpu: dict[str, list[float]] = {k: [] for k in engines}
    names = list(engines)
    load0 = os.getloadavg()[0]
    for r in range(repeats):
        for j in range(len(names)):
            name = names[(r + j) % len(names)]
            rates[name].append(_rate_of(engines[name], n, steps[name], cores[name], per_cpu[name]))
    ratio = {
        "numba_serial_over_numpy": [s / p for s, p in zip(rates["numba_serial"], rates["numpy"], strict=False)],
        "numba_parallel_over_numpy": [s / p for s, p in zip(rates["numba_parallel"], rates["numpy"], strict=False)],
        "parallel_over_serial": [s / p for s, p in zip(rates["numba_parallel"], rates["numba_serial"], strict=False)],
        "numba_serial_over_numpy_per_cpu_s": [
            s / p for s, p in zip(per_cpu["numba_serial"], per_cpu["numpy"], strict=False)
        ],
    }
    return {
        "cells": n,
        "lines": len(cfg.lines),
        "plant": desc,
        # the default kernel is chosen by measurement as the plant runs (twin/threads.py): say which one ran
        "parallel_kernel": parallel.kernel_stats().get("current") or "auto",
        "kernel_stats": parallel.kernel_stats(),
        "lines_balance": round(balance, 3),
        "lines_balance_min": LINES_BALANCE_MIN,
        "steps_per_repeat": steps,
        "build_s": round(build_s, 4),
        "cell_steps_per_s": {k: summarize(v, digits=4) for k, v in rates.items()},
        # process CPU time / wall time while running: ~2 for the parallel kernel on 2 free cores;
        # less means other processes held the cores (the machine is shared)
        "cores_busy": {k: summarize(v, digits=3) for k, v in cores.items()},
        # cell-steps per CPU-second: what one core delivers when it is not taken away; the
        # serial/NumPy ratio on this basis is the least sensitive to other jobs on the machine
        "cell_steps_per_cpu_s": {k: summarize(v, digits=4) for k, v in per_cpu.items()},
        "loadavg_1min_before_after": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "ratio": {k: summarize(v, digits=4) for k, v in ratio.items()},
    }


# ---------------------------------------------------------------------------- subprocess probes


def _probe_python(n_cells: int, steps: int, repeats: int) -> dict[str, Any]:
    """Child (NUMBA_DISABLE_JIT=1): interpreted twin rate [cell-steps/s]."""
    warnings.simplefilter("ignore")  # uint64 wrap-around warnings of the interpreted RNG
    import numba

    assert numba.config.DISABLE_JIT, "probe-python must run with NUMBA_DISABLE_JIT=1"
    from twin.config import PlantConfig
    from twin.potline import Potline

    p = Potline(PlantConfig.single_room(n_cells), parallel=False)
    p.advance(1.0)
    rates = [_rate_of(p, n_cells, steps) for _ in range(repeats)]
    return {"cells": n_cells, "steps_per_repeat": steps, "rates": rates}


def _probe_compile() -> dict[str, Any]:
    """Child: import + first calls of every kernel on the reference plant vs steady calls [s]."""
    t0 = time.perf_counter()
    import twin.potline as tp
    from twin.config import load_plant_config

    t_import = time.perf_counter() - t0
    cfg = load_plant_config()

    def timed(fn):
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    out: dict[str, Any] = {"import_s": t_import}
    holder: dict[str, Any] = {}
    first = {
        "construct": timed(lambda: holder.setdefault("s", tp.Potline(cfg, parallel=False))),
        "advance_serial": timed(lambda: holder["s"].advance(1.0)),
        "apply": timed(lambda: holder["s"].apply()),
    }
    holder["p"] = tp.Potline(cfg, parallel=True)
    first["advance_parallel"] = timed(lambda: holder["p"].advance(1.0))
    steady = {
        "construct": min(timed(lambda: tp.Potline(cfg, parallel=False)) for _ in range(2)),
        "advance_serial": min(timed(lambda: holder["s"].advance(1.0)) for _ in range(3)),
        "apply": min(timed(lambda: holder["s"].apply()) for _ in range(3)),
        "advance_parallel": min(timed(lambda: holder["p"].advance(1.0)) for _ in range(3)),
    }
    out["first_call_s"] = first
    out["steady_call_s"] = steady
    out["compile_s"] = {k: max(first[k] - steady[k], 0.0) for k in first}
    out["compile_total_s"] = sum(out["compile_s"].values())
    out["to_first_step_s"] = time.perf_counter() - t0
    out["numba_cache_dir"] = os.environ.get("NUMBA_CACHE_DIR")
    return out


def _run_child(args: list[str], env: dict[str, str], timeout: float = 600.0) -> tuple[dict[str, Any], float]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_model", *args], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"bench_model {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    last = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
    return json.loads(last), wall


def pure_python(quick: bool) -> dict[str, Any]:
    n, steps, repeats = (8, 2, 2) if quick else (16, 6, 3)
    res, wall = _run_child(["--probe-python", str(n), str(steps), str(repeats)], child_env(NUMBA_DISABLE_JIT="1"))
    return {
        "how": "twin source interpreted (NUMBA_DISABLE_JIT=1, subprocess), PlantConfig.single_room; "
        "rate per cell-step, compared with the compiled rates at every size",
        "cells": res["cells"],
        "steps_per_repeat": res["steps_per_repeat"],
        "cell_steps_per_s": summarize(res["rates"], digits=4),
        "process_wall_s": round(wall, 3),
    }


def compile_cost(quick: bool) -> dict[str, Any]:
    """Cold (fresh cache) and warm (same cache again) starts, ``rounds`` times each."""
    rounds = 1 if quick else 2
    cold, warm = [], []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(prefix="potline-bench-numba-") as base:
            env = child_env(POTLINE_NUMBA_CACHE_BASE=base)
            for bucket in (cold, warm):
                res, wall = _run_child(["--probe-compile"], env)
                res["process_wall_s"] = wall
                bucket.append(res)
            files = list(Path(base).rglob("*.nbi"))
            cold[-1]["cache_index_files"] = len(files)

    def fig(runs, key):
        return summarize([r[key] for r in runs], digits=4)

    out = {
        "how": "fresh process: import twin, build the 660-cell reference plant, first call of each kernel; "
        "cold = empty temporary POTLINE_NUMBA_CACHE_BASE, warm = the same process again on the cache the "
        "cold run left; compile = first call - steady call",
        "cold": {k: fig(cold, k) for k in ("compile_total_s", "to_first_step_s", "process_wall_s", "import_s")},
        "warm": {k: fig(warm, k) for k in ("compile_total_s", "to_first_step_s", "process_wall_s", "import_s")},
        "cold_by_kernel_s": {k: summarize([r["compile_s"][k] for r in cold], digits=4) for k in cold[0]["compile_s"]},
        "warm_by_kernel_s": {k: summarize([r["compile_s"][k] for r in warm], digits=4) for k in warm[0]["compile_s"]},
        "cache_index_files": cold[-1].get("cache_index_files"),
    }
    c, w = out["cold"]["compile_total_s"]["median"], out["warm"]["compile_total_s"]["median"]
    out["warm_share_of_cold"] = round(w / c, 4) if c > 0 else None
    return out


# ---------------------------------------------------------------------------- report


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue #2 targets: the figure, the bar, met or not (from medians)."""
    by_n = {t["cells"]: t for t in doc["throughput"]}
    out = []
    for n in sorted({REFERENCE_CELLS, max(by_n)} & set(by_n)):
        t = by_n[n]
        out.append({
            "target": f"full model >= 5 M cell-steps/s on 2 cores ({n} cells, parallel)",
            "cells": n,
            "measured": t["cell_steps_per_s"]["numba_parallel"]["median"],
            "best": t["cell_steps_per_s"]["numba_parallel"]["max"],
            "cores_busy": t["cores_busy"]["numba_parallel"]["median"],
            "unit": "cell-steps/s",
            "bar": TARGET_RATE,
            "met": t["cell_steps_per_s"]["numba_parallel"]["median"] >= TARGET_RATE,
        })  # fmt: skip
    for n in sorted({REFERENCE_CELLS, max(by_n)} & set(by_n)):
        t = by_n[n]
        best = max(t["ratio"]["numba_parallel_over_numpy"]["median"], t["ratio"]["numba_serial_over_numpy"]["median"])
        out.append({
            "target": f">= 3x the NumPy version ({n} cells, best Numba kernel)",
            "cells": n,
            "serial_per_cpu_s": t["ratio"].get("numba_serial_over_numpy_per_cpu_s", {}).get("median"),
            "measured": best,
            "unit": "x",
            "bar": TARGET_VS_NUMPY,
            "met": best >= TARGET_VS_NUMPY,
        })  # fmt: skip
    rt = doc.get("real_time_factor_660")
    if rt:
        out.append({
            "target": "660-cell plant >= 1,000x faster than real time",
            "measured": rt["parallel"]["median"],
            "unit": "x real time",
            "bar": TARGET_REAL_TIME,
            "met": rt["parallel"]["median"] >= TARGET_REAL_TIME,
        })  # fmt: skip
    comp = doc["compile"]
    if comp.get("warm_share_of_cold") is not None:
        out.append({
            "target": "compile cost removed on later starts by the cache (warm <= 10 % of cold)",
            "measured": comp["warm_share_of_cold"],
            "unit": "warm/cold",
            "bar": TARGET_WARM_SHARE,
            "met": comp["warm_share_of_cold"] <= TARGET_WARM_SHARE,
        })  # fmt: skip
    return out


def growth(doc: dict[str, Any]) -> dict[str, Any]:
    tp = doc["throughput"]
    py = doc["pure_python"]["cell_steps_per_s"]["median"]

    def series(key):
        return [[t["cells"], t["cell_steps_per_s"][key]["median"]] for t in tp]

    return {
        "model: Numba serial": {"unit": "cell-steps/s", "better": "higher", "points": series("numba_serial")},
        "model: Numba parallel": {"unit": "cell-steps/s", "better": "higher", "points": series("numba_parallel")},
        "model: NumPy": {"unit": "cell-steps/s", "better": "higher", "points": series("numpy")},
        "model: pure Python": {
            "unit": "cell-steps/s", "better": "higher", "points": [[t["cells"], py] for t in tp],
            "note": f"measured at {doc['pure_python']['cells']} cells, per cell-step",
        },
        "model: wall time per simulated second": {
            "unit": "ms", "better": "lower",
            "points": [[t["cells"], 1e3 * t["cells"] / t["cell_steps_per_s"]["numba_parallel"]["median"]] for t in tp],
        },
    }  # fmt: skip


def markdown(doc: dict[str, Any]) -> str:
    py = doc["pure_python"]["cell_steps_per_s"]["median"]
    rows = []
    for t in doc["throughput"]:
        r, q = t["cell_steps_per_s"], t["ratio"]
        rows.append([
            f"{t['cells']:,}", t["lines"], fmt_rate(r["numba_serial"]["median"]), fmt_rate(r["numba_parallel"]["median"]),
            fmt_rate(r["numpy"]["median"]), f"{q['numba_serial_over_numpy']['median']:.2f}x",
            f"{q['numba_parallel_over_numpy']['median']:.2f}x", f"{q['parallel_over_serial']['median']:.2f}x",
            f"{r['numba_parallel']['median'] / py:,.0f}x", f"{t['cores_busy']['numba_parallel']['median']:.2f}",
        ])  # fmt: skip
    c = doc["compile"]
    lines = [
        f"# Model benchmark{' (quick smoke run: figures not meaningful)' if doc['quick'] else ''}",
        "",
        f"{doc['when']} · {doc['machine']['cpu']} · {doc['machine']['cpus_usable']} cores · "
        f"load {doc['machine']['loadavg_1_5_15']} · numba {doc['versions']['numba']} · numpy {doc['versions']['numpy']}",
        "",
        "Cell-steps/s (median of round-robin repeats; ratios per round):",
        "",
        md_table(
            [
                "cells",
                "lines",
                "Numba serial",
                "Numba parallel",
                "NumPy",
                "serial/NumPy",
                "parallel/NumPy",
                "parallel/serial",
                "parallel/pure Python",
                "cores busy (parallel)",
            ],
            rows,
        ),
        "",
        f"Pure Python (NUMBA_DISABLE_JIT=1, {doc['pure_python']['cells']} cells): {fmt_rate(py)} cell-steps/s.",
        f"Compile (660-cell plant, all kernels): cold {c['cold']['compile_total_s']['median']:.2f} s, "
        f"warm {c['warm']['compile_total_s']['median']:.3f} s (process to first step: cold "
        f"{c['cold']['to_first_step_s']['median']:.2f} s, warm {c['warm']['to_first_step_s']['median']:.2f} s).",
    ]
    rt = doc.get("real_time_factor_660")
    if rt:
        lines.append(
            f"660-cell reference plant: {rt['parallel']['median']:,.0f}x real time parallel, "
            f"{rt['serial']['median']:,.0f}x serial."
        )
    lines += ["", md_table(["target", "measured", "bar", "met"], [
        [t["target"], f"{t['measured']:,.4g} {t['unit']}", f"{t['bar']:,.4g}", "yes" if t["met"] else "**no**"]
        for t in doc["targets"]
    ])]  # fmt: skip
    return "\n".join(lines)


def run(quick: bool) -> dict[str, Any]:
    doc = header("model", quick)
    sizes = SIZES_QUICK if quick else SIZES_FULL
    repeats, target_s = (2, 0.02) if quick else (5, 0.3)
    t0 = time.perf_counter()
    doc["throughput"] = []
    for n in sizes:
        res = throughput(n, repeats, target_s)
        doc["throughput"].append(res)
        r = res["cell_steps_per_s"]
        print(
            f"{n:>6} cells ({res['lines']} lines): serial {fmt_rate(r['numba_serial']['median'])}, parallel "
            f"{fmt_rate(r['numba_parallel']['median'])}, NumPy {fmt_rate(r['numpy']['median'])} cell-steps/s",
            flush=True,
        )
    ref = next((t for t in doc["throughput"] if t["cells"] == REFERENCE_CELLS), None)
    if ref is not None:  # dt = 1 s: simulated seconds per wall second = rate / cells
        doc["real_time_factor_660"] = {
            "serial": summarize([x / REFERENCE_CELLS for x in _medians(ref, "numba_serial")], digits=4),
            "parallel": summarize([x / REFERENCE_CELLS for x in _medians(ref, "numba_parallel")], digits=4),
        }
    doc["pure_python"] = pure_python(quick)
    print(f"pure Python: {fmt_rate(doc['pure_python']['cell_steps_per_s']['median'])} cell-steps/s", flush=True)
    doc["compile"] = compile_cost(quick)
    c = doc["compile"]
    print(
        f"compile: cold {c['cold']['compile_total_s']['median']:.2f} s, warm {c['warm']['compile_total_s']['median']:.3f} s"
    )
    doc["targets"] = targets(doc)
    doc["growth"] = growth(doc)
    doc["elapsed_s"] = round(time.perf_counter() - t0, 1)
    return doc


def _medians(t: dict[str, Any], key: str) -> list[float]:
    s = t["cell_steps_per_s"][key]
    return [s["min"], s["median"], s["max"]]


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0], "model")
    p.add_argument("--probe-python", nargs=3, type=int, metavar=("CELLS", "STEPS", "REPEATS"), help=argparse_hide())
    p.add_argument("--probe-compile", action="store_true", help=argparse_hide())
    args = p.parse_args(argv)
    if args.probe_python:
        print(json.dumps(_probe_python(*args.probe_python)))
        return 0
    if args.probe_compile:
        print(json.dumps(_probe_compile()))
        return 0
    doc = run(args.quick)
    write_result(doc, args.out, markdown(doc))
    print(f"wrote {args.out}")
    return 0


def argparse_hide() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    raise SystemExit(main())
