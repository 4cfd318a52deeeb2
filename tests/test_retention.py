"""Retention (``retention_days``): which keys expire (pure), pruning a ``file://`` destination
(a digest and the log files it lists go together; the midnight boundary keeps both), the daemon
pruning at start, ``trailseal validate`` ending the chain at expired history with a note (and
still failing on a digest deleted from the middle), and on ``s3://`` the lifecycle rule sent,
merged with the bucket's other rules, read back and removed again (SeaweedFS stores and returns
lifecycle configurations; expiry itself takes days and is S3's job, so it is not exercised
here), plus the refusal of retention together with Object Lock.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from conftest import ACCOUNT, REGION, DaemonProcess, exchange, wait_until
from s3server import S3Server
from trailseal.config import TrailConfig
from trailseal.delivery import layout, retention
from trailseal.delivery.destination import FileDestination


def _log_key(when: datetime) -> str:
    return layout.log_object_key(
        prefix="", organization_id="", account=ACCOUNT, region=REGION, when=when, compression="zstd"
    )


def _digest_key(end: datetime) -> str:
    return layout.digest_object_key(
        prefix="",
        organization_id="",
        account=ACCOUNT,
        region=REGION,
        trail_name="default",
        home_region=REGION,
        end=end,
    )


def _digest(logs: list[str]) -> bytes:
    return gzip.compress(json.dumps({"logFiles": [{"s3Object": k} for k in logs]}).encode())


def test_key_dates_and_cutoff() -> None:
    when = datetime(2024, 3, 5, 23, 50, tzinfo=UTC)
    assert retention.key_date(_log_key(when)) == ("CloudTrail", date(2024, 3, 5))
    assert retention.key_date("p/" + _digest_key(when)) == ("CloudTrail-Digest", date(2024, 3, 5))
    assert retention.key_date("trailseal-public-keys/ab.pem") is None
    assert retention.key_date("AWSLogs/123456789012/CloudTrail/r/2024/13/01/x.json.zst") is None
    now = datetime(2024, 3, 10, 0, 30, tzinfo=UTC)
    assert retention.cutoff(now, 3) == date(2024, 3, 7)


def test_prune_removes_digests_with_their_log_files(tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    dest = FileDestination(f"file://{root}", root)
    t = lambda d, h=12, m=0: datetime(2024, 3, d, h, m, tzinfo=UTC)  # noqa: E731
    old_log, old_digest = _log_key(t(1)), _digest_key(t(1, 13))
    late_log, late_digest = _log_key(t(5, 23, 50)), _digest_key(t(6, 0, 30))
    edge_log, edge_digest = _log_key(t(6, 23, 50)), _digest_key(t(7, 0, 30))
    orphan, new_log = _log_key(t(4)), _log_key(t(9))
    for key in (old_log, late_log, edge_log, orphan, new_log):
        dest.put_bytes(key, b"log " + key.encode())
    for key, listed in ((old_digest, [old_log]), (late_digest, [late_log]), (edge_digest, [])):
        dest.put_bytes(key, _digest(listed), {"signature": "00"})
    dest.put_bytes(layout.public_key_object_key("", "ab"), b"pem")

    assert retention.prune(dest, 0, now=t(10)).removed == []  # 0 keeps forever
    result = retention.prune(dest, 3, now=t(10))  # cutoff: 2024-03-07
    assert sorted(result.removed) == sorted([old_log, old_digest, late_log, late_digest, orphan])
    assert dest.list_keys() == sorted(
        [edge_log, edge_digest, new_log, layout.public_key_object_key("", "ab")]
    )
    side_files = [p.name for p in root.rglob("*.metadata.json")]
    assert side_files == [Path(edge_digest).name + ".metadata.json"]  # the others went too
    assert not (root / old_log).parent.exists()  # empty date directories go too
    assert retention.prune(dest, 3, now=t(10)).removed == []


def test_daemon_prunes_a_file_destination_at_start(daemon: Any, tmp_path: Path) -> None:
    root = tmp_path / "bucket"
    dest = FileDestination(f"file://{root}", root)
    old = datetime(2020, 1, 1, tzinfo=UTC)
    dest.put_bytes(_log_key(old), b"old")
    dest.put_bytes(_digest_key(old), _digest([_log_key(old)]), {"signature": "00"})
    d: DaemonProcess = daemon(trail={"retention_days": 30})
    wait_until(lambda: not any(k.startswith("AWSLogs") for k in dest.list_keys()), what="prune")
    with d.connect_unix() as sock:
        assert exchange(sock, b'{"eventName":"A","eventSource":"s"}\n')[-1] == {"ack": 1}
    assert d.stop() == 0, d.stderr()
    assert "retention_days=30 removed 2 expired objects" in d.stderr()
    assert len(d.log_files()) == 1  # today's delivery is kept


def _validate(d: DaemonProcess) -> subprocess.CompletedProcess[str]:
    (pem,) = sorted((d.data_dir / "keys" / "public").glob("*.pem"))
    return subprocess.run(
        [
            *(sys.executable, "-m", "trailseal.cli", "validate"),
            *("--destination", f"file://{d.bucket}", "--public-key", str(pem), "--no-progress"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_validate_ends_the_chain_at_expired_history(daemon: Any) -> None:
    first = None
    for run in range(3):  # three runs on one data dir: three chained digests
        d = daemon(data_dir=first.data_dir if first else None)
        first = first or d
        with d.connect_unix() as sock:
            line = b'{"eventName":"A","eventSource":"s","eventID":"e%d"}\n' % run
            assert exchange(sock, line)[-1] == {"ack": 1}
        assert d.stop() == 0, d.stderr()
    dest = FileDestination(f"file://{d.bucket}", d.bucket)
    digests = sorted(
        (k for k in dest.list_keys() if layout.parse_digest_key(k)),
        key=lambda k: layout.parse_digest_key(k).end,  # type: ignore[union-attr]
    )
    assert len(digests) == 3
    assert _validate(d).returncode == 0

    # a digest deleted from the middle is a failure (older history is still there)
    middle, metadata = dest.get_bytes(digests[1]), dest.get_metadata(digests[1])
    dest.delete(digests[1])
    bad = _validate(d)
    assert bad.returncode == 1
    assert f"previous digest {digests[1]} is missing" in bad.stdout
    dest.put_bytes(digests[1], middle, metadata)
    assert _validate(d).returncode == 0

    # what retention removes: the oldest digest and the log files it lists
    oldest = json.loads(gzip.decompress(dest.get_bytes(digests[0])))
    for key in [digests[0]] + [e["s3Object"] for e in oldest["logFiles"]]:
        dest.delete(key)
    ok = _validate(d)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "history starts here" in ok.stdout + ok.stderr
    assert "2/2 digest files valid" in ok.stdout, ok.stdout


# ---------------------------------------------------------------------------------------------
# s3://


def _rules(s3: S3Server, bucket: str) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = s3.client().get_bucket_lifecycle_configuration(Bucket=bucket)[
        "Rules"
    ]
    return rules


def test_merge_rules_is_by_id() -> None:
    trail = TrailConfig(name="t", destination="s3://b/p", retention_days=7)
    other = {"ID": "other", "Filter": {"Prefix": "x/"}, "Status": "Enabled"}
    stale = {"ID": "trailseal-t", "Filter": {"Prefix": "p/AWSLogs/"}, "Expiration": {"Days": 1}}
    merged = retention.merge_rules([other, stale], trail, "p")
    assert merged == [other, retention.lifecycle_rule(trail, "p")]
    assert merged[1]["Expiration"] == {"Days": 7}
    off = TrailConfig(name="t", destination="s3://b/p", retention_days=0)
    assert retention.merge_rules([other, stale], off, "p") == [other]


def test_s3_lifecycle_rule_is_merged_read_back_and_removed(s3: S3Server, daemon: Any) -> None:
    bucket = s3.new_bucket()
    other = {
        "ID": "keep-me",
        "Filter": {"Prefix": "elsewhere/"},
        "Status": "Enabled",
        "Expiration": {"Days": 9},
    }
    s3.client().put_bucket_lifecycle_configuration(
        Bucket=bucket, LifecycleConfiguration={"Rules": [other]}
    )
    trail = {"destination": f"s3://{bucket}/p", "s3_endpoint_url": s3.endpoint}
    d = daemon(trail={**trail, "retention_days": 3}, env=s3.env())
    rules = {r["ID"]: r for r in _rules(s3, bucket)}
    assert set(rules) == {"keep-me", "trailseal-default"}
    ours = rules["trailseal-default"]
    assert ours["Filter"] == {"Prefix": "p/AWSLogs/"}
    assert ours["Expiration"] == {"Days": 3} and ours["Status"] == "Enabled"
    assert d.stop() == 0, d.stderr()
    assert "bucket lifecycle rule trailseal-default set (retention_days=3)" in d.stderr()

    d2 = daemon(trail={**trail, "retention_days": 0}, data_dir=d.data_dir, env=s3.env())
    assert [r["ID"] for r in _rules(s3, bucket)] == ["keep-me"]
    assert d2.stop() == 0, d2.stderr()


def test_s3_retention_with_object_lock_is_refused(s3: S3Server, daemon: Any) -> None:
    bucket = s3.new_bucket(object_lock=True)
    d = daemon(
        trail={
            "destination": f"s3://{bucket}",
            "s3_endpoint_url": s3.endpoint,
            "object_lock_mode": "GOVERNANCE",
            "object_lock_days": 1,
            "retention_days": 30,
        },
        env=s3.env(),
        wait=False,
    )
    assert d.proc.wait(timeout=60) == 2
    assert "[trails.default] retention_days: cannot be combined with object_lock_mode" in (
        d.stderr()
    )
    assert "delete marker" in d.stderr()
