"""The HIL rig: the twin playing the plant behind simulated PLCs that speak the real protocols.

One ``Rig`` runs, in its own asyncio task and on its own clock (real time or
``AcceleratedClock``, e.g. 50x):

* the twin (``twin.potline.Potline``), advanced in whole sub-steps to the clock;
* one rectifier PLC per line (``RectifierLogic``) and one potroom PLC per room
  (``PotroomLogic``), each with a ``PlcImage`` served by a protocol edge (Modbus TCP or
  OPC UA, per scenario) behind a ``LinkProxy`` (the network, for link faults);
* the scenario: plant events (induced AEs, cut-outs by the crew, trips, operator
  local/remote switching), an AE-storm generator and timed faults;
* the truth record: every AE (start, when its voltage became visible to the PLC, the
  first quench command the PLC received for it, end), PLC mode changes, a trend of line
  current / setpoint / voltage / power / cell voltages, and any exception.

Each PLC scan (every ``rig.tick_wall_s`` wall seconds): run due scenario items, let each
PLC process the commands in its image (carried out on the twin), advance the twin to
the clock, publish the twin's measurements through each PLC into its image and edge.

``report()`` returns a ``RigReport`` (JSON-able) with the assertions tests use.
Controllers connect to ``endpoints()`` (the proxies), never to the servers directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Generic, TypeAlias, TypeVar

import numpy as np
import structlog

from hil_rigs.edges import CommandHook, ModbusEdge, OpcUaEdge, make_edge
from hil_rigs.faults import Fault, SensorOverride
from hil_rigs.netem import LinkProxy
from hil_rigs.plc_image import PlcImage
from hil_rigs.plc_logic import PLC_AE_THRESHOLD_V, PotroomLogic, RectifierLogic
from hil_rigs.report import RigReport
from hil_rigs.scenarios import Scenario, ScenarioEvent, load_scenario
from plc_bridge.plant import potroom_tagmap, rectifier_tagmap
from twin.clock import AcceleratedClock, Clock

__all__ = ["QUENCH_MIN_LOWER_MM", "QUENCH_MIN_SHOTS", "AnyPlc", "PlcHandle", "Rig"]

#: what the rig counts as a quench command for a cell in AE: a feed command of at least
#: this many shots (regular feeding sends one) ...
QUENCH_MIN_SHOTS = 2
#: ... or a beam lowering of at least this much [mm] (ACD corrections are a few mm)
QUENCH_MIN_LOWER_MM = 10.0

log = structlog.get_logger(__name__)


LogicT = TypeVar("LogicT", PotroomLogic, RectifierLogic)


@dataclass
class PlcHandle(Generic[LogicT]):
    """One simulated PLC of the rig (``PlcHandle[RectifierLogic]`` or ``PlcHandle[PotroomLogic]``)."""

    device: str  # "rectifier:Line1" | "potroom:Potroom1"
    kind: str  # "rectifier" | "potroom"
    index: int  # line or room index
    image: PlcImage
    logic: LogicT
    edge: ModbusEdge | OpcUaEdge
    proxy: LinkProxy | None = None
    cells: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    down_until: float | None = None
    sensors: SensorOverride | None = None

    @property
    def name(self) -> str:
        return self.device.split(":", 1)[1]

    def endpoint(self) -> dict[str, Any]:
        ep = self.edge.endpoint()
        if self.proxy is not None:
            ep["port"] = self.proxy.port
        ep["device"] = self.device
        ep["name"] = self.name
        ep["index"] = self.index
        if self.kind == "potroom":
            ep["cells"] = int(self.cells.size)
        return ep


#: a PLC of either kind
AnyPlc: TypeAlias = "PlcHandle[RectifierLogic] | PlcHandle[PotroomLogic]"


@dataclass
class _AE:
    cell: int
    start_s: float
    room_remote: bool
    visible_s: float = math.nan
    first_cmd_s: float = math.nan
    first_cmd: str = ""
    end_s: float = math.nan
    peak_v: float = 0.0
    commands: int = 0


class Rig:
    """A HIL rig for one scenario (see module docstring).

    Args:
        scenario: a ``Scenario`` or the name/path of one.
        host: loopback address to bind.
        speed: override the scenario's time factor.
        clock: use this clock instead of an ``AcceleratedClock`` (tests).
        proxies: put a ``LinkProxy`` in front of every PLC (needed for link faults).
        plant_config: the twin's ``PlantConfig`` instead of the scenario's (e.g. one with
            shell heat exchangers installed); its layout must be what the scenario expects.
    """

    def __init__(self, scenario: Scenario | str, *, host: str = "127.0.0.1", speed: float | None = None,
                 clock: Clock | None = None, proxies: bool = True, plant_config: Any = None) -> None:  # fmt: skip
        self.scenario = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
        self.host = host
        self.speed = float(speed if speed is not None else self.scenario.speed)
        self.clock: Clock | None = clock
        self.use_proxies = proxies
        self._plant_config = plant_config
        self.potline: Any = None
        self.layout: Any = None
        self.plcs: list[AnyPlc] = []
        self.rectifiers: list[PlcHandle[RectifierLogic]] = []
        self.potrooms: list[PlcHandle[PotroomLogic]] = []
        self.epoch_monotonic = 0.0
        self.running = False
        self.errors: list[str] = []
        self.aes: list[_AE] = []
        self.mode_log: list[tuple[float, str, bool]] = []
        self.fault_log: list[tuple[float, str, bool]] = []
        self.event_log: list[tuple[float, str]] = []
        self.refusals: dict[str, int] = {}
        self.commands = {"feed": 0, "beam": 0, "setpoint_writes": 0, "alf3": 0, "hx": 0}
        self.setpoint_log: list[tuple[float, int, float, float]] = []
        self.trend: dict[str, list[Any]] = {}
        self.max_lag_s = 0.0
        self.ticks = 0
        self.wall_start = 0.0
        self.wall_s = 0.0
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._kicked = asyncio.Event()
        self._open_ae: dict[int, _AE] = {}
        self._pending: list[tuple[float, str, Any]] = []  # (due plant s, kind, payload)
        self._crew: list[tuple[ScenarioEvent, float]] = []
        self._rng = np.random.default_rng(self.scenario.scenario.seed + 101)
        self._last_record = -math.inf
        self._last_scan_t: float | None = None
        self.plc_t = 0.0
        self._cell_room: np.ndarray | None = None
        self._cell_pos: np.ndarray | None = None
        self.stopped_at: float | None = None
        self._trip_cause: set[int] = set()
        self.ready = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> Rig:
        """Build the twin and the PLCs, listen, start the clock and the scan task."""
        from twin.cell_layout import S_AE
        from twin.potline import Potline

        sc = self.scenario
        cfg = self._plant_config if self._plant_config is not None else sc.plant_config()
        self._plant_config = cfg
        # the potroom PLC logic kills AEs in local control (hil_rigs.plc_logic), not the twin
        cfg = cfg.model_copy(update={"local_control": cfg.local_control.model_copy(update={"ae_quench": False})})
        pl = Potline(cfg, parallel=sc.plant.parallel)
        self._S_AE = S_AE
        pl.advance(pl.dt_s)  # compile / load the kernels before the clock starts
        pl.t_s = 0.0
        self.potline = pl
        self.layout = lay = pl.layout
        n = lay.n_cells
        self._cell_room = np.asarray(lay.cell_room, dtype=np.int64)
        self._cell_pos = np.zeros(n, dtype=np.int64)
        watchdog = max(sc.rig.watchdog_s, sc.rig.watchdog_min_wall_s * self.speed)
        for li, line in enumerate(cfg.lines):
            tm = rectifier_tagmap(lay.line_names[li])
            img = PlcImage(tm)
            r = line.rectifier
            vmax = tm["voltage_limit_sp"].hi
            rect_logic = RectifierLogic(img, r.setpoint_ka, r.min_ka, r.max_ka, r.ramp_ka_per_min,
                                        min(r.voltage_limit_v, vmax), watchdog)  # fmt: skip
            dev = f"rectifier:{lay.line_names[li]}"
            edge = make_edge(sc.protocols.rectifier, img, self.host, 0, self._command_hook(dev))
            rect = PlcHandle(dev, "rectifier", li, img, rect_logic, edge, sensors=SensorOverride(1, seed=li + 3))
            self.rectifiers.append(rect)
        for ri, room in enumerate(lay.room_names):
            cells = lay.room_cells(ri)
            self._cell_pos[cells] = np.arange(cells.size)
            tm = potroom_tagmap(room, cells.size)
            img = PlcImage(tm)
            room_logic = PotroomLogic(img, watchdog, local_ae_kill=sc.rig.ae_quench_local)
            dev = f"potroom:{room}"
            edge = make_edge(sc.protocols.potroom, img, self.host, 0, self._command_hook(dev))
            pot = PlcHandle(dev, "potroom", ri, img, room_logic, edge, cells=cells,
                          sensors=SensorOverride(cells.size, seed=ri + 17))  # fmt: skip
            self.potrooms.append(pot)
        self.plcs = [*self.rectifiers, *self.potrooms]
        # the PLCs power up in local: the potroom automation runs until a controller shows up
        pl.set_local_control(slice(None), True)
        self._publish(0.0, first=True)
        for h in self.plcs:
            await h.edge.start()
            if self.use_proxies:
                h.proxy = await LinkProxy(self.host, h.edge.port, self.host, 0, name=h.device).start()
        self._schedule()
        if self.clock is None:
            self.clock = AcceleratedClock(self.speed)
        self.epoch_monotonic = time.monotonic() - self.clock.now() / self.speed
        self.wall_start = time.monotonic()
        self.running = True
        self.stopped_at = None
        self._stop.clear()
        self._task = asyncio.create_task(self._run(), name="hil-rig")
        self.ready.set()
        log.info("rig_started", scenario=sc.name, cells=n, lines=lay.n_lines, rooms=lay.n_rooms,
                 speed=self.speed, watchdog_s=watchdog)  # fmt: skip
        return self

    async def stop(self) -> None:
        """Stop scanning and close every server and proxy."""
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            except Exception:
                self.errors.append(traceback.format_exc())
            self._task = None
        self.wall_s = time.monotonic() - self.wall_start
        self.stopped_at = self.now()
        for h in self.plcs:
            if h.proxy is not None:
                await h.proxy.stop()
            try:
                await h.edge.stop()
            except Exception:
                log.exception("rig_edge_stop_failed", device=h.device)
        self.running = False
        log.info("rig_stopped", scenario=self.scenario.name, plant_s=self.now(), wall_s=round(self.wall_s, 2))

    async def __aenter__(self) -> Rig:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ queries

    def now(self) -> float:
        """Plant time on the rig's clock [s]."""
        return self.clock.now() if self.clock is not None else 0.0

    def endpoints(self) -> dict[str, Any]:
        """Where a controller connects (through the proxies), plus the clock and layout facts."""
        lay = self.layout
        return {
            "scenario": self.scenario.name,
            "speed": self.speed,
            "epoch_monotonic": self.epoch_monotonic,
            "rectifiers": [h.endpoint() for h in self.rectifiers],
            "potrooms": [h.endpoint() for h in self.potrooms],
            "layout": {
                "plant": lay.plant,
                "line_names": list(lay.line_names),
                "room_names": list(lay.room_names),
                "cell_line": lay.cell_line.tolist(),
                "cell_room": lay.cell_room.tolist(),
                "cell_number": lay.cell_number.tolist(),
                "shot_mass_kg": lay.shot_mass_kg.tolist(),
                "nominal_current_ka": lay.nominal_current_ka.tolist(),
            },
            "voltage_limit_v": [ln.rectifier.voltage_limit_v for ln in self._config().lines],
            # the rectifiers' own limits (the PLCs clamp to them): the bridge bounds its setpoints by them
            "rectifier_limits_ka": {ln.name: [ln.rectifier.min_ka, ln.rectifier.max_ka] for ln in self._config().lines},
        }

    def _config(self) -> Any:
        """The twin's plant config (the scenario's unless ``plant_config`` was given)."""
        return self._plant_config if self._plant_config is not None else self.scenario.plant_config()

    def plc(self, device: str) -> AnyPlc:
        for h in self.plcs:
            if h.device == device or h.name == device:
                return h
        raise KeyError(f"no PLC {device!r}; have {[h.device for h in self.plcs]}")

    async def wait_until(self, t_s: float, timeout_wall_s: float | None = None) -> None:
        """Wait until the rig's plant time reaches ``t_s`` [s]."""
        deadline = None if timeout_wall_s is None else time.monotonic() + timeout_wall_s
        while self.now() < t_s:
            if self._task is not None and self._task.done():
                raise RuntimeError("rig scan task ended")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"rig did not reach t={t_s:.0f} s (at {self.now():.0f} s)")
            await asyncio.sleep(min(0.05, max(0.001, (t_s - self.now()) / self.speed)))

    # ------------------------------------------------------------------ faults

    async def inject(self, fault: Fault | dict[str, Any]) -> None:
        """Inject ``fault`` now (its ``at_s`` is ignored); it clears itself after ``duration_s``."""
        f = fault if isinstance(fault, Fault) else Fault.model_validate(fault)
        await self._fault(f, True)

    async def clear(self, fault: Fault | dict[str, Any]) -> None:
        """Clear ``fault`` now."""
        f = fault if isinstance(fault, Fault) else Fault.model_validate(fault)
        await self._fault(f, False)

    async def _fault(self, f: Fault, on: bool) -> None:
        now = self.now()
        self.fault_log.append((now, f.label(), on))
        log.warning("fault_injected" if on else "fault_cleared", fault=f.label(), t=round(now, 1))
        k = f.kind
        if on and f.duration_s and k not in ("plc_restart",):
            self._pending.append((now + f.duration_s, "clear", f))
        if k == "link_drop":
            for h in self._targets(f):
                if h.proxy is not None:
                    h.proxy.drop(f.mode) if on else h.proxy.restore()
        elif k == "latency":
            for h in self._targets(f):
                if h.proxy is not None:
                    h.proxy.latency_s = f.delay_s if on else 0.0
        elif k == "exception":
            for h in self._targets(f):
                if isinstance(h.edge, ModbusEdge):
                    h.edge.refuse_with = f.code if on else None
                    h.edge.refuse_probability = f.probability
                else:
                    h.edge.bad_status = 0x808B0000 if on else None  # BadDeviceFailure
        elif k == "local_switch":
            for h in self._targets(f):
                h.logic.switch_remote = not on
        elif k == "plc_restart":
            if on:
                for h in self._targets(f):
                    await self._plc_down(h, now, f.downtime_s)
        elif k == "rectifier_trip":
            if on and f.duration_s:
                self._trip_cause.add(f.line)  # the operator resets it when the fault clears
            if not on:
                self._trip_cause.discard(f.line)
            self._trip(f.line, on)
        elif k == "feeder_fault":
            for h in self.potrooms:
                idx = self._local_idx(h, f.cells)
                h.logic.feeder_fault[idx] = on
        elif k in ("frozen_sensor", "noisy_sensor", "bad_sensor"):
            self._sensor_fault(f, on)

    def _targets(self, f: Fault) -> list[AnyPlc]:
        hs = [h for h in self.plcs if f.matches(h.device)]
        if not hs:
            raise ValueError(f"fault target {f.target!r} matches no PLC; have {[h.device for h in self.plcs]}")
        return hs

    def _local_idx(self, h: AnyPlc, cells: list[int]) -> np.ndarray:
        cs = np.asarray(cells, dtype=np.int64)
        assert self._cell_room is not None and self._cell_pos is not None
        cs = cs[(cs >= 0) & (cs < self._cell_room.size)]
        mine = cs[self._cell_room[cs] == h.index]
        return self._cell_pos[mine]

    def _sensor_fault(self, f: Fault, on: bool) -> None:
        m = self.potline.measurements()
        if f.quantity == "line_current":
            lines = [f.line] if f.target in ("all", "rectifier") else [self.plc(f.target).index]
            for li in lines:
                rect = self.rectifiers[li]
                assert rect.sensors is not None
                rect.sensors.set(f, np.array([0]), np.array([m["line_current_ka"][li]]), on)
            return
        for h in self.potrooms:
            idx = self._local_idx(h, f.cells)
            if idx.size and h.sensors is not None:
                h.sensors.set(f, idx, m["cell_voltage_v"][h.cells], on)

    def _trip(self, line: int, on: bool) -> None:
        h = self.rectifiers[line]
        if on:
            self.potline.trip_rectifier(line)
            h.logic.trip()
        else:
            self.potline.reset_rectifier(line)
            h.logic.clear_trip()

    async def _plc_down(self, h: AnyPlc, now: float, downtime_s: float) -> None:
        """PLC reboot: server down, memory zeroed; back after the downtime (>= 0.3 wall s)."""
        await h.edge.stop()
        h.logic.restart()
        h.down_until = now + max(downtime_s, 0.3 * self.speed)
        if h.kind == "potroom":
            self.potline.set_local_control(h.cells, False)  # no automation while it reboots
        self._record_mode(h, now, False, force=True)
        self._pending.append((h.down_until, "plc_up", h))

    async def _plc_up(self, h: AnyPlc) -> None:
        await h.edge.start()
        h.down_until = None
        if h.kind == "potroom":
            self.potline.set_local_control(h.cells, True)  # local automation until the heartbeat returns
        log.info("plc_restarted", device=h.device, t=round(self.now(), 1))

    # ------------------------------------------------------------------ scenario

    def _schedule(self) -> None:
        sc = self.scenario
        for ev in sc.events:
            self._pending.append((ev.at_s, "event", ev))
        for f in sc.faults:
            self._pending.append((f.at_s, "fault", f))
        st = sc.ae_storm
        if st is not None:
            t = st.start_s
            while t <= min(st.end_s, sc.duration_s) + 1e-6:
                self._pending.append((t, "storm", st))
                t += st.every_s
        self._pending.sort(key=lambda x: x[0])

    async def _run_due(self, now: float) -> None:
        due = [p for p in self._pending if p[0] <= now]
        if not due:
            return
        self._pending = [p for p in self._pending if p[0] > now]
        for _, kind, payload in sorted(due, key=lambda x: x[0]):
            if kind == "event":
                self._event(payload, now)
            elif kind == "fault":
                await self._fault(payload, True)
            elif kind == "clear":
                await self._fault(payload, False)
            elif kind == "storm":
                self._storm(payload)
            elif kind == "plc_up":
                await self._plc_up(payload)

    def _induce_ae(self, cells: np.ndarray, below: float) -> None:
        pl = self.potline
        crit = pl.truth()["critical_alumina_wt_pct"]
        for k in np.asarray(cells, dtype=np.int64).tolist():
            pl.force_alumina(np.array([k]), max(float(crit[k]) - below, 0.5))

    def _storm(self, st: Any) -> None:
        pl = self.potline
        tr = pl.truth()
        m = pl.measurements()
        ok = ~tr["ae_active"] & ~m["cut_out"] & ~m["tapping"] & ~m["anode_change"]
        cand = np.flatnonzero(ok)
        if cand.size == 0:
            return
        pick = self._rng.choice(cand, size=min(st.burst, cand.size), replace=False)
        self._induce_ae(pick, st.below_critical_wt_pct)
        self.event_log.append((self.now(), f"ae induced on cells {pick.tolist()}"))

    def _event(self, ev: ScenarioEvent, now: float) -> None:
        pl = self.potline
        cells = np.asarray(ev.cells, dtype=np.int64)
        a = ev.action
        if a == "ae":
            self._induce_ae(cells, ev.below_critical_wt_pct)
        elif a == "force_alumina":
            assert ev.wt_pct is not None  # the scenario model requires it for this action
            pl.force_alumina(cells, float(ev.wt_pct))
        elif a in ("cut_out", "cut_in"):
            if ev.wait_current_below_ka is not None:
                self._crew.append((ev, now))
                self.event_log.append((now, f"crew ready to {a.replace('_', ' ')} cells {ev.cells}"))
                return
            for k in cells.tolist():
                pl.cut_out(k) if a == "cut_out" else pl.cut_in(k)
        elif a == "trip_rectifier":
            self._trip(ev.line, True)
        elif a == "reset_rectifier":
            self._trip(ev.line, False)
        elif a in ("local", "remote"):
            for h in self.plcs:
                if Fault(kind="local_switch", target=ev.target).matches(h.device):
                    h.logic.switch_remote = a == "remote"
        elif a == "start_tapping":
            for k in cells.tolist():
                pl.start_tapping(k)
        elif a == "start_anode_change":
            for k in cells.tolist():
                pl.start_anode_change(k)
        self.event_log.append((now, f"{a} {ev.cells or ''}".strip()))

    def _crew_work(self, now: float, line_current: np.ndarray) -> None:
        if not self._crew:
            return
        keep = []
        for ev, t0 in self._crew:
            line = int(self.layout.cell_line[ev.cells[0]])
            if line_current[line] <= (ev.wait_current_below_ka or math.inf):
                for k in ev.cells:
                    self.potline.cut_out(k) if ev.action == "cut_out" else self.potline.cut_in(k)
                self.event_log.append((now, f"crew: {ev.action} cells {ev.cells} at {line_current[line]:.1f} kA"))
            elif now - t0 > ev.timeout_s:
                self.event_log.append((now, f"crew gave up {ev.action} of cells {ev.cells}: current stayed high"))
            else:
                keep.append((ev, t0))
        self._crew = keep

    # ------------------------------------------------------------------ the scan

    def _command_hook(self, device: str) -> CommandHook:
        def hook(name: str, value: Any) -> None:
            try:
                self._on_command(device, name, value)
            except Exception:
                self.errors.append(traceback.format_exc())

        return hook

    def _on_command(self, device: str, name: str, value: Any) -> None:
        now = self.now()
        if device.startswith("rectifier"):
            if name == "line_current_sp":
                self.commands["setpoint_writes"] += 1
                rect = self.plc(device)
                if isinstance(rect.logic, RectifierLogic) and rect.logic.remote:
                    self.setpoint_log.append((now, rect.index, float(value), float(rect.logic.active_ka)))
            return
        h = self.plc(device)
        hit = h.image.cell_index.get(name)
        if hit is None:
            return
        f, i = hit
        if f not in ("feed_cmd", "beam_cmd"):
            return
        k = int(h.cells[i])
        ae = self._open_ae.get(k)
        if ae is None or math.isnan(ae.visible_s):
            return
        ae.commands += 1
        if not math.isnan(ae.first_cmd_s):
            return
        if f == "feed_cmd":
            shots = float(h.image.cells["feed_shots"][i])
            if shots >= QUENCH_MIN_SHOTS:  # a quench dose, not the regular one-shot feeding
                ae.first_cmd_s, ae.first_cmd = now, f"feed {shots:g} shots"
        else:
            mm = float(h.image.cells["beam_move"][i])
            if mm <= -QUENCH_MIN_LOWER_MM:  # beam lowering/pumping, not a small ACD correction
                ae.first_cmd_s, ae.first_cmd = now, f"beam {mm:+g} mm"

    async def _run(self) -> None:
        sc = self.scenario
        tick = sc.rig.tick_wall_s
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            w0 = loop.time()
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                tb = traceback.format_exc()
                self.errors.append(tb)
                log.error("rig_tick_failed", error=tb.splitlines()[-1])
            spent = loop.time() - w0
            # the next scan after the PLC scan period, or at once when a lockstep clock has
            # moved plant time and wants the PLCs to see it (``kick``)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kicked.wait(), timeout=max(tick - spent, 0.001))
            self._kicked.clear()

    def kick(self) -> None:
        """Scan now rather than after the PLC scan period (a ``LockstepClock`` that moved plant time)."""
        self._kicked.set()

    async def _tick(self) -> None:
        pl = self.potline
        now = self.now()
        self.ticks += 1
        await self._run_due(now)
        dt_scan = 0.0 if self._last_scan_t is None else max(now - self._last_scan_t, 0.0)
        self._last_scan_t = now
        # the PLCs' own timebase: a stall of this process (not of the controller) must not
        # count as controller silence, so one scan advances it by a few nominal scans at most
        dt_scan = min(dt_scan, 5.0 * self.scenario.rig.tick_wall_s * self.speed)
        self.plc_t += dt_scan
        t_plc = self.plc_t
        m = pl.measurements()
        # --- PLC scans: commands in, actions on the twin
        shots = np.zeros(self.layout.n_cells, dtype=np.int64)
        moves = np.zeros(self.layout.n_cells)
        alf3 = np.zeros(self.layout.n_cells)
        for h in self.potrooms:
            if h.down_until is not None:
                continue
            c = h.cells
            res = h.logic.scan(t_plc, m["cut_out"][c], m["tapping"][c], m["anode_change"][c])
            if res.mode_changed:
                pl.set_local_control(c, not res.remote)
                self._record_mode(h, now, res.remote)
            shots[c] = res.shots
            moves[c] = res.beam_mm
            if not res.remote:
                k_shots, k_moves = h.logic.local_ae_kill(t_plc, m["cut_out"][c])
                shots[c] += k_shots
                moves[c] += k_moves
            self.commands["feed"] += int(res.fed_cells.size)
            self.commands["beam"] += int(res.moved_cells.size)
            if res.alf3_kg.size:
                alf3[c] = res.alf3_kg
                self.commands["alf3"] += int((res.alf3_kg > 0).sum())
            if res.hx_kw.size and np.isfinite(res.hx_kw).any():
                hx_idx = np.flatnonzero(np.isfinite(res.hx_kw))
                pl.set_heat_exchanger(c[hx_idx], res.hx_kw[hx_idx] * 1e3)
                self.commands["hx"] += int(hx_idx.size)
            for _, what, why in res.refused:
                key = f"{h.name} {what}: {why}"
                self.refusals[key] = self.refusals.get(key, 0) + 1
        if alf3.any():
            # the controller feeds AlF3 there: the PLC's own AlF3 schedule stops for those cells
            pl.stop_alf3_schedule(np.flatnonzero(alf3 > 0.0))
        if shots.any() or moves.any() or alf3.any():
            pl.apply(shots, moves, alf3)
        for rect in self.rectifiers:
            if rect.down_until is not None:
                continue
            rres = rect.logic.scan(t_plc, dt_scan)
            if rres.mode_changed:
                self._record_mode(rect, now, rres.remote)
            if rres.reset_requested:
                if rect.index in self._trip_cause:
                    self.event_log.append((now, f"{rect.name}: alarm reset refused (trip cause still present)"))
                else:
                    self._trip(rect.index, False)
                    self.event_log.append((now, f"{rect.name}: alarm reset accepted"))
            pl.set_line_setpoint(rect.index, rres.setpoint_ka)
            for reason in rres.refused:
                key = f"{rect.name}: {reason.split(':')[0]}"
                self.refusals[key] = self.refusals.get(key, 0) + 1
        # --- the plant moves to the clock
        lag = now - pl.t_s
        n_steps = int(math.floor(lag / pl.dt_s + 1e-9))
        max_steps = max(4, int(math.ceil(0.25 * self.speed / pl.dt_s)))  # catch up <= 0.25 wall s per scan
        if n_steps > 0:
            pl.advance(min(n_steps, max_steps) * pl.dt_s)
        self.max_lag_s = max(self.max_lag_s, now - pl.t_s)
        # --- measurements out
        self._publish(now)

    def _record_mode(self, h: AnyPlc, now: float, remote: bool, force: bool = False) -> None:
        self.mode_log.append((now, h.device, remote))
        log.info("plc_mode", device=h.device, remote=remote, t=round(now, 1))

    def _publish(self, now: float, first: bool = False) -> None:
        pl = self.potline
        m = pl.measurements()
        u = m["cell_voltage_v"]
        truth_ae = pl.state[:, self._S_AE] > 0.5
        dt_pub = 0.0 if first else max(now - getattr(self, "_last_pub_t", now), 0.0)
        self._last_pub_t = now
        for h in self.potrooms:
            c = h.cells
            uu = h.sensors.apply(u[c]) if h.sensors is not None else u[c]
            ae_bit = np.nan_to_num(uu, nan=0.0) > PLC_AE_THRESHOLD_V
            h.logic.publish(uu, ae_bit, m["tapping"][c], m["anode_change"][c], m["cut_out"][c],
                            m["feeder_ack"][c], m["beam_ack_mm"][c], m["heat_exchanger_kw"][c],
                            m["shell_temp_c"][c])  # fmt: skip
            h.image.t_s = now
            if h.down_until is None:
                h.edge.publish()
        i_ka = m["line_current_ka"]
        for rect in self.rectifiers:
            li = rect.index
            i_pub = float(rect.sensors.apply(np.array([i_ka[li]]))[0]) if rect.sensors is not None else float(i_ka[li])
            rect.logic.publish(i_pub, float(m["line_voltage_v"][li]), int(m["tap_position"][li]),
                               bool(m["rectifier_at_limit"][li]), dt_pub)  # fmt: skip
            rect.image.t_s = now
            if rect.down_until is None:
                rect.edge.publish()
        if first:
            return
        self._track_aes(now, truth_ae, u)
        self._crew_work(now, i_ka)
        if now - self._last_record >= self.scenario.rig.record_every_s:
            self._last_record = now
            self._record(now, m)

    def _track_aes(self, now: float, truth_ae: np.ndarray, u: np.ndarray) -> None:
        open_ = self._open_ae
        started = np.flatnonzero(truth_ae)
        for k in started.tolist():
            ae = open_.get(k)
            if ae is None:
                assert self._cell_room is not None  # set by start()
                room = self.potrooms[int(self._cell_room[k])]
                ae = _AE(cell=k, start_s=self.potline.t_s, room_remote=bool(room.logic.remote))
                open_[k] = ae
                self.aes.append(ae)
            ae.peak_v = max(ae.peak_v, float(u[k]))
            if math.isnan(ae.visible_s) and u[k] > PLC_AE_THRESHOLD_V:
                ae.visible_s = now
        for k in list(open_):
            if not truth_ae[k]:
                open_.pop(k).end_s = self.potline.t_s

    def _record(self, now: float, m: dict[str, np.ndarray]) -> None:
        tr = self.trend
        if not tr:
            for key in ("t_s", "line_current_ka", "setpoint_active_ka", "line_voltage_v", "power_mw",
                        "cells_in_ae", "cell_voltage_v", "remote", "tripped", "lag_s"):  # fmt: skip
                tr[key] = []
        tr["t_s"].append(round(now, 3))
        tr["line_current_ka"].append(m["line_current_ka"].round(4).tolist())
        tr["setpoint_active_ka"].append([round(h.logic.active_ka, 4) for h in self.rectifiers])
        tr["line_voltage_v"].append(m["line_voltage_v"].round(2).tolist())
        tr["power_mw"].append((m["line_current_ka"] * m["line_voltage_v"] / 1e3).round(4).tolist())
        tr["cells_in_ae"].append(int((self.potline.state[:, self._S_AE] > 0.5).sum()))
        tr["cell_voltage_v"].append(m["cell_voltage_v"].round(3).tolist())
        tr["remote"].append([bool(h.logic.remote) for h in self.plcs])
        tr["tripped"].append(m["rectifier_tripped"].tolist())
        tr["lag_s"].append(round(now - float(self.potline.t_s), 3))

    # ------------------------------------------------------------------ report

    def report(self) -> RigReport:
        """Everything the rig saw, JSON-able, with the assertions."""
        now = self.now() if self.stopped_at is None or self.running else self.stopped_at
        aes = []
        for ae in self.aes:
            aes.append({
                "cell": ae.cell,
                "start_s": ae.start_s,
                "visible_s": ae.visible_s,
                "first_cmd_s": ae.first_cmd_s,
                "first_cmd": ae.first_cmd,
                "end_s": ae.end_s,
                "peak_v": round(ae.peak_v, 2),
                "room_remote": ae.room_remote,
                "commands": ae.commands,
            })  # fmt: skip
        totals = self.potline.totals() if self.potline is not None else {}
        return RigReport(
            scenario=self.scenario.name,
            speed=self.speed,
            plant_s=now,
            twin_s=float(self.potline.t_s) if self.potline is not None else 0.0,
            wall_s=(time.monotonic() - self.wall_start) if self.running else self.wall_s,
            n_cells=self.layout.n_cells if self.layout is not None else 0,
            devices=[h.device for h in self.plcs],
            aes=aes,
            mode_log=list(self.mode_log),
            fault_log=list(self.fault_log),
            event_log=list(self.event_log),
            refusals=dict(self.refusals),
            commands=dict(self.commands),
            trend={k: list(v) for k, v in self.trend.items()},
            totals=totals,
            max_lag_s=self.max_lag_s,
            ticks=self.ticks,
            errors=list(self.errors),
            watchdog_trips={h.device: h.logic.watchdog.trips for h in self.plcs},
            expect=self.scenario.expect.model_dump(),
            setpoint_log=list(self.setpoint_log),
        )
