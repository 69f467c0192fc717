"""A scrap-refining pot's PLC as a plant: tag map in, ``PotReadings`` out, commands through safe_write.

What a READY candidate needs to go from shadow to control on a real (or rig) PLC:

* ``REFINING_POT`` (``plc_bridge.roles``): the device kind and the roles its tag map must give
  (``config/tagmaps/refining_pot.toml``; role = tag name), checked by
  ``refining_tagmap`` (``TagMapError`` naming the file and ``roles.<role>``).
* ``RefiningPlant``: reads the PLC through any ``TagIO`` (``ModbusTagClient`` or
  ``OpcUaClient``) into ``RefiningMeasurements`` (one pot's ``PotReadings``, data
  quality, remote/cycle state) and writes ``RefiningCommands`` only through the one
  safe-write layer (``plc_bridge.safe_write.SafeWriter``): current setpoint bounded by
  the pot config's ``[safety]`` and ramp-limited, heater setpoint bounded, charges and
  taps sized within ``[safety]`` and sent with the counter handshake, interlocks "pot in
  remote" and "cycle not ended", the two-way heartbeat in control. The mode decides what
  reaches the wire: ``observe`` (nothing decided or written), ``shadow`` (decided and
  recorded, nothing sent; the remote interlock is not applied, since without the
  heartbeat the PLC is in local by design), ``control`` (sent, verified by read-back;
  entering it re-reads what the PLC holds, so ramps start from there). Every decision
  is a ``WriteRecord`` (``drain_records``) for the journal.
* ``RefiningController``: a refining policy (``refining.model.PotPolicy``, e.g. a READY
  candidate) as a controller for ``plc_bridge.runtime.ControlRuntime``
  (``step(measurements, now) -> commands``): the ``SafeCommandFilter`` contains NaN,
  negative and out-of-bounds requests before the wire sees them; without usable data or
  after the cycle ended it holds (no charge, no tap) and says so in its events.

``ControlRuntime(plant, controller, clock, scan_s=cfg.operation.control_period_s)`` is
the loop (the daemon's, or a test's).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import structlog

from plc_bridge.quality import Quality, Sample
from plc_bridge.roles import REFINING_POT
from plc_bridge.safe_write import Alarm, HeartbeatConfig, SafeWriter, TagIO, WritePolicy, WriteRecord
from plc_bridge.tagmap import TagMap, TagMapError, load_tagmap
from refining.config import RefiningConfig
from refining.controller import SafeCommandFilter, SafetyLimits
from refining.model import PotInputs, PotPolicy, PotReadings
from twin.configcore import ConfigIssue
from twin.resources import config_dir

__all__ = [
    "REFINING_POT",
    "REFINING_POT_MAP",
    "RefiningCommands",
    "RefiningController",
    "RefiningMeasurements",
    "RefiningPlant",
    "refining_tagmap",
]

log = structlog.get_logger(__name__)

#: the shipped refining-pot tag map
REFINING_POT_MAP = config_dir() / "tagmaps" / "refining_pot.toml"

Mode = Literal["observe", "shadow", "control"]

#: read roles the controller cannot do without (their data must be usable)
_NEEDED = ("current", "voltage", "temperature", "heater_power", "cycle_time_h", "remote", "cycle_ended")


def _role_problems(tm: TagMap) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for role in REFINING_POT.roles:
        t = tm.role_tag(role.name)
        if t is None:
            if role.required:
                out.append((role.name, f"required role {role.name!r} of the refining pot {tm.instance} is given by no"
                                       f" tag; expected a tag with role = {role.name!r} ({role.access}, {role.kind}"
                                       f"{', ' + role.unit if role.unit else ''}: {role.use})"))  # fmt: skip
            continue
        if role.kind == "bool" and not t.reads_bool:
            out.append((role.name, f"expected a bool, got {t.type.value} tag {t.name!r}"))
        elif role.kind != "bool" and t.reads_bool:
            out.append((role.name, f"expected a {role.kind}, got bool tag {t.name!r}"))
        elif role.kind == "counter" and not t.type.is_int:
            out.append((role.name, f"expected an integer counter, got {t.type.value} tag {t.name!r}"))
        elif role.access == "write" and not t.writable:
            out.append((role.name, f"the bridge writes it; tag {t.name!r} is read-only (expected access 'read-write')"))
    return out


def refining_tagmap(instance: str, path: str | Path | None = None) -> TagMap:
    """The refining-pot tag map for pot ``instance``, its roles checked.

    Raises:
        TagMapError: an invalid file, or a missing/mistyped role (``file: roles.<role>: ...``).
    """
    tm = load_tagmap(path or REFINING_POT_MAP, instance=instance)
    problems = _role_problems(tm)
    if problems:
        raise TagMapError([ConfigIssue(tm.source, f"roles.{r}", msg) for r, msg in problems])
    return tm


# --------------------------------------------------------------------------- measurements and commands


@dataclass(slots=True)
class RefiningMeasurements:
    """One scan of a refining pot's PLC.

    Attributes:
        t_s: time since the cycle started (the PLC's clock) [s]; NaN when unreadable.
        readings: what the controller sees (one pot; unusable values NaN).
        ok: every value the controller needs (``_NEEDED``) is usable.
        remote: the PLC accepts remote commands.
        cycle_ended: the cycle is over.
        problems: one line per unusable value (tag and reason).
        samples: the raw samples by tag name.
    """

    t_s: float
    readings: PotReadings
    ok: bool
    remote: bool
    cycle_ended: bool
    problems: list[str] = field(default_factory=list)
    samples: dict[str, Sample] = field(default_factory=dict)


@dataclass(slots=True)
class RefiningCommands:
    """What the controller asks of the pot this cycle, and its events ``(kind, pot, text)`` for the journal."""

    inputs: PotInputs
    events: list[tuple[str, int, str]] = field(default_factory=list)


class RefiningController:
    """A refining policy for one pot as a ``ControlRuntime`` controller.

    Args:
        policy: the candidate (``step(PotReadings, now_s) -> PotInputs``, one pot).
        cfg: the pot's config (``[safety]`` for the filter, the heater setpoint to hold).
    """

    def __init__(self, policy: PotPolicy, cfg: RefiningConfig) -> None:
        self.policy = policy
        self.filter = SafeCommandFilter(
            SafetyLimits.from_config(cfg), cfg.operation.control_period_s, 1, cfg.operation.heater_setpoint_c
        )
        self._last: PotInputs | None = None

    def step(self, meas: RefiningMeasurements, now: float) -> RefiningCommands:
        """Commands for this cycle (held when the data is not usable or the cycle ended)."""
        events: list[tuple[str, int, str]] = []
        if not meas.ok or meas.cycle_ended:
            why = "cycle ended" if meas.cycle_ended else "data not usable: " + "; ".join(meas.problems[:3])
            sp = self._last.current_sp_a if self._last is not None else meas.readings.current_a
            h = self._last.heater_sp_c if self._last is not None else self.filter.last_heater
            hold = PotInputs(np.nan_to_num(np.asarray(sp, dtype=float), nan=0.0), np.asarray(h, dtype=float).copy(),
                             np.zeros(1), np.zeros(1), np.zeros(1, dtype=bool))  # fmt: skip
            events.append(("refining_hold", 0, f"commands held: {why}"))
            return RefiningCommands(hold, events)
        raw = self.policy.step(meas.readings, now)
        out = self.filter.apply(raw, meas.readings.current_a)
        events += [("refining_filter", 0, a) for a in self.filter.last_actions]
        self._last = out
        return RefiningCommands(out, events)


# --------------------------------------------------------------------------- the plant


class RefiningPlant:
    """A refining pot's PLC, read through its tag map and written through ``SafeWriter``.

    Args:
        io: the PLC connection (``read(names)`` / ``write(name, value)``: ``ModbusTagClient``,
            ``OpcUaClient``).
        tagmap: the pot's tag map (``refining_tagmap``).
        clock: a ``twin.clock`` clock (samples, ramps and ages are in its seconds).
        cfg: the pot's config (``[safety]`` bounds the writes; the control period sets
            interlock ages and the ramp step).
        mode: ``observe``, ``shadow`` or ``control`` (``set_mode`` changes it).
        heartbeat_timeout_s: the PLC's own counter unchanged this long -> writes refused [clock s].
        on_record, on_alarm: callbacks for every ``WriteRecord`` / ``Alarm``.
        name: for logs and journal entries (default: the map's instance).
    """

    def __init__(
        self,
        io: TagIO,
        tagmap: TagMap,
        clock: Any,
        cfg: RefiningConfig,
        *,
        mode: Mode = "shadow",
        heartbeat_timeout_s: float | None = None,
        on_record: Callable[[WriteRecord], None] | None = None,
        on_alarm: Callable[[Alarm], None] | None = None,
        name: str | None = None,
    ) -> None:
        problems = _role_problems(tagmap)
        if problems:
            raise TagMapError([ConfigIssue(tagmap.source, f"roles.{r}", msg) for r, msg in problems])
        self.io = io
        self.tagmap = tagmap
        self.clock = clock
        self.cfg = cfg
        self.name = name or tagmap.instance
        period = cfg.operation.control_period_s
        sa = cfg.safety
        interval = 1.5 * period
        policies = {
            "current_sp": WritePolicy(min=sa.current_min_a, max=sa.current_max_a, max_rate_per_s=sa.ramp_a_per_h / 3600.0,
                                      max_interval_s=interval, tolerance=0.5),
            "heater_sp": WritePolicy(min=sa.heater_setpoint_min_c, max=sa.heater_setpoint_max_c, tolerance=0.05),
            "charge_kg": WritePolicy(min=0.0, max=sa.charge_max_kg, tolerance=0.01),
            "tap_kg": WritePolicy(min=0.0, max=sa.tap_max_kg, tolerance=0.01),
        }  # fmt: skip
        hb = HeartbeatConfig(
            out_tag="heartbeat_out",
            in_tag="heartbeat_in" if "heartbeat_in" in tagmap else None,
            period_s=period,
            in_timeout_s=heartbeat_timeout_s if heartbeat_timeout_s is not None else 3 * period,
        )
        self._records: list[WriteRecord] = []
        self._events: list[tuple[str, int, str]] = []
        self._on_record = on_record

        def record(r: WriteRecord) -> None:
            self._records.append(r)
            if on_record is not None:
                on_record(r)

        self.writer = SafeWriter(io, tagmap, clock, policies=policies, heartbeat=hb, on_alarm=on_alarm,
                                 on_record=record, enabled=mode == "control")  # fmt: skip
        age = 2.0 * period
        # in shadow no heartbeat goes out, so the PLC is in local by design: shadow decisions
        # are what control would write once the heartbeat brings it to remote
        self.writer.require("remote", "remote", lambda v: bool(v) or self.mode == "shadow",
                            describe="pot in local control", max_age_s=age)  # fmt: skip
        self.writer.require("cycle_running", "cycle_ended", lambda v: not v, describe="cycle ended", max_age_s=age)
        self.mode: Mode = mode
        self._names = [t.name for t in tagmap if not t.writable]
        self._assay_seq: float | None = None
        self._assay = np.full(3, np.nan)
        self._tapped_prev: float | None = None
        self._stop_sent = False
        self._resync = mode == "control"
        self.last: RefiningMeasurements | None = None

    # ------------------------------------------------------------------ mode

    def set_mode(self, mode: Mode) -> None:
        """Change what reaches the wire (``observe``: nothing decided; ``shadow``: decided, not sent)."""
        if mode not in ("observe", "shadow", "control"):
            raise ValueError(f"mode: expected 'observe', 'shadow' or 'control', got {mode!r}")
        if mode == "control" and self.mode != "control":
            self._resync = True  # what shadow decided was never sent: ramp from what the PLC holds
        self.mode = mode
        self.writer.enabled = mode == "control"
        self._events.append(("mode_change", 0, f"{self.name}: {mode}"))

    # ------------------------------------------------------------------ read

    async def read(self) -> RefiningMeasurements:
        """One scan: every readable tag, into ``RefiningMeasurements`` (never raises on plant conditions)."""
        samples = await self.io.read(self._names)
        self.writer.update(samples)
        problems: list[str] = []

        def value(name: str, needed: bool = False) -> float:
            s = samples.get(name)
            if s is None or s.value is None or s.quality is Quality.BAD:
                if needed:
                    problems.append(f"{name}: {s.reason if s is not None else 'not read'}")
                return math.nan
            try:
                v = float(s.value)
            except (TypeError, ValueError):
                if needed:
                    problems.append(f"{name}: not a number")
                return math.nan
            if needed and not math.isfinite(v):
                problems.append(f"{name}: not finite")
            return v

        cur = value("current", True)
        u = value("voltage", True)
        tc = value("temperature", True)
        q = value("heater_power", True)
        t_h = value("cycle_time_h", True)
        remote = value("remote", True)
        ended = value("cycle_ended", True)
        tapped = value("tapped_total_kg", True)
        scrap = value("scrap_total_kg", True)
        seq = value("assay_seq") if "assay_seq" in self.tagmap else 1.0
        if math.isfinite(seq) and seq > 0 and seq != self._assay_seq:
            self._assay = np.array([value("assay_fe_pct"), value("assay_cu_pct"), value("assay_si_pct")]) / 100.0
            self._assay_seq = seq
        tap_now = 0.0
        if math.isfinite(tapped):
            if self._tapped_prev is not None and tapped > self._tapped_prev + 1e-6:
                tap_now = tapped - self._tapped_prev
            self._tapped_prev = tapped
        e_dc = value("energy_dc_kwh") if "energy_dc_kwh" in self.tagmap else math.nan
        e_aux = value("energy_aux_kwh") if "energy_aux_kwh" in self.tagmap else math.nan
        end = value("end_reason") if "end_reason" in self.tagmap else math.nan

        def one(x: float) -> np.ndarray:
            return np.array([x], dtype=float)

        t_s = t_h * 3600.0
        readings = PotReadings(
            t_s=one(t_s), current_a=one(cur), voltage_v=one(u), temperature_c=one(tc), heater_kw=one(q),
            tap_kg=one(tap_now), tapped_total_kg=one(tapped), scrap_total_kg=one(scrap),
            assay_fe=one(self._assay[0]), assay_cu=one(self._assay[1]), assay_si=one(self._assay[2]),
            e_dc_kwh=one(e_dc), e_aux_kwh=one(e_aux), done=np.array([ended > 0.5]),
            end_reason=np.array([int(end) if math.isfinite(end) else 0]),
        )  # fmt: skip
        meas = RefiningMeasurements(
            t_s=t_s, readings=readings, ok=not problems, remote=remote > 0.5, cycle_ended=ended > 0.5,
            problems=problems, samples=dict(samples),
        )  # fmt: skip
        self.last = meas
        return meas

    # ------------------------------------------------------------------ write

    async def write(self, cmds: RefiningCommands) -> None:
        """Pass the commands through the safe-write layer (nothing in observe; not sent in shadow)."""
        self._events.extend(cmds.events)
        if self.mode == "observe":
            return
        inp = cmds.inputs
        w = self.writer
        if self._resync and self.mode == "control":
            self._resync = not await w.resync(["current_sp", "heater_sp", "charge_cmd", "tap_cmd"])
        sp = float(np.asarray(inp.current_sp_a, dtype=float).ravel()[0])
        h = float(np.asarray(inp.heater_sp_c, dtype=float).ravel()[0])
        await w.write("current_sp", sp, deadband=0.5)
        await w.write("heater_sp", h, deadband=0.05)
        for mass, counter, req in (("charge_kg", "charge_cmd", inp.charge_kg), ("tap_kg", "tap_cmd", inp.tap_kg)):
            kg = float(np.asarray(req, dtype=float).ravel()[0])
            if math.isfinite(kg) and kg > 0.0:
                await w.write_command({mass: kg}, counter)
        stop = bool(np.asarray(inp.stop).ravel()[0])
        if stop and not self._stop_sent and "stop_request" in self.tagmap:
            rec = await w.write("stop_request", True)
            self._stop_sent = not rec.rejected
        if self.mode == "control":
            await w.heartbeat_tick()

    # ------------------------------------------------------------------ for the journal

    def drain_records(self) -> list[WriteRecord]:
        """Write decisions since the last call (requested, written, clamped/ramped/rejected, shadow)."""
        out, self._records = self._records, []
        return out

    def drain_events(self) -> list[tuple[str, int, str]]:
        """Events since the last call (``ControlRuntime`` collects them with the controller's)."""
        out, self._events = self._events, []
        return out
