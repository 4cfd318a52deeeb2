"""Crash safety under load: kill -9 the real daemon again and again while four clients push.

Four ``trailseal.client.Client`` connections (two over the unix socket, two over TCP, one
thread each) push seeded synthetic events (``synthetic.iter_events`` with a distinct seed per
connection, so every eventID is unique) while the test SIGKILLs the daemon at seeded random
moments spread across the load and restarts it each time on the same data dir, socket and port;
the clients reconnect and resend what was not acknowledged. Once every client has its final ack
the daemon gets SIGTERM (exit 0), and the destination must hold every event sent exactly once
and nothing else, every log file in the exact FORMATS.md §4 layout (canonical lines checked on a
sample with the independent serializer of test_first_run.py), and the real ``trailseal
validate`` must accept all of it with the key ``trailseal keys export`` prints.

Three runs: kills at random moments of the appends (default sealing: files are sealed only at
recovery and at shutdown); kills aimed at sealing, delivery and digest steps (small
``seal_after_bytes``, ``seal_after_secs = 1``, ``digest_interval_secs = 2``; the killer watches
the spool's sealed/ directory and the delivery state files and fires just after they change,
and every second restart is killed again while it delivers what recovery sealed); and a kill
in the middle of a graceful shutdown. Beyond the delivered events, crashes must not restart a
digest chain or break an event chain (checked from the digests' logFiles).
"""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from conftest import DaemonProcess, wait_until
from test_first_run import HEAD, TAIL, decompress_log, jcs
from trailseal import synthetic
from trailseal.client import Client, SendResult

CONNECTIONS = 4  # 0, 1: unix socket; 2, 3: TCP
CLIENT_DEADLINE_SECS = 300.0


@dataclass
class Load:
    """The state shared between the client threads and the killer (each list slot is written
    by one client thread only)."""

    per_connection: int
    seed: int
    window_bytes: int
    pulled: list[int] = field(default_factory=lambda: [0] * CONNECTIONS)
    sent: list[list[bytes]] = field(default_factory=lambda: [[] for _ in range(CONNECTIONS)])
    clients: list[Client | None] = field(default_factory=lambda: [None] * CONNECTIONS)
    results: list[SendResult | BaseException | None] = field(
        default_factory=lambda: [None] * CONNECTIONS
    )
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def total(self) -> int:
        return self.per_connection * CONNECTIONS

    def progress(self) -> int:
        return sum(self.pulled)

    def done(self) -> bool:
        return all(r is not None for r in self.results)

    def unacked_bytes(self) -> int:
        """Bytes the clients have sent (or buffered) that are not acknowledged yet."""
        return sum(c._tracker.inflight_bytes for c in self.clients if c is not None)

    def produce(self, k: int) -> Iterator[bytes]:
        for i, line in enumerate(synthetic.iter_events(self.per_connection, seed=self.seed + k)):
            if self.stop.is_set():
                raise RuntimeError("the test gave up")
            self.sent[k].append(line)
            self.pulled[k] = i + 1
            yield line

    def run_client(self, k: int, d: DaemonProcess) -> None:
        try:
            options: dict[str, Any] = {
                "reconnect_secs": 60.0,
                "ack_timeout_secs": 120.0,
                "window_bytes": self.window_bytes,
            }
            if k < 2:
                client = Client.connect(socket=d.unix_socket, **options)
            else:
                client = Client.connect(tcp=d.tcp, **options)
            self.clients[k] = client
            with client:
                self.results[k] = client.send(self.produce(k), finish=True)
        except BaseException as e:
            self.results[k] = e


@dataclass
class Kill:
    trigger: str
    progress: int
    unacked_bytes: int


Trigger = Callable[[DaemonProcess], Callable[[], bool]]


def at_random(d: DaemonProcess) -> Callable[[], bool]:
    return lambda: True


def after_seal(d: DaemonProcess) -> Callable[[], bool]:
    """True once a new sealed log file shows up in the spool (about to be delivered)."""
    sealed = d.data_dir / "spool" / "default" / "sealed"
    before = set(os.listdir(sealed)) if sealed.is_dir() else set()
    return lambda: sealed.is_dir() and bool(set(os.listdir(sealed)) - before)


def _stat_changed(path: Path) -> Callable[[], bool]:
    def key() -> tuple[int, int] | None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        return st.st_size, st.st_mtime_ns

    before = key()
    return lambda: key() != before


def after_delivery(d: DaemonProcess) -> Callable[[], bool]:
    """True once delivered.jsonl changed: a log file was just put in the destination."""
    return _stat_changed(d.data_dir / "state" / "default" / "delivered.jsonl")


def after_digest(d: DaemonProcess) -> Callable[[], bool]:
    """True once a digest is being delivered or was just recorded."""
    state = d.data_dir / "state" / "default"
    recorded = _stat_changed(state / "digests.json")
    return lambda: (state / "pending-digest.json").exists() or recorded()


def run_with_kills(
    daemon: Callable[..., DaemonProcess],
    *,
    per_connection: int,
    kills: int,
    seed: int,
    trail: dict[str, Any] | None = None,
    triggers: list[Trigger] | None = None,
    window_bytes: int = 8 * 1024 * 1024,
    kill_during_start: bool = False,
) -> tuple[DaemonProcess, Load, list[Kill]]:
    """Push the load, SIGKILL and restart the daemon ``kills`` times at seeded random moments
    (kill i fires in the i-th of ``kills`` equal slices of the load, after a random delay,
    once ``triggers[i % len]`` says so or 3 s passed), wait for every final ack, SIGTERM.
    With ``kill_during_start`` every second restart is killed once more right after it
    announces itself (while it delivers what recovery sealed)."""
    rng = random.Random(seed)
    trail = dict(trail or {})
    triggers = triggers or [at_random]
    first = daemon(trail=trail)
    assert first.unix_socket is not None and first.tcp is not None
    restart_ingest = {"unix_socket": first.unix_socket, "tcp_listen": f"127.0.0.1:{first.tcp[1]}"}
    load = Load(per_connection, seed=seed * 100, window_bytes=window_bytes)
    threads = [
        threading.Thread(target=load.run_client, args=(k, first), daemon=True)
        for k in range(CONNECTIONS)
    ]
    for t in threads:
        t.start()
    d = first
    done: list[Kill] = []
    try:
        min_step = load.total // (kills * 4)
        since_restart = 0
        for i in range(kills):
            lo, hi = 0.05 + 0.85 * i / kills, 0.05 + 0.85 * (i + 1) / kills
            target = max(int(rng.uniform(lo, hi) * load.total), since_restart + min_step)
            wait_until(
                lambda t=target: load.progress() >= t or load.done(),  # type: ignore[misc]
                timeout=CLIENT_DEADLINE_SECS,
                what=f"the clients to pull {target} events before kill {i + 1}",
            )
            if load.done():
                break
            time.sleep(rng.uniform(0.0, 0.25))
            trigger = triggers[i % len(triggers)]
            fired = trigger(d)
            deadline = time.monotonic() + 3.0
            while not fired() and time.monotonic() < deadline and not load.done():
                time.sleep(0.001)
            time.sleep(rng.uniform(0.0, 0.01))
            name = trigger.__name__ if fired() else f"{trigger.__name__} (not seen in 3 s)"
            done.append(Kill(name, load.progress(), load.unacked_bytes()))
            d.kill()
            if kill_during_start and i % 2 == 1:
                # once more while it starts: recovering, sealing and delivering what it found
                d = daemon(data_dir=first.data_dir, ingest=restart_ingest, trail=trail, wait=False)
                wait_until(
                    lambda d=d: "data dir:" in d.stderr() or d.proc.poll() is not None,  # type: ignore[misc]
                    timeout=60,
                    what="the restarted daemon to announce itself",
                )
                time.sleep(rng.uniform(0.0, 0.05))
                assert d.proc.poll() is None, f"the restarted daemon exited:\n{d.stderr()}"
                done.append(Kill("during_start", load.progress(), load.unacked_bytes()))
                d.kill()
            d = daemon(data_dir=first.data_dir, ingest=restart_ingest, trail=trail)
            since_restart = load.progress()
        for t in threads:
            t.join(timeout=CLIENT_DEADLINE_SECS)
        assert not any(t.is_alive() for t in threads), "a client did not finish"
    finally:
        load.stop.set()
    for k, result in enumerate(load.results):
        assert isinstance(result, SendResult), f"client {k}: {result!r}\n{d.stderr()}"
        assert result.ok and result.accepted == per_connection == result.sent, (k, result)
        assert result.reconnects >= 1, f"client {k} never saw a kill"
    assert d.stop() == 0, d.stderr()
    return first, load, done


def check_chains(bucket: Path) -> None:
    """Crashes must not break a chain: per stream exactly one starting digest (the first), and
    the log files listed in the digests, in order, chain end to start from 32 zero bytes."""
    streams: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for path in bucket.rglob("*CloudTrail-Digest*.json.gz"):
        doc = json.loads(gzip.decompress(path.read_bytes()))
        region = path.relative_to(bucket).parts[-5]
        streams.setdefault((doc["awsAccountId"], region), []).append(doc)
    assert streams
    for stream, docs in streams.items():
        docs.sort(key=lambda doc: doc["digestEndTime"])
        starting = [doc["digestS3Object"] for doc in docs if doc["previousDigestSignature"] is None]
        assert starting == [docs[0]["digestS3Object"]], f"{stream}: digest chain restarted"
        chain = "00" * 32
        for doc in docs:
            for entry in doc["logFiles"]:
                assert entry["chainStart"] == chain, f"{stream}: event chain broken before {entry}"
                chain = entry["chainEnd"]


def check_destination(first: DaemonProcess, load: Load) -> None:
    """Every event sent exactly once and nothing else; §4 layout; validate passes."""
    sent: dict[str, tuple[int, bytes]] = {}
    for k, lines in enumerate(load.sent):
        assert len(lines) == load.per_connection
        for line in lines:
            m = re.search(rb'"eventID":"([^"]+)"', line)
            assert m is not None, line[:200]
            sent[m[1].decode()] = (k, line)
    assert len(sent) == load.total, "the synthetic eventIDs are not unique"

    files = first.log_files()
    assert files, "no log file delivered"
    seen: set[str] = set()
    stored_count = 0
    rng = random.Random(7)
    for path in files:
        key = path.relative_to(first.bucket).as_posix()
        content = decompress_log(path)
        assert content.startswith(HEAD) and content.endswith(TAIL), key
        body = content[len(HEAD) : -len(TAIL)]
        assert body.endswith(b"\n"), f"{key}: empty log file delivered"
        lines = body[:-1].split(b"\n")
        for j, line in enumerate(lines):
            last = j == len(lines) - 1
            assert line.endswith(b"}" if last else b"},"), f"{key} event {j + 1}: {line[-20:]!r}"
            text = line if last else line[:-1]
            record = orjson.loads(text)
            if j == 0 or last or rng.random() < 0.02:  # canonical form, on a sample
                assert jcs(record).encode() == text, f"{key} event {j + 1} is not canonical"
            event_id = record["eventID"]
            assert event_id in sent, f"{key} event {j + 1}: {event_id} was never sent"
            assert event_id not in seen, f"{key} event {j + 1}: {event_id} stored twice"
            seen.add(event_id)
            k, raw = sent[event_id]
            original = orjson.loads(raw)
            assert {name: record[name] for name in original} == original, (key, j + 1)
            peer = record["receipt"]["peer"]
            assert peer.startswith("unix:uid=" if k < 2 else "tcp:127.0.0.1:"), (k, peer)
        stored_count += len(lines)
    assert stored_count == len(seen) == load.total
    assert seen == set(sent)
    leftovers = sorted((first.data_dir / "spool" / "default" / "sealed").glob("*.log"))
    # delivered files may still wait in the spool for the event history to index them
    awaiting_path = first.data_dir / "state" / "default" / "awaiting-history.txt"
    awaiting = set(awaiting_path.read_text().split()) if awaiting_path.exists() else set()
    undelivered = [p for p in leftovers if str(int(p.name.split("-")[0])) not in awaiting]
    assert not undelivered, f"sealed but never delivered: {undelivered}"

    check_chains(first.bucket)

    exported = subprocess.run(
        [sys.executable, "-m", "trailseal.cli", "keys", "export", "--config", first.config_path],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert exported.returncode == 0, exported.stderr.decode()
    public_key = first.config_path.parent / "exported-public.pem"
    public_key.write_bytes(exported.stdout)
    digests = list(first.bucket.rglob("*CloudTrail-Digest*.json.gz"))
    assert digests
    validated = subprocess.run(
        [
            *(sys.executable, "-m", "trailseal.cli", "validate", "--no-progress"),
            *("--destination", f"file://{first.bucket}", "--public-key", public_key),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    report = validated.stdout + validated.stderr
    assert validated.returncode == 0, report[-5000:]
    assert f"{len(digests)}/{len(digests)} digest files valid" in report, report[-5000:]
    assert f"{len(files)}/{len(files)} log files valid" in report, report[-5000:]


def test_kill_9_under_load_loses_and_duplicates_nothing(daemon: Any) -> None:
    """200,000 events over 4 connections, 5 kills at random moments of the appends."""
    first, load, kills = run_with_kills(daemon, per_connection=50_000, kills=5, seed=11)
    assert len(kills) == 5, kills
    # kills landed mid-batch: lines were in flight (sent, not yet acknowledged)
    assert sum(1 for k in kills if k.unacked_bytes > 0) >= 3, kills
    check_destination(first, load)


def test_kill_9_while_sealing_delivering_and_digesting(daemon: Any) -> None:
    """Small log files sealed every 256 KiB or second and digests every 2 s; kills fire just
    after a seal, a delivery or a digest step, and at random."""
    first, load, kills = run_with_kills(
        daemon,
        per_connection=25_000,  # enough that the load outlasts every kill and restart
        kills=8,
        seed=23,
        trail={"seal_after_bytes": 256 * 1024, "seal_after_secs": 1, "digest_interval_secs": 2},
        triggers=[after_seal, after_delivery, after_digest, at_random],
        window_bytes=1024 * 1024,  # the pulled count stays close to the acknowledged one
        kill_during_start=True,
    )
    assert len(kills) == 12, kills
    assert sum(1 for k in kills if "not seen" not in k.trigger) >= 8, kills
    check_destination(first, load)
    assert len(first.log_files()) > 20


def test_kill_9_during_graceful_shutdown(daemon: Any) -> None:
    """SIGTERM while the clients push, SIGKILL while the daemon settles, seals and delivers:
    the next start recovers, the clients resend what was not acknowledged, and nothing is lost
    or doubled."""
    trail = {"seal_after_bytes": 1024 * 1024, "digest_interval_secs": 2}
    first = daemon(trail=trail)
    assert first.unix_socket is not None and first.tcp is not None
    load = Load(6_000, seed=3100, window_bytes=1024 * 1024)
    threads = [
        threading.Thread(target=load.run_client, args=(k, first), daemon=True)
        for k in range(CONNECTIONS)
    ]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: load.progress() >= load.total // 2, timeout=CLIENT_DEADLINE_SECS)
        first.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "shutting down" in first.stderr(), what="the shutdown to begin")
        assert first.proc.poll() is None, "the shutdown finished before the kill"
        first.kill()
        d = daemon(
            data_dir=first.data_dir,
            ingest={"unix_socket": first.unix_socket, "tcp_listen": f"127.0.0.1:{first.tcp[1]}"},
            trail=trail,
        )
        for t in threads:
            t.join(timeout=CLIENT_DEADLINE_SECS)
        assert not any(t.is_alive() for t in threads), "a client did not finish"
    finally:
        load.stop.set()
    for k, result in enumerate(load.results):
        assert isinstance(result, SendResult), f"client {k}: {result!r}\n{d.stderr()}"
        assert result.ok and result.accepted == load.per_connection, (k, result)
    assert d.stop() == 0, d.stderr()
    check_destination(first, load)
