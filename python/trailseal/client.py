"""The ingest client: the ``trailseal.client`` library and the ``trailseal send`` command.

Speaks the daemon's line protocol (FORMATS.md §2) over a unix socket or TCP:

- Client → daemon: one JSON event per line, ``\\n``-terminated. Blank lines are never sent.
  On a TCP listener that wants a token the first line is ``{"auth":{"token":"…"}}`` and the
  client waits for ``{"auth":"ok"}``; that line is not numbered.
- Daemon → client: ``{"error":{"line":K,"code":…,"message":…}}`` for each rejected line, before
  the ``{"ack":N}`` that covers it; ``{"ack":N}`` settles every line ≤ N of the connection.
  Protocol line numbers count the non-blank lines sent on one connection, from 1.

Invariants the client keeps:

- Every line that is a JSON object without a top-level ``eventID`` gets a fresh UUID v4 *before*
  it is first sent, inserted as text right after the opening ``{`` (the caller's bytes, numbers
  and key order are otherwise untouched). A resend after a reconnect therefore carries the same
  eventID and the daemon's dedup window makes it idempotent.
- Unacknowledged lines stay in memory (at most ``window_bytes`` of them, 8 MiB by default; the
  producer is not read further while the window is full) together with the caller's own line
  number, so rejections are reported in the caller's terms however many reconnects happened.
- A line the daemon rejected is never resent; an acknowledged line is never resent.
- ``send`` returns only when every line it was given is acknowledged (stored, duplicate or
  rejected).

One implementation: a single-threaded loop over a non-blocking socket (``selectors``). It is a
synchronous API; trio code calls it through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import socket
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from trailseal.errors import ConfigError, ProtocolError, TrailsealError

try:
    import orjson

    def _loads(data: bytes) -> Any:
        return orjson.loads(data)

    def _dumps(obj: object) -> bytes:
        return orjson.dumps(obj)

except ImportError:  # pragma: no cover - orjson is optional

    def _loads(data: bytes) -> Any:
        return json.loads(data)

    def _dumps(obj: object) -> bytes:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


__all__ = [
    "DEFAULT_TCP",
    "AuthenticationError",
    "Client",
    "DaemonUnreachableError",
    "InvalidLineError",
    "Rejection",
    "SendResult",
    "Target",
    "assign_event_id",
    "main",
    "resolve_target",
    "send",
]

DEFAULT_TCP = ("127.0.0.1", 7707)
DEFAULT_MAX_EVENT_BYTES = 262144
DEFAULT_WINDOW_BYTES = 8 * 1024 * 1024
_WRITE_BUFFER_MAX = 1024 * 1024
_READ_SIZE = 256 * 1024
# '"eventID":"' + 36-character UUID + '",'
_INSERT_LEN = 49
_BLANK = b" \t\r"


class DaemonUnreachableError(ProtocolError):
    """The daemon could not be reached, the connection could not be re-established within the
    reconnect budget, or the final acknowledgement did not arrive in time.

    ``partial`` holds what was settled before the failure (None if nothing was sent)."""

    def __init__(self, message: str, partial: SendResult | None = None) -> None:
        super().__init__(message)
        self.partial = partial


class AuthenticationError(ProtocolError):
    """The daemon refused the ingest token (code ``Unauthorized``); retrying will not help."""

    def __init__(self, message: str, partial: SendResult | None = None) -> None:
        super().__init__(message)
        self.partial = partial


class InvalidLineError(TrailsealError, ValueError):
    """A line handed to :meth:`Client.send` cannot be framed (it contains a newline)."""


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class Rejection:
    """One line the daemon rejected, in the caller's terms."""

    line_number: int
    """The caller's line number (1-based position in the iterable, blank lines counted)."""
    code: str
    """FORMATS.md §1 rejection code, e.g. ``InvalidJson``, ``MissingField``."""
    message: str
    source: str | None = None
    """The input's name (e.g. a file name) when the caller gave one."""

    def __str__(self) -> str:
        where = f"{self.source}:" if self.source is not None else ""
        return f"{where}line {self.line_number}: {self.code} {self.message}"


@dataclass
class SendResult:
    """What one :meth:`Client.send` call achieved."""

    sent: int = 0
    """Non-blank lines handed to the daemon."""
    accepted: int = 0
    """Lines acknowledged as stored (or as duplicates of stored events)."""
    rejections: list[Rejection] = field(default_factory=list)
    reconnects: int = 0

    @property
    def rejected(self) -> int:
        return len(self.rejections)

    @property
    def ok(self) -> bool:
        return not self.rejections


# ---------------------------------------------------------------------------------------------
# eventID insertion (pure)


def assign_event_id(line: bytes, *, max_event_bytes: int | None = DEFAULT_MAX_EVENT_BYTES) -> bytes:
    """Return ``line`` with ``"eventID":"<uuid4>",`` inserted after its opening ``{`` when it is
    a JSON object without a top-level ``eventID``; otherwise ``line`` unchanged.

    The line (without its line ending) is never re-serialized. A cheap byte check decides the
    common case; only a line that mentions ``"eventID"`` or contains a ``\\u`` escape (which
    could spell the key) is parsed. A line that would grow beyond ``max_event_bytes`` is left
    alone (the daemon assigns the ID then; a resend of that one line is not idempotent)."""
    stripped = line.lstrip(_BLANK)
    if not stripped.startswith(b"{") or not line.rstrip(_BLANK).endswith(b"}"):
        return line
    if max_event_bytes is not None and len(line) + _INSERT_LEN > max_event_bytes:
        return line
    if b'"eventID"' in line or b"\\u" in line:
        try:
            obj = _loads(line)
        except ValueError:
            return line
        if not isinstance(obj, dict) or "eventID" in obj:
            return line
    brace = len(line) - len(stripped)
    rest = line[brace + 1 :]
    sep = b"" if rest.lstrip(_BLANK + b"\n").startswith(b"}") else b","
    event_id = str(uuid.uuid4()).encode()
    return b"".join((line[: brace + 1], b'"eventID":"', event_id, b'"', sep, rest))


def _prepare(
    item: object, line_number: int, source: str | None, max_event_bytes: int
) -> bytes | None:
    """One caller item → the payload to send (no line ending), or None for a blank line."""
    if isinstance(item, dict):
        if "eventID" not in item:
            item = {"eventID": str(uuid.uuid4()), **item}
        return _dumps(item)
    if isinstance(item, str):
        data = item.encode("utf-8", "surrogateescape")
    elif isinstance(item, bytes | bytearray | memoryview):
        data = bytes(item)
    else:
        where = f"{source}:" if source is not None else ""
        raise InvalidLineError(
            f"{where}line {line_number}: expected bytes, str or dict, got {type(item).__name__}"
        )
    if data.endswith(b"\n"):
        data = data[:-1]
    if b"\n" in data:
        where = f"{source}:" if source is not None else ""
        raise InvalidLineError(
            f"{where}line {line_number}: contains a newline inside the line; "
            "pass one event per item (split NDJSON on newlines first)"
        )
    if not data.strip(_BLANK):
        return None
    return assign_event_id(data.rstrip(b"\r"), max_event_bytes=max_event_bytes)


# ---------------------------------------------------------------------------------------------
# Ack tracking (sans-IO)


class _Entry:
    __slots__ = ("data", "line_number", "proto", "rejected", "source")

    def __init__(self, proto: int, source: str | None, line_number: int, data: bytes) -> None:
        self.proto = proto
        self.source = source
        self.line_number = line_number
        self.data = data
        self.rejected = False


class _Tracker:
    """Unacknowledged lines of one connection, the protocol ↔ caller line-number mapping, and
    the replies' effect on them. No I/O."""

    def __init__(self) -> None:
        self.pending: deque[_Entry] = deque()
        self.next_proto = 1
        self.acked = 0
        self.inflight_bytes = 0
        self.result = SendResult()
        self._rbuf = b""

    def add(self, source: str | None, line_number: int, payload: bytes) -> bytes:
        """Record a line about to be sent; returns its wire bytes."""
        self.pending.append(_Entry(self.next_proto, source, line_number, payload))
        self.next_proto += 1
        self.inflight_bytes += len(payload) + 1
        self.result.sent += 1
        return payload + b"\n"

    def restart(self) -> bytes:
        """A new connection: renumber what is unacknowledged (rejected lines are dropped: they
        are settled) and return the bytes to resend."""
        keep = [e for e in self.pending if not e.rejected]
        for i, e in enumerate(keep, start=1):
            e.proto = i
        self.pending = deque(keep)
        self.next_proto = len(keep) + 1
        self.acked = 0
        self.inflight_bytes = sum(len(e.data) + 1 for e in keep)
        self._rbuf = b""
        return b"".join(e.data + b"\n" for e in keep)

    def feed(self, data: bytes) -> None:
        """Bytes read from the daemon: apply every complete reply line."""
        self._rbuf += data
        *lines, self._rbuf = self._rbuf.split(b"\n")
        for raw in lines:
            if raw.strip():
                self.on_reply(raw)

    def on_reply(self, raw: bytes) -> None:
        try:
            reply = _loads(raw)
        except ValueError:
            raise ProtocolError(
                f"the daemon sent a reply that is not JSON: {raw[:200]!r}; "
                "is this address really a trailseal ingest listener?"
            ) from None
        if not isinstance(reply, dict):
            raise ProtocolError(f"the daemon sent an unexpected reply: {raw[:200]!r}")
        if "ack" in reply:
            self._on_ack(reply["ack"], raw)
        elif "error" in reply:
            self._on_error(reply["error"], raw)
        # anything else ({"auth":"ok"}, future additions) carries nothing for us

    def _on_ack(self, n: object, raw: bytes) -> None:
        if not isinstance(n, int) or n < self.acked or n >= self.next_proto:
            raise ProtocolError(
                f"the daemon sent an impossible ack {raw[:200]!r} "
                f"(acknowledged so far: {self.acked}, lines sent: {self.next_proto - 1})"
            )
        self.acked = n
        pending = self.pending
        while pending and pending[0].proto <= n:
            e = pending.popleft()
            self.inflight_bytes -= len(e.data) + 1
            if not e.rejected:
                self.result.accepted += 1

    def _on_error(self, err: object, raw: bytes) -> None:
        if not isinstance(err, dict):
            raise ProtocolError(f"the daemon sent a malformed error reply: {raw[:200]!r}")
        code = str(err.get("code", "Unknown"))
        message = str(err.get("message", ""))
        line = err.get("line", 0)
        if not isinstance(line, int) or line <= 0:
            if code == "Unauthorized":
                raise AuthenticationError(
                    f"the daemon refused the connection: {message or code}; "
                    "check the ingest token (--token or TRAILSEAL_TOKEN)"
                )
            raise ProtocolError(f"the daemon reported a connection error: {code} {message}")
        if not self.pending or not (self.pending[0].proto <= line < self.next_proto):
            raise ProtocolError(
                f"the daemon rejected line {line}, which is not awaiting an ack "
                f"(acknowledged so far: {self.acked}, lines sent: {self.next_proto - 1})"
            )
        e = self.pending[line - self.pending[0].proto]
        if not e.rejected:
            e.rejected = True
            self.result.rejections.append(Rejection(e.line_number, code, message, e.source))


# ---------------------------------------------------------------------------------------------
# Targets


@dataclass(frozen=True)
class Target:
    """Where the daemon listens: exactly one of a unix socket path or a TCP address."""

    unix: Path | None = None
    tcp: tuple[str, int] | None = None

    def __str__(self) -> str:
        if self.unix is not None:
            return f"unix socket {self.unix}"
        assert self.tcp is not None
        return f"TCP {self.tcp[0]}:{self.tcp[1]}"


def parse_host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) → (host, port); ConfigError when it is not that."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--tcp {text!r}: expected HOST:PORT, e.g. 127.0.0.1:7707")
    return host.strip("[]"), int(port)


def _connectable(addr: tuple[str, int]) -> tuple[str, int]:
    """A listen address → an address to connect to (a wildcard listener is reached locally)."""
    host, port = addr
    if host in ("0.0.0.0", ""):
        return "127.0.0.1", port
    if host == "::":
        return "::1", port
    return host, port


def resolve_target(
    *,
    socket_path: Path | None = None,
    tcp: tuple[str, int] | str | None = None,
    config: Path | None = None,
) -> Target:
    """Find the daemon as FORMATS.md §9 says: ``socket_path``, else ``tcp``, else the daemon's
    config file (its ``[ingest] unix_socket``, else its ``tcp_listen``). With none of them: the
    daemon's default unix socket if it exists, else TCP 127.0.0.1:7707."""
    if socket_path is not None:
        return Target(unix=Path(socket_path))
    if tcp is not None:
        return Target(tcp=parse_host_port(tcp) if isinstance(tcp, str) else tcp)
    from trailseal import config as config_mod

    cfg = config_mod.load(config)
    if config is not None:
        if cfg.ingest.unix_socket is not None:
            return Target(unix=cfg.ingest.unix_socket)
        if cfg.ingest.tcp_listen is not None:
            return Target(tcp=_connectable(cfg.ingest.tcp_listen))
        raise ConfigError(
            f"{config}: [ingest] unix_socket and tcp_listen are both disabled; "
            "the daemon accepts no socket connections with this config"
        )
    if cfg.ingest.unix_socket is not None and cfg.ingest.unix_socket.exists():
        return Target(unix=cfg.ingest.unix_socket)
    return Target(tcp=DEFAULT_TCP)


# ---------------------------------------------------------------------------------------------
# The client


class _Broken(Exception):
    """Internal: the connection broke; reconnect and resend."""


class Client:
    """A connection to the daemon's ingest listener.

    >>> with Client.connect(socket="/run/trailseal/ingest.sock") as c:
    ...     result = c.send([{"eventName": "Login", "eventSource": "app"}])
    ...     assert result.ok, result.rejections

    Not thread-safe: use one Client per thread.
    """

    def __init__(
        self,
        target: Target,
        *,
        token: str | None = None,
        reconnect_secs: float = 60.0,
        ack_timeout_secs: float = 60.0,
        connect_timeout_secs: float = 10.0,
        window_bytes: int = DEFAULT_WINDOW_BYTES,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        """Prefer :meth:`connect`. ``reconnect_secs`` bounds the total wait for one reconnect
        (capped exponential backoff); ``ack_timeout_secs`` bounds how long ``send`` waits, once
        everything is written, without any acknowledgement arriving."""
        self.target = target
        self.token = token
        self.reconnect_secs = reconnect_secs
        self.ack_timeout_secs = ack_timeout_secs
        self.connect_timeout_secs = connect_timeout_secs
        self.window_bytes = window_bytes
        self.max_event_bytes = max_event_bytes
        self._sock: socket.socket | None = None
        self._sel = selectors.DefaultSelector()
        self._tracker = _Tracker()
        self._wbuf = bytearray()
        self._writable = True
        self._shut_wr = False
        self._closed = False
        self._early = b""

    @classmethod
    def connect(
        cls,
        *,
        socket: str | os.PathLike[str] | None = None,
        tcp: tuple[str, int] | str | None = None,
        config: str | os.PathLike[str] | None = None,
        token: str | None = None,
        **options: Any,
    ) -> Client:
        """Connect to the daemon (see :func:`resolve_target` for how it is found; with a
        ``config`` its ``max_event_bytes`` is used too). Raises DaemonUnreachableError naming
        the address when nothing listens there. ``options`` are the keyword arguments of
        :class:`Client` (``reconnect_secs``, ``ack_timeout_secs``, ``window_bytes`` …)."""
        config_path = Path(config) if config is not None else None
        target = resolve_target(
            socket_path=Path(socket) if socket is not None else None, tcp=tcp, config=config_path
        )
        if config_path is not None and "max_event_bytes" not in options:
            from trailseal import config as config_mod

            options["max_event_bytes"] = config_mod.load(config_path).ingest.max_event_bytes
        client = cls(target, token=token, **options)
        client.open()
        return client

    def open(self) -> None:
        """Connect (done by :meth:`connect`); DaemonUnreachableError names the address and what
        to check when nothing listens there."""
        try:
            self._open()
        except OSError as e:
            raise DaemonUnreachableError(self._unreachable(e)) from e
        self._feed_early()

    # -- public API ----------------------------------------------------------------------------

    def send(
        self,
        lines: Iterable[bytes | str | dict[str, Any]],
        *,
        source: str | None = None,
        finish: bool = False,
    ) -> SendResult:
        """Send events (NDJSON lines as bytes/str, or dicts) and wait until every one is
        acknowledged. Line numbers in the result count every item from 1, blank ones included;
        ``source`` names the input in rejections. ``finish=True`` shuts the write side down
        after the last line (the daemon then sends its final ack and closes) and closes the
        client. After any exception the client is closed; a DaemonUnreachableError or
        AuthenticationError carries what was settled so far in ``partial``."""
        return self.send_numbered(
            ((source, n, item) for n, item in enumerate(lines, start=1)), finish=finish
        )

    def send_numbered(
        self,
        items: Iterable[tuple[str | None, int, bytes | str | dict[str, Any]]],
        *,
        finish: bool = False,
    ) -> SendResult:
        """Like :meth:`send` with the caller's own (source, line number) for each item: for
        several files over one connection."""
        if self._closed:
            raise ProtocolError("this Client is closed; connect again")
        tracker = self._tracker
        tracker.result = result = SendResult()
        it = iter(items)
        exhausted = False
        last_progress = time.monotonic()
        try:
            while True:
                try:
                    exhausted = self._fill(it, exhausted)
                    if exhausted and not tracker.pending:
                        break
                    if exhausted and finish and not self._wbuf and not self._shut_wr:
                        self._require_sock().shutdown(socket.SHUT_WR)
                        self._shut_wr = True
                    if self._poll(timeout=1.0):
                        last_progress = time.monotonic()
                    elif exhausted and not self._wbuf:
                        waited = time.monotonic() - last_progress
                        if waited > self.ack_timeout_secs:
                            raise DaemonUnreachableError(
                                f"{self.target}: no acknowledgement for {waited:.0f} s for the "
                                f"last {len(tracker.pending)} lines; the daemon may be overloaded "
                                "or stuck (its spool full?): check its log. Those lines were not "
                                "confirmed."
                            )
                except _Broken as broken:
                    self._reconnect(broken)
                    result.reconnects += 1
                    last_progress = time.monotonic()
        except (AuthenticationError, DaemonUnreachableError) as e:
            e.partial = result
            self.close()
            raise
        except BaseException:
            self.close()
            raise
        if finish:
            self.close()
        return result

    def close(self) -> None:
        """Close the connection (without waiting: call ``send(..., finish=True)`` or make sure
        the last ``send`` returned to know everything was acknowledged)."""
        if self._closed:
            return
        self._closed = True
        self._drop_sock()
        self._sel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- I/O -----------------------------------------------------------------------------------

    def _fill(self, it: Iterator[tuple[str | None, int, object]], exhausted: bool) -> bool:
        """Pull lines from the producer while the window and the write buffer have room, writing
        as they come (so a slow producer's lines go out at once). True once it is exhausted."""
        tracker = self._tracker
        while (
            not exhausted
            and tracker.inflight_bytes < self.window_bytes
            and len(self._wbuf) < _WRITE_BUFFER_MAX
        ):
            try:
                source, number, item = next(it)
            except StopIteration:
                return True
            payload = _prepare(item, number, source, self.max_event_bytes)
            if payload is None:
                continue
            self._wbuf += tracker.add(source, number, payload)
            if self._writable:
                self._write()
        return exhausted

    def _require_sock(self) -> socket.socket:
        if self._sock is None:
            raise _Broken("not connected")
        return self._sock

    def _open(self) -> None:
        """Connect (blocking, with a timeout), authenticate, then go non-blocking."""
        t = self.target
        if t.unix is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            addr: Any = os.fspath(t.unix)
        else:
            assert t.tcp is not None
            family = socket.AF_INET6 if ":" in t.tcp[0] else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            addr = t.tcp
        try:
            sock.settimeout(self.connect_timeout_secs)
            sock.connect(addr)
            if t.tcp is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.token is not None:
                    self._authenticate(sock)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._sel.register(sock, selectors.EVENT_READ)
        self._writable = True
        self._shut_wr = False

    def _feed_early(self) -> None:
        """Replies that arrived with the auth reply belong to the new connection's tracker."""
        early, self._early = self._early, b""
        if early:
            self._tracker.feed(early)

    def _authenticate(self, sock: socket.socket) -> None:
        sock.sendall(_dumps({"auth": {"token": self.token}}) + b"\n")
        buf = b""
        while b"\n" not in buf:
            chunk = sock.recv(4096)
            if not chunk:
                raise AuthenticationError(
                    f"{self.target} closed the connection during authentication; "
                    "check the ingest token (--token or TRAILSEAL_TOKEN)"
                )
            buf += chunk
        line, _, self._early = buf.partition(b"\n")
        reply = _Tracker()
        reply.on_reply(line)  # raises AuthenticationError on {"error":{"code":"Unauthorized"}}
        if _loads(line) != {"auth": "ok"}:
            raise ProtocolError(f"{self.target}: unexpected auth reply {line[:200]!r}")

    def _drop_sock(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(self._sock)
            self._sock.close()
            self._sock = None

    def _write(self) -> None:
        sock = self._require_sock()
        try:
            n = sock.send(self._wbuf)
        except BlockingIOError:
            self._writable = False
            return
        except OSError as e:
            raise _Broken(e) from e
        del self._wbuf[:n]
        if self._wbuf:
            self._writable = False

    def _poll(self, timeout: float) -> bool:
        """Wait for the socket; read replies and write what is buffered. True if anything
        was read or written."""
        sock = self._require_sock()
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if self._wbuf else 0)
        self._sel.modify(sock, want)
        progress = False
        for _key, mask in self._sel.select(timeout):
            if mask & selectors.EVENT_READ:
                try:
                    data = sock.recv(_READ_SIZE)
                except BlockingIOError:
                    data = None
                except OSError as e:
                    raise _Broken(e) from e
                if data == b"":
                    raise _Broken("the daemon closed the connection")
                if data:
                    self._tracker.feed(data)
                    progress = True
            if mask & selectors.EVENT_WRITE:
                self._writable = True
                before = len(self._wbuf)
                self._write()
                progress = progress or len(self._wbuf) < before
        return progress

    def _reconnect(self, cause: _Broken) -> None:
        self._drop_sock()
        deadline = time.monotonic() + self.reconnect_secs
        delay = 0.05
        while True:
            try:
                self._open()
                break
            except OSError as e:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DaemonUnreachableError(
                        f"lost the connection to {self.target} ({cause}) and could not "
                        f"reconnect within {self.reconnect_secs:g} s ({e}); "
                        f"{len(self._tracker.pending)} lines were not acknowledged: check that "
                        "the daemon is running (trailseal serve) and send them again"
                    ) from e
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, 2.0)
        self._wbuf = bytearray(self._tracker.restart())
        self._feed_early()

    def _unreachable(self, e: OSError) -> str:
        if self.target.unix is not None:
            hint = (
                "check that the daemon is running (trailseal serve), that this is its "
                "[ingest] unix_socket, and that you may write the socket (its group)"
            )
        else:
            hint = (
                "check that the daemon is running (trailseal serve) and that this is its "
                "[ingest] tcp_listen address"
            )
        return f"cannot reach the daemon at {self.target}: {e.strerror or e}; {hint}"


def send(
    lines: Iterable[bytes | str | dict[str, Any]],
    *,
    socket: str | os.PathLike[str] | None = None,
    tcp: tuple[str, int] | str | None = None,
    config: str | os.PathLike[str] | None = None,
    token: str | None = None,
    **options: Any,
) -> SendResult:
    """Connect, send ``lines``, wait for the final ack, close: the one-shot form."""
    client = Client.connect(socket=socket, tcp=tcp, config=config, token=token, **options)
    with client:
        return client.send(lines, finish=True)


# ---------------------------------------------------------------------------------------------
# trailseal send


def _read_lines(
    inputs: list[tuple[str | None, IO[bytes]]], advance: Callable[[int], None] | None
) -> Iterator[tuple[str | None, int, bytes]]:
    pending = 0
    for name, stream in inputs:
        for number, line in enumerate(stream, start=1):
            if advance is not None:
                pending += len(line)
                if pending >= 65536:
                    advance(pending)
                    pending = 0
            yield name, number, line
    if advance is not None and pending:
        advance(pending)


def main(args: argparse.Namespace) -> int:
    """``trailseal send``: exit 0 when all lines were stored, 1 if any was rejected, 2 if the
    daemon could not be reached or the input could not be read."""
    err = sys.stderr
    files: list[Path] = list(args.files)
    inputs: list[tuple[str | None, IO[bytes]]] = []
    try:
        for path in files:
            if str(path) == "-":
                inputs.append(("-", sys.stdin.buffer))
            else:
                inputs.append((str(path), path.open("rb")))
    except OSError as e:
        print(f"trailseal send: cannot read {e.filename}: {e.strerror}", file=err)
        for _name, stream in inputs:
            stream.close()
        return 2
    if not inputs:
        inputs.append(("-", sys.stdin.buffer))
    labelled = len(inputs) > 1

    try:
        target = resolve_target(socket_path=args.socket, tcp=args.tcp, config=args.config)
        max_event_bytes = DEFAULT_MAX_EVENT_BYTES
        if args.config is not None:
            from trailseal import config as config_mod

            max_event_bytes = config_mod.load(args.config).ingest.max_event_bytes
    except ConfigError as e:
        print(f"trailseal send: {e}", file=err)
        return 2
    token = args.token or os.environ.get("TRAILSEAL_TOKEN") or None
    client = Client(target, token=token, max_event_bytes=max_event_bytes)

    progress = None
    advance: Callable[[int], None] | None = None
    if not args.no_progress and err.isatty():
        from rich.console import Console
        from rich.progress import Progress

        progress = Progress(console=Console(stderr=True), transient=True)
        if all(name != "-" for name, _ in inputs):
            total = sum(os.fstat(s.fileno()).st_size for _, s in inputs)
            task = progress.add_task("sending", total=total)
        else:
            task = progress.add_task("sending (bytes read)", total=None)

        def advance(n: int) -> None:
            progress.advance(task, n)

    result: SendResult | None = None
    failure: str | None = None
    try:
        client.open()
        items = (
            (name if labelled else None, number, line)
            for name, number, line in _read_lines(inputs, advance)
        )
        if progress is not None:
            progress.start()
        result = client.send_numbered(items, finish=True)
    except (DaemonUnreachableError, AuthenticationError) as e:
        failure, result = str(e), e.partial
    except TrailsealError as e:
        failure = str(e)
    finally:
        if progress is not None:
            progress.stop()
        client.close()
        for name, stream in inputs:
            if name != "-":
                stream.close()

    if result is not None:
        order = {name: i for i, (name, _) in enumerate(inputs)}
        for rejection in sorted(
            result.rejections, key=lambda r: (order.get(r.source, 0), r.line_number)
        ):
            print(rejection)
        sys.stdout.flush()
    if failure is not None:
        if result is not None and result.sent:
            print(
                f"trailseal send: {result.accepted} events acknowledged before the failure",
                file=err,
            )
        print(f"trailseal send: {failure}", file=err)
        return 2
    assert result is not None
    print(f"sent {result.sent} events, {result.rejected} rejected", file=err)
    return 1 if result.rejections else 0
