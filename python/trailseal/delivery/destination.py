"""Destinations: where log files, digests and public keys are delivered (FORMATS.md §7).

``file://`` lives here; ``s3://`` in :mod:`trailseal.delivery.s3` (same contract).

``open_destination(url, host_id=…)`` gives a :class:`Destination` whose methods block (callers
run them through ``trio.to_thread.run_sync``). Keys are full object keys (the prefix included,
as :mod:`trailseal.delivery.layout` builds them).

Invariants every destination keeps:
- an object is never overwritten: putting the same bytes again is accepted (so retries and
  re-deliveries after a crash are harmless), putting different bytes raises IntegrityError;
- an object appears whole or not at all.

``file:///abs/dir`` lays out exactly the keys S3 would hold, under ``dir``::

    <dir>/<key>                  the object (written to a temporary name in the same directory,
                                 fsync'd, hard-linked into place, the directory fsync'd; a sealed
                                 file on the same filesystem is hard-linked into place itself:
                                 it is immutable and already durable, so nothing is copied)
    <dir>/<key>.metadata.json    its user metadata, a flat JSON object of lower-case names
                                 (only when there is any), written before the object

Its bucket (``digestS3Bucket``/``s3Bucket``) is the directory's last path component.
"""

from __future__ import annotations

import contextlib
import errno
import filecmp
import json
import os
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

from trailseal.config import TrailConfig
from trailseal.durable import TMP_MARK, create_exclusively, fsync_dir
from trailseal.errors import ConfigError, DeliveryError, IntegrityError

METADATA_SUFFIX = ".metadata.json"


class NoSuchKeyError(DeliveryError):
    """The object asked for is not in the destination."""


class Destination(Protocol):
    """What the uploader, the digest writer and the validator need from a destination."""

    @property
    def url(self) -> str: ...
    @property
    def bucket(self) -> str: ...
    @property
    def prefix(self) -> str: ...
    def put_file(self, key: str, path: Path, metadata: dict[str, str] | None = None) -> None: ...
    def put_bytes(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def get_metadata(self, key: str) -> dict[str, str]: ...
    def exists(self, key: str) -> bool: ...
    def list_keys(self, prefix: str = "") -> list[str]: ...
    def delete(self, key: str) -> None: ...


OBJECT_MODE = 0o644
"""Mode of a delivered object."""
_NO_LINKS = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}
"""``link(2)`` errors that mean: copy instead (another filesystem, or one without hard links)."""


def _same_content(path: Path, data: bytes) -> bool:
    try:
        return path.read_bytes() == data
    except FileNotFoundError:
        return False


class FileDestination:
    """A local directory laid out like a bucket."""

    def __init__(self, url: str, root: Path) -> None:
        self._url = url
        self.root = root

    @property
    def url(self) -> str:
        return self._url

    @property
    def bucket(self) -> str:
        return self.root.name

    @property
    def prefix(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"FileDestination({self._url!r})"

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise DeliveryError(
                f"object key {key!r} is not a valid relative key (empty, absolute, or with "
                f"'.', '..' or empty parts) for destination {self._url}"
            )
        if key.endswith(METADATA_SUFFIX) or TMP_MARK in parts[-1]:
            raise DeliveryError(
                f"object key {key!r} collides with the side files of destination {self._url}"
            )
        return self.root.joinpath(*parts)

    def _make_dirs(self, directory: Path) -> None:
        missing: list[Path] = []
        d = directory
        while not d.exists():
            missing.append(d)
            d = d.parent
        directory.mkdir(parents=True, exist_ok=True)
        for created in reversed(missing):
            fsync_dir(created.parent)

    def _exists_differently(self, key: str) -> IntegrityError:
        return IntegrityError(
            f"object {key!r} already exists in {self._url} with different content; "
            "delivered objects are never overwritten (move the existing object away "
            "if it is known to be wrong)"
        )

    def _write_new(self, target: Path, data: bytes, key: str) -> None:
        """Write ``data`` to ``target`` unless it exists (same bytes: fine; else IntegrityError)."""
        if not create_exclusively(target, data, OBJECT_MODE) and not _same_content(target, data):
            raise self._exists_differently(key)

    def _write_metadata(self, target: Path, metadata: dict[str, str], key: str) -> None:
        side = target.with_name(target.name + METADATA_SUFFIX)
        data = json.dumps(metadata, sort_keys=True, separators=(",", ":")).encode()
        if side.exists() and not _same_content(side, data):
            if target.exists():
                raise IntegrityError(
                    f"object {key!r} already exists in {self._url} with different metadata "
                    f"({side.name}); delivered objects are never overwritten"
                )
            side.unlink()  # left by a crash before the object was linked into place
        self._write_new(side, data, key)

    def put_bytes(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
        target = self._path(key)
        try:
            self._make_dirs(target.parent)
            if metadata:
                self._write_metadata(target, metadata, key)
            self._write_new(target, data, key)
        except OSError as e:
            raise DeliveryError(f"cannot write object {key!r} to {self._url}: {e}") from e

    def put_file(self, key: str, path: Path, metadata: dict[str, str] | None = None) -> None:
        """Deliver the sealed file ``path`` (immutable, fsync'd): hard-linked into place when
        it is on the bucket's filesystem, else copied."""
        target = self._path(key)
        try:
            self._make_dirs(target.parent)
            if metadata:
                self._write_metadata(target, metadata, key)
            if self._link_new(target, Path(path), key):
                return
        except OSError as e:
            raise DeliveryError(
                f"cannot deliver {path} as object {key!r} to {self._url}: {e}"
            ) from e
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise DeliveryError(f"cannot read {path} to deliver it as {key!r}: {e}") from e
        try:
            self._write_new(target, data, key)  # a copy (directories and metadata are there)
        except OSError as e:
            raise DeliveryError(f"cannot write object {key!r} to {self._url}: {e}") from e

    def _link_new(self, target: Path, path: Path, key: str) -> bool:
        """Hard-link ``path`` as ``target`` unless it exists (the same content: fine; else
        IntegrityError). False: links do not work here (another filesystem), copy instead."""
        try:
            os.link(path, target)
        except FileExistsError:
            if os.path.samefile(path, target) or filecmp.cmp(path, target, shallow=False):
                return True
            raise self._exists_differently(key) from None
        except OSError as e:
            if e.errno in _NO_LINKS:
                return False
            raise
        os.chmod(target, OBJECT_MODE)  # as a copied object's (the spool's directory guards it)
        fsync_dir(target.parent)
        return True

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise NoSuchKeyError(f"object {key!r} not found in {self._url}") from None
        except (IsADirectoryError, NotADirectoryError):
            raise NoSuchKeyError(f"object {key!r} not found in {self._url}") from None
        except OSError as e:
            raise DeliveryError(f"cannot read object {key!r} from {self._url}: {e}") from e

    def get_metadata(self, key: str) -> dict[str, str]:
        target = self._path(key)
        if not target.is_file():
            raise NoSuchKeyError(f"object {key!r} not found in {self._url}")
        side = target.with_name(target.name + METADATA_SUFFIX)
        try:
            raw = json.loads(side.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise DeliveryError(f"cannot read the metadata of {key!r} ({side}): {e}") from e
        if not isinstance(raw, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
        ):
            raise DeliveryError(
                f"metadata of {key!r} ({side}) is not a flat JSON object of strings"
            )
        return raw

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list_keys(self, prefix: str = "") -> list[str]:
        start = self.root
        if "/" in prefix:
            start = self.root.joinpath(*prefix.rsplit("/", 1)[0].split("/"))
        keys: list[str] = []
        for dirpath, _dirnames, filenames in os.walk(start):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.endswith(METADATA_SUFFIX) or TMP_MARK in name:
                    continue
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        keys.sort()
        return keys

    def delete(self, key: str) -> None:
        target = self._path(key)
        try:
            target.with_name(target.name + METADATA_SUFFIX).unlink(missing_ok=True)
            target.unlink()
        except FileNotFoundError:
            raise NoSuchKeyError(f"object {key!r} not found in {self._url}") from None
        except OSError as e:
            raise DeliveryError(f"cannot delete object {key!r} from {self._url}: {e}") from e
        with contextlib.suppress(OSError):
            fsync_dir(target.parent)


def open_destination(
    url: str,
    *,
    host_id: str,
    trail: TrailConfig | None = None,
    s3_endpoint_url: str = "",
) -> Destination:
    """The destination at ``url``: ``file:///abs/dir`` or ``s3://bucket[/prefix]``
    (:mod:`trailseal.delivery.s3`). ``{host_id}`` in a path or prefix is replaced by ``host_id``.

    ``trail`` gives an S3 destination the trail's settings (endpoint, region, SSE, Object Lock,
    multipart threshold); readers without a trail pass ``s3_endpoint_url`` (else the AWS SDK's
    default, which honours ``AWS_ENDPOINT_URL_S3``)."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(
                f"destination {url!r}: a file:// URL names a local directory and has no host; "
                "write file:///absolute/dir"
            )
        raw = unquote(parts.path).replace("{host_id}", host_id)
        root = Path(raw)
        if not root.is_absolute() or root == Path("/"):
            raise ConfigError(
                f"destination {url!r}: give an absolute directory below /, as file:///abs/dir"
            )
        return FileDestination(url, root)
    if parts.scheme == "s3":
        from trailseal.delivery.s3 import S3Destination, S3Options, parse_s3_url

        bucket, prefix = parse_s3_url(url, host_id)
        if trail is not None:
            options = S3Options(
                endpoint_url=trail.s3_endpoint_url,
                region=trail.s3_region,
                sse=trail.sse,
                kms_key_id=trail.kms_key_id,
                object_lock_mode=trail.object_lock_mode,
                object_lock_days=trail.object_lock_days,
                multipart_threshold_bytes=trail.s3_multipart_threshold_bytes,
            )
        else:
            options = S3Options(endpoint_url=s3_endpoint_url)
        return S3Destination(url, bucket, prefix, options)
    raise ConfigError(
        f"destination {url!r}: unknown scheme {parts.scheme!r}; use file:///abs/dir or "
        "s3://bucket/prefix"
    )
