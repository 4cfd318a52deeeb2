"""The digest signing key (FORMATS.md §6) and ``trailseal keys export``.

On-disk layout under ``<data_dir>/keys/``::

    signing-key.pem              RSA-2048 private key, PKCS#8 PEM, mode 0600, created atomically
                                 on first start (temporary file, fsync, hard link, fsync dir)
    public/<fingerprint>.pem     every public key ever signed with (SubjectPublicKeyInfo PEM)
    public/<fingerprint>.json    {"fingerprint", "valid_from", "valid_to"} epoch seconds
                                 (valid_to null while the key is in use)

Invariants: the fingerprint is the md5 hex of the DER PKCS#1 RSAPublicKey; signatures are
RSASSA-PKCS1-v1_5 with SHA-256, lower-case hex; a private key file readable by group or others
is refused rather than used.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import stat
import sys
import time
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from trailseal.durable import create_exclusively
from trailseal.errors import TrailsealError

PRIVATE_KEY_NAME = "signing-key.pem"
PUBLIC_DIR_NAME = "public"
SIGNATURE_ALGORITHM = "SHA256withRSA"


class SigningKeyError(TrailsealError):
    """The signing key file is missing, unreadable, unsafe or not an RSA-2048 key."""


def fingerprint_of(public_key: rsa.RSAPublicKey) -> str:
    """md5 hex of the DER PKCS#1 RSAPublicKey (CloudTrail's digestPublicKeyFingerprint)."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    return hashlib.md5(der, usedforsecurity=False).hexdigest()


def verify_signature(public_key: rsa.RSAPublicKey, data: bytes, signature_hex: str) -> bool:
    """True when ``signature_hex`` is a valid SHA256withRSA signature of ``data``."""
    from cryptography.exceptions import InvalidSignature

    try:
        signature = bytes.fromhex(signature_hex)
    except ValueError:
        return False
    try:
        public_key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


class Signer:
    """Signs digests with the daemon's RSA-2048 key."""

    def __init__(self, private_key: rsa.RSAPrivateKey) -> None:
        if private_key.key_size != 2048:
            raise SigningKeyError(
                f"the signing key is RSA-{private_key.key_size}; trailseal signs with RSA-2048"
            )
        self._key = private_key
        self.fingerprint = fingerprint_of(private_key.public_key())

    @classmethod
    def load_or_create(cls, keys_dir: Path) -> Signer:
        """Load ``keys_dir/signing-key.pem``, creating it (mode 0600) on first start, and record
        its public key under ``keys_dir/public/``."""
        keys_dir = Path(keys_dir)
        path = keys_dir / PRIVATE_KEY_NAME
        try:
            keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not path.exists():
                key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
                pem = key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
                create_exclusively(path, pem, 0o600)  # another process won: load theirs below
            st = path.stat()
        except OSError as e:
            raise SigningKeyError(f"cannot create or open the signing key {path}: {e}") from e
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise SigningKeyError(
                f"signing key {path} has mode {stat.S_IMODE(st.st_mode):04o}: it must be readable "
                f"by its owner only; run `chmod 600 {path}` (and check who may have read it)"
            )
        try:
            loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as e:
            raise SigningKeyError(
                f"signing key {path} cannot be read as an unencrypted PEM private key: {e}"
            ) from e
        if not isinstance(loaded, rsa.RSAPrivateKey):
            raise SigningKeyError(f"signing key {path} is not an RSA key; trailseal needs RSA-2048")
        signer = cls(loaded)
        signer._record_public_key(keys_dir / PUBLIC_DIR_NAME)
        return signer

    def _record_public_key(self, public_dir: Path) -> None:
        try:
            public_dir.mkdir(parents=True, exist_ok=True)
            create_exclusively(public_dir / f"{self.fingerprint}.pem", self.public_key_pem(), 0o644)
            validity = {
                "fingerprint": self.fingerprint,
                "valid_from": int(time.time()),
                "valid_to": None,
            }
            create_exclusively(
                public_dir / f"{self.fingerprint}.json", json.dumps(validity).encode(), 0o644
            )
        except OSError as e:
            raise SigningKeyError(f"cannot record the public key in {public_dir}: {e}") from e

    def sign(self, data: bytes) -> str:
        """SHA256withRSA (PKCS#1 v1.5) signature of ``data``, lower-case hex."""
        return self._key.sign(data, padding.PKCS1v15(), hashes.SHA256()).hex()

    def public_key(self) -> rsa.RSAPublicKey:
        return self._key.public_key()

    def public_key_pem(self) -> bytes:
        """SubjectPublicKeyInfo PEM (what ``trailseal validate --public-key`` reads)."""
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def public_key_der_pkcs1(self) -> bytes:
        """DER PKCS#1 RSAPublicKey (CloudTrail's ListPublicKeys ``Value``)."""
        return self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.PKCS1
        )


def load_public_keys_pem(data: bytes, source: str) -> list[rsa.RSAPublicKey]:
    """Every RSA public key in a PEM text (one or more blocks). Raises TrailsealError naming
    ``source`` when there is none or one cannot be read."""
    marker = b"-----BEGIN PUBLIC KEY-----"
    blocks = [marker + chunk for chunk in data.split(marker)[1:]]
    if not blocks:
        raise TrailsealError(f"{source}: no '-----BEGIN PUBLIC KEY-----' block found")
    keys: list[rsa.RSAPublicKey] = []
    for n, block in enumerate(blocks, 1):
        try:
            key = serialization.load_pem_public_key(block)
        except ValueError as e:
            raise TrailsealError(f"{source}: public key block {n} cannot be read: {e}") from e
        if not isinstance(key, rsa.RSAPublicKey):
            raise TrailsealError(f"{source}: public key block {n} is not an RSA key")
        keys.append(key)
    return keys


def main(args: argparse.Namespace) -> int:
    """``trailseal keys export [--config FILE]``: print every public signing key as PEM on
    stdout (fingerprint and validity on stderr)."""
    from trailseal import config as config_mod

    try:
        cfg = config_mod.load(args.config)
    except TrailsealError as e:
        print(f"trailseal keys export: {e}", file=sys.stderr)
        return 2
    public_dir = cfg.daemon.data_dir / "keys" / PUBLIC_DIR_NAME
    pems = sorted(public_dir.glob("*.pem")) if public_dir.is_dir() else []
    if not pems:
        print(
            f"trailseal keys export: no public keys in {public_dir}; the daemon creates its "
            "signing key on first start (trailseal serve)",
            file=sys.stderr,
        )
        return 1
    for pem in pems:
        info = pem.with_suffix(".json")
        detail = info.read_text().strip() if info.exists() else "{}"
        print(f"{pem.stem}: {detail}", file=sys.stderr)
        sys.stdout.write(pem.read_text())
    return 0
