"""Refining configs: the shipped files validate, and bad files give errors that name the
file, the key and the allowed range (HELPERS.md: 'Bad input: clear error naming file, key
or register and what was expected')."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest

from refining import model as rf
from refining.config import (
    CONFIG_3KA,
    CONFIG_500A,
    RefiningConfigError,
    config_from_dict,
    load_refining_config,
    scaled_params,
)


@pytest.mark.parametrize("path, amps", [(CONFIG_500A, 500.0), (CONFIG_3KA, 3000.0)])
def test_shipped_configs_load(path, amps):
    cfg = load_refining_config(path)
    assert cfg.pot.nominal_current_a == amps == cfg.operation.current_a
    # 0.5 A/cm² on both prototypes (docs/domain.md §5b example)
    assert cfg.operation.current_a / cfg.pot.electrode_area_cm2 == pytest.approx(0.5)
    # P1020 limits as in docs/domain.md
    assert (cfg.limits.cathode_fe_pct, cfg.limits.cathode_si_pct, cfg.limits.purity_min_pct) == (0.20, 0.10, 99.7)
    p = cfg.params()
    assert p.shape == (rf.N_PARAM,) and np.all(np.isfinite(p))
    s = cfg.initial_state()
    assert s.shape == (rf.N_STATE,)
    # the configured initial anode density is what the model reports
    assert rf.anode_density(s, p) == pytest.approx(cfg.anode.density_kg_m3)


def _write(tmp_path: Path, base: Path, edit) -> Path:
    data = tomllib.loads(base.read_text())
    edit(data)
    out = tmp_path / "bad.toml"
    out.write_text(_dump(data))
    return out


def _dump(d, prefix=""):
    """Minimal TOML writer for nested dicts of scalars (enough for these tests)."""
    lines, tables = [], []
    for k, v in d.items():
        if isinstance(v, dict):
            tables.append((k, v))
        else:
            lines.append(f"{k} = {_val(v)}")
    out = "\n".join(lines) + "\n"
    for k, v in tables:
        name = f"{prefix}{k}"
        out += f"\n[{name}]\n" + _dump(v, name + ".")
    return out


def _val(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace('"', '\\"') + '"'
    return repr(v)


def test_out_of_range_value_names_file_key_and_range(tmp_path):
    bad = _write(tmp_path, CONFIG_3KA, lambda d: d["electrolyte"].__setitem__("conductivity_s_cm", 7.0))
    with pytest.raises(RefiningConfigError) as ei:
        load_refining_config(bad)
    # the whole allowed range with the unit the field declares
    assert str(ei.value) == f"{bad}: electrolyte.conductivity_s_cm: expected a number in [0.3, 3] S/cm, got 7.0"


def test_every_error_is_listed(tmp_path):
    def edit(d):
        d["pot"]["nominal_current_a"] = -5.0
        d["separation"]["beta_fe"] = 0.0
        d["thermal"]["heater_max_kw"] = "lots"

    with pytest.raises(RefiningConfigError) as ei:
        load_refining_config(_write(tmp_path, CONFIG_500A, edit))
    assert ei.value.errors == [
        ("pot.nominal_current_a", "expected a number in [50, 20000] A, got -5.0"),
        ("separation.beta_fe", "expected a number in [1, 1000000], got 0.0"),
        ("thermal.heater_max_kw", "expected a number, got 'lots'"),
    ]


def test_unknown_key_and_unknown_grade(tmp_path):
    with pytest.raises(
        RefiningConfigError, match=r"anode\.cu_percent: unknown key \(expected one of: activity_coeff_al, "
    ):
        load_refining_config(_write(tmp_path, CONFIG_3KA, lambda d: d["anode"].__setitem__("cu_percent", 30.0)))
    with pytest.raises(RefiningConfigError, match=r"scrap: .*'nope' is not one of the grades"):
        load_refining_config(_write(tmp_path, CONFIG_3KA, lambda d: d["scrap"].__setitem__("grade", "nope")))


def test_cross_field_rules(tmp_path):
    def edit(d):
        d["safety"]["current_max_a"] = 5000.0  # above the rectifier's 3.6 kA

    with pytest.raises(RefiningConfigError, match=r"safety\.current_max_a must not exceed pot\.rectifier_max_a"):
        load_refining_config(_write(tmp_path, CONFIG_3KA, edit))


def test_syntax_error_and_missing_file(tmp_path):
    p = tmp_path / "broken.toml"
    p.write_text("[pot\nname = 1\n")
    with pytest.raises(RefiningConfigError, match=r"broken\.toml: <syntax>: not valid TOML at line 1, column"):
        load_refining_config(p)
    with pytest.raises(RefiningConfigError, match=r"nothere\.toml: <file>: file not found"):
        load_refining_config(tmp_path / "nothere.toml")


def test_defaults_and_scaling():
    cfg = config_from_dict({})
    p = cfg.params()
    q = scaled_params(p, kappa=0.5, scrap_fe=2.0)
    assert q[rf.P_KAPPA_REF] == 0.5 * p[rf.P_KAPPA_REF]
    assert q[rf.P_SCRAP + rf.FE] == 2.0 * p[rf.P_SCRAP + rf.FE]
    with pytest.raises(KeyError, match="unknown parameter factor"):
        scaled_params(p, nonsense=1.0)
    with pytest.raises(ValueError, match="positive"):
        scaled_params(p, kappa=-1.0)
    with pytest.raises(KeyError, match="unknown scrap grade"):
        cfg.params("nope")
