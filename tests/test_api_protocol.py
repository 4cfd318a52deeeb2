"""The AWS JSON 1.1 front end (:mod:`trailseal.api.cloudtrail`), ListPublicKeys and the client
side (:mod:`trailseal.api.connect`, ``trailseal api credentials``).

The front end's dispatch rules are tested in-process on the real handler with signed requests
(operations registered for the test: a write operation, one that fails); ListPublicKeys and the
client side against the real daemon.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import botocore.auth
import pytest
import trio
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import serialization

from conftest import DaemonProcess, free_tcp_port
from trailseal import config as config_mod
from trailseal.api import operations
from trailseal.api.access_keys import AccessKey, AccessKeys
from trailseal.api.cloudtrail import TARGET_PREFIX, ApiState, CloudTrailApi
from trailseal.api.connect import cloudtrail_client
from trailseal.api.operations import CallContext, ServiceError
from trailseal.api.server import Request, Response
from trailseal.delivery.signer import Signer

ADMIN = AccessKey("AKIAPROTOADMIN000001", "admin-secret-abcdefgh", "admin")
READER = AccessKey("AKIAPROTOREAD0000001", "read-secret-abcdefgh", "read")


# ---------------------------------------------------------------------------------------------
# In-process: the handler itself


@pytest.fixture
def api(tmp_path: Path) -> Iterator[CloudTrailApi]:
    config_path = tmp_path / "trailseal.toml"
    config_path.write_text(f'[daemon]\ndata_dir = "{tmp_path / "data"}"\n')
    config = config_mod.load(config_path)
    state = ApiState(
        config=config,
        signer=Signer.load_or_create(tmp_path / "data" / "keys"),
        data_dir=config.daemon.data_dir,
        destinations={},
        access_keys=AccessKeys({k.access_key_id: k for k in (ADMIN, READER)}),
    )
    calls: list[str] = []

    async def write_op(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        calls.append(ctx.access_key_id)
        return {"Blob": b"\x00\xff", "When": datetime(2026, 1, 2, tzinfo=UTC), "Echo": params}

    async def failing_op(ctx: CallContext, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("Kind") == "service":
            raise ServiceError("TrailNotFoundException", "no such trail", status=404)
        raise RuntimeError("boom")

    added = {"TestWriteThing": (write_op, True), "TestFailing": (failing_op, False)}
    front = CloudTrailApi(state)
    for name, (handler, write) in added.items():
        operations.operation(name, write=write)(handler)
    front.calls = calls  # type: ignore[attr-defined]
    try:
        yield front
    finally:
        for name in added:
            operations.OPERATIONS.pop(name, None)


def call(
    api: CloudTrailApi,
    target: str | None,
    body: bytes = b"{}",
    key: AccessKey = ADMIN,
) -> tuple[Response, dict[str, Any]]:
    headers = {"Content-Type": "application/x-amz-json-1.1"}
    if target is not None:
        headers["X-Amz-Target"] = target if "." in target else TARGET_PREFIX + target
    aws = AWSRequest(method="POST", url="http://127.0.0.1:7708/", data=body, headers=headers)
    botocore.auth.SigV4Auth(
        Credentials(key.access_key_id, key.secret_access_key), "cloudtrail", "us-west-2"
    ).add_auth(aws)
    lower = {k.lower(): v for k, v in aws.headers.items()} | {"host": "127.0.0.1:7708"}
    request = Request("POST", "/", "", lower, body, "tcp:127.0.0.1:1")
    response = trio.run(api.handle, request)
    return response, json.loads(response.body)


def test_dispatch_and_encoding(api: CloudTrailApi) -> None:
    response, doc = call(api, "TestWriteThing", b'{"A": [1, "x"]}')
    assert response.status == 200
    assert response.content_type == "application/x-amz-json-1.1"
    assert uuid.UUID(response.headers["x-amzn-RequestId"]).version == 4
    assert doc == {"Blob": "AP8=", "When": 1767312000.0, "Echo": {"A": [1, "x"]}}
    response, doc = call(api, "TestWriteThing", b"")  # an empty body is {}
    assert (response.status, doc["Echo"]) == (200, {})


def test_read_key_is_denied_write_operations(api: CloudTrailApi) -> None:
    response, doc = call(api, "TestWriteThing", key=READER)
    assert (response.status, doc["__type"]) == (400, "AccessDeniedException")
    assert api.calls == []  # type: ignore[attr-defined]
    response, _ = call(api, "ListPublicKeys", key=READER)
    assert response.status == 200
    call(api, "TestWriteThing", key=ADMIN)
    assert api.calls == [ADMIN.access_key_id]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("target", "body", "status", "code"),
    [
        ("DescribeNothing", b"{}", 400, "UnknownOperationException"),
        (None, b"{}", 400, "UnknownOperationException"),
        ("com.amazonaws.other.Service.ListPublicKeys", b"{}", 400, "UnknownOperationException"),
        ("ListPublicKeys", b"[1, 2]", 400, "SerializationException"),
        ("ListPublicKeys", b"{not json", 400, "SerializationException"),
        ("ListPublicKeys", b'{"StartTime": "yesterday"}', 400, "SerializationException"),
        ("ListPublicKeys", b'{"StartTime": 20, "EndTime": 10}', 400, "InvalidTimeRangeException"),
        ("TestFailing", b'{"Kind": "service"}', 404, "TrailNotFoundException"),
        ("TestFailing", b"{}", 500, "InternalFailure"),
    ],
)
def test_errors(
    api: CloudTrailApi, target: str | None, body: bytes, status: int, code: str
) -> None:
    response, doc = call(api, target, body)
    assert (response.status, doc["__type"]) == (status, code)
    assert doc["message"]
    assert response.headers["x-amzn-RequestId"]


# ---------------------------------------------------------------------------------------------
# Against the daemon


def api_daemon(daemon: Callable[..., DaemonProcess]) -> tuple[DaemonProcess, str]:
    port = free_tcp_port()
    return daemon(api={"listen": f"127.0.0.1:{port}"}), f"http://127.0.0.1:{port}"


def test_list_public_keys(daemon: Callable[..., DaemonProcess]) -> None:
    d, _ = api_daemon(daemon)
    cloudtrail = cloudtrail_client(d.config_path)
    before = time.time()
    keys = cloudtrail.list_public_keys()["PublicKeyList"]
    assert len(keys) == 1
    key = keys[0]
    der = key["Value"]  # boto3 decodes the blob
    assert hashlib.md5(der, usedforsecurity=False).hexdigest() == key["Fingerprint"]
    pem = (d.data_dir / "keys" / "public" / f"{key['Fingerprint']}.pem").read_bytes()
    public = serialization.load_pem_public_key(pem)
    assert der == public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    start, end = key["ValidityStartTime"].timestamp(), key["ValidityEndTime"].timestamp()
    assert start <= before + 1 and end >= before - 1
    # ranges: overlapping, in the past before the key, the key in use for any later range
    assert cloudtrail.list_public_keys(StartTime=start - 60, EndTime=start + 60)["PublicKeyList"]
    past = cloudtrail.list_public_keys(StartTime=start - 7200, EndTime=start - 3600)
    assert past["PublicKeyList"] == []
    later = cloudtrail.list_public_keys(StartTime=time.time() + 3600)["PublicKeyList"]
    assert [k["Fingerprint"] for k in later] == [key["Fingerprint"]]
    with pytest.raises(ClientError) as info:
        cloudtrail.list_public_keys(StartTime=start + 10, EndTime=start)
    assert info.value.response["Error"]["Code"] == "InvalidTimeRangeException"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_client_side_and_credentials_command(
    daemon: Callable[..., DaemonProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    d, url = api_daemon(daemon)
    generated = json.loads((d.data_dir / "api" / "access-key.json").read_text())
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_CLOUDTRAIL"):
        monkeypatch.delenv(name, raising=False)
    out = subprocess.run(
        [sys.executable, "-m", "trailseal.cli", "api", "credentials", "--config", d.config_path],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    exported = dict(
        shlex.split(line.removeprefix("export "))[0].split("=", 1)
        for line in out.stdout.splitlines()
    )
    assert exported["AWS_ACCESS_KEY_ID"] == generated["access_key_id"]
    assert exported["AWS_SECRET_ACCESS_KEY"] == generated["secret_access_key"]
    assert exported["AWS_ENDPOINT_URL_CLOUDTRAIL"] == url
    # the environment's endpoint and credentials take precedence over the config
    monkeypatch.setenv("AWS_ENDPOINT_URL_CLOUDTRAIL", url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", generated["access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(ClientError) as info:
        cloudtrail_client(None).list_public_keys()
    assert info.value.response["Error"]["Code"] == "InvalidSignatureException"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", exported["AWS_SECRET_ACCESS_KEY"])
    assert cloudtrail_client(None).list_public_keys()["PublicKeyList"]
    plain = boto3.client(
        "cloudtrail",
        endpoint_url=url,
        region_name="ap-south-1",
        aws_access_key_id=exported["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=exported["AWS_SECRET_ACCESS_KEY"],
    )
    assert plain.list_public_keys()["PublicKeyList"]
