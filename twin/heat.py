"""Heat balance of one cell: bath + metal, side ledge with its composition, side wall
and shell, shell heat exchanger (Numba, inlined into the stepping kernels).

Heat paths (docs/domain.md §1.2), per cell at line current I:

- the conductors' Joule heat does not all reach the bath: the external busbar share
  ``I²·R_ext`` is dissipated in the potroom, and a share ``P_ATOP`` of the anode
  assembly's ``I²·R_anode`` leaves through the anode rods and cover. Both scale with
  I², so the top losses follow the heat input (an amperage step changes them at once);
- bath → top through crust and anode cover ``K_top·(T − T_amb)`` and → bottom through
  the cathode and lining ``K_bot·(T − T_amb)``;
- bath → side ledge face at the liquidus ``h·A·(T − T_liq)`` (superheat), the face →
  side wall/shell node through the ledge (``x/(k·A)``) and the lining (``R_wall``), the
  shell → ambient (``R_shell``) and the shell heat exchanger (``P_HE_CMD``, limited to
  ``P_HE_MAX`` extraction or holding back ``P_HE_INSUL`` of the shell's own loss);
- the ledge grows or melts with the imbalance at its face (Stefan). Without a ledge the
  bath meets the lining: ``(T − T_sh)/(1/(h·A) + R_wall)``.

Ledge composition (Thonstad & Rolseth: the ledge is cryolite with entrapped bath): a
share ``P_LEDGE_PHI`` of frozen ledge is bath of the present composition without its
alumina, the rest cryolite; melting returns the ledge's own average composition
(``S_LEDGE_ALF3``). So freezing raises the bath's excess AlF3 less than pure cryolite
would, and freezing and melting conserve every species.

Energy is conserved by construction: with ``H = C_th·T + C_sh·T_sh − ΔH_f·m_ledge`` each
step changes H by (U·I − reaction − losses − anode heating)·dt, all in the accumulators.
"""

from __future__ import annotations

from numba import njit

from twin.bath import LEDGE_DENSITY_KG_M3, LEDGE_FUSION_J_PER_KG
from twin.cell_layout import (
    A_Q_HE,
    A_Q_LOSS,
    O_LEDGE_CM,
    O_Q_HE,
    O_Q_SIDE,
    O_TSHELL,
    P_ATOP,
    P_BATH_TGT,
    P_CSHELL,
    P_CTH,
    P_HBL,
    P_HE_CMD,
    P_HE_INSUL,
    P_HE_MAX,
    P_KBOT,
    P_KLEDGE,
    P_KTOP,
    P_LEDGE_M2,
    P_LEDGE_PHI,
    P_R_ANODE,
    P_R_EXT,
    P_RSHELL,
    P_RWALL,
    P_TAMB,
    S_AL2O3,
    S_ALF3,
    S_CRYO,
    S_LEDGE,
    S_LEDGE_ALF3,
    S_TBATH,
    S_TSHELL,
)

#: the ledge never takes the bath below this share of its nominal mass (the rest of a
#: freezing cell's heat deficit cools the bath below its liquidus: flagged by twin.envelope)
BATH_FREEZE_FLOOR = 0.3
#: ledge below this mass counts as gone (the bath meets the side lining) [kg]
LEDGE_GONE_KG = 1.0


@njit(cache=True, inline="always")
def heat_exchanger_duty(params, k, t_shell):
    """Duty [W] the shell heat exchanger of cell ``k`` delivers at shell temperature
    ``t_shell`` [°C]: the command within its extraction limit and, as insulation, within
    the share of the shell's natural loss it can hold back (0 where none is installed)."""
    if params[k, P_HE_MAX] <= 0.0:
        return 0.0
    q_nat = max(t_shell - params[k, P_TAMB], 0.0) / params[k, P_RSHELL]
    return min(max(params[k, P_HE_CMD], -params[k, P_HE_INSUL] * q_nat), params[k, P_HE_MAX])


@njit(cache=True, inline="always")
def heat_step(k, state, params, out, current, p_elec, p_rxn, q_anode, t_liq, dt):
    """Advance cell ``k``'s heat balance over ``dt`` [s]: bath temperature, ledge (mass and
    AlF3 content, exchanging cryolite and AlF3 with the bath) and shell temperature.

    ``p_elec`` = U·I and ``p_rxn`` the reaction enthalpy [W], ``q_anode`` heat taken by
    new anodes [W], ``t_liq`` the bath liquidus [°C].
    """
    t_c = state[k, S_TBATH]
    t_amb = params[k, P_TAMB]
    t_sh = state[k, S_TSHELL]
    i2 = current * current
    q_ext = i2 * params[k, P_R_EXT]
    q_atop = params[k, P_ATOP] * i2 * params[k, P_R_ANODE]
    q_top = params[k, P_KTOP] * (t_c - t_amb)
    q_bot = params[k, P_KBOT] * (t_c - t_amb)

    a_l = params[k, P_LEDGE_M2]
    h_a = params[k, P_HBL] * a_l
    r_wall = params[k, P_RWALL]
    m_l = state[k, S_LEDGE]
    x_l = m_l / (LEDGE_DENSITY_KG_M3 * a_l)
    q_bl = h_a * (t_c - t_liq)
    q_led = (t_liq - t_sh) / (x_l / (params[k, P_KLEDGE] * a_l) + r_wall)
    resid = 0.0  # interface heat the ledge could not exchange: back to the bath [J]
    if m_l <= LEDGE_GONE_KG and q_bl >= q_led:
        # no ledge: the bath meets the side lining
        q_bath_side = (t_c - t_sh) / (1.0 / h_a + r_wall)
        q_shell_in = q_bath_side
        dm = 0.0
    else:
        q_bath_side = q_bl
        q_shell_in = q_led
        dm = (q_led - q_bl) * dt / LEDGE_FUSION_J_PER_KG
        if dm < -m_l:
            dm = -m_l  # melts away within the step
        bath = state[k, S_AL2O3] + state[k, S_ALF3] + state[k, S_CRYO]
        dm = min(dm, max(bath - BATH_FREEZE_FLOOR * params[k, P_BATH_TGT], 0.0))
        resid = (q_led - q_bl) * dt - LEDGE_FUSION_J_PER_KG * dm
        phi = params[k, P_LEDGE_PHI]
        if dm > 0.0:  # freezing: cryolite plus entrapped bath (without its alumina)
            xs = state[k, S_ALF3] / max(state[k, S_ALF3] + state[k, S_CRYO], 1e-9)
            d_alf3 = min(phi * dm * xs, state[k, S_ALF3])
        elif dm < 0.0:  # melting: the ledge's own average composition comes back
            d_alf3 = dm * state[k, S_LEDGE_ALF3] / m_l if m_l > 0.0 else 0.0
            d_alf3 = max(d_alf3, -state[k, S_LEDGE_ALF3])
        else:
            d_alf3 = 0.0
        state[k, S_ALF3] -= d_alf3
        state[k, S_LEDGE_ALF3] += d_alf3
        state[k, S_CRYO] -= dm - d_alf3
        state[k, S_LEDGE] = m_l + dm

    q_he = heat_exchanger_duty(params, k, t_sh)
    q_nat = (t_sh - t_amb) / params[k, P_RSHELL]
    state[k, S_TSHELL] = t_sh + (q_shell_in - q_nat - q_he) * dt / params[k, P_CSHELL]
    state[k, S_TBATH] = (
        t_c
        + ((p_elec - p_rxn - q_ext - q_atop - q_top - q_bot - q_bath_side - q_anode) * dt - resid) / params[k, P_CTH]
    )
    state[k, A_Q_LOSS] += (q_ext + q_atop + q_top + q_bot + q_nat + q_he) * dt
    state[k, A_Q_HE] += q_he * dt
    out[k, O_Q_HE] = q_he
    out[k, O_Q_SIDE] = q_bath_side
    out[k, O_TSHELL] = state[k, S_TSHELL]
    out[k, O_LEDGE_CM] = 100.0 * state[k, S_LEDGE] / (LEDGE_DENSITY_KG_M3 * a_l)


def steady_side(params_row, t_bath: float, t_liq: float) -> tuple[float, float, float]:
    """Steady side heat flow [W], shell temperature [°C] and ledge thickness [m] of a cell
    whose bath is at ``t_bath`` over a liquidus ``t_liq``, its heat exchanger (if any) at the
    commanded duty."""
    a_l = params_row[P_LEDGE_M2]
    q_s = params_row[P_HBL] * a_l * (t_bath - t_liq)
    q_he = min(max(params_row[P_HE_CMD], 0.0), params_row[P_HE_MAX])  # (an insulating duty: none at start)
    t_sh = params_row[P_TAMB] + (q_s - q_he) * params_row[P_RSHELL]
    r_ledge = (t_liq - t_sh) / max(q_s, 1.0) - params_row[P_RWALL]
    return q_s, t_sh, max(r_ledge, 0.0) * params_row[P_KLEDGE] * a_l
