"""A plant of series potlines: cells on rectifiers, stepped by compiled kernels.

``Potline`` holds the arrays (``state``, ``params``, ``out`` per cell; ``rect``,
``rpar`` per line) and offers the plant-side operations (feed, move beams, tap,
change anodes, cut cells out/in, trip rectifiers, set setpoints). ``advance`` runs
sub-steps of ``dt_s`` entirely in Numba: per sub-step every cell's back-EMF and ohmic
resistance at the present current, then each line's rectifier and circuit, then every
cell's balances at the new current.

Three kernels do the stepping, all with the same result bit for bit (each cell owns its
random stream): serial; whole lines per thread; each sub-step's cells shared out over the
threads. Which one runs is measured, not assumed (``kernel="auto"``, the default): on a
machine shared with other jobs the parallel kernels can cost more wall time than the serial
one, and the load comes and goes. ``twin/threads.py`` has the reasons and the numbers
(the OpenMP wait policy, set to passive by ``twin/__init__.py``, and the measured choice).
"""

from __future__ import annotations

import math
import os
from typing import Any, Literal

import numba
import numpy as np
from numba import njit, prange

from twin.bath import (
    AL2O3_KG_PER_AS,
    LEDGE_DENSITY_KG_M3,
    LEDGE_FUSION_J_PER_KG,
    U_REACTION_V,
    current_efficiency,
    liquidus_c,
)
from twin.cell import (
    ANODE_CP_J_PER_KGK,
    ANODE_HEAT_FROM_BATH,
    LOCAL_AE_REPEAT_S,
    cell_emf,
    cell_integrate,
    composition,
    dump_shot,
    move_beam,
    start_anode_change,
    start_tapping,
    step_decays,
)
from twin.cell_layout import (
    A_AE_N,
    A_AE_S,
    A_AL2O3_OPS,
    A_ALF3_ADD,
    A_ALF3_LOST,
    A_ALF3_OPS,
    A_ALF3_USED,
    A_BATH_IN,
    A_BATH_OUT,
    A_CF4,
    A_CHARGE,
    A_CONSUMED,
    A_CRYO_MADE,
    A_E_ELEC,
    A_E_RXN,
    A_FED,
    A_INVALID_S,
    A_METAL,
    A_Q_ANODE,
    A_Q_HE,
    A_Q_LOSS,
    A_TAPPED,
    N_OUT,
    N_PARAM,
    N_STATE,
    O_ALF3,
    O_C_CRIT,
    O_CE,
    O_E,
    O_EREV,
    O_ETA_CA,
    O_ETA_CC,
    O_ETA_SA,
    O_FLAGS,
    O_I_DENS,
    O_KAPPA,
    O_LEDGE_CM,
    O_Q_HE,
    O_Q_SIDE,
    O_R_OHM,
    O_SUPERHEAT,
    O_TLIQ,
    O_U,
    O_U_AE,
    O_U_BATH,
    O_U_BUB,
    O_U_COND,
    O_U_NOISE,
    P_AC_DURATION,
    P_AC_INTERVAL,
    P_AE_DELTA,
    P_AE_REFR_S,
    P_AE_SELF_S,
    P_ALF3_KT,
    P_ALF3_KX,
    P_ALF3_LOSS,
    P_ALF3_NEUT,
    P_ALF3_RATE,
    P_ALF3_TGT,
    P_AMP_COMP,
    P_ANODE_CM2,
    P_ANODE_H0,
    P_ANODE_MASS,
    P_AREA_F,
    P_ATOP,
    P_BATH_AL2O3,
    P_BATH_BAND,
    P_BATH_MAX,
    P_BATH_TGT,
    P_BEAM_FOLLOW,
    P_BEAM_GAIN,
    P_BEAM_INTERVAL,
    P_BEAM_MAX,
    P_BEAM_STEP,
    P_BLOCK_LOSS,
    P_BLOCK_MEAN,
    P_BLOCK_RATE,
    P_BUBBLE_MODEL,
    P_BUTT_BATH,
    P_CAF2,
    P_CARBON,
    P_CATH_CM2,
    P_CE_C,
    P_CE_NOM,
    P_COLD_SLUDGE,
    P_CSHELL,
    P_CTH,
    P_FEED_EFF,
    P_FEED_RATIO,
    P_FILM_V,
    P_HBL,
    P_HE_CMD,
    P_HE_INSUL,
    P_HE_MAX,
    P_HOPPER_MEAN,
    P_HOPPER_RATE,
    P_I_NOM,
    P_KAPPA_F,
    P_KBOT,
    P_KDISS,
    P_KDISS_F,
    P_KLEDGE,
    P_KTOP,
    P_LEDGE_M2,
    P_LEDGE_PHI,
    P_LOCAL,
    P_LOCAL_QUENCH,
    P_METAL0,
    P_N_ANODES,
    P_NOISE_A,
    P_NOISE_TAU,
    P_NOISE_V,
    P_OPERATOR_S,
    P_OPS,
    P_OVER,
    P_OVER_S,
    P_QUALITY_STD,
    P_R_ALPHA,
    P_R_ALPHA_FAST,
    P_R_ANODE,
    P_R_BAND,
    P_R_COND,
    P_R_EXT,
    P_R_TARGET,
    P_R_TRIG,
    P_RSHELL,
    P_RWALL,
    P_SHOT_BIAS,
    P_SHOT_KG,
    P_SINGLE_CM2,
    P_SIZE_F,
    P_SLUDGE_R,
    P_T_TGT,
    P_TAMB,
    P_TAP_DURATION,
    P_TAP_INTERVAL,
    P_TRACK,
    P_UNDER,
    P_UNDER_MAX_S,
    S_AC_BUSY,
    S_AC_TIMER,
    S_ACD,
    S_AE,
    S_AL2O3,
    S_ALF3,
    S_ALF3_RATE,
    S_ANODE_H,
    S_BEAM_ACK,
    S_BEAM_TIMER,
    S_BLOCK_LEFT,
    S_BLOCK_NEXT,
    S_CRYO,
    S_FEED_ACK,
    S_FEED_CREDIT,
    S_FEED_PHASE,
    S_FILM,
    S_FLAGS_EVER,
    S_HOPPER_LEFT,
    S_HOPPER_NEXT,
    S_I_FILT,
    S_IN_CIRCUIT,
    S_KILL_T,
    S_LEDGE,
    S_LEDGE_ALF3,
    S_METAL,
    S_NOISE,
    S_PHASE_T,
    S_R_FAST,
    S_R_FILT,
    S_SLUDGE,
    S_SLUDGE_R,
    S_TAP_LEFT,
    S_TAP_TIMER,
    S_TBATH,
    S_TSHELL,
)
from twin.clock import Clock, RealClock
from twin.config import PlantConfig
from twin.envelope import flag_names
from twin.heat import steady_side
from twin.layout import PlantLayout
from twin.rectifier import (
    R_AT_LIMIT,
    R_I,
    R_I_SP,
    R_I_TARGET,
    R_N,
    R_OC_S,
    R_OVERCURRENT,
    R_REMOTE,
    R_TAP,
    R_TRIPPED,
    R_U_CMD,
    R_U_DC,
    R_U_SR,
    RP_E_REST,
    RP_I_MAX,
    RP_I_MIN,
    RP_I_OC,
    RP_KI,
    RP_N,
    RP_N_TAPS,
    RP_R_BUS,
    RP_R_REST,
    RP_RAMP,
    RP_SR_RANGE,
    RP_SR_TAU,
    RP_TAP_MIN,
    RP_TAP_TIME,
    RP_V_LIMIT,
    initial_tap,
    rectifier_step,
)
from twin.rng import seed_states
from twin.threads import KernelChooser


@njit(cache=True)
def _emf_serial(state, params, out, cell_line, rect, rng, dt):
    """Voltage breakdown of every cell at its line's present current (start-up, views)."""
    decay = step_decays(dt)
    for k in range(state.shape[0]):
        cell_emf(k, state, params, out, rect[cell_line[k], R_I], rng, decay)


# The stepping kernels run without Numba's reference counting (``_nrt=False``; they allocate
# nothing) and inline every per-cell function that takes arrays (``inline="always"``).
# Otherwise each per-cell call increfs and decrefs every array it is passed: atomic
# operations that cost ~40 % of a cell-step, and contended cache lines between threads.
# ``tests/twin/test_twin_physics.py`` checks that the option is still honoured.
_KERNEL: dict[str, Any] = {"cache": True, "_nrt": False}
#: the measured choice (``kernel="auto"``) tries whole lines per thread first when they keep at
#: least this share of the cores busy (``Potline.lines_balance``), else cells per sub-step first
LINES_BALANCE_MIN = 0.9
#: the stepping kernels: one thread; whole lines per thread; each sub-step's cells over the threads
KERNELS = ("serial", "lines", "cells")
KernelName = Literal["auto", "serial", "lines", "cells"]


@njit(**_KERNEL)
def advance_line(ln, n_sub, dt, state, params, out, line_ptr, line_cells, rect, rpar, rng, decay):
    """Run series line ``ln`` for ``n_sub`` sub-steps of ``dt`` [s] (``decay = step_decays(dt)``).

    Per sub-step: each cell's back-EMF and ohmic resistance at the present current, the
    rectifier and circuit solution for the new current, then each cell's balances.
    """
    lo, hi = line_ptr[ln], line_ptr[ln + 1]
    for _ in range(n_sub):
        current = rect[ln, R_I]
        for j in range(lo, hi):
            cell_emf(line_cells[j], state, params, out, current, rng, decay)
        current = _solve_line(ln, dt, state, out, line_ptr, line_cells, rect, rpar)
        for j in range(lo, hi):
            cell_integrate(line_cells[j], state, params, out, current, rng, dt, decay)


@njit(cache=True, inline="always")
def _solve_line(ln, dt, state, out, line_ptr, line_cells, rect, rpar):
    """Sum line ``ln``'s back-EMF and ohmic resistance [V, Ω] over its cells in circuit (in
    ``line_cells`` order, so every kernel adds in the same order) and step its rectifier;
    returns the new line current [A]."""
    e_sum = 0.0
    r_sum = 0.0
    for j in range(line_ptr[ln], line_ptr[ln + 1]):
        k = line_cells[j]
        if state[k, S_IN_CIRCUIT] > 0.5:
            e_sum += out[k, O_E]
            r_sum += out[k, O_R_OHM]
    return rectifier_step(rect, rpar, ln, e_sum, r_sum, dt)


@njit(**_KERNEL)
def _advance_serial(n_sub, dt, state, params, out, line_ptr, line_cells, cell_line, rect, rpar, rng, decay):
    """All lines one after the other, each for all ``n_sub`` sub-steps (its cells stay in cache)."""
    for ln in range(rect.shape[0]):
        advance_line(ln, n_sub, dt, state, params, out, line_ptr, line_cells, rect, rpar, rng, decay)


@njit(**_KERNEL, parallel=True)
def _advance_lines_parallel(
    n_sub, dt, state, params, out, line_ptr, line_cells, cell_line, rect, rpar, rng, decay, group_ptr, group_lines
):
    """Whole lines shared out over the threads, each for all ``n_sub`` sub-steps: no
    synchronisation per sub-step and each line's cells stay in its core's cache. Thread
    ``g`` runs the lines ``group_lines[group_ptr[g]:group_ptr[g + 1]]`` (``Potline.line_groups``:
    one group per thread, largest line first to the least loaded). Numba hands each thread a
    contiguous block of a ``prange``, whatever the chunk size (measured: 3 lines on 2 threads
    go 2 + 1), so the groups, not the lines, are the iterations."""
    for g in prange(group_ptr.shape[0] - 1):
        for j in range(group_ptr[g], group_ptr[g + 1]):
            advance_line(group_lines[j], n_sub, dt, state, params, out, line_ptr, line_cells, rect, rpar, rng, decay)


@njit(**_KERNEL, parallel=True)
def _advance_cells_parallel(n_sub, dt, state, params, out, line_ptr, line_cells, cell_line, rect, rpar, rng, decay):
    """The cells of all lines split over the threads, the lines' circuits solved in between.

    Cells rather than lines are shared out, so one line (or lines of unequal size,
    264/264/132 on the reference plant) keeps every core busy. One parallel pass per
    sub-step: each cell's balances at the new current, then its back-EMF for the next
    sub-step, which needs nothing but that current. Each cell owns its random stream, so
    the result is the serial kernel's bit for bit.
    """
    n = state.shape[0]
    for s in range(n_sub + 1):  # pass 0: back-EMF only; pass n_sub: balances only
        if s > 0:
            for ln in range(rect.shape[0]):
                _solve_line(ln, dt, state, out, line_ptr, line_cells, rect, rpar)
        for k in prange(n):
            current = rect[cell_line[k], R_I]
            if s > 0:
                cell_integrate(k, state, params, out, current, rng, dt, decay)
            if s < n_sub:
                cell_emf(k, state, params, out, current, rng, decay)


@njit(cache=True)
def apply_kernel(state, params, feed_shots, beam_move_mm, alf3_kg):
    """Carry out feeder shots, beam moves [mm] and AlF3 additions [kg] per cell."""
    for k in range(state.shape[0]):
        if state[k, S_IN_CIRCUIT] < 0.5:
            continue
        dump_shot(state, params, k, feed_shots[k])
        move_beam(state, k, beam_move_mm[k])
        if alf3_kg[k] > 0.0:
            state[k, S_ALF3] += alf3_kg[k]
            state[k, A_ALF3_ADD] += alf3_kg[k]


_STEPPING = {"serial": _advance_serial, "lines": _advance_lines_parallel, "cells": _advance_cells_parallel}


def kernels_cached() -> bool | None:
    """Whether Numba's on-disk cache already holds every stepping kernel of this source
    (False: the next run compiles them, ~15–40 s on 2 cores; None: cannot tell)."""
    try:
        return all(os.path.exists(fn._cache._cache_file._index_path) for fn in (*_STEPPING.values(), _emf_serial))
    except AttributeError:  # Numba's cache internals moved
        return None


def plant_layout(cfg: PlantConfig) -> PlantLayout:
    """The layout of a plant config: operating rooms only (idle rooms are not in circuit)."""
    line_idx: list[int] = []
    room_idx: list[int] = []
    number: list[int] = []
    rooms: list[str] = []
    nominal: list[float] = []
    for li, line in enumerate(cfg.lines):
        nominal.append(line.rectifier.setpoint_ka)
        for room in line.rooms:
            if not room.operating:
                continue
            ri = len(rooms)
            rooms.append(room.name)
            line_idx += [li] * room.cells
            room_idx += [ri] * room.cells
            number += list(range(1, room.cells + 1))
    n = len(line_idx)
    return PlantLayout(
        plant=cfg.name,
        line_names=tuple(ln.name for ln in cfg.lines),
        room_names=tuple(rooms),
        cell_line=np.asarray(line_idx, dtype=np.int64),
        cell_room=np.asarray(room_idx, dtype=np.int64),
        cell_number=np.asarray(number, dtype=np.int64),
        shot_mass_kg=np.full(n, cfg.local_control.shot_mass_kg),
        nominal_current_ka=np.asarray(nominal, dtype=float),
    )


class Potline:
    """The whole plant: all operating cells on their lines, with rectifiers.

    Args:
        config: validated plant config.
        seed: overrides ``config.seed`` for the per-cell parameter spread and noise.
        parallel: False runs the serial kernel only (``kernel="serial"``).
        kernel: ``"auto"`` (default): the kernel with the lowest measured wall time per
            cell-step now, among serial, whole lines per thread and each sub-step's cells
            over the threads (``twin/threads.py``); or one of them by name. Every kernel
            gives the serial kernel's result bit for bit.
        wall_clock: the wall clock that times the kernels for ``kernel="auto"`` (default
            ``RealClock``); it has no effect on the simulation.
    """

    def __init__(
        self,
        config: PlantConfig,
        seed: int | None = None,
        parallel: bool = True,
        *,
        kernel: KernelName = "auto",
        wall_clock: Clock | None = None,
    ) -> None:
        if kernel != "auto" and kernel not in KERNELS:
            raise ValueError(f"kernel must be 'auto' or one of {', '.join(KERNELS)}; got {kernel!r}")
        if not parallel and kernel not in ("auto", "serial"):
            raise ValueError(f"parallel=False runs the serial kernel; kernel={kernel!r} contradicts it")
        self.config = config
        self.seed = config.seed if seed is None else seed
        self.kernel: KernelName = kernel if parallel else "serial"
        self.parallel = self.kernel != "serial"
        self._wall = wall_clock if wall_clock is not None else RealClock()
        self._chooser: KernelChooser | None = None
        self._warm = False
        self.dt_s = config.dt_s
        self.t_s = 0.0
        self.layout = plant_layout(config)
        n = self.layout.n_cells
        rs = np.random.default_rng(self.seed)
        self.params = self._build_params(config, n, rs)
        self.state = self._build_state(config, self.params, n, rs)
        self.out = np.zeros((n, N_OUT))
        self.rng = seed_states(self.seed + 1, n)
        self.cell_line = self.layout.cell_line.astype(np.int64)
        # cells of line ln are line_cells[line_ptr[ln]:line_ptr[ln + 1]] (CSR)
        self.line_cells = np.argsort(self.cell_line, kind="stable").astype(np.int64)
        counts = np.bincount(self.cell_line, minlength=len(config.lines))
        self.line_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.rect, self.rpar = self._build_rectifiers(config)
        self._balance_thermal_start()
        self._state0 = self.state.copy()
        self._zero_feed = np.zeros(n, dtype=np.int64)
        self._zero_f = np.zeros(n)
        self._decay = step_decays(self.dt_s)
        self._balance: dict[int, float] = {}  # lines_balance by thread count
        self._groups: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # line_groups by thread count

    # --- construction ----------------------------------------------------------------------
    @staticmethod
    def _build_params(cfg: PlantConfig, n: int, rs: np.random.Generator) -> np.ndarray:
        c, sp, lc = cfg.cell, cfg.spread, cfg.local_control

        def spread(nominal: float, rel: float) -> np.ndarray:
            return nominal * np.clip(1.0 + rel * rs.standard_normal(n), 0.5, 1.5)

        p = np.zeros((n, N_PARAM))
        p[:, P_ANODE_CM2] = c.anode_area_m2 * 1e4
        p[:, P_SINGLE_CM2] = c.anode_area_m2 * 1e4 / c.n_anodes
        p[:, P_SIZE_F] = p[:, P_SINGLE_CM2] ** -0.1
        p[:, P_AREA_F] = c.anode_area_factor
        p[:, P_CATH_CM2] = c.cathode_area_m2 * 1e4
        p[:, P_LEDGE_M2] = c.ledge_area_m2
        r_ext = spread(c.r_external_uohm, sp.r_external)
        p[:, P_R_COND] = (c.r_anode_uohm + c.r_cathode_uohm + r_ext) * 1e-6
        p[:, P_KAPPA_F] = spread(c.kappa_factor, sp.kappa)
        p[:, P_CAF2] = c.caf2_wt_pct
        p[:, P_SLUDGE_R] = c.sludge_fraction
        p[:, P_KDISS] = c.dissolution_rate_per_s
        p[:, P_KDISS_F] = 1.0 - np.exp(-c.dissolution_rate_per_s * cfg.dt_s)
        p[:, P_AE_DELTA] = c.ae_local_depletion_wt_pct_per_a_cm2
        p[:, P_FILM_V] = spread(c.ae_film_voltage_v, sp.ae_film_voltage)
        p[:, P_AE_SELF_S] = c.ae_self_extinction_s
        p[:, P_AE_REFR_S] = c.ae_refractory_s
        p[:, P_NOISE_V] = spread(c.noise_mv * 1e-3, sp.noise)
        p[:, P_NOISE_TAU] = c.noise_tau_s
        p[:, P_NOISE_A] = np.exp(-cfg.dt_s / c.noise_tau_s)
        p[:, P_CTH] = c.thermal_capacity_mj_per_k * 1e6
        p[:, P_KTOP] = spread(c.k_top_w_per_k, sp.k_top)
        p[:, P_HBL] = c.h_bath_ledge_w_per_m2k
        p[:, P_KLEDGE] = c.k_ledge_w_per_mk
        p[:, P_RWALL] = c.r_wall_k_per_w
        p[:, P_TAMB] = c.ambient_c
        p[:, P_CE_C] = spread(c.ce_constant, sp.ce_constant)
        p[:, P_ALF3_NEUT] = c.alf3_neutralised_per_kg_feed
        p[:, P_CARBON] = c.anode_net_carbon_kg_per_kg_al
        p[:, P_ANODE_H0] = c.anode_height_cm
        p[:, P_AC_INTERVAL] = c.anode_cycle_days * 86400.0 / c.n_anodes
        p[:, P_ANODE_MASS] = c.anode_mass_kg
        p[:, P_N_ANODES] = c.n_anodes
        p[:, P_SHOT_KG] = lc.shot_mass_kg
        p[:, P_FEED_RATIO] = lc.feed_ratio
        p[:, P_CE_NOM] = lc.nominal_ce
        p[:, P_R_TARGET] = lc.resistance_target_uohm * 1e-6
        p[:, P_R_BAND] = lc.resistance_deadband_uohm * 1e-6
        p[:, P_BEAM_STEP] = lc.beam_step_mm / 10.0
        p[:, P_BEAM_INTERVAL] = lc.beam_check_interval_s
        p[:, P_ALF3_RATE] = lc.alf3_kg_per_day / 86400.0
        p[:, P_TAP_INTERVAL] = lc.tap_interval_h * 3600.0
        p[:, P_TAP_DURATION] = lc.tap_duration_s
        p[:, P_AC_DURATION] = lc.anode_change_duration_s
        p[:, P_LOCAL] = 1.0
        p[:, P_OPS] = 1.0 if lc.operations else 0.0
        p[:, P_METAL0] = c.metal_mass_kg
        p[:, P_LOCAL_QUENCH] = 1.0 if lc.ae_quench else 0.0
        p[:, P_FEED_EFF] = 1.0
        Potline._heat_and_plc_params(cfg, p, r_ext * 1e-6, spread, rs)
        return p

    @staticmethod
    def _heat_and_plc_params(cfg: PlantConfig, p: np.ndarray, r_ext_ohm: np.ndarray, spread: Any, rs: Any) -> None:
        """Heat paths, bath operations, the PLC's tracking/resistance/AlF3 control and the
        feed disturbances (issue 13), with their per-cell spread."""
        c, sp, lc, d = cfg.cell, cfg.spread, cfg.local_control, cfg.disturbances
        n = p.shape[0]
        p[:, P_KBOT] = c.k_bottom_w_per_k
        p[:, P_R_ANODE] = c.r_anode_uohm * 1e-6
        p[:, P_R_EXT] = r_ext_ohm
        p[:, P_ATOP] = c.anode_heat_to_top
        p[:, P_RSHELL] = c.r_shell_k_per_w
        p[:, P_CSHELL] = c.shell_capacity_mj_per_k * 1e6
        p[:, P_LEDGE_PHI] = c.ledge_bath_fraction
        p[:, P_HE_MAX] = c.heat_exchanger_max_kw * 1e3
        p[:, P_HE_CMD] = min(c.heat_exchanger_base_kw, c.heat_exchanger_max_kw) * 1e3
        p[:, P_HE_INSUL] = c.heat_exchanger_insulation
        p[:, P_ALF3_LOSS] = c.alf3_loss_kg_per_day / 86400.0
        p[:, P_ALF3_TGT] = lc.alf3_target_wt_pct
        p[:, P_ALF3_KX] = lc.alf3_gain_kg_per_day_per_pct / 86400.0
        p[:, P_ALF3_KT] = lc.alf3_temp_gain_kg_per_day_per_k / 86400.0
        p[:, P_T_TGT] = lc.bath_temp_target_c
        p[:, P_BATH_TGT] = c.bath_mass_kg
        p[:, P_BATH_BAND] = lc.bath_mass_band_kg
        p[:, P_BATH_MAX] = lc.bath_max_correction_kg
        p[:, P_BUTT_BATH] = c.bath_per_anode_change_kg
        p[:, P_BATH_AL2O3] = lc.crushed_bath_alumina_wt_pct
        p[:, P_TRACK] = 1.0 if lc.feed_mode == "tracking" else 0.0
        p[:, P_UNDER] = lc.underfeed_ratio
        p[:, P_OVER] = lc.overfeed_ratio
        p[:, P_OVER_S] = lc.overfeed_min * 60.0
        p[:, P_UNDER_MAX_S] = lc.underfeed_max_h * 3600.0
        p[:, P_R_TRIG] = lc.track_trigger_uohm * 1e-6
        p[:, P_R_ALPHA] = 1.0 - np.exp(-cfg.dt_s / lc.filter_s)
        p[:, P_R_ALPHA_FAST] = 1.0 - np.exp(-cfg.dt_s / lc.control_filter_s)
        p[:, P_BUBBLE_MODEL] = 1.0 if c.bubble_model == "haupin_capped" else 0.0
        p[:, P_BEAM_GAIN] = lc.beam_gain_uohm_per_mm * 1e-6 * 10.0
        p[:, P_BEAM_MAX] = lc.beam_max_move_mm / 10.0
        p[:, P_BEAM_FOLLOW] = lc.beam_followup_s
        p[:, P_AMP_COMP] = lc.amperage_compensation
        lay = plant_layout(cfg)
        p[:, P_I_NOM] = lay.nominal_current_ka[lay.cell_line] * 1000.0
        # per-cell spread of the feed and dissolution
        p[:, P_SHOT_BIAS] = spread(1.0, sp.shot_mass)
        p[:, P_SLUDGE_R] = np.minimum(spread(c.sludge_fraction, sp.sludge_fraction), 0.95)
        p[:, P_KDISS] = spread(c.dissolution_rate_per_s, sp.dissolution)
        p[:, P_KDISS_F] = 1.0 - np.exp(-p[:, P_KDISS] * cfg.dt_s)
        on = 1.0 if d.enabled else 0.0
        prone = np.exp(sp.feeder_blocks * rs.standard_normal(n) - 0.5 * sp.feeder_blocks**2)  # log-normal, mean 1
        p[:, P_BLOCK_RATE] = on * d.feeder_blocks_per_day / 86400.0 * prone
        p[:, P_BLOCK_MEAN] = d.feeder_block_mean_h * 3600.0
        p[:, P_BLOCK_LOSS] = 1.0 / c.n_feeders
        p[:, P_HOPPER_RATE] = on * d.empty_hoppers_per_day / 86400.0
        p[:, P_HOPPER_MEAN] = d.empty_hopper_mean_h * 3600.0
        p[:, P_OPERATOR_S] = d.crew_response_min * 60.0
        p[:, P_QUALITY_STD] = on * d.alumina_quality_std
        p[:, P_COLD_SLUDGE] = on * d.cold_anode_sludge

    @staticmethod
    def _build_state(cfg: PlantConfig, p: np.ndarray, n: int, rs: np.random.Generator) -> np.ndarray:
        c, sp = cfg.cell, cfg.spread
        s = np.zeros((n, N_STATE))
        bath = c.bath_mass_kg * np.clip(1.0 + sp.bath_mass * rs.standard_normal(n), 0.5, 1.5)
        s[:, S_AL2O3] = bath * c.alumina_wt_pct / 100.0
        s[:, S_ALF3] = bath * c.alf3_wt_pct / 100.0
        s[:, S_CRYO] = bath - s[:, S_AL2O3] - s[:, S_ALF3]
        s[:, S_METAL] = c.metal_mass_kg
        s[:, S_TBATH] = c.bath_temp_c
        s[:, S_ACD] = c.acd_cm * np.clip(1.0 + sp.acd * rs.standard_normal(n), 0.7, 1.3)
        s[:, S_ANODE_H] = 0.6 * c.anode_height_cm
        s[:, S_IN_CIRCUIT] = 1.0
        # stagger the operations schedule over the cells, as on a real floor
        s[:, S_TAP_TIMER] = rs.uniform(0.0, 1.0, n) * p[:, P_TAP_INTERVAL]
        s[:, S_AC_TIMER] = rs.uniform(0.0, 1.0, n) * p[:, P_AC_INTERVAL]
        s[:, S_BEAM_TIMER] = rs.uniform(0.0, 1.0, n) * p[:, P_BEAM_INTERVAL]
        s[:, S_FEED_CREDIT] = rs.uniform(0.0, 1.0, n) * p[:, P_SHOT_KG]
        s[:, S_KILL_T] = LOCAL_AE_REPEAT_S  # no local AE-kill stroke pending
        s[:, S_ALF3_RATE] = p[:, P_ALF3_RATE]
        s[:, S_I_FILT] = p[:, P_I_NOM]
        s[:, S_SLUDGE_R] = p[:, P_SLUDGE_R]
        s[:, S_PHASE_T] = rs.uniform(0.0, 1.0, n) * p[:, P_UNDER_MAX_S] / 2.0  # tracking cycles staggered
        for nxt, rate in ((S_BLOCK_NEXT, P_BLOCK_RATE), (S_HOPPER_NEXT, P_HOPPER_RATE)):
            r = p[:, rate]
            s[:, nxt] = np.where(r > 0.0, rs.exponential(1.0, n) / np.where(r > 0.0, r, 1.0), 1e30)
        return s

    @staticmethod
    def _build_rectifiers(cfg: PlantConfig) -> tuple[np.ndarray, np.ndarray]:
        nl = len(cfg.lines)
        rect = np.zeros((nl, R_N))
        rpar = np.zeros((nl, RP_N))
        for i, line in enumerate(cfg.lines):
            r = line.rectifier
            rpar[i, RP_V_LIMIT] = r.voltage_limit_v
            rpar[i, RP_N_TAPS] = r.n_taps
            rpar[i, RP_TAP_MIN] = r.tap_min_fraction
            rpar[i, RP_TAP_TIME] = r.tap_time_s
            rpar[i, RP_SR_RANGE] = r.reactor_range_v
            rpar[i, RP_SR_TAU] = r.reactor_tau_s
            rpar[i, RP_RAMP] = r.ramp_ka_per_min * 1000.0 / 60.0
            rpar[i, RP_R_BUS] = r.busbar_uohm * 1e-6
            rpar[i, RP_I_MIN] = r.min_ka * 1000.0
            rpar[i, RP_I_MAX] = r.max_ka * 1000.0
            rpar[i, RP_I_OC] = (r.max_ka if r.overcurrent_ka is None else r.overcurrent_ka) * 1000.0
            rect[i, R_I] = r.setpoint_ka * 1000.0
            rect[i, R_I_SP] = r.setpoint_ka * 1000.0
            rect[i, R_I_TARGET] = r.setpoint_ka * 1000.0
            rect[i, R_REMOTE] = 1.0
        return rect, rpar

    def _balance_thermal_start(self) -> None:
        """Start every cell in thermal equilibrium (superheat, shell temperature and ledge
        thickness from its own heat balance at the start voltage, ``twin.heat``), the PLC's
        filters on the start values, and each rectifier on the right tap (the line's cells
        that are not simulated as an aggregate load of cells like the simulated ones)."""
        s, p = self.state, self.params
        _emf_serial(s, p, self.out, self.cell_line, self.rect, self.rng, self.dt_s)
        for k in range(self.layout.n_cells):
            current = self.rect[self.cell_line[k], R_I]
            u = self.out[k, O_E] - s[k, S_NOISE] + self.out[k, O_R_OHM] * current
            _, c, alf3 = composition(s, k)
            t_liq = liquidus_c(alf3, p[k, P_CAF2], c)
            h_a = p[k, P_HBL] * p[k, P_LEDGE_M2]
            k_tb = p[k, P_KTOP] + p[k, P_KBOT]
            q_cond = current * current * (p[k, P_R_EXT] + p[k, P_ATOP] * p[k, P_R_ANODE])
            t_b = s[k, S_TBATH]
            for _ in range(6):
                q_anode = 0.0
                if p[k, P_OPS] > 0.5:
                    q_anode = ANODE_HEAT_FROM_BATH * p[k, P_ANODE_MASS] * ANODE_CP_J_PER_KGK * (t_b - 25.0)
                    q_anode /= p[k, P_AC_INTERVAL]
                ce = current_efficiency(t_b - t_liq, alf3, p[k, P_CE_C], s[k, S_ACD])
                heat = (u - U_REACTION_V * ce) * current - q_cond - q_anode
                t_b = (heat + k_tb * p[k, P_TAMB] + h_a * t_liq) / (k_tb + h_a)
                t_b = t_liq + min(max(t_b - t_liq, 2.0), 20.0)
            s[k, S_TBATH] = t_b
            _q_side, t_sh, x = steady_side(p[k], t_b, t_liq)
            x = min(max(x, 0.02), 0.4)
            s[k, S_TSHELL] = t_sh
            s[k, S_LEDGE] = x * LEDGE_DENSITY_KG_M3 * p[k, P_LEDGE_M2]
            xs = s[k, S_ALF3] / (s[k, S_ALF3] + s[k, S_CRYO])
            s[k, S_LEDGE_ALF3] = p[k, P_LEDGE_PHI] * s[k, S_LEDGE] * xs
            s[k, S_R_FILT] = (u - 1.65) / current if current > 1000.0 else 0.0
            s[k, S_R_FAST] = s[k, S_R_FILT]
            s[k, S_I_FILT] = current
        for ln in range(self.layout.n_lines):
            cells = self.cell_line == ln
            n_rest = self.config.lines[ln].rest_of_line_cells
            e_cells = self.out[cells, O_E] - s[cells, S_NOISE]
            self.rpar[ln, RP_E_REST] = n_rest * float(e_cells.mean())
            self.rpar[ln, RP_R_REST] = n_rest * float(self.out[cells, O_R_OHM].mean())
            i = self.rect[ln, R_I]
            e_sum = float(self.out[cells, O_E].sum()) + self.rpar[ln, RP_E_REST]
            r_sum = float(self.out[cells, O_R_OHM].sum()) + self.rpar[ln, RP_R_BUS] + self.rpar[ln, RP_R_REST]
            u_needed = e_sum + i * r_sum
            rp = self.rpar[ln]
            if u_needed > rp[RP_V_LIMIT]:
                raise ValueError(
                    f"{self.layout.line_names[ln]}: {u_needed:.0f} V needed at {i / 1000:.1f} kA exceeds "
                    f"voltage_limit_v = {rp[RP_V_LIMIT]:.0f} V"
                )
            tap = initial_tap(rp[RP_V_LIMIT], int(rp[RP_N_TAPS]), rp[RP_TAP_MIN], rp[RP_SR_RANGE], u_needed)
            self.rect[ln, R_TAP] = tap
            self.rect[ln, R_U_CMD] = u_needed
            u_tap = rp[RP_V_LIMIT] * (rp[RP_TAP_MIN] + (1 - rp[RP_TAP_MIN]) * (tap - 1) / (rp[RP_N_TAPS] - 1))
            self.rect[ln, R_U_SR] = min(max(u_tap - u_needed, 0.0), rp[RP_SR_RANGE])
            self.rect[ln, R_U_DC] = u_needed
            # integral gain: the configured loop gain per second over the circuit's conductance
            self.rpar[ln, RP_KI] = self.config.lines[ln].rectifier.bandwidth_per_s * r_sum

    # --- running ----------------------------------------------------------------------------
    def line_groups(self, threads: int) -> tuple[np.ndarray, np.ndarray]:
        """Lines per thread for the whole-lines kernel, as CSR ``(group_ptr, group_lines)``:
        largest line first, each to the least loaded thread (ties: the lower thread; equal
        sizes: the lower line). 264/264/132 on 2 threads: lines 0 + 2 and line 1."""
        if threads not in self._groups:
            sizes = np.diff(self.line_ptr).tolist()
            n_groups = max(1, min(threads, len(sizes)))
            load = [0] * n_groups
            members: list[list[int]] = [[] for _ in range(n_groups)]
            for ln in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
                g = load.index(min(load))
                load[g] += sizes[ln]
                members[g].append(ln)
            group_ptr = np.concatenate([[0], np.cumsum([len(m) for m in members])]).astype(np.int64)
            group_lines = np.asarray([ln for m in members for ln in m], dtype=np.int64)
            self._groups[threads] = (group_ptr, group_lines)
            self._balance[threads] = sum(sizes) / (max(threads, 1) * max(max(load), 1))
        return self._groups[threads]

    def lines_balance(self, threads: int) -> float:
        """Share of ``threads`` cores the whole-lines kernel keeps busy (``line_groups``):
        Σ cells / (threads × the busiest thread's cells). 1.0 when the lines spread evenly;
        660/(2·396) = 0.83 for 264/264/132 on 2 threads."""
        if threads not in self._balance:
            self.line_groups(threads)
        return self._balance[threads]

    def advance(self, seconds: float) -> None:
        """Run the plant for ``seconds`` [s] (rounded to whole sub-steps of ``dt_s``)."""
        n_sub = int(round(seconds / self.dt_s))
        if n_sub <= 0:
            return
        if self.kernel != "auto":
            self._step(self.kernel, n_sub)
        else:
            self._advance_measured(n_sub)
        self.t_s += n_sub * self.dt_s

    def _advance_measured(self, n_sub: int) -> None:
        """``n_sub`` sub-steps in slices, each with the kernel the ``KernelChooser`` picks."""
        if not self._warm:
            self.warm_up()
        assert self._chooser is not None
        self._chooser.run(n_sub, self.layout.n_cells, self._step)

    def _candidates(self) -> tuple[str, ...]:
        """Kernels the measured choice tries, in this order: the parallel one the lines'
        balance suggests, the other parallel one, serial (only serial on one thread)."""
        if self.kernel != "auto":
            return (self.kernel,)
        threads = numba.get_num_threads()
        if threads < 2:
            return ("serial",)
        if self.layout.n_lines < 2:  # one line: whole lines per thread is the serial kernel
            return ("cells", "serial")
        if self.lines_balance(threads) >= LINES_BALANCE_MIN:
            return ("lines", "cells", "serial")
        return ("cells", "lines", "serial")

    def warm_up(self) -> None:
        """Load every kernel this plant may run from Numba's cache, or compile it (first run
        after an install or an edit of ``twin/``: ~15–40 s on 2 cores), without advancing the
        plant: each runs one sub-step on scratch copies of the arrays."""
        kernels = self._candidates()
        state, out, rect, rng = self.state.copy(), self.out.copy(), self.rect.copy(), self.rng.copy()
        for kernel in kernels:
            self._step(kernel, 1, state, out, rect, rng)
        apply_kernel(state, self.params.copy(), self._zero_feed, self._zero_f, self._zero_f)
        if self.kernel == "auto" and self._chooser is None:
            self._chooser = KernelChooser(kernels, self._wall.now)
        self._warm = True

    def _step(
        self,
        kernel: str,
        n_sub: int,
        state: np.ndarray | None = None,
        out: np.ndarray | None = None,
        rect: np.ndarray | None = None,
        rng: np.ndarray | None = None,
    ) -> None:
        """Run ``kernel`` for ``n_sub`` sub-steps on the plant's arrays (or the ones given)."""
        args = (
            n_sub,
            self.dt_s,
            self.state if state is None else state,
            self.params,
            self.out if out is None else out,
            self.line_ptr,
            self.line_cells,
            self.cell_line,
            self.rect if rect is None else rect,
            self.rpar,
            self.rng if rng is None else rng,
            self._decay,
        )
        if kernel == "lines":
            _advance_lines_parallel(*args, *self.line_groups(numba.get_num_threads()))
        else:
            _STEPPING[kernel](*args)

    @property
    def chooser(self) -> KernelChooser | None:
        """The measured kernel choice of ``kernel="auto"`` (None before ``warm_up`` or the first
        ``advance``, and for a kernel chosen by name)."""
        return self._chooser

    def kernel_stats(self) -> dict[str, Any]:
        """The kernel in use and, for ``kernel="auto"``, the measured cost per kernel
        [ns per cell-step] and the slices each ran (``KernelChooser.stats``)."""
        if self._chooser is None:
            return {"mode": self.kernel, "current": None if self.kernel == "auto" else self.kernel}
        return {"mode": self.kernel, **self._chooser.stats()}

    def apply(
        self,
        feed_shots: np.ndarray | None = None,
        beam_move_mm: np.ndarray | None = None,
        alf3_kg: np.ndarray | None = None,
    ) -> None:
        """Carry out per-cell commands now: shots, beam moves [mm, + up], AlF3 [kg]."""
        apply_kernel(
            self.state,
            self.params,
            self._zero_feed if feed_shots is None else np.asarray(feed_shots, dtype=np.int64),
            self._zero_f if beam_move_mm is None else np.asarray(beam_move_mm, dtype=float),
            self._zero_f if alf3_kg is None else np.asarray(alf3_kg, dtype=float),
        )

    def set_line_setpoint(self, line: int, ka: float) -> None:
        """Line-current setpoint [kA] for rectifier ``line`` (the rectifier ramps to it)."""
        if not math.isfinite(ka):
            raise ValueError(f"line setpoint must be finite, got {ka}")
        self.rect[line, R_I_TARGET] = ka * 1000.0

    def set_local_control(self, cells: np.ndarray | slice | int, enabled: bool) -> None:
        """Hand feeding and beam control of ``cells`` to the potroom PLC (True) or take it."""
        self.params[cells, P_LOCAL] = 1.0 if enabled else 0.0

    def set_feeder_efficiency(self, cells: np.ndarray | slice | int, fraction: float) -> None:
        """Share [0, 1] of each feeder shot that reaches the bath of ``cells``: 1 healthy, 0 a
        feeder hole crusted over or an empty hopper (the PLC still acknowledges the strokes)."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"feeder efficiency must be within [0, 1], got {fraction}")
        self.params[cells, P_FEED_EFF] = fraction

    def stop_alf3_schedule(self, cells: np.ndarray | slice | int) -> None:
        """A supervisor feeds AlF3 to ``cells`` now: the potroom PLC's continuous AlF3
        addition stops there. A cell back in local gets its rate again from the PLC at its
        next daily update (tapping)."""
        self.state[cells, S_ALF3_RATE] = 0.0

    def set_heat_exchanger(self, cells: np.ndarray | slice | int, duty_w: float | np.ndarray) -> None:
        """Shell heat exchanger duty [W] of ``cells``: + takes heat out of the side wall, −
        holds the shell's own loss back (insulating). The exchanger delivers the command
        within its limits (``cell.heat_exchanger_max_kw``, ``cell.heat_exchanger_insulation``;
        none installed: nothing); ``truth()["heat_exchanger_kw"]`` is what it delivers."""
        duty = np.asarray(duty_w, dtype=float)
        if not np.all(np.isfinite(duty)):
            raise ValueError(f"heat exchanger duty must be finite, got {duty_w}")
        self.params[cells, P_HE_CMD] = duty

    def set_operations(self, cells: np.ndarray | slice | int, enabled: bool) -> None:
        """Enable/disable the scheduled tapping and anode changes of ``cells``."""
        self.params[cells, P_OPS] = 1.0 if enabled else 0.0

    def start_tapping(self, cell: int) -> None:
        start_tapping(self.state, self.params, cell)

    def start_anode_change(self, cell: int) -> None:
        start_anode_change(self.state, self.params, cell)

    def cut_out(self, cell: int) -> None:
        """Short cell ``cell`` out of the series (its voltage drops to zero)."""
        self.state[cell, S_IN_CIRCUIT] = 0.0
        self.state[cell, S_AE] = 0.0
        self.state[cell, S_FILM] = 0.0

    def cut_in(self, cell: int) -> None:
        """Put cell ``cell`` back in the series."""
        self.state[cell, S_IN_CIRCUIT] = 1.0

    def trip_rectifier(self, line: int) -> None:
        self.rect[line, R_TRIPPED] = 1.0

    def reset_rectifier(self, line: int) -> None:
        """Clear a trip; the current ramps up from zero to the setpoint."""
        self.rect[line, R_TRIPPED] = 0.0

    def force_alumina(self, cells: np.ndarray | int, wt_pct: float) -> None:
        """Set dissolved alumina of ``cells`` [wt %] (scenarios and tests)."""
        tot = self.state[cells, S_AL2O3] + self.state[cells, S_ALF3] + self.state[cells, S_CRYO]
        other = tot - self.state[cells, S_AL2O3]
        new = other * wt_pct / (100.0 - wt_pct)
        self.state[cells, A_FED] += new - self.state[cells, S_AL2O3]
        self.state[cells, S_AL2O3] = new

    # --- views --------------------------------------------------------------------------------
    def measurements(self) -> dict[str, np.ndarray]:
        """What the plant's PLCs expose (copies)."""
        s, r = self.state, self.rect
        tap_done = s[:, S_TAP_LEFT] > 0.0
        return {
            "t_s": np.array(self.t_s),
            "cell_voltage_v": self.out[:, O_U].copy(),
            "line_current_ka": r[:, R_I] / 1000.0,
            "line_voltage_v": r[:, R_U_DC].copy(),
            "line_setpoint_ka": r[:, R_I_TARGET] / 1000.0,
            "tap_position": r[:, R_TAP].astype(np.int64),
            "rectifier_tripped": r[:, R_TRIPPED] > 0.5,
            "rectifier_remote": r[:, R_REMOTE] > 0.5,
            "rectifier_at_limit": r[:, R_AT_LIMIT] > 0.5,
            "rectifier_overcurrent": r[:, R_OVERCURRENT] > 0.5,
            "feeder_ack": s[:, S_FEED_ACK].astype(np.int64),
            "beam_ack_mm": s[:, S_BEAM_ACK].copy(),
            "tapping": tap_done,
            "anode_change": s[:, S_AC_BUSY] > 0.0,
            "cut_out": s[:, S_IN_CIRCUIT] < 0.5,
            "heat_exchanger_kw": self.out[:, O_Q_HE] / 1e3,  # duty delivered (0: none installed)
            "shell_temp_c": s[:, S_TSHELL].copy(),  # side-wall thermocouple
        }

    def truth(self) -> dict[str, np.ndarray]:
        """Model internals no sensor measures (for mirrors, tests and scoring only)."""
        s, o = self.state, self.out
        return {
            "alumina_wt_pct": 100.0 * s[:, S_AL2O3] / (s[:, S_AL2O3] + s[:, S_ALF3] + s[:, S_CRYO]),
            "sludge_kg": s[:, S_SLUDGE].copy(),
            "alf3_wt_pct": o[:, O_ALF3].copy(),
            "acd_cm": s[:, S_ACD].copy(),
            "bath_temp_c": s[:, S_TBATH].copy(),
            "superheat_k": o[:, O_SUPERHEAT].copy(),
            "liquidus_c": o[:, O_TLIQ].copy(),
            "ledge_cm": o[:, O_LEDGE_CM].copy(),
            "metal_kg": s[:, S_METAL].copy(),
            "current_efficiency": o[:, O_CE].copy(),
            "ae_active": s[:, S_AE] > 0.5,
            "ae_count": s[:, A_AE_N].astype(np.int64),
            "critical_alumina_wt_pct": o[:, O_C_CRIT].copy(),
            "conductivity_s_cm": o[:, O_KAPPA].copy(),
            "current_density_a_cm2": o[:, O_I_DENS].copy(),
            "bath_kg": s[:, S_AL2O3] + s[:, S_ALF3] + s[:, S_CRYO],
            "ledge_kg": s[:, S_LEDGE].copy(),
            "shell_temp_c": s[:, S_TSHELL].copy(),
            "side_heat_kw": o[:, O_Q_SIDE] / 1e3,
            "heat_exchanger_kw": o[:, O_Q_HE] / 1e3,
            "alf3_addition_kg_per_day": s[:, S_ALF3_RATE] * 86400.0,
            "feeder_blocked": s[:, S_BLOCK_LEFT] > 0.0,
            "hopper_empty": s[:, S_HOPPER_LEFT] != 0.0,
            "overfeeding": s[:, S_FEED_PHASE] > 0.5,
            "validity_flags": o[:, O_FLAGS].astype(np.int64),
            "valid": o[:, O_FLAGS] == 0.0,
            "validity_flags_ever": s[:, S_FLAGS_EVER].astype(np.int64),
            "invalid_s": s[:, A_INVALID_S].copy(),
        }

    def validity(self) -> dict[str, Any]:
        """The validity envelope over the plant (``twin.envelope``): cells outside it now and
        ever, the share of cell-time outside, and how many cells raised each flag."""
        s, o = self.state, self.out
        ever = s[:, S_FLAGS_EVER].astype(np.int64)
        now = o[:, O_FLAGS].astype(np.int64)
        by_flag: dict[str, int] = {}
        for k in np.flatnonzero(ever):
            for name in flag_names(int(ever[k])):
                by_flag[name] = by_flag.get(name, 0) + 1
        cell_s = self.t_s * max(int(np.count_nonzero(s[:, S_IN_CIRCUIT] > 0.5)), 1)
        return {
            "cells_invalid_now": int(np.count_nonzero(now)),
            "cells_invalid_ever": int(np.count_nonzero(ever)),
            "invalid_share": float(s[:, A_INVALID_S].sum() / cell_s) if self.t_s > 0 else 0.0,
            "cells_by_flag": dict(sorted(by_flag.items())),
        }

    def voltage_breakdown(self) -> dict[str, np.ndarray]:
        """Haupin components of every cell's voltage at the last sub-step [V]."""
        o = self.out
        return {
            "reversible": o[:, O_EREV].copy(),
            "anode_reaction_overvoltage": o[:, O_ETA_SA].copy(),
            "anode_concentration_overvoltage": o[:, O_ETA_CA].copy(),
            "cathode_overvoltage": o[:, O_ETA_CC].copy(),
            "bath_ohmic": o[:, O_U_BATH].copy(),
            "bubble_layer": o[:, O_U_BUB].copy(),
            "conductors": o[:, O_U_COND].copy(),
            "anode_effect": o[:, O_U_AE].copy(),
            "noise": o[:, O_U_NOISE].copy(),
        }

    def totals(self) -> dict[str, Any]:
        """Plant-wide sums since start: metal [kg], energy [kWh], charge, AEs, CF4/C2F6 [kg]."""
        s = self.state
        metal = float(s[:, A_METAL].sum())
        energy_kwh = float(s[:, A_E_ELEC].sum()) / 3.6e6
        charge = float(s[:, A_CHARGE].sum())
        ce = metal / (charge * 9.3206e-8) if charge > 0 else float("nan")
        cf4 = float(s[:, A_CF4].sum())
        return {
            "hours": self.t_s / 3600.0,
            "metal_kg": metal,
            "energy_kwh": energy_kwh,
            "specific_energy_kwh_per_kg": energy_kwh / metal if metal > 0 else float("nan"),
            "current_efficiency": ce,
            "ae_count": int(s[:, A_AE_N].sum()),
            "ae_minutes": float(s[:, A_AE_S].sum()) / 60.0,
            "cf4_kg": cf4,
            "c2f6_kg": 0.121 * cf4,
            "alumina_fed_kg": float(s[:, A_FED].sum()),
            "ae_per_pot_day": float(s[:, A_AE_N].sum()) / max(self.layout.n_cells * self.t_s / 86400.0, 1e-9),
            "heat_exchanger_kwh": float(s[:, A_Q_HE].sum()) / 3.6e6,
            "overcurrent_s": [float(x) for x in self.rect[:, R_OC_S]],
        }

    def alumina_nominal_rate_kg_s(self, line: int) -> float:
        """Nominal alumina consumption of one cell on ``line`` at CE 0.95 [kg/s] (Faraday)."""
        return 0.95 * AL2O3_KG_PER_AS * self.rect[line, R_I]

    def balances(self) -> dict[str, np.ndarray]:
        """Per-cell mass and energy balance residuals since start (≈ 0 when they close).

        - alumina [kg]: fed + net with bath operations − consumed − Δ(dissolved + sludge);
        - AlF3 [kg]: added + net with bath operations − neutralised − lost − Δ(bath + ledge);
        - metal [kg]: produced − tapped − Δ(pad);
        - bath [kg] (all of bath and ledge): fed to the bath + crushed bath + AlF3 added +
          cryolite made − neutralised − lost − consumed − bath removed − Δ(bath + ledge);
        - energy [J]: U·I − reaction − losses − anode heating − Δ(C_th·T + C_sh·T_sh − ΔH_f·m_ledge).
        Each comes with the scale it should be compared to (``*_scale``).
        """
        s, s0, p = self.state, self._state0, self.params
        stored = (
            p[:, P_CTH] * (s[:, S_TBATH] - s0[:, S_TBATH])
            + p[:, P_CSHELL] * (s[:, S_TSHELL] - s0[:, S_TSHELL])
            - LEDGE_FUSION_J_PER_KG * (s[:, S_LEDGE] - s0[:, S_LEDGE])
        )
        alf3_stock = s[:, S_ALF3] + s[:, S_LEDGE_ALF3] - s0[:, S_ALF3] - s0[:, S_LEDGE_ALF3]

        def bath_and_ledge(x: np.ndarray) -> np.ndarray:
            return x[:, S_AL2O3] + x[:, S_ALF3] + x[:, S_CRYO] + x[:, S_LEDGE]

        sludge_change = s[:, S_SLUDGE] - s0[:, S_SLUDGE]
        return {
            "alumina_kg": s[:, A_FED]
            + s[:, A_AL2O3_OPS]
            - s[:, A_CONSUMED]
            - (s[:, S_AL2O3] + s[:, S_SLUDGE] - s0[:, S_AL2O3] - s0[:, S_SLUDGE]),
            "alumina_scale": s[:, A_FED] + s0[:, S_AL2O3] + s0[:, S_SLUDGE],
            "alf3_kg": s[:, A_ALF3_ADD] + s[:, A_ALF3_OPS] - s[:, A_ALF3_USED] - s[:, A_ALF3_LOST] - alf3_stock,
            "alf3_scale": s[:, A_ALF3_ADD] + s0[:, S_ALF3] + s0[:, S_LEDGE_ALF3],
            "metal_kg": s[:, A_METAL] - s[:, A_TAPPED] - (s[:, S_METAL] - s0[:, S_METAL]),
            "metal_scale": s[:, A_METAL] + s0[:, S_METAL],
            "bath_kg": s[:, A_FED]
            - sludge_change
            + s[:, A_BATH_IN]
            + s[:, A_ALF3_ADD]
            + s[:, A_CRYO_MADE]
            - s[:, A_ALF3_USED]
            - s[:, A_ALF3_LOST]
            - s[:, A_CONSUMED]
            - s[:, A_BATH_OUT]
            - (bath_and_ledge(s) - bath_and_ledge(s0)),
            "bath_scale": bath_and_ledge(s0) + s[:, A_FED] + s[:, A_BATH_IN],
            "energy_j": s[:, A_E_ELEC] - s[:, A_E_RXN] - s[:, A_Q_LOSS] - s[:, A_Q_ANODE] - stored,
            "energy_scale": s[:, A_E_ELEC],
        }
