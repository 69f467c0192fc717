"""Bad input to a running daemon (a real process against a HIL rig): what it does with
bad tag values, refusing PLCs, garbage on its listening ports, bad mode requests, a
second daemon on the same journal. It never exits on any of them (README, "Bad input").
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import signal
import socket

import numpy as np
import pytest
from asyncua import ua

from plc_bridge.opcua_security import hash_password
from tests.potline.daemon_support import (
    DEADLINE_S,
    DaemonProcess,
    aget,
    call_set_mode,
    daemon_config,
    journal_events,
    metric,
    rig_scenario,
    start_rig,
    until,
    wait_cycles,
    write_mode_file,
)

pytestmark = [pytest.mark.hil, pytest.mark.timeout(420)]

#: the seed of every random choice in this file
SEED = 20_241_204
#: journal cap [MB]: two 4 kB pages above a fresh journal file (7 pages): control is entered, then it fills
JOURNAL_CAP_MB = 0.04


def _raw(port: int, payload: bytes) -> bytes:
    """Send raw bytes to a loopback port, return what comes back before the peer closes."""
    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            while chunk := s.recv(4096):
                out += chunk
        except (ConnectionResetError, BrokenPipeError, TimeoutError):
            pass
    return out


async def _cycles(mport: int) -> float:
    _, text = await aget(f"http://127.0.0.1:{mport}/metrics")
    return metric(text, "potline_cycles_total") or 0.0


async def test_bad_values_refusing_plcs_garbage_and_bad_requests_never_stop_the_daemon(tmp_path) -> None:
    rig = await start_rig(rig_scenario(speed=20.0))
    sec = {
        "state_dir": str(tmp_path / "opcua"),
        "sign": False,
        "sign_and_encrypt": True,  # logins only over SignAndEncrypt
        "trust_any_client_certificate": True,  # a test bench: no trust directory
        "allow_no_security": True,
        "anonymous": "read_only",
        "users": {"op": {"role": "operator", "password_hash": hash_password("pw")}},
    }
    dp = None
    try:
        cfg, data = daemon_config(tmp_path, rig, mode="observe", opcua={"security": sec})
        mport, oport = data["_ports"]["metrics"], data["_ports"]["opcua"]
        certs = tmp_path / "client"  # the operator client's certificate
        journal = tmp_path / "state" / "journal.db"
        dp = await DaemonProcess(cfg).start()
        await dp.wait_ready()

        # ---- garbage on the listening ports: answered or dropped, the loop goes on
        c0 = await _cycles(mport)
        junk = random.Random(SEED).randbytes(4096)
        await asyncio.to_thread(_raw, oport, b"HEL" + junk)  # not OPC UA: the server drops the connection
        await asyncio.to_thread(_raw, oport, b"HELF\xff\xff\xff\x7f" + junk)  # absurd message size
        reply = await asyncio.to_thread(_raw, mport, b"\x16\x03\x01 not http at all\r\n\r\n")
        assert b"400 - Bad request" in reply  # an error page, no metrics
        reply = await asyncio.to_thread(_raw, mport, b"POST /metrics HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc")
        assert b" 405 " in reply.split(b"\r\n", 1)[0]
        assert (await aget(f"http://127.0.0.1:{mport}/../../etc/passwd"))[0] == 404
        assert await wait_cycles(mport, 3) > c0 and (await aget(f"http://127.0.0.1:{mport}/healthz"))[0] == 200

        # ---- bad mode requests: unknown mode, mode file garbage, a mode file others may write, SIGHUP
        with pytest.raises(ua.UaStatusCodeError) as err:
            await call_set_mode(oport, "turbo", "op", "pw", certs=certs)
        assert err.value.code == ua.StatusCodes.BadInvalidArgument
        mode_file = tmp_path / "state" / "mode"
        write_mode_file(mode_file, "warp9")
        await dp.wait_event("mode_file.refused", pred=lambda e: "warp9" in e["reason"])
        # a word it cannot use is written over with the running mode
        await until(lambda: mode_file.read_text() == "observe\n", "the running mode back in the mode file")
        os.chmod(mode_file, 0o666)  # permissions first: "control" is never readable from a safe file
        mode_file.write_text("control\n")
        await dp.wait_event("mode_file.refused", pred=lambda e: "writable by group/others" in e["reason"])
        mode_file.write_bytes(b"x" * 5000)
        os.chmod(mode_file, 0o600)
        await dp.wait_event("mode_file.refused", pred=lambda e: "5000 bytes" in e["reason"])
        assert mode_file.stat().st_size == 5000  # a file it does not trust is left as it is
        mode_file.unlink()
        dp.signal(signal.SIGHUP)
        await dp.wait_event("signal.ignored")

        # ---- control is refused while a PLC link is down (interlock), journalled
        h = rig.plc("potroom:Potroom1")
        n = len(dp.events)
        h.proxy.drop("refuse")
        await dp.wait_event("plc.comms_lost", after=n)
        with pytest.raises(ua.UaStatusCodeError) as err:
            await call_set_mode(oport, "control", "op", "pw", certs=certs)
        assert err.value.code == ua.StatusCodes.BadInvalidState
        h.proxy.restore()
        await dp.wait_event("plc.comms_restored", after=n)
        assert await call_set_mode(oport, "control", "op", "pw", certs=certs) == "observe"

        # ---- a NaN cell voltage (broken transmitter) during an AE: not acted on, detected once good
        cell = 2  # index; floor number 3
        await rig.inject({"kind": "bad_sensor", "cells": [cell], "duration_s": 30.0})
        t_bad = rig.now()
        crit = rig.potline.truth()["critical_alumina_wt_pct"][cell]
        rig.potline.force_alumina(np.array([cell]), float(crit) - 0.1)
        await rig.wait_until(t_bad + 30.0 + 12.0, timeout_wall_s=DEADLINE_S)
        t_clear = t_bad + 30.0

        # ---- the potroom PLC answers every request with exception 6 (device busy): a comms fault
        n = len(dp.events)
        await rig.inject({"kind": "exception", "target": "potroom", "code": 6, "duration_s": 20.0})
        lost = await dp.wait_event("plc.comms_lost", after=n, pred=lambda e: e["plc"] == "potroom1")
        assert "exception 6" in lost["reason"]
        await dp.wait_event("plc.comms_restored", after=n, pred=lambda e: e["plc"] == "potroom1")

        # ---- a second daemon on the same journal is refused; the first one is untouched
        out = await asyncio.create_subprocess_exec(
            *dp_cmd(cfg), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        so, se = await asyncio.wait_for(out.communicate(), DEADLINE_S)
        assert out.returncode == 1 and b"in use by another writer" in so + se
        assert dp.returncode is None and (await aget(f"http://127.0.0.1:{mport}/healthz"))[0] == 200

        assert await dp.stop() == 0
        rep = rig.report()
    finally:
        if dp is not None and dp.returncode is None:
            await dp.kill()
        await rig.stop()

    ev = journal_events(journal)
    refused = [e for e in ev if e.kind == "mode_refused"]
    reasons = " | ".join(e.detail for e in refused)
    assert "warp9" in reasons and "writable by group/others" in reasons and "5000 bytes" in reasons
    assert any("PLC link(s) down: potroom1" in e.detail and e.source == "opcua" and e.user == "op" for e in refused)
    assert [e.mode for e in ev if e.kind == "mode_change"] == ["control"]
    # the NaN cell: no detection while its voltage was bad; detected after, if the AE outlived the fault
    ae3 = [e for e in ev if e.kind == "ae_start" and e.cell == cell + 1 and e.t_plant_s >= t_bad - 2.0]
    assert all(e.t_plant_s >= t_clear for e in ae3), [(e.t_plant_s, t_bad, t_clear) for e in ae3]
    truth = [a for a in rep.aes if a["cell"] == cell and a["start_s"] >= t_bad - 5.0]
    assert truth, "the forced AE happened"
    lasting = [a for a in truth if math.isnan(a["end_s"]) or a["end_s"] > t_clear + 8.0]
    if lasting:
        assert ae3 and ae3[0].t_plant_s <= t_clear + 8.0
    comms = [e for e in ev if e.category == "comms" and e.source == "potroom1"]
    assert any("exception 6" in e.detail for e in comms if e.kind == "comms_lost")
    assert ev[-1].kind == "daemon_stop"


def dp_cmd(cfg) -> list[str]:
    import sys

    return [sys.executable, "-m", "potline.cli", "run", "--config", str(cfg)]


async def test_journal_full_stops_commanding_keeps_running_and_loses_nothing(tmp_path) -> None:
    """The journal cannot grow (``journal.max_mb`` reached; a full disk behaves the same):
    the daemon keeps cycling, holds the entries in memory, leaves ``control`` for
    ``shadow`` (no writes without an audit trail) and does not go back while the journal
    cannot take entries, ``/readyz`` says why; the stop is unclean (exit status 1,
    ``journal.unclean_stop`` with the count and the ``.held`` file) and the next open of
    the journal folds every held entry in, in order."""
    # an AE storm makes entries (AEs, quench beam moves) now that an unchanged setpoint is not journalled
    rig = await start_rig(rig_scenario(speed=10.0, storm_every_s=20.0, storm_start_s=20.0))
    dp = None
    try:
        # a cap a little above the fresh file: control is entered, then the journal fills
        cfg, data = daemon_config(tmp_path, rig, mode="control", journal={"max_mb": JOURNAL_CAP_MB})
        mport = data["_ports"]["metrics"]
        dp = await DaemonProcess(cfg).start()
        await dp.wait_event("mode.changed", pred=lambda e: e.get("mode") == "control")
        await dp.wait_event("journal.commit_failed")
        left = await dp.wait_event("mode.changed", pred=lambda e: e.get("mode") == "shadow")
        assert left["source"] == "daemon" and "journal not writable" in left["reason"]
        await wait_cycles(mport, 5)  # the loop keeps cycling
        status, body = await aget(f"http://127.0.0.1:{mport}/readyz")
        assert status == 503 and "journal not writable" in body
        assert dp.find("mode.changed", lambda e: e["mode"] == "control" and e["_mono"] > left["_mono"]) == []
        assert dp.returncode is None
        assert await dp.stop() == 1  # not every entry committed: an unclean stop
        [unclean] = dp.find("journal.unclean_stop")
        assert (
            unclean["unwritten"] > 0 and unclean["kinds"]["mode_change"] >= 1 and unclean["kinds"]["daemon_stop"] == 1
        )
        assert unclean["held_file"] == str(tmp_path / "state" / "journal.db.held")
        # what the file did take is intact: contiguous ids, the start first, the switch to control in it
        path = tmp_path / "state" / "journal.db"
        ev = journal_events(path)
        assert ev and ev[0].kind in ("unclean_shutdown", "daemon_start")
        assert [e.id for e in ev] == list(range(ev[0].id, ev[0].id + len(ev)))
        assert "daemon_stop" not in [e.kind for e in ev]
        assert [e.data["to"] for e in ev if e.kind == "mode_change"] == ["control"]
        # the next writer (without the cap) folds the held entries in: nothing lost, ids contiguous
        from potline.journal import Journal

        Journal(path).close()
        full = journal_events(path)
        assert [e.id for e in full] == list(range(ev[0].id, ev[0].id + len(full)))
        assert len(full) - len(ev) == unclean["unwritten"]
        assert [e.data["to"] for e in full if e.kind == "mode_change"] == ["control", "shadow"]
        assert full[-1].kind == "daemon_stop"
    finally:
        if dp is not None and dp.returncode is None:
            await dp.kill()
        await rig.stop()


async def test_journal_rotation_keeps_every_entry_once_across_the_files(tmp_path) -> None:
    """``journal.rotate_mb``: the daemon archives the journal file when it passes the size and
    goes on in a fresh one, while it runs in control mode; the archives and the live file
    together hold contiguous ids from 1 (nothing lost, nothing twice), each archive is
    intact and read-only, each new file starts with ``journal_rotated`` naming its archive."""
    from potline.journal import Journal

    rig = await start_rig(rig_scenario(speed=10.0))
    dp = None
    try:
        cfg, _ = daemon_config(tmp_path, rig, mode="control", journal={"rotate_mb": 0.05})
        dp = await DaemonProcess(cfg).start()
        await dp.wait_event("daemon.first_cycle")
        await dp.wait_event("journal.rotated")
        assert await dp.stop() == 0
    finally:
        if dp is not None and dp.returncode is None:
            await dp.kill()
        await rig.stop()
    state = tmp_path / "state"
    archives = sorted(state.glob("journal-*-*-*.db"), key=lambda p: int(p.name.split("-")[1]))
    assert archives
    ids: list[int] = []
    for a in archives:
        assert not os.access(a, os.W_OK) or os.geteuid() == 0  # read-only (root may write anyway)
        assert a.stat().st_mode & 0o222 == 0
        with Journal(a, readonly=True) as old:
            assert old.integrity_check() == "ok"
            got = old.ids()
            first, last = (int(x) for x in a.name.split("-")[1:3])
            assert got == list(range(first, last + 1))
            ids += got
    with Journal(state / "journal.db", readonly=True) as live:
        got = live.ids()
        head = live.query(limit=1)[0]
        assert head.kind == "journal_rotated" and head.data["archive"] == archives[-1].name
        ids += got
    assert ids == list(range(1, len(ids) + 1))
    kinds = [e.kind for f in [*archives, state / "journal.db"] for e in journal_events(f)]
    assert [k for k in kinds if k != "journal_rotated"][-1] == "daemon_stop"
    assert kinds.count("journal_rotated") == len(archives)
