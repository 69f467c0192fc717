"""Value + quality + timestamp: what every tag read yields.

A ``Sample`` is what a scan hands upwards: the engineering value, a quality in the
OPC UA sense (GOOD / UNCERTAIN / BAD) with a short human reason when it is not
GOOD, and the time of the scan on the caller's clock (seconds, see
``twin/clock.py``). Nothing here does I/O.

Reasons are plain strings meant for operators and the journal, e.g.
``"modbus exception 2 illegal address"``, ``"timeout"``, ``"non-finite"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import TypeAlias

import numpy as np

__all__ = [
    "COMMS_CODES",
    "MODBUS_EXCEPTION_NAMES",
    "Quality",
    "Sample",
    "SampleValue",
    "WriteResult",
    "modbus_exception_reason",
]

#: What a read can yield: float/int/bool from Modbus and OPC UA scalars, str from OPC UA
#: String nodes, ``np.ndarray`` from OPC UA array nodes; None when nothing usable was read.
SampleValue: TypeAlias = float | int | bool | str | np.ndarray | None

#: WriteResult codes that mean the link failed (not the PLC's judgement)
COMMS_CODES = frozenset({-1, -2, -3, -4})


class Quality(IntEnum):
    """Quality of a value, ordered so that ``max()`` gives the worst one."""

    GOOD = 0
    UNCERTAIN = 1
    BAD = 2


#: Modbus exception codes (Modbus Application Protocol v1.1b3, section 7).
MODBUS_EXCEPTION_NAMES: dict[int, str] = {
    1: "illegal function",
    2: "illegal address",
    3: "illegal value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target no response",
}


def modbus_exception_reason(code: int) -> str:
    """Reason text for Modbus exception ``code``, e.g. ``"modbus exception 2 illegal address"``."""
    name = MODBUS_EXCEPTION_NAMES.get(int(code), "unknown")
    return f"modbus exception {int(code)} {name}"


@dataclass(frozen=True, slots=True)
class Sample:
    """One tag value as read.

    Attributes:
        value: engineering value (float for scaled/real tags, int for unscaled
            integer tags, bool for bits; over OPC UA also str for String nodes and
            ``np.ndarray`` for array nodes); ``None`` when nothing usable was read.
        quality: GOOD, UNCERTAIN or BAD.
        t: time of the read on the reader's clock [s].
        reason: why the quality is not GOOD ("" when GOOD).
    """

    value: SampleValue
    quality: Quality
    t: float
    reason: str = ""

    @property
    def good(self) -> bool:
        """True when the quality is GOOD (the only quality a controller should act on)."""
        return self.quality is Quality.GOOD

    def age(self, now: float) -> float:
        """Seconds since the sample was taken, on the same clock as ``t``."""
        return now - self.t

    @classmethod
    def good_value(cls, value: float | int | bool, t: float) -> Sample:
        """A GOOD sample."""
        return cls(value, Quality.GOOD, t, "")

    @classmethod
    def bad(cls, reason: str, t: float, value: float | int | bool | None = None) -> Sample:
        """A BAD sample with ``reason`` (the value, if any, must not be acted on)."""
        return cls(value, Quality.BAD, t, reason)

    @classmethod
    def uncertain(cls, value: float | int | bool | None, reason: str, t: float) -> Sample:
        """An UNCERTAIN sample (e.g. engineering range exceeded)."""
        return cls(value, Quality.UNCERTAIN, t, reason)

    def __str__(self) -> str:
        q = self.quality.name
        return f"{self.value!r} [{q}{': ' + self.reason if self.reason else ''}] @ {self.t:.3f}s"


@dataclass(frozen=True, slots=True)
class WriteResult:
    """Outcome of one ``write``.

    Attributes:
        tag: tag name.
        requested: engineering value asked for.
        written: engineering value the registers now carry (after rounding to the
            type), None if nothing was sent.
        ok: the PLC acknowledged the write.
        reason: why not ("" when ok).
        code: 0 ok, > 0 Modbus exception code (the PLC refused), < 0 local/link
            reason (-1 timeout, -2 not connected, -3 connection lost, -4 protocol
            error, -6 outside bounds).
    """

    tag: str
    requested: float | int | bool
    written: float | int | bool | None
    ok: bool
    reason: str = ""
    code: int = 0

    @property
    def comms_failure(self) -> bool:
        """True when the link (not the PLC's judgement) made the write fail."""
        return self.code in COMMS_CODES
