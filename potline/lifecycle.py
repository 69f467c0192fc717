"""The daemon as a process: stop requests and signals, background tasks, the hand-back.

* ``Lifecycle``: the stop event (SIGTERM/SIGINT), SIGHUP ignored with a hint, the mode
  signals (``SIGUSR1``: apply the mode file now, ``SIGUSR2``: observe now) run as tasks
  (a signal handler never blocks the loop), systemd's ``STOPPING=1``;
* ``hand_back``: on a stop from ``control``, stop commanding (writers disabled: no
  heartbeat, no command) and wait, bounded, until every PLC reports local control,
  with systemd told to allow the extra stop time.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from plc_bridge.plant import BridgePlant
    from potline.metrics import HealthState
    from potline.sd_notify import Notifier

__all__ = ["Handback", "Lifecycle", "hand_back"]

log = structlog.get_logger("potline.daemon")

#: extra stop time asked of systemd beyond the hand-back timeout [wall s]
HANDBACK_EXTRA_S = 10.0


class Lifecycle:
    """Stop requests, signals and background tasks of the daemon process.

    Call ``bind()`` inside the running event loop before anything else.
    """

    def __init__(self, notifier: Notifier, health: HealthState) -> None:
        self.notifier = notifier
        self.health = health
        self.stop_event: asyncio.Event | None = None
        self.stop_reason = ""
        self.tasks: list[asyncio.Task[Any]] = []

    def bind(self) -> asyncio.Event:
        """Create the stop event in the running loop."""
        self.stop_event = asyncio.Event()
        return self.stop_event

    @property
    def stopping(self) -> bool:
        return self.stop_event is not None and self.stop_event.is_set()

    def request_stop(self, why: str = "stop requested") -> None:
        """Ask the daemon to stop (idempotent)."""
        if self.stop_event is not None and not self.stop_event.is_set():
            log.info("daemon.stopping", reason=why)
            self.stop_reason = why
            self.notifier.stopping(f"stopping ({why})")
            self.health.stopping = True
            self.stop_event.set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a tracked task (cancelled at the stop)."""
        t = asyncio.get_running_loop().create_task(coro)
        self.tasks.append(t)
        t.add_done_callback(lambda tt: self.tasks.remove(tt) if tt in self.tasks else None)
        return t

    def install_signals(self, *, on_usr1: Callable[[], Coroutine[Any, Any, Any]] | None = None,
                        on_usr2: Callable[[], Coroutine[Any, Any, Any]] | None = None) -> None:  # fmt: skip
        """SIGTERM/SIGINT stop; SIGHUP is ignored (the config is read at start); the mode signals."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self.request_stop, "SIGINT")
        loop.add_signal_handler(signal.SIGHUP, lambda: log.warning(
            "signal.ignored", signal="SIGHUP", hint="configuration is read at start: restart to reload"))  # fmt: skip
        if on_usr1 is not None:
            loop.add_signal_handler(signal.SIGUSR1, lambda: self.spawn(on_usr1()))
        if on_usr2 is not None:
            loop.add_signal_handler(signal.SIGUSR2, lambda: self.spawn(on_usr2()))

    async def wait_stop(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` [wall s] for a stop request; True when one came."""
        assert self.stop_event is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.stop_event.wait(), timeout_s)
        return self.stop_event.is_set()

    async def cancel_tasks(self) -> None:
        """Cancel every background task and wait for them."""
        tasks = list(self.tasks)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t


@dataclass(frozen=True, slots=True)
class Handback:
    """How the hand-back went: ``still_remote`` lists the devices not in local at the end."""

    waited_s: float
    still_remote: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.still_remote


async def hand_back(bridge: BridgePlant, notifier: Notifier, timeout_s: float, poll_s: float) -> Handback:
    """Stop commanding and wait (at most ``timeout_s`` wall seconds) until every PLC reports local.

    Args:
        bridge: the started bridge.
        notifier: systemd (asked for the extra stop time).
        timeout_s: how long to wait [wall s].
        poll_s: between reads [wall s].
    """
    bridge.shadow = True
    for d in bridge.devices:  # writers disabled: no heartbeat, no command
        if d.writer is not None:
            d.writer.enabled = False
    notifier.extend_timeout(timeout_s + HANDBACK_EXTRA_S)
    t0 = time.monotonic()
    line_names = bridge.layout.line_names
    while True:
        try:
            meas = await asyncio.wait_for(bridge.read(), timeout=max(2.0, timeout_s))
        except Exception:
            meas = None
        remote: list[str] = []
        if meas is not None:
            for li, name in enumerate(line_names):
                if bool(meas.rectifier_remote[li]) and bool(meas.line_ok[li]):
                    remote.append(f"rectifier:{name}")
        remote += [r.dev.device for r in bridge.rooms if r.remote]
        if not remote or time.monotonic() - t0 >= timeout_s:
            return Handback(time.monotonic() - t0, remote)
        await asyncio.sleep(poll_s)
