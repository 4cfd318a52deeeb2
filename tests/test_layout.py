"""Object keys (FORMATS.md §4–§6): exact strings for known inputs."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from trailseal.delivery import layout

WHEN = datetime(2024, 3, 5, 7, 8, 9, 123456, tzinfo=UTC)


def test_log_key_zstd_no_prefix() -> None:
    key = layout.log_object_key(
        prefix="",
        organization_id="",
        account="123456789012",
        region="local-1",
        when=WHEN,
        compression="zstd",
    )
    m = re.fullmatch(
        r"AWSLogs/123456789012/CloudTrail/local-1/2024/03/05/"
        r"123456789012_CloudTrail_local-1_20240305T0708Z_([A-Za-z0-9]{16})\.json\.zst",
        key,
    )
    assert m is not None, key
    assert layout.is_log_file_key(key)


def test_log_key_gzip_prefix_org_and_local_time_converted() -> None:
    plus2 = WHEN.astimezone(timezone(timedelta(hours=2)))
    key = layout.log_object_key(
        prefix="fleet/host-a/",
        organization_id="o-abc123",
        account="000000000000",
        region="eu-west-1",
        when=plus2,
        compression="gzip",
    )
    expected = (
        "fleet/host-a/AWSLogs/o-abc123/000000000000/CloudTrail/eu-west-1/2024/03/05/"
        "000000000000_CloudTrail_eu-west-1_20240305T0708Z_"
    )
    assert key.startswith(expected) and key.endswith(".json.gz"), key
    assert len(key) == len(expected) + 16 + len(".json.gz")
    assert layout.is_log_file_key(key)


def test_log_key_suffix_is_random() -> None:
    keys = {
        layout.log_object_key(
            prefix="",
            organization_id="",
            account="000000000000",
            region="r",
            when=WHEN,
            compression="zstd",
        )
        for _ in range(20)
    }
    assert len(keys) == 20


def test_log_key_rejects_naive_time_and_unknown_compression() -> None:
    with pytest.raises(ValueError, match="time zone"):
        layout.log_object_key(
            prefix="",
            organization_id="",
            account="000000000000",
            region="r",
            when=WHEN.replace(tzinfo=None),
            compression="zstd",
        )
    with pytest.raises(ValueError, match="compression 'brotli'"):
        layout.log_object_key(
            prefix="",
            organization_id="",
            account="000000000000",
            region="r",
            when=WHEN,
            compression="brotli",
        )


def test_digest_key_exact() -> None:
    key = layout.digest_object_key(
        prefix="p",
        organization_id="",
        account="123456789012",
        region="local-1",
        trail_name="my_trail",
        home_region="local-1",
        end=WHEN,
    )
    assert key == (
        "p/AWSLogs/123456789012/CloudTrail-Digest/local-1/2024/03/05/"
        "123456789012_CloudTrail-Digest_local-1_my_trail_local-1_20240305T070809Z.json.gz"
    )
    parts = layout.parse_digest_key(key)
    assert parts == layout.DigestKeyParts(
        "p/AWSLogs/",
        "123456789012",
        "local-1",
        "my_trail",
        "local-1",
        WHEN.replace(microsecond=0),
    )
    assert not layout.is_log_file_key(key)


def test_digest_key_with_org() -> None:
    key = layout.digest_object_key(
        prefix="",
        organization_id="o-xyz",
        account="123456789012",
        region="us-east-1",
        trail_name="t",
        home_region="eu-west-1",
        end=WHEN,
    )
    assert key == (
        "AWSLogs/o-xyz/123456789012/CloudTrail-Digest/us-east-1/2024/03/05/"
        "123456789012_CloudTrail-Digest_us-east-1_t_eu-west-1_20240305T070809Z.json.gz"
    )
    parts = layout.parse_digest_key(key)
    assert parts is not None and parts.root == "AWSLogs/o-xyz/" and parts.trail_name == "t"


def test_public_key_key() -> None:
    assert layout.public_key_object_key("", "ab12") == "trailseal-public-keys/ab12.pem"
    assert layout.public_key_object_key("x/y", "ab12") == "x/y/trailseal-public-keys/ab12.pem"


@pytest.mark.parametrize(
    "key",
    [
        "AWSLogs/123456789012/CloudTrail/r/2024/03/05/123456789012_CloudTrail_r_20240305T0708Z_x.json.zst",
        "AWSLogs/123456789012/CloudTrail-Digest/r/2024/03/05/nope.json.gz",
        "trailseal-public-keys/ab.pem",
    ],
)
def test_non_matching_keys(key: str) -> None:
    assert not layout.is_log_file_key(key)
    assert layout.parse_digest_key(key) is None
