"""The daemon's plant clock and what it knows about its own process (age, memory)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from potline.daemon_config import LoadedConfig
    from twin.clock import Clock

__all__ = ["EpochClock", "clock_speed", "make_clock", "process_age_s", "rss_bytes"]


class EpochClock:
    """Plant time shared with another process on this machine (a HIL rig).

    ``now() = speed x (CLOCK_MONOTONIC - epoch)`` [plant s]; CLOCK_MONOTONIC is
    system-wide on Linux, so a daemon and a rig started separately agree on plant time.
    """

    def __init__(self, speed: float, epoch_monotonic: float) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.factor = float(speed)
        self.epoch = float(epoch_monotonic)

    def now(self) -> float:
        return self.factor * (time.monotonic() - self.epoch)

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of plant time."""
        await asyncio.sleep(max(0.0, seconds) / self.factor)


def make_clock(loaded: LoadedConfig) -> Clock:
    """The daemon's plant clock: real time, accelerated (HIL) or epoch-shared (HIL)."""
    from twin.clock import AcceleratedClock, RealClock

    d = loaded.config.daemon
    if d.clock_epoch_monotonic is not None:
        return EpochClock(d.clock_speed, d.clock_epoch_monotonic)
    if d.clock_speed != 1.0:
        return AcceleratedClock(d.clock_speed)
    return RealClock()


def clock_speed(clock: Clock) -> float:
    """Plant seconds per wall second of ``clock`` (1 for a real clock)."""
    return float(getattr(clock, "factor", 1.0))


def process_age_s() -> float | None:
    """Seconds since this process was created (Linux ``/proc``), None when unknown."""
    try:
        with open("/proc/self/stat", "rb") as f:
            raw = f.read().decode()
        fields = raw[raw.rindex(")") + 2 :].split()
        start_ticks = int(fields[19])  # field 22 of stat(5), counted after "comm"
        hz = os.sysconf("SC_CLK_TCK")
        return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / hz
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def rss_bytes() -> int:
    """Resident memory of this process [bytes] (0 when unknown)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
