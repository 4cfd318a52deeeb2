"""The event history: what LookupEvents and ``trailseal lookup`` read (issue 4).

A side path off the pipeline. The database is ``<data_dir>/history/events.db`` (SQLite, WAL),
owned by :class:`trailseal._core.History` (all SQLite access is in Rust; never open the file
from Python); the frames it indexed stay in the spool files, which it keeps under second names
in ``events.db.files/`` (:func:`files_dir`). :meth:`EventHistory.run` starts the core's indexer
thread, which tails the spool: every :data:`POLL_SECS` (or sooner when poked) it indexes
whatever whole zstd frames and sealed files are new, mostly as the core handed them over
(``Core.feed_history``: the lookup values already hashed). The thread never touches Python (no
GIL) and runs below ingest's priority (``[history] indexer_priority``: "idle", the default,
SCHED_IDLE, takes only CPU ingest leaves idle, enough to keep up at ~1 µs per event unless the
machine is busier than ingest alone makes it; "low", nice 10, takes more, at a cost to ingest's
throughput). While ingest runs (the core fed it within 0.5 s) it leaves merging blocks for a
pause; after a crash it catches up from the spool at start. Every :data:`RETENTION_EVERY_SECS`
it deletes events whose eventTime is older than ``[history] history_days`` in small
transactions.

What is in it: every event some trail took (an event routed to several trails once); events no
trail selects are written nowhere, so they are not in the history either. LookupEvents' default
category is every event that is not an Insight event (management, data and network activity
events a trail logged); ``EventCategory: insight`` gives Insight events only.

Nothing leaves the spool unindexed, and delivery never waits for the history: the uploader
hands each delivered file to :meth:`EventHistory.release`, and :meth:`run` removes it from the
spool once it is indexed (a file still waiting at shutdown stays, recorded as delivered, and is
removed after the next start). While the history lags, those files count toward ``[ingest]
spool_max_bytes`` (a WARNING says how many wait). When the history fails (a damaged database),
it logs an ERROR and lets every file go: the history then lags until ``trailseal history
rebuild``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import trio

from trailseal import _core, metrics
from trailseal.config import HistoryConfig

log = logging.getLogger(__name__)

POLL_SECS = 0.25
"""How often the spool is looked at for new frames."""
BATCH_EVENTS = 4_000
"""Events indexed per call (one transaction per file touched); the loop goes on while more."""
RETENTION_EVERY_SECS = 60.0
RETENTION_STEP_ROWS = 2_000
"""Events deleted per transaction (short, so lookups and indexing interleave)."""
DAY_MS = 86_400_000
BACKLOG_WARN_FILES = 64
"""From this many delivered files waiting for the history, a WARNING (at most once a minute)."""


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
        self._releases: list[tuple[str, int, Callable[[], None]]] = []
        """Delivered files waiting in the spool to be indexed: (trail, seq, remove)."""
        self._backlog_warned = 0.0

    @classmethod
    async def open(cls, data_dir: Path, config: HistoryConfig) -> EventHistory:
        """Open (creating) the database. One written by another trailseal's schema is moved
        aside (``events.db.schemaN``) with a WARNING and a new one started: new events are
        findable at once, older ones again after ``trailseal history rebuild``."""
        path = database_path(data_dir)
        found = await trio.to_thread.run_sync(_core.history_schema, str(path))
        if found is not None and found != _core.HISTORY_SCHEMA:
            aside = move_aside(path, f"schema{found}")
            log.warning(
                "event history: %s was written by another trailseal (schema %d; this one reads "
                "%d): moved it to %s and started a new one. LookupEvents finds new events at "
                "once; to find the events delivered before now again, stop the daemon and run "
                "`trailseal history rebuild`",
                path,
                found,
                _core.HISTORY_SCHEMA,
                aside,
            )
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
        """Delete events older than ``[history] history_days`` (nothing when 0); returns how
        many."""
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
        """Start the indexer thread (below ingest's CPU priority, ``[history]
        indexer_priority``), enforce retention every :data:`RETENTION_EVERY_SECS`; runs until
        cancelled, then stops the thread."""
        tid = self.core.start_indexer(
            str(self.spool_dir), poll_ms=int(POLL_SECS * 1000), batch=BATCH_EVENTS
        )
        lower_priority(tid, idle=self.config.indexer_priority == "idle")
        metrics.HISTORY_INDEXED.set_function(self.core.indexed)
        metrics.HISTORY_FED.set_function(self.core.fed)
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
                        await self.remove_covered()
                        await trio.sleep(POLL_SECS)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.core.stop_indexer)

    def release(self, trail: str, seq: int, remove: Callable[[], None]) -> None:
        """A delivered file: ``remove`` it from the spool (a blocking call) once it is indexed.
        Never waits."""
        self._releases.append((trail, seq, remove))
        self.core.poke()

    @property
    def waiting_files(self) -> int:
        """Delivered files still waiting in the spool for the history."""
        return len(self._releases)

    async def settle(self) -> None:
        """At shutdown: remove released files as the history indexes them, until none is left
        (the caller bounds it; what is left stays in the spool, recorded as delivered)."""
        self.core.poke()
        while self._releases:
            self._check()
            await self.remove_covered()
            if self._releases:
                await trio.sleep(0.05)

    async def remove_covered(self) -> int:
        """Remove every released file the history has indexed (all of them while indexing
        fails); returns how many went."""
        batch = list(self._releases)
        if not batch:
            return 0
        failing = self.failed is not None

        def work() -> list[tuple[str, int, Callable[[], None]]]:
            gone = []
            for item in batch:
                trail, seq, remove = item
                if failing or self.core.covered(trail, seq):
                    try:
                        remove()
                    except _core.CoreError as exc:
                        log.warning("removing delivered file %s/%d failed: %s", trail, seq, exc)
                        continue
                    gone.append(item)
            return gone

        gone = await trio.to_thread.run_sync(work)
        ids = {id(item) for item in gone}
        self._releases = [item for item in self._releases if id(item) not in ids]
        now = time.monotonic()
        if len(self._releases) >= BACKLOG_WARN_FILES and now - self._backlog_warned > 60:
            self._backlog_warned = now
            log.warning(
                "event history: %d delivered log files wait in the spool to be indexed (they "
                "count toward [ingest] spool_max_bytes); the history catches up when the load "
                "eases",
                len(self._releases),
            )
        return len(gone)


LOW_NICE = 10
"""The indexer's nice value with ``indexer_priority = "low"``: below ingest's threads, yet
enough CPU to keep up with a saturating load (BENCHMARKS.md)."""


def files_dir(path: Path) -> Path:
    """The directory of the history's files beside the database ``path`` (hard links to the
    spool files whose frames it indexed; the core names it)."""
    return _core.history_files_dir(path)


def move_aside(path: Path, tag: str) -> Path:
    """Rename the database ``path``, its WAL files and its files directory to ``<path>.<tag>``
    (``.<tag>.1``, … when taken); returns the new path."""

    def companions(db: Path) -> list[Path]:
        return [Path(f"{db}-wal"), Path(f"{db}-shm"), files_dir(db)]

    aside = path.with_name(f"{path.name}.{tag}")
    n = 0
    while any(p.exists() for p in [aside, *companions(aside)]):
        n += 1
        aside = path.with_name(f"{path.name}.{tag}.{n}")
    for extra, moved in zip(companions(path), companions(aside), strict=True):
        if extra.exists():
            extra.rename(moved)
    path.rename(aside)
    return aside


def lower_priority(tid: int, *, idle: bool) -> None:
    """Lower the thread ``tid``'s CPU priority: with ``idle``, Linux's SCHED_IDLE policy (it runs
    only when a CPU is otherwise idle; else the lowest nice value), without it nice
    :data:`LOW_NICE`. No-op where that is not possible."""
    if tid <= 0:
        return
    if idle:
        try:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            return
        except (AttributeError, OSError):
            pass
    try:
        os.setpriority(os.PRIO_PROCESS, tid, 19 if idle else LOW_NICE)
    except (AttributeError, OSError):
        log.debug("event history: cannot lower the indexer thread's priority")
