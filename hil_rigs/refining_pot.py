"""A rig PLC for a scrap-refining pot: the refining twin served over Modbus TCP (or OPC UA).

``RefiningPotRig`` runs, in its own asyncio task on its own clock (``AcceleratedClock``,
e.g. 600x: ten plant minutes per wall second), one refining pot of the twin
(``refining.model.RefiningPots``) behind a simulated PLC (``RefiningPotLogic``) whose memory
is a ``PlcImage`` laid out by the refining-pot tag map (``config/tagmaps/refining_pot.toml``)
and served by the same protocol edges as the potline rigs (``hil_rigs.edges``). What a
controller meets there, per PLC scan:

* **Heartbeat watchdog**: ``heartbeat_out`` must change at least every ``watchdog_s``;
  otherwise the PLC drops to *local* and holds the setpoints it was regulating to (it
  returns to remote when the counter moves again and the operator's selector is on
  remote). ``heartbeat_in`` counts the PLC's scans.
* **Bumpless transfer**: entering remote, the PLC copies its active setpoints into
  ``current_sp`` / ``heater_sp``, so a stale register never steps the current.
* **Its own limits**: the current setpoint is clamped to the rectifier and ramped at the
  pot's ``[safety] ramp_a_per_h``; the heater setpoint, charge and tap sizes clamped to
  ``[safety]`` (the controller is never the only safety layer).
* **Command handshake** (charges and taps): write ``charge_kg`` / ``tap_kg``, then bump
  ``charge_cmd`` / ``tap_cmd``; each new counter value is carried out once and
  acknowledged (``*_cmd_ack``); one seen in local or after the cycle ended is consumed
  without acknowledgement (never replayed later).
* **Stop**: ``stop_request`` ends the cycle (``cycle_ended``, ``end_reason`` 7).

The twin's measurements go out every scan: interval-mean current, voltage and heater
power, temperature, taps weighed, totals, energy meters and — after each tap — the
lab's assay of the tapped metal (``assay_seq`` counts them).

``python -m hil_rigs.refining_pot --port 5020 --speed 600`` serves one pot until Ctrl-C
and prints one JSON line on stdout: where (the endpoint a bridge or daemon connects to)
and the clock (``speed``, ``epoch_monotonic`` for a daemon's ``clock_epoch_monotonic``);
its logs go to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from hil_rigs.edges import ModbusEdge, OpcUaEdge, make_edge
from hil_rigs.plc_image import PlcImage
from hil_rigs.plc_logic import Watchdog
from plc_bridge.tagmap import TagMap, load_tagmap
from refining import model as rf
from refining.config import RefiningConfig, load_refining_config, scaled_params
from twin.clock import AcceleratedClock, Clock
from twin.resources import config_dir

__all__ = ["REFINING_POT_MAP", "RefiningPotLogic", "RefiningPotRig", "RefiningPotScan"]

log = structlog.get_logger(__name__)

#: the shipped refining-pot tag map
REFINING_POT_MAP = config_dir() / "tagmaps" / "refining_pot.toml"

# status word bits (config/tagmaps/refining_pot.toml)
ST_RUNNING = 0
ST_CYCLE_ENDED = 1
ST_OVER_T = 2
ST_UNDER_T = 3


@dataclass(slots=True)
class RefiningPotScan:
    """What one PLC scan decided.

    Attributes:
        current_a: the current the rectifier regulates to now (ramped) [A].
        heater_c: the heater setpoint in force [°C].
        charge_kg / tap_kg: to carry out now (0: none) [kg].
        stop: end the cycle now.
        remote: under remote control after this scan; mode_changed: it changed.
        refused: what was not carried out and why.
    """

    current_a: float
    heater_c: float
    charge_kg: float = 0.0
    tap_kg: float = 0.0
    stop: bool = False
    remote: bool = False
    mode_changed: bool = False
    refused: list[str] = field(default_factory=list)


class RefiningPotLogic:
    """The refining pot PLC as a pure state machine (no sockets, no clock, no model).

    Args:
        image: the PLC memory (refining-pot tag map).
        cfg: the pot's config (``[safety]`` limits, the rectifier's maximum).
        watchdog_s: heartbeat timeout [plant s].
    """

    def __init__(self, image: PlcImage, cfg: RefiningConfig, watchdog_s: float) -> None:
        self.image = image
        self.cfg = cfg
        self.watchdog = Watchdog(watchdog_s)
        self.operator_remote = True
        self.remote = False
        self.current_a = 0.0
        self.target_a = 0.0
        self.heater_c = cfg.operation.heater_setpoint_c
        self.ended = False
        self._last_cmd: dict[str, int | None] = {"charge_cmd": None, "tap_cmd": None}
        self._stop_seen = False
        self.ramp_a_per_s = cfg.safety.ramp_a_per_h / 3600.0

    def _counter(self, name: str) -> int:
        return int(self.image.get(name))

    def scan(self, now: float, dt_s: float, ended: bool) -> RefiningPotScan:
        """One scan at plant time ``now`` [s], ``dt_s`` after the previous one; ``ended``: the pot's cycle is over."""
        img = self.image
        sa = self.cfg.safety
        img.set("heartbeat_in", (int(img.get("heartbeat_in")) + 1) % 65536)
        alive = self.watchdog.update(float(img.get("heartbeat_out")), now)
        remote = alive and self.operator_remote
        out = RefiningPotScan(self.current_a, self.heater_c, remote=remote, mode_changed=remote != self.remote)
        if remote and not self.remote:
            # bumpless: what the PLC regulates to now becomes the remote setpoint
            img.set("current_sp", round(self.target_a, 3))
            img.set("heater_sp", round(self.heater_c, 3))
        self.remote = remote
        self.ended = self.ended or ended
        img.set("remote", remote)
        for cmd, ack, mass, lim in (("charge_cmd", "charge_cmd_ack", "charge_kg", sa.charge_max_kg),
                                    ("tap_cmd", "tap_cmd_ack", "tap_kg", sa.tap_max_kg)):  # fmt: skip
            seen = self._counter(cmd)
            last = self._last_cmd[cmd]
            self._last_cmd[cmd] = seen
            if last is None or seen == last:
                continue
            what = cmd.split("_")[0]
            if not remote:
                out.refused.append(f"{what}: local control")
            elif self.ended:
                out.refused.append(f"{what}: cycle ended")
            else:
                kg = float(img.get(mass))
                kg = min(max(kg, 0.0), lim) if math.isfinite(kg) else 0.0
                if what == "charge":
                    out.charge_kg = kg
                else:
                    out.tap_kg = kg
                img.set(ack, seen)
        stop = bool(img.get("stop_request"))
        if stop and not self._stop_seen:
            if remote:
                out.stop = True
                self.ended = True
            else:
                out.refused.append("stop: local control")
        self._stop_seen = stop
        if remote and not self.ended:
            sp = float(img.get("current_sp"))
            self.target_a = min(max(sp, sa.current_min_a), self.cfg.pot.rectifier_max_a) if math.isfinite(sp) else 0.0
            h = float(img.get("heater_sp"))
            if math.isfinite(h):
                self.heater_c = min(max(h, sa.heater_setpoint_min_c), sa.heater_setpoint_max_c)
        if self.ended:
            self.target_a = 0.0
        step = self.ramp_a_per_s * max(dt_s, 0.0)
        self.current_a = min(max(self.target_a, self.current_a - step), self.current_a + step)
        out.current_a, out.heater_c = self.current_a, self.heater_c
        img.set("current_sp_active", self.current_a)
        return out


class RefiningPotRig:
    """One refining pot behind its PLC, served on loopback (see module docstring).

    Args:
        config: the pot's config (a ``RefiningConfig`` or a TOML path; default: the 3 kA pot).
        tagmap: the PLC's tag map path (default: ``config/tagmaps/refining_pot.toml``).
        instance: the pot's name (``{instance}`` of the map).
        protocol: ``modbus`` or ``opcua``.
        host, port: where to listen (port 0: a free one).
        speed: plant seconds per wall second.
        clock: use this clock instead of an ``AcceleratedClock(speed)`` (shared with a controller).
        tick_wall_s: wall seconds between PLC scans.
        watchdog_s: heartbeat timeout [plant s] (default: 3 control periods).
        factors: hidden parameter factors of the real pot (``refining.config.scaled_params``).
        seed: noise seed (default: the config's).
    """

    def __init__(
        self,
        config: RefiningConfig | str | Path | None = None,
        *,
        tagmap: str | Path | None = None,
        instance: str = "Pot1",
        protocol: str = "modbus",
        host: str = "127.0.0.1",
        port: int = 0,
        speed: float = 600.0,
        clock: Clock | None = None,
        tick_wall_s: float = 0.05,
        watchdog_s: float | None = None,
        factors: dict[str, float] | None = None,
        seed: int | None = None,
    ) -> None:
        if config is None:
            config = config_dir() / "refining_3ka.toml"
        self.cfg = config if isinstance(config, RefiningConfig) else load_refining_config(config)
        self.tagmap: TagMap = load_tagmap(tagmap or REFINING_POT_MAP, instance=instance)
        self.instance = instance
        self.protocol = protocol
        self.host = host
        self.port = int(port)
        self.speed = float(speed)
        self.clock: Clock | None = clock
        self.tick_wall_s = float(tick_wall_s)
        self.watchdog_s = float(watchdog_s if watchdog_s is not None else 3 * self.cfg.operation.control_period_s)
        self.factors = dict(factors or {})
        self.seed = seed
        self.image = PlcImage(self.tagmap)
        self.logic = RefiningPotLogic(self.image, self.cfg, self.watchdog_s)
        self.edge: ModbusEdge | OpcUaEdge | None = None
        self.pots: rf.RefiningPots | None = None
        self.epoch_monotonic = 0.0
        self.running = False
        self.errors: list[str] = []
        #: (plant s, what) of every carried-out or refused command and mode change
        self.log: list[tuple[float, str]] = []
        #: (plant s, current regulated to [A], heater setpoint [°C]) per scan
        self.trail: list[tuple[float, float, float]] = []
        self.charges: list[tuple[float, float]] = []
        self.taps: list[tuple[float, float]] = []
        self.commands_written: dict[str, int] = {}
        #: (plant s, tag, value) of every write a client made, as the PLC received it
        self.received: list[tuple[float, str, Any]] = []
        self._pending = {"charge": 0.0, "tap": 0.0, "stop": False}
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._last_scan: float | None = None
        self._assay_seq = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> RefiningPotRig:
        """Build the pot and its PLC, listen, start the clock and the scan task."""
        cfg = self.cfg
        p = cfg.params()
        if self.factors:
            p = scaled_params(p, **self.factors)
        seed = cfg.noise.seed if self.seed is None else self.seed
        self.pots = rf.RefiningPots(
            p[None, :], cfg.initial_state()[None, :], rf.seed_streams(seed, 1), cfg.operation.dt_s
        )
        self.pots.advance(rf.PotInputs.hold(1, 0.0, cfg.operation.heater_setpoint_c), cfg.operation.dt_s)  # kernels
        self.pots.state[0, rf.S_T_S] = 0.0
        self.image.set("heater_sp", cfg.operation.heater_setpoint_c, by_plc=True)
        self._publish()
        self.edge = make_edge(self.protocol, self.image, self.host, self.port, self._on_command)
        await self.edge.start()
        if self.clock is None:
            self.clock = AcceleratedClock(self.speed)
        self.epoch_monotonic = time.monotonic() - self.clock.now() / self.speed
        self.running = True
        self._stop.clear()
        self._task = asyncio.create_task(self._run(), name="refining-pot-rig")
        log.info("refining_rig_started", instance=self.instance, protocol=self.protocol, port=self.edge.port,
                 speed=self.speed)  # fmt: skip
        return self

    async def stop(self) -> None:
        """Stop scanning and close the server."""
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.edge is not None:
            await self.edge.stop()
        self.running = False

    async def __aenter__(self) -> RefiningPotRig:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ queries

    def now(self) -> float:
        """Plant time [s] on the rig's clock."""
        return self.clock.now() if self.clock is not None else 0.0

    def endpoint(self) -> dict[str, Any]:
        """Where a bridge connects, and the clock facts."""
        assert self.edge is not None
        return {
            **self.edge.endpoint(),
            "device": f"refining_pot:{self.instance}",
            "instance": self.instance,
            "tagmap": str(REFINING_POT_MAP),
            "speed": self.speed,
            "epoch_monotonic": self.epoch_monotonic,
        }

    def truth(self) -> dict[str, float]:
        """The pot as the twin has it (scoring only; a controller never sees this)."""
        assert self.pots is not None
        s = self.pots.state[0]
        return {
            "t_s": float(s[rf.S_T_S]),
            "current_a": float(s[rf.S_I]),
            "temperature_c": float(s[rf.S_T]),
            "metal_kg": float(s[rf.S_M_C_AL] + s[rf.S_M_C : rf.S_M_C + rf.N_EL].sum()),
            "tapped_kg": float(s[rf.S_TAP_KG]),
            "scrap_kg": float(s[rf.S_SCRAP_KG]),
            "done": float(s[rf.S_DONE]),
        }

    async def wait_for(self, predicate: Any, timeout_wall_s: float, what: str = "condition") -> None:
        """Wait until ``predicate()`` holds (checked every tick), at most ``timeout_wall_s`` wall seconds."""
        deadline = time.monotonic() + timeout_wall_s
        while not predicate():
            if self._task is not None and self._task.done():
                raise RuntimeError("refining rig scan task ended: " + "; ".join(self.errors[-1:]))
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"refining rig: {what} not reached within {timeout_wall_s:g} s (plant {self.now():.0f} s)"
                )
            await asyncio.sleep(self.tick_wall_s)

    # ------------------------------------------------------------------ the scan

    def _on_command(self, name: str, value: Any) -> None:
        self.commands_written[name] = self.commands_written.get(name, 0) + 1
        self.received.append((self.now(), name, value))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            w0 = loop.time()
            try:
                self._tick()
            except Exception:
                tb = traceback.format_exc()
                self.errors.append(tb)
                log.error("refining_rig_tick_failed", error=tb.splitlines()[-1])
            await asyncio.sleep(max(self.tick_wall_s - (loop.time() - w0), 0.001))

    def _tick(self) -> None:
        pots = self.pots
        assert pots is not None
        now = self.now()
        dt = 0.0 if self._last_scan is None else max(now - self._last_scan, 0.0)
        self._last_scan = now
        scan = self.logic.scan(now, dt, bool(pots.done[0]))
        if scan.mode_changed:
            self.log.append((now, "remote" if scan.remote else "local"))
        for r in scan.refused:
            self.log.append((now, f"refused {r}"))
        if scan.charge_kg > 0:
            self._pending["charge"] += scan.charge_kg
            self.charges.append((now, scan.charge_kg))
            self.log.append((now, f"charge {scan.charge_kg:.2f} kg"))
        if scan.tap_kg > 0:
            self._pending["tap"] += scan.tap_kg
            self.log.append((now, f"tap {scan.tap_kg:.2f} kg requested"))
        if scan.stop:
            self._pending["stop"] = True
            self.log.append((now, "stop"))
        self.trail.append((now, scan.current_a, scan.heater_c))
        dt_s = pots.dt_s
        lag = now - float(pots.state[0, rf.S_T_S])
        n = int(math.floor(lag / dt_s + 1e-9))
        n = min(n, max(4, int(math.ceil(0.25 * self.speed / dt_s))))  # catch up <= 0.25 wall s per scan
        if n > 0 and not pots.done[0]:
            inp = rf.PotInputs(
                current_sp_a=np.array([scan.current_a]),
                heater_sp_c=np.array([scan.heater_c]),
                charge_kg=np.array([self._pending["charge"]]),
                tap_kg=np.array([self._pending["tap"]]),
                stop=np.array([self._pending["stop"]]),
            )
            got = pots.advance(inp, n * dt_s)
            if got.tap_kg[0] > 0:
                self.taps.append((now, float(got.tap_kg[0])))
                self._assay_seq += 1
            self._pending = {"charge": 0.0, "tap": 0.0, "stop": False}
        elif pots.done[0]:
            pots.state[0, rf.S_T_S] = now  # an ended pot stays as it is; its clock follows the rig's
        self._publish()
        if self.edge is not None:
            self.edge.publish()

    def _publish(self) -> None:
        """The pot's readings into the PLC image."""
        pots = self.pots
        assert pots is not None
        img = self.image
        r = pots.readings()
        sa = self.cfg.safety
        t = float(r.temperature_c[0])
        done = bool(r.done[0])
        img.set("current", float(r.current_a[0]))
        img.set("voltage", float(r.voltage_v[0]))
        img.set("temperature", t)
        img.set("heater_power", float(r.heater_kw[0]))
        if r.tap_kg[0] > 0:
            img.set("last_tap_kg", float(r.tap_kg[0]))
            img.set("assay_fe_pct", float(r.assay_fe[0]) * 100.0)
            img.set("assay_cu_pct", float(r.assay_cu[0]) * 100.0)
            img.set("assay_si_pct", float(r.assay_si[0]) * 100.0)
            img.set("assay_seq", self._assay_seq % 65536)
        img.set("tapped_total_kg", float(r.tapped_total_kg[0]))
        img.set("scrap_total_kg", float(r.scrap_total_kg[0]))
        img.set("cycle_time_h", float(r.t_s[0]) / 3600.0)
        img.set("energy_dc_kwh", float(r.e_dc_kwh[0]))
        img.set("energy_aux_kwh", float(r.e_aux_kwh[0]))
        img.set("end_reason", int(r.end_reason[0]))
        img.set("running", (r.current_a[0] > 1.0) and not done)
        img.set("cycle_ended", done or self.logic.ended)
        img.set("over_temperature", t > sa.temperature_max_c)
        img.set("under_temperature", t < sa.temperature_min_c)


# --------------------------------------------------------------------------- serve from the command line


async def _serve(args: Any) -> None:
    rig = RefiningPotRig(
        args.config, tagmap=args.tagmap, instance=args.instance, protocol=args.protocol, host=args.host,
        port=args.port, speed=args.speed, seed=args.seed,
    )  # fmt: skip
    await rig.start()
    print(json.dumps(rig.endpoint()), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await rig.stop()


def _log_to_stderr(level: str) -> None:
    """Logs as JSON lines on stderr: stdout carries only the endpoint line (for scripts)."""
    import logging
    import sys

    lvl = getattr(logging, level)
    logging.basicConfig(stream=sys.stderr, level=max(lvl, logging.WARNING))
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.format_exc_info, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """``python -m hil_rigs.refining_pot``: serve one refining pot until interrupted; prints
    one JSON line on stdout with the endpoint and the clock (``speed``, ``epoch_monotonic``)."""
    import argparse

    p = argparse.ArgumentParser(description="serve a simulated refining-pot PLC (the refining twin behind it)")
    p.add_argument("--config", default=str(config_dir() / "refining_3ka.toml"), help="refining pot config TOML")
    p.add_argument("--tagmap", default=str(REFINING_POT_MAP), help="refining pot tag map")
    p.add_argument("--instance", default="Pot1")
    p.add_argument("--protocol", choices=("modbus", "opcua"), default="modbus")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5020)
    p.add_argument("--speed", type=float, default=600.0, help="plant seconds per wall second (default: 600)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), default="INFO")
    args = p.parse_args(argv)
    _log_to_stderr(args.log_level)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
