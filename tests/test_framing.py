"""The sans-IO line framer: chunks of whole lines, line numbers, oversized lines, bounded memory."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trailseal.ingest.framing import Chunk, EventTooLarge, LineFramer, count_lines


def numbered(items: list[Chunk | EventTooLarge]) -> list[tuple[int, bytes | str]]:
    """Flatten framer output to (line number, line content without ending | "TOO LARGE")."""
    out: list[tuple[int, bytes | str]] = []
    for item in items:
        if isinstance(item, EventTooLarge):
            out.append((item.line, "TOO LARGE"))
            continue
        data = bytes(item.data)
        assert data.endswith(b"\n")
        number = item.first_line
        lines = data.split(b"\n")[:-1]
        seen = 0
        for line in lines:
            content = line.rstrip(b"\r")
            if content.strip(b" \t") == b"":
                continue
            out.append((number, content))
            number += 1
            seen += 1
        assert seen == item.lines
    return out


def run(
    framer: LineFramer, pieces: list[bytes], *, eof: bool = True
) -> list[Chunk | EventTooLarge]:
    out: list[Chunk | EventTooLarge] = []
    for piece in pieces:
        out += framer.feed(piece)
    if eof:
        out += framer.eof()
    return out


def test_whole_lines_one_chunk() -> None:
    framer = LineFramer(100)
    items = framer.feed(b'{"a":1}\n{"b":2}\r\n{"c"')
    assert items == [Chunk(b'{"a":1}\n{"b":2}\r\n', 1, 2)]
    assert framer.buffered == 4
    assert framer.eof() == [Chunk(b'{"c"\n', 3, 1)]
    assert framer.eof() == []


def test_whole_lines_are_not_copied() -> None:
    framer = LineFramer(100)
    first = b'{"a":1}\n{"b"'
    assert framer.feed(first) == [Chunk(first[:8], 1, 1)]
    second = b':2}\n{"c":3}\n{"d":4}\n{"e"'
    head, body = framer.feed(second)
    # the line begun before is joined to its start; the lines after it stay in what was read
    assert head == Chunk(b'{"b":2}\n', 2, 1)
    assert isinstance(body, Chunk) and isinstance(body.data, memoryview)
    assert body.data.obj is second and body.data.readonly
    assert (bytes(body.data), body.first_line, body.lines) == (b'{"c":3}\n{"d":4}\n', 3, 2)
    third = b':5}\n{"f":6}\n'
    assert framer.feed(third) == [Chunk(b'{"e":5}\n', 5, 1), Chunk(b'{"f":6}\n', 6, 1)]
    # data of whole lines only, nothing held before: passed on as it is
    whole = b'{"g":7}\n'
    assert framer.feed(whole)[0].data is whole


def test_blank_lines_skipped_and_not_counted() -> None:
    framer = LineFramer(100)
    data = b"\n\r\n a \n  \t\n\nb\r\n\r\n"
    assert numbered(run(framer, [data])) == [(1, b" a "), (2, b"b")]
    assert count_lines(b"\n\n\n") == 0
    assert count_lines(b"x\n\ny\n") == 2
    # A chunk of only blank lines is not emitted.
    assert LineFramer(10).feed(b"\n\r\n") == []


def test_no_newline_at_eof_counts_as_line() -> None:
    assert numbered(run(LineFramer(100), [b"a\nb"])) == [(1, b"a"), (2, b"b")]


DATA = b'{"x":1}\r\n\n{"y":22}\n   \n{"z":333}\r\nlast'
EXPECTED = [(1, b'{"x":1}'), (2, b'{"y":22}'), (3, b'{"z":333}'), (4, b"last")]


@pytest.mark.parametrize("cut", range(len(DATA) + 1))
def test_split_at_every_byte_position(cut: int) -> None:
    assert numbered(run(LineFramer(100), [DATA[:cut], DATA[cut:]])) == EXPECTED


def test_byte_at_a_time() -> None:
    framer = LineFramer(100)
    pieces = [DATA[i : i + 1] for i in range(len(DATA))]
    assert numbered(run(framer, pieces)) == EXPECTED


def test_oversized_line_across_reads_reported_once_and_discarded() -> None:
    framer = LineFramer(10)
    items = run(framer, [b"ok1\n" + b"x" * 8, b"y" * 8, b"z" * 100, b"w" * 5 + b"\nok2\n"])
    assert numbered(items) == [(1, b"ok1"), (2, "TOO LARGE"), (3, b"ok2")]
    too_large = [i for i in items if isinstance(i, EventTooLarge)]
    assert len(too_large) == 1
    assert too_large[0].code == "EventTooLarge"
    assert "line 2" in too_large[0].message


def test_line_exactly_at_limit_with_crlf_split_is_kept() -> None:
    # 10 bytes of content + "\r" buffered, "\n" arrives later: still a valid-size line.
    framer = LineFramer(10)
    items = run(framer, [b"a" * 10 + b"\r", b"\nb\n"])
    assert numbered(items) == [(1, b"a" * 10), (2, b"b")]


def test_oversized_line_arriving_whole_is_passed_to_the_core() -> None:
    # Whole lines are never scanned for length in Python: the core rejects them.
    framer = LineFramer(10)
    assert numbered(run(framer, [b"a" * 50 + b"\nb\n"])) == [(1, b"a" * 50), (2, b"b")]


def test_oversized_unterminated_line_at_eof() -> None:
    framer = LineFramer(10)
    assert numbered(run(framer, [b"a\n" + b"x" * 30])) == [(1, b"a"), (2, "TOO LARGE")]


def test_buffer_stays_bounded_for_10_mib_line_without_newline() -> None:
    limit = 262144
    read_size = 256 * 1024
    framer = LineFramer(limit)
    errors = 0
    for _ in range((10 * 1024 * 1024) // read_size):
        for item in framer.feed(b"x" * read_size):
            assert isinstance(item, EventTooLarge)
            errors += 1
        assert framer.buffered <= limit + 1
    assert errors == 1
    tail = run(framer, [b"tail\n{}\n"])
    assert numbered(tail) == [(2, b"{}")]


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(
        st.one_of(
            st.binary(min_size=0, max_size=20).map(lambda b: b.replace(b"\n", b"")),
            st.sampled_from([b"", b"\r", b" \t"]),
        ),
        max_size=20,
    ),
    crlf=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6),
)
def test_any_split_gives_the_same_numbering(
    lines: list[bytes], crlf: bool, cuts: list[int]
) -> None:
    limit = 16
    ending = b"\r\n" if crlf else b"\n"
    data = b"".join(line + ending for line in lines)
    whole = numbered(run(LineFramer(limit), [data]))
    points = sorted({min(c, len(data)) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    split = numbered(run(LineFramer(limit), pieces))

    # Oversized lines are reported by the framer or passed whole to the core depending on the
    # split; either way they keep their line number and every other line is identical.
    def norm(items: list[tuple[int, bytes | str]]) -> list[tuple[int, bytes | str]]:
        return [(n, "TOO LARGE" if isinstance(c, str) or len(c) > limit else c) for n, c in items]

    assert norm(split) == norm(whole)
