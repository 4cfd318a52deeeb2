"""The stock AWS CLI (awscli from PyPI, unchanged) against trailseal: ``aws cloudtrail
validate-logs`` accepts a gzip trail's delivery and catches tampering (issue 4, done-when #3);
``describe-trails`` and ``get-trail`` see the trail exactly.

Setup: SeaweedFS (conftest ``s3``) holds the bucket; a daemon with one ``compression = "gzip"``
trail on ``s3://<bucket>/audit`` seals every second and writes a digest every 2 s while events
arrive in waves, so several log files and digests are delivered; SIGTERM adds the final digest.
The daemon is then started again on the same data directory with the CloudTrail API on and a
one-hour digest interval, so that nothing new is delivered while the CLI looks.

The CLI runs as a subprocess with an environment built from nothing (no host AWS config can leak
in): CloudTrail through ``AWS_ENDPOINT_URL_CLOUDTRAIL`` (the daemon's API, SigV4 with a ``read``
key configured as ``[api.access_keys.<id>]`` — the same id and secret SeaweedFS accepts, since
the CLI uses one set of credentials for both services), S3 through ``AWS_ENDPOINT_URL_S3``.
Assertions are on its summary lines (it exits 0 also when it finds nothing).
"""

from __future__ import annotations

import gzip
import json
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from conftest import (
    ACCOUNT,
    REGION,
    DaemonProcess,
    exchange,
    free_tcp_port,
    stock_aws,
    wait_until,
)
from s3server import ACCESS_KEY, SECRET_KEY

TRAIL = "default"
PREFIX = "audit"
ARN = f"arn:aws:cloudtrail:{REGION}:{ACCOUNT}:trail/{TRAIL}"
OTHER_REGION = "us-east-1"
"""Every fifth event happened there: the multi-region trail has a second stream, validated with
``--region us-east-1`` (the CLI's source region) against the same trail ARN (home region)."""
WAVES = 3
EVENTS_PER_WAVE = 25
CLI_TIMEOUT_SECS = 120


def aws(
    args: list[str], *, api: str, s3_endpoint: str, home: Path, region: str = REGION
) -> subprocess.CompletedProcess[str]:
    """Run the stock ``aws`` with only the environment this test gives it."""
    run = stock_aws(
        home,
        {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_ENDPOINT_URL_CLOUDTRAIL": api,
            "AWS_ENDPOINT_URL_S3": s3_endpoint,
            "AWS_MAX_ATTEMPTS": "2",
        },
    )
    return run(*args, "--region", region, timeout=CLI_TIMEOUT_SECS)


def keys(client: Any, bucket: str, marker: str) -> list[str]:
    found: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=PREFIX):
        found += [o["Key"] for o in page.get("Contents", []) if marker in o["Key"]]
    return sorted(found)


def delivered(s3: Any, daemon: Callable[..., DaemonProcess], tmp_path: Path) -> tuple[Any, str]:
    """Phase 1: deliver several log files and digests; then a daemon serving the API only."""
    bucket = s3.new_bucket()
    client = s3.client()
    trail = {
        "destination": f"s3://{bucket}/{PREFIX}",
        "s3_endpoint_url": s3.endpoint,
        "compression": "gzip",
        "seal_after_secs": 1,
        "digest_interval_secs": 2,
    }
    d = daemon(trail=trail, env=s3.env())
    for wave in range(WAVES):
        lines = b"".join(
            json.dumps(
                {
                    "eventName": "PutObject" if n % 2 else "GetObject",
                    "eventSource": "s3.amazonaws.com",
                    "awsRegion": OTHER_REGION if n % 5 == 0 else REGION,
                    "requestParameters": {"wave": wave, "n": n},
                }
            ).encode()
            + b"\n"
            for n in range(EVENTS_PER_WAVE)
        )
        with d.connect_unix() as sock:
            assert exchange(sock, lines)[-1] == {"ack": EVENTS_PER_WAVE}
        wait_until(
            lambda w=wave: len(keys(client, bucket, f"/CloudTrail/{REGION}/")) > w,
            timeout=60,
            what=f"log file {wave + 1} in s3://{bucket}",
        )
    wait_until(
        lambda: len(keys(client, bucket, f"/CloudTrail-Digest/{REGION}/")) >= 2,
        timeout=60,
        what="two periodic digests",
    )
    assert d.stop() == 0, d.stderr()

    port = free_tcp_port()
    api = {
        "listen": f"127.0.0.1:{port}",
        "access_keys": {ACCESS_KEY: {"secret": SECRET_KEY, "role": "read"}},
    }
    quiet = {**trail, "digest_interval_secs": 3600}
    daemon(data_dir=d.data_dir, trail=quiet, api=api, env=s3.env())
    return bucket, f"http://127.0.0.1:{port}"


def summary(stdout: str) -> list[str]:
    """The lines after "Results found for …:" (the per-kind ratio lines), stripped."""
    _, sep, tail = stdout.partition("Results found for ")
    assert sep, f"no 'Results found for' in the CLI output:\n{stdout}"
    return [line.strip() for line in tail.splitlines()[1:] if line.strip()]


def test_validate_logs_accepts_delivery_and_catches_tampering(
    s3: Any, daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 600))
    bucket, api = delivered(s3, daemon, tmp_path)
    client = s3.client()
    logs = keys(client, bucket, f"/CloudTrail/{REGION}/")
    digests = keys(client, bucket, f"/CloudTrail-Digest/{REGION}/")
    assert len(logs) >= WAVES and len(digests) >= 3, (logs, digests)
    assert all(k.endswith(".json.gz") for k in logs)

    def validate(region: str = REGION, since: str = start) -> subprocess.CompletedProcess[str]:
        return aws(
            ["cloudtrail", "validate-logs", "--trail-arn", ARN, "--start-time", since, "--verbose"],
            api=api,
            s3_endpoint=s3.endpoint,
            home=tmp_path,
            region=region,
        )

    # the second region's stream: its own log files and digest chain, the same trail ARN
    other_logs = keys(client, bucket, f"/CloudTrail/{OTHER_REGION}/")
    other_digests = keys(client, bucket, f"/CloudTrail-Digest/{OTHER_REGION}/")
    assert other_logs and other_digests
    run = validate(OTHER_REGION)
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    assert summary(run.stdout) == [
        f"{len(other_digests)}/{len(other_digests)} digest files valid",
        f"{len(other_logs)}/{len(other_logs)} log files valid",
    ], run.stdout

    run = validate()
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    assert f"Validating log files for trail {ARN} between {start} and " in run.stdout
    assert summary(run.stdout) == [
        f"{len(digests)}/{len(digests)} digest files valid",
        f"{len(logs)}/{len(logs)} log files valid",
    ], run.stdout
    for key in digests:
        assert f"Digest file\ts3://{bucket}/{key}\tvalid\n" in run.stdout
    for key in logs:
        assert f"Log file\ts3://{bucket}/{key}\tvalid\n" in run.stdout
    assert run.stderr == ""

    # --start-time inside the chain: exactly the digests ending at or after it (the windows are
    # contiguous, so no gap is reported), and the log files those digests list
    since = datetime.strptime(digests[1][-24:-8], "%Y%m%dT%H%M%SZ").strftime("%Y-%m-%dT%H:%M:%SZ")
    later = digests[1:]
    listed = [
        f["s3Object"]
        for key in later
        for f in json.loads(
            gzip.decompress(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        )["logFiles"]
    ]
    run = validate(since=since)
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    ratios = [f"{len(later)}/{len(later)} digest files valid"]
    ratios += [f"{len(listed)}/{len(listed)} log files valid"] if listed else []
    assert summary(run.stdout) == ratios, run.stdout
    assert f"Digest file\ts3://{bucket}/{digests[0]}\t" not in run.stdout
    assert run.stderr == ""

    # overwrite one log file with different (well-formed) content; delete another
    changed, removed = logs[0], logs[-1]
    content = gzip.decompress(client.get_object(Bucket=bucket, Key=changed)["Body"].read())
    forged = content.replace(b'"GetObject"', b'"DeleteObject"', 1)
    assert forged != content
    client.put_object(Bucket=bucket, Key=changed, Body=gzip.compress(forged, mtime=0))
    client.delete_object(Bucket=bucket, Key=removed)

    run = validate()
    assert run.returncode == 1, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    n = len(logs)
    assert summary(run.stdout) == [
        f"{len(digests)}/{len(digests)} digest files valid",
        f"{n - 2}/{n} log files valid, 2/{n} log files INVALID",
    ], run.stdout
    assert f"Log file\ts3://{bucket}/{changed}\tINVALID: hash value doesn't match" in run.stderr
    assert f"Log file\ts3://{bucket}/{removed}\tINVALID: not found" in run.stderr
    assert f"Log file\ts3://{bucket}/{changed}\tvalid" not in run.stdout

    # describe-trails and get-trail through the CLI
    expected = {
        "Name": TRAIL,
        "S3BucketName": bucket,
        "S3KeyPrefix": PREFIX,
        "IncludeGlobalServiceEvents": True,
        "IsMultiRegionTrail": True,
        "HomeRegion": REGION,
        "TrailARN": ARN,
        "LogFileValidationEnabled": True,
        "HasCustomEventSelectors": False,
        "HasInsightSelectors": False,
        "IsOrganizationTrail": False,
    }
    run = aws(["cloudtrail", "describe-trails"], api=api, s3_endpoint=s3.endpoint, home=tmp_path)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"trailList": [expected]}
    run = aws(
        ["cloudtrail", "get-trail", "--name", ARN], api=api, s3_endpoint=s3.endpoint, home=tmp_path
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"Trail": expected}
    run = aws(
        ["cloudtrail", "get-trail", "--name", "nope"],
        api=api,
        s3_endpoint=s3.endpoint,
        home=tmp_path,
    )
    assert run.returncode != 0
    assert "TrailNotFoundException" in run.stderr
    run = aws(
        ["cloudtrail", "get-trail-status", "--name", TRAIL],
        api=api,
        s3_endpoint=s3.endpoint,
        home=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    status = json.loads(run.stdout)
    assert status["IsLogging"] is True
    newest_digest_end = max(k[-24:-8] for k in digests + other_digests)  # key: <end>.json.gz
    latest = datetime.fromtimestamp(status["LatestDigestDeliveryTime"], UTC)  # epoch (CLI v1)
    assert f"{latest.astimezone(UTC):%Y%m%dT%H%M%SZ}" == newest_digest_end, status
