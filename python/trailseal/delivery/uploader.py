"""The uploader: delivers a trail's sealed log files, in seq order, and records each one for the
next digest (docs/internals.md, "The daemon's topology").

Per sealed file: ``Destination.put_file(object_key)`` (no-overwrite, so a retry or a re-delivery
after a crash is harmless) → one line appended to ``<state_dir>/delivered.jsonl`` and fsync'd →
``Core.remove_sealed``. A file still in the spool at start (a crash left it) is delivered again
first; its line is not appended twice (see :class:`DeliveryState`), so no file is ever listed in
two digests. Failures are retried with capped exponential backoff, forever: a file is never
dropped (WARNING on each retry, ERROR once it keeps failing).

``delivered.jsonl`` holds one compact JSON object per line: the ``logFiles`` entry of
FORMATS.md §5 (``s3Bucket``, ``s3Object``, ``hashValue``, ``hashAlgorithm``, ``newestEventTime``,
``oldestEventTime``, ``eventCount``, ``chainStart``, ``chainEnd``) plus ``account`` and ``region``.
The digest writer removes the lines a delivered digest covers (atomic rewrite).
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import trio

from trailseal import _core, metrics
from trailseal.config import TrailConfig
from trailseal.delivery.destination import Destination
from trailseal.delivery.notify import Notifier
from trailseal.durable import fsync_dir, replace_atomically
from trailseal.errors import TrailsealError

log = logging.getLogger(__name__)

DELIVERED_NAME = "delivered.jsonl"
DIGESTS_NAME = "digests.json"
PENDING_NAME = "pending-digest.json"

BACKOFF_FIRST_SECS = 0.5
BACKOFF_MAX_SECS = 60.0
FAILURES_BEFORE_ERROR = 5


class HistoryGate(Protocol):
    """The event history, as the uploader sees it (:class:`trailseal.history.EventHistory`).

    With one, a delivered file stays in the spool until the history has indexed it, and delivery
    never waits for that: the file is handed to :meth:`release` and recorded in
    ``awaiting-history.txt``, so that after a restart it is not delivered again."""

    def release(self, trail: str, seq: int, remove: Callable[[], None]) -> None:
        """A delivered file: call ``remove`` (blocking) once the history has indexed it."""


_locks: dict[Path, threading.Lock] = {}
_locks_guard = threading.Lock()

T = TypeVar("T")


class DeliveryState:
    """A trail's delivery state files (shared by the uploader and the digest writer).

    Every method blocks (run it through ``trio.to_thread``) and holds a per-directory lock, so
    an append never races the digest writer's rewrite of ``delivered.jsonl``.
    """

    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir)
        self.delivered_path = self.dir / DELIVERED_NAME
        self.digests_path = self.dir / DIGESTS_NAME
        self.pending_path = self.dir / PENDING_NAME
        key = self.dir.resolve()
        with _locks_guard:
            self.lock = _locks.setdefault(key, threading.Lock())

    def ensure_dir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)

    def read_delivered_lines(self) -> list[str]:
        """The lines of ``delivered.jsonl`` (a torn last line, from a crash mid-append, is
        dropped: its file is still in the spool and gets delivered again)."""
        try:
            text = self.delivered_path.read_text()
        except FileNotFoundError:
            return []
        lines = text.split("\n")
        if lines and lines[-1] != "":
            lines = lines[:-1]  # no newline yet: torn
        return [line for line in lines if line]

    def read_digests(self) -> dict[str, Any]:
        try:
            raw = json.loads(self.digests_path.read_bytes())
        except FileNotFoundError:
            return {}
        except ValueError as e:
            raise TrailsealError(
                f"digest state {self.digests_path} is not valid JSON ({e}); move it away to "
                "restart the digest chains (the next digests will start new chains)"
            ) from e
        if not isinstance(raw, dict):
            raise TrailsealError(f"digest state {self.digests_path} is not a JSON object")
        return raw

    @property
    def awaiting_path(self) -> Path:
        return self.dir / "awaiting-history.txt"

    def mark_awaiting(self, seq: int) -> None:
        """Record that sealed file ``seq`` is delivered and waits in the spool for the history."""
        with self.lock:
            self.ensure_dir()
            with open(self.awaiting_path, "ab") as f:
                f.write(f"{seq}\n".encode())
                f.flush()
                os.fsync(f.fileno())

    def read_awaiting(self) -> set[int]:
        """The delivered files still waiting for the history (a torn last line is ignored)."""
        with self.lock:
            try:
                raw = self.awaiting_path.read_bytes()
            except FileNotFoundError:
                return set()
        return {int(line) for line in raw.split(b"\n") if line.strip().isdigit()}

    def keep_awaiting(self, seqs: set[int]) -> None:
        """Rewrite the awaiting list to ``seqs`` (at start: those still in the spool)."""
        with self.lock:
            if not seqs:
                self.awaiting_path.unlink(missing_ok=True)
                return
            data = "".join(f"{seq}\n" for seq in sorted(seqs)).encode()
            replace_atomically(self.awaiting_path, data)

    def _recently_listed(self) -> set[str]:
        keys: set[str] = set()
        for stream in self.read_digests().get("streams", {}).values():
            keys.update(stream.get("recent_files", []))
        return keys

    def append_delivered(self, entry: dict[str, Any]) -> bool:
        """Append ``entry`` unless its object is already recorded (in ``delivered.jsonl`` or
        among the files the last digests listed). Returns True when appended."""
        line = json.dumps(entry, separators=(",", ":"))
        with self.lock:
            self.ensure_dir()
            key = entry["s3Object"]
            for existing in self.read_delivered_lines():
                if json.loads(existing).get("s3Object") == key:
                    return False
            if key in self._recently_listed():
                return False
            raw = b""
            if self.delivered_path.exists():
                raw = self.delivered_path.read_bytes()
            with open(self.delivered_path, "ab") as f:
                if raw and not raw.endswith(b"\n"):
                    f.truncate(raw.rfind(b"\n") + 1)  # drop a torn line left by a crash
                f.write(line.encode() + b"\n")
                f.flush()
                os.fsync(f.fileno())
            fsync_dir(self.dir)
            return True


def log_file_entry(sealed: _core.SealedFile, bucket: str) -> dict[str, Any]:
    """The ``logFiles`` entry of a delivered file plus its stream (``account``, ``region``)."""
    return {
        "s3Bucket": bucket,
        "s3Object": sealed.object_key,
        "hashValue": sealed.sha256,
        "hashAlgorithm": "SHA-256",
        "newestEventTime": sealed.newest_event_time,
        "oldestEventTime": sealed.oldest_event_time,
        "eventCount": sealed.event_count,
        "chainStart": sealed.chain_start,
        "chainEnd": sealed.chain_end,
        "account": sealed.account,
        "region": sealed.region,
    }


async def retry_forever(
    what: str, fn: Callable[[], T], on_error: Callable[[Exception], None] | None = None
) -> T:
    """Run blocking ``fn`` in a thread until it succeeds, backing off exponentially (capped) with
    full jitter, so many daemons coming back after one outage do not retry in step.
    ``on_error`` (metrics, health) is called with each failure."""
    delay = BACKOFF_FIRST_SECS
    failures = 0
    while True:
        try:
            return await trio.to_thread.run_sync(fn)
        except (TrailsealError, OSError, _core_error()) as e:
            failures += 1
            if on_error is not None:
                on_error(e)
            level = logging.ERROR if failures >= FAILURES_BEFORE_ERROR else logging.WARNING
            wait = random.uniform(BACKOFF_FIRST_SECS, delay)
            log.log(
                level,
                "%s failed (attempt %d): %s; retrying in %.1f s",
                what,
                failures,
                e,
                wait,
            )
            await trio.sleep(wait)
            delay = min(delay * 2, BACKOFF_MAX_SECS)


def _core_error() -> type[Exception]:
    err = getattr(_core, "CoreError", None)
    return err if isinstance(err, type) and issubclass(err, Exception) else TrailsealError


async def deliver_one(
    core: _core.Core,
    destination: Destination,
    state: DeliveryState,
    sealed: _core.SealedFile,
    notifier: Notifier | None = None,
    history: HistoryGate | None = None,
) -> None:
    """Deliver one sealed file, record it, and remove it from the spool, or hand it to the
    ``history`` to remove once indexed (then count it and queue its notification, which never
    blocks)."""
    key = sealed.object_key
    trail = sealed.trail
    await retry_forever(
        f"delivering {sealed.path} to {destination.url} as {key}",
        lambda: destination.put_file(key, Path(sealed.path)),
        lambda e: metrics.delivery_failed(trail, f"delivering {key} to {destination.url}: {e}"),
    )
    metrics.delivered(trail, sealed.compressed_bytes)
    if notifier is not None:
        notifier.add(key)
    entry = log_file_entry(sealed, destination.bucket)
    await retry_forever(
        f"recording delivered file {key} in {state.delivered_path}",
        lambda: state.append_delivered(entry),
    )
    if history is not None:  # it leaves the spool once the history has read it
        await retry_forever(
            f"recording delivered file seq {sealed.seq} in {state.awaiting_path}",
            lambda: state.mark_awaiting(sealed.seq),
        )
        history.release(sealed.trail, sealed.seq, _remover(core, sealed.trail, sealed.seq))
    else:
        await retry_forever(
            f"removing delivered file seq {sealed.seq} of trail {sealed.trail} from the spool",
            _remover(core, sealed.trail, sealed.seq),
        )
    log.debug("delivered %s (%d events)", key, sealed.event_count)


def _remover(core: _core.Core, trail: str, seq: int) -> Callable[[], None]:
    return lambda: core.remove_sealed(trail, seq)


async def run(
    *,
    core: _core.Core,
    trail: TrailConfig,
    destination: Destination,
    state_dir: Path,
    sealed: trio.MemoryReceiveChannel[_core.SealedFile],
    notifier: Notifier | None = None,
    history: HistoryGate | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Deliver the spool's leftovers, then every sealed file received, until ``sealed`` closes.
    ``notifier``: the trail's delivery notifications (``notify_url``), if any; ``history``: the
    event history, which removes delivered files from the spool once indexed."""
    state = DeliveryState(state_dir)
    await trio.to_thread.run_sync(state.ensure_dir)
    leftovers = await trio.to_thread.run_sync(core.sealed_files, trail.name)
    awaiting = await trio.to_thread.run_sync(state.read_awaiting)
    awaiting &= {item.seq for item in leftovers}
    await trio.to_thread.run_sync(state.keep_awaiting, awaiting)
    task_status.started()
    done: set[int] = set()
    for item in sorted(leftovers, key=lambda s: s.seq):
        if item.seq in awaiting:  # delivered before a restart, not yet indexed by the history
            remove = _remover(core, item.trail, item.seq)
            if history is not None:
                history.release(item.trail, item.seq, remove)
            else:
                await retry_forever(f"removing delivered file seq {item.seq}", remove)
        else:
            await deliver_one(core, destination, state, item, notifier, history)
        done.add(item.seq)
    async with sealed:
        async for item in sealed:
            if item.seq in done:
                continue  # already delivered as a leftover
            await deliver_one(core, destination, state, item, notifier, history)
            done.add(item.seq)
    # A seal whose announcement was lost (the sealer was cancelled at shutdown between sealing
    # and sending) is still in the spool: deliver it now rather than at the next start.
    leftovers = await trio.to_thread.run_sync(core.sealed_files, trail.name)
    for item in sorted(leftovers, key=lambda s: s.seq):
        if item.seq not in done:
            await deliver_one(core, destination, state, item, notifier, history)
            done.add(item.seq)
