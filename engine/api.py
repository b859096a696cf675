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

from collections.abc import Awaitable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field

from engine.message import Msg

if TYPE_CHECKING:
    from engine.hooks import Context, Output, SourceSender

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
    "cel_fields",
    "connection_field",
]


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


@dataclass
class CheckIssue:
    """An offline problem a node type finds in its own config (beyond its pydantic model)."""

    loc: tuple[str | int, ...]  # path inside the node's config
    code: str
    message: str
    severity: Literal["error", "warning"] = "error"
    offset: int | None = None  # 0-based character offset inside the string value at `loc`


@dataclass
class CheckContext:
    """What offline checks may look at: names declared in the graph (no I/O)."""

    connections: dict[str, dict[str, Any]] = field(default_factory=dict)
    schemas: dict[str, Any] = field(default_factory=dict)


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

    async def start(self) -> None:
        """Open connections, prepare statements. Errors here stop the run before data flows."""

    async def stop(self) -> None:
        """Release what `start` took."""


class Source(Node):
    kind: ClassVar[Literal["source"]] = "source"
    # True when `reject` makes the message come back later (nak, pending entry): see `defaults.on_error`.
    redelivers: ClassVar[bool] = False
    # How N workers (`--workers`) share this source's input without reading an item twice; empty:
    # they cannot, and the graph is refused under --workers > 1 (E261, engine.compile.scale).
    shared_by: ClassVar[str] = ""

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

    def process(self, batch: list[Msg], out: Output) -> Awaitable[None] | None:
        raise NotImplementedError

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
