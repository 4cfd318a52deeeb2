"""The access keys the CloudTrail API accepts (SigV4 credentials) and their roles.

Keys come from the config (``[api.access_keys.<ID>] secret = "…", role = "admin" | "read"``).
With none configured, the daemon creates one admin key on first start and reuses it afterwards,
so that local use works out of the box::

    <data_dir>/api/access-key.json   {"access_key_id": "AKIA…", "secret_access_key": "…",
                                      "role": "admin"}   mode 0600, created atomically
                                      (temporary file, fsync, hard link, fsync dir)

A configured key set replaces the generated key entirely (the file is then ignored, not
deleted). Roles: ``admin`` may call every operation, ``read`` only those registered with
``write=False``.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import string
from dataclasses import dataclass
from pathlib import Path

from trailseal.config import ApiConfig
from trailseal.durable import create_exclusively
from trailseal.errors import TrailsealError

GENERATED_KEY_DIR = "api"
GENERATED_KEY_NAME = "access-key.json"
ROLES = ("admin", "read")


class AccessKeyError(TrailsealError):
    """The generated access key file cannot be created or read."""


@dataclass(frozen=True)
class AccessKey:
    access_key_id: str
    secret_access_key: str
    role: str


@dataclass(frozen=True)
class AccessKeys:
    """Every key the API accepts, and where the generated one lives (None when configured)."""

    keys: dict[str, AccessKey]
    generated_path: Path | None = None

    def secrets(self) -> dict[str, str]:
        return {k.access_key_id: k.secret_access_key for k in self.keys.values()}

    def role(self, access_key_id: str) -> str:
        return self.keys[access_key_id].role

    def first_admin(self) -> AccessKey | None:
        return next((k for k in self.keys.values() if k.role == "admin"), None)


def generated_key_path(data_dir: Path) -> Path:
    return data_dir / GENERATED_KEY_DIR / GENERATED_KEY_NAME


def load(api: ApiConfig, data_dir: Path, *, create: bool) -> AccessKeys:
    """The configured keys; with none configured, the generated admin key (created first when
    ``create`` is true — the daemon — and only read otherwise). Raises AccessKeyError."""
    if api.access_keys:
        return AccessKeys(
            {
                key_id: AccessKey(key_id, secret, role)
                for key_id, (secret, role) in api.access_keys.items()
            }
        )
    path = generated_key_path(data_dir)
    if create and not path.exists():
        _create(path)
    key = read_generated(path)
    return AccessKeys({key.access_key_id: key}, generated_path=path)


def _create(path: Path) -> None:
    key_id = "AKIA" + "".join(
        secrets.choice(string.ascii_uppercase + string.digits) for _ in range(16)
    )
    secret = secrets.token_urlsafe(30)
    doc = {"access_key_id": key_id, "secret_access_key": secret, "role": "admin"}
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # another process won the race: its key is the one read back
        create_exclusively(path, json.dumps(doc, indent=2).encode() + b"\n", 0o600)
    except OSError as exc:
        raise AccessKeyError(
            f"cannot create the API access key {path}: {exc.strerror or exc}; make "
            f"{path.parent} writable, or configure [api.access_keys.<ID>]"
        ) from None


def read_generated(path: Path) -> AccessKey:
    """Read ``<data_dir>/api/access-key.json``. Raises AccessKeyError."""
    try:
        st = path.stat()
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise AccessKeyError(
            f"no API access key at {path}: the daemon creates it on first start when no "
            "[api.access_keys.<ID>] is configured (run `trailseal serve` once)"
        ) from None
    except PermissionError:
        raise AccessKeyError(
            f"cannot read the API access key {path}: permission denied; run as the daemon's "
            "user, or configure [api.access_keys.<ID>] and use that key"
        ) from None
    except (OSError, ValueError) as exc:
        raise AccessKeyError(
            f"the API access key {path} cannot be read as JSON: {exc}; remove it and restart "
            "the daemon to create a new one"
        ) from None
    if stat.S_IMODE(st.st_mode) & 0o077 and st.st_uid == os.geteuid():
        raise AccessKeyError(
            f"the API access key {path} has mode {stat.S_IMODE(st.st_mode):04o}: it must be "
            f"readable by its owner only; run `chmod 600 {path}`"
        )
    try:
        key = AccessKey(
            str(doc["access_key_id"]), str(doc["secret_access_key"]), str(doc.get("role", "admin"))
        )
    except (KeyError, TypeError):
        raise AccessKeyError(
            f"the API access key {path} lacks access_key_id or secret_access_key; remove it "
            "and restart the daemon to create a new one"
        ) from None
    if key.role not in ROLES:
        raise AccessKeyError(f"the API access key {path}: role {key.role!r} is not admin or read")
    return key
