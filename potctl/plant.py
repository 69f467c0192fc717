"""The plant interface: what a controller sees and what it may ask for.

This is the contract between the controller (pure, synchronous:
``step(measurements, now) -> Commands``) and every plant that can carry it out:
the offline twin (``potctl.offline.TwinPlant``), HIL rigs and live PLCs (through
``plc_bridge``). Only quantities a real PLC exposes appear here: line current and
voltage, cell voltages, feeder/beam acknowledgements and operating states. No model
internals (alumina concentration, ACD, ...) ever cross this boundary.

All arrays are indexed by cell (``n_cells``) or by line/rectifier (``n_lines``) in the
order given by ``PlantLayout``. Units are in the field names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from twin.layout import PlantLayout

__all__ = ["Commands", "Measurements", "Plant", "PlantLayout"]


@dataclass(slots=True)
class Measurements:
    """One scan of everything the PLCs expose.

    Attributes:
        t_s: plant time of the scan [s].
        line_current_ka: [n_lines] measured line current (DCCT) [kA].
        line_voltage_v: [n_lines] rectifier DC output voltage [V].
        line_setpoint_ka: [n_lines] current setpoint read back from the rectifier PLC [kA].
        rectifier_remote: [n_lines] True when the rectifier accepts remote setpoints.
        rectifier_tripped: [n_lines] True when the rectifier has tripped (no current).
        tap_position: [n_lines] on-load tap-changer position (1-based).
        cell_voltage_v: [n_cells] cell voltage [V].
        feeder_ack: [n_cells] cumulative feeder shots acknowledged by the potroom PLC.
        beam_ack_mm: [n_cells] cumulative anode-beam movement acknowledged [mm] (+ = up).
        tapping: [n_cells] metal tapping in progress.
        anode_change: [n_cells] anode change in progress.
        cut_out: [n_cells] cell shorted out of the circuit.
        cell_ok: [n_cells] data quality of the cell's tags: link up, voltage, status and
            acknowledgement tags GOOD and fresh (False: stale/bad, do not judge nor act).
            It says nothing about who is in charge of the cell.
        line_ok: [n_lines] quality of the rectifier tags.
        cell_remote: [n_cells] the cell's potroom PLC is in *remote*: the controller's feed
            and beam commands reach the cell. False: the PLC's own automation (feeding,
            ACD, local AE kill) is in charge; the controller still detects, predicts and
            accounts (on ``cell_ok`` data) but commands nothing there. None (the default,
            for plants without local/remote switching): every cell is in remote; see
            ``remote_mask``.
        hx_duty_kw: [n_cells] shell heat-exchanger duty the potroom PLC reports [kW]
            (+ extracts heat; NaN: not reported, or no exchanger). None: the plant has none.
        shell_temp_c: [n_cells] side-wall (shell) thermocouple [°C] (NaN: not reported).
            None: the plant does not report it.
    """

    t_s: float
    line_current_ka: np.ndarray
    line_voltage_v: np.ndarray
    line_setpoint_ka: np.ndarray
    rectifier_remote: np.ndarray
    rectifier_tripped: np.ndarray
    tap_position: np.ndarray
    cell_voltage_v: np.ndarray
    feeder_ack: np.ndarray
    beam_ack_mm: np.ndarray
    tapping: np.ndarray
    anode_change: np.ndarray
    cut_out: np.ndarray
    cell_ok: np.ndarray
    line_ok: np.ndarray
    cell_remote: np.ndarray | None = field(default=None)
    hx_duty_kw: np.ndarray | None = field(default=None)
    shell_temp_c: np.ndarray | None = field(default=None)

    def remote_mask(self) -> np.ndarray:
        """``cell_remote`` as an [n_cells] bool array (all True when None).

        Raises:
            ValueError: ``cell_remote`` does not have one entry per cell.
        """
        n = np.shape(self.cell_ok)[0]
        if self.cell_remote is None:
            return np.ones(n, dtype=bool)
        r = np.asarray(self.cell_remote, dtype=bool)
        if r.shape != (n,):
            raise ValueError(f"cell_remote has shape {r.shape}, expected ({n},) like cell_ok")
        return r


@dataclass(slots=True)
class Commands:
    """What the controller asks the plant to do at one cycle.

    Attributes:
        feed_shots: [n_cells] feeder shots to dump now (0 = none).
        beam_move_mm: [n_cells] anode-beam move [mm], + raises the anodes (larger ACD).
        line_setpoint_ka: [n_lines] requested line-current setpoint [kA]; NaN = leave as is.
        alf3_kg: [n_cells] AlF3 to add now [kg] (0: none). The first addition to a cell in
            remote takes its AlF3 from the potroom PLC's own schedule, which then stops for
            that cell until it returns to local.
        hx_duty_kw: [n_cells] shell heat-exchanger duty to hold [kW] (+ extracts heat, −
            insulates); NaN = leave as is.
        events: human-readable events of this cycle for the journal (kind, cell, detail).
    """

    feed_shots: np.ndarray
    beam_move_mm: np.ndarray
    line_setpoint_ka: np.ndarray
    alf3_kg: np.ndarray
    hx_duty_kw: np.ndarray | None = None
    events: list[tuple[str, int, str]] = field(default_factory=list)

    @classmethod
    def idle(cls, n_cells: int, n_lines: int) -> Commands:
        """Commands that change nothing."""
        return cls(
            feed_shots=np.zeros(n_cells, dtype=np.int64),
            beam_move_mm=np.zeros(n_cells),
            line_setpoint_ka=np.full(n_lines, np.nan),
            alf3_kg=np.zeros(n_cells),
            hx_duty_kw=np.full(n_cells, np.nan),
        )


class Plant(Protocol):
    """Anything the controller can run against (offline twin, HIL rig, live PLCs)."""

    layout: PlantLayout

    async def read(self) -> Measurements:
        """One scan of all measurements."""
        ...

    async def write(self, commands: Commands) -> None:
        """Carry out commands (through the safety layer where there is a wire)."""
        ...
