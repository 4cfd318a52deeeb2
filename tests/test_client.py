"""Tests of trailseal.client: eventID insertion, the ack tracker (sans-IO), and the client over
real unix and TCP sockets against FakeDaemon, a small server speaking FORMATS.md §2 (with fault
injection: dropping a connection after storing lines without acking them, refusing connections
for a while). The same scenarios against the real daemon live at the end, using the ``daemon``
fixture of conftest.py when it exists."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trailseal.client import (
    AuthenticationError,
    Client,
    DaemonUnreachableError,
    InvalidLineError,
    Rejection,
    SendResult,
    Target,
    _prepare,
    _Tracker,
    assign_event_id,
    resolve_target,
    send,
)
from trailseal.errors import ProtocolError, TrailsealError

# ---------------------------------------------------------------------------------------------
# FakeDaemon


def _wait_for(cond: object, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class FakeDaemon:
    """A threaded server speaking the ingest protocol: validates a little (InvalidJson,
    NotAnObject, EventTooLarge, MissingField, InvalidField for a non-string eventName), dedups
    by eventID, acks after every read. ``drop_after`` = n: once n events are stored in total,
    abort the connection without acking what was read in that chunk (like a kill -9 between
    fsync and ack)."""

    def __init__(
        self,
        *,
        tcp: bool = False,
        token: str | None = None,
        max_event_bytes: int = 262144,
        read_size: int = 65536,
    ) -> None:
        self.tcp = tcp
        self.token = token
        self.max_event_bytes = max_event_bytes
        self.read_size = read_size
        self.stored: list[str] = []
        self.seen: set[str] = set()
        self.duplicates = 0
        self.connections = 0
        self.drop_after: int | None = None
        self.lock = threading.Lock()
        self.tmp = Path(tempfile.mkdtemp(prefix="tsc", dir="/tmp"))
        self.path = self.tmp / "ingest.sock"
        self.address: tuple[str, int] = ("127.0.0.1", 0)
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self.start()

    @property
    def target(self) -> dict[str, object]:
        return {"tcp": self.address} if self.tcp else {"socket": self.path}

    def start(self) -> None:
        if self.tcp:
            lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            lst.bind(self.address)
            self.address = lst.getsockname()
        else:
            lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            lst.bind(str(self.path))
        lst.listen(16)
        self._listener = lst
        t = threading.Thread(target=self._accept, args=(lst,), daemon=True)
        t.start()
        self._threads.append(t)

    def stop_listening(self) -> None:
        lst, self._listener = self._listener, None
        if lst is not None:
            lst.shutdown(socket.SHUT_RDWR)
            lst.close()
        if not self.tcp:
            self.path.unlink(missing_ok=True)

    def close(self) -> None:
        self.stop_listening()
        for c in list(self._conns):
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(timeout=10)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _accept(self, lst: socket.socket) -> None:
        while True:
            try:
                conn, _ = lst.accept()
            except OSError:
                return
            self.connections += 1
            self._conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _check(self, line: bytes) -> tuple[str, str] | None:
        if len(line) > self.max_event_bytes:
            return "EventTooLarge", f"{len(line)} bytes > {self.max_event_bytes}"
        try:
            obj = json.loads(line)
        except ValueError as e:
            return "InvalidJson", str(e)
        if not isinstance(obj, dict):
            return "NotAnObject", "not an object"
        if "eventName" not in obj:
            return "MissingField", "eventName"
        if not isinstance(obj["eventName"], str):
            return "InvalidField", "eventName: expected a string"
        return None

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            buf = b""
            number = 0
            authed = self.token is None
            eof = False
            while not eof:
                try:
                    data = conn.recv(self.read_size)
                except OSError:
                    return
                if not data:
                    eof = True
                buf += data
                lines = buf.split(b"\n")
                buf = lines.pop()
                if eof and buf:
                    lines.append(buf)
                out: list[bytes] = []
                drop = False
                for raw in lines:
                    line = raw.rstrip(b"\r")
                    if not line.strip():
                        continue
                    if not authed:
                        if json.loads(line) == {"auth": {"token": self.token}}:
                            authed = True
                            out.append(b'{"auth":"ok"}\n')
                            continue
                        conn.sendall(
                            b'{"error":{"line":0,"code":"Unauthorized","message":"bad token"}}\n'
                        )
                        return
                    number += 1
                    bad = self._check(line)
                    if bad is not None:
                        err = {"line": number, "code": bad[0], "message": bad[1]}
                        out.append(json.dumps({"error": err}).encode() + b"\n")
                        continue
                    event_id = json.loads(line).get("eventID") or str(uuid.uuid4())
                    with self.lock:
                        if event_id in self.seen:
                            self.duplicates += 1
                        else:
                            self.seen.add(event_id)
                            self.stored.append(event_id)
                        if self.drop_after is not None and len(self.stored) >= self.drop_after:
                            self.drop_after = None
                            drop = True
                if drop:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                    return  # abort: RST, nothing of this chunk acked
                out.append(b'{"ack":%d}\n' % number)
                try:
                    conn.sendall(b"".join(out))
                except OSError:
                    return


@pytest.fixture
def fake() -> Iterator[FakeDaemon]:
    d = FakeDaemon()
    yield d
    d.close()


@pytest.fixture
def fake_tcp() -> Iterator[FakeDaemon]:
    d = FakeDaemon(tcp=True, token="s3cret")
    yield d
    d.close()


def _event(i: int) -> bytes:
    return b'{"eventName":"Put%d","eventSource":"test","n":%d}' % (i, i)


# ---------------------------------------------------------------------------------------------
# eventID insertion


def _split_insert(out: bytes, original: bytes) -> str:
    """Assert ``out`` is ``original`` with one eventID inserted after the first '{'."""
    brace = original.index(b"{")
    assert out[: brace + 1] == original[: brace + 1]
    head = out[brace + 1 : brace + 1 + 11]
    assert head == b'"eventID":"'
    event_id = out[brace + 12 : brace + 48].decode()
    assert uuid.UUID(event_id).version == 4
    rest = out[brace + 49 :]
    if rest.startswith(b","):
        rest = rest[1:]
    assert rest == original[brace + 1 :]
    return event_id


def test_event_id_inserted_when_absent_preserving_bytes() -> None:
    line = b'{"z":1.10,"a":[1E400, 0.1e-7],"big":12345678901234567890, "eventName":"X"}'
    out = assign_event_id(line, max_event_bytes=None)
    _split_insert(out, line)
    assert out.endswith(b'",' + line[1:])


def test_event_ids_are_fresh_uuid4() -> None:
    line = b'{"eventName":"X"}'
    ids = {_split_insert(assign_event_id(line), line) for _ in range(100)}
    assert len(ids) == 100


def test_event_id_present_left_alone() -> None:
    line = b'{"eventName":"X","eventID":"mine"}'
    assert assign_event_id(line) is line
    # spelled with an escape: the same key to a JSON parser
    escaped = b'{"event\\u0049D":"mine","eventName":"X"}'
    assert assign_event_id(escaped) is escaped


def test_event_id_nested_only_is_inserted() -> None:
    line = b'{"requestParameters":{"eventID":"inner"},"eventName":"X"}'
    out = assign_event_id(line)
    _split_insert(out, line)
    obj = json.loads(out)
    assert obj["requestParameters"] == {"eventID": "inner"}
    assert obj["eventID"] != "inner"


def test_event_id_empty_object_and_whitespace() -> None:
    for line in (b"{}", b"{ }", b"  {\t}  "):
        out = assign_event_id(line)
        obj = json.loads(out)
        assert list(obj) == ["eventID"], line
        assert out.startswith(line[: line.index(b"{") + 1])
    out = assign_event_id(b' { "a" : 1 } ')
    assert json.loads(out)["a"] == 1


def test_event_id_escapes_parse_only_when_ambiguous() -> None:
    line = b'{"msg":"caf\\u00e9 \\"quoted\\"","eventName":"X"}'
    out = assign_event_id(line)
    _split_insert(out, line)
    assert json.loads(out)["msg"] == 'café "quoted"'


@pytest.mark.parametrize(
    "line",
    [
        b"[1,2]",
        b'"a string"',
        b"42",
        b"null",
        b"not json at all",
        b'{"eventName":"X"',  # truncated
        b'["eventID", {"a":1}]',
        b'{"eventID":"x"} trailing',
        b"{\\u0020}",  # ambiguous and not JSON
        b"\xff\xfe{}",
    ],
)
def test_non_objects_untouched(line: bytes) -> None:
    assert assign_event_id(line) is line


def test_event_id_not_inserted_when_it_would_make_the_line_too_large() -> None:
    line = b'{"eventName":"X","pad":"' + b"x" * 200 + b'"}'
    assert assign_event_id(line, max_event_bytes=len(line) + 10) is line
    assert assign_event_id(line, max_event_bytes=len(line) + 49) != line


def test_prepare_lines() -> None:
    assert _prepare(b"\n", 1, None, 1000) is None
    assert _prepare(b"  \t\r\n", 1, None, 1000) is None
    assert _prepare("", 1, None, 1000) is None
    out = _prepare(b'{"eventName":"X"}\r\n', 1, None, 1000)
    assert out is not None and out.endswith(b'"eventName":"X"}')
    out = _prepare({"eventName": "X"}, 1, None, 1000)
    assert out is not None and set(json.loads(out)) == {"eventID", "eventName"}
    keep = {"eventName": "X", "eventID": "given"}
    assert _prepare(keep, 1, None, 1000) == json.dumps(keep, separators=(",", ":")).encode()
    with pytest.raises(InvalidLineError, match=r"f.json:line 7: contains a newline"):
        _prepare(b'{"a":1}\n{"b":2}\n', 7, "f.json", 1000)
    with pytest.raises(InvalidLineError, match="line 3: expected bytes, str or dict, got int"):
        _prepare(5, 3, None, 1000)


# ---------------------------------------------------------------------------------------------
# The ack tracker, sans-IO


def test_tracker_maps_protocol_lines_to_caller_lines() -> None:
    t = _Tracker()
    # caller lines 1, 3, 4, 7 are non-blank → protocol lines 1..4
    for caller in (1, 3, 4, 7):
        t.add("f", caller, b"{}")
    t.feed(b'{"error":{"line":2,"code":"MissingField","message":"eventName"}}\n{"ack":')
    assert t.result.rejections == [Rejection(3, "MissingField", "eventName", "f")]
    assert t.acked == 0
    t.feed(b'2}\n{"error":{"line":4,"code":"InvalidJson","message":"m"}}\n{"ack":4}\n')
    assert t.result.accepted == 2
    assert [r.line_number for r in t.result.rejections] == [3, 7]
    assert not t.pending and t.inflight_bytes == 0
    assert str(t.result.rejections[0]) == "f:line 3: MissingField eventName"


def test_tracker_restart_resends_only_unsettled_lines() -> None:
    t = _Tracker()
    for caller in range(1, 6):
        t.add(None, caller, b'{"n":%d}' % caller)
    t.feed(b'{"ack":1}\n{"error":{"line":3,"code":"InvalidJson","message":"m"}}\n')
    assert t.restart() == b'{"n":2}\n{"n":4}\n{"n":5}\n'
    # the new connection numbers them 1..3; an error for 2 is caller line 4
    t.feed(b'{"error":{"line":2,"code":"NotAnObject","message":"m"}}\n{"ack":3}\n')
    assert [(r.line_number, r.code) for r in t.result.rejections] == [
        (3, "InvalidJson"),
        (4, "NotAnObject"),
    ]
    assert t.result.accepted == 3
    assert t.next_proto == 4


@pytest.mark.parametrize(
    "reply",
    [
        b'{"ack":5}\n',  # more than was sent
        b'{"ack":"1"}\n',
        b'{"error":{"line":9,"code":"X","message":"m"}}\n',
        b"garbage\n",
        b"[1]\n",
        b'{"error":{"code":"Overloaded","message":"m"}}\n',
    ],
)
def test_tracker_refuses_impossible_replies(reply: bytes) -> None:
    t = _Tracker()
    t.add(None, 1, b"{}")
    t.add(None, 2, b"{}")
    with pytest.raises(ProtocolError):
        t.feed(reply)


def test_tracker_ack_never_goes_back() -> None:
    t = _Tracker()
    t.add(None, 1, b"{}")
    t.add(None, 2, b"{}")
    t.feed(b'{"ack":2}\n')
    with pytest.raises(ProtocolError, match="impossible ack"):
        t.feed(b'{"ack":1}\n')


def test_tracker_unauthorized_is_authentication_error() -> None:
    t = _Tracker()
    with pytest.raises(AuthenticationError, match="token"):
        t.feed(b'{"error":{"line":0,"code":"Unauthorized","message":"bad token"}}\n')
    assert issubclass(AuthenticationError, TrailsealError)


# ---------------------------------------------------------------------------------------------
# Against FakeDaemon


def test_send_reports_rejections_in_caller_line_numbers(fake: FakeDaemon) -> None:
    lines: list[bytes | str | dict[str, object]] = [
        _event(1),  # 1
        b"",  # 2 blank
        b"not json",  # 3
        "   ",  # 4 blank
        {"eventName": "Dict"},  # 5
        b"[1]",  # 6
        b'{"eventSource":"x"}',  # 7
        _event(8) + b"\r\n",  # 8
        b'{"eventName":5}',  # 9
    ]
    with Client.connect(socket=fake.path) as c:
        result = c.send(lines, source="in.json")
    assert result.sent == 7
    assert result.accepted == 3
    assert [(r.line_number, r.code, r.source) for r in result.rejections] == [
        (3, "InvalidJson", "in.json"),
        (6, "NotAnObject", "in.json"),
        (7, "MissingField", "in.json"),
        (9, "InvalidField", "in.json"),
    ]
    assert not result.ok and result.rejected == 4
    assert len(fake.stored) == 3 and fake.duplicates == 0


def test_client_sends_several_batches_on_one_connection(fake: FakeDaemon) -> None:
    with Client.connect(socket=fake.path) as c:
        r1 = c.send([_event(i) for i in range(10)])
        r2 = c.send([b"[]", _event(99)])
    assert (r1.sent, r1.accepted, r1.rejected) == (10, 10, 0)
    assert (r2.accepted, [r.line_number for r in r2.rejections]) == (1, [1])
    assert fake.connections == 1 and len(fake.stored) == 11


def test_one_shot_send_over_tcp_with_token(fake_tcp: FakeDaemon) -> None:
    result = send([_event(i) for i in range(100)], tcp=fake_tcp.address, token="s3cret")
    assert result.accepted == 100 and result.ok
    assert len(fake_tcp.stored) == 100


def test_wrong_token_is_refused(fake_tcp: FakeDaemon) -> None:
    with pytest.raises(AuthenticationError, match="token"):
        Client.connect(tcp=f"127.0.0.1:{fake_tcp.address[1]}", token="wrong")
    assert fake_tcp.stored == []


def test_large_input_with_small_window_does_not_deadlock(fake: FakeDaemon) -> None:
    n = 50_000
    pad = b"p" * 300
    lines = (b'{"eventName":"E","i":%d,"pad":"%s"}' % (i, pad) for i in range(n))
    with Client.connect(socket=fake.path, window_bytes=64 * 1024) as c:
        result = c.send(lines, finish=True)
    assert (result.sent, result.accepted, result.rejected) == (n, n, 0)
    assert len(fake.stored) == n == len(set(fake.stored))


def test_large_input_with_default_window(fake: FakeDaemon) -> None:
    n = 50_000
    result = send((_event(i) for i in range(n)), socket=fake.path)
    assert result.accepted == n and len(fake.stored) == n


def test_window_bounds_unacked_bytes() -> None:
    """A server that never acks: the client stops pulling from the producer once the window is
    full (the producer is not drained into memory)."""
    tmp = Path(tempfile.mkdtemp(prefix="tsw", dir="/tmp"))
    path = tmp / "s.sock"
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(str(path))
    lst.listen(1)
    pulled = 0

    def producer() -> Iterator[bytes]:
        nonlocal pulled
        for i in range(100_000):
            pulled += 1
            yield _event(i)

    client = Client.connect(
        socket=path, window_bytes=32 * 1024, ack_timeout_secs=600, reconnect_secs=0.5
    )
    conn, _ = lst.accept()
    box: list[BaseException] = []

    def run() -> None:
        try:
            client.send(producer())
        except BaseException as e:
            box.append(e)

    t = threading.Thread(target=run)
    t.start()
    try:
        # the server reads everything but never acks: the window, not the socket buffers, stops
        # the producer
        received = 0
        conn.settimeout(0.5)
        while True:
            try:
                data = conn.recv(65536)
            except TimeoutError:
                break
            received += len(data)
        assert 32 * 1024 <= received < 32 * 1024 + 200
        assert pulled < 1000
    finally:
        conn.close()  # the client reconnects, finds no listener …
        lst.close()
        path.unlink()
        t.join(timeout=90)
        shutil.rmtree(tmp, ignore_errors=True)
    assert isinstance(box[0], DaemonUnreachableError)


def test_reconnect_resends_without_duplicates(fake: FakeDaemon) -> None:
    fake.drop_after = 700  # store 700, then abort the connection before acking them
    n = 3000
    lines = [_event(i) for i in range(n)]
    lines[5] = b"oops"
    lines[2500] = b"[]"
    with Client.connect(socket=fake.path, window_bytes=16 * 1024) as c:
        result = c.send(lines, finish=True)
    assert result.reconnects >= 1
    assert fake.connections >= 2
    assert fake.duplicates > 0  # some stored-but-unacked lines really were resent …
    assert len(fake.stored) == len(set(fake.stored)) == n - 2  # … and dedup'd
    assert [(r.line_number, r.code) for r in result.rejections] == [
        (6, "InvalidJson"),
        (2501, "NotAnObject"),
    ]
    assert result.accepted == n - 2


def test_reconnect_waits_for_the_daemon_to_come_back(fake: FakeDaemon) -> None:
    fake.drop_after = 100
    started = threading.Event()

    def produce() -> Iterator[bytes]:
        for i in range(1000):
            if i == 200:
                started.set()
            yield _event(i)

    def bounce() -> None:
        started.wait(10)
        fake.stop_listening()
        _wait_for(lambda: fake.drop_after is None, what="the drop")
        time.sleep(0.3)  # the daemon stays away for a while: the client must keep retrying
        fake.start()

    t = threading.Thread(target=bounce)
    t.start()
    try:
        with Client.connect(socket=fake.path, window_bytes=4096) as c:
            result = c.send(produce(), finish=True)
    finally:
        t.join()
    assert result.accepted == 1000 and result.reconnects >= 1
    assert len(fake.stored) == len(set(fake.stored)) == 1000


def test_reconnect_gives_up_after_its_budget(fake: FakeDaemon) -> None:
    fake.drop_after = 50
    lines = [_event(i) for i in range(400)]
    with Client.connect(socket=fake.path, window_bytes=2048, reconnect_secs=0.5) as c:
        fake.stop_listening()  # the accepted connection lives on (until the drop); no new ones
        with pytest.raises(
            DaemonUnreachableError, match=r"could not reconnect within 0\.5 s"
        ) as ei:
            c.send(lines)
    assert ei.value.partial is not None
    assert ei.value.partial.accepted < 400
    assert "ingest.sock" in str(ei.value)


def test_unreachable_socket_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.sock"
    with pytest.raises(DaemonUnreachableError, match=r"unix socket .*nope\.sock.*trailseal serve"):
        Client.connect(socket=missing)
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    with pytest.raises(DaemonUnreachableError, match=rf"TCP 127\.0\.0\.1:{port}"):
        Client.connect(tcp=("127.0.0.1", port))


# ---------------------------------------------------------------------------------------------
# Finding the daemon


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for var in ("STATE_DIRECTORY", "RUNTIME_DIRECTORY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    return tmp_path


def test_resolve_target_precedence(clean_env: Path) -> None:
    cfg = clean_env / "t.toml"
    cfg.write_text('[ingest]\nunix_socket = "/tmp/x.sock"\ntcp_listen = "0.0.0.0:9999"\n')
    assert resolve_target(socket_path=Path("/a.sock"), config=cfg) == Target(unix=Path("/a.sock"))
    assert resolve_target(tcp="localhost:1") == Target(tcp=("localhost", 1))
    assert resolve_target(config=cfg) == Target(unix=Path("/tmp/x.sock"))
    cfg.write_text('[ingest]\nunix_socket = ""\ntcp_listen = "0.0.0.0:9999"\n')
    assert resolve_target(config=cfg) == Target(tcp=("127.0.0.1", 9999))
    cfg.write_text('[ingest]\nunix_socket = ""\ntcp_listen = ""\n')
    with pytest.raises(TrailsealError, match="both disabled"):
        resolve_target(config=cfg)
    with pytest.raises(TrailsealError, match="HOST:PORT"):
        resolve_target(tcp="nope")


def test_default_target_is_the_daemons_socket_else_tcp(clean_env: Path) -> None:
    assert resolve_target() == Target(tcp=("127.0.0.1", 7707))
    sock_path = clean_env / "run" / "trailseal" / "ingest.sock"
    sock_path.parent.mkdir(parents=True)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(str(sock_path))
        assert resolve_target() == Target(unix=sock_path)
    finally:
        s.close()
        os.unlink(sock_path)


# ---------------------------------------------------------------------------------------------
# Against the real daemon (conftest.py's ``daemon`` fixture)


def delivered_records(bucket: Path) -> list[dict[str, object]]:
    """Every record of every delivered log file under ``bucket``."""
    import zstandard

    records: list[dict[str, object]] = []
    for path in sorted(bucket.rglob("*.json.zst")):
        with path.open("rb") as f:
            data = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True).read()
        records.extend(json.loads(data)["Records"])
    return records


def test_real_daemon_rejections_and_ids(daemon: Any) -> None:
    d = daemon()
    lines = [
        b'{"eventName":"A","eventSource":"s","i":0}',
        b"",
        b"{nope",
        b'{"eventName":"B","eventSource":"s","eventID":"fixed-id","i":1}',
        b"[1]",
        b'{"eventSource":"s"}',
        b'{"eventName":"C","eventSource":"s","recipientAccountId":"12","i":9}',
        b'{"eventName":"D","eventSource":"s","i":2}',
    ]
    with Client.connect(socket=d.unix_socket) as c:
        result = c.send(lines)
    assert [(r.line_number, r.code) for r in result.rejections] == [
        (3, "InvalidJson"),
        (5, "NotAnObject"),
        (6, "MissingField"),
        (7, "InvalidField"),
    ]
    assert result.accepted == 3
    assert d.stop() == 0
    records = delivered_records(d.bucket)
    assert [r["i"] for r in records] == [0, 1, 2]
    assert records[1]["eventID"] == "fixed-id"
    assert all(uuid.UUID(str(r["eventID"])).version == 4 for r in (records[0], records[2]))


def test_real_daemon_kill_9_mid_send_no_loss_no_duplicate(daemon: Any) -> None:
    """Kill -9 the daemon in the middle of a send, restart it on the same data dir and socket:
    the send completes, and the sealed output holds every event exactly once."""
    d1 = daemon()
    n = 20_000
    reached = threading.Event()

    def produce() -> Iterator[bytes]:
        for i in range(n):
            if i == n // 3:
                reached.set()  # the kill lands while lines are in flight, some stored unacked
            yield b'{"eventName":"PutItem","eventSource":"dynamodb","i":%d}' % i

    box: list[object] = []

    def run() -> None:
        try:
            box.append(send(produce(), socket=d1.unix_socket, window_bytes=256 * 1024))
        except BaseException as e:
            box.append(e)

    t = threading.Thread(target=run)
    t.start()
    try:
        assert reached.wait(60)
        d1.kill()
        d2 = daemon(
            data_dir=d1.data_dir,
            ingest={"unix_socket": d1.unix_socket, "tcp_listen": f"127.0.0.1:{d1.tcp[1]}"},
        )
    finally:
        t.join(timeout=120)
    result = box[0]
    assert isinstance(result, SendResult), result
    assert result.accepted == n and result.ok
    assert result.reconnects >= 1
    assert d2.stop() == 0, d2.stderr()
    records = delivered_records(d1.bucket)
    assert sorted(int(r["i"]) for r in records) == list(range(n))  # type: ignore[call-overload]
    assert len({r["eventID"] for r in records}) == n
