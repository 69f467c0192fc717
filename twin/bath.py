"""Bath chemistry and electrochemistry of a Hall-Héroult cell (scalar Numba functions).

Equations (docs/domain.md §1.2–1.4), with units:
- liquidus: Solheim et al. (1996) [°C] from wt % AlF3, CaF2, Al2O3;
- alumina saturation: Skybakmoen (1997) [wt %];
- alumina activity: RTA/Haupin polynomial in C/C_sat;
- bath conductivity: Wang-type regression ln κ [S/cm];
- voltage components after Haupin (1998), "Interpreting the components of cell voltage",
  bubble coverage as in Lundby et al.'s simulator (no 0.9 factor), its alumina term
  anchored at the AE onset (the coverage reaches ``PHI_MAX`` at the critical concentration);
- current efficiency: Dewing (1991) log10(100 − CE) = 0.0095 ΔT_sh − 0.019 AlF3 + c.

All functions are ``@njit(cache=True)`` so kernels in ``twin.cell`` inline them.
"""

from __future__ import annotations

import math

from numba import njit

R_GAS = 8.314462618  # J/(mol K)
FARADAY = 96485.33212  # C/mol
#: kg Al per A·s at 100 % CE (M_Al / 3F)
AL_KG_PER_AS = 26.9815385e-3 / (3.0 * FARADAY)
#: kg Al2O3 per A·s at 100 % CE (M_Al2O3 / 6F)
AL2O3_KG_PER_AS = 101.9613e-3 / (6.0 * FARADAY)
#: reaction enthalpy voltage equivalent incl. heating of reactants [V] (6.34 kWh/kg / 2.98)
U_REACTION_V = 2.128
#: heat of fusion of cryolite [J/kg] (≈ 107–120 kJ/mol / 0.21 kg/mol)
LEDGE_FUSION_J_PER_KG = 0.53e6
LEDGE_DENSITY_KG_M3 = 2790.0
ALUMINIUM_DENSITY_KG_M3 = 2300.0
ANODE_DENSITY_KG_M3 = 1550.0
#: bulk Al2O3 of the coverage's alumina term in Haupin's RTA form [wt %] (kept for reference:
#: the twin anchors the term at each cell's own critical concentration, ``BUBBLE_AE_OFFSET``)
C_AE_HAUPIN = 1.8
#: the coverage term's C_AE lies this far below the AE onset concentration [wt %], so the
#: coverage reaches ``PHI_MAX`` at the onset (at 0.86 A/cm², BR 1.2) [DER]
BUBBLE_AE_OFFSET = 0.04
#: largest bubble coverage short of a gas film (the AE itself is the film, ``twin.cell``)
PHI_MAX = 0.9
#: Haupin's RTA form of the coverage (the twin before issue 13, kept as a structural plant
#: variant): coverage × 0.9, alumina term at a fixed ``C_AE_HAUPIN``, capped at 0.75
PHI_SCALE_HAUPIN = 0.9
PHI_MAX_HAUPIN = 0.75
LN10 = math.log(10.0)
#: ln of the exchange current density prefactor 0.0029 A/cm² (Haupin: i_r = 0.0029·c^0.56)
LN_I_R0 = math.log(0.0029)


@njit(cache=True)
def liquidus_c(alf3: float, caf2: float, al2o3: float) -> float:
    """Bath liquidus [°C] (Solheim et al. 1996) from wt % excess AlF3, CaF2 and Al2O3."""
    ca = caf2 * alf3
    t = 1011.0 + 0.50 * alf3 - 0.13 * alf3**2.2
    t += -3.45 * caf2 / (1.0 + 0.0173 * caf2) + 0.124 * ca - 0.00542 * ca * math.sqrt(ca)
    t -= 7.93 * al2o3 / (1.0 + 0.0936 * al2o3 - 0.0017 * al2o3 * al2o3 - 0.0023 * alf3 * al2o3)
    return t


@njit(cache=True)
def alumina_saturation_wt(t_c: float, alf3: float, caf2: float) -> float:
    """Al2O3 solubility [wt %] (Skybakmoen 1997), bath at ``t_c`` °C, no LiF/MgF2."""
    a = 11.9 - 0.062 * alf3 - 0.0031 * alf3 * alf3 - 0.2 * caf2
    b = 4.8 - 0.048 * alf3
    return a * (t_c / 1000.0) ** b


@njit(cache=True)
def alumina_activity(c: float, c_sat: float) -> float:
    """Activity of Al2O3 (reference: saturated bath) from the RTA/Haupin polynomial."""
    r = min(max(c / c_sat, 1e-4), 1.0)
    a = -0.03791 * r + 2.364 * r * r - 2.194 * r**3 + 0.8686 * r**4
    return max(a, 1e-6)


@njit(cache=True)
def conductivity_s_cm(t_k: float, al2o3: float, alf3: float, caf2: float) -> float:
    """Bath conductivity κ [S/cm], Wang-type regression (≈ 2.15 S/cm at 3/11/5 %, 960 °C)."""
    return math.exp(1.977 - 0.0200 * al2o3 - 0.0131 * alf3 - 0.0060 * caf2 - 1204.3 / t_k)


@njit(cache=True)
def bath_ratio(alf3: float, al2o3: float, caf2: float) -> float:
    """NaF/AlF3 mass ratio from wt % excess AlF3 (cryolite BR = 1.5)."""
    x = alf3 / max(100.0 - al2o3 - caf2, 1.0)
    return (1.0 - x) / (2.0 / 3.0 + x)


@njit(cache=True)
def anode_size_factor(single_anode_cm2: float) -> float:
    """A_anode^-0.1 of the critical current density, from one anode's area [cm²]."""
    return single_anode_cm2**-0.1


@njit(cache=True)
def critical_current_density(t_k: float, c: float, size_factor: float) -> float:
    """Critical anode current density i_c [A/cm²] (Grjotheim & Welch 1988) at wt % Al2O3 ``c``;
    ``size_factor`` = ``anode_size_factor(single anode area)``."""
    root = math.sqrt(max(c, 0.0)) - 0.4
    return max((5.5 + 0.018 * (t_k - 1323.0)) * size_factor * root, 1e-6)


@njit(cache=True)
def current_efficiency(superheat_k: float, alf3: float, ce_const: float, acd_cm: float) -> float:
    """Current efficiency [-]: Dewing (1991) with a penalty below 4 cm ACD [EST]."""
    loss = math.exp(LN10 * (0.0095 * superheat_k - 0.019 * alf3 + ce_const))  # % loss: 10**(...)
    if acd_cm < 4.0:
        loss *= 1.0 + 0.6 * (4.0 - acd_cm)
    return min(max(1.0 - loss / 100.0, 0.5), 0.995)


@njit(cache=True)
def voltage_components(
    current_a: float,
    t_c: float,
    al2o3: float,
    alf3: float,
    caf2: float,
    acd_cm: float,
    anode_cm2: float,
    size_factor: float,
    area_factor: float,
    cathode_cm2: float,
    kappa_factor: float,
    r_conductors_ohm: float,
    c_ae: float,
    phi_scale: float = 1.0,
    phi_max: float = PHI_MAX,
):
    """Haupin voltage breakdown of one cell at ``current_a``; ``c_ae`` [wt %] is the bulk
    alumina of the bubble coverage's alumina term (the cell's AE onset − ``BUBBLE_AE_OFFSET``).
    ``phi_scale`` multiplies the coverage and ``phi_max`` caps it (1.0, ``PHI_MAX``: Lundby et
    al.'s form; 0.9, 0.75 with ``c_ae = C_AE_HAUPIN``: Haupin's RTA form, the structural plant
    variant ``CellParams.bubble_model = "haupin_capped"``).

    Returns ``(e_rev, eta_sa, eta_ca, eta_cc, u_bath, u_bubble, u_cond, r_ohm, kappa, i_dens,
    c_sat)`` in V (r_ohm in Ω, kappa in S/cm, i_dens in A/cm², c_sat in wt %). ``r_ohm`` is the ohmic part
    (bath + bubble layer + conductors), so the cell is ``U = E + r_ohm·I`` with
    ``E = e_rev + eta_sa + eta_ca + eta_cc`` for the circuit solution. ``size_factor`` is
    ``anode_size_factor(one anode's area in cm²)``.
    """
    t_k = t_c + 273.15
    i = max(current_a, 1.0) / anode_cm2
    c = max(al2o3, 0.05)
    c_sat = alumina_saturation_wt(t_c, alf3, caf2)
    act = alumina_activity(c, c_sat)
    e_rev = 1.896 - 0.000572 * t_k - (R_GAS * t_k / (6.0 * FARADAY)) * math.log(act)  # ln(1/a²)
    # ln(i / i_r) with the exchange current density i_r = 0.0029·c^0.56 [A/cm²]
    eta_sa = (t_k / 12533.0) * max(math.log(i) - LN_I_R0 - 0.56 * math.log(c), 0.0)
    i_c = critical_current_density(t_k, c, size_factor)
    if i_c > 1.02 * i:
        eta_ca = (t_k / 23209.0) * math.log(i_c / (i_c - i))
    else:
        eta_ca = (t_k / 23209.0) * math.log(51.0)
    br = bath_ratio(alf3, c, caf2)
    i_cath = max(current_a, 1.0) / cathode_cm2
    eta_cc = 5.745e-5 * t_k * (1.375 - 0.25 * br) * math.log(max(i_cath / 0.257, 1.0))
    kappa = kappa_factor * conductivity_s_cm(t_k, c, alf3, caf2)
    a_eff = area_factor * anode_cm2
    d_b = (0.5517 + i) / (1.0 + 2.167 * i)
    dc = max(c - c_ae, -0.05)
    phi = phi_scale * (
        0.509
        + 0.1823 * i
        - 0.1723 * i * i
        + 0.05504 * i**3
        + (0.4322 - 0.3781 * br) / (1.0 + 1.637 * br)
        + (0.431 - 0.1437 * dc) / (1.0 + 7.353 * dc)
    )
    phi = min(max(phi, 0.0), phi_max)
    r_bath = max(acd_cm - d_b, 0.1) / (kappa * a_eff)
    r_bub = d_b * phi / (kappa * a_eff * (1.0 - phi))
    r_ohm = r_bath + r_bub + r_conductors_ohm
    return (
        e_rev,
        eta_sa,
        eta_ca,
        eta_cc,
        current_a * r_bath,
        current_a * r_bub,
        current_a * r_conductors_ohm,
        r_ohm,
        kappa,
        i,
        c_sat,
    )
