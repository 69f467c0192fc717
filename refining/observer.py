"""State observer for refining pots: the twin converging on a pot's measurements.

Driven by what the pot's PLC logged — current, voltage, temperature, heater power,
scrap charges, taps with their lab assays — the observer runs the refining model
(``refining.model.pot_step``) and corrects it at every sample:

* **Voltage**: a scalar Kalman filter on a random-walk multiplier θ_R of the ohmic
  resistance (electrolyte thickness/conductivity and contacts are not separable at one
  current density). Innovation: measured minus predicted interval-mean voltage;
  H = ∂U/∂θ_R = the ohmic part of the voltage.
* **Temperature**: an extended Kalman filter on [T, θ_UA] (θ_UA multiplies the heat-loss
  coefficient). The energy balance is driven by the *measured* electrical and heater
  power, so the only unknowns are losses and the state.
* **Purity**: at every assayed tap, the predicted pool composition is compared with
  the assay (log ratio r): the pool impurity masses are pulled toward it (gain
  ``G_POOL``). For Fe and Si the anode follows (``G_ANODE``): while the element is
  dissolved its transfer is proportional to the anode content, so the content and a
  multiplier θ_s on the scrap grade (``G_SCRAP``) are scaled and future charges carry
  the corrected grade; once saturated the transfer is driven by the sludge, so the
  correction scales the excess (sludge) instead — scaling the whole inventory there
  would over-correct by the ratio inventory/excess.

The calibrated parameter row (θ_R in ``P_R_MULT``, θ_UA·UA in ``P_UA``, θ_s·grade in
``P_SCRAP``) is what shadow mode hands to its what-if runs.

Arrays: ``obs[n, N_OBS]`` observer state; records ``[n, n_rows]``; output
``out[n, n_rows, N_OUT]``. Same conventions as the model: float64, named indices,
``@njit(cache=True)``, loops over pots and samples in compiled code.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from refining import model as rf
from refining.model import (
    CU,
    FE,
    N_EL,
    N_PARAM,
    N_STATE,
    P_HEAT_CAP,
    P_NOISE_ASSAY,
    P_NOISE_IF,
    P_NOISE_IF_TAU,
    P_NOISE_SCRAP,
    P_NOISE_T,
    P_NOISE_U,
    P_R_MULT,
    P_SCRAP,
    P_T_AMB,
    P_UA,
    S_I,
    S_M_A,
    S_M_A_AL,
    S_M_C,
    S_M_C_AL,
    S_SLUDGE_KG,
    S_T,
    SI,
    al_mole_fraction,
    anode_phases,
    apply_charge,
    cathode_fractions,
    cell_voltage,
    pot_step,
)

# observer state
O_THETA_R = 0  # ohmic-resistance multiplier
O_P_R = 1  # its variance
O_P_TT = 2  # temperature EKF covariance [[TT, Tq], [Tq, qq]]
O_P_TQ = 3
O_P_QQ = 4
O_THETA_UA = 5  # heat-loss multiplier
O_THETA_S = 6  # scrap-grade multipliers Fe, Cu, Si (block)
O_UA0 = 9  # configured heat-loss coefficient [W/K]
O_SCRAP0 = 10  # configured scrap grade (block)
O_R_MULT0 = 13  # configured ohmic multiplier
O_N_ASSAY = 14  # assays used
N_OBS = 15

# outputs per sample
OUT_U_PRED = 0  # one-step prediction of the interval-mean voltage [V]
OUT_T_PRED = 1  # one-step prediction of the temperature [°C]
OUT_THETA_R = 2
OUT_THETA_UA = 3
OUT_THETA_S = 4  # block Fe, Cu, Si
OUT_POOL_X = 7  # predicted cathode-pool mass fractions (before any assay correction; block)
OUT_ANODE_X = 10  # anode impurity mass fractions incl. sludge (block)
OUT_SLUDGE_KG = 13
OUT_E_DC_PRED_KWH = 14  # cumulative ∫U_pred·I dt [kWh]
OUT_T_EST = 15  # corrected temperature [°C]
OUT_SIGMA_R = 16  # std of θ_R
N_OUT = 17

#: process noise of θ_R per sample (random walk) and of the temperature EKF
Q_R = 1e-3**2
Q_T = 0.3**2
Q_UA = 3e-4**2
#: gains of the assay corrections (log-ratio per assay)
G_POOL = 0.8
G_ANODE = 0.3
G_SCRAP = 0.4
#: floor added to assay ratios [mass fraction] (0.001 %)
ASSAY_EPS = 1e-5


def init_observer(params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Observer state for pots with configured ``params`` ``[n, N_PARAM]``.

    Returns:
        (obs ``[n, N_OBS]``, a copy of ``params`` with noise switched off — the
        observer's model, calibrated in place by ``observe``).
    """
    n = params.shape[0]
    p = np.array(params, dtype=np.float64, copy=True)
    obs = np.zeros((n, N_OBS))
    obs[:, O_THETA_R] = 1.0
    obs[:, O_P_R] = 0.15**2
    obs[:, O_P_TT] = 4.0
    obs[:, O_P_QQ] = 0.3**2
    obs[:, O_THETA_UA] = 1.0
    obs[:, O_THETA_S : O_THETA_S + N_EL] = 1.0
    obs[:, O_UA0] = p[:, P_UA]
    obs[:, O_SCRAP0 : O_SCRAP0 + N_EL] = p[:, P_SCRAP : P_SCRAP + N_EL]
    obs[:, O_R_MULT0] = p[:, P_R_MULT]
    # measurement models use the configured noise levels; the model itself runs noise-free
    obs_noise = p[:, [P_NOISE_U, P_NOISE_T, P_NOISE_IF, P_NOISE_IF_TAU]].copy()
    p[:, P_NOISE_SCRAP] = 0.0
    p[:, P_NOISE_ASSAY] = 0.0
    # keep the voltage/temperature/interface noise levels in the params: they set R
    p[:, [P_NOISE_U, P_NOISE_T, P_NOISE_IF, P_NOISE_IF_TAU]] = obs_noise
    return obs, p


@njit(cache=True)
def _tap_exact(s, m):
    """Remove ``m`` kg of pool metal at the pool's composition (measured tap)."""
    pool = s[S_M_C_AL]
    for e in range(N_EL):
        pool += s[S_M_C + e]
    if pool <= 0.0 or m <= 0.0:
        return
    f = m / pool
    if f > 0.999:
        f = 0.999
    s[S_M_C_AL] *= 1.0 - f
    for e in range(N_EL):
        s[S_M_C + e] *= 1.0 - f


@njit(cache=True)
def observe(
    state, params, obs, t_s, current_a, voltage_v, temp_c, heater_kw, charge_kg, tap_kg, assay, gap, dt_max, out
):
    """Run the observer over recorded samples.

    Data problems: a NaN voltage or temperature skips that sample's correction (the model
    predicts on; the Joule heat uses the model's own voltage); current and heater power
    must be finite (the caller holds the last good value over blanks). An interval marked
    ``gap`` (no data) is integrated with the current before it and the model's own
    heater loop, nothing is corrected on it, it adds nothing to the predicted energy,
    and the temperature restarts from the first measurement after it.

    Args:
        state: ``[n, N_STATE]`` model state at the first sample (updated in place).
        params: ``[n, N_PARAM]`` observer model parameters from ``init_observer``
            (calibrated in place).
        obs: ``[n, N_OBS]`` observer state from ``init_observer`` (updated in place).
        t_s: ``[n, m]`` sample times [s]; current_a, voltage_v: interval means over
            (t[j-1], t[j]] [A], [V]; temp_c: temperature at t[j] [°C]; heater_kw:
            interval-mean heater power [kW].
        charge_kg, tap_kg: ``[n, m]`` scrap charged / metal tapped at t[j] [kg].
        assay: ``[n, m, N_EL]`` assay of the tap at t[j] [mass fraction] (NaN: none).
        gap: ``[n, m]`` > 0.5 where the interval (t[j-1], t[j]] is a data gap.
        dt_max: largest integration sub-step [s].
        out: ``[n, m, N_OUT]`` filled with predictions and estimates per sample.
    """
    n, m = t_s.shape
    liq = np.empty(N_EL)
    x_c = np.empty(N_EL)
    ex = np.zeros(N_EL)
    ones = np.ones(N_EL)
    dummy_rng = np.ones(1, dtype=np.uint64)
    for k in range(n):
        s = state[k]
        p = params[k]
        o = obs[k]
        e_pred = 0.0
        for j in range(m):
            u_pred = voltage_v[k, j]
            t_pred = temp_c[k, j]
            u_ok = voltage_v[k, j] == voltage_v[k, j]
            t_ok = temp_c[k, j] == temp_c[k, j]
            if j == 0:
                if t_ok:
                    s[S_T] = temp_c[k, 0]
                s[S_I] = current_a[k, 0]
            elif gap[k, j] > 0.5:
                # no data over this interval: the model runs on the last current, its own heater loop
                dtot = t_s[k, j] - t_s[k, j - 1]
                nsub = int(math.ceil(dtot / dt_max - 1e-9))
                if nsub < 1:
                    nsub = 1
                dt = dtot / nsub
                if tap_kg[k, j - 1] > 0.0:
                    _tap_exact(s, tap_kg[k, j - 1])
                if charge_kg[k, j - 1] > 0.0:
                    for e in range(N_EL):
                        p[P_SCRAP + e] = o[O_SCRAP0 + e]
                    apply_charge(s, p, dummy_rng, 0, charge_kg[k, j - 1], o[O_THETA_S : O_THETA_S + N_EL])
                s[S_I] = current_a[k, j - 1]
                for _i in range(nsub):
                    pot_step(s, p, dt, 0.0, np.nan, np.nan, 1.0, ones, liq)
                u_pred = np.nan
                t_pred = s[S_T]
                if t_ok:
                    s[S_T] = temp_c[k, j]
                    o[O_P_TT] = 4.0
                    o[O_P_TQ] = 0.0
            else:
                dtot = t_s[k, j] - t_s[k, j - 1]
                if dtot <= 0.0:
                    dtot = 1e-6
                nsub = int(math.ceil(dtot / dt_max - 1e-9))
                if nsub < 1:
                    nsub = 1
                dt = dtot / nsub
                # events logged at the previous sample start this interval
                if tap_kg[k, j - 1] > 0.0:
                    _tap_exact(s, tap_kg[k, j - 1])
                if charge_kg[k, j - 1] > 0.0:
                    for e in range(N_EL):
                        p[P_SCRAP + e] = o[O_SCRAP0 + e]
                    apply_charge(s, p, dummy_rng, 0, charge_kg[k, j - 1], o[O_THETA_S : O_THETA_S + N_EL])
                cur = current_a[k, j]
                s[S_I] = cur
                # ohmic sensitivity at the start of the interval
                m_tot, _sludge, w_al, _ex0, _ex1, _ex2 = anode_phases(s, p, s[S_T], liq)
                x_mol = al_mole_fraction(w_al, liq)
                _u, u_ohm, _ue = cell_voltage(p, s[S_T], cur, s[rf.S_M_EL], w_al, x_mol, 0.0, p[P_R_MULT])
                t0 = s[S_T]
                usum = 0.0
                for _i in range(nsub):
                    usum += pot_step(s, p, dt, 0.0, heater_kw[k, j] * 1000.0, voltage_v[k, j], 1.0, ones, liq)
                u_pred = usum / nsub
                t_pred = s[S_T]
                e_pred += u_pred * cur * dtot / 3.6e6
                # --- voltage: scalar KF on θ_R
                theta = p[P_R_MULT]
                h = u_ohm / theta if theta > 0.0 else 0.0
                if u_ok and cur > 0.05 * p[rf.P_I_MAX_A] and h > 0.0:
                    tau = p[P_NOISE_IF_TAU]
                    avg = 1.0 if dtot <= 0.0 else min(1.0, 2.0 * tau / dtot)
                    r_u = p[P_NOISE_U] ** 2 + (p[P_NOISE_IF] * u_ohm) ** 2 * avg + 1e-6
                    pr = o[O_P_R] + Q_R
                    s_inn = h * h * pr + r_u
                    gain = pr * h / s_inn
                    theta += gain * (voltage_v[k, j] - u_pred)
                    if theta < 0.2:
                        theta = 0.2
                    if theta > 5.0:
                        theta = 5.0
                    o[O_P_R] = (1.0 - gain * h) * pr
                    p[P_R_MULT] = theta
                    o[O_THETA_R] = theta / o[O_R_MULT0] if o[O_R_MULT0] > 0.0 else theta
                # --- temperature: EKF on [T, θ_UA]
                c = p[P_HEAT_CAP]
                ua0 = o[O_UA0]
                f_tt = 1.0 - dtot * p[P_UA] / c
                f_tq = -dtot * ua0 * (0.5 * (t0 + t_pred) - p[P_T_AMB]) / c
                ptt = o[O_P_TT]
                ptq = o[O_P_TQ]
                pqq = o[O_P_QQ]
                q_t = Q_T
                if charge_kg[k, j - 1] > 0.0:
                    q_t += (0.1 * charge_kg[k, j - 1] * p[rf.P_SCRAP_H] / c) ** 2
                n_tt = f_tt * f_tt * ptt + 2.0 * f_tt * f_tq * ptq + f_tq * f_tq * pqq + q_t
                n_tq = f_tt * ptq + f_tq * pqq
                n_qq = pqq + Q_UA
                r_t = p[P_NOISE_T] ** 2 + 1e-4
                s_inn = n_tt + r_t
                k_t = n_tt / s_inn
                k_q = n_tq / s_inn
                if not t_ok:  # blank temperature: predict only
                    k_t = 0.0
                    k_q = 0.0
                inn = temp_c[k, j] - t_pred if t_ok else 0.0
                s[S_T] = t_pred + k_t * inn
                th_ua = o[O_THETA_UA] + k_q * inn
                if th_ua < 0.2:
                    th_ua = 0.2
                if th_ua > 5.0:
                    th_ua = 5.0
                o[O_THETA_UA] = th_ua
                p[P_UA] = ua0 * th_ua
                o[O_P_TT] = (1.0 - k_t) * n_tt
                o[O_P_TQ] = (1.0 - k_t) * n_tq
                o[O_P_QQ] = n_qq - k_q * n_tq
            # --- purity: assay of the tap made at this sample
            pool = cathode_fractions(s, x_c)
            for e in range(N_EL):
                out[k, j, OUT_POOL_X + e] = x_c[e]
            if tap_kg[k, j] > 0.0 and pool > 0.0:
                used = False
                _m, _sl, _w, ex[0], ex[1], ex[2] = anode_phases(s, p, s[S_T], liq)
                for e in range(N_EL):
                    a = assay[k, j, e]
                    if a == a and a >= 0.0:
                        used = True
                        r = math.log((a + ASSAY_EPS) / (x_c[e] + ASSAY_EPS))
                        if r > 1.5:
                            r = 1.5
                        if r < -1.5:
                            r = -1.5
                        s[S_M_C + e] *= math.exp(G_POOL * r)
                        if e != CU:
                            exe = ex[e]
                            if exe > 0.02 * s[S_M_A + e]:
                                # saturated: the sludge (excess) drives the transfer
                                s[S_M_A + e] += exe * (math.exp(G_ANODE * r) - 1.0)
                            else:
                                # dissolved: transfer ∝ anode content; the grade explains it
                                s[S_M_A + e] *= math.exp(G_ANODE * r)
                                xs = p[rf.P_XSAT + e] + p[rf.P_XSAT_DT + e] * (s[S_T] - p[rf.P_XSAT_TREF_C])
                                if liq[e] > 0.9 * xs:
                                    continue  # near saturation the sludge onset blurs the grade signal
                                th = o[O_THETA_S + e] * math.exp(G_SCRAP * r)
                                if th < 0.1:
                                    th = 0.1
                                if th > 10.0:
                                    th = 10.0
                                o[O_THETA_S + e] = th
                if used:
                    o[O_N_ASSAY] += 1.0
            # --- outputs
            out[k, j, OUT_U_PRED] = u_pred
            out[k, j, OUT_T_PRED] = t_pred
            out[k, j, OUT_THETA_R] = o[O_THETA_R]
            out[k, j, OUT_THETA_UA] = o[O_THETA_UA]
            for e in range(N_EL):
                out[k, j, OUT_THETA_S + e] = o[O_THETA_S + e]
            m_tot = s[S_M_A_AL]
            for e in range(N_EL):
                m_tot += s[S_M_A + e]
            for e in range(N_EL):
                out[k, j, OUT_ANODE_X + e] = s[S_M_A + e] / m_tot
            out[k, j, OUT_SLUDGE_KG] = s[S_SLUDGE_KG]
            out[k, j, OUT_E_DC_PRED_KWH] = e_pred
            out[k, j, OUT_T_EST] = s[S_T]
            out[k, j, OUT_SIGMA_R] = math.sqrt(o[O_P_R]) if o[O_P_R] > 0.0 else 0.0


def calibrated_params(params: np.ndarray, obs: np.ndarray) -> np.ndarray:
    """Configured parameter rows with the observer's estimates applied.

    θ_R multiplies the ohmic resistance, θ_UA the heat-loss coefficient, θ_s the
    scrap grade (Fe, Cu, Si). Noise levels are those of ``params``.
    """
    out = np.array(params, dtype=np.float64, copy=True)
    out[:, P_R_MULT] = params[:, P_R_MULT] * obs[:, O_THETA_R]
    out[:, P_UA] = params[:, P_UA] * obs[:, O_THETA_UA]
    out[:, P_SCRAP : P_SCRAP + N_EL] = params[:, P_SCRAP : P_SCRAP + N_EL] * obs[:, O_THETA_S : O_THETA_S + N_EL]
    return out


__all__ = [
    "FE",
    "N_OBS",
    "N_OUT",
    "N_PARAM",
    "N_STATE",
    "OUT_ANODE_X",
    "OUT_E_DC_PRED_KWH",
    "OUT_POOL_X",
    "OUT_SIGMA_R",
    "OUT_SLUDGE_KG",
    "OUT_THETA_R",
    "OUT_THETA_S",
    "OUT_THETA_UA",
    "OUT_T_EST",
    "OUT_T_PRED",
    "OUT_U_PRED",
    "O_THETA_R",
    "O_THETA_S",
    "O_THETA_UA",
    "SI",
    "calibrated_params",
    "init_observer",
    "observe",
]
