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
8. PFC (Tier 2) accounting.

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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from potctl.ae_detection import AEDetector, AERecord
from potctl.ae_prediction import AEPredictor
from potctl.amperage import AmperageController
from potctl.config import ControlConfig
from potctl.feeding import OVERFEED, UNDERFEED, FeedController
from potctl.pfc import PfcAccountant, PfcReport
from potctl.plant import Commands, Measurements
from potctl.quench import IDLE, QuenchController
from potctl.resistance import ResistanceController
from twin.layout import PlantLayout

__all__ = ["AlarmRecord", "AluminaObserverLike", "PotController"]


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
    """

    def __init__(
        self, layout: PlantLayout, config: ControlConfig | None = None, observer: AluminaObserverLike | None = None
    ) -> None:
        self.layout = layout
        self.cfg = cfg = config or ControlConfig()
        n = layout.n_cells
        self.n = n
        self.cell_line = np.asarray(layout.cell_line, dtype=np.int64)
        self.detector = AEDetector(n, cfg.detection, cfg.e0_v)
        self.predictor = AEPredictor(n, cfg.prediction)
        self.quench = QuenchController(n, cfg.quench)
        self.feeding = FeedController(n, layout.shot_mass_kg, cfg.feeding)
        nom = np.asarray(layout.nominal_current_ka, dtype=np.float64)
        rc = cfg.resistance
        target: float | np.ndarray
        if rc.target_uohm is not None:
            target = rc.target_uohm
        else:
            target = (rc.target_voltage_v - cfg.e0_v) / nom[self.cell_line] * 1e3
        self.resistance = ResistanceController(n, target, rc)
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
        self._remote_prev: np.ndarray | None = None
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
        if self._remote_prev is None:
            self._remote_prev = remote.copy()
            self._remote_since[~remote] = np.inf
        took = remote & ~self._remote_prev
        gave = ~remote & self._remote_prev
        self._remote_prev = remote.copy()
        if gave.any():  # handed to local: the PLC's automation owns feeding and the beam now
            self.quench.release(gave)
            self.predictor.reset_reference(gave)
            self._remote_since[gave] = np.inf
        if took.any():
            self.predictor.reset_reference(took)
            self._remote_since[took] = now
        local = ~remote
        if local.any():
            self.feeding.hold_local(local, now)

        beam = np.asarray(meas.beam_ack_mm, dtype=np.float64)
        feed = np.asarray(meas.feeder_ack, dtype=np.int64)
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
            q_shots += self.quench.start(np.flatnonzero(own), now, beam)
            self._check_repeats(st, now, events)
            self.feeding.force_overfeed(mask & remote, now, cfg.feeding.post_ae_overfeed_s)
            self.predictor.reset(mask)
            self.resistance.lock(mask, now + cfg.resistance.lock_after_ae_s)
        # an AE burning on a cell in remote that the quench does not hold: it started under
        # local control (taken back mid-AE, or confirmed just after): feed only, no pumping
        orphan = remote & self.detector.active & (self.quench.state == IDLE)
        if orphan.any() and cfg.quench.enabled:
            oc = np.flatnonzero(orphan)
            t0 = np.array([self.detector.open_record(int(k)).start_s for k in oc])
            burning_now = self.detector.active & ~self.detector.below_end_threshold()
            pre = np.where(np.isfinite(self._beam_calm), self._beam_calm, beam)
            a_shots, adopted = self.quench.adopt(oc, now, t0, pre, beam, burning_now)
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
        self._beam_calm[calm] = beam[calm]
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
        r_uohm = (u - cfg.e0_v) / np.maximum(i_cell, 1e-6) * 1e3
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
        qs, q_moves, q_ev = self.quench.step(now, burning, ops | ~remote, beam)
        q_shots += qs
        events += q_ev

        # ---- 6. resistance (ACD) control
        rc = cfg.resistance
        if tap_end.any():
            self.resistance.operation_ended(tap_end, now, rc.lock_after_tapping_s)
        if ac_end.any():
            self.resistance.operation_ended(ac_end, now, rc.lock_after_anode_change_s)
            self.resistance.anode_changed(ac_end, now)
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
            moves = np.where(ops | cut | ~np.asarray(meas.cell_ok, dtype=bool) | ~remote, 0.0, moves)
            cmds.feed_shots = shots.astype(np.int64)
            cmds.beam_move_mm = moves
            if cfg.amperage.enabled:
                cmds.line_setpoint_ka = sp
            self.feeding.add_fed(np.where(fed_ok, q_shots + pre_shots, 0))
            self._check_feeders(cmds.feed_shots, d_feed, remote, events)
        cmds.events = events
        if events:
            self.event_log.extend((now, kind, idx, detail) for kind, idx, detail in events)
        return cmds

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
