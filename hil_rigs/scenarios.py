"""HIL scenarios: TOML files in ``config/scenarios/`` validated with pydantic.

A scenario says what plant the rig simulates, how fast, over which protocols, what
happens on the plant floor and on the network (``[[events]]``, ``[[faults]]``, an
``[ae_storm]`` generator), what the operator asks of the controller (``[[requests]]``,
``[controller]`` power schedule), and what a passing run must show (``[expect]``).
Times are plant seconds from the start of the run. Layout::

    [scenario]
    name = "ae_storm"
    description = "..."
    duration_s = 3600          # plant seconds
    speed = 50                 # plant seconds per wall second

    [plant]                    # one line of `rooms` x `cells` (or `config` = a plant TOML)
    cells = 32
    rooms = 1

    [protocols]
    rectifier = "modbus"       # modbus | opcua
    potroom = "opcua"

    [rig]
    watchdog_s = 20.0          # PLC heartbeat timeout [plant s]

    [controller]
    scan_s = 2.0
    [controller.control]       # overrides of potctl.config.ControlConfig
    detection = { confirm_samples = 2 }

    [ae_storm]                 # induce an AE on a random cell every `every_s`
    start_s = 120
    end_s = 1500
    every_s = 60

    [[events]]
    at_s = 600
    action = "ae"              # ae | force_alumina | cut_out | cut_in | trip_rectifier |
    cells = [3]                # reset_rectifier | local | remote | start_tapping | start_anode_change

    [[faults]]                 # see hil_rigs.faults
    at_s = 900
    kind = "link_drop"
    target = "all"
    duration_s = 120

    [[requests]]               # operator requests to the controller
    at_s = 300
    request = "cut_out"        # cut_out | cut_in | restart | target
    cell = 5

    [expect]
    all_aes_quenched = true
    max_ae_duration_s = 180

``load_scenario(name_or_path, **overrides)`` takes a file path or a name under
``config/scenarios``; overrides are dotted keys (``{"scenario.duration_s": 600}``) used by
the CI versions of the scenarios. Errors name the file, the key, what was expected and
what was found (``ConfigError`` from the config core ``twin.configcore``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from hil_rigs.faults import Fault
from twin.config import CONFIG_DIR, PlantConfig, load_plant_config
from twin.configcore import FILE_KEY, ConfigError, ConfigIssue, StrictModel, load_toml, validate_config

__all__ = [
    "SCENARIO_DIR",
    "OperatorRequest",
    "Scenario",
    "ScenarioEvent",
    "list_scenarios",
    "load_scenario",
]

SCENARIO_DIR = CONFIG_DIR / "scenarios"


class ScenarioInfo(StrictModel):
    name: str = Field(min_length=1)
    description: str = ""
    duration_s: float = Field(3600.0, gt=0.0, le=30 * 86400.0, description="plant seconds")
    speed: float = Field(50.0, gt=0.0, le=1000.0, description="plant seconds per wall second")
    seed: int = Field(1, ge=0)


class PlantSpec(StrictModel):
    """The simulated plant: ``rooms`` potrooms of ``cells`` on one line, or a plant TOML."""

    cells: int = Field(132, ge=2, le=400)
    rooms: int = Field(1, ge=1, le=12)
    current_ka: float = Field(120.0, gt=0.0, le=700.0)
    config: str | None = Field(None, description="plant TOML (relative to config/) instead of cells/rooms")
    operations: bool = Field(False, description="scheduled tapping and anode changes")
    dt_s: float = Field(1.0, gt=0.0, le=10.0, description="twin sub-step [plant s]")
    local_control: dict[str, Any] = Field(default_factory=dict)
    parallel: bool = False

    def build(self, seed: int) -> PlantConfig:
        """The ``PlantConfig`` this spec describes."""
        if self.config is not None:
            p = Path(self.config)
            cfg = load_plant_config(p if p.is_absolute() else CONFIG_DIR / p)
            data = cfg.model_dump()
            data["dt_s"] = self.dt_s
            lc = dict(data.get("local_control", {}))
            lc.update(self.local_control)
            lc["operations"] = self.operations
            data["local_control"] = lc
            return PlantConfig.model_validate(data)
        n = self.cells * self.rooms
        lc = {"operations": self.operations, **self.local_control}
        cfg = PlantConfig.single_room(n, current_ka=self.current_ka, seed=seed, local_control=lc, dt_s=self.dt_s)
        if self.rooms == 1:
            return cfg
        data = cfg.model_dump()
        data["lines"][0]["rooms"] = [{"name": f"Potroom{r + 1}", "cells": self.cells} for r in range(self.rooms)]
        return PlantConfig.model_validate(data)


class Protocols(StrictModel):
    rectifier: Literal["modbus", "opcua"] = "modbus"
    potroom: Literal["modbus", "opcua"] = "opcua"


class RigSpec(StrictModel):
    """PLC behaviour and rig timing."""

    watchdog_s: float = Field(20.0, gt=0.0, le=3600.0, description="heartbeat timeout [plant s]")
    watchdog_min_wall_s: float = Field(
        0.75, ge=0.0, le=60.0, description="the timeout never falls below this many wall seconds"
    )
    tick_wall_s: float = Field(0.02, gt=0.0, le=1.0, description="PLC scan period [wall s]")
    record_every_s: float = Field(10.0, gt=0.0, le=3600.0, description="trend sampling [plant s]")
    ae_quench_local: bool = Field(True, description="the potroom PLC kills AEs itself in local control")


class ControllerSpec(StrictModel):
    """What the controller side runs with (the rig ignores it)."""

    scan_s: float = Field(2.0, gt=0.0, le=60.0, description="controller scan [plant s]")
    control: dict[str, Any] = Field(default_factory=dict, description="ControlConfig overrides")
    power_schedule_mw: list[tuple[float, float | None]] = Field(
        default_factory=list, description="(start [plant s], MW or None) for line 0"
    )


class AeStorm(StrictModel):
    """Induce an AE on a random cell every ``every_s`` between ``start_s`` and ``end_s``."""

    start_s: float = Field(60.0, ge=0.0)
    end_s: float = Field(1800.0, gt=0.0)
    every_s: float = Field(60.0, gt=0.0)
    below_critical_wt_pct: float = Field(0.05, ge=0.0, le=1.0, description="alumina set this far below critical")
    burst: int = Field(1, ge=1, le=50, description="cells per induction")


class ScenarioEvent(StrictModel):
    """Something that happens on the plant floor (carried out by the rig)."""

    at_s: float = Field(ge=0.0)
    action: Literal[
        "ae", "force_alumina", "cut_out", "cut_in", "trip_rectifier", "reset_rectifier", "local", "remote",
        "start_tapping", "start_anode_change",
    ]  # fmt: skip
    cells: list[int] = Field(default_factory=list)
    line: int = Field(0, ge=0)
    target: str = "potroom"
    wt_pct: float | None = Field(None, gt=0.0, le=10.0)
    below_critical_wt_pct: float = Field(0.05, ge=0.0, le=1.0)
    wait_current_below_ka: float | None = Field(
        None, gt=0.0, description="cut_out/cut_in: the crew waits until the line current is below this"
    )
    timeout_s: float = Field(3600.0, gt=0.0, description="... for at most this long")

    @model_validator(mode="after")
    def _cells(self) -> ScenarioEvent:
        if (
            self.action in ("ae", "force_alumina", "cut_out", "cut_in", "start_tapping", "start_anode_change")
            and not self.cells
        ):
            raise ValueError(f"action {self.action!r} needs cells = [...]")
        if self.action == "force_alumina" and self.wt_pct is None:
            raise ValueError("force_alumina needs wt_pct")
        return self


class OperatorRequest(StrictModel):
    """Something the operator asks of the controller (carried out by the controller side)."""

    at_s: float = Field(ge=0.0)
    request: Literal["cut_out", "cut_in", "restart", "target"]
    cell: int = Field(0, ge=0)
    line: int = Field(0, ge=0)
    ka: float | None = Field(None, gt=0.0)


class Expectations(StrictModel):
    """What a passing run shows (checked by the rig's asserts and the demo report)."""

    all_aes_detected: bool = False
    all_aes_quenched: bool = False
    max_ae_duration_s: float = Field(240.0, gt=0.0)
    min_aes: int = Field(0, ge=0)
    amperage_band_ka: float | None = Field(None, gt=0.0, description="|I - active setpoint| p99 within")
    power_band_pct: float | None = Field(None, gt=0.0, description="|P - schedule| after settling within")
    fallback_to_local: bool = False
    bumpless_resume: bool = False
    max_resume_step_ka: float = Field(0.5, gt=0.0)
    no_exceptions: bool = True


class Scenario(StrictModel):
    """A validated scenario (see module docstring)."""

    scenario: ScenarioInfo
    plant: PlantSpec = PlantSpec()
    protocols: Protocols = Protocols()
    rig: RigSpec = RigSpec()
    controller: ControllerSpec = ControllerSpec()
    ae_storm: AeStorm | None = None
    events: list[ScenarioEvent] = Field(default_factory=list)
    faults: list[Fault] = Field(default_factory=list)
    requests: list[OperatorRequest] = Field(default_factory=list)
    expect: Expectations = Expectations()
    source: str = ""

    @property
    def name(self) -> str:
        return self.scenario.name

    @property
    def duration_s(self) -> float:
        return self.scenario.duration_s

    @property
    def speed(self) -> float:
        return self.scenario.speed

    def plant_config(self) -> PlantConfig:
        return self.plant.build(self.scenario.seed)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (round-trips through ``Scenario.model_validate``), e.g. to hand to a rig process."""
        return self.model_dump(mode="json")


def list_scenarios() -> list[str]:
    """Names of the scenarios shipped in ``config/scenarios``."""
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))


def _resolve(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        return p
    cand = SCENARIO_DIR / f"{name_or_path}.toml"
    if not cand.exists():
        known = ", ".join(list_scenarios())
        raise ConfigError(
            [ConfigIssue(str(cand), FILE_KEY, f"expected a scenario name ({known}), got {name_or_path!r}")]
        )
    return cand


def _apply_override(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    d = data
    for part in parts[:-1]:
        nxt = d.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            d[part] = nxt
        d = nxt
    d[parts[-1]] = value


def scenario_from_dict(data: dict[str, Any], source: str = "<scenario>") -> Scenario:
    """Validate scenario data; errors become ``ConfigError`` naming ``source`` and the keys."""
    data = dict(data)
    data.setdefault("source", source)
    return validate_config(Scenario, data, source)


def load_scenario(name_or_path: str | Path | Scenario, **overrides: Any) -> Scenario:
    """Load a scenario by name (``config/scenarios/<name>.toml``) or path, with dotted overrides.

    Overrides use ``__`` or ``.`` in keys: ``load_scenario("ae_storm", scenario__duration_s=600)``
    or ``load_scenario("ae_storm", **{"plant.cells": 16})``. Lists (``faults``, ``events``)
    are replaced whole.
    """
    if isinstance(name_or_path, Scenario):
        data = name_or_path.model_dump(mode="json")
        source = name_or_path.source or name_or_path.name
    else:
        path = _resolve(name_or_path)
        data = load_toml(path)
        source = str(path)
    data = copy.deepcopy(data)
    for key, value in overrides.items():
        _apply_override(data, key.replace("__", "."), value)
    data["source"] = source
    return scenario_from_dict(data, source)
