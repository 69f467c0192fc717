"""Waiting in tests: on a condition or an event, with a deadline — never a fixed sleep.

A test that sleeps a fixed time "to let things happen" passes on a quiet machine and fails
on a busy one (CI, a shared plant server: the other process got the core). Wait for the
thing itself instead, and give the deadline room: it bounds a failure, it is not the
expected duration, so 10x what a quiet machine needs is not too much.

* ``await wait_until(pred, timeout_s, what)`` / ``wait_until_sync(...)``: poll ``pred``
  (sync or async) every ``poll_s`` until it returns something truthy, and return that;
  after ``timeout_s`` wall seconds raise ``WaitTimeout`` naming ``what`` (and, if given,
  ``detail()``, e.g. the last value seen).
* ``await wait_event(event, timeout_s, what)``: an ``asyncio.Event`` with a deadline.
* ``readline(stream, timeout_s, what)``: one line from a child process's pipe with a
  deadline (``select``), for tests that read what a real process prints.
* ``await rig_scans(rig, n, timeout_s)``: a HIL rig (``hil_rigs.rig.Rig``, in the test's
  event loop) ran ``n`` more PLC scans; ``await step_rig(rig, clock, seconds)``: with the
  rig on a ``twin.clock.VirtualClock``, move plant time forward scan by scan — plant time
  then depends on the test only, not on how busy the machine is.

Polling inside these helpers with a short interval is fine; the deadline is wall time.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import select
import time
from collections.abc import Awaitable, Callable
from typing import IO, Any, TypeVar

__all__ = ["WaitTimeout", "readline", "rig_scans", "step_rig", "wait_event", "wait_until", "wait_until_sync"]

T = TypeVar("T")

#: default poll interval [wall s]
POLL_S = 0.02


class WaitTimeout(AssertionError):
    """A condition a test waited for did not come true before its deadline."""


def _message(what: str, timeout_s: float, detail: Callable[[], object] | None) -> str:
    msg = f"timed out after {timeout_s:g} s waiting for {what}"
    if detail is not None:
        try:
            msg += f" ({detail()})"
        except Exception as exc:  # the detail must never hide the timeout
            msg += f" (detail failed: {exc!r})"
    return msg


async def wait_until(
    predicate: Callable[[], T | Awaitable[T]],
    timeout_s: float,
    what: str,
    *,
    poll_s: float = POLL_S,
    detail: Callable[[], object] | None = None,
) -> T:
    """Poll ``predicate`` (a function or coroutine function) until it returns a truthy value;
    return that value. Raise ``WaitTimeout`` after ``timeout_s`` wall seconds [s]."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = predicate()
        if inspect.isawaitable(got):
            got = await got
        if got:
            return got
        if time.monotonic() >= deadline:
            raise WaitTimeout(_message(what, timeout_s, detail))
        await asyncio.sleep(poll_s)


def wait_until_sync(
    predicate: Callable[[], T],
    timeout_s: float,
    what: str,
    *,
    poll_s: float = POLL_S,
    detail: Callable[[], object] | None = None,
) -> T:
    """``wait_until`` for plain (non-async) tests: poll ``predicate`` until truthy, return it."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise WaitTimeout(_message(what, timeout_s, detail))
        time.sleep(poll_s)


async def wait_event(event: asyncio.Event, timeout_s: float, what: str) -> None:
    """Wait for ``event`` to be set, at most ``timeout_s`` wall seconds."""
    try:
        await asyncio.wait_for(event.wait(), timeout_s)
    except TimeoutError:
        raise WaitTimeout(_message(what, timeout_s, None)) from None


def readline(stream: IO[Any], timeout_s: float, what: str) -> Any:
    """One line from a child process's pipe (``Popen(..., stdout=PIPE)``), at most
    ``timeout_s`` wall seconds; ``""``/``b""`` at end of file, like ``readline()``.

    Reads byte by byte from the descriptor once ``select`` says it is readable, so no
    line is left in a Python buffer where ``select`` cannot see it."""
    deadline = time.monotonic() + timeout_s
    fd = stream.fileno()
    text = "b" not in getattr(stream, "mode", "r")
    buf = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise WaitTimeout(f"{_message(what, timeout_s, None)} (partial line {bytes(buf)!r})")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        ch = os.read(fd, 1)
        if ch:
            buf += ch
        if not ch or ch == b"\n":
            return buf.decode() if text else bytes(buf)


# ---------------------------------------------------------------------------- HIL rigs


async def rig_scans(rig: Any, n: int = 2, timeout_s: float = 30.0) -> None:
    """Wait until an in-process rig (``hil_rigs.rig.Rig``) has run ``n`` more PLC scans.

    Two scans by default: the first may have read its clock before the caller's change
    (a scan suspended in a fault hook); the second surely saw it."""
    target = rig.ticks + n

    def scanned() -> bool:
        task = getattr(rig, "_task", None)
        if task is not None and task.done():
            raise AssertionError(f"the rig's scan task ended: {rig.errors[-1:] or task}")
        return rig.ticks >= target

    await wait_until(scanned, timeout_s, f"{n} rig scans", poll_s=0.005)


async def step_rig(rig: Any, clock: Any, seconds: float, step_s: float = 0.5, timeout_s: float = 60.0) -> None:
    """Move a rig on a ``VirtualClock`` forward ``seconds`` [plant s] in steps of ``step_s``,
    letting the PLCs scan after each step (as they would every few plant seconds in real time)."""
    end = clock.now() + seconds
    while clock.now() < end - 1e-9:
        clock.advance(min(step_s, end - clock.now()))
        await rig_scans(rig, 2, timeout_s)
