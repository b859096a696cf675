"""Redis stream -> map -> Redis stream: streamdag's source and sink beside plain redis-py, same run.

Both sides do the same work on the same number of entries: XREADGROUP in batches of 1000, decode
JSON, add a field, encode, pipelined XADD (MAXLEN ~), XACK after the XADDs returned. Run with
`python -m pytest benchmarks/bench_redis.py -s` (needs Redis on 127.0.0.1:6379); figures are
noisy when other work shares the machine.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aredis

sys.path.insert(0, str(Path(__file__).parent.parent / "tests" / "connectors"))
from redis_harness import REDIS_URL, Run, make_ctx

from engine.message import Msg
from engine.runtime.context import Resources
from operators.connectors.redis_streams import (
    RedisStreamSink,
    RedisStreamSinkConfig,
    RedisStreamSource,
    RedisStreamSourceConfig,
)

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


async def streamdag(src: str, dst: str) -> float:
    """Our source -> a map in a tight loop -> our sink, acks through the ack contract."""
    res = Resources()
    source = RedisStreamSource("in", RedisStreamSourceConfig(
        connection="cache", stream=src, group="g", batch=BATCH, block="100ms", exit_when_idle=True),
        make_ctx("in", res))
    sink = RedisStreamSink("out", RedisStreamSinkConfig(connection="cache", stream=dst), make_ctx("out", res))
    await sink.start()

    async def map_then_sink(msgs: list[Msg]) -> Any:
        return await sink.write([m.derive(transform(m.body)) for m in msgs])

    run = Run(source)
    t0 = time.perf_counter()
    await (await run.start(map_then_sink))
    await run.finish()
    elapsed = time.perf_counter() - t0
    assert len(run.delivered) == N
    await res.close()
    return elapsed


async def one_round() -> tuple[float, float]:
    r = aredis.Redis.from_url(REDIS_URL)
    tag = uuid.uuid4().hex[:8]
    names = [f"redis-bench-{tag}-{k}" for k in ("a", "a.out", "b", "b.out")]
    try:
        await prefill(r, names[0])
        await prefill(r, names[2])
        t_plain = await plain(r, names[0], names[1])
        t_ours = await streamdag(names[2], names[3])
        assert (await r.xpending(names[2], "g"))["pending"] == 0
        return N / t_plain, N / t_ours
    finally:
        await r.delete(*names)
        await r.aclose()


@pytest.mark.services
def test_stream_map_stream(benchmark: Any) -> None:
    rates: list[tuple[float, float]] = []

    def go() -> None:
        rates.append(asyncio.run(one_round()))

    benchmark.pedantic(go, rounds=3, iterations=1)
    plain_rate = max(p for p, _ in rates)
    ours_rate = max(o for _, o in rates)
    benchmark.extra_info.update(plain_per_s=round(plain_rate), streamdag_per_s=round(ours_rate),
                                ratio=round(ours_rate / plain_rate, 3))
    print(f"\nredis stream -> map -> redis stream, {N} entries, best of 3: plain redis-py {plain_rate:,.0f}/s, "
          f"streamdag {ours_rate:,.0f}/s, ratio {ours_rate / plain_rate:.2f}")
