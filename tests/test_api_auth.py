"""SigV4 verification and access keys.

Unit tests of :mod:`trailseal.api.sigv4` (no sockets): requests signed by botocore's own
``SigV4Auth`` verify, and each mutation fails with AWS's error code. Then the daemon: boto3's
``cloudtrail`` client with a configured key and with the generated key, raw signed requests
that must be refused (status and ``__type``), and a read key refused a write operation.
"""

from __future__ import annotations

import http.client
import json
import stat
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import boto3
import botocore.auth
import pytest
from botocore.awsrequest import AWSRequest
from botocore.config import Config as BotoConfig
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from conftest import DaemonProcess, free_tcp_port, stock_aws
from trailseal.api import operations, sigv4
from trailseal.api.cloudtrail import TARGET_PREFIX

KEY_ID = "AKIATESTADMIN0000001"
SECRET = "admin-secret-0123456789"
READ_ID = "AKIATESTREAD00000001"
READ_SECRET = "read-secret-0123456789"
SECRETS = {KEY_ID: SECRET, READ_ID: READ_SECRET}


def signed(
    body: bytes = b"{}",
    *,
    key_id: str = KEY_ID,
    secret: str = SECRET,
    url: str = "http://127.0.0.1:7708/",
    target: str = "ListPublicKeys",
    when: datetime | None = None,
    region: str = "us-east-1",
    service: str = "cloudtrail",
) -> AWSRequest:
    """A request signed by botocore (with a frozen clock when ``when`` is given)."""
    request = AWSRequest(
        method="POST",
        url=url,
        data=body,
        headers={
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": TARGET_PREFIX + target,
        },
    )
    signer = botocore.auth.SigV4Auth(Credentials(key_id, secret), service, region)
    if when is None:
        signer.add_auth(request)
    else:
        with mock.patch.object(botocore.auth, "get_current_datetime", return_value=when):
            signer.add_auth(request)
    return request


def verify(request: AWSRequest, *, now: datetime | None = None, body: bytes | None = None) -> str:
    path, _, query = request.url.split("/", 3)[3].partition("?")
    headers = {k.lower(): v for k, v in request.headers.items()}
    headers.setdefault("host", request.url.split("/")[2])
    return sigv4.verify(
        method=request.method,
        path="/" + path,
        query=query,
        headers=headers,
        body=request.body if body is None else body,
        secrets=SECRETS,
        now=now or datetime.now(UTC),
    )


def refused(call: Callable[[], object]) -> sigv4.SignatureError:
    with pytest.raises(sigv4.SignatureError) as info:
        call()
    assert info.value.status == 403
    return info.value


# ---------------------------------------------------------------------------------------------
# sans-IO


def test_botocore_signed_requests_verify() -> None:
    assert verify(signed()) == KEY_ID
    assert verify(signed(b'{"StartTime": 1}', region="eu-west-3")) == KEY_ID
    assert verify(signed(url="http://127.0.0.1:7708/?b=2&a=1%20x")) == KEY_ID
    assert verify(signed(key_id=READ_ID, secret=READ_SECRET)) == READ_ID


def test_mutations_fail_with_the_right_code() -> None:
    request = signed(b'{"StartTime": 1}')
    assert refused(lambda: verify(request, body=b'{"StartTime": 2}')).code == (
        "InvalidSignatureException"
    )
    wrong = signed(secret="not-the-secret")
    error = refused(lambda: verify(wrong))
    assert error.code == "InvalidSignatureException"
    assert "signature we calculated does not match" in error.message

    for header, value in [("X-Amz-Target", TARGET_PREFIX + "DeleteTrail"), ("Host", "evil:1")]:
        tampered = signed()
        if header in tampered.headers:
            tampered.headers.replace_header(header, value)
        else:
            tampered.headers[header] = value
        assert refused(lambda r=tampered: verify(r)).code == "InvalidSignatureException", header

    moved = signed()
    moved.url = "http://127.0.0.1:7708/other"
    assert refused(lambda: verify(moved)).code == "InvalidSignatureException"

    unknown = signed(key_id="AKIANOBODY0000000000")
    assert refused(lambda: verify(unknown)).code == "UnrecognizedClientException"

    # the body hash is recomputed, never taken from x-amz-content-sha256
    claimed = signed(b'{"a": 1}')
    claimed.headers["X-Amz-Content-SHA256"] = "0" * 64
    assert verify(claimed) == KEY_ID


def test_dates() -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    old = signed(when=now - timedelta(minutes=20))
    error = refused(lambda: verify(old, now=now))
    assert error.code == "InvalidSignatureException"
    assert error.message.startswith("Signature expired: ")
    future = signed(when=now + timedelta(minutes=20))
    assert refused(lambda: verify(future, now=now)).code == "InvalidSignatureException"
    # within 15 minutes either way: accepted
    assert verify(signed(when=now - timedelta(minutes=14)), now=now) == KEY_ID
    assert verify(signed(when=now + timedelta(minutes=14)), now=now) == KEY_ID


def test_missing_and_malformed_headers() -> None:
    bare = AWSRequest(method="POST", url="http://127.0.0.1:7708/", data=b"{}")
    assert refused(lambda: verify(bare)).code == "MissingAuthenticationTokenException"
    for value in [
        "AWS4-HMAC-SHA256 Credential=x",
        "Basic dXNlcjpwYXNz",
        f"AWS4-HMAC-SHA256 Credential={KEY_ID}/20260101/us-east-1/s3/aws4_request, "
        f"SignedHeaders=host;x-amz-date, Signature={'0' * 64}",
        f"AWS4-HMAC-SHA256 Credential={KEY_ID}/20260101/us-east-1/cloudtrail/aws4_request, "
        f"SignedHeaders=content-type;x-amz-date, Signature={'0' * 64}",
    ]:
        request = signed()
        request.headers.replace_header("Authorization", value)
        assert refused(lambda r=request: verify(r)).code == "IncompleteSignatureException", value


# ---------------------------------------------------------------------------------------------
# Against the daemon


def api_daemon(daemon: Callable[..., DaemonProcess], **extra: Any) -> tuple[DaemonProcess, str]:
    port = free_tcp_port()
    d = daemon(api={"listen": f"127.0.0.1:{port}", **extra})
    return d, f"http://127.0.0.1:{port}"


KEYS = {
    KEY_ID: {"secret": SECRET, "role": "admin"},
    READ_ID: {"secret": READ_SECRET, "role": "read"},
}


def client(url: str, key_id: str, secret: str) -> Any:
    return boto3.client(
        "cloudtrail",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=BotoConfig(retries={"max_attempts": 1}),
    )


def post(url: str, request: AWSRequest) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Send ``request`` as it is (its ``data``, which may differ from what was signed)."""
    host = url.split("//")[1]
    conn = http.client.HTTPConnection(host, timeout=30)
    try:
        conn.request("POST", "/", body=request.data, headers=dict(request.headers.items()))
        response = conn.getresponse()
        body = json.loads(response.read())
        return response.status, body, {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


def unsigned(body: bytes = b"{}") -> AWSRequest:
    return AWSRequest(
        method="POST",
        url="http://127.0.0.1/",
        data=body,
        headers={
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": TARGET_PREFIX + "ListPublicKeys",
        },
    )


def fingerprints(d: DaemonProcess) -> list[str]:
    return sorted(p.stem for p in (d.data_dir / "keys" / "public").glob("*.pem"))


def test_boto3_with_configured_keys_and_raw_refusals(
    daemon: Callable[..., DaemonProcess],
) -> None:
    d, url = api_daemon(daemon, access_keys=KEYS)
    for key_id, secret in [(KEY_ID, SECRET), (READ_ID, READ_SECRET)]:
        keys = client(url, key_id, secret).list_public_keys()["PublicKeyList"]
        assert [k["Fingerprint"] for k in keys] == fingerprints(d)
    # a configured key set replaces the generated key
    assert not (d.data_dir / "api" / "access-key.json").exists()

    now = datetime.now(UTC)
    body = b'{"StartTime": 1}'
    tampered = signed(body, url=url + "/")
    tampered.data = b'{"StartTime": 2}'  # signed, then changed on the way
    cases = [
        ("no signature", unsigned(), "MissingAuthenticationTokenException"),
        ("wrong secret", signed(secret="wrong", url=url + "/"), "InvalidSignatureException"),
        ("tampered body", tampered, "InvalidSignatureException"),
        ("unknown key", signed(key_id="AKIAUNKNOWN000000000"), "UnrecognizedClientException"),
        ("20 minutes old", signed(when=now - timedelta(minutes=20)), "InvalidSignatureException"),
    ]
    for what, request, code in cases:
        status, doc, headers = post(url, request)
        assert (status, doc["__type"]) == (403, code), (what, doc)
        assert headers["content-type"] == "application/x-amz-json-1.1"
        assert headers["x-amzn-requestid"], what
    status, doc, _ = post(url, signed(url=url + "/"))
    assert status == 200 and [k["Fingerprint"] for k in doc["PublicKeyList"]] == fingerprints(d)


def test_generated_key(daemon: Callable[..., DaemonProcess]) -> None:
    d, url = api_daemon(daemon)
    path = d.data_dir / "api" / "access-key.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert str(path) in d.stderr()
    doc = json.loads(path.read_text())
    assert doc["role"] == "admin"
    cloudtrail = client(url, doc["access_key_id"], doc["secret_access_key"])
    assert [k["Fingerprint"] for k in cloudtrail.list_public_keys()["PublicKeyList"]] == (
        fingerprints(d)
    )
    with pytest.raises(ClientError) as info:
        client(url, doc["access_key_id"], "not-the-secret").list_public_keys()
    assert info.value.response["Error"]["Code"] == "InvalidSignatureException"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    # reused on later starts
    text = path.read_text()
    assert d.stop() == 0
    again = daemon(data_dir=d.data_dir, api={"listen": url.removeprefix("http://")})
    assert path.read_text() == text
    assert client(url, doc["access_key_id"], doc["secret_access_key"]).list_public_keys()
    assert again.stop() == 0


def test_read_key_cannot_write(daemon: Callable[..., DaemonProcess]) -> None:
    """A read key calling a write operation gets AccessDeniedException and nothing happens.
    Needs a write operation (the trail operations): skipped until they are registered."""
    from trailseal.api.cloudtrail import load_operations

    load_operations()
    if "CreateTrail" not in operations.OPERATIONS:
        pytest.skip("CreateTrail is not registered yet (trailseal.api.trails has not landed)")
    _, url = api_daemon(daemon, access_keys=KEYS)
    reader = client(url, READ_ID, READ_SECRET)
    with pytest.raises(ClientError) as info:
        reader.create_trail(Name="refused", S3BucketName="bucket")
    assert info.value.response["Error"]["Code"] == "AccessDeniedException"
    trails = client(url, KEY_ID, SECRET).describe_trails()["trailList"]
    assert "refused" not in [t["Name"] for t in trails]
    assert reader.describe_trails()["trailList"] == trails


def test_stock_aws_cli(daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    d, url = api_daemon(daemon, access_keys=KEYS)

    def aws(secret: str) -> subprocess.CompletedProcess[str]:
        run = stock_aws(
            tmp_path,
            {
                "AWS_ACCESS_KEY_ID": KEY_ID,
                "AWS_SECRET_ACCESS_KEY": secret,
                "AWS_DEFAULT_REGION": "eu-central-1",
            },
        )
        return run("cloudtrail", "list-public-keys", "--endpoint-url", url, "--output", "json")

    out = aws(SECRET)
    assert out.returncode == 0, out.stderr
    keys = json.loads(out.stdout)["PublicKeyList"]
    assert [k["Fingerprint"] for k in keys] == fingerprints(d)
    out = aws("wrong")
    assert out.returncode != 0 and "InvalidSignatureException" in out.stderr


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ('[api.access_keys.AKIAGOODKEY00000001]\nrole = "admin"\n', "secret: missing"),
        (
            '[api.access_keys.AKIAGOODKEY00000001]\nsecret = "s"\nrole = "root"\n',
            "role: 'root' is not one of 'admin', 'read'",
        ),
        ('[api.access_keys."bad/id"]\nsecret = "s"\n', "'bad/id' is not an access key id"),
        (
            '[api.access_keys.AKIAGOODKEY00000001]\nsecret = "s"\nrule = "admin"\n',
            "rule: unknown key (did you mean role?)",
        ),
        ("[api]\nmax_body_bytes = 10\n", "max_body_bytes: 10 is too small"),
    ],
)
def test_access_key_config_errors(tmp_path: Path, section: str, expected: str) -> None:
    from trailseal import config as config_mod
    from trailseal.errors import ConfigError

    path = tmp_path / "trailseal.toml"
    path.write_text(f'[daemon]\ndata_dir = "{tmp_path}"\n{section}')
    with pytest.raises(ConfigError) as info:
        config_mod.load(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)
