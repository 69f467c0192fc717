"""``python -m benchmarks [--quick] [--only NAME ...]``: the benchmark suite, from a checkout.

Each benchmark runs in its own process and writes JSON under ``benchmarks/results/``; the
full run regenerates ``PERFORMANCE.md``. Not installed with the wheel: benchmarks measure a
checkout, and their results belong to it.
"""

from __future__ import annotations

import sys

from benchmarks.suite import main

if __name__ == "__main__":
    sys.exit(main())
