"""One config core: the same mistake reads the same in every config file a user edits.

A typo, a wrong type, a value out of range and a non-finite number are put into the
shipped plant config, a controller section, a tag map, a scenario, a refining config and
the daemon config; each is loaded by its own public loader. Every one is refused with the
same exception type and the same message shape: ``file: key: expected ..., got ...``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hil_rigs.scenarios import load_scenario
from plc_bridge.tagmap import TagMapError, load_tagmap
from potctl.config import load_control_config
from potline.daemon_config import DaemonConfigError, load_daemon_config
from refining.config import RefiningConfigError, load_refining_config
from twin.config import load_plant_config
from twin.configcore import ConfigError, ConfigIssue, load_toml
from twin.resources import config_dir

CONFIG = config_dir()


@dataclass(frozen=True)
class Case:
    """One kind of config file and the numeric setting the test spoils in it."""

    name: str
    load: Callable[[Path], Any]
    text: Callable[[], str]  # a valid file
    line: str  # the setting's line in it, as shipped
    key: str  # its dotted key
    kind: str  # "a number" | "an integer"
    out_of_range: str  # a value outside the declared bounds ...
    allowed: str  # ... and the bounds as the message states them


def _daemon_text() -> str:
    text = (CONFIG / "daemon_example.toml").read_text(encoding="utf-8")
    # the example names its tag maps relative to itself: point at the shipped ones
    return text.replace('"tagmaps/', f'"{CONFIG}/tagmaps/')


CASES = [
    Case("plant config", load_plant_config, lambda: (CONFIG / "plant_reference.toml").read_text(encoding="utf-8"),
         "acd_cm = 4.8", "cell.acd_cm", "a number", "20.0", "[2, 8]"),
    Case("controller section", load_control_config, lambda: "[control.detection]\nhv_threshold_v = 8.0\n",
         "hv_threshold_v = 8.0", "control.detection.hv_threshold_v", "a number", "100.0", "(4, 60]"),
    Case("tag map", load_tagmap, lambda: (CONFIG / "tagmaps" / "rectifier.toml").read_text(encoding="utf-8"),
         "device_id = 1", "device.device_id", "an integer", "300", "[0, 255]"),
    Case("scenario", load_scenario, lambda: (CONFIG / "scenarios" / "ae_storm.toml").read_text(encoding="utf-8"),
         "speed = 50", "scenario.speed", "a number", "-3", "(0, 1000]"),
    Case("refining config", load_refining_config, lambda: (CONFIG / "refining_3ka.toml").read_text(encoding="utf-8"),
         "conductivity_s_cm = 1.0", "electrolyte.conductivity_s_cm", "a number", "7.0", "[0.3, 3] S/cm"),
    Case("daemon config", load_daemon_config, _daemon_text,
         "scan_period_s = 2.0", "daemon.scan_period_s", "a number", "0", "(0, 60]"),
]  # fmt: skip

IDS = [c.name for c in CASES]

#: the one shape every message has
UNKNOWN = re.compile(r"unknown key \(expected one of: ([a-z0-9_]+(?:, [a-z0-9_]+)*)\)")
EXPECTED = re.compile(r"expected (a number|an integer)(?: in [\[(]-?[\d.]+, -?[\d.]+[\])](?: \S+)?)?, got .+")


def _spoil(case: Case, tmp_path: Path, new_line: str) -> tuple[str, list[ConfigIssue]]:
    """Write the case's file with its setting's line replaced; the issues its loader reports."""
    text = case.text()
    assert text.count(case.line) == 1, f"{case.name}: {case.line!r} not found once"
    path = tmp_path / f"{case.name.replace(' ', '_')}.toml"
    path.write_text(text.replace(case.line, new_line), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        case.load(path)
    return str(path), err.value.issues


def _name_and_value(case: Case) -> tuple[str, str]:
    name, _, value = case.line.partition(" = ")
    return name, value


def test_every_config_raises_the_one_error_type() -> None:
    assert TagMapError is RefiningConfigError is DaemonConfigError is ConfigError


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_a_typo_lists_the_valid_keys_at_that_level(case: Case, tmp_path: Path) -> None:
    name, value = _name_and_value(case)
    typo = name[:-1] + name[-1] * 2  # acd_cm -> acd_cmm
    file, issues = _spoil(case, tmp_path, f"{typo} = {value}")
    (issue,) = issues
    parent = case.key.rpartition(".")[0]
    assert (issue.file, issue.key) == (file, f"{parent}.{typo}")
    m = UNKNOWN.fullmatch(issue.message)
    assert m, issue.message
    valid = m[1].split(", ")
    assert name in valid and typo not in valid and valid == sorted(valid)
    assert str(issue) == f"{file}: {parent}.{typo}: {issue.message}"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_a_wrong_type_says_what_was_expected_and_got(case: Case, tmp_path: Path) -> None:
    name, _ = _name_and_value(case)
    file, issues = _spoil(case, tmp_path, f'{name} = "lots"')
    assert [(i.file, i.key, i.message) for i in issues] == [(file, case.key, f"expected {case.kind}, got 'lots'")]
    assert EXPECTED.fullmatch(issues[0].message)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_a_value_out_of_range_states_the_whole_range(case: Case, tmp_path: Path) -> None:
    name, _ = _name_and_value(case)
    file, issues = _spoil(case, tmp_path, f"{name} = {case.out_of_range}")
    want = f"expected {case.kind} in {case.allowed}, got {case.out_of_range}"
    assert [(i.file, i.key, i.message) for i in issues] == [(file, case.key, want)]
    assert EXPECTED.fullmatch(issues[0].message)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_a_non_finite_number_is_refused(case: Case, tmp_path: Path) -> None:
    name, _ = _name_and_value(case)
    file, issues = _spoil(case, tmp_path, f"{name} = nan")
    assert [(i.file, i.key, i.message) for i in issues] == [(file, case.key, "expected a finite number, got nan")]


# --------------------------------------------------------------------------- the loader


def test_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    p = tmp_path / "broken.toml"
    p.write_text('name = "x"\n[cell\nacd_cm = 4.8\n', encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_toml(p)
    (issue,) = err.value.issues
    assert (issue.file, issue.key) == (str(p), "<syntax>")
    assert re.fullmatch(r"not valid TOML at line 2, column \d+: .+", issue.message), issue.message


def test_missing_file_directory_and_binary_file(tmp_path: Path) -> None:
    cases = {
        tmp_path / "nope.toml": ("<file>", "file not found"),
        tmp_path: ("<file>", "expected a TOML file, got a directory"),
        tmp_path / "binary.toml": ("<syntax>", "not valid TOML: expected UTF-8 text"),
    }
    (tmp_path / "binary.toml").write_bytes(b"name = \xff\xfe\n")
    for path, (key, message) in cases.items():
        with pytest.raises(ConfigError) as err:
            load_toml(path)
        assert err.value.issues == [ConfigIssue(str(path), key, message)]


def test_every_non_finite_number_is_named(tmp_path: Path) -> None:
    p = tmp_path / "inf.toml"
    p.write_text('a = inf\n[t]\nb = [1.0, -inf]\n[[rooms]]\nname = "Potroom1"\ncells = nan\n', encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_toml(p)
    assert [(i.key, i.message) for i in err.value.issues] == [
        ("a", "expected a finite number, got inf"),
        ("t.b[1]", "expected a finite number, got -inf"),
        ("rooms[0:Potroom1].cells", "expected a finite number, got nan"),
    ]
    assert str(err.value).startswith(f"3 configuration errors in {p}\n  {p}: a: expected a finite number, got inf")


def test_a_key_that_takes_two_types_names_both(tmp_path: Path) -> None:
    p = tmp_path / "plant.toml"
    p.write_text('[control.amperage]\nvoltage_limit_v = "high"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_control_config(p)
    assert err.value.problems == [f"{p}: control.amperage.voltage_limit_v: expected a number or an array, got 'high'"]
