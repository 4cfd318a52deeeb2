"""Micro benchmarks of the native core's steps on seeded synthetic events, each beside the
pure-Python/C-library reference a naive pipeline would use.

Each bench records ``events``, ``bytes`` (input bytes of the events it handled) and ``correct``
(the output was checked, not just produced) in ``benchmark.extra_info``. The per-call benches
(``canonicalize``, ``chain_step``) include one Python→Rust call per event, which the daemon never
pays: compare them with the batch benches (``process_*``) to see that overhead.
"""

from __future__ import annotations

import hashlib
import itertools
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
import zstandard
from pytest_benchmark.fixture import BenchmarkFixture

import naive_pipeline

PER_EVENT = 2000
"""Events in the per-call benches (enough for a stable figure, small enough to stay fast)."""


def _input_bytes(lines: list[bytes]) -> int:
    return sum(len(line) + 1 for line in lines)


def _record(benchmark: BenchmarkFixture, lines: list[bytes], correct: bool, **extra: Any) -> None:
    benchmark.extra_info.update(events=len(lines), bytes=_input_bytes(lines), correct=correct)
    benchmark.extra_info.update(extra)
    assert correct


@pytest.fixture(scope="module")
def canonical(batch: list[bytes]) -> list[bytes]:
    """The batch's events in canonical form (the core's when it is built, else orjson's)."""
    from trailseal import _core

    if hasattr(_core, "canonicalize"):
        return [_core.canonicalize(line) for line in batch]
    return [orjson.dumps(orjson.loads(line), option=orjson.OPT_SORT_KEYS) for line in batch]


@pytest.fixture
def spool() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="tsb-spool-") as tmp:
        yield Path(tmp)


# ------------------------------------------------------------------ canonicalize


def test_canonicalize_per_event_core(
    benchmark: BenchmarkFixture, core: ModuleType, lines: list[bytes]
) -> None:
    sample = lines[:PER_EVENT]
    canonicalize = core.canonicalize
    out = benchmark(lambda: [canonicalize(line) for line in sample])
    correct = all(
        canonicalize(c) == c and orjson.loads(c) == orjson.loads(line)
        for c, line in zip(out, sample, strict=True)
    )
    _record(benchmark, sample, correct)


def test_canonicalize_per_event_orjson_reference(
    benchmark: BenchmarkFixture, lines: list[bytes]
) -> None:
    """What the naive pipeline does instead: orjson loads + dumps with sorted keys."""
    sample = lines[:PER_EVENT]
    loads, dumps, opt = orjson.loads, orjson.dumps, orjson.OPT_SORT_KEYS
    out = benchmark(lambda: [dumps(loads(line), option=opt) for line in sample])
    correct = all(orjson.loads(c) == orjson.loads(x) for c, x in zip(out, sample, strict=True))
    _record(benchmark, sample, correct)


# ------------------------------------------------------------------ chain


def test_chain_step_per_call_core(
    benchmark: BenchmarkFixture, core: ModuleType, canonical: list[bytes], batch: list[bytes]
) -> None:
    """``chain_step`` called once per event from Python (per-call overhead included)."""
    step = core.chain_step

    def run() -> bytes:
        value = bytes(32)
        for event in canonical:
            value = step(value, event)
        return value

    result = benchmark(run)
    _record(benchmark, batch, result == naive_pipeline.chain(bytes(32), canonical))


def test_chain_hashlib_reference(
    benchmark: BenchmarkFixture, canonical: list[bytes], batch: list[bytes]
) -> None:
    """The naive pipeline's chain: two hashlib SHA-256 calls per event in a Python loop."""
    result = benchmark(naive_pipeline.chain, bytes(32), canonical)
    expected = bytes(32)
    for event in canonical:
        h = hashlib.sha256(expected)
        h.update(hashlib.sha256(event).digest())
        expected = h.digest()
    _record(benchmark, batch, result == expected)


def test_chain_hash_floor(
    benchmark: BenchmarkFixture, canonical: list[bytes], batch: list[bytes]
) -> None:
    """The least any chain over the batch can cost: SHA-256 of all its canonical bytes at once.
    The chain inside a batch is this plus one 64-byte SHA-256 per event."""
    joined = b"".join(canonical)
    digest = benchmark(lambda: hashlib.sha256(joined).digest())
    _record(benchmark, batch, digest == hashlib.sha256(joined).digest())


# ------------------------------------------------------------------ compress


def test_compress_zstd3_reference(
    benchmark: BenchmarkFixture, canonical: list[bytes], batch: list[bytes]
) -> None:
    """zstd level 3 of one batch's canonical log-file bytes, one frame (python-zstandard)."""
    content = b",\n".join(canonical)
    compressor = zstandard.ZstdCompressor(level=3)
    frame = benchmark(compressor.compress, content)
    correct = zstandard.ZstdDecompressor().decompress(frame) == content
    _record(benchmark, batch, correct, compression_ratio=round(len(content) / len(frame), 2))


# ------------------------------------------------------------------ whole batch


def _new_core(core: ModuleType, spool: Path, counter: Iterator[int]) -> Any:
    return core.Core(
        str(spool / f"round-{next(counter)}"),
        ["default"],
        account_id="111122223333",
        region="us-east-1",
    )


def _parts(data: bytes) -> list[tuple[int, str, str | None, int]]:
    return [(len(data), "unix:uid=0,pid=0", None, 1767225600000)]


def _check(result: Any, n: int) -> bool:
    return bool(result.accepted == n and result.rejected == 0 and result.lines == [n])


def test_process_batch_without_fsync(
    benchmark: BenchmarkFixture, core: ModuleType, spool: Path, batch: list[bytes]
) -> None:
    """``Core.process`` on one 4 MiB batch into a fresh spool: parse, validate, canonicalize,
    chain, compress, write (no fsync)."""
    data = b"\n".join(batch) + b"\n"
    counter = itertools.count()
    result = benchmark.pedantic(  # type: ignore[no-untyped-call]
        lambda c: c.process(data, _parts(data)),
        setup=lambda: ((_new_core(core, spool, counter),), {}),
        rounds=5,
        iterations=1,
    )
    _record(
        benchmark,
        batch,
        _check(result, len(batch)),
        compression_ratio=round(result.uncompressed_bytes / result.compressed_bytes, 2),
    )


def test_process_and_sync_batch(
    benchmark: BenchmarkFixture, core: ModuleType, spool: Path, batch: list[bytes]
) -> None:
    """The whole batch as the daemon runs it: ``Core.process`` + ``Core.sync`` (fsync)."""
    data = b"\n".join(batch) + b"\n"
    counter = itertools.count()

    def run(c: Any) -> Any:
        result = c.process(data, _parts(data))
        c.sync()
        return result

    result = benchmark.pedantic(  # type: ignore[no-untyped-call]
        run, setup=lambda: ((_new_core(core, spool, counter),), {}), rounds=5, iterations=1
    )
    _record(benchmark, batch, _check(result, len(batch)))


def test_verify_log_batch(
    benchmark: BenchmarkFixture, core: ModuleType, spool: Path, batch: list[bytes]
) -> None:
    """``verify_log`` of the sealed files holding the batch (one per region in it): decompress,
    check every event's canonical form and recompute the chain (what ``trailseal validate`` pays
    per log file)."""
    data = b"\n".join(batch) + b"\n"
    c = _new_core(core, spool, itertools.count())
    c.process(data, _parts(data))
    sealed = [
        c.seal(s.trail, s.account, s.region, f"bench/{s.region}.json.zst")
        for s in c.open_segments()
    ]
    logs = [(Path(f.path).read_bytes(), f.chain_start) for f in sealed]
    verify = core.verify_log
    reports = benchmark(lambda: [verify(log, "zstd", start) for log, start in logs])
    correct = sum(r.event_count for r in reports) == len(batch) and all(
        r.problems == [] and r.chain_end == f.chain_end and r.sha256 == f.sha256
        for r, f in zip(reports, sealed, strict=True)
    )
    _record(benchmark, batch, correct)
