"""Comms faults over real loopback sockets: the client reports them as tag
quality, never raises, and recovers by itself at its first reconnect attempt once the PLC
is back (attempts at most ``reconnect_max_s`` apart, so within a second or two here; how
long that takes in wall time is a benchmark's business, not a test's)."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from pathlib import Path

import numpy as np
import pytest

from plc_bridge.codec import Table
from plc_bridge.modbus_client import ModbusTagClient
from plc_bridge.modbus_server import ExceptionCode, ModbusTagServer, RequestInfo
from plc_bridge.ports import free_port
from plc_bridge.quality import Quality
from plc_bridge.tagmap import load_tagmap, parse_tagmap
from tests.waits import wait_until

ROOT = Path(__file__).resolve().parents[2]
POTROOM = load_tagmap(ROOT / "config" / "tagmaps" / "potroom.toml")
RECTIFIER = load_tagmap(ROOT / "config" / "tagmaps" / "rectifier.toml")
#: a fresh simulated PLC holds zeros; tap position and ramp rate have a minimum above 0
RECT_INIT = {"tap_position": 1, "ramp_rate_sp": 1.0}
#: deadline for things that take a second on a quiet machine [wall s]
DEADLINE_S = 30.0


def f32(x: float) -> list[int]:
    b = struct.pack(">f", x)
    return [int.from_bytes(b[:2], "big"), int.from_bytes(b[2:], "big")]


async def scan_until_good(cli: ModbusTagClient) -> None:
    """Scan (as a bridge does, every 50 ms) until one scan is all GOOD."""

    async def all_good() -> bool:
        return (await cli.scan()).all_good

    await wait_until(all_good, DEADLINE_S, f"an all-GOOD scan of {cli.name}", poll_s=0.05)


async def scan_until_failed_connects(cli: ModbusTagClient, n: int) -> None:
    """Scan until the client has failed to connect ``n`` times (its backoff doubles each time)."""

    async def failed() -> bool:
        await cli.scan()
        return cli.stats.failed_connects >= n

    await wait_until(failed, DEADLINE_S, f"{n} failed connects of {cli.name}", poll_s=0.05)


async def test_server_killed_mid_run_then_back():
    srv = await ModbusTagServer(POTROOM).start()
    srv.set_array("voltage", np.full(132, 4.2))
    cli = ModbusTagClient(POTROOM, port=srv.port, timeout_s=0.3, reconnect_max_s=1.0)
    try:
        assert (await cli.scan()).all_good
        await srv.stop()
        reasons = set()
        for _ in range(5):  # a few scans during the outage: no exception, all BAD
            scan = await cli.scan()
            assert not (scan.quality == Quality.GOOD).any()
            reasons.add(scan.sample("cell001.voltage").reason)
        assert reasons <= {"timeout", "not connected", "connection lost"}
        w = await cli.write("cell001.feed_shots", 2)
        assert not w.ok and w.comms_failure
        # the reconnect backoff grows to its maximum (0.1 s doubled 4x, capped at 1 s) before the PLC returns
        await scan_until_failed_connects(cli, 5)
        failed = cli.stats.failed_connects
        await srv.start()  # same port, registers kept
        await scan_until_good(cli)
        assert cli.stats.failed_connects == failed  # back at the first attempt once the PLC listens
        scan = await cli.scan()
        assert scan.sample("cell001.voltage").value == pytest.approx(4.2)
        assert cli.stats.connects >= 2
    finally:
        await cli.close()
        await srv.stop()


async def test_client_started_before_the_plc():
    port = free_port()
    # a long request timeout: a refused connection must not wait for it
    cli = ModbusTagClient(RECTIFIER, port=port, timeout_s=20.0, reconnect_max_s=1.0)
    srv = ModbusTagServer(RECTIFIER, port=port, initial=RECT_INIT)
    try:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        scan = await cli.scan()
        assert loop.time() - t0 < 10.0  # refused connection is reported at once, not after the timeout
        assert scan.sample("line_current").reason == "not connected"
        assert scan.sample("line_current").value is None
        await scan_until_failed_connects(cli, 3)  # the client keeps trying meanwhile
        failed = cli.stats.failed_connects
        await srv.start()
        srv.set("line_current", 118.0)
        await scan_until_good(cli)
        assert cli.stats.failed_connects == failed
    finally:
        await cli.close()
        await srv.stop()


async def test_responses_delayed_past_the_timeout():
    delay = {"s": 0.0}
    answered = asyncio.Event()

    async def slow(req: RequestInfo):
        if delay["s"]:
            # a PLC that answers far too late: the client has given up by then
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(answered.wait(), delay["s"])
        return None

    srv = await ModbusTagServer(RECTIFIER, on_request=slow, initial=RECT_INIT).start()
    srv.set("line_current", 120.0)
    cli = ModbusTagClient(RECTIFIER, port=srv.port, timeout_s=0.5, retries=1, backoff_s=0.02)
    try:
        assert (await cli.scan()).all_good
        assert len(cli.plan) > 1  # several requests per scan
        delay["s"] = 10.0
        requests, timeouts = cli.stats.requests, cli.stats.timeouts
        scan = await cli.scan()
        s = scan.sample("line_current")
        assert s.quality is Quality.BAD and s.reason == "timeout" and s.value is None
        assert all(not scan.sample(n).good for n in ("line_voltage", "remote", "line_current_sp"))
        # bounded: (1 + retries) timeouts, the rest of the scan is not waited for
        assert cli.stats.requests - requests == 1 + cli.retries
        assert cli.stats.timeouts - timeouts == 1 + cli.retries
        w = await cli.write("line_current_sp", 100.0)
        assert not w.ok and w.comms_failure and w.reason == "timeout"
        delay["s"] = 0.0
        answered.set()  # the late answers go out to connections the client has dropped
        await scan_until_good(cli)
        assert (await cli.scan()).sample("line_current").value == 120.0
    finally:
        await cli.close()
        await srv.stop()


async def test_exception_responses_become_tag_quality():
    busy = {"on": True}

    def refuse_inputs(req: RequestInfo):
        if busy["on"] and req.table is Table.INPUT:
            return ExceptionCode.DEVICE_BUSY
        return None

    async with ModbusTagServer(RECTIFIER, on_request=refuse_inputs, initial=RECT_INIT) as srv:
        srv.set("remote", True)
        async with ModbusTagClient(RECTIFIER, port=srv.port) as cli:
            scan = await cli.scan()
            s = scan.sample("line_current")
            assert s.quality is Quality.BAD and s.reason == "modbus exception 6 device busy"
            assert scan.sample("tripped").reason == "modbus exception 6 device busy"
            # other tables still read fine, and the link stays up (no reconnect for an exception)
            assert scan.sample("remote").good and scan.sample("remote").value is True
            assert scan.sample("line_current_sp").good
            assert cli.connected and cli.stats.connects == 1
            busy["on"] = False
            assert (await cli.scan()).all_good


async def test_unknown_device_id_is_bad_quality_not_a_crash():
    m = parse_tagmap(
        {
            "device": {"name": "gw", "device_id": 1},
            "tags": [
                {"name": "a", "type": "uint16", "modbus": {"table": "holding", "address": 0}},
                {"name": "b", "type": "uint16", "modbus": {"table": "holding", "address": 0, "device_id": 7}},
            ],
        }
    )
    served = parse_tagmap({"device": {"name": "gw", "device_id": 1},
                           "tags": [{"name": "a", "type": "uint16", "modbus": {"address": 0}}]})  # fmt: skip
    async with ModbusTagServer(served) as srv:
        srv.set("a", 42)
        async with ModbusTagClient(m, port=srv.port) as cli:
            scan = await cli.scan()
            assert scan.sample("a").value == 42 and scan.sample("a").good
            assert scan.sample("b").quality is Quality.BAD and scan.sample("b").reason.startswith("modbus exception")


async def test_nan_and_garbage_registers():
    async with ModbusTagServer(POTROOM) as srv:
        srv.set_array("voltage", np.full(132, 4.3))
        srv.set_registers("input", POTROOM["cell005.voltage"].address, [0x7FC0, 0x0000])  # quiet NaN
        srv.set_registers("input", POTROOM["cell006.voltage"].address, [0x7F80, 0x0000])  # +inf
        srv.set_registers("input", POTROOM["cell007.voltage"].address, f32(1e30))  # finite garbage
        srv.set("cell008.voltage", float("nan"))  # model side may inject NaN too
        async with ModbusTagClient(POTROOM, port=srv.port) as cli:
            scan = await cli.scan()
            _v, good = scan.array("voltage")
            assert not good[[4, 5, 6, 7]].any() and good[[0, 1, 2, 3, 8]].all() and good[8:].all()
            assert scan.sample("cell005.voltage").reason == "non-finite"
            assert scan.sample("cell006.voltage").quality is Quality.BAD
            s7 = scan.sample("cell007.voltage")
            # 1e30 V is beyond the map's range (80 V) and its plausibility range (150 V): BAD
            assert s7.quality is Quality.BAD and "implausible" in s7.reason and "[-10, 150]" in s7.reason
            assert scan.sample("cell008.voltage").reason == "non-finite"
            samples = await cli.read_all()
            assert samples["cell005.voltage"].value is None
            assert sum(not s.good for s in samples.values()) == 4
            # the scalar read path agrees
            one = await cli.read(["cell005.voltage", "cell009.voltage"])
            assert one["cell005.voltage"].reason == "non-finite" and one["cell009.voltage"].value == pytest.approx(4.3)
            # beyond the engineering range but plausible (an AE on a long line): UNCERTAIN, both paths
            srv.set("cell010.voltage", 95.0)
            s10 = (await cli.scan()).sample("cell010.voltage")
            assert s10.quality is Quality.UNCERTAIN and "max 80" in s10.reason and s10.value == 95.0
            assert (await cli.read(["cell010.voltage"]))["cell010.voltage"].reason == s10.reason
            assert one["cell005.voltage"].quality is Quality.BAD
            implausible = (await cli.read(["cell007.voltage"]))["cell007.voltage"]
            assert implausible.reason == s7.reason  # the bulk and the scalar decoder say the same


async def test_device_refusing_gap_reads_gets_split_requests():
    async with ModbusTagServer(POTROOM, fill_gaps=False) as srv:
        srv.set_array("feed_shots", np.arange(132) % 5)
        async with ModbusTagClient(POTROOM, port=srv.port, max_gap=8) as cli:
            scan = await cli.scan()
            assert scan.all_good
            shots, _ = scan.array("feed_shots")
            np.testing.assert_array_equal(shots, np.arange(132) % 5)
            assert cli.stats.split_blocks > 0
            n_exc = cli.stats.exceptions
            assert (await cli.scan()).all_good
            assert cli.stats.exceptions == n_exc  # the split plan is kept
