"""Items per second through the `window` operator: keyed tumbling and session windows, 10,000 keys.

Run: `python -m pytest benchmarks/bench_window.py --benchmark-only` (not part of the default tests).
Each round feeds 100,000 items in batches of 500 (event time, 1,000 items per second of event time,
light disorder) and flushes; `items_per_s` (wall clock) and `items_per_cpu_s` (this process's CPU
time, steadier when other work shares the cores) are in the extra info. Figures are noisy here.
"""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from engine.message import Msg
from engine.runtime.context import NodeContext, Resources
from engine.runtime.outputs import Outputs
from engine.runtime.stats import NodeStats
from operators.window import Window, WindowConfig

KEYS = 10_000
ITEMS = 100_000
BATCH = 500
AGGREGATES = {
    "n": {"op": "count"},
    "total": {"op": "sum", "expr": "msg.amount"},
    "hi": {"op": "max", "expr": "msg.amount"},
}


def make_batches(seed: int = 7) -> list[list[dict[str, Any]]]:
    rng = random.Random(seed)
    bodies = [
        {"user": f"u{rng.randrange(KEYS)}", "ts": i / 1000 + rng.random() * 0.5, "amount": rng.randrange(100)}
        for i in range(ITEMS)
    ]
    return [bodies[i : i + BATCH] for i in range(0, ITEMS, BATCH)]


def run_once(config: dict[str, Any], batches: list[list[dict[str, Any]]]) -> int:
    ctx = NodeContext("win", {}, {}, Resources(), clock=lambda: 0.0)
    op = Window("win", WindowConfig(**config), ctx)
    out = Outputs("win", Window.ports, NodeStats("win", "operator", "window"))
    emitted = 0
    for batch in batches:
        op.process([Msg(b) for b in batch], out)
        emitted += len(out.take()["out"])
    op.flush(out)
    emitted += len(out.take()["out"])
    return emitted


CONFIGS = {
    "tumbling": {
        "kind": "tumbling",
        "size": 10,
        "key": "msg.user",
        "time": "event",
        "timestamp": "msg.ts",
        "max_out_of_orderness": 1,
        "aggregates": AGGREGATES,
    },
    "session": {
        "kind": "session",
        "gap": 5,
        "key": "msg.user",
        "time": "event",
        "timestamp": "msg.ts",
        "max_out_of_orderness": 1,
        "aggregates": AGGREGATES,
    },
    "tumbling_count_only": {
        "kind": "tumbling",
        "size": 10,
        "key": "msg.user",
        "time": "event",
        "timestamp": "msg.ts",
        "max_out_of_orderness": 1,
        "aggregates": {"n": {"op": "count"}},
    },
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_window_throughput(benchmark: Any, name: str) -> None:
    batches = make_batches()
    cpu: list[float] = []

    def timed() -> int:
        t0 = time.process_time()
        emitted = run_once(CONFIGS[name], batches)
        cpu.append(time.process_time() - t0)
        return emitted

    emitted = benchmark.pedantic(timed, rounds=3, iterations=1)
    assert emitted > KEYS  # every key got at least one window
    benchmark.extra_info["items_per_s"] = round(ITEMS / benchmark.stats.stats.mean)
    # CPU time of this process: less disturbed than wall time when other work shares the cores
    benchmark.extra_info["items_per_cpu_s"] = round(ITEMS / min(cpu))
    benchmark.extra_info["windows"] = emitted
