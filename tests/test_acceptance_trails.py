"""Issue 3's acceptance test: three trails in one daemon, on a real S3 server, under load.

- ``management``: all management events → ``s3://<plain bucket>/mgmt`` (zstd, several files);
- ``writes``: write-only management events of ec2 and iam → ``s3://<Object Lock bucket>/writes``
  (gzip, ``sse = "AES256"``, ``object_lock_mode = "COMPLIANCE"``, ``object_lock_days = 1``);
- ``data``: S3 data events under ``arn:aws:s3:::acme-data/in/`` → ``file://`` (basic selectors).

100,000 mixed events (synthetic management events of six eventSources, read and write, some
without ``readOnly`` so the core's default applies; S3 data events in and out of the selected
prefix; Lambda data events, network activity and Insight events that no trail takes) go in over
four ``trailseal.client.Client`` connections (two unix socket, two TCP) on threads. After
SIGTERM every object is read back (zstd frames / exactly one gzip member) and each trail must
hold exactly the eventIDs that ``selectors_ref`` (an independent Python reading of CloudTrail's
selector rules) says it takes from what was sent: none missing, none twice, nothing else. The
real ``trailseal validate`` (``--s3-endpoint-url``, ``--public-key`` from ``trailseal keys
export``) must pass each destination with N/N digests and M/M log files; every object of the
locked trail (log files, digests, public key) reports COMPLIANCE with a retain-until date about
one day out and refuses a versioned DeleteObject; every object of the SSE trail reports AES256.

The S3 server is the session's SeaweedFS (tests/s3server.py).
"""

from __future__ import annotations

import io
import os
import random
import re
import subprocess
import sys
import threading
import uuid
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import zstandard
from botocore.exceptions import ClientError

import selectors_ref
from conftest import DaemonProcess
from kmsserver import MotoServer
from s3server import S3Server
from selectors_ref import logged
from trailseal import synthetic
from trailseal.client import Client, SendResult
from trailseal.delivery import layout

CONNECTIONS = 4  # 0, 1: unix socket; 2, 3: TCP
TOTAL_EVENTS = 100_000
MANAGEMENT_EVENTS = 70_000
DATA_EVENTS = 25_000
OTHER_EVENTS = TOTAL_EVENTS - MANAGEMENT_EVENTS - DATA_EVENTS
CLIENT_DEADLINE_SECS = 300.0
HOME_REGION = "test-1"  # conftest's REGION
HOME_ACCOUNT = "123456789012"  # conftest's ACCOUNT

ALL_MANAGEMENT: dict[str, Any] = {}
WRITES_OF_TWO_SOURCES: dict[str, Any] = {
    "advanced_event_selectors": [
        {
            "Name": "ec2 and iam writes",
            "FieldSelectors": [
                {"Field": "eventCategory", "Equals": ["Management"]},
                {"Field": "readOnly", "Equals": ["false"]},
                {"Field": "eventSource", "Equals": ["ec2.amazonaws.com", "iam.amazonaws.com"]},
            ],
        }
    ]
}
S3_DATA_UNDER_PREFIX: dict[str, Any] = {
    "event_selectors": [
        {
            "ReadWriteType": "All",
            "IncludeManagementEvents": False,
            "DataResources": [
                {"Type": "AWS::S3::Object", "Values": ["arn:aws:s3:::acme-data/in/"]}
            ],
        }
    ]
}
SELECTORS = {
    "management": ALL_MANAGEMENT,
    "writes": WRITES_OF_TWO_SOURCES,
    "data": S3_DATA_UNDER_PREFIX,
}


# ---------------------------------------------------------------------------------------------
# the event mix


def defaulted(e: dict[str, Any]) -> dict[str, Any]:
    return selectors_ref.defaulted(e, account=HOME_ACCOUNT, region=HOME_REGION)


def _data_event(rng: random.Random, i: int) -> dict[str, Any]:
    name = rng.choice(["GetObject", "PutObject", "DeleteObject", "HeadObject", "CopyObject"])
    folder = rng.choice(["in", "in", "out", "inbox"])  # "inbox/" is not under "in/"
    key = f"acme-data/{folder}/{i:06d}.bin"
    return {
        "eventID": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "eventName": name,
        "eventSource": "s3.amazonaws.com",
        "eventCategory": "Data",
        "managementEvent": False,
        "readOnly": name.startswith(("Get", "Head")),
        "awsRegion": rng.choice([HOME_REGION, "eu-west-1"]),
        "requestParameters": {"bucketName": "acme-data", "key": key[len("acme-data/") :]},
        "resources": [
            {"type": "AWS::S3::Bucket", "ARN": "arn:aws:s3:::acme-data"},
            {"type": "AWS::S3::Object", "ARN": f"arn:aws:s3:::{key}"},
        ],
    }


def _other_event(rng: random.Random, i: int) -> dict[str, Any]:
    """Events no trail here takes: Lambda data events, network activity, Insight events."""
    base = {"eventID": str(uuid.UUID(int=rng.getrandbits(128), version=4))}
    kind = i % 3
    if kind == 0:
        return base | {
            "eventName": "Invoke",
            "eventSource": "lambda.amazonaws.com",
            "eventCategory": "Data",
            "managementEvent": False,
            "resources": [
                {"type": "AWS::Lambda::Function", "ARN": f"arn:aws:lambda:test-1:1:function:f{i}"}
            ],
        }
    if kind == 1:
        return base | {
            "eventName": "PutObject",
            "eventSource": "s3.amazonaws.com",
            "eventCategory": "NetworkActivity",
            "vpcEndpointId": f"vpce-{i:06d}",
            "errorCode": "VpceAccessDenied",
        }
    return base | {
        "eventName": "RunInstances",
        "eventSource": "ec2.amazonaws.com",
        "eventCategory": "Insight",
        "eventType": "AwsCloudTrailInsight",
        "insightDetails": {"state": "Start" if i % 2 else "End"},
    }


def mixed_stream(seed: int) -> tuple[list[list[bytes]], dict[str, set[str]], set[str]]:
    """(lines per connection, eventIDs per trail by ``selectors_ref``, every eventID sent)."""
    rng = random.Random(f"{seed}-data")  # not synthetic's sequence: distinct eventIDs
    events: list[dict[str, Any]] = []
    for i, line in enumerate(synthetic.iter_events(MANAGEMENT_EVENTS, seed=seed)):
        e = orjson.loads(line)
        if i % 10 == 0:
            del e["readOnly"]  # the core fills it in from the eventName
        events.append(e)
    events += [_data_event(rng, i) for i in range(DATA_EVENTS)]
    events += [_other_event(rng, i) for i in range(OTHER_EVENTS)]
    rng.shuffle(events)
    expected: dict[str, set[str]] = {name: set() for name in SELECTORS}
    for e in events:
        d = defaulted(e)
        for name, sel in SELECTORS.items():
            if logged(sel, d):
                expected[name].add(e["eventID"])
    sent = {e["eventID"] for e in events}
    assert len(sent) == TOTAL_EVENTS, "eventIDs of the mix are not unique"
    per_connection: list[list[bytes]] = [[] for _ in range(CONNECTIONS)]
    for i, e in enumerate(events):
        per_connection[i % CONNECTIONS].append(orjson.dumps(e))
    return per_connection, expected, sent


def push(d: DaemonProcess, per_connection: list[list[bytes]]) -> list[SendResult]:
    """Send each connection's lines from its own thread; every client must get its final ack."""
    results: list[SendResult | BaseException | None] = [None] * CONNECTIONS

    def run(k: int) -> None:
        try:
            options: dict[str, Any] = {"ack_timeout_secs": 120.0}
            if k < 2:
                client = Client.connect(socket=d.unix_socket, **options)
            else:
                client = Client.connect(tcp=d.tcp, **options)
            with client:
                results[k] = client.send(per_connection[k], finish=True)
        except BaseException as e:
            results[k] = e

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(CONNECTIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=CLIENT_DEADLINE_SECS)
    assert not any(t.is_alive() for t in threads), "a client did not finish in time"
    out: list[SendResult] = []
    for k, result in enumerate(results):
        assert isinstance(result, SendResult), f"client {k}: {result!r}\n{d.stderr()[-3000:]}"
        assert result.ok, (k, result.rejections[:5])
        assert result.sent == result.accepted == len(per_connection[k]), (k, result)
        out.append(result)
    return out


# ---------------------------------------------------------------------------------------------
# reading a destination back


def s3_objects(s3: S3Server, bucket: str, prefix: str) -> dict[str, bytes]:
    client = s3.client()
    out: dict[str, bytes] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


def file_objects(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(".metadata.json")
    }


def decompress(key: str, data: bytes) -> bytes:
    """A log file's content, with the reader a user would use; gzip must be one member."""
    if key.endswith(".json.gz"):
        member = zlib.decompressobj(wbits=31)
        content = member.decompress(data)
        assert member.eof and member.unused_data == b"", f"{key}: not exactly one gzip member"
        return content
    assert key.endswith(".json.zst"), key
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
    with reader:
        return reader.read()


_EVENT_ID = re.compile(rb'"eventID":"([^"]+)"')


def event_ids(objects: dict[str, bytes], compression: str) -> tuple[list[str], int]:
    """(every eventID in the log files, in file order; the number of log files)."""
    ext = {"zstd": ".json.zst", "gzip": ".json.gz"}[compression]
    logs = [k for k in objects if layout.is_log_file_key(k)]
    assert logs, "no log file delivered"
    ids: list[str] = []
    for key in logs:
        assert key.endswith(ext), f"{key}: expected {compression}"
        content = decompress(key, objects[key])
        lines = content.split(b"\n")
        assert lines[0] == b'{"Records":[' and lines[-2:] == [b"]}", b""], key
        for line in lines[1:-2]:
            record = orjson.loads(line.removesuffix(b","))
            ids.append(record["eventID"])
    return ids, len(logs)


def check_holds_exactly(name: str, ids: list[str], expected: set[str], sent: set[str]) -> None:
    assert len(ids) == len(set(ids)), f"{name}: {len(ids) - len(set(ids))} events stored twice"
    got = set(ids)
    assert not got - sent, f"{name}: {len(got - sent)} events never sent"
    missing, extra = expected - got, got - expected
    assert not missing and not extra, (
        f"{name}: {len(missing)} missing (e.g. {sorted(missing)[:3]}), "
        f"{len(extra)} not selected (e.g. {sorted(extra)[:3]})"
    )


def export_public_key(d: DaemonProcess) -> Path:
    done = subprocess.run(
        [sys.executable, "-m", "trailseal.cli", "keys", "export", "--config", d.config_path],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    pem = d.config_path.parent / "exported-public.pem"
    pem.write_bytes(done.stdout)
    return pem


def child_env(env: dict[str, str]) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    out.update(env)
    return out


def validate(
    url: str, public_key: Path, *, digests: int, logs: int, endpoint: str = "", env: dict[str, str]
) -> str:
    """The real ``trailseal validate``: exit 0, ``digests``/``digests`` and ``logs``/``logs``."""
    done = subprocess.run(
        [
            *(sys.executable, "-m", "trailseal.cli", "validate", "--no-progress"),
            *("--destination", url, "--public-key", str(public_key)),
            *(("--s3-endpoint-url", endpoint) if endpoint else ()),
        ],
        capture_output=True,
        text=True,
        env=child_env(env),
        timeout=300,
        check=False,
    )
    report = done.stdout + done.stderr
    assert done.returncode == 0, report[-5000:]
    assert f"{digests}/{digests} digest files valid" in report, report[-5000:]
    assert f"{logs}/{logs} log files valid" in report, report[-5000:]
    assert "INVALID" not in report and "not yet covered" not in report, report[-5000:]
    return report


def digest_count(objects: dict[str, bytes]) -> int:
    return sum(1 for k in objects if layout.parse_digest_key(k) is not None)


# ---------------------------------------------------------------------------------------------


@pytest.fixture
def stream() -> Iterator[tuple[list[list[bytes]], dict[str, set[str]], set[str]]]:
    yield mixed_stream(seed=2026)


def test_three_trails_on_s3_with_sse_and_compliance_lock(
    s3: S3Server,
    daemon: Callable[..., DaemonProcess],
    tmp_path: Path,
    stream: tuple[list[list[bytes]], dict[str, set[str]], set[str]],
) -> None:
    per_connection, expected, sent = stream
    plain = s3.new_bucket()
    locked = s3.new_bucket(object_lock=True)
    data_root = tmp_path / "bucket-data"
    s3_common = {"s3_endpoint_url": s3.endpoint, "s3_region": "us-east-1"}
    common = {"seal_after_secs": 3600, "digest_interval_secs": 3600}
    d = daemon(
        trails={
            "management": {
                "destination": f"s3://{plain}/mgmt",
                "seal_after_bytes": 32 * 1024 * 1024,  # several log files per big stream
                **s3_common,
                **common,
                **ALL_MANAGEMENT,
            },
            "writes": {
                "destination": f"s3://{locked}/writes",
                "compression": "gzip",
                "sse": "AES256",
                "object_lock_mode": "COMPLIANCE",
                "object_lock_days": 1,
                **s3_common,
                **common,
                **WRITES_OF_TWO_SOURCES,
            },
            "data": {"destination": f"file://{data_root}", **common, **S3_DATA_UNDER_PREFIX},
        },
        env=s3.env(),
    )
    locked_from = datetime.now(UTC)
    push(d, per_connection)
    assert d.stop() == 0, d.stderr()[-5000:]
    locked_to = datetime.now(UTC)
    for name in SELECTORS:
        leftovers = sorted((d.data_dir / "spool" / name / "sealed").glob("*.log"))
        assert not leftovers, f"{name}: sealed but never delivered: {leftovers}"

    # the mix exercises every trail and leaves events to none
    assert all(len(expected[n]) > 1000 for n in SELECTORS), {n: len(v) for n, v in expected.items()}
    taken = set().union(*expected.values())
    assert len(sent - taken) >= OTHER_EVENTS

    destinations = {
        "management": (f"s3://{plain}/mgmt", s3_objects(s3, plain, "mgmt/"), "zstd"),
        "writes": (f"s3://{locked}/writes", s3_objects(s3, locked, "writes/"), "gzip"),
        "data": (f"file://{data_root}", file_objects(data_root), "zstd"),
    }
    public_key = export_public_key(d)
    for name, (url, objects, compression) in destinations.items():
        ids, logs = event_ids(objects, compression)
        check_holds_exactly(name, ids, expected[name], sent)
        digests = digest_count(objects)
        assert digests >= 1, name
        endpoint = s3.endpoint if url.startswith("s3://") else ""
        validate(url, public_key, digests=digests, logs=logs, endpoint=endpoint, env=s3.env())
    management_logs = [k for k in destinations["management"][1] if layout.is_log_file_key(k)]
    stream_count = len({k.split("/")[4] for k in management_logs})
    assert len(management_logs) > stream_count, "seal_after_bytes should cut several files"

    # the locked, encrypted trail: every object, log files, digests and the public key
    client = s3.client()
    locked_keys = sorted(destinations["writes"][1])
    assert any(layout.parse_digest_key(k) for k in locked_keys)
    assert any(k.startswith(f"writes/{layout.PUBLIC_KEYS_DIR}/") for k in locked_keys)
    for key in locked_keys:
        head = client.head_object(Bucket=locked, Key=key)
        assert head.get("ServerSideEncryption") == "AES256", (key, head)
        assert head.get("ObjectLockMode") == "COMPLIANCE", (key, head)
        until = head["ObjectLockRetainUntilDate"]
        slack = timedelta(minutes=5)
        assert locked_from + timedelta(days=1) - slack <= until, (key, until)
        assert until <= locked_to + timedelta(days=1) + slack, (key, until)
        with pytest.raises(ClientError) as refused:
            client.delete_object(Bucket=locked, Key=key, VersionId=head["VersionId"])
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403, key
        assert client.head_object(Bucket=locked, Key=key, VersionId=head["VersionId"])


# ---------------------------------------------------------------------------------------------
# SSE-KMS


@pytest.fixture
def moto(tmp_path: Path) -> Iterator[MotoServer]:
    server = MotoServer.start(tmp_path / "moto")
    try:
        yield server
    finally:
        server.stop()


def test_sse_kms_on_every_object(moto: MotoServer, daemon: Callable[..., DaemonProcess]) -> None:
    """``sse = "aws:kms"`` with a ``kms_key_id``: every object (log files, digests, public key)
    reports that key in HeadObject, and validate passes. The S3 here is moto's (tests/kmsserver.py)
    only because SSE-KMS needs a KMS to name the key in; everything else runs on SeaweedFS."""
    key_id = moto.create_kms_key()
    bucket = moto.new_bucket()
    d = daemon(
        trails={
            "kms": {
                "destination": f"s3://{bucket}/kms",
                "s3_endpoint_url": moto.endpoint,
                "s3_region": "us-east-1",
                "sse": "aws:kms",
                "kms_key_id": key_id,
                "seal_after_bytes": 1024 * 1024,
                "seal_after_secs": 3600,
                "digest_interval_secs": 3600,
            }
        },
        env=moto.env(),
    )
    lines = list(synthetic.iter_events(2_000, seed=77))
    push(d, [lines[k::CONNECTIONS] for k in range(CONNECTIONS)])
    assert d.stop() == 0, d.stderr()[-5000:]

    client = moto.client("s3")
    objects = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="kms/"):
        for obj in page.get("Contents", []):
            objects[obj["Key"]] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    ids, logs = event_ids(objects, "zstd")
    want = {orjson.loads(line)["eventID"] for line in lines}
    check_holds_exactly("kms", ids, want, want)
    assert logs > 1 and any(k.startswith(f"kms/{layout.PUBLIC_KEYS_DIR}/") for k in objects)
    for key in objects:
        head = client.head_object(Bucket=bucket, Key=key)
        assert head.get("ServerSideEncryption") == "aws:kms", (key, head)
        assert head.get("SSEKMSKeyId", "").endswith(key_id), (key, head)
    validate(
        f"s3://{bucket}/kms",
        export_public_key(d),
        digests=digest_count(objects),
        logs=logs,
        endpoint=moto.endpoint,
        env=moto.env(),
    )


# ---------------------------------------------------------------------------------------------
# Insight events (FORMATS.md §4: under CloudTrail-Insight/, with _CloudTrail-Insight_ in the name)

MANAGEMENT_AND_INSIGHTS: dict[str, Any] = {
    "advanced_event_selectors": [
        {
            "Name": "management",
            "FieldSelectors": [{"Field": "eventCategory", "Equals": ["Management"]}],
        },
        {"Name": "insights", "FieldSelectors": [{"Field": "eventCategory", "Equals": ["Insight"]}]},
    ]
}
_INSIGHT_KEY = re.compile(
    rf"^AWSLogs/{HOME_ACCOUNT}/CloudTrail-Insight/{HOME_REGION}/\d{{4}}/\d{{2}}/\d{{2}}/"
    rf"{HOME_ACCOUNT}_CloudTrail-Insight_{HOME_REGION}_\d{{8}}T\d{{4}}Z_[A-Za-z0-9]{{16}}\.json\.zst$"
)


def test_insight_events_go_to_their_own_files(
    daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    """A trail taking management and Insight events: the Insight events (and only they) are in
    ``CloudTrail-Insight/`` log files, listed in the stream's digests, and validate passes."""
    root = tmp_path / "bucket-insight"
    d = daemon(
        trails={
            "t": {
                "destination": f"file://{root}",
                "seal_after_secs": 3600,
                "digest_interval_secs": 3600,
                **MANAGEMENT_AND_INSIGHTS,
            }
        }
    )
    rng = random.Random("insight")
    insights = [_other_event(rng, 3 * i + 2) for i in range(20)]
    management = [
        {
            "eventID": str(uuid.uuid4()),
            "eventName": f"CreateThing{i}",
            "eventSource": "iam.amazonaws.com",
        }
        for i in range(30)
    ]
    mixed = [e for pair in zip(management, insights, strict=False) for e in pair] + management[20:]
    push(d, [[orjson.dumps(e) for e in mixed[k::CONNECTIONS]] for k in range(CONNECTIONS)])
    assert d.stop() == 0, d.stderr()[-5000:]

    objects = file_objects(root)
    logs = [k for k in objects if layout.is_log_file_key(k)]
    insight_logs = [k for k in logs if "/CloudTrail-Insight/" in k]
    assert insight_logs, f"no CloudTrail-Insight/ log file among {logs}"
    assert all(_INSIGHT_KEY.match(k) for k in insight_logs), insight_logs
    want = {e["eventID"] for e in insights}
    got, _ = event_ids({k: objects[k] for k in insight_logs}, "zstd")
    check_holds_exactly("insight files", got, want, want)
    rest, _ = event_ids({k: objects[k] for k in logs if k not in insight_logs}, "zstd")
    everything = {e["eventID"] for e in mixed}
    check_holds_exactly("management files", rest, everything - want, everything)
    listed = {
        entry["s3Object"]
        for k, v in objects.items()
        if layout.parse_digest_key(k) is not None
        for entry in orjson.loads(zlib.decompress(v, wbits=31))["logFiles"]
    }
    assert set(insight_logs) <= listed, "an Insight log file is in no digest"
    validate(
        f"file://{root}",
        export_public_key(d),
        digests=digest_count(objects),
        logs=len(logs),
        env={},
    )
