"""pytest plugin: a HIL rig on free loopback ports, torn down after the test.

Register it with ``pytest_plugins = ["hil_rigs.pytest_plugin"]`` (``tests/conftest.py``
does). Fixtures:

* ``rig`` — a ``HilRig`` (async tests; pytest-asyncio auto mode)::

      async def test_storm(rig):
          await rig.start("ae_storm", **{"scenario.duration_s": 900, "plant.cells": 32})
          await rig.start_controller()            # BridgePlant + PotController, over the wire
          await rig.run()                         # until the scenario's end
          rig.assert_all_aes_detected()
          rig.assert_all_aes_quenched()
          rig.assert_no_errors()                  # neither the rig nor the controller raised

  By default the rig runs in a child process (``python -m hil_rigs serve``) and the
  controller in the test process; ``start(..., process=False)`` keeps the rig in the
  test's event loop (fast unit-style tests, direct access via ``rig.rig``).
  ``start(..., lockstep=True)`` (implies ``process=False``): rig and controller share a
  ``LockstepClock`` — plant time moves only when the controller (or ``wait_until``)
  sleeps, and only as fast as the rig's PLCs scan; sockets stay real. What happens in
  plant time then no longer depends on how busy the machine is (a stall of the test
  process is not a heartbeat lost or an AE seen late); how fast the loop runs in wall
  time is a benchmark's business (``benchmarks/bench_hil_latency.py``).
  Faults: ``await rig.inject({"kind": "link_drop", "target": "all", "duration_s": 60})``.
* ``hil_scenario`` — ``load_scenario`` (``hil_scenario("ae_storm", **overrides)``).

Markers registered: ``hil`` (real sockets, a rig) — CI runs the short versions.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hil_rigs.faults import Fault
from hil_rigs.report import RigAssertionError, RigReport
from hil_rigs.scenarios import Scenario, load_scenario

__all__ = ["HilRig", "LockstepClock"]


class LockstepClock:
    """Plant time [s] for an in-process rig and the controller against it, moved in lockstep.

    ``sleep(s)`` moves the time forward in steps of at most ``step_s`` and, after each,
    waits until the rig (``attach``) has run two PLC scans — so the PLCs see every step, as
    they would scan every fraction of a second in real time. ``now()`` stands still
    meanwhile, whatever the wall clock does. Each wait fails after ``timeout_wall_s``.
    """

    def __init__(self, step_s: float = 1.0, timeout_wall_s: float = 60.0, start: float = 0.0) -> None:
        if step_s <= 0:
            raise ValueError(f"lockstep step must be > 0 s, got {step_s}")
        self.step_s = float(step_s)
        self.timeout_wall_s = float(timeout_wall_s)
        self._t = float(start)
        self.rig: Any = None

    def attach(self, rig: Any) -> None:
        """The in-process ``hil_rigs.rig.Rig`` whose scans pace this clock."""
        self.rig = rig

    def now(self) -> float:
        return self._t

    async def sleep(self, seconds: float) -> None:
        end = self._t + max(0.0, seconds)
        if end <= self._t:
            await asyncio.sleep(0)
            return
        while self._t < end - 1e-9:
            self._t = min(self._t + self.step_s, end)
            await self._scans(2)

    async def _scans(self, n: int) -> None:
        rig = self.rig
        if rig is None:
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        target, deadline = rig.ticks + n, loop.time() + self.timeout_wall_s
        while rig.ticks < target:
            task = getattr(rig, "_task", None)
            if task is not None and task.done():
                raise RigAssertionError(f"the rig's scan task ended: {rig.errors[-1:] or task}")
            if loop.time() > deadline:
                raise TimeoutError(f"the rig ran no PLC scan within {self.timeout_wall_s:g} wall s")
            kick = getattr(rig, "kick", None)
            if kick is not None:
                kick()
            await asyncio.sleep(0.001)


class HilRig:
    """A rig (in a child process or in-process) plus, optionally, the controller against it."""

    def __init__(self, tmp_path: Any = None) -> None:
        self.tmp_path = tmp_path
        self.scenario: Scenario | None = None
        self.proc: Any = None  # RigProcess
        self.rig: Any = None  # in-process Rig
        self.session: Any = None  # ControllerSession
        self.endpoints: dict[str, Any] = {}
        self.final: RigReport | None = None
        self.inject_times: list[tuple[float, Fault]] = []

    # ------------------------------------------------------------------ lifecycle

    async def start(self, scenario: Scenario | str, *, process: bool = True, speed: float | None = None,
                    lockstep: bool = False, **overrides: Any) -> HilRig:  # fmt: skip
        """Start a rig for ``scenario`` (name, path or ``Scenario``) with dotted ``overrides``
        (``lockstep``: in-process, on a ``LockstepClock``; see the module docstring)."""
        sc = load_scenario(scenario, **overrides)
        self.scenario = sc
        if lockstep:
            from hil_rigs.rig import Rig

            clock = LockstepClock()
            self.rig = Rig(sc, speed=speed, clock=clock)
            clock.attach(self.rig)
            await self.rig.start()
            self.endpoints = self.rig.endpoints()
        elif process:
            from hil_rigs.process import RigProcess

            wd = None if self.tmp_path is None else self.tmp_path / f"rig-{sc.name}"
            self.proc = RigProcess(sc, speed=speed, workdir=wd, max_wall_s=600.0)
            self.endpoints = await self.proc.start()
        else:
            from hil_rigs.rig import Rig

            self.rig = await Rig(sc, speed=speed).start()
            self.endpoints = self.rig.endpoints()
        return self

    async def start_controller(self, **kw: Any) -> Any:
        """Connect a ``ControllerSession`` (bridge + controller) to the rig's PLCs."""
        from hil_rigs.session import ControllerSession

        assert self.scenario is not None, "start() the rig first"
        clock = self.rig.clock if self.rig is not None else None
        self.session = await ControllerSession(self.scenario, self.endpoints, clock=clock, **kw).start()
        return self.session

    async def run(self, until_s: float | None = None) -> None:
        """Run the controller until plant time ``until_s`` (default: scenario end); without a
        controller, just wait for the rig's clock."""
        if until_s is None:
            assert self.scenario is not None, "start() the rig first"
            until_s = self.scenario.duration_s
        end = until_s
        if self.session is not None:
            await self.session.run(end)
        else:
            await self.wait_until(end)

    def run_in_background(self, until_s: float | None = None) -> asyncio.Task[None]:
        assert self.session is not None, "start_controller() first"
        return self.session.run_in_background(until_s)

    def now(self) -> float:
        """Plant time [s] (the rig's clock)."""
        if self.rig is not None:
            return self.rig.now()
        if self.session is not None:
            return self.session.clock.now()
        from hil_rigs.session import aligned_clock

        return aligned_clock(float(self.endpoints["speed"]), float(self.endpoints["epoch_monotonic"])).now()

    async def wait_until(self, t_s: float, timeout_wall_s: float | None = None) -> None:
        """Wait until plant time ``t_s`` [s]; fail after ``timeout_wall_s`` wall seconds
        (default: ten times the wall time it should take, at least a minute) or as soon as
        the rig process has exited."""
        if self.rig is not None and isinstance(self.rig.clock, LockstepClock):
            await self.rig.clock.sleep(t_s - self.now())
            return
        speed = float(self.endpoints.get("speed", 1.0))
        if timeout_wall_s is None:
            timeout_wall_s = max(60.0, 10.0 * (t_s - self.now()) / speed)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_wall_s
        while self.now() < t_s:
            proc = getattr(self.proc, "proc", None)
            if proc is not None and proc.returncode is not None:
                raise RigAssertionError(f"the rig process exited ({proc.returncode}) before plant time {t_s:g} s")
            if loop.time() > deadline:
                raise TimeoutError(f"plant time {t_s:g} s not reached within {timeout_wall_s:g} wall s")
            await asyncio.sleep(min(0.05, max((t_s - self.now()) / speed, 0.001)))

    async def inject(self, fault: Fault | dict[str, Any]) -> float:
        """Inject a fault now; returns the plant time it took effect."""
        f = fault if isinstance(fault, Fault) else Fault.model_validate(fault)
        if self.proc is not None:
            t = await self.proc.inject(f)
        else:
            await self.rig.inject(f)
            t = self.rig.now()
        self.inject_times.append((t, f))
        return t

    async def clear(self, fault: Fault | dict[str, Any]) -> float:
        f = fault if isinstance(fault, Fault) else Fault.model_validate(fault)
        if self.proc is not None:
            return await self.proc.clear(f)
        await self.rig.clear(f)
        return self.rig.now()

    async def report(self) -> RigReport:
        """The rig's report (final once ``finish()`` ran)."""
        if self.final is not None:
            return self.final
        if self.proc is not None:
            return await self.proc.report()
        return self.rig.report()

    async def finish(self) -> RigReport:
        """Stop the controller, then the rig; keep and return the final report."""
        if self.final is not None:
            return self.final
        if self.session is not None:
            await self.session.stop()
        if self.proc is not None:
            self.final = await self.proc.stop()
        elif self.rig is not None:
            await self.rig.stop()
            self.final = self.rig.report()
        assert self.final is not None
        return self.final

    async def close(self) -> None:
        """Teardown: stop whatever still runs (never raises)."""
        try:
            if self.session is not None:
                await self.session.stop()
        except Exception:
            pass
        try:
            if self.proc is not None:
                if self.final is None:
                    await self.proc.stop()
                await self.proc.close()
            elif self.rig is not None and self.rig.running:
                await self.rig.stop()
        except Exception:
            pass

    # ------------------------------------------------------------------ assertions (final report)

    def _final(self) -> RigReport:
        if self.final is None:
            raise RuntimeError("call `await rig.finish()` before the assertions (or use the async a-variants)")
        return self.final

    def assert_no_errors(self) -> None:
        """No exception in the rig process (scan loop, hooks, exit code, stderr) nor in the controller loop."""
        rep = self._final()
        rep.assert_no_errors()
        proc = rep.process
        if proc:
            if proc.get("returncode") not in (0, None):
                raise RigAssertionError(f"rig process exited with {proc['returncode']}:\n{proc.get('stderr_tail')}")
            if proc.get("traceback"):
                raise RigAssertionError(f"rig process printed a traceback:\n{proc.get('stderr_tail')}")
        if self.session is not None and self.session.errors:
            raise RigAssertionError(f"controller loop raised {len(self.session.errors)}x:\n{self.session.errors[0]}")

    def detection_window_s(self) -> float:
        """How long an AE must stay visible to be confirmable: (confirm samples + 1) scans,
        plus half a wall second of plant time (sockets do not accelerate)."""
        assert self.session is not None, "no controller ran"
        confirm = self.session.controller.cfg.detection.confirm_samples
        return (confirm + 1) * self.session.scan_s + 0.5 * float(self.endpoints.get("speed", 1.0))

    def assert_all_aes_quenched(self, max_duration_s: float | None = None, min_aes: int | None = None) -> None:
        """Every AE under the controller that lasted beyond the detection window got a quench
        command from it and ended within ``max_duration_s`` (default: the scenario's)."""
        rep = self._final()
        n = min_aes if min_aes is not None else max(int(rep.expect.get("min_aes", 1)), 1)
        rep.assert_all_aes_quenched(max_duration_s, min_aes=n, min_visible_s=self.detection_window_s())

    def assert_all_aes_detected(self, tolerance_s: float | None = None) -> None:
        """Every AE under the controller that lasted beyond the detection window was detected
        by it on the right cell within ``tolerance_s`` (default: the detection window)."""
        win = self.detection_window_s()
        tol = tolerance_s if tolerance_s is not None else win
        self._final().assert_all_aes_detected(self.session.detected(), tol, min_visible_s=win)

    def assert_amperage_held(self, band_ka: float, after_s: float = 0.0, line: int = 0) -> float:
        return self._final().assert_amperage_held(band_ka, after_s, line)

    def assert_fell_back_to_local(self, device: str, after_s: float, within_s: float) -> float:
        return self._final().assert_fell_back_to_local(device, after_s, within_s)

    def assert_back_to_remote(self, device: str, after_s: float, within_s: float) -> float:
        return self._final().assert_back_to_remote(device, after_s, within_s)

    def assert_bumpless(self, t_resume: float, max_step_ka: float, line: int = 0) -> float:
        return self._final().assert_bumpless(t_resume, max_step_ka, line)

    def controller_events(self, kind: str | None = None) -> list[tuple[float, str, int, str]]:
        ev = self.session.events if self.session is not None else []
        return [e for e in ev if kind is None or e[1] == kind]


@pytest.fixture
async def rig(tmp_path: Any):
    """A ``HilRig``; whatever it started is torn down after the test."""
    h = HilRig(tmp_path)
    try:
        yield h
    finally:
        await h.close()


@pytest.fixture
def hil_scenario():
    """``load_scenario`` as a fixture: ``hil_scenario("ae_storm", **{"plant.cells": 16})``."""
    return load_scenario


def pytest_configure(config: Any) -> None:
    config.addinivalue_line("markers", "hil: hardware-in-the-loop scenario over real sockets")
