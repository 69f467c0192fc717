"""Mode requests of a running daemon, carried out: ``potline.modes`` decides, this acts.

``ModeSwitch`` takes the requests (OPC UA ``SetMode``, the mode file and its signals,
the daemon's own), asks the ``ModeMachine``, then applies the decision (``on_apply``:
the bridge's writers and heartbeat, the controller), writes the running mode back into
the mode file, journals and logs the records, and shows the mode in the metrics,
``/readyz`` (a pending start request, a control that needs re-arming), systemd's status
line and the mirror's ``Twin/Mode``.

A switch into ``control`` that cannot be journalled is undone (and the refusal
journalled, or at least logged).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from potline.modes import Interlock, Mode, ModeDecision, ModeMachine, ModeRecord, PreviousRun, is_mode

if TYPE_CHECKING:
    from potline.metrics import DaemonMetrics, HealthState
    from potline.mirror import MirrorThread
    from potline.mode_file import ModeFile
    from potline.recorder import JournalRecorder
    from potline.sd_notify import Notifier

__all__ = ["ModeSwitch", "carried_disarm"]

#: journal entries that disarm control until an operator re-arms it (``unclean_shutdown``:
#: the restart after a crash; ``journal_lost``: the journal file lost under the daemon)
DISARMING_KINDS = ("unclean_shutdown", "journal_lost")
#: of these, the ones that also keep ``/readyz`` 503 until re-armed
_NOT_READY_KINDS = frozenset({"journal_lost"})

log = structlog.get_logger("potline.daemon")


class ModeSwitch:
    """The daemon's mode, switched on request (see the module docstring).

    Args:
        machine: the mode state machine.
        name: instance name (metric label).
        recorder: the journal.
        metrics, health, notifier: where the mode is shown.
        mode_file: the mode file (None: not configured).
        facts: the control interlock's facts now.
        now: plant time now [s] (None when the clock fails).
        status: systemd's status line.
        on_apply: applies a mode to the bridge and the controller.
    """

    def __init__(self, machine: ModeMachine, name: str, recorder: JournalRecorder, metrics: DaemonMetrics,
                 health: HealthState, notifier: Notifier, mode_file: ModeFile | None, *,
                 facts: Callable[[], Interlock], now: Callable[[], float | None], status: Callable[[], str],
                 on_apply: Callable[[Mode], None]) -> None:  # fmt: skip
        self.machine = machine
        self.name = name
        self.recorder = recorder
        self.metrics = metrics
        self.health = health
        self.notifier = notifier
        self.mode_file = mode_file
        self.facts = facts
        self.now = now
        self.status = status
        self.on_apply = on_apply
        #: the mirror, once it runs (shows the mode in ``Twin/Mode``)
        self.mirror: MirrorThread | None = None

    @property
    def mode(self) -> Mode:
        return self.machine.mode

    # ------------------------------------------------------------------ start

    def start(self, previous: PreviousRun, journal_start: Callable[[], None]) -> ModeDecision:
        """The start mode (``ModeMachine.start``) applied, journalled and shown (also in the mode file).

        ``journal_start`` journals ``daemon_start`` (under the start mode, before the mode's own entries).
        """
        d = self.machine.start(previous, self.now())
        if previous.clean and previous.disarmed and previous.disarmed_not_ready:
            self.health.detail["disarmed"] = previous.disarmed
        self.apply(self.mode)
        journal_start()
        for rec in d.records:
            self._journal(rec)
        self.recorder.commit()
        _log(d.records, None)
        self._mode_file_at_start()
        self._show_request_state()
        m = self.machine
        log.info("mode.start", mode=self.mode, configured=m.configured, pending=m.pending,
                 previous_clean=previous.clean, disarmed=m.disarmed or None)  # fmt: skip
        return d

    def apply(self, mode: Mode) -> None:
        """Show ``mode`` in the health and metrics, and apply it (``on_apply``)."""
        self.health.mode = mode
        self.metrics.set_mode(mode)
        self.on_apply(mode)

    # ------------------------------------------------------------------ requests

    async def set_mode(self, new: str, source: str, user: str | None = None, reason: str = "") -> str:
        """Switch the mode; returns the previous one.

        Raises:
            ValueError: refused (unknown mode, the interlock, control not re-armed, the
                journal cannot record it); the refusal is journalled and logged.
        """
        d = self.carry_out(self.machine.request(new, source, self.facts(), self.now(), user=user, reason=reason),
                           source, user)  # fmt: skip
        if not d.accepted:
            raise ValueError(d.reason)
        if not d.changed:
            log.info("mode.unchanged", mode=new, source=source, user=user)
        return d.previous

    def leave_control_soon(self, new: Mode, source: str, reason: str) -> None:
        """Leave control for ``new`` on the daemon's own account (asked from a callback:
        carried out at the next turn of the loop, if still in control then)."""

        def go() -> None:
            if self.mode == "control":
                self.carry_out(self.machine.request(new, source, self.facts(), self.now(), reason=reason), source,
                               None)  # fmt: skip

        asyncio.get_running_loop().call_soon(go)

    def disarm(self, why: str, *, not_ready: bool = False) -> None:
        """Control needs an operator's re-arming from now on (``ModeMachine.disarm``); out of
        control at once (shadow). ``not_ready``: ``/readyz`` answers 503 until re-armed."""
        self.machine.disarm(why)
        if not_ready:
            self.health.detail["disarmed"] = why
        log.warning("mode.disarmed", reason=why, mode=self.mode)
        self._show_request_state()
        if self.mode == "control":
            self.leave_control_soon("shadow", "daemon", f"control disarmed: {why}")

    def tick(self, now: float) -> None:
        """Every cycle: carry out the pending start request once the interlock clears."""
        d = self.machine.tick(self.facts(), now)
        if d is not None and (d.changed or d.records):
            self.carry_out(d, "config", None)

    def carry_out(self, d: ModeDecision, source: str, user: str | None) -> ModeDecision:
        """Apply a decision: the mode, the mode file, the journal, the log, the mirror."""
        if d.changed:
            self.apply(d.mode)
        self.sync_mode_file()
        for rec in d.records:
            self._journal(rec)
        if d.changed and d.mode == "control" and not (self.recorder.journal is not None and self.recorder.commit()):
            # an unjournalled switch into control is not allowed: undo it
            why = ("journal not available" if self.recorder.journal is None
                   else "journal not writable: a switch to control must be journalled")  # fmt: skip
            _log(d.records[:-1], user)  # what came before the switch (a withdrawal)
            d = self.machine.revert(d, why, self.now())
            self.apply(d.mode)
            self.sync_mode_file()
            for rec in d.records:
                self._journal(rec)
        self.recorder.commit()
        self._show_request_state()
        _log(d.records, user)
        if d.changed:
            self.metrics.mode_changes.labels(self.name, source).inc()
            if self.mirror is not None and source != "opcua":  # SetMode shows its own result
                self.mirror.show_mode(d.mode)
            self.notifier.status(self.status())
        return d

    def stop(self, detail: str, data: dict[str, Any]) -> None:
        """After the hand-back at the stop: observe, the ``handback`` entry journalled."""
        d = self.machine.stop(detail, data, self.now())
        for rec in d.records:
            self._journal(rec)
        self.recorder.commit()
        self.apply(self.mode)

    def _journal(self, rec: ModeRecord) -> None:
        fields: dict[str, Any] = {"source": rec.source, "user": rec.user, "mode": rec.mode, "detail": rec.detail,
                                  "data": rec.data}  # fmt: skip
        if rec.t_plant_s is not None:
            fields["t_plant_s"] = rec.t_plant_s
        self.recorder.append(rec.kind, **fields)

    def _show_request_state(self) -> None:
        """``/readyz`` tells a pending start request and a control that needs re-arming."""
        m = self.machine
        if not m.disarmed:
            self.health.detail.pop("disarmed", None)
        if m.pending is not None:
            self.health.detail["mode_request"] = f"{m.pending} pending until the control interlock clears"
        elif m.disarmed and self.mode != "control":
            self.health.detail["mode_request"] = f"control needs re-arming by an operator: {m.disarmed}"
        else:
            self.health.detail.pop("mode_request", None)

    # ------------------------------------------------------------------ the mode file

    def sync_mode_file(self) -> None:
        """Write the running mode back into the mode file (never over a newer write)."""
        if self.mode_file is None:
            return
        why = self.mode_file.write_back(self.mode)
        if why:
            log.info("mode_file.not_rewritten", mode=self.mode, reason=why)

    def _mode_file_at_start(self) -> None:
        """Take the mode file as seen and show the start mode in it (a leftover request is not applied)."""
        mf = self.mode_file
        if mf is None:
            return
        r = mf.take()
        if r.problem:
            self._mode_file_refused("mode_file", r.problem)
            return
        if r.text is not None and r.text != self.mode:
            log.info("mode_file.reset", was=r.text[:32], mode=self.mode,
                     hint="the start mode comes from the config; write the file again to ask for a mode")  # fmt: skip
        self.sync_mode_file()

    def _mode_file_refused(self, source: str, why: str) -> None:
        log.warning("mode_file.refused", reason=why)
        self.recorder.append("mode_refused", source=source, detail=why, data={"reason": why}, commit=True)

    async def apply_mode_file(self, source: str = "mode_file", force: bool = False) -> None:
        """Apply the mode file when it was written (or ``force``: SIGUSR1)."""
        mf = self.mode_file
        if mf is None:
            if force:
                self._mode_file_refused(source, "no mode file configured")
            return
        r = mf.poll(force)
        if r is None:
            return
        if r.problem:
            self._mode_file_refused(source, r.problem)
            return
        if r.text is None:
            if force:
                log.warning("mode_file.missing", path=str(mf.path))
            return
        if not is_mode(r.text):
            self.sync_mode_file()
            self._mode_file_refused(
                source, f"mode file {mf.path}: expected observe|shadow|control, got {r.text[:32]!r}"
            )
            return
        with contextlib.suppress(ValueError):
            await self.set_mode(r.text, source, user=r.owner)

    async def watch_mode_file(self, period_s: float) -> None:
        """Apply the mode file whenever it is written (polled every ``period_s`` wall seconds)."""
        while True:
            await asyncio.sleep(period_s)
            try:
                await self.apply_mode_file()
            except Exception:
                log.exception("mode_file.watch_failed")

    async def observe_now(self) -> None:
        """``SIGUSR2``: hands off."""
        with contextlib.suppress(ValueError):
            await self.set_mode("observe", "SIGUSR2", user=None, reason="hands off by signal")


def _log(records: tuple[ModeRecord, ...], user: str | None) -> None:
    for rec in records:
        data = rec.data
        if rec.kind == "mode_change":
            log.info("mode.changed", mode=data["to"], previous=data["from"], source=rec.source, user=user,
                     reason=data.get("reason", ""), rearmed=bool(data.get("rearmed")))  # fmt: skip
        elif rec.kind == "mode_refused" and "pending" in data:
            log.info("mode.pending" if data["pending"] else "mode.pending_withdrawn",
                     requested=data.get("requested"), reason=data.get("reason"), mode=rec.mode)  # fmt: skip
        elif rec.kind == "mode_refused":
            log.warning("mode.refused", mode=data.get("requested"), source=rec.source, user=user,
                        reason=data.get("reason"), start=bool(data.get("start")))  # fmt: skip


def carried_disarm(journal: Any, *, max_archives: int = 3) -> tuple[str, bool]:
    """A disarming no operator has re-armed since, from the journal (``Journal``): the last
    ``DISARMING_KINDS`` entry with no ``mode_change`` marked ``rearmed`` after it. When the
    file holds neither (it was rotated since), the archive its ``journal_rotated`` entry
    names is looked at, and so on (at most ``max_archives``).

    Returns (why, not_ready): ``why`` names the entry ('' = armed); ``not_ready``: it
    keeps ``/readyz`` 503 (a lost journal). Never raises (a journal that cannot be read
    here is refused at open, long before; an archive that cannot be read ends the search).
    """
    from potline.journal import Journal

    j, opened = journal, []
    try:
        for _ in range(max_archives + 1):
            last = j.last(DISARMING_KINDS)
            after = None if last is None else last.id
            if any(e.data.get("rearmed") for e in j.query(kinds=["mode_change"], after_id=after)):
                return "", False
            if last is not None:
                what = {"unclean_shutdown": "an unclean stop", "journal_lost": "the journal file lost"}.get(
                    last.kind, last.kind)  # fmt: skip
                where = "" if j is journal else f" in {j.path.name}"
                why = (f"disarmed by {what} (journal id {last.id}{where}, {last.ts_utc}: {str(last.detail)[:160]}) "
                       "and not re-armed by an operator since")  # fmt: skip
                return why, last.kind in _NOT_READY_KINDS
            rot = j.query(kinds=["journal_rotated"], limit=1)
            name = rot[0].data.get("archive") if rot else None
            if not isinstance(name, str) or "/" in name:
                return "", False
            j = Journal(j.path.parent / name, readonly=True)
            opened.append(j)
    except Exception:
        log.exception("mode.carried_disarm_failed")
    finally:
        for a in opened:
            with contextlib.suppress(Exception):
                a.close()
    return "", False
