"""The ingest listeners' start-up, in process: every ingest socket listens before any of them
serves, so a client that reached one listener can reach them all (a daemon once listened on its
unix socket while its TCP socket was not listening yet, and a client connecting to both in turn
was refused)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import trio

from trailseal.config import IngestConfig
from trailseal.ingest.listener import Ingest, bind_tcp, bind_unix
from trailseal.pipeline import Submission


def listening(sock: socket.socket) -> bool:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1


def test_every_socket_listens_before_any_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unix = bind_unix(tmp_path / "ingest.sock", 0o660, "")
    tcp = bind_tcp("127.0.0.1", 0)
    sockets = [(unix, "unix"), (tcp, "tcp")]
    seen: list[tuple[str, bool, bool]] = []
    serve = Ingest._serve

    async def recording_serve(self: Ingest, sock: socket.socket, kind: str, **kw: object) -> None:
        # what the other sockets look like as each one begins to serve
        seen.append((kind, listening(unix), listening(tcp)))
        await serve(self, sock, kind, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Ingest, "_serve", recording_serve)
    config = IngestConfig(unix_socket=tmp_path / "ingest.sock", tcp_listen=tcp.getsockname())
    send, _receive = trio.open_memory_channel[Submission](1)

    async def main() -> None:
        ingest = Ingest(config, send)
        async with trio.open_nursery() as nursery:
            await nursery.start(ingest.serve_all, sockets)
            # both accept a connection as soon as serve_all reports started
            for address, family in (
                (str(tmp_path / "ingest.sock"), socket.AF_UNIX),
                (tcp.getsockname(), socket.AF_INET),
            ):
                client = trio.socket.socket(family, socket.SOCK_STREAM)
                with client:
                    await client.connect(address)
            ingest.stop()

    trio.run(main)
    assert seen == [("unix", True, True), ("tcp", True, True)]
