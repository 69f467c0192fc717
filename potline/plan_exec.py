"""The daemon's plan execution and grid sheds, between the controller and the bridge.

Each cycle (``potline.daemon``):

1. ``before_step`` (after the scan, before the controller's step): the plan's step in
   force (``potline.plan_runner``) becomes the controller's line target
   (``PotController.set_line_target``: the path an operator's target takes);
2. ``shape`` (after the step, before the write): each line's grid limit (the rectifier
   PLC's ``grid_limit_mw`` register, read by the bridge) caps the line setpoint the
   controller asks for (``potline.grid_shed``: down at the rectifier's fastest safe ramp,
   back at the normal ramp), and the plan's heat-exchanger duty goes into
   ``Commands.hx_duty_kw`` for the line's cells. What comes out still passes the safety
   layer (bounds, ramp, interlocks) in ``BridgePlant.write``.

Everything it decides is journalled (``plan_*``, ``grid_shed_*``) through the daemon's
recorder; nothing here raises into the control cycle.
"""

from __future__ import annotations

import asyncio
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog

from potline.drop_folder import move_into
from potline.grid_shed import LineShed, ShedEvent, ShedSettings
from potline.plan_runner import PLAN_POLL_S, Bounds, PlanRunner, settled_plan_files

if TYPE_CHECKING:
    from plc_bridge.plant import BridgePlant
    from potctl.controller import PotController
    from potctl.plant import Commands, Measurements
    from potline.daemon_config import LoadedConfig
    from potline.recorder import JournalRecorder

__all__ = ["GRID_ROLE", "PlanExecution", "line_bounds", "shed_settings"]

log = structlog.get_logger("potline.plan")

#: the plan last taken from ``<state_dir>/plans``, kept for a restart (in ``state_dir``)
IN_FORCE = "plan_in_force.json"
#: the rectifier role the grid operator's RTU writes (``plc_bridge.roles.RECTIFIER``)
GRID_ROLE = "grid_limit_mw"


def line_bounds(loaded: LoadedConfig) -> Bounds:
    """Per line: the highest of the lower bounds and the lowest of the upper ones [kA]
    (controller ``amperage``, the rectifier's own limits, ``[safety]``)."""
    amp, s = loaded.control.amperage, loaded.config.safety
    lo, hi = [], []
    for ln in loaded.plant.lines:
        r = ln.rectifier
        lo.append(max(float(amp.min_ka), float(r.min_ka), float(s.line_current_min_ka or 0.0)))
        hi.append(min(float(amp.max_ka), float(r.max_ka), float(s.line_current_max_ka or math.inf)))
    return Bounds(tuple(lo), tuple(hi))


def shed_settings(loaded: LoadedConfig) -> list[ShedSettings]:
    """Per line: the shed ramps, bounds and back-EMF (``potline.grid_shed``)."""
    amp, s, b = loaded.control.amperage, loaded.config.safety, line_bounds(loaded)
    out = []
    for i, ln in enumerate(loaded.plant.lines):
        cells = sum(r.cells for r in ln.rooms if r.operating) + int(ln.rest_of_line_cells)
        fast = min(float(ln.rectifier.ramp_ka_per_min) / 60.0, float(s.line_current_ramp_ka_per_s))
        out.append(ShedSettings(fast_ka_per_s=fast, normal_ka_per_s=float(amp.ramp_ka_per_min) / 60.0,
                                floor_ka=b.min_ka[i], max_ka=b.max_ka[i], u0_v=cells * float(loaded.control.e0_v),
                                reach_tol_ka=float(amp.cutout_tolerance_ka)))  # fmt: skip
    return out


class PlanExecution:
    """Plans and grid sheds for one daemon (see the module docstring).

    Args:
        loaded: the daemon's config.
        recorder: the daemon's journal recorder.
        timeline_now: the daemon's timeline now [Unix s] (plan time).
    """

    def __init__(self, loaded: LoadedConfig, recorder: JournalRecorder, timeline_now: Callable[[], float]) -> None:
        self.loaded = loaded
        self.recorder = recorder
        self.timeline_now = timeline_now
        lay = loaded.layout
        self.line_names: list[str] = list(lay.line_names)
        self.runner = PlanRunner(self.line_names, line_bounds(loaded), self._plan_journal)
        self.sheds = [LineShed(st) for st in shed_settings(loaded)]
        self.cell_line = np.asarray(lay.cell_line, dtype=np.int64)
        #: per line: the plan's heat-exchanger duty per cell [kW] (None: leave)
        self.duty: list[float | None] = [None] * len(self.line_names)
        self.folder = loaded.state_dir / "plans"
        #: a copy of the plan last taken from the folder: offered again after a restart
        self.in_force = loaded.state_dir / IN_FORCE
        self._grid_seen = [False] * len(self.line_names)

    # ------------------------------------------------------------------ start

    def start(self) -> None:
        """Warn when the safety ramp is slower than a rectifier's; take ``[plan] file``."""
        s = self.loaded.config.safety
        for ln in self.loaded.plant.lines:
            if s.line_current_ramp_ka_per_s * 60.0 < ln.rectifier.ramp_ka_per_min - 1e-9:
                why = (f"[safety] line_current_ramp_ka_per_s = {s.line_current_ramp_ka_per_s:g} kA/s is slower than "
                       f"{ln.name}'s rectifier ramp ({ln.rectifier.ramp_ka_per_min:g} kA/min): a grid shed runs at "
                       "the safety ramp")  # fmt: skip
                log.warning("grid.shed_ramp_limited", line=ln.name, detail=why)
                self.recorder.append("daemon_error", source="grid", line=ln.name, detail=why)
        # the [plan] file and the plan last taken from the folder (kept across a restart): the
        # one accepted last wins (offered oldest first)
        cands: list[tuple[float, Path, str]] = []
        f = self.loaded.config.plan.file
        if f is not None:
            path = f if f.is_absolute() else Path(self.loaded.source).parent / f
            cands.append((_mtime(path), path, "config"))
        if self.in_force.exists():
            cands.append((_mtime(self.in_force), self.in_force, "restart"))
        for _t, path, src in sorted(cands, key=lambda c: c[0]):
            self.runner.offer(path, self.timeline_now(), source=src)

    async def watch_folder(self, every_s: float = PLAN_POLL_S) -> None:
        """Every ``every_s`` [wall s]: plans dropped into ``<state_dir>/plans`` (runs until cancelled)."""
        while True:
            await asyncio.sleep(every_s)
            try:
                self.take_folder()
            except Exception:
                log.exception("plan.watch_failed", folder=str(self.folder))

    def take_folder(self) -> None:
        """Offer each settled plan file in the folder, oldest first; move it to loaded/ or rejected/."""
        for f in settled_plan_files(self.folder):
            ok = self.runner.offer(f, self.timeline_now(), source=f"plans/{f.name}")
            dest = move_into(f, self.folder / ("loaded" if ok else "rejected"))
            if ok:
                try:
                    shutil.copyfile(dest, self.in_force)
                except OSError as exc:
                    log.error("plan.not_kept", file=str(self.in_force), error=str(exc))
            if not ok and self.runner.last_rejected is not None:
                dest.with_name(dest.name + ".errors.txt").write_text(self.runner.last_rejected["reason"] + "\n")
            self.recorder.commit()

    # ------------------------------------------------------------------ each cycle

    def before_step(self, controller: PotController | None) -> None:
        """The plan's step in force -> the controller's line targets (before its step)."""
        if controller is None:
            return
        for li, ka, duty in self.runner.tick(self.timeline_now()):
            controller.set_line_target(li, ka)
            self.duty[li] = duty

    def shape(self, cmds: Commands, meas: Measurements | None, bridge: BridgePlant | None, t: float) -> None:
        """Cap each line's setpoint for its grid limit; the plan's duty into ``cmds`` (in place)."""
        if meas is None:
            return
        sp = np.asarray(cmds.line_setpoint_ka, dtype=float)
        ok = np.asarray(meas.line_ok, dtype=bool)
        for li, shed in enumerate(self.sheds):
            limit = bridge.rectifier_reading(li, GRID_ROLE) if bridge is not None else None
            if limit is not None and not self._grid_seen[li]:
                self._grid_seen[li] = True
                log.info("grid.limit_register_seen", line=self.line_names[li], value_mw=limit)
            u = float(meas.line_voltage_v[li]) if ok[li] else math.nan
            i = float(meas.line_current_ka[li]) if ok[li] else math.nan
            want = float(sp[li]) if math.isfinite(sp[li]) else float(meas.line_setpoint_ka[li])
            cap, events = shed.step(t, limit, u, i, want)
            if math.isfinite(cap) and math.isfinite(sp[li]) and sp[li] > cap:
                sp[li] = cap
            for ev in events:
                self._grid_journal(li, ev, t)
        cmds.line_setpoint_ka = sp
        if any(d is not None for d in self.duty) and cmds.hx_duty_kw is not None:
            hx = np.asarray(cmds.hx_duty_kw, dtype=float).copy()
            for li, d in enumerate(self.duty):
                if d is not None:
                    hx[self.cell_line == li] = d
            cmds.hx_duty_kw = hx

    # ------------------------------------------------------------------ journal and HMI

    def _plan_journal(self, kind: str, detail: str, data: dict[str, Any]) -> None:
        self.recorder.append(kind, source="plan", detail=detail, data=data)

    def _grid_journal(self, li: int, ev: ShedEvent, t: float) -> None:
        name = self.line_names[li]
        value = ev.data.get("requested_mw", ev.data.get("setpoint_ka"))
        self.recorder.append(ev.kind, source="grid", line=name, detail=f"{name}: {ev.detail}", data=ev.data,
                             value=value, t_plant_s=t)  # fmt: skip
        log.info(f"grid.{ev.kind}", line=name, **{k: v for k, v in ev.data.items() if v is not None})

    def status(self) -> dict[str, Any]:
        """What the HMI's plan panel shows: the plan, its step, constraints, each line's shed."""
        out = self.runner.status(self.timeline_now())
        out["grid"] = [{"line": n, **s.status()} for n, s in zip(self.line_names, self.sheds, strict=True)]
        return out


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0  # offered first; its refusal (cannot read) is journalled
