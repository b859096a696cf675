"""What a node sees of the engine, as protocols: its context, its outputs, and the optional hooks
the observe layer calls when a node has them. A node type implements any hook by defining the
method; `isinstance(node, HasLag)` (runtime-checkable) tells whether it did.

These are the only shapes a plugin may rely on; `engine` (engine/__init__.py) exports them with
the base classes and helpers, and a test keeps operators from importing anything else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # node types import these protocols; validating a graph loads no asyncio
    import asyncio
    import logging

    from engine.api import RetryPolicy, Upstream
    from engine.message import Ack, BatchAck, Bodies, Msg
    from engine.partitions import PartitionEvents

__all__ = [
    "AckFactory",
    "Context",
    "Counters",
    "HasConnectionState",
    "HasLag",
    "HasLevels",
    "HasMetrics",
    "HasTotal",
    "Output",
    "SharedResources",
    "SourceSender",
]


class SharedResources(Protocol):
    """Clients shared by the nodes of a run (one per connection), closed when the run ends."""

    async def get(self, key: str, factory: Callable[[], Awaitable[Any]],
                  close: Callable[[Any], Awaitable[None]] | None = None) -> Any: ...

    def items(self) -> dict[str, Any]: ...


class Context(Protocol):
    """A node's `ctx`: where it runs and what it may use."""

    @property
    def node_id(self) -> str: ...

    @property
    def schemas(self) -> dict[str, Any]: ...

    @property
    def connections(self) -> dict[str, dict[str, Any]]:
        """Every entry of the graph's `connections`, by name (settings as plain dicts)."""
        ...

    @property
    def resources(self) -> SharedResources: ...

    @property
    def base_dir(self) -> str: ...

    @property
    def clock(self) -> Callable[[], float]: ...

    @property
    def draining(self) -> bool:
        """True once the run drains (SIGTERM): nodes that hold messages emit what they hold."""
        ...

    @property
    def started(self) -> bool:
        """True once every node of the run has started; still False in a `stop()` after a failed start
        (a sink that truncates its output waits for this, so a run that never ran loses nothing)."""
        ...

    @property
    def log(self) -> logging.Logger: ...

    @property
    def json_bodies(self) -> bool:
        """True when every message reaches the node with a body as a JSON decoder gave it (a source's
        `json_bodies`, through operators that `preserves_bodies` only): CEL may skip the checks of
        the fields it copies (`compile_expr(..., json_bodies=True)`). False outside a run."""
        ...

    @property
    def retry(self) -> RetryPolicy | None:
        """The node's retry policy (its `retry`, else `defaults.retry`), which the runtime applies to a
        failing batch; None outside a run. A sink that counts its attempts at one batch can tell the last
        one (`retry.exhausted(n)`) and fail only its unsent messages then (operators/alert.py)."""
        ...

    @property
    def retry_now(self) -> asyncio.Event:
        """Set it when the node's service is reachable again (its client reconnected): a batch the
        runtime is holding back for a retry is tried at once, not after the rest of its backoff."""
        ...

    @property
    def worker(self) -> Any:
        """Which worker of the graph this is (`engine.runtime.context.WorkerInfo`: index, count, id,
        `owns(n)`); worker 0 of 1 without `--workers`."""
        ...

    @property
    def partitions(self) -> PartitionEvents:
        """The run's partition ownership (`engine.partitions`): partitioned sources report what they
        own, stateful nodes subscribe to hear partitions come and go."""
        ...

    @property
    def upstream(self) -> tuple[Upstream, ...] | None:
        """The sources whose messages reach this node (`engine.api.Upstream`: node, cls, config);
        None when not known (a node made outside a run, in a test)."""
        ...

    def connection(self, name: str) -> dict[str, Any]: ...

    def path(self, p: str) -> str: ...

    def channel_load(self, port: str) -> tuple[int, int]:
        """How full the input channel fed by this node's `port` is now: (messages held, capacity),
        for the fullest such channel (a port may feed several, also through inline operators;
        bytes count when they are the fuller bound). (0, 0) when the port feeds no channel or the
        node runs outside a graph run. Read it at the start of `process` (`route mode:
        least_loaded`); it changes only when the runtime moves batches, not during the call."""
        ...


class Counters(Protocol):
    """The counters an operator may bump itself in a tight loop (instead of a call per message)."""

    filtered: int
    errors: int


class Output(Protocol):
    """What an operator's `process` writes to: per-port lists, sent downstream after the call."""

    @property
    def lists(self) -> dict[str, list[Msg]]: ...

    @property
    def stats(self) -> Counters: ...

    def port(self, name: str = "out") -> list[Msg]: ...

    def send(self, msg: Msg, port: str = "out") -> None: ...

    def error(self, msg: Msg, reason: str, attempt: int = 1) -> None: ...

    def drop(self, msg: Msg) -> None: ...

    def send_bodies(self, batch: Bodies, port: str = "out") -> None:
        """Send a whole `Bodies` (an operator's `process_bodies`)."""
        ...

    def take(self) -> dict[str, list[Msg]]: ...


class AckFactory(Protocol):
    """A source's ack tracker, as a source uses it: acks for what it emits, and room to emit more."""

    @property
    def limit(self) -> int:
        """Most unsettled messages (`defaults.max_in_flight`); 0: no limit."""
        ...

    @property
    def in_flight(self) -> int: ...

    def new(self, token: Any = None) -> Ack: ...

    def new_many(self, tokens: list[Any]) -> list[Ack]: ...

    def new_batch(self, n: int, token: Any = None) -> BatchAck: ...

    def has_room(self) -> bool: ...


class SourceSender(Protocol):
    """What a source's `run` sends to."""

    @property
    def node_id(self) -> str: ...

    @property
    def tracker(self) -> AckFactory: ...

    @property
    def stopping(self) -> asyncio.Event: ...

    def error(self, msg: Msg, reason: str, attempt: int = 1) -> Msg:
        """`msg` wrapped for the errors port (a body that failed at the source: send it in `errors`)."""
        ...

    async def send(self, msgs: list[Msg] | Bodies, errors: list[Msg] | None = None) -> None:
        """Send a batch downstream (a `Bodies`: one source batch under one meta and `BatchAck`,
        without a `Msg` per body: engine.message); waits while the downstream has no room."""
        ...

    async def send_ports(self, lists: dict[str, list[Msg]]) -> None: ...

    async def wait_room(self) -> None: ...


@runtime_checkable
class HasLag(Protocol):
    """A source that can say how many messages wait upstream (JetStream pending, Redis group lag)."""

    async def lag(self) -> int | None: ...


@runtime_checkable
class HasConnectionState(Protocol):
    """A node that knows whether its connections are up, without I/O: {connection name: up}."""

    def connection_state(self) -> dict[str, bool]: ...


@runtime_checkable
class HasMetrics(Protocol):
    """A node with counters of its own, values that only grow (exported as the Prometheus counter
    `streamdag_node_events_total{event}`); levels that go down belong in `HasLevels`."""

    def metrics(self) -> dict[str, int]: ...


@runtime_checkable
class HasLevels(Protocol):
    """A node with levels of its own, values that go up and down (requests in flight, open
    connections), exported as the gauge `streamdag_node_level{level}`."""

    def levels(self) -> dict[str, float]: ...


@runtime_checkable
class HasTotal(Protocol):
    """A finite source that knows how many messages it will read (for progress)."""

    def total(self) -> int | None: ...
