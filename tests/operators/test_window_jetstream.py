"""A window longer than JetStream's ack_wait: the source's `in_progress` keeps held items from redelivery."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "connectors"))

from jetstream_fixtures import NATS_URL, add_stream, connect, unique, wait_for

from engine.compile.validate import load_graph
from engine.runtime.scheduler import Runner

GRAPH = """
version: 1
name: window_jetstream
connections:
  nats: {{type: nats, url: "{url}"}}
defaults: {{dead_letter: dead}}
nodes:
  src:
    type: jetstream_source
    config: {{connection: nats, stream: {stream}, durable: {durable}, ack_wait: 1s, batch: 100}}
  win:
    type: window
    inputs: [src]
    config: {{kind: tumbling, size: 4s, offset: {offset}, aggregates: {{n: {{op: count}}}}}}
  out:
    type: file_sink
    inputs: [win]
    config: {{path: out.ndjson}}
  dead:
    type: file_sink
    inputs: [src.errors, win.errors]
    config: {{path: dead.ndjson}}
"""


@pytest.mark.services
def test_items_held_longer_than_ack_wait_are_not_redelivered(tmp_path: Path) -> None:
    name = unique("window")
    stream, n = f"{name}_IN", 300
    out = tmp_path / "out.ndjson"

    def counted() -> int:
        text = out.read_text() if out.exists() else ""
        return sum(json.loads(line)["count"] for line in text.splitlines())

    async def main() -> Any:
        nc = await connect()
        js = nc.jetstream()
        try:
            await add_stream(js, stream)
            for i in range(n):
                await js.publish(f"{stream}.x", json.dumps({"i": i}).encode())
            # processing-time windows of 4 s aligned to start 0.2 s ago: held about 3.8 s > ack_wait 1 s
            offset = round((time.time() - 0.2) % 4, 3)
            (tmp_path / "graph.yaml").write_text(
                GRAPH.format(url=NATS_URL, stream=stream, durable=f"{name}-dur", offset=offset)
            )
            runner = Runner(load_graph(str(tmp_path / "graph.yaml")))
            task = asyncio.create_task(runner.run())
            await wait_for(lambda: counted() >= n, timeout=20, what="the window output")

            async def settled() -> bool:
                info = await js.consumer_info(stream, f"{name}-dur")
                return info.num_ack_pending == 0

            await wait_for(settled, timeout=10, what="acks to reach the server")
            info = await js.consumer_info(stream, f"{name}-dur")
            runner.stop()
            report = await task
            return info, report
        finally:
            await js.delete_stream(stream)
            await nc.close()

    info, report = asyncio.run(main())
    assert counted() == n  # each message counted once: nothing was redelivered into a second window
    assert info.num_redelivered == 0 and info.delivered.consumer_seq == n
    assert report.balanced and report.totals()["delivered"] == n
    assert (tmp_path / "dead.ndjson").read_text() == ""
    assert os.path.getsize(out) > 0
