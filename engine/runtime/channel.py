"""A node's bounded input: batches from all its input edges, limited in messages and bytes."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from engine.message import Bodies, Msg

__all__ = ["Channel"]


class Channel:
    """Bounded FIFO of message batches with several writers and one reader.

    A writer waits while the channel holds `capacity` messages or `capacity_bytes` bytes (a batch
    larger than the capacity is let in alone, so an oversized batch cannot deadlock). The reader
    takes up to `max_n` messages at once, merging small batches. When every writer has closed and
    the queue is empty, `get` returns None. A batch may be a `Bodies` (engine.message): merged only
    with `Bodies`, split like a list.

    So the channel never holds more than `capacity` messages and `capacity_bytes` bytes, except one
    batch over either bound, held alone (then it holds that batch: its messages and its bytes).
    `high_water` and `high_water_bytes` record the most it ever held, for tests and metrics.
    """

    __slots__ = (
        "_q",
        "_readable",
        "_writable",
        "_writers",
        "bytes",
        "capacity",
        "capacity_bytes",
        "count",
        "high_water",
        "high_water_bytes",
    )

    def __init__(self, capacity: int, capacity_bytes: int, writers: int):
        self.capacity = capacity
        self.capacity_bytes = capacity_bytes
        self.count = 0
        self.bytes = 0
        self.high_water = 0  # most messages ever held: tests assert the bound with it
        self.high_water_bytes = 0  # most bytes ever held
        self._q: deque[tuple[list[Msg] | Bodies, int]] = deque()
        self._writers = writers
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    @property
    def closed(self) -> bool:
        return self._writers <= 0

    async def put(self, batch: list[Msg] | Bodies) -> None:
        if not batch:
            return
        size = batch.total_size() if isinstance(batch, Bodies) else sum([m.size for m in batch])
        while self.count and (self.count + len(batch) > self.capacity or self.bytes + size > self.capacity_bytes):
            self._writable.clear()
            await self._writable.wait()
        self._q.append((batch, size))
        self.count += len(batch)
        self.bytes += size
        if self.count > self.high_water:
            self.high_water = self.count
        if self.bytes > self.high_water_bytes:
            self.high_water_bytes = self.bytes
        self._readable.set()

    def close_writer(self) -> None:
        self._writers -= 1
        self._readable.set()

    async def get(self, max_n: int, timeout: float | None = None) -> list[Msg] | Bodies | None:
        """Up to `max_n` messages; [] on timeout; None once closed and drained."""
        while not self._q:
            if self._writers <= 0:
                return None
            self._readable.clear()
            if timeout is None:
                await self._readable.wait()
            else:
                try:
                    await asyncio.wait_for(self._readable.wait(), timeout)
                except TimeoutError:
                    return []
        batch, size = self._q.popleft()
        if isinstance(batch, Bodies):
            return self._get_bodies(batch, size, max_n)
        if len(batch) > max_n:  # take a part; the rest stays first in line
            rest = batch[max_n:]
            batch = batch[:max_n]
            rest_size = sum([m.size for m in rest])
            self._q.appendleft((rest, rest_size))
            size -= rest_size
        elif len(batch) < max_n and self._q and not isinstance(self._q[0][0], Bodies):
            batch = list(batch)
            while self._q and len(batch) + len(self._q[0][0]) <= max_n:
                more, more_size = self._q.popleft()
                if isinstance(more, Bodies):  # merged with Bodies only: it stays first in line
                    self._q.appendleft((more, more_size))
                    break
                batch.extend(more)
                size += more_size
        return self._taken(batch, size)

    def _get_bodies(self, batch: Bodies, size: int, max_n: int) -> Bodies:
        """`get` for a `Bodies` first in line: split, or merged with the `Bodies` behind it."""
        q = self._q
        if len(batch) > max_n:
            batch, rest = batch.split(max_n)
            rest_size = rest.total_size()
            q.appendleft((rest, rest_size))
            size -= rest_size
        else:
            while q and type(q[0][0]) is Bodies and len(batch) + len(q[0][0]) <= max_n:
                more, more_size = q.popleft()
                batch = batch.concat(more)  # type: ignore[arg-type]
                size += more_size
        return self._taken(batch, size)

    def _taken(self, batch: Any, size: int) -> Any:
        self.count -= len(batch)
        self.bytes -= size
        self._writable.set()
        return batch
