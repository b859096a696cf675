"""Redis stream -> map -> Redis stream: streamdag's source and sink beside plain redis-py, same run.

Both sides do the same work on the same number of entries: XREADGROUP in batches of 1000, decode
JSON, add a field, encode, append with MAXLEN ~ 10000, XACK after the appends returned. Plain
redis-py appends with a pipeline of XADD and maps in Python; streamdag runs the graph source ->
map (CEL) -> sink with its scheduler, and its sink is measured with both of its methods
(`script`, the default: EVALSHA appending 1000 entries server-side; `xadd`: the same pipeline). Run with
`python -m pytest benchmarks/bench_redis.py -s` (needs Redis on 127.0.0.1:6379); figures are
noisy when other work shares the machine.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from typing import Any

import orjson
import pytest
import redis.asyncio as aredis

from engine.compile.validate import check_text
from engine.runtime.scheduler import Runner

REDIS_URL = "redis://127.0.0.1:6379/0"

N = 50_000
BATCH = 1000


def transform(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "amount_cents": body["amount"] * 100}


async def prefill(r: Any, stream: str) -> None:
    pipe = r.pipeline(transaction=False)
    for i in range(N):
        pipe.execute_command("XADD", stream, "*", "body", orjson.dumps({"id": i, "user": f"u{i % 97}", "amount": i}))
        if len(pipe) >= 5000:
            await pipe.execute()
    await pipe.execute()
    await r.xgroup_create(stream, "g", id="0")


async def plain(r: Any, src: str, dst: str) -> float:
    """The same work written directly against redis-py."""
    t0 = time.perf_counter()
    done = 0
    while done < N:
        resp = await r.xreadgroup("g", "c", {src: ">"}, count=BATCH, block=100)
        entries = resp[0][1] if resp else []
        pipe = r.pipeline(transaction=False)
        ids = []
        for eid, fields in entries:
            out = orjson.dumps(transform(orjson.loads(fields[b"body"])))
            pipe.execute_command("XADD", dst, "MAXLEN", "~", 10_000, "*", "body", out)
            ids.append(eid)
        await pipe.execute()
        if ids:
            await r.execute_command("XACK", src, "g", *ids)
        done += len(ids)
    return time.perf_counter() - t0


GRAPH = """
version: 1
name: bench_redis
defaults: {batch_size: 1000}
connections:
  cache: {type: redis, url: "%(url)s"}
nodes:
  src:
    type: redis_stream_source
    config: {connection: cache, stream: "%(src)s", group: g, batch: 1000, block: 100ms, exit_when_idle: true}
  price:
    type: map
    inputs: [src]
    config: {expr: '{"id": msg.id, "user": msg.user, "amount": msg.amount, "amount_cents": msg.amount * 100}'}
  out:
    type: redis_stream_sink
    inputs: [price]
    config: {connection: cache, stream: "%(dst)s", method: %(method)s}
"""


async def streamdag(src: str, dst: str, method: str = "script") -> float:
    """The graph src -> map (CEL) -> sink, run by the scheduler, acks through the ack contract."""
    graph, diags = check_text(GRAPH % {"url": REDIS_URL, "src": src, "dst": dst, "method": method})
    assert graph is not None, diags
    t0 = time.perf_counter()
    report = await Runner(graph).run()
    elapsed = time.perf_counter() - t0
    assert report.error is None and report.totals()["delivered"] == N, report.totals()
    return elapsed


async def one_round() -> tuple[float, float, float]:
    """Entries per second of: plain redis-py, streamdag (sink method script), streamdag (method xadd)."""
    r = aredis.Redis.from_url(REDIS_URL)
    tag = uuid.uuid4().hex[:8]
    names = [f"redis-bench-{tag}-{k}" for k in ("a", "a.out", "b", "b.out", "c", "c.out")]
    try:
        for name in names[::2]:
            await prefill(r, name)
        runs = {
            "plain": lambda: plain(r, names[0], names[1]),
            "script": lambda: streamdag(names[2], names[3], "script"),
            "xadd": lambda: streamdag(names[4], names[5], "xadd"),
        }
        order = list(runs)
        random.shuffle(order)  # the machine is shared: do not always give one variant the same slot
        took = {name: await runs[name]() for name in order}
        t_plain, t_script, t_xadd = took["plain"], took["script"], took["xadd"]
        for name in names[::2]:
            assert (await r.xpending(name, "g"))["pending"] == 0
        for name in names[1::2]:
            assert await r.xlen(name) >= 10_000
        return N / t_plain, N / t_script, N / t_xadd
    finally:
        await r.delete(*names)
        await r.aclose()


@pytest.mark.services
@pytest.mark.timeout(900)
def test_stream_map_stream(benchmark: Any) -> None:
    rates: list[tuple[float, float, float]] = []

    def go() -> None:
        rates.append(asyncio.run(one_round()))

    benchmark.pedantic(go, rounds=5, iterations=1)
    plain_rate, script_rate, xadd_rate = (max(r[i] for r in rates) for i in range(3))
    benchmark.extra_info.update(plain_per_s=round(plain_rate), streamdag_per_s=round(script_rate),
                                streamdag_xadd_per_s=round(xadd_rate), ratio=round(script_rate / plain_rate, 3),
                                ratio_xadd=round(xadd_rate / plain_rate, 3))
    print(f"\nredis stream -> map -> redis stream, {N:,} entries, best of 5 rounds:\n"
          f"  plain redis-py (pipelined XADD)      {plain_rate:9,.0f}/s\n"
          f"  streamdag (sink method: script)      {script_rate:9,.0f}/s  ratio {script_rate / plain_rate:.2f}\n"
          f"  streamdag (sink method: xadd)        {xadd_rate:9,.0f}/s  ratio {xadd_rate / plain_rate:.2f}")
