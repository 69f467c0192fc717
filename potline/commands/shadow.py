"""``potline shadow``: shadow-test a refining-pot controller on a recorded cycle.

Replays a prototype pot's log (CSV or Parquet, see ``refining.shadow.COLUMN_UNITS``),
runs the twin with its state observer and the candidate controller beside it (nothing
is written to any PLC), and writes ``report.html`` (with PNG plots) and
``report.json`` to ``--out``. Exit code: 0 ready, 1 not ready, 2 bad input.

Recordings (docs/operations.md, "Refining pots"): ``t_s`` or ISO-8601 / epoch
``timestamp``; units in the header (``current [kA]``) or a sidecar
``<file>.meta.toml`` that also maps a historian export's tag names; blank cells and
gaps are counted, reported as data warnings and never blamed on the candidate.
``--export-normalized FILE`` writes what was read in the canonical format.

``--make-recording FILE`` first writes a synthetic recording made by the twin with
hidden parameter factors (``--hidden kappa=0.92,ua=1.2,scrap_fe=1.1``): a pot that is
not the config, for trying the tool without a prototype. It is labelled synthetic in
its header; ``--outage DAY:DAYS`` and ``--blanks N`` make it look like a historian
export (an outage, blank cells).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from twin.resources import config_dir

if TYPE_CHECKING:
    from potline.report import Report
    from refining.config import RefiningConfig
    from refining.model import PotPolicy
    from refining.shadow import ShadowResult

DEFAULT_CONFIG = config_dir() / "refining_3ka.toml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="refining pot config TOML (default: %(default)s)")
    parser.add_argument("--data", help="recorded cycle: .csv or .parquet")
    parser.add_argument(
        "--candidate",
        default="nominal",
        help="candidate controller: a preset (nominal, high_current, low_current, hot_trim, "
        "cautious_stop, unsafe_step, unsafe_ramp) or module:attr giving PolicyParams or a "
        "factory f(cfg, n_pots, period_s) -> policy (default: %(default)s)",
    )
    parser.add_argument("--grade", help="scrap grade the twin assumes (default: the config's)")
    parser.add_argument("--out", default="out/shadow", help="report directory (default: %(default)s)")
    parser.add_argument("--members", type=int, default=6, help="ensemble size of the cycle prediction (default: 6)")
    parser.add_argument(
        "--make-recording",
        metavar="FILE",
        help="write a synthetic recording from the twin (then shadow-test it unless --data is given)",
    )
    parser.add_argument(
        "--hidden",
        default="kappa=0.92,ua=1.2,scrap_fe=1.1",
        help="hidden parameter factors of the synthetic pot (default: %(default)s)",
    )
    parser.add_argument(
        "--recorded-policy", default="nominal", help="preset that ran the synthetic pot (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=7, help="noise seed of the synthetic pot (default: %(default)s)")
    parser.add_argument(
        "--outage", metavar="DAY:DAYS", help="synthetic recording: remove DAYS of rows from DAY (a historian outage)"
    )
    parser.add_argument(
        "--blanks", type=int, default=0, help="synthetic recording: blank cells per measurement column (default: 0)"
    )
    parser.add_argument(
        "--time-origin",
        default="2025-10-01T00:00:00Z",
        help="synthetic recording: ISO-8601 time of the cycle start; '' writes t_s instead (default: %(default)s)",
    )
    parser.add_argument("--sidecar", help="the recording's sidecar (default: <data>.meta.toml when it exists)")
    parser.add_argument("--gap-s", type=float, help="intervals longer than this are data gaps [s] (default: 3 periods)")
    parser.add_argument(
        "--export-normalized", metavar="FILE", help="also write the recording as read (canonical columns, t_s)"
    )
    parser.add_argument("--quiet", action="store_true", help="print only the verdict line")


def _parse_factors(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        if "=" not in item:
            raise ValueError(f"--hidden: expected name=factor, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = float(v)
        except ValueError:
            raise ValueError(f"--hidden: factor for {k.strip()!r} is not a number: {v!r}") from None
    return out


def resolve_candidate(spec: str, cfg: RefiningConfig) -> tuple[str, Callable[[int], PotPolicy]]:
    """(name, factory f(n) -> policy) for a preset name or ``module:attr``."""
    import importlib

    from refining.controller import PolicyParams, RefiningPolicy, policy_presets

    period = cfg.operation.control_period_s
    presets = policy_presets(cfg)
    if spec in presets:
        pp = presets[spec]
        return spec, lambda n: RefiningPolicy(pp, n, period)
    if ":" not in spec:
        raise ValueError(f"unknown candidate {spec!r}: use one of {', '.join(presets)} or module:attr")
    mod_name, attr = spec.split(":", 1)
    try:
        obj = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"candidate {spec!r}: cannot import ({exc})") from None
    if isinstance(obj, PolicyParams):
        return obj.name, lambda n: RefiningPolicy(obj, n, period)
    if callable(obj):
        return attr, lambda n: obj(cfg, n, period)
    raise ValueError(f"candidate {spec!r} is neither PolicyParams nor a callable factory")


def _outage(text: str | None) -> tuple[float, float] | None:
    if not text:
        return None
    try:
        a, b = (float(x) for x in text.split(":", 1))
    except ValueError:
        raise ValueError(f"--outage: expected DAY:DAYS (e.g. 10:2), got {text!r}") from None
    if a < 0 or b <= 0:
        raise ValueError(f"--outage: expected DAY ≥ 0 and DAYS > 0, got {text!r}")
    return a, b


def make_recording(cfg: RefiningConfig, args: argparse.Namespace) -> tuple[Path, str]:
    """Write the synthetic recording ``args.make_recording``; returns (path, one-line summary)."""
    from refining.campaign import degrade_recording, record_cycle
    from refining.controller import RefiningPolicy, policy_presets
    from refining.recording import write_recording

    factors = _parse_factors(args.hidden)
    presets = policy_presets(cfg)
    if args.recorded_policy not in presets:
        raise ValueError(f"--recorded-policy: unknown preset {args.recorded_policy!r}")
    cols = record_cycle(
        cfg,
        RefiningPolicy(presets[args.recorded_policy], 1, cfg.operation.control_period_s),
        factors=factors,
        seed=args.seed,
    )
    from refining import model as rf

    end = rf.END_REASONS[int(cols.pop("end_reason")[-1])]
    days = float(cols["t_s"][-1] / 86400)
    outage = _outage(args.outage)
    cols = degrade_recording(cols, gap=outage, blanks=max(0, args.blanks), seed=args.seed)
    made_by = (
        f"potline shadow --config {Path(args.config).name} --make-recording FILE --hidden {args.hidden}"
        f" --recorded-policy {args.recorded_policy} --seed {args.seed}"
        + (f" --outage {args.outage}" if args.outage else "")
        + (f" --blanks {args.blanks}" if args.blanks else "")
    )
    meta = {
        "synthetic": True,
        "source": f"potline-twin refining twin ({cfg.pot.name}), not a real pot",
        "config": Path(args.config).name,
        "hidden_factors": args.hidden,
        "policy": args.recorded_policy,
        "seed": args.seed,
        "cycle_end": f"{end} at day {days:.2f}",
        "made_by": made_by,
    }
    if outage:
        meta["outage"] = f"rows from day {outage[0]:g} to day {outage[0] + outage[1]:g} removed"
    if args.blanks:
        meta["blanks"] = f"{args.blanks} blank cells in each of current, voltage, temperature, heater power"
    decimals = {"current_a": 1, "voltage_v": 4, "temperature_c": 2, "heater_kw": 3, "current_sp_a": 1,
                "heater_sp_c": 2, "charge_kg": 3, "tap_kg": 3, "assay_fe_pct": 5, "assay_cu_pct": 5,
                "assay_si_pct": 5}  # fmt: skip
    path = write_recording(
        cols, args.make_recording, meta=meta, t0_utc=args.time_origin, decimals=decimals, blank_zero_events=True
    )
    return path, f"recording written: {path} ({len(cols['t_s'])} rows, {days:.1f} d, {end}, hidden {factors})"


def main(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")

    from potline.report import write_json
    from refining.config import RefiningConfigError, load_refining_config
    from refining.recording import load_recording, write_recording
    from refining.shadow import RecordingError, run_shadow

    try:
        cfg = load_refining_config(args.config)
    except RefiningConfigError as exc:
        print(f"potline shadow: {exc}", file=sys.stderr)
        return 2
    data = args.data
    try:
        if args.make_recording:
            path, line = make_recording(cfg, args)
            if not args.quiet:
                print(line)
            data = data or str(path)
        if not data:
            print("potline shadow: --data (or --make-recording) is required", file=sys.stderr)
            return 2
        rec = load_recording(
            data, heater_sp_default=cfg.operation.heater_setpoint_c, sidecar=args.sidecar, gap_s=args.gap_s
        )
        if args.export_normalized:
            write_recording(rec.columns(), args.export_normalized, meta={**rec.meta, "normalized_from": data})
        name, factory = resolve_candidate(args.candidate, cfg)
        if args.grade:
            cfg.grade(args.grade)
    except (RecordingError, RefiningConfigError, ValueError, KeyError) as exc:
        print(f"potline shadow: {exc}", file=sys.stderr)
        return 2

    res = run_shadow(
        cfg,
        rec,
        factory,
        candidate_name=name,
        config_name=Path(args.config).name,
        n_members=max(1, args.members),
        grade=args.grade,
    )
    out = Path(args.out)
    html_path = build_report(res, cfg).write(out)
    body = res.to_dict()
    body["report_html"] = str(html_path)
    json_path = write_json(out / "report.json", body)
    v = res.verdict
    print(f"{name}: {v.label.upper()}" + ("" if v.ready else " — " + "; ".join(v.reasons)))
    if not args.quiet:
        for w in v.data_warnings:
            print(f"  {w}")
        for m in res.flagged:
            print(f"  mismatch: {m.text}")
        print(f"  report: {html_path}  json: {json_path}")
    return 0 if v.ready else 1


# --------------------------------------------------------------------------- report


def build_report(res: ShadowResult, cfg: RefiningConfig) -> Report:
    """The shadow report (``potline.report.Report``) with its plots."""
    import matplotlib.pyplot as plt
    import numpy as np

    from potline.report import Report
    from refining import model as rf
    from refining import observer as ob

    rec = res.recording
    days = rec.t_s / 86400.0
    out = res.observer_out
    ol = res.open_loop
    v = res.verdict
    rep = Report(f"Shadow test — {res.candidate}", subtitle=f"{res.config_name}: {cfg.pot.name}; data {rec.source}")

    s = rep.section("Verdict")
    s.badge(v.label.upper(), "ok" if v.ready else "bad")
    if v.reasons:
        s.bullets(v.reasons)
    s.table(
        [
            {
                "criterion": c.name,
                "value": c.value,
                "limit": c.limit,
                "unit": c.unit,
                "first failed (day)": c.t_s / 86400.0 if c.t_s == c.t_s else "",
                "passed": c.passed,
                "detail": c.text,
            }
            for c in v.criteria
        ],
        caption="Deployment criteria: every command finite, of the right sign, within [safety] bounds and ramp (on the "
        "recording and over the predicted cycle); predicted temperature within [safety] temperature_min/max_c; metal "
        "and anode inventories within the pot's capacity; no longer than [verdict] tap_interval_max_h without a tap; "
        "purity ≥ limit in every batch; DC energy ≤ limit; cycle ≥ limit and ended by impurity breakthrough; "
        "observer residual ≤ limit.",
    )
    if v.data_warnings:
        s.text("Data problems of the recording (reported, never counted against the candidate):")
        s.bullets(v.data_warnings)

    s = rep.section("Where the twin and the pot part")
    s.text(
        "The configured twin run open loop on the logged current, setpoints, charges and taps, against the observer "
        "(the same twin corrected at every sample). Large open-loop errors with a small observer residual mean the "
        "pot differs from the config in the flagged parameters."
    )
    s.kv({k: v_ for k, v_ in res.prediction_errors.items()}, caption="Prediction errors")
    s.table(
        [
            {
                "parameter": m.parameter,
                "config": m.config,
                "estimate": m.estimate,
                "deviation %": m.deviation_pct,
                "flagged": m.flagged,
                "detail": m.text,
            }
            for m in res.mismatches
        ],
        caption=f"Observer estimates vs config (flag beyond ±{cfg.verdict.mismatch_flag_pct} %)",
    )

    fig, ax = plt.subplots(figsize=(10, 3.6))
    ax.plot(days, rec.voltage_v, lw=0.6, color="0.55", label="measured")
    ax.plot(days, ol["u_v"], lw=1.0, label="twin, config (open loop)")
    ax.plot(days, out[:, ob.OUT_U_PRED], lw=0.8, label="twin + observer (one-step)")
    on = rec.current_a > 0.05 * max(1.0, rec.current_a.max())
    if on.any():
        lo, hi = np.nanpercentile(rec.voltage_v[on], [0.5, 99.5])
        ax.set_ylim(lo - 0.15, hi + 0.15)
    ax.set_xlabel("day")
    ax.set_ylabel("pot voltage [V]")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    s.figure(fig, name="voltage", caption="Voltage: measured, configured twin, observer")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(10, 3.2))
    ax.plot(days, out[:, ob.OUT_THETA_R], label="ohmic resistance")
    ax.plot(days, out[:, ob.OUT_THETA_UA], label="heat loss")
    ax.plot(days, out[:, ob.OUT_THETA_S + rf.FE], label="scrap Fe")
    ax.plot(days, out[:, ob.OUT_THETA_S + rf.SI], label="scrap Si")
    f = cfg.verdict.mismatch_flag_pct / 100.0
    ax.axhspan(1 - f, 1 + f, color="green", alpha=0.08, label="within flag band")
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set_xlabel("day")
    ax.set_ylabel("estimate / config")
    ax.legend(loc="best", fontsize=8, ncol=3)
    ax.grid(alpha=0.3)
    s.figure(fig, name="estimates", caption="Observer parameter estimates relative to the config")
    plt.close(fig)

    has = np.isfinite(rec.assay[:, rf.FE]) & (rec.tap_kg > 0)
    fig, ax = plt.subplots(figsize=(10, 3.6))
    for e, el, col in ((rf.FE, "Fe", "tab:red"), (rf.SI, "Si", "tab:blue")):
        ax.plot(days[has], rec.assay[has, e] * 100, "o", color=col, ms=4, label=f"{el} assay")
        ax.plot(days, ol["pool_x"][:, e] * 100, "--", color=col, lw=0.9, label=f"{el} twin, config")
        ax.plot(days, out[:, ob.OUT_POOL_X + e] * 100, "-", color=col, lw=0.9, alpha=0.7, label=f"{el} twin + observer")
    ax.axhline(cfg.limits.cathode_fe_pct, color="tab:red", lw=0.6, ls=":")
    ax.axhline(cfg.limits.cathode_si_pct, color="tab:blue", lw=0.6, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("day")
    ax.set_ylabel("cathode metal [%]")
    ax.legend(loc="best", fontsize=7, ncol=3)
    ax.grid(alpha=0.3, which="both")
    s.figure(fig, name="purity", caption="Cathode impurities: assays vs twin (dotted: P1020 limits)")
    plt.close(fig)

    dt = np.diff(rec.t_s, prepend=rec.t_s[0])
    fig, ax = plt.subplots(figsize=(10, 3.0))
    ax.plot(days, np.cumsum(rec.voltage_v * rec.current_a * dt) / 3.6e6, color="0.4", label="measured DC")
    ax.plot(days, ol["e_dc_kwh"], label="twin, config")
    ax.plot(days, out[:, ob.OUT_E_DC_PRED_KWH], label="twin + observer")
    ax.plot(days, np.cumsum(rec.heater_kw * dt) / 3600.0, color="0.7", label="measured heater")
    ax.plot(days, ol["e_aux_kwh"], ls="--", label="heater, twin config")
    ax.set_xlabel("day")
    ax.set_ylabel("energy [kWh]")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    s.figure(fig, name="energy", caption="Cumulative energy")
    plt.close(fig)

    s = rep.section("What the candidate would have done differently")
    s.text(
        "The candidate was stepped on every logged scan with what the pot's PLC showed; its commands were recorded, "
        "checked against the [safety] limits, and never written."
    )
    s.table(res.differences)
    if res.violations:
        s.table(
            [
                {"day": x.t_s / 86400.0, "kind": x.kind, "value": x.value, "limit": x.limit, "message": x.message}
                for x in res.violations[:25]
            ],
            caption=f"{len(res.violations)} unsafe command(s); first 25 shown",
        )
    else:
        s.text("No command beyond the safety limits.")
    cmds = res.candidate_commands
    fig, ax = plt.subplots(figsize=(10, 3.4))
    ax.plot(days, rec.current_sp_a, color="0.4", label="recorded setpoint")
    ax.plot(days, cmds[:, 0], lw=1.0, label="candidate setpoint")
    ax.axhline(cfg.safety.current_max_a, color="r", lw=0.6, ls=":", label="max current")
    if res.violations:
        vd = np.array([x.t_s for x in res.violations]) / 86400.0
        vi = np.interp(vd, days, cmds[:, 0])
        ax.plot(vd, vi, "rx", ms=5, label="unsafe command")
    ax.set_xlabel("day")
    ax.set_ylabel("current setpoint [A]")
    ax2 = ax.twinx()
    ax2.plot(days, rec.heater_sp_c, color="0.7", lw=0.6, ls="--")
    ax2.plot(days, cmds[:, 1], color="tab:orange", lw=0.6, ls="--")
    ax2.set_ylabel("heater setpoint [°C] (dashed)")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    s.figure(fig, name="commands", caption="Recorded vs candidate commands")
    plt.close(fig)

    s = rep.section("Predicted cycle under the candidate")
    s.kv(res.predicted, caption="Observer-calibrated twin from the cycle start, worst case over the ensemble")
    s.table(
        [
            {
                k: m[k]
                for k in (
                    "days",
                    "end_reason",
                    "purity_min_pct",
                    "purity_avg_pct",
                    "dc_kwh_per_kg",
                    "total_kwh_per_kg",
                    "kg_per_day",
                    "ce_avg",
                    "u_avg_v",
                )
            }
            for m in res.predicted_members
        ],
        caption="Ensemble members",
    )
    ps = res.predicted_series
    pd_ = ps["t_s"] / 86400.0
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(10, 5), sharex=True)
    a1.plot(pd_, ps["current_a"], label="current [A]")
    a1b = a1.twinx()
    a1b.plot(pd_, ps["temperature_c"], color="tab:orange", lw=0.6, label="temperature")
    a1b.set_ylabel("°C")
    a1.set_ylabel("A")
    a1.grid(alpha=0.3)
    for el, col in (("fe", "tab:red"), ("si", "tab:blue")):
        a2.plot(pd_, ps[f"assay_{el}"] * 100, color=col, label=f"{el.capitalize()} (tap assays)")
    a2.axhline(cfg.limits.cathode_fe_pct, color="tab:red", lw=0.6, ls=":")
    a2.axhline(cfg.limits.cathode_si_pct, color="tab:blue", lw=0.6, ls=":")
    a2.set_yscale("log")
    a2.set_xlabel("day")
    a2.set_ylabel("cathode metal [%]")
    a2.legend(fontsize=8)
    a2.grid(alpha=0.3, which="both")
    s.figure(fig, name="prediction", caption="Predicted cycle under the candidate (one ensemble member)")
    plt.close(fig)

    s = rep.section("Recorded cycle")
    s.kv(res.recorded, caption="From the pot's own meters, weighings and assays")

    s = rep.section("Inputs and notes")
    s.kv(
        {
            "config": res.config_name,
            "data": rec.source,
            "synthetic": rec.synthetic,
            "cycle start (UTC)": rec.t0_utc or "—",
            "rows": rec.n,
            "segments": len(rec.segments()),
            "candidate": res.candidate,
            "purity criterion %": cfg.verdict.purity_min_pct,
            "energy criterion kWh/kg": cfg.verdict.energy_max_kwh_kg,
            "cycle criterion d": cfg.verdict.cycle_min_days,
            "ramp limit A/h": cfg.safety.ramp_a_per_h,
            "current max A": cfg.safety.current_max_a,
        }
    )
    s.bullets(res.notes)
    return rep
