"""What a node type implements: its config model and one of `Source`, `Operator`, `Sink`.

Node types live in `operators/` and are found through the `streamdag.nodes` entry points
(`engine.registry`). Each declares its config once, as a pydantic model (`NodeConfig`), from
which validation, `streamdag schema` and the docs come.

Lifecycle (driven by `engine.runtime`): `__init__(node_id, config, ctx)` → `await start()` →
data → `await stop()`. Operators get `process(batch, out)` (sync or async) per micro-batch,
`flush(out)` at end of input and, if `tick_interval` is set, `tick(now, out)` on a timer.
Sinks get `await write(batch)` and return the messages that failed one by one. Sources get
`await run(out)` and the acks back through `commit(tokens)` / `reject(failures)`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, TypeVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # not at run time: `engine.spec` and `engine.compile` import this module, without asyncio
    import asyncio

    from engine.hooks import Context, Output, SourceSender
    from engine.message import Bodies, Msg

__all__ = [
    "CEL",
    "CelExpr",
    "CheckIssue",
    "Node",
    "NodeConfig",
    "Operator",
    "RetryPolicy",
    "Sink",
    "Source",
    "StopRetrying",
    "Upstream",
    "cel_fields",
    "connection_field",
]


T = TypeVar("T")


class _CelMarker:
    """Marks a config field whose string is a CEL expression (compiled offline by `validate`)."""

    def __repr__(self) -> str:
        return "CEL"


CEL = _CelMarker()
CelExpr = Annotated[str, CEL, Field(json_schema_extra={"format": "cel"})]


class NodeConfig(BaseModel):
    """Base of every node's config: unknown fields are errors."""

    model_config = ConfigDict(extra="forbid", frozen=False)


class RetryPolicy(BaseModel):
    """Retries of a failing batch with exponential backoff and jitter.

    What is retried depends on whose fault the error is (`engine.errors.classify`, docs/errors.md):
    an unavailable service (connection refused or lost, a timeout, a server restarting) is retried
    until it is back, for as long as the graph runs, whatever `max_attempts` says; an error of
    unknown kind is retried up to `max_attempts` (by default until it succeeds); an error about the
    message itself goes to the `errors` port at once."""

    model_config = ConfigDict(extra="forbid")
    max_attempts: int | None = Field(
        None, ge=1, description="Attempts in all, the first included, for an error of unknown kind; after the "
        "last one the batch goes to the `errors` port. None: retried until it succeeds. Errors of an "
        "unavailable service are retried until it is back regardless.")
    initial_backoff: float = Field(0.1, ge=0, description="Seconds before the second attempt.")
    max_backoff: float = Field(5.0, ge=0, description="Upper bound of one backoff, in seconds.")
    multiplier: float = Field(2.0, ge=1, description="Backoff growth per attempt.")
    jitter: float = Field(0.2, ge=0, le=1, description="Random fraction added or removed from each backoff.")

    def backoff(self, attempt: int, rand: float = 0.5) -> float:
        """Seconds to wait after failed attempt `attempt` (1-based); `rand` in [0, 1)."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** min(attempt - 1, 64))
        return max(0.0, base * (1 + self.jitter * (2 * rand - 1)))

    def exhausted(self, attempt: int) -> bool:
        """True when attempt `attempt` (1-based) was the last one `max_attempts` allows."""
        return self.max_attempts is not None and attempt >= self.max_attempts

    async def call(self, fn: Callable[[], Awaitable[T]], *, what: str, log: logging.Logger,
                   retry_if: Callable[[BaseException], bool] | None = None,
                   stopping: asyncio.Event | None = None) -> T:
        """`await fn()` until it succeeds: the one retry loop of every connector that keeps reading
        on its own (a source; a sink's or an operator's batch is retried by the runtime instead, so
        retries never nest). An error `retry_if` refuses (default: any the error classes call the
        message's fault, `engine.errors.classify`) is raised at once, and so is the last one once
        `max_attempts` is spent. Waits the policy's backoff between attempts, logging the first
        failure and the recovery; with `stopping`, a set event ends the wait and raises
        `StopRetrying` (not a cancellation: the caller decides what a stop means)."""
        import asyncio
        import random

        from engine.errors import MESSAGE, classify

        retry_if = retry_if or (lambda exc: classify(exc) != MESSAGE)
        attempt = 1
        while True:
            try:
                result = await fn()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not retry_if(exc) or self.exhausted(attempt):
                    raise
                delay = self.backoff(attempt, random.random())
                (log.warning if attempt == 1 else log.debug)(
                    "%s failed (%s: %s); retrying in %.2fs (attempt %d)", what, type(exc).__name__, exc, delay,
                    attempt + 1)
                if stopping is None:
                    await asyncio.sleep(delay)
                else:
                    try:
                        await asyncio.wait_for(stopping.wait(), delay)
                    except TimeoutError:
                        pass
                    else:
                        raise StopRetrying(f"{what}: stopped while retrying") from exc
                attempt += 1
                continue
            if attempt > 1:
                log.info("%s succeeded after %d attempts", what, attempt)
            return result


class StopRetrying(Exception):
    """`RetryPolicy.call` was told to stop (the run drains) while waiting to retry."""


@dataclass
class CheckIssue:
    """An offline problem a node type finds in its own config (beyond its pydantic model)."""

    loc: tuple[str | int, ...]  # path inside the node's config
    code: str
    message: str
    severity: Literal["error", "warning"] = "error"
    offset: int | None = None  # 0-based character offset inside the string value at `loc`


@dataclass(frozen=True)
class Upstream:
    """A source whose messages reach the node being checked, through any port (`errors` too)."""

    node: str
    cls: type[Source]
    config: Any


@dataclass
class CheckContext:
    """What offline checks may look at: names declared in the graph (no I/O); for
    `check_upstream`, the sources that feed the node too."""

    connections: dict[str, dict[str, Any]] = field(default_factory=dict)
    schemas: dict[str, Any] = field(default_factory=dict)
    upstream: tuple[Upstream, ...] = ()


class Node:
    """Common part of sources, operators and sinks."""

    kind: ClassVar[Literal["source", "operator", "sink"]]
    Config: ClassVar[type[NodeConfig]] = NodeConfig
    ports: ClassVar[tuple[str, ...]] = ("out",)
    # Connection types a node may name in `config.connection`, if it takes one.
    connection_types: ClassVar[tuple[str, ...]] = ()
    # Non-empty when the node keeps state across messages in its process, saying what: such a node
    # cannot run under `--workers` > 1 (E260, engine.compile.scale).
    per_process_state: ClassVar[str] = ""
    # For the reference page (`streamdag docs`): a whole graph using the type (validated by a test),
    # and what each output port carries when the type has named or config-dependent ports.
    example: ClassVar[str] = ""
    port_docs: ClassVar[dict[str, str]] = {}

    def __init__(self, node_id: str, config: Any, ctx: Context):
        self.id = node_id
        self.config = config
        self.ctx = ctx

    @classmethod
    def output_ports(cls, config: Any) -> tuple[str, ...]:
        """Output ports besides `errors`; override when they depend on the config (route)."""
        return cls.ports if cls.kind != "sink" else ()

    @classmethod
    def check(cls, config: Any, ctx: CheckContext) -> Iterable[CheckIssue]:
        """Offline checks beyond the model (SQL identifiers, schema names...). No I/O."""
        return ()

    @classmethod
    def check_upstream(cls, config: Any, ctx: CheckContext) -> Iterable[CheckIssue]:
        """Offline checks that depend on the sources feeding this node (`ctx.upstream`), such as
        whether they redeliver. Called once the graph's edges are known. No I/O."""
        return ()

    async def start(self) -> None:
        """Open connections, prepare statements. Errors here stop the run before data flows."""

    async def stop(self) -> None:
        """Release what `start` took."""


class Source(Node):
    kind: ClassVar[Literal["source"]] = "source"
    # True when `reject` makes the message come back later (nak, pending entry): see `defaults.on_error`.
    redelivers: ClassVar[bool] = False
    # True when the source keeps read positions a message's ack moves on (a JetStream ack, a Redis
    # XACK, a committed postgres_source watermark, an HTTP client waiting for its answer): holding
    # an ack protects something. False for file_source and generate: a `window` downstream then
    # releases its items' acks once folded (its `acks` default, docs/window.md).
    durable_positions: ClassVar[bool] = False
    # How N workers (`--workers`) share this source's input without reading an item twice; empty:
    # they cannot, and the graph is refused under --workers > 1 (E261, engine.compile.scale).
    shared_by: ClassVar[str] = ""
    # True when messages may arrive with a W3C trace context, `meta["headers"]["traceparent"]`: a traced
    # run (`run --trace`) then continues the sender's trace (engine/observe/tracing.py). False: no lookup.
    trace_context: ClassVar[bool] = False

    @classmethod
    def redelivery_horizon(cls, config: Any) -> float | None:
        """Seconds after a message's first delivery that it may still be delivered again (after a
        crash, before it is acked), or None when this source does not redeliver."""
        return None

    @classmethod
    def redelivery_wait(cls, config: Any) -> float:
        """Seconds after a crash before this source delivers again what the crashed run left
        unacknowledged (JetStream `ack_wait`, Redis `min_idle`); 0 when it does not redeliver. A
        stateful node restored from a checkpoint waits this long before it counts its input idle."""
        return 0.0

    @classmethod
    def json_bodies(cls, config: Any) -> bool:
        """True when every body this source sends on `out` is a value as `orjson.loads` (or
        `engine.codec.loads`) gives it, or a `str`: dicts with string keys, lists, str, int in
        [-2**63, 2**64), float, bool, None. The plan then tells the CEL nodes downstream
        (`ctx.json_bodies`), which skip the checks of the fields they copy. False (the default) when
        the source may send anything else (bytes, datetimes, numbers a CEL template computed)."""
        return False

    @classmethod
    def partitioned(cls, config: Any) -> int | None:
        """How many keyed partitions this source's input is split into, each read by one worker at a
        time and tagged `meta.partition` (None: not partitioned). A node that keeps per-key state
        downstream of partitioned sources only runs under `--workers` (engine.compile.scale)."""
        return None

    async def run(self, out: SourceSender) -> None:
        """Emit batches with `await out.send(msgs)` until exhausted or `out.stopping` is set."""
        raise NotImplementedError

    async def commit(self, tokens: list[Any]) -> None:
        """Acknowledge upstream the messages whose acks completed (delivered, filtered, dead-lettered)."""

    async def reject(self, failures: list[tuple[Any, str]]) -> None:
        """The messages whose acks failed: redeliver them if the source can (nak), else report."""

    def total(self) -> int | None:
        """How many messages a finite run will read, when known (for progress)."""
        return None


class Operator(Node):
    kind: ClassVar[Literal["operator"]] = "operator"
    tick_interval: float | None = None  # seconds between `tick` calls, if the operator has timers
    # `process` is synchronous and the operator holds no messages between calls (no flush, no
    # timer): when it is the only consumer of its one input, the runtime runs it in its upstream
    # node's task, with no queue in between (map, filter, validate, route, compress, decompress)
    inline: ClassVar[bool] = False
    # True when every message `process` sends on a port other than `errors` is one it received, its
    # body unchanged (filter, route, rate_limit, dedupe, validate): JSON bodies stay JSON through it
    # (`Source.json_bodies`, the plan's `json_inputs`)
    preserves_bodies: ClassVar[bool] = False
    # True when `process_bodies` may be given a `Bodies` (a source batch's bodies without a `Msg`
    # each: engine.message) instead of `process` a list of messages
    takes_bodies: ClassVar[bool] = False

    def process(self, batch: list[Msg], out: Output) -> Awaitable[None] | None:
        raise NotImplementedError

    def process_bodies(self, batch: Bodies, out: Output) -> bool:
        """`process` for a batch carried as bodies (only called when `takes_bodies`): send what it
        emits with `out.send_bodies` and return True, or return False having done nothing (no ack
        settled, nothing sent), and the runtime calls `process` with the same messages as `Msg`
        objects. Raising counts as False. Must not await."""
        return False

    def flush(self, out: Output) -> Awaitable[None] | None:
        """End of input: emit what is held (batch, window)."""
        return None

    def tick(self, now: float, out: Output) -> Awaitable[None] | None:
        return None


class Sink(Node):
    kind: ClassVar[Literal["sink"]] = "sink"

    @classmethod
    def shared_write_issue(cls, config: Any) -> str:
        """Why several worker processes cannot write this sink at once with this config ('' when they
        can: the default, each writes its own batches). Non-empty: E262 under `--workers` > 1."""
        return ""

    async def write(self, batch: list[Msg]) -> list[tuple[Msg, str]] | None:
        """Commit `batch`. Raise to fail the whole batch (retried by the node's retry policy);
        return `(msg, reason)` pairs for messages that failed alone (they go to `errors`)."""
        raise NotImplementedError

    # True when `write_bodies` may be given a `Bodies` (see Operator.takes_bodies); may be set per
    # instance, from the config
    takes_bodies: bool = False

    async def write_bodies(self, batch: Bodies) -> bool:
        """Commit every message of `batch` and return True, or return False having written nothing,
        and the runtime calls `write` with the same messages as `Msg` objects (as it does when this
        raises: `write`'s retries and errors then apply). Only called when `takes_bodies`."""
        return False

    def routed(self) -> dict[str, list[tuple[Msg, Any]]]:
        """Messages of the last `write` that go to a named output port (such as `conflicts`) instead
        of counting as committed here: port -> (message, body to send). Each is sent with its
        message's ack, so the source acks it once that port's consumer commits it. Default: none."""
        return {}


def _is_cel(annotation: Any) -> bool:
    return get_origin(annotation) is Annotated and any(a is CEL for a in get_args(annotation)[1:])


def cel_fields(model: BaseModel, prefix: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """Every CEL expression in a config: (path inside the config, source)."""
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if value is None:
            continue
        annotation = _unwrap_optional(info.annotation)  # `CelExpr | None` and `dict[str, CelExpr] | None` too
        is_cel = any(m is CEL for m in info.metadata) or _is_cel(annotation)
        path = (*prefix, info.alias or name)
        yield from _walk(annotation, value, path, is_cel)


def _walk(annotation: Any, value: Any, path: tuple[str | int, ...], is_cel: bool) -> Iterator[tuple[tuple[str | int, ...], str]]:
    if isinstance(value, BaseModel):
        yield from cel_fields(value, path)
    elif is_cel and isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        args = get_args(annotation)
        inner = _unwrap_optional(args[1]) if len(args) == 2 else Any
        for k, v in value.items():
            yield from _walk(inner, v, (*path, k), _is_cel(inner))
    elif isinstance(value, list):
        args = get_args(annotation)
        inner = _unwrap_optional(args[0]) if args else Any
        for i, v in enumerate(value):
            yield from _walk(inner, v, (*path, i), _is_cel(inner))


def _unwrap_optional(annotation: Any) -> Any:
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is not Annotated and len(args) == 1 and type(None) in get_args(annotation):
        return args[0]
    return annotation


def connection_field(kind: str, example: str) -> Any:
    """The `connection` field every connector's config has: the name of a `type: <kind>` entry in
    the graph's `connections` (checked offline against `connection_types`)."""
    return Field(description=f"Name of a `type: {kind}` entry in `connections`.", examples=[example])
