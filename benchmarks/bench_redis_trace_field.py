"""What redis_stream_sink's `traceparent` field costs (warm, in-process, the shared Redis): writes of
1000 untraced entries and of 1000 traced ones alternating, and the check an untraced batch pays
(does any message carry `meta.traceparent`?) alone.

    .venv/bin/python benchmarks/bench_redis_trace_field.py     # mean of 30 rounds each
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import redis.asyncio as aredis

from engine.message import Msg
from engine.runtime.context import NodeContext, Resources
from operators.connectors.redis.streams import RedisStreamSink, RedisStreamSinkConfig

URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
ROUNDS = 30


async def main() -> None:
    stream = f"bench-trace-{uuid.uuid4().hex[:8]}"
    res = Resources()
    sink = RedisStreamSink("s", RedisStreamSinkConfig(connection="c", stream=stream, maxlen=10_000),
                           NodeContext("s", {"c": {"type": "redis", "url": URL}}, {}, res))
    await sink.start()
    plain = [Msg({"i": i, "x": "abc"}) for i in range(1000)]
    traced = [Msg({"i": i, "x": "abc"}, {"traceparent": f"00-{i + 1:032x}-{i + 1:016x}-01"}) for i in range(1000)]
    spent = {"untraced": 0.0, "traced": 0.0, "check": 0.0}
    try:
        for _ in range(ROUNDS):
            for name, batch in (("untraced", plain), ("traced", traced)):
                t = time.perf_counter()
                await sink.write(list(batch))
                spent[name] += time.perf_counter() - t
            t = time.perf_counter()
            RedisStreamSink._contexts(plain)
            spent["check"] += time.perf_counter() - t
    finally:
        r = aredis.Redis.from_url(URL)
        await r.delete(stream)
        await r.aclose()
        await res.close()
    ms = {k: v / ROUNDS * 1e3 for k, v in spent.items()}
    print(f"write of 1000 entries: untraced {ms['untraced']:.2f} ms, traced {ms['traced']:.2f} ms; "
          f"the check alone {ms['check'] * 1e3:.1f} us ({spent['check'] / spent['untraced']:.1%} of an untraced write)")


if __name__ == "__main__":
    asyncio.run(main())
