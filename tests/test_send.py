"""Tests of ``trailseal send``: the real command in a subprocess, against FakeDaemon (see
test_client.py) over real unix and TCP sockets: output format, exit codes, target discovery,
and the 10,000-line file with 37 bad lines."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from test_client import FakeDaemon

BAD_KINDS = [
    (b'{"eventName":"X","eventSource":"s"', "InvalidJson"),
    (b"this is not json", "InvalidJson"),
    (b"[1,2,3]", "NotAnObject"),
    (b'"just a string"', "NotAnObject"),
    (b"12", "NotAnObject"),
    (b'{"eventName":"X","eventSource":"s","pad":"' + b"x" * (300 * 1024) + b'"}', "EventTooLarge"),
    (b'{"eventSource":"s","n":1}', "MissingField"),
    (b'{"eventName":5,"eventSource":"s"}', "InvalidField"),
    (b'{"eventName":["a"],"eventSource":"s"}', "InvalidField"),
]


def write_mixed_file(path: Path, n: int = 10_000, bad: int = 37) -> list[tuple[int, str]]:
    """n lines (numbered from 1), of which ``bad`` are bad of every kind; a few blank lines in
    between (they keep their line numbers). Returns the expected (line, code) rejections."""
    step = n // bad
    bad_at = {1 + i * step + (i % 5): BAD_KINDS[i % len(BAD_KINDS)] for i in range(bad)}
    blank_at = {k + 1 for k in bad_at if k + 1 not in bad_at and k + 1 <= n}
    expected = []
    with path.open("wb") as f:
        for line in range(1, n + 1):
            if line in bad_at:
                data, code = bad_at[line]
                expected.append((line, code))
            elif line in blank_at and line % 2:
                data = b""
            else:
                data = b'{"eventName":"PutObject","eventSource":"s3.amazonaws.com","i":%d}' % line
            f.write(data + (b"\r\n" if line % 7 == 0 else b"\n"))
    assert len(expected) == bad
    return expected


def run_send(*args: str | Path, stdin: bytes | None = None, env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-m", "trailseal.cli", "send", *map(str, args)],
        input=stdin if stdin is not None else b"",
        capture_output=True,
        timeout=120,
        env=env,
        check=False,
    )


def parse_rejections(stdout: bytes) -> list[tuple[str, int, str]]:
    out = []
    for text in stdout.decode().splitlines():
        where, _, rest = text.partition(": ")
        prefix, _, number = where.rpartition("line ")
        out.append((prefix.rstrip(":"), int(number), rest.split(" ", 1)[0]))
    return out


@pytest.fixture
def fake() -> Iterator[FakeDaemon]:
    d = FakeDaemon()
    yield d
    d.close()


def test_all_good_exit_0(fake: FakeDaemon, tmp_path: Path) -> None:
    f = tmp_path / "events.ndjson"
    f.write_bytes(b"".join(b'{"eventName":"E","eventSource":"s","i":%d}\n' % i for i in range(100)))
    p = run_send("--socket", fake.path, f)
    assert p.returncode == 0, p.stderr
    assert p.stdout == b""
    assert p.stderr.decode().strip() == "sent 100 events, 0 rejected"
    assert len(fake.stored) == 100


def test_37_bad_lines_of_10000_reported_exactly(fake: FakeDaemon, tmp_path: Path) -> None:
    f = tmp_path / "mixed.ndjson"
    expected = write_mixed_file(f)
    p = run_send("--socket", fake.path, f)
    assert p.returncode == 1, p.stderr
    got = parse_rejections(p.stdout)
    assert [(line, code) for _, line, code in got] == expected
    assert {prefix for prefix, _, _ in got} == {""}  # one input: plain "line K: CODE message"
    assert all(t.startswith("line ") for t in p.stdout.decode().splitlines())
    blank = sum(1 for line in f.read_bytes().split(b"\n")[:-1] if not line.strip())
    sent = 10_000 - blank
    assert p.stderr.decode().strip().endswith(f"sent {sent} events, 37 rejected")
    assert len(fake.stored) == sent - 37


def test_several_files_and_stdin_are_labelled(fake: FakeDaemon, tmp_path: Path) -> None:
    a = tmp_path / "a.json"
    b = tmp_path / "b.json"
    a.write_bytes(b'{"eventName":"A"}\n[]\n')
    b.write_bytes(b'\n{"eventName":"B"}\nnope\n')
    p = run_send("--socket", fake.path, a, "-", b, stdin=b'{"x":1}\n')
    assert p.returncode == 1
    assert p.stdout.decode().splitlines() == [
        f"{a}:line 2: NotAnObject not an object",
        "-:line 1: MissingField eventName",
        f"{b}:line 3: InvalidJson Expecting value: line 1 column 1 (char 0)",
    ]
    assert p.stderr.decode().strip() == "sent 5 events, 3 rejected"


def test_stdin_alone_is_plain_line_numbers(fake: FakeDaemon) -> None:
    p = run_send("--socket", fake.path, stdin=b'{"eventName":"A"}\n\n{"eventName":7}\n')
    assert p.returncode == 1
    assert p.stdout.decode() == "line 3: InvalidField eventName: expected a string\n"
    assert p.stderr.decode().strip() == "sent 2 events, 1 rejected"


def test_event_ids_assigned_and_kept(fake: FakeDaemon) -> None:
    p = run_send(
        "--socket", fake.path, stdin=b'{"eventName":"A","eventID":"given-1"}\n{"eventName":"B"}\n'
    )
    assert p.returncode == 0, p.stderr
    assert fake.stored[0] == "given-1"
    assert len(fake.stored[1]) == 36


def test_tcp_with_token(tmp_path: Path) -> None:
    d = FakeDaemon(tcp=True, token="tok")
    try:
        addr = f"127.0.0.1:{d.address[1]}"
        ok = run_send("--tcp", addr, "--token", "tok", stdin=b'{"eventName":"A"}\n')
        assert ok.returncode == 0, ok.stderr
        env = dict(os.environ, TRAILSEAL_TOKEN="tok")
        ok = run_send("--tcp", addr, stdin=b'{"eventName":"A"}\n', env=env)
        assert ok.returncode == 0, ok.stderr
        bad = run_send("--tcp", addr, "--token", "nope", stdin=b'{"eventName":"A"}\n')
        assert bad.returncode == 2
        assert b"token" in bad.stderr
        assert len(d.stored) == 2
    finally:
        d.close()


def test_unreachable_exit_2_names_the_target(tmp_path: Path) -> None:
    missing = tmp_path / "gone.sock"
    p = run_send("--socket", missing, stdin=b'{"eventName":"A"}\n')
    assert p.returncode == 2
    err = p.stderr.decode()
    assert str(missing) in err and "trailseal serve" in err
    p = run_send("--tcp", "127.0.0.1:1", stdin=b"{}\n")
    assert p.returncode == 2
    assert "TCP 127.0.0.1:1" in p.stderr.decode()


def test_unreadable_input_exit_2(fake: FakeDaemon, tmp_path: Path) -> None:
    p = run_send("--socket", fake.path, tmp_path / "missing.json")
    assert p.returncode == 2
    assert f"cannot read {tmp_path / 'missing.json'}" in p.stderr.decode()
    assert fake.connections == 0


def test_target_from_config_and_default(fake: FakeDaemon, tmp_path: Path) -> None:
    cfg = tmp_path / "trailseal.toml"
    cfg.write_text(f"[ingest]\nunix_socket = {json.dumps(str(fake.path))}\n")
    p = run_send("--config", cfg, stdin=b'{"eventName":"A"}\n')
    assert p.returncode == 0, p.stderr

    bad_cfg = tmp_path / "bad.toml"
    bad_cfg.write_text("[ingest]\nunix_sockett = 1\n")
    p = run_send("--config", bad_cfg, stdin=b"{}\n")
    assert p.returncode == 2
    assert "unix_sockett" in p.stderr.decode()

    # no target option: the daemon's default socket ($XDG_RUNTIME_DIR/trailseal/ingest.sock)
    run = tmp_path / "run"
    (run / "trailseal").mkdir(parents=True)
    (run / "trailseal" / "ingest.sock").symlink_to(fake.path)
    env = {k: v for k, v in os.environ.items() if k not in ("STATE_DIRECTORY", "RUNTIME_DIRECTORY")}
    env.update(XDG_RUNTIME_DIR=str(run), XDG_DATA_HOME=str(tmp_path / "data"))
    p = run_send(stdin=b'{"eventName":"A"}\n', env=env)
    assert p.returncode == 0, p.stderr
    assert len(fake.stored) == 2


def _run_on_pty(*args: str | Path) -> tuple[int, bytes]:
    """Run ``trailseal send`` with stderr on a pseudo-terminal; returns (exit code, output)."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "trailseal.cli", "send", *map(str, args)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=slave,
        )
        os.close(slave)
        out = b""
        while True:
            ready, _, _ = select.select([master], [], [], 60)
            if not ready:
                proc.kill()
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        return proc.wait(timeout=60), out
    finally:
        os.close(master)


def test_progress_bar_only_on_a_terminal(fake: FakeDaemon, tmp_path: Path) -> None:
    f = tmp_path / "events.ndjson"
    f.write_bytes(b'{"eventName":"E","eventSource":"s"}\n' * 20_000)
    code, out = _run_on_pty("--socket", fake.path, f)
    assert code == 0
    assert b"sending" in out and b"sent 20000 events, 0 rejected" in out
    code, out = _run_on_pty("--socket", fake.path, "--no-progress", f)
    assert code == 0
    assert out.strip() == b"sent 20000 events, 0 rejected"


# ---------------------------------------------------------------------------------------------
# Against the real daemon (conftest.py's ``daemon`` fixture)


def test_real_daemon_37_bad_lines_of_10000(daemon: Any, tmp_path: Path) -> None:
    d = daemon()
    f = tmp_path / "mixed.ndjson"
    expected = write_mixed_file(f)
    p = run_send("--config", d.config_path, "--no-progress", f)
    assert p.returncode == 1, p.stderr
    got = parse_rejections(p.stdout)
    assert [(line, code) for _, line, code in got] == expected, p.stdout.decode()[:2000]
    assert {prefix for prefix, _, _ in got} == {""}
    blank = sum(1 for line in f.read_bytes().split(b"\n")[:-1] if not line.strip())
    assert p.stderr.decode().strip().endswith(f"sent {10_000 - blank} events, 37 rejected")


def test_real_daemon_tcp_token(daemon: Any) -> None:
    token = "tok-0123456789abcdef"
    d = daemon(tokens={"agent1": token})
    addr = f"{d.tcp[0]}:{d.tcp[1]}"
    ok = run_send("--tcp", addr, "--token", token, stdin=b'{"eventName":"A","eventSource":"s"}\n')
    assert ok.returncode == 0, ok.stderr
    assert ok.stderr.decode().strip() == "sent 1 events, 0 rejected"
    bad = run_send(
        "--tcp", addr, "--token", "wrong", stdin=b'{"eventName":"A","eventSource":"s"}\n'
    )
    assert bad.returncode == 2
    assert "token" in bad.stderr.decode()
