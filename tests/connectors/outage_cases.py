"""The graphs, cases and checks of the outage tests (`test_outages.py`, `test_redis_refusals.py`):
each case is one sink's graph on its private service and how to read the real output back; the
driver runs `Runner`s while the services go down and come back; `check` holds the guarantees."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import redis.asyncio as aredis
from nats.js.api import AckPolicy, ConsumerConfig

from engine.compile.validate import load_graph
from engine.runtime.scheduler import Runner, RunReport
from tests.connectors.jetstream_fixtures import connect
from tests.connectors.outage_harness import (
    NatsService,
    PostgresService,
    RedisService,
    Service,
    Watch,
    outage,
    recovered,
)

__all__ = [
    "RATE",
    "Case",
    "N",
    "NatsCase",
    "NatsPipeCase",
    "PostgresCase",
    "PostgresPipeCase",
    "RedisCase",
    "RedisPipeCase",
    "check",
    "print_measured",
    "run_one",
    "run_with_outages",
]


# -- graphs: generate at a steady rate -> map -> the sink; dead letters to a file --------------------

# map -> the sink, dead letters to a file: the end of every graph here ({up}: the map's input)
_TAIL = """  tag:
    type: map
    inputs: [{{up}}]
    config: {{expr: '{{"id": msg.id, "v": msg.id * 2}}'}}
  out:
    type: {sink_type}
    inputs: [tag]
    config: {sink}
  dead:
    type: file_sink
    inputs: [out.errors]
    config: {{path: dead.ndjson}}
"""

_GRAPH = """
version: 1
name: outage_{kind}
defaults: {{dead_letter: dead, max_in_flight: 2000, batch_size: 200, stop_timeout: 10}}
connections:
  {connection}
nodes:
  gen:
    type: generate
    config: {{count: {n}, rate: {rate}, batch: 100, template: '{{"id": msg.i}}'}}
""" + _TAIL.replace("{{up}}", "gen")


class Case:
    """One sink's graph on its service, and how to read its real output back."""

    kind = ""
    service: Any
    redelivers = False  # the source may deliver a message again (the sink's dedupe keeps one)

    def graph(self, tmp: Path, n: int, rate: float) -> Any:
        folder = tmp / self.kind
        folder.mkdir()
        path = folder / "graph.yaml"
        path.write_text(self.yaml(n, rate))
        self.dead = folder / "dead.ndjson"
        return load_graph(str(path))

    def yaml(self, n: int, rate: float) -> str:
        return _GRAPH.format(kind=self.kind, n=n, rate=rate, **self.parts())

    def parts(self) -> dict[str, str]:
        raise NotImplementedError

    async def prepare(self) -> None:
        pass

    async def done(self) -> bool:
        """For a graph whose source never ends: everything is in the output and acknowledged."""
        return False

    async def output(self) -> tuple[list[int], int]:
        """(ids in the output, in order; writes counted by the service where it can: else the id count)."""
        raise NotImplementedError


class RedisCase(Case):
    kind = "redis"

    def __init__(self, service: RedisService):
        self.service = service

    def parts(self) -> dict[str, str]:
        return {"connection": f'r: {{type: redis, url: "{self.service.url}"}}',
                "sink_type": "redis_stream_sink", "sink": "{connection: r, stream: out, maxlen: null}"}

    async def output(self) -> tuple[list[int], int]:
        r = aredis.Redis.from_url(self.service.url)
        try:
            entries = await r.xrange("out")
        finally:
            await r.aclose()
        ids = [orjson.loads(f[b"body"])["id"] for _, f in entries]
        return ids, len(ids)


class NatsCase(Case):
    kind = "nats"

    def __init__(self, service: NatsService, window: float):
        self.service = service
        self.window = window  # the stream's duplicate window covers the outage and the retries after it

    def parts(self) -> dict[str, str]:
        return {"connection": f'nats: {{type: nats, url: "{self.service.url}", streams: '
                              f'{{OUT: {{subjects: ["out.>"], duplicate_window: {self.window:g}s}}}}}}',
                "sink_type": "jetstream_sink",
                "sink": '{connection: nats, subject: out.x, msg_id: "string(msg.id)"}'}

    async def output(self) -> tuple[list[int], int]:
        nc = await connect(self.service.url)
        try:
            js = nc.jetstream()
            stored = (await js.stream_info("OUT")).state.messages
            sub = await js.pull_subscribe("out.>", stream="OUT",
                                          config=ConsumerConfig(ack_policy=AckPolicy.NONE))
            ids: list[int] = []
            while len(ids) < stored:
                for m in await sub.fetch(1000, timeout=5):
                    ids.append(orjson.loads(m.data)["id"])
            await sub.unsubscribe()
            return ids, stored
        finally:
            await nc.close()


class PostgresCase(Case):
    """Upsert mode (idempotent); a trigger counts every row written, so a batch written twice
    (a lost COMMIT resolved wrongly) shows even though the upsert leaves one row per id."""

    kind = "postgres"

    def __init__(self, service: PostgresService):
        self.service = service

    def parts(self) -> dict[str, str]:
        return {"connection": f'pg: {{type: postgres, dsn: "{self.service.dsn}"}}',
                "sink_type": "postgres_sink",
                "sink": "{connection: pg, table: out, mode: upsert, key: [id], columns: "
                        "{id: {expr: msg.id, type: bigint}, v: {expr: msg.v, type: bigint}}}"}

    async def prepare(self) -> None:
        conn = await asyncpg.connect(self.service.dsn)
        try:
            await conn.execute("""
                CREATE TABLE out (id bigint PRIMARY KEY, v bigint);
                CREATE TABLE writes (id bigint);
                CREATE FUNCTION count_write() RETURNS trigger LANGUAGE plpgsql AS
                  $$ BEGIN INSERT INTO writes VALUES (NEW.id); RETURN NEW; END $$;
                CREATE TRIGGER count_write AFTER INSERT OR UPDATE ON out
                  FOR EACH ROW EXECUTE FUNCTION count_write();
            """)
        finally:
            await conn.close()

    async def output(self) -> tuple[list[int], int]:
        conn = await asyncpg.connect(self.service.dsn)
        try:
            ids = [r["id"] for r in await conn.fetch("SELECT id FROM out")]
            return ids, int(await conn.fetchval("SELECT count(*) FROM writes"))
        finally:
            await conn.close()


# -- the driver and the checks -------------------------------------------------------------------

async def run_with_outages(cases: list[Case], runners: list[Runner], watches: list[Watch], n: int,
                           seconds: float, times: int = 1) -> list[RunReport]:
    """Run the graphs; once a fifth of the messages is committed, stop every case's service for
    `seconds` (`times` times, with some progress in between), then let the runs finish (a graph
    whose source never ends is stopped once its case says it is `done`)."""
    pairs: list[tuple[Service, Watch]] = [(c.service, w) for c, w in zip(cases, watches)]
    samplers = [asyncio.create_task(w.run()) for w in watches]
    runs = [asyncio.create_task(r.run()) for r in runners]
    try:
        for w in watches:
            await w.wait(lambda w=w: w.committed >= n // 5, 30, "a fifth of the messages to commit")
        for k in range(times):
            await outage(pairs, seconds)
            await recovered(watches, 30)
            if k + 1 < times:
                for w in watches:
                    mark = w.committed
                    await w.wait(lambda w=w, mark=mark: w.committed >= min(n, mark + n // 10), 30, "progress")
        for c, r, t in zip(cases, runners, runs):
            deadline = time.monotonic() + 60
            while not t.done() and not await c.done():
                assert time.monotonic() < deadline, f"{c.kind}: output incomplete 60 s after the outage"
                await asyncio.sleep(0.1)
            r.stop()
        return list(await asyncio.wait_for(asyncio.gather(*runs), 60))
    finally:
        for r in runners:
            r.stop()
        await asyncio.wait(runs, timeout=30)
        for t in [*runs, *samplers]:
            t.cancel()
        await asyncio.gather(*runs, *samplers, return_exceptions=True)


async def check(case: Case, report: RunReport, watch: Watch, n: int) -> dict[str, Any]:
    """Everything in the output exactly once, nothing dead-lettered, the report balanced, the stall
    seen in the metrics during each outage and cleared after. Returns the measurements."""
    assert report.error is None, report.error
    assert report.balanced
    totals = report.totals()
    again = totals["entered"] - n  # redelivered by JetStream (ack_wait ran out while the sink waited)
    assert again == 0 or (case.redelivers and again > 0), totals
    assert totals == {"entered": n + again, "delivered": n + again, "filtered": 0, "dead_lettered": 0,
                      "nacked": 0, "in_flight": 0}
    assert not case.dead.exists() or case.dead.read_text() == ""
    ids, writes = await case.output()
    assert len(set(ids)) == n and sorted(set(ids)) == list(range(n)), f"{n - len(set(ids))} missing"
    assert len(ids) == n, f"{len(ids) - n} duplicated"
    assert writes == n, f"{writes - n} rows written twice"
    assert watch.classes == {"unavailable"}, (watch.classes, watch.reasons)
    during, after_ = watch.metric_during, watch.metric_after
    for o, (cls, value), (_, after) in zip(watch.outages, during, after_, strict=True):
        assert watch.stalled_during(o)
        assert cls == "unavailable" and value > 0, (cls, value)
        assert after == 0
    return {"recovery": [round(watch.recovery(o), 2) for o in watch.outages], "reasons": watch.reasons}


def print_measured(kind: str, measured: dict[str, Any], seconds: float) -> None:
    print(f"\n[outage] {kind}: recovery after each outage (s) {measured['recovery']}; test {seconds:.1f}s; "
          f"stalled on: {measured['reasons'][0][:160]}")


# -- one sink, a 3 s outage ------------------------------------------------------------------------

N, RATE = 12_000, 3000


async def run_one(case: Case, tmp_path: Path, seconds: float = 3.0) -> None:
    t0 = time.monotonic()
    await case.prepare()
    runner = Runner(case.graph(tmp_path, N, RATE))
    watch = Watch(runner, "out")
    [report] = await run_with_outages([case], [runner], [watch], N, seconds)
    print_measured(case.kind, await check(case, report, watch, N), time.monotonic() - t0)


# -- issue 14's own scenario: Redis in, Redis out, dead letters to Redis, three restarts --------------

_PIPE = """
version: 1
name: outage_redis_pipe
defaults: {{dead_letter: dead, max_in_flight: 2000, batch_size: 200, stop_timeout: 10}}
connections:
  r: {{type: redis, url: "{url}"}}
nodes:
  events:
    type: redis_stream_source
    config: {{connection: r, stream: in, group: g, start: "0", batch: 200, block: 50ms, exit_when_idle: true}}
  pace:
    type: rate_limit
    inputs: [events]
    config: {{rate: {rate}, burst: 200}}
  tag:
    type: map
    inputs: [pace]
    config: {{expr: '{{"id": msg.id, "v": msg.id * 2}}'}}
  out:
    type: redis_stream_sink
    inputs: [tag]
    config: {{connection: r, stream: out, maxlen: null}}
  dead:
    type: redis_stream_sink
    inputs: [out.errors]
    config: {{connection: r, stream: dead, maxlen: null}}
"""


class RedisPipeCase(RedisCase):
    """redis_stream_source -> rate_limit -> map -> redis_stream_sink, the dead letter a Redis stream
    too, all on the one Redis that restarts."""

    kind = "redis_pipe"

    def yaml(self, n: int, rate: float) -> str:
        return _PIPE.format(url=self.service.url, rate=rate)

    async def prepare(self) -> None:
        r = aredis.Redis.from_url(self.service.url)
        try:
            pipe = r.pipeline(transaction=False)
            for i in range(self.n):
                pipe.xadd("in", {"body": orjson.dumps({"id": i})})
            await pipe.execute()
        finally:
            await r.aclose()

    async def leftovers(self) -> dict[str, int]:
        r = aredis.Redis.from_url(self.service.url)
        try:
            return {"dead": await r.xlen("dead"), "pending": (await r.xpending("in", "g"))["pending"]}
        finally:
            await r.aclose()


# -- sources through an outage too: jetstream_source and postgres_source, on the sink's service -------

_SOURCE_PIPE = """
version: 1
name: outage_{kind}
defaults: {{dead_letter: dead, max_in_flight: 2000, batch_size: 200, stop_timeout: 10}}
connections:
  {connection}
nodes:
  events:
    type: {source_type}
    config: {source}
  pace:
    type: rate_limit
    inputs: [events]
    config: {{rate: {rate}, burst: 200}}
""" + _TAIL.replace("{{up}}", "pace")


class NatsPipeCase(NatsCase):
    """jetstream_source (stream IN, a durable consumer) -> rate_limit -> map -> jetstream_sink, one NATS."""

    kind = "nats_pipe"
    redelivers = True

    def yaml(self, n: int, rate: float) -> str:
        parts = self.parts()
        parts["connection"] = parts["connection"].replace("streams: {",
                                                          'streams: {IN: {subjects: ["in.>"]}, ')
        return _SOURCE_PIPE.format(kind=self.kind, rate=rate, source_type="jetstream_source",
                                   source="{connection: nats, stream: IN, durable: pipe, batch: 200, "
                                          "ack_wait: 5s}",
                                   **parts)

    async def prepare(self) -> None:
        nc = await connect(self.service.url)
        try:
            js = nc.jetstream()
            await js.add_stream(name="IN", subjects=["in.>"])
            for i in range(0, self.n, 500):
                ids = range(i, min(self.n, i + 500))
                await asyncio.gather(*(js.publish("in.x", orjson.dumps({"id": j})) for j in ids))
        finally:
            await nc.close()

    async def done(self) -> bool:
        nc = await connect(self.service.url)
        try:
            js = nc.jetstream()
            stored = (await js.stream_info("OUT")).state.messages
            c = await js.consumer_info("IN", "pipe")
            return bool(stored >= self.n and c.num_pending == 0 and c.num_ack_pending == 0)
        except Exception:  # noqa: BLE001 - not yet (the server is still coming back)
            return False
        finally:
            await nc.close()


class PostgresPipeCase(PostgresCase):
    """postgres_source (table src, to its end) -> rate_limit -> map -> postgres_sink, one PostgreSQL."""

    kind = "postgres_pipe"

    def yaml(self, n: int, rate: float) -> str:
        return _SOURCE_PIPE.format(kind=self.kind, rate=rate, source_type="postgres_source",
                                   source="{connection: pg, table: src, cursor: id, batch_size: 200, "
                                          "stop_at_end: true}",
                                   **self.parts())

    async def prepare(self) -> None:
        await super().prepare()
        conn = await asyncpg.connect(self.service.dsn)
        try:
            await conn.execute("CREATE TABLE src (id bigint PRIMARY KEY)")
            await conn.execute("INSERT INTO src SELECT generate_series(0, $1::bigint - 1)", self.n)
        finally:
            await conn.close()
