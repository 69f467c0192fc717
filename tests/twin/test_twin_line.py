"""Benches that behave like a line, the rectifier's over-current report, and the PLC's
resistance control after operations (issue 13).

- docs/domain.md §4: one AE (+25–45 V) on a regulated 264-cell line dips the current by
  ΔU/(N·R + R_bus) ≈ 5 kA open loop, restored within seconds. A bench of a few simulated
  cells sits in such a line (the rest of it an aggregate load on the rectifier), so an AE on
  an 8-cell bench moves the line current no more than on the full line (within 10 %).
- docs/domain.md §4, rectifier PLC tags: the rectifier raises an over-current alarm.
- Issue 13 item 7 and docs/domain.md §2 (voltage increments after tapping and anode change):
  pot control restores the resistance after tapping within minutes; here within 5 minutes
  of the end of the tap, to within the PLC's deadband (± 0.4 µΩ) of its value before.
"""

from __future__ import annotations

import pytest

from twin.config import PlantConfig
from twin.potline import Potline

CALM = {"enabled": False}


def _ae_dip(n_cells: int, line_cells: int | None = 264) -> float:
    """Line-current dip [kA] in the first 30 s of an AE on one cell (all cells' AE film
    voltage the same, so only the line differs)."""
    cfg = PlantConfig.single_room(
        n_cells, seed=11, line_cells=line_cells, disturbances=CALM, spread={"ae_film_voltage": 0.0}
    )
    pl = Potline(cfg, parallel=False)
    pl.set_operations(slice(None), False)
    pl.advance(600)
    k = 3
    pl.set_local_control(k, False)  # no AE kill: the AE lasts
    pl.force_alumina(k, 1.0)
    currents = []
    for _ in range(30):
        pl.advance(1)
        currents.append(pl.measurements()["line_current_ka"][0])
    assert pl.truth()["ae_active"][k]
    return 120.0 - min(currents)


def test_one_ae_on_an_8_cell_bench_moves_the_line_current_as_on_a_264_cell_line() -> None:
    dip_line = _ae_dip(264)
    dip_bench = _ae_dip(8)
    assert 1.0 < dip_line < 6.0  # ≈ 5 kA open loop, the regulator already at work
    assert dip_bench <= 1.1 * dip_line
    assert _ae_dip(8, line_cells=None) > 3.0 * dip_line  # a bare 8-cell bench: far too much


def test_rectifier_reports_over_current() -> None:
    """Cutting four cells out at once drops the line voltage by ≈ 17 V faster than the
    regulator follows: the current overshoots and the rectifier reports it, then clears."""
    data = PlantConfig.single_room(8, seed=2, disturbances=CALM).model_dump()
    data["lines"][0]["rectifier"]["overcurrent_ka"] = 122.0
    pl = Potline(PlantConfig.model_validate(data), parallel=False)
    pl.advance(120)
    assert not pl.measurements()["rectifier_overcurrent"][0]
    for k in range(4):
        pl.cut_out(k)
    seen = False
    for _ in range(20):
        pl.advance(1)
        seen |= bool(pl.measurements()["rectifier_overcurrent"][0])
    assert seen and pl.totals()["overcurrent_s"][0] > 0.0
    pl.advance(120)
    assert not pl.measurements()["rectifier_overcurrent"][0]
    assert pl.measurements()["line_current_ka"][0] == pytest.approx(120.0, rel=0.005)


def _r_uohm(pl: Potline, k: int) -> float:
    """Cell ``k``'s pseudo-resistance without its MHD and measurement noise [µΩ]."""
    b = pl.voltage_breakdown()
    u = sum(b[c][k] for c in b if c != "noise")
    return (u - 1.65) / (pl.measurements()["line_current_ka"][0] * 1e3) * 1e6


@pytest.mark.parametrize("operation", ["tapping", "anode_change"])
def test_plc_restores_resistance_within_minutes_after_an_operation(operation: str) -> None:
    pl = Potline(PlantConfig.single_room(8, seed=4, disturbances=CALM), parallel=False)
    pl.set_operations(slice(None), False)
    pl.advance(3600)
    k = 5
    if operation == "tapping":
        pl.advance(8 * 3600)  # metal to tap: ≈ 0.7 cm of ACD
    r_before = _r_uohm(pl, k)
    if operation == "tapping":
        pl.start_tapping(k)
    else:
        pl.start_anode_change(k)
    while pl.measurements()["tapping"][k] or pl.measurements()["anode_change"][k]:
        pl.advance(1)
    r_end = _r_uohm(pl, k)
    assert r_end - r_before > 0.4  # the operation raised the resistance beyond the deadband
    pl.advance(5 * 60)
    r_after = _r_uohm(pl, k)
    assert abs(r_after - r_before) <= 0.4 + 0.1, (r_before, r_end, r_after)
