"""Alumina feed control: underfeed/overfeed tracking on the pseudo-resistance slope.

Nominal demand from Faraday's law (docs/domain.md §0): the dissolved alumina consumed
by a cell at line current I is ṁ = 1.673e-7·I·(CE/0.95) kg/s (1.205 kg/min at 120 kA,
CE 0.95), times ``feed_ratio`` for impurities. Each cell alternates

* UNDERFEED at ``underfeed_factor`` × nominal until the filtered R slope exceeds
  ``slope_switch_nohm_per_min`` (alumina is getting lean), after ``min_underfeed_s``,
  or at the latest after ``max_underfeed_s``;
* OVERFEED at ``overfeed_factor`` × nominal for ``overfeed_s``.

Cycles between two slope-triggered switches start and end at the same alumina level,
so the mass fed over the cycle equals the mass consumed; the ratio to the nominal
updates a per-cell ``adapt`` factor (cell CE, shot-mass bias), within
[``adapt_min``, ``adapt_max``]. An underfeed that runs to its time limit means the
cell had alumina to spare: ``adapt`` is lowered a little.

An anode change raises the current density on the remaining anodes (the critical
alumina concentration of the AE rises by ≈ 0.2 wt %) and makes the cell voltage noisy
for hours, so tracking is blind just when the margin is thin: the cell gets
``anode_change_overfeed_s`` of overfeed, then NOMINAL feeding (1.0 × nominal) until
``anode_change_nominal_s`` later, then tracking resumes.

While a cell's potroom PLC is in *local* control its own automation feeds it:
``hold_local`` parks the cell (NOMINAL, no tracking, no mass-balance cycle) every scan,
so that no phase switch or adaptation is judged on feeding the controller did not do;
when the cell is taken back it resumes with ``takeover_nominal_s`` of nominal feeding
(its alumina state is unknown to the tracker), then tracking.

Shots are dispensed from a per-cell fractional accumulator, so the mean rate is exact
at any scan period.
"""

from __future__ import annotations

import numpy as np

from potctl.config import FeedingConfig

__all__ = ["NOMINAL", "OVERFEED", "UNDERFEED", "FeedController", "faraday_alumina_kg_s"]

UNDERFEED = 1
OVERFEED = 2
NOMINAL = 3  # after an anode change: the R signal is noisy and the AE threshold higher

#: kg Al2O3 per A·s dissolved at CE 0.95 (docs/domain.md §0: 1.673e-7·I kg/s)
ALUMINA_KG_PER_AS_CE095 = 1.673e-7


def faraday_alumina_kg_s(i_ka: np.ndarray | float, ce: float = 0.95) -> np.ndarray | float:
    """Alumina consumption [kg/s] of a cell at line current ``i_ka`` [kA] and current efficiency ``ce``."""
    return ALUMINA_KG_PER_AS_CE095 * (ce / 0.95) * np.asarray(i_ka) * 1e3


class FeedController:
    """Per-cell tracking feed control (NumPy state).

    Args:
        n_cells: number of cells.
        shot_mass_kg: [n] alumina per feeder shot [kg].
        cfg: feed settings.
        t0: start time [s]; cells start in underfeed, staggered so they do not all
            switch at once.
    """

    def __init__(
        self, n_cells: int, shot_mass_kg: np.ndarray | float, cfg: FeedingConfig | None = None, t0: float = 0.0
    ) -> None:
        self.cfg = cfg or FeedingConfig()
        n = int(n_cells)
        self.n = n
        sm = np.broadcast_to(np.asarray(shot_mass_kg, dtype=np.float64), (n,)).copy()
        sm[~(sm > 0)] = self.cfg.default_shot_mass_kg
        self.shot_mass_kg = sm
        self.phase = np.full(n, UNDERFEED, dtype=np.int8)
        # stagger: cell k behaves as if its underfeed had started up to min_underfeed_s ago
        frac = (np.arange(n) * 0.6180339887498949) % 1.0
        self.phase_since = t0 - frac * self.cfg.min_underfeed_s
        self.phase_end = np.full(n, np.inf)
        self.nominal_until = np.full(n, -np.inf)
        self.acc = frac.copy()  # fractional shots, staggered too
        self.adapt = np.ones(n)
        self._cycle_start = np.full(n, np.nan)
        self._cycle_fed = np.zeros(n)
        self._cycle_nom = np.zeros(n)
        self.shots_total = np.zeros(n, dtype=np.int64)
        self.fed_kg_total = np.zeros(n)
        self.cycles_adapted = 0
        #: why each cell last went to overfeed: 0 none, 1 slope, 2 time, 3 forced
        self.switch_reason = np.zeros(n, dtype=np.int8)

    def nominal_kg_s(self, i_ka: np.ndarray) -> np.ndarray:
        """Nominal feed rate [kg/s] per cell at cell current ``i_ka`` [kA], incl. adaptation."""
        return faraday_alumina_kg_s(i_ka, self.cfg.ce_assumed) * self.cfg.feed_ratio * self.adapt

    def rate_factor(self) -> np.ndarray:
        """Current feed rate / nominal per cell."""
        f = np.where(self.phase == OVERFEED, self.cfg.overfeed_factor, self.cfg.underfeed_factor)
        return np.where(self.phase == NOMINAL, 1.0, f)

    def anode_change(self, mask: np.ndarray, t: float) -> None:
        """An anode change started on ``mask`` cells: overfeed, then hold the nominal rate."""
        cfg = self.cfg
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            return
        self.force_overfeed(mask, t, cfg.anode_change_overfeed_s)
        self.nominal_until = np.where(
            mask, t + cfg.anode_change_overfeed_s + cfg.anode_change_nominal_s, self.nominal_until
        )

    def force_overfeed(self, mask: np.ndarray, t: float, duration_s: float | None = None) -> np.ndarray:
        """Put ``mask`` cells into overfeed now (prediction alarm, after an AE).

        An overfeed already running is extended, never shortened. Returns the cells
        that switched phase.
        """
        dur = self.cfg.overfeed_s if duration_s is None else duration_s
        mask = np.asarray(mask, dtype=bool)
        switched = mask & (self.phase != OVERFEED)
        running = mask & ~switched
        if switched.any():
            self._enter_overfeed(switched, t, reason=3)
            self.phase_end[switched] = t + dur
        self.phase_end = np.where(running, np.maximum(self.phase_end, t + dur), self.phase_end)
        return switched

    def hold_local(self, mask: np.ndarray, t: float) -> None:
        """``mask`` cells are under local control at time ``t`` [s] (call every scan):
        park them in NOMINAL until ``takeover_nominal_s`` after ``t`` (or a later
        anode-change hold), with their mass-balance cycle broken."""
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            return
        end = np.maximum(t + self.cfg.takeover_nominal_s, self.nominal_until)
        self.phase[mask] = NOMINAL
        self.phase_since[mask] = t
        self.phase_end[mask] = end[mask]
        self.nominal_until[mask] = end[mask]
        self._cycle_start[mask] = np.nan
        self._cycle_fed[mask] = 0.0
        self._cycle_nom[mask] = 0.0

    def _enter_overfeed(self, mask: np.ndarray, t: float, reason: int) -> None:
        self.phase[mask] = OVERFEED
        self.phase_since[mask] = t
        self.phase_end[mask] = t + self.cfg.overfeed_s
        self.switch_reason[mask] = reason
        # a forced switch breaks the mass-balance cycle
        if reason != 1:
            self._cycle_start[mask] = np.nan

    def step(
        self,
        t: float,
        dt: float,
        i_ka: np.ndarray,
        can_feed: np.ndarray,
        slope_high: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One scan of feed control.

        Args:
            t: time [s].
            dt: time since the previous scan [s].
            i_ka: [n] current through each cell [kA].
            can_feed: [n] the cell is in circuit with current and good tags, and its
                potroom PLC is in remote (the shots reach it).
            slope_high: [n] the filtered R slope is significantly above
                ``slope_switch_nohm_per_min`` (from the slope tracker).

        Returns:
            (shots [n] int64 to dump now, phase_changed [n] bool).
        """
        cfg = self.cfg
        elapsed = t - self.phase_since
        under = self.phase == UNDERFEED
        slope_hit = under & (elapsed >= cfg.min_underfeed_s) & slope_high
        time_hit = under & ~slope_hit & (elapsed >= cfg.max_underfeed_s)
        over_done = (self.phase == OVERFEED) & (t >= self.phase_end)
        nominal_done = (self.phase == NOMINAL) & (t >= self.phase_end)
        changed = slope_hit | time_hit | over_done | nominal_done
        if changed.any():
            if slope_hit.any():
                self._close_cycle(slope_hit, t)
                self._enter_overfeed(slope_hit, t, reason=1)
            if time_hit.any():
                # alumina never got lean: the cell needs less than assumed
                self.adapt[time_hit] = np.clip(
                    self.adapt[time_hit] * (1.0 - 0.2 * cfg.adapt_gain), cfg.adapt_min, cfg.adapt_max
                )
                self._enter_overfeed(time_hit, t, reason=2)
            if over_done.any():
                hold = over_done & (t < self.nominal_until)
                self.phase[over_done] = np.where(hold[over_done], NOMINAL, UNDERFEED)
                self.phase_since[over_done] = t
                self.phase_end[over_done] = np.where(hold[over_done], self.nominal_until[over_done], np.inf)
            if nominal_done.any():
                self.phase[nominal_done] = UNDERFEED
                self.phase_since[nominal_done] = t
                self.phase_end[nominal_done] = np.inf
                self._cycle_start[nominal_done] = np.nan

        feeding = can_feed & (i_ka > cfg.min_current_ka)
        nom = self.nominal_kg_s(i_ka)
        rate = np.where(feeding, nom * self.rate_factor(), 0.0)
        self.acc += rate * dt / self.shot_mass_kg
        shots = np.floor(self.acc).astype(np.int64)
        np.maximum(shots, 0, out=shots)
        if shots.any():
            self.acc -= shots
            kg = shots * self.shot_mass_kg
            self.shots_total += shots
            self.fed_kg_total += kg
            self._cycle_fed += kg
        self._cycle_nom += np.where(feeding, nom / self.adapt * dt, 0.0)
        return shots, changed

    def add_fed(self, shots: np.ndarray) -> None:
        """Book shots dumped by someone else (quench, preventive) into the mass balance."""
        kg = shots * self.shot_mass_kg
        self.shots_total += shots
        self.fed_kg_total += kg
        self._cycle_fed += kg

    def _close_cycle(self, mask: np.ndarray, t: float) -> None:
        """A slope switch closes a mass-balance cycle: adapt the nominal rate."""
        cfg = self.cfg
        ok = mask & np.isfinite(self._cycle_start) & (self._cycle_nom > 0)
        if ok.any() and cfg.adapt_gain > 0:
            ratio = self._cycle_fed[ok] / self._cycle_nom[ok]
            new = (1.0 - cfg.adapt_gain) * self.adapt[ok] + cfg.adapt_gain * ratio
            self.adapt[ok] = np.clip(new, cfg.adapt_min, cfg.adapt_max)
            self.cycles_adapted += int(ok.sum())
        self._cycle_start[mask] = t
        self._cycle_fed[mask] = 0.0
        self._cycle_nom[mask] = 0.0
