"""A lossy-network fault proxy for tests: a threaded TCP proxy on 127.0.0.1 in front of an
HTTP/1.1 server (SeaweedFS's S3 port) that, for a seeded 1 in ``drop_every`` of the PUT requests,
forwards the request, reads the server's whole response and then closes the client's connection
without sending it: the upload happened, the client never heard.

It parses just enough HTTP/1.1 to find message boundaries: a request is its head (up to the
blank line) plus a body framed by ``Content-Length`` or ``Transfer-Encoding: chunked``; a
response likewise, or no body for HEAD requests and 1xx/204/304 answers, or everything up to EOF
when the server gives no length. ``Expect: 100-continue`` is answered by the proxy itself (and
stripped before forwarding), so bodies always follow their heads. Each client connection gets
its own upstream connection (keep-alive on both sides) and one thread.

``FaultProxy.start(upstream_port, seed=…)`` listens on a free port; ``endpoint`` is its URL;
``puts``/``dropped`` count PUT requests seen and responses withheld (``dropped_paths`` names
them), ``errors`` collects unexpected exceptions of the worker threads (a test should assert it
is empty); ``stop()`` closes everything and joins the threads.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
from dataclasses import dataclass, field

HEAD_MAX_BYTES = 64 * 1024
_NO_BODY_STATUSES = {204, 304}


class _Closed(Exception):
    """The peer closed its side at a message boundary (or mid-message)."""


class _Stream:
    """A socket with a read buffer: read up to a delimiter or an exact number of bytes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> None:
        data = self.sock.recv(256 * 1024)
        if not data:
            raise _Closed
        self.buf += data

    def read_until(self, delimiter: bytes, limit: int = HEAD_MAX_BYTES) -> bytes:
        while (end := self.buf.find(delimiter)) < 0:
            if len(self.buf) > limit:
                raise ValueError(f"no {delimiter!r} within {limit} bytes")
            self._fill()
        end += len(delimiter)
        out, self.buf = self.buf[:end], self.buf[end:]
        return out

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_to_eof(self) -> bytes:
        with contextlib.suppress(_Closed):
            while True:
                self._fill()
        out, self.buf = self.buf, b""
        return out


def _headers(head: bytes) -> tuple[str, dict[str, str]]:
    """The start line and the headers (lower-case names) of a message head."""
    lines = head.decode("latin-1").split("\r\n")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
    return lines[0], fields


def _read_body(stream: _Stream, fields: dict[str, str], *, to_eof: bool) -> bytes:
    """The body bytes as they were on the wire (chunk framing and trailers kept)."""
    if "chunked" in fields.get("transfer-encoding", "").lower():
        parts = []
        while True:
            size_line = stream.read_until(b"\r\n")
            parts.append(size_line)
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while True:  # trailers, then the blank line
                    trailer = stream.read_until(b"\r\n")
                    parts.append(trailer)
                    if trailer == b"\r\n":
                        return b"".join(parts)
            parts.append(stream.read_exact(size + 2))
    if "content-length" in fields:
        return stream.read_exact(int(fields["content-length"]))
    return stream.read_to_eof() if to_eof else b""


@dataclass
class FaultProxy:
    upstream: tuple[str, int]
    listener: socket.socket
    drop_every: int
    rng: random.Random
    puts: int = 0
    dropped: int = 0
    requests: int = 0
    dropped_paths: list[str] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)
    _sockets: list[socket.socket] = field(default_factory=list)
    _closing: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def start(cls, upstream_port: int, *, seed: int, drop_every: int = 10) -> FaultProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        proxy = cls(("127.0.0.1", upstream_port), listener, drop_every, random.Random(seed))
        accept = threading.Thread(target=proxy._accept_loop, name="faultproxy-accept", daemon=True)
        proxy._threads.append(accept)
        accept.start()
        return proxy

    @property
    def port(self) -> int:
        port: int = self.listener.getsockname()[1]
        return port

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._closing.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        with self._lock:
            socks = list(self._sockets)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(timeout=10)

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self._track(client)
            worker = threading.Thread(
                target=self._serve, args=(client,), name="faultproxy-conn", daemon=True
            )
            with self._lock:
                self._threads.append(worker)
            worker.start()

    def _should_drop(self, method: str, path: str) -> bool:
        with self._lock:
            self.requests += 1
            if method != "PUT":
                return False
            self.puts += 1
            drop = self.rng.randrange(self.drop_every) == 0
            if drop:
                self.dropped += 1
                self.dropped_paths.append(path)
            return drop

    def _serve(self, client_sock: socket.socket) -> None:
        upstream_sock: socket.socket | None = None
        try:
            upstream_sock = socket.create_connection(self.upstream, timeout=120)
            self._track(upstream_sock)
            client, upstream = _Stream(client_sock), _Stream(upstream_sock)
            while True:
                try:
                    head = client.read_until(b"\r\n\r\n")
                except _Closed:
                    return  # the client closed between requests
                start, fields = _headers(head)
                method, _, rest = start.partition(" ")
                path = rest.rpartition(" ")[0]
                if fields.get("expect", "").lower() == "100-continue":
                    head = (
                        b"".join(
                            line + b"\r\n"
                            for line in head[:-4].split(b"\r\n")
                            if not line.lower().startswith(b"expect:")
                        )
                        + b"\r\n"
                    )
                    client_sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = _read_body(client, fields, to_eof=False)
                drop = self._should_drop(method, path)
                upstream_sock.sendall(head + body)
                response = self._read_response(upstream, method)
                if drop:
                    return  # the server did it; the client never hears (closed in finally)
                client_sock.sendall(response)
                _, response_fields = _headers(response.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n")
                if response_fields.get("connection", "").lower() == "close":
                    return
        except _Closed:
            return
        except OSError:
            return  # a peer reset its connection, or stop(): the client's business
        except BaseException as e:  # a parsing bug: let the test see it
            self.errors.append(e)
        finally:
            for sock in (client_sock, upstream_sock):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                    sock.close()

    @staticmethod
    def _read_response(upstream: _Stream, method: str) -> bytes:
        """One whole final response (any 1xx interim responses before it are included)."""
        out = b""
        while True:
            head = upstream.read_until(b"\r\n\r\n")
            status_line, fields = _headers(head)
            status = int(status_line.split(" ")[1])
            if 100 <= status < 200:
                out += head
                continue
            if method == "HEAD" or status in _NO_BODY_STATUSES:
                return out + head
            to_eof = "content-length" not in fields and "chunked" not in fields.get(
                "transfer-encoding", ""
            )
            return out + head + _read_body(upstream, fields, to_eof=to_eof)
