"""The API listener (``[api] listen``, default 127.0.0.1:7708): a small HTTP/1.1 server on trio.

HTTP is parsed by ``h11`` (sans-IO; the library hypercorn is built on); this module only moves
bytes, enforces the limits and dispatches to routes. Routes:

    GET /metrics     Prometheus text exposition of :data:`trailseal.metrics.REGISTRY`
    GET /healthz     JSON: {"status": "ok"|"degraded", "uptime_secs", "trails": {name: {...}}}
                     (200 when ok, 503 when degraded)
    POST /           the CloudTrail API, AWS JSON 1.1 + SigV4 (:mod:`trailseal.api.cloudtrail`)
    POST /v1/events  HTTP ingest, NDJSON (:mod:`trailseal.ingest.http`)
    anything else    404 (405 for a known path with another method), JSON {"error","message"}

The last two are added by the daemon with :meth:`ApiServer.route`; a handler gets a
:class:`Request` (the whole body, already bounded by ``max_body_bytes``) and returns a
:class:`Response`.

Limits: request head ≤ :data:`MAX_HEAD_BYTES`, body ≤ ``max_body_bytes`` (``[api]
max_body_bytes``, 413 beyond), each read
must make progress within :data:`READ_TIMEOUT_SECS` (else the connection is closed; 408 when a
request was under way), an idle keep-alive connection is closed after :data:`IDLE_TIMEOUT_SECS`,
at most :data:`MAX_CONNECTIONS` at once (further ones wait in the kernel's backlog).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import h11
import trio

from trailseal import __version__, metrics
from trailseal.errors import TrailsealError

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 16 * 1024
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
READ_TIMEOUT_SECS = 10.0
IDLE_TIMEOUT_SECS = 30.0
MAX_CONNECTIONS = 256
RECEIVE_BYTES = 65536


class ApiError(TrailsealError):
    """The API listener cannot start (address in use, cannot resolve)."""


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    """The target's path, without the query string."""
    query: str
    headers: dict[str, str]
    """Lower-case names; repeated headers joined with ", "."""
    body: bytes
    peer: str


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, value: Any) -> Response:
        return cls(status, json.dumps(value, separators=(",", ":")).encode() + b"\n")


Handler = Callable[[Request], Awaitable[Response]]


def error_response(status: int, code: str, message: str) -> Response:
    return Response.json(status, {"error": code, "message": message})


def bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket now (start-up is synchronous, so a taken port stops the daemon
    with a clear message before anything runs). Raises ApiError."""
    where = f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ApiError(f"[api] listen: cannot resolve {host!r}: {exc}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        hint = (
            ": another process is listening there; stop it or set [api] listen to another "
            'address (or "" to disable the API)'
            if exc.errno == errno.EADDRINUSE
            else ""
        )
        raise ApiError(f"cannot listen on {where} ([api] listen): {exc.strerror}{hint}") from None
    return sock


class ApiServer:
    """Routes plus the connection loop. ``serve(sock)`` runs until cancelled."""

    def __init__(self, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.max_body_bytes = max_body_bytes
        self._routes: dict[tuple[str, str], Handler] = {}
        self._limit = trio.Semaphore(MAX_CONNECTIONS)
        self.route("GET", "/metrics", _metrics)
        self.route("GET", "/healthz", _healthz)

    def route(self, method: str, path: str, handler: Handler) -> None:
        self._routes[(method.upper(), path)] = handler

    async def serve(
        self,
        sock: socket.socket,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                await self._limit.acquire()
                try:
                    stream = await listener.accept()
                except BaseException:
                    self._limit.release()
                    raise
                nursery.start_soon(self._connection, stream)

    async def _connection(self, stream: trio.SocketStream) -> None:
        try:
            peer = _peer(stream)
            async with stream:
                await self._converse(stream, peer)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.debug("api connection ended: %s", exc)
        except Exception:
            log.exception("api connection failed (other connections are not affected)")
        finally:
            self._limit.release()

    async def _converse(self, stream: trio.SocketStream, peer: str) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        while True:
            try:
                request = await self._read_request(stream, conn, peer)
            except _Reply as reply:
                # too early or too late in the exchange for a response: just close
                with contextlib.suppress(h11.LocalProtocolError):
                    await _send(stream, conn, reply.response, close=True)
                return
            if request is None:
                return
            handler = self._routes.get((request.method, request.path))
            if handler is None:
                if any(path == request.path for _, path in self._routes):
                    allowed = sorted(m for m, p in self._routes if p == request.path)
                    response = error_response(
                        405,
                        "MethodNotAllowed",
                        f"{request.method} is not allowed on {request.path}; use "
                        + " or ".join(allowed),
                    )
                else:
                    paths = ", ".join(sorted({p for _, p in self._routes}))
                    response = error_response(
                        404, "NotFound", f"no such resource {request.path}; try {paths}"
                    )
            else:
                try:
                    response = await handler(request)
                except Exception:
                    log.exception("api: %s %s failed", request.method, request.path)
                    response = error_response(500, "InternalError", "see the daemon's log")
            await _send(stream, conn, response, close=False)
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _read_request(
        self, stream: trio.SocketStream, conn: h11.Connection, peer: str
    ) -> Request | None:
        """The next whole request; None when the client closed or went idle between requests.
        Raises :class:`_Reply` with the error response to send (then close)."""
        head: h11.Request | None = None
        body: list[bytes] = []
        size = 0
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise _Reply(
                    error_response(exc.error_status_hint, "BadRequest", str(exc))
                ) from None
            if event is h11.NEED_DATA:
                idle = head is None and conn.their_state is h11.IDLE
                timeout = IDLE_TIMEOUT_SECS if idle else READ_TIMEOUT_SECS
                with trio.move_on_after(timeout) as scope:
                    data = await stream.receive_some(RECEIVE_BYTES)
                if scope.cancelled_caught:
                    if idle:
                        return None
                    raise _Reply(error_response(408, "RequestTimeout", "request not received"))
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                head = event
                length = _content_length(event)
                if length is not None and length > self.max_body_bytes:
                    raise _Reply(self._too_large())
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > self.max_body_bytes:
                    raise _Reply(self._too_large())
                body.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                target = head.target.decode("ascii", "replace")
                path, _, query = target.partition("?")
                headers: dict[str, str] = {}
                for name, value in head.headers:
                    key = name.decode("ascii").lower()
                    text = value.decode("latin-1")
                    headers[key] = f"{headers[key]}, {text}" if key in headers else text
                return Request(
                    method=head.method.decode("ascii"),
                    path=path,
                    query=query,
                    headers=headers,
                    body=b"".join(body),
                    peer=peer,
                )
            elif isinstance(event, h11.ConnectionClosed):
                return None

    def _too_large(self) -> Response:
        return error_response(
            413, "RequestTooLarge", f"the request body is over {self.max_body_bytes} bytes"
        )


class _Reply(Exception):
    """Stop reading and answer with ``response`` (then close)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


def _content_length(request: h11.Request) -> int | None:
    for name, value in request.headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send(
    stream: trio.SocketStream, conn: h11.Connection, response: Response, *, close: bool
) -> None:
    headers = [
        ("content-type", response.content_type),
        ("content-length", str(len(response.body))),
        ("server", f"trailseal/{__version__}"),
        *response.headers.items(),
    ]
    if close:
        headers.append(("connection", "close"))
    data = conn.send(h11.Response(status_code=response.status, headers=headers))
    data = (data or b"") + (conn.send(h11.Data(data=response.body)) or b"")
    data += conn.send(h11.EndOfMessage()) or b""
    with trio.move_on_after(READ_TIMEOUT_SECS):
        await stream.send_all(data)


def _peer(stream: trio.SocketStream) -> str:
    try:
        address = stream.socket.getpeername()
    except OSError:
        return "tcp:?:0"
    return f"tcp:{address[0]}:{address[1]}"


async def _metrics(request: Request) -> Response:
    return Response(200, metrics.exposition(), content_type=metrics.CONTENT_TYPE_LATEST)


async def _healthz(request: Request) -> Response:
    doc = metrics.health()
    doc["version"] = __version__
    return Response.json(200 if doc["status"] == "ok" else 503, doc)
