"""The end-to-end load benchmark (loadgen.py) with a small N, so the bench suite runs it too:
the real daemon as a subprocess, real unix/TCP sockets, acks after fsync, delivery checked.

The figures that count come from ``python benches/loadgen.py`` with a large N (BENCHMARKS.md);
this wrapper keeps the load path working and records a small run's figures.
"""

from __future__ import annotations

import importlib.util
from types import ModuleType
from typing import Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

import loadgen

EVENTS = 5000


@pytest.fixture(scope="module")
def daemon_ready(core: ModuleType) -> None:
    if importlib.util.find_spec("trailseal.daemon") is None:
        pytest.skip("trailseal.daemon is not there yet")


@pytest.mark.parametrize(("connections", "tcp"), [(4, False), (2, True)])
def test_e2e_load(
    benchmark: BenchmarkFixture,
    daemon_ready: None,
    lines: list[bytes],
    connections: int,
    tcp: bool,
) -> None:
    summaries: list[dict[str, Any]] = []

    def once() -> None:
        summaries.append(
            loadgen.run(
                events=EVENTS,
                connections=connections,
                tcp=tcp,
                lines=lines[:EVENTS],
                baselines=not summaries,  # the baselines once, with the first round
                timeout=120,
            )
        )

    benchmark.pedantic(once, rounds=2, iterations=1)  # type: ignore[no-untyped-call]
    first = summaries[0]
    correct = all(s["ok"] for s in summaries)
    benchmark.extra_info.update(
        {key: value for key, value in first.items() if key != "ok"},
        bytes=sum(len(line) + 1 for line in lines[:EVENTS]),
        correct=correct,
    )
    for summary in summaries:
        assert summary["errors"] == 0, summary
        assert summary["delivered_events"] == EVENTS, summary
        assert summary["daemon_exit"] == 0, summary
        assert summary["compression_ratio"] > 1, summary
        # defaults: the history (so the API and /metrics) is on; one fsync per batch with chunks
        assert 0 < summary["fsyncs_at_last_ack"] <= summary["batches_at_last_ack"], summary
    assert correct


def test_e2e_three_trails_s3(
    benchmark: BenchmarkFixture, daemon_ready: None, lines: list[bytes]
) -> None:
    """Issue 3's scenario with a small N: one ``file://`` trail, then three trails delivering
    to a local SeaweedFS (zstd, gzip + SSE + Object Lock, ``file://``) on the same events; every
    trail must hold exactly the events its selectors take."""
    if importlib.util.find_spec("boto3") is None:
        pytest.skip("boto3 is not installed")
    summaries: list[dict[str, Any]] = []

    def once() -> None:
        summaries.append(
            loadgen.run(
                events=EVENTS,
                connections=2,
                lines=lines[:EVENTS],
                baselines=False,
                timeout=120,
                trails="three-s3",
            )
        )

    benchmark.pedantic(once, rounds=1, iterations=1)  # type: ignore[no-untyped-call]
    summary = summaries[0]
    benchmark.extra_info.update(
        {key: value for key, value in summary.items() if key != "ok"},
        bytes=sum(len(line) + 1 for line in lines[:EVENTS]),
        correct=summary["ok"],
    )
    for trail in ("one", "management", "writes", "data"):
        assert summary[f"{trail}_delivered_events"] == summary[f"{trail}_expected_events"], trail
    assert summary["writes_expected_events"] > 0 and summary["data_expected_events"] > 0
    assert summary["one_errors"] == summary["three_errors"] == 0, summary
    assert summary["one_daemon_exit"] == summary["three_daemon_exit"] == 0, summary
    assert summary["ok"], summary
