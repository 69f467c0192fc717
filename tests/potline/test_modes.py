"""The daemon's mode state machine without a process: every transition, each refusal
reason, the start rules (re-arming after an unclean stop, the interlock at start) and
the records it hands to the journal, written to a real journal file and read back.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict

import pytest

from potline.journal import Journal
from potline.modes import (
    MODES,
    OPERATOR_SOURCES,
    Interlock,
    ModeDecision,
    ModeMachine,
    PreviousRun,
    interlock_reason,
)

CLEAR = Interlock()
CLEAN = PreviousRun(clean=True)
CRASHED = PreviousRun(clean=False, pid=4242, started_utc="2026-01-02T03:04:05.000000Z")


def started(configured: str = "observe", previous: PreviousRun = CLEAN, **kw: object) -> ModeMachine:
    m = ModeMachine(configured, **kw)  # type: ignore[arg-type]
    m.start(previous, now=0.0)
    return m


def journalled(tmp_path, *decisions: ModeDecision) -> list:
    """Write the decisions' records as the daemon does and read them back from the file."""
    path = tmp_path / "journal.db"
    with Journal(path) as j:
        for d in decisions:
            for r in d.records:
                j.append(kind=r.kind, source=r.source, user=r.user, mode=r.mode, detail=r.detail, data=r.data,
                         t_plant_s=r.t_plant_s)  # fmt: skip
        j.commit()
    with Journal(path, readonly=True) as j:
        return j.query()


# ---------------------------------------------------------------------- the interlock


@pytest.mark.parametrize(
    ("facts", "reason"),
    [
        (Interlock(), ""),
        (Interlock(bridge_started=False), "PLC bridge not started"),
        (Interlock(journal_writable=False), "journal not writable"),
        (Interlock(links_down=("rectifier1", "potroom1")), "PLC link(s) down: potroom1, rectifier1"),
        (Interlock(links_down=("potroom1",), needs_all_links=False), ""),
        (Interlock(first_cycle_done=False), "no control cycle yet"),
        # the first reason in the order an operator fixes things: bridge, journal, links, cycle
        (Interlock(bridge_started=False, journal_writable=False, links_down=("potroom1",)), "PLC bridge not started"),
        (Interlock(journal_writable=False, links_down=("potroom1",), first_cycle_done=False), "journal not writable"),
    ],
)
def test_interlock_reasons(facts: Interlock, reason: str) -> None:
    assert interlock_reason(facts) == reason


# ---------------------------------------------------------------------- start


@pytest.mark.parametrize("configured", ["observe", "shadow"])
def test_clean_start_in_observe_or_shadow_as_configured(configured: str) -> None:
    m = ModeMachine(configured)  # type: ignore[arg-type]
    d = m.start(CLEAN, now=1.0)
    assert (m.mode, m.pending, m.disarmed, d.records) == (configured, None, "", ())


def test_clean_start_asked_for_control_runs_shadow_until_the_interlock_clears(tmp_path) -> None:
    m = ModeMachine("control")
    d0 = m.start(CLEAN, now=0.0)
    assert m.mode == "shadow" and m.pending == "control" and d0.records == ()
    # before the first cycle: nothing journalled (the interlock is not judged yet)
    before = m.tick(Interlock(first_cycle_done=False, links_down=("potroom1", "rectifier1")), now=1.0)
    assert before is not None and not before.changed and before.records == ()
    # first cycle, both PLCs down: held, journalled once per reason
    held = m.tick(Interlock(links_down=("potroom1", "rectifier1")), now=2.0)
    assert held is not None and held.mode == "shadow" and held.reason == "PLC link(s) down: potroom1, rectifier1"
    again = m.tick(Interlock(links_down=("potroom1", "rectifier1")), now=3.0)
    assert again is not None and again.records == ()
    one_up = m.tick(Interlock(links_down=("potroom1",)), now=4.0)
    assert one_up is not None and len(one_up.records) == 1
    # both up: control, from the config's request
    went = m.tick(CLEAR, now=5.0)
    assert went is not None and went.changed and (went.previous, went.mode) == ("shadow", "control")
    assert m.mode == "control" and m.pending is None
    assert m.tick(CLEAR, now=6.0) is None

    ev = journalled(tmp_path, d0, before, held, again, one_up, went)
    assert [(e.kind, e.source, e.mode) for e in ev] == [
        ("mode_refused", "config", "shadow"),
        ("mode_refused", "config", "shadow"),
        ("mode_change", "config", "control"),
    ]
    assert all(e.category == "mode" for e in ev)
    assert ev[0].data == {"requested": "control", "reason": "PLC link(s) down: potroom1, rectifier1", "pending": True}
    assert "held" in ev[0].detail and ev[1].data["reason"] == "PLC link(s) down: potroom1"
    assert ev[2].data["from"] == "shadow" and ev[2].data["to"] == "control" and ev[2].t_plant_s == 5.0


@pytest.mark.parametrize("blocked", [Interlock(journal_writable=False), Interlock(bridge_started=False)])
def test_pending_control_waits_for_every_interlock_reason(blocked: Interlock) -> None:
    m = started("control")
    d = m.tick(blocked, now=1.0)
    assert d is not None and not d.changed and m.mode == "shadow" and m.pending == "control"
    assert d.reason == interlock_reason(blocked)


@pytest.mark.parametrize("configured", MODES)
def test_after_an_unclean_stop_the_daemon_starts_in_observe_disarmed(tmp_path, configured: str) -> None:
    m = ModeMachine(configured)  # type: ignore[arg-type]
    d = m.start(CRASHED, now=0.0)
    assert m.mode == "observe" and m.pending is None
    assert "pid 4242" in m.disarmed and "without a clean stop" in m.disarmed
    # nothing takes it to control on its own: no pending request, the interlock clearing changes nothing
    assert m.tick(CLEAR, now=1.0) is None and m.mode == "observe"
    if configured == "observe":
        assert d.records == ()
        return
    ev = journalled(tmp_path, d)
    assert [(e.kind, e.source, e.mode) for e in ev] == [("mode_refused", "config", "observe")]
    assert ev[0].data["requested"] == configured and ev[0].data["start"] is True
    assert "pid 4242" in ev[0].detail and ev[0].detail.startswith(f"start in observe: {configured} refused")


def test_control_needs_an_operator_to_re_arm_after_an_unclean_stop(tmp_path) -> None:
    m = started("control", CRASHED)
    # the daemon itself (or any non-operator source) cannot take it back to control
    by_daemon = m.request("control", "daemon", CLEAR, now=1.0)
    assert not by_daemon.accepted and "re-arming" in by_daemon.reason and m.mode == "observe"
    # an operator's request while the interlock holds: refused for the interlock, still disarmed
    early = m.request("control", "opcua", Interlock(links_down=("potroom1",)), now=2.0, user="op")
    assert not early.accepted and early.reason == "PLC link(s) down: potroom1" and m.disarmed
    # shadow is no re-arming
    sh = m.request("shadow", "mode_file", CLEAR, now=3.0, user="potline")
    assert sh.accepted and m.mode == "shadow" and m.disarmed
    # the operator asks for control with the interlock clear: re-armed
    ok = m.request("control", "SIGUSR1", CLEAR, now=4.0, user="potline")
    assert ok.accepted and m.mode == "control" and m.disarmed == ""
    # from now on it behaves as after a clean start
    m.request("observe", "SIGUSR2", CLEAR, now=5.0)
    assert m.request("control", "daemon", CLEAR, now=6.0).accepted

    ev = journalled(tmp_path, by_daemon, early, sh, ok)
    assert [(e.kind, e.source, e.user) for e in ev] == [
        ("mode_refused", "daemon", None),
        ("mode_refused", "opcua", "op"),
        ("mode_change", "mode_file", "potline"),
        ("mode_change", "SIGUSR1", "potline"),
    ]
    assert ev[3].data == {"from": "shadow", "to": "control", "reason": "", "rearmed": True}
    assert "re-armed" in ev[3].detail and "rearmed" not in ev[2].data


def test_disarmed_at_runtime_control_waits_for_an_operator(tmp_path) -> None:
    """A journal file lost under a running daemon disarms control (``disarm``): leaving
    control is a request of its own; only an operator's request re-arms."""
    m = started("observe")
    assert m.request("control", "daemon", CLEAR, now=1.0).accepted
    m.disarm("journal file deleted (ids 1-40: all recovered; journal_lost id 41)")
    assert m.mode == "control"  # disarming changes no mode by itself
    out = m.request("shadow", "daemon", CLEAR, now=2.0, reason="control disarmed")
    back = m.request("control", "config", CLEAR, now=3.0)
    assert out.accepted and not back.accepted and "journal file deleted" in back.reason
    ok = m.request("control", "opcua", CLEAR, now=4.0, user="op")
    assert ok.accepted and ok.records[0].data["rearmed"] is True and m.disarmed == ""
    ev = journalled(tmp_path, out, back, ok)
    assert [(e.kind, e.source) for e in ev] == [("mode_change", "daemon"), ("handback", "daemon"),
                                                ("mode_refused", "config"), ("mode_change", "opcua")]  # fmt: skip


@pytest.mark.parametrize("source", sorted(OPERATOR_SOURCES))
def test_every_operator_source_re_arms(source: str) -> None:
    m = started("observe", CRASHED)
    d = m.request("control", source, CLEAR, now=1.0)
    assert d.accepted and d.records[-1].data.get("rearmed") is True


@pytest.mark.parametrize(
    ("last", "clean", "mode"),
    [("control", True, "shadow"), ("shadow", True, "shadow"), ("observe", True, "observe"), (None, True, "control"),
     ("shadow", False, "observe")],
)  # fmt: skip
def test_resume_mode_never_resumes_control(last: str | None, clean: bool, mode: str) -> None:
    m = ModeMachine("control", resume_mode=True)
    m.start(PreviousRun(clean=clean, last_mode=last), now=0.0)
    # no journalled mode: the configured start request (control: shadow, pending)
    assert m.mode == (mode if mode != "control" else "shadow")
    assert m.pending == ("control" if mode == "control" else None)


def test_start_is_called_once_and_the_configured_mode_is_checked() -> None:
    m = started("observe")
    with pytest.raises(RuntimeError):
        m.start(CLEAN)
    with pytest.raises(ValueError, match="observe, shadow, control"):
        ModeMachine("turbo")  # type: ignore[arg-type]


# ---------------------------------------------------------------------- runtime requests


@pytest.mark.parametrize(("old", "new"), list(itertools.permutations(MODES, 2)))
def test_every_transition_is_journalled_with_who_and_why(tmp_path, old: str, new: str) -> None:
    m = started(old) if old != "control" else started("observe")
    if old == "control":
        m.request("control", "opcua", CLEAR)
    assert m.mode == old
    d = m.request(new, "opcua", CLEAR, now=12.5, user="op", reason="shift change")
    assert d.accepted and d.changed and (d.previous, d.mode) == (old, new) and m.mode == new
    ev = journalled(tmp_path, d)
    kinds = [e.kind for e in ev]
    # leaving control is a hand-back: the PLCs return to local on their watchdog
    assert kinds == (["mode_change", "handback"] if old == "control" else ["mode_change"])
    e = ev[0]
    assert (e.source, e.user, e.mode, e.t_plant_s) == ("opcua", "op", new, 12.5)
    assert e.data == {"from": old, "to": new, "reason": "shift change"}
    assert e.detail == f"{old} -> {new} (shift change)"


@pytest.mark.parametrize("mode", MODES)
def test_a_request_for_the_running_mode_changes_and_journals_nothing(mode: str) -> None:
    m = started(mode) if mode != "control" else started("observe")
    if mode == "control":
        m.request("control", "opcua", CLEAR)
    d = m.request(mode, "mode_file", Interlock(links_down=("potroom1",)))
    assert d.accepted and not d.changed and d.records == ()


@pytest.mark.parametrize(
    "facts",
    [Interlock(bridge_started=False), Interlock(journal_writable=False), Interlock(links_down=("potroom1",)),
     Interlock(first_cycle_done=False)],
)  # fmt: skip
def test_control_refused_for_each_interlock_reason(tmp_path, facts: Interlock) -> None:
    m = started("shadow")
    d = m.request("control", "opcua", facts, now=3.0, user="op")
    why = interlock_reason(facts)
    assert not d.accepted and d.reason == why and m.mode == "shadow"
    (e,) = journalled(tmp_path, d)
    assert (e.kind, e.source, e.user, e.mode) == ("mode_refused", "opcua", "op", "shadow")
    assert e.data == {"requested": "control", "reason": why}
    assert e.detail == f"shadow -> control refused: {why}"


def test_leaving_control_is_never_refused() -> None:
    bad = Interlock(bridge_started=False, journal_writable=False, links_down=("a",), first_cycle_done=False)
    for new in ("shadow", "observe"):
        m = started("observe")
        m.request("control", "opcua", CLEAR)
        assert m.request(new, "daemon", bad).accepted and m.mode == new


def test_an_unknown_mode_is_refused_and_kept_short_in_the_journal(tmp_path) -> None:
    m = started("control")  # pending: an invalid request does not withdraw it
    d = m.request("warp9" * 40, "mode_file", CLEAR, now=1.0)
    assert not d.accepted and d.reason.startswith("unknown mode") and m.mode == "shadow" and m.pending == "control"
    (e,) = journalled(tmp_path, d)
    assert (
        e.kind == "mode_refused" and len(e.data["requested"]) == 64 and "observe, shadow, control" in e.data["reason"]
    )


@pytest.mark.parametrize("new", MODES)
def test_any_valid_request_withdraws_the_pending_start_request(tmp_path, new: str) -> None:
    m = started("control")
    d = m.request(new, "opcua", Interlock(links_down=("potroom1",)), now=1.0, user="op")
    assert m.pending is None
    assert m.tick(CLEAR, now=2.0) is None  # nothing carried out later
    ev = journalled(tmp_path, d)
    assert (ev[0].kind, ev[0].source, ev[0].data["pending"]) == ("mode_refused", "config", False)
    assert "superseded" in ev[0].data["reason"] and "opcua" in ev[0].data["reason"]


def test_a_switch_that_could_not_be_journalled_is_reverted(tmp_path) -> None:
    m = started("observe")
    d = m.request("control", "mode_file", CLEAR, now=1.0, user="potline")
    r = m.revert(d, "journal not writable: a switch to control must be journalled", now=1.0)
    assert m.mode == "observe" and not r.accepted and (r.previous, r.mode) == ("observe", "observe")
    (e,) = journalled(tmp_path, r)
    assert (e.kind, e.source, e.user) == ("mode_refused", "mode_file", "potline")
    assert e.detail == "observe -> control refused: journal not writable: a switch to control must be journalled"
    with pytest.raises(ValueError):
        m.revert(d, "twice")
    # the config's own switch stays pending when reverted
    m2 = started("control")
    went = m2.tick(CLEAR, now=1.0)
    assert went is not None
    m2.revert(went, "journal not writable")
    assert m2.mode == "shadow" and m2.pending == "control"


def test_stop_hands_back_and_ends_in_observe(tmp_path) -> None:
    m = started("observe")
    m.request("control", "opcua", CLEAR)
    d = m.stop("every PLC reports local control (0.4 s)", {"ok": True, "waited_s": 0.4}, now=9.0)
    assert m.mode == "observe" and (d.previous, d.mode) == ("control", "observe")
    (e,) = journalled(tmp_path, d)
    assert (e.kind, e.source, e.mode, e.data) == ("handback", "daemon", "control", {"ok": True, "waited_s": 0.4})


def test_decisions_are_plain_data() -> None:
    m = started("observe")
    d = m.request("shadow", "opcua", CLEAR, now=1.0, user="op")
    assert asdict(d)["records"][0]["kind"] == "mode_change"
