"""The rig's PLC behaviour as pure state machines: watchdog, local/remote, command
acknowledgements, interlocks, setpoint tracking (no sockets, no twin)."""

from __future__ import annotations

import numpy as np
import pytest

from hil_rigs.plc_image import PlcImage
from hil_rigs.plc_logic import PotroomLogic, RectifierLogic, Watchdog
from plc_bridge.plant import potroom_tagmap, rectifier_tagmap

N = 4
NO = np.zeros(N, dtype=bool)


def room(watchdog_s: float = 10.0) -> PotroomLogic:
    return PotroomLogic(PlcImage(potroom_tagmap("Potroom1", N)), watchdog_s)


def rect(watchdog_s: float = 10.0) -> RectifierLogic:
    return RectifierLogic(PlcImage(rectifier_tagmap("Line1")), 120.0, 0.0, 132.0, 6.0, 700.0, watchdog_s)


def beat(logic: PotroomLogic | RectifierLogic, t: float) -> None:
    """The controller's heartbeat: a new counter value at time t."""
    img = logic.image
    img.set("heartbeat_out", (int(img.get("heartbeat_out")) + 1) % 65536, by_plc=False)


def test_watchdog_needs_a_changing_counter_and_times_out() -> None:
    w = Watchdog(10.0)
    assert not w.update(5, 0.0)  # a counter that has not moved yet is no proof of life
    assert w.update(6, 1.0)
    assert w.update(6, 10.9)
    assert not w.update(6, 11.1)
    assert w.trips == 1
    assert w.update(7, 12.0)


def test_potroom_powers_up_local_and_goes_remote_on_heartbeat() -> None:
    r = room()
    res = r.scan(0.0, NO, NO, NO)
    assert not res.remote and r.image.get("remote") is False
    beat(r, 1.0)
    res = r.scan(1.0, NO, NO, NO)
    assert res.remote and res.mode_changed and r.image.get("remote") is True
    # silent controller: local after the timeout
    res = r.scan(11.5, NO, NO, NO)
    assert not res.remote and res.mode_changed


def test_feed_command_executed_once_and_acknowledged() -> None:
    r = room()
    img = r.image
    r.scan(0.0, NO, NO, NO)
    beat(r, 1.0)
    img.set("cell002.feed_shots", 3, by_plc=False)
    img.set("cell002.feed_cmd", 41, by_plc=False)
    res = r.scan(1.0, NO, NO, NO)
    assert res.shots.tolist() == [0, 3, 0, 0]
    assert img.get("cell002.feed_cmd_ack") == 41
    beat(r, 2.0)
    res = r.scan(2.0, NO, NO, NO)  # same counter: nothing again
    assert not res.shots.any()


def test_commands_refused_in_local_and_never_replayed() -> None:
    r = room()
    img = r.image
    r.scan(0.0, NO, NO, NO)  # local: no heartbeat yet
    img.set("cell001.feed_shots", 2, by_plc=False)
    img.set("cell001.feed_cmd", 7, by_plc=False)
    res = r.scan(0.5, NO, NO, NO)
    assert not res.shots.any()
    assert res.refused == [(0, "feed", "local control")]
    assert img.get("cell001.feed_cmd_ack") == 0  # not acknowledged
    beat(r, 1.0)
    res = r.scan(1.0, NO, NO, NO)  # remote now: the stale counter value is not carried out
    assert res.remote and not res.shots.any()


def test_interlocks_cut_out_and_operations() -> None:
    r = room()
    img = r.image
    r.scan(0.0, NO, NO, NO)
    beat(r, 1.0)
    cut = np.array([True, False, False, False])
    tap = np.array([False, True, False, False])
    img.set("cell001.feed_shots", 1, by_plc=False)
    img.set("cell001.feed_cmd", 1, by_plc=False)  # cut-out cell: refused
    img.set("cell002.beam_move", -5.0, by_plc=False)
    img.set("cell002.beam_cmd", 1, by_plc=False)  # beam during tapping: refused
    img.set("cell003.beam_move", 2.5, by_plc=False)
    img.set("cell003.beam_cmd", 1, by_plc=False)  # fine
    res = r.scan(1.0, cut, tap, NO)
    assert not res.shots.any()
    assert res.beam_mm.tolist() == [0.0, 0.0, 2.5, 0.0]
    assert {(k, w) for k, w, _ in res.refused} == {(0, "feed"), (1, "beam")}
    assert img.get("cell003.beam_cmd_ack") == 1 and img.get("cell002.beam_cmd_ack") == 0


def test_potroom_status_bits_and_counters_restart_from_zero() -> None:
    r = room()
    img = r.image
    r.scan(0.0, NO, NO, NO)
    feed = np.array([100, 200, 300, 400])
    beam = np.array([1.0, -2.0, 0.0, 5.5])
    r.publish(np.full(N, 4.3), np.array([False, True, False, False]), NO, NO, np.array([False, False, True, False]),
              feed, beam)  # fmt: skip
    assert img.get("cell002.ae") is True and img.get("cell003.cut_out") is True
    assert img.get("cell001.feed_ack") == 0  # counts from its own start
    r.publish(np.full(N, 4.3), NO, NO, NO, NO, feed + 3, beam + 1.5)
    assert img.cell_field("feed_ack").tolist() == [3, 3, 3, 3]
    assert img.get("cell004.beam_ack") == pytest.approx(1.5)
    r.restart()
    assert img.get("cell004.beam_ack") == 0 and img.get("heartbeat_in") == 0 and not r.remote
    r.scan(5.0, NO, NO, NO)
    r.publish(np.full(N, 4.3), NO, NO, NO, NO, feed + 10, beam + 2)
    assert img.get("cell001.feed_ack") == 0  # restarted counters start again at zero


def test_rectifier_tracks_setpoint_when_returning_to_remote() -> None:
    r = rect()
    img = r.image
    res = r.scan(0.0, 0.0)
    assert not res.remote and res.setpoint_ka == pytest.approx(120.0)
    img.set("line_current_sp", 100.0, by_plc=False)  # written while local: not taken ...
    beat(r, 1.0)
    res = r.scan(1.0, 1.0)
    assert res.remote and res.setpoint_ka == pytest.approx(120.0)
    assert img.get("line_current_sp") == pytest.approx(120.0)  # ... and overwritten by tracking
    img.set("line_current_sp", 118.0, by_plc=False)
    img.set("ramp_rate_sp", 6.0, by_plc=False)  # 0.1 kA/s
    beat(r, 2.0)
    res = r.scan(2.0, 1.0)
    assert res.setpoint_ka == pytest.approx(119.9)  # ramped, not stepped
    for t in range(3, 40):
        beat(r, t)
        res = r.scan(float(t), 1.0)
    assert res.setpoint_ka == pytest.approx(118.0)
    # controller silent -> local, holds; a stale register value must not step the current on return
    res = r.scan(60.0, 1.0)
    assert not res.remote and res.setpoint_ka == pytest.approx(118.0)
    img.set("line_current_sp", 90.0, by_plc=False)
    beat(r, 61.0)
    res = r.scan(61.0, 1.0)
    assert res.remote and res.mode_changed
    assert img.get("line_current_sp") == pytest.approx(118.0)  # setpoint tracking: bumpless
    assert res.setpoint_ka == pytest.approx(118.0)


def test_rectifier_trip_latches_until_reset_and_clamps() -> None:
    r = rect()
    img = r.image
    r.scan(0.0, 0.0)
    beat(r, 1.0)
    r.scan(1.0, 1.0)
    r.trip()
    img.set("line_current_sp", 100.0, by_plc=False)
    beat(r, 1.5)
    res = r.scan(1.5, 0.5)
    assert res.setpoint_ka == pytest.approx(120.0) and any("tripped" in x for x in res.refused)
    img.set("alarm_reset", True, by_plc=False)
    beat(r, 2.0)
    res = r.scan(2.0, 1.0)
    assert res.reset_requested and img.get("alarm_reset") is False  # the PLC clears the coil
    r.clear_trip()
    img.set("line_current_sp", 135.0, by_plc=False)  # beyond the rectifier's own 132 kA
    beat(r, 3.0)
    res = r.scan(3.0, 600.0)
    assert res.setpoint_ka == pytest.approx(132.0) and any("clamped" in x for x in res.refused)
    r.publish(118.0, 590.0, 21, False, 3600.0)
    assert img.get("running") is True and img.get("tripped") is False
    assert img.get("energy_total") == pytest.approx(118.0 * 590.0 / 1000.0)  # MWh over one hour


def test_local_ae_kill_only_in_local_and_restores_the_beam() -> None:
    r = room()
    img = r.image
    r.scan(0.0, NO, NO, NO)  # local (no heartbeat)
    ae = np.array([False, True, False, False])
    r.publish(np.array([4.3, 30.0, 4.3, 4.3]), ae, NO, NO, NO, np.zeros(N), np.zeros(N))
    assert img.get("cell002.ae") is True
    shots, moves = r.local_ae_kill(10.0, NO)
    assert not shots.any()  # seen, confirmed after 2 s
    shots, moves = r.local_ae_kill(12.5, NO)
    assert shots.tolist() == [0, 8, 0, 0] and moves.tolist() == [0.0, -15.0, 0.0, 0.0]
    shots, moves = r.local_ae_kill(40.0, NO)
    assert not shots.any() and moves[1] == 15.0  # pumped back up after 20 s
    shots, moves = r.local_ae_kill(72.5, NO)
    assert shots[1] == 8 and moves[1] == -15.0  # second dose a minute after the first
    r.publish(np.full(N, 4.3), NO, NO, NO, NO, np.zeros(N), np.zeros(N))
    shots, moves = r.local_ae_kill(75.0, NO)
    assert moves[1] == 15.0 and not shots.any()  # AE over: beam restored
    # under remote control the PLC leaves the AE to the controller
    beat(r, 80.0)
    r.scan(80.0, NO, NO, NO)
    r.publish(np.array([4.3, 30.0, 4.3, 4.3]), ae, NO, NO, NO, np.zeros(N), np.zeros(N))
    for t in (81.0, 90.0, 150.0):
        shots, moves = r.local_ae_kill(t, NO)
        assert not shots.any() and not moves.any()
