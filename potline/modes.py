"""The daemon's mode state machine: ``observe`` | ``shadow`` | ``control``.

Pure and synchronous: no I/O, no clock of its own (every call takes ``now``, plant
seconds, only to stamp what it returns). The daemon feeds it requests and facts and
carries out its decisions: it applies the mode to the bridge and the controller and
journals the returned ``ModeRecord`` entries (``mode_change``, ``mode_refused``,
``handback``).

Requests come from the config (the start mode), the mode file, OPC UA ``SetMode``,
signals (``SIGUSR1`` applies the mode file, ``SIGUSR2`` asks for observe) and the
daemon itself (journal not writable -> shadow, failing cycles -> observe).

**The control interlock** (``interlock_reason``): ``control`` is entered only when the
PLC bridge is started, the journal is writable, every PLC link is up (unless
``safety.control_needs_all_links = false``) and a control cycle has run. It applies to
every way into control, the start included.

**Start and re-arming** (``ModeMachine.start``):

* the start request is ``daemon.mode`` (or ``--mode``); with ``resume_mode`` the last
  journalled mode, ``control`` resumed as ``shadow``;
* after an **unclean** previous stop (the journal's last start has no stop) the daemon
  starts in ``observe`` whatever was asked, *disarmed*: only an explicit operator
  request (mode file write, ``SIGUSR1``, OPC UA ``SetMode``, the HMI) takes it back to
  ``control``; the first such switch is journalled with ``rearmed: true``;
* a disarming that no operator has re-armed since (``PreviousRun.disarmed``: a journal
  lost under a running daemon, an unclean stop whose restart was stopped again before
  anyone re-armed) holds across a clean restart too: the daemon starts as asked but not
  in ``control`` (``shadow`` instead, the refusal journalled) and control needs an
  operator's request as above;
* after a **clean** stop a start request for ``control`` starts in ``shadow`` with the
  request *pending*: it is carried out (journalled as a ``mode_change`` from source
  ``config``) at the first cycle at which the interlock is clear. While the interlock
  holds it back after the first cycle, a ``mode_refused`` entry with ``pending: true``
  says why (again whenever the reason changes). Any other mode request withdraws it
  (journalled as well).

A request that does not change the mode is not journalled (unless it withdraws the
pending start request).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, TypeGuard

__all__ = [
    "MODES",
    "OPERATOR_SOURCES",
    "Interlock",
    "Mode",
    "ModeDecision",
    "ModeMachine",
    "ModeRecord",
    "PreviousRun",
    "interlock_reason",
    "is_mode",
]

Mode = Literal["observe", "shadow", "control"]
MODES: tuple[Mode, ...] = ("observe", "shadow", "control")
#: request sources that are an operator's explicit action (they may re-arm control)
OPERATOR_SOURCES = frozenset({"mode_file", "SIGUSR1", "opcua", "hmi"})
#: longest requested-mode text kept in a refusal record
_KEEP = 64


def is_mode(text: object) -> TypeGuard[Mode]:
    """Is ``text`` one of ``MODES``?"""
    return isinstance(text, str) and text in MODES


@dataclass(frozen=True, slots=True)
class Interlock:
    """The facts the control interlock looks at, as the daemon sees them now.

    Attributes:
        bridge_started: the PLC bridge has started (its clients exist).
        journal_writable: the last journal commit succeeded.
        links_down: names of PLC links that are not up (or not scanned yet).
        first_cycle_done: a control cycle has run.
        needs_all_links: ``safety.control_needs_all_links``.
    """

    bridge_started: bool = True
    journal_writable: bool = True
    links_down: tuple[str, ...] = ()
    first_cycle_done: bool = True
    needs_all_links: bool = True


def interlock_reason(facts: Interlock) -> str:
    """Why ``control`` may not be entered now (``""``: it may)."""
    if not facts.bridge_started:
        return "PLC bridge not started"
    if not facts.journal_writable:
        return "journal not writable"
    if facts.links_down and facts.needs_all_links:
        return f"PLC link(s) down: {', '.join(sorted(facts.links_down))}"
    if not facts.first_cycle_done:
        return "no control cycle yet"
    return ""


@dataclass(frozen=True, slots=True)
class PreviousRun:
    """How the previous run ended, from the journal.

    Attributes:
        clean: False when the journal's last ``daemon_start`` has no ``daemon_stop``
            after it (``kill -9``, power loss, crash); True otherwise (also a new journal).
        last_mode: the mode of the last journalled ``mode_change`` (``resume_mode``).
        pid, started_utc: the previous process and its start (for the record).
        disarmed: why control was disarmed by an earlier run and not re-armed by an
            operator since ('' = armed); names the journal entry that disarmed it.
        disarmed_not_ready: that disarming keeps ``/readyz`` 503 until re-armed (a lost journal).
    """

    clean: bool = True
    last_mode: str | None = None
    pid: int | None = None
    started_utc: str | None = None
    disarmed: str = ""
    disarmed_not_ready: bool = False


@dataclass(frozen=True, slots=True)
class ModeRecord:
    """One journal entry the daemon is to write (``Journal.append`` fields)."""

    kind: Literal["mode_change", "mode_refused", "handback"]
    source: str
    mode: Mode  # the mode the entry is journalled under
    detail: str
    user: str | None = None
    t_plant_s: float | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ModeDecision:
    """What a request (or a tick) decided.

    Attributes:
        accepted: False when the request was refused (``reason`` says why).
        previous: the mode before.
        mode: the mode now (``previous`` when refused or unchanged).
        reason: why it was refused ('' when accepted).
        records: entries to journal, in order.
    """

    accepted: bool
    previous: Mode
    mode: Mode
    reason: str = ""
    records: tuple[ModeRecord, ...] = ()

    @property
    def changed(self) -> bool:
        return self.mode != self.previous


class ModeMachine:
    """Mode decisions of the daemon (see the module docstring).

    Args:
        configured: the start request (``daemon.mode`` or ``--mode``).
        resume_mode: start in the last journalled mode instead (``control`` -> ``shadow``).
    """

    def __init__(self, configured: Mode, *, resume_mode: bool = False) -> None:
        if not is_mode(configured):
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {configured!r}")
        self.configured: Mode = configured
        self.resume_mode = resume_mode
        self.mode: Mode = "observe"
        #: a start request for control waiting for the interlock (None: nothing pending)
        self.pending: Mode | None = None
        #: why control needs an operator's re-arming ('' = armed)
        self.disarmed: str = ""
        self._pending_said = ""
        self._started = False

    # ------------------------------------------------------------------ start

    def start(self, previous: PreviousRun, now: float | None = None) -> ModeDecision:
        """Choose the start mode from the request and how the previous run ended."""
        if self._started:
            raise RuntimeError("ModeMachine.start called twice")
        self._started = True
        asked: Mode = self.configured
        via = "config"
        if self.resume_mode and is_mode(previous.last_mode):
            asked = "shadow" if previous.last_mode == "control" else previous.last_mode
            via = "resume_mode"
        records: list[ModeRecord] = []
        if not previous.clean:
            self.mode = "observe"
            self.disarmed = (
                f"previous run (pid {previous.pid}, started {previous.started_utc}) ended without a clean stop"
            )
            if asked != "observe":
                why = f"{self.disarmed}: start in observe until an operator asks for {asked}"
                records.append(self._refusal(asked, via, None, why, now, start=True))
        elif previous.disarmed:
            self.disarmed = previous.disarmed
            self.mode = "shadow" if asked == "control" else asked
            if asked == "control":
                why = f"control needs re-arming by an operator ({self.disarmed}): start in shadow until one asks"
                records.append(self._refusal(asked, via, None, why, now, start=True))
        elif asked == "control":
            self.mode = "shadow"
            self.pending = "control"
        else:
            self.mode = asked
        return ModeDecision(True, self.mode, self.mode, records=tuple(records))

    # ------------------------------------------------------------------ requests

    def request(self, requested: str, source: str, facts: Interlock, now: float | None = None, *,
                user: str | None = None, reason: str = "") -> ModeDecision:  # fmt: skip
        """An explicit request for ``requested`` from ``source`` (who: ``user``).

        Refused (``accepted`` False, a ``mode_refused`` record) when ``requested`` is
        not a mode, or it is ``control`` and the interlock holds or control is
        disarmed and ``source`` is not an operator's. A valid request withdraws a
        pending start request (journalled).
        """
        old = self.mode
        if not is_mode(requested):
            why = f"unknown mode {requested!r}: expected one of {', '.join(MODES)}"
            return ModeDecision(False, old, old, why, (self._refusal(requested, source, user, why, now),))
        records: list[ModeRecord] = []
        if self.pending is not None:
            records.append(self._withdraw(source, user, requested, now))
        if requested == old:
            return ModeDecision(True, old, old, records=tuple(records))
        rearm = False
        if requested == "control":
            why = interlock_reason(facts)
            if not why and self.disarmed:
                if source in OPERATOR_SOURCES:
                    rearm = True
                else:
                    why = f"control needs re-arming by an operator ({self.disarmed})"
            if why:
                records.append(self._refusal(requested, source, user, why, now))
                return ModeDecision(False, old, old, why, tuple(records))
        records += self._switch(requested, source, user, reason, now, rearm=rearm)
        return ModeDecision(True, old, requested, records=tuple(records))

    def tick(self, facts: Interlock, now: float | None = None) -> ModeDecision | None:
        """Carry out the pending start request once the interlock is clear.

        Returns None when nothing is pending; otherwise a decision (a ``mode_change``
        when it was carried out, a ``mode_refused`` with ``pending`` when the reason it
        waits changed after the first cycle, no record when nothing new).
        """
        if self.pending is None:
            return None
        old = self.mode
        why = interlock_reason(facts)
        if not why:
            want = self.pending
            self.pending = None
            self._pending_said = ""
            recs = self._switch(want, "config", None, "the configured start mode; control interlock clear", now)
            return ModeDecision(True, old, want, records=tuple(recs))
        if not facts.first_cycle_done or why == self._pending_said:
            return ModeDecision(False, old, old, why)
        self._pending_said = why
        rec = ModeRecord(
            "mode_refused", "config", old,
            f"{old} -> {self.pending} held: {why} (the configured start mode; entered once the interlock clears)",
            t_plant_s=now, data={"requested": self.pending, "reason": why, "pending": True},
        )  # fmt: skip
        return ModeDecision(False, old, old, why, (rec,))

    def disarm(self, why: str) -> None:
        """From now on ``control`` needs an operator's explicit request (re-arming), e.g. after
        the journal file was lost under the daemon; ``why`` is shown in refusals and ``/readyz``.
        The running mode is not changed here (leaving control is a request of its own)."""
        self.disarmed = why

    def stop(self, detail: str, data: dict[str, Any] | None = None, now: float | None = None) -> ModeDecision:
        """The daemon's stop: after the hand-back it is in observe, nothing pending.

        Returns the ``handback`` record (journalled under the mode it leaves).
        """
        old = self.mode
        self.mode = "observe"
        self.pending = None
        rec = ModeRecord("handback", "daemon", old, detail, None, now, dict(data or {}))
        return ModeDecision(True, old, "observe", records=(rec,))

    def revert(self, decision: ModeDecision, why: str, now: float | None = None) -> ModeDecision:
        """Undo an accepted switch the daemon could not carry out (e.g. not journalled)."""
        if not decision.changed or self.mode != decision.mode:
            raise ValueError("revert: the decision is not the last switch")
        self.mode = decision.previous
        src = decision.records[-1].source if decision.records else "daemon"
        usr = decision.records[-1].user if decision.records else None
        if src == "config":  # the start request stays pending
            self.pending = decision.mode
        rec = self._refusal(decision.mode, src, usr, why, now)
        return ModeDecision(False, decision.previous, decision.previous, why, (rec,))

    # ------------------------------------------------------------------ records

    def _switch(self, new: Mode, source: str, user: str | None, reason: str, now: float | None, *,
                rearm: bool = False) -> list[ModeRecord]:  # fmt: skip
        old = self.mode
        self.mode = new
        data: dict[str, Any] = {"from": old, "to": new, "reason": reason}
        if rearm:
            data["rearmed"] = True
            self.disarmed = ""
        detail = f"{old} -> {new}" + (f" ({reason})" if reason else "") + (" [re-armed]" if rearm else "")
        out = [ModeRecord("mode_change", source, new, detail, user, now, data)]
        if old == "control":
            what = "controller stopped commanding: heartbeat stopped, PLCs return to local control on their watchdog"
            out.append(ModeRecord("handback", source, new, what, user, now))
        return out

    def _refusal(self, requested: str, source: str, user: str | None, why: str, now: float | None, *,
                 start: bool = False) -> ModeRecord:  # fmt: skip
        data: dict[str, Any] = {"requested": str(requested)[:_KEEP], "reason": why}
        if start:
            data["start"] = True
            detail = f"start in {self.mode}: {str(requested)[:_KEEP]} refused: {why}"
        else:
            detail = f"{self.mode} -> {str(requested)[:_KEEP]} refused: {why}"
        return ModeRecord("mode_refused", source, self.mode, detail, user, now, data)

    def _withdraw(self, source: str, user: str | None, requested: str, now: float | None) -> ModeRecord:
        want = self.pending
        self.pending = None
        self._pending_said = ""
        why = f"superseded by a request for {str(requested)[:_KEEP]!r} from {source}"
        return ModeRecord(
            "mode_refused", "config", self.mode, f"{self.mode} -> {want} (the configured start mode) withdrawn: {why}",
            user, now, {"requested": want, "reason": why, "pending": False},
        )  # fmt: skip
