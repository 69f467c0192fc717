"""Refining-pot configuration: TOML validated with pydantic, turned into kernel arrays.

Units are in the key names. Every bound is stated on the field; a bad file raises
``RefiningConfigError`` (the config core's ``ConfigError``) whose message names the file,
the key (``section.key``), the allowed range and the value given, e.g.::

    config/refining_3ka.toml: electrolyte.conductivity_s_cm: expected a number in [0.3, 3] S/cm, got 7.0

Sources for the defaults: docs/domain.md "Scrap-refining prototype pots" (RUSAL, Oct 2025)
and docs/domain.md §5b; [EST] marks engineering estimates to calibrate on the pots.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from refining import model as rf
from twin.configcore import ConfigError, StrictModel, load_toml, validate_config
from twin.resources import config_dir

#: repository config directory
CONFIG_DIR = config_dir()
CONFIG_500A = CONFIG_DIR / "refining_500a.toml"
CONFIG_3KA = CONFIG_DIR / "refining_3ka.toml"


#: a refining config failed validation (the config core's error: ``issues``, ``errors``)
RefiningConfigError = ConfigError


def _f(default: float, lo: float, hi: float, unit: str = "", doc: str = "", strict_lo: bool = False) -> Any:
    """A float field with an inclusive range [lo, hi] (or (lo, hi] with strict_lo), its unit
    in ``json_schema_extra`` (the config core shows it in range errors)."""
    kw: dict[str, Any] = {"le": hi, "description": doc, "json_schema_extra": {"unit": unit}}
    kw["gt" if strict_lo else "ge"] = lo
    return Field(default, **kw)


class PotSection(StrictModel):
    """The pot and its rectifier."""

    name: str = "scrap-refining prototype"
    nominal_current_a: float = _f(3000.0, 50.0, 20000.0, "A", "design current")
    electrode_area_cm2: float = _f(6000.0, 100.0, 200000.0, "cm²", "anode/cathode interface area")
    rectifier_max_a: float = _f(3600.0, 50.0, 25000.0, "A", "rectifier hardware limit")


class AnodeSection(StrictModel):
    """Initial anode alloy (Al + Cu densifier + residual impurities)."""

    mass_kg: float = _f(180.0, 1.0, 20000.0, "kg")
    cu_pct: float = _f(28.0, 10.0, 45.0, "%", "Cu added so the alloy sinks below the electrolyte")
    fe_pct: float = _f(0.2, 0.0, 5.0, "%")
    si_pct: float = _f(0.15, 0.0, 5.0, "%")
    density_kg_m3: float = _f(
        3400.0, 2500.0, 5000.0, "kg/m³", "initial alloy (docs/domain.md: 3400–3700 for Al + ~30 % Cu)"
    )
    activity_coeff_al: float = _f(0.4, 0.05, 1.0, "-", "γ_Al in Al–Cu [EST]")


class ElectrolyteSection(StrictModel):
    """Fluoride (± chloride) refining electrolyte between anode alloy and cathode."""

    thickness_cm: float = _f(5.0, 1.0, 20.0, "cm")
    density_kg_m3: float = _f(2700.0, 2000.0, 3500.0, "kg/m³")
    conductivity_s_cm: float = _f(1.0, 0.3, 3.0, "S/cm", "at conductivity_ref_c (Hurter/Sumitomo baths 0.9–1.25)")
    conductivity_ref_c: float = _f(800.0, 600.0, 1100.0, "°C")
    conductivity_activation_k: float = _f(1204.3, 0.0, 5000.0, "K", "ln κ slope vs 1/T (Wang)")
    loss_pct_per_day: float = _f(0.02, 0.0, 2.0, "%/d", "volatilisation")


class CathodeSection(StrictModel):
    """Refined-metal pool."""

    initial_kg: float = _f(45.0, 0.1, 10000.0, "kg")
    heel_kg: float = _f(40.0, 0.0, 10000.0, "kg", "metal left in the pot after a tap")
    initial_purity_pct: float = _f(99.95, 99.0, 100.0, "%")


class ElectrodesSection(StrictModel):
    """Contacts and interface kinetics."""

    contact_resistance_mohm: float = _f(0.1, 0.0, 100.0, "mΩ", "collectors, leads, contacts")
    exchange_current_anode_a_cm2: float = _f(0.5, 0.01, 100.0, "A/cm²")
    exchange_current_cathode_a_cm2: float = _f(0.5, 0.01, 100.0, "A/cm²")
    transfer_coefficient: float = _f(0.5, 0.1, 1.0, "-")
    limiting_current_a_cm2: float = _f(5.0, 0.5, 100.0, "A/cm²", "anode Al supply at pure Al")


class CurrentEfficiencySection(StrictModel):
    """CE = 1 − i_loss·exp(k·(T − T_ref))/i."""

    loss_current_a_cm2: float = _f(0.025, 0.0, 0.5, "A/cm²")
    loss_temp_coeff_per_k: float = _f(0.01, 0.0, 0.1, "1/K", "Dewing: ~2 %/K on the loss in primary cells")
    ref_c: float = _f(800.0, 600.0, 1100.0, "°C")


class SeparationSection(StrictModel):
    """Impurity transfer anode → cathode."""

    beta_fe: float = _f(300.0, 1.0, 1e6, "-", "Ueda 1998: Fe > 100–300")
    beta_cu: float = _f(2000.0, 1.0, 1e6, "-", "Solheim 2021: Cu > 1000")
    beta_si: float = _f(30.0, 1.0, 1e6, "-", "Ueda 1998: Si ≈ 30")
    entrainment: float = _f(1e-4, 0.0, 0.05, "kg/kg", "alloy droplets per kg Al transferred [EST]")
    sludge_entrainment_per_day: float = _f(0.03, 0.0, 5.0, "1/d", "of the excess (sludge) impurity [EST]")


class SolubilitySection(StrictModel):
    """Solubility in the liquid anode alloy (mass %) and the sludge phases [EST]."""

    ref_c: float = _f(800.0, 600.0, 1100.0, "°C")
    fe_pct: float = _f(3.0, 0.1, 20.0, "%")
    fe_pct_per_k: float = _f(0.02, 0.0, 0.5, "%/K")
    cu_pct: float = _f(50.0, 10.0, 80.0, "%")
    cu_pct_per_k: float = _f(0.05, 0.0, 0.5, "%/K")
    si_pct: float = _f(20.0, 1.0, 50.0, "%")
    si_pct_per_k: float = _f(0.05, 0.0, 0.5, "%/K")
    sludge_fe_frac: float = _f(0.37, 0.05, 1.0, "-", "Fe in the Fe-bearing intermetallic (Al3Fe/Al7Cu2Fe)")
    sludge_cu_frac: float = _f(0.53, 0.05, 1.0, "-", "Cu in Al2Cu")
    sludge_si_frac: float = _f(1.0, 0.05, 1.0, "-", "primary Si")


class ThermalSection(StrictModel):
    """Lumped energy balance and the auxiliary heater."""

    initial_c: float = _f(800.0, 600.0, 1100.0, "°C")
    heat_capacity_mj_k: float = _f(1.2, 0.01, 100.0, "MJ/K")
    loss_w_k: float = _f(12.0, 0.1, 5000.0, "W/K", "to ambient")
    ambient_c: float = _f(25.0, -30.0, 60.0, "°C")
    heater_max_kw: float = _f(8.0, 0.0, 1000.0, "kW")
    heater_kp_w_k: float = _f(300.0, 0.0, 1e6, "W/K")
    heater_ti_h: float = _f(4.0, 0.01, 1000.0, "h", "integral time (0 → P only is not allowed)")
    scrap_heat_mj_kg: float = _f(1.3, 0.0, 5.0, "MJ/kg", "cold scrap to molten at bath T")
    min_c: float = _f(700.0, 500.0, 1100.0, "°C", "pot stops below (freeze)")
    max_c: float = _f(900.0, 600.0, 1300.0, "°C", "pot stops above")


class LimitsSection(StrictModel):
    """Cycle-end criteria (P1020: Al ≥ 99.7 %, Fe ≤ 0.20 %, Si ≤ 0.10 %)."""

    cathode_fe_pct: float = _f(0.20, 0.001, 5.0, "%")
    cathode_si_pct: float = _f(0.10, 0.001, 5.0, "%")
    cathode_cu_pct: float = _f(0.10, 0.001, 5.0, "%", "no P1020 limit; the total purity binds [EST]")
    purity_min_pct: float = _f(99.7, 90.0, 99.999, "%")
    sludge_max_pct: float = _f(2.0, 0.01, 50.0, "%", "anode saturated when sludge exceeds this share")
    density_margin_kg_m3: float = _f(200.0, 0.0, 2000.0, "kg/m³")
    max_days: float = _f(90.0, 1.0, 1000.0, "d", "timer fallback only")


class ScrapGrade(StrictModel):
    """Impurity content of a scrap grade (rest Al)."""

    fe_pct: float = _f(0.8, 0.0, 10.0, "%")
    cu_pct: float = _f(2.0, 0.0, 20.0, "%")
    si_pct: float = _f(0.25, 0.0, 15.0, "%")
    note: str = ""


class ScrapSection(StrictModel):
    """The scrap charged and the grades a campaign can choose from."""

    grade: str = "offgrade_fe_cu"
    grades: dict[str, ScrapGrade] = Field(default_factory=lambda: {"offgrade_fe_cu": ScrapGrade()})

    @model_validator(mode="after")
    def _grade_known(self) -> ScrapSection:
        if self.grade not in self.grades:
            raise ValueError(f"grade {self.grade!r} is not one of the grades {sorted(self.grades)}")
        return self


class NoiseSection(StrictModel):
    """Seedable noise (per-pot streams)."""

    seed: int = Field(1, ge=0, le=2**32 - 1)
    voltage_v: float = _f(0.005, 0.0, 1.0, "V", "measurement")
    temperature_k: float = _f(0.5, 0.0, 20.0, "K", "measurement")
    interface_rel: float = _f(0.01, 0.0, 0.3, "-", "electrolyte thickness waves, relative std")
    interface_tau_s: float = _f(300.0, 1.0, 1e5, "s")
    scrap_rel: float = _f(0.05, 0.0, 1.0, "-", "charge-to-charge impurity scatter")
    assay_rel: float = _f(0.02, 0.0, 1.0, "-", "lab assay")


class OperationSection(StrictModel):
    """Nominal operation (the default policy's setpoints) and integration."""

    current_a: float = _f(3000.0, 0.0, 20000.0, "A")
    heater_setpoint_c: float = _f(800.0, 600.0, 1100.0, "°C")
    startup_ramp_a_per_h: float = _f(250.0, 1.0, 1e5, "A/h")
    tap_every_h: float = _f(48.0, 1.0, 1000.0, "h")
    charge_every_h: float = _f(12.0, 0.5, 1000.0, "h")
    control_period_s: float = _f(600.0, 1.0, 86400.0, "s")
    dt_s: float = _f(60.0, 0.1, 3600.0, "s")


class SafetySection(StrictModel):
    """Limits a controller's commands must respect (checked in shadow mode)."""

    current_min_a: float = _f(0.0, 0.0, 20000.0, "A")
    current_max_a: float = _f(3300.0, 1.0, 25000.0, "A")
    ramp_a_per_h: float = _f(300.0, 1.0, 1e6, "A/h")
    heater_setpoint_min_c: float = _f(740.0, 600.0, 1100.0, "°C")
    heater_setpoint_max_c: float = _f(860.0, 600.0, 1100.0, "°C")
    charge_max_kg: float = _f(15.0, 0.0, 10000.0, "kg", "per charge (chill)")
    tap_max_kg: float = _f(60.0, 0.0, 10000.0, "kg", "per tap")
    temperature_min_c: float = _f(740.0, 500.0, 1100.0, "°C", "predicted pot temperature must stay above")
    temperature_max_c: float = _f(860.0, 600.0, 1300.0, "°C", "predicted pot temperature must stay below")
    metal_inventory_max_kg: float = _f(
        150.0, 1.0, 100000.0, "kg", "cathode metal the pot holds before the pool reaches the electrolyte [EST]"
    )
    anode_inventory_max_kg: float = _f(260.0, 1.0, 100000.0, "kg", "anode alloy the pot holds [EST]")


class VerdictSection(StrictModel):
    """Deployment criteria for a candidate controller (shadow mode)."""

    purity_min_pct: float = _f(99.7, 90.0, 100.0, "%", "every batch, P1020")
    energy_max_kwh_kg: float = _f(10.0, 1.0, 100.0, "kWh/kg", "DC; seed ≈ 9 MWh/t")
    cycle_min_days: float = _f(40.0, 0.0, 1000.0, "d", "seed: stable 40–45 d")
    voltage_rms_max_pct: float = _f(2.0, 0.01, 50.0, "%", "observer residual for a credible twin")
    mismatch_flag_pct: float = _f(5.0, 0.1, 100.0, "%", "flag parameters off config by more")
    tap_interval_max_h: float = _f(72.0, 1.0, 10000.0, "h", "longest time without a tap in the predicted cycle")


class RefiningConfig(StrictModel):
    """A scrap-refining pot (one TOML file)."""

    pot: PotSection = PotSection()
    anode: AnodeSection = AnodeSection()
    electrolyte: ElectrolyteSection = ElectrolyteSection()
    cathode: CathodeSection = CathodeSection()
    electrodes: ElectrodesSection = ElectrodesSection()
    current_efficiency: CurrentEfficiencySection = CurrentEfficiencySection()
    separation: SeparationSection = SeparationSection()
    solubility: SolubilitySection = SolubilitySection()
    thermal: ThermalSection = ThermalSection()
    limits: LimitsSection = LimitsSection()
    scrap: ScrapSection = ScrapSection()
    noise: NoiseSection = NoiseSection()
    operation: OperationSection = OperationSection()
    safety: SafetySection = SafetySection()
    verdict: VerdictSection = VerdictSection()

    @model_validator(mode="after")
    def _consistent(self) -> RefiningConfig:
        if self.cathode.heel_kg > self.cathode.initial_kg:
            raise ValueError("cathode.heel_kg must not exceed cathode.initial_kg")
        if self.thermal.min_c >= self.thermal.max_c:
            raise ValueError("thermal.min_c must be below thermal.max_c")
        if self.safety.current_max_a > self.pot.rectifier_max_a:
            raise ValueError("safety.current_max_a must not exceed pot.rectifier_max_a")
        if self.operation.dt_s > self.operation.control_period_s:
            raise ValueError("operation.dt_s must not exceed operation.control_period_s")
        if self.safety.metal_inventory_max_kg <= self.cathode.initial_kg:
            raise ValueError("safety.metal_inventory_max_kg must exceed cathode.initial_kg")
        if self.safety.anode_inventory_max_kg <= self.anode.mass_kg:
            raise ValueError("safety.anode_inventory_max_kg must exceed anode.mass_kg")
        if self.safety.temperature_min_c >= self.safety.temperature_max_c:
            raise ValueError("safety.temperature_min_c must be below safety.temperature_max_c")
        return self

    # ------------------------------------------------------------------ arrays

    def grade(self, name: str | None = None) -> ScrapGrade:
        """The named scrap grade (default: ``scrap.grade``)."""
        name = name or self.scrap.grade
        if name not in self.scrap.grades:
            raise KeyError(f"unknown scrap grade {name!r}; known: {sorted(self.scrap.grades)}")
        return self.scrap.grades[name]

    def params(self, grade: str | None = None) -> np.ndarray:
        """One parameter row ``[N_PARAM]`` for the kernels."""
        p = np.zeros(rf.N_PARAM)
        area = self.pot.electrode_area_cm2
        p[rf.P_AREA_CM2] = area
        p[rf.P_I_MAX_A] = self.pot.rectifier_max_a
        el = self.electrolyte
        p[rf.P_RHO_EL] = el.density_kg_m3
        p[rf.P_KAPPA_REF] = el.conductivity_s_cm
        p[rf.P_KAPPA_TREF_C] = el.conductivity_ref_c
        p[rf.P_KAPPA_EA_K] = el.conductivity_activation_k
        m_el = self.electrolyte_mass_kg
        p[rf.P_EL_LOSS] = m_el * el.loss_pct_per_day / 100.0 / 86400.0
        ed = self.electrodes
        p[rf.P_R_CONTACT] = ed.contact_resistance_mohm * 1e-3
        p[rf.P_R_MULT] = 1.0
        p[rf.P_I0_A] = ed.exchange_current_anode_a_cm2
        p[rf.P_I0_C] = ed.exchange_current_cathode_a_cm2
        p[rf.P_ALPHA] = ed.transfer_coefficient
        p[rf.P_ILIM] = ed.limiting_current_a_cm2
        p[rf.P_GAMMA_AL] = self.anode.activity_coeff_al
        ce = self.current_efficiency
        p[rf.P_CE_ILOSS] = ce.loss_current_a_cm2
        p[rf.P_CE_TCOEF] = ce.loss_temp_coeff_per_k
        p[rf.P_CE_TREF_C] = ce.ref_c
        sp = self.separation
        p[rf.P_BETA + rf.FE] = sp.beta_fe
        p[rf.P_BETA + rf.CU] = sp.beta_cu
        p[rf.P_BETA + rf.SI] = sp.beta_si
        p[rf.P_ENTRAIN] = sp.entrainment
        p[rf.P_SLUDGE_K] = sp.sludge_entrainment_per_day / 86400.0
        so = self.solubility
        p[rf.P_XSAT_TREF_C] = so.ref_c
        for e, (x, dx, w) in enumerate(
            [
                (so.fe_pct, so.fe_pct_per_k, so.sludge_fe_frac),
                (so.cu_pct, so.cu_pct_per_k, so.sludge_cu_frac),
                (so.si_pct, so.si_pct_per_k, so.sludge_si_frac),
            ]
        ):
            p[rf.P_XSAT + e] = x / 100.0
            p[rf.P_XSAT_DT + e] = dx / 100.0
            p[rf.P_SLUDGE_W + e] = w
        th = self.thermal
        p[rf.P_HEAT_CAP] = th.heat_capacity_mj_k * 1e6
        p[rf.P_UA] = th.loss_w_k
        p[rf.P_T_AMB] = th.ambient_c
        p[rf.P_Q_AUX_MAX] = th.heater_max_kw * 1000.0
        p[rf.P_HEATER_KP] = th.heater_kp_w_k
        p[rf.P_HEATER_KI] = th.heater_kp_w_k / (th.heater_ti_h * 3600.0)
        p[rf.P_SCRAP_H] = th.scrap_heat_mj_kg * 1e6
        p[rf.P_T_MIN_C] = th.min_c
        p[rf.P_T_MAX_C] = th.max_c
        p[rf.P_HEEL_KG] = self.cathode.heel_kg
        li = self.limits
        p[rf.P_LIM + rf.FE] = li.cathode_fe_pct / 100.0
        p[rf.P_LIM + rf.CU] = li.cathode_cu_pct / 100.0
        p[rf.P_LIM + rf.SI] = li.cathode_si_pct / 100.0
        p[rf.P_PURITY_MIN] = li.purity_min_pct / 100.0
        p[rf.P_SLUDGE_MAX] = li.sludge_max_pct / 100.0
        p[rf.P_RHO_MARGIN] = li.density_margin_kg_m3
        p[rf.P_RHO_A_FACTOR] = self.anode.density_kg_m3 / float(rf.ideal_anode_density(self.initial_state()))
        p[rf.P_MAX_S] = li.max_days * 86400.0
        g = self.grade(grade)
        p[rf.P_SCRAP + rf.FE] = g.fe_pct / 100.0
        p[rf.P_SCRAP + rf.CU] = g.cu_pct / 100.0
        p[rf.P_SCRAP + rf.SI] = g.si_pct / 100.0
        no = self.noise
        p[rf.P_NOISE_U] = no.voltage_v
        p[rf.P_NOISE_T] = no.temperature_k
        p[rf.P_NOISE_IF] = no.interface_rel
        p[rf.P_NOISE_IF_TAU] = no.interface_tau_s
        p[rf.P_NOISE_SCRAP] = no.scrap_rel
        p[rf.P_NOISE_ASSAY] = no.assay_rel
        return p

    @property
    def electrolyte_mass_kg(self) -> float:
        """Electrolyte mass for the configured thickness over the electrode area [kg]."""
        return self.electrolyte.thickness_cm * self.pot.electrode_area_cm2 * self.electrolyte.density_kg_m3 * 1e-6

    def initial_state(self) -> np.ndarray:
        """One state row ``[N_STATE]`` at the start of a cycle (current off)."""
        s = np.zeros(rf.N_STATE)
        a = self.anode
        m = a.mass_kg
        s[rf.S_M_A + rf.FE] = m * a.fe_pct / 100.0
        s[rf.S_M_A + rf.CU] = m * a.cu_pct / 100.0
        s[rf.S_M_A + rf.SI] = m * a.si_pct / 100.0
        s[rf.S_M_A_AL] = m - s[rf.S_M_A : rf.S_M_A + rf.N_EL].sum()
        c = self.cathode
        imp = c.initial_kg * (100.0 - c.initial_purity_pct) / 100.0
        # residual impurities of the starting metal, split like typical P1020-plus
        split = np.array([0.6, 0.1, 0.3])
        s[rf.S_M_C : rf.S_M_C + rf.N_EL] = imp * split
        s[rf.S_M_C_AL] = c.initial_kg - imp
        s[rf.S_M_C0] = c.initial_kg
        s[rf.S_M_C0_IMP : rf.S_M_C0_IMP + rf.N_EL] = imp * split
        s[rf.S_M_EL] = self.electrolyte_mass_kg
        s[rf.S_T] = self.thermal.initial_c
        s[rf.S_HEATER_SP] = self.operation.heater_setpoint_c
        s[rf.S_MIN_BATCH_PURITY] = 1.0
        s[rf.S_ASSAY : rf.S_ASSAY + rf.N_EL] = np.nan
        s[rf.S_T_LOW] = self.thermal.initial_c
        s[rf.S_T_HIGH] = self.thermal.initial_c
        # start the heater integral at the steady duty that holds temperature at zero current
        th = self.thermal
        q0 = th.loss_w_k * (th.initial_c - th.ambient_c)
        ki = th.heater_kp_w_k / (th.heater_ti_h * 3600.0)
        s[rf.S_HEAT_INT] = min(q0, th.heater_max_kw * 1000.0) / ki if ki > 0 else 0.0
        return s

    def pots(
        self, n: int = 1, grade: str | None = None, seed: int | None = None, pot_ids=None, dt_s: float | None = None
    ) -> rf.RefiningPots:
        """``n`` identical pots of this config (each with its own random stream)."""
        p = np.tile(self.params(grade), (n, 1))
        s = np.tile(self.initial_state(), (n, 1))
        ids = np.arange(n) if pot_ids is None else np.asarray(pot_ids)
        rng = rf.seed_streams(self.noise.seed if seed is None else seed, ids)
        return rf.RefiningPots(p, s, rng, dt_s=self.operation.dt_s if dt_s is None else dt_s)


# --------------------------------------------------------------------------- loading


def config_from_dict(data: dict[str, Any], source: str | Path = "<dict>") -> RefiningConfig:
    """Validate a parsed TOML document; raise ``RefiningConfigError`` naming ``source``."""
    return validate_config(RefiningConfig, data, source)


def load_refining_config(path: str | Path) -> RefiningConfig:
    """Read and validate a refining-pot TOML file.

    Raises:
        RefiningConfigError: unreadable file, TOML syntax error or invalid values; the
            message names the file, the key, the allowed range and the value given.
    """
    return config_from_dict(load_toml(path), path)


def scaled_params(base: np.ndarray, **factors: float) -> np.ndarray:
    """A copy of parameter rows with named multipliers applied.

    Known factors: ``kappa`` (electrolyte conductivity), ``r_contact``, ``ua`` (heat
    loss), ``heat_cap``, ``beta_fe``/``beta_cu``/``beta_si``, ``entrainment``,
    ``sludge_k``, ``xsat_fe``, ``scrap_fe``/``scrap_cu``/``scrap_si``, ``ce_loss``.
    """
    idx = {
        "kappa": rf.P_KAPPA_REF,
        "r_contact": rf.P_R_CONTACT,
        "ua": rf.P_UA,
        "heat_cap": rf.P_HEAT_CAP,
        "beta_fe": rf.P_BETA + rf.FE,
        "beta_cu": rf.P_BETA + rf.CU,
        "beta_si": rf.P_BETA + rf.SI,
        "entrainment": rf.P_ENTRAIN,
        "sludge_k": rf.P_SLUDGE_K,
        "xsat_fe": rf.P_XSAT + rf.FE,
        "scrap_fe": rf.P_SCRAP + rf.FE,
        "scrap_cu": rf.P_SCRAP + rf.CU,
        "scrap_si": rf.P_SCRAP + rf.SI,
        "ce_loss": rf.P_CE_ILOSS,
        "r_mult": rf.P_R_MULT,
    }
    out = np.array(base, dtype=np.float64, copy=True)
    for name, f in factors.items():
        if name not in idx:
            raise KeyError(f"unknown parameter factor {name!r}; known: {sorted(idx)}")
        if not (math.isfinite(f) and f > 0):
            raise ValueError(f"factor {name} must be a positive number, got {f}")
        out[..., idx[name]] *= f
    return out


# --------------------------------------------------------------------------- writing a calibrated copy

_SECTION = re.compile(r"^\s*\[([^\[\]]+)\]\s*(#.*)?$")


def _toml_value(v: float) -> str:
    text = repr(float(v))
    return text if ("." in text or "e" in text or "inf" in text or "nan" in text) else text + ".0"


def update_config_text(text: str, updates: Mapping[str, tuple[float, str]], source: str = "<config>") -> str:
    """``text`` (a refining TOML) with ``section.key`` values replaced, comments kept.

    Each updated line reads ``key = value  # comment``; a key missing from its section is
    added at the section's end, a missing section at the end of the file.

    Raises:
        ValueError: a key without a section (``updates`` keys are dotted: ``thermal.loss_w_k``).
    """
    lines = text.splitlines()
    for dotted, (value, comment) in updates.items():
        section, _, key = dotted.rpartition(".")
        if not section:
            raise ValueError(f"{source}: {dotted}: expected a dotted key section.key")
        new = f"{key} = {_toml_value(value)}"
        new = f"{new:<37}# {comment}" if comment else new
        start = None
        for i, line in enumerate(lines):
            m = _SECTION.match(line)
            if m and m.group(1).strip() == section:
                start = i
                break
        if start is None:
            lines += ["", f"[{section}]", new]
            continue
        end = len(lines)
        for i in range(start + 1, len(lines)):
            if _SECTION.match(lines[i]) or lines[i].lstrip().startswith("[["):
                end = i
                break
        pat = re.compile(rf"^\s*{re.escape(key)}\s*=")
        for i in range(start + 1, end):
            if pat.match(lines[i]):
                lines[i] = new
                break
        else:
            at = end
            while at > start + 1 and not lines[at - 1].strip():
                at -= 1
            lines.insert(at, new)
    return "\n".join(lines) + "\n"


def write_calibrated_config(
    source: str | Path, out: str | Path, updates: Mapping[str, tuple[float, str]], header: Sequence[str] = ()
) -> RefiningConfig:
    """Write a copy of config ``source`` with ``updates`` (``section.key`` -> (value, comment))
    and ``header`` comment lines on top; the copy is loaded back and validated.

    Returns:
        the calibrated config as loaded from ``out``.

    Raises:
        RefiningConfigError: the source or the written copy is invalid (named file and key).
    """
    src = Path(source)
    load_refining_config(src)  # the source itself must be valid
    text = update_config_text(src.read_text(encoding="utf-8"), updates, str(src))
    head = "".join(f"# {h}\n" for h in header)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(head + ("#\n" if head else "") + text, encoding="utf-8")
    return load_refining_config(out)
