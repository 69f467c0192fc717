"""The bridge against PLCs laid out unlike ours (tests/plc_bridge/foreign_support.py), each
driven by the tag map a plant engineer writes from docs/operations.md, over real sockets:

* layouts A (Modbus rectifier: 1-based, CDAB, int32 amperes, inverted LOCAL bit, no PLC
  heartbeat, an alias) and B (Modbus potroom: byte-swapped BADC, mode enumeration, status
  bits in the high byte) behind uModbus servers;
* layout C (OPC UA rectifier: another namespace and tree, string NodeIds, amperes as
  Double, Local Boolean, trip-state enumeration, Int16 watchdog wrapping at 9999, no PLC
  heartbeat) behind a plain asyncua server, with B as its potroom.

Each runs end to end: observed values equal the PLC's own, control writes stay within
the plant's limits, the heartbeat keeps the PLC in remote, stopping it hands the PLC back
to local within its watchdog. The PLCs and the bridge share a ``VirtualClock`` the test
moves one scan at a time: plant time depends on the test only.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest

from plc_bridge.plant import BridgePlant, BridgeSettings, DeviceEndpoint
from plc_bridge.quality import Quality
from plc_bridge.safe_write import Alarm, WriteRecord
from potctl.plant import Commands, Measurements
from tests.plc_bridge.foreign_support import (
    MAP_A,
    MAP_B,
    MAP_C,
    N_CELLS,
    PotroomB,
    RectifierA,
    RectifierC,
    Registers,
    layout,
    umodbus_plc,
)
from twin.clock import VirtualClock

SCAN = 1.0
WATCHDOG = 4.0


def settings(tmp_path: Path, rect_map: str) -> BridgeSettings:
    (tmp_path / "rect.toml").write_text(rect_map)
    (tmp_path / "room.toml").write_text(MAP_B)
    return BridgeSettings(
        stale_after_s=5.0, plc_heartbeat_timeout_s=5.0, setpoint_rate_ka_per_s=1.0, setpoint_max_interval_s=5.0,
        ack_timeout_s=10.0, frozen_after_s=None, modbus_timeout_s=5.0, opcua_timeout_s=5.0,
        rectifier_map=str(tmp_path / "rect.toml"), potroom_map=str(tmp_path / "room.toml"),
        line_limits_ka={"Line1": (0.0, 132.0)},  # the plant config's rectifier limits
    )  # fmt: skip


class Bench:
    """The bridge and the PLCs on one virtual clock."""

    def __init__(self, plant: BridgePlant, clock: VirtualClock, scans: list[Callable[[float, float], Awaitable[None]]]):
        self.plant, self.clock, self.scans = plant, clock, scans

    async def cycle(self, cmds: Commands | None = None) -> Measurements:
        """One controller scan (read, write), then ``SCAN`` s of plant time and a PLC scan."""
        meas = await self.plant.read()
        await self.plant.write(cmds if cmds is not None else Commands.idle(N_CELLS, 1))
        self.clock.advance(SCAN)
        for scan in self.scans:
            await scan(self.clock.now(), SCAN)
        return meas

    async def until(self, pred: Callable[[Measurements], bool], n: int, cmds: Commands | None = None,
                    what: str = "") -> Measurements:  # fmt: skip
        for _ in range(n):
            meas = await self.cycle(cmds)
            if pred(meas):
                return meas
        raise AssertionError(f"not within {n} scans: {what}")


def sync(fn: Callable[..., None]) -> Callable[[float, float], Awaitable[None]]:
    async def run(now: float, dt: float) -> None:
        fn(now, dt)

    return run


def setpoint(value: float) -> Commands:
    cmds = Commands.idle(N_CELLS, 1)
    cmds.line_setpoint_ka[:] = value
    return cmds


async def test_modbus_layouts_a_and_b_end_to_end(tmp_path) -> None:
    regs_a, regs_b = Registers(), Registers()
    rect, room = RectifierA(regs_a, watchdog_s=WATCHDOG), PotroomB(regs_b, watchdog_s=WATCHDOG)
    records: list[WriteRecord] = []
    alarms: list[Alarm] = []
    with umodbus_plc(regs_a, 3) as port_a, umodbus_plc(regs_b, 2) as port_b:
        clock = VirtualClock()
        plant = BridgePlant(layout(), [DeviceEndpoint("modbus", "127.0.0.1", port_a)],
                            [DeviceEndpoint("modbus", "127.0.0.1", port_b)], clock, settings(tmp_path, MAP_A),
                            on_record=records.append, on_alarm=alarms.append)  # fmt: skip
        await plant.start()
        bench = Bench(plant, clock, [sync(rect.scan), sync(lambda now, dt: room.scan(now))])
        try:
            # no PLC heartbeat in layout A: stated, not an error
            losses = plant.capability_losses
            assert [x.split(":")[0] for x in losses["rectifier:Line1"]] == ["no heartbeat_in", "no grid_limit_mw"]
            # layout B's PLC has no shell heat exchangers nor AlF3 commands: stated, not an error
            assert [x.split(":")[0] for x in losses["potroom:Potroom1"]] == [
                f"no {r}" for r in ("hx_duty_sp", "hx_duty", "shell_temp", "alf3_kg", "alf3_cmd", "alf3_cmd_ack")
            ]
            # observe: what the bridge reads is what each PLC holds (CDAB floats, int32 amperes,
            # the inverted LOCAL bit, byte-swapped floats and status bits); both PLCs in local
            meas = await plant.read()
            assert meas.line_ok[0] and not meas.rectifier_remote[0]
            assert meas.line_current_ka[0] == pytest.approx(120.0) and meas.line_voltage_v[0] == pytest.approx(840.0)
            assert meas.line_setpoint_ka[0] == 120.0 and meas.tap_position[0] == 17
            assert np.allclose(meas.cell_voltage_v, room.voltage.astype(np.float32), rtol=0, atol=1e-6)
            assert meas.cell_ok.all() and not meas.cell_remote.any()
            assert plant.quality["line_current_ka"].status_names() == ["Good"]
            # control: the heartbeat takes both PLCs to remote
            meas = await bench.until(lambda m: m.rectifier_remote[0] and m.cell_remote.all(), 10, what="remote")
            assert rect.remote and room.remote
            # a setpoint above the rectifier's real limit (132 kA in the plant config, the map says
            # 135): bounded to it and ramped; the PLC never receives more
            meas = await bench.until(lambda m: m.line_setpoint_ka[0] == pytest.approx(132.0), 30, setpoint(134.0),
                                     "setpoint at the plant limit")  # fmt: skip
            writes = rect.setpoint_writes_ka()
            assert max(writes) == pytest.approx(132.0) and all(w <= 132.0 for w in writes)
            assert all(b - a <= 1.0 + 1e-3 for a, b in itertools.pairwise(writes))  # 1 kA/s
            # deadband: an unchanged (clamped) setpoint is neither rewritten nor journalled
            n_writes, n_records = len(writes), len(records)
            for _ in range(10):
                await bench.cycle(setpoint(134.0))
            assert len(rect.setpoint_writes_ka()) == n_writes
            assert [r for r in records[n_records:] if r.tag == "SP_AMPS"] == []
            # feed and beam commands through the handshake (byte-swapped counters and acks)
            before = meas.feeder_ack.copy()
            cmds = Commands.idle(N_CELLS, 1)
            cmds.feed_shots[1] = 3
            cmds.beam_move_mm[2] = -5.0
            await bench.cycle(cmds)
            meas = await bench.until(lambda m: m.feeder_ack[1] - before[1] == 3 and m.beam_ack_mm[2] == -5.0, 5,
                                     what="acknowledged")  # fmt: skip
            assert (meas.feeder_ack - before).tolist() == [0, 3, 0, 0] and room.shots_done.tolist() == [0, 3, 0, 0]
            assert plant.stats["ack_timeouts"] == 0
            # the PLC publishes its current with the words swapped (a firmware change): 132.0
            # read as CDAB is a subnormal float (~2.4e-41): BAD, never a value near 0 kA
            rect.swap_current_words = True
            rect.publish()
            meas = await bench.cycle(setpoint(125.0))
            q = plant.quality["line_current_ka"]
            assert not meas.line_ok[0] and q.quality[0] == Quality.UNCERTAIN and "subnormal" in q.reason[0]
            meas = await bench.cycle(setpoint(125.0))
            refused = [r for r in records if r.tag == "SP_AMPS"][-1]
            assert refused.rejected and "plausible_readings" in refused.reason and "subnormal" in refused.reason
            assert max(rect.setpoint_writes_ka()) == pytest.approx(132.0) and rect.setpoint_ka == pytest.approx(132.0)
            rect.swap_current_words = False
            meas = await bench.until(lambda m: m.line_ok[0], 3, what="plausible again")
            # hand back (as on SIGTERM): no more heartbeat, the PLCs' watchdogs take them to local
            for d in plant.devices:
                assert d.writer is not None
                d.writer.enabled = False
            t0 = clock.now()
            meas = await bench.until(lambda m: not m.rectifier_remote[0] and not m.cell_remote.any(), 20,
                                     what="local after the hand-back")  # fmt: skip
            assert clock.now() - t0 <= WATCHDOG + 2 * SCAN
            assert not rect.remote and not room.remote
        finally:
            await plant.stop()


async def test_opcua_layout_c_with_modbus_potroom_b(tmp_path) -> None:
    rc = await RectifierC(watchdog_s=WATCHDOG).start()
    await rc.put("WD", 9998)  # the watchdog counter wraps at 9999 (the map's max)
    regs_b = Registers()
    room = PotroomB(regs_b, watchdog_s=WATCHDOG)
    records: list[WriteRecord] = []
    alarms: list[Alarm] = []
    try:
        with umodbus_plc(regs_b, 2) as port_b:
            clock = VirtualClock()
            plant = BridgePlant(layout(), [DeviceEndpoint("opcua", "127.0.0.1", rc.port, "/charlie/")],
                                [DeviceEndpoint("modbus", "127.0.0.1", port_b)], clock, settings(tmp_path, MAP_C),
                                on_record=records.append, on_alarm=alarms.append)  # fmt: skip
            await plant.start()
            bench = Bench(plant, clock, [rc.scan, sync(lambda now, dt: room.scan(now))])
            try:
                losses = plant.capability_losses["rectifier:Line1"]
                assert [x.split(":")[0] for x in losses] == ["no heartbeat_in", "no tap_position", "no grid_limit_mw"]
                await rc.scan(0.0, 0.0)
                # observe: string NodeIds and browse paths resolved in the map's namespace (not
                # the server's last), amperes scaled to kA, Local inverted, the trip state read
                meas = await plant.read()
                assert meas.line_ok[0] and not meas.rectifier_remote[0] and not meas.rectifier_tripped[0]
                assert meas.line_current_ka[0] == pytest.approx(120.0) and meas.line_voltage_v[0] == pytest.approx(
                    840.0
                )
                for state, tripped in ((1, False), (2, True)):
                    rc.trip_state = state
                    await rc.scan(clock.now(), 0.0)
                    meas = await plant.read()
                    assert meas.line_ok[0] and bool(meas.rectifier_tripped[0]) is tripped
                await rc.put("Trip", 7)  # not one of the PLC's states: BAD, the line is not judged
                meas = await plant.read()
                assert not meas.line_ok[0]
                assert (
                    "not in the enumeration (0 NORMAL, 1 ALARM, 2 TRIPPED)"
                    in plant.quality["rectifier_tripped"].reason[0]
                )
                rc.trip_state = 0
                # control: the Int16 watchdog (wrapping 9998 -> 9999 -> 0) keeps it remote
                meas = await bench.until(lambda m: m.rectifier_remote[0] and m.cell_remote.all(), 10, what="remote")
                for _ in range(3):
                    meas = await bench.cycle()
                assert meas.rectifier_remote[0] and 0 <= int(await rc.get("WD")) < 20
                # someone sets 134 kA at the PLC (its own limit is 140): above the plant's 132, so
                # the bridge brings it back along its ramp, alarms once, then leaves it alone
                await rc.put("SP", 134.0)
                n_rec = len(records)
                meas = await bench.until(lambda m: m.line_setpoint_ka[0] == pytest.approx(132.0), 15, setpoint(134.0),
                                         "back within bounds")  # fmt: skip
                for _ in range(5):
                    await bench.cycle(setpoint(134.0))
                sp_recs = [r for r in records[n_rec:] if r.tag == "SP"]
                assert [round(r.written or 0, 3) for r in sp_recs] == [133.0, 132.0]
                assert sp_recs[0].ramped and "outside" in sp_recs[0].reason
                kinds = [(a.kind, a.active) for a in alarms if a.kind.startswith("out_of_bounds")]
                assert kinds == [("out_of_bounds", True), ("out_of_bounds", False)]
                assert float(await rc.get("SP")) == pytest.approx(132.0)
                # the PLC's server goes away: its values turn UNCERTAIN (last usable), then BAD
                # once older than stale_after_s; the link state says why
                await rc.stop()
                t_lost = clock.now()
                seen: list[tuple[float, str]] = []
                for _ in range(12):
                    await bench.cycle()
                    q = plant.quality["line_current_ka"]
                    seen.append((clock.now() - t_lost, q.status_names()[0]))
                    if seen[-1][1] == "BadNoCommunication":
                        break
                names = [n for _, n in seen]
                assert names[0] == "UncertainLastUsableValue" and names[-1] == "BadNoCommunication", seen
                assert seen[-1][0] <= plant.settings.stale_after_s + 2 * SCAN
                assert math.isfinite(plant.quality["line_current_ka"].t_s[0])  # the held value's own scan time
                link = {lk.device: lk for lk in plant.links()}["rectifier:Line1"]
                assert not link.up and link.reason and link.last_good_t <= t_lost
            finally:
                await plant.stop()
    finally:
        await rc.stop()
