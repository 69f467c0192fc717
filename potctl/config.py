"""Controller configuration: a pydantic model with embedded defaults.

Every tunable of the pot controller lives here, grouped by function, with units in
the key names. Defaults are engineering values for a 120 kA point-fed prebake line
(docs/domain.md "Physics reference", docs/domain.md §2–§4); a plant overrides them from the
``[control]`` table of its TOML, e.g.::

    [control.detection]
    hv_threshold_v = 8.0
    [control.feeding]
    underfeed_factor = 0.7

Errors name the file, the dotted key, what was expected and what was found
(``ConfigError``, from the config core ``twin.configcore``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from twin.configcore import ConfigError, ConfigIssue, StrictModel, load_toml, validate_config

__all__ = [
    "AmperageConfig",
    "BathChemistryConfig",
    "ConfigError",
    "ControlConfig",
    "DetectionConfig",
    "FeedingConfig",
    "HeatBalanceConfig",
    "PfcConfig",
    "PredictionConfig",
    "QuenchConfig",
    "ResistanceConfig",
    "control_config_for_plant",
    "load_control_config",
]

#: back-EMF used in the pseudo-resistance R = (U - E0)/I [V] (docs/domain.md)
E0_V = 1.65


class DetectionConfig(StrictModel):
    """Anode-effect detection on every cell-voltage sample (docs/domain.md §2 "Detection")."""

    hv_threshold_v: float = Field(8.0, gt=4.0, le=60.0, description="IPCC/IAI HV-AE definition: U > 8 V")
    confirm_samples: int = Field(
        2, ge=1, le=20, description="consecutive samples above the threshold that confirm an AE"
    )
    end_threshold_v: float = Field(6.5, gt=2.0, le=60.0, description="AE over once U stays below this")
    end_hold_s: float = Field(10.0, ge=0.0, le=600.0, description="... for this long (hysteresis)")
    lv_enabled: bool = Field(True, description="flag low-voltage AEs (< 8 V) from the voltage signature")
    lv_delta_v: float = Field(0.8, gt=0.05, le=6.0, description="LVAE: U above the cell's baseline by this")
    lv_confirm_s: float = Field(60.0, ge=1.0, le=3600.0, description="... persisting this long")
    lv_end_delta_v: float = Field(0.4, gt=0.0, le=6.0, description="LVAE over below baseline + this")
    lv_end_hold_s: float = Field(30.0, ge=0.0, le=3600.0)
    lv_holdoff_s: float = Field(
        10800.0, ge=0.0, le=86400.0, description="no LVAE judging this long after tapping/anode change/HV AE"
    )
    baseline_tau_s: float = Field(1800.0, ge=10.0, le=86400.0, description="slow baseline of R per cell")
    min_current_ka: float = Field(5.0, ge=0.0, le=1000.0, description="no detection below this line current")
    repeat_alarm_count: int = Field(
        3, ge=2, le=100, description="this many HV AEs on one cell within repeat_alarm_window_s raise ae_repeating"
    )
    repeat_alarm_window_s: float = Field(
        3600.0,
        ge=60.0,
        le=86400.0,
        description="AEs that keep coming back mean the feed is not reaching the bath (feeder hole crusted, "
        "hopper empty): the crew has to look",
    )

    @model_validator(mode="after")
    def _hysteresis(self) -> DetectionConfig:
        if self.end_threshold_v > self.hv_threshold_v:
            raise ValueError(
                f"end_threshold_v={self.end_threshold_v} must not exceed hv_threshold_v={self.hv_threshold_v}"
            )
        if self.lv_end_delta_v >= self.lv_delta_v:
            raise ValueError(f"lv_end_delta_v={self.lv_end_delta_v} must be below lv_delta_v={self.lv_delta_v}")
        return self


class PredictionConfig(StrictModel):
    """AE prediction from the pseudo-resistance slope and an alumina estimate (docs/domain.md §2)."""

    sample_period_s: float = Field(60.0, ge=1.0, le=3600.0, description="R is averaged over this period")
    window_samples: int = Field(20, ge=3, le=240, description="periods in the least-squares slope window")
    min_samples: int = Field(8, ge=3, le=240, description="periods needed before a slope is trusted")
    rebase_quiet_s: float = Field(
        600.0, ge=0.0, le=86400.0, description="no slope/level alarm this long after a history rebase"
    )
    max_hold_s: float = Field(
        2400.0, ge=0.0, le=86400.0, description="a fit is held through data gaps (operations) this long"
    )
    alarm_horizon_s: float = Field(1200.0, ge=60.0, le=86400.0, description="alarm when time-to-AE is below")
    clear_horizon_s: float = Field(2400.0, ge=60.0, le=86400.0, description="alarm clears above this")
    slope_alarm_nohm_per_min: float = Field(
        40.0, gt=0.0, le=10000.0, description="alarm on a filtered R slope above this (≈ 5 mV/min at 120 kA)"
    )
    min_slope_nohm_per_min: float = Field(
        8.0, gt=0.0, le=10000.0, description="time-to-AE from the slope only above this slope"
    )
    z_slope: float = Field(3.0, ge=0.0, le=20.0, description="slope must be this many standard errors above 0")
    excess_alarm_uohm: float = Field(
        1.2, gt=0.0, le=100.0, description="alarm when R stands this far above its alumina-rich reference"
    )
    z_alarm: float = Field(5.0, ge=0.0, le=20.0, description="... for a prediction alarm")
    alarm_persist_periods: int = Field(2, ge=1, le=60, description="slope alarm conditions hold this many periods")
    min_excess_uohm: float = Field(
        0.5, ge=0.0, le=100.0, description="... and with R this far above its alumina-rich reference"
    )
    observer_max_std_wt_pct: float = Field(
        0.15, gt=0.0, le=5.0, description="observer alarms only once its alumina std is below this"
    )
    alumina_alarm_wt_pct: float = Field(2.05, ge=0.5, le=5.0, description="observer estimate alarm level")
    use_observer: bool = Field(False, description="also predict from the EKF alumina estimate (twin.observer)")
    observer_period_s: float = Field(5.0, gt=0.0, le=600.0, description="EKF update period")

    @model_validator(mode="after")
    def _order(self) -> PredictionConfig:
        if self.min_samples > self.window_samples:
            raise ValueError(f"min_samples={self.min_samples} exceeds window_samples={self.window_samples}")
        if self.clear_horizon_s < self.alarm_horizon_s:
            raise ValueError("clear_horizon_s must be >= alarm_horizon_s")
        return self


class QuenchConfig(StrictModel):
    """Automatic AE quench: feed + anode-beam pumping, with move limits and escalation."""

    enabled: bool = True
    feed_shots: int = Field(6, ge=0, le=50, description="shots dumped at once when an AE is detected")
    feed_on_first_sample: bool = Field(
        True,
        description="dump feed_shots on the first sample above the AE threshold, before the AE is confirmed "
        "(saves one scan of AE time; a noise sample costs feed_shots of overfeed); beam action waits",
    )
    first_sample_holdoff_s: float = Field(
        1800.0,
        ge=0.0,
        le=86400.0,
        description="after a first-sample feed that was not confirmed, that cell waits for confirmation for this "
        "long: a spiky transmitter costs at most one dose per hold-off",
    )
    refeed_after_s: float = Field(60.0, ge=1.0, le=3600.0, description="second dose if the AE persists")
    refeed_shots: int = Field(4, ge=0, le=50)
    lower_delay_s: float = Field(3.0, ge=0.0, le=600.0, description="wait before the first beam move")
    lower_mm: float = Field(20.0, ge=0.0, le=80.0, description="first beam lowering (docs/domain.md: 2–5 cm)")
    pump_amplitude_mm: float = Field(10.0, ge=0.0, le=40.0, description="pumping stroke (up then down)")
    pump_period_s: float = Field(15.0, ge=2.0, le=600.0, description="time between pumping strokes")
    max_pumps: int = Field(8, ge=0, le=100)
    max_total_down_mm: float = Field(40.0, ge=0.0, le=150.0, description="deepest below the pre-AE position")
    restore_delay_s: float = Field(30.0, ge=0.0, le=3600.0, description="after the AE ends, restore the beam")
    escalate_after_s: float = Field(180.0, ge=10.0, le=7200.0, description="alarm for manual action after")


class FeedingConfig(StrictModel):
    """Alumina feed control by underfeed/overfeed tracking on the resistance slope."""

    enabled: bool = True
    ce_assumed: float = Field(0.95, ge=0.8, le=1.0, description="CE for the nominal rate (1.673e-7·I kg/s at 0.95)")
    feed_ratio: float = Field(1.0, ge=0.5, le=2.0, description="alumina fed per kg dissolved (impurities)")
    default_shot_mass_kg: float = Field(1.8, gt=0.1, le=10.0, description="when the layout gives none")
    underfeed_factor: float = Field(0.70, ge=0.0, le=1.0, description="underfeed rate / nominal")
    overfeed_factor: float = Field(1.45, ge=1.0, le=3.0, description="overfeed rate / nominal")
    overfeed_s: float = Field(2400.0, ge=60.0, le=86400.0, description="overfeed duration")
    min_underfeed_s: float = Field(1200.0, ge=0.0, le=86400.0, description="no slope switch before this")
    max_underfeed_s: float = Field(14400.0, ge=600.0, le=172800.0, description="forced switch to overfeed")
    slope_switch_nohm_per_min: float = Field(
        12.0, gt=0.0, le=10000.0, description="underfeed → overfeed on a filtered R slope above this"
    )
    anode_change_overfeed_s: float = Field(1800.0, ge=0.0, le=86400.0, description="overfeed at an anode change")
    anode_change_nominal_s: float = Field(
        18000.0, ge=0.0, le=172800.0, description="then nominal feeding, no tracking, for this long"
    )
    post_ae_overfeed_s: float = Field(1800.0, ge=0.0, le=86400.0, description="overfeed after an AE")
    takeover_nominal_s: float = Field(
        3600.0,
        ge=0.0,
        le=86400.0,
        description="after a cell is taken back from local control: nominal feeding, no tracking, for this long",
    )
    preventive_shots: int = Field(2, ge=0, le=50, description="shots dumped at once on a prediction alarm")
    adapt_gain: float = Field(0.15, ge=0.0, le=1.0, description="per-cycle gain of the nominal-rate adaptation")
    adapt_min: float = Field(0.85, gt=0.0, le=1.0)
    adapt_max: float = Field(1.15, ge=1.0, le=2.0)
    feeder_fault_shots: int = Field(6, ge=1, le=1000, description="alarm when acks lag commands by this")
    min_current_ka: float = Field(5.0, ge=0.0, le=1000.0, description="no feeding below this line current")


class ResistanceConfig(StrictModel):
    """ACD control: beam moves when the filtered pseudo-resistance leaves its deadband."""

    enabled: bool = True
    target_uohm: float | None = Field(
        None, gt=0.0, le=500.0, description="target R; None: from target_voltage_v at nominal current"
    )
    target_voltage_v: float = Field(4.25, gt=1.7, le=10.0)
    deadband_uohm: float = Field(0.3, ge=0.0, le=20.0, description="±deadband (docs/domain.md: 0.2–0.3 at 120 kA)")
    uohm_per_mm: float = Field(
        0.28, gt=0.0, le=10.0, description="ΔR per mm of ACD (≈ 34 mV/mm / 120 kA at 0.86 A/cm²)"
    )
    gain: float = Field(0.7, gt=0.0, le=1.0, description="share of the computed correction moved at once")
    min_move_mm: float = Field(1.0, ge=0.0, le=20.0)
    max_move_mm: float = Field(5.0, gt=0.0, le=50.0)
    min_interval_s: float = Field(1800.0, ge=0.0, le=86400.0, description="between two moves of one cell")
    reverse_lockout_s: float = Field(
        7200.0, ge=0.0, le=86400.0, description="no move opposite to the last one within this (anti-hunting)"
    )
    max_travel_mm_per_day: float = Field(80.0, gt=0.0, le=1000.0)
    lock_after_ae_s: float = Field(3600.0, ge=0.0, le=86400.0)
    lock_after_tapping_s: float = Field(1800.0, ge=0.0, le=86400.0)
    lock_after_anode_change_s: float = Field(3600.0, ge=0.0, le=86400.0)
    lock_after_feed_change_s: float = Field(600.0, ge=0.0, le=86400.0, description="after a feed-phase switch")
    lock_after_current_change_s: float = Field(
        1800.0, ge=0.0, le=86400.0, description="after the line setpoint moved by more than 0.5 %"
    )
    underfeed_window_s: float = Field(
        1800.0, ge=0.0, le=86400.0, description="judged once per feed cycle, early in the underfeed (alumina high)"
    )
    alumina_rich_offset_uohm: float = Field(
        0.15, ge=0.0, le=5.0, description="the alumina-rich R sits this much below the cycle-mean R"
    )
    max_move_after_operation_mm: float = Field(
        25.0, gt=0.0, le=100.0, description="first correction after tapping/anode change (metal level step)"
    )
    operation_window_s: float = Field(
        7200.0, ge=0.0, le=86400.0, description="that larger correction is allowed this long after the lock"
    )
    anode_change_increment_uohm: float = Field(0.3, ge=0.0, le=5.0, description="target bump after anode change")
    anode_change_increment_s: float = Field(28800.0, ge=0.0, le=172800.0, description="... fading over this")


class AmperageConfig(StrictModel):
    """Line-current setpoint to the rectifier (docs/domain.md §4)."""

    enabled: bool = True
    target_ka: float | None = Field(None, gt=0.0, le=1000.0, description="None: the layout's nominal current")
    min_ka: float = Field(60.0, ge=0.0, le=1000.0)
    max_ka: float = Field(130.0, gt=0.0, le=1000.0)
    ramp_ka_per_min: float = Field(3.0, gt=0.0, le=600.0, description="normal setpoint ramp")
    ramp_down_fast_ka_per_min: float = Field(
        6.0, gt=0.0, le=6000.0, description="headroom/cut-out ramp down (the rectifier's own limit)"
    )
    restart_ramp_ka_per_min: float = Field(1.0, gt=0.0, le=600.0, description="ramp after a trip or restart")
    restart_start_ka: float = Field(60.0, ge=0.0, le=1000.0, description="setpoint held while tripped")
    voltage_limit_v: float | list[float] = Field(
        1250.0, description="rectifier DC voltage limit [V], one value or one per line"
    )
    headroom_v: float = Field(35.0, ge=0.0, le=1000.0, description="kept free for one more AE")
    regulation_margin: float = Field(0.01, ge=0.0, le=0.2, description="extra share of U kept free")
    cutout_current_ka: float = Field(60.0, ge=0.0, le=1000.0, description="line current for shorting a cell")
    cutout_tolerance_ka: float = Field(1.5, gt=0.0, le=100.0)
    cutout_timeout_s: float = Field(1800.0, ge=10.0, le=86400.0, description="give up the cut-out after this")
    trim_gain_per_s: float = Field(0.002, ge=0.0, le=1.0, description="integral trim of DCCT vs setpoint")
    trim_limit: float = Field(0.01, ge=0.0, le=0.1, description="max trim, share of setpoint")

    @model_validator(mode="after")
    def _limits(self) -> AmperageConfig:
        lims = self.voltage_limit_v if isinstance(self.voltage_limit_v, list) else [self.voltage_limit_v]
        if not lims or any(not (10.0 < v <= 10000.0) for v in lims):
            raise ValueError(f"voltage_limit_v must be in (10, 10000] V, got {self.voltage_limit_v}")
        if self.min_ka > self.max_ka:
            raise ValueError(f"min_ka={self.min_ka} exceeds max_ka={self.max_ka}")
        return self


class PfcConfig(StrictModel):
    """PFC accounting, IPCC 2006 Tier 2 slope method for CWPB (docs/domain.md), AR5 GWP."""

    sef_cf4: float = Field(0.143, gt=0.0, le=10.0, description="kg CF4/t Al per AE-min/cell-day")
    c2f6_ratio: float = Field(0.121, ge=0.0, le=10.0, description="C2F6/CF4 mass ratio")
    gwp_cf4: float = Field(6630.0, gt=0.0, le=1e5, description="AR5 GWP-100")
    gwp_c2f6: float = Field(11100.0, gt=0.0, le=1e5, description="AR5 GWP-100")
    ce_assumed: float = Field(0.95, gt=0.5, le=1.0, description="CE used to estimate the metal produced")


class BathChemistryConfig(StrictModel):
    """AlF3 control from the lab's bath samples and the bath temperature
    (``potctl.bath_chemistry``; docs/domain.md "Bath chemistry and heat-balance control").

    Off by default: once on, the controller's AlF3 additions replace the potroom PLC's
    own AlF3 schedule on every remote cell it has a sample for.
    """

    enabled: bool = Field(False, description="command AlF3 additions from the samples (opt-in)")
    target_wt_pct: float = Field(11.0, ge=4.0, le=16.0, description="excess AlF3 target (plants: 10-12 wt %)")
    band_wt_pct: float = Field(1.0, gt=0.0, le=5.0, description="alarm alf3_off_band beyond target ± this")
    bath_mass_kg: float = Field(4000.0, ge=500.0, le=20000.0, description="nominal bath mass per cell")
    caf2_wt_pct: float = Field(5.0, ge=0.0, le=10.0, description="CaF2 of the bath (for the liquidus)")
    alumina_assumed_wt_pct: float = Field(
        2.5, ge=0.5, le=8.0, description="dissolved alumina for the liquidus when neither observer nor sample has it"
    )
    soda_alf3_kg_per_kg_alumina: float = Field(
        0.02, ge=0.0, le=0.1, description="AlF3 the alumina's Na2O neutralises (1.81 kg AlF3 per kg Na2O)"
    )
    loss_kg_per_day: float = Field(
        4.0, ge=0.0, le=100.0, description="emissions + sodium uptake at loss_ref_c and loss_ref_wt_pct"
    )
    loss_ref_c: float = Field(965.0, ge=900.0, le=1010.0)
    loss_ref_wt_pct: float = Field(11.0, gt=0.0, le=20.0)
    loss_t_scale_k: float = Field(
        30.0, gt=1.0, le=500.0, description="the loss grows by its reference value per this many K"
    )
    horizon_days: float = Field(2.0, ge=0.5, le=20.0, description="a sample's AlF3 error is made up over this")
    integral_per_day: float = Field(
        0.05, ge=0.0, le=2.0, description="share of a sample's error in kg/day that the bias learns per sample"
    )
    integral_max_kg_per_day: float = Field(40.0, ge=0.0, le=500.0)
    temp_gain_kg_per_day_per_k: float = Field(
        1.0, ge=0.0, le=50.0, description="more AlF3 when the bath runs hotter than the target's liquidus+superheat"
    )
    max_kg_per_day: float = Field(150.0, gt=0.0, le=1000.0, description="most AlF3 one cell gets per day")
    shot_kg: float = Field(5.0, gt=0.0, le=100.0, description="one AlF3 addition (feeder shot or bag)")
    sample_max_age_days: float = Field(
        3.0, gt=0.0, le=30.0, description="an older sample no longer drives feedback (feedforward only)"
    )
    sample_gain: float = Field(
        0.7, gt=0.0, le=1.0, description="weight of a new AlF3 sample against the carried estimate"
    )


class HeatBalanceConfig(StrictModel):
    """Superheat/ledge estimate and heat-balance actions (``potctl.heat_balance``):
    target-resistance offset and shell heat-exchanger duty. Off by default."""

    enabled: bool = Field(False, description="move the resistance target and exchanger duty (opt-in)")
    superheat_target_k: float = Field(8.0, ge=2.0, le=30.0, description="plants hold 5-15 K (Taylor, Haupin)")
    superheat_min_k: float = Field(5.0, ge=0.0, le=30.0)
    superheat_max_k: float = Field(15.0, ge=1.0, le=50.0)
    deadband_k: float = Field(1.5, ge=0.0, le=10.0, description="no resistance-target change within ± this")
    side_conductance_kw_per_k: float = Field(
        10.8, gt=0.0, le=200.0, description="bath -> ledge face h·A: side heat per K of superheat"
    )
    top_bottom_kw_per_k: float = Field(0.16, ge=0.0, le=10.0, description="top + bottom loss per K of bath")
    enthalpy_voltage_v: float = Field(
        2.02, ge=1.5, le=2.5, description="voltage equivalent of the reaction enthalpy at the assumed CE"
    )
    outside_loss_uohm: float = Field(
        2.3, ge=0.0, le=20.0, description="busbar + anode-top Joule heat that never reaches the bath"
    )
    heat_tau_s: float = Field(1800.0, ge=60.0, le=86400.0, description="bath heat input -> superheat lag")
    sample_gain: float = Field(0.3, gt=0.0, le=1.0, description="weight of a sampled superheat against the estimate")
    period_s: float = Field(900.0, ge=10.0, le=86400.0, description="heat-balance actions every")
    gain: float = Field(0.1, gt=0.0, le=1.0, description="share of the superheat correction integrated per period")
    r_offset_max_uohm: float = Field(
        4.0, ge=0.0, le=20.0, description="resistance-target offset bound (≈ ±0.5 V at 120 kA)"
    )
    r_offset_rate_uohm_per_h: float = Field(1.5, gt=0.0, le=50.0)
    hx_max_kw: float = Field(0.0, ge=0.0, le=500.0, description="exchanger extraction limit (0: none installed)")
    hx_base_kw: float = Field(0.0, ge=0.0, le=500.0, description="exchanger duty at the nominal operating point")
    hx_rate_kw_per_h: float = Field(20.0, gt=0.0, le=1000.0)
    ledge_target_cm: float = Field(10.0, ge=1.0, le=40.0)
    ledge_min_cm: float = Field(6.0, ge=0.0, le=40.0)
    ledge_max_cm: float = Field(16.0, ge=1.0, le=60.0)
    ledge_gain_kw_per_cm: float = Field(2.0, ge=0.0, le=50.0, description="exchanger duty per cm of ledge error")
    ledge_area_m2: float = Field(12.0, gt=1.0, le=60.0)
    k_ledge_w_per_mk: float = Field(1.2, gt=0.0, le=10.0)
    r_wall_k_per_w: float = Field(1.0e-3, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _band(self) -> HeatBalanceConfig:
        if not self.superheat_min_k < self.superheat_target_k < self.superheat_max_k:
            raise ValueError("superheat_min_k < superheat_target_k < superheat_max_k expected")
        if not self.ledge_min_cm < self.ledge_target_cm < self.ledge_max_cm:
            raise ValueError("ledge_min_cm < ledge_target_cm < ledge_max_cm expected")
        return self


class ControlConfig(StrictModel):
    """The whole pot-controller configuration (the ``[control]`` TOML table)."""

    e0_v: float = Field(E0_V, ge=0.0, le=3.0, description="back-EMF of the pseudo-resistance")
    observe_only: bool = Field(False, description="detect/predict/account but command nothing")
    detection: DetectionConfig = DetectionConfig()
    prediction: PredictionConfig = PredictionConfig()
    quench: QuenchConfig = QuenchConfig()
    feeding: FeedingConfig = FeedingConfig()
    resistance: ResistanceConfig = ResistanceConfig()
    amperage: AmperageConfig = AmperageConfig()
    pfc: PfcConfig = PfcConfig()
    bath: BathChemistryConfig = BathChemistryConfig()
    heat: HeatBalanceConfig = HeatBalanceConfig()


def control_config_from_dict(data: dict[str, Any], source: str | Path = "<control>") -> ControlConfig:
    """Validate a ``[control]`` table; errors become ``ConfigError`` naming ``source`` and keys."""
    return validate_config(ControlConfig, data, source, prefix="control")


def control_data_for_plant(data: dict[str, Any] | None, plant_config: Any) -> dict[str, Any]:
    """A ``[control]`` table completed from the plant: the rectifier voltage limits from its
    lines, and the cell's bath mass, CaF2, alumina soda (AlF3 neutralised per kg fed), ledge
    area and shell heat exchanger (installed limit, base duty) from its cell design, unless
    the table sets them. The daemon and ``control_config_for_plant`` both use it."""
    data = dict(data or {})
    amp = dict(data.get("amperage", {}) or {})
    if "voltage_limit_v" not in amp:
        amp["voltage_limit_v"] = [float(ln.rectifier.voltage_limit_v) for ln in plant_config.lines]
    data["amperage"] = amp
    cell = getattr(plant_config, "cell", None)
    if cell is not None:  # the cell's design values, unless the [control] table sets them
        bath = dict(data.get("bath", {}) or {})
        bath.setdefault("bath_mass_kg", float(cell.bath_mass_kg))
        bath.setdefault("caf2_wt_pct", float(cell.caf2_wt_pct))
        bath.setdefault("soda_alf3_kg_per_kg_alumina", float(cell.alf3_neutralised_per_kg_feed))
        data["bath"] = bath
        heat = dict(data.get("heat", {}) or {})
        heat.setdefault("hx_max_kw", float(cell.heat_exchanger_max_kw))
        heat.setdefault("hx_base_kw", float(min(cell.heat_exchanger_base_kw, cell.heat_exchanger_max_kw)))
        heat.setdefault("ledge_area_m2", float(cell.ledge_area_m2))
        data["heat"] = heat
    return data


def control_config_for_plant(plant_config: Any, source: str | Path = "<plant config>") -> ControlConfig:
    """Controller config of a plant: its ``[control]`` table over the defaults, completed
    from the plant (``control_data_for_plant``)."""
    return control_config_from_dict(control_data_for_plant(getattr(plant_config, "control", {}), plant_config), source)


def load_control_config(path: str | Path | None = None) -> ControlConfig:
    """Load the controller config from the ``[control]`` table of a TOML file.

    ``None`` returns the embedded defaults. A file without a ``[control]`` table also
    yields the defaults; keys that are present override them.
    """
    if path is None:
        return ControlConfig()
    data = load_toml(path)
    section = data.get("control", {})
    if not isinstance(section, dict):
        raise ConfigError([ConfigIssue(str(path), "control", f"expected a table, got {section!r}")])
    return control_config_from_dict(section, path)
