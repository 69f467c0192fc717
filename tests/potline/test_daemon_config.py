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
    assert [k for _, k, _ in issues] == ["opcua.security"] and "no endpoint left" in issues[0][2]


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
