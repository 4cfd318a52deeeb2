"""trailseal._core through the built module: batches, sealing, dedup, recovery, verification.

The sealed files are checked with python-zstandard and the pure-Python reference verifier
(tests/reference.py), independently of the Rust code that wrote them.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from reference import HEAD, TAIL, ZERO_CHAIN, compress, decompress
from reference import verify_log as reference_verify
from trailseal import _core
from trailseal.errors import TrailsealError

ACCOUNT = "111122223333"
REGION = "us-east-1"
RECEIVED_MS = 1767225600123


def ev(event_id: str, name: str = "PutObject", **extra: object) -> bytes:
    body = {"eventName": name, "eventSource": "s3.amazonaws.com", "eventID": event_id, **extra}
    return json.dumps(body).encode()


Parts = list[tuple[int, str, str | None, int]]


def batch(*parts: list[bytes], peer: str = "unix:uid=1000,pid=42") -> tuple[bytes, Parts]:
    data = b""
    spec: Parts = []
    for i, lines in enumerate(parts):
        data += b"".join(line + b"\n" for line in lines)
        spec.append((len(data), f"{peer}#{i}", None if i == 0 else "agent-a", RECEIVED_MS))
    return data, spec


def open_core(spool: Path, trails: list[str] | None = None) -> _core.Core:
    return _core.Core(str(spool), trails or ["t"], account_id=ACCOUNT, region=REGION)


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "spool"


def test_batch_across_parts_numbers_errors_per_part_and_seals_the_document(spool: Path) -> None:
    core = open_core(spool, ["a", "b"])
    data, parts = batch(
        [ev("e1"), b"{not json", b"   ", ev("e2")],
        [b'{"eventSource":"s3.amazonaws.com"}', b"", ev("e3", "GetObject")],
    )
    # \r\n endings are accepted too
    data = data.replace(ev("e2") + b"\n", ev("e2") + b"\r\n")
    parts = [(parts[0][0] + 1, *parts[0][1:]), (parts[1][0] + 1, *parts[1][1:])]
    r = core.process(data, parts)
    assert (r.accepted, r.duplicates, r.rejected) == (3, 0, 2)
    assert r.lines == [3, 2]
    assert [(p, n, code) for p, n, code, _ in r.errors] == [
        (0, 2, "InvalidJson"),
        (1, 1, "MissingField"),
    ]
    assert "eventName" in r.errors[1][3]
    core.sync()
    assert sorted((s.trail, s.event_count) for s in core.open_segments()) == [("a", 3), ("b", 3)]

    sealed = core.seal("a", ACCOUNT, REGION, "AWSLogs/key-a.json.zst")
    assert sealed is not None
    assert core.seal("a", ACCOUNT, REGION, "again") is None
    raw = Path(sealed.path).read_bytes()
    content = decompress(raw, "zstd")
    events = content[len(HEAD) : -len(TAIL)].rstrip(b"\n").split(b",\n")
    assert content == HEAD + b",\n".join(events) + b"\n" + TAIL
    parsed = [json.loads(e) for e in events]
    assert [p["eventID"] for p in parsed] == ["e1", "e2", "e3"]
    assert parsed[0]["receipt"] == {
        "receivedAt": "2026-01-01T00:00:00.123Z",
        "peer": "unix:uid=1000,pid=42#0",
        "agent": None,
    }
    assert parsed[2]["receipt"]["agent"] == "agent-a"
    ref = reference_verify(raw, "zstd", ZERO_CHAIN)
    assert ref.problems == []
    assert (sealed.sha256, sealed.chain_end, sealed.event_count) == (
        ref.sha256,
        ref.chain_end,
        3,
    )
    assert sealed.chain_start == ZERO_CHAIN
    assert sealed.compressed_bytes == len(raw)
    assert sealed.uncompressed_bytes == len(content)
    assert sealed.oldest_event_time == "2026-01-01T00:00:00Z"
    manifest = json.loads(Path(sealed.manifest_path).read_text())
    assert manifest["object_key"] == "AWSLogs/key-a.json.zst"
    assert manifest["sha256"] == sealed.sha256
    assert [f.seq for f in core.sealed_files("a")] == [sealed.seq]
    assert core.sealed_files("b") == []
    # The other trail got the same events in its own file.
    other = core.seal("b", ACCOUNT, REGION, "k-b")
    assert other is not None and other.sha256 == sealed.sha256
    core.remove_sealed("a", sealed.seq)
    assert core.sealed_files("a") == []
    assert not Path(sealed.path).exists()


def test_chain_continues_across_files_and_restarts(spool: Path) -> None:
    core = open_core(spool)
    data, parts = batch([ev("x1"), ev("x2")])
    core.process(data, parts)
    first = core.seal("t", ACCOUNT, REGION, "k1")
    data, parts = batch([ev("x3")])
    core.process(data, parts)
    second = core.seal("t", ACCOUNT, REGION, "k2")
    assert first is not None and second is not None
    assert second.chain_start == first.chain_end
    assert second.seq > first.seq
    del core
    core = open_core(spool)
    data, parts = batch([ev("x4")])
    core.process(data, parts)
    third = core.seal("t", ACCOUNT, REGION, "k3")
    assert third is not None
    assert third.chain_start == second.chain_end
    assert third.seq > second.seq
    ref = reference_verify(Path(third.path).read_bytes(), "zstd", third.chain_start)
    assert ref.chain_end == third.chain_end


def test_dedup_within_a_batch_and_across_reopen(spool: Path) -> None:
    core = open_core(spool)
    data, parts = batch([ev("d1"), ev("d1", "Other")], [ev("d1"), ev("d2")])
    r = core.process(data, parts)
    assert (r.accepted, r.duplicates, r.lines) == (2, 2, [2, 2])
    core.sync()
    del core
    # Reopened with d1, d2 still in the open segment: recovered from it.
    core = open_core(spool)
    data, parts = batch([ev("d2"), ev("d3")])
    r = core.process(data, parts)
    assert (r.accepted, r.duplicates) == (1, 1)
    assert core.seal("t", ACCOUNT, REGION, "k") is not None
    del core
    # After the seal they come from the dedup journal.
    core = open_core(spool)
    data, parts = batch([ev("d1"), ev("d3"), ev("d4")])
    r = core.process(data, parts)
    assert (r.accepted, r.duplicates) == (1, 2)


def test_recovery_truncates_a_torn_tail_and_keeps_whole_frames(spool: Path) -> None:
    core = open_core(spool)
    for i in range(3):
        data, parts = batch([ev(f"r{i}a"), ev(f"r{i}b")])
        core.process(data, parts)
    core.sync()
    (seg,) = core.open_segments()
    del core
    path = Path(seg.path)
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(size - 7)
    core = open_core(spool)
    notes = core.recovery_notes()
    assert len(notes) == 1 and seg.path in notes[0] and "torn tail" in notes[0]
    (seg,) = core.open_segments()
    assert seg.event_count == 4
    # The lost events were never acknowledged: a resend is accepted, not a duplicate.
    data, parts = batch([ev("r2a"), ev("r2b"), ev("r1b")])
    r = core.process(data, parts)
    assert (r.accepted, r.duplicates) == (2, 1)
    sealed = core.seal("t", ACCOUNT, REGION, "k")
    assert sealed is not None
    ref = reference_verify(Path(sealed.path).read_bytes(), "zstd", ZERO_CHAIN)
    assert ref.problems == []
    assert [e["eventID"] for e in ref.events] == ["r0a", "r0b", "r1a", "r1b", "r2a", "r2b"]
    assert ref.chain_end == sealed.chain_end


def test_heads_missing_is_reported_not_silent(spool: Path) -> None:
    core = open_core(spool)
    data, parts = batch([ev("h1")])
    core.process(data, parts)
    sealed = core.seal("t", ACCOUNT, REGION, "k")
    assert sealed is not None
    core.remove_sealed("t", sealed.seq)
    del core
    (spool / "t" / "heads.json").unlink()
    core = open_core(spool)
    assert any("heads.json" in n and "from zero" in n for n in core.recovery_notes())
    core.process(*batch([ev("h2")]))
    again = core.seal("t", ACCOUNT, REGION, "k2")
    assert again is not None and again.chain_start == ZERO_CHAIN


def test_verify_log_good_and_tampered(spool: Path) -> None:
    core = open_core(spool)
    core.process(*batch([ev("v1"), ev("v2", requestParameters={"bucketName": "b"}), ev("v3")]))
    sealed = core.seal("t", ACCOUNT, REGION, "k")
    assert sealed is not None
    raw = Path(sealed.path).read_bytes()
    good = _core.verify_log(raw, "zstd", sealed.chain_start)
    assert good.problems == []
    assert (good.sha256, good.chain_end, good.event_count) == (
        sealed.sha256,
        sealed.chain_end,
        3,
    )
    assert good.event_ids == ["v1", "v2", "v3"]
    as_gzip = compress(decompress(raw, "zstd"), "gzip")
    assert _core.verify_log(as_gzip, "gzip", ZERO_CHAIN).problems == []

    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0x40
    assert _core.verify_log(bytes(flipped), "zstd", ZERO_CHAIN).problems != []

    content = decompress(raw, "zstd")
    lines = content.split(b"\n")
    lines[1], lines[2] = lines[2], lines[1]  # events 1 and 2 (neither is last: both end in ",")
    swapped = _core.verify_log(compress(b"\n".join(lines), "zstd"), "zstd", ZERO_CHAIN)
    assert swapped.problems == []
    assert swapped.chain_end != sealed.chain_end

    spaced = content.replace(b'"bucketName":"b"', b'"bucketName": "b"')
    report = _core.verify_log(compress(spaced, "zstd"), "zstd", ZERO_CHAIN)
    assert len(report.problems) == 1 and report.problems[0].startswith("event 2:")

    with pytest.raises(ValueError, match="compression"):
        _core.verify_log(raw, "brotli", ZERO_CHAIN)
    with pytest.raises(ValueError, match="chain_start"):
        _core.verify_log(raw, "zstd", "00")


def test_frames_per_batch_and_stream(spool: Path) -> None:
    core = open_core(spool)
    other = ev("s2", recipientAccountId="444455556666")
    core.process(*batch([ev("s1"), other]))
    core.process(*batch([ev("s3")]))
    segs = {s.account: s for s in core.open_segments()}
    assert set(segs) == {ACCOUNT, "444455556666"}
    raw = Path(segs[ACCOUNT].path).read_bytes()
    frames = 0
    while raw:
        size = zstandard.frame_content_size(raw)
        assert size > 0  # every frame records its content size
        params = zstandard.get_frame_parameters(raw)
        assert params.has_checksum
        obj = zstandard.ZstdDecompressor().decompressobj()
        obj.decompress(raw)
        raw = obj.unused_data
        frames += 1
    assert frames == 2


def test_data_in_pieces_is_processed_as_if_joined(tmp_path: Path) -> None:
    data, parts = batch(
        [ev("p1"), b"{not json", ev("p2")],
        [ev("p3"), b"", ev("p4", "GetObject")],
        [],
        [b"[1]", ev("p5")],
    )
    ends = [0] + [end for end, *_ in parts]
    pieces = [data[a:b] for a, b in itertools.pairwise(ends)]
    views = [memoryview(data)[a:b] for a, b in itertools.pairwise(ends)]
    sealed = []
    for name, arg in (("joined", data), ("pieces", pieces), ("views", views)):
        core = open_core(tmp_path / name)
        r = core.process(arg, parts)
        assert (r.accepted, r.rejected, r.lines) == (5, 2, [3, 2, 0, 2])
        assert [(p, n, code) for p, n, code, _ in r.errors] == [
            (0, 2, "InvalidJson"),
            (3, 1, "NotAnObject"),
        ]
        s = core.seal("t", ACCOUNT, REGION, "k")
        assert s is not None
        sealed.append(decompress(Path(s.path).read_bytes(), "zstd"))
    assert sealed[0] == sealed[1] == sealed[2]
    # only what cannot change while the core reads it: a writable buffer is refused
    core = open_core(tmp_path / "writable")
    for writable in (bytearray(data), [memoryview(bytearray(data))]):
        with pytest.raises(ValueError, match="read-only"):
            core.process(writable, parts)  # type: ignore[arg-type]
    # several parts in one piece are fine; a part across two pieces is refused, nothing written
    core = open_core(tmp_path / "bad")
    assert core.process([data[: ends[2]], data[ends[2] :]], parts).accepted == 5
    with pytest.raises(_core.CoreError, match=r"part 0 \(bytes 0..\d+\) spans two pieces"):
        core.process([data[:10], data[10:]], parts)


def test_errors_are_trailseal_errors(spool: Path, tmp_path: Path) -> None:
    assert issubclass(_core.CoreError, TrailsealError)
    core = open_core(spool)
    with pytest.raises(_core.CoreError, match="parts cover"):
        core.process(b"{}\n", [(1, "p", None, 0)])
    with pytest.raises(_core.CoreError, match="no trail"):
        core.seal("nope", ACCOUNT, REGION, "k")
    with pytest.raises(_core.CoreError, match="trail name"):
        open_core(tmp_path / "other", ["../escape"])
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(_core.CoreError, match=str(blocker)):
        open_core(blocker / "spool")
    assert os.access(spool, os.W_OK)


def test_canonicalize_and_chain_step() -> None:
    assert _core.canonicalize(b'{"b": 1, "a": [true, null]}') == b'{"a":[true,null],"b":1}'
    with pytest.raises(ValueError):
        _core.canonicalize(b'{"a":1,"a":2}')
    c1 = _core.chain_step(bytes(32), b"{}")
    assert c1.hex() == "961af672d320bfb80e482edf9e092930b12b6f10f28ac4913d1d64c49219da68"
    with pytest.raises(ValueError, match="32 bytes"):
        _core.chain_step(b"short", b"{}")


def test_malloc_arenas_can_be_limited_on_glibc() -> None:
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    assert _core.limit_malloc_arenas(4) is True
