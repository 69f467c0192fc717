"""Anode-effect detection on every cell-voltage sample, vectorised over all cells.

High-voltage AE (IPCC/IAI definition, docs/domain.md §2): the cell voltage rises above
``hv_threshold_v`` (8 V) for ``confirm_samples`` consecutive samples (robust to one
noisy sample; at a 1 s scan an AE is confirmed on its 2nd sample). Its start is
back-dated to the first sample above the threshold. The first sample above the threshold
is reported as ``suspected``, so that the quench can dump its feed at once (harmless if
the sample was noise) while beam action waits for the confirmation. It ends when the voltage stays
below ``end_threshold_v`` (hysteresis, < 8 V) for ``end_hold_s``; the end is back-dated
to the first sample of that quiet stretch, so the duration counts the time spent at
AE voltage (the IPCC AE-minutes).

Low-voltage AE (LVAE, < 8 V): the voltage signature of a partial/non-propagating AE
is a step of the cell voltage well above the cell's own baseline (tracked as a slowly
filtered pseudo-resistance R = (U − E0)/I, so line-current changes do not fool it)
that persists for ``lv_confirm_s``. Cells in tapping or anode change (``quiet``) are
not judged for LVAE and do not update their baseline.

Each AE becomes an :class:`AERecord` with start, detection time, end, duration, peak
voltage and the overvoltage integral ∫(U − U_base)dt needed for the IPCC overvoltage
method.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from potctl.config import E0_V, DetectionConfig

__all__ = ["AEDetector", "AERecord", "DetectionStep"]

_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass(slots=True)
class AERecord:
    """One anode effect of one cell.

    Attributes:
        cell: cell index.
        kind: ``"HV"`` (U > 8 V) or ``"LV"`` (low-voltage signature).
        start_s: first sample of the AE [s].
        detect_s: time the detector confirmed it [s].
        end_s: first sample after the AE (NaN while active) [s].
        peak_v: highest cell voltage during the AE [V].
        overvoltage_vs: ∫(U − U_baseline) dt over the AE [V·s].
        forced_end: True when the AE was closed because the cell left the circuit or
            lost current (cut-out, rectifier trip), not by its voltage.
    """

    cell: int
    kind: str
    start_s: float
    detect_s: float
    end_s: float = float("nan")
    peak_v: float = 0.0
    overvoltage_vs: float = 0.0
    forced_end: bool = False

    @property
    def active(self) -> bool:
        return bool(np.isnan(self.end_s))

    @property
    def duration_s(self) -> float:
        """Duration [s] (NaN while active)."""
        return self.end_s - self.start_s

    @property
    def latency_s(self) -> float:
        """Detection delay after the first AE sample [s]."""
        return self.detect_s - self.start_s


@dataclass(slots=True)
class DetectionStep:
    """Cells whose AE state changed at this sample (indices)."""

    started: np.ndarray
    ended: np.ndarray
    lv_started: np.ndarray
    lv_ended: np.ndarray
    #: cells whose voltage went above the HV threshold at this sample, not yet confirmed
    #: (``confirm_samples`` > 1): the quench may feed on this, beam action waits
    suspected: np.ndarray = field(default_factory=lambda: _EMPTY)


class AEDetector:
    """Per-cell HV/LV anode-effect detector with hysteresis (state held in NumPy arrays).

    Args:
        n_cells: number of cells.
        cfg: detection settings.
        e0_v: back-EMF of the pseudo-resistance [V].
    """

    def __init__(self, n_cells: int, cfg: DetectionConfig | None = None, e0_v: float = E0_V) -> None:
        self.cfg = cfg or DetectionConfig()
        self.e0 = float(e0_v)
        n = int(n_cells)
        self.n = n
        # HV state
        self.active = np.zeros(n, dtype=bool)
        self._count = np.zeros(n, dtype=np.int64)
        self._first_above = np.full(n, np.nan)
        self._below_since = np.full(n, np.nan)
        self.peak_v = np.zeros(n)
        self._ov = np.zeros(n)
        # LV state
        self.lv_active = np.zeros(n, dtype=bool)
        self._lv_since = np.full(n, np.nan)
        self._lv_below = np.full(n, np.nan)
        #: slow baseline of the pseudo-resistance [µΩ] (NaN until first valid sample)
        self.r_base = np.full(n, np.nan)
        self._t_last: float | None = None
        self._open: dict[int, AERecord] = {}
        self._open_lv: dict[int, AERecord] = {}
        #: finished AEs in order of their end
        self.records: list[AERecord] = []

    # ------------------------------------------------------------------ queries
    def open_records(self) -> list[AERecord]:
        """AEs in progress (HV then LV)."""
        return list(self._open.values()) + list(self._open_lv.values())

    def open_record(self, cell: int) -> AERecord:
        """The HV AE in progress on ``cell`` (KeyError if none)."""
        return self._open[cell]

    def all_records(self) -> list[AERecord]:
        """Finished and ongoing AEs."""
        return self.records + self.open_records()

    def baseline_voltage(self, i_ka: np.ndarray) -> np.ndarray:
        """Expected normal cell voltage at ``i_ka`` from the learned baseline [V]."""
        return self.e0 + self.r_base * 1e-3 * i_ka

    @property
    def pending(self) -> np.ndarray:
        """Cells above the HV threshold whose AE is not confirmed yet."""
        return (self._count > 0) & ~self.active

    def below_end_threshold(self) -> np.ndarray:
        """Active HV AEs whose voltage already went back below the end threshold."""
        return self.active & ~np.isnan(self._below_since)

    # ------------------------------------------------------------------ update
    def update(
        self,
        t: float,
        u: np.ndarray,
        i_ka: np.ndarray,
        valid: np.ndarray,
        quiet: np.ndarray | None = None,
        lost: np.ndarray | None = None,
    ) -> DetectionStep:
        """Judge one voltage sample of every cell.

        Args:
            t: sample time [s].
            u: [n] cell voltages [V].
            i_ka: [n] current through each cell [kA] (its line current).
            valid: [n] sample usable (good tag quality, cell in circuit, line energised).
            quiet: [n] cells in tapping / anode change (no LVAE, baseline frozen).
            lost: [n] cells that lost current or left the circuit: open AEs close now.

        Returns:
            the cells whose HV/LV AE started or ended at this sample.
        """
        cfg = self.cfg
        dt = 0.0 if self._t_last is None else max(t - self._t_last, 0.0)
        self._t_last = t
        u = np.asarray(u, dtype=np.float64)
        live = valid & (i_ka > cfg.min_current_ka)

        # --- HV onset: consecutive samples above the threshold
        hv = live & (u > cfg.hv_threshold_v)
        self._count = np.where(hv, self._count + 1, 0)
        first = hv & (self._count == 1)
        if first.any():
            self._first_above[first] = t
        suspected = np.flatnonzero(first & ~self.active) if cfg.confirm_samples > 1 else _EMPTY
        start = hv & ~self.active & (self._count >= cfg.confirm_samples)

        started = _EMPTY
        ended = _EMPTY
        lv_started = _EMPTY
        lv_ended = _EMPTY

        # --- HV end, peak and overvoltage of active AEs
        if self.active.any():
            act = self.active & live
            low = act & (u < cfg.end_threshold_v)
            newlow = low & np.isnan(self._below_since)
            self._below_since[newlow] = t
            self._below_since[act & ~low] = np.nan
            np.maximum(self.peak_v, np.where(act, u, 0.0), out=self.peak_v)
            ubase = np.where(np.isnan(self.r_base), u, self.baseline_voltage(i_ka))
            self._ov += np.where(act & ~low, (u - ubase) * dt, 0.0)
            done = self.active & (t - self._below_since >= cfg.end_hold_s - 1e-9)
            forced = self.active & ~done & (lost if lost is not None else False)
            if done.any() or np.any(forced):
                ended = np.flatnonzero(done | forced)
                for k in ended:
                    rec = self._open.pop(int(k))
                    rec.end_s = float(self._below_since[k]) if done[k] else t
                    rec.forced_end = bool(forced[k])
                    rec.peak_v = float(self.peak_v[k])
                    rec.overvoltage_vs = float(self._ov[k])
                    self.records.append(rec)
                self.active[ended] = False
                self._below_since[ended] = np.nan

        if start.any():
            started = np.flatnonzero(start)
            for k in started:
                kk = int(k)
                t0 = float(self._first_above[k])
                if kk in self._open_lv:  # an LVAE that propagated into a full AE
                    rec = self._open_lv.pop(kk)
                    rec.end_s = t0
                    self.records.append(rec)
                    self.lv_active[k] = False
                    self._lv_since[k] = np.nan
                    self._lv_below[k] = np.nan
                    lv_ended = np.append(lv_ended, kk)
                self._open[kk] = AERecord(cell=kk, kind="HV", start_s=t0, detect_s=t)
            self.active[started] = True
            self._below_since[started] = np.nan
            self.peak_v[started] = u[started]
            # overvoltage of the samples before confirmation
            ubase = np.where(np.isnan(self.r_base), u, self.baseline_voltage(i_ka))
            self._ov[started] = (u - ubase)[started] * (t - self._first_above[started] + dt)

        # --- low-voltage AE from the signature
        pending_lv = ~np.isnan(self._lv_since)
        if self.cfg.lv_enabled:
            lv_started, lv_end2 = self._update_lv(t, dt, u, i_ka, live, hv, quiet, lost)
            if lv_end2.size:
                lv_ended = np.concatenate([lv_ended, lv_end2])
            pending_lv = ~np.isnan(self._lv_since)

        # --- baseline of normal cells (frozen during events and tapping/anode change)
        normal = live & ~hv & ~self.active & ~self.lv_active & ~pending_lv & (self._count == 0)
        if quiet is not None:
            normal &= ~quiet
        r = (u - self.e0) / np.maximum(i_ka, 1e-6) * 1e3
        fresh = normal & np.isnan(self.r_base)
        if fresh.any():
            self.r_base[fresh] = r[fresh]
        if dt > 0.0:
            alpha = min(dt / cfg.baseline_tau_s, 1.0)
            self.r_base = np.where(normal, self.r_base + alpha * (r - self.r_base), self.r_base)
        return DetectionStep(started, ended, lv_started, lv_ended, suspected)

    def _update_lv(
        self,
        t: float,
        dt: float,
        u: np.ndarray,
        i_ka: np.ndarray,
        live: np.ndarray,
        hv: np.ndarray,
        quiet: np.ndarray | None,
        lost: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.cfg
        ubase = self.baseline_voltage(i_ka)
        excess = u - ubase  # NaN where no baseline yet
        judge = live & ~hv & ~self.active & ~np.isnan(excess)
        if quiet is not None:
            judge &= ~quiet
        above = judge & (excess > cfg.lv_delta_v)
        hold = judge & (excess > cfg.lv_end_delta_v)
        pending = ~np.isnan(self._lv_since) & ~self.lv_active
        # start pending on a clear excess, keep it while above the lower (hysteresis) level
        newp = above & ~pending & ~self.lv_active
        if newp.any():
            self._lv_since[newp] = t
        drop = pending & ~hold
        if drop.any():
            self._lv_since[drop] = np.nan
        pending = ~np.isnan(self._lv_since) & ~self.lv_active
        conf = pending & (t - self._lv_since >= cfg.lv_confirm_s - 1e-9)
        started = _EMPTY
        ended = _EMPTY
        if conf.any():
            started = np.flatnonzero(conf)
            for k in started:
                self._open_lv[int(k)] = AERecord(
                    cell=int(k), kind="LV", start_s=float(self._lv_since[k]), detect_s=t, peak_v=float(u[k])
                )
            self.lv_active[started] = True
        if self.lv_active.any():
            act = self.lv_active
            for k in np.flatnonzero(act & live):
                rec = self._open_lv[int(k)]
                rec.peak_v = max(rec.peak_v, float(u[k]))
                rec.overvoltage_vs += float(excess[k]) * dt
            low = act & live & ~np.isnan(excess) & (excess < cfg.lv_end_delta_v)
            newlow = low & np.isnan(self._lv_below)
            self._lv_below[newlow] = t
            self._lv_below[act & live & ~low] = np.nan
            done = act & (t - self._lv_below >= cfg.lv_end_hold_s - 1e-9)
            forced = act & ~done & (lost if lost is not None else False)
            if done.any() or np.any(forced):
                ended = np.flatnonzero(done | forced)
                for k in ended:
                    rec = self._open_lv.pop(int(k))
                    rec.end_s = float(self._lv_below[k]) if done[k] else t
                    rec.forced_end = bool(forced[k])
                    self.records.append(rec)
                self.lv_active[ended] = False
                self._lv_since[ended] = np.nan
                self._lv_below[ended] = np.nan
        return started, ended
