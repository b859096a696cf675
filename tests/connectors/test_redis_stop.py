"""A graceful stop of `redis_stream_source` in the middle of a burst leaves nothing pending.

An XREADGROUP in flight when the stop comes returns its entries to the source, which emits them:
they drain through the graph and are XACKed before the run ends. Nothing stays in the group's
pending list (where only the reclaim after `min_idle`, 60 s here, would find it again), so the next
run, under another consumer name, gets the rest of the stream at once.
"""

from __future__ import annotations

import asyncio
import random
import textwrap
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from engine.compile.validate import load_graph
from engine.runtime.scheduler import Runner
from tests.connectors.jetstream_fixtures import wait_for
from tests.connectors.redis_harness import REDIS_URL, unique

pytestmark = pytest.mark.services
BURST = 3000


def _graph(tmp_path: Path, stream: str, out: str) -> Path:
    path = tmp_path / f"{out}.yaml"
    path.write_text(textwrap.dedent(f"""
        version: 1
        name: redis_stop
        connections:
          cache: {{type: redis, url: "{REDIS_URL}"}}
        nodes:
          src:
            type: redis_stream_source
            config: {{connection: cache, stream: "{stream}", group: g, start: "0", batch: 50, block: 200ms,
                      min_idle: 60s}}
          out: {{type: file_sink, inputs: [src], config: {{path: {out}.ndjson, with_meta: true}}}}
    """))
    return path


def _ids(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [orjson.loads(line)["meta"]["id"] for line in path.read_bytes().splitlines() if line.strip()]


async def _burst(client, stream: str) -> list[str]:
    ids = []
    for i in range(0, BURST, 10):
        pipe = client.pipeline(transaction=False)
        for j in range(i, i + 10):
            pipe.xadd(stream, {"body": orjson.dumps({"n": j})})
        ids.extend(x.decode() for x in await pipe.execute())
        await asyncio.sleep(0.001)
    return ids


async def _stop_round(client, work: Path, stream: str) -> None:
    """Stop the graph at some instant of a burst; nothing may stay pending, the rest comes at once."""
    work.mkdir()
    await client.delete(stream)
    runner = Runner(load_graph(str(_graph(work, stream, "first"))))
    task = asyncio.ensure_future(runner.run())
    publisher = asyncio.ensure_future(_burst(client, stream))
    at = random.randint(50, BURST // 2)
    await wait_for(lambda: len(_ids(work / "first.ndjson")) >= at, 20, "burst flowing")
    runner.stop()
    report = await asyncio.wait_for(task, 10)
    ids = await publisher
    assert report.error is None and report.balanced
    committed = _ids(work / "first.ndjson")
    assert 0 < len(committed) < BURST
    pending = await client.xpending(stream, "g")
    assert pending["pending"] == 0, f"left pending after the stop: {pending}"
    # the next run (another generated consumer name) gets the rest at once
    runner = Runner(load_graph(str(_graph(work, stream, "second"))))
    task = asyncio.ensure_future(runner.run())
    try:
        await wait_for(lambda: len(committed) + len(_ids(work / "second.ndjson")) >= BURST, 5,
                       "the rest of the stream")
    finally:
        runner.stop()
        assert (await asyncio.wait_for(task, 10)).error is None
    assert sorted(committed + _ids(work / "second.ndjson")) == sorted(ids)


def test_stop_in_the_middle_of_a_burst_leaves_nothing_pending(tmp_path: Path) -> None:
    async def main() -> None:
        client = aioredis.from_url(REDIS_URL)
        stream = unique("stop")
        try:
            for attempt in range(3):
                await _stop_round(client, tmp_path / str(attempt), stream)
        finally:
            await client.delete(stream)
            await client.aclose()

    asyncio.run(main())
