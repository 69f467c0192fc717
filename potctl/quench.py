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

* a cell handed to local mid-sequence is ``release``d: the PLC's local AE kill and ACD
  control own its beam from then on (a restore that had not happened yet is dropped;
  the PLC's resistance control corrects the ACD);
* an AE that started while the cell was in local (the PLC's kill already fed and
  pumped) and still burns when the controller takes the cell back is ``adopt``ed: one
  AE dose at once (alumina is what the AE lacks; an extra dose is harmless), the
  second dose and the escalation alarm timed from the AE's start, but **no beam
  pumping** — the controller does not know what the PLC's kill did to the anodes in
  the meantime, and stacking a second pumping sequence on it could short the anodes to
  the metal. After the AE ends the beam is restored to where it was before the AE (the
  acknowledged position at its onset), as the controller does after its own quench; a
  PLC that already put the beam back leaves nothing to restore.
"""

from __future__ import annotations

import numpy as np

from potctl.config import QuenchConfig

__all__ = ["ACTIVE", "ESCALATED", "IDLE", "RESTORING", "QuenchController"]

IDLE = 0
ACTIVE = 1
ESCALATED = 2
RESTORING = 3


class QuenchController:
    """Per-cell quench state machine (NumPy state; the few active cells are handled in a loop)."""

    def __init__(self, n_cells: int, cfg: QuenchConfig | None = None) -> None:
        self.cfg = cfg or QuenchConfig()
        n = int(n_cells)
        self.n = n
        self.state = np.zeros(n, dtype=np.int8)
        self.t_start = np.full(n, np.nan)
        self.pre_pos_mm = np.zeros(n)
        self.offset_mm = np.zeros(n)  # commanded position relative to pre-AE [mm]
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
        self.quenches = 0
        self.escalations = 0
        self.pre_feeds = 0
        self.pre_feeds_unconfirmed = 0
        self.adoptions = 0
        self.releases = 0
        self.moves_mm_total = np.zeros(n)

    @property
    def busy(self) -> np.ndarray:
        """Cells whose quench is not finished (ACD control and LVAE judging keep off)."""
        return self.state != IDLE

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

    def start(self, cells: np.ndarray, t: float, beam_pos_mm: np.ndarray) -> np.ndarray:
        """Begin the sequence on ``cells`` (detected AEs); returns the shots to dump now."""
        shots = np.zeros(self.n, dtype=np.int64)
        if not self.cfg.enabled or len(cells) == 0:
            return shots
        c = np.asarray(cells, dtype=np.int64)
        fresh = c[self.state[c] == IDLE]
        # a new AE during RESTORING keeps the original pre-AE position
        again = c[self.state[c] == RESTORING]
        self.pre_pos_mm[fresh] = beam_pos_mm[fresh]
        self.offset_mm[fresh] = 0.0
        for arr in (fresh, again):
            self.state[arr] = ACTIVE
            self.adopted[arr] = False
            self.t_start[arr] = t
            self.pumps[arr] = 0
            self.lowered[arr] = False
            self.refed[arr] = False
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

        Returns:
            (shots [n] to dump now, the adopted cell indices).
        """
        shots = np.zeros(self.n, dtype=np.int64)
        c = np.asarray(cells, dtype=np.int64)
        if not self.cfg.enabled or c.size == 0:
            return shots, c[:0]
        t0 = np.asarray(ae_start_s, dtype=np.float64)
        keep = self.state[c] == IDLE
        c, t0 = c[keep], t0[keep]
        self.state[c] = ACTIVE
        self.adopted[c] = True
        self.t_start[c] = t0
        self.pre_pos_mm[c] = np.asarray(pre_pos_mm, dtype=np.float64)[c]
        self.offset_mm[c] = np.asarray(beam_pos_mm, dtype=np.float64)[c] - self.pre_pos_mm[c]
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
        automation owns the beam now). Returns the cells that had one running."""
        mask = np.asarray(mask, dtype=bool)
        gone = np.flatnonzero(mask & ((self.state != IDLE) | ~np.isnan(self.prefed_t)))
        if gone.size:
            self.state[gone] = IDLE
            self.adopted[gone] = False
            self.t_start[gone] = np.nan
            self.offset_mm[gone] = 0.0
            self.next_t[gone] = np.inf
            self.restore_t[gone] = np.inf
            self.prefed_t[gone] = np.nan
            self.releases += gone.size
        return gone

    def ended(self, cells: np.ndarray, t: float) -> None:
        """The detector closed the AE on ``cells``: schedule the beam restore."""
        c = np.asarray(cells, dtype=np.int64)
        c = c[(self.state[c] == ACTIVE) | (self.state[c] == ESCALATED)]
        self.state[c] = RESTORING
        self.restore_t[c] = t + self.cfg.restore_delay_s
        self.next_t[c] = np.inf

    def step(
        self,
        t: float,
        ae_burning: np.ndarray,
        blocked: np.ndarray,
        beam_pos_mm: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, list[tuple[str, int, str]]]:
        """Advance every running sequence.

        Args:
            t: time [s].
            ae_burning: [n] voltage still at AE level (not yet back below the end threshold).
            blocked: [n] tapping or anode change (or the room in local control): no beam moves.
            beam_pos_mm: [n] acknowledged beam position [mm].

        Returns:
            (extra shots [n], beam moves [n] mm, events).
        """
        shots = np.zeros(self.n, dtype=np.int64)
        moves = np.zeros(self.n)
        events: list[tuple[str, int, str]] = []
        if not (self.state != IDLE).any():
            return shots, moves, events
        cfg = self.cfg
        for k in np.flatnonzero(self.state != IDLE):
            st = self.state[k]
            if st == ACTIVE:
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
                if t < self.next_t[k] or blocked[k] or not ae_burning[k]:
                    continue
                if not self.lowered[k]:
                    step = -min(cfg.lower_mm, cfg.max_total_down_mm + self.offset_mm[k])
                    self.lowered[k] = True
                    self.next_t[k] = t + cfg.pump_period_s
                elif self.pumps[k] < cfg.max_pumps:
                    up = self.pumps[k] % 2 == 0
                    if up:
                        step = min(cfg.pump_amplitude_mm, -self.offset_mm[k])
                    else:
                        step = -min(cfg.pump_amplitude_mm, cfg.max_total_down_mm + self.offset_mm[k])
                    self.pumps[k] += 1
                    self.next_t[k] = t + cfg.pump_period_s
                else:
                    continue
                if step != 0.0:
                    moves[k] = step
                    self.offset_mm[k] += step
                    self.moves_mm_total[k] += abs(step)
            elif st == RESTORING:
                if t < self.restore_t[k] or blocked[k]:
                    continue
                back = self.pre_pos_mm[k] - beam_pos_mm[k]
                back = float(np.clip(back, -cfg.max_total_down_mm, cfg.max_total_down_mm))
                if abs(back) >= 0.5:
                    moves[k] = back
                    self.moves_mm_total[k] += abs(back)
                self.offset_mm[k] = 0.0
                self.state[k] = IDLE
                self.adopted[k] = False
                self.t_start[k] = np.nan
            # ESCALATED: hold, feeding only; operators take over until the AE ends
        return shots, moves, events
