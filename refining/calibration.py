"""Calibration: fit a refining pot's parameters to a recording and say how well they are known.

The twin is replayed on the recording (``replay``, a Numba kernel): driven by the logged
current, heater power, charges and taps, it predicts

* the interval-mean **voltage** of every scan (ohmic: electrolyte conductivity, contacts),
* the **temperature** one scan ahead from the last measured one (heat loss, heat
  capacity, the heat a scrap charge takes) — one-step predictions keep the residuals
  independent, so the least-squares statistics mean what they say,
* the cathode **pool composition** at every assayed tap (Fe and Si in the scrap,
  separation) over the whole cycle.

``fit`` minimises the weighted residuals with ``scipy.optimize.least_squares`` over the
logarithm of a multiplier on each chosen parameter (positive by construction). Each
channel's noise is estimated from its own residuals (two passes), so the covariance
``(JᵀJ)⁻¹`` of the weighted Jacobian at the solution gives each parameter's standard
deviation and the correlations between them. A parameter is *identifiable* from this
recording when its relative std is small and it is not nearly collinear with another
(|ρ| close to 1: e.g. conductivity and contact resistance at one current density).

Gaps are bridged by the model (no residual on them) with the logged charge and tap
schedule continued inside them (``Recording.bridged_events``); blank voltages or temperatures give no residual.

Two corrections keep the stated uncertainty honest: each channel's covariance
contribution is inflated by (1 + ρ₁)/(1 − ρ₁) for a positive lag-1 autocorrelation ρ₁ of
its residuals (fewer independent samples than rows), and a scrap-grade parameter adds
in quadrature the scatter of the charges themselves (``noise.scrap_rel``/√charges): the
recording measures the scrap actually charged, the grade of the supply only to that.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numba import njit

from refining import model as rf
from refining.model import (
    N_EL,
    S_I,
    S_T,
    apply_charge,
    cathode_fractions,
    pot_step,
)
from refining.observer import _tap_exact

if TYPE_CHECKING:
    from refining.config import RefiningConfig
    from refining.shadow import Recording

__all__ = [
    "DEFAULT_PARAMS",
    "FIT_PARAMS",
    "CalibrationResult",
    "FitParam",
    "ParamEstimate",
    "fit",
    "replay",
]


@dataclass(frozen=True, slots=True)
class FitParam:
    """A parameter calibration can fit.

    Attributes:
        name: short name (``--params``).
        key: dotted config key (``{grade}`` is the scrap grade fitted).
        index: column in the kernel parameter row.
        scale: kernel value = config value × scale.
        unit: config unit.
        label: for reports.
    """

    name: str
    key: str
    index: int
    scale: float
    unit: str
    label: str


FIT_PARAMS: dict[str, FitParam] = {
    p.name: p
    for p in (
        FitParam("kappa", "electrolyte.conductivity_s_cm", rf.P_KAPPA_REF, 1.0, "S/cm", "electrolyte conductivity"),
        FitParam("r_contact", "electrodes.contact_resistance_mohm", rf.P_R_CONTACT, 1e-3, "mΩ", "contact resistance"),
        FitParam("ua", "thermal.loss_w_k", rf.P_UA, 1.0, "W/K", "heat-loss coefficient"),
        FitParam("heat_cap", "thermal.heat_capacity_mj_k", rf.P_HEAT_CAP, 1e6, "MJ/K", "heat capacity"),
        FitParam("scrap_heat", "thermal.scrap_heat_mj_kg", rf.P_SCRAP_H, 1e6, "MJ/kg", "heat to melt a kg of scrap"),
        FitParam("scrap_fe", "scrap.grades.{grade}.fe_pct", rf.P_SCRAP + rf.FE, 1e-2, "%", "Fe in the scrap"),
        FitParam("scrap_si", "scrap.grades.{grade}.si_pct", rf.P_SCRAP + rf.SI, 1e-2, "%", "Si in the scrap"),
        FitParam("beta_fe", "separation.beta_fe", rf.P_BETA + rf.FE, 1.0, "-", "Fe separation factor"),
        FitParam("ce_loss", "current_efficiency.loss_current_a_cm2", rf.P_CE_ILOSS, 1.0, "A/cm²", "CE loss current"),
    )
}
#: what ``potline calibrate`` fits unless told otherwise
DEFAULT_PARAMS = ("kappa", "ua", "heat_cap", "scrap_fe")
#: identifiable: relative std at most this ...
MAX_REL_STD = 0.10
#: ... and no correlation with another fitted parameter beyond this
MAX_ABS_CORR = 0.95
#: floor added to assays before taking log ratios [mass fraction]
ASSAY_EPS = 1e-5


# --------------------------------------------------------------------------- replay kernel


@njit(cache=True)
def replay(
    state0, p, t_s, current_a, voltage_v, temp_c, heater_kw, charge_kg, tap_kg, gap, dt_max, u_pred, t_pred, pool_x
):
    """Replay one pot on a recording with parameters ``p`` (noise off).

    Fills ``u_pred[m]`` (interval-mean voltage [V]), ``t_pred[m]`` (temperature at t[j]
    predicted from the measured one at t[j-1] [°C]) and ``pool_x[m, N_EL]`` (cathode
    pool mass fractions at t[j], before the tap logged there). NaN where there is no
    prediction (the first row, gaps, a blank previous temperature).
    """
    s = state0.copy()
    liq = np.empty(N_EL)
    x_c = np.empty(N_EL)
    ones = np.ones(N_EL)
    rng = np.ones(1, dtype=np.uint64)
    m = t_s.shape[0]
    if temp_c[0] == temp_c[0]:
        s[S_T] = temp_c[0]
    s[S_I] = current_a[0]
    u_pred[0] = np.nan
    t_pred[0] = np.nan
    cathode_fractions(s, x_c)
    for e in range(N_EL):
        pool_x[0, e] = x_c[e]
    for j in range(1, m):
        dtot = t_s[j] - t_s[j - 1]
        nsub = int(math.ceil(dtot / dt_max - 1e-9))
        if nsub < 1:
            nsub = 1
        dt = dtot / nsub
        if tap_kg[j - 1] > 0.0:
            _tap_exact(s, tap_kg[j - 1])
        is_gap = gap[j] > 0.5
        t_ok = temp_c[j - 1] == temp_c[j - 1]
        if t_ok and not is_gap:
            s[S_T] = temp_c[j - 1]  # one-step: from the last measured temperature
        if charge_kg[j - 1] > 0.0:
            apply_charge(s, p, rng, 0, charge_kg[j - 1], ones)
        if is_gap:
            s[S_I] = current_a[j - 1]
            for _i in range(nsub):
                pot_step(s, p, dt, 0.0, np.nan, np.nan, 1.0, ones, liq)
            u_pred[j] = np.nan
            t_pred[j] = np.nan
        else:
            s[S_I] = current_a[j]
            usum = 0.0
            for _i in range(nsub):
                usum += pot_step(s, p, dt, 0.0, heater_kw[j] * 1000.0, voltage_v[j], 1.0, ones, liq)
            u_pred[j] = usum / nsub
            t_pred[j] = s[S_T] if t_ok else np.nan
        cathode_fractions(s, x_c)
        for e in range(N_EL):
            pool_x[j, e] = x_c[e]


# --------------------------------------------------------------------------- results


@dataclass(slots=True)
class ParamEstimate:
    """One fitted parameter (values in the config's unit)."""

    name: str
    key: str
    label: str
    unit: str
    config: float
    estimate: float
    std: float
    rel_std: float
    identifiable: bool
    note: str = ""

    @property
    def change_pct(self) -> float:
        return 100.0 * (self.estimate / self.config - 1.0) if self.config else math.nan


@dataclass(slots=True)
class CalibrationResult:
    """A fit: estimates with their uncertainty, correlations and fit quality."""

    params: list[ParamEstimate]
    correlation: np.ndarray  # [p, p]
    channels: dict[str, dict[str, float]]  # voltage/temperature/assay: n, sigma, rms, chi2_per_n
    cost: float
    nfev: int
    success: bool
    message: str
    condition_number: float
    grade: str
    recording: str
    notes: list[str] = field(default_factory=list)

    @property
    def identifiable(self) -> list[ParamEstimate]:
        return [p for p in self.params if p.identifiable]

    def estimate(self, name: str) -> ParamEstimate:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        names = [p.name for p in self.params]
        return {
            "recording": self.recording,
            "grade": self.grade,
            "params": [{**asdict(p), "change_pct": p.change_pct} for p in self.params],
            "correlation": {
                a: {b: float(self.correlation[i, j]) for j, b in enumerate(names)} for i, a in enumerate(names)
            },
            "channels": self.channels,
            "cost": self.cost,
            "nfev": self.nfev,
            "success": self.success,
            "message": self.message,
            "condition_number": self.condition_number,
            "notes": list(self.notes),
        }

    def config_updates(self) -> dict[str, tuple[float, str]]:
        """Dotted config key -> (value, comment) for every identifiable estimate."""
        out = {}
        for p in self.identifiable:
            out[p.key] = (
                _round_sig(p.estimate, p.std),
                f"calibrated: {_fmt(p.estimate)} ± {_fmt(p.std)} {p.unit} (1σ) from {self.recording};"
                f" was {_fmt(p.config)}",
            )
        return out


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _round_sig(x: float, std: float) -> float:
    """``x`` rounded to two significant digits of its uncertainty (at least 4 significant digits kept)."""
    if not (math.isfinite(std) and std > 0) or x == 0:
        return float(f"{x:.6g}")
    d = max(0, 1 - int(math.floor(math.log10(std))))
    digits = max(d, 4 - 1 - int(math.floor(math.log10(abs(x)))))
    return round(x, digits)


# --------------------------------------------------------------------------- fit


def _lag1(r: np.ndarray) -> float:
    """Lag-1 autocorrelation of a residual sequence (0 when too short)."""
    r = np.asarray(r, dtype=float)
    if r.size < 4:
        return 0.0
    r = r - r.mean()
    den = float(r @ r)
    return float(r[1:] @ r[:-1]) / den if den > 0 else 0.0


@dataclass
class _Problem:
    cfg: RefiningConfig
    rec: Recording
    base: np.ndarray
    state0: np.ndarray
    specs: list[FitParam]
    dt_max: float
    u_mask: np.ndarray
    t_mask: np.ndarray
    a_rows: np.ndarray
    a_els: tuple[int, ...]
    sigma: dict[str, float]
    nfev: int = 0

    def params(self, theta: np.ndarray) -> np.ndarray:
        p = self.base.copy()
        for sp, th in zip(self.specs, theta, strict=True):
            p[sp.index] *= math.exp(th)
        return p

    def predict(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rec = self.rec
        m = rec.n
        u = np.empty(m)
        t = np.empty(m)
        x = np.empty((m, N_EL))
        charge, tap = rec.bridged_events()
        replay(self.state0, self.params(theta), rec.t_s, rec.current_a, rec.voltage_v, rec.temperature_c,
               rec.heater_kw, charge, tap, rec.gap.astype(np.float64), self.dt_max, u, t, x)  # fmt: skip
        self.nfev += 1
        return u, t, x

    def channel_residuals(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        u, t, x = self.predict(theta)
        rec = self.rec
        out = {
            "voltage": (u - rec.voltage_v)[self.u_mask],
            "temperature": (t - rec.temperature_c)[self.t_mask],
        }
        if self.a_rows.size:
            a = rec.assay[self.a_rows][:, list(self.a_els)]
            px = x[self.a_rows][:, list(self.a_els)]
            r = np.log((a + ASSAY_EPS) / (px + ASSAY_EPS))
            out["assay"] = r[np.isfinite(r).all(axis=1)].ravel()  # Fe, Si of each tap in turn
        else:
            out["assay"] = np.zeros(0)
        return out

    def residuals(self, theta: np.ndarray) -> np.ndarray:
        ch = self.channel_residuals(theta)
        return np.concatenate([ch[k] / self.sigma[k] for k in ("voltage", "temperature", "assay")])


def fit(
    cfg: RefiningConfig,
    rec: Recording,
    params: tuple[str, ...] | list[str] = DEFAULT_PARAMS,
    *,
    grade: str | None = None,
    dt_max: float | None = None,
) -> CalibrationResult:
    """Fit ``params`` (names in ``FIT_PARAMS``) of ``cfg`` to recording ``rec``.

    Args:
        cfg: the pot's config (starting point and everything not fitted).
        rec: the recording (``refining.recording.load_recording``).
        params: what to fit.
        grade: scrap grade charged (default: the config's).
        dt_max: integration sub-step [s] (default: the config's ``operation.dt_s``).

    Raises:
        ValueError: an unknown parameter name, or a recording without usable data.
    """
    from scipy.optimize import least_squares  # type: ignore[import-untyped]

    unknown = [p for p in params if p not in FIT_PARAMS]
    if unknown or not params:
        raise ValueError(f"unknown parameter(s) {unknown or '(none given)'}; known: {', '.join(FIT_PARAMS)}")
    grade = grade or cfg.scrap.grade
    specs = [FIT_PARAMS[p] for p in dict.fromkeys(params)]
    base = cfg.params(grade)
    for idx in (rf.P_NOISE_U, rf.P_NOISE_T, rf.P_NOISE_IF, rf.P_NOISE_SCRAP, rf.P_NOISE_ASSAY):
        base[idx] = 0.0
    on = rec.current_a > 0.05 * float(base[rf.P_I_MAX_A])
    u_mask = on & np.isfinite(rec.voltage_v) & ~rec.gap
    u_mask[0] = False
    t_prev_ok = np.concatenate([[False], np.isfinite(rec.temperature_c[:-1])])
    t_mask = np.isfinite(rec.temperature_c) & t_prev_ok & ~rec.gap
    a_rows = np.flatnonzero((rec.tap_kg > 0) & np.isfinite(rec.assay[:, rf.FE]))
    a_els = (rf.FE, rf.SI)
    if u_mask.sum() < 10 or t_mask.sum() < 10:
        raise ValueError(f"{rec.source}: too few usable voltage/temperature readings to calibrate")
    noise = cfg.noise
    sigma = {
        "voltage": max(noise.voltage_v, 1e-3),
        "temperature": max(noise.temperature_k, 0.05),
        "assay": max(noise.assay_rel, 1e-3),
    }
    prob = _Problem(cfg, rec, base, cfg.initial_state(), specs, float(dt_max or cfg.operation.dt_s), u_mask,
                    t_mask, a_rows, a_els, sigma)  # fmt: skip
    theta = np.zeros(len(specs))
    res = None
    for _pass in range(2):
        res = least_squares(prob.residuals, theta, method="trf", x_scale=0.1, diff_step=1e-4, xtol=1e-10, ftol=1e-10,
                            gtol=1e-10, max_nfev=200)  # fmt: skip
        theta = res.x
        # each channel's noise from its own residuals, then refit with those weights
        ch = prob.channel_residuals(theta)
        for k, r in ch.items():
            if r.size > len(specs):
                prob.sigma[k] = max(float(np.sqrt(np.mean(r**2))), 1e-9)
    assert res is not None
    ch = prob.channel_residuals(theta)
    r_all = prob.residuals(theta)
    J = np.asarray(res.jac)
    n_res, n_p = J.shape
    dof = max(n_res - n_p, 1)
    s2 = float(r_all @ r_all) / dof
    sv = np.linalg.svd(J, compute_uv=False)
    cond = float(sv[0] / sv[-1]) if sv[-1] > 0 else math.inf
    # sandwich: each channel's information inflated by its residuals' lag-1 autocorrelation
    meat = np.zeros((n_p, n_p))
    a = 0
    rho: dict[str, float] = {}
    for k in ("voltage", "temperature", "assay"):
        r = ch[k]
        b = a + r.size
        rho[k] = _lag1(r) if k != "assay" else max(_lag1(r[0::2]), _lag1(r[1::2]))
        infl = max(1.0, (1.0 + rho[k]) / (1.0 - rho[k])) if rho[k] < 0.99 else 100.0
        Jc = J[a:b]
        meat += infl * (Jc.T @ Jc)
        a = b
    try:
        bread = np.linalg.inv(J.T @ J)
        cov = bread @ meat @ bread * s2
    except np.linalg.LinAlgError:
        cov = np.full((n_p, n_p), np.nan)
    std_theta = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = cov / np.outer(std_theta, std_theta)
    n_charges = int(np.sum(rec.charge_kg > 0))
    sampling = cfg.noise.scrap_rel / math.sqrt(max(n_charges, 1))
    estimates: list[ParamEstimate] = []
    notes: list[str] = []
    for i, sp in enumerate(specs):
        conf = float(base[sp.index]) / sp.scale
        f = math.exp(theta[i])
        est = conf * f
        rel = float(std_theta[i])  # delta method on ln(f)
        if sp.name.startswith("scrap_") and sp.name != "scrap_heat":
            rel = math.hypot(rel, sampling)
        std = est * rel
        partners = [specs[j].name for j in range(n_p) if j != i and abs(corr[i, j]) > MAX_ABS_CORR]
        ok = bool(math.isfinite(rel) and rel <= MAX_REL_STD and not partners)
        why = []
        if not (math.isfinite(rel) and rel <= MAX_REL_STD):
            why.append(f"relative std {100 * rel:.0f} % > {100 * MAX_REL_STD:.0f} %")
        if partners:
            why.append(f"|correlation| > {MAX_ABS_CORR} with {', '.join(partners)}")
        key = sp.key.format(grade=grade)
        estimates.append(ParamEstimate(sp.name, key, sp.label, sp.unit, conf, est, std, rel, ok, "; ".join(why)))
        if not ok:
            notes.append(f"{sp.name} ({key}) not identifiable from this recording: {'; '.join(why)} — not written")
    channels = {}
    for k, r in ch.items():
        channels[k] = {
            "n": int(r.size),
            "sigma": float(prob.sigma[k]),
            "rms": float(np.sqrt(np.mean(r**2))) if r.size else math.nan,
            "bias": float(np.mean(r)) if r.size else math.nan,
            "lag1_autocorrelation": rho[k],
        }
    u_mean = float(np.mean(rec.voltage_v[u_mask]))
    channels["voltage"]["rms_pct"] = 100.0 * channels["voltage"]["rms"] / u_mean
    if not a_rows.size:
        notes.append("no assays: the scrap grade and separation cannot be fitted from this recording")
    if rec.gap.any():
        notes.append(
            "the recording has gaps: the replay assumes the logged charge and tap schedule continued inside them"
            " (composition parameters are less certain than their std says)"
        )
    return CalibrationResult(
        params=estimates,
        correlation=corr,
        channels=channels,
        cost=float(res.cost),
        nfev=prob.nfev,
        success=bool(res.success),
        message=str(res.message),
        condition_number=cond,
        grade=grade,
        recording=rec.source,
        notes=notes,
    )
