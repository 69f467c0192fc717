"""Rollouts of a candidate schedule on the twin: energy, cost, metal, AEs, PFC and every
simulated cell's heat balance over the horizon.

Two models, one code path (``TwinModel``):

* the reduced model for the optimiser's inner loop: each line of the plant is a few
  representative cells in a series line of its true size (the rest of the line an
  aggregate load on the same rectifier, ``Line.rest_of_line_cells``), at a coarser
  sub-step. Energy, metal, AEs and PFC are scaled to the line's operating cells. The
  sub-step is 2 s: at 5 s the rectifier's current loop (``bandwidth_per_s`` 0.6) and the
  AE model go wrong (measured on the reference cell: 60 AEs on 12 cells in 12 h, line
  currents 3 kA off the setpoint, against 0-1 AE and the setpoint held at 1 s and 2 s);
  at 2 s the 12-h flat energy and metal are within 0.1 % and the superheat range within
  0.1 K of the 1-s run (``docs/planning.md``);
* the full plant at its own ``dt_s`` (1 s) for the final check of a plan.

The twin itself is handed in (``make_twin``, normally ``twin.potline.Potline``): the
planner stays pure compute (the twin's module carries the clocks, and with them asyncio,
which the planner's import contract forbids), and a faster rollout engine with the same
interface (a batched kernel) can be swapped in without touching the optimiser.

A start state is a snapshot of the twin's arrays (``state``, ``params``, ``out``, the
random streams, the rectifiers): a rollout copies it into a twin and runs the schedule,
so every candidate starts from the same plant and the same random draws.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from twin.cell_layout import A_AE_N, A_CF4, A_E_ELEC, A_METAL
from twin.config import Line, PlantConfig, Room

__all__ = [
    "MakeTwin",
    "Outcome",
    "Schedule",
    "TwinModel",
    "flat_schedule",
    "line_sizes",
    "reduced_config",
    "with_heat_exchangers",
]

#: builds a twin: (config, parallel) -> an object with the ``twin.potline.Potline`` interface
MakeTwin = Callable[[PlantConfig, bool], Any]

#: sub-step of the reduced model [s] (the error against 1 s: module doc, docs/planning.md)
REDUCED_DT_S = 2.0
#: samples per step of the heat balance (10 min at hourly steps)
SAMPLES_PER_STEP = 6


def line_sizes(cfg: PlantConfig) -> np.ndarray:
    """Operating cells of each line of ``cfg`` (simulated + aggregate rest) [-]."""
    return np.array(
        [sum(r.cells for r in ln.rooms if r.operating) + ln.rest_of_line_cells for ln in cfg.lines], dtype=float
    )


def with_heat_exchangers(cfg: PlantConfig, max_kw: float = 80.0, base_kw: float = 0.0) -> PlantConfig:
    """``cfg`` with a shell heat exchanger of ``max_kw`` [kW] extraction on every cell (an
    estimate: no per-pot duty is published, see config/plant_reference_hx.toml)."""
    cell = cfg.cell.model_copy(update={"heat_exchanger_max_kw": max_kw, "heat_exchanger_base_kw": base_kw})
    return cfg.model_copy(update={"cell": cell})


def reduced_config(cfg: PlantConfig, cells_per_line: int = 4, dt_s: float = REDUCED_DT_S) -> PlantConfig:
    """The optimiser's model of ``cfg``: ``cells_per_line`` simulated cells per line in a
    series line of the line's true size, on the line's own rectifier, at sub-step ``dt_s``."""
    lines = []
    for i, ln in enumerate(cfg.lines):
        n = int(line_sizes(cfg)[i])
        k = min(cells_per_line, n)
        lines.append(
            Line(
                name=ln.name,
                rectifier=ln.rectifier,
                rooms=[Room(name=f"Model{i + 1}", cells=k)],
                rest_of_line_cells=n - k,
            )
        )
    return cfg.model_copy(update={"lines": lines, "dt_s": dt_s, "name": f"{cfg.name}-reduced"})


@dataclass
class Schedule:
    """Piecewise-constant schedule: step ``i`` holds ``[i·step_s, (i+1)·step_s)``.

    Attributes:
        step_s: step length [s].
        current_ka: [n_steps, n_lines] line-current setpoint [kA].
        hx_kw: [n_steps, n_lines] shell heat-exchanger duty per cell [kW] (+ extracts).
    """

    step_s: float
    current_ka: np.ndarray
    hx_kw: np.ndarray

    @property
    def n_steps(self) -> int:
        return int(self.current_ka.shape[0])


def flat_schedule(cfg: PlantConfig, n_steps: int, step_s: float = 3600.0) -> Schedule:
    """Flat operation: every line on its configured setpoint, exchangers at their base duty."""
    i0 = np.array([ln.rectifier.setpoint_ka for ln in cfg.lines])
    h0 = min(cfg.cell.heat_exchanger_base_kw, cfg.cell.heat_exchanger_max_kw)
    return Schedule(step_s, np.tile(i0, (n_steps, 1)), np.full((n_steps, len(cfg.lines)), h0))


@dataclass
class Outcome:
    """What a schedule did on the twin (plant figures scaled to the true line sizes).

    Per step ``k`` and simulated cell ``c``: ``superheat_mean_k[k, c]`` is the mean of the
    step's samples [K], ``superheat_min_k``/``superheat_max_k`` their extremes,
    ``ledge_min_cm[k, c]`` the thinnest ledge sampled [cm].
    """

    energy_mwh: np.ndarray  # [n_steps, n_lines] electrical energy of the line's cells
    metal_t: np.ndarray  # [n_steps, n_lines]
    price_eur_per_mwh: np.ndarray
    ae_count: int  # AEs on the simulated cells
    ae_plant_estimate: float  # scaled to the plant's cells
    cf4_kg: float  # scaled
    superheat_mean_k: np.ndarray
    superheat_min_k: np.ndarray
    superheat_max_k: np.ndarray
    ledge_min_cm: np.ndarray
    cell_line: np.ndarray  # [n_cells] line of each simulated cell
    flags_ever: np.ndarray  # [n_cells] validity envelope flags raised since the start
    line_current_ka: np.ndarray  # [n_steps, n_lines] mean measured line current
    ae_in_step: np.ndarray | None = None  # [n_steps, n_cells] an AE started or burned in the step
    wall_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def energy_total_mwh(self) -> float:
        return float(self.energy_mwh.sum())

    @property
    def cost_eur(self) -> float:
        return float((self.energy_mwh.sum(axis=1) * self.price_eur_per_mwh).sum())

    @property
    def metal_total_t(self) -> float:
        return float(self.metal_t.sum())

    @property
    def kwh_per_kg(self) -> float:
        m = self.metal_total_t
        return self.energy_total_mwh / m if m > 0 else float("nan")

    def power_mw(self, step_s: float) -> np.ndarray:
        """[n_steps] plant power per step [MW]."""
        return self.energy_mwh.sum(axis=1) / (step_s / 3600.0)


class TwinModel:
    """A start state of the twin and the scaling to the plant: rollouts from it.

    Args:
        cfg: config of the simulated plant (reduced or full).
        make_twin: builds the twin (``twin.potline.Potline``: ``make_twin(cfg, parallel)``).
        weights: [n_lines] plant cells represented by each simulated cell of the line.
        parallel: let the full plant use the threaded kernels.
    """

    def __init__(
        self,
        cfg: PlantConfig,
        make_twin: MakeTwin,
        weights: np.ndarray | None = None,
        parallel: bool = False,
    ) -> None:
        self.cfg = cfg
        self.make_twin = make_twin
        self.twin = make_twin(cfg, parallel)
        n_sim = np.bincount(self.twin.cell_line, minlength=len(cfg.lines)).astype(float)
        self.weights = np.ones(len(cfg.lines)) if weights is None else np.asarray(weights, dtype=float)
        self.n_sim = n_sim
        self._snap = self.snapshot()

    @classmethod
    def reduced(
        cls, plant: PlantConfig, make_twin: MakeTwin, cells_per_line: int = 4, dt_s: float = REDUCED_DT_S
    ) -> TwinModel:
        """The optimiser's model of ``plant`` from its start (a fresh twin)."""
        red = reduced_config(plant, cells_per_line, dt_s)
        sizes = line_sizes(plant)
        return cls(red, make_twin, weights=sizes / np.array([min(cells_per_line, s) for s in sizes]))

    @classmethod
    def from_plant(
        cls, plant_twin: Any, make_twin: MakeTwin, cells_per_line: int = 4, dt_s: float = REDUCED_DT_S
    ) -> TwinModel:
        """The reduced model started from the state of a running plant (receding horizon):
        per line its thinnest-ledge cell, its hottest and its coldest (superheat) and the
        median, their states, parameters and random streams copied."""
        plant = plant_twin.config
        red = reduced_config(plant, cells_per_line, dt_s)
        sizes = line_sizes(plant)
        m = cls(red, make_twin, weights=sizes / np.array([min(cells_per_line, s) for s in sizes]))
        tr = plant_twin.truth()
        rows: list[int] = []
        for ln in range(len(plant.lines)):
            cells = plant_twin.line_cells[plant_twin.line_ptr[ln] : plant_twin.line_ptr[ln + 1]]
            picks: list[int] = []
            order_sh = cells[np.argsort(tr["superheat_k"][cells])]
            for c in (
                cells[int(np.argmin(tr["ledge_cm"][cells]))],
                order_sh[-1],
                order_sh[0],
                order_sh[len(order_sh) // 2],
            ):
                if int(c) not in picks:
                    picks.append(int(c))
            for c in cells:  # fill up if the extremes coincide
                if len(picks) >= cells_per_line:
                    break
                if int(c) not in picks:
                    picks.append(int(c))
            rows.extend(picks[: min(cells_per_line, len(cells))])
        t = m.twin
        idx = np.array(rows)
        t.state[:] = plant_twin.state[idx]
        t.params[:] = plant_twin.params[idx]
        t.out[:] = plant_twin.out[idx]
        t.rng[:] = plant_twin.rng[idx]
        t.rect[:] = plant_twin.rect
        t.t_s = plant_twin.t_s
        m.source_cells = idx
        m._snap = m.snapshot()
        return m

    source_cells: np.ndarray | None = None

    def snapshot(self) -> dict[str, Any]:
        t = self.twin
        return {
            "state": t.state.copy(),
            "params": t.params.copy(),
            "out": t.out.copy(),
            "rng": t.rng.copy(),
            "rect": t.rect.copy(),
            "t_s": t.t_s,
        }

    def restore(self) -> None:
        t, s = self.twin, self._snap
        t.state[:] = s["state"]
        t.params[:] = s["params"]
        t.out[:] = s["out"]
        t.rng[:] = s["rng"]
        t.rect[:] = s["rect"]
        t.t_s = s["t_s"]

    def start_current_ka(self) -> np.ndarray:
        """[n_lines] setpoint each line holds at the start [kA]."""
        from twin.rectifier import R_I_TARGET

        return self._snap["rect"][:, R_I_TARGET] / 1000.0

    def rollout(self, sched: Schedule, price_eur_per_mwh: np.ndarray | None = None) -> Outcome:
        """Run ``sched`` from the start state; the twin is left at the end of the schedule.

        Energy is the cells' own U·I (the twin's accumulator, busbars not included).
        """
        import time

        t0 = time.perf_counter()
        self.restore()
        t = self.twin
        n, nl = sched.current_ka.shape
        nc = t.layout.n_cells
        cl = t.cell_line
        w_cell = self.weights[cl]
        sh_mean = np.zeros((n, nc))
        sh_min = np.zeros((n, nc))
        sh_max = np.zeros((n, nc))
        ledge_min = np.zeros((n, nc))
        energy = np.zeros((n, nl))
        metal = np.zeros((n, nl))
        cur = np.zeros((n, nl))
        ae_step = np.zeros((n, nc), dtype=bool)
        s = t.state
        e_prev = s[:, A_E_ELEC].copy()
        m_prev = s[:, A_METAL].copy()
        ae0 = s[:, A_AE_N].copy()
        cf0 = s[:, A_CF4].copy()
        sub = sched.step_s / SAMPLES_PER_STEP
        for k in range(n):
            for ln in range(nl):
                t.set_line_setpoint(ln, float(sched.current_ka[k, ln]))
                cells = t.line_cells[t.line_ptr[ln] : t.line_ptr[ln + 1]]
                t.set_heat_exchanger(cells, float(sched.hx_kw[k, ln]) * 1e3)
            shs = np.empty((SAMPLES_PER_STEP, nc))
            lds = np.empty((SAMPLES_PER_STEP, nc))
            ik = np.zeros(nl)
            ae_k = t.state[:, A_AE_N].copy()
            for j in range(SAMPLES_PER_STEP):
                t.advance(sub)
                tr = t.truth()
                ae_step[k] |= tr["ae_active"]
                shs[j] = tr["superheat_k"]
                lds[j] = tr["ledge_cm"]
                ik += t.measurements()["line_current_ka"] / SAMPLES_PER_STEP
            sh_mean[k] = shs.mean(axis=0)
            sh_min[k] = shs.min(axis=0)
            sh_max[k] = shs.max(axis=0)
            ledge_min[k] = lds.min(axis=0)
            cur[k] = ik
            ae_step[k] |= t.state[:, A_AE_N] > ae_k
            s = t.state
            de = (s[:, A_E_ELEC] - e_prev) * w_cell / 3.6e9
            dm = (s[:, A_METAL] - m_prev) * w_cell / 1e3
            energy[k] = np.bincount(cl, weights=de, minlength=nl)
            metal[k] = np.bincount(cl, weights=dm, minlength=nl)
            e_prev = s[:, A_E_ELEC].copy()
            m_prev = s[:, A_METAL].copy()
        s = t.state
        ae = s[:, A_AE_N] - ae0
        price = np.zeros(n) if price_eur_per_mwh is None else np.asarray(price_eur_per_mwh, dtype=float)[:n]
        return Outcome(
            energy_mwh=energy,
            metal_t=metal,
            price_eur_per_mwh=price,
            ae_count=int(ae.sum()),
            ae_plant_estimate=float((ae * w_cell).sum()),
            cf4_kg=float(((s[:, A_CF4] - cf0) * w_cell).sum()),
            superheat_mean_k=sh_mean,
            superheat_min_k=sh_min,
            superheat_max_k=sh_max,
            ledge_min_cm=ledge_min,
            cell_line=cl.copy(),
            flags_ever=t.truth()["validity_flags_ever"].copy(),
            line_current_ka=cur,
            ae_in_step=ae_step,
            wall_s=time.perf_counter() - t0,
        )
