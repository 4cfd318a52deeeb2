"""Shared fixtures of the benchmarks: seeded synthetic events, the native core, a fake server.

Run the benchmarks with ``.venv/bin/pytest benches -q`` (pyproject's testpaths is ``tests``, so
they only run when asked for). pytest puts this directory on ``sys.path``, so the bench modules
import ``naive_pipeline`` and ``loadgen`` directly.
"""

from __future__ import annotations

import socket
import socketserver
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from trailseal import synthetic

SEED = 1
BATCH_BYTES = 4 * 1024 * 1024


@pytest.fixture(scope="session")
def lines() -> list[bytes]:
    """About 8 MiB of seeded synthetic events (two 4 MiB batches' worth)."""
    return synthetic.events(5000, SEED)


@pytest.fixture(scope="session")
def batch(lines: list[bytes]) -> list[bytes]:
    """The first ~4 MiB of ``lines``: one batch as the pipeline hands it to the core."""
    out: list[bytes] = []
    size = 0
    for line in lines:
        out.append(line)
        size += len(line) + 1
        if size >= BATCH_BYTES:
            break
    return out


@pytest.fixture(scope="session")
def core() -> ModuleType:
    """``trailseal._core`` once it has the batch API; skips the bench until the core lands."""
    from trailseal import _core

    if not hasattr(_core, "Core"):
        pytest.skip("trailseal._core has no Core yet (rebuild with maturin when the core lands)")
    return _core


class FakeServer:
    """A tiny server of FORMATS.md §2 on a unix socket, for testing the load generator alone.

    Per connection: counts whole lines, answers ``{"error":…}`` for each line containing
    ``"bad"`` and then ``{"ack":N}`` after every read that completed lines. With ``ack=False``
    it reads but never acknowledges.
    """

    def __init__(self, path: Path, *, ack: bool = True) -> None:
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: socket.socket = self.request
                pending = b""
                line = 0
                while data := sock.recv(1 << 20):
                    pending += data
                    complete, newline, pending = pending.rpartition(b"\n")
                    if not newline:
                        continue
                    replies = []
                    if b"bad" in complete:
                        for offset, text in enumerate(complete.split(b"\n"), start=line + 1):
                            if b'"bad"' in text:
                                replies.append(
                                    b'{"error":{"line":%d,"code":"InvalidJson","message":"x"}}\n'
                                    % offset
                                )
                    line += complete.count(b"\n") + 1
                    if outer.ack:
                        replies.append(b'{"ack":%d}\n' % line)
                        sock.sendall(b"".join(replies))

        self.ack = ack
        self.path = path
        self.server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(self.path))
        return sock

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def fake_server() -> Iterator[Callable[..., FakeServer]]:
    """Factory of :class:`FakeServer` in a temporary directory; all are closed afterwards."""
    servers: list[FakeServer] = []
    with tempfile.TemporaryDirectory(prefix="tsb-") as tmp:

        def make(**kwargs: Any) -> FakeServer:
            server = FakeServer(Path(tmp) / f"fake{len(servers)}.sock", **kwargs)
            servers.append(server)
            return server

        yield make
        for server in servers:
            server.close()
