"""``BridgePlant`` sends the shell heat-exchanger duty and AlF3 additions through the
safety layer to a HIL rig's potroom PLC (issue 13 item 2, issue 18 item 1), and reads
back the delivered duty and the shell temperature.

What a user cares about, checked on the twin behind the PLC (not on the bridge's own
bookkeeping): the duty the twin holds and delivers, the AlF3 it received, its own AlF3
schedule stopped for the commanded cell only, the PLC's acknowledgement counter; a duty
or an AlF3 mass outside the map's bounds refused (a rejected record naming the tag and
its bounds, counted, an event) and never clamped onto the plant; nothing reaching a room
in local. A map without the new roles: the capability loss is stated and the bridge
runs as before. Real sockets on loopback; the rig on a ``VirtualClock`` the test moves.
"""

from __future__ import annotations

import numpy as np
import pytest

from hil_rigs.faults import Fault
from hil_rigs.rig import Rig
from plc_bridge.plant import POTROOM_MAP, BridgePlant
from plc_bridge.roles import check_roles
from plc_bridge.safe_write import SetpointLimits, decide
from plc_bridge.tagmap import load_tagmap
from potctl.plant import Commands
from tests.plc_bridge.test_hil_bridge import N, bench, cycle, settings, until_remote
from tests.potline.daemon_support import dump_toml
from twin.cell_layout import A_ALF3_ADD, P_HE_CMD
from twin.clock import VirtualClock
from twin.configcore import load_toml

pytestmark = pytest.mark.hil

HX_MAX_KW = 200.0
NEW_ROLES = ("hx_duty_sp", "hx_duty", "shell_temp", "alf3_kg", "alf3_cmd", "alf3_cmd_ack")


def hx_rig(potroom: str) -> Rig:
    """A rig whose cells have a 200 kW shell heat exchanger."""
    sc = bench(potroom)
    cfg = sc.plant_config()
    cfg = cfg.model_copy(update={"cell": cfg.cell.model_copy(update={"heat_exchanger_max_kw": HX_MAX_KW})})
    return Rig(sc, clock=VirtualClock(), plant_config=cfg)


def alf3_added(rig: Rig) -> np.ndarray:
    """AlF3 each twin cell received since start [kg]."""
    return rig.potline.state[:, A_ALF3_ADD].copy()


def test_refuse_outside_refuses_beyond_the_bounds_and_passes_the_bounds_themselves() -> None:
    """The pure decision: with ``refuse_outside`` a request beyond [min, max] is refused
    naming the tag and the bounds; the bounds themselves and anything between pass
    unchanged (the clamping default would have written 500 kW / 50 kg)."""
    tm = load_tagmap(POTROOM_MAP)
    hx = SetpointLimits(tm["cell001.hx_duty_sp"], -100.0, 500.0, refuse_outside=True)
    for bad in (500.5, 800.0, -100.5):
        d = decide(hx, bad, None, None, 0.0)
        assert d.rejected and d.value is None
        assert d.reason.startswith(f"cell001.hx_duty_sp: {bad:g} kW outside the bounds [-100, 500] kW")
    for ok in (-100.0, 0.0, 123.25, 500.0):
        d = decide(hx, ok, None, None, 0.0)
        assert not d.rejected and not d.clamped and d.value == pytest.approx(ok, rel=1e-6)
    kg = SetpointLimits(tm["cell001.alf3_kg"], 0.0, 50.0, refuse_outside=True)
    assert decide(kg, 50.04, None, None, 0.0).rejected  # beyond 50 kg, even if it would round to it
    assert decide(kg, 12.34, None, None, 0.0).value == pytest.approx(12.3)  # the register's 0.1 kg
    clamping = SetpointLimits(tm["cell001.alf3_kg"], 0.0, 50.0)
    assert decide(clamping, 80.0, None, None, 0.0).value == 50.0  # what refuse_outside prevents


def idle() -> Commands:
    return Commands.idle(N, 1)


async def cycles(plant: BridgePlant, rig: Rig, cmds: Commands, n: int):
    meas = None
    for _ in range(n):
        meas = await cycle(plant, rig, cmds)
    return meas


@pytest.mark.parametrize("potroom", ["opcua", "modbus"])
async def test_duty_and_alf3_reach_the_twin_bounded_and_interlocked(potroom: str) -> None:
    rig = await hx_rig(potroom).start()
    records = []
    plant = BridgePlant.from_endpoints(rig.endpoints(), rig.clock, settings(), on_record=records.append)
    try:
        await plant.start()
        assert plant.capability_losses["potroom:Potroom1"] == []
        meas = await until_remote(plant, rig)
        truth = rig.potline.measurements()
        # the new readings: NaN-free, as the twin has them
        assert meas.hx_duty_kw is not None and meas.shell_temp_c is not None
        assert np.allclose(meas.hx_duty_kw, truth["heat_exchanger_kw"], atol=1e-3)
        assert np.allclose(meas.shell_temp_c, truth["shell_temp_c"], atol=0.1)  # int16 at 0.1 °C

        # --- exchanger duty on cells 1 and 3; AlF3 twice 5 kg on cell 6 (one command outstanding)
        added0 = alf3_added(rig)
        rate0 = rig.potline.truth()["alf3_addition_kg_per_day"]
        ack0 = float(rig.plc("potroom:Potroom1").image.cells["alf3_cmd_ack"][5])
        cmds = idle()
        cmds.hx_duty_kw[[0, 2]] = [120.0, 60.0]
        cmds.alf3_kg[5] = 5.0
        await cycle(plant, rig, cmds)
        cmds.alf3_kg[5] = 5.0  # requested again before the first is acknowledged: added up, sent after the ack
        await cycle(plant, rig, cmds)
        cmds = idle()
        cmds.hx_duty_kw[[0, 2]] = [120.0, 60.0]  # held: within the deadband, not rewritten
        meas = await cycles(plant, rig, cmds, 4)
        assert rig.potline.params[[0, 2], P_HE_CMD].tolist() == pytest.approx([120e3, 60e3])
        truth = rig.potline.measurements()
        assert truth["heat_exchanger_kw"][[0, 2]] == pytest.approx([120.0, 60.0], rel=1e-6)
        assert meas.hx_duty_kw[[0, 2]] == pytest.approx([120.0, 60.0], rel=1e-5)  # read back over the wire
        got = alf3_added(rig) - added0
        assert got[5] == pytest.approx(10.0, abs=2e-3)  # both 5 kg, schedule stopped after the first
        assert np.abs(np.delete(got, 5)).max() < 0.01  # the others: only their schedule's trickle
        assert float(rig.plc("potroom:Potroom1").image.cells["alf3_cmd_ack"][5]) == ack0 + 2  # two commands
        rate = rig.potline.truth()["alf3_addition_kg_per_day"]
        assert rate[5] == 0.0 and np.delete(rate, 5) == pytest.approx(np.delete(rate0, 5))
        sp_writes = [r for r in records if r.tag in ("cell001.hx_duty_sp", "cell003.hx_duty_sp") and not r.rejected]
        assert len(sp_writes) == 2  # once each, then deadbanded
        assert plant.stats["ack_timeouts"] == 0

        # --- beyond the map's bounds: refused, named, counted; the plant keeps what it had
        refused0 = plant.stats["refused"]
        plant.drain_events()
        cmds = idle()
        cmds.hx_duty_kw[3] = 800.0  # the map allows -100..500 kW
        cmds.alf3_kg[4] = 80.0  # the map allows 0..50 kg
        await cycle(plant, rig, cmds)
        cmds.alf3_kg[4] = 0.0
        await cycles(plant, rig, cmds, 2)  # the same duty request again: not journalled again
        bad = [r for r in records if r.rejected and r.tag in ("cell004.hx_duty_sp", "cell005.alf3_kg")]
        assert sorted(r.tag for r in bad) == ["cell004.hx_duty_sp", "cell005.alf3_kg"]  # once each
        why = {r.tag: r.reason for r in bad}
        assert "outside the bounds [-100, 500] kW" in why["cell004.hx_duty_sp"] and "800" in why["cell004.hx_duty_sp"]
        assert "outside the bounds [0, 50] kg" in why["cell005.alf3_kg"]
        assert all(r.written is None for r in bad)
        assert plant.stats["refused"] - refused0 >= 2  # the refused counter fields (the AlF3 counter too)
        events = [e for e in plant.drain_events() if e[0] == "command_out_of_bounds"]
        assert sorted(c for _, c, _ in events) == [3, 4]
        assert rig.potline.params[3, P_HE_CMD] == pytest.approx(0.0)  # base duty untouched, not clamped to 500
        assert alf3_added(rig)[4] - added0[4] < 0.01  # nothing, not 50 kg
        img = rig.plc("potroom:Potroom1").image
        assert img.cells["alf3_cmd"][4] == 0  # the counter was never bumped

        # --- the room in local: nothing reaches a cell there
        await rig.inject(Fault(kind="local_switch", target="potroom"))
        for _ in range(10):
            meas = await cycle(plant, rig)
            if not meas.cell_remote.any():
                break
        assert not meas.cell_remote.any()
        n_rec, before, hx_before = len(records), alf3_added(rig), rig.potline.params[:, P_HE_CMD].copy()
        cmds = idle()
        cmds.hx_duty_kw[:] = 90.0
        cmds.alf3_kg[:] = 3.0
        await cycles(plant, rig, cmds, 3)
        assert alf3_added(rig)[5] == pytest.approx(before[5])  # its schedule stopped, no command came
        assert rig.potline.params[:, P_HE_CMD].tolist() == hx_before.tolist()
        assert not [r for r in records[n_rec:] if "hx_duty_sp" in r.tag or "alf3" in r.tag]
    finally:
        await plant.stop()
        await rig.stop()


async def test_a_map_without_the_roles_states_the_loss_and_runs_as_before(tmp_path) -> None:
    data = load_toml(POTROOM_MAP)
    data["cells"]["tags"] = [t for t in data["cells"]["tags"] if t["name"] not in NEW_ROLES]
    old = tmp_path / "potroom_old.toml"
    old.write_text(dump_toml(data))
    rep = check_roles(load_tagmap(old))
    assert rep.ok and [r for r, _ in rep.losses] == list(NEW_ROLES)
    lines = rep.loss_lines()
    assert "no hx_duty_sp: the shell heat-exchanger duty is not sent" in lines[0]
    assert "no alf3_kg: AlF3 additions are not sent" in lines[3] and "schedule keeps running" in lines[3]

    rig = await hx_rig("modbus").start()
    plant = BridgePlant.from_endpoints(rig.endpoints(), rig.clock, settings(potroom_map=str(old)))
    try:
        await plant.start()
        assert len(plant.capability_losses["potroom:Potroom1"]) == len(NEW_ROLES)
        meas = await until_remote(plant, rig)
        assert meas.hx_duty_kw is None and meas.shell_temp_c is None  # not reported
        added0, feed0 = alf3_added(rig), meas.feeder_ack.copy()
        cmds = idle()
        cmds.hx_duty_kw[:] = 100.0
        cmds.alf3_kg[2] = 5.0
        cmds.feed_shots[2] = 2  # the existing commands go through as before
        await cycle(plant, rig, cmds)
        meas = await cycles(plant, rig, idle(), 3)
        assert meas.feeder_ack[2] - feed0[2] == 2
        assert not rig.potline.params[:, P_HE_CMD].any()  # no duty sent
        assert alf3_added(rig)[2] - added0[2] < 0.01  # no AlF3 sent
        assert rig.potline.truth()["alf3_addition_kg_per_day"][2] > 0  # the PLC's schedule runs on
        assert meas.cell_ok.all() and not np.isnan(meas.cell_voltage_v).any()
    finally:
        await plant.stop()
        await rig.stop()


async def test_nothing_reaches_a_cut_out_cell_nor_a_room_whose_link_is_down() -> None:
    rig = await hx_rig("modbus").start()
    records = []
    plant = BridgePlant.from_endpoints(rig.endpoints(), rig.clock, settings(), on_record=records.append)
    try:
        await plant.start()
        await until_remote(plant, rig)
        # the crew shorts cell 2 out of the series: the PLC reports it, the bridge sends it nothing
        rig.potline.cut_out(1)
        meas = await cycles(plant, rig, idle(), 2)
        assert meas.cut_out[1]
        added0 = alf3_added(rig)
        cmds = idle()
        cmds.hx_duty_kw[1] = 150.0
        cmds.alf3_kg[1] = 6.0
        await cycles(plant, rig, cmds, 1)
        await cycles(plant, rig, idle(), 2)
        assert rig.potline.params[1, P_HE_CMD] == pytest.approx(0.0)
        assert alf3_added(rig)[1] - added0[1] < 0.01
        refused = [r for r in records if r.tag == "cell002.alf3_kg"]
        assert refused and all(r.rejected and "in_circuit" in r.reason for r in refused)
        assert not [r for r in records if r.tag == "cell002.hx_duty_sp"]  # a held duty: not even tried
        img = rig.plc("potroom:Potroom1").image
        assert img.cells["alf3_cmd"][1] == 0 and img.cells["hx_duty_sp"][1] == 0.0  # nothing on the wire

        # the potroom's link drops: requests meanwhile are neither sent nor replayed afterwards
        h = rig.plc("potroom:Potroom1")
        h.proxy.drop("refuse")
        cmds = idle()
        cmds.hx_duty_kw[4] = 80.0
        cmds.alf3_kg[4] = 4.0
        meas = await cycles(plant, rig, cmds, 2)
        assert not meas.cell_remote.any()
        h.proxy.restore()
        for _ in range(40):
            meas = await cycle(plant, rig)
            if meas.cell_remote.all():
                break
        assert meas.cell_remote.all()
        await cycles(plant, rig, idle(), 3)
        assert rig.potline.params[4, P_HE_CMD] == pytest.approx(0.0)
        assert alf3_added(rig)[4] - added0[4] < 0.01
        assert img.cells["alf3_cmd"][4] == 0
        # and once the link is back, a new request goes through
        cmds = idle()
        cmds.alf3_kg[4] = 4.0
        await cycle(plant, rig, cmds)
        await cycles(plant, rig, idle(), 2)
        assert alf3_added(rig)[4] - added0[4] == pytest.approx(4.0, abs=0.01)
    finally:
        await plant.stop()
        await rig.stop()
