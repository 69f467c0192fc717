"""Static topology of a plant: lines (series circuits), potrooms and cells."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class PlantLayout:
    """Which cell sits in which potroom and on which series line (rectifier).

    Attributes:
        plant: plant name (ISA-95 site/area).
        line_names: one name per series circuit (rectifier), ``n_lines``.
        room_names: one name per potroom, ``n_rooms``.
        cell_line: [n_cells] index into ``line_names``.
        cell_room: [n_cells] index into ``room_names``.
        cell_number: [n_cells] cell number inside its room (1-based, as on the floor).
        shot_mass_kg: [n_cells] nominal alumina mass of one feeder shot [kg].
        nominal_current_ka: [n_lines] nominal line current [kA].
    """

    plant: str
    line_names: tuple[str, ...]
    room_names: tuple[str, ...]
    cell_line: np.ndarray
    cell_room: np.ndarray
    cell_number: np.ndarray
    shot_mass_kg: np.ndarray
    nominal_current_ka: np.ndarray

    @property
    def n_cells(self) -> int:
        return int(self.cell_line.shape[0])

    @property
    def n_lines(self) -> int:
        return len(self.line_names)

    @property
    def n_rooms(self) -> int:
        return len(self.room_names)

    def cell_name(self, k: int) -> str:
        """Floor name of cell ``k``, e.g. ``Room2/Cell017``."""
        return f"{self.room_names[int(self.cell_room[k])]}/Cell{int(self.cell_number[k]):03d}"

    def room_cells(self, room: int) -> np.ndarray:
        """Indices of the cells of potroom ``room`` in floor order."""
        return np.flatnonzero(self.cell_room == room)
