"""The naive single-process Python pipeline: the baseline the daemon must beat.

What a competent engineer would write in an afternoon with the best pure-Python-ecosystem
libraries, doing the same per-event work as the core minus validation and defaults:
``orjson.loads`` → ``orjson.dumps(OPT_SORT_KEYS)`` (a stand-in for RFC 8785) → the SHA-256
chain of FORMATS.md §3 with ``hashlib`` → ``zstandard`` level 3, one frame per batch appended to
one file in the log-file layout of FORMATS.md §4 (``{"Records":[`` line, events joined by
``,\\n``, closing ``]}`` line), fsync after every batch. No sockets, no acks.

Run alone: ``python benches/naive_pipeline.py --events 100000`` prints one JSON line.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
import zstandard

BATCH_BYTES = 4 * 1024 * 1024
"""Input bytes per batch (one zstd frame and one fsync each), as the core benches use."""

HEADER = b'{"Records":[\n'
FOOTER = b"\n]}\n"


@dataclass
class NaiveResult:
    events: int
    input_bytes: int
    seconds: float
    uncompressed_bytes: int
    compressed_bytes: int
    chain_end: bytes

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def batches(lines: Sequence[bytes], batch_bytes: int = BATCH_BYTES) -> list[list[bytes]]:
    """Split ``lines`` into consecutive groups of about ``batch_bytes`` input bytes each."""
    out: list[list[bytes]] = []
    current: list[bytes] = []
    size = 0
    for line in lines:
        current.append(line)
        size += len(line) + 1
        if size >= batch_bytes:
            out.append(current)
            current, size = [], 0
    if current:
        out.append(current)
    return out


def chain(previous: bytes, canonical: Sequence[bytes]) -> bytes:
    """Fold FORMATS.md §3's ``c_i = SHA-256(c_{i-1} ‖ SHA-256(canonical_i))`` over ``canonical``."""
    sha256 = hashlib.sha256
    value = previous
    for event in canonical:
        value = sha256(value + sha256(event).digest()).digest()
    return value


def run(lines: Sequence[bytes], out_path: Path, *, batch_bytes: int = BATCH_BYTES) -> NaiveResult:
    """Push ``lines`` (NDJSON lines without line endings) through the naive pipeline into
    ``out_path`` (created or truncated) and time it. Splitting into batches is not timed."""
    groups = batches(lines, batch_bytes)
    compressor = zstandard.ZstdCompressor(level=3)
    loads, dumps, sort_keys = orjson.loads, orjson.dumps, orjson.OPT_SORT_KEYS
    value = bytes(32)
    uncompressed = compressed = 0
    first = True
    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        start = time.perf_counter()
        for group in groups:
            canonical = [dumps(loads(line), option=sort_keys) for line in group]
            value = chain(value, canonical)
            body = b",\n".join(canonical)
            content = (HEADER + body) if first else (b",\n" + body)
            first = False
            frame = compressor.compress(content)
            os.write(fd, frame)
            os.fsync(fd)
            uncompressed += len(content)
            compressed += len(frame)
        # the closing line of the log file, as its own frame (what sealing does)
        closing = FOOTER if not first else HEADER + b"]}\n"
        frame = compressor.compress(closing)
        os.write(fd, frame)
        os.fsync(fd)
        seconds = time.perf_counter() - start
    finally:
        os.close(fd)
    uncompressed += len(closing)
    compressed += len(frame)
    return NaiveResult(
        events=len(lines),
        input_bytes=sum(len(line) + 1 for line in lines),
        seconds=seconds,
        uncompressed_bytes=uncompressed,
        compressed_bytes=compressed,
        chain_end=value,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time the naive pipeline on synthetic events.")
    parser.add_argument("--events", type=int, default=100_000, help="events (100000)")
    parser.add_argument("--seed", type=int, default=1, help="synthetic events seed (default 1)")
    args = parser.parse_args(argv)

    from trailseal import synthetic

    lines = synthetic.events(args.events, args.seed)
    with tempfile.TemporaryDirectory(prefix="trailseal-naive-") as tmp:
        result = run(lines, Path(tmp) / "naive.json.zst")
    sys.stdout.write(
        orjson.dumps(
            {
                "events": result.events,
                "seconds": round(result.seconds, 3),
                "events_per_s": round(result.events_per_s),
                "mb_per_s": round(result.input_bytes / result.seconds / 1e6, 1),
                "compression_ratio": round(result.uncompressed_bytes / result.compressed_bytes, 2),
            }
        ).decode()
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
