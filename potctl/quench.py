"""Automatic AE quench: feed plus anode-beam pumping, with move limits and escalation.

Sequence per cell (docs/domain.md §2 "Quench"), started when the detector confirms an AE:

1. dump ``feed_shots`` at once (alumina is what the AE lacks) — with
   ``feed_on_first_sample`` already on the first sample above the threshold, one scan
   before the AE is confirmed (``pre_feed``); if the next samples do not confirm it, the
   dose stays a one-off (``lapse``) and no beam moves;
2. after ``lower_delay_s`` lower the beam ``lower_mm`` (local shorts sweep the gas
   film away), then pump: strokes of ``pump_amplitude_mm`` up and down every
   ``pump_period_s``, at most ``max_pumps`` strokes, never deeper than
   ``max_total_down_mm`` below the pre-AE position;
3. a second dose of ``refeed_shots`` if the AE still burns after ``refeed_after_s``;
4. once the voltage is back, stop pumping; ``restore_delay_s`` after the AE ends, move
   the beam back to its pre-AE position (from the PLC's beam acknowledgement);
5. if the AE persists beyond ``escalate_after_s``: stop automatic beam action and raise
   an alarm for manual intervention (green poling).

The beam is never moved on a cell in tapping or anode change (``blocked``): strokes
are skipped and the restore waits until the operation is over. Feeding continues.

Local control (the potroom PLC's own automation in charge, ``cell_remote`` False):

* a cell handed to local mid-sequence stops its sequence: the PLC's local AE kill and
  ACD control own its beam from then on; a restore it owes is ``park``ed (see "Beam
  intent" below), one it does not owe is ``release``d;
* an AE that started while the cell was in local (the PLC's kill already fed and
  pumped) and still burns when the controller takes the cell back is ``adopt``ed: one
  AE dose at once (alumina is what the AE lacks; an extra dose is harmless), the
  second dose and the escalation alarm timed from the AE's start, but **no beam
  pumping** — the controller does not know what the PLC's kill did to the anodes in
  the meantime, and stacking a second pumping sequence on it could short the anodes to
  the metal. After the AE ends the beam is restored to where it was before the AE (the
  acknowledged position at its onset), as the controller does after its own quench; a
  PLC that already put the beam back leaves nothing to restore.

Beam intent (issue 15: a restore must survive faults). The quench owes a restore from
its first stroke (or the adoption of a PLC kill) until the PLC's cumulative beam
acknowledgement shows the beam back at its pre-AE position (``target``, in acknowledgement
coordinates) within ``restore_tolerance_mm``:

* positions are acknowledged positions plus the controller's own commanded moves not yet
  acknowledged (``inflight_mm``, kept by ``PotController``); depth limits and the restore
  are computed from them, never from what was commanded;
* a restore is a confirmed operation: the cell stays ``RESTORING`` (``busy``) until the
  acknowledgements show it done; a restore that was lost (link drop, ack timeout, a
  queue cleared when the room left remote) is re-issued (event ``beam_restore_reissued``)
  from the acknowledged position, at most ``restore_max_attempts`` times;
* a link drop (no data) is not a hand-back to local: the sequence waits, nothing moves;
* a room switched to local (good data, not remote) parks the owed restore: back in
  remote within ``local_grace_s`` (a PLC restart's moment in local, a brief switch) it
  is made from the acknowledged position, whatever the PLC's kill did meanwhile;
* the restore is handed to resistance control (event ``beam_restore_handed_over``, an
  alarm) instead of being made when the room stays in local longer than
  ``local_grace_s`` (the PLC's ACD control owns the beam), when it is owed longer than
  ``restore_max_age_s`` (anode burn-off and metal rise have made the pre-AE position
  stale), when the beam is further from the target than any quench moves it, when
  ``restore_max_attempts`` commands went unacknowledged, or when a move in doubt (a PLC
  or daemon restart with a command in flight) or a position nobody counted cannot be
  judged from the resistance. Resistance control then gets the cell with its AE lock
  lifted and its post-operation correction window open (``ResistanceController.take_over``).
  A handed-over restore stays recorded (``handed``) until resistance control resolved it
  (moved the beam, or found R within 3 deadbands of its target; ``beam_restore_resolved``);
  it is never forgotten;
* a restore owed when nothing is sent (observe mode) waits: the intent is kept and
  reconciled from the acknowledgements once commands go out again (or ages out);
* a move in doubt (``doubt_mm``: commanded, and the acknowledgement total cannot say
  whether it happened), or a position that must be confirmed (``verify``: the cell was
  in local control while nobody counted its moves), is judged when the cell is calm from
  the pseudo-resistance: R now against the alumina-rich R the slope tracker held at the
  pre-AE position when the AE began (``r_ref_uohm``; after the AE's overfeed the bath is
  rich again), plus what each hypothesis puts the beam below that position
  (``resolve_doubt``). R right before an AE is no reference (the bath is lean then, 2-3 µΩ
  high), nor is resistance control's target (off by up to ±3 µΩ, ~10 mm, on the twin
  during an AE storm): without a rich R the restore is handed over. In a storm the slope
  tracker, reset by every AE, seldom holds one: restarts resolve exactly only when the
  acknowledgements continue across them (``same_ack_base``). Until judged, no stroke or
  restore is made on that cell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from potctl.config import QuenchConfig

__all__ = ["ACTIVE", "ESCALATED", "IDLE", "RESTORING", "STATE_NAMES", "BeamIntentSettings", "QuenchController"]

IDLE = 0
ACTIVE = 1
ESCALATED = 2
RESTORING = 3
#: names of the states in exported beam intent
STATE_NAMES = {ACTIVE: "active", ESCALATED: "escalated", RESTORING: "restoring"}
_STATE_OF_NAME = {v: k for k, v in STATE_NAMES.items()}

Event = tuple[str, int, str]


@dataclass(frozen=True, slots=True)
class BeamIntentSettings:
    """How owed beam restores are reconciled with the PLC's acknowledgements.

    Attributes:
        ack_timeout_s: a commanded beam move not seen in the acknowledgements within this
            is counted as not made [s]; keep it above the bridge's ``ack_timeout_s`` (after
            which the bridge gives up on a command) so a move is never re-issued while the
            bridge may still send the first one.
        restore_tolerance_mm: a restore is done when the acknowledged position is this
            close to the pre-AE position [mm].
        restore_max_attempts: restore commands that may go unconfirmed before the restore
            is handed over to resistance control.
        restore_max_age_s: a restore owed longer than this (since the first stroke) is
            handed over: the pre-AE position is stale [s].
        restore_slack_mm: a beam further than ``max_total_down_mm`` + this from its
            pre-AE position was moved by something else: handed over [mm].
        doubt_min_uohm: a move in doubt shifting R by less than this is not judged by R
            (handed over) [µΩ].
        doubt_fit_uohm: R must match the chosen hypothesis within this, and lie outside the
            middle half between two hypotheses [µΩ].
        doubt_settle_s: a move in doubt is judged no earlier than this after the doubt
            arose, on R calm since (the smoothed R has followed the move by then) [s].
        local_grace_s: a room back in remote within this keeps its owed restores (made
            from the acknowledged position, e.g. after a PLC restart's moment in local);
            in local longer, they are handed over [s].
    """

    ack_timeout_s: float = 60.0
    restore_tolerance_mm: float = 0.5
    restore_max_attempts: int = 3
    restore_max_age_s: float = 7200.0
    restore_slack_mm: float = 5.0
    doubt_min_uohm: float = 1.0
    doubt_fit_uohm: float = 2.0
    doubt_settle_s: float = 20.0
    local_grace_s: float = 120.0


def _num(d: dict[str, Any], key: str, where: str, *, none: float | None = None) -> float:
    """A finite number from exported intent (``none``: the value of a JSON null; None: not allowed)."""
    v = d.get(key)
    if v is None and none is not None:
        return none
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise ValueError(f"{where}.{key}: expected a finite number, got {v!r}")
    return float(v)


def _opt(x: float) -> float | None:
    """A float for JSON (None for NaN/inf)."""
    return float(x) if math.isfinite(x) else None


class QuenchController:
    """Per-cell quench state machine (NumPy state; the few active cells are handled in a loop).

    Args:
        n_cells: number of cells.
        cfg: quench settings.
        intent: how owed restores are reconciled (see the module docstring).
    """

    def __init__(self, n_cells: int, cfg: QuenchConfig | None = None, intent: BeamIntentSettings | None = None) -> None:
        self.cfg = cfg or QuenchConfig()
        self.intent = intent or BeamIntentSettings()
        n = int(n_cells)
        self.n = n
        self.state = np.zeros(n, dtype=np.int8)
        self.t_start = np.full(n, np.nan)
        #: pre-AE beam position in acknowledgement coordinates: the restore's target [mm]
        self.pre_pos_mm = np.zeros(n)
        self.offset_mm = np.zeros(n)  # position relative to pre-AE after the last stroke [mm]
        self.pumps = np.zeros(n, dtype=np.int64)
        self.next_t = np.full(n, np.inf)
        self.refed = np.zeros(n, dtype=bool)
        self.restore_t = np.full(n, np.inf)
        self.lowered = np.zeros(n, dtype=bool)
        #: time of a first-sample AE feed awaiting confirmation (NaN: none)
        self.prefed_t = np.full(n, np.nan)
        #: time of the cell's last first-sample feed that was not confirmed [s]
        self.unconfirmed_t = np.full(n, -np.inf)
        #: AEs taken over from local control mid-AE: feed only, no pumping (see module docstring)
        self.adopted = np.zeros(n, dtype=bool)
        #: the sequence moved the beam (or adopted a PLC kill's): a restore is owed
        self.owes = np.zeros(n, dtype=bool)
        #: when the restore became owed (first stroke / AE start of an adoption) [s]
        self.owed_since = np.full(n, np.nan)
        #: restore commands issued for the current restore
        self.attempts = np.zeros(n, dtype=np.int64)
        #: a commanded move the acknowledgements cannot confirm nor deny (PLC/daemon restart) [mm]
        self.doubt_mm = np.zeros(n)
        self.doubt_t = np.full(n, np.nan)  # when it arose [s]
        #: alumina-rich pseudo-resistance at the pre-AE position (NaN: unknown) [µΩ]
        self.r_ref_uohm = np.full(n, np.nan)
        #: the position relative to the target must be confirmed by R before the restore
        self.verify = np.zeros(n, dtype=bool)
        #: owed restores of cells whose room went to local control: they wait there (no
        #: sequence runs) for ``local_grace_s``, then are handed over
        self.parked = np.zeros(n, dtype=bool)
        self.parked_t = np.full(n, np.nan)
        #: restores handed over to resistance control, not resolved yet
        self.handed = np.zeros(n, dtype=bool)
        self.handed_mm = np.zeros(n)  # the move owed at the handover [mm]
        self.handed_t = np.full(n, np.nan)  # when [s]
        self.handed_why: list[str] = [""] * n
        self.quenches = 0
        self.escalations = 0
        self.pre_feeds = 0
        self.pre_feeds_unconfirmed = 0
        self.adoptions = 0
        self.releases = 0
        self.reissues = 0
        self.handovers = 0
        self.moves_mm_total = np.zeros(n)

    @property
    def busy(self) -> np.ndarray:
        """Cells whose quench is not finished (ACD control and LVAE judging keep off)."""
        return self.state != IDLE

    @property
    def intent_cells(self) -> np.ndarray:
        """Cells with beam intent to remember: an owed restore or a handed-over one."""
        return np.flatnonzero(((self.state != IDLE) & self.owes) | self.handed)

    def pre_feed(self, cells: np.ndarray, t: float) -> np.ndarray:
        """First sample above the AE threshold on ``cells`` (not confirmed yet): returns the
        AE feed to dump now on the idle ones; ``start`` does not dose them again. A cell whose
        last such dose was not confirmed less than ``first_sample_holdoff_s`` ago waits for
        the confirmation instead (a spiky transmitter must not turn into a stream of doses)."""
        shots = np.zeros(self.n, dtype=np.int64)
        if not (self.cfg.enabled and self.cfg.feed_on_first_sample) or len(cells) == 0:
            return shots
        c = np.asarray(cells, dtype=np.int64)
        held = t - self.unconfirmed_t[c] < self.cfg.first_sample_holdoff_s
        c = c[(self.state[c] == IDLE) & np.isnan(self.prefed_t[c]) & ~held]
        self.prefed_t[c] = t
        shots[c] = self.cfg.feed_shots
        self.pre_feeds += c.size
        return shots

    def lapse(self, pending: np.ndarray) -> np.ndarray:
        """Cells fed on a first sample whose AE was not confirmed (``pending`` [n]: still
        above the threshold, unconfirmed): forget the dose; returns those cells."""
        gone = np.flatnonzero(~np.isnan(self.prefed_t) & ~pending & (self.state == IDLE))
        self.unconfirmed_t[gone] = self.prefed_t[gone]
        self.prefed_t[gone] = np.nan
        self.pre_feeds_unconfirmed += gone.size
        return gone

    def start(
        self, cells: np.ndarray, t: float, beam_pos_mm: np.ndarray, r_ref_uohm: np.ndarray | None = None
    ) -> np.ndarray:
        """Begin the sequence on ``cells`` (detected AEs); returns the shots to dump now.

        ``beam_pos_mm`` [n]: beam position now (acknowledged + own moves in flight) [mm];
        ``r_ref_uohm`` [n]: alumina-rich R at this position [µΩ] (NaN/None: unknown).
        """
        shots = np.zeros(self.n, dtype=np.int64)
        if not self.cfg.enabled or len(cells) == 0:
            return shots
        c = np.asarray(cells, dtype=np.int64)
        fresh = c[self.state[c] == IDLE]
        # a new AE during RESTORING keeps the original pre-AE position
        again = c[self.state[c] == RESTORING]
        self.pre_pos_mm[fresh] = beam_pos_mm[fresh]
        self.offset_mm[fresh] = 0.0
        self.owes[fresh] = False
        self.owed_since[fresh] = np.nan
        self.r_ref_uohm[fresh] = np.nan if r_ref_uohm is None else np.asarray(r_ref_uohm, dtype=float)[fresh]
        self.parked[again] = False  # (a parked cell back in remote: this AE is the controller's)
        self.parked_t[again] = np.nan
        for arr in (fresh, again):
            self.state[arr] = ACTIVE
            self.adopted[arr] = False
            self.t_start[arr] = t
            self.pumps[arr] = 0
            self.lowered[arr] = False
            self.refed[arr] = False
            self.attempts[arr] = 0
            self.next_t[arr] = t + self.cfg.lower_delay_s
            self.restore_t[arr] = np.inf
        shots[c] = np.where(np.isnan(self.prefed_t[c]), self.cfg.feed_shots, 0)  # dosed already
        self.prefed_t[c] = np.nan
        self.quenches += c.size
        return shots

    def adopt(
        self,
        cells: np.ndarray,
        t: float,
        ae_start_s: np.ndarray,
        pre_pos_mm: np.ndarray,
        beam_pos_mm: np.ndarray,
        burning: np.ndarray,
        r_ref_uohm: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Take over the AEs on ``cells`` that started under local control (see the module
        docstring): feed only, no pumping, restore to ``pre_pos_mm`` after the AE.

        Args:
            cells: cell indices (idle ones are adopted; others are left alone).
            t: time [s].
            ae_start_s: [len(cells)] start of each cell's AE [s] (refeed and escalation
                are timed from it).
            pre_pos_mm: [n] acknowledged beam position at each AE's onset [mm].
            beam_pos_mm: [n] acknowledged beam position now [mm] (what the PLC's kill
                left: the offset from the pre-AE position that depth limits count from).
            burning: [n] the voltage is still at AE level (the dose is dumped only then).
            r_ref_uohm: [n] alumina-rich R at the pre-AE position [µΩ] (NaN/None: unknown).

        Returns:
            (shots [n] to dump now, the adopted cell indices).
        """
        shots = np.zeros(self.n, dtype=np.int64)
        c = np.asarray(cells, dtype=np.int64)
        if not self.cfg.enabled or c.size == 0:
            return shots, c[:0]
        t0 = np.asarray(ae_start_s, dtype=np.float64)
        keep = (self.state[c] == IDLE) | self.parked[c]
        c, t0 = c[keep], t0[keep]
        # a parked cell (its room went local with a restore owed) keeps its own target
        new = c[~self.parked[c]]
        self.state[c] = ACTIVE
        self.adopted[c] = True
        self.t_start[c] = t0
        self.pre_pos_mm[new] = np.asarray(pre_pos_mm, dtype=np.float64)[new]
        self.offset_mm[c] = np.asarray(beam_pos_mm, dtype=np.float64)[c] - self.pre_pos_mm[c]
        self.owes[c] = True  # the PLC's kill moved it; the controller promised the restore
        self.owed_since[new] = t0[~self.parked[c]]
        self.r_ref_uohm[new] = np.nan if r_ref_uohm is None else np.asarray(r_ref_uohm, dtype=float)[new]
        self.attempts[c] = 0
        self.parked[c] = False
        self.parked_t[c] = np.nan
        self.pumps[c] = 0
        self.lowered[c] = True
        self.next_t[c] = np.inf
        self.restore_t[c] = np.inf
        # the adoption dose stands in for the second dose when the AE is already that old
        self.refed[c] = (t - t0) >= self.cfg.refeed_after_s
        self.prefed_t[c] = np.nan
        shots[c] = np.where(np.asarray(burning, dtype=bool)[c], self.cfg.feed_shots, 0)
        self.adoptions += c.size
        return shots, c

    def release(self, mask: np.ndarray) -> np.ndarray:
        """``mask`` cells were handed to local control: forget their sequences (the PLC's
        automation owns the beam now). Returns the cells that had one running. A restore
        owed on them must be handed over first (``hand_over``): release does not."""
        mask = np.asarray(mask, dtype=bool)
        gone = np.flatnonzero(mask & ((self.state != IDLE) | ~np.isnan(self.prefed_t)))
        if gone.size:
            self._finish(gone)
            self.prefed_t[gone] = np.nan
            self.releases += gone.size
        return gone

    def park(self, cells: np.ndarray, t: float) -> None:
        """The rooms of ``cells`` went to local control at ``t`` [s] with a restore owed:
        their sequences stop (the PLC's automation owns the beam), the owed restore waits
        (``RESTORING``, not scheduled) until the cell is back in remote (``unpark``) or
        ``local_grace_s`` is over (then the controller hands it over)."""
        c = np.asarray(cells, dtype=np.int64)
        if c.size == 0:
            return
        self.state[c] = RESTORING
        self.adopted[c] = False
        self.next_t[c] = np.inf
        self.restore_t[c] = np.inf
        self.attempts[c] = 0
        self.parked_t[c] = np.where(self.parked[c], self.parked_t[c], t)
        self.parked[c] = True
        self.releases += c.size

    def unpark(self, cells: np.ndarray, t: float) -> None:
        """``cells`` are back in remote with no AE: their owed restore is scheduled
        ``restore_delay_s`` from ``t`` [s] (the PLC's kill may still raise its last stroke)."""
        c = np.asarray(cells, dtype=np.int64)
        c = c[self.parked[c]]
        self.parked[c] = False
        self.parked_t[c] = np.nan
        self.restore_t[c] = t + self.cfg.restore_delay_s

    def _finish(self, cells: np.ndarray) -> None:
        """The sequences of ``cells`` are over (restored, released or handed over)."""
        self.parked[cells] = False
        self.parked_t[cells] = np.nan
        self.state[cells] = IDLE
        self.adopted[cells] = False
        self.t_start[cells] = np.nan
        self.offset_mm[cells] = 0.0
        self.next_t[cells] = np.inf
        self.restore_t[cells] = np.inf
        self.owes[cells] = False
        self.owed_since[cells] = np.nan
        self.attempts[cells] = 0
        self.doubt_mm[cells] = 0.0
        self.doubt_t[cells] = np.nan
        self.verify[cells] = False

    def hand_over(self, cells: np.ndarray, t: float, beam_pos_mm: np.ndarray, why: str) -> list[Event]:
        """Give the owed restore of ``cells`` to resistance control: their sequences end,
        ``handed`` records the move still owed (added to an earlier one not yet resolved).

        Args:
            cells: cell indices.
            t: time [s].
            beam_pos_mm: [n] beam position (acknowledged + own moves in flight) [mm].
            why: the reason, for the alarm text.

        Returns:
            ``beam_restore_handed_over`` events (one per cell).
        """
        events: list[Event] = []
        for k in np.asarray(cells, dtype=np.int64).tolist():
            owed = float(self.pre_pos_mm[k] - beam_pos_mm[k])
            doubt = float(self.doubt_mm[k])
            self.handed_mm[k] = (self.handed_mm[k] if self.handed[k] else 0.0) + owed
            self.handed[k] = True
            self.handed_t[k] = t
            self.handed_why[k] = why[:200]
            self._finish(np.array([k]))
            self.handovers += 1
            extra = f" (a {doubt:+.1f} mm move in doubt)" if doubt else ""
            events.append(("beam_restore_handed_over", k,
                           f"{why}: beam {-owed:+.1f} mm from its pre-AE position{extra}; resistance control "
                           "corrects it from R (AE lock lifted)"))  # fmt: skip
        return events

    def clear_handover(self, cells: np.ndarray) -> None:
        """Resistance control resolved the handed-over restore of ``cells``."""
        c = np.asarray(cells, dtype=np.int64)
        self.handed[c] = False
        self.handed_mm[c] = 0.0
        self.handed_t[c] = np.nan
        for k in c.tolist():
            self.handed_why[k] = ""

    def ended(self, cells: np.ndarray, t: float) -> None:
        """The detector closed the AE on ``cells``: schedule the beam restore."""
        c = np.asarray(cells, dtype=np.int64)
        st = self.state[c]
        c = c[(st == ACTIVE) | (st == ESCALATED) | ((st == RESTORING) & np.isinf(self.restore_t[c]))]
        self.state[c] = RESTORING
        self.restore_t[c] = t + self.cfg.restore_delay_s
        self.next_t[c] = np.inf

    def add_doubt(self, k: int, mm: float, t: float) -> None:
        """A move of ``mm`` [mm] on cell ``k`` may or may not have been made (seen at ``t`` [s])."""
        self.doubt_mm[k] += mm
        self.doubt_t[k] = t

    def resolve_doubt(
        self,
        cells: np.ndarray,
        t: float,
        r_now_uohm: np.ndarray,
        beam_pos_mm: np.ndarray,
        uohm_per_mm: float,
    ) -> list[Event]:
        """Judge the moves in doubt and the positions to verify on ``cells`` (calm now)
        from the pseudo-resistance (see the module docstring).

        Hypotheses: the beam is where the acknowledgements put it (``beam_pos_mm``), or,
        with a move in doubt, ``doubt_mm`` further (made, the total missed it). Each
        predicts R now = ``r_ref_uohm`` + ``uohm_per_mm`` x (position − pre-AE position). The nearer one is taken when it fits within ``doubt_fit_uohm`` and, with
        two, R lies outside the middle half between them (which must be at least
        ``doubt_min_uohm`` apart). A made move shifts the target in acknowledgement
        coordinates (the total never counted it). Otherwise the restore is handed over.

        Args:
            cells: cell indices.
            t: time [s].
            r_now_uohm: [n] calm pseudo-resistance now [µΩ].
            beam_pos_mm: [n] position (acknowledged + own moves in flight) [mm].
            uohm_per_mm: R per mm of beam [µΩ/mm].

        Returns:
            events: ``beam_move_reconciled`` or ``beam_restore_handed_over``.
        """
        events: list[Event] = []
        st = self.intent
        for k in np.asarray(cells, dtype=np.int64).tolist():
            f = float(self.doubt_mm[k])
            if f == 0.0 and not self.verify[k]:
                continue
            r_now, r_ref = float(r_now_uohm[k]), float(self.r_ref_uohm[k])
            ref = "the alumina-rich R before the AE"
            off = float(beam_pos_mm[k] - self.pre_pos_mm[k])
            seen = r_now - r_ref
            hyps = [0.0, f] if f else [0.0]
            errs = [abs(seen - uohm_per_mm * (off + h)) for h in hyps]
            best = int(np.argmin(errs))
            why = ""
            subject = f"a {f:+.1f} mm move in doubt" if f else "a position nobody counted the PLC's moves of"
            if not math.isfinite(r_ref):
                why = f"{subject}, and no alumina-rich R from before the AE to judge it by"
            elif not math.isfinite(r_now):
                why = f"{subject}, and no resistance now to judge it by"
            elif errs[best] > st.doubt_fit_uohm:
                pos = ", ".join(f"{off + h:+.1f} mm" for h in hyps)
                why = (f"R is {seen:+.2f} µΩ from {ref}, which the beam at {pos} from its pre-AE position "
                       "does not explain: something else moved it")  # fmt: skip
            elif f and (
                abs(uohm_per_mm * f) < st.doubt_min_uohm or abs(errs[0] - errs[1]) < 0.5 * abs(uohm_per_mm * f)
            ):
                why = (f"a {f:+.1f} mm move in doubt cannot be told from R ({seen:+.2f} µΩ from {ref}, "
                       f"{uohm_per_mm * off:+.2f} if not made, {uohm_per_mm * (off + f):+.2f} if made)")  # fmt: skip
            if why:
                events += self.hand_over(np.array([k]), t, beam_pos_mm, why)
                continue
            made = best == 1
            if made:
                self.pre_pos_mm[k] -= f  # the beam is f further than the total says
            what = (f"move of {f:+.1f} mm in doubt judged {'made' if made else 'not made'}" if f
                    else f"beam position {off:+.1f} mm from its pre-AE position confirmed")  # fmt: skip
            self.doubt_mm[k] = 0.0
            self.doubt_t[k] = np.nan
            self.verify[k] = False
            events.append(("beam_move_reconciled", k, f"{what} from R ({seen:+.2f} µΩ from {ref})"))
        return events

    def step(
        self,
        t: float,
        ae_burning: np.ndarray,
        blocked: np.ndarray,
        beam_pos_mm: np.ndarray,
        inflight_mm: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, list[Event]]:
        """Advance every running sequence.

        Args:
            t: time [s].
            ae_burning: [n] voltage still at AE level (not yet back below the end threshold).
            blocked: [n] no beam move possible now: tapping or anode change, the room in
                local control, no data, out of circuit, commands not sent.
            beam_pos_mm: [n] acknowledged beam position [mm].
            inflight_mm: [n] the controller's own beam moves not yet acknowledged [mm]
                (None: none); positions are ``beam_pos_mm`` + these, and a restore waits
                for them to be acknowledged (or timed out) before it is judged.

        Returns:
            (extra shots [n], beam moves [n] mm, events).
        """
        shots = np.zeros(self.n, dtype=np.int64)
        moves = np.zeros(self.n)
        events: list[Event] = []
        if not (self.state != IDLE).any():
            return shots, moves, events
        cfg, st = self.cfg, self.intent
        infl = np.zeros(self.n) if inflight_mm is None else np.asarray(inflight_mm, dtype=np.float64)
        pos = np.asarray(beam_pos_mm, dtype=np.float64) + infl
        for k in np.flatnonzero(self.state != IDLE):
            state = self.state[k]
            if state == ACTIVE:
                age = t - self.t_start[k]
                if not self.refed[k] and age >= cfg.refeed_after_s and ae_burning[k]:
                    shots[k] += cfg.refeed_shots
                    self.refed[k] = True
                if age >= cfg.escalate_after_s:
                    self.state[k] = ESCALATED
                    self.escalations += 1
                    why = (
                        "since it started (taken over from local control)" if self.adopted[k] else "after quench start"
                    )
                    events.append(("ae_escalation", int(k), f"AE persists {age:.0f} s {why}: manual action"))
                    continue
                if self.adopted[k]:
                    continue  # no pumping on an AE the PLC's local kill already worked on
                if t < self.next_t[k] or blocked[k] or not ae_burning[k] or self.doubt_mm[k] != 0.0 or self.verify[k]:
                    continue
                off = pos[k] - self.pre_pos_mm[k]
                if not self.lowered[k]:
                    step = -min(cfg.lower_mm, max(cfg.max_total_down_mm + off, 0.0))
                    self.lowered[k] = True
                    self.next_t[k] = t + cfg.pump_period_s
                elif self.pumps[k] < cfg.max_pumps:
                    up = self.pumps[k] % 2 == 0
                    if up:
                        step = max(min(cfg.pump_amplitude_mm, -off), 0.0)
                    else:
                        step = -min(cfg.pump_amplitude_mm, max(cfg.max_total_down_mm + off, 0.0))
                    self.pumps[k] += 1
                    self.next_t[k] = t + cfg.pump_period_s
                else:
                    continue
                if step != 0.0:
                    moves[k] = step
                    self.offset_mm[k] = off + step
                    self.moves_mm_total[k] += abs(step)
                    if not self.owes[k]:
                        self.owes[k] = True
                        self.owed_since[k] = t
            elif state == RESTORING:
                if t < self.restore_t[k]:
                    continue
                if not self.owes[k]:  # the sequence never moved the beam: nothing to restore
                    self._finish(np.array([k]))
                    continue
                if blocked[k] or infl[k] != 0.0 or self.doubt_mm[k] != 0.0 or self.verify[k]:
                    continue
                back = float(self.pre_pos_mm[k] - pos[k])
                if abs(back) < st.restore_tolerance_mm:
                    self._finish(np.array([k]))  # the acknowledgements show it back: done
                    continue
                why = ""
                if self.owes[k] and t - self.owed_since[k] > st.restore_max_age_s:
                    why = f"restore owed for {(t - self.owed_since[k]) / 60:.0f} min: the pre-AE position is stale"
                elif abs(back) > cfg.max_total_down_mm + st.restore_slack_mm:
                    why = "the beam is further from its pre-AE position than a quench moves it"
                elif self.attempts[k] >= st.restore_max_attempts:
                    why = f"{int(self.attempts[k])} restore commands not acknowledged"
                if why:
                    events += self.hand_over(np.array([k]), t, pos, why)
                    continue
                self.attempts[k] += 1
                moves[k] = back
                self.moves_mm_total[k] += abs(back)
                if self.attempts[k] > 1:
                    self.reissues += 1
                    events.append(("beam_restore_reissued", int(k),
                                   f"restore {back:+.1f} mm re-issued (attempt {int(self.attempts[k])}): the "
                                   "acknowledgements do not show the beam back at its pre-AE position"))  # fmt: skip
            # ESCALATED: hold, feeding only; operators take over until the AE ends
        return shots, moves, events

    # ------------------------------------------------------------------ export / import

    def export_cell(self, k: int) -> dict[str, Any]:
        """The quench part of cell ``k``'s beam intent as plain data (see ``PotController.beam_intent``)."""
        d: dict[str, Any] = {}
        if self.state[k] != IDLE and self.owes[k]:
            d["quench"] = {
                "state": STATE_NAMES[int(self.state[k])],
                "target_mm": float(self.pre_pos_mm[k]),
                "t_start_s": _opt(float(self.t_start[k])),
                "restore_t_s": _opt(float(self.restore_t[k])),
                "owed_since_s": _opt(float(self.owed_since[k])),
                "lowered": bool(self.lowered[k]),
                "pumps": int(self.pumps[k]),
                "refed": bool(self.refed[k]),
                "adopted": bool(self.adopted[k]),
                "attempts": int(self.attempts[k]),
                "doubt_mm": float(self.doubt_mm[k]),
                "doubt_t_s": _opt(float(self.doubt_t[k])),
                "verify": bool(self.verify[k]),
                "r_ref_uohm": _opt(float(self.r_ref_uohm[k])),
                "parked_t_s": _opt(float(self.parked_t[k])) if self.parked[k] else None,
            }
        if self.handed[k]:
            d["handed"] = {"owed_mm": float(self.handed_mm[k]), "t_s": _opt(float(self.handed_t[k])),
                           "why": self.handed_why[k]}  # fmt: skip
        return d

    def import_cell(self, k: int, d: dict[str, Any], where: str, shift_s: float, shift_mm: float) -> None:
        """Set cell ``k`` from exported intent ``d`` (``export_cell``); times move by
        ``shift_s`` [s], positions by ``shift_mm`` [mm] (the acknowledgement base changed).

        Raises:
            ValueError: a key is missing or has the wrong type (named with ``where``).
        """
        q = d.get("quench")
        if q is not None:
            if not isinstance(q, dict):
                raise ValueError(f"{where}.quench: expected a table, got {type(q).__name__}")
            w = f"{where}.quench"
            name = q.get("state")
            if name not in _STATE_OF_NAME:
                raise ValueError(f"{w}.state: expected one of {sorted(_STATE_OF_NAME)}, got {name!r}")
            pumps, attempts = q.get("pumps", 0), q.get("attempts", 0)
            for key, v in (("pumps", pumps), ("attempts", attempts)):
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise ValueError(f"{w}.{key}: expected a count >= 0, got {v!r}")
            self.state[k] = _STATE_OF_NAME[name]
            self.pre_pos_mm[k] = _num(q, "target_mm", w) + shift_mm
            self.t_start[k] = _num(q, "t_start_s", w, none=math.nan) + shift_s
            self.restore_t[k] = _num(q, "restore_t_s", w, none=math.inf) + shift_s
            since = _num(q, "owed_since_s", w, none=math.nan)
            self.owed_since[k] = since + shift_s
            self.lowered[k] = bool(q.get("lowered", True))
            self.pumps[k] = pumps
            self.refed[k] = bool(q.get("refed", True))
            self.adopted[k] = bool(q.get("adopted", False))
            self.attempts[k] = attempts
            self.doubt_mm[k] = _num(q, "doubt_mm", w, none=0.0)
            self.doubt_t[k] = _num(q, "doubt_t_s", w, none=math.nan) + shift_s
            self.verify[k] = bool(q.get("verify", False))
            self.r_ref_uohm[k] = _num(q, "r_ref_uohm", w, none=math.nan)
            parked = q.get("parked_t_s")
            self.parked[k] = parked is not None
            self.parked_t[k] = _num(q, "parked_t_s", w) + shift_s if parked is not None else math.nan
            self.owes[k] = True
            self.next_t[k] = -math.inf if self.state[k] == ACTIVE else math.inf
            self.prefed_t[k] = math.nan
        h = d.get("handed")
        if h is not None:
            if not isinstance(h, dict):
                raise ValueError(f"{where}.handed: expected a table, got {type(h).__name__}")
            w = f"{where}.handed"
            why = h.get("why", "")
            if not isinstance(why, str):
                raise ValueError(f"{w}.why: expected text, got {why!r}")
            self.handed[k] = True
            self.handed_mm[k] = _num(h, "owed_mm", w)
            self.handed_t[k] = _num(h, "t_s", w, none=math.nan) + shift_s
            self.handed_why[k] = why[:200]
