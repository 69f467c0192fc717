"""Configuration of the headless daemon (``potline run --config plant.toml``).

One TOML file, validated with pydantic (unknown keys refused). It names the plant
(a plant config file or an inline ``[plant]`` table), the PLCs with their endpoints,
the tag maps per device type, the safety-layer settings, the OPC UA mirror with its
security, the journal, the metrics listener, the start mode and the scan period.
Relative paths are resolved against the config file's directory (``[tagmaps]``,
``plant_config``, ``state_dir``) or ``daemon.state_dir`` (journal, mode file,
certificates)::

    [daemon]
    plant_config = "plant_reference.toml"   # or an inline [plant] table
    mode = "observe"                         # observe | shadow | control
    scan_period_s = 1.0
    state_dir = "/var/lib/potline-twin"

    [[plc]]
    name = "rectifier1"
    kind = "rectifier"                       # rectifier | potroom
    line = "Line1"                           # rectifier: its series line
    protocol = "modbus"                      # modbus | opcua
    host = "10.1.2.3"
    port = 502

    [[plc]]
    name = "potroom1"
    kind = "potroom"
    room = "Potroom1"                        # potroom: its room
    protocol = "opcua"
    host = "10.1.2.4"
    port = 4840

    [tagmaps]                                # default: config/tagmaps/<kind>.toml
    potroom = "tagmaps/potroom.toml"         # the cell block is resized to each room

    [safety]
    line_current_ramp_ka_per_s = 0.1

    [opcua]                                  # the mirror server
    port = 4841
    [opcua.security]
    allow_no_security = false
    [opcua.security.users.op]
    role = "operator"
    password_hash = "scrypt$..."

    [journal]
    path = "journal.db"
    [metrics]
    port = 9108

``load_daemon_config(path)`` checks everything a start needs without touching the
network: the daemon file, the plant config, every tag map, the controller section,
cross-references (each operating room has one potroom PLC, each line one rectifier
PLC, no endpoint or port used twice) and collects *every*
problem into one ``DaemonConfigError`` (file, key, what was expected, what was found) --
the config core's ``ConfigError``, worded as for every other config file.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from twin.config import CONFIG_DIR
from twin.configcore import TOP_LEVEL, ConfigError, ConfigIssue, StrictModel, load_toml, validation_issues

__all__ = [
    "DaemonConfig",
    "DaemonConfigError",
    "DaemonSection",
    "Issue",
    "JournalSection",
    "LoadedConfig",
    "MetricsSection",
    "MirrorSection",
    "PlcSection",
    "SafetySection",
    "load_daemon_config",
    "parse_daemon_config",
]

MODES = ("observe", "shadow", "control")
DEFAULT_TAGMAPS = {"rectifier": CONFIG_DIR / "tagmaps" / "rectifier.toml",
                   "potroom": CONFIG_DIR / "tagmaps" / "potroom.toml"}  # fmt: skip


class DaemonSection(StrictModel):
    """``[daemon]``: what to run and how."""

    name: str | None = Field(None, description="instance name for logs/metrics (default: the plant name)")
    plant_config: Path | None = Field(None, description="plant TOML (relative to this file); or a [plant] table")
    mode: Literal["observe", "shadow", "control"] = Field("observe", description="mode at start")
    scan_period_s: float = Field(1.0, gt=0.0, le=60.0, description="control cycle period [plant s]")
    clock_speed: float = Field(1.0, gt=0.0, le=1000.0, description="plant seconds per wall second (HIL only)")
    hil: bool = Field(False, description="talking to a HIL rig (allows clock_speed != 1 and a shared epoch)")
    clock_epoch_monotonic: float | None = Field(
        None, description="HIL: plant time = clock_speed x (CLOCK_MONOTONIC - this), the rig's epoch"
    )
    state_dir: Path = Field(Path("state"), description="journal, mode file, certificates (relative to this file)")
    mode_file: Path | None = Field(
        Path("mode"), description="file whose content (observe|shadow|control) sets the mode; None = off"
    )
    mode_file_poll_s: float = Field(1.0, gt=0.0, le=60.0, description="mode file poll period [wall s]")
    signal_modes: bool = Field(True, description="SIGUSR1 -> shadow (from potctl: shadow), SIGUSR2 -> observe")
    resume_mode: bool = Field(
        False, description="start in the last journalled mode instead of `mode` (never 'control' after a crash)"
    )
    handback_timeout_s: float = Field(
        30.0, ge=0.0, le=600.0, description="on stop: wait this long [wall s] for the PLCs to report local"
    )
    stall_s: float = Field(10.0, gt=0.0, le=600.0, description="/healthz fails when no cycle for this long [wall s]")


class PlcSection(StrictModel):
    """``[[plc]]``: one PLC endpoint (its tag map comes from ``[tagmaps]`` by kind)."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_\-]*$", description="label in logs, metrics, journal")
    kind: Literal["rectifier", "potroom"]
    line: str | None = Field(None, description="rectifier: the series line it feeds")
    room: str | None = Field(None, description="potroom: the room it serves")
    protocol: Literal["modbus", "opcua"] = "modbus"
    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(ge=1, le=65535)
    path: str = Field("/plc/", description="OPC UA endpoint path")
    namespace: str | None = Field(None, description="OPC UA namespace URI of the tags (default: the server's last)")

    @model_validator(mode="after")
    def _where(self) -> PlcSection:
        if self.kind == "rectifier" and not self.line:
            raise ValueError('a rectifier PLC needs line = "<line name>"')
        if self.kind == "potroom" and not self.room:
            raise ValueError('a potroom PLC needs room = "<room name>"')
        return self

    @property
    def where(self) -> str:
        return str(self.line if self.kind == "rectifier" else self.room)

    @property
    def device(self) -> str:
        """The bridge's device name (``rectifier:Line1``, ``potroom:Potroom2``)."""
        return f"{self.kind}:{self.where}"


class TagmapSection(StrictModel):
    """``[tagmaps]``: tag map files per device type (relative to this file)."""

    rectifier: Path | None = Field(None, description="default: config/tagmaps/rectifier.toml")
    potroom: Path | None = Field(None, description="default: config/tagmaps/potroom.toml (cells resized per room)")


class SafetySection(StrictModel):
    """``[safety]``: the bridge's safety-layer settings (plant seconds unless noted)."""

    line_current_ramp_ka_per_s: float = Field(0.1, gt=0.0, le=10.0, description="setpoint ramp limit")
    setpoint_max_interval_s: float = Field(10.0, gt=0.0, le=600.0, description="longest time credited to a ramp step")
    line_current_min_ka: float | None = Field(None, ge=0.0, description="tighter than the tag map")
    line_current_max_ka: float | None = Field(None, gt=0.0, description="tighter than the tag map")
    stale_after_s: float = Field(10.0, gt=0.0, le=600.0, description="no action on data older than this")
    plc_heartbeat_timeout_s: float = Field(10.0, gt=0.0, le=600.0, description="PLC counter stale after this")
    ack_timeout_s: float = Field(30.0, gt=0.0, le=3600.0, description="command acknowledgement timeout")
    verify_commands: bool = Field(False, description="read back command fields (the ack verifies them anyway)")
    modbus_timeout_s: float = Field(0.5, gt=0.0, le=30.0, description="per request [wall s]")
    opcua_timeout_s: float = Field(2.0, gt=0.0, le=60.0, description="per request [wall s]")
    control_needs_all_links: bool = Field(True, description="refuse 'control' while any PLC link is down")
    frozen_voltage_after_s: float | None = Field(
        120.0,
        gt=0.0,
        le=86400.0,
        description="a cell voltage unchanged this long while carrying current is a frozen transmitter "
        "(not acted on, sensor_frozen alarm); null: not checked",
    )

    @model_validator(mode="after")
    def _bounds(self) -> SafetySection:
        lo, hi = self.line_current_min_ka, self.line_current_max_ka
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"line_current_min_ka={lo} exceeds line_current_max_ka={hi}")
        return self


class MirrorSection(StrictModel):
    """``[opcua]``: the mirror server (the twin's estimates, SetMode)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(4841, ge=0, le=65535)
    path: str = "/potline-twin/"
    scalar_period_s: float | None = Field(10.0, ge=0.0, description="per-cell scalar refresh [plant s]")
    security: dict[str, Any] | None = Field(
        None, description="OpcUaSecurityConfig table; None = loopback lab: NoSecurity, anonymous read-only"
    )


class JournalSection(StrictModel):
    path: Path = Field(Path("journal.db"), description="SQLite file (relative to state_dir)")
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    rotate_mb: float | None = Field(
        None,
        gt=0.0,
        le=1_000_000.0,
        description="once the journal file passes this [MB] it is archived beside it (journal-<first id>-<last id>-"
        "<UTC time>.db, read-only) and a fresh file continues the ids; None: one file",
    )
    max_mb: float | None = Field(
        None,
        gt=0.0,
        le=1_000_000.0,
        description="cap on the journal file [MB] so it cannot fill a disk the OS shares; reaching it is handled "
        "like a full disk (entries kept in memory, commands stopped, /readyz not ready); None: the disk is the limit",
    )


class MetricsSection(StrictModel):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9108, ge=0, le=65535)


class LoggingSection(StrictModel):
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class DaemonConfig(StrictModel):
    """The whole daemon file (see the module docstring)."""

    daemon: DaemonSection = DaemonSection()
    plant: dict[str, Any] | None = Field(None, description="inline plant config (instead of daemon.plant_config)")
    control: dict[str, Any] | None = Field(None, description="controller overrides (else the plant's [control])")
    plc: list[PlcSection] = Field(min_length=1, description="the PLCs")
    tagmaps: TagmapSection = TagmapSection()
    safety: SafetySection = SafetySection()
    opcua: MirrorSection = MirrorSection()
    journal: JournalSection = JournalSection()
    metrics: MetricsSection = MetricsSection()
    logging: LoggingSection = LoggingSection()

    @model_validator(mode="after")
    def _plant_source(self) -> DaemonConfig:
        if (self.daemon.plant_config is None) == (self.plant is None):
            raise ValueError("give exactly one of daemon.plant_config (a file) or a [plant] table")
        if (self.daemon.clock_speed != 1.0 or self.daemon.clock_epoch_monotonic is not None) and not self.daemon.hil:
            raise ValueError("daemon.clock_speed / clock_epoch_monotonic are for HIL rigs only: set daemon.hil = true")
        return self


# ---------------------------------------------------------------------- errors


#: one configuration problem: file, key, message (the config core's ``ConfigIssue``)
Issue = ConfigIssue
#: the daemon config (or a file it names) is invalid; ``issues`` lists every problem
DaemonConfigError = ConfigError


# ---------------------------------------------------------------------- loaded result


@dataclass(slots=True)
class LoadedConfig:
    """A validated daemon config with everything it refers to loaded.

    Attributes:
        source: the daemon TOML file.
        config: the validated file.
        plant: the plant config (``twin.config.PlantConfig``).
        control: the controller config (``potctl.config.ControlConfig``).
        tagmaps: PLC name -> its ``TagMap`` (potroom maps resized to their room).
        tagmap_paths: device kind -> tag map file.
        layout: the plant layout (operating cells).
        state_dir, journal_path, mode_file: resolved paths.
        security: the mirror's ``OpcUaSecurityConfig`` (None when the mirror is off).
    """

    source: Path
    config: DaemonConfig
    plant: Any
    control: Any
    tagmaps: dict[str, Any]
    tagmap_paths: dict[str, Path]
    layout: Any
    state_dir: Path
    journal_path: Path
    mode_file: Path | None
    security: Any

    @property
    def name(self) -> str:
        return self.config.daemon.name or self.layout.plant


# ---------------------------------------------------------------------- loading


def load_daemon_config(path: str | Path) -> LoadedConfig:
    """Read and validate a daemon config file and everything it refers to.

    Raises:
        DaemonConfigError: with every problem found (file, key, expected/got).
    """
    p = Path(path)
    return parse_daemon_config(load_toml(p), source=p)


def parse_daemon_config(data: dict[str, Any], source: str | Path = "<daemon config>") -> LoadedConfig:
    """Validate an already-parsed daemon config (see ``load_daemon_config``)."""
    from plc_bridge.tagmap import load_tagmap
    from potctl.config import ControlConfig, control_config_from_dict
    from twin.config import PlantConfig, load_plant_config
    from twin.configcore import validate_config

    src = Path(source)
    file = str(src)
    base = src.resolve().parent if src.name else Path.cwd()
    issues: list[Issue] = []
    try:
        cfg = DaemonConfig.model_validate(data)
    except ValidationError as exc:
        issues += validation_issues(exc, file, DaemonConfig, data)
        # keep checking what can be checked: the plant file and the tag maps of valid PLC entries
        cfg = None

    # ---- plant
    plant = None
    plant_file = file
    raw_daemon = _table(data, "daemon")
    plant_ref = cfg.daemon.plant_config if cfg is not None else raw_daemon.get("plant_config")
    inline = cfg.plant if cfg is not None else data.get("plant")
    try:
        if plant_ref is not None and isinstance(plant_ref, (str, Path)):
            pp = _resolve(base, Path(plant_ref))
            plant_file = str(pp)
            if not pp.is_file():
                issues.append(Issue(file, "daemon.plant_config", f"file not found: {pp}"))
            else:
                plant = load_plant_config(pp)
        elif isinstance(inline, dict):
            plant = validate_config(PlantConfig, inline, file, prefix="plant")
    except ConfigError as exc:
        issues += exc.issues

    # ---- controller
    control = None
    ctrl_data = cfg.control if cfg is not None else data.get("control")
    ctrl_file = file
    if ctrl_data is None and plant is not None:
        ctrl_data, ctrl_file = dict(plant.control), plant_file
    try:
        control = control_config_from_dict(ctrl_data or {}, ctrl_file) if isinstance(ctrl_data or {}, dict) else None
    except ConfigError as exc:
        issues += exc.issues
    if control is None and not any(i.key.startswith("control") for i in issues):
        control = ControlConfig()

    # ---- layout
    layout = None
    if plant is not None:
        layout = layout_of(plant)

    # ---- tag maps and cross references
    tagmaps: dict[str, Any] = {}
    raw_tm = _table(data, "tagmaps")
    tm_paths: dict[str, Path] = {}
    for kind in ("rectifier", "potroom"):
        ref = getattr(cfg.tagmaps, kind) if cfg is not None else raw_tm.get(kind)
        tm_paths[kind] = _resolve(base, Path(ref)) if isinstance(ref, (str, Path)) else DEFAULT_TAGMAPS[kind]
    plcs = list(enumerate(cfg.plc)) if cfg is not None else []
    if cfg is None:
        # validate the PLC entries that are valid on their own, to report tag map problems too
        for i, item in enumerate(data.get("plc", []) if isinstance(data.get("plc"), list) else []):
            with contextlib.suppress(ValidationError, TypeError):
                plcs.append((i, PlcSection.model_validate(item)))
    checked: dict[str, Any] = {}
    for kind in sorted({pc.kind for _, pc in plcs}):
        path = tm_paths[kind]
        if not path.is_file():
            issues.append(Issue(file, f"tagmaps.{kind}", f"file not found: {path}"))
            continue
        try:
            tm = load_tagmap(path)
        except ConfigError as exc:
            issues += exc.issues
            continue
        if tm.device != kind:
            issues.append(
                Issue(file, f"tagmaps.{kind}", f"expected a {kind} tag map, {path} is for device {tm.device!r}")
            )
            continue
        if kind == "potroom" and tm.cells is None:
            issues.append(Issue(str(path), "cells", "expected a [cells] block in a potroom tag map"))
            continue
        checked[kind] = tm
    if layout is not None:
        from plc_bridge.plant import potroom_tagmap, rectifier_tagmap

        for _, pc in plcs:
            if pc.kind not in checked:
                continue
            try:
                if pc.kind == "rectifier":
                    tagmaps[pc.name] = rectifier_tagmap(pc.where, tm_paths["rectifier"])
                elif pc.room in layout.room_names:
                    n_cells = int((layout.cell_room == list(layout.room_names).index(pc.room)).sum())
                    tagmaps[pc.name] = potroom_tagmap(pc.where, n_cells, tm_paths["potroom"])
            except ConfigError as exc:
                issues += exc.issues
            except ValueError as exc:
                issues.append(Issue(str(tm_paths[pc.kind]), f"{pc.kind} map for {pc.where}", str(exc)))

    if cfg is not None:
        names = [pc.name for pc in cfg.plc]
        for n in sorted({n for n in names if names.count(n) > 1}):
            issues.append(Issue(file, "plc", f"PLC names must be unique, {n!r} repeated"))
        endpoints: dict[tuple[str, int], str] = {}
        for i, pc in enumerate(cfg.plc):
            ep = (pc.host, pc.port)
            if ep in endpoints:
                issues.append(Issue(file, f"plc[{i}:{pc.name}].port",
                                    f"{pc.host}:{pc.port} already used by PLC {endpoints[ep]!r}"))  # fmt: skip
            endpoints[ep] = pc.name
        own = []
        if cfg.opcua.enabled and cfg.opcua.port:
            own.append(("opcua.port", cfg.opcua.host, cfg.opcua.port))
        if cfg.metrics.enabled and cfg.metrics.port:
            own.append(("metrics.port", cfg.metrics.host, cfg.metrics.port))
        if len(own) == 2 and own[0][2] == own[1][2]:
            issues.append(Issue(file, "metrics.port", f"expected a port other than opcua.port ({own[0][2]})"))
        for k, h, prt in own:
            for (ph, pp_), nm in endpoints.items():
                if prt == pp_ and (h == ph or "0.0.0.0" in (h, ph)):
                    issues.append(Issue(file, k, f"port {prt} is PLC {nm!r}'s endpoint"))
        if layout is not None:
            issues += _cross_check(file, cfg, layout, tagmaps)

    # ---- mirror security
    security = None
    state_dir = _resolve(base, cfg.daemon.state_dir) if cfg is not None else base / "state"
    if cfg is not None and cfg.opcua.enabled:
        from plc_bridge.opcua_security import OpcUaSecurityConfig

        sec = dict(cfg.opcua.security) if cfg.opcua.security is not None else None
        try:
            if sec is None:
                security = OpcUaSecurityConfig(state_dir=state_dir / "opcua", host=cfg.opcua.host, sign=False,
                                               sign_and_encrypt=False, allow_no_security=True,
                                               anonymous="read_only")  # fmt: skip
            else:
                sec.setdefault("state_dir", str(state_dir / "opcua"))
                sec["state_dir"] = str(_resolve(state_dir, Path(sec["state_dir"])))
                sec.setdefault("host", cfg.opcua.host)
                security = OpcUaSecurityConfig.model_validate(sec)
                security.policy_types()
        except ValidationError as exc:
            issues += validation_issues(exc, file, OpcUaSecurityConfig, sec, prefix="opcua.security")
        except ValueError as exc:
            issues.append(Issue(file, "opcua.security", str(exc)))

    if issues or cfg is None:
        raise DaemonConfigError(issues or [Issue(file, TOP_LEVEL, "invalid")])
    mode_file = None
    if cfg.daemon.mode_file is not None:
        mode_file = _resolve(state_dir, cfg.daemon.mode_file)
    return LoadedConfig(
        source=src,
        config=cfg,
        plant=plant,
        control=control,
        tagmaps=tagmaps,
        tagmap_paths=tm_paths,
        layout=layout,
        state_dir=state_dir,
        journal_path=_resolve(state_dir, cfg.journal.path),
        mode_file=mode_file,
        security=security,
    )


def _cross_check(file: str, cfg: DaemonConfig, layout: Any, tagmaps: dict[str, Any]) -> list[Issue]:
    issues: list[Issue] = []
    rooms = list(layout.room_names)
    lines = list(layout.line_names)
    by_room: dict[str, list[str]] = {}
    by_line: dict[str, list[str]] = {}
    for i, pc in enumerate(cfg.plc):
        key = f"plc[{i}:{pc.name}]"
        if pc.kind == "potroom":
            if pc.room not in rooms:
                issues.append(Issue(file, f"{key}.room",
                                    f"expected an operating room of the plant ({', '.join(rooms)}), got {pc.room!r}"))  # fmt: skip
                continue
            by_room.setdefault(str(pc.room), []).append(pc.name)
        else:
            if pc.line not in lines:
                issues.append(Issue(file, f"{key}.line",
                                    f"expected a line of the plant ({', '.join(lines)}), got {pc.line!r}"))  # fmt: skip
                continue
            by_line.setdefault(str(pc.line), []).append(pc.name)
    for r in rooms:
        got = by_room.get(r, [])
        if len(got) != 1:
            issues.append(Issue(file, "plc", f"expected exactly one potroom PLC for room {r!r}, got {len(got)}"
                                + (f" ({', '.join(got)})" if got else "")))  # fmt: skip
    for ln in lines:
        got = by_line.get(ln, [])
        if len(got) != 1:
            issues.append(Issue(file, "plc", f"expected exactly one rectifier PLC for line {ln!r}, got {len(got)}"
                                + (f" ({', '.join(got)})" if got else "")))  # fmt: skip
    return issues


def _table(data: dict[str, Any], key: str) -> dict[str, Any]:
    """``data[key]`` when it is a table, else an empty one (checking goes on past a bad file)."""
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _resolve(base: Path, p: Path) -> Path:
    p = Path(p).expanduser()
    return p if p.is_absolute() else (base / p)


def layout_of(plant: Any) -> Any:
    """``PlantLayout`` of a plant config (operating rooms only), without building the model."""
    from twin.potline import plant_layout

    return plant_layout(plant)
