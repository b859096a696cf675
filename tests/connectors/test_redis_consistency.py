"""check-consistency: a stream feeding both a PostgreSQL table and the Redis cache, then compared."""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from pathlib import Path

import asyncpg
import orjson
import pytest
import redis.asyncio as aredis

from engine.message import Msg
from engine.runtime.context import Resources
from operators.connectors.redis.cache import RedisCacheSink, RedisCacheSinkConfig
from operators.connectors.redis.consistency import add_arguments, check_consistency, main, quote_table
from operators.connectors.redis.streams import RedisStreamSource, RedisStreamSourceConfig

sys.path.insert(0, str(Path(__file__).parent))  # the harness, whether or not tests/connectors is a package
from redis_harness import REDIS_URL, Run, aio, make_ctx, redis_keys, unique

pytestmark = pytest.mark.services
DSN = "postgresql://root@127.0.0.1:5432/test"


@pytest.fixture
def keys():
    yield from redis_keys()


def test_quote_table() -> None:
    assert quote_table("public.users") == '"public"."users"' and quote_table('we"ird') == '"we""ird"'
    for bad in ("", "a.b.c", "a."):
        with pytest.raises(ValueError):
            quote_table(bad)


@aio
async def test_pipeline_writing_both_is_consistent_then_differences_are_found(keys, capsys) -> None:
    name = unique("redis_cc").replace("-", "_")
    stream, prefix = name + ".events", name + ":"
    keys.append(stream)
    pg = await asyncpg.connect(DSN)
    r = aredis.Redis.from_url(REDIS_URL)
    await pg.execute(f'CREATE TABLE "{name}" (id int PRIMARY KEY, name text, version int NOT NULL)')
    try:
        events = [{"id": i, "name": f"n{i}-{v}", "version": v} for i in range(200) for v in (1, 2, 3)]
        random.Random(3).shuffle(events)  # out-of-order versions: both sides must keep the newest
        pipe = r.pipeline(transaction=False)
        for e in events:
            pipe.xadd(stream, {"body": orjson.dumps(e)})
        await pipe.execute()
        res = Resources()
        cache = RedisCacheSink("users", RedisCacheSinkConfig(
            connection="cache", key=f'"{prefix}" + string(msg.id)', mode="hash", version="msg.version",
            ttl="10m"), make_ctx("users", res))
        await cache.start()

        async def both(msgs: list[Msg]):
            await pg.executemany(
                f'INSERT INTO "{name}" AS t (id, name, version) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE '
                "SET name = excluded.name, version = excluded.version WHERE t.version <= excluded.version",
                [(m.body["id"], m.body["name"], m.body["version"]) for m in msgs])
            return await cache.write(msgs)

        src = RedisStreamSource("events_in", RedisStreamSourceConfig(
            connection="cache", stream=stream, group="g", start="0", batch=64, block="20ms", exit_when_idle=True),
            make_ctx("events_in", res))
        run = Run(src)
        await asyncio.wait_for(await run.start(both), 20)
        await run.finish()
        await res.close()
        keys.extend(f"{prefix}{i}" for i in range(200))

        report = await check_consistency(DSN, name, "id", REDIS_URL, prefix, version_column="version", batch=50,
                                         mode="hash")
        assert (report.rows, report.cached, report.matched, report.score) == (200, 200, 200, 1.0)

        await r.delete(f"{prefix}5")
        await pg.execute(f'DELETE FROM "{name}" WHERE id = 6')
        await pg.execute(f'UPDATE "{name}" SET version = 4 WHERE id = 7')
        report = await check_consistency(DSN, name, "id", REDIS_URL, prefix, version_column="version", batch=50,
                                         mode="hash")
        assert (report.missing_in_redis, report.missing_in_postgres, report.version_mismatch) == (1, 1, 1)
        assert report.matched == 197 and report.score == pytest.approx(197 / 200)
        assert report.examples["version_mismatch"] == [f"{prefix}7 (postgres 4, redis 3)"]
        assert report.examples["missing_in_postgres"] == [f"{prefix}6"]

        parser = argparse.ArgumentParser()
        add_arguments(parser)
        args = parser.parse_args(["--table", name, "--key-column", "id", "--key-prefix", prefix,
                                  "--version-column", "version", "--min-score", "0.98", "--mode", "hash"])
        assert await asyncio.to_thread(main, args) == 0
        assert "consistency score 0.9850" in capsys.readouterr().out
        args.min_score, args.json = 0.999, True
        assert await asyncio.to_thread(main, args) == 1
        assert orjson.loads(capsys.readouterr().out)["missing_in_redis"] == 1
    finally:
        await pg.execute(f'DROP TABLE IF EXISTS "{name}"')
        await pg.close()
        await r.aclose()


@aio
async def test_value_mode_skips_version_keys_and_works_without_versions(keys) -> None:
    name = unique("redis_cc").replace("-", "_")
    prefix = name + ":"
    pg = await asyncpg.connect(DSN)
    await pg.execute(f'CREATE TABLE "{name}" (k text PRIMARY KEY, version bigint NOT NULL)')
    try:
        await pg.executemany(f'INSERT INTO "{name}" VALUES ($1, $2)', [(f"k{i}", i) for i in range(30)])
        res = Resources()
        sink = RedisCacheSink("c", RedisCacheSinkConfig(connection="cache", key=f'"{prefix}" + msg.k',
                                                        version="msg.version"), make_ctx("c", res))
        await sink.start()
        assert await sink.write([Msg({"k": f"k{i}", "version": i}) for i in range(30)]) == []
        await res.close()
        keys.extend([f"{prefix}k{i}" for i in range(30)] + [f"{prefix}k{i}:version" for i in range(30)])
        report = await check_consistency(DSN, name, "k", REDIS_URL, prefix, version_column="version", mode="value")
        assert (report.rows, report.cached, report.matched, report.score) == (30, 30, 30, 1.0)
        await pg.execute(f'DELETE FROM "{name}" WHERE k = $1', "k3")
        report = await check_consistency(DSN, name, "k", REDIS_URL, prefix)  # keys only
        assert (report.rows, report.matched, report.missing_in_postgres, report.version_mismatch) == (29, 29, 1, 0)
    finally:
        await pg.execute(f'DROP TABLE IF EXISTS "{name}"')
        await pg.close()
