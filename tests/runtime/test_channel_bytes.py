"""A node's input channel is bounded in bytes too (`defaults.capacity_bytes`), not only in messages.

Large messages, a small byte bound, a loose message bound and a slow sink: the bytes the sink's
channel holds never pass `capacity_bytes`, except one batch larger than the bound, held alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.compile.validate import load_graph
from engine.observe.metrics import GraphCollector
from engine.observe.snapshot import stats_snapshot
from engine.runtime.channel import Channel
from engine.runtime.scheduler import Runner
from tests.runtime.test_nodes import GATES, RECORD

BOUND = 4096  # defaults.capacity_bytes below; the message bound (2048) is never the one that binds
SIZE = 1000  # bytes each message counts for


@pytest.fixture(autouse=True)
def _clean() -> None:
    RECORD.clear()
    GATES.clear()


def run_slow_sink(write_graph: Callable[[str], Path], batch: int) -> Runner:
    path = write_graph(f"""
        version: 1
        name: bytes_bound
        defaults: {{capacity: 2048, capacity_bytes: {BOUND}, max_in_flight: 100000}}
        nodes:
          src: {{type: test_source, config: {{count: 240, batch: {batch}, size: {SIZE}}}}}
          slow: {{type: test_sink, inputs: [src], config: {{delay: 0.001}}, batch_size: 1}}
          dead: {{type: file_sink, inputs: [src.errors, slow.errors], config: {{path: dead.ndjson}}}}
    """)
    runner = Runner(load_graph(str(path)))
    report = asyncio.run(runner.run())
    assert report.error is None and report.balanced
    assert len(RECORD["slow"]["bodies"]) == 240
    return runner


def test_queued_bytes_never_pass_capacity_bytes(write_graph: Callable[[str], Path]) -> None:
    runner = run_slow_sink(write_graph, batch=1)
    ch = runner.channels["slow"]
    assert ch.capacity_bytes == BOUND
    # the sink is slow, so the channel filled up to the byte bound (4 messages), and never past it
    assert BOUND - SIZE < ch.high_water_bytes <= BOUND
    assert ch.high_water == BOUND // SIZE


def test_an_oversized_batch_is_let_in_alone(write_graph: Callable[[str], Path]) -> None:
    """A batch over the bound (6 x 1000 B > 4096 B) enters only an empty channel: one batch at most."""
    runner = run_slow_sink(write_graph, batch=6)
    ch = runner.channels["slow"]
    assert ch.high_water_bytes == 6 * SIZE and ch.high_water == 6


def test_byte_high_water_in_snapshot_and_metrics(write_graph: Callable[[str], Path]) -> None:
    runner = run_slow_sink(write_graph, batch=1)
    high = runner.channels["slow"].high_water_bytes
    assert stats_snapshot(runner)["nodes"]["slow"]["queue"]["high_water_bytes"] == high
    samples = {
        (s.name, s.labels["node"]): s.value
        for fam in GraphCollector(runner).collect()
        if fam.name.startswith("streamdag_edge_queue")
        for s in fam.samples
    }
    assert samples[("streamdag_edge_queue_high_water_bytes", "slow")] == high
    assert samples[("streamdag_edge_queue_capacity_bytes", "slow")] == BOUND


def test_channel_writer_waits_for_bytes_not_only_messages() -> None:
    """The same bound on the Channel alone, step by step: room in messages, none in bytes."""

    async def scenario() -> None:
        from engine.message import Msg

        ch = Channel(capacity=100, capacity_bytes=BOUND, writers=1)
        await ch.put([Msg(i, size=SIZE) for i in range(3)])  # 3000 B
        blocked = asyncio.ensure_future(ch.put([Msg(3, size=SIZE), Msg(4, size=SIZE)]))  # +2000 B > 4096
        for _ in range(20):
            await asyncio.sleep(0)
        assert not blocked.done() and (ch.count, ch.bytes) == (3, 3 * SIZE)
        assert [m.body for m in await ch.get(2)] == [0, 1]  # 1000 B left: the writer gets in
        await asyncio.wait_for(blocked, 5)
        assert (ch.count, ch.bytes, ch.high_water_bytes) == (3, 3 * SIZE, 3 * SIZE)

    asyncio.run(scenario())
