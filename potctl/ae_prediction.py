"""AE prediction: filtered pseudo-resistance slope and time-to-AE per cell.

The pseudo-resistance R = (U − E0)/I [µΩ] of every cell is averaged over periods of
``sample_period_s`` (1 min by default) into a ring buffer; each period a least-squares
line through the last ``window_samples`` means gives the filtered R (``r_fit``, at the
latest period) and its slope [nΩ/min]. Under underfeed, R rises slowly and then steeply
as alumina nears the AE level (docs/domain.md §2 "Prediction"; 1 mV/min ≈ 8.3 nΩ/min at
120 kA).

Time to AE, two estimates, the smaller wins:

* slope (hyperbolic extrapolation): near the AE the alumina-driven part of R grows
  like ΔR ≈ k/(C − C_AE); with C falling linearly in time, ΔR/(dR/dt) equals the time
  left until C reaches C_AE. ΔR is measured from ``r_ref``, the lowest filtered R since
  the last overfeed (alumina-rich reference).
* observer: an EKF alumina estimate and the planned feed rate give the time until
  the estimate reaches the critical concentration (``twin.observer``).

An alarm is raised when the time to AE drops under ``alarm_horizon_s``, the slope
exceeds ``slope_alarm_nohm_per_min`` (significantly), R stands more than
``excess_alarm_uohm`` above its alumina-rich reference (slow drifts, where the slope
stays small until the last minutes) or the estimated alumina falls below
``alumina_alarm_wt_pct``; it clears with hysteresis.

Beam moves make a step in R, not a trend: ``rebase`` cells drop the periods around the
move and shift their history by the step, so the slope survives ACD control.
"""

from __future__ import annotations

import numpy as np

from potctl.config import PredictionConfig

__all__ = ["AEPredictor"]

_EMPTY = np.zeros(0, dtype=np.int64)


class AEPredictor:
    """Per-cell R-slope tracker and AE predictor (NumPy state, one update per scan).

    Args:
        n_cells: number of cells.
        cfg: prediction settings.
    """

    def __init__(self, n_cells: int, cfg: PredictionConfig | None = None) -> None:
        self.cfg = cfg or PredictionConfig()
        n = int(n_cells)
        w = self.cfg.window_samples
        self.n = n
        self._sum = np.zeros(n)
        self._cnt = np.zeros(n, dtype=np.int64)
        self._period_end: float | None = None
        self._scans_per_period = 0
        self._scan_count = 0
        self._buf = np.full((n, w), np.nan)
        self._buf_t = np.full(w, np.nan)
        self._head = 0  # next column to write
        self._discard = np.zeros(n, dtype=np.int64)
        self._rebase = np.zeros(n, dtype=bool)
        #: samples in each cell's fit
        self.n_fit = np.zeros(n, dtype=np.int64)
        #: filtered R at the latest period [µΩ]
        self.r_fit = np.full(n, np.nan)
        self._r_fit_t = np.full(n, np.nan)
        #: filtered slope of R [nΩ/min] and its standard error
        self.slope = np.full(n, np.nan)
        self.slope_se = np.full(n, np.nan)
        #: scatter of the period means about the fit [µΩ] (noise level of the cell)
        self.resid_std = np.full(n, np.nan)
        self._quiet_until = np.full(n, -np.inf)
        #: alumina-rich reference R (lowest r_fit since the last overfeed/reset) [µΩ]
        self.r_ref = np.full(n, np.nan)
        #: time of the latest period [s]
        self.t_fit: float = float("nan")
        #: time to AE [s] (inf when none is in sight)
        self.time_to_ae_s = np.full(n, np.inf)
        self.tta_slope_s = np.full(n, np.inf)
        self.tta_obs_s = np.full(n, np.inf)
        #: prediction alarm per cell, and when it was raised [s]
        self.alarm = np.zeros(n, dtype=bool)
        self.alarm_since = np.full(n, np.nan)
        self.alarms_raised = 0
        self._persist = np.zeros(n, dtype=np.int64)
        self._sig_cache: dict[tuple[float, float], np.ndarray] = {}
        #: latest observer alumina estimate [wt %] (None without observer)
        self.alumina_wt_pct: np.ndarray | None = None

    # ------------------------------------------------------------------ control
    def reset(self, mask: np.ndarray) -> None:
        """Forget the R history of ``mask`` cells (AE, tapping, anode change)."""
        if not np.any(mask):
            return
        self._buf[mask] = np.nan
        self._sum[mask] = 0.0
        self._cnt[mask] = 0
        self._rebase[mask] = False
        self.n_fit[mask] = 0
        self.r_fit[mask] = np.nan
        self._r_fit_t[mask] = np.nan
        self.slope[mask] = np.nan
        self.slope_se[mask] = np.nan
        self.resid_std[mask] = np.nan
        self._quiet_until[mask] = -np.inf
        self._sig_cache.clear()
        self.r_ref[mask] = np.nan
        self.tta_slope_s[mask] = np.inf
        self.time_to_ae_s[mask] = np.minimum(self.tta_obs_s[mask], np.inf)
        self.clear_alarm(mask)

    def rebase(self, mask: np.ndarray) -> None:
        """A beam move happened on ``mask`` cells: drop 2 periods, then shift the history."""
        if not np.any(mask):
            return
        self._discard[mask] = 2
        self._quiet_until[mask] = np.inf  # set when the rebase is applied
        self._sum[mask] = 0.0
        self._cnt[mask] = 0
        self._rebase |= mask

    def reset_reference(self, mask: np.ndarray) -> None:
        """Restart the alumina-rich reference (call when overfeed starts)."""
        if np.any(mask):
            self.r_ref[mask] = self.r_fit[mask]

    def clear_alarm(self, mask: np.ndarray) -> None:
        self._persist[mask] = 0
        self.alarm[mask] = False
        self.alarm_since[mask] = np.nan

    # ------------------------------------------------------------------ update
    def update(
        self,
        t: float,
        r_uohm: np.ndarray,
        valid: np.ndarray,
        alumina_wt_pct: np.ndarray | None = None,
        tta_obs_s: np.ndarray | None = None,
    ) -> np.ndarray:
        """Add one scan of pseudo-resistance; returns the cells whose alarm was just raised.

        Args:
            t: scan time [s].
            r_uohm: [n] pseudo-resistance (U − E0)/I [µΩ].
            valid: [n] usable sample (cell in normal operation, not in AE).
            alumina_wt_pct: [n] observer alumina estimate [wt %] (optional).
            tta_obs_s: [n] observer time to AE at the present feed rate [s] (optional).
        """
        cfg = self.cfg
        if self._period_end is None:
            self._period_end = (np.floor(t / cfg.sample_period_s) + 1.0) * cfg.sample_period_s
        ok = valid & np.isfinite(r_uohm)
        self._sum += np.where(ok, r_uohm, 0.0)
        self._cnt += ok
        self._scan_count += 1
        new = _EMPTY
        if t + 1e-9 >= self._period_end:
            new = self._close_period(self._period_end - 0.5 * cfg.sample_period_s)
            self._period_end += cfg.sample_period_s * max(
                1.0, np.floor((t + 1e-9 - self._period_end) / cfg.sample_period_s) + 1.0
            )
        if alumina_wt_pct is not None or tta_obs_s is not None:
            if alumina_wt_pct is not None:
                self.alumina_wt_pct = np.asarray(alumina_wt_pct, dtype=np.float64)
            if tta_obs_s is not None:
                self.tta_obs_s = np.asarray(tta_obs_s, dtype=np.float64)
            self.time_to_ae_s = np.minimum(self.tta_slope_s, self.tta_obs_s)
            raised = self._judge(t, valid, period=False)
            new = raised if new.size == 0 else np.union1d(new, raised)
        return new

    def _judge(self, t: float, valid: np.ndarray, period: bool) -> np.ndarray:
        """Raise/clear alarms from the current estimates; returns newly raised cells.

        Slope-based conditions must hold for ``alarm_persist_periods`` consecutive
        periods (``period`` True marks a period close); observer conditions act at once.
        """
        cfg = self.cfg
        slope_cond = (self.tta_slope_s < cfg.alarm_horizon_s) | self.significant(
            cfg.slope_alarm_nohm_per_min, cfg.z_alarm
        )
        with np.errstate(invalid="ignore"):
            # slow drifts: the level, clearly above the cell's own noise
            slope_cond |= (self.r_fit - self.r_ref) > cfg.excess_alarm_uohm + 2.0 * self.resid_std
        # a rebased history (beam move, operation) needs a few periods before it is trusted
        slope_cond &= t >= self._quiet_until
        if period:
            self._persist = np.where(slope_cond, self._persist + 1, 0)
        cond = slope_cond & (self._persist >= cfg.alarm_persist_periods)
        s = np.nan_to_num(self.slope, nan=-np.inf)
        calm = (self.time_to_ae_s > cfg.clear_horizon_s) & (s < 0.5 * cfg.slope_alarm_nohm_per_min)
        with np.errstate(invalid="ignore"):
            calm &= ~((self.r_fit - self.r_ref) > 0.7 * cfg.excess_alarm_uohm)
        cond |= self.tta_obs_s < cfg.alarm_horizon_s
        c = self.alumina_wt_pct
        if c is not None:
            cond |= c < cfg.alumina_alarm_wt_pct
            calm &= ~(c < cfg.alumina_alarm_wt_pct + 0.15)
        clear = self.alarm & calm
        if clear.any():
            self.clear_alarm(clear)
        raise_ = cond & valid & ~self.alarm
        if raise_.any():
            idx = np.flatnonzero(raise_)
            self.alarm[idx] = True
            self.alarm_since[idx] = t
            self.alarms_raised += idx.size
            return idx
        return _EMPTY

    def _close_period(self, t_mid: float) -> np.ndarray:
        cfg = self.cfg
        expected = max(self._scan_count, 1)
        enough = self._cnt >= max(1, expected // 2)
        mean = np.where(enough & (self._discard == 0), self._sum / np.maximum(self._cnt, 1), np.nan)
        self._discard = np.maximum(self._discard - 1, 0)
        self._sum[:] = 0.0
        self._cnt[:] = 0
        self._scan_count = 0

        # rebase cells with a valid new value: shift history by the step the move made
        rb = self._rebase & ~np.isnan(mean)
        if rb.any():
            idx = np.flatnonzero(rb)
            fit_ok = np.isfinite(self.slope[idx]) & np.isfinite(self.r_fit[idx]) & np.isfinite(self._r_fit_t[idx])
            dt_min = (t_mid - self._r_fit_t[idx]) / 60.0
            pred = self.r_fit[idx] + self.slope[idx] * 1e-3 * dt_min
            off = np.where(fit_ok, mean[idx] - pred, 0.0)
            self._buf[idx] += off[:, None]
            self.r_ref[idx] += off
            self._quiet_until[idx] = t_mid + self.cfg.rebase_quiet_s
            nofit = idx[~fit_ok]
            self._buf[nofit] = np.nan
            self.r_ref[nofit] = np.nan
            self._rebase[idx] = False

        h = self._head
        self._buf[:, h] = mean
        self._buf_t[h] = t_mid
        self._head = (h + 1) % cfg.window_samples
        self.t_fit = t_mid

        # least-squares line per cell through the valid samples (x in minutes, 0 = latest)
        x = (self._buf_t - t_mid) / 60.0
        y = self._buf
        w = ~np.isnan(y) & ~np.isnan(x)[None, :]
        xw = np.where(w, x[None, :], 0.0)
        yw = np.where(w, y, 0.0)
        n = w.sum(axis=1)
        sx = xw.sum(axis=1)
        sy = yw.sum(axis=1)
        sxx = (xw * xw).sum(axis=1)
        sxy = (xw * yw).sum(axis=1)
        den = n * sxx - sx * sx
        good = (n >= cfg.min_samples) & (den > 1e-12) & ~np.isnan(mean)
        with np.errstate(divide="ignore", invalid="ignore"):
            b = np.where(good, (n * sxy - sx * sy) / den, np.nan)  # µΩ/min
            a = np.where(good, (sy - b * sx) / n, np.nan)  # at x = 0
        # standard error of the slope from the fit residuals (noise differs per cell and
        # grows a lot after an anode change): a slope counts only when it is significant
        with np.errstate(divide="ignore", invalid="ignore"):
            resid = np.where(w, y - (a[:, None] + b[:, None] * x[None, :]), 0.0)
            s2 = (resid * resid).sum(axis=1) / np.maximum(n - 2, 1)
            sxx_c = sxx - sx * sx / np.maximum(n, 1)
            se = np.sqrt(s2 / sxx_c) * 1e3  # nΩ/min
        self._sig_cache.clear()
        self.n_fit = n
        # a period without a usable fit (data gap around a beam move, tapping or an anode
        # change) holds the last estimate for up to ``max_hold_s``, so the rebase after the
        # gap can carry the history (and the alumina-rich reference) across the step
        stale = ~good & ((t_mid - self._r_fit_t) > cfg.max_hold_s)
        self.slope_se = np.where(good, se, np.where(stale, np.nan, self.slope_se))
        self.resid_std = np.where(good, np.sqrt(s2), np.where(stale, np.nan, self.resid_std))
        self.slope = np.where(good, b * 1e3, np.where(stale, np.nan, self.slope))
        self.r_fit = np.where(good, a, np.where(stale, np.nan, self.r_fit))
        self._r_fit_t = np.where(good, t_mid, np.where(stale, np.nan, self._r_fit_t))
        self.r_ref = np.where(np.isnan(self.r_ref), self.r_fit, np.fmin(self.r_ref, np.where(good, self.r_fit, np.inf)))

        # time to AE by hyperbolic extrapolation
        excess = self.r_fit - self.r_ref
        s = self.slope
        with np.errstate(invalid="ignore"):
            hot = self.significant(cfg.min_slope_nohm_per_min, cfg.z_alarm) & (
                excess > cfg.min_excess_uohm + 2.0 * self.resid_std
            )
        with np.errstate(divide="ignore", invalid="ignore"):
            self.tta_slope_s = np.where(hot, excess * 1e3 / s * 60.0, np.inf)
        self.time_to_ae_s = np.minimum(self.tta_slope_s, self.tta_obs_s)
        return self._judge(t_mid + 0.5 * cfg.sample_period_s, self._valid_fit(), period=True)

    def significant(self, threshold_nohm_per_min: float, z: float | None = None) -> np.ndarray:
        """Cells whose slope exceeds ``threshold`` and is ``z`` (default ``z_slope``)
        standard errors above 0."""
        zz = self.cfg.z_slope if z is None else z
        key = (threshold_nohm_per_min, zz)
        hit = self._sig_cache.get(key)
        if hit is not None:
            return hit
        with np.errstate(invalid="ignore"):
            out = (self.slope > threshold_nohm_per_min) & (self.slope > zz * self.slope_se)  # NaN → False
        self._sig_cache[key] = out
        return out

    def _valid_fit(self) -> np.ndarray:
        return np.isfinite(self.slope) | np.isfinite(self.tta_obs_s)
