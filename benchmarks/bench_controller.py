"""Benchmark of the pot controller on the twin (offline, seeded), results as JSON.

Runs, on the 660-cell reference plant (``config/plant_reference.toml``):

1. **comparison** (issue 13 item 8, ``--parts compare``) — on two plants the controller was
   not tuned on (``PLANTS``: the twin with its per-cell spread and feed disturbances, and a
   structural variant with Haupin's capped bubble coverage), ``days`` of plant time
   (30 × 660 cells at full size), two runs each on the same seed, side by side:
   **controller** — the controller in charge (1 s scan), tapping and anode changes running:
   AE frequency per pot-day, mean duration and AE minutes (from the twin's truth), detection
   latency and misses against every AE the twin made, false detections, prediction (share of
   AEs with an alarm ≥ 60 s ahead, lead, false alarms per pot-day), line current vs
   setpoint in steady state, PFC (Tier 2), kWh/kg and CE, the twin's validity envelope;
2. **PLC-only** — the same plant and seed under the potroom PLCs' own automation (tracking
   feed, resistance control, restore after operations, AE kill); the controller only
   observes (detection and prediction scored the same way, line current against the
   rectifier PLC's own setpoint);
3. **feeder faults** — closed loop on 660 cells with the usual cause of AEs in a plant:
   every hour one more cell's feeders start to deliver only a fraction of each shot (a
   feeder hole crusting over, a hopper running low) while the PLC keeps acknowledging
   the strokes; the crew clears it after a few hours. Per fault: did an AE follow, was
   it predicted ≥ 60 s ahead, lead time, time from the fault to the first alarm, when the
   controller called the crew (``ae_repeating``: the AEs keep coming back); false alarms
   per pot-day on the healthy cells;
4. **amperage scenario** — 660 cells, 8 h: a cell cut-out (current lowered, permit,
   restored) and cut-in, a −10 % power-modulation step on line 1 followed within the
   ramp limit, ACD hunting counted against an unmodulated line; controller cycle time
   per scan (mean, p99) at 660 cells.

``--quick`` (CI): 1 day on 2 × 66 cells (in 264-cell lines) for 1–2, a 3 h scenario on 660 cells.
``--cells N --lines L``: a reduced comparison of L lines of N cells, each in a 264-cell line.
``--plants``/``--modes`` run the four comparison runs apart (in parallel); ``--merge`` joins them.
Usage: ``python benchmarks/bench_controller.py [--quick] [--days D] [--cells N] [--seed S] [--out F]``.
Writes ``benchmarks/results/bench_controller[_quick].json``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------------------------------------
# scoring against the twin's truth
# ---------------------------------------------------------------------------------------------
@dataclass
class TruthAE:
    cell: int
    t_flag: float  # first scan with the twin's AE flag set
    t_volt: float = float("nan")  # first scan whose voltage carries the AE (film voltage > 0.5 V)
    t_end: float = float("nan")
    c_margin_at_alarm: float = float("nan")


@dataclass
class Scorer:
    """Watches every scan: truth AE episodes, alarms (with the truth alumina margin), line
    current vs the commanded setpoint, resistance beam moves (for hunting)."""

    pl: Any
    ctl: Any
    n_lines: int
    aes: list[TruthAE] = field(default_factory=list)
    open_: dict[int, TruthAE] = field(default_factory=dict)
    alarm_margin: list[tuple[float, int, float]] = field(default_factory=list)
    n_alarms_seen: int = 0
    i_err: list[list[float]] = field(default_factory=list)
    last_sp: np.ndarray | None = None
    sp_change_t: np.ndarray | None = None
    line_ae_t: np.ndarray | None = None
    moves: list[tuple[float, int, float]] = field(default_factory=list)
    prev_flag: np.ndarray | None = None
    power: list[tuple[float, float, float, float]] = field(default_factory=list)
    record_power_line: int | None = None
    #: score line current against the rectifier PLC's own setpoint (read back) where the
    #: controller commands none (PLC-only runs: the controller observes)
    setpoint_from_plc: bool = False

    def __post_init__(self) -> None:
        n = self.pl.layout.n_cells
        #: when each cell left the model's physical range (bath > 1100 °C or NaN; the twin has
        #: no operator to end an AE, so an unquenched cell can run away) — scored until then
        self.lost_t = np.full(n, np.inf)
        self.cell_seconds = 0.0
        self._t_prev: float | None = None
        self.i_err = [[] for _ in range(self.n_lines)]
        self.sp_change_t = np.full(self.n_lines, -np.inf)
        self.line_ae_t = np.full(self.n_lines, -np.inf)
        self.cell_line = np.asarray(self.pl.layout.cell_line)

    def __call__(self, meas: Any, cmds: Any) -> None:
        t = meas.t_s
        tr = self.pl.truth()
        temp = tr["bath_temp_c"]
        bad = ~(np.isfinite(temp) & (temp < 1100.0)) | ~np.isfinite(meas.line_current_ka)[self.cell_line]
        if bad.any():
            self.lost_t[bad & np.isinf(self.lost_t)] = t
        alive = np.isinf(self.lost_t)
        if self._t_prev is not None:
            self.cell_seconds += float(np.count_nonzero(alive & ~meas.cut_out)) * (t - self._t_prev)
        self._t_prev = t
        flag = tr["ae_active"] & alive
        if self.prev_flag is None:
            self.prev_flag = np.zeros_like(flag)
        if flag.any() or self.open_:
            rise = np.flatnonzero(flag & ~self.prev_flag)
            for k in rise:
                self.open_[int(k)] = a = TruthAE(cell=int(k), t_flag=t)
                self.aes.append(a)
            fall = np.flatnonzero(~flag & self.prev_flag)
            for k in fall:
                a = self.open_.pop(int(k), None)
                if a is not None:
                    a.t_end = t
            ae_v = self.pl.voltage_breakdown()["anode_effect"]
            for k, a in self.open_.items():
                if np.isnan(a.t_volt) and ae_v[k] > 0.5:
                    a.t_volt = t
            self.line_ae_t[np.unique(self.cell_line[flag])] = t
        self.prev_flag = flag
        # alarms with the truth margin above the critical alumina at that moment
        log = self.ctl.alarm_log
        if len(log) > self.n_alarms_seen:
            c = tr["alumina_wt_pct"]
            cc = tr["critical_alumina_wt_pct"]
            for rec in log[self.n_alarms_seen :]:
                self.alarm_margin.append((rec.t_s, rec.cell, float(c[rec.cell] - cc[rec.cell])))
            self.n_alarms_seen = len(log)
        # line current vs commanded setpoint in steady state: no AE on the line for 60 s and
        # the setpoint within 0.1 % of where it was 15 min ago (ramps and the rectifier's own
        # 6 kA/min ramp over)
        sp = cmds.line_setpoint_ka
        if self.setpoint_from_plc:
            sp = np.where(np.isfinite(sp), sp, meas.line_setpoint_ka)
        if self.last_sp is None:
            self.last_sp = np.nan_to_num(sp).copy()
        ch = np.abs(np.nan_to_num(sp) - self.last_sp) > 1e-3 * np.maximum(self.last_sp, 1.0)
        self.sp_change_t[ch] = t
        self.last_sp[ch] = np.nan_to_num(sp)[ch]
        for li in range(self.n_lines):
            if np.isfinite(sp[li]) and t - self.sp_change_t[li] > 900 and t - self.line_ae_t[li] > 60:
                self.i_err[li].append((meas.line_current_ka[li] - sp[li]) / sp[li])
        # resistance moves (quench moves excluded)
        mv = cmds.beam_move_mm
        if mv.any():
            for k in np.flatnonzero(mv):
                if self.ctl.quench.state[k] == 0:
                    self.moves.append((t, int(k), float(mv[k])))
        if self.record_power_line is not None:
            li = self.record_power_line
            self.power.append(
                (
                    t,
                    float(sp[li]),
                    float(meas.line_current_ka[li]),
                    float(meas.line_voltage_v[li] * meas.line_current_ka[li] / 1e3),
                )
            )


def alarms_without_ae(alarms: list[tuple[float, int]], aes: list[TruthAE], horizon_s: float = 7200.0) -> int:
    """Prediction alarms ``(t [s], cell)`` that no AE on their cell followed within ``horizon_s``."""
    starts: dict[int, list[float]] = {}
    for a in aes:
        starts.setdefault(a.cell, []).append(a.t_flag)
    return sum(1 for t, k in alarms if not any(t <= ta <= t + horizon_s for ta in starts.get(k, ())))


def score(scorer: Scorer, ctl: Any, cell_days: float, scan_s: float) -> dict[str, Any]:
    """AE, detection and prediction figures of one run (cells scored until they leave the
    model's physical range, see ``Scorer.lost_t``)."""
    lost = scorer.lost_t
    if scorer.cell_seconds > 0:
        cell_days = scorer.cell_seconds / 86400.0
    truth = scorer.aes
    for a in truth:  # an AE still burning when its cell ran away ends there
        if np.isnan(a.t_end) and np.isfinite(lost[a.cell]):
            a.t_end = lost[a.cell]
    dets = [r for r in ctl.detector.all_records() if r.kind == "HV" and r.detect_s < lost[r.cell]]
    lvs = [r for r in ctl.detector.all_records() if r.kind == "LV" and r.detect_s < lost[r.cell]]
    by_cell: dict[int, list[Any]] = {}
    for r in dets:
        by_cell.setdefault(r.cell, []).append(r)
    lat_v, lat_f, missed, used = [], [], 0, set()
    for a in truth:
        end = a.t_end if np.isfinite(a.t_end) else np.inf
        match = [r for r in by_cell.get(a.cell, []) if a.t_flag - 5 <= r.detect_s <= end + 15 and id(r) not in used]
        if not match:
            missed += 1
            continue
        r = match[0]
        used.add(id(r))
        lat_f.append((r.detect_s - a.t_flag) / scan_s)
        if np.isfinite(a.t_volt):
            lat_v.append((r.detect_s - a.t_volt) / scan_s)
    # detections not used by a truth AE: a second record inside one long truth AE (the
    # voltage fell below the end threshold for the end hold while the twin's AE flag
    # stayed up) is a split, not a false detection
    split = 0
    false_det = []
    for r in dets:
        if id(r) in used:
            continue
        end = r.end_s if np.isfinite(r.end_s) else np.inf
        if any(
            a.cell == r.cell and a.t_flag - 5 <= end and r.start_s <= (a.t_end if np.isfinite(a.t_end) else np.inf) + 15
            for a in truth
        ):
            split += 1
        else:
            false_det.append(r)
    durations = [a.t_end - a.t_flag for a in truth if np.isfinite(a.t_end)]
    det_durations = [r.duration_s for r in dets if np.isfinite(r.end_s)]
    # prediction
    alarms = [(a.t_s, a.cell) for a in ctl.alarm_log if a.t_s < lost[a.cell]]
    al_by_cell: dict[int, list[float]] = {}
    for t, k in alarms:
        al_by_cell.setdefault(k, []).append(t)
    leads = []
    predicted_60 = 0
    # AEs that follow another AE of the same cell within 2 h: the cell is still lean (no
    # quench/overfeed in the baseline), a repeat, not a new event to predict
    last_end: dict[int, float] = {}
    fresh_n = 0
    fresh_pred = 0
    for a in sorted(truth, key=lambda x: x.t_flag):
        prev_end = last_end.get(a.cell, -np.inf)
        last_end[a.cell] = a.t_end if np.isfinite(a.t_end) else a.t_flag
        prior = [t for t in al_by_cell.get(a.cell, []) if max(a.t_flag - 7200, prev_end) <= t <= a.t_flag - 60]
        if a.t_flag - prev_end > 7200:
            fresh_n += 1
            fresh_pred += bool(prior)
    for a in truth:
        prior = [t for t in al_by_cell.get(a.cell, []) if a.t_flag - 7200 <= t <= a.t_flag]
        early = [t for t in prior if t <= a.t_flag - 60]
        if early:
            predicted_60 += 1
        leads.append(a.t_flag - min(prior) if prior else float("nan"))
    false_alarms = alarms_without_ae(alarms, truth)
    margins = np.array([m for t, k, m in scorer.alarm_margin if t < lost[k]])
    n = len(truth)
    fin = [x for x in leads if np.isfinite(x)]
    i_err = np.concatenate([np.abs(np.asarray(e)) for e in scorer.i_err if e]) if any(scorer.i_err) else np.zeros(0)
    n_lost = int(np.isfinite(lost).sum())
    from potctl.pfc import tier2_emissions_per_t

    aem_truth = float(np.sum(durations)) / 60.0 / cell_days if cell_days else 0.0
    aem_det = (
        float(np.sum([max(r.duration_s, 0.0) for r in dets if np.isfinite(r.end_s)])) / 60.0 / cell_days
        if cell_days
        else 0.0
    )
    pfc = {}
    for name, aem in (("truth", aem_truth), ("detections", aem_det)):
        cf4, c2f6, co2e = tier2_emissions_per_t(aem, ctl.cfg.pfc)
        pfc[name] = {"aem_min_per_cell_day": aem, "cf4_kg_per_t": cf4, "c2f6_kg_per_t": c2f6, "co2e_kg_per_t": co2e}
    return {
        "cell_days": cell_days,
        "cells_left_physical_range": n_lost,
        "first_left_physical_range_day": float(lost[np.isfinite(lost)].min() / 86400.0) if n_lost else None,
        "ae_count": n,
        "ae_per_pot_day": n / cell_days if cell_days else 0.0,
        "ae_mean_duration_s": float(np.mean(durations)) if durations else 0.0,
        "ae_max_duration_s": float(np.max(durations)) if durations else 0.0,
        "ae_minutes_per_cell_day": aem_truth,
        "pfc_tier2_ipcc_cwpb_ar5": pfc,
        "detection": {
            "detected": n - missed,
            "missed": missed,
            "latency_samples_from_voltage_onset_max": float(max(lat_v)) if lat_v else None,
            "latency_samples_from_voltage_onset_mean": float(np.mean(lat_v)) if lat_v else None,
            "latency_samples_from_twin_flag_max": float(max(lat_f)) if lat_f else None,
            "within_2_samples_of_voltage_onset": int(sum(1 for x in lat_v if x <= 2)),
            "false_hv_detections": len(false_det),
            "split_detections_inside_one_truth_ae": split,
            "lv_flags": len(lvs),
            "detected_mean_duration_s": float(np.mean(det_durations)) if det_durations else 0.0,
        },
        "prediction": {
            "alarms": len(alarms),
            "aes_predicted_60s_ahead": predicted_60,
            "share_predicted_60s_ahead": predicted_60 / n if n else None,
            "aes_not_within_2h_of_a_previous_ae": fresh_n,
            "share_of_those_predicted_60s_ahead": fresh_pred / fresh_n if fresh_n else None,
            "lead_time_median_s": float(np.median(fin)) if fin else None,
            "alarms_without_ae_within_2h": false_alarms,
            "false_alarms_per_pot_day_by_outcome": false_alarms / cell_days if cell_days else 0.0,
            # an AE within the 20 min horizon needs alumina within ≈ 0.6 wt % of the critical
            # level even with feeding stopped (1.205 kg/min × 20 min / 40 kg per wt %)
            "alarms_truth_margin_above_0.6wt": int(np.sum(margins > 0.6)),
            "false_alarms_per_pot_day_by_margin": float(np.sum(margins > 0.6)) / cell_days if cell_days else 0.0,
            "truth_margin_at_alarm_median_wt": float(np.median(margins)) if margins.size else None,
        },
        "line_current": {
            "steady_samples": int(i_err.size),
            "max_abs_error_pct": float(100 * i_err.max()) if i_err.size else None,
            "p99_abs_error_pct": float(100 * np.percentile(i_err, 99)) if i_err.size else None,
            "share_within_0.5pct": float(np.mean(i_err <= 0.005)) if i_err.size else None,
        },
    }


def hunting(
    moves: list[tuple[float, int, float]], cells: np.ndarray, t0: float, t1: float, window_s: float = 6 * 3600
) -> dict[str, Any]:
    """Hunting = up/down/up (two reversals in a row) within ``window_s`` on one cell."""
    sel = set(int(c) for c in cells)
    per: dict[int, list[tuple[float, float]]] = {}
    for t, k, m in moves:
        if k in sel and t0 <= t <= t1:
            per.setdefault(k, []).append((t, np.sign(m)))
    hunting_cells = 0
    reversals = 0
    for seq in per.values():
        rev_t = [seq[i][0] for i in range(1, len(seq)) if seq[i][1] != seq[i - 1][1]]
        reversals += len(rev_t)
        if any(rev_t[i + 1] - rev_t[i] <= window_s for i in range(len(rev_t) - 1)):
            # two reversals: check the three moves fit in the window
            hunting_cells += 1
    return {
        "cells": len(sel),
        "moves": sum(len(v) for v in per.values()),
        "reversals": reversals,
        "hunting_cells": hunting_cells,
    }


def non_finite(obj: Any, path: str = "") -> list[str]:
    """Dotted keys of every NaN/inf number in a result (a benchmark figure must be finite)."""
    bad: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            bad += non_finite(v, f"{path}.{k}" if path else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            bad += non_finite(v, f"{path}[{i}]")
    elif isinstance(obj, (float, np.floating)) and not np.isfinite(obj):
        bad.append(path)
    return bad


# ---------------------------------------------------------------------------------------------
# runs
# ---------------------------------------------------------------------------------------------
def build(plant_cfg: Any, seed: int, observe: bool, quench: bool = True):
    """The twin, the controller and the offline plant. ``observe``: the potroom PLCs' own
    automation stays in charge (tracking feed, resistance control, restore after operations,
    and its AE kill unless ``quench`` is False); the controller only observes."""
    from potctl.config import control_config_for_plant
    from potctl.controller import PotController
    from potctl.offline import TwinPlant
    from twin.potline import Potline

    if observe and not quench:
        lc = plant_cfg.local_control
        plant_cfg = plant_cfg.model_copy(update={"local_control": lc.model_copy(update={"ae_quench": False})})
    pl = Potline(plant_cfg, seed=seed, parallel=False)  # 1 s advances: thread sync costs more than it saves
    # the controller's config comes from the nominal cell: it knows neither the per-cell spread
    # drawn by the twin nor the plant variant's bubble-voltage form
    ccfg = control_config_for_plant(plant_cfg)
    if observe:
        ccfg = ccfg.model_copy(update={"observe_only": True})
    ctl = PotController(pl.layout, ccfg)
    plant = TwinPlant(pl, take_control=not observe)
    return pl, ctl, plant


def run_long(
    plant_cfg: Any, seed: int, days: float, observe: bool, log_every_h: float = 24.0, label: str = ""
) -> dict[str, Any]:
    """``days`` of plant time at a 1 s scan, the controller in charge or (``observe``) the
    potroom PLCs' local automation alone with the controller observing; scored against the
    twin's truth (``score``) plus the twin's totals, energy and validity envelope."""
    from potctl.offline import run_closed_loop

    pl, ctl, plant = build(plant_cfg, seed, observe)
    sc = Scorer(pl, ctl, pl.layout.n_lines, setpoint_from_plc=observe)
    t0 = time.perf_counter()
    ctrl_s = 0.0
    scans = 0
    chunk = log_every_h
    done = 0.0
    while done < days * 24 - 1e-9:
        h = min(chunk, days * 24 - done)
        res = run_closed_loop(pl, ctl, h, 1.0, plant=plant, on_scan=sc)
        ctrl_s += res.controller_s
        scans += res.scans
        done += h
        tr = pl.truth()
        print(
            f"  [{label or ('plc_only' if observe else 'controller')}] day {done / 24:5.1f}: truth AEs {len(sc.aes)}, "
            f"alumina p5/p50/p95 {np.percentile(tr['alumina_wt_pct'], [5, 50, 95]).round(2)}, "
            f"wall {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
    wall = time.perf_counter() - t0
    cell_days = float(ctl.pfc.cell_seconds) / 86400.0
    out = score(sc, ctl, cell_days, 1.0)
    tot = pl.totals()
    tr = pl.truth()
    out["pfc_tier2_from_detections"] = ctl.pfc_report(pl.t_s).as_dict()
    out["twin_totals"] = {
        k: tot[k]
        for k in (
            "metal_kg",
            "energy_kwh",
            "specific_energy_kwh_per_kg",
            "current_efficiency",
            "ae_count",
            "ae_minutes",
            "ae_per_pot_day",
            "cf4_kg",
            "overcurrent_s",
        )
    }
    out["validity"] = pl.validity()
    out["final_state"] = {
        "alumina_wt_pct_p5_p50_p95": np.percentile(tr["alumina_wt_pct"], [5, 50, 95]).round(3).tolist(),
        "acd_cm_p5_p50_p95": np.percentile(tr["acd_cm"], [5, 50, 95]).round(3).tolist(),
        "bath_temp_c_p5_p50_p95": np.percentile(tr["bath_temp_c"], [5, 50, 95]).round(2).tolist(),
        "sludge_kg_p50_max": [float(np.median(tr["sludge_kg"])), float(tr["sludge_kg"].max())],
    }
    if not observe:
        out["feeding"] = {
            "adapt_p5_p50_p95": np.percentile(ctl.feeding.adapt, [5, 50, 95]).round(4).tolist(),
            "cycles_adapted": ctl.feeding.cycles_adapted,
            "shots_total": int(ctl.feeding.shots_total.sum()),
        }
        out["resistance"] = {
            "moves_per_cell_day": float(ctl.resistance.moves_total.sum()) / cell_days,
            "reversals_per_cell_day": float(ctl.resistance.reversals.sum()) / cell_days,
        }
        out["quench"] = {"quenches": ctl.quench.quenches, "escalations": ctl.quench.escalations}
    out["run"] = {
        "days": days,
        "cells": pl.layout.n_cells,
        "scans": scans,
        "wall_s": wall,
        "speedup": days * 86400 / wall,
        "controller_cycle_ms_mean": 1e3 * ctrl_s / max(scans, 1),
    }
    return out


def run_feeder_faults(
    plant_cfg: Any, seed: int, hours: float, every_h: float, duration_h: float, fraction: float, warmup_h: float
) -> dict[str, Any]:
    """Closed loop with feeder faults (module docstring, part 3): one fault starts every
    ``every_h`` for ``hours`` on a cell not faulted before, delivering ``fraction`` of each
    shot for ``duration_h``; ``warmup_h`` of normal operation first."""
    from potctl.offline import run_closed_loop

    pl, ctl, plant = build(plant_cfg, seed, observe=False)
    sc = Scorer(pl, ctl, pl.layout.n_lines)
    rs = np.random.default_rng(seed + 101)
    w0 = time.perf_counter()
    run_closed_loop(pl, ctl, warmup_h, 1.0, plant=plant, on_scan=sc)
    t_start = pl.t_s
    n = pl.layout.n_cells
    faults: list[dict[str, Any]] = []
    n_faults = int(round(hours / every_h))
    cells = rs.choice(n, size=min(n_faults, n), replace=False)
    for j in range(n_faults + int(np.ceil(duration_h / every_h))):
        for f in faults:  # the crew cleared it
            if not f["cleared"] and pl.t_s >= f["t_end"] - 1e-6:
                pl.set_feeder_efficiency(f["cell"], 1.0)
                f["cleared"] = True
        if j < len(cells):
            k = int(cells[j])
            pl.set_feeder_efficiency(k, fraction)
            faults.append({"cell": k, "t_start": pl.t_s, "t_end": pl.t_s + duration_h * 3600.0, "cleared": False})
        run_closed_loop(pl, ctl, every_h, 1.0, plant=plant, on_scan=sc)
    for f in faults:
        pl.set_feeder_efficiency(f["cell"], 1.0)
    faulty = {f["cell"] for f in faults}
    repeats: dict[int, list[float]] = {}
    for t, kind, k, _ in ctl.event_log:
        if kind == "ae_repeating" and t >= t_start:
            repeats.setdefault(k, []).append(t)
    alarms: dict[int, list[float]] = {}
    for a in ctl.alarm_log:
        alarms.setdefault(a.cell, []).append(a.t_s)
    rows = []
    for f in faults:
        k, t0, t1 = f["cell"], f["t_start"], f["t_end"]
        aes = sorted(a.t_flag for a in sc.aes if a.cell == k and t0 <= a.t_flag <= t1 + 1800.0)
        first_ae = aes[0] if aes else None
        before = [t for t in alarms.get(k, []) if t0 <= t <= (first_ae if first_ae is not None else t1)]
        first_alarm = before[0] if before else None
        lead = first_ae - first_alarm if first_ae is not None and first_alarm is not None else None
        crew = [t for t in repeats.get(k, []) if t0 <= t <= t1 + 1800.0]
        aes_before_crew = sum(1 for t in aes if crew and t <= crew[0])
        rows.append({
            "cell": k, "fault_start_s": t0, "first_alarm_after_fault_s": None if first_alarm is None else first_alarm - t0,
            "first_ae_after_fault_s": None if first_ae is None else first_ae - t0, "aes": len(aes),
            "alarm_lead_s": lead, "predicted_60s_ahead": bool(lead is not None and lead >= 60.0),
            "crew_called_after_fault_s": crew[0] - t0 if crew else None, "aes_before_crew_called": aes_before_crew,
        })  # fmt: skip
    with_ae = [r for r in rows if r["first_ae_after_fault_s"] is not None]
    leads = [r["alarm_lead_s"] for r in with_ae if r["alarm_lead_s"] is not None]
    first_alarm = [r["first_alarm_after_fault_s"] for r in rows if r["first_alarm_after_fault_s"] is not None]
    healthy_days = (len(set(range(n)) - faulty)) * (pl.t_s - t_start) / 86400.0
    healthy_aes = [a for a in sc.aes if a.cell not in faulty and a.t_flag >= t_start]
    false_healthy = alarms_without_ae(
        [(t, k) for k, ts in alarms.items() if k not in faulty for t in ts if t >= t_start], healthy_aes
    )
    return {
        "cells": n,
        "faults": len(faults),
        "fraction_delivered": fraction,
        "every_h": every_h,
        "duration_h": duration_h,
        "faults_followed_by_ae": len(with_ae),
        "aes_on_faulty_cells": int(sum(r["aes"] for r in rows)),
        "first_aes_predicted_60s_ahead": int(sum(r["predicted_60s_ahead"] for r in with_ae)),
        "share_predicted_60s_ahead": (sum(r["predicted_60s_ahead"] for r in with_ae) / len(with_ae))
        if with_ae
        else None,
        "alarm_lead_s_median": float(np.median(leads)) if leads else None,
        "faults_alarmed": len(first_alarm),
        "first_alarm_after_fault_s_median": float(np.median(first_alarm)) if first_alarm else None,
        "healthy_cells_alarms_without_ae_within_2h": false_healthy,
        "healthy_cells_false_alarms_per_pot_day": false_healthy / healthy_days if healthy_days else None,
        "healthy_cells_aes": len(healthy_aes),
        "faults_crew_called": sum(1 for r in rows if r["crew_called_after_fault_s"] is not None),
        "crew_called_after_first_ae_s_median": float(
            np.median(
                [
                    r["crew_called_after_fault_s"] - r["first_ae_after_fault_s"]
                    for r in rows
                    if r["crew_called_after_fault_s"] is not None and r["first_ae_after_fault_s"] is not None
                ]
            )
        )
        if any(r["crew_called_after_fault_s"] is not None for r in rows)
        else None,
        "healthy_cells_repeat_alarms": sum(len(v) for k, v in repeats.items() if k not in faulty),
        "per_fault": rows,
        "wall_s": time.perf_counter() - w0,
    }


def run_amperage(plant_cfg: Any, seed: int, hours: float) -> dict[str, Any]:
    """Cut-out/in, a −10 % power step with the hunting check, and the cycle time at full size."""
    pl, ctl, plant = build(plant_cfg, seed, observe=False)
    sc = Scorer(pl, ctl, pl.layout.n_lines)
    sc.record_power_line = 0
    cell_line = np.asarray(pl.layout.cell_line)
    cut_cell = int(np.flatnonzero(cell_line == 1)[10])
    t_cut_out, t_step, t_cut_in = 0.125 * hours * 3600, 0.25 * hours * 3600, 0.5 * hours * 3600
    step_times: list[float] = []
    events: list[tuple[float, str, int]] = []
    i_line1: list[tuple[float, float, bool]] = []
    p_target = None
    n = int(hours * 3600)
    perf = time.perf_counter
    for j in range(n):
        m = plant.read_sync()
        t = m.t_s
        if j == int(t_cut_out):
            ctl.request_cut_out(cut_cell, t)
        if j == int(t_cut_in):
            ctl.request_cut_in(cut_cell, t)
        if j == int(t_step):
            p_now = float(m.line_voltage_v[0] * m.line_current_ka[0] / 1e3)
            p_target = 0.9 * p_now
            ctl.set_power_schedule(0, [(t, p_target)])
        a = perf()
        c = ctl.step(m, t)
        step_times.append(perf() - a)
        plant.write_sync(c)
        sc(m, c)
        for kind, idx, _ in c.events:
            events.append((t, kind, idx))
        i_line1.append((t, float(m.line_current_ka[1]), bool(m.cut_out[cut_cell])))
        pl.advance(1.0)
    st = np.array(step_times) * 1e3
    # power step on line 0
    pw = np.array(sc.power)
    after = pw[pw[:, 0] >= t_step]
    before = pw[pw[:, 0] < t_step]
    sp_rate = np.abs(np.diff(after[:, 1])) * 60.0  # kA/min
    settle = after[np.abs(after[:, 3] / p_target - 1.0) > 0.005] if p_target else after
    t_settle = float(settle[-1, 0] - t_step) if settle.size else 0.0
    late = after[after[:, 0] > t_step + max(t_settle, 900.0) + 60]
    # cut-out on line 1
    il = np.array(i_line1)
    ev_t = {k: t for t, k, i in events if i == cut_cell and k.startswith("cut_")}
    late = late if p_target else after[:0]
    out_idx = np.flatnonzero(il[:, 2])
    i_at_permit = (
        float(il[np.searchsorted(il[:, 0], ev_t.get("cut_out_permit", np.nan)), 1])
        if "cut_out_permit" in ev_t
        else None
    )
    restored = il[(il[:, 0] > ev_t.get("cut_out_done", np.inf)) & (il[:, 0] < t_cut_in)]
    t_restore = None
    if restored.size:
        ok = np.flatnonzero(np.abs(restored[:, 1] - 120.0) <= 0.6)
        t_restore = float(restored[ok[0], 0] - ev_t["cut_out_done"]) if ok.size else None
    line0 = np.flatnonzero(cell_line == 0)
    line2 = np.flatnonzero(cell_line == 2)
    return {
        "hours": hours,
        "cells": pl.layout.n_cells,
        "cycle_time_ms": {
            "mean": float(st.mean()),
            "p50": float(np.percentile(st, 50)),
            "p99": float(np.percentile(st, 99)),
            "max": float(st.max()),
        },
        "power_step": {
            "line": 0,
            "target_mw": p_target,
            "ramp_limit_ka_per_min": ctl.cfg.amperage.ramp_ka_per_min,
            "max_setpoint_rate_ka_per_min": float(sp_rate.max()) if sp_rate.size else None,
            "current_before_ka": float(before[-1, 2]) if before.size else None,
            "current_after_ka": float(late[:, 2].mean()) if late.size else None,
            "time_to_power_within_0.5pct_s": t_settle,
            "power_error_after_max_pct": float(100 * np.max(np.abs(late[:, 3] / p_target - 1))) if late.size else None,
            "current_vs_setpoint_after_max_pct": float(100 * np.max(np.abs(late[:, 2] / late[:, 1] - 1)))
            if late.size
            else None,
            "hunting_modulated_line": hunting(sc.moves, line0, t_step, hours * 3600),
            "hunting_reference_line": hunting(sc.moves, line2, t_step, hours * 3600),
        },
        "cut_out": {
            "cell": cut_cell,
            "line": 1,
            "events_s": {k: float(v) for k, v in ev_t.items()},
            "current_at_permit_ka": i_at_permit,
            "cell_out_from_s": float(il[out_idx[0], 0]) if out_idx.size else None,
            "restored_within_0.5pct_after_s": t_restore,
            "current_end_ka": float(il[-1, 1]),
            "cut_in_done": "cut_in_done" in ev_t,
        },
        "line_current_steady": score(sc, ctl, 1.0, 1.0)["line_current"],
    }


#: the plants the controller is benchmarked on (it was tuned on neither: its config comes from
#: the nominal cell, see ``build``)
PLANTS = {
    "spread": "the twin as configured (reference cell with the per-cell spread of [spread] and the "
    "stochastic feed disturbances of [disturbances], drawn per cell from the seed)",
    "variant": "structural variant: the same plant with Haupin's RTA bubble coverage (x 0.9 at a fixed "
    "1.8 wt %, capped at 0.75; cell.bubble_model = 'haupin_capped') instead of Lundby et al.'s coverage "
    "anchored at the AE onset: a flatter resistance rise before an AE and a lower bubble voltage",
}
MODES = {
    "plc_only": "the potroom PLCs' local automation alone (tracking feed, resistance control with restore "
    "after operations, AE kill); the controller observes and is scored on detection and prediction",
    "controller": "our controller in charge of feeding, beam and AE quench on every cell",
}


def plant_config(name: str, cells: int | None, n_lines: int) -> Any:
    """The plant ``name`` (``PLANTS``): the 660-cell reference plant (``cells`` None) or
    ``n_lines`` lines of ``cells`` cells each sitting in a 264-cell line (the rest of the line
    an aggregate load on the reference rectifier)."""
    from potctl.offline import scaled_plant_config
    from twin.config import load_plant_config

    cfg = load_plant_config() if cells is None else scaled_plant_config(cells, n_lines=n_lines)
    if name == "variant":
        cfg = cfg.model_copy(update={"cell": cfg.cell.model_copy(update={"bubble_model": "haupin_capped"})})
    elif name != "spread":
        raise ValueError(f"plant {name!r}: expected one of {sorted(PLANTS)}")
    return cfg


def side_by_side(plants: dict[str, Any]) -> dict[str, Any]:
    """The figures PERFORMANCE.md shows, PLC-only vs controller, per plant."""
    out: dict[str, Any] = {}
    for name, runs in plants.items():
        row: dict[str, Any] = {}
        for mode in MODES:
            r = runs.get(mode)
            if not r:
                continue
            row[mode] = {
                "ae_per_pot_day": r["ae_per_pot_day"],
                "ae_minutes_per_cell_day": r["ae_minutes_per_cell_day"],
                "ae_mean_duration_s": r["ae_mean_duration_s"],
                "share_predicted_60s_ahead": r["prediction"]["share_predicted_60s_ahead"],
                "lead_time_median_s": r["prediction"]["lead_time_median_s"],
                "false_alarms_per_pot_day": r["prediction"]["false_alarms_per_pot_day_by_outcome"],
                "line_current_share_within_0.5pct": r["line_current"]["share_within_0.5pct"],
                "line_current_p99_abs_error_pct": r["line_current"]["p99_abs_error_pct"],
                "specific_energy_kwh_per_kg": r["twin_totals"]["specific_energy_kwh_per_kg"],
                "current_efficiency": r["twin_totals"]["current_efficiency"],
                "cells_left_physical_range": r["cells_left_physical_range"],
                "cells_invalid_ever": r["validity"]["cells_invalid_ever"],
            }
        out[name] = row
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI version: 1 day on 2 x 66 cells, 3 h scenario")
    ap.add_argument("--days", type=float, default=None, help="comparison horizon [days] (30, quick 1)")
    ap.add_argument(
        "--cells",
        type=int,
        default=None,
        help="cells per simulated line for the comparison (default: the 660-cell reference plant; quick 66)",
    )
    ap.add_argument("--lines", type=int, default=2, help="simulated lines with --cells (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--amp-hours", type=float, default=None, help="amperage scenario horizon [h] (8, quick 3)")
    ap.add_argument("--skip-baseline", action="store_true", help="comparison: the controller only, no PLC-only run")
    ap.add_argument(
        "--modes", default="plc_only,controller", help=f"comma list of the comparison's runs: {', '.join(MODES)}"
    )
    ap.add_argument(
        "--plants", default="spread,variant", help=f"comma list of the comparison's plants: {', '.join(PLANTS)}"
    )
    ap.add_argument(
        "--parts",
        default="amperage,compare,feeders",
        help="comma list of amperage, compare, feeders; results merge into an existing output file",
    )
    ap.add_argument("--feeder-hours", type=float, default=None, help="feeder-fault horizon [h] (24, quick 4)")
    ap.add_argument("--feeder-fraction", type=float, default=0.3, help="share of each shot a faulty feeder delivers")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        metavar="JSON",
        help="run nothing: merge the comparison runs of these results (e.g. the four runs made apart with "
        "--plants/--modes, same size) into --out",
    )
    args = ap.parse_args(argv)

    from twin.config import load_plant_config

    ref = load_plant_config()
    cells = args.cells if args.cells is not None else (66 if args.quick else None)
    days = args.days or (1.0 if args.quick else 30.0)
    amp_hours = args.amp_hours
    if amp_hours is None:
        amp_hours = (3.0 if args.days is None else min(3.0, max(0.5, days * 24.0))) if args.quick else 8.0
    plants = [p.strip() for p in args.plants.split(",") if p.strip()]
    if set(plants) - set(PLANTS):
        ap.error(f"--plants: unknown {sorted(set(plants) - set(PLANTS))}; expected {', '.join(PLANTS)}")
    t0 = time.perf_counter()
    from benchmarks.common import header

    result: dict[str, Any] = {
        **header("bench_controller", bool(args.quick)),
        "seed": args.seed,
        "targets": {
            "ae_per_pot_day_max": 0.05,
            "ae_mean_duration_s_max": 60.0,
            "detection_latency_samples_max": 2,
            "line_current_error_pct_max": 0.5,
            "cycle_time_ms_max": 5.0,
        },
    }
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    all_parts = {"amperage", "compare", "feeders"}
    bad = parts - all_parts
    if bad:
        ap.error(f"--parts: unknown {sorted(bad)}; expected amperage, compare, feeders")
    out = args.out or RESULTS / ("bench_controller_quick.json" if args.quick else "bench_controller.json")
    cmp_cfg = plant_config("spread", cells, args.lines)
    n_long = cmp_cfg.operating_cells
    if "amperage" in parts and not args.merge:
        print(f"amperage scenario: {amp_hours} h on 660 cells", flush=True)
        result["amperage"] = run_amperage(ref, args.seed, amp_hours)
    if args.merge:
        parts = {"compare"}
        merged: dict[str, Any] | None = None
        for f in args.merge:
            doc = json.loads(f.read_text())
            c = doc.get("compare")
            if not c:
                ap.error(f"--merge {f}: no 'compare' part")
            c["size"].pop("reduced_because", None)  # said again for the merged runs below
            for runs in c["runs"].values():
                for r in runs.values():
                    r.setdefault("measured", {"when": doc.get("when"), "source": doc.get("source")})
            if merged is None:
                merged = c
                continue
            if c["size"] != merged["size"]:
                ap.error(f"--merge {f}: size {c['size']} differs from {merged['size']}")
            for p_, runs in c["runs"].items():
                merged["runs"].setdefault(p_, {}).update(runs)
            merged["plants"].update(c["plants"])
            merged["modes"].update(c["modes"])
        assert merged is not None
        merged["side_by_side"] = side_by_side(merged["runs"])
        whens = sorted(r["measured"]["when"] for runs in merged["runs"].values() for r in runs.values())
        merged["measured"] = {
            "when": whens[0],
            "source": next(iter(next(iter(merged["runs"].values())).values()))["measured"]["source"],
            "runs_started": whens,
            "merged": result["when"],
        }
        result["compare"] = merged
    elif "compare" in parts:
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        if set(modes) - set(MODES):
            ap.error(f"--modes: unknown {sorted(set(modes) - set(MODES))}; expected {', '.join(MODES)}")
        if args.skip_baseline:
            modes = [m for m in modes if m != "plc_only"]
        result["compare"] = {
            "size": {
                "days": days,
                "cells": n_long,
                "lines": args.lines if cells is not None else len(ref.lines),
                "cells_per_line": cells,
                "line_cells_represented": 264 if cells is not None else None,
                "full_size": days >= 30.0 and cells is None,
                "full_size_is": "30 days x 660 cells (python benchmarks/bench_controller.py --parts compare)",
            },
            "plants": {p: PLANTS[p] for p in plants},
            "modes": {m: MODES[m] for m in modes},
            "controller_knows": "the nominal cell only (control_config_for_plant): not the per-cell spread, "
            "not the disturbances, not the variant's bubble form",
        }
        runs: dict[str, Any] = {}
        for p in plants:
            runs[p] = {}
            for m in modes:
                print(f"compare: {p} plant, {m}: {days} days on {n_long} cells", flush=True)
                runs[p][m] = run_long(
                    plant_config(p, cells, args.lines), args.seed, days, observe=m == "plc_only", label=f"{p}/{m}"
                )
        result["compare"]["runs"] = runs
        result["compare"]["side_by_side"] = side_by_side(runs)
    if "feeders" in parts and not args.merge:
        fh = args.feeder_hours if args.feeder_hours is not None else (4.0 if args.quick else 24.0)
        every, dur, warm = (0.5, 1.5, 2.0) if args.quick else (1.0, 3.0, 6.0)
        ff_cfg = cmp_cfg if args.quick else ref
        print(f"feeder faults: {fh} h on {ff_cfg.operating_cells} cells, one every {every} h", flush=True)
        result["feeder_faults"] = run_feeder_faults(ff_cfg, args.seed, fh, every, dur, args.feeder_fraction, warm)
    part_keys = {"amperage": "amperage", "compare": "compare", "feeders": "feeder_faults"}
    for p in parts:  # each part says when and from which source it was measured
        if part_keys[p] in result and "measured" not in result[part_keys[p]]:
            result[part_keys[p]]["measured"] = {"when": result["when"], "source": result["source"]}
    if parts != all_parts and out.exists():  # merge (read at the end)
        prev = json.loads(out.read_text())
        for key in list(prev):  # the NaN-ridden layout before issue 13
            if key in ("closed_loop", "baseline_open_loop") or key.startswith(("wall_s_baseline", "wall_s_closed")):
                prev.pop(key)
        for key in part_keys.values():
            if key in prev and key not in result and "measured" not in prev[key]:
                prev[key]["measured"] = {"when": prev.get("when"), "source": prev.get("source")}
        pc, rc = prev.get("compare"), result.get("compare")
        if pc and rc and pc.get("size") == rc.get("size"):  # another plant of the same comparison
            rc["runs"] = {
                p: {**pc.get("runs", {}).get(p, {}), **rc["runs"].get(p, {})}
                for p in {**pc.get("runs", {}), **rc["runs"]}
            }
            rc["modes"] = {**pc.get("modes", {}), **rc["modes"]}
            rc["plants"] = {**pc.get("plants", {}), **rc["plants"]}
            rc["side_by_side"] = side_by_side(rc["runs"])
        result = {**prev, **result}
    cmp_ = result.get("compare", {})
    if cmp_.get("runs") and not cmp_.get("size", {}).get("full_size"):
        speed = [r["run"]["speedup"] for runs in cmp_["runs"].values() for r in runs.values()]
        n_runs = len(speed)
        cmp_["size"]["reduced_because"] = (
            f"{cmp_['size']['days']:g} days x {cmp_['size']['cells']} cells ran at "
            f"{min(speed):.0f}-{max(speed):.0f}x real time per run (1 s scan, controller + scoring in Python); "
            f"the full 30 days would need {30 * 86400 / min(speed) / 3600:.1f} h per run x {n_runs} runs"
            + (" (--quick: the CI size)" if args.quick else ": reduced to fit the time this measurement had")
        )
    result["summary"] = {
        "compare_days": cmp_.get("size", {}).get("days"),
        "compare_cells": cmp_.get("size", {}).get("cells"),
        "side_by_side": cmp_.get("side_by_side"),
        "cycle_time_ms_p99_660_cells": result.get("amperage", {}).get("cycle_time_ms", {}).get("p99"),
        "feeder_faults_followed_by_ae": result.get("feeder_faults", {}).get("faults_followed_by_ae"),
        "feeder_fault_aes_predicted_60s_ahead_share": result.get("feeder_faults", {}).get("share_predicted_60s_ahead"),
        "feeder_fault_alarm_lead_s_median": result.get("feeder_faults", {}).get("alarm_lead_s_median"),
    }
    result[f"wall_s_{'_'.join(sorted(parts))}"] = time.perf_counter() - t0
    result["non_finite"] = non_finite({k: v for k, v in result.items() if k != "non_finite"})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float))
    print(json.dumps(result["summary"], indent=2, default=float))
    print(f"wrote {out}")
    if result["non_finite"]:
        print(f"non-finite figures: {result['non_finite']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
