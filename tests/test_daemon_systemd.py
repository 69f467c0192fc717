"""systemd integration: the daemon speaks sd_notify to a real AF_UNIX datagram socket
(READY=1 after the first cycle, WATCHDOG=1 from the loop at half WatchdogSec, STOPPING=1
on SIGTERM) and the unit file in deploy/ passes ``systemd-analyze verify``.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import time

import pytest

from plc_bridge.sd_notify import Notifier, sd_notify, watchdog_interval_s
from tests.test_daemon_support import ROOT, DaemonProcess, daemon_config, rig_scenario, start_rig

UNIT = ROOT / "deploy" / "potline-twin.service"


def _listener(tmp_path, abstract: bool = False) -> tuple[socket.socket, str]:
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


def test_notify_protocol_on_path_and_abstract_sockets(tmp_path) -> None:
    for abstract in (False, True):
        s, addr = _listener(tmp_path, abstract)
        env = {"NOTIFY_SOCKET": addr, "WATCHDOG_USEC": "4000000"}
        assert sd_notify("STATUS=hello", env=env)
        assert s.recv(1024) == b"STATUS=hello"
        n = Notifier(env)
        assert n.watchdog_s == 4.0
        assert n.watchdog(100.0) and not n.watchdog(101.0) and n.watchdog(102.0)  # at most every 2 s
        assert s.recv(64) == b"WATCHDOG=1" and s.recv(64) == b"WATCHDOG=1"
        s.close()
    assert not sd_notify("READY=1", env={})  # outside systemd: a no-op
    assert watchdog_interval_s({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "1"}) is None  # not our pid


@pytest.mark.hil
@pytest.mark.timeout(120)
async def test_daemon_ready_after_first_cycle_watchdog_from_the_loop_stopping_on_sigterm(tmp_path) -> None:
    rig = await start_rig(rig_scenario(speed=20.0))
    s, addr = _listener(tmp_path)
    msgs: list[tuple[float, str]] = []

    async def collect() -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(s, 4096)
            msgs.append((time.monotonic(), data.decode()))

    task = asyncio.create_task(collect())
    try:
        cfg, _ = daemon_config(tmp_path, rig, mode="observe")
        dp = await DaemonProcess(cfg, env={"NOTIFY_SOCKET": addr, "WATCHDOG_USEC": "2000000"}).start()
        first = await dp.wait_event("daemon.first_cycle", timeout=30)
        await asyncio.sleep(3.5)
        assert await dp.stop() == 0
        await asyncio.sleep(0.2)
    finally:
        task.cancel()
        s.close()
        await rig.stop()
    texts = [m for _, m in msgs]
    ready = [i for i, m in enumerate(texts) if "READY=1" in m]
    assert len(ready) == 1 and f"MAINPID={dp.pid}" in texts[ready[0]]
    assert msgs[ready[0]][0] >= first["_mono"] - 0.5  # not before the first control cycle
    pets = [t for t, m in msgs if m == "WATCHDOG=1"]
    assert len(pets) >= 3
    gaps = [b - a for a, b in zip(pets, pets[1:])]
    assert all(0.9 <= g <= 1.6 for g in gaps), gaps  # half of WatchdogSec=2 s
    stopping = [i for i, m in enumerate(texts) if m.startswith("STOPPING=1")]
    assert stopping and stopping[0] > ready[0]
    assert any(m.startswith("STATUS=mode observe") for m in texts)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_file_verifies(tmp_path) -> None:
    text = UNIT.read_text()
    for key in ("Type=notify", "WatchdogSec=", "NotifyAccess=main", "CacheDirectory=potline-twin",
                "Environment=NUMBA_CACHE_DIR=/var/cache/potline-twin/numba", "NoNewPrivileges=true",
                "ProtectSystem=strict", "RestartPreventExitStatus=2"):  # fmt: skip
        assert key in text, key
    # point the commands at an executable that exists here, then let systemd check the rest
    unit = tmp_path / "potline-twin.service"
    unit.write_text(text.replace("/opt/potline-twin/venv/bin/potline", sys.executable))
    out = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [ln for ln in (out.stdout + out.stderr).splitlines() if "potline-twin.service" in ln]
    assert out.returncode == 0 and not problems, out.stdout + out.stderr
