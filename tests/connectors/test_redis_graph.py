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
    graph, diags = check_file(GRAPH, overrides=["nodes.events_in.config.min_idle=1500ms"])
    assert graph is not None
    assert [(d.code, d.line) for d in diags] == [("W351", 13)]
    assert "claim_interval (1s) should be below half of min_idle (1.5s)" in diags[0].message


CRASH_GRAPH = """
version: 1
name: redis_crash
defaults: {max_in_flight: 200, batch_size: 100}
connections:
  cache: {type: redis, url: "%(url)s"}
nodes:
  events_in:
    type: redis_stream_source
    config: {connection: cache, stream: "%(stream)s", group: g, consumer: worker-1, start: "0", batch: 100,
             block: 20ms}
  pace:  # the first run reads ahead of what it has written, so the kill -9 finds entries read, not acked
    type: rate_limit
    inputs: [events_in]
    config: {rate: 4000, burst: 200}
  cache:
    type: redis_cache_sink
    inputs: [pace]
    config: {connection: cache, key: '"%(p)s:e:" + msg.id', value: msg.id, ttl: 10m}
  log:
    type: redis_stream_sink
    inputs: [pace]
    config: {connection: cache, stream: "%(p)s.log", maxlen: null}
"""


@aio
async def test_streamdag_run_killed_9_then_terminated_then_resumed(tmp_path: Path) -> None:
    """`streamdag run` killed with SIGKILL mid-run, rerun and stopped with SIGTERM, rerun to the end:
    every entry lands in the (idempotent) cache exactly once, nothing stays pending."""
    import asyncio
    import signal
    import subprocess
    import sys

    p = unique("redis-crash")
    stream, n = f"{p}.events", 8_000
    r = aredis.Redis.from_url(REDIS_URL)
    graph = tmp_path / "crash.yaml"
    graph.write_text(CRASH_GRAPH % {"url": REDIS_URL, "stream": stream, "p": p})
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(stream, {"body": orjson.dumps({"id": f"{i:05d}"})})
    await pipe.execute()
    cli = [sys.executable, "-m", "engine.cli", "run", str(graph), "-q"]
    root = str(Path(__file__).parents[2])

    async def start(*extra: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(*cli, *extra, cwd=root, stderr=subprocess.PIPE)

    async def wait_log(more_than: int) -> int:
        deadline = asyncio.get_running_loop().time() + 30
        while (length := await r.xlen(f"{p}.log")) <= more_than:
            assert asyncio.get_running_loop().time() < deadline, "no progress"
            await asyncio.sleep(0.01)
        return int(length)

    try:
        proc = await start()
        seen = await wait_log(0)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        assert seen < n, "the run ended before the kill: make it longer"
        pending = (await r.xpending(stream, "g"))["pending"]
        assert pending > 0  # read, not acked: a crash between read and ack

        proc = await start("--set", "nodes.pace.config.rate=1000000")
        # the rerun first claims the killed run's pending entries, page by page: let it get through
        # them (each lands in the log again) before stopping it, or the pages it had not claimed yet
        # are rightly still pending after the stop
        await wait_log(await r.xlen(f"{p}.log") + pending - 1)
        proc.send_signal(signal.SIGTERM)  # graceful: what was read is written and acked before exit
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        assert (await r.xpending(stream, "g"))["pending"] == 0

        proc = await start("--set", "nodes.events_in.config.exit_when_idle=true", "--set", "nodes.pace.config.rate=1000000")
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        keys = [k async for k in r.scan_iter(match=f"{p}:e:*", count=5000)]
        assert len(keys) == n  # every entry processed, once per key
        assert await r.xlen(f"{p}.log") >= n  # at least once: the entries the kill left pending came again
        assert (await r.xpending(stream, "g"))["pending"] == 0
        logged = [orjson.loads(f[b"body"])["id"] for _, f in await r.xrange(f"{p}.log")]
        assert set(logged) == {f"{i:05d}" for i in range(n)}
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        found = [k async for k in r.scan_iter(match=f"{p}*", count=5000)]
        for i in range(0, len(found), 1000):
            await r.delete(*found[i:i + 1000])
        await r.aclose()
