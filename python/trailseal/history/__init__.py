"""The event history: what LookupEvents and ``trailseal lookup`` read (issue 4).

A side path off the pipeline. The database is ``<data_dir>/history/events.db`` (SQLite, WAL),
owned by :class:`trailseal._core.History` (all SQLite access is in Rust; never open the file
from Python). :meth:`EventHistory.run` tails the spool: every :data:`POLL_SECS` (or sooner when
poked) it indexes, in a worker thread, whatever whole zstd frames and sealed files are new, so it
may lag but never slows ingest; after a crash it catches up from the spool at start. Every
:data:`RETENTION_EVERY_SECS` it deletes events whose eventTime is older than ``[history] days``
in small transactions.

What is in it: every event some trail took (an event routed to several trails once); events no
trail selects are written nowhere, so they are not in the history either. LookupEvents' default
category is every event that is not an Insight event (management, data and network activity
events a trail logged); ``EventCategory: insight`` gives Insight events only.

The uploader asks :meth:`EventHistory.wait_covered` before it removes a delivered file from the
spool, so nothing leaves the spool unindexed. When the history fails (a damaged database), it
logs an ERROR and stops gating delivery: the history then lags until ``trailseal history
rebuild``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import trio

from trailseal import _core
from trailseal.config import HistoryConfig

log = logging.getLogger(__name__)

POLL_SECS = 0.25
"""How often the spool is looked at for new frames."""
BATCH_EVENTS = 50_000
"""Events indexed per call (one transaction per file touched); the loop goes on while more."""
RETENTION_EVERY_SECS = 60.0
RETENTION_STEP_ROWS = 2_000
"""Events deleted per transaction (short, so lookups and indexing interleave)."""
DAY_MS = 86_400_000


def database_path(data_dir: Path) -> Path:
    return data_dir / "history" / "events.db"


class EventHistory:
    """The daemon's event history (open it with :meth:`open`)."""

    def __init__(self, core: _core.History, spool_dir: Path, config: HistoryConfig) -> None:
        self.core = core
        self.spool_dir = spool_dir
        self.config = config
        self.failed: str | None = None
        """Why indexing stopped (None while it works)."""
        self._poke = trio.Event()
        self._indexing = trio.Lock()

    @classmethod
    async def open(cls, data_dir: Path, config: HistoryConfig) -> EventHistory:
        path = database_path(data_dir)
        core = await trio.to_thread.run_sync(_core.History, str(path))
        return cls(core, data_dir / "spool", config)

    def poke(self) -> None:
        """Index soon (e.g. after a group commit)."""
        self._poke.set()

    async def index_now(self) -> int:
        """Index everything new in the spool now; returns the events newly added."""
        inserted = 0
        async with self._indexing:
            while True:
                report = await trio.to_thread.run_sync(
                    self.core.index_spool, str(self.spool_dir), BATCH_EVENTS
                )
                inserted += report.inserted
                if not report.more:
                    return inserted

    async def expire_now(self, now_ms: int | None = None) -> int:
        """Delete events older than ``[history] days`` (nothing when 0); returns how many."""
        if self.config.days <= 0:
            return 0
        cutoff = (now_ms if now_ms is not None else int(time.time() * 1000)) - (
            self.config.days * DAY_MS
        )
        removed = 0
        while True:
            n = await trio.to_thread.run_sync(self.core.expire, cutoff, RETENTION_STEP_ROWS)
            removed += n
            if n < RETENTION_STEP_ROWS:
                return removed
            await trio.lowlevel.checkpoint()  # let lookups and indexing in between

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Index the spool continuously, enforce retention; runs until cancelled."""
        task_status.started()
        next_expiry = 0.0
        while True:
            try:
                await self.index_now()
                if trio.current_time() >= next_expiry:
                    removed = await self.expire_now()
                    if removed:
                        log.info(
                            "event history: %d events past %d days removed",
                            removed,
                            self.config.days,
                        )
                    next_expiry = trio.current_time() + RETENTION_EVERY_SECS
            except _core.CoreError as exc:
                if self.failed is None:
                    log.error(
                        "event history: %s; LookupEvents misses events from now on: stop the "
                        "daemon and run `trailseal history rebuild`",
                        exc,
                    )
                self.failed = str(exc)
            with trio.move_on_after(POLL_SECS):
                await self._poke.wait()
            self._poke = trio.Event()

    async def wait_covered(self, trail: str, seq: int) -> None:
        """Return once the trail's sealed file ``seq`` is wholly indexed (indexing it now if
        needed); returns at once when the history has failed."""
        while self.failed is None:
            if await trio.to_thread.run_sync(self.core.covered, trail, seq):
                return
            try:
                await self.index_now()
            except _core.CoreError as exc:
                self.failed = str(exc)
                log.error("event history: %s; delivery goes on without it", exc)
                return
            if await trio.to_thread.run_sync(self.core.covered, trail, seq):
                return
            await trio.sleep(POLL_SECS)  # e.g. a gzip seal still transcoding
