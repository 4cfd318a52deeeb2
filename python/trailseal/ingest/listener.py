"""Ingest listeners (FORMATS.md §2): a unix socket (peers identified by SO_PEERCRED) and TCP
(optionally with a token as the first line), one task per connection.

Per connection: a reader (read up to :data:`READ_SIZE`, frame, submit chunks to the pipeline's
bounded channel — when it is full the reader simply waits: backpressure, nothing read is ever
dropped) and a writer (sends the error and ack lines the batcher queues on the
:class:`~trailseal.pipeline.Connection`). At EOF the reader waits until everything it submitted
is settled, the final ack is sent, and the connection closes. At shutdown (:meth:`Ingest.stop`)
accepting and reading stop; what was read is settled and acknowledged the same way.
"""

from __future__ import annotations

import errno
import grp
import hmac
import json
import logging
import os
import socket
import stat
import struct
import time
from pathlib import Path

import trio

from trailseal.config import IngestConfig
from trailseal.errors import TrailsealError
from trailseal.ingest.framing import Chunk, EventTooLarge, LineFramer
from trailseal.pipeline import Connection, Submission, error_reply

log = logging.getLogger("trailseal.ingest")

READ_SIZE = 256 * 1024
AUTH_LINE_MAX = 4096
AUTH_TIMEOUT_SECS = 10.0
FINAL_FLUSH_SECS = 5.0
"""At shutdown, how long a connection's final replies may take to reach a slow client."""


class ListenError(TrailsealError):
    """A listener could not be set up (socket in use, bad path, permission)."""


# ---------------------------------------------------------------------------------------------
# Setting up the listening sockets (synchronous, before the daemon reports ready)


def bind_unix(path: Path, mode: int, group: str) -> socket.socket:
    """Bind the unix socket: refuse a path served by a live process, replace a stale one.

    The socket is bound, not yet listening: :meth:`Ingest.serve_all` listens once the daemon is
    ready, so a client (or a test) that can connect knows the daemon handles signals."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        st = path.lstat()
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise ListenError(
                f"unix socket path {path} exists and is not a socket; remove it or set "
                "[ingest] unix_socket to another path"
            )
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("removing stale socket %s", path)
            path.unlink(missing_ok=True)
        else:
            raise ListenError(
                f"unix socket {path} is in use by a live process (another trailseal?); stop it "
                "or set [ingest] unix_socket to another path"
            )
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, mode)
        if group:
            try:
                gid = grp.getgrnam(group).gr_gid
            except KeyError:
                raise ListenError(
                    f"[ingest] unix_socket_group: no group named {group!r} on this host"
                ) from None
            os.chown(path, -1, gid)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on unix socket {path}: {exc.strerror}") from None
    except BaseException:
        sock.close()
        raise
    return sock


def bind_tcp(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"[ingest] tcp_listen: cannot resolve {host!r}: {exc}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        hint = " (another process is listening there)" if exc.errno == errno.EADDRINUSE else ""
        raise ListenError(f"cannot listen on TCP {host}:{port}: {exc.strerror}{hint}") from None
    return sock


def unix_peer(sock: trio.socket.SocketType) -> str:
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", creds)
    except OSError:
        return "unix:uid=-1,pid=-1"
    return f"unix:uid={uid},pid={pid}"


def tcp_peer(sock: trio.socket.SocketType) -> str:
    try:
        address = sock.getpeername()
    except OSError:
        return "tcp:?:0"
    host, port = address[0], address[1]
    return f"tcp:[{host}]:{port}" if ":" in host else f"tcp:{host}:{port}"


# ---------------------------------------------------------------------------------------------
# Serving


class Ingest:
    """All listeners and connections; :meth:`stop` begins the graceful part of shutdown."""

    def __init__(
        self, config: IngestConfig, submissions: trio.MemorySendChannel[Submission]
    ) -> None:
        self.config = config
        self.submissions = submissions
        self.stopping = False
        self._accept_scopes: list[trio.CancelScope] = []
        self._read_scopes: set[trio.CancelScope] = set()
        self._live: set[Connection] = set()
        self.connections = 0

    def stop(self) -> None:
        """Stop accepting and reading; connections settle, send their final ack and close."""
        self.stopping = True
        for conn in self._live:
            conn.stop_reading()
        for scope in self._accept_scopes:
            scope.cancel()
        for scope in list(self._read_scopes):
            scope.cancel()

    async def serve_all(
        self,
        sockets: list[tuple[socket.socket, str]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on every bound socket (kind "unix" or "tcp") at once, so a client that reached
        one listener can reach them all, then accept on each until :meth:`stop`; return when
        every connection has finished."""
        for sock, _ in sockets:
            sock.listen(socket.SOMAXCONN)
        async with trio.open_nursery() as nursery:
            for sock, kind in sockets:
                await nursery.start(self._serve, sock, kind)
            task_status.started()

    async def _serve(
        self,
        sock: socket.socket,
        kind: str,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept connections on the listening ``sock`` (kind "unix" or "tcp")."""
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        scope = trio.CancelScope()
        self._accept_scopes.append(scope)
        if self.stopping:
            scope.cancel()
        async with trio.open_nursery() as connections:
            task_status.started()
            with scope:
                while True:
                    stream = await listener.accept()
                    connections.start_soon(self._connection, stream, kind)
            await listener.aclose()

    async def _connection(self, stream: trio.SocketStream, kind: str) -> None:
        self.connections += 1
        peer = unix_peer(stream.socket) if kind == "unix" else tcp_peer(stream.socket)
        try:
            async with stream:
                await self._converse(stream, kind, peer)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.debug("connection %s ended: %s", peer, exc)
        except Exception:
            log.exception("connection %s failed (other connections are not affected)", peer)
        finally:
            self.connections -= 1

    async def _converse(self, stream: trio.SocketStream, kind: str, peer: str) -> None:
        leftover = b""
        agent: str | None = None
        if kind == "tcp" and self.config.tokens:
            authed = await self._authenticate(stream, peer)
            if authed is None:
                return
            agent, leftover = authed
        conn = Connection(peer, agent)
        self._live.add(conn)
        try:
            await self._serve_connection(stream, conn, leftover)
        finally:
            self._live.discard(conn)

    async def _serve_connection(
        self, stream: trio.SocketStream, conn: Connection, leftover: bytes
    ) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write, stream, conn, nursery.cancel_scope)
            try:
                await self._read(stream, conn, leftover)
                await conn.wait_settled()
            finally:
                conn.finish()
            if self.stopping:
                nursery.cancel_scope.deadline = trio.current_time() + FINAL_FLUSH_SECS

    async def _read(self, stream: trio.SocketStream, conn: Connection, leftover: bytes) -> None:
        framer = LineFramer(self.config.max_event_bytes)
        data = leftover
        while True:
            if data:
                received_ms = time.time_ns() // 1_000_000
                for item in framer.feed(data):
                    await self._submit(conn, item, received_ms)
                await conn.wait_drained()
            if self.stopping or conn.closed:
                return
            with trio.CancelScope() as scope:
                self._read_scopes.add(scope)
                try:
                    data = await stream.receive_some(READ_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    conn.mark_closed()  # the client went away (reset): nothing more to send
                    return
                finally:
                    self._read_scopes.discard(scope)
            if scope.cancelled_caught:
                return
            if not data:
                received_ms = time.time_ns() // 1_000_000
                for item in framer.eof():
                    await self._submit(conn, item, received_ms)
                return

    async def submit_body(self, conn: Connection, body: bytes) -> int:
        """Submit one whole request body (``POST /v1/events``) as a connection's lines, through
        the same path as socket lines; return how many lines it held. The caller waits for
        :meth:`Connection.wait_settled`."""
        framer = LineFramer(self.config.max_event_bytes)
        received_ms = time.time_ns() // 1_000_000
        for item in framer.feed(body) + framer.eof():
            await self._submit(conn, item, received_ms)
        return framer.next_line - 1

    async def _submit(
        self, conn: Connection, item: Chunk | EventTooLarge, received_ms: int
    ) -> None:
        conn.submitted = item.first_line + item.lines - 1 if isinstance(item, Chunk) else item.line
        await self.submissions.send(Submission(conn, item, received_ms))

    async def _write(
        self, stream: trio.SocketStream, conn: Connection, scope: trio.CancelScope
    ) -> None:
        try:
            while True:
                data = await conn.next_replies()
                if data is None:
                    return
                await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            conn.mark_closed()
            scope.cancel()

    async def _authenticate(self, stream: trio.SocketStream, peer: str) -> tuple[str, bytes] | None:
        """Read ``{"auth":{"token":…}}``; return (agent name, bytes after the line) or None."""
        buffer = b""
        with trio.move_on_after(AUTH_TIMEOUT_SECS):
            while b"\n" not in buffer and len(buffer) <= AUTH_LINE_MAX:
                data = await stream.receive_some(READ_SIZE)
                if not data:
                    break
                buffer += data
        line, sep, rest = buffer.partition(b"\n")
        agent = None
        if sep:
            try:
                token = json.loads(line)["auth"]["token"]
            except (ValueError, KeyError, TypeError):
                token = None
            if isinstance(token, str):
                for name, value in self.config.tokens.items():
                    if hmac.compare_digest(value.encode(), token.encode()):
                        agent = name
        if agent is None:
            log.warning("refused TCP connection from %s: no valid auth token", peer)
            message = (
                'the first line must be {"auth":{"token":"..."}} with a token from [ingest.tokens]'
            )
            await stream.send_all(error_reply(0, "Unauthorized", message))
            return None
        await stream.send_all(b'{"auth":"ok"}\n')
        return agent, rest
