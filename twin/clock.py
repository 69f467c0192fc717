"""Clocks: every timed thing in the project takes one (docs/architecture.md, "Clock" contract).

``RealClock`` follows the monotonic wall clock; ``VirtualClock`` is advanced by the
simulation itself (offline runs) and ``AcceleratedClock`` runs a fixed factor faster
than real time (HIL rigs at e.g. 50x). All report seconds as float.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """A source of time in seconds and a way to wait for it."""

    def now(self) -> float:
        """Current time [s] on this clock."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...


class RealClock:
    """Monotonic wall-clock time [s] since the clock was created."""

    def __init__(self) -> None:
        self._t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self._t0

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class AcceleratedClock:
    """Virtual time that runs ``factor`` times faster than the wall clock.

    ``now()`` = factor x (monotonic seconds since start) + ``start``; ``sleep(s)``
    waits s / factor wall seconds.
    """

    def __init__(self, factor: float = 1.0, start: float = 0.0) -> None:
        if factor <= 0:
            raise ValueError(f"clock factor must be > 0, got {factor}")
        self.factor = float(factor)
        self._start = float(start)
        self._t0 = time.monotonic()

    def now(self) -> float:
        return self._start + self.factor * (time.monotonic() - self._t0)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.factor)


class VirtualClock:
    """Time that only moves when ``advance`` is called (offline simulation)."""

    def __init__(self, start: float = 0.0) -> None:
        self._t = float(start)

    def now(self) -> float:
        return self._t

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` [s] (must be >= 0)."""
        if seconds < 0:
            raise ValueError(f"cannot move a clock backwards ({seconds} s)")
        self._t += seconds

    async def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)
