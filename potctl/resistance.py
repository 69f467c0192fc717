"""Resistance (ACD) control: anode-beam moves when the filtered R leaves its deadband.

The controlled variable is the pseudo-resistance R = (U − E0)/I [µΩ] (docs/domain.md),
filtered by the slope tracker. When |R − R_target| exceeds the deadband the beam is
moved by ``gain·(R_target − R)/uohm_per_mm`` (≈ 0.2 µΩ/mm at 120 kA: 24 mV/mm), clipped
to [``min_move_mm``, ``max_move_mm``]. Limits (docs/domain.md §2 "Resistance control"):

* at least ``min_interval_s`` between two moves of a cell and at most
  ``max_travel_mm_per_day`` of travel per cell and calendar day;
* anti-hunting: no move opposite to the previous one within ``reverse_lockout_s``;
* lock-outs (``lock(mask, until)``) after feed-phase switches, AEs, tapping, anode
  changes and line-current changes; after tapping (metal level drops, ACD grows by
  centimetres) and anode changes one larger correction of up to
  ``max_move_after_operation_mm`` is allowed in a window after the lock; the caller also withholds cells during the lean
  part of an underfeed, during an AE/quench, tapping and anode change;
* after an anode change the target is raised by ``anode_change_increment_uohm``,
  fading linearly over ``anode_change_increment_s`` (a new anode runs cold);
* a beam restore the quench could not make is handed over (``take_over``): the cell's
  lock is lifted and the post-operation correction window opens, so the beam is brought
  back from R (one larger correction, as after tapping) instead of an hour later.
"""

from __future__ import annotations

import numpy as np

from potctl.config import ResistanceConfig

__all__ = ["ResistanceController"]


class ResistanceController:
    """Per-cell ACD controller (NumPy state).

    Args:
        n_cells: number of cells.
        target_uohm: [n] or scalar target pseudo-resistance [µΩ].
        cfg: resistance settings.
    """

    def __init__(self, n_cells: int, target_uohm: np.ndarray | float, cfg: ResistanceConfig | None = None) -> None:
        self.cfg = cfg or ResistanceConfig()
        n = int(n_cells)
        self.n = n
        self.target_uohm = np.broadcast_to(np.asarray(target_uohm, dtype=np.float64), (n,)).copy()
        self.lock_until = np.full(n, -np.inf)
        self.last_move_t = np.full(n, -np.inf)
        self.last_dir = np.zeros(n, dtype=np.int8)
        self._day = np.zeros(n, dtype=np.int64) - 1
        self.travel_today_mm = np.zeros(n)
        self._ac_end = np.full(n, -np.inf)
        self._tgt_cache: tuple[float, np.ndarray] | None = None
        self.boost_from = np.full(n, np.inf)
        self.boost_until = np.full(n, -np.inf)
        self.moves_total = np.zeros(n, dtype=np.int64)
        self.reversals = np.zeros(n, dtype=np.int64)

    def lock(self, mask: np.ndarray, until: float) -> None:
        """No moves on ``mask`` cells before ``until`` [s] (keeps any later lock)."""
        self.lock_until = np.where(mask, np.maximum(self.lock_until, until), self.lock_until)

    def operation_ended(self, mask: np.ndarray, t: float, lock_s: float) -> None:
        """Tapping/anode change over on ``mask`` cells: lock for ``lock_s``, then allow one
        larger correction (the metal level or anode set just changed by a step)."""
        self.lock(mask, t + lock_s)
        self.boost_from = np.where(mask, t + lock_s, self.boost_from)
        self.boost_until = np.where(mask, t + lock_s + self.cfg.operation_window_s, self.boost_until)

    def take_over(self, mask: np.ndarray, t: float) -> None:
        """``mask`` cells get a beam restore handed over at ``t`` [s]: lift their lock-out
        (the AE lock included), open the correction window (``max_move_after_operation_mm``,
        moves 600 s apart at most) for ``operation_window_s``, and forget the direction of
        the last move (the owed move answers the quench, not an earlier correction)."""
        mask = np.asarray(mask, dtype=bool)
        self.lock_until = np.where(mask, t, self.lock_until)
        self.boost_from = np.where(mask, t, self.boost_from)
        self.boost_until = np.where(mask, t + self.cfg.operation_window_s, self.boost_until)
        self.last_dir = np.where(mask, 0, self.last_dir).astype(np.int8)

    def boosted(self, t: float) -> np.ndarray:
        """Cells inside their post-operation correction window."""
        return (t >= self.boost_from) & (t < self.boost_until)

    def anode_changed(self, mask: np.ndarray, t: float) -> None:
        """Mark the end of an anode change on ``mask`` cells (starts the target increment)."""
        self._ac_end = np.where(mask, t, self._ac_end)
        self._tgt_cache = None

    def set_target(self, target_uohm: np.ndarray | float) -> None:
        """A new target R [µΩ] per cell (the heat-balance offset moves it)."""
        self.target_uohm = np.broadcast_to(np.asarray(target_uohm, dtype=np.float64), (self.n,)).copy()
        self._tgt_cache = None

    def effective_target(self, t: float) -> np.ndarray:
        """Target R [µΩ] including the fading post-anode-change increment."""
        cfg = self.cfg
        if cfg.anode_change_increment_s <= 0 or cfg.anode_change_increment_uohm <= 0:
            return self.target_uohm
        if self._tgt_cache is not None and self._tgt_cache[0] == t:
            return self._tgt_cache[1]
        frac = 1.0 - (t - self._ac_end) / cfg.anode_change_increment_s
        np.clip(frac, 0.0, 1.0, out=frac)
        out = self.target_uohm + cfg.anode_change_increment_uohm * frac
        self._tgt_cache = (t, out)
        return out

    def step(self, t: float, r_filt_uohm: np.ndarray, eligible: np.ndarray) -> np.ndarray:
        """Beam moves [mm] (+ raises the anodes) for this scan.

        Args:
            t: time [s].
            r_filt_uohm: [n] filtered pseudo-resistance (NaN: unknown, no move).
            eligible: [n] cells the caller allows to move now.
        """
        cfg = self.cfg
        moves = np.zeros(self.n)
        err = r_filt_uohm - self.effective_target(t)
        cand = eligible & np.isfinite(err) & (np.abs(err) > cfg.deadband_uohm)
        boost = self.boosted(t)
        interval = np.where(boost, min(cfg.min_interval_s, 600.0), cfg.min_interval_s)
        cand &= (t >= self.lock_until) & (t - self.last_move_t >= interval)
        if not cand.any():
            return moves
        idx = np.flatnonzero(cand)
        want = -cfg.gain * err[idx] / cfg.uohm_per_mm
        max_mv = np.where(boost[idx], cfg.max_move_after_operation_mm, cfg.max_move_mm)
        mag = np.clip(np.abs(want), cfg.min_move_mm, max_mv)
        direction = np.sign(want).astype(np.int8)
        # anti-hunting: no reversal shortly after a move the other way
        rev = (direction != self.last_dir[idx]) & (self.last_dir[idx] != 0)
        blocked = rev & (t - self.last_move_t[idx] < cfg.reverse_lockout_s)
        # daily travel budget
        day = int(t // 86400.0)
        newday = self._day[idx] != day
        self.travel_today_mm[idx[newday]] = 0.0
        self._day[idx] = day
        room = cfg.max_travel_mm_per_day - self.travel_today_mm[idx]
        mag = np.minimum(mag, np.maximum(room, 0.0))
        mag = np.round(mag * 2.0) / 2.0  # 0.5 mm resolution
        go = ~blocked & (mag >= max(cfg.min_move_mm, 0.5))
        idx, mag, direction, rev = idx[go], mag[go], direction[go], rev[go]
        if idx.size == 0:
            return moves
        moves[idx] = direction * mag
        self.travel_today_mm[idx] += mag
        self.reversals[idx] += rev
        self.last_dir[idx] = direction
        self.last_move_t[idx] = t
        self.moves_total[idx] += 1
        return moves
