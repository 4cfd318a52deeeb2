"""The daemon's metrics (Prometheus) and health state, one registry per process.

Counters are incremented per batch, per log file, per digest and per notification — never per
event in Python (the core returns per-batch counts). Gauges are set by the sealer's 1 s timer
(spool backlog, open segments) and by the stages themselves (connections, last delivery).
``/metrics`` on the API listener (:mod:`trailseal.api.server`) exposes :data:`REGISTRY`;
``/healthz`` reports :func:`health`.

Names follow ``trailseal_<thing>_<unit>_total`` for counters (prometheus-client appends
``_total`` to a Counter's name); every per-trail metric has a ``trail`` label.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "REGISTRY", "exposition", "health"]

REGISTRY = CollectorRegistry(auto_describe=True)

# -- ingest and pipeline (per batch) ----------------------------------------------------------
EVENTS_ACCEPTED = Counter(
    "trailseal_events_accepted",
    "Events stored (fsync'd in a segment) and acknowledged",
    registry=REGISTRY,
)
EVENTS_DUPLICATE = Counter(
    "trailseal_events_duplicate",
    "Events acknowledged without being written again (eventID seen in the dedup window)",
    registry=REGISTRY,
)
EVENTS_REJECTED = Counter(
    "trailseal_events_rejected",
    "Events rejected, by error code (InvalidJson, EventTooLarge, MissingField, ...)",
    ["code"],
    registry=REGISTRY,
)
INPUT_BYTES = Counter(
    "trailseal_input_bytes", "Bytes of NDJSON received and processed", registry=REGISTRY
)
BATCHES = Counter("trailseal_batches", "Group-commit batches processed", registry=REGISTRY)
FSYNCS = Counter(
    "trailseal_fsyncs", "Group commits (Core.sync: fsync of the open segments)", registry=REGISTRY
)
LOG_FILES_SEALED = Counter(
    "trailseal_log_files_sealed", "Log files sealed in the spool", ["trail"], registry=REGISTRY
)

# -- delivery (per file) ----------------------------------------------------------------------
LOG_FILES_DELIVERED = Counter(
    "trailseal_log_files_delivered",
    "Log files delivered to the trail's destination",
    ["trail"],
    registry=REGISTRY,
)
DELIVERED_BYTES = Counter(
    "trailseal_delivered_bytes",
    "Bytes of log files (compressed, as stored) delivered",
    ["trail"],
    registry=REGISTRY,
)
DELIVERY_ERRORS = Counter(
    "trailseal_delivery_errors",
    "Failed delivery attempts (each is retried; nothing is dropped)",
    ["trail"],
    registry=REGISTRY,
)
DIGESTS_DELIVERED = Counter(
    "trailseal_digest_files_delivered",
    "Digest files delivered",
    ["trail"],
    registry=REGISTRY,
)
NOTIFICATIONS_SENT = Counter(
    "trailseal_notifications_sent",
    "Delivery notifications POSTed to notify_url and answered 2xx",
    ["trail"],
    registry=REGISTRY,
)
NOTIFICATIONS_FAILED = Counter(
    "trailseal_notifications_failed",
    "Failed notification attempts (retried with backoff)",
    ["trail"],
    registry=REGISTRY,
)
NOTIFICATIONS_DROPPED = Counter(
    "trailseal_notifications_dropped",
    "Notifications dropped because the trail's notification queue overflowed",
    ["trail"],
    registry=REGISTRY,
)
RETENTION_REMOVED = Counter(
    "trailseal_retention_removed_objects",
    "Objects removed from a file:// destination because they were older than retention_days",
    ["trail"],
    registry=REGISTRY,
)

# -- gauges ------------------------------------------------------------------------------------
BACKLOG_FILES = Gauge(
    "trailseal_spool_backlog_files",
    "Sealed log files waiting for delivery",
    ["trail"],
    registry=REGISTRY,
)
BACKLOG_BYTES = Gauge(
    "trailseal_spool_backlog_bytes",
    "Bytes (compressed) of sealed log files waiting for delivery",
    ["trail"],
    registry=REGISTRY,
)
OPEN_SEGMENTS = Gauge(
    "trailseal_open_segments", "Open (not yet sealed) segments in the spool", registry=REGISTRY
)
CONNECTIONS = Gauge("trailseal_connections", "Open ingest connections", registry=REGISTRY)
LAST_DELIVERY = Gauge(
    "trailseal_last_delivery_timestamp_seconds",
    "Unix time of the last successful log file delivery",
    ["trail"],
    registry=REGISTRY,
)
HISTORY_INDEXED = Gauge(
    "trailseal_history_indexed_events",
    "Events the event history's indexer added since the daemon started",
    registry=REGISTRY,
)
HISTORY_FED = Gauge(
    "trailseal_history_fed_events",
    "Events the event history's indexer took as the core handed them over since the daemon "
    "started (the rest it read back from the spool files)",
    registry=REGISTRY,
)
START_TIME = Gauge(
    "trailseal_start_time_seconds", "Unix time the daemon process started", registry=REGISTRY
)
START_TIME.set(time.time())


def exposition() -> bytes:
    """The registry in the Prometheus text exposition format."""
    return generate_latest(REGISTRY)


# ---------------------------------------------------------------------------------------------
# Health


@dataclass
class TrailHealth:
    backlog_files: int = 0
    backlog_bytes: int = 0
    last_delivery: float | None = None
    """Unix time of the last successful delivery."""
    last_error: str | None = None
    last_error_at: float | None = None
    failing: bool = False
    """The last delivery attempt failed (cleared by the next success)."""


@dataclass
class Health:
    started: float = field(default_factory=time.time)
    trails: dict[str, TrailHealth] = field(default_factory=dict)

    def trail(self, name: str) -> TrailHealth:
        return self.trails.setdefault(name, TrailHealth())


HEALTH = Health()


def register_trails(names: list[str]) -> None:
    """Make every trail appear in /metrics and /healthz from the start (zeros, not absence)."""
    for name in names:
        HEALTH.trail(name)
        for counter in (
            LOG_FILES_SEALED,
            LOG_FILES_DELIVERED,
            DELIVERED_BYTES,
            DELIVERY_ERRORS,
            DIGESTS_DELIVERED,
        ):
            counter.labels(trail=name)
        BACKLOG_FILES.labels(trail=name).set(0)
        BACKLOG_BYTES.labels(trail=name).set(0)


def delivered(trail: str, size: int) -> None:
    """One log file was delivered (called by the uploader)."""
    now = time.time()
    LOG_FILES_DELIVERED.labels(trail=trail).inc()
    DELIVERED_BYTES.labels(trail=trail).inc(size)
    LAST_DELIVERY.labels(trail=trail).set(now)
    state = HEALTH.trail(trail)
    state.last_delivery = now
    state.failing = False


def digest_delivered(trail: str) -> None:
    """One digest file was delivered (called by the digest writer)."""
    DIGESTS_DELIVERED.labels(trail=trail).inc()
    HEALTH.trail(trail).failing = False


def delivery_failed(trail: str, message: str) -> None:
    """One delivery attempt failed (it is retried)."""
    DELIVERY_ERRORS.labels(trail=trail).inc()
    state = HEALTH.trail(trail)
    state.last_error = message
    state.last_error_at = time.time()
    state.failing = True


def set_backlog(trail: str, files: int, size: int) -> None:
    BACKLOG_FILES.labels(trail=trail).set(files)
    BACKLOG_BYTES.labels(trail=trail).set(size)
    state = HEALTH.trail(trail)
    state.backlog_files = files
    state.backlog_bytes = size


def health() -> dict[str, Any]:
    """The ``/healthz`` document: ``status`` is "degraded" while any trail's last delivery
    attempt failed, else "ok"."""
    now = time.time()
    trails: dict[str, Any] = {}
    degraded = False
    for name, state in sorted(HEALTH.trails.items()):
        degraded = degraded or state.failing
        trails[name] = {
            "status": "degraded" if state.failing else "ok",
            "backlog_files": state.backlog_files,
            "backlog_bytes": state.backlog_bytes,
            "last_delivery": state.last_delivery,
            "last_error": state.last_error,
            "last_error_at": state.last_error_at,
        }
    return {
        "status": "degraded" if degraded else "ok",
        "uptime_secs": round(now - HEALTH.started, 3),
        "trails": trails,
    }
