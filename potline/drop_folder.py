"""Drop folders: files an operator or a tool places in ``<state_dir>/<folder>`` (bath
samples in ``inputs``, plans in ``plans``) are moved aside once handled, into
``imported``/``loaded`` or ``rejected``, never over an earlier file of the same name."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["move_into"]


def move_into(f: Path, to: Path) -> Path:
    """Move ``f`` into directory ``to`` (created), never over an existing file: a name
    already taken gets ``.1``, ``.2``, ... before its suffix. Returns the new path."""
    to.mkdir(parents=True, exist_ok=True)
    dest = to / f.name
    n = 1
    while dest.exists():
        dest = to / f"{f.stem}.{n}{f.suffix}"
        n += 1
    os.replace(f, dest)
    return dest
