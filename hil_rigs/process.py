"""``RigProcess``: a HIL rig in a child process (``python -m hil_rigs serve``), driven over
its JSON-lines control channel.

The controller under test runs elsewhere (the test process, the demo, a daemon) and
talks to the rig's PLCs only over Modbus TCP / OPC UA. The same calls as an in-process
``Rig``: ``start()`` -> endpoints, ``inject(fault)``, ``clear(fault)``, ``report()``,
``stop()`` -> final ``RigReport``. ``stop()`` also records the child's exit code and
whether its stderr holds a Python traceback (``report.process``), so "no unhandled
exception in the rig process" is checkable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hil_rigs.faults import Fault
from hil_rigs.report import RigReport
from hil_rigs.scenarios import Scenario, load_scenario

__all__ = ["RigProcess", "RigProcessError"]

READY_PREFIX = "HIL-RIG-READY "


class RigProcessError(RuntimeError):
    """The rig process failed to start or died; the message carries its stderr tail."""


class RigProcess:
    """A rig in a child process.

    Args:
        scenario: a ``Scenario`` (or name/path).
        speed: time factor override.
        workdir: where the scenario JSON, the report and the rig's stderr log go
            (default: a temporary directory).
        max_wall_s: the child stops by itself after this long (a safety net).
        env: extra environment for the child.
    """

    def __init__(self, scenario: Scenario | str, *, speed: float | None = None, workdir: str | Path | None = None,
                 max_wall_s: float | None = 900.0, env: dict[str, str] | None = None,
                 log_level: str = "warning") -> None:  # fmt: skip
        self.scenario = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
        self.speed = speed
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="hil-rig-")
            workdir = self._tmp.name
        self.workdir = Path(workdir)
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
