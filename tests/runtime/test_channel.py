"""`Channel` on its own: bounds in messages and bytes, merging and splitting batches, writers
closing, `get` with a timeout, and which waiting writers a read lets in.

Waits are on the channel's state: `_idle()` lets every ready task run, then the test looks at
which writers are still waiting. No test sleeps for a time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from engine.message import Msg
from engine.runtime.channel import Channel


def run(test: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(test())  # type: ignore[arg-type]


async def _idle() -> None:
    """Let every task that can run do so (a writer that can get in has got in)."""
    for _ in range(10):
        await asyncio.sleep(0)


def msgs(*ids: int, size: int = 10) -> list[Msg]:
    return [Msg(i, size=size) for i in ids]


def bodies(batch: list[Msg] | None) -> list[Any] | None:
    return None if batch is None else [m.body for m in batch]


def test_fifo_and_the_counts_of_what_is_held() -> None:
    async def go() -> None:
        ch = Channel(capacity=100, capacity_bytes=10_000, writers=1)
        await ch.put(msgs(1, 2, size=5))
        await ch.put(msgs(3, size=7))
        assert (ch.count, ch.bytes) == (3, 17)
        assert bodies(await ch.get(10)) == [1, 2, 3]
        assert (ch.count, ch.bytes) == (0, 0)

    run(go)


def test_get_merges_whole_small_batches_up_to_max_n_and_never_more() -> None:
    async def go() -> None:
        ch = Channel(100, 10_000, 1)
        for batch in ([1, 2], [3, 4], [5, 6, 7], [8]):
            await ch.put(msgs(*batch))
        assert bodies(await ch.get(5)) == [1, 2, 3, 4]  # [5, 6, 7] would make 7 > 5: left for the next get
        assert bodies(await ch.get(5)) == [5, 6, 7, 8]
        assert ch.count == 0

    run(go)


def test_get_splits_a_batch_larger_than_max_n_and_keeps_the_rest_first() -> None:
    async def go() -> None:
        ch = Channel(100, 10_000, 1)
        await ch.put([Msg(i, size=i) for i in range(1, 6)])  # sizes 1..5: 15 bytes
        await ch.put(msgs(99, size=100))
        first = await ch.get(2)
        assert bodies(first) == [1, 2]
        assert (ch.count, ch.bytes) == (4, 3 + 4 + 5 + 100)  # only the taken messages' bytes left
        assert bodies(await ch.get(3)) == [3, 4, 5]
        assert bodies(await ch.get(3)) == [99]
        assert (ch.count, ch.bytes) == (0, 0)

    run(go)


def test_an_empty_batch_is_not_queued() -> None:
    async def go() -> None:
        ch = Channel(1, 1024, 1)
        await ch.put(msgs(1))
        await ch.put([])  # would wait if it counted: the channel is full
        assert ch.count == 1 and len(ch._q) == 1

    run(go)


def test_a_writer_waits_while_the_message_capacity_is_reached() -> None:
    async def go() -> None:
        ch = Channel(capacity=3, capacity_bytes=10_000, writers=1)
        await ch.put(msgs(1, 2))
        writer = asyncio.ensure_future(ch.put(msgs(3, 4)))  # 2 + 2 > 3
        await _idle()
        assert not writer.done() and ch.count == 2
        assert bodies(await ch.get(1)) == [1]  # 1 + 2 <= 3: room now
        await _idle()
        assert writer.done() and ch.count == 3
        assert ch.high_water == 3

    run(go)


def test_a_writer_waits_while_the_byte_capacity_is_reached() -> None:
    async def go() -> None:
        ch = Channel(capacity=100, capacity_bytes=1000, writers=1)
        await ch.put(msgs(1, size=600))
        writer = asyncio.ensure_future(ch.put(msgs(2, size=500)))  # 1100 bytes > 1000
        await _idle()
        assert not writer.done() and ch.bytes == 600
        await ch.get(10)
        await _idle()
        assert writer.done() and ch.bytes == 500

    run(go)


def test_a_batch_larger_than_the_capacity_gets_in_alone() -> None:
    async def go() -> None:
        ch = Channel(capacity=2, capacity_bytes=100, writers=1)
        await ch.put(msgs(1, 2, 3, 4, 5, size=50))  # 5 messages, 250 bytes, into an empty channel
        assert ch.count == 5 and ch.high_water == 5
        second = asyncio.ensure_future(ch.put(msgs(6)))
        await _idle()
        assert not second.done()  # nothing else while it is there
        assert bodies(await ch.get(5)) == [1, 2, 3, 4, 5]
        await _idle()
        assert second.done() and bodies(await ch.get(5)) == [6]

    run(go)


def test_a_read_lets_in_only_the_writers_that_fit() -> None:
    async def go() -> None:
        ch = Channel(capacity=4, capacity_bytes=10_000, writers=2)
        await ch.put(msgs(1, 2, 3, 4))
        a = asyncio.ensure_future(ch.put(msgs(10, 11)))
        b = asyncio.ensure_future(ch.put(msgs(20, 21)))
        await _idle()
        assert not a.done() and not b.done()
        await ch.get(2)  # room for one of them
        await _idle()
        assert [a.done(), b.done()].count(True) == 1 and ch.count == 4
        await ch.get(2)
        await _idle()
        assert a.done() and b.done() and ch.count == 4
        assert ch.high_water == 4  # never above the capacity while the writers raced
        rest = (await ch.get(10)) or []
        assert sorted(m.body for m in rest) == [10, 11, 20, 21]

    run(go)


def test_get_waits_for_a_writer_and_returns_its_batch() -> None:
    async def go() -> None:
        ch = Channel(10, 1000, 1)
        reader = asyncio.ensure_future(ch.get(10))
        await _idle()
        assert not reader.done()
        await ch.put(msgs(7))
        assert bodies(await reader) == [7]

    run(go)


def test_get_with_a_timeout_returns_an_empty_list_when_nothing_comes() -> None:
    async def go() -> None:
        ch = Channel(10, 1000, 1)
        assert await ch.get(10, timeout=0.01) == []
        assert not ch.closed
        await ch.put(msgs(1))
        assert bodies(await ch.get(10, timeout=0.01)) == [1]  # data already there: no wait

    run(go)


def test_get_returns_none_only_when_every_writer_closed_and_the_queue_is_drained() -> None:
    async def go() -> None:
        ch = Channel(10, 1000, writers=2)
        await ch.put(msgs(1))
        ch.close_writer()
        assert not ch.closed
        assert bodies(await ch.get(10)) == [1]
        reader = asyncio.ensure_future(ch.get(10))
        await _idle()
        assert not reader.done()  # one writer is still open
        await ch.put(msgs(2))
        assert bodies(await reader) == [2]
        await ch.put(msgs(3))
        ch.close_writer()
        assert ch.closed
        assert bodies(await ch.get(10)) == [3]  # what was sent before the close still comes out
        assert await ch.get(10) is None
        assert await ch.get(10, timeout=0.01) is None

    run(go)


def test_the_last_writer_closing_wakes_a_waiting_reader() -> None:
    async def go() -> None:
        ch = Channel(10, 1000, writers=1)
        reader = asyncio.ensure_future(ch.get(10))
        await _idle()
        assert not reader.done()
        ch.close_writer()
        assert await asyncio.wait_for(reader, 5) is None

    run(go)


@pytest.mark.parametrize("capacity,batches,max_n", [(5, [1, 3, 2, 4, 1, 5], 3), (8, [8, 1, 1, 7, 2], 4)])
def test_every_message_comes_out_once_in_order_under_backpressure(capacity: int, batches: list[int],
                                                                   max_n: int) -> None:
    async def go() -> None:
        ch = Channel(capacity, 10_000, writers=1)
        sent: list[int] = []

        async def write() -> None:
            n = 0
            for size in batches:
                batch = list(range(n, n + size))
                n += size
                sent.extend(batch)
                await ch.put(msgs(*batch))
            ch.close_writer()

        writer = asyncio.ensure_future(write())
        got: list[int] = []
        while (batch := await ch.get(max_n)) is not None:
            assert 0 < len(batch) <= max_n
            got.extend(m.body for m in batch)
        await writer
        assert got == sent == list(range(sum(batches)))
        assert ch.high_water <= max(capacity, *batches)

    run(go)
