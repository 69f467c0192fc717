"""Daemon configuration: an invalid file is refused at start with every error listed
(file, key, expected, got); ``potline check-config`` does only that; the example passes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib

import pytest

from plc_bridge.opcua_security import hash_password
from potline.daemon_config import DaemonConfigError, load_daemon_config, parse_daemon_config
from tests.potline.daemon_support import EXAMPLE, ROOT, dump_toml

PY = sys.executable


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "potline.cli", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=str(ROOT))  # fmt: skip


def _example() -> dict:
    data = tomllib.loads(EXAMPLE.read_text())
    data["tagmaps"] = {"rectifier": str(ROOT / "config/tagmaps/rectifier.toml"),
                       "potroom": str(ROOT / "config/tagmaps/potroom.toml")}  # fmt: skip
    return data


def _issues(data: dict, tmp_path, name: str = "d.toml") -> list[tuple[str, str, str]]:
    p = tmp_path / name
    p.write_text(dump_toml(data))
    with pytest.raises(DaemonConfigError) as err:
        load_daemon_config(p)
    return [(i.file, i.key, i.message) for i in err.value.issues]


def test_example_config_is_valid_and_describes_the_bench() -> None:
    out = _cli("check-config", "--config", str(EXAMPLE), "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["valid"] and doc["cells"] == 8 and doc["rooms"] == 1 and doc["lines"] == 1
    assert {p["name"]: p["kind"] for p in doc["plcs"]} == {"rectifier1": "rectifier", "potroom1": "potroom"}
    loaded = load_daemon_config(EXAMPLE)
    assert loaded.tagmaps["potroom1"].cells.count == 8  # the 132-cell map resized to the room
    assert loaded.journal_path.name == "journal.db" and loaded.mode_file.name == "mode"


def test_every_error_is_listed_with_file_key_and_expectation(tmp_path) -> None:
    data = _example()
    data["daemon"]["mode"] = "turbo"
    data["daemon"]["scan_period_s"] = 0
    data["daemon"]["colour"] = "blue"
    data["plc"][0]["port"] = 70000
    data["plc"][1]["room"] = "Potroom9"
    data["metrics"]["port"] = "ninety"
    issues = _issues(data, tmp_path)
    f = str(tmp_path / "d.toml")
    keys = {k: m for _, k, m in issues}
    assert all(i[0] == f for i in issues)
    assert "expected 'observe', 'shadow' or 'control', got 'turbo'" in keys["daemon.mode"]
    assert keys["daemon.scan_period_s"] == "expected a number in (0, 60], got 0"
    assert (
        keys["daemon.colour"].startswith("unknown key (expected one of: ") and "scan_period_s" in keys["daemon.colour"]
    )
    assert keys["plc[0:rectifier1].port"] == "expected an integer in [1, 65535], got 70000"
    assert keys["metrics.port"] == "expected an integer, got 'ninety'"
    assert len(issues) == 5, issues  # the room is checked once the file itself is valid


def test_cross_references_and_referenced_files(tmp_path) -> None:
    data = _example()
    data["plc"][1]["room"] = "Potroom9"
    data["plc"].append(dict(data["plc"][0], name="rectifier2"))  # same endpoint, second rectifier for Line1
    data["metrics"]["port"] = data["opcua"]["port"]
    issues = _issues(data, tmp_path)
    msgs = [f"{k}: {m}" for _, k, m in issues]
    assert any("plc[1:potroom1].room: expected an operating room of the plant (Potroom1), got 'Potroom9'" in m
               for m in msgs)  # fmt: skip
    assert any("already used by PLC 'rectifier1'" in m for m in msgs)
    assert any("expected exactly one potroom PLC for room 'Potroom1', got 0" in m for m in msgs)
    assert any("expected exactly one rectifier PLC for line 'Line1', got 2" in m for m in msgs)
    assert any(m.startswith("metrics.port: expected a port other than opcua.port") for m in msgs)

    # errors inside the files it names carry those files' names
    bad_map = tmp_path / "potroom_bad.toml"
    bad_map.write_text(
        (ROOT / "config/tagmaps/potroom.toml").read_text().replace('type = "float32"', 'type = "float33"', 1)
    )
    plant = tmp_path / "plant.toml"
    plant.write_text('name = "Bench"\n[[lines]]\nname = "Line1"\n[[lines.rooms]]\nname = "Potroom1"\ncells = -8\n')
    data = _example()
    del data["plant"]
    data["daemon"]["plant_config"] = str(plant)
    data["tagmaps"]["potroom"] = str(bad_map)
    issues = _issues(data, tmp_path, "d2.toml")
    files = {i[0] for i in issues}
    assert str(plant) in files and str(bad_map) in files
    assert (str(plant), "lines[0:Line1].rooms[0:Potroom1].cells", "expected an integer in [1, 400], got -8") in issues
    assert any("float33" in m for f, _, m in issues if f == str(bad_map))
    # files that are not there are named with the key that points at them
    data["tagmaps"]["rectifier"] = str(tmp_path / "nope.toml")
    data["daemon"]["plant_config"] = "missing_plant.toml"
    issues = _issues(data, tmp_path, "d3.toml")
    keys = {k: m for _, k, m in issues}
    assert keys["tagmaps.rectifier"] == f"file not found: {tmp_path / 'nope.toml'}"
    assert keys["daemon.plant_config"] == f"file not found: {tmp_path / 'missing_plant.toml'}"


def test_security_section_rejects_plaintext_passwords_and_empty_endpoints(tmp_path) -> None:
    data = _example()
    data["opcua"]["security"] = {"sign": False, "sign_and_encrypt": False, "allow_no_security": False,
                                 "users": {"op": {"role": "operator", "password_hash": "hunter2"}}}  # fmt: skip
    issues = _issues(data, tmp_path)
    assert any(k == "opcua.security.users.op.password_hash" and "scrypt" in m for _, k, m in issues), issues
    assert not any("hunter2" in m for _, _, m in issues)  # a plaintext password is not echoed into logs
    data["opcua"]["security"]["users"]["op"]["password_hash"] = hash_password("x")
    issues = _issues(data, tmp_path)
    keys = {k: m for _, k, m in issues}
    assert "no endpoint left" in keys["opcua.security"]
    assert keys["opcua.security.sign_and_encrypt"].startswith("expected true while users are configured (op)")


def test_operator_passwords_never_in_clear_red_team_config_refused(tmp_path) -> None:
    """The red team's config: NoSecurity allowed, Sign and SignAndEncrypt off, an operator.
    Refused naming the rule; with SignAndEncrypt on, NoSecurity may stay for anonymous readers."""
    data = _example()
    data["opcua"]["security"] = {"sign": False, "sign_and_encrypt": False, "allow_no_security": True,
                                 "anonymous": "read_only",
                                 "users": {"op": {"role": "operator", "password_hash": hash_password("x")}}}  # fmt: skip
    issues = _issues(data, tmp_path)
    assert issues == [(str(tmp_path / "d.toml"), "opcua.security.sign_and_encrypt",
                       "expected true while users are configured (op): user names and passwords are accepted only "
                       "over SignAndEncrypt (rule: no login over an unencrypted channel; the Sign and None endpoints "
                       "offer anonymous access only), got false")]  # fmt: skip
    data["opcua"]["security"]["sign_and_encrypt"] = True
    # ... and certificate endpoints need something to vouch for clients: no automatic trust
    keys = {k: m for _, k, m in _issues(data, tmp_path)}
    assert list(keys) == ["opcua.security.trusted_client_certs_dir"]
    assert "any client certificate would be accepted" in keys["opcua.security.trusted_client_certs_dir"]
    data["opcua"]["security"]["trust_any_client_certificate"] = True  # a lab, said on purpose
    (tmp_path / "ok.toml").write_text(dump_toml(data))
    assert load_daemon_config(tmp_path / "ok.toml").security.users["op"].role == "operator"
    # a NoSecurity endpoint nobody could use (anonymous refused, and no user name over it)
    data["opcua"]["security"]["anonymous"] = "refuse"
    keys = [k for _, k, _ in _issues(data, tmp_path)]
    assert keys == ["opcua.security.allow_no_security"]


def test_hil_only_clock_settings_and_plant_source_are_checked(tmp_path) -> None:
    data = _example()
    data["daemon"]["hil"] = False
    data["daemon"]["clock_speed"] = 50.0
    issues = _issues(data, tmp_path)
    assert any("HIL rigs only" in m for _, _, m in issues)
    data = _example()
    data["daemon"]["plant_config"] = "plant_reference.toml"  # and an inline [plant]: ambiguous
    issues = _issues(data, tmp_path)
    assert any("exactly one of daemon.plant_config" in m for _, _, m in issues)


def test_syntax_error_missing_file_and_run_refuses_to_start(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[daemon\nmode = 'observe'\n")
    out = _cli("check-config", "--config", str(bad))
    assert out.returncode == 1 and f"{bad}: <syntax>: not valid TOML" in out.stderr
    out = _cli("check-config", "--config", str(tmp_path / "nope.toml"))
    assert out.returncode == 1 and "file not found" in out.stderr
    # `potline run` with an invalid file: refused at once, every error listed, nothing started
    data = _example()
    data["daemon"]["state_dir"] = str(tmp_path / "state")
    data["daemon"]["mode"] = "turbo"
    data["journal"]["synchronous"] = "OFF"
    cfg = tmp_path / "d.toml"
    cfg.write_text(dump_toml(data))
    out = _cli("run", "--config", str(cfg), timeout=30)
    assert out.returncode == 2
    assert "refusing to start" in out.stderr and "daemon.mode" in out.stderr and "journal.synchronous" in out.stderr
    assert not (tmp_path / "state").exists()


def test_parse_from_dict_names_the_source() -> None:
    with pytest.raises(DaemonConfigError) as err:
        parse_daemon_config({"plc": []}, source="inline.toml")
    keys = [i.key for i in err.value.issues]
    assert "plc" in keys and all(i.file == "inline.toml" for i in err.value.issues)


def test_logging_json_lines_third_party_capped_and_console_on_a_terminal(tmp_path) -> None:
    """One JSON object per line with the bound plant and the event's room/cell; asyncua and
    pymodbus INFO chatter dropped, their warnings rendered the same way; colours on a tty."""
    script = r"""
import logging, structlog
from potline.logging_setup import configure_logging, bind_context
print(configure_logging("auto"), flush=True)
bind_context(plant="Bench")
structlog.get_logger("potline.daemon").warning("event.ae_start", room="Potroom1", cell=3, detail="U=31.0 V")
logging.getLogger("asyncua.server.uaprocessor").info("chatty session detail")
logging.getLogger("pymodbus.logging").warning("retrying %s", "request")
"""
    out = subprocess.run([PY, "-c", script], capture_output=True, text=True, timeout=60, cwd=str(ROOT))
    lines = out.stdout.splitlines()
    assert lines[0] == "json"
    docs = [json.loads(x) for x in lines[1:]]
    assert [d["event"] for d in docs] == ["event.ae_start", "retrying request"]
    ae = docs[0]
    assert (ae["plant"], ae["room"], ae["cell"], ae["level"]) == ("Bench", "Potroom1", 3, "warning")
    assert docs[1]["logger"] == "pymodbus.logging" and docs[1]["plant"] == "Bench"
    # on a terminal: human-readable
    import os
    import pty

    master, slave = pty.openpty()
    proc = subprocess.run([PY, "-c", script], stdout=slave, stderr=subprocess.PIPE, timeout=60, cwd=str(ROOT))
    os.close(slave)
    text = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        text += chunk
    os.close(master)
    assert proc.returncode == 0
    t = text.decode(errors="replace")
    assert (
        t.splitlines()[0].strip() == "console"
        and "event.ae_start" in t
        and "{" not in t.split("event.ae_start")[1].splitlines()[0]
    )


# ---------------------------------------------------------------------- bounds from the plant (issue 15, item 4)

#: the red team's values (and their kin): section updates -> (key, the limit's value and words, got)
RED_TEAM = {
    "target_and_max_above_the_rectifier": (
        {"control": {"amperage": {"target_ka": 900.0, "max_ka": 1000.0}}},
        [("control.amperage.max_ka", "at most 132 kA (Line1's rectifier limit", "got 1000"),
         ("control.amperage.target_ka", "at most 132 kA (Line1's rectifier limit", "got 900")],
    ),
    "safety_min_above_the_tag_max": (
        {"safety": {"line_current_min_ka": 200.0}},
        [("safety.line_current_min_ka", "at most 60 kA (control.amperage.min_ka", "got 200")],
    ),
    "safety_max_below_the_min": (
        {"safety": {"line_current_max_ka": 10.0}},
        [("safety.line_current_max_ka", "at least 120 kA (Line1's nominal current", "got 10")],
    ),
    "stale_after_ten_minutes": (
        {"safety": {"stale_after_s": 600.0}},
        [("safety.stale_after_s", "at most 30 s (the PLCs' heartbeat watchdog", "got 600")],
    ),
    "heartbeat_timeout_ten_minutes": (
        {"safety": {"plc_heartbeat_timeout_s": 600.0}},
        [("safety.plc_heartbeat_timeout_s", "at most 30 s (the PLCs' heartbeat watchdog", "got 600")],
    ),
    "heartbeat_timeout_shorter_than_a_scan": (
        {"safety": {"plc_heartbeat_timeout_s": 1.0}},
        [("safety.plc_heartbeat_timeout_s", "at least 4 s (2 x daemon.scan_period_s", "got 1")],
    ),
    "timeouts_beyond_the_plcs_own_watchdog": (
        {"safety": {"plc_watchdog_s": 8.0, "stale_after_s": 10.0}},
        [("safety.stale_after_s", "at most 8 s (safety.plc_watchdog_s", "got 10"),
         ("safety.plc_heartbeat_timeout_s", "at most 8 s (safety.plc_watchdog_s", "got 10")],
    ),
    "beam_and_feed_beyond_one_command": (
        {"control": {"quench": {"lower_mm": 35.0, "max_total_down_mm": 60.0, "feed_shots": 12},
                     "resistance": {"max_move_mm": 40.0}}},
        [("control.quench.lower_mm", "at most 30 mm (the largest move one command carries", "got 35"),
         ("control.quench.feed_shots", "at most 10 shots (the largest dose one command carries", "got 12"),
         ("control.resistance.max_move_mm", "at most 30 mm (the largest move one command carries", "got 40")],
    ),
    "no_detection_at_the_nominal_current": (
        {"control": {"detection": {"min_current_ka": 150.0}}},
        [("control.detection.min_current_ka", "less than 120 kA (the line current the controller regulates to",
          "got 150")],
    ),
}  # fmt: skip


def _with(data: dict, updates: dict) -> dict:
    for section, values in updates.items():
        node = data.setdefault(section, {})
        for k, v in values.items():
            if isinstance(v, dict):
                node.setdefault(k, {}).update(v)
            else:
                node[k] = v
    return data


@pytest.mark.parametrize("case", sorted(RED_TEAM))
def test_bounds_and_timeouts_beyond_the_plant_are_refused_naming_file_key_and_limit(case: str, tmp_path) -> None:
    updates, expected = RED_TEAM[case]
    issues = _issues(_with(_example(), updates), tmp_path)
    f = str(tmp_path / "d.toml")
    by_key = {k: m for file, k, m in issues if file == f}
    for key, limit, got in expected:
        assert key in by_key, (key, issues)
        assert by_key[key].startswith(f"expected {limit}") and got in by_key[key], by_key[key]


def test_the_limit_named_is_the_file_it_comes_from(tmp_path) -> None:
    """A plant file's rectifier limit is named in that file; the tag map's limit in the map; a default
    the user never wrote is called the default."""
    plant = tmp_path / "plant.toml"
    plant.write_text('name = "Bench"\n[[lines]]\nname = "Line1"\nrectifier = { setpoint_ka = 100.0, max_ka = 110.0 }\n'
                     '[[lines.rooms]]\nname = "Potroom1"\ncells = 8\n')  # fmt: skip
    data = _example()
    del data["plant"]
    data["daemon"]["plant_config"] = str(plant)
    issues = _issues(data, tmp_path)  # the controller's default max_ka (130) is above this rectifier (110)
    f = str(tmp_path / "d.toml")
    # no [control] in the daemon file: the controller's settings are the plant file's [control] (here: defaults)
    assert (str(plant), "control.amperage.max_ka",
            f"expected at most 110 kA (Line1's rectifier limit, {plant}: lines[0:Line1].rectifier.max_ka), got 130 "
            "(the default: set control.amperage.max_ka)") in issues  # fmt: skip
    # a rectifier that could carry more than the wire's setpoint tag: the tag map is the limit
    plant.write_text(
        plant.read_text().replace("setpoint_ka = 100.0, max_ka = 110.0", "setpoint_ka = 120.0, max_ka = 150.0")
    )
    data["control"] = {"amperage": {"max_ka": 140.0}}
    issues = _issues(data, tmp_path)
    tm = ROOT / "config/tagmaps/rectifier.toml"
    assert (f, "control.amperage.max_ka",
            f"expected at most 135 kA (the rectifier tag map's setpoint limit, {tm}: tags[0:line_current_sp].max), "
            "got 140") in issues  # fmt: skip


def test_check_config_refuses_the_red_team_file_and_accepts_what_rigs_write(tmp_path) -> None:
    data = _with(_example(), {"control": {"amperage": {"target_ka": 900.0, "max_ka": 1000.0}},
                              "safety": {"stale_after_s": 600.0}})  # fmt: skip
    cfg = tmp_path / "red.toml"
    cfg.write_text(dump_toml(data))
    out = _cli("check-config", "--config", str(cfg))
    assert out.returncode == 1
    assert f"{cfg}: control.amperage.max_ka: expected at most 132 kA" in out.stderr
    assert f"{cfg}: safety.stale_after_s: expected at most 30 s" in out.stderr
    # what `python -m hil_rigs serve` writes for every shipped scenario, at any speed, stays valid
    from hil_rigs.process import daemon_config_for_rig
    from hil_rigs.scenarios import load_scenario

    for name in ("ae_storm", "comms_loss_ae", "cell_cutout"):
        for speed in (1.0, 50.0, 300.0):
            info = {"speed": speed, "epoch_monotonic": 0.0, "voltage_limit_v": [1250.0],
                    "rectifiers": [{"name": "Line1", "protocol": "modbus", "host": "127.0.0.1", "port": 15020}],
                    "potrooms": [{"name": "Potroom1", "protocol": "opcua", "host": "127.0.0.1", "port": 15021}]}  # fmt: skip
            parse_daemon_config(daemon_config_for_rig(info, load_scenario(name)), source=tmp_path / "rig.toml")
