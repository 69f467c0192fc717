"""Where the shipped reference configs live (``config/`` in a checkout, package data in a wheel)."""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from pathlib import Path

#: import name of the package that holds the reference configs (the ``config/`` folder)
CONFIG_PACKAGE = "potline_config"


@cache
def config_dir() -> Path:
    """The directory of the shipped configs: plant, tag maps (``tagmaps/``), scenarios
    (``scenarios/``), refining prototypes.

    Resolved through ``importlib.resources``; wheels install as plain files, so the
    traversable is a directory on disk.
    """
    root = files(CONFIG_PACKAGE)
    path = Path(str(root))
    if not (path / "plant_reference.toml").is_file():
        raise FileNotFoundError(f"{CONFIG_PACKAGE}: reference configs not found at {path} (broken install?)")
    return path
