"""dedupe against the real Redis on 127.0.0.1:6379."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "connectors"))
from redis_harness import REDIS_URL, aio, make_ctx, unique

from engine.message import AckTracker, Msg
from engine.runtime.context import Resources
from engine.runtime.outputs import Outputs
from engine.runtime.stats import NodeStats
from operators.dedupe import Dedupe, DedupeConfig

pytestmark = pytest.mark.services


def cleanup(prefix: str) -> None:
    import redis

    c = redis.Redis.from_url(REDIS_URL)
    found = list(c.scan_iter(match=prefix + "*", count=1000))
    if found:
        c.delete(*found)
    c.close()


@pytest.fixture
def prefix():
    p = unique("redis-dedupe") + ":"
    yield p
    cleanup(p)


async def dedupe(res: Resources, prefix: str, node: str = "d", **cfg) -> Dedupe:
    op = Dedupe(node, DedupeConfig(connection="cache", key="msg.id", prefix=prefix, **cfg), make_ctx(node, res))
    await op.start()
    return op


@aio
async def test_duplicates_are_dropped_acked_and_counted(prefix) -> None:
    res = Resources()
    tracker = AckTracker()
    first, second = await dedupe(res, prefix), await dedupe(res, prefix, node="other-process")
    stats = NodeStats("d", "operator", "dedupe")
    out = Outputs("d", ("out",), stats)
    batch = [Msg({"id": i % 7}, {}, tracker.new(i)) for i in range(20)] + [Msg({"no": "id"}, {}, tracker.new(99))]
    await first.process(batch, out)
    lists = out.take()
    assert [m.body["id"] for m in lists["out"]] == list(range(7))
    assert first.duplicates == 13 and stats.filtered == 13 and tracker.filtered == 13
    assert sorted(tracker.take()[0]) == [i for i in range(20) if i >= 7]
    assert len(lists["errors"]) == 1 and lists["errors"][0].body["error"].startswith("dedupe key:")
    out2 = Outputs("d", ("out",), NodeStats("d", "operator", "dedupe"))  # a second process shares the window
    await second.process([Msg({"id": 3}), Msg({"id": 100})], out2)
    assert [m.body["id"] for m in out2.take()["out"]] == [100] and second.duplicates == 1
    await res.close()


@aio
async def test_redelivery_of_the_same_entry_passes_and_keys_expire(prefix) -> None:
    import redis.asyncio as aredis

    res = Resources()
    op = await dedupe(res, prefix, ttl="200ms")
    out = Outputs("d", ("out",), NodeStats("d", "operator", "dedupe"))
    meta = {"stream": "s", "id": "1-0"}
    await op.process([Msg({"id": "a"}, meta)], out)
    await op.process([Msg({"id": "a"}, meta), Msg({"id": "a"}, {"stream": "s", "id": "2-0"})], out)
    # the same entry delivered again (crash before commit) passes; another entry with that key does not
    assert [m.meta["id"] for m in out.take()["out"]] == ["1-0", "1-0"] and op.duplicates == 1
    r = aredis.Redis.from_url(REDIS_URL)
    assert 0 < await r.pttl(prefix + "a") <= 200
    await r.aclose()
    await res.close()
