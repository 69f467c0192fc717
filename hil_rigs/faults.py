"""Fault injection for the HIL rig: what can go wrong between a controller and its PLCs.

A ``Fault`` is data (TOML ``[[faults]]`` in a scenario, or built in a test) with a
``kind``, a ``target`` and, for most kinds, a ``duration_s`` after which the rig clears
it by itself. Times are plant seconds except ``delay_s`` (network latency is wall time:
the network does not run in accelerated time).

Kinds (``FAULT_KINDS``):

=================  ==================================================================
``link_drop``      the proxy in front of the target drops the link (``mode`` =
                   ``refuse``: resets; ``blackhole``: silence, clients time out)
``latency``        ``delay_s`` added to every chunk in both directions
``frozen_sensor``  ``quantity`` of ``cells`` (or of the target line) stops updating
``noisy_sensor``   gaussian noise of ``std`` added to ``quantity`` of ``cells``
``bad_sensor``     ``quantity`` of ``cells`` reads NaN (a broken transmitter)
``plc_restart``    the target PLC reboots: server down for ``downtime_s``, memory
                   zeroed, local control until the heartbeat returns
``rectifier_trip`` protection trip of ``line``; the operator resets it after
                   ``duration_s`` (omit: stays tripped until the controller or a later
                   event resets it)
``exception``      every request to the target (with ``probability``) is answered
                   with Modbus exception ``code`` / OPC UA Bad status
``local_switch``   the operator turns the target's selector to local
``feeder_fault``   feeders of ``cells`` refuse commands (status bit 4)
=================  ==================================================================

Targets: ``"all"``, ``"rectifier"`` / ``"potroom"`` (every PLC of that kind), or one PLC
as ``"rectifier:Line1"`` / ``"potroom:Potroom2"``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from twin.configcore import StrictModel

__all__ = ["FAULT_KINDS", "Fault", "SensorOverride"]

FAULT_KINDS = (
    "link_drop",
    "latency",
    "frozen_sensor",
    "noisy_sensor",
    "bad_sensor",
    "plc_restart",
    "rectifier_trip",
    "exception",
    "local_switch",
    "feeder_fault",
)

FaultKind = Literal[
    "link_drop", "latency", "frozen_sensor", "noisy_sensor", "bad_sensor", "plc_restart", "rectifier_trip",
    "exception", "local_switch", "feeder_fault",
]  # fmt: skip


class Fault(StrictModel):
    """One fault to inject (see module docstring for the kinds and their fields).

    Attributes:
        kind: what goes wrong.
        at_s: plant time to inject it (scenario faults; ``Rig.inject`` injects now).
        duration_s: plant seconds until the rig clears it (None: until cleared).
        target: which PLC(s) (network, PLC and exception faults).
        mode: ``link_drop`` mode.
        delay_s: ``latency`` per direction [wall s].
        cells: cell indices (0-based, plant order) for sensor and feeder faults.
        quantity: ``voltage`` (cell) or ``line_current`` (rectifier) for sensor faults.
        std: ``noisy_sensor`` standard deviation [V or kA].
        downtime_s: ``plc_restart`` time the PLC is unreachable [plant s].
        line: ``rectifier_trip`` line index.
        code: ``exception`` Modbus exception code (4 device failure, 6 busy, ...).
        probability: ``exception`` share of requests refused.
    """

    kind: FaultKind
    at_s: float = Field(0.0, ge=0.0)
    duration_s: float | None = Field(None, gt=0.0)
    target: str = "all"
    mode: Literal["refuse", "blackhole"] = "refuse"
    delay_s: float = Field(0.0, ge=0.0, le=30.0)
    cells: list[int] = Field(default_factory=list)
    quantity: Literal["voltage", "line_current"] = "voltage"
    std: float = Field(0.0, ge=0.0)
    downtime_s: float = Field(5.0, ge=0.0)
    line: int = Field(0, ge=0)
    code: int = Field(6, ge=1, le=255)
    probability: float = Field(1.0, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _fields_for_kind(self) -> Fault:
        k = self.kind
        if k == "latency" and self.delay_s <= 0:
            raise ValueError("latency fault needs delay_s > 0")
        if k == "noisy_sensor" and self.std <= 0:
            raise ValueError("noisy_sensor fault needs std > 0")
        if k in ("frozen_sensor", "noisy_sensor", "bad_sensor") and self.quantity == "voltage" and not self.cells:
            raise ValueError(f"{k} on cell voltages needs cells = [...]")
        if k == "feeder_fault" and not self.cells:
            raise ValueError("feeder_fault needs cells = [...]")
        return self

    @field_validator("target")
    @classmethod
    def _target(cls, t: str) -> str:
        if t not in ("all", "rectifier", "potroom") and not t.startswith(("rectifier:", "potroom:")):
            raise ValueError("expected 'all', 'rectifier', 'potroom', 'rectifier:<Line>' or 'potroom:<Room>'")
        return t

    def label(self) -> str:
        """Short human description for logs and reports."""
        parts: list[str] = [self.kind]
        if self.kind in ("link_drop", "latency", "plc_restart", "exception", "local_switch"):
            parts.append(self.target)
        if self.kind == "link_drop":
            parts.append(self.mode)
        if self.kind == "latency":
            parts.append(f"+{self.delay_s * 1e3:.0f} ms")
        if self.cells:
            parts.append(f"cells {self.cells[:6]}{'...' if len(self.cells) > 6 else ''}")
        if self.kind == "rectifier_trip":
            parts.append(f"line {self.line}")
        if self.duration_s:
            parts.append(f"for {self.duration_s:g} s")
        return " ".join(parts)

    def matches(self, device: str) -> bool:
        """Does this fault's target include PLC ``device`` (``"potroom:Potroom1"`` etc.)?"""
        if self.target == "all":
            return True
        if ":" not in self.target:
            return device.split(":", 1)[0] == self.target
        return device == self.target


class SensorOverride:
    """Active sensor faults on one array of published values (pure, seeded)."""

    def __init__(self, n: int, seed: int = 11) -> None:
        self.n = n
        self.frozen = np.full(n, np.nan)
        self.freeze_mask = np.zeros(n, dtype=bool)
        self.noise_std = np.zeros(n)
        self.bad = np.zeros(n, dtype=bool)
        self._rng = np.random.default_rng(seed)

    @property
    def active(self) -> bool:
        return bool(self.freeze_mask.any() or self.bad.any() or self.noise_std.any())

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Published values with the faults applied (a copy when any is active)."""
        if not self.active:
            return values
        out = np.array(values, dtype=np.float64, copy=True)
        if self.noise_std.any():
            out += self._rng.standard_normal(self.n) * self.noise_std
        out = np.where(self.freeze_mask, self.frozen, out)
        out[self.bad] = np.nan
        return out

    def set(self, fault: Fault, idx: np.ndarray, current: np.ndarray, on: bool) -> None:
        """Switch ``fault`` on/off for elements ``idx`` (``current`` = values now, for freezing)."""
        if fault.kind == "frozen_sensor":
            self.freeze_mask[idx] = on
            self.frozen[idx] = current[idx] if on else np.nan
        elif fault.kind == "noisy_sensor":
            self.noise_std[idx] = fault.std if on else 0.0
        elif fault.kind == "bad_sensor":
            self.bad[idx] = on
