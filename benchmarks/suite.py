"""The benchmark suite: run every benchmark in its own process, collect the JSON, write the
growth table and log-log plot, and regenerate ``PERFORMANCE.md``.

Each benchmark runs as ``python -m benchmarks.<module> [--quick] --out <results>/<name>.json``
(see ``benchmarks/common.py`` for the conventions); its output goes to
``<results>/logs/<name>.log``. A benchmark that exits non-zero but wrote fresh JSON
(e.g. it missed its target) is reported with its figures; one that wrote nothing is
reported as failed, and the suite carries on with the rest. ``--only NAME`` runs some
benchmarks and rebuilds the report from the fresh results plus the latest stored ones.

Full run (about 10 min on 2 cores): ``python -m benchmarks`` -> ``benchmarks/results/suite/`` (every
benchmark's JSON from this one run, logs, ``growth.json``, ``growth.png``) + ``PERFORMANCE.md`` at
the repository root. Standalone runs (``python -m benchmarks.bench_x``) keep writing
``benchmarks/results/<name>.json``. Quick run (CI smoke, no timing claims): ``python -m benchmarks
--quick`` -> ``benchmarks/results/quick/`` (its ``PERFORMANCE.md`` stays there).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, RESULTS_DIR, child_env, fmt_rate, header, md_table

PERFORMANCE_MD = REPO / "PERFORMANCE.md"
#: the suite's own complete set of results from one run (standalone runs of a benchmark keep
#: writing ``benchmarks/results/<name>.json``; the suite never overwrites those)
SUITE_DIR = RESULTS_DIR / "suite"
QUICK_DIR = RESULTS_DIR / "quick"


@dataclass(frozen=True)
class Bench:
    """One benchmark of the suite.

    ``growth`` (full runs only): extra runs at other plant sizes as ``(cells, args)``; each
    writes ``<name>@<cells>.json``. ``growth_points`` turns any of the benchmark's documents
    into ``[(figure, cells, value, unit, better)]`` for the growth table.
    """

    name: str
    module: str
    title: str
    timeout_s: float = 300.0
    quick_timeout_s: float = 120.0
    full_args: tuple[str, ...] = ()
    quick_args: tuple[str, ...] = ()
    growth: tuple[tuple[int, tuple[str, ...]], ...] = ()
    growth_points: Callable[[dict[str, Any]], list[tuple[str, int, float, str, str]]] | None = None

    @property
    def path(self) -> Path:
        return REPO / (self.module.replace(".", "/") + ".py")


def _modbus_growth(doc: dict[str, Any]) -> list[tuple[str, int, float, str, str]]:
    scan = doc["scan"]
    n = scan["cells"]
    return [
        ("Modbus: full scan", n, scan["full_scan_concurrent_ms"]["median"], "ms", "lower"),
        ("Modbus: scan to per-cell arrays", n, scan["scan_to_cell_arrays_7_fields_ms"]["median"], "ms", "lower"),
    ]


def _startup_growth(doc: dict[str, Any]) -> list[tuple[str, int, float, str, str]]:
    names = {"modbus": "Modbus", "opcua": "OPC UA"}
    return [
        (f"daemon: spawn to first cycle, {names.get(c['protocols']['potroom'], c['protocols']['potroom'])} "
         "potrooms (warm cache)", c["cells"], 1e3 * c["spawn_to_first_cycle_s"]["median"], "ms", "lower")
        for c in doc["cases"] if c.get("numba_cache") == "warm"
    ]  # fmt: skip


_MODBUS_ROOMS = (1, 2, 10, 20, 40, 76)  # x 132 cells; 5 rooms (660) is the main run

BENCHES: tuple[Bench, ...] = (
    Bench("model", "benchmarks.bench_model", "Model: cell-steps/s, NumPy and pure-Python ratios, compile"),
    Bench(
        "modbus_scan",
        "benchmarks.bench_modbus_scan",
        "I/O: full Modbus scan of 660 cells",
        timeout_s=180.0,
        growth=tuple((132 * r, ("--rooms", str(r), "--repeats", "10")) for r in _MODBUS_ROOMS),
        growth_points=_modbus_growth,
    ),
    Bench(
        "threads_under_load",
        "benchmarks.bench_threads_under_load",
        "Model: default kernel vs serial, quiet and beside 2 CPU-bound jobs (660 cells)",
        timeout_s=420.0,
        quick_timeout_s=180.0,
    ),
    Bench("opcua", "benchmarks.bench_opcua", "I/O: OPC UA scan and 1 Hz publish latency, arrays vs per-node"),
    # the controller benchmark's default horizon (30 days + baseline) is a scoring run, far beyond the
    # suite's budget: the suite takes a 2 h amperage scenario on 660 cells (cycle time) and a short closed loop
    Bench(
        "bench_controller",
        "benchmarks.bench_controller",
        "Loop: controller cycle time for 660 cells",
        timeout_s=360.0,
        quick_timeout_s=240.0,
        full_args=("--days", "0.05", "--amp-hours", "2", "--skip-baseline", "--feeder-hours", "6"),
        quick_args=("--days", "0.005", "--amp-hours", "0.25", "--skip-baseline", "--feeder-hours", "1"),
    ),
    # real time, 660 cells, rig in its own process: ~60 s per case before the first AE
    Bench(
        "hil_latency",
        "benchmarks.bench_hil_latency",
        "Loop: HIL end-to-end AE-to-quench latency",
        timeout_s=600.0,
        quick_timeout_s=420.0,
        full_args=("--aes", "30"),
        quick_args=("--aes", "4"),
    ),
    Bench(
        "daemon_startup",
        "benchmarks.bench_daemon_startup",
        "Start-up: `potline run` spawn to first control cycle",
        timeout_s=420.0,
        quick_timeout_s=180.0,
        growth_points=_startup_growth,
    ),
)


@dataclass
class RunRecord:
    name: str
    status: str  # ok | target-missed | failed | timeout | missing | stored
    wall_s: float = 0.0
    returncode: int | None = None
    json_path: str | None = None
    note: str = ""
    extra: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------------------- running


def run_one(bench: Bench, results: Path, quick: bool, args: tuple[str, ...] = (), tag: str = "") -> RunRecord:
    """Run one benchmark process; the record says whether it wrote fresh JSON."""
    name = bench.name + (f"@{tag}" if tag else "")
    out = results / f"{name}.json"
    if not bench.path.exists():
        return RunRecord(name, "missing", note=f"{_relpath(bench.path, REPO)} not present")
    logs = results / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", bench.module, "--out", str(out), *(bench.quick_args if quick else bench.full_args)]
    cmd += [*args] + (["--quick"] if quick else [])
    before = out.stat().st_mtime if out.exists() else None
    timeout = bench.quick_timeout_s if quick else bench.timeout_s
    t0 = time.perf_counter()
    with (logs / f"{name}.log").open("w", encoding="utf-8") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=child_env(), stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
            rc: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            rc = None
    wall = time.perf_counter() - t0
    fresh = out.exists() and (before is None or out.stat().st_mtime > before)
    if rc is None:
        status = "timeout"
    elif fresh and rc == 0:
        status = "ok"
    elif fresh:
        status = "target-missed"
    else:
        status = "failed"
    note = "" if status == "ok" else f"exit {rc}, see {_relpath(logs / f'{name}.log', REPO)}"
    if status == "timeout":
        note = f"killed after {timeout:.0f} s"
    return RunRecord(name, status, round(wall, 1), rc, str(out) if fresh else None, note)


def run_suite(results: Path, quick: bool, only: set[str] | None, growth: bool) -> list[RunRecord]:
    records = []
    for bench in BENCHES:
        if only and bench.name not in only:
            continue
        print(f"== {bench.name}: {bench.title}", flush=True)
        rec = run_one(bench, results, quick)
        print(f"   {rec.status} in {rec.wall_s:.1f} s {rec.note}", flush=True)
        if growth and not quick and rec.status in ("ok", "target-missed"):
            for cells, args in bench.growth:
                g = run_one(bench, results, quick, args, tag=str(cells))
                print(f"   {bench.name} @ {cells} cells: {g.status} in {g.wall_s:.1f} s {g.note}", flush=True)
                rec.extra.append({"cells": cells, "status": g.status, "wall_s": g.wall_s, "json": g.json_path})
        records.append(rec)
    return records


# ---------------------------------------------------------------------------- reading results


def load_results(results: Path) -> dict[str, dict[str, Any]]:
    """Every ``<name>.json`` and ``<name>@<cells>.json`` in ``results`` that parses."""
    docs = {}
    for p in sorted(results.glob("*.json")):
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(doc, dict):
            if "when" not in doc:  # older benchmark without the common header: the file's time
                stamp = datetime.fromtimestamp(p.stat().st_mtime, UTC).isoformat(timespec="seconds")
                doc["when"] = f"{stamp} (file time)"
            docs[p.stem] = doc
    return docs


def _get(doc: dict[str, Any] | None, *keys: str, default: Any = None) -> Any:
    cur: Any = doc
    for k in keys:
        if not isinstance(cur, dict) or k not in cur:
            return default
        cur = cur[k]
    return cur


def growth_series(docs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{figure: {"unit", "better", "points": [[cells, value], ...]}}`` from all results."""
    series: dict[str, dict[str, Any]] = {}
    for doc in docs.values():
        for fig, s in (doc.get("growth") or {}).items():
            if s.get("points"):
                series.setdefault(fig, {"unit": s.get("unit", ""), "better": s.get("better", ""), "points": []})
                series[fig]["points"] += [list(p) for p in s["points"]]
                if s.get("note"):
                    series[fig]["note"] = s["note"]
    for bench in BENCHES:
        if bench.growth_points is None:
            continue
        for stem, doc in docs.items():
            if stem == bench.name or stem.startswith(bench.name + "@"):
                try:
                    points = bench.growth_points(doc)
                except (KeyError, TypeError, ValueError, IndexError):
                    continue
                for fig, cells, value, unit, better in points:
                    s = series.setdefault(fig, {"unit": unit, "better": better, "points": []})
                    s["points"].append([cells, value])
    for s in series.values():
        pts = {int(c): float(v) for c, v in s["points"] if v is not None and v == v}
        s["points"] = sorted(pts.items())
        s["exponent"] = _loglog_slope(s["points"])
    return series


#: growth-table columns; a plant within 1 % of one (e.g. 76 potrooms = 10,032 cells) shares it
COLUMN_SIZES = (8, 132, 264, 660, 1320, 2640, 5280, 10000)


def _column(cells: int) -> int:
    for c in COLUMN_SIZES:
        if abs(cells - c) <= 0.01 * c:
            return c
    return cells


def _loglog_slope(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of log(value) on log(cells): 1 = linear, 0 = flat."""
    pts = [(math.log(c), math.log(v)) for c, v in points if c > 0 and v > 0]
    if len(pts) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return round(sum((x - mx) * (y - my) for x, y in pts) / sxx, 3) if sxx > 0 else None


def plot_growth(series: dict[str, dict[str, Any]], path: Path) -> Path | None:
    """Log-log plot of every growth series: rates on the left, times on the right."""
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = {k: s for k, s in series.items() if s["better"] == "higher"}
    times = {k: s for k, s in series.items() if s["better"] != "higher"}
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, group, ylabel in ((axes[0], rates, "throughput"), (axes[1], times, "time")):
        for name, s in group.items():
            xs, ys = zip(*s["points"], strict=False) if s["points"] else ((), ())
            style = "--" if s.get("note") else "-"  # a series carried over from another size
            ax.loglog(xs, ys, style, marker="o", label=f"{name} [{s['unit']}]")
        ax.set_xlabel("cells")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        if group:
            ax.legend(fontsize=8, loc="lower right" if ax is axes[1] else "best")
    axes[0].set_title("throughput vs plant size (higher is better)")
    axes[1].set_title("time vs plant size (lower is better)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------- the report


def _fmt(x: Any, unit: str = "", digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "n/a"
    if unit == "cell-steps/s":
        return fmt_rate(x) + " cell-steps/s"
    if isinstance(x, (int, float)):
        s = f"{x:,.{digits}g}" if abs(x) < 10**digits else f"{x:,.0f}"
        return f"{s} {unit}".strip()
    return str(x)


def _met(flag: Any) -> str:
    return "n/a" if flag is None else ("yes" if flag else "**no**")


def _model_targets(m: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    if m:
        by_n = {t["cells"]: t for t in m["throughput"]}
        for t in m.get("targets", []):
            alt, ratio = "", ""
            n = t.get("cells")
            if "NumPy" in t["target"]:
                alt = _fmt(by_n[n]["cell_steps_per_s"]["numpy"]["median"], "cell-steps/s") + " (NumPy)"
                ratio = f"{t['measured']:.2f}x"
                if t.get("serial_per_cpu_s") is not None:
                    ratio += f" (serial per CPU-s {t['serial_per_cpu_s']:.2f}x)"
            elif "cell-steps" in t["unit"]:
                alt = _fmt(by_n[n]["cell_steps_per_s"]["numpy"]["median"], "cell-steps/s") + " (NumPy)"
                ratio = f"{by_n[n]['ratio']['numba_parallel_over_numpy']['median']:.2f}x NumPy"
            elif "real time" in t["target"]:
                alt, ratio = "1x (real time)", f"{t['measured']:,.0f}x"
            elif "compile" in t["target"]:
                c = m["compile"]
                alt = f"cold {c['cold']['compile_total_s']['median']:.2f} s"
                ratio = f"warm {c['warm']['compile_total_s']['median']:.3f} s"
            measured = _fmt(t["measured"], t["unit"])
            if "best" in t:
                measured += f" (best {fmt_rate(t['best'])}; {t.get('cores_busy', float('nan')):.2f} cores busy)"
            rows.append([t["target"], measured, alt, ratio, _met(t["met"])])
    return rows


def _modbus_targets(mb: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    if mb:
        s = mb["scan"]["full_scan_concurrent_ms"]
        q = mb["scan"]["full_scan_sequential_ms"]
        rows.append([
            f"full Modbus scan of {mb['scan']['cells']} cells <= {mb.get('target_ms_per_full_scan', 200):.0f} ms",
            f"{_fmt(s['median'], 'ms')} (min {s['min']:.3g}, max {s['max']:.3g}; PLCs concurrently)",
            f"{_fmt(q['median'], 'ms')} (one PLC after the other)",
            f"{q['median'] / s['median']:.2f}x", _met(mb.get("meets_target")),
        ])  # fmt: skip
        d = _get(mb, "decode", "design_case_5280_float32") or {}
        if d:
            rows.append([
                "decode 5,280 float32 registers (660 cells x 8) with NumPy",
                _fmt(_get(d, "numpy_ms", "median"), "ms"),
                f"{_fmt(_get(d, 'convert_from_registers_ms', 'median'), 'ms')} (pymodbus convert_from_registers)",
                f"{d.get('speedup', 'n/a')}x", "n/a",
            ])  # fmt: skip
    return rows


def _opcua_targets(op: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    if op:
        sc = op["scan"]
        rows.append([
            f"full OPC UA scan of {op['cells']} cells (one batched Read)",
            _fmt(sc["array"]["scan_ms_p50"], "ms") + f" ({sc['array']['nodes']} array nodes)",
            _fmt(sc["per_cell"]["scan_ms_p50"], "ms") + f" ({sc['per_cell']['nodes']} per-cell nodes)",
            f"{sc['speedup_p50']:.0f}x", "n/a",
        ])  # fmt: skip
        la = op["latency_1hz"]
        rows.append([
            "OPC UA 1 Hz publish latency p50 / p99",
            f"{_fmt(la['array']['latency_ms_p50'], 'ms')} / {_fmt(la['array']['latency_ms_p99'], 'ms')} (arrays)",
            f"{_fmt(la['naive']['latency_ms_p50'], 'ms')} / {_fmt(la['naive']['latency_ms_p99'], 'ms')} (one node per value)",
            f"{la['naive']['latency_ms_p99'] / la['array']['latency_ms_p99']:.1f}x at p99", "n/a",
        ])  # fmt: skip
    return rows


def _controller_targets(ctl: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    cyc = _get(ctl, "amperage", "cycle_time_ms")
    if cyc:
        bar = _get(ctl, "targets", "cycle_time_ms_max")
        rows.append([
            f"controller cycle for {_get(ctl, 'amperage', 'cells')} cells"
            + (f" <= {bar:g} ms" if isinstance(bar, (int, float)) else ""),
            f"p50 {_fmt(cyc['p50'], 'ms')}, p99 {_fmt(cyc['p99'], 'ms')}, max {_fmt(cyc['max'], 'ms')}",
            "1,000 ms (the 1 s scan period)", f"p99 uses {cyc['p99'] / 10:.2g} % of the scan period",
            _met(cyc["p99"] <= bar) if isinstance(bar, (int, float)) else "n/a",
        ])  # fmt: skip
    else:
        rows += _generic_target_rows(ctl)
    ff = _get(ctl, "feeder_faults")
    if ff and ff.get("faults_followed_by_ae"):
        fa = ff.get("healthy_cells_false_alarms_per_pot_day")
        lead = ff.get("alarm_lead_s_median")
        rows.append([
            f"AE prediction: feeder-fault AEs predicted >= 60 s ahead ({ff['cells']} cells, report)",
            f"{ff['first_aes_predicted_60s_ahead']} of {ff['faults_followed_by_ae']}"
            + (f", median lead {lead:.0f} s" if lead is not None else ""),
            f"false alarms on healthy cells {fa:.3f} per pot-day" if fa is not None else "",
            f"{100 * ff['share_predicted_60s_ahead']:.0f} %", "n/a",
        ])  # fmt: skip
    return rows


def _startup_targets(doc: dict[str, Any]) -> list[list[str]]:
    warm = [c for c in doc["cases"] if c.get("numba_cache") == "warm"]
    cold = [c for c in doc["cases"] if c.get("numba_cache") == "cold"]
    worst = max(warm, key=lambda c: c["spawn_to_first_cycle_s"]["max"])
    alt = ""
    if cold:
        alt = f"cold cache ({cold[0]['cells']} cells): {cold[0]['spawn_to_first_cycle_s']['median']:.2f} s"
    parts = ", ".join(
        f"{c['cells']} cells, potrooms over {c['protocols']['potroom']}: {c['spawn_to_first_cycle_s']['median']:.2f} s"
        for c in warm
    )
    return [[
        f"daemon start to first control cycle <= {doc.get('target_s', 10):g} s (warm Numba cache)",
        f"median {parts}; worst {worst['spawn_to_first_cycle_s']['max']:.2f} s ({worst['case']})",
        alt, "", _met(doc.get("meets_target")),
    ]]  # fmt: skip


#: benchmark name -> its rows of the targets table (from its JSON)
TARGET_ROWS: dict[str, Callable[[dict[str, Any]], list[list[str]]]] = {
    "model": _model_targets,
    "modbus_scan": _modbus_targets,
    "opcua": _opcua_targets,
    "bench_controller": _controller_targets,
    "daemon_startup": _startup_targets,
}


def target_rows(docs: dict[str, dict[str, Any]]) -> list[list[str]]:
    """target | measured | alternative | ratio | met, for every benchmark present.

    A result in an unexpected shape (an older or newer benchmark) gives one row saying so."""
    rows: list[list[str]] = []
    for bench in BENCHES:
        doc = docs.get(bench.name)
        if not doc:
            continue
        try:
            rows += TARGET_ROWS.get(bench.name, _generic_target_rows)(doc)
        except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError, NameError, AttributeError) as exc:
            rows.append([f"{bench.name}: result not readable ({type(exc).__name__}: {exc})", "", "", "", "n/a"])
    return rows


def _generic_target_rows(doc: dict[str, Any]) -> list[list[str]]:
    """Targets a benchmark states itself as ``targets: [{target, measured, unit, bar, met, alternative?, ratio?}]``."""
    out = []
    targets = (doc or {}).get("targets", []) or []
    for t in targets if isinstance(targets, list) else []:
        out.append([
            t.get("target", doc.get("benchmark", "?")), _fmt(t.get("measured"), t.get("unit", "")),
            str(t.get("alternative", "")),
            str(t.get("ratio", "")), _met(t.get("met")),
        ])  # fmt: skip
    return out


def _when(doc: dict[str, Any] | None) -> str:
    return str((doc or {}).get("when", "?"))


def _ratio_cell(q: dict[str, Any], key: str) -> str:
    v = _get(q, key, "median")
    return "n/a" if v is None else f"{v:.2f}x"


def model_section(m: dict[str, Any]) -> list[str]:
    py = m["pure_python"]["cell_steps_per_s"]["median"]
    rows = []
    for t in m["throughput"]:
        r, q = t["cell_steps_per_s"], t["ratio"]
        rows.append([
            f"{t['cells']:,}", t["lines"],
            f"{fmt_rate(r['numba_serial']['median'])} ({fmt_rate(r['numba_serial']['min'])}–{fmt_rate(r['numba_serial']['max'])})",
            f"{fmt_rate(r['numba_parallel']['median'])} ({fmt_rate(r['numba_parallel']['min'])}–{fmt_rate(r['numba_parallel']['max'])})",
            f"{fmt_rate(r['numpy']['median'])} ({fmt_rate(r['numpy']['min'])}–{fmt_rate(r['numpy']['max'])})",
            f"{q['numba_serial_over_numpy']['median']:.2f}x", f"{q['numba_parallel_over_numpy']['median']:.2f}x",
            _ratio_cell(q, "numba_serial_over_numpy_per_cpu_s"),
            f"{q['parallel_over_serial']['median']:.2f}x",
            f"{r['numba_serial']['median'] / py:,.0f}x / {r['numba_parallel']['median'] / py:,.0f}x",
            f"{_get(t, 'cores_busy', 'numba_parallel', 'median', default=float('nan')):.2f}",
        ])  # fmt: skip
    c = m["compile"]
    kern = ", ".join(
        f"{k} {c['cold_by_kernel_s'][k]['median']:.2f} s → {c['warm_by_kernel_s'][k]['median']:.3f} s"
        for k in c["cold_by_kernel_s"]
    )
    rt = m.get("real_time_factor_660") or {}
    lines = [
        f"## Model (`benchmarks/bench_model.py`, {_when(m)})",
        "",
        "Full cell model (Haupin voltage, two-pool alumina, AE logic, energy + ledge, ACD, tapping, anode "
        "changes, PLC local control) plus each line's rectifier and series circuit, 1 s sub-steps. "
        "Cell-steps/s, median (min–max) over round-robin repeats; ratios are per round, then the median. "
        "'Cores busy' = process CPU time / wall time during the parallel runs: about 2 when the kernel had "
        "both cores, less when other jobs held them. 'Per CPU-s' compares cell-steps per CPU-second of the "
        "two single-threaded engines, which time slices lost to other jobs do not distort.",
        "",
        md_table(
            [
                "cells",
                "lines",
                "Numba serial",
                "Numba parallel",
                "NumPy",
                "serial / NumPy",
                "parallel / NumPy",
                "serial / NumPy per CPU-s",
                "parallel / serial",
                "serial / parallel vs pure Python",
                "cores busy (parallel)",
            ],
            rows,
        ),
        "",
        f"- Pure Python (the twin source with `NUMBA_DISABLE_JIT=1`, {m['pure_python']['cells']} cells, "
        f"subprocess): {fmt_rate(py)} cell-steps/s (min {fmt_rate(m['pure_python']['cell_steps_per_s']['min'])}, "
        f"max {fmt_rate(m['pure_python']['cell_steps_per_s']['max'])}); interpreted cost is linear in cells, so "
        "the ratio per cell-step holds at every size.",
        f"- Compile, fresh process on the 660-cell plant, all kernels: cold {c['cold']['compile_total_s']['median']:.2f} s "
        f"(min {c['cold']['compile_total_s']['min']:.2f}, max {c['cold']['compile_total_s']['max']:.2f}), warm "
        f"{c['warm']['compile_total_s']['median']:.3f} s = {100 * (c.get('warm_share_of_cold') or 0):.1f} % of cold. "
        f"Process start to first step: cold {c['cold']['to_first_step_s']['median']:.2f} s, warm "
        f"{c['warm']['to_first_step_s']['median']:.2f} s. By kernel (cold → warm): {kern}.",
    ]
    if rt:
        lines.append(
            f"- 660-cell reference plant: {rt['parallel']['median']:,.0f}x real time with the parallel kernel, "
            f"{rt['serial']['median']:,.0f}x serial (dt = 1 s: simulated seconds per wall second = rate / cells)."
        )
    lines += [
        "- Plants: 132 and 264 cells = `PlantConfig.single_room` (one line); 660 = the reference plant (3 lines "
        "of 264/264/132); 1,320 … 10,000 = lines of 264 cells (two potrooms of 132, the reference line) with the "
        "reference rectifier, built programmatically (10,000 = 37 × 264 + 232, 38 lines). The parallel kernel "
        "shares each sub-step's cells out over the threads, or, when the lines balance over the threads, hands "
        "out whole lines (`Potline.lines_balance`); both reproduce the serial kernel bit for bit (a CI test).",
        "- NumPy version: `benchmarks/numpy_reference.py`, the same per-sub-step equations as array code "
        "(agreement with the Numba kernel to ~1e-13 relative is a CI test), with a `numpy.random.Generator` "
        "for the noise draws.",
    ]
    return lines


def model_notes(m: dict[str, Any]) -> list[str]:
    """What the model figures say, computed from them (regenerated with every run)."""
    tp = m["throughput"]
    threads = int(m["machine"].get("cpus_usable") or 2)
    lines = ["### Reading the model figures", ""]
    per_cpu = {t["cells"]: t.get("cell_steps_per_cpu_s") for t in tp}
    ratio = [(t["cells"], _get(t, "ratio", "numba_serial_over_numpy_per_cpu_s", "median")) for t in tp]
    ratio = [(n, r) for n, r in ratio if r is not None]
    if ratio:
        ok = [n for n, r in ratio if r >= 3.0]
        flags = ", ".join(m["machine"].get("cpu_flags") or []) or "unknown"
        lines.append(
            f"- Serial kernel vs NumPy per CPU-second: {ratio[0][1]:.1f}x at {ratio[0][0]:,} cells, "
            f"{ratio[-1][1]:.1f}x at {ratio[-1][0]:,}. NumPy pays a fixed cost per array operation, which "
            f"large plants amortise, and NumPy {m['versions']['numpy']} evaluates exp/log/pow over whole arrays "
            f"with SIMD (this CPU: {flags}); the kernel evaluates them cell by cell with scalar libm calls. "
            + (
                f"So the serial kernel keeps 3x per CPU-second up to {max(ok):,} cells here and not beyond."
                if ok
                else "The serial kernel does not reach 3x per CPU-second here."
            )
        )
    busy = [t["cores_busy"]["numba_parallel"]["median"] for t in tp if "cores_busy" in t]
    busy_s = [t["cores_busy"]["numba_serial"]["median"] for t in tp if "cores_busy" in t]
    if busy:
        lines.append(
            f"- Cores busy during the parallel runs: {min(busy):.2f}–{max(busy):.2f} of {threads} (serial runs: "
            f"{min(busy_s):.2f}–{max(busy_s):.2f}). Well below {threads} means other jobs held the cores and the "
            "parallel kernel did not get the CPU it asked for, so its wall-clock figures understate a free machine; "
            "the per-CPU-second figures below are the ones to compare."
        )
    for t in tp:
        if t["cells"] not in (660, max(x["cells"] for x in tp)) or "parallel_kernel" not in t:
            continue
        pc = per_cpu.get(t["cells"]) or {}
        par_cpu, ser_cpu = _get(pc, "numba_parallel", "median"), _get(pc, "numba_serial", "median")
        eff = (
            f"; per CPU-second {fmt_rate(par_cpu)} parallel vs {fmt_rate(ser_cpu)} serial (the difference: "
            "threads waiting at the sub-step's synchronisation or for the slowest line)"
            if par_cpu and ser_cpu
            else ""
        )
        lines.append(
            f"- {t['cells']:,} cells, {t['lines']} lines: the parallel kernel handed out {t['parallel_kernel']} "
            f"(lines keep {t['lines_balance']:.2f} of {threads} cores busy; whole lines from "
            f"{t['lines_balance_min']:.2f}); parallel/serial {t['ratio']['parallel_over_serial']['median']:.2f}x with "
            f"{t['cores_busy']['numba_parallel']['median']:.2f} cores busy{eff}."
        )
    return [*lines, ""]


def io_section(docs: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["## I/O", ""]
    mb = docs.get("modbus_scan")
    if mb:
        s = mb["scan"]
        rows = [
            [k.removesuffix("_ms").replace("_", " "), f"{v['min']:.3g}", f"{v['median']:.3g}", f"{v['max']:.3g}"]
            for k, v in s.items() if k.endswith("_ms") and isinstance(v, dict)
        ]  # fmt: skip
        lines += [
            f"**Modbus TCP** (`benchmarks/bench_modbus_scan.py`, {_when(mb)}): full scan of {s['cells']} cells "
            f"({s['tags']:,} tags, {s['requests_per_scan']} requests, {s['registers_per_scan']:,} registers; "
            f"{mb.get('setup', '')}), {mb.get('repeats', '?')} scans:",
            "",
            md_table(["figure [ms]", "min", "median", "max"], rows),
            "",
        ]
    else:
        lines += ["**Modbus TCP**: no result yet.", ""]
    op = docs.get("opcua")
    if op:
        sc, la = op["scan"], op["latency_1hz"]
        lines += [
            f"**OPC UA** (`benchmarks/bench_opcua.py`, {_when(op)}): {op['cells']} cells × "
            f"{op['quantities_per_cell']} quantities, server in its own process.",
            "",
            md_table(
                [
                    "layout",
                    "scan (batched Read) p50 / max",
                    "publish latency p50 / p99 / max",
                    "server publish p50",
                    "notifications",
                ],
                [
                    [
                        f"arrays ({sc['array']['nodes']} nodes)",
                        f"{sc['array']['scan_ms_p50']:.1f} / {sc['array']['scan_ms_max']:.1f} ms",
                        f"{la['array']['latency_ms_p50']:.0f} / {la['array']['latency_ms_p99']:.0f} / "
                        f"{la['array']['latency_ms_max']:.0f} ms",
                        f"{la['array']['server_publish_ms_p50']:.1f} ms",
                        f"{la['array']['notifications_received']:,}/{la['array']['notifications_expected']:,}",
                    ],
                    [
                        f"one node per value ({sc['per_cell']['nodes']:,} nodes)",
                        f"{sc['per_cell']['scan_ms_p50']:.1f} / {sc['per_cell']['scan_ms_max']:.1f} ms",
                        f"{la['naive']['latency_ms_p50']:.0f} / {la['naive']['latency_ms_p99']:.0f} / "
                        f"{la['naive']['latency_ms_max']:.0f} ms",
                        f"{la['naive']['server_publish_ms_p50']:.1f} ms",
                        f"{la['naive']['notifications_received']:,}/{la['naive']['notifications_expected']:,}",
                    ],
                ],
            ),
            "",
            f"Latency is from the server's write timestamp to the client's receipt with a "
            f"{la['array']['publishing_interval_ms']:.0f} ms publishing interval (which bounds the array p50 "
            "from below).",
            "",
        ]
    else:
        lines += ["**OPC UA**: no result yet.", ""]
    return lines


def loop_section(docs: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["## Loop", ""]
    ctl = docs.get("bench_controller")
    amp = _get(ctl, "amperage")
    if amp and "cycle_time_ms" in amp:
        c = amp["cycle_time_ms"]
        lines += [
            f"**Controller cycle** (`benchmarks/bench_controller.py`, {_get(amp, 'measured', 'when') or _when(ctl)}): "
            "`Controller.step` on the "
            f"{amp['cells']}-cell reference plant over a {amp['hours']:g} h amperage scenario (cut-out/cut-in, "
            f"power step) at a 1 s scan: mean {c['mean']:.2f} ms, p50 {c['p50']:.2f} ms, p99 {c['p99']:.2f} ms, "
            f"max {c['max']:.2f} ms per cycle.",
            "",
        ]
    lines += compare_lines(ctl)
    if amp and "cycle_time_ms" in amp:
        ff = _get(ctl, "feeder_faults")
        if ff:
            share = ff.get("share_predicted_60s_ahead")
            lead = ff.get("alarm_lead_s_median")
            fa = ff.get("healthy_cells_false_alarms_per_pot_day")
            lines += [
                f"**AE prediction on feeder faults** (same benchmark, {_get(ff, 'measured', 'when') or _when(ctl)}): "
                f"{ff['faults']} cells of {ff['cells']} had "
                f"feeders deliver {100 * ff['fraction_delivered']:.0f} % of each shot for {ff['duration_h']:g} h "
                f"(acknowledged by the PLC as usual); {ff['faults_followed_by_ae']} were followed by an AE, "
                f"{ff['first_aes_predicted_60s_ahead']} of those predicted >= 60 s ahead"
                + (f" ({100 * share:.0f} %)" if share is not None else "")
                + (f", median lead {lead:.0f} s" if lead is not None else "")
                + (f"; false alarms on the healthy cells {fa:.3f} per pot-day" if fa is not None else "")
                + ".",
                "",
            ]
    hil = docs.get("hil_latency")
    if hil and hil.get("cases"):
        rows = []
        for c in hil["cases"]:
            lat, ctl_ = c["latency_s"], c.get("controller") or {}
            rows.append([
                c["case"], f"{lat['p50']:.3f} s", f"{lat['p99']:.3f} s", f"{lat['max']:.3f} s", lat["n"],
                f"<= {c['target_p99_s']:g} s", _met(c.get("meets_target")),
                f"{_fmt(ctl_.get('read_ms_p50'), 'ms')} / {_fmt(ctl_.get('read_ms_p99'), 'ms')}",
            ])  # fmt: skip
        lines += [
            f"**HIL AE-to-quench latency** (`benchmarks/bench_hil_latency.py`, {_when(hil)}): reference plant "
            "(660 cells) in a HIL rig in its own process, real time; from the first PLC scan showing the AE "
            "(> 8 V) to the potroom PLC receiving the quench command, over the real protocols.",
            "",
            md_table(["case", "p50", "p99", "max", "AEs", "target p99", "met", "controller read p50 / p99"], rows),
            "",
        ]
    for name, label in (("bench_controller", "Controller cycle"), ("hil_latency", "HIL AE-to-quench latency")):
        if name == "bench_controller" and amp and "cycle_time_ms" in amp:
            continue
        if name == "hil_latency" and hil and hil.get("cases"):
            continue
        doc = docs.get(name)
        if not doc:
            lines += [f"**{label}**: no result yet (`benchmarks/{_module_file(name)}` not run or not present).", ""]
            continue
        summary = doc.get("summary_md") or _summary_md(doc)
        lines += [f"**{label}** (`benchmarks/{_module_file(name)}`, {_when(doc)}): {summary}", ""]
    return lines


#: the comparison's figures (bench_controller ``compare.side_by_side``): label, key, unit, digits
COMPARE_ROWS = (
    ("AE frequency [AE/pot-day]", "ae_per_pot_day", "", 3),
    ("AE minutes [min/cell-day]", "ae_minutes_per_cell_day", "", 3),
    ("AE mean duration", "ae_mean_duration_s", "s", 3),
    ("AEs predicted >= 60 s ahead [share]", "share_predicted_60s_ahead", "", 2),
    ("prediction lead, median", "lead_time_median_s", "s", 3),
    ("false alarms [per pot-day]", "false_alarms_per_pot_day", "", 2),
    ("line current within 0.5 % of setpoint [share]", "line_current_share_within_0.5pct", "", 3),
    ("line current p99 error", "line_current_p99_abs_error_pct", "%", 2),
    ("specific energy", "specific_energy_kwh_per_kg", "kWh/kg", 4),
    ("current efficiency", "current_efficiency", "", 3),
    ("cells that left the physical range", "cells_left_physical_range", "", 3),
    ("cells outside the validity envelope (ever)", "cells_invalid_ever", "", 3),
)


def _part_key(doc: dict[str, Any], part: str) -> tuple[float, str]:
    """How a part of a controller result ranks: the comparison by its cell-days, then when."""
    p = doc.get(part) or {}
    size = p.get("size") or {}
    cell_days = float(size.get("days") or 0.0) * float(size.get("cells") or 0.0) if part == "compare" else 0.0
    return cell_days, str((p.get("measured") or {}).get("when") or doc.get("when") or "")


def with_standalone_controller_parts(docs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``bench_controller`` with each part (amperage, feeder faults, comparison) taken from the
    suite's run or from the standalone run (``benchmarks/results/bench_controller.json``, e.g. the
    long comparison run on its own), whichever is the larger comparison or the newer measurement."""
    path = RESULTS_DIR / "bench_controller.json"
    try:
        alone = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
    except (OSError, ValueError):
        alone = None
    if not isinstance(alone, dict) or alone.get("quick"):
        return docs
    suite = docs.get("bench_controller")
    if not suite:
        return {**docs, "bench_controller": alone}
    merged = dict(suite)
    for part in ("amperage", "feeder_faults", "compare"):
        if part in alone and (part not in suite or _part_key(alone, part) > _part_key(suite, part)):
            merged[part] = alone[part]
    return {**docs, "bench_controller": merged}


#: long standalone benchmarks of the planning work, shown as they wrote themselves (the suite does
#: not run them: each is a run of many minutes to hours; ``python -m benchmarks.<module>``)
PLANNING_RESULTS = (
    ("bench_rollouts", "benchmarks/bench_rollouts.py", "Rollouts for the planner"),
    ("planner_scenarios", "benchmarks/bench_planner_scenarios.py", "Planner scenarios against flat operation"),
)


def _source_of(path: Path) -> str:
    """``<commit>`` (``with local edits``) of the source a result was measured on, "" if unknown."""
    try:
        src = json.loads(path.read_text(encoding="utf-8")).get("source") or {}
    except (OSError, ValueError, AttributeError):
        return ""
    if not isinstance(src, dict) or not src.get("commit"):
        return ""
    return f"{src['commit']}" + (" (with local edits)" if src.get("dirty") else "")


def planning_section(results_dir: Path = RESULTS_DIR) -> list[str]:
    """The planning benchmarks' own Markdown (``benchmarks/results/<name>.md``), headings moved
    one level down under ``## Planning``; a benchmark not run yet is named as such."""
    lines = ["## Planning", ""]
    for name, module, title in PLANNING_RESULTS:
        md = results_dir / f"{name}.md"
        if not md.exists():
            lines += [f"### {title}", "", f"Not measured yet: `python -m {module[:-3].replace('/', '.')}`.", ""]
            continue
        text = md.read_text(encoding="utf-8").strip().splitlines()
        body = [("##" + ln) if ln.startswith("#") else ln for ln in text]
        if body and body[0].startswith("###"):
            body[0] = f"{body[0]} (`{module}`)"
        src = _source_of(results_dir / f"{name}.json")
        if src:
            body[1:1] = ["", f"Measured at source {src}."]
        lines += [*body, ""]
    return lines


def compare_lines(ctl: dict[str, Any] | None) -> list[str]:
    """PLC-only vs controller, side by side per plant (issue 13 item 8)."""
    cmp_ = _get(ctl, "compare")
    sbs = _get(cmp_, "side_by_side")
    if not sbs:
        return []
    size = cmp_.get("size", {})
    plants = [p for p in sbs if sbs[p]]
    head = ["figure"] + [f"{p}: {m}" for p in plants for m in sbs[p]]
    rows = [
        [label] + [_fmt(sbs[p][m].get(key), unit, digits) for p in plants for m in sbs[p]]
        for label, key, unit, digits in COMPARE_ROWS
    ]
    full = size.get("full_size")
    lines = [
        f"**Controller vs PLC-only on plants it was not tuned on** (`benchmarks/bench_controller.py --parts "
        f"compare`, {cmp_.get('measured', {}).get('when', _when(ctl))}): {size.get('days', 0):g} days x "
        f"{size.get('cells', 0)} cells at a 1 s scan"
        + ("." if full else f" — reduced from the full {size.get('full_size_is', '30 days x 660 cells')}."),
        "",
    ]
    for p, desc in (cmp_.get("plants") or {}).items():
        lines.append(f"- *{p}*: {desc}")
    for m, desc in (cmp_.get("modes") or {}).items():
        lines.append(f"- *{m}*: {desc}")
    if cmp_.get("controller_knows"):
        lines.append(f"- the controller knows {cmp_['controller_knows']}")
    if size.get("reduced_because"):
        lines.append(f"- size: {size['reduced_because']}")
    if any(sbs[p].get("plc_only", {}).get("line_current_share_within_0.5pct") is None for p in plants):
        lines.append(
            "- line-current tracking is scored against the controller's setpoint commands; under PLC-only the "
            "rectifier PLC holds its own setpoint and the controller commands none (n/a)"
        )
    return [*lines, "", md_table(head, rows), ""]


def _module_file(name: str) -> str:
    for b in BENCHES:
        if b.name == name:
            return b.module.split(".")[-1] + ".py"
    return name


def _summary_md(doc: dict[str, Any]) -> str:
    """Headline figures a benchmark lists as ``figures: {name: {value, unit} | number}``."""
    figs = doc.get("figures") or {}
    parts = []
    for k, v in figs.items():
        if isinstance(v, dict):
            parts.append(f"{k} {_fmt(v.get('value', v.get('median')), v.get('unit', ''))}")
        else:
            parts.append(f"{k} {_fmt(v)}")
    md = doc.get("markdown")
    return "; ".join(parts) if parts else (md or "see the JSON")


def growth_section(series: dict[str, dict[str, Any]], plot: Path | None, report: Path) -> list[str]:
    lines = ["## Growth with plant size", ""]
    if not series:
        return [*lines, "No growth series yet.", ""]
    sizes = sorted({_column(c) for s in series.values() for c, _ in s["points"]})
    rows = []
    odd = []
    for name, s in series.items():
        pts = {_column(c): v for c, v in s["points"]}
        odd += [f"{name} at {c:,} cells (column {_column(c):,})" for c, _ in s["points"] if _column(c) != c]
        unit = s["unit"]
        cells = [
            (_fmt(pts[c], unit) if unit != "cell-steps/s" else fmt_rate(pts[c])) if c in pts else "" for c in sizes
        ]
        rows.append([f"{name} [{unit}]", *cells, "n/a" if s["exponent"] is None else f"{s['exponent']:+.2f}"])
    lines += [
        "Medians; the exponent is the least-squares slope of log(figure) on log(cells) "
        "(+1 = grows linearly with cells, 0 = flat; for throughput 0 means the cost per cell is constant).",
        "",
        md_table(["figure", *[f"{c:,}" for c in sizes], "exponent"], rows),
        "",
    ]
    notes = [f"{k}: {s['note']}" for k, s in series.items() if s.get("note")]
    if odd:
        notes.append("measured " + ", ".join(odd))
    if notes:
        lines += ["Notes: " + "; ".join(notes) + ".", ""]
    if plot is not None:
        rel = Path(_relpath(plot, report.parent))
        lines += [f"![growth, log-log]({rel.as_posix()})", ""]
    return lines


def _relpath(path: Path, start: Path) -> str:
    """``path`` relative to ``start`` when it lies below it, else absolute."""
    path, start = Path(path).resolve(), Path(start).resolve()
    try:
        return str(path.relative_to(start))
    except ValueError:
        return str(path)


def _safe_section(build: Callable[[], list[str]], title: str) -> list[str]:
    try:
        return build()
    except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError, AttributeError) as exc:
        return [f"## {title}", "", f"Result not readable ({type(exc).__name__}: {exc}); rerun the benchmark.", ""]


def write_report(
    docs: dict[str, dict[str, Any]],
    records: list[RunRecord],
    results: Path,
    report: Path,
    quick: bool,
    wall_s: float,
    head: dict[str, Any] | None = None,
) -> Path:
    series = growth_series(docs)
    plot = plot_growth(series, results / "growth.png")
    series_json = {k: {kk: vv for kk, vv in v.items()} for k, v in series.items()}
    (results / "growth.json").write_text(json.dumps(series_json, indent=1) + "\n", encoding="utf-8")
    head = head or header("suite", quick)
    mach, ver = head["machine"], head["versions"]
    lines = [
        "# Performance",
        "",
        "Regenerated by `python -m benchmarks` (`benchmarks/suite.py`); do not edit by hand."
        + (" **Quick smoke run: the figures prove the benchmarks work, they are not measurements.**" if quick else ""),
        "",
        f"Machine: {mach['cpu']}, {mach['cpus_usable']} cores usable, {mach['mem_gb']} GB, "
        f"{mach['platform']}; load average {mach['loadavg_1_5_15']} at the end of the run. "
        f"Python {ver['python']}, NumPy {ver['numpy']}, Numba {ver['numba']}, asyncua {ver['asyncua']}, "
        f"pymodbus {ver['pymodbus']}. Source {head['source']['commit']}"
        + (" (with local edits)" if head["source"]["dirty"] else "")
        + (f". Suite wall time {wall_s:.0f} s." if wall_s > 0 else "."),
        "",
        "These machines are shared and noisy (other jobs run on the same 2 cores). Every comparison below is "
        "measured side by side in the same run and stated as a ratio; absolute figures are medians over repeats "
        "with min/max where given. Raw figures: "
        f"`{_relpath(results, REPO)}/*.json`, logs in `{_relpath(results, REPO)}/logs/`.",
        "",
        "## Targets",
        "",
        md_table(["target", "measured", "alternative", "ratio", "met"], target_rows(docs)),
        "",
    ]
    if "model" in docs:
        lines += _safe_section(lambda: [*model_section(docs["model"]), "", *model_notes(docs["model"])], "Model")
    lines += _safe_section(lambda: io_section(docs), "I/O")
    lines += _safe_section(lambda: loop_section(docs), "Loop")
    if not quick:
        lines += _safe_section(planning_section, "Planning")
    lines += growth_section(series, plot, report)
    lines += ["## The run behind these figures", "", md_table(
        ["benchmark", "status", "wall", "result", "note"],
        [[r.name, r.status, f"{r.wall_s:.1f} s", _when(docs.get(r.name)), r.note] for r in records],
    ), ""]  # fmt: skip
    growth_runs = [(r.name, e) for r in records for e in r.extra]
    if growth_runs:
        lines += [
            "Growth runs: "
            + ", ".join(f"{n} @ {e['cells']:,} cells {e['status']} ({e['wall_s']:.0f} s)" for n, e in growth_runs)
            + ".",
            "",
        ]
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return report


# ---------------------------------------------------------------------------- entry point


def add_arguments(p: argparse.ArgumentParser) -> None:
    names = ", ".join(b.name for b in BENCHES)
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run of every benchmark (CI)")
    p.add_argument("--only", action="append", default=None, metavar="NAME", help=f"run only NAME (repeatable): {names}")
    p.add_argument(
        "--results",
        type=Path,
        default=None,
        help="results directory (default benchmarks/results/suite, quick: benchmarks/results/quick)",
    )
    p.add_argument(
        "--report", type=Path, default=None, help="PERFORMANCE.md path (default: repo root; quick: results dir)"
    )
    p.add_argument("--no-growth", action="store_true", help="skip the extra plant-size runs of the I/O benchmarks")
    p.add_argument("--report-only", action="store_true", help="rebuild the report from stored results, run nothing")


def _load_run(path: Path) -> tuple[list[RunRecord], float, dict[str, Any] | None]:
    """Records, wall time and header (machine, versions, source) of the run that produced the
    stored results (``run.json``)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [RunRecord(**r) for r in data["records"]], float(data["wall_s"]), data.get("header")
    except (OSError, ValueError, KeyError, TypeError):
        return [], 0.0, None


def main_args(args: argparse.Namespace) -> int:
    known = {b.name for b in BENCHES}
    only = set(args.only) if args.only else None
    if only and not only <= known:
        print(f"unknown benchmark(s) {sorted(only - known)}; known: {sorted(known)}", file=sys.stderr)
        return 2
    results = args.results or (QUICK_DIR if args.quick else SUITE_DIR)
    report = args.report or (results / "PERFORMANCE.md" if args.quick else PERFORMANCE_MD)
    results.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    run_file = results / "run.json"
    if args.report_only:
        records, wall, head = _load_run(run_file)
    else:
        records = run_suite(results, args.quick, only, growth=not args.no_growth)
        wall = time.perf_counter() - t0
        head = header("suite", args.quick)
        run_file.write_text(
            json.dumps({"wall_s": round(wall, 1), "header": head, "records": [asdict(r) for r in records]}, indent=1)
        )
    docs = load_results(results)
    if not args.quick:
        docs = with_standalone_controller_parts(docs)
    for b in BENCHES:  # stored results this run did not refresh
        if b.name in docs and not any(r.name == b.name for r in records):
            records.append(RunRecord(b.name, "stored", note="not run now; latest stored result"))
    path = write_report(docs, records, results, report, args.quick, wall, head)
    print(f"wrote {path} and {results / 'growth.png'}")
    failed = [r.name for r in records if r.status in ("failed", "timeout")]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    return main_args(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
