"""Plain vectorised NumPy version of the twin's per-sub-step equations (benchmark baseline).

The same equations as ``twin.cell.cell_emf`` + ``twin.rectifier.rectifier_step`` (series
circuit) + ``twin.cell.cell_integrate``, written as NumPy array code over all cells at
once — not by calling the Numba functions. Per sub-step of ``dt`` [s]:

1. every cell's back-EMF ``E`` [V] and ohmic resistance ``R`` [Ω] at its line's present
   current (Haupin breakdown, AE film, MHD and measurement noise);
2. per line ``ΣE`` and ``ΣR`` (``np.bincount``), then every rectifier (vectorised over
   lines) gives the new line current [A];
3. every cell's balances at the new current: anode effect (onset, film, self-extinction,
   quench hazard, crew called), feed disturbances (feeder-hole blockages, empty hoppers),
   CE, metal and two-pool alumina, AlF3 with its losses, heat (top, bottom, Stefan ledge
   with its composition, shell node, shell heat exchanger), ACD (metal rise, anode burn-off,
   tapping), the operations schedule (tapping with bath-level correction and the day's
   alumina quality and AlF3 rate, anode changes with butt bath) and the potroom PLC's local
   automation (AE kill with beam travel, tracking or fixed-rate feeding, resistance control
   with amperage compensation and restore after operations), then the validity flags.

How it is written (what a careful NumPy programmer would do, stated so the comparison
is fair): state is a structure of arrays with one contiguous row per variable
(``(N_STATE, n)``, cells sorted by line); loop-invariant parameter expressions are
computed once per ``advance`` call (the twin keeps some as per-cell parameters too);
composition, liquidus and alumina saturation are computed once per sub-step and shared
by both halves (as the twin does);
rare events (AE cells, feeder shots, beam moves, tapping, anode changes) are handled
on index subsets from ``np.flatnonzero``.

Random draws: ``rng="numpy"`` draws from a ``numpy.random.Generator`` (fastest; streams
differ from the twin's), ``rng="twin"`` runs the twin's per-cell xorshift64* streams
vectorised (same draws in the same order, so the result matches the Numba kernel to
rounding — used by the agreement test).
"""

from __future__ import annotations

import numpy as np

from twin.bath import (
    AL2O3_KG_PER_AS,
    AL_KG_PER_AS,
    ALUMINIUM_DENSITY_KG_M3,
    ANODE_DENSITY_KG_M3,
    BUBBLE_AE_OFFSET,
    FARADAY,
    LEDGE_DENSITY_KG_M3,
    LEDGE_FUSION_J_PER_KG,
    PHI_MAX,
    R_GAS,
    U_REACTION_V,
)
from twin.cell import (
    AE_CE_FACTOR,
    AE_OSC_STD_V,
    AE_OSC_TAU_S,
    AE_SWEEP_RATE,
    AE_WET_RATE,
    ALF3_LOSS_REF_C,
    ALF3_LOSS_REF_WT,
    ALF3_LOSS_T_SCALE_K,
    ALF3_RATE_MAX_F,
    ANODE_AREA_TAU_S,
    ANODE_CP_J_PER_KGK,
    ANODE_HEAT_FROM_BATH,
    ANODE_HEAT_TAU_S,
    CF4_KG_PER_AS,
    FILM_TAU_S,
    LOCAL_AE_BEAM_MM_S,
    LOCAL_AE_DETECT_S,
    LOCAL_AE_RAISE_S,
    LOCAL_AE_REPEAT_S,
    LOCAL_AE_SHOTS,
    LOCAL_AE_STROKE_END_S,
    LOCAL_AE_TRAVEL_S,
    MEAS_NOISE_V,
    PLC_CURRENT_STEP,
    PLC_DOWN_HOLD_S,
    PLC_E0_V,
    PLC_RESTORE_WINDOW_S,
    PLC_TARGET_MAX_F,
    PLC_TARGET_MIN_F,
    SWEEP_SCALE_MM,
    SWEEP_TAU_S,
    TAP_BATCH_KG,
    TRACK_DISTURBED_OVER_S,
    TRACK_LEAN_OVER_S,
    TRACK_NOISE_K,
    TRACK_SETTLE_S,
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
    A_CARBON,
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
    O_ALF3,
    O_C,
    O_C_CRIT,
    O_CE,
    O_CSAT,
    O_E,
    O_EREV,
    O_ETA_CA,
    O_ETA_CC,
    O_ETA_SA,
    O_FLAGS,
    O_I,
    O_I_DENS,
    O_KAPPA,
    O_LEDGE_CM,
    O_Q_HE,
    O_Q_SIDE,
    O_R_OHM,
    O_SUPERHEAT,
    O_TLIQ,
    O_TSHELL,
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
    P_SIZE_F,
    P_SLUDGE_R,
    P_T_TGT,
    P_TAMB,
    P_TAP_DURATION,
    P_TAP_INTERVAL,
    P_TRACK,
    P_UNDER,
    P_UNDER_MAX_S,
    S_AC_AREA,
    S_AC_BUSY,
    S_AC_HEAT,
    S_AC_TIMER,
    S_ACD,
    S_AE,
    S_AE_CCRIT,
    S_AE_OSC,
    S_AE_T,
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
    S_R_MIN,
    S_R_PRE,
    S_R_VAR,
    S_REFRACT,
    S_RESTORE_T,
    S_SLUDGE,
    S_SLUDGE_R,
    S_SWEEP,
    S_TAP_LEFT,
    S_TAP_TIMER,
    S_TBATH,
    S_TSHELL,
)
from twin.disturbances import MANUAL_FEED_KG, SLUDGE_R_MAX, SLUDGE_R_MIN
from twin.envelope import (
    ACD_MAX_CM,
    ACD_MIN_CM,
    ALF3_MAX,
    ALF3_MIN,
    ALUMINA_SAT_MARGIN,
    BATH_MAX_F,
    BATH_MIN_F,
    CE_MAX,
    CE_MIN,
    F_ACD,
    F_ALF3,
    F_ALUMINA,
    F_BATH_MASS,
    F_CE,
    F_LEDGE,
    F_SUPERHEAT,
    F_TEMPERATURE,
    LEDGE_MAX_CM,
    LEDGE_MIN_CM,
    SUPERHEAT_MAX_K,
    SUPERHEAT_MIN_K,
    TEMP_MAX_C,
    TEMP_MIN_C,
)
from twin.heat import BATH_FREEZE_FLOOR, LEDGE_GONE_KG
from twin.rectifier import (
    R_AT_LIMIT,
    R_E_SUM,
    R_I,
    R_I_SP,
    R_I_TARGET,
    R_OC_S,
    R_OVERCURRENT,
    R_R_SUM,
    R_TAP,
    R_TAP_TIMER,
    R_TRIPPED,
    R_U_CMD,
    R_U_DC,
    R_U_SR,
    RP_E_REST,
    RP_I_MAX,
    RP_I_MIN,
    RP_I_OC,
    RP_KI,
    RP_N_TAPS,
    RP_R_BUS,
    RP_R_REST,
    RP_RAMP,
    RP_SR_RANGE,
    RP_SR_TAU,
    RP_TAP_MIN,
    RP_TAP_TIME,
    RP_V_LIMIT,
)

_MULT = np.uint64(0x2545F4914F6CDD1D)
_U12, _U25, _U27, _U11 = (np.uint64(v) for v in (12, 25, 27, 11))
_TWO_PI = 2.0 * np.pi


# --------------------------------------------------------------------------- bath chemistry


def liquidus_c(alf3: np.ndarray, caf2_term: np.ndarray, caf2: np.ndarray, al2o3: np.ndarray) -> np.ndarray:
    """Solheim liquidus [°C]; ``caf2_term`` = −3.45·CaF2/(1 + 0.0173·CaF2) (per-cell constant)."""
    ca = caf2 * alf3
    t = 1011.0 + 0.50 * alf3 - 0.13 * alf3**2.2
    t += caf2_term + 0.124 * ca - 0.00542 * ca * np.sqrt(ca)
    t -= 7.93 * al2o3 / (1.0 + 0.0936 * al2o3 - 0.0017 * al2o3 * al2o3 - 0.0023 * alf3 * al2o3)
    return t


def alumina_saturation_wt(t_c: np.ndarray, alf3: np.ndarray, caf2: np.ndarray) -> np.ndarray:
    """Skybakmoen Al2O3 solubility [wt %]."""
    a = 11.9 - 0.062 * alf3 - 0.0031 * alf3 * alf3 - 0.2 * caf2
    b = 4.8 - 0.048 * alf3
    return a * (t_c / 1000.0) ** b


def current_efficiency(superheat_k, alf3, ce_const, acd_cm):
    """Dewing CE [-] with the below-4-cm ACD penalty."""
    loss = 10.0 ** (0.0095 * superheat_k - 0.019 * alf3 + ce_const)
    loss = np.where(acd_cm < 4.0, loss * (1.0 + 0.6 * (4.0 - acd_cm)), loss)
    return np.minimum(np.maximum(1.0 - loss / 100.0, 0.5), 0.995)


# --------------------------------------------------------------------------- the plant


class NumpyPotline:
    """A plant's cells and rectifiers stepped by NumPy array code.

    Args:
        state, params: ``(n_cells, N_STATE)`` / ``(n_cells, N_PARAM)`` as in ``twin.potline``
            (copied; cells are re-ordered by line internally).
        rect, rpar: per-line rectifier state ``(n_lines, R_N)`` and parameters (copied).
        cell_line: line index of each cell.
        dt: sub-step [s].
        rng: ``"numpy"`` (Generator draws, ``seed``) or ``"twin"`` (the twin's xorshift64*
            streams, ``rng_states`` required).
    """

    def __init__(
        self,
        state: np.ndarray,
        params: np.ndarray,
        rect: np.ndarray,
        rpar: np.ndarray,
        cell_line: np.ndarray,
        dt: float,
        rng: str = "numpy",
        rng_states: np.ndarray | None = None,
        seed: int = 0,
    ) -> None:
        if rng not in ("numpy", "twin"):
            raise ValueError(f"rng must be 'numpy' or 'twin', got {rng!r}")
        if rng == "twin" and rng_states is None:
            raise ValueError("rng='twin' needs the twin's rng_states")
        cell_line = np.asarray(cell_line, dtype=np.int64)
        self.order = np.argsort(cell_line, kind="stable")
        self.line = cell_line[self.order]
        self.n = len(self.order)
        self.n_lines = rect.shape[0]
        self.dt = float(dt)
        self.S = np.ascontiguousarray(state[self.order].T)  # (N_STATE, n)
        self.P = np.ascontiguousarray(params[self.order].T)  # (N_PARAM, n)
        self.O = np.zeros((N_OUT, self.n))
        self.R = np.ascontiguousarray(rect.T)  # (R_N, n_lines)
        self.RP = np.ascontiguousarray(rpar.T)
        self.rng_mode = rng
        self.rs = None if rng_states is None else np.asarray(rng_states, dtype=np.uint64)[self.order].copy()
        self.gen = np.random.default_rng(seed)
        self.t_s = 0.0

    @classmethod
    def from_potline(cls, potline, rng: str = "numpy", seed: int = 0) -> NumpyPotline:
        """Copy of a ``twin.potline.Potline``'s present state (after its thermal start)."""
        return cls(
            potline.state, potline.params, potline.rect, potline.rpar, potline.cell_line, potline.dt_s,
            rng=rng, rng_states=potline.rng.copy(), seed=seed,
        )  # fmt: skip

    # --- views in the twin's layout ---------------------------------------------------------
    def _unsort(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((self.n, rows.shape[0]))
        out[self.order] = rows.T
        return out

    @property
    def state(self) -> np.ndarray:
        """``(n_cells, N_STATE)`` in the twin's cell order (a copy)."""
        return self._unsort(self.S)

    @property
    def out(self) -> np.ndarray:
        return self._unsort(self.O)

    @property
    def rect(self) -> np.ndarray:
        return self.R.T.copy()

    # --- random draws -----------------------------------------------------------------------
    def _uniform(self, idx: np.ndarray | None = None) -> np.ndarray:
        """Uniform (0, 1) draws: all cells, or only cells ``idx`` (their streams advance)."""
        if self.rng_mode == "numpy":
            return self.gen.random(self.n if idx is None else len(idx))
        x = self.rs if idx is None else self.rs[idx]
        x = x ^ (x >> _U12)
        x ^= x << _U25
        x ^= x >> _U27
        if idx is None:
            self.rs[:] = x
        else:
            self.rs[idx] = x
        r = (x * _MULT) >> _U11
        return (r.astype(np.float64) + 0.5) * (1.0 / 9007199254740992.0)

    def _normal(self, idx: np.ndarray | None = None) -> np.ndarray:
        if self.rng_mode == "numpy":
            return self.gen.standard_normal(self.n if idx is None else len(idx))
        u1 = self._uniform(idx)
        u2 = self._uniform(idx)
        return np.sqrt(-2.0 * np.log(u1)) * np.cos(_TWO_PI * u2)

    def _normal_pair(self) -> tuple[np.ndarray, np.ndarray]:
        """Two standard normals per cell (twin.rng.normal_pair: both halves of one Box–Muller pair)."""
        if self.rng_mode == "numpy":
            z = self.gen.standard_normal((2, self.n))
            return z[0], z[1]
        r = np.sqrt(-2.0 * np.log(self._uniform()))
        phi = _TWO_PI * self._uniform()
        return r * np.cos(phi), r * np.sin(phi)

    # --- per-call constants -------------------------------------------------------------------
    def _constants(self) -> None:
        P, dt = self.P, self.dt
        self.k_noise = P[P_NOISE_A]  # the twin's per-cell exp(-dt/τ) for its model step
        self.k_noise_sq = np.sqrt(1.0 - self.k_noise * self.k_noise)
        a_osc = np.exp(-dt / AE_OSC_TAU_S)
        self.k_osc, self.k_osc_sq = a_osc, AE_OSC_STD_V * np.sqrt(1.0 - a_osc * a_osc)
        self.k_film = np.exp(-dt / FILM_TAU_S)
        self.k_film_up = 1.0 - self.k_film
        self.k_sweep = np.exp(-dt / SWEEP_TAU_S)
        self.k_anode_heat = 1.0 - np.exp(-dt / ANODE_HEAT_TAU_S)
        self.k_area = np.exp(-dt / ANODE_AREA_TAU_S)
        self.k_diss = P[P_KDISS_F]
        self.caf2_term = -3.45 * P[P_CAF2] / (1.0 + 0.0173 * P[P_CAF2])
        self.single_pow = P[P_SIZE_F]
        self.eta_ca_sat = np.log(51.0)
        self.ledge_rho_a = LEDGE_DENSITY_KG_M3 * P[P_LEDGE_M2]
        self.hbl_a = P[P_HBL] * P[P_LEDGE_M2]
        self.kledge_a = P[P_KLEDGE] * P[P_LEDGE_M2]
        self.he_on = P[P_HE_MAX] > 0.0
        self.cath_m2 = P[P_CATH_CM2] * 1e-4
        self.anode_m2 = P[P_ANODE_CM2] * 1e-4
        self.a_eff0 = P[P_AREA_F]
        self.tap_rate = TAP_BATCH_KG * dt / P[P_TAP_DURATION]
        self.sr_alpha = 1.0 - np.exp(-dt / self.RP[RP_SR_TAU])
        self.local = P[P_LOCAL] > 0.5
        self.ops = P[P_OPS] > 0.5
        self.quench = self.local & (P[P_LOCAL_QUENCH] > 0.5)
        self.track = P[P_TRACK] > 0.5

    # --- running ------------------------------------------------------------------------------
    def advance(self, seconds: float) -> None:
        """Run ``seconds`` [s] in sub-steps of ``dt``."""
        n_sub = int(round(seconds / self.dt))
        if n_sub <= 0:
            return
        self._constants()
        for _ in range(n_sub):
            self.step()
        self.t_s += n_sub * self.dt

    def step(self) -> None:
        """One sub-step of every cell and line."""
        cur = self.R[R_I][self.line]
        inc, e, r = self._emf(cur)
        e_sum = np.bincount(self.line, weights=np.where(inc, e, 0.0), minlength=self.n_lines)
        r_sum = np.bincount(self.line, weights=np.where(inc, r, 0.0), minlength=self.n_lines)
        new_i = self._rectifier(e_sum, r_sum)
        self._integrate(inc, new_i[self.line])

    # --- 1. voltage breakdown -------------------------------------------------------------------
    def _emf(self, current_a: np.ndarray):
        S, P, O = self.S, self.P, self.O
        sigma = P[P_NOISE_V] * (1.0 + S[S_SLUDGE] / 400.0)
        sigma *= 1.0 + 2.0 * np.maximum(0.0, 4.0 - S[S_ACD]) + 4.0 * P[P_N_ANODES] * S[S_AC_AREA]
        # MHD and measurement noise: one Box–Muller pair per cell; the AE oscillation is drawn
        # only while a gas film is present, else it just decays
        z_mhd, meas = self._normal_pair()
        S[S_NOISE] = self.k_noise * S[S_NOISE] + sigma * self.k_noise_sq * z_mhd
        osc = S[S_AE_OSC] * self.k_osc
        live = np.flatnonzero((S[S_AE] > 0.5) | (S[S_FILM] > 1e-3))
        if live.size:
            osc[live] = self.k_osc * S[S_AE_OSC, live] + self.k_osc_sq * self._normal(live)
        S[S_AE_OSC] = osc

        inc = S[S_IN_CIRCUIT] > 0.5
        tot = S[S_AL2O3] + S[S_ALF3] + S[S_CRYO]
        c = 100.0 * S[S_AL2O3] / tot
        alf3 = 100.0 * S[S_ALF3] / tot
        caf2 = P[P_CAF2]
        t_c = S[S_TBATH]
        area = P[P_ANODE_CM2] * (1.0 - S[S_AC_AREA])

        # Haupin breakdown (twin.bath.voltage_components)
        t_k = t_c + 273.15
        i = np.maximum(current_a, 1.0) / area
        cc = np.maximum(c, 0.05)
        c_sat = alumina_saturation_wt(t_c, alf3, caf2)  # also the cell's O_CSAT
        rr = np.minimum(np.maximum(cc / c_sat, 1e-4), 1.0)
        act = -0.03791 * rr + 2.364 * rr * rr - 2.194 * (rr * (rr * rr)) + 0.8686 * ((rr * rr) * (rr * rr))
        act = np.maximum(act, 1e-6)
        e_rev = 1.896 - 0.000572 * t_k + (R_GAS * t_k / (12.0 * FARADAY)) * np.log(1.0 / (act * act))
        i_r = 0.0029 * cc**0.56
        eta_sa = (t_k / 12533.0) * np.log(np.maximum(i / i_r, 1.0))
        kk = (5.5 + 0.018 * (t_k - 1323.0)) * self.single_pow
        c_loc = i / kk + 0.4
        c_crit = c_loc * c_loc + P[P_AE_DELTA] * i
        i_c = np.maximum(kk * (np.sqrt(np.maximum(cc, 0.0)) - 0.4), 1e-6)
        ok = i_c > 1.02 * i
        eta_ca = (t_k / 23209.0) * np.log(np.where(ok, i_c / np.where(ok, i_c - i, 1.0), 51.0))
        x = alf3 / np.maximum(100.0 - cc - caf2, 1.0)
        br = (1.0 - x) / (2.0 / 3.0 + x)
        i_cath = np.maximum(current_a, 1.0) / P[P_CATH_CM2]
        eta_cc = 5.745e-5 * t_k * (1.375 - 0.25 * br) * np.log(np.maximum(i_cath / 0.257, 1.0))
        kappa = P[P_KAPPA_F] * np.exp(1.977 - 0.0200 * cc - 0.0131 * alf3 - 0.0060 * caf2 - 1204.3 / t_k)
        a_eff = self.a_eff0 * area
        d_b = (0.5517 + i) / (1.0 + 2.167 * i)
        dc = np.maximum(cc - (c_crit - BUBBLE_AE_OFFSET), -0.05)
        phi = (
            0.509
            + 0.1823 * i
            - 0.1723 * i * i
            + 0.05504 * (i * (i * i))
            + (0.4322 - 0.3781 * br) / (1.0 + 1.637 * br)
            + (0.431 - 0.1437 * dc) / (1.0 + 7.353 * dc)
        )
        phi = np.minimum(np.maximum(phi, 0.0), PHI_MAX)
        ka = kappa * a_eff
        r_bath = np.maximum(S[S_ACD] - d_b, 0.1) / ka
        r_bub = d_b * phi / (ka * (1.0 - phi))
        r_ohm = r_bath + r_bub + P[P_R_COND]

        u_ae = S[S_FILM] * (P[P_FILM_V] + S[S_AE_OSC])
        noise = S[S_NOISE] + MEAS_NOISE_V * meas
        t_liq = liquidus_c(alf3, self.caf2_term, caf2, c)

        e = e_rev + eta_sa + eta_ca + eta_cc + u_ae + noise
        rows = (
            (O_E, e), (O_R_OHM, r_ohm), (O_EREV, e_rev), (O_ETA_SA, eta_sa), (O_ETA_CA, eta_ca),
            (O_ETA_CC, eta_cc), (O_U_BATH, current_a * r_bath), (O_U_BUB, current_a * r_bub),
            (O_U_COND, current_a * P[P_R_COND]), (O_U_AE, u_ae), (O_U_NOISE, noise), (O_C, c),
            (O_ALF3, alf3), (O_TLIQ, t_liq), (O_SUPERHEAT, t_c - t_liq), (O_KAPPA, kappa), (O_I_DENS, i),
            (O_CSAT, c_sat), (O_C_CRIT, c_crit),
        )  # fmt: skip
        for j, v in rows:
            O[j] = v
        if not inc.all():  # cells cut out: every output zero (the integration half fills some)
            O[:, ~inc] = 0.0
        # shared with the integration half (composition and temperature are unchanged in between)
        self._c, self._alf3, self._t_liq, self._c_sat = c, alf3, t_liq, c_sat
        return inc, O[O_E], O[O_R_OHM]

    # --- 2. rectifiers and circuit ------------------------------------------------------------------
    def _rectifier(self, e_sum: np.ndarray, r_sum: np.ndarray) -> np.ndarray:
        R, RP, dt = self.R, self.RP, self.dt
        target = np.minimum(np.maximum(R[R_I_TARGET], RP[RP_I_MIN]), RP[RP_I_MAX])
        step = RP[RP_RAMP] * dt
        sp = R[R_I_SP] + np.minimum(np.maximum(target - R[R_I_SP], -step), step)
        e_sum = e_sum + RP[RP_E_REST]
        r_tot = r_sum + RP[RP_R_BUS] + RP[RP_R_REST]
        R[R_E_SUM] = e_sum
        R[R_R_SUM] = r_tot
        tripped = R[R_TRIPPED] > 0.5
        err = sp - R[R_I]
        v_lim = RP[RP_V_LIMIT]
        n_taps = RP[RP_N_TAPS]
        u_tap = v_lim * (RP[RP_TAP_MIN] + (1.0 - RP[RP_TAP_MIN]) * (R[R_TAP] - 1.0) / (n_taps - 1.0))
        sr_range = RP[RP_SR_RANGE]
        tap_step = v_lim * (1.0 - RP[RP_TAP_MIN]) / (n_taps - 1.0)
        u_cmd = R[R_U_CMD] + RP[RP_KI] * err * dt
        u_cmd = np.minimum(
            np.minimum(np.maximum(np.maximum(u_cmd, 0.0), u_tap - sr_range - tap_step), u_tap + tap_step), v_lim
        )
        sr_cmd = np.minimum(np.maximum(u_tap - u_cmd, 0.0), sr_range)
        u_sr = R[R_U_SR] + (sr_cmd - R[R_U_SR]) * self.sr_alpha
        timer = np.maximum(R[R_TAP_TIMER] - dt, 0.0)
        tap = R[R_TAP].copy()
        want = u_tap - u_cmd
        free = timer <= 0.0
        down = free & (want > 0.8 * sr_range) & (tap > 1.0)
        up = free & ~down & (want < 0.2 * sr_range) & (tap < n_taps)
        tap = np.where(down, tap - 1.0, np.where(up, tap + 1.0, tap))
        timer = np.where(down | up, RP[RP_TAP_TIME], timer)
        u_dc = np.minimum(u_tap - u_sr, v_lim)
        at_limit = np.where((u_cmd >= v_lim - 1e-9) & (err > 0.0), 1.0, 0.0)
        current = np.maximum((u_dc - e_sum) / r_tot, 0.0)
        over = current > RP[RP_I_OC]
        oc = np.where(over, 1.0, 0.0)
        oc_s = np.where(over, R[R_OC_S] + dt, R[R_OC_S])
        if tripped.any():
            keep = tripped
            u_sr = np.where(keep, R[R_U_SR], u_sr)
            timer = np.where(keep, R[R_TAP_TIMER], timer)
            tap = np.where(keep, R[R_TAP], tap)
            at_limit = np.where(keep, R[R_AT_LIMIT], at_limit)
            u_dc = np.where(keep, 0.0, u_dc)
            current = np.where(keep, 0.0, current)
            sp = np.where(keep, 0.0, sp)
            u_cmd = np.where(keep, e_sum, u_cmd)
            oc = np.where(keep, 0.0, oc)
            oc_s = np.where(keep, R[R_OC_S], oc_s)
        R[R_I_SP] = sp
        R[R_U_CMD] = u_cmd
        R[R_U_SR] = u_sr
        R[R_TAP_TIMER] = timer
        R[R_TAP] = tap
        R[R_U_DC] = u_dc
        R[R_AT_LIMIT] = at_limit
        R[R_I] = current
        R[R_OVERCURRENT] = oc
        R[R_OC_S] = oc_s
        return current

    # --- 3. balances ---------------------------------------------------------------------------------
    def _feed_share(self, idx: np.ndarray) -> np.ndarray:
        """Share of a shot that reaches the bath (twin.disturbances.feed_share)."""
        S, P = self.S, self.P
        share = np.where(S[S_BLOCK_LEFT, idx] > 0.0, 1.0 - P[P_BLOCK_LOSS, idx], 1.0)
        return np.where(S[S_HOPPER_LEFT, idx] != 0.0, 0.0, share)

    def _dump_shot(self, idx: np.ndarray, shots: np.ndarray | int) -> None:
        """Feeder shots into cells ``idx`` (twin.cell.dump_shot)."""
        S, P = self.S, self.P
        m = shots * P[P_SHOT_KG, idx] * P[P_SHOT_BIAS, idx] * P[P_FEED_EFF, idx] * self._feed_share(idx)
        r = S[S_SLUDGE_R, idx] + P[P_COLD_SLUDGE, idx] * P[P_N_ANODES, idx] * S[S_AC_AREA, idx]
        r = np.minimum(np.maximum(r, SLUDGE_R_MIN), SLUDGE_R_MAX)
        tot = S[S_AL2O3, idx] + S[S_ALF3, idx] + S[S_CRYO, idx]
        c = 100.0 * S[S_AL2O3, idx] / tot
        alf3 = 100.0 * S[S_ALF3, idx] / tot
        c_sat = alumina_saturation_wt(S[S_TBATH, idx], alf3, P[P_CAF2, idx])
        fast = np.where(c < c_sat, (1.0 - r) * m, 0.0)
        S[S_AL2O3, idx] += fast
        S[S_SLUDGE, idx] += m - fast
        neut = np.minimum(P[P_ALF3_NEUT, idx] * m, S[S_ALF3, idx])
        S[S_ALF3, idx] -= neut
        S[S_CRYO, idx] += neut * 1.25
        S[A_ALF3_USED, idx] += neut
        S[A_CRYO_MADE, idx] += neut * 1.25
        S[A_FED, idx] += m
        S[S_FEED_ACK, idx] += shots

    def _move_beam(self, idx: np.ndarray, move_mm: np.ndarray | float) -> None:
        """Beam moves [mm] of cells ``idx`` (twin.cell.move_beam; no zero moves passed)."""
        S = self.S
        S[S_ACD, idx] = np.maximum(S[S_ACD, idx] + move_mm / 10.0, 0.5)
        S[S_BEAM_ACK, idx] += move_mm
        ae = S[S_AE, idx] > 0.5
        if ae.any():
            mv = np.broadcast_to(np.abs(move_mm), idx.shape)
            S[S_SWEEP, idx[ae]] += mv[ae]

    def _remove_bath(self, idx: np.ndarray, kg: np.ndarray) -> None:
        """Bath of the present composition out of cells ``idx`` (twin.cell.remove_bath)."""
        S = self.S
        tot = S[S_AL2O3, idx] + S[S_ALF3, idx] + S[S_CRYO, idx]
        kg = np.minimum(kg, 0.5 * tot)
        pos = kg > 0.0
        idx, kg, tot = idx[pos], kg[pos], tot[pos]
        if not idx.size:
            return
        f = kg / tot
        d_al2o3 = f * S[S_AL2O3, idx]
        d_alf3 = f * S[S_ALF3, idx]
        S[S_AL2O3, idx] -= d_al2o3
        S[S_ALF3, idx] -= d_alf3
        S[S_CRYO, idx] -= kg - d_al2o3 - d_alf3
        S[A_BATH_OUT, idx] += kg
        S[A_AL2O3_OPS, idx] -= d_al2o3
        S[A_ALF3_OPS, idx] -= d_alf3

    def _event(self, act: np.ndarray, left: int, nxt: np.ndarray | int, rate: int, mean: int) -> None:
        """One on/off Poisson process per cell (twin.disturbances._event) for cells ``act``."""
        S, P, dt = self.S, self.P, self.dt
        act = act & (P[rate] > 0.0)
        on = np.flatnonzero(act & (S[left] > 0.0))
        off = np.flatnonzero(act & (S[left] <= 0.0))
        if on.size:
            S[left, on] -= dt
            end = on[S[left, on] <= 0.0]
            if end.size:
                S[left, end] = 0.0
                S[nxt, end] = -np.log(self._uniform(end)) / P[rate, end]
        if off.size:
            S[nxt, off] -= dt
            start = off[S[nxt, off] <= 0.0]
            if start.size:
                S[left, start] = -np.log(self._uniform(start)) * P[mean, start]

    def _heat(self, inc, current, p_elec, p_rxn, q_anode, t_liq) -> None:
        """twin.heat.heat_step for all cells."""
        S, P, O, dt = self.S, self.P, self.O, self.dt
        t_c = S[S_TBATH].copy()
        t_amb = P[P_TAMB]
        t_sh = S[S_TSHELL].copy()
        i2 = current * current
        q_ext = i2 * P[P_R_EXT]
        q_atop = P[P_ATOP] * i2 * P[P_R_ANODE]
        q_top = P[P_KTOP] * (t_c - t_amb)
        q_bot = P[P_KBOT] * (t_c - t_amb)
        h_a = self.hbl_a
        r_wall = P[P_RWALL]
        m_l = S[S_LEDGE].copy()
        x_l = m_l / self.ledge_rho_a
        q_bl = h_a * (t_c - t_liq)
        q_led = (t_liq - t_sh) / (x_l / self.kledge_a + r_wall)
        bare = (m_l <= LEDGE_GONE_KG) & (q_bl >= q_led)
        q_bare = (t_c - t_sh) / (1.0 / h_a + r_wall)
        q_bath_side = np.where(bare, q_bare, q_bl)
        q_shell_in = np.where(bare, q_bare, q_led)
        dm = (q_led - q_bl) * dt / LEDGE_FUSION_J_PER_KG
        dm = np.where(dm < -m_l, -m_l, dm)
        bath = S[S_AL2O3] + S[S_ALF3] + S[S_CRYO]
        dm = np.minimum(dm, np.maximum(bath - BATH_FREEZE_FLOOR * P[P_BATH_TGT], 0.0))
        dm = np.where(bare, 0.0, dm)
        resid = np.where(bare, 0.0, (q_led - q_bl) * dt - LEDGE_FUSION_J_PER_KG * dm)
        phi = P[P_LEDGE_PHI]
        xs = S[S_ALF3] / np.maximum(S[S_ALF3] + S[S_CRYO], 1e-9)
        d_freeze = np.minimum(phi * dm * xs, S[S_ALF3])
        d_melt = np.where(m_l > 0.0, dm * S[S_LEDGE_ALF3] / np.where(m_l > 0.0, m_l, 1.0), 0.0)
        d_melt = np.maximum(d_melt, -S[S_LEDGE_ALF3])
        d_alf3 = np.where(dm > 0.0, d_freeze, np.where(dm < 0.0, d_melt, 0.0))
        keep = ~bare
        S[S_ALF3] = np.where(keep, S[S_ALF3] - d_alf3, S[S_ALF3])
        S[S_LEDGE_ALF3] = np.where(keep, S[S_LEDGE_ALF3] + d_alf3, S[S_LEDGE_ALF3])
        S[S_CRYO] = np.where(keep, S[S_CRYO] - (dm - d_alf3), S[S_CRYO])
        S[S_LEDGE] = np.where(keep, m_l + dm, m_l)
        q_nat = (t_sh - t_amb) / P[P_RSHELL]
        q_nat_pos = np.maximum(t_sh - t_amb, 0.0) / P[P_RSHELL]
        q_he = np.minimum(np.maximum(P[P_HE_CMD], -P[P_HE_INSUL] * q_nat_pos), P[P_HE_MAX])
        q_he = np.where(self.he_on, q_he, 0.0)
        S[S_TSHELL] = t_sh + (q_shell_in - q_nat - q_he) * dt / P[P_CSHELL]
        S[S_TBATH] = (
            t_c + ((p_elec - p_rxn - q_ext - q_atop - q_top - q_bot - q_bath_side - q_anode) * dt - resid) / P[P_CTH]
        )
        S[A_Q_LOSS] += (q_ext + q_atop + q_top + q_bot + q_nat + q_he) * dt
        S[A_Q_HE] += q_he * dt
        O[O_Q_HE] = q_he
        O[O_Q_SIDE] = q_bath_side
        O[O_TSHELL] = S[S_TSHELL]
        O[O_LEDGE_CM] = 100.0 * S[S_LEDGE] / self.ledge_rho_a

    def _integrate(self, inc: np.ndarray, current_line_a: np.ndarray) -> None:
        S, P, O, dt = self.S, self.P, self.O, self.dt
        current = current_line_a if inc.all() else np.where(inc, current_line_a, 0.0)
        u = np.where(inc, O[O_E] + O[O_R_OHM] * current, 0.0)
        O[O_U] = u
        O[O_I] = current
        c, alf3, t_liq, c_sat = self._c, self._alf3, self._t_liq, self._c_sat
        t_c = S[S_TBATH].copy()
        ops_busy = (S[S_TAP_LEFT] > 0.0) | (S[S_AC_BUSY] > 0.0)

        # --- anode effect
        ae_idx = np.flatnonzero(S[S_AE] > 0.5)
        film0 = S[S_FILM]
        film = film0 * self.k_film
        refr = np.maximum(S[S_REFRACT] - dt, 0.0)
        if ae_idx.size:
            refr[ae_idx] = S[S_REFRACT, ae_idx]
            f = film0[ae_idx]
            film[ae_idx] = f + (1.0 - f) * self.k_film_up
            S[S_AE_T, ae_idx] += dt
            S[A_AE_S, ae_idx] += dt
            ca = c[ae_idx]
            c_crit = S[S_AE_CCRIT, ae_idx]
            hazard = np.exp(np.minimum(0.0, ca - c_crit) / 0.2) / P[P_AE_SELF_S, ae_idx]
            hazard += np.maximum(0.0, ca - c_crit - 0.1) / 0.25 * AE_WET_RATE
            hazard += S[S_SWEEP, ae_idx] / SWEEP_SCALE_MM * AE_SWEEP_RATE
            hazard += np.where(S[S_ACD, ae_idx] < 2.5, 1.0 / 3.0, 0.0)
            live = current[ae_idx] > 0.0
            ends = ~live
            if live.any():
                draw_idx = ae_idx[live]
                ends[live] = self._uniform(draw_idx) < 1.0 - np.exp(-hazard[live] * dt)
            crew = S[S_AE_T, ae_idx] >= P[P_OPERATOR_S, ae_idx]  # the crew's green pole
            ends |= crew
            end_idx = ae_idx[ends]
            fed = ae_idx[crew]  # and a manual feed
            S[S_AL2O3, fed] += 0.5 * MANUAL_FEED_KG
            S[S_SLUDGE, fed] += 0.5 * MANUAL_FEED_KG
            S[A_FED, fed] += MANUAL_FEED_KG
            S[S_AE, end_idx] = 0.0
            refr[end_idx] = P[P_AE_REFR_S, end_idx]
            start = (refr <= 0.0) & (c < O[O_C_CRIT]) & (current > 1000.0) & inc
            start[ae_idx] = False
        else:
            start = (refr <= 0.0) & (c < O[O_C_CRIT]) & (current > 1000.0) & inc
        S[S_REFRACT] = refr
        st = np.flatnonzero(start)
        if st.size:
            S[S_AE, st] = 1.0
            S[S_AE_T, st] = 0.0
            S[S_AE_CCRIT, st] = O[O_C_CRIT, st]
            S[S_KILL_T, st] = np.where(S[S_KILL_T, st] >= LOCAL_AE_STROKE_END_S, LOCAL_AE_REPEAT_S, S[S_KILL_T, st])
            S[A_AE_N, st] += 1.0
            op_s = P[P_OPERATOR_S, st]
            S[S_BLOCK_LEFT, st] = np.where(S[S_BLOCK_LEFT, st] > op_s, op_s, S[S_BLOCK_LEFT, st])
            hop = S[S_HOPPER_LEFT, st]
            S[S_HOPPER_LEFT, st] = np.where(hop > 0.0, -np.minimum(hop, op_s), hop)
        S[S_FILM] = film
        S[S_SWEEP] *= self.k_sweep

        # --- feed disturbances
        self._event(inc, S_BLOCK_LEFT, S_BLOCK_NEXT, P_BLOCK_RATE, P_BLOCK_MEAN)
        was_crew = inc & (S[S_HOPPER_LEFT] < 0.0)
        crew = np.flatnonzero(was_crew)
        if crew.size:
            S[S_HOPPER_LEFT, crew] += dt
            came = crew[S[S_HOPPER_LEFT, crew] >= 0.0]
            if came.size:
                S[S_HOPPER_LEFT, came] = 0.0
                S[S_AL2O3, came] += 0.5 * MANUAL_FEED_KG
                S[S_SLUDGE, came] += 0.5 * MANUAL_FEED_KG
                S[A_FED, came] += MANUAL_FEED_KG
                d = came[P[P_HOPPER_RATE, came] > 0.0]
                if d.size:
                    S[S_HOPPER_NEXT, d] = -np.log(self._uniform(d)) / P[P_HOPPER_RATE, d]
        self._event(inc & ~was_crew, S_HOPPER_LEFT, S_HOPPER_NEXT, P_HOPPER_RATE, P_HOPPER_MEAN)

        # --- electrochemistry: CE, metal, alumina, PFC
        ce_raw = current_efficiency(t_c - t_liq, alf3, P[P_CE_C], S[S_ACD])
        ce = ce_raw * (1.0 - (1.0 - AE_CE_FACTOR) * film)
        O[O_CE] = ce
        charge = current * dt
        consumed = np.minimum(ce * AL2O3_KG_PER_AS * charge, S[S_AL2O3])
        pos = charge > 0.0
        ce_eff = np.where(pos, consumed / (AL2O3_KG_PER_AS * np.where(pos, charge, 1.0)), 0.0)
        metal = ce_eff * AL_KG_PER_AS * charge
        S[S_AL2O3] -= consumed
        S[A_CONSUMED] += consumed
        S[A_CHARGE] += charge
        S[S_METAL] += metal
        S[A_METAL] += metal
        S[A_CF4] += CF4_KG_PER_AS * film * charge
        diss = S[S_SLUDGE] * self.k_diss * np.maximum(0.0, 1.0 - c / c_sat)
        S[S_SLUDGE] -= diss
        S[S_AL2O3] += diss
        add = S[S_ALF3_RATE] * dt
        S[S_ALF3] += add
        S[A_ALF3_ADD] += add
        loss = P[P_ALF3_LOSS] * np.maximum(1.0 + (t_c - ALF3_LOSS_REF_C) / ALF3_LOSS_T_SCALE_K, 0.1)
        loss = np.minimum(loss * alf3 / ALF3_LOSS_REF_WT * dt, 0.5 * S[S_ALF3])
        loss = np.where(inc, loss, 0.0)
        S[S_ALF3] -= loss
        S[A_ALF3_LOST] += loss

        # --- energy balance, ledge, shell
        p_elec = u * current
        p_rxn = U_REACTION_V * ce_eff * current
        S[A_E_ELEC] += p_elec * dt
        S[A_E_RXN] += p_rxn * dt
        q_anode = S[S_AC_HEAT] * self.k_anode_heat / dt
        S[S_AC_HEAT] -= q_anode * dt
        S[A_Q_ANODE] += q_anode * dt
        self._heat(inc, current, p_elec, p_rxn, q_anode, t_liq)
        S[S_AC_AREA] *= self.k_area

        # --- geometry: metal rise, anode burn-off, tapping
        carbon = P[P_CARBON] * metal
        S[A_CARBON] += carbon
        burn_cm = 100.0 * carbon / (ANODE_DENSITY_KG_M3 * self.anode_m2)
        S[S_ANODE_H] -= burn_cm
        d_acd = burn_cm - 100.0 * metal / (ALUMINIUM_DENSITY_KG_M3 * self.cath_m2)
        tap_idx = np.flatnonzero(S[S_TAP_LEFT] > 0.0)
        if tap_idx.size:
            tap = np.minimum(np.minimum(S[S_TAP_LEFT, tap_idx], self.tap_rate[tap_idx]), S[S_METAL, tap_idx])
            S[S_TAP_LEFT, tap_idx] -= tap
            S[S_METAL, tap_idx] -= tap
            S[A_TAPPED, tap_idx] += tap
            d_acd[tap_idx] += 100.0 * tap / (ALUMINIUM_DENSITY_KG_M3 * self.cath_m2[tap_idx])
        S[S_ACD] = np.maximum(S[S_ACD] + d_acd, 0.5)
        S[S_AC_BUSY] = np.maximum(S[S_AC_BUSY] - dt, 0.0)

        # --- operations schedule
        ops = self.ops & inc
        np.subtract(S[S_TAP_TIMER], dt, out=S[S_TAP_TIMER], where=ops)
        due = np.flatnonzero(ops & (S[S_TAP_TIMER] <= 0.0))
        if due.size:
            S[S_TAP_TIMER, due] += P[P_TAP_INTERVAL, due]
            self._start_tapping(due)
            q = due[P[P_QUALITY_STD, due] > 0.0]
            if q.size:
                f = 1.0 + P[P_QUALITY_STD, q] * self._normal(q)
                S[S_SLUDGE_R, q] = np.minimum(np.maximum(P[P_SLUDGE_R, q] * f, SLUDGE_R_MIN), SLUDGE_R_MAX)
            a = due[self.local[due]]
            if a.size:
                rate = P[P_ALF3_RATE, a]
                rate = rate + (
                    P[P_ALF3_KX, a] * (P[P_ALF3_TGT, a] - alf3[a]) + P[P_ALF3_KT, a] * (t_c[a] - P[P_T_TGT, a])
                )
                S[S_ALF3_RATE, a] = np.minimum(np.maximum(rate, 0.0), ALF3_RATE_MAX_F * P[P_ALF3_RATE, a])
        np.subtract(S[S_AC_TIMER], dt, out=S[S_AC_TIMER], where=ops)
        due = np.flatnonzero(ops & (S[S_AC_TIMER] <= 0.0))
        if due.size:
            S[S_AC_TIMER, due] += P[P_AC_INTERVAL, due]
            n_an = P[P_N_ANODES, due]
            S[S_AC_HEAT, due] += (
                ANODE_HEAT_FROM_BATH * P[P_ANODE_MASS, due] * ANODE_CP_J_PER_KGK * (S[S_TBATH, due] - 25.0)
            )
            S[S_AC_AREA, due] = np.minimum(S[S_AC_AREA, due] + 1.0 / n_an, 0.5)
            S[S_ANODE_H, due] += 0.75 * P[P_ANODE_H0, due] / n_an
            S[S_AC_BUSY, due] = P[P_AC_DURATION, due]
            self._remove_bath(due, P[P_BUTT_BATH, due])

        # --- potroom PLC local automation
        local = self.local & inc
        if local.any():
            ops_ended = ops_busy & (S[S_TAP_LEFT] <= 0.0) & (S[S_AC_BUSY] <= 0.0)
            self._local(local, current, u, charge, ops_ended)

        # --- validity envelope
        bath = S[S_AL2O3] + S[S_ALF3] + S[S_CRYO]
        sh = t_c - t_liq
        flags = np.zeros(self.n, dtype=np.int64)
        flags |= np.where((sh < SUPERHEAT_MIN_K) | (sh > SUPERHEAT_MAX_K), F_SUPERHEAT, 0)
        flags |= np.where((t_c < TEMP_MIN_C) | (t_c > TEMP_MAX_C), F_TEMPERATURE, 0)
        flags |= np.where((alf3 < ALF3_MIN) | (alf3 > ALF3_MAX), F_ALF3, 0)
        flags |= np.where(c > c_sat - ALUMINA_SAT_MARGIN, F_ALUMINA, 0)
        tgt = P[P_BATH_TGT]
        flags |= np.where((bath < BATH_MIN_F * tgt) | (bath > BATH_MAX_F * tgt), F_BATH_MASS, 0)
        ledge_cm = O[O_LEDGE_CM]
        flags |= np.where((ledge_cm < LEDGE_MIN_CM) | (ledge_cm > LEDGE_MAX_CM), F_LEDGE, 0)
        flags |= np.where((S[S_ACD] < ACD_MIN_CM) | (S[S_ACD] > ACD_MAX_CM), F_ACD, 0)
        flags |= np.where((ce_raw < CE_MIN) | (ce_raw > CE_MAX), F_CE, 0)
        flags = np.where(inc, flags, 0)
        O[O_FLAGS] = flags
        bad = flags != 0
        S[A_INVALID_S] += np.where(bad, dt, 0.0)
        S[S_FLAGS_EVER] = np.where(bad, (S[S_FLAGS_EVER].astype(np.int64) | flags).astype(float), S[S_FLAGS_EVER])

    def _start_tapping(self, idx: np.ndarray) -> None:
        """twin.cell.start_tapping: metal back to its nominal pad, bath level corrected."""
        S, P = self.S, self.P
        S[S_TAP_LEFT, idx] = np.maximum(S[S_METAL, idx] - P[P_METAL0, idx], 0.0)
        tot = S[S_AL2O3, idx] + S[S_ALF3, idx] + S[S_CRYO, idx]
        err = tot - P[P_BATH_TGT, idx]
        band = P[P_BATH_BAND, idx]
        hi = err > band
        if hi.any():
            self._remove_bath(idx[hi], np.minimum(err[hi], P[P_BATH_MAX, idx[hi]]))
        lo = err < -band
        if lo.any():
            j = idx[lo]
            add = np.minimum(-err[lo], P[P_BATH_MAX, j])
            d_al2o3 = add * P[P_BATH_AL2O3, j] / 100.0
            d_alf3 = add * P[P_ALF3_TGT, j] / 100.0
            S[S_AL2O3, j] += d_al2o3
            S[S_ALF3, j] += d_alf3
            S[S_CRYO, j] += add - d_al2o3 - d_alf3
            S[A_BATH_IN, j] += add
            S[A_AL2O3_OPS, j] += d_al2o3
            S[A_ALF3_OPS, j] += d_alf3

    def _local(self, local: np.ndarray, current: np.ndarray, u: np.ndarray, charge: np.ndarray, ops_ended) -> None:
        """twin.cell.local_automation for cells ``local``."""
        S, P, dt = self.S, self.P, self.dt
        ae = S[S_AE] > 0.5
        # AE kill with beam travel
        q_idx = np.flatnonzero(self.quench & local)
        if q_idx.size:
            kill_t = S[S_KILL_T, q_idx].copy()
            dose = ae[q_idx] & (S[S_AE_T, q_idx] >= LOCAL_AE_DETECT_S) & (kill_t >= LOCAL_AE_REPEAT_S)
            if dose.any():
                self._dump_shot(q_idx[dose], LOCAL_AE_SHOTS)
                kill_t[dose] = 0.0
            moving = kill_t < LOCAL_AE_STROKE_END_S
            if moving.any():
                kt = kill_t[moving]
                t1 = kt + dt
                down = np.maximum(np.minimum(t1, LOCAL_AE_TRAVEL_S) - kt, 0.0)
                up = np.maximum(np.minimum(t1, LOCAL_AE_STROKE_END_S) - np.maximum(kt, LOCAL_AE_RAISE_S), 0.0)
                mv = LOCAL_AE_BEAM_MM_S * (up - down)
                nz = mv != 0.0
                if nz.any():
                    self._move_beam(q_idx[moving][nz], mv[nz])
            S[S_KILL_T, q_idx] = np.where(kill_t < LOCAL_AE_REPEAT_S, kill_t + dt, kill_t)
        stroke = S[S_KILL_T] < LOCAL_AE_STROKE_END_S + 10.0
        busy = ae | (S[S_TAP_LEFT] > 0.0) | (S[S_AC_BUSY] > 0.0)

        # filtered current and resistance
        alpha = P[P_R_ALPHA]
        fil = local & (current > 1000.0)
        S[S_I_FILT] = np.where(fil, S[S_I_FILT] + alpha * (current - S[S_I_FILT]), S[S_I_FILT])
        rf = fil & ~ae & ~stroke & (S[S_FILM] < 0.01)
        if rf.any():
            j = np.flatnonzero(rf)
            r_meas = (u[j] - PLC_E0_V) / current[j]
            first = S[S_R_FILT, j] <= 0.0
            r_f = np.where(first, r_meas, S[S_R_FILT, j])
            r_fast = np.where(first, r_meas, S[S_R_FAST, j])
            dev = r_meas - r_f
            S[S_R_FILT, j] = r_f + alpha[j] * dev
            S[S_R_VAR, j] += alpha[j] * (dev * dev - S[S_R_VAR, j])
            S[S_R_FAST, j] = r_fast + P[P_R_ALPHA_FAST, j] * (r_meas - r_fast)

        # feeding
        ratio = np.ones(self.n)
        tr = local & self.track
        if tr.any():
            stepped = np.abs(current - S[S_I_FILT]) > PLC_CURRENT_STEP * S[S_I_FILT]
            S[S_R_MIN] = np.where(tr & (busy | stepped), S[S_R_FILT], S[S_R_MIN])
            end_under = tr & ~busy & stepped & (S[S_FEED_PHASE] < 0.5) & (S[S_PHASE_T] > TRACK_DISTURBED_OVER_S)
            S[S_FEED_PHASE] = np.where(end_under, 1.0, S[S_FEED_PHASE])
            S[S_PHASE_T] = np.where(end_under, 0.0, S[S_PHASE_T])
            S[S_PHASE_T] = np.where(tr, S[S_PHASE_T] + dt, S[S_PHASE_T])
            re = tr & ae
            S[S_FEED_PHASE] = np.where(re, 1.0, S[S_FEED_PHASE])
            S[S_PHASE_T] = np.where(re, 0.0, S[S_PHASE_T])
            under = tr & (S[S_FEED_PHASE] < 0.5)
            over = tr & ~under
            ratio = np.where(under, P[P_UNDER], np.where(over, P[P_OVER], ratio))
            r_f = S[S_R_FILT]
            seed = under & ((S[S_R_MIN] <= 0.0) | (r_f < S[S_R_MIN]))
            S[S_R_MIN] = np.where(seed, r_f, S[S_R_MIN])
            rise = r_f - S[S_R_MIN]
            trig = P[P_R_TRIG] + TRACK_NOISE_K * np.sqrt(S[S_R_VAR])
            sw = under & (((S[S_PHASE_T] > TRACK_SETTLE_S) & (rise > trig)) | (S[S_PHASE_T] > P[P_UNDER_MAX_S]))
            back = over & (S[S_PHASE_T] > P[P_OVER_S])
            S[S_FEED_PHASE] = np.where(sw, 1.0, np.where(back, 0.0, S[S_FEED_PHASE]))
            S[S_PHASE_T] = np.where(sw | back, 0.0, S[S_PHASE_T])
            S[S_R_MIN] = np.where(back, S[S_R_FILT], S[S_R_MIN])
        credit = S[S_FEED_CREDIT]
        inc_credit = ratio * P[P_FEED_RATIO] * P[P_CE_NOM] * AL2O3_KG_PER_AS * charge
        np.add(credit, inc_credit, out=credit, where=local)
        f_idx = np.flatnonzero(local & (credit >= P[P_SHOT_KG]))
        if f_idx.size:
            shot = P[P_SHOT_KG, f_idx]
            n_shots = np.floor(credit[f_idx] / shot)
            credit[f_idx] -= n_shots * shot
            self._dump_shot(f_idx, n_shots)

        # resistance control
        op = (S[S_TAP_LEFT] > 0.0) | (S[S_AC_BUSY] > 0.0)
        cap = local & op & (S[S_R_PRE] <= 0.0)
        S[S_R_PRE] = np.where(cap, S[S_R_FAST], S[S_R_PRE])
        timer = S[S_BEAM_TIMER]
        fol = local & ops_ended
        timer[fol] = np.minimum(timer[fol], P[P_BEAM_FOLLOW, fol])
        S[S_RESTORE_T] = np.where(fol, PLC_RESTORE_WINDOW_S, S[S_RESTORE_T])
        S[S_RESTORE_T] = np.where(local, np.maximum(S[S_RESTORE_T] - dt, 0.0), S[S_RESTORE_T])
        S[S_R_PRE] = np.where(local & ~op & (S[S_RESTORE_T] <= 0.0), 0.0, S[S_R_PRE])
        np.subtract(timer, dt, out=timer, where=local)
        b_idx = np.flatnonzero(local & (timer <= 0.0))
        if b_idx.size:
            timer[b_idx] += P[P_BEAM_INTERVAL, b_idx]
            go = (current[b_idx] > 1000.0) & ~busy[b_idx] & ~stroke[b_idx] & (S[S_R_FAST, b_idx] > 0.0)
            j = b_idx[go]
            if j.size:
                restoring = S[S_R_PRE, j] > 0.0
                i_f = S[S_I_FILT, j]
                r0 = P[P_R_TARGET, j]
                tgt = r0 * (1.0 + P[P_AMP_COMP, j] * (P[P_I_NOM, j] / np.where(i_f > 1000.0, i_f, 1.0) - 1.0))
                tgt = np.minimum(np.maximum(tgt, PLC_TARGET_MIN_F * r0), PLC_TARGET_MAX_F * r0)
                tgt = np.where(i_f <= 1000.0, r0, tgt)
                err = np.where(restoring, S[S_R_FAST, j] - S[S_R_PRE, j], S[S_R_FAST, j] - tgt)
                rise = (S[S_R_MIN, j] > 0.0) & (S[S_R_FILT, j] - S[S_R_MIN, j] > P[P_R_TRIG, j])
                lean_u = S[S_PHASE_T, j] > TRACK_SETTLE_S
                lean_o = S[S_PHASE_T, j] < TRACK_LEAN_OVER_S
                phase_lean = np.where(S[S_FEED_PHASE, j] < 0.5, lean_u, lean_o)
                lean = (rise | phase_lean) & self.track[j] & ~restoring
                move = (np.abs(err) > P[P_R_BAND, j]) & ~(lean & (err > 0.0))
                m = j[move]
                if m.size:
                    mv = np.minimum(np.abs(err[move]) / P[P_BEAM_GAIN, m], P[P_BEAM_MAX, m])
                    mv = np.maximum(mv, P[P_BEAM_STEP, m])
                    mv = np.where(err[move] > 0.0, -mv, mv)
                    self._move_beam(m, 10.0 * mv)
                    dr = mv * P[P_BEAM_GAIN, m]
                    S[S_R_FILT, m] += dr
                    S[S_R_FAST, m] += dr
                    S[S_R_MIN, m] += dr
                    rest_m = restoring[move]
                    down_m = err[move] > 0.0
                    timer[m] = np.where(
                        rest_m, np.minimum(timer[m], P[P_BEAM_FOLLOW, m]), np.where(down_m, PLC_DOWN_HOLD_S, timer[m])
                    )
                done = j[~move & restoring]
                S[S_R_PRE, done] = 0.0
