"""Event selectors: the shared vectors through the built module, a cross-check of the Rust core
against the independent Python reading in ``selectors_ref``, and config load.

tests/vectors/selectors.json is also run by ``cargo test`` (rust/trailseal-core/tests/
selector_vectors.rs). Each case is ``{"name", "doc", "selectors", "event", "matches"}`` or
``{"name", "doc", "selectors", "error_contains"}``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

import selectors_ref
from trailseal import _core, config
from trailseal.errors import ConfigError

VECTORS = Path(__file__).parent / "vectors" / "selectors.json"
CASES: list[dict[str, Any]] = json.loads(VECTORS.read_text())
MATCH_CASES = [c for c in CASES if "matches" in c]
ERROR_CASES = [c for c in CASES if "error_contains" in c]


def test_table_size() -> None:
    assert len(MATCH_CASES) >= 40
    assert len(ERROR_CASES) >= 10
    assert len({c["name"] for c in CASES}) == len(CASES), "case names are unique"
    assert {c["matches"] for c in MATCH_CASES} == {True, False}


@pytest.mark.parametrize("case", MATCH_CASES, ids=[c["name"] for c in MATCH_CASES])
def test_vector_matches(case: dict[str, Any]) -> None:
    selectors = json.dumps(case["selectors"])
    _core.check_selectors(selectors)
    event = json.dumps(case["event"]).encode()
    assert _core.selector_matches(selectors, event) is case["matches"]
    assert selectors_ref.logged(case["selectors"], case["event"]) is case["matches"]


@pytest.mark.parametrize("case", ERROR_CASES, ids=[c["name"] for c in ERROR_CASES])
def test_vector_refused(case: dict[str, Any]) -> None:
    with pytest.raises(ValueError) as info:
        _core.check_selectors(json.dumps(case["selectors"]))
    assert case["error_contains"] in str(info.value)


# ---------------------------------------------------------------------------------------------
# Cross-check on generated events: every accepted selector set of the table, against events
# drawn from the values the table uses (so that both matches and misses are common).

_SOURCES = [
    "ec2.amazonaws.com",
    "kms.amazonaws.com",
    "rdsdata.amazonaws.com",
    "iam.amazonaws.com",
    "s3.amazonaws.com",
    "lambda.amazonaws.com",
    "dynamodb.amazonaws.com",
    "signin.amazonaws.com",
]
_NAMES = [
    "RunInstances",
    "StopInstances",
    "DescribeInstances",
    "GetConsoleOutput",
    "CreateTags",
    "CreateVolume",
    "TerminateInstances",
    "Decrypt",
    "GetObject",
    "PutObject",
    "DeleteObject",
    "Invoke",
    "GetItem",
    "ConsoleLogin",
]
_TYPES = ["AwsApiCall", "AwsServiceEvent", "AwsConsoleSignIn", "AwsConsoleAction"]
_CATEGORIES = ["Management", "Management", "Data", "Data", "NetworkActivity", "Insight"]
_RESOURCES = [
    ("AWS::S3::Object", "arn:aws:s3:::amzn-s3-demo-bucket1/example-images/cat.jpg"),
    ("AWS::S3::Object", "arn:aws:s3:::amzn-s3-demo-bucket1/docs/readme.txt"),
    ("AWS::S3::Object", "arn:aws:s3:::amzn-s3-demo-bucket2/example-images/dog.png"),
    ("AWS::S3::Object", "arn:aws:s3:::amzn-s3-demo-bucket10/x"),
    ("AWS::S3::Bucket", "arn:aws:s3:::amzn-s3-demo-bucket1"),
    ("AWS::Lambda::Function", "arn:aws:lambda:us-west-2:111111111111:function:helloworld"),
    ("AWS::Lambda::Function", "arn:aws:lambda:us-west-2:111111111111:function:helloworld2"),
    ("AWS::DynamoDB::Table", "arn:aws:dynamodb:us-east-1:111122223333:table/Orders"),
    ("AWS::DynamoDB::Table", "arn:aws:dynamodb:us-east-1:111122223333:table/OrdersArchive"),
]
_CALLERS = [
    "arn:aws:sts::111122223333:assumed-role/Admin/alice",
    "arn:aws:sts::111122223333:assumed-role/ReadOnly/bob",
    "arn:aws:iam::111122223333:user/bob",
]


def _random_event(rng: random.Random) -> dict[str, Any]:
    event: dict[str, Any] = {
        "awsRegion": "us-east-1",
        "eventCategory": rng.choice(_CATEGORIES),
        "eventID": f"00000000-0000-4000-8000-{rng.getrandbits(48):012x}",
        "eventName": rng.choice(_NAMES),
        "eventSource": rng.choice(_SOURCES),
        "eventTime": "2026-01-01T00:00:00Z",
        "eventType": rng.choice(_TYPES),
        "eventVersion": "1.11",
        "readOnly": rng.random() < 0.5,
        "recipientAccountId": "111122223333",
        "requestParameters": None,
        "responseElements": None,
    }
    event["managementEvent"] = event["eventCategory"] == "Management"
    if rng.random() < 0.7:
        picked = rng.sample(_RESOURCES, rng.randint(0, 3))
        event["resources"] = [
            {"ARN": arn, "accountId": "111122223333", "type": kind} for kind, arn in picked
        ]
    if rng.random() < 0.6:
        event["userIdentity"] = {"type": "AssumedRole", "arn": rng.choice(_CALLERS)}
    if rng.random() < 0.3:
        event["errorCode"] = rng.choice(["VpceAccessDenied", "AccessDenied"])
    if rng.random() < 0.3:
        event["sessionCredentialFromConsole"] = "true"
    if rng.random() < 0.3:
        event["vpcEndpointId"] = "vpce-0123456789abcdef0"
    return event


def test_core_agrees_with_reference_on_generated_events() -> None:
    """Every accepted selector set of the table against the same 3000 seeded random events."""
    rng = random.Random(20260101)
    selector_sets = sorted({json.dumps(c["selectors"], sort_keys=True) for c in MATCH_CASES})
    events = [(e, json.dumps(e).encode()) for e in (_random_event(rng) for _ in range(3000))]
    logged = 0
    disagreements = []
    for text in selector_sets:
        selectors = json.loads(text)
        for event, encoded in events:
            expected = selectors_ref.logged(selectors, event)
            logged += expected
            if _core.selector_matches(text, encoded) is not expected:
                disagreements.append((text, event, expected))
    assert not disagreements, f"{len(disagreements)} disagreements, e.g. {disagreements[:2]}"
    assert 0 < logged < len(selector_sets) * len(events), "generated events both match and miss"


# ---------------------------------------------------------------------------------------------
# Config load


def _load(tmp_path: Path, trail_body: str) -> config.Config:
    path = tmp_path / "trailseal.toml"
    path.write_text(f'[daemon]\ndata_dir = "{tmp_path}/data"\n\n[trails.audit]\n{trail_body}')
    return config.load(path)


def test_config_without_selectors_is_default(tmp_path: Path) -> None:
    assert _load(tmp_path, "").trails["audit"].selectors_json == "{}"


def test_config_keeps_basic_selectors(tmp_path: Path) -> None:
    trail = _load(
        tmp_path,
        'event_selectors = [{ ReadWriteType = "WriteOnly", IncludeManagementEvents = true, '
        'DataResources = [{ Type = "AWS::S3::Object", Values = ["arn:aws:s3:::logs/"] }] }]\n',
    ).trails["audit"]
    parsed = json.loads(trail.selectors_json)
    assert parsed["event_selectors"][0]["ReadWriteType"] == "WriteOnly"
    write = MATCH_CASES[5]["event"]  # "WriteOnly logs RunInstances"
    assert MATCH_CASES[5]["name"] == "WriteOnly logs RunInstances"
    assert _core.selector_matches(trail.selectors_json, json.dumps(write).encode())


def test_config_keeps_advanced_selectors(tmp_path: Path) -> None:
    trail = _load(
        tmp_path,
        "advanced_event_selectors = [\n"
        '  { Name = "writes", FieldSelectors = [\n'
        '    { Field = "eventCategory", Equals = ["Management"] },\n'
        '    { Field = "readOnly", Equals = ["false"] } ] },\n'
        "]\n",
    ).trails["audit"]
    assert json.loads(trail.selectors_json)["advanced_event_selectors"][0]["Name"] == "writes"


@pytest.mark.parametrize(
    ("body", "key", "reason"),
    [
        (
            'event_selectors = [{ ReadWriteType = "read-only" }]\n',
            "event_selectors",
            "event_selectors[0].ReadWriteType",
        ),
        (
            'advanced_event_selectors = [{ FieldSelectors = [{ Field = "eventName", '
            'Equals = ["RunInstances"] }] }]\n',
            "advanced_event_selectors",
            "no eventCategory field selector",
        ),
        (
            'event_selectors = [{ ReadWriteType = "All" }]\nadvanced_event_selectors = [{ '
            'FieldSelectors = [{ Field = "eventCategory", Equals = ["Management"] }] }]\n',
            "event_selectors",
            "not both",
        ),
        ('event_selectors = "all"\n', "event_selectors", "expected an array"),
    ],
)
def test_config_refuses_what_cloudtrail_refuses(
    tmp_path: Path, body: str, key: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, body)
    message = str(info.value)
    assert str(tmp_path / "trailseal.toml") in message
    assert f"[trails.audit] {key}:" in message
    assert reason in message


EXAMPLE = Path(__file__).parent.parent / "packaging" / "trailseal.example.toml"


@pytest.mark.parametrize("key", ["event_selectors", "advanced_event_selectors"])
def test_example_config_selectors_load(tmp_path: Path, key: str) -> None:
    """The commented selector examples of the shipped config load once uncommented."""
    lines = EXAMPLE.read_text().splitlines()
    start = lines.index(next(line for line in lines if line.startswith(f"# {key} = [")))
    end = lines.index("# ]", start) + 1
    block = [line[2:] for line in lines[start:end]]
    path = tmp_path / "example.toml"
    path.write_text("\n".join(lines[:start] + block) + "\n")
    selectors = json.loads(config.load(path).trails["default"].selectors_json)
    assert list(selectors) == [key]
