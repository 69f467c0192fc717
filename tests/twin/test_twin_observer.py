"""The state observer recovers what no sensor measures from current and voltage.

Issue #2: alumina concentration within 0.3 wt % RMS on a simulated cell with
measurement noise. The cells here have their own (hidden) parameter spread and MHD
noise; the observer knows only nominal parameters, the line current, the noisy cell
voltage and the feeder/beam acknowledgements a PLC reports.
"""

from __future__ import annotations

import numpy as np
import pytest

from twin.config import PlantConfig
from twin.observer import AluminaObserver
from twin.potline import Potline


def _track(pl: Potline, ob: AluminaObserver, hours: float, start_error_s: float = 3600.0):
    """Underfeed 70 % for 90 min, overfeed 145 % for 60 min (tracking, docs/domain.md §2) of
    the Faraday demand at CE 0.96 (the twin's cells run at 0.955–0.96); returns per-cell
    (estimate − truth) samples after ``start_error_s``. This feed has no feedback: cells whose
    feeders deliver less than the PLC counts would walk into an AE, so the tests below keep
    the twin's feeder-calibration spread off (``spread.shot_mass``; the observer's
    consumption factor is what a biased feeder calls for)."""
    n = pl.layout.n_cells
    shot = pl.config.local_control.shot_mass_kg
    credit = np.zeros(n)
    feed0 = pl.measurements()["feeder_ack"].astype(float)
    beam0 = pl.measurements()["beam_ack_mm"]
    errors = []
    for _ in range(int(hours * 3600)):
        underfeed = (pl.t_s % 9000.0) < 5400.0
        current_a = pl.measurements()["line_current_ka"][0] * 1e3
        credit += (0.70 if underfeed else 1.45) * 1.690e-7 * current_a
        shots = (credit >= shot).astype(np.int64)
        credit -= shots * shot
        pl.apply(feed_shots=shots)
        pl.advance(1.0)
        m = pl.measurements()
        fed = (m["feeder_ack"] - feed0) * shot
        feed0 = m["feeder_ack"].astype(float)
        beam = m["beam_ack_mm"] - beam0
        beam0 = m["beam_ack_mm"]
        ob.update(
            np.full(n, m["line_current_ka"][0] * 1e3),
            m["cell_voltage_v"],
            fed,
            beam,
            1.0,
            disturbed=m["tapping"] | m["anode_change"],
        )
        if pl.t_s >= start_error_s:
            errors.append(ob.alumina_wt_pct - pl.truth()["alumina_wt_pct"])
    return np.array(errors)


def test_observer_recovers_alumina_within_0_3_wt_pct_rms() -> None:
    cfg = PlantConfig.single_room(8, seed=31, disturbances={"enabled": False}, spread={"shot_mass": 0.0})
    pl = Potline(cfg, parallel=False)
    pl.set_local_control(slice(None), False)
    pl.set_operations(slice(None), False)
    truth0 = pl.truth()["alumina_wt_pct"]
    # start the observer 0.5 wt % off the truth
    ob = AluminaObserver(8, pl.config.cell, alumina_wt_pct=float(truth0.mean()) + 0.5)
    err = _track(pl, ob, hours=12.0)
    rms = float(np.sqrt(np.mean(err**2)))
    assert rms < 0.3, rms
    assert pl.truth()["ae_count"].sum() == 0  # the test feeding itself stayed clear of AEs


def test_observer_resets_on_anode_effect_and_predicts_it() -> None:
    """With the feed stopped the time-to-AE estimate made 20 min in lands near the true onset
    (inventory / Faraday consumption): median relative error over the cells ≤ 25 %, none
    over 50 %. An AE pins the estimate at the critical level, i.e. at the true alumina of
    the cell when its AE started (± 0.2 wt %)."""
    n = 4
    pl = Potline(PlantConfig.single_room(n, seed=37, disturbances={"enabled": False}), parallel=False)
    pl.set_local_control(slice(None), False)
    pl.set_operations(slice(None), False)
    ob = AluminaObserver(n, pl.config.cell, alumina_wt_pct=float(pl.truth()["alumina_wt_pct"].mean()))
    predicted = None
    onset = np.full(n, np.nan)
    c_onset = np.full(n, np.nan)
    first = None
    for _ in range(3 * 3600):
        pl.advance(1.0)
        m = pl.measurements()
        cur = np.full(n, m["line_current_ka"][0] * 1e3)
        ob.update(cur, m["cell_voltage_v"], np.zeros(n), np.zeros(n), 1.0)
        if pl.t_s == 1200.0:
            predicted = pl.t_s + ob.time_to_ae_s(cur, np.zeros(n))
        started = np.isnan(onset) & pl.truth()["ae_active"]
        onset[started] = pl.t_s
        c_onset[started] = pl.truth()["alumina_wt_pct"][started]
        if first is None and started.any():
            first = int(np.flatnonzero(started)[0])
            ae_sample = None
            for _ in range(5):  # the gas film forms within seconds
                pl.advance(1)
                m = pl.measurements()
                ob.update(np.full(n, m["line_current_ka"][0] * 1e3), m["cell_voltage_v"], np.zeros(n), np.zeros(n), 1.0)
                if m["cell_voltage_v"][first] > 8.0:
                    ae_sample = ob.alumina_wt_pct[first]
                    break
            assert ae_sample is not None
            assert ae_sample == pytest.approx(c_onset[first], abs=0.2)
        if not np.isnan(onset).any():
            break
    assert predicted is not None and not np.isnan(onset).any()
    rel = np.abs(predicted - onset) / (onset - 1200.0)
    assert np.median(rel) <= 0.25 and rel.max() <= 0.5, rel
