"""In-memory pipeline throughput: the engine beside a plain Python loop doing the same work.

    .venv/bin/python -m pytest benchmarks/bench_pipeline.py --benchmark-only

Scenario: NDJSON file -> parse -> filter (CEL) -> map (CEL) -> NDJSON file, N messages.
The baseline is the straightforward loop a user would write by hand with the same CEL runtime the
engine picks (compiled when engine.celc covers the expressions).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import orjson
import pytest

from engine.compile.validate import load_graph
from engine.expr import compile_expr
from engine.runtime.scheduler import Runner

N = int(os.environ.get("BENCH_N", "200000"))
FILTER = "msg.amount > 10.0"
MAP = '{"id": msg.id, "user": msg.user, "total": msg.amount * 1.2}'

GRAPH = f"""
version: 1
name: bench
defaults: {{dead_letter: dead}}
nodes:
  read: {{type: file_source, config: {{path: in.ndjson}}}}
  big: {{type: filter, inputs: [read], config: {{expr: '{FILTER}'}}}}
  price: {{type: map, inputs: [big], config: {{expr: '{MAP}'}}}}
  out: {{type: file_sink, inputs: [price], config: {{path: out.ndjson}}}}
  dead: {{type: drop, inputs: [read.errors, big.errors, price.errors, out.errors]}}
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pipeline")
    with open(d / "in.ndjson", "wb") as fh:
        for i in range(N):
            fh.write(orjson.dumps({"id": i, "user": f"u{i % 7}", "amount": float(i % 250), "tags": ["a"]}) + b"\n")
    (d / "graph.yaml").write_text(GRAPH)
    return d


def run_engine(d: Path) -> int:
    report = asyncio.run(Runner(load_graph(str(d / "graph.yaml"))).run())
    assert report.balanced and report.error is None
    return report.totals()["entered"]


def run_plain(d: Path) -> int:
    keep, price = compile_expr(FILTER), compile_expr(MAP)
    n = 0
    with open(d / "in.ndjson", "rb") as src, open(d / "plain.ndjson", "wb") as dst:
        out = []
        for line in src:
            msg = orjson.loads(line)
            n += 1
            if keep(msg, {}):
                out.append(orjson.dumps(price(msg, {})) + b"\n")
            if len(out) >= 1000:
                dst.write(b"".join(out))
                out.clear()
        dst.write(b"".join(out))
    return n


def test_engine_file_filter_map_file(benchmark, workdir: Path) -> None:
    n = benchmark.pedantic(run_engine, args=(workdir,), rounds=3, iterations=1)
    assert n == N
    benchmark.extra_info["messages"] = N
    benchmark.extra_info["msg_per_s"] = N / benchmark.stats.stats.mean


def test_plain_python_loop(benchmark, workdir: Path) -> None:
    n = benchmark.pedantic(run_plain, args=(workdir,), rounds=3, iterations=1)
    assert n == N
    benchmark.extra_info["messages"] = N
    benchmark.extra_info["msg_per_s"] = N / benchmark.stats.stats.mean
