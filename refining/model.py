"""Three-layer (Hoopes) scrap-refining pots: lumped model as Numba kernels.

Bottom to top a pot holds the anode alloy (Al + ~30 % Cu, the scrap is charged into
it), a fluoride electrolyte and the pure-aluminium cathode pool. Aluminium dissolves
from the anode as Al³⁺ and deposits in the cathode pool; the nobler Fe, Cu and Si stay
behind and accumulate in the anode alloy until they start to reach the cathode metal
(impurity breakthrough) or saturate the alloy. Physics after docs/domain.md §5b and
docs/domain.md ("Scrap-refining prototype pots", seed: RUSAL, Oct 2025):

* Al transfer (Faraday): ``ṁ_Al = CE · 9.3216e-8 kg/(A·s) · I`` (0.33557 kg/kA·h).
* CE: a loss current density (back reaction, electronic conduction) that grows with
  temperature: ``CE = 1 − i_loss·exp(k_T·(T − T_ref))/i``.
* Impurity i to the cathode: ``ṁ_i = ṁ_Al·x_liq,i·(1/β_i + ε) + k_sludge·m_excess,i``
  — electrochemical co-dissolution through the separation factor β_i, droplet
  entrainment ε, and, once the liquid alloy is saturated (x_sat,i(T)), entrainment of
  the intermetallic sludge that forms. Transfer therefore grows as the anode alloy's
  impurities accumulate and jumps once it saturates.
* Voltage (no decomposition term): concentration-cell EMF ``(RT/3F)·ln(1/(γ·x_Al))``
  + Tafel polarisation at both metal/electrolyte interfaces + anode mass-transfer
  polarisation + ohmic ``I·(d/(κ(T)·A) + R_contact)`` with interface waves on d.
* Energy: ``C·dT/dt = U·I + Q_aux − UA·(T − T_amb)``, scrap charges take their
  sensible + melting heat; an auxiliary heater with a local PI loop holds the
  temperature setpoint (a 3 kA pot makes only ~9 kW of Joule heat).
* Cycle end: cathode pool Fe or Si at the P1020 limits (or total purity below the
  minimum) — "breakthrough"; anode sludge fraction at its limit — "saturation";
  anode alloy no longer denser than the electrolyte; temperature out of range; a
  stop request; or, as a last resort, the timer ``max_days``.

Layout (docs/architecture.md "State layout"): state ``[n_pots, N_STATE]``, parameters
``[n_pots, N_PARAM]``, readings ``[n_pots, N_READ]``, all float64 with the named index
constants below; per-pot xorshift64* random streams ``rng[n_pots]`` (uint64), so results
do not depend on how many pots run together. Kernels are ``@njit(cache=True)`` and
loop over pots and sub-steps in compiled code.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol, overload

import numpy as np
from numba import njit

from twin.rng import normal

# --------------------------------------------------------------------------- constants

#: kg of Al per A·s at CE = 1: M_Al/(3F) = 26.9815e-3 / (3 · 96485.33)
AL_KG_PER_AS = 26.9815e-3 / (3.0 * 96485.33212)
#: Faraday production, kg per kA·h at CE = 1 (docs/domain.md: 0.3356)
FARADAY_KG_PER_KAH = AL_KG_PER_AS * 3.6e6
GAS_R = 8.314462618
FARADAY = 96485.33212
KELVIN = 273.15

#: impurity elements tracked (index into the element blocks)
FE, CU, SI = 0, 1, 2
N_EL = 3
ELEMENTS = ("Fe", "Cu", "Si")
#: molar masses [kg/mol] of Fe, Cu, Si and Al
MOLAR_KG = np.array([55.845e-3, 63.546e-3, 28.0855e-3])
MOLAR_AL = 26.9815e-3
#: liquid densities near 800 °C [kg/m³] (Al, then Fe, Cu, Si) for ideal-mixing anode density
RHO_AL_LIQ = 2330.0
RHO_EL_LIQ = np.array([6900.0, 7900.0, 2550.0])

# end reasons (state S_END_REASON)
END_NONE = 0
END_CATHODE_FE = 1
END_CATHODE_SI = 2
END_PURITY = 3
END_ANODE_SATURATED = 4
END_DENSITY = 5
END_THERMAL = 6
END_STOP = 7
END_TIMER = 8
END_REASONS = {
    END_NONE: "running",
    END_CATHODE_FE: "cathode_fe_limit",
    END_CATHODE_SI: "cathode_si_limit",
    END_PURITY: "cathode_purity_limit",
    END_ANODE_SATURATED: "anode_saturated",
    END_DENSITY: "anode_density",
    END_THERMAL: "temperature_out_of_range",
    END_STOP: "stopped_by_controller",
    END_TIMER: "timer",
}
#: end reasons that are an impurity breakthrough / saturation (the physical cycle end)
BREAKTHROUGH_REASONS = frozenset({END_CATHODE_FE, END_CATHODE_SI, END_PURITY, END_ANODE_SATURATED})

# --------------------------------------------------------------------------- params
_p = iter(range(1000))
P_AREA_CM2 = next(_p)  # electrode (anode/electrolyte = electrolyte/cathode) area [cm²]
P_I_MAX_A = next(_p)  # rectifier hardware limit [A]
P_RHO_EL = next(_p)  # electrolyte density [kg/m³]
P_KAPPA_REF = next(_p)  # electrolyte conductivity at P_KAPPA_TREF [S/cm]
P_KAPPA_TREF_C = next(_p)  # [°C]
P_KAPPA_EA_K = next(_p)  # Arrhenius slope of ln κ vs 1/T [K]
P_R_CONTACT = next(_p)  # contacts + collectors + leads [Ω]
P_R_MULT = next(_p)  # multiplier on the whole ohmic resistance (observer calibration) [-]
P_I0_A = next(_p)  # exchange current density, anode interface [A/cm²]
P_I0_C = next(_p)  # exchange current density, cathode interface [A/cm²]
P_ALPHA = next(_p)  # transfer coefficient [-]
P_ILIM = next(_p)  # anode limiting current density at pure Al [A/cm²]
P_GAMMA_AL = next(_p)  # activity coefficient of Al in the anode alloy [-]
P_CE_ILOSS = next(_p)  # loss current density at P_CE_TREF [A/cm²]
P_CE_TCOEF = next(_p)  # relative growth of the loss current per K [1/K]
P_CE_TREF_C = next(_p)  # [°C]
P_BETA = next(_p)  # separation factors β_Fe, β_Cu, β_Si (block of N_EL)
next(_p), next(_p)
P_ENTRAIN = next(_p)  # anode-alloy entrainment, kg alloy per kg Al transferred [-]
P_SLUDGE_K = next(_p)  # sludge (excess) entrainment rate [1/s]
P_XSAT = next(_p)  # solubility in the liquid anode at P_XSAT_TREF, mass fraction (block)
next(_p), next(_p)
P_XSAT_DT = next(_p)  # solubility slope per K (block)
next(_p), next(_p)
P_XSAT_TREF_C = next(_p)
P_SLUDGE_W = next(_p)  # mass fraction of the element in its sludge phase (block)
next(_p), next(_p)
P_HEAT_CAP = next(_p)  # lumped heat capacity [J/K]
P_UA = next(_p)  # heat loss coefficient [W/K]
P_T_AMB = next(_p)  # [°C]
P_Q_AUX_MAX = next(_p)  # heater rating [W]
P_HEATER_KP = next(_p)  # [W/K]
P_HEATER_KI = next(_p)  # [W/(K·s)]
P_SCRAP_H = next(_p)  # heat to bring 1 kg of cold scrap to bath temperature, molten [J/kg]
P_EL_LOSS = next(_p)  # electrolyte volatilisation [kg/s]
P_HEEL_KG = next(_p)  # cathode metal that must stay in the pot after a tap [kg]
P_LIM = next(_p)  # cathode limits Fe, Cu, Si (mass fraction, block)
next(_p), next(_p)
P_PURITY_MIN = next(_p)  # minimum cathode Al mass fraction (P1020: 0.997)
P_SLUDGE_MAX = next(_p)  # sludge mass fraction of the anode at which it is saturated
P_RHO_MARGIN = next(_p)  # anode must stay denser than electrolyte by this [kg/m³]
P_RHO_A_FACTOR = next(_p)  # anode density / ideal-mixing density (Al–Cu contracts on mixing)
P_T_MIN_C = next(_p)  # freeze / shutdown temperature [°C]
P_T_MAX_C = next(_p)  # over-temperature [°C]
P_MAX_S = next(_p)  # timer fallback [s]
P_SCRAP = next(_p)  # scrap grade: Fe, Cu, Si mass fractions (block)
next(_p), next(_p)
P_NOISE_U = next(_p)  # voltage measurement noise, std [V]
P_NOISE_T = next(_p)  # temperature measurement noise, std [K]
P_NOISE_IF = next(_p)  # interface waves: relative std of electrolyte thickness [-]
P_NOISE_IF_TAU = next(_p)  # interface-wave correlation time [s]
P_NOISE_SCRAP = next(_p)  # relative std of each charge's impurity content [-]
P_NOISE_ASSAY = next(_p)  # relative std of a lab assay [-]
N_PARAM = next(_p)
del _p

# --------------------------------------------------------------------------- state
_s = iter(range(1000))
S_T_S = next(_s)  # time since cycle start [s]
S_DONE = next(_s)  # 1 when the cycle has ended
S_END_REASON = next(_s)  # END_* code
S_T_END_S = next(_s)  # time of the cycle end [s]
S_M_A_AL = next(_s)  # anode alloy: Al [kg]
S_M_A = next(_s)  # anode alloy: Fe, Cu, Si incl. sludge [kg] (block)
next(_s), next(_s)
S_M_C_AL = next(_s)  # cathode pool: Al [kg]
S_M_C = next(_s)  # cathode pool: Fe, Cu, Si [kg] (block)
next(_s), next(_s)
S_M_EL = next(_s)  # electrolyte [kg]
S_T = next(_s)  # temperature [°C]
S_I = next(_s)  # current [A]
S_U = next(_s)  # cell voltage [V]
S_CE = next(_s)  # current efficiency [-]
S_Q_AUX = next(_s)  # heater power [W]
S_HEAT_INT = next(_s)  # heater PI integral [K·s]
S_HEATER_SP = next(_s)  # heater setpoint [°C]
S_NOISE_IF = next(_s)  # interface wave state (relative thickness deviation)
S_E_DC = next(_s)  # DC energy [kWh]
S_E_AUX = next(_s)  # heater energy [kWh]
S_AH = next(_s)  # charge passed [A·h]
S_AH_CE = next(_s)  # CE-weighted charge [A·h]
S_TAP_KG = next(_s)  # metal tapped, total [kg]
S_TAP_IMP = next(_s)  # impurities tapped (block) [kg]
next(_s), next(_s)
S_N_TAPS = next(_s)
S_MIN_BATCH_PURITY = next(_s)  # lowest Al fraction of any tapped batch (or the final pool)
S_SCRAP_KG = next(_s)  # scrap charged, total [kg]
S_SCRAP_IMP = next(_s)  # impurities charged (block) [kg]
next(_s), next(_s)
S_M_C0 = next(_s)  # cathode pool at cycle start [kg]
S_M_C0_IMP = next(_s)  # impurities in it (block) [kg]
next(_s), next(_s)
S_ASSAY = next(_s)  # last tap assay, mass fractions (block; NaN before the first tap)
next(_s), next(_s)
S_LAST_TAP_KG = next(_s)  # mass of the tap made at the start of the last advance [kg]
S_INT_T = next(_s)  # interval integrators for the readings: duration [s]
S_INT_U = next(_s)  # ∫U dt
S_INT_I = next(_s)  # ∫I dt
S_INT_Q = next(_s)  # ∫Q_aux dt
S_T_LOW = next(_s)  # lowest temperature seen [°C]
S_T_HIGH = next(_s)  # highest temperature seen [°C]
S_SLUDGE_KG = next(_s)  # sludge in the anode (derived) [kg]
S_RHO_A = next(_s)  # anode alloy density (derived) [kg/m³]
S_I_MAX_SEEN = next(_s)  # highest current [A]
N_STATE = next(_s)
del _s

# --------------------------------------------------------------------------- readings
_r = iter(range(1000))
R_T_S = next(_r)  # time since cycle start [s]
R_I_A = next(_r)  # current, interval mean [A]
R_U_V = next(_r)  # voltage, interval mean + noise [V]
R_T_C = next(_r)  # temperature + noise [°C]
R_Q_AUX_KW = next(_r)  # heater power, interval mean [kW]
R_TAP_KG = next(_r)  # metal weighed out by the tap made at the start of the interval [kg]
R_TAP_TOTAL_KG = next(_r)
R_SCRAP_TOTAL_KG = next(_r)
R_ASSAY = next(_r)  # last tap assay Fe, Cu, Si [mass fraction] (block)
next(_r), next(_r)
R_E_DC_KWH = next(_r)  # DC energy meter [kWh]
R_E_AUX_KWH = next(_r)  # heater energy meter [kWh]
R_DONE = next(_r)
R_END_REASON = next(_r)
N_READ = next(_r)
del _r


# --------------------------------------------------------------------------- random (streams: twin.rng)
def seed_streams(seed: int, pot_ids: np.ndarray | int) -> np.ndarray:
    """Per-pot random states, a pure function of (seed, pot id).

    Args:
        seed: campaign / run seed.
        pot_ids: pot (scenario) identifiers, or a count ``n`` for ids 0..n-1.

    Returns:
        uint64 array, one non-zero state per pot. A pot gets the same stream whatever
        batch it runs in, which is what makes local and distributed runs identical.
    """
    ids = np.arange(pot_ids) if isinstance(pot_ids, (int, np.integer)) else np.asarray(pot_ids)
    out = np.empty(ids.shape[0], dtype=np.uint64)
    for j, pid in enumerate(ids.tolist()):
        st = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(pid)]).generate_state(1, np.uint64)
        out[j] = st[0] if st[0] != 0 else np.uint64(0x9E3779B97F4A7C15)
    return out


# --------------------------------------------------------------------------- physics helpers


@njit(cache=True)
def anode_phases(s, p, t_c, out_liq):
    """Split the anode into saturated liquid and sludge.

    Args:
        s, p: one pot's state and parameter rows.
        t_c: temperature [°C].
        out_liq: [N_EL] filled with the impurity mass fractions of the liquid alloy.

    Returns:
        (total anode mass [kg], sludge mass [kg], Al mass fraction of the liquid,
        excess Fe [kg], excess Cu [kg], excess Si [kg]).
    """
    m_tot = s[S_M_A_AL]
    for e in range(N_EL):
        m_tot += s[S_M_A + e]
    sludge = 0.0
    ex0 = 0.0
    ex1 = 0.0
    ex2 = 0.0
    for e in range(N_EL):
        xs = p[P_XSAT + e] + p[P_XSAT_DT + e] * (t_c - p[P_XSAT_TREF_C])
        if xs < 1e-4:
            xs = 1e-4
        ex = s[S_M_A + e] - xs * m_tot
        if ex < 0.0:
            ex = 0.0
        sludge += ex / p[P_SLUDGE_W + e]
        if e == 0:
            ex0 = ex
        elif e == 1:
            ex1 = ex
        else:
            ex2 = ex
    m_liq = m_tot - sludge
    if m_liq < 1e-9:
        m_liq = 1e-9
    imp = 0.0
    for e in range(N_EL):
        exe = ex0 if e == 0 else (ex1 if e == 1 else ex2)
        x = (s[S_M_A + e] - exe) / m_liq
        out_liq[e] = x
        imp += x
    return m_tot, sludge, 1.0 - imp, ex0, ex1, ex2


@njit(cache=True)
def ideal_anode_density(s):
    """Anode alloy density by ideal mixing of the liquid metals [kg/m³]."""
    m = s[S_M_A_AL]
    v = s[S_M_A_AL] / RHO_AL_LIQ
    for e in range(N_EL):
        m += s[S_M_A + e]
        v += s[S_M_A + e] / RHO_EL_LIQ[e]
    return m / v


@njit(cache=True)
def anode_density(s, p):
    """Anode alloy density [kg/m³]: ideal mixing scaled by the calibrated factor."""
    return ideal_anode_density(s) * p[P_RHO_A_FACTOR]


@njit(cache=True)
def al_mole_fraction(w_al, x_liq):
    """Mole fraction of Al in the liquid anode from mass fractions."""
    n_al = w_al / MOLAR_AL
    n = n_al
    for e in range(N_EL):
        n += x_liq[e] / MOLAR_KG[e]
    return n_al / n


@njit(cache=True)
def cell_voltage(p, t_c, current_a, m_el, w_al_liq, x_al_mol, noise_if, r_mult):
    """Voltage of a refining pot and its parts.

    Args:
        p: parameter row.
        t_c: temperature [°C].
        current_a: [A].
        m_el: electrolyte mass [kg] (sets its thickness over the electrode area).
        w_al_liq, x_al_mol: Al mass and mole fraction of the liquid anode alloy.
        noise_if: relative deviation of the electrolyte thickness (interface waves).
        r_mult: multiplier on the ohmic resistance.

    Returns:
        (U total [V], ohmic part [V], EMF + polarisation part [V]).
    """
    tk = t_c + KELVIN
    area = p[P_AREA_CM2]
    i = current_a / area
    rt3f = GAS_R * tk / (3.0 * FARADAY)
    a_al = p[P_GAMMA_AL] * x_al_mol
    if a_al > 1.0:
        a_al = 1.0
    if a_al < 1e-6:
        a_al = 1e-6
    emf = -rt3f * math.log(a_al)
    b = rt3f / p[P_ALPHA]
    eta = b * math.asinh(i / (2.0 * p[P_I0_A])) + b * math.asinh(i / (2.0 * p[P_I0_C]))
    ilim = p[P_ILIM] * w_al_liq
    ratio = i / ilim if ilim > 0.0 else 0.99
    if ratio > 0.99:
        ratio = 0.99
    eta += -rt3f * math.log(1.0 - ratio)
    d_cm = m_el / (p[P_RHO_EL] * area * 1e-4) * 100.0 * (1.0 + noise_if)
    kappa = p[P_KAPPA_REF] * math.exp(-p[P_KAPPA_EA_K] * (1.0 / tk - 1.0 / (p[P_KAPPA_TREF_C] + KELVIN)))
    r_ohm = (d_cm / (kappa * area) + p[P_R_CONTACT]) * r_mult
    u_ohm = current_a * r_ohm
    return emf + eta + u_ohm, u_ohm, emf + eta


@njit(cache=True)
def current_efficiency(p, t_c, current_a):
    """CE from a temperature-dependent loss current density (0 at zero current)."""
    i = current_a / p[P_AREA_CM2]
    if i <= 0.0:
        return 0.0
    loss = p[P_CE_ILOSS] * math.exp(p[P_CE_TCOEF] * (t_c - p[P_CE_TREF_C]))
    ce = 1.0 - loss / i
    if ce < 0.0:
        return 0.0
    return ce


@njit(cache=True)
def pot_step(s, p, dt, noise_if, q_aux_fixed, u_fixed, ua_mult, tr_mult, liq):
    """Advance one pot by ``dt`` seconds at its present current (explicit Euler).

    Args:
        s, p: the pot's state and parameter rows (state updated in place).
        dt: step [s].
        noise_if: interface-wave thickness deviation to use in this step.
        q_aux_fixed: heater power [W] to use, or NaN to run the local PI loop.
        u_fixed: voltage [V] that sets the Joule heat and DC energy, or NaN to use the
            model's own (the observer feeds the measured voltage).
        ua_mult: multiplier on the heat-loss coefficient.
        tr_mult: [N_EL] multipliers on the electrochemical impurity transfer.
        liq: [N_EL] scratch array.

    Returns:
        voltage [V] of the step.
    """
    t_c = s[S_T]
    cur = s[S_I]
    _m_tot, sludge, w_al, ex0, ex1, ex2 = anode_phases(s, p, t_c, liq)
    x_mol = al_mole_fraction(w_al, liq)
    u, _uo, _ue = cell_voltage(p, t_c, cur, s[S_M_EL], w_al, x_mol, noise_if, p[P_R_MULT])
    ce = current_efficiency(p, t_c, cur)
    mdot_al = ce * AL_KG_PER_AS * cur
    if mdot_al * dt > s[S_M_A_AL]:
        mdot_al = s[S_M_A_AL] / dt
    # impurity transfer
    for e in range(N_EL):
        exe = ex0 if e == 0 else (ex1 if e == 1 else ex2)
        mdot = mdot_al * liq[e] * (1.0 / p[P_BETA + e] + p[P_ENTRAIN]) * tr_mult[e]
        mdot += p[P_SLUDGE_K] * exe
        dm = mdot * dt
        if dm > s[S_M_A + e]:
            dm = s[S_M_A + e]
        s[S_M_A + e] -= dm
        s[S_M_C + e] += dm
    s[S_M_A_AL] -= mdot_al * dt
    s[S_M_C_AL] += mdot_al * dt
    s[S_M_EL] -= p[P_EL_LOSS] * dt
    if s[S_M_EL] < 1e-3:
        s[S_M_EL] = 1e-3
    # energy
    p_el = u * cur if u_fixed != u_fixed else u_fixed * cur
    if q_aux_fixed == q_aux_fixed:  # not NaN: measured heater power (observer)
        q = q_aux_fixed
    else:
        err = s[S_HEATER_SP] - t_c
        q_un = p[P_HEATER_KP] * err + p[P_HEATER_KI] * s[S_HEAT_INT]
        q = q_un
        if q > p[P_Q_AUX_MAX]:
            q = p[P_Q_AUX_MAX]
        if q < 0.0:
            q = 0.0
        # conditional integration (anti-windup)
        if (q_un < p[P_Q_AUX_MAX] or err < 0.0) and (q_un > 0.0 or err > 0.0):
            s[S_HEAT_INT] += err * dt
    q_loss = p[P_UA] * ua_mult * (t_c - p[P_T_AMB])
    s[S_T] = t_c + dt * (p_el + q - q_loss) / p[P_HEAT_CAP]
    # accounting
    s[S_U] = u
    s[S_CE] = ce
    s[S_Q_AUX] = q
    s[S_E_DC] += p_el * dt / 3.6e6
    s[S_E_AUX] += q * dt / 3.6e6
    s[S_AH] += cur * dt / 3600.0
    s[S_AH_CE] += cur * ce * dt / 3600.0
    s[S_INT_T] += dt
    s[S_INT_U] += u * dt
    s[S_INT_I] += cur * dt
    s[S_INT_Q] += q * dt
    s[S_T_S] += dt
    s[S_SLUDGE_KG] = sludge
    if s[S_T] < s[S_T_LOW]:
        s[S_T_LOW] = s[S_T]
    if s[S_T] > s[S_T_HIGH]:
        s[S_T_HIGH] = s[S_T]
    return u


@njit(cache=True)
def cathode_fractions(s, out):
    """Fe, Cu, Si mass fractions of the cathode pool into ``out``; returns pool mass."""
    m = s[S_M_C_AL]
    for e in range(N_EL):
        m += s[S_M_C + e]
    for e in range(N_EL):
        out[e] = s[S_M_C + e] / m if m > 0.0 else 0.0
    return m


@njit(cache=True)
def end_check(s, p, x_c):
    """END_* code if a cycle-end criterion holds now, else END_NONE."""
    m_pool = cathode_fractions(s, x_c)
    if m_pool > 0.0:
        if x_c[FE] >= p[P_LIM + FE]:
            return END_CATHODE_FE
        if x_c[SI] >= p[P_LIM + SI]:
            return END_CATHODE_SI
        if 1.0 - (x_c[FE] + x_c[CU] + x_c[SI]) < p[P_PURITY_MIN] or x_c[CU] >= p[P_LIM + CU]:
            return END_PURITY
    m_a = s[S_M_A_AL] + s[S_M_A + FE] + s[S_M_A + CU] + s[S_M_A + SI]
    if s[S_SLUDGE_KG] >= p[P_SLUDGE_MAX] * m_a:
        return END_ANODE_SATURATED
    rho = anode_density(s, p)
    s[S_RHO_A] = rho
    if rho < p[P_RHO_EL] + p[P_RHO_MARGIN]:
        return END_DENSITY
    if s[S_T] < p[P_T_MIN_C] or s[S_T] > p[P_T_MAX_C]:
        return END_THERMAL
    if s[S_T_S] >= p[P_MAX_S]:
        return END_TIMER
    return END_NONE


@njit(cache=True)
def _finish(s, reason, x_c):
    """Mark the cycle ended; the final pool counts as the last batch for purity."""
    s[S_DONE] = 1.0
    s[S_END_REASON] = reason
    s[S_T_END_S] = s[S_T_S]
    m = cathode_fractions(s, x_c)
    if m > 0.0:
        pur = 1.0 - (x_c[FE] + x_c[CU] + x_c[SI])
        if pur < s[S_MIN_BATCH_PURITY]:
            s[S_MIN_BATCH_PURITY] = pur
    s[S_I] = 0.0


@njit(cache=True)
def apply_tap(s, p, rng, k, tap_kg, x_c):
    """Tap up to ``tap_kg`` of cathode metal, keeping the heel; returns the mass tapped.

    The tapped batch has the pool's composition; the lab assay of it (with relative
    noise) becomes the pot's last assay reading.
    """
    m_pool = cathode_fractions(s, x_c)
    m = tap_kg
    if m > m_pool - p[P_HEEL_KG]:
        m = m_pool - p[P_HEEL_KG]
    if m <= 0.0:
        return 0.0
    f = m / m_pool
    s[S_M_C_AL] -= f * s[S_M_C_AL]
    pur = 1.0
    for e in range(N_EL):
        dm = f * s[S_M_C + e]
        s[S_M_C + e] -= dm
        s[S_TAP_IMP + e] += dm
        pur -= x_c[e]
        noise = 1.0 + p[P_NOISE_ASSAY] * normal(rng, k)
        if noise < 0.0:
            noise = 0.0
        s[S_ASSAY + e] = x_c[e] * noise
    s[S_TAP_KG] += m
    s[S_N_TAPS] += 1.0
    if pur < s[S_MIN_BATCH_PURITY]:
        s[S_MIN_BATCH_PURITY] = pur
    return m


@njit(cache=True)
def apply_charge(s, p, rng, k, charge_kg, grade_mult):
    """Charge ``charge_kg`` of cold scrap into the anode alloy.

    Each charge's impurity content scatters around the grade (relative noise); the
    heat to warm and melt it is taken from the pot at once.
    """
    if charge_kg <= 0.0:
        return
    imp = 0.0
    for e in range(N_EL):
        x = p[P_SCRAP + e] * grade_mult[e]
        if p[P_NOISE_SCRAP] > 0.0:
            x *= 1.0 + p[P_NOISE_SCRAP] * normal(rng, k)
        if x < 0.0:
            x = 0.0
        dm = charge_kg * x
        s[S_M_A + e] += dm
        s[S_SCRAP_IMP + e] += dm
        imp += x
    if imp > 1.0:
        imp = 1.0
    s[S_M_A_AL] += charge_kg * (1.0 - imp)
    s[S_SCRAP_KG] += charge_kg
    s[S_T] -= charge_kg * p[P_SCRAP_H] / p[P_HEAT_CAP]


@njit(cache=True)
def fill_readings(s, p, rng, k, read):
    """PLC-visible readings of pot ``k`` from its interval integrators (then reset)."""
    tint = s[S_INT_T]
    read[k, R_T_S] = s[S_T_S]
    if tint > 0.0:
        read[k, R_I_A] = s[S_INT_I] / tint
        read[k, R_U_V] = s[S_INT_U] / tint + p[P_NOISE_U] * normal(rng, k)
        read[k, R_Q_AUX_KW] = s[S_INT_Q] / tint / 1000.0
    else:
        read[k, R_I_A] = s[S_I]
        read[k, R_U_V] = s[S_U]
        read[k, R_Q_AUX_KW] = s[S_Q_AUX] / 1000.0
    read[k, R_T_C] = s[S_T] + p[P_NOISE_T] * normal(rng, k)
    read[k, R_TAP_KG] = s[S_LAST_TAP_KG]
    read[k, R_TAP_TOTAL_KG] = s[S_TAP_KG]
    read[k, R_SCRAP_TOTAL_KG] = s[S_SCRAP_KG]
    for e in range(N_EL):
        read[k, R_ASSAY + e] = s[S_ASSAY + e]
    read[k, R_E_DC_KWH] = s[S_E_DC]
    read[k, R_E_AUX_KWH] = s[S_E_AUX]
    read[k, R_DONE] = s[S_DONE]
    read[k, R_END_REASON] = s[S_END_REASON]
    s[S_INT_T] = 0.0
    s[S_INT_U] = 0.0
    s[S_INT_I] = 0.0
    s[S_INT_Q] = 0.0


# --------------------------------------------------------------------------- kernels


@njit(cache=True)
def advance(state, params, rng, current_sp, heater_sp, charge_kg, tap_kg, stop, dt, n_steps, read):
    """Advance every running pot by ``n_steps`` sub-steps of ``dt`` seconds.

    Inputs (one value per pot, held over the whole interval): current setpoint [A]
    (clamped to 0..P_I_MAX_A by the rectifier), heater setpoint [°C], scrap to charge and
    metal to tap at the start of the interval [kg], and a stop request (> 0.5). The
    cycle-end criteria are checked after every sub-step; an ended pot is frozen.
    ``read[n_pots, N_READ]`` receives the readings at the end of the interval.
    """
    n = state.shape[0]
    liq = np.empty(N_EL)
    x_c = np.empty(N_EL)
    ones = np.ones(N_EL)
    for k in range(n):
        s = state[k]
        p = params[k]
        s[S_LAST_TAP_KG] = 0.0
        if s[S_DONE] < 0.5:
            if stop[k] > 0.5:
                _finish(s, END_STOP, x_c)
            else:
                if tap_kg[k] > 0.0:
                    s[S_LAST_TAP_KG] = apply_tap(s, p, rng, k, tap_kg[k], x_c)
                apply_charge(s, p, rng, k, charge_kg[k], ones)
                cur = current_sp[k]
                if cur > p[P_I_MAX_A]:
                    cur = p[P_I_MAX_A]
                if cur < 0.0:
                    cur = 0.0
                s[S_I] = cur
                if cur > s[S_I_MAX_SEEN]:
                    s[S_I_MAX_SEEN] = cur
                s[S_HEATER_SP] = heater_sp[k]
                a = math.exp(-dt / p[P_NOISE_IF_TAU]) if p[P_NOISE_IF_TAU] > 0.0 else 0.0
                b = p[P_NOISE_IF] * math.sqrt(1.0 - a * a)
                for _j in range(n_steps):
                    if b > 0.0:
                        s[S_NOISE_IF] = s[S_NOISE_IF] * a + b * normal(rng, k)
                    pot_step(s, p, dt, s[S_NOISE_IF], np.nan, np.nan, 1.0, ones, liq)
                    reason = end_check(s, p, x_c)
                    if reason != END_NONE:
                        _finish(s, reason, x_c)
                        break
        fill_readings(s, p, rng, k, read)


# --------------------------------------------------------------------------- Python side


@dataclass(slots=True)
class PotReadings:
    """What a refining pot's PLC and lab expose, one array element per pot.

    Attributes:
        t_s: time since the cycle started [s].
        current_a: current, mean over the last interval [A].
        voltage_v: pot voltage, mean over the last interval [V].
        temperature_c: temperature (thermocouple) [°C].
        heater_kw: auxiliary heater power, mean over the last interval [kW].
        tap_kg: metal weighed out by the tap at the start of the last interval [kg].
        tapped_total_kg: metal tapped since the cycle started [kg].
        scrap_total_kg: scrap charged since the cycle started [kg].
        assay_fe, assay_cu, assay_si: lab assay of the last tapped batch [mass fraction]
            (NaN before the first tap).
        e_dc_kwh, e_aux_kwh: DC and heater energy meters [kWh].
        done: the cycle has ended (the pot is stopped).
        end_reason: END_* code (0 while running).
    """

    t_s: np.ndarray
    current_a: np.ndarray
    voltage_v: np.ndarray
    temperature_c: np.ndarray
    heater_kw: np.ndarray
    tap_kg: np.ndarray
    tapped_total_kg: np.ndarray
    scrap_total_kg: np.ndarray
    assay_fe: np.ndarray
    assay_cu: np.ndarray
    assay_si: np.ndarray
    e_dc_kwh: np.ndarray
    e_aux_kwh: np.ndarray
    done: np.ndarray
    end_reason: np.ndarray

    @classmethod
    def from_array(cls, read: np.ndarray) -> PotReadings:
        """Views on the columns of a ``[n_pots, N_READ]`` readings array."""
        return cls(
            t_s=read[:, R_T_S],
            current_a=read[:, R_I_A],
            voltage_v=read[:, R_U_V],
            temperature_c=read[:, R_T_C],
            heater_kw=read[:, R_Q_AUX_KW],
            tap_kg=read[:, R_TAP_KG],
            tapped_total_kg=read[:, R_TAP_TOTAL_KG],
            scrap_total_kg=read[:, R_SCRAP_TOTAL_KG],
            assay_fe=read[:, R_ASSAY + FE],
            assay_cu=read[:, R_ASSAY + CU],
            assay_si=read[:, R_ASSAY + SI],
            e_dc_kwh=read[:, R_E_DC_KWH],
            e_aux_kwh=read[:, R_E_AUX_KWH],
            done=read[:, R_DONE] > 0.5,
            end_reason=read[:, R_END_REASON].astype(np.int64),
        )


@dataclass(slots=True)
class PotInputs:
    """What a controller may ask of refining pots, one array element per pot.

    Attributes:
        current_sp_a: current setpoint for the rectifier [A].
        heater_sp_c: auxiliary-heater temperature setpoint [°C].
        charge_kg: scrap to charge now [kg].
        tap_kg: metal to tap now [kg] (the pot keeps its heel).
        stop: end the cycle now.
    """

    current_sp_a: np.ndarray
    heater_sp_c: np.ndarray
    charge_kg: np.ndarray
    tap_kg: np.ndarray
    stop: np.ndarray

    @classmethod
    def hold(cls, n: int, current_a: float | np.ndarray = 0.0, heater_c: float | np.ndarray = 800.0) -> PotInputs:
        """Inputs that hold current and heater setpoints and do nothing else."""
        return cls(
            current_sp_a=np.broadcast_to(np.asarray(current_a, dtype=float), (n,)).copy(),
            heater_sp_c=np.broadcast_to(np.asarray(heater_c, dtype=float), (n,)).copy(),
            charge_kg=np.zeros(n),
            tap_kg=np.zeros(n),
            stop=np.zeros(n, dtype=bool),
        )


class PotPolicy(Protocol):
    """A refining-pot controller: pure and synchronous (sans-I/O)."""

    def step(self, readings: PotReadings, now_s: float) -> PotInputs:
        """Commands for every pot from this scan's readings at time ``now_s`` [s]."""
        ...


class RefiningPots:
    """A batch of refining pots: state, parameters and random streams.

    Args:
        params: ``[n, N_PARAM]`` parameter rows (see ``refining.config``).
        state: ``[n, N_STATE]`` initial state rows (copied).
        rng: ``[n]`` uint64 random states (copied), from ``seed_streams``.
        dt_s: integration sub-step [s].
    """

    def __init__(self, params: np.ndarray, state: np.ndarray, rng: np.ndarray, dt_s: float = 60.0) -> None:
        if params.ndim != 2 or params.shape[1] != N_PARAM:
            raise ValueError(f"params must be [n, {N_PARAM}], got {params.shape}")
        if state.shape != (params.shape[0], N_STATE):
            raise ValueError(f"state must be [{params.shape[0]}, {N_STATE}], got {state.shape}")
        if dt_s <= 0:
            raise ValueError(f"dt_s must be > 0, got {dt_s}")
        self.params = np.ascontiguousarray(params, dtype=np.float64)
        self.state = np.array(state, dtype=np.float64, order="C")
        self.rng = np.array(rng, dtype=np.uint64)
        if self.rng.shape != (params.shape[0],):
            raise ValueError(f"rng must have {params.shape[0]} states, got {self.rng.shape}")
        self.dt_s = float(dt_s)
        self.read = np.zeros((self.n, N_READ))
        x_c = np.empty(N_EL)
        for k in range(self.n):
            end_check(self.state[k], self.params[k], x_c)  # derived fields (density)
            fill_readings(self.state[k], self.params[k], self.rng, k, self.read)
        self._readings = PotReadings.from_array(self.read)

    @property
    def n(self) -> int:
        return int(self.params.shape[0])

    def readings(self) -> PotReadings:
        """The latest readings: views on ``read``, updated in place by ``advance``."""
        r = self._readings
        np.greater(self.read[:, R_DONE], 0.5, out=r.done)
        r.end_reason[:] = self.read[:, R_END_REASON]
        return r

    def advance(self, inputs: PotInputs, duration_s: float) -> PotReadings:
        """Apply ``inputs`` and run ``duration_s`` seconds (whole sub-steps)."""
        n_steps = max(1, int(round(duration_s / self.dt_s)))
        dt = duration_s / n_steps
        n = self.n

        def arr(x) -> np.ndarray:
            a = np.asarray(x, dtype=np.float64)
            if a.shape != (n,):
                a = np.broadcast_to(a, (n,))
            return np.ascontiguousarray(a)

        advance(
            self.state,
            self.params,
            self.rng,
            arr(inputs.current_sp_a),
            arr(inputs.heater_sp_c),
            arr(inputs.charge_kg),
            arr(inputs.tap_kg),
            arr(inputs.stop),
            dt,
            n_steps,
            self.read,
        )
        return self.readings()

    @property
    def done(self) -> np.ndarray:
        return self.state[:, S_DONE] > 0.5

    def summary(self) -> dict[str, np.ndarray]:
        """Per-pot cycle results (arrays), computed from the state.

        Keys: days, end_reason (code), production_kg (net cathode metal made),
        kg_per_day, al_faraday_kg (0.33557·∫I·CE dt), purity_avg_pct (net production,
        mass-weighted), purity_min_pct (worst tapped batch or final pool),
        dc_kwh_per_kg, total_kwh_per_kg (DC + heater), u_avg_v (∫UI/∫I), ce_avg,
        i_avg_a, t_low_c, t_high_c, scrap_kg, n_taps, anode_fe/cu/si_pct (end),
        cathode_fe/cu/si_pct (final pool), sludge_kg.
        """
        s = self.state
        days = s[:, S_T_S] / 86400.0
        pool = s[:, S_M_C_AL] + s[:, S_M_C : S_M_C + N_EL].sum(axis=1)
        pool_imp = s[:, S_M_C : S_M_C + N_EL]
        made = s[:, S_TAP_KG] + pool - s[:, S_M_C0]
        imp_made = s[:, S_TAP_IMP : S_TAP_IMP + N_EL] + pool_imp - s[:, S_M_C0_IMP : S_M_C0_IMP + N_EL]
        with np.errstate(divide="ignore", invalid="ignore"):
            m_a = s[:, S_M_A_AL] + s[:, S_M_A : S_M_A + N_EL].sum(axis=1)
            out = {
                "days": days,
                "end_reason": s[:, S_END_REASON].astype(np.int64),
                "production_kg": made,
                "kg_per_day": made / days,
                "al_faraday_kg": FARADAY_KG_PER_KAH * s[:, S_AH_CE] / 1000.0,
                "purity_avg_pct": 100.0 * (1.0 - imp_made.sum(axis=1) / made),
                "purity_min_pct": 100.0 * s[:, S_MIN_BATCH_PURITY],
                "dc_kwh_per_kg": s[:, S_E_DC] / made,
                "total_kwh_per_kg": (s[:, S_E_DC] + s[:, S_E_AUX]) / made,
                "u_avg_v": 1000.0 * s[:, S_E_DC] / s[:, S_AH],
                "ce_avg": s[:, S_AH_CE] / s[:, S_AH],
                "i_avg_a": s[:, S_AH] / (s[:, S_T_S] / 3600.0),
                "t_low_c": s[:, S_T_LOW],
                "t_high_c": s[:, S_T_HIGH],
                "scrap_kg": s[:, S_SCRAP_KG],
                "n_taps": s[:, S_N_TAPS],
                "sludge_kg": s[:, S_SLUDGE_KG],
            }
            for e, name in enumerate(ELEMENTS):
                out[f"anode_{name.lower()}_pct"] = 100.0 * s[:, S_M_A + e] / m_a
                out[f"cathode_{name.lower()}_pct"] = 100.0 * pool_imp[:, e] / pool
        return out


@dataclass(slots=True)
class ClosedLoopRecord:
    """Time series of one closed-loop run, one row per control period (pot-major).

    ``readings[n_pots, n_rows, N_READ]`` are the readings at each scan and
    ``inputs[n_pots, n_rows, 5]`` the commands issued at that scan (current setpoint,
    heater setpoint, charge kg, tap kg, stop). Row 0 is the scan before the first command.
    """

    readings: np.ndarray
    inputs: np.ndarray


INPUT_COLUMNS = ("current_sp_a", "heater_sp_c", "charge_kg", "tap_kg", "stop")


@overload
def run_closed_loop(
    pots: RefiningPots,
    policy: PotPolicy,
    control_period_s: float,
    max_days: float | None = None,
    *,
    record: Literal[True],
    on_period: Callable[[float, RefiningPots], object] | None = None,
) -> ClosedLoopRecord: ...
@overload
def run_closed_loop(
    pots: RefiningPots,
    policy: PotPolicy,
    control_period_s: float,
    max_days: float | None = None,
    record: Literal[False] = False,
    on_period: Callable[[float, RefiningPots], object] | None = None,
) -> None: ...
@overload
def run_closed_loop(
    pots: RefiningPots,
    policy: PotPolicy,
    control_period_s: float,
    max_days: float | None = None,
    record: bool = False,
    on_period: Callable[[float, RefiningPots], object] | None = None,
) -> ClosedLoopRecord | None: ...
def run_closed_loop(
    pots: RefiningPots,
    policy: PotPolicy,
    control_period_s: float,
    max_days: float | None = None,
    record: bool = False,
    on_period: Callable[[float, RefiningPots], object] | None = None,
) -> ClosedLoopRecord | None:
    """Run pots under a controller until every cycle has ended.

    The controller sees only ``PotReadings`` and returns ``PotInputs`` each
    ``control_period_s``; the kernel integrates with the pots' ``dt_s`` in between.

    Args:
        pots: the pots (the plant); advanced in place.
        policy: any object with ``step(readings, now_s) -> PotInputs``.
        control_period_s: controller scan period [s].
        max_days: stop the loop after this many days even if pots still run (their
            own timer ``P_MAX_S`` normally ends them first).
        record: keep every scan's readings and inputs (memory: n_pots × rows × 20).
        on_period: optional callback ``f(t_s, pots)`` after each period (progress).

    Returns:
        the record when ``record`` is set, else None.
    """
    limit_s = (max_days if max_days is not None else float(np.max(pots.params[:, P_MAX_S])) / 86400.0 + 1.0) * 86400.0
    rows_r: list[np.ndarray] = []
    rows_i: list[np.ndarray] = []
    t = 0.0
    readings = pots.readings()
    while True:
        cmd = policy.step(readings, t)
        if record:
            rows_r.append(pots.read.copy())
            rows_i.append(
                np.stack(
                    [
                        np.asarray(cmd.current_sp_a, dtype=float),
                        np.asarray(cmd.heater_sp_c, dtype=float),
                        np.asarray(cmd.charge_kg, dtype=float),
                        np.asarray(cmd.tap_kg, dtype=float),
                        np.asarray(cmd.stop, dtype=float),
                    ],
                    axis=1,
                )
            )
        if pots.done.all() or t >= limit_s:
            break
        readings = pots.advance(cmd, control_period_s)
        t += control_period_s
        if on_period is not None:
            on_period(t, pots)
    if not record:
        return None
    return ClosedLoopRecord(readings=np.stack(rows_r, axis=1), inputs=np.stack(rows_i, axis=1))
