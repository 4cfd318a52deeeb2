"""Sans-IO line framing of the ingest protocol (FORMATS.md §2): bytes in, whole-line chunks and
oversized-line errors out. No sockets, no clocks; the listener feeds it what it reads.

Invariants:

- Every :class:`Chunk` holds whole lines only (each ends with ``\\n``; ``\\r\\n`` is passed on
  as is, the core accepts both), in the order they were received. What was read is not copied:
  a chunk is the data read itself, or a read-only ``memoryview`` of it, except for the line
  completed by the start of the data, which is joined to its beginning held from before (one
  line copied, as its own chunk). So :meth:`LineFramer.feed` yields at most two chunks.
- Lines are numbered per connection from 1, counting only non-blank lines. A blank line is empty
  or holds only spaces, tabs and ``\\r``; it is passed on (the core skips it too) but not counted.
  ``Chunk.first_line`` is the number of its first non-blank line, ``Chunk.lines`` how many it
  holds.
- A line whose content (without its line ending) is longer than ``max_event_bytes`` and does not
  fit in what is buffered yields one :class:`EventTooLarge` with its line number; the rest of
  that line is discarded as it arrives. Oversized lines that arrive whole are passed on in a
  chunk (the core rejects them with the same code), so Python never scans line lengths.
- Memory: the framer keeps at most ``max_event_bytes + 1`` bytes of an unterminated line between
  calls, so a 10 MiB line without a newline costs nothing more than the read buffer.
- At EOF a final unterminated line counts as a line (a ``\\n`` is appended to it).
"""

from __future__ import annotations

from dataclasses import dataclass

from trailseal import _core

__all__ = ["Chunk", "EventTooLarge", "LineFramer", "count_lines"]


def count_lines(data: bytes | memoryview) -> int:
    """Non-blank lines in ``data`` (whole lines, each ending with ``\\n``), counted by the core
    with the spool's own rule (memchr over the newlines; the line numbers of acks and errors
    depend on the two agreeing)."""
    return _core.count_lines(data)


@dataclass(frozen=True, slots=True)
class Chunk:
    data: bytes | memoryview
    """Whole lines, each ending with ``\\n`` (a read-only memoryview: of the bytes read)."""
    first_line: int
    """Number of the first non-blank line in ``data`` (1-based, per connection)."""
    lines: int
    """Non-blank lines in ``data``."""


@dataclass(frozen=True, slots=True)
class EventTooLarge:
    line: int
    limit: int

    code = "EventTooLarge"

    @property
    def message(self) -> str:
        return (
            f"line {self.line} is longer than the {self.limit}-byte event limit "
            "(ingest.max_event_bytes); the rest of the line was discarded"
        )


class LineFramer:
    """Frames one connection's byte stream into :class:`Chunk` and :class:`EventTooLarge`."""

    def __init__(self, max_event_bytes: int) -> None:
        self.max_event_bytes = max_event_bytes
        self.next_line = 1
        """The number the next non-blank line will get."""
        self._partial = b""
        self._discarding = False

    @property
    def buffered(self) -> int:
        """Bytes of an unterminated line held between calls (≤ ``max_event_bytes + 1``)."""
        return len(self._partial)

    def feed(self, data: bytes) -> list[Chunk | EventTooLarge]:
        """Take the next bytes read; return what they completed, in order."""
        out: list[Chunk | EventTooLarge] = []
        if self._discarding:
            end = data.find(b"\n")
            if end < 0:
                return out
            self._discarding = False
            data = data[end + 1 :]
        # The whole lines stay where they were read (the core reads them there); only a line
        # begun in an earlier read is copied, joined to its beginning.
        cut = data.rfind(b"\n") + 1
        if cut:
            start = 0
            if self._partial:
                start = data.find(b"\n") + 1
                self._emit(out, self._partial + data[:start])
            if start < cut:
                whole = data if start == 0 and cut == len(data) else memoryview(data)[start:cut]
                self._emit(out, whole)
            self._partial = data[cut:]
        else:
            self._partial = self._partial + data if self._partial else data
        # Content plus a possible "\r" still within the limit: keep waiting for its end.
        if len(self._partial) > self.max_event_bytes + 1:
            out.append(EventTooLarge(self.next_line, self.max_event_bytes))
            self.next_line += 1
            self._partial = b""
            self._discarding = True
        return out

    def eof(self) -> list[Chunk | EventTooLarge]:
        """The peer finished sending: a final unterminated line counts as a line."""
        out: list[Chunk | EventTooLarge] = []
        if self._partial:
            self._emit(out, self._partial + b"\n")
            self._partial = b""
        self._discarding = False
        return out

    def _emit(self, out: list[Chunk | EventTooLarge], data: bytes | memoryview) -> None:
        lines = count_lines(data)
        if lines:
            out.append(Chunk(data, self.next_line, lines))
            self.next_line += lines
