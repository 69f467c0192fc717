"""Lumped dynamic model of point-fed prebake cells: per-cell Numba kernels.

One sub-step of one cell is split in two so that the series circuit can be solved in
between (``twin.potline``):

1. ``cell_emf`` — voltage breakdown at the present line current: the cell is
   linearised as ``U = E + R_ohm·I`` (back-EMF + ohmic part, incl. AE film and noise).
2. ``cell_integrate`` — with the line current the rectifier delivers, integrate the
   mass balances (two-pool alumina after Yao 2017, AlF3 with its losses, cryolite, metal,
   bath sources and sinks), the heat balance (``twin.heat``: top, bottom, side ledge with
   its composition, shell, shell heat exchanger), ACD (metal rise, anode burn-off,
   tapping), the anode effect (onset below a current-density dependent critical alumina
   concentration, gas film, self-extinction, quench by alumina and beam pumping, PFC),
   the feed disturbances (``twin.disturbances``), the potroom PLC's local automation
   (tracking feed control, resistance control with amperage compensation, AE kill, AlF3
   control), the operations schedule (tapping with bath-level correction, anode changes)
   and the validity flags (``twin.envelope``).

Energy bookkeeping is exact by construction (``twin.heat``), and every species moved
between bath, ledge, sludge, metal and the operators is recorded in an accumulator, so
the balances close to rounding.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from twin.bath import (
    AL2O3_KG_PER_AS,
    AL_KG_PER_AS,
    ALUMINIUM_DENSITY_KG_M3,
    ANODE_DENSITY_KG_M3,
    BUBBLE_AE_OFFSET,
    C_AE_HAUPIN,
    PHI_MAX,
    PHI_MAX_HAUPIN,
    PHI_SCALE_HAUPIN,
    U_REACTION_V,
    alumina_saturation_wt,
    current_efficiency,
    liquidus_c,
    voltage_components,
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
    A_TAPPED,
    D_AE_OSC,
    D_ANODE_AREA,
    D_ANODE_HEAT,
    D_FILM,
    D_SWEEP,
    N_DECAY,
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
    P_BATH_AL2O3,
    P_BATH_BAND,
    P_BATH_MAX,
    P_BATH_TGT,
    P_BEAM_FOLLOW,
    P_BEAM_GAIN,
    P_BEAM_INTERVAL,
    P_BEAM_MAX,
    P_BEAM_STEP,
    P_BUBBLE_MODEL,
    P_BUTT_BATH,
    P_CAF2,
    P_CARBON,
    P_CATH_CM2,
    P_CE_C,
    P_CE_NOM,
    P_FEED_EFF,
    P_FEED_RATIO,
    P_FILM_V,
    P_I_NOM,
    P_KAPPA_F,
    P_KDISS_F,
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
    P_R_ALPHA,
    P_R_ALPHA_FAST,
    P_R_BAND,
    P_R_COND,
    P_R_TARGET,
    P_R_TRIG,
    P_SHOT_BIAS,
    P_SHOT_KG,
    P_SIZE_F,
    P_T_TGT,
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
    S_CRYO,
    S_FEED_ACK,
    S_FEED_CREDIT,
    S_FEED_PHASE,
    S_FILM,
    S_FLAGS_EVER,
    S_I_FILT,
    S_IN_CIRCUIT,
    S_KILL_T,
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
    S_SWEEP,
    S_TAP_LEFT,
    S_TAP_TIMER,
    S_TBATH,
)
from twin.disturbances import crew_called, disturb_step, feed_share, manual_feed, new_alumina_day, sludge_share
from twin.envelope import validity_flags
from twin.heat import heat_step
from twin.rng import normal, normal_pair, uniform

#: CF4 per A·s during a full AE [kg/(A·s)], calibrated to the IPCC Tier 2 CWPB slope
#: 0.143 kg CF4/t Al per AE-min/cell-day: 0.143e-3 · 8.054e-3 kg/(A·d) · 0.95 / 60 s
CF4_KG_PER_AS = 0.143e-3 * 8.054e-3 * 0.95 / 60.0
#: fraction of the current that still makes metal during a full AE
AE_CE_FACTOR = 0.5
ANODE_CP_J_PER_KGK = 1200.0
#: share of a new anode's heating drawn from the bath (the rest: its own Joule heat, crust)
ANODE_HEAT_FROM_BATH = 0.5
ANODE_HEAT_TAU_S = 16.0 * 3600.0
ANODE_AREA_TAU_S = 12.0 * 3600.0
FILM_TAU_S = 2.0
AE_OSC_STD_V = 3.0
AE_OSC_TAU_S = 1.0
MEAS_NOISE_V = 0.002
SWEEP_TAU_S = 30.0
#: local (PLC) AE kill: detection delay [s], AE feed [shots], pumping stroke [mm]
LOCAL_AE_DETECT_S = 2.0
LOCAL_AE_SHOTS = 8
LOCAL_AE_PUMP_MM = 15.0
LOCAL_AE_RAISE_S = 20.0  # beam starts back up this long after the dose [s]
LOCAL_AE_REPEAT_S = 60.0  # next dose while the AE lasts [s]
#: beam speed of the pumping stroke [mm/s] (beams move at ~50-100 mm/min, docs/domain.md §2)
LOCAL_AE_BEAM_MM_S = 1.0
LOCAL_AE_TRAVEL_S = LOCAL_AE_PUMP_MM / LOCAL_AE_BEAM_MM_S
#: the stroke is over (beam back where it was) this long after the dose [s]
LOCAL_AE_STROKE_END_S = LOCAL_AE_RAISE_S + LOCAL_AE_TRAVEL_S
#: metal a tapping crucible takes over the tapping duration [kg]
TAP_BATCH_KG = 1000.0
#: pumping [mm of recent beam travel] that gives a 1/30 s extinction hazard
SWEEP_SCALE_MM = 20.0
#: AE extinction: beam pumping sweeps the gas [1/s per SWEEP_SCALE_MM of recent travel],
#: fresh alumina wets the anodes [1/s per 0.25 wt % above critical + 0.1]
AE_SWEEP_RATE = 1.0 / 30.0
AE_WET_RATE = 1.0 / 60.0
#: the PLC's pseudo-resistance R = (U - E0)/I uses this back-EMF [V]
PLC_E0_V = 1.65
#: tracking: the underfeed's resistance minimum settles this long before a rise counts [s]
TRACK_SETTLE_S = 600.0
#: an underfeed this long [s] ends with an overfeed at the next line-current disturbance
TRACK_DISTURBED_OVER_S = 2700.0
#: tracking: a rise must also exceed this many standard deviations of the raw resistance
#: noise (a noisy cell, e.g. after an anode change, does not trigger the overfeed by noise)
TRACK_NOISE_K = 0.6
#: tracking: the first part of an overfeed still counts as lean (alumina not yet back) [s]
TRACK_LEAN_OVER_S = 1200.0
#: the PLC restores the pre-operation resistance within this window after the operation [s]
PLC_RESTORE_WINDOW_S = 900.0
#: a line-current change of more than this share resets the track's reference [-]
PLC_CURRENT_STEP = 0.01
#: after lowering the beam on its band the PLC waits this long before the next check [s]
#: (a resistance that keeps rising is more likely alumina than ACD: no squeezing the ACD)
PLC_DOWN_HOLD_S = 1800.0
#: the PLC's target resistance stays within these factors of its nominal target
PLC_TARGET_MIN_F, PLC_TARGET_MAX_F = 0.7, 1.4
#: AlF3 additions the PLC applies stay within [0, this] x its base rate
ALF3_RATE_MAX_F = 3.0
#: AlF3 lost to emissions rises with temperature: +100 % per this many kelvin (linear, [EST])
ALF3_LOSS_T_SCALE_K = 30.0
#: nominal excess AlF3 for the loss scaling [wt %]
ALF3_LOSS_REF_WT = 11.0
ALF3_LOSS_REF_C = 965.0


@njit(cache=True, inline="always")
def composition(state, k):
    """(total bath kg, Al2O3 wt %, AlF3 wt %) of cell ``k``."""
    tot = state[k, S_AL2O3] + state[k, S_ALF3] + state[k, S_CRYO]
    return tot, 100.0 * state[k, S_AL2O3] / tot, 100.0 * state[k, S_ALF3] / tot


@njit(cache=True)
def critical_alumina_wt(t_c, i_dens, size_factor, delta):
    """Bulk Al2O3 [wt %] below which an AE starts at current density ``i_dens`` [A/cm²].

    Under-anode Al2O3 is the bulk minus ``delta``·i; the AE starts when the anode
    current density exceeds the critical current density of that local bath
    (Grjotheim & Welch), i.e. at a local concentration (i/K + 0.4)²; ``size_factor`` =
    ``twin.bath.anode_size_factor(one anode's area)``.
    """
    kk = (5.5 + 0.018 * (t_c + 273.15 - 1323.0)) * size_factor
    c_loc = (i_dens / kk + 0.4) ** 2
    return c_loc + delta * i_dens


@njit(cache=True)
def step_decays(dt):
    """Decay factors of one model step ``dt`` [s] shared by all cells (index ``D_*``)."""
    d = np.empty(N_DECAY)
    d[D_AE_OSC] = math.exp(-dt / AE_OSC_TAU_S)
    d[D_FILM] = math.exp(-dt / FILM_TAU_S)
    d[D_SWEEP] = math.exp(-dt / SWEEP_TAU_S)
    d[D_ANODE_HEAT] = 1.0 - math.exp(-dt / ANODE_HEAT_TAU_S)
    d[D_ANODE_AREA] = math.exp(-dt / ANODE_AREA_TAU_S)
    return d


@njit(cache=True, inline="always")
def cell_emf(k, state, params, out, current_a, rng, decay):
    """Voltage breakdown of cell ``k`` at line current ``current_a`` [A]; advances noise.

    ``decay`` holds the step's decay factors (``step_decays``); the MHD noise
    coefficient for the step is the per-cell parameter ``P_NOISE_A``.
    """
    a_noise = params[k, P_NOISE_A]
    sigma = params[k, P_NOISE_V] * (1.0 + state[k, S_SLUDGE] / 400.0)
    sigma *= 1.0 + 2.0 * max(0.0, 4.0 - state[k, S_ACD]) + 4.0 * params[k, P_N_ANODES] * state[k, S_AC_AREA]
    z_mhd, z_meas = normal_pair(rng, k)
    state[k, S_NOISE] = a_noise * state[k, S_NOISE] + sigma * math.sqrt(1.0 - a_noise * a_noise) * z_mhd
    a_osc = decay[D_AE_OSC]
    if state[k, S_AE] > 0.5 or state[k, S_FILM] > 1e-3:
        state[k, S_AE_OSC] = a_osc * state[k, S_AE_OSC] + AE_OSC_STD_V * math.sqrt(1.0 - a_osc * a_osc) * normal(rng, k)
    else:
        state[k, S_AE_OSC] *= a_osc

    if state[k, S_IN_CIRCUIT] < 0.5:
        for j in range(N_OUT):
            out[k, j] = 0.0
        out[k, O_R_OHM] = 0.0
        return
    _tot, c, alf3 = composition(state, k)
    caf2 = params[k, P_CAF2]
    t_c = state[k, S_TBATH]
    area = params[k, P_ANODE_CM2] * (1.0 - state[k, S_AC_AREA])
    i_dens = max(current_a, 1.0) / area
    c_crit = critical_alumina_wt(t_c, i_dens, params[k, P_SIZE_F], params[k, P_AE_DELTA])
    if params[k, P_BUBBLE_MODEL] > 0.5:  # Haupin's RTA coverage, capped (structural variant)
        c_ae, phi_scale, phi_max = C_AE_HAUPIN, PHI_SCALE_HAUPIN, PHI_MAX_HAUPIN
    else:  # Lundby et al.: the coverage reaches PHI_MAX at the cell's AE onset
        c_ae, phi_scale, phi_max = c_crit - BUBBLE_AE_OFFSET, 1.0, PHI_MAX
    e_rev, eta_sa, eta_ca, eta_cc, u_bath, u_bub, u_cond, r_ohm, kappa, i_dens, c_sat = voltage_components(
        current_a,
        t_c,
        c,
        alf3,
        caf2,
        state[k, S_ACD],
        area,
        params[k, P_SIZE_F],
        params[k, P_AREA_F],
        params[k, P_CATH_CM2],
        params[k, P_KAPPA_F],
        params[k, P_R_COND],
        c_ae,
        phi_scale,
        phi_max,
    )
    film = state[k, S_FILM]
    u_ae = film * (params[k, P_FILM_V] + state[k, S_AE_OSC])
    noise = state[k, S_NOISE] + MEAS_NOISE_V * z_meas
    t_liq = liquidus_c(alf3, caf2, c)
    out[k, O_E] = e_rev + eta_sa + eta_ca + eta_cc + u_ae + noise
    out[k, O_R_OHM] = r_ohm
    out[k, O_EREV] = e_rev
    out[k, O_ETA_SA] = eta_sa
    out[k, O_ETA_CA] = eta_ca
    out[k, O_ETA_CC] = eta_cc
    out[k, O_U_BATH] = u_bath
    out[k, O_U_BUB] = u_bub
    out[k, O_U_COND] = u_cond
    out[k, O_U_AE] = u_ae
    out[k, O_U_NOISE] = noise
    out[k, O_C] = c
    out[k, O_ALF3] = alf3
    out[k, O_TLIQ] = t_liq
    out[k, O_SUPERHEAT] = t_c - t_liq
    out[k, O_KAPPA] = kappa
    out[k, O_I_DENS] = i_dens
    out[k, O_CSAT] = c_sat
    out[k, O_C_CRIT] = c_crit


@njit(cache=True, inline="always")
def dump_shot(state, params, k, shots):
    """Dump ``shots`` feeder shots into cell ``k`` (the slow share goes to sludge).

    The PLC acknowledges every stroke; what reaches the bath is the cell's real shot mass
    (``P_SHOT_BIAS``) times ``P_FEED_EFF`` (forced: ``Potline.set_feeder_efficiency``) times
    the share its disturbances let through (a crusted-over feeder hole, an empty hopper:
    ``twin.disturbances``), and nothing tells the PLC. ``A_FED`` counts what reached the bath.
    """
    if shots <= 0:
        return
    m = shots * params[k, P_SHOT_KG] * params[k, P_SHOT_BIAS] * params[k, P_FEED_EFF] * feed_share(state, params, k)
    r = sludge_share(state, params, k)
    _tot, c, alf3 = composition(state, k)
    c_sat = alumina_saturation_wt(state[k, S_TBATH], alf3, params[k, P_CAF2])
    fast = (1.0 - r) * m if c < c_sat else 0.0
    state[k, S_AL2O3] += fast
    state[k, S_SLUDGE] += m - fast
    neut = min(params[k, P_ALF3_NEUT] * m, state[k, S_ALF3])
    state[k, S_ALF3] -= neut
    state[k, S_CRYO] += neut * 1.25  # 4 AlF3 + 3 Na2O -> 2 Na3AlF6 + Al2O3 (mass 419.9/335.9)
    state[k, A_ALF3_USED] += neut
    state[k, A_CRYO_MADE] += neut * 1.25
    state[k, A_FED] += m
    state[k, S_FEED_ACK] += shots


@njit(cache=True, inline="always")
def move_beam(state, k, move_mm):
    """Move cell ``k``'s anode beam by ``move_mm`` [mm] (+ up = larger ACD)."""
    if move_mm == 0.0:
        return
    state[k, S_ACD] = max(state[k, S_ACD] + move_mm / 10.0, 0.5)
    state[k, S_BEAM_ACK] += move_mm
    if state[k, S_AE] > 0.5:
        state[k, S_SWEEP] += abs(move_mm)


@njit(cache=True, inline="always")
def remove_bath(state, k, kg):
    """Take ``kg`` of bath (its present composition) out of cell ``k`` (tapped, on butts)."""
    tot = state[k, S_AL2O3] + state[k, S_ALF3] + state[k, S_CRYO]
    kg = min(kg, 0.5 * tot)
    if kg <= 0.0:
        return
    f = kg / tot
    d_al2o3 = f * state[k, S_AL2O3]
    d_alf3 = f * state[k, S_ALF3]
    state[k, S_AL2O3] -= d_al2o3
    state[k, S_ALF3] -= d_alf3
    state[k, S_CRYO] -= kg - d_al2o3 - d_alf3
    state[k, A_BATH_OUT] += kg
    state[k, A_AL2O3_OPS] -= d_al2o3
    state[k, A_ALF3_OPS] -= d_alf3


@njit(cache=True, inline="always")
def start_anode_change(state, params, k):
    """Replace one anode of cell ``k``: cold-anode heat sink, area not yet conducting, the
    butt takes some bath with it."""
    n = params[k, P_N_ANODES]
    state[k, S_AC_HEAT] += (
        ANODE_HEAT_FROM_BATH * params[k, P_ANODE_MASS] * ANODE_CP_J_PER_KGK * (state[k, S_TBATH] - 25.0)
    )
    state[k, S_AC_AREA] = min(state[k, S_AC_AREA] + 1.0 / n, 0.5)
    state[k, S_ANODE_H] += 0.75 * params[k, P_ANODE_H0] / n
    state[k, S_AC_BUSY] = params[k, P_AC_DURATION]
    remove_bath(state, k, params[k, P_BUTT_BATH])


@njit(cache=True, inline="always")
def start_tapping(state, params, k):
    """Tap cell ``k`` back to its nominal metal pad over the tapping duration; the crew
    measures the bath level and taps excess bath or adds crushed bath (nominal
    composition) towards the target, at most ``P_BATH_MAX`` per tapping."""
    state[k, S_TAP_LEFT] = max(state[k, S_METAL] - params[k, P_METAL0], 0.0)
    tot = state[k, S_AL2O3] + state[k, S_ALF3] + state[k, S_CRYO]
    err = tot - params[k, P_BATH_TGT]
    band = params[k, P_BATH_BAND]
    if err > band:
        remove_bath(state, k, min(err, params[k, P_BATH_MAX]))
    elif err < -band:
        add = min(-err, params[k, P_BATH_MAX])
        d_al2o3 = add * params[k, P_BATH_AL2O3] / 100.0
        d_alf3 = add * params[k, P_ALF3_TGT] / 100.0
        state[k, S_AL2O3] += d_al2o3
        state[k, S_ALF3] += d_alf3
        state[k, S_CRYO] += add - d_al2o3 - d_alf3
        state[k, A_BATH_IN] += add
        state[k, A_AL2O3_OPS] += d_al2o3
        state[k, A_ALF3_OPS] += d_alf3


@njit(cache=True, inline="always")
def plc_target_ohm(state, params, k):
    """The PLC's target pseudo-resistance [Ω] at its filtered current: the nominal target,
    compensated by ``P_AMP_COMP`` of a current change (1: the cell voltage is held)."""
    i_f = state[k, S_I_FILT]
    r0 = params[k, P_R_TARGET]
    if i_f <= 1000.0:
        return r0
    r = r0 * (1.0 + params[k, P_AMP_COMP] * (params[k, P_I_NOM] / i_f - 1.0))
    return min(max(r, PLC_TARGET_MIN_F * r0), PLC_TARGET_MAX_F * r0)


@njit(cache=True, inline="always")
def plc_move_beam(state, params, k, move_cm):
    """A resistance-control beam move by the PLC: its filtered resistances and the track's
    reference shift by the change it expects (``P_BEAM_GAIN``), so the move is not read
    as an alumina signal (and an alumina rise before it is not forgotten)."""
    move_beam(state, k, 10.0 * move_cm)
    dr = move_cm * params[k, P_BEAM_GAIN]
    state[k, S_R_FILT] += dr
    state[k, S_R_FAST] += dr
    state[k, S_R_MIN] += dr


@njit(cache=True, inline="always")
def local_automation(k, state, params, out, current, u, charge, dt, ops_ended):
    """The potroom PLC's automation of cell ``k`` (runs while ``P_LOCAL``): AE kill, feeding
    (tracking or fixed rate), resistance control with amperage compensation."""
    ae = state[k, S_AE] > 0.5
    kill_t = state[k, S_KILL_T]
    if params[k, P_LOCAL_QUENCH] > 0.5:
        # AE kill: once the AE is 2 s old (8 V confirmed), dump AE feed and drive the beam down
        # 15 mm at beam speed, from 20 s after the dose back up (also when the AE is over by
        # then), repeat every minute while the AE lasts; this also holds when the PLC takes
        # over in the middle of an AE (controller gone silent). S_KILL_T counts from the last
        # dose up to the repeat time.
        if ae and state[k, S_AE_T] >= LOCAL_AE_DETECT_S and kill_t >= LOCAL_AE_REPEAT_S:
            dump_shot(state, params, k, LOCAL_AE_SHOTS)
            kill_t = 0.0
        if kill_t < LOCAL_AE_STROKE_END_S:
            t1 = kill_t + dt
            down = max(min(t1, LOCAL_AE_TRAVEL_S) - kill_t, 0.0)
            up = max(min(t1, LOCAL_AE_STROKE_END_S) - max(kill_t, LOCAL_AE_RAISE_S), 0.0)
            move_beam(state, k, LOCAL_AE_BEAM_MM_S * (up - down))
        if kill_t < LOCAL_AE_REPEAT_S:
            state[k, S_KILL_T] = kill_t + dt
    stroke = state[k, S_KILL_T] < LOCAL_AE_STROKE_END_S + 10.0  # beam pumped or just back
    busy = ae or state[k, S_TAP_LEFT] > 0.0 or state[k, S_AC_BUSY] > 0.0

    # the PLC's own view: current and pseudo-resistance, filtered
    alpha = params[k, P_R_ALPHA]
    if current > 1000.0:
        state[k, S_I_FILT] += alpha * (current - state[k, S_I_FILT])
        if not ae and not stroke and state[k, S_FILM] < 0.01:
            r_meas = (u - PLC_E0_V) / current
            if state[k, S_R_FILT] <= 0.0:
                state[k, S_R_FILT] = r_meas
                state[k, S_R_FAST] = r_meas
            dev = r_meas - state[k, S_R_FILT]
            state[k, S_R_FILT] += alpha * dev
            state[k, S_R_VAR] += alpha * (dev * dev - state[k, S_R_VAR])
            state[k, S_R_FAST] += params[k, P_R_ALPHA_FAST] * (r_meas - state[k, S_R_FAST])

    # feeding: fixed rate, or tracking (underfeed until the resistance rises, overfeed a while)
    ratio = 1.0
    if params[k, P_TRACK] > 0.5:
        # an operation's, an AE's or a line-current change's resistance step is not alumina
        if busy or abs(current - state[k, S_I_FILT]) > PLC_CURRENT_STEP * state[k, S_I_FILT]:
            state[k, S_R_MIN] = state[k, S_R_FILT]
            # a line-current disturbance (a setpoint change, another cell's AE dipping the
            # line) once the underfeed has run TRACK_DISTURBED_OVER_S ends it with an
            # overfeed: the PLC cannot tell the rise it waits for from the disturbance, and
            # a cell underfed that long is lean. Restarting the rise within the same
            # underfeed kept the cell underfed to the 4 h limit while the line kept
            # dipping (an AE storm on a line at its rectifier's voltage limit).
            if not busy and state[k, S_FEED_PHASE] < 0.5 and state[k, S_PHASE_T] > TRACK_DISTURBED_OVER_S:
                state[k, S_FEED_PHASE] = 1.0
                state[k, S_PHASE_T] = 0.0
        state[k, S_PHASE_T] += dt
        if ae:  # after an AE the PLC overfeeds
            state[k, S_FEED_PHASE] = 1.0
            state[k, S_PHASE_T] = 0.0
        if state[k, S_FEED_PHASE] < 0.5:
            ratio = params[k, P_UNDER]
            r_f = state[k, S_R_FILT]
            if state[k, S_R_MIN] <= 0.0 or r_f < state[k, S_R_MIN]:
                state[k, S_R_MIN] = r_f
            rise = r_f - state[k, S_R_MIN]
            trig = params[k, P_R_TRIG] + TRACK_NOISE_K * math.sqrt(state[k, S_R_VAR])
            settled = state[k, S_PHASE_T] > TRACK_SETTLE_S
            if (settled and rise > trig) or state[k, S_PHASE_T] > params[k, P_UNDER_MAX_S]:
                state[k, S_FEED_PHASE] = 1.0
                state[k, S_PHASE_T] = 0.0
        else:
            ratio = params[k, P_OVER]
            if state[k, S_PHASE_T] > params[k, P_OVER_S]:
                state[k, S_FEED_PHASE] = 0.0
                state[k, S_PHASE_T] = 0.0
                state[k, S_R_MIN] = state[k, S_R_FILT]
    state[k, S_FEED_CREDIT] += ratio * params[k, P_FEED_RATIO] * params[k, P_CE_NOM] * AL2O3_KG_PER_AS * charge
    shot = params[k, P_SHOT_KG]
    if state[k, S_FEED_CREDIT] >= shot:
        n = int(state[k, S_FEED_CREDIT] / shot)
        state[k, S_FEED_CREDIT] -= n * shot
        dump_shot(state, params, k, n)

    # resistance control: proportional beam moves, checked again soon after a move, never
    # during an AE or an operation. After an operation (tapping, anode change) the PLC first
    # restores the resistance it had before; otherwise it holds its target band, but lowers
    # the beam only when the resistance says ACD, not lean alumina (not in the lean part of
    # a track; docs/domain.md §2)
    op = state[k, S_TAP_LEFT] > 0.0 or state[k, S_AC_BUSY] > 0.0
    if op and state[k, S_R_PRE] <= 0.0:
        state[k, S_R_PRE] = state[k, S_R_FAST]
    if ops_ended:
        state[k, S_BEAM_TIMER] = min(state[k, S_BEAM_TIMER], params[k, P_BEAM_FOLLOW])
        state[k, S_RESTORE_T] = PLC_RESTORE_WINDOW_S
    state[k, S_RESTORE_T] = max(state[k, S_RESTORE_T] - dt, 0.0)
    if not op and state[k, S_RESTORE_T] <= 0.0:
        state[k, S_R_PRE] = 0.0  # the window has passed: back to the target band
    state[k, S_BEAM_TIMER] -= dt
    if state[k, S_BEAM_TIMER] <= 0.0:
        state[k, S_BEAM_TIMER] += params[k, P_BEAM_INTERVAL]
        if current > 1000.0 and not busy and not stroke and state[k, S_R_FAST] > 0.0:
            restoring = state[k, S_R_PRE] > 0.0
            if restoring:
                err = state[k, S_R_FAST] - state[k, S_R_PRE]
            else:
                err = state[k, S_R_FAST] - plc_target_ohm(state, params, k)
            lean = False
            if params[k, P_TRACK] > 0.5 and not restoring:
                # a resistance above the track's reference is alumina, not ACD
                lean = state[k, S_R_MIN] > 0.0 and state[k, S_R_FILT] - state[k, S_R_MIN] > params[k, P_R_TRIG]
                if state[k, S_FEED_PHASE] < 0.5:
                    lean = lean or state[k, S_PHASE_T] > TRACK_SETTLE_S
                else:
                    lean = lean or state[k, S_PHASE_T] < TRACK_LEAN_OVER_S
            if abs(err) > params[k, P_R_BAND] and not (lean and err > 0.0):
                mv = min(abs(err) / params[k, P_BEAM_GAIN], params[k, P_BEAM_MAX])
                mv = max(mv, params[k, P_BEAM_STEP])
                plc_move_beam(state, params, k, -mv if err > 0.0 else mv)
                if restoring:
                    state[k, S_BEAM_TIMER] = min(state[k, S_BEAM_TIMER], params[k, P_BEAM_FOLLOW])
                elif err > 0.0:
                    state[k, S_BEAM_TIMER] = PLC_DOWN_HOLD_S
            elif restoring:
                state[k, S_R_PRE] = 0.0  # restored: back to the target band


@njit(cache=True, inline="always")
def plc_alf3_update(state, params, k, alf3, t_c):
    """The PLC's daily AlF3 addition from the bath sample (``alf3`` wt %) and temperature
    ``t_c`` [°C]: base rate, more when the bath is hot or lean in AlF3."""
    rate = params[k, P_ALF3_RATE]
    rate += params[k, P_ALF3_KX] * (params[k, P_ALF3_TGT] - alf3) + params[k, P_ALF3_KT] * (t_c - params[k, P_T_TGT])
    state[k, S_ALF3_RATE] = min(max(rate, 0.0), ALF3_RATE_MAX_F * params[k, P_ALF3_RATE])


@njit(cache=True, inline="always")
def cell_integrate(k, state, params, out, current_line_a, rng, dt, decay):
    """Integrate cell ``k`` over ``dt`` [s] at line current ``current_line_a`` [A].

    Composition, liquidus and saturation come from ``cell_emf`` of the same sub-step
    (nothing changes them in between); a cut-out cell computes its own.
    """
    in_circ = state[k, S_IN_CIRCUIT] > 0.5
    current = current_line_a if in_circ else 0.0
    u = out[k, O_E] + out[k, O_R_OHM] * current if in_circ else 0.0
    out[k, O_U] = u
    out[k, O_I] = current
    caf2 = params[k, P_CAF2]
    t_c = state[k, S_TBATH]
    if in_circ:
        c, alf3, t_liq, c_sat = out[k, O_C], out[k, O_ALF3], out[k, O_TLIQ], out[k, O_CSAT]
    else:
        _tot, c, alf3 = composition(state, k)
        t_liq = liquidus_c(alf3, caf2, c)
        c_sat = alumina_saturation_wt(t_c, alf3, caf2)
    ops_busy = state[k, S_TAP_LEFT] > 0.0 or state[k, S_AC_BUSY] > 0.0

    # --- anode effect ---------------------------------------------------------------------
    film = state[k, S_FILM]
    if state[k, S_AE] > 0.5:
        state[k, S_AE_T] += dt
        state[k, A_AE_S] += dt
        film += (1.0 - film) * (1.0 - decay[D_FILM])
        c_crit = state[k, S_AE_CCRIT]
        # the film breaks up by itself only near the critical concentration ...
        hazard = math.exp(min(0.0, c - c_crit) / 0.2) / params[k, P_AE_SELF_S]
        # ... and fresh alumina above it wets the anodes
        hazard += max(0.0, c - c_crit - 0.1) / 0.25 * AE_WET_RATE
        hazard += state[k, S_SWEEP] / SWEEP_SCALE_MM * AE_SWEEP_RATE  # beam pumping sweeps the gas
        if state[k, S_ACD] < 2.5:
            hazard += 1.0 / 3.0  # anodes touch the metal: shorted
        # ... and the crew, called by the AE alarm, kills it by hand (green poling) at the latest
        crew = state[k, S_AE_T] >= params[k, P_OPERATOR_S]
        if current <= 0.0 or uniform(rng, k) < 1.0 - math.exp(-hazard * dt) or crew:
            state[k, S_AE] = 0.0
            state[k, S_REFRACT] = params[k, P_AE_REFR_S]
            if crew:  # and feeds the cell by hand
                manual_feed(state, k)
    else:
        film *= decay[D_FILM]
        state[k, S_REFRACT] = max(state[k, S_REFRACT] - dt, 0.0)
        if in_circ and current > 1000.0 and state[k, S_REFRACT] <= 0.0 and c < out[k, O_C_CRIT]:
            state[k, S_AE] = 1.0
            state[k, S_AE_T] = 0.0
            state[k, S_AE_CCRIT] = out[k, O_C_CRIT]
            if state[k, S_KILL_T] >= LOCAL_AE_STROKE_END_S:  # a local kill may dose at once (unless
                state[k, S_KILL_T] = LOCAL_AE_REPEAT_S  # its last stroke is still under way)
            state[k, A_AE_N] += 1.0
            crew_called(state, params, k)
    state[k, S_FILM] = film
    state[k, S_SWEEP] *= decay[D_SWEEP]

    # --- feed disturbances --------------------------------------------------------------------
    if in_circ:
        disturb_step(k, state, params, rng, dt)

    # --- electrochemistry: CE, metal, alumina, PFC -----------------------------------------
    ce_raw = current_efficiency(t_c - t_liq, alf3, params[k, P_CE_C], state[k, S_ACD])
    ce = ce_raw * (1.0 - (1.0 - AE_CE_FACTOR) * film)
    out[k, O_CE] = ce
    charge = current * dt
    consumed = min(ce * AL2O3_KG_PER_AS * charge, state[k, S_AL2O3])
    ce_eff = consumed / (AL2O3_KG_PER_AS * charge) if charge > 0.0 else 0.0
    metal = ce_eff * AL_KG_PER_AS * charge
    state[k, S_AL2O3] -= consumed
    state[k, A_CONSUMED] += consumed
    state[k, A_CHARGE] += charge
    state[k, S_METAL] += metal
    state[k, A_METAL] += metal
    state[k, A_CF4] += CF4_KG_PER_AS * film * charge

    # slow pool: first-order dissolution, driven by the distance to saturation
    diss = state[k, S_SLUDGE] * params[k, P_KDISS_F] * max(0.0, 1.0 - c / c_sat)
    state[k, S_SLUDGE] -= diss
    state[k, S_AL2O3] += diss

    # AlF3: additions at the PLC's present rate, losses (emissions, sodium uptake)
    add = state[k, S_ALF3_RATE] * dt
    state[k, S_ALF3] += add
    state[k, A_ALF3_ADD] += add
    if in_circ:
        loss = params[k, P_ALF3_LOSS] * max(1.0 + (t_c - ALF3_LOSS_REF_C) / ALF3_LOSS_T_SCALE_K, 0.1)
        loss = min(loss * alf3 / ALF3_LOSS_REF_WT * dt, 0.5 * state[k, S_ALF3])
        state[k, S_ALF3] -= loss
        state[k, A_ALF3_LOST] += loss

    # --- energy balance, ledge, shell ---------------------------------------------------------
    p_elec = u * current
    p_rxn = U_REACTION_V * ce_eff * current
    state[k, A_E_ELEC] += p_elec * dt
    state[k, A_E_RXN] += p_rxn * dt
    q_anode = state[k, S_AC_HEAT] * decay[D_ANODE_HEAT] / dt
    state[k, S_AC_HEAT] -= q_anode * dt
    state[k, A_Q_ANODE] += q_anode * dt
    heat_step(k, state, params, out, current, p_elec, p_rxn, q_anode, t_liq, dt)
    state[k, S_AC_AREA] *= decay[D_ANODE_AREA]

    # --- geometry: metal rise, anode burn-off, tapping -------------------------------------------
    cath_m2 = params[k, P_CATH_CM2] * 1e-4
    anode_m2 = params[k, P_ANODE_CM2] * 1e-4
    carbon = params[k, P_CARBON] * metal
    state[k, A_CARBON] += carbon
    burn_cm = 100.0 * carbon / (ANODE_DENSITY_KG_M3 * anode_m2)
    state[k, S_ANODE_H] -= burn_cm
    d_acd = burn_cm - 100.0 * metal / (ALUMINIUM_DENSITY_KG_M3 * cath_m2)
    if state[k, S_TAP_LEFT] > 0.0:
        tap = min(state[k, S_TAP_LEFT], TAP_BATCH_KG * dt / params[k, P_TAP_DURATION], state[k, S_METAL])
        state[k, S_TAP_LEFT] -= tap
        state[k, S_METAL] -= tap
        state[k, A_TAPPED] += tap
        d_acd += 100.0 * tap / (ALUMINIUM_DENSITY_KG_M3 * cath_m2)
    state[k, S_ACD] = max(state[k, S_ACD] + d_acd, 0.5)
    state[k, S_AC_BUSY] = max(state[k, S_AC_BUSY] - dt, 0.0)

    # --- operations schedule (tapping, anode changes) ---------------------------------------------
    if params[k, P_OPS] > 0.5 and in_circ:
        state[k, S_TAP_TIMER] -= dt
        if state[k, S_TAP_TIMER] <= 0.0:
            state[k, S_TAP_TIMER] += params[k, P_TAP_INTERVAL]
            start_tapping(state, params, k)
            new_alumina_day(state, params, k, rng)
            if params[k, P_LOCAL] > 0.5:
                plc_alf3_update(state, params, k, alf3, t_c)
        state[k, S_AC_TIMER] -= dt
        if state[k, S_AC_TIMER] <= 0.0:
            state[k, S_AC_TIMER] += params[k, P_AC_INTERVAL]
            start_anode_change(state, params, k)

    # --- potroom PLC local automation -----------------------------------------------------------
    if params[k, P_LOCAL] > 0.5 and in_circ:
        ops_ended = ops_busy and state[k, S_TAP_LEFT] <= 0.0 and state[k, S_AC_BUSY] <= 0.0
        local_automation(k, state, params, out, current, u, charge, dt, ops_ended)

    # --- validity envelope -----------------------------------------------------------------------
    if in_circ:
        bath = state[k, S_AL2O3] + state[k, S_ALF3] + state[k, S_CRYO]
        flags = validity_flags(
            t_c - t_liq, t_c, alf3, c, c_sat, bath, params[k, P_BATH_TGT], out[k, O_LEDGE_CM], state[k, S_ACD], ce_raw
        )
        out[k, O_FLAGS] = flags
        if flags != 0:
            state[k, A_INVALID_S] += dt
            state[k, S_FLAGS_EVER] = float(int(state[k, S_FLAGS_EVER]) | flags)
    else:
        out[k, O_FLAGS] = 0.0
