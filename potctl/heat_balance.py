"""Superheat and ledge estimate per cell, and the heat-balance actions that hold them.

Estimate (small, from what a PLC exposes plus the lab's samples):

- **Superheat at a sample**: bath temperature (thermocouple dip) minus the liquidus of the
  sampled bath (``twin.bath.liquidus_c``, Solheim et al. 1996: excess AlF3 from the sample,
  CaF2 from the config, dissolved alumina from the alumina observer, the sample, or an
  assumed value, in that order). Blended into the carried estimate with ``sample_gain``.
- **Between samples**: with a ledge on the side wall, the bath's steady heat balance is
  ``P_bath = (K_top + K_bot)·ΔT + h·A·SH`` (the side heat leaves through the ledge face at
  the liquidus), so superheat moves with the heat reaching the bath
  ``P_bath = I·(U − U_enthalpy) − I²·R_outside`` (voltage × current, measured; the enthalpy
  voltage of the reaction and the busbar/anode-top Joule heat that never reaches the bath
  from the config) as ``ΔSH = ΔP_bath/(h·A + K_top + K_bot)``, lagging it by the bath's
  ``C_th/(h·A)`` (≈ 30 min, ``heat_tau_s``).
- **Ledge** from the shell thermocouple: in steady state the side heat ``h·A·SH`` crosses
  the ledge and the side lining to the shell, so
  ``x = k_ledge·A·((T_liq − T_shell)/(h·A·SH) − R_wall)``.

What it cannot see: the composition change a melting or freezing ledge brings between
samples (the liquidus is taken from the last sample and the AlF3 carried by
``potctl.bath_chemistry``), the alumina's own liquidus effect beyond the observer, heat
taken by new anodes and crust breaking, and (for the ledge) every transient: the shell
lags the ledge by hours and the estimate is a steady-state one. The daily samples pull
the superheat back; the ledge has no measurement but the shell temperature.

Actions (every ``period_s``):

- **resistance-target offset** = amperage feedforward + superheat integral. The
  feedforward keeps the heat reaching the bath at its nominal value when the line current
  moves: with ``U = E0 + R·I``, ``P = I·(E0 − U_enth) + I²·(R − R_outside)`` held at the
  nominal current's value gives the R for the present current (+4 µΩ at −10 %, −3 µΩ at
  +10 % on the reference cell: the bound ``r_offset_max_uohm`` clips it). The integral adds
  ``gain`` of the resistance that brings the heat ``(h·A + K)·(SH* − SH)`` per period when
  the estimate is outside the deadband, rate limited, with anti-windup at the bound. It is
  slow on purpose: the beam follows a new target only once per feed cycle, and the
  estimate's error between samples (±2–3 K) must not make the cells hunt.
- **shell heat-exchanger duty** (only where one is installed, ``hx_max_kw`` > 0): the
  side heat above the nominal one is taken out at the shell so the ledge keeps its
  thickness (``h·A·(SH − SH*)``), plus a slow correction on the ledge estimate
  (``ledge_gain_kw_per_cm``: a thin ledge gets more extraction, a thick one less), within
  ±``hx_max_kw`` (negative: insulating), rate limited. In steady state the exchanger sets
  the ledge, not the superheat (that is the bath's heat input): it cannot replace the
  resistance offset.
"""

from __future__ import annotations

import numpy as np

from potctl.config import HeatBalanceConfig
from twin.bath import liquidus_c

__all__ = ["HeatBalance", "liquidus_of"]


def liquidus_of(alf3_wt_pct: np.ndarray, caf2_wt_pct: float, alumina_wt_pct: np.ndarray) -> np.ndarray:
    """Bath liquidus [°C] per cell (Solheim et al. 1996, ``twin.bath.liquidus_c``); NaN in, NaN out."""
    x = np.asarray(alf3_wt_pct, dtype=np.float64)
    c = np.broadcast_to(np.asarray(alumina_wt_pct, dtype=np.float64), x.shape)
    out = np.full(x.shape, np.nan)
    for k in np.flatnonzero(np.isfinite(x) & np.isfinite(c)):
        out[k] = liquidus_c(float(x[k]), float(caf2_wt_pct), float(c[k]))
    return out


class HeatBalance:
    """Per-cell superheat/ledge estimate and resistance-offset/exchanger actions (module docstring).

    Args:
        n_cells: cells followed.
        cfg: the ``[control.heat]`` settings.
    """

    def __init__(self, n_cells: int, cfg: HeatBalanceConfig) -> None:
        self.cfg = cfg
        n = int(n_cells)
        self.n = n
        #: heat reaching the bath, lagged by ``heat_tau_s`` [kW] (NaN: none yet)
        self.p_bath_kw = np.full(n, np.nan)
        #: superheat estimate [K] and the lagged heat it was last anchored at [kW] (NaN: none)
        self._sh_ref = np.full(n, np.nan)
        self._p_ref = np.full(n, np.nan)
        #: liquidus of the last sample [°C]
        self.liquidus_c = np.full(n, np.nan)
        self.shell_c = np.full(n, np.nan)
        #: resistance-target offset [µΩ] and exchanger duty commanded [kW]
        self.r_offset_uohm = np.zeros(n)
        self.hx_kw = np.full(n, float(min(cfg.hx_base_kw, cfg.hx_max_kw)))
        self._next_t: float | None = None
        self._last_t: float | None = None
        #: pseudo-resistance (U − E0)/I lagged like the heat input [µΩ] (NaN: none yet)
        self.r_lag_uohm = np.full(n, np.nan)
        #: the resistance target without offset [µΩ]; set by the owner
        self.r_base_uohm = np.zeros(n)
        self.e0_v = 1.65
        #: nominal line current per cell [kA] (the resistance target's reference), set by the owner
        self.i_nom_ka = np.full(n, np.nan)
        #: the offset's parts: amperage feedforward and superheat integral [µΩ]
        self.r_ff_uohm = np.zeros(n)
        self.r_int_uohm = np.zeros(n)

    @property
    def hx_installed(self) -> bool:
        return self.cfg.hx_max_kw > 0.0

    @property
    def conductance_kw_per_k(self) -> float:
        return self.cfg.side_conductance_kw_per_k + self.cfg.top_bottom_kw_per_k

    def superheat_k(self) -> np.ndarray:
        """Superheat estimate per cell [K] (NaN: no sample yet)."""
        return self._sh_ref + (self.p_bath_kw - self._p_ref) / self.conductance_kw_per_k

    def ledge_cm(self) -> np.ndarray:
        """Steady-state side-ledge thickness from the shell temperature [cm] (NaN: unknown)."""
        c = self.cfg
        sh = self.superheat_k()
        q_w = np.maximum(c.side_conductance_kw_per_k * sh, 1.0) * 1e3
        with np.errstate(invalid="ignore"):
            x_m = c.k_ledge_w_per_mk * c.ledge_area_m2 * ((self.liquidus_c - self.shell_c) / q_w - c.r_wall_k_per_w)
        return np.where(np.isfinite(x_m), np.maximum(x_m, 0.0) * 100.0, np.nan)

    def heat_input_kw(self, current_ka: np.ndarray, voltage_v: np.ndarray) -> np.ndarray:
        """Heat reaching the bath [kW]: I·(U − U_enthalpy) − I²·R_outside."""
        c = self.cfg
        i = np.asarray(current_ka, dtype=np.float64)
        return i * (np.asarray(voltage_v) - c.enthalpy_voltage_v) - i * i * c.outside_loss_uohm * 1e-3

    def sample(self, bath_temp_c: np.ndarray, liquidus_c: np.ndarray) -> np.ndarray:
        """Take sampled bath temperatures [°C] with the liquidus of the same samples [°C]
        (NaN: none); returns the cells whose superheat was updated."""
        t = np.asarray(bath_temp_c, dtype=np.float64)
        liq = np.asarray(liquidus_c, dtype=np.float64)
        got = np.isfinite(t) & np.isfinite(liq) & np.isfinite(self.p_bath_kw)
        if not got.any():
            return got
        sh_s = t - liq
        now_est = self.superheat_k()
        # before the first sample the cell is taken to run at the target superheat
        prior = np.where(np.isnan(now_est), self.cfg.superheat_target_k, now_est)
        blended = prior + self.cfg.sample_gain * (sh_s - prior)
        self._sh_ref = np.where(got, blended, self._sh_ref)
        self._p_ref = np.where(got, self.p_bath_kw, self._p_ref)
        self.liquidus_c = np.where(got, liq, self.liquidus_c)
        return got

    def set_liquidus(self, liquidus_c: np.ndarray) -> None:
        """Follow a carried liquidus [°C] between samples (NaN leaves a cell's)."""
        liq = np.asarray(liquidus_c, dtype=np.float64)
        self.liquidus_c = np.where(np.isfinite(liq), liq, self.liquidus_c)

    def observe(self, now: float, current_ka: np.ndarray, voltage_v: np.ndarray, shell_c: np.ndarray | None,
                valid: np.ndarray) -> None:  # fmt: skip
        """Lag the heat input of ``valid`` cells by ``heat_tau_s``; keep the shell temperature."""
        dt = 0.0 if self._last_t is None else max(now - self._last_t, 0.0)
        self._last_t = now
        p = self.heat_input_kw(current_ka, voltage_v)
        a = 1.0 if dt <= 0.0 else min(dt / self.cfg.heat_tau_s, 1.0)
        ok = np.asarray(valid, dtype=bool) & np.isfinite(p)
        self.p_bath_kw = np.where(ok, np.where(np.isnan(self.p_bath_kw), p, self.p_bath_kw + a * (p - self.p_bath_kw)),
                                  self.p_bath_kw)  # fmt: skip
        i = np.asarray(current_ka, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = (np.asarray(voltage_v, dtype=np.float64) - self.e0_v) / i * 1e3
        ok &= np.isfinite(r) & (i > 1.0)
        self.r_lag_uohm = np.where(ok, np.where(np.isnan(self.r_lag_uohm), r, self.r_lag_uohm + a * (r - self.r_lag_uohm)),
                                   self.r_lag_uohm)  # fmt: skip
        if shell_c is not None:
            sh = np.asarray(shell_c, dtype=np.float64)
            self.shell_c = np.where(np.isfinite(sh), sh, self.shell_c)

    def act(self, now: float, current_ka: np.ndarray, can_act: np.ndarray) -> np.ndarray:
        """The heat-balance actions due now on ``can_act`` cells (remote, in circuit);
        returns the cells whose resistance offset or exchanger duty changed (all False
        between periods). ``r_offset_uohm`` and ``hx_kw`` hold the new values."""
        c = self.cfg
        changed = np.zeros(self.n, dtype=bool)
        if self._next_t is None:
            self._next_t = now + c.period_s
            return changed
        if now < self._next_t:
            return changed
        self._next_t = now + c.period_s
        sh = self.superheat_k()
        i = np.asarray(current_ka, dtype=np.float64)
        can = np.asarray(can_act, dtype=bool) & (i > 1.0)
        ok = can & np.isfinite(sh)
        lim = c.r_offset_max_uohm
        with np.errstate(invalid="ignore", divide="ignore"):
            # feedforward: the resistance that keeps the bath's heat input at the nominal one
            # at this current, P = I·(E0 − U_enth) + I²·(R − R_outside)
            r_out = c.outside_loss_uohm
            i0 = self.i_nom_ka
            p_nom = i0 * (self.e0_v - c.enthalpy_voltage_v) + i0 * i0 * (self.r_base_uohm - r_out) * 1e-3
            ff = r_out + (p_nom - i * (self.e0_v - c.enthalpy_voltage_v)) / (i * i) * 1e3 - self.r_base_uohm
            # feedback: integrate the superheat error as the resistance that brings the heat
            err = np.where(ok, c.superheat_target_k - sh, 0.0)
            act = ok & (np.abs(err) > c.deadband_k)
            d_r = np.where(act, c.gain * self.conductance_kw_per_k * err / (i * i) * 1e3, 0.0)  # kW/kA² = mΩ
        self.r_ff_uohm = np.where(can & np.isfinite(ff), np.clip(ff, -lim, lim), self.r_ff_uohm)
        step = c.r_offset_rate_uohm_per_h * c.period_s / 3600.0
        d_r = np.clip(d_r, -step, step)
        # anti-windup: the integral stops where the total is at its bound
        room_up = lim - (self.r_ff_uohm + self.r_int_uohm)
        room_dn = -lim - (self.r_ff_uohm + self.r_int_uohm)
        d_r = np.clip(d_r, np.minimum(room_dn, 0.0), np.maximum(room_up, 0.0))
        self.r_int_uohm = np.clip(self.r_int_uohm + d_r, -lim, lim)
        want = np.where(can, self.r_ff_uohm + self.r_int_uohm, self.r_offset_uohm)
        new_r = self.r_offset_uohm + np.clip(want - self.r_offset_uohm, -4.0 * step, 4.0 * step)
        new_r = np.clip(new_r, -lim, lim)
        changed |= np.abs(new_r - self.r_offset_uohm) > 1e-9
        self.r_offset_uohm = new_r
        if self.hx_installed:
            base = min(c.hx_base_kw, c.hx_max_kw)
            want = base + c.side_conductance_kw_per_k * np.where(ok, sh - c.superheat_target_k, 0.0)
            ledge = self.ledge_cm()
            want += np.where(ok & np.isfinite(ledge), c.ledge_gain_kw_per_cm * (c.ledge_target_cm - ledge), 0.0)
            want = np.clip(want, -c.hx_max_kw, c.hx_max_kw)
            step_kw = c.hx_rate_kw_per_h * c.period_s / 3600.0
            new_hx = np.where(ok, self.hx_kw + np.clip(want - self.hx_kw, -step_kw, step_kw), self.hx_kw)
            changed |= np.abs(new_hx - self.hx_kw) > 1e-9
            self.hx_kw = new_hx
        return changed
