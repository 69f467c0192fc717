"""Plants shared by the twin tests."""

from __future__ import annotations

from twin.config import PlantConfig


def unequal_lines(seed: int) -> PlantConfig:
    """Three lines of 24/24/12 cells (the reference plant's 264/264/132 in small)."""
    data = PlantConfig.single_room(24, seed=seed).model_dump()
    line = data["lines"][0]
    data["lines"] = [
        dict(line, name="Line1"),
        dict(line, name="Line2", rooms=[{"name": "Potroom2", "cells": 24}]),
        dict(line, name="Line3", rooms=[{"name": "Potroom3", "cells": 12}]),
    ]
    return PlantConfig.model_validate(data)
