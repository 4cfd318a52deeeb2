"""The signing key: created once with mode 0600, refused when others can read it, fingerprints."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from trailseal.delivery.signer import (
    Signer,
    SigningKeyError,
    fingerprint_of,
    load_public_keys_pem,
    verify_signature,
)


def test_create_then_load_same_key(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    s1 = Signer.load_or_create(keys)
    path = keys / "signing-key.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in keys.iterdir() if p.name.startswith(".")] == []
    s2 = Signer.load_or_create(keys)
    assert s1.fingerprint == s2.fingerprint
    assert s1.fingerprint == hashlib.md5(s1.public_key_der_pkcs1()).hexdigest()
    assert len(s1.fingerprint) == 32 and s1.fingerprint == s1.fingerprint.lower()
    pub = keys / "public" / f"{s1.fingerprint}.pem"
    assert pub.read_bytes() == s1.public_key_pem()
    validity = json.loads((keys / "public" / f"{s1.fingerprint}.json").read_text())
    assert validity["fingerprint"] == s1.fingerprint
    assert isinstance(validity["valid_from"], int) and validity["valid_to"] is None


def test_signature_verifies_and_is_lower_hex(tmp_path: Path) -> None:
    s = Signer.load_or_create(tmp_path / "keys")
    sig = s.sign(b"message")
    assert sig == sig.lower() and len(sig) == 512
    (key,) = load_public_keys_pem(s.public_key_pem(), "test")
    assert fingerprint_of(key) == s.fingerprint
    assert verify_signature(key, b"message", sig)
    assert not verify_signature(key, b"messagE", sig)
    assert not verify_signature(key, b"message", "zz")
    other = Signer.load_or_create(tmp_path / "other")
    assert not verify_signature(key, b"message", other.sign(b"message"))


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_refuses_key_readable_by_others(tmp_path: Path, mode: int) -> None:
    keys = tmp_path / "keys"
    Signer.load_or_create(keys)
    path = keys / "signing-key.pem"
    path.chmod(mode)
    with pytest.raises(SigningKeyError, match=rf"mode 0{mode:o}.*chmod 600 {path}"):
        Signer.load_or_create(keys)


def test_refuses_non_rsa2048(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    keys = tmp_path / "keys"
    keys.mkdir()
    path = keys / "signing-key.pem"
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(pem)
    path.chmod(0o600)
    with pytest.raises(SigningKeyError, match="not an RSA key"):
        Signer.load_or_create(keys)
    path.write_text("garbage")
    with pytest.raises(SigningKeyError, match="cannot be read"):
        Signer.load_or_create(keys)


def test_load_public_keys_pem_errors() -> None:
    from trailseal.errors import TrailsealError

    with pytest.raises(TrailsealError, match=r"f\.pem: no '-----BEGIN PUBLIC KEY-----'"):
        load_public_keys_pem(b"hello", "f.pem")


def test_keys_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from trailseal import cli

    cfg = tmp_path / "trailseal.toml"
    cfg.write_text(f'[daemon]\ndata_dir = "{tmp_path / "data"}"\n')
    assert cli.main(["keys", "export", "--config", str(cfg)]) == 1
    assert "no public keys" in capsys.readouterr().err
    s = Signer.load_or_create(tmp_path / "data" / "keys")
    assert cli.main(["keys", "export", "--config", str(cfg)]) == 0
    out = capsys.readouterr()
    (key,) = load_public_keys_pem(out.out.encode(), "stdout")
    assert fingerprint_of(key) == s.fingerprint
    assert s.fingerprint in out.err
