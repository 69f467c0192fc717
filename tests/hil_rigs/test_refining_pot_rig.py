"""A refining pot's rig PLC over real loopback sockets, and a candidate going shadow -> control on it.

The rig serves the refining twin (3 kA pot) through the refining-pot tag map
(``config/tagmaps/refining_pot.toml``) at 3600x (one plant hour per wall second). An
independent Modbus client (uModbus, raw registers decoded here with ``struct``) checks
the PLC's side: register layout, watchdog, its own ramp limit (300 A/h from ``[safety]``)
and clamps, the charge/tap handshake, refusals in local. Then the bridge side —
``RefiningPlant`` (tag map + ``SafeWriter``) under ``ControlRuntime`` with the nominal
policy behind ``RefiningController`` — runs in shadow (nothing reaches the PLC) and then in
control, every write decision journalled in a real journal file.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import struct

import pytest
from umodbus import exceptions as uexc
from umodbus.client import tcp as utcp

from hil_rigs.refining_pot import RefiningPotRig
from plc_bridge.modbus_client import ModbusTagClient
from plc_bridge.refining_plant import RefiningController, RefiningPlant, refining_tagmap
from plc_bridge.runtime import ControlRuntime
from plc_bridge.tagmap import TagMapError
from potline.journal import Journal
from refining.config import CONFIG_3KA, load_refining_config
from refining.controller import RefiningPolicy, policy_presets

pytestmark = pytest.mark.hil

SPEED = 3600.0  # plant s per wall s
HOUR = 3600.0


def _read(port: int, fn, start: int, count: int) -> list[int]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:  # a deadline
        return utcp.send_message(fn(slave_id=1, starting_address=start, quantity=count), sock)


def _write(port: int, start: int, values: list[int]):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:  # a deadline
        return utcp.send_message(utcp.write_multiple_registers(slave_id=1, starting_address=start, values=values), sock)


def _f32(words: list[int]) -> float:
    return struct.unpack(">f", struct.pack(">HH", *words))[0]


def _words(x: float) -> list[int]:
    return list(struct.unpack(">HH", struct.pack(">f", x)))


async def _input_f32(port: int, address: int) -> float:
    return _f32(await asyncio.to_thread(_read, port, utcp.read_input_registers, address, 2))


async def _input_u16(port: int, address: int) -> int:
    return (await asyncio.to_thread(_read, port, utcp.read_input_registers, address, 1))[0]


async def _remote(port: int) -> bool:
    return bool((await asyncio.to_thread(_read, port, utcp.read_discrete_inputs, 0, 1))[0])


class _Heartbeat:
    """The controller's watchdog counter, bumped by an independent client until stopped."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.n = 0
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.n = (self.n + 1) % 65536
            await asyncio.to_thread(_write, self.port, 0, [self.n])
            await asyncio.sleep(0.05)  # 180 plant s at 3600x, well inside the 1800 s watchdog

    def __enter__(self) -> _Heartbeat:
        self.task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self.task is not None:
            self.task.cancel()


async def _until(pred, timeout_wall_s: float, what: str) -> None:
    """Wait on a condition with a deadline (wall seconds)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_wall_s
    while not await pred():
        if loop.time() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout_wall_s} s")
        await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def cfg():
    return load_refining_config(CONFIG_3KA)


async def test_rig_plc_over_modbus_with_an_independent_client(cfg):
    async with RefiningPotRig(cfg, speed=SPEED, watchdog_s=1800.0) as rig:
        port = rig.endpoint()["port"]
        # the pot's measurements where the map says: temperature (input 8) near the 800 °C start
        assert abs(await _input_f32(port, 8) - 800.0) < 10.0
        assert not await _remote(port)  # powers up in local: no controller yet
        with _Heartbeat(port):
            await _until(lambda: _remote(port), 20, "remote after the heartbeat moves")
            # the PLC re-validates its map's bounds: 5000 A is beyond the register's 3600
            with pytest.raises(uexc.IllegalDataValueError):
                await asyncio.to_thread(_write, port, 4, _words(5000.0))
            await asyncio.to_thread(_write, port, 4, _words(900.0))
            t0 = rig.now()

            async def at_900() -> bool:
                return await _input_f32(port, 12) >= 899.9

            await _until(at_900, 30, "active setpoint 900 A")
            # its own ramp: [safety] 300 A/h, so 900 A takes >= 3 h
            assert rig.now() - t0 >= 3 * HOUR * 0.97
            trail = [(t, a) for t, a, _h in rig.trail if t >= t0]
            slopes = [(a1 - a0) / (t1 - t0_) * HOUR for (t0_, a0), (t1, a1) in itertools.pairwise(trail) if t1 > t0_]
            assert max(slopes) <= 300.0 * 1.001
            assert abs(rig.truth()["current_a"] - 900.0) < 1.0
            assert abs(await _input_f32(port, 4) - 900.0) < 5.0  # the twin's current, as the PLC measures it
            # charge handshake: 20 kg asked, the PLC's own limit is 15 kg ([safety] charge_max_kg)
            scrap0 = await _input_f32(port, 18)
            ack0 = await _input_u16(port, 2)
            await asyncio.to_thread(_write, port, 8, _words(20.0))
            await asyncio.to_thread(_write, port, 1, [ack0 + 1])

            async def charged() -> bool:
                return await _input_u16(port, 2) == ack0 + 1 and await _input_f32(port, 18) > scrap0

            await _until(charged, 20, "charge acknowledged")
            assert await _input_f32(port, 18) - scrap0 == pytest.approx(15.0, abs=1e-3)
        # heartbeat stopped: after the 1800 s watchdog the PLC is local and holds 900 A
        await _until(lambda: _not(_remote(port)), 20, "local after the heartbeat stops")
        tap_ack = await _input_u16(port, 3)
        await asyncio.to_thread(_write, port, 10, _words(10.0))
        await asyncio.to_thread(_write, port, 2, [tap_ack + 1])
        t1 = rig.now()
        await rig.wait_for(lambda: rig.now() > t1 + 1200.0, 20, "two PLC scans later")
        assert await _input_u16(port, 3) == tap_ack  # refused in local: never acknowledged
        assert any(what == "refused tap: local control" for _t, what in rig.log)
        assert rig.taps == [] and abs(await _input_f32(port, 12) - 900.0) < 1e-3
        assert not rig.errors


async def _not(aw) -> bool:
    return not await aw


async def test_candidate_goes_shadow_then_control_with_journal_entries(cfg, tmp_path):
    """Shadow: the candidate's decisions are journalled and nothing reaches the PLC (no
    setpoint, no heartbeat: it stays local). Control: the PLC goes remote on the bridge's
    heartbeat, the current ramps within 300 A/h, a charge is sent and acknowledged —
    each write verified and journalled with the mode it was made in."""
    tm = refining_tagmap("Pot1")
    async with RefiningPotRig(cfg, speed=SPEED, watchdog_s=1800.0) as rig:
        ep = rig.endpoint()
        io = ModbusTagClient(tm, ep["host"], ep["port"], clock=rig.clock, timeout_s=5.0, retries=2)
        await io.connect()
        journal = Journal(tmp_path / "journal.db")
        plant = RefiningPlant(io, tm, rig.clock, cfg, mode="shadow")
        pol = RefiningPolicy(policy_presets(cfg)["nominal"], 1, cfg.operation.control_period_s)
        controller = RefiningController(pol, cfg)

        def on_events(events: list[tuple[str, int, str]], now: float) -> None:
            for kind, _pot, text in events:
                if kind != "mode_change":
                    journal.append(kind=kind, t_plant_s=now, source="Pot1", mode=plant.mode, detail=text)

        def on_cycle(_info) -> None:
            for r in plant.drain_records():
                cmd = r.tag in ("charge_kg", "charge_cmd", "tap_kg", "tap_cmd")
                journal.append(
                    kind="command_write" if cmd else "setpoint_write", t_plant_s=rig.now(), source="Pot1", tag=r.tag,
                    value=r.written if r.written is not None else r.requested, mode=plant.mode, detail=r.reason,
                    data={"shadow": r.shadow, "rejected": r.rejected, "ramped": r.ramped, "verified": r.verified},
                )  # fmt: skip
            journal.commit()

        runtime = ControlRuntime(plant, controller, rig.clock, scan_s=cfg.operation.control_period_s,
                                 on_events=on_events, on_cycle=on_cycle)  # fmt: skip
        journal.record(kind="mode_change", source="Pot1", mode="shadow", detail="candidate nominal: shadow")
        await asyncio.wait_for(runtime.run(until_s=rig.now() + 3 * HOUR), timeout=90)
        # shadow: decided and journalled, never sent
        assert "current_sp" not in rig.commands_written and "heartbeat_out" not in rig.commands_written
        assert not rig.logic.remote and rig.truth()["current_a"] == 0.0
        shadow = journal.query(kinds=["setpoint_write"])
        assert shadow and all(e.mode == "shadow" and e.data["shadow"] for e in shadow)
        assert any("shadow mode: not sent" in e.detail for e in shadow)

        plant.set_mode("control")
        journal.record(kind="mode_change", source="Pot1", mode="control", detail="candidate nominal: control")
        t_control = rig.now()
        await asyncio.wait_for(runtime.run(until_s=t_control + 11 * HOUR), timeout=240)
        await io.close()
        journal.commit()
        # control: remote on the heartbeat, setpoints written and verified, the pot ramping
        assert rig.logic.remote and rig.commands_written.get("heartbeat_out", 0) > 10
        assert rig.commands_written.get("current_sp", 0) > 5
        trail = [(t, a) for t, a, _h in rig.trail if t >= t_control]
        slopes = [(a1 - a0) / (t1 - t0) * HOUR for (t0, a0), (t1, a1) in itertools.pairwise(trail) if t1 > t0]
        assert max(slopes) <= 300.0 * 1.001
        cur = rig.truth()["current_a"]
        assert 1500.0 < cur <= 3000.0  # ~11 h at 250-300 A/h from 0
        assert rig.charges and all(0 < kg <= cfg.safety.charge_max_kg for _t, kg in rig.charges)
        assert rig.logic.image.get("charge_cmd_ack") == rig.logic.image.get("charge_cmd")
        control = [e for e in journal.query(kinds=["setpoint_write", "command_write"]) if e.mode == "control"]
        assert any(e.tag == "current_sp" and e.data["verified"] for e in control)
        assert any(e.tag == "charge_cmd" and not e.data["rejected"] for e in control)
        modes = [e.mode for e in journal.query(kinds=["mode_change"])]
        assert modes == ["shadow", "control"]
        assert not rig.errors and runtime.errors == []
        journal.close()


async def test_the_same_tag_map_over_opc_ua(cfg):
    """The map's OPC UA nodes: the bridge reads the pot and, in control, the PLC goes remote on
    its heartbeat and takes the setpoints — the same RefiningPlant over another TagIO."""
    from plc_bridge.opcua_client import NodeRef, OpcUaClient
    from plc_bridge.plant import OpcUaTagIO

    tm = refining_tagmap("Pot1")
    async with RefiningPotRig(cfg, protocol="opcua", speed=SPEED, watchdog_s=1800.0) as rig:
        assert rig.edge is not None
        ep = rig.endpoint()
        refs = [NodeRef(t.name, t.browse_path, t.node_id) for t in tm if t.browse_path or t.node_id]
        client = OpcUaClient(f"opc.tcp://{ep['host']}:{ep['port']}{ep['path']}", refs, namespace=ep["namespace"],
                             timeout_s=10.0, clock=rig.clock, name="Pot1")  # fmt: skip
        assert await client.start(wait_s=30.0)
        try:
            plant = RefiningPlant(OpcUaTagIO(client, tm), tm, rig.clock, cfg, mode="control")
            meas = await plant.read()
            assert meas.ok, meas.problems
            assert abs(float(meas.readings.temperature_c[0]) - 800.0) < 10.0 and not meas.remote
            pol = RefiningPolicy(policy_presets(cfg)["nominal"], 1, cfg.operation.control_period_s)
            runtime = ControlRuntime(
                plant, RefiningController(pol, cfg), rig.clock, scan_s=cfg.operation.control_period_s
            )
            await asyncio.wait_for(runtime.run(until_s=rig.now() + 3 * HOUR), timeout=120)
            assert rig.logic.remote and rig.commands_written.get("current_sp", 0) > 0
            assert rig.truth()["current_a"] > 0.0
            assert any(r.tag == "current_sp" and r.verified for r in plant.drain_records())
            assert runtime.errors == [] and not rig.errors
        finally:
            await client.stop()


def test_tag_map_roles_are_checked_naming_file_and_role(tmp_path):
    from refining.config import CONFIG_DIR

    text = (CONFIG_DIR / "tagmaps" / "refining_pot.toml").read_text()
    bad = tmp_path / "pot.toml"
    bad.write_text(text.replace('name = "cycle_ended"', 'name = "cycle_done"'))
    with pytest.raises(TagMapError) as ei:
        refining_tagmap("Pot9", bad)
    assert f"{bad}: roles.cycle_ended: required role 'cycle_ended' of the refining pot Pot9" in str(ei.value)
