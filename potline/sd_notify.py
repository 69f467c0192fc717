"""systemd service notifications without a dependency (``sd_notify(3)`` protocol).

The daemon runs as ``Type=notify`` with ``WatchdogSec``: it sends ``READY=1`` after the
first control cycle, ``STATUS=...`` lines for ``systemctl status``, ``WATCHDOG=1`` from
the control loop (at half the watchdog interval, so a stalled loop gets the service
restarted) and ``STOPPING=1`` when it begins a graceful stop.

Outside systemd (no ``NOTIFY_SOCKET``) every call is a cheap no-op returning False.
Messages are datagrams on the AF_UNIX socket named by ``NOTIFY_SOCKET`` (a leading
``@`` means the Linux abstract namespace).
"""

from __future__ import annotations

import os
import socket

__all__ = ["Notifier", "sd_notify", "watchdog_interval_s"]


def sd_notify(message: str, *, env: dict[str, str] | None = None) -> bool:
    """Send one notification; True when a ``NOTIFY_SOCKET`` took it. Never raises."""
    addr = (env if env is not None else os.environ).get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr[0] == "@":
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(message.encode("utf-8", "replace"))
    except OSError:
        return False
    return True


def watchdog_interval_s(env: dict[str, str] | None = None) -> float | None:
    """systemd's watchdog timeout [s] for this process, or None when not watched.

    ``WATCHDOG_USEC`` is the timeout; ``WATCHDOG_PID``, when set, must be our pid.
    """
    e = env if env is not None else os.environ
    usec = e.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = e.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        v = int(usec)
    except ValueError:
        return None
    return v / 1e6 if v > 0 else None


class Notifier:
    """The daemon's link to systemd.

    ``watchdog(now)`` pets the watchdog at most every half interval (call it from the
    control loop every cycle; ``now`` is a monotonic wall time [s]).
    """

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self._env = dict(env) if env is not None else None
        e = self._env if self._env is not None else os.environ
        self.enabled = bool(e.get("NOTIFY_SOCKET"))
        self.watchdog_s = watchdog_interval_s(self._env)
        self._last_pet: float | None = None
        self.sent = 0

    def notify(self, message: str) -> bool:
        if not self.enabled:
            return False
        ok = sd_notify(message, env=self._env)
        self.sent += int(ok)
        return ok

    def ready(self, status: str = "running") -> bool:
        return self.notify(f"READY=1\nSTATUS={status}\nMAINPID={os.getpid()}")

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={status}")

    def stopping(self, status: str = "stopping") -> bool:
        return self.notify(f"STOPPING=1\nSTATUS={status}")

    def reloading(self) -> bool:
        return self.notify("RELOADING=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more start/stop time (``EXTEND_TIMEOUT_USEC``), e.g. during hand-back."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def watchdog(self, now: float) -> bool:
        """Send ``WATCHDOG=1`` when half the watchdog interval has passed since the last one."""
        if not self.enabled or self.watchdog_s is None:
            return False
        if self._last_pet is not None and now - self._last_pet < self.watchdog_s / 2.0:
            return False
        self._last_pet = now
        return self.notify("WATCHDOG=1")
