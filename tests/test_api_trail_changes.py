"""Trail management through the API at run time: CreateTrail, UpdateTrail, DeleteTrail,
StartLogging, StopLogging, Put/GetEventSelectors, Put/GetInsightSelectors — with boto3's
``cloudtrail`` client and the stock AWS CLI against the real daemon.

What is checked beyond the responses: a trail made through the API takes events at once (no
restart) according to its selectors, stops taking them while stopped, delivers a final digest
at StopLogging and DeleteTrail so its bucket validates, persists across a restart, and is gone
(spool included) after DeleteTrail; trails of the config file refuse changes; a read key
changes nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

from conftest import (
    ACCOUNT,
    REGION,
    DaemonProcess,
    exchange,
    free_tcp_port,
    stock_aws,
    wait_until,
)
from reference import decompress

ADMIN = ("AKIATRAILADMIN000001", "trail-admin-secret-0001")
READER = ("AKIATRAILREAD0000001", "trail-read-secret-0001")
KEYS = {
    ADMIN[0]: {"secret": ADMIN[1], "role": "admin"},
    READER[0]: {"secret": READER[1], "role": "read"},
}
WRITES_ONLY = [
    {
        "Name": "writes",
        "FieldSelectors": [
            {"Field": "eventCategory", "Equals": ["Management"]},
            {"Field": "readOnly", "Equals": ["false"]},
        ],
    }
]


def client(url: str, key: tuple[str, str] = ADMIN) -> Any:
    return boto3.client(
        "cloudtrail",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=key[0],
        aws_secret_access_key=key[1],
        config=BotoConfig(retries={"max_attempts": 1}),
    )


def start(daemon: Callable[..., DaemonProcess], data_dir: Path | None = None) -> tuple[Any, str]:
    port = free_tcp_port()
    d = daemon(api={"listen": f"127.0.0.1:{port}", "access_keys": KEYS}, data_dir=data_dir)
    return d, f"http://127.0.0.1:{port}"


def error_code(call: Callable[[], Any]) -> str:
    with pytest.raises(ClientError) as info:
        call()
    code: str = info.value.response["Error"]["Code"]
    return code


def send(d: DaemonProcess, events: list[dict[str, Any]]) -> None:
    data = b"".join(json.dumps(e).encode() + b"\n" for e in events)
    with d.connect_unix() as sock:
        assert exchange(sock, data)[-1] == {"ack": len(events)}


def event(name: str, read_only: bool) -> dict[str, Any]:
    return {
        "eventID": str(uuid.uuid4()),
        "eventName": name,
        "eventSource": "ec2.amazonaws.com",
        "eventTime": "2026-11-26T10:00:00Z",
        "readOnly": read_only,
    }


def records(bucket: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted(bucket.rglob("*_CloudTrail_*.json.zst")):
        out.extend(json.loads(decompress(path.read_bytes(), "zstd"))["Records"])
    return out


def validate(d: DaemonProcess, bucket: Path) -> subprocess.CompletedProcess[str]:
    (public_key,) = (d.data_dir / "keys" / "public").glob("*.pem")
    return subprocess.run(
        [
            *(sys.executable, "-m", "trailseal.cli", "validate", "--no-progress"),
            *("--destination", f"file://{bucket}", "--public-key", str(public_key)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_trail_made_through_the_api_lives_stops_persists_and_goes(
    daemon: Callable[..., DaemonProcess],
) -> None:
    d, url = start(daemon)
    ct = client(url)
    bucket = d.data_dir / "buckets" / "audit-bucket"

    made = ct.create_trail(Name="audit", S3BucketName="audit-bucket", IsMultiRegionTrail=True)
    arn = f"arn:aws:cloudtrail:{REGION}:{ACCOUNT}:trail/audit"
    assert made["TrailARN"] == arn
    assert (made["Name"], made["S3BucketName"], made["IsMultiRegionTrail"]) == (
        "audit",
        "audit-bucket",
        True,
    )
    assert made["LogFileValidationEnabled"] is True
    described = {t["Name"]: t for t in ct.describe_trails()["trailList"]}
    assert set(described) == {"default", "audit"}
    assert described["audit"]["TrailARN"] == arn
    assert described["audit"]["HomeRegion"] == REGION
    assert {t["Name"] for t in ct.list_trails()["Trails"]} == {"default", "audit"}

    # the errors CloudTrail gives
    assert error_code(lambda: ct.create_trail(Name="audit", S3BucketName="x-bucket")) == (
        "TrailAlreadyExistsException"
    )
    assert error_code(lambda: ct.create_trail(Name="a", S3BucketName="x-bucket")) == (
        "InvalidTrailNameException"
    )
    assert error_code(lambda: ct.create_trail(Name="bad..name", S3BucketName="x-bucket")) == (
        "InvalidTrailNameException"
    )
    assert error_code(lambda: ct.create_trail(Name="other", S3BucketName="Bad_Bucket")) == (
        "InvalidS3BucketNameException"
    )
    assert error_code(
        lambda: ct.create_trail(Name="other", S3BucketName="x-bucket", S3KeyPrefix="p")
    ) == ("InvalidS3PrefixException")
    assert error_code(lambda: ct.get_trail(Name="nosuchtrail")) == "TrailNotFoundException"
    assert error_code(lambda: ct.delete_trail(Name="nosuchtrail")) == "TrailNotFoundException"
    bad = [{"Name": "x", "FieldSelectors": [{"Field": "nosuchfield", "Equals": ["1"]}]}]
    assert error_code(
        lambda: ct.put_event_selectors(TrailName="audit", AdvancedEventSelectors=bad)
    ) == ("InvalidEventSelectorsException")
    # config-file trails are reported, not changed
    for call in (
        lambda: ct.stop_logging(Name="default"),
        lambda: ct.delete_trail(Name="default"),
        lambda: ct.put_event_selectors(TrailName="default", AdvancedEventSelectors=WRITES_ONLY),
    ):
        assert error_code(call) == "OperationNotPermittedException"
    # a read key reads, and changes nothing
    reader = client(url, READER)
    assert {t["Name"] for t in reader.describe_trails()["trailList"]} == {"default", "audit"}
    for call in (
        lambda: reader.create_trail(Name="sneaky", S3BucketName="x-bucket"),
        lambda: reader.delete_trail(Name="audit"),
        lambda: reader.stop_logging(Name="audit"),
    ):
        assert error_code(call) == "AccessDeniedException"
    assert {t["Name"] for t in ct.list_trails()["Trails"]} == {"default", "audit"}
    assert ct.get_trail_status(Name="audit")["IsLogging"] is True

    # selectors take effect without a restart
    defaults = ct.get_event_selectors(TrailName="audit")
    assert defaults["EventSelectors"][0]["ReadWriteType"] == "All"
    put = ct.put_event_selectors(TrailName="audit", AdvancedEventSelectors=WRITES_ONLY)
    assert put["AdvancedEventSelectors"] == WRITES_ONLY
    got = ct.get_event_selectors(TrailName="audit")
    assert got["TrailARN"] == arn and got["AdvancedEventSelectors"] == WRITES_ONLY
    first = [event("RunInstances", False), event("DescribeInstances", True)]
    send(d, first)

    # StopLogging: what it holds is delivered with a final digest (in the background, as
    # CloudTrail's StopLogging answers at once); new events pass it by
    ct.stop_logging(Name="audit")
    status = ct.get_trail_status(Name="audit")
    assert status["IsLogging"] is False and "StopLoggingTime" in status
    wait_until(
        lambda: bool(list(bucket.rglob("*CloudTrail-Digest*.json.gz"))),
        what="the stopped trail's final digest",
    )
    assert [r["eventID"] for r in records(bucket)] == [first[0]["eventID"]]
    while_stopped = [event("TerminateInstances", False)]
    send(d, while_stopped)

    # insight selectors are stored and reported
    assert error_code(lambda: ct.get_insight_selectors(TrailName="audit")) == (
        "InsightNotEnabledException"
    )
    ct.put_insight_selectors(
        TrailName="audit", InsightSelectors=[{"InsightType": "ApiCallRateInsight"}]
    )
    assert ct.get_insight_selectors(TrailName="audit")["InsightSelectors"] == [
        {"InsightType": "ApiCallRateInsight"}
    ]
    assert ct.get_trail(Name=arn)["Trail"]["HasInsightSelectors"] is True

    # it persists across a restart, stopped, with its selectors
    assert d.stop() == 0
    d, url = start(daemon, data_dir=d.data_dir)
    ct = client(url)
    assert ct.get_trail_status(Name="audit")["IsLogging"] is False
    assert ct.get_event_selectors(TrailName="audit")["AdvancedEventSelectors"] == WRITES_ONLY
    ct.start_logging(Name="audit")
    assert ct.get_trail_status(Name="audit")["IsLogging"] is True
    second = [event("CreateUser", False), event("ListUsers", True)]
    send(d, second)

    # DeleteTrail delivers what is left, writes the final digest, and removes it everywhere
    digests = len(list(bucket.rglob("*CloudTrail-Digest*.json.gz")))
    ct.delete_trail(Name="audit")
    assert error_code(lambda: ct.get_trail(Name="audit")) == "TrailNotFoundException"
    assert {t["Name"] for t in ct.describe_trails()["trailList"]} == {"default"}
    wait_until(
        lambda: not (d.data_dir / "spool" / "audit").exists(),
        what="the deleted trail's spool to go",
    )
    assert len(list(bucket.rglob("*CloudTrail-Digest*.json.gz"))) > digests
    ids = [r["eventID"] for r in records(bucket)]
    assert sorted(ids) == sorted([first[0]["eventID"], second[0]["eventID"]])
    assert while_stopped[0]["eventID"] not in ids
    result = validate(d, bucket)
    assert result.returncode == 0, result.stdout + result.stderr
    # the default trail took everything all along
    assert d.stop() == 0
    everything = {r["eventID"] for r in records(d.bucket)}
    assert everything == {e["eventID"] for e in first + while_stopped + second}


def test_the_stock_aws_cli_manages_trails(
    daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    _, url = start(daemon)
    aws = stock_aws(
        tmp_path,
        {
            "AWS_ACCESS_KEY_ID": ADMIN[0],
            "AWS_SECRET_ACCESS_KEY": ADMIN[1],
            "AWS_ENDPOINT_URL_CLOUDTRAIL": url,
            "AWS_DEFAULT_REGION": REGION,
        },
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return aws("cloudtrail", *args, "--output", "json")

    made = run("create-trail", "--name", "cli-trail", "--s3-bucket-name", "cli-bucket")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["TrailARN"].endswith(":trail/cli-trail")
    again = run("create-trail", "--name", "cli-trail", "--s3-bucket-name", "cli-bucket")
    assert again.returncode != 0 and "TrailAlreadyExistsException" in again.stderr
    selectors = run(
        "put-event-selectors",
        "--trail-name",
        "cli-trail",
        "--advanced-event-selectors",
        json.dumps(WRITES_ONLY),
    )
    assert selectors.returncode == 0, selectors.stderr
    got = run("get-event-selectors", "--trail-name", "cli-trail")
    assert json.loads(got.stdout)["AdvancedEventSelectors"] == WRITES_ONLY
    updated = run("update-trail", "--name", "cli-trail", "--no-is-multi-region-trail")
    assert updated.returncode == 0, updated.stderr
    assert json.loads(updated.stdout)["IsMultiRegionTrail"] is False
    got_trail = json.loads(run("get-trail", "--name", "cli-trail").stdout)["Trail"]
    assert got_trail["IsMultiRegionTrail"] is False and got_trail["HasCustomEventSelectors"]
    listed = json.loads(run("list-trails").stdout)["Trails"]
    assert {t["Name"] for t in listed} == {"default", "cli-trail"}
    insights = run(
        "put-insight-selectors",
        "--trail-name",
        "cli-trail",
        "--insight-selectors",
        '[{"InsightType": "ApiErrorRateInsight"}]',
    )
    assert insights.returncode == 0, insights.stderr
    got_insights = json.loads(run("get-insight-selectors", "--trail-name", "cli-trail").stdout)
    assert got_insights["InsightSelectors"] == [{"InsightType": "ApiErrorRateInsight"}]
    assert run("stop-logging", "--name", "cli-trail").returncode == 0
    status = json.loads(run("get-trail-status", "--name", "cli-trail").stdout)
    assert status["IsLogging"] is False
    assert run("start-logging", "--name", "cli-trail").returncode == 0
    deleted = run("delete-trail", "--name", "cli-trail")
    assert deleted.returncode == 0, deleted.stderr
    trails = json.loads(run("describe-trails").stdout)["trailList"]
    assert [t["Name"] for t in trails] == ["default"]


def test_trailseal_trails_commands(daemon: Callable[..., DaemonProcess]) -> None:
    d, _ = start(daemon)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}

    def trails(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "trailseal.cli",
                "trails",
                "--config",
                str(d.config_path),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=env,
        )

    made = trails("create", "ops", "--s3-bucket-name", "ops-bucket", "--single-region")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["IsMultiRegionTrail"] is False
    listed = json.loads(trails("list", "--output", "json").stdout)["trailList"]
    assert {(t["Name"], t["IsLogging"]) for t in listed} == {("default", True), ("ops", True)}
    put = trails("selectors", "ops", "--set", json.dumps(WRITES_ONLY))
    assert put.returncode == 0, put.stderr
    got = json.loads(trails("selectors", "ops").stdout)
    assert got["AdvancedEventSelectors"] == WRITES_ONLY
    refused = trails("selectors", "ops", "--set", "[{]")
    assert refused.returncode == 2 and "--set: not JSON" in refused.stderr
    assert trails("stop", "ops").returncode == 0
    listed = json.loads(trails("list", "--output", "json").stdout)["trailList"]
    assert {(t["Name"], t["IsLogging"]) for t in listed} == {("default", True), ("ops", False)}
    assert trails("start", "ops").returncode == 0
    denied = trails("delete", "default")
    assert denied.returncode == 1
    assert "OperationNotPermittedException" in denied.stderr, denied.stderr
    assert "config file" in denied.stderr
    assert trails("delete", "ops").returncode == 0
    missing = trails("delete", "ops")
    assert missing.returncode == 1 and "TrailNotFoundException" in missing.stderr
