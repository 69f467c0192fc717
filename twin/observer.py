"""State observer: an extended Kalman filter per cell that follows a cell from what a
PLC measures (line current, cell voltage) and what the controller did (feeder shots,
beam moves), and estimates what no sensor measures — dissolved alumina and ACD.

Per cell the filter state is ``x = [C (wt % Al2O3), d (ACD, cm), b]`` with ``b`` the
cell's consumption relative to nominal Faraday consumption (CE and bath-mass error); the slow alumina
pool (sludge) is propagated open loop with the same two-pool model as the twin (Yao
2017). Prediction uses Faraday consumption at a nominal CE; the measurement model is
the Haupin voltage (``twin.bath.voltage_components``) at nominal bath temperature and
chemistry. During an anode effect the voltage says only that the alumina is at the
critical level, so the filter resets C there (with a small variance) instead of using
the 30 V sample.

Everything runs vectorised over cells in one ``@njit(cache=True)`` kernel.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from twin.bath import AL2O3_KG_PER_AS, BUBBLE_AE_OFFSET, voltage_components
from twin.cell import critical_alumina_wt
from twin.config import CellParams

# observer parameter indices (one row shared by all cells)
OB_MASS = 0  # bath mass assumed [kg]
OB_R = 1  # slow-pool share
OB_KD = 2  # slow-pool dissolution [1/s]
OB_CE = 3  # CE assumed for consumption
OB_T = 4  # bath temperature assumed [°C]
OB_ALF3 = 5  # [wt %]
OB_CAF2 = 6
OB_ANODE = 7  # [cm²]
OB_SINGLE = 8
OB_AREA_F = 9
OB_CATH = 10
OB_R_COND = 11  # [Ω]
OB_Q_C = 12  # process noise on C [wt %²/s]
OB_Q_D = 13  # process noise on ACD [cm²/s]
OB_R_U = 14  # measurement noise [V²]
OB_DRIFT = 15  # ACD drift [cm/s]
OB_AE_DELTA = 16
OB_Q_B = 17  # process noise on the consumption factor [1/s]
OB_PERIOD = 18  # measurement-update block [s]
OB_N = 19
N_X = 3  # filter states: C, ACD, consumption factor

AE_VOLTAGE_V = 8.0  # IPCC/IAI high-voltage AE definition
#: ACD variance added per second while a cell is tapped or has an anode changed [cm²/s]
DISTURBED_ACD_VAR_PER_S = 0.05**2
#: decay of that extra ACD uncertainty after the operation (new anode picking up current) [s]
DISTURBANCE_TAU_S = 6.0 * 3600.0


@njit(cache=True)
def _h(ob, c, d, current):
    size_f = ob[OB_SINGLE] ** -0.1
    c_crit = critical_alumina_wt(ob[OB_T], max(current, 1.0) / ob[OB_ANODE], size_f, ob[OB_AE_DELTA])
    comps = voltage_components(
        current,
        ob[OB_T],
        c,
        ob[OB_ALF3],
        ob[OB_CAF2],
        d,
        ob[OB_ANODE],
        ob[OB_SINGLE] ** -0.1,
        ob[OB_AREA_F],
        ob[OB_CATH],
        1.0,
        ob[OB_R_COND],
        c_crit - BUBBLE_AE_OFFSET,
    )
    return comps[0] + comps[1] + comps[2] + comps[3] + comps[4] + comps[5] + comps[6]


@njit(cache=True)
def ekf_step(x, p, sludge, agitation, acc, ob, current_a, voltage_v, feed_kg, beam_mm, dt, valid, disturbed):
    """One predict + update for every cell (in place). ``valid`` False: predict only;
    ``disturbed`` (tapping, anode change): the ACD absorbs the voltage step, not C.

    State per cell: ``x = [C wt %, ACD cm, b]`` where ``b`` multiplies the nominal
    Faraday consumption (it absorbs a cell's own CE and bath-mass error).
    ``acc[k] = [time, Σ U·dt, Σ I·dt, I smoothed outside AEs]`` accumulates samples between
    measurement updates:
    the update uses the block mean over ``OB_PERIOD`` seconds, because cell-voltage noise
    is coloured (MHD, τ ≈ 20 s) and per-sample updates on a convex h(C) bias C low.
    """
    n = x.shape[0]
    m = ob[OB_MASS]
    hv = np.zeros(N_X)
    kg = np.zeros(N_X)
    ph = np.zeros(N_X)
    for k in range(n):
        cur = current_a[k]
        # --- predict: x' = f(x), P' = F P F^T + Q ---
        fast = (1.0 - ob[OB_R]) * feed_kg[k]
        sludge[k] += ob[OB_R] * feed_kg[k]
        diss = sludge[k] * (1.0 - math.exp(-ob[OB_KD] * dt))
        sludge[k] -= diss
        cons = ob[OB_CE] * AL2O3_KG_PER_AS * max(cur, 0.0) * dt
        f02 = -100.0 * cons / m  # dC'/db
        x[k, 0] = max(x[k, 0] + 100.0 * (fast + diss - x[k, 2] * cons) / m, 0.3)
        x[k, 1] = max(x[k, 1] + ob[OB_DRIFT] * dt + beam_mm[k] / 10.0, 1.0)
        # F = I + f02·e0·e2^T
        for j in range(N_X):
            p[k, 0, j] += f02 * p[k, 2, j]
        for i in range(N_X):
            p[k, i, 0] += f02 * p[k, i, 2]
        p[k, 0, 0] += ob[OB_Q_C] * dt
        p[k, 1, 1] += ob[OB_Q_D] * dt
        p[k, 2, 2] += ob[OB_Q_B] * dt
        if disturbed[k]:
            agitation[k] = DISTURBED_ACD_VAR_PER_S
        p[k, 1, 1] += agitation[k] * dt
        agitation[k] *= math.exp(-dt / DISTURBANCE_TAU_S)
        if not valid[k] or cur < 1000.0:
            acc[k, 0] = 0.0
            acc[k, 1] = 0.0
            acc[k, 2] = 0.0
            continue
        u = voltage_v[k]
        if u > AE_VOLTAGE_V:
            acc[k, 0] = 0.0
            acc[k, 1] = 0.0
            acc[k, 2] = 0.0
            # in an AE the bath is at the critical concentration of the current density the
            # cell had when it started (the line current itself dips during the AE): reset C there
            i_dens = (acc[k, 3] if acc[k, 3] > 0.0 else cur) / ob[OB_ANODE]
            x[k, 0] = critical_alumina_wt(ob[OB_T], i_dens, ob[OB_SINGLE] ** -0.1, ob[OB_AE_DELTA])
            for j in range(N_X):
                p[k, 0, j] = 0.0
                p[k, j, 0] = 0.0
            p[k, 0, 0] = 0.05**2
            continue
        acc[k, 0] += dt
        acc[k, 1] += u * dt
        acc[k, 2] += cur * dt
        w = min(dt / 60.0, 1.0)  # current before any AE, smoothed over a minute
        acc[k, 3] = cur if acc[k, 3] <= 0.0 else acc[k, 3] + w * (cur - acc[k, 3])
        if acc[k, 0] < ob[OB_PERIOD]:
            continue
        u = acc[k, 1] / acc[k, 0]
        cur = acc[k, 2] / acc[k, 0]
        acc[k, 0] = 0.0
        acc[k, 1] = 0.0
        acc[k, 2] = 0.0
        # --- update with the block-mean voltage: H = [dU/dC, dU/dACD, 0] ---
        c, d = x[k, 0], x[k, 1]
        h0 = _h(ob, c, d, cur)
        hv[0] = (_h(ob, c + 0.01, d, cur) - _h(ob, c - 0.01, d, cur)) / 0.02
        hv[1] = (_h(ob, c, d + 0.01, cur) - h0) / 0.01
        hv[2] = 0.0
        s = ob[OB_R_U]
        for i in range(N_X):
            row = 0.0
            for j in range(N_X):
                row += p[k, i, j] * hv[j]
            ph[i] = row
            s += hv[i] * row
        for i in range(N_X):
            kg[i] = ph[i] / s
        innov = u - h0
        x[k, 0] = min(max(c + kg[0] * innov, 0.3), 12.0)
        x[k, 1] = min(max(d + kg[1] * innov, 1.0), 10.0)
        x[k, 2] = min(max(x[k, 2] + kg[2] * innov, 0.95), 1.05)
        # P = P − K (H P) = P − K ph^T, symmetric by construction
        for i in range(N_X):
            for j in range(N_X):
                p[k, i, j] -= kg[i] * ph[j]
        for i in range(N_X):
            p[k, i, i] = max(p[k, i, i], 1e-10)


class AluminaObserver:
    """EKF estimating dissolved alumina [wt %] and ACD [cm] for ``n_cells`` cells.

    Args:
        n_cells: number of cells followed.
        cell: nominal cell parameters (the observer never sees a cell's true ones).
        alumina_wt_pct, acd_cm: initial guesses; alumina_std [wt %], acd_std [cm] their 1-sigma.
        nominal_ce: current efficiency assumed for consumption [-].
        consumption_std: prior std of each cell's consumption factor, also its random walk
            per day; 0 (default) keeps it at 1. Adapting it lets voltage disturbances the
            filter does not model (anode-change transients) leak into the alumina estimate.
        update_period_s: the voltage is averaged over blocks of this length [s] and each
            block mean is one measurement update (prediction runs at every call).
    """

    def __init__(
        self,
        n_cells: int,
        cell: CellParams | None = None,
        alumina_wt_pct: float | None = None,
        acd_cm: float | None = None,
        nominal_ce: float = 0.955,
        consumption_std: float = 0.0,
        alumina_std: float = 0.3,
        acd_std: float = 0.3,
        update_period_s: float = 60.0,
    ) -> None:
        c = cell or CellParams()
        ob = np.zeros(OB_N)
        ob[OB_MASS] = c.bath_mass_kg
        ob[OB_R] = c.sludge_fraction
        ob[OB_KD] = c.dissolution_rate_per_s
        ob[OB_CE] = nominal_ce
        ob[OB_T] = c.bath_temp_c
        ob[OB_ALF3] = c.alf3_wt_pct
        ob[OB_CAF2] = c.caf2_wt_pct
        ob[OB_ANODE] = c.anode_area_m2 * 1e4
        ob[OB_SINGLE] = c.anode_area_m2 * 1e4 / c.n_anodes
        ob[OB_AREA_F] = c.anode_area_factor
        ob[OB_CATH] = c.cathode_area_m2 * 1e4
        ob[OB_R_COND] = (c.r_anode_uohm + c.r_cathode_uohm + c.r_external_uohm) * 1e-6
        ob[OB_Q_C] = 0.02**2 / 3600.0
        ob[OB_Q_D] = 0.1**2 / 3600.0
        ob[OB_R_U] = 0.01**2  # block-mean voltage noise [V²]
        ob[OB_PERIOD] = update_period_s
        ob[OB_DRIFT] = 0.0
        ob[OB_AE_DELTA] = c.ae_local_depletion_wt_pct_per_a_cm2
        ob[OB_Q_B] = consumption_std**2 / 86400.0
        self.ob = ob
        self.x = np.zeros((n_cells, N_X))
        self.x[:, 2] = 1.0
        self.x[:, 0] = c.alumina_wt_pct if alumina_wt_pct is None else alumina_wt_pct
        self.x[:, 1] = c.acd_cm if acd_cm is None else acd_cm
        self.p = np.zeros((n_cells, N_X, N_X))
        self.p[:, 0, 0] = alumina_std**2
        self.p[:, 1, 1] = acd_std**2
        self.p[:, 2, 2] = consumption_std**2
        self.sludge = np.zeros(n_cells)
        self.agitation = np.zeros(n_cells)
        self.acc = np.zeros((n_cells, 4))
        self._valid = np.ones(n_cells, dtype=np.bool_)
        self._calm = np.zeros(n_cells, dtype=np.bool_)

    def update(
        self,
        current_a: np.ndarray,
        voltage_v: np.ndarray,
        feed_kg: np.ndarray,
        beam_mm: np.ndarray,
        dt_s: float,
        valid: np.ndarray | None = None,
        disturbed: np.ndarray | None = None,
    ) -> None:
        """Advance by ``dt_s`` [s] with per-cell current [A], voltage [V], alumina fed [kg]
        and beam moves [mm] since the last update; ``valid`` False skips a cell's update;
        ``disturbed`` marks cells being tapped or having an anode changed."""
        ekf_step(
            self.x,
            self.p,
            self.sludge,
            self.agitation,
            self.acc,
            self.ob,
            np.asarray(current_a, float),
            np.asarray(voltage_v, float),
            np.asarray(feed_kg, float),
            np.asarray(beam_mm, float),
            float(dt_s),
            self._valid if valid is None else np.asarray(valid, dtype=np.bool_),
            self._calm if disturbed is None else np.asarray(disturbed, dtype=np.bool_),
        )

    @property
    def alumina_wt_pct(self) -> np.ndarray:
        return self.x[:, 0]

    @property
    def acd_cm(self) -> np.ndarray:
        return self.x[:, 1]

    @property
    def alumina_std_wt_pct(self) -> np.ndarray:
        return np.sqrt(self.p[:, 0, 0])

    def critical_alumina_wt_pct(self, current_a: np.ndarray) -> np.ndarray:
        """Bulk alumina at which an AE would start at this current [wt %] (nominal bath)."""
        ob = self.ob
        i = np.asarray(current_a, float) / ob[OB_ANODE]
        kk = (5.5 + 0.018 * (ob[OB_T] + 273.15 - 1323.0)) * ob[OB_SINGLE] ** -0.1
        return (i / kk + 0.4) ** 2 + ob[OB_AE_DELTA] * i

    def time_to_ae_s(self, current_a: np.ndarray, feed_rate_kg_s: np.ndarray) -> np.ndarray:
        """Time until the alumina estimate reaches the critical level at the given feed rate [s]
        (``inf`` when the feed covers consumption)."""
        ob = self.ob
        cur = np.asarray(current_a, float)
        cons = ob[OB_CE] * AL2O3_KG_PER_AS * cur
        net = cons - np.asarray(feed_rate_kg_s, float)
        margin = (self.x[:, 0] - self.critical_alumina_wt_pct(cur)) * ob[OB_MASS] / 100.0 + self.sludge
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(net > 0, np.maximum(margin, 0.0) / net, np.inf)
        return t
