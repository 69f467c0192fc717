"""The daemon's side of the journal: append, commit once per cycle, rotate, never raise.

``JournalRecorder`` stamps every entry with the plant, the running mode and the plant
time, counts commits and failures in the metrics, says in ``/readyz`` when the journal
cannot take entries (they stay held in memory and are retried every commit), calls
``on_failure`` when a commit fails (the daemon then stops commanding: no writes without
an audit trail) and archives the file past ``journal.rotate_mb``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from potline.journal import Event, Journal
    from potline.metrics import DaemonMetrics, HealthState

__all__ = ["JournalRecorder"]

log = structlog.get_logger("potline.daemon")


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
            return False
        if self.failing:
            log.info("journal.commit_recovered", committed=len(batch))
            self.failing = False
            self.health.detail.pop("journal", None)
        self.metrics.journal_commit.labels(self.name).observe(time.perf_counter() - t0)
        for e in batch:
            self.metrics.journal_entries.labels(self.name, e.category).inc()
        if self.rotate_mb is not None and j.size_bytes() > self.rotate_mb * 1e6:
            self._rotate(j)
        return True

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

    def close(self, reason: str, data: dict[str, Any]) -> None:
        """Journal ``daemon_stop``, commit, log what could not be written, close the file."""
        j = self.journal
        if j is None:
            return
        self.append("daemon_stop", source="daemon", detail=f"clean stop ({reason})", data=data)
        self.commit()
        if j.pending:  # the journal cannot take them (disk full, size cap): the log keeps them
            for ev in j.pending_events():
                log.error("journal.unwritten", **{k: v for k, v in ev.as_dict().items() if k != "id"})
        log.info("journal.closed", committed=j.committed, last_id=j.last_id, pending=j.pending, path=str(j.path))
        with contextlib.suppress(Exception):
            j.close()
