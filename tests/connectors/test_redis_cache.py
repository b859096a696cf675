"""redis_cache_sink and redis_lookup against the real Redis on 127.0.0.1:6379."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aredis

from engine.message import Msg
from engine.runtime.context import Resources
from engine.runtime.outputs import Outputs
from engine.runtime.stats import NodeStats
from operators.connectors.redis.cache import RedisCacheSink, RedisCacheSinkConfig
from operators.connectors.redis.lookup import RedisLookup, RedisLookupConfig

sys.path.insert(0, str(Path(__file__).parent))  # the harness, whether or not tests/connectors is a package
from redis_harness import REDIS_URL, aio, make_ctx, redis_keys, unique

pytestmark = pytest.mark.services


@pytest.fixture
def keys():
    yield from redis_keys()


async def cache_sink(res: Resources, **cfg) -> RedisCacheSink:
    sink = RedisCacheSink("users", RedisCacheSinkConfig(connection="cache", **cfg), make_ctx("users", res))
    await sink.start()
    return sink


@aio
async def test_values_with_ttl_and_bad_messages(keys) -> None:
    p = unique("redis-cache") + ":"
    keys += [f"{p}{i}" for i in range(3)]
    res = Resources()
    r = aredis.Redis.from_url(REDIS_URL)
    sink = await cache_sink(res, key=f'"{p}" + string(msg.id)', ttl="1h")
    batch = [Msg({"id": i, "name": f"n{i}"}) for i in range(3)] + [Msg({"name": "no id"}), Msg([1, 2])]
    failed = await sink.write(batch)
    assert [m.body for m, _ in failed] == [{"name": "no id"}, [1, 2]]
    assert all(reason.startswith("key: ") for _, reason in failed)
    assert orjson.loads(await r.get(f"{p}1")) == {"id": 1, "name": "n1"}
    assert 3590_000 < await r.pttl(f"{p}2") <= 3600_000
    text = await cache_sink(res, key=f'"{p}" + string(msg.id)', value="msg.name")
    assert await text.write([Msg({"id": 0, "name": "plain"})]) == []
    assert await r.get(f"{p}0") == b"plain" and await r.ttl(f"{p}0") == -1
    await r.aclose()
    await res.close()


@aio
async def test_versions_never_go_back_and_converge(keys) -> None:
    """Shuffled deliveries with duplicates end with the newest version of every key."""
    p = unique("redis-cache") + ":"
    res = Resources()
    r = aredis.Redis.from_url(REDIS_URL)
    events = [{"user": f"u{u}", "version": v, "name": f"u{u}-v{v}"} for u in range(20) for v in range(1, 6)]
    keys += [f"{p}{e['user']}" for e in events] + [f"{p}{e['user']}:version" for e in events]
    rng = random.Random(7)
    for mode in ("hash", "value"):
        sink = await cache_sink(res, key=f'"{p}" + msg.user', ttl="10m", version="msg.version", mode=mode)
        shuffled = events * 2
        rng.shuffle(shuffled)
        for i in range(0, len(shuffled), 37):
            assert await sink.write([Msg(e) for e in shuffled[i:i + 37]]) == []
        assert sink.written + sink.stale == 200 and sink.stale > 0
        for u in range(20):
            if mode == "hash":
                h = await r.hgetall(f"{p}u{u}")
                assert h == {b"user": f"u{u}".encode(), b"version": b"5", b"name": f"u{u}-v5".encode(),
                             b"_version": b"5"}
            else:
                assert orjson.loads(await r.get(f"{p}u{u}"))["version"] == 5
                assert await r.get(f"{p}u{u}:version") == b"5"
                assert await r.ttl(f"{p}u{u}:version") > 0
        assert await sink.write([Msg({"user": "u3", "version": 2, "name": "old"})]) == []
        assert sink.stale > 0
        failed = await sink.write([Msg({"user": "u3", "version": "7", "name": "text version"})])
        assert failed[0][1] == "version: expected a number, got '7'"
        await r.delete(*[f"{p}u{u}" for u in range(20)])
    await r.aclose()
    await res.close()


@aio
async def test_deletes_versioned_leave_a_tombstone_and_unversioned_just_delete(keys) -> None:
    """`delete`: the key goes; with a version, an older write replayed later does not bring it back
    (mode value keeps the version key as a tombstone), and an older delete does not remove a newer entry."""
    p = unique("redis-cache") + ":"
    keys += [f"{p}{k}" for k in ("a", "a:version", "b", "h")]
    res = Resources()
    r = aredis.Redis.from_url(REDIS_URL)
    sink = await cache_sink(res, key=f'"{p}" + msg.k', value="msg.row", version="msg.v", delete='msg.op == "delete"',
                            ttl="10m")
    msgs = [Msg({"op": "insert", "k": "a", "v": 1, "row": {"x": 1}}),
            Msg({"op": "delete", "k": "a", "v": 2, "row": None}),
            Msg({"op": "insert", "k": "a", "v": 1, "row": {"x": 1}}),  # replayed older write
            Msg({"op": "insert", "k": "b", "v": 5, "row": {"y": 5}}),
            Msg({"op": "delete", "k": "b", "v": 4, "row": None})]  # an older delete
    assert await sink.write(msgs) == []
    assert await r.get(f"{p}a") is None and await r.get(f"{p}a:version") == b"2" and await r.ttl(f"{p}a:version") > 0
    assert orjson.loads(await r.get(f"{p}b")) == {"y": 5} and sink.stale == 2
    plain = await cache_sink(res, key=f'"{p}" + msg.k', delete='msg.op == "delete"')
    assert await plain.write([Msg({"op": "insert", "k": "b"}), Msg({"op": "delete", "k": "b"})]) == []
    assert await r.exists(f"{p}b") == 0
    hashed = await cache_sink(res, key=f'"{p}" + msg.k', mode="hash", version="msg.v", delete='msg.op == "delete"')
    assert await hashed.write([Msg({"op": "insert", "k": "h", "v": 1}), Msg({"op": "delete", "k": "h", "v": 2})]) == []
    assert await r.exists(f"{p}h") == 0
    failed = await plain.write([Msg({"op": "delete", "k": "b"}), Msg({"k": "b"})])
    assert [reason for _, reason in failed] == ["delete: no such key: 'op'"]
    bad = await cache_sink(res, key=f'"{p}" + msg.k', delete="msg.op")
    assert [reason for _, reason in await bad.write([Msg({"op": "delete", "k": "b"})])] == [
        "delete: expected a bool, got 'delete'"]
    await r.aclose()
    await res.close()


def outputs(ports=("out",)) -> Outputs:
    return Outputs("lookup", ports, NodeStats("lookup", "operator", "redis_lookup"))


@aio
async def test_lookup_value_and_hash_with_miss_policies(keys) -> None:
    p = unique("redis-lookup") + ":"
    keys += [f"{p}a", f"{p}b", f"{p}h"]
    r = aredis.Redis.from_url(REDIS_URL)
    await r.set(f"{p}a", orjson.dumps({"tier": "gold"}))
    await r.set(f"{p}b", "plain text")
    await r.hset(f"{p}h", mapping={"tier": "silver", "n": "3"})
    res = Resources()
    cfg = RedisLookupConfig(connection="cache", key=f'"{p}" + msg.k', into="user", on_miss="port")
    op = RedisLookup("lookup", cfg, make_ctx("lookup", res))
    await op.start()
    assert RedisLookup.output_ports(cfg) == ("out", "miss")
    out = outputs(("out", "miss"))
    await op.process([Msg({"k": "a"}), Msg({"k": "b"}), Msg({"k": "zz"}), Msg({"x": 1}), Msg("str")], out)
    lists = out.take()
    assert [m.body for m in lists["out"]] == [{"k": "a", "user": {"tier": "gold"}},
                                              {"k": "b", "user": "plain text"}]
    assert [m.body for m in lists["miss"]] == [{"k": "zz"}]
    assert len(lists["errors"]) == 2 and op.hits == 2 and op.misses == 1
    hcfg = RedisLookupConfig(connection="cache", key=f'"{p}" + msg.k', mode="hash", on_miss="null")
    hop = RedisLookup("lookup2", hcfg, make_ctx("lookup2", res))
    await hop.start()
    out = outputs()
    await hop.process([Msg({"k": "h"}), Msg({"k": "nothing"})], out)
    assert [m.body for m in out.take()["out"]] == [{"k": "h", "lookup": {"tier": "silver", "n": 3}},
                                                   {"k": "nothing", "lookup": None}]
    await r.aclose()
    await res.close()
