"""``trailseal validate`` on a destination produced for real: a Core in a tmp dir fed events,
sealed, delivered by the uploader and digested by the DigestWriter under ``trio.run``. It passes
untouched; each kind of tampering makes it exit non-zero naming the object.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reference
from trailseal import _core, cli
from trailseal.config import ApiConfig, Config, DaemonConfig, IngestConfig, TrailConfig
from trailseal.delivery import layout, uploader
from trailseal.delivery.destination import FileDestination, open_destination
from trailseal.delivery.digest import DigestWriter, signing_string
from trailseal.delivery.signer import Signer

pytestmark = pytest.mark.skipif(
    not hasattr(_core, "Core"), reason="trailseal._core built without Core (rebuild with maturin)"
)

ACCOUNT = "111122223333"
REGION = "local-1"


@dataclass
class Produced:
    root: Path
    bucket: Path
    pubkey: Path
    signer: Signer

    @property
    def dest(self) -> FileDestination:
        d = open_destination(f"file://{self.bucket}", host_id="h")
        assert isinstance(d, FileDestination)
        return d

    def logs(self) -> list[str]:
        return [k for k in self.dest.list_keys() if layout.is_log_file_key(k)]

    def digests(self) -> list[str]:
        keys = [k for k in self.dest.list_keys() if layout.parse_digest_key(k)]
        return sorted(keys, key=lambda k: layout.parse_digest_key(k).end)  # type: ignore[union-attr]


def _events(n: int, tag: str) -> bytes:
    lines = [
        json.dumps(
            {
                "eventName": f"PutObject{i}",
                "eventSource": "s3.amazonaws.com",
                "eventTime": f"2024-05-01T10:00:{i:02d}Z",
                "eventID": f"{tag}-{i}",
                "requestParameters": {"bucketName": "b", "key": f"k{i}"},
            }
        )
        for i in range(n)
    ]
    return ("\n".join(lines) + "\n").encode()


def produce(
    root: Path, files: tuple[int, ...] = (3, 2, 4, 1, 2), digest_after: int = 2
) -> Produced:
    """Feed events through a real Core, uploader and DigestWriter; digests every
    ``digest_after`` files and a final one."""
    bucket = root / "bucket"
    trail = TrailConfig(name="main", destination=f"file://{bucket}", compression="zstd")
    config = Config(
        daemon=DaemonConfig(data_dir=root / "data", account_id=ACCOUNT, region=REGION),
        ingest=IngestConfig(unix_socket=None),
        api=ApiConfig(),
        trails={"main": trail},
    )
    dest = open_destination(trail.destination, host_id="h")
    signer = Signer.load_or_create(root / "data" / "keys")
    state_dir = root / "data" / "state" / "main"
    core = _core.Core(str(root / "data" / "spool"), ["main"], account_id=ACCOUNT, region=REGION)
    writer = DigestWriter(
        config=config, trail=trail, destination=dest, signer=signer, state_dir=state_dir
    )

    async def main() -> None:
        send, receive = trio.open_memory_channel[_core.SealedFile](4)
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(
                    uploader.run,
                    core=core,
                    trail=trail,
                    destination=dest,
                    state_dir=state_dir,
                    sealed=receive,
                )
            )
            for n, count in enumerate(files):
                data = _events(count, f"f{n}")
                core.process(data, [(len(data), "unix:uid=0,pid=1", None, int(time.time() * 1000))])
                core.sync()
                key = layout.log_object_key(
                    prefix=dest.prefix,
                    organization_id="",
                    account=ACCOUNT,
                    region=REGION,
                    when=datetime.now(UTC),
                    compression="zstd",
                )
                sealed = core.seal("main", ACCOUNT, REGION, key)
                assert sealed is not None
                await send.send(sealed)
                with trio.fail_after(30):
                    while core.sealed_files("main"):  # noqa: ASYNC110 - a state on disk
                        await trio.sleep(0.01)
                if (n + 1) % digest_after == 0:
                    await writer.write_final()
            await send.aclose()
        await writer.write_final()

    trio.run(main)
    pubkey = root / "signer.pem"
    pubkey.write_bytes(signer.public_key_pem())
    return Produced(root, bucket, pubkey, signer)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Produced:
    return produce(tmp_path_factory.mktemp("pristine"))


@pytest.fixture
def produced(pristine: Produced, tmp_path: Path) -> Produced:
    """A private copy of the pristine destination (same directory name: same bucket)."""
    shutil.copytree(pristine.root, tmp_path / "p")
    root = tmp_path / "p"
    pubkey = root / "signer.pem"
    return Produced(root, root / "bucket", pubkey, pristine.signer)


def run_validate(p: Produced, *extra: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(
        [
            "validate",
            "--destination",
            f"file://{p.bucket}",
            "--public-key",
            str(p.pubkey),
            "--no-progress",
            *extra,
        ]
    )
    out = capsys.readouterr()
    return code, out.out + out.err


def test_valid_destination(produced: Produced, capsys: pytest.CaptureFixture[str]) -> None:
    assert len(produced.logs()) == 5
    assert len(produced.digests()) == 3
    code, out = run_validate(produced, "-v", capsys=capsys)
    assert code == 0, out
    assert "3/3 digest files valid" in out
    assert "5/5 log files valid" in out
    assert "INVALID" not in out
    assert "Results requested for " in out and "Results found for " in out
    for key in produced.logs() + produced.digests():
        assert f"\t{key}\tvalid" in out


def test_reference_agrees_with_core(produced: Produced) -> None:
    """The pure-Python reference and the Rust verify_log agree on every delivered file, and
    the digests chain under the reference's rules."""
    dest = produced.dest
    previous = None
    for dkey in produced.digests():
        gz = dest.get_bytes(dkey)
        meta = dest.get_metadata(dkey)
        assert (
            reference.verify_digest(
                gz,
                meta,
                bucket="bucket",
                key=dkey,
                public_key=produced.signer.public_key(),
                previous=previous,
            )
            == []
        )
        previous = (gz, meta, dkey)
        for entry in json.loads(gzip.decompress(gz))["logFiles"]:
            data = dest.get_bytes(entry["s3Object"])
            ref = reference.verify_log(data, "zstd", entry["chainStart"])
            rust = _core.verify_log(data, "zstd", entry["chainStart"])
            assert ref.problems == [] and rust.problems == []
            assert ref.sha256 == rust.sha256 == entry["hashValue"]
            assert ref.chain_end == rust.chain_end == entry["chainEnd"]
            assert ref.event_count == rust.event_count == entry["eventCount"]


def _rewrite_log(p: Produced, key: str, edit: object) -> None:
    path = p.bucket / key
    raw = reference.decompress(path.read_bytes(), "zstd")
    lines = raw.split(b"\n")
    body = [line.rstrip(b",") for line in lines[1:-2]]
    body = edit(body)  # type: ignore[operator]
    new = reference.HEAD + b",\n".join(body) + b"\n" + reference.TAIL
    path.write_bytes(reference.compress(new, "zstd"))


def test_no_key_is_usage_error(produced: Produced, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["validate", "--destination", f"file://{produced.bucket}", "--no-progress"])
    assert code == 2
    assert "--public-key" in capsys.readouterr().err


def test_keys_from_destination_is_reported_weaker(
    produced: Produced, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(
        [
            "validate",
            "--destination",
            f"file://{produced.bucket}",
            "--keys-from-destination",
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "weaker" in out


def test_no_digests(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bucket").mkdir()
    key = Signer.load_or_create(tmp_path / "keys")
    (tmp_path / "k.pem").write_bytes(key.public_key_pem())
    code = cli.main(
        [
            "validate",
            "--destination",
            f"file://{tmp_path}/bucket",
            "--public-key",
            str(tmp_path / "k.pem"),
            "--no-progress",
        ]
    )
    assert code == 1
    assert "No digests found" in capsys.readouterr().out


def test_time_range(produced: Produced, capsys: pytest.CaptureFixture[str]) -> None:
    future = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    code, out = run_validate(produced, "--start-time", future, capsys=capsys)
    assert code == 1 and "No digests found" in out
    code, out = run_validate(produced, "--start-time", "2000-01-01T00:00:00Z", capsys=capsys)
    assert code == 0 and "Results requested for 2000-01-01T00:00:00Z" in out
    code, out = run_validate(produced, "--end-time", "yesterday", capsys=capsys)
    assert code == 2 and "--end-time 'yesterday' is not an RFC 3339 time" in out


def _invalid(p: Produced, capsys: pytest.CaptureFixture[str], key: str, what: str) -> str:
    code, out = run_validate(p, capsys=capsys)
    assert code == 1, out
    lines = [line for line in out.splitlines() if key in line and what in line]
    assert lines, f"no line naming {key} with {what!r} in:\n{out}"
    assert "INVALID" in out
    return out


def test_flipped_byte_in_log_file(produced: Produced, capsys: pytest.CaptureFixture[str]) -> None:
    key = produced.logs()[1]
    _rewrite_log(
        produced, key, lambda body: [body[0].replace(b"PutObject", b"PutObjekt"), *body[1:]]
    )
    out = _invalid(produced, capsys, key, "modified")
    assert "1/5 log files INVALID" in out


def test_deleted_log_file(produced: Produced, capsys: pytest.CaptureFixture[str]) -> None:
    key = produced.logs()[0]
    produced.dest.delete(key)
    _invalid(produced, capsys, key, "missing")


def test_deleted_middle_digest(produced: Produced, capsys: pytest.CaptureFixture[str]) -> None:
    key = produced.digests()[1]
    produced.dest.delete(key)
    _invalid(produced, capsys, key, "is missing")


def test_deleted_newest_digest(produced: Produced, capsys: pytest.CaptureFixture[str]) -> None:
    """Without its newest digest, a stream's last files look delivered after the digests that
    remain: they are reported as not yet covered (a note), as a live destination's would be.
    (Removing the newest digest is only visible as a gap in time, as with CloudTrail.)"""
    key = produced.digests()[-1]
    listed = json.loads(gzip.decompress(produced.dest.get_bytes(key)))["logFiles"]
    assert listed
    produced.dest.delete(key)
    code, out = run_validate(produced, capsys=capsys)
    assert code == 0, out
    for entry in listed:
        assert f"Note: Log file {entry['s3Object']}: not yet covered by a digest" in out
    assert f"{len(listed)} log files not yet covered by a digest" in out


def _extra_log_key(when: datetime) -> str:
    return layout.log_object_key(
        prefix="",
        organization_id="",
        account=ACCOUNT,
        region=REGION,
        when=when,
        compression="zstd",
    )


def test_unlisted_log_file(produced: Produced, capsys: pytest.CaptureFixture[str]) -> None:
    """A log file stamped before the newest digest of its stream but listed by none: forged or
    dropped from the digests."""
    existing = produced.logs()[0]
    extra = _extra_log_key(datetime.now(UTC) - timedelta(hours=1))
    produced.dest.put_bytes(extra, produced.dest.get_bytes(existing))
    out = _invalid(produced, capsys, extra, "not listed in any digest")
    assert "delivered before the newest digest of its stream" in out
    assert "not yet covered" not in out


def test_log_file_after_the_newest_digest_is_pending(
    produced: Produced, capsys: pytest.CaptureFixture[str]
) -> None:
    """A log file delivered after the newest digest of its stream is a note, not a failure."""
    existing = produced.logs()[0]
    extra = _extra_log_key(datetime.now(UTC) + timedelta(minutes=2))
    produced.dest.put_bytes(extra, produced.dest.get_bytes(existing))
    code, out = run_validate(produced, capsys=capsys)
    assert code == 0, out
    assert f"Note: Log file {extra}: not yet covered by a digest" in out
    assert "1 log files not yet covered by a digest (not counted above)" in out
    assert "5/5 log files valid" in out
    # ... but a pending file must still be a well-formed log file
    produced.dest.delete(extra)
    produced.dest.put_bytes(extra, b"not a log file")
    _invalid(produced, capsys, extra, "not yet covered by a digest and")


def _log_with_events(p: Produced, at_least: int) -> str:
    """A delivered log file holding at least ``at_least`` events (keys sort by a random suffix
    within a minute, so an index alone does not say which file it is)."""
    for key in p.logs():
        raw = reference.decompress((p.bucket / key).read_bytes(), "zstd")
        if raw.count(b"\n") - 2 >= at_least:
            return key
    raise AssertionError(f"no log file with {at_least} events")


def test_two_events_swapped(produced: Produced, capsys: pytest.CaptureFixture[str]) -> None:
    key = _log_with_events(produced, 2)
    _rewrite_log(produced, key, lambda body: [body[1], body[0], *body[2:]])
    out = _invalid(produced, capsys, key, "modified")
    assert any(key in line and "chain" in line for line in out.splitlines()), out


def test_event_inserted(produced: Produced, capsys: pytest.CaptureFixture[str]) -> None:
    key = produced.logs()[2]
    _rewrite_log(produced, key, lambda body: [*body[:1], body[0], *body[1:]])
    out = _invalid(produced, capsys, key, "modified")
    assert any(key in line and "events" in line for line in out.splitlines()), out


def test_digest_moved(produced: Produced, capsys: pytest.CaptureFixture[str]) -> None:
    src = produced.digests()[0]
    parts = layout.parse_digest_key(src)
    assert parts is not None
    moved = layout.digest_object_key(
        prefix="",
        organization_id="",
        account=ACCOUNT,
        region=REGION,
        trail_name="main",
        home_region=REGION,
        end=parts.end - timedelta(hours=5),
    )
    d = produced.dest
    d.put_bytes(moved, d.get_bytes(src), d.get_metadata(src))
    _invalid(produced, capsys, moved, "moved")


def test_digest_signed_by_another_key(
    produced: Produced, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    other = Signer.load_or_create(tmp_path / "other-keys")
    key = produced.digests()[-1]
    d = produced.dest
    doc = json.loads(gzip.decompress(d.get_bytes(key)))
    doc["digestPublicKeyFingerprint"] = other.fingerprint
    raw = json.dumps(doc, separators=(",", ":")).encode()
    sig = other.sign(
        signing_string(
            doc["digestEndTime"],
            "bucket",
            key,
            hashlib.sha256(raw).hexdigest(),
            doc["previousDigestSignature"],
        )
    )
    d.delete(key)
    d.put_bytes(key, gzip.compress(raw), {"signature": sig, "signature-algorithm": "SHA256withRSA"})
    _invalid(produced, capsys, key, "bad signature")
    # same fingerprint kept, but signed by the other key: still caught
    doc["digestPublicKeyFingerprint"] = produced.signer.fingerprint
    raw = json.dumps(doc, separators=(",", ":")).encode()
    sig = other.sign(
        signing_string(
            doc["digestEndTime"],
            "bucket",
            key,
            hashlib.sha256(raw).hexdigest(),
            doc["previousDigestSignature"],
        )
    )
    d.delete(key)
    d.put_bytes(key, gzip.compress(raw), {"signature": sig, "signature-algorithm": "SHA256withRSA"})
    _invalid(produced, capsys, key, "bad signature")


def test_cli_subprocess(produced: Produced) -> None:
    """The real console entry point, as a user runs it."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "trailseal.cli",
            "validate",
            "--destination",
            f"file://{produced.bucket}",
            "--public-key",
            str(produced.pubkey),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3/3 digest files valid" in proc.stdout


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_any_flipped_content_byte_fails(
    pristine: Produced,
    tmp_path_factory: pytest.TempPathFactory,
    data: st.DataObject,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One flipped byte anywhere in the content of any delivered log file or digest (the bytes
    the hashes and signatures cover) makes validation fail."""
    root = tmp_path_factory.mktemp("flip")
    shutil.copytree(pristine.bucket, root / "bucket")
    p = Produced(root, root / "bucket", pristine.pubkey, pristine.signer)
    key = data.draw(st.sampled_from(sorted(p.logs() + p.digests())), label="object")
    compression = "gzip" if key.endswith(".gz") else "zstd"
    path = p.bucket / key
    raw = bytearray(reference.decompress(path.read_bytes(), compression))
    i = data.draw(st.integers(0, len(raw) - 1), label="offset")
    raw[i] ^= data.draw(st.integers(1, 255), label="mask")
    path.write_bytes(reference.compress(bytes(raw), compression))
    code, out = run_validate(p, capsys=capsys)
    assert code == 1, out
    assert key in out
    shutil.rmtree(root)


def test_corrupt_compressed_digest_is_reported(
    produced: Produced, capsys: pytest.CaptureFixture[str]
) -> None:
    """A flipped byte in a digest's deflate data is a finding, not a crash."""
    key = produced.digests()[0]
    path = produced.bucket / key
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    _invalid(produced, capsys, key, "cannot be read")
