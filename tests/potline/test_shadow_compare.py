"""Shadow comparison (potline/shadow_compare.py), the pure part: scripted PLC behaviour
against scripted would-be commands, expectations worked out by hand from the script."""

from __future__ import annotations

import math

import numpy as np
import pytest

from potctl.plant import Commands, Measurements
from potline.shadow_compare import ShadowComparator, ShadowTolerances, journal_entries
from twin.layout import PlantLayout

N = 4
DT = 10.0  # scan period [s]


def _layout() -> PlantLayout:
    return PlantLayout(plant="T", line_names=("Line1",), room_names=("Potroom1",),
                       cell_line=np.zeros(N, dtype=np.int64), cell_room=np.zeros(N, dtype=np.int64),
                       cell_number=np.arange(101, 101 + N, dtype=np.int64), shot_mass_kg=np.full(N, 1.8),
                       nominal_current_ka=np.array([120.0]))  # fmt: skip


class Script:
    """A PLC's counters and a controller's would-be commands, advanced scan by scan."""

    def __init__(self) -> None:
        self.t = 0.0
        self.feed = np.array([100.0, 200.0, 0.0, 0.0])
        self.beam = np.zeros(N)
        self.volts = np.full(N, 4.2)
        self.plc_sp = 120.0
        self.ok = np.ones(N, dtype=bool)

    def scan(self) -> Measurements:
        z = np.zeros(N, dtype=bool)
        return Measurements(t_s=self.t, line_current_ka=np.array([self.plc_sp]), line_voltage_v=np.array([600.0]),
                            line_setpoint_ka=np.array([self.plc_sp]), rectifier_remote=np.array([False]),
                            rectifier_tripped=np.array([False]), tap_position=np.array([5]),
                            cell_voltage_v=self.volts.copy(), feeder_ack=self.feed.copy(),
                            beam_ack_mm=self.beam.copy(), tapping=z, anode_change=z, cut_out=z,
                            cell_ok=self.ok.copy(), line_ok=np.array([True]))  # fmt: skip


def _cmds(shots: dict[int, int] | None = None, moves: dict[int, float] | None = None, sp: float = math.nan) -> Commands:
    c = Commands.idle(N, 1)
    for k, v in (shots or {}).items():
        c.feed_shots[k] = v
    for k, v in (moves or {}).items():
        c.beam_move_mm[k] = v
    c.line_setpoint_ka[0] = sp
    return c


def test_feeds_beams_aes_and_amperage_compared_over_a_period() -> None:
    cmp = ShadowComparator(_layout(), period_s=600.0)
    s = Script()
    out = []
    for i in range(61):  # t = 0 .. 600 s
        s.t = i * DT
        shots: dict[int, int] = {}
        moves: dict[int, float] = {}
        if i > 0 and i % 6 == 0:  # every 60 s (10 times): one shot each side on cell 101 ...
            shots[0] = 1
            s.feed[0] += 1
            shots[1] = 1  # ... cell 102: the controller would feed, the PLC feeds only twice
            if i in (6, 12):
                s.feed[1] += 1
        if i == 30:
            moves[2] = 5.0  # cell 103: the controller would raise the beam 5 mm, the PLC never moves it
        # cell 101: AE 100..160 s; the controller would quench at 110 s, the PLC feeds 5 shots at 140 s
        # cell 104: AE 300..330 s; the PLC lowers the beam 10 mm at 310 s, the controller does nothing
        s.volts[:] = 4.2
        if 100.0 <= s.t < 160.0:
            s.volts[0] = 30.0
        if 300.0 <= s.t < 330.0:
            s.volts[3] = 25.0
        if s.t == 110.0:
            shots[0] = shots.get(0, 0) + 5
        if s.t == 140.0:
            s.feed[0] += 5
        if s.t == 310.0:
            s.beam[3] -= 10.0
        # the controller would ask 118 kA in the second half; the PLC holds 120 kA throughout
        sp = 118.0 if s.t >= 300.0 else math.nan
        summary = cmp.step(_cmds(shots, moves, sp), s.scan())
        if summary is not None:
            out.append(summary)
    assert len(out) == 1
    sm = out[0]
    assert (sm.t0_s, sm.t1_s, sm.cycles) == (0.0, 600.0, 61)
    # feeds: 101 both 15 shots (10 regular + 5 quench); 102 controller 10 vs PLC 2
    assert sm.ctl_shots.tolist() == [15, 10, 0, 0]
    assert sm.plc_shots.tolist() == [15, 2, 0, 0]
    assert sm.feed_agrees().tolist() == [True, False, True, True]
    # beams: 103 +5 vs 0; 104 0 vs -10 (handled an AE the controller ignored)
    assert sm.ctl_beam_mm.tolist() == [0, 0, 5.0, 0]
    assert sm.plc_beam_mm.tolist() == [0, 0, 0, -10.0]
    assert sm.beam_agrees().tolist() == [True, True, False, False]
    # AEs: 101 handled by both (the controller's quench at 110 s; the PLC's regular shot at
    # 120 s falls inside the AE, before its 5-shot dose at 140 s); 104 by the PLC only
    aes = {ae.cell: ae for ae in sm.aes}
    assert set(aes) == {101, 104}
    assert (aes[101].controller_first_s, aes[101].plc_first_s, aes[101].end_s) == (110.0, 120.0, 160.0)
    # shots from the start to 60 s after the end: 5 + the regular ones at 120 and 180 s, each side
    assert (aes[101].controller_shots, aes[101].plc_shots) == (7, 7)
    assert aes[101].agrees(sm.tolerances) and not aes[104].agrees(sm.tolerances)
    assert not aes[104].controller_acted and aes[104].plc_first_s == 310.0
    # amperage: |118 - 120| = 2 kA over the 31 scans from 300 s to 600 s, of 61
    assert sm.sp_mean_abs_ka[0] == pytest.approx(2.0 * 31 / 61)
    assert sm.sp_max_abs_ka[0] == pytest.approx(2.0)
    assert sm.setpoint_agrees().tolist() == [False]
    # agreement: feeds 3/4, beams 2/4, AEs 1/2, lines 0/1 -> 6/11
    assert sm.counts() == {"feed": (3, 4), "beam": (2, 4), "ae": (1, 2), "amperage": (0, 1)}
    assert sm.agreement() == pytest.approx(6 / 11)

    entries = journal_entries(sm)
    kinds = [k for k, _f in entries]
    assert kinds == ["shadow_summary"] + ["shadow_disagreement"] * 5
    head = entries[0][1]
    assert head["data"]["disagreements"] == 5 and "agreement 55 %" in head["detail"]
    texts = [f["detail"] for _k, f in entries[1:]]
    assert "cell 102: controller would feed 10 shot(s), PLC fed 2" in texts
    assert "cell 103: controller would move the beam +5 mm, PLC +0 mm" in texts
    assert "cell 104: AE at 300 s handled by the PLC only (after 10 s; the controller would not have acted)" in texts
    assert any(t.startswith("Line1: controller would hold") for t in texts)
    assert {f.get("cell") for _k, f in entries[1:]} == {102, 103, 104, None}


def test_restart_gap_bad_data_and_tolerances() -> None:
    cmp = ShadowComparator(_layout(), period_s=100.0, tolerances=ShadowTolerances(feed_shots=0.0, feed_rel=0.0))
    s = Script()
    for i in range(5):
        s.t = i * DT
        cmp.step(_cmds(), s.scan())
    # the PLC restarts: its counters go back to 0 (not -100 shots); then it feeds 1
    s.feed[:] = 0.0
    s.t = 50.0
    cmp.step(_cmds(), s.scan())
    s.feed[0] = 1.0
    s.t = 60.0
    cmp.step(_cmds({0: 1}), s.scan())
    # cell 104's data is bad for the rest: not judged on what it would do there
    s.ok[3] = False
    for t in (70.0, 80.0, 90.0):
        s.t = t
        cmp.step(_cmds({3: 4}), s.scan())
    s.t = 100.0
    sm = cmp.step(_cmds(), s.scan())
    assert sm is not None
    assert sm.plc_shots.tolist() == [1.0, 0.0, 0.0, 0.0] and sm.ctl_shots.tolist() == [1, 0, 0, 0]
    assert sm.feed_agrees().all()
    # a gap longer than max_gap_s (a mode change, a stall): a new period, nothing compared across it
    s.t = 500.0
    cmp.step(_cmds({1: 3}), s.scan())
    s.t = 510.0
    cmp.step(_cmds(), s.scan())
    flushed = cmp.flush()
    assert flushed is not None and flushed.t0_s == 500.0 and flushed.ctl_shots.tolist() == [0, 3, 0, 0]
    assert cmp.flush() is None
    with pytest.raises(ValueError, match="period_s"):
        ShadowComparator(_layout(), period_s=0.0)
    with pytest.raises(ValueError, match="beam_mm"):
        ShadowTolerances(beam_mm=-1.0)
