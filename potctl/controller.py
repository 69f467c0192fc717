"""The pot controller: composition of detection, prediction, quench, feeding, ACD,
amperage and PFC accounting behind one synchronous, deterministic, sans-I/O call:

    commands = controller.step(measurements, now)

It sees only what a PLC exposes (``potctl.plant.Measurements``) and never the model's
internals. Per scan (all cells at once):

1. quality and state masks: cell in circuit, line energised, tag quality, tapping or
   anode change;
2. AE detection on the cell voltages; a new AE starts the quench (feed + beam pumping),
   switches the cell to overfeed, resets its slope history and locks ACD control;
3. pseudo-resistance R = (U − E0)/I into the slope tracker / predictor (beam moves seen
   in the beam acknowledgement rebase it; the end of tapping/anode change too), plus the
   optional EKF alumina observer (``twin.observer``) fed with the acknowledged shots
   and beam moves; a prediction alarm triggers preventive overfeed;
4. tracking feed control; 5. quench sequences; 6. ACD control with its lock-outs;
7. line-current setpoints (ramps, power schedule, headroom, cut-out/in);
8. PFC (Tier 2) accounting;
9. bath chemistry and heat balance (opt-in, ``[control.bath]`` / ``[control.heat]``): AlF3
   additions from the lab's samples (``potctl.bath_chemistry``), the superheat/ledge
   estimate, a resistance-target offset and the shell heat-exchanger duty
   (``potctl.heat_balance``). Samples come in through ``bath_measurements``.

``observe_only`` runs 1–3 and 8 and commands nothing (used to score detection and
prediction against a plant under its own local control).

Data quality and command authority are separate (``Measurements.cell_ok`` /
``cell_remote``). Everything that *judges* the plant — AE detection (HV and LV), the
slope tracker and prediction, the alumina observer, PFC accounting — runs on every cell
whose data is good, whoever is in charge of it, so an AE in a potroom under local control
gets its ``ae_start``/``ae_end`` events and its record and counts in the Tier 2 PFC
figures. Everything that *commands*, or assumes its commands happened, is limited to
cells whose potroom PLC is in remote: feeding, the AE quench (first-sample feed, beam
pumping, restore), post-AE and preventive overfeed, ACD moves, the feeder-acknowledgement
check and the controller's own mass balance; ``Commands`` carry zero shots and moves for
the other cells. While a cell is in local the feed controller holds it parked
(``FeedController.hold_local``); taken back, it resumes with nominal feeding. An AE that
started under local control and still burns when the cell is taken back is adopted by
the quench (feed only, no beam pumping: the PLC's local AE kill already acted; see
``potctl.quench``). ``observe_only`` commands nothing anywhere, so there ``cell_remote``
plays no part.

Beam intent (issue 15). What the controller means to do with each beam — quench
lowerings not restored yet, restores due, its own moves commanded but not yet
acknowledged — is explicit state, reconciled every scan against the PLC's cumulative beam
acknowledgement (``potctl.quench``: restores confirmed from the acknowledgements,
re-issued when lost, handed to resistance control with ``beam_restore_handed_over`` when
that is not safe). A cell without data keeps its last known authority (a link drop is
not local control). ``beam_intent()`` exports it as plain data, ``restore_beam_intent``
takes it over in a new process (``potline.beam_ledger`` keeps it on disk) and
``plc_restarted`` marks moves a restarting PLC may have made unseen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from potctl.ae_detection import AEDetector, AERecord
from potctl.ae_prediction import AEPredictor
from potctl.amperage import AmperageController
from potctl.bath_chemistry import AlF3Controller
from potctl.config import ControlConfig
from potctl.feeding import OVERFEED, UNDERFEED, FeedController
from potctl.heat_balance import HeatBalance, liquidus_of
from potctl.pfc import PfcAccountant, PfcReport
from potctl.plant import Commands, Measurements
from potctl.quench import ACTIVE, ESCALATED, IDLE, RESTORING, BeamIntentSettings, QuenchController
from potctl.resistance import ResistanceController
from twin.layout import PlantLayout

__all__ = ["BEAM_INTENT_VERSION", "AlarmRecord", "AluminaObserverLike", "PotController"]

#: format version of ``PotController.beam_intent()``
BEAM_INTENT_VERSION = 1
#: smoothing of the calm pseudo-resistance per scan (judges beam moves in doubt)
R_CALM_ALPHA = 0.3


def _shift_times(d: dict[str, Any], shift_s: float) -> dict[str, Any]:
    """A copy of one exported cell entry with its times moved by ``shift_s`` [s]."""
    out = dict(d)

    def mv(table: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
        t = dict(table)
        for key in keys:
            v = t.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                t[key] = float(v) + shift_s
        return t

    out.update(mv(d, ("inflight_t_s",)))
    if isinstance(d.get("quench"), dict):
        out["quench"] = mv(d["quench"], ("t_start_s", "restore_t_s", "owed_since_s", "parked_t_s", "doubt_t_s"))
    if isinstance(d.get("handed"), dict):
        out["handed"] = mv(d["handed"], ("t_s",))
    return out


@dataclass(slots=True)
class AlarmRecord:
    """One AE-prediction alarm: when, which cell, the time to AE it announced [s]."""

    t_s: float
    cell: int
    time_to_ae_s: float
    source: str  # "slope" | "observer"


class AluminaObserverLike(Protocol):
    """What the controller needs of an alumina observer (``twin.observer.AluminaObserver``
    fits). An observer that also has ``alumina_std_wt_pct`` [wt %] is trusted per cell only
    once that is below ``prediction.observer_max_std_wt_pct``."""

    def update(
        self,
        current_a: np.ndarray,
        voltage_v: np.ndarray,
        feed_kg: np.ndarray,
        beam_mm: np.ndarray,
        dt_s: float,
        valid: np.ndarray | None = None,
    ) -> None:
        """Advance by ``dt_s`` [s]: current [A], voltage [V], alumina fed [kg] and beam moves
        [mm] per cell since the last update; ``valid`` False skips a cell."""

    @property
    def alumina_wt_pct(self) -> np.ndarray:
        """Estimated dissolved alumina per cell [wt %]."""

    def time_to_ae_s(self, current_a: np.ndarray, feed_rate_kg_s: np.ndarray) -> np.ndarray:
        """Time until the estimate reaches the critical level at this current [A] and feed
        rate [kg/s] [s] (inf: never)."""


class PotController:
    """Whole-plant pot controller (one instance for all lines and cells).

    Args:
        layout: plant topology (cells, lines, shot masses, nominal currents).
        config: controller settings (defaults embedded).
        observer: an alumina observer (``twin.observer.AluminaObserver``-like: ``update``,
            ``alumina_wt_pct``, ``time_to_ae_s``); None builds one from the nominal cell
            when ``prediction.use_observer`` is on.
        beam: how owed beam restores are reconciled with the acknowledgements
            (``potctl.quench.BeamIntentSettings``; its ``ack_timeout_s`` should exceed the
            bridge's).
    """

    def __init__(
        self,
        layout: PlantLayout,
        config: ControlConfig | None = None,
        observer: AluminaObserverLike | None = None,
        beam: BeamIntentSettings | None = None,
    ) -> None:
        self.layout = layout
        self.cfg = cfg = config or ControlConfig()
        n = layout.n_cells
        self.n = n
        self.cell_line = np.asarray(layout.cell_line, dtype=np.int64)
        self.detector = AEDetector(n, cfg.detection, cfg.e0_v)
        self.predictor = AEPredictor(n, cfg.prediction)
        self.quench = QuenchController(n, cfg.quench, beam)
        self.feeding = FeedController(n, layout.shot_mass_kg, cfg.feeding)
        nom = np.asarray(layout.nominal_current_ka, dtype=np.float64)
        rc = cfg.resistance
        target: float | np.ndarray
        if rc.target_uohm is not None:
            target = rc.target_uohm
        else:
            target = (rc.target_voltage_v - cfg.e0_v) / nom[self.cell_line] * 1e3
        self.resistance = ResistanceController(n, target, rc)
        #: the resistance target before any heat-balance offset [µΩ]
        self.r_target_base_uohm = self.resistance.target_uohm.copy()
        #: AlF3 control and the heat balance (None: off in the config)
        self.alf3: AlF3Controller | None = AlF3Controller(n, cfg.bath) if cfg.bath.enabled else None
        self.heat: HeatBalance | None = HeatBalance(n, cfg.heat) if (cfg.heat.enabled or cfg.bath.enabled) else None
        if self.heat is not None:
            self.heat.r_base_uohm = self.r_target_base_uohm.copy()
            self.heat.i_nom_ka = nom[self.cell_line].astype(np.float64)
            self.heat.e0_v = cfg.e0_v
        self._pending_samples: list[tuple[float, dict[str, np.ndarray]]] = []
        #: latest sampled alumina per cell [wt %] (NaN: none)
        self._sample_alumina = np.full(n, np.nan)
        self._bath_plan_t = -np.inf
        self._hx_sent = False
        self._heat_evt_r = np.zeros(n)
        self._heat_evt_hx = np.full(n, np.nan)
        self.amperage = AmperageController(nom, self.cell_line, cfg.amperage, cfg.e0_v)
        self.pfc = PfcAccountant(n, cfg.pfc)
        if observer is None and cfg.prediction.use_observer:
            from twin.observer import AluminaObserver

            observer = AluminaObserver(n, nominal_ce=cfg.feeding.ce_assumed)
        self.observer = observer
        self._obs_acc_t = 0.0
        self._obs_feed = np.zeros(n)
        self._obs_beam = np.zeros(n)
        self._t_last: float | None = None
        self._beam_prev: np.ndarray | None = None
        self._feed_prev: np.ndarray | None = None
        self._ops_prev = np.zeros(n, dtype=bool)
        self._ac_prev = np.zeros(n, dtype=bool)
        self._tap_prev = np.zeros(n, dtype=bool)
        self._feed_rate_ema = np.full(n, np.nan)
        self._hv_end_t = np.full(n, -np.inf)
        self._ops_end_t = np.full(n, -np.inf)
        self._cmd_shots = np.zeros(n, dtype=np.int64)
        self._ack_shots = np.zeros(n, dtype=np.int64)
        self._feeder_alarm = np.zeros(n, dtype=bool)
        #: last known command authority per cell (True: remote); a cell without data keeps
        #: its last one (a link drop is not a hand-back to local)
        self._auth: np.ndarray | None = None
        #: the controller's own beam moves not yet seen in the acknowledgements [mm], and
        #: when the oldest of them was commanded [s]
        self.beam_inflight_mm = np.zeros(n)
        self._inflight_t = np.full(n, np.nan)
        #: alumina-rich R the slope tracker held when each cell's last AE began [µΩ]
        self._r_rich_ae = np.full(n, np.nan)
        #: calm pseudo-resistance (smoothed; NaN: none yet) [µΩ]
        self._r_calm = np.full(n, np.nan)
        self._r_calm_since = np.full(n, np.nan)  # start of the current calm stretch [s]
        #: handed-over restores whose resistance-control takeover is armed
        self._hand_armed = np.zeros(n, dtype=bool)
        #: sequences restored from exported intent whose AE the detector has not seen yet
        self._imported_active = np.zeros(n, dtype=bool)
        self._pending_intent: tuple[dict[str, Any], float | None, bool] | None = None
        #: restored entries of cells without good data yet (reconciled at their first good
        #: reading: a new bridge starts counting then), times on this clock
        self._deferred_import: dict[int, dict[str, Any]] = {}
        self._deferred_same = False
        self._queued_events: list[tuple[str, int, str]] = []
        #: when each cell was last taken back into remote control [s] (-inf: from the start,
        #: +inf: in local now); an AE that started before it is not the controller's to pump
        self._remote_since = np.full(n, -np.inf)
        #: acknowledged beam position before the cell's current/last AE onset [mm]
        self._beam_calm = np.full(n, np.nan)
        self._ae_starts: dict[int, list[float]] = {}  # recent HV AE starts per cell [s]
        self._repeat_alarm_t: dict[int, float] = {}
        #: prediction alarms raised, in order
        self.alarm_log: list[AlarmRecord] = []
        #: every event emitted, in order (kind, cell or line, detail, time)
        self.event_log: list[tuple[float, str, int, str]] = []
        self.steps = 0

    # ------------------------------------------------------------------ operator requests
    def request_cut_out(self, cell: int, now: float) -> None:
        """Ask for ``cell`` to be shorted out: the line current ramps down, a permit is issued."""
        self.amperage.request_cut(int(cell), "out", now)

    def request_cut_in(self, cell: int, now: float) -> None:
        """Ask for ``cell`` to be put back in the series (same ramp procedure)."""
        self.amperage.request_cut(int(cell), "in", now)

    def request_restart(self, line: int) -> None:
        """Restarting a potroom on ``line``: ramp the current up at the restart rate."""
        self.amperage.request_restart(int(line))

    def set_power_schedule(self, line: int, schedule: list[tuple[float, float | None]]) -> None:
        """Demand response: (start [s], MW or None) steps for ``line``."""
        self.amperage.set_power_schedule(int(line), schedule)

    def set_line_target(self, line: int, ka: float) -> None:
        """Steady line-current target [kA]."""
        self.amperage.set_target(int(line), ka)

    def bath_measurements(
        self,
        t_s: float,
        alf3_wt_pct: np.ndarray | None = None,
        bath_temp_c: np.ndarray | None = None,
        alumina_wt_pct: np.ndarray | None = None,
    ) -> None:
        """Lab bath samples and temperature dips, [n_cells] arrays (NaN: no value for a
        cell; None: none at all), taken at plant time ``t_s`` [s] (this controller's clock).

        They are used at the next ``step`` (events ``bath_sample_used``): the excess AlF3
        [wt %] drives the AlF3 control, with the bath temperature [°C] it anchors the
        superheat estimate, the dissolved alumina [wt %] enters the liquidus when no alumina
        observer is there. Without bath or heat control configured they are only kept.

        Raises:
            ValueError: an array does not have one entry per cell.
        """
        n = self.n
        vals: dict[str, np.ndarray] = {}
        for name, arr in (("alf3_wt_pct", alf3_wt_pct), ("bath_temp_c", bath_temp_c),
                          ("alumina_wt_pct", alumina_wt_pct)):  # fmt: skip
            if arr is None:
                continue
            a = np.asarray(arr, dtype=np.float64)
            if a.shape != (n,):
                raise ValueError(f"bath_measurements: {name} has shape {a.shape}, expected ({n},)")
            vals[name] = a
        if vals:
            self._pending_samples.append((float(t_s), vals))

    # ------------------------------------------------------------------ queries
    @property
    def ae_records(self) -> list[AERecord]:
        """Finished and ongoing AEs (HV and LV)."""
        return self.detector.all_records()

    @property
    def time_to_ae_s(self) -> np.ndarray:
        return self.predictor.time_to_ae_s

    def pfc_report(self, now: float | None = None) -> PfcReport:
        """Tier 2 PFC figures so far (ongoing AEs counted up to ``now``)."""
        return self.pfc.report(self.detector.open_records(), now)

    # ------------------------------------------------------------------ beam intent
    def beam_intent(self) -> dict[str, Any]:
        """The controller's intended beam offsets as plain data (JSON-ready), for a ledger.

        One entry per cell that owes a restore or has one handed over to resistance
        control (so the size is bounded by the number of cells)::

            {"version": 1, "t_s": <plant time of the last step>, "n_cells": n,
             "cells": [{"cell": k,
                        "ack_mm": <acknowledged beam position last seen>,
                        "inflight_mm": <own moves commanded, not yet acknowledged>,
                        "inflight_t_s": <when the oldest of them was commanded> | null,
                        "quench": {"state": "active" | "escalated" | "restoring",
                                   "target_mm": <pre-AE position, acknowledgement coordinates>,
                                   "t_start_s", "restore_t_s", "owed_since_s", "parked_t_s",
                                   "lowered", "pumps", "refed", "adopted", "attempts",
                                   "doubt_mm", "doubt_t_s", "verify", "r_ref_uohm"} | absent,
                        "handed": {"owed_mm", "t_s", "why"} | absent}, ...]}

        Times are this controller's plant times [s]; positions [mm], + up. ``cells`` only
        changes when the intent does (a ledger can compare it to skip unchanged saves).
        Entries restored from a ledger whose cell has had no good data since are listed as
        they were restored (times on this clock).
        """
        prev = self._beam_prev
        cells: list[dict[str, Any]] = []
        for k in self.quench.intent_cells.tolist():
            d: dict[str, Any] = {
                "cell": int(k),
                "ack_mm": float(prev[k]) if prev is not None else 0.0,
                "inflight_mm": float(self.beam_inflight_mm[k]),
                "inflight_t_s": float(self._inflight_t[k]) if math.isfinite(self._inflight_t[k]) else None,
            }
            d.update(self.quench.export_cell(int(k)))
            cells.append(d)
        listed = {d["cell"] for d in cells}
        cells += [d for k, d in sorted(self._deferred_import.items()) if k not in listed]
        cells.sort(key=lambda d: int(d["cell"]))
        return {"version": BEAM_INTENT_VERSION, "t_s": float(self._t_last or 0.0), "n_cells": self.n,
                "cells": cells}  # fmt: skip

    def restore_beam_intent(
        self,
        data: dict[str, Any],
        meas: Measurements | None = None,
        now: float | None = None,
        *,
        gap_s: float | None = None,
        same_ack_base: bool = False,
    ) -> None:
        """Take over beam intent exported by ``beam_intent`` (a daemon restart), reconciled
        with the acknowledgements of ``meas`` (None: those of the next ``step``).

        Reconciliation per cell (events ``beam_intent_restored`` and, where it applies,
        ``beam_restore_handed_over`` come out with the next step's commands):

        * ``same_ack_base`` True (the acknowledgement totals continue those the intent was
          exported with: a simulator, or a bridge reporting the PLC's own counters): what
          moved since is read off the acknowledgements; the own moves then in flight count
          as made as far as the acknowledgements show them, the rest stays in flight. A
          difference no in-flight move and no quench could explain is taken as a new base.
        * otherwise (acknowledgement totals on another base: a bridge that saw a PLC restart,
          or a ledger written by one that counted from 0): positions carry over
          relative to the acknowledgement at export; a move that was in flight is in doubt
          (``doubt_mm``) and judged from the resistance when the cell is calm
          (``QuenchController.resolve_doubt``), or handed over when it cannot be.
        * a cell found in local control (good data, not remote: its PLC's watchdog expired
          while no controller ran) has its owed restore parked as if its room had just gone
          local; with a new base the PLC's moves in the gap are in no count, so before the
          restore is made the position is confirmed from R (``verify``), or the restore is
          handed over to resistance control;
        * a cell without good data in ``meas`` is reconciled at its first good reading (a
          new bridge starts its count then); until then its entry is kept as restored and
          exported as such.

        Args:
            data: exported intent.
            meas: the first measurements of this run, with the PLCs' real ``cell_remote``
                (not a mode's as-if-remote view); None: reconcile with those of the next
                ``step`` (then they must carry the real flags).
            now: plant time of ``meas`` [s] (required with ``meas``).
            gap_s: plant time elapsed since the export [s] (None: ``now`` − the export's
                ``t_s`` when that is positive, else 0: a clock restarted from 0 loses the gap).
            same_ack_base: see above.

        Raises:
            ValueError: ``data`` is not exported intent for this plant (the message names
                the key and what was expected); nothing is changed then.
        """
        self._check_intent(data)
        if meas is None:
            self._pending_intent = (data, gap_s, bool(same_ack_base))
            return
        if now is None:
            raise ValueError("restore_beam_intent: now is required with meas")
        self._queued_events += self._import_intent(data, meas, float(now), gap_s, bool(same_ack_base))
        self._beam_prev = np.asarray(meas.beam_ack_mm, dtype=np.float64).copy()

    def plc_restarted(self, cells: np.ndarray, now: float) -> None:
        """The PLC of ``cells`` restarted (the bridge saw its heartbeat jump back): its
        acknowledgement counter began again from 0, so a move of ours in flight may have
        been carried out without the total counting it. On cells owing a restore that move
        is now in doubt (judged from R before the restore, see ``restore_beam_intent``);
        elsewhere it is forgotten (resistance control judges from R anyway)."""
        c = np.asarray(cells, dtype=np.int64)
        q = self.quench
        for k in c[self.beam_inflight_mm[c] != 0.0].tolist():
            f = float(self.beam_inflight_mm[k])
            if q.state[k] != IDLE and q.owes[k]:
                q.add_doubt(k, f, now)
                self._queued_events.append(("beam_move_in_doubt", k, f"PLC restart with a {f:+.1f} mm move in "
                                            "flight: judged from R before the beam is restored"))  # fmt: skip
            self.beam_inflight_mm[k] = 0.0
            self._inflight_t[k] = np.nan

    def _check_intent(self, data: Any) -> list[tuple[int, dict[str, Any]]]:
        """Validate exported intent; returns (cell, entry) pairs.

        Raises:
            ValueError: naming the key and what was expected.
        """
        if not isinstance(data, dict):
            raise ValueError(f"beam intent: expected a table, got {type(data).__name__}")
        if data.get("version") != BEAM_INTENT_VERSION:
            raise ValueError(f"version: expected {BEAM_INTENT_VERSION}, got {data.get('version')!r}")
        if data.get("n_cells") != self.n:
            raise ValueError(f"n_cells: expected {self.n} (this plant), got {data.get('n_cells')!r}")
        t_s = data.get("t_s")
        if isinstance(t_s, bool) or not isinstance(t_s, (int, float)) or not math.isfinite(float(t_s)):
            raise ValueError(f"t_s: expected a finite number, got {t_s!r}")
        cells = data.get("cells")
        if not isinstance(cells, list):
            raise ValueError(f"cells: expected a list, got {type(cells).__name__}")
        out: list[tuple[int, dict[str, Any]]] = []
        seen: set[int] = set()
        probe = QuenchController(1, self.cfg.quench, self.quench.intent)
        for i, d in enumerate(cells):
            where = f"cells[{i}]"
            if not isinstance(d, dict):
                raise ValueError(f"{where}: expected a table, got {type(d).__name__}")
            k = d.get("cell")
            if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < self.n:
                raise ValueError(f"{where}.cell: expected a cell index 0..{self.n - 1}, got {k!r}")
            if k in seen:
                raise ValueError(f"{where}.cell: cell {k} listed twice")
            seen.add(k)
            for key, none_ok in (("ack_mm", False), ("inflight_mm", False), ("inflight_t_s", True)):
                v = d.get(key)
                if v is None and none_ok:
                    continue
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
                    raise ValueError(f"{where}.{key}: expected a finite number, got {v!r}")
            probe.import_cell(0, d, where, 0.0, 0.0)  # raises on a bad quench/handed table
            out.append((k, d))
        return out

    def _import_intent(
        self, data: dict[str, Any], meas: Measurements, now: float, gap_s: float | None, same: bool
    ) -> list[tuple[str, int, str]]:
        """Apply validated intent against ``meas`` (see ``restore_beam_intent``); cells
        without good data wait for their first good reading."""
        entries = self._check_intent(data)
        t_s = float(data["t_s"])
        gap = float(gap_s) if gap_s is not None else max(now - t_s, 0.0)
        shift_s = (now - max(gap, 0.0)) - t_s  # exported times -> this clock
        ok = np.asarray(meas.cell_ok, dtype=bool)
        shifted = [(k, _shift_times(d, shift_s)) for k, d in entries]
        self._deferred_same = same
        for k, d in shifted:
            if not ok[k]:
                self._deferred_import[k] = d
        return self._import_cells([(k, d) for k, d in shifted if ok[k]], meas, now, same)

    def _import_cells(
        self, entries: list[tuple[int, dict[str, Any]]], meas: Measurements, now: float, same: bool
    ) -> list[tuple[str, int, str]]:
        """Reconcile restored entries (times on this clock) with the acknowledgements of
        ``meas``, where these cells have good data (see ``restore_beam_intent``)."""
        beam = np.asarray(meas.beam_ack_mm, dtype=np.float64)
        remote = meas.remote_mask()  # the PLCs' own flags, also when observing
        q = self.quench
        bound = self.cfg.quench.max_total_down_mm + q.intent.restore_slack_mm
        events: list[tuple[str, int, str]] = []
        for k, d in entries:
            ack_s, f = float(d["ack_mm"]), float(d["inflight_mm"])
            ft = d.get("inflight_t_s")
            g = float(beam[k] - ack_s)  # what the acknowledgements moved since the export
            made = float(np.clip(g, min(0.0, f), max(0.0, f)))
            continuous = same and abs(g - made) <= bound
            shift_mm = 0.0 if continuous else g  # otherwise: positions relative to the export's ack
            q.import_cell(k, d, f"cells[{k}]", 0.0, shift_mm)
            infl, doubt = (f - made, 0.0) if continuous else (0.0, f)
            if abs(infl) < 0.05:
                infl = 0.0
            self.beam_inflight_mm[k] = infl
            self._inflight_t[k] = float(ft) if infl and ft is not None else (now if infl else np.nan)
            has_q = q.state[k] != IDLE
            if has_q and doubt:
                q.add_doubt(k, doubt, now)
            if has_q:
                self._imported_active[k] = q.state[k] in (ACTIVE, ESCALATED)
            self._hand_armed[k] = False
            found_local = has_q and not remote[k]
            if found_local and not q.parked[k]:  # its PLC's watchdog expired while no controller ran
                q.park(np.array([k]), now)
            if has_q and (found_local or q.parked[k]) and not continuous:
                q.verify[k] = True  # what its automation did in local is in no count: R confirms
                q.doubt_t[k] = now
            what = []
            if has_q:
                owed = float(q.pre_pos_mm[k] - beam[k] - infl)
                state = "parked" if q.parked[k] else ("AE" if q.state[k] != RESTORING else "restoring")
                what.append(f"restore owed {owed:+.1f} mm ({state})")
                if q.doubt_mm[k]:
                    what.append(f"{float(q.doubt_mm[k]):+.1f} mm in doubt")
                if infl:
                    what.append(f"{infl:+.1f} mm in flight")
                if found_local:
                    what.append("found in local control" + ("" if continuous else ": position to be confirmed by R"))
            if q.handed[k]:
                what.append(f"handed over ({float(q.handed_mm[k]):+.1f} mm): {q.handed_why[k]}")
            base = "acknowledgements continue" if continuous else "new acknowledgement base"
            events.append(("beam_intent_restored", k, f"{'; '.join(what) or 'nothing owed'} ({base})"))
        return events

    def _reconcile_inflight(self, d_beam: np.ndarray, now: float) -> None:
        """Count the acknowledged movement ``d_beam`` [mm] against the own moves in flight;
        a move not acknowledged within ``ack_timeout_s`` is counted as not made."""
        infl = self.beam_inflight_mm
        if not infl.any():
            return
        done = np.clip(d_beam, np.minimum(infl, 0.0), np.maximum(infl, 0.0))
        infl -= done
        infl[np.abs(infl) < 0.05] = 0.0
        expired = (infl != 0.0) & (now - self._inflight_t > self.quench.intent.ack_timeout_s)
        infl[expired] = 0.0
        self._inflight_t[infl == 0.0] = np.nan

    def _beam_intent_housekeeping(
        self, now: float, auth: np.ndarray, cell_ok: np.ndarray, valid: np.ndarray, pos: np.ndarray
    ) -> list[tuple[str, int, str]]:
        """Per scan, after AE detection: imported sequences whose AE is over, parked
        restores back in remote or over their grace, moves in doubt judged from R."""
        q = self.quench
        events: list[tuple[str, int, str]] = []
        det = self.detector
        seen_ae = det.active | det.pending
        if self._imported_active.any():
            self._imported_active &= q.busy
            gone = self._imported_active & valid & ~seen_ae
            self._imported_active &= ~(seen_ae | gone)
            if gone.any():  # the AE ended while no controller ran
                q.ended(np.flatnonzero(gone), now)
        if q.parked.any():
            back = q.parked & auth & cell_ok & ~det.active
            if back.any():
                q.unpark(np.flatnonzero(back), now)
            over = q.parked & ~auth & (now - q.parked_t > q.intent.local_grace_s)
            if over.any():
                g = q.intent.local_grace_s
                events += q.hand_over(np.flatnonzero(over), now, pos,
                                      f"room in local control for more than {g:.0f} s: the PLC's ACD control owns the beam")  # fmt: skip
        # R calm for doubt_settle_s since the doubt arose (a doubt from a restart: since the start)
        settled = now - np.fmax(q.doubt_t, self._r_calm_since) >= q.intent.doubt_settle_s
        judge = ((q.doubt_mm != 0.0) | q.verify) & (q.state == RESTORING) & (now >= q.restore_t) & ~q.parked & settled
        judge &= valid & ~seen_ae & ~det.lv_active & np.isfinite(self._r_calm)
        if judge.any():
            events += q.resolve_doubt(np.flatnonzero(judge), now, self._r_calm, pos, self.cfg.resistance.uohm_per_mm)
        return events

    def _resolve_handovers(
        self, now: float, judgeable: np.ndarray, r_ctl: np.ndarray, r_moves: np.ndarray
    ) -> list[tuple[str, int, str]]:
        """A handed-over restore is resolved once resistance control moved the cell, or
        judged it within 3 deadbands of its target (nothing left to correct)."""
        q = self.quench
        rc = self.cfg.resistance
        judge = q.handed & self._hand_armed & judgeable & ~q.busy & np.isfinite(r_ctl)
        if not judge.any():
            return []
        err = r_ctl - self.resistance.effective_target(now)
        moved = judge & (r_moves != 0.0)
        inband = judge & ~moved & (np.abs(err) <= 3.0 * rc.deadband_uohm)
        events: list[tuple[str, int, str]] = []
        for k in np.flatnonzero(moved | inband).tolist():
            how = (f"resistance control moved the beam {r_moves[k]:+.1f} mm" if moved[k]
                   else f"R within {abs(err[k]):.2f} µΩ of its target: nothing left to correct")  # fmt: skip
            events.append(("beam_restore_resolved", k, f"handed-over restore ({q.handed_mm[k]:+.1f} mm owed): {how}"))
        done = moved | inband
        q.clear_handover(np.flatnonzero(done))
        self._hand_armed[done] = False
        return events

    # ------------------------------------------------------------------ the cycle
    def step(self, meas: Measurements, now: float) -> Commands:
        """One control cycle: measurements of this scan in, commands out (no I/O)."""
        cfg = self.cfg
        n = self.n
        dt = 1.0 if self._t_last is None else max(now - self._t_last, 0.0)
        first = self._t_last is None
        self._t_last = now
        self.steps += 1
        events: list[tuple[str, int, str]] = []

        line = self.cell_line
        i_cell = np.asarray(meas.line_current_ka, dtype=np.float64)[line]
        tripped = np.asarray(meas.rectifier_tripped, dtype=bool)[line]
        line_ok = np.asarray(meas.line_ok, dtype=bool)[line]
        u = np.asarray(meas.cell_voltage_v, dtype=np.float64)
        cut = np.asarray(meas.cut_out, dtype=bool)
        tapping = np.asarray(meas.tapping, dtype=bool)
        anode_change = np.asarray(meas.anode_change, dtype=bool)
        ops = tapping | anode_change
        energised = ~cut & ~tripped & (i_cell > cfg.detection.min_current_ka)
        # a cell in circuit with current reads above its back-EMF; 0 V or garbage is a bad tag
        plausible = (u > cfg.e0_v) & (u < 200.0)
        valid = np.asarray(meas.cell_ok, dtype=bool) & line_ok & energised & plausible
        lost = cut | tripped | (line_ok & (i_cell <= cfg.detection.min_current_ka))
        # command authority: the cell's potroom PLC is in remote (observe_only: moot)
        remote = np.ones(n, dtype=bool) if cfg.observe_only else meas.remote_mask()
        cell_ok = np.asarray(meas.cell_ok, dtype=bool)
        beam = np.asarray(meas.beam_ack_mm, dtype=np.float64)
        feed = np.asarray(meas.feeder_ack, dtype=np.int64)
        if self._queued_events:
            events += self._queued_events
            self._queued_events = []
        if self._pending_intent is not None:  # restore_beam_intent without measurements: now
            data, gap_s, same = self._pending_intent
            self._pending_intent = None
            events += self._import_intent(data, meas, now, gap_s, same)
            self._beam_prev = beam.copy()
        if self._deferred_import:
            got = [k for k in self._deferred_import if cell_ok[k]]
            if got:
                entries = [(k, self._deferred_import.pop(k)) for k in got]
                events += self._import_cells(entries, meas, now, self._deferred_same)
                if self._beam_prev is not None:
                    self._beam_prev[got] = beam[got]
        if self._auth is None:
            self._auth = remote.copy()
            self._remote_since[~remote] = np.inf
        # a cell without data keeps its last known authority: a link drop is not local control
        auth = np.where(cell_ok, remote, self._auth)
        took = auth & ~self._auth
        gave = ~auth & self._auth
        self._auth = auth
        if gave.any():  # handed to local: the PLC's automation owns feeding and the beam now
            q = self.quench
            owing = gave & (q.state != IDLE) & q.owes
            q.park(np.flatnonzero(owing), now)  # the owed restore waits (local_grace_s), then is handed over
            q.release(gave & ~owing)
            self.beam_inflight_mm[gave] = 0.0  # the bridge drops its queue; the acks show what was done
            self._inflight_t[gave] = np.nan
            self._hand_armed[gave] = False
            self.predictor.reset_reference(gave)
            self._remote_since[gave] = np.inf
        if took.any():
            self.predictor.reset_reference(took)
            self._remote_since[took] = now
        local = ~remote
        if local.any():
            self.feeding.hold_local(local, now)

        if first:
            self._beam_prev = beam.copy()
            self._feed_prev = feed.copy()
            self._ops_prev = ops.copy()
            self._ac_prev = anode_change.copy()
            self._tap_prev = tapping.copy()
        beam_prev = beam if self._beam_prev is None else self._beam_prev  # (set on the first step)
        feed_prev = feed if self._feed_prev is None else self._feed_prev
        d_beam = beam - beam_prev
        d_feed = np.maximum(feed - feed_prev, 0)
        self._beam_prev = beam.copy()
        self._feed_prev = feed.copy()
        moved = np.abs(d_beam) > 0.05
        self._reconcile_inflight(d_beam, now)
        pos = beam + self.beam_inflight_mm  # where the beam goes with the moves already commanded
        r_now = (u - cfg.e0_v) / np.maximum(i_cell, 1e-6) * 1e3  # pseudo-resistance [µΩ]
        ops_end = self._ops_prev & ~ops
        ac_end = self._ac_prev & ~anode_change
        ac_start = anode_change & ~self._ac_prev
        tap_end = self._tap_prev & ~tapping
        self._tap_prev = tapping.copy()
        ops_start = ops & ~self._ops_prev
        self._ops_prev = ops.copy()
        self._ac_prev = anode_change.copy()

        # ---- 2. AE detection
        self._ops_end_t[ops_end] = now
        self._ops_end_t[ops] = now
        holdoff = (now - np.maximum(self._hv_end_t, self._ops_end_t)) < cfg.detection.lv_holdoff_s
        quiet = ops | self.quench.busy | holdoff | moved
        det = self.detector.update(now, u, i_cell, valid, quiet, lost)
        q_shots = np.zeros(n, dtype=np.int64)
        if det.suspected.size:  # first sample above the threshold: AE feed now, beam on confirmation
            sus = det.suspected[remote[det.suspected]]
            q_shots += self.quench.pre_feed(sus, now)
        if det.started.size:
            st = det.started
            mask = np.zeros(n, dtype=bool)
            mask[st] = True
            own = np.zeros(n, dtype=bool)  # the controller was in charge from the AE's first sample
            for k in st:
                rec = self.detector.open_record(int(k))
                own[k] = bool(remote[k]) and rec.start_s >= self._remote_since[k]
                lead = now - self.predictor.alarm_since[k] if self.predictor.alarm[k] else float("nan")
                where = "" if remote[k] else ", room in local control: the PLC's AE kill acts"
                events.append(("ae_start", int(k),
                               f"U={u[k]:.1f} V, start {rec.start_s:.0f} s, alarm lead {lead:.0f} s{where}"))  # fmt: skip
            # the alumina-rich R at the pre-AE position (before the predictor forgets it below)
            held = np.where(np.isfinite(self.predictor.r_ref), self.predictor.r_ref, self.predictor.r_fit)
            self._r_rich_ae[st] = held[st] + cfg.resistance.alumina_rich_offset_uohm
            q_shots += self.quench.start(np.flatnonzero(own), now, pos, self._r_rich_ae)
            self._check_repeats(st, now, events)
            self.feeding.force_overfeed(mask & remote, now, cfg.feeding.post_ae_overfeed_s)
            self.predictor.reset(mask)
            self.resistance.lock(mask, now + cfg.resistance.lock_after_ae_s)
        # an AE burning on a cell in remote that the quench does not hold: it started under
        # local control (taken back mid-AE, or confirmed just after): feed only, no pumping
        orphan = remote & self.detector.active & ((self.quench.state == IDLE) | self.quench.parked)
        if orphan.any() and cfg.quench.enabled:
            oc = np.flatnonzero(orphan)
            t0 = np.array([self.detector.open_record(int(k)).start_s for k in oc])
            burning_now = self.detector.active & ~self.detector.below_end_threshold()
            pre = np.where(np.isfinite(self._beam_calm), self._beam_calm, beam)
            a_shots, adopted = self.quench.adopt(oc, now, t0, pre, beam, burning_now, self._r_rich_ae)
            q_shots += a_shots
            if adopted.size:
                amask = np.zeros(n, dtype=bool)
                amask[adopted] = True
                self.feeding.force_overfeed(amask, now, cfg.feeding.post_ae_overfeed_s)
                self.resistance.lock(amask, now + cfg.resistance.lock_after_ae_s)
                for k in adopted:
                    age = now - self.detector.open_record(int(k)).start_s
                    events.append(("quench_adopted", int(k),
                                   f"AE {age:.0f} s old taken over from local control: AE feed {int(a_shots[k])} "
                                   "shots, no beam pumping (the PLC's AE kill acted), beam back to its pre-AE "
                                   "position after the AE"))  # fmt: skip
        for k in self.quench.lapse(self.detector.pending | self.detector.active):
            hold = cfg.quench.first_sample_holdoff_s / 60.0
            events.append(("ae_unconfirmed", int(k), f"one sample above the AE threshold, back to U={u[k]:.1f} V before "
                                                     f"confirmation; the next AE feed waits for confirmation for {hold:.0f} min"))  # fmt: skip
        calm = ~(self.detector.pending | self.detector.active)
        seen = calm & cell_ok  # (a cell without good data reports a held or meaningless position)
        self._beam_calm[seen] = beam[seen]
        # calm pseudo-resistance (judges beam moves in doubt); a beam move steps it
        r_ok_calm = valid & calm & ~self.detector.lv_active & ~ops
        fresh_r = np.isnan(self._r_calm) | moved
        self._r_calm = np.where(r_ok_calm, np.where(fresh_r, r_now, self._r_calm + R_CALM_ALPHA * (r_now - self._r_calm)),
                                self._r_calm)  # fmt: skip
        self._r_calm_since = np.where(
            r_ok_calm, np.where(np.isnan(self._r_calm_since), now, self._r_calm_since), np.nan
        )
        events += self._beam_intent_housekeeping(now, auth, cell_ok, valid, pos)
        if det.ended.size:
            self.quench.ended(det.ended, now)
            self._hv_end_t[det.ended] = now
            for k in det.ended:
                rec = self.detector.records[-1]
                for r in reversed(self.detector.records):
                    if r.cell == int(k) and r.kind == "HV":
                        rec = r
                        break
                self.pfc.add_ae(rec)
                events.append(("ae_end", int(k), f"duration {rec.duration_s:.0f} s, peak {rec.peak_v:.1f} V"))
            mask = np.zeros(n, dtype=bool)
            mask[det.ended] = True
            self.resistance.lock(mask, now + cfg.resistance.lock_after_ae_s)
        if det.lv_started.size:
            mask = np.zeros(n, dtype=bool)
            mask[det.lv_started] = True
            self.feeding.force_overfeed(mask & remote, now, cfg.feeding.post_ae_overfeed_s)
            self.resistance.lock(mask, now + cfg.resistance.lock_after_ae_s)
            for k in det.lv_started:
                events.append(("lvae_start", int(k), f"U={u[k]:.2f} V"))
        if det.lv_ended.size:
            ended_lv = set(int(k) for k in det.lv_ended)
            for r in reversed(self.detector.records):
                if not ended_lv:
                    break
                if r.kind == "LV" and r.cell in ended_lv:
                    ended_lv.discard(r.cell)
                    self.pfc.add_ae(r)
                    events.append(("lvae_end", r.cell, f"duration {r.duration_s:.0f} s"))

        # ---- 3. slope tracker, observer, prediction
        in_ae = self.detector.active | self.detector.lv_active
        r_uohm = r_now
        r_ok = valid & ~in_ae & ~ops & ~self.quench.busy
        # operations start/end and beam moves step R: drop/shift history instead of a false slope
        self.predictor.rebase(moved | ops_end | ops_start)
        tta_obs = None
        alumina = None
        if self.observer is not None:
            fed_kg = d_feed * self.feeding.shot_mass_kg
            if dt > 0:  # what is really fed (the PLC's own automation in observe mode)
                a = min(dt / 1800.0, 1.0)
                self._feed_rate_ema = np.where(
                    np.isnan(self._feed_rate_ema),
                    self.feeding.nominal_kg_s(i_cell),
                    self._feed_rate_ema + a * (fed_kg / dt - self._feed_rate_ema),
                )
            self._obs_acc_t += dt
            self._obs_feed += fed_kg
            self._obs_beam += d_beam
            if self._obs_acc_t >= cfg.prediction.observer_period_s - 1e-9:
                obs_valid = valid & ~ops
                self.observer.update(i_cell * 1e3, u, self._obs_feed, self._obs_beam, self._obs_acc_t, obs_valid)
                self._obs_acc_t = 0.0
                self._obs_feed[:] = 0.0
                self._obs_beam[:] = 0.0
                if cfg.observe_only:
                    plan = self._feed_rate_ema  # what the plant's own automation feeds
                else:  # local rooms: what their PLCs feed
                    plan = np.where(remote, self.feeding.nominal_kg_s(i_cell) * self.feeding.rate_factor(),
                                    self._feed_rate_ema)  # fmt: skip
                if np.all(np.isfinite(plan)):
                    # trust the estimate only once the filter has converged on the cell
                    std = getattr(self.observer, "alumina_std_wt_pct", None)
                    use = valid & ~in_ae
                    if std is not None:
                        use &= np.asarray(std) < cfg.prediction.observer_max_std_wt_pct
                    tta_obs = np.where(use, self.observer.time_to_ae_s(i_cell * 1e3, plan), np.inf)
                    alumina = np.where(use, self.observer.alumina_wt_pct, np.inf)
        new_alarm = self.predictor.update(now, r_uohm, r_ok, alumina, tta_obs)
        pre_shots = np.zeros(n, dtype=np.int64)
        if new_alarm.size:
            src_obs = np.isfinite(self.predictor.tta_obs_s[new_alarm]) & (
                self.predictor.tta_obs_s[new_alarm] <= self.predictor.tta_slope_s[new_alarm]
            )
            for k, so in zip(new_alarm, src_obs, strict=False):
                tta = float(self.predictor.time_to_ae_s[k])
                self.alarm_log.append(AlarmRecord(now, int(k), tta, "observer" if so else "slope"))
                where = "" if remote[k] else " (room in local control: no preventive feed)"
                events.append(("ae_predicted", int(k), f"time to AE {tta:.0f} s{where}"))
            mask = np.zeros(n, dtype=bool)
            mask[new_alarm] = True
            mask &= valid & ~in_ae & remote
            switched = self.feeding.force_overfeed(mask, now)
            self.predictor.reset_reference(switched)
            pre_shots[mask] = cfg.feeding.preventive_shots

        # ---- 4. feeding
        if ac_start.any():
            self.feeding.anode_change(ac_start, now)
            self.resistance.lock(ac_start, now + cfg.resistance.lock_after_feed_change_s)
        can_feed = valid & remote
        slope_high = self.predictor.significant(cfg.feeding.slope_switch_nohm_per_min)
        f_shots, changed = self.feeding.step(now, dt, i_cell, can_feed, slope_high)
        if changed.any():
            to_over = changed & (self.feeding.phase == OVERFEED)
            self.predictor.reset_reference(to_over)
            self.resistance.lock(changed, now + cfg.resistance.lock_after_feed_change_s)

        # ---- 5. quench
        burning = self.detector.active & ~self.detector.below_end_threshold()
        # no stroke nor restore where it could not happen: tapping/anode change, out of circuit,
        # no data, local control, or nothing is sent at all
        no_beam = ops | cut | ~cell_ok | ~remote | cfg.observe_only
        qs, q_moves, q_ev = self.quench.step(now, burning, no_beam, beam, self.beam_inflight_mm)
        q_shots += qs
        events += q_ev

        # ---- 6. resistance (ACD) control
        rc = cfg.resistance
        if tap_end.any():
            self.resistance.operation_ended(tap_end, now, rc.lock_after_tapping_s)
        if ac_end.any():
            self.resistance.operation_ended(ac_end, now, rc.lock_after_anode_change_s)
            self.resistance.anode_changed(ac_end, now)
        hand = self.quench.handed
        if hand.any() and not cfg.observe_only:  # handed-over restores: resistance control takes them
            arm = hand & ~self._hand_armed & remote & cell_ok
            if arm.any():
                self.resistance.take_over(arm, now)
                self._hand_armed |= arm
        # The controlled R is the alumina-rich one (lowest filtered R since the last
        # overfeed began, shifted with every step the slope tracker rebased), judged early
        # in the underfeed, so the alumina cycle does not make the beam hunt; right after
        # tapping/anode change a larger correction is allowed at once.
        elapsed = now - self.feeding.phase_since
        lean = self.predictor.significant(0.5 * cfg.feeding.slope_switch_nohm_per_min)
        window = (
            (self.feeding.phase == UNDERFEED)
            & (elapsed >= rc.lock_after_feed_change_s)
            & (elapsed < rc.underfeed_window_s)
        )
        r_rich = np.where(np.isfinite(self.predictor.r_ref), self.predictor.r_ref, self.predictor.r_fit)
        r_rich = r_rich + rc.alumina_rich_offset_uohm
        with np.errstate(invalid="ignore"):
            post_op = self.resistance.boosted(now) & (
                np.abs(r_rich - self.resistance.effective_target(now)) > 3.0 * rc.deadband_uohm
            )
        r_ctl = r_rich
        eligible = (valid & remote & ~ops & ~in_ae & ~self.quench.busy & ~self.predictor.alarm & ~lean
                    & (window | post_op))  # fmt: skip
        r_moves = np.zeros(n)
        if rc.enabled:
            r_moves = self.resistance.step(now, r_ctl, eligible)
        if hand.any():
            events += self._resolve_handovers(now, eligible | (valid & remote & ~ops & ~in_ae), r_ctl, r_moves)

        # ---- 7. amperage
        ae_excess = np.where(
            self.detector.active & np.isfinite(self.detector.r_base),
            u - self.detector.baseline_voltage(i_cell),
            0.0,
        )
        ae_excess_line = np.bincount(line, weights=ae_excess, minlength=self.layout.n_lines)
        sp, a_ev = self.amperage.step(
            now,
            np.asarray(meas.line_current_ka, dtype=np.float64),
            np.asarray(meas.line_voltage_v, dtype=np.float64),
            np.asarray(meas.line_setpoint_ka, dtype=np.float64),
            np.asarray(meas.rectifier_remote, dtype=bool),
            np.asarray(meas.rectifier_tripped, dtype=bool),
            np.asarray(meas.line_ok, dtype=bool),
            cut,
            ae_excess_line,
        )
        events += a_ev
        for li in range(self.layout.n_lines):
            if self.amperage.setpoint_changed_since(li) == now:
                self.resistance.lock(line == li, now + rc.lock_after_current_change_s)

        # ---- 8. PFC accounting
        self.pfc.accumulate(dt, i_cell, ~cut & ~tripped)

        # ---- 9. bath chemistry and heat balance
        alf3_kg = np.zeros(n)
        hx_cmd = np.full(n, np.nan)
        if self.heat is not None:
            can = valid & remote if not cfg.observe_only else np.zeros(n, dtype=bool)
            fed_kg = d_feed * self.feeding.shot_mass_kg
            alf3_kg, hx_cmd = self._bath_step(now, dt, i_cell, u, meas, valid, can, fed_kg, events)

        # ---- compose, interlock, book
        cmds = Commands.idle(n, self.layout.n_lines)
        if not cfg.observe_only:
            # nothing goes to a cell whose potroom is in local control (its PLC would refuse)
            fed_ok = (valid | self.detector.active) & remote
            shots = np.where(fed_ok, f_shots + q_shots + pre_shots, 0)
            if not cfg.feeding.enabled:
                shots = np.where(fed_ok, q_shots, 0)
            if not cfg.quench.enabled:
                shots = (
                    np.where(valid & remote, f_shots + pre_shots, 0) if cfg.feeding.enabled else np.zeros(n, np.int64)
                )
            moves = q_moves + r_moves
            # interlock: never a beam move on a cell in tapping/anode change, out of circuit,
            # with bad data or in local control
            moves = np.where(ops | cut | ~cell_ok | ~remote, 0.0, moves)
            cmds.feed_shots = shots.astype(np.int64)
            cmds.beam_move_mm = moves
            sent = np.abs(moves) >= 0.05  # (the bridge sends nothing smaller)
            if sent.any():
                newly = sent & (self.beam_inflight_mm == 0.0)
                self._inflight_t[newly] = now
                self.beam_inflight_mm[sent] += moves[sent]
            if cfg.amperage.enabled:
                cmds.line_setpoint_ka = sp
            cmds.alf3_kg = np.where(remote, alf3_kg, 0.0)
            cmds.hx_duty_kw = np.where(remote, hx_cmd, np.nan)
            self.feeding.add_fed(np.where(fed_ok, q_shots + pre_shots, 0))
            self._check_feeders(cmds.feed_shots, d_feed, remote, events)
        cmds.events = events
        if events:
            self.event_log.extend((now, kind, idx, detail) for kind, idx, detail in events)
        return cmds

    def _alumina_for_liquidus(self) -> np.ndarray:
        """Dissolved alumina per cell for the liquidus [wt %]: the observer's converged
        estimate, else the latest sample, else the configured assumption."""
        a = np.full(self.n, self.cfg.bath.alumina_assumed_wt_pct)
        a = np.where(np.isfinite(self._sample_alumina), self._sample_alumina, a)
        if self.observer is not None:
            est = np.asarray(self.observer.alumina_wt_pct, dtype=np.float64)
            std = getattr(self.observer, "alumina_std_wt_pct", None)
            ok = np.isfinite(est) & (est > 0.5) & (est < 8.0)
            if std is not None:
                ok &= np.asarray(std) < self.cfg.prediction.observer_max_std_wt_pct
            a = np.where(ok, est, a)
        return a

    def _bath_step(self, now: float, dt: float, i_cell: np.ndarray, u: np.ndarray, meas: Measurements,
                   valid: np.ndarray, can: np.ndarray, fed_kg: np.ndarray,
                   events: list[tuple[str, int, str]]) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """Samples in, superheat/ledge estimate, AlF3 additions, resistance offset and
        exchanger duty out (``potctl.bath_chemistry``, ``potctl.heat_balance``)."""
        heat = self.heat
        assert heat is not None
        bc, hc = self.cfg.bath, self.cfg.heat
        n = self.n
        heat.observe(now, i_cell, u, meas.shell_temp_c, valid)
        alf3 = self.alf3
        if self._pending_samples:
            pending, self._pending_samples = self._pending_samples, []
            for t_s, vals in pending:
                al = vals.get("alumina_wt_pct")
                if al is not None:
                    self._sample_alumina = np.where(np.isfinite(al), al, self._sample_alumina)
                x = vals.get("alf3_wt_pct", np.full(n, np.nan))
                t_b = vals.get("bath_temp_c", np.full(n, np.nan))
                used_x = alf3.sample(min(t_s, now), x) if alf3 is not None else np.isfinite(x)
                # the liquidus of the sample: its AlF3, else the carried estimate
                x_liq = np.where(np.isfinite(x), x, alf3.alf3_est_wt_pct if alf3 is not None else np.nan)
                liq = liquidus_of(x_liq, bc.caf2_wt_pct, self._alumina_for_liquidus())
                used_t = heat.sample(t_b, liq)
                if alf3 is not None:
                    self._bath_plan(liq)
                sh = heat.superheat_k()
                for k in np.flatnonzero(used_x | used_t).tolist():
                    parts = [f"AlF3 {x[k]:.1f} wt %" if np.isfinite(x[k]) else "no AlF3",
                             f"T {t_b[k]:.0f} °C" if np.isfinite(t_b[k]) else "no temperature",
                             f"liquidus {liq[k]:.0f} °C", f"superheat est {sh[k]:.1f} K"]  # fmt: skip
                    if alf3 is not None:
                        parts.append(f"AlF3 plan {alf3.rate_kg_per_day[k]:.0f} kg/day (feedforward "
                                     f"{alf3.ff_kg_per_day[k]:.0f}, bias {alf3.bias_kg_per_day[k]:+.0f}, feedback "
                                     f"{alf3.fb_kg_per_day[k]:+.0f}, temperature {alf3.temp_kg_per_day[k]:+.0f})")  # fmt: skip
                    events.append(("bath_sample_used", int(k), ", ".join(parts)))
                    if np.isfinite(x[k]) and abs(x[k] - bc.target_wt_pct) > bc.band_wt_pct:
                        events.append(("alf3_off_band", int(k), f"sampled AlF3 {x[k]:.1f} wt %, target "
                                       f"{bc.target_wt_pct:.1f} ± {bc.band_wt_pct:.1f} wt %"))  # fmt: skip
                    if np.isfinite(sh[k]) and not hc.superheat_min_k <= sh[k] <= hc.superheat_max_k:
                        events.append(("superheat_off_band", int(k), f"superheat est {sh[k]:.1f} K, band "
                                       f"{hc.superheat_min_k:.0f}-{hc.superheat_max_k:.0f} K"))  # fmt: skip
        add = np.zeros(n)
        if alf3 is not None:
            if now - self._bath_plan_t >= 3600.0:  # the feedforward follows the feed and temperature hourly
                self._bath_plan(None)
            add = alf3.step(now, dt, fed_kg, can)
            for k in np.flatnonzero(add > 0.0).tolist():
                events.append(("alf3_addition", int(k), f"{add[k]:.0f} kg AlF3 ({alf3.added_today_kg[k]:.0f} kg "
                                                        f"today, plan {alf3.rate_kg_per_day[k]:.0f} kg/day)"))  # fmt: skip
        hx_cmd = np.full(n, np.nan)
        if hc.enabled:
            changed = heat.act(now, i_cell, can)
            if changed.any():
                self.resistance.set_target(self.r_target_base_uohm + heat.r_offset_uohm)
            if heat.hx_installed and (changed.any() or not self._hx_sent):
                hx_cmd = np.where(can, heat.hx_kw, np.nan)
                self._hx_sent = self._hx_sent or bool(can.any())
            big = changed & ((np.abs(heat.r_offset_uohm - self._heat_evt_r) >= 0.5)
                             | ~(np.abs(heat.hx_kw - self._heat_evt_hx) < 5.0))  # fmt: skip
            if big.any():
                sh, ledge = heat.superheat_k(), heat.ledge_cm()
                for k in np.flatnonzero(big).tolist():
                    hx = f", exchanger {heat.hx_kw[k]:.0f} kW" if heat.hx_installed else ""
                    events.append(("heat_balance", int(k), f"superheat est {sh[k]:.1f} K, ledge est {ledge[k]:.1f} cm: "
                                   f"resistance target {heat.r_offset_uohm[k]:+.2f} µΩ{hx}"))  # fmt: skip
                self._heat_evt_r[big] = heat.r_offset_uohm[big]
                self._heat_evt_hx[big] = heat.hx_kw[big]
        return add, hx_cmd

    def _bath_plan(self, liquidus: np.ndarray | None) -> None:
        """Re-plan the daily AlF3 additions from the carried AlF3 and superheat estimates."""
        alf3, heat = self.alf3, self.heat
        assert alf3 is not None and heat is not None
        bc, hc = self.cfg.bath, self.cfg.heat
        alumina = self._alumina_for_liquidus()
        if liquidus is None or not np.all(np.isfinite(liquidus)):
            carried = liquidus_of(alf3.alf3_est_wt_pct, bc.caf2_wt_pct, alumina)
            liquidus = carried if liquidus is None else np.where(np.isfinite(liquidus), liquidus, carried)
        heat.set_liquidus(liquidus)
        t_bath = liquidus + heat.superheat_k()
        t_want = liquidus_of(np.full(self.n, bc.target_wt_pct), bc.caf2_wt_pct, alumina) + hc.superheat_target_k
        alf3.plan(t_bath, t_want)
        self._bath_plan_t = self._t_last if self._t_last is not None else 0.0

    def _check_repeats(self, started: np.ndarray, now: float, events: list[tuple[str, int, str]]) -> None:
        """Alarm ``ae_repeating`` when a cell has ``repeat_alarm_count`` HV AEs within
        ``repeat_alarm_window_s`` (at most once per window per cell): the quench's alumina is
        not reaching the bath, which no control action fixes."""
        dc = self.cfg.detection
        for k in started:
            k = int(k)
            times = [t for t in self._ae_starts.get(k, []) if now - t < dc.repeat_alarm_window_s] + [now]
            self._ae_starts[k] = times
            if (
                len(times) >= dc.repeat_alarm_count
                and now - self._repeat_alarm_t.get(k, -np.inf) >= dc.repeat_alarm_window_s
            ):
                self._repeat_alarm_t[k] = now
                events.append((
                    "ae_repeating", k,
                    f"{len(times)} AEs in {(now - times[0]) / 60:.0f} min: the feed is not reaching the bath? "
                    "check the feeder holes and the hopper",
                ))  # fmt: skip

    def _check_feeders(self, shots: np.ndarray, d_ack: np.ndarray, remote: np.ndarray,
                       events: list[tuple[str, int, str]]) -> None:  # fmt: skip
        """Alarm once when a cell's acknowledged shots lag the commanded ones (cells in
        local control are not compared: their PLC feeds on its own, nothing is commanded)."""
        local = ~remote
        self._cmd_shots[local] = 0
        self._ack_shots[local] = 0
        self._feeder_alarm[local] = False
        self._ack_shots += np.where(remote, d_ack, 0)
        lag = self._cmd_shots - self._ack_shots
        bad = (lag >= self.cfg.feeding.feeder_fault_shots) & ~self._feeder_alarm
        for k in np.flatnonzero(bad):
            events.append(("feeder_fault", int(k), f"{int(lag[k])} shots not acknowledged"))
        self._feeder_alarm |= bad
        self._feeder_alarm &= lag > 0
        self._cmd_shots += shots
