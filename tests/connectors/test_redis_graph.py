"""graphs/redis_events.yaml run end to end by the real scheduler against the real Redis."""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aredis

from engine.compile.validate import load_graph
from engine.runtime.scheduler import Runner

sys.path.insert(0, str(Path(__file__).parent))  # the harness, whether or not tests/connectors is a package
from redis_harness import REDIS_URL, aio, unique

pytestmark = pytest.mark.services
GRAPH = str(Path(__file__).parents[2] / "graphs" / "redis_events.yaml")


@aio
async def test_redis_events_graph_end_to_end() -> None:
    p = unique("redis-graph")
    streams = {"in": f"{p}.events", "out": f"{p}.clean", "dead": f"{p}.dead"}
    r = aredis.Redis.from_url(REDIS_URL)
    events = [{"event_id": f"e{i}", "user": f"u{i % 50}", "version": i, "kind": "click", "junk": 1}
              for i in range(500)]
    pipe = r.pipeline(transaction=False)
    for e in events + events[:20]:  # 20 duplicates
        pipe.xadd(streams["in"], {"body": orjson.dumps(e)})
    pipe.xadd(streams["in"], {"body": b"{oops"})
    pipe.xadd(streams["in"], {"payload": b"{}"})
    await pipe.execute()
    graph = load_graph(GRAPH, overrides=[
        f"nodes.events_in.config.stream={streams['in']}", "nodes.events_in.config.start=0",  # unquoted: an int in YAML
        "nodes.events_in.config.exit_when_idle=true", "nodes.events_in.config.block=50ms",
        f"nodes.unique.config.prefix='{p}:seen:'",
        f"nodes.events_out.config.stream={streams['out']}", f"nodes.dead.config.stream={streams['dead']}",
        f"nodes.users.config.key='\"{p}:user:\" + msg.user'",
    ])
    try:
        report = await Runner(graph).run()
        assert report.error is None and report.balanced
        assert report.totals() == {"entered": 522, "delivered": 500, "filtered": 20, "dead_lettered": 2,
                                   "nacked": 0, "in_flight": 0}
        out = await r.xrange(streams["out"])
        assert sorted(orjson.loads(f[b"body"])["version"] for _, f in out) == list(range(500))
        assert "junk" not in orjson.loads(out[0][1][b"body"])
        for u in (0, 49):
            cached = orjson.loads(await r.get(f"{p}:user:u{u}"))
            assert cached["version"] == 450 + u and await r.get(f"{p}:user:u{u}:version") == str(450 + u).encode()
        dead = [orjson.loads(f[b"body"]) for _, f in await r.xrange(streams["dead"])]
        assert sorted(d["error"].split(":")[0] for d in dead) == ["body is not valid JSON", "entry has no field 'body'"]
        assert (await r.xpending(streams["in"], "etl"))["pending"] == 0
    finally:
        found = [k async for k in r.scan_iter(match=f"{p}*", count=1000)]
        if found:
            await r.delete(*found)
        await r.aclose()


def test_example_graph_validates_and_claim_interval_is_checked() -> None:
    from engine.compile.validate import check_file

    graph, diags = check_file(GRAPH)
    assert graph is not None and diags == []
    graph, diags = check_file(GRAPH, overrides=["nodes.events_in.config.min_idle=30s"])
    assert graph is not None
    assert [(d.code, d.line) for d in diags] == [("W351", 13)]
    assert "claim_interval (20s) should be below half of min_idle (30s)" in diags[0].message
