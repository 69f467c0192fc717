"""PFC accounting: IPCC 2006 Tier 2 slope method for point-fed prebake cells (CWPB).

docs/domain.md §3:

* AEM = AE frequency × mean duration = AE-minutes per cell-day;
* CF4 [kg/t Al] = SEF × AEM with SEF = 0.143 (kg CF4/t Al)/(AE-min/cell-day);
* C2F6 = 0.121 × CF4;
* CO2-eq with AR5 GWP-100: CF4 6630, C2F6 11100.

Worked example (docs/domain.md §3): AEM 0.1 → 0.0143 kg CF4 + 0.00173 kg C2F6 per t
Al → 114.0 kg CO2e/t.

Only high-voltage AEs (U > 8 V) count towards the Tier 2 slope method; LVAE minutes are
reported separately. Metal production is estimated from the measured current of each
cell in circuit: 0.33557 kg/(kA·h) × CE (docs/domain.md §0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from potctl.ae_detection import AERecord
from potctl.config import PfcConfig

__all__ = ["PfcAccountant", "PfcReport", "tier2_emissions_per_t"]

#: kg Al per kA·h at 100 % CE
AL_KG_PER_KAH = 0.33557


def tier2_emissions_per_t(aem_min_per_cell_day: float, cfg: PfcConfig | None = None) -> tuple[float, float, float]:
    """(CF4, C2F6, CO2-eq) in kg per tonne of Al for an AEM [AE-min/cell-day]."""
    c = cfg or PfcConfig()
    cf4 = c.sef_cf4 * aem_min_per_cell_day
    c2f6 = c.c2f6_ratio * cf4
    return cf4, c2f6, cf4 * c.gwp_cf4 + c2f6 * c.gwp_c2f6


@dataclass(slots=True)
class PfcReport:
    """Tier 2 PFC figures over the accounted period."""

    cell_days: float
    ae_count: int
    ae_minutes: float
    lvae_count: int
    lvae_minutes: float
    ae_per_cell_day: float
    mean_duration_s: float
    aem_min_per_cell_day: float
    aluminium_t: float
    cf4_kg_per_t: float
    c2f6_kg_per_t: float
    co2e_kg_per_t: float
    cf4_kg: float
    c2f6_kg: float
    co2e_t: float

    def as_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in self.__slots__}


class PfcAccountant:
    """Accumulates cell-days, metal produced and AE minutes; reports Tier 2 emissions."""

    def __init__(self, n_cells: int, cfg: PfcConfig | None = None) -> None:
        self.cfg = cfg or PfcConfig()
        self.n = int(n_cells)
        self.cell_seconds = 0.0
        self.al_kg = 0.0
        self.ae_s_per_cell = np.zeros(self.n)
        self.ae_count = 0
        self.lvae_s = 0.0
        self.lvae_count = 0

    def accumulate(self, dt: float, i_ka: np.ndarray, in_circuit: np.ndarray) -> None:
        """Book ``dt`` seconds of operation of ``in_circuit`` cells carrying ``i_ka`` [kA]."""
        if dt <= 0:
            return
        live = in_circuit & (i_ka > 1.0)
        self.cell_seconds += float(np.count_nonzero(live)) * dt
        self.al_kg += float(np.sum(i_ka[live])) * AL_KG_PER_KAH * self.cfg.ce_assumed * dt / 3600.0

    def add_ae(self, rec: AERecord) -> None:
        """Book one finished AE."""
        d = max(rec.duration_s, 0.0)
        if rec.kind == "HV":
            self.ae_s_per_cell[rec.cell] += d
            self.ae_count += 1
        else:
            self.lvae_s += d
            self.lvae_count += 1

    def report(self, ongoing: list[AERecord] | None = None, now: float | None = None) -> PfcReport:
        """Figures so far (ongoing AEs counted up to ``now``)."""
        ae_s = float(self.ae_s_per_cell.sum())
        n_ae = self.ae_count
        lv_s, n_lv = self.lvae_s, self.lvae_count
        for rec in ongoing or []:
            if now is None:
                continue
            d = max(now - rec.start_s, 0.0)
            if rec.kind == "HV":
                ae_s += d
                n_ae += 1
            else:
                lv_s += d
                n_lv += 1
        cell_days = self.cell_seconds / 86400.0
        aem = (ae_s / 60.0) / cell_days if cell_days > 0 else 0.0
        cf4, c2f6, co2e = tier2_emissions_per_t(aem, self.cfg)
        t_al = self.al_kg / 1000.0
        return PfcReport(
            cell_days=cell_days,
            ae_count=n_ae,
            ae_minutes=ae_s / 60.0,
            lvae_count=n_lv,
            lvae_minutes=lv_s / 60.0,
            ae_per_cell_day=n_ae / cell_days if cell_days > 0 else 0.0,
            mean_duration_s=ae_s / n_ae if n_ae else 0.0,
            aem_min_per_cell_day=aem,
            aluminium_t=t_al,
            cf4_kg_per_t=cf4,
            c2f6_kg_per_t=c2f6,
            co2e_kg_per_t=co2e,
            cf4_kg=cf4 * t_al,
            c2f6_kg=c2f6 * t_al,
            co2e_t=co2e * t_al / 1000.0,
        )
