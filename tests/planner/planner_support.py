"""Shared helpers of the planner tests: the reference plant with heat exchangers and the
twin factory the planner is handed."""

from __future__ import annotations

from typing import Any

from twin.config import PlantConfig, load_plant_config
from twin.potline import Potline
from twin.resources import config_dir


def make_twin(cfg: PlantConfig, parallel: bool) -> Any:
    """The twin the planner runs its rollouts on (serial kernel on the small benches)."""
    return Potline(cfg, parallel=parallel)


def hx_plant() -> PlantConfig:
    """The shipped reference plant with 80 kW shell heat exchangers on every cell."""
    return load_plant_config(config_dir() / "plant_reference_hx.toml")
