"""Value + quality + timestamp: what every tag read yields.

A ``Sample`` is what a scan hands upwards: the engineering value, a quality in the
OPC UA sense (GOOD / UNCERTAIN / BAD) with a short human reason when it is not
GOOD, and the time of the scan on the caller's clock (seconds, see
``twin/clock.py``). Nothing here does I/O.

Reasons are plain strings meant for operators and the journal, e.g.
``"modbus exception 2 illegal address"``, ``"timeout"``, ``"non-finite"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import TypeAlias

import numpy as np

__all__ = [
    "COMMS_CODES",
    "MODBUS_EXCEPTION_NAMES",
    "LinkStatus",
    "Quality",
    "Sample",
    "SampleValue",
    "ValueQuality",
    "WriteResult",
    "modbus_exception_reason",
    "opcua_status_name",
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


def opcua_status_name(quality: Quality | int, reason: str = "") -> str:
    """The OPC UA StatusCode name (``ua.StatusCodes.<name>``) a mirror publishes for a value
    of this quality and reason (OPC 10000-4 §7.39, 10000-8 for the EU ones).

    GOOD -> ``Good``; UNCERTAIN: ``UncertainEngineeringUnitsExceeded`` (beyond the map's
    range), ``UncertainLastUsableValue`` (held from an older scan); BAD:
    ``BadNoCommunication`` (link down, stale, never read), ``BadOutOfRange`` (implausible,
    not in the enumeration), ``BadSensorFailure`` (non-finite, frozen),
    ``BadDeviceFailure`` (a Modbus exception or a Bad status from the PLC), else
    ``BadConfigurationError`` (undecodable: the map does not fit the PLC).
    """
    q = Quality(int(quality))
    r = reason.lower()
    if q is Quality.GOOD:
        return "Good"
    if q is Quality.UNCERTAIN:
        if r.startswith("last usable"):
            return "UncertainLastUsableValue"
        if "range exceeded" in r:
            return "UncertainEngineeringUnitsExceeded"
        return "Uncertain"
    if any(k in r for k in ("link", "stale", "not read", "not connected", "connection", "timeout", "no data")):
        return "BadNoCommunication"
    if "implausible" in r or "enumeration" in r:
        return "BadOutOfRange"
    if "non-finite" in r or "frozen" in r:
        return "BadSensorFailure"
    if r.startswith("modbus exception") or r.startswith("bad"):
        return "BadDeviceFailure"
    return "BadConfigurationError"


@dataclass(slots=True)
class ValueQuality:
    """Quality of one measured array (one value per line or per cell), as last read.

    Attributes:
        quality: [n] ``Quality`` codes (uint8).
        t_s: [n] plant time of the PLC scan the value came from [s] (NaN: never read);
            a value held from an older scan keeps that scan's time.
        reason: [n] why it is not GOOD ("" when GOOD), object array of str.
    """

    quality: np.ndarray
    t_s: np.ndarray
    reason: np.ndarray

    @classmethod
    def never(cls, n: int, reason: str = "not read yet") -> ValueQuality:
        """``n`` values never read: BAD, no source time."""
        return cls(np.full(n, Quality.BAD, dtype=np.uint8), np.full(n, np.nan), np.full(n, reason, dtype=object))

    def set(self, i: int | np.ndarray, quality: Quality | np.ndarray, t_s: float | np.ndarray,
            reason: str | np.ndarray) -> None:  # fmt: skip
        """Set element(s) ``i``."""
        self.quality[i] = quality
        self.t_s[i] = t_s
        self.reason[i] = reason

    def status_names(self) -> list[str]:
        """The OPC UA StatusCode name of each value (``opcua_status_name``)."""
        return [opcua_status_name(int(q), str(r)) for q, r in zip(self.quality, self.reason, strict=True)]

    @property
    def good(self) -> np.ndarray:
        return self.quality == Quality.GOOD


@dataclass(slots=True)
class LinkStatus:
    """One PLC link as the bridge saw it at its last scan (for a link-state node, /readyz).

    Attributes:
        device: ``rectifier:Line1`` / ``potroom:Potroom2``.
        up: the last scan reached the PLC and read at least one tag.
        reason: why not ("" when up).
        scan_t: plant time of the last scan [s] (NaN: none yet).
        last_good_t: plant time of the last scan with the link up [s] (NaN: never).
        capability_losses: what the device's map does not give, and what that costs
            (``no heartbeat_in: ...``).
    """

    device: str
    up: bool
    reason: str = ""
    scan_t: float = float("nan")
    last_good_t: float = float("nan")
    capability_losses: list[str] = field(default_factory=list)
