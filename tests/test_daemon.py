"""The daemon as a real subprocess over real sockets: acks, per-line errors, neighbours
unaffected, concurrency on both listeners, oversized lines with bounded memory, tokens, and a
SIGTERM that seals and delivers everything that was acknowledged."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import uuid
from typing import Any

import pytest
import zstandard

from conftest import ACCOUNT, REGION, DaemonProcess, exchange, read_replies, read_until_ack

pytestmark = pytest.mark.skipif(
    not hasattr(__import__("trailseal._core", fromlist=["Core"]), "Core"),
    reason="the native core (trailseal._core.Core) is not built yet",
)


def event(name: str = "PutObject", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "eventName": name,
        "eventSource": "s3.amazonaws.com",
        "eventID": str(uuid.uuid4()),
    }
    body.update(fields)
    return body


def ndjson(events: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(e).encode() + b"\n" for e in events)


def decompress(data: bytes) -> bytes:
    """All zstd frames of a log file (the core writes one frame per batch)."""
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
    with reader:
        return reader.read()


def delivered_records(d: DaemonProcess) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for path in d.log_files():
        content = decompress(path.read_bytes())
        assert content.startswith(b'{"Records":[\n') and content.endswith(b"\n]}\n")
        records += json.loads(content)["Records"]
    return records


def errors_of(replies: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return [(r["error"]["line"], r["error"]["code"]) for r in replies if "error" in r]


def test_acks_errors_and_delivery_on_sigterm(daemon: Any) -> None:
    d = daemon()
    assert stat.S_IMODE(os.stat(d.unix_socket).st_mode) == 0o660
    good = [event(), event("GetObject"), event("ListBuckets")]
    data = (
        ndjson(good[:1])
        + b"not json\n"
        + b"\n"  # blank: not counted
        + ndjson(good[1:2])
        + b"[1,2]\r\n"
        + b'{"eventSource":"x"}\n'
        + ndjson(good[2:])
    )
    with d.connect_unix() as sock:
        replies = exchange(sock, data)
    assert errors_of(replies) == [(2, "InvalidJson"), (4, "NotAnObject"), (5, "MissingField")]
    assert replies[-1] == {"ack": 6}
    acks = [r["ack"] for r in replies if "ack" in r]
    assert acks == sorted(acks)
    # Every error comes before the ack that covers it.
    for i, reply in enumerate(replies):
        if "error" in reply:
            assert all(r["ack"] < reply["error"]["line"] for r in replies[:i] if "ack" in r)

    assert d.stop() == 0
    keys = [p.relative_to(d.bucket).as_posix() for p in d.log_files()]
    assert keys, d.stderr()
    prefix = f"AWSLogs/{ACCOUNT}/CloudTrail/{REGION}/"
    assert all(k.startswith(prefix) for k in keys), keys
    records = delivered_records(d)
    assert [r["eventID"] for r in records] == [e["eventID"] for e in good]
    assert records[0]["recipientAccountId"] == ACCOUNT
    assert records[0]["awsRegion"] == REGION
    assert records[0]["receipt"]["peer"].startswith("unix:uid=")
    # Digest files were written at shutdown, and the whole destination validates.
    assert list(d.bucket.rglob("*CloudTrail-Digest*.json.gz")), d.stderr()
    (public_key,) = (d.data_dir / "keys" / "public").glob("*.pem")
    result = subprocess.run(
        [
            *(sys.executable, "-m", "trailseal.cli", "validate", "--no-progress"),
            *("--destination", f"file://{d.bucket}", "--public-key", str(public_key)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_content_is_canonical_form(daemon: Any) -> None:
    from trailseal import _core

    d = daemon(ingest={"add_receipt": False})
    sent = event(eventTime="2026-01-02T03:04:05Z", requestParameters={"b": 1, "a": [1.5, "x"]})
    with d.connect_tcp() as sock:
        assert exchange(sock, ndjson([sent]))[-1] == {"ack": 1}
    assert d.stop() == 0
    (path,) = d.log_files()
    content = decompress(path.read_bytes())
    lines = content.split(b"\n")
    assert lines[0] == b'{"Records":[' and lines[-2:] == [b"]}", b""]
    (stored,) = lines[1:-2]
    assert _core.canonicalize(stored) == stored
    record = json.loads(stored)
    for key, value in sent.items():
        assert record[key] == value


def test_tcp_peer_and_bad_lines_do_not_affect_neighbours(daemon: Any) -> None:
    d = daemon()
    results: dict[str, list[dict[str, Any]]] = {}
    sent: dict[str, list[dict[str, Any]]] = {}

    def sender(name: str, use_tcp: bool, bad: bool) -> None:
        events = [event(f"Put{name}{i}") for i in range(300)]
        sent[name] = events
        data = ndjson(events)
        if bad:
            data = b"{broken\n" + data + b"\xff\xfe\n"
        with d.connect_tcp() if use_tcp else d.connect_unix() as sock:
            results[name] = exchange(sock, data)

    threads = [
        threading.Thread(target=sender, args=(f"c{i}", i % 2 == 0, i == 0)) for i in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert set(results) == {f"c{i}" for i in range(6)}
    assert errors_of(results["c0"]) == [(1, "InvalidJson"), (302, "InvalidJson")]
    assert results["c0"][-1] == {"ack": 302}
    for i in range(1, 6):
        assert errors_of(results[f"c{i}"]) == []
        assert results[f"c{i}"][-1] == {"ack": 300}
    assert d.stop() == 0
    records = delivered_records(d)
    assert sorted(r["eventID"] for r in records) == sorted(
        e["eventID"] for events in sent.values() for e in events
    )
    peers = {r["receipt"]["peer"].split(":")[0] for r in records}
    assert peers == {"tcp", "unix"}
    # Each connection's events keep their order.
    for events in sent.values():
        ids = [e["eventID"] for e in events]
        stored = [r["eventID"] for r in records if r["eventID"] in set(ids)]
        assert stored == ids


def test_ten_mib_line_without_newline_is_too_large_and_memory_bounded(daemon: Any) -> None:
    d = daemon()
    with d.connect_unix() as sock:
        sock.sendall(ndjson([event()]))
        assert read_until_ack(sock, 1)[-1] == {"ack": 1}
        rss_before = d.rss_kib()
        chunk = b"x" * (1024 * 1024)
        for _ in range(10):
            sock.sendall(chunk)
        sock.sendall(b"\n" + ndjson([event()]))
        sock.shutdown(socket.SHUT_WR)
        replies = list(read_replies(sock))
        rss_after = d.rss_kib()
    assert errors_of(replies) == [(2, "EventTooLarge")]
    assert replies[-1] == {"ack": 3}
    # The line was never buffered whole (10 MiB): allow generous slack for allocator noise.
    assert rss_after - rss_before < 8 * 1024, (rss_before, rss_after)
    assert d.stop() == 0
    assert len(delivered_records(d)) == 2


def test_acks_arrive_before_eof(daemon: Any) -> None:
    d = daemon()
    with d.connect_unix() as sock:
        sock.sendall(ndjson([event() for _ in range(5)]))
        assert read_until_ack(sock, 5)[-1] == {"ack": 5}
        sock.sendall(ndjson([event()]))
        assert read_until_ack(sock, 6)[-1] == {"ack": 6}
        sock.shutdown(socket.SHUT_WR)
        assert list(read_replies(sock)) in ([], [{"ack": 6}])


def test_duplicate_event_id_is_acked_not_stored_twice(daemon: Any) -> None:
    d = daemon()
    e = event()
    with d.connect_unix() as sock:
        assert exchange(sock, ndjson([e, e]))[-1] == {"ack": 2}
    with d.connect_tcp() as sock:
        assert exchange(sock, ndjson([e]))[-1] == {"ack": 1}
    assert d.stop() == 0
    assert [r["eventID"] for r in delivered_records(d)] == [e["eventID"]]


def test_tokens_on_tcp(daemon: Any) -> None:
    token = "0123456789abcdef-token"
    d = daemon(tokens={"agent-a": token})
    with d.connect_tcp() as sock:
        replies = exchange(sock, b'{"auth":{"token":"wrong-wrong-wrong"}}\n' + ndjson([event()]))
    assert errors_of(replies) == [(0, "Unauthorized")]
    e = event()
    with d.connect_tcp() as sock:
        auth = json.dumps({"auth": {"token": token}}).encode() + b"\n"
        replies = exchange(sock, auth + ndjson([e]))
    assert replies[0] == {"auth": "ok"}
    assert replies[-1] == {"ack": 1}
    assert d.stop() == 0
    (record,) = delivered_records(d)
    assert record["receipt"]["agent"] == "agent-a"


def test_sigterm_gives_final_ack_to_open_connection(daemon: Any) -> None:
    d = daemon()
    with d.connect_unix() as sock:
        sock.sendall(ndjson([event() for _ in range(3)]))
        assert read_until_ack(sock, 3)[-1] == {"ack": 3}
        # The connection stays open; SIGTERM must close it after a final ack.
        d.proc.send_signal(15)
        replies = list(read_replies(sock))
        assert replies in ([], [{"ack": 3}])
    assert d.proc.wait(timeout=30) == 0
    assert len(delivered_records(d)) == 3


def test_seal_after_secs_delivers_while_running(daemon: Any) -> None:
    from conftest import wait_until

    d = daemon(trail={"seal_after_secs": 0.5})
    with d.connect_unix() as sock:
        assert exchange(sock, ndjson([event()]))[-1] == {"ack": 1}
    wait_until(lambda: bool(d.log_files()), timeout=30, what="a log file sealed by age")
    assert d.stop() == 0


def test_restart_after_kill_recovers_and_delivers(daemon: Any) -> None:
    d = daemon()
    events = [event() for _ in range(20)]
    with d.connect_unix() as sock:
        assert exchange(sock, ndjson(events))[-1] == {"ack": 20}
    d.kill()
    d2 = daemon(data_dir=d.data_dir)
    assert d2.stop() == 0
    assert "recovered and sealed" in d2.stderr()
    assert [r["eventID"] for r in delivered_records(d2)] == [e["eventID"] for e in events]


def test_socket_in_use_is_refused(daemon: Any) -> None:
    d = daemon()
    d2 = daemon(ingest={"unix_socket": str(d.unix_socket)}, wait=False)
    assert d2.proc.wait(timeout=60) == 2
    assert str(d.unix_socket) in d2.stderr()
    assert "in use" in d2.stderr()
    # The first daemon still works.
    with d.connect_unix() as sock:
        assert exchange(sock, ndjson([event()]))[-1] == {"ack": 1}


def test_sd_notify_ready_and_stopping(daemon: Any) -> None:
    notify_dir = tempfile.mkdtemp(prefix="ts-n-", dir="/tmp")
    path = f"{notify_dir}/notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        listener.settimeout(30)
        try:
            d = daemon(env={"NOTIFY_SOCKET": path})
            assert listener.recv(4096) == b"READY=1"
            d.proc.send_signal(15)
            assert listener.recv(4096) == b"STOPPING=1"
            assert d.proc.wait(timeout=30) == 0
        finally:
            shutil.rmtree(notify_dir, ignore_errors=True)


def test_full_spool_stops_ingest_until_shutdown_drains(daemon: Any) -> None:
    from conftest import wait_until

    d = daemon(ingest={"spool_max_bytes": 1})
    first, second = event(), event()
    with d.connect_unix() as sock:
        sock.sendall(ndjson([first]))
        assert read_until_ack(sock, 1)[-1] == {"ack": 1}
        wait_until(lambda: "spool is full" in d.stderr(), what="the spool-full error")
        sock.sendall(ndjson([second]))
        sock.settimeout(1.5)
        with pytest.raises(TimeoutError):
            sock.recv(100)  # not acknowledged while the spool is over its cap
        sock.settimeout(30)
        d.proc.send_signal(15)
        assert list(read_replies(sock)) == [{"ack": 2}]
    assert d.proc.wait(timeout=30) == 0
    assert [r["eventID"] for r in delivered_records(d)] == [first["eventID"], second["eventID"]]


def test_client_not_reading_replies_does_not_block_others(daemon: Any) -> None:
    d = daemon()
    bad_lines = 20000  # ~100 bytes of error reply each: well over the reply high-water mark
    slow = d.connect_unix(timeout=60)
    sender = threading.Thread(target=slow.sendall, args=(b"nope\n" * bad_lines,))
    sender.start()
    try:
        # While the slow client reads nothing, others are served.
        for _ in range(3):
            with d.connect_tcp() as sock:
                assert exchange(sock, ndjson([event()]))[-1] == {"ack": 1}
        sender.join(timeout=0)
        # Now it reads: every error arrives, then the final ack.
        got: list[dict[str, Any]] = []
        got += read_until_ack(slow, bad_lines)
        sender.join(timeout=60)
        slow.shutdown(socket.SHUT_WR)
        got += list(read_replies(slow))
    finally:
        sender.join(timeout=60)
        slow.close()
    assert [r["error"]["line"] for r in got if "error" in r] == list(range(1, bad_lines + 1))
    assert got[-1] == {"ack": bad_lines}


def test_client_vanishing_midway_disturbs_nothing(daemon: Any) -> None:
    d = daemon()
    for _ in range(3):
        sock = d.connect_unix()
        sock.sendall(ndjson([event() for _ in range(100)]) + b'{"eventName":"half')
        # Abortive close (RST) with replies unread.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
        tcp = d.connect_tcp()
        tcp.sendall(ndjson([event() for _ in range(50)]))
        tcp.close()
    with d.connect_unix() as sock:
        assert exchange(sock, ndjson([event()]))[-1] == {"ack": 1}
    assert d.stop() == 0
    # Whatever was read before the client left is stored; the neighbour's event too.
    assert len(delivered_records(d)) >= 1


def test_sigterm_not_blocked_by_client_that_never_reads(daemon: Any) -> None:
    d = daemon()
    stuck = d.connect_unix(timeout=60)

    def flood() -> None:
        with contextlib.suppress(OSError):  # the daemon closes the connection at shutdown
            stuck.sendall(b"nope\n" * 50000)

    sender = threading.Thread(target=flood)
    sender.start()
    try:
        with d.connect_tcp() as sock:  # the daemon is serving others meanwhile
            assert exchange(sock, ndjson([event()]))[-1] == {"ack": 1}
        assert d.stop() == 0
    finally:
        stuck.close()
        sender.join(timeout=60)
    assert len(delivered_records(d)) == 1
