"""The bridge wired into the daemon (issue 14): roles instead of tag names, the plant's
rectifier limits and the setpoint deadband, capability losses and the safety layer's
out-of-bounds alarms in ``/readyz``, the PLC sections' OPC UA security keys, the
controller built for the plant.

The process test runs ``potline run`` against a HIL rig on loopback with *foreign* tag
maps: the rig's registers under a PLC programmer's own names (``SP_AMPS``, ``WDOG_OUT``,
``R1POT03.BEAM_MM``, ...) with ``role = "..."``, and no ``heartbeat_in``. Everything the
daemon decides by a tag's meaning must follow the role: shadow decisions, journalled
setpoint and beam writes (the cell from the map's cell block, not from digits in a name),
the heartbeat that keeps the PLCs in remote.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from potline.daemon_config import DaemonConfigError, load_daemon_config
from tests.potline.daemon_support import (
    ROOT,
    DaemonProcess,
    aget,
    daemon_config,
    journal_events,
    plc_remote,
    rig_scenario,
    start_rig,
    until,
    wait_journal,
    write_mode_file,
)

ROOM, RECT = "potroom:Potroom1", "rectifier:Line1"


def _rename(text: str, old: str, new: str) -> str:
    """Give tag ``old`` the PLC's name ``new``, keeping its role."""
    pat = f'name = "{old}"\n'
    assert text.count(pat) == 1, old
    return text.replace(pat, f'name = "{new}"\nrole = "{old}"\n')


def foreign_maps(tmp_path: Path) -> dict[str, str]:
    """The shipped maps' registers under other names (roles given), the rectifier without heartbeat_in."""
    rect = (ROOT / "config/tagmaps/rectifier.toml").read_text()
    for old, new in (("line_current_sp", "SP_AMPS"), ("heartbeat_out", "WDOG_OUT"), ("remote", "REM_ENABLED"),
                     ("setpoint_active", "SP_ACT"), ("line_current", "I_DCCT")):  # fmt: skip
        rect = _rename(rect, old, new)
    rect, n = re.subn(r'\[\[tags\]\]\nname = "heartbeat_in"\n(?:[^\[\n][^\n]*\n)*', "", rect)
    assert n == 1
    room = (ROOT / "config/tagmaps/potroom.toml").read_text()
    room = room.replace('name = "cell{cell:03d}"', 'name = "R1POT{cell:02d}"')  # digits that are not the cell
    for old, new in (("beam_move", "BEAM_MM"), ("beam_cmd", "BEAM_REQ"), ("feed_shots", "SHOTS"),
                     ("voltage", "U_CELL"), ("heartbeat_out", "WDOG_OUT")):  # fmt: skip
        room = _rename(room, old, new)
    out = {}
    for kind, text in (("rectifier", rect), ("potroom", room)):
        p = tmp_path / "maps" / f"{kind}_foreign.toml"
        p.parent.mkdir(exist_ok=True)
        p.write_text(text)
        out[kind] = str(p)
    return out


def test_plc_security_keys_and_the_plant_aware_controller(tmp_path) -> None:
    """``[[plc]]`` OPC UA security keys become the bridge client's ``PlcSecurity`` (paths
    relative to the file); keys on a Modbus PLC, a missing password file and a half
    certificate are refused naming the key; the controller's voltage limits are the plant's."""
    pw = tmp_path / "plc.pw"
    pw.write_text("s3cret\n")
    cfg, _ = daemon_config(tmp_path, None, ports={"rectifier": 15020, "potroom": 15021})
    text = cfg.read_text()
    good = text.replace('protocol = "modbus"\nhost = "127.0.0.1"\nport = 15021',
                        'protocol = "opcua"\nhost = "127.0.0.1"\nport = 15021\nsecurity_mode = "SignAndEncrypt"\n'
                        'certificate_dir = "pki"\nusername = "bridge"\npassword_file = "plc.pw"')  # fmt: skip
    assert good != text
    cfg.write_text(good)
    loaded = load_daemon_config(cfg)
    sec = loaded.plc_security["potroom1"]
    assert (sec.mode, sec.username, sec.certificate_dir, sec.read_password()) == (
        "SignAndEncrypt", "bridge", tmp_path / "pki", "s3cret")  # fmt: skip
    assert loaded.plc_security["rectifier1"] is None
    # the plant's rectifier voltage limit reaches the controller (not the 1250 V default)
    want = [float(ln.rectifier.voltage_limit_v) for ln in loaded.plant.lines]
    got = loaded.control.amperage.voltage_limit_v
    assert (got if isinstance(got, list) else [got]) == want

    bad = good.replace('password_file = "plc.pw"', 'password_file = "nope.pw"').replace(
        'protocol = "modbus"\nhost = "127.0.0.1"\nport = 15020', 'protocol = "modbus"\nhost = "127.0.0.1"\nport = 15020\nusername = "x"'
    )  # fmt: skip
    bad = bad.replace('certificate_dir = "pki"', 'certificate = "client.der"')
    cfg.write_text(bad)
    with pytest.raises(DaemonConfigError) as err:
        load_daemon_config(cfg)
    msgs = {i.key: i.message for i in err.value.issues}
    assert "on a modbus PLC" in msgs["plc[0:rectifier1].username"]
    assert "certificate and private_key go together" in msgs["plc[1:potroom1]"]


@pytest.mark.hil
@pytest.mark.timeout(420)
async def test_a_foreign_layout_map_runs_by_roles_with_plant_bounds_in_readyz(tmp_path) -> None:
    rig = await start_rig(rig_scenario(speed=20.0, watchdog_s=20.0, storm_every_s=60.0, storm_start_s=20.0))
    dp = None
    try:
        cfg, data = daemon_config(
            tmp_path, rig, mode="shadow", tagmaps=foreign_maps(tmp_path),
            # the PLC holds 120 kA; the daemon's bounds stop at 118: brought back slowly, along the ramp
            safety={"line_current_max_ka": 118.0, "line_current_ramp_ka_per_s": 0.02},
            control={"amperage": {"target_ka": 116.0}},
        )  # fmt: skip
        mport = data["_ports"]["metrics"]
        readyz = f"http://127.0.0.1:{mport}/readyz"
        journal = tmp_path / "state" / "journal.db"
        dp = await DaemonProcess(cfg).start()
        await dp.wait_event("daemon.first_cycle")
        # shadow: the safety layer's decision on SP_AMPS (found by its role), clamped to 118
        ev = await wait_journal(journal, lambda ev: any(e.kind == "shadow_commands" and
                                                        e.data["setpoint_decisions"].get("Line1", {}).get("value")
                                                        for e in ev), "a shadow setpoint decision")  # fmt: skip
        dec = next(e for e in ev if e.kind == "shadow_commands" and e.data["setpoint_decisions"]["Line1"]["value"])
        assert dec.data["setpoint_decisions"]["Line1"]["value"] <= 120.0
        # the capability the map does not give is in /readyz
        _status, body = await aget(readyz)
        losses = json.loads(body)["capability_losses"]
        assert list(losses) == ["rectifier1"] and "heartbeat_in" in " ".join(losses["rectifier1"])

        write_mode_file(tmp_path / "state" / "mode", "control")
        await dp.wait_event("mode.changed", pred=lambda e: e["mode"] == "control")
        # WDOG_OUT is the heartbeat: the PLCs go remote
        await until(lambda: plc_remote(rig, ROOM) and plc_remote(rig, RECT), "PLCs in remote under control")

        # the PLC's 120 kA is outside the daemon's bounds: being brought back, shown in /readyz
        async def oob_shown() -> bool:
            _s, b = await aget(readyz)
            return any(a["alarm"] == "out_of_bounds" and a["plc"] == "rectifier1"
                       for a in json.loads(b).get("plc_alarms", []))  # fmt: skip

        await until(oob_shown, "out_of_bounds in /readyz")

        def back_within(ev: list) -> bool:
            """A setpoint within the bounds written, and every out-of-bounds alarm cleared since."""
            oob = [e for e in ev if e.kind in ("alarm", "alarm_cleared") and
                   e.data.get("alarm") in ("out_of_bounds", "out_of_bounds_refused")]  # fmt: skip
            within = any(e.kind == "setpoint_write" and e.value <= 118.0 + 1e-6 for e in ev)
            return within and bool(oob) and oob[-1].kind == "alarm_cleared"

        await wait_journal(journal, back_within, "the setpoint back within the bounds, the alarm cleared",
                           timeout=240.0)  # fmt: skip
        await wait_journal(journal, lambda ev: any(e.kind == "command_write" for e in ev), "a beam move written")
        assert await dp.stop() == 0
    finally:
        if dp is not None and dp.returncode is None:
            await dp.kill()
        await rig.stop()

    ev = journal_events(journal)
    sp = [e for e in ev if e.kind == "setpoint_write"]
    assert sp and {e.tag for e in sp} == {"SP_AMPS"}
    # brought back along the ramp from the PLC's 120 kA, never further out, then within the bounds
    above = [e.value for e in sp if e.value > 118.0 + 1e-6]
    assert all(v < 120.0 for v in above) and above == sorted(above, reverse=True)
    assert sp[-1].value <= 118.0 + 1e-6
    beams = [e for e in ev if e.kind == "command_write"]
    assert beams and all(e.tag == f"R1POT{e.cell:02d}.BEAM_MM" and 1 <= e.cell <= 8 for e in beams)
    raised = [e for e in ev if e.kind == "alarm" and e.data.get("alarm") == "out_of_bounds"]
    assert raised and raised[0].source == "rectifier1"
    # and the ISA alarm of it, per device and kind, raised then returned to normal
    isa = [e.kind for e in ev if e.tag == "rectifier:Line1/out_of_bounds"]
    assert isa[0] == "alarm_raised" and "alarm_returned" in isa, isa
    # the deadband: an unchanged setpoint is not journalled every scan
    assert len(sp) < len([e for e in ev if e.kind == "mode_change"]) + 200
