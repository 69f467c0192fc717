"""Plant layouts and mirror snapshots shared by the OPC UA tests."""

from __future__ import annotations

import numpy as np

from twin.layout import PlantLayout


def make_layout(cells_per_room: tuple[int, ...] = (5, 7), plant: str = "Alro", first_number: int = 101) -> PlantLayout:
    """Rooms of different sizes, floor numbers not starting at 1, two lines."""
    rooms = np.repeat(np.arange(len(cells_per_room)), cells_per_room)
    numbers = np.concatenate([np.arange(first_number, first_number + n) for n in cells_per_room])
    n = len(rooms)
    return PlantLayout(
        plant=plant,
        line_names=("Line1", "Line2"),
        room_names=tuple(f"Room{r + 1}" for r in range(len(cells_per_room))),
        cell_line=(rooms % 2).astype(np.int64),
        cell_room=rooms.astype(np.int64),
        cell_number=numbers.astype(np.int64),
        shot_mass_kg=np.full(n, 1.5),
        nominal_current_ka=np.array([120.0, 120.0]),
    )


def make_snapshot(layout: PlantLayout, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = layout.n_cells
    return {
        "CellVoltage": rng.uniform(4.0, 4.6, n),
        "PseudoResistance": rng.uniform(18.0, 22.0, n),
        "AluminaEstimate": rng.uniform(2.0, 4.0, n),
        "AcdEstimate": rng.uniform(4.0, 5.0, n),
        "Superheat": rng.uniform(5.0, 12.0, n),
        "TimeToAnodeEffect": np.where(rng.random(n) < 0.3, np.inf, rng.uniform(60, 3600, n)),
        "AnodeEffect": rng.random(n) < 0.3,
        "LineCurrent": rng.uniform(118.0, 122.0, layout.n_lines),
        "LineVoltage": rng.uniform(500.0, 600.0, layout.n_lines),
    }
