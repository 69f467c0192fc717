"""The daemon's side of the journal: append, commit once per cycle, rotate, never raise.

``JournalRecorder`` stamps every entry with the plant, the running mode and the plant
time, counts commits and failures in the metrics, says in ``/readyz`` when the journal
cannot take entries (they stay held, in memory or spilled to ``<journal>.held``, and are
retried every commit), calls ``on_failure`` when a commit fails (the daemon then stops
commanding: no writes without an audit trail), ``on_loss`` once per loss of the journal
file (deleted, moved, replaced under the daemon: the daemon disarms control until an
operator re-arms it) and ``on_alarm`` for the entries the journal writes about itself
(``journal_lost``, ``journal_tampered``, ``journal_entries_dropped``), archives the file
past ``journal.rotate_mb``, logs the chain's head (``journal.head``) every few minutes
and at close (an anchor kept outside the file for ``potline events --verify --anchor``),
and at close says whether every entry was committed (the daemon's exit status).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from potline.journal import Event, Journal, JournalLoss
    from potline.metrics import DaemonMetrics, HealthState

__all__ = ["JOURNAL_ALARM_KINDS", "JournalRecorder"]

log = structlog.get_logger("potline.daemon")

#: entries the journal writes about itself that are alarms (they never pass the event routing)
JOURNAL_ALARM_KINDS = frozenset({"journal_lost", "journal_tampered", "journal_entries_dropped"})
#: the chain's head is logged this often [wall s] (and at close)
HEAD_LOG_EVERY_S = 300.0


class JournalRecorder:
    """Journal entries of a running daemon (see the module docstring).

    Args:
        name: instance name (metric label).
        plant: plant name stamped on every entry.
        metrics, health: the daemon's metrics and health state.
        mode: the running mode, stamped on entries that do not give their own.
        now: plant time [s], stamped on entries that do not give their own.
        rotate_mb: archive the file once it passes this size [MB] (None: never).
    """

    def __init__(self, name: str, plant: str, metrics: DaemonMetrics, health: HealthState, *,
                 mode: Callable[[], str], now: Callable[[], float], rotate_mb: float | None = None) -> None:  # fmt: skip
        self.name = name
        self.plant = plant
        self.metrics = metrics
        self.health = health
        self.mode = mode
        self.now = now
        self.rotate_mb = rotate_mb
        self.journal: Journal | None = None
        #: the last commit failed (entries are held)
        self.failing = False
        #: called after a failed commit (from the event loop's thread)
        self.on_failure: Callable[[], None] | None = None
        #: called once per loss of the journal file (after ``on_failure`` when the commit failed on it)
        self.on_loss: Callable[[JournalLoss], None] | None = None
        #: called with (kind, detail, data) for each entry of ``JOURNAL_ALARM_KINDS`` the journal wrote itself
        self.on_alarm: Callable[[str, str, dict[str, Any]], None] | None = None
        self._head_log_mono = -float("inf")

    def append(self, kind: str, *, commit: bool = False, **fields: Any) -> Event | None:
        """Append (and maybe commit) one entry; never raises (an error is logged and counted)."""
        j = self.journal
        if j is None:
            return None
        fields.setdefault("plant", self.plant)
        fields.setdefault("mode", self.mode())
        if "t_plant_s" not in fields:
            with contextlib.suppress(Exception):
                fields["t_plant_s"] = float(self.now())
        try:
            ev = j.append(kind=kind, **fields)
        except Exception:
            log.exception("journal.append_failed", kind=kind)
            return None
        if commit:
            self.commit()
        return ev

    def commit(self) -> bool:
        """Commit what is pending; False when the journal cannot take it (entries stay held)."""
        j = self.journal
        if j is None or not j.pending:
            return True
        t0 = time.perf_counter()
        try:
            batch = j.commit()
        except Exception as exc:
            self.metrics.journal_errors.labels(self.name).inc()
            if not self.failing:
                log.error("journal.commit_failed", error=f"{type(exc).__name__}: {exc}", pending=j.pending,
                          path=str(j.path))  # fmt: skip
            self.failing = True
            self.health.detail["journal"] = f"not writable ({type(exc).__name__}: {exc}); {j.pending} entries held"
            if self.on_failure is not None:
                self.on_failure()
            self._check_lost(j)
            return False
        if self.failing:
            log.info("journal.commit_recovered", committed=len(batch))
            self.failing = False
            self.health.detail.pop("journal", None)
        self.metrics.journal_commit.labels(self.name).observe(time.perf_counter() - t0)
        for e in batch:
            self.metrics.journal_entries.labels(self.name, e.category).inc()
            if e.kind in JOURNAL_ALARM_KINDS:
                self._alarm(e.kind, e.detail, e.data)
        self._check_lost(j)
        if self.rotate_mb is not None and j.size_bytes() > self.rotate_mb * 1e6:
            self._rotate(j)
        now = time.monotonic()
        if now - self._head_log_mono >= HEAD_LOG_EVERY_S:
            self._head_log_mono = now
            self.log_head(j)
        return True

    def _check_lost(self, j: Journal) -> None:
        """Report a loss of the journal file once (``Journal.take_lost``)."""
        try:
            loss = j.take_lost()
        except Exception:
            log.exception("journal.take_lost_failed")
            return
        if loss is None:
            return
        log.error("journal.loss_seen", what=loss.what, detail=loss.detail, first_id=loss.first_id, last_id=loss.last_id,
                  recovered=loss.recovered, entry_id=loss.entry_id, moved_aside=loss.moved_aside,
                  path=str(j.path))  # fmt: skip
        self._alarm("journal_lost", f"journal file {loss.what}: {loss.detail}",
                    {"what": loss.what, "first_id": loss.first_id, "last_id": loss.last_id,
                     "recovered": loss.recovered, "entry_id": loss.entry_id})  # fmt: skip
        if self.on_loss is not None:
            try:
                self.on_loss(loss)
            except Exception:
                log.exception("journal.on_loss_failed")

    def _alarm(self, kind: str, detail: str, data: dict[str, Any]) -> None:
        if self.on_alarm is not None:
            try:
                self.on_alarm(kind, detail, dict(data or {}))
            except Exception:
                log.exception("journal.on_alarm_failed", kind=kind)

    def log_head(self, j: Journal | None = None) -> None:
        """Log the chain's head (id, hash): an anchor kept outside the file (``--verify --anchor ID:HASH``)."""
        j = j if j is not None else self.journal
        if j is None:
            return
        with contextlib.suppress(Exception):
            head_id, head_hash = j.head
            log.info("journal.head", head_id=head_id, head_hash=head_hash, path=str(j.path))

    def _rotate(self, j: Journal) -> None:
        """Archive the journal file and go on in a fresh one (``journal.rotate_mb``)."""
        try:
            archive = j.rotate()
        except Exception as exc:
            log.error("journal.rotate_failed", error=f"{type(exc).__name__}: {exc}", path=str(j.path))
            return
        log.info("journal.rotated", archive=str(archive), last_id=j.last_id)
        self.append("journal_rotated", source="daemon", detail=f"entries up to id {j.last_id} are in {archive.name}",
                    data={"archive": archive.name, "last_id": j.last_id})  # fmt: skip

    def close(self, reason: str, data: dict[str, Any]) -> bool:
        """Journal ``daemon_stop``, commit, close the file; False when not every entry appended
        since the start is in the journal (held in ``<journal>.held`` for the next start, or
        dropped): the stop was unclean and the daemon exits non-zero."""
        j = self.journal
        if j is None:
            return True
        self.append("daemon_stop", source="daemon", detail=f"clean stop ({reason})", data=data)
        self.commit()
        held = j.pending_events() if j.unwritten else []
        try:
            ok = bool(j.close())
        except Exception:
            log.exception("journal.close_failed", path=str(j.path))
            ok = False
        self._check_lost(j)
        self.log_head(j)
        if not ok:
            from potline.journal import spill_path

            spill = spill_path(j.path)
            kinds: dict[str, int] = {}
            for ev in held:
                kinds[ev.kind] = kinds.get(ev.kind, 0) + 1
            log.error("journal.unclean_stop", unwritten=len(held), dropped=j.dropped, kinds=kinds,
                      held_file=str(spill) if spill.exists() else None, path=str(j.path),
                      hint="the next start folds the held entries in")  # fmt: skip
            if held and not spill.exists():  # nowhere else to keep them: the log has them
                for ev in held:
                    log.error("journal.unwritten", **{k: v for k, v in ev.as_dict().items() if k != "id"})
        log.info("journal.closed", committed=j.committed, last_id=j.last_id, unwritten=len(held) if not ok else 0,
                 all_committed=ok, path=str(j.path))  # fmt: skip
        return ok
