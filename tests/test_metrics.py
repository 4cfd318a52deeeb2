"""Metrics and health on the API listener, against a real daemon: ``/metrics`` counters match
what was sent (accepted, duplicates, rejected by code, delivered files), ``/healthz`` and
``trailseal status``, the listener's edges (404/405/413, a taken port stops the start), and a
backlog that shows while an ``s3://`` destination is stopped (SIGSTOP of a private SeaweedFS)
and clears after.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from conftest import DaemonProcess, exchange, free_tcp_port, wait_until
from s3server import S3Server


def _get(port: int, path: str, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = _get(port, "/metrics")
    assert status == 200
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def healthz(port: int) -> dict[str, Any]:
    _, body = _get(port, "/healthz")
    doc: dict[str, Any] = json.loads(body)
    return doc


def status_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trailseal.cli", "status", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _events(n: int, tag: str) -> bytes:
    return b"".join(
        b'{"eventName":"PutThing","eventSource":"s.example.com","eventID":"%s-%d"}\n'
        % (tag.encode(), i)
        for i in range(n)
    )


def test_metrics_match_what_was_sent(daemon: Any) -> None:
    port = free_tcp_port()
    d: DaemonProcess = daemon(
        api={"listen": f"127.0.0.1:{port}", "max_body_bytes": 1024 * 1024},
        trail={"seal_after_secs": 0.3},
    )
    assert f"api: http://127.0.0.1:{port}" in d.stderr()
    # InvalidJson, MissingField, InvalidJson
    bad = b'{"eventName":\n{"eventSource":"s"}\nnot json\n'
    with d.connect_unix() as sock:
        replies = exchange(sock, _events(10, "a") + bad)
    assert replies[-1] == {"ack": 13}
    with d.connect_unix() as sock:
        assert exchange(sock, _events(4, "a"))[-1] == {"ack": 4}  # 4 duplicates

    def delivered() -> float:
        return value(scrape(port), "trailseal_log_files_delivered_total", trail="default")

    wait_until(lambda: delivered() >= 1 and not healthz(port)["trails"]["default"]["backlog_files"])
    samples = scrape(port)
    assert value(samples, "trailseal_events_accepted_total") == 10
    assert value(samples, "trailseal_events_duplicate_total") == 4
    assert value(samples, "trailseal_events_rejected_total", code="InvalidJson") == 2
    assert value(samples, "trailseal_events_rejected_total", code="MissingField") == 1
    assert value(samples, "trailseal_batches_total") >= 2
    assert value(samples, "trailseal_fsyncs_total") >= 2
    assert value(samples, "trailseal_input_bytes_total") == len(_events(10, "a") + bad) + len(
        _events(4, "a")
    )
    files = d.log_files()
    assert value(samples, "trailseal_log_files_delivered_total", trail="default") == len(files)
    assert value(samples, "trailseal_log_files_sealed_total", trail="default") == len(files)
    assert value(samples, "trailseal_delivered_bytes_total", trail="default") == sum(
        f.stat().st_size for f in files
    )
    assert value(samples, "trailseal_delivery_errors_total", trail="default") == 0
    assert value(samples, "trailseal_last_delivery_timestamp_seconds", trail="default") > 0
    assert value(samples, "trailseal_spool_backlog_files", trail="default") == 0

    doc = healthz(port)
    assert doc["status"] == "ok"
    assert doc["trails"]["default"]["last_delivery"] is not None
    assert doc["trails"]["default"]["last_error"] is None
    assert doc["uptime_secs"] >= 0
    shown = status_command("--api", f"127.0.0.1:{port}")
    assert shown.returncode == 0, shown.stderr
    assert "status: ok" in shown.stdout
    assert "trail default: ok, backlog 0 files" in shown.stdout
    by_config = status_command("--config", str(d.config_path))
    assert by_config.returncode == 0, by_config.stderr

    # the listener's edges
    status, body = _get(port, "/nope")
    assert status == 404 and json.loads(body)["error"] == "NotFound"
    status, body = _get(port, "/metrics", method="POST", body=b"x")
    assert status == 405 and "GET" in json.loads(body)["message"]
    status, body = _get(port, "/metrics", method="POST", body=b"x" * (1024 * 1024 + 1))
    assert status == 413

    assert d.stop() == 0, d.stderr()
    files_after = d.log_files()
    assert len(files_after) == len(files)  # nothing was sealed at shutdown: all was delivered


def test_taken_api_port_stops_the_start(daemon: Any) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        d = daemon(api={"listen": f"127.0.0.1:{port}"}, wait=False)
        assert d.proc.wait(timeout=60) == 2
    assert f"cannot listen on 127.0.0.1:{port} ([api] listen)" in d.stderr()


def test_status_when_unreachable_or_disabled(tmp_path: Path) -> None:
    shown = status_command("--api", f"127.0.0.1:{free_tcp_port()}")
    assert shown.returncode == 2
    assert "unreachable" in shown.stderr
    config = tmp_path / "c.toml"
    config.write_text(f'[daemon]\ndata_dir = "{tmp_path}"\n[api]\nlisten = ""\n')
    shown = status_command("--config", str(config))
    assert shown.returncode == 2
    assert "the API is disabled" in shown.stderr


def test_healthz_shows_the_backlog_while_s3_is_stopped(tmp_path: Path, daemon: Any) -> None:
    server = S3Server.start(tmp_path / "s3")
    try:
        bucket = server.new_bucket()
        port = free_tcp_port()
        d: DaemonProcess = daemon(
            api={"listen": f"127.0.0.1:{port}"},
            trail={
                "destination": f"s3://{bucket}/p",
                "s3_endpoint_url": server.endpoint,
                "seal_after_secs": 0.3,
            },
            env=server.env(),
        )

        def trail() -> dict[str, Any]:
            state: dict[str, Any] = healthz(port)["trails"]["default"]
            return state

        with d.connect_unix() as sock:
            assert exchange(sock, _events(5, "before"))[-1] == {"ack": 5}
        wait_until(lambda: trail()["last_delivery"] is not None, what="the first delivery")
        server.pause()
        try:
            with d.connect_unix() as sock:
                assert exchange(sock, _events(5, "during"))[-1] == {"ack": 5}
            wait_until(lambda: trail()["backlog_files"] >= 1, what="a backlog in /healthz")
            assert trail()["backlog_bytes"] > 0
            samples = scrape(port)
            assert value(samples, "trailseal_spool_backlog_files", trail="default") >= 1
        finally:
            server.resume()
        wait_until(lambda: trail()["backlog_files"] == 0, timeout=120, what="the catch-up")
        wait_until(lambda: healthz(port)["status"] == "ok", timeout=60, what="status ok")
        assert status_command("--api", f"127.0.0.1:{port}").returncode == 0
        assert d.stop() == 0, d.stderr()
    finally:
        server.stop()
