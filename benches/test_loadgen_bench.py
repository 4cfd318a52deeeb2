"""The load generator on its own, against conftest's fake server: its protocol code is right,
it cannot hang on a silent server, and how fast it can push (its ceiling: the e2e figures mean
something only while the daemon is well below it)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pytest_benchmark.fixture import BenchmarkFixture

import loadgen
import naive_pipeline
from conftest import FakeServer


def test_reply_parser_acks_errors_and_split_lines() -> None:
    parser = loadgen.ReplyParser()
    assert parser.feed(b'{"ack":3}\n{"ac') == [3]
    assert parser.feed(b'k":17}\n') == [17]
    assert parser.feed(
        b'{"error":{"line":4,"code":"InvalidJson","message":"m"}}\n{"ack": 20}\n'
    ) == [20]
    assert parser.errors == [{"line": 4, "code": "InvalidJson", "message": "m"}]
    assert parser.feed(b"garbage\n\n") == []
    assert parser.other == [b"garbage"]


def test_encode_chunks_keeps_every_line_and_numbers_them() -> None:
    lines = [b"x" * n for n in range(1, 200)]
    chunks = loadgen.encode_chunks(lines, chunk_bytes=500)
    assert b"".join(c.data for c in chunks) == b"".join(line + b"\n" for line in lines)
    assert [c.end_line for c in chunks] == sorted({c.end_line for c in chunks})
    assert chunks[-1].end_line == len(lines)
    for chunk in chunks:
        assert chunk.data.endswith(b"\n")
    assert sum(len(s) for s in loadgen.split_connections(lines, 7)) == len(lines)


def test_metric_value_sums_label_sets() -> None:
    text = (
        "# HELP trailseal_log_files_sealed_total Log files sealed in the spool\n"
        "# TYPE trailseal_log_files_sealed_total counter\n"
        'trailseal_log_files_sealed_total{trail="a"} 3.0\n'
        'trailseal_log_files_sealed_total{trail="b"} 4.0\n'
        "trailseal_log_files_sealed_created 1.7e9\n"
        "trailseal_history_indexed_events 1234.0\n"
        "trailseal_history_indexed_events_other 9.0\n"
    )
    assert loadgen.metric_value(text, "trailseal_log_files_sealed_total") == 7
    assert loadgen.metric_value(text, "trailseal_history_indexed_events") == 1234
    assert loadgen.metric_value(text, "trailseal_log_files_delivered_total") is None


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert loadgen.percentile(values, 50) == 50.0
    assert loadgen.percentile(values, 99) == 99.0
    assert loadgen.percentile([7.0], 99) == 7.0
    assert loadgen.percentile([], 50) == 0.0


def test_push_gets_every_ack_and_error(
    fake_server: Callable[..., FakeServer], lines: list[bytes]
) -> None:
    server = fake_server()
    sent = list(lines[:3000])
    sent[10] = b'{"bad":1}'
    sent[2999] = b'{"bad":2}'
    per_connection = loadgen.split_connections(sent, 3)
    result = loadgen.push(
        server.connect, per_connection, chunk_bytes=64 * 1024, window_bytes=256 * 1024, timeout=60
    )
    assert result.failures == []
    assert result.lines == result.acked == 3000
    expected_chunks = sum(len(loadgen.encode_chunks(s, 64 * 1024)) for s in per_connection)
    assert len(result.latencies) == expected_chunks
    assert sorted(e["line"] for e in result.errors) == [11, 1000]  # per-connection numbering


def test_push_gives_up_on_a_server_that_never_acks(
    fake_server: Callable[..., FakeServer], lines: list[bytes]
) -> None:
    server = fake_server(ack=False)
    result = loadgen.push(server.connect, [lines[:100]], timeout=0.5)
    assert result.acked == 0
    assert len(result.failures) == 1
    assert "timed out with 0/100 lines acknowledged" in result.failures[0]


def test_naive_pipeline_output_is_a_valid_log_file(tmp_path: Path) -> None:
    import hashlib

    import orjson
    import zstandard

    sample = [b'{"b":1,"a":"x"}', b'{"z":[1,2],"eventName":"GetObject"}', b'{"k":null}']
    out = tmp_path / "n.json.zst"
    result = naive_pipeline.run(sample, out, batch_bytes=20)
    with open(out, "rb") as raw:
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        content = reader.read()
    assert content == (
        b'{"Records":[\n{"a":"x","b":1},\n{"eventName":"GetObject","z":[1,2]},\n{"k":null}\n]}\n'
    )
    value = bytes(32)
    for line in content.splitlines()[1:-1]:
        canonical = orjson.dumps(orjson.loads(line.rstrip(b",")), option=orjson.OPT_SORT_KEYS)
        value = hashlib.sha256(value + hashlib.sha256(canonical).digest()).digest()
    assert result.chain_end == value
    assert result.uncompressed_bytes == len(content)
    assert result.compressed_bytes == out.stat().st_size


def test_loadgen_ceiling(
    benchmark: BenchmarkFixture, fake_server: Callable[..., FakeServer], lines: list[bytes]
) -> None:
    """Events/s the load generator pushes into a server that only counts lines and acks."""
    server = fake_server()
    per_connection = loadgen.split_connections(lines, 4)
    result = benchmark.pedantic(  # type: ignore[no-untyped-call]
        loadgen.push, args=(server.connect, per_connection), rounds=3, iterations=1
    )
    benchmark.extra_info.update(
        events=len(lines),
        bytes=sum(len(line) + 1 for line in lines),
        connections=4,
        correct=result.acked == len(lines) and not result.failures,
    )
    assert result.acked == len(lines)
