"""Retention (``retention_days`` per trail; 0 keeps forever).

``file://`` destinations: the daemon removes expired objects itself, at start and then every
:data:`PRUNE_INTERVAL_SECS`, in a worker thread (:func:`prune`). What expires is decided by the
date in the key path (``…/CloudTrail[-Digest|-Insight]/<region>/YYYY/MM/DD/…``), whole days only:
an object dated D goes once D is before the day of ``now − retention_days`` (so it is kept at
least ``retention_days`` and less than one day more). Only keys under ``[<prefix>/]AWSLogs/`` of
the trail's destination are touched (never the public keys). A digest and every log file it
lists go together, so what is left still validates: a log file is removed with the expired
digest that lists it, or on its own once its date is one day past the cutoff (a digest ending
shortly after midnight lists files of the day before). Empty date directories are removed.

``s3://`` destinations: a lifecycle rule on the bucket (:func:`apply_lifecycle`), applied at
start: ID ``trailseal-<trail>``, filter prefix ``[<prefix>/]AWSLogs/``, ``Expiration.Days =
retention_days``; other rules of the bucket are kept (merged by ID); with ``retention_days = 0``
our rule is removed. S3 expires by object age, so for up to a day a digest may outlive the
first log files it lists; ``trailseal validate`` reports that as the start of history (a note),
not as a failure. Object Lock is refused with retention by the config (see config.py).

``trailseal validate`` treats a missing previous digest that is older than every digest left in
its stream as "history starts here" (a note), see validate.py.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import trio

from trailseal import metrics
from trailseal.config import TrailConfig
from trailseal.delivery.destination import Destination, NoSuchKeyError
from trailseal.delivery.layout import join_key
from trailseal.errors import ConfigError, DeliveryError, TrailsealError

log = logging.getLogger(__name__)

PRUNE_INTERVAL_SECS = 3600.0
RULE_ID_PREFIX = "trailseal-"

_DATED_RE = re.compile(
    r"(?:^|/)AWSLogs/(?:o-[a-z0-9]+/)?\d{12}/(?P<kind>CloudTrail|CloudTrail-Digest|"
    r"CloudTrail-Insight)/[^/]+/(?P<y>\d{4})/(?P<m>\d{2})/(?P<d>\d{2})/[^/]+$"
)


def key_date(key: str) -> tuple[str, date] | None:
    """(kind, date) from a delivered object's key; None for anything else."""
    m = _DATED_RE.search(key)
    if m is None:
        return None
    try:
        return m["kind"], date(int(m["y"]), int(m["m"]), int(m["d"]))
    except ValueError:
        return None


def cutoff(now: datetime, retention_days: int) -> date:
    """Objects dated before this day are expired."""
    return (now.astimezone(UTC) - timedelta(days=retention_days)).date()


@dataclass
class PruneResult:
    removed: list[str]
    kept: int


def prune(
    destination: Destination, retention_days: int, now: datetime | None = None
) -> PruneResult:
    """Remove expired objects from a ``file://`` destination (blocking). See the module doc."""
    if retention_days <= 0:
        return PruneResult([], 0)
    limit = cutoff(now or datetime.now(UTC), retention_days)
    log_limit = limit - timedelta(days=1)
    keys = destination.list_keys(join_key(destination.prefix, "AWSLogs/"))
    doomed: set[str] = set()
    dated: dict[str, tuple[str, date]] = {}
    for key in keys:
        parsed = key_date(key)
        if parsed is not None:
            dated[key] = parsed
    for key, (kind, day) in dated.items():
        if kind == "CloudTrail-Digest" and day < limit:
            doomed.add(key)
            doomed.update(k for k in _listed(destination, key) if k in dated)
        elif kind != "CloudTrail-Digest" and day < log_limit:
            doomed.add(key)
    removed: list[str] = []
    for key in sorted(doomed):
        try:
            destination.delete(key)  # also its .metadata.json
        except NoSuchKeyError:
            continue
        removed.append(key)
    _remove_empty_dirs(destination, removed)
    return PruneResult(removed, len(keys) - len(removed))


def _listed(destination: Destination, digest_key: str) -> list[str]:
    """The log file keys an (expiring) digest lists; [] when it cannot be read."""
    try:
        doc = json.loads(gzip.decompress(destination.get_bytes(digest_key)))
        return [str(e["s3Object"]) for e in doc.get("logFiles", []) if isinstance(e, dict)]
    except (TrailsealError, OSError, ValueError, KeyError, EOFError) as exc:
        log.warning("retention: cannot read expired digest %s (%s)", digest_key, exc)
        return []


def _remove_empty_dirs(destination: Destination, removed: list[str]) -> None:
    root = getattr(destination, "root", None)
    if not isinstance(root, Path):
        return
    dirs = {(root / key).parent for key in removed}
    for directory in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        current = directory
        while current != root and root in current.parents:
            try:
                os.rmdir(current)
            except OSError:
                break  # not empty (or gone): stop climbing
            current = current.parent


async def run(
    *,
    trail: TrailConfig,
    destination: Destination,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Prune a ``file://`` destination at start and every hour; runs until cancelled."""
    task_status.started()
    while True:
        try:
            result = await trio.to_thread.run_sync(prune, destination, trail.retention_days)
        except (TrailsealError, OSError) as exc:
            log.warning("trail %s: retention pass failed (retried in an hour): %s", trail.name, exc)
        else:
            if result.removed:
                metrics.RETENTION_REMOVED.labels(trail=trail.name).inc(len(result.removed))
                log.info(
                    "trail %s: retention_days=%d removed %d expired objects from %s (%s … %s)",
                    trail.name,
                    trail.retention_days,
                    len(result.removed),
                    destination.url,
                    result.removed[0],
                    result.removed[-1],
                )
                for key in result.removed:
                    log.debug("retention removed %s", key)
        await trio.sleep(PRUNE_INTERVAL_SECS)


# ---------------------------------------------------------------------------------------------
# S3 lifecycle


def lifecycle_rule(trail: TrailConfig, prefix: str) -> dict[str, Any]:
    """The trail's lifecycle rule (PutBucketLifecycleConfiguration's shape)."""
    return {
        "ID": RULE_ID_PREFIX + trail.name,
        "Filter": {"Prefix": join_key(prefix, "AWSLogs/")},
        "Status": "Enabled",
        "Expiration": {"Days": trail.retention_days},
    }


def merge_rules(
    existing: list[dict[str, Any]], trail: TrailConfig, prefix: str
) -> list[dict[str, Any]]:
    """``existing`` without our rule, plus our rule when ``retention_days`` > 0 (pure)."""
    ours = RULE_ID_PREFIX + trail.name
    rules = [r for r in existing if r.get("ID") != ours]
    if trail.retention_days > 0:
        rules.append(lifecycle_rule(trail, prefix))
    return rules


def apply_lifecycle(destination: Any, trail: TrailConfig, where: str) -> bool:
    """Put the trail's lifecycle rule on an ``s3://`` destination's bucket (blocking), merged
    with the bucket's other rules. Returns True when the bucket was changed. Raises
    DeliveryError when the bucket cannot be read or written, ConfigError when it refuses the
    rule (``where`` names the config key)."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = destination.client
    bucket = destination.bucket
    try:
        answer = client.get_bucket_lifecycle_configuration(Bucket=bucket)
        existing: list[dict[str, Any]] = list(answer.get("Rules", []))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
            raise DeliveryError(
                f"cannot read the lifecycle configuration of bucket {bucket!r}: {exc}"
            ) from exc
        existing = []
    except BotoCoreError as exc:
        raise DeliveryError(f"cannot reach bucket {bucket!r}: {exc}") from exc
    rules = merge_rules(existing, trail, destination.prefix)
    if rules == existing:
        return False
    try:
        if rules:
            client.put_bucket_lifecycle_configuration(
                Bucket=bucket, LifecycleConfiguration={"Rules": rules}
            )
        else:
            client.delete_bucket_lifecycle(Bucket=bucket)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("AccessDenied", "InvalidRequest", "MalformedXML", "NotImplemented"):
            raise ConfigError(
                f"{where}: bucket {bucket!r} refused the lifecycle rule "
                f"{RULE_ID_PREFIX + trail.name} ({code}: {exc}); allow "
                "s3:PutLifecycleConfiguration for the daemon, or set retention_days = 0 and "
                "expire objects another way"
            ) from exc
        raise DeliveryError(f"cannot set the lifecycle of bucket {bucket!r}: {exc}") from exc
    except BotoCoreError as exc:
        raise DeliveryError(f"cannot reach bucket {bucket!r}: {exc}") from exc
    return True
