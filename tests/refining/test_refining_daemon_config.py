"""A ``[refining]`` daemon config: what ``potline check-config`` and ``potline tags check``
accept and refuse, each refusal naming the file and the key (no network, real CLI processes)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from hil_rigs.process import dump_toml
from potline.daemon_config import DaemonConfigError, load_daemon_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "daemon_refining_example.toml"
TAGMAP = ROOT / "config" / "tagmaps" / "refining_pot.toml"
POT_3KA = ROOT / "config" / "refining_3ka.toml"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "potline.cli", *args], capture_output=True, text=True, timeout=120,
                          cwd=str(ROOT))  # fmt: skip


def _example(tmp_path: Path, **tables: object) -> dict:
    data = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    data["refining"]["config"] = str(POT_3KA)
    data.update(tables)
    return data


def _write(tmp_path: Path, data: dict, name: str = "daemon.toml") -> Path:
    p = tmp_path / name
    p.write_text(dump_toml(data), encoding="utf-8")
    return p


def test_the_shipped_example_checks_and_shows_the_pot_s_bounds() -> None:
    out = cli("check-config", "--config", str(EXAMPLE))
    assert out.returncode == 0, out.stderr
    # the pot, the candidate, the cycle from the pot config, the [safety] bounds every write is held to
    assert "refining pot(s) Pot1" in out.stdout and "candidate nominal" in out.stdout and "cycle 600 s" in out.stdout
    assert "current 0..3300 A at most 300 A/h" in out.stdout and "tap <= 60 kg" in out.stdout
    loaded = load_daemon_config(EXAMPLE)
    assert loaded.refining is not None and loaded.refining.period_s == 600.0
    assert loaded.tagmaps["pot1"].instance == "Pot1"


def test_tags_check_checks_the_refining_pot_roles(tmp_path: Path) -> None:
    out = cli("tags", "check", str(TAGMAP))
    assert out.returncode == 0, out.stderr
    assert "refining_pot roles: 28 of 28 given" in out.stdout
    data = tomllib.loads(TAGMAP.read_text(encoding="utf-8"))
    no_si = dict(data, tags=[t for t in data["tags"] if t["name"] != "assay_si_pct"])
    out = cli("tags", "check", str(_write(tmp_path, no_si, "no_si.toml")))
    assert out.returncode == 0 and "no assay_si_pct: no Si assays" in out.stdout  # optional: a stated loss
    no_tap = dict(data, tags=[t for t in data["tags"] if t["name"] != "tap_cmd"])
    bad = _write(tmp_path, no_tap, "no_tap.toml")
    out = cli("tags", "check", str(bad))
    assert out.returncode == 1
    assert f"{bad}: roles.tap_cmd: required role 'tap_cmd' of the refining_pot Pot1" in out.stderr


def test_every_problem_is_named_with_its_key(tmp_path: Path) -> None:
    data = _example(tmp_path, opcua={"port": 4999}, safety={"line_current_ramp_ka_per_s": 0.2, "modbus_timeout_s": 1.0})
    data["daemon"]["scan_period_s"] = 5.0
    data["refining"]["candidate"] = "bogus"
    p = _write(tmp_path, data)
    with pytest.raises(DaemonConfigError) as err:
        load_daemon_config(p)
    got = {i.key: i.message for i in err.value.issues}
    assert set(got) == {"opcua", "safety.line_current_ramp_ka_per_s", "daemon.scan_period_s", "refining.candidate"}
    assert all(i.file == str(p) for i in err.value.issues)
    assert "control_period_s" in got["daemon.scan_period_s"] and "600 s" in got["daemon.scan_period_s"]
    assert "[safety] of refining.config" in got["safety.line_current_ramp_ka_per_s"]
    assert "unknown candidate 'bogus'" in got["refining.candidate"]
    out = cli("check-config", "--config", str(p))
    assert out.returncode == 1 and "4 error(s)" in out.stderr


def test_a_pot_map_without_a_required_role_or_a_missing_pot_config_is_refused(tmp_path: Path) -> None:
    m = tomllib.loads(TAGMAP.read_text(encoding="utf-8"))
    m["tags"] = [t for t in m["tags"] if t["name"] != "cycle_ended"]
    bad_map = _write(tmp_path, m, "pot_map.toml")
    data = _example(tmp_path, tagmaps={"refining_pot": str(bad_map)})
    data["refining"]["config"] = "nowhere.toml"
    p = _write(tmp_path, data)
    with pytest.raises(DaemonConfigError) as err:
        load_daemon_config(p)
    got = {(i.file, i.key): i.message for i in err.value.issues}
    assert got[(str(p), "refining.config")] == f"file not found: {tmp_path / 'nowhere.toml'}"
    assert "required role 'cycle_ended' of the refining pot Pot1" in got[(str(bad_map), "roles.cycle_ended")]


def test_refining_pots_and_a_potline_do_not_mix(tmp_path: Path) -> None:
    data = _example(tmp_path)
    data["plc"].append({"name": "room1", "kind": "potroom", "room": "Potroom1", "port": 5021})
    with pytest.raises(DaemonConfigError, match="drives refining pots only"):
        load_daemon_config(_write(tmp_path, data))
    data = _example(tmp_path)
    del data["refining"]
    data["daemon"]["plant_config"] = str(ROOT / "config" / "plant_reference.toml")
    with pytest.raises(DaemonConfigError, match=r"kind 'refining_pot' \(pot1\) need a \[refining\] section"):
        load_daemon_config(_write(tmp_path, data))
    data = _example(tmp_path)
    data["plc"][0].pop("pot")
    with pytest.raises(DaemonConfigError, match='a refining_pot PLC needs pot = "<pot name>"'):
        load_daemon_config(_write(tmp_path, data))


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``potline shadow`` reports on the shipped example recording: nominal (READY) and
    unsafe_step (NOT READY), made by the real command."""
    out = tmp_path_factory.mktemp("shadow")
    rec = ROOT / "config" / "recordings" / "refining_3ka_synthetic.csv"
    got = {}
    for cand, rc in (("nominal", 0), ("unsafe_step", 1)):
        res = cli("shadow", "--data", str(rec), "--candidate", cand, "--members", "1", "--out", str(out / cand),
                  "--quiet")  # fmt: skip
        assert res.returncode == rc, res.stderr
        got[cand] = out / cand / "report.json"
    return got


def test_a_ready_verdict_lets_the_candidate_deploy_and_check_config_shows_it(tmp_path: Path, reports) -> None:
    data = _example(tmp_path)
    data["refining"]["verdict"] = str(reports["nominal"])
    p = _write(tmp_path, data)
    out = cli("check-config", "--config", str(p))
    assert out.returncode == 0, out.stderr
    assert f"shadow verdict: READY ({reports['nominal']})" in out.stdout


def test_a_not_ready_or_foreign_verdict_is_refused(tmp_path: Path, reports) -> None:
    data = _example(tmp_path)
    data["refining"].update(candidate="unsafe_step", verdict=str(reports["unsafe_step"]))
    p = _write(tmp_path, data, "unsafe.toml")
    with pytest.raises(DaemonConfigError) as err:
        load_daemon_config(p)
    (issue,) = err.value.issues
    assert issue.key == "refining.verdict" and "candidate 'unsafe_step' was judged NOT READY" in issue.message
    assert "unsafe command" in issue.message  # the verdict's own reason, passed on
    # a READY verdict of another candidate does not vouch for this one
    data["refining"].update(candidate="high_current", verdict=str(reports["nominal"]))
    with pytest.raises(DaemonConfigError, match="judged candidate 'nominal', this daemon runs 'high_current'"):
        load_daemon_config(_write(tmp_path, data))
    # nor for another pot config
    other = tmp_path / "pot1_calibrated.toml"
    other.write_text(POT_3KA.read_text(encoding="utf-8"), encoding="utf-8")
    data["refining"].update(candidate="nominal", config=str(other))
    with pytest.raises(DaemonConfigError, match=re.escape("this daemon runs the pot config 'pot1_calibrated.toml'")):
        load_daemon_config(_write(tmp_path, data))
    out = cli("run", "--config", str(p))  # the NOT READY one
    assert out.returncode == 2 and "refining.verdict" in out.stderr and "NOT READY" in out.stderr  # never started
