"""Seeded synthetic CloudTrail-like events, for benchmarks, load tests and demos.

``events(n, seed)`` returns ``n`` NDJSON lines (bytes, without line endings) of about 1.6 KB
each, shaped like real CloudTrail records: nested ``userIdentity`` with ``sessionContext``,
``requestParameters``/``responseElements``, ``resources``, numbers and some non-ASCII text.
The same ``(n, seed)`` always gives the same bytes, so runs compare.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator

_SERVICES = [
    ("s3.amazonaws.com", ["GetObject", "PutObject", "ListBuckets", "DeleteObject", "HeadBucket"]),
    ("ec2.amazonaws.com", ["DescribeInstances", "RunInstances", "TerminateInstances"]),
    ("iam.amazonaws.com", ["CreateRole", "AttachRolePolicy", "ListRoles", "GetUser"]),
    ("sts.amazonaws.com", ["AssumeRole", "GetCallerIdentity"]),
    ("kms.amazonaws.com", ["Decrypt", "Encrypt", "GenerateDataKey"]),
    ("lambda.amazonaws.com", ["Invoke", "UpdateFunctionCode", "ListFunctions"]),
]
_REGIONS = ["us-east-1", "us-west-2", "eu-west-1"]
_AGENTS = [
    "aws-cli/2.15.30 Python/3.11.8 Linux/6.1.0 exe/x86_64.debian.12 prompt/off command/s3.cp",
    "Boto3/1.34.69 md/Botocore#1.34.69 ua/2.0 os/linux#6.1.0 md/arch#x86_64 lang/python#3.11.8",
    "terraform-provider-aws/5.42.0 (+https://registry.terraform.io) aws-sdk-go-v2/1.26.0",
]
_NAMES = ["alice", "bob", "carol", "dmitri", "zoë", "renée", "søren", "ingrid"]


def _event(rng: random.Random, i: int) -> dict[str, object]:
    source, names = rng.choice(_SERVICES)
    name = rng.choice(names)
    region = rng.choice(_REGIONS)
    account = "111122223333"
    user = rng.choice(_NAMES)
    second = 1767225600 + i // 50
    hh, mm, ss = (second // 3600) % 24, (second // 60) % 60, second % 60
    access_key = "ASIA" + "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16))
    role_arn = f"arn:aws:iam::{account}:role/deploy-{rng.randrange(40)}"
    bucket = f"corp-data-{rng.randrange(100)}"
    key = f"exports/2026/{rng.randrange(1, 13):02d}/{uuid.UUID(int=rng.getrandbits(128))}.parquet"
    return {
        "eventVersion": "1.09",
        "userIdentity": {
            "type": "AssumedRole",
            "principalId": f"AROA{rng.getrandbits(64):016X}:{user}",
            "arn": f"arn:aws:sts::{account}:assumed-role/deploy/{user}",
            "accountId": account,
            "accessKeyId": access_key,
            "sessionContext": {
                "sessionIssuer": {
                    "type": "Role",
                    "principalId": f"AROA{rng.getrandbits(64):016X}",
                    "arn": role_arn,
                    "accountId": account,
                    "userName": "deploy",
                },
                "attributes": {
                    "creationDate": f"2026-01-01T{hh:02d}:{mm:02d}:{ss:02d}Z",
                    "mfaAuthenticated": rng.random() < 0.5,
                },
            },
        },
        "eventTime": f"2026-01-01T{hh:02d}:{mm:02d}:{ss:02d}Z",
        "eventSource": source,
        "eventName": name,
        "awsRegion": region,
        "sourceIPAddress": f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}",
        "userAgent": rng.choice(_AGENTS),
        "requestParameters": {
            "bucketName": bucket,
            "key": key,
            "Host": f"{bucket}.s3.{region}.amazonaws.com",
            "partNumber": rng.randrange(1, 10000),
            "maxKeys": 1000,
        },
        "responseElements": {
            "x-amz-server-side-encryption": "aws:kms",
            "bytesTransferred": rng.randrange(1 << 40),
            "ratio": round(rng.random(), 6),
        },
        "additionalEventData": {
            "SignatureVersion": "SigV4",
            "CipherSuite": "TLS_AES_128_GCM_SHA256",
            "bytesTransferredIn": rng.randrange(1 << 20),
            "AuthenticationMethod": "AuthHeader",
            "bytesTransferredOut": 0.0,
        },
        "requestID": f"{rng.getrandbits(64):016X}",
        "eventID": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "readOnly": name.startswith(("Get", "List", "Describe", "Head")),
        "resources": [
            {"type": "AWS::S3::Object", "ARN": f"arn:aws:s3:::{bucket}/{key}"},
            {"accountId": account, "type": "AWS::S3::Bucket", "ARN": f"arn:aws:s3:::{bucket}"},
        ],
        "eventType": "AwsApiCall",
        "managementEvent": True,
        "recipientAccountId": account,
        "eventCategory": "Management",
    }


def iter_events(n: int, seed: int = 1) -> Iterator[bytes]:
    """Yield ``n`` synthetic events as compact JSON lines (no line ending), deterministically."""
    rng = random.Random(seed)
    for i in range(n):
        yield json.dumps(_event(rng, i), ensure_ascii=False, separators=(",", ":")).encode()


def events(n: int, seed: int = 1) -> list[bytes]:
    """``n`` synthetic events as a list (see :func:`iter_events`)."""
    return list(iter_events(n, seed))
