"""A small driver for headless Chromium over the DevTools protocol (aiohttp's websocket client).

For the HMI's end-to-end tests, its benchmarks (page load, update latency) and README
screenshots, with the Debian ``chromium`` package: no browser download, no Node, no
WebDriver. ``Chromium`` starts one browser process (its own temporary profile, no
network but loopback use, no sandbox: it runs as root in CI) and talks to it over one
websocket with flattened target sessions; ``Page`` navigates, evaluates JavaScript,
clicks with real mouse events, types with real key input, waits on conditions with
deadlines and takes screenshots. JavaScript errors, failed loads and CSP violations are
collected in ``Page.errors``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

__all__ = ["BrowserError", "Chromium", "Page", "find_chromium"]

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
    "--disable-component-update", "--disable-sync", "--disable-quic", "--disable-default-apps",
    "--disable-extensions", "--mute-audio", "--no-default-browser-check", "--password-store=basic",
)  # fmt: skip


class BrowserError(RuntimeError):
    """Chromium could not start, a DevTools call failed, or a wait ran out of time."""


def find_chromium() -> str | None:
    """Path of a Chromium binary: $POTLINE_CHROMIUM, /usr/bin/chromium or one on PATH."""
    env = os.environ.get("POTLINE_CHROMIUM")
    if env:
        return env if os.access(env, os.X_OK) else None
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """One headless Chromium process (async context manager).

    Args:
        executable: the binary (default ``find_chromium()``).
        window: viewport size [px].
        start_timeout_s: how long the browser may take to open its DevTools port [wall s].
    """

    def __init__(self, executable: str | None = None, *, window: tuple[int, int] = (1400, 1000),
                 start_timeout_s: float = 60.0) -> None:  # fmt: skip
        exe = executable or find_chromium()
        if exe is None:
            raise BrowserError("no Chromium found (Debian: apt-get install chromium; or set POTLINE_CHROMIUM)")
        self.executable = exe
        self.window = window
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self._profile: tempfile.TemporaryDirectory[str] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._calls: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._listeners: dict[str, list[Callable[[str, dict[str, Any]], None]]] = {}

    async def __aenter__(self) -> Chromium:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Launch the browser and connect to it."""
        self._profile = tempfile.TemporaryDirectory(prefix="potline-chromium-")
        profile = Path(self._profile.name)
        w, h = self.window
        args = [self.executable, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                "--remote-debugging-address=127.0.0.1", f"--window-size={w},{h}", "about:blank"]  # fmt: skip
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise BrowserError(f"{self.executable} exited at start (status {self.proc.returncode})")
            text = port_file.read_text() if port_file.exists() else ""
            if text.count("\n") >= 1:
                port, path = text.split("\n")[:2]
                break
            if time.monotonic() > deadline:
                await self.stop()
                raise BrowserError(f"Chromium opened no DevTools port within {self.start_timeout_s:g} s")
            await asyncio.sleep(0.05)
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(f"ws://127.0.0.1:{port.strip()}{path.strip()}", max_msg_size=0)
        self._reader = asyncio.create_task(self._read(), name="chromium-devtools")

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._calls.pop(int(data["id"]), None)
                if fut is not None and not fut.done():
                    fut.set_result(data)
            else:
                for fn in list(self._listeners.get(data.get("sessionId", ""), [])):
                    fn(data.get("method", ""), data.get("params", {}))
        for fut in self._calls.values():
            if not fut.done():
                fut.set_exception(BrowserError("the DevTools connection closed"))

    async def send(self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None,
                   timeout_s: float = 30.0) -> dict[str, Any]:  # fmt: skip
        """One DevTools call; its ``result`` (``BrowserError`` on an error answer)."""
        if self._ws is None:
            raise BrowserError("Chromium is not started")
        i = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._calls[i] = fut
        msg: dict[str, Any] = {"id": i, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        await self._ws.send_str(json.dumps(msg))
        try:
            data = await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            self._calls.pop(i, None)
            raise BrowserError(f"DevTools {method}: no answer within {timeout_s:g} s") from None
        if "error" in data:
            raise BrowserError(f"DevTools {method}: {data['error'].get('message')}")
        result: dict[str, Any] = data.get("result", {})
        return result

    async def new_page(self, *, new_window: bool = True) -> Page:
        """A new page (about:blank) with its own session; in its own window by default, so
        every page is visible and none is throttled as a background tab would be."""
        target = await self.send("Target.createTarget", {"url": "about:blank", "newWindow": new_window})
        att = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        page = Page(self, att["sessionId"], target["targetId"])
        self._listeners[page.session] = [page._on_event]
        await page._setup()
        return page

    async def stop(self) -> None:
        """Close the connection and end the browser process (and its helpers)."""
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
            self._ws = None
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
            self._reader = None
        if self._http is not None:
            await self._http.close()
            self._http = None
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)  # its own session: the browser and its helper processes
            try:
                await asyncio.to_thread(proc.wait, 10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
                await asyncio.to_thread(proc.wait, 10)
        if self._profile is not None:
            self._profile.cleanup()
            self._profile = None


class Page:
    """One tab (see ``Chromium.new_page``)."""

    def __init__(self, browser: Chromium, session: str, target: str) -> None:
        self.browser = browser
        self.session = session
        self.target = target
        #: JavaScript exceptions, console errors and browser log errors (CSP, failed loads)
        self.errors: list[str] = []
        self._loaded = asyncio.Event()

    async def _setup(self) -> None:
        for domain in ("Page", "Runtime", "Log"):
            await self.send(f"{domain}.enable")

    def _on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Page.loadEventFired":
            self._loaded.set()
        elif method == "Runtime.exceptionThrown":
            d = params.get("exceptionDetails", {})
            self.errors.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.errors.append(
                "console: " + " ".join(str(a.get("value", a.get("description"))) for a in params.get("args", []))
            )
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            e = params["entry"]
            self.errors.append(f"log: {e.get('text')} {e.get('url', '')}".strip())

    async def send(self, method: str, params: dict[str, Any] | None = None, timeout_s: float = 30.0) -> dict[str, Any]:
        return await self.browser.send(method, params, session=self.session, timeout_s=timeout_s)

    async def goto(self, url: str, timeout_s: float = 30.0) -> None:
        """Navigate and wait for the load event."""
        self._loaded.clear()
        res = await self.send("Page.navigate", {"url": url})
        if res.get("errorText"):
            raise BrowserError(f"{url}: {res['errorText']}")
        if not res.get("loaderId"):  # a same-document navigation (only the #fragment changed): no load event
            return
        try:
            await asyncio.wait_for(self._loaded.wait(), timeout_s)
        except TimeoutError:
            raise BrowserError(f"{url}: not loaded within {timeout_s:g} s") from None

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (promises awaited; JSON-like values)."""
        res = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                   "awaitPromise": True})  # fmt: skip
        if "exceptionDetails" in res:
            d = res["exceptionDetails"]
            raise BrowserError(f"JavaScript error: {d.get('exception', {}).get('description') or d.get('text')}")
        return res.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout_s: float, what: str, poll_s: float = 0.05) -> Any:
        """Poll ``expression`` until it is truthy (returned); ``BrowserError`` after ``timeout_s`` [wall s]."""
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while True:
            last = await self.evaluate(expression)
            if last:
                return last
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out after {timeout_s:g} s waiting for {what} (last value {last!r}; "
                                   f"page errors {self.errors[-3:]})")  # fmt: skip
            await asyncio.sleep(poll_s)

    async def click(self, selector: str) -> None:
        """A real mouse click in the middle of the first element matching ``selector``."""
        box = await self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2]; })()"
        )
        if not box:
            raise BrowserError(f"no element {selector!r} to click")
        x, y = box
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left",
                                                         "clickCount": 1})  # fmt: skip

    async def type(self, selector: str, text: str) -> None:
        """Focus ``selector``, clear it and type ``text`` (real input events)."""
        ok = await self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return false;"
            " e.focus(); if ('value' in e) e.value = ''; return true; })()"
        )
        if not ok:
            raise BrowserError(f"no element {selector!r} to type into")
        await self.send("Input.insertText", {"text": text})

    async def screenshot(self, path: str | Path) -> Path:
        """A PNG of the viewport."""
        res = await self.send("Page.captureScreenshot", {"format": "png"})
        p = Path(path)
        p.write_bytes(base64.b64decode(res["data"]))
        return p

    async def close(self) -> None:
        with contextlib.suppress(BrowserError):
            await self.browser.send("Target.closeTarget", {"targetId": self.target})
