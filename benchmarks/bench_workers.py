"""`run --workers`: 1 vs 2 workers on the same backlog, CPU per message, and takeover after kill -9.

* JetStream -> filter -> map -> validate -> PostgreSQL (insert_ignore on the id): N messages
  published first, then `streamdag run G --workers W`; the clock runs from the first row to the
  last (start-up excluded; it is reported apart), CPU is the supervisor's and its workers' user +
  system time (RUSAGE_CHILDREN after it exits) over N.
* Redis -> map -> Redis: the same, `exit_when_idle`, counted on the output stream.
* Takeover with the default settings (JetStream `ack_wait` 5 s; Redis `min_idle` 5 s +
  `claim_interval` 1 s): 2 workers, kill -9 one mid-run, time until every message delivered
  before the kill is in the table (the killed worker's are redelivered to the others).

Run: `python benchmarks/bench_workers.py [N] [takeover]` (takeover: only the kill -9 part) or `python -m pytest benchmarks/bench_workers.py -s`.
On a shared 2-core machine, 2 workers compete with NATS, PostgreSQL and Redis for the same cores:
the figures say what a second process buys here, not what a second host would.
"""

from __future__ import annotations

import asyncio
import os
import resource
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import nats
import orjson
import redis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.workers_harness import Supervised

NATS_URL = os.environ.get("STREAMDAG_TEST_NATS", "nats://127.0.0.1:4222")
PG_DSN = os.environ.get("STREAMDAG_TEST_PG", "postgresql://root@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("STREAMDAG_TEST_REDIS", "redis://127.0.0.1:6379/0")

JS_GRAPH = """\
version: 1
name: bench_workers_js
connections:
  nats: {{type: nats, url: "{nats}"}}
  pg: {{type: postgres, dsn: "{pg}"}}
schemas:
  order: {{type: object, required: [id, total], properties: {{id: {{type: integer}}, total: {{type: number}}}}}}
defaults: {{dead_letter: dead}}
nodes:
  read:
    type: jetstream_source
    config: {{connection: nats, stream: {stream}, durable: etl, subjects: ["{stream}.>"], batch: 500{extra}}}
  big: {{type: filter, inputs: [read], config: {{expr: "msg.amount >= 5.0"}}}}
  price: {{type: map, inputs: [big], config: {{expr: '{{"id": msg.id, "total": double(msg.qty) * msg.amount}}'}}}}
  check: {{type: validate, inputs: [price], config: {{schema: order}}}}
  store:
    type: postgres_sink
    inputs: [check]
    config: {{connection: pg, table: {table}, mode: insert_ignore, key: [id], columns: {{id: msg.id, total: msg.total}}}}
  dead: {{type: drop, inputs: [read.errors, check.errors, store.errors]}}
"""

REDIS_GRAPH = """\
version: 1
name: bench_workers_redis
connections:
  r: {{type: redis, url: "{redis}"}}
nodes:
  read:
    type: redis_stream_source
    config: {{connection: r, stream: {stream}, group: etl, start: '0', batch: 500, block: 50ms, exit_when_idle: true}}
  price: {{type: map, inputs: [read], config: {{expr: '{{"id": msg.id, "total": double(msg.qty) * msg.amount}}'}}}}
  out: {{type: redis_stream_sink, inputs: [price], config: {{connection: r, stream: {stream}.out, maxlen: null}}}}
"""


def _body(i: int) -> bytes:
    return orjson.dumps({"id": i, "amount": float(i % 10), "qty": 1 + i % 3, "customer": f"c-{i % 97}"})


def _kept(n: int) -> int:
    return sum(1 for i in range(n) if i % 10 >= 5)


async def _pg(query: str) -> Any:
    conn = await asyncpg.connect(PG_DSN)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


async def _js_setup(stream: str, n: int) -> None:
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    await js.add_stream(name=stream, subjects=[f"{stream}.>"])
    for i in range(n):
        await nc.publish(f"{stream}.o", _body(i))
    await nc.flush()
    while n and (await js.stream_info(stream)).state.messages < n:
        await asyncio.sleep(0.05)
    await nc.close()


async def _js_info(stream: str) -> tuple[int, int]:
    nc = await nats.connect(NATS_URL)
    try:
        info = await nc.jetstream().consumer_info(stream, "etl")
        return int(info.delivered.stream_seq), int(info.num_redelivered or 0)
    finally:
        await nc.close()


async def _js_teardown(stream: str) -> None:
    nc = await nats.connect(NATS_URL)
    try:
        await nc.jetstream().delete_stream(stream)
    finally:
        await nc.close()


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _rows(table: str, below: int | None = None) -> int:
    where = "" if below is None else f" WHERE id < {below}"
    return int(asyncio.run(_pg(f'SELECT count(*) FROM "{table}"{where}')))


def _timed(run: Supervised, count: Any, want: int, t_start: float) -> tuple[float, float]:
    """(start-up: launch to the first result, steady: first result to the last), polling `count()`."""
    run.wait_until(lambda: count() > 0, 120, "the first result")
    t_first = time.monotonic()
    run.wait_until(lambda: count() >= want, 600, f"{want} results")
    return t_first - t_start, time.monotonic() - t_first


def bench_jetstream_pg(n: int, workers: int) -> dict[str, Any]:
    stream, table = f"bench_w_{uuid.uuid4().hex[:8]}", f"bench_w_{uuid.uuid4().hex[:8]}"
    asyncio.run(_js_setup(stream, n))
    asyncio.run(_pg(f'CREATE TABLE "{table}" (id bigint PRIMARY KEY, total double precision)'))
    graph = Path(f"/tmp/{stream}.yaml")
    graph.write_text(JS_GRAPH.format(nats=NATS_URL, pg=PG_DSN, stream=stream, table=table, extra=""))
    want = _kept(n)
    try:
        cpu0, t0 = _cpu(), time.monotonic()
        run = Supervised(graph, workers)
        startup, steady = _timed(run, lambda: _rows(table), want, t0)
        run.signal()
        code, per, _ = run.finish()
        cpu = _cpu() - cpu0
    finally:
        asyncio.run(_js_teardown(stream))
        asyncio.run(_pg(f'DROP TABLE IF EXISTS "{table}"'))
        graph.unlink()
    assert code == 0, run.text
    return {"pipeline": "jetstream>filter>map>validate>postgres", "workers": workers, "n": n,
            "msg_per_s": round(n / steady), "startup_s": round(startup, 2), "cpu_us_per_msg": round(cpu / n * 1e6, 1),
            "split": [w["in"] for _, w in sorted(per.items())]}


def bench_redis(n: int, workers: int) -> dict[str, Any]:
    stream = f"bench-w-{uuid.uuid4().hex[:8]}"
    c = redis.Redis.from_url(REDIS_URL)
    pipe = c.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(stream, {"body": _body(i)})
    pipe.execute()
    graph = Path(f"/tmp/{stream}.yaml")
    graph.write_text(REDIS_GRAPH.format(redis=REDIS_URL, stream=stream))
    try:
        cpu0, t0 = _cpu(), time.monotonic()
        run = Supervised(graph, workers)
        startup, steady = _timed(run, lambda: c.xlen(f"{stream}.out"), n, t0)
        code, per, _ = run.finish()
        cpu = _cpu() - cpu0
    finally:
        c.delete(stream, f"{stream}.out")
        c.close()
        graph.unlink()
    assert code == 0, run.text
    return {"pipeline": "redis>map>redis", "workers": workers, "n": n, "msg_per_s": round(n / steady),
            "startup_s": round(startup, 2), "cpu_us_per_msg": round(cpu / n * 1e6, 1),
            "split": [w["in"] for _, w in sorted(per.items())]}


def _paced(graph: str, first: str, rate: int = 1200) -> str:
    """`graph` with a rate_limit between `read` and node `first`: each worker holds messages in flight
    (2 x 1,200/s of capacity for 2,000/s arriving)."""
    graph = graph.replace(f"  {first}: {{type: ", f"  pace: {{type: rate_limit, inputs: [read], config: {{rate: {rate}}}}}\n"
                          f"  {first}: {{type: ", 1)
    head, _, rest = graph.partition(f"  {first}: {{")
    return head + f"  {first}: {{" + rest.replace("inputs: [read]", "inputs: [pace]", 1)


class Publisher:
    """Messages at a steady `rate` from a thread, ids 0, 1, 2...: arrival below the workers' capacity,
    so nothing queues in the survivors and the takeover measures only the dead worker's messages."""

    def __init__(self, send: Any, rate: float = 2000.0):
        import threading

        self.send, self.rate, self.sent = send, rate, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self.stop.is_set():
            due = int((time.monotonic() - t0) * self.rate)
            if due > self.sent:
                self.send(range(self.sent, due))
                self.sent = due
            time.sleep(0.01)

    def finish(self) -> int:
        self.stop.set()
        self.thread.join()
        return self.sent


def _takeover(run: Supervised, pub: Publisher, done: Any, delivered: Any, expected: Any = lambda k: k
              ) -> tuple[float, int, int]:
    """kill -9 worker 1 once 1,000 results are in, and stop publishing (so the survivor has no backlog to
    confound the figure). (seconds until everything delivered before the kill is done, how many of those
    were still missing 0.5 s after the kill: the killed worker's, messages sent in all)."""
    run.wait_until(lambda: done(None) >= 1000, 120, "1000 results")
    before = delivered()
    run.kill_worker(1)
    t0 = time.monotonic()
    sent = pub.finish()
    time.sleep(0.5)
    held = expected(before) - done(before)
    run.wait_until(lambda: done(before) >= expected(before), 120, "the killed worker's messages")
    return time.monotonic() - t0, held, sent


def takeover_jetstream() -> dict[str, Any]:
    """Default ack_wait; messages arrive at 2,000/s while the workers run."""
    stream, table = f"bench_t_{uuid.uuid4().hex[:8]}", f"bench_t_{uuid.uuid4().hex[:8]}"
    asyncio.run(_js_setup(stream, 0))
    asyncio.run(_pg(f'CREATE TABLE "{table}" (id bigint PRIMARY KEY, total double precision)'))
    graph = Path(f"/tmp/{stream}.yaml")
    graph.write_text(_paced(JS_GRAPH.format(nats=NATS_URL, pg=PG_DSN, stream=stream, table=table, extra=""), "big"))
    loop = asyncio.new_event_loop()
    nc = loop.run_until_complete(nats.connect(NATS_URL))

    def send(ids: range) -> None:
        async def go() -> None:
            for i in ids:
                await nc.publish(f"{stream}.o", _body(i))
            await nc.flush()
        loop.run_until_complete(go())

    try:
        run = Supervised(graph, 2)
        run.wait_until(lambda: len(run.started()) == 2, 60, "two workers")
        takeover, held, sent = _takeover(run, Publisher(send), lambda below: _rows(table, below),
                                         lambda: asyncio.run(_js_info(stream))[0], _kept)
        run.wait_until(lambda: _rows(table) >= _kept(sent), 120, "every message")
        run.signal()
        code, per, _ = run.finish()
        lost = _kept(sent) - _rows(table)
    finally:
        loop.run_until_complete(nc.close())
        loop.close()
        asyncio.run(_js_teardown(stream))
        asyncio.run(_pg(f'DROP TABLE IF EXISTS "{table}"'))
        graph.unlink()
    return {"takeover": "jetstream (ack_wait default 5s)", "seconds": round(takeover, 2), "held_by_killed": held, "lost": lost,
            "exit": code, "runs": [w["runs"] for _, w in sorted(per.items())]}


def takeover_redis() -> dict[str, Any]:
    """Default min_idle and claim_interval; entries arrive at 2,000/s while the workers run."""
    stream = f"bench-t-{uuid.uuid4().hex[:8]}"
    c = redis.Redis.from_url(REDIS_URL)
    graph = Path(f"/tmp/{stream}.yaml")
    graph.write_text(_paced(REDIS_GRAPH.format(redis=REDIS_URL, stream=stream).replace(", exit_when_idle: true", ""),
                            "price", rate=800))  # XREADGROUP takes what is there: hold some
    out = f"{stream}.out"

    def send(ids: range) -> None:
        pipe = c.pipeline(transaction=False)
        for i in ids:
            pipe.xadd(stream, {"body": _body(i)})
        pipe.execute()

    def done(below: int | None) -> int:
        if below is None:
            return int(c.xlen(out))
        return sum(1 for _, f in c.xrange(out) if orjson.loads(f[b"body"])["id"] < below)

    def delivered() -> int:
        last = c.xinfo_groups(stream)[0]["last-delivered-id"]
        return len(c.xrange(stream, "-", last))

    try:
        run = Supervised(graph, 2)
        run.wait_until(lambda: len(run.started()) == 2, 60, "two workers")
        takeover, held, sent = _takeover(run, Publisher(send), done, delivered)
        run.wait_until(lambda: len({orjson.loads(f[b"body"])["id"] for _, f in c.xrange(out)}) >= sent, 120,
                       "every entry")
        run.signal()
        code, per, _ = run.finish()
    finally:
        c.delete(stream, out)
        c.close()
        graph.unlink()
    return {"takeover": "redis (min_idle 5s + claim_interval 1s defaults)", "seconds": round(takeover, 2),
            "held_by_killed": held,
            "exit": code, "runs": [w["runs"] for _, w in sorted(per.items())]}


def main(n: int = 100_000, only_takeover: bool = False) -> list[dict[str, Any]]:
    results = []
    for workers in () if only_takeover else (1, 2):
        results.append(bench_jetstream_pg(n, workers))
        print(results[-1], flush=True)
    for workers in () if only_takeover else (1, 2):
        results.append(bench_redis(n, workers))
        print(results[-1], flush=True)
    for fn in (takeover_jetstream, takeover_redis):
        results.append(fn())
        print(results[-1], flush=True)
    return results


def test_workers_benchmark() -> None:
    results = main(int(os.environ.get("BENCH_N", "100000")))
    assert all(r.get("exit", 0) == 0 for r in results)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000, "takeover" in sys.argv[2:])
