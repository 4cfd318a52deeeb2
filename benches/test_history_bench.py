"""The event history at scale, through the Rust ``History`` directly (no daemon): index
``HISTORY_BENCH_EVENTS`` (default 1,000,000) seeded synthetic events from a real spool, then
time LookupEvents-shaped queries per attribute key (p50/p99 over a mix of common and rare
values, with and without a time range, first pages and second pages through the cursor).

The core hands the history what it writes (``Core.feed_history``), as in the daemon;
``HISTORY_BENCH_FEED=0`` makes the history read everything back from the spool files instead
(as after a restart).

Run: ``.venv/bin/pytest benches/test_history_bench.py -q -s`` (prints one JSON line; figures go
to BENCHMARKS.md). Issue 4's target: p99 < 100 ms over 1,000,000 indexed events.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from trailseal import _core, synthetic
from trailseal.api.lookup import ATTRIBUTE_KEYS

EVENTS = int(os.environ.get("HISTORY_BENCH_EVENTS", "1000000"))
FEED = os.environ.get("HISTORY_BENCH_FEED", "1") != "0"
BATCH = 10_000
COMMIT = 1_000
QUERIES_PER_KEY = 200


@pytest.fixture(scope="module")
def indexed() -> Iterator[tuple[_core.History, dict[str, Any], list[dict[str, Any]]]]:
    root = Path(tempfile.mkdtemp(prefix="history-bench-"))
    try:
        spool = root / "spool"
        core = _core.Core(str(spool), ["main"], account_id="111122223333", region="us-east-1")
        history = _core.History(str(root / "history.db"))
        if FEED:
            core.feed_history(history)
        ingest_s = index_s = 0.0
        samples: list[dict[str, Any]] = []
        rng = random.Random(5)
        seq_key = 0
        for start in range(0, EVENTS, BATCH):
            lines = synthetic.events(min(BATCH, EVENTS - start), seed=1000 + start)
            for line in rng.sample(lines, 3):
                samples.append(json.loads(line))
            t = time.perf_counter()
            # group commits of the daemon's size under load: spool frames of ~1 MiB, which the
            # history keeps as they are
            for i in range(0, len(lines), COMMIT):
                data = b"\n".join(lines[i : i + COMMIT]) + b"\n"
                core.process(data, [(len(data), "bench", None, 0)])
                core.sync()
            ingest_s += time.perf_counter() - t
            t = time.perf_counter()
            while history.index_spool(str(spool), 1_000_000).more:
                pass
            index_s += time.perf_counter() - t
            if (start // BATCH) % 20 == 19:  # seal now and then, as the daemon does
                seq_key += 1
                sealed = core.seal("main", "111122223333", "us-east-1", f"k{seq_key}")
                history.index_spool(str(spool), 1_000_000)
                if sealed is not None:
                    assert history.covered("main", sealed.seq)
                    core.remove_sealed("main", sealed.seq)
        stats = {
            "events": EVENTS,
            "fed": FEED,
            "indexed": history.count(),
            "core_process_sync_s": round(ingest_s, 2),
            "index_s": round(index_s, 2),
            "index_events_per_s": round(EVENTS / index_s),
            "index_us_per_event": round(index_s / EVENTS * 1e6, 2),
            "db_mb": round(sum(f.stat().st_size for f in root.glob("history.db*")) / 1e6, 1),
        }
        yield history, stats, samples
    finally:
        shutil.rmtree(root, ignore_errors=True)


def values_for(key: str, ev: dict[str, Any]) -> list[str]:
    who = ev.get("userIdentity", {})
    match key:
        case "EventId":
            return [ev["eventID"]]
        case "EventName":
            return [ev["eventName"]]
        case "ReadOnly":
            return ["true" if ev["readOnly"] else "false"]
        case "Username":
            return [who["arn"].rsplit("/", 1)[1]]
        case "ResourceType":
            return [r["type"] for r in ev["resources"]]
        case "ResourceName":
            return [r["ARN"] for r in ev["resources"]]
        case "EventSource":
            return [ev["eventSource"]]
        case "AccessKeyId":
            return [who["accessKeyId"]]
    raise AssertionError(key)


KEYS = [None, *ATTRIBUTE_KEYS]


def test_lookup_latency(
    indexed: tuple[_core.History, dict[str, Any], list[dict[str, Any]]],
) -> None:
    history, stats, samples = indexed
    assert stats["indexed"] == EVENTS
    rng = random.Random(9)
    t0 = 1767225600 * 1000
    span = (EVENTS // 50) * 1000  # synthetic events: 50 per second
    results: dict[str, Any] = {}
    for key in KEYS:
        times = []
        found = 0
        for q in range(QUERIES_PER_KEY):
            kwargs: dict[str, Any] = {"limit": 50}
            if key is not None:
                ev = rng.choice(samples)
                kwargs["attribute_key"] = key
                kwargs["attribute_value"] = rng.choice(values_for(key, ev))
            if q % 2:  # a random time range
                a = t0 + rng.randrange(span)
                kwargs["start_ms"] = a
                kwargs["end_ms"] = a + rng.randrange(1, span // 4 + 2)
            t = time.perf_counter()
            events, cursor = history.lookup(**kwargs)
            if cursor is not None and q % 4 == 0:  # and its second page
                events, cursor = history.lookup(**kwargs, after=cursor)
            times.append(time.perf_counter() - t)
            found += len(events)
        times.sort()
        results[key or "(none)"] = {
            "p50_ms": round(times[len(times) // 2] * 1000, 2),
            "p99_ms": round(times[int(len(times) * 0.99)] * 1000, 2),
            "max_ms": round(times[-1] * 1000, 2),
            "found": found,
        }
        assert found > 0
    print(orjson.dumps({**stats, "lookup": results}).decode())
