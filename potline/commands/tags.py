"""``potline tags``: validate tag maps and export them (CSV + JSON) for SCADA integrators.

    potline tags check config/tagmaps/*.toml
    potline tags export --map config/tagmaps/potroom.toml --out DIR [--instance Potroom2]

``export`` writes ``DIR/<instance>.csv`` and ``DIR/<instance>.json`` (one row per
concrete tag: type, unit, access, scaling, bounds, Modbus table/address/bit/device
id with its six-digit Modicon reference, OPC UA browse path/NodeId).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="tags_command", required=True, metavar="ACTION")
    p = sub.add_parser("check", help="validate tag map files and list every problem")
    p.add_argument("maps", nargs="+", type=Path, help="tag map TOML files")
    p = sub.add_parser("export", help="write a tag map as CSV and JSON")
    p.add_argument("--map", dest="map", required=True, type=Path, help="tag map TOML file")
    p.add_argument("--out", required=True, type=Path, help="output directory (created if missing)")
    p.add_argument("--instance", default=None, help="instance name for {instance} in browse paths")
    p.add_argument("--format", default="csv,json", help="comma-separated: csv, json (default both)")


def main(args: argparse.Namespace) -> int:
    from plc_bridge.tagmap import TagMapError, load_tagmap

    if args.tags_command == "check":
        bad = 0
        for path in args.maps:
            try:
                m = load_tagmap(path)
            except TagMapError as exc:
                bad += 1
                for line in exc.problems:
                    print(line, file=sys.stderr)
                continue
            n_cells = m.cells.count if m.cells else 0
            print(f"{path}: ok ({len(m)} tags, {len(m.writable())} writable, {n_cells} cells)")
        return 1 if bad else 0

    formats = {f.strip().lower() for f in args.format.split(",") if f.strip()}
    unknown = formats - {"csv", "json"}
    if unknown or not formats:
        print(f"potline tags export: --format expects csv and/or json, got {args.format!r}", file=sys.stderr)
        return 2
    try:
        m = load_tagmap(args.map, instance=args.instance)
    except TagMapError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return 1
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"potline tags export: cannot create {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    stem = m.instance or m.device
    written = []
    if "csv" in formats:
        written.append(m.export_csv(args.out / f"{stem}.csv"))
    if "json" in formats:
        written.append(m.export_json(args.out / f"{stem}.json"))
    for p in written:
        print(f"wrote {p} ({len(m)} tags)")
    return 0
