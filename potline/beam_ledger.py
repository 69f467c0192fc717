"""The beam ledger: the controller's intended beam offsets, kept on disk so that a daemon
restart (``kill -9`` included) cannot lose a beam restore (issue 15, item 2).

What is kept is ``PotController.beam_intent()``: per cell, a quench restore still owed
(pre-AE position, AE state, restore time, strokes in flight) or a restore handed over to
resistance control. It changes only around AEs, so the file is rewritten only then.

File: ``<state_dir>/beam_ledger.json``, one JSON object::

    {"format": "potline-beam-ledger", "version": 1, "plant": <plant name>, "n_cells": n,
     "saved_unix": <wall time [s]>, "saved_monotonic": <CLOCK_MONOTONIC [s]>,
     "boot_id": <kernel boot id>, "sha256": <hex digest of the canonical intent>,
     "ack_base": "plc_counters" | "bridge", "intent": {...}}

  ``ack_base`` says what the intent's acknowledgement positions (``ack_mm``) are counted
  in: ``plc_counters`` when the bridge that wrote it reported the PLCs' own cumulative
  counters (``BridgePlant.acks_are_plc_counters``: no PLC restart seen in that run), so a
  restarted daemon's bridge reads the same numbers for the same beam; ``bridge`` (or no
  key) otherwise. Only a ``plc_counters`` ledger is reconciled as the same base;

* written atomically: a temporary file in the same directory, ``fsync``, ``os.replace``,
  ``fsync`` of the directory: after a crash the file is the old ledger or the new one,
  never a mixture (a killed writer's temporary file is removed at the next load); only
  when the intent's cells changed since the last write;
* bounded: one entry per cell with something owed (texts cut at 200 characters), and a
  file larger than ``MAX_BYTES`` is refused;
* a ledger that cannot be used (not JSON, another format or plant, another cell count, a
  checksum that does not match, a key the controller refuses) is never fatal: the daemon
  starts with an empty ledger and an alarm whose text names the file and what was wrong;
  the bad file is kept beside it as ``<name>.corrupt`` for inspection;
* a write that fails (disk full, read-only) is reported, not raised: the controller runs
  on; the previous ledger stays in place.

Daemon wiring (two calls; ``potline.daemon`` owns them):

1. At start, on the first measurements the bridge reads (in ``_ModePlant.read``, before
   ``as_if_remote``: the reconciliation needs the PLCs' real ``cell_remote``)::

       ledger = BeamLedger(state_dir / LEDGER_NAME, plant=layout.plant, n_cells=layout.n_cells)
       res = ledger.restore_into(controller, meas, meas.t_s, plant_s_per_wall_s=clock_speed(clock))
       if res.alarm:   # journal an alarm entry (kind "beam_ledger_unusable") with res.alarm

   ``restore_into`` loads the file and hands the intent to
   ``controller.restore_beam_intent(intent, meas, now, gap_s=..., same_ack_base=...)``,
   which reconciles it with these acknowledgements; its events (``beam_intent_restored``,
   maybe ``beam_restore_handed_over``) come out with the first step's commands. The
   bridge reports the PLCs' own cumulative counters (``plc_bridge.plant``: each total
   starts at its PLC's first reading, which a daemon restart does not reset), so the
   daemon passes ``same_ack_base=bridge.acks_are_plc_counters`` (True on a fresh bridge)
   and the ledger's ``ack_base`` must say the same: every restore is then reconciled
   exactly (``tests/potline/test_beam_ledger_closed_loop.py``). Either not so (a PLC
   restarted during the run that wrote the ledger: its totals continue past the reset):
   a stroke in flight at the kill, or what a PLC did in local while nobody counted, can
   only be judged from R, and is handed over with an alarm when it cannot be.

2. Every cycle, after ``controller.step`` and **before** the commands are written (a
   move must be on disk before it can reach a PLC, so a kill between the two leaves a move
   "in doubt" that the controller judges, never one it does not know of)::

       res = ledger.save(controller.beam_intent(), acks_are_plc_counters=bridge.acks_are_plc_counters)
       if res.new_error:   # journal an alarm (kind "beam_ledger_write_failed") with res.error
       if res.recovered:   # journal that it is written again

   Unchanged intent costs one JSON encoding and no I/O.

Also for the daemon: on the bridge event ``plc_restart_seen`` (index: the room) call
``controller.plc_restarted(layout.room_cells(room), now)``; build the controller with
``beam=BeamIntentSettings(ack_timeout_s=2 * safety.ack_timeout_s)`` (a move is never
re-issued while the bridge may still send the first).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

__all__ = ["FORMAT", "LEDGER_NAME", "MAX_BYTES", "BeamLedger", "IntentHolder", "LedgerLoad", "LedgerSave"]

log = structlog.get_logger("potline.beam_ledger")

#: the file's name in the daemon's state directory
LEDGER_NAME = "beam_ledger.json"
#: the ``format`` field of a ledger file
FORMAT = "potline-beam-ledger"
#: ledger file format version
VERSION = 1
#: largest ledger accepted or written [bytes] (660 cells each owing a restore take ~0.4 MB)
MAX_BYTES = 8 * 1024 * 1024
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
#: ``ack_base`` values: the PLCs' own counters, or totals of one bridge's own
ACK_PLC = "plc_counters"
ACK_BRIDGE = "bridge"


class IntentHolder(Protocol):
    """What the ledger needs of a controller (``potctl.controller.PotController``)."""

    def beam_intent(self) -> dict[str, Any]: ...

    def restore_beam_intent(
        self,
        data: dict[str, Any],
        meas: Any = None,
        now: float | None = None,
        *,
        gap_s: float | None = None,
        same_ack_base: bool = False,
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class LedgerLoad:
    """The outcome of reading the ledger at start.

    Attributes:
        intent: the beam intent to restore (None: none, or not usable).
        alarm: why the file could not be used, naming it (None: fine or absent).
        gap_wall_s: wall seconds since it was written (None: unknown).
        cells: how many cells it lists.
        plc_counters: its acknowledgement positions are the PLCs' own counters
            (``ack_base`` ``plc_counters``).
    """

    intent: dict[str, Any] | None
    alarm: str | None = None
    gap_wall_s: float | None = None
    cells: int = 0
    plc_counters: bool = False


@dataclass(frozen=True, slots=True)
class LedgerSave:
    """The outcome of one ``save``.

    Attributes:
        written: the file was rewritten.
        error: why the last write failed, naming the file (None: it did not).
        new_error: this save is the first failure after a good write (journal it once).
        recovered: this save wrote after failures.
    """

    written: bool
    error: str | None = None
    new_error: bool = False
    recovered: bool = False


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def _boot_id() -> str | None:
    try:
        return _BOOT_ID.read_text().strip() or None
    except OSError:
        return None


class BeamLedger:
    """The beam ledger file (see the module docstring).

    Args:
        path: the ledger file (``<state_dir>/beam_ledger.json``); its directory is
            created on the first write if missing.
        plant: plant name (a ledger of another plant is refused).
        n_cells: cells of this plant (a ledger of another size is refused).
        max_bytes: largest file read or written [bytes].
    """

    def __init__(self, path: str | os.PathLike[str], *, plant: str, n_cells: int, max_bytes: int = MAX_BYTES) -> None:
        self.path = Path(path)
        self.plant = str(plant)
        self.n_cells = int(n_cells)
        self.max_bytes = int(max_bytes)
        self._last_cells: str | None = None
        self._last_base: str | None = None
        #: why the last write failed (None: it did not)
        self.error: str | None = None
        self.writes = 0

    # ------------------------------------------------------------------ read

    def load(self) -> LedgerLoad:
        """Read the ledger; never raises. A missing file is an empty ledger (first start);
        an unusable one is an empty ledger plus an alarm, the file moved to ``.corrupt``."""
        p = self.path
        self._remove_stale_temp_files()
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            log.info("beam_ledger.absent", path=str(p))
            return LedgerLoad(None)
        except OSError as exc:
            return self._unusable(f"cannot be read: {exc.strerror or exc}", move=False)
        if size > self.max_bytes:
            return self._unusable(f"is {size} bytes, more than a beam ledger ({self.max_bytes} bytes at most)")
        try:
            raw = p.read_bytes()
        except OSError as exc:
            return self._unusable(f"cannot be read: {exc.strerror or exc}", move=False)
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            return self._unusable(f"is not JSON ({exc}); a write cut short leaves no such file, so it was damaged")
        problem = self._check_doc(doc)
        if problem:
            return self._unusable(problem)
        intent = doc["intent"]
        gap = self._gap(doc)
        n = len(intent.get("cells", []))
        self._last_cells = _canonical(intent.get("cells"))
        base = doc.get("ack_base", ACK_BRIDGE)
        self._last_base = base
        log.info("beam_ledger.loaded", path=str(p), cells=n, gap_wall_s=None if gap is None else round(gap, 1),
                 ack_base=base)  # fmt: skip
        return LedgerLoad(intent, None, gap, n, plc_counters=base == ACK_PLC)

    def _remove_stale_temp_files(self) -> None:
        """Temporary files of writers killed mid-write (never the ledger itself)."""
        with contextlib.suppress(OSError):
            for tmp in self.path.parent.glob(f".{self.path.name}.*.tmp"):
                with contextlib.suppress(OSError):
                    tmp.unlink()
                    log.info("beam_ledger.stale_temp_removed", path=str(tmp))

    def _check_doc(self, doc: Any) -> str:
        """Why ``doc`` is not a ledger of this plant ('' = it is)."""
        if not isinstance(doc, dict):
            return f"is not a JSON object (got {type(doc).__name__})"
        if doc.get("format") != FORMAT:
            return f"key 'format': expected {FORMAT!r}, got {doc.get('format')!r}"
        if doc.get("version") != VERSION:
            return f"key 'version': expected {VERSION}, got {doc.get('version')!r}"
        if doc.get("plant") != self.plant:
            return f"key 'plant': expected {self.plant!r} (this plant), got {doc.get('plant')!r}"
        if doc.get("n_cells") != self.n_cells:
            return f"key 'n_cells': expected {self.n_cells} (this plant), got {doc.get('n_cells')!r}"
        if doc.get("ack_base", ACK_BRIDGE) not in (ACK_PLC, ACK_BRIDGE):
            return f"key 'ack_base': expected {ACK_PLC!r} or {ACK_BRIDGE!r}, got {doc.get('ack_base')!r}"
        intent = doc.get("intent")
        if not isinstance(intent, dict):
            return f"key 'intent': expected an object, got {type(intent).__name__}"
        if not isinstance(intent.get("cells"), list):
            return "key 'intent.cells': expected a list"
        try:
            digest = hashlib.sha256(_canonical(intent).encode()).hexdigest()
        except ValueError as exc:
            return f"key 'intent': {exc}"
        if doc.get("sha256") != digest:
            return f"key 'sha256': does not match the intent (expected {digest}, got {doc.get('sha256')!r}): edited or damaged"
        return ""

    def _gap(self, doc: dict[str, Any]) -> float | None:
        """Wall seconds since ``doc`` was written (monotonic within one boot, else wall time)."""
        mono, unix, boot = doc.get("saved_monotonic"), doc.get("saved_unix"), doc.get("boot_id")
        if isinstance(mono, (int, float)) and boot is not None and boot == _boot_id():
            return max(time.monotonic() - float(mono), 0.0)
        if isinstance(unix, (int, float)) and math.isfinite(float(unix)):
            return max(time.time() - float(unix), 0.0)
        return None

    def _unusable(self, why: str, *, move: bool = True) -> LedgerLoad:
        """An empty ledger and an alarm naming the file; the bad file is kept as ``.corrupt``."""
        p = self.path
        msg = f"beam ledger {p} {why}: starting with an empty ledger (owed beam restores, if any, are lost)"
        if move:
            aside = p.with_name(p.name + ".corrupt")
            try:
                os.replace(p, aside)
                msg += f"; the file was kept as {aside}"
            except OSError as exc:
                msg += f"; it could not be moved aside ({exc.strerror or exc})"
        log.error("beam_ledger.unusable", path=str(p), problem=why)
        return LedgerLoad(None, msg)

    def restore_into(
        self,
        controller: IntentHolder,
        meas: Any = None,
        now: float | None = None,
        *,
        plant_s_per_wall_s: float = 1.0,
        same_ack_base: bool = False,
    ) -> LedgerLoad:
        """``load`` and hand the intent to ``controller.restore_beam_intent``; never raises.
        Intent the controller refuses is an unusable ledger (alarm naming the file and key).

        Args:
            controller: the freshly built controller.
            meas: the first measurements with the PLCs' real ``cell_remote`` (before any
                as-if-remote view of observe/shadow), and ``now`` their plant time [s];
                None: reconciled with the measurements of the controller's next step.
            now: plant time of ``meas`` [s].
            plant_s_per_wall_s: plant seconds per wall second (the daemon clock's speed):
                scales the time the ledger sat on disk into plant time.
            same_ack_base: this run's acknowledgement totals are the PLCs' own counters
                (``BridgePlant.acks_are_plc_counters``). The intent is reconciled as the
                same base only when the ledger's ``ack_base`` says so too.
        """
        res = self.load()
        if res.intent is None:
            return res
        gap = None if res.gap_wall_s is None else res.gap_wall_s * plant_s_per_wall_s
        same = bool(same_ack_base and res.plc_counters)
        if same_ack_base and not res.plc_counters:
            log.info("beam_ledger.not_same_base", path=str(self.path),
                     why="written while the acknowledgement totals were not the PLCs' counters")  # fmt: skip
        try:
            controller.restore_beam_intent(res.intent, meas, now, gap_s=gap, same_ack_base=same)
        except ValueError as exc:
            return self._unusable(f"key intent.{exc}")
        return res

    # ------------------------------------------------------------------ write

    def save(self, intent: dict[str, Any], *, acks_are_plc_counters: bool = False) -> LedgerSave:
        """Write ``intent`` (``PotController.beam_intent()``) when its cells (or the
        acknowledgements' base) changed since the last write; atomic (see the module
        docstring). A failing write is reported in the result (and logged), not raised.

        Args:
            intent: the controller's beam intent.
            acks_are_plc_counters: the positions in it are the PLCs' own counters
                (``BridgePlant.acks_are_plc_counters``); written as ``ack_base``.

        Raises:
            ValueError: ``intent`` is not JSON-able (NaN, ...): a programming error.
        """
        cells = _canonical(intent.get("cells"))
        base = ACK_PLC if acks_are_plc_counters else ACK_BRIDGE
        if cells == self._last_cells and base == self._last_base and self.error is None:
            return LedgerSave(False)
        body = _canonical(intent)
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "plant": self.plant,
            "n_cells": self.n_cells,
            "saved_unix": time.time(),
            "saved_monotonic": time.monotonic(),
            "boot_id": _boot_id(),
            "sha256": hashlib.sha256(body.encode()).hexdigest(),
            "ack_base": base,
            "intent": intent,
        }
        data = (json.dumps(doc, sort_keys=True, allow_nan=False, ensure_ascii=False, indent=1) + "\n").encode()
        failed_before = self.error is not None
        if len(data) > self.max_bytes:
            return self._failed(f"would be {len(data)} bytes, more than {self.max_bytes}", failed_before)
        try:
            self._write_atomically(data)
        except OSError as exc:
            return self._failed(f"cannot be written: {exc.strerror or exc}", failed_before)
        self._last_cells = cells
        self._last_base = base
        self.error = None
        self.writes += 1
        if failed_before:
            log.info("beam_ledger.written_again", path=str(self.path))
        return LedgerSave(True, recovered=failed_before)

    def _failed(self, why: str, failed_before: bool) -> LedgerSave:
        self.error = f"beam ledger {self.path} {why}; the previous ledger stays in place"
        if not failed_before:
            log.error("beam_ledger.write_failed", path=str(self.path), problem=why)
        return LedgerSave(False, self.error, new_error=not failed_before)

    def _write_atomically(self, data: bytes) -> None:
        p = self.path
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, p)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        with contextlib.suppress(OSError):  # the rename itself durable (not on every filesystem)
            dfd = os.open(p.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
