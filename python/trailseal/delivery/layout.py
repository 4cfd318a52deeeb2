"""Object keys of delivered files (FORMATS.md §4–§6), as pure functions.

Invariants:
- a log file key is ``[<prefix>/]AWSLogs/[<o-org>/]<account>/CloudTrail/<region>/YYYY/MM/DD/``
  ``<account>_CloudTrail_<region>_<YYYYMMDDTHHmmZ>_<16 random [A-Za-z0-9]>.json.zst`` (``.json.gz``
  for gzip); the date parts are the delivery time in UTC;
- a digest key is ``[<prefix>/]AWSLogs/[<o-org>/]<account>/CloudTrail-Digest/<region>/YYYY/MM/DD/``
  ``<account>_CloudTrail-Digest_<region>_<trail>_<home region>_<YYYYMMDDTHHMMSSZ>.json.gz`` with
  the date and timestamp of ``digestEndTime``;
- a public key lives at ``[<prefix>/]trailseal-public-keys/<fingerprint>.pem``.
"""

from __future__ import annotations

import re
import secrets
import string
from dataclasses import dataclass
from datetime import UTC, datetime

_ALPHABET = string.ascii_letters + string.digits
_EXTENSIONS = {"zstd": ".json.zst", "gzip": ".json.gz"}

PUBLIC_KEYS_DIR = "trailseal-public-keys"


def join_key(prefix: str, rest: str) -> str:
    """``prefix + "/" + rest``, or just ``rest`` when there is no prefix."""
    prefix = prefix.strip("/")
    return f"{prefix}/{rest}" if prefix else rest


def _utc(when: datetime) -> datetime:
    if when.tzinfo is None:
        raise ValueError(f"object key time {when!r} has no time zone; pass an aware UTC datetime")
    return when.astimezone(UTC)


def _account_root(prefix: str, organization_id: str, account: str) -> str:
    org = f"{organization_id}/" if organization_id else ""
    return join_key(prefix, f"AWSLogs/{org}{account}")


_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def bucket_name_problem(bucket: str) -> str | None:
    """Why ``bucket`` is not an S3 bucket name, or None."""
    if not _BUCKET_RE.fullmatch(bucket) or ".." in bucket:
        return (
            "a bucket name has 3-63 lower-case letters, digits, '.' and '-', and starts and ends "
            "with a letter or digit"
        )
    return None


def log_object_key(
    *,
    prefix: str,
    organization_id: str,
    account: str,
    region: str,
    when: datetime,
    compression: str,
    insight: bool = False,
) -> str:
    """The object key of a log file delivered at ``when`` (FORMATS.md §4)."""
    try:
        ext = _EXTENSIONS[compression]
    except KeyError:
        raise ValueError(
            f"unknown compression {compression!r} for a log file key; use 'zstd' or 'gzip'"
        ) from None
    when = _utc(when)
    kind = "CloudTrail-Insight" if insight else "CloudTrail"
    suffix = "".join(secrets.choice(_ALPHABET) for _ in range(16))
    name = f"{account}_{kind}_{region}_{when:%Y%m%dT%H%MZ}_{suffix}{ext}"
    root = _account_root(prefix, organization_id, account)
    return f"{root}/{kind}/{region}/{when:%Y/%m/%d}/{name}"


def digest_object_key(
    *,
    prefix: str,
    organization_id: str,
    account: str,
    region: str,
    trail_name: str,
    home_region: str,
    end: datetime,
) -> str:
    """The object key of the digest of stream (account, region) ending at ``end`` (§5)."""
    end = _utc(end)
    name = (
        f"{account}_CloudTrail-Digest_{region}_{trail_name}_{home_region}_"
        f"{end:%Y%m%dT%H%M%SZ}.json.gz"
    )
    root = _account_root(prefix, organization_id, account)
    return f"{root}/CloudTrail-Digest/{region}/{end:%Y/%m/%d}/{name}"


def public_key_object_key(prefix: str, fingerprint: str) -> str:
    """Where a destination keeps the public key with this fingerprint (§6)."""
    return join_key(prefix, f"{PUBLIC_KEYS_DIR}/{fingerprint}.pem")


@dataclass(frozen=True)
class DigestKeyParts:
    """What a digest's key says about it (used by the validator to group chains)."""

    root: str
    """Everything before ``<account>/CloudTrail-Digest/``, i.e. ``[<prefix>/]AWSLogs/[<org>/]``."""
    account: str
    region: str
    trail_name: str
    home_region: str
    end: datetime


_DIGEST_RE = re.compile(
    r"^(?P<root>(?:.*/)?AWSLogs/(?:o-[a-z0-9]+/)?)(?P<account>\d{12})/CloudTrail-Digest/"
    r"(?P<region>[^/]+)/\d{4}/\d{2}/\d{2}/(?P=account)_CloudTrail-Digest_(?P=region)_"
    r"(?P<trail>.+)_(?P<home>[^_/]+)_(?P<ts>\d{8}T\d{6}Z)\.json\.gz$"
)
_LOG_RE = re.compile(
    r"^(?:.*/)?AWSLogs/(?:o-[a-z0-9]+/)?(?P<account>\d{12})/(?P<kind>CloudTrail(?:-Insight)?)/"
    r"(?P<region>[^/]+)/\d{4}/\d{2}/\d{2}/(?P=account)_(?P=kind)_(?P=region)_\d{8}T\d{4}Z_"
    r"[A-Za-z0-9]{16}\.json\.(?:zst|gz)$"
)


def parse_digest_key(key: str) -> DigestKeyParts | None:
    """Split a digest key into its parts; None when ``key`` is not shaped like a digest key."""
    m = _DIGEST_RE.match(key)
    if m is None:
        return None
    end = datetime.strptime(m["ts"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return DigestKeyParts(m["root"], m["account"], m["region"], m["trail"], m["home"], end)


def is_log_file_key(key: str) -> bool:
    """True when ``key`` is shaped like a log file key (§4)."""
    return _LOG_RE.match(key) is not None
