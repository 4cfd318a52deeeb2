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
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

import reference
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


# ---------------------------------------------------------------------------------------------
# The daemon end to end


def _events(n: int, tag: str) -> bytes:
    return b"".join(
        json.dumps(
            {"eventName": "PutObject", "eventSource": "s3.amazonaws.com", "requestID": f"{tag}{i}"}
        ).encode()
        + b"\n"
        for i in range(n)
    )


def _send(d: DaemonProcess, n: int, tag: str) -> None:
    with d.connect_unix() as sock:
        replies = exchange(sock, _events(n, tag))
    assert replies[-1] == {"ack": n}, replies


def _shape(key: str, prefix: str) -> str:
    """A key with its delivery time and random name part masked (they differ run to run)."""
    assert key.startswith(prefix), key
    rest = key[len(prefix) :]
    rest = re.sub(r"\d{4}/\d{2}/\d{2}/", "YYYY/MM/DD/", rest)
    rest = re.sub(r"_\d{8}T\d{4,6}Z(_[A-Za-z0-9]{16})?", r"_TIME\1", rest)
    rest = re.sub(r"_TIME_[A-Za-z0-9]{16}", "_TIME_RANDOM", rest)
    return re.sub(r"/[0-9a-f]{32}\.pem$", "/FINGERPRINT.pem", rest)


def _validate(dest_url: str, endpoint: str, public_key: Path, env: dict[str, str]) -> Any:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "trailseal.cli",
            "validate",
            *("--destination", dest_url, "--s3-endpoint-url", endpoint),
            *("--public-key", str(public_key), "--no-progress"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def _public_key(d: DaemonProcess) -> Path:
    (pem,) = sorted((d.data_dir / "keys" / "public").glob("*.pem"))
    return pem


def _child_env(s3: S3Server) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(s3.env())
    return env


def test_daemon_delivers_to_s3_like_file_and_validate_catches_a_flipped_byte(
    s3: S3Server, daemon: Any
) -> None:
    bucket = s3.new_bucket()
    s3_trail = {
        "destination": f"s3://{bucket}/fleet/{{host_id}}",
        "s3_endpoint_url": s3.endpoint,
        "s3_region": "us-east-1",
        "sse": "AES256",
    }
    d = daemon(trail=s3_trail, env=s3.env())
    wait_until(lambda: f"trail default: s3://{bucket}/" in d.stderr(), what="the trail line")
    _send(d, 50, "a")
    assert d.stop() == 0, d.stderr()
    f = daemon()  # the same events through a file:// trail
    _send(f, 50, "a")
    assert f.stop() == 0, f.stderr()

    prefix = "fleet/test-host/"
    dest = s3_dest(s3, f"s3://{bucket}/fleet/test-host")
    keys = dest.list_keys()
    file_keys = sorted(
        p.relative_to(f.bucket).as_posix()
        for p in f.bucket.rglob("*")
        if p.is_file() and not p.name.endswith(".metadata.json")
    )
    assert sorted(_shape(k, prefix) for k in keys) == sorted(_shape(k, "") for k in file_keys)
    logs = [k for k in keys if layout.is_log_file_key(k)]
    digests = [k for k in keys if layout.parse_digest_key(k)]
    assert logs and len(digests) == 1
    meta = dest.get_metadata(digests[0])
    assert set(meta) == {"signature", "signature-algorithm"}
    client = s3.client()
    for key in keys:
        head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        assert head["ServerSideEncryption"] == "AES256", key
        assert head.get("ChecksumSHA256"), key

    env = _child_env(s3)
    ok = _validate(f"s3://{bucket}/fleet/test-host", s3.endpoint, _public_key(d), env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"{len(logs)}/{len(logs)} log files valid" in ok.stdout, ok.stdout

    victim = logs[0]
    data = bytearray(dest.get_bytes(victim))
    data[len(data) // 2] ^= 0x01
    client.put_object(Bucket=bucket, Key=victim, Body=bytes(data))
    bad = _validate(f"s3://{bucket}/fleet/test-host", s3.endpoint, _public_key(d), env)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert victim in bad.stdout + bad.stderr


def test_object_lock_trail_refuses_a_plain_bucket(s3: S3Server, daemon: Any) -> None:
    bucket = s3.new_bucket()
    d = daemon(
        trail={
            "destination": f"s3://{bucket}",
            "s3_endpoint_url": s3.endpoint,
            "object_lock_mode": "COMPLIANCE",
            "object_lock_days": 1,
        },
        env=s3.env(),
        wait=False,
    )
    assert d.proc.wait(timeout=60) == 2
    lines = [line for line in d.stderr().splitlines() if bucket in line]
    assert len(lines) == 1, d.stderr()
    assert "[trails.default] object_lock_mode" in lines[0]
    assert "does not have Object Lock enabled" in lines[0]
    assert s3.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_object_lock_trail_locks_every_object(s3: S3Server, daemon: Any) -> None:
    bucket = s3.new_bucket(object_lock=True)
    d = daemon(
        trail={
            "destination": f"s3://{bucket}/locked",
            "s3_endpoint_url": s3.endpoint,
            "object_lock_mode": "GOVERNANCE",
            "object_lock_days": 3,
        },
        env=s3.env(),
    )
    _send(d, 5, "lock")
    assert d.stop() == 0, d.stderr()
    client = s3.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert any(layout.is_log_file_key(k) for k in keys)
    assert any(layout.parse_digest_key(k) for k in keys)
    assert any(k.startswith(f"locked/{layout.PUBLIC_KEYS_DIR}/") for k in keys)
    soon = datetime.now(UTC) + timedelta(days=3)
    for key in keys:
        head = client.head_object(Bucket=bucket, Key=key)
        assert head["ObjectLockMode"] == "GOVERNANCE", key
        assert soon - timedelta(hours=1) < head["ObjectLockRetainUntilDate"] <= soon, key
        with pytest.raises(ClientError) as info:
            client.delete_object(Bucket=bucket, Key=key, VersionId=head["VersionId"])
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403, key


def test_outage_loses_nothing_and_delivers_each_file_once(
    tmp_path: Path, daemon: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = S3Server.start(tmp_path / "outage-s3")
    try:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        bucket = server.new_bucket()
        d = daemon(
            trail={
                "destination": f"s3://{bucket}/p",
                "s3_endpoint_url": server.endpoint,
                "seal_after_secs": 0.3,
            },
            env=server.env(),
        )
        dest = s3_dest(server, f"s3://{bucket}/p")

        def logs() -> list[str]:
            return [k for k in dest.list_keys() if layout.is_log_file_key(k)]

        _send(d, 20, "before")
        wait_until(lambda: len(logs()) == 1, what="the first log file in S3")
        sealed_dir = d.data_dir / "spool" / "default" / "sealed"
        server.pause()
        try:
            _send(d, 20, "during")  # acknowledged: the spool is local
            wait_until(lambda: any(sealed_dir.glob("*.log")), what="a sealed file waiting for S3")
            time_paused = 3.0  # the outage itself (not a synchronisation)
            time.sleep(time_paused)
            assert any(sealed_dir.glob("*.log")), "delivered while S3 was stopped?"
        finally:
            server.resume()
        _send(d, 20, "after")
        wait_until(lambda: not any(sealed_dir.glob("*.log")), timeout=120, what="catch-up")
        assert d.stop() == 0, d.stderr()

        delivered = logs()
        versions = server.client().list_object_versions(Bucket=bucket).get("Versions", [])
        assert len([v for v in versions if v["Key"] in delivered]) == len(delivered)
        ids: list[str] = []
        for key in delivered:
            text = reference.decompress(dest.get_bytes(key), "zstd")
            for line in text.splitlines()[1:-1]:
                ids.append(json.loads(line.rstrip(b","))["requestID"])
        expected = [f"{tag}{i}" for tag in ("before", "during", "after") for i in range(20)]
        assert sorted(ids) == sorted(expected)  # nothing lost, nothing twice

        ok = _validate(f"s3://{bucket}/p", server.endpoint, _public_key(d), _child_env(server))
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert f"{len(delivered)}/{len(delivered)} log files valid" in ok.stdout, ok.stdout
    finally:
        server.stop()
