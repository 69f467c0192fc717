"""``potline check-config --config plant.toml``: validate a daemon config and list every error.

Checks the daemon file and everything it names (plant config, tag maps, controller
section, OPC UA security), without touching the network. Exit status 0 when valid,
1 with one line per problem (``file: key: what was expected, what was found``) on
stderr, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, type=Path, help="daemon TOML file")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def main(args: argparse.Namespace) -> int:
    from potline.daemon_config import DaemonConfigError, load_daemon_config

    try:
        loaded = load_daemon_config(args.config)
    except DaemonConfigError as exc:
        if args.json:
            print(
                json.dumps(
                    {
                        "valid": False,
                        "errors": [{"file": i.file, "key": i.key, "message": i.message} for i in exc.issues],
                    },
                    indent=1,
                )
            )
        else:
            print(f"{args.config}: INVALID, {len(exc.issues)} error(s):", file=sys.stderr)
            for issue in exc.issues:
                print(f"  {issue}", file=sys.stderr)
        return 1
    summary = describe(loaded)
    if args.json:
        print(json.dumps({"valid": True, **summary}, indent=1))
    else:
        print(
            f"{args.config}: ok — plant {summary['plant']} ({summary['cells']} cells, "
            f"{summary['rooms']} rooms, {summary['lines']} lines), {len(summary['plcs'])} PLCs, "
            f"mode {summary['mode']}, scan {summary['scan_period_s']} s"
        )
        for p in summary["plcs"]:
            print(
                f"  {p['name']}: {p['kind']} {p['where']} {p['protocol']}://{p['host']}:{p['port']} "
                f"({p['tags']} tags from {p['tagmap']})"
            )
        print(f"  journal {summary['journal']}; metrics {summary['metrics']}; mirror {summary['mirror']}")
    return 0


def describe(loaded) -> dict:
    """A short JSON-able summary of a loaded config."""
    cfg = loaded.config
    lay = loaded.layout
    return {
        "plant": lay.plant,
        "cells": lay.n_cells,
        "rooms": lay.n_rooms,
        "lines": lay.n_lines,
        "mode": cfg.daemon.mode,
        "scan_period_s": cfg.daemon.scan_period_s,
        "plcs": [
            {
                "name": p.name,
                "kind": p.kind,
                "where": p.where,
                "protocol": p.protocol,
                "host": p.host,
                "port": p.port,
                "tags": len(loaded.tagmaps[p.name]),
                "tagmap": loaded.tagmaps[p.name].source,
            }
            for p in cfg.plc
        ],
        "journal": str(loaded.journal_path),
        "metrics": f"http://{cfg.metrics.host}:{cfg.metrics.port}" if cfg.metrics.enabled else "off",
        "mirror": f"opc.tcp://{cfg.opcua.host}:{cfg.opcua.port}{cfg.opcua.path}" if cfg.opcua.enabled else "off",
    }
