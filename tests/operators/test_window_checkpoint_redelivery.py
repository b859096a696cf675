"""A JetStream redelivery that reaches a checkpointing window after newer items of its stream were
folded and checkpointed (a message naked with a delay) is folded, once: the checkpoint records the
exact sequences it covers, not the highest one (which took the late redelivery as covered)."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "connectors"))

from jetstream_fixtures import NATS_URL, add_stream, connect, unique, wait_for

from engine.compile.validate import load_graph
from engine.runtime.scheduler import Runner
from tests.connectors.postgres_harness import DSN, sql

FIRST, N, KEYS, NAKED = 200, 300, 5, 201  # the earlier runs fold 1..200; 201 is naked for DELAY s
DELAY = 6

GRAPH = """
version: 1
name: ck_redelivery
connections:
  nats: {{type: nats, url: "{nats}"}}
  pg: {{type: postgres, dsn: "{dsn}"}}
defaults: {{dead_letter: dead}}
nodes:
  src:
    type: jetstream_source
    config: {{connection: nats, stream: {stream}, durable: d, batch: 20, ack_wait: 30s, expires: 0.5}}
  win:
    type: window
    inputs: [src]
    config:
      kind: tumbling
      size: 1s
      key: msg.k
      time: event
      timestamp: msg.t
      allowed_lateness: 1h        # a late item updates its window: this test is about coverage
      idle_timeout: 0.5s
      tick_interval: 0.1s
      checkpoint: {{connection: pg, interval: 200ms, table: {table}}}
      aggregates: {{n: {{op: count}}, total: {{op: sum, expr: msg.v}}}}
  out:
    type: file_sink
    inputs: [win]
    config: {{path: out.ndjson, mode: append}}
  dead:
    type: file_sink
    inputs: [src.errors, win.errors, win.late]
    config: {{path: dead.ndjson, mode: append}}
"""


def body(i: int) -> dict[str, Any]:
    """Item i (stream sequence i + 1): 1..200 in [0, 2) s of event time, 201..300 in [2, 3)."""
    return {"k": f"k{i % KEYS}", "t": i / 100, "v": i}


@pytest.mark.services
def test_a_message_naked_with_a_delay_folds_once_after_newer_ones_were_checkpointed(tmp_path: Path) -> None:
    name = unique("ckredeliver")
    stream, table = f"{name}_IN", f"ck_{uuid.uuid4().hex[:10]}"
    expected: dict[tuple[str, str], tuple[int, int]] = {}
    n: Counter[tuple[str, int]] = Counter()
    total: Counter[tuple[str, int]] = Counter()
    for i in range(N):
        b = body(i)
        n[(b["k"], int(b["t"]))] += 1
        total[(b["k"], int(b["t"]))] += b["v"]
    for (k, start), count in n.items():
        expected[(k, f"1970-01-01T00:00:0{start}Z")] = (count, total[(k, start)])
    graph = tmp_path / "graph.yaml"
    graph.write_text(GRAPH.format(nats=NATS_URL, dsn=DSN, stream=stream, table=table))
    out = tmp_path / "out.ndjson"

    def rows() -> dict[tuple[str, str], tuple[int, int]]:
        """The last emission of each window (an update replaces the earlier one, as an upsert does)."""
        text = out.read_text() if out.exists() else ""
        last = {}
        for line in text.splitlines():
            w = json.loads(line)
            last[(w["key"], w["start"])] = (w["count"], w["aggregates"]["total"])
        return last

    async def main() -> tuple[dict[str, int], Any]:
        nc = await connect()
        js = nc.jetstream()
        try:
            await add_stream(js, stream)
            for i in range(FIRST):
                await js.publish(f"{stream}.x", json.dumps(body(i)).encode())

            # the first run folds 1..200 and checkpoints them; a stop saves and acks everything
            first = Runner(load_graph(str(graph)))
            task = asyncio.create_task(first.run())

            async def settled() -> bool:
                try:
                    info = await js.consumer_info(stream, "d")
                except Exception:  # noqa: BLE001 - the consumer is not created yet
                    return False
                return info.ack_floor.stream_seq == FIRST and info.num_ack_pending == 0

            await wait_for(settled, timeout=20, what="the first 200 items checkpointed and acked")
            first.stop()
            await task

            # an earlier consumer of the durable takes 201 and naks it with a delay; 202..300 follow
            for i in range(FIRST, N):
                await js.publish(f"{stream}.x", json.dumps(body(i)).encode())
            sub = await js.pull_subscribe_bind("d", stream)
            (msg,) = await sub.fetch(1, timeout=5)
            assert msg.metadata.sequence.stream == NAKED
            await msg.nak(delay=DELAY)
            await sub.unsubscribe()

            # the restart restores the checkpoint, folds 202..300 (checkpointed every 200 ms), then 201
            second = Runner(load_graph(str(graph)))
            task = asyncio.create_task(second.run())
            try:
                async def newer_checkpointed() -> bool:  # every item acked but 201
                    info = await js.consumer_info(stream, "d")
                    return info.delivered.stream_seq == N and info.num_ack_pending == 1

                await wait_for(newer_checkpointed, timeout=DELAY, what="202..300 checkpointed and acked")
                covered = second.nodes["win"].parts[None].covered[stream]
                assert covered.covers(N) and not covered.covers(NAKED)  # 201 is still to come
                try:
                    await wait_for(lambda: rows() == expected, timeout=DELAY + 20, what="every window's final row")
                except TimeoutError as exc:
                    got = rows()
                    wrong = {w: (got.get(w), want) for w, want in expected.items() if got.get(w) != want}
                    raise AssertionError(f"windows wrong (got, want): {wrong}") from exc
                metrics = second.nodes["win"].metrics()
                info = await js.consumer_info(stream, "d")
            finally:
                second.stop()
                await task
            return metrics, info
        finally:
            await js.delete_stream(stream)
            await nc.close()
            await sql(f'DROP TABLE IF EXISTS "{table}"')

    metrics, info = asyncio.run(main())
    assert metrics["checkpoint_restores"] == 1 and metrics["checkpoint_replayed_skipped"] == 0
    assert info.delivered.consumer_seq == N + 1  # every message delivered once, 201 twice
    assert (tmp_path / "dead.ndjson").read_text() == ""
