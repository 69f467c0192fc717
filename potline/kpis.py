"""Process KPIs for Prometheus: what the potline makes, spends and emits, per line and room.

``ProcessKpis`` is fed once per scan (``update``: the measurements, the AE flags and the
feeding phases) and on AE ends (``ae_ended``); it is a prometheus-client *collector*:
register it in the daemon's registry (``DaemonMetrics.registry``) and ``/metrics``
carries (all with a ``plant`` label; SI base units as the exporter conventions want):

* per line: ``potline_line_current_amperes``, ``potline_line_voltage_volts``,
  ``potline_line_setpoint_amperes``, ``potline_line_data_ok``;
* per room: ``potline_room_cell_voltage_mean_volts`` (cells in circuit with good data),
  ``potline_room_power_watts``, ``potline_room_energy_joules_total``,
  ``potline_room_metal_estimate_kilograms_total`` (0.33557 kg/(kA·h) x CE),
  ``potline_room_specific_energy_kwh_per_kilogram`` (DC, over the window);
* anode effects per room over the rolling window (``window_s``, default 24 h):
  ``potline_room_anode_effects_window``, ``potline_room_ae_frequency_per_cell_day``,
  ``potline_room_aem_minutes_per_cell_day`` (AE-minutes per cell-day),
  ``potline_room_ae_minutes_total`` (counter), and the IPCC Tier 2 estimate
  ``potline_room_pfc_co2e_kilograms_per_tonne`` (``potctl.pfc``); the AE *count* is the
  daemon's own ``potline_anode_effects_total{plant,room}`` (``potline.metrics``);
* cells by state: ``potline_cells{room,state}`` for in_circuit, cut_out, ae, tapping,
  anode_change, local, remote, bad_data, underfeed, overfeed, nominal_feed;
  ``potline_room_data_quality_ratio`` (good cells / cells).

The rolling window is kept in hourly buckets (bounded memory). No clock calls: times
are the scans' plant times [s].
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from potctl.feeding import NOMINAL, OVERFEED, UNDERFEED
from potctl.pfc import AL_KG_PER_KAH, tier2_emissions_per_t

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from potctl.config import PfcConfig
    from potctl.plant import Measurements
    from twin.layout import PlantLayout

__all__ = ["CELL_STATES", "ProcessKpis"]

#: the ``state`` label values of ``potline_cells``
CELL_STATES = ("in_circuit", "cut_out", "ae", "tapping", "anode_change", "local", "remote", "bad_data", "underfeed",
               "overfeed", "nominal_feed")  # fmt: skip
#: a line below this current is off: its cells are not in production [kA]
ENERGIZED_KA = 5.0
_BUCKET_S = 3600.0


class ProcessKpis:
    """The process KPIs of one plant, as a prometheus-client collector (module docstring).

    Args:
        layout: the plant.
        plant: the ``plant`` label (the daemon's instance name).
        pfc: Tier 2 factors and the CE used for the metal estimate (``potctl.config.PfcConfig``).
        window_s: the rolling window of the AE and specific-energy figures [s] (whole hours).
    """

    def __init__(
        self, layout: PlantLayout, plant: str, pfc: PfcConfig | None = None, window_s: float = 86400.0
    ) -> None:
        from potctl.config import PfcConfig

        self.layout = layout
        self.plant = plant
        self.pfc = pfc or PfcConfig()
        self.n_buckets = max(int(round(window_s / _BUCKET_S)), 1)
        nr, nl = layout.n_rooms, layout.n_lines
        self._room = np.asarray(layout.cell_room, dtype=np.int64)
        self._line = np.asarray(layout.cell_line, dtype=np.int64)
        self._cells_per_room = np.bincount(self._room, minlength=nr).astype(float)
        self.t: float | None = None
        # latest scan
        self.line_current_ka = np.full(nl, np.nan)
        self.line_voltage_v = np.full(nl, np.nan)
        self.line_setpoint_ka = np.full(nl, np.nan)
        self.line_ok = np.zeros(nl, dtype=bool)
        self.room_mean_v = np.full(nr, np.nan)
        self.room_power_w = np.zeros(nr)
        self.room_quality = np.zeros(nr)
        self.cells = {s: np.zeros(nr) for s in CELL_STATES}
        # totals
        self.energy_j = np.zeros(nr)
        self.metal_kg = np.zeros(nr)
        self.ae_minutes = np.zeros(nr)
        # rolling window: hourly buckets [n_buckets, rooms]
        self._bucket_id: int | None = None
        self._w = {k: np.zeros((self.n_buckets, nr)) for k in ("cell_s", "ae_n", "ae_s", "energy_j", "metal_kg")}

    # ------------------------------------------------------------------ feeding

    def _per_room(self, values: Any) -> np.ndarray:
        """Sum of per-cell ``values`` per room."""
        return np.bincount(self._room, weights=np.asarray(values, dtype=float), minlength=self.layout.n_rooms).astype(
            float
        )

    def _slot(self, t: float) -> int:
        """Ring index of the hour of ``t``; buckets left behind are zeroed."""
        bid = int(np.floor(t / _BUCKET_S))
        if self._bucket_id is None:
            self._bucket_id = bid
        elif bid > self._bucket_id:
            for b in range(self._bucket_id + 1, min(bid, self._bucket_id + self.n_buckets) + 1):
                for arr in self._w.values():
                    arr[b % self.n_buckets] = 0.0
            self._bucket_id = bid
        return bid % self.n_buckets

    def update(
        self,
        meas: Measurements,
        *,
        ae_active: np.ndarray | None = None,
        feed_phase: np.ndarray | None = None,
    ) -> None:
        """Take one scan: ``meas`` (potctl.plant.Measurements), the AE detector's ``active``
        flags and the feed controller's ``phase`` per cell (None: not known)."""
        t = float(meas.t_s)
        dt = 0.0 if self.t is None else max(t - self.t, 0.0)
        self.t = t
        i_line = np.asarray(meas.line_current_ka, dtype=float)
        line_ok = np.asarray(meas.line_ok, dtype=bool)
        self.line_current_ka = np.where(line_ok, i_line, np.nan)
        self.line_voltage_v = np.where(line_ok, np.asarray(meas.line_voltage_v, dtype=float), np.nan)
        self.line_setpoint_ka = np.where(line_ok, np.asarray(meas.line_setpoint_ka, dtype=float), np.nan)
        self.line_ok = line_ok.copy()
        i_cell = np.nan_to_num(self.line_current_ka)[self._line]
        u = np.asarray(meas.cell_voltage_v, dtype=float)
        cut = np.asarray(meas.cut_out, dtype=bool)
        ok = np.asarray(meas.cell_ok, dtype=bool) & np.isfinite(u)
        in_circuit = ~cut & (i_cell > ENERGIZED_KA)
        good = in_circuit & ok
        n_good = self._per_room(good)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_v = self._per_room(np.where(good, u, 0.0)) / n_good
        self.room_mean_v = np.where(n_good > 0, mean_v, np.nan)
        # a cell in circuit without good data counts at its room's mean voltage
        u_used = np.where(good, u, np.nan_to_num(self.room_mean_v)[self._room])
        power = np.where(in_circuit, u_used * i_cell * 1e3, 0.0)
        self.room_power_w = self._per_room(power)
        self.room_quality = self._per_room(ok) / np.maximum(self._cells_per_room, 1)
        remote = meas.remote_mask()
        states = {
            "in_circuit": in_circuit, "cut_out": cut,
            "ae": np.zeros_like(cut) if ae_active is None else np.asarray(ae_active, dtype=bool),
            "tapping": np.asarray(meas.tapping, dtype=bool), "anode_change": np.asarray(meas.anode_change, dtype=bool),
            "local": ~remote, "remote": remote, "bad_data": ~ok,
        }  # fmt: skip
        phase = None if feed_phase is None else np.asarray(feed_phase)
        for name, code in (("underfeed", UNDERFEED), ("overfeed", OVERFEED), ("nominal_feed", NOMINAL)):
            states[name] = np.zeros_like(cut) if phase is None else (phase == code) & in_circuit
        for name, mask in states.items():
            self.cells[name] = self._per_room(mask)
        if dt > 0:
            slot = self._slot(t)
            energy = self.room_power_w * dt
            metal = self._per_room(np.where(in_circuit, i_cell, 0.0))
            metal = metal * AL_KG_PER_KAH * self.pfc.ce_assumed * dt / 3600.0
            self.energy_j += energy
            self.metal_kg += metal
            w = self._w
            w["energy_j"][slot] += energy
            w["metal_kg"][slot] += metal
            w["cell_s"][slot] += self._per_room(in_circuit) * dt
        else:
            self._slot(t)

    def ae_started(self, cell: int, t: float) -> None:
        """A (high-voltage) AE started on cell index ``cell`` at plant time ``t`` [s]."""
        self._w["ae_n"][self._slot(t), self._room[cell]] += 1

    def ae_ended(self, cell: int, duration_s: float, t: float) -> None:
        """A (high-voltage) AE of ``duration_s`` [s] ended on cell index ``cell`` at ``t`` [s]."""
        r = self._room[cell]
        d = max(float(duration_s), 0.0)
        self._w["ae_s"][self._slot(t), r] += d
        self.ae_minutes[r] += d / 60.0

    # ------------------------------------------------------------------ derived figures

    def window(self) -> dict[str, np.ndarray]:
        """Per-room figures over the rolling window."""
        w = {k: v.sum(axis=0) for k, v in self._w.items()}
        cell_days = w["cell_s"] / 86400.0
        with np.errstate(invalid="ignore", divide="ignore"):
            freq = np.where(cell_days > 0, w["ae_n"] / cell_days, np.nan)
            aem = np.where(cell_days > 0, w["ae_s"] / 60.0 / cell_days, np.nan)
            kwh_kg = np.where(w["metal_kg"] > 0, w["energy_j"] / 3.6e6 / w["metal_kg"], np.nan)
        co2e = np.array([tier2_emissions_per_t(float(a), self.pfc)[2] if np.isfinite(a) else np.nan for a in aem])
        return {"ae_count": w["ae_n"], "ae_frequency": freq, "aem": aem, "co2e_kg_per_t": co2e,
                "kwh_per_kg": kwh_kg, "cell_days": cell_days}  # fmt: skip

    # ------------------------------------------------------------------ collector

    def register(self, registry: CollectorRegistry) -> None:
        """Add these series to ``registry`` (e.g. ``DaemonMetrics.registry``)."""
        registry.register(self)

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        return self._families(samples=self.t is not None)

    def _families(self, samples: bool = False) -> Iterator[Metric]:
        lay, p = self.layout, self.plant

        def fam(kind: type, name: str, doc: str, labels: tuple[str, ...], names: Iterable[str], values: Any) -> Metric:
            m = kind(name, doc, labels=["plant", *labels])
            if samples:
                for lbl, v in zip(names, np.asarray(values, dtype=float).tolist(), strict=True):
                    if np.isfinite(v):
                        m.add_metric([p, *((lbl,) if isinstance(lbl, str) else lbl)], v)
            return m

        G, C = GaugeMetricFamily, CounterMetricFamily
        lines, rooms = lay.line_names, lay.room_names
        yield fam(
            G, "potline_line_current_amperes", "Line current (DCCT)", ("line",), lines, self.line_current_ka * 1e3
        )
        yield fam(G, "potline_line_voltage_volts", "Rectifier DC output voltage", ("line",), lines, self.line_voltage_v)
        yield fam(G, "potline_line_setpoint_amperes", "Line current setpoint read back", ("line",), lines,
                  self.line_setpoint_ka * 1e3)  # fmt: skip
        yield fam(G, "potline_line_data_ok", "Rectifier data quality (1 good)", ("line",), lines, self.line_ok)
        yield fam(G, "potline_room_cell_voltage_mean_volts", "Mean voltage of the cells in circuit with good data",
                  ("room",), rooms, self.room_mean_v)  # fmt: skip
        yield fam(G, "potline_room_power_watts", "DC power of the room's cells in circuit", ("room",), rooms,
                  self.room_power_w)  # fmt: skip
        yield fam(C, "potline_room_energy_joules", "DC energy of the room's cells", ("room",), rooms, self.energy_j)
        yield fam(C, "potline_room_metal_estimate_kilograms", "Aluminium produced (Faraday x assumed CE)", ("room",),
                  rooms, self.metal_kg)  # fmt: skip
        yield fam(C, "potline_room_ae_minutes", "Anode-effect minutes (high-voltage AEs)", ("room",), rooms,
                  self.ae_minutes)  # fmt: skip
        w = self.window() if samples else {}
        for name, key, doc in (
            ("potline_room_anode_effects_window", "ae_count", "Anode effects started in the rolling window"),
            ("potline_room_ae_frequency_per_cell_day", "ae_frequency", "AE frequency over the window (AE/cell-day)"),
            ("potline_room_aem_minutes_per_cell_day", "aem", "AE-minutes per cell-day over the window (IPCC AEM)"),
            ("potline_room_pfc_co2e_kilograms_per_tonne", "co2e_kg_per_t",
             "PFC emissions, IPCC 2006 Tier 2 slope method, AR5 GWP-100 (kg CO2e per t Al)"),
            ("potline_room_specific_energy_kwh_per_kilogram", "kwh_per_kg", "DC energy per kg Al over the window"),
        ):  # fmt: skip
            yield fam(G, name, doc, ("room",), rooms, w.get(key, np.zeros(len(rooms))))
        yield fam(G, "potline_room_data_quality_ratio", "Cells with good data / cells", ("room",), rooms,
                  self.room_quality)  # fmt: skip
        m = GaugeMetricFamily("potline_cells", "Cells per room in each state", labels=["plant", "room", "state"])
        if samples:
            for s in CELL_STATES:
                for r, room in enumerate(rooms):
                    m.add_metric([p, room, s], float(self.cells[s][r]))
        yield m
        t = GaugeMetricFamily("potline_kpi_plant_time_seconds", "Plant time of the last scan in the KPIs",
                              labels=["plant"])  # fmt: skip
        if samples and self.t is not None:
            t.add_metric([p], self.t)
        yield t
