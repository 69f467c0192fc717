"""The safety layer: properties of the pure decision, and the full path over
real Modbus sockets, observed at the PLC (the server's write hook)."""

from __future__ import annotations

import asyncio
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plc_bridge import codec
from plc_bridge.modbus_client import ModbusTagClient
from plc_bridge.modbus_server import ClientWrite, ExceptionCode, ModbusTagServer, RequestInfo
from plc_bridge.safe_write import (
    Alarm,
    HeartbeatConfig,
    LinkState,
    SafeWriter,
    SetpointLimits,
    WritePolicy,
    WriteRecord,
    decide,
)
from plc_bridge.tagmap import load_tagmap
from tests.waits import wait_until
from twin.clock import VirtualClock

ROOT = Path(__file__).resolve().parents[2]
RECT = load_tagmap(ROOT / "config" / "tagmaps" / "rectifier.toml")
ROOM = load_tagmap(ROOT / "config" / "tagmaps" / "potroom.toml")
SP = "line_current_sp"
RATE = 3.0 / 60.0  # 3 kA/min in kA/s
REL = 1e-9
#: deadline for what takes well under a second on a quiet machine [wall s]
DEADLINE_S = 30.0

garbage = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-1e300, 1e300),
    st.integers(-(10**30), 10**30),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, None, "120", object()]),
)


def step_ok(prev: float, new: float, rate: float, dt: float) -> bool:
    return abs(new - prev) <= rate * dt + REL * max(1.0, abs(prev), abs(new))


# ====================================================================== pure decision


@settings(max_examples=400, deadline=None)
@given(
    tag_name=st.sampled_from([SP, "ramp_rate_sp", "voltage_limit_sp"]),
    rate=st.floats(1e-4, 50.0),
    start=st.floats(0.0, 1.0),
    steps=st.lists(st.tuples(st.floats(0.0, 10.0), garbage), min_size=1, max_size=80),
)
def test_decide_never_leaves_bounds_nor_outruns_the_ramp(tag_name, rate, start, steps):
    tag = RECT[tag_name]
    lim = SetpointLimits(tag, tag.min, tag.max, rate)
    last = codec.quantize_within(tag, tag.min + start * (tag.max - tag.min), tag.min, tag.max)
    last_t = now = 0.0
    for dt, req in steps:
        now += dt
        d = decide(lim, req, last, last_t, now)
        if d.rejected:
            assert d.value is None
            continue
        assert tag.min <= d.value <= tag.max
        assert step_ok(last, d.value, rate, min(now - last_t, lim.max_interval_s))
        # what is decided is exactly what the registers carry
        assert codec.decode(tag, codec.encode(tag, d.value), 0).value == d.value
        last, last_t = d.value, now


@settings(max_examples=300, deadline=None)
@given(
    rate=st.floats(0.05, 20.0),
    steps=st.lists(st.tuples(st.floats(0.0, 5.0), garbage), min_size=1, max_size=60),
)
def test_decide_on_a_scaled_integer_command(rate, steps):
    tag = ROOM["cell001.beam_move"]  # int16, 0.1 mm steps, [-30, 30] mm
    lim = SetpointLimits(tag, tag.min, tag.max, rate)
    last, last_t, now = 0.0, 0.0, 0.0
    for dt, req in steps:
        now += dt
        d = decide(lim, req, last, last_t, now)
        if d.rejected:
            continue
        assert -30.0 <= d.value <= 30.0
        assert step_ok(last, d.value, rate, min(now - last_t, lim.max_interval_s))
        assert abs(d.value * 10 - round(d.value * 10)) < 1e-9  # on the 0.1 mm grid
        last, last_t = d.value, now


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, None, "abc"])
def test_non_finite_requests_are_refused(bad):
    d = decide(SetpointLimits(RECT[SP], 0.0, 135.0), bad, 100.0, 0.0, 1.0)
    assert d.rejected and d.value is None and "non-finite" in d.reason


def test_ramp_takes_the_time_the_rate_implies():
    """100 -> 120 kA at 3 kA/min takes 400 s written once a second (+1 write: each
    float32 step rounds toward the safe side, never past the rate)."""
    lim = SetpointLimits(RECT[SP], 0.0, 135.0, RATE)
    last, t = 100.0, 0.0
    for k in range(1, 1000):
        d = decide(lim, 120.0, last, t, float(k))
        last, t = d.value, float(k)
        if last == 120.0:
            break
    assert k in (400, 401)
    # a long pause does not buy a big step: at most rate x max_interval_s
    d = decide(lim, 80.0, 120.0, 0.0, 3600.0)
    assert d.ramped and d.value == pytest.approx(120.0 - RATE * lim.max_interval_s, abs=1e-5)


def test_unknown_plc_value_blocks_ramped_writes():
    lim = SetpointLimits(RECT[SP], 0.0, 135.0, RATE)
    d = decide(lim, 100.0, None, None, 0.0)
    assert d.rejected and "unknown" in d.reason


@settings(max_examples=300, deadline=None)
@given(
    last=st.one_of(st.floats(117.6, 200.0), st.floats(-50.0, 59.9)),
    rate=st.floats(0.01, 5.0),
    steps=st.lists(st.tuples(st.floats(0.0, 5.0), st.floats(-500.0, 500.0)), min_size=1, max_size=60),
)
def test_a_plc_outside_the_bounds_is_brought_back_along_the_ramp(last, rate, steps):
    """The PLC holds a value outside [60, 117.5] (set locally, or bounds tightened): every
    write moves it toward the bounds by at most one ramp step, never further out, never
    past the request; once inside, the ordinary rules hold. Never a stand-off."""
    lo, hi = 60.0, 117.5
    lim = SetpointLimits(RECT[SP], lo, hi, rate)
    last_t = now = 0.0
    for dt, req in steps:
        now += dt
        d = decide(lim, req, last, last_t, now)
        if d.rejected:
            assert d.value is None and ("resolution" in d.reason)
            continue
        dist = max(lo - last, last - hi, 0.0)
        new_dist = max(lo - d.value, d.value - hi, 0.0)
        assert step_ok(last, d.value, rate, min(now - last_t, lim.max_interval_s))
        assert new_dist <= dist  # never further out
        if dist > 0:
            assert d.recovering == (new_dist > 0) and "outside" in d.reason
        else:
            assert lo <= d.value <= hi
        last, last_t = d.value, now


def test_recovery_from_above_reaches_the_bound_in_the_time_the_rate_implies():
    lim = SetpointLimits(RECT[SP], 0.0, 117.5, 0.1)
    last, t, k = 119.0, 0.0, 0
    while last > 117.5:
        k += 1
        d = decide(lim, 119.0, last, t, float(k))  # the controller still asks for 119
        assert not d.rejected and d.value < last
        last, t = d.value, float(k)
    assert k in (15, 16) and last == 117.5 and not d.recovering  # float32 steps round toward the slow side


# ====================================================================== over the wire


class Rig:
    """Rectifier PLC (our server) + client + safe writer on a virtual clock, with the PLC's view."""

    def __init__(self, tagmap=RECT, *, initial=None, policies=None, heartbeat=None, enabled=True,
                 on_request=None, plc_clamp=None, timeout_s=5.0) -> None:  # fmt: skip
        self.clock = VirtualClock()
        self.timeout_s = timeout_s
        self.tagmap = tagmap
        self.plc_writes: list[tuple[float, dict]] = []
        self.alarms: list[Alarm] = []
        self.records: list[WriteRecord] = []
        self.plc_clamp = plc_clamp
        init = {"tap_position": 1, "ramp_rate_sp": 1.0, SP: 100.0} if tagmap is RECT else {}
        init.update(initial or {})
        self.server = ModbusTagServer(tagmap, initial=init, on_write=self._seen, on_request=on_request)
        self._policies, self._heartbeat, self._enabled = policies, heartbeat, enabled

    def _seen(self, w: ClientWrite) -> None:
        self.plc_writes.append((self.clock.now(), dict(w.values)))
        if self.plc_clamp and SP in w.values and w.values[SP] > self.plc_clamp:
            self.server.set(SP, self.plc_clamp)  # the PLC applies its own internal limit

    async def __aenter__(self) -> Rig:
        await self.server.start()
        # request timeout: generous (a busy machine answers late) unless the test waits for one
        self.client = ModbusTagClient(self.tagmap, port=self.server.port, clock=self.clock, timeout_s=self.timeout_s,
                                      reconnect_min_s=0.05, reconnect_max_s=0.2)  # fmt: skip
        self.writer = self.new_writer()
        return self

    def new_writer(self) -> SafeWriter:
        return SafeWriter(self.client, self.tagmap, self.clock, policies=self._policies, heartbeat=self._heartbeat,
                          on_alarm=self.alarms.append, on_record=self.records.append, enabled=self._enabled)  # fmt: skip

    async def __aexit__(self, *exc) -> None:
        await self.client.close()
        await self.server.stop()

    def plc_values(self, name: str) -> list[tuple[float, float]]:
        return [(t, v[name]) for t, v in self.plc_writes if name in v]

    async def scan_into_writer(self) -> None:
        self.writer.update((await self.client.scan()).samples())


async def _wire_scenario(steps, start):
    async with Rig(initial={SP: start}, policies={SP: WritePolicy(max_rate_per_s=RATE)}) as rig:
        for dt, req in steps:
            rig.clock.advance(dt)
            rec = await rig.writer.write(SP, req)
            if rec.rejected:
                assert rec.written is None
        seen = [(0.0, start), *rig.plc_values(SP)]
        for (t0, v0), (t1, v1) in itertools.pairwise(seen):
            assert 0.0 <= v1 <= 135.0
            assert step_ok(v0, v1, RATE, t1 - t0)
        assert rig.server.get(SP) == seen[-1][1]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    start=st.sampled_from([0.0, 100.0, 134.5]),
    steps=st.lists(st.tuples(st.floats(0.0, 30.0), garbage), min_size=1, max_size=15),
)
def test_plc_never_sees_a_setpoint_out_of_bounds_or_too_steep(start, steps):
    asyncio.run(_wire_scenario(steps, start))


async def test_clamp_and_ramp_are_recorded_for_the_journal():
    async with Rig(policies={SP: WritePolicy(max_rate_per_s=RATE)}) as rig:
        rig.clock.advance(1.0)
        r0 = await rig.writer.write(SP, 500.0)  # first write: PLC value read back, no step yet
        assert r0.clamped and r0.ramped and not r0.rejected and r0.written == 100.0 and r0.verified
        rig.clock.advance(2.0)
        r1 = await rig.writer.write(SP, 500.0)
        assert r1.written == pytest.approx(100.0 + 2 * RATE, abs=1e-5) and r1.previous == 100.0
        assert r1.action == "clamped+ramped" and "clamped to [0, 135]" in r1.reason
        d = r1.as_dict()
        assert {"t", "tag", "requested", "written", "clamped", "ramped", "rejected", "reason", "action"} <= set(d)
        r2 = await rig.writer.write(SP, math.nan)
        assert r2.rejected and r2.written is None
        assert rig.records == [r0, r1, r2]
        assert rig.server.get(SP) == pytest.approx(r1.written)


async def test_setpoint_deadband_stops_chatter() -> None:
    """2 min of a controller trimming between 119.985 and 119.992 kA once a second: without
    a deadband every request is a write and a journal record (the 19-writes-in-2-min
    report); with 10 A nothing is rewritten once the PLC holds the setpoint."""
    rng = np.random.default_rng(14)
    requests = rng.uniform(119.985, 119.992, size=120)
    counts = {}
    for deadband in (None, 0.01):
        async with Rig(initial={SP: 119.99}, policies={SP: WritePolicy(max_rate_per_s=0.1)}) as rig:
            for req in requests:
                rig.clock.advance(1.0)
                rec = await rig.writer.write(SP, float(req), deadband=deadband)
                assert not rec.rejected
            counts[deadband] = (len(rig.plc_values(SP)), len(rig.records))
            assert rig.server.get(SP) == pytest.approx(119.99, abs=0.01)
    assert counts[None][0] >= 119 and counts[None][1] == 120
    assert counts[0.01][0] <= 1 and counts[0.01][1] <= 1  # at most the first (hold) write


async def test_a_plc_held_outside_the_bounds_is_brought_back_and_journalled_once() -> None:
    """The PLC holds 119 kA, the bounds say 117.5 (a tighter [safety] max), the controller
    keeps asking for 119 for 3 min: the setpoint is ramped back (0.1 kA/s) in 15-17 writes,
    one alarm says so and clears, and nothing more is written or journalled -- no stand-off
    refusing every write, no clamp record every scan."""
    pol = {SP: WritePolicy(max_rate_per_s=0.1, max=117.5)}
    async with Rig(initial={SP: 119.0}, policies=pol) as rig:
        for _ in range(180):
            rig.clock.advance(1.0)
            await rig.scan_into_writer()
            await rig.writer.write(SP, 119.0, deadband=0.01)
        writes = [v for _, v in rig.plc_values(SP)]
        assert 15 <= len(writes) <= 17 and writes[-1] == 117.5
        assert all(b < a and a - b <= 0.1 + 1e-5 for a, b in itertools.pairwise([119.0, *writes]))
        assert len(rig.records) == len(writes) and not any(r.rejected for r in rig.records)
        oob = [(a.kind, a.active) for a in rig.alarms if a.kind.startswith("out_of_bounds")]
        assert oob == [("out_of_bounds", True), ("out_of_bounds", False)]
        assert rig.server.get(SP) == 117.5


async def test_a_plc_value_beyond_the_map_is_brought_back_through_the_client() -> None:
    """The PLC holds 140 kA, beyond the map's own max (135): the read is UNCERTAIN but
    known, and the ramp back writes values between the two (the client lets a recovery
    write through its bounds check; our server, like the PLC, accepts what it holds)."""
    async with Rig(initial={SP: 140.0}, policies={SP: WritePolicy(max_rate_per_s=1.0)}) as rig:
        rig.server.reject_out_of_bounds = False
        for _ in range(10):
            rig.clock.advance(1.0)
            rec = await rig.writer.write(SP, 120.0)
            assert not rec.rejected, rec
        writes = [v for _, v in rig.plc_values(SP)]
        assert writes[:5] == [139.0, 138.0, 137.0, 136.0, 135.0] and writes[-1] < 135.0
        assert rig.records[0].reason.startswith("PLC holds 140, outside [0, 135]")


async def test_ramp_holds_across_a_restart_of_the_controller():
    async with Rig(policies={SP: WritePolicy(max_rate_per_s=RATE)}) as rig:
        for _ in range(20):
            rig.clock.advance(1.0)
            await rig.writer.write(SP, 130.0)
        held = rig.server.get(SP)
        assert held == pytest.approx(100.0 + 19 * RATE, abs=1e-4)
        # the controller restarts: a fresh writer knows nothing but reads the PLC first
        rig.writer = rig.new_writer()
        n = len(rig.plc_writes)
        rec = await rig.writer.write(SP, 130.0)
        assert rec.previous == held and rec.written == held
        rig.clock.advance(1.0)
        rec = await rig.writer.write(SP, 130.0)
        assert rec.written - held <= RATE + 1e-6
        for _t, v in rig.plc_values(SP)[n:]:
            assert v <= held + RATE + 1e-6


async def test_interlocks_remote_trip_and_stale_data():
    async with Rig(initial={"remote": False}) as rig:
        w = rig.writer
        w.require("remote", "remote", bool, describe="rectifier in local control", max_age_s=2.0)
        w.require("not_tripped", "tripped", lambda v: not v, describe="rectifier tripped", max_age_s=2.0)
        rec = await w.write(SP, 110.0)
        assert rec.rejected and "no data" in rec.reason
        await rig.scan_into_writer()
        rec = await w.write(SP, 110.0)
        assert rec.rejected and "rectifier in local control" in rec.reason
        rig.server.set("remote", True)
        await rig.scan_into_writer()
        assert not (await w.write(SP, 110.0)).rejected
        rig.clock.advance(3.0)  # no scan for 3 s: the interlock data is stale
        rec = await w.write(SP, 111.0)
        assert rec.rejected and "stale data" in rec.reason
        rig.server.set("tripped", True)
        await rig.scan_into_writer()
        rec = await w.write(SP, 111.0)
        assert rec.rejected and "rectifier tripped" in rec.reason
        assert [v for _, v in rig.plc_values(SP)] == [110.0]  # only the one allowed write reached the PLC


async def test_readback_mismatch_is_retried_then_alarmed():
    async with Rig(plc_clamp=110.0) as rig:
        rec = await rig.writer.write(SP, 115.0)
        assert rec.verified is False and rec.attempts == 1 + rig.writer.verify_retries
        assert "read-back mismatch" in rec.reason
        assert rig.writer.last_value(SP) == 110.0  # the PLC's word counts
        assert any(a.kind == "readback_mismatch" and a.active for a in rig.alarms)
        rec = await rig.writer.write(SP, 105.0)
        assert rec.verified is True and rec.attempts == 1
        assert any(a.kind == "readback_mismatch" and not a.active for a in rig.alarms)


async def test_plc_refusal_is_not_a_comms_loss():
    def refuse(req: RequestInfo):
        return ExceptionCode.ILLEGAL_VALUE if req.write else None

    async with Rig(on_request=refuse) as rig:
        rec = await rig.writer.write(SP, 101.0)
        assert rec.rejected and "PLC refused: modbus exception 3 illegal value" in rec.reason
        assert rig.writer.state is LinkState.NORMAL
        assert [a.kind for a in rig.alarms] == ["plc_refused"]


async def test_comms_loss_stops_writes_and_never_replays_them():
    # a stopped PLC leaves the open connection hanging: the client finds out by a timeout
    async with Rig(policies={SP: WritePolicy(max_rate_per_s=RATE)}, timeout_s=1.0) as rig:
        w = rig.writer
        rig.clock.advance(1.0)
        assert not (await w.write(SP, 120.0)).rejected
        await rig.server.stop()
        for req in (125.0, 126.0, 127.0):  # requests during the outage
            rig.clock.advance(1.0)
            rec = await w.write(SP, req)
            assert rec.rejected and "comms lost" in rec.reason
        assert w.state is LinkState.COMMS_LOST
        assert [a.kind for a in rig.alarms if a.active] == ["comms_lost"]
        n_before = len(rig.plc_writes)
        await rig.server.start()
        rig.server.set(SP, 90.0)  # meanwhile an operator lowered the setpoint locally
        await wait_until(rig.client.connect, DEADLINE_S, "the client to reconnect to the PLC")
        rig.clock.advance(1.0)
        rec = await w.write(SP, 130.0)
        assert not rec.rejected and rec.previous == 90.0  # state re-read, not assumed
        assert rec.written == 90.0  # ramp restarts from what the PLC holds
        rig.clock.advance(1.0)
        rec = await w.write(SP, 130.0)
        assert rec.written == pytest.approx(90.0 + RATE, abs=1e-5)
        after = [v for _, v in rig.plc_values(SP)[n_before:]]
        assert not {125.0, 126.0, 127.0} & set(after)
        assert any(a.kind == "comms_lost" and not a.active for a in rig.alarms)
        assert w.state is LinkState.NORMAL


async def test_heartbeat_counts_wraps_and_watches_the_plc():
    hb = HeartbeatConfig("heartbeat_out", "heartbeat_in", period_s=1.0, in_timeout_s=3.0)
    async with Rig(initial={"heartbeat_out": 65534, "heartbeat_in": 7}, heartbeat=hb) as rig:
        w = rig.writer
        for _ in range(3):
            await rig.scan_into_writer()
            assert await w.heartbeat_tick()
            rig.clock.advance(1.0)
        # continued from the PLC's value and wrapped past 65535
        assert [v for _, v in rig.plc_values("heartbeat_out")] == [65535, 0, 1]
        rig.clock.advance(2.0)
        await rig.scan_into_writer()
        await w.heartbeat_tick()  # PLC counter stuck at 7 for > 3 s
        assert any(a.kind == "plc_heartbeat_stale" and a.active for a in rig.alarms)
        rec = await w.write(SP, 101.0)
        assert rec.rejected and "PLC heartbeat stale" in rec.reason
        rig.server.set("heartbeat_in", 8)
        await rig.scan_into_writer()
        await w.heartbeat_tick()
        assert any(a.kind == "plc_heartbeat_stale" and not a.active for a in rig.alarms)
        assert not (await w.write(SP, 101.0)).rejected


async def test_heartbeat_task_runs_on_the_clock():
    hb = HeartbeatConfig("heartbeat_out", None, period_s=0.5)
    async with Rig(heartbeat=hb) as rig:
        stop = asyncio.Event()
        task = asyncio.create_task(rig.writer.run_heartbeat(stop))
        await wait_until(lambda: rig.server.get("heartbeat_out") >= 10, DEADLINE_S, "10 heartbeats at the PLC")
        stop.set()
        await asyncio.wait_for(task, DEADLINE_S)
        seen = rig.plc_values("heartbeat_out")
        assert [v for _, v in seen][:10] == list(range(1, 11))
        assert all(t1 - t0 == pytest.approx(0.5) for (t0, _), (t1, _) in itertools.pairwise(seen))


async def test_shadow_mode_decides_but_sends_nothing():
    async with Rig(enabled=False, policies={SP: WritePolicy(max_rate_per_s=RATE)}) as rig:
        rig.clock.advance(1.0)
        await rig.writer.write(SP, 130.0)
        rig.clock.advance(10.0)
        rec = await rig.writer.write(SP, 130.0)
        assert rec.shadow and rec.written == pytest.approx(100.0 + 2 * RATE, abs=1e-5) and rec.action == "shadow"
        assert rig.server.client_writes == 0 and rig.server.get(SP) == 100.0


async def test_feed_and_beam_commands_with_cell_interlocks():
    async with Rig(ROOM, policies={"cell006.beam_move": WritePolicy()}) as rig:
        w = rig.writer
        ae = np.zeros(132)
        ae[4] = 1  # cell 5 is on anode effect
        rig.server.set_array("ae", ae)
        cut = np.zeros(132)
        cut[9] = 1  # cell 10 is cut out
        rig.server.set_array("cut_out", cut)
        cell_of = lambda name: lambda t: f"cell{t.cell:03d}.{name}"  # noqa: E731
        w.require("no_ae", cell_of("ae"), lambda v: not v, describe="anode effect",
                  applies=lambda t: t.field in ("beam_move", "beam_cmd"))  # fmt: skip
        w.require("in_circuit", cell_of("cut_out"), lambda v: not v, describe="cell cut out",
                  applies=lambda t: t.cell is not None)  # fmt: skip
        await rig.scan_into_writer()
        recs = await w.write_command({"cell005.beam_move": 2.0}, "cell005.beam_cmd")
        assert recs[0].rejected and "anode effect" in recs[0].reason and recs[-1].rejected
        recs = await w.write_command({"cell006.beam_move": 2.04}, "cell006.beam_cmd")
        assert not any(r.rejected for r in recs)
        recs = await w.write_command({"cell006.beam_move": -99.0}, "cell006.beam_cmd")
        assert recs[0].clamped and recs[0].written == -30.0
        for _ in range(2):
            assert not any(r.rejected for r in await w.write_command({"cell011.feed_shots": 3}, "cell011.feed_cmd"))
        recs = await w.write_command({"cell010.feed_shots": 3}, "cell010.feed_cmd")
        assert recs[0].rejected and "cell cut out" in recs[0].reason
        assert rig.server.get("cell005.beam_cmd") == 0 and rig.server.get("cell005.beam_move") == 0
        assert rig.server.get("cell006.beam_cmd") == 2 and rig.server.get("cell006.beam_move") == -30.0
        assert rig.server.get("cell011.feed_cmd") == 2 and rig.server.get("cell011.feed_shots") == 3
        assert rig.server.get("cell010.feed_cmd") == 0
        first_beam = next(v for _, v in rig.plc_values("cell006.beam_move"))
        assert first_beam == pytest.approx(2.0)  # 0.1 mm resolution: 2.04 -> 2.0


class RaisingIO:
    """A PLC connection in the other style (OPC UA client): write returns None, raises on failure."""

    class Refused(RuntimeError):
        def __init__(self, status: str) -> None:
            super().__init__(status)
            self.status = status

    def __init__(self, client: ModbusTagClient) -> None:
        self.client = client

    async def read(self, names):
        return await self.client.read(names)

    async def write(self, name, value) -> None:
        r = await self.client.write(name, value)
        if r.ok:
            return None
        if r.comms_failure:
            raise ConnectionError(r.reason)
        raise self.Refused(f"BadOutOfRange ({r.reason})")


async def test_writer_accepts_io_that_raises_instead_of_returning_results():
    refuse = {"on": False}

    def hook(req: RequestInfo):
        return ExceptionCode.ILLEGAL_VALUE if (refuse["on"] and req.write) else None

    async with Rig(on_request=hook, timeout_s=1.0) as rig:
        w = SafeWriter(RaisingIO(rig.client), RECT, rig.clock, on_alarm=rig.alarms.append)
        rec = await w.write(SP, 104.0)
        assert not rec.rejected and rec.verified and rig.server.get(SP) == 104.0
        refuse["on"] = True
        rec = await w.write(SP, 105.0)
        assert rec.rejected and "PLC refused: BadOutOfRange" in rec.reason and w.state is LinkState.NORMAL
        refuse["on"] = False
        await rig.server.stop()
        rec = await w.write(SP, 106.0)
        assert rec.rejected and "comms lost" in rec.reason and w.state is LinkState.COMMS_LOST
