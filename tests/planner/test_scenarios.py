"""Planning scenarios: the shipped price days and grid requests have the shape the issue
asks for and the TRIMET "virtual battery" claims (+-25 % for 48 h, zero for one hour;
TRIMET press release 2019-05-16); a user's TOML file loads, and a bad one is refused
naming the file and the key."""

from __future__ import annotations

import numpy as np
import pytest

from planner.scenarios import SCENARIOS, ScenarioError, load_scenario


def test_price_days_cheap_nights_expensive_evenings_negative_noon() -> None:
    for name in ("price_day_ahead_48h", "price_negative_noon_48h"):
        sc = load_scenario(name)
        assert sc.hours == 48 and not sc.is_request and sc.keep_production
        p = sc.price_eur_per_mwh.reshape(2, 24)
        night, evening = p[:, 0:6].mean(), p[:, 17:21].mean()
        assert evening > 2.5 * night, "evening peak well above the night"
    noon = load_scenario("price_negative_noon_48h").price_eur_per_mwh.reshape(2, 24)[:, 11:15]
    assert (noon < 0).any(axis=1).all(), "a negative price around noon each day"


def test_requests_are_trimets_claims() -> None:
    minus, plus = load_scenario("request_minus25_48h"), load_scenario("request_plus25_48h")
    for sc, target in ((minus, 0.75), (plus, 1.25)):
        assert sc.is_request
        held = np.isfinite(sc.band_lo)
        assert np.count_nonzero(held) == 48, "48 hourly steps at +-25 %"
        assert np.all(sc.band_lo[held] <= target) and np.all(target <= sc.band_hi[held])
    shed = load_scenario("request_shed_1h")
    assert np.count_nonzero(shed.band_hi == 0.0) == 1, "zero power for exactly one hourly step"
    assert set(SCENARIOS) == {
        "price_day_ahead_48h",
        "price_negative_noon_48h",
        "request_minus25_48h",
        "request_plus25_48h",
        "request_shed_1h",
    }


def test_toml_file_loads(tmp_path) -> None:
    f = tmp_path / "day.toml"
    f.write_text(
        '[scenario]\nname = "day"\n[price]\neur_per_mwh = [50.0, 60.0, 70.0, 80.0]\n'
        "[[request]]\nstart_h = 1\nend_h = 3\npower_pct = -10\n"
    )
    sc = load_scenario(f)
    assert sc.name == "day" and sc.n_steps == 4 and not sc.keep_production
    assert np.isnan(sc.band_lo[0]) and sc.band_lo[1] == pytest.approx(0.89) and sc.band_hi[2] == pytest.approx(0.91)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[price]\neur_per_mwh = []\n", "price.eur_per_mwh"),
        ('[price]\neur_per_mwh = [1.0, "x"]\n', "price.eur_per_mwh[1]"),
        ("[scenario]\nstep_s = 1\n[price]\neur_per_mwh = [1.0]\n", "scenario.step_s"),
        ("[scenario]\ncolour = 1\n[price]\neur_per_mwh = [1.0]\n", "scenario.colour"),
        ("[price]\neur_per_mwh = [1.0]\n[[request]]\nstart_h = 0\nend_h = 1\n", "request[0].power_pct"),
        ("[price]\neur_per_mwh = [1.0]\n[[request]]\nstart_h = 0\nend_h = 5\npower_pct = 3\n", "request[0].end_h"),
        ("[prices]\n", "prices"),
        ("[price\n", "not TOML"),
    ],
)
def test_bad_file_names_file_and_key(tmp_path, text: str, key: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ScenarioError) as e:
        load_scenario(f)
    assert str(f) in str(e.value) and key in str(e.value)


def test_unknown_name_lists_the_shipped_ones() -> None:
    with pytest.raises(ScenarioError, match="price_day_ahead_48h"):
        load_scenario("no_such_day")
