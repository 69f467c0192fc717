"""The compiled kernel of ``twin.rollouts``: K rollouts stacked as K copies of a plant's lines.

Kept in its own module so that edits to the Python side of ``twin.rollouts`` do not throw away
Numba's on-disk cache of this kernel (a compile costs minutes on a loaded 2-core machine).
It reuses the twin's per-cell kernels and line solution unchanged (``cell_emf``,
``cell_integrate``, ``twin.potline._solve_line``), in ``Potline.advance``'s order.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit, prange

from twin.cell import cell_emf, cell_integrate
from twin.cell_layout import A_E_ELEC, A_METAL, O_FLAGS, O_LEDGE_CM, O_SUPERHEAT, P_HE_CMD, S_IN_CIRCUIT
from twin.potline import _solve_line
from twin.rectifier import R_I, R_I_TARGET

#: as the twin's stepping kernels (``twin.potline``): no reference counting (the kernel allocates
#: nothing), cached on disk; parallel over the (rollout, line) pairs
_OPTIONS: dict[str, Any] = {"cache": True, "_nrt": False, "parallel": True}


@njit(**_OPTIONS)
def rollout_kernel(
    n_steps,
    n_sub,
    dt,
    n_lines,
    n_cells,
    state,
    params,
    out,
    line_ptr,
    line_cells,
    rect,
    rpar,
    rng,
    decay,
    current_a,
    he_w,
    energy_j,
    metal_kg,
    ledge_min,
    sh_min,
    sh_max,
    flags_or,
):
    """Run every (rollout, line) pair of the stacked arrays for ``n_steps`` planning steps of
    ``n_sub`` sub-steps of ``dt`` [s].

    ``current_a[r, i, ln]`` is line ``ln``'s setpoint [A] in rollout ``r`` over planning step
    ``i``; ``he_w[r, i, c]`` cell ``c``'s exchanger duty command [W] (NaN: leave it), shape
    ``[K, n_steps, n_cells]`` or ``[K, 0, 0]`` for none. Per sub-step and cell in circuit the
    kernel keeps the lowest ledge [cm] and the lowest and highest superheat [K] (at the start of
    the sub-step, as ``cell_emf`` computes it), and ORs the validity flags; at the end of each
    planning step it writes each line's cumulative electrical energy [J] and metal [kg]
    (``energy_j[r, i, ln]``, ``metal_kg[r, i, ln]``).
    """
    n_jobs = rect.shape[0]
    has_he = he_w.shape[1] > 0
    for job in prange(n_jobs):
        r = job // n_lines
        ln = job - r * n_lines
        lo, hi = line_ptr[job], line_ptr[job + 1]
        base = r * n_cells
        for i in range(n_steps):
            rect[job, R_I_TARGET] = current_a[r, i, ln]
            if has_he:
                for j in range(lo, hi):
                    k = line_cells[j]
                    duty = he_w[r, i, k - base]
                    if not math.isnan(duty):
                        params[k, P_HE_CMD] = duty
            for _ in range(n_sub):
                current = rect[job, R_I]
                for j in range(lo, hi):
                    k = line_cells[j]
                    cell_emf(k, state, params, out, current, rng, decay)
                    if state[k, S_IN_CIRCUIT] > 0.5:
                        sh = out[k, O_SUPERHEAT]
                        if sh < sh_min[k]:
                            sh_min[k] = sh
                        if sh > sh_max[k]:
                            sh_max[k] = sh
                current = _solve_line(job, dt, state, out, line_ptr, line_cells, rect, rpar)
                for j in range(lo, hi):
                    k = line_cells[j]
                    cell_integrate(k, state, params, out, current, rng, dt, decay)
                    if state[k, S_IN_CIRCUIT] > 0.5:
                        ledge = out[k, O_LEDGE_CM]
                        if ledge < ledge_min[k]:
                            ledge_min[k] = ledge
                        flags_or[k] = flags_or[k] | np.int64(out[k, O_FLAGS])
            e = 0.0
            m = 0.0
            for j in range(lo, hi):
                k = line_cells[j]
                e += state[k, A_E_ELEC]
                m += state[k, A_METAL]
            energy_j[r, i, ln] = e
            metal_kg[r, i, ln] = m
