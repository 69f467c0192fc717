"""AlF3 control of the bath chemistry, per cell, from the lab's bath samples.

Practice followed (Kvande & Haupin, "Cell voltage in aluminium electrolysis: a practical
approach", JOM 2000, and Kvande, "Process control of aluminium cells", Light Metals 1989;
Taylor, Welch et al. on bath-ratio and superheat control; Entner on AlF3 control from
temperature): plants hold the excess AlF3 of the bath within about ±1 wt % of a target in
10–12 wt % (this controller: target 11 wt %, band ±1 wt %), sample it once a day or every
other day, and set each cell's daily AlF3 addition from

- a **feedforward** of the known consumption: the soda of the alumina fed neutralises AlF3
  (3 Na2O + 4 AlF3 → 2 Na3AlF6 + Al2O3: 1.81 kg AlF3 per kg Na2O; the controller knows
  every acknowledged feeder shot), and the losses to emissions (NaAlF4 vapour, hydrolysis)
  and to sodium uptake by the cathode lining, both growing with bath temperature and with
  the excess AlF3 itself (here linear: ``loss_kg_per_day`` at ``loss_ref_c``,
  ``loss_ref_wt_pct``, + its value per ``loss_t_scale_k`` K, ∝ AlF3);
- a **feedback** on the last sample's error, made up over ``horizon_days``: the mass of
  pure AlF3 that takes bath mass M from x to x* wt % is ``M·(x* − x)/(100 − x*)``;
- an **integral** bias learnt from the sample errors (what the feedforward does not know:
  bath tapped and added at anode changes and tapping, a ledge melting its cryolite into
  the bath), bounded;
- a **temperature** term (Kvande; Entner): a cell hotter than the target liquidus plus
  superheat is about to melt cryolite-rich ledge into its bath, diluting the AlF3, so it
  gets more now.

The daily amount is limited to ``max_kg_per_day`` and spread over the day in additions of
``shot_kg`` (AlF3 feeder shots). Between samples the excess AlF3 is carried with the same
mass balance (``alf3_est_wt_pct``); a new sample is blended in with ``sample_gain``.

What it cannot see: the true bath mass (the nominal one is used), the ledge's own
composition and what it returns when it melts, bath removed with tapped metal or anode
butts. The integral bias and the daily samples take those up. Before a cell's first
sample nothing is commanded (the potroom PLC's own AlF3 schedule stays in charge there;
the first addition stops it, ``potctl.plant.Commands.alf3_kg``); after
``sample_max_age_days`` without a sample only the feedforward and bias run. A cell in
local control gets nothing from the controller (its PLC feeds AlF3 on its own schedule);
its carried estimate then drifts until the next sample resets it.

Not kept across a restart: the estimate, the bias and the plan start again from the next
sample (``PotController.beam_intent`` does not carry them).
"""

from __future__ import annotations

import numpy as np

from potctl.config import BathChemistryConfig

__all__ = ["AlF3Controller", "alf3_to_raise_kg"]


def alf3_to_raise_kg(bath_kg: np.ndarray | float, x_wt_pct: np.ndarray | float, target_wt_pct: float) -> np.ndarray:
    """Pure AlF3 [kg] that takes ``bath_kg`` of bath from ``x_wt_pct`` to ``target_wt_pct``
    excess AlF3 (negative: the AlF3 the bath holds too much of, as an equivalent)."""
    return np.asarray(bath_kg) * (target_wt_pct - np.asarray(x_wt_pct)) / (100.0 - target_wt_pct)


class AlF3Controller:
    """Per-cell AlF3 additions (module docstring).

    Args:
        n_cells: cells followed.
        cfg: the ``[control.bath]`` settings.
    """

    def __init__(self, n_cells: int, cfg: BathChemistryConfig) -> None:
        self.cfg = cfg
        n = int(n_cells)
        self.n = n
        #: carried excess AlF3 estimate [wt %] (NaN: never sampled)
        self.alf3_est_wt_pct = np.full(n, np.nan)
        #: last sample's time [s] and values (NaN: none)
        self.sample_t = np.full(n, -np.inf)
        self.sample_alf3 = np.full(n, np.nan)
        #: learnt consumption bias [kg/day]
        self.bias_kg_per_day = np.zeros(n)
        #: planned daily addition [kg/day] and its parts (feedforward, feedback, temperature)
        self.rate_kg_per_day = np.zeros(n)
        self.ff_kg_per_day = np.zeros(n)
        self.fb_kg_per_day = np.zeros(n)
        self.temp_kg_per_day = np.zeros(n)
        #: alumina fed, smoothed over a day [kg/day] (NaN: no feed seen yet)
        self.feed_kg_per_day = np.full(n, np.nan)
        self._due_kg = np.zeros(n)
        self._feed_t = 0.0
        self._day = np.full(n, -1, dtype=np.int64)
        #: AlF3 added on the present day [kg], and in all [kg]
        self.added_today_kg = np.zeros(n)
        self.added_kg = np.zeros(n)
        self._stale = np.zeros(n, dtype=bool)

    # ------------------------------------------------------------------ model
    def loss_kg_per_day(self, t_bath_c: np.ndarray, x_wt_pct: np.ndarray) -> np.ndarray:
        """Emissions + sodium uptake [kg/day] at bath temperature [°C] and excess AlF3 [wt %]."""
        c = self.cfg
        f = np.maximum(1.0 + (np.asarray(t_bath_c) - c.loss_ref_c) / c.loss_t_scale_k, 0.1)
        return c.loss_kg_per_day * f * np.maximum(np.asarray(x_wt_pct), 0.0) / c.loss_ref_wt_pct

    # ------------------------------------------------------------------ samples
    def sample(self, t_s: float, alf3_wt_pct: np.ndarray) -> np.ndarray:
        """Take sampled excess AlF3 [wt %] per cell (NaN: none for that cell); returns the
        cells whose sample was used. The sample error feeds the bias."""
        c = self.cfg
        x = np.asarray(alf3_wt_pct, dtype=np.float64)
        got = np.isfinite(x) & (x >= 0.0) & (x <= 30.0)
        if not got.any():
            return np.zeros(self.n, dtype=bool)
        first = got & np.isnan(self.alf3_est_wt_pct)
        pred = np.where(first, x, self.alf3_est_wt_pct)
        # the bias learns from what the carried estimate missed since the last sample, in kg/day
        had = got & ~first & np.isfinite(self.sample_t)
        days = np.maximum((t_s - self.sample_t) / 86400.0, 0.25)
        miss = np.where(had, alf3_to_raise_kg(c.bath_mass_kg, x, c.target_wt_pct)
                        - alf3_to_raise_kg(c.bath_mass_kg, pred, c.target_wt_pct), 0.0)  # fmt: skip
        with np.errstate(invalid="ignore", divide="ignore"):
            self.bias_kg_per_day = np.where(had, self.bias_kg_per_day + c.integral_per_day * miss / days,
                                            self.bias_kg_per_day)  # fmt: skip
        lim = c.integral_max_kg_per_day
        np.clip(self.bias_kg_per_day, -lim, lim, out=self.bias_kg_per_day)
        blended = np.where(first, x, pred + c.sample_gain * (x - pred))
        self.alf3_est_wt_pct = np.where(got, blended, self.alf3_est_wt_pct)
        self.sample_alf3 = np.where(got, x, self.sample_alf3)
        self.sample_t = np.where(got, t_s, self.sample_t)
        self._stale[got] = False
        return got

    # ------------------------------------------------------------------ the cycle
    def plan(self, t_bath_est_c: np.ndarray, t_bath_target_c: np.ndarray) -> None:
        """Recompute the daily addition [kg/day] from the carried estimate, the bath
        temperature estimate [°C] (NaN: unknown, no temperature term; the loss at the
        reference temperature) and the temperature the target chemistry wants [°C]."""
        c = self.cfg
        x = self.alf3_est_wt_pct
        t_b = np.where(np.isfinite(t_bath_est_c), t_bath_est_c, c.loss_ref_c)
        feed = np.where(np.isfinite(self.feed_kg_per_day), self.feed_kg_per_day, 0.0)
        xs = np.where(np.isfinite(x), x, c.target_wt_pct)
        self.ff_kg_per_day = c.soda_alf3_kg_per_kg_alumina * feed + self.loss_kg_per_day(t_b, xs)
        fresh = np.isfinite(x) & ~self._stale
        self.fb_kg_per_day = np.where(
            fresh, alf3_to_raise_kg(c.bath_mass_kg, xs, c.target_wt_pct) / c.horizon_days, 0.0
        )
        dt_hot = np.where(np.isfinite(t_bath_est_c) & fresh, t_bath_est_c - t_bath_target_c, 0.0)
        self.temp_kg_per_day = c.temp_gain_kg_per_day_per_k * dt_hot
        rate = self.ff_kg_per_day + self.bias_kg_per_day + self.fb_kg_per_day + self.temp_kg_per_day
        self.rate_kg_per_day = np.where(np.isfinite(x), np.clip(rate, 0.0, c.max_kg_per_day), 0.0)

    def step(self, now: float, dt: float, fed_alumina_kg: np.ndarray, can_add: np.ndarray) -> np.ndarray:
        """Advance by ``dt`` [s]: carry the estimate with the alumina fed [kg] (acknowledged
        shots) and the additions; returns the AlF3 to add now [kg] on ``can_add`` cells (in
        circuit, remote, sampled), in whole ``shot_kg`` additions, at most
        ``max_kg_per_day`` per plant day."""
        c = self.cfg
        n = self.n
        out = np.zeros(n)
        if dt <= 0.0:
            return out
        self._feed_t += dt  # a running mean over the first day, then a one-day EMA
        a = min(dt / min(max(self._feed_t, dt), 86400.0), 1.0)
        rate = np.asarray(fed_alumina_kg, dtype=np.float64) * 86400.0 / dt
        self.feed_kg_per_day = np.where(np.isnan(self.feed_kg_per_day), rate,
                                        self.feed_kg_per_day + a * (rate - self.feed_kg_per_day))  # fmt: skip
        stale = np.isfinite(self.sample_t) & (now - self.sample_t > c.sample_max_age_days * 86400.0)
        self._stale |= stale
        day = int(now // 86400.0)
        newday = self._day != day
        self.added_today_kg[newday] = 0.0
        self._day[newday] = day
        ok = np.asarray(can_add, dtype=bool) & np.isfinite(self.alf3_est_wt_pct)
        self._due_kg = np.where(ok, self._due_kg + self.rate_kg_per_day * dt / 86400.0, 0.0)
        room = np.maximum(c.max_kg_per_day - self.added_today_kg, 0.0)
        n_shots = np.floor(np.minimum(self._due_kg, room) / c.shot_kg + 1e-9)
        out = np.where(ok, n_shots * c.shot_kg, 0.0)
        self._due_kg -= out
        self.added_today_kg += out
        self.added_kg += out
        # carry the estimate: additions in, consumption (feedforward + bias) out
        used = (self.ff_kg_per_day + self.bias_kg_per_day) * dt / 86400.0
        x = self.alf3_est_wt_pct
        m = c.bath_mass_kg
        dx = 100.0 * (out - used) * (1.0 - x / 100.0) / m
        self.alf3_est_wt_pct = np.where(np.isfinite(x), np.clip(x + dx, 0.0, 30.0), x)
        return out
