"""End-to-end latency of HTTP-fed graphs starts when the request arrived, across JetStream too.

Graph 1, http_source → jetstream_sink: the client sends the request head, then the body 0.5 s later,
so every item's latency is at least 0.5 s if it is measured from the request's first byte (and not
from when the body was parsed). Graph 2, jetstream_source → file_sink, runs after graph 1: its
latency is measured from the same arrival, carried in the `Streamdag-Timestamp` header, so it is at
least the real time elapsed since the request, not the (later) time the stream stored the message.
"""

from __future__ import annotations

import asyncio
import os
import textwrap
import time
import uuid
from pathlib import Path

import nats
import orjson
import pytest

from engine.compile.validate import load_graph
from engine.observe.histogram import Histogram
from engine.runtime.scheduler import Runner
from tests.connectors.http_harness import aio
from tests.connectors.test_http_graph import Running

pytestmark = pytest.mark.services
NATS_URL = os.environ.get("STREAMDAG_TEST_NATS", "nats://127.0.0.1:4222")
BODY_DELAY = 0.5


def _min_age_at_least(h: Histogram, lower: float) -> bool:
    """No observation falls in a bucket whose upper bound is below `lower`."""
    return all(c == 0 for bound, c in zip(h.bounds, h.counts) if bound < lower)


async def _slow_post(host: str, port: int, body: bytes) -> tuple[int, float, float]:
    """POST with the body sent BODY_DELAY s after the head: (status, time before the head, before the body)."""
    r, w = await asyncio.open_connection(host, port)
    started = time.time()
    w.write(b"POST /api/v1/data/ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    await w.drain()
    await asyncio.sleep(BODY_DELAY)
    body_at = time.time()
    w.write(body)
    await w.drain()
    status = int((await r.readline()).split()[1])
    w.close()
    return status, started, body_at


@aio
async def test_latency_runs_from_request_arrival_through_jetstream(tmp_path: Path) -> None:
    name = f"LAT_{uuid.uuid4().hex[:10].upper()}"
    subject = f"lat_{name.lower()}.in"
    first = tmp_path / "first.yaml"
    first.write_text(textwrap.dedent(f"""
        version: 1
        name: http_to_js
        connections:
          nats: {{type: nats, url: "{NATS_URL}", streams: {{{name}: {{subjects: ["{subject}"]}}}}}}
        nodes:
          ingest: {{type: http_source, config: {{port: 0}}}}
          out: {{type: jetstream_sink, inputs: [ingest], config: {{connection: nats, subject: {subject}}}}}
    """))
    second = tmp_path / "second.yaml"
    second.write_text(textwrap.dedent(f"""
        version: 1
        name: js_to_file
        connections:
          nats: {{type: nats, url: "{NATS_URL}"}}
        nodes:
          src: {{type: jetstream_source, config: {{connection: nats, stream: {name}, durable: d, expires: 0.5s}}}}
          out: {{type: file_sink, inputs: [src], config: {{path: out.ndjson}}}}
    """))
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    try:
        run = Running(first)
        async with run as (runner, _):
            host, port = runner.nodes["ingest"].address
            status, started, body_at = await _slow_post(host, port, orjson.dumps([{"n": i} for i in range(5)]))
            assert status == 202
            replied = time.time()
        h1 = run.report.stats["out"].end_to_end
        assert h1.count == 5
        # from the first byte: at least the body's delay, at most until the reply
        assert _min_age_at_least(h1, BODY_DELAY) and h1.sum / h1.count <= replied - started
        stored = await js.get_msg(name, 1)
        assert started <= float(stored.headers["Streamdag-Timestamp"]) <= body_at

        runner2 = Runner(load_graph(str(second)))
        begun = time.time()
        task = asyncio.ensure_future(runner2.run())
        while len((tmp_path / "out.ndjson").read_bytes().splitlines() if (tmp_path / "out.ndjson").exists()
                  else []) < 5:
            await asyncio.sleep(0.02)
            assert not task.done()
        runner2.stop()
        report = await asyncio.wait_for(task, 10)
        ended = time.time()
        h2 = report.stats["out"].end_to_end
        assert h2.count == 5
        # arrival <= body_at - BODY_DELAY, commit >= begun: each age is at least this
        assert _min_age_at_least(h2, begun - body_at + BODY_DELAY)
        assert begun - body_at + BODY_DELAY <= h2.sum / h2.count <= ended - started
    finally:
        try:
            await js.delete_stream(name)
        finally:
            await nc.close()
