"""``s3://bucket[/prefix]`` destinations: the :class:`~trailseal.delivery.destination.Destination`
contract on Amazon S3 or an S3-compatible server, through one thread-safe boto3 client.

Invariants (the same as ``file://``, enforced by the server rather than by us):
- never overwrite: every PutObject (and every CompleteMultipartUpload) carries
  ``If-None-Match: *``. When the server answers 412 PreconditionFailed (or 409
  ConditionalRequestConflict) the existing object is read back and compared: same bytes and
  same user metadata → the put counts as done (a retry, a re-delivery after a crash); anything
  else → IntegrityError, logged at ERROR, the object left as it is;
- the server verifies every byte: each PutObject carries ``ChecksumSHA256`` (base64 of the
  SHA-256 we computed while reading the file), each multipart part its own, so a body damaged
  in flight is refused (400 BadDigest) instead of stored;
- a trail's ``sse``/``kms_key_id`` and ``object_lock_mode``/``object_lock_days`` go on every
  object it writes (log files, digests, public keys): ``ObjectLockRetainUntilDate`` is the
  moment of the put plus ``object_lock_days``.

Where things come from: the endpoint from the trail's ``s3_endpoint_url`` (or, for readers,
``--s3-endpoint-url``), else the AWS SDK default (which honours ``AWS_ENDPOINT_URL_S3``);
the region from ``s3_region``, else the SDK default; credentials only from the usual AWS chain
(environment, shared config/credentials files, instance role), never from trailseal's config.
With an explicit endpoint, path-style addressing is used (S3-compatible servers expect it).

User metadata (a digest's ``signature`` and ``signature-algorithm``) is S3 user metadata with
lower-case names. Errors are DeliveryError naming the bucket and key and what to check; a
missing object is NoSuchKeyError.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from trailseal.delivery import layout
from trailseal.delivery.destination import NoSuchKeyError
from trailseal.errors import ConfigError, DeliveryError, IntegrityError

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

log = logging.getLogger(__name__)

DEFAULT_MULTIPART_THRESHOLD_BYTES = 64 * 1024 * 1024
DEFAULT_PART_SIZE_BYTES = 16 * 1024 * 1024
MIN_PART_SIZE_BYTES = 5 * 1024 * 1024
READ_CHUNK_BYTES = 1024 * 1024

_CONFLICT_CODES = {"PreconditionFailed", "ConditionalRequestConflict"}
_MISSING_KEY_CODES = {"NoSuchKey", "404", "NotFound"}
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "InvalidToken",
    "ExpiredToken",
    "Forbidden",
    "403",
}


@dataclass(frozen=True)
class S3Options:
    """Per-trail settings of an S3 destination (all optional; readers use the defaults)."""

    endpoint_url: str = ""
    region: str = ""
    sse: str = ""
    """"" (the bucket's default), "AES256" or "aws:kms"."""
    kms_key_id: str = ""
    object_lock_mode: str = ""
    """"" (none), "COMPLIANCE" or "GOVERNANCE"."""
    object_lock_days: int = 0
    multipart_threshold_bytes: int = DEFAULT_MULTIPART_THRESHOLD_BYTES
    part_size_bytes: int = DEFAULT_PART_SIZE_BYTES
    list_page_size: int = 1000
    """Keys per ListObjectsV2 page (S3's maximum is 1000)."""
    max_pool_connections: int = 10
    max_attempts: int = 3
    connect_timeout_secs: float = 10.0
    read_timeout_secs: float = 60.0


def parse_s3_url(url: str, host_id: str) -> tuple[str, str]:
    """``s3://bucket[/prefix]`` → (bucket, prefix without leading/trailing slashes, with
    ``{host_id}`` substituted). Raises ConfigError."""
    rest = url[len("s3://") :] if url.startswith("s3://") else ""
    bucket, _, prefix = rest.partition("/")
    problem = layout.bucket_name_problem(bucket)
    if problem:
        raise ConfigError(
            f"destination {url!r}: {bucket!r} is not an S3 bucket name ({problem}); write "
            "s3://bucket[/prefix]"
        )
    prefix = prefix.replace("{host_id}", host_id).strip("/")
    if "//" in prefix or any(p in (".", "..") for p in prefix.split("/")):
        raise ConfigError(
            f"destination {url!r}: the prefix {prefix!r} has empty, '.' or '..' parts"
        )
    return bucket, prefix


def _b64_sha256(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def _error_code(e: ClientError) -> tuple[str, int]:
    err: Any = e.response.get("Error", {})
    meta: Any = e.response.get("ResponseMetadata", {})
    return str(err.get("Code", "")), int(meta.get("HTTPStatusCode", 0) or 0)


class S3Destination:
    """An S3 bucket (and key prefix). Methods block; the boto3 client is thread-safe and pooled."""

    def __init__(
        self, url: str, bucket: str, prefix: str, options: S3Options | None = None
    ) -> None:
        self._url = url
        self._bucket = bucket
        self._prefix = prefix
        self.options = options or S3Options()
        endpoint = self.options.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3", "")
        config = BotoConfig(
            retries={"mode": "standard", "max_attempts": self.options.max_attempts},
            max_pool_connections=self.options.max_pool_connections,
            connect_timeout=self.options.connect_timeout_secs,
            read_timeout=self.options.read_timeout_secs,
            s3={"addressing_style": "path" if endpoint else "auto"},
        )
        session = boto3.session.Session()
        self.client: S3Client = session.client(
            "s3",
            endpoint_url=self.options.endpoint_url or None,
            region_name=self.options.region or None,
            config=config,
        )
        self._endpoint = endpoint or "the AWS default endpoint"

    @property
    def url(self) -> str:
        return self._url

    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def prefix(self) -> str:
        return self._prefix

    def __repr__(self) -> str:
        return f"S3Destination({self._url!r}, endpoint={self._endpoint!r})"

    # -- errors ------------------------------------------------------------------------------

    def _where(self, key: str) -> str:
        return f"s3://{self._bucket}/{key} (endpoint {self._endpoint})"

    def _delivery_error(self, action: str, key: str, e: Exception) -> DeliveryError:
        if isinstance(e, ClientError):
            code, status = _error_code(e)
            if code == "NoSuchBucket":
                hint = f"the bucket {self._bucket!r} does not exist: create it or fix the URL"
            elif code in _CREDENTIAL_CODES or status == 403:
                hint = (
                    "the credentials were refused: check AWS_ACCESS_KEY_ID/"
                    "AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the instance role, and that they "
                    f"may {action} in {self._bucket!r}"
                )
            else:
                hint = f"the server answered {status} {code}"
            return DeliveryError(f"cannot {action} {self._where(key)}: {hint} ({e})")
        return DeliveryError(
            f"cannot {action} {self._where(key)}: {e}; check that the endpoint is reachable "
            "(s3_endpoint_url / AWS_ENDPOINT_URL_S3) and the network"
        )

    # -- writing -----------------------------------------------------------------------------

    def _object_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {}
        o = self.options
        if o.sse:
            args["ServerSideEncryption"] = o.sse
            if o.sse == "aws:kms" and o.kms_key_id:
                args["SSEKMSKeyId"] = o.kms_key_id
        if o.object_lock_mode:
            args["ObjectLockMode"] = o.object_lock_mode
            args["ObjectLockRetainUntilDate"] = datetime.now(UTC) + timedelta(
                days=o.object_lock_days
            )
        return args

    def put_bytes(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
        self._put_single(key, data, _b64_sha256(hashlib.sha256(data).digest()), metadata)

    def put_file(self, key: str, path: Path, metadata: dict[str, str] | None = None) -> None:
        try:
            size = Path(path).stat().st_size
            if size > self.options.multipart_threshold_bytes:
                self._put_multipart(key, Path(path), metadata)
                return
            data = Path(path).read_bytes()
        except OSError as e:
            raise DeliveryError(
                f"cannot read {path} to deliver it as {self._where(key)}: {e}"
            ) from e
        self.put_bytes(key, data, metadata)

    def _put_single(
        self, key: str, data: bytes, checksum_b64: str, metadata: dict[str, str] | None
    ) -> None:
        """One PutObject with ``If-None-Match: *`` and ``checksum_b64`` (the server verifies it)."""
        try:
            self.client.put_object(
                Bucket=self._bucket,
                Key=key,
                Body=data,
                ChecksumSHA256=checksum_b64,
                IfNoneMatch="*",
                Metadata=metadata or {},
                **self._object_args(),
            )
        except ClientError as e:
            if _error_code(e)[0] in _CONFLICT_CODES or _error_code(e)[1] == 412:
                self._check_existing(key, hashlib.sha256(data).digest(), metadata)
                return
            raise self._delivery_error("write", key, e) from e
        except BotoCoreError as e:
            raise self._delivery_error("write", key, e) from e

    def _parts(self, path: Path) -> Iterator[bytes]:
        with path.open("rb") as f:
            while chunk := f.read(self.options.part_size_bytes):
                yield chunk

    def _put_multipart(self, key: str, path: Path, metadata: dict[str, str] | None) -> None:
        whole = hashlib.sha256()
        try:
            upload = self.client.create_multipart_upload(
                Bucket=self._bucket,
                Key=key,
                ChecksumAlgorithm="SHA256",
                Metadata=metadata or {},
                **self._object_args(),
            )
        except (ClientError, BotoCoreError) as e:
            raise self._delivery_error("start a multipart upload of", key, e) from e
        upload_id = upload["UploadId"]
        try:
            parts: list[Any] = []
            for number, chunk in enumerate(self._parts(path), start=1):
                whole.update(chunk)
                checksum = _b64_sha256(hashlib.sha256(chunk).digest())
                answer = self.client.upload_part(
                    Bucket=self._bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=chunk,
                    ChecksumSHA256=checksum,
                )
                parts.append(
                    {"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": checksum}
                )
            self.client.complete_multipart_upload(
                Bucket=self._bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                IfNoneMatch="*",
            )
        except ClientError as e:
            self._abort(key, upload_id)
            if _error_code(e)[0] in _CONFLICT_CODES or _error_code(e)[1] == 412:
                self._check_existing(key, whole.digest(), metadata)
                return
            raise self._delivery_error("write (multipart)", key, e) from e
        except (BotoCoreError, OSError) as e:
            self._abort(key, upload_id)
            raise self._delivery_error("write (multipart)", key, e) from e

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self._bucket, Key=key, UploadId=upload_id)
        except (ClientError, BotoCoreError) as e:
            log.warning("could not abort the multipart upload of %s: %s", self._where(key), e)

    def _check_existing(self, key: str, sha256: bytes, metadata: dict[str, str] | None) -> None:
        """The object is already there: fine if it is exactly ours, else IntegrityError."""
        try:
            answer = self.client.get_object(Bucket=self._bucket, Key=key)
            existing = hashlib.sha256()
            body = answer["Body"]
            try:
                for chunk in body.iter_chunks(READ_CHUNK_BYTES):
                    existing.update(chunk)
            finally:
                body.close()
        except ClientError as e:
            # 409 ConditionalRequestConflict: another put is in flight; the retry settles it.
            raise self._delivery_error("read back the existing object", key, e) from e
        except BotoCoreError as e:
            raise self._delivery_error("read back the existing object", key, e) from e
        problem = ""
        if existing.digest() != sha256:
            problem = "different content"
        elif dict(answer.get("Metadata", {})) != (metadata or {}):
            problem = "different metadata"
        if problem:
            message = (
                f"object {key!r} already exists in {self._where(key)} with {problem}; "
                "delivered objects are never overwritten (find out who wrote it; move it away "
                "only if it is known to be wrong)"
            )
            log.error("%s", message)
            raise IntegrityError(message)

    # -- reading -----------------------------------------------------------------------------

    def get_bytes(self, key: str) -> bytes:
        try:
            answer = self.client.get_object(Bucket=self._bucket, Key=key)
            body = answer["Body"]
            try:
                return body.read()
            finally:
                body.close()
        except ClientError as e:
            if _error_code(e)[0] in _MISSING_KEY_CODES:
                raise NoSuchKeyError(f"object {key!r} not found in {self._where(key)}") from None
            raise self._delivery_error("read", key, e) from e
        except BotoCoreError as e:
            raise self._delivery_error("read", key, e) from e

    def _head(self, key: str) -> Any:
        try:
            return self.client.head_object(Bucket=self._bucket, Key=key)
        except ClientError as e:
            code, status = _error_code(e)
            if code in _MISSING_KEY_CODES or status == 404:
                if code == "NoSuchBucket":
                    raise self._delivery_error("read", key, e) from e
                raise NoSuchKeyError(f"object {key!r} not found in {self._where(key)}") from None
            raise self._delivery_error("read the metadata of", key, e) from e
        except BotoCoreError as e:
            raise self._delivery_error("read the metadata of", key, e) from e

    def get_metadata(self, key: str) -> dict[str, str]:
        return dict(self._head(key).get("Metadata", {}))

    def head(self, key: str) -> dict[str, Any]:
        """The raw HeadObject answer (retention, encryption, checksum …), for checks and tests."""
        return dict(self._head(key))

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
        except NoSuchKeyError:
            return False
        return True

    def list_keys(self, prefix: str = "") -> list[str]:
        """Every object key starting with ``prefix``, in the order S3 lists them (ListObjectsV2,
        paginated)."""
        keys: list[str] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self._bucket,
                Prefix=prefix,
                PaginationConfig={"PageSize": self.options.list_page_size},
            )
            for page in pages:
                keys.extend(obj["Key"] for obj in page.get("Contents", []) if "Key" in obj)
        except (ClientError, BotoCoreError) as e:
            raise self._delivery_error("list", prefix + "*", e) from e
        return keys

    def delete(self, key: str) -> None:
        self._head(key)  # NoSuchKeyError when missing, like file://
        try:
            self.client.delete_object(Bucket=self._bucket, Key=key)
        except (ClientError, BotoCoreError) as e:
            raise self._delivery_error("delete", key, e) from e

    # -- start-up checks ---------------------------------------------------------------------

    def check_object_lock(self, where: str) -> None:
        """Raise ConfigError when the bucket is not Object Lock enabled (``where`` names the
        config key asking for it); DeliveryError when the bucket cannot be asked."""
        try:
            answer = self.client.get_object_lock_configuration(Bucket=self._bucket)
        except ClientError as e:
            if _error_code(e)[0] == "ObjectLockConfigurationNotFoundError":
                answer = {}  # type: ignore[typeddict-item]
            else:
                raise self._delivery_error("read the Object Lock configuration of", "", e) from e
        except BotoCoreError as e:
            raise self._delivery_error("read the Object Lock configuration of", "", e) from e
        enabled = answer.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled")
        if enabled != "Enabled":
            raise ConfigError(
                f"{where}: bucket {self._bucket!r} does not have Object Lock enabled, so "
                "retention cannot be set on its objects; use a bucket created with Object Lock "
                "(it can only be enabled at creation), or remove object_lock_mode"
            )
