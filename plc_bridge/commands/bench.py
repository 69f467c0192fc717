"""``potline bench``: run the benchmark suite (each benchmark in its own process), write
``benchmarks/results/*.json``, the growth table and log-log plot, and regenerate
``PERFORMANCE.md``. ``--quick`` is the seconds-per-benchmark CI smoke run (results under
``benchmarks/results/quick/``, no timing claims)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from benchmarks.suite import add_arguments as suite_arguments

    suite_arguments(p)


def main(args: argparse.Namespace) -> int:
    from benchmarks.suite import main_args

    return main_args(args)
