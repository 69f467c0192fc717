"""The bridge's cumulative feed/beam acknowledgements are the PLC's own counters, so a
daemon restart (a new ``BridgePlant`` against the same PLCs) reports the same beam
position for the same cell: the beam ledger written before the restart can then be
reconciled exactly (``same_ack_base``, issue 15 item 2). After a PLC restart the totals
continue past the PLC's reset and the bridge says they are no longer its counters.

Real sockets: a HIL rig on loopback on a ``VirtualClock`` moved one scan at a time.
"""

from __future__ import annotations

import pytest

from hil_rigs.faults import Fault
from plc_bridge.plant import BridgePlant
from potctl.plant import Commands
from tests.plc_bridge.test_hil_bridge import N, bench, cycle, settings, start_rig, until_remote

pytestmark = pytest.mark.hil

K = 3  # the cell moved


def plc_counters(rig) -> tuple[float, float]:
    """Cell K's feed and beam acknowledgement counters as the PLC holds them in its image."""
    img = rig.plc("potroom:Potroom1").image
    return float(img.cells["feed_ack"][K]), float(img.cells["beam_ack"][K])


async def until_acked(plant: BridgePlant, rig, pred, what: str, n: int = 30):
    for _ in range(n):
        meas = await cycle(plant, rig)
        if pred(meas):
            return meas
    raise AssertionError(f"{what}: not seen in {n} scans (beam {meas.beam_ack_mm[K]}, feed {meas.feeder_ack[K]})")


async def test_a_restarted_bridge_reports_the_same_totals_and_a_plc_restart_is_said() -> None:
    rig = await start_rig(bench("opcua")).start()
    first = BridgePlant.from_endpoints(rig.endpoints(), rig.clock, settings())
    second: BridgePlant | None = None
    try:
        await first.start()
        meas = await until_remote(first, rig)
        beam0 = float(meas.beam_ack_mm[K])
        feed0 = int(meas.feeder_ack[K])
        cmds = Commands.idle(N, 1)
        cmds.beam_move_mm[K] = -5.0
        cmds.feed_shots[K] = 2
        await cycle(first, rig, cmds)
        meas = await until_acked(first, rig, lambda m: m.beam_ack_mm[K] <= beam0 - 4.95 and m.feeder_ack[K] >= feed0 + 2,
                                 "the lowering and the two shots acknowledged")  # fmt: skip
        meas = await first.read()  # no plant time passes between this read and the look at the PLC's memory
        feed_plc, beam_plc = plc_counters(rig)
        assert feed_plc >= 2 and beam_plc <= -4.95  # the PLC counted them itself
        # the bridge reports the PLC's counters, not counts from its own start
        assert meas.beam_ack_mm[K] == pytest.approx(beam_plc, abs=0.05)
        assert int(meas.feeder_ack[K]) == int(feed_plc)
        assert first.acks_are_plc_counters
        last_beam, last_feed = meas.beam_ack_mm.copy(), meas.feeder_ack.copy()
        await first.stop()

        # a daemon restart: a new bridge reads the same PLCs (no plant time passed)
        second = BridgePlant.from_endpoints(rig.endpoints(), rig.clock, settings())
        await second.start()
        meas = await second.read()
        assert meas.cell_ok.all()
        assert meas.beam_ack_mm.tolist() == pytest.approx(last_beam.tolist(), abs=0.05)
        assert meas.feeder_ack.tolist() == last_feed.tolist()
        assert second.acks_are_plc_counters
        await until_remote(second, rig)

        # the PLC reboots (its counters back to 0): the totals do not go back but continue by
        # what it counted since, and the bridge says they are no longer the PLC's counters
        # (a beam ledger written from now on is not reconciled as the same base)
        before = (await second.read()).beam_ack_mm[K]
        await rig.inject(Fault(kind="plc_restart", target="potroom", downtime_s=3.0))
        await until_acked(second, rig, lambda m: second.stats["restarts_seen"] and m.cell_remote.all(),
                          "the PLC back in remote after its restart", n=60)  # fmt: skip
        meas = await second.read()
        assert meas.beam_ack_mm[K] == pytest.approx(before + plc_counters(rig)[1], abs=0.05)
        assert not second.acks_are_plc_counters
    finally:
        await first.stop()
        if second is not None:
            await second.stop()
        await rig.stop()


async def test_a_bridge_started_with_the_potroom_unreachable_counts_from_its_first_reading() -> None:
    """The potroom's link is down at the bridge's first scan: its cells have shown 0 since,
    so their totals count from the first good reading (no jump to the PLC's counter value,
    which a controller would take for movement), and the bridge says they are not the
    PLC's counters from that first scan on (a beam ledger is then not reconciled as the same base)."""
    from hil_rigs.rig import Rig
    from twin.clock import VirtualClock

    rig = await Rig(bench("opcua"), clock=VirtualClock(), proxies=True).start()
    plant: BridgePlant | None = None
    try:
        first = BridgePlant.from_endpoints(rig.endpoints(), rig.clock, settings())
        await first.start()
        await until_remote(first, rig)
        cmds = Commands.idle(N, 1)
        cmds.beam_move_mm[K] = -5.0
        await cycle(first, rig, cmds)
        await until_acked(first, rig, lambda m: m.beam_ack_mm[K] <= -4.95, "the lowering acknowledged")
        await first.stop()
        assert plc_counters(rig)[1] <= -4.95  # the PLC's counter is not at 0

        h = rig.plc("potroom:Potroom1")
        h.proxy.drop("refuse")
        plant = BridgePlant.from_endpoints(rig.endpoints(), rig.clock, settings())
        await plant.start()
        meas = await cycle(plant, rig)
        assert not meas.cell_ok.any() and meas.beam_ack_mm.tolist() == [0.0] * N
        assert not plant.acks_are_plc_counters  # said at the first scan, before any reading
        h.proxy.restore()
        meas = await until_acked(plant, rig, lambda m: bool(m.cell_ok.all()), "the potroom read again", n=60)
        assert meas.beam_ack_mm.tolist() == [0.0] * N  # counted from the first reading: no jump
        # and then moves with the PLC's own counter, step for step
        await until_remote(plant, rig)
        before, plc_before = (await plant.read()).beam_ack_mm[K], plc_counters(rig)[1]
        cmds = Commands.idle(N, 1)
        cmds.beam_move_mm[K] = 3.0
        await cycle(plant, rig, cmds)
        await until_acked(plant, rig, lambda m: m.beam_ack_mm[K] >= before + 2.95, "the raise acknowledged")
        meas = await plant.read()
        assert meas.beam_ack_mm[K] - before == pytest.approx(plc_counters(rig)[1] - plc_before, abs=0.05)
        assert meas.beam_ack_mm[K] - before == pytest.approx(3.0, abs=0.05)
    finally:
        if plant is not None:
            await plant.stop()
        await rig.stop()
