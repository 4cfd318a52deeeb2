"""CloudTrail's ``ListPublicKeys`` (FORMATS.md §6, §8): the public keys digests were signed with.

Read from ``<data_dir>/keys/public/`` (written by :mod:`trailseal.delivery.signer`): each
``<fingerprint>.pem`` (SubjectPublicKeyInfo PEM) with its ``<fingerprint>.json``
``{"fingerprint", "valid_from", "valid_to" | null}``. Each key is answered as CloudTrail does::

    {"Value": <DER PKCS#1 RSAPublicKey, base64 (the JSON protocol's blob encoding)>,
     "ValidityStartTime": <epoch s>, "ValidityEndTime": <epoch s>, "Fingerprint": <md5 hex>}

The key in use (``valid_to`` null) is reported valid until now and matches any range that
starts after its start. ``StartTime``/``EndTime`` (optional,
epoch seconds) keep the keys whose validity overlaps ``[StartTime, EndTime]``; start after end is
``InvalidTimeRangeException``. ``aws cloudtrail validate-logs`` looks keys up by ``Fingerprint``
and loads ``Value`` with ``rsa.PublicKey.load_pkcs1(…, format="DER")``.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from pathlib import Path
from typing import Any

import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from trailseal.api.operations import CallContext, ServiceError, operation
from trailseal.delivery.signer import PUBLIC_DIR_NAME, fingerprint_of

log = logging.getLogger("trailseal.api")


def read_public_keys(data_dir: Path, now: float) -> list[dict[str, Any]]:
    """Every recorded public key as a ``PublicKeyList`` entry, oldest first (blocking), plus
    ``InUse`` (the key signing now: its validity is open-ended, whatever range is asked)."""
    public_dir = data_dir / "keys" / PUBLIC_DIR_NAME
    out: list[dict[str, Any]] = []
    for pem_path in sorted(public_dir.glob("*.pem")) if public_dir.is_dir() else []:
        info_path = pem_path.with_suffix(".json")
        try:
            key = serialization.load_pem_public_key(pem_path.read_bytes())
            info = json.loads(info_path.read_bytes())
            valid_from = int(info["valid_from"])
            valid_to = info.get("valid_to")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ListPublicKeys: skipping %s: %s", pem_path, exc)
            continue
        if not isinstance(key, rsa.RSAPublicKey):
            log.warning("ListPublicKeys: skipping %s: not an RSA key", pem_path)
            continue
        der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
        end = int(valid_to) if valid_to is not None else max(int(now), valid_from)
        out.append(
            {
                "Value": base64.b64encode(der).decode("ascii"),
                "ValidityStartTime": valid_from,
                "ValidityEndTime": end,
                "Fingerprint": fingerprint_of(key),
                "InUse": valid_to is None,
            }
        )
    out.sort(key=lambda k: (k["ValidityStartTime"], k["Fingerprint"]))
    return out


def _epoch(params: dict[str, Any], name: str) -> float | None:
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ServiceError(
            "SerializationException", f"{name} must be a timestamp in epoch seconds, not {value!r}"
        )
    return float(value)


@operation("ListPublicKeys")
async def list_public_keys(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
    start = _epoch(params, "StartTime")
    end = _epoch(params, "EndTime")
    if start is not None and end is not None and start > end:
        raise ServiceError(
            "InvalidTimeRangeException",
            "Occurs if the timestamp values are invalid. Either the start time occurs after the "
            "end time or the time range is outside the range of possible values.",
        )
    now = time.time()
    keys = await trio.to_thread.run_sync(read_public_keys, ctx.state.data_dir, now)
    chosen = [
        {name: value for name, value in k.items() if name != "InUse"}
        for k in keys
        if (end is None or k["ValidityStartTime"] <= end)
        and (start is None or k["InUse"] or k["ValidityEndTime"] >= start)
    ]
    return {"PublicKeyList": chosen}
