"""The control loop: read the plant, step the controller, write, on a clock.

``ControlRuntime`` runs ``plant.read() -> controller.step(meas, now) -> plant.write(cmds)``
every ``scan_s`` of clock time (real, or accelerated against a HIL rig). It is the
async shell around the sans-I/O controller; the daemon builds on it. Optional hooks:

* ``before_step(meas, now)``: operator requests, schedules (called before the step);
* ``on_events(events, now)``: the controller's and the plant's events (journal);
* ``on_cycle(CycleInfo)``: timings per cycle (metrics, progress displays);
* ``on_error(exc)``: an exception in a cycle (the loop logs it and goes on: a daemon
  never dies of one bad cycle; the plant's PLCs fall back to local if it persists,
  because the heartbeat only ticks in a completed write).

A cycle that overruns its slot is not made up: the next one starts at the next slot
(no bursts of catch-up commands).
"""

from __future__ import annotations

import asyncio
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from potctl.plant import Commands, Measurements, Plant

__all__ = ["ControlRuntime", "CycleInfo"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class CycleInfo:
    """Timing of one cycle (wall seconds unless noted).

    Attributes:
        n: cycle number (1-based).
        t_s: clock time at the start of the cycle [clock s].
        read_s, step_s, write_s: wall time of each phase.
        lag_s: how late the cycle started against its slot [clock s].
        overrun: the cycle took longer than its slot.
    """

    n: int
    t_s: float
    read_s: float
    step_s: float
    write_s: float
    lag_s: float
    overrun: bool

    @property
    def total_s(self) -> float:
        return self.read_s + self.step_s + self.write_s


class ControlRuntime:
    """Runs a controller against a ``Plant`` on a clock (see module docstring).

    Args:
        plant: anything with ``async read() -> Measurements`` / ``async write(Commands)``.
        controller: ``step(measurements, now) -> Commands`` (``potctl.controller.PotController``).
        clock: ``twin.clock`` clock (``now()``, ``async sleep()``).
        scan_s: cycle period [clock s].
    """

    def __init__(
        self,
        plant: Plant,
        controller: Any,
        clock: Any,
        scan_s: float = 1.0,
        *,
        before_step: Callable[[Measurements, float], None] | None = None,
        on_events: Callable[[list[tuple[str, int, str]], float], None] | None = None,
        on_cycle: Callable[[CycleInfo], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        if not scan_s > 0:
            raise ValueError(f"scan_s must be > 0, got {scan_s}")
        self.plant = plant
        self.controller = controller
        self.clock = clock
        self.scan_s = float(scan_s)
        self.before_step = before_step
        self.on_events = on_events
        self.on_cycle = on_cycle
        self.on_error = on_error
        self.cycles = 0
        self.overruns = 0
        self.errors: list[str] = []
        self.last_measurements: Measurements | None = None
        self.last_commands: Commands | None = None
        self._stop = asyncio.Event()

    def stop(self) -> None:
        """Ask the loop to end after the current cycle."""
        self._stop.set()

    async def cycle(self, slot_t: float | None = None) -> CycleInfo:
        """Run one cycle now (read, step, write) and return its timing."""
        perf = time.perf_counter
        t0 = self.clock.now()
        a = perf()
        meas = await self.plant.read()
        b = perf()
        now = meas.t_s if math.isfinite(meas.t_s) else t0
        if self.before_step is not None:
            self.before_step(meas, now)
        cmds = self.controller.step(meas, now)
        c = perf()
        await self.plant.write(cmds)
        d = perf()
        self.cycles += 1
        self.last_measurements, self.last_commands = meas, cmds
        events = list(cmds.events)
        drain = getattr(self.plant, "drain_events", None)
        if drain is not None:
            events += drain()
        if events and self.on_events is not None:
            self.on_events(events, now)
        lag = 0.0 if slot_t is None else max(t0 - slot_t, 0.0)
        overrun = (self.clock.now() - (slot_t if slot_t is not None else t0)) > self.scan_s
        self.overruns += int(overrun)
        info = CycleInfo(self.cycles, t0, b - a, c - b, d - c, lag, overrun)
        if self.on_cycle is not None:
            self.on_cycle(info)
        return info

    async def run(self, until_s: float | None = None, stop: asyncio.Event | None = None) -> None:
        """Cycle every ``scan_s`` until ``until_s`` (clock time), ``stop`` is set or ``stop()``."""
        self._stop.clear()
        slot = self.clock.now()
        while not self._stop.is_set() and (stop is None or not stop.is_set()):
            if until_s is not None and self.clock.now() >= until_s:
                break
            try:
                await self.cycle(slot)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                tb = traceback.format_exc()
                self.errors.append(tb)
                log.error("control_cycle_failed", error=f"{type(exc).__name__}: {exc}")
                if self.on_error is not None:
                    self.on_error(exc)
            slot += self.scan_s
            now = self.clock.now()
            if now > slot:  # overran: skip the missed slots, never burst
                slot += math.ceil((now - slot) / self.scan_s) * self.scan_s
            await self.clock.sleep(slot - now)
