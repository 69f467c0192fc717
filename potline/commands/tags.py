"""``potline tags``: validate tag maps and export them (CSV + JSON) for SCADA integrators.

    potline tags check config/tagmaps/*.toml
    potline tags export --map config/tagmaps/potroom.toml --out DIR [--instance Potroom2]
    potline tags export --config /etc/potline-twin/daemon.toml --out DIR

``check`` validates each file (syntax, types, bounds, addresses, overlapping registers
and bits) and, for a device kind the bridge knows (``[device] name`` = rectifier or
potroom), its roles (``plc_bridge.roles``): a missing required role is an error naming
the role and the device, a missing optional one a stated capability loss.

``export --map`` writes ``DIR/<instance>.csv`` and ``DIR/<instance>.json`` (one row per
concrete tag: role, type, unit, access, scaling, bounds, plausibility, transforms,
Modbus table / 0- and 1-based addresses / bit / device id with its six-digit Modicon
reference, byte/word order in ABCD notation, OPC UA namespace URI, browse path and
NodeId). ``export --config`` writes one pair per PLC of a daemon config, exactly as the
daemon uses them: ``{instance}`` = the line or room name, the cell block resized to the
room, the namespace the PLC section gives, the setpoint bounded by the plant's
rectifier limits.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="tags_command", required=True, metavar="ACTION")
    p = sub.add_parser("check", help="validate tag map files (and their bridge roles); list every problem")
    p.add_argument("maps", nargs="+", type=Path, help="tag map TOML files")
    p = sub.add_parser("export", help="write tag maps as CSV and JSON for integrators")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--map", dest="map", type=Path, help="tag map TOML file")
    src.add_argument("--config", type=Path, help="daemon config: every PLC's map as the daemon uses it")
    p.add_argument("--out", required=True, type=Path, help="output directory (created if missing)")
    p.add_argument("--instance", default=None,
                   help="with --map: name for {instance} in browse paths (the bridge uses the line / room name)")  # fmt: skip
    p.add_argument("--format", default="csv,json", help="comma-separated: csv, json (default both)")


def _check(paths: list[Path]) -> int:
    from plc_bridge.roles import check_roles
    from plc_bridge.tagmap import TagMapError, load_tagmap

    bad = 0
    for path in paths:
        try:
            m = load_tagmap(path)
        except TagMapError as exc:
            bad += 1
            for line in exc.problems:
                print(line, file=sys.stderr)
            continue
        rep = check_roles(m)
        if rep.errors:
            bad += 1
            for role, msg in rep.errors:
                print(f"{path}: roles.{role}: {msg}", file=sys.stderr)
            continue
        n_cells = m.cells.count if m.cells else 0
        what = f"{len(m)} tags, {len(m.writable())} writable, {n_cells} cells"
        if rep.kind is None:
            print(f"{path}: ok ({what}); device {m.device!r} is not a kind the bridge knows: roles not checked")
            continue
        n_roles = len(rep.kind.roles)
        print(f"{path}: ok ({what}); {rep.kind.name} roles: {len(rep.bound)} of {n_roles} given")
        for line in rep.loss_lines():
            print(f"  capability loss: {line}")
    return 1 if bad else 0


def _maps_of_config(config: Path) -> list[tuple[str, Any]]:
    """(file stem, TagMap) per PLC of a daemon config, as the daemon uses them."""
    from dataclasses import replace

    from plc_bridge.plant import rectifier_limits
    from potline.daemon_config import load_daemon_config

    loaded = load_daemon_config(config)
    limits = rectifier_limits(loaded.plant) if loaded.plant is not None else {}
    out = []
    for pc in loaded.config.plc:
        tm = loaded.tagmaps[pc.name]
        if pc.kind == "rectifier" and pc.where in limits:
            lo, hi = limits[pc.where]
            tm = tm.with_bounds("line_current_sp", lo, hi, f"the plant's rectifier limits of {pc.where}")
        if pc.protocol == "opcua" and pc.namespace:
            tm = replace(tm, namespace=pc.namespace, _index={})
        out.append((pc.name, tm))
    return out


def main(args: argparse.Namespace) -> int:
    from plc_bridge.tagmap import TagMapError, load_tagmap

    if args.tags_command == "check":
        return _check(args.maps)

    formats = {f.strip().lower() for f in args.format.split(",") if f.strip()}
    unknown = formats - {"csv", "json"}
    if unknown or not formats:
        print(f"potline tags export: --format expects csv and/or json, got {args.format!r}", file=sys.stderr)
        return 2
    try:
        if args.config is not None:
            if args.instance is not None:
                print("potline tags export: --instance is for --map (a daemon config names its own)", file=sys.stderr)
                return 2
            maps = _maps_of_config(args.config)
        else:
            m = load_tagmap(args.map, instance=args.instance)
            maps = [(m.instance or m.device, m)]
            if args.instance is None:
                print(f"note: browse paths use {{instance}} = {m.instance!r} (the file's default); the bridge and"
                      f" the HIL rigs use the line or room name: --instance Line1, or --config daemon.toml")  # fmt: skip
    except TagMapError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return 1
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"potline tags export: cannot create {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    for stem, tm in maps:
        written = []
        if "csv" in formats:
            written.append(tm.export_csv(args.out / f"{stem}.csv"))
        if "json" in formats:
            written.append(tm.export_json(args.out / f"{stem}.json"))
        for p in written:
            ns = f", namespace {tm.namespace}" if tm.namespace else ""
            print(f"wrote {p} ({len(tm)} tags, {{instance}} = {tm.instance}, address base {tm.address_base}{ns})")
    return 0
