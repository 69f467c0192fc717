"""Stochastic disturbances of the feed, as plants see them (Numba, inlined into the kernels).

Point-fed cells mostly get their anode effects from alumina that does not arrive as the
controller believes (docs/domain.md §2): a feeder hole that crusts over (the crust breaker
no longer opens it; the feeder keeps stroking and the PLC keeps acknowledging), a hopper
running empty, feeders that dump more or less than their nominal shot, alumina that
dissolves worse some days (more sludge), cold anodes after an anode change. Per cell:

- feeder-hole blockages arrive as a Poisson process (``P_BLOCK_RATE``); each lasts an
  exponentially distributed time (mean ``P_BLOCK_MEAN``) and loses ``P_BLOCK_LOSS`` of the
  feed (one of the cell's feeders). An AE brings the crew: the hole is cleared within
  ``P_OPERATOR_S`` of the AE;
- an AE alarm brings the crew: an AE still burning ``P_OPERATOR_S`` after its start is
  killed by hand (green poling, ``twin.cell``) and the cell fed by hand (``manual_feed``);
- empty hoppers likewise (``P_HOPPER_RATE``, ``P_HOPPER_MEAN``), no feed at all; the AE
  they cause brings the crew within ``P_OPERATOR_S``, who refill the hopper and dump
  ``MANUAL_FEED_KG`` of alumina by hand (half of it settles as sludge);
- a per-cell shot-mass bias (``P_SHOT_BIAS``, feeder calibration) and per-cell sludge and
  dissolution parameters (``twin.potline`` draws them with the plant's spread);
- day-to-day alumina quality: the slow-pool share is redrawn at each scheduled tapping
  (``P_QUALITY_STD`` relative), and a new anode's cold bath adds ``P_COLD_SLUDGE`` while
  its area is not yet conducting.

Draws come from the cell's own random stream, and only when an event starts or ends, so
the cost per sub-step is two timer updates.
"""

from __future__ import annotations

import math

from numba import njit

from twin.cell_layout import (
    A_FED,
    P_BLOCK_LOSS,
    P_BLOCK_MEAN,
    P_BLOCK_RATE,
    P_COLD_SLUDGE,
    P_HOPPER_MEAN,
    P_HOPPER_RATE,
    P_N_ANODES,
    P_OPERATOR_S,
    P_QUALITY_STD,
    P_SLUDGE_R,
    S_AC_AREA,
    S_AL2O3,
    S_BLOCK_LEFT,
    S_BLOCK_NEXT,
    S_HOPPER_LEFT,
    S_HOPPER_NEXT,
    S_SLUDGE,
    S_SLUDGE_R,
)
from twin.rng import normal, uniform

#: the slow-pool share never leaves this range [-]
SLUDGE_R_MIN, SLUDGE_R_MAX = 0.05, 0.95
#: alumina the crew dumps by hand when they refill an empty hopper after its AE [kg] [EST]
MANUAL_FEED_KG = 30.0


@njit(cache=True, inline="always")
def feed_share(state, params, k):
    """Share [0, 1] of a shot that reaches cell ``k``'s bath under its present disturbances
    (an empty hopper: ``S_HOPPER_LEFT`` > 0, or < 0 while the crew is on its way)."""
    if state[k, S_HOPPER_LEFT] != 0.0:
        return 0.0
    if state[k, S_BLOCK_LEFT] > 0.0:
        return 1.0 - params[k, P_BLOCK_LOSS]
    return 1.0


@njit(cache=True, inline="always")
def sludge_share(state, params, k):
    """Share of a shot that goes to the slow pool now (today's alumina, cold new anodes)."""
    r = state[k, S_SLUDGE_R] + params[k, P_COLD_SLUDGE] * params[k, P_N_ANODES] * state[k, S_AC_AREA]
    return min(max(r, SLUDGE_R_MIN), SLUDGE_R_MAX)


@njit(cache=True, inline="always")
def _event(state, k, left, nxt, rate, mean, rng, dt):
    """One on/off Poisson process: ``left`` counts down an event, ``nxt`` the wait for the next."""
    if rate <= 0.0:
        return
    if state[k, left] > 0.0:
        state[k, left] -= dt
        if state[k, left] <= 0.0:
            state[k, left] = 0.0
            state[k, nxt] = -math.log(uniform(rng, k)) / rate
    else:
        state[k, nxt] -= dt
        if state[k, nxt] <= 0.0:
            state[k, left] = -math.log(uniform(rng, k)) * mean


@njit(cache=True, inline="always")
def manual_feed(state, k):
    """The crew dumps ``MANUAL_FEED_KG`` of alumina into cell ``k`` by hand (half settles)."""
    state[k, S_AL2O3] += 0.5 * MANUAL_FEED_KG
    state[k, S_SLUDGE] += 0.5 * MANUAL_FEED_KG
    state[k, A_FED] += MANUAL_FEED_KG


@njit(cache=True, inline="always")
def disturb_step(k, state, params, rng, dt):
    """Advance cell ``k``'s disturbance processes by ``dt`` [s] (feeder hole, hopper)."""
    _event(state, k, S_BLOCK_LEFT, S_BLOCK_NEXT, params[k, P_BLOCK_RATE], params[k, P_BLOCK_MEAN], rng, dt)
    if state[k, S_HOPPER_LEFT] < 0.0:  # the crew is on its way
        state[k, S_HOPPER_LEFT] += dt
        if state[k, S_HOPPER_LEFT] >= 0.0:  # hopper refilled, alumina dumped by hand
            state[k, S_HOPPER_LEFT] = 0.0
            manual_feed(state, k)
            if params[k, P_HOPPER_RATE] > 0.0:
                state[k, S_HOPPER_NEXT] = -math.log(uniform(rng, k)) / params[k, P_HOPPER_RATE]
    else:
        _event(state, k, S_HOPPER_LEFT, S_HOPPER_NEXT, params[k, P_HOPPER_RATE], params[k, P_HOPPER_MEAN], rng, dt)


@njit(cache=True, inline="always")
def crew_called(state, params, k):
    """An AE starts on cell ``k``: the crew clears a blocked feeder hole within ``P_OPERATOR_S``
    and comes to refill an empty hopper (``S_HOPPER_LEFT`` < 0 counts down to their arrival)."""
    op = params[k, P_OPERATOR_S]
    if state[k, S_BLOCK_LEFT] > op:
        state[k, S_BLOCK_LEFT] = op
    if state[k, S_HOPPER_LEFT] > 0.0:
        state[k, S_HOPPER_LEFT] = -min(state[k, S_HOPPER_LEFT], op)


@njit(cache=True, inline="always")
def new_alumina_day(state, params, k, rng):
    """Redraw today's slow-pool share of cell ``k`` (alumina quality varies day to day)."""
    std = params[k, P_QUALITY_STD]
    if std > 0.0:
        f = 1.0 + std * normal(rng, k)
        state[k, S_SLUDGE_R] = min(max(params[k, P_SLUDGE_R] * f, SLUDGE_R_MIN), SLUDGE_R_MAX)
