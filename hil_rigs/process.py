"""``RigProcess``: a HIL rig in a child process (``python -m hil_rigs serve``), driven over
its JSON-lines control channel.

The controller under test runs elsewhere (the test process, the demo, a daemon) and
talks to the rig's PLCs only over Modbus TCP / OPC UA. The same calls as an in-process
``Rig``: ``start()`` -> endpoints, ``inject(fault)``, ``clear(fault)``, ``report()``,
``stop()`` -> final ``RigReport``. ``stop()`` also records the child's exit code and
whether its stderr holds a Python traceback (``report.process``), so "no unhandled
exception in the rig process" is checkable.

A rig a daemon can be pointed at: ``base_port`` gives every PLC a fixed port
(``fixed_ports``: the rectifiers in line order, then the potrooms in room order, from
``base_port`` up), and ``daemon_config`` makes the rig write a complete daemon TOML for
its PLCs (``daemon_config_for_rig``), which ``potline check-config`` accepts and
``potline run`` uses as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import sys
import tempfile
import time
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hil_rigs.faults import Fault
from hil_rigs.report import RigReport
from hil_rigs.scenarios import Scenario, load_scenario

__all__ = [
    "DAEMON_METRICS_PORT",
    "DAEMON_OPCUA_PORT",
    "RigProcess",
    "RigProcessError",
    "daemon_config_for_rig",
    "dump_toml",
    "fixed_ports",
    "write_daemon_config",
]

READY_PREFIX = "HIL-RIG-READY "

#: the daemon's own listeners in a written config (as in ``config/daemon_example.toml``)
DAEMON_OPCUA_PORT = 14841
DAEMON_METRICS_PORT = 19108
#: upper bounds of the daemon's ``[safety]`` times [plant s] (``potline.daemon_config``)
_SAFETY_MAX_S = {"stale_after_s": 600.0, "plc_heartbeat_timeout_s": 600.0, "setpoint_max_interval_s": 600.0,
                 "ack_timeout_s": 3600.0}  # fmt: skip


class RigProcessError(RuntimeError):
    """The rig process failed to start or died; the message carries its stderr tail."""


# ====================================================================== fixed ports


def fixed_ports(scenario: Scenario, base_port: int) -> dict[str, int]:
    """The port of every PLC of ``scenario``'s rig when it serves from ``base_port``.

    Device name (``rectifier:Line1``, ``potroom:Potroom1``) -> port: the rectifiers in
    line order get ``base_port``, ``base_port + 1``, ..., then the potrooms in room order.
    The same scenario always gets the same ports, so a daemon config written once stays
    valid across rig restarts.

    Raises:
        ValueError: the ports would not fit below 65536 (or ``base_port`` < 1).
    """
    from twin.potline import plant_layout

    lay = plant_layout(scenario.plant_config())
    names = [f"rectifier:{n}" for n in lay.line_names] + [f"potroom:{n}" for n in lay.room_names]
    last = base_port + len(names) - 1
    if base_port < 1 or last > 65535:
        raise ValueError(
            f"--base-port {base_port}: {len(names)} PLC(s) need ports {base_port}..{last}; "
            f"expected a base port between 1 and {65536 - len(names)}"
        )
    return {name: base_port + i for i, name in enumerate(names)}


# ====================================================================== the daemon config


def daemon_config_for_rig(
    info: Mapping[str, Any],
    scenario: Scenario,
    *,
    state_dir: str = "state",
    opcua_port: int = DAEMON_OPCUA_PORT,
    metrics_port: int = DAEMON_METRICS_PORT,
) -> dict[str, Any]:
    """A complete daemon config (``potline run``) for the rig whose ``endpoints()`` are ``info``.

    The plant is the rig's own plant config (inline ``[plant]``), so the daemon's layout and
    its observer's cell parameters are the twin's; the controller gets the scenario's
    ``[controller.control]`` overrides and the rig's rectifier voltage limits; the clock
    shares the rig's plant time (``daemon.hil``, its speed and epoch); the safety-layer times
    are scaled to the scan and the speed as in every HIL run (``bridge_settings_for``). The
    daemon starts in ``observe``; ``state_dir`` is relative to the written file.
    """
    from hil_rigs.session import bridge_settings_for

    speed = float(info["speed"])
    scan_s = float(scenario.controller.scan_s)
    plant = scenario.plant_config().model_dump(mode="json")
    control = json.loads(json.dumps(scenario.controller.control))  # a deep copy of plain data
    amperage = control.setdefault("amperage", {})
    amperage.setdefault("voltage_limit_v", [float(v) for v in info["voltage_limit_v"]])
    bs = bridge_settings_for(scan_s, speed)
    safety: dict[str, Any] = {key: min(float(getattr(bs, key)), top) for key, top in _SAFETY_MAX_S.items()}
    # the rig PLCs' own heartbeat watchdog (as the rig computes it): the daemon gives up on a
    # silent PLC no later than that PLC gives up on the daemon
    watchdog = max(float(scenario.rig.watchdog_s), float(scenario.rig.watchdog_min_wall_s) * speed)
    safety["plc_watchdog_s"] = watchdog
    for key in ("stale_after_s", "plc_heartbeat_timeout_s"):
        safety[key] = min(safety[key], watchdog)
    plcs: list[dict[str, Any]] = []
    for kind, key in (("rectifier", "line"), ("potroom", "room")):
        for i, ep in enumerate(info[f"{kind}s"]):
            plc: dict[str, Any] = {"name": f"{kind}{i + 1}", "kind": kind, key: ep["name"],
                                   "protocol": ep["protocol"], "host": ep["host"], "port": int(ep["port"])}  # fmt: skip
            if ep["protocol"] == "opcua":
                plc["path"] = ep.get("path", "/plc/")
                if ep.get("namespace"):
                    plc["namespace"] = ep["namespace"]
            plcs.append(plc)
    return {
        "daemon": {
            "name": f"rig-{scenario.name}",
            "mode": "observe",
            "scan_period_s": scan_s,
            "state_dir": state_dir,
            "mode_file": "mode",
            "hil": True,
            "clock_speed": speed,
            "clock_epoch_monotonic": float(info["epoch_monotonic"]),
        },
        "plant": plant,
        "control": control,
        "plc": plcs,
        "safety": safety,
        "opcua": {"host": "127.0.0.1", "port": int(opcua_port)},
        "journal": {"path": "journal.db"},
        "metrics": {"host": "127.0.0.1", "port": int(metrics_port)},
        "logging": {"format": "auto", "level": "INFO"},
    }


def write_daemon_config(path: str | Path, info: Mapping[str, Any], scenario: Scenario, **kw: Any) -> Path:
    """Write ``daemon_config_for_rig(info, scenario, **kw)`` to ``path`` (atomically, parent
    folders created); the daemon's state goes to ``<stem>-state`` beside it. Returns the path."""
    p = Path(path)
    kw.setdefault("state_dir", f"{p.stem}-state")
    data = daemon_config_for_rig(info, scenario, **kw)
    head = (
        f"# Daemon config for the HIL rig of scenario {scenario.name!r}, written by `python -m hil_rigs serve`.\n"
        f"#   potline check-config --config {p}\n"
        f"#   potline run --config {p}\n"
        "# The PLC ports are the rig's; the clock epoch is this rig run's (plant times in the journal\n"
        "# then match the rig's). Mode: observe; switch with the mode file in daemon.state_dir.\n\n"
    )
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(head + dump_toml(data), encoding="utf-8")
    os.replace(tmp, p)
    return p


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key, ensure_ascii=False)


def _toml_value(v: Any, where: str) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"{where}: {v} has no TOML form here (NaN/inf)")
        return repr(v)
    if isinstance(v, (str, Path)):
        return json.dumps(str(v), ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x, f"{where}[{i}]") for i, x in enumerate(v)) + "]"
    if isinstance(v, Mapping):
        items = [f"{_toml_key(k)} = {_toml_value(x, f'{where}.{k}')}" for k, x in v.items() if x is not None]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    raise TypeError(f"{where}: cannot write a {type(v).__name__} to TOML")


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, Mapping) for x in v)


def _drop_none(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {k: _drop_none(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [_drop_none(x) for x in v]
    return v


def dump_toml(data: Mapping[str, Any]) -> str:
    """TOML text for plain data: tables, arrays of tables, arrays and scalars.

    Keys whose value is None are left out (TOML has no null; every optional key here
    defaults to None). The text is read back and compared with ``data`` before it is
    returned, so a value TOML cannot carry fails here, not in the reader.
    """
    lines: list[str] = []

    def table(d: Mapping[str, Any], path: list[str]) -> None:
        for k, v in d.items():
            if v is not None and not isinstance(v, Mapping) and not _is_table_array(v):
                lines.append(f"{_toml_key(k)} = {_toml_value(v, '.'.join([*path, k]))}")
        for k, v in d.items():
            sub = [*path, k]
            name = ".".join(_toml_key(x) for x in sub)
            if isinstance(v, Mapping):
                lines.append(f"\n[{name}]")
                table(v, sub)
            elif _is_table_array(v):
                for item in v:
                    lines.append(f"\n[[{name}]]")
                    table(item, sub)

    table(data, [])
    text = "\n".join(lines).lstrip("\n") + "\n"
    if tomllib.loads(text) != json.loads(json.dumps(_drop_none(data), default=str)):
        raise ValueError("dump_toml: the TOML written does not read back as the data given")
    return text


class RigProcess:
    """A rig in a child process.

    Args:
        scenario: a ``Scenario`` (or name/path).
        speed: time factor override.
        workdir: where the scenario JSON, the report and the rig's stderr log go
            (default: a temporary directory).
        max_wall_s: the child stops by itself after this long (a safety net).
        env: extra environment for the child.
        base_port: serve the PLCs on fixed ports from here (``fixed_ports``); None: free ports.
        daemon_config: the rig writes a daemon TOML for its PLCs here (``write_daemon_config``).
    """

    def __init__(self, scenario: Scenario | str, *, speed: float | None = None, workdir: str | Path | None = None,
                 max_wall_s: float | None = 900.0, env: dict[str, str] | None = None,
                 log_level: str = "warning", base_port: int | None = None,
                 daemon_config: str | Path | None = None) -> None:  # fmt: skip
        self.scenario = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
        self.speed = speed
        self.base_port = base_port
        self.daemon_config = None if daemon_config is None else Path(daemon_config)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="hil-rig-")
            workdir = self._tmp.name
        self.workdir = Path(workdir).resolve()  # the child runs in another directory
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.max_wall_s = max_wall_s
        self.env = env or {}
        self.log_level = log_level
        self.proc: asyncio.subprocess.Process | None = None
        self.info: dict[str, Any] = {}
        self.returncode: int | None = None
        self.stderr_path = self.workdir / "rig.stderr.log"
        self.report_path = self.workdir / "rig-report.json"
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        self._stderr_file: Any = None

    @property
    def speed_factor(self) -> float:
        return float(self.info.get("speed", self.speed or self.scenario.speed))

    @property
    def epoch_monotonic(self) -> float:
        return float(self.info["epoch_monotonic"])

    def endpoints(self) -> dict[str, Any]:
        return dict(self.info)

    async def start(self, timeout_s: float = 90.0) -> dict[str, Any]:
        """Spawn the rig and wait until it serves; returns its endpoints."""
        sc_path = self.workdir / "scenario.json"
        sc_path.write_text(json.dumps(self.scenario.to_dict()), encoding="utf-8")
        cmd = [sys.executable, "-m", "hil_rigs", "serve", "--scenario-json", str(sc_path), "--report",
               str(self.report_path), "--log-level", self.log_level]  # fmt: skip
        if self.speed is not None:
            cmd += ["--speed", str(self.speed)]
        if self.max_wall_s:
            cmd += ["--max-wall-s", str(self.max_wall_s)]
        if self.base_port is not None:
            cmd += ["--base-port", str(self.base_port)]
        if self.daemon_config is not None:
            cmd += ["--write-daemon-config", str(self.daemon_config)]
        env = {**os.environ, **self.env}
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self._stderr_file = self.stderr_path.open("wb")
        self.proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.PIPE, stderr=self._stderr_file, env=env, cwd=root
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                await self._kill()
                raise RigProcessError(f"rig did not start within {timeout_s:g} s\n{self.stderr_tail()}")
            try:
                line = await asyncio.wait_for(self.proc.stdout.readline(), left)
            except TimeoutError:
                continue
            if not line:
                await self.proc.wait()
                self.returncode = self.proc.returncode
                raise RigProcessError(f"rig exited with code {self.returncode} before serving\n{self.stderr_tail()}")
            text = line.decode(errors="replace").strip()
            if text.startswith(READY_PREFIX):
                self.info = json.loads(text[len(READY_PREFIX) :])
                break
        self._reader, self._writer = await asyncio.open_connection("127.0.0.1", int(self.info["control_port"]))
        return self.endpoints()

    async def _call(self, req: dict[str, Any], timeout_s: float = 30.0) -> dict[str, Any]:
        if self._writer is None or self._reader is None:
            raise RigProcessError("rig process not started")
        async with self._lock:
            self._writer.write((json.dumps(req) + "\n").encode())
            await self._writer.drain()
            line = await asyncio.wait_for(self._reader.readline(), timeout_s)
        if not line:
            raise RigProcessError(f"rig control channel closed\n{self.stderr_tail()}")
        ans = json.loads(line)
        if not ans.get("ok"):
            raise RigProcessError(f"rig refused {req.get('op')}: {ans.get('error')}")
        return ans

    async def status(self) -> dict[str, Any]:
        return await self._call({"op": "status"})

    async def inject(self, fault: Fault | dict[str, Any]) -> float:
        """Inject a fault now; returns the rig's plant time of injection."""
        f = fault if isinstance(fault, Fault) else Fault.model_validate(fault)
        return float((await self._call({"op": "inject", "fault": f.model_dump(mode="json")}))["plant_s"])

    async def clear(self, fault: Fault | dict[str, Any]) -> float:
        f = fault if isinstance(fault, Fault) else Fault.model_validate(fault)
        return float((await self._call({"op": "clear", "fault": f.model_dump(mode="json")}))["plant_s"])

    async def report(self) -> RigReport:
        """The rig's report so far (the rig keeps running)."""
        return RigReport.from_dict((await self._call({"op": "report"}, 60.0))["report"])

    async def stop(self, timeout_s: float = 30.0) -> RigReport:
        """Stop the rig; returns its final report (with ``process`` = exit code, traceback seen)."""
        if self.proc is None:
            raise RigProcessError("rig process not started")
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                await self._call({"op": "stop"}, 10.0)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        try:
            await asyncio.wait_for(self.proc.wait(), timeout_s)
        except TimeoutError:
            await self._kill()
        self.returncode = self.proc.returncode
        if self._stderr_file is not None:
            self._stderr_file.close()
            self._stderr_file = None
        stderr = self.stderr_text()
        if self.report_path.exists():
            rep = RigReport.from_dict(json.loads(self.report_path.read_text(encoding="utf-8")))
        else:
            raise RigProcessError(f"rig wrote no report (exit code {self.returncode})\n{self.stderr_tail()}")
        rep.process = {"returncode": self.returncode, "traceback": "Traceback (most recent call last)" in stderr,
                       "stderr_tail": self.stderr_tail(20)}  # fmt: skip
        return rep

    async def _kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.proc.wait(), 5.0)

    async def close(self) -> None:
        """Kill the child if it still runs and remove the temporary directory."""
        await self._kill()
        if self._writer is not None:
            self._writer.close()
        if self._stderr_file is not None:
            self._stderr_file.close()
            self._stderr_file = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def stderr_tail(self, n: int = 30) -> str:
        return "\n".join(self.stderr_text().splitlines()[-n:])
