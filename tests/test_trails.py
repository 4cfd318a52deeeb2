"""Several trails in one daemon (issue 3), end to end through the real daemon and validator.

- three trails with their own destinations: all management events (zstd); write-only events of
  two eventSources through advanced selectors (gzip); S3 data events under a prefix through basic
  selectors (zstd). A mixed stream (synthetic management events, data events, Insight and
  network activity events) goes in; each trail must hold exactly the events that
  ``selectors_ref`` (an independent Python reading of CloudTrail's rules) says it logs, once;
  gzip log files are single canonical members; every destination validates;
- ``multi_region = false`` keeps only home-region events; an organization trail writes
  ``AWSLogs/<o-…>/<account>/…`` with per-account digests, and validates.

Destinations are given by a :class:`Destination` (URL + a way to read every object), so the
same tests can run against another store by adding a fixture parameter.
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zstandard

import selectors_ref
from conftest import ACCOUNT, REGION, DaemonProcess, exchange
from selectors_ref import logged
from trailseal import _core, synthetic
from trailseal.delivery import layout

ZERO_CHAIN = "0" * 64
OTHER_REGION = "eu-west-1"
OTHER_ACCOUNT = "210987654321"
ORG = "o-abcdef123456"

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
                {"Type": "AWS::S3::Object", "Values": ["arn:aws:s3:::trail-data/in/"]}
            ],
        }
    ]
}


@dataclass
class Destination:
    """Where a trail delivers: its URL and every object in it (key → bytes)."""

    url: str
    objects: Callable[[], dict[str, bytes]]


def _file_destination(root: Path) -> Destination:
    def objects() -> dict[str, bytes]:
        return {
            str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.endswith(".metadata.json")
        }

    return Destination(f"file://{root}", objects)


@pytest.fixture(params=["file"])
def destination(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], Destination]:
    """A factory of empty destinations, one per trail name."""
    assert request.param == "file"
    return lambda name: _file_destination(tmp_path / f"bucket-{name}")


# ---------------------------------------------------------------------------------------------
# events


def _event(name: str, source: str, **fields: Any) -> dict[str, Any]:
    return {"eventID": str(uuid.uuid4()), "eventName": name, "eventSource": source, **fields}


def mixed_stream() -> list[dict[str, Any]]:
    """Management events (synthetic, several sources, read and write, three regions — one of
    them this daemon's home region), S3 data events in and out of the selected prefix, Insight
    and network activity events, events whose readOnly comes from the core's default."""
    events = [json.loads(line) for line in synthetic.events(150, seed=3)]
    for i, e in enumerate(events):
        if i % 3 == 0:
            e["awsRegion"] = REGION
    for i in range(40):
        key = f"trail-data/{'in' if i % 2 else 'out'}/{i}.bin"
        events.append(
            _event(
                ["GetObject", "PutObject", "DeleteObject", "HeadObject"][i % 4],
                "s3.amazonaws.com",
                eventCategory="Data",
                managementEvent=False,
                awsRegion=REGION if i % 3 else OTHER_REGION,
                resources=[
                    {"type": "AWS::S3::Bucket", "ARN": "arn:aws:s3:::trail-data"},
                    {"type": "AWS::S3::Object", "ARN": f"arn:aws:s3:::{key}"},
                ],
            )
        )
    for i in range(10):
        events.append(
            _event(
                "RunInstances",
                "ec2.amazonaws.com",
                eventCategory="Insight",
                eventType="AwsCloudTrailInsight",
                insightDetails={"state": "Start" if i % 2 else "End"},
            )
        )
        events.append(
            _event(
                "PutObject",
                "s3.amazonaws.com",
                eventCategory="NetworkActivity",
                vpcEndpointId=f"vpce-{i:04d}",
                errorCode="VpceAccessDenied",
            )
        )
    # no readOnly and no eventCategory: the core fills both in before selecting
    for name in ["CreateUser", "ListUsers", "TerminateInstances", "DescribeImages", "CreateKey"]:
        source = "kms.amazonaws.com" if name == "CreateKey" else "iam.amazonaws.com"
        if "Instances" in name or "Images" in name:
            source = "ec2.amazonaws.com"
        events.append(_event(name, source))
    return events


def defaulted(e: dict[str, Any]) -> dict[str, Any]:
    return selectors_ref.defaulted(e, account=ACCOUNT, region=REGION)


def ndjson(events: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(e).encode() + b"\n" for e in events)


def send_all(d: DaemonProcess, events: list[dict[str, Any]]) -> None:
    with d.connect_unix() as sock:
        replies = exchange(sock, ndjson(events))
    assert [r for r in replies if "error" in r] == []
    assert replies[-1] == {"ack": len(events)}


# ---------------------------------------------------------------------------------------------
# reading what was delivered


@dataclass
class LogFile:
    key: str
    compression: str
    records: list[dict[str, Any]]


def read_log(key: str, data: bytes) -> LogFile:
    """Decompress with the reader a user would use; check the encoding is trailseal's own."""
    if key.endswith(".json.gz"):
        # exactly one member: a raw gzip reader stops at its end with nothing left over
        member = zlib.decompressobj(wbits=31)
        content = member.decompress(data)
        assert member.eof and member.unused_data == b"", f"{key}: not exactly one gzip member"
        assert gzip.decompress(data) == content
        compression = "gzip"
    else:
        assert key.endswith(".json.zst"), key
        reader = zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(data), read_across_frames=True
        )
        with reader:
            content = reader.read()
        compression = "zstd"
    # one file per stream (sealed at shutdown), so its chain starts at zero
    report = _core.verify_log(data, compression, ZERO_CHAIN)
    assert report.problems == [], f"{key}: {report.problems}"
    records: list[dict[str, Any]] = json.loads(content)["Records"]
    return LogFile(key, compression, records)


def log_files(dest: Destination) -> list[LogFile]:
    return [read_log(k, v) for k, v in dest.objects().items() if layout.is_log_file_key(k)]


def digest_keys(dest: Destination) -> list[str]:
    return [k for k in dest.objects() if layout.parse_digest_key(k) is not None]


def validate(d: DaemonProcess, dest: Destination) -> None:
    keys = list((d.data_dir / "keys" / "public").glob("*.pem"))
    assert keys, "the daemon wrote no public key"
    done = subprocess.run(
        [sys.executable, "-m", "trailseal.cli", "validate", "--destination", dest.url]
        + [arg for k in keys for arg in ("--public-key", str(k))]
        + ["--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def ids(records: list[dict[str, Any]]) -> list[str]:
    return sorted(r["eventID"] for r in records)


def trail_table(dest: Destination, selectors: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {
        "destination": dest.url,
        "seal_after_secs": 3600,
        "digest_interval_secs": 3600,
        **selectors,
        **more,
    }


# ---------------------------------------------------------------------------------------------


def test_each_trail_holds_exactly_what_its_selectors_match(
    daemon: Callable[..., DaemonProcess], destination: Callable[[str], Destination]
) -> None:
    selectors = {
        "management": ALL_MANAGEMENT,
        "writes": WRITES_OF_TWO_SOURCES,
        "data": S3_DATA_UNDER_PREFIX,
    }
    dests = {name: destination(name) for name in selectors}
    d = daemon(
        trails={
            "management": trail_table(dests["management"], ALL_MANAGEMENT),
            "writes": trail_table(
                dests["writes"], WRITES_OF_TWO_SOURCES, compression="gzip", gzip_level=9
            ),
            "data": trail_table(dests["data"], S3_DATA_UNDER_PREFIX),
        }
    )
    events = mixed_stream()
    send_all(d, events[:100])
    send_all(d, events[100:])
    assert d.stop() == 0, d.stderr()

    for name, sel in selectors.items():
        expected = sorted(e["eventID"] for e in events if logged(sel, defaulted(e)))
        files = log_files(dests[name])
        got = [r for f in files for r in f.records]
        assert ids(got) == expected, name
        assert len(set(ids(got))) == len(got), f"{name}: an event was written twice"
        want_compression = "gzip" if name == "writes" else "zstd"
        assert {f.compression for f in files} == {want_compression}, name
        # every stream's log files lie under its own region, and have a digest there
        for f in files:
            regions = {r["awsRegion"] for r in f.records}
            assert regions == {f.key.split("/")[3]}, f.key
        digest_regions = {k.split("/")[3] for k in digest_keys(dests[name])}
        assert {f.key.split("/")[3] for f in files} <= digest_regions, name
        validate(d, dests[name])
    # the mix really exercised every trail, and left some events to no trail at all
    counts = {
        name: len(ids([r for f in log_files(dests[name]) for r in f.records])) for name in dests
    }
    assert all(n > 0 for n in counts.values()), counts
    unrouted = [e for e in events if not any(logged(s, defaulted(e)) for s in selectors.values())]
    assert unrouted, "the stream should hold events no trail takes"


def test_single_region_and_organization_trails(
    daemon: Callable[..., DaemonProcess], destination: Callable[[str], Destination]
) -> None:
    home, org = destination("home"), destination("org")
    d = daemon(
        trails={
            "home": trail_table(home, ALL_MANAGEMENT, multi_region=False),
            "org": trail_table(org, ALL_MANAGEMENT, organization_id=ORG),
        }
    )
    events = [
        _event(
            f"CreateThing{i}",
            "iam.amazonaws.com",
            awsRegion=[REGION, OTHER_REGION][i % 2],
            recipientAccountId=[ACCOUNT, OTHER_ACCOUNT][i // 2 % 2],
        )
        for i in range(40)
    ]
    send_all(d, events)
    assert d.stop() == 0, d.stderr()

    # multi_region = false: only the home region's events, under the home region only
    home_files = log_files(home)
    assert ids([r for f in home_files for r in f.records]) == sorted(
        e["eventID"] for e in events if e["awsRegion"] == REGION
    )
    assert {f.key.split("/")[3] for f in home_files} == {REGION}
    assert all(f.key.startswith("AWSLogs/") for f in home_files)
    validate(d, home)

    # organization trail: AWSLogs/<org>/<account>/…, both accounts, digests per account
    org_files = log_files(org)
    assert ids([r for f in org_files for r in f.records]) == ids(events)
    streams = set()
    for f in org_files:
        parts = f.key.split("/")
        assert parts[:2] == ["AWSLogs", ORG] and parts[3] == "CloudTrail", f.key
        assert {r["recipientAccountId"] for r in f.records} == {parts[2]}, f.key
        assert {r["awsRegion"] for r in f.records} == {parts[4]}, f.key
        streams.add((parts[2], parts[4]))
    assert streams == {(a, r) for a in (ACCOUNT, OTHER_ACCOUNT) for r in (REGION, OTHER_REGION)}
    digests = {
        (p.account, p.region): p
        for p in (layout.parse_digest_key(k) for k in digest_keys(org))
        if p is not None
    }
    assert set(digests) == streams
    assert all(p.root == f"AWSLogs/{ORG}/" for p in digests.values())
    validate(d, org)


def test_refused_selectors_stop_the_config_check(tmp_path: Path) -> None:
    config = tmp_path / "trailseal.toml"
    config.write_text(
        f'[daemon]\ndata_dir = "{tmp_path / "data"}"\n'
        "[trails.bad]\n"
        'advanced_event_selectors = [{ FieldSelectors = [{ Field = "eventName", '
        'Equals = ["X"] }] }]\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "trailseal.cli", "serve", "--config", str(config), "--check-config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "[trails.bad]" in done.stderr and "eventCategory" in done.stderr, done.stderr
