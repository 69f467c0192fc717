"""The one layer every setpoint and command to a PLC passes.

Two halves, sans-I/O style:

* **Pure decision logic** — ``decide(limits, requested, last, last_t, now,
  interlocks)`` clamps to the tag's bounds (or refuses a request outside them, for
  tags whose policy says ``refuse_outside``), limits the step against the last
  written (or read-back) value to ``max_rate_per_s`` x elapsed time, refuses on
  any failed interlock, and quantises to what the registers can carry without
  leaving the allowed interval. ``evaluate_condition`` turns a sample into an
  interlock result (no data, bad quality or stale data => not ok). No clock, no
  sockets: property-testable.
* **The I/O shell** — ``SafeWriter`` keeps per-tag state, reads the PLC value
  before the first write of a tag (so ramps hold across restarts), writes
  through any ``TagIO`` (``ModbusTagClient``, or an OPC UA client with the same
  ``read``/``write``), verifies by read-back with a tolerance and bounded
  retries, runs the two-way heartbeat, and on comms loss stops writing (the PLC
  holds its last value or falls back to local on heartbeat loss), raises an
  alarm, and on reconnect re-reads the PLC state. Requests made during a comms
  loss are refused, never queued or replayed.

Every write decision returns a ``WriteRecord`` (tag, requested, written,
clamped/ramped/rejected, reason) for the journal. Time comes from a clock
(``twin/clock.py``); nothing here calls ``time.time``/``time.sleep``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any, Protocol

import numpy as np
import structlog

from plc_bridge import codec
from plc_bridge.quality import Quality, Sample, WriteResult
from plc_bridge.tagmap import Tag, TagMap

__all__ = [
    "Alarm",
    "HeartbeatConfig",
    "Interlock",
    "InterlockResult",
    "LinkState",
    "SafeWriter",
    "SetpointLimits",
    "TagIO",
    "WriteDecision",
    "WritePolicy",
    "WriteRecord",
    "decide",
    "evaluate_condition",
]

log = structlog.get_logger(__name__)


# ====================================================================== pure core


@dataclass(frozen=True, slots=True)
class SetpointLimits:
    """Limits for one tag, in engineering units.

    Attributes:
        tag: the ``Tag`` (its type/scale decide what is representable).
        min, max: bounds (never wider than the tag map's).
        max_rate_per_s: largest change per second; None = no ramp limit.
        max_interval_s: elapsed time credited to a ramp step at most [s] (after a
            long pause the next write still moves only rate x this).
        refuse_outside: a request outside ``[min, max]`` is refused (the record names the
            tag and the bounds) instead of clamped: for values where the nearest bound is
            not what was meant (an AlF3 mass, an exchanger duty).
    """

    tag: Tag
    min: float
    max: float
    max_rate_per_s: float | None = None
    max_interval_s: float = 2.0
    refuse_outside: bool = False


@dataclass(frozen=True, slots=True)
class InterlockResult:
    """Outcome of one interlock check."""

    name: str
    ok: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class WriteDecision:
    """What ``decide`` concluded.

    ``value`` is the representable engineering value to write (None when rejected).
    """

    tag: str
    requested: float | None
    value: float | None
    clamped: bool = False
    ramped: bool = False
    rejected: bool = False
    reason: str = ""
    recovering: bool = False


def _as_float(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError, OverflowError):
        return None
    return v


def decide(
    limits: SetpointLimits,
    requested: Any,
    last: float | None,
    last_t: float | None,
    now: float,
    interlocks: Sequence[InterlockResult] = (),
) -> WriteDecision:
    """Decide what, if anything, to write for ``requested``.

    Args:
        limits: bounds and ramp limit of the tag.
        requested: the value asked for (anything; NaN/inf/garbage are refused).
        last: value the PLC holds as far as we know (last written or read back);
            None = unknown (a ramp-limited tag then refuses: read back first).
        last_t: time ``last`` was established [s, clock of ``now``].
        now: current time [s].
        interlocks: evaluated interlocks; any not ok refuses the write.

    Returns:
        a ``WriteDecision``; when not rejected, ``|value - last| <= max_rate_per_s *
        min(now - last_t, max_interval_s)`` and ``limits.min <= value <= limits.max`` --
        except while the PLC holds a value outside the limits (``last``): then the value
        lies between ``last`` and the limits, a ramp step closer (``recovering``), so an
        out-of-bounds PLC is brought back along the ramp, never left there.
    """
    name = limits.tag.name
    req = _as_float(requested)
    if req is None or not math.isfinite(req):
        return WriteDecision(name, req, None, rejected=True, reason=f"non-finite or invalid request {requested!r}")
    failed = [i for i in interlocks if not i.ok]
    if failed:
        why = "; ".join(f"{i.name}: {i.reason}" if i.reason else i.name for i in failed)
        return WriteDecision(name, req, None, rejected=True, reason=f"interlock {why}")
    lo, hi = limits.min, limits.max
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        return WriteDecision(name, req, None, rejected=True, reason=f"invalid limits [{lo}, {hi}]")
    if limits.refuse_outside and not lo <= req <= hi:
        unit = f" {limits.tag.unit}" if limits.tag.unit else ""
        return WriteDecision(name, req, None, rejected=True,
                             reason=f"{name}: {req:g}{unit} outside the bounds [{lo:g}, {hi:g}]{unit}:"
                                    " refused, not clamped")  # fmt: skip
    x = min(max(req, lo), hi)
    clamped = x != req
    a, b = lo, hi
    ramped = False
    rate = limits.max_rate_per_s
    if rate is not None:
        if last is None or last_t is None or not math.isfinite(last):
            return WriteDecision(name, req, None, clamped, rejected=True,
                                 reason="PLC value unknown: read back before a ramp-limited write")  # fmt: skip
        dt = min(max(0.0, now - last_t), limits.max_interval_s)
        step = max(0.0, rate) * dt
        if not lo <= last <= hi:
            return _recover(limits, req, x, clamped, last, step, rate)
        a, b = max(lo, last - step), min(hi, last + step)
        if x < a or x > b:
            ramped = True
            x = min(max(x, a), b)
    v = codec.quantize_within(limits.tag, x, a, b)
    if v is None:
        if rate is not None and last is not None:
            # nothing representable strictly inside the step: stay where we are
            return WriteDecision(name, req, None, clamped, True, True, "ramp step smaller than the tag resolution")
        return WriteDecision(name, req, None, clamped, ramped, True, "no representable value within limits")
    reasons = []
    if clamped:
        reasons.append(f"clamped to [{lo:g}, {hi:g}]")
    if ramped:
        reasons.append(f"ramp limited to {rate:g}/s")
    return WriteDecision(name, req, v, clamped, ramped, False, "; ".join(reasons))


def _recover(limits: SetpointLimits, req: float, x: float, clamped: bool, last: float, step: float,
             rate: float) -> WriteDecision:  # fmt: skip
    """The PLC holds ``last`` outside ``[min, max]``: one ramp step from it toward ``x`` (in bounds)."""
    name, lo, hi = limits.tag.name, limits.min, limits.max
    if last > hi:
        a, b, target = max(x, last - step), last, last - step
    else:
        a, b, target = last, min(x, last + step), last + step
    v = codec.quantize_within(limits.tag, target, a, b)
    where = f"PLC holds {last:g}, outside [{lo:g}, {hi:g}]"
    if step == 0.0:  # no time credited yet (the value was only just read): start next time
        return WriteDecision(name, req, last, clamped, True, False, f"{where}: ramping back at {rate:g}/s",
                             recovering=True)  # fmt: skip
    if v is None or v == last:
        return WriteDecision(name, req, None, clamped, True, True,
                             f"{where}: ramp step smaller than the tag resolution", recovering=True)  # fmt: skip
    back = lo <= v <= hi
    why = f"{where}: {'back within bounds' if back else f'ramping back at {rate:g}/s'}"
    return WriteDecision(name, req, v, clamped, v != x, False, why, recovering=not back)


def evaluate_condition(
    name: str,
    sample: Sample | None,
    now: float,
    max_age_s: float | None,
    predicate: Callable[[Any], bool],
    describe: str = "",
) -> InterlockResult:
    """Interlock result from the latest sample of a PLC signal.

    Not ok when there is no sample, its quality is not GOOD, it is older than
    ``max_age_s`` (stale interlock data => no write), or ``predicate(value)`` is False.
    """
    if sample is None:
        return InterlockResult(name, False, "no data")
    if not sample.good:
        return InterlockResult(name, False, f"data quality {sample.quality.name}: {sample.reason}")
    age = now - sample.t
    if max_age_s is not None and age > max_age_s:
        return InterlockResult(name, False, f"stale data (age {age:.1f} s > {max_age_s:g} s)")
    try:
        ok = bool(predicate(sample.value))
    except Exception as exc:
        return InterlockResult(name, False, f"condition failed: {exc}")
    return InterlockResult(name, ok, "" if ok else (describe or "condition false"))


# ====================================================================== records and alarms


@dataclass(frozen=True, slots=True)
class WriteRecord:
    """Journal entry for one write decision.

    Attributes:
        t: clock time [s]; tag; requested: value asked for (None if not numeric);
        written: value sent to the PLC (None if nothing was sent);
        previous: value the PLC held before, as far as known;
        clamped, ramped, rejected: what the safety layer did; reason: why;
        verified: read-back matched (None = not checked); attempts: writes sent;
        shadow: decided but not sent (shadow mode).
        unchanged: within the deadband of what the PLC holds: not sent and not journalled.
    """

    t: float
    tag: str
    requested: float | None
    written: float | None
    previous: float | None
    clamped: bool
    ramped: bool
    rejected: bool
    reason: str
    verified: bool | None = None
    attempts: int = 0
    shadow: bool = False
    unchanged: bool = False

    @property
    def action(self) -> str:
        """One word for dashboards: rejected | unchanged | clamped | ramped | clamped+ramped | written | shadow."""
        if self.rejected:
            return "rejected"
        if self.unchanged:
            return "unchanged"
        if self.shadow:
            return "shadow"
        parts = [p for p, f in (("clamped", self.clamped), ("ramped", self.ramped)) if f]
        return "+".join(parts) or "written"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["action"] = self.action
        return d


@dataclass(frozen=True, slots=True)
class Alarm:
    """An alarm raised (``active``) or cleared by the safety layer.

    ``kind``: comms_lost | readback_mismatch | plc_refused | plc_heartbeat_stale |
    out_of_bounds (the PLC holds a value outside the write bounds: being brought back, or
    refused, says which) | plc_value_unusable (the PLC's value of a ramp-limited tag is
    BAD, e.g. implausible: nothing is written to it).
    """

    t: float
    kind: str
    message: str
    tag: str | None = None
    active: bool = True


# ====================================================================== I/O shell


class TagIO(Protocol):
    """What the safety layer needs of a PLC connection.

    ``ModbusTagClient`` fits as is. ``read`` must never raise (BAD samples with a
    reason instead: "timeout", "not connected", ... mark a comms loss). ``write``
    returns a ``WriteResult``, or returns None on success and raises on failure
    (an exception with a ``status`` attribute = the server refused; any other =
    comms failure) — so ``OpcUaClient`` fits too.
    """

    async def read(self, names: Iterable[str]) -> dict[str, Sample]: ...

    async def write(self, name: str, value: float | int | bool) -> WriteResult | None: ...


@dataclass(frozen=True, slots=True)
class WritePolicy:
    """Per-tag settings on top of the tag map.

    Attributes:
        max_rate_per_s: ramp limit [engineering units / s]; None = none.
        min, max: tighter bounds than the map's (can never widen them).
        tolerance: read-back tolerance [engineering units] (default: half a raw step, or exact for floats).
        verify: read back after writing.
        max_interval_s: see ``SetpointLimits``.
        refuse_outside: refuse a request outside the bounds instead of clamping it
            (see ``SetpointLimits``).
    """

    max_rate_per_s: float | None = None
    min: float | None = None
    max: float | None = None
    tolerance: float | None = None
    verify: bool = True
    max_interval_s: float = 2.0
    refuse_outside: bool = False


@dataclass(frozen=True, slots=True)
class Interlock:
    """A condition every write to the tags it applies to must satisfy.

    ``check(now, tag)`` returns an ``InterlockResult`` (or a bool). ``applies``
    selects target tags (None = all). Use ``SafeWriter.require`` for conditions on
    PLC signals (freshness and quality handled).
    """

    name: str
    check: Callable[[float, Tag], InterlockResult | bool]
    applies: Callable[[Tag], bool] | None = None


@dataclass(frozen=True, slots=True)
class HeartbeatConfig:
    """Two-way heartbeat.

    Attributes:
        out_tag: counter the controller increments every ``period_s`` (the PLC watches it).
        in_tag: counter the PLC increments (None = not watched).
        period_s: tick period [s, clock time].
        in_timeout_s: PLC counter unchanged this long => alarm, and writes refused.
    """

    out_tag: str
    in_tag: str | None = None
    period_s: float = 1.0
    in_timeout_s: float = 5.0


class LinkState(str, Enum):
    NORMAL = "normal"
    COMMS_LOST = "comms_lost"


@dataclass(slots=True)
class _TagState:
    last: float | None = None
    last_t: float | None = None


class SafeWriter:
    """Safe setpoint/command writer for one PLC.

    Args:
        io: the PLC connection (``read``/``write`` as in ``TagIO``).
        tagmap: the PLC's tag map (bounds, types, writability).
        clock: a ``twin.clock`` clock (``now()``, ``async sleep()``).
        policies: per-tag ``WritePolicy`` (ramp limits etc.); other writable tags
            get the default (map bounds, no ramp, verified).
        heartbeat: heartbeat configuration, or None.
        on_alarm: called with every ``Alarm`` raised or cleared.
        on_record: called with every ``WriteRecord`` (journal).
        enabled: False = shadow mode: read and decide and record, send nothing.
        verify_retries: extra writes when the read-back does not match.
    """

    def __init__(
        self,
        io: TagIO,
        tagmap: TagMap,
        clock: Any,
        *,
        policies: Mapping[str, WritePolicy] | None = None,
        heartbeat: HeartbeatConfig | None = None,
        on_alarm: Callable[[Alarm], None] | None = None,
        on_record: Callable[[WriteRecord], None] | None = None,
        enabled: bool = True,
        verify_retries: int = 2,
    ) -> None:
        self.io = io
        self.tagmap = tagmap
        self.clock = clock
        self.policies = dict(policies or {})
        for n in self.policies:
            if not tagmap[n].writable:
                raise ValueError(f"{tagmap.source}: policy for read-only tag {n!r}")
        self.heartbeat = heartbeat
        if heartbeat is not None:
            if not tagmap[heartbeat.out_tag].writable:
                raise ValueError(f"{tagmap.source}: heartbeat tag {heartbeat.out_tag!r} is not writable")
            if heartbeat.in_tag is not None:
                tagmap[heartbeat.in_tag]
        self.on_alarm = on_alarm
        self.on_record = on_record
        self.enabled = enabled
        self.verify_retries = int(verify_retries)
        self.state = LinkState.NORMAL
        self.interlocks: list[Interlock] = []
        self.samples: dict[str, Sample] = {}
        self.active_alarms: dict[tuple[str, str | None], Alarm] = {}
        self._tags: dict[str, _TagState] = {}
        self._limits: dict[str, SetpointLimits] = {}
        self._lock = asyncio.Lock()
        self._hb_value: int | None = None
        self._hb_in_last: Any = None
        self._hb_in_changed_t: float | None = None
        self._hb_stale = False
        self.stats = {"written": 0, "clamped": 0, "ramped": 0, "rejected": 0, "verify_failed": 0, "heartbeats": 0}

    # -------------------------------------------------------------- configuration

    def limits(self, name: str) -> SetpointLimits:
        """Effective limits of tag ``name`` (map bounds intersected with its policy)."""
        lim = self._limits.get(name)
        if lim is not None:
            return lim
        tag = self.tagmap[name]
        if not tag.writable:
            raise ValueError(f"{self.tagmap.source}: tag {name!r} is read-only")
        pol = self.policies.get(name, WritePolicy())
        lo, hi = tag.lo, tag.hi
        if pol.min is not None:
            lo = max(lo, pol.min)
        if pol.max is not None:
            hi = min(hi, pol.max)
        lim = SetpointLimits(tag, lo, hi, pol.max_rate_per_s, pol.max_interval_s, pol.refuse_outside)
        self._limits[name] = lim
        return lim

    def add_interlock(self, interlock: Interlock) -> None:
        self.interlocks.append(interlock)

    def require(
        self,
        name: str,
        tag: str | Callable[[Tag], str],
        predicate: Callable[[Any], bool],
        *,
        describe: str = "",
        max_age_s: float | None = 5.0,
        applies: Callable[[Tag], bool] | Iterable[str] | None = None,
    ) -> None:
        """Interlock on a PLC signal fed through ``update()``.

        Args:
            name: interlock name (in records and alarms).
            tag: the signal's tag name, or a function of the target tag giving it
                (e.g. ``lambda t: f"cell{t.cell:03d}.ae"`` for per-cell interlocks).
            predicate: True when writing is allowed, e.g. ``bool`` for "remote".
            describe: reason shown when the predicate is False.
            max_age_s: older samples count as stale (=> no write).
            applies: target tags it guards (names, a predicate, or None = all).
        """
        src = tag

        def check(now: float, target: Tag) -> InterlockResult:
            sig = src(target) if callable(src) else src
            return evaluate_condition(name, self.samples.get(sig), now, max_age_s, predicate, describe)

        if applies is None or callable(applies):
            sel = applies
        else:
            names = frozenset(applies)
            sel = lambda t: t.name in names  # noqa: E731
        self.interlocks.append(Interlock(name, check, sel))

    def update(self, samples: Mapping[str, Sample]) -> None:
        """Feed the latest PLC samples (e.g. ``scan.samples()``) used by interlocks and the heartbeat.

        A written tag's register read in a scan taken after the last write tells what the
        PLC holds now (it may have changed it itself: setpoint tracking, a local
        operator); that value replaces the remembered one (the ramp's time base stays).
        """
        self.samples.update(samples)
        if self.state is not LinkState.NORMAL:
            return
        for n, s in samples.items():
            st = self._tags.get(n)
            if st is None or st.last is None or st.last_t is None or s.t <= st.last_t or not _usable(s):
                continue
            v = float(s.value)  # type: ignore[arg-type]
            if abs(v - st.last) > _default_tolerance(self.tagmap[n]):
                st.last = v

    def _bounds_alarm(self, lim: SetpointLimits, last: float | None, d: WriteDecision) -> None:
        """``out_of_bounds`` (being brought back) / ``out_of_bounds_refused`` while the PLC's
        value lies outside the write bounds; cleared once it is back within them."""
        name, unit = lim.tag.name, (f" {lim.tag.unit}" if lim.tag.unit else "")
        if last is None:
            return
        if lim.min <= last <= lim.max:
            for kind in ("out_of_bounds", "out_of_bounds_refused"):
                self._alarm(kind, f"{name} back within [{lim.min:g}, {lim.max:g}]{unit}", name, active=False)
            return
        where = f"{name}: PLC holds {last:g}{unit}, outside the write bounds [{lim.min:g}, {lim.max:g}]{unit}"
        if d.rejected:
            self._alarm("out_of_bounds", f"{where}: bringing back paused", name, active=False)
            self._alarm("out_of_bounds_refused", f"{where}; not brought back: {d.reason}", name)
        else:
            self._alarm("out_of_bounds_refused", f"{where}: being brought back", name, active=False)
            rate = lim.max_rate_per_s
            how = f"along the ramp ({rate:g}{unit}/s)" if rate is not None else f"to {d.value:g}{unit}"
            self._alarm("out_of_bounds", f"{where}: bringing it back {how}", name)

    # -------------------------------------------------------------- alarms

    def _alarm(self, kind: str, message: str, tag: str | None = None, active: bool = True) -> None:
        key = (kind, tag)
        if active == (key in self.active_alarms):
            return  # no change: no flood
        a = Alarm(self.clock.now(), kind, message, tag, active)
        if active:
            self.active_alarms[key] = a
            log.warning("safe_write_alarm", kind=kind, tag=tag, message=message)
        else:
            self.active_alarms.pop(key, None)
            log.info("safe_write_alarm_cleared", kind=kind, tag=tag, message=message)
        if self.on_alarm is not None:
            try:
                self.on_alarm(a)
            except Exception:
                log.exception("on_alarm_failed")

    def _emit(self, rec: WriteRecord) -> WriteRecord:
        s = self.stats
        if rec.rejected:
            s["rejected"] += 1
        else:
            s["written"] += 1
            s["clamped"] += int(rec.clamped)
            s["ramped"] += int(rec.ramped)
        if self.on_record is not None:
            try:
                self.on_record(rec)
            except Exception:
                log.exception("on_record_failed")
        return rec

    # -------------------------------------------------------------- comms state

    def _comms_lost(self, why: str) -> None:
        if self.state is not LinkState.COMMS_LOST:
            self.state = LinkState.COMMS_LOST
            # forget what the PLC holds: after the link is back it is re-read, never assumed
            for st in self._tags.values():
                st.last = st.last_t = None
            self._hb_value = None
        self._alarm("comms_lost", f"PLC link lost ({why}): writes stopped, PLC holds its last value")

    async def resync(self, names: Iterable[str] | None = None) -> bool:
        """Re-read the PLC's current values of ``names`` (default: every tag written so far).

        Returns True when the link works (the state becomes NORMAL); tags that could
        not be read stay unknown and are read again before their next write.
        """
        wanted = list(names) if names is not None else list(self._tags)
        if self.heartbeat is not None and self.heartbeat.out_tag not in wanted:
            wanted.append(self.heartbeat.out_tag)
        samples = await self.io.read(wanted) if wanted else {}
        now = self.clock.now()
        for n in wanted:
            s = samples.get(n)
            st = self._tags.setdefault(n, _TagState())
            if s is not None and _usable(s):
                st.last, st.last_t = float(s.value), now  # type: ignore[arg-type]
            else:
                st.last = st.last_t = None
                why = s.reason if s is not None else "no data"
                if s is None or _is_comms_reason(why):
                    self._comms_lost(why)
                    return False
        if self.heartbeat is not None:
            hb = self._tags.get(self.heartbeat.out_tag)
            self._hb_value = int(hb.last) if hb is not None and hb.last is not None else None
        if self.state is LinkState.COMMS_LOST:
            self.state = LinkState.NORMAL
            self._alarm("comms_lost", "PLC link restored, state re-read", active=False)
        return True

    # -------------------------------------------------------------- writes

    def _interlock_results(self, tag: Tag, now: float) -> list[InterlockResult]:
        out = []
        for il in self.interlocks:
            if il.applies is not None and not il.applies(tag):
                continue
            try:
                r = il.check(now, tag)
            except Exception as exc:
                r = InterlockResult(il.name, False, f"check failed: {exc}")
            if isinstance(r, bool):
                r = InterlockResult(il.name, r, "" if r else "condition false")
            out.append(r)
        if self.heartbeat is not None and self.heartbeat.in_tag is not None and self._hb_stale:
            out.append(InterlockResult("plc_heartbeat", False, "PLC heartbeat stale"))
        return out

    async def write(self, name: str, requested: Any, *, deadband: float | None = None) -> WriteRecord:
        """Pass one setpoint/command through the safety layer and (maybe) to the PLC.

        ``deadband`` [engineering units]: when the decided value is within it of what the
        PLC holds (and no ramp is under way), nothing is sent and nothing journalled
        (the record says ``unchanged``): an unchanged setpoint is not rewritten every
        scan, a clamp is journalled when it changes, not while it lasts.

        Never raises for plant conditions; the returned record says what happened.
        Raises ValueError for a tag that is not writable (programming error).
        """
        lim = self.limits(name)
        async with self._lock:
            return await self._write_locked(lim, requested, deadband)

    async def _write_locked(self, lim: SetpointLimits, requested: Any, deadband: float | None = None) -> WriteRecord:
        name = lim.tag.name
        st = self._tags.setdefault(name, _TagState())
        req_f = _as_float(requested)
        d = WriteDecision(name, req_f, None)  # replaced by the real decision below
        previous: float | None = None

        def record(written: float | None, rejected: bool, reason: str, verified: bool | None = None,
                   attempts: int = 0, shadow: bool = False) -> WriteRecord:  # fmt: skip
            return self._emit(WriteRecord(self.clock.now(), name, d.requested, written, previous, d.clamped,
                                          d.ramped, rejected, reason, verified, attempts, shadow))  # fmt: skip

        if self.state is LinkState.COMMS_LOST and not await self.resync():
            return record(None, True, "comms lost: not writing (PLC holds its last value)")
        if st.last is None:
            # know what the PLC holds before the first write (ramps hold across restarts); a
            # value beyond the map's bounds is known too (UNCERTAIN): it is brought back
            got = (await self.io.read([name])).get(name)
            if got is not None and _usable(got):
                st.last, st.last_t = float(got.value), self.clock.now()  # type: ignore[arg-type]
                self._alarm("plc_value_unusable", f"{name}: PLC value usable again", name, active=False)
            elif got is None or _is_comms_reason(got.reason):
                why = got.reason if got is not None else "no data"
                self._comms_lost(why)
                return record(None, True, f"comms lost: cannot read PLC value ({why})")
            elif lim.max_rate_per_s is not None:
                self._alarm("plc_value_unusable",
                            f"{name}: the PLC's value is unusable ({got.reason}): no ramp-limited write to it", name)  # fmt: skip
                return record(None, True, f"PLC value unusable ({got.reason}): cannot ramp from it")
        now = self.clock.now()
        previous = st.last
        d = decide(lim, requested, st.last, st.last_t, now, self._interlock_results(lim.tag, now))
        self._bounds_alarm(lim, st.last, d)
        if d.rejected or d.value is None:
            return record(None, True, d.reason)
        if st.last is not None and float(d.value) == st.last and d.recovering:
            # no step back credited yet (the PLC value was only just read): nothing to send
            return WriteRecord(now, name, d.requested, None, st.last, d.clamped, True, False,
                               _join(d.reason, "no step yet"), unchanged=True)  # fmt: skip
        if (
            deadband is not None
            and st.last is not None
            and lim.min <= st.last <= lim.max
            and not (d.ramped or d.recovering)
            and abs(float(d.value) - st.last) <= deadband
        ):
            # unchanged: not sent, not journalled (not emitted)
            return WriteRecord(now, name, d.requested, None, st.last, d.clamped, False, False,
                               f"unchanged: PLC holds {st.last:g} (deadband {deadband:g})", unchanged=True)  # fmt: skip
        if not self.enabled:
            st.last, st.last_t = d.value, now
            return record(d.value, False, _join(d.reason, "shadow mode: not sent"), shadow=True)
        pol = self.policies.get(name, WritePolicy())
        value: float | int | bool = d.value
        if lim.tag.type is codec.DataType.BOOL:
            value = bool(d.value)
        elif lim.tag.type.is_int and lim.tag.scale == 1.0 and lim.tag.offset == 0.0:
            value = int(d.value)
        tol = pol.tolerance if pol.tolerance is not None else _default_tolerance(lim.tag)
        attempts = 0
        verified: bool | None = None
        while True:
            attempts += 1
            res = await _io_write(self.io, name, value, recovery=not (lim.tag.lo <= float(d.value) <= lim.tag.hi))
            if not res.ok:
                if res.comms_failure:
                    self._comms_lost(res.reason)
                    return record(None, True, _join(d.reason, f"comms lost: {res.reason}"), attempts=attempts)
                self._alarm("plc_refused", f"PLC refused {name} = {value}: {res.reason}", name)
                return record(None, True, _join(d.reason, f"PLC refused: {res.reason}"), attempts=attempts)
            st.last, st.last_t = float(d.value), self.clock.now()
            if not pol.verify:
                break
            back = (await self.io.read([name])).get(name)
            if back is None or not _usable(back):
                why = back.reason if back is not None else "no data"
                if back is None or _is_comms_reason(why):
                    self._comms_lost(why)
                    return record(d.value, False, _join(d.reason, f"read-back failed: {why}"), False, attempts)
                verified = False
            else:
                held = float(back.value)  # type: ignore[arg-type]  # _usable: a finite number
                verified = abs(held - float(d.value)) <= tol
                if not verified:
                    # trust the PLC about what it holds (it may limit the value itself)
                    st.last, st.last_t = held, self.clock.now()
            if verified or attempts > self.verify_retries:
                break
        reason = d.reason
        if verified is False:
            self.stats["verify_failed"] += 1
            self._alarm("readback_mismatch", f"{name}: wrote {value}, PLC holds {st.last}", name)
            reason = _join(reason, f"read-back mismatch after {attempts} attempt(s)")
        elif verified:
            self._alarm("readback_mismatch", f"{name}: read-back matches", name, active=False)
        self._alarm("plc_refused", f"{name} accepted", name, active=False)
        return record(d.value, False, reason, verified, attempts)

    async def write_command(self, fields: Mapping[str, Any], counter: str) -> list[WriteRecord]:
        """Write command fields, then increment ``counter`` (handshake the PLC acts on once).

        The counter is only incremented when every field was written (and verified
        when verification is on); returns the records of the fields and the counter.
        """
        records = [await self.write(n, v) for n, v in fields.items()]
        if any(r.rejected or r.verified is False for r in records):
            now = self.clock.now()
            rec = self._emit(WriteRecord(now, counter, None, None, self._last(counter), False, False, True,
                                         "command fields not written: counter not incremented"))  # fmt: skip
            return [*records, rec]
        last = self._last(counter)
        if last is None:
            got = (await self.io.read([counter])).get(counter)
            if got is not None and got.good and got.value is not None:
                self._tags.setdefault(counter, _TagState()).last = float(got.value)
                self._tags[counter].last_t = self.clock.now()
                last = float(got.value)
        if last is None:
            rec = self._emit(WriteRecord(self.clock.now(), counter, None, None, None, False, False, True,
                                         "counter value unknown"))  # fmt: skip
            return [*records, rec]
        tag = self.tagmap[counter]
        lo, hi = codec.RAW_RANGE.get(tag.type, (0, 65535))
        nxt = int(last) + 1
        if nxt > min(hi, int(tag.hi)):
            nxt = max(lo, int(tag.lo))
        records.append(await self.write(counter, nxt))
        return records

    def _last(self, name: str) -> float | None:
        st = self._tags.get(name)
        return st.last if st is not None else None

    def last_value(self, name: str) -> float | None:
        """What the PLC holds for ``name`` as far as this writer knows (None = unknown)."""
        return self._last(name)

    # -------------------------------------------------------------- heartbeat

    async def heartbeat_tick(self) -> bool:
        """One heartbeat step: write the next counter value, check the PLC's counter.

        During a comms loss it tries to re-read the PLC state instead (and resumes
        once that works). Returns True when the counter was written.
        """
        hb = self.heartbeat
        if hb is None or not self.enabled:
            return False
        async with self._lock:
            now = self.clock.now()
            if hb.in_tag is not None:
                self._check_plc_heartbeat(now)
            if (self.state is LinkState.COMMS_LOST or self._hb_value is None) and not await self.resync([hb.out_tag]):
                return False
            nxt = ((self._hb_value if self._hb_value is not None else 0) + 1) % 65536
            tag = self.tagmap[hb.out_tag]
            if nxt > tag.hi or nxt < tag.lo:
                nxt = int(tag.lo)
            res = await _io_write(self.io, hb.out_tag, nxt)
            if not res.ok:
                if res.comms_failure:
                    self._comms_lost(res.reason)
                else:
                    self._alarm("plc_refused", f"PLC refused heartbeat: {res.reason}", hb.out_tag)
                return False
            self._hb_value = nxt
            st = self._tags.setdefault(hb.out_tag, _TagState())
            st.last, st.last_t = float(nxt), self.clock.now()
            self.stats["heartbeats"] += 1
            return True

    def _check_plc_heartbeat(self, now: float) -> None:
        hb = self.heartbeat
        assert hb is not None and hb.in_tag is not None
        s = self.samples.get(hb.in_tag)
        if s is not None and s.good and s.value != self._hb_in_last:
            self._hb_in_last = s.value
            self._hb_in_changed_t = s.t
        if self._hb_in_changed_t is None:
            self._hb_in_changed_t = now  # grace period from the first tick
        stale = now - self._hb_in_changed_t > hb.in_timeout_s
        if stale != self._hb_stale:
            self._hb_stale = stale
            self._alarm("plc_heartbeat_stale",
                        f"PLC heartbeat {hb.in_tag} unchanged for > {hb.in_timeout_s:g} s" if stale
                        else f"PLC heartbeat {hb.in_tag} alive again", hb.in_tag, active=stale)  # fmt: skip

    async def run_heartbeat(self, stop: asyncio.Event | None = None, *, read_plc_counter: bool = True) -> None:
        """Heartbeat task: tick every ``period_s`` of clock time until ``stop`` is set.

        With ``read_plc_counter`` the PLC's counter is read each tick (otherwise
        it must come through ``update()`` from the scan loop).
        """
        hb = self.heartbeat
        if hb is None:
            return
        while stop is None or not stop.is_set():
            if read_plc_counter and hb.in_tag is not None and self.state is LinkState.NORMAL:
                self.update(await self.io.read([hb.in_tag]))
            try:
                await self.heartbeat_tick()
            except Exception:
                log.exception("heartbeat_tick_failed")
            await self.clock.sleep(hb.period_s)


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a else b


def _default_tolerance(tag: Tag) -> float:
    if tag.type.is_int:
        return abs(tag.scale) / 2
    if tag.type is codec.DataType.FLOAT32:
        return 1e-6 * max(abs(tag.lo), abs(tag.hi), 1.0)
    return 1e-9 * max(abs(tag.lo), abs(tag.hi), 1.0)


_COMMS_REASONS = frozenset({"timeout", "not connected", "connection lost", "protocol error", "no data"})
# OPC UA status names that mean the link, not the server's judgement
_COMMS_PREFIXES = ("BadCommunication", "BadTimeout", "BadConnection", "BadServerNotConnected", "BadSession",
                   "BadSecureChannel", "BadNotConnected", "BadDisconnect")  # fmt: skip


def _is_comms_reason(reason: str) -> bool:
    return reason in _COMMS_REASONS or reason.startswith(_COMMS_PREFIXES)


def _usable(s: Sample) -> bool:
    """A value the PLC really holds: GOOD, or UNCERTAIN with a finite value (beyond the
    map's engineering range: known, to be brought back); never BAD (implausible, link)."""
    if s.value is None or s.quality is Quality.BAD or isinstance(s.value, (str, np.ndarray)):
        return False
    try:
        return math.isfinite(float(s.value))
    except (TypeError, ValueError):
        return False


async def _io_write(io: TagIO, name: str, value: Any, *, recovery: bool = False) -> WriteResult:
    """``io.write`` as a ``WriteResult``, also for I/O objects that return None and raise on failure.

    An exception carrying a ``status`` (e.g. an OPC UA refusal) counts as the PLC
    refusing; any other exception as a comms failure (stop, re-read, never guess).
    ``recovery``: the value lies outside the tag map's bounds because it brings the PLC
    back toward them (``io.write(..., recovery=True)``: the client's own bounds check
    then allows it).
    """
    try:
        res = await (io.write(name, value, recovery=True) if recovery else io.write(name, value))  # type: ignore[call-arg]
    except Exception as exc:
        status = getattr(exc, "status", None)
        if status is not None:
            why = getattr(status, "name", str(status))
            return WriteResult(name, value, None, False, str(why), 4 if not _is_comms_reason(str(why)) else -3)
        return WriteResult(name, value, None, False, f"connection lost ({type(exc).__name__}: {exc})", -3)
    if res is None:
        return WriteResult(name, value, value, True)
    return res
