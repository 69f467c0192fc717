"""The mirror's security events wired into the daemon (issue 15): refused logins and denied
requests on a running ``potline run`` process end up in its journal (category alarm, with
the user and the client's address, rate-limited summaries whose counts add up) and in
``potline_opcua_security_events_total``. Real process, real OPC UA clients over
Basic256Sha256 SignAndEncrypt, a real journal file; no PLC needed (nobody listens at the
PLC ports: the daemon runs anyway and serves its mirror).
"""

from __future__ import annotations

import pytest
from asyncua import Client, ua

from plc_bridge.opcua_security import ClientSecurity, hash_password
from plc_bridge.ports import free_port
from tests.potline.daemon_support import (
    DaemonProcess,
    call_set_mode,
    daemon_config,
    journal_events,
    read_metric,
    until,
    wait_journal,
)

pytestmark = [pytest.mark.timeout(300)]

WRONG = 5


async def test_wrong_mirror_passwords_and_denied_calls_are_journalled(tmp_path) -> None:
    sec = {"state_dir": str(tmp_path / "opcua"), "sign": False, "sign_and_encrypt": True, "trust_any_client_certificate": True,
           "users": {"op": {"role": "operator", "password_hash": hash_password("op-pass")},
                     "view": {"role": "viewer", "password_hash": hash_password("view-pass")}}}  # fmt: skip
    cfg, data = daemon_config(tmp_path, None, ports={"rectifier": free_port(), "potroom": free_port()},
                              opcua={"security": sec})  # fmt: skip
    oport, mport = data["_ports"]["opcua"], data["_ports"]["metrics"]
    journal = tmp_path / "state" / "journal.db"
    certs = tmp_path / "client"
    dp = await DaemonProcess(cfg).start()
    try:
        await dp.wait_ready()
        # a viewer may not switch modes: denied, journalled
        with pytest.raises(ua.UaStatusCodeError) as err:
            await call_set_mode(oport, "shadow", "view", "view-pass", certs=certs)
        assert err.value.code == ua.StatusCodes.BadUserAccessDenied
        # five wrong passwords for the operator
        for i in range(WRONG):
            client = Client(f"opc.tcp://127.0.0.1:{oport}/potline-twin/", timeout=30)
            sec_c = ClientSecurity(mode="SignAndEncrypt", state_dir=certs, username="op", password=f"guess-{i}")
            await sec_c.apply(client)
            with pytest.raises(Exception):  # noqa: B017 -- asyncua raises its status error or a closed connection
                async with client:
                    pass
        # the first of a kind is journalled at once, the rest summed per minute
        await wait_journal(journal, lambda ev: any(e.kind == "opcua_login_failed" for e in ev), "opcua_login_failed")
        await until(lambda: read_metric(mport, "potline_opcua_security_events_total", kind="login_failed"),
                    "the security metric")  # fmt: skip
        assert (await read_metric(mport, "potline_opcua_security_events_total", kind="call_denied")) == 1.0
        assert await dp.stop() == 0  # the mirror's stop hands over the last summaries before the journal closes
    finally:
        if dp.returncode is None:
            await dp.kill()

    ev = journal_events(journal)
    failed = [e for e in ev if e.kind == "opcua_login_failed"]
    assert failed and all(e.category == "alarm" and e.source == "opcua" and e.user == "op" for e in failed)
    assert all(e.data["client"] == "127.0.0.1" for e in failed)
    assert sum(e.data["count"] for e in failed) == WRONG
    denied = [e for e in ev if e.kind == "opcua_call_denied"]
    assert [(e.user, e.data["count"]) for e in denied] == [("view", 1)]
    assert ev[-1].kind == "daemon_stop" and max(e.id for e in failed) < ev[-1].id
    assert not [e for e in ev if e.kind == "mode_change"]  # nothing was switched
