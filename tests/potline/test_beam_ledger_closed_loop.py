"""Issue 15's done-when for beam restores, offline on the twin: an AE storm on 8 cells with
10 PLC link drops and 3 daemon restarts (kill -9: the controller rebuilt from the beam
ledger file written every cycle before the commands went out) leaves every cell's beam
within ±2 mm of where resistance control wants it.

The twin runs behind ``FaultyBridge``, which reports what the daemon's bridge would: beam
acknowledgements as totals (held while a link is down; a room without a link when a
bridge starts has no value until its first good reading), the cells of a room whose link
is down as bad data and not remote; commands to such a room are lost, those of a cycle
in which its link dies too. Each kill comes while a restore is owed (the second one with
a stroke in flight), after that cycle's ledger save, before (or after) its write. A PLC whose heartbeat stops for ``WATCHDOG_S`` drops to local
control until the heartbeat returns. The PLCs' own automation moves no beam here (local
AE kill off, local ACD deadband 20 µΩ), so every beam movement is the controller's,
quench or resistance control; what a PLC's automation does to a beam while in local
(strokes, ACD moves nobody counted) is covered by ``tests/potctl/test_beam_intent.py``.

Two kinds of acknowledgement totals after a restart:

* the PLCs' own counters, which a daemon restart does not reset (``plc_counters``: what
  ``plc_bridge.plant`` reports, its totals starting at each PLC's first reading; the
  ledger says ``ack_base = "plc_counters"`` and the daemon restores it with
  ``same_ack_base=True``): the done-when holds exactly;
* totals a new bridge counts from 0 (a bridge that saw a PLC restart: its totals continue
  past the reset): a stroke in flight at the kill, or a PLC in local while nobody
  counted, can only be judged from R; when that is not possible the restore is handed
  to resistance control with an alarm.

"Where resistance control wants it": the beam's start position plus every move
resistance control commanded that reached the cell (recorded from
``ResistanceController.step``; the twin's true cumulative beam movement is the position),
measured once no quench has run and nothing has been owed or in flight for a minute.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from potctl.config import control_config_for_plant
from potctl.controller import PotController
from potctl.offline import TwinPlant, scaled_plant_config
from potctl.plant import Commands, Measurements
from potline.beam_ledger import BeamLedger
from twin.potline import Potline

#: the potroom PLCs' heartbeat watchdog [plant s]
WATCHDOG_S = 20.0
#: a kill waits at most this long after its planned time for a restore to be owed [plant s]
KILL_WAIT_S = 900.0
SEED = 15


class FaultyBridge:
    """The twin seen through the daemon's bridge, with link drops and bridge restarts."""

    def __init__(self, pl: Any, plc_counters: bool = False) -> None:
        self.pl = pl
        #: report the PLCs' own cumulative counters (they survive a daemon restart: what
        #: ``plc_bridge.plant`` does) rather than totals counted from each bridge's start
        self.plc_counters = plc_counters
        self.base = np.full(pl.layout.n_cells, np.nan)
        self.feed_base = np.full(pl.layout.n_cells, np.nan)
        self.plant = TwinPlant(pl, take_control=True)
        lay = pl.layout
        self.n = lay.n_cells
        self.room_of = np.asarray(lay.cell_room, dtype=np.int64)
        self.n_rooms = lay.n_rooms
        self.link = np.ones(self.n_rooms, dtype=bool)
        self.heartbeat_t = np.full(self.n_rooms, pl.t_s)
        self.new_bridge()

    def new_bridge(self) -> None:
        """A new daemon process: its bridge has read nothing yet, and counts each cell's
        acknowledgements from its first good reading (``plc_bridge.plant``) unless it
        reports the PLCs' own counters."""
        if not self.plc_counters:
            self.base = np.full(self.n, np.nan)
            self.feed_base = np.full(self.n, np.nan)
        self.held: dict[str, np.ndarray] = {
            "cell_voltage_v": np.full(self.n, np.nan), "feeder_ack": np.zeros(self.n, dtype=np.int64),
            "beam_ack_mm": np.zeros(self.n), "tapping": np.zeros(self.n, dtype=bool),
            "anode_change": np.zeros(self.n, dtype=bool), "cut_out": np.zeros(self.n, dtype=bool),
        }  # fmt: skip

    def truth_beam(self) -> np.ndarray:
        return self.pl.measurements()["beam_ack_mm"].copy()

    def read(self) -> Measurements:
        m = self.plant.read_sync()
        up = self.link[self.room_of]
        first = up & np.isnan(self.base)
        self.base[first] = m.beam_ack_mm[first]
        self.feed_base[first] = m.feeder_ack[first]
        m.beam_ack_mm = np.where(up, m.beam_ack_mm - np.nan_to_num(self.base), 0.0)
        m.feeder_ack = np.where(up, m.feeder_ack - np.nan_to_num(self.feed_base), 0).astype(np.int64)
        m.cell_ok = up.copy()
        m.cell_remote = up & self.plant.cell_remote()
        for f, last in self.held.items():  # a cell without a link: its last good values (none yet: NaN/0)
            cur = np.array(getattr(m, f), copy=True)
            cur[~up] = last[~up]
            last[up] = cur[up]
            setattr(m, f, cur)
        return m

    def write(self, cmds: Commands, lost_rooms: set[int] = frozenset()) -> np.ndarray:  # type: ignore[assignment]
        """Send what reaches a PLC (link up, not in ``lost_rooms``); the heartbeat brings a
        PLC the watchdog dropped to local back to remote for the next cycle. Returns the
        cells whose beam command was carried out."""
        reach = self.link.copy()
        for r in lost_rooms:
            reach[r] = False
        to = reach[self.room_of]
        remote_now = self.plant.cell_remote()
        c = Commands(np.where(to, cmds.feed_shots, 0), np.where(to, cmds.beam_move_mm, 0.0), cmds.line_setpoint_ka,
                     np.where(to, cmds.alf3_kg, 0.0), events=cmds.events)  # fmt: skip
        self.plant.write_sync(c)
        for room in np.flatnonzero(reach).tolist():
            self.heartbeat_t[room] = self.pl.t_s
            cells = self.room_of == room
            if not self.plant.cell_remote()[cells].all():
                self.pl.set_local_control(np.flatnonzero(cells), False)
        return to & remote_now & (np.abs(cmds.beam_move_mm) >= 0.05)

    def watchdog(self) -> None:
        for r in range(self.n_rooms):
            if self.pl.t_s - self.heartbeat_t[r] > WATCHDOG_S:
                cells = np.flatnonzero(self.room_of == r)
                if self.plant.cell_remote()[cells].any():
                    self.pl.set_local_control(cells, True)


@dataclass
class Storm:
    """The fault plan of one run (plant times [s])."""

    ae_waves: list[tuple[float, list[int]]]
    drops: list[tuple[float, int, float]]  # (start, room, duration)
    restarts: list[tuple[float, float, bool]]  # (earliest time, gap, killed before the write)
    end_s: float
    log: dict[str, Any] = field(default_factory=dict)


def plan(rng: np.random.Generator, n_cells: int, n_rooms: int, restart_gaps: list[float]) -> Storm:
    waves = [(t, sorted(rng.choice(n_cells, size=int(rng.integers(2, 4)), replace=False).tolist()))
             for t in np.arange(600.0, 2700.0, 150.0)]  # fmt: skip
    starts = np.sort(rng.uniform(650.0, 2750.0, 10))
    drops = [(float(t), int(rng.integers(n_rooms)), float(rng.uniform(5.0, 60.0))) for t in starts]
    kills = np.sort(rng.uniform(700.0, 2400.0, len(restart_gaps)))
    restarts = [(float(t), g, bool(i % 2 == 0)) for i, (t, g) in enumerate(zip(kills, restart_gaps, strict=True))]
    return Storm(waves, drops, restarts, end_s=4500.0)


def run_storm(tmp_path: Any, restart_gaps: list[float], plc_counters: bool = False, seed: int = SEED) -> dict[str, Any]:
    """One AE storm with its faults (``plan``); returns the net beam offsets and what happened."""
    pcfg = scaled_plant_config(4, n_lines=2, seed=seed)
    pcfg = pcfg.model_copy(update={"local_control": pcfg.local_control.model_copy(
        update={"resistance_deadband_uohm": 20.0, "ae_quench": False})})  # fmt: skip
    pl = Potline(pcfg, seed=seed, parallel=False)
    pl.set_operations(slice(None), False)
    ccfg = control_config_for_plant(pcfg)
    bridge = FaultyBridge(pl, plc_counters)
    n = bridge.n
    rng = np.random.default_rng(seed)
    storm = plan(rng, n, bridge.n_rooms, restart_gaps)
    ledger_path = tmp_path / "state" / "beam_ledger.json"
    r_moves = np.zeros(n)

    def new_controller() -> tuple[PotController, BeamLedger]:
        ctl = PotController(pl.layout, ccfg)
        orig = ctl.resistance.step

        def spy(t: float, r: np.ndarray, eligible: np.ndarray) -> np.ndarray:
            mv = orig(t, r, eligible)
            r_moves[:] = mv
            return mv

        ctl.resistance.step = spy  # type: ignore[method-assign, assignment]
        return ctl, BeamLedger(ledger_path, plant=pl.layout.plant, n_cells=n)

    ctl, ledger = new_controller()
    events: list[tuple[float, str, int, str]] = []
    beam0: np.ndarray | None = None
    r_done = np.zeros(n)
    waves, drops, restarts = list(storm.ae_waves), list(storm.drops), list(storm.restarts)
    drop_end = np.full(bridge.n_rooms, -np.inf)
    restored_next = False
    alarms: list[str] = []
    quiet_since: float | None = None
    while True:
        t = pl.t_s
        if t >= storm.end_s:  # measure once no quench runs and nothing is owed or in flight for a minute
            q = ctl.quench
            quiet = not (q.busy.any() or q.handed.any() or ctl.detector.active.any() or ctl.beam_inflight_mm.any())
            quiet_since = (quiet_since if quiet_since is not None else t) if quiet else None
            if quiet_since is not None and t - quiet_since >= 60.0:
                break
            assert t < storm.end_s + 7200.0, "no quiet minute in 2 h after the storm"
        if beam0 is None and t >= 550.0:
            beam0 = bridge.truth_beam()
            r_done[:] = 0.0
        while waves and waves[0][0] <= t:
            _, wave = waves.pop(0)
            idle = [k for k in wave if not pl.truth()["ae_active"][k]]
            pl.force_alumina(np.array(idle, dtype=np.int64), 1.7)
        lost: set[int] = set()
        while drops and drops[0][0] <= t:
            _, room, dur = drops.pop(0)
            bridge.link[room] = False
            drop_end[room] = t + dur
            lost.add(room)  # the commands of this cycle go into the dying link
        for r in np.flatnonzero(~bridge.link & (drop_end <= t)):
            bridge.link[r] = True
        meas = bridge.read()
        if restored_next:
            res = ledger.restore_into(ctl, meas, meas.t_s, same_ack_base=plc_counters)
            assert res.alarm is None, res.alarm
            restored_next = False
        r_moves[:] = 0.0
        cmds = ctl.step(meas, meas.t_s)
        save = ledger.save(ctl.beam_intent(), acks_are_plc_counters=plc_counters)  # write-ahead: on disk first
        assert save.error is None, save.error
        events.extend((t, kind, idx, detail) for kind, idx, detail in cmds.events)
        killed = False
        if restarts and restarts[0][0] <= t:
            # kill -9 while a restore is owed (the 2nd kill: with a stroke in flight), else at the deadline
            intent = ctl.beam_intent()["cells"]
            want_flight = len(restarts) == len(storm.restarts) - 1
            hit = any(c.get("quench") and (c["inflight_mm"] != 0.0 or not want_flight) for c in intent)
            killed = hit or t >= restarts[0][0] + KILL_WAIT_S
            if killed:
                storm.log.setdefault("kills", []).append((t, hit))
        if killed:
            _, gap, before_write = restarts.pop(0)
            if not before_write:
                done = bridge.write(cmds, lost)
                r_done += np.where(done, r_moves, 0.0)
            down_until = t + gap
            while pl.t_s < down_until:  # no daemon: no heartbeat, nothing sent
                pl.advance(1.0)
                bridge.watchdog()
            bridge.new_bridge()
            ctl, ledger = new_controller()
            restored_next = True
            continue
        done = bridge.write(cmds, lost)
        r_done += np.where(done, r_moves, 0.0)
        pl.advance(1.0)
        bridge.watchdog()
    assert beam0 is not None
    net = bridge.truth_beam() - beam0 - r_done
    for _, kind, _, detail in events:
        if kind == "beam_restore_handed_over":
            alarms.append(detail)
    return {"net_mm": net, "events": events, "storm": storm, "intent": ctl.beam_intent(), "handovers": alarms,
            "ae_count": int(pl.truth()["ae_count"].sum()), "t_end_s": pl.t_s}  # fmt: skip


def _report(out: dict[str, Any], what: str) -> tuple[np.ndarray, list[str]]:
    net = out["net_mm"]
    kinds = [e[1] for e in out["events"]]
    print(f"\n{what}: {out['ae_count']} AEs, measured at {out['t_end_s']:.0f} s, "
          f"net beam offsets [mm] {np.round(net, 2).tolist()}, "
          f"{ {k: kinds.count(k) for k in sorted(set(kinds)) if k.startswith('beam_')} }")  # fmt: skip
    for h in out["handovers"]:
        print("  handed over:", h)
    assert out["ae_count"] >= 20, "an AE storm"
    assert len(out["storm"].drops) == 10 and len(out["storm"].restarts) == 3
    kills = out["storm"].log.get("kills", [])
    assert len(kills) == 3 and all(hit for _, hit in kills), f"each kill came with a restore owed: {kills}"
    assert kinds.count("beam_intent_restored") >= 3
    return net, kinds


@pytest.mark.parametrize("restart_gaps", [[6.0, 10.0, 15.0], [45.0, 60.0, 90.0]], ids=["quick", "slower_than_watchdog"])
def test_ae_storm_with_10_link_drops_and_3_restarts_leaves_every_beam_within_2_mm(tmp_path, restart_gaps):
    """The done-when, with acknowledgements that continue across a daemon restart (the
    PLCs' own counters, ``same_ack_base=True``): every restore is reconciled exactly,
    quick restarts or restarts long enough for the PLCs to fall back to local."""
    out = run_storm(tmp_path, restart_gaps, plc_counters=True)
    net, _ = _report(out, "PLC counters")
    assert np.all(np.abs(net) <= 2.0), f"net beam offsets {np.round(net, 2).tolist()} mm"
    assert out["handovers"] == [], "the acknowledgements tell everything: nothing handed over"
    assert out["intent"]["cells"] == [], "nothing left owed"


@pytest.mark.parametrize("seed", [SEED, 2])
def test_with_a_bridge_counting_from_zero_every_beam_is_restored_or_handed_over_with_an_alarm(tmp_path, seed):
    """A bridge counting acknowledgements from 0 in every process: a stroke in flight
    at the kill, or what a PLC did while in local with nobody counting, can only be judged
    from R, and in an AE storm the slope tracker seldom holds the alumina-rich R needed.
    Then the restore is handed to resistance control with an alarm: every cell is within
    ±2 mm or carries one."""
    out = run_storm(tmp_path, [6.0, 10.0, 15.0], plc_counters=False, seed=seed)
    net, _ = _report(out, f"bridge counting from 0, seed {seed}")
    handed = {e[2] for e in out["events"] if e[1] == "beam_restore_handed_over"}
    off = set(np.flatnonzero(np.abs(net) > 2.0).tolist())
    assert off <= handed, f"cells {sorted(off - handed)} off by more than 2 mm without an alarm"
    assert all(c.get("handed") for c in out["intent"]["cells"]), "nothing owed but what was handed over"
