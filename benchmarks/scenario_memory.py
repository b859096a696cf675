"""Scenario 1, in memory: generate -> map -> filter -> validate -> route -> sink (and + batch + compress).

The engine runs a real graph (YAML -> check -> Runner). Beside it, in the same process, two
hand-written loops do the same work with the same CEL functions and jsonschema-rs:
`baseline-plain` one message at a time, `baseline-batched` batch-wise (batched CEL, list
comprehensions). N comes from BENCH_MEMORY_N (default 1,000,000).
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from typing import Any

import jsonschema_rs
import orjson
import zstandard

from benchmarks.machine import load_average, peak_rss_mb, reset_peak_rss

__all__ = ["N", "run_scenario"]

N = int(os.environ.get("BENCH_MEMORY_N", "1000000"))
TEMPLATE = '{"id": msg.i, "user": "u" + string(msg.i % 7), "amount": double(msg.i % 250), "tags": ["a"]}'
MAP = '{"id": msg.id, "user": msg.user, "total": msg.amount * 1.2}'
FILTER = "msg.total > 12.0"
VIP = 'msg.user == "u1"'
SCHEMA = {"type": "object", "required": ["id", "user", "total"],
          "properties": {"id": {"type": "integer", "minimum": 0}, "user": {"type": "string"},
                         "total": {"type": "number"}}}
GROUP = 100  # messages per batch of the batch+compress variant


def _graph(n: int, compress: bool) -> str:
    tail = (f"""
  group: {{type: batch, inputs: [split.rest], config: {{count: {GROUP}}}}}
  pack: {{type: compress, inputs: [group], config: {{codec: zstd}}}}
  rest: {{type: drop, inputs: [pack]}}""" if compress else """
  rest: {type: drop, inputs: [split.rest]}""")
    return f"""
version: 1
name: perf_memory
nodes:
  gen: {{type: generate, config: {{count: {n}, batch: 1000, template: '{TEMPLATE}'}}}}
  price: {{type: map, inputs: [gen], config: {{expr: '{MAP}'}}}}
  big: {{type: filter, inputs: [price], config: {{expr: '{FILTER}'}}}}
  check: {{type: validate, inputs: [big], config: {{schema: {orjson.dumps(SCHEMA).decode()}}}}}
  split: {{type: route, inputs: [check], config: {{mode: first, routes: {{vip: '{VIP}', rest: 'true'}}}}}}
  vip: {{type: drop, inputs: [split.vip]}}{tail}
  dead: {{type: drop, inputs: [gen.errors, price.errors, big.errors, check.errors, split.errors]}}
"""


def expected(n: int) -> tuple[int, int]:
    """(kept, vip) for n messages: what every variant must count."""
    kept = sum(1 for i in range(n) if (i % 250) * 1.2 > 12.0)
    vip = sum(1 for i in range(n) if (i % 250) * 1.2 > 12.0 and i % 7 == 1)
    return kept, vip


def run_engine(n: int, compress: bool) -> tuple[int, int]:
    import uvloop

    from engine.compile.validate import check_text
    from engine.runtime.scheduler import Runner

    graph, diags = check_text(_graph(n, compress), "perf_memory.yaml")
    assert graph is not None, diags
    report = uvloop.run(Runner(graph).run())
    assert report.error is None and report.balanced, (report.error, report.totals())
    s = report.stats
    rest = s["rest"].committed * (GROUP if compress else 1)
    return s["vip"].committed + (s["group"].received if compress else rest), s["vip"].committed


def run_plain(n: int, compress: bool) -> tuple[int, int]:
    """One message at a time, the loop a user writes first."""
    from engine.expr import compile_expr

    template, price, keep, vip = (compile_expr(s).fn for s in (TEMPLATE, MAP, FILTER, VIP))
    is_valid = jsonschema_rs.validator_for(SCHEMA).is_valid
    zc = zstandard.ZstdCompressor(level=3)
    meta: dict[str, Any] = {}
    kept = vips = 0
    group: list[Any] = []
    for i in range(n):
        body = price(template({"i": i}, meta), meta)
        if keep(body, meta) is not True or not is_valid(body):
            continue
        kept += 1
        if vip(body, meta) is True:
            vips += 1
        elif compress:
            group.append(body)
            if len(group) >= GROUP:
                zc.compress(orjson.dumps(group))
                group = []
    if group:
        zc.compress(orjson.dumps(group))
    return kept, vips


def run_tuned(n: int, compress: bool) -> tuple[int, int]:
    """Batch-wise: batched CEL over 1,000 bodies, list comprehensions, no per-message calls where avoidable."""
    from engine.celc import try_compile_batch

    template, price, keep, vip = (try_compile_batch(s) for s in (TEMPLATE, MAP, FILTER, VIP))
    assert None not in (template, price, keep, vip)
    is_valid = jsonschema_rs.validator_for(SCHEMA).is_valid
    zc = zstandard.ZstdCompressor(level=3)
    metas = [{}] * 1000
    kept = vips = 0
    for start in range(0, n, 1000):
        ins = [{"i": i} for i in range(start, min(n, start + 1000))]
        bodies = price(template(ins, metas), metas)  # type: ignore[misc]
        flags = keep(bodies, metas)  # type: ignore[misc]
        good = [b for b, f in zip(bodies, flags) if f is True and is_valid(b)]
        kept += len(good)
        vflags = vip(good, metas)  # type: ignore[misc]
        rest = [b for b, f in zip(good, vflags) if f is not True]
        vips += len(good) - len(rest)
        if compress:
            for j in range(0, len(rest), GROUP):
                zc.compress(orjson.dumps(rest[j:j + GROUP]))
    return kept, vips


VARIANTS: dict[str, Callable[[int, bool], tuple[int, int]]] = {
    "engine": run_engine, "baseline-plain": run_plain, "baseline-batched": run_tuned}


def run_scenario(compress: bool, n: int = N) -> list[dict[str, Any]]:
    """Run the engine and both baselines once each; one record per variant."""
    name = "1b memory +batch+compress" if compress else "1a memory"
    want = expected(n)
    from engine.compile.validate import check_text

    check_text(_graph(10, compress), "warm.yaml")  # imports (jsonschema...) happen once, outside the timing
    records = []
    for variant, fn in VARIANTS.items():
        gc.collect()
        reset_peak_rss()
        load = load_average()
        t0, c0 = time.perf_counter(), time.process_time()
        got = fn(n, compress)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        if variant != "engine" or not compress:
            assert got == want, (variant, got, want)
        records.append({"scenario": name, "variant": variant, "messages": n, "seconds": round(seconds, 3),
                        "msg_per_s": round(n / seconds),
                        "msg_per_cpu_s": round(n / cpu), "cpu_us_per_msg": round(cpu / n * 1e6, 2), "peak_rss_mb": peak_rss_mb(), "load_average": load})
    return records


if __name__ == "__main__":
    import json
    import sys

    for rec in run_scenario(len(sys.argv) > 1 and sys.argv[1] == "compress", int(os.environ.get("BENCH_MEMORY_N", "100000"))):
        print(json.dumps(rec))
