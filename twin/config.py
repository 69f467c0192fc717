"""Plant configuration: TOML validated with pydantic.

A plant has series lines (one rectifier each), each with potrooms of cells. Cell
parameters are given once (nominal, with units in the key names) plus a relative
spread that the model draws per cell from a seeded generator.

Errors name the file, the key, what was expected and what was found (``ConfigError``,
from the config core ``twin.configcore``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from twin.configcore import ConfigError, StrictModel, load_config, load_toml, validation_issues
from twin.resources import config_dir

__all__ = [
    "CONFIG_DIR",
    "REFERENCE_PLANT",
    "CellParams",
    "CellSpread",
    "ConfigError",
    "Disturbances",
    "Line",
    "LocalControl",
    "PlantConfig",
    "RectifierParams",
    "Room",
    "load_plant_config",
    "load_toml",
    "validation_errors",
]

#: repository config directory (embedded defaults)
CONFIG_DIR = config_dir()
REFERENCE_PLANT = CONFIG_DIR / "plant_reference.toml"


class CellParams(StrictModel):
    """Nominal parameters of one point-fed prebake cell (120 kA class by default).

    Sources: docs/domain.md physics facts, docs/domain.md §1 (Haupin voltage, Solheim
    liquidus, Dewing CE, Stefan ledge after Lundby et al.).
    """

    anode_area_m2: float = Field(14.0, gt=1.0, le=60.0, description="total geometric anode area")
    n_anodes: int = Field(16, ge=1, le=60)
    anode_area_factor: float = Field(1.138, ge=1.0, le=1.5, description="effective/geometric area (fanning)")
    cathode_area_m2: float = Field(18.0, gt=1.0, le=80.0)
    ledge_area_m2: float = Field(12.0, gt=1.0, le=60.0, description="side-ledge face area")
    bath_mass_kg: float = Field(4000.0, ge=500.0, le=20000.0)
    metal_mass_kg: float = Field(9000.0, ge=1000.0, le=50000.0)
    acd_cm: float = Field(4.8, ge=2.0, le=8.0, description="initial anode-cathode distance")
    alumina_wt_pct: float = Field(3.0, ge=1.0, le=8.0, description="initial dissolved Al2O3")
    alf3_wt_pct: float = Field(12.0, ge=0.0, le=20.0, description="initial excess AlF3")
    caf2_wt_pct: float = Field(5.0, ge=0.0, le=10.0)
    bath_temp_c: float = Field(968.0, ge=900.0, le=1010.0, description="initial bath temperature")
    r_anode_uohm: float = Field(2.2, ge=0.0, le=20.0, description="anode assembly resistance")
    r_cathode_uohm: float = Field(1.9, ge=0.0, le=20.0, description="cathode block + bars")
    r_external_uohm: float = Field(1.2, ge=0.0, le=20.0, description="cell-to-cell busbar share")
    kappa_factor: float = Field(1.0, ge=0.5, le=1.5, description="multiplier on Wang bath conductivity")
    sludge_fraction: float = Field(
        0.6, ge=0.0, le=1.0, description="share of a shot that goes to the slow pool (Yao 2017)"
    )
    dissolution_rate_per_s: float = Field(0.002, gt=0.0, le=0.1)
    ae_local_depletion_wt_pct_per_a_cm2: float = Field(
        1.05, ge=0.0, le=3.0, description="bulk minus under-anode Al2O3 per unit current density"
    )
    ae_film_voltage_v: float = Field(26.0, ge=10.0, le=50.0, description="gas-film voltage of a full AE")
    ae_self_extinction_s: float = Field(420.0, ge=10.0, le=7200.0, description="mean AE life without action")
    ae_refractory_s: float = Field(60.0, ge=0.0, le=3600.0)
    bubble_model: Literal["lundby", "haupin_capped"] = Field(
        "lundby",
        description=(
            "bubble coverage: lundby (Lundby et al., reaches 0.9 at the AE onset) or haupin_capped "
            "(Haupin's RTA form x 0.9 at a fixed 1.8 wt %, capped at 0.75: a structurally different plant)"
        ),
    )
    noise_mv: float = Field(12.0, ge=0.0, le=200.0, description="MHD/bubble voltage noise (std)")
    noise_tau_s: float = Field(20.0, gt=0.0, le=3600.0)
    thermal_capacity_mj_per_k: float = Field(18.0, gt=1.0, le=200.0, description="bath + metal heat capacity")
    k_top_w_per_k: float = Field(
        124.0, gt=0.0, le=2000.0, description="top loss conductance bath -> ambient (crust, anode cover)"
    )
    k_bottom_w_per_k: float = Field(32.0, ge=0.0, le=2000.0, description="bottom loss conductance (cathode, lining)")
    anode_heat_to_top: float = Field(
        0.5, ge=0.0, le=1.0, description="share of the anode assembly's Joule heat lost through the top"
    )
    h_bath_ledge_w_per_m2k: float = Field(900.0, gt=0.0, le=5000.0)
    k_ledge_w_per_mk: float = Field(1.2, gt=0.0, le=10.0)
    r_wall_k_per_w: float = Field(1.0e-3, gt=0.0, le=1.0, description="side lining: ledge face -> shell")
    r_shell_k_per_w: float = Field(2.9e-3, gt=0.0, le=1.0, description="shell -> ambient (radiation, convection)")
    shell_capacity_mj_per_k: float = Field(4.0, gt=0.0, le=100.0, description="side wall + shell heat capacity")
    ledge_bath_fraction: float = Field(
        0.35, ge=0.0, le=1.0, description="share of frozen ledge that is entrapped bath (the rest cryolite)"
    )
    heat_exchanger_max_kw: float = Field(
        0.0, ge=0.0, le=500.0, description="shell heat exchanger extraction limit (0: none installed)"
    )
    heat_exchanger_base_kw: float = Field(
        0.0, ge=0.0, le=500.0, description="shell heat exchanger duty at the nominal operating point"
    )
    heat_exchanger_insulation: float = Field(
        0.6, ge=0.0, le=0.95, description="share of the shell's own loss the exchanger can hold back"
    )
    alf3_loss_kg_per_day: float = Field(
        4.0, ge=0.0, le=100.0, description="AlF3 lost to emissions and sodium uptake at 965 °C, 11 wt %"
    )
    bath_per_anode_change_kg: float = Field(10.0, ge=0.0, le=200.0, description="bath leaving with an anode butt")
    n_feeders: int = Field(3, ge=1, le=12, description="point feeders (a crusted hole loses 1/n of the feed)")
    ambient_c: float = Field(35.0, ge=-40.0, le=80.0)
    ce_constant: float = Field(0.784, ge=0.0, le=2.0, description="Dewing constant: CE 95.5 % at 8 K, 11 % AlF3")
    alf3_neutralised_per_kg_feed: float = Field(0.02, ge=0.0, le=0.1)
    anode_net_carbon_kg_per_kg_al: float = Field(0.42, ge=0.33, le=0.6)
    anode_height_cm: float = Field(60.0, gt=10.0, le=100.0)
    anode_cycle_days: float = Field(26.0, gt=5.0, le=60.0)
    anode_mass_kg: float = Field(900.0, gt=50.0, le=3000.0)


class CellSpread(StrictModel):
    """Relative (1-sigma) per-cell spread drawn around the nominal parameters."""

    acd: float = Field(0.03, ge=0.0, le=0.3)
    bath_mass: float = Field(0.05, ge=0.0, le=0.3)
    kappa: float = Field(0.02, ge=0.0, le=0.2)
    r_external: float = Field(0.05, ge=0.0, le=0.5)
    ce_constant: float = Field(0.04, ge=0.0, le=0.5)
    ae_film_voltage: float = Field(0.12, ge=0.0, le=0.5)
    noise: float = Field(0.25, ge=0.0, le=1.0)
    k_top: float = Field(0.03, ge=0.0, le=0.3)
    shot_mass: float = Field(0.03, ge=0.0, le=0.3, description="feeder calibration: real / nominal shot")
    sludge_fraction: float = Field(0.1, ge=0.0, le=0.5)
    dissolution: float = Field(0.15, ge=0.0, le=0.5)
    feeder_blocks: float = Field(0.5, ge=0.0, le=2.0, description="log-normal spread of the blockage rate")


class LocalControl(StrictModel):
    """The potroom PLC's own automation (runs when the controller is not in charge)."""

    shot_mass_kg: float = Field(1.8, gt=0.1, le=10.0, description="alumina per feeder shot")
    feed_ratio: float = Field(1.0, ge=0.0, le=3.0, description="mean feed rate / nominal consumption")
    feed_mode: Literal["tracking", "fixed"] = Field(
        "tracking", description="tracking: underfeed until the resistance rises, then overfeed; fixed: one rate"
    )
    underfeed_ratio: float = Field(0.7, ge=0.0, le=1.0)
    overfeed_ratio: float = Field(1.4, ge=1.0, le=3.0)
    overfeed_min: float = Field(40.0, gt=0.0, le=600.0)
    underfeed_max_h: float = Field(4.0, gt=0.0, le=48.0, description="overfeed at the latest after this long")
    track_trigger_uohm: float = Field(0.2, gt=0.0, le=5.0, description="resistance rise that ends the underfeed")
    filter_s: float = Field(300.0, gt=0.0, le=3600.0, description="PLC's current/resistance filter for tracking")
    control_filter_s: float = Field(30.0, gt=0.0, le=3600.0, description="resistance filter of the beam control")
    nominal_ce: float = Field(0.95, ge=0.8, le=1.0, description="CE assumed for the nominal feed rate")
    resistance_target_uohm: float = Field(21.7, gt=0.0, le=200.0, description="R = (U - 1.65 V)/I target")
    amperage_compensation: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="share of a line-current change the target compensates (1: holds the cell voltage)",
    )
    resistance_deadband_uohm: float = Field(0.4, ge=0.0, le=20.0)
    beam_step_mm: float = Field(2.0, gt=0.0, le=20.0)
    beam_check_interval_s: float = Field(300.0, ge=60.0, le=86400.0)
    beam_max_move_mm: float = Field(10.0, gt=0.0, le=50.0, description="largest single beam move")
    beam_gain_uohm_per_mm: float = Field(0.29, gt=0.0, le=10.0, description="dR/dACD the PLC assumes")
    beam_followup_s: float = Field(90.0, ge=10.0, le=3600.0, description="next check after a move or operation")
    alf3_kg_per_day: float = Field(47.0, ge=0.0, le=500.0, description="base AlF3 addition")
    alf3_target_wt_pct: float = Field(12.0, ge=0.0, le=20.0)
    alf3_gain_kg_per_day_per_pct: float = Field(10.0, ge=0.0, le=200.0, description="daily AlF3 correction")
    alf3_temp_gain_kg_per_day_per_k: float = Field(1.0, ge=0.0, le=50.0, description="more AlF3 when hot")
    bath_temp_target_c: float = Field(960.0, ge=900.0, le=1010.0)
    bath_mass_band_kg: float = Field(150.0, ge=0.0, le=5000.0, description="bath level correction half band")
    bath_max_correction_kg: float = Field(500.0, ge=0.0, le=5000.0, description="per tapping")
    crushed_bath_alumina_wt_pct: float = Field(2.5, ge=0.0, le=10.0)
    tap_interval_h: float = Field(24.0, ge=1.0, le=240.0)
    tap_duration_s: float = Field(600.0, ge=30.0, le=7200.0)
    anode_change_duration_s: float = Field(900.0, ge=60.0, le=7200.0)
    operations: bool = Field(True, description="schedule tapping and anode changes")
    ae_quench: bool = Field(True, description="the PLC kills AEs itself (feed + beam pumping) in local control")


class Disturbances(StrictModel):
    """Stochastic feed disturbances per cell (``twin.disturbances``), seeded with the plant."""

    enabled: bool = True
    feeder_blocks_per_day: float = Field(0.3, ge=0.0, le=20.0, description="crusted feeder holes per cell-day")
    feeder_block_mean_h: float = Field(2.0, gt=0.0, le=48.0)
    empty_hoppers_per_day: float = Field(0.003, ge=0.0, le=5.0, description="empty hoppers per cell-day")
    empty_hopper_mean_h: float = Field(2.0, gt=0.0, le=48.0)
    crew_response_min: float = Field(5.0, gt=0.0, le=600.0, description="AE to a cleared hole / filled hopper")
    alumina_quality_std: float = Field(0.15, ge=0.0, le=1.0, description="day-to-day spread of the sludge share")
    cold_anode_sludge: float = Field(0.2, ge=0.0, le=1.0, description="extra sludge share after an anode change")


class RectifierParams(StrictModel):
    """One rectifier (diode + on-load tap changer + saturable reactors) feeding a series line."""

    setpoint_ka: float = Field(120.0, gt=0.0, le=700.0)
    min_ka: float = Field(0.0, ge=0.0, le=700.0)
    max_ka: float = Field(130.0, gt=0.0, le=750.0)
    ramp_ka_per_min: float = Field(6.0, gt=0.0, le=600.0)
    voltage_limit_v: float = Field(1250.0, gt=10.0, le=3000.0, description="max DC output")
    n_taps: int = Field(33, ge=2, le=99)
    tap_min_fraction: float = Field(0.35, gt=0.0, lt=1.0, description="lowest tap voltage / voltage limit")
    tap_time_s: float = Field(7.0, gt=0.0, le=120.0)
    reactor_range_v: float = Field(60.0, gt=0.0, le=500.0, description="saturable-reactor trim range")
    reactor_tau_s: float = Field(0.3, gt=0.0, le=10.0)
    bandwidth_per_s: float = Field(0.6, gt=0.0, le=5.0, description="current-loop gain x dt per second")
    overcurrent_ka: float | None = Field(None, gt=0.0, le=800.0, description="over-current alarm (None: max_ka)")
    busbar_uohm: float = Field(300.0, ge=0.0, le=5000.0, description="line busbar resistance")

    @model_validator(mode="after")
    def _limits(self) -> RectifierParams:
        if not self.min_ka <= self.setpoint_ka <= self.max_ka:
            raise ValueError(
                f"setpoint_ka={self.setpoint_ka} must lie within min_ka={self.min_ka} .. max_ka={self.max_ka}"
            )
        return self


class Room(StrictModel):
    name: str = Field(min_length=1)
    cells: int = Field(ge=1, le=400)
    operating: bool = True


class Line(StrictModel):
    name: str = Field(min_length=1)
    rectifier: RectifierParams = RectifierParams()
    rooms: list[Room] = Field(min_length=1)
    rest_of_line_cells: int = Field(
        0, ge=0, le=2000, description="cells of this line not simulated: an aggregate load of nominal cells"
    )


class PlantConfig(StrictModel):
    """A whole plant: lines of potrooms of cells, one cell parameter set with spread."""

    name: str = "ReferencePlant"
    seed: int = Field(20261123, ge=0)
    dt_s: float = Field(1.0, gt=0.0, le=60.0, description="model sub-step")
    cell: CellParams = CellParams()
    spread: CellSpread = CellSpread()
    local_control: LocalControl = LocalControl()
    disturbances: Disturbances = Disturbances()
    lines: list[Line] = Field(min_length=1)
    control: dict[str, Any] = Field(default_factory=dict, description="controller section (potctl.config)")

    @model_validator(mode="after")
    def _unique_names(self) -> PlantConfig:
        names = [r.name for ln in self.lines for r in ln.rooms]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"room names must be unique, repeated: {sorted(dup)}")
        return self

    @classmethod
    def single_room(
        cls,
        n_cells: int,
        current_ka: float = 120.0,
        name: str = "Bench",
        seed: int = 1,
        line_cells: int | None = 264,
        **sections: Any,
    ) -> PlantConfig:
        """A one-line, one-room plant of ``n_cells`` cells with a rectifier sized for it.

        ``line_cells``: the series line the bench sits in; its cells beyond the bench are an
        aggregate load on the rectifier (``Line.rest_of_line_cells``), so an AE on a bench
        cell moves the line current as on the full line (``None``: the bench alone).
        ``sections`` override top-level keys (e.g. ``cell={...}``, ``local_control={...}``).
        """
        rest = max((line_cells or 0) - n_cells, 0)
        n_line = n_cells + rest
        u_line = n_line * 4.3 + current_ka * 1e3 * 300e-6 * n_line / 264.0
        rect = {
            "setpoint_ka": current_ka,
            "max_ka": current_ka * 1.1,
            "voltage_limit_v": 1.15 * u_line + 40.0,
            "reactor_range_v": max(0.06 * u_line, 60.0),  # covers an AE on a short line
            "tap_min_fraction": 0.3,
            "busbar_uohm": 300.0 * n_line / 264.0,
        }
        line: dict[str, Any] = {"name": "Line1", "rectifier": rect, "rooms": [{"name": "Potroom1", "cells": n_cells}]}
        if rest:
            line["rest_of_line_cells"] = rest
        data: dict[str, Any] = {"name": name, "seed": seed, "lines": [line]}
        data.update(sections)
        return cls.model_validate(data)

    @property
    def operating_cells(self) -> int:
        return sum(r.cells for ln in self.lines for r in ln.rooms if r.operating)


def validation_errors(exc: ValidationError, model: type[BaseModel] | None = None) -> list[tuple[str, str]]:
    """(dotted key, message) for each pydantic error, in the config core's wording (``model``:
    the validated class, so unknown keys list the valid ones)."""
    return [(i.key, i.message) for i in validation_issues(exc, "", model)]


def load_plant_config(path: str | Path | None = None) -> PlantConfig:
    """Load and validate a plant config (``None``: the embedded reference plant).

    Raises:
        ConfigError: every problem of the file (file, key, expected, got).
    """
    return load_config(PlantConfig, REFERENCE_PLANT if path is None else path)
