"""Digest files: contents, signatures, chaining across windows and restarts, crash safety.

Log files here are built by the reference (tests/reference.py) and recorded through the
uploader's own state (DeliveryState.append_delivered), so these tests need no Rust core.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import logging
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from reference import ZERO_CHAIN, build_log, compress, verify_digest
from trailseal import _core
from trailseal.config import ApiConfig, Config, DaemonConfig, IngestConfig, TrailConfig
from trailseal.delivery import layout, uploader
from trailseal.delivery.destination import FileDestination, open_destination
from trailseal.delivery.digest import DigestWriter
from trailseal.delivery.signer import Signer
from trailseal.delivery.uploader import DeliveryState

ACCOUNT = "111122223333"
REGION = "local-1"


class Setup:
    def __init__(self, tmp: Path, interval: float = 3600.0) -> None:
        self.tmp = tmp
        self.trail = TrailConfig(
            name="main", destination=f"file://{tmp}/bucket", digest_interval_secs=interval
        )
        self.config = Config(
            daemon=DaemonConfig(data_dir=tmp / "data", account_id=ACCOUNT, region=REGION),
            ingest=IngestConfig(unix_socket=None),
            api=ApiConfig(),
            trails={"main": self.trail},
        )
        dest = open_destination(self.trail.destination, host_id="h")
        assert isinstance(dest, FileDestination)
        self.dest = dest
        self.signer = Signer.load_or_create(tmp / "data" / "keys")
        self.state_dir = tmp / "data" / "state" / "main"
        self.state = DeliveryState(self.state_dir)
        self.chain: dict[tuple[str, str], str] = {}
        self.delivered: list[str] = []

    def writer(self) -> DigestWriter:
        return DigestWriter(
            config=self.config,
            trail=self.trail,
            destination=self.dest,
            signer=self.signer,
            state_dir=self.state_dir,
        )

    def deliver_log(self, n_events: int, account: str = ACCOUNT, region: str = REGION) -> str:
        """Deliver a log file of the stream as the uploader would, and record it."""
        start = self.chain.get((account, region), ZERO_CHAIN)
        events = [
            {
                "eventName": f"Put{i}",
                "eventSource": "s3",
                "eventTime": "2024-01-01T00:00:0" + str(i % 10) + "Z",
            }
            for i in range(n_events)
        ]
        raw, end = build_log(events, start)
        key = layout.log_object_key(
            prefix="",
            organization_id="",
            account=account,
            region=region,
            when=datetime.now(UTC),
            compression="zstd",
        )
        self.dest.put_bytes(key, compress(raw, "zstd"))
        self.state.ensure_dir()
        assert self.state.append_delivered(
            {
                "s3Bucket": "bucket",
                "s3Object": key,
                "hashValue": hashlib.sha256(raw).hexdigest(),
                "hashAlgorithm": "SHA-256",
                "newestEventTime": "2024-01-01T00:00:09Z",
                "oldestEventTime": "2024-01-01T00:00:00Z",
                "eventCount": n_events,
                "chainStart": start,
                "chainEnd": end,
                "account": account,
                "region": region,
            }
        )
        self.chain[(account, region)] = end
        self.delivered.append(key)
        return key

    def digests(self, account: str = ACCOUNT, region: str = REGION) -> list[str]:
        keys = [
            k
            for k in self.dest.list_keys()
            if (p := layout.parse_digest_key(k)) and p.account == account and p.region == region
        ]
        return sorted(keys, key=lambda k: layout.parse_digest_key(k).end)  # type: ignore[union-attr]

    def doc(self, key: str) -> dict[str, Any]:
        return json.loads(gzip.decompress(self.dest.get_bytes(key)))  # type: ignore[no-any-return]

    def check_chain(self, account: str = ACCOUNT, region: str = REGION) -> list[str]:
        """Verify the stream's digests with the reference; return all listed object keys."""
        keys = self.digests(account, region)
        listed: list[str] = []
        previous = None
        for key in keys:
            gz = self.dest.get_bytes(key)
            problems = verify_digest(
                gz,
                self.dest.get_metadata(key),
                bucket="bucket",
                key=key,
                public_key=self.signer.public_key(),
                previous=previous,
            )
            assert problems == [], (key, problems)
            listed += [f["s3Object"] for f in self.doc(key)["logFiles"]]
            previous = (gz, self.dest.get_metadata(key), key)
        assert len(listed) == len(set(listed)), "a file is listed in two digests"
        return listed


def test_digest_fields_signature_and_public_key(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    k1 = s.deliver_log(3)
    k2 = s.deliver_log(2)
    trio.run(s.writer().write_final)
    (dkey,) = s.digests()
    doc = s.doc(dkey)
    assert list(doc) == [
        "awsAccountId",
        "digestStartTime",
        "digestEndTime",
        "digestS3Bucket",
        "digestS3Object",
        "digestPublicKeyFingerprint",
        "digestSignatureAlgorithm",
        "newestEventTime",
        "oldestEventTime",
        "previousDigestS3Bucket",
        "previousDigestS3Object",
        "previousDigestHashValue",
        "previousDigestHashAlgorithm",
        "previousDigestSignature",
        "logFiles",
    ]
    assert doc["awsAccountId"] == ACCOUNT
    assert doc["digestS3Bucket"] == "bucket" and doc["digestS3Object"] == dkey
    assert doc["digestPublicKeyFingerprint"] == s.signer.fingerprint
    assert doc["digestSignatureAlgorithm"] == "SHA256withRSA"
    assert [f["s3Object"] for f in doc["logFiles"]] == [k1, k2]
    assert set(doc["logFiles"][0]) == {
        "s3Bucket",
        "s3Object",
        "hashValue",
        "hashAlgorithm",
        "newestEventTime",
        "oldestEventTime",
        "eventCount",
        "chainStart",
        "chainEnd",
    }
    assert doc["logFiles"][1]["chainStart"] == doc["logFiles"][0]["chainEnd"]
    assert doc["newestEventTime"] == "2024-01-01T00:00:09Z"
    end = datetime.strptime(doc["digestEndTime"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert dkey == layout.digest_object_key(
        prefix="",
        organization_id="",
        account=ACCOUNT,
        region=REGION,
        trail_name="main",
        home_region=REGION,
        end=end,
    )
    assert s.dest.get_metadata(dkey) == {
        "signature": s.dest.get_metadata(dkey)["signature"],
        "signature-algorithm": "SHA256withRSA",
    }
    assert s.check_chain() == [k1, k2]
    pem_key = layout.public_key_object_key("", s.signer.fingerprint)
    assert s.dest.get_bytes(pem_key) == s.signer.public_key_pem()
    # the covered lines left delivered.jsonl; nothing pending
    assert s.state.read_delivered_lines() == []
    assert not s.state.pending_path.exists()


def test_chain_over_windows_and_restart_and_other_streams(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.deliver_log(1)
    trio.run(s.writer().write_final)
    trio.run(s.writer().write_final)  # empty window: still a digest, still chained
    s.deliver_log(2)
    other = s.deliver_log(4, account="999988887777", region="eu-west-1")
    w = s.writer()  # a restart: new writer, state from disk
    trio.run(w.write_final)
    keys = s.digests()
    assert len(keys) == 3
    docs = [s.doc(k) for k in keys]
    assert docs[1]["logFiles"] == [] and docs[1]["newestEventTime"] is None
    for a, b in itertools.pairwise(docs):
        assert b["digestStartTime"] == a["digestEndTime"]
        assert b["digestEndTime"] > a["digestEndTime"]
    assert s.check_chain() == [k for k in s.delivered if k != other]
    (okey,) = s.digests("999988887777", "eu-west-1")
    assert s.check_chain("999988887777", "eu-west-1") == [other]
    # the other stream keeps getting digests (empty ones) once it has been seen
    trio.run(s.writer().write_final)
    assert len(s.digests("999988887777", "eu-west-1")) == 2
    s.check_chain("999988887777", "eu-west-1")
    assert s.doc(okey)["previousDigestS3Object"] is None


def test_final_digest_ends_a_second_later(tmp_path: Path) -> None:
    s = Setup(tmp_path)

    async def twice() -> None:
        w = s.writer()
        await w.write_final()
        await w.write_final()
        await w.write_final()

    trio.run(twice)
    ends = [s.doc(k)["digestEndTime"] for k in s.digests()]
    assert len(ends) == 3
    stamps = [datetime.strptime(e, "%Y-%m-%dT%H:%M:%SZ").timestamp() for e in ends]
    assert stamps[1] >= stamps[0] + 1 and stamps[2] >= stamps[1] + 1
    s.check_chain()


def test_periodic_run_writes_contiguous_windows(tmp_path: Path) -> None:
    s = Setup(tmp_path, interval=1.0)
    s.deliver_log(1)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(s.writer().run)
            with trio.fail_after(20):
                while len(s.digests()) < 3:
                    if len(s.digests()) == 1 and len(s.delivered) == 1:
                        s.deliver_log(2)
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()

    trio.run(main)
    listed = s.check_chain()
    assert listed == s.delivered


class Crash(BaseException):
    """Stands for the process dying (nothing in trailseal catches a BaseException)."""


class CrashAfterDigestPut:
    """The real destination, except that the process "dies" right after a digest is stored."""

    def __init__(self, inner: FileDestination) -> None:
        self.inner = inner
        self.url, self.bucket, self.prefix = inner.url, inner.bucket, inner.prefix

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def put_bytes(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
        self.inner.put_bytes(key, data, metadata)
        if layout.parse_digest_key(key) is not None:
            raise Crash(key)


def test_crash_between_delivery_and_commit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = Setup(tmp_path)
    s.deliver_log(1)
    trio.run(s.writer().write_final)
    s.deliver_log(2)
    crashing = DigestWriter(
        config=s.config,
        trail=s.trail,
        destination=CrashAfterDigestPut(s.dest),  # type: ignore[arg-type]
        signer=s.signer,
        state_dir=s.state_dir,
    )
    with pytest.raises(Crash):
        trio.run(crashing.write_final)
    assert len(s.digests()) == 2  # delivered ...
    assert s.state.pending_path.exists()  # ... but not recorded
    assert len(s.state.read_delivered_lines()) == 1

    s.deliver_log(3)
    with caplog.at_level(logging.WARNING):
        trio.run(s.writer().write_final)  # restart: re-delivers the pending digest, then a new one
    assert any("again" in r.getMessage() for r in caplog.records)
    assert not s.state.pending_path.exists()
    keys = s.digests()
    assert len(keys) == 3
    assert s.check_chain() == s.delivered  # every file exactly once, in order
    assert [len(s.doc(k)["logFiles"]) for k in keys] == [1, 1, 1]


def test_state_lost_restarts_chain_with_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = Setup(tmp_path)
    trio.run(s.writer().write_final)
    s.state.digests_path.unlink()
    with caplog.at_level(logging.WARNING):
        trio.run(s.writer().write_final)
    assert any("chain restarts" in r.getMessage() for r in caplog.records)
    docs = [s.doc(k) for k in s.digests()]
    assert len(docs) == 2
    assert all(d["previousDigestSignature"] is None for d in docs)


# -- the uploader (needs the Rust core) ------------------------------------------------------

needs_core = pytest.mark.skipif(
    not hasattr(_core, "Core"), reason="trailseal._core built without Core (rebuild with maturin)"
)


def _seal(core: Any, n: int, tag: str) -> Any:
    lines = [
        json.dumps({"eventName": "GetObject", "eventSource": "s3", "eventID": f"{tag}-{i}"})
        for i in range(n)
    ]
    data = ("\n".join(lines) + "\n").encode()
    core.process(data, [(len(data), "unix:uid=0,pid=1", None, 1_700_000_000_000)])
    core.sync()
    key = layout.log_object_key(
        prefix="",
        organization_id="",
        account=ACCOUNT,
        region=REGION,
        when=datetime.now(UTC),
        compression="zstd",
    )
    return core.seal("main", ACCOUNT, REGION, key)


@needs_core
def test_uploader_delivers_leftovers_once_and_retries(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = Setup(tmp_path)
    core = _core.Core(str(tmp_path / "spool"), ["main"], account_id=ACCOUNT, region=REGION)
    first, second = _seal(core, 2, "a"), _seal(core, 3, "b")
    # a crash after recording `first` but before removing it from the spool
    s.state.ensure_dir()
    assert s.state.append_delivered(uploader.log_file_entry(first, "bucket"))
    # the destination is unreachable at first: a file stands where its directory should be
    blocked_url = f"file://{tmp_path}/blocked/bucket"
    (tmp_path / "blocked").write_text("not a directory")
    dest = open_destination(blocked_url, host_id="h")

    async def main() -> None:
        send, receive = trio.open_memory_channel[Any](4)
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(
                    uploader.run,
                    core=core,
                    trail=s.trail,
                    destination=dest,
                    state_dir=s.state_dir,
                    sealed=receive,
                )
            )
            with trio.fail_after(30):
                while not any("retrying" in r.getMessage() for r in caplog.records):  # noqa: ASYNC110
                    await trio.sleep(0.02)
            (tmp_path / "blocked").unlink()
            third = _seal(core, 1, "c")
            await send.send(third)
            await send.aclose()

    with caplog.at_level(logging.WARNING):
        trio.run(main)
    assert core.sealed_files("main") == []
    keys = [json.loads(line)["s3Object"] for line in s.state.read_delivered_lines()]
    assert keys == [first.object_key, second.object_key, keys[2]]  # in seq order, each once
    assert len(set(keys)) == 3
    assert all((tmp_path / "blocked" / "bucket" / k).is_file() for k in keys)
    assert any(
        r.levelno == logging.WARNING and "retrying" in r.getMessage() for r in caplog.records
    )


@needs_core
def test_uploader_delivers_a_seal_never_announced_before_it_returns(tmp_path: Path) -> None:
    """A seal whose SealedFile never reached the channel (the sealer was cancelled at shutdown
    between sealing and sending) is delivered when the channel closes, not left to the next
    start."""
    s = Setup(tmp_path)
    core = _core.Core(str(tmp_path / "spool"), ["main"], account_id=ACCOUNT, region=REGION)
    dest = open_destination(s.trail.destination, host_id="h")

    async def main() -> None:
        send, receive = trio.open_memory_channel[Any](4)
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(
                    uploader.run,
                    core=core,
                    trail=s.trail,
                    destination=dest,
                    state_dir=s.state_dir,
                    sealed=receive,
                )
            )
            announced = _seal(core, 2, "a")
            await send.send(announced)
            orphan = _seal(core, 3, "b")  # sealed, never sent
            assert orphan is not None
            await send.aclose()

    trio.run(main)
    assert core.sealed_files("main") == []
    keys = [json.loads(line)["s3Object"] for line in s.state.read_delivered_lines()]
    assert len(keys) == 2 and len(set(keys)) == 2
