"""Helpers for the daemon tests (no tests here): a HIL rig on loopback, a daemon config
written from ``config/daemon_example.toml`` with the rig's ports, and the daemon as a
real process (``python -m potline.cli run``) whose JSON log lines are collected.

Everything is real: the rig's Modbus/OPC UA servers on 127.0.0.1, the daemon in its
own process, SQLite files in ``tmp_path``, HTTP and OPC UA clients against the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import signal
import socket
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hil_rigs.process import dump_toml
from plc_bridge.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "daemon_example.toml"
PY = sys.executable
#: how long a test waits for something that takes a fraction of it on a quiet machine [wall s]:
#: generous, because 2 busy processes on 2 cores make the daemon's start alone take 10-20 s
DEADLINE_S = 90.0


# ---------------------------------------------------------------------- rig


def rig_scenario(*, cells: int = 8, speed: float = 20.0, potroom: str = "modbus", rectifier: str = "modbus",
                 storm_every_s: float | None = None, storm_start_s: float = 60.0, watchdog_s: float = 20.0,
                 seed: int = 3, faults: list[dict[str, Any]] | None = None, duration_s: float = 30 * 86400.0,
                 name: str = "daemon_test") -> Any:  # fmt: skip
    """A one-room bench scenario for the daemon tests."""
    from hil_rigs.scenarios import scenario_from_dict

    data: dict[str, Any] = {
        "scenario": {"name": name, "duration_s": duration_s, "speed": speed, "seed": seed},
        "plant": {"cells": cells, "rooms": 1},
        "protocols": {"rectifier": rectifier, "potroom": potroom},
        "rig": {"watchdog_s": watchdog_s},
        "faults": faults or [],
    }
    if storm_every_s is not None:
        data["ae_storm"] = {"start_s": storm_start_s, "end_s": duration_s, "every_s": storm_every_s}
    return scenario_from_dict(data, source=f"<{name}>")


async def start_rig(scenario: Any) -> Any:
    from hil_rigs.rig import Rig

    return await Rig(scenario, proxies=True).start()


# ---------------------------------------------------------------------- config


def daemon_config(tmp_path: Path, rig: Any | None, *, mode: str = "observe", cells: int = 8,
                  ports: dict[str, int] | None = None, **sections: dict[str, Any]) -> tuple[Path, dict[str, Any]]:  # fmt: skip
    """Write a daemon config from the example, pointed at ``rig`` (or at ``ports`` when
    the rig is not up yet). ``sections`` update top-level tables, e.g. ``daemon={...}``.

    Returns (path, data) with ``data["_ports"]`` = the metrics and mirror ports.
    """
    data = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    d = data["daemon"]
    d["mode"] = mode
    d["state_dir"] = str(tmp_path / "state")
    d["handback_timeout_s"] = 15.0
    d["mode_file_poll_s"] = 0.2
    data["plant"]["lines"][0]["rooms"][0]["cells"] = cells
    data["tagmaps"] = {"rectifier": str(ROOT / "config/tagmaps/rectifier.toml"),
                       "potroom": str(ROOT / "config/tagmaps/potroom.toml")}  # fmt: skip
    if rig is not None:
        ep = rig.endpoints()
        d["clock_speed"] = float(ep["speed"])
        d["clock_epoch_monotonic"] = float(ep["epoch_monotonic"])
        rect, room = ep["rectifiers"][0], ep["potrooms"][0]
        ports = {"rectifier": int(rect["port"]), "potroom": int(room["port"])}
        protos = {"rectifier": rect["protocol"], "potroom": room["protocol"]}
    else:
        assert ports is not None
        protos = {"rectifier": "modbus", "potroom": "modbus"}
    for plc in data["plc"]:
        plc["port"] = ports[plc["kind"]]
        plc["protocol"] = protos[plc["kind"]]
    data["metrics"]["port"] = free_port()
    data["opcua"]["port"] = free_port()
    if "hmi" in data:
        data["hmi"]["port"] = free_port()
    data["logging"] = {"format": "json", "level": "INFO"}
    for key, upd in sections.items():
        data.setdefault(key, {})
        data[key].update(upd)
    path = tmp_path / "daemon.toml"
    path.write_text(dump_toml(data), encoding="utf-8")
    data["_ports"] = {"metrics": data["metrics"]["port"], "opcua": data["opcua"]["port"],
                      "hmi": data.get("hmi", {}).get("port")}  # fmt: skip
    return path, data


# ---------------------------------------------------------------------- the daemon process


class DaemonProcess:
    """``potline run`` as a child process; its JSON log lines are parsed as they come."""

    def __init__(self, config: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.extra = extra
        self.env = {**os.environ, **(env or {})}
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc: asyncio.subprocess.Process | None = None
        self.events: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.stderr: list[str] = []
        self._readers: list[asyncio.Task[None]] = []
        self._new = asyncio.Event()
        self.t_start = 0.0

    async def start(self) -> DaemonProcess:
        self.t_start = time.monotonic()
        self.proc = await asyncio.create_subprocess_exec(
            PY, "-m", "potline.cli", "run", "--config", str(self.config), *self.extra,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=self.env, cwd=str(ROOT),
        )  # fmt: skip
        self._readers = [asyncio.create_task(self._read(self.proc.stdout, True)),
                         asyncio.create_task(self._read(self.proc.stderr, False))]  # fmt: skip
        return self

    async def _read(self, stream: Any, is_stdout: bool) -> None:
        while True:
            line = await stream.readline()
            if not line:
                break
            text = line.decode(errors="replace").rstrip("\n")
            if is_stdout:
                self.raw.append(text)
                with contextlib.suppress(ValueError):
                    ev = json.loads(text)
                    if isinstance(ev, dict):
                        ev["_mono"] = time.monotonic()
                        self.events.append(ev)
            else:
                self.stderr.append(text)
            self._new.set()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    def find(self, event: str, pred: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == event and (pred is None or pred(e))]

    async def wait_event(self, event: str, timeout: float = DEADLINE_S,
                         pred: Callable[[dict[str, Any]], bool] | None = None, after: int = 0) -> dict[str, Any]:  # fmt: skip
        """Wait for a log event named ``event`` (among lines with index >= ``after``)."""
        deadline = time.monotonic() + timeout
        while True:
            for e in self.events[after:]:
                if e.get("event") == event and (pred is None or pred(e)):
                    return e
            if self.proc is not None and self.proc.returncode is not None:
                await asyncio.wait(self._readers, timeout=10.0)  # its last lines, up to the end of its output
                for e in self.events[after:]:
                    if e.get("event") == event and (pred is None or pred(e)):
                        return e
                raise AssertionError(f"daemon exited ({self.proc.returncode}) before {event!r}:\n" + self.tail())
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {event!r} within {timeout} s:\n" + self.tail())
            self._new.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._new.wait(), min(left, 0.5))

    async def wait_ready(self, timeout: float = DEADLINE_S) -> dict[str, Any]:
        """Wait for the first control cycle and the OPC UA mirror; returns the first-cycle event."""
        first = await self.wait_event("daemon.first_cycle", timeout=timeout)
        await self.wait_event("opcua.mirror_started", timeout=timeout)
        return first

    def tail(self, n: int = 30) -> str:
        return "\n".join([*self.raw[-n:], "--- stderr ---", *self.stderr[-n:]])

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = DEADLINE_S) -> int:
        assert self.proc is not None
        rc = await asyncio.wait_for(self.proc.wait(), timeout)
        for t in self._readers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(t, 5.0)
        return rc

    async def stop(self, timeout: float = DEADLINE_S) -> int:
        """SIGTERM and wait (kill -9 if it does not end)."""
        if self.proc is None or self.proc.returncode is not None:
            return self.returncode if self.returncode is not None else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await self.wait(timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError("daemon did not stop on SIGTERM:\n" + self.tail()) from None

    async def kill(self) -> int:
        """``kill -9``."""
        assert self.proc is not None
        self.proc.kill()
        return await self.wait(30.0)


# ---------------------------------------------------------------------- HTTP and OPC UA clients


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def aget(url: str) -> tuple[int, str]:
    return await asyncio.to_thread(http_get, url)


async def wait_status(url: str, status: int = 200, timeout: float = DEADLINE_S) -> str:
    """Poll ``url`` until it answers ``status``; returns the body."""
    t0 = time.monotonic()
    while True:
        code, body = await aget(url)
        if code == status:
            return body
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{url} answered {code}, not {status}, for {timeout} s: {body}")
        await asyncio.sleep(0.1)


async def until(pred: Callable[[], object], what: str, timeout: float = DEADLINE_S,
                step: float = 0.05) -> None:  # fmt: skip
    """Wait until ``pred()`` (or the awaitable it returns) is truthy; fail naming ``what`` after ``timeout`` wall s."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if inspect.isawaitable(got):
            got = await got
        if got:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out ({timeout} s) waiting for {what}")
        await asyncio.sleep(step)


async def read_metric(port: int, name: str, **labels: str) -> float | None:
    """One sample from the daemon's ``/metrics`` (None when absent)."""
    _status, text = await aget(f"http://127.0.0.1:{port}/metrics")
    return metric(text, name, **labels)


async def wait_cycles(port: int, n: int = 3, timeout: float = DEADLINE_S) -> float:
    """Wait until the daemon ran ``n`` more control cycles (from its ``/metrics``); returns the count."""
    c0 = await read_metric(port, "potline_cycles_total") or 0.0
    got = c0

    async def done() -> bool:
        nonlocal got
        got = await read_metric(port, "potline_cycles_total") or 0.0
        return got >= c0 + n

    await until(done, f"{n} more control cycles (from {c0:g})", timeout, step=0.1)
    return got


async def wait_journal(path: Path, pred: Callable[[list[Any]], bool], what: str,
                       timeout: float = DEADLINE_S) -> list[Any]:  # fmt: skip
    """Wait until the journal's committed entries satisfy ``pred``; returns them."""
    from potline.journal import JournalError

    got: list[Any] = []

    def done() -> bool:
        nonlocal got
        try:
            got = journal_events(path)
        except JournalError:  # not created yet
            return False
        return pred(got)

    await until(done, f"journal: {what}", timeout, step=0.1)
    return got


def metric(text: str, name: str, **labels: str) -> float | None:
    """Value of one Prometheus sample in exposition ``text`` (labels must all match)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{", 1)[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return None


async def call_set_mode(port: int, mode: str, user: str | None = None, password: str | None = None,
                        plant: str = "Bench", certs: Path | None = None) -> Any:  # fmt: skip
    """Call Twin/SetMode on the daemon's mirror; returns the previous mode (or raises UaStatusCodeError).

    A login (``user``) goes over Basic256Sha256 SignAndEncrypt with a client certificate
    generated into ``certs`` (the mirror takes user names over no other channel); without
    a user the call is anonymous over the NoSecurity endpoint.
    """
    from asyncua import Client, ua

    from plc_bridge.opcua_security import ClientSecurity
    from plc_bridge.opcua_server import NAMESPACE_URI

    client = Client(f"opc.tcp://127.0.0.1:{port}/potline-twin/", timeout=30)
    if user is not None:
        if certs is None:
            raise ValueError("call_set_mode: a login needs certs (a directory for the client certificate)")
        await ClientSecurity(mode="SignAndEncrypt", state_dir=certs, username=user, password=password).apply(client)
    async with client:
        idx = await client.get_namespace_index(NAMESPACE_URI)
        twin = client.get_node(ua.NodeId(ua.String(f"{plant}.Twin"), ua.Int16(idx)))
        method = ua.NodeId(ua.String(f"{plant}.Twin.SetMode"), ua.Int16(idx))
        return await twin.call_method(method, ua.Variant(mode, ua.VariantType.String))


async def read_mirror(port: int, *names: str, plant: str = "Bench") -> list[Any]:
    from asyncua import Client, ua

    from plc_bridge.opcua_server import NAMESPACE_URI

    async with Client(f"opc.tcp://127.0.0.1:{port}/potline-twin/", timeout=30) as client:
        idx = await client.get_namespace_index(NAMESPACE_URI)
        return [await client.get_node(ua.NodeId(ua.String(f"{plant}.{n}"), ua.Int16(idx))).read_value() for n in names]


def journal_events(path: Path, **query: Any) -> list[Any]:
    """Events of a journal file, read-only (works while the daemon writes)."""
    from potline.journal import Journal

    j = Journal(path, readonly=True)
    try:
        return j.query(**query)
    finally:
        j.close()


def listener(tmp_path: Path, abstract: bool = False) -> tuple[socket.socket, str]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"potline-test-{time.monotonic_ns()}"
        s.bind("\0" + name)
        addr = "@" + name
    else:
        addr = str(tmp_path / "notify.sock")
        s.bind(addr)
    s.setblocking(False)
    return s, addr


def plc_remote(rig: Any, device: str) -> bool:
    """Is the rig's PLC in remote (the controller in charge)? Read from the PLC's own memory."""
    return bool(rig.plc(device).image.get("remote"))


async def plant_seconds(rig: Any, seconds: float, timeout: float = DEADLINE_S) -> None:
    """Let ``seconds`` of the rig's plant time pass (whatever the machine's load makes of wall time)."""
    await rig.wait_until(rig.now() + seconds, timeout_wall_s=timeout)


def write_mode_file(path: Path, word: str) -> None:
    """An operator's request through the mode file (one word, owner-only permissions)."""
    path.write_text(word + "\n")
    os.chmod(path, 0o600)
