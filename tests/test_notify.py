"""Delivery notifications (``notify_url``) with a real HTTP receiver on 127.0.0.1 (http.server in
a thread): every delivered log file is notified, a receiver that fails the first attempts gets
the messages on retry, a receiver that never answers neither slows nor blocks delivery and
shutdown, and the bounded queue drops the oldest keys when it overflows.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trio

from conftest import DaemonProcess, exchange, wait_until
from trailseal.delivery.notify import Notifier


class Receiver:
    """Records each POSTed JSON body; answers 503 to the first ``fail_first`` requests."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.requests = 0
        self.messages: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.requests += 1
                    failing = receiver.requests <= receiver.fail_first
                    if not failing:
                        assert self.headers["Content-Type"] == "application/json"
                        receiver.messages.append(json.loads(body))
                self.send_response(503 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/notify"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def keys(self) -> list[str]:
        with self.lock:
            return [k for m in self.messages for k in m["s3ObjectKey"]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _events(n: int, tag: str) -> bytes:
    return b"".join(
        b'{"eventName":"PutThing","eventSource":"s.example.com","eventID":"%s-%d"}\n'
        % (tag.encode(), i)
        for i in range(n)
    )


def _keys(d: DaemonProcess) -> list[str]:
    return sorted(str(p.relative_to(d.bucket)) for p in d.log_files())


def _send_rounds(d: DaemonProcess, rounds: int) -> None:
    """Several log files: each round waits for the previous one's file to be delivered."""
    for i in range(rounds):
        with d.connect_unix() as sock:
            assert exchange(sock, _events(3, f"r{i}"))[-1] == {"ack": 3}
        wait_until(lambda i=i: len(d.log_files()) > i, what=f"log file {i + 1} delivered")


def test_every_delivered_log_file_is_notified(daemon: Any, receiver: Receiver) -> None:
    d = daemon(trail={"seal_after_secs": 0.3, "notify_url": receiver.url})
    _send_rounds(d, 3)
    wait_until(lambda: len(receiver.keys()) >= 3, what="three notified keys")
    assert d.stop() == 0, d.stderr()
    assert sorted(receiver.keys()) == _keys(d)  # each delivered file, once; no digests
    assert len(_keys(d)) == 3
    assert {m["s3Bucket"] for m in receiver.messages} == {d.bucket.name}
    assert all(set(m) == {"s3Bucket", "s3ObjectKey"} for m in receiver.messages)


def test_a_failing_receiver_gets_them_on_retry(daemon: Any) -> None:
    failing = Receiver(fail_first=2)
    try:
        d = daemon(trail={"seal_after_secs": 0.3, "notify_url": failing.url})
        _send_rounds(d, 2)
        wait_until(lambda: len(failing.keys()) >= 2, what="the notifications, retried")
        assert d.stop() == 0, d.stderr()
        assert sorted(failing.keys()) == _keys(d)
        assert failing.requests >= 3
        assert "notification of 1 log files failed (attempt 1)" in d.stderr()
    finally:
        failing.close()


def test_a_dead_receiver_never_blocks_delivery_or_shutdown(daemon: Any) -> None:
    # a black hole: connections are accepted by the kernel, never answered
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)
        url = f"http://127.0.0.1:{hole.getsockname()[1]}/"
        d = daemon(
            trail={"seal_after_secs": 0.3, "notify_url": url},
            daemon_section={"shutdown_timeout_secs": 20},
        )
        _send_rounds(d, 3)  # each round waits for its delivery: notifications never hold it
        with d.connect_unix() as sock:
            assert exchange(sock, _events(3, "last"))[-1] == {"ack": 3}
        assert d.stop(timeout=25) == 0, d.stderr()
    assert len(_keys(d)) == 4  # the last one was sealed and delivered at shutdown
    assert "delivered but not notified" in d.stderr()
    assert list(d.bucket.rglob("*CloudTrail-Digest*.json.gz"))  # the final digest too


def test_queue_overflow_drops_the_oldest(receiver: Receiver) -> None:
    notifier = Notifier(trail="t", url=receiver.url, bucket="b", queue_max_keys=3)

    async def main() -> None:
        for i in range(5):
            notifier.add(f"k{i}")
        assert notifier.dropped == 2
        async with trio.open_nursery() as nursery:
            await nursery.start(notifier.run)
            with trio.fail_after(30):
                # the receiver is another thread: poll it
                while len(receiver.keys()) < 3:  # noqa: ASYNC110
                    await trio.sleep(0.02)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert receiver.messages == [{"s3Bucket": "b", "s3ObjectKey": ["k2", "k3", "k4"]}]


def test_bad_notify_url_is_a_config_error(tmp_path: Path) -> None:
    from trailseal import config as config_mod
    from trailseal.errors import ConfigError

    path = tmp_path / "c.toml"
    path.write_text(f'[daemon]\ndata_dir = "{tmp_path}"\n[trails.t]\nnotify_url = "file:///x"\n')
    with pytest.raises(ConfigError, match=r"\[trails.t\] notify_url: 'file:///x' is not an http"):
        config_mod.load(path)
