"""The optimiser: sequential linear programming on the twin's step responses, HiGHS via
``scipy.optimize.linprog``.

Why this and not a black-box optimiser on the twin: a 48-h hourly plan of three lines has
288 decisions (current and exchanger duty per line and hour) and thousands of constraints
(every representative cell's superheat and ledge every hour, the production target, the
grid's power band, the rectifier's limits and ramps). Over the range the rectifiers allow
the twin's response is close to linear and time-invariant — the PLC holds the cell voltage,
so energy and metal go with the current; superheat and ledge answer a current or
exchanger step with a slow first-order-like response — so the responses measured on the
twin (five rollouts: flat, current ±10 kA, exchanger ±40 kW) give a linear model that an LP
solves to the optimum in milliseconds, with duals that say which constraint binds. HiGHS
(scipy's default LP solver) is well kept, deterministic and ships with scipy. The
non-linear rest (the ledge's asymmetry, AEs, the clipped exchanger) is caught by running
each LP plan on the twin and tightening the bound of every cell and hour it missed, then
solving again (a few iterations). SLSQP over 288 variables with a rollout per gradient
would need thousands of rollouts; the LP needs five plus one per iteration.

Constraints (and sources):

* rectifier: ``min_ka`` <= I <= ``max_ka`` and |dI| <= ``ramp_ka_per_min`` x step
  (config, per line);
* heat balance per cell: hourly superheat within 5-20 K (an hour with an AE on the cell
  is left to the AE criterion: an AE heats its cell past 20 K in flat operation too) (Dewing's CE fitted for ~3-20 K,
  ``twin.envelope``; 5 K keeps a margin above the liquidus, the practice band of point-fed
  prebake cells being about 5-15 K, Grjotheim & Welch) and the side ledge at least 3 cm
  (the twin's envelope flags < 1 cm: lining exposed; 3 cm is this planner's margin);
* the validity envelope: no cell of the plan raises a flag flat operation does not;
* production: metal within 1 % of flat on the model (the criterion is 2 %: half kept as a
  margin for the model error) unless the scenario is a request that waives it;
* AE risk: the plan's AEs on the twin not above flat's (+2 for Poisson noise on a bench);
* a grid request: plant power within the requested band of flat power every hour.

A request the constraints do not allow is refused: the LP that maximises the share of the
request it can deliver names the constraint with the largest dual at that optimum.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linprog  # type: ignore[import-untyped]

from planner.rollouts import Outcome, Schedule, TwinModel, flat_schedule
from planner.scenarios import Scenario

__all__ = ["Bands", "PlanResult", "Response", "fit_response", "optimise", "violations"]


@dataclass
class Bands:
    """Heat-balance bands and tolerances the plan is held to (sources: module doc)."""

    superheat_min_k: float = 5.0
    superheat_max_k: float = 20.0
    ledge_min_cm: float = 3.0
    production_tol: float = 0.01  # on the model; the acceptance is 2 %
    ae_allowance: int = 2
    band_slack: float = 0.005  # power band met on the twin within 0.5 % of flat power
    #: the process's own ramp [kA per hour]: the potroom PLC's feed control (a 300-s current
    #: filter, tracking cycles of hours) has to follow the current. An estimate, from the
    #: twin: a 26 kA step in 4 min (the rectifier's 6 kA/min) on a 132-cell line set off
    #: 135 AEs in the hour on the full reference plant, against ~0.3 per hour in flat operation.
    process_ramp_ka_per_h: float = 6.0


@dataclass
class Response:
    """Linear model of the twin around flat operation, fitted from rollouts.

    ``base``: the flat rollout. ``g_*``: impulse responses per step (superheat [K/kA],
    [K/kW]; ledge [cm/kA], [cm/kW]) of a cell to its line's current / exchanger duty,
    pooled over the simulated cells. ``e_*``/``m_*``: [n_steps, n_lines] impulse responses
    of each line's energy [MWh per kA, per kW] and metal [t per kA, per kW] per step (the
    metal's answer to the exchangers is the current efficiency's to the superheat).
    """

    base: Outcome
    g_sh_i: np.ndarray
    g_sh_h: np.ndarray
    g_ld_i: np.ndarray
    g_ld_h: np.ndarray
    e_i: np.ndarray
    e_h: np.ndarray
    m_i: np.ndarray
    m_h: np.ndarray
    i0: np.ndarray
    h0: np.ndarray
    hx_min_kw: float
    hx_max_kw: float
    i_start: np.ndarray
    rollouts: int = 5


def _impulse(step_resp: np.ndarray) -> np.ndarray:
    g = np.diff(step_resp, prepend=0.0)
    return g


def fit_response(model: TwinModel, n_steps: int, step_s: float, di_ka: float = 10.0, dh_kw: float = 40.0) -> Response:
    """Step responses of the model from its start state: flat, current ±``di_ka``, exchanger
    ±``dh_kw`` (symmetric differences, so the model's curvature cancels to first order)."""
    cfg = model.cfg
    flat = flat_schedule(cfg, n_steps, step_s)
    base = model.rollout(flat)
    i0 = flat.current_ka[0].copy()
    h0 = flat.hx_kw[0].copy()
    rmax = np.array([ln.rectifier.max_ka for ln in cfg.lines])
    dip = np.minimum(di_ka, np.maximum(rmax - i0, 1.0))

    def run(di: np.ndarray, dh: float) -> Outcome:
        s = Schedule(step_s, flat.current_ka + di, flat.hx_kw + dh)
        return model.rollout(s)

    ip, im = run(dip, 0.0), run(-dip, 0.0)
    hmax = cfg.cell.heat_exchanger_max_kw
    if hmax > 0:
        hp, hm = run(np.zeros_like(i0), dh_kw), run(np.zeros_like(i0), -dh_kw)
    else:
        hp = hm = base
    cl = base.cell_line
    span_i = 2.0 * dip[cl]  # per cell [kA]
    sh_i = ((ip.superheat_mean_k - im.superheat_mean_k) / span_i).mean(axis=1)
    ld_i = ((ip.ledge_min_cm - im.ledge_min_cm) / span_i).mean(axis=1)
    sh_h = ((hp.superheat_mean_k - hm.superheat_mean_k) / (2 * dh_kw)).mean(axis=1)
    ld_h = ((hp.ledge_min_cm - hm.ledge_min_cm) / (2 * dh_kw)).mean(axis=1)
    # per line: each step's energy/metal under a sustained step (the step response) ->
    # impulse responses (the answer to a unit held for one step only)
    e_i = np.diff((ip.energy_mwh - im.energy_mwh) / (2 * dip), axis=0, prepend=0.0)
    m_i = np.diff((ip.metal_t - im.metal_t) / (2 * dip), axis=0, prepend=0.0)
    e_h = np.diff((hp.energy_mwh - hm.energy_mwh) / (2 * dh_kw), axis=0, prepend=0.0)
    m_h = np.diff((hp.metal_t - hm.metal_t) / (2 * dh_kw), axis=0, prepend=0.0)
    # the insulating limit: the exchanger holds back at most a share of the shell's own loss
    from twin.cell_layout import P_HE_INSUL, P_RSHELL, P_TAMB, S_TSHELL

    t = model.twin
    model.restore()
    q_nat = (t.state[:, S_TSHELL] - t.params[:, P_TAMB]) / t.params[:, P_RSHELL] / 1e3
    hx_min = -float(np.min(t.params[:, P_HE_INSUL] * q_nat)) * 0.9 if hmax > 0 else 0.0
    return Response(
        base,
        _impulse(sh_i),
        _impulse(sh_h),
        _impulse(ld_i),
        _impulse(ld_h),
        e_i,
        e_h,
        m_i,
        m_h,
        i0,
        h0,
        hx_min,
        hmax,
        model.start_current_ka(),
        rollouts=5 if hmax > 0 else 3,
    )


@dataclass
class PlanResult:
    """The optimiser's answer: a schedule (or a refusal), what it did on the model, and why."""

    scenario: Scenario
    schedule: Schedule
    outcome: Outcome
    flat: Outcome
    feasible: bool
    refused: str | None = None
    binding: str | None = None
    most_pct: float | None = None
    iterations: int = 0
    rollouts: int = 0
    wall_s: float = 0.0
    violations: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)


class _LP:
    """Build the LP over x = [dI (n·L), h (n·L), u (n·L)] (u >= |h - h0| for the tie-break)."""

    def __init__(self, r: Response, sc: Scenario, bands: Bands, cfg: Any, tight: dict[str, np.ndarray]) -> None:
        self.r, self.sc, self.b, self.cfg = r, sc, bands, cfg
        n, nl = sc.n_steps, len(r.i0)
        self.n, self.nl = n, nl
        self.nx = 3 * n * nl
        self.rows: list[np.ndarray] = []
        self.rhs: list[float] = []
        self.names: list[str] = []
        self.tight = tight
        cl = r.base.cell_line
        self.cl = cl
        # convolution matrices [k, j] = g[k - j]
        idx = np.arange(n)[:, None] - np.arange(n)[None, :]
        mask = idx >= 0
        self.c_sh_i = np.where(mask, r.g_sh_i[np.clip(idx, 0, n - 1)], 0.0)
        self.c_sh_h = np.where(mask, r.g_sh_h[np.clip(idx, 0, n - 1)], 0.0)
        self.c_ld_i = np.where(mask, r.g_ld_i[np.clip(idx, 0, n - 1)], 0.0)
        self.c_ld_h = np.where(mask, r.g_ld_h[np.clip(idx, 0, n - 1)], 0.0)

    def vi(self, k: int, ln: int) -> int:
        return k * self.nl + ln

    def vh(self, k: int, ln: int) -> int:
        return self.n * self.nl + k * self.nl + ln

    def vu(self, k: int, ln: int) -> int:
        return 2 * self.n * self.nl + k * self.nl + ln

    def add(self, coef: dict[int, float] | np.ndarray, rhs: float, name: str) -> None:
        if isinstance(coef, dict):
            row = np.zeros(self.nx)
            for i, v in coef.items():
                row[i] += v
        else:
            row = coef
        self.rows.append(row)
        self.rhs.append(rhs)
        self.names.append(name)

    def thermal(self) -> None:
        r, b, n = self.r, self.b, self.n
        base = r.base
        h_cols = np.arange(n) * self.nl
        for c in range(len(self.cl)):
            ln = int(self.cl[c])
            tag = f"model cell {c + 1} ({self.cfg.lines[ln].name})"
            for k in range(n):
                row = np.zeros(self.nx)
                row[h_cols + ln] = self.c_sh_i[k]
                row[self.n * self.nl + h_cols + ln] = self.c_sh_h[k]
                sh0 = base.superheat_mean_k[k, c] - self.c_sh_h[k].sum() * r.h0[ln]
                hi = b.superheat_max_k - self.tight["sh_hi"][k, c] - sh0
                lo = b.superheat_min_k + self.tight["sh_lo"][k, c] - sh0
                self.add(row, hi, f"superheat of {tag} <= {b.superheat_max_k:g} K at h {k + 1}")
                self.add(-row, -lo, f"superheat of {tag} >= {b.superheat_min_k:g} K at h {k + 1}")
                rl = np.zeros(self.nx)
                rl[h_cols + ln] = -self.c_ld_i[k]
                rl[self.n * self.nl + h_cols + ln] = -self.c_ld_h[k]
                ld0 = base.ledge_min_cm[k, c] - self.c_ld_h[k].sum() * r.h0[ln]
                self.add(
                    rl,
                    ld0 - b.ledge_min_cm - self.tight["ledge"][k, c],
                    f"ledge of {tag} >= {b.ledge_min_cm:g} cm at h {k + 1}",
                )

    def ramps(self) -> None:
        """Down: the rectifier's ramp; up: also the process's (``Bands.process_ramp_ka_per_h``:
        a higher current density raises the AE risk, a lower one does not)."""
        hrs = self.sc.step_s / 3600.0
        for ln, line in enumerate(self.cfg.lines):
            rect = line.rectifier.ramp_ka_per_min * 60.0 * hrs
            up = min(rect, self.b.process_ramp_ka_per_h * hrs)
            i_start = self.r.i_start[ln] - self.r.i0[ln]
            self.add({self.vi(0, ln): 1.0}, up + i_start, f"ramp up of {line.name} at h 1")
            self.add({self.vi(0, ln): -1.0}, rect - i_start, f"ramp down of {line.name} at h 1")
            for k in range(1, self.n):
                self.add({self.vi(k, ln): 1.0, self.vi(k - 1, ln): -1.0}, up, f"ramp up of {line.name} at h {k + 1}")
                self.add(
                    {self.vi(k, ln): -1.0, self.vi(k - 1, ln): 1.0}, rect, f"ramp down of {line.name} at h {k + 1}"
                )

    def abs_hx(self) -> None:
        for k in range(self.n):
            for ln in range(self.nl):
                h0 = self.r.h0[ln]
                self.add({self.vh(k, ln): 1.0, self.vu(k, ln): -1.0}, h0, "hx tie-break")
                self.add({self.vh(k, ln): -1.0, self.vu(k, ln): -1.0}, -h0, "hx tie-break")

    def production(self, tol: float) -> None:
        row = np.zeros(self.nx)
        for j in range(self.n):
            for ln in range(self.nl):
                # metal over the horizon from a unit at step j: the step response at the end
                row[self.vi(j, ln)] = -self.r.m_i[: self.n - j, ln].sum()
                row[self.vh(j, ln)] = -self.r.m_h[: self.n - j, ln].sum()
        m_flat = self.r.base.metal_total_t - float((self.r.m_h.sum(axis=0) * self.r.h0).sum())
        self.add(row, tol * m_flat + self.tight["metal"][0], f"production: metal within {tol * 100:g} % of flat")

    def power_rows(self, k: int) -> tuple[np.ndarray, float]:
        """(coef, p_flat) with plant power at step k = p_flat + coef @ x [MW]."""
        hrs = self.sc.step_s / 3600.0
        row = np.zeros(self.nx)
        for ln in range(self.nl):
            for j in range(k + 1):
                row[self.vi(j, ln)] = self.r.e_i[k - j, ln] / hrs
                row[self.vh(j, ln)] = self.r.e_h[k - j, ln] / hrs
        p_flat = float(self.r.base.energy_mwh[k].sum() / hrs)
        # the exchanger terms are relative to h0
        p_flat -= float((self.r.e_h[: k + 1].sum(axis=0) * self.r.h0).sum() / hrs)
        return row, p_flat

    def bounds(self) -> list[tuple[float, float]]:
        bd: list[tuple[float, float]] = []
        for _k in range(self.n):
            for ln, line in enumerate(self.cfg.lines):
                i0 = self.r.i0[ln]
                cap = self.tight["imax"][ln]
                floor = max(line.rectifier.min_ka, self.tight["imin"][ln])
                bd.append((floor - i0, min(line.rectifier.max_ka, cap) - i0))
        for _k in range(self.n):
            for _ln in range(self.nl):
                bd.append((self.r.hx_min_kw, self.r.hx_max_kw))
        bd += [(0.0, None)] * (self.n * self.nl)  # type: ignore[list-item]
        return bd

    def cost(self) -> np.ndarray:
        c = np.zeros(self.nx)
        price = self.sc.price_eur_per_mwh[: self.n]
        for j in range(self.n):
            for ln in range(self.nl):
                # cost over the horizon of a unit at step j: prices times the energy's answer
                c[self.vi(j, ln)] = float((price[j:] * self.r.e_i[: self.n - j, ln]).sum())
                c[self.vh(j, ln)] = float((price[j:] * self.r.e_h[: self.n - j, ln]).sum())
                c[self.vu(j, ln)] = 1e-3  # exchangers idle when it costs nothing
        return c


def _schedule(x: np.ndarray, lp: _LP) -> Schedule:
    n, nl = lp.n, lp.nl
    di = x[: n * nl].reshape(n, nl)
    h = x[n * nl : 2 * n * nl].reshape(n, nl)
    cur = np.round(lp.r.i0[None, :] + di, 2)
    return Schedule(lp.sc.step_s, cur, np.round(h, 1))


def violations(out: Outcome, flat: Outcome, sc: Scenario, bands: Bands, cfg: Any) -> tuple[list[str], dict[str, Any]]:
    """What a twin run of a plan broke, in words, and where (for the next LP's margins)."""
    msgs: list[str] = []
    where: dict[str, Any] = {}
    hi = out.superheat_mean_k - bands.superheat_max_k
    if out.ae_in_step is not None:  # an AE heats its cell: its hour is the AE criterion's business
        hi = np.where(out.ae_in_step, 0.0, hi)
    lo = bands.superheat_min_k - out.superheat_mean_k
    ld = bands.ledge_min_cm - out.ledge_min_cm
    for name, arr, unit in (
        ("superheat above band", hi, "K"),
        ("superheat below band", lo, "K"),
        ("ledge below minimum", ld, "cm"),
    ):
        bad = arr > 0.0
        where[name] = np.where(bad, arr, 0.0)
        if bad.any():
            kk, cc = np.unravel_index(int(np.argmax(arr)), arr.shape)
            k, c = int(kk), int(cc)
            ln = cfg.lines[int(out.cell_line[c])].name
            val = out.superheat_mean_k[k, c] if "superheat" in name else out.ledge_min_cm[k, c]
            msgs.append(f"{name}: cell {c + 1} ({ln}) {val:.1f} {unit} at h {k + 1}")
    # the validity envelope: the heat-balance flags (bath temperature, ledge, AlF3, bath mass)
    # no cell may raise that flat operation does not; the transient ones an AE or a beam
    # move raises for minutes (superheat past 25 K, ACD, alumina, clipped CE) are counted:
    # not more cells than flat + 1 % of the cells (at least one)
    from twin.envelope import F_ALF3, F_BATH_MASS, F_LEDGE, F_TEMPERATURE, flag_names

    new_flags = out.flags_ever & ~flat.flags_ever
    heat = F_TEMPERATURE | F_LEDGE | F_ALF3 | F_BATH_MASS
    hb = np.flatnonzero(new_flags & heat)
    if hb.size:
        cf = int(hb[0])
        where["flagged_cells"] = hb
        msgs.append(f"validity envelope: cell {cf + 1} raised {', '.join(flag_names(int(new_flags[cf] & heat)))}")
    n_tr_plan = int(np.count_nonzero(out.flags_ever & ~heat))
    n_tr_flat = int(np.count_nonzero(flat.flags_ever & ~heat))
    allow = max(1, len(out.flags_ever) // 100)
    if n_tr_plan > n_tr_flat + allow:
        msgs.append(f"validity envelope: {n_tr_plan} cells with transient flags against {n_tr_flat} flat")
        where["flagged_cells"] = np.flatnonzero(new_flags & ~heat)
    ae_allow = max(float(bands.ae_allowance), 2.0 * math.sqrt(flat.ae_count))  # Poisson: 2 sigma
    if out.ae_count > flat.ae_count + ae_allow:
        msgs.append(f"AE risk: {out.ae_count} AEs against {flat.ae_count} flat")
        where["ae"] = True
    if sc.keep_production and out.metal_total_t < flat.metal_total_t * (1.0 - 2.0 * bands.production_tol):
        msgs.append(f"production: {out.metal_total_t:.1f} t against {flat.metal_total_t:.1f} t flat")
        where["metal"] = flat.metal_total_t * (1.0 - 2.0 * bands.production_tol) - out.metal_total_t
    if sc.is_request:
        p = out.power_mw(sc.step_s) / flat.power_mw(sc.step_s)
        over = np.nan_to_num(p - sc.band_hi - bands.band_slack, nan=0.0)
        under = np.nan_to_num(sc.band_lo - bands.band_slack - p, nan=0.0)
        if np.any(over > 0) or np.any(under > 0):
            kb = int(np.argmax(np.maximum(over, under)))
            msgs.append(f"power band: {p[kb] * 100:.1f} % of flat at h {kb + 1}")
    return msgs, where


def optimise(
    model: TwinModel,
    sc: Scenario,
    bands: Bands | None = None,
    max_iter: int = 6,
    response: Response | None = None,
    verify: TwinModel | None = None,
) -> PlanResult:
    """Plan ``sc`` on ``model`` (sequential LP, module doc); returns the plan or a refusal.

    ``verify``: the twin each LP iterate is checked on (default ``model``). The full plant
    here makes the check the final one: on the reference plant a plan that holds on four
    cells per line can set off an AE storm on the full lines (docs/planning.md), which
    only the full plant shows. The result's ``outcome``/``flat`` are then the full plant's.
    """
    t0 = time.perf_counter()
    b = bands or Bands()
    if sc.superheat_min_k is not None:
        b = Bands(**{**b.__dict__, "superheat_min_k": sc.superheat_min_k})
    cfg = model.cfg
    n, _nl = sc.n_steps, len(cfg.lines)
    r = response or fit_response(model, n, sc.step_s)
    rollouts = r.rollouts
    flat = r.base
    flat.price_eur_per_mwh = sc.price_eur_per_mwh[:n].copy()
    nc = len(flat.cell_line)
    tight: dict[str, np.ndarray] = {
        "sh_hi": np.full((n, nc), 1.0),
        "sh_lo": np.full((n, nc), 1.0),
        "ledge": np.full((n, nc), 0.3),
        "metal": np.zeros(1),
        "imax": np.array([ln.rectifier.max_ka for ln in cfg.lines], dtype=float),
        "imin": np.array([ln.rectifier.min_ka for ln in cfg.lines], dtype=float),
    }
    checker = verify or model
    flat_v = flat  # flat operation on the checking twin (run when first needed)
    log: list[str] = []
    best: tuple[Schedule, Outcome] | None = None
    last_msgs: list[str] = []
    for it in range(1, max_iter + 1):
        lp = _LP(r, sc, b, cfg, tight)
        lp.thermal()
        lp.ramps()
        lp.abs_hx()
        if sc.keep_production:
            lp.production(b.production_tol)
        band_rows = []
        for k in range(n):
            row, pf = lp.power_rows(k)
            if np.isfinite(sc.band_hi[k]):
                lp.add(row, sc.band_hi[k] * pf - pf, f"power band at h {k + 1}")
                band_rows.append(len(lp.rows) - 1)
            if np.isfinite(sc.band_lo[k]):
                lp.add(-row, pf - sc.band_lo[k] * pf, f"power band at h {k + 1}")
                band_rows.append(len(lp.rows) - 1)
        a = np.array(lp.rows)
        res = linprog(lp.cost(), A_ub=a, b_ub=np.array(lp.rhs), bounds=lp.bounds(), method="highs")
        if res.status == 2:  # infeasible
            if not sc.is_request:
                log.append(f"iteration {it}: LP infeasible")
                break
            most, binding = _most_of_request(lp, band_rows, sc)
            out_flat = flat
            rq = sc.requests[0] if sc.requests else {"power_pct": float("nan"), "start_h": 0.0, "end_h": sc.hours}
            req = rq["power_pct"]
            msg = (
                f"{req:+g} % for {rq['end_h'] - rq['start_h']:g} h refused: {binding}; the most it can take is "
                f"{most * req:+.1f} %"
            )
            return PlanResult(
                sc,
                flat_schedule(cfg, n, sc.step_s),
                out_flat,
                flat,
                False,
                refused=msg,
                binding=binding,
                most_pct=most * req,
                iterations=it,
                rollouts=rollouts,
                wall_s=time.perf_counter() - t0,
                violations=last_msgs,
                log=log,
            )
        if res.status != 0:
            raise RuntimeError(f"linprog: {res.message}")
        sched = _schedule(res.x, lp)
        if verify is not None and flat_v is flat:
            flat_v = verify.rollout(flat_schedule(verify.cfg, n, sc.step_s), sc.price_eur_per_mwh)
            rollouts += 1
        out = checker.rollout(sched, sc.price_eur_per_mwh)
        rollouts += 1
        msgs, where = violations(out, flat_v, sc, b, checker.cfg)
        if verify is not None:
            out_m = model.rollout(sched, sc.price_eur_per_mwh)
            rollouts += 1
            where = _per_line(where, out, out_m, b)
        log.append(
            f"iteration {it}: LP cost {res.fun:+.0f} EUR vs flat; twin cost {out.cost_eur - flat_v.cost_eur:+.0f} EUR, "
            f"metal {out.metal_total_t / flat_v.metal_total_t * 100 - 100:+.2f} %, AEs {out.ae_count} "
            f"(flat {flat_v.ae_count}), {len(msgs)} violation(s)" + (f": {msgs[0]}" if msgs else "")
        )
        last_msgs = msgs
        best = (sched, out)
        if not msgs:
            return PlanResult(
                sc, sched, out, flat_v, True, iterations=it, rollouts=rollouts, wall_s=time.perf_counter() - t0, log=log
            )
        # tighten where the twin missed (that cell and hour fully, the cell's other hours by
        # half: the LP would otherwise move the miss to the next hour), then solve again.
        # An AE storm heats and floods the cells itself: then only make the plan shallower.
        for key, what, pad in (
            ()
            if "ae" in where
            else (
                ("sh_hi", "superheat above band", 0.5),
                ("sh_lo", "superheat below band", 0.5),
                ("ledge", "ledge below minimum", 0.3),
            )
        ):
            miss = where[what]
            if verify is not None:  # margins already measured from the bound (_per_line)
                tight[key] = np.maximum(tight[key], miss + np.where(miss > 0, pad, 0.0))
            else:
                tight[key] += miss + np.where(miss > 0, pad, 0.0) + 0.5 * miss.max(axis=0, keepdims=True)
        if "flagged_cells" in where and "ae" not in where:
            tight["sh_hi"][:, where["flagged_cells"]] += 1.0
        if "metal" in where:
            tight["metal"][0] -= where["metal"] * 1.5
        if "ae" in where:
            # AE risk: the same plan shape, shallower (the deviation the plan used x 0.6)
            dev = np.abs(sched.current_ka - r.i0[None, :]).max(axis=0)
            tight["imax"] = np.minimum(tight["imax"], r.i0 + 0.6 * dev)
            tight["imin"] = np.maximum(tight["imin"], r.i0 - 0.6 * dev)
    # out of iterations: the best plan with its violations named
    if best is None:
        fs = flat_schedule(cfg, n, sc.step_s)
        return PlanResult(sc, fs, flat, flat, False, refused="no feasible plan: " + "; ".join(log), log=log)
    sched, out = best
    flat = flat_v
    refused = None
    if sc.is_request:
        refused = f"request refused: the twin run of the best plan breaks {last_msgs[0]}"
    return PlanResult(
        sc,
        sched,
        out,
        flat,
        False,
        refused=refused,
        binding=last_msgs[0] if last_msgs else None,
        iterations=max_iter,
        rollouts=rollouts,
        wall_s=time.perf_counter() - t0,
        violations=last_msgs,
        log=log,
    )


def _per_line(where: dict[str, Any], full: Outcome, mod: Outcome, b: Bands) -> dict[str, Any]:
    """Misses found on the full plant as margins for the model's cells. The full plant's
    worst cell of a line is not one of the model's: where the line's worst cell missed a
    band by ``m`` in step k, the model's cells of that line get the margin that moves
    their own worst value of that step by ``m`` (their value from the model's run of the
    same plan)."""
    out = dict(where)
    n_lines = int(mod.cell_line.max()) + 1
    for key, arr, sign, bound in (
        ("superheat above band", "superheat_mean_k", 1.0, b.superheat_max_k),
        ("superheat below band", "superheat_mean_k", -1.0, b.superheat_min_k),
        ("ledge below minimum", "ledge_min_cm", -1.0, b.ledge_min_cm),
    ):
        miss = where[key]
        val = getattr(mod, arr)
        res = np.zeros_like(val)
        for ln in range(n_lines):
            m_line = miss[:, full.cell_line == ln].max(axis=1)  # [n] the line's worst miss
            # the hours next to a miss get half of it (the LP would move the miss there)
            nb = np.maximum(np.concatenate([[0.0], m_line[:-1]]), np.concatenate([m_line[1:], [0.0]]))
            m_eff = np.maximum(m_line, 0.5 * nb)
            cells = mod.cell_line == ln
            worst_model = (sign * val[:, cells]).max(axis=1)  # the model's worst, in band terms
            # margin so that the model's worst moves by the miss: (its distance to the bound) + miss
            need = np.where(m_eff > 0, (sign * bound - worst_model) + m_eff, 0.0)
            res[:, cells] = np.maximum(need, 0.0)[:, None]
        out[key] = res
    if "flagged_cells" in where:
        lines = np.unique(full.cell_line[where["flagged_cells"]])
        out["flagged_cells"] = np.flatnonzero(np.isin(mod.cell_line, lines))
    return out


def _most_of_request(lp: _LP, band_rows: list[int], sc: Scenario) -> tuple[float, str]:
    """The largest share ``a`` of the request the constraints allow (LP over x and a), and
    the constraint with the largest dual at that optimum."""
    nx = lp.nx
    a = np.zeros((len(lp.rows), nx + 1))
    a[:, :nx] = np.array(lp.rows)
    rhs = np.array(lp.rhs, dtype=float)
    # band rows: p - pf <= (hi-1) pf  ->  p - pf - a (hi-1) pf <= 0, same for lo
    for i in band_rows:
        a[i, nx] = -rhs[i]
        rhs[i] = 0.0
    c = np.zeros(nx + 1)
    c[nx] = -1.0
    bounds = [*lp.bounds(), (0.0, 1.0)]
    res = linprog(c, A_ub=a, b_ub=rhs, bounds=bounds, method="highs")
    if res.status != 0:
        return 0.0, f"no plan meets the other constraints ({res.message})"
    most = float(res.x[nx])
    duals = np.abs(res.ineqlin.marginals)
    duals[band_rows] = 0.0
    names = list(lp.names)
    cand: list[tuple[float, str]] = []
    if duals.size:
        i = int(np.argmax(duals))
        cand.append((float(duals[i]), names[i]))
    ub = np.abs(res.upper.marginals[: lp.n * lp.nl])
    lb = np.abs(res.lower.marginals[: lp.n * lp.nl])
    for arr, side in ((ub, "max"), (lb, "min")):
        if arr.size:
            j = int(np.argmax(arr))
            k, ln = divmod(j, lp.nl)
            line = lp.cfg.lines[ln]
            lim = min(line.rectifier.max_ka, lp.tight["imax"][ln]) if side == "max" else line.rectifier.min_ka
            cand.append((float(arr[j]), f"rectifier {side}_ka {lim:g} kA on {line.name} at h {k + 1}"))
    hb = np.abs(res.upper.marginals[lp.n * lp.nl : 2 * lp.n * lp.nl])
    hlb = np.abs(res.lower.marginals[lp.n * lp.nl : 2 * lp.n * lp.nl])
    for arr, what in (
        (hb, f"exchanger extraction limit {lp.r.hx_max_kw:g} kW"),
        (hlb, f"exchanger insulation limit {lp.r.hx_min_kw:.0f} kW"),
    ):
        if arr.size:
            j = int(np.argmax(arr))
            k, ln = divmod(j, lp.nl)
            cand.append((float(arr[j]), f"{what} on {lp.cfg.lines[ln].name} at h {k + 1}"))
    cand.sort(reverse=True)
    return most, cand[0][1] if cand and cand[0][0] > 0 else "the power band itself"
