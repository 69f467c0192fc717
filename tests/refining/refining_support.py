"""Shared helpers for the refining tests: a historian-style recording and candidate controllers.

The recordings are made by the twin playing a 3 kA pot with known (hidden) parameters,
run by the nominal policy and logged the way a PLC/historian would log it — the hidden
values are the independent truth the tests check against.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from refining import model as rf
from refining.campaign import degrade_recording, record_cycle
from refining.config import RefiningConfig
from refining.controller import PolicyParams, RefiningPolicy, policy_presets
from refining.recording import write_recording

#: rounding of a historian export (what a PLC logger keeps)
DECIMALS = {
    "current_a": 1,
    "voltage_v": 4,
    "temperature_c": 2,
    "heater_kw": 3,
    "current_sp_a": 1,
    "heater_sp_c": 2,
    "charge_kg": 3,
    "tap_kg": 3,
    "assay_fe_pct": 5,
    "assay_cu_pct": 5,
    "assay_si_pct": 5,
}


def recorded_columns(
    cfg: RefiningConfig, factors: dict[str, float], seed: int, policy: str = "nominal"
) -> dict[str, np.ndarray]:
    """One whole cycle of a pot with hidden ``factors``, as its PLC logs it (``end_reason`` dropped)."""
    pol = RefiningPolicy(policy_presets(cfg)[policy], 1, cfg.operation.control_period_s)
    cols = record_cycle(cfg, pol, factors=factors, seed=seed)
    cols.pop("end_reason")
    return cols


def historian_csv(
    cols: dict[str, np.ndarray],
    path: Path,
    *,
    gap: tuple[float, float] | None = None,
    blanks: int = 0,
    seed: int = 0,
    t0_utc: str = "2025-10-01T00:00:00Z",
) -> Path:
    """Write ``cols`` like a historian export: ISO-8601 timestamps, rounded values, an outage, blanks."""
    out = degrade_recording(cols, gap=gap, blanks=blanks, seed=seed)
    return write_recording(
        out, path, meta={"synthetic": True, "source": "tests"}, t0_utc=t0_utc, decimals=DECIMALS, blank_zero_events=True
    )


def policy(cfg: RefiningConfig, name: str = "nominal", **changes: float) -> PolicyParams:
    """A preset with some fields changed."""
    pp = policy_presets(cfg)[name]
    return pp.with_(**changes) if changes else pp


def factory(cfg: RefiningConfig, pp: PolicyParams):
    """``f(n) -> policy`` for ``run_shadow``."""
    return lambda n: RefiningPolicy(pp, n, cfg.operation.control_period_s)


class NegativeTap:
    """The nominal controller, except that its tap on day ``day`` asks for ``kg`` (< 0)."""

    def __init__(self, cfg: RefiningConfig, n: int, day: float = 2.0, kg: float = -50.0) -> None:
        self.inner = RefiningPolicy(policy_presets(cfg)["nominal"], n, cfg.operation.control_period_s)
        self.at_s = day * 86400.0
        self.period_s = cfg.operation.control_period_s
        self.kg = kg

    def step(self, readings: rf.PotReadings, now_s: float) -> rf.PotInputs:
        cmd = self.inner.step(readings, now_s)
        if self.at_s <= now_s < self.at_s + self.period_s:
            cmd.tap_kg = np.full(np.shape(cmd.tap_kg), self.kg)
        return cmd


def nan_current(cfg: RefiningConfig) -> PolicyParams:
    return policy(cfg, current_a=math.nan).with_(name="nan_current")


def never_tap(cfg: RefiningConfig) -> PolicyParams:
    return policy(cfg, tap_every_h=1e7).with_(name="never_tap")


def hot(cfg: RefiningConfig) -> PolicyParams:
    """Every command within [safety]: current at its maximum, heater setpoint at its maximum."""
    return policy(cfg, current_a=cfg.safety.current_max_a, heater_c=cfg.safety.heater_setpoint_max_c).with_(name="hot")
