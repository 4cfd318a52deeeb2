"""Shared fixtures: a real ``trailseal serve`` subprocess and raw-socket protocol helpers.

``daemon`` is a factory fixture. Call it to start a daemon::

    def test_x(daemon):
        d = daemon()                                   # defaults below
        d = daemon(trail={"seal_after_secs": 1}, ingest={"max_event_bytes": 1000})
        with d.connect_unix() as sock:                 # or d.connect_tcp()
            replies = exchange(sock, b'{"eventName":"A","eventSource":"s"}\\n')
        assert replies[-1] == {"ack": 1}
        assert d.stop() == 0                           # SIGTERM, wait, exit code
        files = d.log_files()                          # delivered .json.zst keys (Paths)

Each call writes ``trailseal.toml`` into its own tmp dir with: ``[daemon] data_dir`` = that
dir's ``data``, account ``123456789012``, region ``test-1``; ``[ingest] unix_socket`` in a short
``/tmp/ts-*`` dir (sun_path holds only 108 bytes), ``tcp_listen`` on a free 127.0.0.1 port;
``[api] listen = ""``; one trail ``default`` delivering to ``file://<tmp>/bucket`` with
``digest_interval_secs = 3600`` (so digests appear only at shutdown). Keyword arguments merge
into those sections: ``daemon_section={...}``, ``ingest={...}``, ``trail={...}``, ``api={...}``;
``tokens={name: token}`` adds ``[ingest.tokens]``; ``trails={name: {...}}`` writes those
``[trails.<name>]`` tables instead of ``default`` (``trail=`` is then ignored); ``data_dir=``
reuses a data dir (restart after a crash: ``d2 = daemon(data_dir=d.data_dir)``); ``wait=False``
returns without waiting for the socket. Starting waits (with a deadline) until the socket
accepts, failing with the daemon's stderr if it exits first.

``DaemonProcess`` gives: ``proc``, ``pid``, ``config_path``, ``data_dir``, ``bucket`` (the
destination dir), ``unix_socket``, ``tcp`` ((host, port)), ``connect_unix()``,
``connect_tcp()``, ``stop()`` (SIGTERM, returns the exit code), ``kill()`` (SIGKILL),
``stderr()`` (all it printed), ``log_files()``, ``rss_kib()``.

At teardown every daemon still running gets SIGTERM, and SIGKILL if it has not exited within
30 s; the tmp dirs are removed.

``exchange(sock, data)`` sends ``data``, shuts down the write side and returns every reply line
(parsed JSON) until the daemon closes the connection. ``read_until_ack(sock, n)`` reads replies
until ``{"ack": >= n}``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

START_DEADLINE_SECS = 60.0
STOP_DEADLINE_SECS = 30.0
ACCOUNT = "123456789012"
REGION = "test-1"


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML in tests")


def _toml_section(name: str, values: dict[str, Any]) -> str:
    body = "".join(f"{key} = {_toml_value(value)}\n" for key, value in values.items())
    return f"[{name}]\n{body}"


@dataclass
class DaemonProcess:
    proc: subprocess.Popen[bytes]
    config_path: Path
    data_dir: Path
    bucket: Path
    unix_socket: Path | None
    tcp: tuple[str, int] | None
    stderr_path: Path
    _stderr_file: Any = field(repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def connect_unix(self, timeout: float = 30.0) -> socket.socket:
        assert self.unix_socket is not None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(str(self.unix_socket))
        except BaseException:
            sock.close()
            raise
        return sock

    def connect_tcp(self, timeout: float = 30.0) -> socket.socket:
        assert self.tcp is not None
        sock = socket.create_connection(self.tcp, timeout=timeout)
        return sock

    def stop(self, timeout: float = STOP_DEADLINE_SECS) -> int:
        """SIGTERM and wait for the exit code (SIGKILL and fail if it does not exit in time)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"daemon did not exit within {timeout}s of SIGTERM:\n{self.stderr()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS in /proc status")

    def log_files(self) -> list[Path]:
        """Delivered log files (``*.json.zst``) in the destination, sorted by path."""
        return sorted(self.bucket.rglob("*.json.zst"))

    def _close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_DEADLINE_SECS)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr_file.close()


def stock_aws(home: Path, env: dict[str, str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """A runner of the stock AWS CLI (``awscli`` of the dev extra, in this venv) that sees only
    ``env`` (credentials, endpoints, region) and no AWS config of the host: ``run(*args)``.
    The CLI is in the dev extra: a missing one fails the test."""
    script = Path(sys.executable).parent / "aws"
    if not script.exists():
        pytest.fail(f"the AWS CLI is not installed in the venv ({script}): pip install -e '.[dev]'")
    full = {
        "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
        "HOME": str(home),
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
        **env,
    }

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(script), *args],
            env=full,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    return run


def wait_until(
    predicate: Callable[[], bool], *, timeout: float = 30.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []
    socket_dirs: list[str] = []

    def start(
        *,
        daemon_section: dict[str, Any] | None = None,
        ingest: dict[str, Any] | None = None,
        trail: dict[str, Any] | None = None,
        trails: dict[str, dict[str, Any]] | None = None,
        tokens: dict[str, str] | None = None,
        api: dict[str, Any] | None = None,
        history: dict[str, Any] | None = None,
        data_dir: Path | None = None,
        wait: bool = True,
        env: dict[str, str] | None = None,
    ) -> DaemonProcess:
        n = len(started)
        work = tmp_path / f"daemon{n}"
        work.mkdir()
        socket_dir = tempfile.mkdtemp(prefix="ts-", dir="/tmp")
        socket_dirs.append(socket_dir)
        data = data_dir if data_dir is not None else work / "data"
        bucket = tmp_path / "bucket"
        daemon_values: dict[str, Any] = {
            "data_dir": data,
            "account_id": ACCOUNT,
            "region": REGION,
            "host_id": "test-host",
            "shutdown_timeout_secs": 30,
        }
        daemon_values.update(daemon_section or {})
        ingest_values: dict[str, Any] = {
            "unix_socket": Path(socket_dir) / "ingest.sock",
            "tcp_listen": f"127.0.0.1:{free_tcp_port()}",
        }
        ingest_values.update(ingest or {})
        trail_values: dict[str, Any] = {
            "destination": f"file://{bucket}",
            "digest_interval_secs": 3600,
        }
        trail_values.update(trail or {})
        text = (
            _toml_section("daemon", daemon_values)
            + _toml_section("ingest", ingest_values)
            + (_toml_section("ingest.tokens", dict(tokens)) if tokens else "")
            + _toml_section("api", {"listen": "", **(api or {})})
            + (_toml_section("history", history) if history else "")
            + "".join(
                _toml_section(f"trails.{name}", values)
                for name, values in (trails or {"default": trail_values}).items()
            )
        )
        config_path = work / "trailseal.toml"
        config_path.write_text(text)
        unix = Path(ingest_values["unix_socket"]) if ingest_values["unix_socket"] else None
        tcp_text = str(ingest_values["tcp_listen"])
        tcp = (tcp_text.rpartition(":")[0], int(tcp_text.rpartition(":")[2])) if tcp_text else None

        child_env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("NOTIFY_SOCKET", "STATE_DIRECTORY", "RUNTIME_DIRECTORY")
        }
        child_env.update(env or {})
        stderr_path = work / "stderr.txt"
        stderr_file = stderr_path.open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "trailseal.cli", "serve", "--config", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=stderr_file,
            stderr=stderr_file,
            env=child_env,
        )
        d = DaemonProcess(proc, config_path, data, bucket, unix, tcp, stderr_path, stderr_file)
        started.append(d)
        if wait:
            _wait_ready(d)
        return d

    yield start

    for d in started:
        d._close()
    for socket_dir in socket_dirs:
        shutil.rmtree(socket_dir, ignore_errors=True)


def _wait_ready(d: DaemonProcess) -> None:
    deadline = time.monotonic() + START_DEADLINE_SECS
    while True:
        code = d.proc.poll()
        if code is not None:
            pytest.fail(f"daemon exited with {code} before it was ready:\n{d.stderr()}")
        try:
            sock = d.connect_unix(timeout=5) if d.unix_socket else d.connect_tcp(timeout=5)
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"daemon not ready after {START_DEADLINE_SECS}s:\n{d.stderr()}")
            time.sleep(0.05)
            continue
        sock.close()
        return


def read_replies(sock: socket.socket) -> Iterator[dict[str, Any]]:
    """Reply lines (parsed) until the daemon closes the connection."""
    buffer = b""
    while True:
        data = sock.recv(65536)
        if not data:
            break
        buffer += data
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            yield json.loads(line)
    assert buffer == b"", f"unterminated reply at close: {buffer!r}"


def exchange(sock: socket.socket, data: bytes) -> list[dict[str, Any]]:
    """Send ``data``, shut down the write side, return every reply until the daemon closes."""
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)
    return list(read_replies(sock))


def read_until_ack(sock: socket.socket, n: int) -> list[dict[str, Any]]:
    """Replies up to and including the first ``{"ack": >= n}``."""
    out: list[dict[str, Any]] = []
    buffer = b""
    while True:
        data = sock.recv(65536)
        if not data:
            raise AssertionError(f"connection closed before ack {n}; got {out}")
        buffer += data
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            reply = json.loads(line)
            out.append(reply)
            if reply.get("ack", -1) >= n:
                return out


# ---------------------------------------------------------------------------------------------
# A real S3 server (SeaweedFS, tests/s3server.py)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One ``weed mini`` for the whole session (started on first use, killed at the end)."""
    from s3server import S3Server

    work = tmp_path_factory.mktemp("s3server")
    server = S3Server.start(work)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def s3(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The session's S3 server with this process's AWS SDK chain pointed at it (env vars).
    ``s3.new_bucket()`` gives a fresh bucket; ``s3.env()`` is for subprocesses."""
    from s3server import AWS_ENV_CLEARED

    for name in AWS_ENV_CLEARED:
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server
