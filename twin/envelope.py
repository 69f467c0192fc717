"""Validity envelope of the cell model: where its equations hold, as per-cell flags.

The lumped cell model is built from correlations fitted over industrial bath and cell
conditions (docs/domain.md §1): Solheim's liquidus, Skybakmoen's solubility, the Wang
conductivity, Dewing's current efficiency, a Stefan side ledge that exists. Outside
those ranges the model still closes its balances, but its numbers mean little. Every
sub-step each cell gets a bit mask of the limits it is past (``O_FLAGS``), the union
since start (``S_FLAGS_EVER``) and the time spent outside (``A_INVALID_S``), so a run
never drifts silently to an unphysical state.

Limits (and why):

=============  ====================================  ==========================================
flag           out of range when                      reason
=============  ====================================  ==========================================
SUPERHEAT      superheat < 0 K or > 25 K             Dewing CE fitted for ~3–20 K; no ledge
                                                     model below the liquidus
TEMPERATURE    bath < 920 °C or > 1010 °C            conductivity/solubility fits ~940–1000 °C
ALF3           excess AlF3 < 4 or > 16 wt %          Solheim liquidus, CE fits (industrial bath)
ALUMINA        Al2O3 > saturation − 0.2 wt %          sludge forms; no two-pool model above
BATH_MASS      bath < 60 % or > 150 % of nominal     cell geometry (bath height) assumed
LEDGE          ledge < 1 cm or > 30 cm               side lining exposed / cell freezing up
ACD            ACD < 2 cm or > 10 cm                 shorting / anodes near the bath surface
CE_CLIPPED     Dewing CE outside 0.80–0.99           the CE correlation is clipped there
=============  ====================================  ==========================================

An anode effect itself is not a flag (the model describes it); alumina below the critical
level is the AE.
"""

from __future__ import annotations

from numba import njit

F_SUPERHEAT = 1
F_TEMPERATURE = 2
F_ALF3 = 4
F_ALUMINA = 8
F_BATH_MASS = 16
F_LEDGE = 32
F_ACD = 64
F_CE = 128

#: flag bit -> name (truth(), summaries)
FLAG_NAMES = {
    F_SUPERHEAT: "superheat",
    F_TEMPERATURE: "temperature",
    F_ALF3: "alf3",
    F_ALUMINA: "alumina_saturated",
    F_BATH_MASS: "bath_mass",
    F_LEDGE: "ledge",
    F_ACD: "acd",
    F_CE: "ce_clipped",
}

SUPERHEAT_MIN_K, SUPERHEAT_MAX_K = 0.0, 25.0
TEMP_MIN_C, TEMP_MAX_C = 920.0, 1010.0
ALF3_MIN, ALF3_MAX = 4.0, 16.0
ALUMINA_SAT_MARGIN = 0.2
BATH_MIN_F, BATH_MAX_F = 0.6, 1.5
LEDGE_MIN_CM, LEDGE_MAX_CM = 1.0, 30.0
ACD_MIN_CM, ACD_MAX_CM = 2.0, 10.0
CE_MIN, CE_MAX = 0.80, 0.99


@njit(cache=True, inline="always")
def validity_flags(superheat, t_c, alf3, c, c_sat, bath_kg, bath_nominal_kg, ledge_cm, acd_cm, ce_raw):
    """Bit mask of the limits cell conditions are past (0: inside the envelope)."""
    f = 0
    if superheat < SUPERHEAT_MIN_K or superheat > SUPERHEAT_MAX_K:
        f |= F_SUPERHEAT
    if t_c < TEMP_MIN_C or t_c > TEMP_MAX_C:
        f |= F_TEMPERATURE
    if alf3 < ALF3_MIN or alf3 > ALF3_MAX:
        f |= F_ALF3
    if c > c_sat - ALUMINA_SAT_MARGIN:
        f |= F_ALUMINA
    if bath_kg < BATH_MIN_F * bath_nominal_kg or bath_kg > BATH_MAX_F * bath_nominal_kg:
        f |= F_BATH_MASS
    if ledge_cm < LEDGE_MIN_CM or ledge_cm > LEDGE_MAX_CM:
        f |= F_LEDGE
    if acd_cm < ACD_MIN_CM or acd_cm > ACD_MAX_CM:
        f |= F_ACD
    if ce_raw < CE_MIN or ce_raw > CE_MAX:
        f |= F_CE
    return f


def flag_names(mask: int) -> list[str]:
    """Names of the flags set in ``mask``."""
    return [name for bit, name in FLAG_NAMES.items() if int(mask) & bit]
