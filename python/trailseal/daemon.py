"""The daemon: ``trailseal serve``. Its whole topology is in :func:`_serve`.

Start: load the config, check the data dir, open the Core (crash recovery: its notes are logged
as warnings and every recovered open segment is sealed), load or create the signing key, open
the destinations, bind the listeners, then start the stages (each reports ``started()``):

    listeners ──Submission──▶ batcher ──Core.process+sync──▶ acks back to each connection
                                 └─ sealer (size / age / shutdown) ──SealedFile──▶ uploader/trail
                                                                     digest writer/trail

Shutdown (first SIGTERM/SIGINT): stop accepting and reading → every connection's read lines are
settled and acknowledged (final ack, then close) → the submissions channel closes and the batcher
drains → every open segment is sealed → the uploader channels close and the uploaders deliver
everything → the digest writers write their final digests → exit 0. All of it is bounded by
``[daemon] shutdown_timeout_secs``. A second signal exits at once (what is on disk is recovered at
the next start). systemd: ``READY=1`` / ``STOPPING=1`` go to ``$NOTIFY_SOCKET`` when it is set.
"""

from __future__ import annotations

import fcntl
import gc
import logging
import os
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio

from trailseal import _core, metrics
from trailseal import config as config_mod
from trailseal import registry as registry_mod
from trailseal.api import access_keys as api_keys
from trailseal.api import server as api_server
from trailseal.api.cloudtrail import ApiState, CloudTrailApi
from trailseal.config import Config, TrailConfig
from trailseal.delivery import retention
from trailseal.delivery.destination import Destination, open_destination
from trailseal.delivery.notify import Notifier
from trailseal.delivery.signer import Signer
from trailseal.delivery.stages import TrailStages, cancellable
from trailseal.errors import DeliveryError, TrailsealError
from trailseal.history import EventHistory
from trailseal.ingest.http import HttpIngest
from trailseal.ingest.listener import Ingest, bind_tcp, bind_unix
from trailseal.pipeline import CoreRunner, PipelineStats, Sealer, Submission, run_batcher

log = logging.getLogger("trailseal")

SUBMISSION_CHANNEL_SIZE = 64
"""Chunks (≤ 256 KiB each) waiting for the batcher; when full, connections stop reading."""
HISTORY_SETTLE_SECS = 10.0
"""At shutdown, how long delivered files may wait for the event history before they are left
in the spool (recorded as delivered; removed after the next start)."""
NOTIFY_FLUSH_SECS = 3.0
"""At shutdown, how long queued delivery notifications may still take (best-effort)."""
MALLOC_ARENAS = 4
"""glibc malloc arenas for the daemon's threads (trio's workers, the core's, the history's).
glibc's default (one per thread that allocates, up to 8 per core) kept ~35 MB more resident
under load in ``benches/loadgen.py`` for no measurable speed (BENCHMARKS.md)."""


class StartupError(TrailsealError):
    """The daemon cannot start (data dir, socket in use, core); the message says what to do."""


def main(config_path: Path | None, check_only: bool) -> int:
    """``trailseal serve``: 0 after a clean shutdown, 2 on a config or startup error."""
    logging.basicConfig(
        level=os.environ.get("TRAILSEAL_LOG_LEVEL", "INFO").upper(),
        format="trailseal: %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        config = config_mod.load(config_path)
    except TrailsealError as exc:
        print(f"trailseal: config error: {exc}", file=sys.stderr)
        return 2
    if check_only:
        print(config_mod.describe(config))
        return 0
    _core.limit_malloc_arenas(MALLOC_ARENAS)  # before the first thread starts
    try:
        _check_data_dir(config.daemon.data_dir)  # before reading the API trails stored there
        config, api_trails = registry_mod.with_api_trails(config)
        prepared = _prepare(config)
    except TrailsealError as exc:
        print(f"trailseal: {exc}", file=sys.stderr)
        return 2
    code = 1
    try:
        code = trio.run(_serve, config, prepared, api_trails)
    except* _core.CoreError as group:
        for failure in group.exceptions:
            print(
                f"trailseal: fatal: the spool failed: {failure}; acknowledged events are safe on "
                "disk and are recovered at the next start",
                file=sys.stderr,
            )
    finally:
        prepared.close()
    return code


# ---------------------------------------------------------------------------------------------
# Start-up checks (synchronous, before anything listens)


LOCK_FILE = "trailseal.lock"


def _lock_data_dir(data_dir: Path) -> int:
    """Take the exclusive flock on ``<data_dir>/trailseal.lock`` (held for the process lifetime:
    the descriptor is returned and never closed) and write our pid into it. Two daemons on one
    data dir would corrupt the spool; the second one stops here."""
    path = data_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise StartupError(f"cannot open the lock file {path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        except OSError:
            holder = "unknown"
        os.close(fd)
        raise StartupError(
            f"data dir {data_dir} is in use by another trailseal (pid {holder}); stop it, or give "
            "this one another [daemon] data_dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


@dataclass
class _Prepared:
    core: _core.Core
    signer: Signer
    destinations: dict[str, Destination]
    sockets: list[tuple[socket.socket, str]]
    api_socket: socket.socket | None = None
    access_keys: api_keys.AccessKeys | None = None

    def close(self) -> None:
        if self.api_socket is not None:
            self.api_socket.close()
        for sock, kind in self.sockets:
            if kind == "unix":
                try:
                    path = sock.getsockname()
                    if isinstance(path, str) and path:
                        os.unlink(path)
                except OSError:
                    pass
            sock.close()


def _check_data_dir(data_dir: Path) -> None:
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=data_dir, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise StartupError(
            f"data dir {data_dir} is not usable: {exc.strerror or exc}; make it writable by "
            "this user or set [daemon] data_dir"
        ) from None


def _check_object_lock(
    config: Config, name: str, trail: TrailConfig, destination: Destination
) -> None:
    """A trail with ``object_lock_mode`` needs a bucket with Object Lock enabled: refuse to start
    (ConfigError) when the bucket says it has none; when the bucket cannot be asked now (S3 down),
    start anyway with a WARNING (the puts are retried and fail loudly until it is fixed)."""
    check = getattr(destination, "check_object_lock", None)
    if not trail.object_lock_mode or check is None:
        return
    try:
        check(f"{config.source or '<defaults>'}: [trails.{name}] object_lock_mode")
    except DeliveryError as exc:
        log.warning("trail %s: cannot check the bucket's Object Lock now: %s", name, exc)


def _prepare(config: Config) -> _Prepared:
    data_dir = config.daemon.data_dir
    _check_data_dir(data_dir)
    _lock_data_dir(data_dir)  # held until the process exits
    try:
        core = _core.Core(
            str(data_dir / "spool"),
            [registry_mod.spec_of(trail) for trail in config.trails.values()],
            account_id=config.daemon.account_id,
            region=config.daemon.region,
            max_event_bytes=config.ingest.max_event_bytes,
            add_receipt=config.ingest.add_receipt,
            dedup_capacity=config.ingest.dedup_window,
            zstd_level=config.daemon.zstd_level,
        )
    except Exception as exc:
        raise StartupError(f"cannot open the spool in {data_dir / 'spool'}: {exc}") from None
    for note in core.recovery_notes():
        log.warning("recovery: %s", note)
    try:
        signer = Signer.load_or_create(data_dir / "keys")
        destinations = {
            name: open_destination(trail.destination, host_id=config.daemon.host_id, trail=trail)
            for name, trail in config.trails.items()
        }
        for name, trail in config.trails.items():
            _check_object_lock(config, name, trail, destinations[name])
            _apply_lifecycle(config, name, trail, destinations[name])
    except TrailsealError as exc:
        raise StartupError(str(exc)) from None
    sockets: list[tuple[socket.socket, str]] = []
    prepared = _Prepared(core, signer, destinations, sockets)
    try:
        if config.ingest.unix_socket is not None:
            unix = bind_unix(
                config.ingest.unix_socket,
                config.ingest.unix_socket_mode,
                config.ingest.unix_socket_group,
            )
            sockets.append((unix, "unix"))
        if config.ingest.tcp_listen is not None:
            sockets.append((bind_tcp(*config.ingest.tcp_listen), "tcp"))
        if config.api.listen is not None:
            prepared.api_socket = api_server.bind(*config.api.listen)
            prepared.access_keys = api_keys.load(config.api, data_dir, create=True)
    except TrailsealError as exc:
        prepared.close()
        raise StartupError(str(exc)) from None
    if not sockets:
        log.warning('both listeners are disabled ([ingest] unix_socket and tcp_listen are "")')
    return prepared


def _apply_lifecycle(
    config: Config, name: str, trail: TrailConfig, destination: Destination
) -> None:
    """``retention_days`` on an ``s3://`` trail: put (or remove) its lifecycle rule now. A bucket
    that refuses it stops the start (ConfigError); one that cannot be reached now gets a WARNING
    (the rule is applied at the next start)."""
    if not destination.url.startswith("s3://"):
        return
    where = f"{config.source or '<defaults>'}: [trails.{name}] retention_days"
    try:
        if retention.apply_lifecycle(destination, trail, where):
            log.info(
                "trail %s: bucket lifecycle rule %s%s set (retention_days=%d)",
                name,
                retention.RULE_ID_PREFIX,
                name,
                trail.retention_days,
            )
    except DeliveryError as exc:
        if trail.retention_days:
            log.warning("trail %s: cannot set the bucket's lifecycle rule now: %s", name, exc)


# ---------------------------------------------------------------------------------------------
# The topology


async def _serve(
    config: Config, prepared: _Prepared, api_trails: dict[str, registry_mod.ApiTrail]
) -> int:
    core = prepared.core
    runner = CoreRunner(core)
    stats = PipelineStats()
    prefixes = {name: dest.prefix for name, dest in prepared.destinations.items()}
    data_dir = config.daemon.data_dir
    trails = registry_mod.TrailRegistry(config, api_trails, core)
    unfinished = trails.apply_logging_state()

    stop = trio.Event()
    ok = True
    metrics.register_trails(list(config.trails))
    notifiers = {
        name: Notifier(trail=name, url=trail.notify_url, bucket=prepared.destinations[name].bucket)
        for name, trail in config.trails.items()
        if trail.notify_url
    }
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        # Crash recovery: seal what the last run left open; the uploaders deliver it at start.
        recovered = await Sealer(
            runner=runner, config=config, prefixes=prefixes, uploads=None
        ).check(everything=True)
        if recovered:
            log.warning("%d open segments recovered and sealed", len(recovered))

        _announce(config, prepared)

        async with trio.open_nursery() as root:
            watcher = trio.CancelScope()
            root.start_soon(_watch_signals, signals, stop, watcher)
            shutdown = root.cancel_scope
            # side stages: never able to hold up delivery; cancelled at the very end
            side: list[trio.CancelScope] = []

            async def start_side(run: Callable[..., Awaitable[None]]) -> None:
                side.append(trio.CancelScope())
                await root.start(cancellable, side[-1], run)

            history: EventHistory | None = None
            if config.history.enabled:  # side path: tails the spool; gates spool removals
                try:
                    history = await EventHistory.open(data_dir, config.history)
                except _core.CoreError as exc:  # a side path: ingest and delivery go on
                    log.error(
                        "event history unavailable, running without it (LookupEvents refuses "
                        "until it is fixed): %s",
                        exc,
                    )
                if history is not None:
                    # the core hands it each frame it writes, with the lookup values hashed
                    core.feed_history(history.core)
                    await start_side(history.run)

            api = api_server.ApiServer(max_body_bytes=config.api.max_body_bytes)
            api_state: ApiState | None = None
            if prepared.access_keys is not None:
                api_state = ApiState(
                    config=config,
                    signer=prepared.signer,
                    data_dir=data_dir,
                    destinations=prepared.destinations,
                    access_keys=prepared.access_keys,
                    trails=trails,
                )
                api_state.history = history
                CloudTrailApi(api_state).install(api)
            if prepared.api_socket is not None:
                await start_side(partial(api.serve, prepared.api_socket))
            for notifier in notifiers.values():
                await start_side(notifier.run)
            for name, trail in config.trails.items():
                dest = prepared.destinations[name]
                if trail.retention_days and not dest.url.startswith("s3://"):
                    await start_side(partial(retention.run, trail=trail, destination=dest))

            stages = TrailStages(
                config=config,
                core=core,
                signer=prepared.signer,
                destinations=prepared.destinations,
                notifiers=notifiers,
                history=history,
            )
            trails.stages = stages
            async with trio.open_nursery() as digests:
                async with trio.open_nursery() as delivery:
                    stages.attach(digests, delivery)
                    for trail in config.trails.values():
                        await stages.start(trail)
                    sealer = Sealer(
                        runner=runner,
                        config=config,
                        prefixes=stages.prefixes,
                        uploads=stages.uploads,
                        stats=stats,
                        trails=trails.trails,
                    )
                    stages.sealer = sealer
                    for name in unfinished:  # deletions a crash cut short
                        delivery.start_soon(trails.resume_delete, name)
                    for name, api_trail in trails.api.items():
                        if not api_trail.logging and not api_trail.deleting:
                            delivery.start_soon(stages.drain, name)  # stopped: deliver leftovers

                    submit, submissions = trio.open_memory_channel[Submission](
                        SUBMISSION_CHANNEL_SIZE
                    )
                    async with trio.open_nursery() as pipeline:
                        await pipeline.start(
                            partial(
                                run_batcher,
                                runner=runner,
                                submissions=submissions,
                                sealer=sealer,
                                stats=stats,
                            )
                        )
                        timer = trio.CancelScope()
                        await pipeline.start(cancellable, timer, sealer.run)

                        ingest = Ingest(config.ingest, submit)
                        HttpIngest(ingest).install(api)
                        metrics.CONNECTIONS.set_function(lambda: ingest.connections)
                        async with trio.open_nursery() as listeners:
                            await listeners.start(ingest.serve_all, prepared.sockets)
                            # what start-up made (modules, config, clients) lives as long as the
                            # daemon: keep it out of the collector's passes from now on
                            gc.freeze()
                            _sd_notify(b"READY=1")
                            log.info("ready")
                            await stop.wait()
                            # -- graceful shutdown, in order, within the deadline --
                            _sd_notify(b"STOPPING=1")
                            log.info("shutting down: settling and acknowledging what was read")
                            shutdown.deadline = (
                                trio.current_time() + config.daemon.shutdown_timeout_secs
                            )
                            ingest.stop()
                            sealer.drain()
                        # every connection got its final ack
                        await submit.aclose()
                        timer.cancel()
                    # the batcher drained the channel
                    sealed = await sealer.check(everything=True)
                    log.info("sealed %d log files; delivering", len(sealed))
                    await stages.close_uploads()
                # the uploaders delivered everything
                stages.stop_writers()
            await stages.write_finals()
            if history is not None:  # delivered files leave the spool once indexed (bounded)
                with trio.move_on_after(HISTORY_SETTLE_SECS):
                    await history.settle()
                if history.waiting_files:
                    log.warning(
                        "event history: %d delivered log files stay in the spool until they "
                        "are indexed after the next start",
                        history.waiting_files,
                    )
            for scope in side:  # api, notifiers, retention
                scope.cancel()  # the notifiers stop retrying; what is queued gets one last try
            for notifier in notifiers.values():
                await notifier.flush(NOTIFY_FLUSH_SECS)
            log.info(
                "stopped: %d events stored, %d duplicates, %d rejected, %d log files sealed",
                stats.accepted,
                stats.duplicates,
                stats.rejected,
                stats.sealed_files,
            )
            watcher.cancel()
        if shutdown.cancelled_caught:
            ok = False
            log.error(
                "shutdown did not finish within [daemon] shutdown_timeout_secs=%g; what was "
                "acknowledged is safe in %s and is sealed and delivered at the next start",
                config.daemon.shutdown_timeout_secs,
                data_dir / "spool",
            )
    return 0 if ok else 1


async def _watch_signals(
    signals: AsyncIterator[int], stop: trio.Event, scope: trio.CancelScope
) -> None:
    """First SIGTERM/SIGINT: graceful shutdown. Second: exit at once (recovery handles it)."""
    with scope:
        async for signum in signals:
            name = signal.Signals(signum).name
            if not stop.is_set():
                log.info("%s received: shutting down (send it again to exit at once)", name)
                stop.set()
                continue
            log.error(
                "second %s: exiting at once; acknowledged events are safe on disk and are "
                "sealed and delivered at the next start",
                name,
            )
            logging.shutdown()
            os._exit(128 + signum)


def _announce(config: Config, prepared: _Prepared) -> None:
    """One line per thing a user needs, on stderr."""
    lines = [f"data dir: {config.daemon.data_dir}"]
    ingest = config.ingest
    lines.append(f"unix socket: {ingest.unix_socket if ingest.unix_socket else 'disabled'}")
    if ingest.tcp_listen:
        auth = " (token required)" if ingest.tokens else ""
        lines.append(f"tcp: {ingest.tcp_listen[0]}:{ingest.tcp_listen[1]}{auth}")
    else:
        lines.append("tcp: disabled")
    for name, dest in prepared.destinations.items():
        lines.append(f"trail {name}: {dest.url}")
    if config.api.listen:
        host, port = config.api.listen
        shown = f"[{host}]" if ":" in host else host
        lines.append(f"api: http://{shown}:{port} (CloudTrail API, /v1/events, /metrics, /healthz)")
        keys = prepared.access_keys
        if keys is not None and keys.generated_path is not None:
            lines.append(
                f"api access key: {keys.generated_path} (`trailseal api credentials` prints it "
                "for the AWS CLI)"
            )
    else:
        lines.append("api: disabled")
    lines.append(f"signing key: {prepared.signer.fingerprint}")
    for line in lines:
        print(f"trailseal: {line}", file=sys.stderr)
    sys.stderr.flush()


def _sd_notify(message: bytes) -> None:
    """sd_notify(3) without a library: one datagram to ``$NOTIFY_SOCKET``."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message)
    except OSError as exc:
        log.warning("could not notify systemd at %s: %s", address, exc)
