"""``POST /v1/events`` (FORMATS.md §2) against the real daemon: exact accepted / duplicate /
error counts, events in the sealed files, the body limit (413), bearer tokens (401)."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import uuid
from collections.abc import Callable
from typing import Any

from conftest import DaemonProcess, free_tcp_port
from test_daemon import delivered_records

TOKEN = "http-ingest-token-0123456789"


def event(name: str = "PutObject", **fields: Any) -> dict[str, Any]:
    return {"eventName": name, "eventSource": "s3.amazonaws.com", "eventID": str(uuid.uuid4())} | (
        fields
    )


def lines(*docs: Any) -> bytes:
    return b"".join((d if isinstance(d, str) else json.dumps(d)).encode() + b"\n" for d in docs)


def post(
    port: int, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(
            "POST",
            "/v1/events",
            body=body,
            headers={"Content-Type": "application/x-ndjson", **(headers or {})},
        )
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def start(daemon: Callable[..., DaemonProcess], **kwargs: Any) -> tuple[DaemonProcess, int]:
    port = free_tcp_port()
    api = {"listen": f"127.0.0.1:{port}", **kwargs.pop("api", {})}
    return daemon(api=api, **kwargs), port


def test_counts_are_exact_and_events_are_delivered(daemon: Callable[..., DaemonProcess]) -> None:
    d, port = start(daemon)
    first = [event(f"Call{i}") for i in range(5)]
    status, doc = post(port, lines(*first))
    assert (status, doc) == (200, {"accepted": 5, "duplicates": 0, "errors": []})

    fresh = event("Fresh")
    body = lines(first[0], "{not json", fresh, "", first[3], ["an", "array"], event(name="")) + (
        b'{"eventName":"NoNewline","eventSource":"s","eventID":"last"}'
    )
    status, doc = post(port, body)
    assert status == 200
    assert doc["accepted"] == 2 and doc["duplicates"] == 2
    # the blank line is not counted: lines 1..7
    assert [(e["line"], e["code"]) for e in doc["errors"]] == [
        (2, "InvalidJson"),
        (5, "NotAnObject"),
        (6, "InvalidField"),
    ]
    assert all(e["message"] for e in doc["errors"])

    # concurrent requests, each with its own duplicates: the counts stay per request
    results: list[dict[str, Any]] = []

    def send(batch: list[dict[str, Any]]) -> None:
        results.append(post(port, lines(*batch))[1])

    threads = [
        threading.Thread(target=send, args=([event("Par"), first[1], first[2]],)) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert [(r["accepted"], r["duplicates"]) for r in results] == [(1, 2)] * 4

    assert d.stop() == 0
    records = delivered_records(d)
    ids = [r["eventID"] for r in records]
    assert len(ids) == len(set(ids)) == 5 + 2 + 4
    assert {e["eventID"] for e in first} | {fresh["eventID"], "last"} <= set(ids)
    peers = {r["receipt"]["peer"] for r in records}
    assert all(p.startswith("tcp:127.0.0.1:") for p in peers)


def test_body_limit(daemon: Callable[..., DaemonProcess]) -> None:
    _, port = start(daemon, api={"max_body_bytes": 4096})
    small = lines(event())
    assert post(port, small)[0] == 200
    big = lines(*[event(f"Big{i}", padding="x" * 200) for i in range(30)])
    assert len(big) > 4096
    status, doc = post(port, big)
    assert (status, doc["error"]) == (413, "RequestTooLarge")


def test_bearer_tokens(daemon: Callable[..., DaemonProcess]) -> None:
    d, port = start(daemon, tokens={"agent-a": TOKEN})
    for headers in [
        {},
        {"Authorization": "Bearer wrong-token-0000000000"},
        {"Authorization": TOKEN},
    ]:
        status, doc = post(port, lines(event("Refused")), headers)
        assert (status, doc["error"]) == (401, "Unauthorized"), headers
    status, doc = post(port, lines(event("Allowed")), {"Authorization": f"Bearer {TOKEN}"})
    assert (status, doc["accepted"]) == (200, 1)
    assert d.stop() == 0
    records = delivered_records(d)
    assert [(r["eventName"], r["receipt"]["agent"]) for r in records] == [("Allowed", "agent-a")]


def test_other_paths_and_methods(daemon: Callable[..., DaemonProcess]) -> None:
    _, port = start(daemon)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET /v1/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 405 ")
