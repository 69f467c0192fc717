"""``potline check-config --config plant.toml``: validate a daemon config and list every error.

Checks the daemon file and everything it names (plant config, tag maps and the roles
each must give, controller section, OPC UA security), without touching the network.
The summary lists, per PLC, the capability losses of the roles its map does not give
and the setpoint bounds the plant's rectifier limits leave. Certificate and trust files
are read (``security_file_problems``): a missing or empty trust directory, an unreadable,
malformed or expired certificate, a key that is not the certificate's, each named with
its file and key. Exit status 0 when valid,
1 with one line per problem (``file: key: what was expected, what was found``) on
stderr, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


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
    if loaded.refining is not None:  # [refining]: scrap-refining pots instead of a potline
        from potline.refining_runtime import report_check

        return report_check(args.config, loaded, args.json)
    problems, warnings = security_file_problems(loaded)
    if problems:
        if args.json:
            print(json.dumps({"valid": False, "errors": [{"file": str(args.config), "key": k, "message": m}
                                                         for k, m in problems]}, indent=1))  # fmt: skip
        else:
            print(f"{args.config}: INVALID, {len(problems)} error(s):", file=sys.stderr)
            for key, msg in problems:
                print(f"  {args.config}: {key}: {msg}", file=sys.stderr)
        return 1
    summary = describe(loaded)
    summary["warnings"] = [f"{k}: {m}" for k, m in warnings]
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
            if p.get("setpoint_bounds_ka"):
                lo, hi = p["setpoint_bounds_ka"]
                print(f"    line_current_sp bounded to [{lo:g}, {hi:g}] kA ({p['setpoint_bounds_from']})")
            for loss in p["capability_losses"]:
                print(f"    capability loss: {loss}")
        print(f"  journal {summary['journal']}; metrics {summary['metrics']}; mirror {summary['mirror']}")
        print(f"  hmi {summary['hmi']}; history {summary['history']}")
        for w in summary["warnings"]:
            print(f"  warning: {w}")
    return 0


def security_file_problems(loaded: Any) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(errors, warnings) as (key, message) about the certificate and trust files the config
    names, read now: the mirror's ``trusted_client_certs_dir`` (missing, not a directory,
    empty, an unreadable, malformed, expired or not-yet-valid certificate), its own
    certificate and key in the state directory (malformed, a key of another certificate),
    each OPC UA PLC's client ``certificate``/``private_key`` (the same, and a key that does
    not belong to the certificate) and pinned ``server_certificate``. Warning: the lab
    opt-in (``trust_any_client_certificate``); certificate endpoints with neither it nor a trust
    directory are refused when the daemon config is loaded."""
    from plc_bridge.opcua_security import certificate_problems, trust_problems

    errors: list[tuple[str, str]] = []
    warnings: list[tuple[str, str]] = []
    sec = loaded.security
    if sec is not None:
        errors += [(f"opcua.security.{k}", m) for k, m in trust_problems(sec)]
        if (
            (sec.sign or sec.sign_and_encrypt)
            and sec.trusted_client_certs_dir is None
            and sec.trust_any_client_certificate
        ):
            warnings.append(("opcua.security.trust_any_client_certificate",
                             "true: ANY client certificate is accepted (a lab opt-in, not for a plant network)"))  # fmt: skip
    for i, p in enumerate(loaded.config.plc):
        ps = loaded.plc_security.get(p.name)
        if ps is None:
            continue
        where = f"plc[{i}:{p.name}]"
        if ps.certificate is not None:
            for m in certificate_problems(ps.certificate, ps.private_key):
                key = (
                    "private_key" if ps.private_key is not None and m.startswith(str(ps.private_key)) else "certificate"
                )
                errors.append((f"{where}.{key}", m))
        if ps.server_certificate is not None:
            errors += [(f"{where}.server_certificate", m) for m in certificate_problems(ps.server_certificate)]
    return errors, warnings


def describe(loaded: Any) -> dict[str, Any]:
    """A short JSON-able summary of a loaded config: per PLC its map, the roles it does not
    give (capability losses, from ``plc_bridge.roles``) and the setpoint bounds the plant's
    rectifier limits leave."""
    from plc_bridge.plant import rectifier_limits
    from plc_bridge.roles import check_roles

    cfg = loaded.config
    lay = loaded.layout
    limits = rectifier_limits(loaded.plant) if loaded.plant is not None else {}
    plcs = []
    for p in cfg.plc:
        tm = loaded.tagmaps[p.name]
        rep = check_roles(tm, p.kind)
        item: dict[str, Any] = {
            "name": p.name,
            "kind": p.kind,
            "where": p.where,
            "protocol": p.protocol,
            "host": p.host,
            "port": p.port,
            "tags": len(tm),
            "tagmap": tm.source,
            "capability_losses": rep.loss_lines(),
            "setpoint_bounds_ka": None,
            "setpoint_bounds_from": "",
        }
        if p.kind == "rectifier":
            sp = tm.role_tag("line_current_sp")
            lo, hi = (sp.lo, sp.hi) if sp is not None else (None, None)
            why = f"tag map {lo:g}..{hi:g}" if sp is not None else ""
            if p.where in limits and lo is not None and hi is not None:
                plo, phi = limits[p.where]
                lo, hi = max(lo, plo), min(hi, phi)
                why += f", plant rectifier limits {plo:g}..{phi:g}"
            s = cfg.safety
            if lo is not None and hi is not None:
                if s.line_current_min_ka is not None:
                    lo = max(lo, s.line_current_min_ka)
                if s.line_current_max_ka is not None:
                    hi = min(hi, s.line_current_max_ka)
                if s.line_current_min_ka is not None or s.line_current_max_ka is not None:
                    why += ", [safety]"
                item["setpoint_bounds_ka"] = [lo, hi]
                item["setpoint_bounds_from"] = why
        plcs.append(item)
    return {
        "plant": lay.plant,
        "cells": lay.n_cells,
        "rooms": lay.n_rooms,
        "lines": lay.n_lines,
        "mode": cfg.daemon.mode,
        "scan_period_s": cfg.daemon.scan_period_s,
        "plcs": plcs,
        "journal": str(loaded.journal_path)
        + (f" (keyed chain: {loaded.journal_key_file})" if loaded.journal_key_file is not None else ""),
        "metrics": f"http://{cfg.metrics.host}:{cfg.metrics.port}" if cfg.metrics.enabled else "off",
        "mirror": f"opc.tcp://{cfg.opcua.host}:{cfg.opcua.port}{cfg.opcua.path}" if cfg.opcua.enabled else "off",
        "hmi": f"http://{loaded.hmi.host}:{loaded.hmi.port}" if loaded.hmi is not None else "off",
        "history": _history(loaded),
    }


def _history(loaded: Any) -> str:
    """Where the history goes and about how large it grows (retention x scan rate)."""
    from potline.history import estimate_bytes, plant_groups

    if loaded.history_path is None:
        return "off"
    cfg = loaded.config
    mb = estimate_bytes(plant_groups(loaded.layout), cfg.daemon.scan_period_s, cfg.history) / 1e6
    return f"{loaded.history_path} (about {mb:,.0f} MB at steady state)"
