"""``potline calibrate``: fit a refining pot's parameters to a recording; write a calibrated config.

The twin is replayed on the recording (``refining.calibration``) and the chosen
parameters (``--params``, default: electrolyte conductivity, heat loss, heat capacity,
Fe in the scrap) are fitted by least squares. Printed and written to ``report.json``:
each estimate with its standard deviation, the correlations between them, the fit
quality per channel (voltage, temperature, assays) and which parameters this recording
can tell apart. The identifiable ones are written into a copy of the config
(``--out``), each changed line commented with the estimate, its uncertainty and the old
value; ``potline shadow --config`` and ``potline campaign --config`` take it as is.

Exit code: 0 written, 1 the fit failed or nothing was identifiable, 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from twin.resources import config_dir

DEFAULT_CONFIG = config_dir() / "refining_3ka.toml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="refining pot config TOML (default: %(default)s)")
    parser.add_argument("--data", required=True, help="recorded cycle: .csv or .parquet (see docs/operations.md)")
    parser.add_argument("--sidecar", help="the recording's sidecar (default: <data>.meta.toml when it exists)")
    parser.add_argument("--gap-s", type=float, help="intervals longer than this are data gaps [s] (default: 3 periods)")
    parser.add_argument(
        "--params",
        default="kappa,ua,heat_cap,scrap_fe",
        help="parameters to fit, comma-separated: kappa, r_contact, ua, heat_cap, scrap_heat, scrap_fe, scrap_si, "
        "beta_fe, ce_loss (default: %(default)s)",
    )
    parser.add_argument("--grade", help="scrap grade charged (default: the config's)")
    parser.add_argument(
        "--out", help="calibrated config to write (default: out/calibrate/<config stem>_calibrated.toml)"
    )
    parser.add_argument("--report", default=None, help="directory for report.json (default: next to --out)")
    parser.add_argument("--quiet", action="store_true", help="print only the summary line")


def main(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from potline.report import write_json
    from refining.calibration import fit
    from refining.config import RefiningConfigError, load_refining_config, write_calibrated_config
    from refining.recording import load_recording
    from refining.shadow import RecordingError

    try:
        cfg = load_refining_config(args.config)
        if args.grade:
            cfg.grade(args.grade)
        rec = load_recording(
            args.data, heater_sp_default=cfg.operation.heater_setpoint_c, sidecar=args.sidecar, gap_s=args.gap_s
        )
        params = [p.strip() for p in args.params.split(",") if p.strip()]
        res = fit(cfg, rec, params, grade=args.grade)
    except (RecordingError, RefiningConfigError, ValueError, KeyError) as exc:
        print(f"potline calibrate: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("out/calibrate") / f"{Path(args.config).stem}_calibrated.toml"
    report_dir = Path(args.report) if args.report else out.parent
    when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    updates = res.config_updates()
    written = None
    if res.success and updates:
        header = [
            f"Calibrated by potline calibrate on {when} from {rec.source}"
            + (" (a SYNTHETIC recording)" if rec.synthetic else ""),
            f"base config: {args.config}; fitted: {', '.join(p.name for p in res.params)};"
            f" written: {', '.join(p.name for p in res.identifiable)}",
            "fit: "
            + "; ".join(f"{k} rms {v['rms']:.4g} over {v['n']} residuals" for k, v in res.channels.items() if v["n"]),
        ]
        try:
            written = write_calibrated_config(args.config, out, updates, header)
        except (RefiningConfigError, OSError) as exc:
            print(f"potline calibrate: cannot write {out}: {exc}", file=sys.stderr)
            return 2
    body = res.to_dict()
    body.update({"config": args.config, "calibrated_config": str(out) if written else None, "written_at": when})
    json_path = write_json(report_dir / "report.json", body)
    if not args.quiet:
        print(f"calibration of {Path(args.config).name} on {rec.source} ({rec.n} rows, {rec.t_s[-1] / 86400:.1f} d)")
        if rec.synthetic:
            print("  the recording is labelled synthetic")
        print(f"  {'parameter':<11} {'config':>10} {'estimate':>11} {'± 1σ':>10} {'change':>8}  identifiable")
        for p in res.params:
            print(
                f"  {p.name:<11} {p.config:>10.4g} {p.estimate:>11.5g} {p.std:>10.2g} {p.change_pct:>+7.1f}%"
                f"  {'yes' if p.identifiable else 'NO: ' + p.note}  [{p.unit}, {p.key}]"
            )
        names = [p.name for p in res.params]
        print("  correlations: " + (", ".join(
            f"{a}/{b} {res.correlation[i, j]:+.2f}" for i, a in enumerate(names) for j, b in enumerate(names) if j > i
        ) or "—"))  # fmt: skip
        for k, v in res.channels.items():
            if v["n"]:
                extra = f" ({v['rms_pct']:.2f} % of the mean voltage)" if "rms_pct" in v else ""
                print(f"  fit {k}: rms {v['rms']:.4g}{extra} over {v['n']} residuals, bias {v['bias']:+.2g}")
        print(f"  condition number {res.condition_number:.3g}; {res.nfev} replays; {res.message}")
        for n in res.notes:
            print(f"  note: {n}")
    if written is None:
        print(
            "potline calibrate: nothing written: "
            + ("the fit did not converge" if not res.success else "no parameter is identifiable from this recording"),
            file=sys.stderr,
        )
        return 1
    print(f"calibrated config: {out}  (report: {json_path})")
    return 0
