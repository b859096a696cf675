"""redis_cache_sink conflict strategies beside a plain SET on the same keys, alternating in one run.

Run: `python benchmarks/bench_redis_resolve.py [rounds [batch]]` (warm, in-process: the sinks are
started once, then each round writes one batch of `batch` messages per mode, the modes in turn,
every message updating an existing key). The machine is shared: read the ratios, not the times.

Modes: replace (SET, the baseline), merge of a document with per-field versions and CRDT fields
(G-counter, OR-set, max), version_vector (every write dominates), resolver (every write is
concurrent with the stored vector, so each goes through the script, the CEL resolver and the
optimistic commit: the worst case of `conflict: resolver`).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid
from typing import Any

import redis.asyncio as aredis

from engine.message import Msg
from engine.runtime.context import NodeContext, Resources
from operators.connectors.redis.cache import RedisCacheSink, RedisCacheSinkConfig

URL = "redis://127.0.0.1:6379/0"
MODES: dict[str, dict[str, Any]] = {
    "replace": {},
    "merge_crdt": {"strategy": "merge", "field_versions": "_v",
                   "crdt": {"views": "gcounter", "tags": "orset", "hi": "max"}},
    "version_vector": {"strategy": "version_vector", "vector": "msg.vv"},
    "resolver": {"strategy": "version_vector", "vector": "msg.cv", "conflict": "resolver",
                 "resolver": "msg.new.a > msg.old.a ? msg.new : msg.old"},
}


def body(i: int, step: int) -> dict[str, Any]:
    w = f"w{step % 2}"  # resolver: two writers in turn, each write concurrent with the merged vector
    return {"id": i, "a": step, "b": {"c": i}, "_v": {"a": step}, "views": {"w1": step},
            "tags": {"a": {f"e{step % 5}": {f"w1-{step}": True}}}, "hi": step, "vv": {"w1": step},
            "cv": {w: step}}


async def main(rounds: int, batch: int) -> None:
    res = Resources()
    prefix = f"bench-rr-{uuid.uuid4().hex[:6]}"
    sinks: dict[str, RedisCacheSink] = {}
    for name, cfg in MODES.items():
        config = RedisCacheSinkConfig.model_validate({"connection": "cache", "key": f'"{prefix}:{name}:" + '
                                                      "string(msg.id)", **cfg})
        sinks[name] = RedisCacheSink(name, config, NodeContext(name, {"cache": {"type": "redis", "url": URL}}, {},
                                                                res))
        await sinks[name].start()
    times: dict[str, list[float]] = {n: [] for n in MODES}
    try:
        for sink in sinks.values():  # the keys exist before the measured rounds
            await sink.write([Msg(body(i, 0)) for i in range(batch)])
        for step in range(1, rounds + 1):
            for name, sink in sinks.items():
                msgs = [Msg(body(i, step)) for i in range(batch)]
                t0 = time.perf_counter()
                assert not await sink.write(msgs)
                times[name].append(time.perf_counter() - t0)
        assert sinks["resolver"].metrics()["resolved"] >= (rounds - 1) * batch  # step 1 dominates step 0
    finally:
        for sink in sinks.values():
            await sink.stop()
        await res.close()
        r = aredis.Redis.from_url(URL)
        keys = [k async for k in r.scan_iter(match=prefix + ":*", count=1000)]
        for i in range(0, len(keys), 1000):
            await r.delete(*keys[i:i + 1000])
        await r.aclose()
    base = statistics.median(times["replace"])
    print(f"{rounds} rounds of {batch} updates per mode, median per batch (warm, in-process)")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:15s} {med * 1000:8.1f} ms  {batch / med:10.0f} msg/s  {med / base:5.2f}x replace")


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    asyncio.run(main(*(args + [20, 1000][len(args):])))
