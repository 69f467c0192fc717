"""``potline run`` drives a scrap-refining pot: observe -> shadow -> control on its rig PLC.

Everything real: the refining pot's rig PLC (``hil_rigs.refining_pot``: the refining twin
behind a simulated PLC with its own watchdog, ramp and clamps) serves Modbus or OPC UA
(the same tag map) on loopback in this process; the daemon is a separate ``python -m potline.cli run`` process with a
``[refining]`` config, sharing the rig's clock epoch; modes are switched the way an
operator does it (the mode file); the journal is the daemon's SQLite file, read back here.

The pot config is the shipped 3 kA pot with a charge every 2 h and a tap every 3 h (so
both happen within a few plant hours of control; in shadow the pot carries no current, so
the candidate's Faraday-sized charges and taps are 0 kg there); the rig PLC runs the same
config.
"""

from __future__ import annotations

import itertools
import tomllib
from pathlib import Path

import pytest

from hil_rigs.process import dump_toml
from hil_rigs.refining_pot import RefiningPotRig
from plc_bridge.ports import free_port
from refining.config import CONFIG_3KA, load_refining_config
from tests.potline.daemon_support import DaemonProcess, journal_events, read_metric, until, wait_journal

pytestmark = pytest.mark.hil

SPEED = 600.0  # plant s per wall s: one 600 s control period per wall second
HOUR = 3600.0
#: the rig PLC's watchdog [plant s]: 6 wall s, so a daemon slowed by a loaded machine keeps it remote
WATCHDOG_S = 3600.0
DEADLINE_S = 120.0


def _pot_config(tmp_path: Path) -> Path:
    """The shipped 3 kA pot config with frequent charges and taps (a user's copy)."""
    data = tomllib.loads(Path(CONFIG_3KA).read_text(encoding="utf-8"))
    data["operation"]["charge_every_h"] = 2.0
    data["operation"]["tap_every_h"] = 3.0
    p = tmp_path / "pot.toml"
    p.write_text(dump_toml(data), encoding="utf-8")
    return p


def _daemon_config(tmp_path: Path, rig: RefiningPotRig, pot_cfg: Path) -> tuple[Path, int]:
    ep = rig.endpoint()
    metrics = free_port()
    data = {
        "daemon": {"mode": "observe", "state_dir": str(tmp_path / "state"), "hil": True, "clock_speed": SPEED,
                   "clock_epoch_monotonic": float(ep["epoch_monotonic"]), "mode_file_poll_s": 0.2,
                   "handback_timeout_s": 30.0},
        "plc": [{"name": "pot1", "kind": "refining_pot", "pot": "Pot1", "protocol": rig.protocol, "host": ep["host"],
                 "port": int(ep["port"]), **({"path": ep["path"], "namespace": ep["namespace"]}
                                             if rig.protocol == "opcua" else {})}],
        "refining": {"config": str(pot_cfg), "candidate": "nominal", "heartbeat_timeout_s": WATCHDOG_S},
        "metrics": {"port": metrics},
        "logging": {"format": "json", "level": "INFO"},
    }  # fmt: skip
    path = tmp_path / "daemon.toml"
    path.write_text(dump_toml(data), encoding="utf-8")
    return path, metrics


def _mode(state: Path, word: str) -> None:
    (state / "mode").write_text(word + "\n", encoding="utf-8")


def _modes(journal: Path) -> list[str]:
    """The modes entered, from the journal's ``mode_change`` entries ([] before the file exists)."""
    from potline.journal import JournalError

    try:
        return [e.mode for e in journal_events(journal, kinds=["mode_change"])]
    except JournalError:
        return []


@pytest.mark.parametrize("protocol", ["modbus", "opcua"])
async def test_refining_pot_under_potline_run_observe_shadow_control(tmp_path: Path, protocol: str) -> None:
    pot_cfg = _pot_config(tmp_path)
    cfg = load_refining_config(pot_cfg)
    sa = cfg.safety
    journal = tmp_path / "state" / "journal.db"
    async with RefiningPotRig(cfg, protocol=protocol, speed=SPEED, watchdog_s=WATCHDOG_S, seed=7) as rig:
        path, metrics = _daemon_config(tmp_path, rig, pot_cfg)
        daemon = await DaemonProcess(path).start()
        try:
            await daemon.wait_event("daemon.first_cycle", timeout=DEADLINE_S)

            # ---- observe: the daemon reads the pot, the PLC receives nothing
            daemon_name = "refining-Pot1"

            async def cycles() -> float:
                return await read_metric(metrics, "potline_cycles_total", plant=daemon_name) or 0.0

            c0 = await cycles()
            await until(lambda: _ge(cycles(), c0 + 3), "3 observe cycles", DEADLINE_S)
            assert rig.received == [] and not rig.logic.remote
            temp = await read_metric(metrics, "potline_refining_temperature_celsius", plant=daemon_name, pot="Pot1")
            assert temp is not None and abs(temp - rig.truth()["temperature_c"]) < 15.0  # the pot as the PLC shows it
            assert journal_events(journal, kinds=["shadow_commands", "setpoint_write", "command_write"]) == []

            # ---- shadow: the candidate decides, the journal shows what it would have sent, nothing is sent
            _mode(tmp_path / "state", "shadow")
            got = await wait_journal(journal, lambda ev: len([e for e in ev if e.kind == "shadow_commands"]) >= 4,
                                     "4 shadow cycles", DEADLINE_S)  # fmt: skip
            shadow = [e for e in got if e.kind == "shadow_commands"]
            assert all(e.mode == "shadow" for e in shadow)
            current = [e.data["values"]["current_sp"] for e in shadow if "current_sp" in e.data["values"]]
            heater = [e.data["values"]["heater_sp"] for e in shadow if "heater_sp" in e.data["values"]]
            assert current and all(sa.current_min_a <= a <= sa.current_max_a for a in current)
            # (a heater setpoint equal to what the PLC holds is not a write: not in the record)
            assert all(sa.heater_setpoint_min_c <= h <= sa.heater_setpoint_max_c for h in heater)
            # what control would send ramps as the pot's [safety] allows (300 A/h), from the 0 A the PLC holds
            sp_t = [(d["t"], d["written"]) for e in shadow for d in e.data["decisions"] if d["tag"] == "current_sp"]
            assert sp_t[-1][1] > sp_t[0][1]
            for (t0, a0), (t1, a1) in itertools.pairwise(sp_t):
                assert a1 - a0 <= sa.ramp_a_per_h * (t1 - t0) / HOUR + 0.5, (t0, a0, t1, a1)
            assert all(d["shadow"] for e in shadow for d in e.data["decisions"])
            assert rig.received == [] and not rig.logic.remote and rig.truth()["current_a"] == 0.0

            # ---- control: the PLC goes remote on the daemon's heartbeat and receives bounded commands
            _mode(tmp_path / "state", "control")
            await until(lambda: "control" in _modes(journal), "mode_change to control journalled", DEADLINE_S)
            t_control = rig.now()
            # the current ramps (>= 500 A takes 2 h at the candidate's 250 A/h), a charge and a tap come due
            await until(lambda: rig.truth()["current_a"] >= 500.0 and rig.charges and _taps(rig),
                        "current >= 500 A, a charge and a tap carried out by the PLC", 3 * DEADLINE_S)  # fmt: skip
            assert rig.logic.remote
            sent = [(t, n, v) for t, n, v in rig.received if t >= t_control]
            sp = [v for _t, n, v in sent if n == "current_sp"]
            assert sp and all(sa.current_min_a <= v <= sa.current_max_a for v in sp)
            # the setpoints the PLC received climb no faster than 300 A/h overall (one 600 s step of slack:
            # the PLC's receive times jitter with the load, the daemon's ramp is per cycle)
            pts = [(t, v) for t, n, v in sent if n == "current_sp"]
            (t_a, v_a), (t_b, v_b) = pts[0], pts[-1]
            assert v_b - v_a <= sa.ramp_a_per_h * (t_b - t_a + cfg.operation.control_period_s) / HOUR
            assert all(
                sa.heater_setpoint_min_c <= v <= sa.heater_setpoint_max_c for _t, n, v in sent if n == "heater_sp"
            )
            assert all(0.0 < v <= sa.charge_max_kg for _t, n, v in sent if n == "charge_kg")
            taps = [v for _t, n, v in sent if n == "tap_kg"]
            assert taps and all(0.0 < v <= sa.tap_max_kg for v in taps)
            # what the rectifier really did: never faster than the pot's 300 A/h ramp limit
            trail = [(t, a) for t, a, _h in rig.trail if t >= t_control]
            slopes = [(a1 - a0) / (t1 - t0) * HOUR for (t0, a0), (t1, a1) in itertools.pairwise(trail) if t1 > t0]
            assert max(slopes) <= sa.ramp_a_per_h * 1.001
            img = rig.logic.image
            assert img.get("charge_cmd_ack") == img.get("charge_cmd") and img.get("tap_cmd_ack") == img.get("tap_cmd")

            # the journal shows each safe write, made in control and read back
            await wait_journal(journal, lambda ev: any(e.kind == "command_write" and e.tag == "tap_cmd" for e in ev),
                               "the tap command journalled", DEADLINE_S)  # fmt: skip
            writes = journal_events(journal, kinds=["setpoint_write", "command_write"])
            assert writes and all(e.mode == "control" for e in writes)
            assert any(e.tag == "current_sp" and e.data["verified"] for e in writes)
            assert {"charge_kg", "charge_cmd", "tap_kg", "tap_cmd"} <= {e.tag for e in writes}
        finally:
            rc = await daemon.stop()
        assert rc == 0, daemon.tail()
        # graceful stop: the heartbeat stops, the PLC hands itself back to local, the daemon waits for it
        assert not rig.logic.remote
        changes = journal_events(journal, kinds=["mode_change"])
        assert [(e.mode, e.source) for e in changes] == [("shadow", "mode_file"), ("control", "mode_file")]
        (start,) = journal_events(journal, kinds=["daemon_start"])
        assert start.mode == "observe" and start.data["candidate"] == "nominal"
        (handback,) = journal_events(journal, kinds=["handback"])
        assert "every refining pot reports local control" in handback.detail and handback.data["ok"]
        assert not rig.errors


def _taps(rig: RefiningPotRig) -> bool:
    """The PLC carried out a tap command (acknowledged; the metal weighed may be 0 kg at the heel)."""
    return any(what.startswith("tap ") and what.endswith("requested") for _t, what in rig.log)


async def _ge(aw, value: float) -> bool:
    return (await aw) >= value


async def test_control_waits_for_the_pot_plc_link(tmp_path: Path) -> None:
    """No PLC at the configured port: the daemon runs (observe), journals the link down and
    refuses control, naming the link; once the pot's PLC comes up on that port the link is
    restored and control is accepted: the PLC goes remote on the daemon's heartbeat."""
    pot_cfg = _pot_config(tmp_path)
    cfg = load_refining_config(pot_cfg)
    journal = tmp_path / "state" / "journal.db"
    port = free_port()
    data = {
        "daemon": {"mode": "observe", "state_dir": str(tmp_path / "state"), "hil": True, "clock_speed": SPEED,
                   "mode_file_poll_s": 0.2, "handback_timeout_s": 30.0},
        "plc": [{"name": "pot1", "kind": "refining_pot", "pot": "Pot1", "host": "127.0.0.1", "port": port}],
        "refining": {"config": str(pot_cfg), "heartbeat_timeout_s": WATCHDOG_S},
        "metrics": {"port": free_port()},
        "logging": {"format": "json", "level": "INFO"},
    }  # fmt: skip
    path = tmp_path / "daemon.toml"
    path.write_text(dump_toml(data), encoding="utf-8")
    daemon = await DaemonProcess(path).start()
    try:
        await daemon.wait_event("daemon.first_cycle", timeout=DEADLINE_S)
        await wait_journal(journal, lambda ev: any(e.kind == "comms_lost" and e.source == "pot1" for e in ev),
                           "the pot's link down journalled", DEADLINE_S)  # fmt: skip
        _mode(tmp_path / "state", "control")
        got = await wait_journal(journal, lambda ev: any(e.kind == "mode_refused" for e in ev),
                                 "control refused", DEADLINE_S)  # fmt: skip
        (refused,) = [e for e in got if e.kind == "mode_refused"]
        assert "PLC link(s) down: pot1" in refused.detail and refused.source == "mode_file"
        assert "control" not in _modes(journal)
        async with RefiningPotRig(cfg, port=port, speed=SPEED, watchdog_s=WATCHDOG_S, seed=7) as rig:
            await wait_journal(journal, lambda ev: any(e.kind == "comms_restored" for e in ev),
                               "the pot's link restored", DEADLINE_S)  # fmt: skip
            assert rig.received == []  # still observe: nothing sent
            _mode(tmp_path / "state", "control")
            await until(lambda: "control" in _modes(journal), "control accepted once the link is up", DEADLINE_S)
            await rig.wait_for(lambda: rig.logic.remote, DEADLINE_S, "the PLC remote on the daemon's heartbeat")
            rc = await daemon.stop()
            assert rc == 0, daemon.tail()
            assert not rig.logic.remote  # handed back to local at the stop
    finally:
        await daemon.stop()


async def test_after_kill_9_in_control_the_pot_waits_for_an_operator(tmp_path: Path) -> None:
    """``kill -9`` while the pot is in control: the PLC's watchdog hands it to local; the
    restarted daemon (control configured) journals the unclean stop, starts in observe and
    sends nothing, until an operator writes ``control`` (journalled as re-armed)."""
    pot_cfg = _pot_config(tmp_path)
    cfg = load_refining_config(pot_cfg)
    journal = tmp_path / "state" / "journal.db"
    async with RefiningPotRig(cfg, speed=SPEED, watchdog_s=WATCHDOG_S, seed=7) as rig:
        path, _metrics = _daemon_config(tmp_path, rig, pot_cfg)
        text = path.read_text(encoding="utf-8").replace('mode = "observe"', 'mode = "control"')
        path.write_text(text, encoding="utf-8")
        first = await DaemonProcess(path).start()
        try:
            # the configured control is entered at the first cycle with the interlock clear
            await until(lambda: "control" in _modes(journal), "control entered at start", DEADLINE_S)
            await rig.wait_for(lambda: rig.logic.remote, DEADLINE_S, "the PLC remote on the daemon's heartbeat")
        finally:
            await first.kill()
        await rig.wait_for(lambda: not rig.logic.remote, DEADLINE_S, "the PLC's watchdog hands the pot to local")
        n_sent = len(rig.received)
        second = await DaemonProcess(path).start()
        try:
            await second.wait_event("daemon.first_cycle", timeout=DEADLINE_S)
            got = await wait_journal(journal, lambda ev: sum(e.kind == "daemon_start" for e in ev) == 2,
                                     "the second start journalled", DEADLINE_S)  # fmt: skip
            assert [e.kind for e in got if e.kind == "unclean_shutdown"] == ["unclean_shutdown"]
            assert [e for e in got if e.kind == "daemon_start"][-1].mode == "observe"  # control not resumed
            t0 = rig.now()
            await rig.wait_for(lambda: rig.now() > t0 + 5 * cfg.operation.control_period_s, DEADLINE_S, "5 cycles")
            assert len(rig.received) == n_sent and not rig.logic.remote  # disarmed: nothing sent
            _mode(tmp_path / "state", "control")
            await rig.wait_for(lambda: rig.logic.remote, DEADLINE_S, "the PLC remote again once re-armed")
            rearm = journal_events(journal, kinds=["mode_change"])[-1]
            assert rearm.mode == "control" and rearm.source == "mode_file" and rearm.data.get("rearmed")
        finally:
            assert await second.stop() == 0, second.tail()
