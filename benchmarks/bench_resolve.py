"""postgres_sink conflict strategies beside `upsert` on the same rows, alternating in one run.

Run: `python benchmarks/bench_resolve.py [rounds [batch]]` (warm, in-process: the sinks are started
once, then each round writes one batch of `batch` messages per mode, the modes in turn, every
message updating an existing key). The machine is shared: read the ratios, not the absolute times.

Modes: upsert (baseline), merge of a jsonb document with per-field versions plus a G-counter
column, version_vector (two statements: insert-new, then lock-compare-update).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid
from typing import Any

import asyncpg

from engine.message import Msg
from engine.runtime.context import NodeContext, Resources
from operators.connectors.postgres.sink import PostgresSink, PostgresSinkConfig

DSN = "postgresql://root@127.0.0.1:5432/test"

MODES: dict[str, dict[str, Any]] = {
    "upsert": {"mode": "upsert", "columns": {"id": {"expr": "msg.id", "type": "bigint"},
                                             "doc": {"expr": "msg.doc", "type": "jsonb"},
                                             "views": {"expr": "msg.views", "type": "jsonb"}}},
    "merge": {"mode": "merge", "field_versions": "_v", "crdt": {"views": "gcounter"},
              "columns": {"id": {"expr": "msg.id", "type": "bigint"}, "doc": {"expr": "msg.doc", "type": "jsonb"},
                          "views": {"expr": "msg.views", "type": "jsonb"}}},
    "version_vector": {"mode": "version_vector", "version": "vv",
                       "columns": {"id": {"expr": "msg.id", "type": "bigint"}, "vv": {"expr": "msg.vv", "type": "jsonb"},
                                   "doc": {"expr": "msg.doc", "type": "jsonb"}}},
}


def body(i: int, step: int) -> dict[str, Any]:
    return {"id": i, "doc": {"a": step, "b": {"c": i}, "_v": {"a": step}}, "views": {"w1": step},
            "vv": {"w1": step}}


async def main(rounds: int, batch: int) -> None:
    res = Resources()
    sinks: dict[str, PostgresSink] = {}
    tables = []
    for name, cfg in MODES.items():
        table = f"bench_resolve_{name}_{uuid.uuid4().hex[:6]}"
        tables.append(table)
        config = PostgresSinkConfig.model_validate({"connection": "pg", "table": table, "key": ["id"],
                                                    "create_table": True, **cfg})
        sinks[name] = PostgresSink(name, config, NodeContext(name, {"pg": {"dsn": DSN}}, {}, res))
        await sinks[name].start()
    times: dict[str, list[float]] = {n: [] for n in MODES}
    try:
        for sink in sinks.values():  # the rows exist before the measured rounds
            await sink.write([Msg(body(i, 0)) for i in range(batch)])
        for step in range(1, rounds + 1):
            for name, sink in sinks.items():
                msgs = [Msg(body(i, step)) for i in range(batch)]
                t0 = time.perf_counter()
                assert await sink.write(msgs) == []
                times[name].append(time.perf_counter() - t0)
    finally:
        for sink in sinks.values():
            await sink.stop()
        await res.close()
        conn = await asyncpg.connect(DSN)
        for t in tables:
            await conn.execute(f'DROP TABLE IF EXISTS "{t}"')
        await conn.close()
    base = statistics.median(times["upsert"])
    print(f"{rounds} rounds of {batch} updates per mode, median per batch (warm, in-process)")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:15s} {med * 1000:8.1f} ms  {batch / med:10.0f} msg/s  {med / base:5.2f}x upsert")


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    asyncio.run(main(*(args + [20, 1000][len(args):])))
