"""`dedupe`: drop messages whose key was seen within a window, shared by processes through Redis.

One pipeline per batch of `SET <prefix><key> <identity> PX <ttl> NX GET`: the first message with a
key claims it; later ones are duplicates, acked (`out.drop`) and counted. The value stored is the
identity of the delivery that claimed the key (the source entry's `meta.id` by default), so a
redelivery of that same message after a crash — claimed, but never committed downstream — passes
again instead of being lost. Needs Redis >= 7.0 (SET with both NX and GET).
"""

from __future__ import annotations

import uuid
from itertools import count
from typing import Any, ClassVar

from pydantic import Field

from engine import (
    CelExpr,
    ConnectionLost,
    EvalError,
    Msg,
    NodeConfig,
    Operator,
    Output,
    PositiveDuration,
    compile_expr,
    connection_field,
)
from operators.connectors.redis.connection import connection_errors, raise_if_cancelled, redis_client

__all__ = ["Dedupe", "DedupeConfig"]


class DedupeConfig(NodeConfig):
    """Drop messages whose key (CEL) was already seen within `ttl`; duplicates are acked and counted."""

    connection: str = connection_field("redis", "cache")
    key: CelExpr = Field(description="CEL expression giving the deduplication key.", examples=["msg.event_id"])
    ttl: PositiveDuration = Field(86400.0, description="How long a key is remembered (the window).",
                          examples=["1h", "7d"])
    prefix: str | None = Field(None, description="Redis key prefix; `streamdag:dedupe:<node id>:` if unset. "
                               "Processes sharing a prefix share the window.")
    identity: CelExpr | None = Field(
        None, description="CEL expression identifying one delivery of a message, so its own redelivery "
        "passes; `meta.id` (the source's entry id) when the message has one.", examples=["meta.id"])


class Dedupe(Operator):
    """SET NX GET per key, one pipeline per batch."""

    Config: ClassVar[type[NodeConfig]] = DedupeConfig
    preserves_bodies = True  # every port but `errors` sends messages it received, bodies unchanged
    example = """\
version: 1
name: dedupe_example
connections:
  cache: {type: redis, url: "${REDIS_URL:-redis://127.0.0.1:6379/0}"}
defaults: {dead_letter: dead}              # every errors port not wired explicitly
nodes:
  orders:
    type: generate
    config:
      count: 1000
      template: '{"id": msg.i, "user": "u" + string(msg.i % 7), "amount": double(msg.i % 250)}'
  unique:
    type: dedupe
    inputs: [orders]
    config: {connection: cache, key: string(msg.id), ttl: 1h, prefix: "example:dedupe:"}
  show: {type: stdout, inputs: [unique]}
  dead: {type: file_sink, inputs: [orders.errors], config: {path: out/dead.ndjson}}
"""
    connection_types: ClassVar[tuple[str, ...]] = ("redis",)
    config: DedupeConfig

    def __init__(self, node_id: str, config: DedupeConfig, ctx: Any):
        super().__init__(node_id, config, ctx)
        json = getattr(ctx, "json_bodies", False)  # bodies straight from a JSON decoder: no checks of copied fields
        self._key = compile_expr(config.key, json_bodies=json)
        self._identity = compile_expr(config.identity, json_bodies=json) if config.identity else None
        self._prefix = config.prefix if config.prefix is not None else f"streamdag:dedupe:{node_id}:"
        self._ttl_ms = max(1, int(config.ttl * 1000))
        self._token = uuid.uuid4().hex[:12]
        self._seq = count()
        self._client: Any = None
        self.duplicates = 0
        self.passed = 0

    async def start(self) -> None:
        self._client = await redis_client(self.ctx, self.config.connection)

    def _ident(self, msg: Msg) -> str:
        if self._identity is not None:
            return str(self._identity(msg.body, msg.meta))
        mid = msg.meta.get("id")
        if mid is not None:
            return f"{msg.meta.get('stream', '')}/{mid}"
        return f"{self._token}:{next(self._seq)}"  # no identity: never equal to another delivery

    async def process(self, batch: list[Msg], out: Output) -> None:
        pipe = self._client.pipeline(transaction=False)
        checked: list[tuple[Msg, bytes]] = []
        prefix, ttl = self._prefix, self._ttl_ms
        for msg in batch:
            try:
                key = self._key(msg.body, msg.meta)
                ident = self._ident(msg)
            except EvalError as exc:
                out.error(msg, f"dedupe key: {exc}")
                continue
            if isinstance(key, bool) or not isinstance(key, (str, int, float)):
                out.error(msg, f"dedupe key: expected a string or number, got {key!r}")
                continue
            # get=True tells redis-py to return the old value instead of parsing "OK"
            pipe.execute_command("SET", f"{prefix}{key}", ident, "PX", ttl, "NX", "GET", get=True)
            checked.append((msg, ident.encode()))
        if not checked:
            return
        try:
            results = await pipe.execute()
        except connection_errors() as exc:
            raise ConnectionLost(f"redis {self.config.connection}: dedupe failed: {exc}") from exc
        raise_if_cancelled()
        send = out.port("out").append
        for (msg, mine), previous in zip(checked, results):
            if previous is None or previous == mine:
                send(msg)
                self.passed += 1
            else:
                self.duplicates += 1
                out.drop(msg)
