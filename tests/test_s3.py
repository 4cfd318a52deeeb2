"""``s3://`` destinations against a real S3 server (SeaweedFS ``weed mini``, tests/s3server.py):
the destination contract (no overwrite, server-verified SHA-256 checksums, metadata, listing,
missing keys, errors), multipart, SSE-S3 and Object Lock, then the daemon end to end (the same
keys as a ``file://`` trail, ``trailseal validate`` on the bucket, a flipped byte caught), the
refusal to start on a bucket without Object Lock, and an S3 outage while delivering.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from conftest import DaemonProcess, exchange, free_tcp_port, wait_until
from s3server import S3Server

from trailseal import config as config_mod
from trailseal.config import TrailConfig
from trailseal.delivery import layout
from trailseal.delivery.destination import NoSuchKeyError, open_destination
from trailseal.delivery.s3 import S3Destination, S3Options
from trailseal.errors import ConfigError, DeliveryError, IntegrityError

KEY = "AWSLogs/000000000000/CloudTrail/r/2024/01/01/obj.json.zst"


def s3_dest(s3: S3Server, url: str, **options: Any) -> S3Destination:
    bucket, _, prefix = url[len("s3://") :].partition("/")
    return S3Destination(url, bucket, prefix, S3Options(endpoint_url=s3.endpoint, **options))


@pytest.fixture
def dest(s3: S3Server) -> S3Destination:
    d = open_destination(f"s3://{s3.new_bucket()}/pre/{{host_id}}", host_id="h1")
    assert isinstance(d, S3Destination)
    return d


# ---------------------------------------------------------------------------------------------
# The server itself


def test_server_checks_sigv4(s3: S3Server) -> None:
    s3.client().list_buckets()
    with pytest.raises(ClientError) as info:
        s3.client(secret="not-the-secret", max_attempts=1).list_buckets()
    assert info.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


# ---------------------------------------------------------------------------------------------
# The destination contract (mirrors tests/test_destination.py)


def test_url_bucket_prefix(dest: S3Destination) -> None:
    assert dest.prefix == "pre/h1"
    assert dest.url.endswith("/pre/{host_id}")
    assert dest.bucket == dest.url[len("s3://") :].split("/")[0]
    root = open_destination(f"s3://{dest.bucket}", host_id="h")
    assert root.prefix == "" and root.bucket == dest.bucket


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("s3://", "not an S3 bucket name"),
        ("s3://UPPER/x", "not an S3 bucket name"),
        ("s3://ab/x", "not an S3 bucket name"),
        ("s3://bucket/a//b", "empty"),
        ("s3://bucket/a/../b", "'..'"),
    ],
)
def test_bad_urls(url: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        open_destination(url, host_id="h")


def test_put_get_list_metadata(dest: S3Destination) -> None:
    meta = {"signature": "ab", "signature-algorithm": "SHA256withRSA"}
    dest.put_bytes(KEY, b"hello", meta)
    assert dest.get_bytes(KEY) == b"hello"
    assert dest.get_metadata(KEY) == meta
    assert dest.exists(KEY)
    dest.put_bytes("AWSLogs/a", b"1")
    dest.put_bytes("zz/b", b"2")
    assert dest.get_metadata("zz/b") == {}
    assert dest.list_keys() == [KEY, "AWSLogs/a", "zz/b"]  # S3's order: by UTF-8 bytes
    assert dest.list_keys("AWSLogs/0") == [KEY]
    assert dest.list_keys("AWSLogs/000000000000/CloudTrail/") == [KEY]
    assert dest.list_keys("nothing/here") == []
    dest.delete(KEY)
    assert not dest.exists(KEY)
    with pytest.raises(NoSuchKeyError, match=r"obj\.json\.zst"):
        dest.get_bytes(KEY)
    with pytest.raises(NoSuchKeyError):
        dest.get_metadata(KEY)
    with pytest.raises(NoSuchKeyError):
        dest.delete(KEY)


def test_never_overwrites(dest: S3Destination, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"sealed bytes")
    dest.put_file(KEY, src)
    dest.put_file(KEY, src)  # same bytes again: accepted (a retry)
    dest.put_bytes(KEY, b"sealed bytes")
    with pytest.raises(IntegrityError, match=r"already exists .* different content"):
        dest.put_bytes(KEY, b"other bytes")
    assert dest.get_bytes(KEY) == b"sealed bytes"
    dest.put_bytes("d", b"x", {"signature": "1"})
    dest.put_bytes("d", b"x", {"signature": "1"})
    with pytest.raises(IntegrityError, match="different metadata"):
        dest.put_bytes("d", b"x", {"signature": "2"})
    assert dest.get_metadata("d") == {"signature": "1"}


def test_server_verifies_the_checksum(dest: S3Destination, s3: S3Server) -> None:
    data = b"the bytes we mean to store"
    wrong = base64.b64encode(hashlib.sha256(b"other bytes").digest()).decode()
    with pytest.raises(DeliveryError, match="BadDigest"):
        dest._put_single("k-wrong", data, wrong, None)
    assert not dest.exists("k-wrong")
    dest.put_bytes("k-right", data)
    head = s3.client().head_object(Bucket=dest.bucket, Key="k-right", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_listing_paginates(s3: S3Server) -> None:
    dest = s3_dest(s3, f"s3://{s3.new_bucket()}", list_page_size=4)
    keys = [f"many/{i:04d}" for i in range(25)]
    for key in keys:
        dest.put_bytes(key, key.encode())
    dest.put_bytes("other/x", b"x")
    pages = []
    dest.client.meta.events.register(
        "after-call.s3.ListObjectsV2", lambda parsed, **_: pages.append(parsed.get("KeyCount"))
    )
    # 4 keys a page: every key comes back exactly once, in order, over 7 pages
    assert dest.list_keys("many/") == keys
    assert pages == [4, 4, 4, 4, 4, 4, 1]
    assert dest.list_keys() == [*keys, "other/x"]


def test_multipart_with_part_checksums(s3: S3Server, tmp_path: Path) -> None:
    bucket = s3.new_bucket()
    dest = s3_dest(
        s3,
        f"s3://{bucket}",
        multipart_threshold_bytes=5 * 1024 * 1024,
        part_size_bytes=5 * 1024 * 1024,
    )
    big = tmp_path / "big"
    payload = b"a" * (5 * 1024 * 1024) + b"tail"
    big.write_bytes(payload)
    dest.put_file("big", big)
    assert dest.get_bytes("big") == payload
    head = s3.client().head_object(Bucket=bucket, Key="big", ChecksumMode="ENABLED")
    assert head["ETag"].endswith('-2"')  # two parts
    assert head["ChecksumSHA256"].endswith("-2")
    dest.put_file("big", big)  # a retry: IfNoneMatch on complete → 412 → same bytes → fine
    big.write_bytes(payload[:-1] + b"X")
    with pytest.raises(IntegrityError, match="different content"):
        dest.put_file("big", big)
    assert dest.get_bytes("big") == payload
    uploads = s3.client().list_multipart_uploads(Bucket=bucket)
    assert uploads.get("Uploads", []) == []  # the refused upload was aborted


def test_errors_name_bucket_and_what_to_check(
    s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = s3_dest(s3, "s3://no-such-bucket-here/p")
    with pytest.raises(DeliveryError, match=r"no-such-bucket-here.*does not exist"):
        missing.put_bytes("p/k", b"x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    bad_creds = s3_dest(s3, f"s3://{s3.new_bucket()}", max_attempts=1)
    with pytest.raises(DeliveryError, match=r"credentials were refused.*AWS_ACCESS_KEY_ID"):
        bad_creds.put_bytes("k", b"x")
    port = free_tcp_port()  # nothing listens there
    unreachable = S3Destination(
        "s3://bucket-x",
        "bucket-x",
        "",
        S3Options(endpoint_url=f"http://127.0.0.1:{port}", max_attempts=1, connect_timeout_secs=2),
    )
    with pytest.raises(DeliveryError, match=r"s3://bucket-x/k .*endpoint is reachable"):
        unreachable.put_bytes("k", b"x")


def test_sse_s3_and_object_lock_on_every_put(s3: S3Server, tmp_path: Path) -> None:
    bucket = s3.new_bucket(object_lock=True)
    dest = s3_dest(
        s3, f"s3://{bucket}", sse="AES256", object_lock_mode="GOVERNANCE", object_lock_days=2
    )
    dest.check_object_lock("[trails.t] object_lock_mode")
    src = tmp_path / "f"
    src.write_bytes(b"log file")
    before = datetime.now(UTC)
    dest.put_file("a/log", src)
    dest.put_bytes("a/digest", b"digest", {"signature": "ab"})
    client = s3.client()
    for key in ("a/log", "a/digest"):
        head = client.head_object(Bucket=bucket, Key=key)
        assert head["ServerSideEncryption"] == "AES256"
        assert head["ObjectLockMode"] == "GOVERNANCE"
        until = head["ObjectLockRetainUntilDate"]
        assert before + timedelta(days=2) - timedelta(minutes=5) <= until
        assert until <= datetime.now(UTC) + timedelta(days=2, minutes=5)
        with pytest.raises(ClientError) as info:
            client.delete_object(Bucket=bucket, Key=key, VersionId=head["VersionId"])
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        assert client.get_object(Bucket=bucket, Key=key, VersionId=head["VersionId"])


def test_object_lock_check_refuses_plain_bucket(s3: S3Server) -> None:
    dest = s3_dest(s3, f"s3://{s3.new_bucket()}", object_lock_mode="COMPLIANCE", object_lock_days=1)
    with pytest.raises(ConfigError, match=r"where: bucket 't.*' does not have Object Lock"):
        dest.check_object_lock("where")


# ---------------------------------------------------------------------------------------------
# Config


def _load(tmp_path: Path, trail: str) -> config_mod.Config:
    path = tmp_path / "t.toml"
    path.write_text(f'[daemon]\ndata_dir = "{tmp_path}"\n[trails.t]\n{trail}')
    return config_mod.load(path)


def test_config_accepts_s3_and_refuses_s3_only_keys_on_file(tmp_path: Path) -> None:
    cfg = _load(
        tmp_path,
        'destination = "s3://my-bucket/{host_id}/x"\ns3_region = "eu-west-3"\n'
        'sse = "aws:kms"\nkms_key_id = "k1"\nobject_lock_mode = "COMPLIANCE"\n'
        "object_lock_days = 30\ns3_multipart_threshold_bytes = 8388608\n",
    )
    t: TrailConfig = cfg.trails["t"]
    assert (t.s3_region, t.sse, t.kms_key_id, t.object_lock_days) == (
        "eu-west-3",
        "aws:kms",
        "k1",
        30,
    )
    assert t.s3_multipart_threshold_bytes == 8388608
    for line, key in [
        ('sse = "AES256"', "sse"),
        ('object_lock_mode = "GOVERNANCE"\nobject_lock_days = 1', "object_lock_mode"),
    ]:
        with pytest.raises(ConfigError, match=rf"\[trails.t\] {key}: applies only to s3://"):
            _load(tmp_path, f'destination = "file:///srv/b"\n{line}\n')
    with pytest.raises(ConfigError, match=r"object_lock_days: .* go together"):
        _load(tmp_path, 'destination = "s3://my-bucket"\nobject_lock_mode = "COMPLIANCE"\n')
    with pytest.raises(ConfigError, match=r"kms_key_id: is used only with"):
        _load(tmp_path, 'destination = "s3://my-bucket"\nkms_key_id = "k"\n')
    with pytest.raises(ConfigError, match=r"destination: .*not an S3 bucket name"):
        _load(tmp_path, 'destination = "s3://B"\n')
