"""The event history's guarantees with the real daemon: every acknowledged event is findable by
EventId after a kill -9 under load (sealing and delivery running, so the uploader's gate is
exercised), ``trailseal history rebuild`` restores it from the destination, and
``history_days`` keeps older events out of every lookup.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import DaemonProcess, free_tcp_port, read_replies, wait_until
from trailseal.api.connect import cloudtrail_client

NOW = int(time.time()) - 600


def iso(t: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def event(i: int) -> bytes:
    ev = {
        "eventID": f"crash-{i:07d}",
        "eventTime": iso(NOW + i // 1000),
        "eventSource": "history.example.com",
        "eventName": ["GetThing", "PutThing", "DeleteThing"][i % 3],
        "userIdentity": {"type": "IAMUser", "userName": f"user{i % 7}", "accessKeyId": "AKIAX"},
        "requestParameters": {"pad": "x" * 400, "n": i},
    }
    return json.dumps(ev).encode() + b"\n"


def start(daemon: Callable[..., DaemonProcess], port: int, **kw: Any) -> DaemonProcess:
    return daemon(
        api={"listen": f"127.0.0.1:{port}"},
        trail={"seal_after_bytes": 200_000, "seal_after_secs": 0.5},
        **kw,
    )


def find_all(client: Any, ids: list[str]) -> list[str]:
    """The ids LookupEvents does not find by EventId."""
    missing = []
    for event_id in ids:
        attrs = [{"AttributeKey": "EventId", "AttributeValue": event_id}]
        if len(client.lookup_events(LookupAttributes=attrs)["Events"]) != 1:
            missing.append(event_id)
    return missing


def listed(client: Any, key: str = "EventSource", value: str = "history.example.com") -> set[str]:
    """Every EventId LookupEvents finds for one attribute, page by page."""
    attrs = [{"AttributeKey": key, "AttributeValue": value}]
    out: set[str] = set()
    kwargs: dict[str, Any] = {"LookupAttributes": attrs}
    while True:
        page = client.lookup_events(**kwargs)
        out.update(e["EventId"] for e in page["Events"])
        if "NextToken" not in page:
            return out
        kwargs["NextToken"] = page["NextToken"]


def test_every_acknowledged_event_is_findable_after_kill_9(
    daemon: Callable[..., DaemonProcess],
) -> None:
    port = free_tcp_port()
    d = start(daemon, port)
    total = 40_000
    acked = [0]

    def push() -> None:
        try:
            with d.connect_unix() as sock:
                reader = threading.Thread(target=read_acks, args=(sock,), daemon=True)
                reader.start()
                for chunk in range(0, total, 500):
                    sock.sendall(b"".join(event(i) for i in range(chunk, chunk + 500)))
                sock.shutdown(1)
                reader.join(timeout=60)
        except OSError:
            pass  # the daemon was killed

    def read_acks(sock: Any) -> None:
        try:
            for reply in read_replies(sock):
                if "ack" in reply:
                    acked[0] = max(acked[0], reply["ack"])
        except (OSError, json.JSONDecodeError, AssertionError):
            pass

    sender = threading.Thread(target=push, daemon=True)
    sender.start()
    wait_until(lambda: acked[0] >= 15_000, timeout=120, what="15,000 acknowledged events")
    sealed = list((d.data_dir / "spool" / "default" / "sealed").glob("*.log"))
    d.kill()
    sender.join(timeout=30)
    n = acked[0]
    assert n < total, "the load ended before the kill: make it longer"
    delivered = list(d.bucket.rglob("*.json.zst"))
    assert delivered or sealed, "nothing was sealed before the kill: the gate went untested"

    d2 = start(daemon, port, data_dir=d.data_dir)
    client = cloudtrail_client(d2.config_path, endpoint_url=f"http://127.0.0.1:{port}")
    ids = [f"crash-{i:07d}" for i in range(n)]
    wait_until(lambda: not find_all(client, [ids[-1]]), timeout=60, what="the last acked event")
    assert set(ids) <= listed(client)
    # by EventId: the first and last thousand and every 97th in between
    sample = ids[:1000] + ids[1000:-1000:97] + ids[-1000:]
    assert find_all(client, sample) == []
    assert d2.stop() == 0, d2.stderr()


def test_history_rebuild_from_the_destination(daemon: Callable[..., DaemonProcess]) -> None:
    port = free_tcp_port()
    d = start(daemon, port)
    data = b"".join(event(i) for i in range(3000))
    with d.connect_unix() as sock:
        sock.sendall(data)
        sock.shutdown(1)
        replies = list(read_replies(sock))
    assert replies[-1] == {"ack": 3000}
    assert d.stop() == 0, d.stderr()  # everything sealed and delivered
    db = d.data_dir / "history" / "events.db"
    assert db.exists()
    # the history keeps the frames where the spool wrote them: second names of its files
    files = d.data_dir / "history" / "events.db.files"
    assert list(files.glob("*.zst"))
    db.unlink()  # lost: the spool no longer holds the delivered files
    for extra in ("-wal", "-shm"):
        Path(f"{db}{extra}").unlink(missing_ok=True)

    d2 = start(daemon, port, data_dir=d.data_dir)
    rebuild = [sys.executable, "-m", "trailseal.cli", "history", "rebuild"]
    out = subprocess.run(
        [*rebuild, "--config", str(d2.config_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 2 and "in use" in out.stderr, out  # refuses while the daemon runs
    client = cloudtrail_client(d2.config_path, endpoint_url=f"http://127.0.0.1:{port}")
    assert find_all(client, ["crash-0000000"]) == ["crash-0000000"]
    assert d2.stop() == 0, d2.stderr()

    out = subprocess.run(
        [*rebuild, "--config", str(d2.config_path), "--destination", f"file://{d.bucket}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "3000 events" in out.stdout, out.stdout
    assert not files.exists()  # the rebuilt history holds its records itself

    d3 = start(daemon, port, data_dir=d.data_dir)
    client = cloudtrail_client(d3.config_path, endpoint_url=f"http://127.0.0.1:{port}")
    assert listed(client) == {f"crash-{i:07d}" for i in range(3000)}
    assert d3.stop() == 0, d3.stderr()


def test_a_damaged_history_does_not_stop_the_daemon(
    daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    """The history is a side path: a database it cannot open is an ERROR, not a failed start;
    events are still stored and delivered, and LookupEvents says why it cannot answer."""
    import pytest
    from botocore.exceptions import ClientError

    data_dir = tmp_path / "data"
    (data_dir / "history").mkdir(parents=True)
    (data_dir / "history" / "events.db").write_bytes(b"this is not a SQLite database" * 100)
    port = free_tcp_port()
    d = start(daemon, port, data_dir=data_dir)
    assert "event history unavailable" in d.stderr()
    with d.connect_unix() as sock:
        sock.sendall(b"".join(event(i) for i in range(10)))
        sock.shutdown(1)
        assert list(read_replies(sock))[-1] == {"ack": 10}
    client = cloudtrail_client(d.config_path, endpoint_url=f"http://127.0.0.1:{port}")
    with pytest.raises(ClientError) as info:
        client.lookup_events()
    assert info.value.response["Error"]["Code"] == "OperationNotPermittedException"
    assert d.stop() == 0, d.stderr()
    assert list(d.bucket.rglob("*.json.zst"))


def test_events_older_than_history_days_are_never_returned(
    daemon: Callable[..., DaemonProcess],
) -> None:
    port = free_tcp_port()
    d = start(daemon, port, history={"history_days": 1, "indexer_priority": "low"})
    assert indexer_stat(d.pid, 19) == 10  # the thread's nice value
    now = int(time.time())
    ages = {"old": 3 * 86400, "edge": 86400 + 600, "fresh": 3600, "new": 60}
    lines = []
    for name, age in ages.items():
        for i in range(20):
            ev = {
                "eventID": f"{name}-{i}",
                "eventTime": iso(now - age),
                "eventSource": "history.example.com",
                "eventName": "GetThing",
            }
            lines.append(json.dumps(ev).encode() + b"\n")
    with d.connect_unix() as sock:
        sock.sendall(b"".join(lines))
        sock.shutdown(1)
        assert list(read_replies(sock))[-1] == {"ack": 80}
    client = cloudtrail_client(d.config_path, endpoint_url=f"http://127.0.0.1:{port}")
    want = {f"{name}-{i}" for name in ("fresh", "new") for i in range(20)}
    wait_until(lambda: listed(client) >= want, timeout=30, what="the recent events indexed")
    assert listed(client) == want
    # asking for the old days explicitly does not bring them back, nor does their EventId
    old = client.lookup_events(StartTime=now - 4 * 86400, EndTime=now - 86400)
    assert old["Events"] == []
    assert find_all(client, ["old-0", "edge-19", "new-0"]) == ["old-0", "edge-19"]
    assert d.stop() == 0, d.stderr()


def indexer_stat(pid: int, field: int) -> int:
    """Field ``field`` (1-based, proc(5)) of the daemon's history indexer thread's stat."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        if (task / "comm").read_text().strip() == "history-indexer":
            # the fields after the parenthesized comm start with field 3
            return int((task / "stat").read_text().rsplit(")", 1)[1].split()[field - 3])
    raise AssertionError("no history-indexer thread")


def metric(port: int, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} is not on /metrics")


def test_the_history_indexes_what_the_core_hands_over(
    daemon: Callable[..., DaemonProcess],
) -> None:
    """The core hands the history each frame it writes with the events' lookup values hashed, so
    the history indexes them without reading the spool back; lookups find what was sent."""
    port = free_tcp_port()
    d = start(daemon, port)
    assert indexer_stat(d.pid, 41) == 5  # the default [history] indexer_priority: SCHED_IDLE
    with d.connect_unix() as sock:
        sock.sendall(b"".join(event(i) for i in range(3000)))
        sock.shutdown(1)
        assert list(read_replies(sock))[-1] == {"ack": 3000}
    wait_until(
        lambda: metric(port, "trailseal_history_indexed_events") == 3000,
        timeout=60,
        what="3000 events indexed",
    )
    assert metric(port, "trailseal_history_fed_events") > 0
    client = cloudtrail_client(d.config_path, endpoint_url=f"http://127.0.0.1:{port}")
    assert len(listed(client)) == 3000
    for name in ("GetThing", "DeleteThing"):
        want = {f"crash-{i:07d}" for i in range(3000) if json.loads(event(i))["eventName"] == name}
        assert listed(client, "EventName", name) == want, name
    assert d.stop() == 0, d.stderr()


def test_a_database_of_another_schema_is_moved_aside(
    daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    """An upgrade: the old database is kept beside a new one, with a WARNING that says how to
    get the older events back; new events are findable at once."""
    import sqlite3

    from trailseal import _core

    data_dir = tmp_path / "data"
    (data_dir / "history").mkdir(parents=True)
    old = data_dir / "history" / "events.db"
    with sqlite3.connect(old) as db:  # what an older trailseal left (a test fixture)
        db.execute("CREATE TABLE meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        db.execute("INSERT INTO meta VALUES('schema', ?)", (_core.HISTORY_SCHEMA - 1,))
    db.close()
    (data_dir / "history" / "events.db.files").mkdir()
    (data_dir / "history" / "events.db.files" / "1.zst").write_bytes(b"its records")
    port = free_tcp_port()
    d = start(daemon, port, data_dir=data_dir)
    aside = data_dir / "history" / f"events.db.schema{_core.HISTORY_SCHEMA - 1}"
    assert aside.exists()
    # its files go with it
    assert (Path(f"{aside}.files") / "1.zst").read_bytes() == b"its records"
    assert "trailseal history rebuild" in d.stderr()
    assert _core.history_schema(str(old)) == _core.HISTORY_SCHEMA
    with d.connect_unix() as sock:
        sock.sendall(b"".join(event(i) for i in range(10)))
        sock.shutdown(1)
        assert list(read_replies(sock))[-1] == {"ack": 10}
    client = cloudtrail_client(d.config_path, endpoint_url=f"http://127.0.0.1:{port}")
    wait_until(lambda: not find_all(client, ["crash-0000009"]), timeout=30, what="event 9")
    assert d.stop() == 0, d.stderr()
