"""The trail read operations (trailseal.api.trails) on a real loaded config: DescribeTrails,
GetTrail, ListTrails, GetTrailStatus; CloudTrail's naming rules and exception names.

The handlers are called as the API front end calls them (a CallContext whose ``state`` carries
the Config); the wire protocol and the stock CLI are covered by test_aws_cli.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from trailseal import config as config_mod
from trailseal.api import trails
from trailseal.api.operations import OPERATIONS, CallContext, ServiceError

ACCOUNT = "123456789012"
REGION = "eu-test-1"


@pytest.fixture
def state(tmp_path: Path) -> SimpleNamespace:
    text = f"""
[daemon]
data_dir = "{tmp_path / "data"}"
account_id = "{ACCOUNT}"
region = "{REGION}"
host_id = "host-7"

[ingest]
unix_socket = ""
tcp_listen = ""

[api]
listen = ""

[trails.main]
destination = "s3://audit-bucket/fleet/{{host_id}}/logs"
s3_endpoint_url = "http://127.0.0.1:9"
compression = "gzip"
sse = "aws:kms"
kms_key_id = "alias/trail"

[trails."local.trail"]
destination = "file://{tmp_path / "my-bucket"}"
multi_region = false
organization_id = "o-abc123def4"
event_selectors = [{{ ReadWriteType = "WriteOnly", IncludeManagementEvents = true }}]
"""
    path = tmp_path / "trailseal.toml"
    path.write_text(text)
    return SimpleNamespace(config=config_mod.load(path))


def call(state: Any, op: str, params: dict[str, Any]) -> dict[str, Any]:
    ctx = CallContext(access_key_id="AKIATEST", role="read", request_id="r-1", state=state)
    handler = OPERATIONS[op].handler

    async def run() -> dict[str, Any]:
        return await handler(ctx, params)

    result: dict[str, Any] = trio.run(run)
    # what the front end sends must be JSON
    json.dumps(result)
    return result


def error_of(state: Any, op: str, params: dict[str, Any]) -> str:
    with pytest.raises(ServiceError) as info:
        call(state, op, params)
    return info.value.code


ARN_MAIN = f"arn:aws:cloudtrail:{REGION}:{ACCOUNT}:trail/main"
ARN_LOCAL = f"arn:aws:cloudtrail:{REGION}:{ACCOUNT}:trail/local.trail"


def test_registered_as_read_operations() -> None:
    for op in ("DescribeTrails", "GetTrail", "ListTrails", "GetTrailStatus"):
        assert OPERATIONS[op].write is False, op


def test_describe_trails_fields(state: Any) -> None:
    got = call(state, "DescribeTrails", {})["trailList"]
    assert got == [
        {
            "Name": "local.trail",
            "S3BucketName": "my-bucket",
            "IncludeGlobalServiceEvents": True,
            "IsMultiRegionTrail": False,
            "HomeRegion": REGION,
            "TrailARN": ARN_LOCAL,
            "LogFileValidationEnabled": True,
            "HasCustomEventSelectors": True,
            "HasInsightSelectors": False,
            "IsOrganizationTrail": True,
        },
        {
            "Name": "main",
            "S3BucketName": "audit-bucket",
            "S3KeyPrefix": "fleet/host-7/logs",
            "IncludeGlobalServiceEvents": True,
            "IsMultiRegionTrail": True,
            "HomeRegion": REGION,
            "TrailARN": ARN_MAIN,
            "LogFileValidationEnabled": True,
            "HasCustomEventSelectors": False,
            "HasInsightSelectors": False,
            "IsOrganizationTrail": False,
            "KmsKeyId": "alias/trail",
        },
    ]


def test_describe_trails_by_name_and_arn(state: Any) -> None:
    def names(params: dict[str, Any]) -> list[str]:
        return [t["Name"] for t in call(state, "DescribeTrails", params)["trailList"]]

    assert names({"trailNameList": ["main"]}) == ["main"]
    assert names({"trailNameList": [ARN_LOCAL], "includeShadowTrails": False}) == ["local.trail"]
    assert names({"trailNameList": ["main", ARN_MAIN]}) == ["main"]
    # unknown names and ARNs of other accounts or regions are left out, as CloudTrail does
    other_account = ARN_MAIN.replace(ACCOUNT, "999999999999")
    other_region = ARN_MAIN.replace(REGION, "us-east-1")
    assert names({"trailNameList": ["nope", other_account, other_region]}) == []
    assert error_of(state, "DescribeTrails", {"trailNameList": ["-bad"]}) == (
        "InvalidTrailNameException"
    )
    assert error_of(state, "DescribeTrails", {"trailNameList": ["arn:aws:s3:::bucket"]}) == (
        "CloudTrailARNInvalidException"
    )


def test_get_trail(state: Any) -> None:
    by_name = call(state, "GetTrail", {"Name": "main"})["Trail"]
    by_arn = call(state, "GetTrail", {"Name": ARN_MAIN})["Trail"]
    assert by_name == by_arn
    assert by_name["TrailARN"] == ARN_MAIN
    assert by_name["S3KeyPrefix"] == "fleet/host-7/logs"
    assert error_of(state, "GetTrail", {"Name": "absent"}) == "TrailNotFoundException"
    assert error_of(state, "GetTrail", {"Name": ARN_MAIN.replace(REGION, "us-west-2")}) == (
        "TrailNotFoundException"
    )


def test_list_trails(state: Any) -> None:
    assert call(state, "ListTrails", {}) == {
        "Trails": [
            {"TrailARN": ARN_LOCAL, "Name": "local.trail", "HomeRegion": REGION},
            {"TrailARN": ARN_MAIN, "Name": "main", "HomeRegion": REGION},
        ]
    }


def test_get_trail_status(state: Any, tmp_path: Path) -> None:
    status = call(state, "GetTrailStatus", {"Name": "main"})
    assert status["IsLogging"] is True
    assert isinstance(status["StartLoggingTime"], int)
    assert "LatestDigestDeliveryTime" not in status  # nothing delivered yet
    state_dir = tmp_path / "data" / "state" / "main"
    state_dir.mkdir(parents=True)
    last = {"key": "k", "bucket": "b", "sha256": "0", "signature": "0"}
    (state_dir / "digests.json").write_text(
        json.dumps(
            {
                "streams": {
                    f"{ACCOUNT}/{REGION}": {"last": {**last, "end": "2026-01-02T03:04:05Z"}},
                    f"{ACCOUNT}/us-east-1": {"last": {**last, "end": "2026-01-02T03:04:09Z"}},
                    f"{ACCOUNT}/us-west-2": {"last": None},
                }
            }
        )
    )
    status = call(state, "GetTrailStatus", {"Name": ARN_MAIN})
    assert status["LatestDigestDeliveryTime"] == 1767323049
    assert error_of(state, "GetTrailStatus", {"Name": "absent"}) == "TrailNotFoundException"
    assert error_of(state, "GetTrailStatus", {}) == "InvalidTrailNameException"


@pytest.mark.parametrize(
    "name",
    [
        "ab",
        "a" * 129,
        "-abc",
        "abc-",
        "_abc",
        "abc.",
        "my--trail",
        "my-_trail",
        "my._trail",
        "a..b",
        "has space",
        "slash/name",
        "ünicode",
        "192.168.5.4",
    ],
)
def test_invalid_names(state: Any, name: str) -> None:
    assert error_of(state, "GetTrail", {"Name": name}) == "InvalidTrailNameException"


@pytest.mark.parametrize("name", ["abc", "a" * 128, "My.Trail_2-x", "1st", "192.168.5"])
def test_valid_names(name: str) -> None:
    assert trails.trail_name_problem(name) is None


@pytest.mark.parametrize(
    "arn",
    [
        "arn:aws:cloudtrail:eu-test-1:123456789012:trail/",
        "arn:aws:cloudtrail:eu-test-1:1234:trail/main",
        "arn:aws:cloudtrail:eu-test-1:123456789012:eventdatastore/main",
        "arn:aws:cloudtrail:eu-test-1:123456789012:trail/-bad",
    ],
)
def test_invalid_arns(state: Any, arn: str) -> None:
    assert error_of(state, "GetTrail", {"Name": arn}) == "CloudTrailARNInvalidException"
