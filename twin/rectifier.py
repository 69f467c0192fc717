"""Rectifier of a series potline: diode rectifier with on-load tap changer (coarse) and
saturable reactors (fast trim), regulating line current to a ramped setpoint.

Per line, state ``rect[n_lines, R_N]`` and parameters ``rpar[n_lines, RP_N]``
(float64, named indices). The DC output is ``U_dc = U_tap(tap) − U_reactor`` limited
to the DC voltage limit; the line current follows from the series circuit
``I = (U_dc − Σ E_k) / (Σ R_k + R_bus)`` (docs/domain.md §4), never negative (diodes).

Regulation [EST dynamics, docs/domain.md §4]: integral action on the current error through
the reactors (first-order lag ``reactor_tau_s``), the tap changer re-centres the
reactor in its range one step at a time (``tap_time_s`` per step). An AE (+≈30 V on
one cell) therefore dips the line current for a few seconds until the reactors take
up the extra voltage; beyond the voltage limit the current stays low.

A bench of a few simulated cells can stand in for a whole line: the cells of the line
that are not simulated are an aggregate load ``E_rest + R_rest·I`` (``RP_E_REST``,
``RP_R_REST``: that many nominal cells), so the circuit, the regulator and an AE's dip
are those of the full line. The rectifier reports over-current (``R_OVERCURRENT``, and
the seconds spent there, ``R_OC_S``) above ``RP_I_OC``.
"""

from __future__ import annotations

import math

from numba import njit

R_TAP = 0  # tap position (1..n_taps)
R_U_SR = 1  # saturable-reactor voltage drop [V]
R_U_CMD = 2  # regulator's requested DC voltage (integrator) [V]
R_I = 3  # line current [A]
R_I_SP = 4  # ramped setpoint in force [A]
R_I_TARGET = 5  # setpoint requested [A]
R_TRIPPED = 6  # 1 when tripped
R_TAP_TIMER = 7  # time until the tap changer may step again [s]
R_U_DC = 8  # DC output voltage [V]
R_REMOTE = 9  # 1 when remote setpoints are accepted
R_AT_LIMIT = 10  # 1 while the voltage limit holds the current down
R_E_SUM = 11  # Σ back-EMF of the cells [V]
R_R_SUM = 12  # Σ ohmic resistance incl. busbar [Ω]
R_OVERCURRENT = 13  # 1 while the line current exceeds the over-current limit
R_OC_S = 14  # time spent above the over-current limit [s]
R_N = 15

RP_V_LIMIT = 0  # DC voltage limit [V]
RP_N_TAPS = 1
RP_TAP_MIN = 2  # lowest tap voltage / voltage limit
RP_TAP_TIME = 3  # [s] per tap step
RP_SR_RANGE = 4  # reactor trim range [V]
RP_SR_TAU = 5  # reactor lag [s]
RP_KI = 6  # integral gain [V/(A·s)]
RP_RAMP = 7  # setpoint ramp [A/s]
RP_R_BUS = 8  # busbar [Ω]
RP_I_MIN = 9  # [A]
RP_I_MAX = 10  # [A]
RP_I_OC = 11  # over-current limit [A]
RP_E_REST = 12  # back-EMF of the line's cells that are not simulated [V]
RP_R_REST = 13  # their ohmic resistance [Ω]
RP_N = 14


@njit(cache=True, inline="always")
def tap_voltage(rpar, line, tap):
    """Open-circuit DC voltage [V] at tap position ``tap``."""
    n = rpar[line, RP_N_TAPS]
    f = rpar[line, RP_TAP_MIN] + (1.0 - rpar[line, RP_TAP_MIN]) * (tap - 1.0) / (n - 1.0)
    return rpar[line, RP_V_LIMIT] * f


@njit(cache=True, inline="always")
def rectifier_step(rect, rpar, line, e_sum, r_sum, dt):
    """Advance line ``line``'s regulator by ``dt`` [s] with the simulated cells' back-EMF
    ``e_sum`` [V] and resistance ``r_sum`` [Ω] (the rest of the line and the busbar are
    added here); returns the new line current [A]."""
    target = min(max(rect[line, R_I_TARGET], rpar[line, RP_I_MIN]), rpar[line, RP_I_MAX])
    step = rpar[line, RP_RAMP] * dt
    sp = rect[line, R_I_SP]
    sp += min(max(target - sp, -step), step)
    rect[line, R_I_SP] = sp
    e_sum += rpar[line, RP_E_REST]
    r_tot = r_sum + rpar[line, RP_R_BUS] + rpar[line, RP_R_REST]
    rect[line, R_E_SUM] = e_sum
    rect[line, R_R_SUM] = r_tot
    if rect[line, R_TRIPPED] > 0.5:
        rect[line, R_U_DC] = 0.0
        rect[line, R_I] = 0.0
        rect[line, R_I_SP] = 0.0
        rect[line, R_U_CMD] = e_sum
        rect[line, R_OVERCURRENT] = 0.0
        return 0.0
    err = sp - rect[line, R_I]
    v_lim = rpar[line, RP_V_LIMIT]
    u_tap = tap_voltage(rpar, line, rect[line, R_TAP])
    sr_range = rpar[line, RP_SR_RANGE]
    tap_step = v_lim * (1.0 - rpar[line, RP_TAP_MIN]) / (rpar[line, RP_N_TAPS] - 1.0)
    u_cmd = rect[line, R_U_CMD] + rpar[line, RP_KI] * err * dt
    # anti-windup: never ask for more than this tap (plus one step) or the limit can give
    u_cmd = min(max(u_cmd, 0.0, u_tap - sr_range - tap_step), u_tap + tap_step, v_lim)
    rect[line, R_U_CMD] = u_cmd
    sr_cmd = min(max(u_tap - u_cmd, 0.0), sr_range)
    alpha = 1.0 - math.exp(-dt / rpar[line, RP_SR_TAU])
    rect[line, R_U_SR] += (sr_cmd - rect[line, R_U_SR]) * alpha
    # tap changer keeps the reactor inside its range
    rect[line, R_TAP_TIMER] = max(rect[line, R_TAP_TIMER] - dt, 0.0)
    if rect[line, R_TAP_TIMER] <= 0.0:
        want = u_tap - u_cmd
        if want > 0.8 * sr_range and rect[line, R_TAP] > 1.0:
            rect[line, R_TAP] -= 1.0
            rect[line, R_TAP_TIMER] = rpar[line, RP_TAP_TIME]
        elif want < 0.2 * sr_range and rect[line, R_TAP] < rpar[line, RP_N_TAPS]:
            rect[line, R_TAP] += 1.0
            rect[line, R_TAP_TIMER] = rpar[line, RP_TAP_TIME]
    u_dc = min(u_tap - rect[line, R_U_SR], v_lim)
    rect[line, R_U_DC] = u_dc
    rect[line, R_AT_LIMIT] = 1.0 if u_cmd >= v_lim - 1e-9 and err > 0.0 else 0.0
    current = max((u_dc - e_sum) / r_tot, 0.0)
    rect[line, R_I] = current
    if current > rpar[line, RP_I_OC]:
        rect[line, R_OVERCURRENT] = 1.0
        rect[line, R_OC_S] += dt
    else:
        rect[line, R_OVERCURRENT] = 0.0
    return current


def initial_tap(v_limit: float, n_taps: int, tap_min: float, sr_range: float, u_needed: float) -> int:
    """Tap position that leaves the reactor near the middle of its range at ``u_needed`` [V]."""
    best, best_err = n_taps, math.inf
    for tap in range(1, n_taps + 1):
        u_tap = v_limit * (tap_min + (1.0 - tap_min) * (tap - 1.0) / (n_taps - 1.0))
        err = abs((u_tap - u_needed) - 0.5 * sr_range)
        if u_tap >= u_needed and err < best_err:
            best, best_err = tap, err
    return best
