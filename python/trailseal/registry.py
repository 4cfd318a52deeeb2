"""The daemon's trails at run time: those of the config file and those made through the API.

Trails from the config file are fixed for the life of the process; the API reports them and
refuses to change them. Trails made with CreateTrail live in ``<data_dir>/trails/api-trails.json``
(replaced atomically on every change, so a crash keeps either the old or the new set)::

    {"version": 1, "trails": {"<name>": {
        "bucket": "…", "prefix": "…", "multi_region": true, "kms_key_id": "",
        "selectors_json": "{}", "insight_selectors": [], "logging": true,
        "deleting": false, "created": <epoch>, "logging_changed": <epoch>}}}

A trail's bucket maps to a destination by ``[api] trail_buckets``: ``file:///dir`` puts bucket
``B`` at ``file:///dir/B`` (a local bucket; no key prefix), ``s3`` at ``s3://B[/prefix]`` (with
``[api] trail_s3_endpoint_url``, else the AWS SDK's default endpoint). Every other setting is the
default of a ``[trails.*]`` table.

A deleted trail is first marked ``deleting`` (and no longer listed): logging stops, what it holds
is sealed and delivered and its final digest written, then its spool directory and its entry go.
A crash in between resumes the deletion at the next start.

:class:`TrailRegistry` is the one place that knows the current trails (``trails``, a dict that
the sealer and the API read) and carries out changes; :class:`TrailStages` (the daemon) starts and
stops each trail's uploader and digest writer.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import trio

from trailseal import _core, metrics
from trailseal.api.operations import ServiceError
from trailseal.config import Config, TrailConfig
from trailseal.durable import replace_atomically
from trailseal.errors import TrailsealError

log = logging.getLogger("trailseal.trails")

STORE_NAME = "trails/api-trails.json"
MAX_TRAILS = 64
"""The Core routes with a 64-bit mask."""
DELETE_WAIT_SECS = 120.0
"""How long DeleteTrail waits for the trail's delivered files to leave the spool."""


class TrailChangeError(ServiceError):
    """A trail change CloudTrail would refuse: ``code`` is CloudTrail's exception name (the API
    answers it as it is)."""


@dataclass
class ApiTrail:
    """One trail made through the API, as stored."""

    bucket: str
    prefix: str = ""
    multi_region: bool = True
    kms_key_id: str = ""
    selectors_json: str = "{}"
    insight_selectors: list[dict[str, Any]] = field(default_factory=list)
    logging: bool = True
    deleting: bool = False
    created: float = 0.0
    logging_changed: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "prefix": self.prefix,
            "multi_region": self.multi_region,
            "kms_key_id": self.kms_key_id,
            "selectors_json": self.selectors_json,
            "insight_selectors": self.insight_selectors,
            "logging": self.logging,
            "deleting": self.deleting,
            "created": self.created,
            "logging_changed": self.logging_changed,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> ApiTrail:
        return cls(**{k: value[k] for k in cls.__dataclass_fields__ if k in value})


def prefix_problem(prefix: str) -> str | None:
    if len(prefix) > 200:
        return "an S3 key prefix has at most 200 characters"
    if prefix.startswith("/") or prefix.endswith("/") or "//" in prefix:
        return "an S3 key prefix neither starts nor ends with '/' and has no empty parts"
    if any(part in (".", "..") for part in prefix.split("/")):
        return "an S3 key prefix has no '.' or '..' parts"
    return None


def trail_config(config: Config, name: str, trail: ApiTrail) -> TrailConfig:
    """The TrailConfig of an API trail under this daemon's ``[api] trail_buckets``."""
    buckets = config.api.trail_buckets
    if buckets == "s3":
        destination = f"s3://{trail.bucket}" + (f"/{trail.prefix}" if trail.prefix else "")
        return TrailConfig(
            name=name,
            destination=destination,
            s3_endpoint_url=config.api.trail_s3_endpoint_url,
            multi_region=trail.multi_region,
            sse="aws:kms" if trail.kms_key_id else "",
            kms_key_id=trail.kms_key_id,
            selectors_json=trail.selectors_json,
        )
    return TrailConfig(
        name=name,
        destination=f"{buckets.rstrip('/')}/{trail.bucket}",
        multi_region=trail.multi_region,
        selectors_json=trail.selectors_json,
    )


def spec_of(trail: TrailConfig) -> _core.TrailSpec:
    return _core.TrailSpec(
        trail.name,
        selectors_json=trail.selectors_json,
        multi_region=trail.multi_region,
        compression=trail.compression,
        gzip_level=trail.gzip_level,
    )


def load_store(data_dir: Path) -> dict[str, ApiTrail]:
    """The stored API trails; a missing file is none. Raises TrailsealError when unreadable."""
    path = data_dir / STORE_NAME
    try:
        doc = json.loads(path.read_bytes())
        return {name: ApiTrail.from_json(value) for name, value in doc["trails"].items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TrailsealError(
            f"{path}: cannot read the trails made through the API ({exc}); restore the file "
            "from a backup, or move it aside to start without them"
        ) from None


def with_api_trails(config: Config) -> tuple[Config, dict[str, ApiTrail]]:
    """``config`` with the stored API trails added to its trails (before the Core opens, so their
    spools are recovered like the others). A stored name that the config file now also has is
    the config file's (a WARNING says so)."""
    stored = load_store(config.daemon.data_dir)
    trails = dict(config.trails)
    kept: dict[str, ApiTrail] = {}
    for name, trail in stored.items():
        if name in trails:
            log.warning(
                "trail %s is both in the config file and made through the API; the config "
                "file's wins (delete one of them)",
                name,
            )
            continue
        trails[name] = trail_config(config, name, trail)
        kept[name] = trail
    return replace(config, trails=trails), kept


class TrailStages(Protocol):
    """What the daemon does when a trail comes or goes (its uploader and digest writer)."""

    async def start(self, trail: TrailConfig) -> None:
        """Open the destination and start the trail's uploader and digest writer."""

    async def drain(self, name: str) -> None:
        """Seal what the trail holds, let its uploader deliver it all, write its final digest
        and stop its stages (returns when done)."""

    def spawn(self, run: Callable[[], Awaitable[None]]) -> None:
        """Run ``run()`` in the background (until the daemon's shutdown is done with it)."""


class TrailRegistry:
    """The current trails, and every change made to them through the API."""

    def __init__(self, config: Config, api_trails: dict[str, ApiTrail], core: _core.Core) -> None:
        self.config = config
        self.core = core
        self.trails: dict[str, TrailConfig] = dict(config.trails)
        """Every trail with stages running (config, API, and API trails being deleted)."""
        self.api: dict[str, ApiTrail] = api_trails
        self.started = time.time()
        self.stages: TrailStages | None = None
        self._lock = trio.Lock()
        self._store = config.daemon.data_dir / STORE_NAME

    # -- reading -------------------------------------------------------------------------------

    def listed(self) -> dict[str, TrailConfig]:
        """The trails the API reports (a trail being deleted is gone already)."""
        return {
            name: trail
            for name, trail in self.trails.items()
            if not (name in self.api and self.api[name].deleting)
        }

    def from_config_file(self, name: str) -> bool:
        return name not in self.api

    def is_logging(self, name: str) -> bool:
        api = self.api.get(name)
        return api is None or api.logging

    def logging_changed(self, name: str) -> float:
        api = self.api.get(name)
        return api.logging_changed if api is not None else self.started

    def insight_selectors(self, name: str) -> list[dict[str, Any]]:
        api = self.api.get(name)
        return list(api.insight_selectors) if api is not None else []

    # -- at start ------------------------------------------------------------------------------

    def apply_logging_state(self) -> list[str]:
        """After the Core opened: stop routing to API trails that are stopped or being deleted;
        return the names whose deletion is to be resumed."""
        resume = []
        for name, api in self.api.items():
            if not api.logging or api.deleting:
                self.core.set_logging(name, False)
            if api.deleting:
                resume.append(name)
        return resume

    # -- changes -------------------------------------------------------------------------------

    def _save(self) -> None:
        doc = {"version": 1, "trails": {n: t.to_json() for n, t in sorted(self.api.items())}}
        self._store.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(self._store, json.dumps(doc, indent=1).encode() + b"\n", 0o600)

    def _changeable(self, name: str) -> ApiTrail:
        """The API trail ``name`` (TrailNotFoundException / OperationNotPermittedException)."""
        api = self.api.get(name)
        if name not in self.trails or (api is not None and api.deleting):
            raise TrailChangeError(
                "TrailNotFoundException",
                f"Unknown trail: {name} for the user: {self.config.daemon.account_id}",
            )
        if api is None:
            source = self.config.source or "the embedded defaults"
            raise TrailChangeError(
                "OperationNotPermittedException",
                f"trail {name} comes from the config file ({source}); change it there and "
                "restart the daemon (only trails made through the API change through the API)",
            )
        return api

    async def _run(self, fn: Callable[[], Any]) -> Any:
        return await trio.to_thread.run_sync(fn)

    async def create(self, name: str, trail: ApiTrail) -> TrailConfig:
        async with self._lock:
            if name in self.trails:
                raise TrailChangeError(
                    "TrailAlreadyExistsException",
                    f"Trail {name} already exists for customer: {self.config.daemon.account_id}",
                )
            if len(self.trails) >= MAX_TRAILS:
                raise TrailChangeError(
                    "MaximumNumberOfTrailsExceededException",
                    f"this daemon has {len(self.trails)} trails, the most it holds; delete one",
                )
            now = time.time()
            trail.created = trail.logging_changed = now
            config = trail_config(self.config, name, trail)
            assert self.stages is not None
            await self._run(lambda: self.core.upsert_trail(spec_of(config)))
            try:
                await self.stages.start(config)
            except TrailsealError:
                await self._run(lambda: self.core.remove_trail(name))
                raise
            self.api[name] = trail
            self.trails[name] = config
            metrics.register_trails([name])
            await self._run(self._save)
            log.info("trail %s created through the API: %s", name, config.destination)
            return config

    async def update(self, name: str, change: Callable[[ApiTrail], ApiTrail]) -> TrailConfig:
        """Apply ``change`` to the stored trail; the destination may not change (a new bucket
        would start a new chain in another place: delete and create instead)."""
        async with self._lock:
            old = self._changeable(name)
            new = change(ApiTrail.from_json(old.to_json()))
            config = trail_config(self.config, name, new)
            if config.destination != self.trails[name].destination:
                raise TrailChangeError(
                    "InvalidParameterCombinationException",
                    f"trail {name}: changing the bucket or prefix of a running trail is not "
                    "supported; delete the trail and create it again with the new one",
                )
            await self._run(lambda: self.core.upsert_trail(spec_of(config)))
            self.api[name] = new
            self.trails[name] = config
            await self._run(self._save)
            return config

    async def set_logging(self, name: str, on: bool) -> None:
        async with self._lock:
            api = self._changeable(name)
            if api.logging == on:
                return
            api.logging = on
            api.logging_changed = time.time()
            await self._run(lambda: self.core.set_logging(name, on))
            await self._run(self._save)
            assert self.stages is not None
            if on:
                await self.stages.start(self.trails[name])
                log.info("trail %s: logging started", name)
            else:
                log.info("trail %s: logging stopped; delivering what it holds", name)
                self.stages.spawn(functools.partial(self._drained, name))

    async def _drained(self, name: str) -> None:
        assert self.stages is not None
        await self.stages.drain(name)
        log.info("trail %s: its final digest is delivered", name)

    async def delete(self, name: str) -> None:
        async with self._lock:
            api = self._changeable(name)
            api.deleting = True
            await self._run(lambda: self.core.set_logging(name, False))
            await self._run(self._save)
        assert self.stages is not None
        log.info("trail %s: deleting; delivering what it holds first", name)
        self.stages.spawn(functools.partial(self.resume_delete, name))

    async def resume_delete(self, name: str) -> None:
        """Carry out a deletion (also at start, for one a restart cut short): deliver what the
        trail holds, write its final digest, remove it."""
        assert self.stages is not None
        await self.stages.drain(name)
        await self.finish_delete(name)

    async def finish_delete(self, name: str) -> None:
        """The last step of a deletion: once the trail's delivered files have left the spool
        (the event history may still be indexing them), remove its spool and its entry. If that
        takes longer than :data:`DELETE_WAIT_SECS`, the trail stays marked as being deleted
        (hidden) and the deletion is finished after the next start."""
        with trio.move_on_after(DELETE_WAIT_SECS) as wait:
            while True:
                if not await self._run(lambda: self.core.sealed_files(name)):
                    break
                await trio.sleep(0.2)  # the history's removals run in its own task
        if wait.cancelled_caught:
            log.warning(
                "trail %s: delivered files still wait in the spool for the event history; the "
                "deletion is finished after the next start",
                name,
            )
            return
        async with self._lock:
            await self._run(lambda: self.core.remove_trail(name))
            self.api.pop(name, None)
            self.trails.pop(name, None)
            await self._run(self._save)
            log.info("trail %s deleted", name)
