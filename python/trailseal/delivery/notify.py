"""Delivery notifications: CloudTrail's SNS message, POSTed to a trail's ``notify_url``.

After each log file is delivered the uploader calls :meth:`Notifier.add` with its object key
(never blocks). The notifier's task gathers keys delivered close together (up to
:data:`BATCH_WINDOW_SECS` after the first, at most :data:`MAX_KEYS_PER_MESSAGE`) into one
message, CloudTrail's SNS ``Message`` body::

    {"s3Bucket": "<bucket>", "s3ObjectKey": ["<key>", ...]}

sent as ``POST <notify_url>`` with ``Content-Type: application/json``; any 2xx answer counts as
received. Failures are retried with capped exponential backoff. Like CloudTrail, only log files
are notified (digest files are not).

Notifications are best-effort; the data is not: the queue of keys waiting to be notified is
bounded (:data:`QUEUE_MAX_KEYS`) and when it overflows the oldest key is dropped, with a WARNING
and ``trailseal_notifications_dropped_total``. Delivery never waits for a notification. At
shutdown what is still queued gets one short, bounded chance (:meth:`Notifier.flush`).

HTTP client: ``urllib.request`` in a worker thread (abandoned on cancel). The traffic is one
small POST per batch of files, so the standard library does the job without a new dependency
tree (httpx would bring anyio, httpcore, certifi…); each request has its own timeout and HTTPS
verifies certificates against the system store.
"""

from __future__ import annotations

import itertools
import json
import logging
import ssl
import urllib.error
import urllib.request
from collections import deque
from urllib.parse import urlsplit

import trio

from trailseal import metrics
from trailseal.errors import TrailsealError

log = logging.getLogger(__name__)

BATCH_WINDOW_SECS = 0.5
MAX_KEYS_PER_MESSAGE = 100
QUEUE_MAX_KEYS = 10_000
REQUEST_TIMEOUT_SECS = 5.0
BACKOFF_FIRST_SECS = 0.5
BACKOFF_MAX_SECS = 60.0


class NotifyError(TrailsealError):
    """A notification POST failed (it is retried)."""


def check_url(url: str) -> str | None:
    """None when ``url`` is a usable notify URL, else what is wrong with it."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        return f"{url!r} is not a URL: {exc}"
    if parts.scheme not in ("http", "https"):
        return f"{url!r} is not an http:// or https:// URL"
    if not parts.hostname:
        return f"{url!r} has no host"
    try:
        _ = parts.port
    except ValueError as exc:
        return f"{url!r}: {exc}"
    return None


def message(bucket: str, keys: list[str]) -> bytes:
    """The JSON body of one notification."""
    return json.dumps({"s3Bucket": bucket, "s3ObjectKey": keys}, separators=(",", ":")).encode()


def post(url: str, body: bytes, timeout: float = REQUEST_TIMEOUT_SECS) -> None:
    """POST ``body`` (blocking). Raises NotifyError unless the answer is 2xx."""
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "trailseal-notify"},
    )
    context = ssl.create_default_context() if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as answer:
            answer.read(65536)
            status = answer.status
    except urllib.error.HTTPError as exc:
        raise NotifyError(f"{url} answered HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise NotifyError(f"cannot POST to {url}: {reason}") from None
    if not 200 <= status < 300:
        raise NotifyError(f"{url} answered HTTP {status}")


class Notifier:
    """One trail's notification queue and sender task."""

    def __init__(
        self,
        *,
        trail: str,
        url: str,
        bucket: str,
        queue_max_keys: int = QUEUE_MAX_KEYS,
        batch_window_secs: float = BATCH_WINDOW_SECS,
    ) -> None:
        self.trail = trail
        self.url = url
        self.bucket = bucket
        self.queue_max_keys = queue_max_keys
        self.batch_window_secs = batch_window_secs
        self._queue: deque[str] = deque()
        self._wake = trio.Event()
        self._inflight: list[str] = []
        self.dropped = 0

    def add(self, key: str) -> None:
        """Queue ``key`` for the next message (never blocks; drops the oldest when full)."""
        if len(self._queue) >= self.queue_max_keys:
            lost = self._queue.popleft()
            self.dropped += 1
            metrics.NOTIFICATIONS_DROPPED.labels(trail=self.trail).inc()
            log.warning(
                "trail %s: notification queue full (%d keys, %s not answering?): dropped the "
                "notification of %s (the file itself is delivered)",
                self.trail,
                self.queue_max_keys,
                self.url,
                lost,
            )
        self._queue.append(key)
        self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._queue)

    def _take(self) -> list[str]:
        keys: list[str] = []
        while self._queue and len(keys) < MAX_KEYS_PER_MESSAGE:
            keys.append(self._queue.popleft())
        return keys

    async def _send(self, keys: list[str]) -> None:
        """Send one message, retrying with capped exponential backoff until it is received."""
        body = message(self.bucket, keys)
        delay = BACKOFF_FIRST_SECS
        failures = 0
        while True:
            try:
                await trio.to_thread.run_sync(post, self.url, body, abandon_on_cancel=True)
            except NotifyError as exc:
                failures += 1
                metrics.NOTIFICATIONS_FAILED.labels(trail=self.trail).inc()
                log.warning(
                    "trail %s: notification of %d log files failed (attempt %d): %s; retrying "
                    "in %.1f s",
                    self.trail,
                    len(keys),
                    failures,
                    exc,
                    delay,
                )
                await trio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_SECS)
                continue
            metrics.NOTIFICATIONS_SENT.labels(trail=self.trail).inc()
            log.debug("trail %s: notified %d log files to %s", self.trail, len(keys), self.url)
            return

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send messages until cancelled."""
        task_status.started()
        while True:
            if not self._queue:
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            if len(self._queue) < MAX_KEYS_PER_MESSAGE:
                await trio.sleep(self.batch_window_secs)  # gather files delivered close together
            keys = self._take()
            if keys:
                self._inflight = keys
                await self._send(keys)
                self._inflight = []

    async def flush(self, timeout_secs: float) -> None:
        """Shutdown: send what is queued, one attempt per message, within ``timeout_secs``;
        what is left is dropped with a WARNING."""
        if self._inflight:  # the run task was cancelled while sending these
            self._queue.extendleft(reversed(self._inflight))
            self._inflight = []
        with trio.move_on_after(timeout_secs):
            while self._queue:
                keys = list(itertools.islice(self._queue, MAX_KEYS_PER_MESSAGE))  # peek
                try:
                    await trio.to_thread.run_sync(
                        post, self.url, message(self.bucket, keys), abandon_on_cancel=True
                    )
                except NotifyError as exc:
                    metrics.NOTIFICATIONS_FAILED.labels(trail=self.trail).inc()
                    log.warning("trail %s: final notification failed: %s", self.trail, exc)
                    break
                metrics.NOTIFICATIONS_SENT.labels(trail=self.trail).inc()
                for _ in keys:
                    self._queue.popleft()
        if self._queue:
            left = len(self._queue)
            metrics.NOTIFICATIONS_DROPPED.labels(trail=self.trail).inc(left)
            log.warning(
                "trail %s: %d log files delivered but not notified to %s at shutdown",
                self.trail,
                left,
                self.url,
            )
            self._queue.clear()
