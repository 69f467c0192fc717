"""The ``[refining]`` section of a daemon config, checked and loaded (``potline.refining_runtime`` runs it).

``load_refining`` is called by ``potline.daemon_config.parse_daemon_config`` for a config
with a ``[refining]`` section: it loads the pot config (``refining.config``), resolves the
candidate (a preset of ``refining.controller`` or ``module:attr``), checks each pot's tag
map (``plc_bridge.refining_plant.refining_tagmap``: roles) and refuses keys a refining
daemon would ignore (the potline's tables, the potline bridge's ``[safety]`` bounds, a
scan period: the cycle is the pot config's ``[operation] control_period_s``), each
problem with the file and key. ``describe`` is what ``potline check-config`` shows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twin.configcore import ConfigError, ConfigIssue

if TYPE_CHECKING:
    from plc_bridge.tagmap import TagMap
    from potline.daemon_config import DaemonConfig, LoadedConfig
    from refining.config import RefiningConfig

__all__ = ["POTLINE_ONLY", "SAFETY_USED", "LoadedRefining", "describe", "load_refining"]

#: tables of a potline daemon that a ``[refining]`` daemon does not serve
POTLINE_ONLY = ("control", "opcua", "hmi", "history", "alarms")
#: ``[safety]`` keys a refining daemon uses (the rest bound the potline's bridge)
SAFETY_USED = frozenset({"modbus_timeout_s", "opcua_timeout_s", "control_needs_all_links"})


@dataclass(slots=True)
class LoadedRefining:
    """The ``[refining]`` section with everything it names loaded.

    Attributes:
        name: instance name (logs, metrics): ``refining-<pot>[-<pot>...]``.
        config_path: the pot config file; cfg: it, validated.
        candidate: the candidate's name; factory: ``f(n) -> PotPolicy``.
        period_s: the control cycle, ``[operation] control_period_s`` [plant s].
        heartbeat_timeout_s: PLC counter stale after this [plant s].
        verdict: the shadow verdict the candidate was deployed on ("" when not checked).
        tagmaps: PLC name -> its refining-pot tag map (roles checked).
    """

    name: str
    config_path: Path
    cfg: RefiningConfig
    candidate: str
    factory: Any
    period_s: float
    heartbeat_timeout_s: float
    tagmaps: dict[str, TagMap] = field(default_factory=dict)
    verdict: str = ""


def load_refining(
    file: str, base: Path, cfg: DaemonConfig, tagmap_path: Path, data: Mapping[str, Any]
) -> tuple[LoadedRefining | None, list[ConfigIssue]]:
    """Check a ``[refining]`` daemon config: the pot config, the candidate, each pot's tag map
    (roles), keys that would be ignored (potline-only tables, ``[safety]`` bounds, a scan
    period). Returns the loaded section (None when it cannot run) and every problem."""
    from plc_bridge.refining_plant import refining_tagmap
    from potline.commands.shadow import resolve_candidate
    from refining.config import load_refining_config

    rs = cfg.refining
    assert rs is not None
    issues: list[ConfigIssue] = []
    for key in POTLINE_ONLY:
        if key in data:
            issues.append(ConfigIssue(file, key, f"expected no [{key}] table in a [refining] daemon: it is the "
                                      "potline's (not served for refining pots)"))  # fmt: skip
    safety = data.get("safety")
    for key in sorted(safety or {}) if isinstance(safety, dict) else []:
        if key not in SAFETY_USED:
            issues.append(ConfigIssue(file, f"safety.{key}", "expected no potline bridge bound in a [refining] "
                                      f"daemon: a pot's write bounds are the [safety] of refining.config ({rs.config})"))  # fmt: skip
    path = Path(rs.config).expanduser()
    path = path if path.is_absolute() else base / path
    rcfg: RefiningConfig | None = None
    if not path.is_file():
        issues.append(ConfigIssue(file, "refining.config", f"file not found: {path}"))
    else:
        try:
            rcfg = load_refining_config(path)
        except ConfigError as exc:
            issues += exc.issues
    daemon_data = data.get("daemon")
    if rcfg is not None and isinstance(daemon_data, dict) and "scan_period_s" in daemon_data:
        issues.append(ConfigIssue(file, "daemon.scan_period_s", "expected no scan period in a [refining] daemon: "
                                  f"the cycle is [operation] control_period_s of {path} "
                                  f"({rcfg.operation.control_period_s:g} s)"))  # fmt: skip
    name, factory = "", None
    if rcfg is not None:
        try:
            name, factory = resolve_candidate(rs.candidate, rcfg)
        except ValueError as exc:
            issues.append(ConfigIssue(file, "refining.candidate", str(exc)))
    tagmaps: dict[str, TagMap] = {}
    pots: dict[str, str] = {}
    for i, pc in enumerate(cfg.plc):
        if pc.pot in pots:
            issues.append(ConfigIssue(file, f"plc[{i}:{pc.name}].pot",
                                      f"pot {pc.pot!r} already driven by PLC {pots[pc.pot]!r}"))  # fmt: skip
        pots[str(pc.pot)] = pc.name
        try:
            tagmaps[pc.name] = refining_tagmap(str(pc.pot), tagmap_path)
        except ConfigError as exc:
            issues += exc.issues
    if rcfg is None or factory is None or issues:
        return None, issues
    period = float(rcfg.operation.control_period_s)
    hb = rs.heartbeat_timeout_s if rs.heartbeat_timeout_s is not None else 3.0 * period
    if hb < 2.0 * period:
        issues.append(ConfigIssue(file, "refining.heartbeat_timeout_s", f"expected at least {2 * period:g} s "
                                  f"(2 control periods of {period:g} s: the PLC's counter is read once per cycle), "
                                  f"got {hb:g}"))  # fmt: skip
        return None, issues
    label = "refining-" + "-".join(str(pc.pot) for pc in cfg.plc)
    verdict = ""
    if rs.verdict is not None:
        verdict, problem = _check_verdict(base, rs.verdict, name, path)
        if problem:
            issues.append(ConfigIssue(file, "refining.verdict", problem))
            return None, issues
    return LoadedRefining(label, path, rcfg, name, factory, period, hb, tagmaps, verdict), issues


def _check_verdict(base: Path, ref: Path, candidate: str, config: Path) -> tuple[str, str]:
    """(what the verdict says, the problem) of a ``potline shadow`` report.json: it must judge
    ``candidate`` on a config of ``config``'s file name and say READY."""
    import json

    p = Path(ref).expanduser()
    p = p if p.is_absolute() else base / p
    try:
        body = json.loads(p.read_text(encoding="utf-8"))
        judged, on, v = str(body["candidate"]), str(body["config"]), body["verdict"]
        ready, reasons = bool(v["ready"]), [str(r) for r in v.get("reasons", [])]
    except FileNotFoundError:
        return "", f"file not found: {p}"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return "", f"expected a potline shadow report.json (candidate, config, verdict.ready), {p}: {exc!r}"
    if judged != candidate:
        return "", f"{p} judged candidate {judged!r}, this daemon runs {candidate!r}"
    if on != config.name:
        return "", f"{p} judged the candidate on {on!r}, this daemon runs the pot config {config.name!r}"
    if not ready:
        why = "; ".join(reasons[:3]) or "no reason given"
        return "", f"{p}: candidate {candidate!r} was judged NOT READY ({why}): not deployed"
    return f"READY ({p})", ""


def describe(loaded: LoadedConfig) -> dict[str, Any]:
    """What ``potline check-config`` shows for a ``[refining]`` daemon config."""
    from plc_bridge.roles import check_roles

    r: LoadedRefining = loaded.refining
    sa = r.cfg.safety
    plcs = []
    for pc in loaded.config.plc:
        tm = r.tagmaps[pc.name]
        plcs.append({"name": pc.name, "pot": pc.pot, "endpoint": f"{pc.protocol}://{pc.host}:{pc.port}",
                     "tagmap": tm.source, "tags": len(tm.tags), "losses": check_roles(tm).loss_lines()})  # fmt: skip
    return {
        "name": loaded.name,
        "config": str(r.config_path),
        "pot": r.cfg.pot.name,
        "candidate": r.candidate,
        "verdict": r.verdict or "not checked (no refining.verdict)",
        "period_s": r.period_s,
        "bounds": f"current {sa.current_min_a:g}..{sa.current_max_a:g} A at most {sa.ramp_a_per_h:g} A/h, heater "
        f"{sa.heater_setpoint_min_c:g}..{sa.heater_setpoint_max_c:g} °C, charge <= {sa.charge_max_kg:g} kg, "
        f"tap <= {sa.tap_max_kg:g} kg",
        "mode": loaded.config.daemon.mode,
        "plcs": plcs,
        "journal": str(loaded.journal_path),
    }
