"""What `window` checkpoints cost: per message, per key, restore time, and the store choice.

All warm, in one process (start-up excluded), the window driven directly as the runtime would:

* **per message**: 200,000 items (10,000 keys, 1-minute tumbling windows, count+sum+max, batches of
  500) through `acks: hold`, `release` and `checkpoint` (a save to PostgreSQL every 0.1 s of wall
  clock, so many saves fall in the run), alternating rounds; CPU-microseconds per item (process CPU
  time: the PostgreSQL server's work is not in it) and wall-clock microseconds per item.
* **per key**: one save with D dirty keys (D = 1,000 and 10,000), wall time / D and bytes / D.
* **restore**: a partition checkpoint of 10,000 and 1,000,000 keys read back (`start()`): seconds.
* **store**: one atomic-ish write of 1,000 records of 100 bytes: a PostgreSQL transaction (the
  backend), NATS KV puts (one per record, concurrent; no multi-key atomicity), Redis MULTI/EXEC
  (atomic, but this machine's Redis keeps nothing on disk). Median of 9, alternating.

Run: `python benchmarks/bench_checkpoint.py [restore_keys ...]` (default 10000 1000000). Automatic
GC is off, as in `streamdag run`.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import NATS_URL, PG_DSN, REDIS_URL, load_average
from engine.message import AckTracker, Msg
from engine.runtime.context import NodeContext, Resources
from engine.runtime.outputs import Outputs
from engine.runtime.stats import NodeStats
from operators.window import Window, WindowConfig

KEYS, ITEMS, BATCH = 10_000, 200_000, 500
AGGREGATES = {"n": {"op": "count"}, "total": {"op": "sum", "expr": "msg.v"}, "hi": {"op": "max", "expr": "msg.v"}}


def window(mode: str, table: str, resources: Resources, interval: float = 0.1, name: str = "bench") -> Window:
    config: dict[str, Any] = {
        "kind": "tumbling", "size": 60, "key": "msg.k", "time": "event", "timestamp": "msg.t",
        "aggregates": AGGREGATES, "acks": mode,
    }
    if mode == "checkpoint":
        config["checkpoint"] = {"connection": "pg", "interval": interval, "table": table, "name": name,
                                "max_bytes": 1 << 31}
    ctx = NodeContext("win", {"pg": {"type": "postgres", "dsn": PG_DSN}}, {}, resources, upstream=None)
    return Window("win", WindowConfig(**config), ctx)


def bodies(n: int, keys: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [{"k": f"u{rng.randrange(keys)}", "t": i / 1000, "v": rng.randrange(100)} for i in range(n)]


async def through(op: Window, items: list[dict[str, Any]]) -> tuple[float, float]:
    """(wall s, cpu s) to fold every item, batch by batch, then the end-of-input save."""
    tracker = AckTracker()
    out = Outputs("win", Window.ports, NodeStats("win", "operator", "window"))
    seq = 0
    w0, c0 = time.perf_counter(), time.process_time()
    for i in range(0, len(items), BATCH):
        msgs = []
        for b in items[i : i + BATCH]:
            seq += 1
            msgs.append(Msg(b, {"stream": "S", "seq": seq}, tracker.new(seq)))
        r = op.process(msgs, out)
        if r is not None:
            await r
        for m in out.take().get("out", []):
            m.ack.release()  # committed downstream at once
    r = op.flush(out)
    if r is not None:
        await r
    return time.perf_counter() - w0, time.process_time() - c0


async def per_message(table: str, rounds: int = 3) -> dict[str, Any]:
    items = bodies(ITEMS, KEYS)
    results: dict[str, list[tuple[float, float]]] = {"hold": [], "release": [], "checkpoint": []}
    saves = 0
    for r in range(rounds):
        for mode in results:
            resources = Resources()
            op = window(mode, table, resources, name=f"pm{r}")
            await op.start()
            results[mode].append(await through(op, items))
            saves += op.metrics().get("checkpoint_saves", 0)
            await resources.close()
    out = {}
    for mode, runs in results.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        out[mode] = {"wall_us_per_item": round(wall / ITEMS * 1e6, 2), "cpu_us_per_item": round(cpu / ITEMS * 1e6, 2)}
    out["checkpoint_saves_per_run"] = saves // rounds
    return out


async def per_key(table: str) -> dict[str, Any]:
    out = {}
    for dirty in (1_000, 10_000):
        resources = Resources()
        op = window("checkpoint", table, resources, interval=3600, name=f"pk{dirty}")
        await op.start()
        items = [{"k": f"u{i}", "t": 1.0, "v": i} for i in range(dirty)]
        await through_without_flush(op, items)
        t0 = time.perf_counter()
        assert await op.checkpoints.save_all()  # type: ignore[union-attr]
        seconds = time.perf_counter() - t0
        m = op.metrics()
        out[f"{dirty}_dirty_keys"] = {"save_ms": round(seconds * 1e3, 1), "us_per_key": round(seconds / dirty * 1e6, 1),
                                      "bytes_per_key": round(m["checkpoint_bytes_written"] / dirty, 1)}
        await resources.close()
    return out


async def through_without_flush(op: Window, items: list[dict[str, Any]]) -> None:
    tracker = AckTracker()
    out = Outputs("win", Window.ports, NodeStats("win", "operator", "window"))
    for i in range(0, len(items), 5000):
        msgs = [Msg(b, {"stream": "S", "seq": i + j + 1}, tracker.new()) for j, b in enumerate(items[i : i + 5000])]
        op.fold(msgs, out)
        out.take()


async def restore(table: str, keys: int) -> dict[str, Any]:
    resources = Resources()
    op = window("checkpoint", table, resources, interval=3600, name=f"rs{keys}")
    await op.start()
    await through_without_flush(op, [{"k": f"u{i}", "t": 1.0, "v": i} for i in range(keys)])
    t0 = time.perf_counter()
    assert await op.checkpoints.save_all()  # type: ignore[union-attr]
    save_s = time.perf_counter() - t0
    size = op.metrics()["checkpoint_bytes"]
    await resources.close()
    resources = Resources()
    again = window("checkpoint", table, resources, interval=3600, name=f"rs{keys}")
    t0 = time.perf_counter()
    await again.start()
    seconds = time.perf_counter() - t0
    assert again.store.open_windows == keys
    await resources.close()
    return {"keys": keys, "restore_s": round(seconds, 2), "first_save_s": round(save_s, 2), "checkpoint_mb": round(size / 2**20, 1)}


async def stores(records: int = 1000, rounds: int = 9) -> dict[str, Any]:
    import asyncpg
    import nats
    import redis.asyncio as aredis

    payload = {f"k{i}": bytes(random.getrandbits(8) for _ in range(100)) for i in range(records)}
    table = f"bench_ck_{uuid.uuid4().hex[:8]}"
    pg = await asyncpg.connect(PG_DSN)
    await pg.execute(f"CREATE TABLE {table} (name text, part text, key text, data bytea, PRIMARY KEY (name, part, key))")
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    bucket = f"bench_ck_{uuid.uuid4().hex[:8]}"
    kv = await js.create_key_value(bucket=bucket)
    r = aredis.from_url(REDIS_URL)
    keys, datas = list(payload), list(payload.values())

    async def pg_tx() -> None:
        async with pg.transaction():
            await pg.execute(f"INSERT INTO {table} SELECT 'b', '-', k, d FROM unnest($1::text[], $2::bytea[]) u(k, d) "
                             "ON CONFLICT (name, part, key) DO UPDATE SET data = EXCLUDED.data", keys, datas)

    async def nats_kv() -> None:
        await asyncio.gather(*(kv.put(k, d) for k, d in payload.items()))

    async def redis_multi() -> None:
        pipe = r.pipeline(transaction=True)
        pipe.hset(f"{bucket}:-", mapping=payload)
        await pipe.execute()

    timings: dict[str, list[float]] = {"postgresql_transaction": [], "nats_kv_puts": [], "redis_multi": []}
    fns = {"postgresql_transaction": pg_tx, "nats_kv_puts": nats_kv, "redis_multi": redis_multi}
    try:
        for _ in range(rounds):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                await fn()
                timings[name].append(time.perf_counter() - t0)
    finally:
        await pg.execute(f"DROP TABLE {table}")
        await pg.close()
        await js.delete_key_value(bucket)
        await nc.close()
        await r.delete(f"{bucket}:-")
        await r.aclose()
    return {name: {"ms_per_1000_records": round(statistics.median(t) * 1e3, 1)} for name, t in timings.items()}


async def main(restore_keys: list[int]) -> dict[str, Any]:
    table = f"bench_ck_{uuid.uuid4().hex[:8]}"
    report: dict[str, Any] = {"load_before": load_average()}
    try:
        report["store_write_1000_records"] = await stores()
        report["per_message"] = await per_message(table)
        report["per_key_save"] = await per_key(table)
        report["restore"] = [await restore(table, k) for k in restore_keys]
    finally:
        import asyncpg

        conn = await asyncpg.connect(PG_DSN)
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.close()
    report["load_after"] = load_average()
    return report


if __name__ == "__main__":
    import gc

    gc.disable()  # as during `streamdag run` (engine.runtime.gc): no automatic passes over the state
    sizes = [int(a) for a in sys.argv[1:]] or [10_000, 1_000_000]
    print(json.dumps(asyncio.run(main(sizes)), indent=2))
