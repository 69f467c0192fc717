"""``potline report``: shift and daily reports per potroom (HTML + CSV) from a journal and a history.

    potline report --journal /var/lib/potline-twin/journal.db --history /var/lib/potline-twin/history.db \\
        --shift 2026-12-04T06:00/8h --out reports/
    potline report --journal out/demo/journal.sqlite --history out/demo/history.sqlite \\
        --shift 2026-12-04T06:00/2026-12-05T06:00 --out reports/ --title "Daily report"

``--shift`` is ``START/DURATION`` (s, m, h, d) or ``START/END``, ISO-8601, UTC when no zone.
Figures and where they come from: ``potline.shift_report``. Without ``--history`` only the
journal's figures (AE count and minutes, alarms, setpoint changes; frequency and AEM with
``--cells-per-room``). Writes ``shift-<start>-<hours>h.html`` and ``.csv`` into ``--out``
and prints their paths. Exit status 2 for a bad argument or an unreadable file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--journal", required=True, help="the journal file (potline run / potline demo)")
    parser.add_argument("--history", default=None, help="the history file (energy, metal, PFC mass, voltage band)")
    parser.add_argument("--shift", required=True, metavar="START/DURATION",
                        help="the period, e.g. 2026-12-04T06:00/8h or START/END (UTC when no zone)")  # fmt: skip
    parser.add_argument("--out", default="out/reports", help="directory of the report (default: %(default)s)")
    parser.add_argument("--band", default="3.9:4.8", metavar="LOW:HIGH",
                        help="band of a cell's median voltage [V] (default: %(default)s)")  # fmt: skip
    parser.add_argument("--cells-per-room", type=int, default=None,
                        help="cells per room when there is no history (AE frequency, AEM)")  # fmt: skip
    parser.add_argument("--title", default="Shift report", help="report title (default: %(default)s)")


def main(args: argparse.Namespace) -> int:
    from potline.shift_report import ShiftReportError, build_shift_report, parse_period, write_shift_report

    try:
        period = parse_period(args.shift)
        lo, _, hi = str(args.band).partition(":")
        try:
            band = (float(lo), float(hi))
        except ValueError:
            raise ShiftReportError(f"--band: expected LOW:HIGH in volts like 3.9:4.8, got {args.band!r}") from None
        if not band[0] < band[1]:
            raise ShiftReportError(f"--band: LOW must be below HIGH, got {args.band!r}")
        rep = build_shift_report(Path(args.journal), period, Path(args.history) if args.history else None,
                                 band_v=band, cells_per_room=args.cells_per_room)  # fmt: skip
        html, csv_path = write_shift_report(rep, Path(args.out), title=args.title)
    except ShiftReportError as exc:
        print(f"potline report: {exc}", file=sys.stderr)
        return 2
    for rf in rep.rooms.values():
        kwh = f"{rf.kwh_per_kg:.2f} kWh/kg" if rf.kwh_per_kg is not None else "kWh/kg unknown"
        print(f"  {rf.room}: {rf.ae_count} AEs, {rf.ae_minutes:.1f} AE-min, {kwh}, "
              f"{sum(rf.alarms.values())} alarms, {rf.setpoint_changes} setpoint changes")  # fmt: skip
    print(f"Report: {html.resolve()}")
    print(f"CSV: {csv_path.resolve()}")
    return 0
