"""In-memory pipeline throughput: the engine beside plain Python and Bytewax 0.21, in one run.

    .venv/bin/pip install bytewax==0.21.1   # optional: the Bytewax row is skipped without it
    BENCH_N=1000000 .venv/bin/python -m pytest benchmarks/bench_pipeline.py -s --benchmark-columns=min,median

Scenario (issue 10): NDJSON file -> parse -> filter -> map -> NDJSON file, N messages, one process,
one core. The rows:

* `streamdag`: the engine, `streamdag run` on a graph with CEL filter and map, acks and metrics on.
* `plain-python`: the loop a user would write by hand, with Python expressions.
* `plain-python-cel`: the same loop calling the same compiled CEL closures as the engine.
* `bytewax-0.21`: the same dataflow in Bytewax (Python lambdas, one worker, `run_main`).

`-s` prints each row's best rate and, last, the engine's time as a multiple of each other row's.
Each row is timed over 5 rounds; compare the `min` column (the machine is shared and noisy).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.compile.validate import load_graph
from engine.expr import compile_expr
from engine.runtime.scheduler import Runner

N = int(os.environ.get("BENCH_N", "200000"))
FILTER = 'msg.amount > 10.0 && "a" in msg.tags'  # the expressions
MAP = '{"id": msg.id, "user": msg.user, "total": msg.amount * 1.2}'

GRAPH = f"""
version: 1
name: bench
defaults: {{dead_letter: dead}}
nodes:
  read: {{type: file_source, config: {{path: in.ndjson}}}}
  big: {{type: filter, inputs: [read], config: {{expr: {json.dumps(FILTER)}}}}}
  price: {{type: map, inputs: [big], config: {{expr: {json.dumps(MAP)}}}}}
  out: {{type: file_sink, inputs: [price], config: {{path: out.ndjson}}}}
  dead: {{type: drop, inputs: [read.errors, big.errors, price.errors, out.errors]}}
"""

BEST: dict[str, float] = {}  # variant -> best seconds, for the summary


def expected_count() -> int:
    return sum(1 for i in range(N) if i % 250 > 10 and i % 3)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pipeline")
    with open(d / "in.ndjson", "wb") as fh:
        for i in range(N):
            tags = ["a", "b"] if i % 3 else ["c"]
            fh.write(orjson.dumps({"id": i, "user": f"u{i % 7}", "amount": float(i % 250), "tags": tags}) + b"\n")
    (d / "graph.yaml").write_text(GRAPH)
    return d


def run_engine(d: Path) -> Path:
    report = asyncio.run(Runner(load_graph(str(d / "graph.yaml"))).run())
    assert report.balanced and report.error is None and report.totals()["entered"] == N
    return d / "out.ndjson"


def _loop(keep: Callable[[Any], Any], make: Callable[[Any], Any]) -> Callable[[Path], Path]:
    def run(d: Path) -> Path:
        loads, dumps = orjson.loads, orjson.dumps
        with open(d / "in.ndjson", "rb") as src, open(d / "plain.ndjson", "wb") as dst:
            out = []
            for line in src:
                msg = loads(line)
                if keep(msg):
                    out.append(dumps(make(msg)) + b"\n")
                if len(out) >= 1000:
                    dst.write(b"".join(out))
                    out.clear()
            dst.write(b"".join(out))
        return d / "plain.ndjson"

    return run


def _plain_cel() -> Callable[[Path], Path]:
    keep, make, meta = compile_expr(FILTER), compile_expr(MAP), {}
    return _loop(lambda m: keep(m, meta), lambda m: make(m, meta))


def _plain() -> Callable[[Path], Path]:
    return _loop(lambda m: m["amount"] > 10.0 and "a" in m["tags"], lambda m: {"id": m["id"], "user": m["user"], "total": m["amount"] * 1.2})


def _bytewax() -> Callable[[Path], Path]:
    bw = pytest.importorskip("bytewax.operators")
    from bytewax.connectors.files import FileSink, FileSource
    from bytewax.dataflow import Dataflow
    from bytewax.testing import run_main

    def run(d: Path) -> Path:
        flow = Dataflow("bench")
        lines = bw.input("in", flow, FileSource(d / "in.ndjson", batch_size=1000))
        parsed = bw.map("parse", lines, orjson.loads)
        kept = bw.filter("filter", parsed, lambda m: m["amount"] > 10.0 and "a" in m["tags"])
        out = bw.map("map", kept, lambda m: (
            "all", orjson.dumps({"id": m["id"], "user": m["user"], "total": m["amount"] * 1.2}).decode()))
        bw.output("out", out, FileSink(d / "bytewax.ndjson"))  # a keyed sink: one key, one file
        run_main(flow)
        return d / "bytewax.ndjson"

    return run


VARIANTS: dict[str, Callable[[], Callable[[Path], Path]]] = {
    "streamdag": lambda: run_engine,
    "plain-python": _plain,
    "plain-python-cel": _plain_cel,
    "bytewax-0.21": _bytewax,
}


@pytest.fixture(scope="module", autouse=True)
def summary() -> Any:
    """After the rows: the engine's time as a multiple of each other row's (seen with -s)."""
    yield
    engine = BEST.get("streamdag")
    for name, seconds in BEST.items():
        if engine is not None and name != "streamdag":
            print(f"\nstreamdag / {name}: {engine / seconds:.2f}x the time")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_pipeline(benchmark: Any, variant: str, workdir: Path) -> None:
    fn = VARIANTS[variant]()
    out = benchmark.pedantic(fn, args=(workdir,), rounds=5, iterations=1, warmup_rounds=1)
    lines = out.read_bytes().splitlines()
    assert len(lines) == expected_count()
    first = orjson.loads(lines[0])
    assert first == {"id": 11, "user": "u4", "total": pytest.approx(13.2)}
    best = benchmark.stats.stats.min
    BEST[variant] = best
    benchmark.extra_info["messages"] = N
    benchmark.extra_info["msg_per_s"] = round(N / best)
    print(f"\n{variant:18} {N / best:12,.0f} msg/s  (best of 5: {best * 1000:.0f} ms for {N:,} messages)")
