"""What the parts of a run share (`RunState`), and what the observe layer may read (`RunView`).

The runner's parts (engine.runtime.router, .retry, .loops, .acks) hold one `RunState`: the plan,
the node instances, their stats, channels, trackers and the stop/fatal flags. Observers (metrics,
`top`, the status page, progress) get a `RunView`: read-only properties over the same state, so
nothing outside the runtime reads or sets a private field of the runner.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from engine.message import AckTracker
from engine.partitions import PartitionEvents
from engine.runtime.channel import Channel
from engine.runtime.context import Resources, WorkerInfo
from engine.runtime.outputs import Outputs, SourceOutput
from engine.runtime.stats import NodeStats

if TYPE_CHECKING:
    from engine.compile.plan import Plan
    from engine.compile.validate import Graph

__all__ = ["RunState", "RunView", "as_view"]

log = logging.getLogger("streamdag.runtime")


class RunState:
    """The mutable state of one run, shared by the runner's parts."""

    def __init__(self, plan: Plan, clock: Callable[[], float]):
        self.plan = plan
        self.graph: Graph = plan.graph
        self.clock = clock
        self.resources = Resources()
        self.worker = WorkerInfo()  # which worker of the graph this run is (`--workers`)
        self.partitions = PartitionEvents()  # partition ownership, reported by partitioned sources
        self.nodes: dict[str, Any] = {}
        self.stats: dict[str, NodeStats] = {}
        self.channels: dict[str, Channel] = {}
        self.inline: dict[str, Outputs] = {}  # inline operator -> its outputs (it runs in its host's task)
        self.trackers: dict[str, AckTracker] = {}
        self.outputs: dict[str, SourceOutput] = {}
        self.fatal: BaseException | None = None
        self.fatal_event = asyncio.Event()
        self.stopping = False
        # the node being started ("" before the first); None once every node has started
        self.starting: str | None = ""
        self.stopped_at = 0.0  # time.monotonic() of the first stop()
        self.stop_event = asyncio.Event()
        # (node, port) -> the `streamdag tap` subscribers there (engine.observe.tap); empty unless someone taps:
        # the router checks it once per batch
        self.taps: dict[tuple[str, str], list[Any]] = {}
        # engine.observe.tracing.Tracing when `run --trace`: the node loops check it once per batch
        self.tracer: Any = None

    def stop(self) -> None:
        """Stop reading from sources; what is in flight drains and is acknowledged."""
        if not self.stopping:
            self.stopped_at = time.monotonic()
            self.stop_event.set()
            log.info("drain started: sources stop reading, in-flight messages drain",
                     extra={"event": "drain_started", "graph": self.graph.spec.name})
        self.stopping = True
        for out in self.outputs.values():
            out.stopping.set()
        for node in self.nodes.values():  # nodes that hold messages (window) tell a drain from end of input
            ctx = getattr(node, "ctx", None)
            if ctx is not None:
                ctx.draining = True

    def channel_load(self, node_id: str, port: str) -> tuple[int, int]:
        """(messages held, capacity) of the fullest channel that `node_id`'s `port` feeds, looking
        through inline operators (they have no channel: their own ports' targets count); a channel
        fuller in bytes than in messages reports its byte fill scaled to its message capacity."""
        best, best_fill = (0, 0), -1.0
        todo, seen = [(node_id, port)], set()
        while todo:
            edge = todo.pop()
            for target in self.plan.routes.get(edge, ()):
                if target in seen:
                    continue
                seen.add(target)
                ch = self.channels.get(target)
                if ch is None:  # inline: what it feeds
                    todo += [(target, p) for p in self.graph.nodes[target].ports if p != "errors"]
                    continue
                fill = max(ch.count / ch.capacity, ch.bytes / ch.capacity_bytes)
                if fill > best_fill:
                    best_fill = fill
                    best = (max(ch.count, round(fill * ch.capacity)), ch.capacity)
        return best

    def set_fatal(self, exc: BaseException) -> None:
        if self.fatal is None:
            self.fatal = exc
            log.error("graph stopping: %s", exc)
        self.fatal_event.set()
        self.stop()

    def drain_seconds_left(self) -> float:
        """Seconds left of `defaults.stop_timeout` since the stop (inf while not stopping)."""
        if not self.stopping:
            return float("inf")
        return self.graph.spec.defaults.stop_timeout - (time.monotonic() - self.stopped_at)


class RunView:
    """A read-only view of a run for the observe layer (metrics, top, status page, progress)."""

    __slots__ = ("_s",)

    def __init__(self, state: RunState):
        self._s = state

    @property
    def name(self) -> str:
        return self._s.graph.spec.name

    @property
    def graph(self) -> Graph:
        return self._s.graph

    @property
    def plan(self) -> Plan:
        return self._s.plan

    @property
    def routes(self) -> Mapping[tuple[str, str], tuple[str, ...]]:
        return self._s.plan.routes

    @property
    def stats(self) -> Mapping[str, NodeStats]:
        return MappingProxyType(self._s.stats)

    @property
    def channels(self) -> Mapping[str, Channel]:
        return MappingProxyType(self._s.channels)

    @property
    def trackers(self) -> Mapping[str, AckTracker]:
        return MappingProxyType(self._s.trackers)

    @property
    def nodes(self) -> Mapping[str, Any]:
        """The node instances, for their optional hooks (`lag`, `connection_state`, `metrics`, `total`)."""
        return MappingProxyType(self._s.nodes)

    @property
    def shared_clients(self) -> Mapping[str, Any]:
        """The run's shared clients by resource key (`redis:NAME`, `nats:NAME`, ...)."""
        return self._s.resources.items()

    @property
    def draining(self) -> bool:
        return self._s.stopping

    @property
    def worker(self) -> WorkerInfo:
        """Which worker of the graph this run is (index, count, id)."""
        return self._s.worker

    def clock(self) -> float:
        return self._s.clock()

    def add_tap(self, keys: list[tuple[str, str]], tap: Any) -> Callable[[], None]:
        """Show `tap` (engine.observe.tap.Tap) the messages leaving each (node, port); returns its remover."""
        taps = self._s.taps
        for key in keys:
            taps.setdefault(key, []).append(tap)

        def remove() -> None:
            for key in keys:
                subs = taps.get(key, [])
                if tap in subs:
                    subs.remove(tap)
                if not subs:
                    taps.pop(key, None)

        return remove


def as_view(run: Any) -> RunView:
    """The read-only view of a run: `run` itself if it is one, else the Runner's `view`."""
    return run if isinstance(run, RunView) else run.view
