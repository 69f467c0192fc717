"""PLC behaviour of the HIL rig as pure state machines (no sockets, no clock, no model).

What a controller meets in a plant, per PLC scan (``scan(now, ...)``, times in plant
seconds):

* **Heartbeat watchdog** (``Watchdog``): the controller's counter (``heartbeat_out``)
  must change at least every ``timeout_s``; otherwise the PLC drops to *local* control.
  It returns to *remote* once the counter moves again (and the operator selector is on
  remote). The PLC's own counter (``heartbeat_in``) increments every scan.
* **Local/remote** (``switch_remote``: the operator's selector on the panel): in local
  the potroom PLC runs its own automation (fixed-rate feeding, resistance band, AE
  kill) and ignores remote commands; the rectifier holds its setpoint.
* **Command acknowledgements** (potroom): the controller writes ``feed_shots`` /
  ``beam_move`` and then increments ``feed_cmd`` / ``beam_cmd``. The PLC carries out
  each new counter value once, copies it to ``feed_cmd_ack`` / ``beam_cmd_ack`` and adds
  what it did to the cumulative ``feed_ack`` / ``beam_ack``. A refused command (local,
  interlock) is not acknowledged; a counter change seen while refusing is consumed, so it
  never executes later (no replay). AlF3 additions take the same handshake (``alf3_kg``,
  ``alf3_cmd`` -> ``alf3_cmd_ack``); the first one a cell carries out stops the PLC's own
  AlF3 schedule there (the rig stops the twin's).
* **Shell heat exchanger** (potroom): in remote the PLC takes each new value of a cell's
  ``hx_duty_sp`` register (and, back in remote after local, the value the register then
  holds); in local it ignores the register. It serves the delivered duty (``hx_duty``)
  and the side-wall thermocouple (``shell_temp``). A map without these roles leaves
  them private memory: nothing is taken, nothing served.
* **Interlocks**: no feeding or beam move on a cut-out cell, no beam move during
  tapping or an anode change, shots and moves capped per command; the rectifier ignores
  remote setpoints while tripped and until an alarm reset (coil ``alarm_reset``, cleared
  by the PLC) is accepted, clamps setpoints to its own limits and ramps at
  ``ramp_rate_sp``.
* **Local AE kill** (potroom, in local control): an AE the PLC sees (its own 8 V status
  bit) for 2 s gets 8 feeder shots and a 15 mm beam lowering, the beam goes back up
  20 s later, and the dose repeats once a minute after the first while the AE burns;
  a beam still down when the AE ends is restored.
* **Bumpless transfer**: when the rectifier returns to remote it copies its active
  setpoint into ``line_current_sp`` (setpoint tracking), so a stale register never
  steps the current.

The rig (``hil_rigs.rig``) feeds the twin's measurements in and carries out the
returned actions on the twin.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hil_rigs.plc_image import PlcImage

__all__ = [
    "RECT_RUNNING",
    "RECT_TRIPPED",
    "RECT_VOLTAGE_LIMIT",
    "STATUS_AE",
    "STATUS_ANODE_CHANGE",
    "STATUS_CUT_OUT",
    "STATUS_FEEDER_FAULT",
    "STATUS_TAPPING",
    "PotroomLogic",
    "PotroomScan",
    "RectifierLogic",
    "RectifierScan",
    "Watchdog",
]

# potroom per-cell status bits (config/tagmaps/potroom.toml)
STATUS_AE = 0
STATUS_TAPPING = 1
STATUS_ANODE_CHANGE = 2
STATUS_CUT_OUT = 3
STATUS_FEEDER_FAULT = 4
# rectifier status word bits (config/tagmaps/rectifier.toml)
RECT_RUNNING = 0
RECT_TRIPPED = 1
RECT_OVERCURRENT = 2
RECT_VOLTAGE_LIMIT = 5

#: the PLC's own AE detection threshold [V] (status bit 0)
PLC_AE_THRESHOLD_V = 8.0
#: local AE kill: (seconds after the PLC saw the AE, shots, beam move [mm])
LOCAL_AE_KILL = ((2.0, 8, -15.0), (22.0, 0, 15.0), (62.0, 8, -15.0), (82.0, 0, 15.0))


class Watchdog:
    """Heartbeat watchdog: alive while the watched counter changed within ``timeout_s``.

    Starts *not alive*: the PLC powers up in local and goes remote only once the
    controller's counter moves.
    """

    def __init__(self, timeout_s: float) -> None:
        if timeout_s <= 0:
            raise ValueError(f"watchdog timeout must be > 0 s, got {timeout_s}")
        self.timeout_s = float(timeout_s)
        self.last_value: float | None = None
        self.last_change_t: float | None = None
        self.trips = 0
        self._alive = False

    @property
    def alive(self) -> bool:
        return self._alive

    def update(self, value: float, now: float) -> bool:
        """Feed the counter seen at scan time ``now`` [s]; returns whether the link is alive."""
        if self.last_value is None:
            self.last_value = value
        elif value != self.last_value:
            self.last_value = value
            self.last_change_t = now
        alive = self.last_change_t is not None and now - self.last_change_t <= self.timeout_s
        if self._alive and not alive:
            self.trips += 1
        self._alive = alive
        return alive

    def reset(self) -> None:
        """Forget the counter (PLC restart)."""
        self.last_value = None
        self.last_change_t = None
        self._alive = False


# ============================================================================ potroom


@dataclass(slots=True)
class PotroomScan:
    """What one potroom PLC scan decided.

    Attributes:
        shots: [n_cells] feeder shots to dump now.
        beam_mm: [n_cells] beam moves to make now [mm, + up].
        remote: the room is under remote (controller) control after this scan.
        mode_changed: remote/local changed in this scan.
        fed_cells, moved_cells: cells whose feed / beam command was carried out.
        refused: (cell index, "feed"|"beam"|"alf3"|"hx", reason) of commands not carried out.
        alf3_kg: [n_cells] AlF3 to add now [kg] (the cells' own AlF3 schedule stops there).
        hx_kw: [n_cells] new shell heat-exchanger duty to hold [kW] (NaN: unchanged).
    """

    shots: np.ndarray
    beam_mm: np.ndarray
    remote: bool
    mode_changed: bool
    fed_cells: np.ndarray
    moved_cells: np.ndarray
    refused: list[tuple[int, str, str]] = field(default_factory=list)
    alf3_kg: np.ndarray = field(default_factory=lambda: np.zeros(0))
    hx_kw: np.ndarray = field(default_factory=lambda: np.zeros(0))


class PotroomLogic:
    """One potroom PLC (see module docstring).

    Args:
        image: the PLC's memory (potroom tag map).
        watchdog_s: heartbeat timeout [s].
        max_shots: most shots one command may ask for (more is refused).
        max_beam_mm: largest |move| one command may ask for [mm] (more is refused).
        max_alf3_kg: largest AlF3 addition one command may ask for [kg] (more is refused).
    """

    def __init__(self, image: PlcImage, watchdog_s: float = 10.0, max_shots: int = 10,
                 max_beam_mm: float = 30.0, local_ae_kill: bool = True, max_alf3_kg: float = 50.0) -> None:  # fmt: skip
        self.image = image
        self.local_ae_kill_enabled = bool(local_ae_kill)
        self.n = image.n_cells
        self.watchdog = Watchdog(watchdog_s)
        self.max_shots = int(max_shots)
        self.max_beam_mm = float(max_beam_mm)
        self.max_alf3_kg = float(max_alf3_kg)
        #: operator's local/remote selector (True = remote allowed)
        self.switch_remote = True
        self.remote = False
        self.hb_in = 0
        self.scans = 0
        self.feeder_fault = np.zeros(self.n, dtype=bool)
        self._feed_seen = image.cells["feed_cmd"].copy()
        self._beam_seen = image.cells["beam_cmd"].copy()
        self._alf3_seen = image.cells["alf3_cmd"].copy()
        #: the exchanger duty setpoint [kW] each cell holds as last taken (NaN: none taken yet)
        self._hx_taken = np.full(self.n, np.nan)
        self._hx_seen = image.cells["hx_duty_sp"].copy()
        self._feed_ack0 = np.zeros(self.n)
        self._beam_ack0 = np.zeros(self.n)
        self._first = True
        self._count_from_here = True
        self._ae_seen = np.full(self.n, np.nan)
        self._kill_step = np.zeros(self.n, dtype=np.int64)
        self._kill_down = np.zeros(self.n)
        self.local_kills = 0

    def restart(self) -> None:
        """Power cycle: memory zeroed, watchdog forgotten, local until the heartbeat returns."""
        self.image.reset()
        self.watchdog.reset()
        self.remote = False
        self.hb_in = 0
        self._feed_seen = np.zeros(self.n)
        self._beam_seen = np.zeros(self.n)
        self._alf3_seen = np.zeros(self.n)
        self._hx_seen = np.zeros(self.n)
        self._hx_taken = np.full(self.n, np.nan)  # the exchangers hold their duty; the memory is gone
        self._first = True
        self._count_from_here = True

    def scan(self, now: float, cut_out: np.ndarray, tapping: np.ndarray, anode_change: np.ndarray) -> PotroomScan:
        """Process commands against the cells' state at plant time ``now`` [s]."""
        img = self.image
        self.scans += 1
        alive = self.watchdog.update(float(img.scalars["heartbeat_out"]), now)
        remote = bool(self.switch_remote and alive)
        changed = remote != self.remote
        self.remote = remote
        feed_cmd = img.cells["feed_cmd"].copy()
        beam_cmd = img.cells["beam_cmd"].copy()
        alf3_cmd = img.cells["alf3_cmd"].copy()
        hx_sp = img.cells["hx_duty_sp"].copy()
        if self._first:
            # commands left in memory from before start-up are never carried out
            self._feed_seen, self._beam_seen = feed_cmd.copy(), beam_cmd.copy()
            self._alf3_seen, self._hx_seen = alf3_cmd.copy(), hx_sp.copy()
            self._first = False
        new_feed = np.flatnonzero(feed_cmd != self._feed_seen)
        new_beam = np.flatnonzero(beam_cmd != self._beam_seen)
        self._feed_seen, self._beam_seen = feed_cmd, beam_cmd
        shots = np.zeros(self.n, dtype=np.int64)
        moves = np.zeros(self.n)
        refused: list[tuple[int, str, str]] = []
        fed: list[int] = []
        moved: list[int] = []
        req_shots = img.cells["feed_shots"]
        req_moves = img.cells["beam_move"]
        for k in new_feed.tolist():
            why = self._refuse_feed(k, remote, cut_out, req_shots[k])
            if why:
                refused.append((k, "feed", why))
                continue
            shots[k] = int(round(req_shots[k]))
            img.cells["feed_cmd_ack"][k] = feed_cmd[k]
            fed.append(k)
        for k in new_beam.tolist():
            why = self._refuse_beam(k, remote, cut_out, tapping, anode_change, req_moves[k])
            if why:
                refused.append((k, "beam", why))
                continue
            moves[k] = float(req_moves[k])
            img.cells["beam_cmd_ack"][k] = beam_cmd[k]
            moved.append(k)
        alf3, hx = self._alf3_and_hx(remote, cut_out, alf3_cmd, hx_sp, refused)
        self.hb_in = (self.hb_in + 1) % 65536
        img.scalars["heartbeat_in"] = float(self.hb_in)
        img.scalars["remote"] = float(remote)
        return PotroomScan(shots, moves, remote, changed, np.asarray(fed, dtype=np.int64),
                           np.asarray(moved, dtype=np.int64), refused, alf3, hx)  # fmt: skip

    def _alf3_and_hx(self, remote: bool, cut_out: np.ndarray, alf3_cmd: np.ndarray, hx_sp: np.ndarray,
                     refused: list[tuple[int, str, str]]) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """AlF3 commands (handshake) and exchanger setpoints of this scan: ([kg], [kW] or NaN)."""
        img = self.image
        new_alf3 = np.flatnonzero(alf3_cmd != self._alf3_seen)
        self._alf3_seen = alf3_cmd
        alf3 = np.zeros(self.n)
        req = img.cells["alf3_kg"]
        for k in new_alf3.tolist():
            why = self._refuse_alf3(k, remote, cut_out, float(req[k]))
            if why:
                refused.append((k, "alf3", why))
                continue
            alf3[k] = float(req[k])
            img.cells["alf3_cmd_ack"][k] = alf3_cmd[k]
        hx = np.full(self.n, np.nan)
        if remote:
            # a new register value, or the one it holds when the room came back to remote
            take = (hx_sp != self._hx_seen) | (~np.isnan(self._hx_taken) & (hx_sp != self._hx_taken))
            for k in np.flatnonzero(take).tolist():
                hx[k] = float(hx_sp[k])
                self._hx_taken[k] = float(hx_sp[k])
        else:
            changed = np.flatnonzero(hx_sp != self._hx_seen)
            refused.extend((k, "hx", "local control") for k in changed.tolist())
        self._hx_seen = hx_sp
        return alf3, hx

    def _refuse_alf3(self, k: int, remote: bool, cut_out: np.ndarray, kg: float) -> str:
        if not remote:
            return "local control"
        if cut_out[k]:
            return "cell cut out"
        if not (0.0 <= kg <= self.max_alf3_kg + 1e-9):
            return f"{kg:g} kg AlF3 outside 0..{self.max_alf3_kg:g}"
        return ""

    def local_ae_kill(self, now: float, cut_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The PLC's own AE kill while in local control: (shots, beam moves [mm]) to carry out now."""
        shots = np.zeros(self.n, dtype=np.int64)
        moves = np.zeros(self.n)
        ae = self.image.cell_field("ae") & ~np.asarray(cut_out, dtype=bool)
        active = ae & (not self.remote) & self.local_ae_kill_enabled
        ended = ~active & ~np.isnan(self._ae_seen)
        if ended.any():
            moves[ended] += self._kill_down[ended]  # beam back where it was
            self._kill_down[ended] = 0.0
            self._ae_seen[ended] = np.nan
            self._kill_step[ended] = 0
        new = active & np.isnan(self._ae_seen)
        self._ae_seen[new] = now
        for k in np.flatnonzero(active).tolist():
            step = int(self._kill_step[k])
            while step < len(LOCAL_AE_KILL) and now - self._ae_seen[k] >= LOCAL_AE_KILL[step][0]:
                _, n, mm = LOCAL_AE_KILL[step]
                shots[k] += n
                moves[k] += mm
                self._kill_down[k] -= mm
                if step == 0:
                    self.local_kills += 1
                step += 1
            self._kill_step[k] = step
        return shots, moves

    def _refuse_feed(self, k: int, remote: bool, cut_out: np.ndarray, n: float) -> str:
        if not remote:
            return "local control"
        if cut_out[k]:
            return "cell cut out"
        if self.feeder_fault[k]:
            return "feeder fault"
        if not (0 <= n <= self.max_shots):
            return f"{n:g} shots outside 0..{self.max_shots}"
        return ""

    def _refuse_beam(self, k: int, remote: bool, cut_out: np.ndarray, tapping: np.ndarray,
                     anode_change: np.ndarray, mm: float) -> str:  # fmt: skip
        if not remote:
            return "local control"
        if cut_out[k]:
            return "cell cut out"
        if tapping[k] or anode_change[k]:
            return "tapping/anode change in progress"
        if abs(mm) > self.max_beam_mm + 1e-9:
            return f"move {mm:g} mm beyond ±{self.max_beam_mm:g}"
        return ""

    def publish(self, voltage_v: np.ndarray, ae: np.ndarray, tapping: np.ndarray, anode_change: np.ndarray,
                cut_out: np.ndarray, feed_total: np.ndarray, beam_total_mm: np.ndarray,
                hx_kw: np.ndarray | None = None, shell_c: np.ndarray | None = None) -> None:  # fmt: skip
        """Measurements into the image: voltages, status bits, cumulative acknowledgements,
        the exchangers' delivered duty ``hx_kw`` [kW] and shell temperatures ``shell_c`` [°C].

        ``feed_total`` / ``beam_total_mm`` are the cells' lifetime totals; the PLC counts from
        its own (re)start, so a restart zeroes what it reports.
        """
        img = self.image
        if self._count_from_here:
            self._count_from_here = False
            self._feed_ack0 = np.asarray(feed_total, dtype=float).copy()
            self._beam_ack0 = np.asarray(beam_total_mm, dtype=float).copy()
        img.cells["voltage"][:] = voltage_v
        status = (
            (ae.astype(np.int64) << STATUS_AE)
            | (tapping.astype(np.int64) << STATUS_TAPPING)
            | (anode_change.astype(np.int64) << STATUS_ANODE_CHANGE)
            | (cut_out.astype(np.int64) << STATUS_CUT_OUT)
            | (self.feeder_fault.astype(np.int64) << STATUS_FEEDER_FAULT)
        )
        img.cells["status"][:] = status
        img.cells["feed_ack"][:] = np.mod(np.asarray(feed_total) - self._feed_ack0, 65536)
        img.cells["beam_ack"][:] = np.round((np.asarray(beam_total_mm) - self._beam_ack0) * 10.0) / 10.0
        if hx_kw is not None:
            img.cells["hx_duty"][:] = hx_kw
        if shell_c is not None:
            img.cells["shell_temp"][:] = np.round(np.asarray(shell_c, dtype=float) * 10.0) / 10.0


# ============================================================================ rectifier


@dataclass(slots=True)
class RectifierScan:
    """What one rectifier PLC scan decided.

    Attributes:
        setpoint_ka: the active (ramped) setpoint to regulate to [kA].
        remote: accepting remote setpoints after this scan.
        mode_changed: remote/local changed in this scan.
        reset_requested: an alarm reset was requested while tripped (the rig clears the
            trip when its cause is gone).
        refused: reasons remote writes were not taken (tripped, local, clamped).
    """

    setpoint_ka: float
    remote: bool
    mode_changed: bool
    reset_requested: bool
    refused: list[str] = field(default_factory=list)


class RectifierLogic:
    """The rectifier PLC of one line (see module docstring).

    Args:
        image: the PLC's memory (rectifier tag map).
        nominal_ka: setpoint at power-up and the local setpoint [kA].
        min_ka, max_ka: the rectifier's own setpoint limits [kA].
        ramp_ka_per_min: ramp used until the controller writes ``ramp_rate_sp``.
        voltage_limit_v: DC output limit [V] (written to ``voltage_limit_sp`` at power-up,
            capped to the tag's range).
        watchdog_s: heartbeat timeout [s].
    """

    def __init__(self, image: PlcImage, nominal_ka: float, min_ka: float, max_ka: float,
                 ramp_ka_per_min: float = 6.0, voltage_limit_v: float = 900.0,
                 watchdog_s: float = 10.0) -> None:  # fmt: skip
        self.image = image
        self.nominal_ka = float(nominal_ka)
        self.min_ka = float(min_ka)
        self.max_ka = float(max_ka)
        self.default_ramp = float(ramp_ka_per_min)
        self.voltage_limit_v = float(voltage_limit_v)
        self.watchdog = Watchdog(watchdog_s)
        self.switch_remote = True
        self.remote = False
        self.tripped = False
        self.hb_in = 0
        self.active_ka = float(nominal_ka)
        self.local_ka = float(nominal_ka)
        self.energy_mwh = 0.0
        self.tap_ops = 0
        self._tap_prev: float | None = None
        self.power_up()

    def power_up(self) -> None:
        """Initial memory (also after a restart): setpoint registers hold the active setpoint."""
        img = self.image
        img.set("line_current_sp", round(self.active_ka, 3))
        img.set("ramp_rate_sp", min(max(self.default_ramp, img.tag("ramp_rate_sp").lo), img.tag("ramp_rate_sp").hi))
        vt = img.tag("voltage_limit_sp")
        img.set("voltage_limit_sp", min(max(self.voltage_limit_v, vt.lo), vt.hi))

    def restart(self) -> None:
        """Power cycle: memory zeroed then re-initialised; local until the heartbeat returns.

        The regulator keeps the current (the rectifier's hardware holds the last setpoint
        while its PLC reboots); counters restart at zero.
        """
        self.image.reset()
        self.watchdog.reset()
        self.remote = False
        self.hb_in = 0
        self.local_ka = self.active_ka
        self.power_up()

    def trip(self) -> None:
        """Protection trip (from the plant): latched until an accepted alarm reset."""
        self.tripped = True

    def clear_trip(self) -> None:
        """The rig accepted an alarm reset: regulation resumes from zero current."""
        self.tripped = False

    def scan(self, now: float, dt_s: float) -> RectifierScan:
        """Process setpoint writes at plant time ``now`` [s], ``dt_s`` after the last scan."""
        img = self.image
        refused: list[str] = []
        alive = self.watchdog.update(float(img.scalars["heartbeat_out"]), now)
        remote = bool(self.switch_remote and alive)
        changed = remote != self.remote
        if changed and not remote:
            self.local_ka = self.active_ka  # hold the last value in local
        if changed and remote:
            img.set("line_current_sp", round(self.active_ka, 3))  # setpoint tracking: bumpless
        self.remote = remote
        reset = bool(img.scalars["alarm_reset"])
        if reset:
            img.set("alarm_reset", False)
        reset_requested = reset and self.tripped
        requested = float(img.scalars["line_current_sp"]) if remote else self.local_ka
        if self.tripped:
            if remote and abs(float(img.scalars["line_current_sp"]) - self.active_ka) > 1e-6:
                refused.append("tripped: remote setpoint ignored until reset")
            requested = self.active_ka
        target = min(max(requested, self.min_ka), self.max_ka)
        if target != requested:
            refused.append(f"setpoint {requested:g} kA clamped to [{self.min_ka:g}, {self.max_ka:g}]")
        rate = float(img.scalars["ramp_rate_sp"]) if remote else self.default_ramp
        if not rate > 0:
            rate = self.default_ramp
        step = rate * max(dt_s, 0.0) / 60.0
        self.active_ka += min(max(target - self.active_ka, -step), step)
        self.hb_in = (self.hb_in + 1) % 65536
        img.scalars["heartbeat_in"] = float(self.hb_in)
        img.scalars["remote"] = float(remote)
        img.scalars["setpoint_active"] = self.active_ka
        return RectifierScan(self.active_ka, remote, changed, reset_requested, refused)

    def publish(self, current_ka: float, voltage_v: float, tap: int, at_limit: bool, dt_s: float) -> None:
        """Measurements into the image after the plant moved ``dt_s`` [s]."""
        img = self.image
        img.scalars["line_current"] = current_ka
        img.scalars["line_voltage"] = voltage_v
        img.scalars["line_current_fine"] = round(current_ka * 1000.0) / 1000.0
        img.scalars["tap_position"] = float(tap)
        if self._tap_prev is not None and tap != self._tap_prev:
            self.tap_ops += 1
        self._tap_prev = tap
        img.scalars["tap_operations"] = float(self.tap_ops % 2**32)
        self.energy_mwh += max(current_ka * voltage_v, 0.0) * 1e-3 * max(dt_s, 0.0) / 3600.0
        img.scalars["energy_total"] = self.energy_mwh
        running = (not self.tripped) and current_ka > 1.0
        word = (
            (int(running) << RECT_RUNNING) | (int(self.tripped) << RECT_TRIPPED) | (int(at_limit) << RECT_VOLTAGE_LIMIT)
        )
        img.scalars["status_word"] = float(word)
