"""What the daemon knows about each PLC link, judged from the bridge's scans.

``LinkTracker.update`` runs after every scan: a link is up when its last scan reached
the PLC and at least one tag was good. Transitions are logged, journalled
(``comms_lost`` / ``comms_restored``) and counted; ``/readyz`` and the metrics show the
state per PLC. The mode machine's control interlock reads ``down()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import structlog

if TYPE_CHECKING:
    from plc_bridge.quality import Sample
    from plc_bridge.safe_write import SafeWriter
    from potline.daemon_config import PlcSection
    from potline.metrics import DaemonMetrics, HealthState
    from potline.recorder import JournalRecorder

__all__ = ["DeviceView", "Link", "LinkTracker", "ScanView", "scan_health"]

log = structlog.get_logger("potline.daemon")


class ScanView(Protocol):
    """One device scan as the bridge keeps it (``plc_bridge.plant``)."""

    @property
    def link_ok(self) -> bool: ...
    @property
    def scalars(self) -> Mapping[str, Sample]: ...
    @property
    def fields(self) -> Mapping[str, tuple[np.ndarray, np.ndarray]]: ...


class DeviceView(Protocol):
    """One PLC of the bridge: its names, last scan and safe writer (None before start)."""

    @property
    def kind(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def device(self) -> str: ...
    @property
    def last(self) -> ScanView | None: ...
    @property
    def writer(self) -> SafeWriter | None: ...


@dataclass(slots=True)
class Link:
    """What the daemon knows about one PLC link."""

    name: str  # config name, e.g. rectifier1
    device: str  # bridge device, e.g. rectifier:Line1
    kind: str
    up: bool | None = None  # None: not scanned yet
    reason: str = ""
    last_good_mono: float | None = None
    faults: int = 0
    refused_reason: str = ""
    refused_journal_mono: float = -math.inf
    refused_count: int = 0


def scan_health(sc: ScanView | None) -> tuple[bool, str, int]:
    """(up, reason, bad tag count) of a device's last scan."""
    if sc is None:
        return False, "not scanned yet", 0
    n_bad = sum(1 for s in sc.scalars.values() if not s.good)
    n_good = len(sc.scalars) - n_bad
    for _v, g in sc.fields.values():
        gb = int(np.count_nonzero(g))
        n_good += gb
        n_bad += int(g.size) - gb
    if not sc.link_ok:
        reasons = [s.reason for s in sc.scalars.values() if s.reason]
        return False, reasons[0] if reasons else "no link", n_bad
    if n_good == 0:
        reasons = [s.reason for s in sc.scalars.values() if s.reason]
        return False, "every tag bad" + (f": {reasons[0]}" if reasons else ""), n_bad
    return True, "", n_bad


def where_of(device: DeviceView) -> dict[str, Any]:
    """Journal location of a device (its line or room)."""
    return {"line": device.name} if device.kind == "rectifier" else {"room": device.name}


class LinkTracker:
    """Per-PLC link state (see the module docstring).

    Args:
        plcs: the configured PLCs.
        name: instance name (metric label).
        metrics, health: the daemon's metrics and health state.
        recorder: the journal.
        on_change: called after any link changed state (systemd status line).
        on_event: called with (``comms_lost`` | ``comms_restored``, PLC name, detail) at
            each journalled transition (the alarms).
    """

    def __init__(self, plcs: Sequence[PlcSection], name: str, metrics: DaemonMetrics, health: HealthState,
                 recorder: JournalRecorder, on_change: Callable[[], None] | None = None,
                 on_event: Callable[[str, str, str], None] | None = None) -> None:  # fmt: skip
        self.links: dict[str, Link] = {pc.device: Link(pc.name, pc.device, pc.kind) for pc in plcs}
        self.name = name
        self.metrics = metrics
        self.health = health
        self.recorder = recorder
        self.on_change = on_change
        self.on_event = on_event

    def get(self, device: str) -> Link | None:
        return self.links.get(device)

    def name_of(self, device: str) -> str:
        """The configured PLC name of a bridge device (the device itself when unknown)."""
        lk = self.links.get(device)
        return lk.name if lk is not None else device

    def down(self) -> tuple[str, ...]:
        """Names of the links that are not up (or not scanned yet), sorted."""
        return tuple(sorted(lk.name for lk in self.links.values() if not lk.up))

    def reset_metrics(self) -> None:
        """Every link down until scanned (at start)."""
        for lk in self.links.values():
            self.metrics.plc_up.labels(self.name, lk.name).set(0)
            self.health.plc_up[lk.name] = False

    def update(self, devices: Iterable[DeviceView], now_mono: float) -> None:
        """Judge every device's last scan; log, journal and count transitions."""
        changed = False
        for d in devices:
            lk = self.links.get(d.device)
            if lk is None:
                continue
            up, reason, n_bad = scan_health(d.last)
            self.metrics.bad_tags.labels(self.name, lk.name).set(n_bad)
            if up:
                lk.last_good_mono = now_mono
            if up != lk.up:
                self._transition(lk, d, up, reason)
                changed = True
            if not up:
                self.metrics.comms_errors.labels(self.name, lk.name).inc()
        if changed and self.on_change is not None:
            self.on_change()

    def _transition(self, lk: Link, d: DeviceView, up: bool, reason: str) -> None:
        prev = lk.up
        lk.up = up
        lk.reason = reason
        self.metrics.plc_up.labels(self.name, lk.name).set(1.0 if up else 0.0)
        self.health.plc_up[lk.name] = up
        where: dict[str, Any] = where_of(d)
        if not up:
            lk.faults += 1
            self.metrics.comms_faults.labels(self.name, lk.name).inc()
            log.warning("plc.comms_lost", plc=lk.name, device=d.device, reason=reason, **where)
            self.recorder.append("comms_lost", source=lk.name, detail=f"{d.device}: {reason}",
                                 data={"device": d.device, "first_scan": prev is None}, **where)  # fmt: skip
            self._event("comms_lost", lk.name, f"{d.device}: {reason}")
        elif prev is not None:
            log.info("plc.comms_restored", plc=lk.name, device=d.device, **where)
            self.recorder.append("comms_restored", source=lk.name, detail=f"{d.device}: link up, state re-read",
                                 data={"device": d.device}, **where)  # fmt: skip
            self._event("comms_restored", lk.name, f"{d.device}: link up")
        else:
            log.info("plc.connected", plc=lk.name, device=d.device, **where)

    def _event(self, kind: str, plc: str, detail: str) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(kind, plc, detail)
        except Exception:
            log.exception("plc.link_event_failed", kind=kind, plc=plc)

    def scan_ages(self, now_mono: float, started_mono: float) -> None:
        """Age of each link's newest good scan into the metrics (before a scrape)."""
        for lk in self.links.values():
            age = now_mono - (lk.last_good_mono if lk.last_good_mono is not None else started_mono)
            self.metrics.scan_age.labels(self.name, lk.name).set(age)
