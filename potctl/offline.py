"""Offline plant: the twin seen through what its PLCs would expose, and a synchronous
closed-loop runner (no event loop, no sockets).

``TwinPlant`` wraps a ``twin.potline.Potline`` and turns its ``measurements()`` into a
``potctl.plant.Measurements``; commands go to ``Potline.apply`` and
``set_line_setpoint``. A cell whose potroom automation is in charge
(``Potline.set_local_control``, ``take_control=False``) reads ``cell_remote=False`` and,
like a PLC in local, ignores the controller's feed and beam commands. Cut-out/in permits issued by the controller (events
``cut_out_permit`` / ``cut_in_permit``) are carried out as the floor crew would.
Nothing of ``Potline.truth()`` ever reaches the controller.

``run_closed_loop(potline, controller, hours, scan_s)`` runs read → step → write →
advance every ``scan_s`` of plant time and returns a summary; an optional ``on_scan``
callback sees each scan (benchmarks use it to score the controller against the truth).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from potctl.plant import Commands, Measurements
from twin.cell_layout import P_LOCAL
from twin.layout import PlantLayout

__all__ = ["LoopResult", "TwinPlant", "run_closed_loop", "scaled_plant_config"]


def scaled_plant_config(
    cells: int,
    n_lines: int = 1,
    base: Any = None,
    seed: int | None = None,
    line_cells: int | None = 264,
) -> Any:
    """A smaller plant for tests and quick runs: ``n_lines`` lines of one room of ``cells``
    cells with the reference cell.

    ``line_cells``: the series line each simulated room sits in (264: a reference line); its
    cells beyond the room are an aggregate load of nominal cells on the reference rectifier
    (``Line.rest_of_line_cells``), so an AE moves the line current as on the full line.
    ``None``: the room alone, with the rectifier's voltage limit scaled to it (the series
    voltage at 4.3 V per cell plus busbar, + 8 % and two AEs of headroom).

    Returns a ``twin.config.PlantConfig``.
    """
    from twin.config import Line, Room, load_plant_config

    base = base or load_plant_config()
    r0 = base.lines[0].rectifier
    rest = max((line_cells or 0) - cells, 0)
    if rest:
        rect = r0
    else:
        u_need = cells * 4.3 + r0.busbar_uohm * 1e-6 * r0.setpoint_ka * 1e3
        rect = r0.model_copy(update={"voltage_limit_v": float(round(u_need * 1.08 + 60.0))})
    lines = [
        Line(
            name=f"Line{i + 1}",
            rectifier=rect,
            rooms=[Room(name=f"Potroom{i + 1}", cells=cells)],
            rest_of_line_cells=rest,
        )
        for i in range(n_lines)
    ]
    upd: dict[str, Any] = {"lines": lines}
    if seed is not None:
        upd["seed"] = seed
    return base.model_copy(update=upd)


class TwinPlant:
    """The offline ``Plant``: a ``Potline`` behind a PLC-shaped interface.

    Args:
        potline: the twin.
        take_control: hand feeding and beam control of every cell from the potroom
            PLC's local automation to the controller (False: the local automation keeps
            running, e.g. for an open-loop baseline with the controller observing).
            Cells can be handed back later with ``potline.set_local_control(cells, True)``
            (a potroom switched to local); ``cell_remote`` follows.
    """

    def __init__(self, potline: Any, take_control: bool = True) -> None:
        self.potline = potline
        self.layout: PlantLayout = potline.layout
        n, nl = self.layout.n_cells, self.layout.n_lines
        self._cell_ok = np.ones(n, dtype=bool)
        self._line_ok = np.ones(nl, dtype=bool)
        self.take_control = bool(take_control)
        potline.set_local_control(slice(None), not self.take_control)
        self.writes = 0
        self.setpoint_writes = 0
        #: cycles that set some cell's shell heat-exchanger duty
        self.hx_writes = 0
        #: feed/beam commands dropped because their cell was under local control
        self.refused = 0

    def read_sync(self) -> Measurements:
        """One scan of PLC-visible measurements."""
        m = self.potline.measurements()
        return Measurements(
            t_s=float(m["t_s"]),
            line_current_ka=m["line_current_ka"],
            line_voltage_v=m["line_voltage_v"],
            line_setpoint_ka=m["line_setpoint_ka"],
            rectifier_remote=m["rectifier_remote"],
            rectifier_tripped=m["rectifier_tripped"],
            tap_position=m["tap_position"],
            cell_voltage_v=m["cell_voltage_v"],
            feeder_ack=m["feeder_ack"],
            beam_ack_mm=m["beam_ack_mm"],
            tapping=m["tapping"],
            anode_change=m["anode_change"],
            cut_out=m["cut_out"],
            cell_ok=self._cell_ok,
            line_ok=self._line_ok,
            cell_remote=self.cell_remote(),
            hx_duty_kw=m["heat_exchanger_kw"],
            shell_temp_c=m["shell_temp_c"],
        )

    def cell_remote(self) -> np.ndarray:
        """[n_cells] True where the controller is in charge (the twin's local automation is off)."""
        return self.potline.params[:, P_LOCAL] <= 0.5

    def write_sync(self, commands: Commands) -> None:
        """Carry out one cycle's commands on the twin."""
        pl = self.potline
        shots = commands.feed_shots
        moves = commands.beam_move_mm
        alf3 = commands.alf3_kg
        local = ~self.cell_remote()
        if local.any():  # a potroom PLC in local ignores remote commands
            bad = local & ((shots != 0) | (moves != 0) | (alf3 != 0))
            if bad.any():
                self.refused += int(bad.sum())
                shots = np.where(local, 0, shots)
                moves = np.where(local, 0.0, moves)
                alf3 = np.where(local, 0.0, alf3)
        if shots.any() or moves.any() or alf3.any():
            fed = alf3 > 0.0
            if fed.any():  # the controller feeds AlF3 there: the PLC's own schedule stops
                pl.stop_alf3_schedule(np.flatnonzero(fed))
            pl.apply(shots, moves, alf3)
            self.writes += 1
        hx = commands.hx_duty_kw
        if hx is not None:
            set_hx = np.isfinite(hx) & ~local
            if set_hx.any():
                hx_idx = np.flatnonzero(set_hx)
                pl.set_heat_exchanger(hx_idx, hx[hx_idx] * 1e3)
                self.hx_writes += 1
        sp = commands.line_setpoint_ka
        for li in np.flatnonzero(np.isfinite(sp)):
            pl.set_line_setpoint(int(li), float(sp[li]))
            self.setpoint_writes += 1
        for kind, idx, _ in commands.events:
            if kind == "cut_out_permit":
                pl.cut_out(int(idx))
            elif kind == "cut_in_permit":
                pl.cut_in(int(idx))

    async def read(self) -> Measurements:
        return self.read_sync()

    async def write(self, commands: Commands) -> None:
        self.write_sync(commands)


@dataclass
class LoopResult:
    """Summary of a closed-loop run."""

    hours: float
    scans: int
    scan_s: float
    wall_s: float
    controller_s: float
    plant_s: float
    events: list[tuple[float, str, int, str]] = field(default_factory=list)

    @property
    def cycle_ms_mean(self) -> float:
        """Mean controller cycle time [ms]."""
        return 1e3 * self.controller_s / max(self.scans, 1)

    @property
    def speedup(self) -> float:
        """Simulated time / wall time."""
        return self.hours * 3600.0 / max(self.wall_s, 1e-9)


def run_closed_loop(
    potline: Any,
    controller: Any,
    hours: float,
    scan_s: float = 1.0,
    *,
    plant: TwinPlant | None = None,
    on_scan: Callable[[Measurements, Commands], None] | None = None,
) -> LoopResult:
    """Run ``controller`` against the twin for ``hours`` of plant time at one scan per ``scan_s``.

    Each scan: read the measurements, ``controller.step(meas, t)``, write the commands,
    advance the twin by ``scan_s``. ``on_scan(meas, cmds)`` is called after the write.
    """
    if scan_s <= 0:
        raise ValueError(f"scan_s must be > 0, got {scan_s}")
    plant = plant or TwinPlant(potline, take_control=not getattr(controller.cfg, "observe_only", False))
    n_scans = int(round(hours * 3600.0 / scan_s))
    t_ctrl = 0.0
    t_plant = 0.0
    events: list[tuple[float, str, int, str]] = []
    perf = time.perf_counter
    w0 = perf()
    for _ in range(n_scans):
        a = perf()
        meas = plant.read_sync()
        b = perf()
        cmds = controller.step(meas, meas.t_s)
        c = perf()
        plant.write_sync(cmds)
        if cmds.events:
            events.extend((meas.t_s, kind, idx, detail) for kind, idx, detail in cmds.events)
        if on_scan is not None:
            on_scan(meas, cmds)
        d = perf()
        potline.advance(scan_s)
        e = perf()
        t_ctrl += c - b
        t_plant += (b - a) + (d - c) + (e - d)
    wall = perf() - w0
    return LoopResult(
        hours=hours, scans=n_scans, scan_s=scan_s, wall_s=wall, controller_s=t_ctrl, plant_s=t_plant, events=events
    )
