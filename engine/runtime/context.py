"""What a running node can reach: its connections' settings, schemas, a clock, shared resources."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.partitions import PartitionEvents

if TYPE_CHECKING:  # imported where awaited: node types import this module, and `validate` loads no asyncio
    import asyncio

    from engine.api import RetryPolicy, Upstream

__all__ = ["NodeContext", "Resources", "WorkerInfo"]


@dataclass(frozen=True)
class WorkerInfo:
    """Which worker of a graph this process is (`streamdag run --workers N`): slot `index` of `count`
    on this host, and an `id` unique among the graph's workers on every host (`<host>-<pid>`).

    Finite sources split their input by it (`owns`); `postgres_source` reads its hash range of rows.
    A process run without `--workers` is worker 0 of 1 and owns everything."""

    index: int = 0
    count: int = 1
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    started: float = field(default_factory=time.time)

    @property
    def id(self) -> str:
        return f"{self.host}-{self.pid}"

    def owns(self, n: int) -> bool:
        """Whether item number `n` (a line, a generated message) is this worker's to read."""
        return n % self.count == self.index


class Resources:
    """Clients shared by the nodes of one run (one NATS connection per `connections` entry...)."""

    def __init__(self) -> None:
        self._items: dict[str, Any] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._closers: list[Callable[[], Awaitable[None]]] = []

    async def get(self, key: str, factory: Callable[[], Awaitable[Any]],
                  close: Callable[[Any], Awaitable[None]] | None = None) -> Any:
        if key in self._items:
            return self._items[key]
        import asyncio

        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:  # two nodes starting at once must share one client, not make two
            if key not in self._items:
                item = await factory()
                self._items[key] = item
                if close is not None:
                    self._closers.append(lambda: close(item))
        return self._items[key]

    def items(self) -> dict[str, Any]:
        """The shared clients by key (read-only view for monitors)."""
        return dict(self._items)

    async def close(self) -> None:
        while self._closers:
            try:
                await self._closers.pop()()
            except Exception:
                logging.getLogger("streamdag").exception("closing a shared resource failed")
        self._items.clear()


class NodeContext:
    def __init__(self, node_id: str, connections: dict[str, dict[str, Any]], schemas: dict[str, Any],
                 resources: Resources, base_dir: str = ".", clock: Callable[[], float] = time.time,
                 worker: WorkerInfo | None = None, partitions: PartitionEvents | None = None,
                 upstream: tuple[Upstream, ...] | None = None,
                 load: Callable[[str, str], tuple[int, int]] | None = None, json_bodies: bool = False):
        self.node_id = node_id
        # every message reaches this node with a body as a JSON decoder gave it (the plan's `json_inputs`)
        self.json_bodies = json_bodies
        # the sources that reach this node (None: not known, a node made outside a run)
        self.upstream = upstream
        self._load = load  # (node, port) -> (held, capacity) of its fullest downstream channel
        # the run's partition ownership (engine.partitions): one object shared by every node of a run
        self.partitions = partitions if partitions is not None else PartitionEvents()
        self.worker = worker or WorkerInfo()
        self.connections = connections
        self.schemas = schemas
        self.resources = resources
        self.base_dir = base_dir
        self.clock = clock
        # set by the scheduler on stop (SIGTERM): `flush` then means "graph stopping", not "end of input"
        self.draining = False
        # set by the scheduler once every node has started: the run is under way (a node's stop()
        # after a failed start knows that nothing ran)
        self.started = False
        # the node's retry policy (its `retry`, else `defaults.retry`), set by the scheduler, which
        # applies it: a sink that tracks its attempts at a batch can tell the last one (None: outside a run)
        self.retry: RetryPolicy | None = None
        # set by a connector when its service is reachable again (its client reconnected): the
        # scheduler then retries a batch it holds back at once, not after the rest of its backoff
        import asyncio

        self.retry_now = asyncio.Event()
        self.log = logging.getLogger(f"streamdag.node.{node_id}")

    def connection(self, name: str) -> dict[str, Any]:
        """Settings of a named connection, `${ENV}` already interpolated."""
        return self.connections[name]

    def path(self, p: str) -> str:
        """A path from the config, relative to the graph file's folder."""
        import os

        return p if os.path.isabs(p) else os.path.join(self.base_dir, p)

    def channel_load(self, port: str) -> tuple[int, int]:
        """(messages held, capacity) of the fullest channel fed by `port`; (0, 0) outside a run."""
        return self._load(self.node_id, port) if self._load is not None else (0, 0)
