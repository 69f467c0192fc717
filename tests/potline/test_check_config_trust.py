"""Secure defaults, caught before ``potline run`` (issue 14 item 7).

``potline check-config`` reads the certificate and trust files a daemon config names and
refuses each problem naming the file and the key: a missing or empty trusted-client
directory (``run`` would otherwise die with asyncua's "can't create an empty store"), an
expired or malformed certificate in it, a PLC client certificate whose private key is
another certificate's; certificate endpoints with nothing to vouch for clients are a
warning. ``potline hash-password`` works non-interactively (the password on stdin). All
through the real CLI in a subprocess.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import tomllib
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from hil_rigs.process import dump_toml
from plc_bridge.opcua_security import verify_password
from tests.potline.daemon_support import daemon_config


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "potline.cli", *args], input=stdin, capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip


def _cert(path: Path, key_path: Path | None, *, days: tuple[int, int] = (-1, 365)) -> rsa.RSAPrivateKey:
    """A self-signed certificate valid from now+days[0] to now+days[1] (DER), its key (PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, path.stem)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now + dt.timedelta(days=days[0]))
            .not_valid_after(now + dt.timedelta(days=days[1])).sign(key, hashes.SHA256()))  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    if key_path is not None:
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))  # fmt: skip
    return key


def _config(tmp_path: Path, security: dict, plc_keys: dict | None = None) -> Path:
    cfg, _ = daemon_config(tmp_path, None, ports={"rectifier": 15020, "potroom": 15021})
    data = tomllib.loads(cfg.read_text())
    data["opcua"]["security"] = security
    if plc_keys is not None:
        plc = data["plc"][1]
        plc["protocol"] = "opcua"
        plc.update(plc_keys)
    cfg.write_text(dump_toml(data))
    return cfg


def test_check_config_names_trust_store_problems_file_and_key(tmp_path: Path) -> None:
    base = {"sign": True, "sign_and_encrypt": True}
    # a trust directory that does not exist
    cfg = _config(tmp_path, {**base, "trusted_client_certs_dir": str(tmp_path / "nowhere")})
    r = _cli("check-config", "--config", str(cfg))
    assert r.returncode == 1
    assert "opcua.security.trusted_client_certs_dir" in r.stderr and str(tmp_path / "nowhere") in r.stderr
    assert "not found" in r.stderr

    # an empty one (asyncua: "can't create an empty store" at run time)
    empty = tmp_path / "trusted"
    empty.mkdir()
    cfg = _config(tmp_path, {**base, "trusted_client_certs_dir": str(empty)})
    r = _cli("check-config", "--config", str(cfg), "--json")
    assert r.returncode == 1
    errs = json.loads(r.stdout)["errors"]
    assert [e["key"] for e in errs] == ["opcua.security.trusted_client_certs_dir"] and "empty" in errs[0]["message"]

    # an expired certificate and a file that is not a certificate, each named
    _cert(empty / "old_hmi.der", None, days=(-400, -5))
    (empty / "notes.der").write_text("not a certificate")
    _cert(empty / "good.der", None)
    r = _cli("check-config", "--config", str(cfg))
    assert r.returncode == 1
    assert f"{empty / 'old_hmi.der'}: expired on" in r.stderr
    assert f"{empty / 'notes.der'}: expected an X.509 certificate" in r.stderr
    assert "good.der" not in r.stderr

    # a PLC client certificate with another certificate's key
    (empty / "old_hmi.der").unlink()
    (empty / "notes.der").unlink()
    _cert(tmp_path / "pki" / "bridge.der", None)
    _cert(tmp_path / "pki" / "other.der", tmp_path / "pki" / "other_key.pem")
    cfg = _config(tmp_path, {**base, "trusted_client_certs_dir": str(empty)},
                  {"security_mode": "SignAndEncrypt", "certificate": "pki/bridge.der",
                   "private_key": "pki/other_key.pem"})  # fmt: skip
    r = _cli("check-config", "--config", str(cfg))
    assert r.returncode == 1
    assert "plc[1:potroom1].private_key" in r.stderr and "does not belong to" in r.stderr

    # all good: valid; without a trust directory refused (any certificate would be accepted)
    # unless the config says it is a lab, which is warned about
    _cert(tmp_path / "pki" / "bridge.der", tmp_path / "pki" / "bridge_key.pem")
    cfg = _config(tmp_path, {**base, "trusted_client_certs_dir": str(empty)},
                  {"security_mode": "SignAndEncrypt", "certificate": "pki/bridge.der",
                   "private_key": "pki/bridge_key.pem"})  # fmt: skip
    r = _cli("check-config", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stdout
    cfg = _config(tmp_path, base)
    r = _cli("check-config", "--config", str(cfg))
    assert r.returncode == 1
    assert "opcua.security.trusted_client_certs_dir" in r.stderr
    assert "any client certificate would be accepted" in r.stderr
    cfg = _config(tmp_path, {**base, "trust_any_client_certificate": True})
    r = _cli("check-config", "--config", str(cfg))
    assert r.returncode == 0 and "ANY client certificate is accepted" in r.stdout


def test_hash_password_reads_stdin_when_piped() -> None:
    r = _cli("hash-password", stdin="correct horse\n")
    assert r.returncode == 0, r.stderr
    stored = r.stdout.strip()
    assert stored.startswith("scrypt$") and verify_password("correct horse", stored)
    assert not verify_password("correct horse\n", stored)  # the line ending is not part of it
    r = _cli("hash-password", stdin="")
    assert r.returncode == 1 and "end of input" in r.stderr
    r = _cli("hash-password", stdin="\n")
    assert r.returncode == 1 and "empty" in r.stderr
