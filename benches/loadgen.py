"""End-to-end load benchmark: the real daemon, real sockets, acks and fsync, one JSON line out.

``python benches/loadgen.py --events N --connections K [--cores 1|2] [--tcp] [--naive]``

1. Pre-generates ``N`` seeded synthetic events (``trailseal.synthetic``) and pre-encodes them into
   per-connection chunks of whole lines (``--chunk-bytes``, default 256 KiB).
2. Writes a config into a temporary directory (defaults otherwise: ``seal_after_bytes`` 64 MiB,
   the API only with the history on (for ``/metrics``), TCP on a free 127.0.0.1 port, a
   ``file://`` destination beside it) and starts
   ``trailseal serve --config …`` as a subprocess (``--cores 1``: under ``taskset -c 0``, and the
   load generator pins itself to the same core).
3. Pushes the chunks from ``K`` connections (unix socket, or TCP with ``--tcp``), one sender and
   one ack-reader thread each, at most ``--window-bytes`` unacknowledged per connection, and
   waits until every line is acknowledged. Ack latency per chunk = time from ``sendall`` of the
   chunk returning to the ``{"ack":N}`` that covers its last line.
4. Samples the daemon's peak RSS (VmHWM in ``/proc/<pid>/status``); with the history on, reads
   how many events it has not indexed yet at the last ack (``history_behind_at_last_ack``, from
   ``/metrics``), waits until it has them all (``history_catchup_s``) and reads how many of
   them the core handed over (``history_fed``; the rest were read back) and how many log
   files it had sealed and delivered by then (``sealed_at_last_ack``, ``delivered_at_last_ack``:
   0 means no stream reached ``seal_after_bytes`` during the load, so sealing and delivery are
   not in the figure) and how the group commit cut the load (``batches_at_last_ack``,
   ``fsyncs_at_last_ack``); sends SIGTERM, waits
   for the graceful shutdown (seal + deliver), and reads the delivered ``.json.zst`` log files: the
   compression ratio is their uncompressed/compressed size and the delivered event count is
   checked against ``N``.
5. On the same events, in the same process: the naive Python pipeline (naive_pipeline.py) and
   the core alone (``Core.process`` + ``Core.sync`` on 4 MiB batches, no sockets).

Throughput is counted from the first byte sent to the last ack (daemon start-up and shutdown are
not in it). The load generator runs on the same machine and takes some of its CPU.
``--naive`` runs only the in-process baselines (no daemon).

``--trails three-s3`` (issue 3's acceptance scenario) runs the daemon twice on the same events,
one fifth of them turned into S3 data events under ``arn:aws:s3:::bench-data/``: first with one
``file://`` trail that logs every event (management and those data events), then with three
trails — all management events → S3 (zstd); write-only management events of ec2 and iam → S3
gzip with SSE AES256 and Object Lock COMPLIANCE; the data events → ``file://`` — delivering to a
SeaweedFS (``tests/s3server.py``) started here on free 127.0.0.1 ports. It reports both runs'
events/s, their ratio (``three_over_one``; issue 3's target is ≥ 0.75) and, per run, the seconds
from the last ack to the daemon's exit after SIGTERM (``drain_s``: every segment sealed and
every log file delivered). ``--write-trail-compression zstd`` makes the second trail zstd (to
measure what the gzip transcode costs), ``--seal-after-bytes`` seals sooner.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import math
import os
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import zstandard

import naive_pipeline  # benches/ is on sys.path: the script's directory, or pytest's rootdir

CHUNK_BYTES = 256 * 1024
WINDOW_BYTES = 8 * 1024 * 1024
CORE_BATCH_BYTES = 4 * 1024 * 1024
ACCOUNT_ID = "111122223333"
REGION = "us-east-1"
DATA_BUCKET_ARN = "arn:aws:s3:::bench-data"
DATA_EVERY = 5
"""``--trails three-s3``: every DATA_EVERY-th event becomes an S3 data event."""
WRITE_SOURCES = ("ec2.amazonaws.com", "iam.amazonaws.com")


class LoadError(Exception):
    """The load run could not complete (daemon failed to start, stalled, or lost events)."""


# ---------------------------------------------------------------- pre-encoding


@dataclass(frozen=True)
class Chunk:
    data: bytes
    end_line: int
    """Line number (per connection, from 1) of the chunk's last line."""


def encode_chunks(lines: Sequence[bytes], chunk_bytes: int = CHUNK_BYTES) -> list[Chunk]:
    """Join ``lines`` (no line endings) into ``\\n``-terminated chunks of about ``chunk_bytes``."""
    chunks: list[Chunk] = []
    current: list[bytes] = []
    size = 0
    for number, line in enumerate(lines, start=1):
        current.append(line)
        size += len(line) + 1
        if size >= chunk_bytes:
            chunks.append(Chunk(b"\n".join(current) + b"\n", number))
            current, size = [], 0
    if current:
        chunks.append(Chunk(b"\n".join(current) + b"\n", len(lines)))
    return chunks


def split_connections(lines: Sequence[bytes], connections: int) -> list[Sequence[bytes]]:
    """Contiguous, nearly equal slices of ``lines``, one per connection."""
    n = len(lines)
    return [lines[k * n // connections : (k + 1) * n // connections] for k in range(connections)]


# ---------------------------------------------------------------- the reply side (sans-IO)


class ReplyParser:
    """Parses the server's reply lines (FORMATS.md §2): ``{"ack":N}`` and ``{"error":…}``.

    Cheap on purpose: an ack line is recognised by its prefix and its number cut out; anything
    else is decoded with orjson. ``feed`` returns the acks found, in order.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self.errors: list[dict[str, Any]] = []
        self.other: list[bytes] = []

    def feed(self, data: bytes) -> list[int]:
        self._buffer += data
        *complete, self._buffer = self._buffer.split(b"\n")
        acks: list[int] = []
        for line in complete:
            line = line.strip()
            if not line:
                continue
            if line.startswith(b'{"ack":') and line.endswith(b"}"):
                try:
                    acks.append(int(line[7:-1]))
                    continue
                except ValueError:
                    pass
            try:
                reply = orjson.loads(line)
            except orjson.JSONDecodeError:
                self.other.append(line)
                continue
            if isinstance(reply, dict) and isinstance(reply.get("ack"), int):
                acks.append(reply["ack"])
            elif isinstance(reply, dict) and isinstance(reply.get("error"), dict):
                self.errors.append(reply["error"])
            else:
                self.other.append(line)
        return acks


# ---------------------------------------------------------------- one connection


@dataclass
class ConnectionStats:
    lines: int
    acked: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    other: list[bytes] = field(default_factory=list)
    failure: str | None = None


class Connection:
    """One client connection: a sender thread pushing pre-encoded chunks (at most
    ``window_chunks`` unacknowledged) and a reader thread parsing acks."""

    def __init__(self, sock: socket.socket, chunks: list[Chunk], window_bytes: int) -> None:
        self.sock = sock
        self.chunks = chunks
        avg = max(1, sum(len(c.data) for c in chunks) // max(1, len(chunks)))
        self.window_chunks = max(1, window_bytes // avg)
        self.stats = ConnectionStats(lines=chunks[-1].end_line if chunks else 0)
        self._sent_at: list[float | None] = [None] * len(chunks)
        self._settled = 0  # chunks fully acknowledged
        self._cond = threading.Condition()
        self._stop = False
        self._threads = [
            threading.Thread(target=self._send, name="loadgen-send", daemon=True),
            threading.Thread(target=self._read, name="loadgen-read", daemon=True),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self, deadline: float) -> None:
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in self._threads):
            self._fail(f"timed out with {self.stats.acked}/{self.stats.lines} lines acknowledged")
            for thread in self._threads:
                thread.join(5)

    def _fail(self, message: str) -> None:
        with self._cond:
            if self.stats.failure is None:
                self.stats.failure = message
            self._stop = True
            self._cond.notify_all()
        with suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def _send(self) -> None:
        try:
            for index, chunk in enumerate(self.chunks):
                with self._cond:
                    while not self._stop and index - self._settled >= self.window_chunks:
                        self._cond.wait()
                    if self._stop:
                        return
                self.sock.sendall(chunk.data)
                self._sent_at[index] = time.perf_counter()
        except OSError as exc:
            self._fail(f"send failed: {exc}")

    def _read(self) -> None:
        parser = ReplyParser()
        ends = [chunk.end_line for chunk in self.chunks]
        total = self.stats.lines
        try:
            while self.stats.acked < total:
                data = self.sock.recv(65536)
                if not data:
                    self._fail(
                        f"server closed the connection after ack {self.stats.acked} of {total}"
                    )
                    return
                acks = parser.feed(data)
                if not acks:
                    continue
                now = time.perf_counter()
                ack = max(acks)
                with self._cond:
                    self.stats.acked = max(self.stats.acked, ack)
                    while self._settled < len(ends) and ends[self._settled] <= ack:
                        sent = self._sent_at[self._settled]
                        self.stats.latencies.append(now - (sent if sent is not None else now))
                        self._settled += 1
                    self._cond.notify_all()
        except OSError as exc:
            self._fail(f"receive failed: {exc}")
        finally:
            self.stats.errors = parser.errors
            self.stats.other = parser.other


@dataclass
class PushResult:
    seconds: float
    cpu_seconds: float
    """CPU time the load generator's process used while pushing (user + system)."""
    lines: int
    acked: int
    latencies: list[float]
    errors: list[dict[str, Any]]
    failures: list[str]


def push(
    connect: Any,
    per_connection: Sequence[Sequence[bytes]],
    *,
    chunk_bytes: int = CHUNK_BYTES,
    window_bytes: int = WINDOW_BYTES,
    timeout: float = 600.0,
) -> PushResult:
    """Open one socket per element of ``per_connection`` with ``connect()``, push its lines and
    wait for every ack (or ``timeout`` seconds). Encoding is done before the clock starts."""
    encoded = [encode_chunks(lines, chunk_bytes) for lines in per_connection]
    conns = [Connection(connect(), chunks, window_bytes) for chunks in encoded if chunks]
    try:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        deadline = time.monotonic() + timeout
        for conn in conns:
            conn.start()
        for conn in conns:
            conn.join(deadline)
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        for conn in conns:
            conn.sock.close()
    return PushResult(
        seconds=seconds,
        cpu_seconds=after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime,
        lines=sum(c.stats.lines for c in conns),
        acked=sum(c.stats.acked for c in conns),
        latencies=[lat for c in conns for lat in c.stats.latencies],
        errors=[err for c in conns for err in c.stats.errors],
        failures=[c.stats.failure for c in conns if c.stats.failure is not None],
    )


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


# ---------------------------------------------------------------- the daemon


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def toml_value(value: object) -> str:
    """``value`` as a TOML value (inline tables and arrays; strings in JSON's escapes, which TOML
    basic strings share)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return orjson.dumps(value).decode()
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def trails_toml(trails: Mapping[str, Mapping[str, object]]) -> str:
    """``[trails.<name>]`` tables from ``{name: {key: value}}``."""
    return "".join(
        f"\n[trails.{name}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in keys.items())
        for name, keys in trails.items()
    )


HISTORY_ENABLED = True
"""``[history] enabled`` of the benchmark's daemons (``--history on|off``)."""
HISTORY_PRIORITY = "idle"
"""``[history] indexer_priority`` of the benchmark's daemons (``--history-priority``)."""


def write_config(
    root: Path,
    *,
    tcp_port: int,
    api_port: int | None = None,
    trails: Mapping[str, Mapping[str, object]] | None = None,
) -> Path:
    """The benchmark's config: FORMATS.md §9 defaults except the paths, ports and the API (off
    unless ``api_port``); ``trails`` (default: one ``file://`` trail "default" delivering to
    ``root/bucket``); ``[history] enabled`` from :data:`HISTORY_ENABLED`."""
    data_dir = root / "data"
    config = root / "trailseal.toml"
    if trails is None:
        trails = {"default": {"destination": f"file://{root / 'bucket'}"}}
    config.write_text(
        f"""\
[daemon]
data_dir = "{data_dir}"
account_id = "{ACCOUNT_ID}"
region = "{REGION}"
host_id = "bench"
shutdown_timeout_secs = 600

[ingest]
unix_socket = "{root / "ingest.sock"}"
tcp_listen = "127.0.0.1:{tcp_port}"

[api]
listen = "{f"127.0.0.1:{api_port}" if api_port else ""}"

[history]
enabled = {"true" if HISTORY_ENABLED else "false"}
indexer_priority = "{HISTORY_PRIORITY}"
"""
        + trails_toml(trails)
    )
    return config


def trailseal_command() -> list[str]:
    script = Path(sys.executable).parent / "trailseal"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "trailseal.cli"]


def metric_value(exposition: str, name: str) -> int | None:
    """``name``'s value in a Prometheus text exposition, summed over its label sets (None: not
    there)."""
    total = None
    for line in exposition.splitlines():
        if line.startswith((name + " ", name + "{")):
            total = (total or 0) + int(float(line.rsplit(None, 1)[1]))
    return total


def read_vm_hwm_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def read_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds the process has used so far (``/proc/<pid>/stat``)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class Daemon:
    """``trailseal serve --config FILE`` as a subprocess, its stderr in ``root/daemon.log``."""

    def __init__(
        self,
        root: Path,
        *,
        cores: int,
        tcp_port: int,
        command: Sequence[str] | None = None,
        trails: Mapping[str, Mapping[str, object]] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.root = root
        # the API serves /metrics, where the history's progress is read
        self.api_port = free_tcp_port() if HISTORY_ENABLED else None
        self.config = write_config(root, tcp_port=tcp_port, api_port=self.api_port, trails=trails)
        self.unix_socket = root / "ingest.sock"
        self.tcp = ("127.0.0.1", tcp_port)
        self.bucket = root / "bucket"
        self.log_path = root / "daemon.log"
        command = [*(command or trailseal_command()), "serve", "--config", str(self.config)]
        if cores == 1:
            command = ["taskset", "-c", "0", *command]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        # its own process group: stop() signals the whole group, so a wrapper that does not
        # pass signals on (``--daemon-command "/usr/bin/time …"``) cannot leave the daemon behind
        self.proc = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=None if env is None else {**env},
            start_new_session=True,
        )
        self.peak_rss_kib = 0
        self._sampler = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while self.proc.poll() is None:
            value = read_vm_hwm_kib(self.proc.pid)
            if value is not None:
                self.peak_rss_kib = max(self.peak_rss_kib, value)
            time.sleep(0.1)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def connect_unix(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(self.unix_socket))
        except OSError:
            sock.close()
            raise
        return sock

    def connect_tcp(self) -> socket.socket:
        sock = socket.create_connection(self.tcp)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until both listeners accept a connection (or the daemon exits: LoadError)."""
        deadline = time.monotonic() + timeout
        for connect in (self.connect_unix, self.connect_tcp):
            while True:
                if self.proc.poll() is not None:
                    raise LoadError(
                        f"the daemon exited with status {self.proc.returncode} during start-up; "
                        f"its log ({self.log_path}) ends:\n{self.log_tail()}"
                    )
                try:
                    connect().close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise LoadError(
                            f"the daemon did not accept connections within {timeout:.0f} s; "
                            f"its log ({self.log_path}) ends:\n{self.log_tail()}"
                        ) from None
                    time.sleep(0.05)

    def history_indexed(self, metric: str = "trailseal_history_indexed_events") -> int | None:
        """Events the daemon's history has indexed since it started, or another of its
        ``/metrics`` values (None: no history/API)."""
        return self.metric(metric)

    def metric(self, name: str) -> int | None:
        """The daemon's ``/metrics`` value ``name``, summed over its labels (None: no API, or no
        such metric)."""
        if self.api_port is None:
            return None
        url = f"http://127.0.0.1:{self.api_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return metric_value(response.read().decode(), name)

    def wait_history(self, events: int, timeout: float) -> float | None:
        """Seconds until the history has indexed ``events`` (None: no history, or not within
        ``timeout``)."""
        start = time.perf_counter()
        while time.perf_counter() - start < timeout:
            n = self.history_indexed()
            if n is None:
                return None
            if n >= events:
                return time.perf_counter() - start
            time.sleep(0.02)
        return None

    def _signal_group(self, sig: signal.Signals | int) -> bool:
        """Send ``sig`` to the daemon's process group; False when the group is gone."""
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def _wait_group(self, deadline: float) -> None:
        """Wait until nothing of the daemon's process group runs (a wrapper may exit before
        the daemon it started has finished its shutdown); kill what is left at ``deadline``."""
        while self._signal_group(0):
            if time.monotonic() >= deadline:
                self._signal_group(signal.SIGKILL)
                return
            time.sleep(0.05)

    def stop(self, timeout: float = 300.0) -> int:
        """SIGTERM to the daemon's process group, wait for the graceful shutdown; kill the group
        when it overruns ``timeout`` (also what a wrapper left running after it exited)."""
        deadline = time.monotonic() + timeout
        try:
            if self.proc.poll() is None:
                self._signal_group(signal.SIGTERM)
            try:
                status = self.proc.wait(timeout)
                self._wait_group(deadline)
                return status
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait(10)
                raise LoadError(
                    f"the daemon did not exit within {timeout:.0f} s of SIGTERM and was killed; "
                    f"its log ({self.log_path}) ends:\n{self.log_tail()}"
                ) from None
        finally:
            self._sampler.join(5)
            self._log.close()


@contextmanager
def running_daemon(
    root: Path,
    *,
    cores: int,
    command: Sequence[str] | None = None,
    trails: Mapping[str, Mapping[str, object]] | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[Daemon]:
    daemon = Daemon(
        root, cores=cores, tcp_port=free_tcp_port(), command=command, trails=trails, env=env
    )
    try:
        daemon.wait_ready()
        yield daemon
    finally:
        if daemon.proc.poll() is None:
            with suppress(LoadError):
                daemon.stop()
        elif not daemon._log.closed:
            daemon._log.close()


@dataclass
class Delivered:
    files: int = 0
    events: int = 0
    compressed_bytes: int = 0
    uncompressed_bytes: int = 0

    def add(self, compressed: int, content: Iterator[bytes]) -> None:
        """One log file: its size and its decompressed content in blocks."""
        self.files += 1
        self.compressed_bytes += compressed
        newlines = 0
        for block in content:
            self.uncompressed_bytes += len(block)
            newlines += block.count(b"\n")
        self.events += newlines - 2  # the '{"Records":[' and ']}' lines

    def summary(self) -> dict[str, Any]:
        return {
            "compression_ratio": (
                round(self.uncompressed_bytes / self.compressed_bytes, 2)
                if self.compressed_bytes
                else None
            ),
            "delivered_files": self.files,
            "delivered_events": self.events,
        }


def _blocks(reader: Any) -> Iterator[bytes]:
    while block := reader.read(1 << 20):
        yield block


def _decompressed(name: str, raw: Any) -> Iterator[bytes]:
    """The content of the log file ``name`` (``.json.zst``: every frame; ``.json.gz``)."""
    if name.endswith(".json.zst"):
        with zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True) as r:
            yield from _blocks(r)
    else:
        with gzip.GzipFile(fileobj=raw, mode="rb") as r:
            yield from _blocks(r)


def is_log_key(key: str) -> bool:
    """A delivered log file (not a digest file, a public key or a ``.metadata.json``)."""
    return "/CloudTrail/" in key and key.endswith((".json.zst", ".json.gz"))


def read_delivered(bucket: Path) -> Delivered:
    """Decompress every log file delivered under the ``file://`` root ``bucket``; count events."""
    result = Delivered()
    for path in sorted(bucket.rglob("*")):
        if path.is_file() and is_log_key(path.relative_to(bucket).as_posix()):
            with open(path, "rb") as raw:
                result.add(path.stat().st_size, _decompressed(path.name, raw))
    return result


def read_delivered_s3(client: Any, bucket: str) -> Delivered:
    """The same for every log file in the S3 bucket ``bucket`` (``client``: boto3 S3)."""
    result = Delivered()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            if is_log_key(item["Key"]):
                body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"]
                result.add(item["Size"], _decompressed(item["Key"], body))
    return result


@contextmanager
def profiling(pid: int, out_dir: Path | None, py_spy: str | None, perf: bool) -> Iterator[None]:
    """While the body runs: ``py-spy record`` (native frames, collapsed stacks) and/or
    ``perf record -e cpu-clock -g`` on ``pid``, written into ``out_dir``."""
    if out_dir is None or (py_spy is None and not perf):
        yield
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    commands: list[list[str]] = []
    if py_spy is not None:
        output = str(out_dir / "daemon.pyspy.txt")
        commands.append(
            [py_spy, "record", "--pid", str(pid), "--native", "--threads", "--rate", "200"]
        )
        commands[-1] += ["--format", "raw", "--output", output]
    if perf:
        output = str(out_dir / "daemon.perf.data")
        commands.append(["perf", "record", "-e", "cpu-clock", "-g", "-p", str(pid), "-o", output])
    log = open(out_dir / "profilers.log", "ab")  # noqa: SIM115 - closed below
    procs = [subprocess.Popen(c, stdout=log, stderr=subprocess.STDOUT) for c in commands]
    try:
        time.sleep(1.0)  # let the profilers attach before the load starts
        yield
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        log.close()


# ---------------------------------------------------------------- one daemon run


@dataclass(frozen=True)
class PushOptions:
    connections: int
    tcp: bool
    chunk_bytes: int
    window_bytes: int
    timeout: float


def daemon_phase(
    root: Path,
    lines: Sequence[bytes],
    options: PushOptions,
    *,
    cores: int,
    command: Sequence[str] | None = None,
    trails: Mapping[str, Mapping[str, object]] | None = None,
    env: Mapping[str, str] | None = None,
    profile: tuple[Path | None, str | None, bool] = (None, None, False),
) -> dict[str, Any]:
    """Start the daemon in ``root`` (made here), push ``lines``, SIGTERM it after the last ack and
    wait until it has sealed and delivered everything; the figures of that run (no delivery
    check: the caller reads the destinations). ``trails``: as for :func:`write_config`, an empty
    ``destination`` standing for the default ``file://`` bucket."""
    root.mkdir()
    if trails is not None:
        bucket = f"file://{root / 'bucket'}"
        trails = {n: {**t, "destination": t["destination"] or bucket} for n, t in trails.items()}
    input_bytes = sum(len(line) + 1 for line in lines)
    with (
        running_daemon(root, cores=cores, command=command, trails=trails, env=env) as d,
        profiling(d.proc.pid, *profile),
    ):
        cpu_before = read_cpu_seconds(d.proc.pid)
        pushed = push(
            d.connect_tcp if options.tcp else d.connect_unix,
            split_connections(lines, options.connections),
            chunk_bytes=options.chunk_bytes,
            window_bytes=options.window_bytes,
            timeout=options.timeout,
        )
        if pushed.failures:
            raise LoadError(
                "; ".join(pushed.failures)
                + f"\nthe daemon's log ({d.log_path}) ends:\n{d.log_tail()}"
            )
        cpu_after = read_cpu_seconds(d.proc.pid)
        rss_before_stop = read_vm_hwm_kib(d.proc.pid) or 0
        acked_at = time.perf_counter()
        # how far the event history is behind at the last ack, and how long it takes to have
        # every event (ingest has stopped: it runs on the whole machine then)
        indexed_at_ack = d.history_indexed()
        # did the load seal (and deliver) files, as a sustained load does every
        # seal_after_bytes per stream, or did everything wait for the shutdown's seal?
        sealed_at_ack = d.metric("trailseal_log_files_sealed_total")
        delivered_at_ack = d.metric("trailseal_log_files_delivered_total")
        # how the group commit cut the load: batches processed and fsyncs done by the last ack
        batches_at_ack = d.metric("trailseal_batches_total")
        fsyncs_at_ack = d.metric("trailseal_fsyncs_total")
        history_catchup_s = d.wait_history(len(lines), timeout=120.0)
        history_fed = d.history_indexed("trailseal_history_fed_events")
        status = d.stop()
        drain_s = time.perf_counter() - acked_at
    if status != 0:
        print(f"loadgen: the daemon exited with {status}:\n{d.log_tail()}", file=sys.stderr)
    return {
        "seconds": round(pushed.seconds, 3),
        "events_per_s": round(len(lines) / pushed.seconds),
        "mb_per_s": round(input_bytes / pushed.seconds / 1e6, 1),
        "loadgen_cpu_s": round(pushed.cpu_seconds, 2),
        "daemon_cpu_us_per_event": (
            round((cpu_after - cpu_before) / len(lines) * 1e6, 1)
            if cpu_before is not None and cpu_after is not None
            else None
        ),
        "ack_p50_ms": round(percentile(pushed.latencies, 50) * 1000, 2),
        "ack_p99_ms": round(percentile(pushed.latencies, 99) * 1000, 2),
        "ack_max_ms": round(max(pushed.latencies, default=0.0) * 1000, 2),
        "drain_s": round(drain_s, 2),
        **(
            {
                "history_behind_at_last_ack": len(lines) - indexed_at_ack,
                "history_fed": history_fed,
                "history_catchup_s": None
                if history_catchup_s is None
                else round(history_catchup_s, 2),
            }
            if indexed_at_ack is not None
            else {}
        ),
        **(
            {"sealed_at_last_ack": sealed_at_ack, "delivered_at_last_ack": delivered_at_ack}
            if sealed_at_ack is not None
            else {}
        ),
        **(
            {"batches_at_last_ack": batches_at_ack, "fsyncs_at_last_ack": fsyncs_at_ack}
            if batches_at_ack is not None
            else {}
        ),
        "peak_rss_mb": round(max(d.peak_rss_kib, rss_before_stop) / 1024, 1),
        "errors": len(pushed.errors),
        "daemon_exit": status,
        "ok": status == 0 and not pushed.errors and pushed.acked == len(lines),
    }


# ---------------------------------------------------------------- three trails, S3 (issue 3)


def with_data_events(lines: Sequence[bytes], every: int = DATA_EVERY) -> list[bytes]:
    """``lines`` with every ``every``-th event (from the first) turned into an S3 object data
    event under ``DATA_BUCKET_ARN`` (GetObject / PutObject alternately); the rest unchanged."""
    out = list(lines)
    for i in range(0, len(out), every):
        event = orjson.loads(out[i])
        name = "GetObject" if (i // every) % 2 == 0 else "PutObject"
        event.update(
            eventSource="s3.amazonaws.com",
            eventName=name,
            eventCategory="Data",
            managementEvent=False,
            readOnly=name == "GetObject",
            resources=[
                {"type": "AWS::S3::Bucket", "ARN": DATA_BUCKET_ARN},
                {"type": "AWS::S3::Object", "ARN": f"{DATA_BUCKET_ARN}/obj/{i}.bin"},
            ],
        )
        out[i] = orjson.dumps(event)
    return out


def expected_counts(lines: Sequence[bytes]) -> dict[str, int]:
    """How many of ``lines`` each trail of :func:`three_trails` logs (and "one": all of them)."""
    counts = {"one": len(lines), "management": 0, "writes": 0, "data": 0}
    for line in lines:
        event = orjson.loads(line)
        if event.get("eventCategory") == "Data":
            counts["data"] += 1
            continue
        counts["management"] += 1
        if event.get("readOnly") is False and event.get("eventSource") in WRITE_SOURCES:
            counts["writes"] += 1
    return counts


ALL_DATA_EVENTS = {
    "Type": "AWS::S3::Object",
    "Values": [f"{DATA_BUCKET_ARN}/"],
}


def one_trail() -> dict[str, dict[str, object]]:
    """The single-trail baseline: ``file://``, every management event and every data event."""
    selector = {"ReadWriteType": "All", "IncludeManagementEvents": True}
    return {
        "default": {
            "destination": "",
            "event_selectors": [{**selector, "DataResources": [ALL_DATA_EVENTS]}],
        }
    }


def three_trails(
    endpoint: str, management_bucket: str, writes_bucket: str, writes_compression: str
) -> dict[str, dict[str, object]]:
    """Issue 3's acceptance scenario: management → S3 zstd; ec2/iam writes → S3 gzip, SSE,
    Object Lock; data events → ``file://``."""
    writes: dict[str, object] = {
        "destination": f"s3://{writes_bucket}",
        "s3_endpoint_url": endpoint,
        "compression": writes_compression,
        "sse": "AES256",
        "object_lock_mode": "COMPLIANCE",
        "object_lock_days": 1,
        "advanced_event_selectors": [
            {
                "Name": "ec2 and iam writes",
                "FieldSelectors": [
                    {"Field": "eventCategory", "Equals": ["Management"]},
                    {"Field": "readOnly", "Equals": ["false"]},
                    {"Field": "eventSource", "Equals": list(WRITE_SOURCES)},
                ],
            }
        ],
    }
    data_selector = {"ReadWriteType": "All", "IncludeManagementEvents": False}
    return {
        "management": {"destination": f"s3://{management_bucket}", "s3_endpoint_url": endpoint},
        "writes": writes,
        "data": {
            "destination": "",
            "event_selectors": [{**data_selector, "DataResources": [ALL_DATA_EVENTS]}],
        },
    }


def s3server_module() -> ModuleType:
    """``tests/s3server.py`` (SeaweedFS for the tests), imported by path: ``tests`` is not a
    package and its ``conftest`` must not shadow this directory's."""
    path = Path(__file__).resolve().parent.parent / "tests" / "s3server.py"
    spec = importlib.util.spec_from_file_location("trailseal_bench_s3server", path)
    if spec is None or spec.loader is None:
        raise LoadError(f"cannot import {path}")
    module = sys.modules.get(spec.name)
    if module is None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return module


def _with_seal(
    trails: dict[str, dict[str, object]], seal_after_bytes: int | None
) -> dict[str, dict[str, object]]:
    if seal_after_bytes is None:
        return trails
    return {n: {**t, "seal_after_bytes": seal_after_bytes} for n, t in trails.items()}


def three_trails_s3(
    root: Path,
    lines: Sequence[bytes],
    options: PushOptions,
    *,
    cores: int,
    command: Sequence[str] | None = None,
    write_compression: str = "gzip",
    seal_after_bytes: int | None = None,
) -> dict[str, Any]:
    """Single ``file://`` trail, then the three trails with S3 delivery, on ``lines``; both runs'
    figures (``one_*``, ``three_*``), their ratio and every trail's delivered count checked."""
    s3server = s3server_module()
    expected = expected_counts(lines)
    out: dict[str, Any] = {"trails": "three-s3", "write_trail_compression": write_compression}
    one = daemon_phase(
        root / "one",
        lines,
        options,
        cores=cores,
        command=command,
        trails=_with_seal(one_trail(), seal_after_bytes),
    )
    got_one = read_delivered(root / "one" / "bucket")
    server = s3server.S3Server.start(root / "s3")
    try:
        client = server.client()
        management_bucket = server.new_bucket()
        writes_bucket = server.new_bucket(object_lock=True)
        env = {k: v for k, v in os.environ.items() if k not in s3server.AWS_ENV_CLEARED}
        env.update(server.env())
        trails = three_trails(server.endpoint, management_bucket, writes_bucket, write_compression)
        three = daemon_phase(
            root / "three",
            lines,
            options,
            cores=cores,
            command=command,
            trails=_with_seal(trails, seal_after_bytes),
            env=env,
        )
        got = {
            "management": read_delivered_s3(client, management_bucket),
            "writes": read_delivered_s3(client, writes_bucket),
            "data": read_delivered(root / "three" / "bucket"),
        }
    finally:
        server.stop()
    for name, phase in (("one", one), ("three", three)):
        out.update({f"{name}_{key}": value for key, value in phase.items() if key != "ok"})
    out.update({f"one_{key}": value for key, value in got_one.summary().items()})
    for trail, delivered in got.items():
        out[f"{trail}_delivered_events"] = delivered.events
        out[f"{trail}_expected_events"] = expected[trail]
        out[f"{trail}_delivered_files"] = delivered.files
    out["one_expected_events"] = expected["one"]
    out["three_over_one"] = round(three["events_per_s"] / one["events_per_s"], 2)
    out["ok"] = (
        one["ok"]
        and three["ok"]
        and got_one.events == expected["one"]
        and all(got[t].events == expected[t] for t in got)
    )
    return out


# ---------------------------------------------------------------- the baselines


def core_alone(
    lines: Sequence[bytes], spool_dir: Path, batch_bytes: int = CORE_BATCH_BYTES
) -> float:
    """Events/s of ``Core.process`` + ``Core.sync`` on ``batch_bytes`` batches, in this process."""
    from trailseal import _core

    core = _core.Core(str(spool_dir), ["default"], account_id=ACCOUNT_ID, region=REGION)
    data = [b"\n".join(group) + b"\n" for group in naive_pipeline.batches(lines, batch_bytes)]
    accepted = 0
    start = time.perf_counter()
    for batch in data:
        parts: list[tuple[int, str, str | None, int]] = [
            (len(batch), "unix:uid=0,pid=0", None, int(time.time() * 1000))
        ]
        result = core.process(batch, parts)
        accepted += result.accepted + result.unrouted  # data events: valid, no trail takes them
        core.sync()
    seconds = time.perf_counter() - start
    if accepted != len(lines):
        raise LoadError(f"the core accepted {accepted} of {len(lines)} events")
    return len(lines) / seconds


def core_available() -> bool:
    try:
        from trailseal import _core
    except ImportError:
        return False
    return hasattr(_core, "Core")


# ---------------------------------------------------------------- the run


def run(
    *,
    events: int,
    connections: int,
    cores: int = 2,
    tcp: bool = False,
    seed: int = 1,
    chunk_bytes: int = CHUNK_BYTES,
    window_bytes: int = WINDOW_BYTES,
    baselines: bool = True,
    daemon: bool = True,
    timeout: float = 600.0,
    keep: Path | None = None,
    lines: Sequence[bytes] | None = None,
    profile_dir: Path | None = None,
    py_spy: str | None = None,
    perf: bool = False,
    daemon_command: Sequence[str] | None = None,
    trails: str = "one",
    write_trail_compression: str = "gzip",
    seal_after_bytes: int | None = None,
) -> dict[str, Any]:
    """One benchmark run; returns the summary (what ``main`` prints as one JSON line).
    ``trails``: "one" (a single ``file://`` trail) or "three-s3" (see the module docs)."""
    from trailseal import synthetic

    if cores == 1:
        os.sched_setaffinity(0, {0})  # threads started from here on inherit it
    if lines is None:
        lines = synthetic.events(events, seed)
    if trails == "three-s3":
        lines = with_data_events(lines)
    push_options = PushOptions(connections, tcp, chunk_bytes, window_bytes, timeout)
    summary: dict[str, Any] = {
        "events": len(lines),
        "connections": connections,
        "cores": cores,
        "transport": "tcp" if tcp else "unix",
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
    }
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="tsb-", dir=keep))
    try:
        if daemon and trails == "three-s3":
            summary.update(
                three_trails_s3(
                    root,
                    lines,
                    push_options,
                    cores=cores,
                    command=daemon_command,
                    write_compression=write_trail_compression,
                    seal_after_bytes=seal_after_bytes,
                )
            )
        elif daemon:
            one = None if seal_after_bytes is None else {"seal_after_bytes": seal_after_bytes}
            phase = daemon_phase(
                root / "e2e",
                lines,
                push_options,
                cores=cores,
                command=daemon_command,
                trails=None if one is None else {"default": {"destination": "", **one}},
                profile=(profile_dir, py_spy, perf),
            )
            delivered = read_delivered(root / "e2e" / "bucket")
            summary.update(phase)
            summary.update(delivered.summary())
            summary["ok"] = phase["ok"] and delivered.events == len(lines)
        if baselines:
            naive = naive_pipeline.run(lines, root / "naive.json.zst")
            summary["naive_events_per_s"] = round(naive.events_per_s)
            if core_available():
                summary["core_events_per_s"] = round(core_alone(lines, root / "core-spool"))
            if "events_per_s" in summary and trails == "one":
                summary["e2e_over_naive"] = round(
                    summary["events_per_s"] / summary["naive_events_per_s"], 2
                )
                if "core_events_per_s" in summary:
                    summary["e2e_over_core"] = round(
                        summary["events_per_s"] / summary["core_events_per_s"], 2
                    )
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Drive the real trailseal daemon with synthetic events; print one JSON line."
    )
    parser.add_argument("--events", type=int, default=200_000, help="events to send (200000)")
    parser.add_argument("--connections", type=int, default=4, help="client connections (4)")
    parser.add_argument(
        "--cores",
        type=int,
        choices=(1, 2),
        default=2,
        help="1: pin the daemon and the load generator to CPU 0; 2: no pinning (default)",
    )
    parser.add_argument("--tcp", action="store_true", help="use TCP, not the unix socket")
    parser.add_argument(
        "--naive", action="store_true", help="run only the in-process baselines, no daemon"
    )
    parser.add_argument(
        "--no-baselines", action="store_true", help="skip the naive pipeline and core-alone runs"
    )
    parser.add_argument("--seed", type=int, default=1, help="synthetic events seed (1)")
    parser.add_argument("--chunk-bytes", type=int, default=CHUNK_BYTES, help="bytes per send")
    parser.add_argument(
        "--window-bytes",
        type=int,
        default=WINDOW_BYTES,
        help="max unacknowledged bytes per connection (8 MiB)",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="give up after this many s")
    parser.add_argument(
        "--keep", type=Path, help="make the run's directory under this one and keep it"
    )
    parser.add_argument(
        "--profile-dir", type=Path, help="write the daemon's profiles (--py-spy, --perf) here"
    )
    parser.add_argument("--py-spy", metavar="PATH", help="py-spy binary: sample the daemon")
    parser.add_argument("--perf", action="store_true", help="perf record the daemon (cpu-clock)")
    parser.add_argument(
        "--daemon-command",
        metavar="CMD",
        help="run the daemon as CMD (split like a shell) + 'serve --config FILE' instead of "
        "the venv's trailseal, e.g. to try a patched build; CMD's process is the one measured "
        "(peak RSS, CPU), so a wrapper should exec the daemon",
    )
    parser.add_argument(
        "--trails",
        choices=("one", "three-s3"),
        default="one",
        help="one: a single file:// trail (default); three-s3: that, then issue 3's three trails "
        "with S3 delivery to a local SeaweedFS, on the same events (with data events)",
    )
    parser.add_argument(
        "--write-trail-compression",
        choices=("gzip", "zstd"),
        default="gzip",
        help="three-s3: the write-only trail's compression (gzip)",
    )
    parser.add_argument(
        "--seal-after-bytes", type=int, help="every trail's seal_after_bytes (64 MiB)"
    )
    parser.add_argument(
        "--history",
        choices=("on", "off"),
        default="on",
        help="the daemon's event history ([history] enabled; default on)",
    )
    parser.add_argument(
        "--history-priority",
        choices=("idle", "low"),
        default="idle",
        help="the history indexer's CPU priority ([history] indexer_priority; default idle)",
    )
    args = parser.parse_args(argv)
    global HISTORY_ENABLED, HISTORY_PRIORITY
    HISTORY_ENABLED = args.history == "on"
    HISTORY_PRIORITY = args.history_priority
    try:
        summary = run(
            events=args.events,
            connections=args.connections,
            cores=args.cores,
            tcp=args.tcp,
            seed=args.seed,
            chunk_bytes=args.chunk_bytes,
            window_bytes=args.window_bytes,
            baselines=not args.no_baselines,
            daemon=not args.naive,
            timeout=args.timeout,
            keep=args.keep,
            profile_dir=args.profile_dir,
            py_spy=args.py_spy,
            perf=args.perf,
            daemon_command=shlex.split(args.daemon_command) if args.daemon_command else None,
            trails=args.trails,
            write_trail_compression=args.write_trail_compression,
            seal_after_bytes=args.seal_after_bytes,
        )
    except LoadError as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return 1
    summary["history"] = HISTORY_ENABLED
    if HISTORY_ENABLED:
        summary["history_priority"] = HISTORY_PRIORITY
    sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    return 0 if summary.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
