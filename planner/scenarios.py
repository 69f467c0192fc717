"""Planning scenarios: an electricity price curve, or a grid operator's request.

A scenario is hourly data over a horizon (24-48 h):

* ``price_eur_per_mwh`` — the day-ahead price of every step [EUR/MWh]; the planner moves
  energy from expensive to cheap hours at the same metal;
* ``band`` — optionally, a grid request: per step the plant's power must lie within
  ``[lo, hi]`` x the power of flat operation (NaN: free). ``-25 %`` for 48 h is
  ``0.74 .. 0.76`` from h 2 to h 50 (two hours' notice, two to recover); a full shed is
  ``hi = 0``. A request waives the
  production target (the grid buys the metal not made) unless ``keep_production``.

The five shipped scenarios are built here (``SCENARIOS``); a user's scenario is a TOML
file (``load_scenario(path)``), e.g.::

    [scenario]
    name = "my_day"
    description = "..."
    step_s = 3600            # optional, default one hour
    keep_production = true   # optional; default true for price days, false for requests
    superheat_min_k = 1.0    # optional: the request's own superheat floor [K]

    [price]
    eur_per_mwh = [42.0, 40.0, ...]   # one per step

    [[request]]               # optional, any number: a power band over a period
    start_h = 0
    end_h = 48
    power_pct = -25.0         # change of power against flat operation [%]
    tolerance_pct = 1.0       # optional half width of the band [% of flat power]

Prices with no ``[[request]]`` make a price scenario. Errors name the file and the key
(``ScenarioError``).

The TRIMET "virtual battery" (Essen, 120 pots, 2019) is what the request scenarios are
modelled on: +-25 % power for up to 48 h and zero power for up to one hour (TRIMET press
release 2019-05-16). Day-ahead prices: German quarter-hour prices typically 10-60
EUR/MWh with extremes -200 / +1000 EUR/MWh (Aluminium International Today, 2019); the
shipped curves are made-up days of that shape, not a market record.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SCENARIOS", "Scenario", "ScenarioError", "load_scenario", "scenario_names"]


class ScenarioError(ValueError):
    """A scenario that cannot be planned: names the file, the key and what was expected."""


@dataclass
class Scenario:
    """Hourly planning scenario.

    Attributes:
        name: scenario name.
        description: one line for reports.
        price_eur_per_mwh: [n_steps] energy price per step [EUR/MWh].
        band_lo: [n_steps] lowest plant power / flat power (NaN: free).
        band_hi: [n_steps] highest plant power / flat power (NaN: free).
        step_s: step length [s].
        keep_production: hold the metal within the production tolerance of flat operation.
        source: where it came from (file path or ``builtin``).
    """

    name: str
    description: str
    price_eur_per_mwh: np.ndarray
    band_lo: np.ndarray
    band_hi: np.ndarray
    step_s: float = 3600.0
    keep_production: bool = True
    source: str = "builtin"
    requests: list[dict[str, float]] = field(default_factory=list)
    superheat_min_k: float | None = None  # a request's own lower superheat band [K] (None: the planner's)

    @property
    def n_steps(self) -> int:
        return len(self.price_eur_per_mwh)

    @property
    def hours(self) -> float:
        return self.n_steps * self.step_s / 3600.0

    @property
    def is_request(self) -> bool:
        return bool(np.any(np.isfinite(self.band_lo)) or np.any(np.isfinite(self.band_hi)))

    def truncated(self, hours: float) -> Scenario:
        """The first ``hours`` of the scenario (quick runs and tests)."""
        n = max(1, min(self.n_steps, int(round(hours * 3600.0 / self.step_s))))
        return Scenario(
            self.name,
            self.description + f" (first {n * self.step_s / 3600.0:g} h)",
            self.price_eur_per_mwh[:n].copy(),
            self.band_lo[:n].copy(),
            self.band_hi[:n].copy(),
            self.step_s,
            self.keep_production,
            self.source,
            [
                {**r, "end_h": min(r["end_h"], n * self.step_s / 3600.0)}
                for r in self.requests
                if r["start_h"] < n * self.step_s / 3600.0
            ],
            self.superheat_min_k,
        )


# --- shipped scenarios ---------------------------------------------------------------------


def _day_ahead(hours: int, negative_noon: bool) -> np.ndarray:
    """A made-up day-ahead curve [EUR/MWh] per hour: cheap nights (~40), a morning shoulder,
    the evening peak 17-21 h (~160), and with ``negative_noon`` a solar surplus 11-15 h
    going to -40 EUR/MWh at 13 h."""
    day = np.array(
        [45, 42, 40, 38, 38, 42, 60, 85, 95, 90, 80, 70, 65, 62, 66, 80, 105, 140, 165, 160, 130, 100, 75, 55],
        dtype=float,
    )
    if negative_noon:
        day[10:16] = [30.0, 5.0, -20.0, -40.0, -15.0, 20.0]
    reps = int(math.ceil(hours / 24))
    curve = np.tile(day, reps)[:hours]
    if hours > 24:  # the second day a little dearer, so the days are not identical
        curve[24:] = curve[24:] * 1.08
    return curve


def _nan(n: int) -> np.ndarray:
    return np.full(n, np.nan)


def price_day_ahead_48h() -> Scenario:
    p = _day_ahead(48, negative_noon=False)
    return Scenario(
        "price_day_ahead_48h", "48 h day-ahead prices: cheap nights, expensive evenings", p, _nan(48), _nan(48)
    )


def price_negative_noon_48h() -> Scenario:
    p = _day_ahead(48, negative_noon=True)
    return Scenario(
        "price_negative_noon_48h",
        "48 h day-ahead prices with a solar surplus: negative prices around noon, expensive evenings",
        p,
        _nan(48),
        _nan(48),
    )


def _request(name: str, desc: str, hours: int, reqs: list[tuple[float, float, float, float]]) -> Scenario:
    price = np.full(hours, 80.0)  # a flat reference price to report the cost at [EUR/MWh]
    lo, hi = _nan(hours), _nan(hours)
    out = []
    for start, end, pct, tol in reqs:
        sl = slice(int(start), int(end))
        lo[sl] = max(1.0 + (pct - tol) / 100.0, 0.0)
        hi[sl] = max(1.0 + (pct + tol) / 100.0, 0.0)
        out.append({"start_h": start, "end_h": end, "power_pct": pct, "tolerance_pct": tol})
    return Scenario(name, desc, price, lo, hi, keep_production=False, requests=out)


def request_minus25_48h() -> Scenario:
    return _request(
        "request_minus25_48h",
        "grid request: -25 % power for 48 h from h 2 (TRIMET's claim), 2 h notice",
        52,
        [(2, 50, -25, 1)],
    )


def request_plus25_48h() -> Scenario:
    return _request(
        "request_plus25_48h",
        "grid request: +25 % power for 48 h from h 2 (TRIMET's claim), 2 h notice",
        52,
        [(2, 50, 25, 1)],
    )


def request_shed_1h() -> Scenario:
    sc = _request(
        "request_shed_1h",
        "grid request: full shed (zero power) for one hour at h 2, then recover",
        24,
        [(2, 3, -100, 0)],
    )
    sc.keep_production = True  # the day's metal made up after the shed
    # during and after a shed the bath may run colder than in normal operation: the band's
    # floor is the liquidus plus 1 K (no bath freezing; the twin's envelope flags < 0 K)
    sc.superheat_min_k = 1.0
    return sc


#: name -> constructor of the shipped scenarios
SCENARIOS = {
    f.__name__: f
    for f in (price_day_ahead_48h, price_negative_noon_48h, request_minus25_48h, request_plus25_48h, request_shed_1h)
}


def scenario_names() -> list[str]:
    return list(SCENARIOS)


# --- files -----------------------------------------------------------------------------------


def _num(src: str, key: str, v: Any, lo: float = -math.inf, hi: float = math.inf) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise ScenarioError(f"{src}: {key}: expected a number within [{lo:g}, {hi:g}], got {v!r}")
    return float(v)


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A shipped scenario by name, or a scenario TOML file (format in the module doc).

    Raises:
        ScenarioError: unknown name, unreadable file, bad TOML, or a bad key (named).
    """
    s = str(name_or_path)
    if s in SCENARIOS:
        return SCENARIOS[s]()
    p = Path(s)
    if p.suffix != ".toml" and not p.exists():
        raise ScenarioError(f"{s}: expected a scenario name ({', '.join(SCENARIOS)}) or a TOML file")
    try:
        doc = tomllib.loads(p.read_text())
    except OSError as e:
        raise ScenarioError(f"{p}: cannot read the scenario: {e.strerror or e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{p}: not TOML: {e}") from e
    return scenario_from_dict(doc, str(p))


def scenario_from_dict(doc: dict[str, Any], src: str = "<scenario>") -> Scenario:
    """Validate scenario data (the TOML layout); errors name ``src`` and the key."""
    known = {"scenario", "price", "request"}
    for k in doc:
        if k not in known:
            raise ScenarioError(f"{src}: {k}: unknown table (expected {', '.join(sorted(known))})")
    meta = doc.get("scenario", {})
    if not isinstance(meta, dict):
        raise ScenarioError(f"{src}: scenario: expected a table")
    for k in meta:
        if k not in {"name", "description", "step_s", "keep_production", "superheat_min_k"}:
            raise ScenarioError(
                f"{src}: scenario.{k}: unknown key (expected name, description, step_s, keep_production, superheat_min_k)"
            )
    name = meta.get("name", Path(src).stem)
    if not isinstance(name, str) or not name:
        raise ScenarioError(f"{src}: scenario.name: expected a non-empty string, got {name!r}")
    step_s = _num(src, "scenario.step_s", meta.get("step_s", 3600.0), 300.0, 86400.0)
    price_t = doc.get("price")
    if not isinstance(price_t, dict) or "eur_per_mwh" not in price_t:
        raise ScenarioError(f"{src}: price.eur_per_mwh: expected a list of prices [EUR/MWh], one per step")
    prices = price_t["eur_per_mwh"]
    if not isinstance(prices, list) or not prices:
        raise ScenarioError(f"{src}: price.eur_per_mwh: expected a non-empty list of numbers, got {prices!r}")
    if len(prices) > 7 * 24 * 3600 / step_s:
        raise ScenarioError(f"{src}: price.eur_per_mwh: expected at most a week of steps, got {len(prices)}")
    price = np.array(
        [_num(src, f"price.eur_per_mwh[{i}]", v, -5000.0, 20000.0) for i, v in enumerate(prices)], dtype=float
    )
    n = len(price)
    lo, hi = _nan(n), _nan(n)
    reqs_in = doc.get("request", [])
    if not isinstance(reqs_in, list):
        raise ScenarioError(f"{src}: request: expected an array of tables ([[request]])")
    reqs = []
    for i, r in enumerate(reqs_in):
        key = f"request[{i}]"
        if not isinstance(r, dict):
            raise ScenarioError(f"{src}: {key}: expected a table")
        for k in r:
            if k not in {"start_h", "end_h", "power_pct", "tolerance_pct"}:
                raise ScenarioError(
                    f"{src}: {key}.{k}: unknown key (expected start_h, end_h, power_pct, tolerance_pct)"
                )
        for k in ("start_h", "end_h", "power_pct"):
            if k not in r:
                raise ScenarioError(f"{src}: {key}.{k}: missing")
        horizon_h = n * step_s / 3600.0
        start = _num(src, f"{key}.start_h", r["start_h"], 0.0, horizon_h)
        end = _num(src, f"{key}.end_h", r["end_h"], start, horizon_h)
        pct = _num(src, f"{key}.power_pct", r["power_pct"], -100.0, 100.0)
        tol = _num(src, f"{key}.tolerance_pct", r.get("tolerance_pct", 1.0), 0.0, 50.0)
        sl = slice(int(round(start * 3600.0 / step_s)), int(round(end * 3600.0 / step_s)))
        lo[sl] = max(1.0 + (pct - tol) / 100.0, 0.0)
        hi[sl] = max(1.0 + (pct + tol) / 100.0, 0.0)
        reqs.append({"start_h": start, "end_h": end, "power_pct": pct, "tolerance_pct": tol})
    keep = meta.get("keep_production", not reqs)
    if not isinstance(keep, bool):
        raise ScenarioError(f"{src}: scenario.keep_production: expected true or false, got {keep!r}")
    desc = meta.get("description", "")
    if not isinstance(desc, str):
        raise ScenarioError(f"{src}: scenario.description: expected a string, got {desc!r}")
    sh_min = meta.get("superheat_min_k")
    if sh_min is not None:
        sh_min = _num(src, "scenario.superheat_min_k", sh_min, 0.0, 20.0)
    return Scenario(name, desc, price, lo, hi, step_s, keep, src, reqs, sh_min)
