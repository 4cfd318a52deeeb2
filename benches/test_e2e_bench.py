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
    assert correct
