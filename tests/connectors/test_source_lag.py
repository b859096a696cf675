"""The `lag()` hook of each service source (exported as streamdag_source_lag_messages)."""

from __future__ import annotations

import asyncio
import textwrap
import uuid
from pathlib import Path

import asyncpg
import nats
import pytest
import redis.asyncio as aioredis

from engine.compile.validate import load_graph
from engine.runtime.scheduler import Runner

pytestmark = pytest.mark.services


def _runner(tmp_path: Path, source: str, connection: str) -> Runner:
    path = tmp_path / "g.yaml"
    path.write_text(textwrap.dedent(f"""
        version: 1
        name: lag
        connections:
          {connection}
        defaults: {{dead_letter: sink}}
        nodes:
          src:
            {source}
          sink: {{type: drop, inputs: [src]}}
    """))
    return Runner(load_graph(str(path)))


async def _lag_of(runner: Runner) -> int | None:
    src = runner.nodes["src"]
    await src.start()
    try:
        return await src.lag()
    finally:
        await src.stop()
        await runner.resources.close()


def test_jetstream_source_lag_is_num_pending(tmp_path: Path) -> None:
    name = f"LAG_{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        nc = await nats.connect("nats://127.0.0.1:4222")
        js = nc.jetstream()
        await js.add_stream(name=name, subjects=[f"{name}.>"])
        try:
            for i in range(7):
                await js.publish(f"{name}.x", b'{"i": %d}' % i)
            runner = _runner(tmp_path, f"{{type: jetstream_source, config: {{connection: nats, stream: {name}, "
                             f"durable: lagtest}}}}", "nats: {type: nats, url: 'nats://127.0.0.1:4222'}")
            assert await _lag_of(runner) == 7
        finally:
            await js.delete_stream(name)
            await nc.close()

    asyncio.run(main())


def test_redis_stream_source_lag_is_group_lag(tmp_path: Path) -> None:
    stream = f"lag-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        r = aioredis.from_url("redis://127.0.0.1:6379/0")
        try:
            for i in range(5):
                await r.xadd(stream, {"body": b'{"i": %d}' % i})
            await r.xgroup_create(stream, "g1", id="0")  # as the source does when it first runs
            runner = _runner(tmp_path, f"{{type: redis_stream_source, config: {{connection: cache, stream: {stream}, "
                             "group: g1, start: '0'}}", "cache: {type: redis, url: 'redis://127.0.0.1:6379/0'}")
            assert await _lag_of(runner) == 5
        finally:
            await r.delete(stream)
            await r.aclose()

    asyncio.run(main())


def test_postgres_source_lag_is_rows_after_the_position(tmp_path: Path) -> None:
    table = f"lag_{uuid.uuid4().hex[:8]}"
    dsn = "postgresql://root@127.0.0.1:5432/test"

    async def main() -> None:
        conn = await asyncpg.connect(dsn)
        await conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, body text)")
        await conn.executemany(f"INSERT INTO {table} VALUES ($1, 'x')", [(i,) for i in range(1, 10)])
        try:
            runner = _runner(tmp_path, f"{{type: postgres_source, config: {{connection: pg, table: {table}, "
                             f"cursor: id, position_table: {table}_pos, start_after: '4'}}}}",
                             f"pg: {{type: postgres, dsn: '{dsn}'}}")
            assert await _lag_of(runner) == 5  # ids 5..9
        finally:
            await conn.execute(f"DROP TABLE IF EXISTS {table}, {table}_pos")
            await conn.close()

    asyncio.run(main())
