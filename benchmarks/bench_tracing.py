"""What tracing costs: a generate -> map -> filter -> drop run (warm, in-process) with tracing off,
off again (the noise between two identical settings), at 1 % sampling and at 100 %, alternating
rounds so the machine's load hits each alike; and the one check the node loops make per batch
when tracing is off.

Spans go through the SDK's batch processor to an exporter that drops them, so what is measured is
the engine's and the SDK's CPU, not a collector's network (the export runs on the SDK's thread;
`time.process_time` counts every thread of the process).

    .venv/bin/python benchmarks/bench_tracing.py     # median CPU seconds per round, 8 rounds each
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
import timeit
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from engine.compile.validate import load_graph
from engine.observe.tracing import Tracing
from engine.runtime.scheduler import Runner

N = int(os.environ.get("BENCH_N", "200000"))
BATCH = int(os.environ.get("BENCH_BATCH", "500"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "8"))
GRAPH = f"""
version: 1
name: bench_tracing
nodes:
  gen: {{type: generate, config: {{count: {N}, batch: {BATCH}, template: '{{"i": msg.i, "v": msg.i % 100}}'}}}}
  price: {{type: map, inputs: [gen], config: {{expr: '{{"i": msg.i, "total": double(msg.v) * 1.2}}'}}}}
  keep: {{type: filter, inputs: [price], config: {{expr: 'msg.total > 10.0'}}}}
  out: {{type: drop, inputs: [keep]}}
"""


class Discard(SpanExporter):
    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


def one_run(path: str, ratio: float | None) -> tuple[float, int]:
    exporter = Discard()
    tracer = Tracing.configure("bench_tracing", ratio, exporter=exporter) if ratio is not None else None
    runner = Runner(load_graph(path), tracer=tracer)
    t0 = time.process_time()
    report = asyncio.run(runner.run())
    if tracer is not None:
        tracer.shutdown()
    elapsed = time.process_time() - t0
    assert report.balanced
    return elapsed, exporter.spans


def main() -> None:
    settings: list[tuple[str, float | None]] = [("off", None), ("off again", None), ("1 %", 0.01), ("100 %", 1.0)]
    with tempfile.TemporaryDirectory() as d:
        path = str(Path(d) / "g.yaml")
        Path(path).write_text(GRAPH)
        one_run(path, None)
        times: dict[str, list[float]] = {name: [] for name, _ in settings}
        spans: dict[str, int] = dict.fromkeys(times, 0)
        for _ in range(ROUNDS):
            for name, ratio in settings:
                secs, n = one_run(path, ratio)
                times[name].append(secs)
                spans[name] += n
    off = statistics.median(times["off"])
    print(f"{N:,} messages, batches of {BATCH}, {ROUNDS} alternating rounds (median CPU s per round):")
    for name, _ in settings:
        med = statistics.median(times[name])
        print(f"  {name:10} {med:.3f} s  ratio to off {med / off:.3f}  spans per round {spans[name] / ROUNDS:.0f}")
    check = timeit.timeit("if s.tracer is None: pass", globals={"s": type("S", (), {"tracer": None})()},
                          number=1_000_000) * 1000
    print(f"the loops' check when tracing is off: {check:.1f} ns per batch ({check / BATCH:.3f} ns per message)")
    print(f"load: {os.getloadavg()}")


if __name__ == "__main__":
    main()
