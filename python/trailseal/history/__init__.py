"""The event history: what LookupEvents and ``trailseal lookup`` read (issue 4).

A side path off the pipeline. The database is ``<data_dir>/history/events.db`` (SQLite, WAL),
owned by :class:`trailseal._core.History` (all SQLite access is in Rust; never open the file
from Python). :meth:`EventHistory.run` starts the core's indexer thread, which tails the spool:
every :data:`POLL_SECS` (or sooner when poked) it indexes whatever whole zstd frames and sealed
files are new. The thread never touches Python (no GIL) and runs at SCHED_IDLE priority, so it
takes only CPU that ingest leaves idle: under a saturating load it lags, and catches up when the
load eases; after a crash it catches up from the spool at start. Every
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
import os
import time
from pathlib import Path

import trio

from trailseal import _core
from trailseal.config import HistoryConfig

log = logging.getLogger(__name__)

POLL_SECS = 0.25
"""How often the spool is looked at for new frames."""
BATCH_EVENTS = 10_000
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
        """Why indexing fails (None while it works)."""

    @classmethod
    async def open(cls, data_dir: Path, config: HistoryConfig) -> EventHistory:
        path = database_path(data_dir)
        core = await trio.to_thread.run_sync(_core.History, str(path))
        return cls(core, data_dir / "spool", config)

    def poke(self) -> None:
        """Index soon (e.g. after a group commit)."""
        self.core.poke()

    async def index_now(self) -> int:
        """Index everything new in the spool now, in this call (tools and tests; the daemon's
        indexing runs in :meth:`run`'s thread); returns the events newly added."""
        inserted = 0
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

    def _check(self) -> None:
        error = self.core.indexer_error()
        if error is not None and self.failed is None:
            log.error(
                "event history: %s; LookupEvents misses new events until this is fixed (stop "
                "the daemon and run `trailseal history rebuild` if the database is damaged)",
                error,
            )
        elif error is None and self.failed is not None:
            log.warning("event history: indexing works again")
        self.failed = error

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the indexer thread (at idle CPU priority, so that indexing only takes CPU that
        ingest leaves idle: under a saturating load it lags and catches up afterwards), enforce
        retention every :data:`RETENTION_EVERY_SECS`; runs until cancelled, then stops the
        thread."""
        tid = self.core.start_indexer(
            str(self.spool_dir), poll_ms=int(POLL_SECS * 1000), batch=BATCH_EVENTS
        )
        lower_priority(tid)
        task_status.started()
        try:
            while True:
                try:
                    removed = await self.expire_now()
                    if removed:
                        log.info(
                            "event history: %d events older than %d days removed",
                            removed,
                            self.config.days,
                        )
                except _core.CoreError as exc:
                    log.error("event history: retention failed: %s", exc)
                with trio.move_on_after(RETENTION_EVERY_SECS):
                    while True:
                        self._check()
                        await trio.sleep(1.0)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.core.stop_indexer)

    async def wait_covered(self, trail: str, seq: int) -> None:
        """Return once the trail's sealed file ``seq`` is wholly indexed; at once when indexing
        is failing (delivery must not stop for the history)."""
        self.core.poke()
        while not await trio.to_thread.run_sync(self.core.covered, trail, seq):
            self._check()
            if self.failed is not None:
                return
            await trio.sleep(0.05)


def lower_priority(tid: int) -> None:
    """Give the thread ``tid`` Linux's SCHED_IDLE policy (it runs only when a CPU is otherwise
    idle), else the lowest nice value; no-op where neither is possible."""
    if tid <= 0:
        return
    try:
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        return
    except (AttributeError, OSError):
        pass
    try:
        os.setpriority(os.PRIO_PROCESS, tid, 19)
    except (AttributeError, OSError):
        log.debug("event history: cannot lower the indexer thread's priority")
