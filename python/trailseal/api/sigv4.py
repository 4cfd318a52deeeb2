"""AWS Signature Version 4 verification (sans-IO): does a request that arrived carry a valid
``Authorization: AWS4-HMAC-SHA256 …`` header for one of our access keys?

What is checked, in order (the first failure is the answer; every failure is HTTP 403):

1. An ``Authorization`` header is there (else ``MissingAuthenticationTokenException``) and reads
   ``AWS4-HMAC-SHA256 Credential=<id>/<yyyymmdd>/<region>/<service>/aws4_request,
   SignedHeaders=<a;b;c>, Signature=<64 hex>`` with service ``cloudtrail`` and ``host`` and
   ``x-amz-date`` among the signed headers (else ``IncompleteSignatureException``). Any region is
   accepted: the caller signs with its own ``--region``.
2. The access key is known (else ``UnrecognizedClientException``).
3. ``X-Amz-Date`` is within :data:`MAX_SKEW_SECS` of now (else ``InvalidSignatureException``,
   "Signature expired", as AWS words it) and its day is the credential scope's day.
4. The signature recomputed from the request as it arrived matches, compared in constant time
   (else ``InvalidSignatureException``). The canonical request is rebuilt from the method, the
   path, the query, the signed headers' values and the SHA-256 of the body *as received* — an
   ``x-amz-content-sha256`` header is never trusted in its place.

Nothing here does I/O or reads a clock of its own: ``now`` is passed in.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, unquote

from trailseal.api.operations import ServiceError

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "cloudtrail"
MAX_SKEW_SECS = 15 * 60
_AMZ_DATE = "%Y%m%dT%H%M%SZ"

_AUTH_RE = re.compile(
    r"AWS4-HMAC-SHA256\s+"
    r"Credential=(?P<credential>[^,\s]+)\s*,\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+)\s*,\s*"
    r"Signature=(?P<signature>[0-9a-fA-F]{64})\s*"
)


class SignatureError(ServiceError):
    """The request is refused before any operation runs: AWS's exception name, HTTP 403."""

    def __init__(self, code: str, message: str, status: int = 403) -> None:
        super().__init__(code, message, status=status)


@dataclass(frozen=True)
class Credential:
    """What the ``Authorization`` header claims."""

    access_key_id: str
    date: str
    """yyyymmdd of the credential scope."""
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str


def parse_authorization(value: str | None) -> Credential:
    """Parse the ``Authorization`` header. Raises :class:`SignatureError`."""
    if value is None or not value.strip():
        raise SignatureError(
            "MissingAuthenticationTokenException",
            "Missing Authentication Token: sign the request with AWS Signature Version 4 "
            "(an access key from [api.access_keys], or the daemon's generated one)",
        )
    match = _AUTH_RE.fullmatch(value.strip())
    if match is None:
        if not value.strip().startswith(ALGORITHM):
            raise SignatureError(
                "IncompleteSignatureException",
                f"Authorization header requires the {ALGORITHM} algorithm (Signature Version 4)",
            )
        raise SignatureError(
            "IncompleteSignatureException",
            "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' "
            f"parameters: {value.strip()[:200]!r}",
        )
    parts = match["credential"].split("/")
    if len(parts) != 5 or parts[4] != "aws4_request" or not all(parts):
        raise SignatureError(
            "IncompleteSignatureException",
            f"Credential should be scoped to a valid region and service, like "
            f"<access key>/<yyyymmdd>/<region>/{SERVICE}/aws4_request, not {match['credential']!r}",
        )
    key_id, date, region, service, _ = parts
    if service != SERVICE:
        raise SignatureError(
            "IncompleteSignatureException",
            f"Credential should be scoped to correct service: '{SERVICE}' (got {service!r})",
        )
    if not re.fullmatch(r"\d{8}", date):
        raise SignatureError(
            "IncompleteSignatureException", f"Credential date {date!r} is not yyyymmdd"
        )
    signed = tuple(match["signed"].lower().split(";"))
    for required in ("host", "x-amz-date"):
        if required not in signed:
            raise SignatureError(
                "IncompleteSignatureException",
                f"SignedHeaders must include '{required}' (got {match['signed']!r})",
            )
    return Credential(key_id, date, region, service, signed, match["signature"].lower())


def signing_key(secret: str, date: str, region: str, service: str = SERVICE) -> bytes:
    key = _hmac(f"AWS4{secret}".encode(), date)
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    return key


def canonical_request(
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    signed_headers: tuple[str, ...],
    body: bytes,
) -> str:
    """The SigV4 canonical request of a request as it arrived (``headers`` with lower-case
    names). A signed header that is absent makes the signature fail, as it should."""
    lines = [method.upper(), _canonical_path(path), _canonical_query(query)]
    for name in signed_headers:
        lines.append(f"{name}:{' '.join(headers.get(name, '').split())}")
    lines.append("")
    lines.append(";".join(signed_headers))
    lines.append(hashlib.sha256(body).hexdigest())
    return "\n".join(lines)


def string_to_sign(amz_date: str, credential: Credential, canonical: str) -> str:
    scope = f"{credential.date}/{credential.region}/{credential.service}/aws4_request"
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{scope}\n{digest}"


def verify(
    *,
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes,
    secrets: Mapping[str, str],
    now: datetime,
) -> str:
    """Check the request's signature; return its access key id. ``secrets`` maps access key
    ids to secret keys; ``headers`` has lower-case names. Raises :class:`SignatureError`."""
    credential = parse_authorization(headers.get("authorization"))
    secret = secrets.get(credential.access_key_id)
    if secret is None:
        raise SignatureError(
            "UnrecognizedClientException",
            "The security token included in the request is invalid: access key "
            f"{credential.access_key_id!r} is not one of the daemon's [api.access_keys]",
        )
    amz_date = headers.get("x-amz-date", "")
    try:
        signed_at = datetime.strptime(amz_date, _AMZ_DATE).replace(tzinfo=UTC)
    except ValueError:
        raise SignatureError(
            "IncompleteSignatureException",
            f"X-Amz-Date {amz_date!r} is not a date like 20260101T000000Z",
        ) from None
    skew = timedelta(seconds=MAX_SKEW_SECS)
    if signed_at < now - skew:
        raise SignatureError(
            "InvalidSignatureException",
            f"Signature expired: {amz_date} is now earlier than "
            f"{(now - skew).strftime(_AMZ_DATE)} ({now.strftime(_AMZ_DATE)} - 15 min.)",
        )
    if signed_at > now + skew:
        raise SignatureError(
            "InvalidSignatureException",
            f"Signature not yet current: {amz_date} is still later than "
            f"{(now + skew).strftime(_AMZ_DATE)} ({now.strftime(_AMZ_DATE)} + 15 min.)",
        )
    if credential.date != amz_date[:8]:
        raise SignatureError(
            "InvalidSignatureException",
            f"Date in Credential scope does not match YYYYMMDD from X-Amz-Date: "
            f"{credential.date} vs {amz_date[:8]}",
        )
    canonical = canonical_request(method, path, query, headers, credential.signed_headers, body)
    key = signing_key(secret, credential.date, credential.region, credential.service)
    expected = _hmac(key, string_to_sign(amz_date, credential, canonical)).hex()
    if not hmac.compare_digest(expected, credential.signature):
        raise SignatureError(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method.",
        )
    return credential.access_key_id


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def _canonical_path(path: str) -> str:
    """The URI path, normalized (``.``/``..``/empty segments) and URI-encoded as AWS services
    other than S3 expect (the encoded path is encoded once more, as botocore signs it)."""
    if not path:
        return "/"
    segments: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    normalized = "/" + "/".join(segments)
    if path.endswith("/") and normalized != "/":
        normalized += "/"
    return quote(normalized, safe="/~")


def _canonical_query(query: str) -> str:
    if not query:
        return ""
    pairs: list[tuple[str, str]] = []
    for item in query.split("&"):
        if not item:
            continue
        name, _, value = item.partition("=")
        pairs.append((quote(unquote(name), safe="-_.~"), quote(unquote(value), safe="-_.~")))
    return "&".join(f"{name}={value}" for name, value in sorted(pairs))
