"""Named column indices of the cell state, parameter and output arrays.

Cell data is a structure of arrays: ``state[n_cells, N_STATE]``,
``params[n_cells, N_PARAM]`` and ``out[n_cells, N_OUT]`` (float64), indexed with the
constants below (Numba folds them as compile-time constants). Units in comments.
"""

from __future__ import annotations

# --- state -----------------------------------------------------------------------------
S_AL2O3 = 0  # dissolved alumina [kg]
S_SLUDGE = 1  # undissolved alumina (slow pool, sludge) [kg]
S_ALF3 = 2  # excess AlF3 [kg]
S_CRYO = 3  # cryolite + CaF2 [kg]
S_METAL = 4  # metal pad [kg]
S_TBATH = 5  # bath temperature [°C]
S_LEDGE = 6  # side ledge [kg]
S_ACD = 7  # anode-cathode distance [cm]
S_ANODE_H = 8  # mean anode height [cm]
S_AE = 9  # 1 while an anode effect lasts
S_FILM = 10  # gas-film coverage of the anodes [0..1]
S_AE_T = 11  # time since the current AE started [s]
S_REFRACT = 12  # time before a new AE can start [s]
S_NOISE = 13  # MHD / bubble voltage noise, AR(1) [V]
S_AE_OSC = 14  # AE voltage oscillation, AR(1) [V]
S_AC_HEAT = 15  # heat still to be absorbed by a cold new anode [J]
S_AC_AREA = 16  # share of anode area not yet conducting after an anode change [-]
S_TAP_LEFT = 17  # metal still to be tapped [kg]
S_TAP_TIMER = 18  # time to the next scheduled tapping [s]
S_AC_TIMER = 19  # time to the next scheduled anode change [s]
S_AC_BUSY = 20  # time left in the anode change in progress [s]
S_FEED_CREDIT = 21  # local feeding: alumina owed since the last shot [kg]
S_BEAM_TIMER = 22  # local resistance control: time to next check [s]
S_IN_CIRCUIT = 23  # 1 in series, 0 shorted (cut out)
S_FEED_ACK = 24  # shots dumped, cumulative (PLC counter)
S_BEAM_ACK = 25  # beam movement, cumulative [mm] (+ up)
S_SWEEP = 26  # gas-layer sweeping by recent beam pumping [mm], decays
A_FED = 27  # alumina fed [kg]
A_CONSUMED = 28  # alumina electrolysed [kg]
A_METAL = 29  # metal produced [kg]
A_TAPPED = 30  # metal tapped [kg]
A_E_ELEC = 31  # electrical energy U·I [J]
A_E_RXN = 32  # reaction enthalpy [J]
A_Q_LOSS = 33  # heat lost through top, bottom and sides [J]
A_Q_ANODE = 34  # heat absorbed by new anodes [J]
A_AE_S = 35  # time in anode effect [s]
A_AE_N = 36  # anode effects started [-]
A_CF4 = 37  # CF4 emitted [kg]
A_ALF3_ADD = 38  # AlF3 added [kg]
A_ALF3_USED = 39  # AlF3 neutralised by the feed's Na2O [kg]
A_CHARGE = 40  # charge passed [A·s]
A_CARBON = 41  # anode carbon consumed [kg]
A_CRYO_MADE = 42  # cryolite formed from neutralisation [kg]
S_AE_CCRIT = 43  # critical alumina when the current AE started [wt %]
S_KILL_T = 44  # time since the PLC's last local AE-kill dose [s]
N_STATE = 45

# --- parameters --------------------------------------------------------------------------
P_ANODE_CM2 = 0  # geometric anode area [cm²]
P_SINGLE_CM2 = 1  # one anode [cm²]
P_AREA_F = 2  # effective / geometric anode area
P_CATH_CM2 = 3  # cathode area [cm²]
P_LEDGE_M2 = 4  # ledge face area [m²]
P_R_COND = 5  # anode + cathode + external conductor resistance [Ω]
P_KAPPA_F = 6  # conductivity multiplier [-]
P_CAF2 = 7  # CaF2 [wt %]
P_SLUDGE_R = 8  # share of a shot to the slow pool [-]
P_KDISS = 9  # slow-pool dissolution rate [1/s]
P_AE_DELTA = 10  # under-anode depletion [wt % per A/cm²]
P_FILM_V = 11  # full gas-film voltage [V]
P_AE_SELF_S = 12  # mean AE life without action [s]
P_AE_REFR_S = 13  # refractory time after an AE [s]
P_NOISE_V = 14  # MHD noise std [V]
P_NOISE_TAU = 15  # MHD noise correlation time [s]
P_CTH = 16  # heat capacity bath + metal [J/K]
P_KTOP = 17  # top/bottom loss conductance [W/K]
P_HBL = 18  # bath-ledge heat transfer [W/(m² K)]
P_KLEDGE = 19  # ledge conductivity [W/(m K)]
P_RWALL = 20  # wall + outer convection [K/W]
P_TAMB = 21  # ambient [°C]
P_CE_C = 22  # Dewing constant [-]
P_ALF3_NEUT = 23  # AlF3 neutralised per kg alumina fed [kg/kg]
P_CARBON = 24  # net carbon per kg Al [kg/kg]
P_ANODE_H0 = 25  # new anode height [cm]
P_AC_INTERVAL = 26  # time between anode changes in one cell [s]
P_ANODE_MASS = 27  # one anode [kg]
P_N_ANODES = 28  # anodes per cell
P_SHOT_KG = 29  # alumina per shot [kg]
P_FEED_RATIO = 30  # local fixed feed rate / nominal consumption
P_CE_NOM = 31  # CE the local feeder assumes
P_R_TARGET = 32  # local resistance target [Ω]
P_R_BAND = 33  # local resistance half deadband [Ω]
P_BEAM_STEP = 34  # local beam step [cm]
P_BEAM_INTERVAL = 35  # local beam check interval [s]
P_ALF3_RATE = 36  # AlF3 addition [kg/s]
P_TAP_INTERVAL = 37  # tapping interval [s]
P_TAP_DURATION = 38  # tapping duration [s]
P_AC_DURATION = 39  # anode change duration [s]
P_LOCAL = 40  # 1: potroom PLC feeds and moves the beam itself
P_OPS = 41  # 1: tapping and anode changes run on their schedule
P_METAL0 = 42  # metal pad after tapping [kg]
P_LOCAL_QUENCH = 43  # 1: the potroom PLC kills AEs itself (feed + beam pumping) under local control
P_NOISE_A = 44  # MHD noise AR(1) coefficient exp(-dt/τ) for the model step [-]
P_KDISS_F = 45  # slow-pool share dissolving per step 1 - exp(-k·dt) [-]
P_SIZE_F = 46  # one anode's area^-0.1 (critical current density) [cm^-0.2]
P_FEED_EFF = 47  # share of each shot that reaches the bath [-] (1; 0 = feeder hole crusted over)
N_PARAM = 48

# --- per-step decay factors shared by all cells (``step_decays(dt)``) ------------------------
D_AE_OSC = 0  # AE oscillation AR(1) coefficient
D_FILM = 1  # gas-film growth/decay
D_SWEEP = 2  # beam-pumping sweep memory
D_ANODE_HEAT = 3  # share of the remaining new-anode heat absorbed per step
D_ANODE_AREA = 4  # new-anode area still not conducting
N_DECAY = 5

# --- outputs (last sub-step) -----------------------------------------------------------------
O_U = 0  # cell voltage incl. noise [V]
O_E = 1  # back-EMF of the circuit model (non-ohmic part) [V]
O_R_OHM = 2  # ohmic resistance [Ω]
O_EREV = 3  # reversible potential [V]
O_ETA_SA = 4  # anode reaction overvoltage [V]
O_ETA_CA = 5  # anode concentration overvoltage [V]
O_ETA_CC = 6  # cathode overvoltage [V]
O_U_BATH = 7  # bath ohmic drop [V]
O_U_BUB = 8  # bubble layer drop [V]
O_U_COND = 9  # anode + cathode + external conductor drops [V]
O_U_AE = 10  # anode-effect gas-film voltage incl. oscillation [V]
O_U_NOISE = 11  # MHD noise [V]
O_C = 12  # dissolved alumina [wt %]
O_ALF3 = 13  # excess AlF3 [wt %]
O_TLIQ = 14  # liquidus [°C]
O_SUPERHEAT = 15  # bath superheat [K]
O_KAPPA = 16  # bath conductivity [S/cm]
O_I_DENS = 17  # anode current density [A/cm²]
O_CE = 18  # current efficiency [-]
O_LEDGE_CM = 19  # ledge thickness [cm]
O_CSAT = 20  # alumina saturation [wt %]
O_C_CRIT = 21  # bulk alumina at which an AE starts now [wt %]
O_I = 22  # cell current [A]
N_OUT = 23
