"""Shared helpers of the benchmarks: machine and version info, repeat timing, JSON + Markdown output.

Conventions every benchmark module follows (``benchmarks/suite.py`` relies on them):

- runnable as ``python -m benchmarks.<module> [--quick] [--out PATH]``; ``--quick`` is a
  seconds-long smoke run that proves the benchmark still works (figures not meaningful);
- writes one JSON document to ``--out`` (default ``benchmarks/results/<name>.json``) with
  ``benchmark``, ``when``, ``quick``, ``machine`` and ``versions`` at the top level;
- timed figures are summarised over repeats as ``{"min", "median", "max", "n"}``
  (``summarize``); the machines are shared and noisy, so compare alternatives measured
  side by side in the same run (ratios), never figures from different runs;
- optionally a ``growth`` section: ``{figure: {"unit": str, "better": "higher"|"lower",
  "points": [[cells, value], ...]}}`` for the suite's growth table and log-log plot;
- optionally a short Markdown summary next to the JSON (``<name>.md``; ``write_result``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"

#: distributions whose versions every result records
VERSIONED = ("numpy", "numba", "llvmlite", "asyncua", "pymodbus", "pydantic", "matplotlib")


def versions() -> dict[str, str | None]:
    """Python and the installed versions of the libraries the figures depend on."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in VERSIONED:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return sorted(f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f") if f in flags)
    except OSError:
        pass
    return []


def _mem_total_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def git_commit() -> dict[str, Any]:
    """Commit of the tree the figures were measured on (``dirty`` if it has local edits; the
    benchmark outputs themselves, results and PERFORMANCE.md, do not count)."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results",
             ":!PERFORMANCE.md"], cwd=REPO, capture_output=True, text=True,
            timeout=10,
        ).stdout.strip()  # fmt: skip
        return {"commit": sha or None, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def machine_info() -> dict[str, Any]:
    """CPU, cores usable by this process, memory, load average and OS."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cpus": os.cpu_count(),
        "cpus_usable": usable,
        "mem_gb": _mem_total_gb(),
        "loadavg_1_5_15": load,
        "platform": platform.platform(),
        "numba_threads": os.environ.get("NUMBA_NUM_THREADS") or usable,
    }


def header(name: str, quick: bool) -> dict[str, Any]:
    """The top-level fields every result carries."""
    return {
        "benchmark": name,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "machine": machine_info(),
        "versions": versions(),
        "source": git_commit(),
    }


def summarize(values: Sequence[float], scale: float = 1.0, digits: int = 6) -> dict[str, float | int]:
    """``{"min", "median", "max", "n"}`` of ``values`` times ``scale``."""
    if not values:
        return {"min": float("nan"), "median": float("nan"), "max": float("nan"), "n": 0}
    v = [x * scale for x in values]
    return {
        "min": _round(min(v), digits),
        "median": _round(statistics.median(v), digits),
        "max": _round(max(v), digits),
        "n": len(v),
    }


def _round(x: float, digits: int) -> float:
    """Round to ``digits`` significant figures (keeps JSON readable, loses nothing measurable)."""
    if x == 0 or x != x or x in (float("inf"), float("-inf")):
        return x
    return float(f"{x:.{digits}g}")


def time_repeats(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Wall times [s] of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def base_parser(description: str, name: str) -> argparse.ArgumentParser:
    """Parser with the suite's common options: ``--quick`` and ``--out``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="seconds-long smoke run (CI): proves it works, no figures")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / f"{name}.json", help="JSON output path")
    return p


def write_result(doc: dict[str, Any], out: Path, markdown: str | None = None) -> Path:
    """Write ``doc`` as JSON to ``out`` and ``markdown`` (if any) next to it as ``<stem>.md``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1, allow_nan=True) + "\n", encoding="utf-8")
    if markdown is not None:
        out.with_suffix(".md").write_text(markdown.rstrip() + "\n", encoding="utf-8")
    return out


def child_env(**extra: str) -> dict[str, str]:
    """Environment for a benchmark subprocess: the repository importable, the twin's
    Numba cache configured afresh by the child (``twin/__init__.py``)."""
    env = dict(os.environ)
    for key in ("POTLINE_NUMBA_CACHE_SET", "NUMBA_CACHE_DIR"):
        env.pop(key, None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.update(extra)
    return env


def fmt_rate(x: float) -> str:
    """Cell-steps/s in M or k with 3 significant figures."""
    if x != x:
        return "n/a"
    if x >= 1e6:
        return f"{x / 1e6:.3g} M"
    if x >= 1e3:
        return f"{x / 1e3:.3g} k"
    return f"{x:.3g}"


def md_table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(str(h) for h in head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def python() -> str:
    return sys.executable
