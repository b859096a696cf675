"""The seed pipeline, JetStream -> parse -> CEL filter -> CEL map -> JSON Schema -> PostgreSQL upsert.

Here: the engine graph and three hand-written baselines with the same clients (nats-py, asyncpg)
and the same per-message work (orjson, the same CEL functions, jsonschema-rs):

* `baseline-plain`: `pull_subscribe` + `fetch(1000)`, one upsert per batch, `await m.ack()` each;
* `baseline-tuned`: the same with the next fetch in flight while a batch is written (prefetch) and
  acks published straight after the commit;
* `baseline-lean`: own pull requests on a core subscription (no `fetch`), next request overlapped.

Every variant calls `on_commit(bodies)` after each commit (latency is measured there) and returns
when it has consumed `n` messages (kept + filtered). Stream, consumer and table names are unique.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson

from benchmarks.machine import NATS_URL, PG_DSN

__all__ = ["BASELINES", "FILTER", "MAP", "SCHEMA", "Names", "expected_kept", "run_engine"]

FILTER = "msg.amount >= 5.0"
MAP = '{"id": msg.id, "customer": msg.customer, "total": double(msg.qty) * msg.amount, "ts": msg.ts}'
SCHEMA = {"type": "object", "required": ["id", "customer", "total", "ts"],
          "properties": {"id": {"type": "integer", "minimum": 0}, "customer": {"type": "string"},
                         "total": {"type": "number"}, "ts": {"type": "number"}}}
DDL = "(id bigint PRIMARY KEY, customer text, total double precision, ts double precision)"
UPSERT = ("INSERT INTO {t} (id, customer, total, ts) SELECT * FROM unnest($1::bigint[], $2::text[], "
          "$3::float8[], $4::float8[]) ON CONFLICT (id) DO UPDATE SET customer = EXCLUDED.customer, "
          "total = EXCLUDED.total, ts = EXCLUDED.ts")
BATCH = 1000
OnCommit = Callable[[list[dict[str, Any]]], None]


def expected_kept(n: int) -> int:
    return sum(1 for i in range(n) if i % 100 >= 5)


class Names:
    """Unique stream, subject and table names for one run of one variant."""

    def __init__(self, tag: str):
        p = f"perf_{tag}_{uuid.uuid4().hex[:8]}"
        self.stream, self.subject, self.table, self.durable = p.upper(), p + ".orders", p, "perf"

    async def create(self, js: Any, conn: Any) -> None:
        from nats.js.api import StreamConfig

        await js.add_stream(StreamConfig(name=self.stream, subjects=[self.subject]))
        await conn.execute(f"CREATE TABLE {self.table} {DDL}")

    async def drop(self, js: Any, conn: Any) -> None:
        try:
            await js.delete_stream(self.stream)
        except Exception:  # noqa: BLE001 - cleanup is best effort
            pass
        await conn.execute(f"DROP TABLE IF EXISTS {self.table}")


GRAPH = """
version: 1
name: perf_jetstream_pg
defaults: {{max_in_flight: {inflight}}}
connections:
  nats: {{type: nats, url: "{nats}"}}
  pg: {{type: postgres, dsn: "{dsn}", application_name: perf_bench}}
nodes:
  read: {{type: jetstream_source, config: {{connection: nats, stream: {stream}, durable: {durable}, batch: {batch}, expires: 1s}}}}
  keep: {{type: filter, inputs: [read], config: {{expr: '{filter}'}}}}
  price: {{type: map, inputs: [keep], config: {{expr: '{map}'}}}}
  check: {{type: validate, inputs: [price], config: {{schema: {schema}}}}}
  store:
    type: postgres_sink
    inputs: [check]
    batch_size: {batch}
    config: {{connection: pg, table: {table}, mode: upsert, key: [id],
              columns: {{id: msg.id, customer: msg.customer, total: msg.total, ts: msg.ts}}}}
  dead: {{type: drop, inputs: [read.errors, keep.errors, price.errors, check.errors, store.errors]}}
"""


def graph_text(names: Names) -> str:
    return GRAPH.format(inflight=4 * BATCH, nats=NATS_URL, dsn=PG_DSN, stream=names.stream, durable=names.durable,
                        batch=BATCH, filter=FILTER, map=MAP, schema=orjson.dumps(SCHEMA).decode(), table=names.table)


def warm() -> None:
    """Check the graph once and import every node type's module, outside any timing (one-time costs)."""
    from engine.compile.validate import check_text

    graph, diags = check_text(graph_text(Names("warm")), "warm.yaml")
    assert graph is not None, diags
    import operators.connectors.jetstream.sink
    import operators.connectors.jetstream.source
    import operators.connectors.postgres.sink  # noqa: F401


async def run_engine(names: Names, n: int, on_commit: OnCommit, ready: asyncio.Event) -> dict[str, Any]:
    """Run the graph until `n` messages are settled; `ready` is set once the consumer exists."""
    from engine.compile.validate import check_text
    from engine.runtime.scheduler import Runner

    text = graph_text(names)
    graph, diags = check_text(text, "perf_jetstream_pg.yaml")
    assert graph is not None, diags
    runner = Runner(graph)
    store = runner.nodes["store"]
    write = store.write

    async def timed_write(batch: list[Any]) -> Any:
        failed = await write(batch)
        on_commit([m.body for m in batch])
        return failed

    store.write = timed_write
    task = asyncio.ensure_future(runner.run())
    try:
        while "read" not in runner.trackers or runner.nodes["read"]._out is None:
            if task.done():
                break
            await asyncio.sleep(0.005)
        ready.set()
        while not task.done():
            t = runner.trackers["read"]
            if t.delivered + t.filtered + t.dead_lettered >= n:
                break
            await asyncio.sleep(0.002)
        done = time.time()
    finally:
        runner.stop()
        report = await task
    assert report.error is None, report.error
    totals = report.totals()
    assert totals["dead_lettered"] == 0 and totals["nacked"] == 0, totals
    return {"done": done, "read_stats": None}


def _work() -> Callable[[list[bytes]], tuple[list[list[Any]], list[dict[str, Any]]]]:
    """The per-message work of every baseline: parse, filter, map, validate, into typed columns."""
    import jsonschema_rs

    from engine.expr import compile_expr

    keep, price = compile_expr(FILTER).fn, compile_expr(MAP).fn
    is_valid = jsonschema_rs.validator_for(SCHEMA).is_valid
    loads = orjson.loads
    meta: dict[str, Any] = {}

    def work(datas: list[bytes]) -> tuple[list[list[Any]], list[dict[str, Any]]]:
        ids: list[int] = []
        customers: list[str] = []
        totals: list[float] = []
        tss: list[float] = []
        bodies = []
        for data in datas:
            body = loads(data)
            if keep(body, meta) is not True:
                continue
            out = price(body, meta)
            if not is_valid(out):
                continue
            ids.append(out["id"])
            customers.append(out["customer"])
            totals.append(out["total"])
            tss.append(out["ts"])
            bodies.append(out)
        return [ids, customers, totals, tss], bodies

    return work


async def _connect() -> tuple[Any, Any, Any]:
    import asyncpg
    import nats

    nc = await nats.connect(NATS_URL, pending_size=64 * 1024 * 1024)
    conn = await asyncpg.connect(PG_DSN)
    return nc, nc.jetstream(), conn


async def _pull_sub(js: Any, names: Names) -> Any:
    from nats.js.api import ConsumerConfig

    return await js.pull_subscribe(names.subject, durable=names.durable, stream=names.stream,
                                   config=ConsumerConfig(max_ack_pending=4 * BATCH))


async def baseline_plain(names: Names, n: int, on_commit: OnCommit, ready: asyncio.Event) -> dict[str, Any]:
    """fetch, process, upsert, ack each: the loop nats-py and asyncpg's docs lead to."""
    import nats.errors

    nc, js, conn = await _connect()
    work, sql = _work(), UPSERT.format(t=names.table)
    try:
        sub = await _pull_sub(js, names)
        ready.set()
        done = 0
        while done < n:
            try:
                msgs = await sub.fetch(BATCH, timeout=1)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            cols, bodies = work([m.data for m in msgs])
            if bodies:
                await conn.execute(sql, *cols)
            on_commit(bodies)
            for m in msgs:
                await m.ack()
            done += len(msgs)
        await nc.flush()
        return {"done": time.time()}
    finally:
        await nc.close()
        await conn.close()


async def baseline_tuned(names: Names, n: int, on_commit: OnCommit, ready: asyncio.Event) -> dict[str, Any]:
    """Prefetch (the next fetch runs while this batch is written) and acks published without awaits per ack."""
    import nats.errors

    nc, js, conn = await _connect()
    work, sql = _work(), UPSERT.format(t=names.table)

    async def fetch(sub: Any) -> list[Any]:
        try:
            return await sub.fetch(BATCH, timeout=1)
        except (nats.errors.TimeoutError, TimeoutError):
            return []

    try:
        sub = await _pull_sub(js, names)
        ready.set()
        done = 0
        pending = asyncio.ensure_future(fetch(sub))
        while done < n:
            msgs = await pending
            pending = asyncio.ensure_future(fetch(sub))
            if not msgs:
                continue
            cols, bodies = work([m.data for m in msgs])
            if bodies:
                await conn.execute(sql, *cols)
            on_commit(bodies)
            publish = nc.publish
            for m in msgs:
                await publish(m.reply, b"+ACK")
            done += len(msgs)
        pending.cancel()
        await asyncio.gather(pending, return_exceptions=True)
        await nc.flush()
        return {"done": time.time()}
    finally:
        await nc.close()
        await conn.close()


async def baseline_lean(names: Names, n: int, on_commit: OnCommit, ready: asyncio.Event) -> dict[str, Any]:
    """Own pull requests on a core subscription; the next request is sent while a batch is processed."""
    nc, js, conn = await _connect()
    work, sql = _work(), UPSERT.format(t=names.table)
    buf: list[Any] = []
    wake = asyncio.Event()
    state = {"left": 0}

    async def on_msg(msg: Any) -> None:
        if msg.reply:
            buf.append(msg)
            state["left"] -= 1
            wake.set()
        elif msg.headers and msg.headers.get("Status") in ("404", "408", "409"):
            state["left"] = 0
            wake.set()

    inbox = nc.new_inbox()
    req_subject = f"$JS.API.CONSUMER.MSG.NEXT.{names.stream}.{names.durable}"
    request = orjson.dumps({"batch": BATCH, "expires": 1_000_000_000})
    try:
        await _pull_sub(js, names)  # creates the durable consumer; its own subscription stays idle
        sub = await nc.subscribe(inbox, cb=on_msg, pending_msgs_limit=1_000_000, pending_bytes_limit=-1)
        ready.set()
        done = 0
        while done < n:
            if state["left"] <= 0:
                state["left"] = BATCH
                await nc.publish(req_subject, request, reply=inbox)
            if not buf:
                wake.clear()
                try:
                    await asyncio.wait_for(wake.wait(), 2)
                except TimeoutError:
                    state["left"] = 0
                continue
            msgs = buf[:]
            buf.clear()
            if state["left"] <= 0:  # overlap the next round trip with this batch
                state["left"] = BATCH
                await nc.publish(req_subject, request, reply=inbox)
            cols, bodies = work([m.data for m in msgs])
            if bodies:
                await conn.execute(sql, *cols)
            on_commit(bodies)
            publish = nc.publish
            for m in msgs:
                await publish(m.reply, b"+ACK")
            done += len(msgs)
        await sub.unsubscribe()
        await nc.flush()
        return {"done": time.time()}
    finally:
        await nc.close()
        await conn.close()


BASELINES = {"baseline-plain": baseline_plain, "baseline-tuned": baseline_tuned, "baseline-lean": baseline_lean}
