"""The pipeline between the listeners and the uploaders: the batcher (group commit) and the
sealer (sealing policy), plus the per-connection state they settle lines on.

- Listeners put :class:`Submission` (a chunk of whole lines, or an oversized-line error) into
  one bounded channel; when it is full they stop reading (backpressure).
- The batcher is two stages joined by a channel of :data:`SYNC_QUEUE` batches. Stage 1 takes
  one submission (blocking), then everything already waiting up to :data:`BATCH_MAX_BYTES` /
  :data:`BATCH_MAX_CHUNKS`, and in ONE worker-thread call runs ``Core.process`` and
  ``Core.prepare_sync`` (what to fsync: exactly this batch's writes, taken before the next
  ``process`` can start) and reads ``Core.open_segments`` for the sealer (so the sealing check
  after a batch costs no second thread hop). Stage 2 takes the processed batches in order, runs
  ``Core.finish_sync`` (the fsync, without holding the Core, so stage 1's next ``process``
  overlaps it), and only then settles
  each connection: its errors, then its new ack (:meth:`Connection.settle`, never blocking).
  While the threads work, connections keep filling the channel, so the next fsync serves all
  of them (group commit); an ack is always sent after the fsync that covers it, in order.
- The sealer seals open segments that reached ``seal_after_bytes`` or ``seal_after_secs``
  (after each batch and on a 1 s timer; all of them at shutdown) and hands each
  ``SealedFile`` to its trail's uploader channel.
- Every call into the Core but ``finish_sync`` goes through one ``CapacityLimiter(1)`` (the
  Core serializes them anyway; the limiter keeps trio's thread pool from queueing behind it);
  ``finish_sync`` has its own: it does not hold the Core.
- Python never loops over events here: only over chunks and over rejected lines.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import trio

from trailseal import _core, metrics
from trailseal.config import Config, TrailConfig
from trailseal.delivery import layout
from trailseal.ingest.framing import Chunk, EventTooLarge

log = logging.getLogger("trailseal.pipeline")

BATCH_MAX_BYTES = 8 * 1024 * 1024
BATCH_MAX_CHUNKS = 4096
REPLY_HIGH_WATER_BYTES = 1024 * 1024
"""A connection whose unsent replies exceed this stops being read until its client reads."""
SEAL_CHECK_SECS = 1.0
SYNC_QUEUE = 1
"""Processed batches waiting for stage 2 (sync + settle) besides the one it is syncing."""

T = TypeVar("T")


def error_reply(line: int, code: str, message: str) -> bytes:
    body = {"error": {"line": line, "code": code, "message": message}}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


class Connection:
    """One ingest connection as the pipeline sees it: who it is, what was submitted and settled,
    and the queue of reply lines its writer task sends (never blocks the batcher)."""

    def __init__(self, peer: str, agent: str | None) -> None:
        self.peer = peer
        self.agent = agent
        self.submitted = 0
        """Highest line number handed to the pipeline."""
        self.settled = 0
        """Highest line number settled (stored, duplicate or rejected)."""
        self.duplicates = 0
        """Lines settled as duplicates of stored events (HTTP ingest reports them)."""
        self.acked = -1
        """Last ack queued (-1: none yet)."""
        self.closed = False
        """The client went away: replies are dropped."""
        self.stopping = False
        """The daemon is shutting down: no more reading."""
        self.finished = False
        """No more replies will be queued; the writer flushes and stops."""
        self._out: list[bytes] = []
        self.out_bytes = 0
        self._wake_writer = trio.Event()
        self._progress = trio.Event()

    # -- used by the batcher -----------------------------------------------------------------

    def settle(self, upto: int, errors: list[bytes]) -> None:
        """Lines ≤ ``upto`` are settled; queue their error replies, then the new ack."""
        for reply in errors:
            self._queue(reply)
        if upto > self.settled:
            self.settled = upto
        if self.settled > self.acked:
            self._queue_ack()
        self._notify_progress()

    # -- used by the connection's tasks --------------------------------------------------------

    def finish(self) -> None:
        """Everything submitted is settled (or the client left): send the final ack and stop."""
        if self.acked != self.settled:
            self._queue_ack()
        self.finished = True
        self._wake_writer.set()

    def mark_closed(self) -> None:
        self.closed = True
        self._out.clear()
        self.out_bytes = 0
        self._wake_writer.set()
        self._notify_progress()

    async def wait_settled(self) -> None:
        while self.settled < self.submitted and not self.closed:
            await self._progress.wait()

    async def wait_drained(self) -> None:
        """Block the reader while the client is not reading its replies (until shutdown)."""
        while self.out_bytes > REPLY_HIGH_WATER_BYTES and not self.closed and not self.stopping:
            await self._progress.wait()

    def stop_reading(self) -> None:
        """Shutdown: a reader held back by unread replies stops waiting and finishes."""
        self.stopping = True
        self._notify_progress()

    async def next_replies(self) -> bytes | None:
        """The writer's next bytes to send; None when finished and everything was sent."""
        while True:
            if self._out:
                data = b"".join(self._out)
                self._out.clear()
                self.out_bytes = 0
                self._notify_progress()
                return data
            if self.finished or self.closed:
                return None
            await self._wake_writer.wait()
            self._wake_writer = trio.Event()

    def _queue_ack(self) -> None:
        self.acked = self.settled
        self._queue(b'{"ack":%d}\n' % self.settled)

    def _queue(self, reply: bytes) -> None:
        if self.closed:
            return
        self._out.append(reply)
        self.out_bytes += len(reply)
        self._wake_writer.set()

    def _notify_progress(self) -> None:
        self._progress.set()
        self._progress = trio.Event()


@dataclass(frozen=True, slots=True)
class Submission:
    connection: Connection
    item: Chunk | EventTooLarge
    received_ms: int


@dataclass
class PipelineStats:
    batches: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    sealed_files: int = 0
    line_count_mismatches: int = 0


class CoreRunner:
    """Runs Core calls in worker threads: one at a time, except ``sync`` beside them."""

    def __init__(self, core: _core.Core) -> None:
        self.core = core
        self.limiter = trio.CapacityLimiter(1)
        self.sync_limiter = trio.CapacityLimiter(1)
        self.seal_limiter = trio.CapacityLimiter(1)

    async def call(self, fn: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(fn, limiter=self.limiter)

    async def seal(
        self, trail: str, account: str, region: str, key: str, *, insight: bool = False
    ) -> _core.SealedFile | None:
        """``Core.seal`` on its own worker: a gzip trail's transcode runs outside the Core's lock,
        so it must not hold up ``process`` calls either."""
        seal = functools.partial(self.core.seal, trail, account, region, key, insight=insight)
        return await trio.to_thread.run_sync(seal, limiter=self.seal_limiter)

    async def finish_sync(self, pending: _core.PendingSync) -> None:
        """``Core.finish_sync``: may overlap the ``process`` of the next batch."""
        fsync = functools.partial(self.core.finish_sync, pending)
        await trio.to_thread.run_sync(fsync, limiter=self.sync_limiter)


# ---------------------------------------------------------------------------------------------
# Batcher


@dataclass(slots=True)
class Processed:
    """A batch after ``Core.process``, waiting for its fsync and settlement."""

    batch: list[Submission]
    result: _core.BatchResult | None
    """None: the batch held no chunk (only oversized-line errors), nothing to fsync."""
    pending: _core.PendingSync | None = None
    """What to fsync before settling (None when ``result`` is None)."""


async def run_batcher(
    *,
    runner: CoreRunner,
    submissions: trio.MemoryReceiveChannel[Submission],
    sealer: Sealer | None = None,
    stats: PipelineStats | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Group-commit batches until ``submissions`` is closed and drained and every batch is
    synced and settled."""
    stats = stats if stats is not None else PipelineStats()
    to_sync, processed = trio.open_memory_channel[Processed](SYNC_QUEUE)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_sync_and_settle, runner, processed, stats)
        task_status.started()
        async with to_sync, submissions:
            while True:
                try:
                    first = await submissions.receive()
                except trio.EndOfChannel:
                    return
                if sealer is not None:
                    await sealer.wait_spool_room()
                batch = [first]
                size = _size(first)
                while len(batch) < BATCH_MAX_CHUNKS and size < BATCH_MAX_BYTES:
                    try:
                        more = submissions.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    batch.append(more)
                    size += _size(more)
                done, segments = await process_batch(runner, batch, stats)
                await to_sync.send(done)
                if sealer is not None and segments is not None:
                    sealer.poke(segments)


async def _sync_and_settle(
    runner: CoreRunner, processed: trio.MemoryReceiveChannel[Processed], stats: PipelineStats
) -> None:
    """Stage 2: in order, fsync what each batch wrote, then settle its connections."""
    async with processed:
        async for done in processed:
            if done.pending is not None:
                await runner.finish_sync(done.pending)
                metrics.FSYNCS.inc()
            settle_batch(done, stats)


def _size(sub: Submission) -> int:
    return len(sub.item.data) if isinstance(sub.item, Chunk) else 0


async def process_batch(
    runner: CoreRunner, batch: list[Submission], stats: PipelineStats
) -> tuple[Processed, list[_core.OpenSegment] | None]:
    """Stage 1: ``Core.process`` the batch's chunks (not yet durable). Returns it for
    :func:`settle_batch` after ``Core.sync``, and the open segments as of right after the batch
    (None when it held no chunk)."""
    chunks = [sub.item for sub in batch if isinstance(sub.item, Chunk)]
    if not chunks:
        return Processed(batch, None), None
    parts: list[tuple[int, str, str | None, int]] = []
    end = 0
    for sub in batch:
        if isinstance(sub.item, Chunk):
            end += len(sub.item.data)
            parts.append((end, sub.connection.peer, sub.connection.agent, sub.received_ms))
    pieces = [chunk.data for chunk in chunks]  # not joined: the core reads them where they are
    core = runner.core

    def work() -> tuple[_core.BatchResult, _core.PendingSync, list[_core.OpenSegment]]:
        return core.process(pieces, parts), core.prepare_sync(), core.open_segments()

    result, pending, segments = await runner.call(work)
    stats.batches += 1
    stats.accepted += result.accepted
    stats.duplicates += result.duplicates
    stats.rejected += result.rejected
    metrics.BATCHES.inc()
    metrics.INPUT_BYTES.inc(end)
    metrics.EVENTS_ACCEPTED.inc(result.accepted)
    metrics.EVENTS_DUPLICATE.inc(result.duplicates)
    if result.lines != [chunk.lines for chunk in chunks]:
        stats.line_count_mismatches += 1
        log.warning("the core counted lines differently from the framer: acks may be off")
    return Processed(batch, result, pending), segments


def settle_batch(done: Processed, stats: PipelineStats) -> None:
    """After the fsync covering ``done``: settle each connection once, its error replies in
    input order, then the highest line settled."""
    part_errors: dict[int, list[tuple[int, str, str]]] = {}
    if done.result is not None:
        for part, rel, code, message in done.result.errors:
            part_errors.setdefault(part, []).append((rel, code, message))
            metrics.EVENTS_REJECTED.labels(code=code).inc()  # per rejected line, not per event
    settled: dict[int, tuple[Connection, int, list[bytes]]] = {}
    part = 0
    for sub in done.batch:
        conn = sub.connection
        entry = settled.setdefault(id(conn), (conn, 0, []))
        replies = entry[2]
        item = sub.item
        if isinstance(item, Chunk):
            for rel, code, message in part_errors.get(part, ()):
                replies.append(error_reply(item.first_line + rel - 1, code, message))
            if done.result is not None:
                conn.duplicates += done.result.duplicates_per_part[part]
            upto = item.first_line + item.lines - 1
            part += 1
        else:
            stats.rejected += 1
            metrics.EVENTS_REJECTED.labels(code=item.code).inc()
            replies.append(error_reply(item.line, item.code, item.message))
            upto = item.line
        settled[id(conn)] = (conn, max(entry[1], upto), replies)
    for conn, upto, replies in settled.values():
        conn.settle(upto, replies)


# ---------------------------------------------------------------------------------------------
# Sealer


class Sealer:
    """Seals open segments by size, age or at shutdown, and hands them to the uploaders."""

    def __init__(
        self,
        *,
        runner: CoreRunner,
        config: Config,
        prefixes: Mapping[str, str],
        uploads: Mapping[str, trio.MemorySendChannel[_core.SealedFile]] | None,
        stats: PipelineStats | None = None,
        trails: Mapping[str, TrailConfig] | None = None,
    ) -> None:
        self.runner = runner
        self.config = config
        self.trails = trails if trails is not None else config.trails
        """The current trails (the daemon's registry changes it at run time)."""
        self.prefixes = prefixes
        """trail name → destination key prefix."""
        self.uploads = uploads
        """trail name → uploader channel; None: sealed files stay for the uploaders' start scan."""
        self.stats = stats if stats is not None else PipelineStats()
        self._lock = trio.Lock()
        self.spool_bytes = 0
        """Sealed-but-undelivered plus open bytes, as of the last timer tick."""
        self.draining = False
        """Shutdown: the spool cap no longer holds the batcher back."""
        self._room = trio.Event()
        self._room.set()
        self._wake = trio.Event()

    async def wait_spool_room(self) -> None:
        """Hold the batcher (and so, through the full channel, every reader) while the spool is
        over ``[ingest] spool_max_bytes``: backpressure instead of dropping."""
        await self._room.wait()

    def drain(self) -> None:
        """At shutdown: let the batcher finish what was read even over the cap."""
        self.draining = True
        self._room.set()

    async def measure_spool(self) -> None:
        core = self.runner.core

        def usage() -> tuple[int, int, dict[str, tuple[int, int]]]:
            segments = core.open_segments()
            total = sum(seg.uncompressed_bytes for seg in segments)
            backlog: dict[str, tuple[int, int]] = {}
            for trail in list(self.trails):
                try:
                    files = core.sealed_files(trail)
                except _core.CoreError:
                    continue  # removed meanwhile
                size = sum(f.compressed_bytes for f in files)
                backlog[trail] = (len(files), size)
                total += size
            return total, len(segments), backlog

        self.spool_bytes, open_count, backlog = await self.runner.call(usage)
        metrics.OPEN_SEGMENTS.set(open_count)
        for trail, (files, size) in backlog.items():
            metrics.set_backlog(trail, files, size)
        cap = self.config.ingest.spool_max_bytes
        full = cap > 0 and self.spool_bytes >= cap and not self.draining
        if full and self._room.is_set():
            log.error(
                "spool is full (%d bytes >= [ingest] spool_max_bytes=%d): ingest stops reading "
                "until the destination takes sealed files",
                self.spool_bytes,
                cap,
            )
            self._room = trio.Event()
        elif not full and not self._room.is_set():
            log.warning("spool has room again (%d bytes): ingest resumes", self.spool_bytes)
            self._room.set()

    def _due(self, seg: _core.OpenSegment, now_ms: float) -> bool:
        trail = self.trails.get(seg.trail)
        return (
            trail is not None
            and seg.event_count > 0
            and (
                seg.uncompressed_bytes >= trail.seal_after_bytes
                or now_ms - seg.opened_at_ms >= trail.seal_after_secs * 1000
            )
        )

    async def seal_trail(self, name: str) -> None:
        """Seal every open segment of one trail now (StopLogging, DeleteTrail)."""
        await self.check(everything=True, only=name)

    async def check(
        self,
        *,
        everything: bool = False,
        segments: list[_core.OpenSegment] | None = None,
        only: str | None = None,
    ) -> list[_core.SealedFile]:
        """Seal what the policy says is due (everything with ``everything=True``). ``segments``:
        the open segments as just read in the batcher's worker call (saves a thread hop when
        nothing is due); by default they are read here."""
        if segments is not None and not everything:
            now_ms = time.time() * 1000
            if not any(self._due(seg, now_ms) for seg in segments):
                return []
        async with self._lock:
            # Read again under the lock: the timer may have sealed some meanwhile.
            segments = await self.runner.call(self.runner.core.open_segments)
            now_ms = time.time() * 1000
            sealed: list[_core.SealedFile] = []
            for seg in segments:
                trail = self.trails.get(seg.trail)
                if trail is None or seg.event_count == 0 or only not in (None, seg.trail):
                    continue
                if not (everything or self._due(seg, now_ms)):
                    continue
                key = layout.log_object_key(
                    prefix=self.prefixes.get(seg.trail, ""),
                    organization_id=trail.organization_id,
                    account=seg.account,
                    region=seg.region,
                    when=datetime.now(UTC),
                    compression=trail.compression,
                    insight=seg.insight,
                )
                result = await self.runner.seal(
                    seg.trail, seg.account, seg.region, key, insight=seg.insight
                )
                if result is None:
                    continue
                self.stats.sealed_files += 1
                metrics.LOG_FILES_SEALED.labels(trail=result.trail).inc()
                log.debug("sealed %s (%d events) as %s", result.path, result.event_count, key)
                sealed.append(result)
                upload = self.uploads.get(result.trail) if self.uploads is not None else None
                if upload is not None:
                    await upload.send(result)
            return sealed

    def poke(self, segments: list[_core.OpenSegment]) -> None:
        """After a batch: wake :meth:`run` at once when a segment is due. The batcher never seals
        itself, so a slow seal (a gzip transcode) does not hold up ingest."""
        now_ms = time.time() * 1000
        if any(self._due(seg, now_ms) for seg in segments):
            self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The sealing task: every second, or at once when :meth:`poke` finds a segment due;
        runs until cancelled."""
        task_status.started()
        while True:
            with trio.move_on_after(SEAL_CHECK_SECS):
                await self._wake.wait()
            self._wake = trio.Event()
            await self.check()
            await self.measure_spool()
