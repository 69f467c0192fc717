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
    [opcua.security]                         # user names only over SignAndEncrypt
    allow_no_security = false
    [opcua.security.login]                   # back-off / lockout (LoginPolicy; defaults shown)
    backoff_after = 5
    lockout_after = 20
    [opcua.security.users.op]
    role = "operator"
    password_hash = "scrypt$..."

    [journal]
    path = "journal.db"
    [metrics]
    port = 9108
    [hmi]                                    # the web HMI (no table: none); users from [opcua.security]
    port = 8080
    [history]                                # <state_dir>/history.db; retention per resolution
    raw_days = 3.0
    [alarms]                                 # ISA-18.2 flood and shelving settings
    flood_count = 10

``load_daemon_config(path)`` checks everything a start needs without touching the
network: the daemon file, the plant config, every tag map, the controller section,
cross-references (each operating room has one potroom PLC, each line one rectifier
PLC, no endpoint or port used twice) and collects *every*
problem into one ``DaemonConfigError`` (file, key, what was expected, what was found) --
the config core's ``ConfigError``, worded as for every other config file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from potline.alarms import AlarmConfig
from potline.history import HistoryConfig
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
    "RefiningSection",
    "SafetySection",
    "load_daemon_config",
    "parse_daemon_config",
]

MODES = ("observe", "shadow", "control")
#: the HMI's port when ``[hmi]`` does not say (``potline.hmi.HmiConfig``)
HMI_DEFAULT_PORT = 8080
DEFAULT_TAGMAPS = {"rectifier": CONFIG_DIR / "tagmaps" / "rectifier.toml",
                   "potroom": CONFIG_DIR / "tagmaps" / "potroom.toml",
                   "refining_pot": CONFIG_DIR / "tagmaps" / "refining_pot.toml"}  # fmt: skip
#: the device kinds of a ``[[plc]]`` (``refining_pot``: only with a ``[refining]`` section)
PLC_KINDS = tuple(DEFAULT_TAGMAPS)


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
    kind: Literal["rectifier", "potroom", "refining_pot"]
    line: str | None = Field(None, description="rectifier: the series line it feeds")
    room: str | None = Field(None, description="potroom: the room it serves")
    pot: str | None = Field(None, description="refining_pot: the pot's name (the tag map's {instance})")
    protocol: Literal["modbus", "opcua"] = "modbus"
    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(ge=1, le=65535)
    path: str = Field("/plc/", description="OPC UA endpoint path")
    namespace: str | None = Field(None, description="OPC UA namespace URI of the tags (default: the server's last)")
    # ---- OPC UA security of the bridge's client to this PLC (plc_bridge.opcua_client.PlcSecurity);
    # none of these keys: no message security, anonymous. Paths relative to this file.
    security_mode: Literal["None", "Sign", "SignAndEncrypt"] | None = Field(
        None, description="OPC UA message security (default SignAndEncrypt once any security key is set)"
    )
    security_policy: Literal["Basic256Sha256"] | None = Field(None, description="OPC UA security policy")
    certificate: Path | None = Field(None, description="the client's certificate (DER/PEM) from the plant's PKI")
    private_key: Path | None = Field(None, description="its private key (PEM), with certificate")
    certificate_dir: Path | None = Field(
        None, description="or: where a self-signed client certificate is generated once (the PLC must trust it)"
    )
    server_certificate: Path | None = Field(None, description="the PLC server's certificate to pin (DER/PEM)")
    username: str | None = Field(None, min_length=1, description="user token (None: anonymous)")
    password_file: Path | None = Field(None, description="file whose first line is the password (preferred)")
    password: str | None = Field(None, description="the password in the config (prefer password_file)")
    application_uri: str | None = Field(None, min_length=1, description="the client's ApplicationUri")

    @model_validator(mode="after")
    def _where(self) -> PlcSection:
        if self.kind == "rectifier" and not self.line:
            raise ValueError('a rectifier PLC needs line = "<line name>"')
        if self.kind == "potroom" and not self.room:
            raise ValueError('a potroom PLC needs room = "<room name>"')
        if self.kind == "refining_pot" and not self.pot:
            raise ValueError('a refining_pot PLC needs pot = "<pot name>"')
        return self

    def security_keys(self) -> dict[str, Any]:
        """The ``PLC_SECURITY_KEYS`` this section sets (empty: no security)."""
        from plc_bridge.opcua_client import PLC_SECURITY_KEYS

        return {k: getattr(self, k) for k in PLC_SECURITY_KEYS if getattr(self, k, None) is not None}

    @property
    def where(self) -> str:
        return str({"rectifier": self.line, "potroom": self.room}.get(self.kind, self.pot))

    @property
    def device(self) -> str:
        """The bridge's device name (``rectifier:Line1``, ``potroom:Potroom2``)."""
        return f"{self.kind}:{self.where}"


class TagmapSection(StrictModel):
    """``[tagmaps]``: tag map files per device type (relative to this file)."""

    rectifier: Path | None = Field(None, description="default: config/tagmaps/rectifier.toml")
    potroom: Path | None = Field(None, description="default: config/tagmaps/potroom.toml (cells resized per room)")
    refining_pot: Path | None = Field(None, description="default: config/tagmaps/refining_pot.toml")


class RefiningSection(StrictModel):
    """``[refining]``: the daemon drives scrap-refining pots (``[[plc]]`` of kind ``refining_pot``)
    instead of a potline (``potline.refining_runtime``). The control cycle is the pot
    config's ``[operation] control_period_s``; the write bounds its ``[safety]``."""

    config: Path = Field(description="the pot's refining config TOML (relative to this file), e.g. a calibrated one")
    candidate: str = Field(
        "nominal", min_length=1, description="the controller: a preset of refining.controller or module:attr"
    )
    heartbeat_timeout_s: float | None = Field(
        None, gt=0.0, description="the PLC's heartbeat_in unchanged this long -> writes refused [plant s] "
        "(default: 3 control periods)"
    )  # fmt: skip
    verdict: Path | None = Field(
        None, description="the report.json of `potline shadow` that judged this candidate on this pot config "
        "(relative to this file): the daemon starts only when it says READY; None: not checked"
    )  # fmt: skip


class SafetySection(StrictModel):
    """``[safety]``: the bridge's safety-layer settings (plant seconds unless noted)."""

    line_current_ramp_ka_per_s: float = Field(0.1, gt=0.0, le=10.0, description="setpoint ramp limit")
    setpoint_max_interval_s: float = Field(10.0, gt=0.0, le=600.0, description="longest time credited to a ramp step")
    line_current_min_ka: float | None = Field(None, ge=0.0, description="tighter than the tag map")
    line_current_max_ka: float | None = Field(None, gt=0.0, description="tighter than the tag map")
    setpoint_deadband_ka: float = Field(
        0.01,
        ge=0.0,
        le=5.0,
        description="a setpoint within this of what the PLC holds is not rewritten (nor journalled)",
    )
    stale_after_s: float = Field(10.0, gt=0.0, le=600.0, description="no action on data older than this")
    plc_heartbeat_timeout_s: float = Field(10.0, gt=0.0, le=600.0, description="PLC counter stale after this")
    plc_watchdog_s: float | None = Field(
        None,
        gt=0.0,
        le=3600.0,
        description="the PLCs' own heartbeat watchdog [plant s] (their commissioning value): a PLC that has not "
        "seen heartbeat_out move for this long hands itself to local control. stale_after_s and "
        "plc_heartbeat_timeout_s may not exceed it; None: assumed the longer of 30 s and 10 scan periods (on a "
        "HIL rig at least 2 wall seconds)",
    )
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
    hmac_key_file: Path | None = Field(
        None,
        description="key of a keyed hash chain (HMAC-SHA-256; relative to this file): 64 hex digits or at least 16 "
        "raw bytes, readable by the service user only (mode 0400/0440/0600); without the key nobody can rewrite the "
        "chain consistently. None: an unkeyed SHA-256 chain",
    )
    max_held: int = Field(
        10_000,
        ge=1,
        le=10_000_000,
        description="entries held in memory while the journal cannot take them (disk full, max_mb); more are "
        "spilled to <journal>.held and folded in when it takes entries again (or at the next start)",
    )


class MetricsSection(StrictModel):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9108, ge=0, le=65535)


class LoggingSection(StrictModel):
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class HistorySection(HistoryConfig):
    """``[history]``: the time-series store behind the HMI's trends and OPC UA HistoryRead
    (``potline.history.HistoryConfig``: retention per resolution) and where it lives."""

    enabled: bool = Field(True, description="historize every scan (cell and line quantities)")
    path: Path = Field(Path("history.db"), description="SQLite file (relative to state_dir)")


class PlanSection(StrictModel):
    """``[plan]``: a plan (``planner.plan``) to execute from the start; more can be dropped into
    ``<state_dir>/plans/`` at run time (``potline.plan_runner``)."""

    file: Path | None = Field(None, description="plan JSON file (relative to this file); refused ones are journalled")


class DaemonConfig(StrictModel):
    """The whole daemon file (see the module docstring)."""

    daemon: DaemonSection = DaemonSection()
    plant: dict[str, Any] | None = Field(None, description="inline plant config (instead of daemon.plant_config)")
    control: dict[str, Any] | None = Field(None, description="controller overrides (else the plant's [control])")
    plc: list[PlcSection] = Field(min_length=1, description="the PLCs")
    refining: RefiningSection | None = Field(None, description="drive refining pots instead of a potline")
    tagmaps: TagmapSection = TagmapSection()
    safety: SafetySection = SafetySection()
    opcua: MirrorSection = MirrorSection()
    journal: JournalSection = JournalSection()
    metrics: MetricsSection = MetricsSection()
    logging: LoggingSection = LoggingSection()
    hmi: dict[str, Any] | None = Field(
        None, description="the web HMI (potline.hmi.HmiConfig table); None: no HMI listener"
    )
    history: HistorySection = HistorySection()
    alarms: AlarmConfig = AlarmConfig()
    plan: PlanSection = PlanSection()

    @model_validator(mode="after")
    def _plant_source(self) -> DaemonConfig:
        refining = [pc.name for pc in self.plc if pc.kind == "refining_pot"]
        if self.refining is not None:
            if self.daemon.plant_config is not None or self.plant is not None or len(refining) != len(self.plc):
                raise ValueError("a [refining] daemon drives refining pots only: expected no daemon.plant_config, "
                                 "no [plant] and only [[plc]] of kind 'refining_pot'")  # fmt: skip
        elif refining:
            raise ValueError(f"[[plc]] of kind 'refining_pot' ({', '.join(refining)}) need a [refining] section")
        elif (self.daemon.plant_config is None) == (self.plant is None):
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
        journal_key_file: the journal's HMAC key file, checked (``journal.hmac_key_file``; None: unkeyed).
        plc_security: PLC name -> the bridge client's ``PlcSecurity`` (None: no security, anonymous).
        hmi: the web HMI's ``HmiConfig`` (None: no HMI).
        history_path: the history file (None: ``history.enabled = false``).
        refining: the refining pots' runtime config (``potline.refining_runtime.LoadedRefining``;
            None: a potline daemon).
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
    journal_key_file: Path | None = None
    plc_security: dict[str, Any] = field(default_factory=dict)
    hmi: Any = None
    history_path: Path | None = None
    refining: Any = None

    @property
    def name(self) -> str:
        if self.refining is not None:
            return self.config.daemon.name or self.refining.name
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
    from potctl.config import ControlConfig, control_config_from_dict, control_data_for_plant
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
        control = None
        if isinstance(ctrl_data or {}, dict):
            ctrl_in = dict(ctrl_data or {})
            if plant is not None and isinstance(ctrl_in.get("amperage", {}), dict):
                # the rectifiers' voltage limits and the cell design (bath, exchangers) are the
                # plant's unless the table sets them
                ctrl_in = control_data_for_plant(ctrl_in, plant)
            control = control_config_from_dict(ctrl_in, ctrl_file)
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
    for kind in PLC_KINDS:
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

    refining = None
    if cfg is not None and cfg.refining is not None and "refining_pot" in checked:
        from potline.refining_config import load_refining

        refining, more = load_refining(file, base, cfg, tm_paths["refining_pot"], data)
        issues += more
        if refining is not None:
            tagmaps.update(refining.tagmaps)

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
        hmi_port = cfg.hmi.get("port", HMI_DEFAULT_PORT) if cfg.hmi is not None else None
        if cfg.hmi is not None and cfg.hmi.get("enabled", True) and isinstance(hmi_port, int) and hmi_port:
            own.append(("hmi.port", str(cfg.hmi.get("host", "127.0.0.1")), hmi_port))
        for i, (k, _h, prt) in enumerate(own):
            for k0, _h0, prt0 in own[:i]:
                if prt == prt0:
                    issues.append(Issue(file, k, f"expected a port other than {k0} ({prt0})"))
        for k, h, prt in own:
            for (ph, pp_), nm in endpoints.items():
                if prt == pp_ and (h == ph or "0.0.0.0" in (h, ph)):
                    issues.append(Issue(file, k, f"port {prt} is PLC {nm!r}'s endpoint"))
        if layout is not None:
            issues += _cross_check(file, cfg, layout, tagmaps)
        issues += _timeout_issues(file, cfg)
        if plant is not None and control is not None:
            origin = _Sources(daemon=file, plant=plant_file, plant_prefix="" if plant_file != file else "plant.",
                              control=str(ctrl_file), control_data=ctrl_data if isinstance(ctrl_data, dict) else {},
                              tagmap_paths=tm_paths)  # fmt: skip
            issues += _bounds_issues(origin, cfg, plant, control, checked)

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
                # the login rule: user names and passwords only over SignAndEncrypt
                issues += [Issue(file, f"opcua.security.{key}", msg) for key, msg in security.login_problems()]
                # no automatic trust: certificate endpoints need a trust directory or the lab opt-in
                if (security.sign or security.sign_and_encrypt) and security.trusted_client_certs_dir is None \
                        and not security.trust_any_client_certificate:  # fmt: skip
                    issues.append(Issue(file, "opcua.security.trusted_client_certs_dir",
                                        "expected a directory of trusted client certificates: without it any client "
                                        "certificate would be accepted (set trust_any_client_certificate = true "
                                        "only in a lab)"))  # fmt: skip
                security.policy_types()
        except ValidationError as exc:
            issues += validation_issues(exc, file, OpcUaSecurityConfig, sec, prefix="opcua.security")
        except ValueError as exc:
            issues.append(Issue(file, "opcua.security", str(exc)))

    # ---- the web HMI (validated here: its module imports aiohttp)
    hmi = None
    if cfg is not None and cfg.hmi is not None:
        from potline.hmi.app import HmiConfig

        try:
            hmi = HmiConfig.model_validate(cfg.hmi)
        except ValidationError as exc:
            issues += validation_issues(exc, file, HmiConfig, cfg.hmi, prefix="hmi")
        else:
            if not hmi.enabled:
                hmi = None

    # ---- the bridge's OPC UA security towards each PLC
    plc_security: dict[str, Any] = {}
    if cfg is not None:
        plc_security, sec_issues = _plc_security(file, base, cfg)
        issues += sec_issues

    # ---- journal key (its error names the file)
    key_file = None
    if cfg is not None and cfg.journal.hmac_key_file is not None:
        from potline.journal import JournalError, load_key

        key_file = _resolve(base, cfg.journal.hmac_key_file)
        try:
            load_key(key_file)
        except JournalError as exc:
            issues.append(Issue(file, "journal.hmac_key_file", str(exc)))

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
        journal_key_file=key_file,
        plc_security=plc_security,
        hmi=hmi,
        history_path=_resolve(state_dir, cfg.history.path) if cfg.history.enabled else None,
        refining=refining,
    )


def _plc_security(file: str, base: Path, cfg: DaemonConfig) -> tuple[dict[str, Any], list[Issue]]:
    """Each PLC's ``PlcSecurity`` (None without security keys) and the problems: keys on a
    Modbus PLC, combinations ``PlcSecurity`` refuses, files that do not exist."""
    from plc_bridge.opcua_client import PlcSecurity

    out: dict[str, Any] = {}
    issues: list[Issue] = []
    for i, pc in enumerate(cfg.plc):
        key = f"plc[{i}:{pc.name}]"
        keys = pc.security_keys()
        out[pc.name] = None
        if not keys:
            continue
        if pc.protocol != "opcua":
            issues.append(Issue(file, f"{key}.{next(iter(keys))}", f"expected no OPC UA security keys on a "
                                f"{pc.protocol} PLC (they configure the OPC UA client), got {', '.join(keys)}"))  # fmt: skip
            continue
        try:
            sec = PlcSecurity.from_mapping(keys, base)
        except ValueError as exc:
            issues.append(Issue(file, key, str(exc)))
            continue
        for name in ("certificate", "private_key", "server_certificate", "password_file"):
            p = getattr(sec, name)
            if p is not None and not p.is_file():
                issues.append(Issue(file, f"{key}.{name}", f"file not found: {p}"))
        out[pc.name] = sec
    return out, issues


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


# ---------------------------------------------------------------------- bounds from the plant

#: the PLCs' heartbeat watchdog assumed when ``safety.plc_watchdog_s`` is not given [plant s]
DEFAULT_PLC_WATCHDOG_S = 30.0
#: ... or this many scan periods when that is longer (a slow controller's PLCs wait longer)
DEFAULT_WATCHDOG_SCANS = 10.0
#: ... and, on a HIL rig, at least this many wall seconds (processes and sockets do not accelerate)
HIL_MIN_WATCHDOG_WALL_S = 2.0
#: a time the daemon waits on PLC data must span at least this many scans (one read per scan)
MIN_SCANS = 2.0


@dataclass(frozen=True, slots=True)
class _Sources:
    """Where each value of a cross-check comes from (to name file and key)."""

    daemon: str  # the daemon file ([safety], [daemon])
    plant: str  # the plant file (or the daemon file with an inline [plant])
    plant_prefix: str  # "" for a plant file, "plant." for an inline [plant]
    control: str  # the file holding the [control] table (daemon file or plant file)
    control_data: dict[str, Any]  # that table as written (to tell set keys from defaults)
    tagmap_paths: dict[str, Path]


@dataclass(frozen=True, slots=True)
class _Limit:
    """A bound a value is checked against, with the words that say where it comes from."""

    value: float
    what: str


def _num(v: float) -> str:
    return f"{v:g}"


def _bounded(issues: list[Issue], file: str, key: str, got: float, unit: str, *, at_most: Sequence[_Limit] = (),
             at_least: Sequence[_Limit] = (), below: Sequence[_Limit] = (), note: str = "") -> None:  # fmt: skip
    """One issue for ``key`` when ``got`` breaks its limits: the tightest broken limit is named,
    the others broken too are listed after it."""
    eps = 1e-9
    u = f" {unit}" if unit else ""
    for word, limits, broken, tightest in (
        ("at most", at_most, lambda lim: got > lim.value + eps, min),
        ("at least", at_least, lambda lim: got < lim.value - eps, max),
        ("less than", below, lambda lim: got >= lim.value - eps, min),
    ):
        bad = [lim for lim in limits if broken(lim)]
        if not bad:
            continue
        first = tightest(bad, key=lambda lim: lim.value)
        more = [lim for lim in bad if lim is not first]
        also = "; also breaks " + "; ".join(f"{_num(lim.value)}{u} ({lim.what})" for lim in more) if more else ""
        issues.append(
            Issue(file, key, f"expected {word} {_num(first.value)}{u} ({first.what}), got {_num(got)}{note}{also}")
        )
        return


def _timeout_issues(file: str, cfg: DaemonConfig) -> list[Issue]:
    """The fail-safe times against the scan period and the PLCs' watchdog (plant seconds).

    Rules: ``stale_after_s``, ``plc_heartbeat_timeout_s`` and ``ack_timeout_s`` span at
    least two scans (data are read once per scan: a shorter time fails a healthy link);
    ``stale_after_s`` and ``plc_heartbeat_timeout_s`` are at most the PLCs' watchdog (the
    daemon stops acting on a silent PLC no later than that PLC gives up on a silent
    daemon and goes local); the watchdog spans at least two scans (the daemon's
    heartbeat moves once per scan).
    """
    issues: list[Issue] = []
    d, s = cfg.daemon, cfg.safety
    scan = d.scan_period_s
    two_scans = _Limit(MIN_SCANS * scan, f"2 x daemon.scan_period_s = 2 x {_num(scan)} s: one read per scan")
    if s.plc_watchdog_s is not None:
        wd = _Limit(s.plc_watchdog_s, "safety.plc_watchdog_s, the PLCs' heartbeat watchdog: a silent PLC must "
                    "be given up no later than it gives up on the daemon and goes local")  # fmt: skip
        _bounded(issues, file, "safety.plc_watchdog_s", s.plc_watchdog_s, "s",
                 at_least=[_Limit(MIN_SCANS * scan, f"2 x daemon.scan_period_s = 2 x {_num(scan)} s: the "
                                  "daemon's heartbeat moves once per scan")])  # fmt: skip
    else:
        w, why = DEFAULT_PLC_WATCHDOG_S, f"{_num(DEFAULT_PLC_WATCHDOG_S)} s"
        if DEFAULT_WATCHDOG_SCANS * scan > w:
            w, why = DEFAULT_WATCHDOG_SCANS * scan, f"{_num(DEFAULT_WATCHDOG_SCANS)} scans of {_num(scan)} s"
        if d.hil and HIL_MIN_WATCHDOG_WALL_S * d.clock_speed > w:
            w = HIL_MIN_WATCHDOG_WALL_S * d.clock_speed
            why = f"{_num(HIL_MIN_WATCHDOG_WALL_S)} wall s on a HIL rig at {_num(d.clock_speed)}x"
        wd = _Limit(w, f"the PLCs' heartbeat watchdog as assumed without safety.plc_watchdog_s ({why}): a silent "
                    "PLC must be given up no later than it gives up on the daemon and goes local")  # fmt: skip
    for key in ("stale_after_s", "plc_heartbeat_timeout_s"):
        _bounded(issues, file, f"safety.{key}", getattr(s, key), "s", at_least=[two_scans], at_most=[wd])
    _bounded(issues, file, "safety.ack_timeout_s", s.ack_timeout_s, "s",
             at_least=[_Limit(MIN_SCANS * scan, f"2 x daemon.scan_period_s = 2 x {_num(scan)} s: an "
                              "acknowledgement is read one scan after the PLC gives it")])  # fmt: skip
    return issues


def _bounds_issues(src: _Sources, cfg: DaemonConfig, plant: Any, control: Any, maps: dict[str, Any]) -> list[Issue]:
    """Every amperage, beam and feed bound and target against the plant and the tag maps.

    Amperage: ``control.amperage`` ``max_ka``, ``target_ka``, ``restart_start_ka``,
    ``cutout_current_ka`` at most every line's ``rectifier.max_ka`` and the rectifier map's
    ``line_current_sp`` max, ``min_ka`` at least every ``rectifier.min_ka``; without a
    ``target_ka`` each line's nominal current (``rectifier.setpoint_ka``) within
    [``min_ka``, ``max_ka``]; ``safety.line_current_max_ka`` at most the rectifier and tag
    limits and at least what the controller regulates to (``min_ka``, the target);
    ``safety.line_current_min_ka`` at most the tag map's max and what the controller asks
    for at its lowest (``min_ka``, ``restart_start_ka``, ``cutout_current_ka``); AE
    detection and feeding ``min_current_ka`` below the nominal current. Beam and feed:
    every single move or dose the controller commands fits one command of the potroom
    map (``beam_move``, ``feed_shots``); the first quench lowering within
    ``max_total_down_mm``; ``resistance.min_move_mm`` at most its ``max_move_mm``.
    """
    issues: list[Issue] = []
    amp = control.amperage
    cdata = src.control_data
    amp_set = cdata.get("amperage") if isinstance(cdata.get("amperage"), dict) else {}

    def ckey(sub: str) -> str:
        return f"control.{sub}"

    def note(section: dict[str, Any] | Any, name: str, sub: str) -> str:
        given = isinstance(section, dict) and name in section
        return "" if given else f" (the default: set {ckey(sub)})"

    # ---- the plant's rectifiers and the rectifier tag map
    rect_max: list[_Limit] = []
    rect_min: list[_Limit] = []
    nominal: list[tuple[str, float, str]] = []
    for i, line in enumerate(plant.lines):
        where = f"{src.plant_prefix}lines[{i}:{line.name}].rectifier"
        r = line.rectifier
        rect_max.append(_Limit(r.max_ka, f"{line.name}'s rectifier limit, {src.plant}: {where}.max_ka"))
        rect_min.append(_Limit(r.min_ka, f"{line.name}'s rectifier minimum, {src.plant}: {where}.min_ka"))
        nominal.append((line.name, r.setpoint_ka, f"{src.plant}: {where}.setpoint_ka"))
    tag_max: list[_Limit] = []
    tag_min: list[_Limit] = []
    rmap = maps.get("rectifier")
    t = rmap.role_tag("line_current_sp") if rmap is not None else None
    if rmap is not None and t is not None:
        k = f"tags[{list(rmap.tags).index(t.name)}:{t.name}]"
        tag_max.append(
            _Limit(t.hi, f"the rectifier tag map's setpoint limit, {src.tagmap_paths['rectifier']}: {k}.max")
        )
        tag_min.append(
            _Limit(t.lo, f"the rectifier tag map's setpoint minimum, {src.tagmap_paths['rectifier']}: {k}.min")
        )
    top = rect_max + tag_max
    f = src.control
    if amp.enabled:
        _bounded(issues, f, ckey("amperage.max_ka"), amp.max_ka, "kA", at_most=top,
                 note=note(amp_set, "max_ka", "amperage.max_ka"))  # fmt: skip
        _bounded(issues, f, ckey("amperage.min_ka"), amp.min_ka, "kA", at_least=rect_min + tag_min,
                 note=note(amp_set, "min_ka", "amperage.min_ka"))  # fmt: skip
        own = [_Limit(amp.max_ka, "control.amperage.max_ka")]
        if amp.target_ka is not None:
            _bounded(issues, f, ckey("amperage.target_ka"), amp.target_ka, "kA", at_most=top + own,
                     at_least=[_Limit(amp.min_ka, "control.amperage.min_ka")])  # fmt: skip
        else:
            for name, ka, where in nominal:
                why = f"{name}'s nominal current, {where}: with target_ka unset the controller regulates to it"
                if ka > amp.max_ka + 1e-9:
                    _bounded(issues, f, ckey("amperage.max_ka"), amp.max_ka, "kA", at_least=[_Limit(ka, why)],
                             note=note(amp_set, "max_ka", "amperage.max_ka"))  # fmt: skip
                elif ka < amp.min_ka - 1e-9:
                    _bounded(issues, f, ckey("amperage.min_ka"), amp.min_ka, "kA", at_most=[_Limit(ka, why)],
                             note=note(amp_set, "min_ka", "amperage.min_ka"))  # fmt: skip
        for name in ("restart_start_ka", "cutout_current_ka"):
            _bounded(issues, f, ckey(f"amperage.{name}"), getattr(amp, name), "kA", at_most=top + own,
                     note=note(amp_set, name, f"amperage.{name}"))  # fmt: skip
    targets = [amp.target_ka] if amp.target_ka is not None else [ka for _, ka, _ in nominal]
    s = cfg.safety
    if s.line_current_max_ka is not None:
        floor = [_Limit(amp.min_ka, "control.amperage.min_ka: the safety layer would hold every setpoint the "
                        "controller regulates to below it")]  # fmt: skip
        if amp.target_ka is not None:
            floor.append(_Limit(amp.target_ka, "control.amperage.target_ka: the line could never carry its target"))
        else:
            floor += [_Limit(ka, f"{name}'s nominal current, {where}: the line could never carry it")
                      for name, ka, where in nominal]  # fmt: skip
        _bounded(issues, src.daemon, "safety.line_current_max_ka", s.line_current_max_ka, "kA", at_most=top,
                 at_least=floor if amp.enabled else [])  # fmt: skip
    if s.line_current_min_ka is not None:
        ceiling = list(top)
        if amp.enabled:
            ceiling += [
                _Limit(amp.min_ka, "control.amperage.min_ka: the safety layer would raise the controller's lowest setpoint"),
                _Limit(amp.restart_start_ka, "control.amperage.restart_start_ka: a tripped line would restart higher"),
                _Limit(amp.cutout_current_ka, "control.amperage.cutout_current_ka: a cell cut-out could not ramp down"),
            ]  # fmt: skip
        _bounded(issues, src.daemon, "safety.line_current_min_ka", s.line_current_min_ka, "kA", at_most=ceiling)
    lowest = min(targets, default=None)
    if lowest is not None:
        for sub in ("detection", "feeding"):
            val = getattr(control, sub).min_current_ka
            sect = cdata.get(sub)
            _bounded(issues, f, ckey(f"{sub}.min_current_ka"), val, "kA",
                     below=[_Limit(lowest, "the line current the controller regulates to: nothing would be "
                                   + ("detected" if sub == "detection" else "fed") + " at it")],
                     note=note(sect, "min_current_ka", f"{sub}.min_current_ka"))  # fmt: skip

    # ---- beam moves and feed doses against the potroom tag map (one command each)
    pmap = maps.get("potroom")
    q, rc, fd = control.quench, control.resistance, control.feeding
    if pmap is not None and pmap.cells is not None:
        path = src.tagmap_paths["potroom"]
        fields = list(pmap.cells.fields)

        def cell_limit(fld: str) -> _Limit | None:
            if fld not in fields:
                return None
            t = pmap[pmap.cell_tags(fld)[0]]
            k = f"cells.tags[{fields.index(fld)}:{fld}]"
            if fld == "beam_move":
                return _Limit(min(t.hi, -t.lo), f"the largest move one command carries, {path}: {k}.max/min")
            return _Limit(t.hi, f"the largest dose one command carries, {path}: {k}.max")

        beam = cell_limit("beam_move")
        if beam is not None:
            for sub, obj, name in (("quench", q, "lower_mm"), ("quench", q, "pump_amplitude_mm"),
                                   ("resistance", rc, "max_move_mm"), ("resistance", rc, "max_move_after_operation_mm")):  # fmt: skip
                _bounded(issues, f, ckey(f"{sub}.{name}"), getattr(obj, name), "mm", at_most=[beam],
                         note=note(cdata.get(sub), name, f"{sub}.{name}"))  # fmt: skip
        dose = cell_limit("feed_shots")
        if dose is not None:
            for sub, obj, name in (("quench", q, "feed_shots"), ("quench", q, "refeed_shots"),
                                   ("feeding", fd, "preventive_shots")):  # fmt: skip
                _bounded(issues, f, ckey(f"{sub}.{name}"), getattr(obj, name), "shots", at_most=[dose],
                         note=note(cdata.get(sub), name, f"{sub}.{name}"))  # fmt: skip
    _bounded(issues, f, ckey("quench.lower_mm"), q.lower_mm, "mm",
             at_most=[_Limit(q.max_total_down_mm, "control.quench.max_total_down_mm: the first lowering would be "
                             "cut short")])  # fmt: skip
    _bounded(issues, f, ckey("resistance.min_move_mm"), rc.min_move_mm, "mm",
             at_most=[_Limit(rc.max_move_mm, "control.resistance.max_move_mm")])  # fmt: skip
    return list(dict.fromkeys(issues))  # one issue per (key, message)


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
