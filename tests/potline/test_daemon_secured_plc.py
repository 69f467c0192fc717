"""``potline run`` against a potroom PLC that is secured like a real one (issue 14 item 6).

The potroom PLC (the rig's PLC memory and logic behind its OPC UA edge) offers only
Basic256Sha256 SignAndEncrypt and Sign, refuses anonymous clients, knows one operator
(``bridge``, scrypt hash) and trusts only the client certificates in its trust directory
(the bridge's, made beforehand where ``certificate_dir`` keeps it, and copied there by
the PLC's administrator). The rectifier PLC is on Modbus. The daemon's ``[[plc]]``
section gives ``security_mode``, ``certificate_dir``, ``username`` and ``password_file``.

Observed: the daemon reads the room through the secured session (``/readyz`` ready with
both links up); in control its heartbeat reaches the PLC (remote); at SIGTERM it hands
back (local) and exits 0. Nobody was refused on the way, and nothing else could have got
in (no None endpoint, no anonymous client, user names only over SignAndEncrypt).
"""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import pytest

from hil_rigs.process import dump_toml
from plc_bridge.opcua_security import OpcUaSecurityConfig, UserEntry, ensure_certificate, hash_password
from plc_bridge.plant import potroom_tagmap, rectifier_tagmap
from tests.potline.daemon_support import DaemonProcess, aget, daemon_config, until, write_mode_file
from tests.potline.plc_bench_support import BenchPlcs

CELLS = 8


@pytest.mark.hil
@pytest.mark.timeout(300)
async def test_daemon_runs_a_potroom_plc_over_signandencrypt_with_certificate_and_user(tmp_path: Path) -> None:
    pki, trusted = tmp_path / "pki", tmp_path / "plc_trusted"
    await ensure_certificate(pki / "client_cert.der", pki / "client_key.pem", "urn:potline-twin:bridge",
                             server=False, common_name="potline-twin bridge")  # fmt: skip
    trusted.mkdir()
    shutil.copy(pki / "client_cert.der", trusted / "potline-bridge.der")
    (tmp_path / "plc.pw").write_text("plc-s3cret\n")
    sec = OpcUaSecurityConfig(
        state_dir=tmp_path / "plc_pki", sign=True, sign_and_encrypt=True, allow_no_security=False,
        anonymous="refuse", trusted_client_certs_dir=trusted,
        users={"bridge": UserEntry(role="operator", password_hash=hash_password("plc-s3cret"))},
    )  # fmt: skip
    plcs = BenchPlcs(rectifier_tagmap("Line1"), potroom_tagmap("Potroom1", CELLS), room_protocol="opcua",
                     room_security=sec)  # fmt: skip
    await plcs.start()
    dp = None
    try:
        cfg, data = daemon_config(tmp_path, None, mode="observe",
                                  ports={"rectifier": plcs.rect_edge.port, "potroom": plcs.room_edge.port},
                                  safety={"plc_watchdog_s": 10.0, "stale_after_s": 8.0,
                                          "plc_heartbeat_timeout_s": 8.0})  # fmt: skip
        d = tomllib.loads(cfg.read_text())
        room = next(p for p in d["plc"] if p["kind"] == "potroom")
        room.update(protocol="opcua", path="/plc/", security_mode="SignAndEncrypt", certificate_dir="pki",
                    username="bridge", password_file="plc.pw")  # fmt: skip
        cfg.write_text(dump_toml(d))
        readyz = f"http://127.0.0.1:{data['_ports']['metrics']}/readyz"

        dp = await DaemonProcess(cfg).start()
        await dp.wait_event("daemon.first_cycle", timeout=120.0)

        async def links_up() -> bool:
            status, body = await aget(readyz)
            return status == 200 and json.loads(body)["plc_up"] == {"rectifier1": True, "potroom1": True}

        await until(links_up, "both PLC links up in /readyz", timeout=60.0)

        write_mode_file(tmp_path / "state" / "mode", "control")
        await dp.wait_event("mode.changed", pred=lambda e: e["mode"] == "control")
        # the heartbeat written through the secured session puts the room in remote
        await until(lambda: plcs.room.remote, "the secured potroom PLC in remote", timeout=60.0)
        hb = int(plcs.room_img.get("heartbeat_out"))
        await until(lambda: int(plcs.room_img.get("heartbeat_out")) != hb, "the heartbeat keeps moving")
        assert await dp.stop() == 0
        # handed back: the heartbeat stopped, the PLC's watchdog returned the room to local
        await until(lambda: not plcs.room.remote, "the room back in local after the stop", timeout=30.0)
    finally:
        if dp is not None and dp.returncode is None:
            await dp.kill()
        await plcs.stop()
    # nobody was refused a login or a write on the way
    assert plcs.room_edge.security_events == [], plcs.room_edge.security_events
