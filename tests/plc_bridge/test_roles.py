"""Roles, not names: the registry in plc_bridge/roles.py is what the bridge, ``potline tags
check``, ``potline check-config`` and the docs read.

A map that holds a PLC's real registers under other names works when its tags say which
role they play; a map without a required role is refused at once (the loader, ``tags
check``, ``check-config``), naming the role and the device -- not 5-second retries at
``potline run``; a map without an optional role runs with the capability loss stated.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from plc_bridge.plant import potroom_tagmap, rectifier_tagmap
from plc_bridge.roles import DEVICE_KINDS, check_roles, markdown_table
from plc_bridge.tagmap import TagMapError, load_tagmap
from tests.potline.daemon_support import EXAMPLE, dump_toml

ROOT = Path(__file__).resolve().parents[2]
RECTIFIER = ROOT / "config" / "tagmaps" / "rectifier.toml"
POTROOM = ROOT / "config" / "tagmaps" / "potroom.toml"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "potline.cli", *args], capture_output=True, text=True, timeout=120,
                          cwd=str(ROOT))  # fmt: skip


def rectifier_without(tmp_path: Path, *names: str, edit: dict[str, dict] | None = None) -> Path:
    """The shipped rectifier map with some tags left out (or changed), as a user's copy."""
    data = tomllib.loads(RECTIFIER.read_text())
    data["tags"] = [t for t in data["tags"] if t["name"] not in names]
    for t in data["tags"]:
        t.update((edit or {}).get(t["name"], {}))
    p = tmp_path / "rect.toml"
    p.write_text(dump_toml(data))
    return p


def test_shipped_maps_give_every_role_of_their_kind() -> None:
    for path, kind in ((RECTIFIER, "rectifier"), (POTROOM, "potroom")):
        rep = check_roles(load_tagmap(path))
        assert rep.kind is DEVICE_KINDS[kind] and rep.ok and not rep.losses
        assert set(rep.bound) == set(DEVICE_KINDS[kind].role_names)


def test_a_missing_required_role_is_refused_naming_the_role_and_the_device(tmp_path) -> None:
    p = rectifier_without(tmp_path, "setpoint_active")
    with pytest.raises(TagMapError) as err:
        rectifier_tagmap("Line1", p)
    (issue,) = err.value.issues
    assert issue.file == str(p) and issue.key == "roles.setpoint_active"
    assert "rectifier Line1" in issue.message and "'setpoint_active'" in issue.message
    # a potroom map without the feed acknowledgement: the per-cell role is named too
    data = tomllib.loads(POTROOM.read_text())
    data["cells"]["tags"] = [t for t in data["cells"]["tags"] if t["name"] != "feed_cmd_ack"]
    q = tmp_path / "room.toml"
    q.write_text(dump_toml(data))
    with pytest.raises(TagMapError, match=r"roles\.feed_cmd_ack: required role 'feed_cmd_ack' of the potroom Room7"):
        potroom_tagmap("Room7", 4, q)


def test_a_missing_optional_role_is_a_stated_capability_loss(tmp_path) -> None:
    tm = rectifier_tagmap("Line1", rectifier_without(tmp_path, "heartbeat_in", "tap_position"))
    rep = check_roles(tm)
    assert rep.ok and [r for r, _ in rep.losses] == ["heartbeat_in", "tap_position"]
    assert "restart detection off" in rep.loss_lines()[0]


def test_roles_are_found_under_the_plc_s_own_names(tmp_path) -> None:
    renames = {"line_current": "I_DCCT", "remote": "LOCAL_MODE", "heartbeat_out": "WD_CNT"}
    data = tomllib.loads(RECTIFIER.read_text())
    for t in data["tags"]:
        if t["name"] in renames:
            t["role"], t["name"] = t["name"], renames[t["name"]]
    data["tags"][[t["name"] for t in data["tags"]].index("LOCAL_MODE")]["invert"] = True
    p = tmp_path / "acme.toml"
    p.write_text(dump_toml(data))
    tm = rectifier_tagmap("Line1", p)
    assert tm.role_tag("line_current").name == "I_DCCT" and tm.role_tag("remote").invert
    assert check_roles(tm).bound["heartbeat_out"] == "WD_CNT"


def test_wrong_kind_or_access_or_an_unknown_role_is_refused(tmp_path) -> None:
    p = rectifier_without(tmp_path, edit={"remote": {"role": "remote"}, "line_current": {"role": "line_curent"},
                                          "line_current_fine": {"role": "line_current"}})  # fmt: skip
    with pytest.raises(TagMapError) as err:
        rectifier_tagmap("Line1", p)
    msgs = "\n".join(i.message for i in err.value.issues)
    assert "unknown role 'line_curent'" in msgs  # a typo is not silently ignored
    data = tomllib.loads(RECTIFIER.read_text())
    for t in data["tags"]:
        if t["name"] == "tripped":
            t.update(type="float32", modbus={"table": "input", "address": 20})
        if t["name"] == "heartbeat_out":
            t.update(access="read", modbus={"table": "input", "address": 22})
            t.pop("min"), t.pop("max")
    q = tmp_path / "kinds.toml"
    q.write_text(dump_toml(data))
    with pytest.raises(TagMapError) as err:
        rectifier_tagmap("Line1", q)
    issues = {i.key: i.message for i in err.value.issues}
    assert "expected a bool" in issues["roles.tripped"]
    assert "read-only" in issues["roles.heartbeat_out"]


def test_two_tags_cannot_give_one_role(tmp_path) -> None:
    p = rectifier_without(tmp_path, edit={"line_current_fine": {"role": "line_current"}})
    with pytest.raises(TagMapError, match="role 'line_current' is already given by 'line_current'"):
        load_tagmap(p)


def test_the_docs_show_the_registry() -> None:
    """docs/operations.md carries each kind's role table exactly as the registry makes it."""
    doc = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    for kind in DEVICE_KINDS:
        assert markdown_table(kind) in doc, f"docs/operations.md: the {kind} role table is not the registry's"


def test_tags_check_names_missing_roles_and_capability_losses(tmp_path) -> None:
    bad = rectifier_without(tmp_path, "setpoint_active")
    out = cli("tags", "check", str(bad))
    assert out.returncode == 1
    assert f"{bad}: roles.setpoint_active: required role 'setpoint_active' of the rectifier" in out.stderr
    ok = tmp_path / "ok.toml"
    ok.write_text(rectifier_without(tmp_path, "heartbeat_in").read_text())
    out = cli("tags", "check", str(ok), str(POTROOM))
    assert out.returncode == 0, out.stderr
    assert "rectifier roles: 9 of 10 given" in out.stdout and "capability loss: no heartbeat_in:" in out.stdout


def test_check_config_refuses_a_missing_role_and_states_a_loss(tmp_path) -> None:
    data = tomllib.loads(EXAMPLE.read_text())
    data["daemon"]["state_dir"] = str(tmp_path / "state")
    data["tagmaps"] = {"rectifier": str(rectifier_without(tmp_path, "setpoint_active")), "potroom": str(POTROOM)}
    cfg = tmp_path / "daemon.toml"
    cfg.write_text(dump_toml(data))
    out = cli("check-config", "--config", str(cfg))
    assert out.returncode == 1
    assert "roles.setpoint_active" in out.stderr and "rectifier Line1" in out.stderr
    (tmp_path / "optional").mkdir()
    data["tagmaps"]["rectifier"] = str(rectifier_without(tmp_path / "optional", "heartbeat_in"))
    cfg.write_text(dump_toml(data))
    out = cli("check-config", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    assert "capability loss: no heartbeat_in: PLC-alive check and PLC restart detection off" in out.stdout
    assert "line_current_sp bounded to [0, 132] kA" in out.stdout  # the example plant's rectifier max_ka
