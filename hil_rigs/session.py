"""The controller side of a HIL run: ``BridgePlant`` + ``PotController`` + ``ControlRuntime``
against a rig's endpoints, on a clock aligned with the rig's.

``ControllerSession`` is what tests, ``potline demo`` and the latency benchmark run
against a rig (in-process or in a child process): it only knows the rig's endpoints
(protocol, host, port per PLC), its layout and its clock epoch — everything else goes
over Modbus TCP / OPC UA. It also plays the operator for the scenario: the
``[[requests]]`` (cut-out/cut-in, restart ramp, new target) at their times and the
``[controller] power_schedule_mw``.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog

from hil_rigs.scenarios import Scenario
from plc_bridge.plant import BridgePlant, BridgeSettings
from plc_bridge.runtime import ControlRuntime, CycleInfo
from twin.clock import AcceleratedClock

__all__ = ["ControllerSession", "aligned_clock", "bridge_settings_for"]

log = structlog.get_logger(__name__)


def aligned_clock(speed: float, epoch_monotonic: float) -> AcceleratedClock:
    """An ``AcceleratedClock`` reading the same plant time as a rig started at ``epoch_monotonic``
    (``time.monotonic`` is shared by the processes of one host)."""
    return AcceleratedClock(speed, start=speed * (time.monotonic() - epoch_monotonic))


def bridge_settings_for(scan_s: float, speed: float, **overrides: Any) -> BridgeSettings:
    """Bridge timing scaled to the scan and the time factor: data is stale after 5 scans,
    but never within less than ~1 wall second (processes and sockets do not accelerate)."""
    wall = max(speed, 1.0)
    kw: dict[str, Any] = dict(
        stale_after_s=max(5.0 * scan_s, 1.0 * wall),
        plc_heartbeat_timeout_s=max(10.0 * scan_s, 2.0 * wall),
        setpoint_max_interval_s=max(5.0 * scan_s, 10.0),
        ack_timeout_s=max(15.0 * scan_s, 3.0 * wall),
    )
    kw.update(overrides)
    return BridgeSettings(**kw)


@dataclass
class SessionStats:
    cycles: int = 0
    overruns: int = 0
    read_s: list[float] = field(default_factory=list)
    step_s: list[float] = field(default_factory=list)
    write_s: list[float] = field(default_factory=list)


class ControllerSession:
    """Controller + bridge against a rig (see module docstring).

    Args:
        scenario: the scenario (controller scan, config overrides, operator requests).
        endpoints: the rig's ``endpoints()`` (or ``RigProcess.start()``'s result).
        clock: plant clock; default: aligned with the rig's epoch.
        control: extra ``ControlConfig`` overrides (on top of the scenario's).
        settings: bridge settings (default: ``bridge_settings_for`` the scan and speed).
        scan_s: controller scan override [plant s].
    """

    def __init__(self, scenario: Scenario, endpoints: dict[str, Any], *, clock: Any = None,
                 control: dict[str, Any] | None = None, settings: BridgeSettings | None = None,
                 scan_s: float | None = None) -> None:  # fmt: skip
        self.scenario = scenario
        self.endpoints = endpoints
        self.speed = float(endpoints.get("speed", scenario.speed))
        self.clock = clock or aligned_clock(self.speed, float(endpoints["epoch_monotonic"]))
        self.scan_s = float(scan_s or scenario.controller.scan_s)
        self.settings = settings or bridge_settings_for(self.scan_s, self.speed)
        self.control_overrides = _merge(dict(scenario.controller.control), control or {})
        self.plant: BridgePlant | None = None
        self.controller: Any = None
        self.runtime: ControlRuntime | None = None
        self.events: list[tuple[float, str, int, str]] = []
        self.stats = SessionStats()
        self.errors: list[str] = []
        self._requests = sorted(scenario.requests, key=lambda r: r.at_s)
        self._task: asyncio.Task[None] | None = None
        self.on_cycle_user: Any = None

    async def start(self) -> ControllerSession:
        """Connect to the rig's PLCs and build the controller."""
        from potctl.config import control_config_from_dict
        from potctl.controller import PotController

        self.plant = BridgePlant.from_endpoints(self.endpoints, self.clock, self.settings)
        await self.plant.start()
        cfg = control_config_from_dict(
            self._control_data(), source=f"scenario {self.scenario.name} [controller.control]"
        )
        self.controller = PotController(self.plant.layout, cfg)
        sched = self.scenario.controller.power_schedule_mw
        if sched:
            self.controller.set_power_schedule(0, [(float(t), None if mw is None else float(mw)) for t, mw in sched])
        self.runtime = ControlRuntime(self.plant, self.controller, self.clock, self.scan_s,
                                      before_step=self._before_step, on_events=self._on_events,
                                      on_cycle=self._on_cycle)  # fmt: skip
        return self

    def _control_data(self) -> dict[str, Any]:
        data = dict(self.control_overrides)
        amp = dict(data.get("amperage", {}))
        limits = self.endpoints.get("voltage_limit_v")
        if limits and "voltage_limit_v" not in amp:
            amp["voltage_limit_v"] = float(min(limits))  # the rectifier's real limit, for the headroom
        data["amperage"] = amp
        return data

    def _before_step(self, meas: Any, now: float) -> None:
        while self._requests and self._requests[0].at_s <= now:
            r = self._requests.pop(0)
            c = self.controller
            if r.request == "cut_out":
                c.request_cut_out(r.cell, now)
            elif r.request == "cut_in":
                c.request_cut_in(r.cell, now)
            elif r.request == "restart":
                c.request_restart(r.line)
            elif r.request == "target" and r.ka is not None:
                c.set_line_target(r.line, r.ka)
            self.events.append((now, f"operator_{r.request}", r.cell if "cut" in r.request else r.line, ""))

    def _on_events(self, events: list[tuple[str, int, str]], now: float) -> None:
        self.events.extend((now, k, i, d) for k, i, d in events)

    def _on_cycle(self, info: CycleInfo) -> None:
        s = self.stats
        s.cycles += 1
        s.overruns += int(info.overrun)
        s.read_s.append(info.read_s)
        s.step_s.append(info.step_s)
        s.write_s.append(info.write_s)
        if self.on_cycle_user is not None:
            self.on_cycle_user(info)

    async def run(self, until_s: float | None = None) -> None:
        """Run the control loop until plant time ``until_s`` (default: the scenario's end)."""
        assert self.runtime is not None, "start() first"
        end = self.scenario.duration_s if until_s is None else until_s
        await self.runtime.run(until_s=end)
        self.errors = list(self.runtime.errors)

    def run_in_background(self, until_s: float | None = None) -> asyncio.Task[None]:
        """Start ``run`` as a task (for tests that inject faults while it runs)."""
        self._task = asyncio.create_task(self.run(until_s), name="controller-session")
        return self._task

    async def stop(self) -> None:
        """Stop the loop (if running in the background) and disconnect from the PLCs."""
        if self.runtime is not None:
            self.runtime.stop()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 30.0)
            except TimeoutError:
                self._task.cancel()
            self._task = None
        if self.runtime is not None:
            self.errors = list(self.runtime.errors)
        if self.plant is not None:
            await self.plant.stop()

    # ------------------------------------------------------------------ results

    def detected(self) -> list[tuple[int, float]]:
        """(cell, start [plant s]) of every HV AE the controller detected."""
        if self.controller is None:
            return []
        return [(int(r.cell), float(r.start_s)) for r in self.controller.ae_records if r.kind == "HV"]

    def summary(self) -> dict[str, Any]:
        s = self.stats
        pfc = self.controller.pfc_report(self.clock.now()) if self.controller is not None else None

        def ms(x: list[float], q: float) -> float:
            return float(np.percentile(x, q) * 1e3) if x else math.nan

        return {
            "cycles": s.cycles,
            "overruns": s.overruns,
            "scan_s": self.scan_s,
            "read_ms_p50": ms(s.read_s, 50),
            "read_ms_p99": ms(s.read_s, 99),
            "write_ms_p50": ms(s.write_s, 50),
            "write_ms_p99": ms(s.write_s, 99),
            "step_ms_p50": ms(s.step_s, 50),
            "aes_detected": len(self.detected()),
            "errors": len(self.errors),
            "bridge": dict(self.plant.stats) if self.plant is not None else {},
            "pfc": _pfc_dict(pfc),
        }


def _pfc_dict(pfc: Any) -> dict[str, Any]:
    return {} if pfc is None else {k: float(v) for k, v in pfc.as_dict().items()}


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out
