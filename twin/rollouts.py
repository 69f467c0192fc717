"""Batches of what-if rollouts of a plant for the planner (issue 18 item 5).

``RolloutBatch`` takes a snapshot of a live ``Potline`` (its state, parameters, outputs,
rectifiers and random streams) and runs K rollouts from it, each with its own per-line
current schedule and, optionally, its own shell heat-exchanger duty schedule, both piecewise
constant over planning steps of ``step_s``. The K rollouts are stacked as K copies of the
plant's lines in one set of arrays (rollout ``r``'s cells are rows ``r·n … r·n + n − 1``), and
one Numba call runs the whole horizon, the (rollout, line) pairs shared out over the threads.

The physics is the twin's own: the kernel calls ``cell_emf``, the line's circuit and rectifier
solution and ``cell_integrate`` in the order ``Potline.advance`` does, so a rollout at the
plant's ``dt_s`` gives the plant's numbers bit for bit (``tests/twin/test_rollouts.py``).

Sub-step: the planner may run the rollouts at a coarser ``dt_s`` than the plant (the twin's
config allows up to 60 s). The per-step factors that depend on the sub-step (noise AR(1)
coefficient, slow-pool dissolution share, the PLC's filter factors) are recomputed for it,
exactly as ``Potline`` computes them for a config with that ``dt_s``, and the rectifiers'
current-loop gain per sub-step is capped at 1 (``RECTIFIER_GAIN_MAX``). ``PERFORMANCE.md`` and
``benchmarks/bench_rollouts.py`` give the measured error of coarse steps against 1 s: 5 s
(``PLANNING_DT_S``) is a screening step (energy within 0.6 %, metal within 1 %, but 2-3x the
anode effects after current steps); 10 s and more are not fit for planning.

Random streams: every rollout starts with a copy of the plant's per-cell streams (common
random numbers), so two rollouts differ by their schedules, not by their noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from twin.cell import step_decays
from twin.cell_layout import (
    A_AE_N,
    A_CF4,
    A_E_ELEC,
    A_METAL,
    O_LEDGE_CM,
    O_SUPERHEAT,
    P_KDISS,
    P_KDISS_F,
    P_NOISE_A,
    P_NOISE_TAU,
    P_R_ALPHA,
    P_R_ALPHA_FAST,
    S_AL2O3,
    S_ALF3,
    S_CRYO,
    S_TBATH,
)
from twin.potline import Potline
from twin.rectifier import RP_KI
from twin.rng import seed_states
from twin.rollout_kernel import rollout_kernel

#: default planning step [s]: the schedules are piecewise constant over it
DEFAULT_STEP_S = 3600.0
#: the coarsest sub-step for screening plans [s]. Measured against 1 s on 48 h of the reference
#: plant with ±10/25 % current steps and exchanger duty (``benchmarks/bench_rollouts.py``,
#: ``PERFORMANCE.md``): energy within 0.6 %, metal within 1.0 %, per-cell superheat 0.7 K and
#: ledge 5 % mean |error| (noise floor between two 1 s noise histories: 0.2 %, 0.3 %, 0.5 K,
#: 2.4 %), but 2-3x the anode effects after current steps (fine at steady current). At 10 s and
#: more single cells run away (bath temperature off by > 100 K, ledge melted) and at 30 s the
#: plant's energy is off by up to 13 %: a final check of a plan belongs at 1 s.
PLANNING_DT_S = 5.0
#: largest gain per sub-step of the rectifiers' current loop in a coarse rollout (1: deadbeat)
RECTIFIER_GAIN_MAX = 1.0


@dataclass(frozen=True)
class RolloutResult:
    """What K rollouts did over the horizon (index 0 of every array: the rollout).

    Attributes:
        energy_kwh: electrical energy of the simulated cells [kWh], ``[K]``.
        metal_kg: metal produced [kg], ``[K]``.
        ae_count: anode effects started, ``[K]``.
        cf4_kg: CF4 emitted [kg], ``[K]``.
        energy_kwh_per_step: energy per planning step [kWh], ``[K, n_steps]`` (for prices
            that change over the horizon).
        metal_kg_per_step: metal per planning step [kg], ``[K, n_steps]``.
        ledge_min_cm: each cell's thinnest side ledge over the horizon [cm], ``[K, n_cells]``.
        superheat_min_k, superheat_max_k: each cell's lowest and highest superheat [K],
            ``[K, n_cells]``.
        validity_flags: each cell's validity flags raised during the horizon (bit mask,
            ``twin.envelope.flag_names``), ``[K, n_cells]``; 0: stayed valid.
        bath_temp_c: each cell's bath temperature at the end [°C], ``[K, n_cells]``.
        ledge_cm: each cell's ledge at the end [cm], ``[K, n_cells]``.
        superheat_k: each cell's superheat at the end [K], ``[K, n_cells]``.
        alumina_wt_pct: each cell's dissolved alumina at the end [wt %], ``[K, n_cells]``.
        dt_s: the sub-step the rollouts ran at [s]; step_s: the planning step [s].
    """

    energy_kwh: np.ndarray
    metal_kg: np.ndarray
    ae_count: np.ndarray
    cf4_kg: np.ndarray
    energy_kwh_per_step: np.ndarray
    metal_kg_per_step: np.ndarray
    ledge_min_cm: np.ndarray
    superheat_min_k: np.ndarray
    superheat_max_k: np.ndarray
    validity_flags: np.ndarray
    bath_temp_c: np.ndarray
    ledge_cm: np.ndarray
    superheat_k: np.ndarray
    alumina_wt_pct: np.ndarray
    dt_s: float
    step_s: float

    @property
    def valid(self) -> np.ndarray:
        """True for the rollouts whose cells all stayed inside the validity envelope, ``[K]``."""
        return np.all(self.validity_flags == 0, axis=1)


class RolloutBatch:
    """K what-if rollouts of a plant from its present state, in one compiled call.

    Args:
        plant: the live plant; its arrays are copied now (later changes to the plant do not
            reach the batch) and every ``run`` starts from that copy.
        step_s: planning step [s]: the schedules hold their values over it.
        dt_s: model sub-step of the rollouts [s] (default: the plant's ``dt_s``); ``step_s``
            must be a whole number of sub-steps.
        noise_seed: None (default): every rollout continues the plant's own random streams;
            a seed: fresh per-cell streams from it (the same in every rollout), e.g. to see
            how far two noise histories alone move the figures.

    Example::

        batch = RolloutBatch(plant, step_s=3600.0, dt_s=PLANNING_DT_S)
        ka = np.full((64, 48, plant.layout.n_lines), 400.0)  # 64 rollouts, 48 h, kA per line
        res = batch.run(ka)  # res.energy_kwh[r], res.metal_kg[r], res.valid[r], ...
    """

    def __init__(
        self,
        plant: Potline,
        *,
        step_s: float = DEFAULT_STEP_S,
        dt_s: float | None = None,
        noise_seed: int | None = None,
    ) -> None:
        dt = plant.dt_s if dt_s is None else float(dt_s)
        if not (math.isfinite(dt) and dt > 0.0):
            raise ValueError(f"dt_s must be a positive number of seconds, got {dt_s}")
        n_sub = int(round(step_s / dt))
        if n_sub < 1 or abs(n_sub * dt - step_s) > 1e-9 * max(step_s, 1.0):
            raise ValueError(f"step_s = {step_s} s must be a whole number of sub-steps of dt_s = {dt} s")
        self.dt_s = dt
        self.step_s = float(step_s)
        self.n_sub = n_sub
        self.n_cells = plant.layout.n_cells
        self.n_lines = plant.layout.n_lines
        self.layout = plant.layout
        self._state = plant.state.copy()
        self._params = plant.params.copy()
        self._out = plant.out.copy()
        self._rect = plant.rect.copy()
        self._rpar = plant.rpar.copy()
        self._rng = plant.rng.copy() if noise_seed is None else seed_states(noise_seed, self.n_cells)
        self._line_ptr = plant.line_ptr.copy()
        self._line_cells = plant.line_cells.copy()
        if dt != plant.dt_s:
            self._retime_params(plant)
        self._decay = step_decays(dt)

    def _retime_params(self, plant: Potline) -> None:
        """The per-step factors for this sub-step, as ``Potline`` computes them for a config
        with ``dt_s`` = this one."""
        p, lc, dt = self._params, plant.config.local_control, self.dt_s
        p[:, P_NOISE_A] = np.exp(-dt / p[:, P_NOISE_TAU])
        p[:, P_KDISS_F] = 1.0 - np.exp(-p[:, P_KDISS] * dt)
        p[:, P_R_ALPHA] = 1.0 - np.exp(-dt / lc.filter_s)
        p[:, P_R_ALPHA_FAST] = 1.0 - np.exp(-dt / lc.control_filter_s)
        # The rectifier's current loop is an integrator whose gain per sub-step is
        # bandwidth_per_s x dt: above 1 it overshoots, above 2 it oscillates without end (measured:
        # 2.7 kA rms at 5 s, where 1 s holds 5 A). Above 1 the rollouts cap it at 1 (deadbeat): the
        # current settles within a sub-step, as it does within seconds in the plant.
        for ln, line in enumerate(plant.config.lines):
            gain = line.rectifier.bandwidth_per_s * dt
            if gain > RECTIFIER_GAIN_MAX:
                self._rpar[ln, RP_KI] *= RECTIFIER_GAIN_MAX / gain

    def run(self, current_ka: np.ndarray, hx_duty_kw: np.ndarray | None = None) -> RolloutResult:
        """Run K rollouts from the snapshot.

        Args:
            current_ka: line-current setpoints [kA], ``[K, n_steps, n_lines]``; rollout ``r``
                holds ``current_ka[r, i]`` over planning step ``i`` (the rectifiers ramp to it).
            hx_duty_kw: shell heat-exchanger duty commands [kW] (+ extracts, − insulates;
                NaN: leave the command as it was), ``[K, n_steps, n_cells]``, or None to leave
                every cell's command as in the plant. The exchanger delivers within its limits.

        Returns:
            the rollouts' summaries (``RolloutResult``).
        """
        cur = np.asarray(current_ka, dtype=float)
        if cur.ndim != 3 or cur.shape[2] != self.n_lines or cur.shape[0] < 1 or cur.shape[1] < 1:
            raise ValueError(f"current_ka must have shape [K, n_steps, {self.n_lines}], got {cur.shape}")
        if not np.all(np.isfinite(cur)):
            raise ValueError("current_ka must be finite")
        k_roll, n_steps = cur.shape[0], cur.shape[1]
        if hx_duty_kw is None:
            he = np.zeros((k_roll, 0, 0))
        else:
            he = np.asarray(hx_duty_kw, dtype=float) * 1e3
            if he.shape != (k_roll, n_steps, self.n_cells):
                raise ValueError(f"hx_duty_kw must have shape {(k_roll, n_steps, self.n_cells)}, got {he.shape}")
            if np.any(np.isinf(he)):
                raise ValueError("hx_duty_kw must be finite or NaN (leave)")
        n, nl = self.n_cells, self.n_lines
        state = np.tile(self._state, (k_roll, 1))
        params = np.tile(self._params, (k_roll, 1))
        out = np.tile(self._out, (k_roll, 1))
        rect = np.tile(self._rect, (k_roll, 1))
        rpar = np.tile(self._rpar, (k_roll, 1))
        rng = np.tile(self._rng, k_roll)
        offsets = np.repeat(np.arange(k_roll, dtype=np.int64) * n, n)
        line_cells = np.tile(self._line_cells, k_roll) + offsets
        starts = (np.arange(k_roll, dtype=np.int64)[:, None] * n + self._line_ptr[None, :-1]).ravel()
        line_ptr = np.append(starts, k_roll * n).astype(np.int64)
        energy = np.zeros((k_roll, n_steps, nl))
        metal = np.zeros((k_roll, n_steps, nl))
        ledge_min = np.full(k_roll * n, np.inf)
        sh_min = np.full(k_roll * n, np.inf)
        sh_max = np.full(k_roll * n, -np.inf)
        flags = np.zeros(k_roll * n, dtype=np.int64)
        rollout_kernel(
            n_steps,
            self.n_sub,
            self.dt_s,
            nl,
            n,
            state,
            params,
            out,
            line_ptr,
            line_cells,
            rect,
            rpar,
            rng,
            self._decay,
            cur * 1000.0,
            he,
            energy,
            metal,
            ledge_min,
            sh_min,
            sh_max,
            flags,
        )
        return self._result(state, out, energy, metal, ledge_min, sh_min, sh_max, flags)

    def _result(
        self,
        state: np.ndarray,
        out: np.ndarray,
        energy: np.ndarray,
        metal: np.ndarray,
        ledge_min: np.ndarray,
        sh_min: np.ndarray,
        sh_max: np.ndarray,
        flags: np.ndarray,
    ) -> RolloutResult:
        """Summaries of the stacked arrays after a run."""
        n = self.n_cells
        k_roll = state.shape[0] // n
        s = state.reshape(k_roll, n, -1)
        o = out.reshape(k_roll, n, -1)
        s0 = self._state
        e0 = float(s0[:, A_E_ELEC].sum())
        m0 = float(s0[:, A_METAL].sum())
        e_cum = energy.sum(axis=2)
        m_cum = metal.sum(axis=2)
        e_step = np.diff(np.concatenate([np.full((k_roll, 1), e0), e_cum], axis=1), axis=1) / 3.6e6
        m_step = np.diff(np.concatenate([np.full((k_roll, 1), m0), m_cum], axis=1), axis=1)
        return RolloutResult(
            energy_kwh=(s[:, :, A_E_ELEC].sum(axis=1) - e0) / 3.6e6,
            metal_kg=s[:, :, A_METAL].sum(axis=1) - m0,
            ae_count=np.rint(s[:, :, A_AE_N].sum(axis=1) - s0[:, A_AE_N].sum()).astype(np.int64),
            cf4_kg=s[:, :, A_CF4].sum(axis=1) - s0[:, A_CF4].sum(),
            energy_kwh_per_step=e_step,
            metal_kg_per_step=m_step,
            ledge_min_cm=ledge_min.reshape(k_roll, n),
            superheat_min_k=sh_min.reshape(k_roll, n),
            superheat_max_k=sh_max.reshape(k_roll, n),
            validity_flags=flags.reshape(k_roll, n),
            bath_temp_c=s[:, :, S_TBATH].copy(),
            ledge_cm=o[:, :, O_LEDGE_CM].copy(),
            superheat_k=o[:, :, O_SUPERHEAT].copy(),
            alumina_wt_pct=100.0 * s[:, :, S_AL2O3] / (s[:, :, S_AL2O3] + s[:, :, S_ALF3] + s[:, :, S_CRYO]),
            dt_s=self.dt_s,
            step_s=self.step_s,
        )
