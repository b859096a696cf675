"""What observing costs: the scheduler's per-batch hooks (batch histograms, end-to-end latency) on
a generate -> map -> drop pipeline, beside the same run with the hooks switched off, and the
time of one `/metrics` scrape.

    .venv/bin/python -m pytest benchmarks/bench_observe.py --benchmark-only --benchmark-columns=mean,median,ops

The machine is shared: wall-clock figures are noisy while other work runs. CPU seconds are steadier:

    .venv/bin/python benchmarks/bench_observe.py      # median CPU seconds, hooks off and on, 6 rounds each
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from engine.compile.validate import load_graph
from engine.observe.histogram import Histogram
from engine.observe.metrics import make_registry, render_metrics
from engine.runtime.scheduler import Runner
from engine.runtime.stats import NodeStats

N = int(os.environ.get("BENCH_N", "200000"))

GRAPH = f"""
version: 1
name: bench_observe
nodes:
  gen: {{type: generate, config: {{count: {N}, batch: 500}}}}
  price: {{type: map, inputs: [gen], config: {{expr: '{{"i": msg.i, "t": msg.ts}}'}}}}
  out: {{type: drop, inputs: [price]}}
  dead: {{type: drop, inputs: [gen.errors, price.errors]}}
"""


@pytest.fixture(scope="module")
def graph_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("obs") / "g.yaml"
    path.write_text(GRAPH)
    return path


def _run(path: Path) -> Runner:
    runner = Runner(load_graph(str(path)))
    report = asyncio.run(runner.run())
    assert report.balanced and report.totals()["delivered"] == N
    return runner


@pytest.mark.parametrize("hooks", ["off", "on"])
def test_pipeline(benchmark, graph_path: Path, hooks: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if hooks == "off":

        def plain(self: NodeStats, n: int, seconds: float) -> None:
            self.busy_seconds += seconds

        monkeypatch.setattr(NodeStats, "observe_batch", plain)
        monkeypatch.setattr(Histogram, "observe_ages", lambda self, now, msgs: None)
    benchmark.pedantic(_run, args=(graph_path,), rounds=5, iterations=1)


def test_scrape(benchmark, graph_path: Path) -> None:
    runner = _run(graph_path)
    registry = make_registry(runner)
    text = benchmark(render_metrics, registry)
    assert b"streamdag_end_to_end_latency_seconds_count" in text


def _cpu_seconds(path: Path, hooks: bool) -> float:
    import time

    saved = (NodeStats.observe_batch, Histogram.observe_ages)
    if not hooks:
        NodeStats.observe_batch = lambda self, n, seconds: None  # type: ignore[method-assign,assignment]
        Histogram.observe_ages = lambda self, now, msgs: None  # type: ignore[method-assign,assignment]
    try:
        t0 = time.process_time()
        _run(path)
        return time.process_time() - t0
    finally:
        NodeStats.observe_batch, Histogram.observe_ages = saved  # type: ignore[method-assign]


if __name__ == "__main__":
    import statistics
    import tempfile

    g = Path(tempfile.mkdtemp()) / "g.yaml"
    g.write_text(GRAPH)
    rounds: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(6):
        for hooks in (False, True):
            rounds[hooks].append(_cpu_seconds(g, hooks))
    off, on = statistics.median(rounds[False]), statistics.median(rounds[True])
    print(f"{N} messages, median CPU seconds: hooks off {off:.3f}, on {on:.3f} ({(on / off - 1) * 100:+.1f} %)")
