"""ISA-18.2 alarm management: every state transition, shelving, suppression by design,
flood suppression, and the records reaching a real journal file."""

from __future__ import annotations

import numpy as np
import pytest

from potline.alarms import (
    EVENT_ALARMS,
    AlarmActionError,
    AlarmConfig,
    AlarmDef,
    AlarmManager,
    alarm_key,
    design_suppression,
)
from potline.journal import Journal
from tests.plc_bridge.mirror_support import make_layout
from twin.configcore import ConfigError, validate_config

AE = AlarmDef("Room1/Cell101/AE", "ae", "high", "Anode effect Room1/Cell101", area="Room1", cell=101, cell_index=0)
COMMS = AlarmDef("Room1/CommsLost", "comms_lost", "high", "PLC link lost", area="Room1", suppressible=False)


def manager(**cfg: object) -> AlarmManager:
    m = AlarmManager(AlarmConfig.model_validate(cfg))
    m.define(AE, 0.0)
    m.define(COMMS, 0.0)
    return m


def transitions(recs) -> list[tuple[str, str, str]]:
    return [(r.event, r.old_state, r.new_state) for r in recs]


# ---------------------------------------------------------------------------- A-D: condition and acknowledgement


def test_raise_ack_clear_goes_normal_unack_acked_normal() -> None:
    m = manager()
    assert m.get(AE.key).state == "normal"
    assert transitions(m.set_condition(AE.key, True, 10.0, value=31.5)) == [("raised", "normal", "unack")]
    recs = m.acknowledge(AE.key, "alice", 12.0, "seen, quench running")
    assert transitions(recs) == [("acknowledged", "unack", "acked")]
    assert recs[0].user == "alice" and recs[0].reason == "seen, quench running"
    assert transitions(m.set_condition(AE.key, False, 40.0)) == [("cleared", "acked", "normal")]
    a = m.get(AE.key)
    assert (a.acked_by, a.activations, a.value) == ("alice", 1, 31.5)


def test_clear_before_ack_waits_as_returned_to_normal_then_ack_makes_normal() -> None:
    m = manager()
    m.set_condition(AE.key, True, 10.0)
    assert transitions(m.set_condition(AE.key, False, 20.0)) == [("cleared", "unack", "rtn_unack")]
    assert m.get(AE.key).state == "rtn_unack"
    assert transitions(m.acknowledge(AE.key, "bob", 30.0)) == [("acknowledged", "rtn_unack", "normal")]


def test_returned_to_normal_realarms_unacknowledged() -> None:
    m = manager()
    m.set_condition(AE.key, True, 10.0)
    m.set_condition(AE.key, False, 20.0)
    assert transitions(m.set_condition(AE.key, True, 25.0)) == [("raised", "rtn_unack", "unack")]
    assert m.get(AE.key).activations == 2


def test_acknowledged_alarm_raised_again_after_normal_needs_a_new_acknowledgement() -> None:
    m = manager()
    m.set_condition(AE.key, True, 1.0)
    m.acknowledge(AE.key, "alice", 2.0)
    m.set_condition(AE.key, False, 3.0)
    m.set_condition(AE.key, True, 4.0)
    a = m.get(AE.key)
    assert a.state == "unack" and a.acked_by is None


def test_unchanged_condition_is_no_record_but_updates_value() -> None:
    m = manager()
    m.set_condition(AE.key, True, 1.0, value=20.0)
    assert m.set_condition(AE.key, True, 2.0, value=35.0) == []
    assert m.get(AE.key).value == 35.0
    assert m.set_condition(COMMS.key, False, 2.0) == []


@pytest.mark.parametrize("setup", ["normal", "acked"])
def test_nothing_to_acknowledge_is_refused(setup: str) -> None:
    m = manager()
    if setup == "acked":
        m.set_condition(AE.key, True, 1.0)
        m.acknowledge(AE.key, "alice", 2.0)
    rev = m.revision
    with pytest.raises(AlarmActionError, match="nothing to acknowledge"):
        m.acknowledge(AE.key, "alice", 3.0)
    assert m.revision == rev


def test_acknowledge_needs_a_user_and_a_known_alarm() -> None:
    m = manager()
    m.set_condition(AE.key, True, 1.0)
    with pytest.raises(AlarmActionError, match="user must not be empty"):
        m.acknowledge(AE.key, " ", 2.0)
    with pytest.raises(AlarmActionError, match="no alarm 'Room9/X'"):
        m.acknowledge("Room9/X", "alice", 2.0)


def test_acknowledge_many_skips_what_cannot_be_acknowledged() -> None:
    m = manager()
    m.set_condition(AE.key, True, 1.0)
    recs = m.acknowledge_many([AE.key, COMMS.key, "nope"], "alice", 2.0)
    assert [r.key for r in recs] == [AE.key]


# ---------------------------------------------------------------------------- F: shelving


def test_shelve_hides_unack_alarm_and_unshelve_brings_it_back_unacknowledged() -> None:
    m = manager()
    m.set_condition(AE.key, True, 1.0)
    m.acknowledge(AE.key, "alice", 2.0)
    recs = m.shelve(AE.key, "alice", "nuisance while the beam is serviced", 3.0, 600.0)
    assert transitions(recs) == [("shelved", "acked", "shelved")]
    assert recs[0].value == 600.0 and recs[0].reason.startswith("nuisance")
    assert m.get(AE.key).shelved_until == 603.0
    assert transitions(m.unshelve(AE.key, "bob", 10.0)) == [("unshelved", "shelved", "unack")]


def test_condition_changes_while_shelved_are_recorded_and_decide_the_state_on_return() -> None:
    m = manager()
    m.shelve(AE.key, "alice", "maintenance", 0.0, 100.0)
    assert transitions(m.set_condition(AE.key, True, 5.0)) == [("raised", "shelved", "shelved")]
    assert transitions(m.set_condition(AE.key, False, 6.0)) == [("cleared", "shelved", "shelved")]
    assert transitions(m.unshelve(AE.key, "alice", 7.0)) == [("unshelved", "shelved", "normal")]


def test_shelving_expires_on_tick() -> None:
    m = manager()
    m.set_condition(AE.key, True, 0.0)
    m.shelve(AE.key, "alice", "known", 0.0, 60.0)
    assert m.tick(59.9) == []
    recs = m.tick(60.0)
    assert transitions(recs) == [("shelve_expired", "shelved", "unack")]
    assert recs[0].user is None
    assert m.tick(61.0) == []


def test_acknowledge_of_a_shelved_alarm_is_refused() -> None:
    m = manager()
    m.set_condition(AE.key, True, 0.0)
    m.shelve(AE.key, "alice", "known", 0.0, 60.0)
    with pytest.raises(AlarmActionError, match="shelved"):
        m.acknowledge(AE.key, "alice", 1.0)


@pytest.mark.parametrize(
    ("user", "reason", "duration", "match"),
    [
        ("", "why", 60.0, "user must not be empty"),
        ("alice", "", 60.0, "reason must not be empty"),
        ("alice", "why", 0.0, r"shelving duration must be in \(0, 28800\] s, got 0 s"),
        ("alice", "why", 9 * 3600.0, "got 32400 s"),
    ],
)
def test_shelve_refuses_bad_requests(user: str, reason: str, duration: float, match: str) -> None:
    m = manager()
    with pytest.raises(AlarmActionError, match=match):
        m.shelve(AE.key, user, reason, 0.0, duration)
    assert m.get(AE.key).state == "normal"


def test_critical_alarms_cannot_be_shelved_unless_configured_and_no_double_shelving() -> None:
    crit = AlarmDef("Line1/RectifierTrip", "rectifier_trip", "critical", "Rectifier tripped", area="Line1")
    m = manager()
    m.define(crit)
    with pytest.raises(AlarmActionError, match="critical alarms cannot be shelved"):
        m.shelve(crit.key, "alice", "why", 0.0, 60.0)
    m2 = manager(shelve_critical=True)
    m2.define(crit)
    m2.shelve(crit.key, "alice", "why", 0.0)
    assert m2.get(crit.key).shelved_until == 3600.0  # default_shelve_s
    with pytest.raises(AlarmActionError, match="already shelved"):
        m2.shelve(crit.key, "alice", "why", 1.0)
    with pytest.raises(AlarmActionError, match="not shelved"):
        m2.unshelve(AE.key, "alice", 1.0)


# ---------------------------------------------------------------------------- G: suppressed by design


def test_cut_out_cell_suppresses_its_alarms_and_release_annunciates_active_ones() -> None:
    m = manager()
    m.set_condition(AE.key, True, 1.0)
    recs = m.set_design_suppression(2.0, cells={0: "cell cut out"})
    assert transitions(recs) == [("suppressed", "unack", "suppressed")]
    assert recs[0].reason == "cell cut out"
    with pytest.raises(AlarmActionError, match="suppressed by design"):
        m.acknowledge(AE.key, "alice", 3.0)
    assert m.set_design_suppression(3.0, cells={0: "cell cut out"}) == []  # unchanged: nothing
    assert transitions(m.set_design_suppression(4.0)) == [("unsuppressed", "suppressed", "unack")]


def test_suppressed_alarm_that_cleared_returns_normal() -> None:
    m = manager()
    m.set_condition(AE.key, True, 1.0)
    m.set_design_suppression(2.0, cells={0: "cell cut out"})
    assert transitions(m.set_condition(AE.key, False, 3.0)) == [("cleared", "suppressed", "suppressed")]
    assert transitions(m.set_design_suppression(4.0)) == [("unsuppressed", "suppressed", "normal")]


def test_room_in_local_suppresses_suppressible_alarms_only_and_new_alarms_start_suppressed() -> None:
    m = manager()
    m.set_condition(COMMS.key, True, 1.0)
    recs = m.set_design_suppression(2.0, areas={"Room1": "room in local control"})
    assert [r.key for r in recs] == [AE.key]  # the comms alarm is not suppressible
    assert m.get(COMMS.key).state == "unack"
    m.on_event("ae_start", 3.0, area="Room1", cell=102, cell_index=1, value=30.0)
    assert m.get("Room1/Cell102/AE").state == "suppressed"
    assert m.get("Room1/Cell102/AE").suppressed == {"area": "room in local control"}


def test_shelved_and_suppressed_alarm_stays_shelved_after_release() -> None:
    m = manager()
    m.set_condition(AE.key, True, 1.0)
    m.shelve(AE.key, "alice", "known", 1.0, 100.0)
    m.set_design_suppression(2.0, cells={0: "cell cut out"})
    assert m.get(AE.key).state == "suppressed"
    assert transitions(m.set_design_suppression(3.0)) == [("unsuppressed", "suppressed", "shelved")]
    assert transitions(m.tick(101.0)) == [("shelve_expired", "shelved", "unack")]


def test_design_suppression_from_a_scan() -> None:
    lay = make_layout((3, 2))
    cut = np.array([False, True, False, False, False])
    remote = np.array([True, True, True, False, False])
    cells, areas = design_suppression(lay, cut, remote)
    assert cells == {1: "cell cut out"}
    assert areas == {"Room2": "room in local control"}
    assert design_suppression(lay, np.zeros(5, bool), None) == ({}, {})


# ---------------------------------------------------------------------------- floods


def raise_cells(m: AlarmManager, area: str, cells: range, t: float, priority: str = "medium"):
    recs = []
    for c in cells:
        d = AlarmDef(alarm_key("X", area, c), "x", priority, "x", area=area, cell=c, cell_index=c)  # type: ignore[arg-type]
        m.define(d)
        recs += m.set_condition(d.key, True, t + c * 0.1)
    return recs


def test_eleventh_alarm_in_ten_minutes_starts_a_flood_and_is_suppressed() -> None:
    m = AlarmManager()
    raise_cells(m, "Room1", range(1, 11), 0.0)
    assert m.flooding() == {}
    recs = raise_cells(m, "Room1", range(11, 13), 10.0)
    assert m.flooding() == {"Room1": 2}
    flood = m.get("Room1/Flood")
    assert flood.state == "unack" and flood.definition.priority == "high" and flood.value == 2.0
    assert ("raised", "normal", "suppressed") in transitions(recs)
    assert [r.key for r in recs if r.event == "raised" and r.kind == "flood"] == ["Room1/Flood"]
    assert m.get("Room1/Cell011/X").state == "suppressed"
    assert m.get("Room1/Cell011/X").suppressed == {"flood": "alarm flood in Room1"}
    assert m.get("Room1/Cell010/X").state == "unack"  # raised before the flood: untouched
    # another area is not in flood
    raise_cells(m, "Room2", range(1, 3), 20.0)
    assert m.get("Room2/Cell001/X").state == "unack"


def test_critical_alarms_are_never_flood_suppressed() -> None:
    m = AlarmManager()
    raise_cells(m, "Room1", range(1, 12), 0.0)
    raise_cells(m, "Room1", range(50, 51), 5.0, priority="critical")
    assert m.get("Room1/Cell050/X").state == "unack"


def test_flood_ends_when_the_window_empties_and_active_alarms_are_annunciated() -> None:
    m = AlarmManager(AlarmConfig(flood_count=3, flood_window_s=60.0, flood_clear_count=1))
    raise_cells(m, "Room1", range(1, 7), 0.0)  # 4th, 5th, 6th suppressed
    assert m.flooding() == {"Room1": 3}
    m.set_condition("Room1/Cell005/X", False, 10.0)
    assert m.tick(30.0) == []  # still in the window
    recs = m.tick(61.0)
    assert m.flooding() == {}
    assert m.get("Room1/Flood").state == "rtn_unack"
    assert ("unsuppressed", "suppressed", "unack") in transitions(recs)
    assert m.get("Room1/Cell004/X").state == "unack"
    assert m.get("Room1/Cell005/X").state == "normal"
    # a new alarm after the flood annunciates as usual
    raise_cells(m, "Room1", range(20, 21), 70.0)
    assert m.get("Room1/Cell020/X").state == "unack"


def test_flood_window_forgets_old_annunciations() -> None:
    m = AlarmManager(AlarmConfig(flood_count=3, flood_window_s=60.0, flood_clear_count=1))
    for k in range(10):  # one per 30 s: never more than 2 in a window
        raise_cells(m, "Room1", range(k, k + 1), 30.0 * k)
    assert m.flooding() == {}


# ---------------------------------------------------------------------------- events, listing, config, journal


def test_event_kinds_drive_their_alarms() -> None:
    m = AlarmManager()
    m.on_event("ae_start", 1.0, area="Room1", cell=17, cell_index=16, value=32.0)
    a = m.get("Room1/Cell017/AE")
    assert (a.state, a.definition.priority, a.value, a.definition.cell_index) == ("unack", "high", 32.0, 16)
    m.on_event("ae_end", 90.0, area="Room1", cell=17, cell_index=16)
    assert a.state == "rtn_unack"
    recs = m.on_event("ae_escalation", 100.0, area="Room1", cell=17, cell_index=16)
    assert transitions(recs) == [("raised", "normal", "unack"), ("cleared", "unack", "rtn_unack")]
    assert m.get("Room1/Cell017/AEEscalation").definition.priority == "critical"
    m.on_event("comms_lost", 5.0, area="potroom1")
    assert m.get("potroom1/CommsLost").state == "unack"
    assert m.on_event("setpoint_write", 5.0, area="Line1") == []
    assert {s.priority for s in EVENT_ALARMS.values()} <= {"critical", "high", "medium", "low"}


def test_listing_puts_unacknowledged_and_urgent_first() -> None:
    m = AlarmManager()
    m.on_event("ae_predicted", 1.0, area="Room1", cell=1, cell_index=0)  # low, rtn_unack
    m.on_event("ae_start", 2.0, area="Room1", cell=2, cell_index=1)  # high, unack
    m.on_event("comms_lost", 3.0, area="plc1")  # high, unack, newer
    m.on_event("rectifier_trip", 0.5, area="Line1")  # critical, unack
    keys = [a.key for a in m.listing()]
    assert keys == ["Line1/RectifierTrip", "plc1/CommsLost", "Room1/Cell002/AE", "Room1/Cell001/AEPredicted"]
    m.acknowledge("Room1/Cell001/AEPredicted", "alice", 4.0)
    assert "Room1/Cell001/AEPredicted" not in [a.key for a in m.listing()]
    assert len(m.listing(include_normal=True)) == 4
    assert m.counts()["unack"] == 3


def test_redefining_a_key_differently_is_refused() -> None:
    m = manager()
    with pytest.raises(ValueError, match="already defined differently"):
        m.define(AlarmDef(AE.key, "ae", "low", "x"))
    with pytest.raises(ValueError, match="priority must be one of"):
        AlarmDef("k", "x", "urgent", "x")  # type: ignore[arg-type]


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError) as err:
        validate_config(AlarmConfig, {"flood_count": 0, "max_shelve_s": "long"}, "daemon.toml", prefix="alarms")
    text = str(err.value)
    assert "alarms.flood_count" in text and "alarms.max_shelve_s" in text
    with pytest.raises(ConfigError, match="flood_clear_count 20 exceeds flood_count 10"):
        validate_config(AlarmConfig, {"flood_clear_count": 20}, "daemon.toml", prefix="alarms")


def test_every_state_change_reaches_a_real_journal(tmp_path) -> None:
    m = manager()
    recs = m.set_condition(AE.key, True, 1.0, value=31.0)
    recs += m.acknowledge(AE.key, "alice", 2.0, "on it")
    recs += m.shelve(AE.key, "alice", "beam service", 3.0, 60.0)
    recs += m.tick(63.0)
    with Journal(tmp_path / "j.db") as j:
        for r in recs:
            j.append(r.to_event())
        j.commit()
    with Journal(tmp_path / "j.db", readonly=True) as j:
        got = j.query(categories=["alarm"])
    assert [e.kind for e in got] == ["alarm_raised", "alarm_acknowledged", "alarm_shelved", "alarm_shelve_expired"]
    ack = got[1]
    assert (ack.user, ack.room, ack.cell, ack.tag, ack.source) == ("alice", "Room1", 101, AE.key, "alarms")
    assert ack.data["from"] == "unack" and ack.data["to"] == "acked" and ack.data["reason"] == "on it"
    assert "acknowledged by alice: on it" in ack.detail
    assert got[0].value == 31.0 and got[0].t_plant_s == 1.0
