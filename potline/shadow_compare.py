"""Shadow mode as a commissioning tool: what the controller would have done vs what the PLCs did.

In shadow the controller computes every command and nothing is sent, so the PLCs' own
automation (local feeding, beam/resistance control, the local AE kill, the rectifier's
setpoint) runs the plant. ``ShadowComparator`` takes, every cycle, the commands the
controller would have sent and the scan the PLCs reported, and over a period
(``period_s``, plant seconds) sums up, per cell and per line:

* **feeds**: shots the controller would have fed vs shots the PLC acknowledged
  (``feeder_ack`` increments; a counter going back, a PLC restart, counts as 0);
* **beam moves**: the net movement the controller would have made [mm] vs the PLC's
  acknowledged net movement (``beam_ack_mm``);
* **AE handling**: each anode effect (cell voltage above ``ae_voltage_v`` with good
  data, the controller's own 8 V threshold) and whether each side acted on it (a feed
  or a beam move on that cell between the start and ``ae_grace_s`` after its end), with
  the delay from the start to each side's first action;
* **amperage**: per line the setpoint the controller would have asked for (a NaN request
  = keep what the PLC has) vs the PLC's setpoint, mean and largest difference [kA].

Shadow is open loop: nothing the controller asks for happens, so where it integrates (a
beam move that never arrives leaves the resistance where it was, and it asks again) its
would-be totals run away from the PLC's. Read beam disagreements with that in mind (on
the rig: -490 mm would-be vs -21 mm acknowledged over 600 s, 8 cells, an AE storm); the
feeds, the AE handling and the setpoint compare like for like.

A cell or line *agrees* when the two sides are within the tolerances
(``ShadowTolerances``); the summary gives the share that agrees and lists every
disagreement. The daemon journals one ``shadow_summary`` per period and one
``shadow_disagreement`` per disagreeing item (``journal_entries``), not every cycle.
Pure: no I/O, no clock; times are the scans' plant times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog

from potctl.plant import Commands, Measurements
from twin.layout import PlantLayout

__all__ = [
    "AeComparison",
    "ShadowComparator",
    "ShadowJournal",
    "ShadowSummary",
    "ShadowTolerances",
    "journal_entries",
]

log = structlog.get_logger(__name__)

#: disagreements journalled one by one per period at most (the rest are counted in the summary)
MAX_DISAGREEMENT_ENTRIES = 20


@dataclass(frozen=True, slots=True)
class ShadowTolerances:
    """When the controller and the PLC count as agreeing over one period.

    Attributes:
        feed_shots: absolute difference in shots always accepted.
        feed_rel: relative difference accepted above that (of the larger of the two).
        beam_mm: difference in net beam movement accepted [mm].
        setpoint_ka: mean |controller - PLC| setpoint accepted per line [kA].
        ae_delay_s: both sides acted on an AE, first actions at most this far apart [s].
    """

    feed_shots: float = 2.0
    feed_rel: float = 0.25
    beam_mm: float = 3.0
    setpoint_ka: float = 0.5
    ae_delay_s: float = 120.0

    def __post_init__(self) -> None:
        for name in ("feed_shots", "feed_rel", "beam_mm", "setpoint_ka", "ae_delay_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0.0):
                raise ValueError(f"shadow tolerance {name}: expected a finite value >= 0, got {v!r}")


@dataclass(slots=True)
class AeComparison:
    """One anode effect and who acted on it (times are plant seconds)."""

    cell: int  # floor number
    index: int  # cell index in floor order
    start_s: float
    end_s: float = math.nan  # NaN: still burning at the end of the period
    controller_first_s: float = math.nan  # first would-be feed or beam move
    plc_first_s: float = math.nan  # first acknowledged feed or beam move
    controller_shots: int = 0
    plc_shots: float = 0.0
    controller_beam_mm: float = 0.0
    plc_beam_mm: float = 0.0

    @property
    def controller_acted(self) -> bool:
        return not math.isnan(self.controller_first_s)

    @property
    def plc_acted(self) -> bool:
        return not math.isnan(self.plc_first_s)

    def agrees(self, tol: ShadowTolerances) -> bool:
        if self.controller_acted != self.plc_acted:
            return False
        if self.controller_acted:
            return abs(self.controller_first_s - self.plc_first_s) <= tol.ae_delay_s
        return True

    def as_dict(self) -> dict[str, Any]:
        def r(x: float) -> float | None:
            return None if math.isnan(x) else round(x, 1)

        return {"cell": self.cell, "start_s": r(self.start_s), "end_s": r(self.end_s),
                "controller_delay_s": r(self.controller_first_s - self.start_s),
                "plc_delay_s": r(self.plc_first_s - self.start_s),
                "controller_shots": self.controller_shots, "plc_shots": round(self.plc_shots, 1),
                "controller_beam_mm": round(self.controller_beam_mm, 1), "plc_beam_mm": round(self.plc_beam_mm, 1)}  # fmt: skip


@dataclass(slots=True)
class ShadowSummary:
    """One period's comparison (see the module docstring).

    Attributes:
        t0_s, t1_s: plant times of the first and last scan compared [s].
        cycles: scans compared.
        cell_numbers: floor numbers of the cells, in floor order.
        line_names: the lines, in order.
        ctl_shots, plc_shots: [n_cells] shots would-be fed / acknowledged.
        ctl_beam_mm, plc_beam_mm: [n_cells] net beam movement would-be / acknowledged [mm].
        judged: [n_cells] cells with good data in at least one compared scan.
        sp_mean_abs_ka, sp_max_abs_ka: [n_lines] |controller - PLC| setpoint, mean and max [kA]
            (NaN: the line had no good scan).
        ctl_sp_mean_ka, plc_sp_mean_ka: [n_lines] mean setpoints [kA].
        aes: anode effects that ended (and whose grace after the end ran out) in the period.
        aes_burning: anode effects still open at its end (compared in the period they close).
        tolerances: what counted as agreeing.
    """

    t0_s: float
    t1_s: float
    cycles: int
    cell_numbers: list[int]
    line_names: list[str]
    ctl_shots: np.ndarray
    plc_shots: np.ndarray
    ctl_beam_mm: np.ndarray
    plc_beam_mm: np.ndarray
    judged: np.ndarray
    sp_mean_abs_ka: np.ndarray
    sp_max_abs_ka: np.ndarray
    ctl_sp_mean_ka: np.ndarray
    plc_sp_mean_ka: np.ndarray
    aes: list[AeComparison] = field(default_factory=list)
    aes_burning: int = 0
    tolerances: ShadowTolerances = field(default_factory=ShadowTolerances)

    def feed_agrees(self) -> np.ndarray:
        """[n_cells] the would-be and acknowledged shots within tolerance."""
        tol = self.tolerances
        diff = np.abs(self.ctl_shots - self.plc_shots)
        allowed = np.maximum(tol.feed_shots, tol.feed_rel * np.maximum(self.ctl_shots, self.plc_shots))
        return diff <= allowed + 1e-9

    def beam_agrees(self) -> np.ndarray:
        """[n_cells] the net beam movements within tolerance."""
        return np.abs(self.ctl_beam_mm - self.plc_beam_mm) <= self.tolerances.beam_mm + 1e-9

    def setpoint_agrees(self) -> np.ndarray:
        """[n_lines] mean setpoint difference within tolerance (a line without data agrees)."""
        m = self.sp_mean_abs_ka
        return ~(np.isfinite(m) & (m > self.tolerances.setpoint_ka + 1e-9))

    def disagreements(self) -> list[dict[str, Any]]:
        """Every item that does not agree: what, where, each side's figure."""
        out: list[dict[str, Any]] = []
        j = self.judged
        for k in np.flatnonzero(j & ~self.feed_agrees()).tolist():
            out.append({"what": "feed", "cell": self.cell_numbers[k], "controller_shots": int(self.ctl_shots[k]),
                        "plc_shots": round(float(self.plc_shots[k]), 1)})  # fmt: skip
        for k in np.flatnonzero(j & ~self.beam_agrees()).tolist():
            out.append({"what": "beam", "cell": self.cell_numbers[k],
                        "controller_mm": round(float(self.ctl_beam_mm[k]), 1),
                        "plc_mm": round(float(self.plc_beam_mm[k]), 1)})  # fmt: skip
        for ae in self.aes:
            if not ae.agrees(self.tolerances):
                out.append({"what": "ae", **ae.as_dict()})
        for i in np.flatnonzero(~self.setpoint_agrees()).tolist():
            out.append({"what": "amperage", "line": self.line_names[i],
                        "controller_ka": round(float(self.ctl_sp_mean_ka[i]), 3),
                        "plc_ka": round(float(self.plc_sp_mean_ka[i]), 3),
                        "mean_abs_diff_ka": round(float(self.sp_mean_abs_ka[i]), 3),
                        "max_abs_diff_ka": round(float(self.sp_max_abs_ka[i]), 3)})  # fmt: skip
        return out

    def counts(self) -> dict[str, tuple[int, int]]:
        """(agreeing, compared) per aspect: feeds and beams over judged cells, AEs, lines."""
        j = self.judged
        n = int(j.sum())
        fa = int((self.feed_agrees() & j).sum())
        ba = int((self.beam_agrees() & j).sum())
        aa = sum(1 for ae in self.aes if ae.agrees(self.tolerances))
        has = np.isfinite(self.sp_mean_abs_ka)
        sa = int((self.setpoint_agrees() & has).sum())
        return {"feed": (fa, n), "beam": (ba, n), "ae": (aa, len(self.aes)), "amperage": (sa, int(has.sum()))}

    def agreement(self) -> float:
        """Share of all compared items (cells x feeds and beams, AEs, lines) that agree; 1.0 when none."""
        c = self.counts()
        agree = sum(a for a, _n in c.values())
        total = sum(n for _a, n in c.values())
        return agree / total if total else 1.0

    def as_dict(self) -> dict[str, Any]:
        c = self.counts()
        return {
            "period_s": [round(self.t0_s, 3), round(self.t1_s, 3)],
            "cycles": self.cycles,
            "agreement": round(self.agreement(), 4),
            "agree": {k: {"agree": a, "compared": n} for k, (a, n) in c.items()},
            "feed_shots": {
                "controller": int(self.ctl_shots[self.judged].sum()),
                "plc": round(float(self.plc_shots[self.judged].sum()), 1),
            },
            "beam_net_mm": {
                "controller": round(float(self.ctl_beam_mm[self.judged].sum()), 1),
                "plc": round(float(self.plc_beam_mm[self.judged].sum()), 1),
            },
            "aes": [ae.as_dict() for ae in self.aes],
            "aes_burning": self.aes_burning,
            "amperage": {
                name: {
                    "controller_ka": _r(self.ctl_sp_mean_ka[i]),
                    "plc_ka": _r(self.plc_sp_mean_ka[i]),
                    "mean_abs_diff_ka": _r(self.sp_mean_abs_ka[i]),
                    "max_abs_diff_ka": _r(self.sp_max_abs_ka[i]),
                }
                for i, name in enumerate(self.line_names)
            },
            "tolerances": {
                "feed_shots": self.tolerances.feed_shots,
                "feed_rel": self.tolerances.feed_rel,
                "beam_mm": self.tolerances.beam_mm,
                "setpoint_ka": self.tolerances.setpoint_ka,
                "ae_delay_s": self.tolerances.ae_delay_s,
            },
        }

    def detail(self) -> str:
        """One line for the journal and the log."""
        c = self.counts()
        d = self.as_dict()
        parts = [
            f"shadow vs PLC over {self.t1_s - self.t0_s:.0f} s ({self.cycles} scans): agreement {100 * self.agreement():.0f} %",
            f"feeds agree on {c['feed'][0]}/{c['feed'][1]} cells (controller {d['feed_shots']['controller']} shots,"
            f" PLC {d['feed_shots']['plc']:g})",
            f"beams {c['beam'][0]}/{c['beam'][1]} (net {d['beam_net_mm']['controller']:+g} vs"
            f" {d['beam_net_mm']['plc']:+g} mm)",
            f"AEs {c['ae'][0]}/{c['ae'][1]}",
        ]
        for i, name in enumerate(self.line_names):
            if math.isfinite(self.sp_mean_abs_ka[i]):
                parts.append(f"{name} setpoint {self.ctl_sp_mean_ka[i]:.2f} vs {self.plc_sp_mean_ka[i]:.2f} kA")
        return "; ".join(parts)


def _r(x: float) -> float | None:
    return None if not math.isfinite(float(x)) else round(float(x), 3)


class ShadowComparator:
    """Accumulates the comparison cycle by cycle; a ``ShadowSummary`` every ``period_s``.

    Args:
        layout: the plant (cell numbers, line names).
        period_s: length of a summary period [plant s] (> 0).
        tolerances: what counts as agreeing.
        ae_voltage_v: cell voltage above which a cell is in an anode effect [V].
        ae_grace_s: actions up to this long after an AE's end still count as handling it [s].
        max_gap_s: scans further apart than this restart the period (a mode change, a
            stall): nothing is compared across the gap [plant s].
    """

    def __init__(self, layout: PlantLayout, period_s: float = 600.0, *, tolerances: ShadowTolerances | None = None,
                 ae_voltage_v: float = 8.0, ae_grace_s: float = 60.0, max_gap_s: float = 60.0) -> None:  # fmt: skip
        if not (math.isfinite(period_s) and period_s > 0.0):
            raise ValueError(f"shadow comparison period_s: expected a finite value > 0 s, got {period_s!r}")
        if not (math.isfinite(max_gap_s) and max_gap_s > 0.0):
            raise ValueError(f"shadow comparison max_gap_s: expected a finite value > 0 s, got {max_gap_s!r}")
        self.layout = layout
        self.period_s = float(period_s)
        self.tolerances = tolerances or ShadowTolerances()
        self.ae_voltage_v = float(ae_voltage_v)
        self.ae_grace_s = float(ae_grace_s)
        self.max_gap_s = float(max_gap_s)
        self.n_cells = int(layout.n_cells)
        self.n_lines = int(layout.n_lines)
        self._cell_numbers = [int(c) for c in layout.cell_number]
        self._line_names = list(layout.line_names)
        self.reset()

    def reset(self) -> None:
        """Forget the period under way (at a mode change)."""
        n, m = self.n_cells, self.n_lines
        self._t0: float | None = None
        self._t_last: float | None = None
        self._cycles = 0
        self._prev_feed: np.ndarray | None = None
        self._prev_beam: np.ndarray | None = None
        self._ctl_shots = np.zeros(n)
        self._plc_shots = np.zeros(n)
        self._ctl_beam = np.zeros(n)
        self._plc_beam = np.zeros(n)
        self._judged = np.zeros(n, dtype=bool)
        self._sp_sum = np.zeros(m)
        self._sp_max = np.zeros(m)
        self._sp_n = np.zeros(m)
        self._ctl_sp_sum = np.zeros(m)
        self._plc_sp_sum = np.zeros(m)
        self._open: dict[int, AeComparison] = {}
        self._done: list[AeComparison] = []

    def step(self, cmds: Commands, meas: Measurements) -> ShadowSummary | None:
        """Compare one cycle: ``cmds`` the controller would have sent on scan ``meas``.

        Returns the period's summary when this scan closes it, else None.
        """
        t = float(meas.t_s)
        if self._t_last is not None and not (0.0 <= t - self._t_last <= self.max_gap_s):
            self.reset()  # a gap (or time going back): a new period from here
        if self._t0 is None:
            self._t0 = t
        self._t_last = t
        self._cycles += 1
        ok = np.asarray(meas.cell_ok, dtype=bool)
        self._judged |= ok
        # what the controller would have done
        shots = np.asarray(cmds.feed_shots, dtype=float)
        moves = np.asarray(cmds.beam_move_mm, dtype=float)
        shots = np.where(np.isfinite(shots) & (shots > 0) & ok, shots, 0.0)
        moves = np.where(np.isfinite(moves) & ok, moves, 0.0)
        self._ctl_shots += shots
        self._ctl_beam += moves
        # what the PLC did (acknowledged since the last scan; a counter going back counts 0)
        feed = np.asarray(meas.feeder_ack, dtype=float)
        beam = np.asarray(meas.beam_ack_mm, dtype=float)
        d_feed = np.zeros(self.n_cells)
        d_beam = np.zeros(self.n_cells)
        if self._prev_feed is not None and self._prev_beam is not None:
            df = feed - self._prev_feed
            db = beam - self._prev_beam
            good = ok & np.isfinite(df) & np.isfinite(db)
            d_feed = np.where(good & (df > 0), df, 0.0)
            d_beam = np.where(good & ~((df < 0) | (np.abs(db) > 1e3)), db, 0.0)
        self._prev_feed = np.where(np.isfinite(feed), feed, self._prev_feed if self._prev_feed is not None else 0.0)
        self._prev_beam = np.where(np.isfinite(beam), beam, self._prev_beam if self._prev_beam is not None else 0.0)
        self._plc_shots += d_feed
        self._plc_beam += d_beam
        self._ae_step(t, np.asarray(meas.cell_voltage_v, dtype=float), ok, shots, moves, d_feed, d_beam)
        self._amperage(cmds, meas)
        if t - self._t0 >= self.period_s:
            return self._close(t)
        return None

    def flush(self) -> ShadowSummary | None:
        """The period so far as a summary (leaving shadow, stopping); None when nothing was compared."""
        if self._t0 is None or self._t_last is None or self._cycles < 2:
            self.reset()
            return None
        return self._close(self._t_last)

    # ------------------------------------------------------------------ internals

    def _ae_step(self, t: float, u: np.ndarray, ok: np.ndarray, shots: np.ndarray, moves: np.ndarray,
                 d_feed: np.ndarray, d_beam: np.ndarray) -> None:  # fmt: skip
        in_ae = ok & np.isfinite(u) & (u > self.ae_voltage_v)
        for k in np.flatnonzero(in_ae).tolist():
            if k not in self._open or not math.isnan(self._open[k].end_s):
                if k in self._open:  # ended within the grace, burning again: the old one is done
                    self._done.append(self._open.pop(k))
                self._open[k] = AeComparison(self._cell_numbers[k], k, t)
        for k, ae in list(self._open.items()):
            if shots[k] > 0 or abs(moves[k]) > 0:
                if math.isnan(ae.controller_first_s):
                    ae.controller_first_s = t
                ae.controller_shots += int(shots[k])
                ae.controller_beam_mm += float(moves[k])
            if d_feed[k] > 0 or abs(d_beam[k]) > 1e-6:
                if math.isnan(ae.plc_first_s):
                    ae.plc_first_s = t
                ae.plc_shots += float(d_feed[k])
                ae.plc_beam_mm += float(d_beam[k])
            if math.isnan(ae.end_s) and ok[k] and not in_ae[k]:
                ae.end_s = t
            if not math.isnan(ae.end_s) and t - ae.end_s >= self.ae_grace_s:
                self._done.append(self._open.pop(k))

    def _amperage(self, cmds: Commands, meas: Measurements) -> None:
        line_ok = np.asarray(meas.line_ok, dtype=bool)
        plc = np.asarray(meas.line_setpoint_ka, dtype=float)
        req = np.asarray(cmds.line_setpoint_ka, dtype=float)
        ctl = np.where(np.isfinite(req), req, plc)  # NaN: the controller would keep the PLC's setpoint
        good = line_ok & np.isfinite(plc) & np.isfinite(ctl)
        diff = np.where(good, np.abs(ctl - plc), 0.0)
        self._sp_sum += diff
        self._sp_max = np.maximum(self._sp_max, diff)
        self._sp_n += good
        self._ctl_sp_sum += np.where(good, ctl, 0.0)
        self._plc_sp_sum += np.where(good, plc, 0.0)

    def _close(self, t1: float) -> ShadowSummary:
        assert self._t0 is not None
        n = np.where(self._sp_n > 0, self._sp_n, np.nan)
        with np.errstate(invalid="ignore"):
            summary = ShadowSummary(
                t0_s=self._t0, t1_s=t1, cycles=self._cycles, cell_numbers=self._cell_numbers,
                line_names=self._line_names, ctl_shots=self._ctl_shots.copy(), plc_shots=self._plc_shots.copy(),
                ctl_beam_mm=self._ctl_beam.copy(), plc_beam_mm=self._plc_beam.copy(), judged=self._judged.copy(),
                sp_mean_abs_ka=self._sp_sum / n, sp_max_abs_ka=np.where(self._sp_n > 0, self._sp_max, np.nan),
                ctl_sp_mean_ka=self._ctl_sp_sum / n, plc_sp_mean_ka=self._plc_sp_sum / n,
                aes=list(self._done), aes_burning=len(self._open), tolerances=self.tolerances,
            )  # fmt: skip
        # the next period starts here; AEs still open are carried over (compared when they close)
        still = {k: ae for k, ae in self._open.items()}
        prev_feed, prev_beam, t_last = self._prev_feed, self._prev_beam, self._t_last
        self.reset()
        self._open = still
        self._prev_feed, self._prev_beam, self._t_last = prev_feed, prev_beam, t_last
        self._t0 = t1
        return summary


def journal_entries(
    summary: ShadowSummary, *, max_entries: int = MAX_DISAGREEMENT_ENTRIES
) -> list[tuple[str, dict[str, Any]]]:
    """(kind, fields) of the journal entries for one period: one ``shadow_summary`` and one
    ``shadow_disagreement`` per disagreeing item (at most ``max_entries``; the summary
    counts them all). Fields are ``JournalRecorder.append`` keyword arguments."""
    dis = summary.disagreements()
    data = summary.as_dict()
    data["disagreements"] = len(dis)
    detail = summary.detail() + (f"; {len(dis)} disagreement(s)" if dis else "")
    out: list[tuple[str, dict[str, Any]]] = [
        ("shadow_summary", {"source": "controller", "t_plant_s": summary.t1_s, "detail": detail, "data": data})
    ]
    for d in dis[:max_entries]:
        what = d["what"]
        if what == "feed":
            text = (
                f"cell {d['cell']}: controller would feed {d['controller_shots']} shot(s), PLC fed {d['plc_shots']:g}"
            )
        elif what == "beam":
            text = (
                f"cell {d['cell']}: controller would move the beam {d['controller_mm']:+g} mm, PLC {d['plc_mm']:+g} mm"
            )
        elif what == "ae":
            c, p = d["controller_delay_s"], d["plc_delay_s"]
            if c is None:
                who = f"the PLC only (after {p:g} s; the controller would not have acted)"
            elif p is None:
                who = f"the controller only (after {c:g} s; the PLC did not act)"
            else:
                who = f"both, far apart (controller after {c:g} s, PLC after {p:g} s)"
            text = f"cell {d['cell']}: AE at {d['start_s']:g} s handled by {who}"
        else:
            text = (f"{d['line']}: controller would hold {d['controller_ka']:g} kA, PLC {d['plc_ka']:g} kA "
                    f"(mean |diff| {d['mean_abs_diff_ka']:g} kA)")  # fmt: skip
        fields: dict[str, Any] = {"source": "controller", "t_plant_s": summary.t1_s, "detail": text, "data": d}
        if "cell" in d:
            fields["cell"] = d["cell"]
        out.append(("shadow_disagreement", fields))
    return out


class ShadowJournal:
    """The daemon's side: feeds a ``ShadowComparator`` every shadow cycle and hands each
    period's entries to ``append`` (``JournalRecorder.append``: kind, then fields); logs
    the summary line (``shadow.summary``).

    Args:
        layout: the plant.
        append: ``append(kind, **fields)`` of the journal.
        period_s: summary period [plant s] (``daemon.shadow_summary_s`` when the config
            has it; 600 s otherwise).
        max_gap_s: scans further apart restart the period [plant s].
    """

    def __init__(self, layout: PlantLayout, append: Any, period_s: float = 600.0, *, max_gap_s: float = 60.0) -> None:
        self.comparator = ShadowComparator(layout, period_s, max_gap_s=max_gap_s)
        self.append = append
        #: summaries journalled so far
        self.summaries = 0

    def record(self, cmds: Commands, meas: Measurements | None) -> ShadowSummary | None:
        """Compare one shadow cycle; journal the period when it closes."""
        if meas is None:
            return None
        summary = self.comparator.step(cmds, meas)
        if summary is not None:
            self._journal(summary)
        return summary

    def flush(self) -> ShadowSummary | None:
        """Leaving shadow or stopping: journal the period so far (two scans at least), start afresh."""
        summary = self.comparator.flush()
        if summary is not None:
            self._journal(summary)
        return summary

    def _journal(self, summary: ShadowSummary) -> None:
        self.summaries += 1
        log.info("shadow.summary", detail=summary.detail(),
                                            agreement=round(summary.agreement(), 4),
                                            disagreements=len(summary.disagreements()))  # fmt: skip
        for kind, fields in journal_entries(summary):
            self.append(kind, **fields)
