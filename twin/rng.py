"""Per-cell random streams for Numba kernels (xorshift64*), deterministic under prange.

Each cell owns one uint64 state, so results do not depend on thread scheduling or on
how many cells run together; seeding comes from ``numpy.random.SeedSequence``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, uint64

_MULT = uint64(0x2545F4914F6CDD1D)


def seed_states(seed: int, n: int) -> np.ndarray:
    """``n`` independent non-zero uint64 generator states from ``seed``."""
    s = np.random.SeedSequence(seed).generate_state(n, dtype=np.uint64)
    s[s == 0] = np.uint64(0x9E3779B97F4A7C15)
    return s


@njit(cache=True, inline="always")
def uniform(states, k):
    """Uniform draw in (0, 1) from stream ``k`` (advances it)."""
    x = states[k]
    x ^= x >> uint64(12)
    x ^= x << uint64(25)
    x ^= x >> uint64(27)
    states[k] = x
    r = (x * _MULT) >> uint64(11)
    return (float(r) + 0.5) * (1.0 / 9007199254740992.0)


@njit(cache=True, inline="always")
def normal(states, k):
    """Standard normal draw from stream ``k`` (Box–Muller)."""
    u1 = uniform(states, k)
    u2 = uniform(states, k)
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


@njit(cache=True, inline="always")
def normal_pair(states, k):
    """Two independent standard normal draws from stream ``k`` (one Box–Muller pair)."""
    r = math.sqrt(-2.0 * math.log(uniform(states, k)))
    phi = 2.0 * math.pi * uniform(states, k)
    return r * math.cos(phi), r * math.sin(phi)
