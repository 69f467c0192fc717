"""Threads for the stepping kernels on a machine shared with other jobs.

A plant server or a CI machine is shared, so the parallel kernels must never cost more
wall time than the serial one when other jobs hold the cores. Two measures do it:

1. **Passive wait policy.** Numba's default threading layer here is OpenMP (GNU libgomp).
   Its threads busy-wait (``GOMP_SPINCOUNT`` 300,000 spins, milliseconds) at every
   barrier and between parallel regions. On free cores that saves a wake-up; on shared
   cores the spinning thread keeps a core from the thread it waits for (and from the other
   jobs). The cells-per-sub-step kernel meets a barrier every sub-step (~50 µs of work per
   thread on the 660-cell plant), so it suffers most. ``configure_wait_policy`` (called by
   ``twin/__init__.py``, i.e. before Numba's threading layer starts the OpenMP runtime,
   which reads the policy once when it loads) sets ``OMP_WAIT_POLICY=passive``: waiting
   threads sleep at once. GNU, LLVM and Intel OpenMP all honour it (LLVM and Intel
   then default ``KMP_BLOCKTIME`` to 0); the workqueue layer never spins; TBB is not installed
   here. A policy the user set (``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT`` or ``KMP_BLOCKTIME``
   in the environment) is left alone. If an OpenMP runtime was loaded before ``twin`` was
   imported (another library started it), the policy can no longer take effect:
   ``wait_policy_status()`` says so.

2. **Measured kernel choice** (``KernelChooser``). Sleeping costs a wake-up (tens of µs)
   per parallel region, which a sub-step of 660 cells cannot pay back; whole lines per
   thread pay it once per ``advance``. Which of the serial, whole-lines and cells-per-sub-step
   kernels is fastest depends on the plant, the call size, the cores and what else runs,
   and the load on a shared machine comes and goes. So ``Potline`` (``kernel="auto"``,
   the default) times every slice it runs and uses the kernel with the lowest wall time
   per cell-step, re-trying the others every few seconds (less often while they keep
   losing). All kernels give the serial kernel's result bit for bit, so the choice changes
   only the wall time.

Measured on 2 shared cores (AMD EPYC; other agents' jobs kept the load at 12–14 throughout),
one simulated hour of the 660-cell reference plant in 60 s ``advance`` calls as ``potline sim``
runs it, side by side in one run of ``benchmarks/bench_threads_under_load.py`` at 19693d4
(``benchmarks/results/threads_under_load.json``). "Quiet": the benchmark's session ahead of
the other jobs (autogroup nice -19; the serial kernel had 1.00 of a core): serial 0.37 s.
"Loaded": beside the other jobs plus 2 CPU-bound processes of its own (serial had 0.13 of a
core): serial 3.4 s. Wall time / serial, medians of 5 (3) round-robin rounds, range in
brackets (* an earlier run of the same benchmark, 3 rounds):

================================================  =====  ======================
parallel kernel, OpenMP wait                      quiet  loaded
================================================  =====  ======================
cells per sub-step, libgomp default (300k spins)  0.57   10.8 (48.9 s vs 3.9 s)
cells per sub-step, GOMP_SPINCOUNT=20000 *        0.53   6.4
cells per sub-step, GOMP_SPINCOUNT=2000 *         0.62   1.37
cells per sub-step, passive                       1.25   0.40 (0.22–0.94)
whole lines, passive                              0.74   0.96 (0.68–1.11)
measured choice, passive (the default)            0.83   0.41 (0.22–0.98)
================================================  =====  ======================

(The issue's report, load ≈ 9: 15.7 s parallel vs 2.2 s serial.) Passive waiting takes the
per-sub-step kernel from the best on free cores to the worst, and leaves the whole-lines
kernel at ~0.75 of serial (its ideal: 396/660 = 0.6); the measured choice then runs whole lines on free cores and
cells per sub-step when the cores are contended (where sleeping partners cost nothing and
each thread gets its own share of the CPU), and is never the 10x loser. The price: on free
cores the default takes ~45 % more wall time than the spinning kernel did (0.83 vs 0.57 of
serial here). Where the machine is known to be free, ``GOMP_SPINCOUNT=300000`` (libgomp's own
default) in the environment brings the spinning back, with the measured choice still falling
back from a kernel that turns slow; not ``OMP_WAIT_POLICY=active``, whose idle threads spin for
minutes, also while the serial kernel runs. Whole lines per thread need one group of lines
per thread (``Potline.line_groups``): Numba hands each thread a contiguous block of a
``prange``, so 3 lines on 2 threads went 2 + 1 lines (0.8 of serial at best).
"""

from __future__ import annotations

import os
import statistics
import sys
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: environment variables that set an OpenMP runtime's wait policy; if any is set, the user chose
WAIT_POLICY_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
#: shared libraries of OpenMP runtimes (GNU, Intel, LLVM)
_OPENMP_LIBS = ("libgomp", "libiomp", "libomp")
#: marks that ``configure_wait_policy`` set the policy (kept by child processes)
_MARK = "POTLINE_OMP_WAIT_POLICY_SET"

_status = "not configured"


def _openmp_loaded() -> bool | None:
    """Whether an OpenMP runtime is already mapped into this process (None: cannot tell)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    return any(lib in maps for lib in _OPENMP_LIBS)


def _numba_threads_started() -> bool:
    if "numba" not in sys.modules:
        return False
    try:
        from numba.np.ufunc import parallel

        return bool(getattr(parallel, "_is_initialized", False))
    except ImportError:  # pragma: no cover - numba moved it
        return False


def configure_wait_policy() -> str:
    """Let OpenMP threads sleep instead of spinning while they wait (module docstring).

    Sets ``OMP_WAIT_POLICY=passive`` unless the user set a wait policy or it is too late
    (the runtime already loaded). Must run before Numba's threading layer first starts;
    ``twin/__init__.py`` calls it. Returns and remembers what happened
    (``wait_policy_status``).
    """
    global _status
    if os.environ.get(_MARK) and os.environ.get("OMP_WAIT_POLICY") == "passive":
        _status = "passive (set by potline-twin)"
    elif any(os.environ.get(v) for v in WAIT_POLICY_VARS):
        chosen = ", ".join(f"{v}={os.environ[v]}" for v in WAIT_POLICY_VARS if os.environ.get(v))
        _status = f"{chosen} (set in the environment)"
    elif _numba_threads_started() or _openmp_loaded():
        _status = "runtime default (an OpenMP runtime was loaded before twin: too late to set passive)"
    else:
        os.environ["OMP_WAIT_POLICY"] = "passive"
        os.environ[_MARK] = "1"
        _status = "passive (set by potline-twin)"
    return _status


def wait_policy_status() -> str:
    """What ``configure_wait_policy`` found or set, in words."""
    return _status


def threading_info() -> dict[str, Any]:
    """Numba's threading layer, its thread count and the wait policy (starts the layer)."""
    import numba

    threads = numba.get_num_threads()  # launches the threading layer if it was not yet
    return {
        "threading_layer": numba.threading_layer(),
        "threads": threads,
        "wait_policy": wait_policy_status(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


# ------------------------------------------------------------------------------ kernel choice

#: re-try a kernel not in use after this long [s of wall time] ...
REPROBE_S = 2.0
#: ... doubling the wait each time it clearly loses again, up to this [s] (a try of a kernel
#: that costs more than twice the one in use, e.g. a spinning one among other jobs) ...
REPROBE_MAX_S = 60.0
#: ... or up to this [s] (a kernel that lost by less: cheap to try, and it may win again soon)
REPROBE_NEAR_MAX_S = 8.0
#: a try lasts at least this many cell-steps (cells x sub-steps; ~15 ms serial), over
#: several ``advance`` calls if they are small: one call on a busy machine is too noisy
TRIAL_CELL_STEPS = 100_000
#: ``run`` cuts a long call into slices of at most this many cell-steps (~0.3 s serial), so
#: it follows a change of load on the machine
SLICE_CELL_STEPS = 2_000_000
#: calls smaller than this (~30 µs of work) run serially and untimed: a parallel region's
#: wake-ups cost more than they could share out
MIN_TIMED_CELL_STEPS = 200
#: weight of each new slice of the kernel in use in its running cost estimate (which decides
#: when to try another kernel) ...
SMOOTHING = 0.2
#: ... while switching compares a try with the median of the kernel in use's last slices (one
#: slow slice, e.g. a burst of another job, neither switches nor sticks to its estimate)
RECENT_SLICES = 8
#: another kernel takes over only when it is this much cheaper (no flapping on near ties)
MARGIN = 0.05


class KernelChooser:
    """Picks, slice by slice, the kernel with the lowest measured wall time per cell-step.

    Each kernel is tried in turn first (in the given order), then the cheapest runs. A
    kernel not in use is tried again once its wait has passed (``reprobe_s``, doubled each
    time it loses by more than ``margin``, up to ``REPROBE_NEAR_MAX_S``, or up to
    ``reprobe_max_s`` when it cost more than twice the kernel in use), so a change of load
    on the machine is noticed. A try lasts ``trial_cell_steps`` or more (consecutive slices) and
    replaces that kernel's estimate; the kernel in use is followed with exponential
    smoothing; when that estimate rises above another kernel's by more than ``margin``, that
    kernel is tried at once. Another kernel takes over only when a try of it comes out
    cheaper by more than ``margin`` than the median of the last ``RECENT_SLICES`` slices of
    the kernel in use, which then keeps that median as its estimate.
    ``now`` is a wall clock [s] (e.g. ``twin.clock.RealClock().now``).
    """

    def __init__(
        self,
        kernels: Sequence[str],
        now: Callable[[], float],
        reprobe_s: float = REPROBE_S,
        reprobe_max_s: float = REPROBE_MAX_S,
        trial_cell_steps: int = TRIAL_CELL_STEPS,
        smoothing: float = SMOOTHING,
        margin: float = MARGIN,
    ) -> None:
        if not kernels:
            raise ValueError("KernelChooser needs at least one kernel")
        self.kernels = tuple(kernels)
        self._now = now
        self.reprobe_s = reprobe_s
        self.reprobe_max_s = reprobe_max_s
        self.trial_cell_steps = trial_cell_steps
        self.smoothing = smoothing
        self.margin = margin
        #: wall seconds per cell-step, per kernel (absent until measured)
        self.cost: dict[str, float] = {}
        #: slices run per kernel
        self.runs: dict[str, int] = dict.fromkeys(self.kernels, 0)
        #: the kernel in use (the first one until every kernel was tried)
        self.current = self.kernels[0]
        self._measured_at: dict[str, float] = {}
        self._wait: dict[str, float] = dict.fromkeys(self.kernels, reprobe_s)
        self._trial: str | None = None
        self._trial_s = 0.0
        self._trial_steps = 0
        self._recent: deque[float] = deque(maxlen=RECENT_SLICES)  # the kernel in use's slices

    def run(self, n_sub: int, n_cells: int, step: Callable[[str, int], None]) -> None:
        """Run ``n_sub`` sub-steps of ``n_cells`` cells as ``step(kernel, sub_steps)`` calls:
        in slices (a try's remainder, or at most ``SLICE_CELL_STEPS``), each with the kernel
        ``pick`` names, timed and ``record``-ed."""
        if n_sub * n_cells < MIN_TIMED_CELL_STEPS:
            step("serial" if "serial" in self.kernels else self.current, n_sub)
            return
        done = 0
        while done < n_sub:
            kernel, trial_left = self.pick()
            budget = SLICE_CELL_STEPS if trial_left is None else min(trial_left, SLICE_CELL_STEPS)
            m = min(n_sub - done, max(1, budget // n_cells))
            t0 = self._now()
            step(kernel, m)
            self.record(kernel, self._now() - t0, m * n_cells)
            done += m

    def pick(self) -> tuple[str, int | None]:
        """The kernel to run next and, while it is on trial, the cell-steps its try still needs
        (None: the kernel in use)."""
        if self._trial is None:
            self._trial = self._due()
        if self._trial is not None:
            return self._trial, max(self.trial_cell_steps - self._trial_steps, 1)
        return self.current, None

    def _due(self) -> str | None:
        """The kernel to try next, if any: one never measured, else the one waiting longest
        past its wait."""
        for k in self.kernels:
            if k not in self.cost:
                return k
        now = self._now()
        due = [k for k in self.kernels if k != self.current and now - self._measured_at[k] >= self._wait[k]]
        return min(due, key=self._measured_at.__getitem__) if due else None

    def record(self, kernel: str, seconds: float, cell_steps: int) -> None:
        """Account a slice of ``cell_steps`` that ``kernel`` ran in ``seconds`` of wall time."""
        if cell_steps <= 0:
            return
        self.runs[kernel] += 1
        seconds = max(seconds, 0.0)
        if kernel == self._trial:
            self._trial_s += seconds
            self._trial_steps += cell_steps
            if self._trial_steps >= self.trial_cell_steps:
                self._end_trial(kernel, self._trial_s / self._trial_steps)
            return
        cost = seconds / cell_steps
        if kernel in self.cost:
            self.cost[kernel] += self.smoothing * (cost - self.cost[kernel])
        else:
            self.cost[kernel] = cost
        self._measured_at[kernel] = self._now()
        if kernel == self.current:
            self._recent.append(cost)
        if kernel == self.current and self._trial is None:
            cheapest = min(self.cost, key=self.cost.__getitem__)
            if self.cost[cheapest] < (1.0 - self.margin) * self.cost[kernel]:
                self._trial = cheapest  # looks cheaper now: try it afresh before switching

    def _end_trial(self, kernel: str, cost: float) -> None:
        retry = kernel in self.cost
        self.cost[kernel] = cost
        self._measured_at[kernel] = self._now()
        self._trial, self._trial_s, self._trial_steps = None, 0.0, 0
        if len(self.cost) < len(self.kernels):
            return  # still trying every kernel once
        if not retry:  # the first round of tries is over: start with the cheapest
            self._switch(min(self.cost, key=self.cost.__getitem__))
            return
        level = self._level()
        if kernel != self.current and cost < (1.0 - self.margin) * level:
            self._switch(kernel)
        elif kernel != self.current and cost > (1.0 + self.margin) * level:  # lost clearly
            cap = self.reprobe_max_s if cost > 2.0 * level else min(REPROBE_NEAR_MAX_S, self.reprobe_max_s)
            self._wait[kernel] = min(2.0 * self._wait[kernel], cap)

    def _level(self) -> float:
        """Cost of the kernel in use: the median of its last slices (its estimate before it has 3)."""
        if len(self._recent) >= 3:
            return statistics.median(self._recent)
        return self.cost[self.current]

    def _switch(self, kernel: str) -> None:
        if self.current in self.cost:
            self.cost[self.current] = self._level()
        self._recent.clear()
        self._wait[self.current] = self.reprobe_s
        self._wait[kernel] = self.reprobe_s
        self.current = kernel

    def stats(self) -> dict[str, Any]:
        """Kernel in use, cost per kernel [ns per cell-step] and slices each ran."""
        return {
            "current": self.current,
            "ns_per_cell_step": {k: round(v * 1e9, 3) for k, v in self.cost.items()},
            "slices": dict(self.runs),
        }
