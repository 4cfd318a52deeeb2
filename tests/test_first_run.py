"""The README's first-run scenario, done the way a newcomer does it.

``trailseal serve`` with no config and no arguments (XDG_DATA_HOME, XDG_RUNTIME_DIR and HOME
pointed at tmp dirs, so the embedded defaults land there); its startup output must say where the
data dir, the socket and the destination are. A 10,000-line NDJSON file of synthetic events with
37 bad lines at known positions goes through the real ``trailseal send FILE`` (no target option:
it must find the default socket), which reports exactly those 37 as ``line K: CODE message`` and
exits 1. After SIGTERM the destination holds sealed ``.json.zst`` files whose content, concatenated
in key order, is byte for byte the FORMATS.md §4 document of the 9,963 accepted events in
canonical form, in the order sent. The expected bytes are built here, independently of the Rust
core: ``jcs`` below is a small pure-Python RFC 8785 serializer (checked against the shared JCS
vectors), and the defaults of FORMATS.md §1 are filled in by hand. Finally the real
``trailseal validate`` accepts the destination with the key ``trailseal keys export`` prints.

``jcs`` is reused by test_crash.py.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import zstandard

from trailseal import synthetic

VECTORS = Path(__file__).parent / "vectors" / "jcs"
HEAD = b'{"Records":[\n'
TAIL = b"]}\n"
DEADLINE_SECS = 60.0

# ---------------------------------------------------------------------------------------------
# RFC 8785 (JSON Canonicalization Scheme), pure Python, for the values JSON parsing gives


def es6_number(value: float) -> str:
    """ECMAScript's Number.prototype.toString for a finite double (RFC 8785 §3.2.2.3)."""
    if not math.isfinite(value):
        raise ValueError(f"{value!r} is not allowed in I-JSON")
    if value == 0:
        return "0"
    if value < 0:
        return "-" + es6_number(-value)
    # repr gives the shortest digits that round-trip (what ES6 asks for), possibly in e-notation
    mantissa, _, exp_text = repr(value).partition("e")
    int_part, _, frac_part = mantissa.partition(".")
    all_digits = int_part + frac_part
    stripped = all_digits.lstrip("0")
    # value = 0.<digits> × 10^n
    n = len(int_part) + (int(exp_text) if exp_text else 0) - (len(all_digits) - len(stripped))
    digits = stripped.rstrip("0")
    k = len(digits)
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return "0." + "0" * (-n) + digits
    exponent = n - 1
    sign = "+" if exponent >= 0 else "-"
    head = digits[0] + ("." + digits[1:] if k > 1 else "")
    return f"{head}e{sign}{abs(exponent)}"


def jcs(value: Any) -> str:
    """RFC 8785 canonical text of a parsed JSON value (dict/list/str/int/float/bool/None)."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        if abs(value) > 2**53:
            raise ValueError(f"integer {value} is beyond what a double holds exactly")
        return str(value)
    if isinstance(value, float):
        return es6_number(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ",".join(jcs(v) for v in value) + "]"
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda kv: kv[0].encode("utf-16-be"))
        return (
            "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + jcs(v) for k, v in items) + "}"
        )
    raise TypeError(f"not a JSON value: {value!r}")


def log_document(canonical_events: list[bytes]) -> bytes:
    """FORMATS.md §4: the uncompressed content of a log file holding these events."""
    body = b",\n".join(canonical_events) + b"\n" if canonical_events else b""
    return HEAD + body + TAIL


def decompress_log(path: Path) -> bytes:
    """Every zstd frame of a delivered log file, concatenated."""
    with path.open("rb") as f:
        reader = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
        with reader:
            return reader.read()


def test_jcs_numbers_match_the_shared_vectors() -> None:
    lines = (VECTORS / "numbers.txt").read_text().splitlines()
    assert len(lines) > 1000
    for line in lines:
        bits, _, expected = line.partition(",")
        (value,) = struct.unpack(">d", bytes.fromhex(bits.rjust(16, "0")))
        if math.isfinite(value):
            assert es6_number(value) == expected, line


def test_jcs_matches_the_shared_vectors() -> None:
    names = sorted(p.name for p in (VECTORS / "input").iterdir())
    assert names
    for name in names:
        value = json.loads((VECTORS / "input" / name).read_bytes())
        expected = (VECTORS / "output" / name).read_bytes().rstrip(b"\n")
        assert jcs(value).encode() == expected, name


# ---------------------------------------------------------------------------------------------
# The input file: 9,963 good events and 37 bad lines at known positions

READ_PREFIXES = ("Get", "List", "Describe", "Head", "Lookup", "Search", "Scan", "Query", "BatchGet")
N_LINES = 10_000
BAD_AT = [1, 2, 77, 500, 501, 999, 1000, 1234, 1777, 2048, 2500, 2999, 3001, 3333, 3500, 4000,
          4096, 4444, 5000, 5001, 5555, 6000, 6250, 6666, 7000, 7333, 7777, 8000, 8191, 8500,
          8888, 9000, 9500, 9876, 9998, 9999, 10000]  # fmt: skip


class _Delete:
    pass


_DELETE = _Delete()


def _bad_lines() -> list[tuple[bytes, str, str]]:
    """(line, expected code, a word the message must contain) — one defect per line."""
    base_events = synthetic.events(40, seed=9001)

    def mutated(i: int, **changes: Any) -> bytes:
        ev = json.loads(base_events[i])
        for key, value in changes.items():
            if value is _DELETE:
                del ev[key]
            else:
                ev[key] = value
        return json.dumps(ev, ensure_ascii=False, separators=(",", ":")).encode()

    big = json.loads(base_events[0])
    big["requestParameters"]["blob"] = "x" * (257 * 1024)
    oversized = json.dumps(big, separators=(",", ":")).encode()
    assert len(oversized) > 256 * 1024
    good = base_events[1]
    bad: list[tuple[bytes, str, str]] = [
        (good[:-1], "InvalidJson", ""),  # truncated
        (b"this is not json", "InvalidJson", ""),
        (good[:100] + b"\xff\xfe" + good[100:], "InvalidJson", ""),  # invalid UTF-8
        (b'{"eventName":"A","eventSource":"s","eventName":"B"}', "InvalidJson", ""),  # dup key
        (b'{"eventName":"\\ud800","eventSource":"s"}', "InvalidJson", ""),  # lone surrogate
        (b"{'eventName': 'single quotes'}", "InvalidJson", ""),
        (b"[" + good + b"]", "NotAnObject", ""),
        (b'"GetObject"', "NotAnObject", ""),
        (b"42", "NotAnObject", ""),
        (b"null", "NotAnObject", ""),
        (b"true", "NotAnObject", ""),
        (oversized, "EventTooLarge", ""),
        (mutated(2, eventName=_DELETE), "MissingField", "eventName"),
        (mutated(3, eventSource=_DELETE), "MissingField", "eventSource"),
        (mutated(4, eventName=_DELETE), "MissingField", "eventName"),
        (mutated(5, eventTime=1767225600), "InvalidField", "eventTime"),
        (mutated(6, readOnly="true"), "InvalidField", "readOnly"),
        (mutated(7, recipientAccountId="11112222333"), "InvalidField", "recipientAccountId"),
        (mutated(8, eventName=7), "InvalidField", "eventName"),
        (mutated(9, eventSource=["s3.amazonaws.com"]), "InvalidField", "eventSource"),
        (mutated(10, eventTime="yesterday"), "InvalidField", "eventTime"),
        (mutated(11, eventTime="2026-01-01T02:00:00+02:00"), "InvalidField", "eventTime"),
        (mutated(12, eventID="e" * 129), "InvalidField", "eventID"),
        (mutated(13, eventID=12345), "InvalidField", "eventID"),
        (mutated(14, eventVersion=1.09), "InvalidField", "eventVersion"),
        (mutated(15, awsRegion=1), "InvalidField", "awsRegion"),
        (mutated(16, recipientAccountId=111122223333), "InvalidField", "recipientAccountId"),
        (mutated(17, eventType="ApiCall"), "InvalidField", "eventType"),
        (mutated(18, eventCategory="Everything"), "InvalidField", "eventCategory"),
        (mutated(19, managementEvent="yes"), "InvalidField", "managementEvent"),
        (mutated(20, userIdentity="alice"), "InvalidField", "userIdentity"),
        (mutated(21, requestParameters="bucket=x"), "InvalidField", "requestParameters"),
        (mutated(22, responseElements=[1]), "InvalidField", "responseElements"),
        (mutated(23, resources={"ARN": "arn:aws:s3:::b"}), "InvalidField", "resources"),
        (mutated(24, errorCode=403), "InvalidField", "errorCode"),
        (mutated(25, sourceIPAddress=None), "InvalidField", "sourceIPAddress"),
        (mutated(26, answer=2**60), "InvalidField", "answer"),  # beyond ±2^53: send a string
    ]
    assert len(bad) == len(BAD_AT) == 37
    return bad


@dataclass
class Good:
    """A good line as sent and what the daemon must make of it (receipt and absent fields
    aside)."""

    line: bytes
    expected: dict[str, Any]
    time_absent: bool
    id_absent: bool


def _good_events(n: int) -> list[Good]:
    """Synthetic events, varied so every default of FORMATS.md §1 is exercised; all in one
    stream (account 000000000000, region local-1: the embedded defaults)."""
    out = []
    for i, raw in enumerate(synthetic.iter_events(n, seed=4242)):
        ev = json.loads(raw)
        # one stream: the embedded defaults, sometimes sent explicitly
        del ev["awsRegion"], ev["recipientAccountId"]
        if i % 11 == 0:
            ev["awsRegion"], ev["recipientAccountId"] = "local-1", "000000000000"
        if i % 3 == 0:
            for key in ("eventType", "eventCategory", "managementEvent", "readOnly"):
                del ev[key]
        if i % 5 == 0:
            del ev["requestParameters"], ev["responseElements"]
        elif i % 5 == 1:
            ev["responseElements"] = None
        if i % 4 == 0:
            del ev["eventVersion"]
        if i % 7 == 0:
            ev["eventTime"] = ev["eventTime"][:-1] + ".987654Z"
        elif i % 7 == 1:
            ev["eventTime"] = ev["eventTime"][:-1] + "+00:00"
        time_absent = i % 13 == 0
        if time_absent:
            del ev["eventTime"]
        id_absent = i % 17 == 0
        if id_absent:
            del ev["eventID"]
        line = json.dumps(ev, ensure_ascii=False, separators=(",", ":")).encode()

        expected = dict(ev)
        if not time_absent:
            expected["eventTime"] = ev["eventTime"][:19] + "Z"
        expected.setdefault("eventVersion", "1.11")
        expected.setdefault("awsRegion", "local-1")
        expected.setdefault("recipientAccountId", "000000000000")
        expected.setdefault("eventType", "AwsApiCall")
        expected.setdefault("eventCategory", "Management")
        expected.setdefault("managementEvent", expected["eventCategory"] == "Management")
        expected.setdefault("readOnly", ev["eventName"].startswith(READ_PREFIXES))
        expected.setdefault("requestParameters", None)
        expected.setdefault("responseElements", None)
        out.append(Good(line, expected, time_absent, id_absent))
    return out


# ---------------------------------------------------------------------------------------------
# The scenario


@dataclass
class Newcomer:
    env: dict[str, str]
    data_home: Path
    runtime_dir: Path
    work: Path

    @property
    def data_dir(self) -> Path:
        return self.data_home / "trailseal"

    @property
    def socket(self) -> Path:
        return self.runtime_dir / "trailseal" / "ingest.sock"

    @property
    def bucket(self) -> Path:
        return self.data_dir / "bucket"

    def command(self, name: str) -> list[str]:
        """The console script as installed (``trailseal``), else the module."""
        script = Path(sys.executable).parent / "trailseal"
        if script.exists():
            return [str(script), name]
        return [sys.executable, "-m", "trailseal.cli", name]


@pytest.fixture
def newcomer(tmp_path: Path) -> Iterator[Newcomer]:
    # XDG_RUNTIME_DIR in /tmp directly: a unix socket path holds only 108 bytes
    runtime_dir = Path(tempfile.mkdtemp(prefix="ts-run-", dir="/tmp"))
    home = tmp_path / "home"
    home.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("STATE_DIRECTORY", "RUNTIME_DIRECTORY", "NOTIFY_SOCKET", "TRAILSEAL_TOKEN")
        and not k.startswith("XDG_")
    }
    env.update(
        HOME=str(home),
        XDG_DATA_HOME=str(tmp_path / "xdg-data"),
        XDG_RUNTIME_DIR=str(runtime_dir),
        XDG_CONFIG_HOME=str(home / ".config"),
    )
    try:
        yield Newcomer(env, tmp_path / "xdg-data", runtime_dir, tmp_path)
    finally:
        shutil.rmtree(runtime_dir, ignore_errors=True)


def _wait_listening(proc: subprocess.Popen[bytes], path: Path, output: Path) -> None:
    deadline = time.monotonic() + DEADLINE_SECS
    while True:
        if proc.poll() is not None:
            pytest.fail(f"trailseal serve exited with {proc.returncode}:\n{output.read_text()}")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect(str(path))
            return
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"no socket at {path} after {DEADLINE_SECS}s:\n{output.read_text()}")
            time.sleep(0.05)


def _check_receipt(receipt: Any, peer: str, start: datetime, end: datetime) -> None:
    assert isinstance(receipt, dict) and set(receipt) == {"receivedAt", "peer", "agent"}, receipt
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", receipt["receivedAt"]), receipt
    received = datetime.strptime(receipt["receivedAt"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert start <= received.replace(tzinfo=UTC) <= end, receipt
    assert receipt["peer"] == peer, receipt
    assert receipt["agent"] is None


def test_first_run_with_embedded_defaults(newcomer: Newcomer) -> None:
    bad = _bad_lines()
    goods = _good_events(N_LINES - len(bad))
    bad_by_line = dict(zip(BAD_AT, bad, strict=True))
    lines: list[bytes] = []
    good_iter = iter(goods)
    for number in range(1, N_LINES + 1):
        lines.append(bad_by_line[number][0] if number in bad_by_line else next(good_iter).line)
    assert next(good_iter, None) is None
    events_file = newcomer.work / "events.ndjson"
    events_file.write_bytes(b"".join(line + b"\n" for line in lines))
    assert len(events_file.read_bytes().split(b"\n")) == N_LINES + 1

    # 1. trailseal serve, no config, no arguments
    output = newcomer.work / "serve-output.txt"
    start = datetime.now(UTC) - timedelta(seconds=1)
    with output.open("wb") as out:
        serve = subprocess.Popen(
            newcomer.command("serve"),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=newcomer.env,
            cwd=newcomer.work,
        )
    try:
        _wait_listening(serve, newcomer.socket, output)
        announced = output.read_text()
        assert str(newcomer.data_dir) in announced, announced
        assert str(newcomer.socket) in announced, announced
        assert f"file://{newcomer.bucket}" in announced, announced
        assert "127.0.0.1:7707" in announced, announced

        # 2. trailseal send FILE, no target option
        sender = subprocess.Popen(
            [*newcomer.command("send"), str(events_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=newcomer.env,
            cwd=newcomer.work,
        )
        try:
            out_bytes, err_bytes = sender.communicate(timeout=300)
        finally:
            if sender.poll() is None:
                sender.kill()
                sender.wait()
        stdout = out_bytes.decode()
        stderr = err_bytes.decode()
        assert sender.returncode == 1, stdout + stderr
        reported = stdout.splitlines()
        assert len(reported) == 37, stdout
        got = []
        for text, (number, (_line, code, word)) in zip(
            reported, sorted(bad_by_line.items()), strict=True
        ):
            m = re.fullmatch(r"line (\d+): (\w+) (.+)", text)
            assert m is not None, text
            got.append((int(m[1]), m[2]))
            if int(m[1]) == number and m[2] == code:
                assert word in m[3], f"line {number}: the message should name {word!r}: {text}"
        assert got == [(number, code) for number, (_l, code, _w) in sorted(bad_by_line.items())]
        assert stderr.strip().splitlines()[-1] == f"sent {N_LINES} events, 37 rejected", stderr
        end = datetime.now(UTC) + timedelta(seconds=1)

        # 3. SIGTERM: exit 0
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=DEADLINE_SECS) == 0, output.read_text()
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()

    # 4. the destination: sealed log files, byte for byte the expected document
    assert newcomer.bucket.is_dir(), output.read_text()
    files = sorted(
        newcomer.bucket.rglob("*.json.zst"), key=lambda p: p.relative_to(newcomer.bucket).as_posix()
    )
    assert files, output.read_text()
    prefix = "AWSLogs/000000000000/CloudTrail/local-1/"
    for path in files:
        key = path.relative_to(newcomer.bucket).as_posix()
        assert key.startswith(prefix), key
        assert re.fullmatch(
            r"\d{4}/\d\d/\d\d/000000000000_CloudTrail_local-1_\d{8}T\d{4}Z_[A-Za-z0-9]{16}\.json\.zst",
            key[len(prefix) :],
        ), key
    content = b"".join(decompress_log(p) for p in files)
    stored_lines = content.split(b"\n")[1:-2]
    assert len(stored_lines) == len(goods), f"{len(stored_lines)} events stored, {len(goods)} sent"

    peer = f"unix:uid={os.getuid()},pid={sender.pid}"  # SO_PEERCRED of trailseal send
    canonical = []
    for number, (good, stored_line) in enumerate(zip(goods, stored_lines, strict=True), 1):
        stored = json.loads(stored_line.rstrip(b","))
        expected = dict(good.expected)
        _check_receipt(stored.get("receipt"), peer, start, end)
        expected["receipt"] = stored["receipt"]
        if good.time_absent:  # receive time, seconds
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stored["eventTime"]), stored
            t = datetime.strptime(stored["eventTime"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            assert start - timedelta(seconds=1) <= t <= end, stored["eventTime"]
            expected["eventTime"] = stored["eventTime"]
        if good.id_absent:  # assigned by the client before sending
            assert uuid.UUID(stored["eventID"]).version == 4, stored["eventID"]
            expected["eventID"] = stored["eventID"]
        line = jcs(expected).encode()
        if line != stored_line.rstrip(b","):
            assert stored == expected, f"good event {number}"
        canonical.append(line)
    assert content == log_document(canonical)
    assert len({json.loads(line)["eventID"] for line in canonical}) == len(goods)

    # 5. trailseal validate with the exported public key
    exported = subprocess.run(
        [*newcomer.command("keys"), "export"],
        capture_output=True,
        env=newcomer.env,
        cwd=newcomer.work,
        timeout=60,
        check=False,
    )
    assert exported.returncode == 0, exported.stderr.decode()
    assert exported.stdout.startswith(b"-----BEGIN PUBLIC KEY-----"), exported.stdout
    public_key = newcomer.work / "trailseal-public.pem"
    public_key.write_bytes(exported.stdout)
    validated = subprocess.run(
        [
            *newcomer.command("validate"),
            *("--destination", f"file://{newcomer.bucket}", "--public-key", str(public_key)),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=newcomer.env,
        cwd=newcomer.work,
        timeout=120,
        check=False,
    )
    report = validated.stdout + validated.stderr
    assert validated.returncode == 0, report
    digests = list(newcomer.bucket.rglob("*CloudTrail-Digest*.json.gz"))
    assert digests, report
    assert f"{len(digests)}/{len(digests)} digest files valid" in report, report
    assert f"{len(files)}/{len(files)} log files valid" in report, report


def test_bad_line_positions_are_distinct_and_in_range() -> None:
    assert sorted(set(BAD_AT)) == BAD_AT
    assert BAD_AT[0] >= 1 and BAD_AT[-1] <= N_LINES
    # the serializer is not trivially json.dumps(sort_keys=True): ES6 numbers differ
    assert (
        jcs({"b": 5e-06, "a": 1e21, "c": 0.0, "é": 1.0}) == '{"a":1e+21,"b":0.000005,"c":0,"é":1}'
    )
