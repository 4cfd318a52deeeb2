"""LookupEvents through the real daemon's API (boto3's ``cloudtrail`` client), checked against an
independent Python filter over the events the test sent; pagination; every documented error;
``trailseal lookup``.
"""

from __future__ import annotations

import calendar
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from conftest import DaemonProcess, exchange, free_tcp_port, stock_aws, wait_until
from trailseal import synthetic
from trailseal.api.connect import cloudtrail_client, resolve

READ_PREFIXES = ("Get", "List", "Describe", "Head", "Lookup", "Search", "Scan", "Query", "BatchGet")
# Management and Insight events (the default selectors take management events only).
SELECTORS = [
    {"Name": "m", "FieldSelectors": [{"Field": "eventCategory", "Equals": ["Management"]}]},
    {"Name": "i", "FieldSelectors": [{"Field": "eventCategory", "Equals": ["Insight"]}]},
]
NOW = int(time.time()) - 3600  # well inside the default 90-day retention


def iso(t: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def handmade() -> list[dict[str, Any]]:
    """Events covering every lookup attribute's corner: IAM users with access keys, assumed-role
    sessions, no identity, resources (two of one type), read-only and write, readOnly left to
    its default, Insight events, same-second ties."""
    out: list[dict[str, Any]] = []
    for i in range(120):
        ev: dict[str, Any] = {
            "eventID": f"hand-{i:04d}",
            "eventTime": iso(NOW - 2000 + (i // 2) * 7),  # pairs share a second
            "eventSource": ["s3.amazonaws.com", "iam.amazonaws.com", "ec2.amazonaws.com"][i % 3],
            "eventName": ["GetObject", "PutObject", "DescribeInstances", "CreateRole"][i % 4],
        }
        if i % 5 == 0:
            ev["userIdentity"] = {"type": "IAMUser", "userName": "alice", "accessKeyId": "AKIA1"}
        elif i % 5 == 1:
            ev["userIdentity"] = {
                "type": "AssumedRole",
                "arn": f"arn:aws:sts::123456789012:assumed-role/Admin/session-{i % 3}",
                "accessKeyId": f"ASIA{i % 4}",
            }
        elif i % 5 == 2:
            ev["userIdentity"] = {"type": "Root", "arn": "arn:aws:iam::123456789012:root"}
        if i % 4 == 0:
            ev["resources"] = [
                {"type": "AWS::S3::Bucket", "ARN": "arn:aws:s3:::b1"},
                {"type": "AWS::S3::Bucket", "ARN": f"arn:aws:s3:::b{i % 3 + 2}"},
            ]
        elif i % 4 == 1:
            ev["resources"] = [{"type": "AWS::IAM::Role", "ARN": "arn:aws:iam::1:role/r"}]
        if i % 6 == 0:
            ev["readOnly"] = i % 12 == 0  # explicit, sometimes against the name's prefix
        if i % 10 == 7:
            ev["eventCategory"] = "Insight"
            ev["eventType"] = "AwsCloudTrailInsight"
        out.append(ev)
    return out


def synthetic_events(n: int) -> list[dict[str, Any]]:
    out = []
    for i, line in enumerate(synthetic.events(n, seed=7)):
        ev = json.loads(line)
        ev["eventTime"] = iso(NOW - 5000 + i * 3)
        out.append(ev)
    return out


def fields(ev: dict[str, Any]) -> dict[str, Any]:
    """The lookup fields of a sent event, computed here independently of the daemon."""
    who = ev.get("userIdentity") or {}
    username = who.get("userName")
    arn = who.get("arn", "")
    if username is None and ":assumed-role/" in arn:
        username = arn.rsplit("/", 1)[1]
    read_only = ev.get("readOnly", ev["eventName"].startswith(READ_PREFIXES))
    return {
        "EventId": ev["eventID"],
        "EventName": ev["eventName"],
        "ReadOnly": "true" if read_only else "false",
        "Username": username,
        "EventSource": ev["eventSource"],
        "AccessKeyId": who.get("accessKeyId"),
        "ResourceType": {r["type"] for r in ev.get("resources", [])},
        "ResourceName": {r["ARN"] for r in ev.get("resources", [])},
        "insight": ev.get("eventCategory") == "Insight",
        "time": calendar.timegm(time.strptime(ev["eventTime"], "%Y-%m-%dT%H:%M:%SZ")),
    }


def expected(
    sent: list[dict[str, Any]],
    key: str | None,
    value: str | None,
    *,
    insight: bool = False,
    start: int | None = None,
    end: int | None = None,
) -> list[str]:
    """eventIDs LookupEvents must return, newest first (ties: the later sent first)."""
    hits = []
    for order, ev in enumerate(sent):
        f = fields(ev)
        if f["insight"] != insight:
            continue
        if (start is not None and f["time"] < start) or (end is not None and f["time"] > end):
            continue
        if key is not None:
            v = f[key]
            if not (value in v if isinstance(v, set) else v == value):
                continue
        hits.append((f["time"], order, f["EventId"]))
    return [h[2] for h in sorted(hits, reverse=True)]


def lookup_all(client: Any, **kwargs: Any) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while True:
        page = client.lookup_events(**kwargs)
        events += page["Events"]
        if "NextToken" not in page:
            return events
        kwargs["NextToken"] = page["NextToken"]


def send(d: DaemonProcess, events: list[dict[str, Any]]) -> None:
    data = b"".join(json.dumps(ev).encode() + b"\n" for ev in events)
    with d.connect_unix() as sock:
        replies = exchange(sock, data)
    assert replies[-1] == {"ack": len(events)}, replies[:5]
    assert not [r for r in replies if "error" in r]


@pytest.fixture
def api_daemon(daemon: Callable[..., DaemonProcess]) -> Iterator[tuple[DaemonProcess, Any]]:
    port = free_tcp_port()
    d = daemon(
        api={"listen": f"127.0.0.1:{port}"},
        trail={"advanced_event_selectors": SELECTORS, "seal_after_secs": 1},
    )
    client = cloudtrail_client(d.config_path, endpoint_url=f"http://127.0.0.1:{port}")
    yield d, client
    assert d.stop() == 0, d.stderr()


def wait_indexed(client: Any, event_id: str, *, insight: bool = False) -> None:
    attrs = [{"AttributeKey": "EventId", "AttributeValue": event_id}]
    kwargs: dict[str, Any] = {"LookupAttributes": attrs}
    if insight:
        kwargs["EventCategory"] = "insight"
    wait_until(
        lambda: len(client.lookup_events(**kwargs)["Events"]) == 1,
        timeout=30,
        what=f"{event_id} in the event history",
    )


def test_every_attribute_matches_an_independent_filter(
    api_daemon: tuple[DaemonProcess, Any],
) -> None:
    d, client = api_daemon
    sent = synthetic_events(300) + handmade()
    send(d, sent)
    wait_indexed(client, sent[-1]["eventID"], insight=fields(sent[-1])["insight"])
    wait_indexed(client, "hand-0118")

    # no attribute: every non-Insight event, newest first; Insight events only on request
    got = [e["EventId"] for e in lookup_all(client)]
    assert got == expected(sent, None, None)
    got = [e["EventId"] for e in lookup_all(client, EventCategory="insight")]
    assert got == expected(sent, None, None, insight=True) and got

    samples: dict[str, set[str]] = {}
    for ev in sent:
        f = fields(ev)
        for key in ("EventId", "EventName", "ReadOnly", "Username", "EventSource", "AccessKeyId"):
            if f[key] is not None:
                samples.setdefault(key, set()).add(f[key])
        for key in ("ResourceType", "ResourceName"):
            samples.setdefault(key, set()).update(f[key])
    checked = 0
    for key, values in sorted(samples.items()):
        for value in [*sorted(values)[:6], "no-such-value"]:
            want = expected(sent, key, value)
            attrs = [{"AttributeKey": key, "AttributeValue": value}]
            got = [e["EventId"] for e in lookup_all(client, LookupAttributes=attrs)]
            assert got == want, (key, value)
            checked += len(got)
    assert checked > 500

    # a time range (inclusive at both ends) with an attribute
    start, end = NOW - 1900, NOW - 1700
    attrs = [{"AttributeKey": "EventSource", "AttributeValue": "s3.amazonaws.com"}]
    got = [
        e["EventId"]
        for e in lookup_all(client, LookupAttributes=attrs, StartTime=start, EndTime=end)
    ]
    assert got == expected(sent, "EventSource", "s3.amazonaws.com", start=start, end=end) and got

    # the members of one result, as CloudTrail returns them
    attrs = [{"AttributeKey": "EventId", "AttributeValue": "hand-0000"}]
    (ev,) = client.lookup_events(LookupAttributes=attrs)["Events"]
    sent0 = next(e for e in sent if e["eventID"] == "hand-0000")
    assert ev["EventName"] == "GetObject" and ev["ReadOnly"] == "true"
    assert ev["Username"] == "alice" and ev["AccessKeyId"] == "AKIA1"
    assert ev["EventTime"].timestamp() == fields(sent0)["time"]
    assert ev["Resources"] == [
        {"ResourceType": "AWS::S3::Bucket", "ResourceName": "arn:aws:s3:::b1"},
        {"ResourceType": "AWS::S3::Bucket", "ResourceName": "arn:aws:s3:::b2"},
    ]
    record = json.loads(ev["CloudTrailEvent"])
    assert record["eventID"] == "hand-0000" and record["recipientAccountId"] == "123456789012"
    attrs = [{"AttributeKey": "EventId", "AttributeValue": "hand-0002"}]
    (ev,) = client.lookup_events(LookupAttributes=attrs)["Events"]
    assert "Username" not in ev and "AccessKeyId" not in ev and ev["Resources"] == []


def test_pagination_through_1000_events(api_daemon: tuple[DaemonProcess, Any]) -> None:
    d, client = api_daemon
    sent = [
        {
            "eventID": str(uuid.uuid4()),
            "eventTime": iso(NOW - 3000 + i // 3),
            "eventSource": "pages.example.com",
            "eventName": "PageMe" if i % 10 else "Other",
        }
        for i in range(1112)
    ]
    send(d, sent[:600])
    send(d, sent[600:])
    wait_indexed(client, sent[-1]["eventID"])
    attrs = [{"AttributeKey": "EventName", "AttributeValue": "PageMe"}]
    want = expected(sent, "EventName", "PageMe")
    assert len(want) == 1000
    pages = 0
    got: list[str] = []
    kwargs: dict[str, Any] = {"LookupAttributes": attrs, "MaxResults": 50}
    while True:
        page = client.lookup_events(**kwargs)
        pages += 1
        got += [e["EventId"] for e in page["Events"]]
        if pages == 3:  # events arriving between pages do not disturb the cursor
            late = [dict(sent[1], eventID=str(uuid.uuid4()), eventTime=iso(NOW))]
            send(d, late)
        if "NextToken" not in page:
            break
        assert len(page["Events"]) == 50
        kwargs["NextToken"] = page["NextToken"]
    assert pages == 20
    assert got == want  # no duplicates, no gaps, newest first


def error_code(call: Callable[[], Any]) -> str:
    with pytest.raises(ClientError) as info:
        call()
    return str(info.value.response["Error"]["Code"])


def test_documented_errors(api_daemon: tuple[DaemonProcess, Any]) -> None:
    d, client = api_daemon
    sent = [
        {"eventID": f"err-{i}", "eventTime": iso(NOW - i), "eventName": "E", "eventSource": "s"}
        for i in range(5)
    ]
    send(d, sent)
    wait_indexed(client, "err-4")
    a = {"AttributeKey": "EventName", "AttributeValue": "E"}
    assert error_code(lambda: client.lookup_events(MaxResults=51)) == "InvalidMaxResultsException"
    assert (
        error_code(lambda: client.lookup_events(LookupAttributes=[a, a]))
        == "InvalidLookupAttributesException"
    )
    bad = {"AttributeKey": "Nope", "AttributeValue": "x"}
    # boto3 checks the enum client-side; send it past the check as other SDKs could
    raw = _unvalidated(client)
    assert (
        error_code(lambda: raw.lookup_events(LookupAttributes=[bad]))
        == "InvalidLookupAttributesException"
    )
    assert (
        error_code(lambda: client.lookup_events(StartTime=NOW, EndTime=NOW - 10))
        == "InvalidTimeRangeException"
    )
    assert (
        error_code(lambda: raw.lookup_events(EventCategory="management"))
        == "InvalidEventCategoryException"
    )
    page = client.lookup_events(LookupAttributes=[a], MaxResults=2)
    token = page["NextToken"]
    other = {"AttributeKey": "EventSource", "AttributeValue": "s"}
    assert (
        error_code(lambda: client.lookup_events(LookupAttributes=[other], NextToken=token))
        == "InvalidNextTokenException"
    )
    assert (
        error_code(lambda: client.lookup_events(LookupAttributes=[a], NextToken="garbage"))
        == "InvalidNextTokenException"
    )
    # the same query goes on with its token (MaxResults may change between pages)
    rest = client.lookup_events(LookupAttributes=[a], NextToken=token, MaxResults=50)
    assert [e["EventId"] for e in page["Events"] + rest["Events"]] == [f"err-{i}" for i in range(5)]


def _unvalidated(client: Any) -> Any:
    """The same client without botocore's client-side parameter validation."""
    import boto3
    from botocore.config import Config

    creds = client._request_signer._credentials
    return boto3.client(
        "cloudtrail",
        endpoint_url=client.meta.endpoint_url,
        region_name=client.meta.region_name,
        aws_access_key_id=creds.access_key,
        aws_secret_access_key=creds.secret_key,
        config=Config(parameter_validation=False, retries={"max_attempts": 1}),
    )


def test_trailseal_lookup_cli(api_daemon: tuple[DaemonProcess, Any]) -> None:
    d, client = api_daemon
    sent = [
        {"eventID": f"cli-{i}", "eventTime": iso(NOW - i), "eventName": "Cli", "eventSource": "s"}
        for i in range(75)
    ]
    send(d, sent)
    wait_indexed(client, "cli-74")
    endpoint = client.meta.endpoint_url
    out = subprocess.run(
        [
            sys.executable, "-m", "trailseal.cli", "lookup", "--config", str(d.config_path),
            "--endpoint-url", endpoint,
            "--lookup-attributes", "AttributeKey=EventName,AttributeValue=Cli",
            "--max-results", "60", "--start-time", iso(NOW - 70), "--end-time", str(NOW),
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    events = json.loads(out.stdout)["Events"]
    assert [e["EventId"] for e in events] == [f"cli-{i}" for i in range(60)]
    assert events[0]["EventTime"].startswith(iso(NOW)[:10])
    out = subprocess.run(
        [
            sys.executable, "-m", "trailseal.cli", "lookup", "--config", str(d.config_path),
            "--endpoint-url", endpoint, "--output", "table", "--max-results", "3",
        ],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "3 events (more remain)" in out.stdout and "cli-0" in out.stdout, out.stdout
    out = subprocess.run(
        [
            sys.executable, "-m", "trailseal.cli", "lookup", "--config", str(d.config_path),
            "--endpoint-url", endpoint,
            "--lookup-attributes", "AttributeKey=Bogus,AttributeValue=x",
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode != 0 and "AttributeKey" in out.stderr


def test_the_stock_aws_cli_looks_up_events(
    api_daemon: tuple[DaemonProcess, Any], tmp_path: Any
) -> None:
    """``aws cloudtrail lookup-events``: its own pagination over NextToken gives every match in
    order, its options reach the daemon, and a refused request shows CloudTrail's exception."""
    d, client = api_daemon
    sent = synthetic_events(120)
    send(d, sent)
    wait_indexed(client, sent[-1]["eventID"])
    endpoint = resolve(d.config_path, endpoint_url=client.meta.endpoint_url)
    aws = stock_aws(
        tmp_path,
        {
            "AWS_ACCESS_KEY_ID": endpoint.access_key_id,
            "AWS_SECRET_ACCESS_KEY": endpoint.secret_access_key,
            "AWS_ENDPOINT_URL_CLOUDTRAIL": endpoint.url,
            "AWS_DEFAULT_REGION": endpoint.region,
        },
    )

    def lookup(*args: str) -> subprocess.CompletedProcess[str]:
        return aws("cloudtrail", "lookup-events", "--output", "json", *args)

    value = "s3.amazonaws.com"
    # --page-size 7 makes the CLI follow NextToken many times
    out = lookup(
        "--lookup-attributes",
        f"AttributeKey=EventSource,AttributeValue={value}",
        "--page-size",
        "7",
    )
    assert out.returncode == 0, out.stderr
    got = [e["EventId"] for e in json.loads(out.stdout)["Events"]]
    assert got == expected(sent, "EventSource", value) and len(got) > 7
    start, end = NOW - 4900, NOW - 4800  # the events are 3 s apart from NOW - 5000
    out = lookup("--start-time", iso(start), "--end-time", iso(end), "--max-items", "1000")
    assert out.returncode == 0, out.stderr
    got = [e["EventId"] for e in json.loads(out.stdout)["Events"]]
    assert got == expected(sent, None, None, start=start, end=end) and got
    refused = lookup("--start-time", iso(end), "--end-time", iso(start))
    assert refused.returncode != 0 and "InvalidTimeRangeException" in refused.stderr
    refused = lookup("--lookup-attributes", "AttributeKey=Color,AttributeValue=red")
    assert refused.returncode != 0
