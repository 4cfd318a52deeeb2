"""Type stubs of the native module ``trailseal._core`` (rust/trailseal-py).

The Rust core owns every per-event operation; Python crosses into it once per
batch. Every method that does per-event work or file I/O releases the GIL.

Spool layout owned by :class:`Core` (one directory per trail under ``spool_dir``)::

    <trail>/open/<seq>-<account>-<region>.seg       open segment: zstd frames (an Insight
                                                    stream's names end in ``+insight``)
    <trail>/open/<seq>-<account>-<region>.seg.json  its metadata (chain start, opened at)
    <trail>/open/<seq>-<account>-<region>.gz.tmp    gzip trail: a seal in progress (removed at open)
    <trail>/sealed/<seq>-<account>-<region>.log     sealed log file (compressed bytes, final)
    <trail>/sealed/<seq>-<account>-<region>.json    its manifest (SealedFile fields as JSON)
    <trail>/heads.json                              last seq, chain head per stream (account/region)
    dedup.ids                                       eventID journal (last ``dedup_capacity`` IDs)
    spool.lock                                      flock'd by the one Core using the spool

(``<region>`` is escaped in file names: bytes other than ``[A-Za-z0-9._-]`` become ``%XX``.)

``seq`` is a zero-padded 12-digit number, increasing per trail across restarts, so
sorting file names gives delivery order.

Routing: each trail's event selectors are evaluated in the core on the batch; an accepted event
is written once to every trail that selects it (a trail with ``multi_region=False`` only takes
events whose awsRegion is the Core's ``region``). Dedup is per Core, before routing. Open
segments are always zstd; a gzip trail's segment is transcoded at seal into one gzip member.
A stream is (trail, account, region, kind): Insight events (``eventCategory`` "Insight") have
their own segments, chain and sealed files (``insight=True``), the others share the rest.
"""

import os
from pathlib import Path
from typing import Self, final

from trailseal.errors import TrailsealError

__version__: str

@final
class PendingSync:
    """What :meth:`Core.prepare_sync` collected; opaque."""

class CoreError(TrailsealError):
    """I/O or state error inside the core (message names the file and what failed)."""

@final
class TrailSpec:
    """One trail's settings for :class:`Core`. Raises ValueError for selectors CloudTrail would
    refuse (see :func:`check_selectors`), a compression other than "zstd"/"gzip", or a
    ``gzip_level`` outside 1-9."""

    name: str
    selectors_json: str
    """``{"event_selectors": [...]}``, ``{"advanced_event_selectors": [...]}`` or ``"{}"`` (all
    management events, read and write)."""
    multi_region: bool
    """False: only events whose awsRegion is the Core's home ``region``."""
    compression: str
    """"zstd" or "gzip" (sealed log files; the open segment is zstd either way)."""
    gzip_level: int
    """Deflate level 1-9 of gzip log files."""

    def __new__(
        cls,
        name: str,
        *,
        selectors_json: str = "{}",
        multi_region: bool = True,
        compression: str = "zstd",
        gzip_level: int = 6,
    ) -> Self: ...

@final
class BatchResult:
    accepted: int
    """Events newly written (an event counts once however many trails take it)."""
    unrouted: int
    """Valid new events that no trail selects: acknowledged, written nowhere (their eventIDs
    still enter the dedup window)."""
    duplicates: int
    """Events whose eventID was already in the dedup window (acknowledged, not written)."""
    duplicates_per_part: list[int]
    """Per part: how many of ``duplicates`` it held (an HTTP ingest request reports its own)."""
    rejected: int
    errors: list[tuple[int, int, str, str]]
    """(part index, line number within the part counting from 1, code, message), in input order."""
    lines: list[int]
    """Per part: the number of non-blank lines it held (all of them are settled by this batch)."""
    uncompressed_bytes: int
    """Uncompressed log-file bytes appended by this batch, all trails."""
    compressed_bytes: int
    """Compressed bytes appended by this batch, all trails."""

@final
class OpenSegment:
    trail: str
    account: str
    region: str
    insight: bool
    """The stream's Insight events (their own segments, chain and log files)."""
    seq: int
    path: str
    event_count: int
    uncompressed_bytes: int
    opened_at_ms: int
    """Wall-clock milliseconds since the epoch when the segment's first event was written."""

@final
class SealedFile:
    trail: str
    account: str
    region: str
    insight: bool
    """Insight events, delivered under ``CloudTrail-Insight/``; else the stream's other events."""
    seq: int
    object_key: str
    path: str
    """The sealed log file in the spool (compressed bytes exactly as they are to be delivered)."""
    manifest_path: str
    sha256: str
    """Lower-case hex SHA-256 of the uncompressed content."""
    event_count: int
    oldest_event_time: str
    newest_event_time: str
    chain_start: str
    chain_end: str
    compression: str
    """"zstd", or "gzip" for a gzip trail (``path`` then holds one gzip member; same sha256)."""
    compressed_bytes: int
    uncompressed_bytes: int

@final
class VerifyReport:
    sha256: str
    """Lower-case hex SHA-256 of the uncompressed content; "" when the data did not decompress."""
    event_count: int
    oldest_event_time: str | None
    newest_event_time: str | None
    chain_start: str
    chain_end: str
    event_ids: list[str]
    problems: list[str]
    """Empty when the file is a well-formed log file: content layout of FORMATS.md §4, every
    event in canonical form, the chain from ``chain_start`` to ``chain_end`` recomputed. Each
    problem names the event index (from 1) and what is wrong. Swapped or altered events that
    are still canonical show as a ``chain_end``/``sha256`` differing from the digest's."""

@final
class Core:
    """The spool of one daemon. Thread-safe (calls are serialized). After a CoreError from
    ``process``, ``sync`` or ``seal`` it refuses further work: open a new Core on the same
    ``spool_dir`` (after dropping this one) to recover from what is on disk."""

    def __new__(
        cls,
        spool_dir: str,
        trails: list[str | TrailSpec],
        *,
        account_id: str,
        region: str,
        max_event_bytes: int = 262144,
        add_receipt: bool = True,
        dedup_capacity: int = 1_000_000,
        zstd_level: int = 1,
    ) -> Self:
        """Open (creating if needed) the spool, recover every open segment (torn tail truncated
        to the last whole frame, chain head recomputed) and load the dedup journal. A segment
        closed by a seal that was cut short is moved to ``sealed/`` (a gzip trail's transcoded
        again) when its manifest was written, else reopened. ``trails``: names (default
        settings) or :class:`TrailSpec`, at most 64. Raises CoreError. Only one Core may use a
        spool at a time."""

    def recovery_notes(self) -> list[str]:
        """Human-readable notes of what recovery did at open (truncated tails, restarted chains)."""

    def feed_history(self, history: History | None) -> None:
        """Hand ``history`` every zstd frame written from now on with its events' lookup values
        (hashed while the events are built), so that it indexes them without reading the spool
        back (None: stop). Only a cache: what it misses, the history reads from the files."""

    def process(
        self,
        data: bytes | memoryview | list[bytes | memoryview],
        parts: list[tuple[int, str, str | None, int]],
    ) -> BatchResult:
        """Process one batch. ``data`` is whole NDJSON lines (``\\n`` or ``\\r\\n``; blank lines are
        skipped and not counted), as one ``bytes`` (or read-only ``memoryview`` of bytes) or a list
        of them (read where they are, never joined or copied; anything else is a ValueError).
        ``parts`` splits it by source: (end offset in ``data`` — in the list's concatenation —,
        peer, agent or None, receivedAt in epoch milliseconds); the parts cover ``data`` in order,
        and no part spans two items of a list.
        Per line: parse, validate, fill defaults, add receipt, canonicalize, evaluate every
        trail's selectors, dedup, route to the trails that select it, chain, and append the
        batch's zstd frames (one per touched stream, or several cut between events when it is
        large) to each stream's open segment (written, not yet fsync'd). The per-event work and
        the compression run on every core (a rayon pool sized by the process's CPU affinity);
        results and errors come back in input order. Releases the GIL."""

    def sync(self) -> None:
        """fsync every segment (and directory) written since the last sync. After it returns, every
        event accepted by ``process`` calls that returned before it began survives a crash.
        Releases the GIL; holds the Core only while collecting what to fsync, so a ``process``
        in another thread may run during the fsync (syncs themselves run one at a time)."""

    def prepare_sync(self) -> PendingSync:
        """The first half of :meth:`sync`, under the Core: collect what was written so far (a
        later ``process`` is not included). Pass the result to :meth:`finish_sync`; finish them
        one at a time in the order prepared, and do not mix with :meth:`sync` concurrently."""

    def finish_sync(self, pending: PendingSync) -> None:
        """fsync what ``pending`` collected without holding the Core (a ``process`` may run
        meanwhile); a second call with it does nothing. Releases the GIL."""

    def open_segments(self) -> list[OpenSegment]:
        """The open, non-empty segments."""

    def seal(
        self, trail: str, account: str, region: str, object_key: str, *, insight: bool = False
    ) -> SealedFile | None:
        """Seal the stream's open segment (``insight``: the stream's Insight events): append the
        closing frame, fsync, (gzip trail: transcode into one gzip member, fsync), write the
        manifest and move both into ``sealed/`` (atomically, fsync'd); a gzip transcode runs
        after the spool is released. Returns None when the stream has no open segment. The next
        event of the stream starts a new segment whose chain start is this one's chain end.
        Releases the GIL."""

    def sealed_files(self, trail: str) -> list[SealedFile]:
        """Sealed, not yet removed files of the trail in delivery order (oldest seq first)."""

    def remove_sealed(self, trail: str, seq: int) -> None:
        """Delete a delivered sealed file and its manifest."""

    def upsert_trail(self, spec: TrailSpec) -> None:
        """Add a trail at run time (its spool directory created and recovered like at open), or
        change an existing one's selectors, ``multi_region`` and compression. Takes effect from
        the next ``process``; an open segment stays (a changed compression applies at its seal).
        Raises CoreError beyond 64 trails. Releases the GIL."""

    def set_logging(self, trail: str, on: bool) -> None:
        """Turn routing to ``trail`` on or off (StartLogging / StopLogging). While off no event is
        written to it; what it holds is still sealed and delivered. Raises CoreError for an
        unknown trail."""

    def remove_trail(self, trail: str) -> None:
        """Remove a trail that holds nothing any more (no open segment, no sealed file) and delete
        its spool directory; refused (CoreError) otherwise, and for the Core's last trail.
        Releases the GIL."""

@final
class IndexReport:
    """What one :meth:`History.index_spool` call did."""

    events: int
    """Events read from the spool (an event several trails took counts once per trail)."""
    inserted: int
    """Events newly added to the history."""
    more: bool
    """The call stopped at its ``max_events`` budget: more is waiting."""
    fed: int
    """Of ``events``, those whose frames and lookup values the core handed over
    (:meth:`Core.feed_history`); the others were read back from the spool files."""

@final
class HistoryEvent:
    """One event found by :meth:`History.lookup` (its lookup fields, read from the record)."""

    event_id: str
    event_name: str
    event_time: int
    """Epoch seconds."""
    read_only: bool
    username: str | None
    """``userIdentity.userName``, else the session name of an assumed role."""
    access_key_id: str | None
    event_source: str
    insight: bool
    resources: list[tuple[str | None, str | None]]
    """(type, ARN) of each entry of the record's ``resources``."""
    cloudtrail_event: str
    """The record: its canonical JSON text."""

@final
class History:
    """The event history: a SQLite database (WAL) of every event in the spool, for LookupEvents.
    All SQLite access of the process is here (never open the file from Python). Thread-safe:
    indexing and retention take a writer connection, lookups a reader connection of their own."""

    def __new__(cls, path: str | os.PathLike[str]) -> Self:
        """Open (creating if needed) the database. Raises CoreError (e.g. another schema)."""

    def index_spool(
        self, spool_dir: str | os.PathLike[str], max_events: int = 100_000
    ) -> IndexReport:
        """Index what is new in the spool (every trail directory): whole zstd frames of open
        segments, sealed files not wholly indexed; about ``max_events`` events at most (whole
        frames). Progress is stored with the rows it covers. Releases the GIL."""

    def start_indexer(
        self, spool_dir: str | os.PathLike[str], poll_ms: int = 250, batch: int = 50_000
    ) -> int:
        """Start a thread (once) that runs :meth:`index_spool` every ``poll_ms`` or when poked,
        never touching Python; returns its Linux thread id (0 when unknown) so the caller can
        lower its CPU priority. While ingest runs (the core fed it, or it was poked, within the
        last 0.5 s) it leaves merging blocks for later."""

    def poke(self) -> None:
        """Make the indexer thread look at the spool now."""

    def indexed(self) -> int:
        """Events the indexer thread added since it started (0 without one)."""

    def fed(self) -> int:
        """Events the indexer thread took as the core handed them over (0 without one)."""

    def indexer_error(self) -> str | None:
        """Why the indexer thread's last attempt failed (None when it succeeded)."""

    def stop_indexer(self) -> None:
        """Stop the indexer thread after its current call and wait for it. Releases the GIL."""

    def covered(self, trail: str, seq: int) -> bool:
        """Whether the trail's sealed file ``seq`` is wholly indexed (so it may be removed)."""

    def add_log(self, data: bytes, compression: str) -> tuple[int, int]:
        """Index a delivered log file's bytes ("zstd" or "gzip"): (events, newly inserted).
        Raises CoreError when it is not a log file. Releases the GIL."""

    def expire(self, cutoff_ms: int, max_rows: int = 5000) -> int:
        """Delete up to ``max_rows`` events whose eventTime is before ``cutoff_ms`` (epoch ms),
        oldest first, in one transaction; returns how many. Releases the GIL."""

    def count(self) -> int:
        """Events in the history."""

    def lookup(
        self,
        *,
        attribute_key: str | None = None,
        attribute_value: str | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
        insight: bool = False,
        limit: int = 50,
        after: tuple[int, int] | None = None,
    ) -> tuple[list[HistoryEvent], tuple[int, int] | None]:
        """Up to ``limit`` events, newest first (eventTime, then indexing order), with the one
        attribute (CloudTrail's AttributeKey names; ValueError for another), eventTime within
        [start_ms, end_ms], Insight events when ``insight`` else every other category, strictly
        after the cursor ``after``; and the cursor of the next page when more remain. Releases
        the GIL."""

def canonicalize(data: bytes) -> bytes:
    """RFC 8785 canonical form of one JSON text (any value). Raises ValueError naming it."""

def chain_step(previous: bytes, canonical_event: bytes) -> bytes:
    """``SHA-256(previous ‖ SHA-256(canonical_event))`` (FORMATS.md §3); ``previous``: 32 bytes."""

def count_lines(data: bytes | memoryview) -> int:
    """Non-blank lines in ``data``, by the spool's rule: lines end with ``\\n``; a blank line is
    empty or holds only spaces, tabs and ``\\r``; a final piece after the last ``\\n`` counts
    when it is not blank. ``data``: bytes or a read-only memoryview of them. Releases the GIL for
    inputs of 1 MiB or more."""

def verify_log(data: bytes, compression: str, chain_start: str) -> VerifyReport:
    """Verify one log file's bytes (``compression`` "zstd" or "gzip"). Besides the content, the
    compressed encoding must be trailseal's own (single-segment zstd frames with checksum, no
    skippable frames; one gzip member with header ``1f8b0800 00000000 00ff``): any other is a
    problem starting "modified or not written by trailseal" naming the byte offset. Releases the
    GIL."""

def check_selectors(selectors_json: str) -> None:
    """Check a trail's event selectors: a JSON object ``{"event_selectors": [...]}``,
    ``{"advanced_event_selectors": [...]}`` or ``{}``, in CloudTrail's shapes and member names.
    Raises ValueError naming the selector index, the member and the rule when CloudTrail would
    refuse them (InvalidEventSelectorsException)."""

def selector_matches(selectors_json: str, canonical_event: bytes) -> bool:
    """Whether a trail with these selectors logs this event (a JSON object after defaults, e.g.
    canonical bytes). For tests and tools; the spool evaluates selectors per batch. Raises
    ValueError for refused selectors or an event missing a defaulted field."""

def limit_malloc_arenas(arenas: int) -> bool:
    """Let glibc's malloc keep at most ``arenas`` arenas for threads made from now on
    (``mallopt(M_ARENA_MAX)``); False where the C library is not glibc. The daemon calls it at
    start, before its threads exist."""

HISTORY_SCHEMA: int
"""The history database schema this trailseal reads and writes."""

def history_files_dir(path: str | os.PathLike[str]) -> Path:
    """The directory of the files the history database at ``path`` keeps its frames in."""

def history_schema(path: str | os.PathLike[str]) -> int | None:
    """The schema version of the history database at ``path``, without changing it (None: no
    file, or no version). Raises CoreError when it is not a SQLite database."""
