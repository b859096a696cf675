"""In-memory stand-ins for connectors, put into a graph's plan by `streamdag test`.

`MemorySource` emits a case's messages (one batch, one ack each) and ends; `MemorySink` keeps what
it commits; `LookupStub` answers a `pg_lookup` or `redis_lookup` from a table in the test file, with
the node's own `key`, `into` and `on_miss`. They take the place of the graph's nodes at the plan
level (`engine.testing.runner`), keeping each node's id, inputs and ports, so every operator of the
graph runs as it would in production and nothing needs a service.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from engine.api import Operator, Sink, Source
from engine.codec import loads
from engine.errors import PayloadTooLarge
from engine.expr import EvalError, compile_expr
from engine.message import Msg

__all__ = ["DedupeStub", "LookupStub", "MemorySink", "MemorySource", "StubConfig"]


class MemorySource(Source):
    """Emits `messages` ((body, meta) pairs, or (None, meta) with meta['raw'] to decode) once."""

    def __init__(self, node_id: str, messages: list[tuple[Any, dict[str, Any], str | None]], ctx: Any):
        super().__init__(node_id, messages, ctx)
        self.messages = messages
        self.committed: list[Any] = []

    def total(self) -> int | None:
        return len(self.messages)

    async def run(self, out: Any) -> None:
        if not self.messages:
            return
        tracker = out.tracker
        msgs: list[Msg] = []
        errors: list[Msg] = []
        for seq, (body, meta, raw) in enumerate(self.messages):
            meta = {"source": self.id, "seq": seq, **meta}
            ack = tracker.new(seq)
            if raw is None:
                msgs.append(Msg(body, meta, ack, 64))
                continue
            try:
                msgs.append(Msg(loads(raw), meta, ack, len(raw)))
            except (orjson.JSONDecodeError, PayloadTooLarge) as exc:
                errors.append(out.error(Msg(raw, meta, ack, len(raw)), f"invalid JSON: {exc}"))
        await out.send(msgs, errors)

    async def commit(self, tokens: list[Any]) -> None:
        self.committed.extend(tokens)


class MemorySink(Sink):
    """Keeps every message it commits, in order."""

    def __init__(self, node_id: str, config: Any, ctx: Any):
        super().__init__(node_id, config, ctx)
        self.received: list[Msg] = []

    async def write(self, batch: list[Msg]) -> list[tuple[Msg, str]] | None:
        self.received.extend(type(m)(m.body, dict(m.meta)) for m in batch)  # a DeadLetter stays one
        return None


@dataclass(frozen=True)
class StubConfig:
    """The real lookup's config, its type, and the table from the test file."""

    real: Any
    node_type: str
    table: dict[str, Any]


class LookupStub(Operator):
    """A lookup answered from a table (key as text -> value), as the real node would answer."""

    inline = True

    def __init__(self, node_id: str, config: StubConfig, ctx: Any):
        super().__init__(node_id, config, ctx)
        self.key = compile_expr(config.real.key)
        self.into = config.real.into
        self.table = {str(k): v for k, v in config.table.items()}
        self.miss = self._miss_action(config.node_type, config.real.on_miss)

    @staticmethod
    def _miss_action(node_type: str, on_miss: str) -> str:
        """'null', 'port:<name>', 'drop' or 'error', from the real node's on_miss."""
        if node_type == "pg_lookup":
            return "port:missing" if on_miss == "missing" else "null"
        return {"port": "port:miss"}.get(on_miss, on_miss)

    def process(self, batch: list[Msg], out: Any) -> None:
        into = self.into
        for msg in batch:
            try:
                key = self.key(msg.body, msg.meta)
            except EvalError as exc:
                out.error(msg, f"key: {exc}")
                continue
            text = key if isinstance(key, str) else orjson.dumps(key).decode()
            found = self.table.get(text)
            if not isinstance(msg.body, dict):
                out.error(msg, f"body is not an object: cannot set {into!r}")
            elif text in self.table or self.miss == "null":
                out.send(msg.derive({**msg.body, into: found}))
            elif self.miss.startswith("port:"):
                out.send(msg, self.miss[5:])
            elif self.miss == "drop":
                out.drop(msg)
            else:
                out.error(msg, f"no value for key {text!r}")


class DedupeStub(Operator):
    """`dedupe` in memory for one case: a key seen earlier in the case is a duplicate (dropped)."""

    inline = True

    def __init__(self, node_id: str, config: Any, ctx: Any):
        super().__init__(node_id, config, ctx)
        self.key = compile_expr(config.key)
        self.seen: set[str] = set()

    def process(self, batch: list[Msg], out: Any) -> None:
        for msg in batch:
            try:
                key = self.key(msg.body, msg.meta)
            except EvalError as exc:
                out.error(msg, f"key: {exc}")
                continue
            text = key if isinstance(key, str) else orjson.dumps(key).decode()
            if text in self.seen:
                out.drop(msg)
            else:
                self.seen.add(text)
                out.send(msg)
