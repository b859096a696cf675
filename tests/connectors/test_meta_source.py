"""Every source sets `meta.source` to its node id (README: CEL sees `meta.source`), the connectors
too: a JetStream message and a Redis stream entry, read by a real graph."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path

import pytest
import redis

from engine.compile.validate import load_graph
from engine.runtime.scheduler import Runner
from tests.connectors.jetstream_fixtures import NATS_URL, temporary_stream, wait_for
from tests.connectors.redis_harness import REDIS_URL, aio, unique

pytestmark = pytest.mark.services


async def _first_meta(tmp_path: Path, connection: str, source: str) -> dict:
    path = tmp_path / "g.yaml"
    path.write_text(textwrap.dedent(f"""
        version: 1
        name: meta_source
        defaults: {{dead_letter: out}}
        connections:
          bus: {connection}
        nodes:
          inbox: {source}
          tagged: {{type: map, inputs: [inbox], config: {{expr: '{{"from": meta.source}}'}}}}
          out: {{type: file_sink, inputs: [tagged], config: {{path: out.ndjson, with_meta: true}}}}
    """))
    runner = Runner(load_graph(str(path)))
    task = asyncio.ensure_future(runner.run())
    out = tmp_path / "out.ndjson"
    await wait_for(lambda: out.exists() and out.read_text().strip(), 10, "a message written")
    runner.stop()
    report = await asyncio.wait_for(task, 10)
    assert report.error is None
    return json.loads(out.read_text().splitlines()[0])


@aio
async def test_jetstream_source_sets_meta_source(tmp_path: Path) -> None:
    async with temporary_stream("metasrc") as (name, js):
        await js.publish(f"{name}.x", b'{"n": 1}')
        line = await _first_meta(tmp_path, f'{{type: nats, url: "{NATS_URL}"}}',
                                 f"{{type: jetstream_source, config: {{connection: bus, stream: {name}, durable: d}}}}")
    assert line["body"] == {"from": "inbox"} and line["meta"]["source"] == "inbox"


@aio
async def test_redis_stream_source_sets_meta_source(tmp_path: Path) -> None:
    stream = unique("metasrc")
    r = redis.Redis.from_url(REDIS_URL)
    r.xadd(stream, {"body": b'{"n": 1}'})
    try:
        line = await _first_meta(tmp_path, f'{{type: redis, url: "{REDIS_URL}"}}',
                                 f"{{type: redis_stream_source, config: {{connection: bus, stream: {stream}, "
                                 "group: g, field: body, start: '0'}}")
    finally:
        r.delete(stream)
    assert line["body"] == {"from": "inbox"} and line["meta"]["source"] == "inbox"
