"""Bad plant configs are refused with the file, the key and the allowed range."""

from __future__ import annotations

from pathlib import Path

import pytest

from twin.config import REFERENCE_PLANT, ConfigError, load_plant_config


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "plant.toml"
    p.write_text(text)
    return p


def test_reference_plant_is_the_seed() -> None:
    """ALRO Slatina seed (docs/domain.md): 6 rooms of 132 cells, 5 operating -> 660 cells."""
    cfg = load_plant_config()
    rooms = [r for ln in cfg.lines for r in ln.rooms]
    assert len(rooms) == 6 and all(r.cells == 132 for r in rooms)
    assert cfg.operating_cells == 660


def test_out_of_range_value_names_file_key_and_range(tmp_path: Path) -> None:
    text = REFERENCE_PLANT.read_text().replace("acd_cm = 4.8", "acd_cm = 20.0")
    with pytest.raises(ConfigError) as exc:
        load_plant_config(_write(tmp_path, text))
    (issue,) = exc.value.issues
    assert issue.file.endswith("plant.toml") and issue.key == "cell.acd_cm"
    assert issue.message == "expected a number in [2, 8], got 20.0"
    assert str(exc.value) == f"{issue.file}: cell.acd_cm: expected a number in [2, 8], got 20.0"


def test_every_error_is_listed(tmp_path: Path) -> None:
    text = REFERENCE_PLANT.read_text()
    text = text.replace("acd_cm = 4.8", "acd_cm = -1").replace("bath_mass_kg = 4000.0", 'bath_mass_kg = "lots"')
    text = text.replace("[spread]", "[spread]\nunknown_key = 3")
    with pytest.raises(ConfigError) as exc:
        load_plant_config(_write(tmp_path, text))
    found = {i.key: i.message for i in exc.value.issues}
    assert found["cell.acd_cm"] == "expected a number in [2, 8], got -1"
    assert found["cell.bath_mass_kg"] == "expected a number, got 'lots'"
    assert found["spread.unknown_key"].startswith("unknown key (expected one of: acd, ae_film_voltage, bath_mass, ")


def test_setpoint_outside_rectifier_limits(tmp_path: Path) -> None:
    text = REFERENCE_PLANT.read_text().replace("setpoint_ka = 120.0", "setpoint_ka = 140.0", 1)
    with pytest.raises(ConfigError) as exc:
        load_plant_config(_write(tmp_path, text))
    (issue,) = exc.value.issues
    # list items are named by their index and name
    assert issue.key == "lines[0:Line1].rectifier" and "max_ka=130" in issue.message


def test_syntax_error_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"plant\.toml: <syntax>: not valid TOML at line 1, column \d+: "):
        load_plant_config(_write(tmp_path, "name = [unclosed"))
    with pytest.raises(ConfigError, match=r"nope\.toml: <file>: file not found"):
        load_plant_config(tmp_path / "nope.toml")
