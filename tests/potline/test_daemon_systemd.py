"""systemd integration: sd_notify over real AF_UNIX datagram sockets (path and abstract)
and the unit file in deploy/ passes ``systemd-analyze verify``. The daemon's own READY /
WATCHDOG / STOPPING sequence is checked in ``test_daemon_hil.py`` (mode-switching run).
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from potline.sd_notify import Notifier, sd_notify, watchdog_interval_s
from tests.potline.daemon_support import ROOT, listener

UNIT = ROOT / "deploy" / "potline-twin.service"


def test_notify_protocol_on_path_and_abstract_sockets(tmp_path) -> None:
    for abstract in (False, True):
        s, addr = listener(tmp_path, abstract)
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
