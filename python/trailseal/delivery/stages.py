"""Each trail's delivery stages — its uploader and its digest writer — started and stopped one
trail at a time, so that trails made, stopped or deleted through the API take effect at run time.

The daemon opens two nurseries (digest writers outside, uploaders inside) and hands them to
:meth:`TrailStages.attach`; :meth:`start` adds a trail's pair; :meth:`drain` retires one (seal
what it holds, let its uploader deliver everything, write its final digest); at shutdown the
daemon calls :meth:`close_uploads` (every uploader finishes what it has, and the delivery nursery
ends), then :meth:`stop_writers` and :meth:`write_finals`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Protocol

import trio

from trailseal import _core
from trailseal.config import Config, TrailConfig
from trailseal.delivery import uploader
from trailseal.delivery.destination import Destination, open_destination
from trailseal.delivery.digest import DigestWriter
from trailseal.delivery.notify import Notifier
from trailseal.delivery.signer import Signer

log = logging.getLogger("trailseal.delivery")

UPLOAD_CHANNEL_SIZE = 1024


@dataclass
class _Running:
    upload: trio.MemorySendChannel[_core.SealedFile]
    writer: DigestWriter
    writer_scope: trio.CancelScope
    uploaded: trio.Event = field(default_factory=trio.Event)


class TrailStages:
    """The running uploader + digest writer of every trail that has them."""

    def __init__(
        self,
        *,
        config: Config,
        core: _core.Core,
        signer: Signer,
        destinations: dict[str, Destination],
        notifiers: dict[str, Notifier],
        history: uploader.HistoryGate | None = None,
    ) -> None:
        self.config = config
        self.core = core
        self.signer = signer
        self.destinations = destinations
        """trail name → destination (shared with the API's state; updated here)."""
        self.prefixes: dict[str, str] = {n: d.prefix for n, d in destinations.items()}
        """trail name → key prefix (the sealer reads it)."""
        self.uploads: dict[str, trio.MemorySendChannel[_core.SealedFile]] = {}
        """trail name → its uploader's channel (the sealer sends into it)."""
        self.notifiers = notifiers
        self.history = history
        self.sealer: SealsTrails | None = None
        """Set by the daemon once the pipeline's sealer exists."""
        self._running: dict[str, _Running] = {}
        self._draining: dict[str, trio.Event] = {}
        """trail name → set when its drain is over (a start waits for it)."""
        self._finals: list[DigestWriter] = []
        self._digests: trio.Nursery | None = None
        self._delivery: trio.Nursery | None = None

    def attach(self, digests: trio.Nursery, delivery: trio.Nursery) -> None:
        self._digests = digests
        self._delivery = delivery

    def _state_dir(self, name: str) -> Path:
        return self.config.daemon.data_dir / "state" / name

    async def start(self, trail: TrailConfig) -> None:
        """Start the trail's digest writer and uploader (opening its destination if new; raises
        TrailsealError when it cannot be opened)."""
        assert self._digests is not None and self._delivery is not None
        name = trail.name
        draining = self._draining.get(name)
        if draining is not None:
            await draining.wait()
        if name in self._running:
            return
        destination = self.destinations.get(name)
        if destination is None:
            host_id = self.config.daemon.host_id
            destination = await trio.to_thread.run_sync(
                partial(open_destination, trail.destination, host_id=host_id, trail=trail)
            )
            self.destinations[name] = destination
            self.prefixes[name] = destination.prefix
        writer = DigestWriter(
            config=self.config,
            trail=trail,
            destination=destination,
            signer=self.signer,
            state_dir=self._state_dir(name),
        )
        scope = trio.CancelScope()
        await self._digests.start(cancellable, scope, writer.run)
        send, receive = trio.open_memory_channel[_core.SealedFile](UPLOAD_CHANNEL_SIZE)
        running = _Running(send, writer, scope)
        run = partial(
            uploader.run,
            core=self.core,
            trail=trail,
            destination=destination,
            state_dir=self._state_dir(name),
            sealed=receive,
            notifier=self.notifiers.get(name),
            history=self.history,
        )
        await self._delivery.start(_then_set, running.uploaded, run)
        self._running[name] = running
        self.uploads[name] = send

    async def drain(self, name: str) -> None:
        """Seal what the trail holds, deliver all of it, write its final digest, stop its stages.
        (Routing to it must already be off.)"""
        running = self._running.get(name)
        if running is None:
            return
        draining = self._draining.get(name)
        if draining is not None:  # another drain of it is under way
            await draining.wait()
            return
        self._draining[name] = done = trio.Event()
        try:
            if self.sealer is not None:
                await self.sealer.seal_trail(name)
            self.uploads.pop(name, None)
            await running.upload.aclose()
            await running.uploaded.wait()
            running.writer_scope.cancel()
            await running.writer.write_final()
            del self._running[name]
        finally:
            del self._draining[name]
            done.set()

    def spawn(self, run: Callable[[], Awaitable[None]]) -> None:
        """Run ``run()`` in the background, beside the uploaders (a drain that must not hold up
        the API request that asked for it); shutdown waits for it like for an uploader."""
        assert self._delivery is not None
        self._delivery.start_soon(run)

    async def close_uploads(self) -> None:
        """Shutdown: every uploader delivers what it has and ends."""
        for name in list(self.uploads):
            await self.uploads.pop(name).aclose()

    def stop_writers(self) -> None:
        for running in self._running.values():
            running.writer_scope.cancel()

    async def write_finals(self) -> None:
        for running in list(self._running.values()):
            await running.writer.write_final()


class SealsTrails(Protocol):
    """What :meth:`TrailStages.drain` needs of the pipeline's sealer."""

    async def seal_trail(self, name: str) -> None: ...


Stage = Callable[..., Awaitable[None]]
"""A stage: ``await run(task_status=…)`` reports ``started()`` when ready."""


async def _then_set(
    done: trio.Event,
    run: Stage,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    try:
        await run(task_status=task_status)
    finally:
        done.set()


async def cancellable(
    scope: trio.CancelScope,
    run: Stage,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a stage that runs until cancelled, inside ``scope`` so it can be stopped alone."""
    with scope:
        await run(task_status=task_status)
