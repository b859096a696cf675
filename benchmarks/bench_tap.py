"""What `streamdag tap` costs: a generate -> map -> filter -> drop run (warm, in-process) with nobody
tapping, beside the same run with a tap on `price` (rate 10/s, as `streamdag tap` defaults to),
alternating rounds so the machine's load hits both alike; and the one check the router makes per
batch when nobody taps.

    .venv/bin/python benchmarks/bench_tap.py      # median CPU seconds per round, 8 rounds each, and the check
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
import timeit
from pathlib import Path

from engine.compile.validate import load_graph
from engine.observe.tap import Tap
from engine.runtime.scheduler import Runner

N = int(os.environ.get("BENCH_N", "200000"))
GRAPH = f"""
version: 1
name: bench_tap
nodes:
  gen: {{type: generate, config: {{count: {N}, batch: 500, template: '{{"i": msg.i, "v": msg.i % 100}}'}}}}
  price: {{type: map, inputs: [gen], config: {{expr: '{{"i": msg.i, "total": double(msg.v) * 1.2}}'}}}}
  keep: {{type: filter, inputs: [price], config: {{expr: 'msg.total > 10.0'}}}}
  out: {{type: drop, inputs: [keep]}}
"""


def one_run(path: str, tapped: bool) -> float:
    runner = Runner(load_graph(path))
    if tapped:
        runner.view.add_tap([("price", "out")], Tap(rate=10))
    t0 = time.process_time()
    report = asyncio.run(runner.run())
    assert report.balanced
    return time.process_time() - t0


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        path = str(Path(d) / "g.yaml")
        Path(path).write_text(GRAPH)
        one_run(path, False)
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(8):
            for tapped in (False, True):
                times[tapped].append(one_run(path, tapped))
    off, on = statistics.median(times[False]), statistics.median(times[True])
    print(f"{N:,} messages, batches of 500: nobody tapping {off:.3f} s CPU, one tap at 10/s {on:.3f} s CPU "
          f"(ratio {on / off:.3f})")
    taps: dict[tuple[str, str], list[object]] = {}
    check = timeit.timeit("if taps: pass", globals={"taps": taps}, number=1_000_000) * 1000
    print(f"the router's check when nobody taps: {check:.1f} ns per batch ({check / 500:.3f} ns per message at 500)")
    print(f"load: {os.getloadavg()}")


if __name__ == "__main__":
    main()
