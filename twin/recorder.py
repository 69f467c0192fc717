"""Time series of a few cells and of every line, sampled while a plant runs."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from twin.potline import Potline


@dataclass
class Recorder:
    """Samples ``cells`` of ``potline`` (indices) and all lines every ``every_s`` seconds.

    ``series`` maps a name to a list of arrays; ``arrays()`` stacks them as
    ``[n_samples, n_cells]`` (cell quantities) or ``[n_samples, n_lines]``.
    """

    potline: Potline
    cells: np.ndarray
    every_s: float = 60.0
    series: dict[str, list[np.ndarray]] = field(default_factory=dict)
    _next_t: float = 0.0

    CELL_KEYS = ("cell_voltage_v",)
    TRUTH_KEYS = ("alumina_wt_pct", "bath_temp_c", "superheat_k", "acd_cm", "ledge_cm")
    LINE_KEYS = ("line_current_ka", "line_voltage_v")

    def sample(self) -> None:
        """Record one sample if at least ``every_s`` passed since the last one."""
        pl = self.potline
        if pl.t_s + 1e-9 < self._next_t:
            return
        self._next_t = pl.t_s + self.every_s
        m, tr = pl.measurements(), pl.truth()
        self.series.setdefault("t_h", []).append(np.array(pl.t_s / 3600.0))
        for key in self.CELL_KEYS:
            self.series.setdefault(key, []).append(m[key][self.cells])
        for key in self.TRUTH_KEYS:
            self.series.setdefault(key, []).append(tr[key][self.cells])
        for key in self.LINE_KEYS:
            self.series.setdefault(key, []).append(np.asarray(m[key]))

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.stack(v) for k, v in self.series.items()}
