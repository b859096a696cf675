"""The whole issue-7 suite as pytest-benchmark tests: one test per scenario, records in extra_info.

Run everything and write the tables with `python -m benchmarks.run` (see README, "Benchmarks");
this file alone: `python -m pytest benchmarks/bench_suite.py --benchmark-json=out.json`.
Each test runs the engine and its baselines once, in the same process, one after the other; its
`extra_info["records"]` holds one record per variant (msg/s, seconds, peak RSS, latency, load).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from benchmarks import scenario_edges, scenario_jetstream, scenario_memory

pytestmark = pytest.mark.timeout(1800)


def _run(benchmark: Any, fn: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    benchmark.pedantic(lambda: records.extend(fn()), rounds=1, iterations=1)
    benchmark.extra_info["records"] = records
    for rec in records:
        print(rec)
    assert records and all(r["msg_per_s"] > 0 for r in records)
    return records


def test_1a_memory(benchmark: Any) -> None:
    _run(benchmark, lambda: scenario_memory.run_scenario(compress=False))


def test_1b_memory_batch_compress(benchmark: Any) -> None:
    _run(benchmark, lambda: scenario_memory.run_scenario(compress=True))


@pytest.mark.services
def test_2_jetstream_pg_backlog(benchmark: Any) -> None:
    _run(benchmark, lambda: scenario_jetstream.run_throughput("backlog"))


@pytest.mark.services
def test_2_jetstream_pg_live(benchmark: Any) -> None:
    _run(benchmark, lambda: scenario_jetstream.run_throughput("live"))


@pytest.mark.services
def test_3_latency(benchmark: Any) -> None:
    records = _run(benchmark, scenario_jetstream.run_latency)
    assert all("p99_ms" in r for r in records)


@pytest.mark.services
def test_4a_redis(benchmark: Any) -> None:
    _run(benchmark, scenario_edges.run_redis)


@pytest.mark.services
def test_4b_http_jetstream(benchmark: Any) -> None:
    _run(benchmark, scenario_edges.run_http)
